// The in-memory vector index of a collection: its memory follows the
// vectors stored (blocks grow from 8 rows), and search answers exactly as
// a plain double-precision scan does across block boundaries, after
// removals and compaction, and with the HNSW graph.
#include "vector_index.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <utility>
#include <vector>

namespace airlock::rag {
namespace {

std::vector<float> unit_vector(std::mt19937& rng, int dim) {
  std::normal_distribution<float> normal;
  std::vector<float> v(static_cast<std::size_t>(dim));
  double norm = 0;
  for (float& x : v) {
    x = normal(rng);
    norm += static_cast<double>(x) * x;
  }
  for (float& x : v) x = static_cast<float>(x / std::sqrt(norm));
  return v;
}

// The reference: every live row's inner product in double precision, the
// k best ids (ties: the lower id), with their similarities.
std::vector<std::pair<std::int64_t, double>> best(const std::vector<std::pair<std::int64_t, std::vector<float>>>& rows,
                                                  const std::vector<float>& q, std::size_t k) {
  std::vector<std::pair<std::int64_t, double>> all;
  for (const auto& [id, v] : rows) {
    double dot = 0;
    for (std::size_t i = 0; i < v.size(); ++i) dot += static_cast<double>(v[i]) * q[i];
    all.emplace_back(id, dot);
  }
  std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) {
    return a.second > b.second || (a.second == b.second && a.first < b.first);
  });
  all.resize(std::min(k, all.size()));
  return all;
}

void expect_exact(const std::vector<std::pair<std::int64_t, float>>& got,
                  const std::vector<std::pair<std::int64_t, double>>& want, const char* what, std::size_t n) {
  ASSERT_EQ(got.size(), want.size()) << what << ", " << n << " rows";
  for (std::size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].first, want[i].first) << what << ", " << n << " rows, rank " << i;
    EXPECT_NEAR(got[i].second, want[i].second, 1e-5) << what << ", " << n << " rows, rank " << i;
  }
}

// A collection of one small document used to pin a block of 4096 rows
// (16 MiB at dim 1024, zero-filled): 40 such collections held 697 MB.
TEST(VectorIndexTest, MemoryFollowsTheVectorsStored) {
  VectorIndex index(1024, AnnOptions{});
  EXPECT_EQ(index.capacity_rows(), 0u);
  std::mt19937 rng(1);
  ASSERT_TRUE(index.add(1, unit_vector(rng, 1024).data()).is_ok());
  EXPECT_EQ(index.capacity_rows(), 8u);  // 32 KiB of vectors
  for (std::int64_t id = 2; id <= 9000; ++id) {
    ASSERT_TRUE(index.add(id, unit_vector(rng, 1024).data()).is_ok());
    ASSERT_LE(index.capacity_rows(), std::max<std::size_t>(8, 2 * static_cast<std::size_t>(id))) << id << " vectors";
    ASSERT_GE(index.capacity_rows(), static_cast<std::size_t>(id));
  }
}

TEST(VectorIndexTest, SearchIsExactAcrossBlockBoundaries) {
  const int dim = 24;
  std::mt19937 rng(3);
  for (std::size_t n : {1, 2, 5, 8, 9, 16, 17, 100, 2048, 2049, 4095, 4096, 4097, 8193}) {
    VectorIndex index(dim, AnnOptions{});  // below the ANN threshold: exact
    std::vector<std::pair<std::int64_t, std::vector<float>>> rows;
    for (std::size_t i = 0; i < n; ++i) {
      rows.emplace_back(static_cast<std::int64_t>(100 + i), unit_vector(rng, dim));
      ASSERT_TRUE(index.add(rows.back().first, rows.back().second.data()).is_ok());
    }
    ASSERT_EQ(index.size(), n);
    for (int q = 0; q < 5; ++q) {
      const std::vector<float> query = unit_vector(rng, dim);
      expect_exact(index.search(query.data(), 10), best(rows, query, 10), "search", n);
    }
    // Every row reads back as written: each is its own nearest neighbour.
    for (std::size_t i = 0; i < n; i += std::max<std::size_t>(1, n / 64)) {
      auto self = index.search(rows[i].second.data(), 1);
      ASSERT_EQ(self.size(), 1u);
      EXPECT_EQ(self[0].first, rows[i].first) << n << " rows, row " << i;
    }
    EXPECT_EQ(index.search(rows.back().second.data(), 1).at(0).first, rows.back().first) << n << " rows, the last";
  }
}

TEST(VectorIndexTest, CompactionAndTheGraphKeepEveryRow) {
  const int dim = 16;
  AnnOptions o;
  o.threshold = 3000;
  o.build_threads = 1;
  VectorIndex index(dim, o);
  std::mt19937 rng(5);
  std::vector<std::pair<std::int64_t, std::vector<float>>> live;
  for (std::int64_t id = 0; id < 5000; ++id) {
    std::vector<float> v = unit_vector(rng, dim);
    ASSERT_TRUE(index.add(id, v.data()).is_ok());
    if (id % 3 == 0) live.emplace_back(id, std::move(v));
    else index.remove(id);
  }
  // Two thirds removed: the live rows are copied into fresh blocks.
  index.maybe_build();
  index.wait_for_build();
  EXPECT_FALSE(index.uses_ann());
  EXPECT_EQ(index.size(), live.size());
  EXPECT_LE(index.capacity_rows(), 2 * live.size());
  for (int q = 0; q < 5; ++q) {
    const std::vector<float> query = unit_vector(rng, dim);
    expect_exact(index.search(query.data(), 10), best(live, query, 10), "after compaction", live.size());
  }
  // Past the threshold the graph answers; search_exact stays exact.
  for (std::int64_t id = 5000; id < 7000; ++id) {
    live.emplace_back(id, unit_vector(rng, dim));
    ASSERT_TRUE(index.add(id, live.back().second.data()).is_ok());
  }
  index.maybe_build();
  index.wait_for_build();
  ASSERT_TRUE(index.uses_ann());
  std::size_t found = 0, tried = 0;
  for (std::size_t i = 0; i < live.size(); i += 13, ++tried) {
    auto self = index.search(live[i].second.data(), 1);
    found += !self.empty() && self[0].first == live[i].first;
  }
  EXPECT_GE(static_cast<double>(found), 0.95 * static_cast<double>(tried));
  for (int q = 0; q < 5; ++q) {
    const std::vector<float> query = unit_vector(rng, dim);
    expect_exact(index.search_exact(query.data(), 10), best(live, query, 10), "search_exact", live.size());
  }
}

}  // namespace
}  // namespace airlock::rag
