#include "cuda_ops.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <vector>

namespace airlock::engine::cuda {
namespace {

Status cuda_status(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return Status::ok();
  if (e == cudaErrorMemoryAllocation)
    return resource_exhausted(std::string("CUDA: ") + what + ": " + cudaGetErrorString(e));
  return internal_error(std::string("CUDA: ") + what + ": " + cudaGetErrorString(e));
}

// The launch's own error (bad configuration); errors while running surface
// at the next synchronising call.
Status launched(const char* what) { return cuda_status(cudaGetLastError(), what); }

constexpr int kThreads = 256;

unsigned blocks_for(std::int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

// Sum of v over the block (kThreads threads), returned to every thread.
__device__ double block_sum(double v) {
  __shared__ double partial[kThreads / 32];
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  double s = 0;
  for (int w = 0; w < kThreads / 32; ++w) s += partial[w];
  __syncthreads();  // partial is reused by the next call
  return s;
}

__global__ void rms_norm_kernel(const float* x, const float* w, std::int64_t dim, float eps, float* y) {
  const float* xr = x + blockIdx.x * dim;
  float* yr = y + blockIdx.x * dim;
  double ss = 0;
  for (std::int64_t i = threadIdx.x; i < dim; i += kThreads) ss += static_cast<double>(xr[i]) * xr[i];
  ss = block_sum(ss);
  const float inv = static_cast<float>(1.0 / sqrt(ss / static_cast<double>(dim) + eps));
  for (std::int64_t i = threadIdx.x; i < dim; i += kThreads) yr[i] = xr[i] * inv * w[i];
}

__global__ void layer_norm_kernel(const float* x, const float* w, const float* b, std::int64_t dim, float eps,
                                  float* y) {
  const float* xr = x + blockIdx.x * dim;
  float* yr = y + blockIdx.x * dim;
  double sum = 0;
  for (std::int64_t i = threadIdx.x; i < dim; i += kThreads) sum += xr[i];
  const double mean = block_sum(sum) / static_cast<double>(dim);
  double ss = 0;
  for (std::int64_t i = threadIdx.x; i < dim; i += kThreads) ss += (xr[i] - mean) * (xr[i] - mean);
  const double inv = 1.0 / sqrt(block_sum(ss) / static_cast<double>(dim) + eps);
  // Every thread has read its numbers above (block_sum synchronises), so y
  // may alias x.
  for (std::int64_t i = threadIdx.x; i < dim; i += kThreads)
    yr[i] = static_cast<float>((xr[i] - mean) * inv) * w[i] + b[i];
}

__global__ void add_kernel(float* y, const float* x, std::int64_t n) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) y[i] += x[i];
}

__global__ void add_bias_kernel(float* y, const float* bias, std::int64_t n, std::int64_t dim) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) y[i] += bias[i % dim];
}

__global__ void swiglu_kernel(const float* gate, const float* up, std::int64_t n, float* out) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) out[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

__global__ void gelu_kernel(const float* x, std::int64_t n, float* y) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const float v = x[i];
  y[i] = 0.5f * v * (1.0f + tanhf(0.79788456080286535588f * v * (1.0f + 0.044715f * v * v)));
}

// One thread per (token, rotated pair); the pair's angle is shared by every
// head, so each thread rotates that pair in all heads.
__global__ void rope_kernel(float* x, std::int64_t n_tokens, int n_heads, int head_dim, const std::int32_t* positions,
                            int n_rot, float freq_base, float freq_scale, bool neox, const float* freq_factors) {
  const int half = n_rot / 2;
  const std::int64_t job = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (job >= n_tokens * half) return;
  const std::int64_t t = job / half;
  const int i = static_cast<int>(job % half);
  double f = pow(static_cast<double>(freq_base), -2.0 * i / n_rot);
  if (freq_factors != nullptr) f /= freq_factors[i];
  const float theta = static_cast<float>(positions[t]) * freq_scale * static_cast<float>(f);
  const float c = cosf(theta), s = sinf(theta);
  const int a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
  for (int h = 0; h < n_heads; ++h) {
    float* v = x + (t * n_heads + h) * head_dim;
    const float x0 = v[a], x1 = v[b];
    v[a] = x0 * c - x1 * s;
    v[b] = x0 * s + x1 * c;
  }
}

// One thread per output number.
__global__ void get_rows_kernel(int type, const std::uint8_t* table, std::int64_t row_len, std::size_t row_bytes,
                                const std::int32_t* ids, std::int64_t n, float* out) {
  const std::int64_t job = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (job >= n * row_len) return;
  const std::int64_t r = job / row_len, i = job % row_len;
  const std::uint8_t* row = table + row_bytes * static_cast<std::size_t>(ids[r]);
  float v = 0;
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::kF32: v = reinterpret_cast<const float*>(row)[i]; break;
    case GgmlType::kF16: v = __half2float(reinterpret_cast<const __half*>(row)[i]); break;
    case GgmlType::kBF16: v = __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(row)[i]); break;
    case GgmlType::kQ8_0: {  // blocks of {f16 scale, 32 x int8}, 34 bytes
      const std::uint8_t* blk = row + 34 * (i / 32);
      v = __half2float(*reinterpret_cast<const __half*>(blk)) * static_cast<float>(reinterpret_cast<const std::int8_t*>(blk + 2)[i % 32]);
      break;
    }
    default: break;
  }
  out[job] = v;
}

}  // namespace

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // no driver or no device: not an error for the caller
    return 0;
  }
  return n;
}

