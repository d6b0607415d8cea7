#include "cuda_ops.h"

#include "cuda_block.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cublas_v2.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <vector>

namespace airlock::engine::cuda {
namespace {

Status cuda_status(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return Status::ok();
  // A failed call also leaves its error as the thread's last error until
  // read; left there, a failed cudaMalloc would fail the next pass's first
  // launch check. Sticky errors (a kernel fault) come back regardless.
  (void)cudaGetLastError();
  if (e == cudaErrorMemoryAllocation)
    return resource_exhausted(std::string("CUDA: ") + what + ": " + cudaGetErrorString(e));
  return internal_error(std::string("CUDA: ") + what + ": " + cudaGetErrorString(e));
}

// The launch's own error (bad configuration); errors while running surface
// at the next synchronising call.
Status launched(const char* what) { return cuda_status(cudaGetLastError(), what); }

constexpr int kThreads = 256;

unsigned blocks_for(std::int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

__global__ void rms_norm_kernel(const float* x, const float* w, std::int64_t dim, float eps, float* y) {
  const float* xr = x + blockIdx.x * dim;
  float* yr = y + blockIdx.x * dim;
  double ss = 0;
  for (std::int64_t i = threadIdx.x; i < dim; i += kThreads) ss += static_cast<double>(xr[i]) * xr[i];
  ss = block_sum<kThreads>(ss);
  const float inv = static_cast<float>(1.0 / sqrt(ss / static_cast<double>(dim) + eps));
  for (std::int64_t i = threadIdx.x; i < dim; i += kThreads) yr[i] = xr[i] * inv * w[i];
}

__global__ void layer_norm_kernel(const float* x, const float* w, const float* b, std::int64_t dim, float eps,
                                  float* y) {
  const float* xr = x + blockIdx.x * dim;
  float* yr = y + blockIdx.x * dim;
  double sum = 0;
  for (std::int64_t i = threadIdx.x; i < dim; i += kThreads) sum += xr[i];
  const double mean = block_sum<kThreads>(sum) / static_cast<double>(dim);
  double ss = 0;
  for (std::int64_t i = threadIdx.x; i < dim; i += kThreads) ss += (xr[i] - mean) * (xr[i] - mean);
  const double inv = 1.0 / sqrt(block_sum<kThreads>(ss) / static_cast<double>(dim) + eps);
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

__device__ inline float gelu_tanh(float v) {
  return 0.5f * v * (1.0f + tanhf(0.79788456080286535588f * v * (1.0f + 0.044715f * v * v)));
}

__global__ void gelu_kernel(const float* x, std::int64_t n, float* y) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) y[i] = gelu_tanh(x[i]);
}

__global__ void geglu_kernel(const float* gate, const float* up, std::int64_t n, float* out) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) out[i] = gelu_tanh(gate[i]) * up[i];
}

__global__ void scale_kernel(float* x, std::int64_t n, float s) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) x[i] *= s;
}

__global__ void softcap_kernel(float* x, std::int64_t n, float cap) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) x[i] = cap * tanhf(x[i] / cap);
}

// One thread per (token, rotated pair); the pair's angle is shared by every
// head, so each thread rotates that pair in all heads.
__global__ void rope_kernel(float* x, std::int64_t n_tokens, int n_heads, int head_dim, const std::int32_t* positions,
                            int n_rot, float freq_base, float freq_scale, bool neox, const float* freq_factors,
                            float attn_factor) {
  const int half = n_rot / 2;
  const std::int64_t job = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (job >= n_tokens * half) return;
  const std::int64_t t = job / half;
  const int i = static_cast<int>(job % half);
  double f = pow(static_cast<double>(freq_base), -2.0 * i / n_rot);
  if (freq_factors != nullptr) f /= freq_factors[i];
  const float theta = static_cast<float>(positions[t]) * freq_scale * static_cast<float>(f);
  const float c = cosf(theta) * attn_factor, s = sinf(theta) * attn_factor;
  const int a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
  for (int h = 0; h < n_heads; ++h) {
    float* v = x + (t * n_heads + h) * head_dim;
    const float x0 = v[a], x1 = v[b];
    v[a] = x0 * c - x1 * s;
    v[b] = x0 * s + x1 * c;
  }
}

// ---------------------------------------------------------------- weights

