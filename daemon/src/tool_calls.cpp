#include "tool_calls.h"

#include <algorithm>
#include <optional>

#include <nlohmann/json.hpp>

#include "airlock/common/json_depth.h"

namespace airlock::daemon {
namespace {

using json = nlohmann::ordered_json;  // the model's key order is kept

constexpr std::string_view kOpen = "<tool_call>";
constexpr std::string_view kClose = "</tool_call>";
constexpr std::string_view kPythonTag = "<|python_tag|>";
constexpr std::string_view kMistralCalls = "[TOOL_CALLS]";
constexpr std::string_view kSpace = " \t\n\r\f\v";

std::string_view trim(std::string_view s) {
  const std::size_t b = s.find_first_not_of(kSpace);
  if (b == std::string_view::npos) return {};
  return s.substr(b, s.find_last_not_of(kSpace) - b + 1);
}

std::size_t rtrimmed_size(std::string_view s) {
  const std::size_t e = s.find_last_not_of(kSpace);
  return e == std::string_view::npos ? 0 : e + 1;
}

// A JSON object, within the request limits (the model's output is as
// untrusted as a body), or nothing.
std::optional<json> parse_object(std::string_view s) {
  if (json_text_has_wide_object<json>(s)) return std::nullopt;
  json j = json::parse(s.begin(), s.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object() || json_deeper_than(j)) return std::nullopt;
  return j;
}

// {"name": a declared tool, "arguments" (or Llama's "parameters"): an
// object, or a string holding one}, as a call; anything else is not one.
std::optional<ToolCall> call_of(const json& j, const std::vector<std::string>& tools) {
  if (!j.contains("name") || !j["name"].is_string()) return std::nullopt;
  const std::string name = j["name"].get<std::string>();
  if (std::find(tools.begin(), tools.end(), name) == tools.end()) return std::nullopt;
  const char* key = j.contains("arguments") ? "arguments" : j.contains("parameters") ? "parameters" : nullptr;
  json args = json::object();
  if (key != nullptr) {
    args = j[key];
    if (args.is_string()) {
      std::optional<json> inner = parse_object(args.get<std::string>());
      if (!inner) return std::nullopt;
      args = std::move(*inner);
    }
    if (!args.is_object()) return std::nullopt;
  }
  return ToolCall{name, args.dump(-1, ' ', false, json::error_handler_t::replace), {}};
}

// Where the JSON value starting at s[0] ('{' or '[') ends (one past its
// closing bracket), or npos: brackets counted outside strings.
std::size_t json_value_end(std::string_view s) {
  int depth = 0;
  bool in_string = false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') in_string = true;
    else if (c == '{' || c == '[') ++depth;
    else if ((c == '}' || c == ']') && --depth == 0) return i + 1;
  }
  return std::string_view::npos;
}

ToolOutput parse_hermes(std::string_view text, const std::vector<std::string>& tools, std::size_t max_calls) {
  ToolOutput out;
  std::size_t pos = 0;
  for (std::size_t start; (start = text.find(kOpen, pos)) != std::string_view::npos;) {
    out.content.append(text.substr(pos, start - pos));
    const std::size_t body = start + kOpen.size();
    const std::size_t close = text.find(kClose, body);
    // An unclosed last block (the answer ended inside it) is parsed too.
    const std::size_t end = close == std::string_view::npos ? text.size() : close + kClose.size();
    std::optional<ToolCall> call;
    if (std::optional<json> j = parse_object(trim(text.substr(body, std::min(close, text.size()) - body))))
      call = call_of(*j, tools);
    if (!call) out.content.append(text.substr(start, end - start));  // not a call: stays text
    else if (out.calls.size() < max_calls) out.calls.push_back(std::move(*call));
    pos = end;
  }
  out.content.append(text.substr(pos));
  if (!out.calls.empty()) out.content.resize(rtrimmed_size(out.content));
  return out;
}

// The whole answer is one call object, or several separated by ';'.
ToolOutput parse_llama_json(std::string_view text, const std::vector<std::string>& tools, std::size_t max_calls) {
  ToolOutput none{std::string(text), {}};
  std::string_view rest = trim(text);
  if (rest.substr(0, kPythonTag.size()) == kPythonTag) rest = trim(rest.substr(kPythonTag.size()));
  if (rest.empty() || rest[0] != '{') return none;
  ToolOutput out;
  while (!rest.empty()) {
    const std::size_t end = json_value_end(rest);
    if (end == std::string_view::npos) return none;
    std::optional<json> j = parse_object(rest.substr(0, end));
    std::optional<ToolCall> call = j ? call_of(*j, tools) : std::nullopt;
    if (!call) return none;
    if (out.calls.size() < max_calls) out.calls.push_back(std::move(*call));
    rest = trim(rest.substr(end));
    if (!rest.empty()) {
      if (rest[0] != ';') return none;
      rest = trim(rest.substr(1));
    }
  }
  return out;
}

// The whole answer is a JSON array of call objects.
ToolOutput parse_mistral(std::string_view text, const std::vector<std::string>& tools, std::size_t max_calls) {
  ToolOutput none{std::string(text), {}};
  std::string_view rest = trim(text);
  if (rest.substr(0, kMistralCalls.size()) == kMistralCalls) rest = trim(rest.substr(kMistralCalls.size()));
  if (rest.empty() || rest[0] != '[') return none;
  if (json_text_has_wide_object<json>(rest)) return none;
  json j = json::parse(rest.begin(), rest.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_array() || j.empty() || json_deeper_than(j)) return none;
  ToolOutput out;
  for (const json& item : j) {
    std::optional<ToolCall> call = item.is_object() ? call_of(item, tools) : std::nullopt;
    if (!call) return none;
    if (out.calls.size() < max_calls) out.calls.push_back(std::move(*call));
  }
  return out;
}

}  // namespace