std::string describe_device(int device) {
  cudaDeviceProp p{};
  if (cudaGetDeviceProperties(&p, device) != cudaSuccess) return "unknown CUDA device";
  return std::string(p.name) + ", " + std::to_string(p.totalGlobalMem >> 30) + " GiB, sm_" +
         std::to_string(p.major * 10 + p.minor);
}

Result<DeviceBuffer> DeviceBuffer::alloc(std::size_t bytes) {
  DeviceBuffer b;
  if (bytes != 0) {
    AIRLOCK_RETURN_IF_ERROR(cuda_status(cudaMalloc(&b.p_, bytes), "cudaMalloc"));
    b.bytes_ = bytes;
  }
  return Result<DeviceBuffer>(std::move(b));  // nvcc does not move the local implicitly
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (p_ != nullptr) cudaFree(p_);
    p_ = o.p_;
    bytes_ = o.bytes_;
    o.p_ = nullptr;
    o.bytes_ = 0;
  }
  return *this;
}

DeviceBuffer::~DeviceBuffer() {
  if (p_ != nullptr) cudaFree(p_);
}

Status to_device(void* device_dst, const void* host_src, std::size_t bytes) {
  return cuda_status(cudaMemcpy(device_dst, host_src, bytes, cudaMemcpyHostToDevice), "copy to the device");
}

Status to_host(void* host_dst, const void* device_src, std::size_t bytes) {
  return cuda_status(cudaMemcpy(host_dst, device_src, bytes, cudaMemcpyDeviceToHost), "copy to the host");
}

Status synchronize() { return cuda_status(cudaDeviceSynchronize(), "synchronize"); }

Status rms_norm(const float* x, const float* w, std::int64_t n_rows, std::int64_t dim, float eps, float* y) {
  if (n_rows == 0) return Status::ok();
  rms_norm_kernel<<<static_cast<unsigned>(n_rows), kThreads>>>(x, w, dim, eps, y);
  return launched("rms_norm");
}

Status layer_norm(const float* x, const float* w, const float* b, std::int64_t n_rows, std::int64_t dim, float eps,
                  float* y) {
  if (n_rows == 0) return Status::ok();
  layer_norm_kernel<<<static_cast<unsigned>(n_rows), kThreads>>>(x, w, b, dim, eps, y);
  return launched("layer_norm");
}

Status add(float* y, const float* x, std::int64_t n) {
  if (n == 0) return Status::ok();
  add_kernel<<<blocks_for(n), kThreads>>>(y, x, n);
  return launched("add");
}

Status add_bias(float* y, const float* bias, std::int64_t n_rows, std::int64_t dim) {
  if (n_rows * dim == 0) return Status::ok();
  add_bias_kernel<<<blocks_for(n_rows * dim), kThreads>>>(y, bias, n_rows * dim, dim);
  return launched("add_bias");
}

Status swiglu(const float* gate, const float* up, std::int64_t n, float* out) {
  if (n == 0) return Status::ok();
  swiglu_kernel<<<blocks_for(n), kThreads>>>(gate, up, n, out);
  return launched("swiglu");
}

Status gelu(const float* x, std::int64_t n, float* y) {
  if (n == 0) return Status::ok();
  gelu_kernel<<<blocks_for(n), kThreads>>>(x, n, y);
  return launched("gelu");
}

Status rope(float* x, std::int64_t n_tokens, int n_heads, int head_dim, const std::int32_t* positions,
            const RopeParams& p) {
  const std::int64_t jobs = n_tokens * (p.n_rot / 2);
  if (jobs == 0) return Status::ok();
  rope_kernel<<<blocks_for(jobs), kThreads>>>(x, n_tokens, n_heads, head_dim, positions, p.n_rot, p.freq_base,
                                              p.freq_scale, p.neox, p.freq_factors);
  return launched("rope");
}

Status get_rows(GgmlType type, const void* table, std::int64_t row_len, const std::int32_t* ids, std::int64_t n,
                float* out) {
  if (type != GgmlType::kF32 && type != GgmlType::kF16 && type != GgmlType::kBF16 && type != GgmlType::kQ8_0)
    return invalid_argument("CUDA get_rows: " + std::string(traits(type).name) + " tables are not supported yet");
  if (n * row_len == 0) return Status::ok();
  get_rows_kernel<<<blocks_for(n * row_len), kThreads>>>(static_cast<int>(type), static_cast<const std::uint8_t*>(table),
                                                         row_len, row_bytes(type, row_len), ids, n, out);
  return launched("get_rows");
}

}  // namespace airlock::engine::cuda
