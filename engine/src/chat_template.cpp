// A Jinja2 subset interpreter for chat templates (see chat_template.h).
//
// Four parts: Python-compatible string and value helpers; the lexer (which
// applies jinja2's whitespace rules: `-`/`+` markers, trim_blocks and
// lstrip_blocks); a recursive-descent parser with jinja2's operator
// precedence; and a tree-walking renderer. Everything a template can do is
// metered: parse nesting, expression height, runtime recursion, steps,
// bytes allocated, list sizes and output size.
//
// This file is long (~3,000 lines) because the interpreter is one concept
// with a lot of Python surface (filters, tests, methods, float and string
// repr); splitting it would spread the private Value type across files.
//
// jinja2/Python behaviour NOT reproduced (none is used by the chat templates
// of the major model families):
//  - {% include/extends/import/raw/call/filter/with/block %}, recursive loops,
//    loop.changed, macro varargs/kwargs/caller;
//  - `%` string formatting, str.format, and string methods other than
//    strip/lstrip/rstrip/split/rsplit/startswith/endswith/upper/lower/title/
//    capitalize/replace/find/count/join; list methods;
//  - integers beyond 64 bits (an error here, a bigint in Python);
//  - Markup: `safe` and macro results are plain strings, so `Markup + str`
//    does not HTML-escape the str as it would in jinja2;
//  - repr() of exotic characters uses ICU's notion of printable, and tuples
//    compare equal to lists;
//  - filters outside the list in apply_filter() and tests outside run_test().
#include "airlock/engine/chat_template.h"
#include "airlock/common/utf8.h"

#include <unicode/locid.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <optional>
#include <unordered_map>
#include <utility>
#include <vector>

namespace airlock::engine {
namespace {

constexpr int kMaxValueDepth = 128;  // nesting of lists/dicts in one value

// ---------------------------------------------------------------- UTF-8 and Python's str

// Decodes the code point at s[*i] and advances *i; an invalid sequence gives
// U+FFFD and advances one byte.
char32_t next_cp(std::string_view s, std::size_t* i) {
  const auto c = static_cast<unsigned char>(s[*i]);
  if (c < 0x80) {
    ++*i;
    return c;
  }
  const std::size_t n = (c >> 5) == 6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
  if (n == 0 || *i + n > s.size()) {
    ++*i;
    return 0xFFFD;
  }
  char32_t cp = c & (0xFFu >> (n + 1));
  for (std::size_t k = 1; k < n; ++k) {
    const auto cc = static_cast<unsigned char>(s[*i + k]);
    if ((cc & 0xC0) != 0x80) {
      ++*i;
      return 0xFFFD;
    }
    cp = (cp << 6) | (cc & 0x3Fu);
  }
  static constexpr char32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < kMin[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
    ++*i;
    return 0xFFFD;
  }
  *i += n;
  return cp;
}

// The running render's budget, charged by the free helpers below whose work
// grows with their input (string decoding, repr, equality, tojson) and which
// would otherwise cost one step however large the value: a list holding one
// 100,000-item list 100,000 times is 20 MB, but 10^10 items to print or
// compare. A helper that runs out stops early with a partial result; the
// renderer sees `exceeded` at its next step and fails the render, so a
// partial result is never used. None outside a render.
struct WorkBudget {
  std::size_t* steps = nullptr;
  std::size_t max_steps = 0;
  std::size_t max_bytes = 0;  // longest string a helper may build
  bool exceeded = false;
};
thread_local WorkBudget* t_work = nullptr;

// Charges n units; false once the budget is spent.
bool work(std::size_t n) {
  if (t_work == nullptr) return true;
  *t_work->steps += n;
  if (*t_work->steps > t_work->max_steps) t_work->exceeded = true;
  return !t_work->exceeded;
}
// False (and the budget spent) once a string being built passes max_bytes.
bool length_ok(std::size_t n_bytes) {
  if (t_work == nullptr || n_bytes <= t_work->max_bytes) return true;
  t_work->exceeded = true;
  return false;
}

// Where `sub` first occurs in `s` at or after `from`, or npos: memmem (a
// two-way search, linear), where std::string::find can take the product of
// the two lengths ('a'*n in 'a'*m + 'b'). Charged by the bytes it passed.
std::size_t find_bytes(std::string_view s, std::string_view sub, std::size_t from = 0) {
  if (from > s.size()) return std::string_view::npos;
  if (sub.empty()) return from;
  const void* at = ::memmem(s.data() + from, s.size() - from, sub.data(), sub.size());
  const std::size_t found =
      at == nullptr ? std::string_view::npos : static_cast<std::size_t>(static_cast<const char*>(at) - s.data());
  work(((found == std::string_view::npos ? s.size() : found) - from + sub.size()) / 64);
  return found;
}

std::u32string to_u32(std::string_view s) {
  work(s.size() / 64);
  std::u32string r;
  r.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) r.push_back(next_cp(s, &i));
  return r;
}

std::string to_u8(std::u32string_view s) {
  std::string r;
  r.reserve(s.size());
  for (char32_t c : s) append_utf8(r, c);
  return r;
}

std::size_t cp_count(std::string_view s) {
  work(s.size() / 64);
  std::size_t n = 0;
  for (std::size_t i = 0; i < s.size(); ++n) next_cp(s, &i);
  return n;
}

// str.isspace() (and what the re module's \s matches in str patterns).
bool py_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

// Line boundaries of str.splitlines().
bool py_linebreak(char32_t c) {
  return c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || (c >= 0x1C && c <= 0x1E) || c == 0x85 ||
         c == 0x2028 || c == 0x2029;
}

// Byte length of s without its trailing whitespace (str.rstrip()).
std::size_t rstrip_len(std::string_view s) {
  std::size_t end = s.size();
  while (end > 0) {
    std::size_t start = end - 1;
    while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80 && end - start < 4) --start;
    std::size_t j = start;
    const char32_t c = next_cp(s, &j);
    if (j != end || !py_space(c)) break;
    end = start;
  }
  return end;
}

// Index just past the whitespace that starts at s[from].
std::size_t skip_space(std::string_view s, std::size_t from) {
  while (from < s.size()) {
    std::size_t j = from;
    if (!py_space(next_cp(s, &j))) break;
    from = j;
  }
  return from;
}

std::u32string py_strip(std::u32string_view s, const std::u32string* chars, bool left, bool right) {
  auto strip_it = [&](char32_t c) { return chars ? chars->find(c) != std::u32string::npos : py_space(c); };
  std::size_t b = 0, e = s.size();
  if (left) while (b < e && strip_it(s[b])) ++b;
  if (right) while (e > b && strip_it(s[e - 1])) --e;
  return std::u32string(s.substr(b, e - b));
}

std::vector<std::u32string> py_splitlines(std::u32string_view s) {
  std::vector<std::u32string> lines;
  std::size_t start = 0;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (!py_linebreak(s[i])) continue;
    lines.emplace_back(s.substr(start, i - start));
    if (s[i] == '\r' && i + 1 < s.size() && s[i + 1] == '\n') ++i;
    start = i + 1;
  }
  if (start < s.size()) lines.emplace_back(s.substr(start));
  return lines;
}

enum class Case { kUpper, kLower, kTitle, kCapitalize };

std::string change_case(const std::string& s, Case how) {
  if (how == Case::kUpper || how == Case::kLower) {
    icu::UnicodeString u = icu::UnicodeString::fromUTF8(s);
    if (how == Case::kUpper) u.toUpper(icu::Locale::getRoot());
    else u.toLower(icu::Locale::getRoot());
    std::string out;
    u.toUTF8String(out);
    return out;
  }
  std::u32string u = to_u32(s);
  bool prev_cased = false;
  for (std::size_t i = 0; i < u.size(); ++i) {
    const auto c = static_cast<UChar32>(u[i]);
    if (how == Case::kCapitalize) {
      u[i] = static_cast<char32_t>(i == 0 ? u_totitle(c) : u_tolower(c));
    } else {
      u[i] = static_cast<char32_t>(prev_cased ? u_tolower(c) : u_totitle(c));
      prev_cased = u_isupper(c) || u_islower(c) || u_istitle(c);
    }
  }
  return to_u8(u);
}

