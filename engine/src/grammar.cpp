#include "airlock/engine/grammar.h"

#include <algorithm>
#include <array>
#include <utility>

namespace airlock::engine {

Grammar::Symbol Grammar::byte(unsigned char c) {
  Symbol s;
  s.bytes.set(c);
  return s;
}

Grammar::Symbol Grammar::range(unsigned char lo, unsigned char hi) {
  Symbol s;
  for (unsigned c = lo; c <= hi; ++c) s.bytes.set(c);
  return s;
}

Grammar::Symbol Grammar::set(const ByteSet& bytes) {
  Symbol s;
  s.bytes = bytes;
  return s;
}

Grammar::Symbol Grammar::ref(RuleId r) {
  Symbol s;
  s.kind = Symbol::Kind::kRule;
  s.rule = r;
  return s;
}

Grammar::Symbol Grammar::string(std::uint32_t min_chars, std::uint32_t max_chars) {
  Symbol s;
  s.kind = Symbol::Kind::kString;
  s.min_chars = min_chars;
  s.max_chars = max_chars;
  return s;
}

Grammar::Symbol Grammar::run(const ByteSet& ascii, CodePoints wide, std::uint32_t min_chars, std::uint32_t max_chars) {
  Symbol s;
  s.kind = Symbol::Kind::kRun;
  for (unsigned c = 0; c < 128; ++c) s.bytes[c] = ascii[c];
  s.wide = std::move(wide);
  s.min_chars = min_chars;
  s.max_chars = max_chars;
  return s;
}

void Grammar::literal(std::string_view text, std::vector<Symbol>* out) {
  for (char c : text) out->push_back(byte(static_cast<unsigned char>(c)));
}

Grammar::RuleId Grammar::add_rule() {
  rules_.emplace_back();
  return static_cast<RuleId>(rules_.size() - 1);
}

void Grammar::add_alternative(RuleId r, const std::vector<Symbol>& symbols) {
  rules_[r].push_back(static_cast<std::uint32_t>(elements_.size()));
  for (const Symbol& s : symbols) {
    switch (s.kind) {
      case Symbol::Kind::kRule:
        elements_.push_back({Kind::kRule, s.rule});
        break;
      case Symbol::Kind::kString:
        elements_.push_back({Kind::kString, static_cast<std::uint32_t>(strings_.size())});
        strings_.push_back({s.min_chars, s.max_chars});
        break;
      case Symbol::Kind::kRun:
        elements_.push_back({Kind::kRun, static_cast<std::uint32_t>(runs_.size())});
        runs_.push_back({s.min_chars, s.max_chars, s.bytes, s.wide});
        break;
      case Symbol::Kind::kBytes: {
        auto [it, added] = set_index_.try_emplace(s.bytes, static_cast<std::uint32_t>(sets_.size()));
        if (added) sets_.push_back(s.bytes);
        elements_.push_back({Kind::kBytes, it->second});
        break;
      }
    }
  }
  elements_.push_back({Kind::kEnd, 0});
}

namespace {

// Where a string element is (GrammarArena::Node::lex): the low four bits
// say which state, the rest that state's details.
enum Lex : std::uint32_t {
  kBefore = 0,     // its opening quote is due
  kBody = 1,       // between characters
  kEscape = 2,     // after a backslash
  kHex = 3,        // in \\uXXXX: bits 4-7 digits left, bit 8 the low half of a pair, bit 9 first digit D, bit 10 a high half
  kUtf8 = 4,       // in a UTF-8 character: bits 4-7 bytes left, bits 8-11 the next byte's range
  kLowSlash = 5,   // after a high surrogate's escape: its low half's backslash is due
  kLowU = 6,       // then its 'u'
};
constexpr std::uint32_t kLowHalf = 1u << 8, kFirstD = 1u << 9, kHighHalf = 1u << 10;

bool is_hex(unsigned char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

// The next byte's range in a UTF-8 character: narrower after some leads
// (no overlong forms, no surrogates, nothing past U+10FFFF).
bool in_range(std::uint32_t range, unsigned char c) {
  switch (range) {
    case 1: return c >= 0xA0 && c <= 0xBF;
    case 2: return c >= 0x80 && c <= 0x9F;
    case 3: return c >= 0x90 && c <= 0xBF;
    case 4: return c >= 0x80 && c <= 0x8F;
    default: return c >= 0x80 && c <= 0xBF;
  }
}

enum class Step { kRefused, kInside, kClosed };

// A run's class holds every character of plain text (printable ASCII but
// the quote and the backslash, DEL, and every non-ASCII character).
bool holds_plain_text(const Grammar::Run& r) {
  static const Grammar::CodePoints kAll = {{0x80, 0xD7FF}, {0xE000, 0x10FFFF}};
  if (r.wide != kAll) return false;
  for (unsigned c = 0x20; c < 0x80; ++c)
    if (c != '"' && c != '\\' && !r.ascii[c]) return false;
  return true;
}

// Byte c of a string with `b`'s bounds, at (*lex, *count).
Step string_step(std::uint32_t min_chars, std::uint32_t max_chars, std::uint32_t* lex, std::uint32_t* count, unsigned char c) {
  const std::uint32_t state = *lex & 0xFu;
  auto begin_char = [&] {
    if (*count >= max_chars) return false;
    ++*count;
    return true;
  };
  switch (state) {
    case kBefore:
      if (c != '"') return Step::kRefused;
      *lex = kBody;
      return Step::kInside;
    case kBody:
      if (c == '"') return *count >= min_chars ? Step::kClosed : Step::kRefused;
      if (c < 0x20) return Step::kRefused;
      if (c == '\\') {
        if (!begin_char()) return Step::kRefused;
        *lex = kEscape;
        return Step::kInside;
      }
      if (c < 0x80) return begin_char() ? Step::kInside : Step::kRefused;
      {
        std::uint32_t left = 0, range = 0;
        if (c >= 0xC2 && c <= 0xDF) left = 1;
        else if (c == 0xE0) left = 2, range = 1;
        else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) left = 2;
        else if (c == 0xED) left = 2, range = 2;
        else if (c == 0xF0) left = 3, range = 3;
        else if (c >= 0xF1 && c <= 0xF3) left = 3;
        else if (c == 0xF4) left = 3, range = 4;
        else return Step::kRefused;
        if (!begin_char()) return Step::kRefused;
        *lex = kUtf8 | (left << 4) | (range << 8);
        return Step::kInside;
      }
    case kUtf8: {
      const std::uint32_t left = (*lex >> 4) & 0xFu, range = (*lex >> 8) & 0xFu;
      if (!in_range(range, c)) return Step::kRefused;
      *lex = left == 1 ? kBody : kUtf8 | ((left - 1) << 4);
      return Step::kInside;
    }
    case kEscape:
      if (c == 'u') {
        *lex = kHex | (4u << 4);
        return Step::kInside;
      }
      if (c != '"' && c != '\\' && c != '/' && c != 'b' && c != 'f' && c != 'n' && c != 'r' && c != 't') return Step::kRefused;
      *lex = kBody;
      return Step::kInside;
    case kHex: {
      if (!is_hex(c)) return Step::kRefused;
      const std::uint32_t left = (*lex >> 4) & 0xFu;
      std::uint32_t flags = *lex & (kLowHalf | kFirstD | kHighHalf);
      const bool d = c == 'd' || c == 'D';
      if (left == 4) {
        if (flags & kLowHalf) {
          if (!d) return Step::kRefused;  // a low half is \\uDC00-\\uDFFF
        } else if (d) {
          flags |= kFirstD;
        }
      } else if (left == 3) {
        const bool c_to_f = (c >= 'c' && c <= 'f') || (c >= 'C' && c <= 'F');
        const bool eight_to_b = c == '8' || c == '9' || (c >= 'a' && c <= 'b') || (c >= 'A' && c <= 'B');
        if (flags & kLowHalf) {
          if (!c_to_f) return Step::kRefused;
        } else if (flags & kFirstD) {
          if (c_to_f) return Step::kRefused;  // a low half alone
          if (eight_to_b) flags |= kHighHalf;
        }
      }
      if (left > 1) {
        *lex = kHex | ((left - 1) << 4) | flags;
        return Step::kInside;
      }
      *lex = (flags & kHighHalf) ? kLowSlash : kBody;
      return Step::kInside;
    }
    case kLowSlash:
      if (c != '\\') return Step::kRefused;
      *lex = kLowU;
      return Step::kInside;
    case kLowU:
      if (c != 'u') return Step::kRefused;
      *lex = kHex | (4u << 4) | kLowHalf;
      return Step::kInside;
    default:
      return Step::kRefused;
  }
}

// A run's character steps: kInside (within a character), kChar (one
// ended), kRefused.
enum class RunStep { kRefused, kInside, kChar };

// In a run's UTF-8 character, lex holds: bits 4-7 the bytes left, bits 8-10
// the character's length, bits 11-31 its code point's bits so far. In
// \u00xx: bits 4-7 the digits left, bits 8-15 the value so far.
constexpr unsigned kLengthShift = 8, kPointShift = 11;

// Some code point of `wide` begins with `bits` (then `left` more bytes'
// worth) in an n-byte UTF-8 form.
bool could_be(const Grammar::CodePoints& wide, std::uint32_t bits, std::uint32_t left, std::uint32_t n) {
  const std::uint32_t least = n == 2 ? 0x80 : n == 3 ? 0x800 : 0x10000;  // (shorter forms are overlong)
  const std::uint32_t lo = std::max(bits << (6 * left), least);
  const std::uint32_t hi = std::min((bits << (6 * left)) | ((1u << (6 * left)) - 1), 0x10FFFFu);
  if (lo > hi) return false;
  const auto it = std::partition_point(wide.begin(), wide.end(), [&](const auto& r) { return r.second < lo; });
  return it != wide.end() && it->first <= hi;
}

// Whether the class holds a control character written \u00xx whose first
// hex digit after "00" is `hi` (0 or 1; 2: either).
bool holds_u_escape(const Grammar::ByteSet& ascii, unsigned hi) {
  for (unsigned v = 0; v < 0x20; ++v)
    if (ascii[v] && v != '\b' && v != '\t' && v != '\n' && v != '\f' && v != '\r' && (hi == 2 || v >> 4 == hi)) return true;
  return false;
}

// Byte c of run `r` at (*lex, *count). Each character is written one way
// (grammar.h). A byte is taken only if the character it begins or goes on
// with can still end in the class: a live matcher always has a way on.
RunStep run_step(const Grammar::Run& r, std::uint32_t* lex, std::uint32_t* count, unsigned char c) {
  const Grammar::ByteSet& ascii = r.ascii;
  const std::uint32_t state = *lex & 0xFu;
  auto one = [&](unsigned v) {
    if (!ascii[v]) return RunStep::kRefused;
    *lex = kBody;
    return RunStep::kChar;
  };
  switch (state) {
    case kBody: {
      if (*count >= r.max_chars || c < 0x20 || c == '"') return RunStep::kRefused;
      if (c == '\\') {
        if (!ascii['"'] && !ascii['\\'] && !ascii['\b'] && !ascii['\f'] && !ascii['\n'] && !ascii['\r'] && !ascii['\t'] &&
            !holds_u_escape(ascii, 2))
          return RunStep::kRefused;
        ++*count;
        *lex = kEscape;
        return RunStep::kInside;
      }
      if (c < 0x80) {
        if (!ascii[c]) return RunStep::kRefused;
        ++*count;
        return RunStep::kChar;
      }
      std::uint32_t n = 0, bits = 0;
      if (c >= 0xC2 && c <= 0xDF) n = 2, bits = c & 0x1Fu;
      else if (c >= 0xE0 && c <= 0xEF) n = 3, bits = c & 0x0Fu;
      else if (c >= 0xF0 && c <= 0xF4) n = 4, bits = c & 0x07u;
      if (n == 0 || !could_be(r.wide, bits, n - 1, n)) return RunStep::kRefused;
      ++*count;
      *lex = kUtf8 | ((n - 1) << 4) | (n << kLengthShift) | (bits << kPointShift);
      return RunStep::kInside;
    }
    case kUtf8: {
      const std::uint32_t left = (*lex >> 4) & 0xFu, n = (*lex >> kLengthShift) & 0x7u;
      if (c < 0x80 || c > 0xBF) return RunStep::kRefused;
      const std::uint32_t bits = ((*lex >> kPointShift) << 6) | (c & 0x3Fu);
      if (!could_be(r.wide, bits, left - 1, n)) return RunStep::kRefused;
      if (left == 1) {
        *lex = kBody;
        return RunStep::kChar;
      }
      *lex = kUtf8 | ((left - 1) << 4) | (n << kLengthShift) | (bits << kPointShift);
      return RunStep::kInside;
    }
    case kEscape:
      switch (c) {
        case '"': return one('"');
        case '\\': return one('\\');
        case 'b': return one('\b');
        case 'f': return one('\f');
        case 'n': return one('\n');
        case 'r': return one('\r');
        case 't': return one('\t');
        case 'u':
          if (!holds_u_escape(ascii, 2)) return RunStep::kRefused;
          *lex = kHex | (4u << 4);
          return RunStep::kInside;
        default: return RunStep::kRefused;
      }
    case kHex: {
      // \u00xx for control characters without a short escape.
      const std::uint32_t left = (*lex >> 4) & 0xFu, value = (*lex >> 8) & 0xFFu;
      if (left >= 3) {
        if (c != '0') return RunStep::kRefused;
        *lex = kHex | ((left - 1) << 4);
        return RunStep::kInside;
      }
      if (left == 2) {
        if ((c != '0' && c != '1') || !holds_u_escape(ascii, static_cast<unsigned>(c - '0'))) return RunStep::kRefused;
        *lex = kHex | (1u << 4) | (static_cast<std::uint32_t>(c - '0') << 8);
        return RunStep::kInside;
      }
      const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
      if (d < 0) return RunStep::kRefused;
      const unsigned v = value * 16 + static_cast<unsigned>(d);
      if (v == '\b' || v == '\t' || v == '\n' || v == '\f' || v == '\r') return RunStep::kRefused;  // written short
      return one(v);
    }
    default:
      return RunStep::kRefused;
  }
}

}  // namespace

GrammarMatcher::GrammarMatcher(const Grammar* grammar, GrammarArena* arena) : g_(grammar), arena_(arena) {
  work_ = kMaxWork;
  for (std::uint32_t start : g_->rules_[g_->start_]) expand(start, kBottom, 0);
  dedupe();
}

std::uint32_t GrammarMatcher::push(std::uint32_t pos, std::uint32_t tail, std::uint32_t lex, std::uint32_t count) {
  const std::uint32_t depth = tail == kBottom ? 1 : arena_->nodes[tail].depth + 1;
  if (depth > kMaxDepth) return kDropped;
  arena_->nodes.push_back({pos, tail, depth, lex, count});
  return static_cast<std::uint32_t>(arena_->nodes.size() - 1);
}

void GrammarMatcher::emit(std::uint32_t top) {
  if (next_.size() < kMaxStacks) next_.push_back(top);
}

// Brings the stack "element `pos`, then `tail`" to a byte set or a string
// on top, one stack per way there.
void GrammarMatcher::expand(std::uint32_t pos, std::uint32_t tail, int guard) {
  if (next_.size() >= kMaxStacks || --work_ < 0) return;
  const Grammar::Element e = g_->elements_[pos];
  switch (e.kind) {
    case Grammar::Kind::kBytes:
    case Grammar::Kind::kString:
      if (const std::uint32_t n = push(pos, tail); n != kDropped) emit(n);
      return;
    case Grammar::Kind::kRun: {
      const Grammar::Run& r = g_->runs_[e.arg];
      if (r.max_chars > 0)
        if (const std::uint32_t n = push(pos, tail, kBody, 0); n != kDropped) emit(n);
      if (r.min_chars == 0) expand(pos + 1, tail, guard);
      return;
    }
    case Grammar::Kind::kRule:
      expand_rule(pos, tail, guard);
      return;
    case Grammar::Kind::kEnd: {
      if (tail == kBottom) {
        emit(kAccept);
        return;
      }
      // The alternative is done: go on with what its rule was followed by
      // (a node below the top is a byte set, a string, a run or a rule,
      // never an end; a string or run there has not begun).
      const GrammarArena::Node t = arena_->nodes[tail];
      const Grammar::Kind k = g_->elements_[t.pos].kind;
      if (k == Grammar::Kind::kRule) expand_rule(t.pos, t.next, guard);
      else if (k == Grammar::Kind::kRun) expand(t.pos, t.next, guard);  // begun afresh (pushed with lex 0)
      else emit(tail);
      return;
    }
  }
}

void GrammarMatcher::expand_rule(std::uint32_t pos, std::uint32_t tail, int guard) {
  if (guard >= kMaxExpansion) return;
  // What follows the rule, unless it is the end of this alternative (a
  // rule in tail position adds nothing to the stack: loops stay flat).
  std::uint32_t cont = tail;
  if (g_->elements_[pos + 1].kind != Grammar::Kind::kEnd) {
    cont = push(pos + 1, tail);
    if (cont == kDropped) return;
  }
  for (std::uint32_t start : g_->rules_[g_->elements_[pos].arg]) expand(start, cont, guard + 1);
}

void GrammarMatcher::string_step(std::uint32_t top, unsigned char c) {
  const GrammarArena::Node n = arena_->nodes[top];
  const Grammar::Bounds b = g_->strings_[g_->elements_[n.pos].arg];
  std::uint32_t lex = n.lex, count = n.count;
  switch (::airlock::engine::string_step(b.min_chars, b.max_chars, &lex, &count, c)) {
    case Step::kRefused:
      return;
    case Step::kClosed:
      expand(n.pos + 1, n.next, 0);
      return;
    case Step::kInside:
      if (next_.size() < kMaxStacks)
        if (const std::uint32_t id = push(n.pos, n.next, lex, count); id != kDropped) emit(id);
      return;
  }
}

void GrammarMatcher::run_step(std::uint32_t top, unsigned char c) {
  const GrammarArena::Node n = arena_->nodes[top];
  const Grammar::Run& r = g_->runs_[g_->elements_[n.pos].arg];
  std::uint32_t lex = n.lex, count = n.count;
  const RunStep step = ::airlock::engine::run_step(r, &lex, &count, c);
  if (step == RunStep::kRefused) return;
  // Without an upper bound, counts past the lower one behave alike: kept
  // equal, such stacks merge (else an unanchored pattern's tail would keep
  // one stack per place it could have begun).
  if (r.max_chars == Grammar::kUnbounded && count > r.min_chars) count = r.min_chars;
  // Within a character, or between two with room for more: the run goes
  // on (pushed first, so kMaxStacks never drops it for the rest).
  if ((step == RunStep::kInside || count < r.max_chars) && next_.size() < kMaxStacks)
    if (const std::uint32_t id = push(n.pos, n.next, lex, count); id != kDropped) emit(id);
  // What follows the run is expanded once every string and run has
  // stepped (feed): expanding it here could fill kMaxStacks before a later
  // run had pushed itself, and free_text_room counts on runs never being
  // dropped.
  if (step == RunStep::kChar && count >= r.min_chars) after_runs_.emplace_back(n.pos + 1, n.next);
}

bool GrammarMatcher::feed(unsigned char c) {
  next_.clear();
  work_ = kMaxWork;
  // Strings and runs first: each steps to one stack of its own, so none is
  // lost to kMaxStacks however the others expand (free_text_room counts on
  // it).
  after_runs_.clear();
  for (std::uint32_t top : tops_) {
    if (top == kAccept) continue;
    const Grammar::Kind k = g_->elements_[arena_->nodes[top].pos].kind;
    if (k == Grammar::Kind::kString) string_step(top, c);
    else if (k == Grammar::Kind::kRun) run_step(top, c);
  }
  for (const auto& [pos, tail] : after_runs_) expand(pos, tail, 0);
  for (std::uint32_t top : tops_) {
    if (top == kAccept) continue;
    const GrammarArena::Node n = arena_->nodes[top];
    const Grammar::Element e = g_->elements_[n.pos];
    if (e.kind != Grammar::Kind::kBytes || !g_->sets_[e.arg][c]) continue;
    expand(n.pos + 1, n.next, 0);
  }
  dedupe();
  arena_->work += tops_.size() + static_cast<std::uint64_t>(kMaxWork - std::max(work_, 0)) +
                  static_cast<std::uint64_t>(kMaxWork - std::max(compare_budget_, 0));
  return !tops_.empty();
}

bool GrammarMatcher::same_stack(std::uint32_t a, std::uint32_t b) {
  while (a != b) {
    if (a == kBottom || b == kBottom || a == kAccept || b == kAccept) return false;
    if (--compare_budget_ < 0) return false;  // past the budget: kept as different
    const GrammarArena::Node& x = arena_->nodes[a];
    const GrammarArena::Node& y = arena_->nodes[b];
    if (x.pos != y.pos || x.depth != y.depth || x.lex != y.lex || x.count != y.count) return false;
    a = x.next;
    b = y.next;
  }
  return true;
}

// Leaves one of each stack in tops_ (ways through the rules that met
// again would otherwise multiply at every byte).
void GrammarMatcher::dedupe() {
  // (The lexer state and count are in the key: runs and strings at one
  // place but different counts are told apart without comparing stacks.)
  using Key = std::array<std::uint32_t, 4>;
  auto key = [&](std::uint32_t t) {
    if (t == kAccept) return Key{kAccept, 0, 0, 0};
    const GrammarArena::Node& n = arena_->nodes[t];
    return Key{n.pos, n.depth, n.lex, n.count};
  };
  std::sort(next_.begin(), next_.end(), [&](std::uint32_t a, std::uint32_t b) { return key(a) < key(b) || (key(a) == key(b) && a < b); });
  tops_.clear();
  // Stacks alike down to a deep difference cost their depth to compare:
  // the comparisons of one byte are bounded (past it, stacks that may be
  // the same are kept apart: more work later, the same sentences).
  compare_budget_ = kMaxWork;
  std::size_t group = 0;  // first of the run of equal keys in tops_
  for (std::uint32_t t : next_) {
    if (!tops_.empty() && key(tops_.back()) != key(t)) group = tops_.size();
    bool seen = false;
    for (std::size_t i = group; i < tops_.size() && !seen; ++i) seen = same_stack(tops_[i], t);
    if (!seen) tops_.push_back(t);
  }
  next_.clear();
}

bool GrammarMatcher::accepting() const { return std::find(tops_.begin(), tops_.end(), kAccept) != tops_.end(); }

bool GrammarMatcher::complete() const { return std::all_of(tops_.begin(), tops_.end(), [](std::uint32_t t) { return t == kAccept; }); }

std::uint32_t GrammarMatcher::free_text_room() const {
  // A string stack steps through plain text to one stack, and feed() steps
  // strings before the rest, so none is lost to kMaxStacks: plain text that
  // fits one string's room is taken, whatever the other stacks do.
  std::uint32_t room = 0;
  for (std::uint32_t t : tops_) {
    if (t == kAccept) continue;
    const GrammarArena::Node& n = arena_->nodes[t];
    const Grammar::Element e = g_->elements_[n.pos];
    if (n.lex != kBody) continue;
    if (e.kind == Grammar::Kind::kString) room = std::max(room, g_->strings_[e.arg].max_chars - n.count);
    if (e.kind == Grammar::Kind::kRun && holds_plain_text(g_->runs_[e.arg]))
      room = std::max(room, g_->runs_[e.arg].max_chars - n.count);
  }
  return room;
}

Grammar::ByteSet GrammarMatcher::next_bytes() const {
  Grammar::ByteSet out;
  // A string's next bytes depend only on its state and on whether it may
  // close and may take another character: each such case is worked out once.
  std::vector<std::uint64_t> seen;
  for (std::uint32_t t : tops_) {
    if (t == kAccept) continue;
    const GrammarArena::Node& n = arena_->nodes[t];
    const Grammar::Element e = g_->elements_[n.pos];
    if (e.kind == Grammar::Kind::kBytes) {
      out |= g_->sets_[e.arg];
      continue;
    }
    if (e.kind == Grammar::Kind::kRun) {
      // (Worked out once for each run, state and whether there is room.)
      const Grammar::Run& r = g_->runs_[e.arg];
      const std::uint64_t key = std::uint64_t{1} << 63 | std::uint64_t{e.arg} << 33 | std::uint64_t{n.lex} << 1 | (n.count < r.max_chars);
      if (std::find(seen.begin(), seen.end(), key) != seen.end()) continue;
      seen.push_back(key);
      for (unsigned c = 0; c < 256; ++c) {
        std::uint32_t lex = n.lex, count = n.count;
        if (!out[c] && ::airlock::engine::run_step(r, &lex, &count, static_cast<unsigned char>(c)) != RunStep::kRefused)
          out.set(c);
      }
      continue;
    }
    const Grammar::Bounds b = g_->strings_[e.arg];
    const std::uint64_t key = std::uint64_t{n.lex} << 2 | std::uint64_t{n.count >= b.min_chars} << 1 | (n.count < b.max_chars);
    if (std::find(seen.begin(), seen.end(), key) != seen.end()) continue;
    seen.push_back(key);
    for (unsigned c = 0; c < 256; ++c) {
      std::uint32_t lex = n.lex, count = n.count;
      if (!out[c] && ::airlock::engine::string_step(b.min_chars, b.max_chars, &lex, &count, static_cast<unsigned char>(c)) != Step::kRefused)
        out.set(c);
    }
  }
  return out;
}

void GrammarMatcher::compact() {
  GrammarArena fresh;
  std::unordered_map<std::uint32_t, std::uint32_t> moved;  // old id -> new id
  // Copies the stack under `id`, bottom first, sharing what was shared.
  auto copy = [&](std::uint32_t id) {
    std::vector<std::uint32_t> path;
    while (id != kBottom && !moved.count(id)) {
      path.push_back(id);
      id = arena_->nodes[id].next;
    }
    std::uint32_t below = id == kBottom ? kBottom : moved[id];
    for (auto it = path.rbegin(); it != path.rend(); ++it) {
      const GrammarArena::Node& n = arena_->nodes[*it];
      fresh.nodes.push_back({n.pos, below, n.depth, n.lex, n.count});
      below = static_cast<std::uint32_t>(fresh.nodes.size() - 1);
      moved[*it] = below;
    }
    return below;
  };
  for (std::uint32_t& t : tops_)
    if (t != kAccept) t = copy(t);
  arena_->nodes = std::move(fresh.nodes);
}

}  // namespace airlock::engine
