// Forward passes of a decoder over whole token sequences, each its own
// sequence in a KV cache of just their blocks (allocated for the pass),
// returning final-norm hidden states: the decoder embedder's and the
// decoder reranker's passes.
//
// What one pass holds, whatever the input: sequences are packed into a
// pass while their KV slots (lengths rounded up to whole blocks) stay
// within kDecoderPassSlots, a longer sequence alone; a pass goes through
// forward() in chunks of at most kDecoderPassSlots tokens, as a prompt's
// prefill does. So a pass's KV storage is that many slots or one
// sequence's, and its activations one chunk's (decoder_pass_bytes).
#pragma once

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "airlock/common/status.h"
#include "airlock/engine/backend.h"
#include "airlock/engine/kv_cache.h"
#include "pass_packing.h"

namespace airlock::engine {

class Model;

inline constexpr std::int64_t kDecoderPassSlots = 1024;

// The KV slots of a sequence of `n_tokens` tokens.
inline std::int64_t decoder_pass_slots(std::size_t n_tokens) {
  return static_cast<std::int64_t>(KvCache::blocks_for(static_cast<int>(n_tokens))) * kBlockTokens;
}

// run(first, last) for each pass's sequences [first, last), in order.
template <typename Run>
Status for_each_decoder_pass(std::span<const std::vector<std::int32_t>> seqs, Run&& run) {
  return for_each_pass_by(
      seqs, kDecoderPassSlots, [](const std::vector<std::int32_t>& s) { return decoder_pass_slots(s.size()); },
      std::forward<Run>(run));
}

// Rows of *hidden (n_embd floats each), in order: every token of each
// sequence (all_rows) or its last token alone. The sequences must be
// non-empty and within the context. The KV storage is of `kv_type`.
Status decoder_hidden_pass(Model& model, std::span<const std::vector<std::int32_t>> seqs, bool all_rows,
                           KvType kv_type, std::vector<float>* hidden);

// The most memory one pass holds besides the weights, for sequences of at
// most `max_tokens` tokens: its KV storage, one chunk's activations and
// the hidden rows it returns.
std::uint64_t decoder_pass_bytes(const Model& model, std::size_t max_tokens, bool all_rows, KvType kv_type);

}  // namespace airlock::engine
