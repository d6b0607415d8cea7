#include "openai_api.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <limits>

#include "airlock/common/json_depth.h"
#include "schema_grammar.h"
#include "tool_calls.h"

namespace airlock::daemon {
namespace {

constexpr std::size_t kMaxMessages = 4096;
constexpr std::size_t kMaxStop = 4;
constexpr std::size_t kMaxStopBytes = 256;
constexpr int kMaxN = 16;
constexpr std::size_t kMaxPrompts = 64;  // /v1/completions prompts a request
constexpr std::size_t kMaxChoices = 64;  // prompts x n
constexpr std::size_t kMaxTools = 128;
// Arguments sit 6 levels deep in a body (body, messages, message,
// tool_calls, call, function): parsed from their string, they may nest this
// much more, so that the whole stays within kMaxJsonDepth.
constexpr int kMaxArgumentsDepth = kMaxJsonDepth - 6;

ApiError invalid(const std::string& param, const std::string& message) {
  ApiError e;
  e.message = message;
  e.param = param;
  return e;
}

// "the integer N, which does not fit in 64 bits" for a literal that
// check_json_text() found beyond -2^63 .. 2^64-1, N cut short when long
// (up to ~310 characters: longer ones overflow a double, and nlohmann
// refuses them as invalid JSON). Such a literal is refused: parsed,
// it is a double, and a chat template would print a number other than the
// one sent (an account number in a tool call's arguments), where Python's
// jinja2 prints every digit; as chat_template.cpp refuses 2^63 .. 2^64-1.
std::string big_integer_text(const std::string& literal) {
  constexpr std::size_t kShown = 40;
  const std::string n = literal.size() <= kShown
                            ? literal
                            : literal.substr(0, kShown) + "... (" + std::to_string(literal.size()) + " characters)";
  return "the integer " + n + ", which does not fit in 64 bits";
}

// Flattens OpenAI message content: a string, null, or an array of parts of
// which only {"type": "text", "text": ...} are supported here.
std::optional<ApiError> flatten_content(const ojson& content, const std::string& param, std::string* out) {
  if (content.is_null()) return std::nullopt;
  if (content.is_string()) {
    *out = content.get<std::string>();
    return std::nullopt;
  }
  if (!content.is_array()) return invalid(param, param + " must be a string or an array of content parts");
  bool first = true;
  for (const ojson& part : content) {
    if (!part.is_object() || !part.contains("type") || !part["type"].is_string())
      return invalid(param, param + ": each content part needs a \"type\"");
    if (part["type"] != "text")
      return invalid(param, param + ": content parts of type '" + part["type"].get<std::string>() +
                                "' are not supported (text only)");
    if (!part.contains("text") || !part["text"].is_string()) return invalid(param, param + ": a text part needs \"text\"");
    // Parts are joined by a newline, as vLLM joins them: two parts are two
    // pieces of text, not one word split in two.
    if (!first) *out += '\n';
    first = false;
    *out += part["text"].get<std::string>();
  }
  return std::nullopt;
}

bool present(const ojson& j, const char* key) {
  if (!j.contains(key)) return false;
  const ojson& v = j[key];
  if (v.is_string()) return !v.get_ref<const std::string&>().empty();
  return !v.is_null() && !((v.is_array() || v.is_object()) && v.empty());
}

// Fields that would change the answer and that this server cannot honour
// are refused by name, not ignored: a client asking for a tool call, JSON
// output or a token ban must not get a 200 with something else. An empty
// or null value, or one that asks for the default, is accepted.
// response_format {"type": "json_schema", "json_schema": {"name",
// "description", "schema", "strict"}}: the schema compiled to the grammar
// the answer is held to. Held whether or not strict is true (as vLLM); a
// schema that cannot be held to exactly is refused, named, either way.
// Without a schema the answer is one JSON object (as json_object).
std::optional<ApiError> parse_json_schema(const ojson& f, CompletionRequest* r) {
  const std::string param = "response_format.json_schema";
  if (!f.contains("json_schema") || !f["json_schema"].is_object())
    return invalid(param, "response_format json_schema needs a json_schema object (name, schema)");
  const ojson& js = f["json_schema"];
  if (js.contains("name") && !js["name"].is_string()) return invalid(param + ".name", param + ".name must be a string");
  if (js.contains("strict") && !js["strict"].is_boolean() && !js["strict"].is_null())
    return invalid(param + ".strict", param + ".strict must be true or false");
  if (!js.contains("schema") || js["schema"].is_null()) return std::nullopt;
  if (!js["schema"].is_object() && !js["schema"].is_boolean())
    return invalid(param + ".schema", param + ".schema must be a JSON Schema (an object)");
  std::string why;
  r->response_grammar = compile_schema(js["schema"], "schema", &why);
  if (!r->response_grammar) return invalid(param + ".schema", "response_format json_schema: " + why);
  r->response_schema = js["schema"];
  return std::nullopt;
}

std::optional<ApiError> refuse_unsupported(const ojson& j, Endpoint endpoint, int n) {
  auto is = [&](const char* key, const char* value) { return j.contains(key) && j[key].is_string() && j[key] == value; };
  if (endpoint == Endpoint::kChat) {
    if (present(j, "tool_choice") && !is("tool_choice", "none") && !is("tool_choice", "auto") &&
        !is("tool_choice", "required")) {
      const ojson& c = j["tool_choice"];
      if (!c.is_object() || !c.contains("type") || c["type"] != "function" || !c.contains("function") ||
          !c["function"].is_object() || !c["function"].contains("name") || !c["function"]["name"].is_string())
        return invalid("tool_choice", "tool_choice must be \"none\", \"auto\", \"required\" or "
                                      "{\"type\": \"function\", \"function\": {\"name\": ...}}");
    }
    if (present(j, "functions") && !is("function_call", "none"))
      return invalid("functions", "the deprecated functions parameter is not supported by this server: use tools");
    if (present(j, "response_format")) {
      const ojson& f = j["response_format"];
      if (!f.is_object() || !f.contains("type") || !f["type"].is_string())
        return invalid("response_format", "response_format must be an object with a \"type\"");
      if (f["type"] != "text" && f["type"] != "json_object" && f["type"] != "json_schema")
        return invalid("response_format.type", "response_format '" + f["type"].get<std::string>().substr(0, 64) +
                                                   "' is not supported by this server (only \"text\", \"json_object\" "
                                                   "and \"json_schema\")");
    }
    if (present(j, "audio") || (present(j, "modalities") && !(j["modalities"].is_array() && j["modalities"].size() == 1 &&
                                                               j["modalities"][0] == "text")))
      return invalid(present(j, "audio") ? "audio" : "modalities", "this server answers with text only");
  } else {
    if (present(j, "suffix")) return invalid("suffix", "suffix (insertion) is not supported by this server");
    if (j.contains("best_of") && !j["best_of"].is_null()) {
      if (!j["best_of"].is_number_integer() || j["best_of"].get<std::int64_t>() < 1)
        return invalid("best_of", "best_of must be a positive integer");
      if (j["best_of"].get<std::int64_t>() != 1 && j["best_of"].get<std::int64_t>() != n)
        return invalid("best_of", "best_of other than n is not supported by this server");
    }
  }
  return std::nullopt;
}

// OpenAI function names: 1 to 64 letters, digits, '_' and '-'.
bool valid_tool_name(const std::string& n) {
  return !n.empty() && n.size() <= 64 && std::all_of(n.begin(), n.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
  });
}

// `tools` (with tool_choice other than "none"): up to kMaxTools functions
// with distinct names, kept as sent for the chat template.
std::optional<ApiError> parse_tools(const ojson& j, CompletionRequest* r) {
  if (!present(j, "tools") || (j.contains("tool_choice") && j["tool_choice"] == "none")) return std::nullopt;
  const ojson& tools = j["tools"];
  if (!tools.is_array() || tools.size() > kMaxTools) return invalid("tools", "tools must be an array of up to 128 tools");
  for (std::size_t i = 0; i < tools.size(); ++i) {
    const ojson& t = tools[i];
    const std::string param = "tools[" + std::to_string(i) + "]";
    if (!t.is_object() || !t.contains("type") || t["type"] != "function")
      return invalid(param + ".type", param + " must be an object of type \"function\" (the only tool type here)");
    if (!t.contains("function") || !t["function"].is_object())
      return invalid(param + ".function", param + ".function must be an object");
    const ojson& f = t["function"];
    if (!f.contains("name") || !f["name"].is_string() || !valid_tool_name(f["name"].get<std::string>()))
      return invalid(param + ".function.name", param + ".function.name must be 1 to 64 letters, digits, '_' or '-'");
    const std::string name = f["name"].get<std::string>();
    if (std::any_of(r->tool_specs.begin(), r->tool_specs.end(), [&](const ToolSpec& spec) { return spec.name == name; }))
      return invalid(param + ".function.name", "two tools are named '" + name + "'");
    if (f.contains("description") && !f["description"].is_string() && !f["description"].is_null())
      return invalid(param + ".function.description", param + ".function.description must be a string");
    if (f.contains("parameters") && !f["parameters"].is_object() && !f["parameters"].is_null())
      return invalid(param + ".function.parameters", param + ".function.parameters must be a JSON Schema object");
    if (f.contains("strict") && !f["strict"].is_boolean() && !f["strict"].is_null())
      return invalid(param + ".function.strict", param + ".function.strict must be true or false");
    ToolSpec spec;
    spec.name = name;
    // strict: a call counts only if its arguments follow the schema (they
    // are checked; nothing constrains the model), so the schema must be one
    // that can be checked here.
    spec.strict = f.contains("strict") && f["strict"] == true;
    if (f.contains("parameters") && !f["parameters"].is_null()) spec.parameters = f["parameters"];
    if (spec.strict && !spec.parameters.is_null())
      if (std::optional<std::string> why = unsupported_schema(spec.parameters))
        return invalid(param + ".function.parameters", param + ".function." + *why);
    r->tool_specs.push_back(std::move(spec));
  }
  r->tools = tools;
  if (j.contains("parallel_tool_calls") && !j["parallel_tool_calls"].is_null()) {
    if (!j["parallel_tool_calls"].is_boolean()) return invalid("parallel_tool_calls", "parallel_tool_calls must be true or false");
    r->parallel_tool_calls = j["parallel_tool_calls"].get<bool>();
  }
  // A forced call (shape checked by refuse_unsupported).
  if (present(j, "tool_choice") && j["tool_choice"].is_object()) {
    r->forced_tool = j["tool_choice"]["function"]["name"].get<std::string>();
    if (std::none_of(r->tool_specs.begin(), r->tool_specs.end(), [&](const ToolSpec& t) { return t.name == r->forced_tool; }))
      return invalid("tool_choice", "tool_choice names '" + r->forced_tool.substr(0, 64) + "', which is not among the tools");
    r->tool_required = true;
  } else if (j.contains("tool_choice") && j["tool_choice"] == "required") {
    r->tool_required = true;
  }
  return std::nullopt;
}

// An assistant message's tool_calls: function names and arguments checked;
// arguments sent as a JSON string (OpenAI's shape) become the object it
// holds, as vLLM and Hugging Face give them to templates (which print them
// with `tojson`).
std::optional<ApiError> normalise_tool_calls(ojson& msg, const std::string& param) {
  if (!msg.contains("tool_calls") || msg["tool_calls"].is_null()) return std::nullopt;
  ojson& calls = msg["tool_calls"];
  if (!calls.is_array()) return invalid(param + ".tool_calls", param + ".tool_calls must be an array");
  // An empty list (some clients send one) is no calls: templates that test
  // "tool_calls is defined" would print an empty call turn.
  if (calls.empty()) {
    msg.erase("tool_calls");
    return std::nullopt;
  }
  for (std::size_t k = 0; k < calls.size(); ++k) {
    const std::string p = param + ".tool_calls[" + std::to_string(k) + "]";
    ojson& c = calls[k];
    if (!c.is_object() || !c.contains("function") || !c["function"].is_object())
      return invalid(p + ".function", p + ".function must be an object");
    ojson& f = c["function"];
    if (!f.contains("name") || !f["name"].is_string()) return invalid(p + ".function.name", p + ".function.name must be a string");
    if (!f.contains("arguments")) continue;
    ojson& a = f["arguments"];
    if (a.is_string()) {
      // Held to the body's limits: the string was not part of its checks.
      const std::string& text = a.get_ref<const std::string&>();
      const JsonTextCheck shape = check_json_text<ojson>(text, kMaxJsonObjectKeys, std::numeric_limits<int>::max());
      if (shape.wide)
        return invalid(p + ".function.arguments", p + ".function.arguments has an object with more than 256 keys");
      ojson parsed = ojson::parse(text, nullptr, /*allow_exceptions=*/false);
      if (!parsed.is_discarded() && parsed.is_object()) {
        if (json_deeper_than(parsed, kMaxArgumentsDepth))
          return invalid(p + ".function.arguments", p + ".function.arguments is nested deeper than " +
                                                        std::to_string(kMaxArgumentsDepth) + " levels");
        // The object replaces the string: a number in it must be the one sent.
        if (!shape.big_integer.empty())
          return invalid(p + ".function.arguments",
                         p + ".function.arguments has " + big_integer_text(shape.big_integer));
        a = std::move(parsed);
      }  // else the string stays, printed as sent
    } else if (!a.is_object()) {
      return invalid(p + ".function.arguments", p + ".function.arguments must be a JSON string or an object");
    }
  }
  return std::nullopt;
}

// An assistant message's reasoning, sent back as this server returned it
// (reasoning_content, or vLLM's reasoning): a string, which templates that
// keep the reasoning of the turn in progress (Qwen3's, calling tools) read
// as reasoning_content.
std::optional<ApiError> normalise_reasoning(ojson& msg, const std::string& param) {
  for (const char* key : {"reasoning_content", "reasoning"})
    if (msg.contains(key) && !msg[key].is_null() && !msg[key].is_string())
      return invalid(param + "." + key, param + "." + key + " must be a string");
  const bool has_content = msg.contains("reasoning_content") && msg["reasoning_content"].is_string();
  if (!has_content && msg.contains("reasoning") && msg["reasoning"].is_string())
    msg["reasoning_content"] = msg["reasoning"];
  return std::nullopt;
}

// reasoning_effort: OpenAI's values, in order of effort.
constexpr const char* kReasoningEfforts[] = {"none", "minimal", "low", "medium", "high"};

std::optional<ApiError> check_reasoning_effort(const ojson& v, const std::string& param) {
  const bool known = v.is_string() && std::find_if(std::begin(kReasoningEfforts), std::end(kReasoningEfforts),
                                                   [&](const char* x) { return v == x; }) != std::end(kReasoningEfforts);
  if (!known)
    return invalid(param, param + " must be \"none\", \"minimal\", \"low\", \"medium\" or \"high\"");
  return std::nullopt;
}

// reasoning_effort (OpenAI's) is the chat template variable of that name,
// as vLLM passes it: gpt-oss's template prints it into its system turn,
// and templates that do not read it are unchanged. chat_template_kwargs
// may set the same variable; it is held to the same values, and the two
// must agree, so neither silently wins. On r->chat_template_kwargs (set
// first), as the template will see it.
std::optional<ApiError> parse_reasoning_effort(const ojson& j, Endpoint endpoint, CompletionRequest* r) {
  constexpr const char* kName = "reasoning_effort";
  const bool top = j.contains(kName) && !j[kName].is_null();
  if (top && endpoint != Endpoint::kChat)
    return invalid(kName, "reasoning_effort is for chat completions (a completions prompt has no chat template)");
  if (top)
    if (auto e = check_reasoning_effort(j[kName], kName)) return e;
  ojson& kwargs = r->chat_template_kwargs;
  if (kwargs.contains(kName) && kwargs[kName].is_null()) kwargs.erase(kName);  // as absent, like the parameter
  if (kwargs.contains(kName)) {
    if (auto e = check_reasoning_effort(kwargs[kName], "chat_template_kwargs.reasoning_effort")) return e;
    if (top && kwargs[kName] != j[kName])
      return invalid("chat_template_kwargs.reasoning_effort",
                     "chat_template_kwargs.reasoning_effort is \"" + kwargs[kName].get<std::string>() +
                         "\" and the request's reasoning effort \"" + j[kName].get<std::string>() +
                         "\": they set the same template variable (give one)");
  }
  if (top) kwargs[kName] = j[kName];
  return std::nullopt;
}

}  // namespace

