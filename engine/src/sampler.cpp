#include "airlock/engine/sampler.h"

#include <algorithm>
#include <cstdint>
#include <cmath>
#include <numeric>
#include <unordered_map>

namespace airlock::engine {

Status validate(const SamplingParams& p) {
  if (!(p.temperature >= 0 && p.temperature <= 100)) return invalid_argument("temperature must be in [0, 100]");
  if (p.top_k < 0) return invalid_argument("top_k must be >= 0");
  if (!(p.top_p > 0 && p.top_p <= 1)) return invalid_argument("top_p must be in (0, 1]");
  if (!(p.min_p >= 0 && p.min_p <= 1)) return invalid_argument("min_p must be in [0, 1]");
  if (!(p.repetition_penalty > 0 && p.repetition_penalty <= 10)) return invalid_argument("repetition_penalty must be in (0, 10]");
  if (!(p.presence_penalty >= -2 && p.presence_penalty <= 2)) return invalid_argument("presence_penalty must be in [-2, 2]");
  if (!(p.frequency_penalty >= -2 && p.frequency_penalty <= 2)) return invalid_argument("frequency_penalty must be in [-2, 2]");
  if (p.n_logprobs < 0 || p.n_logprobs > 20) return invalid_argument("top_logprobs must be in [0, 20]");
  if (p.logit_bias.size() > kMaxLogitBias) return invalid_argument("logit_bias holds more than 1024 tokens");
  for (const auto& [t, b] : p.logit_bias)
    if (t < 0 || !(b >= -100 && b <= 100)) return invalid_argument("logit_bias: token ids >= 0, biases in [-100, 100]");
  return Status::ok();
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {}

SampleRow Sampler::next_row(std::span<const std::int32_t> history, std::size_t prompt_length) {
  SampleRow row;
  row.params = params_;
  prompt_length = std::min(prompt_length, history.size());
  const bool with_prompt = params_.repetition_penalty != 1.0f;
  if (!history.empty() && (with_prompt || params_.presence_penalty != 0.0f || params_.frequency_penalty != 0.0f)) {
    // Counted afresh the first time, after a large step (a prompt) or for a
    // history that is not the last one extended; otherwise only the tokens
    // appended since (one per decode step).
    const bool extends = counted_ > 0 && counted_ <= history.size() && history[counted_ - 1] == last_counted_ &&
                         prompt_length == prompt_length_;
    std::size_t from = counted_;
    if (!extends || history.size() - counted_ > 64) {
      counts_.clear();
      from = 0;
    }
    if (history.size() - from > 64) {
      std::unordered_map<std::int32_t, std::int32_t> counts;
      for (std::size_t i = from; i < history.size(); ++i) {
        const std::int32_t t = history[i];
        if (t < 0) continue;
        if (i >= prompt_length) ++counts[t];
        else if (with_prompt) counts.try_emplace(t, 0);
      }
      counts_.assign(counts.begin(), counts.end());
      std::sort(counts_.begin(), counts_.end());  // the same rows for the same history
    } else {
      for (std::size_t i = from; i < history.size(); ++i) {
        const std::int32_t t = history[i];
        if (t < 0 || (i < prompt_length && !with_prompt)) continue;
        auto at = std::lower_bound(counts_.begin(), counts_.end(), std::pair<std::int32_t, std::int32_t>(t, INT32_MIN));
        if (at == counts_.end() || at->first != t) at = counts_.insert(at, {t, 0});
        if (i >= prompt_length) ++at->second;
      }
    }
    counted_ = history.size();
    prompt_length_ = prompt_length;
    last_counted_ = history.back();
    row.counts = counts_;
  }
  // 53 random bits -> [0, 1): the same on every platform for the same seed.
  if (params_.temperature != 0.0f) row.u = static_cast<double>(rng_() >> 11) * 0x1.0p-53;
  return row;
}

SampledToken Sampler::sample(std::span<const float> logits, std::span<const std::int32_t> history,
                             std::size_t prompt_length) {
  return sample_row(logits, next_row(history, prompt_length));
}

SampledToken sample_row(std::span<const float> logits, const SampleRow& row) {
  const SamplingParams& params = row.params;
  const std::size_t n = logits.size();
  SampledToken out;
  // Log-softmax of the raw logits for reporting.
  const float max_raw = *std::max_element(logits.begin(), logits.end());
  double sum_raw = 0;
  for (float l : logits) sum_raw += std::exp(static_cast<double>(l - max_raw));
  const double log_z = static_cast<double>(max_raw) + std::log(sum_raw);
  auto logprob = [&](std::int32_t t) { return static_cast<float>(logits[t] - log_z); };

  std::vector<float> l(logits.begin(), logits.end());
  for (auto [t, b] : params.logit_bias)
    if (t >= 0 && static_cast<std::size_t>(t) < n) l[t] += b;
  for (auto [t, c] : row.counts) {
    if (t < 0 || static_cast<std::size_t>(t) >= n) continue;
    float& v = l[t];
    if (params.repetition_penalty != 1.0f) v = v > 0 ? v / params.repetition_penalty : v * params.repetition_penalty;
    if (c > 0) v -= params.presence_penalty + params.frequency_penalty * static_cast<float>(c);
  }
  // The candidates: every token, or those the constraint allows.
  std::vector<std::int32_t> idx;
  if (row.allowed) {
    const std::vector<std::uint64_t>& mask = *row.allowed;
    for (std::size_t t = 0; t < n && t / 64 < mask.size(); ++t)
      if ((mask[t / 64] >> (t % 64)) & 1u) idx.push_back(static_cast<std::int32_t>(t));
  }
  const bool constrained = !idx.empty();  // (a constraint always allows one)
  if (params.temperature == 0.0f && !constrained) {
    out.token = static_cast<std::int32_t>(std::max_element(l.begin(), l.end()) - l.begin());
  } else if (params.temperature == 0.0f) {
    // The highest logit allowed; ties go to the lowest id.
    out.token = *std::min_element(idx.begin(), idx.end(), [&](std::int32_t a, std::int32_t b) {
      return l[a] > l[b] || (l[a] == l[b] && a < b);
    });
  } else {
    if (!constrained) {
      idx.resize(n);
      std::iota(idx.begin(), idx.end(), 0);
    }
    // Candidates sorted by adjusted logit, most likely first.
    const std::size_t n_candidates = idx.size();
    std::size_t keep = n_candidates;
    if (params.top_k > 0) keep = std::min<std::size_t>(keep, static_cast<std::size_t>(params.top_k));
    auto by_logit = [&](std::int32_t a, std::int32_t b) { return l[a] > l[b] || (l[a] == l[b] && a < b); };
    if (keep < n_candidates) {
      std::partial_sort(idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(keep), idx.end(), by_logit);
      idx.resize(keep);
    } else {
      std::sort(idx.begin(), idx.end(), by_logit);
    }
    // Probabilities at the request's temperature for the top-p and min-p
    // filters (the order OpenAI, vLLM and Hugging Face use; llama.cpp
    // filters at temperature 1).
    std::vector<double> prob(idx.size());
    double z = 0;
    for (std::size_t i = 0; i < idx.size(); ++i)
      z += prob[i] = std::exp(static_cast<double>(l[idx[i]] - l[idx[0]]) / params.temperature);
    for (double& pr : prob) pr /= z;
    if (params.top_p < 1.0f) {
      double cum = 0;
      std::size_t k = 0;
      while (k < idx.size()) {
        cum += prob[k++];
        if (cum >= params.top_p) break;
      }
      idx.resize(k);
    }
    if (params.min_p > 0.0f) {
      std::size_t k = 1;
      while (k < idx.size() && prob[k] >= params.min_p * prob[0]) ++k;
      idx.resize(k);
    }
    std::vector<double> w(idx.size());
    double wz = 0;
    for (std::size_t i = 0; i < idx.size(); ++i)
      wz += w[i] = std::exp(static_cast<double>(l[idx[i]] - l[idx[0]]) / params.temperature);
    double r = row.u * wz;
    std::size_t pick = 0;
    while (pick + 1 < idx.size() && r >= w[pick]) r -= w[pick++];
    out.token = idx[pick];
  }
  out.logprob = logprob(out.token);
  if (params.n_logprobs > 0) {
    std::vector<std::int32_t> top(n);
    std::iota(top.begin(), top.end(), 0);
    std::size_t k = std::min<std::size_t>(n, static_cast<std::size_t>(params.n_logprobs));
    std::partial_sort(top.begin(), top.begin() + static_cast<std::ptrdiff_t>(k), top.end(), [&](std::int32_t a, std::int32_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    for (std::size_t i = 0; i < k; ++i) out.top.push_back({top[i], logprob(top[i])});
  }
  return out;
}

}  // namespace airlock::engine
