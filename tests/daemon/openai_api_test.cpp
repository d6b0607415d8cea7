// OpenAI request parsing: what SDKs send is accepted, everything else is a
// 400 naming the parameter.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "airlock/common/json_depth.h"
#include "openai_api.h"

namespace airlock::daemon {
namespace {

TEST(OpenAiApiTest, ChatRequestAsSdksSendIt) {
  CompletionRequest r;
  auto e = parse_request(R"({"model":"m","messages":[{"role":"system","content":"be brief"},
    {"role":"user","content":[{"type":"text","text":"hel"},{"type":"text","text":"lo"}]},
    {"role":"developer","content":"x"}],
    "max_completion_tokens":12,"temperature":0.5,"top_p":0.9,"seed":-3,"stop":["\n\n","END"],"n":2,
    "logprobs":true,"top_logprobs":3,"stream":true,"stream_options":{"include_usage":true},
    "presence_penalty":0.5,"frequency_penalty":-0.5,"user":"u","tools":[],"response_format":{"type":"text"}})",
                         Endpoint::kChat, &r);
  ASSERT_FALSE(e) << e->message;
  EXPECT_EQ(r.model, "m");
  ASSERT_EQ(r.messages.size(), 3u);
  EXPECT_EQ(r.messages[1]["content"], "hel\nlo");  // text parts joined by a newline, as vLLM joins them
  EXPECT_EQ(r.messages[2]["role"], "system");
  EXPECT_EQ(r.max_tokens, 12);
  EXPECT_FLOAT_EQ(r.sampling.temperature, 0.5f);
  EXPECT_TRUE(r.seeded);
  EXPECT_EQ(r.sampling.seed, static_cast<std::uint64_t>(-3));
  EXPECT_EQ(r.stop.size(), 2u);
  EXPECT_EQ(r.n, 2);
  EXPECT_EQ(r.top_logprobs, 3);
  EXPECT_EQ(r.sampling.n_logprobs, 3);
  EXPECT_TRUE(r.stream && r.include_usage);
}

// What SDKs and clients written for vLLM send by default, asking for
// nothing this server lacks, is accepted: empty tools, tool_choice none or
// auto, response_format text, an empty logit_bias, best_of equal to n,
// top_k -1 (vLLM's "off"), modalities ["text"].
TEST(OpenAiApiTest, DefaultsOfUnsupportedFeaturesAreAccepted) {
  CompletionRequest r;
  for (const char* body :
       {R"({"model":"m","messages":[{"role":"user","content":"x"}],"tools":[],"tool_choice":"auto","logit_bias":{},
           "response_format":{"type":"text"},"modalities":["text"],"functions":null,"top_k":-1})",
        R"({"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f"}}],
           "tool_choice":"none"})",
        R"({"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f"}}]})"}) {
    const std::optional<ApiError> e = parse_request(body, Endpoint::kChat, &r);
    EXPECT_FALSE(e) << body << ": " << e->message;
    EXPECT_EQ(r.sampling.top_k, 0);
  }
  const std::optional<ApiError> e =
      parse_request(R"({"model":"m","prompt":"x","n":2,"best_of":2,"suffix":"","logit_bias":null})", Endpoint::kCompletions, &r);
  EXPECT_FALSE(e) << e->message;
}

TEST(OpenAiApiTest, LogitBiasIsTokenIdsToBiases) {
  CompletionRequest r;
  ASSERT_FALSE(parse_request(R"({"model":"m","prompt":"x","logit_bias":{"50256":-100,"7":2.5,"0":100}})",
                             Endpoint::kCompletions, &r));
  std::vector<std::pair<std::int32_t, float>> want = {{50256, -100.0f}, {7, 2.5f}, {0, 100.0f}};
  EXPECT_EQ(r.sampling.logit_bias, want);
}

TEST(OpenAiApiTest, CompletionsRequest) {
  CompletionRequest r;
  ASSERT_FALSE(parse_request(R"({"model":"m","prompt":["abc"],"max_tokens":3,"logprobs":2})", Endpoint::kCompletions, &r));
  EXPECT_EQ(r.prompt, "abc");
  EXPECT_EQ(r.prompts, std::vector<std::string>{"abc"});
  CompletionRequest two;
  ASSERT_FALSE(parse_request(R"({"model":"m","prompt":["a","b"],"n":3})", Endpoint::kCompletions, &two));
  EXPECT_EQ(two.prompts, (std::vector<std::string>{"a", "b"}));
  EXPECT_TRUE(r.logprobs);
  EXPECT_EQ(r.top_logprobs, 2);
  EXPECT_FALSE(r.echo);
  CompletionRequest e;
  ASSERT_FALSE(parse_request(R"({"model":"m","prompt":"abc","echo":true})", Endpoint::kCompletions, &e));
  EXPECT_TRUE(e.echo);
  EXPECT_FALSE(e.logprobs);
  // The prompt's tokens are not scored: echo with logprobs is refused.
  std::optional<ApiError> both =
      parse_request(R"({"model":"m","prompt":"abc","echo":true,"logprobs":0})", Endpoint::kCompletions, &e);
  ASSERT_TRUE(both.has_value());
  EXPECT_EQ(both->param, "logprobs");
}

// top_p 0 (accepted by the OpenAI API) keeps only the most likely token:
// greedy decoding, with the sampler's own top_p left valid.
TEST(OpenAiApiTest, TopPZeroIsGreedy) {
  for (Endpoint ep : {Endpoint::kChat, Endpoint::kCompletions}) {
    CompletionRequest r;
    const std::string body = ep == Endpoint::kChat
                                 ? R"({"model":"m","messages":[{"role":"user","content":"x"}],"top_p":0,"temperature":1})"
                                 : R"({"model":"m","prompt":"x","top_p":0.0,"temperature":0.7})";
    auto e = parse_request(body, ep, &r);
    ASSERT_FALSE(e) << e->message;
    EXPECT_EQ(r.sampling.temperature, 0.0f);
    EXPECT_TRUE(engine::validate(r.sampling).is_ok());
  }
}

