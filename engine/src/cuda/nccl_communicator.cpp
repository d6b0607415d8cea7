#include "nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstdlib>
#include <mutex>
#include <shared_mutex>
#include <string>

namespace airlock::engine {
namespace {

// What the ranks share: their communicators and whether the group is over.
// Enqueuing a reduction holds the lock shared; abort() holds it exclusive,
// so a communicator is never aborted (freed) under a call still using it.
struct NcclGroup {
  std::vector<ncclComm_t> comms;
  std::shared_mutex mu;
  Status aborted;  // guarded by mu

  ~NcclGroup() {
    for (ncclComm_t c : comms)
      if (c != nullptr) ncclCommDestroy(c);
  }
};

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(std::shared_ptr<NcclGroup> g, int rank) : g_(std::move(g)), rank_(rank) {}
  int rank() const override { return rank_; }
  int n_ranks() const override { return static_cast<int>(g_->comms.size()); }

  Status all_reduce_sum(float* x, std::int64_t n) override {
    std::shared_lock<std::shared_mutex> lock(g_->mu);
    if (!g_->aborted.is_ok()) return g_->aborted;
    const ncclResult_t r = ncclAllReduce(x, x, static_cast<std::size_t>(n), ncclFloat, ncclSum,
                                         g_->comms[static_cast<std::size_t>(rank_)], cudaStreamLegacy);
    if (r != ncclSuccess) return internal_error(std::string("NCCL all-reduce: ") + ncclGetErrorString(r));
    return Status::ok();
  }

  void abort(const Status& reason) override {
    std::unique_lock<std::shared_mutex> lock(g_->mu);
    if (!g_->aborted.is_ok()) return;
    g_->aborted = reason.is_ok() ? internal_error("tensor-parallel group aborted") : reason;
    for (ncclComm_t& c : g_->comms) {
      ncclCommAbort(c);  // frees the communicator
      c = nullptr;
    }
  }

 private:
  std::shared_ptr<NcclGroup> g_;
  int rank_;
};

}  // namespace

Result<std::vector<std::unique_ptr<Communicator>>> make_nccl_group(const std::vector<int>& devices) {
  if (devices.empty()) return invalid_argument("NCCL group: no devices");
  // The bootstrap's TCP connections stay on the loopback interface, and no
  // InfiniBand transport is opened (the ranks share one machine).
  setenv("NCCL_SOCKET_IFNAME", "lo", /*overwrite=*/0);
  setenv("NCCL_IB_DISABLE", "1", /*overwrite=*/0);
  // Connections and their buffers made now, not in the first all-reduce:
  // that one would wait for every peer while holding the group's shared
  // lock (an abort could not get in), and its buffers would come after the
  // KV cache was sized from the free memory.
  setenv("NCCL_RUNTIME_CONNECT", "0", /*overwrite=*/0);
  auto g = std::make_shared<NcclGroup>();
  g->comms.assign(devices.size(), nullptr);
  const ncclResult_t r = ncclCommInitAll(g->comms.data(), static_cast<int>(devices.size()), devices.data());
  if (r != ncclSuccess) {
    for (ncclComm_t& c : g->comms) c = nullptr;  // not initialised: nothing to destroy
    return unavailable(std::string("NCCL: cannot set up ") + std::to_string(devices.size()) + " devices: " +
                       ncclGetErrorString(r));
  }
  std::vector<std::unique_ptr<Communicator>> out;
  for (std::size_t i = 0; i < devices.size(); ++i)
    out.push_back(std::make_unique<NcclCommunicator>(g, static_cast<int>(i)));
  return out;
}

}  // namespace airlock::engine
