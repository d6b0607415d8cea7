// Block layouts and (de)quantisation of the GGUF weight types, following
// ggml's definitions (ggml-common.h, ggml-quants.c). The dequantisers are bit
// for bit ggml's. The quantisers exist for tests and the GGUF test writer:
// Q8_0 and Q4_0 are ggml's reference ones; the K-quants use ggml's scale
// searches (make_qkx2_quants / make_qx_quants) with plain rather than
// importance weights for Q6_K, so their blocks are valid and close to
// ggml's but not byte-identical.
#include "airlock/engine/ggml_types.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace airlock::engine {
namespace {

constexpr int QK = 32;    // elements per Q8_0 / Q4_0 block
constexpr int QK_K = 256;  // elements per K-quant super-block

struct BlockQ8_0 { std::uint16_t d; std::int8_t qs[QK]; };
struct BlockQ4_0 { std::uint16_t d; std::uint8_t qs[QK / 2]; };
struct BlockQ4_K { std::uint16_t d, dmin; std::uint8_t scales[12]; std::uint8_t qs[QK_K / 2]; };
struct BlockQ5_K { std::uint16_t d, dmin; std::uint8_t scales[12]; std::uint8_t qh[QK_K / 8]; std::uint8_t qs[QK_K / 2]; };
struct BlockQ6_K { std::uint8_t ql[QK_K / 2]; std::uint8_t qh[QK_K / 4]; std::int8_t scales[QK_K / 16]; std::uint16_t d; };
static_assert(sizeof(BlockQ8_0) == 34 && sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_K) == 144 &&
              sizeof(BlockQ5_K) == 176 && sizeof(BlockQ6_K) == 210, "ggml block sizes");

const TypeTraits kTraits[] = {
    /* 0 */ {"F32", 1, 4, true},      /* 1 */ {"F16", 1, 2, true},     /* 2 */ {"Q4_0", 32, 18, true},
    /* 3 */ {"Q4_1", 32, 20, false},  /* 4 */ {"", 0, 0, false},       /* 5 */ {"", 0, 0, false},
    /* 6 */ {"Q5_0", 32, 22, false},  /* 7 */ {"Q5_1", 32, 24, false}, /* 8 */ {"Q8_0", 32, 34, true},
    /* 9 */ {"Q8_1", 32, 36, false},  /* 10 */ {"Q2_K", 256, 84, false}, /* 11 */ {"Q3_K", 256, 110, false},
    /* 12 */ {"Q4_K", 256, 144, true}, /* 13 */ {"Q5_K", 256, 176, true}, /* 14 */ {"Q6_K", 256, 210, true},
    /* 15 */ {"Q8_K", 256, 292, false}, /* 16 */ {"IQ2_XXS", 256, 66, false}, /* 17 */ {"IQ2_XS", 256, 74, false},
    /* 18 */ {"IQ3_XXS", 256, 98, false}, /* 19 */ {"IQ1_S", 256, 50, false}, /* 20 */ {"IQ4_NL", 32, 18, false},
    /* 21 */ {"IQ3_S", 256, 110, false}, /* 22 */ {"IQ2_S", 256, 82, false}, /* 23 */ {"IQ4_XS", 256, 136, false},
    /* 24 */ {"I8", 1, 1, false},      /* 25 */ {"I16", 1, 2, false},   /* 26 */ {"I32", 1, 4, false},
    /* 27 */ {"I64", 1, 8, false},     /* 28 */ {"F64", 1, 8, false},   /* 29 */ {"IQ1_M", 256, 56, false},
    /* 30 */ {"BF16", 1, 2, true},
};

inline void get_scale_min_k4(int j, const std::uint8_t* q, std::uint8_t* d, std::uint8_t* m) {
  if (j < 4) {
    *d = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *d = static_cast<std::uint8_t>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *m = static_cast<std::uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

// Inverse of get_scale_min_k4 for 8 (scale, min) pairs of 6 bits each.
void pack_scale_min_k4(const std::uint8_t sc[8], const std::uint8_t mn[8], std::uint8_t out[12]) {
  std::memset(out, 0, 12);
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      out[j] = static_cast<std::uint8_t>(out[j] | sc[j]);
      out[j + 4] = static_cast<std::uint8_t>(out[j + 4] | mn[j]);
    } else {
      out[j + 4] = static_cast<std::uint8_t>((sc[j] & 0xF) | ((mn[j] & 0xF) << 4));
      out[j - 4] = static_cast<std::uint8_t>(out[j - 4] | ((sc[j] >> 4) << 6));
      out[j] = static_cast<std::uint8_t>(out[j] | ((mn[j] >> 4) << 6));
    }
  }
}

