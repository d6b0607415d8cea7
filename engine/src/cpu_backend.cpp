// The CPU backend: the reference implementation of every backend operation.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include "airlock/engine/backend.h"
#include "airlock/engine/kernels.h"
#include "airlock/engine/kv_cache.h"
#include "airlock/engine/thread_pool.h"

namespace airlock::engine {
namespace {

std::shared_ptr<float> aligned_floats(std::int64_t n) {
  void* p = std::aligned_alloc(64, static_cast<std::size_t>((n * 4 + 63) / 64 * 64));
  if (p == nullptr) return nullptr;
  std::memset(p, 0, static_cast<std::size_t>(n) * 4);
  return std::shared_ptr<float>(static_cast<float*>(p), [](float* q) { std::free(q); });
}

// ggml's tanh form of GELU: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
inline float gelu_tanh(float v) {
  constexpr float kSqrt2OverPi = 0.79788456080286535588f;
  constexpr float kCoef = 0.044715f;
  return 0.5f * v * (1.0f + std::tanh(kSqrt2OverPi * v * (1.0f + kCoef * v * v)));
}

// A small weight vector (norm, bias) as floats.
const float* as_f32(const WeightTensor& w, std::vector<float>& scratch) {
  if (w.type == GgmlType::kF32) return reinterpret_cast<const float*>(w.data);
  scratch.resize(static_cast<std::size_t>(w.ne[0]));
  dequantize_row(w.type, w.data, scratch.data(), w.ne[0]);
  return scratch.data();
}

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(std::shared_ptr<ThreadPool> pool) : pool_(std::move(pool)) {}

  std::shared_ptr<ThreadPool> cpu_pool() const override { return pool_; }

  std::string name() const override { return std::string("cpu (") + kernel_isa() + ", " +
                                              std::to_string(pool_->n_threads()) + " threads)"; }
  bool uses_host_cores() const override { return true; }

  Result<WeightTensor> upload(const GgufTensor& t) override {
    const TypeTraits& tt = traits(t.type);
    if (!tt.supported) return invalid_argument("tensor '" + t.name + "' has unsupported type " + std::string(tt.name));
    WeightTensor w;
    w.name = t.name;
    w.type = t.type;
    std::copy(t.ne, t.ne + 4, w.ne);
    w.data = t.data.data();
    return w;
  }

  Result<std::shared_ptr<float>> alloc(std::int64_t n_floats) override {
    auto p = aligned_floats(n_floats);
    if (!p) return resource_exhausted("out of memory allocating " + std::to_string(n_floats * 4) + " bytes");
    return p;
  }

  Result<KvStorage> alloc_kv(int n_layers, std::int64_t n_slots, std::int64_t kv_dim, KvType type) override {
    KvStorage kv = KvStorage::of_shape(n_layers, n_slots, kv_dim, type);
    const std::int64_t n_floats = (n_layers * n_slots * kv_dim * static_cast<std::int64_t>(kv_type_bytes(type)) + 3) / 4;
    kv.k = aligned_floats(n_floats);
    kv.v = aligned_floats(n_floats);
    if (!kv.k || !kv.v) return resource_exhausted("out of memory for the KV cache");
    return kv;
  }

  void matmul(const WeightTensor& w, const float* x, std::int64_t n_tokens, float* y) override {
    const WeightTensor* one = &w;
    matmul_many(&one, &y, 1, x, n_tokens);
  }

