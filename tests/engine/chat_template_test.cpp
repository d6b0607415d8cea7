// Chat templates: byte-for-byte parity with Python jinja2 (configured as
// Hugging Face's apply_chat_template) on the real templates of Llama 3 and
// Qwen3 (read from the tokenizer_config.json files in ../shared/models; the
// test skips, saying so, without them), and on ~100 small templates that
// each pin one behaviour; then hostile templates and inputs.
//
// The expected renders live in tests/engine/chat_templates/expected and are
// made by chat_templates/make_expected.py (Python is not needed to run this
// test). A missing expected file is a failure, never a skip.
#include "airlock/engine/chat_template.h"

#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <optional>
#include <thread>

#include "airlock/common/json.h"

namespace airlock::engine {
namespace {

using ordered_json = nlohmann::ordered_json;

std::filesystem::path fixtures() { return std::filesystem::path(__FILE__).parent_path() / "chat_templates"; }

// The real templates live in the model files under AIRLOCK_MODELS_DIR
// (../shared/models); they are not copied into this repository.
std::optional<std::filesystem::path> models_dir() {
  const char* d = std::getenv("AIRLOCK_MODELS_DIR");
  if (d == nullptr || !std::filesystem::exists(std::filesystem::path(d) / "tokenizers")) return std::nullopt;
  return std::filesystem::path(d);
}

std::string slurp(const std::filesystem::path& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

ordered_json load_json(const std::filesystem::path& path) {
  EXPECT_TRUE(std::filesystem::exists(path)) << path;
  return ordered_json::parse(slurp(path));
}

// Renders `source` with the given variables (as `extra`) and messages.
Result<std::string> render(std::string_view source, ordered_json vars = ordered_json::object(),
                           const ChatTemplateLimits& limits = {}) {
  AIRLOCK_ASSIGN_OR_RETURN(ChatTemplate t, ChatTemplate::parse(source, limits));
  ChatTemplateInputs in;
  if (vars.contains("messages")) {
    in.messages = vars["messages"];
    vars.erase("messages");
  }
  in.extra = std::move(vars);
  in.now_unix_s = 1721995200;  // as chat_templates/cases.json
  return t.render(in);
}

// ---------------------------------------------------------------- real templates

TEST(ChatTemplateReal, MatchesPythonJinja2ByteForByte) {
  const std::optional<std::filesystem::path> models = models_dir();
  if (!models) GTEST_SKIP() << "AIRLOCK_MODELS_DIR (../shared/models with tokenizers/) not found: the real templates live there";
  const ordered_json manifest = load_json(fixtures() / "expected" / "manifest.json");
  const ordered_json spec = load_json(fixtures() / "cases.json");
  std::map<std::string, ordered_json> cases;
  for (const auto& c : spec["cases"]) cases[c["name"].get<std::string>()] = c;

  std::map<std::string, int> n_text;
  int n_checked = 0;
  for (const auto& r : manifest["renders"]) {
    const std::string name = r["template"], case_name = r["case"], kind = r["kind"];
    SCOPED_TRACE(name + " / " + case_name);
    const ordered_json& tpl = manifest["templates"][name];
    const auto tpl_path = *models / tpl["model_file"].get<std::string>();
    const auto expected_path = fixtures() / "expected" / r["file"].get<std::string>();
    ASSERT_TRUE(std::filesystem::exists(tpl_path)) << tpl_path;
    ASSERT_TRUE(std::filesystem::exists(expected_path)) << expected_path;
    ASSERT_TRUE(cases.count(case_name)) << case_name;
    const ordered_json& c = cases[case_name];

    auto parsed = ChatTemplate::parse(load_json(tpl_path)["chat_template"].get<std::string>());
    ASSERT_TRUE(parsed.is_ok()) << parsed.status().to_string();
    ChatTemplateInputs in;
    in.messages = c["messages"];
    in.add_generation_prompt = c["add_generation_prompt"];
    in.bos_token = tpl["bos_token"];
    in.eos_token = tpl["eos_token"];
    in.now_unix_s = spec["now_unix_s"];
    if (c.contains("extra")) in.extra = c["extra"];
    if (c.value("use_tools", false)) in.extra["tools"] = spec["tools"];
    auto out = parsed->render(in);

    const std::string expected = slurp(expected_path);
    if (kind == "text") {
      ASSERT_TRUE(out.is_ok()) << out.status().to_string();
      EXPECT_EQ(*out, expected);
      ++n_text[name];
    } else {
      ASSERT_FALSE(out.is_ok()) << "rendered, but jinja2 failed with: " << expected;
      EXPECT_EQ(out.status().code(), StatusCode::kInvalidArgument) << out.status().to_string();
      if (kind == "raise") {
        EXPECT_EQ(out.status().message(), expected.substr(expected.find('\n') + 1));
      }
    }
    ++n_checked;
  }
  // The families the daemon must serve are all present, with real renders.
  for (const char* name : {"llama-3", "qwen3"}) {
    EXPECT_GE(n_text[name], 3) << name;
  }
  EXPECT_GE(n_checked, 20);
}

TEST(ChatTemplateReal, SnippetsMatchPythonJinja2) {
  const ordered_json snippets = load_json(fixtures() / "expected" / "snippets.json");
  ASSERT_GE(snippets.size(), 100u);
  for (const auto& s : snippets) {
    const std::string source = s["template"];
    SCOPED_TRACE(source);
    auto out = render(source, s["vars"]);
    const std::string kind = s["kind"];
    if (kind == "text") {
      ASSERT_TRUE(out.is_ok()) << out.status().to_string();
      EXPECT_EQ(*out, s["output"].get<std::string>());
    } else {
      ASSERT_FALSE(out.is_ok()) << "rendered '" << *out << "', jinja2: " << s["message"];
      EXPECT_EQ(out.status().code(), StatusCode::kInvalidArgument) << out.status().to_string();
      if (kind == "raise") {
        EXPECT_EQ(out.status().message(), s["message"].get<std::string>());
      }
    }
  }
}

// ---------------------------------------------------------------- contract

TEST(ChatTemplate, PlainJsonConvertsAndStrftimeUsesInjectedTime) {
  auto t = ChatTemplate::parse("{{ bos_token }}{% for m in messages %}{{ m.role }}:{{ m.content }}|{% endfor %}"
                               "{{ strftime_now('%Y-%m-%d') }}{{ eos_token if add_generation_prompt }}");
  ASSERT_TRUE(t.is_ok());
  ChatTemplateInputs in;
  in.messages = nlohmann::json::parse(R"([{"role": "user", "content": "hi"}])");  // plain json
  in.bos_token = "<s>";
  in.eos_token = "</s>";
  in.now_unix_s = 1721995200;  // 2024-07-26 12:00 UTC
  auto out = t->render(in);
  ASSERT_TRUE(out.is_ok()) << out.status().to_string();
  EXPECT_EQ(*out, "<s>user:hi|2024-07-26</s>");
  in.add_generation_prompt = false;
  EXPECT_EQ(*t->render(in), "<s>user:hi|2024-07-26");
}

TEST(ChatTemplate, ExtraOverridesToolsAndKeepsKeyOrder) {
  ordered_json extra = ordered_json::object();
  extra["tools"] = ordered_json::parse(R"([{"z": 1, "a": {"y": 2, "b": 3}}])");
  auto out = render("{{ tools | tojson }}", extra);
  ASSERT_TRUE(out.is_ok());
  EXPECT_EQ(*out, R"([{"z": 1, "a": {"y": 2, "b": 3}}])");
}

TEST(ChatTemplate, SyntaxErrorsCarryLineAndColumn) {
  auto r = ChatTemplate::parse("line one\n{% if x %}\n  {{ x + }}\n{% endif %}");
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("line 3 col"), std::string::npos) << r.status().message();

  for (const char* bad : {"{% if x %}", "{% for x in y %}{% endif %}", "{{ x", "{% if x", "{# open", "{{ 'abc }}",
                          "{% endfor %}", "{% include 'x' %}", "{% raw %}{% endraw %}", "{{ x | }}", "{{ (1 }}",
                          "{{ [1, 2 }}", "{{ {'a' 1} }}", "{{ 1 ) }}", "{% break %}", "{{ x is }}", "{% set %}",
                          "{% macro f(a=1, b) %}{% endmacro %}", "{{ f(a=1, 2) }}", "{{ f(*x) }}", "{{ '\\x4' }}",
                          "{{ 99999999999999999999 }}", "{{ a.1b }}", "{% for x in y recursive %}{% endfor %}", "{{ @ }}"}) {
    auto p = ChatTemplate::parse(bad);
    EXPECT_FALSE(p.is_ok()) << bad;
    if (!p.is_ok()) {
      EXPECT_EQ(p.status().code(), StatusCode::kInvalidArgument) << bad;
      EXPECT_NE(p.status().message().find("line "), std::string::npos) << p.status().message();
    }
  }
}

TEST(ChatTemplate, RaiseExceptionMessagePassesThrough) {
  auto out = render("{% if messages[0].role != 'user' %}{{ raise_exception('Expected user first, got ' ~ "
                    "messages[0].role) }}{% endif %}",
                    ordered_json::parse(R"({"messages": [{"role": "tool"}]})"));
  ASSERT_FALSE(out.is_ok());
  EXPECT_EQ(out.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(out.status().message(), "Expected user first, got tool");
}

TEST(ChatTemplate, RuntimeErrorsNameTheLine) {
  auto out = render("\n\n{{ 1 + 'a' }}");
  ASSERT_FALSE(out.is_ok());
  EXPECT_NE(out.status().message().find("line 3"), std::string::npos) << out.status().message();
}

TEST(ChatTemplate, ConcurrentRendersShareOneTemplate) {
  // ChatML, as Qwen and others write it.
  auto t = ChatTemplate::parse(
      "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
      "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}");
  ASSERT_TRUE(t.is_ok());
  ChatTemplateInputs in;
  in.messages = ordered_json::parse(R"([{"role": "user", "content": "hi"}])");
  const std::string expected = *t->render(in);
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0};
  for (int k = 0; k < 4; ++k) {
    threads.emplace_back([&] {
      for (int i = 0; i < 50; ++i) {
        auto out = t->render(in);
        if (!out.is_ok() || *out != expected) ++mismatches;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches.load(), 0);
}

// Python's jinja2 computes with exact big integers; this engine holds
// int64. An integer that does not fit, whether a literal, the result of
// +, -, *, //, %, ** or unary minus, the int filter's result or a number in
// the inputs, is a render error naming the overflow: never a float printed
// in its place, a default, a wrapped value or undefined behaviour. What
// jinja2 3.1 prints is given beside each.
TEST(ChatTemplate, IntegersBeyond64BitsAreAnError) {
  const std::pair<const char*, const char*> beyond[] = {
      {"{{ 9223372036854775808 }}", "9223372036854775808"},
      {"{{ 99999999999999999999 }}", "99999999999999999999"},
      {"{{ 9223372036854775807 + 1 }}", "9223372036854775808"},
      {"{{ -9223372036854775807 - 2 }}", "-9223372036854775809"},
      {"{{ 9223372036854775807 * 2 }}", "18446744073709551614"},
      {"{{ 10 ** 18 * 10 }}", "10000000000000000000"},
      {"{{ (-9223372036854775807 - 1) // -1 }}", "9223372036854775808"},
      {"{{ 2 ** 63 }}", "9223372036854775808"},
      {"{{ 3 ** 40 }}", "12157665459056928801"},
      {"{{ -(-9223372036854775807 - 1) }}", "9223372036854775808"},
      {"{{ (-9223372036854775807 - 1) | abs }}", "9223372036854775808"},
      {"{{ [9223372036854775807, 1] | sum }}", "9223372036854775808"},
      {"{{ '99999999999999999999' | int }}", "99999999999999999999"},
      {"{{ '-9223372036854775809' | int }}", "-9223372036854775809"},
      {"{{ '1e20' | int }}", "100000000000000000000"},
      {"{{ 1e20 | int }}", "100000000000000000000"},
      {"{{ 9223372036854775807.0 | int }}", "9223372036854775808"},
      {"{{ 1e300 | round | int }}", "10000000000000000525047602552044202487044685811081591549158541... (301 digits)"},
  };
  for (const auto& [source, jinja2_prints] : beyond) {
    auto out = render(source);
    ASSERT_FALSE(out.is_ok()) << source << " rendered '" << *out << "'; jinja2 prints " << jinja2_prints;
    EXPECT_EQ(out.status().code(), StatusCode::kInvalidArgument) << source;
    const std::string& why = out.status().message();
    EXPECT_TRUE(why.find("out of range") != std::string::npos || why.find("integer overflow") != std::string::npos)
        << source << ": " << why;
  }
  // What fits, to the last value, is exact as in jinja2, and the errors
  // jinja2 raises around it (0 ** -1, float overflow in **) are errors here:
  // snippets at the edges of int64 in chat_templates/make_expected.py. A
  // negative number to a fractional power is a complex number in Python,
  // which this engine does not have: an error, not the nan std::pow gives.
  auto complex = render("{{ (-8) ** 0.5 }}");
  ASSERT_FALSE(complex.is_ok()) << *complex;
  EXPECT_NE(complex.status().message().find("complex"), std::string::npos) << complex.status().message();
  // An infinite float to int: OverflowError in jinja2, not the default.
  auto out_inf = render("{{ (1e308 * 10) | int }}");
  ASSERT_FALSE(out_inf.is_ok()) << *out_inf;
  EXPECT_NE(out_inf.status().message().find("cannot convert float infinity to integer"), std::string::npos)
      << out_inf.status().message();
  // An integer beyond int64 in the inputs (a tool call's arguments): refused
  // with the number named, not printed as 1.8446744073709552e+19.
  const ordered_json vars = ordered_json::parse(
      R"({"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "pay",
          "arguments": {"account": 18446744073709551615}}}]}]})");
  auto out = render("{{ messages[0].tool_calls[0].function.arguments | tojson }}", vars);
  ASSERT_FALSE(out.is_ok()) << *out;
  EXPECT_EQ(out.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(out.status().message().find("18446744073709551615 does not fit in 64 bits"), std::string::npos)
      << out.status().message();
}

