#include "cuda_backend.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "airlock/engine/kv_cache.h"
#include "cuda_ops.h"
#include "cuda_sampling.h"

namespace airlock::engine {
namespace {

// Device memory owned by a shared_ptr (weights, activations, KV storage).
Result<std::shared_ptr<void>> device_alloc(std::size_t bytes) {
  void* p = nullptr;
  if (cudaMalloc(&p, std::max<std::size_t>(bytes, 1)) != cudaSuccess) {
    (void)cudaGetLastError();
    return resource_exhausted("CUDA: out of device memory allocating " + std::to_string(bytes) + " bytes");
  }
  if (cudaMemset(p, 0, bytes) != cudaSuccess) {
    cudaFree(p);
    return internal_error("CUDA: cudaMemset failed");
  }
  return std::shared_ptr<void>(p, [](void* q) { cudaFree(q); });
}

class CudaBackend final : public Backend {
 public:
  CudaBackend(int device, CudaOptions options, std::unique_ptr<cuda::Gemm> gemm)
      : device_(device), options_(options), gemm_(std::move(gemm)) {}

  std::string name() const override { return "cuda (" + cuda::describe_device(device_) + ")"; }

  Result<WeightTensor> upload(const GgufTensor& t) override {
    if (!cuda::supported(t.type))
      return invalid_argument("tensor '" + t.name + "': the CUDA backend cannot use " + std::string(traits(t.type).name));
    WeightTensor w;
    w.name = t.name;
    std::copy(t.ne, t.ne + 4, w.ne);
    std::vector<float> f32;
    const void* src = t.data.data();
    std::size_t bytes = t.data.size();
    w.type = t.type;
    if (t.ne[1] == 1 && t.type != GgmlType::kF32) {  // norms and biases are read as f32
      f32.resize(static_cast<std::size_t>(t.ne[0]));
      dequantize_row(t.type, t.data.data(), f32.data(), t.ne[0]);
      src = f32.data();
      bytes = f32.size() * sizeof(float);
      w.type = GgmlType::kF32;
    }
    // The GEMM's bf16 copy of the largest matrix is allocated now, before
    // the KV cache is sized from what stays free.
    if (t.ne[1] > 1) AIRLOCK_RETURN_IF_ERROR(gemm_->reserve(w.type, t.n_elements));
    AIRLOCK_ASSIGN_OR_RETURN(w.owner, device_alloc(bytes));
    AIRLOCK_RETURN_IF_ERROR(cuda::to_device(w.owner.get(), src, bytes));
    w.data = static_cast<const std::uint8_t*>(w.owner.get());
    return w;
  }

  Result<std::shared_ptr<float>> alloc(std::int64_t n_floats) override {
    AIRLOCK_ASSIGN_OR_RETURN(std::shared_ptr<void> p, device_alloc(static_cast<std::size_t>(n_floats) * sizeof(float)));
    return std::static_pointer_cast<float>(p);
  }

  Result<KvStorage> alloc_kv(int n_layers, std::int64_t n_slots, std::int64_t kv_dim, KvType type) override {
    KvStorage kv = KvStorage::of_shape(n_layers, n_slots, kv_dim, type);
    const std::size_t bytes = kv.layer_bytes() * static_cast<std::size_t>(n_layers);
    AIRLOCK_ASSIGN_OR_RETURN(kv.k, device_alloc(bytes));
    AIRLOCK_ASSIGN_OR_RETURN(kv.v, device_alloc(bytes));
    return kv;
  }

  void matmul(const WeightTensor& w, const float* x, std::int64_t n_tokens, float* y) override {
    if (!error_.is_ok()) return;
    int min_tokens = options_.gemm_min_tokens;
    if (min_tokens <= 0) min_tokens = w.type == GgmlType::kF32 || w.type == GgmlType::kBF16 ? 9 : 33;
    if (n_tokens >= min_tokens)
      note(gemm_->matmul(w.type, w.data, w.ne[0], w.ne[1], x, n_tokens, y));
    else
      note(cuda::matmul(w.type, w.data, w.ne[0], w.ne[1], x, n_tokens, y));
  }

