#include "cuda_backend.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <bit>
#include <climits>
#include <cstring>
#include <map>
#include <set>
#include <vector>

#include "airlock/engine/kv_cache.h"
#include "cuda_graph_plan.h"
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
  // Finished before returning: the buffer may be used next from another
  // thread, whose default stream is not ordered after this one's.
  if (cudaMemset(p, 0, bytes) != cudaSuccess || cudaStreamSynchronize(cudaStreamPerThread) != cudaSuccess) {
    (void)cudaGetLastError();
    cudaFree(p);
    return internal_error("CUDA: cudaMemset failed");
  }
  return std::shared_ptr<void>(p, [](void* q) { cudaFree(q); });
}

// A running FNV-1a hash of operation arguments.
void mix(std::uint64_t* h, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) {
    *h ^= (v >> (8 * i)) & 0xff;
    *h *= 1099511628211ULL;
  }
}

class CudaBackend final : public Backend {
 public:
  CudaBackend(int device, CudaOptions options, std::unique_ptr<cuda::Gemm> gemm)
      : device_(device), options_(options), gemm_(std::move(gemm)) {}
  ~CudaBackend() override { clear_graphs(); }

  void set_graph_max_tokens(int n) { options_.graph_max_tokens = std::max(0, n); }
  CudaGraphStats graph_stats() const {
    CudaGraphStats s = stats_;
    s.held = graphs_.size();
    return s;
  }

