#include "airlock/engine/collective.h"

#include <condition_variable>
#include <cstring>
#include <mutex>

namespace airlock::engine {
namespace {

// What the ranks of one in-process group share.
struct Group {
  explicit Group(int n) : n_ranks(n), buffers(static_cast<std::size_t>(n), nullptr) {}

  // Returns once every rank has arrived (reusable: counts generations).
  void barrier() {
    std::unique_lock<std::mutex> lock(mu);
    const std::uint64_t gen = generation;
    if (++arrived == n_ranks) {
      arrived = 0;
      ++generation;
      cv.notify_all();
    } else {
      cv.wait(lock, [&] { return generation != gen; });
    }
  }

  const int n_ranks;
  std::mutex mu;
  std::condition_variable cv;
  int arrived = 0;
  std::uint64_t generation = 0;
  std::vector<float*> buffers;  // each rank's x during a call
  std::vector<float> sum;       // the result, before each rank copies it
};

class InProcessCommunicator : public Communicator {
 public:
  InProcessCommunicator(std::shared_ptr<Group> g, int rank) : g_(std::move(g)), rank_(rank) {}
  int rank() const override { return rank_; }
  int n_ranks() const override { return g_->n_ranks; }

  void all_reduce_sum(float* x, std::int64_t n) override {
    const int r_count = g_->n_ranks;
    if (r_count == 1) return;
    {
      std::lock_guard<std::mutex> lock(g_->mu);
      g_->buffers[static_cast<std::size_t>(rank_)] = x;
      if (g_->sum.size() < static_cast<std::size_t>(n)) g_->sum.resize(static_cast<std::size_t>(n));
    }
    g_->barrier();
    // Each rank sums its own share of the elements over all ranks...
    const std::int64_t begin = n * rank_ / r_count, end = n * (rank_ + 1) / r_count;
    for (std::int64_t i = begin; i < end; ++i) {
      float s = g_->buffers[0][i];
      for (int r = 1; r < r_count; ++r) s += g_->buffers[static_cast<std::size_t>(r)][i];
      g_->sum[static_cast<std::size_t>(i)] = s;
    }
    g_->barrier();
    // ...then every rank takes the whole result. The last barrier keeps
    // `sum` and the buffers unchanged until everyone has copied.
    std::memcpy(x, g_->sum.data(), static_cast<std::size_t>(n) * sizeof(float));
    g_->barrier();
  }

 private:
  std::shared_ptr<Group> g_;
  int rank_;
};

}  // namespace

std::vector<std::unique_ptr<Communicator>> make_in_process_group(int n_ranks) {
  if (n_ranks < 1) return {};
  auto g = std::make_shared<Group>(n_ranks);
  std::vector<std::unique_ptr<Communicator>> out;
  for (int r = 0; r < n_ranks; ++r) out.push_back(std::make_unique<InProcessCommunicator>(g, r));
  return out;
}

}  // namespace airlock::engine
