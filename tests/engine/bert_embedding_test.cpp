// BERT-family encoders: the engine against a plain double-precision
// reference encoder (below, written from the architecture's definition, not
// from the engine) on random models that carry the real bge WordPiece
// vocabulary; batching, pooling, normalisation, truncation; hostile files;
// load_embedder's choice of model kind.
#include "airlock/engine/bert_embedding.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <numbers>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "airlock/engine/kernels.h"
#include "airlock/engine/thread_pool.h"
#include "gguf_writer.h"
#include "sentencepiece_vocab.h"

namespace airlock::engine {
namespace {

using testing::BertModelSpec;
using testing::BertTestModel;

// ---- the reference encoder ------------------------------------------------

using Vec = std::vector<double>;

struct Ref {
  const BertTestModel& m;
  const Vec& w(const std::string& name) const { return m.weights.at(name); }
  bool has(const std::string& name) const { return m.weights.count(name) != 0; }

  // y = W x (+ b), W (n_out rows of x.size()) starting at row `row0`.
  Vec linear(const std::string& wname, const Vec& x, std::size_t n_out, std::size_t row0 = 0) const {
    const Vec& W = w(wname);
    Vec y(n_out, 0.0);
    for (std::size_t r = 0; r < n_out; ++r)
      for (std::size_t k = 0; k < x.size(); ++k) y[r] += W[(row0 + r) * x.size() + k] * x[k];
    return y;
  }
  void add_bias(Vec& y, const std::string& bname) const {
    if (!has(bname)) return;
    for (std::size_t i = 0; i < y.size(); ++i) y[i] += w(bname)[i];
  }
  Vec layer_norm(const Vec& x, const std::string& prefix) const {
    double mean = 0, var = 0;
    for (double v : x) mean += v;
    mean /= static_cast<double>(x.size());
    for (double v : x) var += (v - mean) * (v - mean);
    var /= static_cast<double>(x.size());
    Vec y(x.size());
    for (std::size_t i = 0; i < x.size(); ++i)
      y[i] = (x[i] - mean) / std::sqrt(var + m.spec.norm_eps) * w(prefix + ".weight")[i] + w(prefix + ".bias")[i];
    return y;
  }
  static double gelu(double x) {  // the tanh form llama.cpp's ggml_gelu computes
    return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / std::numbers::pi) * (x + 0.044715 * x * x * x)));
  }
  // Rotates each head's halves (i, i + half) by pos * base^(-2i/head_dim).
  void rope(Vec& v, int pos) const {
    const int hd = m.spec.n_embd / m.spec.n_head, half = hd / 2;
    for (int h = 0; h < m.spec.n_head; ++h)
      for (int i = 0; i < half; ++i) {
        const double theta = pos * std::pow(static_cast<double>(m.spec.rope_base), -2.0 * i / hd);
        double& a = v[static_cast<std::size_t>(h * hd + i)];
        double& b = v[static_cast<std::size_t>(h * hd + i + half)];
        const double a0 = a, b0 = b;
        a = a0 * std::cos(theta) - b0 * std::sin(theta);
        b = a0 * std::sin(theta) + b0 * std::cos(theta);
      }
  }

  // The last hidden states of one token sequence, tokens from `second` on
  // of token type 1 (when the model has two types).
  std::vector<Vec> hidden(const std::vector<std::int32_t>& tokens, std::size_t second) const {
    const BertModelSpec& s = m.spec;
    const bool nomic = s.arch == "nomic-bert";
    const std::size_t n = tokens.size(), d = static_cast<std::size_t>(s.n_embd), ff = static_cast<std::size_t>(s.n_ff);
    const std::size_t hd = d / static_cast<std::size_t>(s.n_head);
    std::vector<Vec> x(n, Vec(d));
    for (std::size_t t = 0; t < n; ++t) {
      const std::size_t type = t >= second && s.n_token_types >= 2 ? 1 : 0;
      for (std::size_t i = 0; i < d; ++i) {
        x[t][i] = w("token_embd.weight")[static_cast<std::size_t>(tokens[t]) * d + i] +
                  w("token_types.weight")[type * d + i];
        if (!nomic) x[t][i] += w("position_embd.weight")[t * d + i];
      }
      x[t] = layer_norm(x[t], "token_embd_norm");
    }
    for (int l = 0; l < s.n_layer; ++l) {
      const std::string b = "blk." + std::to_string(l) + ".";
      std::vector<Vec> q(n), k(n), v(n);
      for (std::size_t t = 0; t < n; ++t) {
        if (nomic) {
          q[t] = linear(b + "attn_qkv.weight", x[t], d, 0);
          k[t] = linear(b + "attn_qkv.weight", x[t], d, d);
          v[t] = linear(b + "attn_qkv.weight", x[t], d, 2 * d);
          rope(q[t], static_cast<int>(t));
          rope(k[t], static_cast<int>(t));
        } else {
          q[t] = linear(b + "attn_q.weight", x[t], d);
          k[t] = linear(b + "attn_k.weight", x[t], d);
          v[t] = linear(b + "attn_v.weight", x[t], d);
          add_bias(q[t], b + "attn_q.bias");
          add_bias(k[t], b + "attn_k.bias");
          add_bias(v[t], b + "attn_v.bias");
        }
      }
      std::vector<Vec> next(n);
      for (std::size_t t = 0; t < n; ++t) {
        Vec att(d, 0.0);
        for (std::size_t h = 0; h < static_cast<std::size_t>(s.n_head); ++h) {
          Vec sc(n);
          double mx = -1e300;
          for (std::size_t p = 0; p < n; ++p) {  // every position: no mask within a sequence
            double dot = 0;
            for (std::size_t i = 0; i < hd; ++i) dot += q[t][h * hd + i] * k[p][h * hd + i];
            sc[p] = dot / std::sqrt(static_cast<double>(hd));
            mx = std::max(mx, sc[p]);
          }
          double z = 0;
          for (double& e : sc) z += e = std::exp(e - mx);
          for (std::size_t p = 0; p < n; ++p)
            for (std::size_t i = 0; i < hd; ++i) att[h * hd + i] += sc[p] / z * v[p][h * hd + i];
        }
        Vec o = linear(b + "attn_output.weight", att, d);
        add_bias(o, b + "attn_output.bias");
        for (std::size_t i = 0; i < d; ++i) o[i] += x[t][i];
        Vec h1 = layer_norm(o, b + "attn_output_norm");
        Vec u = linear(b + "ffn_up.weight", h1, ff);
        add_bias(u, b + "ffn_up.bias");
        if (nomic) {
          Vec g = linear(b + "ffn_gate.weight", h1, ff);
          for (std::size_t i = 0; i < ff; ++i) u[i] *= g[i] / (1.0 + std::exp(-g[i]));
        } else {
          for (double& e : u) e = gelu(e);
        }
        Vec dn = linear(b + "ffn_down.weight", u, d);
        add_bias(dn, b + "ffn_down.bias");
        for (std::size_t i = 0; i < d; ++i) dn[i] += h1[i];
        next[t] = layer_norm(dn, b + "layer_output_norm");
      }
      x = std::move(next);
    }
    return x;
  }

  // The pooled, L2-normalised embedding of one token sequence.
  Vec embed(const std::vector<std::int32_t>& tokens, int pooling) const {
    const std::vector<Vec> x = hidden(tokens, tokens.size());
    const std::size_t n = tokens.size(), d = static_cast<std::size_t>(m.spec.n_embd);
    Vec pooled(d, 0.0);
    if (pooling == 2) {
      pooled = x[0];
    } else {
      for (std::size_t t = 0; t < n; ++t)
        for (std::size_t i = 0; i < d; ++i) pooled[i] += x[t][i] / static_cast<double>(n);
    }
    double norm = 0;
    for (double e : pooled) norm += e * e;
    for (double& e : pooled) e /= std::sqrt(norm);
    return pooled;
  }

  // A cross-encoder's score: the head on the [CLS] state.
  double score(const std::vector<std::int32_t>& tokens, std::size_t second) const {
    Vec c = hidden(tokens, second)[0];
    if (has("cls.weight")) {
      c = linear("cls.weight", c, c.size());
      add_bias(c, "cls.bias");
      for (double& e : c) e = std::tanh(e);
    }
    Vec y = linear("cls.output.weight", c, 1);
    add_bias(y, "cls.output.bias");
    return y[0];
  }
};

