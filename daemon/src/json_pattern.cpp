#include "json_pattern.h"

#include <algorithm>
#include <bitset>
#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

namespace airlock::daemon {
namespace {

using engine::Grammar;
using Rule = Grammar::RuleId;
using Seq = std::vector<Grammar::Symbol>;

constexpr std::size_t kMaxPatternBytes = 1000;
constexpr int kMaxCount = 1000;
constexpr int kMaxNesting = 64;
constexpr int kMaxNullableCount = 64;
constexpr long kMaxChain = 512;  // rules entered in a row without reading (the recogniser allows 1,024)

constexpr std::uint32_t kLastCodePoint = 0x10FFFF;

// A set of characters: ASCII ones by bit, the others as sorted, disjoint
// intervals of code points from U+0080 (surrogates never in them).
struct CharSet {
  std::bitset<128> ascii;
  std::vector<std::pair<std::uint32_t, std::uint32_t>> wide;
};

// Adds code points lo to hi (either side of ASCII, surrogates left out).
void set_range(CharSet* s, std::uint32_t lo, std::uint32_t hi) {
  for (std::uint32_t c = lo; c <= hi && c < 128; ++c) s->ascii.set(c);
  lo = std::max<std::uint32_t>(lo, 0x80);
  hi = std::min(hi, kLastCodePoint);
  if (lo > hi) return;
  auto& w = s->wide;
  if (lo < 0xD800 && hi >= 0xD800) w.emplace_back(lo, 0xD7FF);
  if (hi > 0xDFFF && lo <= 0xDFFF) w.emplace_back(0xE000, hi);
  if (hi < 0xD800 || lo > 0xDFFF) w.emplace_back(lo, hi);
  std::sort(w.begin(), w.end());
  std::vector<std::pair<std::uint32_t, std::uint32_t>> merged;
  for (const auto& r : w) {
    if (!merged.empty() && r.first <= merged.back().second + 1) merged.back().second = std::max(merged.back().second, r.second);
    else merged.push_back(r);
  }
  w = std::move(merged);
}

void add(CharSet* to, const CharSet& from) {
  to->ascii |= from.ascii;
  for (const auto& [lo, hi] : from.wide) set_range(to, lo, hi);
}

CharSet complement(const CharSet& s) {
  CharSet out;
  out.ascii = ~s.ascii;
  std::uint32_t next = 0x80;
  for (const auto& [lo, hi] : s.wide) {
    if (lo > next) set_range(&out, next, lo - 1);
    next = hi + 1;
  }
  if (next <= kLastCodePoint) set_range(&out, next, kLastCodePoint);
  return out;
}

CharSet digits() {
  CharSet s;
  set_range(&s, '0', '9');
  return s;
}
CharSet word() {
  CharSet s = digits();
  set_range(&s, 'a', 'z');
  set_range(&s, 'A', 'Z');
  s.ascii.set('_');
  return s;
}
CharSet space() {  // ECMA-262's WhiteSpace and LineTerminator
  CharSet s;
  set_range(&s, 9, 13);
  s.ascii.set(' ');
  for (std::uint32_t c : {0xA0u, 0x1680u, 0x2028u, 0x2029u, 0x202Fu, 0x205Fu, 0x3000u, 0xFEFFu}) set_range(&s, c, c);
  set_range(&s, 0x2000, 0x200A);
  return s;
}

// A parsed pattern: a character, a sequence, alternatives or a repetition.
struct Node {
  enum class Kind : std::uint8_t { kSet, kSequence, kAlternatives, kRepeat };
  Kind kind = Kind::kSequence;
  CharSet set;              // kSet
  std::vector<Node> kids;   // kSequence, kAlternatives; kRepeat: one
  int min = 0, max = 0;     // kRepeat; max -1: no bound
  bool nullable() const {
    switch (kind) {
      case Kind::kSet: return false;
      case Kind::kSequence:
        for (const Node& k : kids)
          if (!k.nullable()) return false;
        return true;
      case Kind::kAlternatives:
        for (const Node& k : kids)
          if (k.nullable()) return true;
        return false;
      case Kind::kRepeat: return min == 0 || kids[0].nullable();
    }
    return true;
  }
  // At most how many rules the recogniser enters in a row without reading
  // a character, through this node (an upper bound).
  long chain() const {
    long n = 1;
    switch (kind) {
      case Kind::kSet: break;
      case Kind::kSequence: {
        // From any kid on, through those that can match nothing, to the
        // first that cannot.
        long from = 0, most = 0;
        for (auto k = kids.rbegin(); k != kids.rend(); ++k) {
          from = std::min(k->chain() + (k->nullable() ? from : 0), 1L << 20);
          most = std::max(most, from);
        }
        n += most;
        break;
      }
      case Kind::kAlternatives:
        for (const Node& k : kids) n = std::max(n, 1 + k.chain());
        break;
      case Kind::kRepeat: {
        const long times = kids[0].nullable() ? std::max(max, min) : 1;
        n += std::min(times * kids[0].chain(), 1L << 20);
        break;
      }
    }
    return std::min(n, 1L << 20);
  }
};

// A top-level alternative and its anchors.
struct Branch {
  Node body;
  bool at_start = false, at_end = false;
};

class Parser {
 public:
  Parser(std::string_view p, const std::string& path) : p_(p), path_(path) {}

