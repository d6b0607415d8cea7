#include "nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <thread>

#include "cuda_ops.h"

namespace airlock::engine {
namespace {

// What this process's ranks share: their communicators and whether the
// group is over. Enqueuing a collective holds the lock shared; abort()
// holds it exclusive, so a communicator is never aborted (freed) under a
// call still using it. Waits happen outside the lock.
//
// A watcher thread asks NCCL every 100 ms for each communicator's
// asynchronous error (a peer that died or aborted, a broken connection:
// what NCCL detects) and aborts the group on one: ncclCommAbort ends the
// collectives this process's devices are waiting in, which no local
// failure would otherwise do when the failure was on another machine.
struct NcclGroup {
  std::vector<ncclComm_t> comms;
  std::shared_mutex mu;
  Status aborted;  // guarded by mu

  std::mutex watch_mu;
  std::condition_variable watch_cv;
  bool stopping = false;  // guarded by watch_mu
  std::thread watcher;

  void abort(const Status& reason) {
    std::unique_lock<std::shared_mutex> lock(mu);
    if (!aborted.is_ok()) return;
    aborted = reason.is_ok() ? internal_error("tensor-parallel group aborted") : reason;
    for (ncclComm_t& c : comms) {
      if (c != nullptr) ncclCommAbort(c);  // frees the communicator
      c = nullptr;
    }
  }

  void start_watching() {
    watcher = std::thread([this] { watch(); });
  }

  void watch() {
    std::unique_lock<std::mutex> lk(watch_mu);
    while (!watch_cv.wait_for(lk, std::chrono::milliseconds(100), [&] { return stopping; })) {
      Status failure;
      {
        std::shared_lock<std::shared_mutex> lock(mu);
        if (!aborted.is_ok()) return;
        for (ncclComm_t c : comms) {
          ncclResult_t async = ncclSuccess;
          if (c != nullptr && ncclCommGetAsyncError(c, &async) == ncclSuccess && async != ncclSuccess &&
              async != ncclInProgress) {
            failure = unavailable(std::string("NCCL: the tensor-parallel group failed (") + ncclGetErrorString(async) +
                                  "): a peer stopped or its connection broke");
            break;
          }
        }
      }
      if (!failure.is_ok()) {
        abort(failure);
        return;
      }
    }
  }

  ~NcclGroup() {
    {
      std::lock_guard<std::mutex> lk(watch_mu);
      stopping = true;
    }
    watch_cv.notify_all();
    if (watcher.joinable()) watcher.join();
    for (ncclComm_t c : comms)
      if (c != nullptr) ncclCommDestroy(c);
  }
};

class NcclCommunicator final : public Communicator {
 public:
  // comms[local] of `g` is rank `rank` of a group of n_ranks (more than
  // g's comms when the group spans processes).
  NcclCommunicator(std::shared_ptr<NcclGroup> g, int local, int rank, int n_ranks)
      : g_(std::move(g)), local_(local), rank_(rank), n_ranks_(n_ranks) {}
  int rank() const override { return rank_; }
  int n_ranks() const override { return n_ranks_; }

  Status all_reduce_sum(float* x, std::int64_t n) override {
    std::shared_lock<std::shared_mutex> lock(g_->mu);
    if (!g_->aborted.is_ok()) return g_->aborted;
    const ncclResult_t r = ncclAllReduce(x, x, static_cast<std::size_t>(n), ncclFloat, ncclSum,
                                         g_->comms[static_cast<std::size_t>(local_)], cudaStreamLegacy);
    if (r != ncclSuccess) return internal_error(std::string("NCCL all-reduce: ") + ncclGetErrorString(r));
    return Status::ok();
  }

  // NCCL moves device memory: the bytes go through this rank's page-locked
  // host buffer and device buffer (on the calling thread's device, as
  // bind_thread set it), with only queued copies under the lock; the wait
  // is outside it, so that an abort (ncclCommAbort ends the broadcast on
  // the device) can get in, from this process or through the watcher.
  Status broadcast(void* data, std::int64_t bytes) override {
    if (bytes <= 0) return Status::ok();
    const std::size_t n = static_cast<std::size_t>(bytes);
    {
      std::shared_lock<std::shared_mutex> lock(g_->mu);
      if (!g_->aborted.is_ok()) return g_->aborted;
      if (Status s = reserve(n); !s.is_ok()) return s;
      if (!host_.grow(n)) return resource_exhausted("NCCL broadcast: no page-locked memory for " + std::to_string(n) + " bytes");
      const cudaStream_t s = cudaStreamLegacy;
      if (rank_ == 0) {
        std::memcpy(host_.get(), data, n);
        if (cudaMemcpyAsync(staging_, host_.get(), n, cudaMemcpyHostToDevice, s) != cudaSuccess)
          return cuda_failure("NCCL broadcast: copy to the device");
      }
      const ncclResult_t r = ncclBroadcast(staging_, staging_, n, ncclUint8, 0,
                                           g_->comms[static_cast<std::size_t>(local_)], s);
      if (r != ncclSuccess) return internal_error(std::string("NCCL broadcast: ") + ncclGetErrorString(r));
      if (rank_ != 0 && cudaMemcpyAsync(host_.get(), staging_, n, cudaMemcpyDeviceToHost, s) != cudaSuccess)
        return cuda_failure("NCCL broadcast: copy to the host");
    }
    const cudaError_t waited = cudaStreamSynchronize(cudaStreamLegacy);
    {
      std::shared_lock<std::shared_mutex> lock(g_->mu);
      if (!g_->aborted.is_ok()) return g_->aborted;  // data unspecified
    }
    if (waited != cudaSuccess) return cuda_failure("NCCL broadcast");
    if (rank_ != 0) std::memcpy(data, host_.get(), n);
    return Status::ok();
  }

