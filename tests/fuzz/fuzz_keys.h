// The fixed key pair the fuzzers trust, so that a seed bundle signed with it
// gets past the signature check and the fuzzer can explore the payload code.
#pragma once

#include <array>

#include "airlock/verifier/minisign.h"

namespace airlock::fuzz {

inline verifier::SecretKey fuzz_key() {
  std::array<std::uint8_t, 32> seed{};
  seed.fill(0x5a);
  verifier::KeyId id;
  id.bytes = {1, 2, 3, 4, 5, 6, 7, 8};
  return verifier::secret_key_from_seed(seed, id);
}

}  // namespace airlock::fuzz