  void matmul_many(const WeightTensor* const* w, float* const* y, int count, const float* x,
                   std::int64_t n_tokens) override {
    for (int i = 1; i < count; ++i)
      if (!shares_matmul_input(w[0]->type, w[i]->type)) {
        for (int j = 0; j < count; ++j) matmul_many(&w[j], &y[j], 1, x, n_tokens);
        return;
      }
    // The activations are quantised once, shared by every thread's rows.
    const std::int64_t n_in = w[0]->ne[0];
    input_.reset(w[0]->type, x, n_in, n_tokens);
    if (input_.needs_quantize())
      pool_->parallel_for(n_tokens, [&](std::int64_t t0, std::int64_t t1) { input_.quantize(t0, t1); }, 4);
    // All the matrices' rows as one range [0, total): matrix i owns
    // [start[i], start[i] + rows(i)).
    std::vector<std::int64_t> start(static_cast<std::size_t>(count) + 1, 0);
    for (int i = 0; i < count; ++i) start[static_cast<std::size_t>(i) + 1] = start[static_cast<std::size_t>(i)] + w[i]->n_rows();
    pool_->parallel_for(
        start.back(),
        [&](std::int64_t b, std::int64_t e) {
          for (int i = 0; i < count; ++i) {
            const std::int64_t s0 = start[static_cast<std::size_t>(i)], s1 = start[static_cast<std::size_t>(i) + 1];
            if (e <= s0 || b >= s1) continue;
            matmul_rows(input_, w[i]->type, w[i]->data, y[i], s1 - s0, std::max(b, s0) - s0, std::min(e, s1) - s0);
          }
        },
        16);
  }

  void get_rows(const WeightTensor& table, const std::int32_t* ids, std::int64_t n, float* out) override {
    const std::size_t stride = row_bytes(table.type, table.ne[0]);
    for (std::int64_t i = 0; i < n; ++i)
      dequantize_row(table.type, table.data + stride * static_cast<std::size_t>(ids[i]), out + i * table.ne[0],
                     table.ne[0]);
  }

