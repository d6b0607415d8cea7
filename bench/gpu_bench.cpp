// GPU decode benchmark (issue 7): a generated Llama-3-8B-shaped model
// (4096 wide, 32 layers, 32 query and 8 key/value heads, 14336 feed-forward,
// 128256 tokens) in BF16 or Q8_0 on the CUDA backend. Measures, in one run:
//   - the device's copy bandwidth (cudaMemcpy device to device, bytes read
//     plus bytes written per second, best of ten);
//   - batch-1 decode tokens/s after a 2,000-token prompt, and its fraction of
//     the HBM roofline (bandwidth / weight bytes read per token, the
//     embedding table counting one row; once more counting the KV cache
//     reads of the context);
//   - aggregate decode tokens/s with 16, 64 and 128 sequences in one batch;
//   - time to first token for the 2,000-token prompt (prefill in chunks of
//     --chunk tokens, as airlockd's prefill_chunk, then the first logits).
// Every step chooses its greedy tokens on the device and downloads only
// them, as airlockd's scheduler does (Backend::sample); decode steps of up
// to --graphs tokens run as CUDA graphs (CudaOptions::graph_max_tokens; 0:
// none), and the graph counters are printed.
//
// usage: gpu_bench [--type BF16|Q8_0] [--layers L] [--prompt N] [--chunk N] [--steps N]
//                  [--batches 16,64,128] [--graphs N] [--model PATH.gguf]
// Prints a table and one `RESULT name value` line per figure (for
// bench/gpu-check.sh).
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "airlock/engine/model.h"
#include "cuda_backend.h"
#include "cuda_ops.h"
#include "gguf_writer.h"

using namespace airlock;
using namespace airlock::engine;

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "gpu_bench: %s\n", what.c_str());
  std::exit(2);
}

void check(const Status& s, const char* what) {
  if (!s.is_ok()) fail(std::string(what) + ": " + s.to_string());
}

