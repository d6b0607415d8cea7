// What the daemon and the RAG layer need from an embedding model, whatever
// its kind: static token vectors (model2vec, static_embedding.h) or a BERT
// encoder from GGUF. Implementations are immutable after loading and embed()
// may run concurrently.
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "airlock/common/status.h"
#include "airlock/engine/backend.h"
#include "airlock/engine/tokenizer.h"

namespace airlock::engine {

class Backend;

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

// Loads the embedding model at `path`, whatever its kind:
//   - a .gguf file whose general.architecture is "bert" or "nomic-bert": a
//     BertEmbedding (bert_embedding.h) running on `backend`; when `backend`
//     is null, on a CPU backend of its own with one thread per core;
//   - a .gguf file of a decoder architecture (model.h,
//     kDecoderArchitectures): a DecoderEmbedding (decoder_embedding.h), on
//     `backend` likewise, its passes' KV storage of `decoder_kv`;
//   - a directory, or the model.safetensors file inside one: a model2vec
//     StaticEmbedding (static_embedding.h); `backend` is not used.
// Errors: kInvalidArgument for a GGUF of another architecture or a path
// that is neither; kNotFound when the path does not exist; otherwise the
// loader's own errors, prefixed with the path.
Result<std::unique_ptr<Embedder>> load_embedder(const std::string& path, std::shared_ptr<Backend> backend = nullptr,
                                                KvType decoder_kv = KvType::kF32);

}  // namespace airlock::engine
