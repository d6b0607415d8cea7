#include "elastic_pool.h"

#include <algorithm>
#include <iterator>
#include <system_error>

namespace airlock::daemon {

ElasticPool::ElasticPool(std::size_t kept_threads, std::size_t max_threads, std::chrono::milliseconds idle,
                         std::function<void()> on_start)
    : kept_(std::max<std::size_t>(kept_threads, 1)),
      max_(std::max(max_threads, kept_)),
      idle_(idle),
      on_start_(std::move(on_start)) {
  std::lock_guard<std::mutex> lock(mu_);
  for (std::size_t i = 0; i < kept_; ++i) start_thread();
}

ElasticPool::~ElasticPool() { shutdown(); }

void ElasticPool::start_thread() {
  threads_.emplace_back();
  const Threads::iterator self = std::prev(threads_.end());
  try {
    // It begins by taking mu_, which the caller holds: n_live_ counts it
    // before it can look at anything.
    *self = std::thread([this, self] { work(self); });
  } catch (const std::system_error&) {
    threads_.erase(self);  // the job waits for a thread that exists
    return;
  }
  ++n_live_;
  ++n_starting_;
}

void ElasticPool::work(Threads::iterator self) {
  if (on_start_) on_start_();
  std::unique_lock<std::mutex> lock(mu_);
  --n_starting_;
  for (;;) {
    if (jobs_.empty()) {
      if (stopping_) break;
      ++n_idle_;
      const bool woken = wake_.wait_for(lock, idle_, [&] { return !jobs_.empty() || stopping_; });
      --n_idle_;
      if (!woken && n_live_ > kept_) break;  // a thread beyond the kept ones, idle for `idle_`
      continue;
    }
    std::function<void()> job = std::move(jobs_.front());
    jobs_.pop_front();
    lock.unlock();
    job();
    job = nullptr;  // what it captured is released outside the lock too
    lock.lock();
  }
  --n_live_;
  ended_.push_back(self);
}

std::size_t ElasticPool::enqueue(std::function<void()> job) {
  std::vector<std::thread> ended;
  std::size_t waiting = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    jobs_.push_back(std::move(job));
    // Each idle thread takes one job, and so does each thread started but
    // not yet looking for one; a job beyond them gets a new thread.
    if (n_idle_ + n_starting_ < jobs_.size() && n_live_ < max_) start_thread();
    waiting = this->waiting();
    for (const Threads::iterator t : ended_) {
      ended.push_back(std::move(*t));
      threads_.erase(t);
    }
    ended_.clear();
  }
  wake_.notify_one();
  for (std::thread& t : ended) t.join();  // they have left work(): at once
  return waiting;
}

void ElasticPool::shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shut_down_) return;
    shut_down_ = true;
    stopping_ = true;
  }
  wake_.notify_all();
  // Only enqueue() adds or removes threads, and none follows shutdown().
  for (std::thread& t : threads_) t.join();
  std::lock_guard<std::mutex> lock(mu_);
  threads_.clear();
  ended_.clear();
}

std::size_t ElasticPool::n_threads() const {
  std::lock_guard<std::mutex> lock(mu_);
  return n_live_;
}

std::size_t ElasticPool::n_waiting() const {
  std::lock_guard<std::mutex> lock(mu_);
  return waiting();
}

std::size_t ElasticPool::waiting() const {
  return n_idle_ + n_starting_ < jobs_.size() ? jobs_.size() - (n_idle_ + n_starting_) : 0;
}

}  // namespace airlock::daemon
