#include "vector_index.h"

#include <algorithm>
#include <exception>
#include <thread>

#include <hnswlib/hnswlib.h>

namespace airlock::rag {

VectorIndex::VectorIndex(int dim, AnnOptions options)
    : dim_(dim), options_(options), space_(std::make_unique<hnswlib::InnerProductSpace>(static_cast<std::size_t>(dim))) {}
VectorIndex::~VectorIndex() = default;
VectorIndex::VectorIndex(VectorIndex&&) noexcept = default;

Status VectorIndex::add(std::int64_t id, const float* v) {
  if (row_of_.count(id) != 0) return already_exists("vector " + std::to_string(id) + " is already indexed");
  const std::size_t row = ids_.size();
  data_.insert(data_.end(), v, v + dim_);
  ids_.push_back(id);
  row_of_.emplace(id, row);
  ++n_live_;
  return Status();
}

void VectorIndex::remove(std::int64_t id) {
  auto it = row_of_.find(id);
  if (it == row_of_.end()) return;
  const std::size_t row = it->second;
  ids_[row] = -1;
  row_of_.erase(it);
  --n_live_;
  if (ann_ && row < ann_rows_) ann_->markDelete(row);
  // Compact when most rows are dead (a full rebuild of the graph follows).
  if (ids_.size() > 1024 && n_live_ * 2 < ids_.size()) {
    std::vector<float> data;
    std::vector<std::int64_t> ids;
    data.reserve(n_live_ * static_cast<std::size_t>(dim_));
    ids.reserve(n_live_);
    row_of_.clear();
    for (std::size_t r = 0; r < ids_.size(); ++r) {
      if (ids_[r] < 0) continue;
      row_of_.emplace(ids_[r], ids.size());
      ids.push_back(ids_[r]);
      data.insert(data.end(), data_.begin() + static_cast<std::ptrdiff_t>(r * dim_),
                  data_.begin() + static_cast<std::ptrdiff_t>((r + 1) * dim_));
    }
    data_.swap(data);
    ids_.swap(ids);
    ann_.reset();
    ann_rows_ = 0;
  }
}

void VectorIndex::scan(const float* q, std::size_t from_row, std::size_t k,
                       std::vector<std::pair<std::int64_t, float>>& out) const {
  const hnswlib::DISTFUNC<float> distance = space_->get_dist_func();
  void* params = space_->get_dist_func_param();
  for (std::size_t r = from_row; r < ids_.size(); ++r) {
    if (ids_[r] < 0) continue;
    const float sim = 1.0f - distance(q, data_.data() + r * static_cast<std::size_t>(dim_), params);
    out.emplace_back(ids_[r], sim);
  }
  auto better = [](const auto& a, const auto& b) { return a.second > b.second || (a.second == b.second && a.first < b.first); };
  if (out.size() > k) {
    std::partial_sort(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(k), out.end(), better);
    out.resize(k);
  } else {
    std::sort(out.begin(), out.end(), better);
  }
}

std::vector<std::pair<std::int64_t, float>> VectorIndex::search_exact(const float* q, std::size_t k) const {
  std::vector<std::pair<std::int64_t, float>> out;
  scan(q, 0, k, out);
  return out;
}

std::vector<std::pair<std::int64_t, float>> VectorIndex::search(const float* q, std::size_t k) const {
  if (!ann_ || k == 0) return search_exact(q, k);
  std::vector<std::pair<std::int64_t, float>> out;
  // The graph answers for its rows; later rows are scanned and merged.
  try {
    auto found = ann_->searchKnn(q, k);
    while (!found.empty()) {
      const std::size_t row = found.top().second;
      if (row < ids_.size() && ids_[row] >= 0) out.emplace_back(ids_[row], 1.0f - found.top().first);
      found.pop();
    }
  } catch (const std::exception&) {
    return search_exact(q, k);  // hnswlib throws only on internal inconsistency; the scan is always right
  }
  scan(q, ann_rows_, k, out);
  return out;
}

Status VectorIndex::maybe_build() {
  if (n_live_ < options_.threshold) {
    ann_.reset();
    ann_rows_ = 0;
    return Status();
  }
  if (ann_ && (ids_.size() - ann_rows_) * 4 < n_live_) return Status();
  try {
    auto ann = std::make_unique<hnswlib::HierarchicalNSW<float>>(
        space_.get(), ids_.size(), static_cast<std::size_t>(options_.m),
        static_cast<std::size_t>(options_.ef_construction), /*random_seed=*/100);
    // Inserts in parallel (hnswlib locks per node); labels are row numbers.
    const std::size_t rows = ids_.size();
    const unsigned n_threads = std::max(1u, std::min(8u, std::thread::hardware_concurrency()));
    std::atomic<std::size_t> next{0};
    std::exception_ptr failure;
    std::mutex failure_mu;
    auto work = [&] {
      try {
        for (std::size_t r = next++; r < rows; r = next++)
          if (ids_[r] >= 0) ann->addPoint(data_.data() + r * static_cast<std::size_t>(dim_), r);
      } catch (...) {
        std::lock_guard<std::mutex> lock(failure_mu);
        failure = std::current_exception();
      }
    };
    std::vector<std::thread> threads;
    for (unsigned t = 1; t < n_threads; ++t) threads.emplace_back(work);
    work();
    for (std::thread& t : threads) t.join();
    if (failure) std::rethrow_exception(failure);
    ann->setEf(static_cast<std::size_t>(options_.ef_search));
    ann_ = std::move(ann);
    ann_rows_ = rows;
  } catch (const std::exception& e) {
    ann_.reset();
    ann_rows_ = 0;
    return resource_exhausted(std::string("building the HNSW index failed (exact search stays in use): ") + e.what());
  }
  return Status();
}

}  // namespace airlock::rag
