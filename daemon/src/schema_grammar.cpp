#include "schema_grammar.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <optional>
#include <set>
#include <unordered_map>
#include <utility>
#include <vector>

#include "tool_calls.h"

namespace airlock::daemon {
namespace {

using json = nlohmann::ordered_json;
using engine::Grammar;
using Rule = Grammar::RuleId;
using Seq = std::vector<Grammar::Symbol>;

constexpr std::size_t kMaxElements = 2'000'000;
constexpr std::uint64_t kMaxRepeat = 10'000;
constexpr std::int64_t kMaxIntegerChoices = 1'000;
constexpr int kMaxSpaces = 32;   // whitespace bytes between two tokens
constexpr int kMaxDigits = 20;   // in a number's integer part, and in its fraction

// Keywords that say nothing of which values follow (containers of
// definitions, and annotations).
constexpr std::string_view kInert[] = {"description", "title", "default", "examples", "$schema", "$id", "$comment",
                                       "format", "readOnly", "writeOnly", "deprecated", "discriminator",
                                       "contentEncoding", "contentMediaType", "$defs", "definitions"};

bool inert(std::string_view k) { return std::find(std::begin(kInert), std::end(kInert), k) != std::end(kInert); }

// The constraining keyword of `s` other than `self`, or empty.
std::string other_constraint(const json& s, std::string_view self) {
  for (auto it = s.begin(); it != s.end(); ++it)
    if (it.key() != self && !inert(it.key())) return it.key();
  return {};
}

Seq operator+(Seq a, const Seq& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

Seq lit(std::string_view text) {
  Seq s;
  Grammar::literal(text, &s);
  return s;
}

Seq sym(std::initializer_list<Grammar::Symbol> symbols) { return Seq(symbols); }

std::optional<double> number_at(const json& s, const char* k) {
  return s.contains(k) && s[k].is_number() ? std::optional<double>(s[k].get<double>()) : std::nullopt;
}

std::optional<std::uint64_t> count_at(const json& s, const char* k) {
  if (!s.contains(k) || !s[k].is_number()) return std::nullopt;
  const double d = s[k].get<double>();
  return d >= 1e18 ? std::uint64_t{1'000'000'000'000'000'000} : static_cast<std::uint64_t>(d);
}

// Compiles schemas into one grammar: the rules every schema uses are made
// once, then each schema() adds the rules of one schema (its own root for
// $ref), and finish() makes the grammar with a start.
class Compiler {
 public:
  Compiler() { common(); }

  // The rule of `root`'s instances, or nullopt (error() says why).
  std::optional<Rule> schema(const json& root, std::string_view name) {
    root_ = &root;
    name_ = name;
    refs_.clear();
    open_refs_.clear();
    containers_ = 0;
    error_.clear();
    exact_ = true;
    const std::optional<Rule> v = value(root, std::string(name_));
    if (v && g_.elements() > kMaxElements) fail(std::string(name_) + " is too large to hold an answer to");
    if (!error_.empty()) return std::nullopt;
    return v;
  }
  const std::string& error() const { return error_; }
  // The last schema() held every keyword exactly (no number bound or oneOf
  // held only in part): its sentences all follow it.
  bool exact() const { return exact_; }

  // The grammar of leading whitespace, then `sentence`.
  std::shared_ptr<const Grammar> finish(const Seq& sentence) {
    g_.set_start(alternatives({sym({ref(ws_)}) + sentence}));
    return std::make_shared<const Grammar>(std::move(g_));
  }

  Rule alternatives(const std::vector<Seq>& alts) {
    const Rule r = g_.add_rule();
    for (const Seq& a : alts) g_.add_alternative(r, a);
    return r;
  }
  Grammar::Symbol ref(Rule r) const { return Grammar::ref(r); }
  Rule ws() const { return ws_; }
  Rule any_object() { return map_of(any_); }
  // `item`, then any number of (ws `separator` ws `item`): a loop.
  Rule one_or_more(const Seq& item, const Seq& separator) {
    const Rule more = g_.add_rule();
    g_.add_alternative(more, {});
    const Seq between = separator.empty() ? sym({ref(ws_)}) : sym({ref(ws_)}) + separator + sym({ref(ws_)});
    g_.add_alternative(more, between + item + sym({ref(more)}));
    return alternatives({item + sym({ref(more)})});
  }

 private:
  std::nullopt_t fail(std::string why) {
    if (error_.empty()) error_ = std::move(why);
    return std::nullopt;
  }

  // Rules every schema may use.
  void common() {
    ws_ = alternatives({{}});
    for (int i = 0; i < kMaxSpaces; ++i) {
      Grammar::ByteSet space;
      for (char c : {' ', '\t', '\n', '\r'}) space.set(static_cast<unsigned char>(c));
      ws_ = alternatives({{}, sym({Grammar::set(space), ref(ws_)})});
    }
    string_ = alternatives({sym({Grammar::string()})});
    auto of = [](std::string_view chars) {
      Grammar::ByteSet b;
      for (char c : chars) b.set(static_cast<unsigned char>(c));
      return Grammar::set(b);
    };

    // Numbers: at most 20 digits before the point and after it, an
    // exponent of two digits at most (every such number is a finite double).
    const auto digit = Grammar::range('0', '9');
    Rule digits = alternatives({{}});  // up to kMaxDigits - 1 digits
    for (int i = 1; i < kMaxDigits; ++i) digits = alternatives({{}, sym({digit, ref(digits)})});
    const Rule whole = alternatives({lit("0"), sym({Grammar::range('1', '9'), ref(digits)})});
    const Rule fraction = alternatives({{}, sym({Grammar::byte('.'), digit, ref(digits)})});
    const Rule exponent = alternatives({{}, sym({of("eE"), of("+-"), digit}), sym({of("eE"), of("+-"), digit, digit}),
                                        sym({of("eE"), digit}), sym({of("eE"), digit, digit})});
    nonneg_integer_ = whole;
    integer_ = alternatives({sym({ref(whole)}), sym({Grammar::byte('-'), ref(whole)})});
    nonneg_number_ = alternatives({sym({ref(whole), ref(fraction), ref(exponent)})});
    number_ = alternatives({sym({ref(nonneg_number_)}), sym({Grammar::byte('-'), ref(nonneg_number_)})});

    // Any value.
    any_ = g_.add_rule();
    const Rule any_object = map_of(any_);
    const Rule any_array = array_of(any_, 0, std::nullopt).value();
    for (const Seq& a : {sym({ref(any_object)}), sym({ref(any_array)}), sym({ref(string_)}), sym({ref(number_)}),
                         lit("true"), lit("false"), lit("null")})
      g_.add_alternative(any_, a);
  }

  // `item` `lo` times, then up to hi - lo more times (any number more
  // without hi).
  std::optional<Rule> repeat(const Seq& item, std::uint64_t lo, std::optional<std::uint64_t> hi, const std::string& path) {
    if (lo > kMaxRepeat || (hi && *hi - lo > kMaxRepeat))
      return fail(path + ": a repetition bound over 10,000 cannot be held to");
    Rule tail;
    if (!hi) {
      tail = g_.add_rule();
      g_.add_alternative(tail, {});
      g_.add_alternative(tail, item + sym({ref(tail)}));
    } else {
      tail = alternatives({{}});
      for (std::uint64_t i = lo; i < *hi; ++i) tail = alternatives({{}, item + sym({ref(tail)})});
    }
    if (item.size() * lo > kMaxElements) return fail(std::string(name_) + " is too large to hold an answer to");
    Seq head;
    head.reserve(item.size() * lo + 1);
    for (std::uint64_t i = 0; i < lo; ++i) head.insert(head.end(), item.begin(), item.end());
    head.push_back(ref(tail));
    return alternatives({head});
  }

  // {"key": value, ...} with any keys, each value of rule v.
  Rule map_of(Rule v) {
    const Seq member = sym({ref(string_), ref(ws_), Grammar::byte(':'), ref(ws_), ref(v), ref(ws_)});
    const Rule more = g_.add_rule();
    g_.add_alternative(more, {});
    g_.add_alternative(more, sym({Grammar::byte(','), ref(ws_)}) + member + sym({ref(more)}));
    return alternatives({sym({Grammar::byte('{'), ref(ws_), Grammar::byte('}')}),
                         sym({Grammar::byte('{'), ref(ws_)}) + member + sym({ref(more), Grammar::byte('}')})});
  }

  // [value, ...] of lo to hi values of rule v.
  std::optional<Rule> array_of(Rule v, std::uint64_t lo, std::optional<std::uint64_t> hi, const std::string& path = {}) {
    const Seq open = sym({Grammar::byte('['), ref(ws_)});
    if (hi && *hi == 0) return alternatives({open + lit("]")});
    const std::optional<Rule> rest = repeat(sym({Grammar::byte(','), ref(ws_), ref(v), ref(ws_)}), lo > 0 ? lo - 1 : 0,
                                            hi ? std::optional<std::uint64_t>(*hi - 1) : std::nullopt, path);
    if (!rest) return std::nullopt;
    const Seq some = open + sym({ref(v), ref(ws_), ref(*rest), Grammar::byte(']')});
    if (lo > 0) return alternatives({some});
    return alternatives({open + lit("]"), some});
  }

  // Exactly one of `texts`, as a trie (one way through for each prefix).
  Rule literals(const std::vector<std::string>& texts) {
    struct Node {
      std::map<unsigned char, std::size_t> next;
      bool end = false;
    };
    std::vector<Node> trie(1);
    for (const std::string& t : texts) {
      std::size_t at = 0;
      for (char c : t) {
        auto [it, added] = trie[at].next.try_emplace(static_cast<unsigned char>(c), trie.size());
        if (added) trie.emplace_back();
        at = it->second;
      }
      trie[at].end = true;
    }
    // Children come after their parents: build from the last node back.
    std::vector<Rule> rule(trie.size());
    for (std::size_t i = trie.size(); i-- > 0;) {
      std::vector<Seq> alts;
      if (trie[i].end) alts.push_back({});
      for (const auto& [c, child] : trie[i].next) {
        if (trie[child].next.empty()) alts.push_back(sym({Grammar::byte(c)}));
        else alts.push_back(sym({Grammar::byte(c), ref(rule[child])}));
      }
      rule[i] = alternatives(alts);
    }
    return rule[0];
  }

  std::optional<Rule> value(const json& s, const std::string& path) {
    if (!error_.empty()) return std::nullopt;
    // Checked as it grows: one subschema adds a bounded amount.
    if (g_.elements() > kMaxElements) return fail(std::string(name_) + " is too large to hold an answer to");
    if (s.is_boolean()) return s.get<bool>() ? std::optional<Rule>(any_) : fail(path + " is false: no value follows it");
    if (!s.is_object()) return fail(path + " is not a schema");
    if (s.contains("nullable")) {  // OpenAPI 3.0's (zod's nullable()): null, or a value of the rest
      json rest = s;
      rest.erase("nullable");
      const std::optional<Rule> v = value(rest, path);
      if (!v || !s["nullable"].get<bool>()) return v;
      return alternatives({sym({ref(*v)}), lit("null")});
    }
    if (s.contains("$ref")) {
      if (std::string k = other_constraint(s, "$ref"); !k.empty())
        return fail(path + ": '" + k + "' beside $ref cannot be held to");
      return referenced(s["$ref"].get<std::string>(), path);
    }
    if (s.contains("allOf")) {
      if (std::string k = other_constraint(s, "allOf"); !k.empty())
        return fail(path + ": '" + k + "' beside allOf cannot be held to");
      if (s["allOf"].size() != 1) return fail(path + ".allOf: only an allOf of one schema can be held to");
      return value(s["allOf"][0], path + ".allOf[0]");
    }
    for (const char* k : {"anyOf", "oneOf"}) {
      if (!s.contains(k)) continue;
      if (std::string_view(k) == "oneOf" && s[k].size() > 1) exact_ = false;  // held as anyOf
      if (std::string other = other_constraint(s, k); !other.empty())
        return fail(path + ": '" + other + "' beside " + k + " cannot be held to");
      std::vector<Seq> alts;
      for (std::size_t i = 0; i < s[k].size(); ++i) {
        if (s[k][i].is_boolean() && !s[k][i].get<bool>()) continue;  // no value: no branch
        const std::optional<Rule> b = value(s[k][i], path + "." + k + "[" + std::to_string(i) + "]");
        if (!b) return std::nullopt;
        alts.push_back(sym({ref(*b)}));
      }
      if (alts.empty()) return fail(path + "." + k + ": no branch admits a value");
      return alternatives(alts);
    }
    if (s.contains("enum") || s.contains("const")) return choices(s, path);

    std::vector<std::string> types;
    if (s.contains("type")) {
      if (s["type"].is_string()) types.push_back(s["type"].get<std::string>());
      else
        for (const json& t : s["type"]) types.push_back(t.get<std::string>());
    } else if (s.contains("properties") || s.contains("additionalProperties") || s.contains("required")) {
      types = {"object"};
    } else if (s.contains("items") || s.contains("minItems") || s.contains("maxItems")) {
      types = {"array"};
    } else if (s.contains("minLength") || s.contains("maxLength")) {
      types = {"string"};
    } else if (s.contains("minimum") || s.contains("maximum") || s.contains("exclusiveMinimum") || s.contains("exclusiveMaximum")) {
      types = {"number"};
    } else {
      return any_;
    }
    std::vector<Seq> alts;
    for (const std::string& t : types) {
      std::optional<Rule> r;
      if (t == "string") r = string_of(s, path);
      else if (t == "number") r = number_of(s);
      else if (t == "integer") r = integer_of(s, path);
      else if (t == "boolean") r = literals({"true", "false"});
      else if (t == "null") r = literals({"null"});
      else if (t == "object") r = object_of(s, path);
      else if (t == "array") r = array_schema(s, path);
      if (!r) return std::nullopt;
      alts.push_back(sym({ref(*r)}));
    }
    if (alts.empty()) return fail(path + ".type lists no type");
    return alts.size() == 1 ? alts[0][0].rule : alternatives(alts);
  }

  std::optional<Rule> referenced(const std::string& ref_text, const std::string& path) {
    const json* target = resolve_ref(*root_, json(ref_text));
    if (target == nullptr) return fail(path + ".$ref: unknown target");
    if (auto it = refs_.find(target); it != refs_.end()) {
      // Still being compiled with no container opened since: a loop that
      // would read nothing (left recursion).
      for (const auto& [open, containers] : open_refs_)
        if (open == target && containers == containers_)
          return fail(path + ".$ref: '" + ref_text + "' refers back to itself before any value is read");
      return it->second;
    }
    const Rule r = g_.add_rule();
    refs_.emplace(target, r);
    open_refs_.emplace_back(target, containers_);
    const std::optional<Rule> body = value(*target, ref_text);
    open_refs_.pop_back();
    if (!body) return std::nullopt;
    g_.add_alternative(r, sym({ref(*body)}));
    return r;
  }

  // enum / const: the values that also follow the rest of the schema.
  std::optional<Rule> choices(const json& s, const std::string& path) {
    json rest = s;
    rest.erase("enum");
    rest.erase("const");
    std::vector<json> candidates;
    if (s.contains("const")) {
      // With an enum as well, the const only if the enum lists it.
      const json same = {{"const", s["const"]}};
      if (!s.contains("enum") || std::any_of(s["enum"].begin(), s["enum"].end(), [&](const json& v) { return follows_schema(same, v); }))
        candidates.push_back(s["const"]);
    } else {
      candidates.assign(s["enum"].begin(), s["enum"].end());
    }
    std::vector<std::string> texts;
    std::size_t bytes = 0;
    for (const json& v : candidates)
      if (follows_schema(rest, v)) {
        texts.push_back(v.dump());
        if ((bytes += texts.back().size()) > kMaxElements) return fail(std::string(name_) + " is too large to hold an answer to");
      }
    if (texts.empty()) return fail(path + ": no value of its enum or const follows the rest of it");
    return literals(texts);
  }

  // Number bounds: held exactly when there are none, or only a minimum of
  // 0 (no minus sign); otherwise only a lower bound of 0 or more is held
  // in part (no minus sign).
  std::optional<Rule> number_of(const json& s) {
    const bool only_min_zero = !s.contains("maximum") && !s.contains("exclusiveMaximum") && !s.contains("exclusiveMinimum") &&
                               (!s.contains("minimum") || number_at(s, "minimum") == 0.0);
    if (!only_min_zero) exact_ = false;
    return nonneg(s) ? nonneg_number_ : number_;
  }

  static bool nonneg(const json& s) {
    const std::optional<double> lo = number_at(s, "minimum"), xlo = number_at(s, "exclusiveMinimum");
    return (lo && *lo >= 0) || (xlo && *xlo >= 0);
  }

  std::optional<Rule> integer_of(const json& s, const std::string& path) {
    std::optional<double> lo = number_at(s, "minimum"), hi = number_at(s, "maximum");
    if (auto x = number_at(s, "exclusiveMinimum")) lo = std::max(lo.value_or(-1e300), std::floor(*x) + 1);
    if (auto x = number_at(s, "exclusiveMaximum")) hi = std::min(hi.value_or(1e300), std::ceil(*x) - 1);
    if (lo && hi) {
      const double a = std::ceil(*lo), b = std::floor(*hi);
      if (a > b) return fail(path + ": no integer lies between its bounds");
      if (b - a < kMaxIntegerChoices && std::fabs(a) < 1e15 && std::fabs(b) < 1e15) {
        std::vector<std::string> texts;
        for (auto i = static_cast<std::int64_t>(a); i <= static_cast<std::int64_t>(b); ++i) texts.push_back(std::to_string(i));
        return literals(texts);
      }
    }
    const std::optional<Rule> bounded = number_of(s);  // (for exact_)
    if (!bounded) return bounded;
    return nonneg(s) ? nonneg_integer_ : integer_;
  }

  std::optional<Rule> string_of(const json& s, const std::string& path) {
    const std::optional<std::uint64_t> lo = count_at(s, "minLength"), hi = count_at(s, "maxLength");
    if (!lo && !hi) return string_;
    if (lo && hi && *lo > *hi) return fail(path + ": minLength is over maxLength");
    constexpr std::uint64_t kMost = Grammar::kUnbounded - 1;
    return alternatives({sym({Grammar::string(static_cast<std::uint32_t>(std::min(lo.value_or(0), kMost)),
                                              hi ? static_cast<std::uint32_t>(std::min(*hi, kMost)) : Grammar::kUnbounded)})});
  }

  std::optional<Rule> array_schema(const json& s, const std::string& path) {
    const std::optional<std::uint64_t> lo = count_at(s, "minItems"), hi = count_at(s, "maxItems");
    if (lo && hi && *lo > *hi) return fail(path + ": minItems is over maxItems");
    Rule item = any_;
    if (s.contains("items")) {
      const json& items = s["items"];
      if (items.is_boolean() && !items.get<bool>()) {
        if (lo.value_or(0) > 0) return fail(path + ": items is false and minItems over 0");
        return array_of(any_, 0, 0, path);
      }
      ++containers_;
      const std::optional<Rule> v = value(items, path + ".items");
      --containers_;
      if (!v) return std::nullopt;
      item = *v;
    }
    return array_of(item, lo.value_or(0), hi, path);
  }

  std::optional<Rule> object_of(const json& s, const std::string& path) {
    struct Member {
      std::string key;
      const json* schema;
      bool required;
    };
    std::vector<std::string> required;
    if (s.contains("required"))
      for (const json& k : s["required"]) required.push_back(k.get<std::string>());
    const std::set<std::string> required_set(required.begin(), required.end());
    auto is_required = [&](const std::string& k) { return required_set.count(k) > 0; };
    static const json kAny = true;
    const json* extra = s.contains("additionalProperties") ? &s["additionalProperties"] : &kAny;
    std::vector<Member> members;
    if (s.contains("properties"))
      for (auto it = s["properties"].begin(); it != s["properties"].end(); ++it) members.push_back({it.key(), &it.value(), is_required(it.key())});
    std::set<std::string> named;
    for (const Member& m : members) named.insert(m.key);
    for (const std::string& k : required)
      if (named.insert(k).second) members.push_back({k, extra, true});

    ++containers_;
    struct Compiled {
      Seq member;  // "key" ws : ws value ws
      bool required;
    };
    std::vector<Compiled> parts;
    for (const Member& m : members) {
      const std::string at = path + ".properties." + m.key.substr(0, 64);
      if (m.schema->is_boolean() && !m.schema->get<bool>()) {
        if (m.required) {
          --containers_;
          return fail(at + ": required, and no value follows its schema (false)");
        }
        continue;
      }
      const std::optional<Rule> v = value(*m.schema, at);
      if (!v) {
        --containers_;
        return std::nullopt;
      }
      parts.push_back({lit(json(m.key).dump()) + sym({ref(ws_), Grammar::byte(':'), ref(ws_), ref(*v), ref(ws_)}), m.required});
    }
    std::optional<Rule> out;
    if (parts.empty() && !s.contains("properties") && !(extra->is_boolean() && !extra->get<bool>())) {
      const std::optional<Rule> v = value(*extra, path + ".additionalProperties");
      if (v) out = map_of(*v);
    } else {
      // first[i]: the members from i on, none written before; later[i]:
      // the same after one was (each then comes after a comma).
      std::vector<Rule> first(parts.size() + 1), later(parts.size() + 1);
      first[parts.size()] = later[parts.size()] = alternatives({{}});
      for (std::size_t i = parts.size(); i-- > 0;) {
        const Seq comma = sym({Grammar::byte(','), ref(ws_)});
        std::vector<Seq> f = {parts[i].member + sym({ref(later[i + 1])})};
        std::vector<Seq> l = {comma + parts[i].member + sym({ref(later[i + 1])})};
        if (!parts[i].required) {
          f.push_back(sym({ref(first[i + 1])}));
          l.push_back(sym({ref(later[i + 1])}));
        }
        first[i] = alternatives(f);
        later[i] = alternatives(l);
      }
      out = alternatives({sym({Grammar::byte('{'), ref(ws_), ref(first[0]), Grammar::byte('}')})});
    }
    --containers_;
    return out;
  }

  const json* root_ = nullptr;
  std::string_view name_;
  Grammar g_;
  std::string error_;
  Rule ws_ = 0, string_ = 0, number_ = 0, nonneg_number_ = 0, integer_ = 0, nonneg_integer_ = 0, any_ = 0;
  std::unordered_map<const json*, Rule> refs_;
  std::vector<std::pair<const json*, int>> open_refs_;  // $refs being compiled, and the containers open then
  int containers_ = 0;
  bool exact_ = true;
};

}  // namespace

std::shared_ptr<const engine::Grammar> compile_schema(const nlohmann::ordered_json& schema, std::string_view root,
                                                      std::string* error) {
  if (std::optional<std::string> why = unsupported_schema(schema, root)) {
    *error = *why;
    return nullptr;
  }
  Compiler c;
  const std::optional<Rule> v = c.schema(schema, root);
  if (!v) {
    *error = c.error();
    return nullptr;
  }
  return c.finish(sym({c.ref(*v)}));
}

std::shared_ptr<const engine::Grammar> tool_call_grammar(ToolFormat format, const std::vector<ToolSpec>& tools,
                                                         const std::string& only, bool parallel, std::string* error) {
  if (format != ToolFormat::kHermes && format != ToolFormat::kLlamaJson) {
    *error = std::string("this model's tool-call form (") + tool_format_name(format) +
             ") cannot be forced: only hermes and llama3_json calls can";
    return nullptr;
  }
  Compiler c;
  const Rule ws = c.ws();
  // One alternative per tool: "NAME", "arguments": ARGS (Llama's
  // template teaches "parameters").
  const char* args_key = format == ToolFormat::kHermes ? "\"arguments\"" : "\"parameters\"";
  std::vector<Seq> named;
  for (std::size_t i = 0; i < tools.size(); ++i) {
    const ToolSpec& t = tools[i];
    if (!only.empty() && t.name != only) continue;
    const std::string param = "tools[" + std::to_string(i) + "].function.parameters";
    std::optional<Rule> args;
    const json& p = t.parameters;
    if (p.is_null()) {
      args = c.alternatives({lit("{") + sym({c.ref(ws)}) + lit("}")});  // no parameters: {}
    } else if (p.is_object() && p.empty()) {
      args = c.any_object();
    } else if (std::optional<std::string> why = unsupported_schema(p, param); !why) {
      args = c.schema(p, param);
      // A strict call whose arguments did not follow the schema would not
      // be returned as a call: what is forced must be held exactly.
      if (args && t.strict && !c.exact()) {
        *error = param + ": number bounds other than a minimum of 0, or oneOf, cannot be held exactly, and a forced "
                         "call of a strict function must follow its schema";
        return nullptr;
      }
    }
    if (!args) {
      // Arguments a strict tool promises must be held; others can be any
      // object (the schema is what the model was told).
      if (t.strict) {
        *error = c.error().empty() ? param + " cannot be held to" : c.error();
        return nullptr;
      }
      args = c.any_object();
    }
    named.push_back(lit(nlohmann::json(t.name).dump()) + sym({c.ref(ws), Grammar::byte(','), c.ref(ws)}) + lit(args_key) +
                    sym({c.ref(ws), Grammar::byte(':'), c.ref(ws), c.ref(*args)}));
  }
  if (named.empty()) {
    *error = "no tool is named '" + only + "'";
    return nullptr;
  }
  const Seq object = lit("{") + sym({c.ref(ws)}) + lit("\"name\"") + sym({c.ref(ws), Grammar::byte(':'), c.ref(ws),
                                                                        c.ref(c.alternatives(named)), c.ref(ws)}) + lit("}");
  Seq call = object, separator;
  if (format == ToolFormat::kHermes) {
    call = lit("<tool_call>") + sym({c.ref(ws)}) + object + sym({c.ref(ws)}) + lit("</tool_call>");
  } else {
    separator = lit(";");
  }
  if (!parallel) return c.finish(call);
  return c.finish(sym({c.ref(c.one_or_more(call, separator))}));
}

}  // namespace airlock::daemon
