// Engine benchmark (issue 3): on a generated Llama-shaped model of about 1B
// parameters in Q8_0 and Q4_K (and optionally a real GGUF), measures prompt
// processing for a 512-token prompt, batch-1 generation, aggregate generation
// with 8 and 16 sequences, and this machine's memory read bandwidth in the
// same run, and reports batch-1 generation as a fraction of the roofline
// (bandwidth measured right before each round / bytes read per token, median
// over the rounds; the token embedding table counts one row, as one row is
// read): once counting the weights alone, once
// counting the weights and the KV cache attention reads at the measured
// context (f16 by default, as airlockd stores it).
//
// usage: engine_bench [--threads N] [--layers L] [--prompt N] [--type Q8_0|Q4_K] [--kv-type f16|f32]
//                     [--mmap-only] [--model PATH.gguf] [--isa best|avx512vnni|avx2] [--rows-in-order]
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "airlock/engine/kernels.h"
#include "airlock/engine/model.h"
#include "airlock/engine/thread_pool.h"
#include "bandwidth.h"
#include "gguf_writer.h"

using namespace airlock;
using namespace airlock::engine;

namespace {

int g_prompt = 512;
KvType g_kv_type = KvType::kF16;
constexpr int kRounds = 5;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string write_model(GgmlType type, int n_layer) {
  testing::TestModelSpec s;
  s.arch = "llama";
  s.n_vocab = 32000;
  s.n_embd = 2048;
  s.n_layer = n_layer;
  s.n_head = 32;
  s.n_head_kv = 8;
  s.n_ff = 5632;
  s.n_ctx = 2048;
  s.weight_type = type;
  testing::TestModel m = testing::make_test_model(s);
  const char* tmp = std::getenv("TMPDIR");
  std::string path = std::string(tmp ? tmp : "/tmp") + "/airlock-bench-" + std::string(traits(type).name) + ".gguf";
  std::ofstream(path, std::ios::binary).write(m.gguf.data(), static_cast<std::streamsize>(m.gguf.size()));
  return path;
}

long rss_mib() {
  std::ifstream f("/proc/self/statm");
  long pages = 0, resident = 0;
  f >> pages >> resident;
  return resident * sysconf(_SC_PAGESIZE) / (1 << 20);
}

// A forward pass that must succeed: otherwise the benchmark says why and
// exits 2 (a prompt longer than the model's context, for one).
void forward_or_exit(Model& m, const Batch& b, KvCache& cache, const KvStorage& kv, std::vector<float>* logits) {
  const airlock::Status st = m.forward(b, cache, kv, logits);
  if (st.is_ok()) return;
  std::fprintf(stderr, "engine_bench: forward pass of %zu tokens: %s\n", b.size(), st.to_string().c_str());
  std::exit(2);
}

void run_model(const std::string& path, const std::string& label, int n_threads, bool in_memory) {
  auto pool = std::make_shared<ThreadPool>(n_threads);
  std::shared_ptr<Backend> be = make_cpu_backend(pool);
  // in_memory: the file read into anonymous memory instead of mapped, to
  // separate page-cache effects from kernel speed.
  static std::string bytes;
  Result<std::unique_ptr<Model>> loaded = invalid_argument("unset");
  if (in_memory) {
    std::ifstream f(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(f), {});
    auto file = GgufFile::parse({reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()});
    if (!file.is_ok()) std::exit(2);
    loaded = Model::from_gguf(std::move(*file), be);
  } else {
    loaded = Model::load(path, be);
  }
  if (!loaded.is_ok()) {
    std::fprintf(stderr, "%s: %s\n", path.c_str(), loaded.status().to_string().c_str());
    std::exit(2);
  }
  Model& m = **loaded;
  const int n_prompt = g_prompt, n_gen = 32;
  const int n_blocks = KvCache::blocks_for(n_prompt + kRounds * n_gen) + 16 * KvCache::blocks_for(32) + 8;
  KvCache cache(n_blocks);
  auto kv = m.alloc_kv(n_blocks, g_kv_type);
  if (!kv.is_ok()) std::exit(2);
  std::mt19937 rng(1);
  std::vector<float> logits;
  Batch b;
  // Warm-up: one short forward first, so that the prompt figure does not
  // include faulting the mapped weights in or starting the threads (the
  // daemon does the same one-token pass before it reports ready).
  (void)cache.add_sequence(99);
  for (int i = 0; i < 8; ++i) b.add(1, i, 99, i == 7);
  forward_or_exit(m, b, cache, *kv, &logits);
  cache.remove_sequence(99);
  b.clear();
  // Prompt processing: one 512-token chunk.
  (void)cache.add_sequence(0);
  for (int i = 0; i < n_prompt; ++i) b.add(static_cast<int>(rng() % m.params().n_vocab), i, 0, i == n_prompt - 1);
  double t0 = now_s();
  forward_or_exit(m, b, cache, *kv, &logits);
  const double pp = n_prompt / (now_s() - t0);
  // Generation, measured in rounds: each round times batch-1 decoding
  // (continuing the prompt's sequence), then 8 and 16 sequences decoding
  // together (short contexts), so the three rates are taken side by side.
  // This VM's speed drifts by 20% within a minute; each figure is the
  // median over the rounds.
  std::vector<double> tg1s, tg8s, tg16s, bws;
  int pos = n_prompt;
  for (int round = 0; round < kRounds; ++round) {
    // The bandwidth right before each batch-1 round: the roofline moves
    // with it on a shared machine.
    bws.push_back(airlock::bench::read_bandwidth_gbs(n_threads));
    t0 = now_s();
    for (int i = 0; i < n_gen; ++i) {
      b.clear();
      b.add(1, pos++, 0, true);
      forward_or_exit(m, b, cache, *kv, &logits);
    }
    tg1s.push_back(n_gen / (now_s() - t0));
    for (int k = 0; k < 2; ++k) {
      const int size = k == 0 ? 8 : 16;
      for (int seq = 1; seq <= size; ++seq) (void)cache.add_sequence(seq);
      for (int step = 0; step < 4; ++step) {  // warm-up steps build a little context
        b.clear();
        for (int seq = 1; seq <= size; ++seq) b.add(1, step, seq, true);
        (void)m.forward(b, cache, *kv, &logits);
      }
      t0 = now_s();
      const int steps = 16;
      for (int step = 4; step < 4 + steps; ++step) {
        b.clear();
        for (int seq = 1; seq <= size; ++seq) b.add(1, step, seq, true);
        forward_or_exit(m, b, cache, *kv, &logits);
      }
      (k == 0 ? tg8s : tg16s).push_back(size * steps / (now_s() - t0));
      for (int seq = 1; seq <= size; ++seq) cache.remove_sequence(seq);
    }
  }
  const double tg1 = median(tg1s);
  const double tg_batch[2] = {median(tg8s), median(tg16s)};
  const double bytes_per_token = static_cast<double>(m.weight_bytes_per_token());
  // Batch 1 also reads every cached key and value of its context: the
  // middle round's context length.
  const double kv_bytes_per_token = static_cast<double>(m.kv_bytes_per_block(g_kv_type)) / kBlockTokens *
                                    (n_prompt + kRounds * n_gen / 2);
  // Per round: tg1 / (bandwidth measured just before it / bytes per token).
  std::vector<double> frac, frac_kv;
  for (std::size_t r = 0; r < tg1s.size(); ++r) {
    frac.push_back(tg1s[r] * bytes_per_token / (bws[r] * 1e9));
    frac_kv.push_back(tg1s[r] * (bytes_per_token + kv_bytes_per_token) / (bws[r] * 1e9));
  }
  std::printf("%-22s %6.2f GB weights  pp%d %7.1f tok/s  tg1 %6.2f tok/s (%4.0f%% of the roofline at %.1f GB/s; "
              "%4.0f%% counting %.0f MB of %s KV)  tg8 %7.2f  tg16 %7.2f tok/s (x%.1f)  rss %ld MiB  kv %.0f MiB\n",
              label.c_str(), bytes_per_token / 1e9, n_prompt, pp, tg1, 100.0 * median(frac), median(bws),
              100.0 * median(frac_kv), kv_bytes_per_token / 1e6, kv_type_name(g_kv_type), tg_batch[0], tg_batch[1],
              tg_batch[1] / tg1, rss_mib(), static_cast<double>(m.kv_bytes_per_block(g_kv_type)) * n_blocks / (1 << 20));
}

}  // namespace