// jinja2's title filter, which is not str.title(): a word starts only after
// white space, '-', '(', '{', '[' or '<' (so "o'neil" and "x1y" are one
// word each), and its first character is upper-cased, not title-cased
// (item[0].upper() + item[1:].lower() over re.split(r"([-\s({\[<]+)", s)).
std::string jinja_title(const std::string& s) {
  const std::u32string u = to_u32(s);
  auto starts_word = [](char32_t c) { return py_space(c) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<'; };
  std::string out;
  for (std::size_t i = 0; i < u.size();) {
    std::size_t j = i + 1;
    if (starts_word(u[i])) {
      while (j < u.size() && starts_word(u[j])) ++j;
      out += to_u8(u.substr(i, j - i));  // no case to change
    } else {
      while (j < u.size() && !starts_word(u[j])) ++j;
      out += change_case(to_u8(u.substr(i, 1)), Case::kUpper);
      out += change_case(to_u8(u.substr(i + 1, j - i - 1)), Case::kLower);
    }
    i = j;
  }
  return out;
}

// repr() of a float: the shortest round-trip digits, scientific notation
// outside 1e-4 <= |x| < 1e16.
std::string py_float(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  std::string sci(buf, r.ptr);
  std::string sign;
  if (sci[0] == '-') {
    sign = "-";
    sci.erase(0, 1);
  }
  const std::size_t e = sci.find('e');
  std::string digits = sci.substr(0, e);
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  const int exp = std::atoi(sci.c_str() + e + 1);
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  if (exp < -4 || exp >= 16) {
    std::string out = sign + digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char ebuf[16];
    std::snprintf(ebuf, sizeof ebuf, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
    return out + ebuf;
  }
  if (exp >= 0) {
    const auto n_int = static_cast<std::size_t>(exp) + 1;
    if (digits.size() <= n_int) return sign + digits + std::string(n_int - digits.size(), '0') + ".0";
    return sign + digits.substr(0, n_int) + "." + digits.substr(n_int);
  }
  return sign + "0." + std::string(static_cast<std::size_t>(-exp - 1), '0') + digits;
}

bool py_printable(char32_t c) {
  if (c == ' ') return true;
  switch (u_charType(static_cast<UChar32>(c))) {
    case U_CONTROL_CHAR: case U_FORMAT_CHAR: case U_SURROGATE: case U_PRIVATE_USE_CHAR: case U_UNASSIGNED:
    case U_LINE_SEPARATOR: case U_PARAGRAPH_SEPARATOR: case U_SPACE_SEPARATOR: return false;
    default: return true;
  }
}

std::string py_repr_str(std::string_view s) {
  const bool has_single = s.find('\'') != std::string_view::npos;
  const char quote = has_single && s.find('"') == std::string_view::npos ? '"' : '\'';
  std::string out(1, quote);
  for (std::size_t i = 0; i < s.size();) {
    const char32_t c = next_cp(s, &i);
    char buf[16];
    if (c == static_cast<char32_t>(quote) || c == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(c));
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c < 0x20 || c == 0x7F) {
      std::snprintf(buf, sizeof buf, "\\x%02x", static_cast<unsigned>(c));
      out += buf;
    } else if (c < 0x7F || py_printable(c)) {
      append_utf8(out, c);
    } else {
      std::snprintf(buf, sizeof buf, c <= 0xFF ? "\\x%02x" : c <= 0xFFFF ? "\\u%04x" : "\\U%08x",
                    static_cast<unsigned>(c));
      out += buf;
    }
  }
  out.push_back(quote);
  return out;
}

// ---------------------------------------------------------------- values

struct Value;
struct Dict;
struct Namespace;
struct Callable;
using List = std::vector<Value>;

enum class Type : std::uint8_t {
  kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kDict, kNamespace, kCallable,
};

struct Value {
  Type type = Type::kUndefined;
  bool tuple = false;  // a kList that Python would hold as a tuple (repr only)
  bool b = false;
  int depth = 0;       // nesting of lists/dicts inside
  std::int64_t i = 0;
  double f = 0;
  std::shared_ptr<const std::string> str;  // kString; kUndefined: what was missing (for messages)
  std::shared_ptr<const List> list;
  std::shared_ptr<const Dict> dict;
  std::shared_ptr<Namespace> ns;
  std::shared_ptr<const Callable> fn;

  const std::string& s() const { return *str; }
  bool is(Type t) const { return type == t; }
  bool numeric() const { return type == Type::kBool || type == Type::kInt || type == Type::kFloat; }
  double as_double() const { return type == Type::kFloat ? f : static_cast<double>(as_int()); }
  std::int64_t as_int() const { return type == Type::kBool ? (b ? 1 : 0) : i; }
};

struct Dict {
  std::vector<std::pair<std::string, Value>> entries;
  std::unordered_map<std::string, std::size_t> index;  // key -> entry; kept in step with entries

  const Value* find(const std::string& key) const {
    auto it = index.find(key);
    return it == index.end() ? nullptr : &entries[it->second].second;
  }
  void set(const std::string& key, Value v) {
    auto [it, inserted] = index.emplace(key, entries.size());
    if (inserted) entries.emplace_back(key, std::move(v));
    else entries[it->second].second = std::move(v);
  }
};

struct Namespace {
  Dict attrs;
};

struct Node;

// A function value: a global (range, namespace, ...), a method bound to its
// receiver, or a macro.
struct Callable {
  std::string name;
  Value self;                  // methods: the receiver
  const Node* macro = nullptr; // macros: the definition, owned by the program
};

Value undefined(std::string what = {}) {
  Value v;
  if (!what.empty()) v.str = std::make_shared<const std::string>(std::move(what));
  return v;
}
Value none() {
  Value v;
  v.type = Type::kNone;
  return v;
}
Value boolean(bool b) {
  Value v;
  v.type = Type::kBool;
  v.b = b;
  return v;
}
Value integer(std::int64_t i) {
  Value v;
  v.type = Type::kInt;
  v.i = i;
  return v;
}
Value floating(double f) {
  Value v;
  v.type = Type::kFloat;
  v.f = f;
  return v;
}
// Unchecked constructors: the renderer's make_* check limits.
Value string_value(std::string s) {
  Value v;
  v.type = Type::kString;
  v.str = std::make_shared<const std::string>(std::move(s));
  return v;
}
Value list_value(List items, bool tuple = false) {
  Value v;
  v.type = Type::kList;
  v.tuple = tuple;
  for (const Value& x : items) v.depth = std::max(v.depth, x.depth + 1);
  if (items.empty()) v.depth = 1;
  v.list = std::make_shared<const List>(std::move(items));
  return v;
}
Value dict_value(Dict d) {
  Value v;
  v.type = Type::kDict;
  v.depth = 1;
  for (const auto& kv : d.entries) v.depth = std::max(v.depth, kv.second.depth + 1);
  v.dict = std::make_shared<const Dict>(std::move(d));
  return v;
}
Value callable(std::string name, Value self = {}, const Node* macro = nullptr) {
  Value v;
  v.type = Type::kCallable;
  v.fn = std::make_shared<const Callable>(Callable{std::move(name), std::move(self), macro});
  return v;
}

const char* type_name(const Value& v) {
  switch (v.type) {
    case Type::kUndefined: return "Undefined";
    case Type::kNone: return "NoneType";
    case Type::kBool: return "bool";
    case Type::kInt: return "int";
    case Type::kFloat: return "float";
    case Type::kString: return "str";
    case Type::kList: return v.tuple ? "tuple" : "list";
    case Type::kDict: return "dict";
    case Type::kNamespace: return "Namespace";
    case Type::kCallable: return "function";
  }
  return "?";
}

bool truthy(const Value& v) {
  switch (v.type) {
    case Type::kUndefined: case Type::kNone: return false;
    case Type::kBool: return v.b;
    case Type::kInt: return v.i != 0;
    case Type::kFloat: return v.f != 0;
    case Type::kString: return !v.s().empty();
    case Type::kList: return !v.list->empty();
    case Type::kDict: return !v.dict->entries.empty();
    case Type::kNamespace: case Type::kCallable: return true;
  }
  return false;
}

// Value nesting is bounded (kMaxValueDepth) and namespaces are leaves, so the
// recursive helpers below always terminate within a bounded stack.
std::string repr(const Value& v);

std::string to_str(const Value& v) {
  switch (v.type) {
    case Type::kUndefined: return "";
    case Type::kString: return v.s();
    default: return repr(v);
  }
}

std::string repr(const Value& v) {
  switch (v.type) {
    case Type::kUndefined: return "Undefined";
    case Type::kNone: return "None";
    case Type::kBool: return v.b ? "True" : "False";
    case Type::kInt: return std::to_string(v.i);
    case Type::kFloat: return py_float(v.f);
    case Type::kString: return py_repr_str(v.s());
    case Type::kList: {
      std::string out = v.tuple ? "(" : "[";
      for (std::size_t k = 0; k < v.list->size(); ++k) {
        if (!work(1) || !length_ok(out.size())) return out;
        out += (k ? ", " : "") + repr((*v.list)[k]);
      }
      if (v.tuple && v.list->size() == 1) out += ",";
      return out + (v.tuple ? ")" : "]");
    }
    case Type::kDict: {
      std::string out = "{";
      bool first = true;
      for (const auto& [k, x] : v.dict->entries) {
        if (!work(1) || !length_ok(out.size())) return out;
        out += (first ? "" : ", ") + py_repr_str(k) + ": " + repr(x);
        first = false;
      }
      return out + "}";
    }
    case Type::kNamespace: return "<Namespace>";
    case Type::kCallable: return "<function " + v.fn->name + ">";
  }
  return "";
}

bool equal(const Value& a, const Value& b) {
  if (!work(1)) return false;
  if (a.numeric() && b.numeric()) {
    if (a.is(Type::kFloat) || b.is(Type::kFloat)) return a.as_double() == b.as_double();
    return a.as_int() == b.as_int();
  }
  if (a.type != b.type) return false;
  switch (a.type) {
    case Type::kUndefined: case Type::kNone: return true;
    case Type::kString:
      if (a.s().size() != b.s().size()) return false;
      if (!work(a.s().size() / 64)) return false;  // a megabyte string compared 100,000 times
      return a.s() == b.s();
    case Type::kList:
      if (a.list->size() != b.list->size()) return false;
      for (std::size_t k = 0; k < a.list->size(); ++k)
        if (!equal((*a.list)[k], (*b.list)[k])) return false;
      return true;
    case Type::kDict:
      if (a.dict->entries.size() != b.dict->entries.size()) return false;
      for (const auto& [k, x] : a.dict->entries) {
        const Value* y = b.dict->find(k);
        if (!y || !equal(x, *y)) return false;
      }
      return true;
    case Type::kNamespace: return a.ns == b.ns;
    case Type::kCallable: return a.fn == b.fn;
    default: return false;
  }
}

// json.dumps() as transformers' tojson filter calls it.
struct JsonStyle {
  std::optional<std::string> indent;
  std::string item_sep = ", ", key_sep = ": ";
  bool sort_keys = false, ensure_ascii = false;
};

void json_string(std::string_view s, bool ensure_ascii, std::string* out) {
  out->push_back('"');
  for (std::size_t i = 0; i < s.size();) {
    const char32_t c = next_cp(s, &i);
    char buf[16];
    switch (c) {
      case '"': *out += "\\\""; break;
      case '\\': *out += "\\\\"; break;
      case '\n': *out += "\\n"; break;
      case '\r': *out += "\\r"; break;
      case '\t': *out += "\\t"; break;
      case '\b': *out += "\\b"; break;
      case '\f': *out += "\\f"; break;
      default:
        if (c < 0x20 || (ensure_ascii && c > 0x7F && c < 0x10000)) {
          std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
          *out += buf;
        } else if (ensure_ascii && c >= 0x10000) {
          const char32_t v = c - 0x10000;
          std::snprintf(buf, sizeof buf, "\\u%04x\\u%04x", static_cast<unsigned>(0xD800 + (v >> 10)),
                        static_cast<unsigned>(0xDC00 + (v & 0x3FF)));
          *out += buf;
        } else {
          append_utf8(*out, c);
        }
    }
  }
  out->push_back('"');
}

// Returns the name of the first type json.dumps cannot serialize, or "".
std::string to_json(const Value& v, const JsonStyle& st, int level, std::string* out) {
  if (!work(1) || !length_ok(out->size())) return "";
  auto newline = [&](int lvl) {
    if (!st.indent) return;
    out->push_back('\n');
    for (int k = 0; k < lvl; ++k) *out += *st.indent;
  };
  switch (v.type) {
    case Type::kNone: *out += "null"; return "";
    case Type::kBool: *out += v.b ? "true" : "false"; return "";
    case Type::kInt: *out += std::to_string(v.i); return "";
    case Type::kFloat:
      if (std::isnan(v.f)) *out += "NaN";
      else if (std::isinf(v.f)) *out += v.f > 0 ? "Infinity" : "-Infinity";
      else *out += py_float(v.f);
      return "";
    case Type::kString: json_string(v.s(), st.ensure_ascii, out); return "";
    case Type::kList: {
      if (v.list->empty()) {
        *out += "[]";
        return "";
      }
      out->push_back('[');
      for (std::size_t k = 0; k < v.list->size(); ++k) {
        if (k) *out += st.item_sep;
        newline(level + 1);
        std::string bad = to_json((*v.list)[k], st, level + 1, out);
        if (!bad.empty()) return bad;
      }
      newline(level);
      out->push_back(']');
      return "";
    }
    case Type::kDict: {
      if (v.dict->entries.empty()) {
        *out += "{}";
        return "";
      }
      std::vector<const std::pair<std::string, Value>*> items;
      for (const auto& kv : v.dict->entries) items.push_back(&kv);
      if (st.sort_keys)
        std::stable_sort(items.begin(), items.end(), [](auto* x, auto* y) { return x->first < y->first; });
      out->push_back('{');
      for (std::size_t k = 0; k < items.size(); ++k) {
        if (k) *out += st.item_sep;
        newline(level + 1);
        json_string(items[k]->first, st.ensure_ascii, out);
        *out += st.key_sep;
        std::string bad = to_json(items[k]->second, st, level + 1, out);
        if (!bad.empty()) return bad;
      }
      newline(level);
      out->push_back('}');
      return "";
    }
    default: return type_name(v);
  }
}

// ---------------------------------------------------------------- lexer

enum class Tk : std::uint8_t { kText, kVarBegin, kVarEnd, kBlockBegin, kBlockEnd, kName, kString, kInt, kFloat, kOp, kEof };

struct Token {
  Tk kind = Tk::kEof;
  std::string text;  // text, name, operator, decoded string
  std::int64_t i = 0;
  double f = 0;
  int line = 1, col = 1;
};

Status syntax_error(int line, int col, std::string_view what) {
  return invalid_argument("chat template: line " + std::to_string(line) + " col " + std::to_string(col) + ": " +
                          std::string(what));
}

class Lexer {
 public:
  explicit Lexer(std::string src) : src_(std::move(src)) {}

  Status run(std::vector<Token>* out) {
    out_ = out;
    bool line_starting = true;
    std::size_t pos = 0;
    const std::size_t n = src_.size();
    while (pos < n) {
      const std::size_t tag = find_tag(pos);
      std::string text = src_.substr(pos, (tag == std::string::npos ? n : tag) - pos);
      if (tag == std::string::npos) {
        emit_text(std::move(text), pos);
        break;
      }
      const char kind = src_[tag + 1];
      std::size_t p = tag + 2;
      char sign = 0;
      if (p < n && (src_[p] == '-' || src_[p] == '+')) sign = src_[p++];
      if (sign == '-') {
        text.resize(rstrip_len(text));
      } else if (sign != '+' && kind != '{') {
        // lstrip_blocks: drop spaces between the start of the line and a
        // block or comment tag.
        const std::size_t nl = text.rfind('\n');
        const std::size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
        if ((l_pos > 0 || line_starting) && l_pos < text.size() && skip_space(text, l_pos) == text.size())
          text.resize(l_pos);
      }
      emit_text(std::move(text), pos);
      if (kind == '#') {
        const std::size_t end = src_.find("#}", p);
        if (end == std::string::npos) return error_at(tag, "missing end of comment tag");
        const char before = end > p ? src_[end - 1] : 0;
        pos = end_tag(end + 2, before, &line_starting);
        continue;
      }
      AIRLOCK_RETURN_IF_ERROR(lex_tag(kind, tag, p, &pos, &line_starting));
    }
    push(Tk::kEof, "", n);
    return Status::ok();
  }

 private:
  std::size_t find_tag(std::size_t from) const {
    for (std::size_t at = src_.find('{', from); at != std::string::npos; at = src_.find('{', at + 1)) {
      if (at + 1 < src_.size() && (src_[at + 1] == '{' || src_[at + 1] == '%' || src_[at + 1] == '#')) return at;
    }
    return std::string::npos;
  }

  // After a tag's closing delimiter at `after`: `-` strips all following
  // whitespace, `+` nothing, otherwise trim_blocks removes one newline.
  std::size_t end_tag(std::size_t after, char marker, bool* line_starting) const {
    if (marker == '-') {
      const std::size_t e = skip_space(src_, after);
      *line_starting = e > after && src_[e - 1] == '\n';
      return e;
    }
    if (marker != '+' && after < src_.size() && src_[after] == '\n') {
      *line_starting = true;
      return after + 1;
    }
    *line_starting = false;
    return after;
  }

  void emit_text(std::string text, std::size_t at) {
    if (!text.empty()) push(Tk::kText, std::move(text), at);
  }

  Token& push(Tk kind, std::string text, std::size_t at) {
    Token t;
    t.kind = kind;
    t.text = std::move(text);
    locate(at, &t.line, &t.col);
    out_->push_back(std::move(t));
    return out_->back();
  }

  void locate(std::size_t at, int* line, int* col) {
    // Positions only move forward; count newlines incrementally.
    if (at < loc_pos_) {
      loc_pos_ = 0;
      loc_line_ = 1;
      loc_line_start_ = 0;
    }
    for (; loc_pos_ < at && loc_pos_ < src_.size(); ++loc_pos_) {
      if (src_[loc_pos_] == '\n') {
        ++loc_line_;
        loc_line_start_ = loc_pos_ + 1;
      }
    }
    *line = loc_line_;
    *col = static_cast<int>(std::min<std::size_t>(at - loc_line_start_ + 1, 1u << 30));
  }

  Status error_at(std::size_t at, std::string_view what) {
    int line, col;
    locate(at, &line, &col);
    return syntax_error(line, col, what);
  }

  Status lex_tag(char kind, std::size_t tag, std::size_t p, std::size_t* pos, bool* line_starting) {
    push(kind == '{' ? Tk::kVarBegin : Tk::kBlockBegin, "", tag);
    const std::size_t n = src_.size();
    std::vector<char> brackets;
    while (true) {
      p = skip_space(src_, p);
      if (p >= n) return error_at(tag, kind == '{' ? "unexpected end of template, expected '}}'"
                                                    : "unexpected end of template, expected '%}'");
      if (brackets.empty()) {
        std::string_view rest(src_.data() + p, n - p);
        if (kind == '%') {
          for (std::string_view end : {"-%}", "+%}", "%}"}) {
            if (rest.substr(0, end.size()) == end) {
              push(Tk::kBlockEnd, "", p);
              *pos = end_tag(p + end.size(), end.size() == 3 ? end[0] : 0, line_starting);
              return Status::ok();
            }
          }
        } else {
          for (std::string_view end : {"-}}", "}}"}) {
            if (rest.substr(0, end.size()) == end) {
              push(Tk::kVarEnd, "", p);
              *pos = end.size() == 3 ? end_tag(p + 3, '-', line_starting) : p + 2;
              if (end.size() == 2) *line_starting = false;
              return Status::ok();
            }
          }
        }
      }
      AIRLOCK_RETURN_IF_ERROR(lex_token(&p, &brackets));
    }
  }

  static bool is_digit(char c) { return c >= '0' && c <= '9'; }
  static bool is_name_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }

  // Digits with single underscores between them ("1_000").
  std::size_t scan_digits(std::size_t p) const {
    if (p >= src_.size() || !is_digit(src_[p])) return p;
    ++p;
    while (p < src_.size()) {
      if (is_digit(src_[p])) ++p;
      else if (src_[p] == '_' && p + 1 < src_.size() && is_digit(src_[p + 1])) p += 2;
      else break;
    }
    return p;
  }

  Status lex_token(std::size_t* pp, std::vector<char>* brackets) {
    std::size_t p = *pp;
    const char c = src_[p];
    if (is_digit(c)) {
      std::size_t e = scan_digits(p);
      bool is_float = false;
      const bool after_dot = p > 0 && src_[p - 1] == '.';
      if (!after_dot) {
        std::size_t q = e;
        if (q < src_.size() && src_[q] == '.' && scan_digits(q + 1) > q + 1) {
          q = scan_digits(q + 1);
          is_float = true;
        }
        if (q < src_.size() && (src_[q] == 'e' || src_[q] == 'E')) {
          std::size_t r = q + 1;
          if (r < src_.size() && (src_[r] == '+' || src_[r] == '-')) ++r;
          if (scan_digits(r) > r) {
            q = scan_digits(r);
            is_float = true;
          }
        }
        if (is_float) e = q;
      }
      std::string digits;
      for (std::size_t k = p; k < e; ++k)
        if (src_[k] != '_') digits.push_back(src_[k]);
      Token& t = push(is_float ? Tk::kFloat : Tk::kInt, digits, p);
      if (is_float) {
        t.f = std::strtod(digits.c_str(), nullptr);
      } else {
        auto r = std::from_chars(digits.data(), digits.data() + digits.size(), t.i);
        if (r.ec != std::errc()) return error_at(p, "integer literal out of range");
      }
      *pp = e;
      return Status::ok();
    }
    if (is_name_start(c)) {
      std::size_t e = p;
      while (e < src_.size() && (is_name_start(src_[e]) || is_digit(src_[e]))) ++e;
      push(Tk::kName, src_.substr(p, e - p), p);
      *pp = e;
      return Status::ok();
    }
    if (c == '\'' || c == '"') return lex_string(pp);
    static constexpr std::string_view kOps[] = {"//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~",
                                                "[", "]", "(", ")", "{", "}", "<", ">", "=", ".", ":", "|", ",", ";"};
    for (std::string_view op : kOps) {
      if (src_.compare(p, op.size(), op) != 0) continue;
      if (op.size() == 1 && (c == '(' || c == '[' || c == '{')) {
        brackets->push_back(c);
      } else if (op.size() == 1 && (c == ')' || c == ']' || c == '}')) {
        const char open = c == ')' ? '(' : c == ']' ? '[' : '{';
        if (brackets->empty() || brackets->back() != open) return error_at(p, std::string("unexpected '") + c + "'");
        brackets->pop_back();
      }
      push(Tk::kOp, std::string(op), p);
      *pp = p + op.size();
      return Status::ok();
    }
    return error_at(p, "unexpected character");
  }

  static int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }

  // A string literal, unescaped as jinja2 does: Python's "unicode-escape"
  // codec applied to the literal's ASCII/backslashreplace encoding.
  Status lex_string(std::size_t* pp) {
    const std::size_t start = *pp;
    const char quote = src_[start];
    std::size_t p = start + 1;
    std::string out;
    while (true) {
      if (p >= src_.size()) return error_at(start, "unterminated string");
      const char c = src_[p];
      if (c == quote) break;
      if (c != '\\') {
        out.push_back(c);
        ++p;
        continue;
      }
      if (p + 1 >= src_.size()) return error_at(start, "unterminated string");
      const char e = src_[p + 1];
      p += 2;
      switch (e) {
        case '\n': break;
        case '\\': out.push_back('\\'); break;
        case '\'': out.push_back('\''); break;
        case '"': out.push_back('"'); break;
        case 'a': out.push_back('\a'); break;
        case 'b': out.push_back('\b'); break;
        case 'f': out.push_back('\f'); break;
        case 'n': out.push_back('\n'); break;
        case 'r': out.push_back('\r'); break;
        case 't': out.push_back('\t'); break;
        case 'v': out.push_back('\v'); break;
        case 'x': case 'u': case 'U': {
          const int len = e == 'x' ? 2 : e == 'u' ? 4 : 8;
          std::uint32_t v = 0;
          for (int k = 0; k < len; ++k) {
            const int h = p < src_.size() ? hex_value(src_[p]) : -1;
            if (h < 0) return error_at(start, "truncated \\x, \\u or \\U escape in string");
            v = v * 16 + static_cast<std::uint32_t>(h);
            ++p;
          }
          if (v > 0x10FFFF) return error_at(start, "illegal Unicode character in string");
          append_utf8(out, v >= 0xD800 && v <= 0xDFFF ? 0xFFFD : v);
          break;
        }
        case 'N': return error_at(start, "\\N{...} escapes are not supported");
        default:
          if (e >= '0' && e <= '7') {
            std::uint32_t v = static_cast<std::uint32_t>(e - '0');
            for (int k = 0; k < 2 && p < src_.size() && src_[p] >= '0' && src_[p] <= '7'; ++k, ++p)
              v = v * 8 + static_cast<std::uint32_t>(src_[p] - '0');
            append_utf8(out, v);
          } else if (static_cast<unsigned char>(e) >= 0x80) {
            // "\é": the backslash escapes the backslash that
            // backslashreplace put in front of the character's code.
            std::size_t q = p - 1;
            const char32_t cp = next_cp(src_, &q);
            char buf[16];
            std::snprintf(buf, sizeof buf, cp <= 0xFF ? "\\x%02x" : cp <= 0xFFFF ? "\\u%04x" : "\\U%08x",
                          static_cast<unsigned>(cp));
            out += buf;
            p = q;
          } else {
            out.push_back('\\');
            out.push_back(e);
          }
      }
    }
    push(Tk::kString, std::move(out), start);
    *pp = p + 1;
    return Status::ok();
  }

  std::string src_;
  std::vector<Token>* out_ = nullptr;
  std::size_t loc_pos_ = 0, loc_line_start_ = 0;
  int loc_line_ = 1;
};

