// Continuous batching: concurrent requests give the same tokens as each run
// alone, admission by KV blocks, queue limits, cancellation, chunked prefill.
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <map>
#include <mutex>
#include <new>
#include <optional>
#include <random>
#include <stdexcept>
#include <thread>

#include "airlock/engine/scheduler.h"
#include "airlock/engine/thread_pool.h"
#include "gguf_writer.h"

namespace airlock::engine {
namespace {

struct Loaded {
  testing::TestModel tm;
  std::unique_ptr<Model> model;
};

Loaded load(int n_ctx = 512) {
  testing::TestModelSpec spec;
  spec.n_vocab = 96;
  spec.n_ctx = n_ctx;
  spec.weight_type = GgmlType::kQ8_0;
  Loaded l;
  l.tm = testing::make_test_model(spec);
  auto f = GgufFile::parse({reinterpret_cast<const std::uint8_t*>(l.tm.gguf.data()), l.tm.gguf.size()});
  EXPECT_TRUE(f.is_ok()) << f.status().to_string();
  auto m = Model::from_gguf(std::move(*f), make_cpu_backend(std::make_shared<ThreadPool>(2)));
  EXPECT_TRUE(m.is_ok()) << m.status().to_string();
  l.model = std::move(*m);
  return l;
}

std::vector<std::int32_t> prompt(int n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::int32_t> t(static_cast<std::size_t>(n));
  for (auto& x : t) x = static_cast<std::int32_t>(rng() % 96);
  return t;
}

struct Outcome {
  std::vector<std::int32_t> tokens;
  FinishReason finish = FinishReason::kNone;
  Status error;
};

Outcome collect(TokenStream& s) {
  Outcome o;
  while (o.finish == FinishReason::kNone) {
    for (TokenEvent& e : s.pop(std::chrono::milliseconds(2000))) {
      if (e.token) o.tokens.push_back(e.token->token);
      if (e.finish != FinishReason::kNone) {
        o.finish = e.finish;
        o.error = e.error;
      }
    }
  }
  return o;
}

GenerationRequest greedy(std::vector<std::int32_t> p, int max_tokens) {
  GenerationRequest r;
  r.prompt = std::move(p);
  r.max_tokens = max_tokens;
  r.sampling.temperature = 0;
  return r;
}

SchedulerOptions opts(int blocks) {
  SchedulerOptions o;
  o.kv_blocks = blocks;
  return o;
}

// A scheduler whose steps take at least 2 ms (the test hook, in builds
// with AIRLOCK_TEST_HOOKS), so that a test can act between steps on a
// busy machine.
Result<std::unique_ptr<Scheduler>> start_with_slow_steps(Model& m, const SchedulerOptions& o) {
#if defined(AIRLOCK_TEST_HOOKS)
  ::setenv("AIRLOCK_TEST_STEP_DELAY_MS", "2", 1);
#endif
  auto s = Scheduler::start(m, o);
  ::unsetenv("AIRLOCK_TEST_STEP_DELAY_MS");
  return s;
}

Outcome run_alone(Model& m, const GenerationRequest& r) {
  auto s = Scheduler::start(m, opts(64));
  EXPECT_TRUE(s.is_ok());
  auto stream = (*s)->submit(r);
  EXPECT_TRUE(stream.is_ok()) << stream.status().to_string();
  return collect(**stream);
}

TEST(SchedulerTest, ConcurrentRequestsMatchSoloRuns) {
  Loaded l = load();
  std::vector<GenerationRequest> reqs;
  for (int i = 0; i < 8; ++i) reqs.push_back(greedy(prompt(3 + 9 * i, 100 + static_cast<std::uint32_t>(i)), 12 + i));
  std::vector<Outcome> solo;
  for (const auto& r : reqs) solo.push_back(run_alone(*l.model, r));

  SchedulerOptions o = opts(64);
  o.prefill_chunk = 16;  // long prompts are split across steps, interleaved with decodes
  auto s = Scheduler::start(*l.model, o);
  ASSERT_TRUE(s.is_ok());
  std::vector<std::shared_ptr<TokenStream>> streams;
  for (const auto& r : reqs) {
    auto st = (*s)->submit(r);
    ASSERT_TRUE(st.is_ok()) << st.status().to_string();
    streams.push_back(*st);
  }
  for (std::size_t i = 0; i < reqs.size(); ++i) {
    Outcome got = collect(*streams[i]);
    EXPECT_EQ(got.finish, FinishReason::kLength);
    EXPECT_EQ(got.tokens, solo[i].tokens) << "request " << i;
    EXPECT_EQ(static_cast<int>(got.tokens.size()), reqs[i].max_tokens);
  }
  SchedulerStats st = (*s)->stats();
  EXPECT_EQ(st.kv_blocks_used, 0);
  EXPECT_EQ(st.running, 0);
  EXPECT_GT(st.steps, 0u);
  EXPECT_EQ(st.generated_tokens, 8u * 12 + 28);
  EXPECT_TRUE((*s)->healthy());
}

TEST(SchedulerTest, AdmissionWaitsForBlocksAndNeverOverruns) {
  Loaded l = load();
  // 6 blocks; each request needs blocks_for(20 + 20) = 3: two run, the rest wait.
  auto s = Scheduler::start(*l.model, opts(6));
  ASSERT_TRUE(s.is_ok());
  std::vector<std::shared_ptr<TokenStream>> streams;
  std::vector<GenerationRequest> reqs;
  for (int i = 0; i < 5; ++i) {
    reqs.push_back(greedy(prompt(20, 7 + static_cast<std::uint32_t>(i)), 20));
    auto st = (*s)->submit(reqs.back());
    ASSERT_TRUE(st.is_ok());
    streams.push_back(*st);
  }
  int max_running = 0;
  for (int i = 0; i < 200 && (*s)->stats().waiting + (*s)->stats().running > 0; ++i) {
    SchedulerStats st = (*s)->stats();
    max_running = std::max(max_running, st.running);
    EXPECT_LE(st.kv_blocks_used, 6);
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_LE(max_running, 2);
  // Every stream to its end before any solo run: a Model runs one pass at
  // a time, and a second scheduler on it while the first still runs (the
  // loop above gives up after 200 ms on a loaded machine) raced on its
  // buffers and its thread pool, and once hung.
  std::vector<Outcome> got;
  for (auto& st : streams) got.push_back(collect(*st));
  s->reset();
  for (std::size_t i = 0; i < streams.size(); ++i) EXPECT_EQ(got[i].tokens, run_alone(*l.model, reqs[i]).tokens);
}

// Admission takes what a request needs now, not prompt + max_tokens: four
// requests of 20 + 60 tokens (5 blocks each) share an 8-block cache, run
// together, and when their blocks run out the newest are preempted and
// recomputed later. Each still gets exactly the tokens it gets alone
// (greedy, and seeded sampling with penalties: the sampler carries on), no
// step ever takes more blocks than the cache has, and the cache is empty
// at the end.
TEST(SchedulerTest, PreemptedRequestsResumeWithTheSameTokens) {
  Loaded l = load();
  std::vector<GenerationRequest> reqs;
  for (int i = 0; i < 4; ++i) {
    GenerationRequest r = greedy(prompt(20, 40 + static_cast<std::uint32_t>(i)), 60);
    if (i % 2) {
      r.sampling.temperature = 0.8f;
      r.sampling.presence_penalty = 0.5f;
      r.sampling.seed = 99 + static_cast<std::uint64_t>(i);
    }
    reqs.push_back(r);
  }
  std::vector<Outcome> solo;
  for (const auto& r : reqs) solo.push_back(run_alone(*l.model, r));
  // Steps of at least 2 ms (test hook), so that the stats watched below
  // see the requests running side by side.
  auto s = start_with_slow_steps(*l.model, opts(8));
  ASSERT_TRUE(s.is_ok());
  std::vector<std::shared_ptr<TokenStream>> streams;
  for (const auto& r : reqs) {
    auto st = (*s)->submit(r);
    ASSERT_TRUE(st.is_ok()) << st.status().to_string();
    streams.push_back(*st);
  }
  int max_running = 0;
  std::atomic<bool> done{false};
  std::thread watch([&] {
    while (!done) {
      SchedulerStats st = (*s)->stats();
      max_running = std::max(max_running, st.running);
      EXPECT_LE(st.kv_blocks_used, 8);
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  });
  std::vector<Outcome> got;
  for (auto& st : streams) got.push_back(collect(*st));
  done = true;
  watch.join();
  for (std::size_t i = 0; i < reqs.size(); ++i) {
    EXPECT_EQ(got[i].finish, FinishReason::kLength) << i;
    EXPECT_EQ(got[i].tokens, solo[i].tokens) << "request " << i;
  }
  const SchedulerStats st = (*s)->stats();
  EXPECT_GT(st.preemptions, 0u);
  EXPECT_GE(max_running, 2);  // more than one at a time, though all four would need 20 blocks
  EXPECT_EQ(st.generated_tokens, 4u * 60);
  EXPECT_EQ(st.prompt_tokens, 4u * 20);  // recomputed tokens are not prompt tokens again
  EXPECT_EQ(st.kv_blocks_used, 0);  // cached prefix blocks are free
}

// Draining while the cache is short: a request preempted after the drain
// began is admitted again and finishes (it was running, not waiting), and
// drain() returns; before, it sat in the queue, never admitted nor
// cancelled, and drain() never returned.
TEST(SchedulerTest, DrainFinishesRequestsPreemptedWhileDraining) {
  Loaded l = load();
  auto s = start_with_slow_steps(*l.model, opts(8));
  ASSERT_TRUE(s.is_ok());
  std::vector<std::shared_ptr<TokenStream>> streams;
  for (int i = 0; i < 3; ++i) {
    auto st = (*s)->submit(greedy(prompt(20, 60 + static_cast<std::uint32_t>(i)), 60));
    ASSERT_TRUE(st.is_ok());
    streams.push_back(*st);
  }
  // Drain once all three run side by side, before any preemption (3 x 2
  // blocks of 8 at first; 3 x 5 needed by the end).
  for (int i = 0; i < 2000 && (*s)->stats().running < 3; ++i) std::this_thread::sleep_for(std::chrono::microseconds(500));
  ASSERT_EQ((*s)->stats().running, 3);
  ASSERT_EQ((*s)->stats().preemptions, 0u);
  (*s)->drain(std::chrono::seconds(60));
  EXPECT_GT((*s)->stats().preemptions, 0u);
  for (auto& st : streams) {
    Outcome o = collect(*st);
    EXPECT_EQ(o.finish, FinishReason::kLength);
    EXPECT_EQ(o.tokens.size(), 60u);
  }
  EXPECT_EQ((*s)->stats().waiting, 0);
  EXPECT_EQ((*s)->stats().running, 0);
}

TEST(SchedulerTest, RefusesWhatCanNeverFitAndAFullQueue) {
  Loaded l = load(128);
  SchedulerOptions o = opts(4);  // 64 positions
  o.max_waiting = 2;
  o.max_running = 1;
#if defined(AIRLOCK_TEST_HOOKS)
  // Steps of at least 5 ms: the running request (50 tokens) outlasts the
  // submissions below even when this thread is descheduled for a while on
  // a loaded machine (without it, it could finish first and free its place).
  setenv("AIRLOCK_TEST_STEP_DELAY_MS", "5", 1);
#endif
  auto s = Scheduler::start(*l.model, o);
#if defined(AIRLOCK_TEST_HOOKS)
  unsetenv("AIRLOCK_TEST_STEP_DELAY_MS");
#endif
  ASSERT_TRUE(s.is_ok());
  EXPECT_EQ((*s)->max_context(), 64);
  EXPECT_EQ((*s)->submit(greedy(prompt(60, 1), 10)).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ((*s)->submit(greedy({}, 10)).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ((*s)->submit(greedy({1, 2, 500}, 10)).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ((*s)->submit(greedy({1, 2}, 0)).status().code(), StatusCode::kInvalidArgument);
  GenerationRequest bad = greedy({1, 2}, 4);
  bad.sampling.top_p = 2.0f;
  EXPECT_EQ((*s)->submit(bad).status().code(), StatusCode::kInvalidArgument);

  // One runs (all 4 blocks), two wait, the fourth is refused.
  std::vector<std::shared_ptr<TokenStream>> ok;
  Status refused;
  for (int i = 0; i < 4 && refused.is_ok(); ++i) {
    auto st = (*s)->submit(greedy(prompt(10, 3), 50));
    if (st.is_ok()) ok.push_back(*st);
    else refused = st.status();
  }
  EXPECT_EQ(refused.code(), StatusCode::kResourceExhausted);
  EXPECT_GE(ok.size(), 2u);
  for (auto& st : ok) EXPECT_EQ(collect(*st).finish, FinishReason::kLength);
}

TEST(SchedulerTest, CancelFreesBlocksWithinAStep) {
  Loaded l = load();
  // Steps of at least 2 ms (test hook): without them a busy machine could
  // let all 400 tokens and the last event through before the first pop.
  auto s = start_with_slow_steps(*l.model, opts(32));
  ASSERT_TRUE(s.is_ok());
  auto st = (*s)->submit(greedy(prompt(40, 9), 400));
  ASSERT_TRUE(st.is_ok());
  auto first = (*st)->pop(std::chrono::milliseconds(5000));
  ASSERT_FALSE(first.empty());
  ASSERT_EQ(first.back().finish, FinishReason::kNone) << "the request ended before it could be cancelled";
  EXPECT_GT((*s)->stats().kv_blocks_used, 0);
  (*st)->cancel();
  Outcome rest = collect(**st);
  EXPECT_EQ(rest.finish, FinishReason::kCancelled);
  EXPECT_LT(rest.tokens.size(), 399u);
  for (int i = 0; i < 100 && (*s)->stats().kv_blocks_used != 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  EXPECT_EQ((*s)->stats().kv_blocks_used, 0);
  EXPECT_EQ((*s)->stats().running, 0);
}

// pop_until() returns when the last event is queued (well before a far
// deadline), with every event of the request; at a past deadline it returns
// what is queued without waiting.
TEST(SchedulerTest, PopUntilReturnsAtTheLastEventWithEverything) {
  Loaded l = load();
  const GenerationRequest r = greedy(prompt(12, 4), 40);
  const Outcome alone = run_alone(*l.model, r);
  ASSERT_EQ(alone.tokens.size(), 40u);
#if defined(AIRLOCK_TEST_HOOKS)
  setenv("AIRLOCK_TEST_STEP_DELAY_MS", "20", 1);  // the request takes at least 0.8 s
#endif
  auto s = Scheduler::start(*l.model, opts(32));
#if defined(AIRLOCK_TEST_HOOKS)
  unsetenv("AIRLOCK_TEST_STEP_DELAY_MS");
#endif
  ASSERT_TRUE(s.is_ok());
  auto st = (*s)->submit(r);
  ASSERT_TRUE(st.is_ok());
  std::vector<TokenEvent> events = (*st)->pop_until(Clock::now() - std::chrono::seconds(1));
#if defined(AIRLOCK_TEST_HOOKS)
  EXPECT_TRUE(events.empty() || events.back().finish == FinishReason::kNone);  // it did not wait for the end
#endif
  // A deadline a minute away (the request takes about a second): a
  // pop_until that missed the last event returns only at the deadline.
  const Clock::time_point asked = Clock::now();
  std::vector<TokenEvent> rest = (*st)->pop_until(asked + std::chrono::seconds(60));
  EXPECT_LT(Clock::now() - asked, std::chrono::seconds(30));  // woken by the last event, not the deadline
  events.insert(events.end(), std::make_move_iterator(rest.begin()), std::make_move_iterator(rest.end()));
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back().finish, FinishReason::kLength);
  std::vector<std::int32_t> tokens;
  for (const TokenEvent& e : events)
    if (e.token) tokens.push_back(e.token->token);
  EXPECT_EQ(tokens, alone.tokens);
}

TEST(SchedulerTest, StopTokensEndTheSequenceUnemitted) {
  Loaded l = load();
  GenerationRequest r = greedy(prompt(8, 5), 30);
  Outcome free_run = run_alone(*l.model, r);
  ASSERT_GE(free_run.tokens.size(), 5u);
  r.stop_tokens = {free_run.tokens[4]};
  Outcome stopped = run_alone(*l.model, r);
  EXPECT_EQ(stopped.finish, FinishReason::kStop);
  // Everything before the first occurrence of the stop token, nothing after.
  auto first = std::find(free_run.tokens.begin(), free_run.tokens.end(), free_run.tokens[4]);
  EXPECT_EQ(stopped.tokens, std::vector<std::int32_t>(free_run.tokens.begin(), first));
}

// A constraint is asked before each token and told each token taken; the
// sampler chooses among the allowed only, greedy and drawn, inside a batch
// with unconstrained sequences that it leaves alone.
TEST(SchedulerTest, ConstraintsChooseAmongTheAllowedTokens) {
  struct Multiples : TokenConstraint {
    explicit Multiples(int every) : k(every) {}
    void allowed(std::vector<std::uint64_t>* mask) override {
      mask->assign(2, 0);  // 96 tokens
      for (int t = 0; t < 96; t += k) (*mask)[t / 64] |= std::uint64_t{1} << (t % 64);
      ++asked;
    }
    void accept(std::int32_t token) override { taken.push_back(token); }
    int k;
    int asked = 0;
    std::vector<std::int32_t> taken;
  };
  Loaded l = load();
  GenerationRequest plain = greedy(prompt(12, 9), 20);
  const Outcome free_run = run_alone(*l.model, plain);
  auto s = Scheduler::start(*l.model, opts(64));
  ASSERT_TRUE(s.is_ok());
  std::vector<std::shared_ptr<Multiples>> constraints;
  std::vector<std::shared_ptr<TokenStream>> streams;
  for (int i = 0; i < 4; ++i) {
    GenerationRequest r = greedy(prompt(12, 9), 20);
    if (i % 2 == 1) {
      r.sampling.temperature = 1.0f;
      r.sampling.seed = 42 + static_cast<std::uint64_t>(i);
    }
    constraints.push_back(std::make_shared<Multiples>(i + 2));
    r.constraint = constraints.back();
    streams.push_back(*(*s)->submit(r));
  }
  auto unconstrained = (*s)->submit(plain);
  ASSERT_TRUE(unconstrained.is_ok());
  for (std::size_t i = 0; i < streams.size(); ++i) {
    const Outcome got = collect(*streams[i]);
    ASSERT_EQ(got.tokens.size(), 20u);
    for (std::int32_t t : got.tokens) EXPECT_EQ(t % constraints[i]->k, 0) << "request " << i << " took " << t;
    EXPECT_EQ(constraints[i]->taken, got.tokens);
    EXPECT_EQ(constraints[i]->asked, 20);
  }
  EXPECT_EQ(collect(**unconstrained).tokens, free_run.tokens);
  // Greedy under the constraint is the most likely allowed token: with
  // every token allowed it is the free run.
  GenerationRequest all = plain;
  all.constraint = std::make_shared<Multiples>(1);
  EXPECT_EQ(run_alone(*l.model, all).tokens, free_run.tokens);
}

// A constraint that throws (as a bad_alloc would), asking for the allowed
// tokens or taking one: its own sequence ends with the error, and the
// sequences beside it in the same steps go on untouched. Thrown out of the
// scheduler's thread, or a pool worker's, it ended the process.
TEST(SchedulerTest, AConstraintThatThrowsFailsItsOwnSequenceOnly) {
  struct Throws : TokenConstraint {
    explicit Throws(bool on_accept) : in_accept(on_accept) {}
    void allowed(std::vector<std::uint64_t>* mask) override {
      if (!in_accept) throw std::bad_alloc();
      mask->assign(2, ~std::uint64_t{0});
    }
    void accept(std::int32_t) override { throw std::runtime_error("grammar broke"); }
    bool in_accept;
  };
  Loaded l = load();
  const Outcome free_run = run_alone(*l.model, greedy(prompt(12, 9), 8));
  auto s = Scheduler::start(*l.model, opts(64));
  ASSERT_TRUE(s.is_ok());
  for (int n : {1, 3}) {  // on the scheduler's thread, then on the pool's threads
    std::vector<std::shared_ptr<TokenStream>> streams;
    for (int i = 0; i < n; ++i) {
      GenerationRequest r = greedy(prompt(12, 9), 8);
      r.constraint = std::make_shared<Throws>(i == 1);
      auto st = (*s)->submit(r);
      ASSERT_TRUE(st.is_ok());
      streams.push_back(*st);
    }
    auto beside = (*s)->submit(greedy(prompt(12, 9), 8));
    ASSERT_TRUE(beside.is_ok());
    for (int i = 0; i < n; ++i) {
      const Outcome o = collect(*streams[static_cast<std::size_t>(i)]);
      EXPECT_EQ(o.finish, FinishReason::kError);
      EXPECT_TRUE(o.tokens.empty());
      EXPECT_EQ(o.error.code(), i == 1 ? StatusCode::kInternal : StatusCode::kResourceExhausted) << o.error.message();
    }
    EXPECT_EQ(collect(**beside).tokens, free_run.tokens) << n;
    EXPECT_TRUE((*s)->healthy());
    EXPECT_EQ((*s)->stats().failed_steps, 0u);
  }
}

// The scheduler tells the sampler where the prompt ends: presence and
// frequency penalties count the generated tokens only. A boost (-2 each)
// that would lift a prompt token above the greedy choice if the prompt
// counted leaves the first token as it is.
TEST(SchedulerTest, PresenceAndFrequencyPenaltiesSkipThePrompt) {
  Loaded l = load();
  GenerationRequest r = greedy(prompt(40, 21), 1);
  r.sampling.n_logprobs = 20;
  auto s = Scheduler::start(*l.model, opts(64));
  ASSERT_TRUE(s.is_ok());
  auto first = [&](const GenerationRequest& req) {
    auto st = (*s)->submit(req);
    EXPECT_TRUE(st.is_ok()) << st.status().to_string();
    std::optional<SampledToken> tok;
    for (bool done = false; !done;)
      for (TokenEvent& e : (*st)->pop(std::chrono::milliseconds(2000))) {
        if (e.token && !tok) tok = e.token;
        done = done || e.finish != FinishReason::kNone;
      }
    return tok;
  };
  const std::optional<SampledToken> plain = first(r);
  ASSERT_TRUE(plain.has_value());
  // The token counting the prompt would choose, from the top 20 (a
  // lifted token must already be close to the top).
  std::map<std::int32_t, int> in_prompt;
  for (std::int32_t t : r.prompt) ++in_prompt[t];
  std::int32_t if_counted = plain->token;
  float best = -1e30f;
  for (const TokenLogprob& c : plain->top) {
    const auto it = in_prompt.find(c.token);
    const float v = c.logprob + (it == in_prompt.end() ? 0.0f : 2.0f + 2.0f * static_cast<float>(it->second));
    if (v > best) best = v, if_counted = c.token;
  }
  ASSERT_NE(if_counted, plain->token) << "the test's prompt no longer tells the two apart; choose another";
  r.sampling.presence_penalty = -2.0f;
  r.sampling.frequency_penalty = -2.0f;
  const std::optional<SampledToken> boosted = first(r);
  ASSERT_TRUE(boosted.has_value());
  EXPECT_EQ(boosted->token, plain->token);
}

TEST(SchedulerTest, SeededSamplingIsReproducibleUnderBatching) {
  Loaded l = load();
  GenerationRequest r = greedy(prompt(6, 11), 24);
  r.sampling.temperature = 0.9f;
  r.sampling.top_p = 0.95f;
  r.sampling.seed = 1234;
  Outcome a = run_alone(*l.model, r);
  auto s = Scheduler::start(*l.model, opts(64));
  ASSERT_TRUE(s.is_ok());
  auto other = (*s)->submit(greedy(prompt(30, 12), 24));
  auto mine = (*s)->submit(r);
  ASSERT_TRUE(other.is_ok() && mine.is_ok());
  EXPECT_EQ(collect(**mine).tokens, a.tokens);
  collect(**other);
}

TEST(SchedulerTest, RepeatedPrefixIsNotComputedAgainAndGivesTheSameTokens) {
  Loaded l = load();
  auto s = Scheduler::start(*l.model, opts(64));
  ASSERT_TRUE(s.is_ok());
  std::vector<std::int32_t> system = prompt(50, 77);  // 3 full blocks
  std::vector<std::int32_t> p1 = system, p2 = system;
  p1.push_back(5);
  p2.push_back(6);
  auto first = (*s)->submit(greedy(p1, 10));
  ASSERT_TRUE(first.is_ok());
  Outcome o1 = collect(**first);
  SchedulerStats before = (*s)->stats();
  EXPECT_EQ(before.prefix_hit_tokens, 0u);
  EXPECT_GE(before.kv_blocks_cached, 3);
  auto second = (*s)->submit(greedy(p2, 10));
  ASSERT_TRUE(second.is_ok());
  Outcome o2 = collect(**second);
  SchedulerStats after = (*s)->stats();
  EXPECT_EQ(after.prefix_hit_tokens, 48u);
  EXPECT_EQ(after.prefix_query_tokens, 102u);
  EXPECT_EQ(after.prompt_tokens - before.prompt_tokens, 3u);  // 51 - 48 computed
  // Each request says what it took from the cache (its usage reports it).
  EXPECT_EQ((*first)->cached_tokens(), 0);
  EXPECT_EQ((*second)->cached_tokens(), 48);
  // The cached keys and values give exactly what a fresh computation gives.
  EXPECT_EQ(o2.tokens, run_alone(*l.model, greedy(p2, 10)).tokens);
  EXPECT_EQ(o1.tokens, run_alone(*l.model, greedy(p1, 10)).tokens);
  // The whole first conversation (prompt + answer) is reusable by a follow-up.
  std::vector<std::int32_t> follow = p1;
  follow.insert(follow.end(), o1.tokens.begin(), o1.tokens.end());
  follow.push_back(9);
  auto third = (*s)->submit(greedy(follow, 5));
  ASSERT_TRUE(third.is_ok());
  Outcome o3 = collect(**third);
  EXPECT_EQ((*s)->stats().prefix_hit_tokens - after.prefix_hit_tokens, 48u);  // 60 cached of 62: 3 full blocks
  EXPECT_EQ(o3.tokens, run_alone(*l.model, greedy(follow, 5)).tokens);
}

// The choices of an n > 1 request (the same prompt, submitted together)
// are admitted in one step, but the prompt is not computed once per choice:
// the others find the first one's published blocks when their turn to
// prefill comes (prefill goes oldest first), and give the same tokens as
// alone.
TEST(SchedulerTest, IdenticalPromptsSubmittedTogetherComputeThePromptOnce) {
  Loaded l = load();
  const std::vector<std::int32_t> p = prompt(300, 41);  // 18 full blocks before the last token's block
  const Outcome alone = run_alone(*l.model, greedy(p, 6));  // first: one scheduler on a model at a time
  auto s = Scheduler::start(*l.model, opts(128));
  ASSERT_TRUE(s.is_ok());
  std::vector<std::shared_ptr<TokenStream>> streams;
  for (int k = 0; k < 4; ++k) {
    auto st = (*s)->submit(greedy(p, 6));
    ASSERT_TRUE(st.is_ok());
    streams.push_back(*st);
  }
  for (auto& st : streams) EXPECT_EQ(collect(*st).tokens, alone.tokens);
  // Step 1 prefills the first 256 tokens (the budget) of the first choice
  // only; in step 2 it computes its last 44 and the others, starting with
  // the 256 now cached, compute the same 44 (before this: all 300 each).
  const SchedulerStats stats = (*s)->stats();
  EXPECT_EQ(stats.prefix_hit_tokens, 3u * 256u);
  EXPECT_EQ(stats.prompt_tokens, 300u + 3u * 44u);
  // Found when they looked again, and counted as each one's cached tokens.
  EXPECT_EQ(streams[0]->cached_tokens(), 0);
  for (int k = 1; k < 4; ++k) EXPECT_EQ(streams[k]->cached_tokens(), 256) << k;
}

// Holds the first forward pass until released, so that requests submitted
// meanwhile meet in the scheduler's queue in a known order.
struct GatedDecoder : Decoder {
  std::unique_ptr<Decoder> inner;
  std::mutex mu;
  std::condition_variable cv;
  bool open = false;
  int calls = 0;
  const ModelParams& params() const override { return inner->params(); }
  Status alloc_kv(int n_blocks, KvType type) override { return inner->alloc_kv(n_blocks, type); }
  using Decoder::forward;
  Status forward(const Batch& b, KvCache& c, const PassOutput& o) override {
    {
      std::unique_lock<std::mutex> lock(mu);
      if (calls++ == 0) cv.wait(lock, [&] { return open; });
    }
    return inner->forward(b, c, o);
  }
  void release() {
    {
      std::lock_guard<std::mutex> lock(mu);
      open = true;
    }
    cv.notify_all();
  }
};

// A sequence that starts its prompt a few steps after admission looks for
// cached blocks again, and may take blocks another request has published
// meanwhile. That lookup comes before the step's blocks are counted: taken
// after the count (as it was), the step could need more blocks than were
// free, the pass failed with "KV cache full", every running request ended
// with an error and the scheduler called itself unhealthy, where waiting
// or preempting was the answer. (Order found by a review: G runs long; A
// publishes the prompt B shares while B waits for prefill budget behind C.)
TEST(SchedulerTest, PrefixFoundAtPrefillIsCountedBeforeTheStepsBlocks) {
  Loaded l = load();
  const std::vector<std::int32_t> shared = prompt(49, 5);
  const GenerationRequest g = greedy(prompt(33, 1), 60), a = greedy(shared, 1), c = greedy(prompt(23, 3), 8),
                          b = greedy(shared, 4);
  std::vector<Outcome> alone;
  for (const GenerationRequest& r : {g, a, c, b}) alone.push_back(run_alone(*l.model, r));
  auto gate = std::make_unique<GatedDecoder>();
  gate->inner = make_single_decoder(*l.model);
  GatedDecoder* gated = gate.get();
  SchedulerOptions o = opts(8);
  o.prefill_chunk = 16;
  o.max_running = 8;
  auto s = Scheduler::start(std::move(gate), o);
  ASSERT_TRUE(s.is_ok()) << s.status().to_string();
  std::vector<std::shared_ptr<TokenStream>> streams;
  streams.push_back(*(*s)->submit(g));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // G's first pass is held at the gate
  for (const GenerationRequest& r : {a, c, b}) streams.push_back(*(*s)->submit(r));
  gated->release();
  for (std::size_t i = 0; i < streams.size(); ++i) {
    const Outcome out = collect(*streams[i]);
    EXPECT_NE(out.finish, FinishReason::kError) << "request " << i << ": " << out.error.to_string();
    EXPECT_EQ(out.tokens, alone[i].tokens) << "request " << i;
  }
  EXPECT_TRUE((*s)->healthy());
  EXPECT_EQ((*s)->stats().failed_steps, 0u);
}

TEST(SchedulerTest, DrainFinishesRunningAndRefusesNewWork) {
  Loaded l = load();
  auto s = Scheduler::start(*l.model, opts(64));
  ASSERT_TRUE(s.is_ok());
  auto st = (*s)->submit(greedy(prompt(5, 2), 20));
  ASSERT_TRUE(st.is_ok());
  (*s)->drain(std::chrono::milliseconds(10000));
  Outcome o = collect(**st);
  EXPECT_TRUE(o.finish == FinishReason::kLength || o.finish == FinishReason::kCancelled);
  EXPECT_EQ((*s)->submit(greedy(prompt(5, 2), 20)).status().code(), StatusCode::kUnavailable);
}

}  // namespace
}  // namespace airlock::engine
