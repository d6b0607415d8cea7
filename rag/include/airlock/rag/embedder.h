// What retrieval needs from an embedding model. rag/ never links the engine:
// the daemon adapts the engine's models to this interface and tests plug in
// small deterministic fakes.
//
// Thread-safety: implementations must allow concurrent calls.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace airlock::rag {

class Embedder {
 public:
  virtual ~Embedder() = default;
  // Identifies the model (for example the bundle and file it came from);
  // a store refuses vectors from a different model than the one it was
  // built with, since their spaces are not comparable.
  virtual std::string model_id() const = 0;
  virtual int dim() const = 0;
  // Tokens the model sees for `text`; the chunker sizes chunks with it.
  virtual std::size_t count_tokens(std::string_view text) const = 0;
  // One L2-normalised vector of dim() floats per text: the documents'
  // chunks.
  virtual std::vector<std::vector<float>> embed(std::span<const std::string> texts) const = 0;
  // A search's question. Models trained with different instructions for
  // queries and documents override this (the default embeds it as a
  // chunk); empty when the model failed.
  virtual std::vector<float> embed_query(const std::string& query) const {
    std::vector<std::vector<float>> v = embed(std::span<const std::string>(&query, 1));
    return v.empty() ? std::vector<float>() : std::move(v[0]);
  }
};

}  // namespace airlock::rag
