#include "airlock/engine/thread_pool.h"

#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <utility>

namespace airlock::engine {
namespace {
int available_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
  return std::max(1u, std::thread::hardware_concurrency());
}

// Set while this thread runs a part of a job: a parallel_for() from inside
// it runs inline (waiting for a turn there would wait for itself).
thread_local bool t_in_job = false;

struct InJob {
  InJob() { t_in_job = true; }
  ~InJob() { t_in_job = false; }
};

// A sleeping worker waits on a 32-bit word through the kernel's futex
// directly: a condition variable would have the caller take a mutex that a
// worker descheduled on its way to sleep may hold.
static_assert(sizeof(std::atomic<std::uint32_t>) == 4 && std::atomic<std::uint32_t>::is_always_lock_free,
              "the futex word must be a plain 32-bit integer");
void futex_wait(std::atomic<std::uint32_t>* word, std::uint32_t expected) {
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
}
void futex_wake_all(std::atomic<std::uint32_t>* word) {
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAKE_PRIVATE, INT32_MAX, nullptr, nullptr, 0);
}

// Spins (with the CPU's pause hint) until done() or kSpinMicros have passed.
template <typename Done>
bool spin_for(Done done, int micros) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::microseconds(micros);
  for (int i = 0;; ++i) {
    if (done()) return true;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
    if ((i & 63) == 63 && std::chrono::steady_clock::now() >= deadline) return done();
  }
}
}  // namespace

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads > 0 ? n_threads : available_cores()) {
  for (int i = 1; i < n_threads_; ++i)
    workers_.emplace_back([this, i] {
      pthread_setname_np(pthread_self(), "airlock-pool");
      worker(i);
    });
}

ThreadPool::~ThreadPool() {
  stop_.store(true, std::memory_order_seq_cst);
  wake_workers();
  for (std::thread& t : workers_) t.join();
}

// After a change a worker waits for (a job, stop_), stored seq_cst. A worker
// going to sleep counts itself in sleepers_ and then looks for the change
// again (both seq_cst): either it sees the change, or this sees it counted
// and bumps the word it sleeps on, which fails or ends its wait.
void ThreadPool::wake_workers() {
  if (sleepers_.load(std::memory_order_seq_cst) == 0) return;
  wake_word_.fetch_add(1, std::memory_order_seq_cst);
  futex_wake_all(&wake_word_);
}

void ThreadPool::parallel_for(std::int64_t n, const std::function<void(std::int64_t, std::int64_t)>& fn,
                              std::int64_t min_chunk) {
  if (n <= 0) return;
  std::int64_t parts = std::min<std::int64_t>(n_threads_, (n + min_chunk - 1) / std::max<std::int64_t>(1, min_chunk));
  if (parts <= 1 || t_in_job) {
    fn(0, n);
    return;
  }
  // Wait for this caller's turn (at once when it is the only one).
  const std::uint64_t ticket = next_ticket_.fetch_add(1, std::memory_order_seq_cst);
  if (serving_.load(std::memory_order_seq_cst) != ticket) {  // (seq_cst: against the store and load at the end)
    std::unique_lock<std::mutex> turn(turn_mu_);
    turn_cv_.wait(turn, [&] { return serving_.load(std::memory_order_acquire) == ticket; });
  }
  const std::int64_t step = std::max<std::int64_t>(1, min_chunk);
  // No worker reads these now: the last job was closed and left empty.
  job_ = &fn;
  job_n_ = n;
  job_chunk_ = step;
  next_.store(0, std::memory_order_relaxed);
  job_parts_ = static_cast<int>(parts);
  // A new generation, open, nobody in it yet (seq_cst: see wake_workers).
  const std::uint64_t gen = generation_of(state_.load(std::memory_order_relaxed)) + 1;
  state_.store(gen << kGenShift, std::memory_order_seq_cst);
  wake_workers();
  // Ends the job even when fn throws here: the workers stop claiming
  // ranges, and the next caller gets its turn. A worker's exception is
  // rethrown here, after that.
  std::exception_ptr failed;
  {
    struct JobEnd {
      ThreadPool* pool;
      std::uint64_t ticket;
      std::exception_ptr* failed;
      ~JobEnd() { *failed = pool->finish_job(ticket); }
    } end{this, ticket, &failed};
    InJob in_job;
    try {
      run_chunks();  // the caller works too
    } catch (...) {
      next_.store(job_n_, std::memory_order_relaxed);  // the ranges left are skipped
      throw;
    }
  }
  if (failed) std::rethrow_exception(failed);
}

void ThreadPool::fail_job(std::exception_ptr e) {
  next_.store(job_n_, std::memory_order_relaxed);
  std::lock_guard<std::mutex> lock(mu_);
  if (!job_error_) job_error_ = std::move(e);
  job_failed_.store(true, std::memory_order_release);
}