// The (scale, min) pair j (0..7) of a Q4_K/Q5_K block's 12 packed bytes.
__host__ __device__ inline void scale_min_k4(int j, const std::uint8_t* q, int* sc, int* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

__host__ __device__ inline float f16(const std::uint8_t* p) {
  return __half2float(*reinterpret_cast<const __half*>(p));
}

// Element k of a row of `type`, decoded as ggml_types.cpp's dequantize_row
// (the same operations in the same order; nvcc may fuse a multiply-add).
// Host code too, so that the decoding is tested on machines without a GPU.
__host__ __device__ float weight_at(GgmlType type, const std::uint8_t* row, std::int64_t k) {
  switch (type) {
    case GgmlType::kF32: return reinterpret_cast<const float*>(row)[k];
    case GgmlType::kF16: return __half2float(reinterpret_cast<const __half*>(row)[k]);
    case GgmlType::kBF16: return __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(row)[k]);
    case GgmlType::kQ8_0: {  // {f16 d; int8 qs[32]}
      const std::uint8_t* b = row + 34 * (k / 32);
      return static_cast<float>(reinterpret_cast<const std::int8_t*>(b + 2)[k % 32]) * f16(b);
    }
    case GgmlType::kQ4_0: {  // {f16 d; u8 qs[16]}: low nibbles first, then high
      const std::uint8_t* b = row + 18 * (k / 32);
      const int j = static_cast<int>(k % 32);
      const int q = j < 16 ? (b[2 + j] & 0x0F) : (b[2 + j - 16] >> 4);
      return static_cast<float>(q - 8) * f16(b);
    }
    case GgmlType::kQ4_K:
    case GgmlType::kQ5_K: {  // {f16 d, dmin; u8 scales[12]; (Q5_K: u8 qh[32];) u8 qs[128]}
      const bool five = type == GgmlType::kQ5_K;
      const std::uint8_t* b = row + (five ? 176 : 144) * (k / 256);
      const int j = static_cast<int>(k % 256), c = j / 64, l = j % 64;
      int sc = 0, m = 0;
      scale_min_k4(2 * c + (l >= 32 ? 1 : 0), b + 4, &sc, &m);
      const std::uint8_t* qs = b + (five ? 48 : 16);
      const std::uint8_t q = qs[32 * c + l % 32];
      int v = l < 32 ? (q & 0xF) : (q >> 4);
      if (five) v += (b[16 + l % 32] & ((l < 32 ? 1 : 2) << (2 * c))) ? 16 : 0;
      const float d1 = f16(b) * static_cast<float>(sc), m1 = f16(b + 2) * static_cast<float>(m);
      return d1 * static_cast<float>(v) - m1;
    }
    case GgmlType::kQ6_K: {  // {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}
      const std::uint8_t* b = row + 210 * (k / 256);
      const int j = static_cast<int>(k % 256), h = j / 128, r = j % 128, quarter = r / 32, l = r % 32;
      const std::uint8_t* ql = b + 64 * h;
      const std::uint8_t qh = b[128 + 32 * h + l];
      const auto* sc = reinterpret_cast<const std::int8_t*>(b + 192 + 8 * h);
      // Quarters 0..3 of a half: low nibbles of ql[l], of ql[l + 32], then
      // high nibbles of each; two bits of qh[l] each.
      const std::uint8_t qlb = ql[l + ((quarter & 1) ? 32 : 0)];
      const int q = ((quarter < 2 ? (qlb & 0xF) : (qlb >> 4)) | (((qh >> (2 * quarter)) & 3) << 4)) - 32;
      return f16(b + 208) * static_cast<float>(sc[l / 16 + 2 * quarter]) * static_cast<float>(q);
    }
    default: return 0.0f;
  }
}

// One thread per output number.
__global__ void get_rows_kernel(GgmlType type, const std::uint8_t* table, std::int64_t row_len, std::size_t row_bytes,
                                const std::int32_t* ids, std::int64_t n, float* out) {
  const std::int64_t job = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (job >= n * row_len) return;
  const std::int64_t r = job / row_len, i = job % row_len;
  out[job] = weight_at(type, table + row_bytes * static_cast<std::size_t>(ids[r]), i);
}

constexpr int kMatmulTokens = 8;  // tokens per pass over a row

// One warp per output row; each lane takes every 32nd weight of the row and
// multiplies it into up to kMatmulTokens tokens' partial sums.
__global__ void matmul_kernel(GgmlType type, const std::uint8_t* w, std::size_t row_bytes, std::int64_t n_in,
                              std::int64_t n_out, const float* x, std::int64_t n_tokens, float* y) {
  const std::int64_t r = blockIdx.x * static_cast<std::int64_t>(blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= n_out) return;
  const std::uint8_t* row = w + row_bytes * static_cast<std::size_t>(r);
  for (std::int64_t t0 = 0; t0 < n_tokens; t0 += kMatmulTokens) {
    const int nt = static_cast<int>(n_tokens - t0 < kMatmulTokens ? n_tokens - t0 : kMatmulTokens);
    float acc[kMatmulTokens] = {};
    for (std::int64_t k = lane; k < n_in; k += 32) {
      const float wk = weight_at(type, row, k);
      for (int t = 0; t < nt; ++t) acc[t] += wk * x[(t0 + t) * n_in + k];
    }
    for (int t = 0; t < nt; ++t) {
      float v = acc[t];
      for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
      if (lane == 0) y[(t0 + t) * n_out + r] = v;
    }
  }
}

