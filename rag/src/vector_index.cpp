#include "vector_index.h"

#include <algorithm>
#include <cstring>
#include <exception>
#include <mutex>

#include <immintrin.h>

#include <hnswlib/hnswlib.h>

#include "airlock/common/log.h"

namespace airlock::rag {
namespace {

// Inner product, AVX2+FMA when the CPU has them (chosen once), else four
// scalar accumulators. hnswlib's own SIMD path is compiled out
// (NO_MANUAL_VECTORIZATION): in 0.6.2 its prefetches read one entry past a
// link list.
__attribute__((target("avx2,fma"))) float dot_avx2(const float* a, const float* b, std::size_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  std::size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
  acc0 = _mm256_add_ps(acc0, acc1);
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc0), _mm256_extractf128_ps(acc0, 1));
  s = _mm_hadd_ps(s, s);
  s = _mm_hadd_ps(s, s);
  float sum = _mm_cvtss_f32(s);
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

float dot_scalar(const float* a, const float* b, std::size_t n) {
  float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  std::size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += a[i] * b[i];
    s1 += a[i + 1] * b[i + 1];
    s2 += a[i + 2] * b[i + 2];
    s3 += a[i + 3] * b[i + 3];
  }
  for (; i < n; ++i) s0 += a[i] * b[i];
  return (s0 + s1) + (s2 + s3);
}

using DotFn = float (*)(const float*, const float*, std::size_t);
DotFn pick_dot() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? dot_avx2 : dot_scalar;
}
const DotFn kDot = pick_dot();

float inner_product_distance(const void* a, const void* b, const void* dim) {
  return 1.0f - kDot(static_cast<const float*>(a), static_cast<const float*>(b), *static_cast<const std::size_t*>(dim));
}

}  // namespace

// hnswlib's distance interface over kDot: 1 - <a, b>.
class DotSpace final : public hnswlib::SpaceInterface<float> {
 public:
  explicit DotSpace(std::size_t dim) : dim_(dim) {}
  std::size_t get_data_size() override { return dim_ * sizeof(float); }
  hnswlib::DISTFUNC<float> get_dist_func() override { return inner_product_distance; }
  void* get_dist_func_param() override { return &dim_; }

 private:
  std::size_t dim_;
};

namespace {

bool better(const std::pair<std::int64_t, float>& a, const std::pair<std::int64_t, float>& b) {
  return a.second > b.second || (a.second == b.second && a.first < b.first);
}

}  // namespace

VectorIndex::VectorIndex(int dim, AnnOptions options)
    : dim_(static_cast<std::size_t>(dim)), options_(options),
      space_(std::make_unique<DotSpace>(static_cast<std::size_t>(dim))) {}

VectorIndex::~VectorIndex() {
  cancel_ = true;
  if (builder_.joinable()) builder_.join();
}

std::size_t VectorIndex::size() const {
  std::shared_lock lock(mu_);
  return n_live_;
}

std::size_t VectorIndex::capacity_rows() const {
  std::shared_lock lock(mu_);
  std::size_t rows = 0;
  for (std::size_t b = 0; b < blocks_.size(); ++b) rows += rows_in_block(b);
  return rows;
}

float* VectorIndex::append_row(std::vector<std::unique_ptr<float[]>>& blocks, std::size_t r) const {
  const RowAt at = locate(r);
  // Not zero-filled: a row is read only once written.
  if (at.offset == 0) blocks.push_back(std::make_unique_for_overwrite<float[]>(rows_in_block(at.block) * dim_));
  return blocks[at.block].get() + at.offset * dim_;
}

bool VectorIndex::contains(std::int64_t id) const {
  std::shared_lock lock(mu_);
  return row_of_.count(id) != 0;
}

bool VectorIndex::uses_ann() const {
  std::shared_lock lock(mu_);
  return ann_ != nullptr;
}

void VectorIndex::insert_into_graph(std::size_t r) {
  try {
    if (ann_->cur_element_count >= ann_->max_elements_)  // public members in hnswlib 0.6
      ann_->resizeIndex(std::max<std::size_t>(1024, ann_->max_elements_ * 2));
    ann_->addPoint(row(r), r);
    ann_rows_ = r + 1;
  } catch (const std::exception& e) {
    // The graph cannot grow (memory): search exactly from now on.
    airlock::log().warn("HNSW insert failed, the collection is searched exactly: {}", e.what());
    ann_.reset();
    ann_rows_ = 0;
  }
}

