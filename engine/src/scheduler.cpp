#include "airlock/engine/scheduler.h"

#include <pthread.h>

#include <algorithm>
#include <cstdlib>
#include <exception>
#include <new>
#include <span>

#include "airlock/engine/thread_pool.h"

namespace airlock::engine {

// ---------------------------------------------------------------- TokenStream

namespace {
std::vector<TokenEvent> take(std::deque<TokenEvent>& events) {
  std::vector<TokenEvent> out(std::make_move_iterator(events.begin()), std::make_move_iterator(events.end()));
  events.clear();
  return out;
}
}  // namespace

std::vector<TokenEvent> TokenStream::pop(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, timeout, [this] { return !events_.empty(); });
  return take(events_);
}

std::vector<TokenEvent> TokenStream::pop_until(Clock::time_point deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  gathering_ = true;
  cv_.wait_until(lock, deadline, [this] { return final_queued_; });
  gathering_ = false;
  return take(events_);
}

void TokenStream::cancel() {
  std::lock_guard<std::mutex> lock(mu_);
  cancelled_ = true;
}

bool TokenStream::cancelled() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cancelled_;
}

std::optional<Clock::time_point> TokenStream::admitted_at() const {
  std::lock_guard<std::mutex> lock(mu_);
  return admitted_at_;
}

int TokenStream::cached_tokens() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cached_tokens_;
}

void TokenStream::push(TokenEvent e) {
  bool wake = true;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const bool final = e.finish != FinishReason::kNone;
    final_queued_ = final_queued_ || final;
    wake = final || !gathering_;
    events_.push_back(std::move(e));
  }
  if (wake) cv_.notify_all();
}

// ---------------------------------------------------------------- Scheduler

namespace {
// What an exception thrown in `where` becomes: out of memory, or the error
// it says.
Status failure(const std::exception& e, const std::string& where) {
  if (dynamic_cast<const std::bad_alloc*>(&e) != nullptr) return resource_exhausted("out of memory in " + where);
  return internal_error(where + ": " + e.what());
}
}  // namespace

struct Scheduler::Sequence {
  int id = 0;
  GenerationRequest request;
  std::shared_ptr<TokenStream> stream;
  std::unique_ptr<Sampler> sampler;
  std::vector<std::int32_t> history;  // prompt, then generated tokens
  // Tokens of history to put in the cache before decoding: the prompt, or,
  // after a preemption, everything generated so far too (recomputed).
  int prefill_len = 0;
  int n_prefilled = 0;  // of those, already in the cache
  int prompt_counted = 0;  // prompt positions counted in stats_.prompt_tokens (not again after a preemption)
  int n_generated = 0;
  bool in_cache = false;
  bool admitted_once = false;
  bool looked_again = false;  // its second prefix lookup's hits are counted (once in its life)
  bool leaving = false;       // cancelled while waiting: finished, removed from the queue next
};

Result<std::unique_ptr<Scheduler>> Scheduler::start(Model& model, const SchedulerOptions& options) {
  SchedulerOptions o = options;
  if (!o.pool) o.pool = model.backend().cpu_pool();
  return start(make_single_decoder(model), o);
}

Result<std::unique_ptr<Scheduler>> Scheduler::start(std::unique_ptr<Decoder> decoder, const SchedulerOptions& options) {
  if (options.kv_blocks <= 0 || options.max_running <= 0 || options.max_waiting < 0 || options.prefill_chunk <= 0)
    return invalid_argument("scheduler: kv_blocks, max_running and prefill_chunk must be positive");
  AIRLOCK_RETURN_IF_ERROR(decoder->alloc_kv(options.kv_blocks, options.kv_type));
  std::unique_ptr<Scheduler> s(new Scheduler(std::move(decoder), options));
  s->thread_ = std::thread([p = s.get()] { pthread_setname_np(pthread_self(), "airlock-sched"); p->run(); });
  return s;
}

