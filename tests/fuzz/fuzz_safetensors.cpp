// libFuzzer target: the safetensors header and tensor table (untrusted model
// files of static embedding models). Reading every element of every tensor
// must stay inside the input.
#include <cstddef>
#include <cstdint>

#include "airlock/engine/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using airlock::engine::SafetensorsFile;
  auto f = SafetensorsFile::parse({data, size});
  if (!f.is_ok()) return 0;
  double sum = 0;
  for (const auto& [name, t] : (*f)->tensors())
    for (std::int64_t i = 0; i < t.n_elements() && i < 4096; ++i) sum += SafetensorsFile::element(t, i);
  return sum == 12345.0 ? 1 : 0;
}
