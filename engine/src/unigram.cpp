#include "unigram.h"

#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <unordered_map>

#include "airlock/common/json.h"

#include "airlock/engine/static_embedding.h"
#include "hf_tokenizer_json.h"
#include "airlock/common/utf8.h"

namespace airlock::engine {
namespace {

constexpr double kUnkPenalty = 10.0;          // as sentencepiece and Hugging Face
constexpr std::size_t kMaxStepChars = 256;    // Replace/Prepend text, in characters
constexpr std::size_t kMaxSteps = 1024;       // normalizer steps, Sequences flattened
constexpr int kMaxSequenceDepth = 8;

std::u32string to_u32(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  for (std::size_t i = 0, len = 0; i < s.size(); i += len) out.push_back(next_code_point(s, i, &len));
  return out;
}

std::string to_utf8(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) append_utf8(out, c);
  return out;
}

// Rust's char::is_whitespace (the White_Space property), which the Hugging
// Face normalizers and Oniguruma's \s use.
bool is_white(char32_t c) { return u_isUWhiteSpace(static_cast<UChar32>(c)) != 0; }

// Rust's char::is_other: general category C* (Cc, Cf, Cs, Co, Cn).
bool is_other(char32_t c) {
  switch (u_charType(static_cast<UChar32>(c))) {
    case U_CONTROL_CHAR: case U_FORMAT_CHAR: case U_SURROGATE: case U_PRIVATE_USE_CHAR: case U_UNASSIGNED: return true;
    default: return false;
  }
}

bool is_nonspacing_mark(char32_t c) { return u_charType(static_cast<UChar32>(c)) == U_NON_SPACING_MARK; }

// Hugging Face's ranges (0x2B920, not BERT's 0x2B820, is theirs).
bool is_chinese(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
         (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

// Rust's char::to_lowercase: the full per-character mapping without
// context; U+0130 is the only character whose lower case is two.
void append_lower(std::u32string& out, char32_t c) {
  if (c == 0x130) {
    out += U"i\u0307";
    return;
  }
  out.push_back(static_cast<char32_t>(u_tolower(static_cast<UChar32>(c))));
}

std::u32string unicode_normalize(const std::u32string& s, NormalizerStep::Kind kind) {
  UErrorCode err = U_ZERO_ERROR;
  const icu::Normalizer2* n = kind == NormalizerStep::Kind::kNfc    ? icu::Normalizer2::getNFCInstance(err)
                              : kind == NormalizerStep::Kind::kNfd  ? icu::Normalizer2::getNFDInstance(err)
                              : kind == NormalizerStep::Kind::kNfkc ? icu::Normalizer2::getNFKCInstance(err)
                                                                    : icu::Normalizer2::getNFKDInstance(err);
  if (U_FAILURE(err) || n == nullptr) return s;
  const icu::UnicodeString src = icu::UnicodeString::fromUTF32(reinterpret_cast<const UChar32*>(s.data()),
                                                               static_cast<std::int32_t>(s.size()));
  const icu::UnicodeString dst = n->normalize(src, err);
  if (U_FAILURE(err)) return s;
  std::u32string out(static_cast<std::size_t>(dst.countChar32()), U'\0');
  dst.toUTF32(reinterpret_cast<UChar32*>(out.data()), static_cast<std::int32_t>(out.size()), err);
  return U_FAILURE(err) ? s : out;
}

}  // namespace

// ---------------------------------------------------------------- building

Result<std::shared_ptr<const UnigramModel>> UnigramModel::build(const TokenizerSpec& s) {
  const std::size_t n = s.tokens.size();
  if (s.piece_scores.size() != n)
    return verification_failed("tokenizer: Unigram needs one score per piece (" + std::to_string(s.piece_scores.size()) +
                               " scores, " + std::to_string(n) + " pieces)");
  std::shared_ptr<UnigramModel> m(new UnigramModel());
  m->spm_ = s.model == "t5";
  m->scores_ = s.piece_scores;
  // sentencepiece: only normal, user-defined (score 0) and unused pieces are
  // candidates, and the unknown score comes from the normal ones.
  auto type = [&](std::size_t i) { return i < s.types.size() ? s.types[i] : TokenType::kNormal; };
  auto candidate = [&](std::size_t i) {
    return !m->spm_ || type(i) == TokenType::kNormal || type(i) == TokenType::kUserDefined || type(i) == TokenType::kUnused;
  };
  double min_score = 0;
  bool have_min = false;
  for (std::size_t i = 0; i < n; ++i) {
    if (!std::isfinite(s.piece_scores[i]))
      return verification_failed("tokenizer: piece " + std::to_string(i) + " has a score that is not a finite number");
    if (m->spm_ && type(i) == TokenType::kUserDefined) m->scores_[i] = 0;
    if (m->spm_ && type(i) != TokenType::kNormal) continue;
    if (!have_min || s.piece_scores[i] < min_score) min_score = s.piece_scores[i];
    have_min = true;
  }
  m->unk_score_ = min_score - kUnkPenalty;
  m->unk_ = s.unk;
  m->byte_fallback_ = s.byte_fallback && !m->spm_;
  // The trie: built with a hash map, then kept as sorted arrays (12 bytes an edge).
  std::unordered_map<std::uint64_t, std::int32_t> edges;
  m->node_piece_.push_back(-1);
  for (std::size_t id = 0; id < n; ++id) {
    if (!candidate(id) || s.tokens[id].size() > kMaxPieceBytes) continue;
    const std::string& piece = s.tokens[id];
    if (piece.empty()) return verification_failed("tokenizer: piece " + std::to_string(id) + " is empty");
    if (!valid_utf8(piece)) return verification_failed("tokenizer: piece " + std::to_string(id) + " is not valid UTF-8");
    std::int32_t node = 0;
    for (char c : piece) {
      const std::uint64_t key = (static_cast<std::uint64_t>(node) << 8) | static_cast<unsigned char>(c);
      auto [it, added] = edges.emplace(key, static_cast<std::int32_t>(m->node_piece_.size()));
      if (added) m->node_piece_.push_back(-1);
      node = it->second;
    }
    if (m->node_piece_[static_cast<std::size_t>(node)] >= 0 && !m->spm_)
      return verification_failed("tokenizer: piece " + std::to_string(id) + " repeats piece " +
                                 std::to_string(m->node_piece_[static_cast<std::size_t>(node)]));
    m->node_piece_[static_cast<std::size_t>(node)] = static_cast<std::int32_t>(id);
  }
  std::vector<std::pair<std::uint64_t, std::int32_t>> sorted(edges.begin(), edges.end());
  edges.clear();
  std::sort(sorted.begin(), sorted.end());
  m->edge_key_.reserve(sorted.size());
  m->edge_child_.reserve(sorted.size());
  for (const auto& [k, c] : sorted) {
    m->edge_key_.push_back(k);
    m->edge_child_.push_back(c);
  }
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    m->byte_ids_[b] = m->find(name);
  }
  if (s.normalizer.size() > kMaxSteps) return verification_failed("tokenizer: more than 1024 normalizer steps");
  m->normalizer_ = s.normalizer;
  for (const NormalizerStep& step : s.normalizer) {
    if (step.kind == NormalizerStep::Kind::kReplace && step.pattern.empty())
      return verification_failed("tokenizer: a Replace normalizer with an empty pattern");
    m->patterns_.push_back(to_u32(step.pattern));
    m->contents_.push_back(to_u32(step.content));
    if (m->patterns_.back().size() > kMaxStepChars || m->contents_.back().size() > kMaxStepChars)
      return verification_failed("tokenizer: a normalizer pattern or content longer than 256 characters");
  }
  m->metaspace_ = s.metaspace;
  if (s.metaspace) {
    const std::u32string r = to_u32(s.metaspace_replacement);
    if (r.size() != 1 || !valid_utf8(s.metaspace_replacement))
      return verification_failed("tokenizer: the Metaspace replacement must be exactly one character");
    m->replacement_ = r[0];
  }
  m->prepend_ = s.prepend_scheme;
  m->split_ = s.metaspace_split;
  if (m->spm_) {
    m->dummy_prefix_ = s.add_space_prefix;
    m->remove_extra_spaces_ = s.remove_extra_whitespaces;
    // <trie size: u32 little-endian><trie: u32 units><replacements>, as
    // sentencepiece's DecodePrecompiledCharsMap reads it.
    const std::string& blob = s.precompiled_charsmap;
    if (!blob.empty()) {
      std::uint32_t trie_bytes = 0;
      if (blob.size() > 4)
        for (int b = 3; b >= 0; --b) trie_bytes = (trie_bytes << 8) | static_cast<unsigned char>(blob[static_cast<std::size_t>(b)]);
      if (blob.size() <= 4 || trie_bytes >= blob.size() - 4 || trie_bytes % 4 != 0 || trie_bytes == 0)
        return verification_failed("tokenizer: precompiled_charsmap of " + std::to_string(blob.size()) +
                                   " bytes has a malformed header (trie of " + std::to_string(trie_bytes) + " bytes)");
      m->charsmap_units_.resize(trie_bytes / 4);
      for (std::size_t u = 0; u < m->charsmap_units_.size(); ++u) {
        std::uint32_t v = 0;
        for (int b = 3; b >= 0; --b) v = (v << 8) | static_cast<unsigned char>(blob[4 + 4 * u + static_cast<std::size_t>(b)]);
        m->charsmap_units_[u] = v;
      }
      m->charsmap_pool_ = blob.substr(4 + trie_bytes);
      std::size_t run = 0;
      for (char c : m->charsmap_pool_)
        if ((run = c == '\0' ? 0 : run + 1) > kMaxReplacement)
          return verification_failed("tokenizer: precompiled_charsmap has a replacement longer than " +
                                     std::to_string(kMaxReplacement) + " bytes");
    }
  }
  return std::shared_ptr<const UnigramModel>(std::move(m));
}

std::int32_t UnigramModel::child(std::int32_t node, unsigned char byte) const {
  const std::uint64_t key = (static_cast<std::uint64_t>(node) << 8) | byte;
  auto it = std::lower_bound(edge_key_.begin(), edge_key_.end(), key);
  if (it == edge_key_.end() || *it != key) return -1;
  return edge_child_[static_cast<std::size_t>(it - edge_key_.begin())];
}

std::int32_t UnigramModel::find(std::string_view piece) const {
  std::int32_t node = 0;
  for (char c : piece)
    if ((node = child(node, static_cast<unsigned char>(c))) < 0) return -1;
  return node_piece_[static_cast<std::size_t>(node)];
}

// ---------------------------------------------------------------- normalizer

std::u32string UnigramModel::normalize32(std::string_view text) const {
  using Kind = NormalizerStep::Kind;
  std::u32string s = to_u32(text);
  const std::size_t cap = 8 * s.size() + 4096;
  std::u32string t;
  for (std::size_t k = 0; k < normalizer_.size(); ++k) {
    const NormalizerStep& step = normalizer_[k];
    t.clear();
    switch (step.kind) {
      case Kind::kBert: {
        for (char32_t c : s) {
          if (step.clean_text) {
            if (c == 0 || c == 0xFFFD || (c != '\t' && c != '\n' && c != '\r' && is_other(c))) continue;
            if (c == '\t' || c == '\n' || c == '\r' || is_white(c)) c = ' ';
          }
          if (step.handle_chinese_chars && is_chinese(c)) {
            t.push_back(' ');
            t.push_back(c);
            t.push_back(' ');
          } else {
            t.push_back(c);
          }
        }
        if (step.strip_accents) {
          s = unicode_normalize(t, Kind::kNfd);
          t.clear();
          for (char32_t c : s)
            if (!is_nonspacing_mark(c)) t.push_back(c);
        }
        if (step.lowercase) {
          s.swap(t);
          t.clear();
          for (char32_t c : s) append_lower(t, c);
        }
        break;
      }
      case Kind::kReplace: {
        const std::u32string& p = patterns_[k];
        std::size_t from = 0;
        for (std::size_t at; (at = s.find(p, from)) != std::u32string::npos; from = at + p.size()) {
          t.append(s, from, at - from);
          t += contents_[k];
          if (t.size() > cap) break;
        }
        if (from < s.size() && t.size() <= cap) t.append(s, from);
        break;
      }
      case Kind::kCollapseSpaces:
        for (std::size_t i = 0; i < s.size();) {
          if (!is_white(s[i])) {
            t.push_back(s[i++]);
            continue;
          }
          while (i < s.size() && is_white(s[i])) ++i;
          t += contents_[k];
          if (t.size() > cap) break;  // (each run may become 256 characters)
        }
        break;
      case Kind::kStrip: {
        std::size_t b = 0, e = s.size();
        if (step.strip_left)
          while (b < e && is_white(s[b])) ++b;
        if (step.strip_right)
          while (e > b && is_white(s[e - 1])) --e;
        t.assign(s, b, e - b);
        break;
      }
      case Kind::kLowercase:
        for (char32_t c : s) append_lower(t, c);
        break;
      case Kind::kStripAccents:
        for (char32_t c : s)
          if (!is_nonspacing_mark(c)) t.push_back(c);
        break;
      case Kind::kNfc: case Kind::kNfd: case Kind::kNfkc: case Kind::kNfkd:
        t = unicode_normalize(s, step.kind);
        break;
      case Kind::kPrepend:
        if (!s.empty()) t = contents_[k];
        t += s;
        break;
    }
    if (t.size() > cap) t.resize(cap);
    s.swap(t);
  }
  return s;
}

std::string UnigramModel::normalize(std::string_view text) const {
  return spm_ ? normalize_spm(text) : to_utf8(normalize32(text));
}

std::pair<std::string_view, std::size_t> UnigramModel::charsmap_rule(std::string_view text) const {
  // darts-clone units: bits 10..30 the offset (shifted 8 more when bit 9 is
  // set), bit 8 "has a leaf", bits 0..7 and 31 the label; a leaf's value is
  // the unit's low 31 bits. Every index is checked: the table is untrusted.
  const std::vector<std::uint32_t>& u = charsmap_units_;
  auto offset = [](std::uint32_t unit) -> std::size_t { return (unit >> 10) << ((unit & (1u << 9)) >> 6); };
  if (u.empty()) return {{}, 0};
  std::size_t node = offset(u[0]), best_len = 0;
  std::uint32_t best = 0;
  for (std::size_t i = 0; i < text.size() && i < kMaxCharsmapRule; ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c == 0) break;
    node ^= c;
    if (node >= u.size() || (u[node] & ((1u << 31) | 0xFFu)) != c) break;
    const bool leaf = (u[node] >> 8) & 1;
    node ^= offset(u[node]);
    if (leaf) {
      if (node >= u.size()) break;
      best_len = i + 1;
      best = u[node] & ((1u << 31) - 1);
    }
  }
  // A replacement outside the table reads as no rule.
  if (best_len == 0 || best >= charsmap_pool_.size()) return {{}, 0};
  std::string_view rep(charsmap_pool_);
  rep.remove_prefix(best);
  return {rep.substr(0, rep.find('\0')), best_len};
}

