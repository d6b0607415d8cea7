// One forward pass of a decoder over whole token sequences, each its own
// sequence in a KV cache of just their blocks (allocated for the pass),
// returning final-norm hidden states: the decoder embedder's and the
// decoder reranker's pass.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "airlock/common/status.h"

namespace airlock::engine {

class Model;

// Rows of *hidden (n_embd floats each), in order: every token of each
// sequence (all_rows) or its last token alone. The sequences must be
// non-empty and within the context.
Status decoder_hidden_pass(Model& model, std::span<const std::vector<std::int32_t>> seqs, bool all_rows,
                           std::vector<float>* hidden);

}  // namespace airlock::engine
