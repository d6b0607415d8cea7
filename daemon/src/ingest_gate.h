// The bound on documents ingested at once (rag.max_concurrent_ingests).
//
// An ingest holds its upload, its extracted text and its chunks in memory,
// runs a parser (a pdftotext child for PDF) and embeds every chunk on the
// compute threads; without a bound, every client could do that at once.
// The server takes a slot before it reads an upload's body and answers 429
// when none is free; the slot goes back when the Slot is destroyed.
//
// Thread-safety: try_enter(), running() and Slot's members may be called
// from any thread. A Slot keeps the gate's count alive, so it may outlive
// the IngestGate that gave it (a thread's leftover state at its exit).
#pragma once

#include <atomic>
#include <memory>
#include <utility>

namespace airlock::daemon {

class IngestGate {
 public:
  // A place among the running ingests, or none (empty: false).
  class Slot {
   public:
    Slot() = default;
    Slot(Slot&& o) noexcept : running_(std::move(o.running_)) {}
    Slot& operator=(Slot&& o) noexcept {
      if (this != &o) {
        release();
        running_ = std::move(o.running_);
      }
      return *this;
    }
    Slot(const Slot&) = delete;
    Slot& operator=(const Slot&) = delete;
    ~Slot() { release(); }

    explicit operator bool() const { return running_ != nullptr; }
    // Gives the place back now (idempotent).
    void release() {
      if (running_) running_->fetch_sub(1, std::memory_order_acq_rel);
      running_.reset();
    }

   private:
    friend class IngestGate;
    explicit Slot(std::shared_ptr<std::atomic<int>> running) : running_(std::move(running)) {}
    std::shared_ptr<std::atomic<int>> running_;
  };

  // `limit` >= 1 ingests at once.
  explicit IngestGate(int limit) : limit_(limit < 1 ? 1 : limit) {}

  // A slot when fewer than limit() are taken, else an empty one.
  Slot try_enter() {
    int n = running_->load(std::memory_order_acquire);
    while (n < limit_)
      if (running_->compare_exchange_weak(n, n + 1, std::memory_order_acq_rel)) return Slot(running_);
    return Slot();
  }

  int running() const { return running_->load(std::memory_order_acquire); }
  int limit() const { return limit_; }

 private:
  int limit_;
  std::shared_ptr<std::atomic<int>> running_ = std::make_shared<std::atomic<int>>(0);
};

}  // namespace airlock::daemon