// ---- fixtures -------------------------------------------------------------

std::string vocab_path() {
  const char* d = std::getenv("AIRLOCK_MODELS_DIR");
  if (d == nullptr || *d == '\0') return "";
  return std::string(d) + "/tokenizers/llama.cpp-vocab/ggml-vocab-bert-bge.gguf";
}

// The real bge vocabulary, opened once.
const GgufFile* vocab() {
  static std::unique_ptr<GgufFile> f = [] {
    std::unique_ptr<GgufFile> out;
    if (vocab_path().empty() || !std::filesystem::exists(vocab_path())) return out;
    auto r = GgufFile::open(vocab_path());
    if (r.is_ok()) out = std::move(*r);
    return out;
  }();
  return f.get();
}

#define REQUIRE_VOCAB()                                                                                  \
  if (vocab() == nullptr)                                                                                \
  GTEST_SKIP() << "ggml-vocab-bert-bge.gguf not found: set AIRLOCK_MODELS_DIR to the shared models folder " \
                  "(it needs tokenizers/llama.cpp-vocab/ggml-vocab-bert-bge.gguf)"

std::shared_ptr<Backend> cpu() {
  static std::shared_ptr<Backend> be = make_cpu_backend(std::make_shared<ThreadPool>(2));
  return be;
}

BertModelSpec bert_spec(std::uint32_t seed = 1) {
  BertModelSpec s;
  auto tokens = vocab()->get_string_array("tokenizer.ggml.tokens");
  s.n_vocab = static_cast<int>(tokens->size());
  s.seed = seed;
  s.metadata = [](testing::GgufWriter& w) {
    w.copy_metadata(*vocab(), "tokenizer.", {"tokenizer.ggml.token_type_count"});
  };
  return s;
}

Result<std::unique_ptr<BertEmbedding>> load_bytes(const std::string& bytes) {
  auto f = GgufFile::parse({reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()});
  if (!f.is_ok()) return f.status();
  return BertEmbedding::from_gguf(std::move(*f), cpu());
}

struct Loaded {
  BertTestModel tm;
  std::unique_ptr<BertEmbedding> e;
};

Loaded load(const BertModelSpec& spec) {
  Loaded l;
  l.tm = testing::make_bert_model(spec);
  auto e = load_bytes(l.tm.gguf);
  EXPECT_TRUE(e.is_ok()) << e.status().to_string();
  if (e.is_ok()) l.e = std::move(*e);
  return l;
}

double rel_error(const std::vector<float>& got, const Vec& want) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  return std::sqrt(num / den);
}

const std::vector<std::string>& texts() {
  static const std::vector<std::string> t = {
      "Hello world",
      "",
      "The quick brown fox jumps over the lazy dog.",
      "Airlock runs language models offline; nothing leaves the machine.",
      "Ünïcödé àccents and CJK 漢字 are split as BERT does",
      "short",
      "A somewhat longer passage, with punctuation, numbers like 3.14159 and 2024, and words that WordPiece "
      "breaks into pieces: tokenization, embeddings, unbelievably.",
  };
  return t;
}

// ---- tests ----------------------------------------------------------------

TEST(BertEmbeddingTest, LoadsTheShapeAndTheVocabulary) {
  REQUIRE_VOCAB();
  Loaded l = load(bert_spec());
  ASSERT_TRUE(l.e);
  const BertEmbedding& e = *l.e;
  EXPECT_EQ(e.kind(), "bert");
  EXPECT_EQ(e.dim(), 64);
  EXPECT_EQ(e.params().n_layer, 2);
  EXPECT_EQ(e.params().n_head, 4);
  EXPECT_EQ(e.params().n_token_types, 2);
  EXPECT_EQ(e.params().pooling, PoolingType::kMean);
  EXPECT_EQ(e.max_tokens(), 62u);  // 64 less [CLS] and [SEP]
  std::vector<std::int32_t> ids = e.input_ids("Hello world");
  ASSERT_EQ(ids.size(), 4u);
  EXPECT_EQ(e.tokenizer().token_bytes(ids.front(), true), "[CLS]");
  EXPECT_EQ(e.tokenizer().token_bytes(ids.back(), true), "[SEP]");
  EXPECT_EQ(e.count_tokens("Hello world"), 2u);
}