Status VectorIndex::add(std::int64_t id, const float* v) {
  std::unique_lock lock(mu_);
  if (row_of_.count(id) != 0) return already_exists("vector " + std::to_string(id) + " is already indexed");
  const std::size_t r = ids_.size();
  std::memcpy(append_row(blocks_, r), v, dim_ * sizeof(float));
  ids_.push_back(id);
  row_of_.emplace(id, r);
  ++n_live_;
  // Into the graph at once, unless a build is running (it takes the tail).
  if (ann_ && !building_ && ann_rows_ == r) insert_into_graph(r);
  return Status();
}

void VectorIndex::remove(std::int64_t id) {
  std::unique_lock lock(mu_);
  auto it = row_of_.find(id);
  if (it == row_of_.end()) return;
  const std::size_t r = it->second;
  ids_[r] = -1;
  row_of_.erase(it);
  --n_live_;
  if (ann_ && r < ann_rows_) {
    try {
      ann_->markDelete(r);
    } catch (const std::exception&) {
      // Not in the graph (it was already dead when the graph was built).
    }
  }
}

void VectorIndex::scan(const float* q, std::size_t from_row, std::size_t k,
                       std::vector<std::pair<std::int64_t, float>>& out) const {
  const hnswlib::DISTFUNC<float> distance = space_->get_dist_func();
  void* params = space_->get_dist_func_param();
  for (std::size_t r = from_row; r < ids_.size(); ++r) {
    if (ids_[r] < 0) continue;
    out.emplace_back(ids_[r], 1.0f - distance(q, row(r), params));
  }
  if (out.size() > k) {
    std::partial_sort(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(k), out.end(), better);
    out.resize(k);
  } else {
    std::sort(out.begin(), out.end(), better);
  }
}

std::vector<std::pair<std::int64_t, float>> VectorIndex::search_exact(const float* q, std::size_t k) const {
  std::shared_lock lock(mu_);
  std::vector<std::pair<std::int64_t, float>> out;
  scan(q, 0, k, out);
  return out;
}

std::vector<std::pair<std::int64_t, float>> VectorIndex::search(const float* q, std::size_t k) const {
  std::shared_lock lock(mu_);
  std::vector<std::pair<std::int64_t, float>> out;
  if (!ann_ || k == 0) {
    scan(q, 0, k, out);
    return out;
  }
  // The graph answers for its rows; later rows are scanned and merged.
  try {
    auto found = ann_->searchKnn(q, k);
    while (!found.empty()) {
      const std::size_t r = found.top().second;
      if (r < ids_.size() && ids_[r] >= 0) out.emplace_back(ids_[r], 1.0f - found.top().first);
      found.pop();
    }
  } catch (const std::exception&) {
    out.clear();
    scan(q, 0, k, out);  // hnswlib throws only on internal inconsistency; the scan is always right
    return out;
  }
  scan(q, ann_rows_, k, out);
  return out;
}

void VectorIndex::maybe_build() {
  std::unique_lock lock(mu_);
  if (building_) return;
  // Mostly removed rows (documents replaced or deleted): copy the live rows
  // into fresh blocks and build again, so memory follows the live size.
  if (ids_.size() > 1024 && n_live_ * 2 < ids_.size()) {
    std::vector<std::unique_ptr<float[]>> blocks;
    std::vector<std::int64_t> ids;
    ids.reserve(n_live_);
    row_of_.clear();
    for (std::size_t r = 0; r < ids_.size(); ++r) {
      if (ids_[r] < 0) continue;
      const std::size_t to = ids.size();
      std::memcpy(append_row(blocks, to), row(r), dim_ * sizeof(float));
      row_of_.emplace(ids_[r], to);
      ids.push_back(ids_[r]);
    }
    blocks_.swap(blocks);
    ids_.swap(ids);
    ann_.reset();
    ann_rows_ = 0;
  }
  if (ann_ && n_live_ * 2 < options_.threshold) {  // shrunk well below: a scan is as fast
    ann_.reset();
    ann_rows_ = 0;
    return;
  }
  if (ann_ || n_live_ < options_.threshold) return;
  if (builder_.joinable()) builder_.join();  // the previous build has finished (building_ is false)
  building_ = true;
  cancel_ = false;  // a failed build stopped its workers with it; this is a new one
  std::vector<std::int64_t> ids = ids_;
  const std::size_t n_rows = ids.size();
  builder_ = std::thread([this, n_rows, ids = std::move(ids)]() mutable { build(n_rows, std::move(ids)); });
}

