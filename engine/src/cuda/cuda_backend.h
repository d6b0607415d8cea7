// The CUDA backend (issue 7, in progress): the Backend operations on one
// device, built from cuda_ops. Weights are uploaded once (kept in their
// GGUF type; one-row tensors such as norms and biases are stored as f32),
// activations and the KV cache live in device memory.
//
// Not yet: fast matmul (the reference kernel decodes weights per product),
// uploads of each step's positions, slots and block tables once per pass
// (today every operation copies what it needs), CUDA graphs, sampling on
// the device. No kernel here has run on a GPU yet; cuda_tests compares the
// whole forward pass with the CPU backend where a GPU is present.
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

// kUnavailable when there is no such device.
Result<std::unique_ptr<Backend>> make_cuda_backend(int device = 0);

}  // namespace airlock::engine
