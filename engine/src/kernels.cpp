// matmul_rows: the CPU backend's hot loop. Each weight row is read once and
// used for every token of the batch (rows outer, tokens inner), so decode
// streams the weights exactly once and prefill reuses them from cache.
//
// Three levels, each compiled with a target attribute and chosen at run
// time so the binary still runs on any x86-64: a portable scalar one (the
// reference), AVX2+FMA+F16C, and AVX-512 VNNI for the quantised types
// (vpdpbusd: 32 byte multiply-adds into int32 per 256 bits in one
// instruction where AVX2 needs sign, maddubs and madd; the lane kernels
// below use 512-bit registers, the Q8_0/Q4_0 tiles 256-bit ones; the AVX2
// K-quant kernels are in kernels_kquant.inc). A fourth level, AMX, adds
// Intel's tile multiply unit for Q4_K/Q5_K and Q8_0 prompt-sized batches
// (kernels_amx.inc).
// Attention (attend_heads) has a scalar and an AVX2 path.
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "airlock/engine/kernels.h"

namespace airlock::engine {
namespace {

// The highest level the kernels may use (tests lower it to compare paths).
std::atomic<int> g_isa_limit{static_cast<int>(KernelIsa::kAmx)};

// AVX2, FMA and F16C, and an OS that saves the YMM registers. Read from
// CPUID directly: not every compiler's __builtin_cpu_supports knows "f16c".
bool detect_avx2() {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
  const bool fma = c & (1u << 12), osxsave = c & (1u << 27), avx = c & (1u << 28), f16c = c & (1u << 29);
  if (!(fma && osxsave && avx && f16c)) return false;
  unsigned xcr0_lo, xcr0_hi;
  __asm__("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  if ((xcr0_lo & 0x6) != 0x6) return false;  // XMM and YMM state enabled
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  return b & (1u << 5);
}

// AVX-512 F, DQ, BW, VL and VNNI with the OS saving the opmask and ZMM
// state. (The lane kernels use 512-bit registers: Zen 4 executes them as
// two 256-bit halves, Zen 5 at full width; Intel cores since Ice Lake lower
// the clock for them much less than Skylake-X did.)
bool detect_avx512_vnni() {
  if (!detect_avx2()) return false;
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool f = b & (1u << 16), dq = b & (1u << 17), bw = b & (1u << 30), vl = b & (1u << 31);
  const bool vnni = c & (1u << 11);
  if (!(f && dq && bw && vl && vnni)) return false;
  unsigned xcr0_lo, xcr0_hi;
  __asm__("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  return (xcr0_lo & 0xE6) == 0xE6;  // XMM, YMM, opmask, ZMM_Hi256, Hi16_ZMM
}

// AMX-TILE and AMX-INT8 beside the above, the OS saving the tile state
// (XCR0 bits 17 and 18), and this process allowed to use it: Linux hands
// out the 8 KiB tile data state only on request (ARCH_REQ_XCOMP_PERM,
// kernel 5.16 and later; granted for the whole process). A refusal (an
// older kernel, a seccomp filter) leaves the AVX-512 level.
bool detect_amx() {
  if (!detect_avx512_vnni()) return false;
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool tile = d & (1u << 24), int8 = d & (1u << 25);
  if (!(tile && int8)) return false;
  unsigned xcr0_lo, xcr0_hi;
  __asm__("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  if ((xcr0_lo & 0x60000u) != 0x60000u) return false;
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

KernelIsa cpu_isa() {
  static const KernelIsa isa = detect_amx()           ? KernelIsa::kAmx
                               : detect_avx512_vnni() ? KernelIsa::kAvx512Vnni
                               : detect_avx2()        ? KernelIsa::kAvx2
                                                      : KernelIsa::kScalar;
  return isa;
}

KernelIsa active_isa() {
  return static_cast<KernelIsa>(std::min(static_cast<int>(cpu_isa()), g_isa_limit.load(std::memory_order_relaxed)));
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
      // Eight partial sums: independent chains the compiler can keep in
      // SSE2 registers (block sizes are multiples of 8 except F32/F16/BF16).
      const float* xt = x + t * n_in;
      float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      std::int64_t k = 0;
      for (; k + 8 <= n_in; k += 8)
        for (int j = 0; j < 8; ++j) part[j] += row[k + j] * xt[k + j];
      float s = ((part[0] + part[4]) + (part[1] + part[5])) + ((part[2] + part[6]) + (part[3] + part[7]));
      for (; k < n_in; ++k) s += row[k] * xt[k];
      y[t * n_out + r] = s;
    }
  }
}

#define AIRLOCK_AVX2 __attribute__((target("avx2,fma,f16c")))
// Kernel loops over tokens, rows and sub-blocks must be fully unrolled: the
// accumulators then live in registers instead of memory, and shuffle masks
// indexed by the loop counter become constants.
#define AIRLOCK_UNROLL _Pragma("GCC unroll 16")

AIRLOCK_AVX2 inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
  return _mm_cvtss_f32(lo);
}

AIRLOCK_AVX2 inline float hsum_max(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
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

// dot_f32 of four rows with one vector `b`, each row's sums in exactly
// dot_f32's order (so a row's result does not depend on its neighbours):
// b is loaded once for the four.
AIRLOCK_AVX2 inline void dot_f32_x4(const float* const* a, const float* b, std::int64_t n, float* out) {
  __m256 c0[4], c1[4];
  AIRLOCK_UNROLL for (int i = 0; i < 4; ++i) c0[i] = c1[i] = _mm256_setzero_ps();
  std::int64_t k = 0;
  for (; k + 16 <= n; k += 16) {
    const __m256 b0 = _mm256_loadu_ps(b + k), b1 = _mm256_loadu_ps(b + k + 8);
    AIRLOCK_UNROLL for (int i = 0; i < 4; ++i) {
      c0[i] = _mm256_fmadd_ps(_mm256_loadu_ps(a[i] + k), b0, c0[i]);
      c1[i] = _mm256_fmadd_ps(_mm256_loadu_ps(a[i] + k + 8), b1, c1[i]);
    }
  }
  AIRLOCK_UNROLL for (int i = 0; i < 4; ++i) {
    float s = hsum(_mm256_add_ps(c0[i], c1[i]));
    for (std::int64_t j = k; j < n; ++j) s += a[i][j] * b[j];
    out[i] = s;
  }
}

// ---- 8-bit activations: ggml's approach for quantised weights. The
// activations are quantised once per call (Q8_0: 32-blocks, Q8_K: 256-blocks
// with 16-element sums) and dotted with the weights in integer arithmetic,
// four times the multiply-adds per instruction of float FMA.

struct ActQ8_0 {
  float d;
  std::int32_t sum;  // sum of qs (the VNNI kernels' offset correction)
  std::int8_t qs[32];
};
struct ActQ8_K {
  float d;
  std::int8_t qs[256];
  std::int16_t bsums[16];
};

AIRLOCK_AVX2 inline int hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  return _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1)));
}

// Four registers of int32 (32 values, already within -127..127) stored as
// 32 bytes in order: the packs work within 128-bit halves, the permute puts
// the lanes back.
AIRLOCK_AVX2 inline void store_int8_in_order(const __m256i q[4], std::int8_t* out) {
  const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out),
                      _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
}

AIRLOCK_AVX2 void quantize_act_q8_0(const float* x, std::int64_t n, ActQ8_0* out) {
  for (std::int64_t i = 0; i < n / 32; ++i) {
    const float* xb = x + i * 32;
    __m256 amax = _mm256_setzero_ps();
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int j = 0; j < 4; ++j) amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, _mm256_loadu_ps(xb + 8 * j)));
    const float m = hsum_max(amax);
    const float d = m / 127.0f, id = m > 0 ? 127.0f / m : 0.0f;
    out[i].d = d;
    const __m256 vid = _mm256_set1_ps(id);
    __m256i q[4];
    for (int j = 0; j < 4; ++j)
      q[j] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(xb + 8 * j), vid),
                                                _MM_ROUND_NEAREST | _MM_FROUND_NO_EXC));
    out[i].sum = hsum_epi32(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
    store_int8_in_order(q, out[i].qs);
  }
}

// Q8_K activations: per 256 values, d = max|x| / 127 and q = round(x / d)
// (nearest, ties to even, as lrintf), with the sums of each 16 quants.
AIRLOCK_AVX2 void quantize_act_q8_k(const float* x, std::int64_t n, ActQ8_K* out) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (std::int64_t i = 0; i < n / 256; ++i) {
    const float* xb = x + i * 256;
    __m256 amax = _mm256_setzero_ps();
    for (int j = 0; j < 32; ++j) amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, _mm256_loadu_ps(xb + 8 * j)));
    const float m = hsum_max(amax);
    const float d = m / 127.0f, id = m > 0 ? 127.0f / m : 0.0f;
    out[i].d = d;
    const __m256 vid = _mm256_set1_ps(id);
    for (int j = 0; j < 8; ++j) {  // 32 values: sums 2j and 2j + 1
      __m256i q[4];
      AIRLOCK_UNROLL for (int k = 0; k < 4; ++k)
        q[k] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xb + 32 * j + 8 * k), vid));
      out[i].bsums[2 * j] = static_cast<std::int16_t>(hsum_epi32(_mm256_add_epi32(q[0], q[1])));
      out[i].bsums[2 * j + 1] = static_cast<std::int16_t>(hsum_epi32(_mm256_add_epi32(q[2], q[3])));
      store_int8_in_order(q, out[i].qs + 32 * j);
    }
  }
}

AIRLOCK_AVX2 inline float half_to_float(std::uint16_t h) { return _cvtsh_ss(h); }

// Each dot_* handles nt (1..4, a compile-time constant so the accumulators
// stay in registers) tokens at once, so each weight block is unpacked once
// per group of tokens: out[t] = row . act[t]. The token loops must be
// unrolled (AIRLOCK_UNROLL): GCC 12 left the four-token loop rolled, with
// the accumulators in memory, a store and a reload around every FMA
// (kernel_bench on an AVX2-only VM: 4 tokens slower than 3).
constexpr int kTokenGroup = 4;

template <int nt>
AIRLOCK_AVX2 void dot_q8_0(const std::uint8_t* row, const ActQ8_0* const* act, std::int64_t nb, float* out) {
  struct Block {
    std::uint16_t d;
    std::int8_t qs[32];
  };
  const auto* b = reinterpret_cast<const Block*>(row);
  __m256 acc[kTokenGroup] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  for (std::int64_t i = 0; i < nb; ++i) {
    const __m256i qx = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[i].qs));
    const __m256i ax = _mm256_sign_epi8(qx, qx);
    const float dw = half_to_float(b[i].d);
    AIRLOCK_UNROLL for (int t = 0; t < nt; ++t) {
      const __m256i qy = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(act[t][i].qs));
      const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(ax, _mm256_sign_epi8(qy, qx)), _mm256_set1_epi16(1));
      acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * act[t][i].d), _mm256_cvtepi32_ps(p), acc[t]);
    }
  }
  AIRLOCK_UNROLL for (int t = 0; t < nt; ++t) out[t] = hsum(acc[t]);
}

template <int nt>
AIRLOCK_AVX2 void dot_q4_0(const std::uint8_t* row, const ActQ8_0* const* act, std::int64_t nb, float* out) {
  struct Block {
    std::uint16_t d;
    std::uint8_t qs[16];
  };
  const auto* b = reinterpret_cast<const Block*>(row);
  const __m256i low = _mm256_set1_epi8(0x0F), eight = _mm256_set1_epi8(8);
  __m256 acc[kTokenGroup] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  for (std::int64_t i = 0; i < nb; ++i) {
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b[i].qs));
    const __m256i qx = _mm256_sub_epi8(_mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), low), eight);
    const __m256i ax = _mm256_sign_epi8(qx, qx);
    const float dw = half_to_float(b[i].d);
    AIRLOCK_UNROLL for (int t = 0; t < nt; ++t) {
      const __m256i qy = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(act[t][i].qs));
      const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(ax, _mm256_sign_epi8(qy, qx)), _mm256_set1_epi16(1));
      acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * act[t][i].d), _mm256_cvtepi32_ps(p), acc[t]);
    }
  }
  AIRLOCK_UNROLL for (int t = 0; t < nt; ++t) out[t] = hsum(acc[t]);
}

// Asks for the cache lines of [p, p + n) (a hint: never faults).
//
// The prefetch is an asm statement, not _mm_prefetch: GCC 12 deleted loops
// of _mm_prefetch whose length was not a constant in some callers (the
// attention kernels' rows: a loop with no effect it could see), leaving
// those kernels with no prefetch at all.
inline void prefetch_line(const char* c) { __asm__ volatile("prefetcht0 %0" : : "m"(*c)); }

inline void prefetch_bytes(const void* p, std::size_t n) {
  const char* c = static_cast<const char*>(p);
  for (std::size_t off = 0; off < n; off += 64) prefetch_line(c + off);
}

// The same for a length known at compile time, without the loop's
// counting and branch.
template <std::size_t N>
inline void prefetch_span(const void* p) {
  const char* c = static_cast<const char*>(p);
  AIRLOCK_UNROLL for (std::size_t off = 0; off < N; off += 64) _mm_prefetch(c + off, _MM_HINT_T0);
}

