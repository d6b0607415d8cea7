// Limits on JSON from outside: nesting depth of a parsed value, measured
// without recursion, keys per object, checked before parsing, and integers
// that nlohmann::json cannot hold, found in the same pass.
//
// nlohmann::json parses any depth (its parser keeps its own stack), but
// copying, comparing and printing a value recurse, one stack frame per
// level: a request body of a few MiB of '[' would overflow a thread's stack
// at the first copy. Every parser of outside JSON refuses values deeper
// than kMaxJsonDepth right after parsing, before anything else touches them.
#pragma once

#include <cstddef>
#include <limits>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace airlock {

// Deeper than anything a real request, chat template input or tokenizer
// file nests (the chat-template interpreter stops at the same depth).
inline constexpr int kMaxJsonDepth = 64;

// True when `root` nests deeper than `limit` levels (a scalar is 1 level,
// an array or object one more than its deepest element).
template <typename Json>
bool json_deeper_than(const Json& root, int limit = kMaxJsonDepth) {
  std::vector<std::pair<const Json*, int>> stack{{&root, 1}};
  while (!stack.empty()) {
    const auto [v, depth] = stack.back();
    stack.pop_back();
    if (depth > limit) return true;
    if (v->is_array() || v->is_object())
      for (const Json& child : *v) stack.emplace_back(&child, depth + 1);
  }
  return false;
}

// Keys one object of outside JSON may hold. nlohmann::ordered_json (which
// request bodies use, to keep their keys in order for chat templates)
// looks up every earlier key of an object before it adds one, so parsing
// an object of n keys takes n^2 / 2 string comparisons: one 8 MiB body of
// ~650,000 keys would keep a core busy for minutes. Real requests have a
// few dozen keys per object.
inline constexpr std::size_t kMaxJsonObjectKeys = 256;

// What a pass over outside JSON text found before anything is built.
struct JsonTextCheck {
  bool wide = false;  // an object with more than the keys allowed
  bool deep = false;  // more arrays and objects open at once than the depth allowed
  // The first integer literal outside -2^63 .. 2^64-1 (its text, as
  // written), "" when none. nlohmann::json parses such a literal as a
  // double, so 18446744073709551616 would be printed 1.8446744073709552e+19:
  // where a changed number matters (chat template inputs, which Python
  // would print exactly), it is refused instead.
  std::string big_integer;
  // The values read (scalars, arrays and objects, at every level) until
  // the pass ended: a parse builds each one.
  std::size_t values = 0;
};

// A pass that builds nothing and stops at the first object with more than
// `max_keys` keys, or at the first array or object nested more than
// `max_depth` deep (linear in the text). A parse builds a value per level
// of nesting: 8 MiB of '[' took ~315 MB before json_deeper_than() could
// refuse the result. Invalid JSON passes: the real parse reports it (and
// big_integer may be set for text that is not JSON).
template <typename Json>
JsonTextCheck check_json_text(std::string_view text, std::size_t max_keys = kMaxJsonObjectKeys,
                              int max_depth = kMaxJsonDepth) {
  struct Counter {
    std::vector<std::size_t> keys;  // per open object
    std::size_t max_keys;
    int max_depth;
    int open = 0;
    bool wide = false, deep = false;
    std::string big_integer{};  // as JsonTextCheck::big_integer
    std::size_t values = 0;
    bool open_one() {
      ++values;
      deep = ++open > max_depth;
      return !deep;
    }
    bool null() { return ++values, true; }
    bool boolean(bool) { return ++values, true; }
    bool number_integer(typename Json::number_integer_t) { return ++values, true; }
    bool number_unsigned(typename Json::number_unsigned_t) { return ++values, true; }
    bool number_float(typename Json::number_float_t value, const typename Json::string_t& text) {
      ++values;
      // The lexer makes a double of a literal with a fraction or exponent,
      // and of an integer that fits neither int64 nor uint64 (whose value
      // is then at least 2^63 in magnitude): without '.', 'e' or 'E' it is
      // the latter. Only such large doubles pay for the look at the text.
      if (big_integer.empty() && (value >= 0x1p63 || value <= -0x1p63) &&
          text.find_first_of(".eE") == std::string::npos)
        big_integer.assign(text);
      return true;
    }
    bool string(typename Json::string_t&) { return ++values, true; }
    bool binary(typename Json::binary_t&) { return true; }
    bool start_object(std::size_t) {
      keys.push_back(0);
      return open_one();
    }
    bool key(typename Json::string_t&) {
      wide = ++keys.back() > max_keys;
      return !wide;
    }
    bool end_object() {
      keys.pop_back();
      --open;
      return true;
    }
    bool start_array(std::size_t) { return open_one(); }
    bool end_array() {
      --open;
      return true;
    }
    bool parse_error(std::size_t, const std::string&, const typename Json::exception&) { return false; }
  };
  Counter c{{}, max_keys, max_depth};
  Json::sax_parse(text.begin(), text.end(), &c);
  return {c.wide, c.deep, std::move(c.big_integer), c.values};
}

// True when `text` holds an object with more than `max_keys` keys.
template <typename Json>
bool json_text_has_wide_object(std::string_view text, std::size_t max_keys = kMaxJsonObjectKeys) {
  return check_json_text<Json>(text, max_keys, std::numeric_limits<int>::max()).wide;
}

}  // namespace airlock
