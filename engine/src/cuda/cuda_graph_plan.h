// Which CUDA graph runs a pass (issue 7: "the decode step captured as a
// CUDA graph per batch-size bucket"). Host code only, tested everywhere.
//
// A graph replays exactly what was captured: the same kernels with the same
// launch shapes on the same buffers. A replayable decode pass
// (Backend::PassInfo) of n_tokens tokens launches the same kernels every
// step but for attention, whose split count and block-table stride follow
// the longest context. So a graph is keyed by n_tokens and a context
// bucket: the table stride is rounded up to a power of two of blocks (at
// least kMinContextBlocks), and attention is split for that many positions
// (ranges past a token's context are empty and cost one check). A
// sequence's growth thus moves it to a new graph about log2(context) times,
// and a server keeps at most max_tokens * log2(max_blocks) graphs.
#pragma once

#include <algorithm>
#include <compare>
#include <cstdint>
#include <optional>

namespace airlock::engine::cuda {

struct GraphKey {
  std::int64_t n_tokens = 0;
  int ctx_blocks = 0;              // block-table entries per token (the stride)
  std::uintptr_t storage = 0;      // the KV storage the captured kernels read and write
  auto operator<=>(const GraphKey&) const = default;
};

struct GraphLimits {
  std::int64_t max_tokens = 0;  // passes of more tokens run eagerly; 0: no graphs
  std::int64_t max_blocks = 0;  // table entries per token the staging buffers hold
};

inline constexpr int kMinContextBlocks = 16;  // 256 positions

// The graph for a pass of n_tokens tokens whose longest context is max_ctx
// positions (blocks of block_tokens) on `storage`, or nothing: run it
// eagerly.
inline std::optional<GraphKey> graph_key(const GraphLimits& limits, std::int64_t n_tokens, int max_ctx,
                                         int block_tokens, const void* storage) {
  if (n_tokens < 1 || n_tokens > limits.max_tokens || max_ctx < 1 || block_tokens < 1) return std::nullopt;
  const std::int64_t blocks = (static_cast<std::int64_t>(max_ctx) + block_tokens - 1) / block_tokens;
  if (blocks > limits.max_blocks) return std::nullopt;
  std::int64_t bucket = kMinContextBlocks;
  while (bucket < blocks) bucket *= 2;
  return GraphKey{n_tokens, static_cast<int>(std::min(bucket, limits.max_blocks)),
                  reinterpret_cast<std::uintptr_t>(storage)};
}

}  // namespace airlock::engine::cuda
