#include "airlock/engine/static_embedding.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>

#include "airlock/common/json.h"
#include "airlock/common/json_depth.h"
#include "hf_tokenizer_json.h"

namespace airlock::engine {
namespace {

// A regular file of at most max_bytes, whole. Its size is checked before
// reading, and no more than max_bytes + 1 bytes are ever read; a FIFO or
// device is refused without waiting on it (O_NONBLOCK).
Result<std::string> slurp(const std::string& path, std::size_t max_bytes) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return not_found(path + ": cannot read");
  struct stat st {};
  std::string out;
  Status s;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    s = verification_failed(path + ": not a regular file");
  } else if (static_cast<std::uint64_t>(st.st_size) > max_bytes) {
    s = verification_failed(path + ": larger than " + std::to_string(max_bytes) + " bytes");
  } else {
    char buf[65536];
    for (ssize_t n; s.is_ok() && (n = ::read(fd, buf, sizeof buf)) != 0;) {
      if (n < 0) {
        if (errno != EINTR) s = io_error(path + ": read", errno);
        continue;
      }
      out.append(buf, static_cast<std::size_t>(n));
      if (out.size() > max_bytes) s = verification_failed(path + ": larger than " + std::to_string(max_bytes) + " bytes");
    }
  }
  ::close(fd);
  AIRLOCK_RETURN_IF_ERROR(s);
  return out;
}

}  // namespace

Result<nlohmann::json> parse_hf_tokenizer_json(std::string_view text) {
  nlohmann::json j = nlohmann::json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return verification_failed("tokenizer.json: not a JSON object");
  if (json_deeper_than(j)) return verification_failed("tokenizer.json: nested deeper than 64 levels");
  if (!j.contains("model") || !j["model"].is_object() || !j["model"].contains("type") || !j["model"]["type"].is_string())
    return verification_failed("tokenizer.json: no model.type");
  return j;
}

Result<TokenizerSpec> wordpiece_spec_from_hf_json(std::string_view text) {
  AIRLOCK_ASSIGN_OR_RETURN(nlohmann::json j, parse_hf_tokenizer_json(text));
  return catching_json("tokenizer.json", [&] { return wordpiece_spec(j); });
}

Result<TokenizerSpec> wordpiece_spec(const nlohmann::json& j) {
  const nlohmann::json& m = j["model"];
  if (m["type"] != "WordPiece")
    return invalid_argument("tokenizer.json: model type '" + m["type"].get<std::string>() +
                            "' is not supported (WordPiece only so far)");
  const nlohmann::json& norm = j.contains("normalizer") ? j["normalizer"] : nlohmann::json();
  if (!norm.is_object() || norm.value("type", "") != "BertNormalizer" || !norm.value("lowercase", false) ||
      (norm.contains("strip_accents") && norm["strip_accents"].is_boolean() && !norm["strip_accents"].get<bool>()))
    return invalid_argument("tokenizer.json: only the lower-casing, accent-stripping BertNormalizer is supported");
  if (!m.contains("vocab") || !m["vocab"].is_object() || m["vocab"].empty() || m["vocab"].size() > (1u << 22))
    return verification_failed("tokenizer.json: model.vocab missing or implausible");
  const std::string prefix = m.value("continuing_subword_prefix", std::string("##"));
  TokenizerSpec s;
  s.model = "bert";
  s.tokens.assign(m["vocab"].size(), std::string());
  s.types.assign(m["vocab"].size(), TokenType::kNormal);
  std::vector<char> seen(m["vocab"].size(), 0);
  for (auto it = m["vocab"].begin(); it != m["vocab"].end(); ++it) {
    if (!it.value().is_number_unsigned() || it.value().get<std::uint64_t>() >= s.tokens.size())
      return verification_failed("tokenizer.json: vocabulary ids must be 0..n-1");
    const std::size_t id = it.value().get<std::size_t>();
    if (seen[id]) return verification_failed("tokenizer.json: vocabulary id " + std::to_string(id) + " used twice");
    seen[id] = 1;
    const std::string& tok = it.key();
    s.tokens[id] = !prefix.empty() && tok.rfind(prefix, 0) == 0 ? tok.substr(prefix.size()) : "\xE2\x96\x81" + tok;
  }
  if (j.contains("added_tokens") && j["added_tokens"].is_array())
    for (const nlohmann::json& a : j["added_tokens"]) {
      if (!a.is_object() || !a.contains("id") || !a["id"].is_number_unsigned() || !a.contains("content") ||
          !a["content"].is_string())
        return verification_failed("tokenizer.json: malformed added_tokens entry");
      const std::size_t id = a["id"].get<std::size_t>();
      if (id >= s.tokens.size()) return verification_failed("tokenizer.json: added token id out of range");
      s.tokens[id] = a["content"].get<std::string>();
      if (a.value("special", false)) s.types[id] = TokenType::kControl;
    }
  if (m.contains("unk_token") && m["unk_token"].is_string()) {
    auto u = m["vocab"].find(m["unk_token"].get<std::string>());
    if (u != m["vocab"].end()) s.unk = u.value().get<std::int32_t>();
  }
  // At most 1,000: the longest-match search costs a word's length times the
  // longest token, per word (Hugging Face's default and every model seen: 100).
  s.max_word_chars = std::min<std::size_t>(m.value("max_input_chars_per_word", std::size_t{100}), 1000);
  if (s.max_word_chars == 0) s.max_word_chars = 100;
  return s;
}

