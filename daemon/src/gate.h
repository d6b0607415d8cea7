// A bounded amount that requests take before their bodies are read and
// give back when they are done: places among the running document ingests
// (rag.max_concurrent_ingests, one each), or bytes of request bodies in
// memory (max_body_memory).
//
// An ingest holds its upload, its extracted text and its chunks in memory,
// runs a parser (a pdftotext child for PDF) and embeds every chunk on the
// compute threads; a request body is held whole, and parsed into a JSON
// tree of up to ~30 times its size. Without a bound, every client could do
// either at once. The server takes a slot before it reads a body and
// refuses the request (429, 503) when the amount is not free; the slot
// goes back when the Slot is destroyed, or in part when it shrinks.
//
// Thread-safety: try_enter(), used() and Slot's members may be called from
// any thread (one Slot from one thread at a time). A Slot keeps the gate's
// count alive, so it may outlive the Gate that gave it (a thread's leftover
// state at its exit).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <utility>

namespace airlock::daemon {

class Gate {
 public:
  // An amount taken from the gate, or none (empty: false).
  class Slot {
   public:
    Slot() = default;
    Slot(Slot&& o) noexcept : used_(std::move(o.used_)), amount_(std::exchange(o.amount_, 0)) {}
    Slot& operator=(Slot&& o) noexcept {
      if (this != &o) {
        release();
        used_ = std::move(o.used_);
        amount_ = std::exchange(o.amount_, 0);
      }
      return *this;
    }
    Slot(const Slot&) = delete;
    Slot& operator=(const Slot&) = delete;
    ~Slot() { release(); }

    explicit operator bool() const { return used_ != nullptr; }
    std::int64_t amount() const { return amount_; }
    // Gives all of it back now (idempotent).
    void release() {
      if (used_) used_->fetch_sub(amount_, std::memory_order_acq_rel);
      used_.reset();
      amount_ = 0;
    }
    // Gives back what it holds beyond `amount` (never takes more).
    void shrink_to(std::int64_t amount) {
      amount = std::max<std::int64_t>(amount, 0);
      if (!used_ || amount >= amount_) return;
      used_->fetch_sub(amount_ - amount, std::memory_order_acq_rel);
      amount_ = amount;
    }

   private:
    friend class Gate;
    Slot(std::shared_ptr<std::atomic<std::int64_t>> used, std::int64_t amount)
        : used_(std::move(used)), amount_(amount) {}
    std::shared_ptr<std::atomic<std::int64_t>> used_;
    std::int64_t amount_ = 0;
  };

  // At most `limit` (>= 1) taken at once.
  explicit Gate(std::int64_t limit) : limit_(std::max<std::int64_t>(limit, 1)) {}

  // A slot of `amount` (>= 0) when that much is free, else an empty one. An
  // amount over limit() is never free.
  Slot try_enter(std::int64_t amount = 1) {
    amount = std::max<std::int64_t>(amount, 0);
    std::int64_t n = used_->load(std::memory_order_acquire);
    while (amount <= limit_ - n)
      if (used_->compare_exchange_weak(n, n + amount, std::memory_order_acq_rel)) return Slot(used_, amount);
    return Slot();
  }

  std::int64_t used() const { return used_->load(std::memory_order_acquire); }
  std::int64_t limit() const { return limit_; }

 private:
  std::int64_t limit_;
  std::shared_ptr<std::atomic<std::int64_t>> used_ = std::make_shared<std::atomic<std::int64_t>>(0);
};

}  // namespace airlock::daemon
