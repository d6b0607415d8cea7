// In-memory vector index of one collection: inner product over L2-normalised
// vectors. Exact (a scan) below a size threshold. Above it an HNSW graph
// (hnswlib) answers; the graph is built on a background thread (searches
// scan exactly meanwhile), and once it exists new vectors are inserted into
// it as they come. Vectors added while a build runs are scanned exactly and
// merged until the build finishes and takes them in.
//
// Removed vectors are marked deleted in the graph; when they outnumber the
// live ones the rows are compacted and the graph is built again.
//
// Thread-safety: all methods may be called concurrently (an internal
// reader-writer lock; searches share it).
#pragma once

#include <atomic>
#include <bit>
#include <cstdint>
#include <memory>
#include <shared_mutex>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "airlock/common/status.h"

namespace hnswlib {
template <typename T>
class HierarchicalNSW;
}  // namespace hnswlib

namespace airlock::rag {

class DotSpace;

struct AnnOptions {
  std::size_t threshold = 20000;
  int m = 16;
  int ef_construction = 100;
  int ef_search = 160;
  unsigned build_threads = 0;  // 0: every core
};

class VectorIndex {
 public:
  VectorIndex(int dim, AnnOptions options);
  ~VectorIndex();  // stops and joins a running build
  VectorIndex(const VectorIndex&) = delete;
  VectorIndex& operator=(const VectorIndex&) = delete;

  // `v` holds dim floats. kAlreadyExists for an id already present.
  Status add(std::int64_t id, const float* v);
  void remove(std::int64_t id);
  std::size_t size() const;
  // Rows the blocks have room for (stored, removed and not yet used): the
  // vectors take capacity_rows() * dim * 4 bytes. For tests.
  std::size_t capacity_rows() const;
  bool contains(std::int64_t id) const;
  bool uses_ann() const;

  // (id, similarity) best first, at most k.
  std::vector<std::pair<std::int64_t, float>> search(const float* q, std::size_t k) const;
  // Exact scan, for tests and benchmarks.
  std::vector<std::pair<std::int64_t, float>> search_exact(const float* q, std::size_t k) const;

  // Starts building the graph in the background when the index has reached
  // the threshold and has none; drops the graph when the index has shrunk
  // far below it. Returns at once.
  void maybe_build();
  // Waits for a running build (tests, benchmarks, orderly shutdown).
  void wait_for_build();

 private:
  // Rows live in blocks that never move once written (a build reads them
  // without the lock). The first kBlockRows rows are in blocks of 8, 8, 16,
  // ... 2048 rows, later ones in blocks of kBlockRows, so a collection's
  // memory follows the vectors it holds (one vector of dim 1024: 32 KiB,
  // not 16 MiB).
  static constexpr std::size_t kFirstBlockRows = 8;
  static constexpr std::size_t kBlockRows = 4096;
  static_assert(std::has_single_bit(kFirstBlockRows) && std::has_single_bit(kBlockRows));
  static_assert(kFirstBlockRows < kBlockRows);
  static constexpr std::size_t kFirstBlockBits = std::bit_width(kFirstBlockRows) - 1;
  // The blocks of rows [0, kBlockRows).
  static constexpr std::size_t kSmallBlocks = std::bit_width(kBlockRows / kFirstBlockRows);
  struct RowAt {
    std::size_t block, offset;
  };
  static constexpr RowAt locate(std::size_t r) {
    if (r < kFirstBlockRows) return {0, r};
    if (r < kBlockRows) {
      const std::size_t w = std::bit_width(r);  // r in [2^(w-1), 2^w): a block of 2^(w-1) rows
      return {w - kFirstBlockBits, r - (std::size_t{1} << (w - 1))};
    }
    return {kSmallBlocks - 1 + r / kBlockRows, r % kBlockRows};
  }
  static constexpr std::size_t rows_in_block(std::size_t block) {
    return block == 0 ? kFirstBlockRows : block < kSmallBlocks ? kFirstBlockRows << (block - 1) : kBlockRows;
  }
  const float* row(std::size_t r) const {
    const RowAt at = locate(r);
    return blocks_[at.block].get() + at.offset * dim_;
  }
  // Row r (the next one) of `blocks`, with a new block when it starts one.
  float* append_row(std::vector<std::unique_ptr<float[]>>& blocks, std::size_t r) const;
  void scan(const float* q, std::size_t from_row, std::size_t k, std::vector<std::pair<std::int64_t, float>>& out) const;
  void build(std::size_t n_rows, std::vector<std::int64_t> ids);  // the background thread (ids: rows [0, n_rows))
  void insert_into_graph(std::size_t r);                           // with mu_ held exclusively

  const std::size_t dim_;
  const AnnOptions options_;
  std::unique_ptr<DotSpace> space_;
  mutable std::shared_mutex mu_;
  std::vector<std::unique_ptr<float[]>> blocks_;  // (rows, dim) in blocks of rows_in_block() rows
  std::vector<std::int64_t> ids_;                 // (rows); -1 when removed
  std::unordered_map<std::int64_t, std::size_t> row_of_;
  std::size_t n_live_ = 0;
  std::unique_ptr<hnswlib::HierarchicalNSW<float>> ann_;
  std::size_t ann_rows_ = 0;  // rows [0, ann_rows_) are in the graph (labels are rows)
  bool building_ = false;
  std::atomic<bool> cancel_{false};
  std::thread builder_;
};

}  // namespace airlock::rag
