// The CUDA backend's operations (issue 7), on device memory, each the
// counterpart of a CpuBackend operation of the same name (backend.h) and
// checked against it (tests/engine/cuda_ops_test.cpp, `ctest -L gpu`).
// CudaBackend (cuda_backend.h) runs the model with them; airlockd selects
// it with device = "cuda" or "auto"; cuda_sampling.h samples on the device
// and nccl_communicator.h joins ranks; CudaBackend captures decode passes
// of these calls into CUDA graphs.
//
// Every pointer is device memory unless its comment says otherwise. Calls
// run on the calling thread's default stream (the library is built with
// per-thread default streams, so that a graph capture can record them) and
// return once the work is queued; a launch or a transfer that fails
// returns kInternal with CUDA's message (the request fails, the process
// never aborts).
//
// Thread-safety: calls from one thread are ordered on its stream; threads
// sharing buffers must order their work themselves (the ranks of a
// tensor-parallel group meet in NCCL on the legacy stream, which waits for
// every thread's stream); nothing here holds state beyond DeviceBuffer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "airlock/common/status.h"
#include "airlock/engine/backend.h"
#include "airlock/engine/ggml_types.h"

namespace airlock::engine::cuda {

// Usable CUDA devices: 0 without a driver or a device (never an error).
int device_count();
// "NVIDIA H200, 139 GiB, sm_90" for a device < device_count().
std::string describe_device(int device);

// Device memory, freed when destroyed. Move-only.
class DeviceBuffer {
 public:
  // kResourceExhausted when the device has not `bytes` free.
  static Result<DeviceBuffer> alloc(std::size_t bytes);
  DeviceBuffer() = default;
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(o.p_), bytes_(o.bytes_) { o.p_ = nullptr; o.bytes_ = 0; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer();
  void* get() const { return p_; }
  template <typename T>
  T* as() const { return static_cast<T*>(p_); }
  std::size_t size() const { return bytes_; }
  // At least `bytes`: a smaller buffer is freed first (the new one may need
  // its room) and replaced; contents are not kept. Errors as alloc().
  Status grow(std::size_t bytes);

 private:
  void* p_ = nullptr;
  std::size_t bytes_ = 0;
};

// Page-locked host memory (cudaHostAlloc): copies from and to it can be
// queued without the host waiting (copy_async), and a captured graph's
// copies read it when the graph runs. Freed when destroyed. Move-only.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  PinnedBuffer(PinnedBuffer&& o) noexcept : p_(o.p_), bytes_(o.bytes_) { o.p_ = nullptr; o.bytes_ = 0; }
  PinnedBuffer& operator=(PinnedBuffer&& o) noexcept;
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  ~PinnedBuffer();
  void* get() const { return p_; }
  template <typename T>
  T* as() const { return static_cast<T*>(p_); }
  std::size_t size() const { return bytes_; }
  // At least `bytes` (contents not kept); false when the host has no room.
  bool grow(std::size_t bytes);