// The vocabulary copied into a generated model still reproduces llama.cpp's
// bge test vectors through the encoder's own tokenizer.
TEST(BertEmbeddingTest, TokenizerPassesTheBgeVectors) {
  REQUIRE_VOCAB();
  Loaded l = load(bert_spec());
  ASSERT_TRUE(l.e);
  std::ifstream inp_f(vocab_path() + ".inp"), out_f(vocab_path() + ".out");
  if (!inp_f || !out_f) GTEST_SKIP() << vocab_path() << ".inp/.out not found";
  std::stringstream inp_ss, out_ss;
  inp_ss << inp_f.rdbuf();
  out_ss << out_f.rdbuf();
  std::string inp = inp_ss.str();
  std::vector<std::string> inputs;
  const std::string sep = "\n__ggml_vocab_test__\n";
  for (std::size_t at; (at = inp.find(sep)) != std::string::npos;) {
    inputs.push_back(inp.substr(0, at));
    inp.erase(0, at + sep.size());
  }
  std::string line;
  std::size_t i = 0, failures = 0;
  for (; std::getline(out_ss, line) && i < inputs.size(); ++i) {
    std::istringstream ls(line);
    std::vector<std::int32_t> want;
    for (std::int32_t id; ls >> id;) want.push_back(id);
    if (l.e->tokenizer().encode(inputs[i], false, false) != want) {
      ++failures;
      ADD_FAILURE() << "vector " << i << " '" << inputs[i] << "'";
    }
  }
  EXPECT_GT(i, 40u);
  EXPECT_EQ(failures, 0u);
}

struct RefCase {
  const char* name;
  const char* arch;
  GgmlType type;
  int pooling;
  double tolerance;  // vector kernels (quantised types use 8-bit activations)
};

class BertReferenceTest : public ::testing::TestWithParam<RefCase> {};

TEST_P(BertReferenceTest, AgreesWithTheReferenceSingleAndBatched) {
  REQUIRE_VOCAB();
  const RefCase& c = GetParam();
  BertModelSpec s = bert_spec(static_cast<std::uint32_t>(std::string(c.name).size() * 7 + 3));
  s.arch = c.arch;
  s.weight_type = c.type;
  s.pooling = c.pooling;
  Loaded l = load(s);
  ASSERT_TRUE(l.e);
  Ref ref{l.tm};
  const int pooling = c.pooling == 2 ? 2 : 1;
  std::vector<Vec> want;
  for (const std::string& t : texts()) want.push_back(ref.embed(l.e->input_ids(t), pooling));

  double worst_single = 0, worst_batch = 0, worst_diff = 0;
  std::vector<std::vector<float>> batch = l.e->embed_batch(texts());
  ASSERT_EQ(batch.size(), texts().size());
  for (std::size_t i = 0; i < texts().size(); ++i) {
    std::vector<float> one = l.e->embed(texts()[i]);
    ASSERT_EQ(one.size(), 64u);
    ASSERT_EQ(batch[i].size(), 64u);
    worst_single = std::max(worst_single, rel_error(one, want[i]));
    worst_batch = std::max(worst_batch, rel_error(batch[i], want[i]));
    for (std::size_t k = 0; k < one.size(); ++k)
      worst_diff = std::max(worst_diff, static_cast<double>(std::fabs(one[k] - batch[i][k])));
    double norm = 0;
    for (float x : one) norm += static_cast<double>(x) * x;
    EXPECT_NEAR(std::sqrt(norm), 1.0, 1e-5) << "text " << i;
  }
  EXPECT_LT(worst_single, c.tolerance) << c.name << " " << kernel_isa();
  EXPECT_LT(worst_batch, c.tolerance) << c.name << " " << kernel_isa();
  // A text's embedding does not depend on its batch companions.
  EXPECT_LT(worst_diff, 1e-6) << c.name;
  std::printf("[ bert     ] %s (%s): max relative error %.2e single, %.2e batched; batch vs single %.1e\n", c.name,
              kernel_isa(), worst_single, worst_batch, worst_diff);

  // The scalar kernels keep float activations: every weight type within 1e-4.
  force_scalar_kernels(true);
  std::vector<std::vector<float>> exact = l.e->embed_batch(texts());
  force_scalar_kernels(false);
  double worst_exact = 0;
  for (std::size_t i = 0; i < texts().size(); ++i) worst_exact = std::max(worst_exact, rel_error(exact[i], want[i]));
  EXPECT_LT(worst_exact, 1e-4) << c.name << " scalar";
  std::printf("[ bert     ] %s (scalar): max relative error %.2e\n", c.name, worst_exact);
}

INSTANTIATE_TEST_SUITE_P(
    Models, BertReferenceTest,
    ::testing::Values(RefCase{"bert_f32_mean", "bert", GgmlType::kF32, 1, 1e-4},
                      RefCase{"bert_f32_cls", "bert", GgmlType::kF32, 2, 1e-4},
                      RefCase{"bert_f32_no_pooling_key", "bert", GgmlType::kF32, -1, 1e-4},
                      RefCase{"bert_f16_mean", "bert", GgmlType::kF16, 1, 1e-4},
                      RefCase{"bert_q8_0_mean", "bert", GgmlType::kQ8_0, 1, 3e-2},
                      RefCase{"nomic_f32_mean", "nomic-bert", GgmlType::kF32, 1, 1e-4}),
    [](const auto& param_info) { return std::string(param_info.param.name); });

TEST(BertEmbeddingTest, ClsAndMeanPoolingDiffer) {
  REQUIRE_VOCAB();
  BertModelSpec s = bert_spec(5);
  Loaded mean = load(s);
  s.pooling = 2;
  Loaded cls = load(s);  // same seed: the same weights
  ASSERT_TRUE(mean.e && cls.e);
  EXPECT_EQ(cls.e->params().pooling, PoolingType::kCls);
  const std::string text = "pooling decides which tokens count";
  std::vector<float> a = mean.e->embed(text), b = cls.e->embed(text);
  double diff = 0;
  for (std::size_t i = 0; i < a.size(); ++i) diff = std::max(diff, static_cast<double>(std::fabs(a[i] - b[i])));
  EXPECT_GT(diff, 1e-3);
  Ref ref{cls.tm};
  EXPECT_LT(rel_error(b, ref.embed(cls.e->input_ids(text), 2)), 1e-4);
}

