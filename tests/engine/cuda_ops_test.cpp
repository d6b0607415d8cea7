// The CUDA operations against the CPU backend's, on random inputs of
// several shapes (issue 7: "every op vs CPU within tolerance"). The GPU
// tests skip, with the reason, where there is no GPU; the kernels' weight
// decoding also runs on the host and is checked everywhere.
// compute-sanitizer runs this binary in bench/gpu-check.sh.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "airlock/engine/backend.h"
#include "airlock/engine/thread_pool.h"
#include "cuda_ops.h"

namespace airlock::engine {
namespace {

class CudaOpsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device (or no driver): the GPU tests need one";
  }
  std::unique_ptr<Backend> cpu_ = make_cpu_backend(std::make_shared<ThreadPool>(2));
  std::mt19937 rng_{11};

  std::vector<float> random(std::int64_t n, float scale = 1.0f) {
    std::normal_distribution<float> g(0.0f, scale);
    std::vector<float> v(static_cast<std::size_t>(n));
    for (float& x : v) x = g(rng_);
    return v;
  }
};

// A device copy of host numbers.
template <typename T>
cuda::DeviceBuffer on_device(const std::vector<T>& v) {
  Result<cuda::DeviceBuffer> b = cuda::DeviceBuffer::alloc(v.size() * sizeof(T));
  EXPECT_TRUE(b.is_ok()) << b.status().to_string();
  EXPECT_TRUE(cuda::to_device(b->get(), v.data(), v.size() * sizeof(T)).is_ok());
  return std::move(*b);
}

std::vector<float> on_host(const cuda::DeviceBuffer& b, std::int64_t n) {
  std::vector<float> v(static_cast<std::size_t>(n));
  EXPECT_TRUE(cuda::synchronize().is_ok());
  EXPECT_TRUE(cuda::to_host(v.data(), b.get(), v.size() * sizeof(float)).is_ok());
  return v;
}

WeightTensor f32_vector(const std::vector<float>& v) {
  WeightTensor w;
  w.type = GgmlType::kF32;
  w.ne[0] = static_cast<std::int64_t>(v.size());
  w.data = reinterpret_cast<const std::uint8_t*>(v.data());
  return w;
}

void expect_close(const std::vector<float>& got, const std::vector<float>& want, double rel, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (std::size_t i = 0; i < want.size(); ++i)
    ASSERT_NEAR(got[i], want[i], rel * (1.0 + std::fabs(want[i]))) << what << " at " << i;
}

TEST_F(CudaOpsTest, RmsNormAndLayerNorm) {
  for (std::int64_t dim : {1, 64, 257, 4096}) {
    const std::int64_t rows = 5;
    std::vector<float> x = random(rows * dim, 3.0f), w = random(dim), b = random(dim), want(x.size()), want_ln(x.size());
    cpu_->rms_norm(x.data(), f32_vector(w), rows, dim, 1e-5f, want.data());
    cpu_->layer_norm(x.data(), f32_vector(w), f32_vector(b), rows, dim, 1e-5f, want_ln.data());
    auto dx = on_device(x), dw = on_device(w), db = on_device(b), dy = on_device(std::vector<float>(x.size()));
    ASSERT_TRUE(cuda::rms_norm(dx.as<float>(), dw.as<float>(), rows, dim, 1e-5f, dy.as<float>()).is_ok());
    expect_close(on_host(dy, rows * dim), want, 1e-6, "rms_norm dim " + std::to_string(dim));
    ASSERT_TRUE(cuda::layer_norm(dx.as<float>(), dw.as<float>(), db.as<float>(), rows, dim, 1e-5f, dx.as<float>()).is_ok());
    expect_close(on_host(dx, rows * dim), want_ln, 1e-6, "layer_norm in place, dim " + std::to_string(dim));
  }
}