  void get_rows(const WeightTensor& table, const std::int32_t* ids, std::int64_t n, float* out) override {
    const std::int32_t* d_ids = stage(kIds, ids, n);
    if (d_ids != nullptr) note(cuda::get_rows(table.type, table.data, table.ne[0], d_ids, n, out));
  }

  void rms_norm(const float* x, const WeightTensor& w, std::int64_t n_rows, std::int64_t dim, float eps,
                float* y) override {
    note(cuda::rms_norm(x, f32(w), n_rows, dim, eps, y));
  }

  void layer_norm(const float* x, const WeightTensor& w, const WeightTensor& b, std::int64_t n_rows, std::int64_t dim,
                  float eps, float* y) override {
    note(cuda::layer_norm(x, f32(w), f32(b), n_rows, dim, eps, y));
  }

  void add_bias(float* y, const WeightTensor& bias, std::int64_t n_rows, std::int64_t dim) override {
    note(cuda::add_bias(y, f32(bias), n_rows, dim));
  }

  void rope(float* x, std::int64_t n_tokens, int n_heads, int head_dim, const std::int32_t* positions,
            const RopeParams& p) override {
    const std::int32_t* d_pos = stage(kPositions, positions, n_tokens);
    if (d_pos == nullptr) return;
    RopeParams dp = p;
    if (p.freq_factors != nullptr) {
      dp.freq_factors = reinterpret_cast<const float*>(stage(kFreqFactors, reinterpret_cast<const std::int32_t*>(p.freq_factors),
                                                             p.n_rot / 2));
      if (dp.freq_factors == nullptr) return;
    }
    note(cuda::rope(x, n_tokens, n_heads, head_dim, d_pos, dp));
  }

  void swiglu(const float* gate, const float* up, std::int64_t n, float* out) override {
    note(cuda::swiglu(gate, up, n, out));
  }
  void gelu(const float* x, std::int64_t n, float* y) override { note(cuda::gelu(x, n, y)); }
  void add(float* y, const float* x, std::int64_t n) override { note(cuda::add(y, x, n)); }

  void kv_write(const KvStorage& kv, int layer, const float* k, const float* v, std::int64_t n_tokens,
                const std::int32_t* slots) override {
    const std::int32_t* d_slots = stage(kSlots, slots, n_tokens);
    if (d_slots != nullptr)
      note(cuda::kv_write(kv.type, kv.k_layer(layer), kv.v_layer(layer), kv.kv_dim, k, v, n_tokens, d_slots));
  }

  void kv_copy_blocks(const KvStorage& kv, int from_block, int to_block) override {
    const std::size_t n = static_cast<std::size_t>(kBlockTokens * kv.kv_dim) * kv_type_bytes(kv.type);
    for (int l = 0; l < kv.n_layers; ++l)
      for (void* layer : {kv.k_layer(l), kv.v_layer(l)}) {
        char* base = static_cast<char*>(layer);
        note_cuda(cudaMemcpy(base + n * static_cast<std::size_t>(to_block), base + n * static_cast<std::size_t>(from_block),
                             n, cudaMemcpyDeviceToDevice));
      }
  }

  void attention(const AttentionArgs& a) override {
    // Block tables flattened to one row per token, as long as the longest.
    int max_ctx = 0;
    for (std::int64_t t = 0; t < a.n_tokens; ++t) max_ctx = std::max(max_ctx, a.n_ctx[t]);
    const std::int64_t stride = std::max<std::int64_t>(1, (max_ctx + kBlockTokens - 1) / kBlockTokens);
    tables_.assign(static_cast<std::size_t>(a.n_tokens * stride), 0);
    for (std::int64_t t = 0; t < a.n_tokens; ++t)
      std::copy(a.block_table[t], a.block_table[t] + (a.n_ctx[t] + kBlockTokens - 1) / kBlockTokens,
                tables_.begin() + t * stride);
    const std::int32_t* d_ctx = stage(kContexts, a.n_ctx, a.n_tokens);
    const std::int32_t* d_tables = stage(kTables, tables_.data(), static_cast<std::int64_t>(tables_.size()));
    if (d_ctx == nullptr || d_tables == nullptr) return;
    cuda::AttentionShape s;
    s.n_tokens = a.n_tokens;
    s.n_head = a.n_head;
    s.n_kv_head = a.n_kv_head;
    s.head_dim = a.head_dim;
    s.scale = a.scale;
    s.block = kBlockTokens;
    s.table_stride = stride;
    s.max_ctx = max_ctx;
    note(cuda::attention(s, a.q, a.kv->type, a.kv->k_layer(a.layer), a.kv->v_layer(a.layer), a.kv->kv_dim, d_ctx,
                         d_tables, a.out, &attention_workspace_));
  }

