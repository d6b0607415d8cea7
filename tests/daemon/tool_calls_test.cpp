// Tool calls in model output: the Hermes, Llama 3 JSON and Mistral forms, hostile
// and malformed output, and streaming (what is sent as content while the
// answer grows equals the content of the whole answer).
#include "tool_calls.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>

#include "airlock/common/json.h"

namespace airlock::daemon {
namespace {

const std::vector<ToolSpec> kTools = {{"get_weather", false, {}}, {"get_time", false, {}}};
using ojson = nlohmann::ordered_json;

TEST(ToolCalls, FormatFromTheTemplate) {
  EXPECT_EQ(tool_format_of("{% if tools %}<tool_call>\\n{\\\"name\\\": <function-name>}{% endif %}"), ToolFormat::kHermes);
  EXPECT_EQ(tool_format_of("<tool_call>\n<function={{ name }}>\n<parameter=city>\"name"), ToolFormat::kNone);  // Qwen3-Coder
  EXPECT_EQ(tool_format_of("<tool_call>{{ name }}<arg_key>\"name"), ToolFormat::kNone);                         // GLM-4.5
  EXPECT_EQ(tool_format_of("{{- \"<|python_tag|>\" + tool_call.name }}"), ToolFormat::kLlamaJson);
  EXPECT_EQ(tool_format_of("{{- \"Environment: ipython\\n\" }}"), ToolFormat::kLlamaJson);
  EXPECT_EQ(tool_format_of("{% for m in messages %}<|im_start|>{{ m.content }}{% endfor %}"), ToolFormat::kNone);
  EXPECT_EQ(tool_format_of("[TOOL_CALLS]"), ToolFormat::kMistral);
  EXPECT_STREQ(tool_format_name(ToolFormat::kHermes), "hermes");
  EXPECT_STREQ(tool_format_name(ToolFormat::kLlamaJson), "llama3_json");
  EXPECT_STREQ(tool_format_name(ToolFormat::kMistral), "mistral");
  EXPECT_STREQ(tool_format_name(ToolFormat::kNone), "none");
}

// The real templates where ../shared/models has them.
TEST(ToolCalls, FormatOfRealTemplates) {
  const char* dir = std::getenv("AIRLOCK_MODELS_DIR");
  if (dir == nullptr) GTEST_SKIP() << "AIRLOCK_MODELS_DIR not set";
  auto template_of = [&](const std::string& model) -> std::string {
    std::ifstream f(std::string(dir) + "/tokenizers/" + model + "/tokenizer_config.json");
    if (!f) return {};
    std::stringstream ss;
    ss << f.rdbuf();
    return nlohmann::json::parse(ss.str())["chat_template"].get<std::string>();
  };
  const std::string qwen3 = template_of("qwen3"), llama3 = template_of("llama3");
  if (qwen3.empty() || llama3.empty()) GTEST_SKIP() << "tokenizer_config.json files not found under " << dir;
  EXPECT_EQ(tool_format_of(qwen3), ToolFormat::kHermes);
  EXPECT_EQ(tool_format_of(llama3), ToolFormat::kNone);  // Llama 3.0's template has no tools
}

TEST(ToolCalls, HermesBlocks) {
  // Qwen's own layout: text, then blocks on their own lines.
  ToolOutput o = parse_tool_calls(ToolFormat::kHermes,
                                  "Let me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": "
                                  "\"Z\u00fcrich\", \"days\": [1, 2]}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", "
                                  "\"arguments\": {}}\n</tool_call>\n",
                                  kTools);
  EXPECT_EQ(o.content, "Let me look.");
  ASSERT_EQ(o.calls.size(), 2u);
  EXPECT_EQ(o.calls[0].name, "get_weather");
  EXPECT_EQ(o.calls[0].arguments, "{\"city\":\"Z\u00fcrich\",\"days\":[1,2]}");
  EXPECT_EQ(o.calls[1].name, "get_time");
  EXPECT_EQ(o.calls[1].arguments, "{}");
  EXPECT_TRUE(o.calls[0].id.empty());

  // Only calls: no content. Arguments absent mean {}; arguments as a JSON
  // string holding an object are that object; key order is kept.
  o = parse_tool_calls(ToolFormat::kHermes,
                       "<tool_call>{\"name\": \"get_time\"}</tool_call><tool_call>{\"name\": \"get_weather\", "
                       "\"arguments\": \"{\\\"z\\\": 1, \\\"a\\\": 2}\"}</tool_call>",
                       kTools);
  EXPECT_EQ(o.content, "");
  ASSERT_EQ(o.calls.size(), 2u);
  EXPECT_EQ(o.calls[0].arguments, "{}");
  EXPECT_EQ(o.calls[1].arguments, "{\"z\":1,\"a\":2}");  // in the model's order

  // parallel_tool_calls false: the first call only.
  o = parse_tool_calls(ToolFormat::kHermes,
                       "<tool_call>{\"name\": \"get_time\"}</tool_call><tool_call>{\"name\": \"get_weather\"}</tool_call>",
                       kTools, 1);
  ASSERT_EQ(o.calls.size(), 1u);
  EXPECT_EQ(o.calls[0].name, "get_time");

  // An answer cut inside its last block (max_tokens) still gives the call
  // when the block's JSON is whole.
  o = parse_tool_calls(ToolFormat::kHermes, "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n", kTools);
  ASSERT_EQ(o.calls.size(), 1u);
}

TEST(ToolCalls, WhatIsNotACallStaysText) {
  const std::vector<std::string> bad = {
      "<tool_call>{\"name\": \"rm_rf\", \"arguments\": {}}</tool_call>",           // a tool not offered
      "<tool_call>{\"name\": \"get_time\", \"arguments\": [1]}</tool_call>",       // arguments not an object
      "<tool_call>{\"name\": \"get_time\", \"arguments\": \"not json\"}</tool_call>",
      "<tool_call>{\"name\": 7}</tool_call>",
      "<tool_call>[{\"name\": \"get_time\"}]</tool_call>",                          // not an object
      "<tool_call>{\"name\": \"get_time\", \"arguments\": {</tool_call>",           // broken JSON
      "<tool_call>{\"name\": \"get_time\"",                                         // cut off
      "<tool_call>",
      "<tool_call></tool_call>",
      "</tool_call>{\"name\": \"get_time\"}",
      "<tool_call>{\"name\": \"get_time\"}{\"name\": \"get_time\"}</tool_call>",  // two objects in one block
  };
  for (const std::string& text : bad) {
    ToolOutput o = parse_tool_calls(ToolFormat::kHermes, text, kTools);
    EXPECT_TRUE(o.calls.empty()) << text;
    EXPECT_EQ(o.content, text) << "text must come back unchanged";
  }
  // A bad block beside a good one: the good one is a call, the bad one text.
  ToolOutput o = parse_tool_calls(
      ToolFormat::kHermes, "<tool_call>{\"name\": \"nope\"}</tool_call> <tool_call>{\"name\": \"get_time\"}</tool_call>", kTools);
  ASSERT_EQ(o.calls.size(), 1u);
  EXPECT_EQ(o.content, "<tool_call>{\"name\": \"nope\"}</tool_call>");
  // A tag written in passing (while thinking, say) does not swallow the
  // real call after it.
  o = parse_tool_calls(ToolFormat::kHermes,
                       "<think>I could use <tool_call> here.</think>\n<tool_call>{\"name\": \"get_time\"}</tool_call>", kTools);
  ASSERT_EQ(o.calls.size(), 1u);
  EXPECT_EQ(o.content, "<think>I could use <tool_call> here.</think>");
  // Deep or wide JSON from the model is refused as a request body would be.
  std::string deep = "<tool_call>{\"name\": \"get_time\", \"arguments\": {\"a\": " + std::string(100, '[') +
                     std::string(100, ']') + "}}</tool_call>";
  EXPECT_TRUE(parse_tool_calls(ToolFormat::kHermes, deep, kTools).calls.empty());
  // Without a format nothing is parsed.
  EXPECT_TRUE(parse_tool_calls(ToolFormat::kNone, "<tool_call>{\"name\": \"get_time\"}</tool_call>", kTools).calls.empty());
}

TEST(ToolCalls, LlamaJson) {
  ToolOutput o = parse_tool_calls(ToolFormat::kLlamaJson,
                                  "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris; France\", \"q\": \"}\"}}",
                                  kTools);
  ASSERT_EQ(o.calls.size(), 1u);
  EXPECT_EQ(o.calls[0].arguments, "{\"city\":\"Paris; France\",\"q\":\"}\"}");
  EXPECT_EQ(o.content, "");
  o = parse_tool_calls(ToolFormat::kLlamaJson,
                       " <|python_tag|>{\"name\": \"get_time\", \"parameters\": {}}; {\"name\": \"get_weather\", "
                       "\"arguments\": {\"city\": \"Bern\"}}\n",
                       kTools);
  ASSERT_EQ(o.calls.size(), 2u);
  EXPECT_EQ(o.calls[1].arguments, "{\"city\":\"Bern\"}");
  EXPECT_EQ(parse_tool_calls(ToolFormat::kLlamaJson, "{\"name\": \"get_time\"};", kTools).calls.size(), 1u);
  for (const std::string text : {"The weather is fine.", "{\"name\": \"get_time\"} and then some prose",
                                 "{\"name\": \"get_time\"}; {\"name\": \"nope\"}",
                                 "{\"name\": \"get_time\", \"parameters\": {", "{\"answer\": 42}", "{\"name\": \"get_time\"} {"}) {
    o = parse_tool_calls(ToolFormat::kLlamaJson, text, kTools);
    EXPECT_TRUE(o.calls.empty()) << text;
    EXPECT_EQ(o.content, text);
  }
}

TEST(ToolCalls, StrictSchemasThatCanBeChecked) {
  auto why = [](const char* schema) { return unsupported_schema(ojson::parse(schema)); };
  EXPECT_FALSE(why(R"({"type":"object","properties":{"city":{"type":"string","description":"d"},
      "unit":{"anyOf":[{"type":"string","enum":["c","f"]},{"type":"null"}]},
      "days":{"type":"array","items":{"type":"integer","minimum":1},"maxItems":7},
      "where":{"$ref":"#/$defs/Place"}},"required":["city"],"additionalProperties":false,
      "$defs":{"Place":{"type":"object","properties":{"near":{"$ref":"#/$defs/Place"}}}}})"));
  EXPECT_FALSE(why(R"({"type":"object","properties":{"zip":{"type":"integer","multipleOf":5}}})"));
  EXPECT_EQ(*why(R"({"type":"object","patternProperties":{"^x":{"type":"integer"}}})"),
            "parameters: the keyword 'patternProperties' cannot be checked here (strict)");
  EXPECT_FALSE(why(R"({"type":"object","properties":{"zip":{"type":"string","pattern":"^[0-9]+$"}}})"));
  EXPECT_EQ(*why(R"({"type":"object","properties":{"zip":{"type":"string","pattern":"^(?![0-9]+$)."}}})"),
            "parameters.properties.zip.pattern: the pattern uses look-around (not supported)");
  // What SDKs put in: openai-node's zodFunction a $schema, pydantic a
  // format for datetime, a discriminator beside oneOf (annotations).
  EXPECT_FALSE(why(R"({"$schema":"http://json-schema.org/draft-07/schema#","type":"object","properties":{
      "when":{"type":"string","format":"date-time"},"pet":{"oneOf":[{"type":"string"}],"discriminator":{"propertyName":"t"}}}})"));
  EXPECT_TRUE(why(R"({"type":"string","minLength":-1})"));
  EXPECT_TRUE(why(R"({"type":"array","maxItems":0.5})"));
  EXPECT_FALSE(why(R"({"type":"string","minLength":3.0})"));
  EXPECT_TRUE(why(R"({"$ref":"#/$defs/a%25b","$defs":{"a%25b":{}}})"));  // percent-escapes are not decoded
  // Size: at most 10,000 subschemas and 10,000 enum entries, refused
  // before anything is built per subschema.
  ojson wide = {{"anyOf", ojson::array()}};
  for (int i = 0; i < 20000; ++i) wide["anyOf"].push_back(ojson::object());
  EXPECT_EQ(unsupported_schema(wide), "parameters has more than 10,000 subschemas");
  ojson big_enum = {{"enum", ojson::array()}};
  for (int i = 0; i < 10001; ++i) big_enum["enum"].push_back(i);
  EXPECT_TRUE(unsupported_schema(big_enum));
  EXPECT_TRUE(why(R"({"type":"thing"})"));
  EXPECT_TRUE(why(R"({"$ref":"#/$defs/Missing"})"));
  EXPECT_TRUE(why(R"({"$ref":"https://example.com/schema"})"));
  EXPECT_TRUE(why(R"({"anyOf":{"type":"string"}})"));
  EXPECT_TRUE(why(R"({"properties":{"a":5}})"));
  EXPECT_TRUE(why(R"({"minLength":"3"})"));
  EXPECT_TRUE(why(R"("object")"));
}

TEST(ToolCalls, ArgumentsFollowTheSchemaOrNot) {
  const ojson schema = ojson::parse(R"({"type":"object","properties":{"city":{"type":"string","minLength":2},
      "unit":{"anyOf":[{"type":"string","enum":["c","f"]},{"type":"null"}]},
      "days":{"type":"array","items":{"type":"integer","minimum":1},"maxItems":3},
      "where":{"$ref":"#/$defs/Place"}},"required":["city"],"additionalProperties":false,
      "$defs":{"Place":{"type":"object","properties":{"near":{"$ref":"#/$defs/Place"},"x":{"const":1}},
                        "additionalProperties":false}}})");
  for (const char* ok : {R"({"city":"Bern"})", R"({"city":"Z\u00fcrich","unit":null,"days":[1,2.0]})",
                         R"({"city":"Bern","unit":"c","where":{"near":{"near":{"x":1}}}})"})
    EXPECT_TRUE(follows_schema(schema, ojson::parse(ok))) << ok;
  for (const char* bad : {R"({})", R"({"city":5})", R"({"city":"B"})", R"({"city":"Bern","unit":"k"})",
                          R"({"city":"Bern","days":[0]})", R"({"city":"Bern","days":[1,2,3,4]})",
                          R"({"city":"Bern","days":[1.5]})", R"({"city":"Bern","extra":1})",
                          R"({"city":"Bern","where":{"near":{"x":2}}})", R"({"city":"Bern","where":{"y":1}})"})
    EXPECT_FALSE(follows_schema(schema, ojson::parse(bad))) << bad;
  // Equality as JSON Schema has it: key order does not matter, 1 is 1.0;
  // length bounds written as 3.0 count.
  EXPECT_TRUE(follows_schema(ojson::parse(R"({"const":{"a":1,"b":[2]}})"), ojson::parse(R"({"b":[2.0],"a":1})")));
  EXPECT_TRUE(follows_schema(ojson::parse(R"({"enum":[{"a":1,"b":2}]})"), ojson::parse(R"({"b":2,"a":1})")));
  EXPECT_FALSE(follows_schema(ojson::parse(R"({"const":{"a":1}})"), ojson::parse(R"({"a":1,"b":2})")));
  EXPECT_FALSE(follows_schema(ojson::parse(R"({"type":"string","minLength":3.0})"), "ab"));
  // A $ref loop and a tower of anyOf end within their bounds: no.
  EXPECT_FALSE(follows_schema(ojson::parse(R"({"$ref":"#/$defs/A","$defs":{"A":{"$ref":"#/$defs/A"}}})"), ojson::object()));
  // Each level two references to the one below: 2^40 paths in a small schema.
  ojson tower = {{"$ref", "#/$defs/A40"}, {"$defs", {{"A0", {{"type", "string"}}}}}};
  for (int i = 1; i <= 40; ++i) {
    const ojson below = {{"$ref", "#/$defs/A" + std::to_string(i - 1)}};
    tower["$defs"]["A" + std::to_string(i)] = {{"anyOf", ojson::array({below, below})}};
  }
  EXPECT_FALSE(unsupported_schema(tower));
  EXPECT_FALSE(follows_schema(tower, ojson::parse("{}")));  // the step bound says no

  // A strict tool's call counts only if its arguments follow the schema.
  const std::vector<ToolSpec> strict = {{"get_weather", true, schema}, {"get_time", true, nullptr}};
  EXPECT_EQ(parse_tool_calls(ToolFormat::kHermes, "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Bern\"}}</tool_call>", strict)
                .calls.size(), 1u);
  ToolOutput o = parse_tool_calls(ToolFormat::kHermes,
                                  "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"town\": \"Bern\"}}</tool_call>", strict);
  EXPECT_TRUE(o.calls.empty());
  EXPECT_EQ(o.content, "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"town\": \"Bern\"}}</tool_call>");
  EXPECT_EQ(parse_tool_calls(ToolFormat::kHermes, "<tool_call>{\"name\": \"get_time\"}</tool_call>", strict).calls.size(), 1u);
  EXPECT_TRUE(parse_tool_calls(ToolFormat::kHermes, "<tool_call>{\"name\": \"get_time\", \"arguments\": {\"a\": 1}}</tool_call>", strict)
                  .calls.empty());
}

// Arguments are the model's text less the whitespace between tokens:
// numbers keep their digits (an integer beyond 64 bits was a rounded
// double, 1.2345678901234568e+23), strings their escapes, in every format
// and whether the arguments came as an object or as a string holding one.
TEST(ToolCalls, ArgumentsKeepTheModelsNumbersAndText) {
  const std::string args = "{\"account\": 123456789012345678901234, \"amount\": 1.50, \"debt\": -99999999999999999999,"
                           " \"note\": \"a \\\"b\\\" \\u00e9 \\n c\", \"list\": [ 1 , 2e3 ]}";
  const std::string want = "{\"account\":123456789012345678901234,\"amount\":1.50,\"debt\":-99999999999999999999,"
                           "\"note\":\"a \\\"b\\\" \\u00e9 \\n c\",\"list\":[1,2e3]}";
  const std::string call = "{\"name\": \"get_weather\", \"arguments\": " + args + "}";
  const std::string as_string = "{\"name\": \"get_weather\", \"arguments\": " + nlohmann::json(args).dump() + "}";
  const std::string llama = "{\"name\": \"get_weather\", \"parameters\": " + args + "}";
  struct Case {
    ToolFormat format;
    std::string text;
  };
  for (const Case& c : {Case{ToolFormat::kHermes, "<tool_call>\n" + call + "\n</tool_call>"},
                        Case{ToolFormat::kHermes, "<tool_call>\n" + call},  // unclosed: parsed as a block
                        Case{ToolFormat::kHermes, "<tool_call>" + as_string + "</tool_call>"},
                        Case{ToolFormat::kLlamaJson, llama},
                        Case{ToolFormat::kLlamaJson, "<|python_tag|>" + llama + "; " + call},
                        Case{ToolFormat::kMistral, "[TOOL_CALLS] [" + call + ", " + as_string + "]"}}) {
    const ToolOutput o = parse_tool_calls(c.format, c.text, kTools);
    ASSERT_FALSE(o.calls.empty()) << c.text;
    for (const ToolCall& t : o.calls) {
      EXPECT_EQ(t.arguments, want) << c.text;
      EXPECT_EQ(nlohmann::json::parse(t.arguments)["note"], "a \"b\" \u00e9 \n c");
    }
  }
  // The last of two members of one name counts, as the parser keeps it.
  const ToolOutput twice = parse_tool_calls(
      ToolFormat::kHermes, "<tool_call>{\"name\": \"get_time\", \"arguments\": {\"a\": 1}, \"arguments\": {\"b\": 2}}</tool_call>",
      kTools);
  ASSERT_EQ(twice.calls.size(), 1u);
  EXPECT_EQ(twice.calls[0].arguments, "{\"b\":2}");
  // A key twice in the arguments, at any depth: the parser keeps the last,
  // other clients may keep the first or refuse the text, so the arguments
  // are written as parsed (what a strict schema was checked against).
  const std::vector<ToolSpec> strict = {
      {"get_time", true, nlohmann::ordered_json::parse(R"({"type":"object","properties":{"n":{"type":"integer"},
        "o":{"type":"object","properties":{"m":{"type":"integer"}}}}})")}};
  for (const auto& [text, parsed] : std::vector<std::pair<std::string, std::string>>{
           {R"({"n": "x", "n": 5})", R"({"n":5})"},
           {R"({"o": {"m": "x", "m": 7}, "n": 1})", R"({"o":{"m":7},"n":1})"},
           {R"({"l": [{"m": 1, "m": 2}]})", R"({"l":[{"m":2}]})"}}) {
    const ToolOutput dup = parse_tool_calls(
        ToolFormat::kHermes, "<tool_call>{\"name\": \"get_time\", \"arguments\": " + text + "}</tool_call>", strict);
    ASSERT_EQ(dup.calls.size(), 1u) << text;
    EXPECT_EQ(dup.calls[0].arguments, parsed) << text;
  }
  // A byte order mark before the arguments in a string (the parser skips
  // it) is not part of them.
  const ToolOutput bom = parse_tool_calls(
      ToolFormat::kHermes, "<tool_call>{\"name\": \"get_time\", \"arguments\": \"\xEF\xBB\xBF{\\\"a\\\": 1}\"}</tool_call>", kTools);
  ASSERT_EQ(bom.calls.size(), 1u);
  EXPECT_EQ(bom.calls[0].arguments, "{\"a\":1}");
  // The parser stops at a NUL byte, so arguments given as a string with one
  // are written as parsed, not with what followed it.
  const ToolOutput nul = parse_tool_calls(
      ToolFormat::kHermes, "<tool_call>{\"name\": \"get_time\", \"arguments\": \"{\\\"a\\\": 1}\\u0000junk\"}</tool_call>", kTools);
  ASSERT_EQ(nul.calls.size(), 1u);
  EXPECT_EQ(nul.calls[0].arguments, "{\"a\":1}");
  // A key written with escapes is still the key.
  const ToolOutput escaped = parse_tool_calls(
      ToolFormat::kHermes, "<tool_call>{\"name\": \"get_time\", \"argu\\u006dents\": {\"n\": 10000000000000000000001}}</tool_call>",
      kTools);
  ASSERT_EQ(escaped.calls.size(), 1u);
  EXPECT_EQ(escaped.calls[0].arguments, "{\"n\":10000000000000000000001}");
}

std::size_t prefix(ToolFormat f, std::string_view text) { return ToolStream(f).safe_prefix(text); }

TEST(ToolCalls, MistralArray) {
  ToolOutput o = parse_tool_calls(ToolFormat::kMistral,
                                  " [{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}, "
                                  "{\"name\": \"get_time\", \"arguments\": {}}]",
                                  kTools);
  ASSERT_EQ(o.calls.size(), 2u);
  EXPECT_EQ(o.calls[0].arguments, "{\"city\":\"Paris\"}");
  EXPECT_EQ(o.content, "");
  EXPECT_EQ(parse_tool_calls(ToolFormat::kMistral, "[TOOL_CALLS][{\"name\": \"get_time\"}]", kTools).calls.size(), 1u);
  EXPECT_EQ(parse_tool_calls(ToolFormat::kMistral, "[{\"name\": \"get_time\"}, {\"name\": \"get_time\"}]", kTools, 1).calls.size(), 1u);
  for (const std::string text : {"[1] Paris is in France.", "[]", "[{\"name\": \"nope\"}]", "[{\"name\": \"get_time\"}, 5]",
                                 "[{\"name\": \"get_time\"}] and more", "[{\"name\": \"get_time\"}"}) {
    o = parse_tool_calls(ToolFormat::kMistral, text, kTools);
    EXPECT_TRUE(o.calls.empty()) << text;
    EXPECT_EQ(o.content, text);
  }
  EXPECT_EQ(tool_format_of("{{- \"[TOOL_CALLS] [\" }}{{- \"[AVAILABLE_TOOLS]\" }}"), ToolFormat::kMistral);
  // Later Mistral tokenizers: [TOOL_CALLS]name[ARGS]{...}, control tokens
  // that decoding drops: not read.
  EXPECT_EQ(tool_format_of("{{- \"[TOOL_CALLS]\" + name + \"[ARGS]\" + arguments }}"), ToolFormat::kNone);
}

TEST(ToolCalls, StreamablePrefix) {
  using F = ToolFormat;
  EXPECT_EQ(prefix(F::kHermes, "Hello"), 5u);
  EXPECT_EQ(prefix(F::kHermes, "Hello <tool"), 5u);  // might become a call; the space waits too
  EXPECT_EQ(prefix(F::kHermes, "Hello <tools"), 12u);
  EXPECT_EQ(prefix(F::kHermes, "Hi\n<tool_call>{\"name\""), 2u);
  EXPECT_EQ(prefix(F::kHermes, "Hi <"), 2u);
  EXPECT_EQ(prefix(F::kHermes, "<tool_call>"), 0u);
  EXPECT_EQ(prefix(F::kLlamaJson, "  "), 0u);
  EXPECT_EQ(prefix(F::kLlamaJson, " {\"name\""), 0u);
  EXPECT_EQ(prefix(F::kLlamaJson, "<|pyth"), 0u);
  EXPECT_EQ(prefix(F::kLlamaJson, "<|python_tag|>"), 0u);
  EXPECT_EQ(prefix(F::kLlamaJson, "<|pythons"), 9u);
  EXPECT_EQ(prefix(F::kLlamaJson, "Sure, "), 6u);
  EXPECT_EQ(prefix(F::kMistral, " [{\"name\""), 0u);
  EXPECT_EQ(prefix(F::kMistral, "No call."), 8u);
  EXPECT_EQ(prefix(F::kNone, "<tool_call>"), 11u);
}

// Fed the answer as it grows, a stream says what a fresh one says of the
// text so far (it looks only at what was added, and must lose nothing).
TEST(ToolCalls, IncrementalPrefixEqualsAFreshOne) {
  std::mt19937 rng(11);
  const std::string alphabet[] = {"<tool_call>", "</tool_call>", "<tool_c", "<", " ", "\n", "a", "{", "[", "<|python_tag|>",
                                  "[TOOL_CALLS]", "<|py", "x"};
  for (ToolFormat f : {ToolFormat::kHermes, ToolFormat::kLlamaJson, ToolFormat::kMistral})
    for (int round = 0; round < 300; ++round) {
      std::string text;
      ToolStream s(f);
      for (int step = 0; step < 12; ++step) {
        text += alphabet[rng() % std::size(alphabet)];
        ASSERT_EQ(s.safe_prefix(text), prefix(f, text)) << tool_format_name(f) << ": " << text;
      }
    }
}

// The server's streaming, as it does it: at each point the safe prefix is
// sent; at the end what is left of the whole answer's content. Whatever the
// pieces the text arrives in, the streamed content is the content.
std::string streamed(ToolFormat f, const std::string& text, std::mt19937& rng) {
  std::string out;
  std::size_t sent = 0, have = 0, last_prefix = 0;
  ToolStream stream(f);
  while (have < text.size()) {
    have = std::min(text.size(), have + 1 + rng() % 5);
    const std::size_t p = stream.safe_prefix(std::string_view(text).substr(0, have));
    EXPECT_GE(p, last_prefix) << "the prefix shrank at " << have << " of: " << text;
    last_prefix = p;
    if (p > sent) {
      out += text.substr(sent, p - sent);
      sent = p;
    }
  }
  const std::string content = parse_tool_calls(f, text, kTools).content;
  EXPECT_EQ(content.compare(0, sent, text, 0, sent), 0) << "streamed bytes are not the content's start: " << text;
  if (content.size() > sent) out += content.substr(sent);
  return out;
}

TEST(ToolCalls, StreamedContentEqualsTheWholeAnswersContent) {
  std::mt19937 rng(7);
  const std::vector<std::string> texts = {
      "Plain answer with <tags> and < signs.\n",
      "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
      "a\n<tool_call>{\"name\": \"get_time\"}</tool_call>\nb  ",
      "  \n<tool_call>{\"name\": \"get_time\"}</tool_call>",
      "<tool_call>{\"name\": \"nope\"}</tool_call> tail",
      "x <tool_call>{\"name\": \"get_time\"",
      "<tool_cal",
      "{\"name\": \"get_time\", \"parameters\": {}}",
      " Sure: {\"name\": \"get_time\"}",
      " [{\"name\": \"get_time\", \"arguments\": {}}]",
      "[1] is a citation, not a call.",
  };
  for (ToolFormat f : {ToolFormat::kHermes, ToolFormat::kLlamaJson, ToolFormat::kMistral})
    for (const std::string& t : texts)
      for (int round = 0; round < 20; ++round)
        EXPECT_EQ(streamed(f, t, rng), parse_tool_calls(f, t, kTools).content) << tool_format_name(f) << ": " << t;
}

}  // namespace
}  // namespace airlock::daemon
