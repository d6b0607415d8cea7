#include "airlock/engine/tokenizer.h"
#include "special_matcher.h"
#include "unigram.h"
#include "airlock/common/utf8.h"

#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <optional>

namespace airlock::engine {
namespace {

// ---------------------------------------------------------------- UTF-8

// Length of the UTF-8 sequence starting with `lead` (1 for invalid leads).
int utf8_len(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead >> 5) == 0x6) return 2;
  if ((lead >> 4) == 0xE) return 3;
  if ((lead >> 3) == 0x1E) return 4;
  return 1;
}

// Decodes the code point at s[i]; invalid bytes decode as themselves (Latin-1)
// with length 1, which classifies them as "other" symbols.
char32_t decode_at(std::string_view s, std::size_t i, int* len) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  int n = utf8_len(c);
  if (n == 1 || i + static_cast<std::size_t>(n) > s.size()) {
    *len = 1;
    return c;
  }
  char32_t cp = c & (0xFF >> (n + 1));
  for (int k = 1; k < n; ++k) {
    const unsigned char cc = static_cast<unsigned char>(s[i + static_cast<std::size_t>(k)]);
    if ((cc & 0xC0) != 0x80) {
      *len = 1;
      return c;
    }
    cp = (cp << 6) | (cc & 0x3F);
  }
  *len = n;
  return cp;
}

// ---------------------------------------------------------------- character classes (ICU)

bool is_letter(char32_t c) {
  switch (u_charType(static_cast<UChar32>(c))) {
    case U_UPPERCASE_LETTER: case U_LOWERCASE_LETTER: case U_TITLECASE_LETTER: case U_MODIFIER_LETTER:
    case U_OTHER_LETTER: return true;
    default: return false;
  }
}
bool is_number(char32_t c) {
  switch (u_charType(static_cast<UChar32>(c))) {
    case U_DECIMAL_DIGIT_NUMBER: case U_LETTER_NUMBER: case U_OTHER_NUMBER: return true;
    default: return false;
  }
}
bool is_space(char32_t c) { return u_isUWhiteSpace(static_cast<UChar32>(c)) != 0; }
bool is_newline(char32_t c) { return c == '\r' || c == '\n'; }
// A contraction letter under (?i:...): ASCII lower case, and U+017F (long
// s), whose case folding is "s".
char32_t fold_contraction(char32_t c) {
  if (c == 0x17F) return 's';
  return c < 128 ? static_cast<char32_t>(std::tolower(static_cast<int>(c))) : c;
}
// GPT-4o's and Tekken's two letter classes: [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]
// ("upper", a word's head) and [\p{Ll}\p{Lm}\p{Lo}\p{M}] ("lower", its tail).
bool is_mark_or_caseless(std::int8_t t) {
  return t == U_MODIFIER_LETTER || t == U_OTHER_LETTER || t == U_NON_SPACING_MARK || t == U_COMBINING_SPACING_MARK ||
         t == U_ENCLOSING_MARK;
}
bool is_word_head(char32_t c) {
  const std::int8_t t = u_charType(static_cast<UChar32>(c));
  return t == U_UPPERCASE_LETTER || t == U_TITLECASE_LETTER || is_mark_or_caseless(t);
}
bool is_word_tail(char32_t c) {
  const std::int8_t t = u_charType(static_cast<UChar32>(c));
  return t == U_LOWERCASE_LETTER || is_mark_or_caseless(t);
}

// ---------------------------------------------------------------- pre-tokenizers

enum class PreRules { kGpt2, kLlama3, kQwen2, kRefact, kGpt4o, kTekken };

struct Cpts {
  std::vector<char32_t> cp;
  std::vector<std::size_t> offset;  // byte offset of each code point, plus the end
};

Cpts to_cpts(std::string_view s) {
  Cpts c;
  for (std::size_t i = 0; i < s.size();) {
    int len;
    c.cp.push_back(decode_at(s, i, &len));
    c.offset.push_back(i);
    i += static_cast<std::size_t>(len);
  }
  c.offset.push_back(s.size());
  return c;
}

// Byte ranges of the pieces the pre-tokenizer regex would find.
std::vector<std::pair<std::size_t, std::size_t>> pre_split(std::string_view text, PreRules rules) {
  const Cpts c = to_cpts(text);
  const std::size_t n = c.cp.size();
  auto at = [&](std::size_t i) -> char32_t { return i < n ? c.cp[i] : 0; };
  auto other = [&](char32_t x) { return !is_space(x) && !is_letter(x) && !is_number(x); };
  std::vector<std::pair<std::size_t, std::size_t>> out;
  std::size_t i = 0;
  while (i < n) {
    std::size_t end = i;
    const char32_t x = at(i);
    // 's 't 're 've 'm 'll 'd (case-insensitive except for GPT-2)
    if (x == '\'' && i + 1 < n) {
      auto low = [&](char32_t y) { return rules == PreRules::kGpt2 ? y : fold_contraction(y); };
      const char32_t a = low(at(i + 1)), b = i + 2 < n ? low(at(i + 2)) : 0;
      if (a == 's' || a == 't' || a == 'm' || a == 'd') end = i + 2;
      else if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) end = i + 3;
    }
    if (end == i && rules == PreRules::kGpt2) {
      std::size_t j = i + (x == ' ' ? 1 : 0);
      if (j < n && is_letter(at(j))) {
        while (j < n && is_letter(at(j))) ++j;
        end = j;
      } else if (j < n && is_number(at(j))) {
        while (j < n && is_number(at(j))) ++j;
        end = j;
      } else if (j < n && other(at(j))) {
        while (j < n && other(at(j))) ++j;
        end = j;
      }
    }
    if (end == i && rules != PreRules::kGpt2) {
      // [^\r\n\p{L}\p{N}]?\p{L}+
      std::size_t j = i;
      if (!is_newline(x) && !is_letter(x) && !is_number(x) && is_letter(at(i + 1))) ++j;
      if (j < n && is_letter(at(j))) {
        while (j < n && is_letter(at(j))) ++j;
        end = j;
      } else if (is_number(x)) {  // \p{N}{1,3} (Qwen2: one digit)
        const std::size_t max = rules == PreRules::kLlama3 ? 3 : 1;
        j = i;
        while (j < n && j - i < max && is_number(at(j))) ++j;
        end = j;
      } else {  // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
        j = i + (x == ' ' ? 1 : 0);
        if (j < n && other(at(j))) {
          while (j < n && other(at(j))) ++j;
          while (j < n && is_newline(at(j))) ++j;
          end = j;
        }
      }
    }
    if (end == i && is_space(x)) {
      std::size_t j = i;
      while (j < n && is_space(at(j))) ++j;
      if (rules != PreRules::kGpt2) {  // \s*[\r\n]+ : up to the last newline of the run
        std::size_t last_nl = n;
        for (std::size_t k = i; k < j; ++k)
          if (is_newline(at(k))) last_nl = k;
        if (last_nl != n) end = last_nl + 1;
      }
      if (end == i) {
        // \s+(?!\S): leave the last space for the following word; else \s+
        if (j < n && j - i >= 2) end = j - 1;
        else end = j;
      }
    }
    if (end == i) end = i + 1;  // cannot happen with these rules; never loop forever
    out.emplace_back(c.offset[i], c.offset[end]);
    i = end;
  }
  return out;
}