// ---------------------------------------------------------------- hostile templates and inputs

void expect_limit(const Result<std::string>& r, const char* what) {
  ASSERT_FALSE(r.is_ok()) << what;
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted) << what << ": " << r.status().to_string();
}

TEST(ChatTemplateHostile, DeepNestingIsRejectedNotRecursed) {
  for (std::string open_close : {"()", "[]", "{}"}) {
    std::string deep = "{{ " + std::string(100000, open_close[0]) + "1" + std::string(100000, open_close[1]) + " }}";
    if (open_close[0] == '{') deep = "{{ " + std::string(50000, '[') + std::string(50000, ']') + " }}";
    EXPECT_FALSE(ChatTemplate::parse(deep).is_ok());
  }
  std::string blocks;
  for (int k = 0; k < 10000; ++k) blocks += "{% if true %}";
  EXPECT_FALSE(ChatTemplate::parse(blocks).is_ok());
  std::string unary = "{{ " + std::string(100000, '-') + "1 }}";
  EXPECT_FALSE(ChatTemplate::parse(unary).is_ok());
  std::string nots = "{{ ";
  for (int k = 0; k < 20000; ++k) nots += "not ";
  EXPECT_FALSE(ChatTemplate::parse(nots + "x }}").is_ok());
  // A long flat chain is fine to parse only up to the expression height.
  std::string chain = "{{ 1";
  for (int k = 0; k < 100000; ++k) chain += " + 1";
  EXPECT_FALSE(ChatTemplate::parse(chain + " }}").is_ok());
  std::string filters = "{{ 'x'";
  for (int k = 0; k < 100000; ++k) filters += "|trim";
  EXPECT_FALSE(ChatTemplate::parse(filters + " }}").is_ok());
}

