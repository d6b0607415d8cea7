// Matmul kernel benchmark (issue 3): the CPU backend's matmul on one
// 2048 x 5632-shaped weight stack per type, large enough (~300 MB in Q8_0)
// to stream from memory, at 1, 2, 3, 4, 8 and 16 tokens; and this machine's read
// bandwidth measured in the same run with vector loads. Reports weight bytes
// streamed per second and integer multiply-adds per second, so a kernel
// change can be judged in seconds instead of a whole-model run. --split N
// makes the rows N matrices, one call each, every call writing the same
// output buffer as the model's scratch.
//
// usage: kernel_bench [--threads N] [--type Q8_0|Q4_0|Q4_K|Q5_K|Q6_K|all] [--isa best|avx512vnni|avx2|scalar] [--rows N] [--n-in N] [--split N] [--tokens N,N,..] [--attention CTX] [--rows-in-order]

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "airlock/engine/backend.h"
#include "airlock/engine/ggml_types.h"
#include "airlock/engine/kernels.h"
#include "airlock/engine/kv_cache.h"
#include "bandwidth.h"
#include "airlock/engine/thread_pool.h"

using namespace airlock::engine;

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Random quantised rows: random bytes with every f16 scale set to a small
// normal value (random bits would include NaN and infinity).
std::vector<std::uint8_t> random_rows(GgmlType type, std::int64_t n_in, std::int64_t n_rows, std::mt19937& rng) {
  const std::size_t stride = row_bytes(type, n_in);
  std::vector<std::uint8_t> w(stride * static_cast<std::size_t>(n_rows));
  for (auto& b : w) b = static_cast<std::uint8_t>(rng());
  std::vector<float> row(static_cast<std::size_t>(n_in));
  for (std::int64_t r = 0; r < n_rows; ++r) {
    std::normal_distribution<float> nd(0.0f, 0.02f);
    if (r < 64) {  // quantise real rows for a few, copy them around (fast)
      for (auto& v : row) v = nd(rng);
      quantize_row(type, row.data(), w.data() + stride * r, n_in);
    } else {
      std::memcpy(w.data() + stride * r, w.data() + stride * (r % 64), stride);
    }
  }
  return w;
}

std::int64_t g_rows = 24 * 5632;
std::int64_t g_n_in = 2048;  // row length: 2048 is a 1B Llama's n_embd, 5632 its n_ff (the down projection)
std::int64_t g_split = 1;  // the rows as this many separate matmul calls (a model's many small matrices)
std::vector<int> g_tokens = {1, 2, 3, 4, 8, 16};  // batch sizes (--tokens 1,16,64: prompt chunks too)

void bench_type(GgmlType type, Backend& be, double bw) {
  // Rows of 2048 (a 1B Llama's n_embd), ~1/3 of such a model's weights.
  const std::int64_t n_in = g_n_in, n_rows = g_rows * 2048 / g_n_in;  // default ~277 M weights, far beyond the caches
  std::mt19937 rng(7);
  std::vector<std::uint8_t> w = random_rows(type, n_in, n_rows, rng);
  WeightTensor wt;
  wt.type = type;
  wt.ne[0] = n_in;
  wt.ne[1] = n_rows;
  wt.data = w.data();
  for (int nt : g_tokens) {
    // With --split, one output buffer for every call, as the model's
    // scratch is reused from matrix to matrix.
    const std::int64_t part = n_rows / g_split;
    const double bytes = static_cast<double>(row_bytes(type, n_in) * static_cast<std::size_t>(part * g_split));
    std::vector<float> x(static_cast<std::size_t>(nt * n_in)), y(static_cast<std::size_t>(nt * part));
    std::normal_distribution<float> nd;
    for (auto& v : x) v = nd(rng);
    // The same rows as g_split consecutive matrices, each its own call.
    auto run = [&] {
      for (std::int64_t s = 0; s < g_split; ++s) {
        WeightTensor piece = wt;
        piece.ne[1] = part;
        piece.data = w.data() + row_bytes(type, n_in) * static_cast<std::size_t>(s * part);
        be.matmul(piece, x.data(), nt, y.data());
      }
    };
    run();  // warm-up
    double best = 1e9;
    for (int rep = 0; rep < 20; ++rep) {
      const double t0 = now_s();
      run();
      best = std::min(best, now_s() - t0);
    }
    std::printf("%-5s tokens %2d  %7.2f ms  %6.2f GB/s weights (%3.0f%% of read bandwidth)  %6.1f G mul-add/s\n",
                std::string(traits(type).name).c_str(), nt, best * 1e3, bytes / best / 1e9, 100.0 * bytes / best / 1e9 / bw,
                static_cast<double>(n_in * part * g_split * nt) / best / 1e9);
  }
}