  // A one-number all-reduce, waited for outside the lock.
  Status barrier() override {
    {
      std::shared_lock<std::shared_mutex> lock(g_->mu);
      if (!g_->aborted.is_ok()) return g_->aborted;
      if (Status s = reserve(sizeof(std::int32_t)); !s.is_ok()) return s;
      const ncclResult_t r = ncclAllReduce(staging_, staging_, 1, ncclInt32, ncclSum,
                                           g_->comms[static_cast<std::size_t>(local_)], cudaStreamLegacy);
      if (r != ncclSuccess) return internal_error(std::string("NCCL barrier: ") + ncclGetErrorString(r));
    }
    const cudaError_t waited = cudaStreamSynchronize(cudaStreamLegacy);
    std::shared_lock<std::shared_mutex> lock(g_->mu);
    if (!g_->aborted.is_ok()) return g_->aborted;
    return waited == cudaSuccess ? Status::ok() : cuda_failure("NCCL barrier");
  }

  ~NcclCommunicator() override {
    if (staging_ != nullptr) cudaFree(staging_);
  }

  void abort(const Status& reason) override { g_->abort(reason); }

 private:
  // The device staging buffer, at least n bytes.
  Status reserve(std::size_t n) {
    if (staging_bytes_ >= n) return Status::ok();
    if (staging_ != nullptr) cudaFree(staging_);
    staging_ = nullptr;
    staging_bytes_ = 0;
    if (cudaMalloc(&staging_, n) != cudaSuccess) {
      (void)cudaGetLastError();
      return resource_exhausted("NCCL: no device memory for " + std::to_string(n) + " bytes of staging");
    }
    staging_bytes_ = n;
    return Status::ok();
  }

  static Status cuda_failure(const char* what) {
    return internal_error(std::string(what) + ": " + cudaGetErrorString(cudaGetLastError()));
  }

  std::shared_ptr<NcclGroup> g_;
  int local_, rank_, n_ranks_;
  void* staging_ = nullptr;  // device memory of this rank's device
  std::size_t staging_bytes_ = 0;
  cuda::PinnedBuffer host_;
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
  g->start_watching();
  std::vector<std::unique_ptr<Communicator>> out;
  for (std::size_t i = 0; i < devices.size(); ++i)
    out.push_back(std::make_unique<NcclCommunicator>(g, static_cast<int>(i), static_cast<int>(i),
                                                     static_cast<int>(devices.size())));
  return out;
}

Result<std::vector<std::unique_ptr<Communicator>>> make_nccl_spread_group(const std::vector<int>& devices,
                                                                          int first_rank, int n_ranks,
                                                                          const std::string& root) {
  AIRLOCK_RETURN_IF_ERROR(check_group_root(root));
  const int n_local = static_cast<int>(devices.size());
  if (n_local < 1 || first_rank < 0 || n_ranks < 2 || first_rank + n_local > n_ranks)
    return invalid_argument("NCCL group: ranks " + std::to_string(first_rank) + ".." +
                            std::to_string(first_rank + n_local - 1) + " of " + std::to_string(n_ranks));
  // NCCL's bootstrap at the configured root: every process derives the same
  // id from it, and rank 0's process listens there.
  // (The environment changes only when it must: setenv is not safe against
  // other threads' getenv.)
  const char* set = std::getenv("NCCL_COMM_ID");
  if (set == nullptr || root != set) setenv("NCCL_COMM_ID", root.c_str(), /*overwrite=*/1);
  if (std::getenv("NCCL_RUNTIME_CONNECT") == nullptr)
    setenv("NCCL_RUNTIME_CONNECT", "0", /*overwrite=*/0);  // as make_nccl_group: connections made now
  ncclUniqueId id;
  ncclResult_t r = ncclGetUniqueId(&id);
  if (r != ncclSuccess) return unavailable(std::string("NCCL: no group id from ") + root + ": " + ncclGetErrorString(r));
  auto g = std::make_shared<NcclGroup>();
  g->comms.assign(devices.size(), nullptr);
  int previous = 0;
  (void)cudaGetDevice(&previous);
  r = ncclGroupStart();
  for (int i = 0; i < n_local && r == ncclSuccess; ++i) {
    if (cudaSetDevice(devices[static_cast<std::size_t>(i)]) != cudaSuccess) {
      (void)cudaGetLastError();
      r = ncclInvalidArgument;
      break;
    }
    r = ncclCommInitRank(&g->comms[static_cast<std::size_t>(i)], n_ranks, id, first_rank + i);
  }
  const ncclResult_t ended = ncclGroupEnd();
  (void)cudaSetDevice(previous);
  if (r == ncclSuccess) r = ended;
  if (r != ncclSuccess) {
    // Whatever initialised is aborted (destroying could wait for peers).
    for (ncclComm_t& c : g->comms)
      if (c != nullptr) ncclCommAbort(c);
    for (ncclComm_t& c : g->comms) c = nullptr;
    return unavailable("NCCL: cannot join ranks " + std::to_string(first_rank) + ".." +
                       std::to_string(first_rank + n_local - 1) + " of " + std::to_string(n_ranks) + " at " + root +
                       ": " + ncclGetErrorString(r));
  }
  g->start_watching();
  std::vector<std::unique_ptr<Communicator>> out;
  for (int i = 0; i < n_local; ++i) out.push_back(std::make_unique<NcclCommunicator>(g, i, first_rank + i, n_ranks));
  return out;
}

}  // namespace airlock::engine