TEST(ChatTemplateHostile, RecursionAndLoopsAreBounded) {
  expect_limit(render("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"), "infinite macro recursion");
  expect_limit(render("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"),
               "10^10 iterations");
  expect_limit(render("{{ range(1000000) | list | length }}"), "range too big");
  ChatTemplateLimits small;
  small.max_steps = 1000;
  expect_limit(render("{% for a in range(10000) %}{% endfor %}", {}, small), "step limit");
}

// String methods charge the work they do: a length is counted character by
// character, and a search whose naive form takes the product of the two
// lengths is linear (memmem) or charged as that product. Each took from
// 8 s to over a minute.
TEST(ChatTemplateHostile, StringSearchesAndLengthsAreCharged) {
  ChatTemplateLimits steps;
  steps.max_steps = 200000;  // a loop of 100 is 100-odd steps; a megabyte's length, 15,625
  expect_limit(render("{% set x = 'a' * 1000000 %}{% for i in range(100) %}{{ x | length }}{% endfor %}", {}, steps),
               "a megabyte's length, 100 times");
  EXPECT_TRUE(render("{% set x = 'a' * 1000 %}{% for i in range(100) %}{{ x | length }}{% endfor %}", {}, steps).is_ok());
  expect_limit(render("{% set x = 'a' * 1000000 %}{{ x.split('a' * 500000 ~ 'b') | length }}"), "quadratic split");
  auto found = render("{% set x = 'a' * 1000000 %}{{ x.find('a' * 500000 ~ 'b') }} {{ x.count('a' * 500000 ~ 'b') }} "
                      "{{ (x.replace('a' * 500000 ~ 'b', '')) | length }}");
  ASSERT_TRUE(found.is_ok()) << found.status().to_string();
  EXPECT_EQ(*found, "-1 0 1000000");
  // What the methods answer is unchanged.
  auto ok = render("{{ 'abcabc'.find('ca') }} {{ 'abcabc'.count('bc') }} {{ 'abcabc'.replace('bc', 'X', 1) }} "
                   "{{ 'a,b,,c'.split(',') }} {{ 'héllo'.find('l') }} {{ 'aaaa'.count('aa') }} {{ 'x'.find('') }}");
  ASSERT_TRUE(ok.is_ok()) << ok.status().to_string();
  EXPECT_EQ(*ok, "2 2 aXabc ['a', 'b', '', 'c'] 2 2 0");
}

