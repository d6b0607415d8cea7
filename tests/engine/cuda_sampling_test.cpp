// Sampling on the device (cuda_sampling.h) against sample_row() on the
// host, row for row, and a sampled forward pass on the CUDA backend against
// its own logits. Skipped without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "airlock/engine/kv_cache.h"
#include "airlock/engine/model.h"
#include "airlock/engine/sampler.h"
#include "cuda_backend.h"
#include "cuda_ops.h"
#include "cuda_sampling.h"
#include "gguf_writer.h"

namespace airlock::engine {
namespace {

bool no_gpu() { return cuda::device_count() == 0; }
#define SKIP_WITHOUT_GPU() \
  if (no_gpu()) GTEST_SKIP() << "no CUDA device (or no driver): the GPU tests need one"

// The rows of one test: every filter alone and together, penalties (one
// token listed twice, one past the vocabulary), every logprobs count, draws
// at both ends of [0, 1).
std::vector<SampleRow> mixed_rows(int n_rows, int n_vocab, std::mt19937& rng) {
  std::vector<SampleRow> rows(static_cast<std::size_t>(n_rows));
  std::uniform_real_distribution<double> u(0.0, 1.0);
  for (int r = 0; r < n_rows; ++r) {
    SampleRow& row = rows[static_cast<std::size_t>(r)];
    SamplingParams& p = row.params;
    switch (r % 8) {
      case 0: p.temperature = 0; break;
      case 1: p.temperature = 0.7f; break;
      case 2: p.top_k = 1 + r; break;
      case 3: p.top_p = 0.9f; p.temperature = 1.2f; break;
      case 4: p.min_p = 0.05f; break;
      case 5: p.top_k = 50; p.top_p = 0.8f; p.min_p = 0.02f; p.temperature = 0.5f; break;
      case 6: p.repetition_penalty = 1.3f; p.presence_penalty = 0.7f; p.frequency_penalty = 0.3f; p.top_p = 0.95f; break;
      default: p.temperature = 0; p.presence_penalty = 2.0f; p.frequency_penalty = -0.5f; break;
    }
    p.n_logprobs = r % 21;
    // Logit bias on every third row: a ban, a boost, a token twice, one
    // outside the vocabulary.
    if (r % 3 == 0)
      p.logit_bias = {{static_cast<std::int32_t>(rng() % n_vocab), -100.0f}, {2, 7.5f}, {2, -0.25f}, {n_vocab + 3, 50.0f}};
    if (p.repetition_penalty != 1.0f || p.presence_penalty != 0.0f)
      row.counts = {{0, 3}, {static_cast<std::int32_t>(rng() % n_vocab), 1}, {n_vocab + 5, 2}, {0, 1}, {1, 0}};
    row.u = r == 1 ? 0.0 : r == 2 ? 1.0 - 0x1.0p-53 : u(rng);
  }
  return rows;
}

std::vector<SampledToken> on_device(const std::vector<float>& logits, int n_vocab, const std::vector<SampleRow>& rows) {
  Result<cuda::DeviceBuffer> d = cuda::DeviceBuffer::alloc(logits.size() * sizeof(float));
  EXPECT_TRUE(d.is_ok());
  EXPECT_TRUE(cuda::to_device(d->get(), logits.data(), logits.size() * sizeof(float)).is_ok());
  cuda::DeviceSampler sampler;
  std::vector<SampledToken> out;
  Status s = sampler.sample(d->as<float>(), n_vocab, rows, &out);
  EXPECT_TRUE(s.is_ok()) << s.to_string();
  return out;
}

void expect_same(const std::vector<SampledToken>& got, const std::vector<float>& logits, int n_vocab,
                 const std::vector<SampleRow>& rows) {
  ASSERT_EQ(got.size(), rows.size());
  for (std::size_t r = 0; r < rows.size(); ++r) {
    SCOPED_TRACE("row " + std::to_string(r));
    const SampledToken want = sample_row(
        std::span<const float>(logits).subspan(r * static_cast<std::size_t>(n_vocab), static_cast<std::size_t>(n_vocab)),
        rows[r]);
    EXPECT_EQ(got[r].token, want.token);
    // log_z is summed in another order: the last bit of a float may differ
    // (-inf is -inf; a row holding +inf has NaN log-probabilities on both).
    auto near = [](float a, float b) {
      return a == b || (std::isnan(a) && std::isnan(b)) || std::fabs(a - b) <= 1e-5 * (1 + std::fabs(b));
    };
    EXPECT_TRUE(near(got[r].logprob, want.logprob)) << got[r].logprob << " vs " << want.logprob;
    ASSERT_EQ(got[r].top.size(), want.top.size());
    for (std::size_t k = 0; k < want.top.size(); ++k) {
      EXPECT_EQ(got[r].top[k].token, want.top[k].token) << k;
      EXPECT_TRUE(near(got[r].top[k].logprob, want.top[k].logprob)) << k;
    }
  }
}

// More rows than one group, vocabularies from tiny to Qwen's; logits
// continuous, coarse (many exact ties: the lower id first), and with
// -infinity entries.
TEST(CudaSampling, ChoosesWhatTheHostChooses) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(5);
  for (int n_vocab : {7, 1000, 151936}) {
    for (int kind = 0; kind < 3; ++kind) {
      SCOPED_TRACE("vocabulary " + std::to_string(n_vocab) + ", logits of kind " + std::to_string(kind));
      const int n_rows = n_vocab > 100000 ? 19 : 37;
      std::normal_distribution<float> g(0.0f, 4.0f);
      std::vector<float> logits(static_cast<std::size_t>(n_rows) * n_vocab);
      for (std::size_t i = 0; i < logits.size(); ++i) {
        float x = g(rng);
        if (kind == 1) x = std::round(x * 2) / 2;                 // ties
        if (kind == 2 && i % 3 == 0) x = -INFINITY;               // masked tokens
        logits[i] = x;
      }
      const std::vector<SampleRow> rows = mixed_rows(n_rows, n_vocab, rng);
      expect_same(on_device(logits, n_vocab, rows), logits, n_vocab, rows);
    }
  }
}

// Rows of only infinities and a +inf logit, and a group that is all
// greedy (no sort at all).
TEST(CudaSampling, InfinitiesAndAllGreedyGroups) {
  SKIP_WITHOUT_GPU();
  const int n_vocab = 300, n_rows = 20;
  std::vector<float> logits(static_cast<std::size_t>(n_rows) * n_vocab, -INFINITY);
  for (int r = 2; r < n_rows; ++r)
    for (int i = 0; i < n_vocab; ++i) logits[static_cast<std::size_t>(r) * n_vocab + i] = std::sin(0.37f * static_cast<float>(i + r));
  logits[static_cast<std::size_t>(1) * n_vocab + 17] = INFINITY;  // row 1: -inf but one +inf
  std::vector<SampleRow> rows(n_rows);
  for (int r = 0; r < n_rows; ++r) {
    rows[static_cast<std::size_t>(r)].params.temperature = r < 2 ? 0.9f : 0.0f;
    rows[static_cast<std::size_t>(r)].params.n_logprobs = 3;
    rows[static_cast<std::size_t>(r)].u = 0.5;
  }
  expect_same(on_device(logits, n_vocab, rows), logits, n_vocab, rows);
  for (SampleRow& row : rows) row.params.temperature = 0;
  expect_same(on_device(logits, n_vocab, rows), logits, n_vocab, rows);
}

// Many draws of one row follow its distribution as on the host: the same
// token for the same draw, every time.
TEST(CudaSampling, SameDrawsSameTokens) {
  SKIP_WITHOUT_GPU();
  const int n_vocab = 64, n_rows = 200;
  std::vector<float> one(n_vocab);
  for (int i = 0; i < n_vocab; ++i) one[static_cast<std::size_t>(i)] = std::log(1.0f + static_cast<float>(i % 9));
  std::vector<float> logits;
  for (int r = 0; r < n_rows; ++r) logits.insert(logits.end(), one.begin(), one.end());
  SamplingParams p;
  p.seed = 9;
  p.top_p = 0.7f;
  Sampler host(p);
  std::vector<SampleRow> rows;
  for (int r = 0; r < n_rows; ++r) rows.push_back(host.next_row({}, 0));
  expect_same(on_device(logits, n_vocab, rows), logits, n_vocab, rows);
}

// The CUDA backend's sampled pass chooses what sample_row() chooses from
// the logits of the same pass.
TEST(CudaSampling, SampledPassOnTheBackend) {
  SKIP_WITHOUT_GPU();
  const testing::TestModel tm =
      testing::make_test_model(testing::decoder_spec("llama", 64, 4, 2, 96, false, GgmlType::kQ8_0, 0));
  Result<std::unique_ptr<Backend>> be = make_cuda_backend(0);
  ASSERT_TRUE(be.is_ok()) << be.status().to_string();
  auto f = GgufFile::parse({reinterpret_cast<const std::uint8_t*>(tm.gguf.data()), tm.gguf.size()});
  ASSERT_TRUE(f.is_ok());
  auto m = Model::from_gguf(std::move(*f), std::shared_ptr<Backend>(std::move(*be)));
  ASSERT_TRUE(m.is_ok()) << m.status().to_string();
  const int n_vocab = (*m)->params().n_vocab;
  KvCache cache_a(8), cache_b(8);
  Result<KvStorage> kv_a = (*m)->alloc_kv(8), kv_b = (*m)->alloc_kv(8);
  ASSERT_TRUE(kv_a.is_ok() && kv_b.is_ok());
  Batch batch;
  for (int s = 0; s < 3; ++s) {
    ASSERT_TRUE(cache_a.add_sequence(s).is_ok() && cache_b.add_sequence(s).is_ok());
    for (int i = 0; i < 5 + 4 * s; ++i) batch.add((i * 7 + s) % n_vocab, i, s, i + 1 == 5 + 4 * s);
  }
  std::mt19937 rng(3);
  const std::vector<SampleRow> rows = mixed_rows(3, n_vocab, rng);
  std::vector<float> logits;
  ASSERT_TRUE((*m)->forward(batch, cache_a, *kv_a, &logits).is_ok());
  std::vector<SampledToken> tokens;
  PassOutput out;
  out.rows = rows;
  out.tokens = &tokens;
  Status s = (*m)->forward(batch, cache_b, *kv_b, out);
  ASSERT_TRUE(s.is_ok()) << s.to_string();
  expect_same(tokens, logits, n_vocab, rows);
}

}  // namespace
}  // namespace airlock::engine