// GPT-4o's rules (o200k; Phi-4-mini's "gpt-4o") and Mistral's Tekken
// rules (Nemo, Small 3), which differ only in numbers and contractions:
//   [^\r\n\p{L}\p{N}]?HEAD*TAIL+('s|'t|'re|'ve|'m|'ll|'d)?      (the suffix: GPT-4o, any case)
//   |[^\r\n\p{L}\p{N}]?HEAD+TAIL*('s|'t|'re|'ve|'m|'ll|'d)?
//   |\p{N}{1,3}   (Tekken: \p{N})
//   | ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+
// with HEAD = [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}], TAIL = [\p{Ll}\p{Lm}\p{Lo}\p{M}]:
// a capitalised word is one piece, a lower-case word after capitals
// ("HTTPServer") starts a new one. The backtracking of the regex is
// worked out below; the splits agree with Python's `regex` module on the
// vectors in tests/engine/pretokenizer (make_vectors.py). Like Hugging
// Face, and unlike llama.cpp (which approximates the classes by ASCII
// case), non-ASCII case counts: "ωΩ" is two pieces.
std::vector<std::pair<std::size_t, std::size_t>> pre_split_o200k(std::string_view text, bool gpt4o) {
  const Cpts c = to_cpts(text);
  const std::size_t n = c.cp.size(), kNone = std::string_view::npos;
  auto at = [&](std::size_t i) -> char32_t { return i < n ? c.cp[i] : 0; };
  auto head = [&](std::size_t i) { return i < n && is_word_head(c.cp[i]); };
  auto tail = [&](std::size_t i) { return i < n && is_word_tail(c.cp[i]); };
  auto other = [&](std::size_t i) { return i < n && !is_space(c.cp[i]) && !is_letter(c.cp[i]) && !is_number(c.cp[i]); };
  // HEAD*TAIL+ from j: HEAD* takes the longest run, then gives back until
  // TAIL+ can start; TAIL+ then runs as far as it can.
  auto head_tail = [&](std::size_t j) -> std::size_t {
    std::size_t k = j;
    while (head(k)) ++k;
    if (tail(k)) {
      while (tail(k)) ++k;
      return k;
    }
    for (std::size_t u = k; u > j; --u)  // TAIL+ of one: nothing after it is a tail
      if (tail(u - 1)) return u;
    return kNone;
  };
  auto heads_tails = [&](std::size_t j) -> std::size_t {  // HEAD+TAIL*
    if (!head(j)) return kNone;
    std::size_t k = j;
    while (head(k)) ++k;
    while (tail(k)) ++k;
    return k;
  };
  // The optional [^\r\n\p{L}\p{N}] in front: tried with it, then without.
  auto with_prefix = [&](std::size_t i, auto word) -> std::size_t {
    const char32_t x = at(i);
    if (i < n && !is_newline(x) && !is_letter(x) && !is_number(x)) {
      const std::size_t e = word(i + 1);
      if (e != kNone) return e;
    }
    return word(i);
  };
  auto contraction = [&](std::size_t e) -> std::size_t {  // (?i:'s|'t|'re|'ve|'m|'ll|'d)?
    if (!gpt4o || at(e) != '\'') return e;
    auto low = [&](std::size_t i) { return fold_contraction(at(i)); };
    const char32_t a = low(e + 1), b = low(e + 2);
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return e + 2;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return e + 3;
    return e;
  };
  std::vector<std::pair<std::size_t, std::size_t>> out;
  std::size_t i = 0;
  while (i < n) {
    std::size_t end = with_prefix(i, head_tail);
    if (end == kNone) end = with_prefix(i, heads_tails);
    if (end != kNone) {
      end = contraction(end);
    } else if (is_number(at(i))) {
      end = i;
      while (end < n && end - i < (gpt4o ? 3u : 1u) && is_number(at(end))) ++end;
    } else if (other(i) || (at(i) == ' ' && other(i + 1))) {  // ' ?[^\s\p{L}\p{N}]+[\r\n/]*'
      end = at(i) == ' ' ? i + 1 : i;
      while (other(end)) ++end;
      while (end < n && (is_newline(at(end)) || at(end) == '/')) ++end;
    } else {  // whitespace
      std::size_t j = i;
      while (j < n && is_space(at(j))) ++j;
      end = i;
      for (std::size_t k = i; k < j; ++k)  // \s*[\r\n]+ : up to the last newline of the run
        if (is_newline(at(k))) end = k + 1;
      if (end == i) end = j < n && j - i >= 2 ? j - 1 : j;  // \s+(?!\S), else \s+
      if (end == i) end = i + 1;  // never loop forever
    }
    out.emplace_back(c.offset[i], c.offset[end]);
    i = end;
  }
  return out;
}