// ---------------------------------------------------------------- syntax tree

enum class Ek : std::uint8_t {
  kLiteral, kName, kList, kTuple, kDict, kAttr, kItem, kSlice, kCall, kFilter, kTest,
  kNot, kNeg, kPos, kBinary, kCompare, kAnd, kOr, kCond,
};

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  Ek kind = Ek::kLiteral;
  int line = 0;
  int height = 1;
  Value literal;
  std::string name;               // variable, attribute, filter, test, binary operator
  std::vector<ExprPtr> kids;      // operands and arguments; slices may hold null
  std::vector<std::string> kw;    // keyword names of the last kw.size() arguments
  std::vector<std::string> ops;   // kCompare: one per kid after the first
  bool negated = false;           // kTest: `is not`
};

enum class Nk : std::uint8_t { kText, kOutput, kIf, kFor, kSet, kSetBlock, kMacro, kBreak, kContinue };

using Body = std::vector<std::unique_ptr<Node>>;

struct Node {
  Nk kind = Nk::kText;
  int line = 0;
  std::string text;                  // kText: the text; kMacro: its name; kSet on ns.attr: attr
  std::vector<std::string> targets;  // kFor/kSet/kSetBlock names
  ExprPtr expr;                      // output, set value, for iterable
  ExprPtr cond;                      // for ... if cond
  std::vector<ExprPtr> conds;        // if/elif
  std::vector<Body> bodies;          // if: per cond (+ else); for: body (+ else); macro/set block: body
  std::vector<ExprPtr> defaults;     // macro: one per target (param), null when none
  bool has_else = false;
};

}  // namespace

struct ChatTemplateProgram {
  Body body;
  ChatTemplateLimits limits;
};

namespace {

// ---------------------------------------------------------------- parser

class Parser {
 public:
  Parser(std::vector<Token> toks, const ChatTemplateLimits& limits) : toks_(std::move(toks)), limits_(limits) {}

  Status parse_template(Body* out) {
    std::string which;
    AIRLOCK_RETURN_IF_ERROR(parse_body(out, {}, &which));
    return Status::ok();
  }

 private:
  const Token& cur() const { return toks_[p_]; }
  const Token& peek(std::size_t k = 1) const { return toks_[std::min(p_ + k, toks_.size() - 1)]; }
  void advance() {
    if (p_ + 1 < toks_.size()) ++p_;
  }
  bool is_op(std::string_view op) const { return cur().kind == Tk::kOp && cur().text == op; }
  bool is_name(std::string_view n) const { return cur().kind == Tk::kName && cur().text == n; }
  bool accept_op(std::string_view op) {
    if (!is_op(op)) return false;
    advance();
    return true;
  }
  Status fail(std::string_view what) const { return syntax_error(cur().line, cur().col, what); }
  Status fail_token(std::string_view expected) const {
    std::string got = cur().kind == Tk::kEof ? "end of template"
                      : cur().kind == Tk::kBlockEnd ? "end of statement block"
                      : cur().kind == Tk::kVarEnd ? "end of print statement"
                                                  : "'" + cur().text + "'";
    return fail("expected " + std::string(expected) + ", got " + got);
  }
  Status expect_op(std::string_view op) {
    if (!accept_op(op)) return fail_token("'" + std::string(op) + "'");
    return Status::ok();
  }
  Status expect_block_end() {
    if (cur().kind != Tk::kBlockEnd) return fail_token("end of statement block");
    advance();
    return Status::ok();
  }
  Result<std::string> expect_name() {
    if (cur().kind != Tk::kName) return fail_token("a name");
    std::string n = cur().text;
    advance();
    return n;
  }

  // Counts nesting for the duration of a recursive parse call.
  struct Nest {
    explicit Nest(int* d) : d_(d) { ++*d_; }
    ~Nest() { --*d_; }
    Nest(const Nest&) = delete;
    Nest& operator=(const Nest&) = delete;
    int* d_;
  };

  ExprPtr make(Ek kind, int line) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->line = line;
    return e;
  }
  // Finishes a node: its height bounds the renderer's recursion.
  Result<ExprPtr> done(ExprPtr e) {
    for (const ExprPtr& k : e->kids)
      if (k) e->height = std::max(e->height, k->height + 1);
    if (e->height > limits_.max_nesting * 2) return fail("expression nested too deeply");
    return e;
  }

  // ---- statements

  // Parses nodes until a block tag named in `ends` (whose name it consumes,
  // stored in *which) or the end of the template (only when ends is empty).
  Status parse_body(Body* out, std::initializer_list<std::string_view> ends, std::string* which) {
    Nest nest(&block_depth_);
    if (block_depth_ > limits_.max_nesting) return fail("blocks nested too deeply");
    while (true) {
      const Token& t = cur();
      if (t.kind == Tk::kEof) {
        if (ends.size() == 0) return Status::ok();
        return fail("unexpected end of template, expected '" + std::string(*ends.begin()) + "'");
      }
      if (t.kind == Tk::kText) {
        auto n = std::make_unique<Node>();
        n->kind = Nk::kText;
        n->line = t.line;
        n->text = t.text;
        out->push_back(std::move(n));
        advance();
        continue;
      }
      if (t.kind == Tk::kVarBegin) {
        advance();
        auto n = std::make_unique<Node>();
        n->kind = Nk::kOutput;
        n->line = t.line;
        AIRLOCK_ASSIGN_OR_RETURN(n->expr, parse_tuple(true));
        if (cur().kind != Tk::kVarEnd) return fail_token("end of print statement");
        advance();
        out->push_back(std::move(n));
        continue;
      }
      if (t.kind != Tk::kBlockBegin) return fail("unexpected token");
      advance();
      if (cur().kind != Tk::kName) return fail_token("a statement name");
      const std::string kw = cur().text;
      for (std::string_view e : ends) {
        if (kw == e) {
          *which = kw;
          advance();
          return Status::ok();
        }
      }
      const int line = cur().line;
      advance();
      if (kw == "if") {
        AIRLOCK_RETURN_IF_ERROR(parse_if(out, line));
      } else if (kw == "for") {
        AIRLOCK_RETURN_IF_ERROR(parse_for(out, line));
      } else if (kw == "set") {
        AIRLOCK_RETURN_IF_ERROR(parse_set(out, line));
      } else if (kw == "macro") {
        AIRLOCK_RETURN_IF_ERROR(parse_macro(out, line));
      } else if (kw == "break" || kw == "continue") {
        if (loop_depth_ == 0) return fail("'" + kw + "' outside of a loop");
        auto n = std::make_unique<Node>();
        n->kind = kw == "break" ? Nk::kBreak : Nk::kContinue;
        n->line = line;
        AIRLOCK_RETURN_IF_ERROR(expect_block_end());
        out->push_back(std::move(n));
      } else if (kw == "generation") {
        // transformers' {% generation %} marks assistant text; it renders as is.
        AIRLOCK_RETURN_IF_ERROR(expect_block_end());
        std::string w;
        AIRLOCK_RETURN_IF_ERROR(parse_body(out, {"endgeneration"}, &w));
        AIRLOCK_RETURN_IF_ERROR(expect_block_end());
      } else {
        return syntax_error(t.line, t.col, "unknown or unsupported tag '" + kw + "'");
      }
    }
  }

  Status parse_if(Body* out, int line) {
    auto n = std::make_unique<Node>();
    n->kind = Nk::kIf;
    n->line = line;
    while (true) {
      AIRLOCK_ASSIGN_OR_RETURN(ExprPtr c, parse_tuple(true));
      AIRLOCK_RETURN_IF_ERROR(expect_block_end());
      n->conds.push_back(std::move(c));
      n->bodies.emplace_back();
      std::string which;
      AIRLOCK_RETURN_IF_ERROR(parse_body(&n->bodies.back(), {"elif", "else", "endif"}, &which));
      if (which == "elif") continue;
      if (which == "else") {
        AIRLOCK_RETURN_IF_ERROR(expect_block_end());
        n->bodies.emplace_back();
        n->has_else = true;
        AIRLOCK_RETURN_IF_ERROR(parse_body(&n->bodies.back(), {"endif"}, &which));
      }
      break;
    }
    AIRLOCK_RETURN_IF_ERROR(expect_block_end());
    out->push_back(std::move(n));
    return Status::ok();
  }

  Status parse_targets(std::vector<std::string>* names) {
    const bool paren = accept_op("(");
    while (true) {
      AIRLOCK_ASSIGN_OR_RETURN(std::string nm, expect_name());
      names->push_back(std::move(nm));
      if (!accept_op(",")) break;
      if (paren && is_op(")")) break;
    }
    if (paren) {
      AIRLOCK_RETURN_IF_ERROR(expect_op(")"));
    }
    return Status::ok();
  }

  Status parse_for(Body* out, int line) {
    auto n = std::make_unique<Node>();
    n->kind = Nk::kFor;
    n->line = line;
    AIRLOCK_RETURN_IF_ERROR(parse_targets(&n->targets));
    if (!is_name("in")) return fail_token("'in'");
    advance();
    AIRLOCK_ASSIGN_OR_RETURN(n->expr, parse_tuple(false));
    if (is_name("if")) {
      advance();
      AIRLOCK_ASSIGN_OR_RETURN(n->cond, parse_expr());
    }
    if (is_name("recursive")) return fail("recursive loops are not supported");
    AIRLOCK_RETURN_IF_ERROR(expect_block_end());
    n->bodies.emplace_back();
    std::string which;
    ++loop_depth_;
    Status s = parse_body(&n->bodies.back(), {"else", "endfor"}, &which);
    --loop_depth_;
    AIRLOCK_RETURN_IF_ERROR(s);
    if (which == "else") {
      AIRLOCK_RETURN_IF_ERROR(expect_block_end());
      n->bodies.emplace_back();
      n->has_else = true;
      AIRLOCK_RETURN_IF_ERROR(parse_body(&n->bodies.back(), {"endfor"}, &which));
    }
    AIRLOCK_RETURN_IF_ERROR(expect_block_end());
    out->push_back(std::move(n));
    return Status::ok();
  }

  Status parse_set(Body* out, int line) {
    auto n = std::make_unique<Node>();
    n->kind = Nk::kSet;
    n->line = line;
    AIRLOCK_ASSIGN_OR_RETURN(std::string first, expect_name());
    n->targets.push_back(std::move(first));
    if (accept_op(".")) {
      AIRLOCK_ASSIGN_OR_RETURN(n->text, expect_name());
    } else {
      while (accept_op(",")) {
        AIRLOCK_ASSIGN_OR_RETURN(std::string nm, expect_name());
        n->targets.push_back(std::move(nm));
      }
    }
    if (accept_op("=")) {
      AIRLOCK_ASSIGN_OR_RETURN(n->expr, parse_tuple(true));
      AIRLOCK_RETURN_IF_ERROR(expect_block_end());
    } else {
      if (!n->text.empty() || n->targets.size() != 1) return fail_token("'='");
      if (is_op("|")) return fail("filtered block set is not supported");
      AIRLOCK_RETURN_IF_ERROR(expect_block_end());
      n->kind = Nk::kSetBlock;
      n->bodies.emplace_back();
      std::string which;
      AIRLOCK_RETURN_IF_ERROR(parse_body(&n->bodies.back(), {"endset"}, &which));
      AIRLOCK_RETURN_IF_ERROR(expect_block_end());
    }
    out->push_back(std::move(n));
    return Status::ok();
  }

  Status parse_macro(Body* out, int line) {
    auto n = std::make_unique<Node>();
    n->kind = Nk::kMacro;
    n->line = line;
    AIRLOCK_ASSIGN_OR_RETURN(n->text, expect_name());
    AIRLOCK_RETURN_IF_ERROR(expect_op("("));
    while (!is_op(")")) {
      AIRLOCK_ASSIGN_OR_RETURN(std::string param, expect_name());
      n->targets.push_back(std::move(param));
      ExprPtr def;
      if (accept_op("=")) {
        AIRLOCK_ASSIGN_OR_RETURN(def, parse_expr());
      } else if (!n->defaults.empty() && n->defaults.back()) {
        return fail("non-default argument follows default argument");
      }
      n->defaults.push_back(std::move(def));
      if (!accept_op(",")) break;
    }
    AIRLOCK_RETURN_IF_ERROR(expect_op(")"));
    AIRLOCK_RETURN_IF_ERROR(expect_block_end());
    n->bodies.emplace_back();
    std::string which;
    const int saved_loops = loop_depth_;
    loop_depth_ = 0;
    Status s = parse_body(&n->bodies.back(), {"endmacro"}, &which);
    loop_depth_ = saved_loops;
    AIRLOCK_RETURN_IF_ERROR(s);
    if (cur().kind == Tk::kName && cur().text == n->text) advance();
    AIRLOCK_RETURN_IF_ERROR(expect_block_end());
    out->push_back(std::move(n));
    return Status::ok();
  }

  // ---- expressions (jinja2's precedence, loosest first)

  bool at_tuple_end() const {
    const Token& t = cur();
    return t.kind == Tk::kBlockEnd || t.kind == Tk::kVarEnd || t.kind == Tk::kEof ||
           (t.kind == Tk::kOp && (t.text == ")" || t.text == "]" || t.text == "}")) ||
           (t.kind == Tk::kName && (t.text == "if" || t.text == "in"));
  }

  Result<ExprPtr> parse_tuple(bool with_condexpr) {
    const int line = cur().line;
    AIRLOCK_ASSIGN_OR_RETURN(ExprPtr first, with_condexpr ? parse_expr() : parse_or());
    if (!is_op(",")) return first;
    ExprPtr t = make(Ek::kTuple, line);
    t->kids.push_back(std::move(first));
    while (accept_op(",")) {
      if (at_tuple_end()) break;
      AIRLOCK_ASSIGN_OR_RETURN(ExprPtr e, with_condexpr ? parse_expr() : parse_or());
      t->kids.push_back(std::move(e));
    }
    return done(std::move(t));
  }

  Result<ExprPtr> parse_expr() {
    Nest nest(&expr_depth_);
    if (expr_depth_ > limits_.max_nesting) return fail("expression nested too deeply");
    AIRLOCK_ASSIGN_OR_RETURN(ExprPtr e, parse_or());
    while (is_name("if")) {
      const int line = cur().line;
      advance();
      ExprPtr c = make(Ek::kCond, line);
      AIRLOCK_ASSIGN_OR_RETURN(ExprPtr cond, parse_or());
      ExprPtr otherwise;
      if (is_name("else")) {
        advance();
        AIRLOCK_ASSIGN_OR_RETURN(otherwise, parse_expr());
      }
      c->kids.push_back(std::move(e));
      c->kids.push_back(std::move(cond));
      c->kids.push_back(std::move(otherwise));
      AIRLOCK_ASSIGN_OR_RETURN(e, done(std::move(c)));
    }
    return e;
  }

  Result<ExprPtr> binary_chain(Ek kind, std::string_view word, Result<ExprPtr> (Parser::*next)()) {
    AIRLOCK_ASSIGN_OR_RETURN(ExprPtr left, (this->*next)());
    while (is_name(word)) {
      const int line = cur().line;
      advance();
      AIRLOCK_ASSIGN_OR_RETURN(ExprPtr right, (this->*next)());
      ExprPtr e = make(kind, line);
      e->kids.push_back(std::move(left));
      e->kids.push_back(std::move(right));
      AIRLOCK_ASSIGN_OR_RETURN(left, done(std::move(e)));
    }
    return left;
  }
  Result<ExprPtr> parse_or() { return binary_chain(Ek::kOr, "or", &Parser::parse_and); }
  Result<ExprPtr> parse_and() { return binary_chain(Ek::kAnd, "and", &Parser::parse_not); }

  Result<ExprPtr> parse_not() {
    if (!is_name("not")) return parse_compare();
    Nest nest(&expr_depth_);
    if (expr_depth_ > limits_.max_nesting) return fail("expression nested too deeply");
    const int line = cur().line;
    advance();
    ExprPtr e = make(Ek::kNot, line);
    AIRLOCK_ASSIGN_OR_RETURN(ExprPtr inner, parse_not());
    e->kids.push_back(std::move(inner));
    return done(std::move(e));
  }

  Result<ExprPtr> parse_compare() {
    const int line = cur().line;
    AIRLOCK_ASSIGN_OR_RETURN(ExprPtr first, parse_math1());
    ExprPtr cmp;
    while (true) {
      std::string op;
      if (cur().kind == Tk::kOp && (cur().text == "==" || cur().text == "!=" || cur().text == "<" ||
                                    cur().text == ">" || cur().text == "<=" || cur().text == ">=")) {
        op = cur().text;
        advance();
      } else if (is_name("in")) {
        op = "in";
        advance();
      } else if (is_name("not") && peek().kind == Tk::kName && peek().text == "in") {
        op = "notin";
        advance();
        advance();
      } else {
        break;
      }
      if (!cmp) {
        cmp = make(Ek::kCompare, line);
        cmp->kids.push_back(std::move(first));
      }
      AIRLOCK_ASSIGN_OR_RETURN(ExprPtr rhs, parse_math1());
      cmp->kids.push_back(std::move(rhs));
      cmp->ops.push_back(std::move(op));
    }
    if (!cmp) return first;
    return done(std::move(cmp));
  }