void VectorIndex::wait_for_build() {
  std::thread t;
  {
    std::unique_lock lock(mu_);
    if (!builder_.joinable()) return;
    t.swap(builder_);
  }
  t.join();
}

void VectorIndex::build(std::size_t n_rows, std::vector<std::int64_t> ids) {
  // Rows never change once written (they are appended in blocks that never
  // move; removals only touch ids_), so the graph is built without the lock
  // while searches scan exactly. Rows added meanwhile are taken in by more
  // rounds outside the lock; only the last few are inserted under it.
  std::unique_ptr<hnswlib::HierarchicalNSW<float>> graph;
  std::vector<char> inserted;  // (rows) 1 when in the graph (char, not bool: threads write neighbours)
  std::string failure;
  const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  const unsigned n_threads = options_.build_threads > 0 ? options_.build_threads : hw;
  // The block table may grow (and move) while this runs: read rows through
  // a copy of it taken under the lock, which covers every row of row_ids.
  std::vector<const float*> blocks;
  auto snapshot_blocks = [&] {
    std::shared_lock lock(mu_);
    blocks.clear();
    for (const auto& b : blocks_) blocks.push_back(b.get());
  };
  auto row_of = [&](std::size_t r) {
    const RowAt at = locate(r);
    return blocks[at.block] + at.offset * dim_;
  };
  snapshot_blocks();
  auto insert_rows = [&](std::size_t from, const std::vector<std::int64_t>& row_ids) {
    std::atomic<std::size_t> next{from};
    std::mutex failure_mu;
    if (graph->cur_element_count + row_ids.size() - from > graph->max_elements_)
      graph->resizeIndex(graph->cur_element_count + (row_ids.size() - from) * 2 + 1024);
    inserted.resize(row_ids.size(), 0);
    auto work = [&] {
      try {
        for (std::size_t r = next++; r < row_ids.size() && !cancel_; r = next++)
          if (row_ids[r] >= 0) {
            graph->addPoint(row_of(r), r);
            inserted[r] = 1;
          }
      } catch (const std::exception& e) {
        std::lock_guard<std::mutex> l(failure_mu);
        failure = e.what();
        cancel_ = true;
      }
    };
    std::vector<std::thread> threads;
    for (unsigned t = 1; t < n_threads; ++t) threads.emplace_back(work);
    work();
    for (std::thread& t : threads) t.join();
  };
  try {
    graph = std::make_unique<hnswlib::HierarchicalNSW<float>>(
        space_.get(), n_rows + n_rows / 4 + 1024, static_cast<std::size_t>(options_.m),
        static_cast<std::size_t>(options_.ef_construction), /*random_seed=*/100);
    insert_rows(0, ids);
    for (int round = 0; round < 16 && !cancel_; ++round) {
      std::vector<std::int64_t> more;
      {
        std::shared_lock lock(mu_);
        if (ids_.size() - ids.size() < 256) break;
        more = ids_;
      }
      snapshot_blocks();  // covers `more`: rows are written before their ids
      const std::size_t from = ids.size();
      ids = std::move(more);
      insert_rows(from, ids);
    }
    graph->setEf(static_cast<std::size_t>(options_.ef_search));
  } catch (const std::exception& e) {
    failure = e.what();
  }
  std::unique_lock lock(mu_);
  building_ = false;
  if (cancel_ || !failure.empty()) {
    if (!failure.empty()) airlock::log().warn("building the HNSW index failed, exact search stays in use: {}", failure);
    return;
  }
  // Take in what changed meanwhile: removals, then the last rows added.
  const std::size_t covered = ids.size();
  for (std::size_t r = 0; r < covered; ++r)
    if (inserted[r] && ids_[r] < 0) graph->markDelete(r);
  ann_ = std::move(graph);
  ann_rows_ = covered;
  for (std::size_t r = covered; r < ids_.size() && ann_; ++r) {
    if (ids_[r] >= 0) {
      insert_into_graph(r);
    } else {
      ann_rows_ = r + 1;  // a dead row needs no node
    }
  }
}

}  // namespace airlock::rag