TEST_F(CudaOpsTest, ElementwiseOps) {
  for (std::int64_t n : {1, 255, 256, 100003}) {
    std::vector<float> x = random(n, 4.0f), y = random(n, 4.0f);
    std::vector<float> sum = y, silu(static_cast<std::size_t>(n)), g(static_cast<std::size_t>(n));
    cpu_->add(sum.data(), x.data(), n);
    cpu_->swiglu(x.data(), y.data(), n, silu.data());
    cpu_->gelu(x.data(), n, g.data());
    auto dx = on_device(x), dy = on_device(y), dout = on_device(std::vector<float>(x.size()));
    ASSERT_TRUE(cuda::swiglu(dx.as<float>(), dy.as<float>(), n, dout.as<float>()).is_ok());
    expect_close(on_host(dout, n), silu, 1e-6, "swiglu");
    ASSERT_TRUE(cuda::gelu(dx.as<float>(), n, dout.as<float>()).is_ok());
    expect_close(on_host(dout, n), g, 1e-6, "gelu");
    std::vector<float> geglu(static_cast<std::size_t>(n)), scaled = x, capped = x;
    cpu_->geglu(x.data(), y.data(), n, geglu.data());
    cpu_->scale(scaled.data(), n, 1.75f);
    cpu_->softcap(capped.data(), n, 2.5f);
    ASSERT_TRUE(cuda::geglu(dx.as<float>(), dy.as<float>(), n, dout.as<float>()).is_ok());
    expect_close(on_host(dout, n), geglu, 1e-6, "geglu");
    auto dz = on_device(x);
    ASSERT_TRUE(cuda::scale(dz.as<float>(), n, 1.75f).is_ok());
    expect_close(on_host(dz, n), scaled, 0, "scale");
    auto dc = on_device(x);
    ASSERT_TRUE(cuda::softcap(dc.as<float>(), n, 2.5f).is_ok());
    expect_close(on_host(dc, n), capped, 1e-6, "softcap");
    ASSERT_TRUE(cuda::add(dy.as<float>(), dx.as<float>(), n).is_ok());
    expect_close(on_host(dy, n), sum, 0, "add");
  }
  const std::int64_t rows = 7, dim = 96;
  std::vector<float> y = random(rows * dim), bias = random(dim), want = y;
  cpu_->add_bias(want.data(), f32_vector(bias), rows, dim);
  auto dy = on_device(y), db = on_device(bias);
  ASSERT_TRUE(cuda::add_bias(dy.as<float>(), db.as<float>(), rows, dim).is_ok());
  expect_close(on_host(dy, rows * dim), want, 0, "add_bias");
}

TEST_F(CudaOpsTest, RopeBothStylesWithScalingAndFactors) {
  const std::int64_t n_tokens = 9;
  const int n_heads = 3;
  std::vector<std::int32_t> pos = {0, 1, 2, 17, 100, 511, 2047, 4095, 30000};
  for (bool neox : {false, true})
    for (int head_dim : {64, 128})
      for (int n_rot : {head_dim, head_dim / 2}) {
        RopeParams p;
        p.n_rot = n_rot;
        p.freq_base = neox ? 1000000.0f : 10000.0f;
        p.freq_scale = neox ? 0.25f : 1.0f;
        p.neox = neox;
        std::vector<float> factors = random(n_rot / 2, 0.5f);
        for (float& f : factors) f = 1.0f + std::fabs(f);
        std::vector<float> x = random(n_tokens * n_heads * head_dim), want = x;
        p.freq_factors = head_dim == 128 ? factors.data() : nullptr;
        cpu_->rope(want.data(), n_tokens, n_heads, head_dim, pos.data(), p);
        auto dx = on_device(x), dpos = on_device(pos), dfac = on_device(factors);
        p.freq_factors = head_dim == 128 ? dfac.as<float>() : nullptr;
        ASSERT_TRUE(cuda::rope(dx.as<float>(), n_tokens, n_heads, head_dim, dpos.as<std::int32_t>(), p).is_ok());
        // Angles up to ~30000 rad: sinf/cosf of the same float angle differ
        // by an ulp or two between libraries.
        expect_close(on_host(dx, n_tokens * n_heads * head_dim), want, 2e-6,
                     std::string(neox ? "neox" : "adjacent") + " head_dim " + std::to_string(head_dim) + " n_rot " +
                         std::to_string(n_rot));
      }
}

const GgmlType kTypes[] = {GgmlType::kF32,  GgmlType::kF16,  GgmlType::kBF16, GgmlType::kQ8_0,
                           GgmlType::kQ4_0, GgmlType::kQ4_K, GgmlType::kQ5_K, GgmlType::kQ6_K};