TEST(OpenAiApiTest, BadRequestsNameTheParameter) {
  const std::vector<std::tuple<std::string, Endpoint, std::string>> cases = {
      {"", Endpoint::kChat, ""},
      {"[]", Endpoint::kChat, ""},
      {R"({"messages":[{"role":"user","content":"x"}]})", Endpoint::kChat, "model"},
      {R"({"model":"m"})", Endpoint::kChat, "messages"},
      {R"({"model":"m","messages":[]})", Endpoint::kChat, "messages"},
      {R"({"model":"m","messages":[{"role":"wizard","content":"x"}]})", Endpoint::kChat, "messages[0].role"},
      {R"({"model":"m","messages":[{"role":"user","content":7}]})", Endpoint::kChat, "messages[0].content"},
      {R"({"model":"m","messages":[{"role":"user","content":[{"type":"image_url"}]}]})", Endpoint::kChat,
       "messages[0].content"},
      {R"({"model":"m","messages":[{"role":"user","content":"x"}],"temperature":3})", Endpoint::kChat, "temperature"},
      {R"({"model":"m","messages":[{"role":"user","content":"x"}],"temperature":"hot"})", Endpoint::kChat, "temperature"},
      {R"({"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":0})", Endpoint::kChat, "max_tokens"},
      {R"({"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":1.5})", Endpoint::kChat, "max_tokens"},
      {R"({"model":"m","messages":[{"role":"user","content":"x"}],"n":100})", Endpoint::kChat, "n"},
      {R"({"model":"m","messages":[{"role":"user","content":"x"}],"stop":["a","b","c","d","e"]})", Endpoint::kChat, "stop"},
      {R"({"model":"m","messages":[{"role":"user","content":"x"}],"stop":[""]})", Endpoint::kChat, "stop"},
      {R"({"model":"m","messages":[{"role":"user","content":"x"}],"top_logprobs":2})", Endpoint::kChat, "top_logprobs"},
      {R"({"model":"m","messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":true}})",
       Endpoint::kChat, "stream_options"},
      {R"({"model":"m","messages":[{"role":"user","content":"x"}],"presence_penalty":-3})", Endpoint::kChat,
       "presence_penalty"},
      {R"({"model":"m","prompt":5})", Endpoint::kCompletions, "prompt"},
      {R"({"model":"m"})", Endpoint::kCompletions, "prompt"},
      {R"({"model":"m","prompt":"x","logprobs":9})", Endpoint::kCompletions, "logprobs"},
      // Asked for, would change the answer, not supported: named, not ignored.
      {R"({"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f"}}],
          "tool_choice":7})",
       Endpoint::kChat, "tool_choice"},
      {R"({"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f",
           "strict":true,"parameters":{"type":"object","properties":{"a":{"type":"string","pattern":"(?=@)x"}}}}}]})",
       Endpoint::kChat, "tools[0].function.parameters"},
      {R"({"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f",
           "strict":"yes"}}]})", Endpoint::kChat, "tools[0].function.strict"},
      {R"({"model":"m","messages":[{"role":"user","content":"x"}],"tool_choice":{"type":"function","function":{"name":"f"}}})",
       Endpoint::kChat, "tool_choice"},
      {R"({"model":"m","messages":[{"role":"user","content":"x"}],"functions":[{"name":"f"}]})", Endpoint::kChat,
       "functions"},
      {R"({"model":"m","messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"},
          "airlock":{}})",
       Endpoint::kChat, "response_format"},
      {R"({"model":"m","messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema",
          "json_schema":{"name":"x","schema":{"type":"string","pattern":"^(a)\\1"}}}})",
       Endpoint::kChat, "response_format.json_schema.schema"},
      {R"({"model":"m","messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema"}})",
       Endpoint::kChat, "response_format.json_schema"},
      {R"({"model":"m","messages":[{"role":"user","content":"x"}],"response_format":{"type":"grammar"}})",
       Endpoint::kChat, "response_format.type"},
      {R"({"model":"m","messages":[{"role":"user","content":"x"}],"response_format":"json"})", Endpoint::kChat,
       "response_format"},
      {R"({"model":"m","messages":[{"role":"user","content":"x"}],"logit_bias":{"50256":-101}})", Endpoint::kChat,
       "logit_bias"},
      {R"({"model":"m","messages":[{"role":"user","content":"x"}],"logit_bias":{"hello":1}})", Endpoint::kChat,
       "logit_bias"},
      {R"({"model":"m","messages":[{"role":"user","content":"x"}],"logit_bias":{"-3":1}})", Endpoint::kChat,
       "logit_bias"},
      {R"({"model":"m","messages":[{"role":"user","content":"x"}],"logit_bias":[1,2]})", Endpoint::kChat,
       "logit_bias"},
      {R"({"model":"m","messages":[{"role":"user","content":"x"}],"modalities":["text","audio"]})", Endpoint::kChat,
       "modalities"},
      {R"({"model":"m","prompt":"x","logit_bias":{"7":"5"}})", Endpoint::kCompletions, "logit_bias"},
      {R"({"model":"m","prompt":"def f(","suffix":"  return x"})", Endpoint::kCompletions, "suffix"},
      {R"({"model":"m","prompt":"x","best_of":3})", Endpoint::kCompletions, "best_of"},
      {R"({"model":"m","prompt":"x","best_of":0})", Endpoint::kCompletions, "best_of"},
      {R"({"model":"m","prompt":"x","top_k":-2})", Endpoint::kCompletions, "top_k"},
      {R"({"model":"m","prompt":"x","top_k":18446744073709551615})", Endpoint::kCompletions, "top_k"},  // not -1 wrapped
  };
  for (const auto& [body, ep, param] : cases) {
    CompletionRequest r;
    auto e = parse_request(body, ep, &r);
    ASSERT_TRUE(e) << body;
    EXPECT_EQ(e->http_status, 400);
    EXPECT_EQ(e->param, param) << body << ": " << e->message;
    EXPECT_FALSE(e->message.empty());
  }
}

// JSON nested deeper than kMaxJsonDepth is refused right after parsing:
// nlohmann's parser takes any depth, but copying or printing the value
// recurses, and a body of a few MiB of '[' would overflow the connection
// thread's stack. Nesting up to the limit is accepted.
TEST(OpenAiApiTest, DeeplyNestedJsonIsRefusedNotRecursed) {
  auto nested = [](std::size_t depth) { return std::string(depth, '[') + std::string(depth, ']'); };
  const std::string deep = nested(4'000'000);
  CompletionRequest r;
  for (const std::string& body :
       {R"({"model":"m","messages":[{"role":"user","content":"x","name":)" + deep + "}]}",
        R"({"model":"m","messages":[{"role":"user","content":"x"}],"stop":)" + deep + "}",
        R"({"model":"m","messages":[{"role":"user","content":"x"}],"tools":)" + deep + "}"}) {
    const std::optional<ApiError> e = parse_request(body, Endpoint::kChat, &r);
    ASSERT_TRUE(e.has_value());
    EXPECT_EQ(e->http_status, 400);
    EXPECT_NE(e->message.find("nested"), std::string::npos) << e->message;
  }
  const std::optional<ApiError> c = parse_request(R"({"model":"m","prompt":)" + deep + "}", Endpoint::kCompletions, &r);
  ASSERT_TRUE(c.has_value());
  EXPECT_NE(c->message.find("nested"), std::string::npos) << c->message;
  EmbeddingRequest er;
  const std::optional<ApiError> ee = parse_embedding_request(R"({"model":"m","input":)" + deep + "}", &er);
  ASSERT_TRUE(ee.has_value());
  EXPECT_NE(ee->message.find("nested"), std::string::npos) << ee->message;
  bool generate = false;
  const std::optional<ApiError> q = parse_rag_query(R"({"question":"q","collections":)" + deep + "}", "m", &r, &generate);
  ASSERT_TRUE(q.has_value());
  EXPECT_NE(q->message.find("nested"), std::string::npos) << q->message;
  // At the limit: accepted as far as nesting goes (a message's extra field
  // is kept for templates; the whole body is kMaxJsonDepth deep).
  const std::string ok = R"({"model":"m","messages":[{"role":"user","content":"x","name":)" +
                         nested(kMaxJsonDepth - 3) + "}]}";
  EXPECT_FALSE(parse_request(ok, Endpoint::kChat, &r).has_value());
  const std::string over = R"({"model":"m","messages":[{"role":"user","content":"x","name":)" +
                           nested(kMaxJsonDepth - 2) + "}]}";
  ASSERT_TRUE(parse_request(over, Endpoint::kChat, &r).has_value());
}

