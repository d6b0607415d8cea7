// Token sequences packed into forward passes (the encoders' and the
// decoder embedder's and reranker's batches).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "airlock/common/status.h"

namespace airlock::engine {

// Greedy packing in order: as many sequences per pass as `max_cost`
// holds, each costing cost(sequence) (always at least one, however
// costly). run(first, last) runs sequences [first, last); the first error
// stops the loop.
template <typename Cost, typename Run>
Status for_each_pass_by(std::span<const std::vector<std::int32_t>> seqs, std::int64_t max_cost, Cost&& cost,
                        Run&& run) {
  for (std::size_t first = 0; first < seqs.size();) {
    std::size_t last = first;
    std::int64_t n = 0;
    while (last < seqs.size() && (last == first || n + cost(seqs[last]) <= max_cost)) n += cost(seqs[last++]);
    AIRLOCK_RETURN_IF_ERROR(run(first, last));
    first = last;
  }
  return Status::ok();
}

// Packed by tokens: at most `max_tokens` a pass.
template <typename Run>
Status for_each_pass(std::span<const std::vector<std::int32_t>> seqs, std::int64_t max_tokens, Run&& run) {
  return for_each_pass_by(
      seqs, max_tokens, [](const std::vector<std::int32_t>& s) { return static_cast<std::int64_t>(s.size()); },
      std::forward<Run>(run));
}

}  // namespace airlock::engine