ToolFormat tool_format_of(std::string_view t) {
  if (t.find(kOpen) != std::string_view::npos) return ToolFormat::kHermes;
  if (t.find(kMistralCalls) != std::string_view::npos)
    return t.find("[ARGS]") == std::string_view::npos ? ToolFormat::kMistral : ToolFormat::kNone;
  if (t.find(kPythonTag) != std::string_view::npos || t.find("Environment: ipython") != std::string_view::npos ||
      t.find("\"parameters\": dictionary of argument name") != std::string_view::npos)
    return ToolFormat::kLlamaJson;
  return ToolFormat::kNone;
}

const char* tool_format_name(ToolFormat f) {
  switch (f) {
    case ToolFormat::kHermes: return "hermes";
    case ToolFormat::kLlamaJson: return "llama3_json";
    case ToolFormat::kMistral: return "mistral";
    case ToolFormat::kNone: break;
  }
  return "none";
}

ToolOutput parse_tool_calls(ToolFormat f, std::string_view text, const std::vector<std::string>& tools,
                            std::size_t max_calls) {
  switch (f) {
    case ToolFormat::kHermes: return parse_hermes(text, tools, max_calls);
    case ToolFormat::kLlamaJson: return parse_llama_json(text, tools, max_calls);
    case ToolFormat::kMistral: return parse_mistral(text, tools, max_calls);
    case ToolFormat::kNone: break;
  }
  return ToolOutput{std::string(text), {}};
}

std::size_t ToolStream::safe_prefix(std::string_view text) {
  if (frozen_) return safe_;
  if (free_ || f_ == ToolFormat::kNone) return safe_ = text.size();
  auto is_space = [](char c) { return kSpace.find(c) != std::string_view::npos; };
  if (f_ == ToolFormat::kHermes) {
    // Bytes are taken in order; at each, whether "<tool_call>" starts there
    // (once the text is long enough to tell: a byte looked at is never a
    // tag's start, as the text only grows).
    for (; scanned_ + kOpen.size() <= text.size(); ++scanned_) {
      if (text.compare(scanned_, kOpen.size(), kOpen) == 0) {
        frozen_ = true;
        return safe_ = std::max(safe_, nonws_end_);
      }
      if (!is_space(text[scanned_])) nonws_end_ = scanned_ + 1;
    }
    // The tail not looked at (under 11 bytes) may still grow into the tag:
    // the text before the longest part of it that could is safe, less its
    // trailing whitespace.
    std::size_t end = text.size();
    for (std::size_t k = text.size() - scanned_; k > 0; --k)
      if (text.substr(text.size() - k) == kOpen.substr(0, k)) {
        end = text.size() - k;
        break;
      }
    std::size_t last = nonws_end_;
    for (std::size_t i = scanned_; i < end; ++i)
      if (!is_space(text[i])) last = i + 1;
    return safe_ = std::max(safe_, last);
  }
  // llama3_json and mistral: an answer that starts with '{' or '[' (or with
  // the tag before it) may be a call, and then all of it waits.
  const char open = f_ == ToolFormat::kLlamaJson ? '{' : '[';
  const std::string_view tag = f_ == ToolFormat::kLlamaJson ? kPythonTag : kMistralCalls;
  while (scanned_ < text.size() && is_space(text[scanned_])) ++scanned_;
  if (scanned_ == text.size()) return safe_;  // whitespace so far
  const std::string_view rest = text.substr(scanned_);
  const std::size_t n = std::min(rest.size(), tag.size());
  if (rest[0] == open || (n == tag.size() && rest.substr(0, n) == tag)) {
    frozen_ = true;
    return safe_;
  }
  if (rest.substr(0, n) == tag.substr(0, n)) return safe_;  // could still become the tag
  free_ = true;
  return safe_ = text.size();
}

}  // namespace airlock::daemon
