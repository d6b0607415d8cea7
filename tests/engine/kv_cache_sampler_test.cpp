#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>
#include <vector>

#include "airlock/engine/kv_cache.h"
#include "airlock/engine/sampler.h"

namespace airlock::engine {
namespace {

TEST(KvCacheTest, BlocksTablesAndSlots) {
  KvCache c(4);
  ASSERT_TRUE(c.add_sequence(1).is_ok());
  EXPECT_EQ(c.add_sequence(1).code(), StatusCode::kAlreadyExists);
  ASSERT_TRUE(c.reserve(1, 17, nullptr).is_ok());  // 2 blocks
  EXPECT_EQ(c.length(1), 17);
  EXPECT_EQ(c.block_table(1).size(), 2u);
  EXPECT_EQ(c.n_free_blocks(), 2);
  EXPECT_EQ(c.slot(1, 16), c.block_table(1)[1] * kBlockTokens);
  EXPECT_EQ(c.reserve(9, 1, nullptr).code(), StatusCode::kNotFound);
  EXPECT_EQ(c.reserve(1, 48, nullptr).code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(c.length(1), 17);  // unchanged
  ASSERT_TRUE(c.reserve(1, 15, nullptr).is_ok());  // fills block 2 exactly
  EXPECT_EQ(c.n_free_blocks(), 2);
  ASSERT_TRUE(c.truncate(1, 5).is_ok());
  EXPECT_EQ(c.n_free_blocks(), 3);
  c.remove_sequence(1);
  EXPECT_EQ(c.n_free_blocks(), 4);
  c.remove_sequence(1);  // harmless
}

TEST(KvCacheTest, ForkSharesBlocksAndCopiesOnWrite) {
  KvCache c(8);
  ASSERT_TRUE(c.add_sequence(0).is_ok());
  ASSERT_TRUE(c.reserve(0, 20, nullptr).is_ok());
  ASSERT_TRUE(c.fork(0, 1).is_ok());
  EXPECT_EQ(c.fork(0, 1).code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(c.n_free_blocks(), 6);
  int shared_last = c.block_table(0)[1];
  EXPECT_EQ(c.ref_count(shared_last), 2);
  std::vector<std::pair<int, int>> copies;
  EXPECT_EQ(c.blocks_needed(1, 1), 1);
  ASSERT_TRUE(c.reserve(1, 1, &copies).is_ok());
  ASSERT_EQ(copies.size(), 1u);
  EXPECT_EQ(copies[0].first, shared_last);
  EXPECT_NE(c.block_table(1)[1], shared_last);
  EXPECT_EQ(c.block_table(1)[0], c.block_table(0)[0]);  // the full block stays shared
  EXPECT_EQ(c.ref_count(shared_last), 1);
  c.remove_sequence(0);
  c.remove_sequence(1);
  EXPECT_EQ(c.n_free_blocks(), 8);
}

std::vector<std::int32_t> seq_tokens(int n, int start) {
  std::vector<std::int32_t> t(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) t[static_cast<std::size_t>(i)] = start + i;
  return t;
}

// Eviction takes the end of a cached chain before its beginning: a prompt
// that lost one block to pressure still finds the others (evicting the
// first block left the rest unreachable, and a recomputed prompt could not
// publish over them).
TEST(KvCacheTest, EvictionTakesChainTailsFirst) {
  KvCache c(8);
  const std::vector<std::int32_t> a = seq_tokens(48, 300);  // 3 full blocks
  ASSERT_TRUE(c.add_sequence(1).is_ok());
  ASSERT_TRUE(c.reserve(1, 48, nullptr).is_ok());
  c.publish(1, a);
  c.remove_sequence(1);
  ASSERT_EQ(c.n_cached_blocks(), 3);
  ASSERT_TRUE(c.add_sequence(2).is_ok());
  ASSERT_TRUE(c.reserve(2, 6 * kBlockTokens, nullptr).is_ok());  // 5 free blocks and one evicted
  c.remove_sequence(2);
  ASSERT_EQ(c.n_cached_blocks(), 2);
  for (int round = 0; round < 3; ++round) {
    const int id = 3 + round;
    ASSERT_TRUE(c.add_sequence(id).is_ok());
    EXPECT_EQ(c.attach_prefix(id, a, 3), round == 0 ? 2 : 3) << "round " << round;
    ASSERT_TRUE(c.reserve(id, 48, nullptr).is_ok());
    c.publish(id, a);
    c.remove_sequence(id);
  }
}

// Truncating into a published block and writing other tokens there: the
// block no longer matches its old tokens (it used to stay findable, so a
// new sequence attached keys and values of the new tokens under the old).
TEST(KvCacheTest, TruncatedIntoAPublishedBlockItIsNotFoundUnderItsOldTokens) {
  KvCache c(8);
  const std::vector<std::int32_t> a = seq_tokens(32, 500);  // 2 full blocks
  ASSERT_TRUE(c.add_sequence(1).is_ok());
  ASSERT_TRUE(c.reserve(1, 32, nullptr).is_ok());
  c.publish(1, a);
  ASSERT_TRUE(c.truncate(1, 24).is_ok());
  std::vector<std::int32_t> b = a;
  for (int i = 24; i < 32; ++i) b[static_cast<std::size_t>(i)] = 90 + i % 5;
  ASSERT_TRUE(c.reserve(1, 8, nullptr).is_ok());
  c.publish(1, b);
  ASSERT_TRUE(c.add_sequence(2).is_ok());
  EXPECT_EQ(c.attach_prefix(2, a, 2), 1);  // the first block only
  ASSERT_TRUE(c.add_sequence(3).is_ok());
  EXPECT_EQ(c.attach_prefix(3, b, 2), 2);  // the rewritten block under its new tokens
  EXPECT_EQ(c.block_table(3)[1], c.block_table(1)[1]);
}

// Scopes (one per API key in airlockd): a prompt's blocks attach only to
// sequences of the scope that published them.
TEST(KvCacheTest, PrefixBlocksStayInTheirScope) {
  KvCache c(8);
  const std::vector<std::int32_t> a = seq_tokens(40, 100);
  ASSERT_TRUE(c.add_sequence(1, 11).is_ok());
  ASSERT_TRUE(c.reserve(1, 40, nullptr).is_ok());
  c.publish(1, a);
  ASSERT_TRUE(c.add_sequence(2, 22).is_ok());
  EXPECT_EQ(c.attach_prefix(2, a, 10), 0);  // another scope: nothing
  ASSERT_TRUE(c.add_sequence(3).is_ok());
  EXPECT_EQ(c.attach_prefix(3, a, 10), 0);  // nor the shared one
  ASSERT_TRUE(c.add_sequence(4, 11).is_ok());
  EXPECT_EQ(c.attach_prefix(4, a, 10), 2);  // the same scope: both full blocks
  // Scope 22 publishes the same tokens: its own blocks, found by its own.
  ASSERT_TRUE(c.reserve(2, 40, nullptr).is_ok());
  c.publish(2, a);
  ASSERT_TRUE(c.add_sequence(5, 22).is_ok());
  EXPECT_EQ(c.attach_prefix(5, a, 10), 2);
  EXPECT_NE(c.block_table(5)[0], c.block_table(4)[0]);
  // Cut back and written again, a scoped sequence publishes under its scope
  // still (the chain restarts from the scope, not from the shared root).
  KvCache t(8);
  const std::vector<std::int32_t> b = seq_tokens(40, 300);
  ASSERT_TRUE(t.add_sequence(1, 33).is_ok());
  ASSERT_TRUE(t.reserve(1, 40, nullptr).is_ok());
  t.publish(1, b);
  ASSERT_TRUE(t.truncate(1, 10).is_ok());
  ASSERT_TRUE(t.reserve(1, 30, nullptr).is_ok());
  t.publish(1, b);
  ASSERT_TRUE(t.add_sequence(2, 33).is_ok());
  EXPECT_GE(t.attach_prefix(2, b, 10), 1);
  ASSERT_TRUE(t.add_sequence(3).is_ok());
  EXPECT_EQ(t.attach_prefix(3, b, 10), 0);
}

TEST(KvCacheTest, PrefixBlocksArePublishedReusedAndEvicted) {
  KvCache c(8);
  const std::vector<std::int32_t> a = seq_tokens(40, 100);  // 2 full blocks + 8
  ASSERT_TRUE(c.add_sequence(1).is_ok());
  ASSERT_TRUE(c.reserve(1, 40, nullptr).is_ok());
  c.publish(1, a);
  const std::vector<std::int32_t> table1 = c.block_table(1);

  // Same first 32 tokens, different tail: both full blocks attach.
  std::vector<std::int32_t> b = a;
  b[35] = 7;
  ASSERT_TRUE(c.add_sequence(2).is_ok());
  EXPECT_EQ(c.attach_prefix(2, b, 10), 2);
  EXPECT_EQ(c.length(2), 32);
  EXPECT_EQ(c.block_table(2)[0], table1[0]);
  EXPECT_EQ(c.block_table(2)[1], table1[1]);
  EXPECT_EQ(c.ref_count(table1[0]), 2);
  // max_blocks limits the attachment; a differing first block attaches nothing.
  ASSERT_TRUE(c.add_sequence(3).is_ok());
  EXPECT_EQ(c.attach_prefix(3, b, 1), 1);
  std::vector<std::int32_t> d = a;
  d[3] = 9;
  ASSERT_TRUE(c.add_sequence(4).is_ok());
  EXPECT_EQ(c.attach_prefix(4, d, 10), 0);
  // A block only matches after the same parent: block 2 of `a` after another block 1.
  std::vector<std::int32_t> e = a;
  e[0] = 1;
  ASSERT_TRUE(c.add_sequence(5).is_ok());
  EXPECT_EQ(c.attach_prefix(5, e, 10), 0);

  // Removing every user keeps the published blocks cached (free but reusable).
  for (int s : {1, 2, 3, 4, 5}) c.remove_sequence(s);
  EXPECT_EQ(c.n_free_blocks(), 8);
  EXPECT_EQ(c.n_cached_blocks(), 2);
  ASSERT_TRUE(c.add_sequence(6).is_ok());
  EXPECT_EQ(c.attach_prefix(6, a, 10), 2);
  EXPECT_EQ(c.n_cached_blocks(), 0);
  c.remove_sequence(6);

  // Under pressure the cached blocks are evicted and their prefix is gone.
  ASSERT_TRUE(c.add_sequence(7).is_ok());
  ASSERT_TRUE(c.reserve(7, 8 * kBlockTokens, nullptr).is_ok());
  EXPECT_EQ(c.n_free_blocks(), 0);
  c.remove_sequence(7);
  ASSERT_TRUE(c.add_sequence(8).is_ok());
  EXPECT_EQ(c.attach_prefix(8, a, 10), 0);
}

// The KV budget: configured or default on the host; on a device what is
// free after the weights less the reserve, capped by a configured size;
// never more than max_running full sequences; refused with the numbers when
// not one block fits.
TEST(KvBudgetTest, HostDeviceAndCaps) {
  constexpr std::uint64_t kMiB = 1u << 20;
  KvBudgetInput in;
  in.bytes_per_block = kMiB;
  in.max_running = 1000;
  in.blocks_per_sequence = 1000;
  in.host_auto_bytes = 1024 * kMiB;
  Result<KvBudget> b = plan_kv_blocks(in);
  ASSERT_TRUE(b.is_ok());
  EXPECT_EQ(b->blocks, 1024);
  EXPECT_NE(b->limited_by.find("host default"), std::string::npos) << b->limited_by;
  in.configured_bytes = 100 * kMiB + 5;
  EXPECT_EQ(plan_kv_blocks(in)->blocks, 100);
  EXPECT_EQ(plan_kv_blocks(in)->limited_by, "kv_cache_mib");

  // A device with 80 GiB free after the weights, 2 GiB reserved.
  in.configured_bytes = 0;
  in.device_free = 80 * 1024 * kMiB;
  in.device_reserve = 2 * 1024 * kMiB;
  b = plan_kv_blocks(in);
  ASSERT_TRUE(b.is_ok());
  EXPECT_EQ(b->blocks, 78 * 1024);
  EXPECT_NE(b->limited_by.find("free device memory"), std::string::npos) << b->limited_by;
  in.configured_bytes = 4096 * kMiB;  // a configured size below what is free
  EXPECT_EQ(plan_kv_blocks(in)->blocks, 4096);
  in.configured_bytes = 200 * 1024 * kMiB;  // above: what is free wins
  EXPECT_EQ(plan_kv_blocks(in)->blocks, 78 * 1024);

  in.max_running = 4;  // 4 sequences of 1000 blocks are all that is useful
  b = plan_kv_blocks(in);
  EXPECT_EQ(b->blocks, 4000);
  EXPECT_NE(b->limited_by.find("max_running"), std::string::npos) << b->limited_by;

  in.device_free = 2 * 1024 * kMiB + kMiB - 1;  // less than one block beyond the reserve
  b = plan_kv_blocks(in);
  ASSERT_FALSE(b.is_ok());
  EXPECT_EQ(b.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(b.status().message().find("2048 MiB must stay free"), std::string::npos) << b.status().message();
  in.device_free = 1024;  // less than the reserve: no underflow
  EXPECT_FALSE(plan_kv_blocks(in).is_ok());

  in.device_free.reset();
  in.configured_bytes = kMiB - 1;  // the host budget below one block
  EXPECT_EQ(plan_kv_blocks(in).status().code(), StatusCode::kResourceExhausted);
  in.bytes_per_block = 0;
  EXPECT_EQ(plan_kv_blocks(in).status().code(), StatusCode::kInvalidArgument);
}

TEST(SamplerTest, GreedyPicksTheMaximumAndReportsLogprobs) {
  std::vector<float> logits = {1.0f, 3.0f, 2.0f, 3.0f};
  SamplingParams p;
  p.temperature = 0;
  p.n_logprobs = 2;
  Sampler s(p);
  SampledToken t = s.sample(logits, {}, 0);
  EXPECT_EQ(t.token, 1);  // ties go to the lowest id
  double z = std::exp(1.0) + 2 * std::exp(3.0) + std::exp(2.0);
  EXPECT_NEAR(t.logprob, 3.0 - std::log(z), 1e-5);
  ASSERT_EQ(t.top.size(), 2u);
  EXPECT_EQ(t.top[0].token, 1);
  EXPECT_EQ(t.top[1].token, 3);
}

TEST(SamplerTest, SameSeedSameTokensAndDistributionFollowsTemperature) {
  std::vector<float> logits = {0.0f, std::log(2.0f), std::log(3.0f), std::log(4.0f)};
  SamplingParams p;
  p.seed = 42;
  Sampler a(p), b(p);
  std::map<int, int> counts;
  for (int i = 0; i < 20000; ++i) {
    SampledToken x = a.sample(logits, {}, 0);
    EXPECT_EQ(x.token, b.sample(logits, {}, 0).token);
    ++counts[x.token];
  }
  // Probabilities 0.1, 0.2, 0.3, 0.4.
  for (int k = 0; k < 4; ++k) EXPECT_NEAR(counts[k] / 20000.0, 0.1 * (k + 1), 0.015) << k;
}

TEST(SamplerTest, FiltersAndPenalties) {
  std::vector<float> logits = {0.0f, std::log(2.0f), std::log(3.0f), std::log(4.0f)};
  SamplingParams p;
  p.seed = 1;
  p.top_k = 2;
  Sampler topk(p);
  for (int i = 0; i < 200; ++i) EXPECT_GE(topk.sample(logits, {}, 0).token, 2);
  p.top_k = 0;
  p.top_p = 0.5f;  // 0.4 + 0.3 covers it
  Sampler topp(p);
  for (int i = 0; i < 200; ++i) EXPECT_GE(topp.sample(logits, {}, 0).token, 2);
  p.top_p = 1.0f;
  p.min_p = 0.6f;  // keeps tokens with p >= 0.24: 2 and 3
  Sampler minp(p);
  for (int i = 0; i < 200; ++i) EXPECT_GE(minp.sample(logits, {}, 0).token, 2);
  SamplingParams g;
  g.temperature = 0;
  g.presence_penalty = 2.0f;
  Sampler pen(g);
  std::vector<std::int32_t> history = {3};
  EXPECT_EQ(pen.sample(logits, history, 0).token, 2);  // 3 was generated and penalised below 2
  g.presence_penalty = 0;
  g.repetition_penalty = 1.5f;
  Sampler rep(g);
  EXPECT_EQ(rep.sample(logits, history, 0).token, 2);  // log 4 / 1.5 < log 3
}

// Presence and frequency penalties count the generated tokens only (as
// OpenAI describes them and vLLM applies them); the repetition penalty
// counts the prompt's tokens too. logits: 1 (1.0), 2 (0.9), 3 (0.8).
TEST(SamplerTest, PresenceAndFrequencyCountOnlyGeneratedTokens) {
  const std::vector<float> logits = {-5.0f, 1.0f, 0.9f, 0.8f};
  SamplingParams g;
  g.temperature = 0;
  g.presence_penalty = 0.5f;
  g.frequency_penalty = 0.5f;
  // Token 1 three times in the prompt: not penalised.
  const std::vector<std::int32_t> prompt_only = {1, 1, 1};
  EXPECT_EQ(Sampler(g).sample(logits, prompt_only, 3).token, 1);
  EXPECT_TRUE(Sampler(g).next_row(prompt_only, 3).counts.empty());
  // Once in the prompt and once generated: penalised once (1.0 - 0.5 - 0.5 < 0.9).
  const std::vector<std::int32_t> once = {1, 1};
  EXPECT_EQ(Sampler(g).sample(logits, once, 1).token, 2);
  const std::vector<std::pair<std::int32_t, std::int32_t>> one_generated = {{1, 1}};
  EXPECT_EQ(Sampler(g).next_row(once, 1).counts, one_generated);
  // The frequency penalty scales with the generated occurrences only: 1
  // generated once (1.0 - 0.5 - 0.5 = 0), 2 generated twice (0.9 - 0.5 - 1.0).
  const std::vector<std::int32_t> mixed = {2, 2, 2, 1, 2, 2};
  EXPECT_EQ(Sampler(g).sample(logits, mixed, 3).token, 3);
  const std::vector<std::pair<std::int32_t, std::int32_t>> mixed_counts = {{1, 1}, {2, 2}};
  EXPECT_EQ(Sampler(g).next_row(mixed, 3).counts, mixed_counts);
  // A repetition penalty lists the prompt's tokens too (0 generated) and
  // reaches them: log 1.0 / 2 < 0.9. Presence and frequency still do not.
  g.presence_penalty = 0;
  g.frequency_penalty = 0;
  g.repetition_penalty = 2.0f;
  EXPECT_EQ(Sampler(g).sample(logits, prompt_only, 3).token, 2);
  const std::vector<std::pair<std::int32_t, std::int32_t>> listed = {{1, 0}};
  EXPECT_EQ(Sampler(g).next_row(prompt_only, 3).counts, listed);
  g.presence_penalty = 2.0f;
  EXPECT_EQ(Sampler(g).sample(logits, prompt_only, 3).token, 2);  // 0.5 only: presence does not apply
  SampleRow row = Sampler(g).next_row(prompt_only, 3);
  row.params.repetition_penalty = 1.0f;
  EXPECT_EQ(sample_row(logits, row).token, 1);  // a listed token with 0 generated is left alone
}

// logit_bias is added to the logits before anything else (greedy too): -100
// bans a token, a large bias forces one; ids outside the vocabulary are
// ignored; logprobs stay those of the model's own distribution.
TEST(SamplerTest, LogitBiasShiftsTheLogitsFirst) {
  const std::vector<float> logits = {0.0f, 3.0f, 2.5f, -1.0f};
  SampleRow row;
  row.params.temperature = 0;
  EXPECT_EQ(sample_row(logits, row).token, 1);
  row.params.logit_bias = {{1, -100.0f}, {99, 100.0f}};
  EXPECT_EQ(sample_row(logits, row).token, 2);
  row.params.logit_bias = {{3, 10.0f}};
  const SampledToken forced = sample_row(logits, row);
  EXPECT_EQ(forced.token, 3);
  EXPECT_LT(forced.logprob, -4.0f);  // the model's own log-probability of token 3
  // Before the penalties: a repetition penalty of 2 halves the biased logit.
  row.params.logit_bias = {{0, 3.2f}};
  EXPECT_EQ(sample_row(logits, row).token, 0);  // 0 + 3.2 > 3
  row.params.repetition_penalty = 2.0f;
  row.counts = {{0, 1}};
  EXPECT_EQ(sample_row(logits, row).token, 1);  // (0 + 3.2) / 2 < 3
}

// Top-p and min-p see the distribution at the request's temperature (as
// OpenAI, vLLM and Hugging Face apply them): two tokens with logits 0 and
// -1 are 0.73 / 0.27 at temperature 1, where top_p 0.7 keeps only the
// first, and 0.56 / 0.44 at temperature 4, where it keeps both.
TEST(SamplerTest, FiltersSeeTheTemperedDistribution) {
  const std::vector<float> logits = {0.0f, -1.0f};
  SampleRow row;
  row.u = 0.99;  // the last kept token
  row.params.top_p = 0.7f;
  row.params.temperature = 1.0f;
  EXPECT_EQ(sample_row(logits, row).token, 0);
  row.params.temperature = 4.0f;
  EXPECT_EQ(sample_row(logits, row).token, 1);
  row.params.top_p = 1.0f;
  row.params.min_p = 0.5f;  // keeps p >= 0.5 p_max: 0.27 / 0.73 is below, 0.44 / 0.56 above
  row.params.temperature = 1.0f;
  EXPECT_EQ(sample_row(logits, row).token, 0);
  row.params.temperature = 4.0f;
  EXPECT_EQ(sample_row(logits, row).token, 1);
}

// sample() is next_row() then sample_row(), the split a device backend
// uses: the same random numbers drawn, the same tokens chosen.
TEST(SamplerTest, SampleRowIsSampleSplitInTwo) {
  std::vector<SamplingParams> cases(5);
  cases[0].temperature = 0;
  cases[0].n_logprobs = 3;
  cases[1].temperature = 0.8f;
  cases[1].top_k = 40;
  cases[2].top_p = 0.9f;
  cases[2].n_logprobs = 5;
  cases[3].min_p = 0.05f;
  cases[3].temperature = 1.3f;
  cases[4].repetition_penalty = 1.3f;
  cases[4].presence_penalty = 0.5f;
  cases[4].frequency_penalty = 0.4f;
  cases[4].top_p = 0.95f;
  const std::vector<std::int32_t> history = {5, 5, 9, 700, 12, -1};  // 700 is past the vocabulary
  std::mt19937 gen(7);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> logits(500);
  for (std::size_t c = 0; c < cases.size(); ++c) {
    SCOPED_TRACE(c);
    cases[c].seed = 1000 + c;
    Sampler whole(cases[c]), split(cases[c]);
    for (int i = 0; i < 50; ++i) {
      for (float& l : logits) l = normal(gen);
      SampledToken a = whole.sample(logits, history, 2);
      SampledToken b = sample_row(logits, split.next_row(history, 2));
      EXPECT_EQ(a.token, b.token);
      EXPECT_EQ(a.logprob, b.logprob);
      ASSERT_EQ(a.top.size(), b.top.size());
      for (std::size_t k = 0; k < a.top.size(); ++k) EXPECT_EQ(a.top[k].token, b.top[k].token);
    }
  }
  // The row: counts only when a penalty needs them (each token once, in
  // order; negative ids dropped; the prompt's {5, 5} listed with 0 for the
  // repetition penalty), a draw only when not greedy.
  SampleRow pen = Sampler(cases[4]).next_row(history, 2);
  const std::vector<std::pair<std::int32_t, std::int32_t>> want = {{5, 0}, {9, 1}, {12, 1}, {700, 1}};
  EXPECT_EQ(pen.counts, want);
  EXPECT_GT(pen.u, 0.0);
  EXPECT_LT(pen.u, 1.0);
  SampleRow greedy = Sampler(cases[0]).next_row(history, 2);
  EXPECT_TRUE(greedy.counts.empty());
  EXPECT_EQ(greedy.u, 0.0);
  // A count past the vocabulary is ignored, not read.
  SampleRow far = pen;
  far.counts = {{1 << 30, 3}, {-4, 1}};
  far.params.temperature = 0;
  EXPECT_EQ(sample_row(logits, far).token, sample_row(logits, greedy).token);
}

// The penalty counts are kept between rows and extended by the tokens
// appended since: the same counts as counting the whole history afresh,
// one token at a time, after a prompt-sized step, and for a history that
// is not an extension of the last.
TEST(SamplerTest, PenaltyCountsFollowTheHistoryIncrementally) {
  for (float repetition : {1.0f, 1.2f}) {
    for (std::size_t prompt : {std::size_t{300}, std::size_t{10}}) {
      SCOPED_TRACE(testing::Message() << "repetition " << repetition << ", prompt " << prompt);
      SamplingParams p;
      p.frequency_penalty = 0.5f;
      p.presence_penalty = 0.25f;
      p.repetition_penalty = repetition;
      Sampler kept(p);
      std::mt19937 rng(3);
      std::vector<std::int32_t> history;
      auto fresh = [&](const std::vector<std::int32_t>& h, std::size_t n) { return Sampler(p).next_row(h, n).counts; };
      for (int step = 0; step < 400; ++step) {
        // A prompt (in one step, or the first 10 as a prompt and the rest
        // as a long step of generated tokens), a long step, decode steps.
        const int add = step == 0 ? 300 : step == 200 ? 100 : 1;
        for (int k = 0; k < add; ++k) history.push_back(static_cast<std::int32_t>(rng() % 80));
        ASSERT_EQ(kept.next_row(history, prompt).counts, fresh(history, prompt)) << "step " << step;
      }
      std::vector<std::int32_t> other(history.begin(), history.begin() + 120);
      other.back() = (other.back() + 1) % 80;  // shorter, and not a prefix
      EXPECT_EQ(kept.next_row(other, prompt).counts, fresh(other, prompt));
      other.push_back(7);
      EXPECT_EQ(kept.next_row(other, 60).counts, fresh(other, 60));  // another prompt length
    }
  }
}

TEST(SamplerTest, ValidateNamesTheParameter) {
  SamplingParams p;
  p.top_p = 0;
  EXPECT_NE(validate(p).message().find("top_p"), std::string::npos);
  p = {};
  p.temperature = -1;
  EXPECT_NE(validate(p).message().find("temperature"), std::string::npos);
  p = {};
  p.n_logprobs = 21;
  EXPECT_FALSE(validate(p).is_ok());
  EXPECT_TRUE(validate(SamplingParams{}).is_ok());
}

}  // namespace
}  // namespace airlock::engine