int nearest_int(float x) { return static_cast<int>(std::lrintf(x)); }

// Weighted least-squares fit of n values as x ~ scale * L - min with L in
// [0, n_max] and min >= 0 (ggml's make_qkx2_quants): the plain min/max fit,
// then n_step + 1 candidate inverse scales around it, each refined by the
// closed-form least-squares scale and min for its levels; the lowest weighted
// squared error wins. Returns the scale; *min_out gets the subtracted min.
float fit_affine(const float* x, const float* w, int n, int n_max, float rmin, float rdelta, int n_step,
                 std::uint8_t* levels, float* min_out) {
  float lo = x[0], hi = x[0], sum_w = 0, sum_x = 0;
  for (int i = 0; i < n; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
    sum_w += w[i];
    sum_x += w[i] * x[i];
  }
  lo = std::min(lo, 0.0f);  // the format subtracts a non-negative min
  if (!(hi > lo)) {         // constant block (or NaN): everything is the min
    std::fill(levels, levels + n, std::uint8_t{0});
    *min_out = -lo;
    return 0.0f;
  }
  auto quantise = [&](float iscale, float offset, std::uint8_t* out) {
    for (int i = 0; i < n; ++i) out[i] = static_cast<std::uint8_t>(std::clamp(nearest_int(iscale * (x[i] - offset)), 0, n_max));
  };
  auto error = [&](float scale, float offset, const std::uint8_t* l) {
    float e = 0;
    for (int i = 0; i < n; ++i) {
      const float diff = scale * static_cast<float>(l[i]) + offset - x[i];
      e += w[i] * diff * diff;
    }
    return e;
  };
  float scale = (hi - lo) / static_cast<float>(n_max);
  quantise(static_cast<float>(n_max) / (hi - lo), lo, levels);
  float best = error(scale, lo, levels);
  const float range_lo = lo;
  std::uint8_t aux[32];
  for (int step = 0; step <= n_step; ++step) {
    const float iscale = (rmin + rdelta * static_cast<float>(step) + static_cast<float>(n_max)) / (hi - range_lo);
    quantise(iscale, range_lo, aux);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      const float l = aux[i];
      sum_l += w[i] * l;
      sum_l2 += w[i] * l * l;
      sum_xl += w[i] * l * x[i];
    }
    const float det = sum_w * sum_l2 - sum_l * sum_l;
    if (!(det > 0)) continue;
    float s = (sum_w * sum_xl - sum_x * sum_l) / det;
    float m = (sum_l2 * sum_x - sum_l * sum_xl) / det;
    if (m > 0) {  // a positive offset is not representable: refit the scale alone
      m = 0;
      s = sum_xl / sum_l2;
    }
    const float e = error(s, m, aux);
    if (e < best) {
      best = e;
      scale = s;
      lo = m;
      std::copy(aux, aux + n, levels);
    }
  }
  *min_out = -lo;
  return scale;
}