TEST(BertEmbeddingTest, LongTextsAreCutToTheContextLength) {
  REQUIRE_VOCAB();
  BertModelSpec s = bert_spec(9);
  s.n_ctx = 24;
  Loaded l = load(s);
  ASSERT_TRUE(l.e);
  std::string long_text;
  for (int i = 0; i < 40; ++i) long_text += "word" + std::to_string(i) + " ";
  EXPECT_GT(l.e->count_tokens(long_text), l.e->max_tokens());
  EXPECT_EQ(l.e->max_tokens(), 22u);
  std::vector<std::int32_t> ids = l.e->input_ids(long_text);
  ASSERT_EQ(ids.size(), 24u);
  EXPECT_EQ(l.e->tokenizer().token_bytes(ids.front(), true), "[CLS]");
  EXPECT_EQ(l.e->tokenizer().token_bytes(ids.back(), true), "[SEP]");
  // The content is the text's first 22 tokens.
  std::vector<std::int32_t> content = l.e->tokenizer().encode(long_text, false, false);
  EXPECT_TRUE(std::equal(ids.begin() + 1, ids.end() - 1, content.begin()));
  Ref ref{l.tm};
  const Vec want = ref.embed(ids, 1);
  EXPECT_LT(rel_error(l.e->embed(long_text), want), 1e-4);
  // Batched with short texts: the same vector.
  std::vector<std::string> mixed = {"a", long_text, "b c d"};
  EXPECT_LT(rel_error(l.e->embed_batch(mixed)[1], want), 1e-4);
}

TEST(BertEmbeddingTest, ManyTextsSpanSeveralPasses) {
  REQUIRE_VOCAB();
  BertModelSpec s = bert_spec(11);
  s.n_embd = 32;
  s.n_head = 2;
  s.n_ff = 64;
  s.n_layer = 1;
  Loaded l = load(s);
  ASSERT_TRUE(l.e);
  // More than kMaxBatchTokens tokens in total.
  std::vector<std::string> many;
  std::mt19937 rng(3);
  std::int64_t total = 0;
  while (total <= BertEmbedding::kMaxBatchTokens + 200) {
    std::string t;
    for (int w = 0; w < 5 + static_cast<int>(rng() % 50); ++w) t += "tok" + std::to_string(rng() % 100) + " ";
    total += static_cast<std::int64_t>(l.e->input_ids(t).size());
    many.push_back(t);
  }
  std::vector<std::vector<float>> got = l.e->embed_batch(many);
  ASSERT_EQ(got.size(), many.size());
  Ref ref{l.tm};
  for (std::size_t i : {std::size_t{0}, many.size() / 2, many.size() - 1})
    EXPECT_LT(rel_error(got[i], ref.embed(l.e->input_ids(many[i]), 1)), 1e-4) << i;
}

// embed() may run on many threads at once (the forward passes take turns).
TEST(BertEmbeddingTest, ConcurrentCallsAgreeWithSequentialOnes) {
  REQUIRE_VOCAB();
  Loaded l = load(bert_spec(13));
  ASSERT_TRUE(l.e);
  std::vector<std::vector<float>> want;
  for (const std::string& t : texts()) want.push_back(l.e->embed(t));
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0};
  for (int k = 0; k < 4; ++k)
    threads.emplace_back([&, k] {
      for (int rep = 0; rep < 3; ++rep)
        for (std::size_t i = 0; i < texts().size(); ++i) {
          const std::size_t j = (i + static_cast<std::size_t>(k)) % texts().size();
          if (l.e->embed(texts()[j]) != want[j]) ++mismatches;
        }
    });
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(mismatches.load(), 0);
}

TEST(BertEmbeddingTest, TokenInputIsChecked) {
  REQUIRE_VOCAB();
  Loaded l = load(bert_spec());
  ASSERT_TRUE(l.e);
  std::vector<std::vector<std::int32_t>> bad = {{101, -1, 102}};
  EXPECT_EQ(l.e->embed_tokens(bad).status().code(), StatusCode::kInvalidArgument);
  bad = {{101, l.e->params().n_vocab, 102}};
  EXPECT_EQ(l.e->embed_tokens(bad).status().code(), StatusCode::kInvalidArgument);
  bad = {{}};
  EXPECT_EQ(l.e->embed_tokens(bad).status().code(), StatusCode::kInvalidArgument);
  bad = {std::vector<std::int32_t>(65, 101)};
  EXPECT_EQ(l.e->embed_tokens(bad).status().code(), StatusCode::kInvalidArgument);
}

struct HostileCase {
  const char* name;
  std::function<void(BertModelSpec&)> edit;
  StatusCode code;
  const char* message;  // part of the error text
};

class BertHostileTest : public ::testing::TestWithParam<HostileCase> {};

TEST_P(BertHostileTest, IsRefusedWithAClearStatus) {
  REQUIRE_VOCAB();
  const HostileCase& c = GetParam();
  BertModelSpec s = bert_spec();
  c.edit(s);
  BertTestModel tm = testing::make_bert_model(s);
  auto e = load_bytes(tm.gguf);
  ASSERT_FALSE(e.is_ok()) << c.name;
  EXPECT_EQ(e.status().code(), c.code) << e.status().to_string();
  EXPECT_NE(e.status().to_string().find(c.message), std::string::npos) << e.status().to_string();
}

INSTANTIATE_TEST_SUITE_P(
    Files, BertHostileTest,
    ::testing::Values(
        HostileCase{"missing_tensor", [](BertModelSpec& s) { s.omit_tensor = "blk.1.ffn_down.bias"; },
                    StatusCode::kVerificationFailed, "'blk.1.ffn_down.bias' is missing"},
        HostileCase{"missing_position_table", [](BertModelSpec& s) { s.omit_tensor = "position_embd.weight"; },
                    StatusCode::kVerificationFailed, "'position_embd.weight' is missing"},
        HostileCase{"wrong_shape_matrix", [](BertModelSpec& s) { s.misshape_tensor = "blk.0.attn_k.weight"; },
                    StatusCode::kVerificationFailed, "'blk.0.attn_k.weight' has shape [64, 65], expected [64, 64]"},
        HostileCase{"wrong_shape_norm", [](BertModelSpec& s) { s.misshape_tensor = "blk.1.layer_output_norm.bias"; },
                    StatusCode::kVerificationFailed, "'blk.1.layer_output_norm.bias' has shape [65]"},
        HostileCase{"position_table_shorter_than_context",
                    [](BertModelSpec& s) { s.misshape_tensor = "position_embd.weight"; },
                    StatusCode::kVerificationFailed, "'position_embd.weight' has shape [64, 65]"},
        // a tensor with no place in the pass is refused, not ignored
        HostileCase{"unused_tensor", [](BertModelSpec& s) { s.extra_tensor = "blk.0.attn_norm_2.bias"; },
                    StatusCode::kInvalidArgument, "tensor 'blk.0.attn_norm_2.bias' has no place in this engine's bert"},
        HostileCase{"causal", [](BertModelSpec& s) { s.causal = 1; }, StatusCode::kInvalidArgument, "causal"},
        HostileCase{"zero_heads", [](BertModelSpec& s) { s.meta_n_head = 0; }, StatusCode::kVerificationFailed,
                    "bert.attention.head_count is missing or out of range"},
        HostileCase{"heads_do_not_divide", [](BertModelSpec& s) { s.meta_n_head = 5; },
                    StatusCode::kVerificationFailed, "embedding_length 64 is not a multiple of head_count 5"},
        HostileCase{"pooling_none", [](BertModelSpec& s) { s.pooling = 0; }, StatusCode::kInvalidArgument,
                    "pooling type 0"},
        HostileCase{"pooling_rank", [](BertModelSpec& s) { s.pooling = 4; }, StatusCode::kInvalidArgument,
                    "pooling type 4"},
        HostileCase{"vocabulary_larger_than_table", [](BertModelSpec& s) { s.n_vocab = 1000; },
                    StatusCode::kVerificationFailed, "token_embd.weight 1000 rows"},
        HostileCase{"other_architecture", [](BertModelSpec& s) { s.arch_written = "llama"; },
                    StatusCode::kInvalidArgument, "architecture 'llama'"}),
    [](const auto& param_info) { return std::string(param_info.param.name); });