TEST(ChatTemplateHostile, OutputAndMemoryBombsAreBounded) {
  expect_limit(render("{% for a in range(100000) %}{% for b in range(100) %}xxxxxxxxxxxxxxxx{% endfor %}{% endfor %}"),
               "output bomb");
  expect_limit(render("{{ 'x' * 100000000 }}"), "string repetition");
  expect_limit(render("{{ [0] * 100000000 }}"), "list repetition");
  expect_limit(render("{% set ns = namespace(s='xxxxxxxxxxxxxxxx') %}{% for i in range(64) %}"
                      "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s | length }}"),
               "string doubling");
  expect_limit(render("{% set ns = namespace(l=[1]) %}{% for i in range(64) %}"
                      "{% set ns.l = ns.l + ns.l %}{% endfor %}{{ ns.l | length }}"),
               "list doubling");
  expect_limit(render("{% set ns = namespace(l=[]) %}{% for i in range(100000) %}"
                      "{% set ns.l = [ns.l] %}{% endfor %}{{ ns.l }}"),
               "deeply nested value");
  expect_limit(render("{% set ns = namespace(s='x' * 1000000) %}{% for i in range(100000) %}"
                      "{% set ns.t = ns.s ~ i %}{% endfor %}"),
               "allocation budget");
  expect_limit(render("{{ 'ab' | replace('', 'x' * 1000000) }}"), "replace bomb");
  ChatTemplateLimits small;
  small.max_output_bytes = 16;
  expect_limit(render("{{ 'x' * 17 }}", {}, small), "configured output limit");
  EXPECT_TRUE(render("{{ 'x' * 16 }}", {}, small).is_ok());
}