// The rules a tokenizer.ggml.pre name stands for: GPT-2's (and the names
// llama.cpp gives the same rules), Llama 3's (also named dbrx and
// smaug-bpe, cl100k-style vocabularies), Qwen2's, refact's, GPT-4o's
// (llama.cpp's name llama4 too), Tekken's; nullopt for names whose rules
// are not here.
std::optional<PreRules> pre_rules_of(std::string_view pre) {
  static const char* const kGpt2Names[] = {"gpt-2",      "phi-2",      "jina-es", "jina-de", "gigachat",
                                           "jina-v2-es", "jina-v2-de", "a.x-4.0", "mellum"};
  for (const char* k : kGpt2Names)
    if (pre == k) return PreRules::kGpt2;
  if (pre == "llama-bpe" || pre == "llama3" || pre == "dbrx" || pre == "smaug-bpe") return PreRules::kLlama3;
  if (pre == "qwen2") return PreRules::kQwen2;
  if (pre == "refact") return PreRules::kRefact;
  if (pre == "gpt-4o" || pre == "llama4") return PreRules::kGpt4o;
  if (pre == "tekken") return PreRules::kTekken;
  return std::nullopt;
}

// llama.cpp's "refact" rules (Granite 3.x; HF's Digits(individual_digits)
// then ByteLevel): every number character is a word of its own, and the
// text between them is split by GPT-2's rules.
std::vector<std::pair<std::size_t, std::size_t>> pre_split_refact(std::string_view text) {
  const Cpts c = to_cpts(text);
  const std::size_t n = c.cp.size();
  std::vector<std::pair<std::size_t, std::size_t>> out;
  std::size_t run = 0;  // the first code point of the text since the last number
  auto flush = [&](std::size_t upto) {
    if (upto == run) return;
    const std::size_t b = c.offset[run];
    for (auto [pb, pe] : pre_split(text.substr(b, c.offset[upto] - b), PreRules::kGpt2)) out.emplace_back(b + pb, b + pe);
  };
  for (std::size_t i = 0; i < n; ++i) {
    if (!is_number(c.cp[i])) continue;
    flush(i);
    out.emplace_back(c.offset[i], c.offset[i + 1]);
    run = i + 1;
  }
  flush(n);
  return out;
}

// GPT-2's reversible byte <-> printable code point mapping.
struct ByteMap {
  char32_t to_cp[256];
  std::unordered_map<char32_t, unsigned char> to_byte;
  ByteMap() {
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      to_cp[b] = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + n++);
      to_byte[to_cp[b]] = static_cast<unsigned char>(b);
    }
  }
};
const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}

}  // namespace

// ---------------------------------------------------------------- construction

Tokenizer::Tokenizer(TokenizerSpec spec) : spec_(std::move(spec)) {}