std::string UnigramModel::normalize_spm(std::string_view text) const {
  // sentencepiece's Normalizer::Normalize, user-defined symbols aside (the
  // tokenizer splits those out first).
  static constexpr std::string_view kSpace = "\xE2\x96\x81";
  auto next = [&](std::string_view in) -> std::pair<std::string_view, std::size_t> {
    if (auto rule = charsmap_rule(in); rule.second > 0) return rule;
    std::size_t len = 0;
    if (next_code_point(in, 0, &len) == 0xFFFD && !(len == 3 && in.starts_with("\xEF\xBF\xBD")))
      return {"\xEF\xBF\xBD", 1};  // a malformed byte
    return {in.substr(0, len), len};
  };
  if (remove_extra_spaces_)
    while (!text.empty()) {
      const auto [piece, used] = next(text);
      if (piece != " ") break;
      text.remove_prefix(used);
    }
  std::string out;
  if (text.empty()) return out;
  const std::size_t cap = 8 * text.size() + 4096;
  if (dummy_prefix_) out += kSpace;
  bool prev_space = remove_extra_spaces_;
  while (!text.empty() && out.size() <= cap) {
    auto [piece, used] = next(text);
    while (prev_space && piece.starts_with(' ')) piece.remove_prefix(1);
    if (!piece.empty()) {
      for (char c : piece) {
        if (c == ' ') out += kSpace;
        else out.push_back(c);
      }
      prev_space = piece.ends_with(' ');
    }
    text.remove_prefix(used);
    if (!remove_extra_spaces_) prev_space = false;
  }
  if (remove_extra_spaces_)
    while (out.ends_with(kSpace)) out.resize(out.size() - kSpace.size());
  return out;  // at most cap plus one replacement
}