  Result<ExprPtr> binary_ops(std::initializer_list<std::string_view> ops, Result<ExprPtr> (Parser::*next)()) {
    AIRLOCK_ASSIGN_OR_RETURN(ExprPtr left, (this->*next)());
    while (cur().kind == Tk::kOp && std::find(ops.begin(), ops.end(), cur().text) != ops.end()) {
      ExprPtr e = make(Ek::kBinary, cur().line);
      e->name = cur().text;
      advance();
      AIRLOCK_ASSIGN_OR_RETURN(ExprPtr right, (this->*next)());
      e->kids.push_back(std::move(left));
      e->kids.push_back(std::move(right));
      AIRLOCK_ASSIGN_OR_RETURN(left, done(std::move(e)));
    }
    return left;
  }
  Result<ExprPtr> parse_math1() { return binary_ops({"+", "-"}, &Parser::parse_concat); }
  Result<ExprPtr> parse_concat() { return binary_ops({"~"}, &Parser::parse_math2); }
  Result<ExprPtr> parse_math2() { return binary_ops({"*", "/", "//", "%"}, &Parser::parse_pow); }
  Result<ExprPtr> parse_pow() { return binary_ops({"**"}, &Parser::parse_unary_filtered); }
  Result<ExprPtr> parse_unary_filtered() { return parse_unary(true); }

  Result<ExprPtr> parse_unary(bool with_filter) {
    ExprPtr node;
    if (is_op("-") || is_op("+")) {
      Nest nest(&expr_depth_);
      if (expr_depth_ > limits_.max_nesting) return fail("expression nested too deeply");
      node = make(is_op("-") ? Ek::kNeg : Ek::kPos, cur().line);
      advance();
      AIRLOCK_ASSIGN_OR_RETURN(ExprPtr inner, parse_unary(false));
      node->kids.push_back(std::move(inner));
      AIRLOCK_ASSIGN_OR_RETURN(node, done(std::move(node)));
    } else {
      AIRLOCK_ASSIGN_OR_RETURN(node, parse_primary());
    }
    AIRLOCK_ASSIGN_OR_RETURN(node, parse_postfix(std::move(node)));
    if (with_filter) {
      AIRLOCK_ASSIGN_OR_RETURN(node, parse_filters(std::move(node)));
    }
    return node;
  }

  Result<ExprPtr> parse_primary() {
    const Token& t = cur();
    const int line = t.line;
    if (t.kind == Tk::kName) {
      ExprPtr e = make(Ek::kLiteral, line);
      if (t.text == "true" || t.text == "True") e->literal = boolean(true);
      else if (t.text == "false" || t.text == "False") e->literal = boolean(false);
      else if (t.text == "none" || t.text == "None") e->literal = none();
      else {
        e->kind = Ek::kName;
        e->name = t.text;
      }
      advance();
      return e;
    }
    if (t.kind == Tk::kString) {
      std::string s;
      while (cur().kind == Tk::kString) {
        s += cur().text;
        advance();
      }
      ExprPtr e = make(Ek::kLiteral, line);
      e->literal = string_value(std::move(s));
      return e;
    }
    if (t.kind == Tk::kInt || t.kind == Tk::kFloat) {
      ExprPtr e = make(Ek::kLiteral, line);
      e->literal = t.kind == Tk::kInt ? integer(t.i) : floating(t.f);
      advance();
      return e;
    }
    if (accept_op("(")) {
      if (accept_op(")")) {
        ExprPtr e = make(Ek::kTuple, line);
        return e;
      }
      Nest nest(&expr_depth_);
      if (expr_depth_ > limits_.max_nesting) return fail("expression nested too deeply");
      AIRLOCK_ASSIGN_OR_RETURN(ExprPtr e, parse_tuple(true));
      AIRLOCK_RETURN_IF_ERROR(expect_op(")"));
      return e;
    }
    if (accept_op("[")) {
      ExprPtr e = make(Ek::kList, line);
      while (!is_op("]")) {
        AIRLOCK_ASSIGN_OR_RETURN(ExprPtr item, parse_expr());
        e->kids.push_back(std::move(item));
        if (!accept_op(",")) break;
      }
      AIRLOCK_RETURN_IF_ERROR(expect_op("]"));
      return done(std::move(e));
    }
    if (accept_op("{")) {
      ExprPtr e = make(Ek::kDict, line);
      while (!is_op("}")) {
        AIRLOCK_ASSIGN_OR_RETURN(ExprPtr k, parse_expr());
        AIRLOCK_RETURN_IF_ERROR(expect_op(":"));
        AIRLOCK_ASSIGN_OR_RETURN(ExprPtr v, parse_expr());
        e->kids.push_back(std::move(k));
        e->kids.push_back(std::move(v));
        if (!accept_op(",")) break;
      }
      AIRLOCK_RETURN_IF_ERROR(expect_op("}"));
      return done(std::move(e));
    }
    return fail_token("an expression");
  }

  // Arguments of a call, filter or test: "(a, b, key=c)".
  Status parse_args(Expr* e) {
    AIRLOCK_RETURN_IF_ERROR(expect_op("("));
    while (!is_op(")")) {
      if (is_op("*") || is_op("**")) return fail("*args and **kwargs are not supported");
      if (cur().kind == Tk::kName && peek().kind == Tk::kOp && peek().text == "=") {
        e->kw.push_back(cur().text);
        advance();
        advance();
      } else if (!e->kw.empty()) {
        return fail("positional argument follows keyword argument");
      }
      AIRLOCK_ASSIGN_OR_RETURN(ExprPtr a, parse_expr());
      e->kids.push_back(std::move(a));
      if (!accept_op(",")) break;
    }
    return expect_op(")");
  }

  Result<ExprPtr> parse_postfix(ExprPtr node) {
    while (true) {
      const int line = cur().line;
      if (accept_op(".")) {
        if (cur().kind == Tk::kInt) {
          ExprPtr e = make(Ek::kItem, line);
          ExprPtr idx = make(Ek::kLiteral, line);
          idx->literal = integer(cur().i);
          advance();
          e->kids.push_back(std::move(node));
          e->kids.push_back(std::move(idx));
          AIRLOCK_ASSIGN_OR_RETURN(node, done(std::move(e)));
          continue;
        }
        ExprPtr e = make(Ek::kAttr, line);
        AIRLOCK_ASSIGN_OR_RETURN(e->name, expect_name());
        e->kids.push_back(std::move(node));
        AIRLOCK_ASSIGN_OR_RETURN(node, done(std::move(e)));
      } else if (accept_op("[")) {
        Nest nest(&expr_depth_);
        if (expr_depth_ > limits_.max_nesting) return fail("expression nested too deeply");
        ExprPtr start, stop, step;
        if (!is_op(":")) {
          AIRLOCK_ASSIGN_OR_RETURN(start, parse_expr());
        }
        if (accept_op(":")) {
          if (!is_op("]") && !is_op(":")) {
            AIRLOCK_ASSIGN_OR_RETURN(stop, parse_expr());
          }
          if (accept_op(":") && !is_op("]")) {
            AIRLOCK_ASSIGN_OR_RETURN(step, parse_expr());
          }
          ExprPtr e = make(Ek::kSlice, line);
          e->kids.push_back(std::move(node));
          e->kids.push_back(std::move(start));
          e->kids.push_back(std::move(stop));
          e->kids.push_back(std::move(step));
          AIRLOCK_RETURN_IF_ERROR(expect_op("]"));
          AIRLOCK_ASSIGN_OR_RETURN(node, done(std::move(e)));
        } else {
          if (!start) return fail_token("an expression");
          AIRLOCK_RETURN_IF_ERROR(expect_op("]"));
          ExprPtr e = make(Ek::kItem, line);
          e->kids.push_back(std::move(node));
          e->kids.push_back(std::move(start));
          AIRLOCK_ASSIGN_OR_RETURN(node, done(std::move(e)));
        }
      } else if (is_op("(")) {
        ExprPtr e = make(Ek::kCall, line);
        e->kids.push_back(std::move(node));
        AIRLOCK_RETURN_IF_ERROR(parse_args(e.get()));
        AIRLOCK_ASSIGN_OR_RETURN(node, done(std::move(e)));
      } else {
        return node;
      }
    }
  }

  Result<ExprPtr> parse_filters(ExprPtr node) {
    while (true) {
      const int line = cur().line;
      if (accept_op("|")) {
        ExprPtr e = make(Ek::kFilter, line);
        AIRLOCK_ASSIGN_OR_RETURN(e->name, expect_name());
        e->kids.push_back(std::move(node));
        if (is_op("(")) {
          AIRLOCK_RETURN_IF_ERROR(parse_args(e.get()));
        }
        AIRLOCK_ASSIGN_OR_RETURN(node, done(std::move(e)));
      } else if (is_name("is")) {
        advance();
        ExprPtr e = make(Ek::kTest, line);
        if (is_name("not")) {
          e->negated = true;
          advance();
        }
        AIRLOCK_ASSIGN_OR_RETURN(e->name, expect_name());
        e->kids.push_back(std::move(node));
        const Token& t = cur();
        if (is_op("(")) {
          AIRLOCK_RETURN_IF_ERROR(parse_args(e.get()));
        } else if ((t.kind == Tk::kName || t.kind == Tk::kString || t.kind == Tk::kInt || t.kind == Tk::kFloat ||
                    is_op("[") || is_op("{")) &&
                   !is_name("else") && !is_name("or") && !is_name("and")) {
          if (is_name("is")) return fail("you cannot chain multiple tests with is");
          AIRLOCK_ASSIGN_OR_RETURN(ExprPtr arg, parse_primary());
          AIRLOCK_ASSIGN_OR_RETURN(arg, parse_postfix(std::move(arg)));
          e->kids.push_back(std::move(arg));
        }
        AIRLOCK_ASSIGN_OR_RETURN(node, done(std::move(e)));
      } else if (is_op("(")) {
        ExprPtr e = make(Ek::kCall, line);
        e->kids.push_back(std::move(node));
        AIRLOCK_RETURN_IF_ERROR(parse_args(e.get()));
        AIRLOCK_ASSIGN_OR_RETURN(node, done(std::move(e)));
      } else {
        return node;
      }
    }
  }

  std::vector<Token> toks_;
  std::size_t p_ = 0;
  const ChatTemplateLimits& limits_;
  int block_depth_ = 0, expr_depth_ = 0, loop_depth_ = 0;
};

// ---------------------------------------------------------------- renderer

struct Args {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
};

enum class Flow : std::uint8_t { kNormal, kBreak, kContinue };

class Renderer {
 public:
  Renderer(const ChatTemplateProgram& prog, const ChatTemplateInputs& in) : prog_(prog), lim_(prog.limits), in_(in) {}
  // A namespace can hold itself (`{% set ns.me = ns %}`); emptying them all
  // breaks such shared_ptr cycles. None outlives the render.
  ~Renderer() {
    for (const auto& ns : namespaces_) ns->attrs = Dict();
  }
  Renderer(const Renderer&) = delete;
  Renderer& operator=(const Renderer&) = delete;

  Result<std::string> run() {
    WorkBudget budget{&steps_, lim_.max_steps, lim_.max_output_bytes, false};
    struct Install {
      WorkBudget* previous;
      explicit Install(WorkBudget* b) : previous(t_work) { t_work = b; }
      ~Install() { t_work = previous; }
    } install(&budget);
    work_ = &budget;
    frames_.emplace_back();  // globals
    AIRLOCK_RETURN_IF_ERROR(init_globals());
    frames_.emplace_back();  // the template's own variables
    std::string out;
    out_ = &out;
    AIRLOCK_RETURN_IF_ERROR(exec_body(prog_.body));
    // A helper that ran out in the last statement returned early (a false
    // comparison, say) with no step after it to notice.
    if (budget.exceeded) return resource_exhausted("chat template: step limit exceeded");
    return out;
  }

 private:
  using Frame = std::vector<std::pair<std::string, Value>>;

  // ---- errors and limits

  static Status error(int line, std::string_view what) {
    return invalid_argument("chat template line " + std::to_string(line) + ": " + std::string(what));
  }
  Status step(std::size_t n = 1) {
    steps_ += n;
    if (steps_ > lim_.max_steps || (work_ != nullptr && work_->exceeded))
      return resource_exhausted("chat template: step limit exceeded");
    return Status::ok();
  }
  Status charge(std::size_t n_bytes) {
    alloc_ += n_bytes;
    if (alloc_ > lim_.max_alloc_bytes) return resource_exhausted("chat template: memory limit exceeded");
    return step(n_bytes / 64);
  }
  Result<Value> make_string(std::string s) {
    if (s.size() > lim_.max_output_bytes) return resource_exhausted("chat template: string too long");
    AIRLOCK_RETURN_IF_ERROR(charge(s.size()));
    return string_value(std::move(s));
  }
  Result<Value> make_list(List items, bool tuple = false) {
    if (items.size() > lim_.max_list_items) return resource_exhausted("chat template: list too long");
    AIRLOCK_RETURN_IF_ERROR(charge(items.size() * sizeof(Value)));
    Value v = list_value(std::move(items), tuple);
    if (v.depth > kMaxValueDepth) return resource_exhausted("chat template: value nested too deeply");
    return v;
  }
  Result<Value> make_dict(Dict d) {
    if (d.entries.size() > lim_.max_list_items) return resource_exhausted("chat template: dict too large");
    AIRLOCK_RETURN_IF_ERROR(charge(d.entries.size() * (sizeof(Value) + 64)));
    Value v = dict_value(std::move(d));
    if (v.depth > kMaxValueDepth) return resource_exhausted("chat template: value nested too deeply");
    return v;
  }
  Status emit(std::string_view s) {
    if (out_->size() + s.size() > lim_.max_output_bytes)
      return resource_exhausted("chat template: output longer than " + std::to_string(lim_.max_output_bytes) +
                                " bytes");
    AIRLOCK_RETURN_IF_ERROR(step(1 + s.size() / 64));
    out_->append(s);
    return Status::ok();
  }

  struct Depth {
    explicit Depth(int* d) : d_(d) { ++*d_; }
    ~Depth() { --*d_; }
    Depth(const Depth&) = delete;
    Depth& operator=(const Depth&) = delete;
    int* d_;
  };
  Status check_depth() const {
    if (depth_ > lim_.max_call_depth) return resource_exhausted("chat template: recursion too deep");
    return Status::ok();
  }

  // ---- variables

  Result<Value> from_json(const nlohmann::ordered_json& j, int depth) {
    if (depth > 64) return invalid_argument("chat template input: JSON nested too deeply");
    AIRLOCK_RETURN_IF_ERROR(step());
    switch (j.type()) {
      case nlohmann::ordered_json::value_t::null: return none();
      case nlohmann::ordered_json::value_t::boolean: return boolean(j.get<bool>());
      case nlohmann::ordered_json::value_t::number_integer: return integer(j.get<std::int64_t>());
      case nlohmann::ordered_json::value_t::number_unsigned: {
        // Beyond int64 Python keeps the exact integer (tojson prints every
        // digit); as a float it would reach the model changed (an account
        // number in a tool call's arguments, say). Refused, as literals and
        // arithmetic beyond 64 bits are.
        const auto u = j.get<std::uint64_t>();
        if (u <= static_cast<std::uint64_t>(INT64_MAX)) return integer(static_cast<std::int64_t>(u));
        return invalid_argument("chat template input: the integer " + std::to_string(u) +
                                " does not fit in 64 bits (Python would use a big integer)");
      }
      case nlohmann::ordered_json::value_t::number_float: return floating(j.get<double>());
      case nlohmann::ordered_json::value_t::string: return make_string(j.get<std::string>());
      case nlohmann::ordered_json::value_t::array: {
        // Refused before any element is converted: a request body of
        // 4 million zeros would otherwise build a list of that many values.
        if (j.size() > lim_.max_list_items) return resource_exhausted("chat template input: list too long");
        List items;
        items.reserve(j.size());
        for (const auto& x : j) {
          AIRLOCK_ASSIGN_OR_RETURN(Value v, from_json(x, depth + 1));
          items.push_back(std::move(v));
        }
        return make_list(std::move(items));
      }
      case nlohmann::ordered_json::value_t::object: {
        if (j.size() > lim_.max_list_items) return resource_exhausted("chat template input: object too large");
        Dict d;
        for (auto it = j.begin(); it != j.end(); ++it) {
          AIRLOCK_ASSIGN_OR_RETURN(Value v, from_json(it.value(), depth + 1));
          d.set(it.key(), std::move(v));
        }
        return make_dict(std::move(d));
      }
      default: return invalid_argument("chat template input: unsupported JSON value");
    }
  }

