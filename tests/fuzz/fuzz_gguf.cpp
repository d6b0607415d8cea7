// libFuzzer target: the engine's GGUF reader and its typed accessors.
#include <cstddef>
#include <cstdint>

#include "airlock/engine/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace airlock::engine;
  auto f = GgufFile::parse({data, size});
  if (!f.is_ok()) return 0;
  const GgufFile& g = **f;
  for (const auto& [key, value] : g.metadata()) {
    (void)g.get_uint(key);
    (void)g.get_float(key);
    (void)g.get_string_array(key).is_ok();
    (void)g.get_float_array(key).is_ok();
    (void)g.get_int_array(key).is_ok();
  }
  // Touch every tensor's first and last byte: they must lie inside the input.
  unsigned sum = 0;
  for (const GgufTensor& t : g.tensors())
    if (!t.data.empty()) sum += t.data.front() + t.data.back();
  return static_cast<int>(sum & 0);
}