// The body as a JSON object, or the 400 that says why not. Objects wider
// than kMaxJsonObjectKeys (the parse's cost grows with their square) and
// nesting deeper than kMaxJsonDepth (a value a level: memory) are refused
// before the parse, and the depth is checked again before anything copies
// the value (copies recurse: json_depth.h). An integer literal beyond 64
// bits, which the parse would turn into a double, is found by the same
// pass before the parse and refused after it, so that every other error
// is reported as before.
std::optional<ApiError> parse_json_object(std::string_view body, ojson* j, std::size_t max_values) {
  static_assert(kMaxJsonObjectKeys == 256 && kMaxJsonDepth == 64, "the messages name the limits");
  const JsonTextCheck shape = check_json_text<ojson>(body);
  if (shape.wide) return invalid("", "the request body has an object with more than 256 keys");
  if (shape.deep) return invalid("", "the request body is nested deeper than 64 levels");
  if (shape.values > max_values)
    return invalid("", "the request body holds more than " + std::to_string(max_values) + " JSON values");
  *j = ojson::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
  if (j->is_discarded()) return invalid("", "the request body is not valid JSON");
  if (json_deeper_than(*j)) return invalid("", "the request body is nested deeper than 64 levels");
  if (!j->is_object()) return invalid("", "the request body must be a JSON object");
  if (!shape.big_integer.empty())
    return invalid("", "the request body has " + big_integer_text(shape.big_integer));
  return std::nullopt;
}

