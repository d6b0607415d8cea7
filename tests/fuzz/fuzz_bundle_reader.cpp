// libFuzzer target: the archive reader behind verify and inspect. The input
// is a whole bundle; the fuzz key is trusted so that seeds get past the
// signature and exercise the payload checks.
#include <cstddef>
#include <cstdint>

#include "airlock/verifier/bundle_reader.h"
#include "fuzz_keys.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace airlock::verifier;
  static const TrustStore trust = [] {
    TrustStore t;
    t.add_key(airlock::fuzz::fuzz_key().public_key());
    return t;
  }();
  std::span<const std::uint8_t> bytes(data, size);
  VerifyOptions opts;
  opts.now_unix = 1790000000;
  opts.n_threads = 1;
  (void)verify_bundle(bytes, trust, opts).is_ok();
  (void)inspect_bundle(bytes);
  return 0;
}