// ---------------------------------------------------------------- encoding

void UnigramModel::encode(std::string_view text, bool at_start, std::vector<std::int32_t>* out) const {
  if (spm_) {
    segment(normalize_spm(text), out);
    return;
  }
  std::u32string s = normalize32(text);
  if (s.empty()) return;
  if (metaspace_) {
    for (char32_t& c : s)
      if (c == ' ') c = replacement_;
    if (s[0] != replacement_ && (prepend_ == PrependScheme::kAlways || (prepend_ == PrependScheme::kFirst && at_start)))
      s.insert(s.begin(), replacement_);
  }
  if (!metaspace_ || !split_) {
    segment(to_utf8(s), out);
    return;
  }
  // Split before every replacement character (it starts the next word).
  std::size_t b = 0;
  for (std::size_t i = 1; i <= s.size(); ++i) {
    if (i == s.size() || s[i] == replacement_) {
      segment(to_utf8(std::u32string_view(s).substr(b, i - b)), out);
      b = i;
    }
  }
}

void UnigramModel::segment(std::string_view word, std::vector<std::int32_t>* out) const {
  const std::size_t n = word.size();
  if (n == 0) return;
  // best[i]: the best path over word[0, i): its score, where its last piece
  // starts, and that piece (unk_, or -1 for unknown without an unk piece).
  struct Node {
    double score = 0;
    std::size_t start = 0;
    std::int32_t id = -1;
    bool reached = false;
  };
  std::vector<Node> best(n + 1);
  best[0].reached = true;
  for (std::size_t start = 0, ch = 0; start < n; start += ch) {
    next_code_point(word, start, &ch);
    const double base = best[start].score;
    bool single = false;
    std::int32_t node = 0;
    for (std::size_t end = start; end < n;) {
      if ((node = child(node, static_cast<unsigned char>(word[end]))) < 0) break;
      ++end;
      const std::int32_t id = node_piece_[static_cast<std::size_t>(node)];
      if (id < 0) continue;
      const double score = base + scores_[static_cast<std::size_t>(id)];
      if (!best[end].reached || score > best[end].score) best[end] = {score, start, id, true};
      if (end - start == ch) single = true;
    }
    if (!single) {
      const double score = base + unk_score_;
      Node& target = best[start + ch];
      if (!target.reached || score > target.score) target = {score, start, unk_, true};
    }
  }
  // Back from the end; consecutive unknowns are one token.
  struct Seg {
    std::size_t start, end;
    std::int32_t id;
    bool unknown;
  };
  std::vector<Seg> segs;
  for (std::size_t end = n; end > 0;) {
    const Node& node = best[end];
    const bool unknown = node.id < 0 || node.id == unk_;
    if (unknown && !segs.empty() && segs.back().unknown) segs.back().start = node.start;
    else segs.push_back({node.start, end, node.id, unknown});
    end = node.start;
  }
  for (auto it = segs.rbegin(); it != segs.rend(); ++it) {
    if (!it->unknown) {
      out->push_back(it->id);
      continue;
    }
    const std::string_view str = word.substr(it->start, it->end - it->start);
    if (const std::int32_t id = spm_ ? -1 : find(str); id >= 0) {
      out->push_back(id);
      continue;
    }
    if (byte_fallback_ && std::all_of(str.begin(), str.end(), [&](char c) { return byte_ids_[static_cast<unsigned char>(c)] >= 0; })) {
      for (char c : str) out->push_back(byte_ids_[static_cast<unsigned char>(c)]);
      continue;
    }
    if (unk_ >= 0) out->push_back(unk_);
  }
}

