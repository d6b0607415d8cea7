// Embeddings read out of a decoder (Qwen3-Embedding style): the pooled
// final hidden states against the double-precision reference pass, last
// and mean pooling, batches, the input's special tokens and cut, refusals.
#include "airlock/engine/decoder_embedding.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "airlock/engine/backend.h"
#include "airlock/engine/embedder.h"
#include "airlock/engine/gguf.h"
#include "airlock/engine/thread_pool.h"
#include "forwarding_backend.h"
#include "gguf_writer.h"

namespace airlock::engine {
namespace {

using testing::TestModelSpec;

constexpr std::int32_t kEos = 63;

// A qwen3 model over a byte-level BPE vocabulary of 64 tokens: letters,
// digits, the space symbol and <|endoftext|> (63, end of sequence).
// pooling: the qwen3.pooling_type key (-1: none); add_eos as the
// tokenizer's add_eos_token.
TestModelSpec embed_spec(int pooling, bool add_eos, int n_ctx = 512) {
  TestModelSpec s = testing::decoder_spec("qwen3", 64, 4, 2, 96, true, GgmlType::kF32, 32);
  s.n_ctx = n_ctx;
  s.metadata = [pooling, add_eos](testing::GgufWriter& w) {
    testing::set_letter_vocab(w);
    w.set_bool("tokenizer.ggml.add_eos_token", add_eos);
    if (pooling >= 0) w.set_u32("qwen3.pooling_type", static_cast<std::uint32_t>(pooling));
  };
  return s;
}

struct Loaded {
  testing::TestModel tm;
  std::unique_ptr<DecoderEmbedding> e;
};

Result<std::unique_ptr<DecoderEmbedding>> load_bytes(const std::string& bytes) {
  AIRLOCK_ASSIGN_OR_RETURN(auto f, GgufFile::parse({reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()}));
  return DecoderEmbedding::from_gguf(std::move(f), make_cpu_backend(std::make_shared<ThreadPool>(2)));
}

Loaded load(const TestModelSpec& s) {
  Loaded l;
  l.tm = testing::make_test_model(s);
  auto e = load_bytes(l.tm.gguf);
  EXPECT_TRUE(e.is_ok()) << e.status().to_string();
  if (e.is_ok()) l.e = std::move(*e);
  return l;
}

// The reference embedding of `ids`: the last row, or the mean of all
// rows, of the final hidden states, normalised.
std::vector<double> reference(const testing::TestModel& tm, const std::vector<std::int32_t>& ids, bool mean) {
  const std::size_t d = static_cast<std::size_t>(tm.spec.n_embd);
  const std::vector<double> h = testing::reference_hidden(tm, ids);
  std::vector<double> v(d, 0.0);
  const std::size_t first = mean ? 0 : ids.size() - 1;
  for (std::size_t t = first; t < ids.size(); ++t)
    for (std::size_t j = 0; j < d; ++j) v[j] += h[t * d + j];
  double n = 0;
  for (double x : v) n += x * x;
  for (double& x : v) x /= std::sqrt(n);
  return v;
}

TEST(DecoderEmbeddingTest, LastPoolingIsTheNormalisedLastHiddenState) {
  for (int pooling : {-1, 0, 3}) {  // no key, "unspecified" and "last" alike
    Loaded l = load(embed_spec(pooling, true));
    ASSERT_TRUE(l.e);
    EXPECT_EQ(l.e->pooling(), DecoderEmbedding::Pooling::kLast);
    EXPECT_EQ(l.e->dim(), 64);
    EXPECT_EQ(l.e->kind(), "decoder");
    const std::vector<std::int32_t> ids = l.e->input_ids("Hello world 42");
    ASSERT_EQ(ids.size(), 15u);  // 14 characters and the end-of-sequence token the tokenizer adds
    EXPECT_EQ(ids.back(), kEos);
    const std::vector<float> got = l.e->embed("Hello world 42");
    const std::vector<double> want = reference(l.tm, ids, false);
    ASSERT_EQ(got.size(), want.size());
    EXPECT_LT(testing::rel_l2_error(got, want), 1e-4) << "pooling key " << pooling;
    // Not the mean of the states, not the state before the end token.
    EXPECT_GT(testing::rel_l2_error(got, reference(l.tm, ids, true)), 1e-2);
    std::vector<std::int32_t> without_eos(ids.begin(), ids.end() - 1);
    EXPECT_GT(testing::rel_l2_error(got, reference(l.tm, without_eos, false)), 1e-2);
  }
}

TEST(DecoderEmbeddingTest, MeanPoolingAveragesEveryToken) {
  Loaded l = load(embed_spec(1, false));
  ASSERT_TRUE(l.e);
  EXPECT_EQ(l.e->pooling(), DecoderEmbedding::Pooling::kMean);
  const std::vector<std::int32_t> ids = l.e->input_ids("mean of 12 tokens");
  EXPECT_EQ(ids.size(), 17u);  // no end token: add_eos_token is false
  EXPECT_LT(testing::rel_l2_error(l.e->embed("mean of 12 tokens"), reference(l.tm, ids, true)), 1e-4);
}

// Texts of different lengths in one pass get what each gets alone, and
// passes split at kMaxBatchTokens change nothing.
TEST(DecoderEmbeddingTest, ABatchEqualsEachTextAlone) {
  Loaded l = load(embed_spec(3, true));
  ASSERT_TRUE(l.e);
  std::vector<std::string> texts = {"a", "Two words", "", "Digits 0123456789 and letters", std::string(200, 'x')};
  const std::vector<std::vector<float>> together = l.e->embed_batch(texts);
  ASSERT_EQ(together.size(), texts.size());
  for (std::size_t i = 0; i < texts.size(); ++i) {
    const std::vector<float> alone = l.e->embed(texts[i]);
    ASSERT_EQ(alone.size(), 64u) << i;
    EXPECT_LT(testing::rel_l2_error(together[i], alone), 1e-5) << i;
    double n = 0;
    for (float x : alone) n += static_cast<double>(x) * x;
    EXPECT_NEAR(n, 1.0, 1e-5) << i;
  }
  // More tokens than one pass holds: several passes, the same vectors.
  std::vector<std::string> many(12, std::string(300, 'y'));
  many[7] = "Two words";
  const std::vector<std::vector<float>> split = l.e->embed_batch(many);
  ASSERT_EQ(split.size(), many.size());
  EXPECT_LT(testing::rel_l2_error(split[7], together[1]), 1e-5);
}

// What each pass asks of the backend: its KV storage and the tokens of
// each forward() (Backend::reserve_pass), largest so far.
class PassWatching final : public testing::ForwardingBackend {
 public:
  PassWatching() : ForwardingBackend(make_cpu_backend(std::make_shared<ThreadPool>(2))) {}
  Result<KvStorage> alloc_kv(int l, std::int64_t s, std::int64_t d, KvType t) override {
    max_slots = std::max(max_slots, s);
    max_kv_bytes = std::max<std::uint64_t>(max_kv_bytes, 2 * static_cast<std::uint64_t>(l * s * d) * kv_type_bytes(t));
    types.push_back(t);
    return ForwardingBackend::alloc_kv(l, s, d, t);
  }
  Status reserve_pass(const PassShape& p) override {
    max_tokens = std::max(max_tokens, p.n_tokens);
    return ForwardingBackend::reserve_pass(p);
  }
  std::int64_t max_slots = 0, max_tokens = 0;
  std::uint64_t max_kv_bytes = 0;
  std::vector<KvType> types;
};

std::string letters(std::size_t n) {
  std::string s;
  for (std::size_t i = 0; i < n; ++i) s += static_cast<char>('a' + (i * 7 + i / 26) % 26);
  return s;
}

// A text longer than a chunk runs through forward() 1024 tokens at a
// time and gets the reference's vector; many short texts share passes of
// at most 1024 KV slots, whatever their token count; the storage is of
// the type asked for, within what pass_bytes() says.
TEST(DecoderEmbeddingTest, PassesHoldBoundedStorageAndChunks) {
  for (int pooling : {1, 3}) {
    const bool mean = pooling == 1;
    testing::TestModel tm = testing::make_test_model(embed_spec(pooling, true, 4096));
    auto file = GgufFile::parse({reinterpret_cast<const std::uint8_t*>(tm.gguf.data()), tm.gguf.size()});
    ASSERT_TRUE(file.is_ok());
    auto watch = std::make_shared<PassWatching>();
    auto e = DecoderEmbedding::from_gguf(std::move(*file), watch);
    ASSERT_TRUE(e.is_ok()) << e.status().to_string();
    const std::string text = letters(3000);
    const std::vector<std::int32_t> ids = (*e)->input_ids(text);
    ASSERT_GT(ids.size(), 2500u);
    EXPECT_LT(testing::rel_l2_error((*e)->embed(text), reference(tm, ids, mean)), 1e-4) << pooling;
    EXPECT_EQ(watch->max_tokens, 1024) << pooling;  // chunks, not the whole text at once
    EXPECT_EQ(watch->max_slots, (static_cast<std::int64_t>(ids.size()) + 15) / 16 * 16) << pooling;
    EXPECT_LE(watch->max_kv_bytes, (*e)->pass_bytes()) << pooling;

    // 300 two-token texts: a block each, 64 to a pass.
    watch->max_slots = watch->max_tokens = 0;
    const std::vector<std::string> tiny(300, "q");
    const std::vector<std::vector<float>> together = (*e)->embed_batch(tiny);
    ASSERT_EQ(together.size(), tiny.size());
    EXPECT_EQ(watch->max_slots, 1024) << pooling;
    EXPECT_EQ(watch->max_tokens, 128) << pooling;
    EXPECT_LT(testing::rel_l2_error(together[299], (*e)->embed("q")), 1e-5) << pooling;
  }
}

// With an f16 KV cache (airlockd's default) a pass stores half the bytes
// and the vectors stay close to the f32 ones.
TEST(DecoderEmbeddingTest, F16KvStorageIsUsedWhenAskedFor) {
  testing::TestModel tm = testing::make_test_model(embed_spec(3, true, 4096));
  std::uint64_t pass_bytes[2] = {0, 0};
  std::vector<float> v[2];
  for (KvType t : {KvType::kF32, KvType::kF16}) {
    auto file = GgufFile::parse({reinterpret_cast<const std::uint8_t*>(tm.gguf.data()), tm.gguf.size()});
    ASSERT_TRUE(file.is_ok());
    auto watch = std::make_shared<PassWatching>();
    auto e = DecoderEmbedding::from_gguf(std::move(*file), watch, t);
    ASSERT_TRUE(e.is_ok()) << e.status().to_string();
    const int i = t == KvType::kF16 ? 1 : 0;
    v[i] = (*e)->embed(letters(1500));
    ASSERT_FALSE(watch->types.empty());
    for (KvType used : watch->types) EXPECT_EQ(used, t);
    EXPECT_LE(watch->max_kv_bytes, (*e)->pass_bytes());
    pass_bytes[i] = (*e)->pass_bytes();
  }
  EXPECT_LT(pass_bytes[1], pass_bytes[0]);
  const double err = testing::rel_l2_error(v[1], v[0]);
  EXPECT_GT(err, 0.0);  // the f16 rounding shows
  EXPECT_LT(err, 5e-3);
}

// Calls from several threads interleave pass by pass and get what they
// get alone.
TEST(DecoderEmbeddingTest, ConcurrentCallsAgreeWithSequentialOnes) {
  Loaded l = load(embed_spec(3, true));
  ASSERT_TRUE(l.e);
  std::vector<std::vector<std::string>> work(3);
  for (int t = 0; t < 3; ++t)
    for (int i = 0; i < 6; ++i) work[t].push_back(std::string(150 + 40 * i + t, static_cast<char>('a' + t + i)));
  std::vector<std::vector<std::vector<float>>> want(3), got(3);
  for (int t = 0; t < 3; ++t) want[t] = l.e->embed_batch(work[t]);
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) threads.emplace_back([&, t] { got[t] = l.e->embed_batch(work[t]); });
  for (std::thread& th : threads) th.join();
  for (int t = 0; t < 3; ++t) {
    ASSERT_EQ(got[t].size(), want[t].size());
    for (std::size_t i = 0; i < want[t].size(); ++i) EXPECT_LT(testing::rel_l2_error(got[t][i], want[t][i]), 1e-6) << t << " " << i;
  }
}

// A text longer than the context keeps its first tokens and still ends in
// the end-of-sequence token.
TEST(DecoderEmbeddingTest, LongTextsAreCutAndKeepTheirEndToken) {
  Loaded l = load(embed_spec(3, true, 32));
  ASSERT_TRUE(l.e);
  EXPECT_EQ(l.e->max_tokens(), 31u);
  const std::string text(100, 'z');
  const std::vector<std::int32_t> ids = l.e->input_ids(text);
  ASSERT_EQ(ids.size(), 32u);
  EXPECT_EQ(ids.back(), kEos);
  EXPECT_LT(testing::rel_l2_error(l.e->embed(text), reference(l.tm, ids, false)), 1e-4);
}

TEST(DecoderEmbeddingTest, OtherPoolingTypesAreRefused) {
  for (int pooling : {2, 4, 7}) {
    auto e = load_bytes(testing::make_test_model(embed_spec(pooling, true)).gguf);
    ASSERT_FALSE(e.is_ok()) << pooling;
    EXPECT_EQ(e.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(e.status().message().find("qwen3.pooling_type " + std::to_string(pooling)), std::string::npos)
        << e.status().to_string();
  }
  // A bidirectional decoder (attention.causal false) would run causally
  // here: refused.
  TestModelSpec bidirectional = embed_spec(3, true);
  auto with_vocab = bidirectional.metadata;
  bidirectional.metadata = [with_vocab](testing::GgufWriter& w) {
    with_vocab(w);
    w.set_bool("qwen3.attention.causal", false);
  };
  auto bi = load_bytes(testing::make_test_model(bidirectional).gguf);
  ASSERT_FALSE(bi.is_ok());
  EXPECT_NE(bi.status().message().find("qwen3.attention.causal is false"), std::string::npos) << bi.status().to_string();
  // A context with room for the end token alone.
  auto tiny = load_bytes(testing::make_test_model(embed_spec(3, true, 1)).gguf);
  ASSERT_FALSE(tiny.is_ok());
  EXPECT_NE(tiny.status().message().find("leaves no room for text"), std::string::npos) << tiny.status().to_string();
  // A decoder without a vocabulary cannot embed text.
  auto bare = load_bytes(testing::make_test_model(testing::decoder_spec("llama", 64, 4, 2, 96, true, GgmlType::kF32)).gguf);
  EXPECT_FALSE(bare.is_ok());
}

TEST(DecoderEmbeddingTest, LoadEmbedderTakesADecoderFile) {
  char tmpl[] = "/tmp/airlock-decoder-embed-XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  const testing::TestModel tm = testing::make_test_model(embed_spec(-1, true));
  const std::string path = dir + "/qwen3-embedding.gguf";
  std::ofstream(path, std::ios::binary) << tm.gguf;
  auto e = load_embedder(path, make_cpu_backend(std::make_shared<ThreadPool>(1)));
  ASSERT_TRUE(e.is_ok()) << e.status().to_string();
  EXPECT_EQ((*e)->kind(), "decoder");
  EXPECT_EQ((*e)->dim(), 64);
  const std::vector<std::int32_t> ids = {7, 4, 11, 11, 14, kEos};  // "hello", then the end token
  EXPECT_LT(testing::rel_l2_error((*e)->embed("hello"), reference(tm, ids, false)), 1e-4);
  EXPECT_EQ((*e)->count_tokens("hello"), 5u);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace airlock::engine