// Rows of random numbers quantised to `type`.
std::vector<std::uint8_t> quantised(GgmlType type, const std::vector<float>& values, std::int64_t row_len) {
  const std::size_t rb = row_bytes(type, row_len);
  const std::int64_t n_rows = static_cast<std::int64_t>(values.size()) / row_len;
  std::vector<std::uint8_t> out(rb * static_cast<std::size_t>(n_rows));
  for (std::int64_t r = 0; r < n_rows; ++r) quantize_row(type, values.data() + r * row_len, out.data() + rb * r, row_len);
  return out;
}

// The kernels' weight decoding, run on the host (no GPU needed): every
// element of every type as dequantize_row gives it.
TEST(CudaWeightDecoding, EveryTypeDecodesAsTheCpu) {
  std::mt19937 rng(4);
  std::normal_distribution<float> g(0.0f, 1.0f);
  const std::int64_t row_len = 1024;
  std::vector<float> values(static_cast<std::size_t>(row_len));
  for (float& x : values) x = g(rng);
  for (GgmlType type : kTypes) {
    ASSERT_TRUE(cuda::supported(type)) << traits(type).name;
    std::vector<std::uint8_t> row = quantised(type, values, row_len);
    std::vector<float> want(static_cast<std::size_t>(row_len));
    dequantize_row(type, row.data(), want.data(), row_len);
    for (std::int64_t k = 0; k < row_len; ++k)
      ASSERT_EQ(cuda::decode_weight(type, row.data(), k), want[static_cast<std::size_t>(k)])
          << traits(type).name << " element " << k;
  }
  EXPECT_FALSE(cuda::supported(GgmlType::kQ4_1));
}

TEST_F(CudaOpsTest, GetRowsDequantisesEveryTableType) {
  const std::int64_t row_len = 512, n_rows = 10;
  std::vector<float> values = random(row_len * n_rows);
  std::vector<std::int32_t> ids = {3, 0, 9, 3, 5};
  for (GgmlType type : kTypes) {
    std::vector<std::uint8_t> table = quantised(type, values, row_len);
    WeightTensor w;
    w.type = type;
    w.ne[0] = row_len;
    w.ne[1] = n_rows;
    w.data = table.data();
    std::vector<float> want(ids.size() * row_len);
    cpu_->get_rows(w, ids.data(), static_cast<std::int64_t>(ids.size()), want.data());
    auto dt = on_device(table), dids = on_device(ids), dout = on_device(std::vector<float>(want.size()));
    ASSERT_TRUE(cuda::get_rows(type, dt.get(), row_len, dids.as<std::int32_t>(), static_cast<std::int64_t>(ids.size()),
                               dout.as<float>()).is_ok());
    // The same decoding; the device may fuse scale * q - min into one FMA.
    expect_close(on_host(dout, static_cast<std::int64_t>(want.size())), want, 1e-6, std::string(traits(type).name));
  }
  EXPECT_EQ(cuda::get_rows(GgmlType::kQ4_1, nullptr, 256, nullptr, 1, nullptr).code(), StatusCode::kInvalidArgument);
}

// y = x w^T against a double-precision product of the dequantised weights,
// within rel times the sum of the products' magnitudes.
void expect_product(const std::vector<float>& y, const std::vector<float>& rows, const std::vector<float>& x,
                    std::int64_t n_tokens, std::int64_t n_in, std::int64_t n_out, double rel, const std::string& what) {
  for (std::int64_t t = 0; t < n_tokens; ++t)
    for (std::int64_t r = 0; r < n_out; ++r) {
      double want = 0, norm = 0;
      for (std::int64_t k = 0; k < n_in; ++k) {
        const double p = static_cast<double>(rows[static_cast<std::size_t>(r * n_in + k)]) *
                         x[static_cast<std::size_t>(t * n_in + k)];
        want += p;
        norm += std::fabs(p);
      }
      ASSERT_NEAR(y[static_cast<std::size_t>(t * n_out + r)], want, rel * norm)
          << what << " tokens " << n_tokens << " row " << r;
    }
}

struct Weights {
  std::vector<std::uint8_t> bytes;
  std::vector<float> rows;  // dequantised
};

Weights make_weights(GgmlType type, const std::vector<float>& wf, std::int64_t n_in, std::int64_t n_out) {
  Weights w;
  w.bytes = quantised(type, wf, n_in);
  w.rows.resize(static_cast<std::size_t>(n_in * n_out));
  const std::size_t rb = row_bytes(type, n_in);
  for (std::int64_t r = 0; r < n_out; ++r) dequantize_row(type, w.bytes.data() + rb * r, w.rows.data() + r * n_in, n_in);
  return w;
}