  Status init_globals() {
    Frame& g = frames_[0];
    for (const char* fn : {"raise_exception", "strftime_now", "range", "namespace", "dict"})
      g.emplace_back(fn, callable(fn));
    g.emplace_back("tools", none());
    g.emplace_back("documents", none());
    AIRLOCK_ASSIGN_OR_RETURN(Value messages, from_json(in_.messages, 0));
    g.emplace_back("messages", std::move(messages));
    g.emplace_back("add_generation_prompt", boolean(in_.add_generation_prompt));
    g.emplace_back("bos_token", string_value(in_.bos_token));
    g.emplace_back("eos_token", string_value(in_.eos_token));
    if (!in_.extra.is_null() && !in_.extra.is_object())
      return invalid_argument("chat template input: extra must be an object");
    if (in_.extra.is_object()) {
      for (auto it = in_.extra.begin(); it != in_.extra.end(); ++it) {
        AIRLOCK_ASSIGN_OR_RETURN(Value v, from_json(it.value(), 0));
        set_in(&frames_[0], it.key(), std::move(v));
      }
    }
    return Status::ok();
  }

  static void set_in(Frame* f, const std::string& name, Value v) {
    for (auto& [k, x] : *f) {
      if (k == name) {
        x = std::move(v);
        return;
      }
    }
    f->emplace_back(name, std::move(v));
  }

  const Value* lookup(const std::string& name) const {
    for (std::size_t k = frames_.size(); k-- > 0;) {
      if (k < scope_base_ && k > 1) continue;  // a macro sees only its own frames and the template's
      for (const auto& [n, v] : frames_[k])
        if (n == name) return &v;
    }
    return nullptr;
  }

  void assign(const std::string& name, Value v) { set_in(&frames_.back(), name, std::move(v)); }

  // ---- statements

  Status exec_body(const Body& body) {
    for (const auto& node : body) {
      AIRLOCK_RETURN_IF_ERROR(exec(*node));
      if (flow_ != Flow::kNormal) break;
    }
    return Status::ok();
  }

  Status exec(const Node& n) {
    Depth d(&depth_);
    AIRLOCK_RETURN_IF_ERROR(check_depth());
    AIRLOCK_RETURN_IF_ERROR(step());
    switch (n.kind) {
      case Nk::kText: return emit(n.text);
      case Nk::kOutput: {
        AIRLOCK_ASSIGN_OR_RETURN(Value v, eval(*n.expr));
        if (v.is(Type::kString)) return emit(v.s());
        return emit(to_str(v));
      }
      case Nk::kIf:
        for (std::size_t k = 0; k < n.conds.size(); ++k) {
          AIRLOCK_ASSIGN_OR_RETURN(Value c, eval(*n.conds[k]));
          if (truthy(c)) return exec_body(n.bodies[k]);
        }
        if (n.has_else) return exec_body(n.bodies.back());
        return Status::ok();
      case Nk::kFor: return exec_for(n);
      case Nk::kSet: return exec_set(n);
      case Nk::kSetBlock: {
        std::string captured;
        std::string* saved = out_;
        out_ = &captured;
        Status s = exec_body(n.bodies[0]);
        out_ = saved;
        AIRLOCK_RETURN_IF_ERROR(s);
        AIRLOCK_ASSIGN_OR_RETURN(Value v, make_string(std::move(captured)));
        assign(n.targets[0], std::move(v));
        return Status::ok();
      }
      case Nk::kMacro: assign(n.text, callable(n.text, {}, &n)); return Status::ok();
      case Nk::kBreak: flow_ = Flow::kBreak; return Status::ok();
      case Nk::kContinue: flow_ = Flow::kContinue; return Status::ok();
    }
    return Status::ok();
  }

  Status bind_targets(const std::vector<std::string>& targets, const Value& v, int line) {
    if (targets.size() == 1) {
      assign(targets[0], v);
      return Status::ok();
    }
    List parts;
    if (v.is(Type::kList)) {
      parts = *v.list;
    } else if (v.is(Type::kString)) {
      for (char32_t c : to_u32(v.s())) parts.push_back(string_value(to_u8(std::u32string(1, c))));
    } else {
      return error(line, std::string("cannot unpack non-iterable ") + type_name(v) + " object");
    }
    if (parts.size() != targets.size())
      return error(line, "cannot unpack " + std::to_string(parts.size()) + " values into " +
                             std::to_string(targets.size()) + " names");
    for (std::size_t k = 0; k < targets.size(); ++k) assign(targets[k], parts[k]);
    return Status::ok();
  }

  Result<List> iterate(const Value& v, int line) {
    switch (v.type) {
      case Type::kUndefined: return List{};
      case Type::kList:
        AIRLOCK_RETURN_IF_ERROR(step(v.list->size()));  // a copy of every item
        return *v.list;
      case Type::kDict: {
        List keys;
        for (const auto& kv : v.dict->entries) keys.push_back(string_value(kv.first));
        return keys;
      }
      case Type::kString: {
        List chars;
        std::string one;
        for (char32_t c : to_u32(v.s())) {
          one.clear();
          append_utf8(one, c);
          chars.push_back(string_value(one));
        }
        AIRLOCK_RETURN_IF_ERROR(charge(chars.size() * sizeof(Value)));
        return chars;
      }
      default: return error(line, std::string("'") + type_name(v) + "' object is not iterable");
    }
  }

  Status exec_for(const Node& n) {
    AIRLOCK_ASSIGN_OR_RETURN(Value seq, eval(*n.expr));
    AIRLOCK_ASSIGN_OR_RETURN(List items, iterate(seq, n.line));
    if (n.cond) {
      List kept;
      for (const Value& item : items) {
        AIRLOCK_RETURN_IF_ERROR(step());
        frames_.emplace_back();
        Status s = bind_targets(n.targets, item, n.line);
        Result<Value> c = s.is_ok() ? eval(*n.cond) : Result<Value>(s);
        frames_.pop_back();
        if (!c.is_ok()) return c.status();
        if (truthy(*c)) kept.push_back(item);
      }
      items = std::move(kept);
    }
    if (items.empty()) {
      if (!n.has_else) return Status::ok();
      frames_.emplace_back();
      Status s = exec_body(n.bodies[1]);
      frames_.pop_back();
      return s;
    }
    const auto len = static_cast<std::int64_t>(items.size());
    for (std::int64_t k = 0; k < len; ++k) {
      AIRLOCK_RETURN_IF_ERROR(step());
      Dict loop;
      loop.set("index", integer(k + 1));
      loop.set("index0", integer(k));
      loop.set("revindex", integer(len - k));
      loop.set("revindex0", integer(len - k - 1));
      loop.set("first", boolean(k == 0));
      loop.set("last", boolean(k == len - 1));
      loop.set("length", integer(len));
      loop.set("depth", integer(1));
      loop.set("depth0", integer(0));
      if (k > 0) loop.set("previtem", items[static_cast<std::size_t>(k - 1)]);
      if (k + 1 < len) loop.set("nextitem", items[static_cast<std::size_t>(k + 1)]);
      loop.set("cycle", callable("loop.cycle", integer(k)));
      frames_.emplace_back();
      Status s = bind_targets(n.targets, items[static_cast<std::size_t>(k)], n.line);
      if (s.is_ok()) {
        assign("loop", dict_value(std::move(loop)));
        s = exec_body(n.bodies[0]);
      }
      frames_.pop_back();
      AIRLOCK_RETURN_IF_ERROR(s);
      const Flow f = flow_;
      flow_ = Flow::kNormal;
      if (f == Flow::kBreak) break;
    }
    return Status::ok();
  }

  Status exec_set(const Node& n) {
    AIRLOCK_ASSIGN_OR_RETURN(Value v, eval(*n.expr));
    if (n.text.empty()) return bind_targets(n.targets, v, n.line);
    const Value* target = lookup(n.targets[0]);
    if (!target || !target->is(Type::kNamespace))
      return error(n.line, "cannot assign attribute on non-namespace object");
    target->ns->attrs.set(n.text, std::move(v));
    return Status::ok();
  }

  // ---- expressions

  Result<Value> eval(const Expr& e) {
    Depth d(&depth_);
    AIRLOCK_RETURN_IF_ERROR(check_depth());
    AIRLOCK_RETURN_IF_ERROR(step());
    switch (e.kind) {
      case Ek::kLiteral: return e.literal;
      case Ek::kName: {
        const Value* v = lookup(e.name);
        return v ? *v : undefined("'" + e.name + "' is undefined");
      }
      case Ek::kList: case Ek::kTuple: {
        List items;
        for (const auto& k : e.kids) {
          AIRLOCK_ASSIGN_OR_RETURN(Value v, eval(*k));
          items.push_back(std::move(v));
        }
        return make_list(std::move(items), e.kind == Ek::kTuple);
      }
      case Ek::kDict: {
        Dict dict;
        for (std::size_t k = 0; k + 1 < e.kids.size(); k += 2) {
          AIRLOCK_ASSIGN_OR_RETURN(Value key, eval(*e.kids[k]));
          if (!key.is(Type::kString)) return error(e.line, "dict keys must be strings");
          AIRLOCK_ASSIGN_OR_RETURN(Value v, eval(*e.kids[k + 1]));
          dict.set(key.s(), std::move(v));
        }
        return make_dict(std::move(dict));
      }
      case Ek::kAttr: {
        AIRLOCK_ASSIGN_OR_RETURN(Value obj, eval(*e.kids[0]));
        return get_attr(obj, e.name, e.line);
      }
      case Ek::kItem: {
        AIRLOCK_ASSIGN_OR_RETURN(Value obj, eval(*e.kids[0]));
        AIRLOCK_ASSIGN_OR_RETURN(Value key, eval(*e.kids[1]));
        return get_item(obj, key, e.line);
      }
      case Ek::kSlice: return eval_slice(e);
      case Ek::kCall: return eval_call(e);
      case Ek::kFilter: {
        AIRLOCK_ASSIGN_OR_RETURN(Value v, eval(*e.kids[0]));
        AIRLOCK_ASSIGN_OR_RETURN(Args a, eval_args(e, 1));
        return apply_filter(e.name, v, a, e.line);
      }
      case Ek::kTest: {
        AIRLOCK_ASSIGN_OR_RETURN(Value v, eval(*e.kids[0]));
        AIRLOCK_ASSIGN_OR_RETURN(Args a, eval_args(e, 1));
        AIRLOCK_ASSIGN_OR_RETURN(bool r, run_test(e.name, v, a, e.line));
        return boolean(r != e.negated);
      }
      case Ek::kNot: {
        AIRLOCK_ASSIGN_OR_RETURN(Value v, eval(*e.kids[0]));
        return boolean(!truthy(v));
      }
      case Ek::kNeg: case Ek::kPos: {
        AIRLOCK_ASSIGN_OR_RETURN(Value v, eval(*e.kids[0]));
        if (v.is(Type::kUndefined)) return undefined_error(v, e.line);
        if (!v.numeric()) return error(e.line, std::string("bad operand type for unary -: '") + type_name(v) + "'");
        if (e.kind == Ek::kPos) return v.is(Type::kBool) ? integer(v.as_int()) : v;
        if (v.is(Type::kFloat)) return floating(-v.f);
        if (v.as_int() == INT64_MIN) return overflow_error(e.line);
        return integer(-v.as_int());
      }
      case Ek::kBinary: {
        AIRLOCK_ASSIGN_OR_RETURN(Value a, eval(*e.kids[0]));
        AIRLOCK_ASSIGN_OR_RETURN(Value b, eval(*e.kids[1]));
        return binary(e.name, a, b, e.line);
      }
      case Ek::kCompare: return eval_compare(e);
      case Ek::kAnd: case Ek::kOr: {
        AIRLOCK_ASSIGN_OR_RETURN(Value a, eval(*e.kids[0]));
        if (truthy(a) == (e.kind == Ek::kOr)) return a;
        return eval(*e.kids[1]);
      }
      case Ek::kCond: {
        AIRLOCK_ASSIGN_OR_RETURN(Value c, eval(*e.kids[1]));
        if (truthy(c)) return eval(*e.kids[0]);
        if (e.kids[2]) return eval(*e.kids[2]);
        return undefined("the inline if expression evaluated to false and no else section was defined");
      }
    }
    return internal_error("chat template: unknown expression");
  }

  Status undefined_error(const Value& v, int line) const {
    return error(line, v.str ? v.s() : std::string("value is undefined"));
  }

  Result<Args> eval_args(const Expr& e, std::size_t first) {
    Args a;
    const std::size_t n_kw = e.kw.size();
    for (std::size_t k = first; k < e.kids.size(); ++k) {
      AIRLOCK_ASSIGN_OR_RETURN(Value v, eval(*e.kids[k]));
      const std::size_t from_end = e.kids.size() - k;
      if (from_end <= n_kw) a.kw.emplace_back(e.kw[n_kw - from_end], std::move(v));
      else a.pos.push_back(std::move(v));
    }
    return a;
  }

  // Binds call arguments to parameter names; absent ones stay nullopt.
  static Result<std::vector<std::optional<Value>>> bind(const Args& a, std::initializer_list<std::string_view> names,
                                                        std::string_view fn, int line) {
    std::vector<std::optional<Value>> out(names.size());
    if (a.pos.size() > names.size())
      return error(line, std::string(fn) + "() takes at most " + std::to_string(names.size()) + " arguments");
    for (std::size_t k = 0; k < a.pos.size(); ++k) out[k] = a.pos[k];
    for (const auto& [k, v] : a.kw) {
      auto it = std::find(names.begin(), names.end(), k);
      if (it == names.end()) return error(line, std::string(fn) + "() got an unexpected keyword argument '" + k + "'");
      out[static_cast<std::size_t>(it - names.begin())] = v;
    }
    return out;
  }

  static bool is_int(const Value& v) { return v.is(Type::kInt) || v.is(Type::kBool); }

  Result<Value> get_attr(const Value& obj, const std::string& name, int line) {
    switch (obj.type) {
      case Type::kUndefined: return undefined_error(obj, line);
      case Type::kDict: {
        static constexpr std::string_view kMethods[] = {"items", "keys", "values", "get"};
        if (std::find(std::begin(kMethods), std::end(kMethods), name) != std::end(kMethods))
          return callable(name, obj);
        const Value* v = obj.dict->find(name);
        return v ? *v : undefined("'dict object' has no attribute '" + name + "'");
      }
      case Type::kNamespace: {
        const Value* v = obj.ns->attrs.find(name);
        return v ? *v : undefined("'Namespace' has no attribute '" + name + "'");
      }
      case Type::kString: {
        static constexpr std::string_view kMethods[] = {"strip", "lstrip", "rstrip", "split", "rsplit",
                                                         "startswith", "endswith", "upper", "lower", "title",
                                                         "capitalize", "replace", "find", "count", "join"};
        if (std::find(std::begin(kMethods), std::end(kMethods), name) != std::end(kMethods))
          return callable(name, obj);
        break;
      }
      default: break;
    }
    return undefined(std::string("'") + type_name(obj) + " object' has no attribute '" + name + "'");
  }

  Result<Value> get_item(const Value& obj, const Value& key, int line) {
    if (obj.is(Type::kUndefined)) return undefined_error(obj, line);
    if (obj.is(Type::kDict) && key.is(Type::kString)) {
      if (const Value* v = obj.dict->find(key.s())) return *v;
    } else if ((obj.is(Type::kList) || obj.is(Type::kString)) && is_int(key)) {
      std::int64_t idx = key.as_int();
      if (obj.is(Type::kList)) {
        const auto n = static_cast<std::int64_t>(obj.list->size());
        if (idx < 0) idx += n;
        if (idx >= 0 && idx < n) return (*obj.list)[static_cast<std::size_t>(idx)];
        return undefined(std::string(type_name(obj)) + " object has no element " + std::to_string(key.as_int()));
      }
      const std::u32string u = to_u32(obj.s());
      const auto n = static_cast<std::int64_t>(u.size());
      if (idx < 0) idx += n;
      if (idx >= 0 && idx < n) return string_value(to_u8(u.substr(static_cast<std::size_t>(idx), 1)));
      return undefined("str object has no element " + std::to_string(key.as_int()));
    }
    if (key.is(Type::kString)) return get_attr(obj, key.s(), line);
    return undefined(std::string(type_name(obj)) + " object has no element " + to_str(key));
  }

