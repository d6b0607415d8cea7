// The engine's forward pass against a plain double-precision reference, on
// generated models of several shapes and weight types; batch invariance; KV
// exhaustion; and the real stories260K model's greedy output.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>

#include "airlock/engine/kernels.h"
#include "airlock/engine/model.h"
#include "airlock/engine/sampler.h"
#include "airlock/engine/thread_pool.h"
#include "airlock/engine/tokenizer.h"
#include "forwarding_backend.h"
#include "gguf_writer.h"

namespace airlock::engine {
namespace {

using testing::TestModelSpec;

std::shared_ptr<Backend> cpu() {
  static std::shared_ptr<Backend> be = make_cpu_backend(std::make_shared<ThreadPool>(2));
  return be;
}

struct Loaded {
  testing::TestModel tm;
  std::unique_ptr<Model> model;
};

Loaded load(const TestModelSpec& spec) {
  Loaded l;
  l.tm = testing::make_test_model(spec);
  auto f = GgufFile::parse({reinterpret_cast<const std::uint8_t*>(l.tm.gguf.data()), l.tm.gguf.size()});
  EXPECT_TRUE(f.is_ok()) << f.status().to_string();
  auto m = Model::from_gguf(std::move(*f), cpu());
  EXPECT_TRUE(m.is_ok()) << m.status().to_string();
  l.model = std::move(*m);
  return l;
}

double rel_error(const std::vector<float>& got, const std::vector<double>& want) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  return std::sqrt(num / den);
}

std::vector<std::int32_t> random_tokens(int n, int n_vocab, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::int32_t> t(n);
  for (auto& x : t) x = static_cast<std::int32_t>(rng() % static_cast<std::uint32_t>(n_vocab));
  return t;
}

// Runs `tokens` through one sequence in chunks of the given sizes; returns
// the logits of every position.
std::vector<float> run_chunks(Model& m, const std::vector<std::int32_t>& tokens, const std::vector<int>& chunks,
                              KvType kv_type = KvType::kF32) {
  KvCache cache(64);
  Result<KvStorage> kv = m.alloc_kv(64, kv_type);
  EXPECT_TRUE(kv.is_ok());
  EXPECT_TRUE(cache.add_sequence(7).is_ok());
  std::vector<float> all, logits;
  std::size_t pos = 0;
  for (std::size_t c = 0; pos < tokens.size(); ++c) {
    int len = c < chunks.size() ? chunks[c] : 1;
    Batch b;
    for (int i = 0; i < len && pos < tokens.size(); ++i, ++pos) b.add(tokens[pos], static_cast<int>(pos), 7, true);
    Status s = m.forward(b, cache, *kv, &logits);
    EXPECT_TRUE(s.is_ok()) << s.to_string();
    all.insert(all.end(), logits.begin(), logits.end());
  }
  return all;
}

// tolerance: for the vector kernels. Quantised weight types are dotted with
// 8-bit quantised activations there (as ggml does), which costs about 1% of
// relative error in the logits; float weight types stay at 1e-4.
struct ShapeCase {
  const char* name;
  TestModelSpec spec;
  double tolerance;
};

class ReferenceTest : public ::testing::TestWithParam<ShapeCase> {};

TEST_P(ReferenceTest, LogitsAgreeWithTheReference) {
  const ShapeCase& c = GetParam();
  Loaded l = load(c.spec);
  ASSERT_TRUE(l.model);
  std::vector<std::int32_t> tokens = random_tokens(37, c.spec.n_vocab, c.spec.seed + 100);
  std::vector<double> want = testing::reference_forward(l.tm, tokens);
  // One prompt chunk, then mixed chunks and single decode steps: the same numbers.
  std::vector<float> whole = run_chunks(*l.model, tokens, {37});
  EXPECT_LT(rel_error(whole, want), c.tolerance) << c.name << " " << kernel_isa();
  std::vector<float> pieces = run_chunks(*l.model, tokens, {5, 1, 1, 16, 3});
  EXPECT_LT(rel_error(pieces, want), c.tolerance) << c.name << " " << kernel_isa();
  // The scalar kernels use the float activations: the architecture itself
  // must then agree to 1e-4 for every weight type.
  force_scalar_kernels(true);
  std::vector<float> exact = run_chunks(*l.model, tokens, {5, 1, 1, 16, 3});
  EXPECT_LT(rel_error(exact, want), 1e-4) << c.name << " scalar";
  // An f16 KV cache rounds every key and value to 11 significant bits
  // (relative 2^-12 at most): about 1.5e-4 in these logits, bound 1e-3.
  std::vector<float> half_scalar = run_chunks(*l.model, tokens, {5, 1, 1, 16, 3}, KvType::kF16);
  force_scalar_kernels(false);
  EXPECT_LT(rel_error(half_scalar, want), 1e-3) << c.name << " scalar, f16 KV";
  EXPECT_GT(rel_error(half_scalar, want), 0) << c.name << " f16 KV: nothing was rounded";
  std::vector<float> half = run_chunks(*l.model, tokens, {37}, KvType::kF16);
  EXPECT_LT(rel_error(half, want), c.tolerance + 1e-3) << c.name << " " << kernel_isa() << ", f16 KV";
}

TestModelSpec spec(const char* arch, int n_embd, int n_head, int n_head_kv, int n_ff, bool tied, GgmlType t,
                   int head_dim = 0) {
  return testing::decoder_spec(arch, n_embd, n_head, n_head_kv, n_ff, tied, t, head_dim);
}

// The Gemma family: GeGLU, embeddings times sqrt(n_embd), and for gemma2
// and gemma3 post-norms and sliding-window layers whose window (8) is well
// inside the 37 tokens, so that dropping it changes the logits. gemma2
// also caps attention scores and logits (at values its random scores and
// logits reach); gemma3 has six layers (five local, one global), QK-norm
// and its own local RoPE base.
TestModelSpec gemma_spec(const char* arch, int n_embd, int n_head, int n_head_kv, int n_ff, GgmlType t, int head_dim,
                         int n_layer = 2, int window = 8) {
  TestModelSpec s = spec(arch, n_embd, n_head, n_head_kv, n_ff, true, t, head_dim);
  s.n_layer = n_layer;
  if (std::string(arch) != "gemma") s.sliding_window = window;
  if (std::string(arch) == "gemma2") {
    s.attn_softcap = 2.0f;
    s.final_softcap = 1.5f;
  }
  if (std::string(arch) == "gemma3") s.rope_base = 1e6f;
  return s;
}

// Gemma 3 4B-27B: linear RoPE scaling (factor 8) on the global layers
// only.
TestModelSpec gemma3_scaled(GgmlType t) {
  TestModelSpec s = gemma_spec("gemma3", 256, 4, 2, 256, t, 64, 6);
  s.rope_linear = 8.0f;
  return s;
}

// Phi-3 and Phi-4 (phi3): q/k/v in one matrix and gate/up in another;
// with LongRoPE, frequency factors (the long ones: the context, 512, is
// longer than the original 256; the short ones when it is not) and a
// magnitude scale, over a partial rotation (24 of 32 numbers per head, as
// Phi-4-mini rotates 96 of 128).
TestModelSpec phi3_spec(GgmlType t, int orig_ctx, float attn_factor) {
  TestModelSpec s = spec("phi3", 128, 4, 2, 128, false, t, 32);
  s.n_rot = 24;
  s.rope_orig_ctx = orig_ctx;
  s.rope_attn_factor = attn_factor;
  return s;
}

INSTANTIATE_TEST_SUITE_P(
    Phi3, ReferenceTest,
    ::testing::Values(ShapeCase{"phi3_fused_f32", spec("phi3", 64, 4, 2, 96, false, GgmlType::kF32), 1e-4},
                      ShapeCase{"phi3_longrope_f32", phi3_spec(GgmlType::kF32, 256, 1.19f), 1e-4},
                      ShapeCase{"phi3_short_factors_f32", phi3_spec(GgmlType::kF32, 512, 0.0f), 1e-4},
                      ShapeCase{"phi3_longrope_q8_0", phi3_spec(GgmlType::kQ8_0, 256, 1.19f), 3e-2}),
    [](const auto& param_info) { return std::string(param_info.param.name); });

// IBM Granite 3.x: Llama (adjacent-pair RoPE) with its four multipliers
// (values of Granite 3.1's size: embeddings x12, residuals x0.22,
// attention 1/head_dim... here 0.03, logits / 8); and with RoPE off.
TestModelSpec granite_spec(GgmlType t, int rope_finetuned) {
  TestModelSpec s = spec("granite", 64, 4, 2, 96, true, t, 16);
  s.embedding_scale = 12.0f;
  s.residual_scale = 0.22f;
  s.attention_scale = 0.03f;
  s.logit_scale = 8.0f;
  s.rope_finetuned = rope_finetuned;
  return s;
}

// Every optional bias (q/k/v, attn_output, ffn gate/up/down), which
// llama.cpp's llama loader takes where a file has them.
TestModelSpec with_biases(TestModelSpec s) {
  s.biases = true;
  return s;
}

TestModelSpec granite_per_layer() {
  TestModelSpec s = granite_spec(GgmlType::kF32, -1);
  s.kv_heads_per_layer = {2, 2};
  return s;
}

INSTANTIATE_TEST_SUITE_P(
    Granite, ReferenceTest,
    ::testing::Values(ShapeCase{"granite_f32", granite_spec(GgmlType::kF32, -1), 1e-4},
                      ShapeCase{"granite_no_rope_f32", granite_spec(GgmlType::kF32, 0), 1e-4},
                      ShapeCase{"granite_q8_0", granite_spec(GgmlType::kQ8_0, 1), 3e-2},
                      // head_count_kv as one value per layer, all equal
                      ShapeCase{"granite_per_layer_kv_heads", granite_per_layer(), 1e-4},
                      ShapeCase{"granite_biases_q8_0", with_biases(granite_spec(GgmlType::kQ8_0, 1)), 3e-2}),
    [](const auto& param_info) { return std::string(param_info.param.name); });

INSTANTIATE_TEST_SUITE_P(
    Gemma, ReferenceTest,
    ::testing::Values(ShapeCase{"gemma_mqa_f32", gemma_spec("gemma", 64, 4, 1, 96, GgmlType::kF32, 32), 1e-4},
                      ShapeCase{"gemma2_swa_softcap_f32", gemma_spec("gemma2", 64, 4, 2, 96, GgmlType::kF32, 32), 1e-4},
                      ShapeCase{"gemma3_swa_qknorm_f32", gemma_spec("gemma3", 64, 4, 2, 96, GgmlType::kF32, 32, 6), 1e-4},
                      ShapeCase{"gemma3_all_global_f32", gemma_spec("gemma3", 64, 4, 2, 96, GgmlType::kF32, 32, 6, 0), 1e-4},
                      ShapeCase{"gemma3_scaled_f16", gemma3_scaled(GgmlType::kF16), 1e-4},
                      ShapeCase{"gemma3_scaled_q4_k", gemma3_scaled(GgmlType::kQ4_K), 3e-2},
                      // the biases come before the post-norms
                      ShapeCase{"gemma2_biases_f32",
                                with_biases(gemma_spec("gemma2", 64, 4, 2, 96, GgmlType::kF32, 32)), 1e-4}),
    [](const auto& param_info) { return std::string(param_info.param.name); });

INSTANTIATE_TEST_SUITE_P(
    Shapes, ReferenceTest,
    ::testing::Values(
        ShapeCase{"llama_gqa_f32", spec("llama", 64, 4, 2, 96, false, GgmlType::kF32), 1e-4},
        ShapeCase{"llama_mha_tied_f32", spec("llama", 64, 8, 8, 160, true, GgmlType::kF32), 1e-4},
        ShapeCase{"llama_mqa_f32", spec("llama", 96, 6, 1, 64, false, GgmlType::kF32), 1e-4},
        ShapeCase{"qwen2_bias_neox_f32", spec("qwen2", 64, 4, 2, 96, false, GgmlType::kF32), 1e-4},
        ShapeCase{"llama_biases_f32", with_biases(spec("llama", 64, 4, 2, 96, false, GgmlType::kF32)), 1e-4},
        ShapeCase{"qwen2_all_biases_f16", with_biases(spec("qwen2", 64, 4, 2, 96, true, GgmlType::kF16)), 1e-4},
        ShapeCase{"qwen3_qknorm_f32", spec("qwen3", 64, 4, 2, 96, true, GgmlType::kF32, 32), 1e-4},
        ShapeCase{"llama_f16", spec("llama", 64, 4, 2, 96, false, GgmlType::kF16), 1e-4},
        ShapeCase{"llama_bf16", spec("llama", 64, 4, 2, 96, false, GgmlType::kBF16), 1e-4},
        ShapeCase{"llama_q8_0", spec("llama", 64, 4, 2, 96, false, GgmlType::kQ8_0), 3e-2},
        ShapeCase{"llama_q4_0", spec("llama", 64, 4, 2, 96, false, GgmlType::kQ4_0), 3e-2},
        ShapeCase{"llama_q4_k", spec("llama", 256, 4, 2, 256, false, GgmlType::kQ4_K), 3e-2},
        ShapeCase{"qwen3_q5_k", spec("qwen3", 256, 4, 1, 512, true, GgmlType::kQ5_K, 64), 3e-2},
        ShapeCase{"qwen2_q6_k", spec("qwen2", 256, 8, 2, 256, false, GgmlType::kQ6_K), 3e-2}),
    [](const auto& param_info) { return std::string(param_info.param.name); });

void PrintTo(const ShapeCase& c, std::ostream* os) { *os << c.name; }

// Batch invariance and copy-on-write forks hold for either KV storage type.
class KvTypeTest : public ::testing::TestWithParam<KvType> {};
INSTANTIATE_TEST_SUITE_P(KvTypes, KvTypeTest, ::testing::Values(KvType::kF32, KvType::kF16),
                         [](const ::testing::TestParamInfo<KvType>& p) { return std::string(kv_type_name(p.param)); });

// Eight sequences of different lengths computed alone (a 4-token prompt,
// then one token per step) and together, mixing prefill chunks and decode
// steps in one batch: every sequence's logits must agree within `tolerance`
// (relative L2; 0 asks for bit-identical logits).
void check_batch_invariance(const TestModelSpec& model_spec, KvType kv_type, double tolerance) {
  Loaded l = load(model_spec);
  Model& m = *l.model;
  const int n_seq = 8, n_vocab = static_cast<int>(model_spec.n_vocab);
  std::vector<std::vector<std::int32_t>> toks;
  for (int s = 0; s < n_seq; ++s) toks.push_back(random_tokens(6 + 5 * s, n_vocab, 500 + s));
  // Alone, decode step by step after a prompt of 4.
  std::vector<std::vector<float>> alone;
  for (int s = 0; s < n_seq; ++s) alone.push_back(run_chunks(m, toks[s], {4}, kv_type));

  // Together: each step, every sequence contributes a prefill chunk (its
  // first 4 tokens, split differently per sequence) or one decode token.
  KvCache cache(128);
  Result<KvStorage> kv = m.alloc_kv(128, kv_type);
  ASSERT_TRUE(kv.is_ok());
  std::vector<std::size_t> pos(n_seq, 0);
  std::vector<std::vector<float>> together(n_seq);
  for (int s = 0; s < n_seq; ++s) ASSERT_TRUE(cache.add_sequence(s).is_ok());
  while (true) {
    Batch b;
    std::vector<std::pair<int, int>> rows;  // (seq, count) in batch order
    for (int s = 0; s < n_seq; ++s) {
      if (pos[s] >= toks[s].size()) continue;
      std::size_t len = pos[s] < 4 ? std::min<std::size_t>(4 - pos[s], 1 + s % 3) : 1;
      for (std::size_t i = 0; i < len; ++i, ++pos[s]) b.add(toks[s][pos[s]], static_cast<int>(pos[s]), s, true);
      rows.emplace_back(s, static_cast<int>(len));
    }
    if (b.size() == 0) break;
    std::vector<float> logits;
    ASSERT_TRUE(m.forward(b, cache, *kv, &logits).is_ok());
    std::size_t off = 0;
    for (auto [s, count] : rows) {
      const std::size_t n = static_cast<std::size_t>(count) * static_cast<std::size_t>(n_vocab);
      together[s].insert(together[s].end(), logits.begin() + static_cast<std::ptrdiff_t>(off),
                         logits.begin() + static_cast<std::ptrdiff_t>(off + n));
      off += n;
    }
  }
  for (int s = 0; s < n_seq; ++s) {
    ASSERT_EQ(alone[s].size(), together[s].size());
    if (tolerance == 0) {
      EXPECT_EQ(together[s], alone[s]) << "sequence " << s << " " << kernel_isa();
      continue;
    }
    std::vector<double> ref(alone[s].begin(), alone[s].end());
    EXPECT_LT(rel_error(together[s], ref), tolerance) << "sequence " << s;
  }
}

TEST_P(KvTypeTest, ASequenceGetsTheSameLogitsInsideABatch) {
  check_batch_invariance(spec("llama", 64, 4, 2, 96, false, GgmlType::kF32), GetParam(), 1e-5);
}

// Sliding windows (of 8: the longer sequences run far past them) and soft
// caps change nothing of that.
TEST_P(KvTypeTest, GemmaWindowsGetTheSameLogitsInsideABatch) {
  check_batch_invariance(gemma_spec("gemma2", 64, 4, 2, 96, GgmlType::kF32, 32), GetParam(), 1e-5);
  check_batch_invariance(gemma_spec("gemma3", 64, 4, 2, 96, GgmlType::kF32, 32, 6), GetParam(), 1e-5);
}

// f at every kernel level this CPU has, the level limited to it; then the
// best level again.
template <typename F>
void at_every_kernel_level(F f) {
  for (KernelIsa isa : {KernelIsa::kScalar, KernelIsa::kAvx2, KernelIsa::kAvx512Vnni, KernelIsa::kAmx}) {
    if (isa > best_kernel_isa()) continue;
    limit_kernel_isa(isa);
    f();
  }
  force_scalar_kernels(false);
}

// With quantised weights the integer kernels compute each token the same
// way whatever else is in the batch (the token groups and the order of the
// row blocks change, a token's arithmetic does not), so the logits are
// bit-identical, on every kernel level this CPU has.
TEST(BatchTest, QuantisedWeightsGiveBitIdenticalLogitsInsideABatch) {
  at_every_kernel_level([] {
    for (GgmlType t : {GgmlType::kQ8_0, GgmlType::kQ4_K, GgmlType::kQ6_K}) {
      SCOPED_TRACE(std::string(traits(t).name) + " " + kernel_isa());
      check_batch_invariance(spec("llama", 256, 4, 2, 512, false, t), KvType::kF16, 0);
    }
  });
}

// A prompt in one chunk of 40 (on an AMX CPU, the tile kernels: they take
// batches from 32 tokens), in chunks of 4 (the lane kernels) and token by
// token (the one-token kernels for the K-quants): the same logits, bit for
// bit, on every kernel level this CPU has.
TEST(BatchTest, PromptChunkSizesGiveBitIdenticalLogits) {
  at_every_kernel_level([] {
    for (GgmlType t : {GgmlType::kQ4_K, GgmlType::kQ5_K, GgmlType::kQ8_0}) {
      SCOPED_TRACE(std::string(traits(t).name) + " " + kernel_isa());
      Loaded l = load(spec("llama", 512, 4, 2, 768, false, t));
      ASSERT_TRUE(l.model);
      const std::vector<std::int32_t> toks = random_tokens(44, static_cast<int>(l.model->params().n_vocab), 77);
      const std::vector<float> whole = run_chunks(*l.model, toks, {40}, KvType::kF16);
      EXPECT_EQ(whole, run_chunks(*l.model, toks, {4, 4, 4, 4, 4, 4, 4, 4, 4, 4}, KvType::kF16));
      EXPECT_EQ(whole, run_chunks(*l.model, toks, {}, KvType::kF16));
    }
  });
}

// What llama.cpp assumes where a Gemma file is silent, and the keys it
// ignores: gemma2 caps at 50 and 30 and slides 4096 positions; gemma3 caps
// nothing even when a file says to; the 27B models (46 / 62 layers) scale
// queries by 1/sqrt(n_embd / n_head), not by their head size.
TEST(GemmaTest, DefaultsIgnoredKeysAndTheLargeModelsQueryScale) {
  TestModelSpec g2 = gemma_spec("gemma2", 64, 4, 2, 96, GgmlType::kF32, 32, 46, 0);
  g2.attn_softcap = g2.final_softcap = 0;  // no keys
  Loaded l2 = load(g2);
  ASSERT_TRUE(l2.model);
  const ModelParams& p2 = l2.model->params();
  EXPECT_EQ(p2.attn_softcap, 50.0f);
  EXPECT_EQ(p2.final_softcap, 30.0f);
  EXPECT_EQ(p2.swa_window, 4096);
  EXPECT_FLOAT_EQ(p2.attn_scale, 0.25f);  // 1/sqrt(64 / 4), not 1/sqrt(32)
  TestModelSpec g3 = gemma_spec("gemma3", 64, 4, 2, 96, GgmlType::kF32, 32, 6);
  g3.attn_softcap = 50.0f;
  g3.final_softcap = 30.0f;
  Loaded l3 = load(g3);
  ASSERT_TRUE(l3.model);
  EXPECT_EQ(l3.model->params().attn_softcap, 0.0f);
  EXPECT_EQ(l3.model->params().final_softcap, 0.0f);
  EXPECT_FLOAT_EQ(l3.model->params().attn_scale, 1.0f / std::sqrt(32.0f));
  // the reference agrees with those defaults on a short prompt
  std::vector<std::int32_t> tokens = random_tokens(9, g2.n_vocab, 3);
  std::vector<double> want = testing::reference_forward(l2.tm, tokens);
  EXPECT_LT(rel_error(run_chunks(*l2.model, tokens, {9}), want), 1e-4);
}

// Metadata a loader must not guess: gemma3's window (its layers' pattern
// depends on it), caps and scales that are not positive numbers, an
// architecture it does not run.
TEST(GemmaTest, BadMetadataIsRefusedByName) {
  struct Case {
    TestModelSpec spec;
    std::string message;
  };
  std::vector<Case> cases;
  TestModelSpec zero_window = gemma_spec("gemma2", 64, 4, 2, 96, GgmlType::kF32, 32);
  zero_window.sliding_window = 0;
  zero_window.metadata = [](testing::GgufWriter& w) { w.set_u32("gemma2.attention.sliding_window", 0); };
  cases.push_back({zero_window, "gemma2.attention.sliding_window is out of range"});
  TestModelSpec bad_cap = gemma_spec("gemma2", 64, 4, 2, 96, GgmlType::kF32, 32);
  bad_cap.attn_softcap = 0;
  bad_cap.metadata = [](testing::GgufWriter& w) { w.set_f32("gemma2.attn_logit_softcapping", -50.0f); };
  cases.push_back({bad_cap, "gemma2.attn_logit_softcapping must be a positive number"});
  // a "27B" (by its layer count) whose query scale would divide by zero
  TestModelSpec wide = gemma_spec("gemma2", 16, 32, 32, 16, GgmlType::kF32, 16, 46, 4);
  cases.push_back({wide, "gemma2 with 46 layers needs embedding_length >= head_count"});
  TestModelSpec factors = gemma_spec("gemma3", 64, 4, 2, 96, GgmlType::kF32, 32, 6);
  factors.metadata = [](testing::GgufWriter& w) { w.add_tensor("rope_freqs.weight", GgmlType::kF32, {16}, std::vector<float>(16, 1.0f)); };
  cases.push_back({factors, "a gemma3 file has rope frequency factors"});
  TestModelSpec other = spec("phi3", 64, 4, 2, 96, false, GgmlType::kF32);
  other.arch = "phi2";
  cases.push_back({other, "architecture 'phi2' is not supported (llama, qwen2, qwen3, phi3, granite, gemma, gemma2, gemma3)"});
  TestModelSpec bad_factor = phi3_spec(GgmlType::kF32, 256, 0.0f);
  bad_factor.metadata = [](testing::GgufWriter& w) { w.set_f32("phi3.rope.scaling.attn_factor", -1.0f); };
  cases.push_back({bad_factor, "rope.scaling.attn_factor must be positive"});
  // LongRoPE factor tensors: one alone, the chosen one misshapen, a zero
  TestModelSpec one_factor = phi3_spec(GgmlType::kF32, 0, 0.0f);
  one_factor.metadata = [](testing::GgufWriter& w) {
    w.add_tensor("rope_factors_long.weight", GgmlType::kF32, {12}, std::vector<float>(12, 1.5f));
  };
  cases.push_back({one_factor, "rope_factors_long and rope_factors_short must both be present"});
  TestModelSpec short_long = phi3_spec(GgmlType::kF32, 0, 0.0f);
  short_long.metadata = [](testing::GgufWriter& w) {
    w.set_u32("phi3.rope.scaling.original_context_length", 256);
    w.add_tensor("rope_factors_long.weight", GgmlType::kF32, {11}, std::vector<float>(11, 1.5f));
    w.add_tensor("rope_factors_short.weight", GgmlType::kF32, {12}, std::vector<float>(12, 1.5f));
  };
  cases.push_back({short_long, "'rope_factors_long.weight' must be an F32 vector of rope dimensions / 2"});
  TestModelSpec zero_factor = phi3_spec(GgmlType::kF32, 0, 0.0f);
  zero_factor.metadata = [](testing::GgufWriter& w) {
    std::vector<float> f(12, 1.5f);
    f[3] = 0.0f;
    w.add_tensor("rope_factors_long.weight", GgmlType::kF32, {12}, f);
    w.add_tensor("rope_factors_short.weight", GgmlType::kF32, {12}, f);
  };
  cases.push_back({zero_factor, "a factor of 'rope_factors_short.weight' is not positive"});
  // Read as an int: 2^32 + 8 would have been 8, 2^31 + 1 negative.
  TestModelSpec huge_ctx = spec("llama", 64, 4, 2, 96, false, GgmlType::kF32);
  huge_ctx.n_ctx = (1 << 24) + 1;
  cases.push_back({huge_ctx, "llama.context_length is implausibly large"});
  TestModelSpec uneven = granite_spec(GgmlType::kF32, -1);
  uneven.kv_heads_per_layer = {2, 1};
  cases.push_back({uneven, "granite.attention.head_count_kv differs from layer to layer, which is not supported"});
  TestModelSpec bad_residual = granite_spec(GgmlType::kF32, -1);
  bad_residual.arch = "granite";
  bad_residual.metadata = [](testing::GgufWriter& w) { w.set_f32("granite.residual_scale", -1.0f); };
  bad_residual.residual_scale = 0;
  cases.push_back({bad_residual, "granite.residual_scale must be a positive number"});
  // Tensors the pass has no place for are refused by name, never ignored:
  // an output bias, a fused q/k/v bias, anything unknown.
  const char* kNoPlace = "has no place in this engine's ";
  TestModelSpec output_bias = spec("llama", 64, 4, 2, 96, false, GgmlType::kF32);
  output_bias.metadata = [](testing::GgufWriter& w) {
    w.add_tensor("output.bias", GgmlType::kF32, {64}, std::vector<float>(64, 0.5f));
  };
  cases.push_back({output_bias, "tensor 'output.bias' " + std::string(kNoPlace) + "llama pass"});
  TestModelSpec qkv_bias = spec("phi3", 64, 4, 2, 96, false, GgmlType::kF32);
  qkv_bias.metadata = [](testing::GgufWriter& w) {
    w.add_tensor("blk.1.attn_qkv.bias", GgmlType::kF32, {128}, std::vector<float>(128, 0.5f));
  };
  cases.push_back({qkv_bias, "tensor 'blk.1.attn_qkv.bias' " + std::string(kNoPlace) + "phi3 pass"});
  TestModelSpec unknown = spec("qwen3", 64, 4, 2, 96, true, GgmlType::kF32, 32);
  unknown.metadata = [](testing::GgufWriter& w) {
    w.add_tensor("blk.0.ffn_gate_inp.weight", GgmlType::kF32, {64, 4}, std::vector<float>(256, 0.5f));
  };
  cases.push_back({unknown, "tensor 'blk.0.ffn_gate_inp.weight' " + std::string(kNoPlace) + "qwen3 pass"});
  // A bias of the wrong length.
  TestModelSpec short_bias = spec("llama", 64, 4, 2, 96, false, GgmlType::kF32);
  short_bias.metadata = [](testing::GgufWriter& w) {
    w.add_tensor("blk.1.ffn_down.bias", GgmlType::kF32, {63}, std::vector<float>(63, 0.5f));
  };
  cases.push_back({short_bias, "tensor 'blk.1.ffn_down.bias' has shape [63, 1], expected [64, 1]"});
  // Every refusal comes before a single weight reaches the backend (a
  // refused file costs no copy to a GPU).
  class UploadCounting final : public testing::ForwardingBackend {
   public:
    UploadCounting() : ForwardingBackend(make_cpu_backend(std::make_shared<ThreadPool>(1))) {}
    Result<WeightTensor> upload(const GgufTensor& t) override {
      ++uploads;
      return ForwardingBackend::upload(t);
    }
    int uploads = 0;
  };
  for (const Case& c : cases) {
    testing::TestModel tm = testing::make_test_model(c.spec);
    auto f = GgufFile::parse({reinterpret_cast<const std::uint8_t*>(tm.gguf.data()), tm.gguf.size()});
    ASSERT_TRUE(f.is_ok());
    auto be = std::make_shared<UploadCounting>();
    auto m = Model::from_gguf(std::move(*f), be);
    ASSERT_FALSE(m.is_ok()) << c.message;
    EXPECT_NE(m.status().message().find(c.message), std::string::npos) << m.status().to_string();
    EXPECT_EQ(be->uploads, 0) << c.message;
  }
  // A file that loads uploads each tensor it reads once.
  testing::TestModel good = testing::make_test_model(spec("llama", 64, 4, 2, 96, false, GgmlType::kF32));
  auto f = GgufFile::parse({reinterpret_cast<const std::uint8_t*>(good.gguf.data()), good.gguf.size()});
  ASSERT_TRUE(f.is_ok());
  const int n_tensors = static_cast<int>((*f)->tensors().size());
  auto be = std::make_shared<UploadCounting>();
  ASSERT_TRUE(Model::from_gguf(std::move(*f), be).is_ok());
  EXPECT_EQ(be->uploads, n_tensors);
}

TEST(BatchTest, KvExhaustionIsAllOrNothingAndFreedBlocksAreReused) {
  Loaded l = load(spec("llama", 64, 4, 2, 96, false, GgmlType::kF32));
  Model& m = *l.model;
  KvCache cache(4);  // 64 positions in all
  Result<KvStorage> kv = m.alloc_kv(4);
  ASSERT_TRUE(kv.is_ok());
  ASSERT_TRUE(cache.add_sequence(0).is_ok());
  ASSERT_TRUE(cache.add_sequence(1).is_ok());
  std::vector<float> logits;
  Batch a;
  for (int i = 0; i < 40; ++i) a.add(i % 64, i, 0, i == 39);
  ASSERT_TRUE(m.forward(a, cache, *kv, &logits).is_ok());
  EXPECT_EQ(cache.n_free_blocks(), 1);
  Batch b;  // 30 more positions for sequence 1 need 2 blocks: refused, nothing changes
  for (int i = 0; i < 30; ++i) b.add(i % 64, i, 1, false);
  Status s = m.forward(b, cache, *kv, &logits);
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted) << s.to_string();
  EXPECT_EQ(cache.n_free_blocks(), 1);
  EXPECT_EQ(cache.length(1), 0);
  cache.remove_sequence(0);
  EXPECT_EQ(cache.n_free_blocks(), 4);
  ASSERT_TRUE(m.forward(b, cache, *kv, &logits).is_ok());
  EXPECT_EQ(cache.n_free_blocks(), 2);
  // Malformed batches are refused before anything changes.
  Batch gap;
  gap.add(1, 31, 1, true);  // position 30 expected
  EXPECT_EQ(m.forward(gap, cache, *kv, &logits).code(), StatusCode::kInvalidArgument);
  Batch bad_token;
  bad_token.add(64, 30, 1, true);
  EXPECT_EQ(m.forward(bad_token, cache, *kv, &logits).code(), StatusCode::kInvalidArgument);
  Batch unknown;
  unknown.add(1, 0, 9, true);
  EXPECT_EQ(m.forward(unknown, cache, *kv, &logits).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(cache.length(1), 30);
}

// forward() asked for tokens: each row's token is what sample_row() chooses
// from the logits a logits pass returns, on the CPU backend (which samples
// the logits where they are) and through Backend::sample's default
// (download, then the host), used by a backend that does not sample itself.
TEST(BatchTest, SampledPassChoosesWhatItsLogitsSay) {
  const testing::TestModel tm = testing::make_test_model(spec("qwen3", 64, 4, 2, 96, false, GgmlType::kQ8_0));
  auto pool = std::make_shared<ThreadPool>(2);
  std::vector<std::shared_ptr<Backend>> backends = {
      make_cpu_backend(pool), std::make_shared<testing::ForwardingBackend>(make_cpu_backend(pool))};
  for (const auto& be : backends) {
    SCOPED_TRACE(be->name());
    auto f = GgufFile::parse({reinterpret_cast<const std::uint8_t*>(tm.gguf.data()), tm.gguf.size()});
    ASSERT_TRUE(f.is_ok());
    auto m = Model::from_gguf(std::move(*f), be);
    ASSERT_TRUE(m.is_ok()) << m.status().to_string();
    const int n_vocab = (*m)->params().n_vocab;
    KvCache cache_a(8), cache_b(8);
    Result<KvStorage> kv_a = (*m)->alloc_kv(8), kv_b = (*m)->alloc_kv(8);
    ASSERT_TRUE(kv_a.is_ok() && kv_b.is_ok());
    Batch batch;  // two prompts and a prompt chunk that wants no logits
    const std::vector<std::int32_t> toks = random_tokens(40, n_vocab, 3);
    for (int s = 0; s < 3; ++s) {
      ASSERT_TRUE(cache_a.add_sequence(s).is_ok() && cache_b.add_sequence(s).is_ok());
      const int len = 7 + 11 * s;
      for (int i = 0; i < len; ++i) batch.add(toks[static_cast<std::size_t>(i)], i, s, s != 1 && i + 1 == len);
    }
    std::vector<SampleRow> rows(2);
    rows[0].params.temperature = 0;
    rows[0].params.n_logprobs = 4;
    rows[1].params.top_p = 0.9f;
    rows[1].params.presence_penalty = 1.5f;
    rows[1].counts = {{toks[0], 2}, {toks[3], 1}};
    rows[1].u = 0.37;
    std::vector<float> logits;
    ASSERT_TRUE((*m)->forward(batch, cache_a, *kv_a, &logits).is_ok());
    ASSERT_EQ(logits.size(), 2u * static_cast<std::size_t>(n_vocab));
    std::vector<SampledToken> tokens;
    PassOutput out;
    out.rows = std::span<const SampleRow>(rows).first(1);  // one row for two tokens: refused, nothing changes
    out.tokens = &tokens;
    EXPECT_EQ((*m)->forward(batch, cache_b, *kv_b, out).code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(cache_b.length(0), 0);
    out.rows = rows;
    ASSERT_TRUE((*m)->forward(batch, cache_b, *kv_b, out).is_ok());
    ASSERT_EQ(tokens.size(), 2u);
    for (std::size_t r = 0; r < 2; ++r) {
      SampledToken want = sample_row(std::span<const float>(logits).subspan(r * n_vocab, n_vocab), rows[r]);
      EXPECT_EQ(tokens[r].token, want.token) << r;
      EXPECT_EQ(tokens[r].logprob, want.logprob) << r;
      ASSERT_EQ(tokens[r].top.size(), want.top.size());
      for (std::size_t k = 0; k < want.top.size(); ++k) EXPECT_EQ(tokens[r].top[k].token, want.top[k].token);
    }
    EXPECT_EQ(tokens[0].top.size(), 4u);
  }
}

// A decode step reads every matrix but only one row of the embedding
// table, unless that table is also the output matrix.
TEST(BatchTest, WeightBytesPerTokenCountOneEmbeddingRow) {
  for (bool tied : {false, true}) {
    Loaded l = load(spec("llama", 64, 4, 2, 96, tied, GgmlType::kQ8_0));
    const Model& m = *l.model;
    const GgufTensor* embd = m.gguf().tensor("token_embd.weight");
    ASSERT_NE(embd, nullptr);
    if (tied)
      EXPECT_EQ(m.weight_bytes_per_token(), m.weight_bytes());
    else
      EXPECT_EQ(m.weight_bytes_per_token(), m.weight_bytes() - embd->data.size() + row_bytes(GgmlType::kQ8_0, 64));
  }
}

// scratch_bytes() is what the forward pass really allocates: a device's KV
// budget leaves exactly that much free for activations (here counted on a
// backend that sums its allocations), for a qwen2 shape whose query heads
// are wider than n_embd.
TEST(BatchTest, ScratchBytesAreWhatTheForwardPassAllocates) {
  class Counting final : public testing::ForwardingBackend {
   public:
    Counting() : ForwardingBackend(make_cpu_backend(std::make_shared<ThreadPool>(1))) {}
    Result<std::shared_ptr<float>> alloc(std::int64_t n) override {
      bytes += static_cast<std::uint64_t>(n) * sizeof(float);
      return ForwardingBackend::alloc(n);
    }
    std::uint64_t bytes = 0;
  };
  const testing::TestModel tm = testing::make_test_model(spec("qwen2", 64, 4, 2, 96, false, GgmlType::kF32, 32));
  auto f = GgufFile::parse({reinterpret_cast<const std::uint8_t*>(tm.gguf.data()), tm.gguf.size()});
  ASSERT_TRUE(f.is_ok());
  auto counting = std::make_shared<Counting>();
  auto m = Model::from_gguf(std::move(*f), counting);
  ASSERT_TRUE(m.is_ok()) << m.status().to_string();
  KvCache cache(4);
  Result<KvStorage> kv = (*m)->alloc_kv(4);
  ASSERT_TRUE(kv.is_ok());
  ASSERT_TRUE(cache.add_sequence(0).is_ok());
  ASSERT_TRUE(cache.add_sequence(1).is_ok());
  counting->bytes = 0;
  Batch b;
  for (int i = 0; i < 7; ++i) b.add(i + 1, i, 0, i == 6);
  for (int i = 0; i < 3; ++i) b.add(i + 1, i, 1, true);
  std::vector<float> logits;
  ASSERT_TRUE((*m)->forward(b, cache, *kv, &logits).is_ok());
  EXPECT_EQ(counting->bytes, (*m)->scratch_bytes(10, 4));
  EXPECT_GT((*m)->scratch_bytes(10, 4), (*m)->scratch_bytes(10, 1));
}

TEST_P(KvTypeTest, ForkedSequencesShareAPrefixAndDivergeCorrectly) {
  const KvType kv_type = GetParam();
  Loaded l = load(spec("llama", 64, 4, 2, 96, false, GgmlType::kF32));
  Model& m = *l.model;
  std::vector<std::int32_t> prefix = random_tokens(20, 64, 9);
  std::vector<std::int32_t> a = prefix, b = prefix;
  a.push_back(3);
  b.push_back(11);
  std::vector<float> want_a = run_chunks(m, a, {21}, kv_type), want_b = run_chunks(m, b, {21}, kv_type);
  KvCache cache(16);
  Result<KvStorage> kv = m.alloc_kv(16, kv_type);
  ASSERT_TRUE(kv.is_ok());
  ASSERT_TRUE(cache.add_sequence(0).is_ok());
  Batch p;
  for (int i = 0; i < 20; ++i) p.add(prefix[i], i, 0, false);
  std::vector<float> logits;
  ASSERT_TRUE(m.forward(p, cache, *kv, &logits).is_ok());
  ASSERT_TRUE(cache.fork(0, 1).is_ok());
  EXPECT_EQ(cache.n_free_blocks(), 14);  // shared, not copied
  Batch d;
  d.add(3, 20, 0, true);
  d.add(11, 20, 1, true);
  ASSERT_TRUE(m.forward(d, cache, *kv, &logits).is_ok());
  EXPECT_EQ(cache.n_free_blocks(), 13);  // the shared partial block was copied once
  std::vector<float> got_a(logits.begin(), logits.begin() + 64), got_b(logits.begin() + 64, logits.end());
  std::vector<double> ref_a(want_a.end() - 64, want_a.end()), ref_b(want_b.end() - 64, want_b.end());
  EXPECT_LT(rel_error(got_a, ref_a), 1e-5);
  EXPECT_LT(rel_error(got_b, ref_b), 1e-5);
}

std::string models_dir() {
  const char* d = std::getenv("AIRLOCK_MODELS_DIR");
  return d ? d : "";
}

TEST(RealModelTest, Stories260KGreedyTokenIds) {
  std::string path = models_dir() + "/stories260K.gguf";
  if (!std::ifstream(path)) GTEST_SKIP() << "stories260K.gguf not found (set AIRLOCK_MODELS_DIR)";
  auto m = Model::load(path, cpu());
  ASSERT_TRUE(m.is_ok()) << m.status().to_string();
  KvCache cache(16);
  Result<KvStorage> kv = (*m)->alloc_kv(16);
  ASSERT_TRUE(kv.is_ok());
  ASSERT_TRUE(cache.add_sequence(0).is_ok());
  std::vector<std::int32_t> got;
  std::int32_t tok = 1;  // BOS
  std::vector<float> logits;
  Sampler greedy(SamplingParams{0.0f});
  for (int pos = 0; pos < 20; ++pos) {
    Batch b;
    b.add(tok, pos, 0, true);
    ASSERT_TRUE((*m)->forward(b, cache, *kv, &logits).is_ok());
    tok = greedy.sample(logits, {}, 0).token;
    got.push_back(tok);
  }
  // From ../shared/models/README.md.
  std::vector<std::int32_t> want = {403, 407, 261, 378, 432, 383, 286, 261, 376, 298,
                                    315, 421, 395, 317, 426, 338, 401, 396, 267, 337};
  EXPECT_EQ(got, want);
}

TEST(RealModelTest, Stories260KGreedyTextMatchesTheReference) {
  const std::string path = models_dir() + "/stories260K.gguf";
  const std::string expected_path = models_dir() + "/stories260K.expected.txt";
  if (!std::ifstream(path) || !std::ifstream(expected_path))
    GTEST_SKIP() << "stories260K.gguf / .expected.txt not found (set AIRLOCK_MODELS_DIR)";
  std::ostringstream ss;
  ss << std::ifstream(expected_path, std::ios::binary).rdbuf();
  const std::string expected = ss.str();
  auto m = Model::load(path, cpu());
  ASSERT_TRUE(m.is_ok()) << m.status().to_string();
  auto tok = Tokenizer::from_gguf((*m)->gguf());
  ASSERT_TRUE(tok.is_ok()) << tok.status().to_string();
  KvCache cache(16);
  Result<KvStorage> kv = (*m)->alloc_kv(16);
  ASSERT_TRUE(kv.is_ok());
  ASSERT_TRUE(cache.add_sequence(0).is_ok());
  // Greedy from BOS alone (the README: 200 positions, BOS + 199 generated);
  // one more step so the last character of the reference is surely complete.
  std::int32_t next = (*tok)->bos();
  StreamDecoder decoder(**tok);
  std::string text;
  std::vector<float> logits;
  Sampler greedy(SamplingParams{0.0f});
  for (int pos = 0; pos < 200; ++pos) {
    Batch b;
    b.add(next, pos, 0, true);
    ASSERT_TRUE((*m)->forward(b, cache, *kv, &logits).is_ok());
    next = greedy.sample(logits, {}, 0).token;
    text += decoder.push(next);
  }
  text += decoder.finish();
  ASSERT_GE(text.size(), expected.size());
  EXPECT_EQ(text.substr(0, expected.size()), expected);
}

}  // namespace
}  // namespace airlock::engine
