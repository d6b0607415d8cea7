// A context-free grammar over bytes, and a recogniser for it that reads a
// byte at a time: what constrained decoding holds a sequence to when the
// shape is richer than "one JSON object" (a JSON Schema, compiled to a
// grammar by airlockd).
//
// A grammar is a set of rules; each rule has alternatives, each a sequence
// of symbols: a set of bytes (matches one byte in the set), a JSON string
// (matches one whole string, quotes included, of min to max characters:
// RFC 8259 escapes, a \u surrogate pair as one character, whole UTF-8 as
// RFC 3629 has it), a run (min to max characters of a string's body, each
// in a class: no quotes around it, escapes and UTF-8 as in a string, each
// character written one way: the short escapes \" \\ \b \f \n \r \t,
// \u00xx in lowercase for the other control characters, the rest as
// themselves), or another rule. Strings and runs are recognised natively
// rather than spelled as rules: one stack and a counter whatever their
// length bounds, and tokens of plain text inside them are known to fit
// without being tried (free_text_room).
// Rules must not be left-recursive (a rule that can reach itself without
// reading a byte): the recogniser drops such expansions past a bound rather
// than loop. The sentences of the grammar are those of its start rule.
//
// GrammarMatcher is a nondeterministic pushdown recogniser: its state is a
// set of stacks, each a path through the rules still open, stored as
// shared-tail lists in a GrammarArena. Copying a matcher copies the set
// (a few words each), not the stacks, so candidates are tried on copies;
// the arena only grows, and its owner truncates it to a mark once the
// copies are gone, or compacts it around the one matcher left.
//
// Bounds: at most kMaxStacks (1,024) stacks (past that, later ones are dropped:
// a very ambiguous grammar may lose sentences, never gain any), at most
// kMaxDepth open rules on one stack, kMaxExpansion rules entered in a row
// without reading a byte, and kMaxWork rule expansions and as many node
// comparisons for one byte (or for the start), whatever the grammar: work
// past them is dropped likewise (or, for comparisons, stacks are kept
// apart that might have been merged).
//
// Thread-safety: a Grammar is immutable once built and may be shared; a
// matcher and its arena belong to one thread at a time.
#pragma once

#include <bitset>
#include <cstdint>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace airlock::engine {

class Grammar {
 public:
  using RuleId = std::uint32_t;
  using ByteSet = std::bitset<256>;
  // Code points from U+0080 to U+10FFFF as sorted, disjoint, inclusive
  // ranges, without surrogates.
  using CodePoints = std::vector<std::pair<std::uint32_t, std::uint32_t>>;

  struct Symbol {
    enum class Kind : std::uint8_t { kBytes, kRule, kString, kRun };
    Kind kind = Kind::kBytes;
    RuleId rule = 0;
    ByteSet bytes;                               // kBytes; kRun: its ASCII characters (bits 0-127)
    CodePoints wide;                             // kRun: its other characters
    std::uint32_t min_chars = 0, max_chars = 0;  // kString, kRun
  };
  static constexpr std::uint32_t kUnbounded = 0xFFFFFFFFu;
  static Symbol byte(unsigned char c);
  static Symbol range(unsigned char lo, unsigned char hi);
  static Symbol set(const ByteSet& s);
  static Symbol ref(RuleId r);
  // A JSON string of min_chars to max_chars characters (kUnbounded: no
  // upper bound).
  static Symbol string(std::uint32_t min_chars = 0, std::uint32_t max_chars = kUnbounded);
  // A run as the grammar keeps it.
  struct Run {
    std::uint32_t min_chars, max_chars;
    ByteSet ascii;
    CodePoints wide;
  };
  // A run of min_chars to max_chars characters, each one of `ascii`
  // (bits 0-127) or of `wide`.
  static Symbol run(const ByteSet& ascii, CodePoints wide, std::uint32_t min_chars, std::uint32_t max_chars);
  // Appends the bytes of `text`, one symbol each.
  static void literal(std::string_view text, std::vector<Symbol>* out);

  RuleId add_rule();
  // Adds an alternative (empty: the empty string) to rule r.
  void add_alternative(RuleId r, const std::vector<Symbol>& symbols);
  void set_start(RuleId r) { start_ = r; }
  RuleId start() const { return start_; }
  std::size_t rules() const { return rules_.size(); }
  std::size_t elements() const { return elements_.size(); }  // its size, for bounds

