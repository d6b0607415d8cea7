// libFuzzer target: the chat template parser and renderer. The input is the
// template source (as a GGUF file would carry it); it is rendered against a
// small fixed conversation with tools, under tight limits so that each run
// stays fast. Any status is fine; crashes, hangs and sanitizer reports are not.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "airlock/common/json.h"

#include "airlock/engine/chat_template.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace airlock::engine;
  static const nlohmann::ordered_json kMessages = nlohmann::ordered_json::parse(R"([
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi <think>x</think> é"},
    {"role": "assistant", "content": "", "tool_calls": [{"id": "call12345", "type": "function",
      "function": {"name": "f", "arguments": {"a": [1, 2.5, null, true]}}}]},
    {"role": "tool", "tool_call_id": "call12345", "content": "{\"ok\": 1}"},
    {"role": "user", "content": [{"type": "text", "text": "parts"}]}])");
  static const nlohmann::ordered_json kExtra = nlohmann::ordered_json::parse(R"({
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    "enable_thinking": false})");
  ChatTemplateLimits limits;
  limits.max_steps = 200'000;
  limits.max_output_bytes = 64 << 10;
  limits.max_alloc_bytes = 8 << 20;
  auto t = ChatTemplate::parse(std::string_view(reinterpret_cast<const char*>(data), size), limits);
  if (!t.is_ok()) return 0;
  ChatTemplateInputs in;
  in.messages = kMessages;
  in.extra = kExtra;
  in.bos_token = "<s>";
  in.eos_token = "</s>";
  in.now_unix_s = 1721995200;
  for (bool gen : {true, false}) {
    in.add_generation_prompt = gen;
    (void)t->render(in).is_ok();
  }
  return 0;
}
