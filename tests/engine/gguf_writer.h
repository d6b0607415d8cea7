// Test utility: writes GGUF files with chosen architecture, shapes and weight
// types, with random weights quantised by the engine's own quantisers, plus a
// plain double-precision reference forward pass that shares no code with the
// engine's kernels.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "airlock/engine/ggml_types.h"
#include "airlock/engine/gguf.h"

namespace airlock::testing {

// ||got - want|| / ||want|| over two equally long sequences of numbers.
template <typename A, typename B>
double rel_l2_error(const A& got, const B& want) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    const double d = static_cast<double>(got[i]) - static_cast<double>(want[i]);
    num += d * d;
    den += static_cast<double>(want[i]) * static_cast<double>(want[i]);
  }
  return std::sqrt(num / den);
}

class GgufWriter {
 public:
  void set_u32(const std::string& key, std::uint32_t v);
  void set_f32(const std::string& key, float v);
  void set_bool(const std::string& key, bool v);
  void set_string(const std::string& key, const std::string& v);
  void set_string_array(const std::string& key, const std::vector<std::string>& v);
  void set_f32_array(const std::string& key, const std::vector<float>& v);
  void set_i32_array(const std::string& key, const std::vector<std::int32_t>& v);
  void set_u8_array(const std::string& key, const std::string& bytes);
  // Copies every metadata entry of `from` whose key starts with `prefix`
  // (a real vocabulary's tokenizer.* keys, say), except those in `skip`.
  void copy_metadata(const engine::GgufFile& from, const std::string& prefix, const std::vector<std::string>& skip = {});
  // Quantises `values` (ne[0] * ne[1] floats, row-major rows of ne[0]).
  void add_tensor(const std::string& name, engine::GgmlType type, std::vector<std::int64_t> ne,
                  const std::vector<float>& values);
  // A tensor whose bytes are already in `type` (row_bytes(type, ne[0]) per row).
  void add_tensor_bytes(const std::string& name, engine::GgmlType type, std::vector<std::int64_t> ne, std::string data);
  std::string bytes(std::uint32_t version = 3) const;

 private:
  struct Tensor {
    std::string name;
    engine::GgmlType type;
    std::vector<std::int64_t> ne;
    std::string data;
  };
  std::string kv_;
  std::uint64_t n_kv_ = 0;
  std::vector<Tensor> tensors_;
};

struct TestModelSpec {
  std::string arch = "llama";  // llama, qwen2, qwen3, phi3 (fused attn_qkv and ffn_up), gemma, gemma2, gemma3
  int n_vocab = 64;
  int n_embd = 64;
  int n_layer = 2;
  int n_head = 4;
  int n_head_kv = 2;
  int head_dim = 0;            // 0: n_embd / n_head
  int n_ff = 96;
  int n_ctx = 512;
  bool tied_output = false;
  engine::GgmlType weight_type = engine::GgmlType::kF32;
  float rope_base = 10000.0f;
  // The Gemma family's keys, written when set: attention.sliding_window,
  // attn_logit_softcapping, final_logit_softcapping (the reference then
  // caps gemma2 at 50 and 30 without them, gemma3 never).
  int sliding_window = 0;
  float attn_softcap = 0.0f;
  float final_softcap = 0.0f;
  // rope.scaling.type linear with this factor when > 0 (gemma3: its global
  // layers only).
  float rope_linear = 0.0f;
  int n_rot = 0;               // rope.dimension_count (0: head_dim)
  // LongRoPE: rope_factors_long/short tensors (random factors in [1, 4])
  // and the keys rope.scaling.original_context_length (this) and
  // rope.scaling.attn_factor (when > 0); n_ctx > rope_orig_ctx selects the
  // long factors.
  int rope_orig_ctx = 0;
  float rope_attn_factor = 0.0f;
  // granite's multipliers (logit_scale is required there: 1 unless set),
  // written when > 0; rope.scaling.finetuned written when 0 or 1.
  float logit_scale = 0.0f;
  float residual_scale = 0.0f;
  float embedding_scale = 0.0f;
  float attention_scale = 0.0f;
  int rope_finetuned = -1;
  // attention.head_count_kv written as this per-layer array instead
  // (Granite 4's converter writes one).
  std::vector<std::int32_t> kv_heads_per_layer;
  // Every layer's optional biases (attn_q/k/v, attn_output, ffn_gate/up/down;
  // F32, small random numbers), as llama.cpp's llama/granite loader takes
  // them (the engine applies them on any architecture). qwen2 has the
  // q/k/v ones either way. Not for phi3.
  bool biases = false;
  std::uint32_t seed = 1;
  // Adds more metadata (a tokenizer, say) after the hyper-parameters.
  std::function<void(GgufWriter&)> metadata;
  // For benchmarks of billions of weights: uniform numbers of the same
  // variance from a cheap generator instead of Gaussian ones, and
  // TestModel::weights left empty (no reference forward possible).
  bool bench_weights = false;
};

