#include "airlock/engine/decoder_reranker.h"

#include <algorithm>
#include <utility>

#include "airlock/engine/backend.h"
#include "airlock/engine/ggml_types.h"
#include "airlock/engine/gguf.h"
#include "airlock/engine/model.h"
#include "airlock/engine/tokenizer.h"
#include "decoder_pass.h"

namespace airlock::engine {

DecoderReranker::~DecoderReranker() = default;

Result<std::unique_ptr<DecoderReranker>> DecoderReranker::from_gguf(std::unique_ptr<GgufFile> file,
                                                                    std::shared_ptr<Backend> backend,
                                                                    KvType kv_type) {
  std::unique_ptr<DecoderReranker> r(new DecoderReranker());
  r->kv_type_ = kv_type;
  const std::string arch(file->get_string("general.architecture").value_or(""));
  // Scored as llama.cpp scores rank pooling on qwen3 (the last token's
  // normed state through the head). Others differ: gemma2 soft-caps and
  // granite scales its logits, and llama.cpp reads their first token.
  if (arch != "qwen3")
    return invalid_argument("a decoder reranker must be a qwen3 file (Qwen3-Reranker), not " + arch);
  if (file->get_uint(arch + ".pooling_type").value_or(0) != 4)
    return invalid_argument(arch + ".pooling_type is not 4 (rank): not a reranker");
  if (file->find(arch + ".attention.causal") != nullptr && !file->get_bool(arch + ".attention.causal").value_or(true))
    return invalid_argument(arch + ".attention.causal is false: bidirectional attention is not supported for " + arch);
  if (file->find(arch + ".classifier.output_labels") != nullptr) {
    auto labels = file->get_string_array(arch + ".classifier.output_labels");
    if (!labels.is_ok() || labels->size() != 2 || (*labels)[0] != "yes" || (*labels)[1] != "no")
      return invalid_argument(arch +
                              ".classifier.output_labels must be [\"yes\", \"no\"]: other heads are not supported");
  }
  const std::string_view tmpl = file->get_string("tokenizer.chat_template.rerank").value_or("");
  const std::size_t q = tmpl.find("{query}"), d = tmpl.find("{document}");
  if (q == std::string_view::npos || d == std::string_view::npos ||
      tmpl.find("{query}", q + 1) != std::string_view::npos || tmpl.find("{document}", d + 1) != std::string_view::npos)
    return invalid_argument(
        "gguf: tokenizer.chat_template.rerank is missing or does not hold {query} and {document} once each");
  r->document_first_ = d < q;
  const std::size_t first = std::min(q, d), second = std::max(q, d);
  const std::size_t first_len = r->document_first_ ? 10 : 7, second_len = r->document_first_ ? 7 : 10;
  if (first + first_len > second) return invalid_argument("gguf: tokenizer.chat_template.rerank's fields overlap");
  r->before_ = tmpl.substr(0, first);
  r->between_ = tmpl.substr(first + first_len, second - first - first_len);
  r->after_ = tmpl.substr(second + second_len);

  const GgufTensor* head = file->tensor("cls.output.weight");
  AIRLOCK_ASSIGN_OR_RETURN(r->tokenizer_, Tokenizer::from_gguf(*file));
  AIRLOCK_ASSIGN_OR_RETURN(r->model_, Model::from_gguf_with_rank_head(std::move(file), std::move(backend)));
  const int n_embd = r->model_->params().n_embd;
  if (head == nullptr) return invalid_argument("gguf: a reranker needs its head, tensor 'cls.output.weight'");
  if (head->n_dims != 2 || head->ne[0] != n_embd || head->ne[1] != 2)
    return verification_failed("gguf: tensor 'cls.output.weight' must be [" + std::to_string(n_embd) +
                               ", 2] (the rows for yes and no)");
  const TypeTraits& tt = traits(head->type);
  if (!tt.supported || n_embd % tt.block_elems != 0)
    return verification_failed("gguf: tensor 'cls.output.weight' is of type " + std::string(tt.name) +
                               ", which rows of " + std::to_string(n_embd) + " cannot hold");
  const std::size_t row = row_bytes(head->type, n_embd);
  if (row == 0 || head->data.size() < 2 * row) return verification_failed("gguf: tensor 'cls.output.weight' is short");
  std::vector<float> yes(static_cast<std::size_t>(n_embd)), no(static_cast<std::size_t>(n_embd));
  dequantize_row(head->type, head->data.data(), yes.data(), n_embd);
  dequantize_row(head->type, head->data.data() + row, no.data(), n_embd);
  r->yes_minus_no_.resize(static_cast<std::size_t>(n_embd));
  for (std::size_t i = 0; i < yes.size(); ++i) r->yes_minus_no_[i] = yes[i] - no[i];
  AIRLOCK_RETURN_IF_ERROR(check_vocab_fits(*r->tokenizer_, r->model_->params().n_vocab));
  // The prompt alone must leave room for some of the pair's text.
  if (r->render("", "").size() + 16 > static_cast<std::size_t>(r->context_length()))
    return verification_failed("gguf: the rerank prompt leaves no room for text in a context of " +
                               std::to_string(r->context_length()) + " tokens");
  return r;
}

int DecoderReranker::context_length() const {
  return static_cast<int>(std::min<std::size_t>(static_cast<std::size_t>(model_->params().n_ctx_train), kMaxContext));
}

int DecoderReranker::n_layer() const { return model_->params().n_layer; }

std::uint64_t DecoderReranker::pass_bytes() const {
  return decoder_pass_bytes(*model_, static_cast<std::size_t>(context_length()), /*all_rows=*/false, kv_type_);
}

std::vector<std::int32_t> DecoderReranker::query_ids(std::string_view query) const {
  return tokenizer_->encode(query, /*add_special=*/false, /*parse_special=*/false);
}

std::string DecoderReranker::text_of(std::span<const std::int32_t> ids) const {
  std::string s;
  for (std::int32_t id : ids) s += tokenizer_->token_bytes(id, /*render_special=*/false);
  if (tokenizer_->strips_leading_space() && !s.empty() && s[0] == ' ') s.erase(0, 1);
  // A cut can end inside a character: its lead bytes would read as other
  // characters; they go.
  std::size_t lead = s.size();
  while (lead > 0 && lead + 4 > s.size() && (static_cast<unsigned char>(s[lead - 1]) & 0xC0) == 0x80) --lead;
  if (lead > 0) {
    const unsigned char c = static_cast<unsigned char>(s[lead - 1]);
    const std::size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    if (s.size() - (lead - 1) < need) s.resize(lead - 1);
  }
  return s;
}

std::vector<std::int32_t> DecoderReranker::render(std::string_view query, std::string_view document) const {
  const std::string_view a = document_first_ ? document : query, b = document_first_ ? query : document;
  std::string text = before_;
  const std::pair<std::size_t, std::size_t> first{text.size(), text.size() + a.size()};
  text += a;
  text += between_;
  const std::pair<std::size_t, std::size_t> second{text.size(), text.size() + b.size()};
  text += b;
  text += after_;
  // The prompt's markup is parsed; the query's and the document's text is not.
  const std::pair<std::size_t, std::size_t> literal[2] = {first, second};
  // No BOS or EOS: the model card tokenizes without special tokens, as
  // llama.cpp's server does the rerank prompt.
  return tokenizer_->encode(text, /*add_special=*/false, std::span<const std::pair<std::size_t, std::size_t>>(literal));
}

RerankPair DecoderReranker::pair(std::string_view query, std::string_view document) const {
  const std::vector<std::int32_t> q = query_ids(query);
  return pair(q, document);
}

RerankPair DecoderReranker::pair(std::span<const std::int32_t> query, std::string_view document) const {
  std::vector<std::int32_t> q(query.begin(), query.end());
  std::string q_text = text_of(q), d_text(document);
  RerankPair p;
  p.ids = render(q_text, d_text);
  const std::size_t limit = static_cast<std::size_t>(context_length());
  if (p.ids.size() > limit) {
    p.cut = true;
    // The document's end goes first, then the query's; each round drops
    // at least one token, and the tokens of what is left are recounted
    // in place (a cut can merge differently with the prompt around it).
    std::vector<std::int32_t> d = tokenizer_->encode(document, /*add_special=*/false, /*parse_special=*/false);
    for (std::vector<std::int32_t>* part : {&d, &q}) {
      while (p.ids.size() > limit && !part->empty()) {
        const std::size_t over = p.ids.size() - limit;
        part->resize(part->size() > over ? part->size() - over : 0);
        (part == &d ? d_text : q_text) = text_of(*part);
        p.ids = render(q_text, d_text);
      }
    }
  }
  p.second = p.ids.size();  // no token types
  return p;
}

Result<std::vector<float>> DecoderReranker::score(std::span<const RerankPair> pairs) const {
  std::vector<std::vector<std::int32_t>> seqs;
  seqs.reserve(pairs.size());
  const int n_vocab = model_->params().n_vocab;
  for (std::size_t i = 0; i < pairs.size(); ++i) {
    const std::vector<std::int32_t>& ids = pairs[i].ids;
    if (ids.empty() || ids.size() > static_cast<std::size_t>(context_length()))
      return invalid_argument("pair " + std::to_string(i) + " has " + std::to_string(ids.size()) + " tokens (1.." +
                              std::to_string(context_length()) + ")");
    for (std::int32_t id : ids)
      if (id < 0 || id >= n_vocab)
        return invalid_argument("token id " + std::to_string(id) + " is outside the vocabulary");
    seqs.push_back(ids);
  }
  std::vector<float> out;
  out.reserve(seqs.size());
  AIRLOCK_RETURN_IF_ERROR(for_each_decoder_pass(seqs, [&](std::size_t first, std::size_t last) {
    std::lock_guard lock(mu_);
    return pass(std::span<const std::vector<std::int32_t>>(seqs).subspan(first, last - first), &out);
  }));
  return out;
}

Status DecoderReranker::pass(std::span<const std::vector<std::int32_t>> seqs, std::vector<float>* out) const {
  std::vector<float> hidden;
  AIRLOCK_RETURN_IF_ERROR(decoder_hidden_pass(*model_, seqs, /*all_rows=*/false, kv_type_, &hidden));
  const std::size_t d = yes_minus_no_.size();
  for (std::size_t s = 0; s < seqs.size(); ++s) {
    double logit = 0;
    for (std::size_t j = 0; j < d; ++j) logit += static_cast<double>(yes_minus_no_[j]) * hidden[s * d + j];
    out->push_back(static_cast<float>(logit));
  }
  return Status::ok();
}

}  // namespace airlock::engine
