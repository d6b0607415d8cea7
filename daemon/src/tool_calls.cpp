#include "tool_calls.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <iterator>
#include <optional>

#include "airlock/common/json.h"

#include "airlock/common/json_depth.h"
#include "json_pattern.h"

namespace airlock::daemon {
namespace {

using json = nlohmann::ordered_json;  // the model's key order is kept

constexpr std::string_view kOpen = "<tool_call>";
constexpr std::string_view kClose = "</tool_call>";
constexpr std::string_view kPythonTag = "<|python_tag|>";
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
std::optional<json> parse_value(std::string_view s) {
  if (json_text_has_wide_object<json>(s)) return std::nullopt;
  json j = json::parse(s.begin(), s.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || json_deeper_than(j)) return std::nullopt;
  return j;
}
std::optional<json> parse_object(std::string_view s) {
  std::optional<json> j = parse_value(s);
  return j && j->is_object() ? j : std::nullopt;
}

// A whole answer that may be calls: trimmed, past `tag` if it starts
// with it, and starting with `open` ('{' or '['); else nothing.
std::optional<std::string_view> calls_part(std::string_view text, std::string_view tag, char open) {
  std::string_view rest = trim(text);
  if (rest.substr(0, tag.size()) == tag) rest = trim(rest.substr(tag.size()));
  if (rest.empty() || rest[0] != open) return std::nullopt;
  return rest;
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

// ---- The arguments as the model wrote them. A parsed and re-serialised
// value would change what JSON cannot hold in a double: an integer beyond
// 64 bits (an account number, say) became 1.2345678901234568e+23. The
// arguments are the model's own text, less the whitespace between tokens.
// These read text that has been parsed as JSON already.

constexpr std::string_view kJsonSpace = " \t\n\r";

// Where the JSON value starting at s[0] ends: a bracketed one, a string, or
// a number or literal (which ends at a delimiter).
std::size_t raw_value_end(std::string_view s) {
  if (s.empty()) return std::string_view::npos;
  if (s[0] == '{' || s[0] == '[') return json_value_end(s);
  if (s[0] == '"') {
    for (std::size_t i = 1; i < s.size(); ++i) {
      if (s[i] == '\\') ++i;
      else if (s[i] == '"') return i + 1;
    }
    return std::string_view::npos;
  }
  const std::size_t e = s.find_first_of(",}] \t\n\r");
  return e == std::string_view::npos ? s.size() : e;
}

// The members of the object, or the elements of the array, that `s` holds
// (valid JSON, from its bracket): raw key (empty for an array) and raw value
// texts, in order.
struct RawItem {
  std::string_view key, value;
};
std::vector<RawItem> raw_items(std::string_view s) {
  std::vector<RawItem> out;
  if (s.empty() || (s[0] != '{' && s[0] != '[')) return out;
  const bool object = s[0] == '{';
  std::size_t i = 1;
  auto skip = [&] {
    while (i < s.size() && kJsonSpace.find(s[i]) != std::string_view::npos) ++i;
  };
  for (;;) {
    skip();
    if (i >= s.size() || s[i] == '}' || s[i] == ']') return out;
    if (s[i] == ',') {
      ++i;
      continue;
    }
    RawItem item;
    if (object) {
      const std::size_t n = raw_value_end(s.substr(i));
      if (n == std::string_view::npos) return out;
      item.key = s.substr(i, n);
      i += n;
      skip();
      if (i >= s.size() || s[i] != ':') return out;
      ++i;
      skip();
    }
    const std::size_t n = raw_value_end(s.substr(i));
    if (n == std::string_view::npos) return out;
    item.value = s.substr(i, n);
    i += n;
    out.push_back(item);
  }
}

// A raw key's text ("arguments", or with escapes "argu\u006dents").
std::string key_text(std::string_view raw) {
  if (raw.size() >= 2 && raw.find('\\') == std::string_view::npos) return std::string(raw.substr(1, raw.size() - 2));
  const json k = json::parse(raw.begin(), raw.end(), nullptr, /*allow_exceptions=*/false);
  return k.is_string() ? k.get<std::string>() : std::string();
}

// True when an object anywhere in `v`, parsed from `raw`, had a key twice:
// the parser keeps the last value, other clients may take the first or
// refuse the text, so such arguments are written as parsed (what the strict
// schema check saw). Nesting is bounded (json_deeper_than), so the rescans
// of nested text stay within that factor of its length.
bool has_duplicate_keys(const json& v, std::string_view raw) {
  if (!v.is_object() && !v.is_array()) return false;
  const std::vector<RawItem> items = raw_items(raw);
  if (items.size() != v.size()) return true;  // only duplicates make an object's counts differ
  std::size_t k = 0;
  for (const json& child : v) {
    if (has_duplicate_keys(child, items[k].value)) return true;
    ++k;
  }
  return false;
}

// JSON text without the whitespace between its tokens (strings kept whole).
std::string compact_json(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  bool in_string = false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (in_string) {
      out += c;
      if (c == '\\' && i + 1 < s.size()) out += s[++i];
      else if (c == '"') in_string = false;
      continue;
    }
    if (kJsonSpace.find(c) != std::string_view::npos) continue;
    if (c == '"') in_string = true;
    out += c;
  }
  return out;
}

// {"name": a declared tool, "arguments" (or Llama's "parameters"): an
// object, or a string holding one}, as a call; anything else is not one.
// `raw` is the text j was parsed from: the arguments are taken from it.
std::optional<ToolCall> call_of(const json& j, std::string_view raw, const std::vector<ToolSpec>& tools) {
  if (!j.contains("name") || !j["name"].is_string()) return std::nullopt;
  const std::string name = j["name"].get<std::string>();
  const auto tool = std::find_if(tools.begin(), tools.end(), [&](const ToolSpec& t) { return t.name == name; });
  if (tool == tools.end()) return std::nullopt;
  const char* key = j.contains("arguments") ? "arguments" : j.contains("parameters") ? "parameters" : nullptr;
  json args = json::object();
  std::string text = "{}";  // the arguments' text
  if (key != nullptr) {
    args = j[key];
    if (args.is_string()) {
      text = args.get<std::string>();
      if (text.rfind("\xEF\xBB\xBF", 0) == 0) text.erase(0, 3);  // a byte order mark, which the parser skips
      std::optional<json> inner = parse_object(text);
      if (!inner) return std::nullopt;
      args = std::move(*inner);
    } else {
      // The member's text (the last of that name, as the parser keeps).
      text.clear();
      for (const RawItem& m : raw_items(raw))
        if (key_text(m.key) == key) text = std::string(m.value);
    }
    if (!args.is_object()) return std::nullopt;
  }
  if (tool->strict && !(tool->parameters.is_null() ? args.empty() : follows_schema(tool->parameters, args)))
    return std::nullopt;
  // The parsed value is written out instead where the text is not what was
  // parsed: not found (which parsed text cannot cause), holding a NUL byte
  // (nlohmann stops reading there), or with a key twice.
  std::string arguments = text.empty() || text.find('\0') != std::string::npos || has_duplicate_keys(args, trim(text))
                              ? args.dump(-1, ' ', false, json::error_handler_t::replace)
                              : compact_json(text);
  return ToolCall{name, std::move(arguments), {}};
}

ToolOutput parse_hermes(std::string_view text, const std::vector<ToolSpec>& tools, std::size_t max_calls) {
  ToolOutput out;
  std::size_t pos = 0, close = std::string_view::npos;
  bool close_searched = false;
  int whole_tries = 64;  // blocks read as a whole object first (each a scan to its end: bounded)
  for (std::size_t start; (start = text.find(kOpen, pos)) != std::string_view::npos;) {
    out.content.append(text.substr(pos, start - pos));
    const std::size_t body = start + kOpen.size();
    // A block that is one whole call object, then its "</tool_call>", ends
    // there, whatever its strings hold (an argument may itself mention
    // "</tool_call>").
    if (const std::size_t lead = text.find_first_not_of(kSpace, body);
        lead != std::string_view::npos && text[lead] == '{' && whole_tries-- > 0) {
      const std::size_t n = json_value_end(text.substr(lead));
      const std::size_t after = n == std::string_view::npos ? n : text.find_first_not_of(kSpace, lead + n);
      if (after != std::string_view::npos && text.compare(after, kClose.size(), kClose) == 0) {
        std::optional<ToolCall> call;
        if (std::optional<json> j = parse_object(text.substr(lead, n))) call = call_of(*j, text.substr(lead, n), tools);
        if (call) {
          if (out.calls.size() < max_calls) out.calls.push_back(std::move(*call));
          pos = after + kClose.size();
          continue;
        }
      }
    }
    // A block ends at its "</tool_call>", or unclosed at the next
    // "<tool_call>" (a tag written in passing, say while thinking, must not
    // swallow the real call after it) or at the end of the answer (cut by
    // max_tokens): an unclosed block is parsed too.
    // (The close found for an earlier block is kept while it lies ahead:
    // searching again from each of many openers before one far close
    // would cost the square of the answer.)
    if (!close_searched || (close != std::string_view::npos && close < body)) {
      close = text.find(kClose, body);
      close_searched = true;
    }
    const std::size_t next = text.find(kOpen, body);
    const std::size_t body_end = std::min({close, next, text.size()});
    const std::size_t end = body_end == close ? close + kClose.size() : body_end;
    std::optional<ToolCall> call;
    const std::string_view block = trim(text.substr(body, body_end - body));
    if (std::optional<json> j = parse_object(block)) call = call_of(*j, block, tools);
    if (!call) out.content.append(text.substr(start, end - start));  // not a call: stays text
    else if (out.calls.size() < max_calls) out.calls.push_back(std::move(*call));
    pos = end;
  }
  out.content.append(text.substr(pos));
  if (!out.calls.empty()) out.content.resize(rtrimmed_size(out.content));
  return out;
}

// The whole answer is one call object, or several separated by ';'.
ToolOutput parse_llama_json(std::string_view text, const std::vector<ToolSpec>& tools, std::size_t max_calls) {
  ToolOutput none{std::string(text), {}};
  const std::optional<std::string_view> part = calls_part(text, kPythonTag, '{');
  if (!part) return none;
  std::string_view rest = *part;
  ToolOutput out;
  while (!rest.empty()) {
    const std::size_t end = json_value_end(rest);
    if (end == std::string_view::npos) return none;
    std::optional<json> j = parse_object(rest.substr(0, end));
    std::optional<ToolCall> call = j ? call_of(*j, rest.substr(0, end), tools) : std::nullopt;
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
ToolOutput parse_mistral(std::string_view text, const std::vector<ToolSpec>& tools, std::size_t max_calls) {
  ToolOutput none{std::string(text), {}};
  const std::optional<std::string_view> part = calls_part(text, kMistralCallsToken, '[');
  std::optional<json> j = part ? parse_value(*part) : std::nullopt;
  if (!j || !j->is_array() || j->empty()) return none;
  const std::vector<RawItem> items = raw_items(trim(*part));
  if (items.size() != j->size()) return none;  // (parsed text always agrees)
  ToolOutput out;
  for (std::size_t k = 0; k < items.size(); ++k) {
    const json& item = (*j)[k];
    std::optional<ToolCall> call = item.is_object() ? call_of(item, items[k].value, tools) : std::nullopt;
    if (!call) return none;
    if (out.calls.size() < max_calls) out.calls.push_back(std::move(*call));
  }
  return out;
}

// ---- JSON Schema, the subset strict tools may use.

constexpr std::string_view kSchemaKeywords[] = {
    "type", "properties", "required", "additionalProperties", "items", "enum", "const", "anyOf", "allOf", "oneOf",
    "$ref", "$defs", "definitions", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minItems",
    "maxItems", "minLength", "maxLength", "pattern", "prefixItems", "uniqueItems", "multipleOf", "description", "title",
    "default", "examples", "nullable"};
constexpr std::string_view kTypes[] = {"string", "number", "integer", "boolean", "object", "array", "null"};
// Accepted and not checked (JSON Schema leaves "format" to annotation by
// default; "discriminator" is pydantic's note beside its oneOf).
constexpr std::string_view kAnnotations[] = {"$schema", "$id", "$comment", "format", "readOnly", "writeOnly",
                                             "deprecated", "discriminator", "contentEncoding", "contentMediaType"};
constexpr std::size_t kMaxSubschemas = 10'000;
constexpr std::size_t kMaxEntries = 10'000;  // enum and required entries in one schema
constexpr std::size_t kMaxPatternBytesInAll = 32'768;  // each pattern is compiled: their size in one schema

// A whole number of 0 or more (3 or 3.0), as length and count bounds are.
std::optional<std::uint64_t> count_of(const json& v) {
  if (v.is_number_unsigned()) return v.get<std::uint64_t>();
  if (v.is_number_integer()) return v.get<std::int64_t>() >= 0 ? std::optional<std::uint64_t>(v.get<std::int64_t>()) : std::nullopt;
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (d >= 0 && d < 1e18 && std::floor(d) == d) return static_cast<std::uint64_t>(d);
  }
  return std::nullopt;
}

// multipleOf: an integer against a whole m exactly; otherwise x / m within
// rounding of a whole number (8 units in the last place of the quotient:
// a decimal that is a multiple of m's shortest decimal form, read as a
// double, divides to within about 2), as JSON Schema validators in floating
// point do. m is over 0 (unsupported_schema).
bool multiple_of(const json& v, double m) {
  if (v.is_number_integer() && m == std::floor(m) && m <= 9007199254740992.0) {  // 2^53: m is its decimal
    const auto k = static_cast<std::uint64_t>(m);
    if (v.is_number_unsigned()) return v.get<std::uint64_t>() % k == 0;
    const std::int64_t x = v.get<std::int64_t>();
    const std::uint64_t magnitude = x < 0 ? ~static_cast<std::uint64_t>(x) + 1 : static_cast<std::uint64_t>(x);
    return magnitude % k == 0;
  }
  const double q = v.get<double>() / m;
  if (!std::isfinite(q)) return false;
  return std::fabs(q - std::nearbyint(q)) <= 8 * std::numeric_limits<double>::epsilon() * std::fabs(q);
}


template <std::size_t N>
bool one_of(std::string_view x, const std::string_view (&set)[N]) {
  return std::find(std::begin(set), std::end(set), x) != std::end(set);
}


struct SchemaCheck {
  const json& root;
  // Work allowed, in all (SchemaWork). Past the patterns' work (a few ms
  // where measured) no string matches.
  long steps = SchemaWork{}.steps;
  std::uint64_t pattern_work = SchemaWork{}.pattern_work;
  static constexpr int kMaxRefs = 64;  // $refs followed on one path

  bool type_matches(std::string_view t, const json& v) const {
    if (t == "string") return v.is_string();
    if (t == "integer") return v.is_number_integer() || (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>());
    if (t == "number") return v.is_number();
    if (t == "boolean") return v.is_boolean();
    if (t == "object") return v.is_object();
    if (t == "array") return v.is_array();
    return t == "null" && v.is_null();
  }

  static std::size_t code_points(const std::string& s) {
    return static_cast<std::size_t>(std::count_if(s.begin(), s.end(), [](char c) { return (c & 0xC0) != 0x80; }));
  }

  bool follows(const json& schema, const json& v, int refs) {
    if (--steps < 0) return false;
    if (schema.is_boolean()) return schema.get<bool>();
    if (!schema.is_object()) return false;
    steps -= static_cast<long>((v.is_object() || v.is_array()) ? v.size() : 0);
    for (const char* k : {"enum", "required"})
      if (schema.contains(k) && schema[k].is_array()) steps -= static_cast<long>(schema[k].size());
    if (steps < 0) return false;
    // OpenAPI 3.0's nullable (zod's nullable() as openai-node sends it):
    // null as well as what the rest allows.
    if (v.is_null() && schema.contains("nullable") && schema["nullable"] == true) return true;
    if (schema.contains("$ref")) {
      const json* target = resolve_ref(root, schema["$ref"]);
      if (target == nullptr || refs >= kMaxRefs || !follows(*target, v, refs + 1)) return false;
    }
    if (schema.contains("type")) {
      const json& t = schema["type"];
      bool ok = false;
      if (t.is_string()) ok = type_matches(t.get_ref<const std::string&>(), v);
      else if (t.is_array())
        for (const json& x : t) ok = ok || (x.is_string() && type_matches(x.get_ref<const std::string&>(), v));
      if (!ok) return false;
    }
    if (schema.contains("enum")) {
      const json& e = schema["enum"];
      if (!e.is_array() || std::none_of(e.begin(), e.end(), [&](const json& x) { return same_json(x, v); })) return false;
    }
    if (schema.contains("const") && !same_json(schema["const"], v)) return false;
    if (v.is_number()) {
      const double x = v.get<double>();
      auto bound = [&](const char* k) { return schema.contains(k) && schema[k].is_number() ? std::optional<double>(schema[k].get<double>()) : std::nullopt; };
      if (auto b = bound("minimum"); b && x < *b) return false;
      if (auto b = bound("maximum"); b && x > *b) return false;
      if (auto b = bound("exclusiveMinimum"); b && x <= *b) return false;
      if (auto b = bound("exclusiveMaximum"); b && x >= *b) return false;
      if (auto m = bound("multipleOf"); m && !multiple_of(v, *m)) return false;
    }
    auto count = [&](const char* k) { return schema.contains(k) ? count_of(schema[k]) : std::nullopt; };
    if (v.is_string()) {
      const std::size_t n = code_points(v.get_ref<const std::string&>());
      if (auto c = count("minLength"); c && n < *c) return false;
      if (auto c = count("maxLength"); c && n > *c) return false;
      if (schema.contains("pattern")) {
        // Each byte of the string is a step, and each check 64 (the
        // pattern is compiled once, pattern_grammar).
        steps -= 64 + static_cast<long>(v.get_ref<const std::string&>().size());
        if (steps < 0 || !schema["pattern"].is_string()) return false;
        if (pattern_matches(schema["pattern"].get_ref<const std::string&>(), v.get_ref<const std::string&>(), &pattern_work) !=
            true)
          return false;
      }
    }
    if (v.is_array()) {
      if (auto c = count("minItems"); c && v.size() < *c) return false;
      if (auto c = count("maxItems"); c && v.size() > *c) return false;
      // prefixItems: the first items, one schema each; items: the rest.
      const json* prefix = schema.contains("prefixItems") && schema["prefixItems"].is_array() ? &schema["prefixItems"] : nullptr;
      const std::size_t n_prefix = prefix != nullptr ? prefix->size() : 0;
      for (std::size_t i = 0; i < v.size(); ++i) {
        if (i < n_prefix) {
          if (!follows((*prefix)[i], v[i], refs)) return false;
        } else if (schema.contains("items") && !follows(schema["items"], v[i], refs)) {
          return false;
        }
      }
      if (schema.contains("uniqueItems") && schema["uniqueItems"] == true) {
        steps -= static_cast<long>(v.size() * v.size() / 2);  // each pair compared
        if (steps < 0) return false;
        for (std::size_t i = 0; i < v.size(); ++i)
          for (std::size_t j = i + 1; j < v.size(); ++j)
            if (same_json(v[i], v[j])) return false;
      }
    }
    if (v.is_object()) {
      if (schema.contains("required") && schema["required"].is_array())
        for (const json& k : schema["required"])
          if (!k.is_string() || !v.contains(k.get_ref<const std::string&>())) return false;
      const json* props = schema.contains("properties") && schema["properties"].is_object() ? &schema["properties"] : nullptr;
      for (auto it = v.begin(); it != v.end(); ++it) {
        if (props != nullptr && props->contains(it.key())) {
          if (!follows((*props)[it.key()], it.value(), refs)) return false;
        } else if (schema.contains("additionalProperties") && !follows(schema["additionalProperties"], it.value(), refs)) {
          return false;
        }
      }
    }
    auto branches = [&](const char* k) -> int {  // how many of the listed schemas v follows (-1: none listed)
      if (!schema.contains(k) || !schema[k].is_array()) return -1;
      int n = 0;
      for (const json& b : schema[k]) n += follows(b, v, refs) ? 1 : 0;
      return n;
    };
    if (const int n = branches("anyOf"); n == 0) return false;
    if (schema.contains("allOf") && schema["allOf"].is_array() && branches("allOf") != static_cast<int>(schema["allOf"].size()))
      return false;
    if (const int n = branches("oneOf"); n != -1 && n != 1) return false;
    return steps >= 0;
  }
};

}  // namespace

bool same_json(const json& a, const json& b) {
  if (a.is_object() && b.is_object()) {
    if (a.size() != b.size()) return false;
    for (auto it = a.begin(); it != a.end(); ++it) {
      auto other = b.find(it.key());
      if (other == b.end() || !same_json(it.value(), *other)) return false;
    }
    return true;
  }
  if (a.is_array() && b.is_array()) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
      if (!same_json(a[i], b[i])) return false;
    return true;
  }
  return a == b;
}

const json* resolve_ref(const json& root, const json& ref) {
  if (!ref.is_string()) return nullptr;
  const std::string& r = ref.get_ref<const std::string&>();
  if (r == "#") return &root;
  for (std::string_view prefix : {"#/$defs/", "#/definitions/"}) {
    if (r.compare(0, prefix.size(), prefix) != 0) continue;
    const std::string name = r.substr(prefix.size());
    const std::string table(prefix.substr(2, prefix.size() - 3));
    if (name.find_first_of("/~%") != std::string::npos || !root.contains(table) || !root[table].is_object() ||
        !root[table].contains(name))
      return nullptr;
    return &root[table][name];
  }
  return nullptr;
}

std::optional<std::string> unsupported_schema(const json& schema, std::string_view root) {
  // Every subschema, iteratively (the schema came in a request body, so
  // its depth is bounded, but its width is not). A node's path is built
  // only for the message of a refusal, from its parents.
  struct Node {
    const json* s;
    std::size_t parent;        // npos for the root
    std::string_view keyword;  // that leads to it from its parent
    std::string_view name;     // under properties / $defs / definitions: the name
    std::size_t index;         // within anyOf / allOf / oneOf, or npos
  };
  constexpr std::size_t kNone = std::string::npos;
  std::vector<Node> nodes = {{&schema, kNone, root, {}, kNone}};
  auto path = [&](std::size_t at) {
    std::vector<std::string> parts;
    for (; at != kNone; at = nodes[at].parent) {
      const Node& n = nodes[at];
      // (Appended piece by piece: GCC 12 at -O2 warns, wrongly, of overlap
      // in "." + std::string.)
      std::string part;
      if (n.parent != kNone) part += '.';
      part.append(n.keyword);
      if (!n.name.empty()) {
        part += '.';
        part.append(n.name.substr(0, 64));
        if (n.name.size() > 64) part += "...";
      }
      if (n.index != kNone) {
        part += '[';
        part += std::to_string(n.index);
        part += ']';
      }
      parts.push_back(std::move(part));
    }
    std::string out;
    for (auto it = parts.rbegin(); it != parts.rend(); ++it) out += *it;
    return out;
  };
  std::size_t entries = 0;        // enum and required entries, in all
  std::size_t pattern_bytes = 0;  // patterns' bytes, in all
  auto room_for = [&](std::size_t n) { return nodes.size() + n <= kMaxSubschemas; };
  const std::string too_many = std::string(root) + " has more than 10,000 subschemas";
  for (std::size_t at = 0; at < nodes.size(); ++at) {
    const json* s = nodes[at].s;
    if (s->is_boolean()) continue;
    if (!s->is_object()) return path(at) + " is not a schema (an object)";
    for (auto it = s->begin(); it != s->end(); ++it) {
      const std::string& k = it.key();
      const json& v = it.value();
      auto here = [&] { return path(at) + "." + k; };
      if (!one_of(k, kSchemaKeywords) && !one_of(k, kAnnotations))
        return path(at) + ": the keyword '" + k.substr(0, 64) + "' cannot be checked here (strict)";
      if (k == "type") {
        const bool ok = v.is_string() ? one_of(v.get_ref<const std::string&>(), kTypes)
                                      : v.is_array() && std::all_of(v.begin(), v.end(), [](const json& x) {
                                          return x.is_string() && one_of(x.get_ref<const std::string&>(), kTypes);
                                        });
        if (!ok) return here() + " is not a JSON Schema type (or a list of them)";
      } else if (k == "$ref") {
        if (resolve_ref(schema, v) == nullptr)
          return here() + " must name \"#\", \"#/$defs/NAME\" or \"#/definitions/NAME\" of " + std::string(root);
      } else if (k == "properties" || k == "$defs" || k == "definitions") {
        if (!v.is_object()) return here() + " must be an object";
        if (!room_for(v.size())) return too_many;
        for (auto p = v.begin(); p != v.end(); ++p) nodes.push_back({&p.value(), at, k, p.key(), kNone});
      } else if (k == "items" || k == "additionalProperties") {
        if (!room_for(1)) return too_many;
        nodes.push_back({&v, at, k, {}, kNone});
      } else if (k == "uniqueItems") {
        if (!v.is_boolean()) return here() + " must be true or false";
      } else if (k == "anyOf" || k == "allOf" || k == "oneOf" || k == "prefixItems") {
        if (!v.is_array()) return here() + " must be an array";
        if (!room_for(v.size())) return too_many;
        for (std::size_t i = 0; i < v.size(); ++i) nodes.push_back({&v[i], at, k, {}, i});
      } else if (k == "required" || k == "enum") {
        if (!v.is_array()) return here() + " must be an array";
        if (k == "required" && !std::all_of(v.begin(), v.end(), [](const json& x) { return x.is_string(); }))
          return here() + " must list names (strings)";
        if ((entries += v.size()) > kMaxEntries) return std::string(root) + " has more than 10,000 enum and required entries";
      } else if (k == "pattern") {
        if (!v.is_string()) return here() + " must be a string";
        if ((pattern_bytes += v.get_ref<const std::string&>().size()) > kMaxPatternBytesInAll)
          return std::string(root) + " has more than 32,768 bytes of patterns";
        if (!pattern_grammar(v.get_ref<const std::string&>())) {
          engine::Grammar scratch;
          std::string why;
          pattern_rule(&scratch, v.get_ref<const std::string&>(), here(), &why);
          return why;
        }
      } else if (k == "multipleOf") {
        // (below 1e-300 a quotient loses its precision, or overflows)
        if (!v.is_number() || !(v.get<double>() > 0) || !std::isfinite(v.get<double>()))
          return here() + " must be a number over 0";
        if (v.get<double>() < 1e-300) return here() + " must be at least 1e-300";
      } else if (k == "nullable") {
        if (!v.is_boolean()) return here() + " must be true or false";
      } else if (k == "minLength" || k == "maxLength" || k == "minItems" || k == "maxItems") {
        if (!count_of(v)) return here() + " must be a whole number, 0 or more";
      } else if (k.rfind("min", 0) == 0 || k.rfind("max", 0) == 0 || k.rfind("exclusive", 0) == 0) {
        if (!v.is_number()) return here() + " must be a number";
      }
    }
  }
  return std::nullopt;
}

bool follows_schema(const json& schema, const json& value) {
  SchemaCheck check{schema};
  return check.follows(schema, value, 0);
}

bool follows_subschema(const json& root, const json& schema, const json& value, SchemaWork* work) {
  SchemaCheck check{root, work->steps, work->pattern_work};
  const bool out = check.follows(schema, value, 0);
  work->steps = check.steps;
  work->pattern_work = check.pattern_work;
  return out;
}

ToolFormat tool_format_of(std::string_view t) {
  auto has = [&](std::string_view x) { return t.find(x) != std::string_view::npos; };
  // <tool_call> with JSON inside; not the XML-style calls some templates
  // also put in <tool_call> (Qwen3-Coder's <function=...>, GLM's <arg_key>).
  if (has(kOpen)) return has("\"name") && !has("<function=") && !has("<arg_key>") ? ToolFormat::kHermes : ToolFormat::kNone;
  if (t.find(kMistralCallsToken) != std::string_view::npos)
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

ToolOutput parse_tool_calls(ToolFormat f, std::string_view text, const std::vector<ToolSpec>& tools,
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
  const std::string_view tag = f_ == ToolFormat::kLlamaJson ? kPythonTag : kMistralCallsToken;
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
