#include <gtest/gtest.h>

#include <cmath>
#include <map>

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

TEST(SamplerTest, GreedyPicksTheMaximumAndReportsLogprobs) {
  std::vector<float> logits = {1.0f, 3.0f, 2.0f, 3.0f};
  SamplingParams p;
  p.temperature = 0;
  p.n_logprobs = 2;
  Sampler s(p);
  SampledToken t = s.sample(logits, {});
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
    SampledToken x = a.sample(logits, {});
    EXPECT_EQ(x.token, b.sample(logits, {}).token);
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
  for (int i = 0; i < 200; ++i) EXPECT_GE(topk.sample(logits, {}).token, 2);
  p.top_k = 0;
  p.top_p = 0.5f;  // 0.4 + 0.3 covers it
  Sampler topp(p);
  for (int i = 0; i < 200; ++i) EXPECT_GE(topp.sample(logits, {}).token, 2);
  p.top_p = 1.0f;
  p.min_p = 0.6f;  // keeps tokens with p >= 0.24: 2 and 3
  Sampler minp(p);
  for (int i = 0; i < 200; ++i) EXPECT_GE(minp.sample(logits, {}).token, 2);
  SamplingParams g;
  g.temperature = 0;
  g.presence_penalty = 2.0f;
  Sampler pen(g);
  std::vector<std::int32_t> history = {3};
  EXPECT_EQ(pen.sample(logits, history).token, 2);  // 3 was penalised below 2
  g.presence_penalty = 0;
  g.repetition_penalty = 1.5f;
  Sampler rep(g);
  EXPECT_EQ(rep.sample(logits, history).token, 2);  // log 4 / 1.5 < log 3
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
