// Pass messages (pass_message.h): a real pass survives the round trip, and
// every malformed message from another machine is refused with its reason,
// never read out of bounds.
#include <gtest/gtest.h>

#include <random>

#include "airlock/engine/kv_cache.h"
#include "airlock/engine/pass_message.h"

namespace airlock::engine {
namespace {

// Two sequences (one forked, so a block is copied on write), a prompt
// chunk and a decode step; planned by Model::commit as the decoder does.
struct Planned {
  KvCache cache{8};
  Batch batch;
  PassPlan plan;
};

std::unique_ptr<Planned> planned() {
  auto p = std::make_unique<Planned>();
  EXPECT_TRUE(p->cache.add_sequence(0).is_ok());
  Batch first;
  for (int i = 0; i < 20; ++i) first.add(i, i, 0, false);
  EXPECT_TRUE(Model::commit(first, p->cache).is_ok());
  EXPECT_TRUE(p->cache.fork(0, 1).is_ok());
  for (int i = 0; i < 5; ++i) p->batch.add(40 + i, 20 + i, 0, i == 4);
  p->batch.add(7, 20, 1, true);
  Result<PassPlan> plan = Model::commit(p->batch, p->cache);
  EXPECT_TRUE(plan.is_ok()) << plan.status().to_string();
  p->plan = std::move(*plan);
  EXPECT_FALSE(p->plan.copies.empty());
  return p;
}

const PassLimits kLimits{100, 8};

TEST(PassMessage, RoundTrip) {
  auto p = planned();
  PassHeader h;
  Result<std::vector<std::int32_t>> words = encode_pass(p->batch, p->plan, &h);
  ASSERT_TRUE(words.is_ok()) << words.status().to_string();
  Result<std::size_t> announced = payload_words(h);
  ASSERT_TRUE(announced.is_ok());
  ASSERT_EQ(*announced, words->size());
  DecodedPass d;
  Status s = decode_pass(h, *words, kLimits, &d);
  ASSERT_TRUE(s.is_ok()) << s.to_string();
  EXPECT_EQ(d.batch.tokens, p->batch.tokens);
  EXPECT_EQ(d.batch.positions, p->batch.positions);
  EXPECT_EQ(d.batch.want_logits, p->batch.want_logits);
  EXPECT_EQ(d.plan.n_out, p->plan.n_out);
  EXPECT_EQ(d.plan.copies, p->plan.copies);
  EXPECT_EQ(d.plan.slots, p->plan.slots);
  EXPECT_EQ(d.plan.n_ctx, p->plan.n_ctx);
  ASSERT_EQ(d.plan.tables.size(), p->plan.tables.size());
  for (std::size_t t = 0; t < d.plan.tables.size(); ++t)
    for (int b = 0; b < KvCache::blocks_for(d.plan.n_ctx[t]); ++b) EXPECT_EQ(d.plan.tables[t][b], p->plan.tables[t][b]);
  // The tables stay valid when the decoded pass moves.
  DecodedPass moved = std::move(d);
  EXPECT_EQ(moved.plan.tables[0], moved.tables.data());
}

TEST(PassMessage, HeadersThatAreNotOne) {
  PassHeader h;
  h.magic = 0x12345678;
  EXPECT_NE(payload_words(h).status().message().find("magic"), std::string::npos);
  h = PassHeader{};
  h.kind = 9;
  EXPECT_NE(payload_words(h).status().message().find("unknown kind"), std::string::npos);
  h.kind = static_cast<std::int32_t>(PassKind::kAllocKv);
  EXPECT_FALSE(payload_words(h).is_ok());  // no blocks
  h.n_blocks = 4;
  h.kv_type = 7;
  EXPECT_FALSE(payload_words(h).is_ok());
  h.kv_type = static_cast<std::int32_t>(KvType::kF16);
  ASSERT_TRUE(payload_words(h).is_ok());
  EXPECT_EQ(*payload_words(h), 0u);
  h = PassHeader{};
  h.kind = static_cast<std::int32_t>(PassKind::kPass);
  for (auto set : {+[](PassHeader& x) { x.n_tokens = -1; }, +[](PassHeader& x) { x.n_tokens = kMaxPassTokens + 1; },
                   +[](PassHeader& x) { x.n_out = 2; }, +[](PassHeader& x) { x.n_copies = -3; },
                   +[](PassHeader& x) { x.n_table_words = kMaxPassTableWords + 1; }}) {
    PassHeader bad = h;
    bad.n_tokens = 1;
    set(bad);
    EXPECT_EQ(payload_words(bad).status().code(), StatusCode::kInvalidArgument);
  }
}

// Each field broken in turn: refused, naming it.
TEST(PassMessage, EveryInconsistencyIsNamed) {
  auto p = planned();
  PassHeader h;
  std::vector<std::int32_t> good = encode_pass(p->batch, p->plan, &h).value();
  const std::size_t n = p->batch.size(), c = p->plan.copies.size();
  struct Break {
    std::size_t at;
    std::int32_t value;
    const char* says;
  };
  const std::size_t tokens = 0, positions = n, want = 2 * n, copies = 3 * n, slots = 3 * n + 2 * c,
                    n_ctx = 4 * n + 2 * c, tables = 5 * n + 2 * c;
  for (const Break& b : {Break{tokens, 100, "token id"}, Break{tokens + 1, -1, "token id"},
                         Break{positions, 3, "context"}, Break{want, 2, "logits flag"},
                         Break{want, 1, "want logits"}, Break{copies, 8, "copied block"},
                         Break{slots, 8 * kBlockTokens, "slot"}, Break{slots + 1, 0, "not in its table"},
                         Break{n_ctx, 0, "context"}, Break{n_ctx + n - 1, 200, "context"},
                         Break{tables, 9, "block 9"}}) {
    std::vector<std::int32_t> w = good;
    w[b.at] = b.value;
    DecodedPass d;
    Status s = decode_pass(h, w, kLimits, &d);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << b.says;
    EXPECT_NE(s.message().find(b.says), std::string::npos) << s.message();
  }
  DecodedPass d;
  std::vector<std::int32_t> shorter(good.begin(), good.end() - 1);
  EXPECT_NE(decode_pass(h, shorter, kLimits, &d).message().find("announces"), std::string::npos);
  PassHeader fewer_tables = h;
  fewer_tables.n_table_words -= 1;
  EXPECT_FALSE(decode_pass(fewer_tables, shorter, kLimits, &d).is_ok());
  // Past the follower's vocabulary and storage.
  EXPECT_FALSE(decode_pass(h, good, PassLimits{40, 8}, &d).is_ok());
  EXPECT_FALSE(decode_pass(h, good, PassLimits{100, 2}, &d).is_ok());
  EXPECT_TRUE(decode_pass(h, good, kLimits, &d).is_ok());
}

// Random words in a valid frame: refused or accepted, never a crash (ASan
// and the fuzz target fuzz_pass_message go further).
TEST(PassMessage, RandomCorruptionNeverReadsOutOfBounds) {
  auto p = planned();
  PassHeader h;
  const std::vector<std::int32_t> good = encode_pass(p->batch, p->plan, &h).value();
  std::mt19937 rng(17);
  int refused = 0;
  for (int i = 0; i < 2000; ++i) {
    std::vector<std::int32_t> w = good;
    PassHeader hh = h;
    for (int k = 0; k < 3; ++k) w[rng() % w.size()] = static_cast<std::int32_t>(rng() % 40) - 5;
    if (i % 5 == 0) reinterpret_cast<std::int32_t*>(&hh)[rng() % 8] = static_cast<std::int32_t>(rng() % 64) - 8;
    DecodedPass d;
    refused += decode_pass(hh, w, kLimits, &d).is_ok() ? 0 : 1;
  }
  EXPECT_GT(refused, 1500);
}

}  // namespace
}  // namespace airlock::engine
