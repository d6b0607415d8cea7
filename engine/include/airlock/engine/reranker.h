// What the daemon needs from a cross-encoder reranker, whatever its kind: a
// BERT-family encoder with a classification head (bert_embedding.h) or a
// decoder that answers "yes" or "no" (decoder_reranker.h, Qwen3-Reranker).
// A score is a logit: its logistic is the probability that the document is
// relevant to the query. Implementations are immutable after loading and
// may be called concurrently.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "airlock/common/status.h"
#include "airlock/engine/backend.h"

namespace airlock::engine {

class Backend;

// A (query, document) pair as the model reads it.
struct RerankPair {
  std::vector<std::int32_t> ids;  // the whole input, special tokens included
  std::size_t second = 0;         // BERT: where token type 1 (the document) begins; ids.size() for none
  bool cut = false;               // the query or the document lost tokens to the context length
};

class Reranker {
 public:
  virtual ~Reranker() = default;
  // The query's tokens, computed once for many documents.
  virtual std::vector<std::int32_t> query_ids(std::string_view query) const = 0;
  // The pair of a query (query_ids) and a document, cut to the model's
  // input length.
  virtual RerankPair pair(std::span<const std::int32_t> query_ids, std::string_view document) const = 0;
  // The relevance logit of each pair; kInvalidArgument for a malformed
  // pair, kResourceExhausted when the backend cannot allocate.
  virtual Result<std::vector<float>> score(std::span<const RerankPair> pairs) const = 0;
  virtual int context_length() const = 0;  // the longest pair, in tokens
  virtual int n_layer() const = 0;
  virtual std::string_view reranker_kind() const = 0;  // "bert", "decoder" (logs)
};

// Loads the reranker at `path`: a "bert" GGUF with a classification head,
// or a GGUF of a decoder architecture with <arch>.pooling_type 4 (rank) and
// cls.output (Qwen3-Reranker as llama.cpp converts it), on `backend` (a
// decoder's passes with KV storage of `decoder_kv`).
// kInvalidArgument for other architectures; otherwise the loaders' errors.
Result<std::unique_ptr<Reranker>> load_reranker(const std::string& path, std::shared_ptr<Backend> backend,
                                                KvType decoder_kv = KvType::kF32);

}  // namespace airlock::engine
