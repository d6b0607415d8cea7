// JSON Schema's "pattern": a regular expression (ECMA-262 syntax) that a
// string must match somewhere (unless anchored with ^ and $), compiled into
// grammar rules whose sentences are the JSON texts of the matching strings,
// quotes included. Used by the schema compiler (constrained decoding holds
// the string to the pattern) and by the validator (a decoded string is
// checked by the same rules, re-encoded).
//
// The subset read: literal characters (UTF-8 in the pattern), escapes
// (\t \n \r \v \f \0 \xHH \uHHHH, and a backslash before punctuation), `.`
// (any character but \n, \r, U+2028, U+2029), classes `[...]` and `[^...]`
// with ranges (of any code points), \d \w \s \D \W \S (digits and word
// characters in ASCII, as ECMA-262 has them without the u flag; \s with
// its Unicode spaces), groups `(...)`, `(?:...)` and `(?<name>...)`,
// alternation, the quantifiers * + ? {n} {n,} {n,m} (lazy forms alike: the
// same strings match), ^ at the start and $ at the end of a top-level
// alternative. Characters are code points (as Python's re and Rust's regex
// count them, not UTF-16 units); a set of them becomes UTF-8 byte ranges.
// Refused, with the reason: back-references, look-around, flags and other
// group forms, \b \B, \c and other letters' escapes, octal escapes (\0
// then a digit), ^ or $ elsewhere, a surrogate, malformed UTF-8, a count
// with nothing before it, a repetition of what can match nothing past 64
// times (or nested so that the recogniser would enter over 512 rules in a
// row without reading), counts over 1,000, patterns over 1,000 bytes or
// groups over 64 deep, and rules past kMaxPatternElements.
// The JSON text of a matching string is written one way: `\"`, `\\`, the
// short escapes \b \f \n \r \t, \u00XX (lowercase hex) for other control
// characters, every other character as itself (UTF-8).
//
// Thread-safety: free functions; pattern_grammar's cache is locked.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "airlock/engine/grammar.h"

namespace airlock::daemon {

inline constexpr std::size_t kMaxPatternElements = 200'000;

// Adds to `g` the rules of `pattern`'s strings as JSON texts and returns
// the one to refer to, or nullopt with *error set (the reason, about
// `path`). With `lengths` (minLength, maxLength; UINT64_MAX: none) the
// strings are held to them too where that can be done exactly (*exact
// says whether it was): when every string of a top-level alternative
// already fits, or when all of its parts but one run have a fixed length
// (the run's counts are then narrowed: "^[A-Z][a-z]+$", "^id-\d+",
// "^[a-z_]*$"). Otherwise the lengths are not held.
std::optional<engine::Grammar::RuleId> pattern_rule(engine::Grammar* g, std::string_view pattern, const std::string& path,
                                                    std::string* error,
                                                    std::optional<std::pair<std::uint64_t, std::uint64_t>> lengths = std::nullopt,
                                                    bool* exact = nullptr);

// The grammar of `pattern` alone (pattern_rule's, as its start), or null
// when the pattern is not in the subset above. Compiled once and kept (up
// to 256 patterns, shared by every thread).
std::shared_ptr<const engine::Grammar> pattern_grammar(std::string_view pattern);

// Whether `text` (a decoded string, UTF-8) matches `pattern`; nullopt when
// the pattern is not in the subset above. With `work`, the recogniser's
// work (GrammarArena::work) is taken from *work, and past it the answer is
// false: a pattern whose counts overlap (".{1000}x" unanchored) keeps a
// way through for each, up to 1,024, at every byte.
std::optional<bool> pattern_matches(std::string_view pattern, std::string_view text, std::uint64_t* work = nullptr);

// The JSON text of `text` as pattern_rule's sentences write it.
std::string pattern_json_text(std::string_view text);

}  // namespace airlock::daemon