Scheduler::Scheduler(std::unique_ptr<Decoder> decoder, const SchedulerOptions& options)
    : decoder_(std::move(decoder)), options_(options), cache_(options.kv_blocks) {
  max_context_ = std::min(decoder_->params().n_ctx_train, options.kv_blocks * kBlockTokens);
  stats_.kv_blocks_total = options.kv_blocks;
#if defined(AIRLOCK_TEST_HOOKS)
  // Test-only fault injection (builds with AIRLOCK_TEST_HOOKS): forward
  // steps numbered FROM..TO (counting from 1) fail as a device error would.
  if (const char* v = std::getenv("AIRLOCK_TEST_FAIL_STEPS")) {
    char* end = nullptr;
    fail_from_ = std::strtoull(v, &end, 10);
    fail_to_ = end != nullptr && *end == '-' ? std::strtoull(end + 1, nullptr, 10) : fail_from_;
  }
  // Every forward step takes at least this long, so that tests can act
  // in the middle of a generation on any machine.
  if (const char* v = std::getenv("AIRLOCK_TEST_STEP_DELAY_MS")) step_delay_ = std::chrono::milliseconds(std::atoi(v));
#endif
}

Scheduler::~Scheduler() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    admitting_ = false;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

Result<std::shared_ptr<TokenStream>> Scheduler::submit(GenerationRequest request) {
  if (request.prompt.empty()) return invalid_argument("the prompt has no tokens");
  if (request.max_tokens <= 0) return invalid_argument("max_tokens must be positive");
  for (std::int32_t t : request.prompt)
    if (t < 0 || t >= decoder_->params().n_vocab) return invalid_argument("prompt token id out of range");
  AIRLOCK_RETURN_IF_ERROR(validate(request.sampling));
  const std::int64_t total = static_cast<std::int64_t>(request.prompt.size()) + request.max_tokens;
  if (total > max_context_)
    return invalid_argument("prompt (" + std::to_string(request.prompt.size()) + " tokens) plus max_tokens (" +
                            std::to_string(request.max_tokens) + ") exceeds the context of " +
                            std::to_string(max_context_) + " tokens");
  auto seq = std::make_unique<Sequence>();
  seq->stream = std::make_shared<TokenStream>();
  seq->stream->queued_at_ = Clock::now();
  seq->stream->prompt_tokens_ = static_cast<int>(request.prompt.size());
  seq->sampler = std::make_unique<Sampler>(request.sampling);
  seq->history = request.prompt;
  seq->prefill_len = static_cast<int>(request.prompt.size());
  seq->request = std::move(request);
  std::shared_ptr<TokenStream> stream = seq->stream;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!admitting_) return unavailable("the server is shutting down");
    if (static_cast<int>(waiting_.size()) >= options_.max_waiting)
      return resource_exhausted("the request queue is full (" + std::to_string(options_.max_waiting) + " waiting)");
    seq->id = next_seq_id_++;
    waiting_.push_back(std::move(seq));
    stats_.waiting = static_cast<int>(waiting_.size());
  }
  wake_.notify_all();
  return stream;
}

int Scheduler::step_tokens(const Sequence& s, int* prefill_budget) const {
  if (s.n_prefilled < s.prefill_len) {
    const int take = std::min(s.prefill_len - s.n_prefilled, *prefill_budget);
    *prefill_budget -= take;
    return take;
  }
  return 1;
}

void Scheduler::attach_cached(Sequence& s) {
  const int hit = cache_.attach_prefix(s.id, std::span<const std::int32_t>(s.history.data(), s.prefill_len),
                                       (s.prefill_len - 1) / kBlockTokens);
  s.n_prefilled = hit * kBlockTokens;
}

void Scheduler::preempt(Sequence& s) {
  // Its blocks go back (published ones stay cached, so the recomputation
  // often finds them); it waits at the front of the queue, to be
  // prefilled again with everything it has generated.
  cache_.remove_sequence(s.id);
  s.in_cache = false;
  s.prefill_len = static_cast<int>(s.history.size());
  s.n_prefilled = 0;
  ++stats_.preemptions;
}

void Scheduler::finish(Sequence& s, FinishReason reason, Status error) {
  if (s.in_cache) {
    cache_.remove_sequence(s.id);
    s.in_cache = false;
  }
  TokenEvent e;
  e.finish = reason;
  e.error = std::move(error);
  s.stream->push(std::move(e));
}

