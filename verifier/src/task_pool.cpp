#include "task_pool.h"

#include <sched.h>

namespace airlock::verifier {

unsigned available_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return static_cast<unsigned>(n);
  }
  unsigned hw = std::thread::hardware_concurrency();
  return hw > 0 ? hw : 1;
}

TaskPool::TaskPool(unsigned n_threads) {
  if (n_threads == 0) n_threads = available_cores();
  max_queued_ = 2 * static_cast<std::size_t>(n_threads);
  workers_.reserve(n_threads);
  for (unsigned i = 0; i < n_threads; ++i) workers_.emplace_back([this] { run(); });
}

TaskPool::~TaskPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  has_work_.notify_all();
  for (std::thread& t : workers_) t.join();
}

void TaskPool::submit(std::function<void()> task) {
  std::unique_lock<std::mutex> lock(mu_);
  has_room_or_idle_.wait(lock, [this] { return queue_.size() < max_queued_; });
  queue_.push_back(std::move(task));
  lock.unlock();
  has_work_.notify_one();
}

Status TaskPool::wait() {
  std::unique_lock<std::mutex> lock(mu_);
  has_room_or_idle_.wait(lock, [this] { return queue_.empty() && n_running_ == 0; });
  if (!first_exception_.empty()) return internal_error("worker task failed: " + first_exception_);
  return Status::ok();
}

void TaskPool::run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    has_work_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping and drained
    std::function<void()> task = std::move(queue_.front());
    queue_.pop_front();
    ++n_running_;
    lock.unlock();
    has_room_or_idle_.notify_all();
    std::string failure;
    try {
      task();
    } catch (const std::exception& e) {
      failure = e.what()[0] != '\0' ? e.what() : "exception";
    } catch (...) {
      failure = "unknown exception";
    }
    lock.lock();
    if (!failure.empty() && first_exception_.empty()) first_exception_ = failure;
    --n_running_;
    if (queue_.empty() && n_running_ == 0) has_room_or_idle_.notify_all();
  }
}

}  // namespace airlock::verifier
