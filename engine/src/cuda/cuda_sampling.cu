#include "cuda_sampling.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <cub/cub.cuh>

#include "cuda_block.cuh"

namespace airlock::engine::cuda {
namespace {

constexpr int kThreads = 256;

// One row's parameters, as the kernels read them.
struct RowArgs {
  float temperature, top_p, min_p, repetition, presence, frequency;
  int top_k, n_top;  // n_top: log-probabilities to report, at most kMaxLogprobs and n_vocab
  double u;
  int bias_begin;                // its (token, bias bits) pairs, [bias_begin, counts_begin)
  int counts_begin, counts_end;  // its (token, count) pairs
};

// What a row's kernels leave for the host.
struct RowResult {
  double log_z;  // of the raw logits
  int token;
  float logprob;
  int top_token[kMaxLogprobs];
  float top_logprob[kMaxLogprobs];
};

// A candidate of an arg-max: the larger value wins, then the lower id (the
// host's std::max_element and its sort comparator).
struct Best {
  float v;
  int i;
};

__device__ Best better(Best a, Best b) { return b.v > a.v || (b.v == a.v && b.i < a.i) ? b : a; }

__device__ Best block_best(Best b) {
  __shared__ Best partial[kThreads / 32];
  for (int o = 16; o > 0; o /= 2) {
    Best other{__shfl_xor_sync(0xffffffffu, b.v, o), __shfl_xor_sync(0xffffffffu, b.i, o)};
    b = better(b, other);
  }
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = b;
  __syncthreads();
  Best r = partial[0];
  for (int w = 1; w < kThreads / 32; ++w) r = better(r, partial[w]);
  __syncthreads();
  return r;
}

__device__ float block_max(float v) {
  __shared__ float partial[kThreads / 32];
  for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = v;
  __syncthreads();
  float r = partial[0];
  for (int w = 1; w < kThreads / 32; ++w) r = fmaxf(r, partial[w]);
  __syncthreads();
  return r;
}

// The first i in [begin, end) for which `pred(i, inclusive prefix sum of
// term up to i)` holds, or end: the block walks [begin, end) a tile of
// kThreads at a time, scanning term (double) with a running carry, and
// stops at the first tile where pred holds somewhere.
template <typename Term, typename Pred>
__device__ int first_by_prefix(int begin, int end, Term term, Pred pred) {
  using Scan = cub::BlockScan<double, kThreads>;
  __shared__ typename Scan::TempStorage scan;
  __shared__ int found;
  if (threadIdx.x == 0) found = INT_MAX;
  __syncthreads();
  double carry = 0;
  for (int base = begin; base < end; base += kThreads) {
    const int i = base + static_cast<int>(threadIdx.x);
    double t = i < end ? term(i) : 0.0, total = 0;
    Scan(scan).InclusiveSum(t, t, total);
    if (i < end && pred(i, carry + t)) atomicMin(&found, i);
    __syncthreads();
    if (found != INT_MAX) break;  // every thread reads the same value
    carry += total;
  }
  const int r = found == INT_MAX ? end : found;
  __syncthreads();  // found and scan are reused by the next call
  return r;
}

// Per row (one block each): the raw logits' log-normaliser; the penalised
// copy of the logits and their ids (the sort's input); the greedy choice.
__global__ void prepare_kernel(const float* logits, std::int64_t n_vocab, const RowArgs* args, const int2* counts,
                               float* keys, int* ids, RowResult* results, int row0) {
  const int row = row0 + static_cast<int>(blockIdx.x);
  const RowArgs a = args[row];
  const float* raw = logits + static_cast<std::int64_t>(row) * n_vocab;
  float* key = keys + static_cast<std::int64_t>(blockIdx.x) * n_vocab;
  int* id = ids + static_cast<std::int64_t>(blockIdx.x) * n_vocab;
  float m = -INFINITY;
  for (std::int64_t i = threadIdx.x; i < n_vocab; i += kThreads) m = fmaxf(m, raw[i]);
  m = block_max(m);
  double s = 0;
  for (std::int64_t i = threadIdx.x; i < n_vocab; i += kThreads) {
    s += exp(static_cast<double>(__fsub_rn(raw[i], m)));
    key[i] = raw[i];
    id[i] = static_cast<int>(i);
  }
  s = block_sum<kThreads>(s);
  __syncthreads();  // the copy is complete before the penalties change it
  if (threadIdx.x == 0) {
    results[row].log_z = static_cast<double>(m) + log(s);
    // In the row's order, one at a time, as the host (a token listed twice
    // is penalised twice there too); no contraction into FMA. The bias
    // first, then the penalties.
    for (int c = a.bias_begin; c < a.counts_begin; ++c) {
      const int t = counts[c].x;
      if (t >= 0 && t < n_vocab) key[t] = __fadd_rn(key[t], __int_as_float(counts[c].y));
    }
    for (int c = a.counts_begin; c < a.counts_end; ++c) {
      const int t = counts[c].x;
      if (t < 0 || t >= n_vocab) continue;
      float v = key[t];
      if (a.repetition != 1.0f) v = v > 0 ? __fdiv_rn(v, a.repetition) : __fmul_rn(v, a.repetition);
      if (counts[c].y > 0) v = __fsub_rn(v, __fadd_rn(a.presence, __fmul_rn(a.frequency, static_cast<float>(counts[c].y))));
      key[t] = v;
    }
  }
  if (a.temperature != 0.0f) return;  // the whole block: temperature is the row's
  __syncthreads();
  Best b{-INFINITY, INT_MAX};
  for (std::int64_t i = threadIdx.x; i < n_vocab; i += kThreads) b = better(b, Best{key[i], static_cast<int>(i)});
  b = block_best(b);
  if (threadIdx.x == 0) results[row].token = b.i == INT_MAX ? 0 : b.i;  // INT_MAX: every logit NaN
}

// Per sampled row (one block each), over its candidates sorted by adjusted
// logit: top-k, top-p, min-p, then the draw, as sample_row().
__global__ void choose_kernel(const float* sorted, const int* sorted_ids, std::int64_t n_vocab, const RowArgs* args,
                              RowResult* results, int row0) {
  const int row = row0 + static_cast<int>(blockIdx.x);
  const RowArgs a = args[row];
  if (a.temperature == 0.0f) return;
  const float* s = sorted + static_cast<std::int64_t>(blockIdx.x) * n_vocab;
  const int* id = sorted_ids + static_cast<std::int64_t>(blockIdx.x) * n_vocab;
  const int n = static_cast<int>(n_vocab);
  const int keep = a.top_k > 0 ? min(a.top_k, n) : n;
  const float l0 = s[0];
  const double temperature = a.temperature;
  // exp((l_i - l_0) / T), the difference in float as on the host: the
  // filters see the tempered distribution, as the draw does.
  auto rel = [&](int i) { return exp(static_cast<double>(__fsub_rn(s[i], l0)) / temperature); };
  double z = 0;
  for (int i = threadIdx.x; i < keep; i += kThreads) z += rel(i);
  z = block_sum<kThreads>(z);
  int k = keep;
  if (a.top_p < 1.0f) {
    const double top_p = a.top_p;
    k = first_by_prefix(0, keep, [&](int i) { return rel(i) / z; },
                        [&](int, double cum) { return cum >= top_p; });
    k = k == keep ? keep : k + 1;
  }
  if (a.min_p > 0.0f) {
    const double floor_p = static_cast<double>(a.min_p) * (1.0 / z);  // min_p * prob[0]
    // Written as the host's loop condition negated, so that NaN stops both
    // at the same place.
    k = first_by_prefix(1, k, [](int) { return 0.0; }, [&](int i, double) { return !(rel(i) / z >= floor_p); });
  }
  double wz = 0;
  for (int i = threadIdx.x; i < k; i += kThreads) wz += rel(i);
  wz = block_sum<kThreads>(wz);
  const double r = a.u * wz;
  int pick = first_by_prefix(0, k, rel, [&](int, double prefix) { return !(r >= prefix); });
  if (pick >= k) pick = k - 1;
  if (threadIdx.x == 0) results[row].token = id[pick];
}

// Per row (one block each): the chosen token's log-probability and the
// n_logprobs most likely raw tokens, one arg-max pass each.
__global__ void report_kernel(const float* logits, std::int64_t n_vocab, const RowArgs* args, RowResult* results,
                              int row0) {
  const int row = row0 + static_cast<int>(blockIdx.x);
  const float* raw = logits + static_cast<std::int64_t>(row) * n_vocab;
  RowResult& res = results[row];
  const double log_z = res.log_z;
  __shared__ int picked[kMaxLogprobs];
  const int n_top = args[row].n_top;
  for (int k = 0; k < n_top; ++k) {
    Best b{-INFINITY, INT_MAX};
    for (std::int64_t i = threadIdx.x; i < n_vocab; i += kThreads) {
      bool taken = false;
      for (int j = 0; j < k; ++j) taken = taken || picked[j] == i;
      if (!taken) b = better(b, Best{raw[i], static_cast<int>(i)});
    }
    b = block_best(b);
    if (b.i == INT_MAX) b.i = 0;
    if (threadIdx.x == 0) {
      picked[k] = b.i;
      res.top_token[k] = b.i;
      res.top_logprob[k] = static_cast<float>(raw[b.i] - log_z);
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) res.logprob = static_cast<float>(raw[res.token] - log_z);
}

// The stable descending sort of each sampled row of a group; greedy rows
// are empty segments.
cudaError_t sort_rows(void* temp, std::size_t* temp_bytes, const float* keys, float* keys_sorted, const int* ids,
                      int* ids_sorted, int n_items, int n_rows, const int* begins, const int* ends) {
  return cub::DeviceSegmentedRadixSort::SortPairsDescending(temp, *temp_bytes, keys, keys_sorted, ids, ids_sorted,
                                                            n_items, n_rows, begins, ends);
}

}  // namespace

Status DeviceSampler::reserve(std::int64_t n_vocab) {
  if (n_vocab <= reserved_vocab_) return Status::ok();
  if (n_vocab > INT_MAX / kSampleGroupRows) return invalid_argument("device sampling: vocabulary too large");
  reserved_vocab_ = 0;  // grow() frees before it allocates: nothing is reserved until all have grown
  const std::size_t n = static_cast<std::size_t>(kSampleGroupRows * n_vocab);
  AIRLOCK_RETURN_IF_ERROR(keys_.grow(n * sizeof(float)));
  AIRLOCK_RETURN_IF_ERROR(keys_sorted_.grow(n * sizeof(float)));
  AIRLOCK_RETURN_IF_ERROR(ids_.grow(n * sizeof(int)));
  AIRLOCK_RETURN_IF_ERROR(ids_sorted_.grow(n * sizeof(int)));
  std::size_t temp_bytes = 0;
  AIRLOCK_RETURN_IF_ERROR(check_cuda(sort_rows(nullptr, &temp_bytes, nullptr, nullptr, nullptr, nullptr,
                                               static_cast<int>(n), kSampleGroupRows, nullptr, nullptr),
                                     "sizing the sampling sort"));
  AIRLOCK_RETURN_IF_ERROR(sort_temp_.grow(std::max<std::size_t>(temp_bytes, 1)));
  reserved_vocab_ = n_vocab;
  return Status::ok();
}

Status DeviceSampler::sample(const float* logits, std::int64_t n_vocab, std::span<const SampleRow> rows,
                             std::vector<SampledToken>* out) {
  out->clear();
  const int n_rows = static_cast<int>(rows.size());
  if (n_rows == 0) return Status::ok();
  AIRLOCK_RETURN_IF_ERROR(reserve(n_vocab));
  // The rows' parameters and penalty counts, and the sort's segments: row
  // r of its group is [r * n_vocab, (r + 1) * n_vocab) of the group's
  // keys, or empty when greedy.
  std::vector<RowArgs> args(rows.size());
  std::vector<int2> counts;
  std::vector<int> begins(rows.size()), ends(rows.size());
  for (int r = 0; r < n_rows; ++r) {
    const SampleRow& row = rows[static_cast<std::size_t>(r)];
    const SamplingParams& p = row.params;
    RowArgs& a = args[static_cast<std::size_t>(r)];
    a = RowArgs{p.temperature, p.top_p, p.min_p, p.repetition_penalty, p.presence_penalty, p.frequency_penalty,
                p.top_k, static_cast<int>(std::min<std::int64_t>(std::clamp(p.n_logprobs, 0, kMaxLogprobs), n_vocab)),
                row.u, static_cast<int>(counts.size()), 0, 0};
    for (auto [t, b] : p.logit_bias) {
      std::int32_t bits;
      std::memcpy(&bits, &b, sizeof bits);
      counts.push_back(int2{t, bits});
    }
    a.counts_begin = static_cast<int>(counts.size());
    for (auto [t, c] : row.counts) counts.push_back(int2{t, c});
    a.counts_end = static_cast<int>(counts.size());
    const int local = r % kSampleGroupRows;
    begins[static_cast<std::size_t>(r)] = static_cast<int>(local * n_vocab);
    ends[static_cast<std::size_t>(r)] = static_cast<int>((p.temperature == 0.0f ? local : local + 1) * n_vocab);
  }
  if (counts.empty()) counts.push_back(int2{-1, 0});
  // One upload: [args | counts | begins | ends], each part 16-byte aligned.
  const auto aligned = [](std::size_t b) { return (b + 15) / 16 * 16; };
  const std::size_t args_bytes = aligned(args.size() * sizeof(RowArgs)),
                    counts_bytes = aligned(counts.size() * sizeof(int2)),
                    offsets_bytes = aligned(rows.size() * sizeof(int));
  const std::size_t in_bytes = args_bytes + counts_bytes + 2 * offsets_bytes;
  const std::size_t out_bytes = rows.size() * sizeof(RowResult);
  AIRLOCK_RETURN_IF_ERROR(inputs_.grow(in_bytes));
  AIRLOCK_RETURN_IF_ERROR(results_.grow(out_bytes));
  if (!inputs_host_.grow(in_bytes) || !results_host_.grow(out_bytes))
    return resource_exhausted("device sampling: no page-locked host memory");
  char* h = inputs_host_.as<char>();
  std::memcpy(h, args.data(), args.size() * sizeof(RowArgs));
  std::memcpy(h + args_bytes, counts.data(), counts.size() * sizeof(int2));
  std::memcpy(h + args_bytes + counts_bytes, begins.data(), begins.size() * sizeof(int));
  std::memcpy(h + args_bytes + counts_bytes + offsets_bytes, ends.data(), ends.size() * sizeof(int));
  AIRLOCK_RETURN_IF_ERROR(copy_async(inputs_.get(), h, in_bytes));
  char* d = inputs_.as<char>();
  const int2* d_counts = reinterpret_cast<const int2*>(d + args_bytes);
  const int* d_begins = reinterpret_cast<const int*>(d + args_bytes + counts_bytes);
  const int* d_ends = reinterpret_cast<const int*>(d + args_bytes + counts_bytes + offsets_bytes);
  const RowArgs* d_args = reinterpret_cast<const RowArgs*>(d);
  RowResult* d_results = results_.as<RowResult>();
  for (int g = 0; g < n_rows; g += kSampleGroupRows) {
    const int n = std::min(kSampleGroupRows, n_rows - g);
    prepare_kernel<<<n, kThreads>>>(logits, n_vocab, d_args, d_counts, keys_.as<float>(), ids_.as<int>(), d_results,
                                    g);
    AIRLOCK_RETURN_IF_ERROR(check_cuda(cudaGetLastError(), "sampling: prepare"));
    bool any_drawn = false;
    for (int r = g; r < g + n; ++r) any_drawn = any_drawn || args[static_cast<std::size_t>(r)].temperature != 0.0f;
    if (any_drawn) {
      std::size_t temp_bytes = sort_temp_.size();
      AIRLOCK_RETURN_IF_ERROR(check_cuda(sort_rows(sort_temp_.get(), &temp_bytes, keys_.as<float>(),
                                                   keys_sorted_.as<float>(), ids_.as<int>(), ids_sorted_.as<int>(),
                                                   static_cast<int>(n * n_vocab), n, d_begins + g, d_ends + g),
                                         "sampling: sort"));
      choose_kernel<<<n, kThreads>>>(keys_sorted_.as<float>(), ids_sorted_.as<int>(), n_vocab, d_args, d_results, g);
      AIRLOCK_RETURN_IF_ERROR(check_cuda(cudaGetLastError(), "sampling: choose"));
    }
    report_kernel<<<n, kThreads>>>(logits, n_vocab, d_args, d_results, g);
    AIRLOCK_RETURN_IF_ERROR(check_cuda(cudaGetLastError(), "sampling: report"));
  }
  AIRLOCK_RETURN_IF_ERROR(copy_async(results_host_.get(), d_results, out_bytes));
  AIRLOCK_RETURN_IF_ERROR(synchronize());  // the step's one wait: for its tokens
  const RowResult* results = results_host_.as<RowResult>();
  out->resize(rows.size());
  for (std::size_t r = 0; r < rows.size(); ++r) {
    SampledToken& t = (*out)[r];
    t.token = results[r].token;
    t.logprob = results[r].logprob;
    for (int k = 0; k < args[r].n_top; ++k) t.top.push_back({results[r].top_token[k], results[r].top_logprob[k]});
  }
  return Status::ok();
}

}  // namespace airlock::engine::cuda
