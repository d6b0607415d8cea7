#include "responses_api.h"

#include <algorithm>
#include <map>
#include <memory>
#include <utility>

namespace airlock::daemon {
namespace {

constexpr std::size_t kMaxItems = 4096;     // input items (chat's message limit)
constexpr std::size_t kMaxInclude = 16;
constexpr std::size_t kMaxMetadata = 16;    // OpenAI's limits on metadata
constexpr std::size_t kMaxMetadataKey = 64;
constexpr std::size_t kMaxMetadataValue = 512;

ApiError invalid(const std::string& param, const std::string& message) {
  ApiError e;
  e.message = message;
  e.param = param;
  return e;
}

bool given(const ojson& j, const char* key) { return j.contains(key) && !j[key].is_null(); }

// The text of a content value: a string, or an array of text parts
// (input_text, output_text, text, refusal) joined by newlines as chat's
// parts are. Images, files and audio are refused.
std::optional<ApiError> content_text(const ojson& content, const std::string& param, std::string* out) {
  if (content.is_string()) {
    *out = content.get<std::string>();
    return std::nullopt;
  }
  if (!content.is_array()) return invalid(param, param + " must be a string or an array of content parts");
  bool first = true;
  for (const ojson& part : content) {
    if (!part.is_object() || !part.contains("type") || !part["type"].is_string())
      return invalid(param, param + ": each content part needs a \"type\"");
    const std::string type = part["type"].get<std::string>();
    const char* key = type == "refusal" ? "refusal" : "text";
    if (type != "input_text" && type != "output_text" && type != "text" && type != "refusal")
      return invalid(param, param + ": content parts of type '" + type.substr(0, 64) +
                                "' are not supported (text only: input_text, output_text)");
    if (!part.contains(key) || !part[key].is_string())
      return invalid(param, param + ": a " + type + " part needs \"" + key + "\"");
    if (!first) *out += '\n';
    first = false;
    *out += part[key].get<std::string>();
  }
  return std::nullopt;
}

// A string field of an item: present, a string, and not empty.
std::optional<ApiError> item_string(const ojson& item, const char* key, const std::string& param, std::string* out) {
  if (!item.contains(key) || !item[key].is_string() || item[key].get_ref<const std::string&>().empty())
    return invalid(param + "." + key, param + "." + key + " must be a non-empty string");
  *out = item[key].get<std::string>();
  return std::nullopt;
}

// Where each chat message (and each of its tool calls) came from in the
// Responses request, to name it in errors.
struct Origins {
  std::vector<std::string> messages;                               // per message
  std::map<std::pair<std::size_t, std::size_t>, std::string> calls;  // (message, call) -> its function_call item
};

// The chat messages of `instructions` and `input`.
std::optional<ApiError> input_messages(const ojson& j, ojson* messages, Origins* origins_out) {
  std::vector<std::string>* origins = &origins_out->messages;
  if (given(j, "instructions")) {
    if (!j["instructions"].is_string()) return invalid("instructions", "instructions must be a string");
    if (!j["instructions"].get_ref<const std::string&>().empty()) {
      messages->push_back({{"role", "system"}, {"content", j["instructions"]}});
      origins->push_back("instructions");
    }
  }
  if (!given(j, "input")) return invalid("input", "input is required: a string or an array of input items");
  const ojson& input = j["input"];
  if (input.is_string()) {
    messages->push_back({{"role", "user"}, {"content", input}});
    origins->push_back("input");
    return std::nullopt;
  }
  if (!input.is_array() || input.empty()) return invalid("input", "input must be a string or a non-empty array of items");
  if (input.size() > kMaxItems) return invalid("input", "input has more than 4096 items");
  std::map<std::string, std::string> call_names;  // call_id -> function name, for the outputs
  std::string reasoning;  // of reasoning items, for the assistant turn they lead to
  // Whether the last message is an assistant turn that function_call items
  // join (OpenAI sends a turn's text and its calls as separate items).
  bool assistant_open = false;
  auto assistant_turn = [&](const std::string& origin) -> ojson& {
    if (!assistant_open) {
      ojson msg = {{"role", "assistant"}, {"content", ""}};
      if (!reasoning.empty()) msg["reasoning_content"] = std::exchange(reasoning, {});
      messages->push_back(std::move(msg));
      origins->push_back(origin);
      assistant_open = true;
    }
    return messages->back();
  };
  for (std::size_t i = 0; i < input.size(); ++i) {
    const ojson& item = input[i];
    const std::string param = "input[" + std::to_string(i) + "]";
    if (!item.is_object()) return invalid(param, param + " must be an object");
    if (item.contains("type") && !item["type"].is_string()) return invalid(param + ".type", param + ".type must be a string");
    // A message may leave out its type (EasyInputMessage).
    const std::string type = item.contains("type") ? item["type"].get<std::string>() : item.contains("role") ? "message" : "";
    if (type == "message") {
      if (!item.contains("role") || !item["role"].is_string()) return invalid(param + ".role", param + ".role must be a string");
      const std::string role = item["role"].get<std::string>();
      if (role != "user" && role != "system" && role != "developer" && role != "assistant")
        return invalid(param + ".role", param + ".role '" + role.substr(0, 64) +
                                            "' is not one of user, system, developer, assistant");
      if (!item.contains("content")) return invalid(param + ".content", param + ".content is required");
      std::string text;
      if (auto e = content_text(item["content"], param + ".content", &text)) return e;
      if (role == "assistant") {
        // A new turn: its calls, if any, follow as function_call items.
        assistant_open = false;
        ojson& msg = assistant_turn(param);
        msg["content"] = std::move(text);
      } else {
        messages->push_back({{"role", role}, {"content", std::move(text)}});
        origins->push_back(param);
        assistant_open = false;
        reasoning.clear();  // it led to no assistant turn
      }
    } else if (type == "function_call") {
      std::string call_id, name;
      if (auto e = item_string(item, "call_id", param, &call_id)) return e;
      if (auto e = item_string(item, "name", param, &name)) return e;
      if (!item.contains("arguments") || !item["arguments"].is_string())
        return invalid(param + ".arguments", param + ".arguments must be a string (the call's JSON)");
      call_names[call_id] = name;
      ojson& turn = assistant_turn(param);
      if (!turn.contains("tool_calls")) turn["tool_calls"] = ojson::array();
      origins_out->calls[{messages->size() - 1, turn["tool_calls"].size()}] = param;
      turn["tool_calls"].push_back(
          {{"id", call_id}, {"type", "function"}, {"function", {{"name", name}, {"arguments", item["arguments"]}}}});
    } else if (type == "function_call_output") {
      std::string call_id, output;
      if (auto e = item_string(item, "call_id", param, &call_id)) return e;
      if (!item.contains("output")) return invalid(param + ".output", param + ".output is required");
      if (auto e = content_text(item["output"], param + ".output", &output)) return e;
      ojson msg = {{"role", "tool"}, {"tool_call_id", call_id}, {"content", std::move(output)}};
      if (auto it = call_names.find(call_id); it != call_names.end()) msg["name"] = it->second;
      messages->push_back(std::move(msg));
      origins->push_back(param);
      assistant_open = false;
      reasoning.clear();
    } else if (type == "reasoning") {
      // Its text goes with the assistant turn it leads to (templates that
      // keep the reasoning of a turn in progress print it): the one that
      // follows, or the one open (reasoning between a turn's text and its
      // calls). A summary or encrypted content alone has nothing to give
      // back.
      std::string text;
      if (item.contains("content") && !item["content"].is_null()) {
        if (!item["content"].is_array()) return invalid(param + ".content", param + ".content must be an array");
        for (const ojson& part : item["content"])
          if (part.is_object() && part.contains("text") && part["text"].is_string())
            text += part["text"].get<std::string>();
      }
      if (assistant_open && !text.empty()) {
        ojson& turn = messages->back();
        turn["reasoning_content"] =
            (turn.contains("reasoning_content") ? turn["reasoning_content"].get<std::string>() : std::string()) + text;
      } else {
        reasoning += text;
      }
    } else if (type == "item_reference") {
      return invalid(param, param + ": item references need stored items, and this server stores none (send the "
                                    "items themselves)");
    } else {
      return invalid(param + ".type", param + ": items of type '" + type.substr(0, 64) +
                                          "' are not supported here (message, function_call, function_call_output, "
                                          "reasoning)");
    }
  }
  return std::nullopt;
}

// tools, tool_choice and max_tool_calls, into chat's tools and tool_choice.
std::optional<ApiError> tools_of(const ojson& j, ojson* chat, ResponsesEcho* echo) {
  if (given(j, "tools")) {
    const ojson& tools = j["tools"];
    if (!tools.is_array()) return invalid("tools", "tools must be an array");
    ojson out = ojson::array();
    for (std::size_t i = 0; i < tools.size(); ++i) {
      const std::string param = "tools[" + std::to_string(i) + "]";
      const ojson& t = tools[i];
      if (!t.is_object() || !t.contains("type") || !t["type"].is_string())
        return invalid(param + ".type", param + " must be an object with a \"type\"");
      if (t["type"] != "function")
        return invalid(param + ".type", param + ": tools of type '" + t["type"].get<std::string>().substr(0, 64) +
                                            "' are not served here (OpenAI hosts them); only function tools are");
      ojson f = ojson::object();
      for (const char* key : {"name", "description", "parameters", "strict"})
        if (t.contains(key)) f[key] = t[key];
      // OpenAI's Responses API holds functions to their schemas unless told not to.
      if (!f.contains("strict") || f["strict"].is_null()) f["strict"] = true;
      ojson kept = t;
      kept["strict"] = f["strict"];
      echo->tools.push_back(std::move(kept));
      out.push_back({{"type", "function"}, {"function", std::move(f)}});
    }
    (*chat)["tools"] = std::move(out);
  }
  if (given(j, "tool_choice")) {
    const ojson& c = j["tool_choice"];
    echo->tool_choice = c;
    if (c.is_string()) {
      (*chat)["tool_choice"] = c;  // none, auto, required: checked as chat's
    } else if (c.is_object() && c.contains("type") && c["type"] == "function" && c.contains("name") &&
               c["name"].is_string()) {
      (*chat)["tool_choice"] = {{"type", "function"}, {"function", {{"name", c["name"]}}}};
    } else {
      return invalid("tool_choice", "tool_choice must be \"none\", \"auto\", \"required\" or "
                                    "{\"type\": \"function\", \"name\": ...} (allowed_tools and hosted tools are not "
                                    "served here)");
    }
  }
  if (given(j, "parallel_tool_calls")) {
    if (!j["parallel_tool_calls"].is_boolean())
      return invalid("parallel_tool_calls", "parallel_tool_calls must be true or false");
    echo->parallel_tool_calls = j["parallel_tool_calls"].get<bool>();
  }
  if (given(j, "max_tool_calls")) {
    const ojson& m = j["max_tool_calls"];
    if (!m.is_number_integer() || m.get<std::int64_t>() < 1)
      return invalid("max_tool_calls", "max_tool_calls must be a positive integer");
    // One call is what parallel_tool_calls: false holds an answer to; a
    // larger bound with parallel calls is not held here.
    if (m.get<std::int64_t>() == 1) echo->parallel_tool_calls = false;
    else if (echo->parallel_tool_calls)
      return invalid("max_tool_calls", "max_tool_calls above 1 is not held to here: send 1, or parallel_tool_calls: "
                                       "false");
  }
  (*chat)["parallel_tool_calls"] = echo->parallel_tool_calls;
  return std::nullopt;
}

// text.format into chat's response_format.
std::optional<ApiError> text_format_of(const ojson& j, ojson* chat, ResponsesEcho* echo) {
  if (!given(j, "text")) return std::nullopt;
  const ojson& text = j["text"];
  if (!text.is_object()) return invalid("text", "text must be an object");
  if (!given(text, "format")) return std::nullopt;
  const ojson& f = text["format"];
  if (!f.is_object() || !f.contains("type") || !f["type"].is_string())
    return invalid("text.format", "text.format must be an object with a \"type\"");
  echo->text["format"] = f;
  const std::string type = f["type"].get<std::string>();
  if (type == "text" || type == "json_object") {
    (*chat)["response_format"] = {{"type", type}};
  } else if (type == "json_schema") {
    ojson js = ojson::object();
    for (const char* key : {"name", "description", "schema", "strict"})
      if (f.contains(key)) js[key] = f[key];
    (*chat)["response_format"] = {{"type", "json_schema"}, {"json_schema", std::move(js)}};
  } else {
    return invalid("text.format.type", "text.format '" + type.substr(0, 64) +
                                           "' is not supported (text, json_object, json_schema)");
  }
  return std::nullopt;
}

// The number in "[N]" at p[at], and the index after its ']' (npos when
// there is none).
std::size_t index_at(const std::string& p, std::size_t at, std::size_t* after) {
  *after = std::string::npos;
  if (p.compare(at, 1, "[") != 0) return 0;
  const std::size_t close = p.find(']', at);
  if (close == std::string::npos || close == at + 1 || close - at > 8 ||
      p.find_first_not_of("0123456789", at + 1) != close)
    return 0;
  *after = close + 1;
  return std::stoul(p.substr(at + 1, close - at - 1));
}

// A chat parameter named in an error, as the Responses request named it.
ApiError renamed(ApiError e, const Origins& origins) {
  std::string from, to;
  bool in_message = true;  // the message names the parameter as `from` too
  const std::string& p = e.param;
  auto starts = [&](const std::string& prefix) { return p.compare(0, prefix.size(), prefix) == 0; };
  if (starts("messages[")) {
    std::size_t after = 0;
    const std::size_t k = index_at(p, 8, &after);
    if (after == std::string::npos) return e;
    from = p.substr(0, after);
    to = k < origins.messages.size() ? origins.messages[k] : "input";
    // One of a turn's calls: its own function_call item.
    constexpr std::string_view kCalls = ".tool_calls";
    if (p.compare(after, kCalls.size(), kCalls) == 0) {
      std::size_t call_end = 0;
      const std::size_t m = index_at(p, after + kCalls.size(), &call_end);
      if (auto it = origins.calls.find({k, m}); call_end != std::string::npos && it != origins.calls.end()) {
        constexpr std::string_view kFunction = ".function";
        from = p.substr(0, call_end);
        if (p.compare(call_end, kFunction.size(), kFunction) == 0) from += kFunction;
        to = it->second;
      }
    }
  } else if (p == "messages") {
    from = p;
    to = "input";
  } else if (starts("response_format.json_schema")) {
    from = "response_format.json_schema";
    to = "text.format";
  } else if (starts("response_format")) {
    from = "response_format";
    to = "text.format";
  } else if (p == "reasoning_effort") {
    from = p;
    to = "reasoning.effort";
  } else if (p == "max_completion_tokens") {
    from = p;
    to = "max_output_tokens";
  } else if (p == "logprobs") {
    from = p;
    to = "include";
    in_message = false;  // "logprobs are not returned with tools" says what it means
  } else if (starts("tools[") && p.find("].function") != std::string::npos) {
    from = p.substr(0, p.find("].function") + 10);
    to = p.substr(0, p.find("].function") + 1);
  }
  if (from.empty()) return e;
  // In the message too, which names the parameter as the error's param
  // (and json_schema's messages name response_format alone).
  auto replace_all = [&](const std::string& a, const std::string& b) {
    for (std::size_t at = 0; (at = e.message.find(a, at)) != std::string::npos; at += b.size()) e.message.replace(at, a.size(), b);
  };
  if (in_message) replace_all(from, to);
  if (starts("response_format")) replace_all("response_format", "text.format");
  e.param = to + p.substr(from.size());
  return e;
}

}  // namespace

std::optional<ApiError> parse_responses_request(std::string_view body, CompletionRequest* out) {
  ojson j;
  if (auto e = parse_json_object(body, &j)) return e;
  auto echo = std::make_shared<ResponsesEcho>();
  // What needs a stored response, or runs on OpenAI's side.
  for (const char* key : {"previous_response_id", "conversation"})
    if (given(j, key))
      return invalid(key, std::string(key) + ": this server stores no responses or conversations (send the whole "
                                             "conversation as input items)");
  if (given(j, "prompt")) return invalid("prompt", "prompt templates are kept by OpenAI, not here (send input)");
  if (given(j, "background") && j["background"] != false)
    return invalid("background", "background responses need stored responses, and this server stores none");
  if (given(j, "store") && !j["store"].is_boolean()) return invalid("store", "store must be true or false");
  // "auto" drops early items from an input that does not fit; here such an
  // input is a 400 either way, and one that fits is answered the same.
  if (given(j, "truncation") && j["truncation"] != "disabled" && j["truncation"] != "auto")
    return invalid("truncation", "truncation must be \"disabled\" or \"auto\"");
  if (given(j, "user") && !j["user"].is_string()) return invalid("user", "user must be a string");
  if (given(j, "airlock"))
    return invalid("airlock", "grounded answers are served by /v1/chat/completions and /v1/rag/query");

  ojson chat = ojson::object();
  if (j.contains("model")) chat["model"] = j["model"];  // checked as chat's
  ojson messages = ojson::array();
  Origins origins;
  if (auto e = input_messages(j, &messages, &origins)) return e;
  chat["messages"] = std::move(messages);
  if (given(j, "instructions")) echo->instructions = j["instructions"];

  // Sampling and limits under their chat names; the extensions chat takes
  // (seed, top_k, ...) are taken here too.
  for (const char* key : {"temperature", "top_p", "stream", "seed", "top_k", "min_p", "presence_penalty",
                          "frequency_penalty", "repetition_penalty", "logit_bias", "stop", "ignore_eos",
                          "chat_template_kwargs", "user", "top_logprobs"})
    if (j.contains(key)) chat[key] = j[key];
  if (j.contains("max_output_tokens")) chat["max_completion_tokens"] = j["max_output_tokens"];
  if (given(j, "include")) {
    const ojson& inc = j["include"];
    if (!inc.is_array() || inc.size() > kMaxInclude) return invalid("include", "include must be an array of up to 16 names");
    for (const ojson& x : inc) {
      if (!x.is_string()) return invalid("include", "include must be an array of strings");
      // Other inclusions concern hosted tools, images or encrypted
      // reasoning, none of which an answer here has.
      if (x == "message.output_text.logprobs") echo->output_logprobs = true;
    }
  }
  if (given(j, "top_logprobs") && j["top_logprobs"].is_number_integer() && j["top_logprobs"].get<std::int64_t>() > 0)
    echo->output_logprobs = true;
  if (echo->output_logprobs) chat["logprobs"] = true;
  if (auto e = tools_of(j, &chat, echo.get())) return e;
  if (auto e = text_format_of(j, &chat, echo.get())) return e;
  if (given(j, "reasoning")) {
    const ojson& r = j["reasoning"];
    if (!r.is_object()) return invalid("reasoning", "reasoning must be an object");
    // effort is chat's reasoning_effort (the template variable), checked
    // there and named back as reasoning.effort. summary changes nothing:
    // the reasoning item carries the whole text, its summary empty.
    if (given(r, "effort")) {
      chat["reasoning_effort"] = r["effort"];
      echo->reasoning["effort"] = r["effort"];
    }
    if (given(r, "summary")) {
      if (!r["summary"].is_string()) return invalid("reasoning.summary", "reasoning.summary must be a string");
      echo->reasoning["summary"] = r["summary"];
    }
  }
  if (given(j, "metadata")) {
    const ojson& m = j["metadata"];
    if (!m.is_object() || m.size() > kMaxMetadata) return invalid("metadata", "metadata must be an object of up to 16 keys");
    for (auto it = m.begin(); it != m.end(); ++it)
      if (it.key().size() > kMaxMetadataKey || !it.value().is_string() ||
          it.value().get_ref<const std::string&>().size() > kMaxMetadataValue)
        return invalid("metadata", "metadata values must be strings of up to 512 characters, keys up to 64");
    echo->metadata = m;
  }

  CompletionRequest r;
  if (auto e = parse_request_object(chat, Endpoint::kChat, &r)) return renamed(std::move(*e), origins);
  if (j.contains("temperature") && j["temperature"].is_number()) echo->temperature = j["temperature"];
  if (j.contains("top_p") && j["top_p"].is_number()) echo->top_p = j["top_p"];
  if (r.max_tokens) echo->max_output_tokens = *r.max_tokens;
  if (given(j, "user")) echo->user = j["user"];
  if (given(j, "truncation")) echo->truncation = j["truncation"];
  echo->top_logprobs = r.top_logprobs;
  r.responses = std::move(echo);
  *out = std::move(r);
  return std::nullopt;
}

std::string flat_tool_paths(std::string text) {
  constexpr std::string_view kNested = "].function.";
  for (std::size_t at; (at = text.find(kNested)) != std::string::npos;) text.erase(at + 1, kNested.size() - 2);
  return text;
}

std::string function_call_item_id(const ToolCall& call) {
  constexpr std::string_view kCall = "call_";
  const std::string_view id(call.id);
  return "fc_" + std::string(id.substr(0, kCall.size()) == kCall ? id.substr(kCall.size()) : id);
}

std::string reasoning_status(const ResponseOutput& out) {
  return out.status != "completed" && !out.reasoning_ended ? "incomplete" : "completed";
}

ojson reasoning_item(const std::string& id, const std::string& text, const std::string& status) {
  ojson item = {{"id", id}, {"type", "reasoning"}, {"summary", ojson::array()}, {"content", ojson::array()}};
  if (status != "in_progress") item["content"].push_back({{"type", "reasoning_text"}, {"text", text}});
  item["status"] = status;
  return item;
}

ojson output_text_part(const std::string& text, const ojson& logprobs) {
  ojson part = {{"type", "output_text"}, {"text", text}, {"annotations", ojson::array()}};
  part["logprobs"] = logprobs.is_array() ? logprobs : ojson::array();
  return part;
}

ojson message_item(const std::string& id, const std::string& text, const ojson& logprobs, const std::string& status,
                   bool with_content) {
  ojson item = {{"id", id}, {"type", "message"}, {"status", status}, {"role", "assistant"}, {"content", ojson::array()}};
  if (with_content) item["content"].push_back(output_text_part(text, logprobs));
  return item;
}

ojson function_call_item(const ToolCall& call, const std::string& arguments, const std::string& status) {
  return {{"id", function_call_item_id(call)}, {"type", "function_call"}, {"status", status},
          {"arguments", arguments}, {"call_id", call.id}, {"name", call.name}};
}

ojson responses_usage(int input_tokens, int cached_tokens, int output_tokens, int reasoning_tokens) {
  return {{"input_tokens", input_tokens},
          {"input_tokens_details", {{"cached_tokens", cached_tokens}}},
          {"output_tokens", output_tokens},
          {"output_tokens_details", {{"reasoning_tokens", reasoning_tokens}}},
          {"total_tokens", input_tokens + output_tokens}};
}

ojson response_json(const ResponsesEcho& echo, const ResponseOutput& out) {
  const bool ended = out.status != "in_progress";
  ojson r;
  r["id"] = out.id;
  r["object"] = "response";
  r["created_at"] = out.created_at;
  r["status"] = out.status;
  r["background"] = false;
  r["error"] = out.error.is_null() ? ojson() : out.error;
  r["incomplete_details"] = out.status == "incomplete" ? ojson({{"reason", "max_output_tokens"}}) : ojson();
  r["instructions"] = echo.instructions;
  r["max_output_tokens"] = echo.max_output_tokens;
  r["max_tool_calls"] = nullptr;
  r["model"] = out.model;
  ojson output = ojson::array();
  if (ended) {
    const std::string item_status = out.status == "completed" ? "completed" : "incomplete";
    if (!out.reasoning.empty()) output.push_back(reasoning_item(out.reasoning_id, out.reasoning, reasoning_status(out)));
    if (out.has_message) output.push_back(message_item(out.message_id, out.text, out.logprobs, item_status));
    for (const ToolCall& c : out.calls) output.push_back(function_call_item(c, c.arguments, "completed"));
  }
  r["output"] = std::move(output);
  r["parallel_tool_calls"] = echo.parallel_tool_calls;
  r["previous_response_id"] = nullptr;
  r["reasoning"] = echo.reasoning;
  r["service_tier"] = "default";
  r["store"] = false;
  r["temperature"] = echo.temperature;
  r["text"] = echo.text;
  r["tool_choice"] = echo.tool_choice;
  r["tools"] = echo.tools;
  r["top_logprobs"] = echo.top_logprobs;
  r["top_p"] = echo.top_p;
  r["truncation"] = echo.truncation;
  r["usage"] = out.usage;
  r["user"] = echo.user;
  r["metadata"] = echo.metadata;
  return r;
}

}  // namespace airlock::daemon