  std::optional<std::vector<Branch>> parse() {
    if (p_.size() > kMaxPatternBytes) return fail("is longer than 1,000 bytes");
    std::vector<Branch> out;
    while (true) {
      Branch b;
      if (peek('^')) {
        ++i_;
        b.at_start = true;
      }
      std::optional<Node> body = sequence(0, &b.at_end);
      if (!body) return std::nullopt;
      b.body = std::move(*body);
      out.push_back(std::move(b));
      if (i_ == p_.size()) break;
      if (p_[i_] == '|') {
        ++i_;
        continue;
      }
      return fail("has an unmatched ')'");
    }
    return out;
  }
  const std::string& error() const { return error_; }

 private:
  std::nullopt_t fail(const std::string& why) {
    if (error_.empty()) error_ = path_ + ": the pattern " + why;
    return std::nullopt;
  }
  bool peek(char c) const { return i_ < p_.size() && p_[i_] == c; }

  // Items up to '|', ')' or the end. At depth 0, a '$' before '|' or the
  // end anchors the alternative (*at_end).
  std::optional<Node> sequence(int depth, bool* at_end) {
    Node seq;
    while (i_ < p_.size() && p_[i_] != '|' && p_[i_] != ')') {
      if (p_[i_] == '$') {
        if (depth == 0 && (i_ + 1 == p_.size() || p_[i_ + 1] == '|')) {
          ++i_;
          *at_end = true;
          break;
        }
        return fail("has a '$' other than at the end (not supported)");
      }
      if (p_[i_] == '^') return fail("has a '^' other than at the start (not supported)");
      std::optional<Node> a = atom(depth);
      if (!a) return std::nullopt;
      std::optional<Node> q = quantified(std::move(*a));
      if (!q) return std::nullopt;
      seq.kids.push_back(std::move(*q));
    }
    return seq;
  }

  std::optional<Node> alternatives(int depth) {
    Node alts;
    alts.kind = Node::Kind::kAlternatives;
    while (true) {
      bool unused = false;
      std::optional<Node> s = sequence(depth, &unused);
      if (!s) return std::nullopt;
      alts.kids.push_back(std::move(*s));
      if (!peek('|')) break;
      ++i_;
    }
    return alts;
  }

  static Node of(CharSet s) {
    Node n;
    n.kind = Node::Kind::kSet;
    n.set = std::move(s);
    return n;
  }