 private:
  void* p_ = nullptr;
  std::size_t bytes_ = 0;
};

// Queues a copy between pinned host memory and device memory on the
// calling thread's stream and returns at once; synchronize() waits for it.
Status copy_async(void* dst, const void* src, std::size_t bytes);

// Copies between host and device memory; blocks until done.
Status to_device(void* device_dst, const void* host_src, std::size_t bytes);
Status to_host(void* host_dst, const void* device_src, std::size_t bytes);
// Waits for every operation the calling thread queued; reports the first
// error among them.
Status synchronize();
// OK for cudaSuccess; otherwise kResourceExhausted (out of memory) or
// kInternal with CUDA's message for `what` (cuda_error: a cudaError_t).
Status check_cuda(int cuda_error, const char* what);

// y (n_rows, dim) = x / rms(x) * w per row (sums in double, as the CPU).
Status rms_norm(const float* x, const float* w, std::int64_t n_rows, std::int64_t dim, float eps, float* y);
// y (n_rows, dim) = (x - mean) / sqrt(var + eps) * w + b per row. y may be x.
Status layer_norm(const float* x, const float* w, const float* b, std::int64_t n_rows, std::int64_t dim, float eps,
                  float* y);
// y (n) += x (n).
Status add(float* y, const float* x, std::int64_t n);
// y (n_rows, dim) += bias (dim).
Status add_bias(float* y, const float* bias, std::int64_t n_rows, std::int64_t dim);
// out (n) = silu(gate) * up. out may be gate.
Status swiglu(const float* gate, const float* up, std::int64_t n, float* out);
// y (n) = gelu(x), tanh form. y may be x.
Status gelu(const float* x, std::int64_t n, float* y);
// out (n) = gelu(gate) * up, tanh form. out may be gate.
Status geglu(const float* gate, const float* up, std::int64_t n, float* out);
// x (n) *= s.
Status scale(float* x, std::int64_t n, float s);
// x (n) = cap * tanh(x / cap).
Status softcap(float* x, std::int64_t n, float cap);
// x (n_tokens, n_heads * head_dim) rotated in place at `positions`
// (n_tokens, device). p.freq_factors, when set, is device memory too.
Status rope(float* x, std::int64_t n_tokens, int n_heads, int head_dim, const std::int32_t* positions,
            const RopeParams& p);
// The weight types the CUDA code reads: F32, F16, BF16, Q8_0, Q4_0, Q4_K,
// Q5_K, Q6_K (the engine's), decoded as ggml_types.cpp does.
bool supported(GgmlType type);
// Element k of a row of a supported type (host memory), decoded by the
// very code the kernels run: lets machines without a GPU test it.
float decode_weight(GgmlType type, const void* row, std::int64_t k);

// out (n, row_len) = rows `ids` (n, device) of `table`, dequantised
// (kInvalidArgument for an unsupported type, named).
Status get_rows(GgmlType type, const void* table, std::int64_t row_len, const std::int32_t* ids, std::int64_t n,
                float* out);

// y (n_tokens, n_out) = x (n_tokens, n_in) times w (n_out rows of n_in,
// `type`) transposed, the weights decoded on the fly and every product and
// sum in f32 (no 8-bit activations); one warp per row, up to eight tokens
// per pass over the weights, meant for decode batches. F32, F16, BF16 and
// Q8_0 rows of whole 32-number blocks at 16-byte aligned addresses take the
// fast kernel (one wide load per lane and step); the rest the reference
// kernel (one number per lane and step).
Status matmul(GgmlType type, const void* w, std::int64_t n_in, std::int64_t n_out, const float* x,
              std::int64_t n_tokens, float* y);
// Warps sharing one row in the fast kernel, for n_out rows on n_sm
// multiprocessors: 1, 2, 4 or 8, so that about 48 warps per multiprocessor
// are in flight (host code, tested everywhere).
int matvec_split(std::int64_t n_out, int n_sm);

// The same product through cuBLAS, for prompt chunks and large batches:
// F32 weights by SGEMM in full f32 (no TF32); every other type decoded to
// bf16 (BF16 used as stored), x rounded to bf16, products summed in f32 on
// the tensor cores: about 2^-9 relative error per factor, the usual price
// of bf16 GEMMs. Holds a cuBLAS handle and the bf16 workspaces; reserve()
// grows the weight workspace ahead (at upload, so that the KV cache sized
// from free memory afterwards leaves room for it).
class Gemm {
 public:
  // kInternal when cuBLAS cannot start on the current device.
  static Result<std::unique_ptr<Gemm>> create();
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;
  // Room for a matrix of n_elems weights decoded to bf16.
  Status reserve(GgmlType type, std::int64_t n_elems);
  // Room for n_elems activations rounded to bf16.
  Status reserve_activations(std::int64_t n_elems);
  Status matmul(GgmlType type, const void* w, std::int64_t n_in, std::int64_t n_out, const float* x,
                std::int64_t n_tokens, float* y);

 private:
  Gemm() = default;
  void* handle_ = nullptr;  // cublasHandle_t
  DeviceBuffer w16_, x16_;
};

// Stores k and v (n_tokens, kv_dim, f32) at `slots` (n_tokens) of one
// layer's key and value storage (n_slots, kv_dim) of `type` (f16: rounded
// to nearest even, as fp32_to_fp16).
Status kv_write(KvType type, void* k_layer, void* v_layer, std::int64_t kv_dim, const float* k, const float* v,
                std::int64_t n_tokens, const std::int32_t* slots);

// Paged attention, as CpuBackend::attention: for token t and query head h,
// out[t, h] = softmax_p(scale * q[t, h] . k_p) weighted sum of v_p over the
// positions p < n_ctx[t] of its sequence, whose slots are
// tables[t * table_stride + p / block] * block + p % block; key/value head
// h / (n_head / n_kv_head). Split-K (flash decoding): each (token, head)'s
// positions are cut into attention_splits() ranges computed by separate
// blocks with an online softmax, then merged, so one decode token at a long
// context still fills the device; no context limit. Heads of at most 256
// numbers (kInvalidArgument beyond). `workspace` holds the ranges' partial
// results and grows as needed (n_tokens * n_head * splits * (head_dim + 2)
// floats).
struct AttentionShape {
  std::int64_t n_tokens = 0;
  int n_head = 0, n_kv_head = 0, head_dim = 0;
  float scale = 1.0f;
  float softcap = 0.0f;           // > 0: scores become softcap * tanh(score / softcap)
  int window = 0;                 // > 0: a token attends to its last `window` positions
  int block = 16;                 // positions per KV block
  std::int64_t table_stride = 0;  // entries per token in `tables`
  int max_ctx = 0;                // the longest n_ctx (known on the host)
};
// Ranges per (token, head): about 1024 blocks in all, ranges of at least 32
// positions.
int attention_splits(std::int64_t n_tokens, int n_head, int max_ctx);
Status attention(const AttentionShape& s, const float* q, KvType type, const void* k_layer, const void* v_layer,
                 std::int64_t kv_dim, const std::int32_t* n_ctx, const std::int32_t* tables, float* out,
                 DeviceBuffer* workspace);

}  // namespace airlock::engine::cuda