// Work that one step used to hide: values shared many times over (20 MB of
// lists holding 10^10 items to print or compare), filters recursing through
// their own arguments, repeating an empty sequence 2^63 times, and request
// messages holding millions of array items. Each must end in a limit, fast.
TEST(ChatTemplateHostile, SharedValuesAndRecursiveFiltersAreBounded) {
  const std::string shared = "{% set a = [0] * 100000 %}{% set b = [a] * 100000 %}";
  expect_limit(render(shared + "{{ b }}"), "printing a shared list");
  expect_limit(render(shared + "{{ b == b }}"), "comparing a shared list");
  expect_limit(render(shared + "{{ b | tojson }}"), "tojson of a shared list");
  expect_limit(render(shared + "{{ b | string | length }}"), "string of a shared list");
  expect_limit(render(shared + "{{ b | join(',') | length }}"), "join of a shared list");
  expect_limit(render("{% set big = range(100000) | list %}{% for i in big %}{% set x = big | first %}{% endfor %}"),
               "copying a list once per iteration");
  std::string maps = "{{ 'a' | map(";
  for (int k = 0; k < 20000; ++k) maps += "'map', ";
  expect_limit(render(maps + "'upper') | list }}"), "map recursing through its arguments");

  // Long strings compared many times are charged by their length.
  const std::string long_strings = "{% set s = 'x' * 1000000 %}{% set a = [s] * 100000 %}";
  expect_limit(render(long_strings + "{{ a | sort | length }}"), "sorting long equal strings");
  expect_limit(render(long_strings + "{{ a == a }}"), "comparing lists of long strings");
  // A comparison that runs out in the last statement fails the render
  // instead of reading as false.
  expect_limit(render(shared + "{% if b == b %}equal{% endif %}"), "running out in the last statement");
  // Substring search is linear: this is 5 x 10^11 steps for a naive find.
  auto search = render("{{ ('a' * 500000 ~ 'b') in ('a' * 1000000) }}");
  ASSERT_TRUE(search.is_ok()) << search.status().to_string();
  EXPECT_EQ(*search, "False");

  auto empty = render("[{{ '' * 9223372036854775807 }}][{{ [] * 1000000000000000000 }}]");
  ASSERT_TRUE(empty.is_ok()) << empty.status().to_string();
  EXPECT_EQ(*empty, "[][[]]");  // as Python: an empty sequence repeated is empty
}