  void rms_norm(const float* x, const WeightTensor& w, std::int64_t n_rows, std::int64_t dim, float eps,
                float* y) override {
    std::vector<float> scratch;
    const float* g = as_f32(w, scratch);
    for (std::int64_t r = 0; r < n_rows; ++r) {
      const float* xr = x + r * dim;
      double ss = 0;
      for (std::int64_t i = 0; i < dim; ++i) ss += static_cast<double>(xr[i]) * xr[i];
      float inv = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(dim) + eps));
      for (std::int64_t i = 0; i < dim; ++i) y[r * dim + i] = xr[i] * inv * g[i];
    }
  }

  void layer_norm(const float* x, const WeightTensor& w, const WeightTensor& b, std::int64_t n_rows, std::int64_t dim,
                  float eps, float* y) override {
    std::vector<float> gs, bs;
    const float* g = as_f32(w, gs);
    const float* bias = as_f32(b, bs);
    pool_->parallel_for(
        n_rows,
        [&](std::int64_t r0, std::int64_t r1) {
          for (std::int64_t r = r0; r < r1; ++r) {
            const float* xr = x + r * dim;
            // Two passes in double: the mean first, then the centred sum of
            // squares (no cancellation for rows far from zero).
            double sum = 0;
            for (std::int64_t i = 0; i < dim; ++i) sum += xr[i];
            const double mean = sum / static_cast<double>(dim);
            double ss = 0;
            for (std::int64_t i = 0; i < dim; ++i) ss += (xr[i] - mean) * (xr[i] - mean);
            const double inv = 1.0 / std::sqrt(ss / static_cast<double>(dim) + eps);
            float* yr = y + r * dim;
            for (std::int64_t i = 0; i < dim; ++i)
              yr[i] = static_cast<float>((xr[i] - mean) * inv) * g[i] + bias[i];
          }
        },
        8);
  }

  void add_bias(float* y, const WeightTensor& bias, std::int64_t n_rows, std::int64_t dim) override {
    std::vector<float> scratch;
    const float* b = as_f32(bias, scratch);
    for (std::int64_t r = 0; r < n_rows; ++r)
      for (std::int64_t i = 0; i < dim; ++i) y[r * dim + i] += b[i];
  }

  void rope(float* x, std::int64_t n_tokens, int n_heads, int head_dim, const std::int32_t* positions,
            const RopeParams& p) override {
    const int half = p.n_rot / 2;
    std::vector<float> inv_freq(static_cast<std::size_t>(half));
    for (int i = 0; i < half; ++i) {
      double f = std::pow(static_cast<double>(p.freq_base), -2.0 * i / p.n_rot);
      if (p.freq_factors) f /= p.freq_factors[i];
      inv_freq[i] = static_cast<float>(f);
    }
    for (std::int64_t t = 0; t < n_tokens; ++t) {
      const float pos = static_cast<float>(positions[t]) * p.freq_scale;
      for (int i = 0; i < half; ++i) {
        const float theta = pos * inv_freq[i];
        const float c = std::cos(theta) * p.attn_factor, s = std::sin(theta) * p.attn_factor;
        for (int h = 0; h < n_heads; ++h) {
          float* v = x + (t * n_heads + h) * head_dim;
          const int a = p.neox ? i : 2 * i;
          const int b = p.neox ? i + half : 2 * i + 1;
          const float x0 = v[a], x1 = v[b];
          v[a] = x0 * c - x1 * s;
          v[b] = x0 * s + x1 * c;
        }
      }
    }
  }

  void swiglu(const float* gate, const float* up, std::int64_t n, float* out) override {
    pool_->parallel_for(
        n, [&](std::int64_t i0, std::int64_t i1) { silu_mul_row(gate + i0, up + i0, i1 - i0, out + i0); }, 4096);
  }

  void gelu(const float* x, std::int64_t n, float* y) override {
    pool_->parallel_for(
        n,
        [&](std::int64_t i0, std::int64_t i1) {
          for (std::int64_t i = i0; i < i1; ++i) y[i] = gelu_tanh(x[i]);
        },
        4096);
  }

  void geglu(const float* gate, const float* up, std::int64_t n, float* out) override {
    pool_->parallel_for(
        n,
        [&](std::int64_t i0, std::int64_t i1) {
          for (std::int64_t i = i0; i < i1; ++i) out[i] = gelu_tanh(gate[i]) * up[i];
        },
        4096);
  }

  void scale(float* x, std::int64_t n, float s) override {
    for (std::int64_t i = 0; i < n; ++i) x[i] *= s;
  }

  void softcap(float* x, std::int64_t n, float cap) override {
    pool_->parallel_for(
        n,
        [&](std::int64_t i0, std::int64_t i1) {
          for (std::int64_t i = i0; i < i1; ++i) x[i] = cap * std::tanh(x[i] / cap);
        },
        4096);
  }

  void add(float* y, const float* x, std::int64_t n) override {
    for (std::int64_t i = 0; i < n; ++i) y[i] += x[i];
  }

  void kv_write(const KvStorage& kv, int layer, const float* k, const float* v, std::int64_t n_tokens,
                const std::int32_t* slots) override {
    if (kv.type == KvType::kF16) {
      auto* kd = static_cast<std::uint16_t*>(kv.k_layer(layer));
      auto* vd = static_cast<std::uint16_t*>(kv.v_layer(layer));
      for (std::int64_t t = 0; t < n_tokens; ++t) {
        fp32_to_fp16_row(k + t * kv.kv_dim, kd + slots[t] * kv.kv_dim, kv.kv_dim);
        fp32_to_fp16_row(v + t * kv.kv_dim, vd + slots[t] * kv.kv_dim, kv.kv_dim);
      }
      return;
    }
    auto* kd = static_cast<float*>(kv.k_layer(layer));
    auto* vd = static_cast<float*>(kv.v_layer(layer));
    const std::size_t row = static_cast<std::size_t>(kv.kv_dim) * sizeof(float);
    for (std::int64_t t = 0; t < n_tokens; ++t) {
      std::memcpy(kd + slots[t] * kv.kv_dim, k + t * kv.kv_dim, row);
      std::memcpy(vd + slots[t] * kv.kv_dim, v + t * kv.kv_dim, row);
    }
  }

  void kv_copy_blocks(const KvStorage& kv, int from_block, int to_block) override {
    const std::size_t n = static_cast<std::size_t>(kBlockTokens * kv.kv_dim) * kv_type_bytes(kv.type);
    for (int l = 0; l < kv.n_layers; ++l)
      for (void* layer : {kv.k_layer(l), kv.v_layer(l)}) {
        char* base = static_cast<char*>(layer);
        std::memcpy(base + static_cast<std::size_t>(to_block) * n, base + static_cast<std::size_t>(from_block) * n, n);
      }
  }

  void attention(const AttentionArgs& a) override {
    if (a.kv->type == KvType::kF16)
      attention_over(a, static_cast<const std::uint16_t*>(a.kv->k_layer(a.layer)),
                     static_cast<const std::uint16_t*>(a.kv->v_layer(a.layer)));
    else
      attention_over(a, static_cast<const float*>(a.kv->k_layer(a.layer)),
                     static_cast<const float*>(a.kv->v_layer(a.layer)));
  }

  void gather_rows(const float* src, const std::int64_t* rows, std::int64_t n_rows, std::int64_t dim,
                   float* dst) override {
    for (std::int64_t i = 0; i < n_rows; ++i)
      if (dst + i * dim != src + rows[i] * dim) std::memmove(dst + i * dim, src + rows[i] * dim, static_cast<std::size_t>(dim) * 4);
  }

  void download(const float* x, std::int64_t n, float* host) override {
    if (host != x) std::memcpy(host, x, static_cast<std::size_t>(n) * 4);
  }

  // The logits are host memory already: no copy; rows in parallel (a
  // sampled row sorts its vocabulary).
  Status sample(const float* logits, std::int64_t n_vocab, std::span<const SampleRow> rows,
                std::vector<SampledToken>* out) override {
    out->assign(rows.size(), SampledToken{});
    pool_->parallel_for(static_cast<std::int64_t>(rows.size()), [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t i = begin; i < end; ++i)
        (*out)[static_cast<std::size_t>(i)] =
            sample_row(std::span<const float>(logits + i * n_vocab, static_cast<std::size_t>(n_vocab)),
                       rows[static_cast<std::size_t>(i)]);
    });
    return Status::ok();
  }

 private:
  // T: float or f16 bits, as the cache stores them.
  template <typename T>
  void attention_over(const AttentionArgs& a, const T* kd, const T* vd) {
    const int group = a.n_head / a.n_kv_head;
    const std::int64_t kv_dim = a.kv->kv_dim;
    const int part_floats = attend_part_floats(a.head_dim);
    const std::int64_t span_floats = static_cast<std::int64_t>(a.n_head) * part_floats;
    // Jobs are (token, span of kAttendSpan positions, key/value head), in
    // that order: a range of them takes a span's heads together (attend_span
    // reads their part of each row at once), and one long context's spans
    // spread over the threads. A token of one span gets its answer from its
    // job; the parts of longer ones are merged after all the spans. With
    // enough (token, head) jobs to share already (a prompt chunk, a large
    // batch) a token's spans are not split: its job goes through them all
    // (attend_heads, the same arithmetic, so the same result), and the
    // parts of a whole prompt chunk are never held at once.
    const bool split = a.n_tokens * a.n_kv_head < 4 * static_cast<std::int64_t>(pool_->n_threads());
    const AttendScore score{a.scale, a.softcap};
    // The first position token t attends to (a sliding window starts later).
    auto first_pos = [&](std::int64_t t) { return a.window > 0 ? std::max(0, a.n_ctx[t] - a.window) : 0; };
    // Its spans of kAttendSpan positions from there.
    auto n_spans = [&](std::int64_t t) -> int { return (a.n_ctx[t] - first_pos(t) + kAttendSpan - 1) / kAttendSpan; };
    job_start_.resize(static_cast<std::size_t>(a.n_tokens) + 1);
    part_start_.resize(static_cast<std::size_t>(a.n_tokens));
    std::int64_t n_jobs = 0, n_parts = 0;
    bool merge = false;
    for (std::int64_t t = 0; t < a.n_tokens; ++t) {
      const std::int64_t spans = split ? n_spans(t) : 1;
      job_start_[static_cast<std::size_t>(t)] = n_jobs;
      part_start_[static_cast<std::size_t>(t)] = n_parts;
      n_jobs += spans * a.n_kv_head;
      if (spans > 1) {
        n_parts += spans;
        merge = true;
      }
    }
    job_start_[static_cast<std::size_t>(a.n_tokens)] = n_jobs;
    parts_.resize(static_cast<std::size_t>(n_parts * span_floats));
    pool_->parallel_for(n_jobs, [&](std::int64_t begin, std::int64_t end) {
      thread_local std::vector<float> scores, own;
      if (split) {
        scores.resize(static_cast<std::size_t>(group) * kAttendSpan);
        own.resize(static_cast<std::size_t>(span_floats));
      }
      std::int64_t t = std::upper_bound(job_start_.begin(), job_start_.end(), begin) - job_start_.begin() - 1;
      for (std::int64_t job = begin; job < end;) {
        while (job >= job_start_[static_cast<std::size_t>(t) + 1]) ++t;
        const std::int64_t local = job - job_start_[static_cast<std::size_t>(t)];
        const int span = static_cast<int>(local / a.n_kv_head), h0 = static_cast<int>(local % a.n_kv_head);
        const int n_kv = static_cast<int>(std::min<std::int64_t>(a.n_kv_head - h0, end - job));
        const std::int64_t first = t * a.n_head + static_cast<std::int64_t>(h0) * group;
        job += n_kv;
        const int start = first_pos(t);
        if (!split) {
          scores.resize(static_cast<std::size_t>(group) *
                        static_cast<std::size_t>(std::min(a.n_ctx[t] - start, kAttendSpan)));
          attend_heads(a.q + first * a.head_dim, group, n_kv, kd + h0 * a.head_dim, vd + h0 * a.head_dim, kv_dim,
                       a.block_table[t], kBlockTokens, start, a.n_ctx[t], a.head_dim, score, scores.data(),
                       a.out + first * a.head_dim);
          continue;
        }
        const int p0 = start + span * kAttendSpan, p1 = std::min(a.n_ctx[t], p0 + kAttendSpan);
        const bool alone = n_spans(t) == 1;
        float* part = (alone ? own.data() : parts_.data() + (part_start_[static_cast<std::size_t>(t)] + span) * span_floats) +
                      static_cast<std::int64_t>(h0) * group * part_floats;
        attend_span(a.q + first * a.head_dim, group, n_kv, kd + h0 * a.head_dim, vd + h0 * a.head_dim, kv_dim,
                    a.block_table[t], kBlockTokens, p0, p1, a.head_dim, score, scores.data(), part);
        if (alone) attend_merge(part, 1, 0, n_kv * group, a.head_dim, a.out + first * a.head_dim);
      }
    });
    if (!merge) return;
    pool_->parallel_for(a.n_tokens * a.n_head, [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t i = begin; i < end; ++i) {
        const std::int64_t t = i / a.n_head, j = i % a.n_head;
        const int spans = n_spans(t);
        if (spans == 1) continue;
        attend_merge(parts_.data() + part_start_[static_cast<std::size_t>(t)] * span_floats + j * part_floats, spans,
                     span_floats, 1, a.head_dim, a.out + i * a.head_dim);
      }
    });
  }

  std::shared_ptr<ThreadPool> pool_;
  // attention's job table and span parts (one forward pass at a time)
  std::vector<std::int64_t> job_start_, part_start_;
  std::vector<float> parts_;
  MatmulInput input_;  // reused by every matmul (one forward pass at a time)
};

}  // namespace

Status Backend::sample(const float* logits, std::int64_t n_vocab, std::span<const SampleRow> rows,
                       std::vector<SampledToken>* out) {
  std::vector<float> host(rows.size() * static_cast<std::size_t>(n_vocab));
  download(logits, static_cast<std::int64_t>(host.size()), host.data());
  AIRLOCK_RETURN_IF_ERROR(take_error());
  out->clear();
  for (std::size_t i = 0; i < rows.size(); ++i)
    out->push_back(sample_row(std::span<const float>(host).subspan(i * static_cast<std::size_t>(n_vocab),
                                                                   static_cast<std::size_t>(n_vocab)),
                              rows[i]));
  return Status::ok();
}

const char* kv_type_name(KvType t) { return t == KvType::kF16 ? "f16" : "f32"; }
std::size_t kv_type_bytes(KvType t) { return t == KvType::kF16 ? 2 : 4; }

std::unique_ptr<Backend> make_cpu_backend(std::shared_ptr<ThreadPool> pool) {
  return std::make_unique<CpuBackend>(std::move(pool));
}

}  // namespace airlock::engine