void Scheduler::drain(std::chrono::milliseconds grace) {
  const Clock::time_point deadline = Clock::now() + grace;
  std::unique_lock<std::mutex> lock(mu_);
  admitting_ = false;
  // Requests that never ran are cancelled; one preempted while running
  // waits to be admitted again (step() still admits those) and finishes.
  for (auto& s : waiting_)
    if (!s->admitted_once) s->stream->cancel();
  wake_.notify_all();
  while (stats_.running > 0 || !waiting_.empty()) {
    if (Clock::now() >= deadline) {
      for (auto& s : running_) s->stream->cancel();
      for (auto& s : waiting_) s->stream->cancel();
    }
    lock.unlock();
    wake_.notify_all();
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    lock.lock();
  }
}

SchedulerStats Scheduler::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

bool Scheduler::healthy() const {
  std::lock_guard<std::mutex> lock(mu_);
  return healthy_;
}

std::optional<Clock::time_point> Scheduler::last_success() const {
  std::lock_guard<std::mutex> lock(mu_);
  return last_success_;
}

void Scheduler::run() {
  decoder_->bind_thread();
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    wake_.wait(lock, [this] { return stopping_ || !waiting_.empty() || !running_.empty(); });
    if (stopping_) {
      for (auto& s : waiting_) finish(*s, FinishReason::kCancelled);
      waiting_.clear();
      for (auto& s : running_) finish(*s, FinishReason::kCancelled);
      running_.clear();
      stats_.running = stats_.waiting = 0;
      stats_.kv_blocks_used = 0;
      return;
    }
    // The step catches what its own work throws; what is left (an
    // allocation failing while it hands out tokens) fails what is running
    // rather than ending the process.
    try {
      step(lock);
    } catch (const std::exception& e) {
      if (!lock.owns_lock()) lock.lock();
      const Status st = failure(e, "a scheduler step");
      ++stats_.failed_steps;
      healthy_ = false;
      for (auto& s : running_) {
        try {
          finish(*s, FinishReason::kError, st);
        } catch (...) {  // its stream could not take the event; it is dropped all the same
        }
      }
      running_.clear();
      stats_.running = 0;
    }
  }
}

