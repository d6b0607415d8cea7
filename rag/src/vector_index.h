// In-memory vector index of one collection: inner product over L2-normalised
// vectors. Exact (a scan) below a size threshold; above it an HNSW graph
// (hnswlib) answers, and vectors added after the graph was built are scanned
// exactly and merged until the next rebuild.
//
// Thread-safety: none; the store guards each index with its lock.
#pragma once

#include <cstdint>
#include <memory>
#include <unordered_map>
#include <utility>
#include <vector>

#include "airlock/common/status.h"

namespace hnswlib {
template <typename T>
class HierarchicalNSW;
class InnerProductSpace;
}  // namespace hnswlib

namespace airlock::rag {

struct AnnOptions {
  std::size_t threshold = 20000;
  int m = 16;
  int ef_construction = 200;
  int ef_search = 128;
};

class VectorIndex {
 public:
  VectorIndex(int dim, AnnOptions options);
  ~VectorIndex();
  VectorIndex(VectorIndex&&) noexcept;

  // `v` holds dim floats. kAlreadyExists for an id already present.
  Status add(std::int64_t id, const float* v);
  void remove(std::int64_t id);
  std::size_t size() const { return n_live_; }
  bool contains(std::int64_t id) const { return row_of_.count(id) != 0; }
  bool uses_ann() const { return ann_ != nullptr; }

  // (id, similarity) best first, at most k.
  std::vector<std::pair<std::int64_t, float>> search(const float* q, std::size_t k) const;
  // Exact scan, for tests and benchmarks.
  std::vector<std::pair<std::int64_t, float>> search_exact(const float* q, std::size_t k) const;

  // Builds (or rebuilds) the HNSW graph over every live vector when the
  // index is over the threshold, or when more than a quarter of it is
  // outside the graph. Called after bulk loads and writes.
  Status maybe_build();

 private:
  void scan(const float* q, std::size_t from_row, std::size_t k, std::vector<std::pair<std::int64_t, float>>& out) const;

  int dim_;
  AnnOptions options_;
  std::vector<float> data_;          // (rows, dim)
  std::vector<std::int64_t> ids_;    // (rows); -1 when removed
  std::unordered_map<std::int64_t, std::size_t> row_of_;
  std::size_t n_live_ = 0;
  std::unique_ptr<hnswlib::InnerProductSpace> space_;
  std::unique_ptr<hnswlib::HierarchicalNSW<float>> ann_;
  std::size_t ann_rows_ = 0;         // rows [0, ann_rows_) are in the graph (labels are rows)
};

}  // namespace airlock::rag