// The fast small-batch kernels: one warp per output row as above, but each
// lane decodes a chunk of consecutive weights from one wide load (16 bytes
// of F16/BF16/F32, 8 bytes of a Q8_0 block's quants) and multiplies it into
// NT tokens at once, NT a compile-time count (1 to 8) so the partial sums
// stay in registers. The decoding is the same arithmetic as weight_at.
struct ChunkF32 {
  static constexpr int kChunk = 4;
  __device__ static void load(const std::uint8_t* row, std::int64_t c, float* w) {
    const float4 v = reinterpret_cast<const float4*>(row)[c];
    w[0] = v.x; w[1] = v.y; w[2] = v.z; w[3] = v.w;
  }
};
// Eight 16-bit numbers from one 16-byte load, each decoded by Half16 (the
// low half of a 32-bit word is the first number: little-endian).
template <typename Half16>
struct Chunk16 {
  static constexpr int kChunk = 8;
  __device__ static void load(const std::uint8_t* row, std::int64_t c, float* w) {
    const uint4 v = reinterpret_cast<const uint4*>(row)[c];
    const unsigned parts[4] = {v.x, v.y, v.z, v.w};
    for (int i = 0; i < 4; ++i) {
      w[2 * i] = Half16::decode(parts[i] & 0xFFFFu);
      w[2 * i + 1] = Half16::decode(parts[i] >> 16);
    }
  }
};
struct DecodeF16 {
  __device__ static float decode(unsigned bits) { return __half2float(__ushort_as_half(static_cast<unsigned short>(bits))); }
};
struct DecodeBF16 {
  __device__ static float decode(unsigned bits) { return __uint_as_float(bits << 16); }
};
using ChunkF16 = Chunk16<DecodeF16>;
using ChunkBF16 = Chunk16<DecodeBF16>;
struct ChunkQ8_0 {  // a quarter of a 34-byte block: its scale and 8 quants (2-byte aligned)
  static constexpr int kChunk = 8;
  __device__ static void load(const std::uint8_t* row, std::int64_t c, float* w) {
    const std::uint8_t* b = row + 34 * (c / 4);
    const float d = f16(b);
    const auto* q = reinterpret_cast<const unsigned short*>(b + 2 + 8 * (c % 4));
    for (int i = 0; i < 4; ++i) {
      const unsigned short pair = q[i];
      w[2 * i] = static_cast<float>(static_cast<std::int8_t>(pair & 0xFF)) * d;
      w[2 * i + 1] = static_cast<float>(static_cast<std::int8_t>(pair >> 8)) * d;
    }
  }
};

// A row may be shared by `split` warps of a block (1, 2, 4 or 8), each
// taking every split-th run of 32 chunks, their sums added in shared memory:
// matrices of few rows (a layer's key and value projections) still give
// every SM enough warps in flight to keep its memory requests coming.
template <typename Chunk, int NT>
__global__ void matvec_kernel(const std::uint8_t* w, std::size_t row_bytes, std::int64_t n_in, std::int64_t n_out,
                              const float* x, float* y, int split) {
  constexpr int kWarps = kThreads / 32;
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const std::int64_t r = blockIdx.x * static_cast<std::int64_t>(kWarps / split) + warp / split;
  const int part = warp % split;
  constexpr int C = Chunk::kChunk;
  float acc[NT] = {};
  if (r < n_out) {  // no early return: every thread reaches the __syncthreads below
    const std::uint8_t* row = w + row_bytes * static_cast<std::size_t>(r);
    const std::int64_t n_chunks = n_in / C;
#pragma unroll 2
    for (std::int64_t c = lane + 32 * part; c < n_chunks; c += 32 * split) {
      float wv[C];
      Chunk::load(row, c, wv);
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        const float4* xp = reinterpret_cast<const float4*>(x + t * n_in + c * C);
#pragma unroll
        for (int i = 0; i < C / 4; ++i) {
          const float4 xv = xp[i];
          acc[t] += wv[4 * i] * xv.x + wv[4 * i + 1] * xv.y + wv[4 * i + 2] * xv.z + wv[4 * i + 3] * xv.w;
        }
      }
    }
  }
  __shared__ float parts[kWarps][NT];
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    float v = acc[t];
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) parts[warp][t] = v;
  }
  __syncthreads();
  if (r < n_out && part == 0 && lane < NT) {
    float v = 0.0f;
    for (int k = 0; k < split; ++k) v += parts[warp + k][lane];
    y[lane * n_out + r] = v;
  }
}

