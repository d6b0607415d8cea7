#include "airlock/engine/collective.h"

#include <arpa/inet.h>

#include <condition_variable>
#include <cstring>
#include <mutex>

namespace airlock::engine {
namespace {

// What the ranks of one in-process group share.
struct Group {
  explicit Group(int n) : n_ranks(n), buffers(static_cast<std::size_t>(n), nullptr) {}

  // Returns once every rank has arrived (reusable: counts generations), or
  // the abort's status as soon as the group is aborted.
  Status barrier() {
    std::unique_lock<std::mutex> lock(mu);
    if (!aborted.is_ok()) return aborted;
    const std::uint64_t gen = generation;
    if (++arrived == n_ranks) {
      arrived = 0;
      ++generation;
      cv.notify_all();
      return Status::ok();
    }
    cv.wait(lock, [&] { return generation != gen || !aborted.is_ok(); });
    return generation != gen ? Status::ok() : aborted;
  }

  void abort(const Status& reason) {
    std::lock_guard<std::mutex> lock(mu);
    if (aborted.is_ok())
      aborted = reason.is_ok() ? internal_error("tensor-parallel group aborted") : reason;
    cv.notify_all();
  }

  const int n_ranks;
  std::mutex mu;
  std::condition_variable cv;
  int arrived = 0;
  std::uint64_t generation = 0;
  Status aborted;               // OK until the first abort
  std::vector<float*> buffers;  // each rank's x during a call
  std::vector<float> sum;       // the result, before each rank copies it
  std::vector<std::uint8_t> root_bytes;  // rank 0's bytes during a broadcast
};

class InProcessCommunicator : public Communicator {
 public:
  InProcessCommunicator(std::shared_ptr<Group> g, int rank) : g_(std::move(g)), rank_(rank) {}
  int rank() const override { return rank_; }
  int n_ranks() const override { return g_->n_ranks; }

  Status all_reduce_sum(float* x, std::int64_t n) override {
    const int r_count = g_->n_ranks;
    {
      std::lock_guard<std::mutex> lock(g_->mu);
      if (!g_->aborted.is_ok()) return g_->aborted;
      if (r_count == 1) return Status::ok();
      g_->buffers[static_cast<std::size_t>(rank_)] = x;
      if (g_->sum.size() < static_cast<std::size_t>(n)) g_->sum.resize(static_cast<std::size_t>(n));
    }
    // After an abort a rank may return while others still read its x or
    // write `sum`; its x is unspecified then. Both stay allocated: a model's
    // buffers outlive its failed pass, and `sum` is resized only before the
    // first barrier, which nobody passes once the group is aborted.
    AIRLOCK_RETURN_IF_ERROR(g_->barrier());
    // Each rank sums its own share of the elements over all ranks...
    const std::int64_t begin = n * rank_ / r_count, end = n * (rank_ + 1) / r_count;
    for (std::int64_t i = begin; i < end; ++i) {
      float s = g_->buffers[0][i];
      for (int r = 1; r < r_count; ++r) s += g_->buffers[static_cast<std::size_t>(r)][i];
      g_->sum[static_cast<std::size_t>(i)] = s;
    }
    AIRLOCK_RETURN_IF_ERROR(g_->barrier());
    // ...then every rank takes the whole result. The last barrier keeps
    // `sum` and the buffers unchanged until everyone has copied.
    std::memcpy(x, g_->sum.data(), static_cast<std::size_t>(n) * sizeof(float));
    return g_->barrier();
  }

  Status broadcast(void* data, std::int64_t bytes) override {
    {
      std::lock_guard<std::mutex> lock(g_->mu);
      if (!g_->aborted.is_ok()) return g_->aborted;
      if (g_->n_ranks == 1) return Status::ok();
      // The root's bytes are copied into the group's own buffer: a rank
      // still copying after an abort has let the root return reads the
      // group's memory, not the root's.
      if (rank_ == 0) {
        const auto* p = static_cast<const std::uint8_t*>(data);
        g_->root_bytes.assign(p, p + bytes);
      }
    }
    AIRLOCK_RETURN_IF_ERROR(g_->barrier());  // the root's bytes are published
    if (rank_ != 0) std::memcpy(data, g_->root_bytes.data(), static_cast<std::size_t>(bytes));
    return g_->barrier();  // nobody publishes again until every rank has copied
  }

  Status barrier() override {
    {
      std::lock_guard<std::mutex> lock(g_->mu);
      if (!g_->aborted.is_ok()) return g_->aborted;
    }
    return g_->barrier();
  }

  void abort(const Status& reason) override { g_->abort(reason); }

 private:
  std::shared_ptr<Group> g_;
  int rank_;
};

}  // namespace

Status check_group_root(const std::string& root) {
  const auto bad = [&](const char* why) {
    return invalid_argument("group root '" + root + "': " + why + " (\"IPv4:port\" or \"[IPv6]:port\")");
  };
  std::string host, port;
  if (!root.empty() && root[0] == '[') {
    const std::size_t close = root.find(']');
    if (close == std::string::npos || close + 1 >= root.size() || root[close + 1] != ':') return bad("no port");
    host = root.substr(1, close - 1);
    port = root.substr(close + 2);
    in6_addr a6{};
    if (inet_pton(AF_INET6, host.c_str(), &a6) != 1) return bad("not an IPv6 address");
  } else {
    const std::size_t colon = root.rfind(':');
    if (colon == std::string::npos) return bad("no port");
    host = root.substr(0, colon);
    port = root.substr(colon + 1);
    in_addr a4{};
    if (inet_pton(AF_INET, host.c_str(), &a4) != 1) return bad("not an IPv4 address (names are not resolved)");
  }
  if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos) return bad("bad port");
  const int p = std::stoi(port);
  if (p < 1 || p > 65535) return bad("port out of range");
  return Status::ok();
}

std::vector<std::unique_ptr<Communicator>> make_in_process_group(int n_ranks) {
  if (n_ranks < 1) return {};
  auto g = std::make_shared<Group>(n_ranks);
  std::vector<std::unique_ptr<Communicator>> out;
  for (int r = 0; r < n_ranks; ++r) out.push_back(std::make_unique<InProcessCommunicator>(g, r));
  return out;
}

}  // namespace airlock::engine
