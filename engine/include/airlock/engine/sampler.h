// Choosing the next token from logits.
//
// Order of operations: logit_bias added to the raw logits (OpenAI's
// logit_bias; -100 bans a token, +100 all but forces it); the penalties
// (repetition over the prompt and the
// generated tokens, presence and frequency over the generated tokens only,
// as OpenAI describes them and vLLM applies them); then temperature; then top-k,
// top-p (nucleus) and min-p filters on the tempered distribution (as OpenAI,
// vLLM and Hugging Face apply them; llama.cpp filters before temperature);
// then a draw from the seeded generator. temperature 0 is greedy (the highest logit; ties go to
// the lowest id). The same seed, logits and history always give the same
// token. Log-probabilities are those of the model's own distribution
// (log-softmax of the raw logits), as OpenAI's `logprobs` reports them.
//
// The choice is split in two so that it can run where the logits are
// (Backend::sample: on a GPU only the chosen tokens cross to the host):
// Sampler::next_row() does what needs the sequence (counting its history,
// drawing the next random number), sample_row() does the rest from the
// logits alone. Sampler::sample() is the two together.
//
// Thread-safety: a Sampler holds its generator state; one per sequence.
// sample_row() is a pure function.
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <span>
#include <utility>
#include <vector>

#include "airlock/common/status.h"

namespace airlock::engine {

struct SamplingParams {
  float temperature = 1.0f;        // 0 = greedy
  int top_k = 0;                   // 0 = off
  float top_p = 1.0f;              // 1 = off
  float min_p = 0.0f;              // 0 = off
  float repetition_penalty = 1.0f; // 1 = off (divides positive logits, multiplies negative) of prompt and generated tokens
  float presence_penalty = 0.0f;   // subtracted once per token generated so far
  float frequency_penalty = 0.0f;  // subtracted per time it was generated
  std::uint64_t seed = 0;
  int n_logprobs = 0;              // top alternatives to report (0..20)
  // (token, bias) added to those logits before anything else, each in
  // [-100, 100]; tokens outside the vocabulary are ignored.
  std::vector<std::pair<std::int32_t, float>> logit_bias = {};
};

inline constexpr std::size_t kMaxLogitBias = 1024;  // entries of SamplingParams::logit_bias

// kInvalidArgument naming the first parameter out of range.
Status validate(const SamplingParams& p);

struct TokenLogprob {
  std::int32_t token = 0;
  float logprob = 0;
};

struct SampledToken {
  std::int32_t token = 0;
  float logprob = 0;                     // of the chosen token
  std::vector<TokenLogprob> top;         // n_logprobs most likely, most likely first
};

// Everything a choice needs besides the logits.
struct SampleRow {
  SamplingParams params;
  // (token, times generated), each token once, for the penalties: every
  // generated token and, when a repetition penalty is set, every prompt
  // token too (0 when it was not generated); empty when no penalty is set.
  // The repetition penalty applies to each listed token, the presence and
  // frequency penalties to those generated.
  std::vector<std::pair<std::int32_t, std::int32_t>> counts;
  // The draw, uniform in [0, 1) (53 random bits); unused when greedy.
  double u = 0;
  // Constrained decoding (constraint.h): the tokens that may be chosen, a
  // bit each (bit t % 64 of word t / 64); null: any. The choice is made
  // among them as if the others had no probability; log-probabilities stay
  // those of the model's own distribution.
  std::shared_ptr<const std::vector<std::uint64_t>> allowed;
};

// The token `row` chooses from `logits` (one entry per vocabulary token).
// Tokens of `row.counts` outside the vocabulary are ignored.
SampledToken sample_row(std::span<const float> logits, const SampleRow& row);

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  // `logits` has one entry per vocabulary token; `history` holds the tokens
  // already in the sequence for the penalties: its first `prompt_length`
  // are the prompt, the rest were generated.
  SampledToken sample(std::span<const float> logits, std::span<const std::int32_t> history,
                      std::size_t prompt_length);
  // What the next sample() would use besides the logits: it advances the
  // generator as sample() does (once per token unless greedy), so that
  // sample_row(logits, next_row(history)) is sample(logits, history).
  // The penalty counts are kept between calls and updated with the tokens
  // added since the last one, so a call costs O(distinct tokens), not
  // O(history): `history` is expected to grow by appending (any other
  // history, or another prompt length, is counted afresh).
  SampleRow next_row(std::span<const std::int32_t> history, std::size_t prompt_length);

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<std::pair<std::int32_t, std::int32_t>> counts_;  // sorted by token; for history[0, counted_)
  std::size_t counted_ = 0;
  std::size_t prompt_length_ = 0;   // of the history counted
  std::int32_t last_counted_ = -1;  // history[counted_ - 1], to notice a different history
};

}  // namespace airlock::engine
