// The OpenAI request and response shapes airlockd speaks: parsing and
// validation of /v1/chat/completions and /v1/completions bodies, and the
// JSON objects of answers, stream chunks and errors.
//
// The body is untrusted: parse_request() never throws, bounds every array
// and string it keeps, and names the offending parameter in its error.
// Unknown top-level fields are ignored (SDKs send fields that do not apply
// here, as OpenAI itself tolerates); known fields of the wrong type or out
// of range are errors, and so are fields that would change the answer and
// are not supported here (a strict function whose
// schema cannot be checked, a response_format json_schema whose schema
// cannot be held to, suffix, best_of other than n), each named in the 400.
//
// Thread-safety: free functions without shared state.
#pragma once

#include <cstdint>
#include <memory>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "airlock/common/json.h"

#include "airlock/common/status.h"
#include "airlock/engine/grammar.h"
#include "airlock/engine/sampler.h"
#include "tool_calls.h"

namespace airlock::daemon {

using ojson = nlohmann::ordered_json;

struct ApiError {
  int http_status = 400;
  std::string type = "invalid_request_error";
  std::string message;
  std::string param;  // empty: null
  std::string code;   // empty: null
};

// {"error": {"message", "type", "param", "code"}}
std::string error_body(const ApiError& e);

// A request body as a JSON object within the limits of json_depth.h, or the
// 400 that says why not (an integer beyond -2^63 .. 2^64-1 among them:
// parsed, it would be a double, and reach a chat template changed).
// (max_values: the most values, at every level, the body may hold.)
std::optional<ApiError> parse_json_object(std::string_view body, ojson* j,
                                          std::size_t max_values = std::numeric_limits<std::size_t>::max());

// kResponses: POST /v1/responses (responses_api.h), a chat request once
// parsed (its CompletionRequest has endpoint kChat and `responses` set).
enum class Endpoint { kChat, kCompletions, kResponses };

// The `airlock` extension of a chat request: answer grounded in these
// collections (docs/rag.md).
struct GroundingSpec {
  std::vector<std::string> collections;  // empty: every collection the key may read
  int top_k = 0;                          // 0: the configured default
  std::string mode = "hybrid";            // hybrid, bm25, vector
  // The bundle's reranker reorders the candidates (config rag.rerank_candidates);
  // absent: when there is one, false: never, true: required (400 without
  // one, or with rag.rerank_candidates = 0).
  std::optional<bool> rerank;
};

struct ResponsesEcho;  // responses_api.h

struct CompletionRequest {
  Endpoint endpoint = Endpoint::kChat;
  // Set for POST /v1/responses: what its answer repeats of the request, and
  // the answer's shape (a response object, typed stream events).
  std::shared_ptr<const ResponsesEcho> responses;
  std::string model;
  ojson messages = ojson::array();  // chat: role/content objects, content flattened to a string
  // Chat with tools (and tool_choice not "none"): the tools as sent, for
  // the chat template, and what a call of each must be. Empty: no tool
  // calling.
  ojson tools = ojson::array();
  std::vector<ToolSpec> tool_specs;
  bool parallel_tool_calls = true;  // false: at most one call per answer
  // tool_choice "required", or a named function (forced_tool): the answer
  // is held to calls (schema_grammar.h, tool_call_grammar).
  bool tool_required = false;
  std::string forced_tool;
  bool json_object = false;          // chat: response_format "json_object" or "json_schema" (the answer held to JSON)
  // json_schema: the grammar of the schema's instances (null: one JSON
  // object), and the schema (null without one).
  std::shared_ptr<const engine::Grammar> response_grammar;
  ojson response_schema;
  // chat: more template variables (vLLM's extension), and reasoning_effort
  // ("none", "minimal", "low", "medium", "high") when the request sets it,
  // as the parameter or here (the two must agree).
  ojson chat_template_kwargs = ojson::object();
  std::vector<std::string> prompts;  // completions: one or more, each with n choices
  std::string prompt;                // completions: prompts joined (for the audit log)
  std::optional<int> max_tokens;     // absent: chat up to the context length, completions 16 (as OpenAI)
  engine::SamplingParams sampling;
  bool seeded = false;
  std::vector<std::string> stop;
  int n = 1;
  bool logprobs = false;
  int top_logprobs = 0;
  bool stream = false;
  bool include_usage = false;
  bool echo = false;                 // completions only
  bool ignore_eos = false;           // non-standard (as vLLM): generate max_tokens regardless of EOS
  std::string user;
  std::optional<GroundingSpec> grounding;  // chat only
};

// POST /v1/rag/query: {collection | collections, question, top_k, mode,
// rerank, generate, stream, max_tokens, temperature, seed, model}. Parsed into the
// grounded chat request it becomes (model defaults to `default_model`);
// *generate is false when only retrieval is wanted.
std::optional<ApiError> parse_rag_query(std::string_view body, const std::string& default_model,
                                        CompletionRequest* out, bool* generate);

struct EmbeddingRequest {
  std::string model;
  std::vector<std::string> inputs;
  bool base64 = false;
  std::optional<int> dimensions;
};

// POST /v1/embeddings: `input` a string or an array of strings (token-id
// arrays are refused), `encoding_format` float or base64.
std::optional<ApiError> parse_embedding_request(std::string_view body, EmbeddingRequest* out);

struct RerankRequest {
  std::optional<std::string> model;  // absent: the served bundle
  std::string query;
  std::vector<std::string> documents;
  std::optional<std::size_t> top_n;  // absent: every document
  bool return_documents = false;
};

// POST /v1/rerank (the shape Cohere's, Jina's and llama.cpp's rerank APIs
// share): `query` a non-empty string, `documents` 1..1000 strings or
// {"text": string} objects, `top_n` a positive integer, `return_documents`
// a boolean, `model` a string. Other fields are ignored.
std::optional<ApiError> parse_rerank_request(std::string_view body, RerankRequest* out);

struct TokenizeRequest {
  std::optional<std::string> model;  // absent: the served bundle
  std::optional<std::string> prompt;  // a completions prompt, or else:
  CompletionRequest chat;             // the chat request `messages` (with tools, chat_template_kwargs, reasoning_effort) make
  bool add_special_tokens = true;     // prompt: BOS/EOS as the tokenizer adds them
  bool add_generation_prompt = true;  // messages: end with the assistant's turn opened
  bool return_token_strs = false;
};

// POST /tokenize (vLLM's shape): `prompt` a string, tokenised as
// /v1/completions tokenises it (control-token text read as those tokens),
// `add_special_tokens` (true); or `messages` (with `tools`, `tool_choice`,
// `chat_template_kwargs`, `reasoning_effort`), rendered and tokenised as /v1/chat/completions
// does, `add_generation_prompt` (true). `return_token_strs`, `model`.
// `add_special_tokens` true and `continue_final_message` true are refused
// with messages (the chat template decides the special tokens).
std::optional<ApiError> parse_tokenize_request(std::string_view body, TokenizeRequest* out);

struct DetokenizeRequest {
  std::optional<std::string> model;
  std::vector<std::int64_t> tokens;  // checked against the vocabulary by the caller
  bool skip_special_tokens = false;
};

// POST /detokenize (vLLM's shape): `tokens` an array of integers (up to
// 1,048,576), `skip_special_tokens` (false), `model`.
std::optional<ApiError> parse_detokenize_request(std::string_view body, DetokenizeRequest* out);

// Parses and validates a request body into *out. Returns the error to send
// (status 400, the offending parameter named) or nullopt when *out is set.
std::optional<ApiError> parse_request(std::string_view body, Endpoint endpoint, CompletionRequest* out);
// The same for a body already parsed by parse_json_object.
std::optional<ApiError> parse_request_object(const ojson& body, Endpoint endpoint, CompletionRequest* out);

}  // namespace airlock::daemon
