// Continuous batching over Model::forward (or a Decoder: the ranks of a
// tensor-parallel group, decoder.h).
//
// One scheduler thread owns the model, the KV cache and its storage. Each
// step it drops cancelled sequences (their blocks return at once), admits
// waiting requests while their KV blocks fit, and runs one batch that mixes
// prompt chunks (at most `prefill_chunk` prompt tokens per step, so one long
// prompt cannot freeze the other streams) with one decode token for every
// sequence already generating. Sampled tokens go to each request's
// TokenStream as they are produced.
//
// Prefix caching: at admission a request attaches the longest chain of
// cached full blocks that starts its prompt (KvCache::attach_prefix) and
// computes only the rest; after each step every sequence publishes its new
// full blocks, so a repeated system prompt or a conversation's earlier turns
// are not computed again.
//
// Admission takes what a request needs now (its prompt and one token), not
// prompt plus max_tokens: most requests stop long before max_tokens, and
// clients that send none ask for the whole context, so reserving it would
// run them one at a time. When a step's blocks do not fit, the newest
// running sequences are preempted: their blocks are freed and they wait at
// the front of the queue, to be prefilled again with all they have
// generated (their published blocks often still cached), then continue.
// Preemption is invisible in the stream: no token is sent twice, and the
// sampler (seed, penalties) carries on where it was. The oldest sequence is
// never preempted, and one request always fits (max_context() is at most
// the cache), so every request finishes. When the waiting queue is full,
// submit() returns kResourceExhausted (the API answers 429); a request that
// could never fit the cache is kInvalidArgument.
//
// Errors reach a request as a final event: a forward failure (kInternal from
// the backend) ends every request in that batch, and `healthy()` turns false
// until a later step succeeds.
//
// Thread-safety: submit(), cancel(), stats() and stop() may be called from
// any thread; TokenStream is shared by the scheduler (producer) and one
// consumer.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "airlock/common/status.h"
#include "airlock/engine/decoder.h"
#include "airlock/engine/kv_cache.h"
#include "airlock/engine/model.h"
#include "airlock/engine/constraint.h"
#include "airlock/engine/sampler.h"

namespace airlock::engine {

using Clock = std::chrono::steady_clock;

struct GenerationRequest {
  std::vector<std::int32_t> prompt;  // at least one token
  SamplingParams sampling;
  int max_tokens = 16;               // > 0
  std::vector<std::int32_t> stop_tokens;  // end the sequence (not emitted)
  // Constrained decoding (constraint.h): asked for the allowed tokens
  // before each token is chosen, told the token after; null: none. Used by
  // the scheduler's thread only.
  std::shared_ptr<TokenConstraint> constraint;
  // Cached prompt blocks are shared only between requests of one scope
  // (KvCache::add_sequence).
  std::uint64_t cache_scope = 0;
};

enum class FinishReason { kNone, kStop, kLength, kCancelled, kError };

// One event per generated token; the last event has finish != kNone.
struct TokenEvent {
  std::optional<SampledToken> token;
  FinishReason finish = FinishReason::kNone;
  Status error;  // set when finish == kError
};

// The per-request channel. The scheduler pushes; one consumer pops (pop()
// and pop_until() one after the other, never at the same time).
class TokenStream {
 public:
  // Waits up to `timeout` for events; returns those available (empty on
  // timeout).
  std::vector<TokenEvent> pop(std::chrono::milliseconds timeout);
  // Waits until `deadline` or until the request's last event is queued,
  // without waking for the tokens before it; returns every queued event.
  // (A consumer that writes tokens out in batches wakes once per batch.)
  // Once the last event has been queued it returns at once, empty after
  // the events have been taken.
  std::vector<TokenEvent> pop_until(Clock::time_point deadline);
  // Asks the scheduler to stop this request; its blocks are freed at the
  // start of the next step and a final kCancelled event follows.
  void cancel();
  bool cancelled() const;

  // Filled by the scheduler: when the request was queued, admitted, and
  // produced its first token (for the latency histograms).
  Clock::time_point queued_at() const { return queued_at_; }
  std::optional<Clock::time_point> admitted_at() const;
  int prompt_tokens() const { return prompt_tokens_; }
  // Of those, the tokens whose KV came from the prefix cache when the
  // request was first admitted (0 before that).
  int cached_tokens() const;

