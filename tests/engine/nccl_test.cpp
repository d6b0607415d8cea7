// NCCL tensor parallelism on GPUs (issue 7): the communicator on every
// visible device (one device is a group of one: the reduction is a copy),
// and a model split over two GPUs against the CPU. Skips without a GPU, or
// with fewer GPUs than a case needs, saying so.
#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include <unistd.h>

#include <cmath>
#include <string>
#include <thread>

#include "airlock/engine/decoder.h"
#include "airlock/engine/kernels.h"
#include "airlock/engine/thread_pool.h"
#include "cuda_backend.h"
#include "cuda_ops.h"
#include "gguf_writer.h"
#include "nccl_communicator.h"

namespace airlock::engine {
namespace {

// A 20-token prompt and two decode steps through `group` (its KV storage
// allocated, 8 blocks) give the logits of the whole model `tm` on the CPU.
void expect_cpu_logits(Decoder& group, const testing::TestModel& tm) {
  auto f = GgufFile::parse({reinterpret_cast<const std::uint8_t*>(tm.gguf.data()), tm.gguf.size()});
  ASSERT_TRUE(f.is_ok());
  auto whole = Model::from_gguf(std::move(*f), make_cpu_backend(std::make_shared<ThreadPool>(2)));
  ASSERT_TRUE(whole.is_ok());
  Result<KvStorage> kv = (*whole)->alloc_kv(8);
  ASSERT_TRUE(kv.is_ok());
  KvCache gc(8), wc(8);
  ASSERT_TRUE(gc.add_sequence(0).is_ok() && wc.add_sequence(0).is_ok());
  force_scalar_kernels(true);
  std::vector<float> got, want;
  for (int step = 0; step < 3; ++step) {
    Batch b;
    const int start = gc.length(0), len = step == 0 ? 20 : 1;
    for (int i = 0; i < len; ++i) b.add((start + i) * 7 % tm.spec.n_vocab, start + i, 0, i == len - 1);
    ASSERT_TRUE(group.forward(b, gc, &got).is_ok());
    ASSERT_TRUE((*whole)->forward(b, wc, *kv, &want).is_ok());
    ASSERT_EQ(got.size(), want.size());
    EXPECT_LT(testing::rel_l2_error(got, want), 1e-4) << "step " << step;
  }
  force_scalar_kernels(false);
}

TEST(NcclGroup, AllReduceOnEveryVisibleDeviceThenAbort) {
  const int n = std::min(cuda::device_count(), 4);
  if (n == 0) GTEST_SKIP() << "no CUDA device (or no driver): the GPU tests need one";
  std::vector<int> devices;
  for (int i = 0; i < n; ++i) devices.push_back(i);
  Result<std::vector<std::unique_ptr<Communicator>>> comms = make_nccl_group(devices);
  ASSERT_TRUE(comms.is_ok()) << comms.status().to_string();
  constexpr int kN = 1000;
  std::vector<std::vector<float>> got(static_cast<std::size_t>(n));
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r)
    threads.emplace_back([&, r] {
      ASSERT_EQ(cudaSetDevice(r), cudaSuccess);
      std::vector<float> x(kN);
      for (int i = 0; i < kN; ++i) x[static_cast<std::size_t>(i)] = static_cast<float>(r + 1) + 0.5f * static_cast<float>(i);
      Result<cuda::DeviceBuffer> b = cuda::DeviceBuffer::alloc(kN * sizeof(float));
      ASSERT_TRUE(b.is_ok());
      ASSERT_TRUE(cuda::to_device(b->get(), x.data(), kN * sizeof(float)).is_ok());
      ASSERT_TRUE((*comms)[static_cast<std::size_t>(r)]->all_reduce_sum(b->as<float>(), kN).is_ok());
      ASSERT_TRUE(cuda::synchronize().is_ok());
      got[static_cast<std::size_t>(r)].resize(kN);
      ASSERT_TRUE(cuda::to_host(got[static_cast<std::size_t>(r)].data(), b->get(), kN * sizeof(float)).is_ok());
    });
  for (std::thread& t : threads) t.join();
  for (int r = 0; r < n; ++r)
    for (int i = 0; i < kN; ++i) {
      float want = 0;
      for (int k = 0; k < n; ++k) want += static_cast<float>(k + 1) + 0.5f * static_cast<float>(i);
      ASSERT_EQ(got[static_cast<std::size_t>(r)][static_cast<std::size_t>(i)], want) << "rank " << r << " at " << i;
    }
  (*comms)[0]->abort(internal_error("test abort"));
  float dummy = 0;
  EXPECT_EQ((*comms)[static_cast<std::size_t>(n - 1)]->all_reduce_sum(&dummy, 1).message(), "test abort");
}

// A model split over two GPUs (NCCL between them), the ranks behind one
// decoder sharing one KV cache, against the whole model on the CPU.
TEST(NcclTensorParallel, TwoGpuRanksMatchTheCpu) {
  if (cuda::device_count() < 2)
    GTEST_SKIP() << cuda::device_count() << " CUDA device(s): tensor parallelism across GPUs needs two";
  const testing::TestModel tm =
      testing::make_test_model(testing::decoder_spec("llama", 128, 8, 4, 256, false, GgmlType::kF16));
  auto parse = [&] { return GgufFile::parse({reinterpret_cast<const std::uint8_t*>(tm.gguf.data()), tm.gguf.size()}); };
  Result<std::vector<std::unique_ptr<Communicator>>> comms = make_nccl_group({0, 1});
  ASSERT_TRUE(comms.is_ok()) << comms.status().to_string();
  std::vector<std::shared_ptr<Model>> ranks;
  for (int r = 0; r < 2; ++r) {
    CudaOptions o;
    o.gemm_min_tokens = 1 << 30;  // the f32 kernels: comparable with the CPU at 1e-4
    Result<std::unique_ptr<Backend>> be = make_cuda_backend(r, o);
    ASSERT_TRUE(be.is_ok()) << be.status().to_string();
    auto f = parse();
    ASSERT_TRUE(f.is_ok());
    auto m = Model::from_gguf(std::move(*f), std::shared_ptr<Backend>(std::move(*be)),
                              {r, 2, (*comms)[static_cast<std::size_t>(r)].get()});
    ASSERT_TRUE(m.is_ok()) << m.status().to_string();
    ranks.push_back(std::move(*m));
  }
  auto group = TensorParallelDecoder::create(ranks, std::move(*comms));
  ASSERT_TRUE(group.is_ok()) << group.status().to_string();
  ASSERT_TRUE((*group)->alloc_kv(8, KvType::kF32).is_ok());
  expect_cpu_logits(**group, tm);
}

// A spread group's root must be a literal address (check_group_root is
// tested with the engine), and its ranks must fit the group.
TEST(NcclSpreadGroup, RefusesANameOrRanksOutsideTheGroup) {
  EXPECT_EQ(make_nccl_spread_group({0}, 0, 2, "node0:29500").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(make_nccl_spread_group({0, 1}, 1, 2, "127.0.0.1:29500").status().code(), StatusCode::kInvalidArgument);
}

// Two "machines" as two threads of this process, one GPU each, joined
// through NCCL's bootstrap on 127.0.0.1: the decoder holds rank 0, the
// follower rank 1 and runs what the decoder sends; logits against the CPU.
TEST(NcclSpreadGroup, ADecoderAndAFollowerOnTwoGpusMatchTheCpu) {
  if (cuda::device_count() < 2)
    GTEST_SKIP() << cuda::device_count() << " CUDA device(s): a spread group here needs two";
  const testing::TestModel tm =
      testing::make_test_model(testing::decoder_spec("llama", 128, 8, 4, 256, false, GgmlType::kF16));
  auto parse = [&] { return GgufFile::parse({reinterpret_cast<const std::uint8_t*>(tm.gguf.data()), tm.gguf.size()}); };
  const std::string root = "127.0.0.1:" + std::to_string(29500 + static_cast<int>(::getpid() % 1000));
  Result<std::vector<std::unique_ptr<Communicator>>> comms[2] = {internal_error("unset"), internal_error("unset")};
  // What each process's call sets, set before the two threads start.
  setenv("NCCL_COMM_ID", root.c_str(), 1);
  setenv("NCCL_RUNTIME_CONNECT", "0", 0);
  {
    std::thread t1([&] { comms[1] = make_nccl_spread_group({1}, 1, 2, root); });
    comms[0] = make_nccl_spread_group({0}, 0, 2, root);
    t1.join();
  }
  unsetenv("NCCL_COMM_ID");  // the other tests' groups are of one process
  ASSERT_TRUE(comms[0].is_ok()) << comms[0].status().to_string();
  ASSERT_TRUE(comms[1].is_ok()) << comms[1].status().to_string();
  std::vector<std::shared_ptr<Model>> ranks[2];
  for (int r = 0; r < 2; ++r) {
    CudaOptions o;
    o.gemm_min_tokens = 1 << 30;
    Result<std::unique_ptr<Backend>> be = make_cuda_backend(r, o);
    ASSERT_TRUE(be.is_ok()) << be.status().to_string();
    auto f = parse();
    ASSERT_TRUE(f.is_ok());
    auto m = Model::from_gguf(std::move(*f), std::shared_ptr<Backend>(std::move(*be)),
                              {r, 2, (*comms[r])[0].get()});
    ASSERT_TRUE(m.is_ok()) << m.status().to_string();
    ranks[r].push_back(std::move(*m));
  }
  auto follower = TensorParallelFollower::create(ranks[1], std::move(*comms[1]));
  ASSERT_TRUE(follower.is_ok()) << follower.status().to_string();
  Status followed = internal_error("not run");
  std::thread follower_thread([&] { followed = (*follower)->run(); });
  {
    auto group = TensorParallelDecoder::create(ranks[0], std::move(*comms[0]));
    ASSERT_TRUE(group.is_ok()) << group.status().to_string();
    ASSERT_TRUE((*group)->alloc_kv(8, KvType::kF32).is_ok());
    expect_cpu_logits(**group, tm);
  }
  follower_thread.join();
  EXPECT_TRUE(followed.is_ok()) << followed.to_string();
}

}  // namespace
}  // namespace airlock::engine