// Every weight type, token counts on both sides of the kernel's pass of
// eight. F32, F16, BF16 and Q8_0 take the fast kernel, the others the
// reference one; x one float off 16-byte alignment takes the reference
// kernel for the fast types too.
TEST_F(CudaOpsTest, MatmulEveryWeightTypeAgainstDoubleReference) {
  const std::int64_t n_in = 512, n_out = 37;
  for (GgmlType type : kTypes) {
    const Weights w = make_weights(type, random(n_in * n_out, 0.05f), n_in, n_out);
    auto dw = on_device(w.bytes);
    for (std::int64_t n_tokens : {1, 3, 8, 13}) {
      for (int offset : {0, 1}) {
        std::vector<float> x = random(n_tokens * n_in);
        std::vector<float> padded(static_cast<std::size_t>(offset), 0.0f);
        padded.insert(padded.end(), x.begin(), x.end());
        auto dx = on_device(padded), dy = on_device(std::vector<float>(static_cast<std::size_t>(n_tokens * n_out)));
        ASSERT_TRUE(cuda::matmul(type, dw.get(), n_in, n_out, dx.as<float>() + offset, n_tokens, dy.as<float>()).is_ok());
        expect_product(on_host(dy, n_tokens * n_out), w.rows, x, n_tokens, n_in, n_out, 1e-5,
                       std::string(traits(type).name) + (offset ? " unaligned" : ""));
      }
    }
  }
  EXPECT_EQ(cuda::matmul(GgmlType::kQ4_K, nullptr, 100, 1, nullptr, 1, nullptr).code(), StatusCode::kInvalidArgument);
}

// Rows shared by 2, 4 or 8 warps (few rows on a large GPU) give the same
// products as rows of their own: the fast types at row counts that make
// each split on a 132-multiprocessor GPU (and other splits elsewhere).
TEST_F(CudaOpsTest, MatmulRowsSharedAmongWarps) {
  const std::int64_t n_in = 256;
  for (GgmlType type : {GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16, GgmlType::kQ8_0})
    for (std::int64_t n_out : {2000, 3500, 7000}) {
      const Weights w = make_weights(type, random(n_in * n_out, 0.05f), n_in, n_out);
      auto dw = on_device(w.bytes);
      for (std::int64_t n_tokens : {1, 5}) {
        std::vector<float> x = random(n_tokens * n_in);
        auto dx = on_device(x), dy = on_device(std::vector<float>(static_cast<std::size_t>(n_tokens * n_out)));
        ASSERT_TRUE(cuda::matmul(type, dw.get(), n_in, n_out, dx.as<float>(), n_tokens, dy.as<float>()).is_ok());
        expect_product(on_host(dy, n_tokens * n_out), w.rows, x, n_tokens, n_in, n_out, 1e-5,
                       std::string(traits(type).name) + " rows " + std::to_string(n_out));
      }
    }
}

TEST(CudaMatvecSplit, AboutFortyEightWarpsPerMultiprocessor) {
  EXPECT_EQ(cuda::matvec_split(37, 132), 8);
  EXPECT_EQ(cuda::matvec_split(1024, 132), 8);   // a key/value projection
  EXPECT_EQ(cuda::matvec_split(2000, 132), 4);
  EXPECT_EQ(cuda::matvec_split(4096, 132), 2);   // a query projection
  EXPECT_EQ(cuda::matvec_split(14336, 132), 1);  // feed-forward
  EXPECT_EQ(cuda::matvec_split(128256, 132), 1); // the output matrix
  EXPECT_EQ(cuda::matvec_split(1000, 0), 1);     // no count: one multiprocessor's worth
}

