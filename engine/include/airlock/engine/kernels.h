// CPU compute kernels over GGUF weight types: the hot loops of the CPU
// backend. A scalar implementation is the reference; x86-64 AVX2+FMA+F16C
// versions, and AVX-512 VNNI ones for Q8_0, Q4_0 and the K-quants, are
// chosen at run time when the CPU has them (one dispatch per call, no per-element
// branching).
//
// Thread-safety: matmul_rows and attend_heads are pure functions; callers
// split work by output rows. A MatmulInput is prepared, then only read.
#pragma once

#include <cstdint>
#include <vector>

#include "airlock/engine/ggml_types.h"

namespace airlock::engine {

// Kernel levels, lowest first. Each level falls back to the one below for
// weight types it has no kernels of its own for.
// kAmx: AVX-512 VNNI plus Intel AMX (tile) integer multiplies, which
// serve prompt-sized batches of Q4_K/Q5_K and Q8_0; everything else runs as
// at kAvx512Vnni.
enum class KernelIsa { kScalar = 0, kAvx2 = 1, kAvx512Vnni = 2, kAmx = 3 };

// The activations of one matrix product, prepared once and then read by
// every thread computing a share of the output rows: for quantised weights
// they are quantised to 8 bits (per 32 or 256 values, as ggml does) in the
// layout the chosen kernels read; float weights read x as it is.
//
// Use: reset(), then quantize() over every token range (the ranges may run
// on different threads), then any number of matmul_rows() calls. The
// buffers are kept and reused by the next reset(). x must outlive the use.
class MatmulInput {
 public:
  void reset(GgmlType type, const float* x, std::int64_t n_in, std::int64_t n_tokens);
  // Whether quantize() has work to do (false for float weights).
  bool needs_quantize() const { return form_ != Form::kFloat; }
  // Prepares tokens [t0, t1).
  void quantize(std::int64_t t0, std::int64_t t1);

  GgmlType type() const { return type_; }
  std::int64_t n_in() const { return n_in_; }
  std::int64_t n_tokens() const { return n_tokens_; }