// Q4_K / Q5_K super-block: eight 32-element affine fits, their scales and
// mins quantised to 6 bits against two fp16 super-scales, then the values
// requantised against the scales as they will be decoded.
void quantize_kaffine(const float* x, int bits, std::uint16_t* d_out, std::uint16_t* dmin_out,
                      std::uint8_t scales_out[12], std::uint8_t q_out[QK_K]) {
  const int n_levels = (1 << bits) - 1;
  float sc[8], mn[8], weights[32];
  float max_sc = 0, max_mn = 0;
  for (int j = 0; j < 8; ++j) {
    const float* xs = x + 32 * j;
    float sum_x2 = 0;
    for (int i = 0; i < 32; ++i) sum_x2 += xs[i] * xs[i];
    const float av = std::sqrt(sum_x2 / 32);
    for (int i = 0; i < 32; ++i) weights[i] = av + std::fabs(xs[i]);  // ggml's weighting
    sc[j] = bits == 4 ? fit_affine(xs, weights, 32, n_levels, -1.0f, 0.1f, 20, q_out + 32 * j, &mn[j])
                      : fit_affine(xs, weights, 32, n_levels, -0.5f, 0.1f, 15, q_out + 32 * j, &mn[j]);
    max_sc = std::max(max_sc, sc[j]);
    max_mn = std::max(max_mn, mn[j]);
  }
  const float inv_sc = max_sc > 0 ? 63.0f / max_sc : 0.0f, inv_mn = max_mn > 0 ? 63.0f / max_mn : 0.0f;
  std::uint8_t isc[8], imn[8];
  for (int j = 0; j < 8; ++j) {
    isc[j] = static_cast<std::uint8_t>(std::clamp(nearest_int(inv_sc * sc[j]), 0, 63));
    imn[j] = static_cast<std::uint8_t>(std::clamp(nearest_int(inv_mn * mn[j]), 0, 63));
  }
  *d_out = fp32_to_fp16(max_sc / 63.0f);
  *dmin_out = fp32_to_fp16(max_mn / 63.0f);
  const float d_eff = fp16_to_fp32(*d_out), dmin_eff = fp16_to_fp32(*dmin_out);
  for (int j = 0; j < 8; ++j) {
    const float s = d_eff * isc[j], m = dmin_eff * imn[j];
    for (int i = 0; i < 32; ++i) {
      const int q = s > 0 ? nearest_int((x[32 * j + i] + m) / s) : 0;
      q_out[32 * j + i] = static_cast<std::uint8_t>(std::clamp(q, 0, n_levels));
    }
  }
  pack_scale_min_k4(isc, imn, scales_out);
}

// Symmetric fit of n values as x ~ scale * L with L in [-n_max, n_max - 1]
// (ggml's make_qx_quants, unweighted): the value of largest magnitude maps to
// -n_max, then 18 nearby inverse scales are tried, each with its
// least-squares scale. Returns the (possibly negative) scale.
float fit_symmetric(const float* x, int n, int n_max) {
  float amax = 0, vmax = 0;
  for (int i = 0; i < n; ++i)
    if (std::fabs(x[i]) > amax) {
      amax = std::fabs(x[i]);
      vmax = x[i];
    }
  if (!(amax > 1e-15f)) return 0.0f;
  float best_scale = 0, best = -1;
  for (int step = -9; step <= 9; ++step) {
    const float iscale = -(static_cast<float>(n_max) + 0.1f * static_cast<float>(step)) / vmax;
    float sum_lx = 0, sum_l2 = 0;
    for (int i = 0; i < n; ++i) {
      const float l = static_cast<float>(std::clamp(nearest_int(iscale * x[i]), -n_max, n_max - 1));
      sum_lx += x[i] * l;
      sum_l2 += l * l;
    }
    // sum_lx^2 / sum_l2 is the error reduction of the least-squares scale.
    if (sum_l2 > 0 && (best < 0 || sum_lx * sum_lx > best * sum_l2)) {
      best_scale = sum_lx / sum_l2;
      best = best_scale * sum_lx;
    }
  }
  return best_scale;
}

}  // namespace

const TypeTraits* type_traits(std::uint32_t id) {
  if (id >= sizeof kTraits / sizeof kTraits[0] || kTraits[id].block_elems == 0) return nullptr;
  return &kTraits[id];
}

float fp16_to_fp32(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000) << 16;
  std::uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400) == 0) {
        mant <<= 1;
        --exp;
      }
      bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

std::uint16_t fp32_to_fp16(float f) {
  std::uint32_t x;
  std::memcpy(&x, &f, 4);
  const std::uint16_t sign = static_cast<std::uint16_t>((x >> 16) & 0x8000);
  const std::uint32_t abs = x & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7e00);  // NaN
  if (abs >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00);  // overflow (and Inf)
  if (abs < 0x38800000u) {  // result is subnormal or zero
    if (abs < 0x33000000u) return sign;
    const std::uint32_t mant = (abs & 0x7fffff) | 0x800000;
    const int shift = 113 - static_cast<int>(abs >> 23) + 13;  // 126 - exp + 14 - 1
    std::uint32_t q = mant >> shift;
    const std::uint32_t rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1))) ++q;
    return static_cast<std::uint16_t>(sign | q);
  }
  std::uint32_t h = ((abs - 0x38000000u) >> 13);
  const std::uint32_t rem = abs & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) ++h;  // round to nearest even
  return static_cast<std::uint16_t>(sign | h);
}