// The cuBLAS path: F32 in full f32; every other type through bf16 (each
// factor rounded to 8 significant bits, so products are within about 2^-8
// of exact and sums within that times the sum of magnitudes).
TEST_F(CudaOpsTest, GemmEveryWeightTypeAgainstDoubleReference) {
  Result<std::unique_ptr<cuda::Gemm>> gemm = cuda::Gemm::create();
  ASSERT_TRUE(gemm.is_ok()) << gemm.status().to_string();
  const std::int64_t n_in = 768, n_out = 100;
  for (GgmlType type : kTypes) {
    const Weights w = make_weights(type, random(n_in * n_out, 0.05f), n_in, n_out);
    auto dw = on_device(w.bytes);
    for (std::int64_t n_tokens : {1, 40, 300}) {
      std::vector<float> x = random(n_tokens * n_in);
      auto dx = on_device(x), dy = on_device(std::vector<float>(static_cast<std::size_t>(n_tokens * n_out)));
      ASSERT_TRUE((*gemm)->matmul(type, dw.get(), n_in, n_out, dx.as<float>(), n_tokens, dy.as<float>()).is_ok());
      expect_product(on_host(dy, n_tokens * n_out), w.rows, x, n_tokens, n_in, n_out,
                     type == GgmlType::kF32 ? 1e-5 : 8e-3, "GEMM " + std::string(traits(type).name));
    }
  }
  EXPECT_EQ((*gemm)->matmul(GgmlType::kQ4_K, nullptr, 100, 1, nullptr, 1, nullptr).code(), StatusCode::kInvalidArgument);
}

// KV writes and paged attention against the CPU backend, f32 and f16
// caches, grouped heads, contexts of one position to several blocks through
// a shuffled block table, several tokens of different contexts at once (few
// ranges per head), and one decode token at a context of 20,000 positions
// (many ranges, beyond the old kernel's 12,000 limit); then sliding windows
// (ranges counted from the window's start) with soft-capped scores.
TEST_F(CudaOpsTest, KvWriteAndPagedAttentionMatchTheCpu) {
  struct Shape {
    int n_blocks;
    std::vector<std::int32_t> n_ctx;
    int head_dim;
    int window = 0;
    float softcap = 0.0f;
  };
  const Shape shapes[] = {{24, {1, 17, 200, 384}, 64},         {1251, {20000}, 128},
                          {1251, {3, 20000}, 256},             {1251, {20000}, 128, 300, 5.0f},
                          {24, {1, 17, 200, 384}, 64, 100, 0}, {1251, {250, 20000}, 256, 4096, 2.0f}};
  for (const Shape& sh : shapes)
  for (KvType type : {KvType::kF32, KvType::kF16}) {
    const int n_head = 8, n_kv_head = 2, head_dim = sh.head_dim, block = 16, n_blocks = sh.n_blocks;
    const std::string what = std::string(kv_type_name(type)) + " head_dim " + std::to_string(head_dim) + " ctx " +
                             std::to_string(sh.n_ctx.back()) + " window " + std::to_string(sh.window);
    const std::int64_t kv_dim = n_kv_head * head_dim, n_slots = static_cast<std::int64_t>(n_blocks) * block;
    Result<KvStorage> host = cpu_->alloc_kv(1, n_slots, kv_dim, type);
    ASSERT_TRUE(host.is_ok());
    // Every slot written through both backends.
    std::vector<float> k = random(n_slots * kv_dim), v = random(n_slots * kv_dim);
    std::vector<std::int32_t> slots(static_cast<std::size_t>(n_slots));
    for (std::int64_t i = 0; i < n_slots; ++i) slots[static_cast<std::size_t>(i)] = static_cast<std::int32_t>((i * 7) % n_slots);
    cpu_->kv_write(*host, 0, k.data(), v.data(), n_slots, slots.data());
    const std::size_t bytes = host->layer_bytes();
    Result<cuda::DeviceBuffer> dk = cuda::DeviceBuffer::alloc(bytes), dv = cuda::DeviceBuffer::alloc(bytes);
    ASSERT_TRUE(dk.is_ok() && dv.is_ok());
    auto dkin = on_device(k), dvin = on_device(v), dslots = on_device(slots);
    ASSERT_TRUE(cuda::kv_write(type, dk->get(), dv->get(), kv_dim, dkin.as<float>(), dvin.as<float>(), n_slots,
                               dslots.as<std::int32_t>()).is_ok());
    std::vector<std::uint8_t> back(bytes);
    ASSERT_TRUE(cuda::synchronize().is_ok());
    ASSERT_TRUE(cuda::to_host(back.data(), dk->get(), bytes).is_ok());
    EXPECT_EQ(std::memcmp(back.data(), host->k_layer(0), bytes), 0) << what << ": keys differ";
    ASSERT_TRUE(cuda::to_host(back.data(), dv->get(), bytes).is_ok());
    EXPECT_EQ(std::memcmp(back.data(), host->v_layer(0), bytes), 0) << what << ": values differ";

    const std::vector<std::int32_t>& n_ctx = sh.n_ctx;
    const std::int64_t n_tokens = static_cast<std::int64_t>(n_ctx.size()), stride = n_blocks;
    std::vector<std::int32_t> tables(static_cast<std::size_t>(n_tokens * stride));
    for (std::int64_t t = 0; t < n_tokens; ++t)
      for (std::int64_t b = 0; b < stride; ++b)
        tables[static_cast<std::size_t>(t * stride + b)] = static_cast<std::int32_t>((b * 5 + t) % n_blocks);
    std::vector<const std::int32_t*> table_ptrs;
    for (std::int64_t t = 0; t < n_tokens; ++t) table_ptrs.push_back(tables.data() + t * stride);
    std::vector<float> q = random(n_tokens * n_head * head_dim, 2.0f), want(q.size());
    AttentionArgs a;
    a.q = q.data();
    a.out = want.data();
    a.n_tokens = n_tokens;
    a.n_head = n_head;
    a.n_kv_head = n_kv_head;
    a.head_dim = head_dim;
    a.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
    a.window = sh.window;
    a.softcap = sh.softcap;
    a.kv = &*host;
    a.n_ctx = n_ctx.data();
    a.block_table = table_ptrs.data();
    cpu_->attention(a);
    cuda::AttentionShape s;
    s.n_tokens = n_tokens;
    s.n_head = n_head;
    s.n_kv_head = n_kv_head;
    s.head_dim = head_dim;
    s.scale = a.scale;
    s.window = sh.window;
    s.softcap = sh.softcap;
    s.block = block;
    s.table_stride = stride;
    s.max_ctx = *std::max_element(n_ctx.begin(), n_ctx.end());
    auto dq = on_device(q), dctx = on_device(n_ctx), dtables = on_device(tables),
         dout = on_device(std::vector<float>(q.size()));
    cuda::DeviceBuffer workspace;
    ASSERT_TRUE(cuda::attention(s, dq.as<float>(), type, dk->get(), dv->get(), kv_dim, dctx.as<std::int32_t>(),
                                dtables.as<std::int32_t>(), dout.as<float>(), &workspace).is_ok());
    expect_close(on_host(dout, static_cast<std::int64_t>(q.size())), want, 1e-5, "attention " + what);
  }
}