template <typename Chunk>
void launch_matvec(int nt, unsigned grid, int split, const std::uint8_t* w, std::size_t rb, std::int64_t n_in,
                   std::int64_t n_out, const float* x, float* y) {
  switch (nt) {
    case 1: matvec_kernel<Chunk, 1><<<grid, kThreads>>>(w, rb, n_in, n_out, x, y, split); break;
    case 2: matvec_kernel<Chunk, 2><<<grid, kThreads>>>(w, rb, n_in, n_out, x, y, split); break;
    case 3: matvec_kernel<Chunk, 3><<<grid, kThreads>>>(w, rb, n_in, n_out, x, y, split); break;
    case 4: matvec_kernel<Chunk, 4><<<grid, kThreads>>>(w, rb, n_in, n_out, x, y, split); break;
    case 5: matvec_kernel<Chunk, 5><<<grid, kThreads>>>(w, rb, n_in, n_out, x, y, split); break;
    case 6: matvec_kernel<Chunk, 6><<<grid, kThreads>>>(w, rb, n_in, n_out, x, y, split); break;
    case 7: matvec_kernel<Chunk, 7><<<grid, kThreads>>>(w, rb, n_in, n_out, x, y, split); break;
    default: matvec_kernel<Chunk, 8><<<grid, kThreads>>>(w, rb, n_in, n_out, x, y, split); break;
  }
}

// Streaming multiprocessors of the current device (80 if it cannot be
// read), looked up once per device.
int sm_count() {
  static std::atomic<int> cached[64] = {};
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= 64) {
    (void)cudaGetLastError();
    return 80;
  }
  int n = cached[device].load(std::memory_order_relaxed);
  if (n > 0) return n;
  if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || n <= 0) {
    (void)cudaGetLastError();
    return 80;
  }
  cached[device].store(n, std::memory_order_relaxed);
  return n;
}

// The fast kernel for (type, n_in, pointers) or false: other types and rows
// that are not whole chunks or not aligned for the wide loads take the
// reference kernel.
bool fast_matvec(GgmlType type, const void* w, std::int64_t n_in, std::int64_t n_out, const float* x,
                 std::int64_t n_tokens, float* y) {
  const auto aligned = [](const void* p, std::size_t a) { return reinterpret_cast<std::uintptr_t>(p) % a == 0; };
  if (n_in % 32 != 0 || !aligned(x, 16) || !aligned(w, 16)) return false;
  const int split = matvec_split(n_out, sm_count());
  const std::int64_t rows_per_block = kThreads / 32 / split;
  const unsigned grid = static_cast<unsigned>((n_out + rows_per_block - 1) / rows_per_block);
  const auto* wb = static_cast<const std::uint8_t*>(w);
  const std::size_t rb = row_bytes(type, n_in);
  for (std::int64_t t0 = 0; t0 < n_tokens; t0 += kMatmulTokens) {
    const int nt = static_cast<int>(std::min<std::int64_t>(kMatmulTokens, n_tokens - t0));
    const float* xt = x + t0 * n_in;
    float* yt = y + t0 * n_out;
    switch (type) {
      case GgmlType::kF32: launch_matvec<ChunkF32>(nt, grid, split, wb, rb, n_in, n_out, xt, yt); break;
      case GgmlType::kF16: launch_matvec<ChunkF16>(nt, grid, split, wb, rb, n_in, n_out, xt, yt); break;
      case GgmlType::kBF16: launch_matvec<ChunkBF16>(nt, grid, split, wb, rb, n_in, n_out, xt, yt); break;
      case GgmlType::kQ8_0: launch_matvec<ChunkQ8_0>(nt, grid, split, wb, rb, n_in, n_out, xt, yt); break;
      default: return false;
    }
  }
  return true;
}

// Rows of a weight matrix decoded to bf16 for cuBLAS (one thread per number).
__global__ void weights_to_bf16_kernel(GgmlType type, const std::uint8_t* w, std::size_t row_bytes, std::int64_t n_in,
                                       std::int64_t n, __nv_bfloat16* out) {
  const std::int64_t job = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (job >= n) return;
  out[job] = __float2bfloat16(weight_at(type, w + row_bytes * static_cast<std::size_t>(job / n_in), job % n_in));
}

__global__ void f32_to_bf16_kernel(const float* x, std::int64_t n, __nv_bfloat16* out) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) out[i] = __float2bfloat16(x[i]);
}

// ---------------------------------------------------------------- KV cache

__device__ inline float load_kv(const float* p) { return *p; }
__device__ inline float load_kv(const __half* p) { return __half2float(*p); }
__device__ inline void store_kv(float* p, float v) { *p = v; }
__device__ inline void store_kv(__half* p, float v) { *p = __float2half_rn(v); }

template <typename T>
__global__ void kv_write_kernel(T* kd, T* vd, std::int64_t kv_dim, const float* k, const float* v,
                                std::int64_t n_tokens, const std::int32_t* slots) {
  const std::int64_t job = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (job >= n_tokens * kv_dim) return;
  const std::int64_t t = job / kv_dim, i = job % kv_dim;
  const std::int64_t at = static_cast<std::int64_t>(slots[t]) * kv_dim + i;
  store_kv(kd + at, k[job]);
  store_kv(vd + at, v[job]);
}