TEST(ChatTemplateHostile, HugeArraysInMessagesAreRefusedBeforeConversion) {
  ordered_json zeros = ordered_json::array();
  for (int k = 0; k < 200000; ++k) zeros.push_back(0);
  ordered_json msg = {{"role", "user"}, {"content", "hi"}, {"junk", zeros}};
  auto refused = render("{{ messages | length }}", {{"messages", ordered_json::array({msg})}});
  expect_limit(refused, "200,000 zeros");
  // Refused while reading the input, before the items were converted (a
  // list refused only once built cost ~100 bytes per item first).
  EXPECT_NE(refused.status().message().find("chat template input: list too long"), std::string::npos)
      << refused.status().message();
  msg["junk"] = ordered_json::array({1, 2, 3});
  auto fine = render("{{ messages | length }}", {{"messages", ordered_json::array({msg})}});
  ASSERT_TRUE(fine.is_ok()) << fine.status().to_string();
  EXPECT_EQ(*fine, "1");
}

TEST(ChatTemplateHostile, CyclicNamespaceDoesNotHang) {
  auto out = render("{% set ns = namespace() %}{% set ns.self = ns %}{{ ns }}{{ ns == ns }}{{ [ns] == [ns] }}");
  ASSERT_TRUE(out.is_ok()) << out.status().to_string();
  auto json = render("{% set ns = namespace() %}{% set ns.self = ns %}{{ ns | tojson }}");
  EXPECT_FALSE(json.is_ok());
}

TEST(ChatTemplateHostile, BadInputIsRejected) {
  EXPECT_FALSE(ChatTemplate::parse("\xff\xfe{{ x }}").is_ok());
  EXPECT_FALSE(ChatTemplate::parse("{{ '\xc0\xaf' }}").is_ok());  // overlong
  ChatTemplateLimits small;
  small.max_source_bytes = 10;
  EXPECT_FALSE(ChatTemplate::parse("0123456789a", small).is_ok());

  ordered_json deep = ordered_json::array();
  for (int k = 0; k < 200; ++k) deep = ordered_json::array({deep});
  auto t = ChatTemplate::parse("{{ messages | length }}");
  ASSERT_TRUE(t.is_ok());
  ChatTemplateInputs in;
  in.messages = deep;
  EXPECT_FALSE(t->render(in).is_ok());
  in.messages = ordered_json::array();
  in.extra = ordered_json::array();
  EXPECT_FALSE(t->render(in).is_ok());
}