Result<std::unique_ptr<Tokenizer>> Tokenizer::from_gguf(const GgufFile& f) {
  TokenizerSpec s;
  auto model = f.get_string("tokenizer.ggml.model");
  if (!model) return verification_failed("tokenizer: tokenizer.ggml.model is missing or not a string");
  s.model = std::string(*model);
  s.pre = std::string(f.get_string("tokenizer.ggml.pre").value_or("default"));
  auto tokens_or = f.get_string_array("tokenizer.ggml.tokens");
  if (!tokens_or.is_ok())
    return verification_failed("tokenizer: tokenizer.ggml.tokens: " + tokens_or.status().message());
  const std::vector<std::string_view>& tokens = tokens_or.value();
  s.tokens.assign(tokens.begin(), tokens.end());
  if (f.find("tokenizer.ggml.scores")) {
    auto scores = f.get_float_array("tokenizer.ggml.scores");
    if (!scores.is_ok()) return verification_failed("tokenizer: tokenizer.ggml.scores: " + scores.status().message());
    s.scores = std::move(scores).value();
  }
  if (f.find("tokenizer.ggml.token_type")) {
    auto types = f.get_int_array("tokenizer.ggml.token_type");
    if (!types.is_ok()) return verification_failed("tokenizer: tokenizer.ggml.token_type: " + types.status().message());
    for (std::int64_t t : types.value()) s.types.push_back(static_cast<TokenType>(t >= 0 && t <= 6 ? t : 0));
  }
  if (f.find("tokenizer.ggml.merges")) {
    auto merges = f.get_string_array("tokenizer.ggml.merges");
    if (!merges.is_ok()) return verification_failed("tokenizer: tokenizer.ggml.merges: " + merges.status().message());
    s.merges.assign(merges.value().begin(), merges.value().end());
  }
  // A special id the file names must exist; -1 (signed) or 0xFFFFFFFF
  // (llama.cpp's "no token" written as u32) means none.
  Status bad_id;
  auto id = [&](const char* key) -> std::int32_t {
    if (f.find(key) == nullptr) return -1;
    if (auto i = f.get_int(key); i && *i < 0) return -1;
    auto v = f.get_uint(key);
    if (v && (*v == 0xFFFFFFFFu || *v == UINT64_MAX)) return -1;
    if (!v || *v >= s.tokens.size()) {
      if (bad_id.is_ok())
        bad_id = verification_failed(std::string("tokenizer: ") + key + " is not a token id below n_vocab " +
                                     std::to_string(s.tokens.size()));
      return -1;
    }
    return static_cast<std::int32_t>(*v);
  };
  s.bos = id("tokenizer.ggml.bos_token_id");
  s.eos = id("tokenizer.ggml.eos_token_id");
  s.unk = id("tokenizer.ggml.unknown_token_id");
  s.eot = id("tokenizer.ggml.eot_token_id");
  if (s.model == "bert") {
    // BERT files name [CLS] and [SEP] (llama.cpp spells the key "seperator").
    if (f.find("tokenizer.ggml.bos_token_id") == nullptr) s.bos = id("tokenizer.ggml.cls_token_id");
    if (f.find("tokenizer.ggml.eos_token_id") == nullptr)
      s.eos = f.find("tokenizer.ggml.seperator_token_id") ? id("tokenizer.ggml.seperator_token_id")
                                                          : id("tokenizer.ggml.separator_token_id");
    // Hugging Face's BertTokenizer turns a word of more than 100 characters
    // into [UNK] (max_input_chars_per_word; GGUF does not carry it). It also
    // bounds the longest-match search, which costs the word's length times
    // the longest token for each word.
    s.max_word_chars = 100;
  }
  AIRLOCK_RETURN_IF_ERROR(bad_id);
  if (s.model == "t5") {
    // llama.cpp's defaults for a UGM vocabulary that names no ids.
    if (f.find("tokenizer.ggml.eos_token_id") == nullptr && s.tokens.size() > 1) s.eos = 1;
    if (f.find("tokenizer.ggml.unknown_token_id") == nullptr && s.tokens.size() > 2) s.unk = 2;
    if (const GgufValue* v = f.find("tokenizer.ggml.precompiled_charsmap")) {
      if (v->type != GgufValueType::kArray || (v->elem_type != GgufValueType::kU8 && v->elem_type != GgufValueType::kI8))
        return verification_failed("tokenizer: tokenizer.ggml.precompiled_charsmap is not an array of bytes");
      s.precompiled_charsmap.assign(reinterpret_cast<const char*>(v->raw.data()), v->raw.size());
    }
    s.remove_extra_whitespaces = f.get_bool("tokenizer.ggml.remove_extra_whitespaces").value_or(false);
  }
  if (s.model == "llama" && s.tokens.size() > 2) {
    // llama.cpp's SentencePiece defaults when the file names no ids.
    if (f.find("tokenizer.ggml.unknown_token_id") == nullptr) s.unk = 0;
    if (f.find("tokenizer.ggml.bos_token_id") == nullptr) s.bos = 1;
    if (f.find("tokenizer.ggml.eos_token_id") == nullptr) s.eos = 2;
  }
  // WordPiece (BERT) wraps every input in [CLS] ... [SEP] unless told otherwise.
  // (llama.cpp: Llama 3's and Tekken's BPE vocabularies add BOS too, where
  // they have one.)
  const bool bos_pre = s.pre == "llama-bpe" || s.pre == "llama3" || s.pre == "tekken";
  s.add_bos = f.get_bool("tokenizer.ggml.add_bos_token")
                  .value_or(s.model == "llama" || s.model == "bert" || (bos_pre && s.bos >= 0));
  s.add_eos = f.get_bool("tokenizer.ggml.add_eos_token").value_or(s.model == "bert" || s.model == "t5");
  s.add_space_prefix = f.get_bool("tokenizer.ggml.add_space_prefix").value_or(true);
  // A byte-level BPE vocabulary is split by its pre-tokenizer's rules
  // before merging; one whose rules this tokenizer does not have
  // (llama.cpp's "default" for files older than the key, deepseek's...)
  // would get other token ids than the model was trained on, so it is
  // refused, as llama.cpp refuses names it does not know.
  if (s.model == "gpt2" && !pre_rules_of(s.pre))
    return invalid_argument("tokenizer: pre-tokenizer '" + s.pre +
                            "' is not supported (gpt-2 and its aliases, llama-bpe, llama3, dbrx, smaug-bpe, qwen2, "
                            "refact, gpt-4o, llama4, tekken)");
  return from_spec(std::move(s));
}