// ---------------------------------------------------------------- tokenizer.json

namespace {

Status add_normalizer(const nlohmann::json& j, int depth, std::vector<NormalizerStep>* out) {
  using Kind = NormalizerStep::Kind;
  if (j.is_null()) return Status();
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
    return verification_failed("tokenizer.json: a normalizer without a type");
  const std::string type = j["type"].get<std::string>();
  auto flag = [&](const char* key, bool fallback) {
    return j.contains(key) && j[key].is_boolean() ? j[key].get<bool>() : fallback;
  };
  auto text = [&](const char* key, std::string* v) -> Status {
    if (!j.contains(key) || !j[key].is_string())
      return verification_failed("tokenizer.json: normalizer " + type + " needs a string '" + key + "'");
    *v = j[key].get<std::string>();
    return Status();
  };
  NormalizerStep step;
  if (type == "Sequence") {
    if (depth >= kMaxSequenceDepth) return verification_failed("tokenizer.json: normalizer Sequences nested too deep");
    if (!j.contains("normalizers") || !j["normalizers"].is_array())
      return verification_failed("tokenizer.json: a Sequence normalizer without 'normalizers'");
    for (const nlohmann::json& sub : j["normalizers"]) {
      AIRLOCK_RETURN_IF_ERROR(add_normalizer(sub, depth + 1, out));
      if (out->size() > kMaxSteps) return verification_failed("tokenizer.json: more than 1024 normalizer steps");
    }
    return Status();
  } else if (type == "BertNormalizer") {
    step.kind = Kind::kBert;
    step.clean_text = flag("clean_text", true);
    step.handle_chinese_chars = flag("handle_chinese_chars", true);
    step.lowercase = flag("lowercase", true);
    step.strip_accents = flag("strip_accents", step.lowercase);  // null: as lowercase
  } else if (type == "Replace") {
    if (!j.contains("pattern") || !j["pattern"].is_object()) return verification_failed("tokenizer.json: a Replace without a pattern");
    AIRLOCK_RETURN_IF_ERROR(text("content", &step.content));
    const nlohmann::json& p = j["pattern"];
    if (p.contains("String") && p["String"].is_string()) {
      step.kind = Kind::kReplace;
      step.pattern = p["String"].get<std::string>();
    } else if (p.contains("Regex") && p["Regex"].is_string()) {
      // One regular expression is common enough to have a step of its own;
      // others would need a regex engine with Oniguruma's semantics.
      if (p["Regex"].get<std::string>() != "\\s+")
        return invalid_argument("tokenizer.json: Replace with the regular expression '" + p["Regex"].get<std::string>() +
                                "' is not supported (only \\s+)");
      step.kind = Kind::kCollapseSpaces;
    } else {
      return verification_failed("tokenizer.json: a Replace pattern is neither String nor Regex");
    }
  } else if (type == "Strip") {
    step.kind = Kind::kStrip;
    step.strip_left = flag("strip_left", true);
    step.strip_right = flag("strip_right", true);
  } else if (type == "Lowercase") {
    step.kind = Kind::kLowercase;
  } else if (type == "StripAccents") {
    step.kind = Kind::kStripAccents;
  } else if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
    step.kind = type == "NFC" ? Kind::kNfc : type == "NFD" ? Kind::kNfd : type == "NFKC" ? Kind::kNfkc : Kind::kNfkd;
  } else if (type == "Prepend") {
    step.kind = Kind::kPrepend;
    AIRLOCK_RETURN_IF_ERROR(text("prepend", &step.content));
  } else {
    return invalid_argument("tokenizer.json: normalizer '" + type +
                            "' is not supported (BertNormalizer, Replace, Strip, Lowercase, StripAccents, NFC, NFD, "
                            "NFKC, NFKD, Prepend, Sequence)");
  }
  out->push_back(std::move(step));
  return Status();
}