 private:
  friend class Scheduler;
  void push(TokenEvent e);

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<TokenEvent> events_;
  bool cancelled_ = false;
  bool final_queued_ = false;  // the last event has been pushed (and may have been taken)
  bool gathering_ = false;     // a consumer in pop_until(): wake it for the last event only
  Clock::time_point queued_at_;
  std::optional<Clock::time_point> admitted_at_;
  int prompt_tokens_ = 0;
  int cached_tokens_ = 0;
};

class ThreadPool;

struct SchedulerOptions {
  int kv_blocks = 0;        // KV cache size in blocks of kBlockTokens
  int max_running = 16;     // sequences in one batch
  int max_waiting = 64;     // queued beyond that: kResourceExhausted
  int prefill_chunk = 256;  // prompt tokens per step, all sequences together
  KvType kv_type = KvType::kF32;  // how the KV storage holds keys and values
  // Threads for the CPU work between passes: the constrained sequences'
  // allowed tokens, one sequence per thread. Null: on the scheduler's
  // thread (start(Model&) lends it the model's CPU compute threads).
  std::shared_ptr<ThreadPool> pool;
};

struct SchedulerStats {
  int running = 0;
  int waiting = 0;
  int kv_blocks_total = 0;
  int kv_blocks_used = 0;
  std::uint64_t prompt_tokens = 0;      // processed since start (not again when a preempted request is recomputed)
  std::uint64_t generated_tokens = 0;   // sampled since start
  std::uint64_t steps = 0;
  std::uint64_t failed_steps = 0;
  std::uint64_t prefix_query_tokens = 0;  // prompt tokens looked up in the prefix cache
  std::uint64_t prefix_hit_tokens = 0;    // of those, found (not computed again)
  int kv_blocks_cached = 0;               // published blocks no sequence uses (reusable, evictable)
  std::uint64_t preemptions = 0;          // sequences sent back to wait when blocks ran out
};

class Scheduler {
 public:
  // Allocates the KV storage and starts the scheduler thread. `model` must
  // outlive the scheduler.
  static Result<std::unique_ptr<Scheduler>> start(Model& model, const SchedulerOptions& options);
  // The same over a decoder (a tensor-parallel group), owned.
  static Result<std::unique_ptr<Scheduler>> start(std::unique_ptr<Decoder> decoder, const SchedulerOptions& options);
  ~Scheduler();  // stop(): cancels everything, joins the thread
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  Result<std::shared_ptr<TokenStream>> submit(GenerationRequest request);

  // Stops admitting; requests already running finish (or are cancelled when
  // `grace` runs out); waiting ones get kCancelled. Returns when idle.
  void drain(std::chrono::milliseconds grace);

  SchedulerStats stats() const;
  // False after a failed forward step, until one succeeds.
  bool healthy() const;
  // When the last forward step succeeded (steady clock); nullopt before any.
  std::optional<Clock::time_point> last_success() const;
  // The most tokens (prompt + generated) one request can have.
  int max_context() const { return max_context_; }
  const SchedulerOptions& options() const { return options_; }

 private:
  struct Sequence;
  Scheduler(std::unique_ptr<Decoder> decoder, const SchedulerOptions& options);
  void run();
  void step(std::unique_lock<std::mutex>& lock);
  // Tokens `s` puts in this step's batch (a prompt chunk takes from
  // *prefill_budget; 0 when the budget is spent).
  int step_tokens(const Sequence& s, int* prefill_budget) const;
  // Attaches the cached blocks of what `s` has to prefill (its last token is
  // always computed, for its logits) and sets n_prefilled to them.
  void attach_cached(Sequence& s);
  void preempt(Sequence& s);
  void finish(Sequence& s, FinishReason reason, Status error = Status::ok());

  std::unique_ptr<Decoder> decoder_;
  SchedulerOptions options_;
  KvCache cache_;
  int max_context_ = 0;

  mutable std::mutex mu_;
  std::condition_variable wake_;
  std::deque<std::unique_ptr<Sequence>> waiting_;   // guarded by mu_
  std::vector<std::unique_ptr<Sequence>> running_;  // scheduler thread only (sizes mirrored in stats_)
  SchedulerStats stats_;                            // guarded by mu_
  bool healthy_ = true;                             // guarded by mu_
  std::optional<Clock::time_point> last_success_;   // guarded by mu_
  bool admitting_ = true;                           // guarded by mu_
  bool stopping_ = false;                           // guarded by mu_
  int next_seq_id_ = 0;
  std::uint64_t fail_from_ = UINT64_MAX, fail_to_ = 0;  // test hook (AIRLOCK_TEST_HOOKS builds only)
  std::chrono::milliseconds step_delay_{0};              // test hook (AIRLOCK_TEST_HOOKS builds only)
  std::thread thread_;
};

}  // namespace airlock::engine