  // Python's slice.indices(): the positions a[start:stop:step] visits.
  static Result<std::vector<std::int64_t>> slice_indices(std::int64_t n, const std::optional<Value> parts[3], int line,
                                                         std::size_t max_items) {
    std::int64_t v[3] = {0, 0, 1};
    bool given[3] = {false, false, false};
    for (int k = 0; k < 3; ++k) {
      if (!parts[k] || parts[k]->is(Type::kNone)) continue;
      if (!is_int(*parts[k])) return error(line, "slice indices must be integers or None");
      v[k] = parts[k]->as_int();
      given[k] = true;
    }
    const std::int64_t st = v[2];
    if (st == 0) return error(line, "slice step cannot be zero");
    auto adjust = [&](std::int64_t x) {
      if (x < 0) {
        x += n;
        if (x < 0) x = st < 0 ? -1 : 0;
      } else if (x >= n) {
        x = st < 0 ? n - 1 : n;
      }
      return x;
    };
    std::int64_t start = given[0] ? adjust(v[0]) : (st < 0 ? n - 1 : 0);
    std::int64_t stop = given[1] ? adjust(v[1]) : (st < 0 ? -1 : n);
    std::vector<std::int64_t> out;
    for (std::int64_t k = start; st > 0 ? k < stop : k > stop; k += st) {
      out.push_back(k);
      if (out.size() > max_items) break;
      if ((st > 0 && k > INT64_MAX - st) || (st < 0 && k < INT64_MIN - st)) break;
    }
    return out;
  }

  Result<Value> eval_slice(const Expr& e) {
    AIRLOCK_ASSIGN_OR_RETURN(Value obj, eval(*e.kids[0]));
    std::optional<Value> parts[3];
    for (int k = 0; k < 3; ++k) {
      if (!e.kids[static_cast<std::size_t>(k) + 1]) continue;
      AIRLOCK_ASSIGN_OR_RETURN(Value v, eval(*e.kids[static_cast<std::size_t>(k) + 1]));
      parts[k] = std::move(v);
    }
    if (obj.is(Type::kUndefined)) return undefined_error(obj, e.line);
    if (obj.is(Type::kList)) {
      AIRLOCK_ASSIGN_OR_RETURN(auto idx, slice_indices(static_cast<std::int64_t>(obj.list->size()), parts, e.line,
                                                       lim_.max_list_items));
      List out;
      for (std::int64_t k : idx) out.push_back((*obj.list)[static_cast<std::size_t>(k)]);
      return make_list(std::move(out), obj.tuple);
    }
    if (obj.is(Type::kString)) {
      const std::u32string u = to_u32(obj.s());
      AIRLOCK_ASSIGN_OR_RETURN(auto idx, slice_indices(static_cast<std::int64_t>(u.size()), parts, e.line,
                                                       lim_.max_output_bytes));
      std::u32string out;
      for (std::int64_t k : idx) out.push_back(u[static_cast<std::size_t>(k)]);
      return make_string(to_u8(out));
    }
    return undefined(std::string(type_name(obj)) + " object is not subscriptable");
  }

  Result<Value> eval_compare(const Expr& e) {
    AIRLOCK_ASSIGN_OR_RETURN(Value left, eval(*e.kids[0]));
    for (std::size_t k = 0; k < e.ops.size(); ++k) {
      AIRLOCK_ASSIGN_OR_RETURN(Value right, eval(*e.kids[k + 1]));
      AIRLOCK_ASSIGN_OR_RETURN(bool r, compare(e.ops[k], left, right, e.line));
      if (!r) return boolean(false);
      left = std::move(right);
    }
    return boolean(true);
  }

  Result<bool> less(const Value& a, const Value& b, int line) {
    if (a.is(Type::kUndefined)) return undefined_error(a, line);
    if (b.is(Type::kUndefined)) return undefined_error(b, line);
    if (a.numeric() && b.numeric()) {
      if (a.is(Type::kFloat) || b.is(Type::kFloat)) return a.as_double() < b.as_double();
      return a.as_int() < b.as_int();
    }
    if (a.is(Type::kString) && b.is(Type::kString)) {
      AIRLOCK_RETURN_IF_ERROR(step(1 + std::min(a.s().size(), b.s().size()) / 64));
      return a.s() < b.s();
    }
    if (a.is(Type::kList) && b.is(Type::kList)) {
      const List& x = *a.list;
      const List& y = *b.list;
      for (std::size_t k = 0; k < x.size() && k < y.size(); ++k) {
        AIRLOCK_RETURN_IF_ERROR(step());
        if (equal(x[k], y[k])) continue;
        return less(x[k], y[k], line);
      }
      return x.size() < y.size();
    }
    return error(line, std::string("'<' not supported between instances of '") + type_name(a) + "' and '" +
                           type_name(b) + "'");
  }

  Result<bool> contains(const Value& container, const Value& item, int line) {
    switch (container.type) {
      case Type::kUndefined: return false;
      case Type::kString:
        if (!item.is(Type::kString))
          return error(line, std::string("'in <string>' requires string as left operand, not ") + type_name(item));
        AIRLOCK_RETURN_IF_ERROR(step(1 + (container.s().size() + item.s().size()) / 64));
        // memmem (two-way search) is linear; std::string::find can take
        // the product of the two lengths ('a'*n in 'a'*m + 'b').
        return item.s().empty() || ::memmem(container.s().data(), container.s().size(), item.s().data(),
                                            item.s().size()) != nullptr;
      case Type::kList:
        AIRLOCK_RETURN_IF_ERROR(step(container.list->size()));
        for (const Value& x : *container.list)
          if (equal(x, item)) return true;
        return false;
      case Type::kDict: return item.is(Type::kString) && container.dict->find(item.s()) != nullptr;
      default:
        return error(line, std::string("argument of type '") + type_name(container) + "' is not iterable");
    }
  }

  Result<bool> compare(const std::string& op, const Value& a, const Value& b, int line) {
    if (op == "==") return equal(a, b);
    if (op == "!=") return !equal(a, b);
    if (op == "<") return less(a, b, line);
    if (op == ">") return less(b, a, line);
    if (op == "<=") {
      AIRLOCK_ASSIGN_OR_RETURN(bool gt, less(b, a, line));
      return !gt;
    }
    if (op == ">=") {
      AIRLOCK_ASSIGN_OR_RETURN(bool lt, less(a, b, line));
      return !lt;
    }
    AIRLOCK_ASSIGN_OR_RETURN(bool in, contains(b, a, line));
    return op == "in" ? in : !in;
  }

  Result<Value> int_result(std::int64_t a, std::int64_t b, const std::string& op, int line) {
    std::int64_t r = 0;
    bool overflow = false;
    if (op == "+") overflow = __builtin_add_overflow(a, b, &r);
    else if (op == "-") overflow = __builtin_sub_overflow(a, b, &r);
    else if (op == "*") overflow = __builtin_mul_overflow(a, b, &r);
    else if (op == "//" || op == "%") {
      if (b == 0) return error(line, "integer division or modulo by zero");
      if (a == INT64_MIN && b == -1) return op == "%" ? Result<Value>(integer(0)) : overflow_error(line);
      std::int64_t q = a / b, m = a % b;
      if (m != 0 && ((m < 0) != (b < 0))) {
        --q;
        m += b;
      }
      r = op == "//" ? q : m;
    } else if (op == "**") {
      if (b < 0) return float_power(static_cast<double>(a), static_cast<double>(b), line);
      r = 1;
      std::int64_t base = a;
      for (std::int64_t e = b; e > 0 && !overflow; e >>= 1) {
        if (e & 1) overflow = __builtin_mul_overflow(r, base, &r);
        if (e > 1 && !overflow) overflow = __builtin_mul_overflow(base, base, &base);
      }
    }
    if (overflow) return overflow_error(line);
    return integer(r);
  }

  // An integer result beyond int64, which Python would hold exactly.
  Result<Value> overflow_error(int line) { return error(line, "integer overflow (Python would use a big integer)"); }

  // float ** float as Python computes it: 0.0 to a negative power and a
  // finite result too large for a double are errors there (ZeroDivisionError,
  // OverflowError), and a negative number to a fractional power is a complex
  // number; std::pow would give inf or nan, printed as if all were well.
  Result<Value> float_power(double x, double y, int line) {
    if (x == 0 && y < 0) return error(line, "0.0 cannot be raised to a negative power");
    if (x < 0 && std::isfinite(y) && y != std::trunc(y))
      return error(line, "a negative number to a fractional power is a complex number (not supported)");
    const double r = std::pow(x, y);
    if (std::isinf(r) && std::isfinite(x) && std::isfinite(y)) return error(line, "numerical result out of range");
    return floating(r);
  }

  Result<Value> binary(const std::string& op, const Value& a, const Value& b, int line) {
    if (op == "~") return make_string(to_str(a) + to_str(b));
    if (a.is(Type::kUndefined)) return undefined_error(a, line);
    if (b.is(Type::kUndefined)) return undefined_error(b, line);
    if (a.numeric() && b.numeric()) {
      if (op == "/") {
        if (b.as_double() == 0) return error(line, "division by zero");
        return floating(a.as_double() / b.as_double());
      }
      if (!a.is(Type::kFloat) && !b.is(Type::kFloat)) return int_result(a.as_int(), b.as_int(), op, line);
      const double x = a.as_double(), y = b.as_double();
      if (op == "+") return floating(x + y);
      if (op == "-") return floating(x - y);
      if (op == "*") return floating(x * y);
      if (op == "**") return float_power(x, y, line);
      if (y == 0) return error(line, "float division by zero");
      // CPython's float_divmod.
      double m = std::fmod(x, y);
      double div = (x - m) / y;
      if (m != 0) {
        if ((y < 0) != (m < 0)) {
          m += y;
          div -= 1.0;
        }
      } else {
        m = std::copysign(0.0, y);
      }
      if (op == "%") return floating(m);
      double fl = std::copysign(0.0, x / y);
      if (div != 0) {
        fl = std::floor(div);
        if (div - fl > 0.5) fl += 1.0;
      }
      return floating(fl);
    }
    if (op == "+" && a.is(Type::kString) && b.is(Type::kString)) {
      if (a.s().size() + b.s().size() > lim_.max_output_bytes) return resource_exhausted("chat template: string too long");
      return make_string(a.s() + b.s());
    }
    if (op == "+" && a.is(Type::kList) && b.is(Type::kList)) {
      if (a.list->size() + b.list->size() > lim_.max_list_items) return resource_exhausted("chat template: list too long");
      List out = *a.list;
      out.insert(out.end(), b.list->begin(), b.list->end());
      return make_list(std::move(out), a.tuple && b.tuple);
    }
    if (op == "*" && (is_int(a) || is_int(b)) && (a.is(Type::kString) || a.is(Type::kList) ||
                                                  b.is(Type::kString) || b.is(Type::kList))) {
      const Value& seq = is_int(a) ? b : a;
      const std::int64_t times = std::max<std::int64_t>(0, is_int(a) ? a.as_int() : b.as_int());
      const std::size_t unit = seq.is(Type::kString) ? seq.s().size() : seq.list->size();
      const std::size_t cap = seq.is(Type::kString) ? lim_.max_output_bytes : lim_.max_list_items;
      if (unit != 0 && static_cast<std::uint64_t>(times) > cap / unit)
        return resource_exhausted("chat template: repeated sequence too long");
      if (unit == 0) return seq.is(Type::kString) ? make_string(std::string()) : make_list(List(), seq.tuple);
      if (seq.is(Type::kString)) {
        std::string out;
        for (std::int64_t k = 0; k < times; ++k) out += seq.s();
        return make_string(std::move(out));
      }
      List out;
      for (std::int64_t k = 0; k < times; ++k) out.insert(out.end(), seq.list->begin(), seq.list->end());
      return make_list(std::move(out), seq.tuple);
    }
    return error(line, "unsupported operand type(s) for " + op + ": '" + type_name(a) + "' and '" + type_name(b) +
                           "'");
  }

  // ---- calls

  Result<Value> eval_call(const Expr& e) {
    AIRLOCK_ASSIGN_OR_RETURN(Value fn, eval(*e.kids[0]));
    AIRLOCK_ASSIGN_OR_RETURN(Args a, eval_args(e, 1));
    if (fn.is(Type::kUndefined)) return undefined_error(fn, e.line);
    if (!fn.is(Type::kCallable)) return error(e.line, std::string("'") + type_name(fn) + "' object is not callable");
    const Callable& c = *fn.fn;
    if (c.macro) return call_macro(*c.macro, a, e.line);
    if (!c.self.is(Type::kUndefined)) return call_method(c.name, c.self, a, e.line);
    return call_global(c.name, a, e.line);
  }

  Result<Value> call_macro(const Node& m, const Args& a, int line) {
    Depth d(&depth_);
    AIRLOCK_RETURN_IF_ERROR(check_depth());
    if (a.pos.size() > m.targets.size())
      return error(line, "macro '" + m.text + "' takes not more than " + std::to_string(m.targets.size()) +
                             " argument(s)");
    Frame f;
    for (std::size_t k = 0; k < m.targets.size(); ++k) {
      if (k < a.pos.size()) f.emplace_back(m.targets[k], a.pos[k]);
    }
    for (const auto& [k, v] : a.kw) {
      if (std::find(m.targets.begin(), m.targets.end(), k) == m.targets.end())
        return error(line, "macro '" + m.text + "' takes no keyword argument '" + k + "'");
      set_in(&f, k, v);
    }
    const std::size_t saved_base = scope_base_;
    scope_base_ = frames_.size();
    frames_.push_back(std::move(f));
    Status s = Status::ok();
    // Defaults are evaluated in the macro's scope, after the given arguments.
    for (std::size_t k = 0; k < m.targets.size() && s.is_ok(); ++k) {
      bool given = false;
      for (const auto& [n, v] : frames_.back()) given = given || n == m.targets[k];
      if (given) continue;
      if (!m.defaults[k]) {
        frames_.back().emplace_back(m.targets[k], undefined("'" + m.targets[k] + "' is undefined"));
        continue;
      }
      Result<Value> dv = eval(*m.defaults[k]);
      if (!dv.is_ok()) s = dv.status();
      else frames_.back().emplace_back(m.targets[k], std::move(dv).value());
    }
    std::string captured;
    std::string* saved_out = out_;
    out_ = &captured;
    if (s.is_ok()) s = exec_body(m.bodies[0]);
    out_ = saved_out;
    flow_ = Flow::kNormal;
    frames_.pop_back();
    scope_base_ = saved_base;
    AIRLOCK_RETURN_IF_ERROR(s);
    return make_string(std::move(captured));
  }

  Result<Value> call_global(const std::string& name, const Args& a, int line) {
    if (name == "raise_exception") {
      AIRLOCK_ASSIGN_OR_RETURN(auto p, bind(a, {"message"}, name, line));
      return invalid_argument(p[0] ? to_str(*p[0]) : std::string());
    }
    if (name == "strftime_now") {
      AIRLOCK_ASSIGN_OR_RETURN(auto p, bind(a, {"format"}, name, line));
      if (!p[0] || !p[0]->is(Type::kString)) return error(line, "strftime_now() needs a format string");
      if (p[0]->s().size() > 256) return error(line, "strftime_now() format too long");
      const std::time_t now = in_.now_unix_s >= 0 ? static_cast<std::time_t>(in_.now_unix_s) : std::time(nullptr);
      std::tm tm{};
      localtime_r(&now, &tm);
      char buf[1024];
      const std::size_t n = std::strftime(buf, sizeof buf, p[0]->s().c_str(), &tm);
      return make_string(std::string(buf, n));
    }
    if (name == "range") {
      if (!a.kw.empty() || a.pos.empty() || a.pos.size() > 3) return error(line, "range() takes 1 to 3 integers");
      for (const Value& v : a.pos)
        if (!is_int(v)) return error(line, "range() arguments must be integers");
      std::int64_t start = 0, stop = 0, st = 1;
      if (a.pos.size() == 1) stop = a.pos[0].as_int();
      else {
        start = a.pos[0].as_int();
        stop = a.pos[1].as_int();
        if (a.pos.size() == 3) st = a.pos[2].as_int();
      }
      if (st == 0) return error(line, "range() arg 3 must not be zero");
      List out;
      for (std::int64_t k = start; st > 0 ? k < stop : k > stop; k += st) {
        if (out.size() >= lim_.max_list_items) return resource_exhausted("chat template: range too big");
        out.push_back(integer(k));
        if ((st > 0 && k > INT64_MAX - st) || (st < 0 && k < INT64_MIN - st)) break;
      }
      return make_list(std::move(out));
    }
    if (name == "namespace" || name == "dict") {
      Dict d;
      for (const Value& v : a.pos) {
        if (!v.is(Type::kDict)) return error(line, name + "() takes a mapping and keyword arguments");
        for (const auto& [k, x] : v.dict->entries) d.set(k, x);
      }
      for (const auto& [k, v] : a.kw) d.set(k, v);
      if (name == "dict") return make_dict(std::move(d));
      AIRLOCK_RETURN_IF_ERROR(charge(256 + d.entries.size() * sizeof(Value)));
      Value v;
      v.type = Type::kNamespace;
      v.ns = std::make_shared<Namespace>();
      v.ns->attrs = std::move(d);
      namespaces_.push_back(v.ns);
      return v;
    }
    if (name == "loop.cycle") return error(line, "loop.cycle has no receiver");
    return error(line, "unknown function '" + name + "'");
  }