 private:
  friend class GrammarMatcher;
  enum class Kind : std::uint8_t { kBytes, kRule, kEnd, kString, kRun };
  struct Element {
    Kind kind;
    std::uint32_t arg;  // kBytes: index in sets_; kRule: the rule; kString: index in strings_; kRun: in runs_
  };
  struct Bounds {
    std::uint32_t min_chars, max_chars;
  };
  std::vector<Element> elements_;                  // alternatives, each ended by kEnd
  std::vector<std::vector<std::uint32_t>> rules_;  // each alternative's first element
  std::vector<ByteSet> sets_;
  std::unordered_map<ByteSet, std::uint32_t> set_index_;
  std::vector<Bounds> strings_;
  std::vector<Run> runs_;
  RuleId start_ = 0;
};

struct GrammarArena {
  struct Node {
    std::uint32_t pos;    // an element: kBytes, kString, kRun, or the kRule to go on with
    std::uint32_t next;   // the rest of the stack (kBottom: none)
    std::uint32_t depth;  // nodes in the stack, this one included
    std::uint32_t lex;    // kString, kRun: where in the string (0: before its quote)
    std::uint32_t count;  // kString, kRun: characters so far
  };
  std::vector<Node> nodes;
  std::uint64_t work = 0;  // stacks stepped, rules entered and nodes compared, by every matcher on it
};

class GrammarMatcher {
 public:
  static constexpr std::size_t kMaxStacks = 1024;
  static constexpr std::uint32_t kMaxDepth = 2048;
  static constexpr int kMaxExpansion = 1024;
  static constexpr int kMaxWork = 1 << 16;

  // At the start of `grammar`; both must outlive the matcher and its copies.
  GrammarMatcher(const Grammar* grammar, GrammarArena* arena);

  // Takes the next byte: false when no sentence starts with what was fed
  // plus `c` (the matcher is then dead).
  bool feed(unsigned char c);
  bool feed(std::string_view bytes) {
    for (char c : bytes)
      if (!feed(static_cast<unsigned char>(c))) return false;
    return true;
  }
  // What was fed is a whole sentence (more may still follow it).
  bool accepting() const;
  // Nothing but the end may follow (or nothing at all, when dead).
  bool complete() const;
  // Inside a string, or a run whose class holds every character of plain
  // text, between characters: how many more characters of plain text (no
  // quote, backslash or control byte; whole UTF-8 characters) may follow,
  // the most over the stacks (0: none).
  std::uint32_t free_text_room() const;
  // The bytes that may come next (a byte some stack can take; at the
  // bounds above, taking it may still leave nothing).
  Grammar::ByteSet next_bytes() const;
  // Rebuilds the arena with this matcher's stacks only; other matchers on
  // the same arena become invalid.
  void compact();

 private:
  static constexpr std::uint32_t kBottom = 0xFFFFFFFFu;
  static constexpr std::uint32_t kAccept = 0xFFFFFFFEu;  // a "stack" that has read a whole sentence
  static constexpr std::uint32_t kDropped = 0xFFFFFFFDu;
  std::uint32_t push(std::uint32_t pos, std::uint32_t tail, std::uint32_t lex = 0, std::uint32_t count = 0);
  void expand(std::uint32_t pos, std::uint32_t tail, int guard);
  void expand_rule(std::uint32_t pos, std::uint32_t tail, int guard);
  void emit(std::uint32_t top);
  void dedupe();
  bool same_stack(std::uint32_t a, std::uint32_t b);
  // Takes byte c into the string at the top of stack `top`.
  void string_step(std::uint32_t top, unsigned char c);
  // Takes byte c into the run at the top of stack `top`.
  void run_step(std::uint32_t top, unsigned char c);

  const Grammar* g_;
  GrammarArena* arena_;
  std::vector<std::uint32_t> tops_;  // node ids whose pos is a kBytes, kString or kRun element, or kAccept
  std::vector<std::uint32_t> next_;  // scratch
  std::vector<std::pair<std::uint32_t, std::uint32_t>> after_runs_;  // scratch: what follows runs that may end
  int work_ = 0;                     // rule expansions left for this byte
  int compare_budget_ = 0;           // node comparisons left for this byte's dedupe
};

}  // namespace airlock::engine
