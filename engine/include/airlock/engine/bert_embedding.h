// BERT-family sentence encoders from GGUF, as llama.cpp's converters write
// them: "bert" (learned absolute positions, token types, post-LayerNorm
// blocks, GELU feed-forward; bge, MiniLM, e5, ...) and "nomic-bert" (fused
// QKV, rotary positions, SwiGLU feed-forward; nomic-embed-text).
//
// A text becomes [CLS] tokens [SEP] (the WordPiece tokenizer from the same
// file, tokenizer.ggml.model = "bert"; lower-casing and accent stripping as
// the vocabulary needs), cut to the context length, with token type 0 and
// positions 0..n-1. The encoder's last hidden states are pooled as
// <arch>.pooling_type says (1 mean over every token including [CLS] and
// [SEP], 2 the [CLS] token, 3 the last token; absent: mean) and
// L2-normalised, as llama.cpp's embedding output is.
//
// Batching: embed_batch() packs several texts into one forward pass (every
// backend operation sees all their tokens; attention is confined to each
// text), in passes of at most kMaxBatchTokens tokens.
//
// Errors from load(): kVerificationFailed for a malformed file (a missing
// tensor, a shape or type that disagrees with the metadata, zero heads, a
// head count that does not divide the embedding length, a tokenizer larger
// than the embedding table), kInvalidArgument for what this engine does not
// do (another architecture, causal attention, pooling "none" or "rank", a
// tokenizer other than WordPiece). The file is untrusted: nothing in it can
// make a forward pass read out of bounds.
//
// Thread-safety: immutable after load() except for the forward pass, which
// an internal mutex serialises: embed() and embed_batch() may be called
// concurrently. The backend (and its thread pool) must not run another
// model's forward pass at the same time; give the encoder its own backend
// or serialise the two.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "airlock/common/status.h"
#include "airlock/engine/backend.h"
#include "airlock/engine/embedder.h"
#include "airlock/engine/gguf.h"
#include "airlock/engine/tokenizer.h"

namespace airlock::engine {

// llama.cpp's LLAMA_POOLING_TYPE numbers, as <arch>.pooling_type stores them.
enum class PoolingType : std::uint32_t { kNone = 0, kMean = 1, kCls = 2, kLast = 3, kRank = 4 };

struct BertParams {
  std::string arch;          // "bert" or "nomic-bert"
  int n_vocab = 0;           // rows of token_embd.weight
  int n_embd = 0;
  int n_layer = 0;
  int n_head = 0;
  int n_head_kv = 0;
  int head_dim = 0;
  int n_ff = 0;
  int n_ctx_train = 0;       // longest sequence, special tokens included
  int n_token_types = 0;
  float norm_eps = 1e-12f;
  PoolingType pooling = PoolingType::kMean;
  RopeParams rope;           // nomic-bert only
  int kv_dim() const { return n_head_kv * head_dim; }
};

class BertEmbedding final : public Embedder {
 public:
  // Most tokens one forward pass holds; embed_batch() splits larger batches.
  static constexpr std::int64_t kMaxBatchTokens = 4096;

  static Result<std::unique_ptr<BertEmbedding>> load(const std::string& gguf_path, std::shared_ptr<Backend> backend);
  static Result<std::unique_ptr<BertEmbedding>> from_gguf(std::unique_ptr<GgufFile> file,
                                                          std::shared_ptr<Backend> backend);
  ~BertEmbedding() override;

  const BertParams& params() const { return params_; }
  int dim() const override { return params_.n_embd; }
  // Content tokens that fit: the context length less [CLS] and [SEP].
  std::size_t max_tokens() const override;
  const Tokenizer& tokenizer() const override { return *tokenizer_; }
  std::string_view kind() const override { return params_.arch; }

  // The normalised embedding of `text` (dim() floats); empty when the
  // forward pass failed (the backend ran out of memory). Use encode() to
  // see the error.
  std::vector<float> embed(std::string_view text) const override;
  // One embedding per text, in order; all empty when the pass failed.
  std::vector<std::vector<float>> embed_batch(std::span<const std::string> texts) const override;

  // embed_batch() with the error: kResourceExhausted when the backend
  // cannot allocate the activations.
  Result<std::vector<std::vector<float>>> encode(std::span<const std::string> texts) const;
  // The model's input for `text`: [CLS] content [SEP], content cut so the
  // whole fits the context length.
  std::vector<std::int32_t> input_ids(std::string_view text) const;
  // Pooled, normalised embeddings of ready-made token sequences (ids in
  // [0, n_vocab), 1..n_ctx_train tokens each; kInvalidArgument otherwise).
  Result<std::vector<std::vector<float>>> embed_tokens(std::span<const std::vector<std::int32_t>> seqs) const;

 private:
  struct Layer;
  BertEmbedding();
  Status load_weights();
  // One forward pass over `seqs` (already checked), appending their pooled
  // embeddings to `out`. Caller holds forward_mu_.
  Status forward(std::span<const std::vector<std::int32_t>> seqs, std::vector<std::vector<float>>* out) const;

  std::unique_ptr<GgufFile> file_;
  std::shared_ptr<Backend> backend_;
  std::unique_ptr<Tokenizer> tokenizer_;
  BertParams params_;
  WeightTensor tok_embd_, type_row0_, pos_embd_, embd_norm_, embd_norm_b_;
  std::vector<Layer> layers_;
  mutable std::mutex forward_mu_;  // one forward pass at a time on the backend
};

}  // namespace airlock::engine
