// libFuzzer target: the pass messages a tensor-parallel follower receives
// from another machine (pass_message.h): a header, then payload words.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "airlock/engine/pass_message.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace airlock::engine;
  PassHeader h;
  if (size < sizeof h) return 0;
  std::memcpy(&h, data, sizeof h);
  std::vector<std::int32_t> words((size - sizeof h) / sizeof(std::int32_t));
  if (!words.empty()) std::memcpy(words.data(), data + sizeof h, words.size() * sizeof(std::int32_t));
  (void)payload_words(h).is_ok();
  DecodedPass d;
  if (decode_pass(h, words, PassLimits{1000, 4096, 64}, &d).is_ok()) {
    // What a follower then reads: every table entry its contexts reach.
    std::int64_t sum = 0;
    for (std::size_t t = 0; t < d.plan.tables.size(); ++t)
      for (int b = 0; b < airlock::engine::KvCache::blocks_for(d.plan.n_ctx[t]); ++b) sum += d.plan.tables[t][b];
    (void)sum;
  }
  return 0;
}