Result<TokenizerSpec> spec_from_hf_json(std::string_view text) {
  // Parsed once (tokenizer.json files are up to a few MB) and dispatched.
  AIRLOCK_ASSIGN_OR_RETURN(nlohmann::json j, parse_hf_tokenizer_json(text));
  const std::string type = j["model"]["type"].get<std::string>();
  if (type == "WordPiece") return catching_json("tokenizer.json", [&] { return wordpiece_spec(j); });
  if (type == "Unigram") return catching_json("tokenizer.json", [&] { return unigram_spec(j); });
  return invalid_argument("tokenizer.json: model type '" + type + "' is not supported (WordPiece, Unigram)");
}

Result<std::unique_ptr<StaticEmbedding>> StaticEmbedding::load(const std::string& dir) {
  return catching_json(dir, [&] { return load_checked(dir); });
}

Result<std::unique_ptr<StaticEmbedding>> StaticEmbedding::load_checked(const std::string& dir) {
  std::unique_ptr<StaticEmbedding> e(new StaticEmbedding());
  AIRLOCK_ASSIGN_OR_RETURN(std::string config_text, slurp(dir + "/config.json", 1 << 20));
  const nlohmann::json config = nlohmann::json::parse(config_text, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded() || !config.is_object() || json_deeper_than(config))
    return verification_failed(dir + "/config.json: not a JSON object nested at most 64 levels");
  e->normalize_ = config.value("normalize", false);
  AIRLOCK_ASSIGN_OR_RETURN(std::string tok_text, slurp(dir + "/tokenizer.json", 64u << 20));
  Result<TokenizerSpec> spec = spec_from_hf_json(tok_text);
  if (!spec.is_ok()) return spec.status().with_context(dir);
  // Median token length over the vocabulary (as written in tokenizer.json:
  // WordPiece keys, Unigram [piece, score] pairs; both checked by now), for
  // the character cut the reference applies before tokenizing.
  {
    const nlohmann::json j = nlohmann::json::parse(tok_text, nullptr, false);
    const nlohmann::json& vocab = j["model"]["vocab"];
    std::vector<std::size_t> lens;
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
      const std::string& piece = vocab.is_object() ? it.key() : (*it)[0].get_ref<const std::string&>();
      std::size_t chars = 0;
      for (char c : piece) chars += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
      lens.push_back(chars);
    }
    std::nth_element(lens.begin(), lens.begin() + static_cast<std::ptrdiff_t>(lens.size() / 2), lens.end());
    e->max_chars_ = e->max_tokens_ * lens[lens.size() / 2];
  }
  // The reference drops the unknown token only when tokenizer.json names an
  // unk_token (WordPiece); a Unigram model names its unk_id only.
  e->unk_ = spec->model == "bert" ? spec->unk : -1;
  const std::size_t n_vocab = spec->tokens.size();
  AIRLOCK_ASSIGN_OR_RETURN(e->tokenizer_, Tokenizer::from_spec(std::move(*spec)));
  AIRLOCK_ASSIGN_OR_RETURN(e->file_, SafetensorsFile::open(dir + "/model.safetensors"));
  const StTensor* emb = e->file_->find("embeddings");
  // (rows are named by int32 indices)
  if (emb == nullptr || emb->shape.size() != 2 || emb->shape[0] < 1 || emb->shape[0] > INT32_MAX || emb->shape[1] < 1 ||
      emb->shape[1] > 65536)
    return verification_failed(dir + "/model.safetensors: needs a 2-D 'embeddings' tensor");
  const std::int64_t rows = emb->shape[0];
  e->dim_ = static_cast<int>(emb->shape[1]);
  e->rows_.resize(static_cast<std::size_t>(rows * e->dim_));
  for (std::int64_t i = 0; i < rows * e->dim_; ++i) e->rows_[static_cast<std::size_t>(i)] = static_cast<float>(SafetensorsFile::element(*emb, i));
  if (const StTensor* map = e->file_->find("mapping")) {
    if (map->shape.size() != 1 || static_cast<std::size_t>(map->shape[0]) != n_vocab)
      return verification_failed(dir + "/model.safetensors: 'mapping' must have one entry per token");
    for (std::int64_t i = 0; i < map->shape[0]; ++i) {
      const double r = SafetensorsFile::element(*map, i);
      if (!(r >= 0 && r < static_cast<double>(rows))) return verification_failed(dir + "/model.safetensors: 'mapping' names a missing row");
      e->mapping_.push_back(static_cast<std::int32_t>(r));
    }
  } else {
    if (static_cast<std::size_t>(rows) != n_vocab)
      return verification_failed(dir + "/model.safetensors: " + std::to_string(rows) + " embedding rows for " +
                                 std::to_string(n_vocab) + " tokens");
    for (std::size_t i = 0; i < n_vocab; ++i) e->mapping_.push_back(static_cast<std::int32_t>(i));
  }
  if (const StTensor* w = e->file_->find("weights")) {
    if (w->shape.size() != 1 || static_cast<std::size_t>(w->shape[0]) != n_vocab)
      return verification_failed(dir + "/model.safetensors: 'weights' must have one entry per token");
    for (std::int64_t i = 0; i < w->shape[0]; ++i) {
      // f32, as the reference multiplies them.
      e->weights_.push_back(static_cast<float>(SafetensorsFile::element(*w, i)));
      if (!std::isfinite(e->weights_.back()))
        return verification_failed(dir + "/model.safetensors: 'weights' " + std::to_string(i) + " is not a finite f32");
    }
  }
  return e;
}