std::string error_body(const ApiError& e) {
  ojson j;
  j["error"]["message"] = e.message;
  j["error"]["type"] = e.type;
  j["error"]["param"] = e.param.empty() ? ojson() : ojson(e.param);
  j["error"]["code"] = e.code.empty() ? ojson() : ojson(e.code);
  return j.dump(-1, ' ', false, ojson::error_handler_t::replace);
}

std::optional<ApiError> parse_request(std::string_view body, Endpoint endpoint, CompletionRequest* out) {
  ojson j;
  if (auto e = parse_json_object(body, &j)) return e;
  return parse_request_object(j, endpoint, out);
}

std::optional<ApiError> parse_request_object(const ojson& j, Endpoint endpoint, CompletionRequest* out) {
  CompletionRequest r;
  r.endpoint = endpoint;

  auto number = [&](const char* key, double lo, double hi, auto apply) -> std::optional<ApiError> {
    if (!j.contains(key) || j[key].is_null()) return std::nullopt;
    if (!j[key].is_number()) return invalid(key, std::string(key) + " must be a number");
    const double v = j[key].get<double>();
    if (!std::isfinite(v) || v < lo || v > hi)
      return invalid(key, std::string(key) + " must be between " + ojson(lo).dump() + " and " + ojson(hi).dump());
    apply(v);
    return std::nullopt;
  };
  auto integer = [&](const char* key, std::int64_t lo, std::int64_t hi, auto apply) -> std::optional<ApiError> {
    if (!j.contains(key) || j[key].is_null()) return std::nullopt;
    if (!j[key].is_number_integer()) return invalid(key, std::string(key) + " must be an integer");
    const std::int64_t v = j[key].get<std::int64_t>();
    // (an unsigned value past INT64_MAX would read as a negative one)
    const bool wraps = j[key].is_number_unsigned() && j[key].get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX);
    if (wraps || v < lo || v > hi) return invalid(key, std::string(key) + " must be between " + std::to_string(lo) + " and " + std::to_string(hi));
    apply(v);
    return std::nullopt;
  };
  auto boolean = [&](const char* key, bool* dst) -> std::optional<ApiError> {
    if (!j.contains(key) || j[key].is_null()) return std::nullopt;
    if (!j[key].is_boolean()) return invalid(key, std::string(key) + " must be true or false");
    *dst = j[key].get<bool>();
    return std::nullopt;
  };

  if (!j.contains("model") || !j["model"].is_string()) return invalid("model", "model must be a string naming a model (GET /v1/models)");
  r.model = j["model"].get<std::string>();

  if (endpoint == Endpoint::kChat) {
    if (!j.contains("messages") || !j["messages"].is_array() || j["messages"].empty())
      return invalid("messages", "messages must be a non-empty array");
    if (j["messages"].size() > kMaxMessages) return invalid("messages", "too many messages");
    for (std::size_t i = 0; i < j["messages"].size(); ++i) {
      const ojson& m = j["messages"][i];
      const std::string param = "messages[" + std::to_string(i) + "]";
      if (!m.is_object()) return invalid(param, param + " must be an object");
      if (!m.contains("role") || !m["role"].is_string()) return invalid(param + ".role", param + ".role must be a string");
      const std::string role = m["role"].get<std::string>();
      if (role != "system" && role != "user" && role != "assistant" && role != "tool" && role != "developer")
        return invalid(param + ".role", param + ".role '" + role + "' is not one of system, developer, user, assistant, tool");
      std::string content;
      if (auto e = flatten_content(m.contains("content") ? m["content"] : ojson(), param + ".content", &content)) return e;
      ojson msg = m;  // keeps name, tool_calls, ... for templates that use them
      msg["role"] = role == "developer" ? "system" : role;
      msg["content"] = content;
      if (auto e = normalise_tool_calls(msg, param)) return e;
      if (auto e = normalise_reasoning(msg, param)) return e;
      r.messages.push_back(std::move(msg));
    }
  } else {
    if (!j.contains("prompt")) return invalid("prompt", "prompt is required");
    const ojson& p = j["prompt"];
    // A string, or an array of strings answered together (n choices each,
    // in order: choice index = prompt index * n + k, as OpenAI numbers them).
    if (p.is_string()) {
      r.prompts.push_back(p.get<std::string>());
    } else if (p.is_array() && !p.empty() && p.size() <= kMaxPrompts &&
               std::all_of(p.begin(), p.end(), [](const ojson& x) { return x.is_string(); })) {
      for (const ojson& x : p) r.prompts.push_back(x.get<std::string>());
    } else if (p.is_array() && !p.empty() && std::all_of(p.begin(), p.end(), [](const ojson& x) { return !x.is_string(); })) {
      return invalid("prompt", "prompt must be a string or an array of strings (token arrays are not supported)");
    } else {
      return invalid("prompt", "prompt must be a string or an array of 1 to 64 strings");
    }
    for (const std::string& x : r.prompts) r.prompt += (r.prompt.empty() ? "" : "\n") + x;
    if (auto e = boolean("echo", &r.echo)) return e;
  }

  // max_completion_tokens is the newer name; either sets the limit.
  for (const char* key : {"max_tokens", "max_completion_tokens"})
    if (auto e = integer(key, 1, 1 << 30, [&](std::int64_t v) { r.max_tokens = static_cast<int>(v); })) return e;
  if (auto e = number("temperature", 0, 2, [&](double v) { r.sampling.temperature = static_cast<float>(v); })) return e;
  if (auto e = number("top_p", 0, 1, [&](double v) { r.sampling.top_p = static_cast<float>(v); })) return e;
  // top_p 0 keeps only the most likely token: greedy decoding (the sampler
  // itself takes top_p in (0, 1]).
  if (j.contains("top_p") && j["top_p"].is_number() && j["top_p"].get<double>() == 0) {
    r.sampling.temperature = 0;
    r.sampling.top_p = 1;
  }
  if (auto e = number("min_p", 0, 1, [&](double v) { r.sampling.min_p = static_cast<float>(v); })) return e;
  // top_k -1 is vLLM's spelling of "off", sent by clients written for it.
  if (auto e = integer("top_k", -1, 1 << 20, [&](std::int64_t v) { r.sampling.top_k = static_cast<int>(std::max<std::int64_t>(v, 0)); }))
    return e;
  if (auto e = number("presence_penalty", -2, 2, [&](double v) { r.sampling.presence_penalty = static_cast<float>(v); })) return e;
  if (auto e = number("frequency_penalty", -2, 2, [&](double v) { r.sampling.frequency_penalty = static_cast<float>(v); })) return e;
  if (auto e = number("repetition_penalty", 0.01, 10, [&](double v) { r.sampling.repetition_penalty = static_cast<float>(v); })) return e;
  if (auto e = integer("seed", INT64_MIN, INT64_MAX, [&](std::int64_t v) {
        r.sampling.seed = static_cast<std::uint64_t>(v);
        r.seeded = true;
      }))
    return e;
  if (auto e = integer("n", 1, kMaxN, [&](std::int64_t v) { r.n = static_cast<int>(v); })) return e;
  if (r.prompts.size() * static_cast<std::size_t>(r.n) > kMaxChoices)
    return invalid("n", "prompts times n is more than 64 choices in one request");
  if (auto e = boolean("stream", &r.stream)) return e;
  if (auto e = boolean("ignore_eos", &r.ignore_eos)) return e;
  if (j.contains("stream_options") && !j["stream_options"].is_null()) {
    const ojson& so = j["stream_options"];
    if (!so.is_object()) return invalid("stream_options", "stream_options must be an object");
    if (!r.stream) return invalid("stream_options", "stream_options is only allowed with stream: true");
    if (so.contains("include_usage")) {
      if (!so["include_usage"].is_boolean()) return invalid("stream_options.include_usage", "include_usage must be true or false");
      r.include_usage = so["include_usage"].get<bool>();
    }
  }
  if (j.contains("stop") && !j["stop"].is_null()) {
    const ojson& s = j["stop"];
    if (s.is_string()) r.stop.push_back(s.get<std::string>());
    else if (s.is_array() && s.size() <= kMaxStop) {
      for (const ojson& x : s) {
        if (!x.is_string()) return invalid("stop", "stop must be a string or an array of strings");
        r.stop.push_back(x.get<std::string>());
      }
    } else {
      return invalid("stop", "stop must be a string or an array of up to 4 strings");
    }
    for (const std::string& x : r.stop)
      if (x.empty() || x.size() > kMaxStopBytes) return invalid("stop", "each stop string must be 1 to 256 bytes");
  }
  if (endpoint == Endpoint::kChat) {
    if (auto e = boolean("logprobs", &r.logprobs)) return e;
    if (auto e = integer("top_logprobs", 0, 20, [&](std::int64_t v) { r.top_logprobs = static_cast<int>(v); })) return e;
    if (r.top_logprobs > 0 && !r.logprobs) return invalid("top_logprobs", "top_logprobs requires logprobs: true");
  } else {
    if (auto e = integer("logprobs", 0, 5, [&](std::int64_t v) {
          r.logprobs = true;
          r.top_logprobs = static_cast<int>(v);
        }))
      return e;
    // With echo, OpenAI's logprobs also score the prompt's tokens; the
    // engine computes log-probabilities of sampled tokens only.
    if (r.logprobs && r.echo) return invalid("logprobs", "logprobs of the prompt (echo with logprobs) are not supported");
  }
  r.sampling.n_logprobs = r.top_logprobs;
  if (j.contains("airlock") && !j["airlock"].is_null()) {
    const ojson& a = j["airlock"];
    if (endpoint != Endpoint::kChat) return invalid("airlock", "the airlock extension is for chat completions");
    if (!a.is_object()) return invalid("airlock", "airlock must be an object");
    for (const auto& [k, v] : a.items())
      if (k != "collections" && k != "top_k" && k != "mode" && k != "rerank")
        return invalid("airlock." + k, "unknown airlock field '" + k + "' (collections, top_k, mode, rerank)");
    GroundingSpec g;
    if (a.contains("collections")) {
      const ojson& c = a["collections"];
      if (!c.is_array() || c.size() > 64) return invalid("airlock.collections", "collections must be an array of up to 64 names");
      for (const ojson& x : c) {
        if (!x.is_string() || x.get_ref<const std::string&>().empty() || x.get_ref<const std::string&>().size() > 64)
          return invalid("airlock.collections", "collections must hold collection names");
        g.collections.push_back(x.get<std::string>());
      }
    }
    if (a.contains("top_k")) {
      if (!a["top_k"].is_number_integer() || a["top_k"].get<std::int64_t>() < 1 || a["top_k"].get<std::int64_t>() > 20)
        return invalid("airlock.top_k", "top_k must be an integer from 1 to 20");
      g.top_k = a["top_k"].get<int>();
    }
    if (a.contains("mode")) {
      if (!a["mode"].is_string() || (a["mode"] != "hybrid" && a["mode"] != "bm25" && a["mode"] != "vector"))
        return invalid("airlock.mode", "mode must be hybrid, bm25 or vector");
      g.mode = a["mode"].get<std::string>();
    }
    if (a.contains("rerank") && !a["rerank"].is_null()) {
      if (!a["rerank"].is_boolean()) return invalid("airlock.rerank", "rerank must be true or false");
      g.rerank = a["rerank"].get<bool>();
    }
    if (r.n != 1) return invalid("n", "grounded answers (airlock) take n = 1");
    // Log probabilities would carry the tokens of an answer that is withheld
    // for citing nothing (and stream them before the hold-back releases).
    if (r.logprobs) return invalid("logprobs", "grounded answers (airlock) do not return logprobs");
    bool has_user = false;
    for (const ojson& m : r.messages) has_user = has_user || m["role"] == "user";
    if (!has_user) return invalid("messages", "a grounded answer needs a user message (the question)");
    r.grounding = std::move(g);
  }
  if (auto e = refuse_unsupported(j, endpoint, r.n)) return e;
  if (j.contains("chat_template_kwargs") && !j["chat_template_kwargs"].is_null()) {
    // vLLM's extension: more variables for the chat template, such as
    // Qwen3's enable_thinking. The ones the server sets itself, and the
    // template's functions, cannot be replaced.
    const ojson& k = j["chat_template_kwargs"];
    if (endpoint != Endpoint::kChat) return invalid("chat_template_kwargs", "chat_template_kwargs is for chat completions");
    if (!k.is_object() || k.size() > 32)
      return invalid("chat_template_kwargs", "chat_template_kwargs must be an object of up to 32 variables");
    static const char* const kReserved[] = {"messages", "add_generation_prompt", "bos_token", "eos_token", "tools",
                                            "documents", "raise_exception", "strftime_now", "range", "namespace", "dict"};
    for (auto it = k.begin(); it != k.end(); ++it) {
      const std::string& name = it.key();
      const bool identifier =
          !name.empty() && name.size() <= 64 && !(name[0] >= '0' && name[0] <= '9') &&
          std::all_of(name.begin(), name.end(), [](char c) {
            return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
          });
      if (!identifier) return invalid("chat_template_kwargs", "chat_template_kwargs names must be identifiers (letters, digits, '_')");
      if (std::find_if(std::begin(kReserved), std::end(kReserved), [&](const char* x) { return name == x; }) != std::end(kReserved))
        return invalid("chat_template_kwargs." + name, "chat_template_kwargs cannot set '" + name + "' (the server sets it)");
    }
    r.chat_template_kwargs = k;
  }
  if (auto e = parse_reasoning_effort(j, endpoint, &r)) return e;
  if (endpoint == Endpoint::kChat) {
    // Shape checked by refuse_unsupported.
    r.json_object = present(j, "response_format") && j["response_format"]["type"] != "text";
    if (r.json_object && j["response_format"]["type"] == "json_schema")
      if (auto e = parse_json_schema(j["response_format"], &r)) return e;
    if (r.json_object && r.grounding)
      return invalid("response_format", "grounded answers (airlock) are text with citations, not JSON");
    // Once the object is whole only the end may come: ignoring it would
    // write end tokens to max_tokens.
    if (r.json_object && r.ignore_eos) return invalid("ignore_eos", "ignore_eos cannot be used with a JSON response_format");
    if (auto e = parse_tools(j, &r)) return e;
    if (r.tools.empty() && present(j, "tool_choice") && !(j["tool_choice"] == "none" || j["tool_choice"] == "auto"))
      return invalid("tool_choice", "tool_choice forces a call, and the request has no tools");
    // Once the calls are whole only the end may come.
    if (r.tool_required && r.ignore_eos) return invalid("ignore_eos", "ignore_eos cannot be used with a forced tool call");
    if (!r.tools.empty() && r.grounding) return invalid("tools", "grounded answers (airlock) do not call tools");
    // The tokens of a call (and of text held back in case it is one) are
    // not content: their log-probabilities would show what the answer does not.
    if (!r.tools.empty() && r.logprobs) return invalid("logprobs", "logprobs are not returned with tools");
  }
  // {"token id": bias}: ids as decimal strings (OpenAI's shape), biases in
  // [-100, 100]. Ids past the vocabulary are refused by the server, which
  // knows the model.
  if (j.contains("logit_bias") && !j["logit_bias"].is_null()) {
    const ojson& b = j["logit_bias"];
    if (!b.is_object()) return invalid("logit_bias", "logit_bias must be an object of token id to bias");
    if (b.size() > engine::kMaxLogitBias) return invalid("logit_bias", "logit_bias holds more than 1024 tokens");
    for (const auto& [k, v] : b.items()) {
      const bool digits = !k.empty() && k.size() <= 9 && std::all_of(k.begin(), k.end(), [](char c) { return c >= '0' && c <= '9'; });
      if (!digits) return invalid("logit_bias", "logit_bias keys must be token ids ('" + k.substr(0, 32) + "' is not)");
      if (!v.is_number() || !std::isfinite(v.get<double>()) || v.get<double>() < -100 || v.get<double>() > 100)
        return invalid("logit_bias", "logit_bias values must be numbers from -100 to 100");
      r.sampling.logit_bias.emplace_back(std::stoi(k), static_cast<float>(v.get<double>()));
    }
  }
  if (j.contains("user") && j["user"].is_string()) r.user = j["user"].get<std::string>().substr(0, 256);
  if (Status s = engine::validate(r.sampling); !s.is_ok()) return invalid("", s.message());
  *out = std::move(r);
  return std::nullopt;
}