std::exception_ptr ThreadPool::finish_job(std::uint64_t ticket) {
  // Every range is claimed (or skipped): no worker needs to join any more.
  // Those that have are waited for, to finish their ranges.
  // Asleep, the caller says so first and then looks again (both seq_cst):
  // either it sees the last worker gone, or that worker sees it asleep and
  // wakes it. A worker takes mu_ only then, so one descheduled while
  // holding it cannot hold up a caller that is still spinning.
  auto empty = [this] { return (state_.load(std::memory_order_seq_cst) & kJoinedMask) == 0; };
  if ((state_.fetch_or(kClosed, std::memory_order_acq_rel) & kJoinedMask) != 0 && !spin_for(empty, kSpinMicros)) {
    std::unique_lock<std::mutex> lock(mu_);
    caller_asleep_.store(true, std::memory_order_seq_cst);
    done_cv_.wait(lock, empty);
    caller_asleep_.store(false, std::memory_order_relaxed);
  }
  job_ = nullptr;
  // (The flag spares every job a lock: jobs run a few hundred times a token.)
  std::exception_ptr failed;
  if (job_failed_.load(std::memory_order_acquire)) {
    std::lock_guard<std::mutex> lock(mu_);
    failed = std::exchange(job_error_, nullptr);
    job_failed_.store(false, std::memory_order_relaxed);
  }
  // The next turn. A caller that took its ticket before this store and
  // found it not yet served is waiting, or about to wait, holding turn_mu_:
  // taking the mutex here orders the wake-up after its wait began.
  serving_.store(ticket + 1, std::memory_order_seq_cst);
  if (next_ticket_.load(std::memory_order_seq_cst) > ticket + 1) {
    { std::lock_guard<std::mutex> turn(turn_mu_); }
    turn_cv_.notify_all();
  }
  return failed;
}

// Ranges are claimed from a shared counter, each a share of what is left
// (1 / (2 * threads), rounded up to a multiple of min_chunk): long ranges
// first, then shorter ones, so that the threads finish together even when
// one of them is descheduled or slower (a shared VM, a busy core), and the
// last range, which the others may wait for, is short.
void ThreadPool::run_chunks() {
  const std::int64_t n = job_n_, step = job_chunk_, share = 2 * static_cast<std::int64_t>(n_threads_);
  std::int64_t b = next_.load(std::memory_order_relaxed);
  while (b < n) {
    const std::int64_t e = std::min(n, b + std::max<std::int64_t>(1, ((n - b) / share + step - 1) / step) * step);
    if (next_.compare_exchange_weak(b, e, std::memory_order_relaxed)) {
      (*job_)(b, e);
      b = next_.load(std::memory_order_relaxed);
    }
  }
}

void ThreadPool::worker(int index) {
  std::uint64_t seen = 0;  // the last generation this worker looked at
  while (true) {
    auto changed = [&] {
      return stop_.load(std::memory_order_seq_cst) || generation_of(state_.load(std::memory_order_seq_cst)) != seen;
    };
    if (!spin_for(changed, kSpinMicros)) {
      sleepers_.fetch_add(1, std::memory_order_seq_cst);
      for (;;) {
        const std::uint32_t word = wake_word_.load(std::memory_order_seq_cst);
        if (changed()) break;
        futex_wait(&wake_word_, word);  // returns at once if the word has moved on
      }
      sleepers_.fetch_sub(1, std::memory_order_relaxed);
    }
    if (stop_.load(std::memory_order_acquire)) return;
    // Joins the job it saw while that is open; a job closed (every range
    // taken) or already followed by another is passed over.
    std::uint64_t s = state_.load(std::memory_order_acquire);
    seen = generation_of(s);
    bool joined = false;
    while (!joined && (s & kClosed) == 0 && generation_of(s) == seen)
      joined = state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel, std::memory_order_acquire);
    if (!joined) continue;
    if (index < job_parts_) {
      InJob in_job;
      // Thrown out of a worker it would end the process (std::terminate):
      // the caller gets it instead.
      try {
        run_chunks();
      } catch (...) {
        fail_job(std::current_exception());
      }
    }
    // The last to leave a closed job wakes the caller, if it sleeps.
    if (state_.fetch_sub(1, std::memory_order_seq_cst) == (seen << kGenShift | kClosed | 1) &&
        caller_asleep_.load(std::memory_order_seq_cst)) {
      std::lock_guard<std::mutex> lock(mu_);  // the caller may be between its check and its wait
      done_cv_.notify_one();
    }
  }
}

}  // namespace airlock::engine
