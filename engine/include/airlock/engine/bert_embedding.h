// BERT-family sentence encoders from GGUF, as llama.cpp's converters write
// them: "bert" (learned absolute positions, token types, post-LayerNorm
// blocks, GELU feed-forward; bge, MiniLM, e5, ...) and "nomic-bert" (fused
// QKV, rotary positions, SwiGLU feed-forward; nomic-embed-text).
//
// A text becomes [CLS] tokens [SEP] (the WordPiece tokenizer from the same
// file, tokenizer.ggml.model = "bert"; lower-casing and accent stripping as
// the vocabulary needs), cut to the context length, with token type 0 and
// positions 0..n-1. XLM-RoBERTa files (multilingual-e5, bge-m3,
// bge-reranker-v2-m3: "bert" with a SentencePiece Unigram vocabulary,
// tokenizer.ggml.model = "t5") give <s> tokens </s> the same way (a file
// whose vocabulary would not add both is refused); llama.cpp's converter
// has already dropped the position table's rows below RoBERTa's padding
// offset, so positions start at 0 there too. The encoder's last hidden
// states are pooled as <arch>.pooling_type says (1 mean over every token
// including [CLS] and [SEP], 2 the [CLS] token, 3 the last token; absent:
// mean) and L2-normalised, as llama.cpp's embedding output is.
//
// Batching: embed_batch() packs several texts into one forward pass (every
// backend operation sees all their tokens; attention is confined to each
// text), in passes of at most kMaxBatchTokens tokens.
//
// Cross-encoder rerankers (loaded with EncoderUse::kRerank): a "bert" file
// with llama.cpp's classification head, whatever its pooling_type says:
// cls (dense, tanh) then cls.output, which is what Hugging Face's
// BertForSequenceClassification computes (pooler, then classifier) and
// RoBERTa's classification head; or cls.output alone, a projection of the
// [CLS] state, which is what llama.cpp's converter leaves of a
// BertForSequenceClassification (it drops the pooler, so such files score
// otherwise than the original model, in llama.cpp too). A (query,
// document) pair is [CLS] query [SEP] document [SEP] (XLM-RoBERTa:
// <s> query </s></s> document </s>, all type 0, as its tokenizer pairs),
// the document's part with token type 1 when the file has two token types
// (as Hugging Face's tokenizer sets token_type_ids; llama.cpp feeds type 0
// throughout, and its own pair layout differs by file), cut longest-first
// to the context length as Hugging Face's fast tokenizers cut a pair. The score is the
// head's single output, a logit.
//
// Errors from load(): kVerificationFailed for a malformed file (a missing
// tensor, a shape or type that disagrees with the metadata, zero heads, a
// head count that does not divide the embedding length, a tokenizer larger
// than the embedding table), kInvalidArgument for what this engine does not
// do (another architecture, causal attention, pooling "none" or "rank" for
// an embedding model, a reranker without a classification head or with a
// head of more than one output, a tokenizer other than WordPiece or
// SentencePiece Unigram). The file is untrusted: nothing in it can
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
#include "airlock/engine/reranker.h"
#include "airlock/engine/gguf.h"
#include "airlock/engine/tokenizer.h"

namespace airlock::engine {

// llama.cpp's LLAMA_POOLING_TYPE numbers, as <arch>.pooling_type stores them.
enum class PoolingType : std::uint32_t { kNone = 0, kMean = 1, kCls = 2, kLast = 3, kRank = 4 };

// What a BERT file is loaded as: a sentence encoder, or a cross-encoder
// that scores (query, document) pairs.
enum class EncoderUse { kEmbedding, kRerank };

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
  bool cls_dense = false;    // reranker: the head has the dense + tanh layer before cls.output
  float norm_eps = 1e-12f;
  PoolingType pooling = PoolingType::kMean;
  RopeParams rope;           // nomic-bert only
  int kv_dim() const { return n_head_kv * head_dim; }
};

class BertEmbedding final : public Embedder, public Reranker {
 public:
  // Most tokens one forward pass holds; embed_batch() splits larger batches.
  static constexpr std::int64_t kMaxBatchTokens = 4096;

  static Result<std::unique_ptr<BertEmbedding>> load(const std::string& gguf_path, std::shared_ptr<Backend> backend,
                                                     EncoderUse use = EncoderUse::kEmbedding);
  static Result<std::unique_ptr<BertEmbedding>> from_gguf(std::unique_ptr<GgufFile> file,
                                                          std::shared_ptr<Backend> backend,
                                                          EncoderUse use = EncoderUse::kEmbedding);
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
  // A reranker embeds nothing: kInvalidArgument here, and empty vectors
  // from embed() and embed_batch().
  Result<std::vector<std::vector<float>>> embed_tokens(std::span<const std::vector<std::int32_t>> seqs) const;

  // ---- cross-encoders (loaded with EncoderUse::kRerank) ----
  bool is_reranker() const { return params_.pooling == PoolingType::kRank; }
  // A (query, document) pair as the model reads it: [CLS] query [SEP]
  // document [SEP], `second` where the document's part (token type 1) begins.
  using Pair = RerankPair;
  Pair pair(std::string_view query, std::string_view document) const;
  // The same with the query tokenised once (query_ids) for many documents.
  std::vector<std::int32_t> query_ids(std::string_view query) const override;
  Pair pair(std::span<const std::int32_t> query_ids, std::string_view document) const override;
  // The relevance logit of each pair; kInvalidArgument for an embedding
  // model or a malformed pair (as embed_tokens checks),
  // kResourceExhausted when the backend cannot allocate the activations.
  Result<std::vector<float>> score(std::span<const Pair> pairs) const override;
  int context_length() const override { return params_.n_ctx_train; }
  int n_layer() const override { return params_.n_layer; }
  std::string_view reranker_kind() const override { return params_.arch; }

 private:
  struct Layer;
  BertEmbedding();
  Status load_weights(EncoderUse use);
  Status check_tokens(std::span<const std::vector<std::int32_t>> seqs) const;
  // One forward pass over `seqs` (already checked; second[s] is where
  // sequence s's token type 1 begins, its length for none), appending one
  // vector per sequence to `out`: its pooled, normalised embedding, or for
  // a reranker its score (one float). Caller holds forward_mu_.
  Status forward(std::span<const std::vector<std::int32_t>> seqs, std::span<const std::size_t> second,
                 std::vector<std::vector<float>>* out) const;
  // A reranker's head over the [CLS] rows of the hidden states `x` (the
  // sequences start at rows tok0), one score each onto `out`.
  Status rank_head(const float* x, std::span<const std::int64_t> tok0, std::vector<std::vector<float>>* out) const;
  // forward() over all of `seqs` in passes of at most kMaxBatchTokens.
  Status run_passes(std::span<const std::vector<std::int32_t>> seqs, std::span<const std::size_t> second,
                    std::vector<std::vector<float>>* out) const;

  std::unique_ptr<GgufFile> file_;
  std::shared_ptr<Backend> backend_;
  std::unique_ptr<Tokenizer> tokenizer_;
  int pair_separators_ = 1;  // [SEP] (BERT) or </s></s> (XLM-RoBERTa) between a pair's parts
  BertParams params_;
  WeightTensor tok_embd_, type_row0_, type_row1_, pos_embd_, embd_norm_, embd_norm_b_;
  WeightTensor cls_, cls_b_, cls_out_, cls_out_b_;  // a reranker's head
  std::vector<Layer> layers_;
  mutable std::mutex forward_mu_;  // one forward pass at a time on the backend
};

}  // namespace airlock::engine
