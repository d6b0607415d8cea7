// Embeddings from a decoder (Qwen3-Embedding and the like: a causal
// transformer of the decoder families model.h loads, read out at its final
// norm). Each text runs as its own sequence through Model::forward; its
// embedding is the hidden state of its last token ("last" pooling, the
// default) or the mean over its tokens, as the file's <arch>.pooling_type
// says (3 last, 1 mean; absent or 0 means last, as Qwen's published
// GGUF files are run: llama.cpp's --pooling last), normalised to unit
// length. The input is the tokenizer's with its special tokens (BOS/EOS
// as tokenizer.ggml.add_bos_token/add_eos_token say; Qwen3-Embedding's
// files from llama.cpp's converter since mid-2025 say add_eos_token =
// true with <|endoftext|> as EOS, as its Hugging Face tokenizer appends),
// the content cut to max_tokens(). Unlike llama.cpp's embedding tool,
// special tokens written in the text stay text (a document cannot end
// its own input early). appends_eos() false with last pooling reads the
// last content token: older conversions; the daemon warns.
//
// Thread-safety: all methods may be called concurrently (passes are
// serialised inside: concurrent calls interleave pass by pass).
#pragma once

#include <cstddef>
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

namespace airlock::engine {

class Backend;
class GgufFile;
class Model;

class DecoderEmbedding final : public Embedder {
 public:
  enum class Pooling { kLast, kMean };
  // The longest input: the trained context, at most this (the KV cache of
  // one pass is allocated per pass: see pass_bytes()). Texts are packed
  // into passes of up to 1024 KV slots (a longer text runs alone, in
  // chunks of 1024 tokens); passes take turns with other callers'.
  static constexpr std::size_t kMaxContext = 8192;

  // kInvalidArgument for pooling types other than last and mean (2, CLS,
  // is an encoder's; 4, rank, a reranker's) and for <arch>.attention.causal
  // false (bidirectional decoders); kVerificationFailed for a context with
  // no room for text; or what Model::from_gguf and Tokenizer::from_gguf
  // refuse. Each pass's KV storage is of `kv_type`.
  static Result<std::unique_ptr<DecoderEmbedding>> from_gguf(std::unique_ptr<GgufFile> file,
                                                             std::shared_ptr<Backend> backend,
                                                             KvType kv_type = KvType::kF32);
  ~DecoderEmbedding() override;

  int dim() const override;
  std::size_t max_tokens() const override;
  const Tokenizer& tokenizer() const override { return *tokenizer_; }
  std::string_view kind() const override { return "decoder"; }
  Pooling pooling() const { return pooling_; }
  bool appends_eos() const;
  // The most memory a pass holds besides the weights (its KV storage at
  // the longest input, one chunk's activations), for the logs.
  std::uint64_t pass_bytes() const;

  // Empty (every vector empty) when a pass failed; encode() gives the error.
  std::vector<float> embed(std::string_view text) const override;
  std::vector<std::vector<float>> embed_batch(std::span<const std::string> texts) const override;
  Result<std::vector<std::vector<float>>> encode(std::span<const std::string> texts) const;
  // The model's input for `text`.
  std::vector<std::int32_t> input_ids(std::string_view text) const;

 private:
  DecoderEmbedding() = default;
  int n_special() const;  // BOS and EOS the input gets around its content
  // One pass over seqs (each non-empty, within the context), pooled
  // vectors appended to *out. Caller holds mu_.
  Status pass(std::span<const std::vector<std::int32_t>> seqs, std::vector<std::vector<float>>* out) const;

  std::unique_ptr<Model> model_;
  std::unique_ptr<Tokenizer> tokenizer_;
  KvType kv_type_ = KvType::kF32;
  Pooling pooling_ = Pooling::kLast;
  mutable std::mutex mu_;
};

}  // namespace airlock::engine