std::vector<float> StaticEmbedding::embed(std::string_view text) const {
  std::string cut(text);
  if (max_chars_ > 0) {  // the first max_chars_ characters (UTF-8 aware)
    std::size_t chars = 0, i = 0;
    for (; i < cut.size(); ++i) {
      if ((static_cast<unsigned char>(cut[i]) & 0xC0) != 0x80 && chars++ == max_chars_) break;
    }
    cut.resize(i);
  }
  std::vector<std::int32_t> ids = tokenizer_->encode(cut, /*add_special=*/false, /*parse_special=*/false);
  std::erase(ids, unk_);
  if (ids.size() > max_tokens_) ids.resize(max_tokens_);
  std::vector<double> acc(static_cast<std::size_t>(dim_), 0.0);
  for (std::int32_t id : ids) {
    const float w = weights_.empty() ? 1.0f : weights_[static_cast<std::size_t>(id)];
    const float* row = rows_.data() + static_cast<std::size_t>(mapping_[static_cast<std::size_t>(id)]) * static_cast<std::size_t>(dim_);
    for (int k = 0; k < dim_; ++k) acc[static_cast<std::size_t>(k)] += static_cast<double>(w) * row[k];
  }
  std::vector<float> out(static_cast<std::size_t>(dim_), 0.0f);
  if (ids.empty()) return out;
  double norm = 0;
  for (double& v : acc) {
    v /= static_cast<double>(ids.size());
    norm += v * v;
  }
  norm = std::sqrt(norm);
  for (int k = 0; k < dim_; ++k)
    out[static_cast<std::size_t>(k)] = static_cast<float>(normalize_ && norm > 0 ? acc[static_cast<std::size_t>(k)] / norm
                                                                                  : acc[static_cast<std::size_t>(k)]);
  return out;
}

}  // namespace airlock::engine
