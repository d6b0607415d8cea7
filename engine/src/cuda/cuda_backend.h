// The CUDA backend (issue 7, in progress): the Backend operations on one
// device, built from cuda_ops. Weights are uploaded once (kept in their
// GGUF type; one-row tensors such as norms and biases are stored as f32),
// activations and the KV cache live in device memory.
//
// Matrix products: decode batches (up to gemm_min_tokens tokens) run the
// warp-per-row kernels that read each weight once per eight tokens; larger
// ones go through cuBLAS (cuda_ops.h, Gemm: f32 or bf16 tensor cores).
// So batch invariance holds exactly only for F32 weights: for the others a
// sequence's logits move by bf16 rounding (about 2^-9 relative per product)
// when its batch crosses gemm_min_tokens, and a greedy choice between two
// nearly equal logits can change.
//
// A pass's positions, slots, contexts and block tables go to the device
// once (at the first layer that needs them; later layers find the same
// numbers staged); the host waits for the device there and at the logits'
// download.
//
// Sampling runs on the device (cuda_sampling.h): a pass that the scheduler
// asks for tokens downloads tokens and their log-probabilities, not logits.
//
// Not yet: CUDA graphs.
// No kernel here has run on a GPU yet; cuda_tests compares the whole
// forward pass with the CPU backend where a GPU is present.
//
// Errors: upload()/alloc*() as Backend says; a failing kernel or copy is
// remembered and returned by take_error(), later operations are skipped.
//
// Thread-safety: one forward pass at a time, as every backend.
#pragma once

#include <memory>

#include "airlock/common/status.h"
#include "airlock/engine/backend.h"

namespace airlock::engine {

struct CudaOptions {
  // Products of at least this many tokens use cuBLAS; 0: by weight type
  // (9 for F32 and BF16, whose GEMM reads the weights as stored; 33 for the
  // others, whose GEMM first writes a bf16 copy).
  int gemm_min_tokens = 0;
};

// kUnavailable when there is no such device or cuBLAS cannot start on it.
Result<std::unique_ptr<Backend>> make_cuda_backend(int device = 0, CudaOptions options = {});

}  // namespace airlock::engine