// An object of n keys costs ordered_json n^2 / 2 comparisons to parse, so
// objects wider than kMaxJsonObjectKeys are refused by a linear pass first:
// wherever they are, in every parser of request bodies. Without that pass
// the 300,000-key bodies below take minutes each.
TEST(OpenAiApiTest, ObjectsWithTooManyKeysAreRefusedBeforeParsing) {
  auto object = [](std::size_t n) {
    std::string o = "{";
    for (std::size_t i = 0; i < n; ++i) o += (i ? ",\"k" : "\"k") + std::to_string(i) + "\":0";
    return o + "}";
  };
  const std::string wide = object(300'000);
  CompletionRequest r;
  EmbeddingRequest er;
  bool generate = false;
  std::vector<std::optional<ApiError>> errors = {
      parse_request(wide, Endpoint::kChat, &r),
      parse_request(R"({"model":"m","messages":[{"role":"user","content":"x","name":)" + wide + "}]}", Endpoint::kChat, &r),
      parse_request(R"({"model":"m","prompt":"x","stop":[)" + wide + "]}", Endpoint::kCompletions, &r),
      parse_embedding_request(R"({"model":"m","input":)" + wide + "}", &er),
      parse_rag_query(R"({"question":"q","x":)" + wide + "}", "m", &r, &generate)};
  ojson j;
  errors.push_back(parse_json_object(object(kMaxJsonObjectKeys + 1), &j));
  for (const std::optional<ApiError>& e : errors) {
    ASSERT_TRUE(e.has_value());
    EXPECT_EQ(e->http_status, 400);
    EXPECT_NE(e->message.find("more than 256 keys"), std::string::npos) << e->message;
  }
  // At the limit, and many objects at the limit side by side: parsed.
  ASSERT_FALSE(parse_json_object(object(kMaxJsonObjectKeys), &j).has_value());
  EXPECT_EQ(j.size(), kMaxJsonObjectKeys);
  std::string many = "{\"a\":[";
  for (int i = 0; i < 50; ++i) many += (i ? "," : "") + object(kMaxJsonObjectKeys);
  ASSERT_FALSE(parse_json_object(many + "]}", &j).has_value());
  EXPECT_EQ(j["a"].size(), 50u);
  // Invalid JSON is still reported as such.
  const std::optional<ApiError> bad = parse_json_object("{\"a\":", &j);
  ASSERT_TRUE(bad.has_value());
  EXPECT_NE(bad->message.find("not valid JSON"), std::string::npos) << bad->message;
}

// nlohmann::json parses an integer literal outside -2^63 .. 2^64-1 as a
// double: 18446744073709551616 in a tool call's arguments would reach the
// chat template as 1.8446744073709552e+19, where Python's jinja2 prints
// every digit. Such a body is refused, naming the integer; numbers written
// as floats stay floats, as the client wrote them.
TEST(OpenAiApiTest, IntegersBeyond64BitsAreRefusedNotRounded) {
  auto chat = [](const std::string& args) {
    return R"({"model":"m","messages":[{"role":"user","content":"pay"},{"role":"assistant","content":"",
      "tool_calls":[{"id":"c","type":"function","function":{"name":"pay","arguments":)" + args + "}}]}]}";
  };
  CompletionRequest r;
  for (const char* n : {"18446744073709551616", "-9223372036854775809", "99999999999999999999999",
                        "-18446744073709551616", "100000000000000000000000000000000000000"}) {
    for (const std::string& body : {chat(std::string(R"({"account":)") + n + "}"),
                                    std::string(R"({"model":"m","prompt":"x","seed":)") + n + "}",
                                    std::string(R"({"model":"m","messages":[],"x":[1,{"y":[)") + n + "]}]}"}) {
      const std::optional<ApiError> e = parse_request(body, Endpoint::kChat, &r);
      ASSERT_TRUE(e.has_value()) << body;
      EXPECT_EQ(e->http_status, 400);
      EXPECT_EQ(e->param, "");
      EXPECT_EQ(e->message, std::string("the request body has the integer ") + n + ", which does not fit in 64 bits");
    }
  }
  // In arguments sent as a JSON string (OpenAI's shape), which become the
  // object they hold: named as the arguments.
  const std::optional<ApiError> in_string =
      parse_request(chat(R"("{\"account\": 18446744073709551616}")"), Endpoint::kChat, &r);
  ASSERT_TRUE(in_string.has_value());
  EXPECT_EQ(in_string->param, "messages[1].tool_calls[0].function.arguments");
  EXPECT_EQ(in_string->message, "messages[1].tool_calls[0].function.arguments has the integer 18446744073709551616, "
                                "which does not fit in 64 bits");
  // A string that is not an object stays the string, printed as sent.
  ASSERT_FALSE(parse_request(chat(R"("[18446744073709551616]")"), Endpoint::kChat, &r).has_value());
  EXPECT_EQ(r.messages[1]["tool_calls"][0]["function"]["arguments"], "[18446744073709551616]");
  // The edges of int64 and uint64 parse as integers (a chat template
  // refuses 2^63 .. 2^64-1 itself, naming it: chat_template.cpp).
  ASSERT_FALSE(parse_request(chat(R"({"a":18446744073709551615,"b":-9223372036854775808})"), Endpoint::kChat, &r));
  const ojson& edges = r.messages[1]["tool_calls"][0]["function"]["arguments"];
  EXPECT_TRUE(edges["a"].is_number_unsigned());
  EXPECT_EQ(edges["a"].get<std::uint64_t>(), UINT64_MAX);
  EXPECT_TRUE(edges["b"].is_number_integer());
  EXPECT_EQ(edges["b"].get<std::int64_t>(), INT64_MIN);
  // Floats, however large, are floats as written.
  ASSERT_FALSE(parse_request(chat(R"("{\"a\":1e20,\"b\":2.0,\"c\":18446744073709551616.0,\"d\":-1E19,)"
                                  R"(\"e\":184467440737095516160e-1}")"),
                             Endpoint::kChat, &r));
  const ojson& floats = r.messages[1]["tool_calls"][0]["function"]["arguments"];
  for (const char* k : {"a", "b", "c", "d", "e"}) EXPECT_TRUE(floats[k].is_number_float()) << k;
  EXPECT_EQ(floats["b"].dump(), "2.0");
  ASSERT_FALSE(parse_request(R"({"model":"m","prompt":"x","temperature":2.0,"x":1e20})", Endpoint::kCompletions, &r));
  // Every other refusal comes first, as before: invalid JSON, a body that
  // is not an object, too many keys, too deep.
  ojson j;
  std::optional<ApiError> e = parse_json_object(R"({"a":18446744073709551616,)", &j);
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->message, "the request body is not valid JSON");
  e = parse_json_object("[18446744073709551616]", &j);
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->message, "the request body must be a JSON object");
  std::string wide = R"({"n":18446744073709551616)";
  for (std::size_t i = 0; i < kMaxJsonObjectKeys; ++i) wide += ",\"k" + std::to_string(i) + "\":0";
  e = parse_json_object(wide + "}", &j);
  ASSERT_TRUE(e.has_value());
  EXPECT_NE(e->message.find("more than 256 keys"), std::string::npos) << e->message;
  e = parse_json_object(R"({"n":18446744073709551616,"d":)" + std::string(80, '[') + std::string(80, ']') + "}", &j);
  ASSERT_TRUE(e.has_value());
  EXPECT_NE(e->message.find("deeper than 64 levels"), std::string::npos) << e->message;
  // A long literal is named cut short; past a double's range (~309
  // digits) the parse refuses any number, integer or not, as invalid.
  e = parse_json_object("{\"n\":" + std::string(300, '7') + "}", &j);
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->message, "the request body has the integer " + std::string(40, '7') +
                            "... (300 characters), which does not fit in 64 bits");
  for (const std::string& n : {std::string(1'000'000, '7'), std::string("1e400")}) {
    e = parse_json_object("{\"n\":" + n + "}", &j);
    ASSERT_TRUE(e.has_value());
    EXPECT_EQ(e->message, "the request body is not valid JSON");
  }
  // Every parser of request bodies refuses it.
  EmbeddingRequest er;
  RerankRequest rr;
  TokenizeRequest tr;
  DetokenizeRequest dr;
  bool generate = false;
  const std::string big = "18446744073709551616";
  for (const std::optional<ApiError>& refused :
       {parse_request(R"({"model":"m","prompt":"x","n":)" + big + "}", Endpoint::kCompletions, &r),
        parse_embedding_request(R"({"model":"m","input":"x","dimensions":)" + big + "}", &er),
        parse_rerank_request(R"({"model":"m","query":"q","documents":["d"],"top_n":)" + big + "}", &rr),
        parse_tokenize_request(R"({"model":"m","prompt":"x","x":)" + big + "}", &tr),
        parse_detokenize_request(R"({"model":"m","tokens":[)" + big + "]}", &dr),
        parse_rag_query(R"({"question":"q","top_k":)" + big + "}", "m", &r, &generate)}) {
    ASSERT_TRUE(refused.has_value());
    EXPECT_NE(refused->message.find("the integer " + big + ", which does not fit in 64 bits"), std::string::npos)
        << refused->message;
  }
}