  std::optional<Node> atom(int depth) {
    const char c = p_[i_];
    if (c == '(') {
      if (depth + 1 > kMaxNesting) return fail("nests groups more than 64 deep");
      ++i_;
      if (peek('?')) {
        const std::string_view rest = p_.substr(i_);
        if (rest.substr(0, 2) == "?:") {
          i_ += 2;
        } else if (rest.substr(0, 2) == "?<" && rest.substr(0, 3) != "?<=" && rest.substr(0, 3) != "?<!") {
          // A name: a letter, '_' or '$', then those or digits (ASCII here).
          std::size_t end = i_ + 2;
          auto name_char = [&](char x, bool first) {
            return (x >= 'a' && x <= 'z') || (x >= 'A' && x <= 'Z') || x == '_' || x == '$' || (!first && x >= '0' && x <= '9');
          };
          while (end < p_.size() && name_char(p_[end], end == i_ + 2)) ++end;
          if (end == i_ + 2 || end == p_.size() || p_[end] != '>') return fail("has a bad group name");
          i_ = end + 1;
        } else if (rest.substr(0, 2) == "?=" || rest.substr(0, 2) == "?!" || rest.substr(0, 3) == "?<=" || rest.substr(0, 3) == "?<!") {
          return fail("uses look-around (not supported)");
        } else {
          return fail("has a group form ECMA-262 does not have, or flags (not supported)");
        }
      }
      std::optional<Node> inner = alternatives(depth + 1);
      if (!inner) return std::nullopt;
      if (!peek(')')) return fail("has an unclosed '('");
      ++i_;
      return inner;
    }
    if (c == '[') return class_set();
    if (c == '.') {
      ++i_;
      CharSet ends;
      for (std::uint32_t e : {0x0Au, 0x0Du, 0x2028u, 0x2029u}) set_range(&ends, e, e);
      return of(complement(ends));
    }
    if (c == '*' || c == '+' || c == '?') return fail("has a quantifier with nothing before it");
    if (c == '{' && i_ + 1 < p_.size() && p_[i_ + 1] >= '0' && p_[i_ + 1] <= '9') {
      // A count with nothing before it is an error, not the characters.
      std::size_t end = i_ + 1;
      while (end < p_.size() && ((p_[end] >= '0' && p_[end] <= '9') || p_[end] == ',')) ++end;
      if (end < p_.size() && p_[end] == '}') return fail("has a quantifier with nothing before it");
    }
    if (c == '\\') {
      std::optional<CharSet> s = escape(false);
      if (!s) return std::nullopt;
      return of(*s);
    }
    std::optional<std::uint32_t> cp = literal();
    if (!cp) return std::nullopt;
    return of(single(*cp));
  }

  // The one character of `s`, if it has one only (a range's end).
  static std::optional<std::uint32_t> only_member(const CharSet& s) {
    if (s.ascii.count() == 1 && s.wide.empty()) {
      for (std::uint32_t c = 0; c < 128; ++c)
        if (s.ascii[c]) return c;
    }
    if (s.ascii.none() && s.wide.size() == 1 && s.wide[0].first == s.wide[0].second) return s.wide[0].first;
    return std::nullopt;
  }

  static CharSet single(std::uint32_t cp) {
    CharSet s;
    set_range(&s, cp, cp);
    return s;
  }

