// Static embedding models in the model2vec format: a directory with
// model.safetensors (token vectors "embeddings" [rows, dim], optional
// per-token "weights" and a vocabulary-to-row "mapping"), tokenizer.json and
// config.json. A text's embedding is the mean of its tokens' vectors (times
// their weights), L2-normalised when config.json says "normalize": true, as
// the reference model2vec implementations compute it.
//
// Supported tokenizers: Hugging Face WordPiece with the BERT normalizer
// (lower case). Other tokenizer.json models (Unigram, BPE) are refused with
// kInvalidArgument naming them. Every file is untrusted input: sizes, ids
// and shapes are checked before use (kVerificationFailed).
//
// Thread-safety: immutable after load(); embed() may run concurrently.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "airlock/common/status.h"
#include "airlock/engine/embedder.h"
#include "airlock/engine/safetensors.h"
#include "airlock/engine/tokenizer.h"

namespace airlock::engine {

class StaticEmbedding final : public Embedder {
 public:
  static Result<std::unique_ptr<StaticEmbedding>> load(const std::string& dir);
  int dim() const override { return dim_; }
  std::size_t max_tokens() const override { return max_tokens_; }
  std::string_view kind() const override { return "model2vec"; }
  // The embedding of `text` (dim() floats; zeros when no token is known).
  std::vector<float> embed(std::string_view text) const override;
  const Tokenizer& tokenizer() const override { return *tokenizer_; }

 private:
  StaticEmbedding() = default;
  std::unique_ptr<SafetensorsFile> file_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::vector<float> rows_;           // [n_rows, dim]
  std::vector<std::int32_t> mapping_; // token id -> row (identity when the file has none)
  std::vector<float> weights_;        // per token id; empty: all 1
  int dim_ = 0;
  bool normalize_ = false;
  std::size_t max_tokens_ = 512;
  std::size_t max_chars_ = 0;         // text is cut to this many characters first (0: no cut)
  std::int32_t unk_ = -1;
};

// Builds a WordPiece TokenizerSpec from a Hugging Face tokenizer.json (the
// form the GGUF converters produce: U+2581 before word-initial pieces, "##"
// removed). kInvalidArgument for other tokenizer models or normalizers.
Result<TokenizerSpec> wordpiece_spec_from_hf_json(std::string_view tokenizer_json);

}  // namespace airlock::engine
