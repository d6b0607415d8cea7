// Constrained decoding: which tokens a sequence may take next.
//
// A TokenConstraint is given to a GenerationRequest (scheduler.h). Before
// each of the sequence's tokens is chosen the scheduler asks it for the
// allowed tokens, and the sampler chooses among those only (sampler.h,
// SampleRow::allowed); the token chosen is then given back to it.
//
// JsonConstraint holds a sequence to one JSON object (RFC 8259) followed by
// an end-of-generation token: OpenAI's response_format "json_object". It
// runs a byte-level JSON recogniser (JsonGrammar) over each candidate
// token's bytes, so any tokenizer works, whatever its pieces. Bounds keep
// the model from running away inside the structure: 32 nested containers,
// 32 whitespace bytes in a row outside strings, 64 characters in a number
// and two digits in its exponent (so that every number is a finite double).
// Nothing bounds a string's length but max_tokens.
//
// Given a Grammar (grammar.h; airlockd compiles a response_format's JSON
// Schema into one), the object is held to the grammar's sentences instead
// of to JsonGrammar, and the end may come once a sentence is whole.
//
// Cost: a pass over the vocabulary per step of the sequence, between the
// scheduler's passes (the sequences of a step on the CPU compute threads,
// SchedulerOptions::pool): each token's bytes are tried, except inside
// strings, where tokens of plain text are known to fit (docs/benchmarks.md).
//
// Thread-safety: a constraint belongs to one sequence and is used by one
// thread at a time; a JsonVocab is immutable and shared.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "airlock/engine/grammar.h"
#include "airlock/engine/tokenizer.h"

namespace airlock::engine {

class TokenConstraint {
 public:
  virtual ~TokenConstraint() = default;
  // Sets `mask` (n_vocab bits: bit t % 64 of word t / 64) to the tokens
  // allowed next. At least one is always allowed: a constraint that cannot
  // go on allows the end-of-generation tokens.
  virtual void allowed(std::vector<std::uint64_t>* mask) = 0;
  // The token the sequence took (one that was allowed).
  virtual void accept(std::int32_t token) = 0;
};

// A byte-level recogniser of one JSON object, fed a byte at a time.
// Copying it is cheap (a few words): candidates are tried on copies.
class JsonGrammar {
 public:
  static constexpr int kMaxDepth = 32;
  static constexpr int kMaxSpaces = 32;
  static constexpr int kMaxNumber = 64;
  static constexpr int kMaxExponentDigits = 2;

  // Takes the next byte: false when no valid JSON object within the bounds
  // starts with what was fed plus `c` (the grammar is then unusable).
  bool feed(unsigned char c);
  bool feed(std::string_view bytes) {
    for (char c : bytes)
      if (!feed(static_cast<unsigned char>(c))) return false;
    return true;
  }
  // A whole object has been read (nothing more may follow).
  bool complete() const { return mode_ == Mode::kDone; }
  // Inside a string, between characters and escapes: any plain text (no
  // quote, backslash or control byte; whole UTF-8 characters) may follow.
  bool in_plain_string() const { return mode_ == Mode::kString && utf8_left_ == 0 && !high_surrogate_; }

 private:
  enum class Mode : std::uint8_t {
    kStart,       // before the top-level object
    kValue,       // a value is due
    kArrayFirst,  // after '[': a value or ']'
    kKeyFirst,    // after '{': a key or '}'
    kKey,         // after ',' in an object: a key
    kColon,       // after a key
    kAfterValue,  // ',' or the container's close
    kString,
    kEscape,      // after '\' in a string
    kHex,         // in \uXXXX
    kNumber,
    kLiteral,     // true, false, null
    kDone,
    kFailed,
  };
  bool value_start(unsigned char c);
  bool close(unsigned char c);
  bool number(unsigned char c);

