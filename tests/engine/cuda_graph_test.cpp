// CUDA graphs (issue 7): which graph a pass takes (host code, tested
// everywhere), and on a GPU, decode steps replayed from graphs against the
// same steps run operation by operation.
#include <gtest/gtest.h>

#include <cmath>

#include "airlock/engine/kv_cache.h"
#include "airlock/engine/model.h"
#include "cuda_backend.h"
#include "cuda_graph_plan.h"
#include "cuda_ops.h"
#include "gguf_writer.h"

namespace airlock::engine {
namespace {

TEST(CudaGraphPlan, ContextsSharePowerOfTwoBucketsAndLimitsRefuse) {
  const cuda::GraphLimits limits{32, 512};
  int storage = 0;
  auto key = [&](std::int64_t n, int ctx) { return cuda::graph_key(limits, n, ctx, 16, &storage); };
  ASSERT_TRUE(key(1, 1).has_value());
  EXPECT_EQ(key(1, 1)->ctx_blocks, cuda::kMinContextBlocks);  // up to 256 positions: one bucket
  EXPECT_EQ(key(1, 256), key(1, 1));
  EXPECT_EQ(key(1, 257)->ctx_blocks, 32);
  EXPECT_EQ(key(1, 512), key(1, 257));
  EXPECT_EQ(key(1, 513)->ctx_blocks, 64);
  EXPECT_EQ(key(7, 5000)->ctx_blocks, 512);  // 313 blocks: the 512 bucket
  EXPECT_EQ(key(7, 5000)->n_tokens, 7);
  EXPECT_EQ(key(7, 5000)->storage, reinterpret_cast<std::uintptr_t>(&storage));
  EXPECT_NE(key(1, 1), key(2, 1));
  // A bucket never passes the table room; beyond it, no graph.
  EXPECT_EQ(cuda::graph_key({32, 300}, 1, 4097, 16, &storage)->ctx_blocks, 300);
  EXPECT_FALSE(cuda::graph_key({32, 300}, 1, 4801, 16, &storage).has_value());
  // Too many tokens, none, graphs off, no context.
  EXPECT_FALSE(key(33, 10).has_value());
  EXPECT_FALSE(key(0, 10).has_value());
  EXPECT_FALSE(cuda::graph_key({0, 512}, 1, 10, 16, &storage).has_value());
  EXPECT_FALSE(key(1, 0).has_value());
}

std::shared_ptr<Backend> gpu(int graph_max_tokens) {
  CudaOptions o;
  o.graph_max_tokens = graph_max_tokens;
  Result<std::unique_ptr<Backend>> b = make_cuda_backend(0, o);
  EXPECT_TRUE(b.is_ok()) << b.status().to_string();
  return b.is_ok() ? std::shared_ptr<Backend>(std::move(*b)) : nullptr;
}

// Three sequences prefilled (eagerly: not every token wants logits), then
// decode steps of one to three of them, their contexts crossing the
// 256-position bucket; every step's logits, in order.
std::vector<float> decode_steps(Model& m) {
  KvCache cache(64);
  Result<KvStorage> kv = m.alloc_kv(64, KvType::kF16);
  EXPECT_TRUE(kv.is_ok());
  const int n_vocab = m.params().n_vocab;
  std::vector<float> all, logits;
  Batch prefill;
  for (int s = 0; s < 3; ++s) {
    EXPECT_TRUE(cache.add_sequence(s).is_ok());
    for (int p = 0; p < 200 + 20 * s; ++p) prefill.add((p * 7 + s) % n_vocab, p, s, false);
  }
  EXPECT_TRUE(m.forward(prefill, cache, *kv, &logits).is_ok());
  for (int step = 0; step < 60; ++step) {
    Batch b;
    for (int s = 0; s < 3; ++s)
      if (step % (s + 1) == 0) b.add((step * 13 + s) % n_vocab, cache.length(s), s, true);
    Status st = m.forward(b, cache, *kv, &logits);
    EXPECT_TRUE(st.is_ok()) << st.to_string();
    all.insert(all.end(), logits.begin(), logits.end());
  }
  return all;
}

TEST(CudaGraphs, ReplayedDecodeStepsMatchEagerOnes) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device (or no driver): the GPU tests need one";
  for (GgmlType type : {GgmlType::kF32, GgmlType::kQ8_0, GgmlType::kQ4_K}) {
    SCOPED_TRACE(traits(type).name);
    const testing::TestModel tm = testing::make_test_model(testing::decoder_spec("llama", 256, 4, 2, 256, false, type, 0));
    std::vector<float> runs[2];
    CudaGraphStats stats[2];
    for (int graphs = 0; graphs < 2; ++graphs) {
      auto f = GgufFile::parse({reinterpret_cast<const std::uint8_t*>(tm.gguf.data()), tm.gguf.size()});
      ASSERT_TRUE(f.is_ok());
      std::shared_ptr<Backend> be = gpu(graphs == 0 ? 0 : 32);
      ASSERT_NE(be, nullptr);
      auto m = Model::from_gguf(std::move(*f), be);
      ASSERT_TRUE(m.is_ok()) << m.status().to_string();
      runs[graphs] = decode_steps(**m);
      stats[graphs] = cuda_graph_stats(*be);
    }
    EXPECT_EQ(stats[0].captured, 0u);
    EXPECT_EQ(stats[0].replayed, 0u);
    // Batches of 1, 2 and 3 tokens in two context buckets: a few captures,
    // the rest replays.
    EXPECT_GE(stats[1].captured, 3u);
    EXPECT_LE(stats[1].captured, 6u);
    EXPECT_EQ(stats[1].captured + stats[1].replayed, 60u);
    EXPECT_EQ(stats[1].eager, 1u);  // the prefill
    EXPECT_EQ(stats[1].refused, 0u);
    // Attention is split for the bucket's length rather than the longest
    // context: the same sums in another order.
    ASSERT_EQ(runs[0].size(), runs[1].size());
    for (std::size_t i = 0; i < runs[0].size(); ++i)
      ASSERT_NEAR(runs[1][i], runs[0][i], 1e-4 * (1.0 + std::fabs(runs[0][i]))) << "logit " << i;
  }
}

}  // namespace
}  // namespace airlock::engine