  std::string name() const override { return "cuda (" + cuda::describe_device(device_) + ")"; }
  bool uses_host_cores() const override { return false; }

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
    if (t.ne[1] > 1) {
      AIRLOCK_RETURN_IF_ERROR(gemm_->reserve(w.type, t.n_elements));
      gemm_floor_ = std::min(gemm_floor_, gemm_min_tokens(w.type));
    }
    AIRLOCK_ASSIGN_OR_RETURN(w.owner, device_alloc(bytes));
    AIRLOCK_RETURN_IF_ERROR(cuda::to_device(w.owner.get(), src, bytes));
    // Landed before returning (a copy from pageable memory may return
    // before it has): the weights are read from other threads' streams.
    AIRLOCK_RETURN_IF_ERROR(cuda::synchronize());
    w.data = static_cast<const std::uint8_t*>(w.owner.get());
    return w;
  }

  // A new buffer usually replaces a freed one (forward()'s activations
  // grow that way): no captured graph may keep pointing at the old one.
  Result<std::shared_ptr<float>> alloc(std::int64_t n_floats) override {
    clear_graphs();
    AIRLOCK_ASSIGN_OR_RETURN(std::shared_ptr<void> p, device_alloc(static_cast<std::size_t>(n_floats) * sizeof(float)));
    return std::static_pointer_cast<float>(p);
  }

  Result<KvStorage> alloc_kv(int n_layers, std::int64_t n_slots, std::int64_t kv_dim, KvType type) override {
    clear_graphs();
    KvStorage kv = KvStorage::of_shape(n_layers, n_slots, kv_dim, type);
    const std::size_t bytes = kv.layer_bytes() * static_cast<std::size_t>(n_layers);
    AIRLOCK_ASSIGN_OR_RETURN(kv.k, device_alloc(bytes));
    AIRLOCK_ASSIGN_OR_RETURN(kv.v, device_alloc(bytes));
    return kv;
  }

  void matmul(const WeightTensor& w, const float* x, std::int64_t n_tokens, float* y) override {
    trace({w.data, x, y}, {n_tokens});
    if (!error_.is_ok() || replaying()) return;
    if (n_tokens >= gemm_min_tokens(w.type))
      note(gemm_->matmul(w.type, w.data, w.ne[0], w.ne[1], x, n_tokens, y));
    else
      note(cuda::matmul(w.type, w.data, w.ne[0], w.ne[1], x, n_tokens, y));
  }

  void get_rows(const WeightTensor& table, const std::int32_t* ids, std::int64_t n, float* out) override {
    trace({table.data, out}, {n});
    const std::int32_t* d_ids = stage(kIds, ids, n);
    if (d_ids != nullptr && !replaying()) note(cuda::get_rows(table.type, table.data, table.ne[0], d_ids, n, out));
  }

  void rms_norm(const float* x, const WeightTensor& w, std::int64_t n_rows, std::int64_t dim, float eps,
                float* y) override {
    trace({x, w.data, y}, {n_rows, dim});
    if (!replaying()) note(cuda::rms_norm(x, f32(w), n_rows, dim, eps, y));
  }

  void layer_norm(const float* x, const WeightTensor& w, const WeightTensor& b, std::int64_t n_rows, std::int64_t dim,
                  float eps, float* y) override {
    trace({x, w.data, b.data, y}, {n_rows, dim});
    if (!replaying()) note(cuda::layer_norm(x, f32(w), f32(b), n_rows, dim, eps, y));
  }

  void add_bias(float* y, const WeightTensor& bias, std::int64_t n_rows, std::int64_t dim) override {
    trace({y, bias.data}, {n_rows, dim});
    if (!replaying()) note(cuda::add_bias(y, f32(bias), n_rows, dim));
  }

  void rope(float* x, std::int64_t n_tokens, int n_heads, int head_dim, const std::int32_t* positions,
            const RopeParams& p) override {
    trace({x}, {n_tokens, n_heads, head_dim});
    const std::int32_t* d_pos = stage(kPositions, positions, n_tokens);
    if (d_pos == nullptr) return;
    RopeParams dp = p;
    if (p.freq_factors != nullptr) {
      dp.freq_factors = reinterpret_cast<const float*>(stage(kFreqFactors, reinterpret_cast<const std::int32_t*>(p.freq_factors),
                                                             p.n_rot / 2));
      if (dp.freq_factors == nullptr) return;
    }
    if (!replaying()) note(cuda::rope(x, n_tokens, n_heads, head_dim, d_pos, dp));
  }

  void swiglu(const float* gate, const float* up, std::int64_t n, float* out) override {
    trace({gate, up, out}, {n});
    if (!replaying()) note(cuda::swiglu(gate, up, n, out));
  }
  void gelu(const float* x, std::int64_t n, float* y) override {
    trace({x, y}, {n});
    if (!replaying()) note(cuda::gelu(x, n, y));
  }
  void geglu(const float* gate, const float* up, std::int64_t n, float* out) override {
    trace({gate, up, out}, {n});
    if (!replaying()) note(cuda::geglu(gate, up, n, out));
  }
  // The float argument goes into a graph's signature by its bits.
  void scale(float* x, std::int64_t n, float s) override {
    trace({x}, {n, static_cast<std::int64_t>(std::bit_cast<std::uint32_t>(s))});
    if (!replaying()) note(cuda::scale(x, n, s));
  }
  void softcap(float* x, std::int64_t n, float cap) override {
    trace({x}, {n, static_cast<std::int64_t>(std::bit_cast<std::uint32_t>(cap))});
    if (!replaying()) note(cuda::softcap(x, n, cap));
  }
  void add(float* y, const float* x, std::int64_t n) override {
    trace({y, x}, {n});
    if (!replaying()) note(cuda::add(y, x, n));
  }

  void kv_write(const KvStorage& kv, int layer, const float* k, const float* v, std::int64_t n_tokens,
                const std::int32_t* slots) override {
    trace({kv.k_layer(layer), kv.v_layer(layer), k, v}, {n_tokens, kv.kv_dim});
    const std::int32_t* d_slots = stage(kSlots, slots, n_tokens);
    if (d_slots != nullptr && !replaying())
      note(cuda::kv_write(kv.type, kv.k_layer(layer), kv.v_layer(layer), kv.kv_dim, k, v, n_tokens, d_slots));
  }

  // Between passes (Model::compute copies before begin_pass): a captured
  // pass could not hold these synchronous copies.
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
    trace({a.q, a.out, a.kv->k_layer(a.layer), a.kv->v_layer(a.layer)},
          {a.n_tokens, a.n_head, a.n_kv_head, a.head_dim, a.layer, a.window,
           static_cast<std::int64_t>(std::bit_cast<std::uint32_t>(a.scale)),
           static_cast<std::int64_t>(std::bit_cast<std::uint32_t>(a.softcap))});
    // Block tables flattened to one row per token, as long as the longest;
    // in a graph, as long as its context bucket (cuda_graph_plan.h), which
    // also sets the ranges attention is split into.
    int max_ctx = 0;
    for (std::int64_t t = 0; t < a.n_tokens; ++t) max_ctx = std::max(max_ctx, a.n_ctx[t]);
    std::int64_t stride = std::max<std::int64_t>(1, (max_ctx + kBlockTokens - 1) / kBlockTokens);
    if (mode_ != Mode::kEager) {
      stride = key_.ctx_blocks;
      max_ctx = key_.ctx_blocks * kBlockTokens;
    }
    // Every layer of a pass passes the same tables: they are flattened and
    // staged at the first layer and reused by the others (rebuilding and
    // comparing them per layer was ~1 MB of host work a layer for 32
    // sequences at 64k positions).
    TablesCache& tc = tables_cache_;
    if (!(tc.pass == pass_number_ && tc.block_table == a.block_table && tc.n_ctx == a.n_ctx &&
          tc.n_tokens == a.n_tokens && tc.stride == stride && error_.is_ok())) {
      tc = TablesCache{};
      tables_.assign(static_cast<std::size_t>(a.n_tokens * stride), 0);
      for (std::int64_t t = 0; t < a.n_tokens; ++t)
        std::copy(a.block_table[t], a.block_table[t] + (a.n_ctx[t] + kBlockTokens - 1) / kBlockTokens,
                  tables_.begin() + t * stride);
      const std::int32_t* d_ctx = stage(kContexts, a.n_ctx, a.n_tokens);
      const std::int32_t* d_tables = stage(kTables, tables_.data(), static_cast<std::int64_t>(tables_.size()));
      if (d_ctx == nullptr || d_tables == nullptr) return;
      tc = TablesCache{pass_number_, a.block_table, a.n_ctx, a.n_tokens, stride, d_ctx, d_tables};
    }
    const std::int32_t* d_ctx = tc.d_ctx;
    const std::int32_t* d_tables = tc.d_tables;
    if (replaying()) return;
    cuda::AttentionShape s;
    s.n_tokens = a.n_tokens;
    s.n_head = a.n_head;
    s.n_kv_head = a.n_kv_head;
    s.head_dim = a.head_dim;
    s.scale = a.scale;
    s.softcap = a.softcap;
    s.window = a.window;
    s.block = kBlockTokens;
    s.table_stride = stride;
    s.max_ctx = max_ctx;
    const void* workspace = attention_workspace_.get();
    note(cuda::attention(s, a.q, a.kv->type, a.kv->k_layer(a.layer), a.kv->v_layer(a.layer), a.kv->kv_dim, d_ctx,
                         d_tables, a.out, &attention_workspace_));
    if (attention_workspace_.get() != workspace) {  // grown (never in a graph pass: reserve_pass made room)
      if (mode_ == Mode::kCapture) note(internal_error("CUDA graph: attention workspace grew during a capture"));
      clear_graphs();
    }
  }

  void gather_rows(const float* src, const std::int64_t* rows, std::int64_t n_rows, std::int64_t dim,
                   float* dst) override {
    trace({src, dst}, {n_rows, dim});
    if (replaying()) return;
    // Rows move down only, so copying in order never overwrites a source.
    for (std::int64_t i = 0; i < n_rows; ++i)
      if (dst + i * dim != src + rows[i] * dim)
        note_cuda(cudaMemcpy(dst + i * dim, src + rows[i] * dim, static_cast<std::size_t>(dim) * sizeof(float),
                             cudaMemcpyDeviceToDevice));
  }

  void download(const float* x, std::int64_t n, float* host) override {
    if (mode_ != Mode::kEager) abort_pass();
    if (!error_.is_ok()) return;
    note(cuda::to_host(host, x, static_cast<std::size_t>(n) * sizeof(float)));
  }

  Status sample(const float* logits, std::int64_t n_vocab, std::span<const SampleRow> rows,
                std::vector<SampledToken>* out) override {
    if (mode_ != Mode::kEager) abort_pass();
    // A pass that failed already has no logits worth sampling; one still
    // running is not waited for here (its faults surface at the sampler's
    // one wait, for the tokens).
    if (!error_.is_ok()) return take_error();
    Status s = sampler_.sample(logits, n_vocab, rows, out);
    if (!s.is_ok()) {
      (void)cuda::synchronize();  // let queued work finish before the pass is failed
      return s;
    }
    // Constrained rows (an allowed-token mask) are chosen again on the host,
    // from their downloaded logits, as the CPU chooses them: the device
    // sampler has no mask. The other rows keep the device's choice.
    std::vector<float> host;
    for (std::size_t i = 0; i < rows.size(); ++i) {
      if (rows[i].allowed == nullptr) continue;
      host.resize(static_cast<std::size_t>(n_vocab));
      download(logits + static_cast<std::int64_t>(i) * n_vocab, n_vocab, host.data());
      AIRLOCK_RETURN_IF_ERROR(take_error());
      (*out)[i] = sample_row(host, rows[i]);
    }
    return Status::ok();
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
    reserved_blocks_ = std::max<std::int64_t>(reserved_blocks_, p.max_blocks);
    return Status::ok();
  }

  void begin_pass(const PassInfo& info) override {
    if (mode_ != Mode::kEager) abort_pass();
    ++pass_number_;  // nothing staged for an earlier pass (or an earlier try of this one) is reused
    std::optional<cuda::GraphKey> key;
    if (info.replayable && error_.is_ok()) {
      cuda::GraphLimits limits;
      limits = graph_limits();
      key = cuda::graph_key(limits, info.n_tokens, info.max_ctx, kBlockTokens,
                           info.kv != nullptr ? info.kv->k.get() : nullptr);
    }
    if (!key || uncapturable_.count(*key) != 0 || !reserve_graph_staging(key->n_tokens)) {
      ++stats_.eager;
      return;
    }
    key_ = *key;
    signature_ = 14695981039346656037ULL;
    for (bool& b : staged_in_pass_) b = false;
    for (auto& v : staged_) v.clear();  // the device copies will hold this pass's numbers
    if (graphs_.count(key_) != 0) {
      mode_ = Mode::kReplay;
      return;
    }
    if (graphs_.size() >= kMaxGraphs) clear_graphs();
    if (cudaStreamBeginCapture(cudaStreamPerThread, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
      (void)cudaGetLastError();
      uncapturable_.insert(key_);
      ++stats_.eager;
      return;
    }
    mode_ = Mode::kCapture;
  }

  // Captures or replays: the pass's kernels are queued here. A capture that
  // fails (an operation that cannot be captured, a launch error) or a
  // replay whose operations differ from the captured ones (their buffers
  // or sizes) launches nothing and returns false: the model issues the
  // pass again, eagerly, and that shape runs eagerly from then on.
  bool end_pass() override {
    const Mode mode = mode_;
    mode_ = Mode::kEager;
    if (mode == Mode::kEager) return true;
    if (mode == Mode::kReplay) {
      auto it = graphs_.find(key_);
      if (!error_.is_ok()) return true;  // the pass fails anyway
      if (it == graphs_.end() || signature_ != it->second.signature) {
        if (it != graphs_.end()) {
          cudaGraphExecDestroy(it->second.exec);
          graphs_.erase(it);
        }
        uncapturable_.insert(key_);
        ++stats_.refused;
        return false;
      }
      ++stats_.replayed;
      note_cuda(cudaGraphLaunch(it->second.exec, cudaStreamPerThread));
      return true;
    }
    cudaGraph_t graph = nullptr;
    const cudaError_t ended = cudaStreamEndCapture(cudaStreamPerThread, &graph);
    cudaGraphExec_t exec = nullptr;
    if (ended == cudaSuccess && error_.is_ok() && cudaGraphInstantiate(&exec, graph, 0) != cudaSuccess) exec = nullptr;
    if (graph != nullptr) cudaGraphDestroy(graph);
    (void)cudaGetLastError();  // a failed capture's error is not the next pass's
    if (exec == nullptr) {
      uncapturable_.insert(key_);
      ++stats_.refused;
      error_ = Status::ok();  // nothing ran: the eager pass that follows decides
      return false;
    }
    graphs_[key_] = Graph{exec, signature_};
    ++stats_.captured;
    note_cuda(cudaGraphLaunch(exec, cudaStreamPerThread));
    return true;
  }

  Status take_error() override {
    if (mode_ != Mode::kEager) abort_pass();
    ++pass_number_;  // the tables cache ends with the pass, also for callers that never call begin_pass
    // Always waits: the next pass refills buffers a launched graph reads.
    Status s = cuda::synchronize();
    // An error some call left unread belongs to this pass, not the next.
    (void)cudaGetLastError();
    if (!error_.is_ok()) s = error_;
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
    if (e == cudaSuccess) return;
    (void)cudaGetLastError();  // as in cuda_status(): not left to fail the next launch check
    note(internal_error(std::string("CUDA: ") + cudaGetErrorString(e)));
  }

  // What stage() copies, each kind in its own buffer.
  enum Staged { kIds, kPositions, kFreqFactors, kSlots, kContexts, kTables, kStagedKinds };

  // A pass runs eagerly (each operation launched as called), is captured
  // into a graph (launched at end_pass), or replays one: operations only
  // stage their host arguments, and end_pass launches the graph.
  enum class Mode { kEager, kCapture, kReplay };
  bool replaying() const { return mode_ == Mode::kReplay; }
  struct Graph {
    cudaGraphExec_t exec = nullptr;
    std::uint64_t signature = 0;  // of the captured operations' buffers and sizes
  };
  static constexpr std::size_t kMaxGraphs = 512;

  // The operation's device pointers and sizes, into the pass's signature
  // (graph passes only): a replay must make the very calls its capture did.
  void trace(std::initializer_list<const void*> pointers, std::initializer_list<std::int64_t> sizes) {
    if (mode_ == Mode::kEager) return;
    for (const void* p : pointers) mix(&signature_, reinterpret_cast<std::uintptr_t>(p));
    for (std::int64_t n : sizes) mix(&signature_, static_cast<std::uint64_t>(n));
  }

  // Ends a pass that was begun and never ended (a caller's bug): nothing
  // of it is launched, and it fails.
  void abort_pass() {
    if (mode_ == Mode::kCapture) {
      cudaGraph_t graph = nullptr;
      (void)cudaStreamEndCapture(cudaStreamPerThread, &graph);
      if (graph != nullptr) cudaGraphDestroy(graph);
      (void)cudaGetLastError();
    }
    mode_ = Mode::kEager;
    note(internal_error("CUDA backend: a pass was begun and never ended"));
  }

  // Graphs for decode steps of up to max_tokens tokens, none that reaches
  // cuBLAS, with block tables as long as reserve_pass made room for.
  cuda::GraphLimits graph_limits() const {
    cuda::GraphLimits limits;
    limits.max_tokens = std::min<std::int64_t>(options_.graph_max_tokens, gemm_floor_ - 1);
    limits.max_blocks = reserved_blocks_;
    return limits;
  }

  void clear_graphs() {
    for (auto& [key, g] : graphs_) cudaGraphExecDestroy(g.exec);
    graphs_.clear();
  }

  // Device and pinned staging room for every graph the limits allow (the
  // most tokens, the longest tables), grown before any capture and only
  // when the limits grow (a replaced buffer drops the graphs that copy
  // into it); false (the pass runs eagerly) when it cannot grow.
  bool reserve_graph_staging(std::int64_t n_tokens) {
    const cuda::GraphLimits limits = graph_limits();
    const std::size_t ints = static_cast<std::size_t>(std::max(limits.max_tokens, n_tokens)) * sizeof(std::int32_t);
    for (int k = 0; k < kStagedKinds; ++k) {
      std::size_t bytes = k == kTables ? ints * static_cast<std::size_t>(std::max<std::int64_t>(1, limits.max_blocks)) : ints;
      if (k == kFreqFactors) bytes = std::max<std::size_t>(staging_[k].size(), sizeof(float));
      if (!grow(&staging_[k], bytes).is_ok()) return false;
      if (pinned_[k].size() < bytes) {
        clear_graphs();
        if (!pinned_[k].grow(bytes)) return false;
      }
    }
    return true;
  }

  // The fewest tokens whose product with a `type` matrix goes to cuBLAS.
  int gemm_min_tokens(GgmlType type) const {
    if (options_.gemm_min_tokens > 0) return options_.gemm_min_tokens;
    return type == GgmlType::kF32 || type == GgmlType::kBF16 ? 9 : 33;
  }

  // A device copy of n host int32s (ids, positions, slots, contexts, block
  // tables; f32 frequency factors by their bits). Every layer of a pass
  // passes the same numbers again: a kind whose numbers equal its last
  // upload is not copied again, so a pass copies each once instead of once
  // per layer, and the host waits for the device only at those copies. A
  // buffer is never rewritten under a kernel still reading it: the copy and
  // the kernels are ordered on the same (the thread's default) stream.
  //
  // In a graph pass each kind is staged once, through its pinned buffer: a
  // capture records the copy from it, a replay only refills it (the graph
  // copies it again when launched).
  const std::int32_t* stage(Staged kind, const std::int32_t* host, std::int64_t n) {
    if (!error_.is_ok()) return nullptr;
    cuda::DeviceBuffer& b = staging_[kind];
    std::vector<std::int32_t>& last = staged_[kind];
    const std::size_t count = static_cast<std::size_t>(std::max<std::int64_t>(n, 0));
    if (mode_ != Mode::kEager) {
      mix(&signature_, kind * 1000003ULL + count);
      const std::size_t bytes = count * sizeof(std::int32_t);
      if (staged_in_pass_[kind]) {
        // Staged once per pass: a later call must pass the same numbers.
        if (count > 0 && std::memcmp(pinned_[kind].get(), host, bytes) != 0)
          note(internal_error("CUDA graph: one pass staged two different sets of numbers of one kind"));
        return b.as<std::int32_t>();
      }
      if (b.size() < bytes || pinned_[kind].size() < bytes) {
        note(internal_error("CUDA graph: staging room for " + std::to_string(count) + " numbers was not reserved"));
        return nullptr;
      }
      if (count > 0) std::memcpy(pinned_[kind].get(), host, bytes);
      if (mode_ == Mode::kCapture && count > 0)
        note_cuda(cudaMemcpyAsync(b.get(), pinned_[kind].get(), bytes, cudaMemcpyHostToDevice, cudaStreamPerThread));
      staged_in_pass_[kind] = true;
      return b.as<std::int32_t>();
    }
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

  // DeviceBuffer::grow, forgetting what a replaced staging buffer held and
  // dropping the graphs, which may point into it.
  Status grow(cuda::DeviceBuffer* b, std::size_t bytes) {
    if (b->size() >= bytes) return Status::ok();
    clear_graphs();
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
  // CUDA graphs (cuda_graph_plan.h).
  Mode mode_ = Mode::kEager;
  cuda::GraphKey key_;                          // of the pass being captured or replayed
  std::uint64_t signature_ = 0;                 // of its operations so far
  std::map<cuda::GraphKey, Graph> graphs_;
  std::set<cuda::GraphKey> uncapturable_;       // shapes whose capture failed: eager
  bool staged_in_pass_[kStagedKinds] = {};
  cuda::PinnedBuffer pinned_[kStagedKinds];
  std::int64_t reserved_blocks_ = 0;            // table entries per token reserve_pass made room for
  int gemm_floor_ = INT_MAX;                    // the fewest tokens that take cuBLAS for some matrix
  CudaGraphStats stats_;
  std::vector<std::int32_t> staged_[kStagedKinds];  // what each staging buffer holds
  std::vector<std::int32_t> tables_;
  // The block tables of the pass being issued, as staged by its first
  // attention() (see there).
  struct TablesCache {
    std::uint64_t pass = 0;
    const std::int32_t* const* block_table = nullptr;
    const std::int32_t* n_ctx = nullptr;
    std::int64_t n_tokens = 0, stride = 0;
    const std::int32_t* d_ctx = nullptr;
    const std::int32_t* d_tables = nullptr;
  };
  TablesCache tables_cache_;
  std::uint64_t pass_number_ = 0;
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

void set_cuda_graph_max_tokens(Backend& backend, int max_tokens) {
  if (auto* b = dynamic_cast<CudaBackend*>(&backend)) b->set_graph_max_tokens(max_tokens);
}

CudaGraphStats cuda_graph_stats(const Backend& backend) {
  const auto* b = dynamic_cast<const CudaBackend*>(&backend);
  return b != nullptr ? b->graph_stats() : CudaGraphStats{};
}

}  // namespace airlock::engine