  // One UTF-8 character of the pattern.
  std::optional<std::uint32_t> literal() {
    const auto b = static_cast<unsigned char>(p_[i_]);
    if (b < 0x80) {
      ++i_;
      return b;
    }
    const int n = b >= 0xF8 ? 0 : b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : b >= 0xC0 ? 2 : 0;
    if (n == 0 || i_ + static_cast<std::size_t>(n) > p_.size()) return fail("is not UTF-8");
    std::uint32_t cp = b & (0x7F >> n);
    for (int k = 1; k < n; ++k) {
      const auto x = static_cast<unsigned char>(p_[i_ + static_cast<std::size_t>(k)]);
      if ((x & 0xC0) != 0x80) return fail("is not UTF-8");
      cp = (cp << 6) | (x & 0x3F);
    }
    // Overlong forms, surrogates and what lies past U+10FFFF are not UTF-8.
    const std::uint32_t least = n == 2 ? 0x80 : n == 3 ? 0x800 : 0x10000;
    if (cp < least || (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) return fail("is not UTF-8");
    i_ += static_cast<std::size_t>(n);
    return cp;
  }

  std::optional<std::uint32_t> hex(int n) {
    if (i_ + static_cast<std::size_t>(n) > p_.size()) return fail("has a short \\x or \\u escape");
    std::uint32_t v = 0;
    for (int k = 0; k < n; ++k) {
      const char h = p_[i_++];
      const int d = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
      if (d < 0) return fail("has a bad \\x or \\u escape");
      v = v * 16 + static_cast<std::uint32_t>(d);
    }
    return v;
  }

  // After a backslash (at i_): the characters it stands for.
  std::optional<CharSet> escape(bool in_class) {
    ++i_;
    if (i_ == p_.size()) return fail("ends with a backslash");
    const char c = p_[i_++];
    switch (c) {
      case 'd': return digits();
      case 'D': return complement(digits());
      case 'w': return word();
      case 'W': return complement(word());
      case 's': return space();
      case 't': return single('\t');
      case 'n': return single('\n');
      case 'r': return single('\r');
      case 'v': return single('\v');
      case 'f': return single('\f');
      case '0':
        // \0 then a digit is an octal escape in ECMA-262's web form.
        if (i_ < p_.size() && p_[i_] >= '0' && p_[i_] <= '9') return fail("uses an octal escape (not supported)");
        return single(0);
      case 'x': {
        std::optional<std::uint32_t> v = hex(2);
        if (!v) return std::nullopt;
        return single(*v);
      }
      case 'u': {
        std::optional<std::uint32_t> v = hex(4);
        if (!v) return std::nullopt;
        if (*v >= 0xD800 && *v <= 0xDFFF) return fail("names a surrogate (not supported)");
        return single(*v);
      }
      case 'b':
        if (in_class) return single('\b');
        return fail("uses \\b (not supported)");
      case 'S': return complement(space());
      default: break;
    }
    if ((c >= '1' && c <= '9') || c == 'k') return fail("uses a back-reference (not supported)");
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return fail(std::string("uses the escape \\") + c + " (not supported)");
    if (static_cast<unsigned char>(c) >= 0x80) return fail("escapes a non-ASCII character");
    return single(static_cast<unsigned char>(c));  // \. \\ \/ \- ...
  }

  std::optional<Node> class_set() {
    ++i_;  // '['
    const bool negated = peek('^');
    if (negated) ++i_;
    CharSet s;
    while (true) {
      if (i_ == p_.size()) return fail("has an unclosed '['");
      if (p_[i_] == ']') {
        ++i_;
        break;
      }
      // One member: a character or an escape, then maybe "-" and a character.
      std::optional<CharSet> a;
      std::optional<std::uint32_t> a_cp;
      if (p_[i_] == '\\') {
        a = escape(true);
        if (!a) return std::nullopt;
        a_cp = only_member(*a);
      } else {
        a_cp = literal();
        if (!a_cp) return std::nullopt;
        a = single(*a_cp);
      }
      if (peek('-') && i_ + 1 < p_.size() && p_[i_ + 1] != ']') {
        ++i_;
        std::optional<std::uint32_t> b_cp;
        if (p_[i_] == '\\') {
          std::optional<CharSet> b = escape(true);
          if (!b) return std::nullopt;
          b_cp = only_member(*b);
        } else {
          b_cp = literal();
          if (!b_cp) return std::nullopt;
        }
        if (!a_cp || !b_cp) return fail("has a range with a class at one end");
        if (*a_cp > *b_cp) return fail("has a range out of order");
        set_range(&s, *a_cp, *b_cp);
        continue;
      }
      add(&s, *a);
    }
    CharSet out = negated ? complement(s) : s;
    if (out.ascii.none() && out.wide.empty()) return fail("has a class no character is in");
    return of(std::move(out));
  }

  std::optional<int> number() {
    if (i_ == p_.size() || p_[i_] < '0' || p_[i_] > '9') return std::nullopt;
    long v = 0;
    while (i_ < p_.size() && p_[i_] >= '0' && p_[i_] <= '9') {
      v = v * 10 + (p_[i_++] - '0');
      if (v > 1'000'000) v = 1'000'000;
    }
    return static_cast<int>(v);
  }

  std::optional<Node> quantified(Node a) {
    int lo = 0, hi = 0;
    if (peek('*')) {
      lo = 0, hi = -1;
    } else if (peek('+')) {
      lo = 1, hi = -1;
    } else if (peek('?')) {
      lo = 0, hi = 1;
    } else if (peek('{')) {
      // {n}, {n,}, {n,m}; any other '{' is the character itself.
      const std::size_t save = i_;
      ++i_;
      std::optional<int> n = number();
      std::optional<int> m = n;
      bool ok = n.has_value();
      if (ok && peek(',')) {
        ++i_;
        m = peek('}') ? std::optional<int>(-1) : number();
        ok = m.has_value();
      }
      if (!ok || !peek('}')) {
        i_ = save;
        return a;  // a literal '{' follows, read as the next atom
      }
      lo = *n, hi = *m;
      if (hi != -1 && hi < lo) return fail("has a count {n,m} with m below n");
      if (lo > kMaxCount || hi > kMaxCount) return fail("has a count over 1,000");
    } else {
      return a;
    }
    ++i_;  // the quantifier's last character
    if (peek('?')) ++i_;  // lazy: the same strings
    // What can match nothing, repeated: a loop that reads no character, or
    // a chain of rules entered without reading one (the recogniser's
    // kMaxExpansion): refused past a few.
    if (a.nullable() && (hi == -1 || hi > kMaxNullableCount)) return fail("repeats what can match nothing (not supported)");
    if (peek('*') || peek('+') || peek('?') || (peek('{') && i_ + 1 < p_.size() && p_[i_ + 1] >= '0' && p_[i_ + 1] <= '9'))
      return fail("has two quantifiers in a row");
    Node r;
    r.kind = Node::Kind::kRepeat;
    r.min = lo;
    r.max = hi;
    r.kids.push_back(std::move(a));
    if (r.chain() > kMaxChain) return fail("repeats what can match nothing too many times over (not supported)");
    return r;
  }

  std::string_view p_;
  const std::string& path_;
  std::size_t i_ = 0;
  std::string error_;
};

// The JSON spelling of one ASCII character.
std::string ascii_json(unsigned c) {
  switch (c) {
    case '"': return "\\\"";
    case '\\': return "\\\\";
    case '\b': return "\\b";
    case '\f': return "\\f";
    case '\n': return "\\n";
    case '\r': return "\\r";
    case '\t': return "\\t";
    default: break;
  }
  if (c < 0x20) {
    static const char* kHex = "0123456789abcdef";
    return std::string("\\u00") + kHex[c >> 4] + kHex[c & 15];
  }
  return std::string(1, static_cast<char>(c));
}

class Emitter {
 public:
  Emitter(Grammar* g, const std::string& path) : g_(g), path_(path), start_elements_(g->elements()) {}

