// The engine's embedding model seen through rag::Embedder (rag/ never links
// the engine). The model id names the model's files as signed in the bundle
// manifest (model_host.cpp, embedding_identity), and the document prefix
// when there is one, so a store refuses vectors made any other way.
// [rag] query_prefix / document_prefix go in front of questions and chunks
// (instruction-trained models: nomic-embed's "search_query: ", E5's
// "query: ", Qwen3-Embedding's "Instruct: ...\nQuery:").
//
// Thread-safety: as the wrapped engine::Embedder (concurrent calls allowed).
#pragma once

#include <cmath>
#include <string>
#include <utility>

#include "airlock/engine/embedder.h"
#include "airlock/rag/embedder.h"
#include "airlock/verifier/sha256.h"

namespace airlock::daemon {

class RagEmbedder final : public rag::Embedder {
 public:
  RagEmbedder(const engine::Embedder& model, std::string id, std::string query_prefix = {},
              std::string document_prefix = {})
      : model_(model),
        id_(document_prefix.empty() ? std::move(id)
                                    : id + "+document_prefix:sha256:" + verifier::to_hex(verifier::sha256(document_prefix))),
        query_prefix_(std::move(query_prefix)),
        document_prefix_(std::move(document_prefix)) {}
  std::string model_id() const override { return id_; }
  int dim() const override { return model_.dim(); }
  std::size_t count_tokens(std::string_view text) const override { return model_.count_tokens(text); }
  std::vector<std::vector<float>> embed(std::span<const std::string> texts) const override {
    if (document_prefix_.empty()) return normalised(model_.embed_batch(texts));
    std::vector<std::string> prefixed;
    prefixed.reserve(texts.size());
    for (const std::string& t : texts) prefixed.push_back(document_prefix_ + t);
    return normalised(model_.embed_batch(prefixed));
  }
  std::vector<float> embed_query(const std::string& query) const override {
    const std::string q[] = {query_prefix_ + query};
    std::vector<std::vector<float>> v = normalised(model_.embed_batch(q));
    return v.empty() ? std::vector<float>() : std::move(v[0]);
  }

 private:
  static std::vector<std::vector<float>> normalised(std::vector<std::vector<float>> out) {
    // The store searches by inner product: make sure every vector is unit
    // length even for models whose config does not ask for it.
    for (std::vector<float>& v : out) {
      double n = 0;
      for (float x : v) n += static_cast<double>(x) * x;
      if (n > 0) {
        const float inv = static_cast<float>(1.0 / std::sqrt(n));
        for (float& x : v) x *= inv;
      }
    }
    return out;
  }

  const engine::Embedder& model_;
  std::string id_;
  std::string query_prefix_, document_prefix_;
};

}  // namespace airlock::daemon
