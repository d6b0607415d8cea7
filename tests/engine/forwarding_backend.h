// A Backend that passes every operation to another one: tests override the
// few they watch or break (allocations that fail, counted allocations).
#pragma once

#include <memory>
#include <string>
#include <utility>

#include "airlock/engine/backend.h"

namespace airlock::testing {

class ForwardingBackend : public engine::Backend {
 public:
  explicit ForwardingBackend(std::unique_ptr<engine::Backend> inner) : be_(std::move(inner)) {}
  std::string name() const override { return "forwarding to " + be_->name(); }
  bool uses_host_cores() const override { return be_->uses_host_cores(); }
  Result<engine::WeightTensor> upload(const engine::GgufTensor& t) override { return be_->upload(t); }
  Result<std::shared_ptr<float>> alloc(std::int64_t n) override { return be_->alloc(n); }
  Result<engine::KvStorage> alloc_kv(int l, std::int64_t s, std::int64_t d, engine::KvType t) override { return be_->alloc_kv(l, s, d, t); }
  void matmul(const engine::WeightTensor& w, const float* x, std::int64_t n, float* y) override { be_->matmul(w, x, n, y); }
  void matmul_many(const engine::WeightTensor* const* w, float* const* y, int count, const float* x,
                   std::int64_t n) override {
    be_->matmul_many(w, y, count, x, n);
  }
  void get_rows(const engine::WeightTensor& t, const std::int32_t* ids, std::int64_t n, float* out) override {
    be_->get_rows(t, ids, n, out);
  }
  void rms_norm(const float* x, const engine::WeightTensor& w, std::int64_t r, std::int64_t d, float e, float* y) override {
    be_->rms_norm(x, w, r, d, e, y);
  }
  void layer_norm(const float* x, const engine::WeightTensor& w, const engine::WeightTensor& b, std::int64_t r, std::int64_t d, float e,
                  float* y) override {
    be_->layer_norm(x, w, b, r, d, e, y);
  }
  void add_bias(float* y, const engine::WeightTensor& b, std::int64_t r, std::int64_t d) override { be_->add_bias(y, b, r, d); }
  void rope(float* x, std::int64_t n, int h, int hd, const std::int32_t* pos, const engine::RopeParams& p) override {
    be_->rope(x, n, h, hd, pos, p);
  }
  void swiglu(const float* g, const float* u, std::int64_t n, float* o) override { be_->swiglu(g, u, n, o); }
  void gelu(const float* x, std::int64_t n, float* y) override { be_->gelu(x, n, y); }
  void geglu(const float* g, const float* u, std::int64_t n, float* o) override { be_->geglu(g, u, n, o); }
  void scale(float* x, std::int64_t n, float s) override { be_->scale(x, n, s); }
  void softcap(float* x, std::int64_t n, float cap) override { be_->softcap(x, n, cap); }
  void add(float* y, const float* x, std::int64_t n) override { be_->add(y, x, n); }
  void kv_write(const engine::KvStorage& kv, int l, const float* k, const float* v, std::int64_t n,
                const std::int32_t* slots) override {
    be_->kv_write(kv, l, k, v, n, slots);
  }
  void kv_copy_blocks(const engine::KvStorage& kv, int from, int to) override { be_->kv_copy_blocks(kv, from, to); }
  void attention(const engine::AttentionArgs& a) override { be_->attention(a); }
  void gather_rows(const float* s, const std::int64_t* r, std::int64_t n, std::int64_t d, float* o) override {
    be_->gather_rows(s, r, n, d, o);
  }
  void download(const float* x, std::int64_t n, float* h) override { be_->download(x, n, h); }
  Status take_error() override { return be_->take_error(); }
  std::optional<std::uint64_t> free_device_memory() override { return be_->free_device_memory(); }
  void bind_thread() override { be_->bind_thread(); }
  Status reserve_pass(const PassShape& p) override { return be_->reserve_pass(p); }

 private:
  std::unique_ptr<engine::Backend> be_;
};

}  // namespace airlock::testing