// Device-to-device copy bandwidth in GB/s (read + written bytes).
double copy_bandwidth_gbs() {
  const std::size_t bytes = std::size_t{1} << 30;
  void *a = nullptr, *b = nullptr;
  if (cudaMalloc(&a, bytes) != cudaSuccess || cudaMalloc(&b, bytes) != cudaSuccess) fail("cudaMalloc for bandwidth");
  cudaMemset(a, 1, bytes);
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  float best_ms = 1e30f;
  for (int i = 0; i < 10; ++i) {
    cudaEventRecord(e0);
    cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    float ms = 0;
    cudaEventElapsedTime(&ms, e0, e1);
    best_ms = std::min(best_ms, ms);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaFree(a);
  cudaFree(b);
  if (cudaGetLastError() != cudaSuccess) fail("bandwidth measurement failed");
  return 2.0 * static_cast<double>(bytes) / (best_ms * 1e-3) / 1e9;
}

constexpr int kWarmSeq = 1 << 20;  // a sequence id no measured batch uses

// Runs `b`, leaving in `tokens` the greedy token of each row that wants
// logits, chosen on the device.
void forward_greedy(Model& m, const Batch& b, KvCache& cache, const KvStorage& kv, std::vector<SampledToken>* tokens,
                    const char* what) {
  std::size_t rows = 0;
  for (char w : b.want_logits) rows += w != 0;
  std::vector<SampleRow> greedy(rows);
  for (SampleRow& r : greedy) r.params.temperature = 0;
  PassOutput out;
  out.rows = greedy;
  out.tokens = tokens;
  check(m.forward(b, cache, kv, out), what);
}

struct Options {
  std::string type = "BF16";
  int layers = 32;
  int prompt = 2000;
  int chunk = 512;
  int steps = 32;
  std::vector<int> batches = {16, 64, 128};
  int graphs = 32;
  std::string model;  // a real GGUF instead of the generated one
};

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) fail(a + " needs a value");
      return argv[++i];
    };
    if (a == "--type") o.type = next();
    else if (a == "--layers") o.layers = std::atoi(next().c_str());
    else if (a == "--prompt") o.prompt = std::atoi(next().c_str());
    else if (a == "--chunk") o.chunk = std::atoi(next().c_str());
    else if (a == "--steps") o.steps = std::atoi(next().c_str());
    else if (a == "--model") o.model = next();
    else if (a == "--graphs") o.graphs = std::atoi(next().c_str());
    else if (a == "--batches") {
      o.batches.clear();
      std::stringstream ss(next());
      for (std::string part; std::getline(ss, part, ',');) o.batches.push_back(std::atoi(part.c_str()));
    } else {
      std::fprintf(stderr,
                   "usage: gpu_bench [--type BF16|Q8_0] [--layers L] [--prompt N] [--chunk N] [--steps N] "
                   "[--batches 16,64,128] [--graphs N] [--model PATH.gguf]\n");
      return 2;
    }
  }
  if (o.layers < 1 || o.prompt < 1 || o.chunk < 1 || o.steps < 1) fail("sizes must be positive");
  if (cuda::device_count() == 0) fail("no CUDA device");
  const std::string device = cuda::describe_device(0);
  const double bw = copy_bandwidth_gbs();

  // The model: generated in memory (uniform random weights; the numbers do
  // not change the work) or read from a file.
  testing::TestModel tm;
  Result<std::unique_ptr<GgufFile>> file = invalid_argument("unset");
  std::string label;
  const double t_gen = now_s();
  if (o.model.empty()) {
    testing::TestModelSpec s;
    s.arch = "llama";
    s.n_vocab = 128256;
    s.n_embd = 4096;
    s.n_layer = o.layers;
    s.n_head = 32;
    s.n_head_kv = 8;
    s.n_ff = 14336;
    s.n_ctx = 8192;
    s.rope_base = 500000.0f;
    s.bench_weights = true;
    if (o.type == "BF16") s.weight_type = GgmlType::kBF16;
    else if (o.type == "Q8_0") s.weight_type = GgmlType::kQ8_0;
    else fail("--type must be BF16 or Q8_0");
    tm = testing::make_test_model(s);
    file = GgufFile::parse({reinterpret_cast<const std::uint8_t*>(tm.gguf.data()), tm.gguf.size()});
    label = "llama-3-8b-shaped " + o.type + " (" + std::to_string(o.layers) + " layers)";
  } else {
    file = GgufFile::open(o.model);
    label = o.model;
  }
  check(file.status(), "model file");
  const double gen_s = now_s() - t_gen;

  CudaOptions options;
  options.graph_max_tokens = std::max(0, o.graphs);
  Result<std::unique_ptr<Backend>> be = make_cuda_backend(0, options);
  check(be.status(), "CUDA backend");
  Backend& backend = **be;
  const double t_load = now_s();
  Result<std::unique_ptr<Model>> loaded = Model::from_gguf(std::move(*file), std::shared_ptr<Backend>(std::move(*be)));
  check(loaded.status(), "load");
  Model& m = **loaded;
  const double load_s = now_s() - t_load;
  const int n_vocab = m.params().n_vocab;
  const int max_batch = *std::max_element(o.batches.begin(), o.batches.end());

  // Blocks: the prompt's sequence with its decode steps, and max_batch short
  // sequences.
  const int ctx_short = 16 + o.steps + 4;
  const int n_blocks = KvCache::blocks_for(o.prompt + 4 * o.steps + 1) + max_batch * KvCache::blocks_for(ctx_short) +
                       KvCache::blocks_for(o.chunk + 2) + 4;
  KvCache cache(n_blocks);
  Result<KvStorage> kv = m.alloc_kv(n_blocks, KvType::kF16);
  check(kv.status(), "KV cache");
  std::vector<SampledToken> sampled;
  Batch b;

  // Warm-up on a scratch sequence (lazy module loading, cuBLAS set-up, the
  // first growth of every buffer), as the PyTorch side warms up too.
  check(cache.add_sequence(kWarmSeq), "sequence");
  for (int i = 0; i < std::min(o.chunk, o.prompt); ++i) b.add((i * 7919 + 13) % n_vocab, i, kWarmSeq, false);
  b.want_logits.back() = 1;
  forward_greedy(m, b, cache, *kv, &sampled, "warm-up prefill");
  for (int step = 0; step < 2; ++step) {
    b.clear();
    b.add(1, std::min(o.chunk, o.prompt) + step, kWarmSeq, true);
    forward_greedy(m, b, cache, *kv, &sampled, "warm-up decode");
  }
  cache.remove_sequence(kWarmSeq);
  b.clear();

  // Time to first token: the prompt in chunks, then its last logits.
  check(cache.add_sequence(0), "sequence");
  std::vector<std::int32_t> prompt(static_cast<std::size_t>(o.prompt));
  for (int i = 0; i < o.prompt; ++i) prompt[static_cast<std::size_t>(i)] = (i * 7919 + 13) % n_vocab;
  const double t_ttft = now_s();
  for (int start = 0; start < o.prompt; start += o.chunk) {
    b.clear();
    const int end = std::min(o.prompt, start + o.chunk);
    for (int i = start; i < end; ++i) b.add(prompt[static_cast<std::size_t>(i)], i, 0, i == o.prompt - 1);
    forward_greedy(m, b, cache, *kv, &sampled, "prefill");
  }
  std::int32_t tok = sampled.at(0).token;
  const double ttft = now_s() - t_ttft;

  // Batch 1: greedy decoding continues the prompt (context 2,000 and up),
  // in rounds with and without CUDA graphs, alternating (this GPU may be
  // shared): tg1 is the configured way (--graphs), tg1_eager the other.
  auto decode_rate = [&](int from) {
    const double t0 = now_s();
    for (int step = 0; step < o.steps; ++step) {
      b.clear();
      b.add(tok, from + step, 0, true);
      forward_greedy(m, b, cache, *kv, &sampled, "decode");
      tok = sampled.at(0).token;
    }
    return o.steps / (now_s() - t0);
  };
  double tg1 = 0, tg1_other = 0;
  int pos = o.prompt;
  for (int round = 0; round < 2; ++round) {
    tg1 = std::max(tg1, decode_rate(pos));
    pos += o.steps;
    set_cuda_graph_max_tokens(backend, options.graph_max_tokens > 0 ? 0 : 32);
    tg1_other = std::max(tg1_other, decode_rate(pos));
    pos += o.steps;
    set_cuda_graph_max_tokens(backend, options.graph_max_tokens);
  }
  const double weight_bytes = static_cast<double>(m.weight_bytes_per_token());
  const double kv_bytes = static_cast<double>(m.kv_bytes_per_block(KvType::kF16)) / kBlockTokens * (o.prompt + 2 * o.steps);
  const double roofline = bw * 1e9 / weight_bytes;
  cache.remove_sequence(0);

  std::printf("| device | %s |\n| model | %s, %.2f GB of weights, %.2f GB read per token (generated in %.0f s, "
              "uploaded in %.1f s) |\n",
              device.c_str(), label.c_str(), static_cast<double>(m.weight_bytes()) / 1e9, weight_bytes / 1e9, gen_s,
              load_s);
  std::printf("| copy bandwidth (read + write) | %.0f GB/s |\n", bw);
  std::printf("| TTFT, %d-token prompt in chunks of %d | %.3f s (%.0f tok/s) |\n", o.prompt, o.chunk, ttft,
              o.prompt / ttft);
  std::printf("| decode, batch 1, context %d | %.1f tok/s = %.1f%% of the weights roofline (%.1f tok/s); "
              "%.1f%% counting %.0f MB of KV reads |\n",
              o.prompt, tg1, 100.0 * tg1 / roofline, roofline, 100.0 * tg1 * (weight_bytes + kv_bytes) / (bw * 1e9),
              kv_bytes / 1e6);
  std::printf("| decode, batch 1, %s | %.1f tok/s (best of 2 rounds each, alternating; x%.2f) |\n",
              options.graph_max_tokens > 0 ? "without CUDA graphs" : "with CUDA graphs", tg1_other, tg1_other / tg1);
  std::printf("RESULT tg1_%s %.2f\n", options.graph_max_tokens > 0 ? "eager" : "graphs", tg1_other);
  std::printf("RESULT device %s\nRESULT type %s\nRESULT bandwidth_gbs %.1f\nRESULT ttft_s %.4f\nRESULT tg1 %.2f\n"
              "RESULT tg1_roofline_pct %.1f\n",
              device.c_str(), o.type.c_str(), bw, ttft, tg1, 100.0 * tg1 / roofline);

  // Aggregate decoding: `size` sequences of 16 prompt tokens, then steps
  // in which each adds one token.
  for (int size : o.batches) {
    for (int seq = 1; seq <= size; ++seq) check(cache.add_sequence(seq), "sequence");
    b.clear();
    for (int seq = 1; seq <= size; ++seq)
      for (int i = 0; i < 16; ++i) b.add((seq * 31 + i) % n_vocab, i, seq, i == 15);
    forward_greedy(m, b, cache, *kv, &sampled, "batch prefill");
    const double t0 = now_s();
    for (int step = 0; step < o.steps; ++step) {
      b.clear();
      for (int seq = 1; seq <= size; ++seq)
        b.add(sampled.at(static_cast<std::size_t>(seq - 1)).token, 16 + step, seq, true);
      forward_greedy(m, b, cache, *kv, &sampled, "batch decode");
    }
    const double rate = size * o.steps / (now_s() - t0);
    std::printf("| decode, %d sequences | %.0f tok/s aggregate (x%.1f batch 1) |\n", size, rate, rate / tg1);
    std::printf("RESULT tg%d %.1f\n", size, rate);
    for (int seq = 1; seq <= size; ++seq) cache.remove_sequence(seq);
  }
  const CudaGraphStats g = cuda_graph_stats(backend);
  std::printf("| CUDA graphs (decode steps of up to %d tokens) | %llu captured, %llu replayed, %llu passes eager |\n",
              options.graph_max_tokens, static_cast<unsigned long long>(g.captured),
              static_cast<unsigned long long>(g.replayed), static_cast<unsigned long long>(g.eager));
  std::printf("RESULT graphs_captured %llu\nRESULT graphs_replayed %llu\n", static_cast<unsigned long long>(g.captured),
              static_cast<unsigned long long>(g.replayed));
  return 0;
}
