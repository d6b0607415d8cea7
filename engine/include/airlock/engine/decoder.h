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
// A group may also be spread over several processes (machines: NCCL's
// multi-node bootstrap, nccl_communicator.h): the process holding rank 0
// runs the scheduler and a TensorParallelDecoder over its local ranks, the
// others a TensorParallelFollower over theirs. Before each pass, and at
// alloc_kv() and destruction, the decoder broadcasts the pass's
// description (pass_message.h) to every rank; a follower runs exactly the
// passes it receives, on KV storage of the size it is told, until the
// decoder stops it. After each pass every rank meets in a barrier, so a
// pass succeeds only when every rank of every process finished its share;
// a failure on any rank aborts the whole group, as within one process. A
// follower's failed KV allocation shows at the decoder's next pass. Destroying the decoder waits for the followers to
// take the stop message (their process must still be there: one that died
// without aborting leaves NCCL waiting; stop the service, as after any
// lost rank).
//
// Thread-safety: one forward() at a time (the scheduler's thread); a
// follower's run() from one thread.
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
  // ranks[i] must be rank i of a group of two ranks or more whose
  // communicators are comms (held until the decoder is destroyed); ranks
  // beyond ranks.size() belong to followers in other processes. The ranks
  // are shared: a server keeps rank 0 for its metadata.
  static Result<std::unique_ptr<TensorParallelDecoder>> create(std::vector<std::shared_ptr<Model>> ranks,
                                                               std::vector<std::unique_ptr<Communicator>> comms);
  ~TensorParallelDecoder() override;
  TensorParallelDecoder(const TensorParallelDecoder&) = delete;
  TensorParallelDecoder& operator=(const TensorParallelDecoder&) = delete;

  const ModelParams& params() const override;
  Status alloc_kv(int n_blocks, KvType type) override;
  using Decoder::forward;
  Status forward(const Batch& batch, KvCache& cache, const PassOutput& out) override;

  int n_ranks() const;        // of the whole group
  int n_local_ranks() const;  // of this process
  const Model& rank(int i) const;  // local rank i (rank i of the group)

 private:
  struct Impl;
  explicit TensorParallelDecoder(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The ranks of a spread group that another process's decoder drives.
class TensorParallelFollower {
 public:
  // ranks[i] must be rank first + i (first > 0) of the group, with comms[i].
  static Result<std::unique_ptr<TensorParallelFollower>> create(std::vector<std::shared_ptr<Model>> ranks,
                                                                std::vector<std::unique_ptr<Communicator>> comms);
  ~TensorParallelFollower();
  TensorParallelFollower(const TensorParallelFollower&) = delete;
  TensorParallelFollower& operator=(const TensorParallelFollower&) = delete;

  // Runs the passes the decoder sends until it stops the group (OK) or the
  // group fails (the reason; the group is then aborted).
  Status run();
  // Aborts the whole group with `reason` (this process is stopping): run()
  // returns it, and the decoder's passes fail. Any thread.
  void abort(const Status& reason);

 private:
  struct Impl;
  explicit TensorParallelFollower(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace airlock::engine