struct BlockQ4_K {
  std::uint16_t d, dmin;
  std::uint8_t scales[12];
  std::uint8_t qs[128];
};
struct BlockQ5_K {
  std::uint16_t d, dmin;
  std::uint8_t scales[12];
  std::uint8_t qh[32];
  std::uint8_t qs[128];
};

namespace kq_avx2 {
#include "kernels_kquant.inc"
}  // namespace kq_avx2

// Q8_0 or Q4_0 rows against activations quantised to ActQ8_0 (nb blocks
// per token), each weight row shared by groups of up to four tokens.
AIRLOCK_AVX2 void matmul_q8_avx2(bool q4, const std::uint8_t* w, std::int64_t n_in, const ActQ8_0* act,
                                 std::int64_t n_tokens, float* y, std::int64_t n_out, std::int64_t r0,
                                 std::int64_t r1) {
  const std::size_t stride = row_bytes(q4 ? GgmlType::kQ4_0 : GgmlType::kQ8_0, n_in);
  const std::int64_t nb = n_in / 32;
  if (q4)
    kq_avx2::for_token_groups([](auto nt, auto... a) { dot_q4_0<nt()>(a...); }, w, stride, act, nb, n_tokens, y, n_out, r0,
                     r1);
  else
    kq_avx2::for_token_groups([](auto nt, auto... a) { dot_q8_0<nt()>(a...); }, w, stride, act, nb, n_tokens, y, n_out, r0,
                     r1);
}

// Row `wr` of `type` as n_in floats: in place for F32, else converted into `out`.
AIRLOCK_AVX2 const float* float_row(GgmlType type, const std::uint8_t* wr, std::int64_t n_in, float* out) {
  if (type == GgmlType::kF32) return reinterpret_cast<const float*>(wr);
  if (type == GgmlType::kF16) {
    const auto* h = reinterpret_cast<const std::uint16_t*>(wr);
    std::int64_t k = 0;
    for (; k + 8 <= n_in; k += 8)
      _mm256_storeu_ps(out + k, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + k))));
    if (k < n_in) dequantize_row(type, h + k, out + k, n_in - k);
  } else {
    dequantize_row(type, wr, out, n_in);
  }
  return out;
}

// Float weights (F32, F16, BF16) and any type without integer kernels:
// rows as floats, dotted with the float activations. Tokens go in blocks
// of kFloatTokens and rows in fours within a block, each token's
// activations loaded once for four rows: before, each row read every
// token's activations, which for a large batch (an encoder's pass of 4,096
// tokens) streamed them from memory once per row (bench/bert_bench).
// A row converts to floats once per token block; F32 rows are read in place.
AIRLOCK_AVX2 void matmul_float_avx2(GgmlType type, const std::uint8_t* w, std::int64_t n_in, const float* x,
                                    std::int64_t n_tokens, float* y, std::int64_t n_out, std::int64_t r0,
                                    std::int64_t r1) {
  constexpr std::int64_t kFloatTokens = 32;
  const std::size_t stride = row_bytes(type, n_in);
  thread_local std::vector<float> rows;
  rows.resize(static_cast<std::size_t>(4 * n_in));
  auto as_floats = [&](std::int64_t r, int slot) {
    return float_row(type, w + stride * static_cast<std::size_t>(r), n_in,
                     rows.data() + static_cast<std::size_t>(slot) * static_cast<std::size_t>(n_in));
  };
  for (std::int64_t t0 = 0; t0 < n_tokens; t0 += kFloatTokens) {
    const std::int64_t t1 = std::min(n_tokens, t0 + kFloatTokens);
    std::int64_t r = r0;
    for (; r + 4 <= r1; r += 4) {
      const float* a[4] = {as_floats(r, 0), as_floats(r + 1, 1), as_floats(r + 2, 2), as_floats(r + 3, 3)};
      float out[4];
      for (std::int64_t t = t0; t < t1; ++t) {
        dot_f32_x4(a, x + t * n_in, n_in, out);
        std::copy_n(out, 4, y + t * n_out + r);
      }
    }
    for (; r < r1; ++r) {
      const float* a = as_floats(r, 0);
      for (std::int64_t t = t0; t < t1; ++t) y[t * n_out + r] = dot_f32(a, x + t * n_in, n_in);
    }
  }
}

// ---- AVX-512 VNNI (256-bit) for Q8_0 and Q4_0: register tiles of R rows x
// T tokens.
//
// vpdpbusd multiplies unsigned by signed bytes, so the weights are made
// unsigned by an offset (Q8_0: w + 128 by flipping the top bit; Q4_0: the
// stored nibble, which is w + 8) and offset * (sum of the activation block)
// is taken back out by starting each block's eight int32 lanes at
// -offset * sum / 8. Each weight block is loaded and offset once per tile and
// each activation block once per tile. The activations are laid out per
// token as quants, scales and lane starts in separate arrays, so the scale
// and the start are broadcast straight from memory.
//
// Tried and measured slower here: folding four blocks' lanes with
// horizontal adds before the float conversion (vphaddd is not cheap), and
// four rows side by side when only a few tokens share them (see below).

#define AIRLOCK_VNNI __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512dq,avx512vnni")))

struct BlockQ8_0 {
  std::uint16_t d;
  std::int8_t qs[32];
};
struct BlockQ4_0 {
  std::uint16_t d;
  std::uint8_t qs[16];
};

// One token's activations for the VNNI kernels: nb blocks.
struct ActVnni {
  const std::int8_t* qs;     // nb * 32 (the lane kernels: transposed in groups of eight blocks)
  const float* d;            // nb scales
  const std::int32_t* corr;  // nb lane starts: -offset * sum / 8 for the tiles (eight lanes per
                             // block), -offset * sum for the lane kernels (one lane per block)
};

// Activations in the VNNI layout: per token, nb * 32 quants, then nb
// scales and nb lane starts, the tokens one after another. (With the quants
// of all tokens first, 2048-wide rows put the tokens exactly 2 KiB apart,
// in the same few L1 sets; together, the stride is not a power of two.
// Measured alone this gained little: Q8_0 16 tokens in one pass 155 -> 166
// G mul-add/s.)
// The block count is padded to a multiple of 16 (the lane kernels read
// groups of 16 blocks; the padding is zeros).
struct VnniInput {
  const std::uint8_t* bytes;
  static std::size_t padded_blocks(std::int64_t nb) { return static_cast<std::size_t>((nb + 15) / 16 * 16); }
  static std::size_t token_bytes(std::int64_t nb) { return padded_blocks(nb) * (32 + 2 * sizeof(float)); }
  ActVnni token(std::int64_t t, std::int64_t nb) const {
    const std::uint8_t* p = bytes + static_cast<std::size_t>(t) * token_bytes(nb);
    const std::size_t n = padded_blocks(nb);
    return {reinterpret_cast<const std::int8_t*>(p), reinterpret_cast<const float*>(p + n * 32),
            reinterpret_cast<const std::int32_t*>(p + n * (32 + sizeof(float)))};
  }
};

template <bool kQ4>
AIRLOCK_VNNI inline __m256i weights_unsigned(const void* block) {
  if constexpr (kQ4) {
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const BlockQ4_0*>(block)->qs));
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), _mm256_set1_epi8(0x0F));
  } else {
    const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const BlockQ8_0*>(block)->qs));
    return _mm256_xor_si256(q, _mm256_set1_epi8(static_cast<char>(0x80)));
  }
}

template <bool kQ4, int R, int T>
AIRLOCK_VNNI void tile_q8_vnni(const std::uint8_t* w, std::size_t stride, const ActVnni* act, std::int64_t nb,
                               float* out, std::int64_t out_stride) {
  using Block = std::conditional_t<kQ4, BlockQ4_0, BlockQ8_0>;
  __m256 acc[R][T];
  AIRLOCK_UNROLL for (int r = 0; r < R; ++r)
    AIRLOCK_UNROLL for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
  const Block* rows[R];
  AIRLOCK_UNROLL for (int r = 0; r < R; ++r) rows[r] = reinterpret_cast<const Block*>(w + stride * static_cast<std::size_t>(r));
  for (std::int64_t i = 0; i < nb; ++i) {
    __m256i wu[R];
    __m256 dw[R];
    AIRLOCK_UNROLL for (int r = 0; r < R; ++r) {
      wu[r] = weights_unsigned<kQ4>(rows[r] + i);
      dw[r] = _mm256_cvtph_ps(_mm_set1_epi16(static_cast<short>(rows[r][i].d)));
    }
    AIRLOCK_UNROLL for (int t = 0; t < T; ++t) {
      const __m256i qy = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(act[t].qs + i * 32));
      const __m256i start = _mm256_set1_epi32(act[t].corr[i]);
      const __m256 dy = _mm256_set1_ps(act[t].d[i]);
      AIRLOCK_UNROLL for (int r = 0; r < R; ++r) {
        const __m256i p = _mm256_dpbusd_epi32(start, wu[r], qy);
        acc[r][t] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(p), dy), dw[r], acc[r][t]);
      }
    }
  }
  AIRLOCK_UNROLL for (int r = 0; r < R; ++r)
    AIRLOCK_UNROLL for (int t = 0; t < T; ++t) out[t * out_stride + r] = hsum(acc[r][t]);
}

// A tile of R rows by nt tokens (1..4, chosen at run time here).
template <bool kQ4, int R>
AIRLOCK_VNNI void tile_q8_vnni_rows(const std::uint8_t* w, std::size_t stride, const ActVnni* act, int nt,
                                    std::int64_t nb, float* out, std::int64_t out_stride) {
  switch (nt) {
    case 1: return tile_q8_vnni<kQ4, R, 1>(w, stride, act, nb, out, out_stride);
    case 2: return tile_q8_vnni<kQ4, R, 2>(w, stride, act, nb, out, out_stride);
    case 3: return tile_q8_vnni<kQ4, R, 3>(w, stride, act, nb, out, out_stride);
    default: return tile_q8_vnni<kQ4, R, 4>(w, stride, act, nb, out, out_stride);
  }
}

template <bool kQ4>
AIRLOCK_VNNI void matmul_q8_vnni(const std::uint8_t* w, std::int64_t n_in, const VnniInput& in, std::int64_t n_tokens,
                                 float* y, std::int64_t n_out, std::int64_t r0, std::int64_t r1) {
  constexpr int kRows = 4, kTokens = 4;
  const std::size_t stride = row_bytes(kQ4 ? GgmlType::kQ4_0 : GgmlType::kQ8_0, n_in);
  const std::int64_t nb = n_in / 32;
  thread_local std::vector<ActVnni> act;
  act.resize(static_cast<std::size_t>(n_tokens));
  for (std::int64_t t = 0; t < n_tokens; ++t) act[static_cast<std::size_t>(t)] = in.token(t, nb);
  // Rows outer, tokens inner: a tile's rows (4 x ~2 KB for n_in 2048) stay
  // in L1 across the token groups, so every weight byte comes from memory
  // once per call whatever the batch size.
  auto rows_tile = [&](auto rows, std::int64_t r) {
    if (rows() > 1 && r + 2 * rows() <= r1) {
      // Four rows side by side are four streams, which the hardware
      // prefetchers follow less well than one: ask for the next tile's rows
      // into L2 now (measured ~10% faster at 16 tokens; into L1 was slower).
      const char* next = reinterpret_cast<const char*>(w + stride * static_cast<std::size_t>(r + rows()));
      for (std::size_t off = 0; off < stride * rows(); off += 64) _mm_prefetch(next + off, _MM_HINT_T1);
    }
    for (std::int64_t t0 = 0; t0 < n_tokens; t0 += kTokens) {
      const int nt = static_cast<int>(std::min<std::int64_t>(kTokens, n_tokens - t0));
      tile_q8_vnni_rows<kQ4, rows()>(w + stride * static_cast<std::size_t>(r), stride, act.data() + t0, nt, nb,
                                     y + t0 * n_out + r, n_out);
    }
  };
  std::int64_t r = r0;
  if (n_tokens <= kTokens) {
    // Few tokens: memory-bound. One row at a time is one sequential stream,
    // which the hardware prefetchers follow at full bandwidth; interleaving
    // four rows measured ~40% slower here (bench/kernel_bench).
    for (; r < r1; ++r) rows_tile(std::integral_constant<int, 1>(), r);
    return;
  }
  for (; r + kRows <= r1; r += kRows) rows_tile(std::integral_constant<int, kRows>(), r);
  switch (r1 - r) {
    case 3: rows_tile(std::integral_constant<int, 3>(), r); break;
    case 2: rows_tile(std::integral_constant<int, 2>(), r); break;
    case 1: rows_tile(std::integral_constant<int, 1>(), r); break;
    default: break;
  }
}

