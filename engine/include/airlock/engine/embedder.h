// What the daemon and the RAG layer need from an embedding model, whatever
// its kind: static token vectors (model2vec, static_embedding.h) or a BERT
// encoder from GGUF. Implementations are immutable after loading and embed()
// may run concurrently.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "airlock/engine/tokenizer.h"

namespace airlock::engine {

class Embedder {
 public:
  virtual ~Embedder() = default;
  virtual int dim() const = 0;
  // Longest input in tokens; longer texts are cut to this many tokens.
  virtual std::size_t max_tokens() const = 0;
  virtual const Tokenizer& tokenizer() const = 0;
  // A short human-readable kind for logs ("model2vec", "bert").
  virtual std::string_view kind() const = 0;
  // The embedding of `text` (dim() floats).
  virtual std::vector<float> embed(std::string_view text) const = 0;
  // Many texts at once; implementations that batch (encoders) override it.
  virtual std::vector<std::vector<float>> embed_batch(std::span<const std::string> texts) const {
    std::vector<std::vector<float>> out;
    out.reserve(texts.size());
    for (const std::string& t : texts) out.push_back(embed(t));
    return out;
  }
  // Tokens the model would see for `text` (without special tokens), for
  // chunking and usage accounting.
  std::size_t count_tokens(std::string_view text) const { return tokenizer().encode(text, false, false).size(); }
};

}  // namespace airlock::engine
