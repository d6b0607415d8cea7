// What the scheduler drives: one model, or the ranks of a tensor-parallel
// group run together as threads of this process.
//
// A TensorParallelDecoder owns the ranks of one group (Model::load with
// TensorParallel{i, n, comm}) and one thread per rank, each bound to its
// rank's device (Backend::bind_thread). forward() checks the batch and
// extends the shared KV cache once, grows every rank's buffers, then runs
// every rank's pass at once (the passes meet in the all-reduces); rank 0
// alone goes on through the output matrix, and its logits (or the tokens
// sampled from them) are returned. Each rank keeps the keys and values of
// its own heads in its own storage; the block bookkeeping (KvCache) is one for all.
//
// Errors: as Model::forward. A rank whose pass fails aborts the group
// (collective.h); that pass fails on every rank with its reason, and every
// later one with kUnavailable: the group must be loaded again. A batch that
// fails check() or a rank that cannot grow its buffers fails the pass
// before any collective starts and leaves the group usable.
//
// Thread-safety: one forward() at a time (the scheduler's thread).
#pragma once

#include <memory>
#include <vector>

#include "airlock/common/status.h"
#include "airlock/engine/collective.h"
#include "airlock/engine/model.h"

namespace airlock::engine {

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual const ModelParams& params() const = 0;
  // KV storage for n_blocks blocks on every rank, before the first forward().
  virtual Status alloc_kv(int n_blocks, KvType type) = 0;
  // As Model::forward, on the storage alloc_kv() made.
  virtual Status forward(const Batch& batch, KvCache& cache, const PassOutput& out) = 0;
  Status forward(const Batch& batch, KvCache& cache, std::vector<float>* logits) {
    PassOutput out;
    out.logits = logits;
    return forward(batch, cache, out);
  }
  // Prepares the calling thread to drive forward() (the device to use).
  virtual void bind_thread() {}
};

// One model, not owned: it must outlive the decoder.
std::unique_ptr<Decoder> make_single_decoder(Model& model);

class TensorParallelDecoder final : public Decoder {
 public:
  // ranks[i] must be rank i of a group of ranks.size() (> 1) whose
  // communicators are comms (held until the decoder is destroyed). The
  // ranks are shared: a server keeps rank 0 for its metadata.
  static Result<std::unique_ptr<TensorParallelDecoder>> create(std::vector<std::shared_ptr<Model>> ranks,
                                                               std::vector<std::unique_ptr<Communicator>> comms);
  ~TensorParallelDecoder() override;
  TensorParallelDecoder(const TensorParallelDecoder&) = delete;
  TensorParallelDecoder& operator=(const TensorParallelDecoder&) = delete;

  const ModelParams& params() const override;
  Status alloc_kv(int n_blocks, KvType type) override;
  using Decoder::forward;
  Status forward(const Batch& batch, KvCache& cache, const PassOutput& out) override;

  int n_ranks() const;
  const Model& rank(int i) const;

 private:
  struct Impl;
  explicit TensorParallelDecoder(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace airlock::engine