  Result<Value> make_strings(const std::vector<std::u32string>& parts) {
    List out;
    for (const auto& p : parts) {
      AIRLOCK_ASSIGN_OR_RETURN(Value v, make_string(to_u8(p)));
      out.push_back(std::move(v));
    }
    return make_list(std::move(out));
  }

  Result<Value> split(const std::string& s, const std::optional<Value>& sep_v, const std::optional<Value>& max_v,
                      bool from_right, int line) {
    std::int64_t maxsplit = -1;
    if (max_v) {
      if (!is_int(*max_v)) return error(line, "split(): maxsplit must be an integer");
      maxsplit = max_v->as_int();
    }
    std::u32string u = to_u32(s);
    if (from_right) std::reverse(u.begin(), u.end());
    std::vector<std::u32string> parts;
    if (!sep_v || sep_v->is(Type::kNone)) {
      std::size_t i = 0;
      while (true) {
        while (i < u.size() && py_space(u[i])) ++i;
        if (i >= u.size()) break;
        if (maxsplit >= 0 && static_cast<std::int64_t>(parts.size()) >= maxsplit) {
          // The rest as it is: Python strips the white space before it, not
          // after ("  a  b  ".split(None, 1) == ['a', 'b  ']).
          parts.push_back(u.substr(i));
          break;
        }
        std::size_t j = i;
        while (j < u.size() && !py_space(u[j])) ++j;
        parts.push_back(u.substr(i, j - i));
        i = j;
      }
    } else {
      if (!sep_v->is(Type::kString)) return error(line, "split(): separator must be a string");
      std::u32string sep = to_u32(sep_v->s());
      if (sep.empty()) return error(line, "empty separator");
      // The search below can take the product of the two lengths: charged
      // so up front ('a'*500000~'b' over a megabyte is refused, not run).
      if (sep.size() <= u.size()) AIRLOCK_RETURN_IF_ERROR(step(1 + (u.size() - sep.size() + 1) * sep.size() / 64));
      if (from_right) std::reverse(sep.begin(), sep.end());
      std::size_t i = 0;
      while (true) {
        const std::size_t at = (maxsplit >= 0 && static_cast<std::int64_t>(parts.size()) >= maxsplit)
                                   ? std::u32string::npos
                                   : u.find(sep, i);
        if (at == std::u32string::npos) {
          parts.push_back(u.substr(i));
          break;
        }
        parts.push_back(u.substr(i, at - i));
        i = at + sep.size();
      }
    }
    if (from_right) {
      for (auto& p : parts) std::reverse(p.begin(), p.end());
      std::reverse(parts.begin(), parts.end());
    }
    if (parts.size() > lim_.max_list_items) return resource_exhausted("chat template: list too long");
    return make_strings(parts);
  }

  Result<Value> replace(const std::string& s, const std::string& old, const std::string& with, std::int64_t count) {
    std::string out;
    if (old.empty()) {
      std::int64_t done = 0;
      std::size_t i = 0;
      auto insert = [&]() -> Status {
        if (count >= 0 && done >= count) return Status::ok();
        ++done;
        if (out.size() + with.size() > lim_.max_output_bytes) return resource_exhausted("chat template: string too long");
        out += with;
        return Status::ok();
      };
      AIRLOCK_RETURN_IF_ERROR(insert());
      while (i < s.size()) {
        const std::size_t at = i;
        next_cp(s, &i);
        out.append(s, at, i - at);
        AIRLOCK_RETURN_IF_ERROR(insert());
      }
      return make_string(std::move(out));
    }
    std::size_t i = 0;
    std::int64_t done = 0;
    while (true) {
      const std::size_t at = (count >= 0 && done >= count) ? std::string::npos : find_bytes(s, old, i);
      if (at == std::string::npos) break;
      out.append(s, i, at - i);
      out += with;
      if (out.size() > lim_.max_output_bytes) return resource_exhausted("chat template: string too long");
      i = at + old.size();
      ++done;
    }
    out.append(s, i, std::string::npos);
    return make_string(std::move(out));
  }

  Result<Value> call_method(const std::string& name, const Value& self, const Args& a, int line) {
    AIRLOCK_RETURN_IF_ERROR(step());
    if (name == "loop.cycle") {
      if (a.pos.empty()) return error(line, "no items for cycling given");
      return a.pos[static_cast<std::size_t>(self.i % static_cast<std::int64_t>(a.pos.size()))];
    }
    if (self.is(Type::kDict)) {
      if (name == "get") {
        AIRLOCK_ASSIGN_OR_RETURN(auto p, bind(a, {"key", "default"}, name, line));
        if (!p[0]) return error(line, "get() needs a key");
        if (p[0]->is(Type::kString))
          if (const Value* v = self.dict->find(p[0]->s())) return *v;
        return p[1] ? *p[1] : none();
      }
      AIRLOCK_ASSIGN_OR_RETURN(auto p, bind(a, {}, name, line));
      (void)p;
      List out;
      for (const auto& [k, v] : self.dict->entries) {
        if (name == "keys") out.push_back(string_value(k));
        else if (name == "values") out.push_back(v);
        else out.push_back(list_value({string_value(k), v}, true));
      }
      return make_list(std::move(out));
    }
    const std::string& s = self.s();
    if (name == "strip" || name == "lstrip" || name == "rstrip") {
      AIRLOCK_ASSIGN_OR_RETURN(auto p, bind(a, {"chars"}, name, line));
      std::optional<std::u32string> chars;
      if (p[0] && !p[0]->is(Type::kNone)) {
        if (!p[0]->is(Type::kString)) return error(line, name + " arg must be None or str");
        chars = to_u32(p[0]->s());
      }
      return make_string(to_u8(py_strip(to_u32(s), chars ? &*chars : nullptr, name != "rstrip", name != "lstrip")));
    }
    if (name == "split" || name == "rsplit") {
      AIRLOCK_ASSIGN_OR_RETURN(auto p, bind(a, {"sep", "maxsplit"}, name, line));
      return split(s, p[0], p[1], name == "rsplit", line);
    }
    if (name == "startswith" || name == "endswith") {
      AIRLOCK_ASSIGN_OR_RETURN(auto p, bind(a, {"prefix"}, name, line));
      if (!p[0]) return error(line, name + "() takes a string");
      List cands = p[0]->is(Type::kList) ? *p[0]->list : List{*p[0]};
      for (const Value& c : cands) {
        if (!c.is(Type::kString)) return error(line, name + "() takes a string or a tuple of strings");
        const std::string& x = c.s();
        if (x.size() > s.size()) continue;
        if (name == "startswith" ? s.compare(0, x.size(), x) == 0 : s.compare(s.size() - x.size(), x.size(), x) == 0)
          return boolean(true);
      }
      return boolean(false);
    }
    if (name == "upper" || name == "lower" || name == "title" || name == "capitalize") {
      AIRLOCK_ASSIGN_OR_RETURN(auto p, bind(a, {}, name, line));
      (void)p;
      return make_string(change_case(s, name == "upper" ? Case::kUpper : name == "lower" ? Case::kLower
                                                       : name == "title" ? Case::kTitle : Case::kCapitalize));
    }
    if (name == "replace") {
      AIRLOCK_ASSIGN_OR_RETURN(auto p, bind(a, {"old", "new", "count"}, name, line));
      if (!p[0] || !p[1] || !p[0]->is(Type::kString) || !p[1]->is(Type::kString))
        return error(line, "replace() takes two strings");
      if (p[2] && !is_int(*p[2])) return error(line, "replace(): count must be an integer");
      return replace(s, p[0]->s(), p[1]->s(), p[2] ? p[2]->as_int() : -1);
    }
    if (name == "find" || name == "count") {
      AIRLOCK_ASSIGN_OR_RETURN(auto p, bind(a, {"sub"}, name, line));
      if (!p[0] || !p[0]->is(Type::kString)) return error(line, name + "() takes a string");
      const std::string& sub = p[0]->s();
      if (name == "find") {
        const std::size_t at = find_bytes(s, sub);
        return integer(at == std::string::npos ? -1 : static_cast<std::int64_t>(cp_count(s.substr(0, at))));
      }
      if (sub.empty()) return integer(static_cast<std::int64_t>(cp_count(s)) + 1);
      std::int64_t n = 0;
      for (std::size_t at = find_bytes(s, sub); at != std::string::npos; at = find_bytes(s, sub, at + sub.size())) ++n;
      return integer(n);
    }
    if (name == "join") {
      AIRLOCK_ASSIGN_OR_RETURN(auto p, bind(a, {"iterable"}, name, line));
      if (!p[0]) return error(line, "join() takes an iterable");
      AIRLOCK_ASSIGN_OR_RETURN(List items, iterate(*p[0], line));
      std::string out;
      for (std::size_t k = 0; k < items.size(); ++k) {
        if (!items[k].is(Type::kString))
          return error(line, "sequence item " + std::to_string(k) + ": expected str instance, " +
                                 type_name(items[k]) + " found");
        if (k) out += s;
        out += items[k].s();
        if (out.size() > lim_.max_output_bytes) return resource_exhausted("chat template: string too long");
      }
      return make_string(std::move(out));
    }
    return error(line, "unknown method '" + name + "'");
  }

  // ---- filters