// ---- Q8_0 / Q4_0 with VNNI for batches: one block per int32 lane.
//
// The tiles above keep a block's 32 bytes across a register's eight lanes,
// so every (row, token, block) needs its own float conversion, scale
// multiply and FMA next to the vpdpbusd: three floating-point operations per
// 32 multiply-adds, which bound batches at ~1.5 cycles per block and token.
// Here a group of eight consecutive blocks is transposed so that lane k of
// eight registers holds block k's bytes: eight vpdpbusd leave the eight
// blocks' whole integer dots in one register, and one conversion, one
// multiply (weight scales times activation scales, eight blocks at once) and
// one FMA finish them. The activations are stored transposed when they are
// quantised (once per product); each weight group is transposed on the fly,
// 24 shuffles shared by up to kLanesTokens tokens. Used at every batch size
// when the row length is a multiple of 256: from 2 tokens it is faster than
// the tiles above (1.6x at 4 tokens, 2x at 8 and 16), and at one token,
// bound by memory, its software prefetch streams ~10% faster than the tiles'
// single row (bench/kernel_bench). The tiles remain for other row lengths.
//
// With 512-bit registers two such groups go side by side (row_q8_lanes), as
// do two K-quant super-blocks (row_qk_pairs): the same instruction count
// per group as 256 bits for twice the work.

// GCC 12's avx512fintrin.h builds the 512-bit inserts, unpacks and
// conversions on _mm512_undefined_*(), a self-initialised variable, and
// warns about it wherever they are inlined (a false positive; GCC 13 no
// longer does). Silenced for the 512-bit kernels only.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

// Tokens per pass over a row: at most kLanesTokens, with the row's columns
// in chunks whose activations for the pass fit in kLanesPassBytes (see
// for_rows_lanes). More than fit in L1 beside the streaming weights ran
// much slower (kernel_bench, G mul-add/s: Q8_0 2048 wide, 16 tokens in one
// pass 155-165, in two passes of 8 205-260; Q4_K 5632 wide, 16 tokens in
// passes of 8 164-171, of 4 279-287, of 3 239-245), and the row is still
// in L1 for the next pass.
//
// A batch of 9-16 tokens whose activations for a whole row fit in
// lanes_wide_pass_bytes() (5/6 of the core's L1 data cache: 40 KiB of 48)
// goes in one pass: each weight group is unpacked and transposed once for
// all of them instead of once per 8, and GCC keeps the sixteen sums and
// the eight weight registers in registers. kernel_bench --tokens 16,
// 2048-wide rows (every matrix of a 1B Llama but the down projection), 2
// threads, the 2-core AMX VM, rounds alternating, G mul-add/s, one pass
// against two: Q4_K 214-229 vs 196-210 and Q8_0 175-180 vs 145-164 (six
// rounds); Q5_K 176-193 vs 165-176, Q4_0 192-203 vs 179-189, Q6_K 166-169
// vs 161-169 (four). A row too wide for one pass keeps the passes of 8: 16
// tokens in three chunks of 5632-wide Q4_K rows ran ~175 against ~213. (An
// earlier trial of passes of 16 lost because it split 2048-wide rows into
// two chunks.) Larger batches (prompt chunks on CPUs without AMX) keep
// passes of 8: with passes of 16, 64 tokens of Q8_0 (--isa avx512vnni)
// ran 180-186 against 189-190.

constexpr int kLanesTokens = 8;
constexpr std::size_t kLanesPassBytes = 32 * 1024;
constexpr int kLanesWideTokens = 16;

std::size_t lanes_wide_pass_bytes() {
  static const std::size_t bytes = [] {
    const long l1 = sysconf(_SC_LEVEL1_DCACHE_SIZE);
    return l1 > 0 ? static_cast<std::size_t>(l1) / 6 * 5 : std::size_t{0};
  }();
  return bytes;
}

constexpr std::size_t kLanesPrefetchBytes = 4096;
constexpr std::size_t kLanesRowBlockBytes = 128 * 1024;

// out[m] lane k = in[k] lane m, in each 256-bit half of the eight registers.
AIRLOCK_VNNI inline void transpose8x8_epi32_halves(__m512i r[8]) {
  __m512i t[8], u[8];
  AIRLOCK_UNROLL for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  AIRLOCK_UNROLL for (int h = 0; h < 2; ++h) {
    __m512i* tt = t + 4 * h;
    __m512i* uu = u + 4 * h;
    uu[0] = _mm512_unpacklo_epi64(tt[0], tt[2]);
    uu[1] = _mm512_unpackhi_epi64(tt[0], tt[2]);
    uu[2] = _mm512_unpacklo_epi64(tt[1], tt[3]);
    uu[3] = _mm512_unpackhi_epi64(tt[1], tt[3]);
  }
  // per half: the low 128 bits of u[m] and u[m + 4], then the high ones
  const __m512i lo = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13), hi = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
  AIRLOCK_UNROLL for (int m = 0; m < 4; ++m) {
    r[m] = _mm512_permutex2var_epi64(u[m], lo, u[m + 4]);
    r[m + 4] = _mm512_permutex2var_epi64(u[m], hi, u[m + 4]);
  }
}

// A row kernel's share of one pass: column units [u0, u1) of n (groups of
// 16 blocks, pairs of super-blocks or super-blocks, by kernel). When a row
// comes in several chunks, each token's 16 partial sums wait in `carry`
// between them (16 floats per token, 64-byte aligned), so the float steps
// are the same, in the same order, as in one sweep over the row.
struct LaneChunk {
  std::int64_t u0, u1, n;
  float* carry;
};

template <int T>
AIRLOCK_VNNI inline void lanes_begin(const LaneChunk& c, __m512 acc[T]) {
  AIRLOCK_UNROLL for (int t = 0; t < T; ++t) acc[t] = c.u0 == 0 ? _mm512_setzero_ps() : _mm512_load_ps(c.carry + 16 * t);
}

template <int T>
AIRLOCK_VNNI inline void lanes_end(const LaneChunk& c, const __m512 acc[T], float* out, std::int64_t out_stride) {
  if (c.u1 < c.n) {
    AIRLOCK_UNROLL for (int t = 0; t < T; ++t) _mm512_store_ps(c.carry + 16 * t, acc[t]);
    return;
  }
  AIRLOCK_UNROLL for (int t = 0; t < T; ++t)
    out[t * out_stride] = hsum(_mm256_add_ps(_mm512_castps512_ps256(acc[t]), _mm512_extractf32x8_ps(acc[t], 1)));
}

// Blocks [g, g + 16) of a row against T tokens, added to acc: blocks g + k
// in the low half of the registers, g + 8 + k in the high one (as the
// K-quant pairs below: every instruction does two 256-bit ones' work).
// kHigh false: the row ends at g + 8 and the high half is zeros.
template <bool kQ4, bool kHigh, int T, typename Block>
AIRLOCK_VNNI inline void q8_lanes_group(const Block* b, std::int64_t g, const ActVnni* act, __m512 acc[T]) {
  __m512i wt[8];
  AIRLOCK_UNROLL for (int k = 0; k < 8; ++k) {
    wt[k] = _mm512_zextsi256_si512(weights_unsigned<kQ4>(b + g + k));
    if constexpr (kHigh) wt[k] = _mm512_inserti64x4(wt[k], weights_unsigned<kQ4>(b + g + 8 + k), 1);
  }
  transpose8x8_epi32_halves(wt);
  alignas(32) std::uint16_t dh[16] = {};
  AIRLOCK_UNROLL for (int k = 0; k < (kHigh ? 16 : 8); ++k) dh[k] = b[g + k].d;
  const __m512 dw = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(dh)));
  AIRLOCK_UNROLL for (int t = 0; t < T; ++t) {
    const std::int8_t* qy = act[t].qs + g * 32;
    // (the sum starts from zero rather than from the loaded lane starts:
    // GCC 12 otherwise moves every loaded start through the stack)
    __m512i s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wt[0], _mm512_loadu_si512(qy));
    AIRLOCK_UNROLL for (int m = 1; m < 8; ++m) s = _mm512_dpbusd_epi32(s, wt[m], _mm512_loadu_si512(qy + 64 * m));
    s = _mm512_add_epi32(s, _mm512_loadu_si512(act[t].corr + g));
    const __m512 dwy = _mm512_mul_ps(dw, _mm512_loadu_ps(act[t].d + g));
    acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), dwy, acc[t]);
  }
}

// One row against T tokens: out[t * out_stride] = row . token t.
template <bool kQ4, int T>
AIRLOCK_VNNI void row_q8_lanes(const std::uint8_t* row, const ActVnni* act, std::int64_t nb, const LaneChunk& c,
                               float* out, std::int64_t out_stride) {
  using Block = std::conditional_t<kQ4, BlockQ4_0, BlockQ8_0>;
  const auto* b = reinterpret_cast<const Block*>(row);
  __m512 acc[T];
  lanes_begin<T>(c, acc);
  const std::int64_t end = std::min(nb, 16 * c.u1);
  std::int64_t g = 16 * c.u0;
  for (; g + 16 <= end; g += 16) {
    // Computing on a group takes long enough that the hardware prefetchers
    // fall behind the row: ask for the bytes 4 KiB ahead (bench/kernel_bench
    // measured 2x faster at 8 tokens and 1.5x at 16 than without).
    prefetch_bytes(reinterpret_cast<const char*>(b + g) + kLanesPrefetchBytes, 16 * sizeof(Block));
    q8_lanes_group<kQ4, true, T>(b, g, act, acc);
  }
  if (g < end) q8_lanes_group<kQ4, false, T>(b, g, act, acc);  // nb is a multiple of 8
  lanes_end<T>(c, acc, out, out_stride);
}

// Rows [r0, r1), each against the tokens in passes of up to kLanesTokens
// and, within a pass, over its n_units column units in chunks (unit_bytes:
// one unit's prepared activations for one token):
// row(integral_constant<int, T>, row bytes, first token, chunk, out,
// out_stride) computes out[t * out_stride] = row . token t for T tokens.
//
// A prompt chunk's activations (512 tokens of 2048: 1 MiB) do not fit in
// the caches, and streaming them once per row made prefill half as fast per
// token as decoding 16 sequences. So the rows go in blocks of about
// kLanesRowBlockBytes, which stay in L2 while every token group passes over
// them; each group's activations stay in L1 across the block's rows: the
// whole row's when they fit in kLanesPassBytes, otherwise a chunk of the
// columns at a time (5632-wide Q4_K rows: 55 KiB for 8 tokens, so two chunks).
// Before the chunks, a wide row took fewer tokens per pass instead (four at
// 5632), which transposed each weight group for every four tokens rather
// than eight. kernel_bench Q4_K --rows 24576 --n-in 5632, 2 threads, six
// rounds alternating, G mul-add/s at 8 and 16 tokens: 184-197 and 184-196
// in chunks, 167-189 and 171-188 before (~6%); 2048-wide rows (one chunk)
// are unchanged.
template <typename Row, typename Act>
void for_rows_lanes(Row row, const std::uint8_t* w, std::size_t stride, const Act* act, std::size_t unit_bytes,
                    std::int64_t n_units, std::int64_t n_tokens, float* y, std::int64_t n_out, std::int64_t r0,
                    std::int64_t r1) {
  if (n_tokens <= 0 || n_units <= 0) return;
  const std::int64_t block_rows = std::max<std::int64_t>(1, static_cast<std::int64_t>(kLanesRowBlockBytes / stride));
  // a batch of 9-16 tokens in one pass over whole rows, or passes of up
  // to kLanesTokens over chunks of them
  const bool wide = n_tokens > kLanesTokens && n_tokens <= kLanesWideTokens &&
                    unit_bytes * static_cast<std::size_t>(n_units * n_tokens) <= lanes_wide_pass_bytes();
  const std::int64_t pass = wide ? n_tokens : std::min<std::int64_t>(n_tokens, kLanesTokens);
  const std::int64_t fit =
      wide ? n_units
           : std::max<std::int64_t>(1, static_cast<std::int64_t>(kLanesPassBytes / (unit_bytes * static_cast<std::size_t>(pass))));
  const std::int64_t n_chunks = (n_units + fit - 1) / fit;
  const std::int64_t chunk = (n_units + n_chunks - 1) / n_chunks;
  struct alignas(64) Lanes {
    float v[16];
  };
  thread_local std::vector<Lanes> carry;
  if (n_chunks > 1) carry.resize(static_cast<std::size_t>(block_rows * pass));
  for (std::int64_t rb = r0; rb < r1; rb += block_rows) {
    const std::int64_t re = std::min(r1, rb + block_rows);
    for (std::int64_t t0 = 0; t0 < n_tokens; t0 += pass) {
      const int nt = static_cast<int>(std::min<std::int64_t>(pass, n_tokens - t0));
      for (std::int64_t u0 = 0; u0 < n_units; u0 += chunk) {
        [&]<int... T>(std::integer_sequence<int, T...>) {
          auto rows = [&](auto t_const) {
            for (std::int64_t r = rb; r < re; ++r) {
              const LaneChunk c{u0, std::min(n_units, u0 + chunk), n_units,
                                n_chunks > 1 ? carry[static_cast<std::size_t>((r - rb) * pass)].v : nullptr};
              row(t_const, w + stride * static_cast<std::size_t>(r), act + t0, c, y + t0 * n_out + r, n_out);
            }
          };
          ((nt == T + 1 ? rows(std::integral_constant<int, T + 1>()) : void()), ...);
        }(std::make_integer_sequence<int, kLanesWideTokens>());
      }
    }
  }
}

