// CPU compute kernels over GGUF weight types: the hot loops of the CPU
// backend. A scalar implementation is the reference; x86-64 AVX2+FMA+F16C
// versions, and AVX-512 VNNI ones for Q8_0/Q4_0 weights, are chosen at run
// time when the CPU has them (one dispatch per call, no per-element
// branching).
//
// Thread-safety: pure functions; callers split work by output rows.
#pragma once

#include <cstdint>

#include "airlock/engine/ggml_types.h"

namespace airlock::engine {

// Matrix times a batch of vectors, for output rows [r0, r1):
//   y[t * n_out + r] = sum_k W[r][k] * x[t * n_in + k],  t < n_tokens
// W is n_out rows of n_in elements of `type`, rows row_bytes(type, n_in)
// apart starting at `w`. x is (n_tokens, n_in) f32, y is (n_tokens, n_out) f32.
// Precondition: n_in % block size of `type` == 0; type is supported.
void matmul_rows(GgmlType type, const std::uint8_t* w, std::int64_t n_in, const float* x,
                 std::int64_t n_tokens, float* y, std::int64_t n_out, std::int64_t r0, std::int64_t r1);

// One attention head for one query over n_ctx cached positions:
//   out (head_dim) = softmax(scale * q . k_p) weighted sum of v_p,
// where position p's key is at k + slot(p) * kv_stride (likewise v) and
// slot(p) = table[p / block] * block + p % block. `scores` is scratch of n_ctx.
void attend_head(const float* q, const float* k, const float* v, std::int64_t kv_stride, const std::int32_t* table,
                 int block, int n_ctx, int head_dim, float scale, float* scores, float* out);

// Kernel levels, lowest first. Each level falls back to the one below for
// weight types it has no kernels of its own for.
enum class KernelIsa { kScalar = 0, kAvx2 = 1, kAvx512Vnni = 2 };

// Which level matmul_rows uses now: "avx512vnni", "avx2" or "scalar".
const char* kernel_isa();
const char* kernel_isa_name(KernelIsa isa);
// The highest level this CPU supports.
KernelIsa best_kernel_isa();
// Tests cap the level to compare each path with the scalar reference;
// force_scalar_kernels(on) caps at kScalar, or lifts the cap.
void limit_kernel_isa(KernelIsa max);
void force_scalar_kernels(bool on);

}  // namespace airlock::engine
