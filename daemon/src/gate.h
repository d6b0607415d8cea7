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
// goes back when the Slot is destroyed. A slot may grow (a body, once read,
// takes room for its parse).
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
  struct State {
    explicit State(std::int64_t l) : limit(l) {}
    const std::int64_t limit;
    std::atomic<std::int64_t> used{0};
    // Adds `more` to used when it stays within the limit.
    bool try_add(std::int64_t more) {
      std::int64_t n = used.load(std::memory_order_acquire);
      while (more <= limit - n)
        if (used.compare_exchange_weak(n, n + more, std::memory_order_acq_rel)) return true;
      return false;
    }
  };

 public:
  // An amount taken from the gate, or none (empty: false).
  class Slot {
   public:
    Slot() = default;
    Slot(Slot&& o) noexcept : state_(std::move(o.state_)), amount_(std::exchange(o.amount_, 0)) {}
    Slot& operator=(Slot&& o) noexcept {
      if (this != &o) {
        release();
        state_ = std::move(o.state_);
        amount_ = std::exchange(o.amount_, 0);
      }
      return *this;
    }
    Slot(const Slot&) = delete;
    Slot& operator=(const Slot&) = delete;
    ~Slot() { release(); }

    explicit operator bool() const { return state_ != nullptr; }
    std::int64_t amount() const { return amount_; }
    // Gives all of it back now (idempotent).
    void release() {
      if (state_) state_->used.fetch_sub(amount_, std::memory_order_acq_rel);
      state_.reset();
      amount_ = 0;
    }
    // Takes more, up to `amount` in all, when that much is free; false
    // (and nothing changed) when it is not, or the slot is empty. Never
    // gives any back.
    bool try_grow_to(std::int64_t amount) {
      if (!state_) return false;
      if (amount <= amount_) return true;
      if (!state_->try_add(amount - amount_)) return false;
      amount_ = amount;
      return true;
    }

   private:
    friend class Gate;
    Slot(std::shared_ptr<State> state, std::int64_t amount) : state_(std::move(state)), amount_(amount) {}
    std::shared_ptr<State> state_;
    std::int64_t amount_ = 0;
  };

  // At most `limit` (>= 1) taken at once.
  explicit Gate(std::int64_t limit) : state_(std::make_shared<State>(std::max<std::int64_t>(limit, 1))) {}

  // A slot of `amount` (>= 0) when that much is free, else an empty one. An
  // amount over limit() is never free.
  Slot try_enter(std::int64_t amount = 1) {
    amount = std::max<std::int64_t>(amount, 0);
    return state_->try_add(amount) ? Slot(state_, amount) : Slot();
  }

  std::int64_t used() const { return state_->used.load(std::memory_order_acquire); }
  std::int64_t limit() const { return state_->limit; }

 private:
  std::shared_ptr<State> state_;
};

}  // namespace airlock::daemon