template <bool kQ4>
void matmul_q8_lanes(const std::uint8_t* w, std::int64_t n_in, const VnniInput& in, std::int64_t n_tokens, float* y,
                     std::int64_t n_out, std::int64_t r0, std::int64_t r1) {
  const std::int64_t nb = n_in / 32;
  thread_local std::vector<ActVnni> act;
  act.resize(static_cast<std::size_t>(n_tokens));
  for (std::int64_t t = 0; t < n_tokens; ++t) act[static_cast<std::size_t>(t)] = in.token(t, nb);
  // unit: a group of 16 blocks (quants, scale and lane start of each)
  for_rows_lanes([nb](auto T, const std::uint8_t* row, const ActVnni* a, const LaneChunk& c, float* out,
                      std::int64_t out_stride) { row_q8_lanes<kQ4, T()>(row, a, nb, c, out, out_stride); },
                 w, row_bytes(kQ4 ? GgmlType::kQ4_0 : GgmlType::kQ8_0, n_in), act.data(),
                 16 * (32 + 2 * sizeof(float)), (nb + 15) / 16, n_tokens, y, n_out, r0, r1);
}

// ---- Q4_K / Q5_K with VNNI for batches, the same way: a super-block's
// eight sub-blocks of 32 are transposed so that lane k holds sub-block k,
// eight vpdpbusd of the unsigned 4- or 5-bit values against the transposed
// activations leave each sub-block's integer dot in its lane, and the
// sub-block scales and mins apply in float, eight at once:
//   sum_k  dy * d * scale_k * dot_k  -  dmin * min_k * (dy * sum_k)
// (the activations carry dy times each sub-block's sum). Against the
// 16-bit path of kernels_kquant.inc this halves the operations per
// super-block and token: 1.2x at 2 tokens, 1.6x at 8 and 16, the same
// speed at one token (bound by memory); so with VNNI it serves every batch
// size. Q6_K has its own lane kernel below.

// 512-bit registers hold two super-blocks side by side: lanes 0-7 the eight
// sub-blocks of super-block 2p, lanes 8-15 those of 2p + 1. The activations
// are stored in the same pairs, so every instruction does the work of two
// 256-bit ones. (This Zen 5 VM issues two vpdpbusd per cycle per core at
// either width, ~400 G mul-add/s per core in 512 bits; the 256-bit kernel
// reached ~110 per core at 16 tokens, bound by the loads, conversions and
// FMAs around each eight vpdpbusd, which pairs halve. kernel_bench Q4_K:
// 1.2x at one token, 1.3-1.4x at 8 and 16. Splitting each token's chain of eight
// vpdpbusd in two, or interleaving the tokens' chains, measured slower.) An
// odd last super-block pairs with zeros.

// Activations of one pair of super-blocks (the second all zeros past the end
// of the row).
struct ActQ8_KPair {
  std::int8_t qs[512];  // piece m (4 bytes) of sub-block k of super-block h at m * 64 + h * 32 + k * 4
  float dsum[16];       // [8h + k]: d_h * (sum of sub-block k's quants)
  float d[16];          // [8h + k]: d_h
};

// A row's activations as pairs of super-blocks (Pair: qs[512], dsum[16],
// d[16]; an odd last super-block pairs with zeros): place(qs, h, a) puts
// super-block h's quants where the kernel reads them.
// (dsum_of: what every K-quant kernel with per-lane mins reads, the AMX
// tiles' activations too, so that their float steps stay the same.)
inline float dsum_of(const ActQ8_K& a, int k) {
  return a.d * static_cast<float>(a.bsums[2 * k] + a.bsums[2 * k + 1]);
}

template <typename Pair, typename Place>
void quantize_act_pairs(const float* x, std::int64_t n, Pair* out, Place place) {
  const std::int64_t nb = n / 256;
  ActQ8_K tmp;
  for (std::int64_t i = 0; i < nb; ++i) {
    Pair& pair = out[i / 2];
    const int h = static_cast<int>(i % 2);
    if (h == 0) std::memset(&pair, 0, sizeof pair);
    quantize_act_q8_k(x + i * 256, 256, &tmp);
    place(pair.qs, h, tmp);
    for (int k = 0; k < 8; ++k) {
      pair.dsum[8 * h + k] = dsum_of(tmp, k);
      pair.d[8 * h + k] = tmp.d;
    }
  }
}

void quantize_act_q8_k_pairs(const float* x, std::int64_t n, ActQ8_KPair* out) {
  quantize_act_pairs(x, n, out, [](std::int8_t* qs, int h, const ActQ8_K& a) {
    for (int k = 0; k < 8; ++k)
      for (int m = 0; m < 8; ++m) std::memcpy(qs + m * 64 + h * 32 + k * 4, a.qs + 32 * k + 4 * m, 4);
  });
}

// ---- Q4_K / Q5_K with VNNI for one token. At one token nothing shares the
// transposition above, and the kernel was bound by shuffles (about 40 per
// pair of super-blocks: the transposition, the halves' inserts, the scale
// unpacking); with the rows in L2, one thread ran 1.4x faster with the
// transposition left out and 1.4x with the scale unpacking left out. So
// one token takes the weights as they lie: a 64-byte load of a block's
// nibbles holds two whole sub-blocks in each of its halves (low nibbles:
// sub-blocks 0 | 2, or 4 | 6; high nibbles: 1 | 3, or 5 | 7), one
// vpdpbusd per register against activations stored in the same order
// leaves eight partial sums per sub-block, and an add-and-shuffle tree (15
// shuffles for two super-blocks) brings each sub-block's sum to the lane
// the transposing kernel leaves it in. The sums are exact integers, and
// the float steps after them are the transposing kernel's, lane for lane:
// a token's logits are bit-identical whichever kernel a batch uses.

// Activations of one pair of super-blocks in that order (the second all
// zeros past the end of the row).
struct ActQ8_KNat {
  std::int8_t qs[512];  // super-block h, register i: at (4h + i) * 64, sub-blocks kNatSub[i][0] | kNatSub[i][1]
  float dsum[16];       // as ActQ8_KPair
  float d[16];
};
constexpr int kNatSub[4][2] = {{0, 2}, {1, 3}, {4, 6}, {5, 7}};

void quantize_act_q8_k_nat(const float* x, std::int64_t n, ActQ8_KNat* out) {
  quantize_act_pairs(x, n, out, [](std::int8_t* qs, int h, const ActQ8_K& a) {
    for (int r = 0; r < 4; ++r)
      for (int half = 0; half < 2; ++half)
        std::memcpy(qs + (4 * h + r) * 64 + half * 32, a.qs + 32 * kNatSub[r][half], 32);
  });
}

// 32 bytes at a, and at b (zeros when b is null), as one register.
AIRLOCK_VNNI inline __m512i load_halves(const std::uint8_t* a, const std::uint8_t* b) {
  const __m512i lo = _mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a)));
  return b ? _mm512_inserti64x4(lo, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b)), 1) : lo;
}

// A super-block's eight sub-block scales times d (then its mins times dmin).
template <typename Block>
AIRLOCK_VNNI inline void scales_mins(const Block& b, __m256* scale, __m256* min) {
  const __m128i sm = kq_avx2::unpack_scales_mins(b.scales);  // 8 scales, 8 mins
  *scale = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(sm)), _mm256_set1_ps(_cvtsh_ss(b.d)));
  *min = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(sm, 8))), _mm256_set1_ps(_cvtsh_ss(b.dmin)));
}

// The same for two super-blocks at once, b0's in the low half and b1's in
// the high one: the same conversions and multiplies per lane, so the same
// values, with each step done once for both (fewer shuffles: see the
// one-token kernel below).
template <typename Block>
AIRLOCK_VNNI inline void scales_mins_pair(const Block& b0, const Block& b1, __m512* scale, __m512* min) {
  const __m256i v = _mm256_inserti128_si256(
      _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b0.scales))),
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(b1.scales)), 1);
  // [scales b0, mins b0 | scales b1, mins b1] -> [scales b0, scales b1 | mins b0, mins b1]
  const __m256i sm = _mm256_permute4x64_epi64(kq_avx2::unpack_scales_lanes(v), _MM_SHUFFLE(3, 1, 2, 0));
  static_assert(offsetof(Block, d) == 0 && offsetof(Block, dmin) == 2);
  std::uint32_t dd0, dd1;
  std::memcpy(&dd0, &b0, 4);
  std::memcpy(&dd1, &b1, 4);
  const __m512 dd = _mm512_castps128_ps512(
      _mm_cvtph_ps(_mm_insert_epi32(_mm_cvtsi32_si128(static_cast<int>(dd0)), static_cast<int>(dd1), 1)));
  const __m512 d = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2), dd);
  const __m512 dmin = _mm512_permutexvar_ps(_mm512_setr_epi32(1, 1, 1, 1, 1, 1, 1, 1, 3, 3, 3, 3, 3, 3, 3, 3), dd);
  *scale = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_castsi256_si128(sm))), d);
  *min = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_extracti128_si256(sm, 1))), dmin);
}

// Scales and mins of b0 and b1 (b1 null: zeros).
template <typename Block>
AIRLOCK_VNNI inline void pair_scales_mins(const Block* b0, const Block* b1, __m512* scale, __m512* min) {
  if (b1) return scales_mins_pair(*b0, *b1, scale, min);
  __m256 s0, m0;
  scales_mins(*b0, &s0, &m0);
  *scale = _mm512_insertf32x8(_mm512_castps256_ps512(s0), _mm256_setzero_ps(), 1);
  *min = _mm512_insertf32x8(_mm512_castps256_ps512(m0), _mm256_setzero_ps(), 1);
}

// Super-blocks b0 and b1 (b1 null: zeros) against pair p of T tokens.
template <bool kFiveBit, int T, typename Block>
AIRLOCK_VNNI inline void qk_pair(const Block* b0, const Block* b1, const ActQ8_KPair* const* act, std::int64_t p,
                                 __m512 acc[T]) {
  __m512 scale, min;
  pair_scales_mins(b0, b1, &scale, &min);
  const __m512i low = _mm512_set1_epi8(0x0F);
  __m512i v[8];
  AIRLOCK_UNROLL for (int j = 0; j < 4; ++j) {
    // sub-blocks 2j (low nibbles) and 2j + 1 (high), as in unpack_qk_pair
    const __m512i q = load_halves(b0->qs + 32 * j, b1 ? b1->qs + 32 * j : nullptr);
    v[2 * j] = _mm512_and_si512(q, low);
    v[2 * j + 1] = _mm512_and_si512(_mm512_srli_epi16(q, 4), low);
    if constexpr (kFiveBit) {
      const __m512i one = _mm512_set1_epi8(1);
      const __m512i qh = load_halves(b0->qh, b1 ? b1->qh : nullptr);
      v[2 * j] = _mm512_or_si512(v[2 * j], _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(qh, 2 * j), one), 4));
      v[2 * j + 1] =
          _mm512_or_si512(v[2 * j + 1], _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(qh, 2 * j + 1), one), 4));
    }
  }
  transpose8x8_epi32_halves(v);
  AIRLOCK_UNROLL for (int t = 0; t < T; ++t) {
    const ActQ8_KPair& y = act[t][p];
    __m512i s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), v[0], _mm512_loadu_si512(y.qs));
    AIRLOCK_UNROLL for (int m = 1; m < 8; ++m) s = _mm512_dpbusd_epi32(s, v[m], _mm512_loadu_si512(y.qs + 64 * m));
    acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(scale, _mm512_loadu_ps(y.d)), acc[t]);
    acc[t] = _mm512_fnmadd_ps(min, _mm512_loadu_ps(y.dsum), acc[t]);
  }
}

template <bool kFiveBit, int T>
AIRLOCK_VNNI void row_qk_pairs(const std::uint8_t* row, const ActQ8_KPair* const* act, std::int64_t nb,
                               const LaneChunk& c, float* out, std::int64_t out_stride) {
  using Block = std::conditional_t<kFiveBit, BlockQ5_K, BlockQ4_K>;
  const auto* b = reinterpret_cast<const Block*>(row);
  __m512 acc[T];
  lanes_begin<T>(c, acc);
  const std::int64_t end = std::min(nb, 2 * c.u1);
  std::int64_t i = 2 * c.u0;
  for (; i + 2 <= end; i += 2) {
    prefetch_span<2 * sizeof(Block)>(reinterpret_cast<const char*>(b + i) + kLanesPrefetchBytes);
    qk_pair<kFiveBit, T>(b + i, b + i + 1, act, i / 2, acc);
  }
  if (i < end) qk_pair<kFiveBit, T>(b + i, static_cast<const Block*>(nullptr), act, i / 2, acc);
  lanes_end<T>(c, acc, out, out_stride);
}

template <bool kFiveBit>
void matmul_qk_pairs(const std::uint8_t* w, std::int64_t n_in, const ActQ8_KPair* in, std::int64_t n_tokens,
                     float* y, std::int64_t n_out, std::int64_t r0, std::int64_t r1) {
  const std::int64_t nb = n_in / 256, np = (nb + 1) / 2;
  thread_local std::vector<const ActQ8_KPair*> act;
  act.resize(static_cast<std::size_t>(n_tokens));
  for (std::int64_t t = 0; t < n_tokens; ++t) act[static_cast<std::size_t>(t)] = in + t * np;
  for_rows_lanes([nb](auto T, const std::uint8_t* row, const ActQ8_KPair* const* a, const LaneChunk& c, float* out,
                      std::int64_t out_stride) { row_qk_pairs<kFiveBit, T()>(row, a, nb, c, out, out_stride); },
                 w, row_bytes(kFiveBit ? GgmlType::kQ5_K : GgmlType::kQ4_K, n_in), act.data(), sizeof(ActQ8_KPair), np,
                 n_tokens, y, n_out, r0, r1);
}

