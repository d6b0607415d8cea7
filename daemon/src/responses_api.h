// POST /v1/responses, OpenAI's Responses API, served without state: the
// request's input items become a chat conversation (the same template,
// sampling, tools and JSON Schema constraint as /v1/chat/completions), and
// the answer comes back as a response object, or streamed as its typed
// events (response.created ... response.completed).
//
// Nothing is stored: `previous_response_id`, `conversation`, item
// references and background responses are refused by name, and every
// response says `"store": false`. Only function tools are served (hosted
// tools such as web_search are OpenAI's own). A function's `strict`
// defaults to true, as in OpenAI's Responses API.
//
// The body is untrusted: parse_responses_request() never throws, and its
// errors name the Responses parameter (input[3].content, text.format,
// max_output_tokens), not the chat one it became.
//
// Thread-safety: free functions without shared state.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "openai_api.h"
#include "tool_calls.h"

namespace airlock::daemon {

// What a response object repeats of its request.
struct ResponsesEcho {
  ojson instructions;                        // as sent (null when absent)
  ojson tools = ojson::array();              // as sent, with strict filled in
  ojson tool_choice = "auto";                // as sent
  ojson text = {{"format", {{"type", "text"}}}};
  ojson reasoning = {{"effort", nullptr}, {"summary", nullptr}};
  ojson metadata = ojson::object();
  ojson max_output_tokens;                   // null when absent
  ojson temperature = 1.0, top_p = 1.0;      // as sent, else OpenAI's defaults
  ojson user;                                // null when absent
  ojson truncation = "disabled";             // or "auto" (an input that does not fit is a 400 either way)
  bool parallel_tool_calls = true;
  bool output_logprobs = false;              // include: "message.output_text.logprobs"
  int top_logprobs = 0;
};

// Parses a Responses body into the chat request it becomes, with
// out->responses set. Returns the 400 to send, or nullopt.
std::optional<ApiError> parse_responses_request(std::string_view body, CompletionRequest* out);

// One answer as a response object sees it.
struct ResponseOutput {
  std::string id;  // resp_...
  std::int64_t created_at = 0;
  std::string model;
  std::string status = "in_progress";  // in_progress, completed, incomplete, failed (items so far, incomplete)
  std::string reasoning_id, message_id;  // of the items, when present
  std::string reasoning;                 // the reasoning item's text (none when empty)
  bool reasoning_ended = true;           // its block was closed (false: cut inside it)
  bool has_message = false;              // a message item (its text may be empty)
  std::string text;
  ojson logprobs;                        // the text's entries (array), or null when not asked
  std::vector<ToolCall> calls;           // function_call items, in order, ids set
  ojson usage;                           // null while in progress
  ojson error;                           // {code, message} when failed
};

// The reasoning item's status once the answer has ended: "incomplete" when
// the answer was cut inside its reasoning block.
std::string reasoning_status(const ResponseOutput& out);

// `text` (an error message) with chat's tool paths as the Responses API's
// flat tools name them: tools[0].function.description -> tools[0].description.
std::string flat_tool_paths(std::string text);

// The function_call item id of a call ("fc_" and the call id's own part).
std::string function_call_item_id(const ToolCall& call);

// Items as the stream opens them (`in_progress`, empty) and as they end.
ojson reasoning_item(const std::string& id, const std::string& text, const std::string& status);
ojson message_item(const std::string& id, const std::string& text, const ojson& logprobs, const std::string& status,
                   bool with_content = true);
ojson output_text_part(const std::string& text, const ojson& logprobs);
ojson function_call_item(const ToolCall& call, const std::string& arguments, const std::string& status);

// The response object.
ojson response_json(const ResponsesEcho& echo, const ResponseOutput& out);

// The usage object from token counts.
ojson responses_usage(int input_tokens, int cached_tokens, int output_tokens, int reasoning_tokens);

}  // namespace airlock::daemon