Result<std::unique_ptr<Tokenizer>> Tokenizer::from_spec(TokenizerSpec s) {
  if (s.model != "llama" && s.model != "gpt2" && s.model != "bert" && s.model != "unigram" && s.model != "t5")
    return invalid_argument("tokenizer model '" + s.model + "' is not supported (llama, gpt2, bert, unigram, t5)");
  const std::size_t n = s.tokens.size();
  if (n == 0 || n > (1u << 24)) return verification_failed("tokenizer: vocabulary is empty or implausibly large");
  if (!s.scores.empty() && s.scores.size() != n) return verification_failed("tokenizer: scores and tokens differ in length");
  if (!s.types.empty() && s.types.size() != n) return verification_failed("tokenizer: token_type and tokens differ in length");
  if (s.model == "t5" && s.piece_scores.empty()) s.piece_scores.assign(s.scores.begin(), s.scores.end());
  if (s.scores.empty()) s.scores.assign(n, 0.0f);
  if (s.types.empty()) s.types.assign(n, TokenType::kNormal);
  for (std::int32_t* idp : {&s.bos, &s.eos, &s.unk, &s.eot}) {
    if (*idp >= static_cast<std::int32_t>(n)) return verification_failed("tokenizer: special token id out of range");
    if (*idp < 0) *idp = -1;
  }
  if ((s.add_bos && s.bos < 0) || (s.add_eos && s.eos < 0))
    return verification_failed("tokenizer: add_bos/add_eos without a BOS/EOS id");
  std::shared_ptr<const UnigramModel> unigram;
  if (s.model == "unigram" || s.model == "t5") {
    AIRLOCK_ASSIGN_OR_RETURN(unigram, UnigramModel::build(s));
    s.precompiled_charsmap.clear();
    s.precompiled_charsmap.shrink_to_fit();
    s.piece_scores.clear();  // the model keeps its own copy
    s.piece_scores.shrink_to_fit();
  }
  std::unique_ptr<Tokenizer> t(new Tokenizer(std::move(s)));
  t->unigram_ = std::move(unigram);
  const TokenizerSpec& sp = t->spec_;
  for (std::size_t i = 0; i < n; ++i) t->ids_.emplace(sp.tokens[i], static_cast<std::int32_t>(i));
  for (std::size_t r = 0; r < sp.merges.size(); ++r) {
    const std::string& m = sp.merges[r];
    std::size_t space = m.find(' ', 1);
    if (space == std::string::npos) return verification_failed("tokenizer: merge " + std::to_string(r) + " has no space");
    std::string key = m;
    key[space] = '\0';
    t->merge_rank_.emplace(std::move(key), static_cast<int>(r));  // the first (best) rank wins
  }
  for (std::size_t i = 0; i < n; ++i)
    if ((sp.types[i] == TokenType::kControl || sp.types[i] == TokenType::kUserDefined) && !sp.tokens[i].empty())
      t->specials_.push_back(static_cast<std::int32_t>(i));
  std::stable_sort(t->specials_.begin(), t->specials_.end(), [&](std::int32_t a, std::int32_t b) {
    return sp.tokens[a].size() > sp.tokens[b].size();
  });
  if (!t->specials_.empty()) {
    // Of twins (one text, two ids) the first wins, but a control token
    // never inside a literal range: there the first one that is not.
    std::vector<SpecialMatcher::Special> by_rank;
    by_rank.reserve(t->specials_.size());
    for (const std::int32_t id : t->specials_)
      by_rank.push_back({sp.tokens[id], sp.types[id] == TokenType::kControl});
    t->special_matcher_ = std::make_shared<const SpecialMatcher>(by_rank);
  }
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    t->byte_tokens_[b] = t->token_id(name);
  }
  t->ignore_merges_ = sp.pre == "llama-bpe" || sp.pre == "llama3" || sp.pre == "tekken";
  for (const std::string& tok : sp.tokens) t->max_token_bytes_ = std::max(t->max_token_bytes_, tok.size());
  return t;
}

std::int32_t Tokenizer::token_id(std::string_view text) const {
  auto it = ids_.find(std::string(text));
  return it == ids_.end() ? -1 : it->second;
}

bool Tokenizer::is_end_of_generation(std::int32_t id) const {
  if (id < 0 || id >= n_vocab()) return false;
  if (id == spec_.eos || id == spec_.eot) return true;
  const std::string& t = spec_.tokens[id];
  return spec_.types[id] == TokenType::kControl &&
         (t == "<|eot_id|>" || t == "<|im_end|>" || t == "<|end|>" || t == "<end_of_turn>" || t == "<|endoftext|>");
}

// ---------------------------------------------------------------- encoding

// Each special, longest first (in vocabulary order among those of one
// length), takes its leftmost occurrences that do not overlap one taken
// before; a control token never inside a literal range (llama.cpp's
// tokenizer_st_partition, with the ranges). SpecialMatcher finds them all in
// time linear in the text (times a log), whatever the specials: the earlier
// walk of a byte tree from every position cost the text times the longest
// special, and its fallback, a search per special, the text times their
// number.
std::vector<Tokenizer::Fragment> Tokenizer::split_at_specials(std::string_view text, std::vector<Fragment> frags) const {
  if (!special_matcher_) return frags;
  std::vector<SpecialMatcher::Span> spans;
  spans.reserve(frags.size());
  for (const Fragment& f : frags) {
    const auto begin = static_cast<std::size_t>(f.text.data() - text.data());
    spans.push_back({begin, begin + f.text.size(), f.literal});
  }
  const std::vector<SpecialMatcher::Match> found = special_matcher_->find(text, spans);
  if (found.empty()) return frags;
  // The fragments cut at the specials taken (each lies inside one).
  std::vector<Fragment> out;
  std::size_t next = 0;
  for (const Fragment& f : frags) {
    const std::size_t begin = static_cast<std::size_t>(f.text.data() - text.data()), end = begin + f.text.size();
    std::size_t from = begin;
    for (; next < found.size() && found[next].begin < end; ++next) {
      const SpecialMatcher::Match& m = found[next];
      if (m.begin > from) out.push_back({text.substr(from, m.begin - from), -1, f.literal});
      out.push_back({{}, specials_[static_cast<std::size_t>(m.rank)]});
      from = m.end;
    }
    if (from < end) out.push_back({text.substr(from, end - from), -1, f.literal});
  }
  return out;
}

Status check_vocab_fits(const Tokenizer& tokenizer, int rows) {
  if (tokenizer.n_vocab() <= rows) return Status::ok();
  return verification_failed("gguf: the vocabulary has " + std::to_string(tokenizer.n_vocab()) +
                             " tokens, token_embd.weight " + std::to_string(rows) + " rows");
}

std::vector<std::int32_t> Tokenizer::encode(std::string_view text, bool add_special, bool parse_special) const {
  if (parse_special) return encode(text, add_special, std::span<const std::pair<std::size_t, std::size_t>>());
  const std::pair<std::size_t, std::size_t> all{0, text.size()};
  return encode(text, add_special, std::span<const std::pair<std::size_t, std::size_t>>(&all, 1));
}