// Sums of (lo, hi) per 128-bit chunk: [lo0 + lo2, hi0 + hi2, lo1 + lo3, hi1 + hi3].
AIRLOCK_VNNI inline __m512i add_pairs_epi32(__m512i lo, __m512i hi) {
  return _mm512_add_epi32(_mm512_unpacklo_epi32(lo, hi), _mm512_unpackhi_epi32(lo, hi));
}
AIRLOCK_VNNI inline __m512i add_pairs_epi64(__m512i lo, __m512i hi) {
  return _mm512_add_epi32(_mm512_unpacklo_epi64(lo, hi), _mm512_unpackhi_epi64(lo, hi));
}

// Super-block `b`'s four registers of partial sums against its activations
// (zeros for a missing block).
template <bool kFiveBit, typename Block>
AIRLOCK_VNNI inline void qk_nat_block(const Block* b, const std::int8_t* y, __m512i d[4]) {
  if (b == nullptr) {
    AIRLOCK_UNROLL for (int r = 0; r < 4; ++r) d[r] = _mm512_setzero_si512();
    return;
  }
  const __m512i low = _mm512_set1_epi8(0x0F);
  const __m512i q0 = _mm512_loadu_si512(b->qs), q1 = _mm512_loadu_si512(b->qs + 64);
  __m512i v[4] = {_mm512_and_si512(q0, low), _mm512_and_si512(_mm512_srli_epi16(q0, 4), low),
                  _mm512_and_si512(q1, low), _mm512_and_si512(_mm512_srli_epi16(q1, 4), low)};
  if constexpr (kFiveBit) {
    // value l of sub-block k has its fifth bit at bit k of qh[l]
    const __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b->qh)));
    const __m512i one = _mm512_set1_epi8(1);
    AIRLOCK_UNROLL for (int r = 0; r < 4; ++r) {
      const __m512i shift = _mm512_inserti64x4(_mm512_set1_epi16(static_cast<short>(kNatSub[r][0])),
                                               _mm256_set1_epi16(static_cast<short>(kNatSub[r][1])), 1);
      v[r] = _mm512_or_si512(v[r], _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(qh, shift), one), 4));
    }
  }
  AIRLOCK_UNROLL for (int r = 0; r < 4; ++r)
    d[r] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), v[r], _mm512_loadu_si512(y + 64 * r));
}

template <bool kFiveBit>
AIRLOCK_VNNI void row_qk_nat(const std::uint8_t* row, const ActQ8_KNat* act, std::int64_t nb, float* out) {
  using Block = std::conditional_t<kFiveBit, BlockQ5_K, BlockQ4_K>;
  const auto* b = reinterpret_cast<const Block*>(row);
  // the tree below leaves each half's sums in the order of sub-blocks
  // 0 1 4 5 2 3 6 7; `order` puts sub-block k in lane k
  const __m512i order = _mm512_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15);
  __m512 acc = _mm512_setzero_ps();
  for (std::int64_t i = 0; i < nb; i += 2) {
    const Block* b1 = i + 1 < nb ? b + i + 1 : nullptr;
    prefetch_span<2 * sizeof(Block)>(reinterpret_cast<const char*>(b + i) + kLanesPrefetchBytes);
    const ActQ8_KNat& y = act[i / 2];
    __m512i d0[4], d1[4];
    qk_nat_block<kFiveBit>(b + i, y.qs, d0);
    qk_nat_block<kFiveBit>(b1, y.qs + 256, d1);
    // per 128 bits: each register's four partials of a sub-block summed,
    // sub-blocks [0 1 4 5] in a half's low 128 bits and [2 3 6 7] in its
    // high ones; then the two 128-bit parts of each half added
    const __m512i t0 = add_pairs_epi64(add_pairs_epi32(d0[0], d0[1]), add_pairs_epi32(d0[2], d0[3]));
    const __m512i t1 = add_pairs_epi64(add_pairs_epi32(d1[0], d1[1]), add_pairs_epi32(d1[2], d1[3]));
    const __m512i sums = _mm512_add_epi32(_mm512_shuffle_i32x4(t0, t1, _MM_SHUFFLE(2, 0, 2, 0)),
                                          _mm512_shuffle_i32x4(t0, t1, _MM_SHUFFLE(3, 1, 3, 1)));
    const __m512i s = _mm512_permutexvar_epi32(order, sums);
    __m512 scale, min;
    pair_scales_mins(b + i, b1, &scale, &min);
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(scale, _mm512_loadu_ps(y.d)), acc);
    acc = _mm512_fnmadd_ps(min, _mm512_loadu_ps(y.dsum), acc);
  }
  *out = hsum(_mm256_add_ps(_mm512_castps512_ps256(acc), _mm512_extractf32x8_ps(acc, 1)));
}

template <bool kFiveBit>
void matmul_qk_nat(const std::uint8_t* w, std::int64_t n_in, const ActQ8_KNat* in, float* y, std::int64_t r0,
                   std::int64_t r1) {
  const std::size_t stride = row_bytes(kFiveBit ? GgmlType::kQ5_K : GgmlType::kQ4_K, n_in);
  for (std::int64_t r = r0; r < r1; ++r)
    row_qk_nat<kFiveBit>(w + stride * static_cast<std::size_t>(r), in, n_in / 256, y + r);
}

// ---- Q6_K with VNNI: sixteen sub-blocks of 16 values per super-block, one
// per int32 lane of a 512-bit register. Four vpdpbusd (each lane takes four
// of its sub-block's values per instruction) give the sixteen integer dots
// of the unsigned 6-bit values (stored value + 32); the lanes start at
// -32 * (sum of the sub-block's activations), which takes the offset back
// out, and the sixteen int8 scales apply in float at once:
//   sum_k  d * scale_k * dy * (dot_k - 32 * sum_k)
// Against the 16-bit path of kernels_kquant.inc (a load, vpmaddubsw and
// vpdpwssd per 32 values and token) this is about a third of the
// instructions per super-block and token; kernel_bench Q6_K measured 1.5x
// at 8 and 16 tokens.

// Activations of one super-block for these kernels.
struct ActQ6Lanes {
  std::int8_t qs[256];     // piece m (4 bytes) of sub-block k (16 values) at m * 64 + k * 4
  std::int32_t start[16];  // -32 * (sum of sub-block k's quants)
  float d;
};

void quantize_act_q6_lanes(const float* x, std::int64_t n, ActQ6Lanes* out) {
  ActQ8_K tmp;
  for (std::int64_t i = 0; i < n / 256; ++i) {
    quantize_act_q8_k(x + i * 256, 256, &tmp);
    for (int k = 0; k < 16; ++k) {
      for (int m = 0; m < 4; ++m) std::memcpy(out[i].qs + m * 64 + k * 4, tmp.qs + 16 * k + 4 * m, 4);
      out[i].start[k] = -32 * tmp.bsums[k];
    }
    out[i].d = tmp.d;
  }
}

struct BlockQ6_K {
  std::uint8_t ql[128];
  std::uint8_t qh[64];
  std::int8_t scales[16];
  std::uint16_t d;
};

// A Q6_K super-block's 256 values (0..63) as four registers: lane k of
// r[m] = values 16k + 4m .. 16k + 4m + 3 (piece m of sub-block k).
AIRLOCK_VNNI inline void unpack_q6_lanes(const BlockQ6_K& b, __m512i r[4]) {
  const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(3);
  __m256i v[8];  // v[j]: values 32j .. 32j + 31 (sub-blocks 2j and 2j + 1)
  AIRLOCK_UNROLL for (int h = 0; h < 2; ++h) {
    const std::uint8_t* ql = b.ql + 64 * h;
    const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qh + 32 * h));
    const __m256i l0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql));
    const __m256i l1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql + 32));
    v[4 * h] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4));
    v[4 * h + 1] = _mm256_or_si256(_mm256_and_si256(l1, m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4));
    v[4 * h + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m2), 4));
    v[4 * h + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m2), 4));
  }
  // z[a]: sub-blocks 4a .. 4a + 3, dword 4c + m = piece m of sub-block
  // 4a + c; within each register to dword 4m + c, so that 128-bit chunk m
  // holds piece m of the four sub-blocks; then chunk m of z[a] becomes
  // chunk a of r[m] (a 4 x 4 transpose of 128-bit chunks).
  const __m512i idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  __m512i z[4];
  AIRLOCK_UNROLL for (int a = 0; a < 4; ++a)
    z[a] = _mm512_permutexvar_epi32(idx, _mm512_inserti64x4(_mm512_castsi256_si512(v[2 * a]), v[2 * a + 1], 1));
  const __m512i e01 = _mm512_shuffle_i64x2(z[0], z[1], 0x88), o01 = _mm512_shuffle_i64x2(z[0], z[1], 0xDD);
  const __m512i e23 = _mm512_shuffle_i64x2(z[2], z[3], 0x88), o23 = _mm512_shuffle_i64x2(z[2], z[3], 0xDD);
  r[0] = _mm512_shuffle_i64x2(e01, e23, 0x88);
  r[2] = _mm512_shuffle_i64x2(e01, e23, 0xDD);
  r[1] = _mm512_shuffle_i64x2(o01, o23, 0x88);
  r[3] = _mm512_shuffle_i64x2(o01, o23, 0xDD);
}

template <int T>
AIRLOCK_VNNI void row_q6_lanes(const std::uint8_t* row, const ActQ6Lanes* const* act, const LaneChunk& c, float* out,
                               std::int64_t out_stride) {
  const auto* b = reinterpret_cast<const BlockQ6_K*>(row);
  __m512 acc[T];
  lanes_begin<T>(c, acc);
  for (std::int64_t i = c.u0; i < c.u1; ++i) {
    prefetch_bytes(reinterpret_cast<const char*>(b + i) + kLanesPrefetchBytes, sizeof(BlockQ6_K));
    __m512i r[4];
    unpack_q6_lanes(b[i], r);
    const __m512 scale =
        _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b[i].scales)))),
                      _mm512_set1_ps(_cvtsh_ss(b[i].d)));
    AIRLOCK_UNROLL for (int t = 0; t < T; ++t) {
      const ActQ6Lanes& y = act[t][i];
      // (from zero, the starts added after: see q8_lanes_group)
      __m512i s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), r[0], _mm512_loadu_si512(y.qs));
      AIRLOCK_UNROLL for (int m = 1; m < 4; ++m) s = _mm512_dpbusd_epi32(s, r[m], _mm512_loadu_si512(y.qs + 64 * m));
      s = _mm512_add_epi32(s, _mm512_loadu_si512(y.start));
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(scale, _mm512_set1_ps(y.d)), acc[t]);
    }
  }
  lanes_end<T>(c, acc, out, out_stride);
}

void matmul_q6_lanes(const std::uint8_t* w, std::int64_t n_in, const ActQ6Lanes* in, std::int64_t n_tokens, float* y,
                     std::int64_t n_out, std::int64_t r0, std::int64_t r1) {
  const std::int64_t nb = n_in / 256;
  thread_local std::vector<const ActQ6Lanes*> act;
  act.resize(static_cast<std::size_t>(n_tokens));
  for (std::int64_t t = 0; t < n_tokens; ++t) act[static_cast<std::size_t>(t)] = in + t * nb;
  for_rows_lanes([](auto T, const std::uint8_t* row, const ActQ6Lanes* const* a, const LaneChunk& c, float* out,
                    std::int64_t out_stride) { row_q6_lanes<T()>(row, a, c, out, out_stride); },
                 w, row_bytes(GgmlType::kQ6_K, n_in), act.data(), sizeof(ActQ6Lanes), nb, n_tokens, y, n_out, r0, r1);
}

#include "kernels_amx.inc"

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

bool is_k_quant(GgmlType t) { return t == GgmlType::kQ4_K || t == GgmlType::kQ5_K || t == GgmlType::kQ6_K; }
bool is_q8_0_family(GgmlType t) { return t == GgmlType::kQ8_0 || t == GgmlType::kQ4_0; }

}  // namespace

