// matmul_rows: the CPU backend's hot loop. Each weight row is read once and
// used for every token of the batch (rows outer, tokens inner), so decode
// streams the weights exactly once and prefill reuses them from cache.
//
// Two implementations: a portable scalar one (the reference) and an
// AVX2+FMA+F16C one compiled with a target attribute and chosen at run time,
// so the binary still runs on CPUs without AVX2.
#include <immintrin.h>

#include <atomic>
#include <cstring>
#include <vector>

#include "airlock/engine/kernels.h"

namespace airlock::engine {
namespace {

std::atomic<bool> g_force_scalar{false};

bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c");
  return has;
}

// Scalar: dequantise the row, then dot it with every token.
void matmul_rows_scalar(GgmlType type, const std::uint8_t* w, std::int64_t n_in, const float* x,
                        std::int64_t n_tokens, float* y, std::int64_t n_out, std::int64_t r0, std::int64_t r1) {
  thread_local std::vector<float> row;
  row.resize(static_cast<std::size_t>(n_in));
  const std::size_t stride = row_bytes(type, n_in);
  for (std::int64_t r = r0; r < r1; ++r) {
    dequantize_row(type, w + stride * static_cast<std::size_t>(r), row.data(), n_in);
    for (std::int64_t t = 0; t < n_tokens; ++t) {
      const float* xt = x + t * n_in;
      float s = 0;
      for (std::int64_t k = 0; k < n_in; ++k) s += row[k] * xt[k];
      y[t * n_out + r] = s;
    }
  }
}

#define AIRLOCK_AVX2 __attribute__((target("avx2,fma,f16c")))

AIRLOCK_AVX2 inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
  return _mm_cvtss_f32(lo);
}

AIRLOCK_AVX2 inline float dot_f32(const float* a, const float* b, std::int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  std::int64_t k = 0;
  for (; k + 16 <= n; k += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + k + 8), _mm256_loadu_ps(b + k + 8), acc1);
  }
  float s = hsum(_mm256_add_ps(acc0, acc1));
  for (; k < n; ++k) s += a[k] * b[k];
  return s;
}

// int8 x 32 -> four float vectors
AIRLOCK_AVX2 inline void load_i8x32(const std::int8_t* q, __m256 out[4]) {
  __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
  __m128i hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 16));
  out[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
  out[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)));
  out[2] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
  out[3] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)));
}

AIRLOCK_AVX2 void matmul_rows_avx2(GgmlType type, const std::uint8_t* w, std::int64_t n_in, const float* x,
                                   std::int64_t n_tokens, float* y, std::int64_t n_out, std::int64_t r0,
                                   std::int64_t r1) {
  const std::size_t stride = row_bytes(type, n_in);
  thread_local std::vector<float> row;
  row.resize(static_cast<std::size_t>(n_in));
  for (std::int64_t r = r0; r < r1; ++r) {
    const std::uint8_t* wr = w + stride * static_cast<std::size_t>(r);
    switch (type) {
      case GgmlType::kF32:
        for (std::int64_t t = 0; t < n_tokens; ++t)
          y[t * n_out + r] = dot_f32(reinterpret_cast<const float*>(wr), x + t * n_in, n_in);
        continue;
      case GgmlType::kF16: {
        const auto* h = reinterpret_cast<const std::uint16_t*>(wr);
        std::int64_t k = 0;
        for (; k + 8 <= n_in; k += 8)
          _mm256_storeu_ps(row.data() + k, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + k))));
        if (k < n_in) dequantize_row(type, h + k, row.data() + k, n_in - k);
        break;
      }
      case GgmlType::kQ8_0: {
        // Fused: per 32-block, scale the int8 values once and FMA into each token.
        struct Block { std::uint16_t d; std::int8_t qs[32]; };
        const auto* b = reinterpret_cast<const Block*>(wr);
        const std::int64_t nb = n_in / 32;
        if (n_tokens == 1) {
          __m256 acc = _mm256_setzero_ps();
          for (std::int64_t i = 0; i < nb; ++i) {
            __m256 v[4];
            load_i8x32(b[i].qs, v);
            const float* xb = x + i * 32;
            __m256 s = _mm256_mul_ps(v[0], _mm256_loadu_ps(xb));
            s = _mm256_fmadd_ps(v[1], _mm256_loadu_ps(xb + 8), s);
            s = _mm256_fmadd_ps(v[2], _mm256_loadu_ps(xb + 16), s);
            s = _mm256_fmadd_ps(v[3], _mm256_loadu_ps(xb + 24), s);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(fp16_to_fp32(b[i].d)), s, acc);
          }
          y[r] = hsum(acc);
          continue;
        }
        for (std::int64_t i = 0; i < nb; ++i) {
          __m256 v[4];
          load_i8x32(b[i].qs, v);
          const __m256 d = _mm256_set1_ps(fp16_to_fp32(b[i].d));
          for (int j = 0; j < 4; ++j) _mm256_storeu_ps(row.data() + i * 32 + 8 * j, _mm256_mul_ps(v[j], d));
        }
        break;
      }
      default:
        dequantize_row(type, wr, row.data(), n_in);
        break;
    }
    for (std::int64_t t = 0; t < n_tokens; ++t) y[t * n_out + r] = dot_f32(row.data(), x + t * n_in, n_in);
  }
}

}  // namespace

void matmul_rows(GgmlType type, const std::uint8_t* w, std::int64_t n_in, const float* x, std::int64_t n_tokens,
                 float* y, std::int64_t n_out, std::int64_t r0, std::int64_t r1) {
  if (cpu_has_avx2() && !g_force_scalar.load(std::memory_order_relaxed))
    matmul_rows_avx2(type, w, n_in, x, n_tokens, y, n_out, r0, r1);
  else
    matmul_rows_scalar(type, w, n_in, x, n_tokens, y, n_out, r0, r1);
}

const char* kernel_isa() { return cpu_has_avx2() && !g_force_scalar.load() ? "avx2" : "scalar"; }

void force_scalar_kernels(bool on) { g_force_scalar.store(on); }

}  // namespace airlock::engine