float bf16_to_fp32(std::uint16_t h) {
  std::uint32_t bits = static_cast<std::uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

std::uint16_t fp32_to_bf16(float f) {
  std::uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((x >> 16) | 64);  // quiet NaN
  return static_cast<std::uint16_t>((x + (0x7fff + ((x >> 16) & 1))) >> 16);
}

void dequantize_row(GgmlType t, const void* src, float* y, std::int64_t n) {
  switch (t) {
    case GgmlType::kF32:
      std::memcpy(y, src, static_cast<std::size_t>(n) * 4);
      return;
    case GgmlType::kF16: {
      const auto* h = static_cast<const std::uint16_t*>(src);
      for (std::int64_t i = 0; i < n; ++i) y[i] = fp16_to_fp32(h[i]);
      return;
    }
    case GgmlType::kBF16: {
      const auto* h = static_cast<const std::uint16_t*>(src);
      for (std::int64_t i = 0; i < n; ++i) y[i] = bf16_to_fp32(h[i]);
      return;
    }
    case GgmlType::kQ8_0: {
      const auto* b = static_cast<const BlockQ8_0*>(src);
      for (std::int64_t i = 0; i < n / QK; ++i) {
        const float d = fp16_to_fp32(b[i].d);
        for (int j = 0; j < QK; ++j) y[i * QK + j] = b[i].qs[j] * d;
      }
      return;
    }
    case GgmlType::kQ4_0: {
      const auto* b = static_cast<const BlockQ4_0*>(src);
      for (std::int64_t i = 0; i < n / QK; ++i) {
        const float d = fp16_to_fp32(b[i].d);
        for (int j = 0; j < QK / 2; ++j) {
          y[i * QK + j] = static_cast<float>((b[i].qs[j] & 0x0F) - 8) * d;
          y[i * QK + j + QK / 2] = static_cast<float>((b[i].qs[j] >> 4) - 8) * d;
        }
      }
      return;
    }
    case GgmlType::kQ4_K: {
      const auto* b = static_cast<const BlockQ4_K*>(src);
      for (std::int64_t i = 0; i < n / QK_K; ++i) {
        const float d = fp16_to_fp32(b[i].d), dmin = fp16_to_fp32(b[i].dmin);
        const std::uint8_t* q = b[i].qs;
        int is = 0;
        for (int j = 0; j < QK_K; j += 64) {
          std::uint8_t sc, m;
          get_scale_min_k4(is + 0, b[i].scales, &sc, &m);
          const float d1 = d * sc, m1 = dmin * m;
          get_scale_min_k4(is + 1, b[i].scales, &sc, &m);
          const float d2 = d * sc, m2 = dmin * m;
          for (int l = 0; l < 32; ++l) *y++ = d1 * static_cast<float>(q[l] & 0xF) - m1;
          for (int l = 0; l < 32; ++l) *y++ = d2 * static_cast<float>(q[l] >> 4) - m2;
          q += 32;
          is += 2;
        }
      }
      return;
    }
    case GgmlType::kQ5_K: {
      const auto* b = static_cast<const BlockQ5_K*>(src);
      for (std::int64_t i = 0; i < n / QK_K; ++i) {
        const float d = fp16_to_fp32(b[i].d), dmin = fp16_to_fp32(b[i].dmin);
        const std::uint8_t* ql = b[i].qs;
        const std::uint8_t* qh = b[i].qh;
        int is = 0;
        std::uint8_t u1 = 1, u2 = 2;
        for (int j = 0; j < QK_K; j += 64) {
          std::uint8_t sc, m;
          get_scale_min_k4(is + 0, b[i].scales, &sc, &m);
          const float d1 = d * sc, m1 = dmin * m;
          get_scale_min_k4(is + 1, b[i].scales, &sc, &m);
          const float d2 = d * sc, m2 = dmin * m;
          for (int l = 0; l < 32; ++l) *y++ = d1 * static_cast<float>((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
          for (int l = 0; l < 32; ++l) *y++ = d2 * static_cast<float>((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
          ql += 32;
          is += 2;
          u1 = static_cast<std::uint8_t>(u1 << 2);
          u2 = static_cast<std::uint8_t>(u2 << 2);
        }
      }
      return;
    }
    case GgmlType::kQ6_K: {
      const auto* b = static_cast<const BlockQ6_K*>(src);
      for (std::int64_t i = 0; i < n / QK_K; ++i) {
        const float d = fp16_to_fp32(b[i].d);
        const std::uint8_t* ql = b[i].ql;
        const std::uint8_t* qh = b[i].qh;
        const std::int8_t* sc = b[i].scales;
        for (int half = 0; half < QK_K; half += 128) {
          for (int l = 0; l < 32; ++l) {
            const int is = l / 16;
            const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
            const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
            const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            y[l + 0] = d * sc[is + 0] * static_cast<float>(q1);
            y[l + 32] = d * sc[is + 2] * static_cast<float>(q2);
            y[l + 64] = d * sc[is + 4] * static_cast<float>(q3);
            y[l + 96] = d * sc[is + 6] * static_cast<float>(q4);
          }
          y += 128;
          ql += 64;
          qh += 32;
          sc += 8;
        }
      }
      return;
    }
    default:
      std::memset(y, 0, static_cast<std::size_t>(n) * 4);  // unsupported: callers check traits first
  }
}

void quantize_row(GgmlType t, const float* x, void* dst, std::int64_t n) {
  switch (t) {
    case GgmlType::kF32:
      std::memcpy(dst, x, static_cast<std::size_t>(n) * 4);
      return;
    case GgmlType::kF16: {
      auto* h = static_cast<std::uint16_t*>(dst);
      for (std::int64_t i = 0; i < n; ++i) h[i] = fp32_to_fp16(x[i]);
      return;
    }
    case GgmlType::kBF16: {
      auto* h = static_cast<std::uint16_t*>(dst);
      for (std::int64_t i = 0; i < n; ++i) h[i] = fp32_to_bf16(x[i]);
      return;
    }
    case GgmlType::kQ8_0: {
      auto* b = static_cast<BlockQ8_0*>(dst);
      for (std::int64_t i = 0; i < n / QK; ++i) {
        float amax = 0;
        for (int j = 0; j < QK; ++j) amax = std::max(amax, std::fabs(x[i * QK + j]));
        const float d = amax / 127.0f, id = d > 0 ? 1.0f / d : 0.0f;
        b[i].d = fp32_to_fp16(d);
        for (int j = 0; j < QK; ++j) b[i].qs[j] = static_cast<std::int8_t>(std::lround(x[i * QK + j] * id));  // roundf, as ggml
      }
      return;
    }
    case GgmlType::kQ4_0: {
      auto* b = static_cast<BlockQ4_0*>(dst);
      for (std::int64_t i = 0; i < n / QK; ++i) {
        float amax = 0, vmax = 0;  // ggml: the value of largest magnitude maps to -8
        for (int j = 0; j < QK; ++j)
          if (std::fabs(x[i * QK + j]) > amax) {
            amax = std::fabs(x[i * QK + j]);
            vmax = x[i * QK + j];
          }
        const float d = vmax / -8.0f, id = d != 0 ? 1.0f / d : 0.0f;
        b[i].d = fp32_to_fp16(d);
        for (int j = 0; j < QK / 2; ++j) {
          const int q0 = std::min(15, static_cast<int>(x[i * QK + j] * id + 8.5f));
          const int q1 = std::min(15, static_cast<int>(x[i * QK + j + QK / 2] * id + 8.5f));
          b[i].qs[j] = static_cast<std::uint8_t>(q0 | (q1 << 4));
        }
      }
      return;
    }
    case GgmlType::kQ4_K: {
      auto* b = static_cast<BlockQ4_K*>(dst);
      for (std::int64_t i = 0; i < n / QK_K; ++i) {
        std::uint8_t q[QK_K];
        quantize_kaffine(x + i * QK_K, 4, &b[i].d, &b[i].dmin, b[i].scales, q);
        for (int j = 0; j < QK_K; j += 64)
          for (int l = 0; l < 32; ++l) b[i].qs[j / 2 + l] = static_cast<std::uint8_t>(q[j + l] | (q[j + 32 + l] << 4));
      }
      return;
    }
    case GgmlType::kQ5_K: {
      auto* b = static_cast<BlockQ5_K*>(dst);
      for (std::int64_t i = 0; i < n / QK_K; ++i) {
        std::uint8_t q[QK_K];
        quantize_kaffine(x + i * QK_K, 5, &b[i].d, &b[i].dmin, b[i].scales, q);
        std::memset(b[i].qh, 0, sizeof b[i].qh);
        for (int j = 0, pair = 0; j < QK_K; j += 64, ++pair)
          for (int l = 0; l < 32; ++l) {
            const int lo = q[j + l], hi = q[j + 32 + l];
            b[i].qs[j / 2 + l] = static_cast<std::uint8_t>((lo & 0xF) | ((hi & 0xF) << 4));
            if (lo & 16) b[i].qh[l] = static_cast<std::uint8_t>(b[i].qh[l] | (1 << (2 * pair)));
            if (hi & 16) b[i].qh[l] = static_cast<std::uint8_t>(b[i].qh[l] | (2 << (2 * pair)));
          }
      }
      return;
    }
    case GgmlType::kQ6_K: {
      auto* b = static_cast<BlockQ6_K*>(dst);
      for (std::int64_t i = 0; i < n / QK_K; ++i) {
        const float* xb = x + i * QK_K;
        // ggml's scheme: the sub-block scale of largest magnitude maps to -128
        // in the int8 scales, so the full signed range is used.
        float sub_scale[16], max_scale = 0, max_abs = 0;
        for (int s = 0; s < 16; ++s) {
          sub_scale[s] = fit_symmetric(xb + 16 * s, 16, 32);
          if (std::fabs(sub_scale[s]) > max_abs) {
            max_abs = std::fabs(sub_scale[s]);
            max_scale = sub_scale[s];
          }
        }
        const float iscale = max_abs > 0 ? -128.0f / max_scale : 0.0f;
        b[i].d = fp32_to_fp16(max_abs > 0 ? 1.0f / iscale : 0.0f);
        const float d_eff = fp16_to_fp32(b[i].d);
        std::uint8_t q[QK_K];
        for (int s = 0; s < 16; ++s) {
          const int sc = std::clamp(nearest_int(iscale * sub_scale[s]), -128, 127);
          b[i].scales[s] = static_cast<std::int8_t>(sc);
          const float step = d_eff * static_cast<float>(sc);
          for (int k = 0; k < 16; ++k) {
            const int v = step != 0 ? nearest_int(xb[16 * s + k] / step) : 0;
            q[16 * s + k] = static_cast<std::uint8_t>(std::clamp(v, -32, 31) + 32);
          }
        }
        std::memset(b[i].ql, 0, sizeof b[i].ql);
        std::memset(b[i].qh, 0, sizeof b[i].qh);
        for (int half = 0; half < 2; ++half)
          for (int l = 0; l < 32; ++l) {
            const std::uint8_t* qq = q + 128 * half;
            std::uint8_t* ql = b[i].ql + 64 * half;
            std::uint8_t* qh = b[i].qh + 32 * half;
            ql[l] = static_cast<std::uint8_t>((qq[l] & 0xF) | ((qq[l + 64] & 0xF) << 4));
            ql[l + 32] = static_cast<std::uint8_t>((qq[l + 32] & 0xF) | ((qq[l + 96] & 0xF) << 4));
            qh[l] = static_cast<std::uint8_t>((qq[l] >> 4) | ((qq[l + 32] >> 4) << 2) | ((qq[l + 64] >> 4) << 4) |
                                              ((qq[l + 96] >> 4) << 6));
          }
      }
      return;
    }
    default:
      std::memset(dst, 0, row_bytes(t, n));
  }
}

}  // namespace airlock::engine
