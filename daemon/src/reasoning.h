// Reasoning ("thinking") in chat answers. Qwen3, QwQ, the DeepSeek-R1
// distillations and the many models trained like them write their reasoning
// between <think> and </think>, then the answer. A chat answer from such a
// model is returned as two fields: the reasoning, which OpenAI-compatible
// servers send as `reasoning_content` (DeepSeek, llama.cpp) and `reasoning`
// (vLLM, OpenRouter), and the content, which is only the answer, so that a
// client that parses the content (JSON, tool calls, citations) does not
// trip over the thinking.
//
// Two shapes are read:
//  - the answer opens the block itself: "<think>\n...\n</think>\n\nAnswer"
//    (Qwen3, QwQ before its template change);
//  - the prompt opens it: the template's generation prompt ends with
//    "<think>\n" (DeepSeek-R1, QwQ, Qwen3-Thinking-2507), and the answer
//    is "...\n</think>\n\nAnswer".
// An answer that never closes the block (cut by max_tokens) is all
// reasoning; an answer that does not begin with <think>, or follows a
// prompt that closed the block (Qwen3 with enable_thinking false writes an
// empty one), is all content, byte for byte.
//
// Thread-safety: free functions without shared state; a ReasoningSplitter
// belongs to one answer.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace airlock::daemon {

enum class ReasoningFormat { kNone, kThinkTags };

// The tags of a think block.
inline constexpr std::string_view kThinkOpen = "<think>";
inline constexpr std::string_view kThinkClose = "</think>";

// kThinkTags when the chat template (its source) mentions "</think>".
ReasoningFormat reasoning_format_of(std::string_view chat_template);
const char* reasoning_format_name(ReasoningFormat f);  // "none", "think_tags"

// Where a rendered chat prompt leaves the answer: inside a think block (the
// prompt ends with "<think>" and whitespace), after one (it ends with
// "</think>": Qwen3 with enable_thinking false writes an empty block, and
// the answer is then all content, even one that begins with "<think>"), or
// before any. Only the generation prompt, which the template writes last,
// can end the prompt, so message text cannot decide this.
enum class ReasoningStart { kBefore, kInside, kAfter };
ReasoningStart reasoning_start(std::string_view prompt);

// Splits one answer, given in pieces as it is generated, into reasoning
// and content. Whitespace around the reasoning and before the content is
// dropped; what comes out never changes afterwards, so a stream of the
// pieces' results joins up to the same two strings as one call with the
// whole answer. Bytes are held back only while they may still turn out to
// be a tag or the whitespace to drop (each piece is looked at once: a
// million pieces cost a million steps). A disabled splitter passes every
// piece through as content at once.
class ReasoningSplitter {
 public:
  ReasoningSplitter() = default;  // disabled
  // starts_open: the prompt opened the block (ReasoningStart::kInside).
  ReasoningSplitter(bool enabled, bool starts_open);

  struct Delta {
    std::string reasoning;
    std::string content;
  };
  // The next piece of the answer (cut at character boundaries); `final`:
  // the answer has ended, and everything held comes out.
  Delta push(std::string_view piece, bool final);

  bool enabled() const { return enabled_; }
  // Inside the think block (after <think>, before the end of </think>).
  bool in_reasoning() const { return state_ == State::kReasoning; }

 private:
  enum class State { kStart, kReasoning, kAfter, kContent };
  void reason(Delta& d, bool final);
  void after(std::string_view rest, Delta& d);
  void give_reasoning(std::size_t n, Delta& d);

  bool enabled_ = false;
  State state_ = State::kContent;
  std::string held_;
  std::size_t held_ws_ = 0;  // held_'s first held_ws_ bytes are known to be whitespace
  bool reasoning_begun_ = false;  // some reasoning has come out (leading whitespace is dropped before)
};

}  // namespace airlock::daemon