  // jinja2's attribute lookup for filters: "a.b" walks attributes, digits index.
  Result<Value> attribute_path(const Value& v, const std::string& path, int line) {
    Value cur = v;
    std::size_t start = 0;
    while (true) {
      const std::size_t dot = path.find('.', start);
      const std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
      Value key = string_value(part);
      if (!part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; })) {
        std::int64_t idx = 0;
        if (std::from_chars(part.data(), part.data() + part.size(), idx).ec == std::errc()) key = integer(idx);
      }
      AIRLOCK_ASSIGN_OR_RETURN(cur, get_item(cur, key, line));
      if (dot == std::string::npos) return cur;
      start = dot + 1;
    }
  }

  Result<Value> apply_filter(const std::string& name, const Value& v, const Args& a, int line) {
    // map('map', 'map', ...) recurses here once per argument.
    Depth filter_depth(&depth_);
    AIRLOCK_RETURN_IF_ERROR(check_depth());
    AIRLOCK_RETURN_IF_ERROR(step(1 + a.pos.size()));
    auto str_arg = [&](const std::optional<Value>& p, const char* what) -> Result<std::string> {
      if (!p) return std::string();
      if (!p->is(Type::kString)) return error(line, name + "(): " + what + " must be a string");
      return p->s();
    };
    if (name == "trim") {
      AIRLOCK_ASSIGN_OR_RETURN(auto p, bind(a, {"chars"}, name, line));
      Args inner;
      if (p[0]) inner.pos.push_back(*p[0]);
      AIRLOCK_ASSIGN_OR_RETURN(Value s, make_string(to_str(v)));
      return call_method("strip", s, inner, line);
    }
    if (name == "length" || name == "count") {
      switch (v.type) {
        case Type::kUndefined: return integer(0);
        case Type::kString: return integer(static_cast<std::int64_t>(cp_count(v.s())));
        case Type::kList: return integer(static_cast<std::int64_t>(v.list->size()));
        case Type::kDict: return integer(static_cast<std::int64_t>(v.dict->entries.size()));
        default: return error(line, std::string("object of type '") + type_name(v) + "' has no len()");
      }
    }
    if (name == "title") {
      AIRLOCK_ASSIGN_OR_RETURN(auto p, bind(a, {}, name, line));
      (void)p;
      return make_string(jinja_title(to_str(v)));
    }
    if (name == "upper" || name == "lower" || name == "capitalize") {
      AIRLOCK_ASSIGN_OR_RETURN(Value s, make_string(to_str(v)));
      return call_method(name, s, a, line);
    }
    if (name == "string") return make_string(to_str(v));
    if (name == "safe") return v.is(Type::kString) ? v : make_string(to_str(v));
    if (name == "tojson") {
      AIRLOCK_ASSIGN_OR_RETURN(auto p, bind(a, {"ensure_ascii", "indent", "separators", "sort_keys"}, name, line));
      JsonStyle st;
      st.ensure_ascii = p[0] && truthy(*p[0]);
      st.sort_keys = p[3] && truthy(*p[3]);
      if (p[1] && !p[1]->is(Type::kNone)) {
        if (p[1]->is(Type::kString)) st.indent = p[1]->s();
        else if (is_int(*p[1])) st.indent = std::string(static_cast<std::size_t>(std::clamp<std::int64_t>(p[1]->as_int(), 0, 64)), ' ');
        else return error(line, "tojson(): indent must be an integer or a string");
        st.item_sep = ",";
      }
      if (p[2] && !p[2]->is(Type::kNone)) {
        if (!p[2]->is(Type::kList) || p[2]->list->size() != 2 || !(*p[2]->list)[0].is(Type::kString) ||
            !(*p[2]->list)[1].is(Type::kString))
          return error(line, "tojson(): separators must be a pair of strings");
        st.item_sep = (*p[2]->list)[0].s();
        st.key_sep = (*p[2]->list)[1].s();
      }
      std::string out;
      std::string bad = to_json(v, st, 0, &out);
      if (!bad.empty()) return error(line, "Object of type " + bad + " is not JSON serializable");
      return make_string(std::move(out));
    }
    if (name == "default" || name == "d") {
      AIRLOCK_ASSIGN_OR_RETURN(auto p, bind(a, {"default_value", "boolean"}, name, line));
      const bool use_default = v.is(Type::kUndefined) || (p[1] && truthy(*p[1]) && !truthy(v));
      if (!use_default) return v;
      return p[0] ? *p[0] : string_value("");
    }
    if (name == "first" || name == "last") {
      AIRLOCK_ASSIGN_OR_RETURN(List items, iterate(v, line));
      if (items.empty()) return undefined("No " + name + " item, sequence was empty.");
      return name == "first" ? items.front() : items.back();
    }
    if (name == "join") {
      AIRLOCK_ASSIGN_OR_RETURN(auto p, bind(a, {"d", "attribute"}, name, line));
      AIRLOCK_ASSIGN_OR_RETURN(std::string sep, str_arg(p[0], "separator"));
      AIRLOCK_ASSIGN_OR_RETURN(List items, iterate(v, line));
      std::string out;
      for (std::size_t k = 0; k < items.size(); ++k) {
        Value item = items[k];
        if (p[1]) {
          AIRLOCK_ASSIGN_OR_RETURN(item, attribute_path(item, to_str(*p[1]), line));
        }
        if (k) out += sep;
        out += to_str(item);
        if (out.size() > lim_.max_output_bytes) return resource_exhausted("chat template: string too long");
      }
      return make_string(std::move(out));
    }
    if (name == "replace") {
      AIRLOCK_ASSIGN_OR_RETURN(auto p, bind(a, {"old", "new", "count"}, name, line));
      AIRLOCK_ASSIGN_OR_RETURN(std::string old, str_arg(p[0], "old"));
      AIRLOCK_ASSIGN_OR_RETURN(std::string with, str_arg(p[1], "new"));
      if (p[2] && !p[2]->is(Type::kNone) && !is_int(*p[2])) return error(line, "replace(): count must be an integer");
      return replace(to_str(v), old, with, p[2] && is_int(*p[2]) ? p[2]->as_int() : -1);
    }
    if (name == "int" || name == "float") {
      AIRLOCK_ASSIGN_OR_RETURN(auto p, bind(a, {"default"}, name, line));
      const Value fallback = p[0] ? *p[0] : (name == "int" ? integer(0) : floating(0));
      if (v.is(Type::kUndefined)) return undefined_error(v, line);
      double d = 0;
      if (v.numeric()) {
        d = v.as_double();
        if (name == "int" && is_int(v)) return integer(v.as_int());
        // int(inf) raises in Python; int(nan) falls back to the default.
        if (name == "int" && std::isinf(d)) return error(line, "cannot convert float infinity to integer");
      } else if (v.is(Type::kString)) {
        std::string t = to_u8(py_strip(to_u32(v.s()), nullptr, true, true));
        t.erase(std::remove(t.begin(), t.end(), '_'), t.end());
        std::int64_t iv = 0;
        const char* b = t.data() + (!t.empty() && t[0] == '+' ? 1 : 0);
        auto r = std::from_chars(b, t.data() + t.size(), iv);
        if (name == "int" && !t.empty() && r.ptr == t.data() + t.size()) {
          if (r.ec == std::errc()) return integer(iv);
          if (r.ec == std::errc::result_out_of_range) return overflow_error(line);
        }
        char* end = nullptr;
        d = std::strtod(t.c_str(), &end);
        if (t.empty() || end != t.c_str() + t.size() || t.find_first_of("xXpP") != std::string::npos) return fallback;
        // A string that reads as inf or nan, or overflows a double ("1e400"):
        // Python's int(float(...)) fails, and the default is taken.
        if (name == "int" && !std::isfinite(d)) return fallback;
      } else {
        return fallback;
      }
      if (name == "float") return floating(d);
      if (std::isnan(d)) return fallback;
      // Exactly the doubles whose integer part fits int64 (-2^63 does,
      // 2^63 does not); Python keeps the rest exactly.
      if (!(d >= -0x1p63 && d < 0x1p63)) return overflow_error(line);
      return integer(static_cast<std::int64_t>(d));
    }
    if (name == "abs") {
      if (is_int(v)) {
        if (v.as_int() == INT64_MIN) return overflow_error(line);
        return integer(v.as_int() < 0 ? -v.as_int() : v.as_int());
      }
      if (v.is(Type::kFloat)) return floating(std::fabs(v.f));
      return error(line, std::string("bad operand type for abs(): '") + type_name(v) + "'");
    }
    if (name == "round") {
      // Python's round(): half to even, on the exact binary value.
      AIRLOCK_ASSIGN_OR_RETURN(auto p, bind(a, {"precision", "method"}, name, line));
      if (!v.numeric()) return error(line, "round(): value must be a number");
      if (p[0] && !is_int(*p[0])) return error(line, "round(): precision must be an integer");
      const std::int64_t prec = p[0] ? std::clamp<std::int64_t>(p[0]->as_int(), -308, 308) : 0;
      AIRLOCK_ASSIGN_OR_RETURN(std::string method, str_arg(p[1], "method"));
      const double x = v.as_double();
      if (method.empty() || method == "common") {
        if (is_int(v) && prec >= 0) return integer(v.as_int());
        if (!std::isfinite(x)) return floating(x);
        if (prec > 0) {
          char buf[512];
          std::snprintf(buf, sizeof buf, "%.*f", static_cast<int>(std::min<std::int64_t>(prec, 100)), x);
          return floating(std::strtod(buf, nullptr));
        }
        const double scale = std::pow(10.0, static_cast<double>(-prec));
        return floating(std::nearbyint(x / scale) * scale);
      }
      const double scale = std::pow(10.0, static_cast<double>(prec));
      if (method == "floor") return floating(std::floor(x * scale) / scale);
      if (method == "ceil") return floating(std::ceil(x * scale) / scale);
      return error(line, "round(): method must be common, ceil or floor");
    }
    if (name == "items") {
      if (v.is(Type::kUndefined)) return make_list({});
      if (!v.is(Type::kDict)) return error(line, "Can only get item pairs from a mapping.");
      return call_method("items", v, {}, line);
    }
    if (name == "list") {
      AIRLOCK_ASSIGN_OR_RETURN(List items, iterate(v, line));
      return make_list(std::move(items));
    }
    if (name == "reverse") {
      if (v.is(Type::kString)) {
        std::u32string u = to_u32(v.s());
        std::reverse(u.begin(), u.end());
        return make_string(to_u8(u));
      }
      AIRLOCK_ASSIGN_OR_RETURN(List items, iterate(v, line));
      std::reverse(items.begin(), items.end());
      return make_list(std::move(items));
    }
    if (name == "select" || name == "reject" || name == "selectattr" || name == "rejectattr") {
      const bool by_attr = name == "selectattr" || name == "rejectattr";
      const bool keep_if = name == "select" || name == "selectattr";
      AIRLOCK_ASSIGN_OR_RETURN(List items, iterate(v, line));
      std::size_t next_arg = 0;
      std::string attr;
      if (by_attr) {
        if (a.pos.empty() || !a.pos[0].is(Type::kString)) return error(line, name + "() needs an attribute name");
        attr = a.pos[0].s();
        next_arg = 1;
      }
      std::string test;
      Args test_args;
      if (a.pos.size() > next_arg) {
        if (!a.pos[next_arg].is(Type::kString)) return error(line, name + "(): test name must be a string");
        test = a.pos[next_arg].s();
        test_args.pos.assign(a.pos.begin() + static_cast<std::ptrdiff_t>(next_arg) + 1, a.pos.end());
      }
      List out;
      for (const Value& item : items) {
        AIRLOCK_RETURN_IF_ERROR(step());
        Value probe = item;
        if (by_attr) {
          AIRLOCK_ASSIGN_OR_RETURN(probe, attribute_path(item, attr, line));
        }
        bool pass = truthy(probe);
        if (!test.empty()) {
          AIRLOCK_ASSIGN_OR_RETURN(pass, run_test(test, probe, test_args, line));
        }
        if (pass == keep_if) out.push_back(item);
      }
      return make_list(std::move(out));
    }
    if (name == "map") {
      AIRLOCK_ASSIGN_OR_RETURN(List items, iterate(v, line));
      std::optional<Value> attr, dflt;
      for (const auto& [k, x] : a.kw) {
        if (k == "attribute") attr = x;
        else if (k == "default") dflt = x;
        else return error(line, "map() got an unexpected keyword argument '" + k + "'");
      }
      List out;
      if (attr) {
        for (const Value& item : items) {
          AIRLOCK_ASSIGN_OR_RETURN(Value x, attribute_path(item, to_str(*attr), line));
          out.push_back(x.is(Type::kUndefined) && dflt ? *dflt : x);
        }
        return make_list(std::move(out));
      }
      if (a.pos.empty() || !a.pos[0].is(Type::kString)) return error(line, "map() needs a filter name or attribute=");
      Args rest;
      AIRLOCK_RETURN_IF_ERROR(charge((a.pos.size() - 1) * sizeof(Value)));
      rest.pos.assign(a.pos.begin() + 1, a.pos.end());
      for (const Value& item : items) {
        AIRLOCK_ASSIGN_OR_RETURN(Value x, apply_filter(a.pos[0].s(), item, rest, line));
        out.push_back(std::move(x));
      }
      return make_list(std::move(out));
    }
    if (name == "unique" || name == "sort" || name == "min" || name == "max" || name == "dictsort") {
      return sorting_filter(name, v, a, line);
    }
    if (name == "sum") {
      AIRLOCK_ASSIGN_OR_RETURN(auto p, bind(a, {"attribute", "start"}, name, line));
      AIRLOCK_ASSIGN_OR_RETURN(List items, iterate(v, line));
      Value total = p[1] ? *p[1] : integer(0);
      for (const Value& item : items) {
        Value x = item;
        if (p[0]) {
          AIRLOCK_ASSIGN_OR_RETURN(x, attribute_path(item, to_str(*p[0]), line));
        }
        AIRLOCK_ASSIGN_OR_RETURN(total, binary("+", total, x, line));
      }
      return total;
    }
    if (name == "indent") {
      AIRLOCK_ASSIGN_OR_RETURN(auto p, bind(a, {"width", "first", "blank"}, name, line));
      std::string ind = "    ";
      if (p[0] && p[0]->is(Type::kString)) ind = p[0]->s();
      else if (p[0] && is_int(*p[0])) ind = std::string(static_cast<std::size_t>(std::clamp<std::int64_t>(p[0]->as_int(), 0, 256)), ' ');
      const std::u32string u = to_u32(to_str(v) + "\n");
      std::vector<std::u32string> lines = py_splitlines(u);
      std::string out;
      for (std::size_t k = 0; k < lines.size(); ++k) {
        if (k) out += "\n";
        if (k && (!lines[k].empty() || (p[2] && truthy(*p[2])))) out += ind;
        out += to_u8(lines[k]);
        if (out.size() > lim_.max_output_bytes) return resource_exhausted("chat template: string too long");
      }
      if (p[1] && truthy(*p[1])) out = ind + out;
      return make_string(std::move(out));
    }
    if (name == "escape" || name == "e") {
      std::string out;
      for (char c : to_str(v)) {
        switch (c) {
          case '&': out += "&amp;"; break;
          case '<': out += "&lt;"; break;
          case '>': out += "&gt;"; break;
          case '"': out += "&#34;"; break;
          case '\'': out += "&#39;"; break;
          default: out.push_back(c);
        }
      }
      return make_string(std::move(out));
    }
    return error(line, "no filter named '" + name + "'");
  }

  // jinja2 sorts and compares strings case-insensitively unless asked not to.
  Result<Value> sorting_filter(const std::string& name, const Value& v, const Args& a, int line) {
    const bool is_dictsort = name == "dictsort";
    AIRLOCK_ASSIGN_OR_RETURN(auto p, is_dictsort ? bind(a, {"case_sensitive", "by", "reverse"}, name, line)
                                     : name == "sort" ? bind(a, {"reverse", "case_sensitive", "attribute"}, name, line)
                                                      : bind(a, {"case_sensitive", "attribute"}, name, line));
    bool case_sensitive = false, reverse = false;
    std::optional<Value> attr;
    if (is_dictsort) {
      case_sensitive = p[0] && truthy(*p[0]);
      reverse = p[2] && truthy(*p[2]);
    } else if (name == "sort") {
      reverse = p[0] && truthy(*p[0]);
      case_sensitive = p[1] && truthy(*p[1]);
      attr = p[2];
    } else {
      case_sensitive = p[0] && truthy(*p[0]);
      attr = p[1];
    }
    List items;
    if (is_dictsort) {
      if (!v.is(Type::kDict)) return error(line, "dictsort(): value must be a mapping");
      for (const auto& [k, x] : v.dict->entries) items.push_back(list_value({string_value(k), x}, true));
    } else {
      AIRLOCK_ASSIGN_OR_RETURN(items, iterate(v, line));
    }
    const std::size_t key_index = is_dictsort && p[1] && p[1]->is(Type::kString) && p[1]->s() == "value" ? 1 : 0;
    std::vector<std::pair<Value, Value>> keyed;  // (sort key, item)
    for (const Value& item : items) {
      Value key = item;
      if (is_dictsort) key = (*item.list)[key_index];
      else if (attr) {
        AIRLOCK_ASSIGN_OR_RETURN(key, attribute_path(item, to_str(*attr), line));
      }
      if (!case_sensitive && key.is(Type::kString)) {
        AIRLOCK_RETURN_IF_ERROR(charge(key.s().size()));  // a lower-cased copy of every key
        key = string_value(change_case(key.s(), Case::kLower));
      }
      keyed.emplace_back(std::move(key), item);
    }
    AIRLOCK_RETURN_IF_ERROR(step(keyed.size() * 16));
    if (name == "unique") {
      List out;
      std::vector<Value> seen;
      for (const auto& kv : keyed) {
        AIRLOCK_RETURN_IF_ERROR(step(seen.size()));
        if (std::none_of(seen.begin(), seen.end(), [&](const Value& s) { return equal(s, kv.first); })) {
          seen.push_back(kv.first);
          out.push_back(kv.second);
        }
      }
      return make_list(std::move(out));
    }
    Status failed = Status::ok();
    auto cmp = [&](const std::pair<Value, Value>& x, const std::pair<Value, Value>& y) {
      if (!failed.is_ok()) return false;
      Result<bool> r = less(x.first, y.first, line);
      if (!r.is_ok()) {
        failed = r.status();
        return false;
      }
      return *r;
    };
    if (name == "min" || name == "max") {
      if (keyed.empty()) return undefined("No " + name + " item, sequence was empty.");
      std::size_t best = 0;
      for (std::size_t k = 1; k < keyed.size(); ++k)
        if (name == "min" ? cmp(keyed[k], keyed[best]) : cmp(keyed[best], keyed[k])) best = k;
      AIRLOCK_RETURN_IF_ERROR(failed);
      return keyed[best].second;
    }
    // As Python's sorted(reverse=True): reversed, sorted stably, reversed
    // back, so that equal keys keep their order (a stable sort reversed
    // afterwards would swap them).
    if (reverse) std::reverse(keyed.begin(), keyed.end());
    std::stable_sort(keyed.begin(), keyed.end(), cmp);
    AIRLOCK_RETURN_IF_ERROR(failed);
    if (reverse) std::reverse(keyed.begin(), keyed.end());
    List out;
    for (auto& kv : keyed) out.push_back(std::move(kv.second));
    return make_list(std::move(out));
  }

  // ---- tests

  Result<bool> run_test(const std::string& name, const Value& v, const Args& a, int line) {
    AIRLOCK_RETURN_IF_ERROR(step());
    const Value* arg = a.pos.empty() ? nullptr : &a.pos[0];
    auto need_arg = [&]() -> Status {
      if (!arg) return error(line, "test '" + name + "' needs an argument");
      return Status::ok();
    };
    if (name == "defined") return !v.is(Type::kUndefined);
    if (name == "undefined") return v.is(Type::kUndefined);
    if (name == "none") return v.is(Type::kNone);
    if (name == "boolean") return v.is(Type::kBool);
    if (name == "true") return v.is(Type::kBool) && v.b;
    if (name == "false") return v.is(Type::kBool) && !v.b;
    if (name == "integer") return v.is(Type::kInt);
    if (name == "float") return v.is(Type::kFloat);
    if (name == "number") return v.numeric();
    if (name == "string") return v.is(Type::kString);
    if (name == "mapping") return v.is(Type::kDict);
    if (name == "iterable") return v.is(Type::kString) || v.is(Type::kList) || v.is(Type::kDict) || v.is(Type::kUndefined);
    if (name == "sequence") return v.is(Type::kString) || v.is(Type::kList) || v.is(Type::kDict) || v.is(Type::kUndefined);
    if (name == "callable") return v.is(Type::kCallable);
    if (name == "escaped") return false;
    if (name == "lower" || name == "upper") {
      const std::string s = to_str(v);
      bool cased = false;
      for (char32_t c : to_u32(s)) {
        const auto u = static_cast<UChar32>(c);
        if (name == "lower" ? (u_isupper(u) || u_istitle(u)) : (u_islower(u) || u_istitle(u))) return false;
        cased = cased || u_islower(u) || u_isupper(u) || u_istitle(u);
      }
      return cased;
    }
    if (name == "odd" || name == "even" || name == "divisibleby") {
      if (!is_int(v)) return error(line, "test '" + name + "' needs an integer");
      if (name == "divisibleby") {
        AIRLOCK_RETURN_IF_ERROR(need_arg());
        if (!is_int(*arg) || arg->as_int() == 0) return error(line, "divisibleby needs a non-zero integer");
        if (arg->as_int() == -1) return true;
        return v.as_int() % arg->as_int() == 0;
      }
      return (v.as_int() % 2 != 0) == (name == "odd");
    }
    if (name == "sameas") {
      AIRLOCK_RETURN_IF_ERROR(need_arg());
      if (v.type != arg->type) return false;
      if (v.is(Type::kList)) return v.list == arg->list;
      if (v.is(Type::kDict)) return v.dict == arg->dict;
      return equal(v, *arg);
    }
    static const std::pair<std::string_view, std::string_view> kCompare[] = {
        {"eq", "=="}, {"equalto", "=="}, {"==", "=="}, {"ne", "!="}, {"!=", "!="}, {"lt", "<"},
        {"lessthan", "<"}, {"<", "<"}, {"le", "<="}, {"<=", "<="}, {"gt", ">"}, {"greaterthan", ">"},
        {">", ">"}, {"ge", ">="}, {">=", ">="}, {"in", "in"}};
    for (const auto& [test, op] : kCompare) {
      if (name != test) continue;
      AIRLOCK_RETURN_IF_ERROR(need_arg());
      return compare(std::string(op), v, *arg, line);
    }
    return error(line, "no test named '" + name + "'");
  }

  const ChatTemplateProgram& prog_;
  const ChatTemplateLimits& lim_;
  const ChatTemplateInputs& in_;
  std::vector<Frame> frames_;
  std::vector<std::shared_ptr<Namespace>> namespaces_;  // every namespace() made, see ~Renderer
  std::size_t scope_base_ = 0;
  std::string* out_ = nullptr;
  std::size_t steps_ = 0, alloc_ = 0;
  WorkBudget* work_ = nullptr;  // run()'s, while it runs
  int depth_ = 0;
  Flow flow_ = Flow::kNormal;
};

}  // namespace

// ---------------------------------------------------------------- public API

Result<ChatTemplate> ChatTemplate::parse(std::string_view source, const ChatTemplateLimits& limits) {
  if (source.size() > limits.max_source_bytes)
    return invalid_argument("chat template: longer than " + std::to_string(limits.max_source_bytes) + " bytes");
  if (!valid_utf8(source)) return invalid_argument("chat template: not valid UTF-8");
  // As jinja2: \r\n and \r become \n, and one trailing newline is dropped
  // (keep_trailing_newline=False).
  std::string src;
  src.reserve(source.size());
  for (std::size_t k = 0; k < source.size(); ++k) {
    if (source[k] == '\r') {
      src.push_back('\n');
      if (k + 1 < source.size() && source[k + 1] == '\n') ++k;
    } else {
      src.push_back(source[k]);
    }
  }
  if (!src.empty() && src.back() == '\n') src.pop_back();

  std::vector<Token> toks;
  AIRLOCK_RETURN_IF_ERROR(Lexer(std::move(src)).run(&toks));
  auto program = std::make_shared<ChatTemplateProgram>();
  program->limits = limits;
  Parser parser(std::move(toks), program->limits);
  AIRLOCK_RETURN_IF_ERROR(parser.parse_template(&program->body));
  return ChatTemplate(std::move(program));
}

Result<std::string> ChatTemplate::render(const ChatTemplateInputs& in) const {
  Renderer r(*program_, in);
  return r.run();
}

const ChatTemplateLimits& ChatTemplate::limits() const { return program_->limits; }

}  // namespace airlock::engine