// Decode attention of one token over `n_ctx` cached positions in every
// layer of a 1B Llama's shape (16 layers, 32 query heads sharing 8 key/value
// heads of 64, f16 cache), the blocks scattered through a cache of twice
// the size as a busy server's would be: the per-token attention cost of
// batch-1 generation, through the backend (its thread pool) like the model.
void bench_attention(Backend& be, int n_ctx) {
  const int n_layers = 16, n_head = 32, n_kv_head = 8, head_dim = 64;
  const int n_blocks = 2 * ((n_ctx + kBlockTokens - 1) / kBlockTokens);
  airlock::Result<KvStorage> kv = be.alloc_kv(n_layers, static_cast<std::int64_t>(n_blocks) * kBlockTokens,
                                     n_kv_head * head_dim, KvType::kF16);
  if (!kv.is_ok()) std::exit(2);
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  // every slot gets random keys and values
  std::vector<float> rows(static_cast<std::size_t>(kv->n_slots * kv->kv_dim));
  for (auto& v : rows) v = nd(rng);
  std::vector<std::int32_t> slots(static_cast<std::size_t>(kv->n_slots));
  for (std::size_t i = 0; i < slots.size(); ++i) slots[i] = static_cast<std::int32_t>(i);
  for (int l = 0; l < n_layers; ++l) be.kv_write(*kv, l, rows.data(), rows.data(), kv->n_slots, slots.data());
  std::vector<std::int32_t> table(static_cast<std::size_t>(n_blocks));
  for (int i = 0; i < n_blocks; ++i) table[static_cast<std::size_t>(i)] = i;
  std::shuffle(table.begin(), table.end(), rng);
  std::vector<float> q(static_cast<std::size_t>(n_head * head_dim)), out(q.size());
  for (auto& v : q) v = nd(rng);
  const std::int32_t* tables[1] = {table.data()};
  AttentionArgs a;
  a.q = q.data();
  a.out = out.data();
  a.n_tokens = 1;
  a.n_head = n_head;
  a.n_kv_head = n_kv_head;
  a.head_dim = head_dim;
  a.scale = 0.125f;
  a.kv = &*kv;
  a.n_ctx = &n_ctx;
  a.block_table = tables;
  auto run = [&] {
    for (int l = 0; l < n_layers; ++l) {
      a.layer = l;
      be.attention(a);
    }
  };
  run();
  std::vector<double> times;
  for (int rep = 0; rep < 30; ++rep) {
    const double t0 = now_s();
    run();
    times.push_back(now_s() - t0);
  }
  std::sort(times.begin(), times.end());
  const double med = times[times.size() / 2];
  const double bytes = 2.0 * n_layers * n_ctx * n_kv_head * head_dim * 2;  // keys and values, f16
  std::printf("attention ctx %5d  %7.3f ms per token (median of 30, 16 layers)  %6.2f GB/s of keys and values\n",
              n_ctx, med * 1e3, bytes / med / 1e9);
}

}  // namespace

int main(int argc, char** argv) {
  int n_threads = 0;
  std::string which = "all", isa = "best";
  int attention_ctx = 0;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--threads" && i + 1 < argc) n_threads = std::atoi(argv[++i]);
    else if (a == "--type" && i + 1 < argc) which = argv[++i];
    else if (a == "--isa" && i + 1 < argc) isa = argv[++i];
    else if (a == "--rows" && i + 1 < argc) g_rows = std::atoll(argv[++i]);  // small: kernels from cache
    else if (a == "--n-in" && i + 1 < argc) g_n_in = std::max(256LL, std::atoll(argv[++i]) / 256 * 256);
    else if (a == "--split" && i + 1 < argc) g_split = std::max(1LL, std::atoll(argv[++i]));
    else if (a == "--rows-in-order") airlock::engine::use_matmul_streams(false);
    else if (a == "--tokens" && i + 1 < argc) {
      g_tokens.clear();
      for (const char* p = argv[++i]; *p;) {
        char* end = nullptr;
        const long n = std::strtol(p, &end, 10);
        if (end == p || n < 1 || n > 4096) break;
        g_tokens.push_back(static_cast<int>(n));
        p = *end == ',' ? end + 1 : end;
      }
      if (g_tokens.empty()) g_tokens = {1};
    }
    else if (a == "--attention" && i + 1 < argc) attention_ctx = std::atoi(argv[++i]);
    else {
      std::fprintf(stderr, "usage: kernel_bench [--threads N] [--type NAME|all] [--isa best|avx512vnni|avx2|scalar] [--rows N] [--n-in N] [--split N] [--tokens N,N,..] [--attention CTX] [--rows-in-order]\n");
      return 2;
    }
  }
  if (isa == "scalar") limit_kernel_isa(KernelIsa::kScalar);
  else if (isa == "avx2") limit_kernel_isa(KernelIsa::kAvx2);
  else if (isa == "avx512vnni") limit_kernel_isa(KernelIsa::kAvx512Vnni);
  else if (isa != "best") {
    std::fprintf(stderr, "--isa: best, avx512vnni, avx2 or scalar\n");
    return 2;
  }
  auto pool = std::make_shared<ThreadPool>(n_threads);
  std::unique_ptr<Backend> be = make_cpu_backend(pool);
  const double bw = airlock::bench::read_bandwidth_gbs(pool->n_threads());
  std::printf("threads %d, kernels %s, memory read bandwidth %.2f GB/s\n", pool->n_threads(), kernel_isa(), bw);
  if (attention_ctx > 0) {  // decode attention alone, at this context and twice and four times it
    for (int ctx : {attention_ctx, 2 * attention_ctx, 4 * attention_ctx}) bench_attention(*be, ctx);
    return 0;
  }
  for (GgmlType t : {GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kQ4_K, GgmlType::kQ5_K, GgmlType::kQ6_K}) {
    if (which != "all" && which != traits(t).name) continue;
    bench_type(t, *be, bw);
  }
  return 0;
}