std::optional<ApiError> parse_rag_query(std::string_view body, const std::string& default_model,
                                        CompletionRequest* out, bool* generate) {
  ojson j;
  if (auto e = parse_json_object(body, &j)) return e;
  static const char* kKnown[] = {"collection", "collections", "question", "top_k", "mode", "rerank", "generate",
                                 "stream", "stream_options", "max_tokens", "temperature", "seed", "model", "user"};
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& k = it.key();
    if (std::find_if(std::begin(kKnown), std::end(kKnown), [&](const char* n) { return k == n; }) == std::end(kKnown))
      return invalid(k, "unknown field '" + k + "'");
  }
  if (!j.contains("question") || !j["question"].is_string() || j["question"].get_ref<const std::string&>().empty())
    return invalid("question", "question must be a non-empty string");
  if (j["question"].get_ref<const std::string&>().size() > 16384) return invalid("question", "question is longer than 16 KiB");
  if (j.contains("collection") && j.contains("collections"))
    return invalid("collection", "give collection or collections, not both");
  *generate = true;
  if (j.contains("generate")) {
    if (!j["generate"].is_boolean()) return invalid("generate", "generate must be true or false");
    *generate = j["generate"].get<bool>();
  }
  // The grounded chat request this question becomes.
  ojson chat;
  chat["model"] = j.contains("model") ? j["model"] : ojson(default_model);
  chat["messages"] = ojson::array({{{"role", "user"}, {"content", j["question"]}}});
  for (const char* k : {"stream", "stream_options", "max_tokens", "temperature", "seed", "user"})
    if (j.contains(k)) chat[k] = j[k];
  ojson a = ojson::object();
  if (j.contains("collection")) {
    if (!j["collection"].is_string()) return invalid("collection", "collection must be a string");
    a["collections"] = ojson::array({j["collection"]});
  } else if (j.contains("collections")) {
    a["collections"] = j["collections"];
  }
  for (const char* k : {"top_k", "mode", "rerank"})
    if (j.contains(k)) a[k] = j[k];
  chat["airlock"] = a;
  if (auto e = parse_request_object(chat, Endpoint::kChat, out)) {
    if (e->param.rfind("airlock.", 0) == 0) e->param = e->param.substr(8);
    return e;
  }
  return std::nullopt;
}