TEST(OpenAiApiTest, EmbeddingRequests) {
  EmbeddingRequest r;
  ASSERT_FALSE(parse_embedding_request(R"({"model":"m","input":"one"})", &r));
  EXPECT_EQ(r.inputs, std::vector<std::string>{"one"});
  EXPECT_FALSE(r.base64);
  ASSERT_FALSE(parse_embedding_request(R"({"model":"m","input":["a","b"],"encoding_format":"base64","dimensions":2})", &r));
  EXPECT_EQ(r.inputs.size(), 2u);
  EXPECT_TRUE(r.base64);
  EXPECT_EQ(r.dimensions, 2);
  for (const char* body : {R"({"input":"x"})", R"({"model":"m"})", R"({"model":"m","input":[]})",
                           R"({"model":"m","input":[[1,2]]})", R"({"model":"m","input":5})",
                           R"({"model":"m","input":"x","encoding_format":"hex"})",
                           R"({"model":"m","input":"x","dimensions":0})", "nope"}) {
    EmbeddingRequest x;
    auto e = parse_embedding_request(body, &x);
    ASSERT_TRUE(e) << body;
    EXPECT_EQ(e->http_status, 400);
  }
}

TEST(OpenAiApiTest, RerankRequests) {
  RerankRequest r;
  ASSERT_FALSE(parse_rerank_request(R"({"query":"q","documents":["a",{"text":"b","title":"t"}],"max_chunks_per_doc":2})", &r));
  EXPECT_FALSE(r.model.has_value());
  EXPECT_EQ(r.query, "q");
  EXPECT_EQ(r.documents, (std::vector<std::string>{"a", "b"}));
  EXPECT_FALSE(r.top_n.has_value());
  EXPECT_FALSE(r.return_documents);
  ASSERT_FALSE(parse_rerank_request(R"({"model":"m","query":"q","documents":[""],"top_n":99999999999,"return_documents":true})", &r));
  EXPECT_EQ(r.model, "m");
  EXPECT_EQ(r.documents, std::vector<std::string>{""});
  EXPECT_EQ(r.top_n, 1000u);
  EXPECT_TRUE(r.return_documents);
  const std::string thousand_and_one = "{\"query\":\"q\",\"documents\":[" + [] {
    std::string d = "\"x\"";
    for (int i = 0; i < 1000; ++i) d += ",\"x\"";
    return d;
  }() + "]}";
  for (const std::string& body :
       {std::string(R"({"documents":["a"]})"), std::string(R"({"query":"","documents":["a"]})"),
        std::string(R"({"query":5,"documents":["a"]})"), std::string(R"({"query":"q"})"),
        std::string(R"({"query":"q","documents":[]})"), std::string(R"({"query":"q","documents":"a"})"),
        std::string(R"({"query":"q","documents":[{"title":"a"}]})"), std::string(R"({"query":"q","documents":[["a"]]})"),
        std::string(R"({"query":"q","documents":["a"],"top_n":0})"), std::string(R"({"query":"q","documents":["a"],"top_n":-1})"),
        std::string(R"({"query":"q","documents":["a"],"top_n":1.5})"),
        std::string(R"({"query":"q","documents":["a"],"return_documents":1})"),
        std::string(R"({"model":3,"query":"q","documents":["a"]})"), thousand_and_one, std::string("[]")}) {
    RerankRequest x;
    auto e = parse_rerank_request(body, &x);
    ASSERT_TRUE(e) << body.substr(0, 80);
    EXPECT_EQ(e->http_status, 400);
    EXPECT_FALSE(e->param.empty() && body != "[]") << body.substr(0, 80);
  }
}