void MatmulInput::reset(GgmlType type, const float* x, std::int64_t n_in, std::int64_t n_tokens) {
  type_ = type;
  isa_ = active_isa();
  x_ = x;
  n_in_ = n_in;
  n_tokens_ = n_tokens;
  const bool q8_0 = is_q8_0_family(type);
  const bool k = is_k_quant(type);
  std::size_t bytes = 0;
  if (isa_ == KernelIsa::kScalar || (!q8_0 && !k)) {
    form_ = Form::kFloat;
  } else if (k && isa_ >= KernelIsa::kAvx512Vnni && type == GgmlType::kQ6_K) {
    form_ = Form::kQ6_KLanes;
    bytes = sizeof(ActQ6Lanes) * static_cast<std::size_t>(n_in / 256 * n_tokens);
  } else if (isa_ >= KernelIsa::kAmx && n_tokens >= kAmxMinTokens &&
             (k || (type == GgmlType::kQ8_0 && n_in % 256 == 0))) {
    form_ = k ? Form::kQ8_KAmx : Form::kQ8_0Amx;
    // per group of 16 tokens: the pairs of super-blocks, or groups of 16 blocks
    const std::size_t group = sizeof(ActAmxPair) * static_cast<std::size_t>(k ? (n_in / 256 + 1) / 2 : (n_in / 32 + 15) / 16);
    const std::int64_t groups = (n_tokens + kAmxTokens - 1) / kAmxTokens;
    bytes_.resize(group * static_cast<std::size_t>(groups));
    // the last group's columns past the batch: zeros (never stale floats,
    // which could be subnormal and slow)
    if (n_tokens % kAmxTokens != 0) std::memset(bytes_.data() + group * static_cast<std::size_t>(groups - 1), 0, group);
    return;
  } else if (k && isa_ >= KernelIsa::kAvx512Vnni && n_tokens == 1) {
    form_ = Form::kQ8_KOne;
    bytes = sizeof(ActQ8_KNat) * static_cast<std::size_t>((n_in / 256 + 1) / 2);
  } else if (k) {
    const bool lanes = isa_ >= KernelIsa::kAvx512Vnni;
    form_ = lanes ? Form::kQ8_KLanes : Form::kQ8_K;
    bytes = lanes ? sizeof(ActQ8_KPair) * static_cast<std::size_t>((n_in / 256 + 1) / 2 * n_tokens)
                  : sizeof(ActQ8_K) * static_cast<std::size_t>(n_in / 256 * n_tokens);
  } else if (isa_ >= KernelIsa::kAvx512Vnni) {
    form_ = n_in % 256 == 0 ? Form::kQ8_0Lanes : Form::kQ8_0Vnni;
    bytes = VnniInput::token_bytes(n_in / 32) * static_cast<std::size_t>(n_tokens);
  } else {
    form_ = Form::kQ8_0;
    bytes = sizeof(ActQ8_0) * static_cast<std::size_t>(n_in / 32 * n_tokens);
  }
  bytes_.resize(bytes);
}

void MatmulInput::quantize(std::int64_t t0, std::int64_t t1) {
  switch (form_) {
    case Form::kFloat:
      return;
    case Form::kQ8_K: {
      const std::int64_t nb = n_in_ / 256;
      auto* act = reinterpret_cast<ActQ8_K*>(bytes_.data());
      for (std::int64_t t = t0; t < t1; ++t) quantize_act_q8_k(x_ + t * n_in_, n_in_, act + t * nb);
      return;
    }
    case Form::kQ6_KLanes: {
      const std::int64_t nb = n_in_ / 256;
      auto* act = reinterpret_cast<ActQ6Lanes*>(bytes_.data());
      for (std::int64_t t = t0; t < t1; ++t) quantize_act_q6_lanes(x_ + t * n_in_, n_in_, act + t * nb);
      return;
    }
    case Form::kQ8_KAmx:
    case Form::kQ8_0Amx: {
      auto* act = reinterpret_cast<ActAmxPair*>(bytes_.data());
      for (std::int64_t t = t0; t < t1; ++t) {
        if (form_ == Form::kQ8_KAmx) quantize_act_amx(x_ + t * n_in_, n_in_, t, act);
        else quantize_act_amx_q8_0(x_ + t * n_in_, n_in_, t, act);
      }
      return;
    }
    case Form::kQ8_KOne:
      if (t0 < t1) quantize_act_q8_k_nat(x_, n_in_, reinterpret_cast<ActQ8_KNat*>(bytes_.data()));
      return;
    case Form::kQ8_KLanes: {
      const std::int64_t np = (n_in_ / 256 + 1) / 2;
      auto* act = reinterpret_cast<ActQ8_KPair*>(bytes_.data());
      for (std::int64_t t = t0; t < t1; ++t) quantize_act_q8_k_pairs(x_ + t * n_in_, n_in_, act + t * np);
      return;
    }
    case Form::kQ8_0: {
      const std::int64_t nb = n_in_ / 32;
      auto* act = reinterpret_cast<ActQ8_0*>(bytes_.data());
      for (std::int64_t t = t0; t < t1; ++t) quantize_act_q8_0(x_ + t * n_in_, n_in_, act + t * nb);
      return;
    }
    case Form::kQ8_0Vnni:
    case Form::kQ8_0Lanes: {
      const std::int64_t nb = n_in_ / 32;
      const bool lanes = form_ == Form::kQ8_0Lanes;
      // The weights' offset (Q8_0 128, Q4_0 8) times the block's sum, taken
      // out by the start value of the lanes that sum the block: all eight
      // lanes in the tile kernels, one in the lanes kernel.
      const int offset = type_ == GgmlType::kQ4_0 ? 8 : 128;
      const int start_scale = lanes ? offset : offset / 8;
      thread_local std::vector<ActQ8_0> tmp;
      tmp.resize(static_cast<std::size_t>(nb));
      for (std::int64_t t = t0; t < t1; ++t) {
        quantize_act_q8_0(x_ + t * n_in_, n_in_, tmp.data());
        // VnniInput's layout: quants, scales, lane starts, zeros past nb
        std::uint8_t* p = bytes_.data() + static_cast<std::size_t>(t) * VnniInput::token_bytes(nb);
        const std::size_t n = VnniInput::padded_blocks(nb);
        if (n != static_cast<std::size_t>(nb)) std::memset(p, 0, VnniInput::token_bytes(nb));
        auto* qs = reinterpret_cast<std::int8_t*>(p);
        auto* d = reinterpret_cast<float*>(p + n * 32);
        auto* corr = reinterpret_cast<std::int32_t*>(p + n * (32 + sizeof(float)));
        for (std::int64_t i = 0; i < nb; ++i) {
          const ActQ8_0& a = tmp[static_cast<std::size_t>(i)];
          if (lanes) {
            // group of sixteen blocks: 4-byte piece m of block 8h + k at
            // m * 64 + h * 32 + k * 4
            std::int8_t* group = qs + static_cast<std::size_t>(i / 16 * 16) * 32;
            for (int m = 0; m < 8; ++m) std::memcpy(group + m * 64 + (i % 16) / 8 * 32 + (i % 8) * 4, a.qs + 4 * m, 4);
          } else {
            std::memcpy(qs + i * 32, a.qs, 32);
          }
          d[i] = a.d;
          corr[i] = -start_scale * a.sum;
        }
      }
      return;
    }
  }
}

bool shares_matmul_input(GgmlType a, GgmlType b) {
  if (a == b) return true;
  // Q4_K and Q5_K share a form; Q6_K's differs from theirs for batches
  if (is_k_quant(a) || is_k_quant(b))
    return is_k_quant(a) && is_k_quant(b) && (a == GgmlType::kQ6_K) == (b == GgmlType::kQ6_K);
  // Q8_0 and Q4_0 differ in the VNNI form (the weight offset is folded in)
  return !is_q8_0_family(a) && !is_q8_0_family(b);
}

// A product of one to a few tokens reads each weight once with little work
// per byte, so its speed is how fast one thread can stream its rows. One
// sequential stream per core fell well short of what the memory gives:
// on the 2-core AMX VM, rows read in order streamed Q4_K at 18-19.6 GB/s
// against 25.8-27.8 GB/s when the range was read as four streams
// interleaved row by row (2 threads, 1.2 GB of weights; Q8_0, Q6_K and
// Q4_0 alike), and a plain read of 1 GiB gave 23 GB/s with one stream per
// thread and 30 GB/s with four (docs/benchmarks.md, "Four streams per
// thread"). More streams keep more lines in flight, which a core's
// prefetchers do not do for one sequential stream interleaved with
// computing. From 8 tokens up the kernels are bound by their arithmetic
// and gained nothing (slightly less), so larger batches read in order.
// Each row's result is computed exactly as before: only the order of the
// rows changes.
constexpr int kMatmulStreams = 4;
constexpr std::int64_t kStreamsMaxTokens = 4;
constexpr std::int64_t kStreamsMinRows = 32;  // a shorter range reads in order
std::atomic<bool> g_matmul_streams{true};

void matmul_rows(const MatmulInput& in, GgmlType type, const std::uint8_t* w, float* y, std::int64_t n_out,
                 std::int64_t r0, std::int64_t r1) {
  if (in.n_tokens_ > kStreamsMaxTokens || r1 - r0 < kStreamsMinRows || !g_matmul_streams.load(std::memory_order_relaxed))
    return in.run_rows(type, w, y, n_out, r0, r1);
  const std::int64_t part = (r1 - r0) / kMatmulStreams;
  for (std::int64_t k = 0; k < part; ++k)
    for (int s = 0; s < kMatmulStreams; ++s) {
      const std::int64_t r = r0 + s * part + k;
      in.run_rows(type, w, y, n_out, r, r + 1);
    }
  if (r0 + kMatmulStreams * part < r1) in.run_rows(type, w, y, n_out, r0 + kMatmulStreams * part, r1);
}

void MatmulInput::run_rows(GgmlType type, const std::uint8_t* w, float* y, std::int64_t n_out, std::int64_t r0,
                           std::int64_t r1) const {
  const MatmulInput& in = *this;
  const std::int64_t n_in = in.n_in_, n_tokens = in.n_tokens_;
  const std::uint8_t* bytes = in.bytes_.data();
  switch (in.form_) {
    case MatmulInput::Form::kFloat:
      if (in.isa_ >= KernelIsa::kAvx2) return matmul_float_avx2(type, w, n_in, in.x_, n_tokens, y, n_out, r0, r1);
      return matmul_rows_scalar(type, w, n_in, in.x_, n_tokens, y, n_out, r0, r1);
    case MatmulInput::Form::kQ8_0:
      return matmul_q8_avx2(type == GgmlType::kQ4_0, w, n_in, reinterpret_cast<const ActQ8_0*>(bytes), n_tokens, y,
                            n_out, r0, r1);
    case MatmulInput::Form::kQ8_0Vnni:
    case MatmulInput::Form::kQ8_0Lanes: {
      const VnniInput v{bytes};
      const bool q4 = type == GgmlType::kQ4_0;
      if (in.form_ == MatmulInput::Form::kQ8_0Lanes)
        return q4 ? matmul_q8_lanes<true>(w, n_in, v, n_tokens, y, n_out, r0, r1)
                  : matmul_q8_lanes<false>(w, n_in, v, n_tokens, y, n_out, r0, r1);
      return q4 ? matmul_q8_vnni<true>(w, n_in, v, n_tokens, y, n_out, r0, r1)
                : matmul_q8_vnni<false>(w, n_in, v, n_tokens, y, n_out, r0, r1);
    }
    case MatmulInput::Form::kQ8_KLanes: {
      const auto* act = reinterpret_cast<const ActQ8_KPair*>(bytes);
      if (type == GgmlType::kQ5_K) return matmul_qk_pairs<true>(w, n_in, act, n_tokens, y, n_out, r0, r1);
      return matmul_qk_pairs<false>(w, n_in, act, n_tokens, y, n_out, r0, r1);
    }
    case MatmulInput::Form::kQ8_KAmx: {
      const auto* act = reinterpret_cast<const ActAmxPair*>(bytes);
      if (type == GgmlType::kQ5_K) return matmul_qk_amx<true>(w, n_in, act, n_tokens, y, n_out, r0, r1);
      return matmul_qk_amx<false>(w, n_in, act, n_tokens, y, n_out, r0, r1);
    }
    case MatmulInput::Form::kQ8_0Amx:
      return matmul_q8_0_amx(w, n_in, reinterpret_cast<const ActAmxPair*>(bytes), n_tokens, y, n_out, r0, r1);
    case MatmulInput::Form::kQ8_KOne: {
      const auto* act = reinterpret_cast<const ActQ8_KNat*>(bytes);
      if (type == GgmlType::kQ5_K) return matmul_qk_nat<true>(w, n_in, act, y, r0, r1);
      return matmul_qk_nat<false>(w, n_in, act, y, r0, r1);
    }
    case MatmulInput::Form::kQ6_KLanes:
      return matmul_q6_lanes(w, n_in, reinterpret_cast<const ActQ6Lanes*>(bytes), n_tokens, y, n_out, r0, r1);
    case MatmulInput::Form::kQ8_K: {
      const auto* act = reinterpret_cast<const ActQ8_K*>(bytes);
      const std::size_t stride = row_bytes(type, n_in);
      return kq_avx2::matmul_kquant_rows(type, w, stride, act, n_in / 256, n_tokens, y, n_out, r0, r1);
    }
  }
}

void matmul_rows(GgmlType type, const std::uint8_t* w, std::int64_t n_in, const float* x, std::int64_t n_tokens,
                 float* y, std::int64_t n_out, std::int64_t r0, std::int64_t r1) {
  thread_local MatmulInput in;
  in.reset(type, x, n_in, n_tokens);
  in.quantize(0, n_tokens);
  matmul_rows(in, type, w, y, n_out, r0, r1);
}

