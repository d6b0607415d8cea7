// Static embedding models in the model2vec format: a directory with
// model.safetensors (token vectors "embeddings" [rows, dim], optional
// per-token "weights" and a vocabulary-to-row "mapping"), tokenizer.json and
// config.json. A text's embedding is the mean of its tokens' vectors (times
// their weights), L2-normalised when config.json says "normalize": true, as
// the reference model2vec implementations compute it.
//
// Supported tokenizers: Hugging Face WordPiece with the BERT normalizer
// (lower case), and Unigram with the normalizers and the Metaspace
// pre-tokenizer unigram_spec_from_hf_json lists. Other tokenizer.json models
// (BPE, WordLevel), normalizers and pre-tokenizers are refused with
// kInvalidArgument naming them. Every file is untrusted input: sizes, ids,
// scores and shapes are checked before use (kVerificationFailed).
//
// As the reference implementations do: the text is cut to max_tokens()
// times the median piece length (in characters) before tokenizing; the
// unknown token is dropped for WordPiece (which names its unk_token) and
// kept for Unigram (whose tokenizer.json names none); a token's row is
// mapping[id] times weights[id].
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
  static Result<std::unique_ptr<StaticEmbedding>> load_checked(const std::string& dir);  // may throw json errors
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

// Builds a Unigram TokenizerSpec (model "unigram") from a Hugging Face
// tokenizer.json: model.vocab as [piece, score] pairs, unk_id, byte_fallback;
// the normalizer (null, or BertNormalizer, Replace with a String pattern or
// the Regex "\s+", Strip, Lowercase, StripAccents, NFC, NFD, NFKC, NFKD,
// Prepend, and Sequences of them); the pre-tokenizer (null or Metaspace with
// prepend_scheme always/first/never or the older add_prefix_space, and
// split). added_tokens must name vocabulary pieces as written; special ones
// become control tokens. kInvalidArgument names an unsupported model type,
// normalizer, regular expression or pre-tokenizer; kVerificationFailed for
// malformed JSON (entries that are not [string, number], an unk_id that is
// not a piece). Tokenizer::from_spec checks the rest (finite scores, no
// empty or repeated pieces).
Result<TokenizerSpec> unigram_spec_from_hf_json(std::string_view tokenizer_json);

// One of the two, by model.type; kInvalidArgument naming any other type.
Result<TokenizerSpec> spec_from_hf_json(std::string_view tokenizer_json);

}  // namespace airlock::engine
