// libFuzzer target: the GGUF header reader used by `airlock bundle create`.
// The reader of a whole file and the reader of growing copies of a mapping
// (first copy 1 to 64 bytes here, so every input takes several rounds) must
// agree on every input.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "airlock/verifier/gguf_facts.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace airlock;
  using namespace airlock::verifier;
  Result<ModelFacts> whole = read_gguf_facts({data, size});
  const std::uint64_t first = size > 0 ? 1 + data[size - 1] % 64 : 1;
  Result<ModelFacts> copied = read_gguf_facts_mapped({data, size}, "fuzz", first);
  if (whole.is_ok() != copied.is_ok()) std::abort();
  if (whole.is_ok() &&
      (whole->architecture != copied->architecture || whole->parameter_count != copied->parameter_count ||
       whole->quantization != copied->quantization || whole->context_length != copied->context_length ||
       whole->gguf_version != copied->gguf_version || whole->tensor_count != copied->tensor_count))
    std::abort();
  if (!whole.is_ok() && whole.status().message() != copied.status().message()) std::abort();
  return 0;
}
