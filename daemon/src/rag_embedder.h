// The engine's embedding model seen through rag::Embedder (rag/ never links
// the engine). The model id names the model's files as signed in the bundle
// manifest (model_host.cpp, embedding_identity), so a store refuses vectors
// from any other model.
//
// Thread-safety: as the wrapped engine::Embedder (concurrent calls allowed).
#pragma once

#include <cmath>
#include <string>
#include <utility>

#include "airlock/engine/embedder.h"
#include "airlock/rag/embedder.h"

namespace airlock::daemon {

class RagEmbedder final : public rag::Embedder {
 public:
  RagEmbedder(const engine::Embedder& model, std::string id) : model_(model), id_(std::move(id)) {}
  std::string model_id() const override { return id_; }
  int dim() const override { return model_.dim(); }
  std::size_t count_tokens(std::string_view text) const override { return model_.count_tokens(text); }
  std::vector<std::vector<float>> embed(std::span<const std::string> texts) const override {
    std::vector<std::vector<float>> out = model_.embed_batch(texts);
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

 private:
  const engine::Embedder& model_;
  std::string id_;
};

}  // namespace airlock::daemon
