// Weight types: conversions, dequantisation against an independent per-element
// reference of the ggml block formulas, quantisation error bounds, and the
// vector kernels against the scalar ones.
#include "airlock/engine/ggml_types.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iterator>
#include <limits>
#include <memory>
#include <numeric>
#include <utility>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "airlock/engine/backend.h"
#include "airlock/engine/kernels.h"
#include "airlock/engine/kv_cache.h"
#include "airlock/engine/thread_pool.h"

namespace airlock::engine {
namespace {

std::vector<std::uint8_t> random_bytes(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::uint8_t> b(n);
  for (auto& x : b) x = static_cast<std::uint8_t>(rng());
  return b;
}

// Writes a finite half (exponent 1..29) at `p` so random blocks stay finite.
void put_half(std::uint8_t* p, std::mt19937& rng, bool allow_negative) {
  std::uint16_t h = static_cast<std::uint16_t>(((rng() % 14) + 8) << 10 | (rng() & 0x3ff));
  if (allow_negative && (rng() & 1)) h |= 0x8000;
  std::memcpy(p, &h, 2);
}

double half(const std::uint8_t* p) {
  std::uint16_t h;
  std::memcpy(&h, p, 2);
  const int e = (h >> 10) & 31, m = h & 1023;
  const double v = e == 0 ? std::ldexp(m, -24) : std::ldexp(1024 + m, e - 25);
  return (h & 0x8000) ? -v : v;
}

// Element i of a block, written from the ggml format description element by
// element (not the loop structure the engine uses).
double ref_q8_0(const std::uint8_t* b, int i) { return half(b) * static_cast<std::int8_t>(b[2 + i]); }
double ref_q4_0(const std::uint8_t* b, int i) {
  const std::uint8_t q = b[2 + i % 16];
  return half(b) * ((i < 16 ? (q & 15) : (q >> 4)) - 8);
}
void scale_min(const std::uint8_t* s, int j, int* sc, int* mn) {
  if (j < 4) {
    *sc = s[j] & 63;
    *mn = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
    *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}
double ref_q4_k(const std::uint8_t* b, int i) {
  const int sub = i / 32, chunk = i / 64, l = i % 32;
  int sc, mn;
  scale_min(b + 4, sub, &sc, &mn);
  const std::uint8_t q = b[16 + 32 * chunk + l];
  const int v = (sub % 2 == 0) ? (q & 15) : (q >> 4);
  return half(b) * sc * v - half(b + 2) * mn;
}
double ref_q5_k(const std::uint8_t* b, int i) {
  const int sub = i / 32, chunk = i / 64, l = i % 32;
  int sc, mn;
  scale_min(b + 4, sub, &sc, &mn);
  const std::uint8_t q = b[48 + 32 * chunk + l];
  int v = (sub % 2 == 0) ? (q & 15) : (q >> 4);
  if (b[16 + l] & (1 << sub)) v += 16;
  return half(b) * sc * v - half(b + 2) * mn;
}
double ref_q6_k(const std::uint8_t* b, int i) {
  const int h = i / 128, e = i % 128, g = e / 32, l = e % 32;
  const std::uint8_t* ql = b + 64 * h;
  const std::uint8_t* qh = b + 128 + 32 * h;
  const std::int8_t sc = static_cast<std::int8_t>(b[192 + 8 * h + l / 16 + 2 * g]);
  const int low = (g == 0 || g == 2) ? ql[l] : ql[l + 32];
  const int lo4 = g < 2 ? (low & 15) : (low >> 4);
  const int hi2 = (qh[l] >> (2 * g)) & 3;
  return half(b + 208) * sc * ((lo4 | (hi2 << 4)) - 32);
}

double ref_f32(const std::uint8_t* b, int) {
  float f;
  std::memcpy(&f, b, 4);
  return f;
}
double ref_f16(const std::uint8_t* b, int) { return half(b); }
double ref_bf16(const std::uint8_t* b, int) {
  const std::uint32_t bits = static_cast<std::uint32_t>(b[0] | (b[1] << 8)) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

struct Case {
  GgmlType type;
  double (*ref)(const std::uint8_t*, int);
  std::vector<std::size_t> half_offsets;  // where the block keeps fp16 scales
};

TEST(GgmlTypesTest, DequantisationMatchesTheFormatOnRandomBlocks) {
  const Case cases[] = {{GgmlType::kF32, ref_f32, {}},
                        {GgmlType::kF16, ref_f16, {0}},
                        {GgmlType::kBF16, ref_bf16, {}},
                        {GgmlType::kQ8_0, ref_q8_0, {0}},
                        {GgmlType::kQ4_0, ref_q4_0, {0}},
                        {GgmlType::kQ4_K, ref_q4_k, {0, 2}},
                        {GgmlType::kQ5_K, ref_q5_k, {0, 2}},
                        {GgmlType::kQ6_K, ref_q6_k, {208}}};
  std::mt19937 rng(7);
  for (const Case& c : cases) {
    const TypeTraits& tt = traits(c.type);
    const int n_blocks = tt.block_elems == 1 ? 1024 : 5;
    std::vector<std::uint8_t> data = random_bytes(tt.block_bytes * n_blocks, static_cast<std::uint32_t>(tt.block_bytes));
    if (c.type == GgmlType::kF32) {  // finite floats only
      for (int blk = 0; blk < n_blocks; ++blk) {
        const float f = std::ldexp(static_cast<float>(rng() % 2001) - 1000.0f, static_cast<int>(rng() % 40) - 20);
        std::memcpy(data.data() + 4 * blk, &f, 4);
      }
    }
    if (c.type == GgmlType::kBF16)
      for (int blk = 0; blk < n_blocks; ++blk) data[2 * blk + 1] &= 0xbf;  // exponent below 0xff: finite
    for (int blk = 0; blk < n_blocks; ++blk)
      for (std::size_t off : c.half_offsets) put_half(data.data() + blk * tt.block_bytes + off, rng, true);
    std::vector<float> got(tt.block_elems * n_blocks);
    dequantize_row(c.type, data.data(), got.data(), static_cast<std::int64_t>(got.size()));
    for (int blk = 0; blk < n_blocks; ++blk)
      for (std::uint32_t i = 0; i < tt.block_elems; ++i) {
        const double want = c.ref(data.data() + blk * tt.block_bytes, static_cast<int>(i));
        ASSERT_NEAR(got[blk * tt.block_elems + i], want, 1e-6 * std::max(1.0, std::fabs(want)))
            << tt.name << " block " << blk << " element " << i;
      }
  }
}

TEST(GgmlTypesTest, HalfAndBfloatConversions) {
  for (std::uint32_t h = 0; h < 0x10000; ++h) {
    const float f = fp16_to_fp32(static_cast<std::uint16_t>(h));
    const float b = bf16_to_fp32(static_cast<std::uint16_t>(h));
    if (((h >> 10) & 31) == 31 && (h & 0x3ff)) {
      ASSERT_TRUE(std::isnan(f)) << h;
      ASSERT_TRUE(std::isnan(fp16_to_fp32(fp32_to_fp16(f)))) << h;
    } else {
      ASSERT_EQ(fp32_to_fp16(f), h) << h;  // every half survives the round trip
      if (((h >> 10) & 31) != 31) {
        ASSERT_EQ(static_cast<double>(f), half(reinterpret_cast<const std::uint8_t*>(&h))) << h;
      }
    }
    if (std::isnan(b)) {
      ASSERT_TRUE(std::isnan(bf16_to_fp32(fp32_to_bf16(b)))) << h;
    } else {
      ASSERT_EQ(fp32_to_bf16(b), h) << h;  // and every bfloat16
    }
  }
  // Special values.
  EXPECT_TRUE(std::isnan(fp16_to_fp32(fp32_to_fp16(NAN))));
  EXPECT_EQ(fp32_to_fp16(INFINITY), 0x7c00);
  EXPECT_EQ(fp32_to_fp16(-INFINITY), 0xfc00);
  EXPECT_EQ(fp16_to_fp32(0x7c00), INFINITY);
  EXPECT_EQ(fp16_to_fp32(0xfc00), -INFINITY);
  EXPECT_EQ(fp32_to_fp16(-0.0f), 0x8000);
  EXPECT_TRUE(std::signbit(fp16_to_fp32(0x8000)));
  EXPECT_EQ(fp32_to_fp16(1e6f), 0x7c00);                        // overflow to infinity
  EXPECT_EQ(fp32_to_fp16(65519.0f), 0x7bff);                    // below the halfway point to 65536
  EXPECT_EQ(fp32_to_fp16(65520.0f), 0x7c00);                    // halfway, 65504 is odd: rounds up
  EXPECT_EQ(fp32_to_fp16(1.0f + 1.0f / 2048), 0x3c00);         // tie rounds to even
  EXPECT_EQ(fp32_to_fp16(1.0f + 3.0f / 2048), 0x3c02);
  EXPECT_EQ(fp16_to_fp32(0x0001), std::ldexp(1.0f, -24));       // smallest subnormal
  EXPECT_EQ(fp16_to_fp32(0x03ff), std::ldexp(1023.0f, -24));    // largest subnormal
  EXPECT_EQ(fp32_to_fp16(std::ldexp(1.0f, -25)), 0x0000);       // tie between 0 and 2^-24: even
  EXPECT_EQ(fp32_to_fp16(std::ldexp(1.5f, -24)), 0x0002);       // tie: rounds to even 2
  EXPECT_EQ(fp32_to_fp16(std::ldexp(1.25f, -24)), 0x0001);
  EXPECT_EQ(fp32_to_fp16(-std::ldexp(1.0f, -30)), 0x8000);      // underflow keeps the sign
  EXPECT_EQ(fp32_to_fp16(std::ldexp(2047.0f, -25)), 0x0400);    // subnormal rounds up to the smallest normal
  EXPECT_EQ(fp32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(bf16_to_fp32(0xc040), -3.0f);
  EXPECT_EQ(fp32_to_bf16(1.0f + 1.0f / 256), 0x3f80);          // tie to even
  EXPECT_EQ(fp32_to_bf16(1.0f + 3.0f / 256), 0x3f82);
  EXPECT_EQ(fp32_to_bf16(INFINITY), 0x7f80);
  EXPECT_EQ(fp32_to_bf16(-INFINITY), 0xff80);
  EXPECT_EQ(fp32_to_bf16(std::numeric_limits<float>::max()), 0x7f80);  // rounds to infinity
  EXPECT_TRUE(std::isnan(bf16_to_fp32(fp32_to_bf16(NAN))));
  std::uint32_t nan_bits = 0x7f800001;  // a NaN whose top 16 bits alone would read as infinity
  float low_nan;
  std::memcpy(&low_nan, &nan_bits, 4);
  EXPECT_TRUE(std::isnan(bf16_to_fp32(fp32_to_bf16(low_nan))));
  EXPECT_EQ(fp32_to_bf16(std::ldexp(1.0f, -130)), 0x0008);      // subnormal floats stay exact
}

// fp32 -> fp16 against an independent definition: the nearest of all finite
// halves (ties to the even one), or infinity from 65520 on.
TEST(GgmlTypesTest, HalfRoundingMatchesNearestEvenOnRandomFloats) {
  std::vector<std::pair<double, std::uint16_t>> halves;  // non-negative finite halves, ascending
  for (std::uint16_t h = 0; h < 0x7c00; ++h) halves.push_back({half(reinterpret_cast<const std::uint8_t*>(&h)), h});
  std::mt19937 rng(5);
  for (int i = 0; i < 1 << 18; ++i) {
    // exponents around the half range, random mantissa bits
    const std::uint32_t bits = (static_cast<std::uint32_t>(90 + rng() % 60) << 23) | (rng() & 0x7fffff) |
                               (rng() & 1 ? 0x80000000u : 0u);
    float f;
    std::memcpy(&f, &bits, 4);
    const double a = std::fabs(static_cast<double>(f));
    std::uint16_t want;
    if (a >= 65520.0) {
      want = 0x7c00;
    } else {
      auto it = std::lower_bound(halves.begin(), halves.end(), std::make_pair(a, std::uint16_t{0}));
      if (it == halves.end()) it = std::prev(it);
      auto lo = it == halves.begin() ? it : std::prev(it);
      const double dl = a - lo->first, dh = it->first - a;
      if (dl < dh) want = lo->second;
      else if (dh < dl) want = it->second;
      else want = (lo->second & 1) ? it->second : lo->second;
    }
    if (bits & 0x80000000u) want = static_cast<std::uint16_t>(want | 0x8000);
    ASSERT_EQ(fp32_to_fp16(f), want) << std::hexfloat << f;
  }
}

TEST(GgmlTypesTest, QuantisationErrorIsWithinExpectedBounds) {
  std::mt19937 rng(3);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> x(4096);
  for (float& v : x) v = g(rng);
  // Relative RMS error on unit gaussians. Q4_0 is ggml's reference
  // quantiser (largest magnitude maps to -8), which gives ~8.6% here.
  const std::pair<GgmlType, double> bounds[] = {{GgmlType::kF32, 0.0},   {GgmlType::kF16, 1e-3},
                                                {GgmlType::kBF16, 5e-3}, {GgmlType::kQ8_0, 1e-2},
                                                {GgmlType::kQ6_K, 2e-2}, {GgmlType::kQ5_K, 4e-2},
                                                {GgmlType::kQ4_K, 8e-2}, {GgmlType::kQ4_0, 9e-2}};
  for (auto [type, bound] : bounds) {
    std::vector<std::uint8_t> q(row_bytes(type, 4096));
    quantize_row(type, x.data(), q.data(), 4096);
    std::vector<float> back(4096);
    dequantize_row(type, q.data(), back.data(), 4096);
    double num = 0, den = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
      num += (back[i] - x[i]) * (back[i] - x[i]);
      den += x[i] * x[i];
    }
    EXPECT_LE(std::sqrt(num / den), bound) << traits(type).name;
  }
}

// Zeros, constants, a lone spike and tiny values quantise to valid blocks
// that decode to finite values near the input.
TEST(GgmlTypesTest, QuantisationOfDegenerateRows) {
  const std::int64_t n = 512;
  std::vector<std::vector<float>> rows;
  rows.emplace_back(n, 0.0f);
  rows.emplace_back(n, 0.75f);
  rows.emplace_back(n, -2.5f);
  rows.emplace_back(n, 0.0f);
  rows.back()[37] = 100.0f;
  rows.emplace_back(n, 1e-20f);
  std::vector<float> ramp(n);
  for (std::int64_t i = 0; i < n; ++i) ramp[i] = static_cast<float>(i) / 64.0f - 4.0f;
  rows.push_back(ramp);
  for (GgmlType type : {GgmlType::kF16, GgmlType::kBF16, GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kQ4_K,
                        GgmlType::kQ5_K, GgmlType::kQ6_K}) {
    for (std::size_t r = 0; r < rows.size(); ++r) {
      std::vector<std::uint8_t> q(row_bytes(type, n));
      quantize_row(type, rows[r].data(), q.data(), n);
      std::vector<float> back(n);
      dequantize_row(type, q.data(), back.data(), n);
      float amax = 0;
      for (float v : rows[r]) amax = std::max(amax, std::fabs(v));
      for (std::int64_t i = 0; i < n; ++i) {
        ASSERT_TRUE(std::isfinite(back[i])) << traits(type).name << " row " << r;
        ASSERT_NEAR(back[i], rows[r][i], 0.15 * amax + 1e-6) << traits(type).name << " row " << r << " at " << i;
      }
      if (r == 0) {
        for (float v : back) ASSERT_EQ(v, 0.0f) << traits(type).name;
      }
    }
  }
}

// The activations as the vector kernels see them for quantised weights:
// 8-bit, one scale per `block` values (amax / 127, round to nearest).
std::vector<double> act_quantised(const float* x, std::int64_t n, int block) {
  std::vector<double> out(static_cast<std::size_t>(n));
  for (std::int64_t b = 0; b < n; b += block) {
    float amax = 0;
    for (int k = 0; k < block; ++k) amax = std::max(amax, std::fabs(x[b + k]));
    const float d = amax / 127.0f, id = amax > 0 ? 127.0f / amax : 0.0f;
    for (int k = 0; k < block; ++k) out[b + k] = static_cast<double>(d) * static_cast<double>(std::lrintf(x[b + k] * id));
  }
  return out;
}

int act_block(GgmlType t) {
  if (std::string(kernel_isa()) == "scalar") return 0;
  switch (t) {
    case GgmlType::kQ8_0: case GgmlType::kQ4_0: return 32;
    case GgmlType::kQ4_K: case GgmlType::kQ5_K: case GgmlType::kQ6_K: return 256;
    default: return 0;  // float activations
  }
}

// Every vector level this CPU has (AVX2; AVX-512 VNNI for the integer types) against
// the scalar path and a double reference, at token counts on both sides of
// the kernels' token groups, row lengths with and without whole 8-block
// groups, and row counts that leave partial row tiles.
class KernelsTest : public ::testing::TestWithParam<KernelIsa> {
 protected:
  void TearDown() override { force_scalar_kernels(false); }
};

// n_out random rows of n_in weights quantised to `type`, and n_tokens
// random activations.
struct RandomProduct {
  std::vector<std::uint8_t> w;
  std::vector<float> x;
  RandomProduct(GgmlType type, std::int64_t n_in, std::int64_t n_out, std::int64_t n_tokens, std::mt19937& rng) {
    std::normal_distribution<float> g(0.0f, 1.0f);
    std::vector<float> wf(static_cast<std::size_t>(n_in * n_out));
    x.resize(static_cast<std::size_t>(n_in * n_tokens));
    for (float& v : wf) v = g(rng);
    for (float& v : x) v = g(rng);
    const std::size_t rb = row_bytes(type, n_in);
    w.resize(rb * static_cast<std::size_t>(n_out));
    for (std::int64_t r = 0; r < n_out; ++r) quantize_row(type, wf.data() + r * n_in, w.data() + rb * r, n_in);
  }
};

// One product at the current kernel level against the scalar path and a
// double reference: rows [r0, r1) of n_out random rows, n_tokens tokens.
void check_matmul_at_level(KernelIsa level, GgmlType type, std::int64_t n_in, std::int64_t n_out,
                           std::int64_t n_tokens, std::int64_t r0, std::int64_t r1, std::mt19937& rng) {
  const std::string isa = kernel_isa();
  RandomProduct prod(type, n_in, n_out, n_tokens, rng);
  const std::vector<std::uint8_t>& w = prod.w;
  const std::vector<float>& x = prod.x;
  const std::size_t rb = row_bytes(type, n_in);
  std::vector<float> y_fast(static_cast<std::size_t>(n_tokens * n_out), -7.0f), y_scalar(y_fast.size(), -7.0f);
  matmul_rows(type, w.data(), n_in, x.data(), n_tokens, y_fast.data(), n_out, r0, r1);
  limit_kernel_isa(KernelIsa::kScalar);
  EXPECT_STREQ(kernel_isa(), "scalar");
  matmul_rows(type, w.data(), n_in, x.data(), n_tokens, y_scalar.data(), n_out, r0, r1);
  limit_kernel_isa(level);
  EXPECT_EQ(kernel_isa(), isa);
  std::vector<float> row(static_cast<std::size_t>(n_in));
  const int blk = act_block(type);
  std::vector<std::vector<double>> xa(static_cast<std::size_t>(n_tokens));
  for (std::int64_t t = 0; t < n_tokens; ++t) {
    const float* xt = x.data() + t * n_in;
    xa[static_cast<std::size_t>(t)] = blk ? act_quantised(xt, n_in, blk) : std::vector<double>(xt, xt + n_in);
  }
  for (std::int64_t r = 0; r < n_out; ++r) {
    dequantize_row(type, w.data() + rb * r, row.data(), n_in);
    for (std::int64_t t = 0; t < n_tokens; ++t) {
      const std::size_t at = static_cast<std::size_t>(t * n_out + r);
      if (r < r0 || r >= r1) {
        ASSERT_EQ(y_fast[at], -7.0f);
        ASSERT_EQ(y_scalar[at], -7.0f);
        continue;
      }
      const float* xt = x.data() + t * n_in;
      double want_exact = 0, want_fast = 0, norm = 0;
      for (std::int64_t k = 0; k < n_in; ++k) {
        want_exact += static_cast<double>(row[k]) * xt[k];
        want_fast += static_cast<double>(row[k]) * xa[static_cast<std::size_t>(t)][k];
        norm += std::fabs(static_cast<double>(row[k]) * xt[k]);
      }
      // Each path is exact up to float rounding against what it computes
      // (the vector path with 8-bit activations for quantised weights)...
      ASSERT_NEAR(y_scalar[at], want_exact, 1e-5 * norm) << traits(type).name << " scalar n_in " << n_in;
      ASSERT_NEAR(y_fast[at], want_fast, 1e-5 * norm)
          << traits(type).name << " " << isa << " n_in " << n_in << " row " << r << " token " << t;
      // ...and the 8-bit activations cost well under 1% of the sum's scale.
      ASSERT_NEAR(y_fast[at], want_exact, (blk ? 1e-2 : 1e-5) * norm) << traits(type).name << " " << isa;
    }
  }
}

TEST_P(KernelsTest, VectorPathMatchesScalarAndDoubleReference) {
  if (best_kernel_isa() < GetParam()) GTEST_SKIP() << "this CPU lacks " << kernel_isa_name(GetParam());
  limit_kernel_isa(GetParam());
  std::mt19937 rng(11);
  ASSERT_EQ(std::string(kernel_isa()), kernel_isa_name(GetParam()));
  for (GgmlType type : {GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16, GgmlType::kQ8_0, GgmlType::kQ4_0,
                        GgmlType::kQ4_K, GgmlType::kQ5_K, GgmlType::kQ6_K}) {
    for (std::int64_t n_in : {256, 288, 512, 1024, 2304}) {
      if (n_in % traits(type).block_elems != 0) continue;
      // both sides of the 4-token groups of the tile kernels (Q8_0/Q4_0
      // rows that are not a multiple of 256, Q6_K) and of the 8-token
      // passes of the lane kernels
      for (std::int64_t n_tokens : {1, 3, 4, 5, 6, 8, 9, 16, 17, 35}) {
        const std::int64_t n_out = 9 + static_cast<std::int64_t>(rng() % 24);
        // rows [r0, r1) only; the others must stay untouched
        const std::int64_t r0 = static_cast<std::int64_t>(rng() % 3), r1 = n_out - static_cast<std::int64_t>(rng() % 3);
        check_matmul_at_level(GetParam(), type, n_in, n_out, n_tokens, r0, r1, rng);
        if (HasFatalFailure()) return;
      }
    }
  }
}

// One token goes through its own kernels (Q4_K/Q5_K with VNNI: weights as
// they lie, no transposition), batches through others; a token's result
// must not depend on which: bit-identical, for every row length class
// (one super-block, odd and even counts, a 5632-wide down projection) and
// on every level (the others share one path, which this checks too).
TEST_P(KernelsTest, OneTokenEqualsItsRowInABatchBitForBit) {
  if (best_kernel_isa() < GetParam()) GTEST_SKIP() << "this CPU lacks " << kernel_isa_name(GetParam());
  limit_kernel_isa(GetParam());
  std::mt19937 rng(13);
  for (GgmlType type : {GgmlType::kQ4_K, GgmlType::kQ5_K, GgmlType::kQ8_0, GgmlType::kQ6_K}) {
    // 9 tokens: the lane kernels; 37: the AMX tiles where the CPU has them
    // (odd and even super-block counts; Q8_0 rows ending in a half or a
    // whole group of 16 blocks). 16 tokens: one pass of 16 over 2048-wide
    // rows where the core's L1 holds their activations (48 KiB), passes
    // of 8 over chunks of 5632-wide ones. The batch's rows in two calls
    // split at row 7, as threads share them: tiles of 16 rows start off 16.
    for (auto [n_in, n_tokens] :
         {std::pair<std::int64_t, std::int64_t>{256, 9}, {512, 9}, {768, 9}, {2304, 9}, {4352, 9}, {5632, 9},
          {2048, 16}, {5632, 16}, {256, 37}, {512, 37}, {768, 37}, {2304, 37}, {5632, 37}}) {
      const std::int64_t n_out = 19;
      const RandomProduct prod(type, n_in, n_out, n_tokens, rng);
      const std::vector<std::uint8_t>& w = prod.w;
      const std::vector<float>& x = prod.x;
      std::vector<float> batch(static_cast<std::size_t>(n_tokens * n_out));
      matmul_rows(type, w.data(), n_in, x.data(), n_tokens, batch.data(), n_out, 0, 7);
      matmul_rows(type, w.data(), n_in, x.data(), n_tokens, batch.data(), n_out, 7, n_out);
      for (std::int64_t t = 0; t < n_tokens; ++t) {
        std::vector<float> one(static_cast<std::size_t>(n_out));
        matmul_rows(type, w.data(), n_in, x.data() + t * n_in, 1, one.data(), n_out, 0, n_out);
        for (std::int64_t r = 0; r < n_out; ++r)
          ASSERT_EQ(std::memcmp(&one[static_cast<std::size_t>(r)], &batch[static_cast<std::size_t>(t * n_out + r)], 4), 0)
              << traits(type).name << " n_in " << n_in << " token " << t << " row " << r << " " << kernel_isa() << ": "
              << one[static_cast<std::size_t>(r)] << " vs " << batch[static_cast<std::size_t>(t * n_out + r)];
      }
    }
  }
}

// Prompt-sized batches over more rows than the batch kernels keep in L2 at
// once (they walk the rows in blocks of ~128 KiB per token group), with row
// ranges that start and end inside a block.
TEST_P(KernelsTest, PromptBatchesOverRowBlocksMatchScalar) {
  if (best_kernel_isa() < GetParam()) GTEST_SKIP() << "this CPU lacks " << kernel_isa_name(GetParam());
  limit_kernel_isa(GetParam());
  std::mt19937 rng(12);
  for (GgmlType type : {GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kQ4_K, GgmlType::kQ5_K, GgmlType::kQ6_K}) {
    check_matmul_at_level(GetParam(), type, 2048, 300, 37, 5, 291, rng);
    if (HasFatalFailure()) return;
  }
}

// Long rows: the lane kernels take a row's columns in chunks so that a
// pass's activations stay in L1 (Q4_K at 7 tokens: 5632 wide in two
// chunks, 11264 in four), each token's sums carried from chunk to chunk.
// 4352 (17 super-blocks, 136 blocks) ends in a half unit (a Q4_K/Q5_K
// super-block without its pair, a Q8_0/Q4_0 half group of eight blocks)
// inside the last of two chunks.
TEST_P(KernelsTest, LongRowsInShorterPassesMatchScalar) {
  if (best_kernel_isa() < GetParam()) GTEST_SKIP() << "this CPU lacks " << kernel_isa_name(GetParam());
  limit_kernel_isa(GetParam());
  std::mt19937 rng(13);
  for (GgmlType type : {GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kQ4_K, GgmlType::kQ5_K, GgmlType::kQ6_K}) {
    for (std::int64_t n_in : {4352, 5632, 11264}) {
      check_matmul_at_level(GetParam(), type, n_in, 13, 7, 1, 12, rng);
      if (HasFatalFailure()) return;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Levels, KernelsTest, ::testing::Values(KernelIsa::kAvx2, KernelIsa::kAvx512Vnni, KernelIsa::kAmx),
                         [](const ::testing::TestParamInfo<KernelIsa>& p) { return std::string(kernel_isa_name(p.param)); });

// attend_heads against a double-precision softmax attention, for group
// sizes on both sides of the vector kernels' four heads, one and several
// key/value heads per call, head sizes for every tail of the 256-bit
// kernel's 16-wide and the 512-bit kernel's 64-wide value passes (and
// sizes the 512-bit kernel leaves to 256-bit code, and 256-bit to scalar),
// contexts from one position to several blocks through a shuffled block
// table, with and without a tail of the four-position score step and
// across the spans of 256 positions, and scores spread wide enough that
// exp() underflows for some positions, with the largest score in a late
// span (so the earlier spans' sums are rescaled); sliding windows (a first
// position p0 > 0, spans counted from it) and soft-capped scores. At every
// kernel level this CPU has.
//
// T is the cache's element type: float, or f16 bits (the reference then
// uses the rounded numbers the cache holds; accumulation stays f32).
template <typename T>
void check_attention_against_double_reference() {
  auto store = [](float x) {
    if constexpr (std::is_same_v<T, float>) return x;
    else return fp32_to_fp16(x);
  };
  auto load = [](T x) {
    if constexpr (std::is_same_v<T, float>) return static_cast<double>(x);
    else return static_cast<double>(fp16_to_fp32(x));
  };
  std::mt19937 rng(5);
  std::normal_distribution<float> g(0.0f, 1.0f);
  const int block = 16;
  struct Shape {
    int head_dim, n_q, n_kv, n_ctx;
    int p0 = 0;            // the first position (a sliding window's start)
    float softcap = 0.0f;  // scores capped at softcap * tanh(s / softcap)
  };
  std::vector<Shape> shapes;
  for (int head_dim : {36, 40, 64, 72, 80, 112, 128})
    for (int n_q : {1, 3, 4, 5, 8})
      for (int n_ctx : {1, 2, 3, 5, 17, 70}) shapes.push_back({head_dim, n_q, 1, n_ctx});
  for (int head_dim : {40, 64, 96})
    for (int n_q : {1, 4, 5})
      for (int n_ctx : {17, 255, 256, 257, 600}) shapes.push_back({head_dim, n_q, 3, n_ctx});
  for (int head_dim : {40, 64})
    for (int n_q : {1, 5})
      for (float cap : {0.0f, 3.0f})
        for (auto [n_ctx, p0] : {std::pair{70, 30}, {257, 256}, {600, 77}, {600, 344}, {17, 0}})
          shapes.push_back({head_dim, n_q, 2, n_ctx, p0, cap});
  for (KernelIsa level : {KernelIsa::kScalar, KernelIsa::kAvx2, KernelIsa::kAvx512Vnni}) {
    if (best_kernel_isa() < level) continue;
    limit_kernel_isa(level);
    for (const Shape& sh : shapes) {
      const int head_dim = sh.head_dim, n_q = sh.n_q, n_kv = sh.n_kv, n_ctx = sh.n_ctx;
      const int n_blocks = (n_ctx + block - 1) / block + 2;
      const std::int64_t kv_stride = n_kv * head_dim + 24;  // other heads' numbers in between
      std::vector<T> k(static_cast<std::size_t>(n_blocks * block * kv_stride)), v(k.size());
      for (T& x : k) x = store(g(rng));
      for (T& x : v) x = store(g(rng));
      std::vector<std::int32_t> table(static_cast<std::size_t>(n_blocks));
      std::iota(table.begin(), table.end(), 0);
      std::shuffle(table.begin(), table.end(), rng);
      std::vector<float> q(static_cast<std::size_t>(n_kv * n_q * head_dim));
      const bool wide = n_ctx == 70 || n_ctx == 600;  // some weights underflow to 0
      for (float& x : q) x = g(rng) * (wide ? 12.0f : 1.0f);
      if (n_ctx == 600) {  // the largest scores in the last span: position 590's key along each query
        const std::int64_t slot = static_cast<std::int64_t>(table[590 / block]) * block + 590 % block;
        for (int j = 0; j < n_kv * n_q; ++j)
          for (int i = 0; i < head_dim; ++i)
            k[static_cast<std::size_t>(slot * kv_stride + j / n_q * head_dim + i)] =
                store(q[static_cast<std::size_t>(j * head_dim + i)] / 6.0f);
      }
      const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
      const int p0 = sh.p0;
      const float cap = sh.softcap;
      std::vector<float> scores(static_cast<std::size_t>(n_q * n_ctx)), out(q.size());
      attend_heads(q.data(), n_q, n_kv, k.data(), v.data(), kv_stride, table.data(), block, p0, n_ctx, head_dim,
                   AttendScore{scale, cap}, scores.data(), out.data());
      for (int h = 0; h < n_kv * n_q; ++h) {
        const std::int64_t head_off = static_cast<std::int64_t>(h / n_q) * head_dim;
        std::vector<double> s(static_cast<std::size_t>(n_ctx), -1e300);  // before p0: weight 0
        double m = -1e300, dot_mag = 0;
        for (int p = p0; p < n_ctx; ++p) {
          const std::int64_t slot = static_cast<std::int64_t>(table[static_cast<std::size_t>(p / block)]) * block + p % block;
          double dot = 0, mag = 0;
          for (int i = 0; i < head_dim; ++i) {
            const double x = static_cast<double>(q[static_cast<std::size_t>(h * head_dim + i)]) *
                             load(k[static_cast<std::size_t>(slot * kv_stride + head_off + i)]);
            dot += x;
            mag += std::fabs(x);
          }
          s[static_cast<std::size_t>(p)] = cap > 0 ? cap * std::tanh(dot * scale / cap) : dot * scale;
          m = std::max(m, s[static_cast<std::size_t>(p)]);
          dot_mag = std::max(dot_mag, mag * scale);
        }
        // f32 rounding: of sums over n_ctx positions, and of each score
        // (relative to the sum of its products' magnitudes), which moves
        // the weights by as much relative to one another
        const double tol = std::max(1e-5, n_ctx * 6e-8) + 4 * 1.2e-7 * dot_mag;
        double sum = 0;
        for (double& x : s) sum += x = std::exp(x - m);
        for (int i = 0; i < head_dim; ++i) {
          double want = 0, mag = 0;
          for (int p = 0; p < n_ctx; ++p) {
            const std::int64_t slot = static_cast<std::int64_t>(table[static_cast<std::size_t>(p / block)]) * block + p % block;
            const double vv = load(v[static_cast<std::size_t>(slot * kv_stride + head_off + i)]);
            want += s[static_cast<std::size_t>(p)] / sum * vv;
            mag += s[static_cast<std::size_t>(p)] / sum * std::fabs(vv);
          }
          ASSERT_NEAR(out[static_cast<std::size_t>(h * head_dim + i)], want, tol * (mag + 1e-3))
              << kernel_isa() << " head_dim " << head_dim << " n_q " << n_q << " n_kv " << n_kv << " n_ctx " << n_ctx
              << " p0 " << p0 << " cap " << cap << " head " << h << (std::is_same_v<T, float> ? " f32" : " f16");
        }
      }
    }
  }
  force_scalar_kernels(false);
}

TEST(AttentionKernelTest, GroupedHeadsMatchDoubleReference) { check_attention_against_double_reference<float>(); }

TEST(AttentionKernelTest, F16CacheMatchesDoubleReference) { check_attention_against_double_reference<std::uint16_t>(); }

// The CPU backend's attention splits a few tokens' long contexts into spans
// and spreads (token, span, key/value head) jobs over its threads, merging
// the spans' parts afterwards; a batch with jobs enough goes a token's spans
// in one job. Whatever the pool's size and whatever else is in the batch,
// each token gets exactly what attend_heads computes for it alone:
// contexts of one position, just under, at and over one span, and several
// spans, in one batch, each through its own shuffled block table, f32 and
// f16 caches, at every kernel level this CPU has; and the same with a
// sliding window (spans counted from its start) and soft-capped scores.
TEST(AttentionKernelTest, BackendSplitAcrossThreadsMatchesAttendHeadsBitForBit) {
  const int n_head = 8, n_kv_head = 2, head_dim = 64, group = n_head / n_kv_head;
  const std::vector<std::int32_t> n_ctx = {1, 255, 256, 257, 600, 1000, 3};
  const int kv_dim = n_kv_head * head_dim;
  std::mt19937 rng(11);
  std::normal_distribution<float> g(0.0f, 1.0f);
  for (KvType type : {KvType::kF32, KvType::kF16}) {
    for (KernelIsa level : {KernelIsa::kScalar, KernelIsa::kAvx2, KernelIsa::kAvx512Vnni}) {
      if (best_kernel_isa() < level) continue;
      limit_kernel_isa(level);
      for (int threads : {1, 2, 3})
      for (auto [window, cap] : {std::pair{0, 0.0f}, {300, 0.0f}, {100, 4.0f}}) {
        auto be = make_cpu_backend(std::make_shared<ThreadPool>(threads));
        std::int64_t n_blocks = 0;
        for (std::int32_t c : n_ctx) n_blocks += (c + kBlockTokens - 1) / kBlockTokens;
        Result<KvStorage> kv = be->alloc_kv(1, n_blocks * kBlockTokens, kv_dim, type);
        ASSERT_TRUE(kv.is_ok());
        std::mt19937 data_rng(12);  // the same cache, tables and queries for every pool
        std::vector<float> keys(static_cast<std::size_t>(kv->n_slots * kv_dim)), values(keys.size());
        for (float& x : keys) x = g(data_rng) * 2.0f;
        for (float& x : values) x = g(data_rng);
        std::vector<std::int32_t> slots(static_cast<std::size_t>(kv->n_slots));
        std::iota(slots.begin(), slots.end(), 0);
        be->kv_write(*kv, 0, keys.data(), values.data(), kv->n_slots, slots.data());
        std::vector<std::int32_t> all_blocks(static_cast<std::size_t>(n_blocks));
        std::iota(all_blocks.begin(), all_blocks.end(), 0);
        std::shuffle(all_blocks.begin(), all_blocks.end(), data_rng);
        std::vector<const std::int32_t*> tables;
        std::size_t next = 0;
        for (std::int32_t c : n_ctx) {
          tables.push_back(all_blocks.data() + next);
          next += static_cast<std::size_t>((c + kBlockTokens - 1) / kBlockTokens);
        }
        std::vector<float> q(n_ctx.size() * n_head * head_dim), out(q.size());
        for (float& x : q) x = g(data_rng) * 3.0f;
        AttentionArgs a;
        a.q = q.data();
        a.out = out.data();
        a.n_tokens = static_cast<std::int64_t>(n_ctx.size());
        a.n_head = n_head;
        a.n_kv_head = n_kv_head;
        a.head_dim = head_dim;
        a.scale = 0.125f;
        a.window = window;
        a.softcap = cap;
        a.kv = &*kv;
        a.n_ctx = n_ctx.data();
        a.block_table = tables.data();
        be->attention(a);  // the whole batch: enough jobs without splitting the spans
        ASSERT_TRUE(be->take_error().is_ok());
        // each token as a batch of its own: few jobs, so its spans are split
        std::vector<float> out_alone(out.size());
        for (std::size_t t = 0; t < n_ctx.size(); ++t) {
          AttentionArgs one = a;
          one.q = q.data() + t * n_head * head_dim;
          one.out = out_alone.data() + t * n_head * head_dim;
          one.n_tokens = 1;
          one.n_ctx = n_ctx.data() + t;
          one.block_table = tables.data() + t;
          be->attention(one);
          ASSERT_TRUE(be->take_error().is_ok());
        }
        // each token alone, on this thread
        for (std::size_t t = 0; t < n_ctx.size(); ++t) {
          std::vector<float> want(static_cast<std::size_t>(n_head * head_dim)), scores(static_cast<std::size_t>(group * n_ctx[t]));
          const float* qt = q.data() + t * n_head * head_dim;
          const int p0 = window > 0 ? std::max(0, n_ctx[t] - window) : 0;
          const AttendScore score{a.scale, cap};
          if (type == KvType::kF32)
            attend_heads(qt, group, n_kv_head, static_cast<const float*>(kv->k_layer(0)),
                         static_cast<const float*>(kv->v_layer(0)), kv_dim, tables[t], kBlockTokens, p0, n_ctx[t],
                         head_dim, score, scores.data(), want.data());
          else
            attend_heads(qt, group, n_kv_head, static_cast<const std::uint16_t*>(kv->k_layer(0)),
                         static_cast<const std::uint16_t*>(kv->v_layer(0)), kv_dim, tables[t], kBlockTokens, p0,
                         n_ctx[t], head_dim, score, scores.data(), want.data());
          for (std::size_t i = 0; i < want.size(); ++i) {
            ASSERT_EQ(out[t * want.size() + i], want[i])
                << kernel_isa() << " " << kv_type_name(type) << " threads " << threads << " window " << window
                << " token " << t << " n_ctx " << n_ctx[t] << " value " << i << " (in the batch)";
            ASSERT_EQ(out_alone[t * want.size() + i], want[i])
                << kernel_isa() << " " << kv_type_name(type) << " threads " << threads << " window " << window
                << " token " << t << " n_ctx " << n_ctx[t] << " value " << i << " (alone)";
          }
        }
      }
    }
  }
  force_scalar_kernels(false);
}

// The vector f32 -> f16 rounding (F16C, for KV writes) is bit-identical to
// fp32_to_fp16: nearest-even ties, subnormals, overflow to infinity, NaN.
TEST(AttentionKernelTest, Fp16RowConversionMatchesScalar) {
  std::mt19937 rng(8);
  std::vector<float> x = {0.0f, -0.0f, 1.0f, 65504.0f, 65520.0f, 1e6f, -1e6f, 6.1e-5f, 5.96e-8f, 2.98e-8f, 1e-9f,
                          1.00048828125f, 1.00146484375f, INFINITY, -INFINITY, std::nanf("")};
  std::uniform_int_distribution<std::uint32_t> bits;
  for (int i = 0; i < 4000; ++i) {
    const std::uint32_t b = bits(rng);
    float f;
    std::memcpy(&f, &b, 4);
    x.push_back(f);
  }
  for (KernelIsa level : {KernelIsa::kScalar, KernelIsa::kAvx2}) {
    if (best_kernel_isa() < level) continue;
    limit_kernel_isa(level);
    std::vector<std::uint16_t> y(x.size());
    fp32_to_fp16_row(x.data(), y.data(), static_cast<std::int64_t>(x.size()));
    for (std::size_t i = 0; i < x.size(); ++i) {
      const std::uint16_t want = fp32_to_fp16(x[i]);
      if (std::isnan(x[i])) {
        ASSERT_TRUE(std::isnan(fp16_to_fp32(y[i]))) << kernel_isa() << " " << i;
        continue;
      }
      ASSERT_EQ(y[i], want) << kernel_isa() << " x " << x[i];
    }
  }
  force_scalar_kernels(false);
}

// SwiGLU's silu(gate) * up: within 1e-6 of a double-precision reference at
// every level (the AVX2 path's exp is a polynomial), over the range
// activations take and past the clamp; in place; and each element's result
// does not depend on where it sits in the row (the padded tail), so a batch
// computes what each sequence computes alone.
TEST(SwigluKernelTest, MatchesDoubleReferenceAndIsPositionIndependent) {
  std::mt19937 rng(11);
  std::vector<float> gate = {0.0f, -0.0f, 1e-30f, -1e-30f, 0.5f, -0.5f, 20.0f, -20.0f, 80.0f, -80.0f, 87.5f, -87.5f,
                             95.0f, -95.0f, 200.0f, -200.0f};
  std::normal_distribution<float> nd(0.0f, 4.0f);
  for (int i = 0; i < 5000; ++i) gate.push_back(nd(rng));
  std::uniform_real_distribution<float> wide(-100.0f, 100.0f);
  for (int i = 0; i < 1000; ++i) gate.push_back(wide(rng));
  std::vector<float> up(gate.size());
  for (auto& u : up) u = nd(rng);
  const std::int64_t n = static_cast<std::int64_t>(gate.size());
  for (KernelIsa level : {KernelIsa::kScalar, KernelIsa::kAvx2}) {
    if (best_kernel_isa() < level) continue;
    limit_kernel_isa(level);
    std::vector<float> out(gate.size());
    silu_mul_row(gate.data(), up.data(), n, out.data());
    for (std::int64_t i = 0; i < n; ++i) {
      const double g = gate[static_cast<std::size_t>(i)], u = up[static_cast<std::size_t>(i)];
      const double want = g / (1.0 + std::exp(-g)) * u;
      ASSERT_NEAR(out[static_cast<std::size_t>(i)], want, 1e-6 * std::abs(want) + 1e-30)
          << kernel_isa() << " gate " << g << " up " << u;
    }
    // Every offset and length: the same value gives the same bits.
    for (std::int64_t start = 0; start < 9; ++start)
      for (std::int64_t len : {1, 3, 7, 8, 9, 15, 17}) {
        std::vector<float> part(static_cast<std::size_t>(len));
        silu_mul_row(gate.data() + start, up.data() + start, len, part.data());
        for (std::int64_t i = 0; i < len; ++i)
          ASSERT_EQ(std::memcmp(&part[static_cast<std::size_t>(i)], &out[static_cast<std::size_t>(start + i)], 4), 0)
              << kernel_isa() << " start " << start << " len " << len << " i " << i;
      }
    // In place over gate, as the decoder calls it.
    std::vector<float> g2 = gate;
    silu_mul_row(g2.data(), up.data(), n, g2.data());
    ASSERT_EQ(std::memcmp(g2.data(), out.data(), out.size() * 4), 0) << kernel_isa();
  }
  force_scalar_kernels(false);
}

// matmul_many (one prepared input, all rows shared among the threads) gives
// exactly what separate matmul calls give: matrices of one form (Q4_K with
// Q6_K, as in Q4_K_M files), of forms that cannot share (Q8_0 with Q4_0: the
// fallback), row counts that split chunks across matrix boundaries, and 1
// to 9 tokens.
TEST(CpuBackendTest, MatmulManyEqualsSeparateMatmuls) {
  auto backend = make_cpu_backend(std::make_shared<ThreadPool>(2));
  std::mt19937 rng(3);
  std::normal_distribution<float> g(0.0f, 1.0f);
  const std::int64_t n_in = 512;
  const std::vector<std::vector<std::pair<GgmlType, std::int64_t>>> cases = {
      {{GgmlType::kQ4_K, 40}, {GgmlType::kQ6_K, 8}, {GgmlType::kQ4_K, 23}},
      {{GgmlType::kQ8_0, 33}, {GgmlType::kQ4_0, 17}},
      {{GgmlType::kF32, 5}, {GgmlType::kF16, 30}},
      {{GgmlType::kQ8_0, 64}, {GgmlType::kQ8_0, 16}, {GgmlType::kQ8_0, 48}}};
  for (const auto& mats : cases) {
    std::vector<std::vector<std::uint8_t>> bytes;
    std::vector<WeightTensor> ws;
    for (auto [type, rows] : mats) {
      std::vector<float> wf(static_cast<std::size_t>(n_in * rows));
      for (float& v : wf) v = g(rng);
      const std::size_t rb = row_bytes(type, n_in);
      bytes.emplace_back(rb * static_cast<std::size_t>(rows));
      for (std::int64_t r = 0; r < rows; ++r) quantize_row(type, wf.data() + r * n_in, bytes.back().data() + rb * r, n_in);
    }
    for (std::size_t i = 0; i < mats.size(); ++i) {
      WeightTensor w;
      w.type = mats[i].first;
      w.ne[0] = n_in;
      w.ne[1] = mats[i].second;
      w.data = bytes[i].data();
      ws.push_back(w);
    }
    for (std::int64_t n_tokens : {1, 4, 9}) {
      std::vector<float> x(static_cast<std::size_t>(n_tokens * n_in));
      for (float& v : x) v = g(rng);
      std::vector<std::vector<float>> together(ws.size()), apart(ws.size());
      std::vector<const WeightTensor*> wp;
      std::vector<float*> yp;
      for (std::size_t i = 0; i < ws.size(); ++i) {
        together[i].assign(static_cast<std::size_t>(n_tokens * ws[i].ne[1]), -1.0f);
        apart[i].assign(together[i].size(), -2.0f);
        backend->matmul(ws[i], x.data(), n_tokens, apart[i].data());
        wp.push_back(&ws[i]);
        yp.push_back(together[i].data());
      }
      backend->matmul_many(wp.data(), yp.data(), static_cast<int>(ws.size()), x.data(), n_tokens);
      for (std::size_t i = 0; i < ws.size(); ++i)
        ASSERT_EQ(together[i], apart[i]) << "matrix " << i << " (" << traits(ws[i].type).name << "), " << n_tokens
                                         << " tokens";
    }
  }
}

TEST(GgmlTypesTest, TraitsDescribeKnownAndUnknownTypes) {
  EXPECT_EQ(traits(GgmlType::kQ4_K).block_bytes, 144u);
  EXPECT_EQ(traits(GgmlType::kQ6_K).block_elems, 256u);
  EXPECT_TRUE(traits(GgmlType::kBF16).supported);
  EXPECT_FALSE(traits(GgmlType::kQ2_K).supported);
  EXPECT_EQ(type_traits(4), nullptr);
  EXPECT_EQ(type_traits(1000), nullptr);
  EXPECT_EQ(row_bytes(GgmlType::kQ8_0, 64), 68u);
}

}  // namespace
}  // namespace airlock::engine
