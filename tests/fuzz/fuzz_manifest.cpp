// libFuzzer target: the manifest parser and the minisign text parsers.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "airlock/verifier/manifest.h"
#include "airlock/verifier/minisign.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace airlock::verifier;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  airlock::Result<Manifest> m = parse_manifest(text);
  if (m.is_ok()) {
    // Whatever parses must serialise and parse back to the same manifest.
    std::string again = serialize_manifest(*m);
    airlock::Result<Manifest> m2 = parse_manifest(again);
    if (!m2.is_ok() || serialize_manifest(*m2) != again) __builtin_trap();
  }
  (void)parse_signature(text).is_ok();
  (void)parse_public_key(text).is_ok();
  (void)parse_secret_key(text, nullptr).is_ok();
  return 0;
}
