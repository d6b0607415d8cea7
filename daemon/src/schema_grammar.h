// Structured outputs (response_format "json_schema"): a JSON Schema compiled
// into a grammar (airlock/engine/grammar.h) whose sentences are JSON texts
// that follow it, so that constrained decoding (JsonConstraint) holds the
// answer to the schema, not only to JSON syntax.
//
// Held to, exactly: type (a name or a list); properties, written in the
// order given, those in `required` always and the others when the model
// chooses; `required` names not among the properties (any value, or the
// additionalProperties schema); additionalProperties without properties
// (an object of any keys whose values follow it; false: `{}`); beside
// properties only the named keys are written (an instance of any
// additionalProperties); items, minItems, maxItems; minLength, maxLength
// (in characters: an escape is one, a \u surrogate pair too); pattern
// (json_pattern.h: the string is held to it; beside a length bound the
// bound is not held, so not exactly); enum
// and const (their values in compact JSON, those that also follow the
// rest of the schema); anyOf; oneOf whose branches no value can follow two
// of (types that exclude each other, disjoint const/enum values, or
// objects requiring a member so told apart: pydantic's discriminated
// unions); allOf of one schema; $ref to "#", "#/$defs/NAME" or
// "#/definitions/NAME", recursion included; minimum, maximum,
// exclusiveMinimum and exclusiveMaximum (as the validator compares them, in
// doubles; a bounded number is written without an exponent).
// Held in part: other oneOf (as anyOf: "only one" is not held).
// String formats that a grammar can spell (date, time, date-time,
// duration, uuid, ipv4, hostname, email) are written in that form, unless
// beside a length bound; others are any string.
// Not held (accepted): the other annotations unsupported_schema accepts
// unchecked.
// Refused, with the reason: what unsupported_schema refuses; allOf of more
// than one schema; $ref, anyOf, oneOf or allOf beside keywords that
// constrain; a schema no value follows (false, an enum of none); a $ref
// loop that reads no value between; minItems or maxItems over 10,000; a
// grammar of more than 2,000,000 elements. nullable (OpenAPI 3.0's, as
// openai-node sends zod's nullable()) allows null as well.
//
// Between tokens the answer may have up to 32 whitespace bytes; after the
// value, nothing.
//
// Thread-safety: free function, no shared state.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "airlock/common/json.h"

#include "airlock/engine/grammar.h"
#include "tool_calls.h"

namespace airlock::daemon {

// The grammar of `schema`'s instances, or null with *error set (the reason,
// naming the subschema from `root`). *exact, when given, says whether every
// keyword is held exactly (no oneOf held only as anyOf): then every
// sentence follows the schema.
std::shared_ptr<const engine::Grammar> compile_schema(const nlohmann::ordered_json& schema, std::string_view root,
                                                      std::string* error, bool* exact = nullptr);

// A forced tool call (tool_choice "required", or a named function): the
// grammar of an answer that is nothing but calls, in the model's form,
// each naming one of `tools` (only the one named `only`, when not empty)
// with arguments held to its parameters' schema as above. A tool without
// parameters takes {}; a schema that cannot be held gives a strict tool's
// error, and any object for a tool that is not strict. One call without
// `parallel`, else one or more.
//  - hermes: <tool_call>{"name": "NAME", "arguments": ARGS}</tool_call>,
//    the calls separated by whitespace;
//  - llama3_json: {"name": "NAME", "parameters": ARGS}, separated by ';';
//  - mistral: [{"name": "NAME", "arguments": ARGS}, ...], one array (its
//    [TOOL_CALLS] control token before it is the constraint's lead token).
// A model without a form is refused with the reason, as is an `only` that
// names no tool.
// With `answer` (tools beside a JSON response_format, tool_choice "auto"):
// calls as above, or else the answer in JSON, an instance of *answer (a
// JSON Schema; null: any object).
std::shared_ptr<const engine::Grammar> tool_call_grammar(ToolFormat format, const std::vector<ToolSpec>& tools,
                                                         const std::string& only, bool parallel, std::string* error,
                                                         const nlohmann::ordered_json* answer = nullptr);

}  // namespace airlock::daemon