std::optional<ApiError> parse_embedding_request(std::string_view body, EmbeddingRequest* out) {
  constexpr std::size_t kMaxInputs = 2048;
  constexpr std::size_t kMaxInputBytes = 1 << 20;
  EmbeddingRequest r;
  ojson j;
  if (auto e = parse_json_object(body, &j)) return e;
  if (!j.contains("model") || !j["model"].is_string()) return invalid("model", "model must be a string naming a model (GET /v1/models)");
  r.model = j["model"].get<std::string>();
  if (!j.contains("input")) return invalid("input", "input is required");
  const ojson& in = j["input"];
  auto take = [&](const ojson& v) -> std::optional<ApiError> {
    if (!v.is_string()) return invalid("input", "input must be a string or an array of strings (token arrays are not supported)");
    if (v.get_ref<const std::string&>().size() > kMaxInputBytes) return invalid("input", "an input is longer than 1 MiB");
    r.inputs.push_back(v.get<std::string>());
    return std::nullopt;
  };
  if (in.is_array()) {
    if (in.empty() || in.size() > kMaxInputs) return invalid("input", "input must hold 1 to 2048 strings");
    for (const ojson& v : in)
      if (auto e = take(v)) return e;
  } else if (auto e = take(in)) {
    return e;
  }
  if (j.contains("encoding_format") && !j["encoding_format"].is_null()) {
    if (j["encoding_format"] == "base64") r.base64 = true;
    else if (j["encoding_format"] != "float") return invalid("encoding_format", "encoding_format must be float or base64");
  }
  if (j.contains("dimensions") && !j["dimensions"].is_null()) {
    if (!j["dimensions"].is_number_integer() || j["dimensions"].get<std::int64_t>() < 1 || j["dimensions"].get<std::int64_t>() > 65536)
      return invalid("dimensions", "dimensions must be a positive integer");
    r.dimensions = j["dimensions"].get<int>();
  }
  *out = std::move(r);
  return std::nullopt;
}

