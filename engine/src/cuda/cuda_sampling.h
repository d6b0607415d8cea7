// Sampling on the device (issue 7): CudaBackend::sample chooses each row's
// token where the logits are, so that a decode step waits for the device
// once, for the result, and downloads a token id,
// its log-probability and the top alternatives per sequence instead of a
// whole row of logits (600 KB for a 152k vocabulary).
//
// It computes what sample_row() (sampler.h) computes, step for step: the
// log-softmax of the raw logits for reporting; the penalties, applied in
// the row's order by one thread; greedy as the first largest adjusted
// logit; otherwise the candidates sorted by adjusted logit (a stable
// descending radix sort: ties keep the lower id first, as the host's
// comparator), cut by top-k, then top-p and min-p over the probabilities
// at temperature 1, then the row's draw u over the weights at its
// temperature. Sums are in double as on the host, but summed in a
// different order, so a draw that falls within rounding (about 1e-15
// relative) of a boundary between two candidates may pick the other one,
// and a reported log-probability may differ in its last bit (the log-
// normaliser's sum, and CUDA's exp and log against glibc's). Greedy choices
// are the host's exactly. Logits that are NaN are not supported (the host's
// arg-max and sort are not defined on them either); infinities are.
//
// Rows go through in groups of kSampleGroupRows, so the workspace (sort
// keys and ids, CUB's temporary storage) stays about 16 bytes per logit of
// one group, whatever the batch. A group is one block per row: a full sort
// of a large vocabulary per sampled row is the price of matching the host
// exactly; larger groups or a top-k prefilter are the ways to cut it once
// measured.
//
// No kernel here has run on a GPU yet; cuda_ops_test compares it with
// sample_row() where a GPU is present.
//
// Errors: kResourceExhausted when the workspace cannot grow, kInternal
// with CUDA's message when a launch or a copy fails.
//
// Thread-safety: one sample() at a time per DeviceSampler (one per
// backend, driven by its forward pass).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "airlock/common/status.h"
#include "airlock/engine/sampler.h"
#include "cuda_ops.h"

namespace airlock::engine::cuda {

inline constexpr int kSampleGroupRows = 16;
inline constexpr int kMaxLogprobs = 20;  // validate() allows 0..20

class DeviceSampler {
 public:
  // Workspace for rows of n_vocab logits, ahead of a pass (so that running
  // out of device memory fails it before the KV cache changes).
  Status reserve(std::int64_t n_vocab);
  // out (rows.size(), host) = what sample_row() chooses from each row of
  // logits (rows.size(), n_vocab, device memory). Blocks until the tokens
  // are on the host.
  Status sample(const float* logits, std::int64_t n_vocab, std::span<const SampleRow> rows,
                std::vector<SampledToken>* out);

 private:
  DeviceBuffer keys_, keys_sorted_, ids_, ids_sorted_, sort_temp_;
  // The rows' parameters, penalty counts and sort segments go up in one
  // queued copy from inputs_host_, the results come down in one into
  // results_host_: the host waits once, for the results.
  DeviceBuffer inputs_, results_;
  PinnedBuffer inputs_host_, results_host_;
  std::int64_t reserved_vocab_ = 0;
};

}  // namespace airlock::engine::cuda