namespace {

// exp(x) for x <= 0 (softmax arguments after the max is taken out), eight
// at a time: x = n ln2 + r with |r| <= ln2 / 2, exp(r) by its degree-6
// Taylor polynomial (relative error ~2e-7 on that interval), times 2^n
// built in the exponent bits. Below -87.3 the result flushes to 0.
AIRLOCK_AVX2 inline __m256 exp_nonpositive(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.33f);
  const __m256 underflow = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  x = _mm256_max_ps(x, lo);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // r = x - n ln2, with ln2 split in two for precision (Cody-Waite)
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.0f / 720);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(underflow, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

// Eight cached keys or values as f32, from an f32 or an f16 cache.
AIRLOCK_AVX2 inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
AIRLOCK_AVX2 inline __m256 load8(const std::uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// q . k over n (a multiple of 8) dimensions, k from the cache.
AIRLOCK_AVX2 inline float dot_cached(const float* q, const float* k, int n) { return dot_f32(q, k, n); }
AIRLOCK_AVX2 inline float dot_cached(const float* q, const std::uint16_t* k, int n) {
  __m256 acc = _mm256_setzero_ps();
  for (int i = 0; i < n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), load8(k + i), acc);
  return hsum(acc);
}

// Lane i = the sum of v[i]'s eight lanes: eight horizontal sums in nine
// operations instead of about fifty.
AIRLOCK_AVX2 inline __m256 hsum8(const __m256 v[8]) {
  const __m256 s01 = _mm256_hadd_ps(v[0], v[1]), s23 = _mm256_hadd_ps(v[2], v[3]);
  const __m256 s45 = _mm256_hadd_ps(v[4], v[5]), s67 = _mm256_hadd_ps(v[6], v[7]);
  const __m256 s0123 = _mm256_hadd_ps(s01, s23), s4567 = _mm256_hadd_ps(s45, s67);
  return _mm256_add_ps(_mm256_permute2f128_ps(s0123, s4567, 0x20), _mm256_permute2f128_ps(s0123, s4567, 0x31));
}

// c * tanh(s / c) for a cap c > 0 (a score of any size ends within
// (-c, c), near s while |s| is well below c); s itself for c = 0.
inline float soft_cap(float s, float c) { return c > 0 ? c * std::tanh(s / c) : s; }

inline float cached_value(float x) { return x; }
inline float cached_value(std::uint16_t h) { return fp16_to_fp32(h); }

// One query head over n positions (row offsets offs[0, n)), plain loops:
// part = {m, l, o} as attend_span defines them.
template <typename T>
void attend_span_scalar(const float* q, const T* k, const T* v, const std::int64_t* offs, int n, int head_dim,
                        AttendScore score, float* scores, float* part) {
  float m = -INFINITY;
  for (int p = 0; p < n; ++p) {
    float s = 0;
    for (int i = 0; i < head_dim; ++i) s += q[i] * cached_value(k[offs[p] + i]);
    scores[p] = soft_cap(s * score.scale, score.softcap);
    m = std::max(m, scores[p]);
  }
  float l = 0;
  for (int p = 0; p < n; ++p) l += scores[p] = std::exp(scores[p] - m);
  float* o = part + 2;
  std::fill(o, o + head_dim, 0.0f);
  for (int p = 0; p < n; ++p)
    for (int i = 0; i < head_dim; ++i) o[i] += scores[p] * cached_value(v[offs[p] + i]);
  part[0] = m;
  part[1] = l;
}

// A head's keys or values are head_dim numbers every kv_dim in the cache
// (1 KiB apart for 8 heads of 64 in f16), so the hardware prefetchers do
// not follow them: the attention loops ask for the row kAttendPrefetch
// positions ahead (bench/kernel_bench --attention 640: 6.3 -> 1.9 ms per
// token over 16 layers; 8 positions ahead gave 2.6, 64 gave 2.3).
constexpr int kAttendPrefetch = 32;

// What the attention loops prefetch (pf_bytes below): that many bytes of
// each key (or value) row kAttendPrefetch positions ahead, and of the
// first rows before the loop. A span's first group asks for the rows'
// bytes for all the call's heads, the others for their own (already near).
template <typename T>
inline void prefetch_rows_start(const T* base, const std::int64_t* offs, int n, std::size_t bytes) {
  for (int p = 0; p < std::min(n, kAttendPrefetch); ++p) prefetch_bytes(base + offs[p], bytes);
}
template <typename T>
inline void prefetch_row_ahead(const T* base, const std::int64_t* offs, int p, int n, std::size_t bytes) {
  if (p + kAttendPrefetch < n) prefetch_bytes(base + offs[p + kAttendPrefetch], bytes);
}

// The weighted sum of n positions' values for dimensions [0, 8 * kW) of v
// (already offset to them), for n_q heads: o[g * o_stride + i] =
// sum_p scores[g * n + p] * v[offs[p] + i].
template <int kW, typename T>
AIRLOCK_AVX2 void attend_values(const T* v, const std::int64_t* offs, int n_q, int n, const float* scores, float* o,
                                int o_stride, std::size_t pf_bytes) {
  __m256 acc[4][kW];
  AIRLOCK_UNROLL for (int g = 0; g < 4; ++g) AIRLOCK_UNROLL for (int c = 0; c < kW; ++c) acc[g][c] = _mm256_setzero_ps();
  prefetch_rows_start(v, offs, n, pf_bytes);
  for (int p = 0; p < n; ++p) {
    const T* vp = v + offs[p];
    prefetch_row_ahead(v, offs, p, n, pf_bytes);
    __m256 vv[kW];
    AIRLOCK_UNROLL for (int c = 0; c < kW; ++c) vv[c] = load8(vp + 8 * c);
    AIRLOCK_UNROLL for (int g = 0; g < 4; ++g) {
      if (g < n_q) {
        const __m256 w = _mm256_broadcast_ss(scores + g * n + p);
        AIRLOCK_UNROLL for (int c = 0; c < kW; ++c) acc[g][c] = _mm256_fmadd_ps(w, vv[c], acc[g][c]);
      }
    }
  }
  // unrolled with constant indices, like the loop above, so that acc stays
  // in registers (a run-time loop here kept it in memory: a store and a
  // load around every FMA)
  AIRLOCK_UNROLL for (int g = 0; g < 4; ++g) {
    if (g < n_q) {
      AIRLOCK_UNROLL for (int c = 0; c < kW; ++c) _mm256_storeu_ps(o + g * o_stride + 8 * c, acc[g][c]);
    }
  }
}

// n_q heads' scores (rows of n), capped first when softcap > 0, to
// softmax weights against each row's maximum, unnormalised:
// part[g * part_stride] = {m, l} for head g.
AIRLOCK_AVX2 void span_weights(float* scores, int n_q, int n, float softcap, float* part, int part_stride) {
  for (int g = 0; g < n_q; ++g) {
    float* s = scores + g * n;
    if (softcap > 0)
      for (int j = 0; j < n; ++j) s[j] = soft_cap(s[j], softcap);
    __m256 m8 = _mm256_set1_ps(-INFINITY);
    int i = 0;
    for (; i + 8 <= n; i += 8) m8 = _mm256_max_ps(m8, _mm256_loadu_ps(s + i));
    float m = hsum_max(m8);
    for (int j = i; j < n; ++j) m = std::max(m, s[j]);
    const __m256 mv = _mm256_set1_ps(m);
    __m256 sum8 = _mm256_setzero_ps();
    for (i = 0; i + 8 <= n; i += 8) {
      const __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(s + i), mv));
      _mm256_storeu_ps(s + i, e);
      sum8 = _mm256_add_ps(sum8, e);
    }
    float l = hsum(sum8);
    for (; i < n; ++i) l += s[i] = std::exp(s[i] - m);
    part[g * part_stride] = m;
    part[g * part_stride + 1] = l;
  }
}

// The scores of positions [p, n) one at a time (the vector kernels' tail),
// then span_weights into the heads' parts.
template <typename T>
AIRLOCK_AVX2 void finish_span_scores(const float* q, int n_q, const T* k, const std::int64_t* offs, int p, int n,
                                     int head_dim, AttendScore score, float* scores, float* part) {
  for (; p < n; ++p)
    for (int g = 0; g < n_q; ++g) scores[g * n + p] = dot_cached(q + g * head_dim, k + offs[p], head_dim) * score.scale;
  span_weights(scores, n_q, n, score.softcap, part, attend_part_floats(head_dim));
}

// n positions (row offsets offs[0, n)) for n_q (<= 4) query heads sharing
// one key/value head (grouped-query attention), head_dim a multiple of 8:
// scores for two positions and up to four heads at a time (eight
// independent FMA chains), softmax weights, then the weighted sum of values
// sixteen dimensions at a time; each key and value row is read for the
// whole group instead of once per head. T: float or f16 bits
// (std::uint16_t). `scores` holds n_q rows of n; head g's part (m, l, o) at
// part + g * (head_dim + 2).
template <typename T>
AIRLOCK_AVX2 void attend_span_avx2(const float* q, int n_q, const T* k, const T* v, const std::int64_t* offs, int n,
                                   int head_dim, AttendScore score, std::size_t pf_bytes, float* scores, float* part) {
  prefetch_rows_start(k, offs, n, pf_bytes);
  // Scores.
  int p = 0;
  for (; p + 2 <= n; p += 2) {
    const T* k0 = k + offs[p];
    const T* k1 = k + offs[p + 1];
    prefetch_row_ahead(k, offs, p, n, pf_bytes);
    prefetch_row_ahead(k, offs, p + 1, n, pf_bytes);
    __m256 acc[2][4];
    AIRLOCK_UNROLL for (int g = 0; g < 4; ++g) acc[0][g] = acc[1][g] = _mm256_setzero_ps();
    for (int d = 0; d < head_dim; d += 8) {
      const __m256 a = load8(k0 + d), b = load8(k1 + d);
      AIRLOCK_UNROLL for (int g = 0; g < 4; ++g) {
        if (g < n_q) {
          const __m256 qg = _mm256_loadu_ps(q + g * head_dim + d);
          acc[0][g] = _mm256_fmadd_ps(qg, a, acc[0][g]);
          acc[1][g] = _mm256_fmadd_ps(qg, b, acc[1][g]);
        }
      }
    }
    // lane 2g + j: head g at position p + j
    const __m256 sums[8] = {acc[0][0], acc[1][0], acc[0][1], acc[1][1], acc[0][2], acc[1][2], acc[0][3], acc[1][3]};
    const __m256 sc = _mm256_mul_ps(hsum8(sums), _mm256_set1_ps(score.scale));
    const __m128 lo = _mm256_castps256_ps128(sc), hi = _mm256_extractf128_ps(sc, 1);
    _mm_storel_pi(reinterpret_cast<__m64*>(scores + p), lo);
    if (n_q > 1) _mm_storeh_pi(reinterpret_cast<__m64*>(scores + n + p), lo);
    if (n_q > 2) _mm_storel_pi(reinterpret_cast<__m64*>(scores + 2 * n + p), hi);
    if (n_q > 3) _mm_storeh_pi(reinterpret_cast<__m64*>(scores + 3 * n + p), hi);
  }
  finish_span_scores(q, n_q, k, offs, p, n, head_dim, score, scores, part);
  // the first pass over the values prefetches as the scores did, the
  // others find the rows near
  const int stride = attend_part_floats(head_dim);
  const std::size_t slice_bytes = 16 * sizeof(T);
  int d = 0;
  for (; d + 16 <= head_dim; d += 16)
    attend_values<2>(v + d, offs, n_q, n, scores, part + 2 + d, stride, d == 0 ? pf_bytes : slice_bytes);
  if (d < head_dim) attend_values<1>(v + d, offs, n_q, n, scores, part + 2 + d, stride, d == 0 ? pf_bytes : slice_bytes);
}

// The same with 512-bit registers, for head_dim a multiple of 16: about
// half the instructions per position. Scores for four positions and four
// heads at a time (sixteen FMA chains over 16 dimensions a step), their
// sixteen sums brought into one register by a tree of shuffles (lane
// 4g + j: head g at position j); values 64 dimensions (four registers) a
// pass, every head's four accumulators in registers.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