namespace {

// `model`, when present and not null, into *out (a string).
std::optional<ApiError> optional_model(const ojson& j, std::optional<std::string>* out) {
  if (!j.contains("model") || j["model"].is_null()) return std::nullopt;
  if (!j["model"].is_string()) return invalid("model", "model must be a string naming a model (GET /v1/models)");
  *out = j["model"].get<std::string>();
  return std::nullopt;
}

// A boolean field, when present and not null, into *out.
std::optional<ApiError> optional_bool(const ojson& j, const char* key, bool* out) {
  if (!j.contains(key) || j[key].is_null()) return std::nullopt;
  if (!j[key].is_boolean()) return invalid(key, std::string(key) + " must be true or false");
  *out = j[key].get<bool>();
  return std::nullopt;
}

}  // namespace

std::optional<ApiError> parse_rerank_request(std::string_view body, RerankRequest* out) {
  constexpr std::size_t kMaxDocuments = 1000;
  constexpr std::size_t kMaxTextBytes = 1 << 20;
  RerankRequest r;
  ojson j;
  if (auto e = parse_json_object(body, &j)) return e;
  if (auto e = optional_model(j, &r.model)) return e;
  if (!j.contains("query") || !j["query"].is_string() || j["query"].get_ref<const std::string&>().empty())
    return invalid("query", "query must be a non-empty string");
  if (j["query"].get_ref<const std::string&>().size() > kMaxTextBytes) return invalid("query", "query is longer than 1 MiB");
  r.query = j["query"].get<std::string>();
  if (!j.contains("documents") || !j["documents"].is_array() || j["documents"].empty() ||
      j["documents"].size() > kMaxDocuments)
    return invalid("documents", "documents must be an array of 1 to 1000 strings or {\"text\": string} objects");
  for (std::size_t i = 0; i < j["documents"].size(); ++i) {
    const ojson& d = j["documents"][i];
    const std::string param = "documents[" + std::to_string(i) + "]";
    const ojson* text = &d;
    if (d.is_object()) {
      auto it = d.find("text");
      if (it == d.end()) return invalid(param, param + " must be a string or an object with a \"text\" string");
      text = &*it;
    }
    if (!text->is_string()) return invalid(param, param + " must be a string or an object with a \"text\" string");
    if (text->get_ref<const std::string&>().size() > kMaxTextBytes) return invalid(param, param + " is longer than 1 MiB");
    r.documents.push_back(text->get<std::string>());
  }
  if (j.contains("top_n") && !j["top_n"].is_null()) {
    if (!j["top_n"].is_number_unsigned() || j["top_n"].get<std::uint64_t>() == 0)
      return invalid("top_n", "top_n must be a positive integer");
    r.top_n = static_cast<std::size_t>(std::min<std::uint64_t>(j["top_n"].get<std::uint64_t>(), kMaxDocuments));
  }
  if (auto e = optional_bool(j, "return_documents", &r.return_documents)) return e;
  *out = std::move(r);
  return std::nullopt;
}