  void gather_rows(const float* src, const std::int64_t* rows, std::int64_t n_rows, std::int64_t dim,
                   float* dst) override {
    // Rows move down only, so copying in order never overwrites a source.
    for (std::int64_t i = 0; i < n_rows; ++i)
      if (dst + i * dim != src + rows[i] * dim)
        note_cuda(cudaMemcpy(dst + i * dim, src + rows[i] * dim, static_cast<std::size_t>(dim) * sizeof(float),
                             cudaMemcpyDeviceToDevice));
  }

  void download(const float* x, std::int64_t n, float* host) override {
    if (!error_.is_ok()) return;
    note(cuda::to_host(host, x, static_cast<std::size_t>(n) * sizeof(float)));
  }

  Status sample(const float* logits, std::int64_t n_vocab, std::span<const SampleRow> rows,
                std::vector<SampledToken>* out) override {
    AIRLOCK_RETURN_IF_ERROR(take_error());  // the pass's logits are not worth sampling
    Status s = sampler_.sample(logits, n_vocab, rows, out);
    if (!s.is_ok()) (void)cuda::synchronize();  // let queued work finish before the pass is failed
    return s;
  }

  void bind_thread() override {
    if (cudaSetDevice(device_) != cudaSuccess) note(internal_error("CUDA: cannot use device " + std::to_string(device_)));
  }

  std::optional<std::uint64_t> free_device_memory() override {
    // cudaMemGetInfo answers for the calling thread's device: ask about
    // this backend's, then put the thread back.
    int previous = 0;
    std::size_t free_bytes = 0, total = 0;
    const bool ok = cudaGetDevice(&previous) == cudaSuccess && cudaSetDevice(device_) == cudaSuccess &&
                    cudaMemGetInfo(&free_bytes, &total) == cudaSuccess;
    (void)cudaSetDevice(previous);
    if (!ok) {
      (void)cudaGetLastError();
      return std::uint64_t{0};  // unknown: plan as if nothing were free, which refuses rather than overcommits
    }
    return static_cast<std::uint64_t>(free_bytes);
  }

  Status reserve_pass(const PassShape& p) override {
    // What compute() would otherwise allocate on the way: the attention
    // ranges' partial results (attention_splits keeps the ranges to about
    // 1024 blocks beyond one per token and head), the bf16 activations of a
    // GEMM, and the staged metadata.
    const std::int64_t heads = p.n_tokens * p.n_head;
    const std::size_t attention = static_cast<std::size_t>((heads + 1024) * (p.head_dim + 2)) * sizeof(float);
    AIRLOCK_RETURN_IF_ERROR(grow(&attention_workspace_, attention));
    AIRLOCK_RETURN_IF_ERROR(gemm_->reserve_activations(p.n_tokens * p.max_row));
    const std::size_t ints = static_cast<std::size_t>(p.n_tokens) * sizeof(std::int32_t);
    for (Staged k : {kIds, kPositions, kSlots, kContexts})
      AIRLOCK_RETURN_IF_ERROR(grow(&staging_[k], ints));
    AIRLOCK_RETURN_IF_ERROR(grow(&staging_[kTables], ints * static_cast<std::size_t>(std::max<std::int64_t>(1, p.max_blocks))));
    AIRLOCK_RETURN_IF_ERROR(grow(&staging_[kFreqFactors], static_cast<std::size_t>(std::max(1, p.head_dim / 2)) * sizeof(float)));
    if (p.n_out > 0) AIRLOCK_RETURN_IF_ERROR(sampler_.reserve(p.n_vocab));
    return Status::ok();
  }

