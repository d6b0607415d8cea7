// Tool calling (OpenAI `tools`): which convention a model's chat template
// teaches it for calling a tool, and the calls found in what it wrote.
//
// The template describes the tools to the model; the model then answers
// with text in that convention, which is parsed here into OpenAI
// `tool_calls`. Two conventions are known (vLLM's parsers of the same
// names, for the same model families):
//  - hermes: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`
//    blocks, any number, possibly after some text (Qwen2.5, Qwen3, Hermes
//    2/3 and the many models trained on that format). Found by the
//    template's own "<tool_call>" beside a JSON "name", and neither
//    "<function=" nor "<arg_key>" (Qwen3-Coder and GLM put XML-style
//    calls in the same tags: not read).
//  - llama3_json: the whole answer is `{"name": ..., "parameters": {...}}`,
//    or several such objects separated by ';' (Llama 3.1, 3.2, 3.3). Found
//    by the template's "<|python_tag|>", its "Environment: ipython" or its
//    instruction to answer {"name": ..., "parameters": dictionary of ...}.
//  - mistral: the answer is `[{"name": ..., "arguments": {...}}, ...]`
//    after the [TOOL_CALLS] control token, which decoding drops (Mistral 7B
//    Instruct v0.3, Nemo, Small up to 2501: tokenizer v3). Found by the
//    template's "[TOOL_CALLS]" without "[ARGS]". Its templates require call
//    ids of 9 letters and digits.
// A template with none of these (no tool support, or a convention not
// known here, such as the `[TOOL_CALLS]name[ARGS]{...}` of Mistral's later
// tokenizers, whose structure lives in control tokens) gets kNone, and a
// request with tools is refused for it rather than answered with unparsed
// text.
//
// The model's output is untrusted text: a block that is not a JSON object
// naming a declared tool with an object of arguments is left in the answer
// as text, never half-parsed; nothing here throws.
//
// Thread-safety: free functions without shared state.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "airlock/common/json.h"

namespace airlock::daemon {

enum class ToolFormat { kNone, kHermes, kLlamaJson, kMistral };

// The control token before Mistral's calls (tokenizer v3).
inline constexpr std::string_view kMistralCallsToken = "[TOOL_CALLS]";

// The convention `chat_template` (the template's source) teaches.
ToolFormat tool_format_of(std::string_view chat_template);
const char* tool_format_name(ToolFormat f);  // "none", "hermes", "llama3_json", "mistral"

// A tool the request offers. With `strict` (OpenAI's strict function
// calling), a call counts only if its arguments follow `parameters`, a JSON
// Schema in the subset below: nothing constrains what the model writes, so
// arguments that do not follow it leave the call as text, and a client
// gets no call it was promised would conform.
struct ToolSpec {
  std::string name;
  bool strict = false;
  nlohmann::ordered_json parameters;  // null: none (strict: the arguments must be {})
};

// Why `schema` (a strict tool's parameters) cannot be checked here, or
// nullopt. Supported: type (a name or a list), properties, required,
// additionalProperties, items, enum, const, anyOf, allOf, oneOf, $ref to
// "#", "#/$defs/NAME" or "#/definitions/NAME", $defs, definitions, nullable
// (OpenAPI 3.0's, as zod's nullable() is sent: null allowed too), minimum,
// maximum, exclusiveMinimum, exclusiveMaximum, minItems, maxItems,
// minLength, maxLength, the annotations description, title, default,
// examples, and, accepted but not checked, $schema, $id, $comment, format,
// readOnly, writeOnly, deprecated, discriminator, contentEncoding,
// contentMediaType. Anything else (pattern, multipleOf, ...) is named. At
// most 10,000 subschemas and 10,000 enum and required entries. `root`
// names the schema in the reason.
std::optional<std::string> unsupported_schema(const nlohmann::ordered_json& schema, std::string_view root = "parameters");

// The schema a "$ref" value names in `root` ("#", "#/$defs/NAME" or
// "#/definitions/NAME"), or null.
const nlohmann::ordered_json* resolve_ref(const nlohmann::ordered_json& root, const nlohmann::ordered_json& ref);

// Whether `value` follows `schema` (one that unsupported_schema accepts).
// Bounded work whatever the schema ($ref loops, nested anyOf): past the
// bounds the answer is no.
bool follows_schema(const nlohmann::ordered_json& schema, const nlohmann::ordered_json& value);

// The work one check may do: subschemas looked at (each also costs its enum
// and required entries and the members of the value it looks at), and the
// patterns' recognisers' work (json_pattern.h).
struct SchemaWork {
  long steps = 250'000;
  std::uint64_t pattern_work = 2'000'000;
  // The steps ran out: an answer may be "no" only for that.
  bool spent() const { return steps < 0; }
};
// The same for `schema`, a part of `root` (its $refs are read in root),
// taking its work from *work (for many checks against one budget).
bool follows_subschema(const nlohmann::ordered_json& root, const nlohmann::ordered_json& schema,
                       const nlohmann::ordered_json& value, SchemaWork* work);

// JSON equality as JSON Schema has it: objects whatever their key order,
// 1 and 1.0 alike.
bool same_json(const nlohmann::ordered_json& a, const nlohmann::ordered_json& b);

struct ToolCall {
  std::string name;
  std::string arguments;  // a JSON object, compact (as OpenAI sends it)
  std::string id;         // left empty here; the server names each call
};

struct ToolOutput {
  std::string content;  // the answer's text outside the calls (trailing whitespace removed when there are calls)
  std::vector<ToolCall> calls;
};

// The calls in a whole answer. Calls must name one of `tools` (and follow
// its schema when it is strict); at most
// `max_calls` are kept (1 for parallel_tool_calls false), later ones are
// dropped. Without a call the content is `text` unchanged.
ToolOutput parse_tool_calls(ToolFormat f, std::string_view text, const std::vector<ToolSpec>& tools,
                            std::size_t max_calls = static_cast<std::size_t>(-1));

// While an answer streams: how many of its first bytes can be sent as
// content now, knowing only the text so far (nothing after them can turn
// out to be part of a call). Given the answer each time it has grown, it
// looks only at what was added (an answer of a million bytes in a million
// pieces costs a million steps, not 10^12). The prefix never shrinks; the
// rest is held until the answer ends. Trailing whitespace is held too, so
// that the streamed content equals parse_tool_calls(...).content.
class ToolStream {
 public:
  explicit ToolStream(ToolFormat f) : f_(f) {}
  std::size_t safe_prefix(std::string_view text);

 private:
  ToolFormat f_;
  std::size_t scanned_ = 0;     // bytes of the answer looked at
  std::size_t nonws_end_ = 0;   // Hermes: one past the last non-whitespace byte among them
  std::size_t safe_ = 0;
  bool frozen_ = false;         // a call may have begun: nothing more is sent before the end
  bool free_ = false;           // no call can begin any more: everything is sent
};

}  // namespace airlock::daemon
