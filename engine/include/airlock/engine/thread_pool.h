// A fixed pool of compute threads for the CPU backend, sized to the cores
// the process may use (no oversubscription: the calling thread is one of
// them). parallel_for() splits [0, n) into contiguous ranges, runs them on the
// workers and the caller, and returns when all are done.
//
// Thread-safety: parallel_for() is called from one thread at a time (the
// engine's forward pass); the pool is not reentrant.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace airlock::engine {

class ThreadPool {
 public:
  // n_threads 0 means one per available core (including the caller).
  explicit ThreadPool(int n_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int n_threads() const { return n_threads_; }

  // fn(begin, end) over disjoint ranges covering [0, n). Ranges are at least
  // `min_chunk` long so tiny loops stay on one thread.
  void parallel_for(std::int64_t n, const std::function<void(std::int64_t, std::int64_t)>& fn,
                    std::int64_t min_chunk = 1);

 private:
  void worker(int index);

  int n_threads_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable start_cv_;
  std::condition_variable done_cv_;
  std::uint64_t generation_ = 0;
  int pending_ = 0;
  bool stop_ = false;
  const std::function<void(std::int64_t, std::int64_t)>* job_ = nullptr;
  std::int64_t job_n_ = 0;
  int job_parts_ = 0;
};

}  // namespace airlock::engine
