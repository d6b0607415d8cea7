// libFuzzer target: request bodies of /v1/chat/completions and
// /v1/completions (parse_request), /v1/embeddings and airlockd.toml
// (parse_config). The first byte picks which; nothing may crash, hang or leak.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "config.h"
#include "openai_api.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::string_view body(reinterpret_cast<const char*>(data + 1), size - 1);
  using namespace airlock::daemon;
  switch (data[0] % 4) {
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
