// A decoder that reranks by answering "yes" or "no": Qwen3-Reranker as
// llama.cpp's converter writes it (a qwen3 file: llama.cpp scores rank
// pooling this way only there; <arch>.pooling_type 4 (rank),
// cls.output.weight holding the output
// matrix's rows for "yes" and "no" in that order (<arch>.classifier.
// output_labels ["yes", "no"] where the file names them), and the prompt
// in tokenizer.chat_template.rerank with {query} and {document} in it).
//
// A pair is that prompt with the query and the document put in: the
// prompt's own markup (<|im_start|>...) parsed as special tokens, the
// query's and the document's text never (a document cannot close the
// prompt early); no BOS or EOS, as the model card and llama.cpp's server
// tokenize it. A cut never leaves half a character behind.
// The score is the last token's final-norm hidden state times (yes - no):
// its logistic is softmax([no, yes])'s "yes", the model card's relevance.
// A pair longer than the input length (the trained context, at most
// kMaxContext) loses the end of its document first, then of its query.
//
// Thread-safety: all methods may be called concurrently (passes are
// serialised inside).
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
#include "airlock/engine/reranker.h"

namespace airlock::engine {

class Backend;
class GgufFile;
class Model;
class Tokenizer;

class DecoderReranker final : public Reranker {
 public:
  // Pairs are packed into passes of up to 1024 KV slots (a longer pair runs
  // alone, in chunks of 1024 tokens).
  static constexpr std::size_t kMaxContext = 8192;

  // kInvalidArgument for a file that is not such a reranker (not qwen3,
  // another pooling type, no template, labels other than yes/no, causal
  // attention off, no head); kVerificationFailed for a head of the wrong
  // shape or type or a template that leaves no room for text; or what
  // Model and Tokenizer refuse. Each pass's KV storage is of `kv_type`.
  static Result<std::unique_ptr<DecoderReranker>> from_gguf(std::unique_ptr<GgufFile> file,
                                                            std::shared_ptr<Backend> backend,
                                                            KvType kv_type = KvType::kF32);
  ~DecoderReranker() override;

  std::vector<std::int32_t> query_ids(std::string_view query) const override;
  RerankPair pair(std::span<const std::int32_t> query_ids, std::string_view document) const override;
  RerankPair pair(std::string_view query, std::string_view document) const;
  Result<std::vector<float>> score(std::span<const RerankPair> pairs) const override;
  int context_length() const override;
  int n_layer() const override;
  std::string_view reranker_kind() const override { return "decoder"; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  // The most memory a pass holds besides the weights (its KV storage for
  // the longest pair, one chunk's activations), for the logs.
  std::uint64_t pass_bytes() const;

 private:
  DecoderReranker() = default;
  std::vector<std::int32_t> render(std::string_view query, std::string_view document) const;
  std::string text_of(std::span<const std::int32_t> ids) const;
  // One pass; logits appended to *out. Caller holds mu_.
  Status pass(std::span<const std::vector<std::int32_t>> seqs, std::vector<float>* out) const;

  std::unique_ptr<Model> model_;
  std::unique_ptr<Tokenizer> tokenizer_;
  KvType kv_type_ = KvType::kF32;
  std::string before_, between_, after_;  // the template around its two fields
  bool document_first_ = false;           // {document} comes before {query}
  std::vector<float> yes_minus_no_;       // n_embd
  mutable std::mutex mu_;
};

}  // namespace airlock::engine