AIRLOCK_VNNI inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
AIRLOCK_VNNI inline __m512 load16(const std::uint16_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// Lane 4g + j = the sum of a[g][j]'s sixteen lanes.
AIRLOCK_VNNI inline __m512 hsum16x16(const __m512 a[4][4]) {
  __m512 y[4];
  AIRLOCK_UNROLL for (int g = 0; g < 4; ++g) {
    // per 128 bits: [j0 + j0', j1 + j1', ...] pairs, then the four positions
    const __m512 x01 = _mm512_add_ps(_mm512_unpacklo_ps(a[g][0], a[g][1]), _mm512_unpackhi_ps(a[g][0], a[g][1]));
    const __m512 x23 = _mm512_add_ps(_mm512_unpacklo_ps(a[g][2], a[g][3]), _mm512_unpackhi_ps(a[g][2], a[g][3]));
    y[g] = _mm512_add_ps(_mm512_shuffle_ps(x01, x23, 0x44), _mm512_shuffle_ps(x01, x23, 0xEE));
  }
  // y[g]: each 128-bit part holds positions 0-3's partial sums; add the parts
  const __m512 z01 = _mm512_add_ps(_mm512_shuffle_f32x4(y[0], y[1], 0x88), _mm512_shuffle_f32x4(y[0], y[1], 0xDD));
  const __m512 z23 = _mm512_add_ps(_mm512_shuffle_f32x4(y[2], y[3], 0x88), _mm512_shuffle_f32x4(y[2], y[3], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(z01, z23, 0x88), _mm512_shuffle_f32x4(z01, z23, 0xDD));
}

// Values, dimensions [0, 16 * kW) of v; as attend_values.
template <int kW, typename T>
AIRLOCK_VNNI void attend_values512(const T* v, const std::int64_t* offs, int n_q, int n, const float* scores, float* o,
                                   int o_stride, std::size_t pf_bytes) {
  __m512 acc[4][kW];
  AIRLOCK_UNROLL for (int g = 0; g < 4; ++g) AIRLOCK_UNROLL for (int c = 0; c < kW; ++c) acc[g][c] = _mm512_setzero_ps();
  prefetch_rows_start(v, offs, n, pf_bytes);
  for (int p = 0; p < n; ++p) {
    const T* vp = v + offs[p];
    prefetch_row_ahead(v, offs, p, n, pf_bytes);
    __m512 vv[kW];
    AIRLOCK_UNROLL for (int c = 0; c < kW; ++c) vv[c] = load16(vp + 16 * c);
    AIRLOCK_UNROLL for (int g = 0; g < 4; ++g) {
      if (g < n_q) {
        const __m512 w = _mm512_set1_ps(scores[g * n + p]);
        AIRLOCK_UNROLL for (int c = 0; c < kW; ++c) acc[g][c] = _mm512_fmadd_ps(w, vv[c], acc[g][c]);
      }
    }
  }
  AIRLOCK_UNROLL for (int g = 0; g < 4; ++g) {
    if (g < n_q) {
      AIRLOCK_UNROLL for (int c = 0; c < kW; ++c) _mm512_storeu_ps(o + g * o_stride + 16 * c, acc[g][c]);
    }
  }
}

template <typename T>
AIRLOCK_VNNI void attend_span512(const float* q, int n_q, const T* k, const T* v, const std::int64_t* offs, int n,
                                 int head_dim, AttendScore score, std::size_t pf_bytes, float* scores, float* part) {
  prefetch_rows_start(k, offs, n, pf_bytes);
  int p = 0;
  for (; p + 4 <= n; p += 4) {
    for (int j = 0; j < 4; ++j) prefetch_row_ahead(k, offs, p + j, n, pf_bytes);
    const T* kp[4] = {k + offs[p], k + offs[p + 1], k + offs[p + 2], k + offs[p + 3]};
    __m512 acc[4][4];
    AIRLOCK_UNROLL for (int g = 0; g < 4; ++g) AIRLOCK_UNROLL for (int j = 0; j < 4; ++j) acc[g][j] = _mm512_setzero_ps();
    for (int d = 0; d < head_dim; d += 16) {
      __m512 kk[4];
      AIRLOCK_UNROLL for (int j = 0; j < 4; ++j) kk[j] = load16(kp[j] + d);
      AIRLOCK_UNROLL for (int g = 0; g < 4; ++g) {
        if (g < n_q) {
          const __m512 qg = _mm512_loadu_ps(q + g * head_dim + d);
          AIRLOCK_UNROLL for (int j = 0; j < 4; ++j) acc[g][j] = _mm512_fmadd_ps(qg, kk[j], acc[g][j]);
        }
      }
    }
    const __m512 sc = _mm512_mul_ps(hsum16x16(acc), _mm512_set1_ps(score.scale));
    _mm_storeu_ps(scores + p, _mm512_castps512_ps128(sc));
    if (n_q > 1) _mm_storeu_ps(scores + n + p, _mm512_extractf32x4_ps(sc, 1));
    if (n_q > 2) _mm_storeu_ps(scores + 2 * n + p, _mm512_extractf32x4_ps(sc, 2));
    if (n_q > 3) _mm_storeu_ps(scores + 3 * n + p, _mm512_extractf32x4_ps(sc, 3));
  }
  finish_span_scores(q, n_q, k, offs, p, n, head_dim, score, scores, part);
  const int stride = attend_part_floats(head_dim);
  const std::size_t slice_bytes = 64 * sizeof(T);
  int d = 0;
  for (; d + 64 <= head_dim; d += 64)
    attend_values512<4>(v + d, offs, n_q, n, scores, part + 2 + d, stride, d == 0 ? pf_bytes : slice_bytes);
  const std::size_t tail_pf = d == 0 ? pf_bytes : slice_bytes;
  switch ((head_dim - d) / 16) {
    case 3: attend_values512<3>(v + d, offs, n_q, n, scores, part + 2 + d, stride, tail_pf); break;
    case 2: attend_values512<2>(v + d, offs, n_q, n, scores, part + 2 + d, stride, tail_pf); break;
    case 1: attend_values512<1>(v + d, offs, n_q, n, scores, part + 2 + d, stride, tail_pf); break;
    default: break;
  }
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

// attend_span: every group of (up to) four query heads in turn over the
// span, so the span's rows of all n_kv heads are read together: the first
// group prefetches each row's bytes for all of them, and the others find
// them near, rather than one head's few bytes per row across the whole
// context, then the next head's.
template <typename T>
void attend_span_impl(const float* q, int n_q, int n_kv, const T* k, const T* v, std::int64_t kv_stride,
                      const std::int32_t* table, int block, int p0, int p1, int head_dim, AttendScore score,
                      float* scores, float* part) {
  const int n = p1 - p0;
  thread_local std::vector<std::int64_t> offs;
  offs.resize(static_cast<std::size_t>(n));
  for (int p = p0; p < p1; ++p)
    offs[static_cast<std::size_t>(p - p0)] = (static_cast<std::int64_t>(table[p / block]) * block + p % block) * kv_stride;
  const KernelIsa isa = active_isa();
  const int stride = attend_part_floats(head_dim);
  if (isa < KernelIsa::kAvx2 || head_dim % 8 != 0) {
    for (int head = 0; head < n_q * n_kv; ++head)
      attend_span_scalar(q + head * head_dim, k + head / n_q * head_dim, v + head / n_q * head_dim, offs.data(), n,
                         head_dim, score, scores, part + head * stride);
    return;
  }
  const bool wide = isa >= KernelIsa::kAvx512Vnni && head_dim % 16 == 0;
  const std::size_t row_bytes = static_cast<std::size_t>(n_kv) * static_cast<std::size_t>(head_dim) * sizeof(T);
  for (int h = 0; h < n_kv; ++h)
    for (int g = 0; g < n_q; g += 4) {
      const int head = h * n_q + g;
      const std::size_t pf_bytes = head == 0 ? row_bytes : head_dim * sizeof(T);
      (wide ? attend_span512<T> : attend_span_avx2<T>)(q + head * head_dim, std::min(4, n_q - g), k + h * head_dim,
                                                      v + h * head_dim, offs.data(), n, head_dim, score, pf_bytes,
                                                      scores + static_cast<std::int64_t>(g) * n, part + head * stride);
    }
}

template <typename T>
void attend_heads_impl(const float* q, int n_q, int n_kv, const T* k, const T* v, std::int64_t kv_stride,
                       const std::int32_t* table, int block, int p0, int n_ctx, int head_dim, AttendScore score,
                       float* scores, float* out) {
  const int n_spans = (n_ctx - p0 + kAttendSpan - 1) / kAttendSpan, n_heads = n_q * n_kv;
  const std::int64_t span_floats = static_cast<std::int64_t>(n_heads) * attend_part_floats(head_dim);
  thread_local std::vector<float> parts;
  parts.resize(static_cast<std::size_t>(n_spans * span_floats));
  for (int s = 0; s < n_spans; ++s)
    attend_span_impl(q, n_q, n_kv, k, v, kv_stride, table, block, p0 + s * kAttendSpan,
                     std::min(n_ctx, p0 + (s + 1) * kAttendSpan), head_dim, score, scores,
                     parts.data() + s * span_floats);
  attend_merge(parts.data(), n_spans, span_floats, n_heads, head_dim, out);
}

AIRLOCK_AVX2 void fp32_to_fp16_avx2(const float* x, std::uint16_t* y, std::int64_t n) {
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  for (; i < n; ++i) y[i] = fp32_to_fp16(x[i]);
}

// exp(x) for eight floats, relative error below 2e-7 over the clamped range
// [-87, 88] (Cephes' expf: x = n ln2 + r with ln2 in two parts, a degree-5
// polynomial for exp(r), then 2^n through the exponent bits). glibc's expf
// is a call per element and was a few percent of a decode step as SwiGLU.
AIRLOCK_AVX2 inline __m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

AIRLOCK_AVX2 inline __m256 silu_mul8(__m256 g, __m256 u) {
  const __m256 one = _mm256_set1_ps(1.0f);
  return _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), g)))), u);
}

// The last n % 8 values go through the same eight-wide code (padded), so
// every element's result is the same wherever it sits in the row: a batch
// computes what each of its sequences computes alone.
AIRLOCK_AVX2 void silu_mul_avx2(const float* gate, const float* up, std::int64_t n, float* out) {
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(out + i, silu_mul8(_mm256_loadu_ps(gate + i), _mm256_loadu_ps(up + i)));
  if (i < n) {
    alignas(32) float g[8] = {}, u[8] = {}, o[8];
    std::memcpy(g, gate + i, static_cast<std::size_t>(n - i) * 4);
    std::memcpy(u, up + i, static_cast<std::size_t>(n - i) * 4);
    _mm256_store_ps(o, silu_mul8(_mm256_load_ps(g), _mm256_load_ps(u)));
    std::memcpy(out + i, o, static_cast<std::size_t>(n - i) * 4);
  }
}

}  // namespace

void silu_mul_row(const float* gate, const float* up, std::int64_t n, float* out) {
  if (active_isa() >= KernelIsa::kAvx2) return silu_mul_avx2(gate, up, n, out);
  for (std::int64_t i = 0; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

void attend_span(const float* q, int n_q, int n_kv, const float* k, const float* v, std::int64_t kv_stride,
                 const std::int32_t* table, int block, int p0, int p1, int head_dim, AttendScore score, float* scores,
                 float* part) {
  attend_span_impl(q, n_q, n_kv, k, v, kv_stride, table, block, p0, p1, head_dim, score, scores, part);
}

void attend_span(const float* q, int n_q, int n_kv, const std::uint16_t* k, const std::uint16_t* v,
                 std::int64_t kv_stride, const std::int32_t* table, int block, int p0, int p1, int head_dim,
                 AttendScore score, float* scores, float* part) {
  attend_span_impl(q, n_q, n_kv, k, v, kv_stride, table, block, p0, p1, head_dim, score, scores, part);
}

// out = sum_s exp(m_s - M) o_s / sum_s exp(m_s - M) l_s with M = max_s m_s,
// the spans taken in order. One span: o / l exactly (exp(0) is 1).
void attend_merge(const float* parts, int n_parts, std::int64_t part_stride, int n_heads, int head_dim, float* out) {
  const int stride = attend_part_floats(head_dim);
  for (int j = 0; j < n_heads; ++j) {
    float m = -INFINITY;
    for (int s = 0; s < n_parts; ++s) m = std::max(m, parts[s * part_stride + j * stride]);
    float* o = out + static_cast<std::int64_t>(j) * head_dim;
    std::fill(o, o + head_dim, 0.0f);
    float l = 0;
    for (int s = 0; s < n_parts; ++s) {
      const float* part = parts + s * part_stride + j * stride;
      const float w = std::exp(part[0] - m);
      l += w * part[1];
      for (int i = 0; i < head_dim; ++i) o[i] += w * part[2 + i];
    }
    const float inv = 1.0f / l;
    for (int i = 0; i < head_dim; ++i) o[i] *= inv;
  }
}

void attend_heads(const float* q, int n_q, int n_kv, const float* k, const float* v, std::int64_t kv_stride,
                  const std::int32_t* table, int block, int p0, int n_ctx, int head_dim, AttendScore score,
                  float* scores, float* out) {
  attend_heads_impl(q, n_q, n_kv, k, v, kv_stride, table, block, p0, n_ctx, head_dim, score, scores, out);
}

void attend_heads(const float* q, int n_q, int n_kv, const std::uint16_t* k, const std::uint16_t* v,
                  std::int64_t kv_stride, const std::int32_t* table, int block, int p0, int n_ctx, int head_dim,
                  AttendScore score, float* scores, float* out) {
  attend_heads_impl(q, n_q, n_kv, k, v, kv_stride, table, block, p0, n_ctx, head_dim, score, scores, out);
}

void fp32_to_fp16_row(const float* x, std::uint16_t* y, std::int64_t n) {
  if (active_isa() >= KernelIsa::kAvx2) return fp32_to_fp16_avx2(x, y, n);
  for (std::int64_t i = 0; i < n; ++i) y[i] = fp32_to_fp16(x[i]);
}

const char* kernel_isa() { return kernel_isa_name(active_isa()); }

const char* kernel_isa_name(KernelIsa isa) {
  switch (isa) {
    case KernelIsa::kAmx: return "amx";
    case KernelIsa::kAvx512Vnni: return "avx512vnni";
    case KernelIsa::kAvx2: return "avx2";
    case KernelIsa::kScalar: break;
  }
  return "scalar";
}

KernelIsa best_kernel_isa() { return cpu_isa(); }

void limit_kernel_isa(KernelIsa max) { g_isa_limit.store(static_cast<int>(max)); }

void force_scalar_kernels(bool on) { limit_kernel_isa(on ? KernelIsa::kScalar : KernelIsa::kAmx); }

void use_matmul_streams(bool on) { g_matmul_streams.store(on); }

}  // namespace airlock::engine