Status read_pre_tokenizer(const nlohmann::json& j, TokenizerSpec* s) {
  if (j.is_null()) {
    s->metaspace = false;
    return Status();
  }
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
    return verification_failed("tokenizer.json: a pre_tokenizer without a type");
  const std::string type = j["type"].get<std::string>();
  if (type != "Metaspace")
    return invalid_argument("tokenizer.json: pre_tokenizer '" + type + "' is not supported with Unigram (Metaspace only)");
  s->metaspace = true;
  if (j.contains("replacement")) {
    if (!j["replacement"].is_string()) return verification_failed("tokenizer.json: Metaspace replacement is not a string");
    s->metaspace_replacement = j["replacement"].get<std::string>();
  }
  if (j.contains("prepend_scheme") && !j["prepend_scheme"].is_null()) {
    const std::string p = j["prepend_scheme"].is_string() ? j["prepend_scheme"].get<std::string>() : "";
    if (p == "always") s->prepend_scheme = PrependScheme::kAlways;
    else if (p == "first") s->prepend_scheme = PrependScheme::kFirst;
    else if (p == "never") s->prepend_scheme = PrependScheme::kNever;
    else return verification_failed("tokenizer.json: Metaspace prepend_scheme must be always, first or never");
  } else {
    // Older files: add_prefix_space (default true).
    const bool add = j.contains("add_prefix_space") && j["add_prefix_space"].is_boolean() ? j["add_prefix_space"].get<bool>() : true;
    s->prepend_scheme = add ? PrependScheme::kAlways : PrependScheme::kNever;
  }
  s->metaspace_split = j.contains("split") && j["split"].is_boolean() ? j["split"].get<bool>() : true;
  return Status();
}

}  // namespace

