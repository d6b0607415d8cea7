// POST /v1/responses: what the Responses API's input items become as a
// chat conversation, which parameters are refused and under which names,
// and the shape of the response object and its items.
#include <gtest/gtest.h>

#include <cstdint>

#include "responses_api.h"

namespace airlock::daemon {
namespace {

CompletionRequest parsed(const ojson& body) {
  CompletionRequest r;
  auto e = parse_responses_request(body.dump(), &r);
  EXPECT_FALSE(e) << (e ? e->param + ": " + e->message : "");
  return r;
}

ApiError refused(const ojson& body) {
  CompletionRequest r;
  auto e = parse_responses_request(body.dump(), &r);
  EXPECT_TRUE(e) << body.dump();
  return e.value_or(ApiError{});
}

TEST(ResponsesApiTest, AStringInputIsOneUserMessage) {
  CompletionRequest r = parsed({{"model", "m"}, {"input", "hello"}, {"instructions", "be brief"},
                                {"max_output_tokens", 12}, {"temperature", 0.5}, {"top_p", 0.9}, {"stream", true}});
  EXPECT_EQ(r.endpoint, Endpoint::kChat);
  EXPECT_EQ(r.messages, ojson::parse(R"([{"role":"system","content":"be brief"},{"role":"user","content":"hello"}])"));
  EXPECT_EQ(r.max_tokens, 12);
  EXPECT_FLOAT_EQ(r.sampling.temperature, 0.5f);
  EXPECT_FLOAT_EQ(r.sampling.top_p, 0.9f);
  EXPECT_TRUE(r.stream);
  EXPECT_FALSE(r.logprobs);
  ASSERT_TRUE(r.responses);
  EXPECT_EQ(r.responses->instructions, "be brief");
  EXPECT_EQ(r.responses->max_output_tokens, 12);
  EXPECT_EQ(r.responses->temperature, 0.5);
  EXPECT_EQ(r.n, 1);
}

// An agent loop's second turn: the items OpenAI returned (reasoning, a
// message, two calls) and the calls' outputs, sent back.
TEST(ResponsesApiTest, ItemsBecomeTheConversation) {
  const ojson input = ojson::parse(R"([
    {"role":"developer","content":"You can call tools."},
    {"type":"message","role":"user","content":[{"type":"input_text","text":"Weather in"},{"type":"input_text","text":"Paris?"}]},
    {"type":"reasoning","id":"rs_1","summary":[],"content":[{"type":"reasoning_text","text":"Two cities."}]},
    {"type":"message","role":"assistant","id":"msg_1","status":"completed",
     "content":[{"type":"output_text","text":"Checking.","annotations":[]}]},
    {"type":"function_call","id":"fc_1","call_id":"call_a","name":"get_weather","arguments":"{\"city\":\"Paris\"}"},
    {"type":"function_call","id":"fc_2","call_id":"call_b","name":"get_time","arguments":"{}"},
    {"type":"function_call_output","call_id":"call_a","output":"18 C"},
    {"type":"function_call_output","call_id":"call_b","output":[{"type":"input_text","text":"noon"}]},
    {"role":"user","content":"Thanks."}])");
  CompletionRequest r = parsed({{"model", "m"}, {"input", input}});
  const ojson want = ojson::parse(R"([
    {"role":"system","content":"You can call tools."},
    {"role":"user","content":"Weather in\nParis?"},
    {"role":"assistant","content":"Checking.","reasoning_content":"Two cities.","tool_calls":[
      {"id":"call_a","type":"function","function":{"name":"get_weather","arguments":{"city":"Paris"}}},
      {"id":"call_b","type":"function","function":{"name":"get_time","arguments":{}}}]},
    {"role":"tool","tool_call_id":"call_a","content":"18 C","name":"get_weather"},
    {"role":"tool","tool_call_id":"call_b","content":"noon","name":"get_time"},
    {"role":"user","content":"Thanks."}])");
  EXPECT_EQ(r.messages, want) << r.messages.dump(1);