// Called and returns with `lock` held; the forward pass runs unlocked.
void Scheduler::step(std::unique_lock<std::mutex>& lock) {
  // 1. Cancelled requests leave first, so their blocks count for admission.
  for (auto& s : running_)
    if (s->stream->cancelled()) finish(*s, FinishReason::kCancelled);
  std::erase_if(running_, [](const auto& s) { return !s->in_cache; });
  // Marked first, so that a cancel landing between the passes is left for
  // the next step rather than removed untold; finished (which may throw:
  // the queue is intact then, and the next step finishes them again);
  // then removed (nothing that throws).
  for (auto& s : waiting_) s->leaving = s->leaving || s->stream->cancelled();
  for (auto& s : waiting_)
    if (s->leaving) finish(*s, FinishReason::kCancelled);
  std::erase_if(waiting_, [](const auto& s) { return s->leaving; });

  // 2. The blocks this step takes for the running sequences (a decode
  //    token each, prompt chunks within the prefill budget, oldest first);
  //    when they do not fit, the newest are preempted until they do.
  //    Kept per sequence, in running_ order, so that preempting the last
  //    or admitting one more updates the total without a rescan.
  //    First, a sequence about to compute its first prompt tokens this
  //    step looks for cached blocks again: an identical prompt admitted in
  //    an earlier step (the choices of an n > 1 request, a shared system
  //    prompt) may have published them since, prefilled oldest first. This
  //    comes before the count: the blocks it takes leave the free count,
  //    and what is left of its prompt is what it needs.
  {
    int look_budget = options_.prefill_chunk;
    for (auto& s : running_) {
      if (s->n_prefilled == 0 && look_budget > 0 && s->prefill_len > kBlockTokens) {
        attach_cached(*s);
        // Counted once, for a first prefill (a resumed sequence's query was
        // not counted again either).
        if (s->prompt_counted == 0 && !std::exchange(s->looked_again, true)) {
          stats_.prefix_hit_tokens += static_cast<std::uint64_t>(s->n_prefilled);
          std::lock_guard<std::mutex> slock(s->stream->mu_);
          s->stream->cached_tokens_ = s->n_prefilled;
        }
      }
      (void)step_tokens(*s, &look_budget);
    }
  }
  struct StepNeed {
    int blocks, budget_taken;
  };
  std::vector<StepNeed> needs;
  int budget = options_.prefill_chunk, need = 0;
  auto add_need = [&](const Sequence& s) {
    const int before = budget;
    const int blocks = cache_.blocks_needed(s.id, step_tokens(s, &budget));
    needs.push_back({blocks, before - budget});
    need += blocks;
  };
  for (const auto& s : running_) add_need(*s);
  while (need > cache_.n_free_blocks() && running_.size() > 1) {
    need -= needs.back().blocks;
    budget += needs.back().budget_taken;
    needs.pop_back();
    std::unique_ptr<Sequence> s = std::move(running_.back());
    running_.pop_back();
    preempt(*s);
    waiting_.push_front(std::move(s));
  }

  // 3. Admission, first come first served, while the whole of a request's
  //    tokens so far (its prompt, or all it has after a preemption) and its
  //    next one fit beside this step's need, less a margin of 1% of the
  //    cache (so that a request is not admitted only to be preempted).
  //    Cached prefix blocks count as free: they are taken when needed.
  //    While draining, only requests preempted mid-run are admitted again.
  const int margin = std::max(1, options_.kv_blocks / 100);
  while (!waiting_.empty() && static_cast<int>(running_.size()) < options_.max_running) {
    Sequence& w = *waiting_.front();
    if (!admitting_ && !w.admitted_once) break;
    const int want = KvCache::blocks_for(static_cast<int>(w.history.size()) + 1);
    if (!running_.empty() && need + want + margin > cache_.n_free_blocks()) break;
    // Into running_ before anything that can throw: a failure below (an
    // allocation) is then finished by run()'s catch, its blocks freed,
    // rather than the sequence dropped with no final event.
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
    Sequence* s = running_.back().get();
    (void)cache_.add_sequence(s->id, s->request.cache_scope);  // ids are unique, so this cannot fail
    s->in_cache = true;
    attach_cached(*s);
    if (!s->admitted_once) {
      s->admitted_once = true;
      stats_.prefix_query_tokens += static_cast<std::uint64_t>(s->prefill_len);
      stats_.prefix_hit_tokens += static_cast<std::uint64_t>(s->n_prefilled);
      std::lock_guard<std::mutex> slock(s->stream->mu_);
      s->stream->admitted_at_ = Clock::now();
      s->stream->cached_tokens_ = s->n_prefilled;
    }
    add_need(*s);
  }
  stats_.running = static_cast<int>(running_.size());
  stats_.waiting = static_cast<int>(waiting_.size());
  stats_.kv_blocks_used = options_.kv_blocks - cache_.n_free_blocks();
  if (running_.empty()) return;

  // 4. One batch: a decode token per generating sequence, prompt chunks
  //    within the prefill budget.
  Batch batch;
  std::vector<Sequence*> wants;  // the sequence of each logits row
  int prefill_budget = options_.prefill_chunk;
  int n_prompt_tokens = 0;
  for (auto& s : running_) {
    if (s->n_prefilled < s->prefill_len) {
      const int take = step_tokens(*s, &prefill_budget);
      if (take == 0) continue;
      for (int i = 0; i < take; ++i) {
        const int pos = s->n_prefilled + i;
        const bool last = pos + 1 == s->prefill_len;
        batch.add(s->history[static_cast<std::size_t>(pos)], pos, s->id, last);
        if (last) wants.push_back(s.get());
      }
      const int prompt_end = std::min(s->n_prefilled + take, static_cast<int>(s->request.prompt.size()));
      n_prompt_tokens += std::max(0, prompt_end - std::max(s->n_prefilled, s->prompt_counted));
      s->prompt_counted = std::max(s->prompt_counted, prompt_end);
    } else {
      const int pos = static_cast<int>(s->history.size()) - 1;
      batch.add(s->history.back(), pos, s->id, true);
      wants.push_back(s.get());
    }
  }

  // What each row's sampler needs besides the logits; the choice itself is
  // made by the backend, where the logits are.
  std::vector<SampleRow> rows;
  rows.reserve(wants.size());
  for (Sequence* s : wants) rows.push_back(s->sampler->next_row(s->history, s->request.prompt.size()));

  lock.unlock();
  // An exception out of this thread would end the process (std::terminate):
  // the step fails instead, as a failed forward pass does (its sequences end
  // with the error, the scheduler reports unhealthy until a step succeeds).
  Status st;
  std::vector<SampledToken> sampled;
  std::vector<Status> row_errors(wants.size());  // per row: its own failure (a constraint that threw)
  try {
    // Constrained sequences' allowed tokens, outside the lock (a pass over
    // the vocabulary each), on the pool's threads when there are several.
    // Each constraint is its own; what they share (vocabulary, grammar) is
    // immutable.
    std::vector<std::size_t> constrained;
    for (std::size_t i = 0; i < wants.size(); ++i)
      if (wants[i]->request.constraint) constrained.push_back(i);
    std::vector<std::shared_ptr<std::vector<std::uint64_t>>> masks(constrained.size());
    // A constraint that throws fails its own sequence, not the step: its
    // row is sampled unconstrained and the token dropped (below).
    auto work_out = [&](std::int64_t begin, std::int64_t end) {
      for (auto k = static_cast<std::size_t>(begin); k < static_cast<std::size_t>(end); ++k) {
        try {
          auto mask = std::make_shared<std::vector<std::uint64_t>>();
          wants[constrained[k]]->request.constraint->allowed(mask.get());
          masks[k] = std::move(mask);
        } catch (const std::exception& e) {
          row_errors[constrained[k]] = failure(e, "the constraint");
        }
      }
    };
    if (options_.pool && constrained.size() > 1)
      options_.pool->parallel_for(static_cast<std::int64_t>(constrained.size()), work_out);
    else
      work_out(0, static_cast<std::int64_t>(constrained.size()));
    for (std::size_t k = 0; k < constrained.size(); ++k) rows[constrained[k]].allowed = std::move(masks[k]);
    PassOutput out;
    out.rows = rows;
    out.tokens = &sampled;
    st = decoder_->forward(batch, cache_, out);
  } catch (const std::exception& e) {
    st = failure(e, "a forward pass");
  }
  if (step_delay_.count() > 0) std::this_thread::sleep_for(step_delay_);  // test hook (zero unless set)
  lock.lock();

  ++stats_.steps;
  if (stats_.steps >= fail_from_ && stats_.steps <= fail_to_) st = internal_error("injected forward failure (test hook)");
  if (!st.is_ok()) {
    ++stats_.failed_steps;
    healthy_ = false;
    for (auto& s : running_) finish(*s, FinishReason::kError, st);
    running_.clear();
  } else {
    healthy_ = true;
    last_success_ = Clock::now();
    stats_.prompt_tokens += static_cast<std::uint64_t>(n_prompt_tokens);
    for (auto& s : running_) {
      if (s->n_prefilled < s->prefill_len) {
        // Count what this step prefilled for this sequence.
        int in_batch = 0;
        for (std::size_t i = 0; i < batch.size(); ++i) in_batch += batch.seq_ids[i] == s->id;
        s->n_prefilled += in_batch;
      }
    }
    // Make the new full blocks reusable by later requests (before any
    // sequence that finishes below releases them).
    for (auto& s : running_) cache_.publish(s->id, s->history);
    for (std::size_t row = 0; row < wants.size(); ++row) {
      Sequence& s = *wants[row];
      if (!row_errors[row].is_ok()) {
        finish(s, FinishReason::kError, row_errors[row]);
        continue;
      }
      SampledToken t = std::move(sampled[row]);
      ++stats_.generated_tokens;
      if (s.request.constraint) {
        try {
          s.request.constraint->accept(t.token);
        } catch (const std::exception& e) {
          finish(s, FinishReason::kError, failure(e, "the constraint"));
          continue;
        }
      }
      if (std::find(s.request.stop_tokens.begin(), s.request.stop_tokens.end(), t.token) !=
          s.request.stop_tokens.end()) {
        finish(s, FinishReason::kStop);
        continue;
      }
      s.history.push_back(t.token);
      ++s.n_generated;
      TokenEvent e;
      e.token = std::move(t);
      if (s.n_generated >= s.request.max_tokens) e.finish = FinishReason::kLength;
      s.stream->push(std::move(e));
      if (s.n_generated >= s.request.max_tokens) {
        cache_.remove_sequence(s.id);
        s.in_cache = false;
      }
    }
    std::erase_if(running_, [](const auto& s) { return !s->in_cache; });
  }
  stats_.running = static_cast<int>(running_.size());
  stats_.kv_blocks_used = options_.kv_blocks - cache_.n_free_blocks();
  stats_.kv_blocks_cached = cache_.n_cached_blocks();
}

}  // namespace airlock::engine