int main(int argc, char** argv) {
  int n_threads = 0, n_layer = 16;
  std::string real, only_type;
  bool mmap_only = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--threads" && i + 1 < argc) n_threads = std::atoi(argv[++i]);
    else if (a == "--layers" && i + 1 < argc) n_layer = std::atoi(argv[++i]);
    else if (a == "--model" && i + 1 < argc) real = argv[++i];
    else if (a == "--prompt" && i + 1 < argc) g_prompt = std::atoi(argv[++i]);
    else if (a == "--type" && i + 1 < argc) only_type = argv[++i];
    else if (a == "--mmap-only") mmap_only = true;
    else if (a == "--rows-in-order") use_matmul_streams(false);
    else if (a == "--isa" && i + 1 < argc && std::strcmp(argv[i + 1], "best") == 0) ++i;
    else if (a == "--isa" && i + 1 < argc && std::strcmp(argv[i + 1], "avx512vnni") == 0)
      ++i, limit_kernel_isa(KernelIsa::kAvx512Vnni);
    else if (a == "--isa" && i + 1 < argc && std::strcmp(argv[i + 1], "avx2") == 0) ++i, limit_kernel_isa(KernelIsa::kAvx2);
    else if (a == "--kv-type" && i + 1 < argc && (std::strcmp(argv[i + 1], "f16") == 0 || std::strcmp(argv[i + 1], "f32") == 0))
      g_kv_type = std::strcmp(argv[++i], "f16") == 0 ? KvType::kF16 : KvType::kF32;
    else {
      std::fprintf(stderr,
                   "usage: engine_bench [--threads N] [--layers L] [--prompt N] [--type Q8_0|Q4_K] [--kv-type f16|f32] "
                   "[--mmap-only] [--model PATH.gguf] [--isa best|avx512vnni|avx2] [--rows-in-order]\n");
      return 2;
    }
  }
  ThreadPool probe(n_threads);
  n_threads = probe.n_threads();
  const double bw = airlock::bench::read_bandwidth_gbs(n_threads);
  std::printf("threads %d, kernels %s, memory read bandwidth %.2f GB/s (%d threads)\n", n_threads, kernel_isa(), bw,
              n_threads);
  if (!real.empty()) run_model(real, real.substr(real.rfind('/') + 1), n_threads, false);
  for (GgmlType t : {GgmlType::kQ8_0, GgmlType::kQ4_K}) {
    if (!only_type.empty() && only_type != traits(t).name) continue;
    std::string path = write_model(t, n_layer);
    run_model(path, "llama-1B-" + std::string(traits(t).name) + " mmap", n_threads, false);
    if (!mmap_only) run_model(path, "llama-1B-" + std::string(traits(t).name) + " memory", n_threads, true);
    std::remove(path.c_str());
  }
  return 0;
}