  std::optional<Rule> pattern(const std::vector<Branch>& branches) {
    std::vector<Seq> alts;
    const Rule anything = alternatives({{run_of(complement(CharSet{}), 0, Grammar::kUnbounded)}});
    for (const Branch& b : branches) {
      std::optional<Rule> body = node(b.body);
      if (!body) return std::nullopt;
      Seq s;
      if (!b.at_start) s.push_back(sym(anything));
      s.push_back(sym(*body));
      if (!b.at_end) s.push_back(sym(anything));
      alts.push_back(std::move(s));
    }
    const Rule inner = alternatives(alts);
    Seq quoted;
    Grammar::literal("\"", &quoted);
    quoted.push_back(sym(inner));
    Grammar::literal("\"", &quoted);
    if (!error_.empty() || too_large()) return std::nullopt;
    return alternatives({quoted});
  }
  const std::string& error() const { return error_; }

 private:
  static Grammar::Symbol sym(Rule r) { return Grammar::ref(r); }
  Rule alternatives(const std::vector<Seq>& alts) {
    const Rule r = g_->add_rule();
    for (const Seq& a : alts) g_->add_alternative(r, a);
    return r;
  }
  bool too_large() {
    if (g_->elements() - start_elements_ <= kMaxPatternElements) return false;
    if (error_.empty()) error_ = path_ + ": the pattern is too large to hold an answer to";
    return true;
  }
  // item*, as a right-recursive loop.
  Rule loop(Grammar::Symbol item) {
    const Rule r = g_->add_rule();
    g_->add_alternative(r, {});
    g_->add_alternative(r, {item, sym(r)});
    return r;
  }

