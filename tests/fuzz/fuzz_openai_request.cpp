// libFuzzer target: request bodies of /v1/chat/completions and
// /v1/completions (parse_request, with the airlock grounding extension),
// /v1/embeddings, /v1/rag/query (parse_rag_query) and airlockd.toml
// (parse_config, with its [rag] table). The first byte picks which; nothing
// may crash, hang or leak.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "config.h"
#include "openai_api.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::string_view body(reinterpret_cast<const char*>(data + 1), size - 1);
  using namespace airlock::daemon;
  switch (data[0] % 5) {
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
      EmbeddingRequest r;
      if (!parse_embedding_request(body, &r) && r.inputs.empty()) __builtin_trap();
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
      break;
    }
    default:
      (void)parse_config(body, "fuzz.toml");
      break;
  }
  return 0;
}