void PrintTo(const HostileCase& c, std::ostream* os) { *os << c.name; }
void PrintTo(const RefCase& c, std::ostream* os) { *os << c.name; }

// Every truncation of a valid file is refused (by the GGUF reader or the
// encoder's checks), never a crash.
TEST(BertEmbeddingTest, TruncatedFilesAreRefused) {
  REQUIRE_VOCAB();
  BertModelSpec s = bert_spec();
  s.n_embd = 32;
  s.n_head = 2;
  s.n_ff = 32;
  s.n_layer = 1;
  s.n_ctx = 16;
  BertTestModel tm = testing::make_bert_model(s);
  for (std::size_t cut : {std::size_t{16}, tm.gguf.size() / 3, tm.gguf.size() / 2, tm.gguf.size() - 1}) {
    auto e = load_bytes(tm.gguf.substr(0, cut));
    EXPECT_FALSE(e.is_ok()) << cut;
  }
}

// ---- cross-encoder rerankers ------------------------------------------------

Result<std::unique_ptr<BertEmbedding>> load_reranker_bytes(const std::string& bytes) {
  auto f = GgufFile::parse({reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()});
  if (!f.is_ok()) return f.status();
  return BertEmbedding::from_gguf(std::move(*f), cpu(), EncoderUse::kRerank);
}

BertModelSpec reranker_spec(int head, std::uint32_t seed = 11) {
  BertModelSpec s = bert_spec(seed);
  s.pooling = 4;
  s.rank_head = head;
  return s;
}

struct RankCase {
  const char* name;
  int head;          // BertModelSpec::rank_head
  int token_types;
  GgmlType type;
  double tolerance;  // of |score - reference| / max(1, |reference|)
};
void PrintTo(const RankCase& c, std::ostream* os) { *os << c.name; }

class BertRerankerTest : public ::testing::TestWithParam<RankCase> {};

TEST_P(BertRerankerTest, ScoresAgreeWithTheReferenceSingleAndBatched) {
  REQUIRE_VOCAB();
  const RankCase& c = GetParam();
  BertModelSpec s = reranker_spec(c.head, static_cast<std::uint32_t>(std::string(c.name).size() * 5 + 1));
  s.n_token_types = c.token_types;
  s.weight_type = c.type;
  BertTestModel tm = testing::make_bert_model(s);
  auto loaded = load_reranker_bytes(tm.gguf);
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
  const BertEmbedding& e = **loaded;
  EXPECT_TRUE(e.is_reranker());
  EXPECT_EQ(e.params().cls_dense, c.head == 2);
  Ref ref{tm};
  const std::string query = "how fast does a swept wing flutter?";
  const std::vector<std::int32_t> q = e.tokenizer().encode(query, false, false);
  std::vector<BertEmbedding::Pair> pairs;
  std::vector<double> want;
  for (const std::string& t : texts()) {
    BertEmbedding::Pair p = e.pair(query, t);
    // [CLS] query [SEP] document [SEP]
    const std::vector<std::int32_t> d = e.tokenizer().encode(t, false, false);
    ASSERT_EQ(p.ids.size(), q.size() + d.size() + 3);
    EXPECT_EQ(p.ids[0], e.tokenizer().bos());
    EXPECT_TRUE(std::equal(q.begin(), q.end(), p.ids.begin() + 1));
    EXPECT_EQ(p.second, q.size() + 2);
    EXPECT_EQ(p.ids[p.second - 1], e.tokenizer().eos());
    EXPECT_TRUE(std::equal(d.begin(), d.end(), p.ids.begin() + static_cast<std::ptrdiff_t>(p.second)));
    EXPECT_EQ(p.ids.back(), e.tokenizer().eos());
    EXPECT_FALSE(p.cut);
    want.push_back(ref.score(p.ids, p.second));
    pairs.push_back(std::move(p));
  }
  auto err = [](double got, double w) { return std::fabs(got - w) / std::max(1.0, std::fabs(w)); };
  Result<std::vector<float>> batch = e.score(pairs);
  ASSERT_TRUE(batch.is_ok()) << batch.status().to_string();
  ASSERT_EQ(batch->size(), pairs.size());
  double worst_single = 0, worst_batch = 0, worst_diff = 0, spread = 0;
  for (std::size_t i = 0; i < pairs.size(); ++i) {
    Result<std::vector<float>> one = e.score(std::span<const BertEmbedding::Pair>(&pairs[i], 1));
    ASSERT_TRUE(one.is_ok());
    worst_single = std::max(worst_single, err((*one)[0], want[i]));
    worst_batch = std::max(worst_batch, err((*batch)[i], want[i]));
    worst_diff = std::max(worst_diff, static_cast<double>(std::fabs((*one)[0] - (*batch)[i])));
    spread = std::max(spread, std::fabs(want[i] - want[0]));
  }
  EXPECT_GT(spread, 1e-3) << "the documents should not all score the same";
  EXPECT_LT(worst_single, c.tolerance) << c.name << " " << kernel_isa();
  EXPECT_LT(worst_batch, c.tolerance) << c.name << " " << kernel_isa();
  EXPECT_LT(worst_diff, 1e-5) << "a pair's score does not depend on its batch companions";
  std::printf("[ rerank   ] %s (%s): max error %.2e single, %.2e batched\n", c.name, kernel_isa(), worst_single,
              worst_batch);

  force_scalar_kernels(true);
  Result<std::vector<float>> exact = e.score(pairs);
  force_scalar_kernels(false);
  ASSERT_TRUE(exact.is_ok());
  double worst_exact = 0;
  for (std::size_t i = 0; i < pairs.size(); ++i) worst_exact = std::max(worst_exact, err((*exact)[i], want[i]));
  EXPECT_LT(worst_exact, 1e-4) << c.name << " scalar";
}