// How many ranges attention splits each head's positions into (host code,
// checked everywhere): many for one decode token at a long context, one
// when tokens and heads fill the device, never ranges under 32 positions.
TEST(CudaAttentionSplits, FillTheDeviceWithoutTinyRanges) {
  EXPECT_EQ(cuda::attention_splits(1, 32, 2000), 32);     // 1024 blocks, ranges of 63
  EXPECT_EQ(cuda::attention_splits(1, 32, 100), 4);       // ranges of 32 at least
  EXPECT_EQ(cuda::attention_splits(1, 32, 1), 1);
  EXPECT_EQ(cuda::attention_splits(16, 32, 2000), 2);     // 512 heads
  EXPECT_EQ(cuda::attention_splits(512, 32, 2000), 1);    // a prefill chunk
  EXPECT_EQ(cuda::attention_splits(1, 1, 10000000), 1024);
}

// Refusals: heads wider than the kernel holds, a zero context.
TEST_F(CudaOpsTest, AttentionRefusesWhatItCannotCompute) {
  cuda::AttentionShape s;
  s.n_tokens = 1;
  s.n_head = 2;
  s.n_kv_head = 1;
  s.head_dim = 512;
  s.max_ctx = 4;
  cuda::DeviceBuffer workspace;
  EXPECT_EQ(cuda::attention(s, nullptr, KvType::kF32, nullptr, nullptr, 512, nullptr, nullptr, nullptr, &workspace).code(),
            StatusCode::kInvalidArgument);
  s.head_dim = 64;
  s.max_ctx = 0;
  EXPECT_EQ(cuda::attention(s, nullptr, KvType::kF32, nullptr, nullptr, 64, nullptr, nullptr, nullptr, &workspace).code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace airlock::engine