  // Reasoning goes with the assistant turn it leads to: not across a user
  // message, and into the open turn when it comes between text and calls.
  CompletionRequest across = parsed({{"model", "m"},
                                     {"input", ojson::parse(R"([{"role":"user","content":"q"},
      {"type":"reasoning","summary":[],"content":[{"type":"reasoning_text","text":"R1"}]},
      {"role":"user","content":"q2"},
      {"role":"assistant","content":"a2"},
      {"type":"reasoning","summary":[],"content":[{"type":"reasoning_text","text":"R2"}]},
      {"type":"function_call","call_id":"c","name":"f","arguments":"{}"}])")}});
  ASSERT_EQ(across.messages.size(), 3u) << across.messages.dump();
  EXPECT_EQ(across.messages[2]["reasoning_content"], "R2") << across.messages.dump();
  EXPECT_EQ(across.messages[2]["tool_calls"].size(), 1u);

  // Calls without a message before them make an assistant turn of their own.
  CompletionRequest calls = parsed({{"model", "m"},
                                    {"input", ojson::parse(R"([{"role":"user","content":"hi"},
      {"type":"function_call","call_id":"c1","name":"f","arguments":"{}"},
      {"type":"function_call_output","call_id":"c1","output":"done"},
      {"type":"function_call","call_id":"c2","name":"f","arguments":"{}"}])")}});
  ASSERT_EQ(calls.messages.size(), 4u) << calls.messages.dump();
  EXPECT_EQ(calls.messages[1]["role"], "assistant");
  EXPECT_EQ(calls.messages[1]["content"], "");
  EXPECT_EQ(calls.messages[1]["tool_calls"].size(), 1u);
  EXPECT_EQ(calls.messages[3]["tool_calls"][0]["id"], "c2");
}

TEST(ResponsesApiTest, ToolsTextFormatAndLogprobs) {
  const ojson params = ojson::parse(
      R"({"type":"object","properties":{"city":{"type":"string"}},"required":["city"],"additionalProperties":false})");
  CompletionRequest r = parsed({{"model", "m"},
                                {"input", "hi"},
                                {"tools", {{{"type", "function"}, {"name", "get_weather"}, {"parameters", params}}}},
                                {"tool_choice", {{"type", "function"}, {"name", "get_weather"}}},
                                {"parallel_tool_calls", false}});
  ASSERT_EQ(r.tool_specs.size(), 1u);
  EXPECT_TRUE(r.tool_specs[0].strict);  // the Responses API's default
  EXPECT_EQ(r.tools[0]["function"]["name"], "get_weather");
  EXPECT_EQ(r.tools[0]["function"]["parameters"], params);
  EXPECT_EQ(r.forced_tool, "get_weather");
  EXPECT_TRUE(r.tool_required);
  EXPECT_FALSE(r.parallel_tool_calls);
  EXPECT_EQ(r.responses->tools[0]["strict"], true);
  EXPECT_EQ(r.responses->tool_choice["name"], "get_weather");

  CompletionRequest loose = parsed({{"model", "m"}, {"input", "hi"},
                                    {"tools", {{{"type", "function"}, {"name", "f"}, {"strict", false}}}},
                                    {"max_tool_calls", 1}});
  EXPECT_FALSE(loose.tool_specs[0].strict);
  EXPECT_FALSE(loose.parallel_tool_calls);

  CompletionRequest schema = parsed(
      {{"model", "m"}, {"input", "hi"},
       {"text", {{"format", {{"type", "json_schema"}, {"name", "city"}, {"schema", params}, {"strict", true}}}}}});
  EXPECT_TRUE(schema.json_object);
  EXPECT_TRUE(schema.response_grammar);
  EXPECT_EQ(schema.responses->text["format"]["name"], "city");
  CompletionRequest object = parsed({{"model", "m"}, {"input", "hi"}, {"text", {{"format", {{"type", "json_object"}}}}}});
  EXPECT_TRUE(object.json_object);
  EXPECT_FALSE(object.response_grammar);

  CompletionRequest lp = parsed({{"model", "m"}, {"input", "hi"}, {"include", {"message.output_text.logprobs"}},
                                 {"top_logprobs", 3}});
  EXPECT_TRUE(lp.logprobs);
  EXPECT_EQ(lp.top_logprobs, 3);
  EXPECT_TRUE(lp.responses->output_logprobs);
  EXPECT_FALSE(parsed({{"model", "m"}, {"input", "hi"}, {"include", {"reasoning.encrypted_content"}}}).logprobs);
}

TEST(ResponsesApiTest, WhatNeedsStateOrHostedToolsIsRefusedByName) {
  const ojson base = {{"model", "m"}, {"input", "hi"}};
  auto with = [&](const char* key, ojson v) {
    ojson b = base;
    b[key] = std::move(v);
    return b;
  };
  EXPECT_EQ(refused(with("previous_response_id", "resp_1")).param, "previous_response_id");
  EXPECT_EQ(refused(with("conversation", "conv_1")).param, "conversation");
  EXPECT_EQ(refused(with("background", true)).param, "background");
  EXPECT_EQ(refused(with("truncation", "middle")).param, "truncation");
  EXPECT_EQ(refused(with("prompt", {{"id", "pmpt_1"}})).param, "prompt");
  EXPECT_EQ(refused(with("tools", {{{"type", "web_search"}}})).param, "tools[0].type");
  EXPECT_EQ(refused(with("tool_choice", {{"type", "allowed_tools"}, {"mode", "auto"}, {"tools", ojson::array()}})).param,
            "tool_choice");
  EXPECT_EQ(refused(with("max_tool_calls", 3)).param, "max_tool_calls");
  EXPECT_EQ(refused(with("airlock", {{"collections", {"a"}}})).param, "airlock");
  EXPECT_EQ(refused(with("text", {{"format", {{"type", "grammar"}}}})).param, "text.format.type");
  // Allowed: what asks for the default, or concerns nothing an answer here has.
  for (const ojson& b : {with("store", true), with("truncation", "disabled"), with("truncation", "auto"), with("background", false),
                         with("service_tier", "auto"), with("reasoning", {{"effort", "low"}, {"summary", "auto"}}),
                         with("metadata", {{"k", "v"}}), with("prompt_cache_key", "x"),
                         with("stream_options", {{"include_obfuscation", false}})})
    parsed(b);
}

TEST(ResponsesApiTest, BadInputIsNamedAsTheResponsesApiNamesIt) {
  auto input = [](const char* items) { return ojson{{"model", "m"}, {"input", ojson::parse(items)}}; };
  EXPECT_EQ(refused({{"model", "m"}}).param, "input");
  EXPECT_EQ(refused(input("[]")).param, "input");
  EXPECT_EQ(refused(input("[5]")).param, "input[0]");
  EXPECT_EQ(refused(input(R"([{"role":"user","content":"a"},{"role":"robot","content":"b"}])")).param, "input[1].role");
  ApiError image = refused(input(R"([{"role":"user","content":[{"type":"input_image","image_url":"data:"}]}])"));
  EXPECT_EQ(image.param, "input[0].content");
  EXPECT_NE(image.message.find("input_image"), std::string::npos) << image.message;
  EXPECT_EQ(refused(input(R"([{"type":"item_reference","id":"msg_1"}])")).param, "input[0]");
  EXPECT_EQ(refused(input(R"([{"type":"web_search_call","id":"ws_1"}])")).param, "input[0].type");
  EXPECT_EQ(refused(input(R"([{"type":"function_call","name":"f","arguments":"{}"}])")).param, "input[0].call_id");
  EXPECT_EQ(refused(input(R"([{"type":"function_call","call_id":"c","name":"f","arguments":{}}])")).param,
            "input[0].arguments");
  EXPECT_EQ(refused(input(R"([{"type":"function_call_output","call_id":"c"}])")).param, "input[0].output");
  // Checked as chat parameters, named as Responses ones (message included).
  ApiError tokens = refused({{"model", "m"}, {"input", "hi"}, {"max_output_tokens", 0}});
  EXPECT_EQ(tokens.param, "max_output_tokens");
  EXPECT_NE(tokens.message.find("max_output_tokens"), std::string::npos) << tokens.message;
  EXPECT_EQ(tokens.message.find("max_completion_tokens"), std::string::npos) << tokens.message;
  ApiError schema = refused({{"model", "m"}, {"input", "hi"},
                             {"text", {{"format", {{"type", "json_schema"}, {"name", "x"}, {"schema", 5}}}}}});
  EXPECT_EQ(schema.param, "text.format.schema");
  EXPECT_EQ(refused({{"model", "m"}, {"input", "hi"}, {"tools", {{{"type", "function"}, {"name", "bad name"}}}}}).param,
            "tools[0].name");
  // Arguments nested past the body's limits, refused as chat refuses them.
  std::string deep = "1";
  for (int i = 0; i < 60; ++i) deep = "{\"k\":" + deep + "}";
  ojson items = ojson::parse(R"([{"role":"user","content":"a"},{"type":"function_call","call_id":"c","name":"f"}])");
  items[1]["arguments"] = deep;
  EXPECT_EQ(refused({{"model", "m"}, {"input", items}}).param, "input[1].arguments");
  // A call joined to the turn before it is named as its own item.
  ojson joined = ojson::parse(R"([{"role":"user","content":"a"},{"role":"assistant","content":"b"},
      {"type":"function_call","call_id":"c1","name":"f","arguments":"{}"},{"type":"function_call","call_id":"c2","name":"f"}])");
  joined[3]["arguments"] = deep;
  ApiError second = refused({{"model", "m"}, {"input", joined}});
  EXPECT_EQ(second.param, "input[3].arguments");
  EXPECT_EQ(second.message.rfind("input[3].arguments", 0), 0u) << second.message;
  ApiError lp = refused({{"model", "m"}, {"input", "hi"}, {"top_logprobs", 2}, {"tools", {{{"type", "function"}, {"name", "f"}}}}});
  EXPECT_EQ(lp.param, "include");
  EXPECT_NE(lp.message.find("logprobs"), std::string::npos) << lp.message;
  EXPECT_EQ(refused({{"model", "m"}, {"input", "hi"}, {"user", 5}}).param, "user");
  EXPECT_EQ(refused({{"model", "m"}, {"input", "hi"}, {"metadata", {{"k", 5}}}}).param, "metadata");
  EXPECT_EQ(refused({{"model", "m"}, {"input", "hi"}, {"include", "x"}}).param, "include");
  EXPECT_EQ(refused({{"model", "m"}, {"input", "hi"}, {"instructions", 5}}).param, "instructions");
}

// An integer beyond 64 bits, which would reach the template as a double
// (chat's rule, openai_api_test.cpp): in the body and in a call's
// arguments, named as the Responses API names them.
TEST(ResponsesApiTest, IntegersBeyond64BitsAreRefused) {
  CompletionRequest r;
  std::optional<ApiError> e = parse_responses_request(
      R"({"model":"m","input":[{"role":"user","content":"a"},
          {"type":"function_call","call_id":"c","name":"f","arguments":"{}"}],"x":-9223372036854775809})",
      &r);
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->message, "the request body has the integer -9223372036854775809, which does not fit in 64 bits");
  ojson items = ojson::parse(R"([{"role":"user","content":"a"},{"type":"function_call","call_id":"c","name":"f"}])");
  items[1]["arguments"] = R"({"id": 18446744073709551616})";
  const ApiError args = refused({{"model", "m"}, {"input", items}});
  EXPECT_EQ(args.param, "input[1].arguments");
  EXPECT_EQ(args.message, "input[1].arguments has the integer 18446744073709551616, which does not fit in 64 bits");
  items[1]["arguments"] = R"({"id": 18446744073709551615, "x": 1.8446744073709552e+19})";
  EXPECT_EQ(parsed({{"model", "m"}, {"input", items}}).messages[1]["tool_calls"][0]["function"]["arguments"]["id"],
            UINT64_MAX);
}