TEST(OpenAiApiTest, TokenizeAndDetokenizeRequests) {
  TokenizeRequest t;
  ASSERT_FALSE(parse_tokenize_request(R"({"prompt":"hi","add_special_tokens":false})", &t));
  EXPECT_EQ(t.prompt, "hi");
  EXPECT_FALSE(t.add_special_tokens);
  ASSERT_FALSE(parse_tokenize_request(
      R"({"model":"m","messages":[{"role":"user","content":"hi"}],"add_generation_prompt":false,"return_token_strs":true,
          "chat_template_kwargs":{"enable_thinking":false}})",
      &t));
  EXPECT_FALSE(t.prompt.has_value());
  EXPECT_EQ(t.model, "m");
  EXPECT_EQ(t.chat.messages.size(), 1u);
  EXPECT_FALSE(t.add_generation_prompt);
  EXPECT_TRUE(t.return_token_strs);
  EXPECT_EQ(t.chat.chat_template_kwargs["enable_thinking"], false);
  for (const char* body : {R"({})", R"({"prompt":null})", R"({"prompt":"a","messages":[]})", R"({"prompt":["a"]})",
                           R"({"prompt":"a","add_special_tokens":"no"})", R"({"messages":[]})",
                           R"({"messages":[{"role":"user","content":"a"}],"add_special_tokens":true})",
                           R"({"messages":[{"role":"user","content":"a"}],"continue_final_message":true})",
                           R"({"messages":[{"role":"wizard","content":"a"}]})", R"({"model":1,"prompt":"a"})"}) {
    TokenizeRequest x;
    auto e = parse_tokenize_request(body, &x);
    ASSERT_TRUE(e) << body;
    EXPECT_EQ(e->http_status, 400);
  }
  DetokenizeRequest d;
  ASSERT_FALSE(parse_detokenize_request(R"({"tokens":[],"skip_special_tokens":true})", &d));
  EXPECT_TRUE(d.tokens.empty());
  EXPECT_TRUE(d.skip_special_tokens);
  ASSERT_FALSE(parse_detokenize_request(R"({"tokens":[1,-5,18446744073709551615,9223372036854775807]})", &d));
  EXPECT_EQ(d.tokens, (std::vector<std::int64_t>{1, -5, -1, INT64_MAX}));
  for (const char* body : {R"({})", R"({"tokens":1})", R"({"tokens":[1.5]})", R"({"tokens":["1"]})",
                           R"({"tokens":[1],"skip_special_tokens":1})"}) {
    DetokenizeRequest x;
    auto e = parse_detokenize_request(body, &x);
    ASSERT_TRUE(e) << body;
    EXPECT_EQ(e->param, std::string(body).find("skip") != std::string::npos ? "skip_special_tokens" : "tokens") << body;
  }
}

TEST(OpenAiApiTest, GroundingExtensionAndRagQuery) {
  CompletionRequest r;
  ASSERT_FALSE(parse_request(R"({"model":"m","messages":[{"role":"user","content":"q?"}],
                                 "airlock":{"collections":["a","b"],"top_k":3,"mode":"bm25"}})",
                             Endpoint::kChat, &r));
  ASSERT_TRUE(r.grounding.has_value());
  EXPECT_EQ(r.grounding->collections, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(r.grounding->top_k, 3);
  EXPECT_EQ(r.grounding->mode, "bm25");
  for (const auto& [body, param] : std::vector<std::pair<std::string, std::string>>{
           {R"({"model":"m","messages":[{"role":"user","content":"q"}],"airlock":{"mode":"magic"}})", "airlock.mode"},
           {R"({"model":"m","messages":[{"role":"user","content":"q"}],"airlock":{"top_k":0}})", "airlock.top_k"},
           {R"({"model":"m","messages":[{"role":"user","content":"q"}],"airlock":{"collections":"a"}})", "airlock.collections"},
           {R"({"model":"m","messages":[{"role":"user","content":"q"}],"airlock":{"colections":["a"]}})", "airlock.colections"},
           {R"({"model":"m","messages":[{"role":"user","content":"q"}],"airlock":{},"n":2})", "n"},
           {R"({"model":"m","messages":[{"role":"system","content":"s"}],"airlock":{}})", "messages"},
           {R"({"model":"m","messages":[{"role":"user","content":"q"}],"airlock":{},"logprobs":true})", "logprobs"},
       }) {
    std::optional<ApiError> e = parse_request(body, Endpoint::kChat, &r);
    ASSERT_TRUE(e) << body;
    EXPECT_EQ(e->param, param) << body;
  }
  EXPECT_TRUE(parse_request(R"({"model":"m","prompt":"p","airlock":{}})", Endpoint::kCompletions, &r));

  bool generate = true;
  ASSERT_FALSE(parse_rag_query(R"({"collection":"hr","question":"How much leave?","top_k":2,"generate":false,
                                    "stream":true,"max_tokens":50})",
                               "served", &r, &generate));
  EXPECT_FALSE(generate);
  EXPECT_EQ(r.model, "served");
  EXPECT_TRUE(r.stream);
  EXPECT_EQ(r.max_tokens, 50);
  ASSERT_EQ(r.messages.size(), 1u);
  EXPECT_EQ(r.messages[0]["content"], "How much leave?");
  EXPECT_EQ(r.grounding->collections, std::vector<std::string>{"hr"});
  EXPECT_EQ(r.grounding->top_k, 2);
  for (const auto& [body, param] : std::vector<std::pair<std::string, std::string>>{
           {R"({"question":""})", "question"},
           {R"({"question":1})", "question"},
           {R"({"collection":"a","collections":["b"],"question":"q"})", "collection"},
           {R"({"question":"q","colection":"a"})", "colection"},
           {R"({"question":"q","generate":"no"})", "generate"},
           {R"({"question":"q","mode":"x"})", "mode"},
           {R"({"question":"q","temperature":9})", "temperature"},
           {R"([1,2])", ""},
       }) {
    std::optional<ApiError> e = parse_rag_query(body, "served", &r, &generate);
    ASSERT_TRUE(e) << body;
    EXPECT_EQ(e->param, param) << body;
  }
}