// Split-K paged attention (flash decoding). The positions of each (token,
// query head) are cut into n_splits ranges; a block of kAttnWarps warps
// takes one range, each warp one position at a time: its lanes hold
// head_dim / 32 numbers of q, of the key and of the running output, so the
// key and value rows are read whole by one warp (coalesced), and the warp
// keeps an online softmax (running maximum m, sum l, output scaled to m).
// The warps then merge into the range's (m, l, output); a second kernel
// merges the ranges. No context limit, and a decode step of one token
// still spreads over many blocks.
constexpr int kAttnWarps = 4;
constexpr int kMaxHeadDim = 256;
constexpr int kAttnLaneDims = kMaxHeadDim / 32;

// exp(m - top), 0 for an empty range (m = -inf).
__device__ inline float rescale(float m, float top) { return m == -INFINITY ? 0.0f : expf(m - top); }

template <typename T>
__global__ void attention_split_kernel(AttentionShape s, int split_len, const float* q, const T* kd, const T* vd,
                                       std::int64_t kv_dim, const std::int32_t* n_ctx, const std::int32_t* tables,
                                       float* part_out, float* part_ml) {
  const std::int64_t th = blockIdx.x;  // token * n_head + head
  const int split = static_cast<int>(blockIdx.y), n_splits = static_cast<int>(gridDim.y);
  const std::int64_t t = th / s.n_head;
  const int h = static_cast<int>(th % s.n_head);
  const int kvh = h / (s.n_head / s.n_kv_head);
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  // the ranges count from the first position (a sliding window's start)
  const int first = s.window > 0 ? max(0, n_ctx[t] - s.window) : 0;
  const int p0 = first + split * split_len, p1 = min(n_ctx[t], p0 + split_len);
  const std::int32_t* table = tables + t * s.table_stride;
  const float* qh = q + th * s.head_dim;
  float qr[kAttnLaneDims], acc[kAttnLaneDims];
#pragma unroll
  for (int r = 0; r < kAttnLaneDims; ++r) {
    const int d = lane + 32 * r;
    qr[r] = d < s.head_dim ? qh[d] * s.scale : 0.0f;
    acc[r] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  for (int p = p0 + warp; p < p1; p += kAttnWarps) {
    const std::int64_t slot = static_cast<std::int64_t>(table[p / s.block]) * s.block + p % s.block;
    const std::int64_t at = slot * kv_dim + static_cast<std::int64_t>(kvh) * s.head_dim;
    float dot = 0.0f;
#pragma unroll
    for (int r = 0; r < kAttnLaneDims; ++r) {
      const int d = lane + 32 * r;
      if (d < s.head_dim) dot += qr[r] * load_kv(kd + at + d);
    }
    for (int o = 16; o > 0; o /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, o);
    if (s.softcap > 0) dot = s.softcap * tanhf(dot / s.softcap);
    const float m_new = fmaxf(m, dot);
    const float keep = rescale(m, m_new), e = expf(dot - m_new);
    l = l * keep + e;
#pragma unroll
    for (int r = 0; r < kAttnLaneDims; ++r) {
      const int d = lane + 32 * r;
      if (d < s.head_dim) acc[r] = acc[r] * keep + e * load_kv(vd + at + d);
    }
    m = m_new;
  }
  __shared__ float w_m[kAttnWarps], w_l[kAttnWarps], w_out[kAttnWarps][kMaxHeadDim];
  if (lane == 0) {
    w_m[warp] = m;
    w_l[warp] = l;
  }
#pragma unroll
  for (int r = 0; r < kAttnLaneDims; ++r) {
    const int d = lane + 32 * r;
    if (d < s.head_dim) w_out[warp][d] = acc[r];
  }
  __syncthreads();
  float top = -INFINITY;
  for (int w = 0; w < kAttnWarps; ++w) top = fmaxf(top, w_m[w]);
  const std::int64_t part = th * n_splits + split;
  for (int d = static_cast<int>(threadIdx.x); d < s.head_dim; d += 32 * kAttnWarps) {
    float o = 0.0f;
    for (int w = 0; w < kAttnWarps; ++w) o += w_out[w][d] * rescale(w_m[w], top);
    part_out[part * s.head_dim + d] = o;
  }
  if (threadIdx.x == 0) {
    float sum = 0.0f;
    for (int w = 0; w < kAttnWarps; ++w) sum += w_l[w] * rescale(w_m[w], top);
    part_ml[2 * part] = top;
    part_ml[2 * part + 1] = sum;
  }
}

// out[t, h] from the ranges' (m, l, output): one block per (token, head).
__global__ void attention_merge_kernel(int head_dim, int n_splits, const float* part_out, const float* part_ml,
                                       float* out) {
  const std::int64_t th = blockIdx.x;
  const float* ml = part_ml + 2 * th * n_splits;
  float top = -INFINITY;
  for (int i = 0; i < n_splits; ++i) top = fmaxf(top, ml[2 * i]);
  float sum = 0.0f;
  for (int i = 0; i < n_splits; ++i) sum += ml[2 * i + 1] * rescale(ml[2 * i], top);
  const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;  // no position at all: zeros, as the CPU
  for (int d = static_cast<int>(threadIdx.x); d < head_dim; d += blockDim.x) {
    float o = 0.0f;
    for (int i = 0; i < n_splits; ++i) o += part_out[(th * n_splits + i) * head_dim + d] * rescale(ml[2 * i], top);
    out[th * head_dim + d] = o * inv;
  }
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

Status DeviceBuffer::grow(std::size_t bytes) {
  if (bytes_ >= bytes) return Status::ok();
  *this = DeviceBuffer();
  AIRLOCK_ASSIGN_OR_RETURN(*this, alloc(bytes));
  return Status::ok();
}

DeviceBuffer::~DeviceBuffer() {
  if (p_ != nullptr) cudaFree(p_);
}

PinnedBuffer& PinnedBuffer::operator=(PinnedBuffer&& o) noexcept {
  if (this != &o) {
    if (p_ != nullptr) cudaFreeHost(p_);
    p_ = o.p_;
    bytes_ = o.bytes_;
    o.p_ = nullptr;
    o.bytes_ = 0;
  }
  return *this;
}

PinnedBuffer::~PinnedBuffer() {
  if (p_ != nullptr) cudaFreeHost(p_);
}

bool PinnedBuffer::grow(std::size_t bytes) {
  if (bytes_ >= bytes) return true;
  *this = PinnedBuffer();
  if (cudaHostAlloc(&p_, bytes, cudaHostAllocDefault) != cudaSuccess) {
    (void)cudaGetLastError();
    p_ = nullptr;
    return false;
  }
  bytes_ = bytes;
  return true;
}

Status copy_async(void* dst, const void* src, std::size_t bytes) {
  return cuda_status(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, cudaStreamPerThread), "queued copy");
}

Status to_device(void* device_dst, const void* host_src, std::size_t bytes) {
  return cuda_status(cudaMemcpy(device_dst, host_src, bytes, cudaMemcpyHostToDevice), "copy to the device");
}

Status to_host(void* host_dst, const void* device_src, std::size_t bytes) {
  return cuda_status(cudaMemcpy(host_dst, device_src, bytes, cudaMemcpyDeviceToHost), "copy to the host");
}

Status synchronize() { return cuda_status(cudaStreamSynchronize(cudaStreamPerThread), "synchronize"); }

Status check_cuda(int cuda_error, const char* what) { return cuda_status(static_cast<cudaError_t>(cuda_error), what); }

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

Status geglu(const float* gate, const float* up, std::int64_t n, float* out) {
  if (n == 0) return Status::ok();
  geglu_kernel<<<blocks_for(n), kThreads>>>(gate, up, n, out);
  return launched("geglu");
}

Status scale(float* x, std::int64_t n, float s) {
  if (n == 0) return Status::ok();
  scale_kernel<<<blocks_for(n), kThreads>>>(x, n, s);
  return launched("scale");
}

Status softcap(float* x, std::int64_t n, float cap) {
  if (n == 0) return Status::ok();
  if (!(cap > 0)) return invalid_argument("CUDA softcap: the cap must be positive");
  softcap_kernel<<<blocks_for(n), kThreads>>>(x, n, cap);
  return launched("softcap");
}

Status rope(float* x, std::int64_t n_tokens, int n_heads, int head_dim, const std::int32_t* positions,
            const RopeParams& p) {
  const std::int64_t jobs = n_tokens * (p.n_rot / 2);
  if (jobs == 0) return Status::ok();
  rope_kernel<<<blocks_for(jobs), kThreads>>>(x, n_tokens, n_heads, head_dim, positions, p.n_rot, p.freq_base,
                                              p.freq_scale, p.neox, p.freq_factors, p.attn_factor);
  return launched("rope");
}

float decode_weight(GgmlType type, const void* row, std::int64_t k) {
  return weight_at(type, static_cast<const std::uint8_t*>(row), k);
}

bool supported(GgmlType type) {
  switch (type) {
    case GgmlType::kF32: case GgmlType::kF16: case GgmlType::kBF16: case GgmlType::kQ8_0: case GgmlType::kQ4_0:
    case GgmlType::kQ4_K: case GgmlType::kQ5_K: case GgmlType::kQ6_K:
      return true;
    default:
      return false;
  }
}

Status get_rows(GgmlType type, const void* table, std::int64_t row_len, const std::int32_t* ids, std::int64_t n,
                float* out) {
  if (!supported(type)) return invalid_argument("CUDA get_rows: " + std::string(traits(type).name) + " is not supported");
  if (n * row_len == 0) return Status::ok();
  get_rows_kernel<<<blocks_for(n * row_len), kThreads>>>(type, static_cast<const std::uint8_t*>(table), row_len,
                                                         row_bytes(type, row_len), ids, n, out);
  return launched("get_rows");
}

Status matmul(GgmlType type, const void* w, std::int64_t n_in, std::int64_t n_out, const float* x,
              std::int64_t n_tokens, float* y) {
  if (!supported(type)) return invalid_argument("CUDA matmul: " + std::string(traits(type).name) + " is not supported");
  if (n_in % traits(type).block_elems != 0)
    return invalid_argument("CUDA matmul: rows of " + std::to_string(n_in) + " are not whole blocks");
  if (n_out * n_tokens == 0) return Status::ok();
  if (fast_matvec(type, w, n_in, n_out, x, n_tokens, y)) return launched("matmul");
  constexpr int kRowsPerBlock = kThreads / 32;
  matmul_kernel<<<static_cast<unsigned>((n_out + kRowsPerBlock - 1) / kRowsPerBlock), kThreads>>>(
      type, static_cast<const std::uint8_t*>(w), row_bytes(type, n_in), n_in, n_out, x, n_tokens, y);
  return launched("matmul");
}

Status kv_write(KvType type, void* k_layer, void* v_layer, std::int64_t kv_dim, const float* k, const float* v,
                std::int64_t n_tokens, const std::int32_t* slots) {
  if (n_tokens * kv_dim == 0) return Status::ok();
  if (type == KvType::kF16)
    kv_write_kernel<<<blocks_for(n_tokens * kv_dim), kThreads>>>(static_cast<__half*>(k_layer), static_cast<__half*>(v_layer),
                                                                 kv_dim, k, v, n_tokens, slots);
  else
    kv_write_kernel<<<blocks_for(n_tokens * kv_dim), kThreads>>>(static_cast<float*>(k_layer), static_cast<float*>(v_layer),
                                                                 kv_dim, k, v, n_tokens, slots);
  return launched("kv_write");
}

int matvec_split(std::int64_t n_out, int n_sm) {
  // About 48 warps per SM in flight; a row never spread over more than the
  // 8 warps of a block.
  const std::int64_t want = static_cast<std::int64_t>(std::max(1, n_sm)) * 48;
  int split = 1;
  while (split < 8 && n_out * split < want) split *= 2;
  return split;
}

int attention_splits(std::int64_t n_tokens, int n_head, int max_ctx) {
  // Enough blocks to fill a large GPU (about 1024), ranges of at least 32
  // positions, one range when the tokens and heads alone fill the device.
  const std::int64_t heads = std::max<std::int64_t>(1, n_tokens * n_head);
  const std::int64_t want = (1024 + heads - 1) / heads;
  const std::int64_t most = std::max<std::int64_t>(1, (max_ctx + 31) / 32);
  return static_cast<int>(std::clamp<std::int64_t>(want, 1, std::min<std::int64_t>(most, 65535)));
}

Status attention(const AttentionShape& s, const float* q, KvType type, const void* k_layer, const void* v_layer,
                 std::int64_t kv_dim, const std::int32_t* n_ctx, const std::int32_t* tables, float* out,
                 DeviceBuffer* workspace) {
  if (s.n_tokens == 0) return Status::ok();
  if (s.n_head <= 0 || s.n_kv_head <= 0 || s.n_head % s.n_kv_head != 0 || s.head_dim <= 0 || s.block <= 0)
    return invalid_argument("CUDA attention: bad head counts or block size");
  if (s.head_dim > kMaxHeadDim)
    return invalid_argument("CUDA attention: heads of " + std::to_string(s.head_dim) + " numbers (at most " +
                            std::to_string(kMaxHeadDim) + ")");
  if (s.max_ctx < 1) return invalid_argument("CUDA attention: every token attends to at least one position");
  // The most positions a token attends to (a window holds fewer than its
  // context): the ranges cover them from its first position.
  const int span = s.window > 0 ? std::min(s.max_ctx, s.window) : s.max_ctx;
  const int n_splits = attention_splits(s.n_tokens, s.n_head, span);
  const int split_len = (span + n_splits - 1) / n_splits;
  const std::int64_t parts = s.n_tokens * s.n_head * n_splits;
  const std::size_t bytes = static_cast<std::size_t>(parts * (s.head_dim + 2)) * sizeof(float);
  AIRLOCK_RETURN_IF_ERROR(workspace->grow(bytes));
  float* part_out = workspace->as<float>();
  float* part_ml = part_out + parts * s.head_dim;
  const dim3 grid(static_cast<unsigned>(s.n_tokens * s.n_head), static_cast<unsigned>(n_splits));
  if (type == KvType::kF16)
    attention_split_kernel<<<grid, 32 * kAttnWarps>>>(s, split_len, q, static_cast<const __half*>(k_layer),
                                                      static_cast<const __half*>(v_layer), kv_dim, n_ctx, tables,
                                                      part_out, part_ml);
  else
    attention_split_kernel<<<grid, 32 * kAttnWarps>>>(s, split_len, q, static_cast<const float*>(k_layer),
                                                      static_cast<const float*>(v_layer), kv_dim, n_ctx, tables,
                                                      part_out, part_ml);
  AIRLOCK_RETURN_IF_ERROR(launched("attention"));
  attention_merge_kernel<<<static_cast<unsigned>(s.n_tokens * s.n_head), 128>>>(s.head_dim, n_splits, part_out,
                                                                               part_ml, out);
  return launched("attention merge");
}

namespace {

Status cublas_status(cublasStatus_t e, const char* what) {
  if (e == CUBLAS_STATUS_SUCCESS) return Status::ok();
  if (e == CUBLAS_STATUS_ALLOC_FAILED) return resource_exhausted(std::string("cuBLAS: ") + what + ": out of memory");
  return internal_error(std::string("cuBLAS: ") + what + ": " + cublasGetStatusString(e));
}

}  // namespace

Result<std::unique_ptr<Gemm>> Gemm::create() {
  cublasHandle_t h = nullptr;
  AIRLOCK_RETURN_IF_ERROR(cublas_status(cublasCreate(&h), "cublasCreate"));
  std::unique_ptr<Gemm> g(new Gemm());
  g->handle_ = h;
  // The default math: SGEMM in full f32 (TF32 only with
  // CUBLAS_TF32_TENSOR_OP_MATH, never set here); the bf16 GEMM on tensor
  // cores with f32 sums.
  AIRLOCK_RETURN_IF_ERROR(cublas_status(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH), "cublasSetMathMode"));
  // On the calling thread's default stream, as every other operation here
  // (the library is built with per-thread default streams; cuBLAS itself
  // would use the legacy stream).
  AIRLOCK_RETURN_IF_ERROR(cublas_status(cublasSetStream(h, cudaStreamPerThread), "cublasSetStream"));
  return Result<std::unique_ptr<Gemm>>(std::move(g));  // nvcc does not move the local implicitly
}

