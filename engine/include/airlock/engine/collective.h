// Collective operations among the ranks of one tensor-parallel group: the
// seam between the forward pass and NCCL.
//
// A model split over n_ranks (Model::load with TensorParallel) holds a
// slice of every attention and feed-forward matrix; after the attention
// output and the feed-forward down projections each rank has a partial sum
// of the residual update, and all_reduce_sum() makes every rank hold the
// whole sum. Ranks run as threads of one process, one per device
// (TensorParallelDecoder, decoder.h, which the scheduler drives). On GPUs
// the communicator will be NCCL's (issue 7); the in-process group here
// runs ranks on the CPU (host memory only), so that the split and its
// arithmetic are tested on any machine.
//
// Failure: a rank that cannot reach the next collective (its forward pass
// failed to allocate, or its device faulted) must abort() the group, or the
// other ranks would wait for it forever. An abort fails every rank's pending
// and later calls with the abort's status; the group is then finished (make
// a new one, as NCCL needs a new communicator after ncclCommAbort).
// Model::forward() aborts its group whenever it fails.
//
// Thread-safety: each Communicator's all_reduce_sum() is called by its own
// rank's thread only; the ranks of a group call it in the same order with
// the same n (a collective: each call blocks until every rank has made it).
// abort() may be called from any thread, any number of times.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "airlock/common/status.h"

namespace airlock::engine {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int n_ranks() const = 0;
  // x (n) becomes the element-wise sum of every rank's x, the same bits on
  // every rank (the in-process group sums in rank order). Fails with the
  // abort's status once the group is aborted (x is then unspecified).
  [[nodiscard]] virtual Status all_reduce_sum(float* x, std::int64_t n) = 0;
  // data (bytes, host memory) becomes rank 0's bytes on every rank: how a
  // group spread over several processes hands each pass's description from
  // the rank that schedules to the others (decoder.h, pass_message.h). Fails as
  // all_reduce_sum.
  [[nodiscard]] virtual Status broadcast(void* data, std::int64_t bytes) = 0;
  // Returns once every rank has called it: how the ranks of a group
  // spread over processes confirm a pass (a rank that failed aborts the
  // group instead, and every other rank's barrier fails with the reason).
  // Fails as all_reduce_sum. Waits.
  [[nodiscard]] virtual Status barrier() = 0;
  // Fails every rank's pending and later collectives with `reason` (the
  // first abort's reason wins).
  virtual void abort(const Status& reason) = 0;
};

// OK when `root` is where a group spanning machines meets (NCCL's
// bootstrap: nccl_communicator.h): a literal address with a port in
// 1..65535, "IPv4:port" or "[IPv6]:port". Names are refused: nothing in the
// product resolves one. kInvalidArgument saying what is wrong otherwise.
Status check_group_root(const std::string& root);

// n_ranks communicators of one group for threads of this process (rank i
// is element i; none for n_ranks < 1). They share state: destroy them after every rank's thread
// has stopped using them.
std::vector<std::unique_ptr<Communicator>> make_in_process_group(int n_ranks);

}  // namespace airlock::engine
