// libFuzzer target: the GGUF header reader used by `airlock bundle create`.
#include <cstddef>
#include <cstdint>

#include "airlock/verifier/gguf_facts.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  (void)airlock::verifier::read_gguf_facts({data, size}).is_ok();
  return 0;
}