TEST(OpenAiApiTest, ErrorEnvelope) {
  ApiError e;
  e.message = "bad \xFF";
  e.param = "x";
  nlohmann::json j = nlohmann::json::parse(error_body(e));
  EXPECT_EQ(j["error"]["param"], "x");
  EXPECT_TRUE(j["error"]["code"].is_null());
  EXPECT_EQ(j["error"]["type"], "invalid_request_error");
}


TEST(OpenAiApiTest, Tools) {
  CompletionRequest r;
  auto e = parse_request(R"({"model":"m","messages":[{"role":"user","content":"Weather?"},
      {"role":"assistant","content":null,"tool_calls":[
        {"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\": \"Bern\", \"a\": 1}"}},
        {"id":"call_2","type":"function","function":{"name":"get_time","arguments":"not json"}}]},
      {"role":"tool","tool_call_id":"call_1","content":"18 C"}],
    "tools":[{"type":"function","function":{"name":"get_weather","description":"d","parameters":{"type":"object"},"strict":false}},
             {"type":"function","function":{"name":"get_time"}}],
    "tool_choice":"auto","parallel_tool_calls":false})",
                         Endpoint::kChat, &r);
  ASSERT_FALSE(e) << e->message;
  ASSERT_EQ(r.tool_specs.size(), 2u);
  EXPECT_EQ(r.tool_specs[0].name, "get_weather");
  EXPECT_FALSE(r.tool_specs[0].strict);
  EXPECT_EQ(r.tool_specs[0].parameters, ojson({{"type", "object"}}));
  EXPECT_EQ(r.tool_specs[1].name, "get_time");
  EXPECT_TRUE(r.tool_specs[1].parameters.is_null());
  EXPECT_EQ(r.tools.size(), 2u);
  EXPECT_FALSE(r.parallel_tool_calls);
  const ojson& calls = r.messages[1]["tool_calls"];
  // Arguments holding a JSON object reach the template as that object, in
  // its order; others stay the string they were.
  EXPECT_EQ(calls[0]["function"]["arguments"].dump(), R"({"city":"Bern","a":1})");
  EXPECT_EQ(calls[1]["function"]["arguments"], "not json");
  EXPECT_EQ(r.messages[1]["content"], "");

  // tool_choice "none": nothing to describe, nothing to parse.
  CompletionRequest n;
  ASSERT_FALSE(parse_request(R"({"model":"m","messages":[{"role":"user","content":"x"}],
      "tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"none"})", Endpoint::kChat, &n));
  EXPECT_TRUE(n.tools.empty());
  EXPECT_TRUE(n.tool_specs.empty());

  // An empty tool_calls list is no calls.
  CompletionRequest empty;
  ASSERT_FALSE(parse_request(R"({"model":"m","messages":[{"role":"user","content":"x"},
      {"role":"assistant","content":"y","tool_calls":[]},{"role":"user","content":"z"}]})", Endpoint::kChat, &empty));
  EXPECT_FALSE(empty.messages[1].contains("tool_calls"));

  const std::string user = R"("model":"m","messages":[{"role":"user","content":"x"}])";
  const std::vector<std::pair<std::string, std::string>> bad = {
      {R"("tools":[{"type":"function","function":{"name":"f"}}],"logprobs":true)", "logprobs"},
      {R"("tools":{"type":"function"})", "tools"},
      {R"("tools":[{"type":"retrieval"}])", "tools[0].type"},
      {R"("tools":[{"type":"function"}])", "tools[0].function"},
      {R"("tools":[{"type":"function","function":{"name":"get weather"}}])", "tools[0].function.name"},
      {R"("tools":[{"type":"function","function":{"name":""}}])", "tools[0].function.name"},
      {R"("tools":[{"type":"function","function":{"name":"f"}},{"type":"function","function":{"name":"f"}}])",
       "tools[1].function.name"},
      {R"("tools":[{"type":"function","function":{"name":"f","description":5}}])", "tools[0].function.description"},
      {R"("tools":[{"type":"function","function":{"name":"f","parameters":"x"}}])", "tools[0].function.parameters"},
      {R"("tools":[{"type":"function","function":{"name":"f"}}],"parallel_tool_calls":"yes")", "parallel_tool_calls"},
      {R"("tools":[{"type":"function","function":{"name":"f"}}],"airlock":{})", "tools"},
  };
  for (const auto& [extra, param] : bad) {
    CompletionRequest b;
    const std::string body = "{" + user + "," + extra + "}";
    auto err = parse_request(body, Endpoint::kChat, &b);
    ASSERT_TRUE(err) << body;
    EXPECT_EQ(err->param, param) << body << ": " << err->message;
  }
  for (const auto& [msg, param] : std::vector<std::pair<std::string, std::string>>{
           {R"({"role":"assistant","content":"","tool_calls":{"id":"x"}})", "messages[0].tool_calls"},
           {R"({"role":"assistant","content":"","tool_calls":[{"id":"x"}]})", "messages[0].tool_calls[0].function"},
           {R"({"role":"assistant","content":"","tool_calls":[{"function":{"arguments":"{}"}}]})",
            "messages[0].tool_calls[0].function.name"},
           {R"({"role":"assistant","content":"","tool_calls":[{"function":{"name":"f","arguments":5}}]})",
            "messages[0].tool_calls[0].function.arguments"}}) {
    CompletionRequest b;
    const std::string body = R"({"model":"m","messages":[)" + msg + "]}";
    auto err = parse_request(body, Endpoint::kChat, &b);
    ASSERT_TRUE(err) << body;
    EXPECT_EQ(err->param, param) << body << ": " << err->message;
  }
}

// An assistant message's reasoning, under either name clients send it,
// reaches the template as reasoning_content; anything but a string is a 400.
TEST(OpenAiApiTest, AssistantReasoning) {
  CompletionRequest r;
  ASSERT_FALSE(parse_request(R"({"model":"m","messages":[{"role":"user","content":"x"},
      {"role":"assistant","content":"y","reasoning":"why"},{"role":"assistant","content":"z","reasoning_content":"a",
      "reasoning":"b"},{"role":"assistant","content":"w","reasoning":null}]})", Endpoint::kChat, &r));
  EXPECT_EQ(r.messages[1]["reasoning_content"], "why");
  EXPECT_EQ(r.messages[2]["reasoning_content"], "a");  // the explicit one wins
  EXPECT_FALSE(r.messages[3].contains("reasoning_content"));
  for (const char* key : {"reasoning_content", "reasoning"}) {
    const std::string body = std::string(R"({"model":"m","messages":[{"role":"assistant","content":"y",")") + key +
                             R"(":["no"]}]})";
    std::optional<ApiError> e = parse_request(body, Endpoint::kChat, &r);
    ASSERT_TRUE(e) << key;
    EXPECT_EQ(e->param, std::string("messages[0].") + key);
  }
}