// reasoning.effort is chat's reasoning_effort: the template variable, held
// to OpenAI's values, repeated in the response, its errors named as the
// Responses API names it.
TEST(ResponsesApiTest, ReasoningEffortReachesTheTemplate) {
  CompletionRequest r = parsed({{"model", "m"}, {"input", "hi"}, {"reasoning", {{"effort", "high"}, {"summary", "auto"}}}});
  EXPECT_EQ(r.chat_template_kwargs, ojson({{"reasoning_effort", "high"}}));
  EXPECT_EQ(r.responses->reasoning, ojson({{"effort", "high"}, {"summary", "auto"}}));
  CompletionRequest none = parsed({{"model", "m"}, {"input", "hi"}, {"reasoning", {{"effort", nullptr}}}});
  EXPECT_TRUE(none.chat_template_kwargs.empty());
  EXPECT_TRUE(none.responses->reasoning["effort"].is_null());
  for (const ojson& effort : {ojson("extreme"), ojson(3), ojson("High")}) {
    ApiError e = refused({{"model", "m"}, {"input", "hi"}, {"reasoning", {{"effort", effort}}}});
    EXPECT_EQ(e.param, "reasoning.effort") << effort;
    EXPECT_EQ(e.message.rfind("reasoning.effort must be", 0), 0u) << e.message;
  }
  CompletionRequest same = parsed({{"model", "m"}, {"input", "hi"}, {"reasoning", {{"effort", "low"}}},
                                   {"chat_template_kwargs", {{"reasoning_effort", "low"}}}});
  EXPECT_EQ(same.chat_template_kwargs, ojson({{"reasoning_effort", "low"}}));
  EXPECT_EQ(refused({{"model", "m"}, {"input", "hi"}, {"reasoning", {{"effort", "low"}}},
                     {"chat_template_kwargs", {{"reasoning_effort", "high"}}}})
                .param,
            "chat_template_kwargs.reasoning_effort");
  EXPECT_EQ(refused({{"model", "m"}, {"input", "hi"}, {"reasoning", {{"summary", 1}}}}).param, "reasoning.summary");
  EXPECT_EQ(refused({{"model", "m"}, {"input", "hi"}, {"reasoning", "high"}}).param, "reasoning");
}