  // A run of `s`'s characters, min to max of them.
  static Grammar::Symbol run_of(const CharSet& s, std::uint32_t min, std::uint32_t max) {
    Grammar::ByteSet ascii;
    for (unsigned c = 0; c < 128; ++c) ascii[c] = s.ascii[c];
    return Grammar::run(ascii, s.wide, min, max);
  }

  std::optional<Rule> node(const Node& n) {
    if (too_large()) return std::nullopt;
    switch (n.kind) {
      case Node::Kind::kSet: return alternatives({{run_of(n.set, 1, 1)}});
      case Node::Kind::kSequence: {
        Seq s;
        for (const Node& k : n.kids) {
          std::optional<Rule> r = node(k);
          if (!r) return std::nullopt;
          s.push_back(sym(*r));
        }
        return alternatives({s});
      }
      case Node::Kind::kAlternatives: {
        std::vector<Seq> alts;
        for (const Node& k : n.kids) {
          std::optional<Rule> r = node(k);
          if (!r) return std::nullopt;
          alts.push_back({sym(*r)});
        }
        return alternatives(alts);
      }
      case Node::Kind::kRepeat: {
        // A repeated set is a run: read natively, one stack whatever its
        // counts.
        if (n.kids[0].kind == Node::Kind::kSet)
          return alternatives({{run_of(n.kids[0].set, static_cast<std::uint32_t>(n.min),
                                       n.max == -1 ? Grammar::kUnbounded : static_cast<std::uint32_t>(n.max))}});
        std::optional<Rule> item = node(n.kids[0]);
        if (!item) return std::nullopt;
        Rule tail;
        if (n.max == -1) {
          tail = loop(sym(*item));
        } else {
          tail = alternatives({{}});
          for (int i = n.min; i < n.max; ++i) tail = alternatives({{}, {sym(*item), sym(tail)}});
        }
        Seq head(static_cast<std::size_t>(n.min), sym(*item));
        head.push_back(sym(tail));
        return alternatives({head});
      }
    }
    return std::nullopt;
  }