  Mode mode_ = Mode::kStart;
  bool key_ = false;             // the string being read is a key
  std::uint8_t sub_ = 0;         // number: its part; \u: hex digits left; literal: which one
  std::uint8_t count_ = 0;       // number: characters so far; literal: characters matched
  std::uint8_t utf8_left_ = 0;   // continuation bytes due in a string
  std::uint8_t lead_ = 0;        // the lead byte, until the byte after it has come
  std::uint8_t exp_digits_ = 0;  // number: digits of its exponent
  std::uint8_t spaces_ = 0;      // whitespace bytes in a row
  bool high_surrogate_ = false;  // a string's last escape was \uD800-\uDBFF: its low half must follow
  std::uint16_t code_ = 0;       // the \u escape's value so far
  std::int8_t depth_ = 0;
  std::uint32_t arrays_ = 0;     // bit d: the container at depth d + 1 is an array
};

// Each token's bytes, as the stream decoder gives them, and the
// end-of-generation tokens, prepared once per tokenizer.
struct JsonVocab {
  explicit JsonVocab(const Tokenizer& tokenizer);
  std::vector<std::string> bytes;  // empty: never allowed as text (end, control and unknown tokens)
  std::vector<bool> plain;         // plain text inside a string (JsonGrammar::in_plain_string)
  std::vector<std::uint32_t> chars;  // its UTF-8 characters
  std::vector<std::int32_t> end_tokens;
};

// A thinking model's reasoning block before the object: free text from
// `open` (empty: the prompt has opened it already) up to and including
// `close`. With an `open`, the answer may begin with it (after whitespace)
// or with the object. Inside the block the answer may also end (with no
// object) rather than be kept writing to max_tokens.
struct ThinkBlock {
  std::string open;   // "<think>", or empty
  std::string close;  // "</think>"
};

class JsonConstraint : public TokenConstraint {
 public:
  // `lead`: tokens the object may follow, taken as no text (a control
  // token a model writes before its calls, as Mistral's [TOOL_CALLS]): at
  // the start of the answer, or after the thinking, once.
  explicit JsonConstraint(std::shared_ptr<const JsonVocab> vocab, std::optional<ThinkBlock> think = std::nullopt,
                          std::shared_ptr<const Grammar> grammar = nullptr, std::vector<std::int32_t> lead = {});
  void allowed(std::vector<std::uint64_t>* mask) override;
  void accept(std::int32_t token) override;
  // The object is whole and nothing more may follow it.
  bool complete() const;

 private:
  enum class Phase : std::uint8_t { kOpening, kThinking, kObject };
  struct State {
    Phase phase = Phase::kObject;
    std::string held;  // opening: the text so far; thinking: its last bytes (fewer than close's)
    JsonGrammar json;  // the object, without a grammar
    std::optional<GrammarMatcher> matcher;  // the object, with one
    bool fed = false;  // the object has been fed more than whitespace
    bool feed(std::string_view bytes) {
      fed = fed || bytes.find_first_not_of(" \t\n\r") != std::string_view::npos;
      return matcher ? matcher->feed(bytes) : json.feed(bytes);
    }
  };
  // Takes `bytes` into `s`: false when they cannot come next, or when they
  // would feed the object and `into_object` is false.
  bool take(State& s, std::string_view bytes, bool into_object = true) const;
  // The tokens allowed before the answer's first bytes (Phase::kOpening).
  template <class Spent>
  bool opening_mask(std::vector<std::uint64_t>* mask, Spent spent) const;
  // A lead token may come now: before the answer or the object (after
  // whitespace at most), once.
  bool lead_allowed() const;

  std::shared_ptr<const JsonVocab> vocab_;
  ThinkBlock think_;
  std::shared_ptr<const Grammar> grammar_;
  std::unique_ptr<GrammarArena> arena_;  // the matchers' stacks
  State state_;
  std::vector<std::int32_t> lead_;
  bool lead_taken_ = false;
  bool failed_ = false;  // a token that was not allowed was accepted: only the end is left
};

}  // namespace airlock::engine
