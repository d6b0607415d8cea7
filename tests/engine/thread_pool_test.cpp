// ThreadPool: every index of [0, n) is handed out exactly once, in ranges
// that respect min_chunk and shrink towards the end of the job, across many
// back-to-back jobs (the spinning fast path) and after the workers have gone
// to sleep (the futex path).
#include "airlock/engine/thread_pool.h"

#include <dirent.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <new>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

namespace airlock::engine {
namespace {

// Runs one job and checks its coverage and range shapes.
void check_job(ThreadPool& pool, std::int64_t n, std::int64_t min_chunk) {
  std::vector<std::atomic<int>> hits(static_cast<std::size_t>(n));
  std::mutex mu;
  std::vector<std::pair<std::int64_t, std::int64_t>> ranges;
  pool.parallel_for(
      n,
      [&](std::int64_t b, std::int64_t e) {
        for (std::int64_t i = b; i < e; ++i) hits[static_cast<std::size_t>(i)].fetch_add(1);
        std::lock_guard<std::mutex> lock(mu);
        ranges.emplace_back(b, e);
      },
      min_chunk);
  for (std::int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[static_cast<std::size_t>(i)].load(), 1) << "n " << n << " i " << i;
  // Each range is a share of what was left when it was claimed: none is
  // longer than 1 / (2 * threads) of the job (rounded up to min_chunk), and
  // the one that ends the job, which the other threads may wait for, is at
  // most min_chunk long.
  const std::int64_t share = 2 * static_cast<std::int64_t>(pool.n_threads());
  const std::int64_t longest = ((n + share - 1) / share + min_chunk - 1) / min_chunk * min_chunk;
  for (auto [b, e] : ranges) {
    ASSERT_LT(b, e);
    ASSERT_EQ(b % min_chunk, 0) << "range start " << b << " not a multiple of " << min_chunk;
    if (e != n) {
      ASSERT_EQ((e - b) % min_chunk, 0);
    }
    if (ranges.size() > 1) {  // (one range: the job ran on the caller alone)
      ASSERT_LE(e - b, longest) << "n " << n << " range [" << b << ", " << e << ")";
      if (e == n) {
        ASSERT_LE(e - b, min_chunk) << "n " << n << " last range [" << b << ", " << e << ")";
      }
    }
  }
}

TEST(ThreadPoolTest, CoversEveryIndexOnceInAlignedRanges) {
  for (int threads : {1, 2, 3, 8}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.n_threads(), threads);
    for (std::int64_t n : {1, 2, 7, 16, 17, 100, 1000, 4099})
      for (std::int64_t min_chunk : {1, 4, 16}) check_job(pool, n, min_chunk);
  }
}

TEST(ThreadPoolTest, ManyBackToBackJobsAndJobsAfterSleep) {
  ThreadPool pool(4);
  std::atomic<std::int64_t> total{0};
  for (int job = 0; job < 5000; ++job)
    pool.parallel_for(64, [&](std::int64_t b, std::int64_t e) { total.fetch_add(e - b); });
  EXPECT_EQ(total.load(), 5000 * 64);
  // Idle longer than the spin window: workers sleep and must still wake.
  for (int job = 0; job < 3; ++job) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    check_job(pool, 333, 1);
  }
}

// The daemon's decoder and embedding encoder share one pool from two
// threads: every job of every caller still covers its range exactly once.
TEST(ThreadPoolTest, ConcurrentCallersEachGetWholeJobs) {
  ThreadPool pool(3);
  std::vector<std::thread> callers;
  std::atomic<int> failures{0};
  for (int c = 0; c < 4; ++c)
    callers.emplace_back([&, c] {
      for (int job = 0; job < 300; ++job) {
        const std::int64_t n = 50 + 37 * c + job % 11;
        std::vector<std::atomic<int>> hits(static_cast<std::size_t>(n));
        pool.parallel_for(n, [&](std::int64_t b, std::int64_t e) {
          for (std::int64_t i = b; i < e; ++i) hits[static_cast<std::size_t>(i)].fetch_add(1);
        });
        for (const auto& h : hits)
          if (h.load() != 1) failures.fetch_add(1);
        if (job % 100 == 99) std::this_thread::sleep_for(std::chrono::milliseconds(1));  // workers go to sleep too
      }
    });
  for (std::thread& t : callers) t.join();
  EXPECT_EQ(failures.load(), 0);
}