  Grammar* g_;
  const std::string& path_;
  std::size_t start_elements_;
  std::string error_;
};

}  // namespace

namespace {

// The fewest and most characters `n` matches (most -1: no bound).
std::pair<long, long> span(const Node& n) {
  constexpr long kFar = 1L << 40;  // (counts are at most 1,000 and patterns 1,000 bytes: far below)
  switch (n.kind) {
    case Node::Kind::kSet: return {1, 1};
    case Node::Kind::kSequence: {
      long lo = 0, hi = 0;
      for (const Node& k : n.kids) {
        const auto [a, b] = span(k);
        lo = std::min(lo + a, kFar);
        hi = hi < 0 || b < 0 ? -1 : std::min(hi + b, kFar);
      }
      return {lo, hi};
    }
    case Node::Kind::kAlternatives: {
      long lo = kFar, hi = 0;
      for (const Node& k : n.kids) {
        const auto [a, b] = span(k);
        lo = std::min(lo, a);
        hi = hi < 0 || b < 0 ? -1 : std::max(hi, b);
      }
      return {n.kids.empty() ? 0 : lo, hi};
    }
    case Node::Kind::kRepeat: {
      const auto [a, b] = span(n.kids[0]);
      return {std::min(a * n.min, kFar), n.max < 0 || b < 0 ? (b == 0 ? 0 : -1) : std::min(b * n.max, kFar)};
    }
  }
  return {0, -1};
}

void flatten(const Node& n, std::vector<Node>* out) {
  if (n.kind == Node::Kind::kSequence) {
    for (const Node& k : n.kids) flatten(k, out);
  } else {
    out->push_back(n);
  }
}

// Holds each branch to strings of lo to hi characters (hi -1: no bound),
// where that can be done exactly: a branch whose every string already has
// such a length is kept; one whose parts (its unanchored ends read as runs
// of any characters) all have a fixed length but one run has that run's
// counts narrowed (and is dropped when none fits). False when a branch is
// neither (its lengths are then not held).
bool fit_lengths(std::vector<Branch>* branches, long lo, long hi) {
  std::vector<Branch> out;
  for (Branch b : *branches) {  // (a copy: on false, *branches is left as it was)
    std::vector<Node> parts;
    auto any_run = [] {
      Node run;
      run.kind = Node::Kind::kRepeat;
      run.min = 0;
      run.max = -1;
      Node all;
      all.kind = Node::Kind::kSet;
      all.set = complement(CharSet{});
      run.kids.push_back(std::move(all));
      return run;
    };
    flatten(b.body, &parts);
    // Beside an unanchored end, a repetition matches as its fewest: the
    // run of any characters takes the rest (x+ then anything is x then
    // anything).
    if (!b.at_end)
      while (!parts.empty() && parts.back().kind == Node::Kind::kRepeat && parts.back().max != parts.back().min) {
        Node& r = parts.back();
        r.max = r.min;
        if (r.min == 0) parts.pop_back();
      }
    if (!b.at_start)
      while (!parts.empty() && parts.front().kind == Node::Kind::kRepeat && parts.front().max != parts.front().min) {
        Node& r = parts.front();
        r.max = r.min;
        if (r.min == 0) parts.erase(parts.begin());
      }
    if (!b.at_start) parts.insert(parts.begin(), any_run());
    if (!b.at_end && (b.at_start || parts.size() > 1)) parts.push_back(any_run());  // (anything twice is anything)
    long fixed = 0, least = 0, most = 0;
    int open = -1;  // the one part whose length varies
    bool exact = true;
    for (std::size_t i = 0; i < parts.size(); ++i) {
      const auto [a, m] = span(parts[i]);
      least += a;
      most = most < 0 || m < 0 ? -1 : most + m;
      if (a == m) {
        fixed += a;
      } else if (open < 0 && parts[i].kind == Node::Kind::kRepeat && parts[i].kids[0].kind == Node::Kind::kSet) {
        open = static_cast<int>(i);
      } else {
        exact = false;
      }
    }
    if (least >= lo && (hi < 0 || (most >= 0 && most <= hi))) {  // every length fits already
      out.push_back(std::move(b));
      continue;
    }
    if (!exact) return false;
    if (open < 0) {  // one length, which does not fit
      continue;
    }
    if (hi >= 0 && hi < fixed) continue;  // too long whatever the run
    Node& run = parts[static_cast<std::size_t>(open)];
    const long run_lo = std::max<long>(run.min, lo - fixed);
    const long run_hi = hi < 0 ? run.max : run.max < 0 ? hi - fixed : std::min<long>(run.max, hi - fixed);
    if (run_hi >= 0 && run_lo > run_hi) continue;  // no length fits
    if (run_lo > 1000 || run_hi > 1000) return false;  // (counts stay within the parser's bound)
    run.min = static_cast<int>(run_lo);
    run.max = static_cast<int>(run_hi);
    Branch fitted;
    fitted.at_start = fitted.at_end = true;
    fitted.body.kind = Node::Kind::kSequence;
    fitted.body.kids = std::move(parts);
    out.push_back(std::move(fitted));
  }
  *branches = std::move(out);
  return true;
}

}  // namespace

std::optional<Grammar::RuleId> pattern_rule(Grammar* g, std::string_view pattern, const std::string& path, std::string* error,
                                            std::optional<std::pair<std::uint64_t, std::uint64_t>> lengths, bool* exact) {
  Parser p(pattern, path);
  std::optional<std::vector<Branch>> branches = p.parse();
  if (!branches) {
    *error = p.error();
    return std::nullopt;
  }
  if (lengths) {
    const long lo = static_cast<long>(std::min<std::uint64_t>(lengths->first, 1L << 40));
    const long hi = lengths->second == UINT64_MAX ? -1 : static_cast<long>(std::min<std::uint64_t>(lengths->second, 1L << 40));
    const bool fits = fit_lengths(&*branches, lo, hi);
    if (exact != nullptr) *exact = fits;
    if (fits && branches->empty()) {
      *error = path + ": no string of those lengths matches the pattern";
      return std::nullopt;
    }
  }
  Emitter e(g, path);
  std::optional<Rule> r = e.pattern(*branches);
  if (!r) *error = e.error();
  return r;
}

std::string pattern_json_text(std::string_view text) {
  std::string out = "\"";
  for (char c : text) {
    const auto b = static_cast<unsigned char>(c);
    if (b < 0x80) out += ascii_json(b);
    else out += c;
  }
  out += '"';
  return out;
}

std::shared_ptr<const Grammar> pattern_grammar(std::string_view pattern) {
  // Compiled once: a schema's pattern is checked for each string value, and
  // each enum entry, it meets. Bounded: past kCached patterns the cache
  // starts again.
  static constexpr std::size_t kCached = 256;
  static std::mutex mutex;
  static std::unordered_map<std::string, std::shared_ptr<const Grammar>> cache;
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (auto it = cache.find(std::string(pattern)); it != cache.end()) return it->second;
  }
  auto g = std::make_shared<Grammar>();
  std::string error;
  std::optional<Rule> r = pattern_rule(g.get(), pattern, "pattern", &error);
  std::shared_ptr<const Grammar> out;
  if (r) {
    g->set_start(*r);
    out = std::move(g);
  }
  std::lock_guard<std::mutex> lock(mutex);
  if (cache.size() >= kCached) cache.clear();
  cache.emplace(std::string(pattern), out);
  return out;
}

std::optional<bool> pattern_matches(std::string_view pattern, std::string_view text, std::uint64_t* work) {
  const std::shared_ptr<const Grammar> g = pattern_grammar(pattern);
  if (!g) return std::nullopt;
  engine::GrammarArena arena;
  engine::GrammarMatcher m(g.get(), &arena);
  const std::string json = pattern_json_text(text);
  for (std::size_t i = 0; i < json.size(); ++i) {
    const bool alive = m.feed(static_cast<unsigned char>(json[i]));
    if (work != nullptr && arena.work > *work) {
      *work = 0;
      return false;
    }
    if (!alive) {
      if (work != nullptr) *work -= arena.work;  // a string that fails costs its work too
      return false;
    }
    // The stacks left behind are garbage; keep the arena small.
    if (arena.nodes.size() > (std::size_t{1} << 16)) m.compact();
  }
  if (work != nullptr) *work -= arena.work;
  return m.accepting();
}

}  // namespace airlock::daemon
