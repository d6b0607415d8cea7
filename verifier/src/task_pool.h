// A fixed set of worker threads draining a bounded FIFO of tasks. Internal to
// the verifier: chunk hashing for create, verify and import.
//
// submit() blocks while `max_queued` tasks wait, so a fast producer (the tar
// reader) cannot run ahead of the hashers and pile up memory. wait() returns
// when every submitted task has finished. Tasks report failures through
// their own state; an exception escaping one (std::bad_alloc) is caught on
// the worker and returned by wait() as kInternal, never std::terminate.
//
// Thread-safety: submit() and wait() are called from one producer thread.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "airlock/common/status.h"

namespace airlock::verifier {

class TaskPool {
 public:
  // n_threads 0 means one per core the process may run on.
  explicit TaskPool(unsigned n_threads);
  ~TaskPool();
  TaskPool(const TaskPool&) = delete;
  TaskPool& operator=(const TaskPool&) = delete;

  void submit(std::function<void()> task);
  [[nodiscard]] Status wait();
  unsigned n_threads() const { return static_cast<unsigned>(workers_.size()); }

 private:
  void run();

  std::mutex mu_;
  std::condition_variable has_work_;
  std::condition_variable has_room_or_idle_;
  std::deque<std::function<void()>> queue_;
  std::size_t max_queued_;
  std::size_t n_running_ = 0;
  std::string first_exception_;  // guarded by mu_
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

// Cores this process may use (sched_getaffinity), at least 1.
unsigned available_cores();

// Hashing threads for an import (`requested`, 0 for every core): each holds
// a copy of one chunk, so they are held to 1 GiB of copies in all (one
// thread for 1 GiB chunks; a 64-core host would otherwise need 64 GiB).
unsigned extract_threads(unsigned requested, std::uint64_t chunk_size);

}  // namespace airlock::verifier