Result<TokenizerSpec> unigram_spec_from_hf_json(std::string_view text) {
  AIRLOCK_ASSIGN_OR_RETURN(nlohmann::json j, parse_hf_tokenizer_json(text));
  return catching_json("tokenizer.json", [&] { return unigram_spec(j); });
}

Result<TokenizerSpec> unigram_spec(const nlohmann::json& j) {
  const nlohmann::json& m = j["model"];
  if (m["type"] != "Unigram")
    return invalid_argument("tokenizer.json: model type '" + m["type"].get<std::string>() + "' is not Unigram");
  if (!m.contains("vocab") || !m["vocab"].is_array() || m["vocab"].empty() || m["vocab"].size() > (1u << 22))
    return verification_failed("tokenizer.json: model.vocab missing or implausible");
  TokenizerSpec s;
  s.model = "unigram";
  s.tokens.reserve(m["vocab"].size());
  s.piece_scores.reserve(m["vocab"].size());
  for (const nlohmann::json& e : m["vocab"]) {
    if (!e.is_array() || e.size() != 2 || !e[0].is_string() || !e[1].is_number())
      return verification_failed("tokenizer.json: vocabulary entry " + std::to_string(s.tokens.size()) +
                                 " is not [piece, score]");
    s.tokens.push_back(e[0].get<std::string>());
    s.piece_scores.push_back(e[1].get<double>());
  }
  s.types.assign(s.tokens.size(), TokenType::kNormal);
  if (m.contains("unk_id") && !m["unk_id"].is_null()) {
    if (!m["unk_id"].is_number_unsigned() || m["unk_id"].get<std::uint64_t>() >= s.tokens.size())
      return verification_failed("tokenizer.json: model.unk_id is not a piece");
    s.unk = m["unk_id"].get<std::int32_t>();
    s.types[static_cast<std::size_t>(s.unk)] = TokenType::kUnknown;
  }
  if (m.contains("byte_fallback")) {
    if (!m["byte_fallback"].is_boolean()) return verification_failed("tokenizer.json: model.byte_fallback is not a boolean");
    s.byte_fallback = m["byte_fallback"].get<bool>();
  }
  if (s.byte_fallback)
    for (std::size_t i = 0; i < s.tokens.size(); ++i) {
      const std::string& t = s.tokens[i];
      if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' && std::isxdigit(static_cast<unsigned char>(t[3])) &&
          std::isxdigit(static_cast<unsigned char>(t[4])))
        s.types[i] = TokenType::kByte;
    }
  if (j.contains("added_tokens") && j["added_tokens"].is_array())
    for (const nlohmann::json& a : j["added_tokens"]) {
      if (!a.is_object() || !a.contains("id") || !a["id"].is_number_unsigned() || !a.contains("content") ||
          !a["content"].is_string())
        return verification_failed("tokenizer.json: malformed added_tokens entry");
      const std::size_t id = a["id"].get<std::size_t>();
      if (id >= s.tokens.size()) return verification_failed("tokenizer.json: added token id out of range");
      if (a["content"].get<std::string>() != s.tokens[id])
        return verification_failed("tokenizer.json: added token " + std::to_string(id) + " differs from its piece");
      const bool special = a.contains("special") && a["special"].is_boolean() && a["special"].get<bool>();
      s.types[id] = special ? TokenType::kControl : TokenType::kUserDefined;
    }
  AIRLOCK_RETURN_IF_ERROR(add_normalizer(j.contains("normalizer") ? j["normalizer"] : nlohmann::json(), 0, &s.normalizer));
  AIRLOCK_RETURN_IF_ERROR(read_pre_tokenizer(j.contains("pre_tokenizer") ? j["pre_tokenizer"] : nlohmann::json(), &s));
  return s;
}

}  // namespace airlock::engine
