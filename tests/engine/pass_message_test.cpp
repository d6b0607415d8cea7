// Pass messages (pass_message.h): a real pass survives the round trip, and
// every malformed message from another machine is refused with its reason,
// never read out of bounds.
#include <gtest/gtest.h>

#include <limits>
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

const PassLimits kLimits{100, 2048, 8};

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
  // Sequence 0's five tokens share one table, sent once.
  EXPECT_EQ(h.n_tables, 2);
  EXPECT_EQ(d.plan.tables[0], d.plan.tables[4]);
  DecodedPass moved = std::move(d);
  EXPECT_EQ(moved.plan.tables[0], moved.tables.data());
}

// The format as pass_message.h writes it, word by word (the fork seed of
// scripts/fuzz-smoke): two tokens of two sequences, one block copied.
TEST(PassMessage, TheDocumentedFormatDecodes) {
  PassHeader h;
  h.kind = static_cast<std::int32_t>(PassKind::kPass);
  h.n_tokens = 2;
  h.n_out = 1;
  h.n_copies = 1;
  h.n_tables = 2;
  h.n_table_words = 4;
  const std::vector<std::int32_t> w = {7, 8, 17, 16, 0, 1, 2, 5, 33, 32, 18, 17, 0, 1, 2, 2, 1, 2, 5, 2};
  DecodedPass d;
  Status s = decode_pass(h, w, PassLimits{1000, 4096, 64}, &d);
  ASSERT_TRUE(s.is_ok()) << s.to_string();
  EXPECT_EQ(d.plan.copies, (std::vector<std::pair<int, int>>{{2, 5}}));
  EXPECT_EQ(d.plan.tables[1][1], 2);
  EXPECT_EQ(sizeof(PassHeader), 9 * sizeof(std::int32_t));
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
  const std::size_t n = p->batch.size(), c = p->plan.copies.size(), nt = static_cast<std::size_t>(h.n_tables);
  struct Break {
    std::size_t at;
    std::int32_t value;
    const char* says;
  };
  const std::size_t tokens = 0, positions = n, want = 2 * n, copies = 3 * n, slots = 3 * n + 2 * c,
                    n_ctx = 4 * n + 2 * c, table_of = 5 * n + 2 * c, lengths = 6 * n + 2 * c,
                    tables = 6 * n + 2 * c + nt;
  for (const Break& b : {Break{tokens, 100, "token id"}, Break{tokens + 1, -1, "token id"},
                         Break{positions, 3, "context"}, Break{want, 2, "logits flag"},
                         Break{want, 1, "want logits"}, Break{copies, 8, "copied block"},
                         Break{slots, 8 * kBlockTokens, "slot"}, Break{slots + 1, 0, "not its position's place"},
                         Break{n_ctx, 0, "context"}, Break{n_ctx + n - 1, 200, "context"},
                         Break{n_ctx + n - 1, 2049, "context 2049"}, Break{table_of, 2, "table 2"},
                         Break{table_of + n - 1, -1, "table -1"}, Break{lengths, 1, "shorter than announced"},
                         Break{lengths, -1, "table 0 of -1"}, Break{tables, 9, "block 9"}}) {
    std::vector<std::int32_t> w = good;
    w[b.at] = b.value;
    DecodedPass d;
    Status s = decode_pass(h, w, kLimits, &d);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << b.says;
    EXPECT_NE(s.message().find(b.says), std::string::npos) << b.says << ": " << s.message();
  }
  DecodedPass d;
  std::vector<std::int32_t> shorter(good.begin(), good.end() - 1);
  EXPECT_NE(decode_pass(h, shorter, kLimits, &d).message().find("announces"), std::string::npos);
  PassHeader fewer_tables = h;
  fewer_tables.n_table_words -= 1;
  EXPECT_NE(decode_pass(fewer_tables, shorter, kLimits, &d).message().find("table"), std::string::npos);
  // Past the follower's vocabulary, context and storage.
  EXPECT_NE(decode_pass(h, good, PassLimits{40, 2048, 8}, &d).message().find("token id"), std::string::npos);
  EXPECT_NE(decode_pass(h, good, PassLimits{100, 20, 8}, &d).message().find("context"), std::string::npos);
  EXPECT_NE(decode_pass(h, good, PassLimits{100, 2048, 2}, &d).message().find("block"), std::string::npos);
  EXPECT_TRUE(decode_pass(h, good, kLimits, &d).is_ok());
}

// Contexts near INT_MAX, whose table lengths would overflow 32 bits and
// cancel out: refused before any table is read.
TEST(PassMessage, HugeContextsAreRefusedNotWrapped) {
  PassHeader h;
  h.kind = static_cast<std::int32_t>(PassKind::kPass);
  h.n_tokens = 2;
  h.n_tables = 1;
  h.n_table_words = 0;
  const std::int32_t big = std::numeric_limits<std::int32_t>::max();
  const std::vector<std::int32_t> w = {1, 1, big - 1, big - 16, 0, 0, 0, 0, big, big - 15, 0, 0, 0};
  DecodedPass d;
  Status s = decode_pass(h, w, PassLimits{100, big, 8}, &d);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("longer than its table"), std::string::npos) << s.message();
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
    for (int k = 0; k < 3; ++k) {
      const std::uint32_t r = static_cast<std::uint32_t>(rng());
      // Small values, and now and then one near the ends of int32.
      w[rng() % w.size()] = r % 16 == 0 ? static_cast<std::int32_t>(rng()) : static_cast<std::int32_t>(r % 40) - 5;
    }
    if (i % 5 == 0) reinterpret_cast<std::int32_t*>(&hh)[rng() % 8] = static_cast<std::int32_t>(rng() % 64) - 8;
    DecodedPass d;
    refused += decode_pass(hh, w, kLimits, &d).is_ok() ? 0 : 1;
  }
  EXPECT_GT(refused, 1500);
}

}  // namespace
}  // namespace airlock::engine