TEST(OpenAiApiTest, JsonObjectMode) {
  CompletionRequest r;
  ASSERT_FALSE(parse_request(R"({"model":"m","messages":[{"role":"user","content":"x"}],
      "response_format":{"type":"json_object"}})", Endpoint::kChat, &r));
  EXPECT_TRUE(r.json_object);
  ASSERT_FALSE(parse_request(R"({"model":"m","messages":[{"role":"user","content":"x"}],
      "response_format":{"type":"text"}})", Endpoint::kChat, &r));
  EXPECT_FALSE(r.json_object);
  // Refused beside it: ignore_eos (end tokens to max_tokens once the object
  // is whole).
  std::optional<ApiError> e = parse_request(R"({"model":"m","messages":[{"role":"user","content":"x"}],
      "response_format":{"type":"json_object"},"ignore_eos":true})", Endpoint::kChat, &r);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->param, "ignore_eos");
  // Taken beside tools: the answer is then calls or the object (the
  // server's grammar, schema_grammar_test CallsOrAnAnswer).
  e = parse_request(R"({"model":"m","messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema",
      "json_schema":{"name":"a","schema":{"type":"object","properties":{"a":{"type":"integer"}}}}},
      "tools":[{"type":"function","function":{"name":"f"}}]})", Endpoint::kChat, &r);
  ASSERT_FALSE(e) << e->message;
  EXPECT_TRUE(r.json_object);
  EXPECT_EQ(r.tools.size(), 1u);
  EXPECT_EQ(r.response_schema["properties"]["a"]["type"], "integer");
}

// response_format json_schema: the schema compiled (the grammar is
// tested in schema_grammar_test.cpp), its fields checked, and the same
// refusals beside it as json_object.
TEST(OpenAiApiTest, JsonSchemaMode) {
  CompletionRequest r;
  ASSERT_FALSE(parse_request(R"({"model":"m","messages":[{"role":"user","content":"x"}],
      "response_format":{"type":"json_schema","json_schema":{"name":"point","strict":true,"schema":{"type":"object",
      "properties":{"x":{"type":"number"}},"required":["x"],"additionalProperties":false}}}})", Endpoint::kChat, &r));
  EXPECT_TRUE(r.json_object);
  ASSERT_TRUE(r.response_grammar);
  engine::GrammarArena arena;
  engine::GrammarMatcher m(r.response_grammar.get(), &arena);
  EXPECT_TRUE(m.feed(R"({"x": 2.5})") && m.accepting());
  // Without a schema: one JSON object, as json_object.
  ASSERT_FALSE(parse_request(R"({"model":"m","messages":[{"role":"user","content":"x"}],
      "response_format":{"type":"json_schema","json_schema":{"name":"any"}}})", Endpoint::kChat, &r));
  EXPECT_TRUE(r.json_object);
  EXPECT_FALSE(r.response_grammar);
  for (const auto& [format, param] : std::vector<std::pair<std::string, std::string>>{
           {R"({"type":"json_schema","json_schema":"x"})", "response_format.json_schema"},
           {R"({"type":"json_schema","json_schema":{"name":1}})", "response_format.json_schema.name"},
           {R"({"type":"json_schema","json_schema":{"strict":"yes"}})", "response_format.json_schema.strict"},
           {R"({"type":"json_schema","json_schema":{"schema":[1]}})", "response_format.json_schema.schema"},
           {R"({"type":"json_schema","json_schema":{"schema":{"allOf":[{"pattern":"a"},{"pattern":"b"}]}}})",
            "response_format.json_schema.schema"},
       }) {
    std::optional<ApiError> e = parse_request(R"({"model":"m","messages":[{"role":"user","content":"x"}],"response_format":)" +
                                                  format + "}",
                                              Endpoint::kChat, &r);
    ASSERT_TRUE(e) << format;
    EXPECT_EQ(e->param, param) << format;
  }
  std::optional<ApiError> e = parse_request(R"({"model":"m","messages":[{"role":"user","content":"x"}],
      "response_format":{"type":"json_schema","json_schema":{"schema":{}}},"ignore_eos":true})", Endpoint::kChat, &r);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->param, "ignore_eos");
}

// tool_choice "required" or a named function: a call is forced (the
// grammar is made by the server, for the model's form).
TEST(OpenAiApiTest, ToolChoiceForcesACall) {
  const std::string head = R"({"model":"m","messages":[{"role":"user","content":"x"}],)";
  const std::string tools = R"("tools":[{"type":"function","function":{"name":"f"}},{"type":"function","function":{"name":"g"}}])";
  CompletionRequest r;
  ASSERT_FALSE(parse_request(head + tools + R"(,"tool_choice":"required"})", Endpoint::kChat, &r));
  EXPECT_TRUE(r.tool_required);
  EXPECT_EQ(r.forced_tool, "");
  ASSERT_FALSE(parse_request(head + tools + R"(,"tool_choice":{"type":"function","function":{"name":"g"}}})", Endpoint::kChat, &r));
  EXPECT_TRUE(r.tool_required);
  EXPECT_EQ(r.forced_tool, "g");
  ASSERT_FALSE(parse_request(head + tools + R"(,"tool_choice":"auto"})", Endpoint::kChat, &r));
  EXPECT_FALSE(r.tool_required);
  // An empty object is no choice, as an empty value is everywhere (it
  // once read the missing "function" of the empty object: a crash).
  r = CompletionRequest();
  ASSERT_FALSE(parse_request(head + tools + R"(,"tool_choice":{}})", Endpoint::kChat, &r));
  EXPECT_FALSE(r.tool_required);
  EXPECT_EQ(r.forced_tool, "");
  for (const auto& [body, param] : std::vector<std::pair<std::string, std::string>>{
           {head + tools + R"(,"tool_choice":{"type":"function","function":{"name":"h"}}})", "tool_choice"},
           {head + tools + R"(,"tool_choice":{"type":"function"}})", "tool_choice"},
           {head + tools + R"(,"tool_choice":"always"})", "tool_choice"},
           {head + R"("tool_choice":"required"})", "tool_choice"},
           {head + tools + R"(,"tool_choice":"required","ignore_eos":true})", "ignore_eos"},
       }) {
    std::optional<ApiError> e = parse_request(body, Endpoint::kChat, &r);
    ASSERT_TRUE(e) << body;
    EXPECT_EQ(e->param, param) << body;
  }
}

