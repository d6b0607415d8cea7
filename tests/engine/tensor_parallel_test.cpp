// Tensor parallelism run on the CPU: a model split over 2 and 4 ranks
// (ranks as threads, joined by the in-process communicator) computes the
// whole model's logits at every step, for prompt chunks and decode steps of
// two sequences, for each architecture and for quantised matrices; every
// rank ends with the same numbers; splits that cannot be made are refused.
// On GPUs the same split runs with NCCL's all-reduce (issue 7).
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <thread>

#include "airlock/engine/collective.h"
#include "airlock/engine/decoder.h"
#include "airlock/engine/kernels.h"
#include "airlock/engine/model.h"
#include "airlock/engine/scheduler.h"
#include "airlock/engine/thread_pool.h"
#include "forwarding_backend.h"
#include "gguf_writer.h"

namespace airlock::engine {
namespace {

using testing::TestModelSpec;

struct Case {
  const char* name;
  TestModelSpec spec;
  int n_ranks;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

TestModelSpec shape(const char* arch, int n_embd, int n_head, int n_head_kv, int n_ff, GgmlType type,
                    int head_dim = 0, bool tied = false) {
  return testing::decoder_spec(arch, n_embd, n_head, n_head_kv, n_ff, tied, type, head_dim);
}

// Post-norms after the partial sums, sliding windows of 8 on five of six
// layers.
TestModelSpec gemma3_shape() {
  TestModelSpec s = shape("gemma3", 128, 4, 2, 128, GgmlType::kQ8_0, 32, true);
  s.n_layer = 6;
  s.sliding_window = 8;
  return s;
}

TestModelSpec with_biases(TestModelSpec s) {
  s.biases = true;
  return s;
}

Result<std::unique_ptr<Model>> load(const testing::TestModel& tm, TensorParallel tp = {}) {
  AIRLOCK_ASSIGN_OR_RETURN(auto file,
                           GgufFile::parse({reinterpret_cast<const std::uint8_t*>(tm.gguf.data()), tm.gguf.size()}));
  return Model::from_gguf(std::move(file), make_cpu_backend(std::make_shared<ThreadPool>(1)), tp);
}

// Two sequences: prompt chunks of different lengths in one batch, a chunk
// next to a decode step, then decode steps of both.
std::vector<Batch> steps(int n_vocab) {
  std::vector<Batch> out(5);
  int tok = 3;
  auto next = [&] { return tok = (tok * 7 + 5) % n_vocab; };
  for (int i = 0; i < 9; ++i) out[0].add(next(), i, 0, true);
  for (int i = 0; i < 4; ++i) out[0].add(next(), i, 1, i == 3);
  out[1].add(next(), 9, 0, true);
  for (int i = 4; i < 10; ++i) out[1].add(next(), i, 1, true);
  for (int s = 2; s < 5; ++s) {
    out[static_cast<std::size_t>(s)].add(next(), 8 + s, 0, true);
    out[static_cast<std::size_t>(s)].add(next(), 8 + s, 1, true);
  }
  return out;
}

// The logits of every step, one after another.
std::vector<float> run(Model& m, const std::vector<Batch>& batches) {
  KvCache cache(16);
  Result<KvStorage> kv = m.alloc_kv(16);
  EXPECT_TRUE(kv.is_ok());
  EXPECT_TRUE(cache.add_sequence(0).is_ok());
  EXPECT_TRUE(cache.add_sequence(1).is_ok());
  std::vector<float> all, logits;
  for (const Batch& b : batches) {
    Status s = m.forward(b, cache, *kv, &logits);
    EXPECT_TRUE(s.is_ok()) << s.to_string();
    all.insert(all.end(), logits.begin(), logits.end());
  }
  return all;
}

using testing::rel_l2_error;

class TensorParallelTest : public ::testing::TestWithParam<Case> {};

// Each rank's logits, the ranks run as threads (every rank is loaded before
// any runs: a rank that failed to load would leave the others waiting in
// the all-reduce).
std::vector<std::vector<float>> run_ranks(std::vector<std::unique_ptr<Model>>& ranks, const std::vector<Batch>& batches) {
  std::vector<std::vector<float>> got(ranks.size());
  std::vector<std::thread> threads;
  for (std::size_t r = 0; r < ranks.size(); ++r) threads.emplace_back([&, r] { got[r] = run(*ranks[r], batches); });
  for (std::thread& t : threads) t.join();
  return got;
}

TEST_P(TensorParallelTest, RanksComputeTheWholeModelsLogits) {
  const Case& c = GetParam();
  const testing::TestModel tm = testing::make_test_model(c.spec);
  Result<std::unique_ptr<Model>> whole = load(tm);
  ASSERT_TRUE(whole.is_ok()) << whole.status().to_string();
  std::vector<std::unique_ptr<Communicator>> comms = make_in_process_group(c.n_ranks);
  std::vector<std::unique_ptr<Model>> ranks;
  std::uint64_t split_bytes = 0;
  for (int r = 0; r < c.n_ranks; ++r) {
    Result<std::unique_ptr<Model>> m = load(tm, {r, c.n_ranks, comms[static_cast<std::size_t>(r)].get()});
    ASSERT_TRUE(m.is_ok()) << m.status().to_string();
    EXPECT_EQ((*m)->shard().n_head, c.spec.n_head / c.n_ranks);
    EXPECT_EQ((*m)->shard().n_head_kv, c.spec.n_head_kv / c.n_ranks);
    EXPECT_EQ((*m)->shard().n_ff, c.spec.n_ff / c.n_ranks);
    EXPECT_EQ((*m)->kv_bytes_per_block() * static_cast<std::uint64_t>(c.n_ranks), (*whole)->kv_bytes_per_block());
    EXPECT_LT((*m)->weight_bytes(), (*whole)->weight_bytes());
    split_bytes += (*m)->weight_bytes();
    ranks.push_back(std::move(*m));
  }
  // The split matrices are held once in all; norms, embeddings and the
  // output matrix by every rank.
  EXPECT_GT(split_bytes, (*whole)->weight_bytes());
  const std::vector<Batch> batches = steps(c.spec.n_vocab);

  // With float activations (the scalar kernels) only the order of the
  // additions differs from the whole model.
  force_scalar_kernels(true);
  const std::vector<float> want_exact = run(**whole, batches);
  std::vector<std::vector<float>> got = run_ranks(ranks, batches);
  force_scalar_kernels(false);
  for (int r = 0; r < c.n_ranks; ++r) {
    ASSERT_EQ(got[static_cast<std::size_t>(r)].size(), want_exact.size()) << "rank " << r;
    EXPECT_LT(rel_l2_error(got[static_cast<std::size_t>(r)], want_exact), 1e-5) << c.name << " rank " << r << " scalar";
    EXPECT_EQ(got[static_cast<std::size_t>(r)], got[0]) << c.name << ": rank " << r << " differs from rank 0";
  }
  // The vector kernels round the activations of quantised matrices to 8
  // bits: a number that the different order of additions moves across a
  // rounding step moves by a whole step, so quantised weights agree to the
  // 8-bit path's own error (ReferenceTest allows 3e-2 against the exact
  // reference); float weights stay at 1e-5.
  const bool quantised = traits(c.spec.weight_type).block_elems > 1;
  const std::vector<float> want = run(**whole, batches);
  got = run_ranks(ranks, batches);
  for (int r = 0; r < c.n_ranks; ++r) {
    EXPECT_LT(rel_l2_error(got[static_cast<std::size_t>(r)], want), quantised ? 2e-2 : 1e-5) << c.name << " rank " << r;
    EXPECT_EQ(got[static_cast<std::size_t>(r)], got[0]) << c.name << ": rank " << r << " differs from rank 0";
  }
}

INSTANTIATE_TEST_SUITE_P(
    Splits, TensorParallelTest,
    ::testing::Values(
        Case{"llama_gqa_f32_2_ranks", shape("llama", 64, 8, 4, 128, GgmlType::kF32), 2},
        Case{"llama_gqa_f32_4_ranks", shape("llama", 64, 8, 4, 128, GgmlType::kF32), 4},
        Case{"llama_mha_tied_f32_4_ranks", shape("llama", 64, 4, 4, 96, GgmlType::kF32, 0, true), 4},
        Case{"qwen2_bias_f32_2_ranks", shape("qwen2", 64, 4, 2, 96, GgmlType::kF32), 2},
        // q/k/v and gate/up biases split, attn_output/ffn_down ones added once
        Case{"llama_all_biases_f32_4_ranks", with_biases(shape("llama", 64, 8, 4, 128, GgmlType::kF32)), 4},
        Case{"qwen3_qknorm_f16_2_ranks", shape("qwen3", 64, 4, 2, 96, GgmlType::kF16, 32), 2},
        // fused q/k/v and gate/up: each rank's rows of each part
        Case{"phi3_fused_f32_2_ranks", shape("phi3", 64, 8, 4, 128, GgmlType::kF32), 2},
        Case{"gemma3_q8_0_2_ranks", gemma3_shape(), 2},
        Case{"llama_q8_0_2_ranks", shape("llama", 128, 4, 2, 128, GgmlType::kQ8_0), 2},
        Case{"qwen2_q4_k_2_ranks", shape("qwen2", 512, 4, 2, 512, GgmlType::kQ4_K, 128), 2},
        Case{"qwen3_q6_k_2_ranks", shape("qwen3", 512, 4, 2, 512, GgmlType::kQ6_K, 128), 2}),
    [](const ::testing::TestParamInfo<Case>& p) { return std::string(p.param.name); });

TEST(TensorParallelRefusals, SplitsThatCannotBeMadeAreNamed) {
  auto comms = make_in_process_group(4);
  // 2 key/value heads among 4 ranks.
  const testing::TestModel gqa = testing::make_test_model(shape("llama", 64, 4, 2, 96, GgmlType::kF32));
  Result<std::unique_ptr<Model>> m = load(gqa, {0, 4, comms[0].get()});
  ASSERT_FALSE(m.is_ok());
  EXPECT_EQ(m.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(m.status().message().find("do not divide among 4 ranks"), std::string::npos) << m.status().message();
  // Q4_K rows split in the middle of a 256-number block (2 heads of 64).
  auto pair = make_in_process_group(2);
  const testing::TestModel q4k = testing::make_test_model(shape("llama", 256, 4, 2, 512, GgmlType::kQ4_K));
  m = load(q4k, {1, 2, pair[1].get()});
  ASSERT_FALSE(m.is_ok());
  EXPECT_EQ(m.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(m.status().message().find("cannot be split at column 128"), std::string::npos) << m.status().message();
  // A rank outside the group, a missing or mismatched communicator.
  EXPECT_FALSE(load(gqa, {2, 2, pair[0].get()}).is_ok());
  EXPECT_FALSE(load(gqa, {0, 2, nullptr}).is_ok());
  EXPECT_FALSE(load(gqa, {0, 2, pair[1].get()}).is_ok());
  EXPECT_FALSE(load(gqa, {0, 2, comms[0].get()}).is_ok());
  EXPECT_FALSE(load(gqa, {0, 0, nullptr}).is_ok());
}

// The all-reduce itself: every rank ends with the element-wise sum, the same
// bits on every rank, over repeated calls of different lengths.
TEST(InProcessGroup, AllReduceSumsEveryRanksNumbers) {
  for (int n_ranks : {1, 2, 3, 5}) {
    auto comms = make_in_process_group(n_ranks);
    std::vector<std::vector<float>> data(static_cast<std::size_t>(n_ranks));
    std::vector<std::thread> threads;
    for (int r = 0; r < n_ranks; ++r)
      threads.emplace_back([&, r] {
        Communicator& c = *comms[static_cast<std::size_t>(r)];
        EXPECT_EQ(c.rank(), r);
        EXPECT_EQ(c.n_ranks(), n_ranks);
        std::vector<float>& out = data[static_cast<std::size_t>(r)];
        for (int n : {1, 7, 1000, 3}) {
          std::vector<float> x(static_cast<std::size_t>(n));
          for (int i = 0; i < n; ++i) x[static_cast<std::size_t>(i)] = 0.1f * static_cast<float>(i) + static_cast<float>(r) * 1e-3f;
          EXPECT_TRUE(c.all_reduce_sum(x.data(), n).is_ok());
          out.insert(out.end(), x.begin(), x.end());
        }
      });
    for (std::thread& t : threads) t.join();
    std::size_t at = 0;
    for (int n : {1, 7, 1000, 3})
      for (int i = 0; i < n; ++i, ++at) {
        double want = 0;
        for (int r = 0; r < n_ranks; ++r) want += 0.1f * static_cast<float>(i) + static_cast<float>(r) * 1e-3f;
        EXPECT_NEAR(data[0][at], want, 1e-4 * (1 + std::fabs(want)));
        for (int r = 1; r < n_ranks; ++r) ASSERT_EQ(data[static_cast<std::size_t>(r)][at], data[0][at]);
      }
  }
}

// An abort wakes the ranks already waiting in a collective and fails every
// later call, with the first abort's reason.
TEST(InProcessGroup, AbortFailsPendingAndLaterCalls) {
  auto comms = make_in_process_group(3);
  std::vector<Status> got(2);
  std::vector<std::thread> waiting;
  for (int r = 0; r < 2; ++r)
    waiting.emplace_back([&, r] {
      std::vector<float> x(16, 1.0f);
      got[static_cast<std::size_t>(r)] = comms[static_cast<std::size_t>(r)]->all_reduce_sum(x.data(), 16);
    });
  // Rank 2 never arrives; it aborts instead (after the others are likely
  // waiting; the outcome is the same if they arrive later).
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  comms[2]->abort(resource_exhausted("rank 2: out of device memory"));
  comms[1]->abort(internal_error("a second abort"));
  for (std::thread& t : waiting) t.join();
  for (const Status& s : got) {
    EXPECT_EQ(s.code(), StatusCode::kResourceExhausted);
    EXPECT_EQ(s.message(), "rank 2: out of device memory");
  }
  float one = 1.0f;
  EXPECT_EQ(comms[0]->all_reduce_sum(&one, 1).code(), StatusCode::kResourceExhausted);
  // A group of one has nobody to wait for, but an abort still fails it.
  auto solo = make_in_process_group(1);
  EXPECT_TRUE(solo[0]->all_reduce_sum(&one, 1).is_ok());
  solo[0]->abort(internal_error("stop"));
  EXPECT_FALSE(solo[0]->all_reduce_sum(&one, 1).is_ok());
}

// A CPU backend whose allocations fail once `fail` is set: a rank that runs
// out of device memory in the middle of a group's pass.
class FailingAllocBackend final : public testing::ForwardingBackend {
 public:
  explicit FailingAllocBackend(std::atomic<bool>* fail)
      : ForwardingBackend(make_cpu_backend(std::make_shared<ThreadPool>(1))), fail_(fail) {}
  Result<std::shared_ptr<float>> alloc(std::int64_t n) override {
    if (fail_->load()) return resource_exhausted("test: no memory on this rank");
    return ForwardingBackend::alloc(n);
  }

 private:
  std::atomic<bool>* fail_;
};

// One rank failing alone (out of memory for a bigger batch's buffers) fails
// the other rank's pass instead of leaving it waiting in the all-reduce, and
// both ranks refuse later passes; a full KV cache, which every rank sees
// alike, fails the pass but leaves the group usable.
TEST(TensorParallelFailure, OneRanksFailureAbortsTheGroup) {
  const testing::TestModel tm = testing::make_test_model(shape("llama", 64, 8, 4, 128, GgmlType::kF32));
  auto comms = make_in_process_group(2);
  std::atomic<bool> fail{false};
  std::vector<std::unique_ptr<Model>> ranks;
  for (int r = 0; r < 2; ++r) {
    Result<std::unique_ptr<GgufFile>> file =
        GgufFile::parse({reinterpret_cast<const std::uint8_t*>(tm.gguf.data()), tm.gguf.size()});
    ASSERT_TRUE(file.is_ok());
    std::shared_ptr<Backend> be = r == 1 ? std::shared_ptr<Backend>(std::make_shared<FailingAllocBackend>(&fail))
                                         : std::shared_ptr<Backend>(make_cpu_backend(std::make_shared<ThreadPool>(1)));
    Result<std::unique_ptr<Model>> m = Model::from_gguf(std::move(*file), be, {r, 2, comms[static_cast<std::size_t>(r)].get()});
    ASSERT_TRUE(m.is_ok()) << m.status().to_string();
    ranks.push_back(std::move(*m));
  }
  struct RankState {
    KvCache cache{3};  // 48 positions
    KvStorage kv;
    std::vector<float> logits;
  };
  std::vector<RankState> st(2);
  for (int r = 0; r < 2; ++r) {
    Result<KvStorage> kv = ranks[static_cast<std::size_t>(r)]->alloc_kv(3);
    ASSERT_TRUE(kv.is_ok());
    st[static_cast<std::size_t>(r)].kv = *kv;
    ASSERT_TRUE(st[static_cast<std::size_t>(r)].cache.add_sequence(0).is_ok());
  }
  auto run_both = [&](const Batch& b) {
    std::vector<Status> out(2);
    std::vector<std::thread> threads;
    for (std::size_t r = 0; r < 2; ++r)
      threads.emplace_back([&, r] { out[r] = ranks[r]->forward(b, st[r].cache, st[r].kv, &st[r].logits); });
    for (std::thread& t : threads) t.join();
    return out;
  };
  Batch first;
  for (int i = 0; i < 4; ++i) first.add(i + 1, i, 0, i == 3);
  for (const Status& s : run_both(first)) ASSERT_TRUE(s.is_ok()) << s.to_string();

  Batch too_long;  // 4 + 45 positions need 4 blocks of the 3
  for (int i = 4; i < 49; ++i) too_long.add(i % 50 + 1, i, 0, i == 48);
  for (const Status& s : run_both(too_long)) EXPECT_EQ(s.code(), StatusCode::kResourceExhausted) << s.to_string();

  Batch bigger;  // 8 tokens: buffers grow, and rank 1 cannot allocate
  for (int i = 4; i < 12; ++i) bigger.add(i + 1, i, 0, i == 11);
  fail = true;
  std::vector<Status> got = run_both(bigger);
  EXPECT_EQ(got[1].message(), "test: no memory on this rank");
  EXPECT_EQ(got[0].code(), StatusCode::kResourceExhausted) << got[0].to_string();
  EXPECT_EQ(got[0].message(), "test: no memory on this rank");  // the abort's reason, not a hang
  fail = false;
  Batch next;
  next.add(1, 4, 0, true);
  for (const Status& s : run_both(next)) {
    EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.to_string();
    EXPECT_NE(s.message().find("load the model again"), std::string::npos) << s.message();
  }
}

// Every step of steps(), then a fork's first token (which copies the
// shared block on every rank), through `group` (its KV storage allocated,
// 16 blocks) give the whole model's logits.
void expect_whole_model_logits(Decoder& group, Model& whole, int n_vocab, const std::string& what) {
  KvCache group_cache(16), whole_cache(16);
  Result<KvStorage> whole_kv = whole.alloc_kv(16);
  ASSERT_TRUE(whole_kv.is_ok());
  for (KvCache* c : {&group_cache, &whole_cache}) {
    ASSERT_TRUE(c->add_sequence(0).is_ok());
    ASSERT_TRUE(c->add_sequence(1).is_ok());
  }
  force_scalar_kernels(true);
  std::vector<float> got, want;
  for (const Batch& b : steps(n_vocab)) {
    ASSERT_TRUE(group.forward(b, group_cache, &got).is_ok());
    ASSERT_TRUE(whole.forward(b, whole_cache, *whole_kv, &want).is_ok());
    ASSERT_EQ(got.size(), want.size());
    EXPECT_LT(rel_l2_error(got, want), 1e-5) << what;
  }
  for (KvCache* c : {&group_cache, &whole_cache}) ASSERT_TRUE(c->fork(0, 2).is_ok());
  Batch fork;
  fork.add(5, group_cache.length(2), 2, true);
  ASSERT_TRUE(group.forward(fork, group_cache, &got).is_ok());
  ASSERT_TRUE(whole.forward(fork, whole_cache, *whole_kv, &want).is_ok());
  EXPECT_LT(rel_l2_error(got, want), 1e-5) << what << ", forked";
  force_scalar_kernels(false);
}

// A group of n ranks of `tm`, rank `odd_rank` (if any) on `odd_backend`.
Result<std::unique_ptr<TensorParallelDecoder>> make_group(const testing::TestModel& tm, int n, int odd_rank = -1,
                                                          std::shared_ptr<Backend> odd_backend = nullptr) {
  auto comms = make_in_process_group(n);
  std::vector<std::shared_ptr<Model>> ranks;
  for (int r = 0; r < n; ++r) {
    AIRLOCK_ASSIGN_OR_RETURN(auto file,
                             GgufFile::parse({reinterpret_cast<const std::uint8_t*>(tm.gguf.data()), tm.gguf.size()}));
    std::shared_ptr<Backend> be = r == odd_rank ? odd_backend
                                                : std::shared_ptr<Backend>(make_cpu_backend(std::make_shared<ThreadPool>(1)));
    AIRLOCK_ASSIGN_OR_RETURN(auto m, Model::from_gguf(std::move(file), be, {r, n, comms[static_cast<std::size_t>(r)].get()}));
    ranks.push_back(std::move(m));
  }
  return TensorParallelDecoder::create(std::move(ranks), std::move(comms));
}

// The ranks as threads behind one Decoder, sharing one KV cache: every
// step's logits are the whole model's (prompt chunks, decode steps, a
// forked sequence), and a scheduler over the group generates the same
// greedy tokens as one over the whole model.
TEST(TensorParallelDecoderTest, SharedCacheLogitsAndSchedulingMatchTheWholeModel) {
  const testing::TestModel tm = testing::make_test_model(shape("llama", 64, 8, 4, 128, GgmlType::kF32));
  Result<std::unique_ptr<Model>> whole = load(tm);
  ASSERT_TRUE(whole.is_ok());
  for (int n_ranks : {2, 4}) {
    Result<std::unique_ptr<TensorParallelDecoder>> group = make_group(tm, n_ranks);
    ASSERT_TRUE(group.is_ok()) << group.status().to_string();
    EXPECT_EQ((*group)->n_ranks(), n_ranks);
    EXPECT_EQ((*group)->rank(1).shard().n_head, 8 / n_ranks);
    ASSERT_TRUE((*group)->alloc_kv(16, KvType::kF32).is_ok());
    expect_whole_model_logits(**group, **whole, tm.spec.n_vocab, std::to_string(n_ranks) + " ranks");
  }

  // Scheduling: three greedy requests of different lengths, at once.
  Result<std::unique_ptr<TensorParallelDecoder>> group = make_group(tm, 2);
  ASSERT_TRUE(group.is_ok());
  SchedulerOptions o;
  o.kv_blocks = 32;
  o.prefill_chunk = 7;
  force_scalar_kernels(true);
  auto on_group = Scheduler::start(std::unique_ptr<Decoder>(std::move(*group)), o);
  auto on_whole = Scheduler::start(**whole, o);
  ASSERT_TRUE(on_group.is_ok() && on_whole.is_ok());
  std::vector<std::vector<std::int32_t>> tokens[2];
  for (int which = 0; which < 2; ++which) {
    Scheduler& s = which == 0 ? **on_group : **on_whole;
    std::vector<std::shared_ptr<TokenStream>> streams;
    for (int i = 0; i < 3; ++i) {
      GenerationRequest r;
      for (int t = 0; t < 5 + 6 * i; ++t) r.prompt.push_back((t * 13 + i) % tm.spec.n_vocab);
      r.max_tokens = 10;
      r.sampling.temperature = 0;
      auto st = s.submit(r);
      ASSERT_TRUE(st.is_ok());
      streams.push_back(*st);
    }
    for (auto& st : streams) {
      std::vector<std::int32_t> out;
      bool done = false;
      while (!done)
        for (TokenEvent& e : st->pop(std::chrono::milliseconds(2000))) {
          if (e.token) out.push_back(e.token->token);
          ASSERT_NE(e.finish, FinishReason::kError) << e.error.to_string();
          done = done || e.finish != FinishReason::kNone;
        }
      tokens[which].push_back(out);
    }
  }
  force_scalar_kernels(false);
  EXPECT_EQ(tokens[0], tokens[1]);
  EXPECT_EQ(tokens[0][0].size(), 10u);
}

// A CPU backend that can fail its buffers (before any collective) or its
// pass (as a device fault reported at the end of the pass).
class FaultyBackend final : public testing::ForwardingBackend {
 public:
  FaultyBackend() : ForwardingBackend(make_cpu_backend(std::make_shared<ThreadPool>(1))) {}
  Result<std::shared_ptr<float>> alloc(std::int64_t n) override {
    if (fail_alloc) return resource_exhausted("test: rank 1 has no memory");
    return ForwardingBackend::alloc(n);
  }
  Status take_error() override {
    if (fail_pass) return internal_error("test: rank 1's device faulted");
    return ForwardingBackend::take_error();
  }
  std::atomic<bool> fail_alloc{false}, fail_pass{false};
};

// Failures: a rank that cannot grow its buffers fails the pass before any
// collective and the group goes on; a rank whose pass fails aborts the
// group: that pass and every later one fail (kUnavailable), nothing hangs.
TEST(TensorParallelDecoderTest, FailuresOfOneRank) {
  const testing::TestModel tm = testing::make_test_model(shape("llama", 64, 8, 4, 128, GgmlType::kF32));
  auto faulty = std::make_shared<FaultyBackend>();
  Result<std::unique_ptr<TensorParallelDecoder>> group = make_group(tm, 2, 1, faulty);
  ASSERT_TRUE(group.is_ok()) << group.status().to_string();
  ASSERT_TRUE((*group)->alloc_kv(8, KvType::kF16).is_ok());
  KvCache cache(8);
  ASSERT_TRUE(cache.add_sequence(0).is_ok());
  std::vector<float> logits;
  Batch one;
  one.add(3, 0, 0, true);
  ASSERT_TRUE((*group)->forward(one, cache, &logits).is_ok());

  Batch bigger;  // needs bigger buffers
  for (int i = 1; i < 6; ++i) bigger.add(i, i, 0, i == 5);
  faulty->fail_alloc = true;
  Status s = (*group)->forward(bigger, cache, &logits);
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted) << s.to_string();
  EXPECT_EQ(cache.length(0), 1);  // the cache is untouched
  faulty->fail_alloc = false;
  ASSERT_TRUE((*group)->forward(bigger, cache, &logits).is_ok());  // still usable
  EXPECT_EQ(cache.length(0), 6);

  faulty->fail_pass = true;
  Batch next;
  next.add(7, 6, 0, true);
  s = (*group)->forward(next, cache, &logits);
  EXPECT_EQ(s.code(), StatusCode::kInternal) << s.to_string();
  EXPECT_EQ(s.message(), "test: rank 1's device faulted");
  faulty->fail_pass = false;
  Batch after;
  after.add(7, 7, 0, true);
  s = (*group)->forward(after, cache, &logits);
  EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.to_string();
}

// Models for ranks [lo, hi) of a group of comms.size(), with their
// communicators (moved out of comms).
struct Ranks {
  std::vector<std::shared_ptr<Model>> models;
  std::vector<std::unique_ptr<Communicator>> comms;
};
Ranks take_ranks(const testing::TestModel& tm, std::vector<std::unique_ptr<Communicator>>& comms, int lo, int hi,
                 int odd_rank = -1, std::shared_ptr<Backend> odd_backend = nullptr) {
  Ranks out;
  const int n = static_cast<int>(comms.size());
  for (int r = lo; r < hi; ++r) {
    auto file = GgufFile::parse({reinterpret_cast<const std::uint8_t*>(tm.gguf.data()), tm.gguf.size()});
    EXPECT_TRUE(file.is_ok());
    std::shared_ptr<Backend> be = r == odd_rank ? odd_backend
                                                : std::shared_ptr<Backend>(make_cpu_backend(std::make_shared<ThreadPool>(1)));
    auto m = Model::from_gguf(std::move(*file), be, {r, n, comms[static_cast<std::size_t>(r)].get()});
    EXPECT_TRUE(m.is_ok()) << m.status().to_string();
    out.models.push_back(std::move(*m));
    out.comms.push_back(std::move(comms[static_cast<std::size_t>(r)]));
  }
  return out;
}

// A follower's run() on its own thread; a test that ends early (a failed
// ASSERT) aborts the group rather than leave the thread waiting.
class FollowerThread {
 public:
  explicit FollowerThread(TensorParallelFollower& f) : f_(f), t_([this] { result_ = f_.run(); }) {}
  ~FollowerThread() {
    if (!t_.joinable()) return;
    f_.abort(internal_error("the test ended early"));
    t_.join();
  }
  Status join() {
    t_.join();
    return result_;
  }

 private:
  TensorParallelFollower& f_;
  Status result_ = internal_error("not run");
  std::thread t_;
};

// A group spread over "processes": a decoder over ranks 0-1 and a follower
// over ranks 2-3 (threads here, machines with NCCL), the follower running
// what the decoder's pass messages describe. Logits are the whole model's
// (prompt chunks, decode steps, a fork's copy-on-write); destroying the
// decoder stops the follower cleanly.
TEST(TensorParallelSpreadGroup, AFollowerRunsTheDecodersPasses) {
  const testing::TestModel tm = testing::make_test_model(shape("llama", 64, 8, 4, 128, GgmlType::kF32));
  Result<std::unique_ptr<Model>> whole = load(tm);
  ASSERT_TRUE(whole.is_ok());
  auto comms = make_in_process_group(4);
  Ranks lead = take_ranks(tm, comms, 0, 2), rest = take_ranks(tm, comms, 2, 4);
  auto follower = TensorParallelFollower::create(std::move(rest.models), std::move(rest.comms));
  ASSERT_TRUE(follower.is_ok()) << follower.status().to_string();
  FollowerThread follower_thread(**follower);
  {
    auto group = TensorParallelDecoder::create(std::move(lead.models), std::move(lead.comms));
    ASSERT_TRUE(group.is_ok()) << group.status().to_string();
    EXPECT_EQ((*group)->n_ranks(), 4);
    EXPECT_EQ((*group)->n_local_ranks(), 2);
    ASSERT_TRUE((*group)->alloc_kv(16, KvType::kF32).is_ok());
    expect_whole_model_logits(**group, **whole, tm.spec.n_vocab, "spread over two processes");
  }  // the decoder sends the stop
  const Status followed = follower_thread.join();
  EXPECT_TRUE(followed.is_ok()) << followed.to_string();
}

// A rank that fails in one process fails the pass in the other: a fault on
// either side ends the follower's run and fails the decoder's pass, both
// with the fault's reason, and the decoder's next pass is refused.
TEST(TensorParallelSpreadGroup, AFailureOnEitherSideEndsBoth) {
  const testing::TestModel tm = testing::make_test_model(shape("llama", 64, 8, 4, 128, GgmlType::kF32));
  for (int faulty_rank : {0, 1}) {
    SCOPED_TRACE(faulty_rank == 0 ? "the decoder's rank faults" : "the follower's rank faults");
    auto faulty = std::make_shared<FaultyBackend>();
    auto comms = make_in_process_group(2);
    Ranks lead = take_ranks(tm, comms, 0, 1, faulty_rank, faulty), rest = take_ranks(tm, comms, 1, 2, faulty_rank, faulty);
    auto follower = TensorParallelFollower::create(std::move(rest.models), std::move(rest.comms));
    ASSERT_TRUE(follower.is_ok()) << follower.status().to_string();
    FollowerThread follower_thread(**follower);
    {
      auto group = TensorParallelDecoder::create(std::move(lead.models), std::move(lead.comms));
      ASSERT_TRUE(group.is_ok()) << group.status().to_string();
      ASSERT_TRUE((*group)->alloc_kv(8, KvType::kF16).is_ok());
      KvCache cache(8);
      ASSERT_TRUE(cache.add_sequence(0).is_ok());
      std::vector<float> logits;
      Batch one;
      one.add(3, 0, 0, true);
      ASSERT_TRUE((*group)->forward(one, cache, &logits).is_ok());
      faulty->fail_pass = true;
      Batch next;
      next.add(4, 1, 0, true);
      Status s = (*group)->forward(next, cache, &logits);
      EXPECT_EQ(s.message(), "test: rank 1's device faulted") << s.to_string();
      Batch after;
      after.add(5, 2, 0, true);
      EXPECT_EQ((*group)->forward(after, cache, &logits).code(), StatusCode::kUnavailable);
    }
    const Status followed = follower_thread.join();
    EXPECT_EQ(followed.message(), "test: rank 1's device faulted") << followed.to_string();
  }
}

TEST(TensorParallelSpreadGroup, EachSideHoldsItsOwnRanks) {
  const testing::TestModel tm = testing::make_test_model(shape("llama", 64, 8, 4, 128, GgmlType::kF32));
  {
    auto comms = make_in_process_group(2);
    Ranks lead = take_ranks(tm, comms, 0, 1);
    auto f = TensorParallelFollower::create(std::move(lead.models), std::move(lead.comms));
    ASSERT_FALSE(f.is_ok());
    EXPECT_NE(f.status().message().find("rank 0 belongs to the decoder"), std::string::npos) << f.status().message();
  }
  {
    auto comms = make_in_process_group(2);
    Ranks rest = take_ranks(tm, comms, 1, 2);
    auto d = TensorParallelDecoder::create(std::move(rest.models), std::move(rest.comms));
    ASSERT_FALSE(d.is_ok());
    EXPECT_NE(d.status().message().find("is not rank 0"), std::string::npos) << d.status().message();
  }
}

// The spread group's root is a literal address with a port: a name would
// be resolved, which the product never does.
TEST(TensorParallelSpreadGroup, TheRootIsALiteralAddress) {
  for (const char* ok : {"10.0.0.1:29500", "127.0.0.1:1", "[fd00::1]:29500", "[::1]:65535"})
    EXPECT_TRUE(check_group_root(ok).is_ok()) << ok;
  for (const char* bad : {"", "gpu-node-0:29500", "10.0.0.1", "10.0.0.1:0", "10.0.0.1:70000", "10.0.0.1:29a",
                          "[fd00::1]29500", "[::1]:", "fd00::1:29500", "[10.0.0.1]:29500", "10.0.0.256:1"}) {
    Status s = check_group_root(bad);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << bad;
  }
}

TEST(TensorParallelDecoderTest, CreateRefusesWhatIsNotOneGroup) {
  const testing::TestModel tm = testing::make_test_model(shape("llama", 64, 8, 4, 128, GgmlType::kF32));
  EXPECT_FALSE(TensorParallelDecoder::create({}, {}).is_ok());
  // Ranks in the wrong order.
  auto comms = make_in_process_group(2);
  std::vector<std::shared_ptr<Model>> ranks;
  for (int r : {1, 0}) {
    Result<std::unique_ptr<Model>> m = load(tm, {r, 2, comms[static_cast<std::size_t>(r)].get()});
    ASSERT_TRUE(m.is_ok());
    ranks.push_back(std::move(*m));
  }
  Result<std::unique_ptr<TensorParallelDecoder>> g = TensorParallelDecoder::create(std::move(ranks), std::move(comms));
  ASSERT_FALSE(g.is_ok());
  EXPECT_NE(g.status().message().find("is not rank 0"), std::string::npos) << g.status().message();
}

}  // namespace
}  // namespace airlock::engine
