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
// CUDA graphs: decode passes are captured once per shape and replayed
// (CudaOptions::graph_max_tokens, cuda_graph_plan.h). Everything runs on
// the calling thread's per-thread default stream (the library is built
// with --default-stream per-thread), which a capture needs.
// No kernel here has run on a GPU yet; cuda_tests compares the whole
// forward pass with the CPU backend where a GPU is present.
//
// Errors: upload()/alloc*() as Backend says; a failing kernel or copy is
// remembered and returned by take_error(), later operations are skipped.
//
// Thread-safety: one forward pass at a time, as every backend.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "airlock/common/status.h"
#include "airlock/engine/backend.h"

namespace airlock::engine {

struct CudaOptions {
  // Products of at least this many tokens use cuBLAS; 0: by weight type
  // (9 for F32 and BF16, whose GEMM reads the weights as stored; 33 for the
  // others, whose GEMM first writes a bf16 copy).
  int gemm_min_tokens = 0;
  // Decode passes (Backend::PassInfo::replayable) of up to this many tokens
  // run as CUDA graphs: captured once per shape (cuda_graph_plan.h) and
  // replayed after, one launch per step instead of a dozen per layer; 0
  // runs every pass eagerly. Passes that reach cuBLAS (gemm_min_tokens)
  // always run eagerly.
  int graph_max_tokens = 32;
};

// What a CUDA backend did with its passes.
struct CudaGraphStats {
  std::uint64_t captured = 0;  // graphs captured (and launched)
  std::uint64_t replayed = 0;  // passes that replayed one
  std::uint64_t eager = 0;     // passes launched operation by operation
  std::uint64_t refused = 0;   // captures that failed or replays refused (each pass then ran eagerly)
  std::size_t held = 0;        // graphs held now
};
// Zeros for a backend make_cuda_backend did not make.
CudaGraphStats cuda_graph_stats(const Backend& backend);
// Changes CudaOptions::graph_max_tokens of a backend make_cuda_backend made
// (between passes; benchmarks compare with and without graphs in one run);
// nothing for any other backend.
void set_cuda_graph_max_tokens(Backend& backend, int max_tokens);

// kUnavailable when there is no such device or cuBLAS cannot start on it.
Result<std::unique_ptr<Backend>> make_cuda_backend(int device = 0, CudaOptions options = {});

}  // namespace airlock::engine