  Status take_error() override {
    Status s = error_.is_ok() ? cuda::synchronize() : error_;
    error_ = Status::ok();
    return s;
  }

 private:
  // Keeps the first failure; later operations are skipped by their callers
  // checking nothing (the pass is lost anyway) but never touch bad memory:
  // stage() returns nullptr once an error is recorded.
  void note(Status s) {
    if (error_.is_ok() && !s.is_ok()) error_ = std::move(s);
  }
  void note_cuda(cudaError_t e) {
    if (e != cudaSuccess) note(internal_error(std::string("CUDA: ") + cudaGetErrorString(e)));
  }

  // What stage() copies, each kind in its own buffer.
  enum Staged { kIds, kPositions, kFreqFactors, kSlots, kContexts, kTables, kStagedKinds };

  // A device copy of n host int32s (ids, positions, slots, contexts, block
  // tables; f32 frequency factors by their bits). Every layer of a pass
  // passes the same numbers again: a kind whose numbers equal its last
  // upload is not copied again, so a pass copies each once instead of once
  // per layer, and the host waits for the device only at those copies. A
  // buffer is never rewritten under a kernel still reading it: the copy and
  // the kernels are ordered on the same (legacy default) stream.
  const std::int32_t* stage(Staged kind, const std::int32_t* host, std::int64_t n) {
    if (!error_.is_ok()) return nullptr;
    cuda::DeviceBuffer& b = staging_[kind];
    std::vector<std::int32_t>& last = staged_[kind];
    const std::size_t count = static_cast<std::size_t>(std::max<std::int64_t>(n, 0));
    if (last.size() == count && b.get() != nullptr && std::equal(host, host + count, last.begin()))
      return b.as<std::int32_t>();
    const std::size_t bytes = std::max<std::size_t>(count, 1) * sizeof(std::int32_t);
    if (b.size() < bytes) {
      note(grow(&b, bytes * 2));
      if (!error_.is_ok()) return nullptr;
    }
    last.assign(host, host + count);
    if (count > 0) note(cuda::to_device(b.get(), host, count * sizeof(std::int32_t)));
    if (!error_.is_ok()) {
      last.clear();  // the device copy is unknown
      return nullptr;
    }
    return b.as<std::int32_t>();
  }

  // DeviceBuffer::grow, forgetting what a replaced staging buffer held.
  Status grow(cuda::DeviceBuffer* b, std::size_t bytes) {
    if (b->size() >= bytes) return Status::ok();
    for (int k = 0; k < kStagedKinds; ++k)
      if (b == &staging_[k]) staged_[k].clear();
    return b->grow(bytes);
  }

  // Norm and bias weights are stored as f32 by upload().
  static const float* f32(const WeightTensor& w) { return reinterpret_cast<const float*>(w.data); }

  int device_;
  CudaOptions options_;
  std::unique_ptr<cuda::Gemm> gemm_;
  Status error_;
  cuda::DeviceBuffer staging_[kStagedKinds];
  cuda::DeviceBuffer attention_workspace_;
  cuda::DeviceSampler sampler_;
  std::vector<std::int32_t> staged_[kStagedKinds];  // what each staging buffer holds
  std::vector<std::int32_t> tables_;
};

}  // namespace

Result<std::unique_ptr<Backend>> make_cuda_backend(int device, CudaOptions options) {
  const int n = cuda::device_count();
  if (device < 0 || device >= n)
    return unavailable("CUDA device " + std::to_string(device) + " not present (" + std::to_string(n) + " found)");
  if (cudaSetDevice(device) != cudaSuccess) {
    (void)cudaGetLastError();
    return unavailable("CUDA: cannot use device " + std::to_string(device));
  }
  Result<std::unique_ptr<cuda::Gemm>> gemm = cuda::Gemm::create();
  if (!gemm.is_ok()) return unavailable("CUDA device " + std::to_string(device) + ": " + gemm.status().message());
  return std::unique_ptr<Backend>(new CudaBackend(device, options, std::move(*gemm)));
}

}  // namespace airlock::engine