Gemm::~Gemm() {
  if (handle_ != nullptr) cublasDestroy(static_cast<cublasHandle_t>(handle_));
}

Status Gemm::reserve(GgmlType type, std::int64_t n_elems) {
  if (type == GgmlType::kF32 || type == GgmlType::kBF16) return Status::ok();  // used as stored
  return w16_.grow(static_cast<std::size_t>(n_elems) * sizeof(__nv_bfloat16));
}

Status Gemm::reserve_activations(std::int64_t n_elems) {
  return x16_.grow(static_cast<std::size_t>(n_elems) * sizeof(__nv_bfloat16));
}

Status Gemm::matmul(GgmlType type, const void* w, std::int64_t n_in, std::int64_t n_out, const float* x,
                    std::int64_t n_tokens, float* y) {
  if (!supported(type)) return invalid_argument("CUDA GEMM: " + std::string(traits(type).name) + " is not supported");
  if (n_in % traits(type).block_elems != 0)
    return invalid_argument("CUDA GEMM: rows of " + std::to_string(n_in) + " are not whole blocks");
  if (n_out * n_tokens == 0) return Status::ok();
  if (n_in > INT32_MAX || n_out > INT32_MAX || n_tokens > INT32_MAX)
    return invalid_argument("CUDA GEMM: dimensions beyond cuBLAS's int range");
  auto h = static_cast<cublasHandle_t>(handle_);
  const float one = 1.0f, zero = 0.0f;
  const int m = static_cast<int>(n_out), n = static_cast<int>(n_tokens), k = static_cast<int>(n_in);
  // Row-major y (n_tokens, n_out) is column-major y^T (n_out, n_tokens) =
  // w (n_out, n_in) x^T: w's rows are the columns of a column-major
  // (n_in, n_out) matrix, used transposed; x^T is column-major (n_in, n_tokens).
  if (type == GgmlType::kF32)
    return cublas_status(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &one, static_cast<const float*>(w), k, x, k,
                                     &zero, y, m),
                         "SGEMM");
  const void* w16 = w;
  if (type != GgmlType::kBF16) {
    AIRLOCK_RETURN_IF_ERROR(reserve(type, n_in * n_out));
    weights_to_bf16_kernel<<<blocks_for(n_in * n_out), kThreads>>>(type, static_cast<const std::uint8_t*>(w),
                                                                   row_bytes(type, n_in), n_in, n_in * n_out,
                                                                   w16_.as<__nv_bfloat16>());
    AIRLOCK_RETURN_IF_ERROR(launched("GEMM weights to bf16"));
    w16 = w16_.get();
  }
  AIRLOCK_RETURN_IF_ERROR(x16_.grow(static_cast<std::size_t>(n_tokens * n_in) * sizeof(__nv_bfloat16)));
  f32_to_bf16_kernel<<<blocks_for(n_tokens * n_in), kThreads>>>(x, n_tokens * n_in, x16_.as<__nv_bfloat16>());
  AIRLOCK_RETURN_IF_ERROR(launched("GEMM activations to bf16"));
  return cublas_status(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &one, w16, CUDA_R_16BF, k, x16_.get(),
                                    CUDA_R_16BF, k, &zero, y, CUDA_R_32F, m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                       "GemmEx bf16");
}

}  // namespace airlock::engine::cuda
