// Token sequences packed into forward passes (the encoders' and the
// decoder embedder's batches).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "airlock/common/status.h"

namespace airlock::engine {

// Greedy packing in order: as many sequences per pass as `max_tokens`
// holds (always at least one, however long). run(first, last) runs
// sequences [first, last); the first error stops the loop.
template <typename Run>
Status for_each_pass(std::span<const std::vector<std::int32_t>> seqs, std::int64_t max_tokens, Run&& run) {
  for (std::size_t first = 0; first < seqs.size();) {
    std::size_t last = first;
    std::int64_t n = 0;
    while (last < seqs.size() && (last == first || n + static_cast<std::int64_t>(seqs[last].size()) <= max_tokens))
      n += static_cast<std::int64_t>(seqs[last++].size());
    AIRLOCK_RETURN_IF_ERROR(run(first, last));
    first = last;
  }
  return Status::ok();
}

}  // namespace airlock::engine