// Callers take turns: one calling without pause does not starve another.
TEST(ThreadPoolTest, ABusyCallerDoesNotStarveAnother) {
  ThreadPool pool(2);
  std::atomic<bool> other_done{false};
  std::atomic<bool> other_started{false};
  std::thread other([&] {
    other_started = true;
    for (int job = 0; job < 200; ++job) pool.parallel_for(64, [](std::int64_t, std::int64_t) {});
    other_done = true;
  });
  while (!other_started) std::this_thread::yield();
  int busy_jobs = 0;
  for (; busy_jobs < 1000000 && !other_done; ++busy_jobs) pool.parallel_for(64, [](std::int64_t, std::int64_t) {});
  other.join();
  EXPECT_LT(busy_jobs, 1000000) << "the other caller got no turns";
}

// A parallel_for inside a job runs on the calling thread, not through a turn
// it would wait for forever.
TEST(ThreadPoolTest, NestedCallsRunInline) {
  ThreadPool pool(2);
  std::atomic<std::int64_t> inner{0};
  pool.parallel_for(8, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t i = b; i < e; ++i) {
      const std::thread::id self = std::this_thread::get_id();
      pool.parallel_for(100, [&](std::int64_t ib, std::int64_t ie) {
        EXPECT_EQ(std::this_thread::get_id(), self);
        inner.fetch_add(ie - ib);
      });
    }
  });
  EXPECT_EQ(inner.load(), 800);
}

// A job that throws on the calling thread: the exception reaches the
// caller once the workers are done, and the pool serves the next callers.
TEST(ThreadPoolTest, AJobThrowingOnTheCallerLeavesThePoolUsable) {
  ThreadPool pool(2);
  const std::thread::id caller = std::this_thread::get_id();
  int thrown = 0;
  for (int attempt = 0; attempt < 50 && thrown == 0; ++attempt) {
    try {
      pool.parallel_for(1000, [&](std::int64_t, std::int64_t) {
        if (std::this_thread::get_id() == caller) throw std::runtime_error("job failed");
      });
    } catch (const std::runtime_error&) {
      ++thrown;
    }
  }
  ASSERT_EQ(thrown, 1) << "the caller never ran a range";
  std::thread other([&] { check_job(pool, 777, 1); });
  other.join();
  check_job(pool, 777, 4);
}

// A range that throws on a worker: the exception reaches the caller (out
// of the worker's thread it would end the process), the ranges left are
// skipped, and the pool serves the next jobs.
TEST(ThreadPoolTest, AJobThrowingOnAWorkerReachesTheCaller) {
  ThreadPool pool(3);
  const std::thread::id caller = std::this_thread::get_id();
  int thrown = 0;
  for (int attempt = 0; attempt < 50 && thrown == 0; ++attempt) {
    std::atomic<int> ran{0};
    try {
      pool.parallel_for(1000, [&](std::int64_t, std::int64_t) {
        ++ran;
        if (std::this_thread::get_id() != caller) throw std::bad_alloc();
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      });
    } catch (const std::bad_alloc&) {
      ++thrown;
      EXPECT_LT(ran.load(), 1000);  // not every range ran after the failure
    }
  }
  ASSERT_EQ(thrown, 1) << "no worker ever ran a range";
  check_job(pool, 777, 1);
  std::thread other([&] { check_job(pool, 777, 4); });
  other.join();
}

