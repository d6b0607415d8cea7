// A fixed pool of compute threads for the CPU backend, sized to the cores
// the process may use (no oversubscription: the calling thread is one of
// them). parallel_for() splits [0, n) into contiguous ranges, runs them on the
// workers and the caller (each thread claiming the next unclaimed range until
// none is left), and returns when all are done.
//
// A forward pass issues a few hundred parallel_for() calls per token, a few
// tens of microseconds apart; waking a sleeping thread through the kernel
// costs about as much. So idle workers (and a caller waiting for them) first
// spin on an atomic for a short while (kSpinMicros) and only then sleep (a
// futex): back-to-back jobs start without a system call or a lock, and a
// pool left idle still sleeps. A job waits only for the workers that joined
// it: one that is descheduled (another process or thread on its core) or
// still waking when the job comes is not waited for, and the threads that
// are running take its ranges.
//
// Thread-safety: several threads may call parallel_for() on one pool (the
// daemon's decoder and its embedding encoder share one, so that the two
// never run more compute threads than there are cores). Their jobs take
// turns, one job at a time, in the order the callers asked; a waiting caller
// sleeps. A parallel_for() called from inside a job runs inline on the
// calling thread.
//
// A range that throws (std::bad_alloc, say) ends the job early: the ranges
// not yet claimed are skipped, and parallel_for() throws to its caller once
// every thread is done: the caller's own exception if its range threw, else
// the first a worker's threw. The pool serves the next job as usual.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
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

  // fn(begin, end) over disjoint ranges covering [0, n), possibly several
  // per thread. Ranges are multiples of `min_chunk` long (the last may be
  // shorter), so tiny loops stay on one thread and kernels can rely on the
  // alignment of range starts.
  void parallel_for(std::int64_t n, const std::function<void(std::int64_t, std::int64_t)>& fn,
                    std::int64_t min_chunk = 1);

 private:
  void worker(int index);
  void run_chunks();
  // Closes the job, waits for the workers in it, then passes the turn on;
  // returns the exception a worker's range threw, if any.
  std::exception_ptr finish_job(std::uint64_t ticket);
  void fail_job(std::exception_ptr e);  // keeps the first, skips the ranges left
  void wake_workers();                   // those asleep, after a new job or stop_

  static constexpr int kSpinMicros = 100;

  // state_: the job's generation (high bits), whether it is closed to
  // workers that have not joined it yet, and how many have joined and not
  // left. A worker joins by raising the count while the generation is the
  // one it saw and the job is open; the caller, once every range is
  // claimed, closes the job and waits for the count to reach 0. So a
  // worker that was descheduled (a busy core) or asleep when the job came
  // holds nobody up: the others take its ranges.
  static constexpr int kGenShift = 24;
  static constexpr std::uint64_t kClosed = std::uint64_t{1} << 23;
  static constexpr std::uint64_t kJoinedMask = kClosed - 1;
  static std::uint64_t generation_of(std::uint64_t state) { return state >> kGenShift; }

  int n_threads_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::exception_ptr job_error_;  // under mu_: the first exception a worker's range threw
  std::atomic<bool> job_failed_{false};  // job_error_ is set
  std::condition_variable done_cv_;  // the caller, asleep until the workers in its job leave
  std::atomic<bool> caller_asleep_{false};  // it is, or is about to be (under mu_)
  std::atomic<int> sleepers_{0};      // workers asleep, or about to sleep, on wake_word_
  std::atomic<std::uint32_t> wake_word_{0};
  // The job fields are written before the generation in state_ changes
  // (release) and read by a worker after it has joined (acquire).
  std::atomic<std::uint64_t> state_{0};
  std::atomic<bool> stop_{false};
  const std::function<void(std::int64_t, std::int64_t)>* job_ = nullptr;
  std::int64_t job_n_ = 0;
  std::int64_t job_chunk_ = 1;  // min_chunk: every range but the last is a multiple of it
  int job_parts_ = 0;                     // threads that may take part (fewer for small n)
  std::atomic<std::int64_t> next_{0};     // start of the next unclaimed range
  // Callers' turns: a ticket each, served in order. A caller whose turn it
  // is goes ahead without the mutex; the others wait on turn_cv_.
  std::mutex turn_mu_;
  std::condition_variable turn_cv_;
  std::atomic<std::uint64_t> next_ticket_{0}, serving_{0};
};

}  // namespace airlock::engine
