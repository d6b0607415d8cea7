#include "schema_grammar.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <deque>
#include <initializer_list>
#include <map>
#include <optional>
#include <set>
#include <system_error>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "json_pattern.h"
#include "tool_calls.h"

namespace airlock::daemon {
namespace {

using json = nlohmann::ordered_json;
using engine::Grammar;
using Rule = Grammar::RuleId;
using Seq = std::vector<Grammar::Symbol>;

constexpr std::size_t kMaxElements = 2'000'000;
constexpr std::uint64_t kMaxRepeat = 10'000;
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

// The values an enum / const names: the const (only if an enum beside it
// lists it), else the enum's.
json listed_values(const json& s) {
  if (!s.contains("const")) return s["enum"];
  if (s.contains("enum") &&
      std::none_of(s["enum"].begin(), s["enum"].end(), [&](const json& v) { return same_json(s["const"], v); }))
    return json::array();
  return json::array({s["const"]});
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
  // One of `texts`, as a tree of their shared prefixes with a rule only
  // where they part (a rule per byte took ~200 times an enum's text in
  // memory: 9,000 strings of 200 bytes, 400 MB).
  Rule literals(std::vector<std::string> texts) {
    std::sort(texts.begin(), texts.end());
    texts.erase(std::unique(texts.begin(), texts.end()), texts.end());
    // A node: texts [lo, hi), alike in their first `depth` bytes. Children
    // come after their parents: rules are made from the last node back.
    struct Node {
      std::size_t lo, hi, depth;
      std::vector<std::pair<std::size_t, std::size_t>> parts;  // (child node, the bytes before it: up to its depth)
      bool end = false;  // texts[lo] ends here
    };
    std::vector<Node> nodes{{0, texts.size(), 0, {}, false}};
    for (std::size_t n = 0; n < nodes.size(); ++n) {
      std::size_t at = nodes[n].lo;
      const std::size_t hi = nodes[n].hi, depth = nodes[n].depth;
      if (at < hi && texts[at].size() == depth) {  // (sorted: the one that ends sorts first)
        nodes[n].end = true;
        ++at;
      }
      while (at < hi) {
        // The texts with this next byte, and how far they stay alike.
        const char c = texts[at][depth];
        std::size_t last = at + 1;
        while (last < hi && texts[last][depth] == c) ++last;
        const std::string& first = texts[at];
        const std::string& end_text = texts[last - 1];  // (sorted: the first and last bound what all share)
        std::size_t shared = depth + 1;
        while (shared < first.size() && shared < end_text.size() && first[shared] == end_text[shared]) ++shared;
        nodes[n].parts.emplace_back(nodes.size(), shared);
        nodes.push_back({at, last, shared, {}, false});
        at = last;
      }
    }
    std::vector<Rule> rule(nodes.size());
    for (std::size_t i = nodes.size(); i-- > 0;) {
      const Node& node = nodes[i];
      std::vector<Seq> alts;
      if (node.end) alts.push_back({});
      for (const auto& [child, depth] : node.parts) {
        Seq part = lit(std::string_view(texts[nodes[child].lo]).substr(node.depth, depth - node.depth));
        const Node& c = nodes[child];
        if (!(c.parts.empty() && c.end)) part.push_back(ref(rule[child]));  // (a leaf: the text ends there)
        alts.push_back(std::move(part));
      }
      rule[i] = alternatives(alts);
    }
    return rule[0];
  }

  std::optional<Rule> value(const json& s, const std::string& path) {
    if (!error_.empty()) return std::nullopt;
    // Nested schemas are compiled recursively: bounded, whatever merges
    // and $refs make of them.
    struct Depth {
      int& d;
      explicit Depth(int& x) : d(++x) {}
      ~Depth() { --d; }
    } depth(value_depth_);
    if (value_depth_ > 256) return fail(path + ": the schema nests too deep to hold an answer to");
    // Checked as it grows: one subschema adds a bounded amount.
    if (g_.elements() > kMaxElements) return fail(std::string(name_) + " is too large to hold an answer to");
    if (s.is_boolean()) return s.get<bool>() ? std::optional<Rule>(any_) : fail(path + " is false: no value follows it");
    if (!s.is_object()) return fail(path + " is not a schema");
    if (s.contains("nullable")) {  // OpenAPI 3.0's (zod's nullable()): null, or a value of the rest
      // (kept: the compiler's memos hold pointers into what it compiles)
      json rest = s;
      rest.erase("nullable");
      if (merged_.size() >= kMaxCopies) return fail(path + ": too many schemas to hold an answer to");
      merged_.push_back(std::move(rest));
      const std::optional<Rule> v = value(merged_.back(), path);
      if (!v || !s["nullable"].get<bool>()) return v;
      return alternatives({sym({ref(*v)}), lit("null")});
    }
    if (s.contains("$ref")) {
      if (std::string k = other_constraint(s, "$ref"); !k.empty())
        return fail(path + ": '" + k + "' beside $ref cannot be held to");
      return referenced(s["$ref"].get<std::string>(), path);
    }
    if (s.contains("allOf")) {
      const json& all = s["allOf"];
      if (all.size() == 1 && other_constraint(s, "allOf").empty()) return value(all[0], path + ".allOf[0]");
      // Several (and the keywords beside them): merged into one schema, a
      // level at a time (members' names and items are merged when they are
      // compiled), once for each set of members: a member that is a $ref
      // counts as its target, so recursive schemas close their loops.
      // The key: the schema compiled (its $refs resolve in its own root: one
      // compiler may compile several, as the tools beside an answer), then
      // the members (nested allOf flattened) by their text, a $ref by its
      // target.
      std::string key = std::to_string(reinterpret_cast<std::uintptr_t>(root_)) + '\n';
      std::vector<const json*> members = {&s};
      for (std::size_t i = 0; i < members.size(); ++i) {
        const json& m = *members[i];
        if (m.is_object() && m.contains("allOf") && m["allOf"].is_array() && (i == 0 || other_constraint(m, "allOf").empty())) {
          for (const json& x : m["allOf"]) members.push_back(&x);
          if (i == 0 && !other_constraint(m, "allOf").empty()) {
            json rest = m;
            rest.erase("allOf");
            key += rest.dump() + '\n';
          }
        } else if (m.is_object() && m.contains("$ref") && other_constraint(m, "$ref").empty()) {
          key += "$" + std::to_string(reinterpret_cast<std::uintptr_t>(resolve_ref(*root_, m["$ref"]))) + '\n';
        } else {
          key += m.dump() + '\n';
        }
        if (key.size() > (1u << 20)) return fail(path + ": the allOf is too large to hold an answer to");
      }
      if (auto it = merges_.find(key); it != merges_.end()) return it->second;
      std::optional<json> m = merge_all(s, path);
      if (!m) return std::nullopt;
      if (merged_.size() >= kMaxCopies) return fail(path + ": too many allOf merges to hold an answer to");
      merged_.push_back(std::move(*m));
      const Rule r = g_.add_rule();
      merges_.emplace(key, r);
      const std::optional<Rule> body = value(merged_.back(), path + ".allOf");
      if (!body) return std::nullopt;
      g_.add_alternative(r, sym({ref(*body)}));
      return r;
    }
    for (const char* k : {"anyOf", "oneOf"}) {
      if (!s.contains(k)) continue;
      // Held as anyOf: exactly when no value follows two of the branches.
      if (std::string_view(k) == "oneOf" && !pairwise_disjoint(s[k])) exact_ = false;
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
    } else if (s.contains("items") || s.contains("minItems") || s.contains("maxItems") || s.contains("prefixItems") ||
               s.contains("uniqueItems")) {
      types = {"array"};
    } else if (s.contains("minLength") || s.contains("maxLength") || s.contains("pattern")) {
      types = {"string"};
    } else if (s.contains("minimum") || s.contains("maximum") || s.contains("exclusiveMinimum") || s.contains("exclusiveMaximum") ||
               s.contains("multipleOf")) {
      types = {"number"};
    } else {
      return any_;
    }
    std::vector<Seq> alts;
    for (const std::string& t : types) {
      std::optional<Rule> r;
      if (t == "string") r = string_of(s, path);
      else if (t == "number") r = number_of(s, false, path);
      else if (t == "integer") r = number_of(s, true, path);
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

  // Whether no value follows two of `branches`, by a sufficient check (a
  // pydantic union, say): each pair has types that exclude each other, or
  // scalar values (const or enum) of which none is the other's, or is made
  // of objects that both require a member whose schemas are disjoint so.
  // null counts wherever nullable allows it. At most 64 branches are
  // compared, within a work budget per compile (past either: no).
  bool pairwise_disjoint(const json& branches) {
    if (branches.size() > 64) return false;
    for (std::size_t i = 0; i < branches.size(); ++i)
      for (std::size_t j = i + 1; j < branches.size(); ++j)
        if (!disjoint(branches[i], branches[j], 2)) return false;
    return true;
  }

  // The schema `s` names by $ref (followed up to 16 times), or `s`; and
  // whether a nullable on the way (or on it) also allows null.
  std::pair<const json*, bool> target_of(const json& s) const {
    const json* at = &s;
    bool null = false;
    for (int i = 0; at->is_object(); ++i) {
      null = null || (at->contains("nullable") && (*at)["nullable"] == true);
      if (i == 16 || !at->contains("$ref")) break;
      const json* next = resolve_ref(*root_, (*at)["$ref"]);
      if (next == nullptr) break;
      at = next;
    }
    return {at, null};
  }

  // The types a value of `s` may have (nullopt: any, as far as read here).
  static std::optional<std::set<std::string>> types_of(const json& s, bool null) {
    std::set<std::string> out;
    if (s.contains("const") || s.contains("enum")) {
      const json values = s.contains("const") ? json::array({s["const"]}) : s["enum"];
      for (const json& v : values) out.insert(v.is_number() ? "number" : v.is_string() ? "string" : v.is_boolean() ? "boolean"
                                                : v.is_null() ? "null" : v.is_object() ? "object" : "array");
    } else if (s.contains("type")) {
      const json& t = s["type"];
      for (const json& x : t.is_array() ? t : json::array({t})) out.insert(x.get<std::string>() == "integer" ? "number" : x.get<std::string>());
    } else {
      return std::nullopt;
    }
    if (null) out.insert("null");
    return out;
  }

  // The const or enum values of `s` as keys that equal JSON values share
  // (1 and 1.0 alike), plus null when `null`; nullopt when there are none,
  // or one is an object or array (not compared).
  static std::optional<std::set<std::string>> scalar_values(const json& s, bool null) {
    if (!s.contains("const") && !s.contains("enum")) return std::nullopt;
    std::set<std::string> out;
    const json values = s.contains("const") ? json::array({s["const"]}) : s["enum"];
    for (const json& v : values) {
      if (v.is_object() || v.is_array()) return std::nullopt;
      if (v.is_number()) {
        const double d = v.get<double>();
        // (As the validator compares numbers: by their doubles. Appended
        // piece by piece: GCC 12 at -O3 warns, wrongly, of overlap in "n" + s.)
        std::string key = "n";
        key.append(std::fabs(d) < 9e15 && std::floor(d) == d ? std::to_string(static_cast<std::int64_t>(d)) : json(d).dump());
        out.insert(std::move(key));
      } else {
        out.insert(v.dump());
      }
    }
    if (null) out.insert("null");
    return out;
  }

  // scalar_values, worked out once per schema.
  const std::set<std::string>* values_of(const json& s, bool null) {
    auto it = values_memo_.find({&s, null});
    if (it == values_memo_.end()) {
      disjoint_budget_ -= static_cast<long>(s.contains("enum") ? s["enum"].size() : 1);
      it = values_memo_.emplace(std::make_pair(&s, null), scalar_values(s, null)).first;
    }
    return it->second ? &*it->second : nullptr;
  }

  bool disjoint(const json& a_in, const json& b_in, int depth) {
    const auto [a_at, a_null] = target_of(a_in);
    const auto [b_at, b_null] = target_of(b_in);
    const json& a = *a_at;
    const json& b = *b_at;
    if (!a.is_object() || !b.is_object()) return a == false || b == false;
    if (a_null && b_null) return false;
    const auto key = std::make_tuple(a_at, b_at, depth);
    if (auto it = disjoint_memo_.find(key); it != disjoint_memo_.end()) return it->second;
    // Each pair looked at costs its values and members: past the budget,
    // no more are proven disjoint (exact() is then false).
    disjoint_budget_ -= 1 + static_cast<long>(a.contains("enum") ? a["enum"].size() : 0);
    if (disjoint_budget_ < 0) return false;
    bool out = false;
    bool open = false;  // a keyword not read here: nothing is proven
    for (const json* s : {&a, &b})
      for (const char* k : {"anyOf", "oneOf", "allOf", "$ref"}) open = open || s->contains(k);
    const auto ta = types_of(a, a_null), tb = types_of(b, b_null);
    if (open) {
    } else if (ta && tb && std::none_of(ta->begin(), ta->end(), [&](const std::string& t) { return tb->count(t) > 0; })) {
      out = true;
    } else if (const auto *va = values_of(a, a_null), *vb = values_of(b, b_null);
               va && vb && std::none_of(va->begin(), va->end(), [&](const std::string& x) { return vb->count(x) > 0; })) {
      out = true;
    } else if (depth > 0 && ta && tb && *ta == std::set<std::string>{"object"} && *tb == std::set<std::string>{"object"} &&
               a.contains("required") && b.contains("required") && a.contains("properties") && b.contains("properties")) {
      // Objects both requiring a member whose schemas are disjoint.
      const std::set<std::string> b_required(b["required"].begin(), b["required"].end());
      disjoint_budget_ -= static_cast<long>(b_required.size());
      int tries = 16;
      for (const json& k : a["required"]) {
        if (tries-- == 0 || out) break;
        const std::string& name = k.get_ref<const std::string&>();
        if (b_required.count(name) > 0 && a["properties"].contains(name) && b["properties"].contains(name))
          out = disjoint(a["properties"][name], b["properties"][name], depth - 1);
      }
    }
    disjoint_memo_.emplace(key, out);
    return out;
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

  // Two schemas as one that admits exactly the values both admit (allOf):
  // types intersected, bounds tightened, enum/const values in common,
  // required names joined, and each member name held to both sides'
  // schemas for it (its `properties` entry, or else `additionalProperties`,
  // or else anything), as are items; false where no value is both. $refs
  // at the top of either side are followed and nested allOf flattened.
  // Refused (named): anyOf, oneOf or
  // nullable on both sides of one merge, two different patterns or
  // multipleOf values, prefixItems beside the other side's items.
  // s's allOf members and the keywords beside them, merged.
  std::optional<json> merge_all(const json& s, const std::string& path) {
    json rest = s;
    rest.erase("allOf");
    std::optional<json> m = other_constraint(s, "allOf").empty() ? json(true) : std::optional<json>(rest);
    for (std::size_t i = 0; m && i < s["allOf"].size(); ++i)
      m = merge(*m, s["allOf"][i], path + ".allOf[" + std::to_string(i) + "]", 0);
    return m;
  }
  // No value follows s: false, or an allOf whose members no value follows
  // together (an optional member is then not written).
  bool admits_nothing(const json& s, const std::string& path) {
    if (s.is_boolean()) return !s.get<bool>();
    if (!s.is_object() || !s.contains("allOf") || !s["allOf"].is_array() || s["allOf"].size() < 2 || s.contains("nullable"))
      return false;
    // Once per schema: one allOf under many properties is merged once.
    if (auto it = admits_nothing_.find(&s); it != admits_nothing_.end()) return it->second;
    // A trial: a merge that cannot be made is refused when the member is
    // compiled, not here.
    const std::string before = error_;
    const std::optional<json> m = merge_all(s, path);
    error_ = before;
    const bool nothing = m && m->is_boolean() && !m->get<bool>();
    admits_nothing_.emplace(&s, nothing);
    return nothing;
  }

  // Both schemas, unmerged (an allOf of the two, merged when compiled).
  static json both_of(const json& a, const json& b) {
    if (a.is_boolean()) return a.get<bool>() ? b : a;
    if (b.is_boolean()) return b.get<bool>() ? a : b;
    if (other_constraint(a, "").empty()) return b;
    if (other_constraint(b, "").empty()) return a;
    // (an allOf alone is spread out: nested ones would make a new schema at
    // each level of a recursive one)
    json all = json::array();
    for (const json* x : {&a, &b}) {
      if (x->contains("allOf") && (*x)["allOf"].is_array() && other_constraint(*x, "allOf").empty())
        for (const json& m : (*x)["allOf"]) all.push_back(m);
      else
        all.push_back(*x);
    }
    return json{{"allOf", std::move(all)}};
  }

  std::optional<json> merge(const json& a, const json& b, const std::string& path, int depth) {
    if (depth > 32) return fail(path + ": allOf nests or refers too deep to be merged");
    if (--merge_budget_ < 0) return fail(path + ": the allOf is too intricate to merge");
    if (a.is_boolean()) return a.get<bool>() ? std::optional<json>(b) : std::optional<json>(json(false));
    if (b.is_boolean()) return b.get<bool>() ? std::optional<json>(a) : std::optional<json>(json(false));
    if (!a.is_object() || !b.is_object()) return fail(path + " is not a schema");
    // A side that is a $ref or an allOf is read as what it stands for.
    for (const json* side : {&a, &b}) {
      const json& other = side == &a ? b : a;
      if (side->contains("$ref")) {
        if (std::string k = other_constraint(*side, "$ref"); !k.empty())
          return fail(path + ": '" + k + "' beside $ref cannot be held to");
        const json* target = resolve_ref(*root_, (*side)["$ref"]);
        if (target == nullptr) return fail(path + ".$ref: unknown target");
        return merge(*target, other, path, depth + 1);
      }
      if (side->contains("allOf") && (*side)["allOf"].is_array()) {
        json rest = *side;
        rest.erase("allOf");
        std::optional<json> m = other;
        m = merge(*m, rest, path, depth + 1);
        for (std::size_t i = 0; m && i < (*side)["allOf"].size(); ++i)
          m = merge(*m, (*side)["allOf"][i], path + ".allOf[" + std::to_string(i) + "]", depth + 1);
        return m;
      }
    }
    for (const char* k : {"anyOf", "oneOf", "nullable"})
      if (a.contains(k) || b.contains(k)) {
        // One side alone constrains: nothing to merge.
        if (other_constraint(a, "").empty()) return b;
        if (other_constraint(b, "").empty()) return a;
        return fail(path + ": an allOf member with " + k + " cannot be merged with another that constrains");
      }
    json out = json::object();
    auto both = [&](const char* k) { return a.contains(k) && b.contains(k); };
    auto copy = [&](const char* k) {
      if (a.contains(k)) out[k] = a[k];
      else if (b.contains(k)) out[k] = b[k];
    };
    // type: the names both allow (an integer is a number).
    if (both("type")) {
      auto names = [](const json& t) {
        std::set<std::string> n;
        if (t.is_string()) n.insert(t.get<std::string>());
        else
          for (const json& x : t) n.insert(x.get<std::string>());
        return n;
      };
      const std::set<std::string> ta = names(a["type"]), tb = names(b["type"]);
      json types = json::array();
      for (const std::string& t : ta)
        if (tb.count(t) || (t == "integer" && tb.count("number"))) types.push_back(t);
      if (ta.count("number") && tb.count("integer") && !ta.count("integer")) types.push_back("integer");
      if (types.empty()) return json(false);  // no value is of both
      out["type"] = types.size() == 1 ? types[0] : types;
    } else {
      copy("type");
    }
    // enum / const: the values in both.
    if ((a.contains("enum") || a.contains("const")) && (b.contains("enum") || b.contains("const"))) {
      const json xs = listed_values(a), ys = listed_values(b);
      // Each pair compared, against one budget for the whole compile (the
      // same $defs merged under many properties).
      if ((compare_budget_ -= static_cast<long>(xs.size() * ys.size())) < 0)
        return fail(path + ": the allOf's enum values are too many to intersect");
      json common = json::array();
      for (const json& x : xs)
        if (std::any_of(ys.begin(), ys.end(), [&](const json& y) { return same_json(x, y); })) common.push_back(x);
      if (common.empty()) return json(false);
      out["enum"] = common;
    } else {
      copy("enum");
      copy("const");
    }
    // Bounds: the tighter.
    static constexpr std::pair<const char*, bool> kBounds[] = {
        {"minimum", true}, {"exclusiveMinimum", true}, {"minLength", true}, {"minItems", true},
        {"maximum", false}, {"exclusiveMaximum", false}, {"maxLength", false}, {"maxItems", false}};
    for (const auto& [k, lower] : kBounds) {
      if (both(k) && a[k].is_number() && b[k].is_number())
        out[k] = (a[k].get<double>() >= b[k].get<double>()) == lower ? a[k] : b[k];
      else
        copy(k);
    }
    for (const char* k : {"pattern", "multipleOf"}) {
      if (both(k) && a[k] != b[k] && !(a[k].is_number() && a[k].get<double>() == b[k].get<double>()))
        return fail(path + ": two allOf members with different " + std::string(k) + " values cannot be held together");
      copy(k);
    }
    // format: an annotation to the validator; two different ones are not
    // spelled (either could be meant).
    if (!both("format") || a["format"] == b["format"]) copy("format");
    if (a.value("uniqueItems", false) || b.value("uniqueItems", false)) out["uniqueItems"] = true;
    // Items.
    if ((a.contains("prefixItems") && (b.contains("prefixItems") || b.contains("items"))) ||
        (b.contains("prefixItems") && a.contains("items")))
      return fail(path + ": prefixItems beside the other allOf member's items cannot be merged");
    copy("prefixItems");
    if (both("items")) {
      out["items"] = both_of(a["items"], b["items"]);
    } else {
      copy("items");
    }
    // Objects: each name to both sides' schemas for it.
    if (a.contains("required") || b.contains("required")) {
      json names = json::array();
      std::set<json> seen;
      for (const json* side : {&a, &b})
        if (side->contains("required"))
          for (const json& n : (*side)["required"])
            if (seen.insert(n).second) names.push_back(n);
      out["required"] = names;
    }
    const bool objects = a.contains("properties") || b.contains("properties") || a.contains("additionalProperties") ||
                         b.contains("additionalProperties");
    if (objects) {
      auto schema_for = [](const json& s, const std::string& name) -> json {
        if (s.contains("properties") && s["properties"].contains(name)) return s["properties"][name];
        return s.contains("additionalProperties") ? s["additionalProperties"] : json(true);
      };
      json props = json::object();
      for (const json* side : {&a, &b})
        if (side->contains("properties"))
          for (auto it = (*side)["properties"].begin(); it != (*side)["properties"].end(); ++it)
            if (!props.contains(it.key())) props[it.key()] = both_of(schema_for(a, it.key()), schema_for(b, it.key()));
      if (!props.empty()) out["properties"] = std::move(props);
      if (a.contains("additionalProperties") || b.contains("additionalProperties"))
        out["additionalProperties"] = both_of(a.value("additionalProperties", json(true)), b.value("additionalProperties", json(true)));
    }
    // A required name whose schema is false: no object (and without a
    // type, no value, as the compiler reads object keywords).
    if (out.contains("required"))
      for (const json& n : out["required"]) {
        const std::string& name = n.get_ref<const std::string&>();
        const json& at = out.contains("properties") && out["properties"].contains(name) ? out["properties"][name]
                         : out.contains("additionalProperties")                         ? out["additionalProperties"]
                                                                                        : json(true);
        const bool objects_only = !out.contains("type") || out["type"] == "object";  // (as the compiler reads it)
        if (objects_only && at.is_boolean() && !at.get<bool>()) return json(false);
      }
    // Enum values (numbers, strings, ...) that the rest refuses: none left
    // is no value (an optional member then goes unwritten).
    if (out.contains("enum")) {
      json rest = out;
      rest.erase("enum");
      json kept = json::array();
      for (const json& v : out["enum"]) {
        if (v.is_structured() || follows_subschema(*root_, rest, v, &enum_work_)) kept.push_back(v);
        if (enum_work_.spent()) return fail(path + ": " + kEnumWorkSpent);
      }
      if (kept.empty()) return json(false);
      out["enum"] = std::move(kept);
    }
    return out;
  }

  // The values `s` admits when they are at most 8 scalars (an enum or
  // const, booleans, null; through $refs), as JSON texts, no two equal as
  // JSON; else nullopt.
  std::optional<std::vector<std::string>> few_values(const json& s, int depth = 0) {
    if (!s.is_object() || depth > 8) return std::nullopt;
    if (s.contains("$ref") && other_constraint(s, "$ref").empty()) {
      const json* target = resolve_ref(*root_, s["$ref"]);
      return target ? few_values(*target, depth + 1) : std::nullopt;
    }
    std::vector<json> candidates;
    json rest = s;
    if (s.contains("enum") || s.contains("const")) {
      const json listed = listed_values(s);
      candidates.assign(listed.begin(), listed.end());
      rest.erase("enum");
      rest.erase("const");
    } else if (s.contains("type") && (s["type"] == "boolean" || s["type"] == "null") && other_constraint(s, "type").empty()) {
      candidates = s["type"] == "boolean" ? std::vector<json>{json(false), json(true)} : std::vector<json>{json(nullptr)};
    } else {
      return std::nullopt;
    }
    std::vector<json> kept;
    for (const json& v : candidates) {
      if (v.is_structured()) return std::nullopt;
      const bool follows = follows_subschema(*root_, rest, v, &enum_work_);
      if (enum_work_.spent()) return std::nullopt;  // (the compile of s says so)
      if (!follows) continue;
      if (std::any_of(kept.begin(), kept.end(), [&](const json& k) { return same_json(k, v); })) continue;
      kept.push_back(v);
      if (kept.size() > 8) return std::nullopt;
    }
    if (kept.empty()) return std::nullopt;
    std::vector<std::string> texts;
    for (const json& v : kept) texts.push_back(v.dump());
    return texts;
  }

  // An array of distinct items of `values` (at most 8), lo to hi of them:
  // a rule for each set of values written so far.
  std::optional<Rule> distinct_items(const std::vector<std::string>& values, std::uint64_t lo, std::optional<std::uint64_t> hi,
                                     const std::string& path) {
    const unsigned k = static_cast<unsigned>(values.size());
    const std::uint64_t most = std::min<std::uint64_t>(hi.value_or(k), k);
    if (lo > most) return fail(path + ": minItems asks for more distinct items than items allow");
    std::vector<Rule> after(1u << k);  // after[S]: the set S written; the rest of the array
    for (unsigned set = (1u << k); set-- > 0;) {
      const auto n = static_cast<std::uint64_t>(__builtin_popcount(set));
      std::vector<Seq> alts;
      if (n >= lo) alts.push_back(lit("]"));
      for (unsigned i = 0; n < most && i < k; ++i)
        if (!(set & (1u << i)))
          alts.push_back(sym({Grammar::byte(','), ref(ws_)}) + lit(values[i]) + sym({ref(ws_), ref(after[set | (1u << i)])}));
      after[set] = alternatives(alts.empty() ? std::vector<Seq>{lit("]")} : alts);
    }
    std::vector<Seq> alts;
    if (lo == 0) alts.push_back(sym({Grammar::byte('['), ref(ws_), Grammar::byte(']')}));
    for (unsigned i = 0; most > 0 && i < k; ++i)
      alts.push_back(sym({Grammar::byte('['), ref(ws_)}) + lit(values[i]) + sym({ref(ws_), ref(after[1u << i])}));
    return alternatives(alts);
  }

  // enum / const: the values that also follow the rest of the schema.
  std::optional<Rule> choices(const json& s, const std::string& path) {
    json rest = s;
    rest.erase("enum");
    rest.erase("const");
    const json candidates = listed_values(s);
    std::vector<std::string> texts;
    std::size_t bytes = 0;
    for (const json& v : candidates) {
      if (follows_subschema(*root_, rest, v, &enum_work_)) {
        texts.push_back(v.dump());
        if ((bytes += texts.back().size()) > kMaxElements) return fail(std::string(name_) + " is too large to hold an answer to");
      }
      if (enum_work_.spent()) return fail(path + ": " + kEnumWorkSpent);
    }
    if (texts.empty()) return fail(path + ": no value of its enum or const follows the rest of it");
    return literals(texts);
  }

  // Numbers between bounds, held exactly: a bound is read as the double
  // the validator compares with, written in its shortest decimal form (a
  // decimal at or past that form rounds to a double at or past the
  // bound); an exclusive bound is the next double in. Bounded numbers are
  // written without an exponent. An unbounded number, or one whose only
  // bound is a minimum of 0, keeps the exponent.
  std::optional<Rule> number_of(const json& s, bool integer, const std::string& path) {
    // -inf and +inf: no bound.
    double lo = number_at(s, "minimum").value_or(-HUGE_VAL), hi = number_at(s, "maximum").value_or(HUGE_VAL);
    if (auto x = number_at(s, "exclusiveMinimum")) lo = std::max(lo, std::nextafter(*x, HUGE_VAL));
    if (auto x = number_at(s, "exclusiveMaximum")) hi = std::min(hi, std::nextafter(*x, -HUGE_VAL));
    lo += 0.0, hi += 0.0;  // -0.0 is 0
    const bool has_lo = lo > -HUGE_VAL, has_hi = hi < HUGE_VAL;
    if (lo > hi || lo == HUGE_VAL || hi == -HUGE_VAL)
      return fail(path + ": no " + std::string(integer ? "integer" : "number") + " lies between its bounds");
    int places = integer ? 0 : kMaxDigits;  // fraction digits
    bool no_exponent = false;               // (a multiple of a power of ten: its fraction digits)
    if (const std::optional<Decimal> m = number_at(s, "multipleOf") ? decimal_of(*number_at(s, "multipleOf")) : std::nullopt) {
      // multipleOf (Q times 10^E): alone, or with the bounds of the
      // positive or non-negative numbers, by the remainder of the digits
      // (multiples); with bounds between which few multiples lie, each
      // written out; with 10^E for E <= 0 and any bounds, as fraction digits
      // (at most -E). Otherwise the bounds are held and multipleOf is not.
      std::string q = m->whole == "0" ? m->fraction : m->whole + m->fraction;
      q.erase(0, q.find_first_not_of('0'));
      int e = -static_cast<int>(m->fraction.size());
      for (; q.size() > 1 && q.back() == '0'; ++e) q.pop_back();
      const double md = *number_at(s, "multipleOf");
      // Every integer is a multiple of 1 / n (0.5, 0.25, 0.2, ...).
      bool all = false;
      if (integer && e < 0 && e >= -18 && q.size() <= 18) {
        std::uint64_t p10 = 1;
        for (int k = 0; k < -e; ++k) p10 *= 10;
        all = p10 % std::stoull(q) == 0;
      }
      std::optional<Rule> r;
      if (all) r = std::nullopt;
      else if (!has_lo && !has_hi) r = multiples(q, e, integer, Sign::kAny);
      else if (lo == 0 && !has_hi && !s.contains("exclusiveMinimum")) r = multiples(q, e, integer, Sign::kNonNegative);
      else if (lo > 0 && lo <= md && !has_hi) r = multiples(q, e, integer, Sign::kPositive);
      else if (has_lo && has_hi) r = multiples_between(q, e, integer, lo, hi, path);
      if (r) return r;
      if (!error_.empty()) return std::nullopt;
      if (all) {
      } else if (q == "1" && e <= 0) {
        // At most -E fraction digits (at most 20: each such decimal is a
        // multiple of 10^-20 and so of a smaller power), no exponent.
        places = std::min(places, -e);
        no_exponent = true;
      } else {
        exact_ = false;
      }
    }
    if (!has_lo && !has_hi && !no_exponent) return integer ? integer_ : number_;
    if (lo == 0 && !has_hi && !s.contains("exclusiveMinimum") && !no_exponent) return integer ? nonneg_integer_ : nonneg_number_;
    std::vector<Seq> alts;
    // 0 or more: a magnitude from max(lo, 0) to hi.
    if (hi >= 0) {
      const std::optional<Decimal> from = lo > 0 ? decimal_of(lo) : std::nullopt;
      const std::optional<Decimal> to = has_hi ? decimal_of(hi) : std::nullopt;
      if (std::optional<Rule> r = magnitude(from, to, places)) alts.push_back(sym({ref(*r)}));
    }
    // Below 0: a minus, then a magnitude from max(-hi, 0) to -lo.
    if (lo < 0) {
      const std::optional<Decimal> from = hi < 0 ? decimal_of(-hi) : std::nullopt;
      const std::optional<Decimal> to = has_lo ? decimal_of(-lo) : std::nullopt;
      if (std::optional<Rule> r = magnitude(from, to, places)) alts.push_back(sym({Grammar::byte('-'), ref(*r)}));
    }
    if (alts.empty())
      return fail(path + ": no " + (integer ? "integer" : "number") + " an answer can write lies between its bounds");
    return alternatives(alts);
  }

  // The multiples of Q * 10^E (Q: digits, no leading or trailing zero),
  // by the remainder modulo Q of the digits read so far: the whole part's
  // digits (at most kMaxDigits, the last max(E, 0) of them zeros), then
  // the fraction's (at most -E, none for an integer), followed in the
  // remainder by the fraction digits not written as zeros. nullopt when the
  // rules would be too many (Q over 1,000 for about 20 digits).
  enum class Sign { kAny, kNonNegative, kPositive };
  std::optional<Rule> multiples(const std::string& q_digits, int e, bool integer, Sign sign) {
    // The same keyword in several subschemas: one set of rules.
    const std::string key = "m" + q_digits + "e" + std::to_string(e) + (integer ? "i" : "n") + std::to_string(static_cast<int>(sign));
    if (auto it = digit_rules_.find(key); it != digit_rules_.end()) return it->second;
    const std::optional<Rule> out = multiples_uncached(q_digits, e, integer, sign);
    digit_rules_.emplace(key, out);
    return out;
  }
  std::optional<Rule> multiples_uncached(const std::string& q_digits, int e, bool integer, Sign sign) {
    if (q_digits.size() > 4) return std::nullopt;
    const unsigned q = static_cast<unsigned>(std::stoul(q_digits));
    const int zeros = std::max(e, 0), pad = std::max(-e, 0), written = integer ? 0 : pad;
    if (q == 0 || zeros >= kMaxDigits || pad > kMaxDigits || q * (kMaxDigits + written) > 20'000) return std::nullopt;
    std::vector<unsigned> p10(static_cast<std::size_t>(pad) + 1, 1 % q);  // 10^k mod q
    for (std::size_t k = 1; k < p10.size(); ++k) p10[k] = p10[k - 1] * 10 % q;
    auto digit = [](unsigned d) { return Grammar::byte(static_cast<unsigned char>('0' + d)); };
    // After j fraction digits with remainder r: the end may come when the
    // number is a multiple (the digits not written are zeros).
    auto ends = [&](unsigned r, int j) { return r * p10[static_cast<std::size_t>(pad - j)] % q == 0; };
    std::map<std::pair<int, unsigned>, std::optional<Rule>> memo;  // (j, r) fraction; (-1 - n, r) whole part
    // j fraction digits read, remainder r: more digits, or the end.
    auto fraction = [&](auto& self, int j, unsigned r) -> std::optional<Rule> {
      if (auto it = memo.find({j, r}); it != memo.end()) return it->second;
      std::vector<Seq> alts;
      if (ends(r, j)) alts.push_back({});
      for (unsigned d = 0; j < written && d <= 9; ++d)
        if (std::optional<Rule> more = self(self, j + 1, (10 * r + d) % q)) alts.push_back(sym({digit(d), ref(*more)}));
      std::optional<Rule> out;
      if (!alts.empty()) out = alternatives(alts);
      memo.emplace(std::pair{j, r}, out);
      return out;
    };
    // After the whole part (remainder r): its zeros, or the end, or a fraction.
    auto after_whole = [&](unsigned r) -> std::optional<Seq> {
      if (zeros > 0) return r == 0 ? std::optional<Seq>(lit(std::string(static_cast<std::size_t>(zeros), '0'))) : std::nullopt;
      std::vector<Seq> alts;
      if (ends(r, 0)) alts.push_back({});
      std::vector<Seq> first;
      for (unsigned d = 0; written > 0 && d <= 9; ++d)
        if (std::optional<Rule> more = fraction(fraction, 1, (10 * r + d) % q)) first.push_back(sym({digit(d), ref(*more)}));
      if (!first.empty()) alts.push_back(sym({Grammar::byte('.'), ref(alternatives(first))}));
      if (alts.empty()) return std::nullopt;
      return sym({ref(alternatives(alts))});
    };
    // Whole-part digits read with remainder r, n more allowed.
    auto whole = [&](auto& self, int n, unsigned r) -> std::optional<Rule> {
      if (auto it = memo.find({-1 - n, r}); it != memo.end()) return it->second;
      std::vector<Seq> alts;
      if (std::optional<Seq> rest = after_whole(r)) alts.push_back(*rest);
      for (unsigned d = 0; n > 0 && d <= 9; ++d)
        if (std::optional<Rule> more = self(self, n - 1, (10 * r + d) % q)) alts.push_back(sym({digit(d), ref(*more)}));
      std::optional<Rule> out;
      if (!alts.empty()) out = alternatives(alts);
      memo.emplace(std::pair{-1 - n, r}, out);
      return out;
    };
    // Over 0: a first digit 1-9, or "0." and a fraction not all zeros.
    std::vector<Seq> positive;
    for (unsigned d = 1; d <= 9; ++d)
      if (std::optional<Rule> rest = whole(whole, kMaxDigits - zeros - 1, d % q)) positive.push_back(sym({digit(d), ref(*rest)}));
    std::vector<Seq> over_zero = positive;
    if (zeros == 0 && written > 0 && sign != Sign::kNonNegative) {
      // j zero digits read after "0.": a nonzero digit must come.
      std::optional<Rule> zero_run;
      for (int j = written - 1; j >= 0; --j) {
        std::vector<Seq> run;
        if (zero_run) run.push_back(sym({Grammar::byte('0'), ref(*zero_run)}));
        for (unsigned d = 1; d <= 9; ++d)
          if (std::optional<Rule> more = fraction(fraction, j + 1, d % q)) run.push_back(sym({digit(d), ref(*more)}));
        zero_run.reset();
        if (!run.empty()) zero_run = alternatives(run);
      }
      if (zero_run) over_zero.push_back(lit("0.") + sym({ref(*zero_run)}));
    }
    if (sign == Sign::kPositive) {
      if (over_zero.empty()) return std::nullopt;
      return alternatives(over_zero);
    }
    // 0, and (when no zeros close the whole part) 0.f for any fraction.
    std::vector<Seq> alts = positive;
    alts.push_back(lit("0") + (zeros > 0 ? Seq{} : after_whole(0).value_or(Seq{})));
    // Below 0: a minus and a number over 0.
    if (sign == Sign::kAny && !over_zero.empty()) alts.push_back(sym({Grammar::byte('-'), ref(alternatives(over_zero))}));
    return alternatives(alts);
  }

  // The multiples of Q * 10^E from lo to hi (by the validator's doubles),
  // each written out (as a trie), when there are at most 1,000 of them.
  std::optional<Rule> multiples_between(const std::string& q_digits, int e, bool integer, double lo, double hi,
                                        const std::string& path) {
    const double m = std::stod(q_digits) * std::pow(10.0, e);
    const double k_lo = std::floor(lo / m) - 2, k_hi = std::ceil(hi / m) + 2;
    if (!(k_hi - k_lo <= 1004) || std::fabs(k_lo) > 1e15 || std::fabs(k_hi) > 1e15 || q_digits.size() > 15) return std::nullopt;
    const auto q = static_cast<unsigned long long>(std::stoull(q_digits));
    std::vector<std::string> texts;
    for (auto k = static_cast<long long>(k_lo); k <= static_cast<long long>(k_hi); ++k) {
      const unsigned long long a = static_cast<unsigned long long>(k < 0 ? -k : k);
      if (a != 0 && q > ~0ULL / a) return std::nullopt;
      std::string digits = std::to_string(a * q), text;
      if (e >= 0) {
        if (digits != "0") digits.append(static_cast<std::size_t>(e), '0');
        text = digits;
      } else {
        const std::size_t places = static_cast<std::size_t>(-e);
        if (digits.size() <= places) digits.insert(0, places + 1 - digits.size(), '0');
        std::string whole_part = digits.substr(0, digits.size() - places), fraction_part = digits.substr(digits.size() - places);
        fraction_part.erase(fraction_part.find_last_not_of('0') + 1);
        if (integer && !fraction_part.empty()) continue;
        if (fraction_part.size() > static_cast<std::size_t>(kMaxDigits)) return std::nullopt;
        text = whole_part;
        if (!fraction_part.empty()) {
          text += '.';
          text += fraction_part;
        }
      }
      if (text.size() > static_cast<std::size_t>(2 * kMaxDigits)) return std::nullopt;
      if (k < 0) text.insert(0, 1, '-');
      const double x = std::strtod(text.c_str(), nullptr);
      if (x >= lo && x <= hi) texts.push_back(std::move(text));
    }
    if (texts.empty()) return fail(path + ": no multiple of multipleOf lies between its bounds");
    return literals(texts);
  }

  // A number of 0 or more in decimal: its whole part (no leading zero, "0"
  // for none) and its fraction's digits (no trailing zero).
  struct Decimal {
    std::string whole, fraction;
  };
  static std::optional<Decimal> decimal_of(double d) {
    d += 0.0;  // no "-0"
    if (!std::isfinite(d) || d < 0) return std::nullopt;
    char buf[64];
    const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, d);  // the shortest that reads back as d
    if (ec != std::errc()) return std::nullopt;
    const std::string_view text(buf, static_cast<std::size_t>(end - buf));
    const std::size_t e = text.find_first_of("eE");
    const std::string_view mantissa = text.substr(0, e);
    const int exponent = e == std::string_view::npos ? 0 : std::stoi(std::string(text.substr(e + 1)));
    std::string digits;
    int point = -1;  // digits before the point
    for (char c : mantissa) {
      if (c == '.') point = static_cast<int>(digits.size());
      else digits += c;
    }
    if (point < 0) point = static_cast<int>(digits.size());
    point += exponent;  // |exponent| <= 324: the strings below stay short
    Decimal out;
    if (point <= 0) {
      out.whole = "0";
      out.fraction = std::string(static_cast<std::size_t>(-point), '0') + digits;
    } else if (static_cast<std::size_t>(point) >= digits.size()) {
      out.whole = digits + std::string(static_cast<std::size_t>(point) - digits.size(), '0');
    } else {
      out.whole = digits.substr(0, static_cast<std::size_t>(point));
      out.fraction = digits.substr(static_cast<std::size_t>(point));
    }
    out.whole.erase(0, std::min(out.whole.find_first_not_of('0'), out.whole.size() - 1));
    out.fraction.erase(out.fraction.find_last_not_of('0') + 1);
    return out;
  }

  // Whole numbers in decimal, a string each (no leading zero): n + 1, n - 1
  // (nullopt below 0).
  static std::string successor(std::string n) {
    std::size_t i = n.size();
    while (i > 0 && n[i - 1] == '9') n[--i] = '0';
    if (i == 0) return "1" + n;
    ++n[i - 1];
    return n;
  }
  static std::optional<std::string> predecessor(std::string n) {
    if (n == "0") return std::nullopt;
    std::size_t i = n.size();
    while (n[i - 1] == '0') n[--i] = '9';
    --n[i - 1];
    if (n.size() > 1 && n[0] == '0') n.erase(0, 1);
    return n;
  }

  // Digit strings of exactly n digits from `lo` to `hi` (each n digits long,
  // or empty for no bound), the first digit at least `first`; nullopt when
  // there are none.
  std::optional<Rule> digits_between(const std::string& lo, const std::string& hi, std::size_t n, int first) {
    const std::string key = "d" + lo + "/" + hi + "/" + std::to_string(n) + "/" + std::to_string(first);
    if (auto it = digit_rules_.find(key); it != digit_rules_.end()) return it->second;
    std::optional<Rule> out;
    if (n == 0) {
      out = alternatives({{}});
    } else {
      const int a = std::max(first, lo.empty() ? 0 : lo[0] - '0'), b = hi.empty() ? 9 : hi[0] - '0';
      std::vector<Seq> alts;
      for (int d = a; d <= b; ++d) {
        const std::string rest_lo = !lo.empty() && d == lo[0] - '0' ? lo.substr(1) : "";
        const std::string rest_hi = !hi.empty() && d == hi[0] - '0' ? hi.substr(1) : "";
        if (std::optional<Rule> rest = digits_between(rest_lo, rest_hi, n - 1, 0))
          alts.push_back(sym({Grammar::byte(static_cast<unsigned char>('0' + d)), ref(*rest)}));
      }
      if (!alts.empty()) out = alternatives(alts);
    }
    digit_rules_.emplace(key, out);
    return out;
  }

  // Whole numbers (no leading zero, at most kMaxDigits digits) from `lo`
  // to `hi` (nullopt: no bound).
  std::optional<Rule> whole_between(const std::optional<std::string>& lo, const std::optional<std::string>& hi) {
    std::vector<Seq> alts;
    for (std::size_t n = 1; n <= static_cast<std::size_t>(kMaxDigits); ++n) {
      if ((lo && n < lo->size()) || (hi && n > hi->size())) continue;
      if (std::optional<Rule> r = digits_between(lo && n == lo->size() ? *lo : "", hi && n == hi->size() ? *hi : "", n, n > 1 ? 1 : 0))
        alts.push_back(sym({ref(*r)}));
    }
    if (alts.empty()) return std::nullopt;
    return alternatives(alts);
  }

  // Fractions' digits f (at most `places`, possibly none) with 0.lo <= 0.f
  // <= 0.hi (lo: "" for 0; hi: nullopt for no bound); `with_point` puts the
  // point before them (and the empty f, when it is one, is no fraction at all).
  std::optional<Rule> fraction_between(const std::string& lo, const std::optional<std::string>& hi, int places, bool with_point) {
    const std::string key = std::string(with_point ? "p" : "f") + lo + "/" + (hi ? "<" + *hi : "-") + "/" + std::to_string(places);
    if (auto it = digit_rules_.find(key); it != digit_rules_.end()) return it->second;
    std::vector<Seq> alts, digits;
    if (lo.empty()) alts.push_back({});  // f empty: 0.f = 0, within
    for (int d = 0; places > 0 && d <= 9; ++d) {
      const int a = lo.empty() ? 0 : lo[0] - '0', b = !hi ? 9 : hi->empty() ? 0 : (*hi)[0] - '0';
      if (d < a || d > b) continue;
      const std::string rest_lo = !lo.empty() && d == a ? lo.substr(1) : "";
      const std::optional<std::string> rest_hi = hi && d == b ? std::optional<std::string>(hi->empty() ? "" : hi->substr(1)) : std::nullopt;
      if (std::optional<Rule> rest = fraction_between(rest_lo, rest_hi, places - 1, false))
        digits.push_back(sym({Grammar::byte(static_cast<unsigned char>('0' + d)), ref(*rest)}));
    }
    if (!digits.empty()) {
      if (with_point) alts.push_back(sym({Grammar::byte('.'), ref(alternatives(digits))}));
      else alts.insert(alts.end(), digits.begin(), digits.end());
    }
    std::optional<Rule> out;
    if (!alts.empty()) out = alternatives(alts);
    digit_rules_.emplace(key, out);
    return out;
  }

  // Numbers of 0 or more from `lo` to `hi` (nullopt: no bound), with at
  // most `places` fraction digits.
  std::optional<Rule> magnitude(const std::optional<Decimal>& lo, const std::optional<Decimal>& hi, int places) {
    std::vector<Seq> alts;
    auto whole_then = [&](const std::string& whole, const std::string& f_lo, const std::optional<std::string>& f_hi) {
      if (whole.size() > static_cast<std::size_t>(kMaxDigits)) return;
      if (std::optional<Rule> f = fraction_between(f_lo, f_hi, places, true)) alts.push_back(lit(whole) + sym({ref(*f)}));
    };
    if (lo && hi && lo->whole == hi->whole) {
      whole_then(lo->whole, lo->fraction, hi->fraction);
    } else {
      if (lo) whole_then(lo->whole, lo->fraction, std::nullopt);
      // Whole parts strictly between, any fraction.
      const std::optional<std::string> from = lo ? std::optional<std::string>(successor(lo->whole)) : std::string("0");
      const std::optional<std::string> to = hi ? predecessor(hi->whole) : std::nullopt;
      if (!hi || to) {
        const bool empty = to && (from->size() > to->size() || (from->size() == to->size() && *from > *to));
        std::optional<Rule> w = empty ? std::nullopt : whole_between(from, to);
        std::optional<Rule> f = fraction_between("", std::nullopt, places, true);
        if (w && f) alts.push_back(sym({ref(*w), ref(*f)}));
      }
      if (hi) whole_then(hi->whole, "", hi->fraction);
    }
    if (alts.empty()) return std::nullopt;
    return alternatives(alts);
  }

  std::optional<Rule> string_of(const json& s, const std::string& path) {
    const std::optional<std::uint64_t> lo = count_at(s, "minLength"), hi = count_at(s, "maxLength");
    if (s.contains("pattern")) {
      // The pattern is held, and beside it the lengths where they can be
      // exactly (else held in part).
      std::string why;
      bool fitted = true;
      std::optional<std::pair<std::uint64_t, std::uint64_t>> lengths;
      if (lo || hi) lengths.emplace(lo.value_or(0), hi.value_or(UINT64_MAX));
      if (lo && hi && *lo > *hi) return fail(path + ": minLength is over maxLength");
      const std::optional<Rule> r = pattern_rule(&g_, s["pattern"].get<std::string>(), path + ".pattern", &why, lengths, &fitted);
      if (!r) return fail(why);
      if (!fitted) exact_ = false;
      return r;
    }
    if (!lo && !hi) {
      if (s.contains("format") && s["format"].is_string())
        if (std::optional<Rule> f = formatted(s["format"].get<std::string>())) return f;
      return string_;
    }
    if (lo && hi && *lo > *hi) return fail(path + ": minLength is over maxLength");
    constexpr std::uint64_t kMost = Grammar::kUnbounded - 1;
    return alternatives({sym({Grammar::string(static_cast<std::uint32_t>(std::min(lo.value_or(0), kMost)),
                                              hi ? static_cast<std::uint32_t>(std::min(*hi, kMost)) : Grammar::kUnbounded)})});
  }

  // A string in one of the formats JSON Schema names whose text a pattern
  // can spell (nullopt for others: any string), compiled as that pattern
  // (json_pattern.h). Beside a length bound a format is not held (the bound
  // is). Written as RFC 3339 and RFC 4122 have them: date YYYY-MM-DD
  // (a day the month has); time HH:MM:SS[.fraction] then Z or an
  // offset; date-time, a date, "T", a time; duration P... (years, months,
  // weeks, days, hours, minutes, seconds, each of up to 9 digits, in that
  // order); uuid (lowercase hex, 8-4-4-4-12); ipv4 (0-255 each, no leading
  // zero); ipv6 (RFC 3986's forms, lowercase hex); hostname (labels of letters, digits and inner hyphens, up to 63
  // bytes, joined by dots); email (a dot-atom local part of common
  // characters, @, a hostname of two labels or more).
  std::optional<Rule> formatted(const std::string& format) {
    if (auto it = formats_.find(format); it != formats_.end()) return it->second;
    static const std::string kHour = "([01][0-9]|2[0-3])";
    // Days as each month has them; February 29th in leap years only
    // (Gregorian: every 4th year, not every 100th, every 400th).
    static const std::string kDate =
        "([0-9]{4}-((0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])|(0[469]|11)-(0[1-9]|[12][0-9]|30)|02-(0[1-9]|1[0-9]|2[0-8]))|"
        "([0-9]{2}(0[48]|[2468][048]|[13579][26])|([02468][048]|[13579][26])00)-02-29)";
    static const std::string kTime =
        kHour + ":[0-5][0-9]:([0-5][0-9]|60)(\\.[0-9]{1,9})?([Zz]|[+-]" + kHour + ":[0-5][0-9])";
    static const std::string kLabel = "[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?";
    static const std::string kOctet = "([0-9]|[1-9][0-9]|1[0-9]{2}|2[0-4][0-9]|25[0-5])";
    static const std::string kAtom = "[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,64}";
    static const std::string kDurationTime =
        "T([0-9]{1,9}H([0-9]{1,9}M([0-9]{1,9}S)?)?|[0-9]{1,9}M([0-9]{1,9}S)?|[0-9]{1,9}S)";
    static const std::string kDurationDate =
        "([0-9]{1,9}D|[0-9]{1,9}M([0-9]{1,9}D)?|[0-9]{1,9}Y([0-9]{1,9}M([0-9]{1,9}D)?)?)";
    // IPv6 as RFC 3986 spells it (lowercase hex, as RFC 5952 writes it):
    // eight groups, or fewer around one "::", the last two groups perhaps
    // an IPv4 address.
    static const std::string kIpv6 = [] {
      const std::string h = "[0-9a-f]{1,4}";
      // What comes before the last 32 bits: six groups, or fewer around
      // "::" (at most k groups before it and 4 - k after, k from 0 to 4).
      std::string before = "(" + h + ":){6}|::(" + h + ":){5}";
      for (int k = 0; k <= 4; ++k)
        before += "|(" + (k > 0 ? "(" + h + ":){0," + std::to_string(k) + "}" : std::string()) + h + ")?::" +
                  (k < 4 ? "(" + h + ":){" + std::to_string(4 - k) + "}" : std::string());
      const std::string ls32 = "(" + h + ":" + h + "|" + kOctet + "(\\." + kOctet + "){3})";
      return "((" + before + ")" + ls32 + "|((" + h + ":){0,5}" + h + ")?::" + h + "|((" + h + ":){0,6}" + h + ")?::)";
    }();
    static const std::map<std::string, std::string> kFormats = {
        {"date", kDate},
        {"time", kTime},
        {"date-time", kDate + "[Tt]" + kTime},
        {"duration", "P(" + kDurationDate + "(" + kDurationTime + ")?|" + kDurationTime + "|[0-9]{1,9}W)"},
        {"uuid", "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"},
        {"ipv4", kOctet + "(\\." + kOctet + "){3}"},
        {"ipv6", kIpv6},
        {"hostname", kLabel + "(\\." + kLabel + ")*"},
        {"email", kAtom + "(\\." + kAtom + ")*@" + kLabel + "(\\." + kLabel + ")+"},
    };
    std::optional<Rule> out;
    if (auto f = kFormats.find(format); f != kFormats.end()) {
      std::string why;
      out = pattern_rule(&g_, "^" + f->second + "$", "format", &why);  // (these compile)
    }
    formats_.emplace(format, out);
    return out;
  }

  // items (and prefixItems, one schema for each first item), minItems,
  // maxItems; uniqueItems is not held (held in part) unless at most one
  // item may be written.
  std::optional<Rule> array_schema(const json& s, const std::string& path) {
    const std::optional<std::uint64_t> lo = count_at(s, "minItems"), hi = count_at(s, "maxItems");
    if (lo && hi && *lo > *hi) return fail(path + ": minItems is over maxItems");
    if (s.contains("uniqueItems") && s["uniqueItems"] == true && hi.value_or(2) > 1) {
      // Items of a few values (an enum, booleans: pydantic's set of a
      // Literal or an Enum): each subset, in every order, held exactly.
      if (!s.contains("prefixItems") && s.contains("items"))
        if (std::optional<std::vector<std::string>> values = few_values(s["items"]))
          return distinct_items(*values, lo.value_or(0), hi, path);
      exact_ = false;
    }
    Rule item = any_;
    bool more = true;  // items after the prefix (false: items is false)
    if (s.contains("items")) {
      const json& items = s["items"];
      if (items.is_boolean() && !items.get<bool>()) {
        more = false;
      } else {
        ++containers_;
        const std::optional<Rule> v = value(items, path + ".items");
        --containers_;
        if (!v) return std::nullopt;
        item = *v;
      }
    }
    std::vector<Rule> prefix;
    if (s.contains("prefixItems")) {
      ++containers_;
      for (std::size_t i = 0; i < s["prefixItems"].size(); ++i) {
        const std::optional<Rule> v = value(s["prefixItems"][i], path + ".prefixItems[" + std::to_string(i) + "]");
        if (!v) {
          --containers_;
          return std::nullopt;
        }
        prefix.push_back(*v);
      }
      --containers_;
    }
    const std::uint64_t min = lo.value_or(0);
    if (prefix.empty()) {
      if (!more) {
        if (min > 0) return fail(path + ": items is false and minItems over 0");
        return array_of(any_, 0, 0, path);
      }
      return array_of(item, min, hi, path);
    }
    // after[k]: what may follow once k items are written, the comma before
    // the next included; then "]".
    const std::uint64_t most_prefix = std::min<std::uint64_t>(prefix.size(), hi.value_or(prefix.size()));
    std::optional<Rule> rest;  // after the prefix: more items of `item`, each after a comma
    if (more && most_prefix == prefix.size() && (!hi || *hi > prefix.size()))
      rest = repeat(sym({Grammar::byte(','), ref(ws_), ref(item), ref(ws_)}), min > prefix.size() ? min - prefix.size() : 0,
                    hi ? std::optional<std::uint64_t>(*hi - prefix.size()) : std::nullopt, path);
    if (!error_.empty()) return std::nullopt;
    if (min > most_prefix && !rest) return fail(path + ": minItems asks for more items than prefixItems and items allow");
    Rule after = rest ? alternatives({sym({ref(*rest), Grammar::byte(']')})}) : alternatives({lit("]")});
    for (std::uint64_t k = most_prefix; k-- > 1;) {  // k items written: the next is prefix[k]
      std::vector<Seq> alts = {sym({Grammar::byte(','), ref(ws_), ref(prefix[k]), ref(ws_), ref(after)})};
      if (k >= min) alts.push_back(lit("]"));
      after = alternatives(alts);
    }
    const Seq open = sym({Grammar::byte('['), ref(ws_)});
    std::vector<Seq> alts;
    if (most_prefix > 0) alts.push_back(open + sym({ref(prefix[0]), ref(ws_), ref(after)}));
    if (min == 0) alts.push_back(open + lit("]"));
    return alternatives(alts);
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
      if (admits_nothing(*m.schema, at)) {
        if (m.required) {
          --containers_;
          return fail(at + ": required, and no value follows its schema");
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
  std::unordered_map<std::string, std::optional<Rule>> digit_rules_;  // bounded numbers' parts, by their bounds
  std::unordered_map<std::string, std::optional<Rule>> formats_;
  std::map<std::tuple<const json*, const json*, int>, bool> disjoint_memo_;
  std::map<std::pair<const json*, bool>, std::optional<std::set<std::string>>> values_memo_;
  long disjoint_budget_ = 1'000'000;
  // Checking enum values against the rest of their schema, in all (one
  // budget, not one per value: a value can cost a check its whole budget).
  SchemaWork enum_work_{4'000'000, 4'000'000};
  static constexpr const char* kEnumWorkSpent = "its enum values take too much work to check against the rest of it";
  long compare_budget_ = 4'000'000;  // pairs of enum values compared by allOf merges, in all
  std::unordered_map<const json*, bool> admits_nothing_;  // by schema (they stay where they are while compiling)
  std::vector<std::pair<const json*, int>> open_refs_;  // $refs being compiled, and the containers open then
  std::deque<json> merged_;  // allOf members merged (the compiler keeps pointers into schemas)
  std::map<std::string, Rule> merges_;  // by their members (a $ref's target for a $ref)
  static constexpr std::size_t kMaxCopies = 10'000;  // schemas made while compiling (merged_)
  long merge_budget_ = 100'000;                      // merge() calls
  int value_depth_ = 0;
  int containers_ = 0;
  bool exact_ = true;
};

}  // namespace

std::shared_ptr<const engine::Grammar> compile_schema(const nlohmann::ordered_json& schema, std::string_view root,
                                                      std::string* error, bool* exact) {
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
  if (exact != nullptr) *exact = c.exact();
  return c.finish(sym({c.ref(*v)}));
}

std::shared_ptr<const engine::Grammar> tool_call_grammar(ToolFormat format, const std::vector<ToolSpec>& tools,
                                                         const std::string& only, bool parallel, std::string* error,
                                                         const nlohmann::ordered_json* answer) {
  if (format != ToolFormat::kHermes && format != ToolFormat::kLlamaJson && format != ToolFormat::kMistral) {
    *error = std::string("this model's tool-call form (") + tool_format_name(format) +
             ") cannot be forced: only hermes, llama3_json and mistral calls can";
    return nullptr;
  }
  Compiler c;
  const Rule ws = c.ws();
  // One alternative per tool: "NAME", "arguments": ARGS (Llama's
  // template teaches "parameters").
  const char* args_key = format == ToolFormat::kLlamaJson ? "\"parameters\"" : "\"arguments\"";
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
        *error = param + ": held only in part (a oneOf whose branches may overlap, as anyOf; lengths beside a "
                         "pattern whose length varies in more than one place; or a multipleOf beside bounds), and a "
                         "call of a strict function held to its schema must follow it exactly";
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
  } else if (format == ToolFormat::kLlamaJson) {
    separator = lit(";");
  } else {
    separator = lit(",");
  }
  Seq calls = parallel ? sym({c.ref(c.one_or_more(call, separator))}) : call;
  // Mistral: one JSON array of the calls (after its [TOOL_CALLS] control
  // token, which the constraint lets the answer begin with).
  if (format == ToolFormat::kMistral) calls = lit("[") + sym({c.ref(ws)}) + calls + sym({c.ref(ws)}) + lit("]");
  if (answer == nullptr) return c.finish(calls);
  // Or the answer itself, compiled after the calls (whose strict check
  // reads the compiler's exactness).
  std::optional<Rule> value;
  const std::string path = "response_format.json_schema.schema";
  if (answer->is_null()) {
    value = c.any_object();
  } else if (std::optional<std::string> why = unsupported_schema(*answer, path)) {
    *error = *why;
    return nullptr;
  } else if (!(value = c.schema(*answer, path))) {
    *error = c.error();
    return nullptr;
  }
  return c.finish(sym({c.ref(c.alternatives({calls, sym({c.ref(*value)})}))}));
}

}  // namespace airlock::daemon