 private:
  friend void matmul_rows(const MatmulInput& in, GgmlType type, const std::uint8_t* w, float* y,
                          std::int64_t n_out, std::int64_t r0, std::int64_t r1);
  // Rows [r0, r1) with this input's kernels, in order (matmul_rows() may
  // visit a range's rows in another order).
  void run_rows(GgmlType type, const std::uint8_t* w, float* y, std::int64_t n_out, std::int64_t r0,
                std::int64_t r1) const;
  enum class Form { kFloat, kQ8_0, kQ8_0Vnni, kQ8_0Lanes, kQ8_K, kQ8_KLanes, kQ8_KOne, kQ8_KAmx, kQ8_0Amx, kQ6_KLanes };
  GgmlType type_ = GgmlType::kF32;
  KernelIsa isa_ = KernelIsa::kScalar;
  Form form_ = Form::kFloat;
  const float* x_ = nullptr;
  std::int64_t n_in_ = 0, n_tokens_ = 0;
  std::vector<std::uint8_t> bytes_;  // the quantised form; layout private to kernels.cpp
};

// Matrix times the prepared batch of vectors, for output rows [r0, r1):
//   y[t * n_out + r] = sum_k W[r][k] * x[t * n_in + k],  t < n_tokens
// W is n_out rows of n_in elements of `type`, rows row_bytes(type, n_in)
// apart starting at `w`; y is (n_tokens, n_out) f32.
// Preconditions: shares_matmul_input(in.type(), type); n_in % block size of
// the type == 0; the type is supported.
void matmul_rows(const MatmulInput& in, GgmlType type, const std::uint8_t* w, float* y, std::int64_t n_out,
                 std::int64_t r0, std::int64_t r1);

// Whether an input prepared for weights of type a also serves weights of
// type b (the float types share one form, Q4_K and Q5_K another).
bool shares_matmul_input(GgmlType a, GgmlType b);

// The same in one call (prepares x on this thread): x is (n_tokens, n_in) f32.
void matmul_rows(GgmlType type, const std::uint8_t* w, std::int64_t n_in, const float* x,
                 std::int64_t n_tokens, float* y, std::int64_t n_out, std::int64_t r0, std::int64_t r1);

// How attention scores a key: s = scale * q . k; with softcap c > 0 then
// c * tanh(s / c) (Gemma 2's attention logit soft-capping), before the
// softmax.
struct AttendScore {
  float scale = 1.0f;
  float softcap = 0.0f;
};

// Attention for one token's query heads: n_kv consecutive key/value heads
// with n_q query heads each (grouped-query attention; n_q 1 without
// grouping), over cached positions [p0, n_ctx) (p0 > 0: a sliding window).
// For query head j (of n_q * n_kv, sharing key/value head j / n_q):
//   out[j] (head_dim) = softmax_p(s_p) weighted sum of v_p,
// s_p the score of q[j] and k_p (AttendScore), where q and out hold the
// heads one after another, key/value head h of position p is at
// k + slot(p) * kv_stride + h * head_dim (likewise v) and
// slot(p) = table[p / block] * block + p % block. `scores` is scratch of
// n_q * min(n_ctx - p0, kAttendSpan). The vector paths read each key and
// value once per group.
//
// The positions go in spans of kAttendSpan from p0 (attend_span), their
// parts combined in order (attend_merge), so that a span's rows stay near
// while every head uses them, and so that the spans of one long context
// can go to different threads: whichever thread computes a span, and in
// whatever batch, a token's result is the same.
void attend_heads(const float* q, int n_q, int n_kv, const float* k, const float* v, std::int64_t kv_stride,
                  const std::int32_t* table, int block, int p0, int n_ctx, int head_dim, AttendScore score,
                  float* scores, float* out);
// The same over an f16 cache (IEEE half bits), accumulating in f32.
void attend_heads(const float* q, int n_q, int n_kv, const std::uint16_t* k, const std::uint16_t* v,
                  std::int64_t kv_stride, const std::int32_t* table, int block, int p0, int n_ctx, int head_dim,
                  AttendScore score, float* scores, float* out);

inline constexpr int kAttendSpan = 256;
// Floats in one query head's part of a span: m, l, then o (head_dim).
inline constexpr int attend_part_floats(int head_dim) { return head_dim + 2; }

// attend_heads' work over positions [p0, p1) only (a span: p1 at most
// kAttendSpan further). For query head j, at
// part + j * attend_part_floats(head_dim):
//   m = max_p s_p, l = sum_p exp(s_p - m), o = sum_p exp(s_p - m) v_p
// with s_p the score of q[j] and k_p. `scores` is scratch of n_q * (p1 - p0).
void attend_span(const float* q, int n_q, int n_kv, const float* k, const float* v, std::int64_t kv_stride,
                 const std::int32_t* table, int block, int p0, int p1, int head_dim, AttendScore score, float* scores,
                 float* part);
void attend_span(const float* q, int n_q, int n_kv, const std::uint16_t* k, const std::uint16_t* v,
                 std::int64_t kv_stride, const std::int32_t* table, int block, int p0, int p1, int head_dim,
                 AttendScore score, float* scores, float* part);
// out[j] (n_heads of head_dim) from n_parts consecutive spans' parts,
// span s's at parts + s * part_stride, laid out as attend_span writes them.
void attend_merge(const float* parts, int n_parts, std::int64_t part_stride, int n_heads, int head_dim, float* out);

// out[i] = silu(gate[i]) * up[i] (SwiGLU), silu(x) = x / (1 + exp(-x));
// out may alias gate or up. With AVX2 exp is a polynomial (relative error
// below 2e-7 for gate in [-87, 88]; below -87 the result, under 1e-35 in
// magnitude, is off by about as much), the same for every element of any row.
void silu_mul_row(const float* gate, const float* up, std::int64_t n, float* out);

// y (n) = x rounded to IEEE half (nearest even), as fp32_to_fp16 does.
void fp32_to_fp16_row(const float* x, std::uint16_t* y, std::int64_t n);

// Which level matmul_rows uses now: "amx", "avx512vnni", "avx2" or "scalar".
const char* kernel_isa();
const char* kernel_isa_name(KernelIsa isa);
// The highest level this CPU supports.
KernelIsa best_kernel_isa();
// Tests cap the level to compare each path with the scalar reference;
// force_scalar_kernels(on) caps at kScalar, or lifts the cap.
void limit_kernel_isa(KernelIsa max);
void force_scalar_kernels(bool on);
// Benchmarks compare products of a few tokens reading their rows in order
// (off) with the interleaved streams matmul_rows uses (on, the default).
void use_matmul_streams(bool on);

}  // namespace airlock::engine