std::optional<ApiError> parse_tokenize_request(std::string_view body, TokenizeRequest* out) {
  TokenizeRequest r;
  ojson j;
  if (auto e = parse_json_object(body, &j)) return e;
  if (auto e = optional_model(j, &r.model)) return e;
  const bool has_prompt = j.contains("prompt") && !j["prompt"].is_null();
  const bool has_messages = j.contains("messages") && !j["messages"].is_null();
  if (has_prompt == has_messages) return invalid("prompt", "give prompt (a string) or messages, not both");
  if (auto e = optional_bool(j, "return_token_strs", &r.return_token_strs)) return e;
  if (has_prompt) {
    if (!j["prompt"].is_string()) return invalid("prompt", "prompt must be a string");
    r.prompt = j["prompt"].get<std::string>();
    if (auto e = optional_bool(j, "add_special_tokens", &r.add_special_tokens)) return e;
    *out = std::move(r);
    return std::nullopt;
  }
  bool special = false, continue_final = false;
  if (auto e = optional_bool(j, "add_special_tokens", &special)) return e;
  if (special) return invalid("add_special_tokens", "with messages the chat template decides the special tokens");
  if (auto e = optional_bool(j, "continue_final_message", &continue_final)) return e;
  if (continue_final) return invalid("continue_final_message", "continue_final_message is not supported");
  if (auto e = optional_bool(j, "add_generation_prompt", &r.add_generation_prompt)) return e;
  // The chat request these messages make, checked as chat checks them.
  ojson chat = ojson::object();
  chat["model"] = r.model.value_or("");
  // tool_choice too: "none" drops the tools from what the template prints.
  for (const char* k : {"messages", "tools", "tool_choice", "chat_template_kwargs", "reasoning_effort"})
    if (j.contains(k)) chat[k] = j[k];
  if (auto e = parse_request_object(chat, Endpoint::kChat, &r.chat)) return e;
  *out = std::move(r);
  return std::nullopt;
}

std::optional<ApiError> parse_detokenize_request(std::string_view body, DetokenizeRequest* out) {
  constexpr std::size_t kMaxTokens = 1 << 20;
  DetokenizeRequest r;
  ojson j;
  if (auto e = parse_json_object(body, &j)) return e;
  if (auto e = optional_model(j, &r.model)) return e;
  if (!j.contains("tokens") || !j["tokens"].is_array() || j["tokens"].size() > kMaxTokens)
    return invalid("tokens", "tokens must be an array of up to 1048576 token ids");
  r.tokens.reserve(j["tokens"].size());
  for (const ojson& t : j["tokens"]) {
    if (!t.is_number_integer()) return invalid("tokens", "tokens must hold integers (token ids)");
    // Unsigned values past the signed range read as -1: outside every vocabulary.
    r.tokens.push_back(t.is_number_unsigned() && t.get<std::uint64_t>() > INT64_MAX ? -1 : t.get<std::int64_t>());
  }
  if (auto e = optional_bool(j, "skip_special_tokens", &r.skip_special_tokens)) return e;
  *out = std::move(r);
  return std::nullopt;
}

}  // namespace airlock::daemon
