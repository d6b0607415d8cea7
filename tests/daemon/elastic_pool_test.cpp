// The pool behind airlockd's HTTP connections: a job never waits behind
// busy threads while the pool is under its cap; at the cap jobs wait in
// order; spare threads end when idle; shutdown runs what was queued.
#include "elastic_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace airlock::daemon {
namespace {

using namespace std::chrono_literals;

// Jobs block on it until open() (a connection waiting for its request).
class Gate {
 public:
  void wait() {
    std::unique_lock<std::mutex> lock(mu_);
    ++waiting_;
    changed_.notify_all();
    changed_.wait(lock, [&] { return open_; });
  }
  void open() {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = true;
    changed_.notify_all();
  }
  // True once `n` jobs are blocked here at the same time (within 5 s).
  bool reached(int n) {
    std::unique_lock<std::mutex> lock(mu_);
    return changed_.wait_for(lock, 5s, [&] { return waiting_ >= n; });
  }

 private:
  std::mutex mu_;
  std::condition_variable changed_;
  int waiting_ = 0;
  bool open_ = false;
};

// Polls `done` for up to 5 s.
template <class F>
bool eventually(F done) {
  for (int i = 0; i < 500; ++i) {
    if (done()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return done();
}

TEST(ElasticPool, EveryJobRunsAtOnceUnderTheCap) {
  ElasticPool pool(2, 16, 10s);
  EXPECT_EQ(pool.n_threads(), 2u);
  Gate gate;
  for (int i = 0; i < 10; ++i) EXPECT_EQ(pool.enqueue([&] { gate.wait(); }), 0u);  // none said to wait
  EXPECT_TRUE(gate.reached(10));  // ten blocked at once: none waited behind another
  EXPECT_EQ(pool.n_threads(), 10u);
  EXPECT_EQ(pool.n_waiting(), 0u);
  gate.open();
  pool.shutdown();
  EXPECT_EQ(pool.n_threads(), 0u);
}

TEST(ElasticPool, AtTheCapJobsWait) {
  ElasticPool pool(1, 3, 10s);
  Gate gate;
  for (int i = 0; i < 3; ++i) pool.enqueue([&] { gate.wait(); });
  ASSERT_TRUE(gate.reached(3));
  std::atomic<int> ran{0};
  for (int i = 0; i < 4; ++i) EXPECT_EQ(pool.enqueue([&] { ++ran; }), static_cast<std::size_t>(i) + 1);  // each said to wait, behind the others
  EXPECT_EQ(pool.n_threads(), 3u);  // the cap
  EXPECT_EQ(pool.n_waiting(), 4u);
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(ran.load(), 0);
  gate.open();
  pool.shutdown();
  EXPECT_EQ(ran.load(), 4);
}

TEST(ElasticPool, WaitingJobsRunInOrder) {
  ElasticPool pool(1, 1, 10s);
  Gate gate;
  pool.enqueue([&] { gate.wait(); });
  ASSERT_TRUE(gate.reached(1));
  std::vector<int> order;  // one thread: no lock needed
  for (int i = 0; i < 5; ++i) pool.enqueue([&, i] { order.push_back(i); });
  gate.open();
  pool.shutdown();
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3, 4}));
}

TEST(ElasticPool, SpareThreadsEndWhenIdleAndTheKeptOnesStay) {
  ElasticPool pool(2, 8, 50ms);
  Gate gate;
  for (int i = 0; i < 6; ++i) pool.enqueue([&] { gate.wait(); });
  ASSERT_TRUE(gate.reached(6));
  EXPECT_EQ(pool.n_threads(), 6u);
  gate.open();
  EXPECT_TRUE(eventually([&] { return pool.n_threads() == 2; })) << pool.n_threads();
  std::this_thread::sleep_for(200ms);  // several idle periods: the kept two stay
  EXPECT_EQ(pool.n_threads(), 2u);
  std::atomic<bool> ran{false};
  pool.enqueue([&] { ran = true; });  // and the ended ones are joined here
  EXPECT_TRUE(eventually([&] { return ran.load(); }));
}

TEST(ElasticPool, ShutdownRunsTheQueuedJobsFirst) {
  ElasticPool pool(1, 1, 10s);
  Gate gate;
  std::atomic<int> ran{0};
  pool.enqueue([&] {
    gate.wait();
    ++ran;
  });
  ASSERT_TRUE(gate.reached(1));
  for (int i = 0; i < 5; ++i) pool.enqueue([&] { ++ran; });
  EXPECT_EQ(pool.n_waiting(), 5u);
  std::thread opener([&] {
    std::this_thread::sleep_for(100ms);
    gate.open();
  });
  pool.shutdown();  // waits for the blocked job, then runs the five
  opener.join();
  EXPECT_EQ(ran.load(), 6);
}

TEST(ElasticPool, ManyProducers) {
  std::atomic<int> ran{0};
  {
    ElasticPool pool(2, 8, 1ms);  // threads come and go all the time
    std::vector<std::thread> producers;
    for (int p = 0; p < 8; ++p)
      producers.emplace_back([&] {
        for (int i = 0; i < 2000; ++i) pool.enqueue([&] { ++ran; });
      });
    for (std::thread& t : producers) t.join();
  }  // the destructor shuts down: every job has run
  EXPECT_EQ(ran.load(), 16000);
}

// Every thread runs the start hook once, before its first job: the kept
// ones and those started for a burst beyond them (airlockd names its
// connection threads and sets their scheduling policy there).
TEST(ElasticPool, EachThreadRunsTheStartHookOnceBeforeItsJobs) {
  std::atomic<int> starts{0};
  static thread_local bool started = false;
  ElasticPool pool(2, 16, 10s, [&] {
    EXPECT_FALSE(started) << "the hook ran twice on one thread";
    started = true;
    ++starts;
  });
  EXPECT_TRUE(eventually([&] { return starts == 2; }));
  Gate gate;
  std::atomic<int> jobs_after_hook{0};
  for (int i = 0; i < 6; ++i)
    pool.enqueue([&] {
      if (started) ++jobs_after_hook;
      gate.wait();
    });
  ASSERT_TRUE(gate.reached(6));
  EXPECT_EQ(jobs_after_hook, 6);
  EXPECT_EQ(starts, static_cast<int>(pool.n_threads()));
  gate.open();
  pool.shutdown();
  EXPECT_EQ(starts, 6);
}

}  // namespace
}  // namespace airlock::daemon