TEST(ResponsesApiTest, TheResponseObjectAndItsItems) {
  CompletionRequest r = parsed({{"model", "m"}, {"input", "hi"}, {"instructions", "x"}, {"metadata", {{"k", "v"}}},
                                {"tools", {{{"type", "function"}, {"name", "f"}}}}});
  ResponseOutput out;
  out.id = "resp_1";
  out.created_at = 7;
  out.model = "m";
  ojson progress = response_json(*r.responses, out);
  EXPECT_EQ(progress["status"], "in_progress");
  EXPECT_TRUE(progress["output"].empty());
  EXPECT_TRUE(progress["usage"].is_null());
  EXPECT_EQ(progress["store"], false);
  EXPECT_EQ(progress["instructions"], "x");
  EXPECT_EQ(progress["metadata"]["k"], "v");
  EXPECT_EQ(progress["tools"][0]["strict"], true);

  out.status = "incomplete";
  out.reasoning_id = "rs_1";
  out.message_id = "msg_1";
  out.reasoning = "hmm";
  out.has_message = true;
  out.text = "Checking.";
  ToolCall call{"f", "{\"a\":1}", "call_xyz"};
  out.calls.push_back(call);
  out.usage = responses_usage(10, 4, 6, 2);
  ojson done = response_json(*r.responses, out);
  EXPECT_EQ(done["incomplete_details"]["reason"], "max_output_tokens");
  ASSERT_EQ(done["output"].size(), 3u);
  // The reasoning ended before the text that was cut.
  EXPECT_EQ(done["output"][0], ojson::parse(R"({"id":"rs_1","type":"reasoning","summary":[],
      "content":[{"type":"reasoning_text","text":"hmm"}],"status":"completed"})"));
  EXPECT_EQ(done["output"][1], ojson::parse(R"({"id":"msg_1","type":"message","status":"incomplete","role":"assistant",
      "content":[{"type":"output_text","text":"Checking.","annotations":[],"logprobs":[]}]})"));
  EXPECT_EQ(done["output"][2], ojson::parse(R"({"id":"fc_xyz","type":"function_call","status":"completed",
      "arguments":"{\"a\":1}","call_id":"call_xyz","name":"f"})"));
  EXPECT_EQ(done["usage"], ojson::parse(R"({"input_tokens":10,"input_tokens_details":{"cached_tokens":4},
      "output_tokens":6,"output_tokens_details":{"reasoning_tokens":2},"total_tokens":16})"));
  // Cut inside the reasoning: the reasoning item alone, incomplete.
  ResponseOutput thinking = out;
  thinking.reasoning_ended = false;
  thinking.has_message = false;
  thinking.calls.clear();
  ojson cut = response_json(*r.responses, thinking);
  ASSERT_EQ(cut["output"].size(), 1u);
  EXPECT_EQ(cut["output"][0]["status"], "incomplete");
  // Mistral's call ids have no prefix to drop.
  EXPECT_EQ(function_call_item_id(ToolCall{"f", "{}", "aB3dE5gH9"}), "fc_aB3dE5gH9");
}

}  // namespace
}  // namespace airlock::daemon