TEST(ChatTemplateHostile, WrongTypesAreErrorsNotCrashes) {
  const ordered_json vars = ordered_json::parse(R"({"messages": [{"role": 1, "content": null},
      {"role": "user", "content": [1, {"x": []}]}, "str", 5, null, true, 1.5, []]})");
  for (const char* src : {"{% for m in messages %}{{ m.role + m.content }}{% endfor %}",
                          "{% for m in messages %}{{ m['content'] | trim }}{{ m.content.strip() }}{% endfor %}",
                          "{% for m in messages %}{{ m | tojson }}{{ m | length }}{{ m | first }}{% endfor %}",
                          "{% for m in messages %}{{ m.content.split('x') }}{% endfor %}",
                          "{% for m in messages %}{% for k, v in m.items() %}{{ k }}{% endfor %}{% endfor %}",
                          "{{ messages | join(', ') }}{{ messages | sort }}",
                          "{{ messages | map('upper') | list }}",
                          "{{ messages | selectattr('role', 'equalto', 'user') | list }}",
                          "{{ messages[0].role.upper() }}",
                          "{{ messages[1:'a'] }}",
                          "{{ messages.items() }}",
                          "{{ messages | dictsort }}",
                          "{{ (messages | first).content ~ messages[7] }}",
                          "{{ messages[0] < messages[1] }}",
                          "{{ range('a') }}",
                          "{{ namespace(1) }}",
                          "{{ 'x'.startswith(1) }}",
                          "{{ 1 is divisibleby 0 }}",
                          "{{ loop.cycle() }}",
                          "{% for x in messages %}{{ loop.cycle() }}{% endfor %}",
                          "{% set x.y = 1 %}",
                          "{{ 'a' | indent(99999999999) | length }}",
                          "{{ 1.5 | round(99999) }}{{ 1.5 | round(-99999) }}",
                          "{{ 'x' | tojson(indent=-5) }}{{ 'x' | tojson(indent=999999) }}",
                          "{{ strftime_now('%Y' * 1000) }}",
                          "{{ messages[-9223372036854775807 - 1] }}{{ 'abc'[9223372036854775807:] }}",
                          "{{ [1, 2, 3][::-9223372036854775807 - 1] }}{{ [1, 2, 3][-9223372036854775807 - 1::9223372036854775807] }}"}) {
    SCOPED_TRACE(src);
    auto out = render(src, vars);
    if (!out.is_ok()) {
      EXPECT_EQ(out.status().code(), StatusCode::kInvalidArgument) << out.status().to_string();
    }
  }
}

// A deterministic mini-fuzzer: random sequences of template fragments must
// parse or fail cleanly, and render or fail cleanly. (tests/fuzz has the
// coverage-guided version.)
TEST(ChatTemplateHostile, RandomFragmentSoup) {
  const std::vector<std::string> frags = {
      "{{", "}}", "{%", "%}", "{#", "#}", "-", "+", " ", "\n", "if ", "elif ", "else", "endif", "for ", " in ",
      "endfor", "set ", "macro ", "endmacro", "x", "messages", "m", "loop", ".", "[", "]", "(", ")", "{", "}", "|",
      "trim", "tojson", "length", "is ", "defined", "not ", "and ", "or ", "=", "==", "~", "+", "*", "/", "//",
      "%", "**", "'a'", "\"b\"", "1", "0", "-1", "1.5", ",", ":", "namespace", "ns", "range(", "raise_exception(",
      "break", "continue", "none", "true", "items()", "role", "content", "[::-1]", "\\", "é"};
  std::mt19937 rng(12345);
  ChatTemplateLimits limits;
  limits.max_steps = 200000;
  ChatTemplateInputs in;
  in.messages = ordered_json::parse(R"([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}])");
  int parsed = 0;
  for (int iter = 0; iter < 20000; ++iter) {
    std::string src;
    const int n = 1 + static_cast<int>(rng() % 40);
    for (int k = 0; k < n; ++k) src += frags[rng() % frags.size()];
    auto t = ChatTemplate::parse(src, limits);
    if (!t.is_ok()) {
      EXPECT_EQ(t.status().code(), StatusCode::kInvalidArgument) << src;
      continue;
    }
    ++parsed;
    auto out = t->render(in);
    if (!out.is_ok()) {
      EXPECT_TRUE(out.status().code() == StatusCode::kInvalidArgument ||
                  out.status().code() == StatusCode::kResourceExhausted)
          << src << " -> " << out.status().to_string();
    }
  }
  EXPECT_GT(parsed, 100);
}

}  // namespace
}  // namespace airlock::engine
