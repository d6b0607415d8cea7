// Model internals shared between model.cpp (loading) and the architecture
// files (forward passes).
#pragma once

#include "airlock/engine/model.h"

namespace airlock::engine {

struct Model::Layer {
  WeightTensor attn_norm, wq, wk, wv, wo;
  // Biases, where the file has them for this layer (qwen2: q, k and v
  // always); absent ones have no data.
  WeightTensor bq, bk, bv, bo, b_gate, b_up, b_down;
  WeightTensor q_norm, k_norm;      // qwen3, gemma3
  WeightTensor post_attn_norm, post_ffn_norm;  // gemma2, gemma3
  WeightTensor ffn_norm, w_gate, w_up, w_down;
};

}  // namespace airlock::engine