// The ids of this process's threads named as the pool names its workers.
std::set<pid_t> pool_threads() {
  std::set<pid_t> out;
  DIR* d = opendir("/proc/self/task");
  if (d == nullptr) return out;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    char path[300], name[32] = {};
    std::snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
    if (FILE* f = std::fopen(path, "r")) {
      if (std::fgets(name, sizeof name, f) != nullptr && std::strncmp(name, "airlock-pool", 12) == 0)
        out.insert(static_cast<pid_t>(std::atoi(e->d_name)));
      std::fclose(f);
    }
  }
  closedir(d);
  return out;
}

std::atomic<bool> g_held{false}, g_release{false};
// A signal handler that keeps its thread from running pool code until
// released, as a thread descheduled from a busy core would be.
extern "C" void hold_thread(int) {
  g_held.store(true);
  while (!g_release.load()) {
    timespec pause{0, 100000};
    nanosleep(&pause, nullptr);
  }
}

// A worker that is not running when jobs come (descheduled on a shared
// core, or still waking) does not hold them up: the caller takes its ranges.
// Once it runs again it takes part as before.
TEST(ThreadPoolTest, JobsDoNotWaitForAWorkerThatIsNotRunning) {
  const std::set<pid_t> before = pool_threads();
  ThreadPool pool(2);
  const std::thread::id caller = std::this_thread::get_id();
  // Jobs until the worker has run a range (it has started and named itself).
  auto worker_takes_part = [&] {
    std::atomic<bool> ran{false};
    for (int attempt = 0; attempt < 2000 && !ran.load(); ++attempt)
      pool.parallel_for(64, [&](std::int64_t, std::int64_t) {
        if (std::this_thread::get_id() != caller) ran = true;
        std::this_thread::sleep_for(std::chrono::microseconds(50));
      });
    return ran.load();
  };
  ASSERT_TRUE(worker_takes_part()) << "the worker never ran a range";
  pid_t worker = 0;
  for (pid_t t : pool_threads())
    if (before.count(t) == 0) worker = t;
  ASSERT_NE(worker, 0) << "the pool's worker thread was not found in /proc/self/task";

  struct sigaction hold {}, old{};
  hold.sa_handler = hold_thread;
  sigemptyset(&hold.sa_mask);
  g_held = false;
  g_release = false;
  ASSERT_EQ(sigaction(SIGUSR1, &hold, &old), 0);
  // However the test ends, the worker is let go (the pool's destructor
  // joins it), and the old handler comes back once the signal has been
  // taken (one still pending keeps the handler, which now returns at once).
  struct LetGo {
    struct sigaction* old;
    ~LetGo() {
      g_release = true;
      if (g_held.load()) sigaction(SIGUSR1, old, nullptr);
    }
  } let_go{&old};
  ASSERT_EQ(syscall(SYS_tgkill, getpid(), worker, SIGUSR1), 0);
  for (int i = 0; i < 5000 && !g_held.load(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  ASSERT_TRUE(g_held.load()) << "the worker did not take the signal";

  // A watchdog lets the worker go after 10 s, which only a pool that waits
  // for it would need.
  std::atomic<bool> done{false}, released_by_watchdog{false};
  std::thread watchdog([&] {
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!done.load() && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (!done.load()) {
      released_by_watchdog = true;
      g_release = true;
    }
  });
  for (int i = 0; i < 200; ++i) check_job(pool, 777, 1);
  done = true;
  watchdog.join();
  EXPECT_FALSE(released_by_watchdog.load()) << "the jobs waited for a worker that was not running";

  g_release = true;
  EXPECT_TRUE(worker_takes_part()) << "the worker took no range once it ran again";
}

TEST(ThreadPoolTest, EmptyAndNegativeRangesRunNothing) {
  ThreadPool pool(2);
  int calls = 0;
  pool.parallel_for(0, [&](std::int64_t, std::int64_t) { ++calls; });
  pool.parallel_for(-5, [&](std::int64_t, std::int64_t) { ++calls; });
  EXPECT_EQ(calls, 0);
}

}  // namespace
}  // namespace airlock::engine
