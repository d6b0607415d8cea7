// Chat templates: the Jinja2 subset that GGUF files carry in
// `tokenizer.chat_template`, interpreted so that an OpenAI `messages` array
// becomes exactly the prompt Hugging Face's apply_chat_template() gives.
//
// Semantics follow Python jinja2 3.1 as transformers configures it:
// ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True) with
// the loopcontrols extension ({% break %}, {% continue %}), a `tojson`
// filter that is json.dumps(ensure_ascii=False), and the globals
// raise_exception(msg) and strftime_now(fmt). The variables are `messages`,
// `add_generation_prompt`, `bos_token`, `eos_token`, `tools` and `documents`
// (none unless `extra` sets them) and everything in `extra`. Undefined
// values behave like jinja2's default Undefined: they print as "", are false,
// iterate as empty and pass `is defined` checks; using one in arithmetic, or
// taking an attribute or item of one, is an error.
//
// Supported: {{ }}, {% %}, {# #}, whitespace control (-, +), if/elif/else,
// for (loop.*, else, `for x in y if cond`, unpacking), set (incl. block set,
// namespace() and ns.attr), macro (no call blocks), break/continue,
// generation blocks (rendered as plain content), the filters, tests,
// operators and string/dict methods that real templates use. Not supported:
// include/extends/import, {% raw %}, {% call %}, {% filter %}, `%` string
// formatting, str.format, recursive loops, Markup auto-escaping. See
// chat_template.cpp for the full list. Integers are 64-bit where Python's
// are unbounded: one that does not fit (a literal, an arithmetic result,
// the int filter's, a number in the inputs) is an error, never a float or
// a wrapped value printed in its place.
//
// Errors, all kInvalidArgument (the template or the request is at fault):
//  - parse(): a syntax error, "chat template: line L col C: ...", or a
//    construct this interpreter does not have; a source over
//    max_source_bytes or not valid UTF-8.
//  - render(): raise_exception(msg) fails with exactly `msg` as the message
//    (templates use it to reject conversations, e.g. roles that do not
//    alternate); other failures say "chat template line L: ..." (a type
//    error, an undefined value used where jinja2 raises, division by zero,
//    an integer beyond 64 bits, an unknown filter).
//  kResourceExhausted when a limit below is hit (hostile template or input).
//
// The template comes from a model file and is untrusted: no source and no
// input can make parse() or render() crash, recurse without bound, loop
// forever or allocate without bound; every limit is in ChatTemplateLimits.
//
// Thread-safety: a ChatTemplate is immutable after parse(); render() may run
// concurrently from many threads. Copies share the parsed program.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "airlock/common/json.h"

#include "airlock/common/status.h"

namespace airlock::engine {

struct ChatTemplateLimits {
  std::size_t max_source_bytes = 1 << 20;   // template text
  std::size_t max_output_bytes = 1 << 20;   // rendered prompt, and any one string value
  std::size_t max_alloc_bytes = 64 << 20;   // all strings and list entries made in one render
  std::size_t max_steps = 20'000'000;       // evaluation steps + loop iterations in one render
  std::size_t max_list_items = 100'000;     // one list (as jinja2's sandbox MAX_RANGE)
  int max_nesting = 64;                     // blocks inside blocks, brackets inside brackets
  int max_call_depth = 200;                 // runtime recursion (expressions, blocks, macro calls)
};

// Objects keep their key order (ordered_json) because Python dicts do and
// `tojson` prints keys in that order; a plain nlohmann::json converts
// implicitly (its keys are then sorted).
struct ChatTemplateInputs {
  nlohmann::ordered_json messages = nlohmann::ordered_json::array();  // [{role, content, ...}]
  bool add_generation_prompt = true;
  std::string bos_token, eos_token;
  nlohmann::ordered_json extra = nlohmann::ordered_json::object();  // more variables: tools, enable_thinking, ...
  // For strftime_now(): seconds since the Unix epoch, formatted in local
  // time as Python's datetime.now() does; -1 reads the system clock.
  std::int64_t now_unix_s = -1;
};

struct ChatTemplateProgram;  // the parsed template (chat_template.cpp)

class ChatTemplate {
 public:
  static Result<ChatTemplate> parse(std::string_view source, const ChatTemplateLimits& limits = {});

  Result<std::string> render(const ChatTemplateInputs& in) const;

  const ChatTemplateLimits& limits() const;

 private:
  explicit ChatTemplate(std::shared_ptr<const ChatTemplateProgram> program) : program_(std::move(program)) {}
  std::shared_ptr<const ChatTemplateProgram> program_;
};

}  // namespace airlock::engine