std::vector<std::int32_t> Tokenizer::encode(std::string_view text, bool add_special,
                                            std::span<const std::pair<std::size_t, std::size_t>> literal) const {
  std::vector<std::int32_t> out;
  if (add_special && spec_.add_bos) out.push_back(spec_.bos);
  // Split the text around special tokens (longest first), then encode the
  // plain fragments. Fragments inside `literal` ranges are not searched for
  // control tokens.
  std::vector<Fragment> frags;
  std::size_t pos = 0;
  for (const auto& [b, e] : literal) {
    const std::size_t lb = std::clamp(b, pos, text.size()), le = std::clamp(e, lb, text.size());
    if (lb > pos) frags.push_back({text.substr(pos, lb - pos), -1, false});
    if (le > lb) frags.push_back({text.substr(lb, le - lb), -1, true});
    pos = le;
  }
  if (pos < text.size() || frags.empty()) frags.push_back({text.substr(pos), -1, false});
  frags = split_at_specials(text, std::move(frags));
  // Neighbouring text fragments (split only at a literal range's edge) are
  // one piece of text again, encoded as it would be without the ranges.
  std::vector<Fragment> joined;
  for (const Fragment& f : frags) {
    if (f.special < 0 && !joined.empty() && joined.back().special < 0 &&
        joined.back().text.data() + joined.back().text.size() == f.text.data())
      joined.back().text = std::string_view(joined.back().text.data(), joined.back().text.size() + f.text.size());
    else
      joined.push_back(f);
  }
  frags = std::move(joined);
  bool prev_special = true;  // SentencePiece adds its space prefix to the first fragment
  for (const Fragment& f : frags) {
    if (f.special >= 0) {
      out.push_back(f.special);
      prev_special = true;
      continue;
    }
    if (f.text.empty()) continue;
    if (spec_.model == "llama") {
      std::string t;
      if (spec_.add_space_prefix && prev_special) t = " ";
      t.append(f.text);
      encode_spm(t, &out);
    } else if (spec_.model == "bert") {
      encode_wpm(f.text, &out);
    } else if (unigram_) {
      unigram_->encode(f.text, /*at_start=*/f.text.data() == text.data(), &out);
    } else {
      encode_bpe(f.text, &out);
    }
    prev_special = false;
  }
  if (add_special && spec_.add_eos) out.push_back(spec_.eos);
  return out;
}

void Tokenizer::encode_spm(std::string_view raw, std::vector<std::int32_t>* out) const {
  if (raw.empty()) return;
  std::string text;
  for (char c : raw) {
    if (c == ' ') text += "\xE2\x96\x81";  // U+2581
    else text.push_back(c);
  }
  struct Sym {
    int prev, next;
    std::size_t start, len;
  };
  // One symbol per character. llama.cpp trusts the lead byte's length even
  // when the continuation bytes are missing; checking them (an invalid byte
  // is a symbol of its own) keeps invalid UTF-8 from swallowing the U+2581
  // of a following space. Valid UTF-8 splits the same either way.
  std::vector<Sym> sym;
  for (std::size_t i = 0; i < text.size();) {
    int n_bytes;
    decode_at(text, i, &n_bytes);
    const std::size_t len = static_cast<std::size_t>(n_bytes);
    sym.push_back({static_cast<int>(sym.size()) - 1, static_cast<int>(sym.size()) + 1, i, len});
    i += len;
  }
  sym.back().next = -1;
  struct Bigram {
    int left, right;
    float score;
    std::size_t size;
  };
  auto worse = [](const Bigram& a, const Bigram& b) {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  };
  std::vector<Bigram> heap;
  auto try_add = [&](int l, int r) {
    if (l < 0 || r < 0) return;
    std::string s = text.substr(sym[l].start, sym[l].len + sym[r].len);
    auto it = ids_.find(s);
    if (it == ids_.end()) return;
    heap.push_back({l, r, spec_.scores[it->second], s.size()});
    std::push_heap(heap.begin(), heap.end(), worse);
  };
  for (std::size_t i = 1; i < sym.size(); ++i) try_add(static_cast<int>(i) - 1, static_cast<int>(i));
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), worse);
    Bigram b = heap.back();
    heap.pop_back();
    Sym& l = sym[b.left];
    Sym& r = sym[b.right];
    if (l.len == 0 || r.len == 0 || l.len + r.len != b.size) continue;  // stale
    l.len += r.len;
    r.len = 0;
    l.next = r.next;
    if (r.next >= 0) sym[r.next].prev = b.left;
    try_add(l.prev, b.left);
    try_add(b.left, l.next);
  }
  // Only pairs that form a vocabulary token are ever merged, so each final
  // symbol is a token or a single character that falls back to <0xNN> bytes.
  for (int i = 0; i >= 0 && i < static_cast<int>(sym.size()); i = sym[i].next) {
    if (sym[i].len == 0) continue;
    auto it = ids_.find(text.substr(sym[i].start, sym[i].len));
    if (it != ids_.end()) {
      out->push_back(it->second);
      continue;
    }
    for (std::size_t k = 0; k < sym[i].len; ++k) {
      const std::int32_t id = byte_tokens_[static_cast<unsigned char>(text[sym[i].start + k])];
      if (id >= 0) out->push_back(id);
      else if (spec_.unk >= 0) out->push_back(spec_.unk);  // no byte token and no UNK: dropped
    }
  }
}

