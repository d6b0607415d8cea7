#include "airlock/engine/constraint.h"

#include <algorithm>
#include <array>
#include <optional>
#include <type_traits>

namespace airlock::engine {
namespace {

bool is_space(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
int hex_value(unsigned char c) {
  if (is_digit(c)) return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

constexpr std::string_view kLiterals[] = {"true", "false", "null"};

// The parts of a number (RFC 8259: -? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?).
enum NumberPart : std::uint8_t { kSign, kZero, kInt, kDot, kFrac, kE, kExpSign, kExp };

}  // namespace

bool JsonGrammar::value_start(unsigned char c) {
  switch (c) {
    case '{':
    case '[':
      if (depth_ >= kMaxDepth) break;
      arrays_ = (arrays_ & ~(1u << depth_)) | (c == '[' ? 1u << depth_ : 0u);
      ++depth_;
      mode_ = c == '[' ? Mode::kArrayFirst : Mode::kKeyFirst;
      return true;
    case '"':
      mode_ = Mode::kString;
      key_ = false;
      return true;
    case '-':
      mode_ = Mode::kNumber;
      sub_ = kSign;
      count_ = 1;
      exp_digits_ = 0;
      return true;
    case 't':
    case 'f':
    case 'n':
      mode_ = Mode::kLiteral;
      sub_ = c == 't' ? 0 : c == 'f' ? 1 : 2;
      count_ = 1;
      return true;
    default:
      if (!is_digit(c)) break;
      mode_ = Mode::kNumber;
      sub_ = c == '0' ? kZero : kInt;
      count_ = 1;
      exp_digits_ = 0;
      return true;
  }
  mode_ = Mode::kFailed;
  return false;
}

bool JsonGrammar::close(unsigned char c) {
  const bool array = depth_ > 0 && ((arrays_ >> (depth_ - 1)) & 1u) != 0;
  if (depth_ == 0 || c != (array ? ']' : '}')) {
    mode_ = Mode::kFailed;
    return false;
  }
  --depth_;
  mode_ = depth_ == 0 ? Mode::kDone : Mode::kAfterValue;
  return true;
}

// True when the number took `c`; false when it ended before `c` (mode_ is
// then kAfterValue) or `c` cannot follow (mode_ kFailed).
bool JsonGrammar::number(unsigned char c) {
  const bool digit = is_digit(c), e = c == 'e' || c == 'E';
  int next = -1;  // -1: the number ends here, -2: invalid
  switch (sub_) {
    case kSign: next = c == '0' ? kZero : digit ? kInt : -2; break;
    case kZero: next = c == '.' ? kDot : e ? kE : -1; break;
    case kInt: next = digit ? kInt : c == '.' ? kDot : e ? kE : -1; break;
    case kDot: next = digit ? kFrac : -2; break;
    case kFrac: next = digit ? kFrac : e ? kE : -1; break;
    case kE: next = c == '+' || c == '-' ? kExpSign : digit ? kExp : -2; break;
    case kExpSign: next = digit ? kExp : -2; break;
    case kExp: next = digit ? kExp : -1; break;
    default: next = -2;
  }
  if (next == -1) {
    mode_ = Mode::kAfterValue;
    return false;
  }
  // An exponent of at most two digits: with at most kMaxNumber characters
  // the value stays within a double's range, which parsers need (some
  // refuse 1e400, others make it infinity).
  if (next == kExp) ++exp_digits_;
  // '.', 'e' and an exponent's sign need a digit after them: refused
  // without room for one (else the answer could not go on, nor end).
  const int digit_due = next == kDot || next == kE || next == kExpSign ? 1 : 0;
  if (next == -2 || ++count_ + digit_due > kMaxNumber || exp_digits_ > kMaxExponentDigits) {
    mode_ = Mode::kFailed;
    return false;
  }
  sub_ = static_cast<std::uint8_t>(next);
  return true;
}

bool JsonGrammar::feed(unsigned char c) {
  auto fail = [this] {
    mode_ = Mode::kFailed;
    return false;
  };
  switch (mode_) {
    case Mode::kDone:
    case Mode::kFailed:
      return fail();
    case Mode::kString:
      if (utf8_left_ > 0) {
        // The byte after the lead has a narrower range for some leads (no
        // overlong forms, surrogates or values above U+10FFFF: what the
        // stream decoder passes unchanged).
        const unsigned char lo = lead_ == 0xE0 ? 0xA0 : lead_ == 0xF0 ? 0x90 : 0x80;
        const unsigned char hi = lead_ == 0xED ? 0x9F : lead_ == 0xF4 ? 0x8F : 0xBF;
        if (c < lo || c > hi) return fail();
        lead_ = 0;
        --utf8_left_;
        return true;
      }
      // After a high surrogate escape only its low half may come.
      if (high_surrogate_ && c != '\\') return fail();
      if (c == '"') {
        mode_ = key_ ? Mode::kColon : Mode::kAfterValue;
        return true;
      }
      if (c == '\\') {
        mode_ = Mode::kEscape;
        return true;
      }
      if (c < 0x20) return fail();
      if (c < 0x80) return true;
      // UTF-8: the lead byte says how many continuation bytes follow
      // (no overlong two-byte forms, nothing above U+10FFFF's lead).
      if (c >= 0xC2 && c <= 0xDF) utf8_left_ = 1;
      else if (c >= 0xE0 && c <= 0xEF) utf8_left_ = 2;
      else if (c >= 0xF0 && c <= 0xF4) utf8_left_ = 3;
      else return fail();
      lead_ = c;
      return true;
    case Mode::kEscape:
      if (c == 'u') {
        mode_ = Mode::kHex;
        sub_ = 4;
        code_ = 0;
        return true;
      }
      if (high_surrogate_) return fail();
      if (c == '"' || c == '\\' || c == '/' || c == 'b' || c == 'f' || c == 'n' || c == 'r' || c == 't') {
        mode_ = Mode::kString;
        return true;
      }
      return fail();
    case Mode::kHex: {
      const int v = hex_value(c);
      if (v < 0) return fail();
      code_ = static_cast<std::uint16_t>(code_ << 4 | v);
      if (--sub_ > 0) return true;
      // Surrogates come in pairs (strict parsers refuse a lone half).
      const bool high = code_ >= 0xD800 && code_ <= 0xDBFF, low = code_ >= 0xDC00 && code_ <= 0xDFFF;
      if (high_surrogate_) {
        if (!low) return fail();
        high_surrogate_ = false;
      } else if (low) {
        return fail();
      } else {
        high_surrogate_ = high;
      }
      mode_ = Mode::kString;
      return true;
    }
    case Mode::kLiteral: {
      const std::string_view word = kLiterals[sub_];
      if (c != static_cast<unsigned char>(word[count_])) return fail();
      if (++count_ == word.size()) mode_ = Mode::kAfterValue;
      return true;
    }
    case Mode::kNumber:
      if (number(c)) return true;
      if (mode_ == Mode::kFailed) return false;
      break;  // the number ended: `c` is read as what follows it
    default:
      break;
  }
  if (is_space(c)) {
    if (++spaces_ > kMaxSpaces) return fail();
    return true;
  }
  spaces_ = 0;
  switch (mode_) {
    case Mode::kStart:
      if (c != '{') return fail();
      return value_start(c);
    case Mode::kValue:
      return value_start(c);
    case Mode::kArrayFirst:
      return c == ']' ? close(c) : value_start(c);
    case Mode::kKeyFirst:
      if (c == '}') return close(c);
      [[fallthrough]];
    case Mode::kKey:
      if (c != '"') return fail();
      mode_ = Mode::kString;
      key_ = true;
      return true;
    case Mode::kColon:
      if (c != ':') return fail();
      mode_ = Mode::kValue;
      return true;
    case Mode::kAfterValue:
      if (c == ',') {
        mode_ = ((arrays_ >> (depth_ - 1)) & 1u) != 0 ? Mode::kValue : Mode::kKey;
        return true;
      }
      return close(c);
    default:
      return fail();
  }
}

namespace {

// No quote, backslash or control byte, and whole UTF-8 characters as the
// grammar reads them.
bool plain_text(const std::string& b) {
  if (b.empty() || b.find_first_of("\"\\") != std::string::npos) return false;  // never leaves the string
  JsonGrammar g;
  if (!g.feed(std::string_view("{\"\":\"")) || !g.feed(b)) return false;
  return g.in_plain_string();
}

}  // namespace

JsonVocab::JsonVocab(const Tokenizer& tokenizer)
    : bytes(static_cast<std::size_t>(tokenizer.n_vocab())),
      plain(static_cast<std::size_t>(tokenizer.n_vocab())),
      chars(static_cast<std::size_t>(tokenizer.n_vocab())) {
  for (std::int32_t t = 0; t < tokenizer.n_vocab(); ++t) {
    if (tokenizer.is_end_of_generation(t)) {
      end_tokens.push_back(t);
      continue;
    }
    // Control and unknown tokens (those that render otherwise when asked
    // to show their markup) are not text an answer may hold.
    std::string b = tokenizer.token_bytes(t);
    if (b != tokenizer.token_bytes(t, /*render_special=*/true)) continue;
    plain[static_cast<std::size_t>(t)] = plain_text(b);
    chars[static_cast<std::size_t>(t)] = static_cast<std::uint32_t>(
        std::count_if(b.begin(), b.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; }));
    bytes[static_cast<std::size_t>(t)] = std::move(b);
  }
}

JsonConstraint::JsonConstraint(std::shared_ptr<const JsonVocab> vocab, std::optional<ThinkBlock> think,
                               std::shared_ptr<const Grammar> grammar, std::vector<std::int32_t> lead)
    : vocab_(std::move(vocab)), grammar_(std::move(grammar)) {
  for (std::int32_t t : lead)
    if (t >= 0 && static_cast<std::size_t>(t) < vocab_->bytes.size()) lead_.push_back(t);
  if (grammar_) {
    arena_ = std::make_unique<GrammarArena>();
    state_.matcher.emplace(grammar_.get(), arena_.get());
  }
  if (think && !think->close.empty()) {
    think_ = std::move(*think);
    state_.phase = think_.open.empty() ? Phase::kThinking : Phase::kOpening;
  }
}

bool JsonConstraint::take(State& s, std::string_view bytes, bool into_object) const {
  switch (s.phase) {
    case Phase::kObject:
      return s.feed(bytes);
    case Phase::kThinking: {
      // Free text, unless these bytes complete the close tag: then what
      // follows it must start the object.
      const std::string& close = think_.close;
      std::string text = s.held;
      text.append(bytes);
      const std::size_t at = text.find(close);
      if (at == std::string::npos) {
        s.held = text.substr(text.size() - std::min(text.size(), close.size() - 1));
        return true;
      }
      s.phase = Phase::kObject;
      s.held.clear();
      const std::string_view rest = std::string_view(text).substr(at + close.size());
      return rest.empty() || (into_object && s.feed(rest));
    }
    case Phase::kOpening: {
      // Whitespace, then the open tag or the object.
      const std::string& open = think_.open;
      std::string text = s.held;
      text.append(bytes);
      std::size_t i = 0;
      while (i < text.size() && is_space(static_cast<unsigned char>(text[i]))) ++i;
      const std::string_view rest = std::string_view(text).substr(i);
      if (rest.substr(0, open.size()) == open) {
        s.phase = Phase::kThinking;
        s.held.clear();
        return take(s, rest.substr(open.size()), into_object);
      }
      if (rest.size() < open.size() && std::string_view(open).substr(0, rest.size()) == rest) {
        // Not known yet; whitespace held to the object's bound.
        JsonGrammar g;
        if (!g.feed(std::string_view(text).substr(0, i))) return false;
        s.held = std::move(text);
        return true;
      }
      s.phase = Phase::kObject;
      s.held.clear();
      return into_object && s.feed(text);
    }
  }
  return false;
}

bool JsonConstraint::complete() const {
  return state_.phase == Phase::kObject && (state_.matcher ? state_.matcher->complete() : state_.json.complete());
}

namespace {

Grammar::ByteSet next_bytes(const GrammarMatcher& m) { return m.next_bytes(); }

Grammar::ByteSet next_bytes(const JsonGrammar& g) {
  Grammar::ByteSet out;
  for (unsigned c = 0; c < 256; ++c) {
    JsonGrammar copy = g;
    if (copy.feed(static_cast<unsigned char>(c))) out.set(c);
  }
  return out;
}

std::uint32_t text_room(const GrammarMatcher& m) { return m.free_text_room(); }
std::uint32_t text_room(const JsonGrammar& g) { return g.in_plain_string() ? Grammar::kUnbounded : 0; }

// Sets in `mask` the tokens of `vocab` that recogniser `r` (a JsonGrammar
// or a GrammarMatcher) may take next; returns whether there is one. The
// recogniser after each byte that may come first, and the bytes that may
// come second, are worked out once: most tokens are refused at their first
// or second byte without being tried (in many vocabularies half the tokens
// start with a space, which JSON allows). Inside a string, plain text is
// known to fit.
// `spent()` says when the tries have cost too much: the tokens not yet
// tried are then refused (plain text known to fit is still allowed).
template <class R, class Spent>
bool object_mask(const R& r, const JsonVocab& vocab, std::vector<std::uint64_t>* mask, Spent spent) {
  const std::uint32_t room = text_room(r);  // characters of plain text that fit
  auto allow = [&](std::size_t t) { (*mask)[t / 64] |= std::uint64_t{1} << (t % 64); };
  bool any = false;
  R scratch = r;
  if constexpr (std::is_same_v<R, JsonGrammar>) {
    if (room > 0) {
      // Inside a string the tokens left to try have many first bytes
      // (quotes, escapes, parts of UTF-8 characters): JsonGrammar, cheap to
      // copy, tries each rather than work out a state per first byte
      // (measured: 0.10 against 0.16 ms a step, gpt-2 vocabulary).
      for (std::size_t t = 0; t < vocab.bytes.size(); ++t) {
        const std::string& b = vocab.bytes[t];
        if (b.empty()) continue;
        if (!vocab.plain[t]) {
          scratch = r;
          if (!scratch.feed(b)) continue;
        }
        allow(t);
        any = true;
      }
      return any;
    }
  }
  const Grammar::ByteSet first = next_bytes(r);
  std::vector<std::optional<R>> after(256);  // worked out when first needed
  std::vector<Grammar::ByteSet> second(256);
  std::array<bool, 256> fits{};  // (next_bytes may say a byte fits that, at a bound, does not)
  for (std::size_t t = 0; t < vocab.bytes.size(); ++t) {
    const std::string& b = vocab.bytes[t];
    if (b.empty()) continue;
    if (!(room > 0 && vocab.plain[t] && vocab.chars[t] <= room)) {
      const auto c0 = static_cast<unsigned char>(b[0]);
      if (!first[c0] || spent()) continue;
      if (!after[c0]) {
        after[c0] = r;
        fits[c0] = after[c0]->feed(c0);
        if (fits[c0]) second[c0] = next_bytes(*after[c0]);
      }
      if (!fits[c0]) continue;
      if (b.size() > 1) {
        if (!second[c0][static_cast<unsigned char>(b[1])]) continue;
        scratch = *after[c0];
        if (!scratch.feed(std::string_view(b).substr(1))) continue;
      }
    }
    allow(t);
    any = true;
  }
  return any;
}

}  // namespace

// Before the answer's first bytes: whitespace, then the open tag or the
// object. The tokens that begin the object are worked out as in the object
// (object_mask, from the recogniser after the whitespace held), so a dear
// grammar costs what it costs there and is bounded the same way; the
// tokens that may continue the open tag, or are whitespace, are tried.
template <class Spent>
bool JsonConstraint::opening_mask(std::vector<std::uint64_t>* mask, Spent spent) const {
  const std::string& open = think_.open;
  const std::string& held = state_.held;
  // held: whitespace, then at most a proper prefix of the open tag
  std::size_t tag = 0;
  while (tag < held.size() && is_space(static_cast<unsigned char>(held[tag]))) ++tag;
  const std::string_view after_tag = std::string_view(open).substr(held.size() - tag);
  // The object from what is held (whitespace, or the start of the tag
  // where the object may begin as the tag does: Hermes calls'
  // "<tool_call>").
  State s = state_;
  s.phase = Phase::kObject;
  s.held.clear();
  if (s.feed(held)) {
    if (s.matcher)
      object_mask(*s.matcher, *vocab_, mask, spent);
    else
      object_mask(s.json, *vocab_, mask, spent);
  }
  for (std::size_t t = 0; t < vocab_->bytes.size(); ++t) {
    const std::string_view b = vocab_->bytes[t];
    if (b.empty()) continue;
    std::size_t i = 0;
    if (tag == held.size())
      while (i < b.size() && is_space(static_cast<unsigned char>(b[i]))) ++i;
    // What follows the whitespace must agree with the rest of the tag
    // (the rest go on to the object: object_mask has decided those)
    const std::string_view r = b.substr(i);
    const std::size_t k = std::min(r.size(), after_tag.size());
    if (!r.empty() && r.substr(0, k) != after_tag.substr(0, k)) continue;
    // Whitespace alone (which the object takes too) or the tag: decided
    // by trying, as accept() will.
    State tried = state_;
    const std::uint64_t bit = std::uint64_t{1} << (t % 64);
    if (take(tried, b, /*into_object=*/!spent()))
      (*mask)[t / 64] |= bit;
    else
      (*mask)[t / 64] &= ~bit;
  }
  return std::any_of(mask->begin(), mask->end(), [](std::uint64_t w) { return w != 0; });
}

void JsonConstraint::allowed(std::vector<std::uint64_t>* mask) {
  const std::size_t n = vocab_->bytes.size();
  mask->assign((n + 63) / 64, 0);
  const std::size_t mark = arena_ ? arena_->nodes.size() : 0;  // what the tries add is dropped after
  // A very ambiguous grammar makes each try dear: the step's tries are
  // bounded by the work they do (2^18 stacks stepped, rules entered and
  // nodes compared: about 10 ms) and the stack nodes they make (about
  // 20 MB). Past that, the tries that would feed the grammar are refused.
  GrammarArena* arena = arena_.get();
  const std::uint64_t work = arena ? arena->work : 0;
  auto spent = [arena, mark, work] {
    return arena && (arena->work - work > (std::uint64_t{1} << 18) || arena->nodes.size() - mark > (std::size_t{1} << 20));
  };
  bool any = false;
  bool may_end = false;  // besides other tokens
  if (failed_ || complete()) {
  } else if (state_.phase == Phase::kObject) {
    any = state_.matcher ? object_mask(*state_.matcher, *vocab_, mask, spent) : object_mask(state_.json, *vocab_, mask, spent);
    may_end = state_.matcher && state_.matcher->accepting();
  } else if (state_.phase == Phase::kOpening) {
    any = opening_mask(mask, spent);
  } else {
    for (std::size_t t = 0; t < n; ++t) {
      const std::string& b = vocab_->bytes[t];
      if (b.empty()) continue;
      // Free text that cannot complete the close tag needs no trying.
      if (b.find(think_.close.back()) != std::string::npos) {
        State s = state_;
        if (!take(s, b, /*into_object=*/!spent())) continue;
      }
      (*mask)[t / 64] |= std::uint64_t{1} << (t % 64);
      any = true;
    }
  }
  if (arena_) {
    arena_->nodes.resize(mark);
    // What the tries grew is not kept past the step.
    if (arena_->nodes.capacity() > (std::size_t{1} << 18) && arena_->nodes.capacity() > 4 * mark) arena_->nodes.shrink_to_fit();
  }
  if (lead_allowed())
    for (std::int32_t t : lead_) (*mask)[static_cast<std::size_t>(t) / 64] |= std::uint64_t{1} << (t % 64);
  // Inside the thinking the answer may also end: a model that stops there
  // gives no object (and empty content) rather than being kept writing to
  // max_tokens.
  if (any && !may_end && state_.phase != Phase::kThinking) return;
  // The object is whole (or cannot go on): the end may come. A vocabulary
  // without an end token cannot be held to anything.
  for (std::int32_t t : vocab_->end_tokens) (*mask)[static_cast<std::size_t>(t) / 64] |= std::uint64_t{1} << (t % 64);
  if (vocab_->end_tokens.empty() && !any)
    for (std::size_t t = 0; t < n; ++t) (*mask)[t / 64] |= std::uint64_t{1} << (t % 64);
}

bool JsonConstraint::lead_allowed() const {
  if (lead_.empty() || lead_taken_ || failed_) return false;
  if (state_.phase == Phase::kObject) return !state_.fed;
  return state_.phase == Phase::kOpening &&
         std::all_of(state_.held.begin(), state_.held.end(), [](char c) { return is_space(static_cast<unsigned char>(c)); });
}

void JsonConstraint::accept(std::int32_t token) {
  if (lead_allowed() && std::find(lead_.begin(), lead_.end(), token) != lead_.end()) {
    // No text; the object follows (no thinking after it).
    lead_taken_ = true;
    if (state_.phase == Phase::kOpening) {
      state_.phase = Phase::kObject;
      if (!state_.feed(state_.held)) failed_ = true;
      state_.held.clear();
    }
    return;
  }
  if (failed_ || token < 0 || static_cast<std::size_t>(token) >= vocab_->bytes.size()) return;
  const std::string& b = vocab_->bytes[static_cast<std::size_t>(token)];
  if (!b.empty() && !take(state_, b)) failed_ = true;
  // Stacks left behind by earlier bytes are garbage; past a size, the
  // arena keeps only the matcher's.
  if (arena_ && arena_->nodes.size() > (std::size_t{1} << 20)) state_.matcher->compact();
}

}  // namespace airlock::engine
