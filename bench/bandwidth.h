// Memory read bandwidth as the engine benchmarks measure it (shared by
// engine_bench and kernel_bench so their roofline figures agree).
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

namespace airlock::bench {

// Sums floats [b, e) with AVX2 loads into four independent accumulators,
// so the loop is bound by memory rather than by the adds. The range is read
// as `streams` equal parts, a 128-byte step of each in turn: a core keeps
// more lines in flight for several sequential streams than for one (on
// the 2-core AMX VM one stream per thread read 23 GB/s, four 30 GB/s).
__attribute__((target("avx2"))) inline float sum_range(const float* buf, std::size_t b, std::size_t e,
                                                         int streams) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  const std::size_t part = (e - b) / static_cast<std::size_t>(streams) / 32 * 32;
  for (std::size_t i = 0; i < part; i += 32)
    for (int s = 0; s < streams; ++s) {
      const float* p = buf + b + static_cast<std::size_t>(s) * part + i;
      a0 = _mm256_add_ps(a0, _mm256_loadu_ps(p));
      a1 = _mm256_add_ps(a1, _mm256_loadu_ps(p + 8));
      a2 = _mm256_add_ps(a2, _mm256_loadu_ps(p + 16));
      a3 = _mm256_add_ps(a3, _mm256_loadu_ps(p + 24));
    }
  float out[8];
  _mm256_storeu_ps(out, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  return out[0];
}

// Read bandwidth in GB/s with n_threads over a 1 GiB buffer: the best of
// five passes for each of 1, 2, 4 and 8 streams per thread (the roofline
// is what the memory gives, not what one access pattern gets).
inline double read_bandwidth_gbs(int n_threads) {
  const std::size_t n = (1ULL << 30) / sizeof(float);
  std::vector<float> buf(n, 1.0f);
  double best = 0;
  for (int streams : {1, 2, 4, 8})
    for (int rep = 0; rep < 5; ++rep) {
      std::vector<float> partial(static_cast<std::size_t>(n_threads));
      const auto t0 = std::chrono::steady_clock::now();
      std::vector<std::thread> ts;
      for (int t = 0; t < n_threads; ++t)
        ts.emplace_back([&, t] {
          partial[static_cast<std::size_t>(t)] =
              sum_range(buf.data(), n * t / n_threads / 32 * 32, n * (t + 1) / n_threads / 32 * 32, streams);
        });
      for (auto& th : ts) th.join();
      const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (partial[0] < 0) std::puts("");  // keep the loop alive
      best = std::max(best, static_cast<double>(n * sizeof(float)) / dt / 1e9);
    }
  return best;
}

}  // namespace airlock::bench