TEST(OpenAiApiTest, ChatTemplateKwargs) {
  CompletionRequest r;
  ASSERT_FALSE(parse_request(R"({"model":"m","messages":[{"role":"user","content":"x"}],
      "chat_template_kwargs":{"enable_thinking":false,"custom_2":{"a":[1]}}})", Endpoint::kChat, &r));
  EXPECT_EQ(r.chat_template_kwargs["enable_thinking"], false);
  EXPECT_EQ(r.chat_template_kwargs.size(), 2u);
  for (const auto& [kwargs, param] : std::vector<std::pair<std::string, std::string>>{
           {R"({"tools":[]})", "chat_template_kwargs.tools"},
           {R"({"messages":[]})", "chat_template_kwargs.messages"},
           {R"({"raise_exception":1})", "chat_template_kwargs.raise_exception"},
           {R"({"bad name":1})", "chat_template_kwargs"},
           {R"({"9lives":1})", "chat_template_kwargs"},
           {R"([1])", "chat_template_kwargs"}}) {
    CompletionRequest b;
    const std::string body = R"({"model":"m","messages":[{"role":"user","content":"x"}],"chat_template_kwargs":)" + kwargs + "}";
    auto e = parse_request(body, Endpoint::kChat, &b);
    ASSERT_TRUE(e) << body;
    EXPECT_EQ(e->param, param) << body << ": " << e->message;
  }
  CompletionRequest c;
  auto e = parse_request(R"({"model":"m","prompt":"x","chat_template_kwargs":{"a":1}})", Endpoint::kCompletions, &c);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->param, "chat_template_kwargs");
}

// reasoning_effort: OpenAI's five values reach the chat template as the
// variable reasoning_effort (vLLM's way, which gpt-oss's template reads);
// anything else is a 400 naming it, null is absent.
TEST(OpenAiApiTest, ReasoningEffortIsATemplateVariable) {
  const std::string head = R"({"model":"m","messages":[{"role":"user","content":"x"}])";
  for (const char* effort : {"none", "minimal", "low", "medium", "high"}) {
    CompletionRequest r;
    const std::string body = head + R"(,"reasoning_effort":")" + effort + "\"}";
    auto e = parse_request(body, Endpoint::kChat, &r);
    ASSERT_FALSE(e) << body << ": " << e->message;
    EXPECT_EQ(r.chat_template_kwargs, ojson({{"reasoning_effort", effort}})) << body;
  }
  CompletionRequest unset;
  ASSERT_FALSE(parse_request(head + R"(,"reasoning_effort":null})", Endpoint::kChat, &unset));
  EXPECT_FALSE(unset.chat_template_kwargs.contains("reasoning_effort"));
  for (const char* value : {R"("HIGH")", R"("max")", R"("")", R"("xhigh")", R"(" low")", "2", "true", R"(["low"])",
                            R"({"effort":"low"})"}) {
    CompletionRequest r;
    const std::string body = head + R"(,"reasoning_effort":)" + value + "}";
    auto e = parse_request(body, Endpoint::kChat, &r);
    ASSERT_TRUE(e) << body;
    EXPECT_EQ(e->http_status, 400);
    EXPECT_EQ(e->param, "reasoning_effort") << body;
    EXPECT_NE(e->message.find("\"minimal\""), std::string::npos) << e->message;  // says what is accepted
  }
  // A completions prompt has no chat template to give it to.
  CompletionRequest c;
  auto e = parse_request(R"({"model":"m","prompt":"x","reasoning_effort":"low"})", Endpoint::kCompletions, &c);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->param, "reasoning_effort");
  ASSERT_FALSE(parse_request(R"({"model":"m","prompt":"x","reasoning_effort":null})", Endpoint::kCompletions, &c));
}

// chat_template_kwargs may set the same variable: held to the same values,
// and a value that differs from the parameter's is a 400, not a silent
// choice of one of them.
TEST(OpenAiApiTest, ReasoningEffortAndChatTemplateKwargsAgree) {
  const std::string head = R"({"model":"m","messages":[{"role":"user","content":"x"}])";
  CompletionRequest r;
  ASSERT_FALSE(parse_request(head + R"(,"chat_template_kwargs":{"reasoning_effort":"low","enable_thinking":true}})",
                             Endpoint::kChat, &r));
  EXPECT_EQ(r.chat_template_kwargs, ojson({{"reasoning_effort", "low"}, {"enable_thinking", true}}));
  ASSERT_FALSE(parse_request(head + R"(,"reasoning_effort":"high","chat_template_kwargs":{"reasoning_effort":"high"}})",
                             Endpoint::kChat, &r));
  EXPECT_EQ(r.chat_template_kwargs, ojson({{"reasoning_effort", "high"}}));
  // null in the kwargs is absent too (a template would print "None").
  ASSERT_FALSE(parse_request(head + R"(,"reasoning_effort":"low","chat_template_kwargs":{"reasoning_effort":null}})",
                             Endpoint::kChat, &r));
  EXPECT_EQ(r.chat_template_kwargs, ojson({{"reasoning_effort", "low"}}));
  ASSERT_FALSE(parse_request(head + R"(,"chat_template_kwargs":{"reasoning_effort":null}})", Endpoint::kChat, &r));
  EXPECT_TRUE(r.chat_template_kwargs.empty());
  for (const auto& [extra, param] : std::vector<std::pair<std::string, std::string>>{
           {R"("reasoning_effort":"high","chat_template_kwargs":{"reasoning_effort":"low"})",
            "chat_template_kwargs.reasoning_effort"},
           {R"("chat_template_kwargs":{"reasoning_effort":"extreme"})", "chat_template_kwargs.reasoning_effort"},
           {R"("chat_template_kwargs":{"reasoning_effort":1})", "chat_template_kwargs.reasoning_effort"},
           {R"("reasoning_effort":"extreme","chat_template_kwargs":{"reasoning_effort":"low"})", "reasoning_effort"}}) {
    CompletionRequest b;
    const std::string body = head + "," + extra + "}";
    auto e = parse_request(body, Endpoint::kChat, &b);
    ASSERT_TRUE(e) << body;
    EXPECT_EQ(e->param, param) << body << ": " << e->message;
  }
  // POST /tokenize renders as chat renders: the same variable.
  TokenizeRequest t;
  ASSERT_FALSE(parse_tokenize_request(R"({"messages":[{"role":"user","content":"hi"}],"reasoning_effort":"minimal"})", &t));
  EXPECT_EQ(t.chat.chat_template_kwargs, ojson({{"reasoning_effort", "minimal"}}));
  auto e = parse_tokenize_request(R"({"messages":[{"role":"user","content":"hi"}],"reasoning_effort":"max"})", &t);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->param, "reasoning_effort");
}

}  // namespace
}  // namespace airlock::daemon
