#include "airlock/engine/decoder_embedding.h"

#include <algorithm>
#include <cmath>

#include "airlock/engine/backend.h"
#include "airlock/engine/gguf.h"
#include "airlock/engine/model.h"
#include "airlock/engine/tokenizer.h"
#include "decoder_pass.h"

namespace airlock::engine {

DecoderEmbedding::~DecoderEmbedding() = default;

Result<std::unique_ptr<DecoderEmbedding>> DecoderEmbedding::from_gguf(std::unique_ptr<GgufFile> file,
                                                                      std::shared_ptr<Backend> backend,
                                                                      KvType kv_type) {
  std::unique_ptr<DecoderEmbedding> e(new DecoderEmbedding());
  e->kv_type_ = kv_type;
  const std::string arch(file->get_string("general.architecture").value_or(""));
  if (file->find(arch + ".pooling_type") != nullptr) {
    const std::uint64_t type = file->get_uint(arch + ".pooling_type").value_or(99);
    if (type == 1) e->pooling_ = Pooling::kMean;
    else if (type == 0 || type == 3) e->pooling_ = Pooling::kLast;
    else
      return invalid_argument(arch + ".pooling_type " + std::to_string(type) +
                              " is not a decoder's embedding pooling (1 mean, 3 last)");
  }
  // A bidirectional embedder in a decoder's clothes (gte-Qwen2, LLM2Vec)
  // would run causally here and give other vectors: refused.
  if (file->find(arch + ".attention.causal") != nullptr && !file->get_bool(arch + ".attention.causal").value_or(true))
    return invalid_argument(arch + ".attention.causal is false: bidirectional attention is not supported for " + arch);
  AIRLOCK_ASSIGN_OR_RETURN(e->tokenizer_, Tokenizer::from_gguf(*file));
  AIRLOCK_ASSIGN_OR_RETURN(e->model_, Model::from_gguf(std::move(file), std::move(backend)));
  AIRLOCK_RETURN_IF_ERROR(check_vocab_fits(*e->tokenizer_, e->model_->params().n_vocab));
  if (e->model_->params().n_ctx_train <= e->n_special())
    return verification_failed("gguf: a context of " + std::to_string(e->model_->params().n_ctx_train) +
                               " tokens leaves no room for text");
  return e;
}

int DecoderEmbedding::dim() const { return model_->params().n_embd; }

bool DecoderEmbedding::appends_eos() const { return tokenizer_->add_eos(); }

std::uint64_t DecoderEmbedding::pass_bytes() const {
  return decoder_pass_bytes(*model_, max_tokens() + static_cast<std::size_t>(n_special()), pooling_ == Pooling::kMean,
                            kv_type_);
}

int DecoderEmbedding::n_special() const { return (tokenizer_->add_bos() ? 1 : 0) + (tokenizer_->add_eos() ? 1 : 0); }

std::size_t DecoderEmbedding::max_tokens() const {
  const std::size_t n_ctx = std::min<std::size_t>(static_cast<std::size_t>(model_->params().n_ctx_train), kMaxContext);
  return n_ctx - static_cast<std::size_t>(n_special());  // (from_gguf: positive)
}

std::vector<std::int32_t> DecoderEmbedding::input_ids(std::string_view text) const {
  // Special tokens written in the text stay text.
  std::vector<std::int32_t> content = tokenizer_->encode(text, /*add_special=*/false, /*parse_special=*/false);
  if (content.size() > max_tokens()) content.resize(max_tokens());
  std::vector<std::int32_t> ids;
  ids.reserve(content.size() + 2);
  if (tokenizer_->add_bos()) ids.push_back(tokenizer_->bos());
  ids.insert(ids.end(), content.begin(), content.end());
  if (tokenizer_->add_eos()) ids.push_back(tokenizer_->eos());
  // An empty text with no special tokens still needs one token to read
  // out: the end-of-sequence one when the vocabulary has it.
  if (ids.empty()) ids.push_back(tokenizer_->eos() >= 0 ? tokenizer_->eos() : 0);
  return ids;
}

std::vector<float> DecoderEmbedding::embed(std::string_view text) const {
  const std::string s(text);
  Result<std::vector<std::vector<float>>> r = encode(std::span<const std::string>(&s, 1));
  if (!r.is_ok()) return {};
  return std::move((*r)[0]);
}

std::vector<std::vector<float>> DecoderEmbedding::embed_batch(std::span<const std::string> texts) const {
  Result<std::vector<std::vector<float>>> r = encode(texts);
  if (!r.is_ok()) return std::vector<std::vector<float>>(texts.size());
  return std::move(*r);
}

Result<std::vector<std::vector<float>>> DecoderEmbedding::encode(std::span<const std::string> texts) const {
  std::vector<std::vector<std::int32_t>> seqs;
  seqs.reserve(texts.size());
  for (const std::string& t : texts) seqs.push_back(input_ids(t));
  std::vector<std::vector<float>> out;
  out.reserve(seqs.size());
  // One pass at a time holds the model, so a RAG question waits for a
  // pass, not for a whole large request.
  AIRLOCK_RETURN_IF_ERROR(for_each_decoder_pass(seqs, [&](std::size_t first, std::size_t last) {
    std::lock_guard lock(mu_);
    return pass(std::span<const std::vector<std::int32_t>>(seqs).subspan(first, last - first), &out);
  }));
  return out;
}

Status DecoderEmbedding::pass(std::span<const std::vector<std::int32_t>> seqs,
                              std::vector<std::vector<float>>* out) const {
  const bool mean = pooling_ == Pooling::kMean;
  std::vector<float> hidden;
  AIRLOCK_RETURN_IF_ERROR(decoder_hidden_pass(*model_, seqs, /*all_rows=*/mean, kv_type_, &hidden));
  const std::size_t d = static_cast<std::size_t>(dim());
  std::size_t row = 0;  // the rows come in batch order: each sequence's wanted tokens together
  for (const std::vector<std::int32_t>& s : seqs) {
    const std::size_t rows = mean ? s.size() : 1;
    std::vector<double> acc(d, 0.0);
    for (std::size_t r = 0; r < rows; ++r, ++row)
      for (std::size_t j = 0; j < d; ++j) acc[j] += hidden[row * d + j];
    double norm = 0;
    for (double& x : acc) {
      x /= static_cast<double>(rows);
      norm += x * x;
    }
    std::vector<float> v(d);
    const double inv = norm > 0 ? 1.0 / std::sqrt(norm) : 0.0;
    for (std::size_t j = 0; j < d; ++j) v[j] = static_cast<float>(acc[j] * inv);
    out->push_back(std::move(v));
  }
  return Status::ok();
}

}  // namespace airlock::engine
