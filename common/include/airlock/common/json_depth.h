// Nesting depth of parsed JSON, measured without recursion.
//
// nlohmann::json parses any depth (its parser keeps its own stack), but
// copying, comparing and printing a value recurse, one stack frame per
// level: a request body of a few MiB of '[' would overflow a thread's stack
// at the first copy. Every parser of outside JSON refuses values deeper
// than kMaxJsonDepth right after parsing, before anything else touches them.
#pragma once

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

}  // namespace airlock