void Tokenizer::bpe_word(const std::string& word, std::vector<std::int32_t>* out) const {
  if (ignore_merges_) {
    auto it = ids_.find(word);
    if (it != ids_.end()) {
      out->push_back(it->second);
      return;
    }
  }
  // Rank-driven merges over a linked list of symbols with a priority queue
  // of adjacent pairs (as llama.cpp): O(n log n), so a long word without
  // spaces cannot stall the encoder. Lowest rank first, leftmost on ties.
  struct Sym {
    int prev, next;
    std::size_t start, len;
  };
  std::vector<Sym> sym;
  for (std::size_t i = 0; i < word.size();) {
    const std::size_t len = std::min<std::size_t>(
        static_cast<std::size_t>(utf8_len(static_cast<unsigned char>(word[i]))), word.size() - i);
    sym.push_back({static_cast<int>(sym.size()) - 1, static_cast<int>(sym.size()) + 1, i, len});
    i += len;
  }
  if (sym.empty()) return;
  sym.back().next = -1;
  struct Pair {
    int left, right, rank;
    std::size_t size;
  };
  auto worse = [](const Pair& a, const Pair& b) { return a.rank > b.rank || (a.rank == b.rank && a.left > b.left); };
  std::vector<Pair> heap;
  std::string key;
  auto try_add = [&](int l, int r) {
    if (l < 0 || r < 0) return;
    key.assign(word, sym[l].start, sym[l].len);
    key.push_back('\0');
    key.append(word, sym[r].start, sym[r].len);
    auto it = merge_rank_.find(key);
    if (it == merge_rank_.end()) return;
    heap.push_back({l, r, it->second, sym[l].len + sym[r].len});
    std::push_heap(heap.begin(), heap.end(), worse);
  };
  for (std::size_t i = 1; i < sym.size(); ++i) try_add(static_cast<int>(i) - 1, static_cast<int>(i));
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), worse);
    const Pair p = heap.back();
    heap.pop_back();
    Sym& l = sym[p.left];
    Sym& r = sym[p.right];
    // Stale: a symbol only grows, and a merged-away one has length 0.
    if (l.len == 0 || r.len == 0 || l.next != p.right || l.len + r.len != p.size) continue;
    l.len += r.len;
    r.len = 0;
    l.next = r.next;
    if (r.next >= 0) sym[r.next].prev = p.left;
    try_add(l.prev, p.left);
    try_add(p.left, l.next);
  }
  for (int i = 0; i >= 0; i = sym[i].next) {
    const std::string_view part(word.data() + sym[i].start, sym[i].len);
    auto it = ids_.find(std::string(part));
    if (it != ids_.end()) {
      out->push_back(it->second);
      continue;
    }
    // Not in the vocabulary (a damaged vocabulary): one token per mapped
    // byte, or UNK, or nothing; never an id outside the vocabulary.
    for (std::size_t k = 0; k < part.size();) {
      int len;
      decode_at(part, k, &len);
      auto jt = ids_.find(std::string(part.substr(k, static_cast<std::size_t>(len))));
      if (jt != ids_.end()) out->push_back(jt->second);
      else if (spec_.unk >= 0) out->push_back(spec_.unk);
      k += static_cast<std::size_t>(len);
    }
  }
}

namespace {

// NFC of valid UTF-8 text; nullopt when the text is ASCII, already NFC, or
// not valid UTF-8 (whose bytes are kept as they are).
std::optional<std::string> nfc_if_changed(std::string_view text) {
  bool ascii = true;
  for (char c : text) ascii = ascii && static_cast<unsigned char>(c) < 0x80;
  if (ascii) return std::nullopt;
  if (!valid_utf8(text)) return std::nullopt;
  UErrorCode err = U_ZERO_ERROR;
  const icu::Normalizer2* nfc = icu::Normalizer2::getNFCInstance(err);
  if (U_FAILURE(err) || nfc == nullptr) return std::nullopt;
  const icu::UnicodeString src =
      icu::UnicodeString::fromUTF8(icu::StringPiece(text.data(), static_cast<std::int32_t>(text.size())));
  if (nfc->isNormalized(src, err) || U_FAILURE(err)) return std::nullopt;
  err = U_ZERO_ERROR;
  const icu::UnicodeString norm = nfc->normalize(src, err);
  if (U_FAILURE(err)) return std::nullopt;
  std::string out;
  norm.toUTF8String(out);
  return out;
}

}  // namespace

std::vector<std::string> Tokenizer::pre_tokens(std::string_view text) const {
  // (a spec built in code may name no rules: GPT-2's)
  const PreRules rules = pre_rules_of(spec_.pre).value_or(PreRules::kGpt2);
  // Qwen2/3's tokenizer.json normalises to NFC before splitting (the
  // others do not normalise): decomposed text, as macOS and many PDFs
  // write it ("n" + U+0303), gets the ids of the composed characters, as
  // Hugging Face gives. (llama.cpp skips this step.)
  std::optional<std::string> normalized;
  if (rules == PreRules::kQwen2) normalized = nfc_if_changed(text);
  if (normalized) text = *normalized;
  std::vector<std::pair<std::size_t, std::size_t>> ranges;
  switch (rules) {
    case PreRules::kRefact: ranges = pre_split_refact(text); break;
    case PreRules::kGpt4o: case PreRules::kTekken: ranges = pre_split_o200k(text, rules == PreRules::kGpt4o); break;
    default: ranges = pre_split(text, rules); break;
  }
  std::vector<std::string> pieces;
  pieces.reserve(ranges.size());
  for (auto [b, e] : ranges) pieces.emplace_back(text.substr(b, e - b));
  return pieces;
}

void Tokenizer::encode_bpe(std::string_view text, std::vector<std::int32_t>* out) const {
  const ByteMap& bm = byte_map();
  for (const std::string& piece : pre_tokens(text)) {
    std::string mapped;
    for (char ch : piece) append_utf8(mapped, bm.to_cp[static_cast<unsigned char>(ch)]);
    bpe_word(mapped, out);
  }
}