INSTANTIATE_TEST_SUITE_P(
    Models, BertRerankerTest,
    ::testing::Values(RankCase{"projection_f32", 1, 2, GgmlType::kF32, 1e-4},
                      RankCase{"dense_tanh_f32", 2, 2, GgmlType::kF32, 1e-4},
                      RankCase{"dense_tanh_one_type_f16", 2, 1, GgmlType::kF16, 1e-4},
                      RankCase{"projection_q8_0", 1, 2, GgmlType::kQ8_0, 5e-2}),
    [](const auto& param_info) { return std::string(param_info.param.name); });

// The document's part is token type 1, as Hugging Face's tokenizer marks a
// pair's second text; all type 0 (llama.cpp's input) scores differently.
TEST(BertRerankerTest, TheDocumentIsTokenTypeOne) {
  REQUIRE_VOCAB();
  BertTestModel tm = testing::make_bert_model(reranker_spec(2));
  auto e = load_reranker_bytes(tm.gguf);
  ASSERT_TRUE(e.is_ok()) << e.status().to_string();
  Ref ref{tm};
  BertEmbedding::Pair p = (*e)->pair("swept wing flutter", "The flutter speed of a swept wing was measured.");
  BertEmbedding::Pair all_a = p;
  all_a.second = all_a.ids.size();
  Result<std::vector<float>> got = (*e)->score(std::vector<BertEmbedding::Pair>{p, all_a});
  ASSERT_TRUE(got.is_ok());
  EXPECT_NEAR((*got)[0], ref.score(p.ids, p.second), 1e-4);
  EXPECT_NEAR((*got)[1], ref.score(all_a.ids, all_a.ids.size()), 1e-4);
  EXPECT_GT(std::fabs((*got)[0] - (*got)[1]), 1e-3);
}

// Pairs longer than the context are cut longest-first as Hugging Face's
// fast tokenizers cut them (tokenizers' truncate_encodings, LongestFirst:
// n1 the shorter, n2 = max(n1, room - n1), and when that is still too long
// room / 2 each with the odd token to the longer); written here in that
// form, with an odd room (29) where the slow tokenizer's rule differs.
TEST(BertRerankerTest, LongPairsAreCutLongestFirst) {
  REQUIRE_VOCAB();
  BertModelSpec s = reranker_spec(1);
  s.n_ctx = 32;
  BertTestModel tm = testing::make_bert_model(s);
  auto e = load_reranker_bytes(tm.gguf);
  ASSERT_TRUE(e.is_ok()) << e.status().to_string();
  const Tokenizer& tok = (*e)->tokenizer();
  auto words = [](int n) {
    std::string t;
    for (int i = 0; i < n; ++i) t += (i % 3 == 0 ? "wing " : i % 3 == 1 ? "flutter " : "speed ");
    return t;
  };
  int cut = 0;
  for (int nq : {1, 5, 14, 20, 40})
    for (int nd : {1, 5, 14, 15, 28, 29, 60}) {
      const std::string q = words(nq), d = words(nd);
      std::vector<std::int32_t> wq = tok.encode(q, false, false), wd = tok.encode(d, false, false);
      if (wq.size() + wd.size() > 29) {
        std::size_t n1 = wq.size(), n2 = wd.size();
        const bool swap = n1 > n2;
        if (swap) std::swap(n1, n2);
        n2 = n1 > 29 ? n1 : std::max(n1, 29 - n1);
        if (n1 + n2 > 29) {
          n1 = 29 / 2;
          n2 = n1 + 29 % 2;
        }
        if (swap) std::swap(n1, n2);
        wq.resize(n1);
        wd.resize(n2);
      }
      BertEmbedding::Pair p = (*e)->pair(q, d);
      SCOPED_TRACE(std::to_string(nq) + " + " + std::to_string(nd));
      ASSERT_LE(p.ids.size(), 32u);
      EXPECT_EQ(p.second, wq.size() + 2);
      EXPECT_EQ(p.ids.size(), wq.size() + wd.size() + 3);
      EXPECT_TRUE(std::equal(wq.begin(), wq.end(), p.ids.begin() + 1));
      EXPECT_TRUE(std::equal(wd.begin(), wd.end(), p.ids.begin() + static_cast<std::ptrdiff_t>(p.second)));
      EXPECT_EQ(p.ids.back(), tok.eos());
      EXPECT_EQ(p.cut, static_cast<std::size_t>(nq + nd) > 29);
      cut += p.cut ? 1 : 0;
      Result<std::vector<float>> sc = (*e)->score(std::span<const BertEmbedding::Pair>(&p, 1));
      EXPECT_TRUE(sc.is_ok());
    }
  EXPECT_GT(cut, 10);
}

// The pooling key does not decide: llama.cpp's converter writes none (or
// a sentence-transformers pooling) for a sequence classifier. The head does.
TEST(BertRerankerTest, AnyPoolingKeyWithAHeadIsAReranker) {
  REQUIRE_VOCAB();
  for (int pooling : {-1, 0, 1, 2}) {
    BertModelSpec s = reranker_spec(1);
    s.pooling = pooling;
    BertTestModel tm = testing::make_bert_model(s);
    auto e = load_reranker_bytes(tm.gguf);
    ASSERT_TRUE(e.is_ok()) << pooling << ": " << e.status().to_string();
    EXPECT_TRUE((*e)->is_reranker());
    BertEmbedding::Pair p = (*e)->pair("swept wing", "flutter of a swept wing");
    Result<std::vector<float>> got = (*e)->score(std::span<const BertEmbedding::Pair>(&p, 1));
    ASSERT_TRUE(got.is_ok());
    EXPECT_NEAR((*got)[0], Ref{tm}.score(p.ids, p.second), 1e-4) << pooling;
  }
}