struct TestModel {
  TestModelSpec spec;
  std::string gguf;                                   // the file's bytes
  std::map<std::string, std::vector<double>> weights; // exactly what the file holds, dequantised
};

TestModel make_test_model(const TestModelSpec& spec);

// A byte-level BPE vocabulary ("gpt2", qwen2 rules) of 64 tokens: the
// letters, the digits, the space symbol and <|endoftext|> (63, control,
// EOS); then `controls`, control tokens from id 64 on.
void set_letter_vocab(GgufWriter& w, const std::vector<std::string>& controls = {});

// A decoder spec of the given shape, its seed derived from the shape.
TestModelSpec decoder_spec(const char* arch, int n_embd, int n_head, int n_head_kv, int n_ff, bool tied,
                           engine::GgmlType type, int head_dim = 0);

// Logits (n_tokens, n_vocab) of the causal sequence `tokens` at positions
// 0..n-1, computed in double precision with straightforward loops.
std::vector<double> reference_forward(const TestModel& model, const std::vector<std::int32_t>& tokens);
// The same pass's final hidden states (n_tokens, n_embd), after the output
// norm: what an embedding model reads out.
std::vector<double> reference_hidden(const TestModel& model, const std::vector<std::int32_t>& tokens);

// A random BERT-family encoder ("bert": learned positions, token types,
// post-LayerNorm blocks with biases and a GELU feed-forward; "nomic-bert":
// fused QKV without biases, rotary positions, SwiGLU) in llama.cpp's GGUF
// layout. The vocabulary comes from `metadata` (tokenizer.* keys), n_vocab
// must match it. The knobs at the end make hostile files.
struct BertModelSpec {
  std::string arch = "bert";
  int n_vocab = 0;
  int n_embd = 64;
  int n_layer = 2;
  int n_head = 4;
  int n_ff = 128;
  int n_ctx = 64;
  int n_token_types = 2;
  int pooling = 1;             // <arch>.pooling_type; -1: not written (4: rank, a reranker)
  // A reranker's classification head (llama.cpp's tensors): 0 none,
  // 1 cls.output alone (BertForSequenceClassification as llama.cpp
  // converts it), 2 cls (dense, tanh) then cls.output (the RoBERTa head).
  int rank_head = 0;
  int n_labels = 1;            // rows of cls.output.weight
  float norm_eps = 1e-12f;
  float rope_base = 1000.0f;   // nomic-bert
  engine::GgmlType weight_type = engine::GgmlType::kF32;  // matrices and tables; norms and biases are F32
  std::uint32_t seed = 1;
  std::function<void(GgufWriter&)> metadata;
  // Hostile knobs.
  int causal = -1;             // <arch>.attention.causal: -1 not written, else the value
  int meta_n_head = -1;        // head count written to the metadata (-1: n_head)
  std::string arch_written;    // general.architecture (empty: arch)
  std::string omit_tensor;     // left out of the file
  std::string misshape_tensor; // written with one row (or element) too many
  std::string extra_tensor;    // an F32 vector of n_embd the encoder has no use for
};

struct BertTestModel {
  BertModelSpec spec;
  std::string gguf;                                   // the file's bytes
  std::map<std::string, std::vector<double>> weights; // exactly what the file holds, dequantised
};

BertTestModel make_bert_model(const BertModelSpec& spec);

}  // namespace airlock::testing