// BERT's basic tokenizer then WordPiece, as llama.cpp converts BERT
// vocabularies to GGUF (a word-initial piece carries U+2581, a continuation
// piece carries nothing, where BERT's vocab.txt wrote "##"): NFD, accents
// (nonspacing marks) and control characters dropped, lower case, words split
// at whitespace, every punctuation or ASCII symbol character and every CJK
// ideograph a word of its own; then each word is covered greedily by the
// longest vocabulary pieces from the left, or is [UNK] as a whole.
void Tokenizer::encode_wpm(std::string_view text, std::vector<std::int32_t>* out) const {
  UErrorCode err = U_ZERO_ERROR;
  const icu::Normalizer2* nfd = icu::Normalizer2::getNFDInstance(err);
  if (U_FAILURE(err) || nfd == nullptr) return;
  const icu::UnicodeString src = icu::UnicodeString::fromUTF8(icu::StringPiece(text.data(), static_cast<std::int32_t>(text.size())));
  const icu::UnicodeString norm = nfd->normalize(src, err);
  if (U_FAILURE(err)) return;
  auto is_cjk = [](char32_t c) {
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
           (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B820 && c <= 0x2CEAF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
  };
  std::vector<std::string> words(1);
  for (std::int32_t i = 0; i < norm.length(); i = norm.moveIndex32(i, 1)) {
    const char32_t c = static_cast<char32_t>(norm.char32At(i));
    const std::int8_t type = u_charType(static_cast<UChar32>(c));
    if (u_isUWhiteSpace(static_cast<UChar32>(c)) || c == '\t' || c == '\n' || c == '\r') {
      if (!words.back().empty()) words.emplace_back();
      continue;
    }
    if (c == 0 || c == 0xFFFD || type == U_CONTROL_CHAR || type == U_FORMAT_CHAR || type == U_NON_SPACING_MARK) continue;
    std::string piece;
    append_utf8(piece, static_cast<char32_t>(u_tolower(static_cast<UChar32>(c))));
    const bool punct = u_ispunct(static_cast<UChar32>(c)) ||
                       (c < 0x7F && ((c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126)));
    if (punct || is_cjk(c)) {
      if (!words.back().empty()) words.emplace_back();
      words.back() = piece;
      words.emplace_back();
    } else {
      words.back() += piece;
    }
  }
  for (const std::string& w : words) {
    if (w.empty()) continue;
    if (spec_.max_word_chars > 0) {
      std::size_t chars = 0;
      for (char c : w) chars += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
      if (chars > spec_.max_word_chars) {
        if (spec_.unk >= 0) out->push_back(spec_.unk);
        continue;
      }
    }
    const std::string word = "\xE2\x96\x81" + w;
    const std::size_t start = out->size();
    bool ok = true;
    for (std::size_t i = 0; i < word.size() && ok;) {
      ok = false;
      for (std::size_t j = std::min(word.size(), i + max_token_bytes_); j > i; --j) {
        auto it = ids_.find(word.substr(i, j - i));
        if (it != ids_.end()) {
          out->push_back(it->second);
          i = j;
          ok = true;
          break;
        }
      }
    }
    if (!ok) {
      out->resize(start);
      if (spec_.unk >= 0) out->push_back(spec_.unk);
    }
  }
}

// ---------------------------------------------------------------- decoding

std::string Tokenizer::token_bytes(std::int32_t id, bool render_special) const {
  if (id < 0 || id >= n_vocab()) return {};
  const std::string& t = spec_.tokens[id];
  const TokenType type = spec_.types[id];
  if (type == TokenType::kControl) return render_special ? t : std::string();
  if (type == TokenType::kUnknown && (spec_.model == "llama" || spec_.model == "t5")) return render_special ? t : std::string("\xE2\x96\x85");
  if (type == TokenType::kUserDefined) return t;
  if (spec_.model == "llama" || spec_.model == "bert" || spec_.model == "unigram" || spec_.model == "t5") {
    if (spec_.model != "bert" && type == TokenType::kByte && t.size() == 6) return std::string(1, static_cast<char>(std::strtol(t.c_str() + 3, nullptr, 16)));
    std::string out;
    for (std::size_t i = 0; i < t.size();) {
      if (t.compare(i, 3, "\xE2\x96\x81") == 0) {
        out.push_back(' ');
        i += 3;
      } else {
        out.push_back(t[i++]);
      }
    }
    return out;
  }
  const ByteMap& bm = byte_map();
  std::string out;
  for (std::size_t i = 0; i < t.size();) {
    int len;
    char32_t cp = decode_at(t, i, &len);
    auto it = bm.to_byte.find(cp);
    if (it != bm.to_byte.end()) out.push_back(static_cast<char>(it->second));
    else out.append(t, i, static_cast<std::size_t>(len));
    i += static_cast<std::size_t>(len);
  }
  return out;
}

std::string StreamDecoder::push(std::int32_t id) {
  pending_ += tok_.token_bytes(id);
  if (!started_ && !pending_.empty()) {
    started_ = true;
    if (tok_.strips_leading_space() && pending_[0] == ' ') pending_.erase(0, 1);
  }
  // Emit every complete character; replace with U+FFFD each byte that
  // cannot begin or continue a well-formed one (Unicode table 3-7: no
  // overlong forms, surrogates or values above U+10FFFF), as soon as that
  // is known.
  std::string out;
  std::size_t i = 0;
  while (i < pending_.size()) {
    const unsigned char c = static_cast<unsigned char>(pending_[i]);
    if (c < 0x80) {
      out.push_back(static_cast<char>(c));
      ++i;
      continue;
    }
    // The length a lead byte starts, and the range of the byte after it.
    int n = 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) n = 2;
    else if (c >= 0xE0 && c <= 0xEF) n = 3, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
    else if (c >= 0xF0 && c <= 0xF4) n = 4, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
    const std::size_t have = std::min(pending_.size() - i, static_cast<std::size_t>(std::max(n, 1)));
    bool ok = n > 0;
    for (std::size_t k = 1; ok && k < have; ++k) {
      const unsigned char b = static_cast<unsigned char>(pending_[i + k]);
      ok = k == 1 ? b >= lo && b <= hi : b >= 0x80 && b <= 0xBF;
    }
    if (!ok) {
      out += "\xEF\xBF\xBD";
      ++i;
      continue;
    }
    if (have < static_cast<std::size_t>(n)) break;  // wait for the rest of the character
    out.append(pending_, i, static_cast<std::size_t>(n));
    i += static_cast<std::size_t>(n);
  }
  pending_.erase(0, i);
  return out;
}

std::string StreamDecoder::finish() {
  std::string out = pending_.empty() ? std::string() : std::string("\xEF\xBF\xBD");
  pending_.clear();
  return out;
}

}  // namespace airlock::engine