TEST(BertRerankerTest, EachKindRefusesTheOthersWork) {
  REQUIRE_VOCAB();
  BertTestModel rr = testing::make_bert_model(reranker_spec(1));
  auto r = load_reranker_bytes(rr.gguf);
  ASSERT_TRUE(r.is_ok());
  EXPECT_EQ((*r)->embed_tokens(std::vector<std::vector<std::int32_t>>{{101, 102}}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_TRUE((*r)->embed("hello").empty());
  Loaded emb = load(bert_spec());
  ASSERT_TRUE(emb.e);
  BertEmbedding::Pair p{{101, 2000, 102, 2001, 102}, 3, false};
  EXPECT_EQ(emb.e->score(std::span<const BertEmbedding::Pair>(&p, 1)).status().code(), StatusCode::kInvalidArgument);
  // Malformed pairs: a second part past the end, an id outside the vocabulary.
  BertEmbedding::Pair past{{101, 102}, 3, false}, alien{{101, 1 << 30, 102}, 2, false};
  EXPECT_EQ((*r)->score(std::span<const BertEmbedding::Pair>(&past, 1)).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ((*r)->score(std::span<const BertEmbedding::Pair>(&alien, 1)).status().code(), StatusCode::kInvalidArgument);
}

class BertRerankerHostileTest : public ::testing::TestWithParam<HostileCase> {};

TEST_P(BertRerankerHostileTest, IsRefusedWithAClearStatus) {
  REQUIRE_VOCAB();
  const HostileCase& c = GetParam();
  BertModelSpec s = reranker_spec(2);
  c.edit(s);
  auto e = load_reranker_bytes(testing::make_bert_model(s).gguf);
  ASSERT_FALSE(e.is_ok()) << c.name;
  EXPECT_EQ(e.status().code(), c.code) << e.status().to_string();
  EXPECT_NE(e.status().to_string().find(c.message), std::string::npos) << e.status().to_string();
}

INSTANTIATE_TEST_SUITE_P(
    Files, BertRerankerHostileTest,
    ::testing::Values(
        HostileCase{"embedding_model",
                    [](BertModelSpec& s) {
                      s.pooling = 1;
                      s.rank_head = 0;
                    },
                    StatusCode::kInvalidArgument, "not a reranker: the file has no classification head"},
        HostileCase{"no_head", [](BertModelSpec& s) { s.rank_head = 0; }, StatusCode::kInvalidArgument,
                    "no classification head"},
        HostileCase{"unknown_pooling", [](BertModelSpec& s) { s.pooling = 9; }, StatusCode::kInvalidArgument,
                    "pooling type 9"},
        HostileCase{"two_labels", [](BertModelSpec& s) { s.n_labels = 2; }, StatusCode::kInvalidArgument,
                    "2 outputs"},
        HostileCase{"misshaped_dense", [](BertModelSpec& s) { s.misshape_tensor = "cls.weight"; },
                    StatusCode::kVerificationFailed, "'cls.weight' has shape [64, 65]"},
        HostileCase{"misshaped_output_bias", [](BertModelSpec& s) { s.misshape_tensor = "cls.output.bias"; },
                    StatusCode::kVerificationFailed, "'cls.output.bias' has shape [2]"},
        HostileCase{"nomic", [](BertModelSpec& s) { s.arch = "nomic-bert"; }, StatusCode::kInvalidArgument,
                    "not a supported reranker"}),
    [](const auto& param_info) { return std::string(param_info.param.name); });

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/airlock-bert-XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

TEST(LoadEmbedderTest, PicksTheKindFromThePath) {
  REQUIRE_VOCAB();
  TempDir dir;
  BertModelSpec s = bert_spec();
  s.n_embd = 32;
  s.n_head = 2;
  s.n_layer = 1;
  const std::string bert_path = dir.path() + "/encoder.gguf";
  std::ofstream(bert_path, std::ios::binary) << testing::make_bert_model(s).gguf;
  auto e = load_embedder(bert_path, cpu());
  ASSERT_TRUE(e.is_ok()) << e.status().to_string();
  EXPECT_EQ((*e)->kind(), "bert");
  EXPECT_EQ((*e)->dim(), 32);
  EXPECT_EQ((*e)->embed("hello").size(), 32u);

  // A GGUF of an architecture neither encoder nor decoder here is refused
  // by name (decoders: decoder_embedding_test.cpp).
  testing::TestModelSpec other_arch;
  other_arch.arch = "mamba";
  const std::string other_path = dir.path() + "/other.gguf";
  std::ofstream(other_path, std::ios::binary) << testing::make_test_model(other_arch).gguf;
  auto d = load_embedder(other_path, cpu());
  ASSERT_FALSE(d.is_ok());
  EXPECT_EQ(d.status().code(), StatusCode::kInvalidArgument) << d.status().to_string();
  EXPECT_NE(d.status().to_string().find("'mamba' is not an embedding model"), std::string::npos)
      << d.status().to_string();

  EXPECT_EQ(load_embedder(dir.path() + "/absent.gguf").status().code(), StatusCode::kNotFound);
  const std::string other = dir.path() + "/notes.txt";
  std::ofstream(other) << "hello";
  EXPECT_EQ(load_embedder(other).status().code(), StatusCode::kInvalidArgument);

  // A model2vec directory, or its model.safetensors.
  const std::string m2v = std::string(std::getenv("AIRLOCK_MODELS_DIR")) +
                          "/embeddings/model2vec-rs-fixtures/test-model-float32";
  if (std::filesystem::exists(m2v + "/model.safetensors")) {
    auto a = load_embedder(m2v);
    ASSERT_TRUE(a.is_ok()) << a.status().to_string();
    EXPECT_EQ((*a)->kind(), "model2vec");
    auto b = load_embedder(m2v + "/model.safetensors");
    ASSERT_TRUE(b.is_ok()) << b.status().to_string();
    EXPECT_EQ((*b)->kind(), "model2vec");
  }
}

// ---- XLM-RoBERTa: "bert" with a SentencePiece Unigram ("t5") vocabulary --
// (multilingual-e5, bge-m3, bge-reranker-v2-m3). The vocabulary is one
// trained by tests/engine/sentencepiece/make_vectors.py; no shared files.

BertModelSpec xlmr_spec(int pooling, std::uint32_t seed) {
  BertModelSpec s;
  s.n_vocab = static_cast<int>(testing::model_named("nfkc").at("pieces").size());
  s.n_token_types = 1;  // RoBERTa has one
  s.n_ctx = 256;
  s.pooling = pooling;
  s.seed = seed;
  s.metadata = [](testing::GgufWriter& w) { testing::set_t5_vocab(w, testing::model_named("nfkc"), /*with_ids=*/true); };
  return s;
}

TEST(XlmRobertaTest, EmbeddingsMatchTheReference) {
  for (int pooling : {1, 2}) {
    Loaded l = load(xlmr_spec(pooling, 31));
    ASSERT_NE(l.e, nullptr);
    Ref ref{l.tm};
    const Tokenizer& tok = l.e->tokenizer();
    EXPECT_EQ(tok.bos(), 1);
    EXPECT_EQ(tok.eos(), 2);
    const std::vector<std::string> multilingual = {
        "Die Strömung über dem Flügel", "翼の周りの流れ", "ｆｕｌｌ-width ﬁeld", "  boundary   layer  ", "unknown ䷀䷁"};
    std::vector<std::string> all = texts();
    all.insert(all.end(), multilingual.begin(), multilingual.end());
    const std::vector<std::vector<float>> batch = l.e->embed_batch(all);
    ASSERT_EQ(batch.size(), all.size());
    double worst = 0;
    for (std::size_t i = 0; i < all.size(); ++i) {
      // <s> text </s>, the text as sentencepiece encodes it.
      std::vector<std::int32_t> ids = tok.encode(all[i], false, false);
      ids.insert(ids.begin(), 1);
      ids.push_back(2);
      EXPECT_EQ(l.e->input_ids(all[i]), ids) << all[i];
      worst = std::max(worst, rel_error(batch[i], ref.embed(ids, pooling)));
      EXPECT_EQ(l.e->embed(all[i]), batch[i]) << "alone and in a batch";
    }
    EXPECT_LT(worst, 1e-4) << "pooling " << pooling;
  }
}

// HF's XLM-R tokenizer pairs as <s> q </s></s> d </s>; the score is the
// head's on that sequence, and cuts leave room for the four specials.
TEST(XlmRobertaTest, RerankerPairsWithTwoSeparators) {
  BertModelSpec s = xlmr_spec(4, 43);
  s.rank_head = 2;  // XLMRobertaForSequenceClassification: dense, tanh, out_proj
  BertTestModel tm = testing::make_bert_model(s);
  auto e = load_reranker_bytes(tm.gguf);
  ASSERT_TRUE(e.is_ok()) << e.status().to_string();
  Ref ref{tm};
  const Tokenizer& tok = (*e)->tokenizer();
  const std::string query = "Wie schnell flattert ein gepfeilter Flügel?";
  const std::vector<std::int32_t> q = tok.encode(query, false, false);
  double spread = 0, first = 0;
  for (const std::string& doc : {std::string("The flutter speed of a swept wing was measured."),
                                 std::string("Die Strömung über dem Flügel bleibt anliegend."), std::string("")}) {
    BertEmbedding::Pair p = (*e)->pair(query, doc);
    const std::vector<std::int32_t> d = tok.encode(doc, false, false);
    std::vector<std::int32_t> want = {1};
    want.insert(want.end(), q.begin(), q.end());
    want.insert(want.end(), {2, 2});
    want.insert(want.end(), d.begin(), d.end());
    want.push_back(2);
    EXPECT_EQ(p.ids, want);
    EXPECT_EQ(p.second, q.size() + 3);
    Result<std::vector<float>> got = (*e)->score(std::span<const BertEmbedding::Pair>(&p, 1));
    ASSERT_TRUE(got.is_ok()) << got.status().to_string();
    const double r = ref.score(p.ids, p.second);
    EXPECT_NEAR((*got)[0], r, 1e-4 * std::max(1.0, std::fabs(r)));
    if (doc == "The flutter speed of a swept wing was measured.") first = r;  // the first document
    spread = std::max(spread, std::fabs(r - first));
  }
  EXPECT_GT(spread, 1e-3);
  std::string longer;
  for (int i = 0; i < 100; ++i) longer += "wing flutter ";
  BertEmbedding::Pair cut = (*e)->pair(longer, longer);
  EXPECT_TRUE(cut.cut);
  EXPECT_EQ(cut.ids.size(), static_cast<std::size_t>(s.n_ctx));
  EXPECT_EQ(cut.ids[cut.second - 1], 2);
  EXPECT_EQ(cut.ids[cut.second - 2], 2);
}

// Hugging Face's XLM-R tokenizer gives a pair's second part type 0, like
// the first: so does the engine, where the file has a second type row.
TEST(XlmRobertaTest, PairsAreTypeZeroThroughout) {
  BertModelSpec s = xlmr_spec(4, 47);
  s.rank_head = 2;
  s.n_token_types = 2;
  BertTestModel tm = testing::make_bert_model(s);
  auto e = load_reranker_bytes(tm.gguf);
  ASSERT_TRUE(e.is_ok()) << e.status().to_string();
  Ref ref{tm};
  const BertEmbedding::Pair p = (*e)->pair("swept wing flutter", "The flutter speed of a swept wing was measured.");
  Result<std::vector<float>> got = (*e)->score(std::span<const BertEmbedding::Pair>(&p, 1));
  ASSERT_TRUE(got.is_ok()) << got.status().to_string();
  const double all_zero = ref.score(p.ids, p.ids.size()), typed = ref.score(p.ids, p.second);
  EXPECT_NEAR((*got)[0], all_zero, 1e-4 * std::max(1.0, std::fabs(all_zero)));
  EXPECT_GT(std::fabs(all_zero - typed), 1e-3);
}

// A vocabulary that would not wrap the text in <s> ... </s> (no
// add_bos_token: llama.cpp's default for "t5" is no BOS) is refused.
TEST(XlmRobertaTest, AVocabularyWithoutBosIsRefused) {
  BertModelSpec s = xlmr_spec(2, 5);
  s.metadata = [](testing::GgufWriter& w) { testing::set_t5_vocab(w, testing::model_named("nfkc"), /*with_ids=*/false); };
  BertTestModel tm = testing::make_bert_model(s);
  auto e = load_bytes(tm.gguf);
  ASSERT_FALSE(e.is_ok());
  EXPECT_NE(e.status().message().find("must add <s> and </s>"), std::string::npos) << e.status().message();
}

TEST(XlmRobertaTest, OtherTokenizersAreRefusedByName) {
  BertModelSpec s = xlmr_spec(1, 5);
  s.metadata = [](testing::GgufWriter& w) {
    const engine::TokenizerSpec t5 = testing::spec_of(testing::model_named("nfkc"));
    w.set_string("tokenizer.ggml.model", "llama");
    w.set_string_array("tokenizer.ggml.tokens", t5.tokens);
    w.set_f32_array("tokenizer.ggml.scores", t5.scores);
  };
  BertTestModel tm = testing::make_bert_model(s);
  auto e = load_bytes(tm.gguf);
  ASSERT_FALSE(e.is_ok());
  EXPECT_EQ(e.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(e.status().message().find("tokenizer 'llama' is neither WordPiece nor SentencePiece Unigram"),
            std::string::npos)
      << e.status().message();
}

}  // namespace
}  // namespace airlock::engine
