// libFuzzer target: request bodies of /v1/chat/completions and
// /v1/completions (parse_request, with the airlock grounding extension;
// /tokenize and /detokenize ride with the latter),
// /v1/responses (parse_responses_request, and the response object built
// from what it accepted), /v1/embeddings and /v1/rerank, /v1/rag/query (parse_rag_query), airlockd.toml
// (parse_config, with its [rag] table) and model output: split into
// reasoning and content (ReasoningSplitter: pieces join up to the whole
// split), read by JSON mode's recogniser (what it reads whole, a JSON
// parser takes for an object) and read for tool calls (parse_tool_calls,
// with the streaming rule that what was sent early is the start of the
// final content), and JSON Schemas compiled to grammars (compile_schema:
// random sentences of the grammar parse as JSON, and follow the schema
// where every keyword in it is held exactly). The first byte picks which;
// nothing may crash, hang or leak.
#include <cstddef>
#include <cstdint>
#include <random>
#include <string>
#include <string_view>

#include "airlock/common/json.h"

#include "airlock/engine/constraint.h"
#include "config.h"
#include "openai_api.h"
#include "reasoning.h"
#include "responses_api.h"
#include "schema_grammar.h"
#include "tool_calls.h"

namespace {

// A schema as a request would carry it: a few random sentences of its
// grammar (bytes drawn among those allowed, closing brackets and quotes
// favoured) must be JSON, and instances of the schema when the compiler
// says it held every keyword exactly.
void check_schema(std::string_view text) {
  using airlock::engine::Grammar;
  if (!nlohmann::ordered_json::accept(text)) return;
  const nlohmann::ordered_json schema = nlohmann::ordered_json::parse(text);
  std::string why;
  bool exact = false;
  std::shared_ptr<const Grammar> g = airlock::daemon::compile_schema(schema, "schema", &why, &exact);
  if (!g) {
    if (why.empty()) __builtin_trap();
    return;
  }
  std::mt19937 rng(static_cast<std::uint32_t>(text.size()));
  for (int i = 0; i < 4; ++i) {
    airlock::engine::GrammarArena arena;
    airlock::engine::GrammarMatcher m(g.get(), &arena);
    std::string out;
    while (out.size() < 2048 && !(m.accepting() && (m.complete() || rng() % 2 == 0))) {
      const Grammar::ByteSet next = m.next_bytes();
      if (next.none()) __builtin_trap();  // a live matcher always has a way on
      unsigned c = rng() % 256;
      for (unsigned char close : {'"', '}', ']'})
        if (next[close] && rng() % 6 == 0) c = close;
      while (!next[c]) c = (c + 1) % 256;
      if (!m.feed(static_cast<unsigned char>(c))) __builtin_trap();
      out += static_cast<char>(c);
    }
    if (!m.accepting()) continue;  // cut at the bound
    if (!nlohmann::ordered_json::accept(out)) __builtin_trap();
    if (exact && !airlock::daemon::follows_schema(schema, nlohmann::ordered_json::parse(out))) __builtin_trap();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::string_view body(reinterpret_cast<const char*>(data + 1), size - 1);
  using namespace airlock::daemon;
  switch (data[0] % 8) {
    case 7: {
      CompletionRequest r;
      if (!parse_responses_request(body, &r)) {
        // An accepted request is a chat request of one choice, and its
        // response object can be written (as JSON, whatever its strings).
        if (!r.responses || r.endpoint != Endpoint::kChat || r.messages.empty() || r.n != 1) __builtin_trap();
        ResponseOutput out;
        out.status = "completed";
        out.has_message = true;
        out.text = std::string(body.substr(0, 16));
        (void)response_json(*r.responses, out).dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
      }
      break;
    }
    case 6:
      check_schema(body);
      break;
    case 5: {
      // The thinking apart (opened by the prompt for some sizes), as a
      // stream of 7-byte pieces and whole: the same split.
      const bool open = body.size() % 5 == 0;
      ReasoningSplitter::Delta split = ReasoningSplitter(true, open).push(body, true);
      ReasoningSplitter pieces(true, open);
      std::string reasoning, content;
      for (std::size_t at = 0; at <= body.size(); at += 7) {
        ReasoningSplitter::Delta d = pieces.push(body.substr(at, 7), at + 7 > body.size());
        reasoning += d.reasoning;
        content += d.content;
      }
      if (reasoning != split.reasoning || content != split.content) __builtin_trap();
      if (split.content.size() + split.reasoning.size() > body.size()) __builtin_trap();
      airlock::engine::JsonGrammar grammar;
      if (grammar.feed(body) && grammar.complete() &&
          !(nlohmann::json::accept(body) && nlohmann::json::parse(body).is_object()))
        __builtin_trap();
      const ToolFormat f = body.size() % 3 == 0 ? ToolFormat::kHermes
                           : body.size() % 3 == 1 ? ToolFormat::kLlamaJson
                                                  : ToolFormat::kMistral;
      // A strict tool (its arguments checked against a schema with a
      // recursive $ref and anyOf) and a plain one.
      static const std::vector<ToolSpec> tools = {
          {"get_weather", true,
           nlohmann::ordered_json::parse(
               R"({"type":"object","properties":{"city":{"type":"string","maxLength":40},"n":{"type":"integer","minimum":0},
                   "unit":{"anyOf":[{"enum":["c","f"]},{"type":"null"}]},"at":{"$ref":"#/$defs/P"}},
                   "required":["city"],"additionalProperties":false,
                   "$defs":{"P":{"type":"object","properties":{"near":{"$ref":"#/$defs/P"}},"additionalProperties":{"type":"number"}}}})")},
          {"f", false, {}}};
      const std::string_view text = split.content;  // tools are read from the content
      const ToolOutput whole = parse_tool_calls(f, text, tools);
      for (const ToolCall& c : whole.calls)
        if (c.arguments.empty() || c.arguments[0] != '{' || (c.name != "get_weather" && c.name != "f") ||
            (c.name == "get_weather" && !follows_schema(tools[0].parameters, nlohmann::ordered_json::parse(c.arguments))))
          __builtin_trap();
      // The server streams the safe prefix as the text grows (here in steps
      // of 7 bytes), then the rest of the content.
      std::size_t last = 0;
      ToolStream stream(f);
      for (std::size_t have = 0;; have = std::min(text.size(), have + 7)) {
        const std::size_t p = stream.safe_prefix(text.substr(0, have));
        if (p < last || p > have) __builtin_trap();
        last = p;
        if (have == text.size()) break;
      }
      if (whole.content.compare(0, last, text, 0, last) != 0) __builtin_trap();
      break;
    }
    case 4: {
      CompletionRequest r;
      bool generate = true;
      if (!parse_rag_query(body, "model", &r, &generate)) {
        // An accepted question is a grounded chat request with one user message.
        if (!r.grounding || r.messages.size() != 1 || r.messages[0]["content"].get<std::string>().empty()) __builtin_trap();
      }
      break;
    }
    case 3: {
      // Both parsers of retrieval-model requests on the same body.
      EmbeddingRequest r;
      if (!parse_embedding_request(body, &r) && r.inputs.empty()) __builtin_trap();
      RerankRequest rr;
      if (!parse_rerank_request(body, &rr) &&
          (rr.query.empty() || rr.documents.empty() || rr.documents.size() > 1000 || (rr.top_n && *rr.top_n == 0)))
        __builtin_trap();
      break;
    }
    case 0: {
      CompletionRequest r;
      if (!parse_request(body, Endpoint::kChat, &r)) {
        // An accepted request is internally consistent.
        if (r.n < 1 || r.messages.empty() || (r.max_tokens && *r.max_tokens < 1)) __builtin_trap();
      }
      break;
    }
    case 1: {
      CompletionRequest r;
      (void)parse_request(body, Endpoint::kCompletions, &r);
      // The token counting routes on the same body: a prompt, or the chat
      // request the messages make.
      TokenizeRequest t;
      if (!parse_tokenize_request(body, &t) && !t.prompt && t.chat.messages.empty()) __builtin_trap();
      DetokenizeRequest d;
      if (!parse_detokenize_request(body, &d) && d.tokens.size() > (1u << 20)) __builtin_trap();
      break;
    }
    default:
      (void)parse_config(body, "fuzz.toml");
      break;
  }
  return 0;
}
