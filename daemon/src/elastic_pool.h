// The threads that serve airlockd's HTTP connections.
//
// cpp-httplib 0.11 serves each connection on one thread from accept to
// close, and a connection holds its thread while it waits for a request:
// up to the keep-alive timeout (30 s) for the first one and between two.
// With a fixed pool, a few hundred connections that send nothing (no key
// needed) held every thread, and every other client's connection waited in
// the queue behind them, /health included. An ElasticPool starts another
// thread when a job arrives and no thread is idle, so a connection is
// served at once while the pool is under its hard cap; only at the cap do
// jobs wait, in order, for a thread to finish one.
//
// Threads beyond `kept_threads` end after `idle` without a job. Starting a
// thread can fail (the task limit of the service): the job then waits for
// a thread as it would at the cap.
//
// Thread-safety: enqueue() may be called from any thread, also from a job.
// shutdown() is called once, from a thread that is not one of the pool's,
// and no enqueue() may follow it. The destructor calls shutdown().
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <list>
#include <mutex>
#include <thread>
#include <vector>

namespace airlock::daemon {

class ElasticPool {
 public:
  // Starts `kept_threads` threads (at least 1); grows to `max_threads` (at
  // least kept_threads). Each thread runs `on_start` (if set) once, first.
  ElasticPool(std::size_t kept_threads, std::size_t max_threads, std::chrono::milliseconds idle,
              std::function<void()> on_start = nullptr);
  ~ElasticPool();
  ElasticPool(const ElasticPool&) = delete;
  ElasticPool& operator=(const ElasticPool&) = delete;

  // Runs `job` on an idle thread, on a new one when none is idle and the
  // cap allows, or else on the first thread to finish its job. Returns how
  // many jobs now wait behind busy threads, this one included (0 when it
  // is taken at once).
  std::size_t enqueue(std::function<void()> job);

  // Runs the jobs already queued, then waits for every thread to end.
  void shutdown();

  // Threads alive (busy or idle), and jobs waiting behind busy threads
  // (as enqueue() counts them).
  std::size_t n_threads() const;
  std::size_t n_waiting() const;

 private:
  using Threads = std::list<std::thread>;
  void start_thread();           // with mu_ held
  std::size_t waiting() const;  // with mu_ held
  void work(Threads::iterator self);

  const std::size_t kept_, max_;
  const std::chrono::milliseconds idle_;
  const std::function<void()> on_start_;
  mutable std::mutex mu_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> jobs_;
  Threads threads_;                   // every thread started and not yet joined
  std::vector<Threads::iterator> ended_;  // threads that have left work(): joined by enqueue() or shutdown()
  std::size_t n_live_ = 0;            // threads in work()
  std::size_t n_idle_ = 0;            // of them, waiting for a job
  std::size_t n_starting_ = 0;        // threads started that have not yet entered work()'s loop
  bool stopping_ = false;
  bool shut_down_ = false;
};

}  // namespace airlock::daemon
