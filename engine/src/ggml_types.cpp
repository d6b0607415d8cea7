// Block layouts and (de)quantisation of the GGUF weight types, following
// ggml's definitions (ggml-common.h, ggml-quants.c). The dequantisers are bit
// for bit ggml's; the quantisers are simpler than ggml's search-based ones
// (per-block min/max) and exist for tests and the GGUF test writer.
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

// Affine 32-element sub-block quantisation for Q4_K / Q5_K: x ~ scale * q - min.
void kquant_affine(const float* x, int n_levels, float* scale, float* min) {
  float lo = x[0], hi = x[0];
  for (int i = 1; i < 32; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
  }
  lo = std::min(lo, 0.0f);  // ggml stores a non-negative min that is subtracted
  *min = -lo;
  *scale = hi > lo ? (hi - lo) / static_cast<float>(n_levels) : 0.0f;
}

void quantize_kaffine(const float* x, int bits, std::uint16_t* d_out, std::uint16_t* dmin_out,
                      std::uint8_t scales_out[12], std::uint8_t q_out[QK_K]) {
  const int n_levels = (1 << bits) - 1;
  float sc[8], mn[8];
  float max_sc = 0, max_mn = 0;
  for (int j = 0; j < 8; ++j) {
    kquant_affine(x + 32 * j, n_levels, &sc[j], &mn[j]);
    max_sc = std::max(max_sc, sc[j]);
    max_mn = std::max(max_mn, mn[j]);
  }
  const float d = max_sc / 63.0f, dmin = max_mn / 63.0f;
  *d_out = fp32_to_fp16(d);
  *dmin_out = fp32_to_fp16(dmin);
  const float d_eff = fp16_to_fp32(*d_out), dmin_eff = fp16_to_fp32(*dmin_out);
  std::uint8_t isc[8], imn[8];
  for (int j = 0; j < 8; ++j) {
    isc[j] = static_cast<std::uint8_t>(std::clamp(d_eff > 0 ? nearest_int(sc[j] / d_eff) : 0, 0, 63));
    imn[j] = static_cast<std::uint8_t>(std::clamp(dmin_eff > 0 ? nearest_int(mn[j] / dmin_eff) : 0, 0, 63));
    const float s = d_eff * isc[j], m = dmin_eff * imn[j];
    for (int i = 0; i < 32; ++i) {
      int q = s > 0 ? nearest_int((x[32 * j + i] + m) / s) : 0;
      q_out[32 * j + i] = static_cast<std::uint8_t>(std::clamp(q, 0, n_levels));
    }
  }
  pack_scale_min_k4(isc, imn, scales_out);
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
        for (int j = 0; j < QK; ++j) b[i].qs[j] = static_cast<std::int8_t>(nearest_int(x[i * QK + j] * id));
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
        float sub_scale[16], max_scale = 0;
        for (int s = 0; s < 16; ++s) {
          float amax = 0;
          for (int k = 0; k < 16; ++k) amax = std::max(amax, std::fabs(xb[16 * s + k]));
          sub_scale[s] = amax / 31.0f;
          max_scale = std::max(max_scale, sub_scale[s]);
        }
        const float d = max_scale / 127.0f;
        b[i].d = fp32_to_fp16(d);
        const float d_eff = fp16_to_fp32(b[i].d);
        std::uint8_t q[QK_K];
        for (int s = 0; s < 16; ++s) {
          const int sc = d_eff > 0 ? std::clamp(nearest_int(sub_scale[s] / d_eff), -127, 127) : 0;
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
