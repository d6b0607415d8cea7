#include "airlock/engine/decoder.h"

#include <condition_variable>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <system_error>
#include <thread>

#include "airlock/engine/pass_message.h"

namespace airlock::engine {
namespace {

class SingleDecoder final : public Decoder {
 public:
  explicit SingleDecoder(Model& m) : m_(m) {}
  const ModelParams& params() const override { return m_.params(); }
  Status alloc_kv(int n_blocks, KvType type) override {
    AIRLOCK_ASSIGN_OR_RETURN(kv_, m_.alloc_kv(n_blocks, type));
    return Status::ok();
  }
  using Decoder::forward;
  Status forward(const Batch& batch, KvCache& cache, const PassOutput& out) override {
    return m_.forward(batch, cache, kv_, out);
  }
  void bind_thread() override { m_.backend().bind_thread(); }

 private:
  Model& m_;
  KvStorage kv_;
};

}  // namespace

std::unique_ptr<Decoder> make_single_decoder(Model& model) { return std::make_unique<SingleDecoder>(model); }

namespace {

// One thread per local rank, each running the job it is handed and
// reporting its status; run() returns once every rank has finished it.
// Local rank i is rank first + i of a group of n_group ranks.
struct RankGroup {
  std::vector<std::shared_ptr<Model>> ranks;
  std::vector<std::unique_ptr<Communicator>> comms;
  std::vector<KvStorage> kv;
  int first = 0, n_group = 0;

  std::mutex mu;
  std::condition_variable cv;
  std::function<Status(int)> job;
  std::uint64_t generation = 0;
  int pending = 0;
  bool stopping = false;
  std::vector<Status> results;
  std::vector<std::thread> threads;

  // Other processes hold ranks of this group.
  bool spread() const { return n_group > static_cast<int>(ranks.size()); }

  void worker(int r) {
    ranks[static_cast<std::size_t>(r)]->backend().bind_thread();
    std::uint64_t seen = 0;
    while (true) {
      std::function<Status(int)> j;
      {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return stopping || generation != seen; });
        if (stopping) return;
        seen = generation;
        j = job;
      }
      Status s;
      try {
        s = j(r);
      } catch (const std::exception& e) {  // bad_alloc, say: a failed pass, not a dead process
        s = internal_error("tensor-parallel rank " + std::to_string(first + r) + ": " + e.what());
        ranks[static_cast<std::size_t>(r)]->fail_group(s);
      }
      std::lock_guard<std::mutex> lock(mu);
      results[static_cast<std::size_t>(r)] = std::move(s);
      if (--pending == 0) cv.notify_all();
    }
  }

  // The first failure among the ranks, OK when every rank succeeded.
  Status run(std::function<Status(int)> j) {
    std::unique_lock<std::mutex> lock(mu);
    job = std::move(j);
    pending = static_cast<int>(ranks.size());
    for (Status& s : results) s = Status::ok();
    ++generation;
    cv.notify_all();
    cv.wait(lock, [&] { return pending == 0; });
    for (const Status& s : results)
      if (!s.is_ok()) return s;
    return Status::ok();
  }

  // All the rank threads started (a failed start leaves fewer, and run()
  // would wait for the missing ones forever).
  bool running() const { return threads.size() == ranks.size() && !ranks.empty(); }

  // Checks that r[i] is rank first + i of one group of n_group with c[i]
  // (first = want_first unless that is negative), takes them and starts
  // the threads.
  Status start(const char* who, int want_first, std::vector<std::shared_ptr<Model>> r,
               std::vector<std::unique_ptr<Communicator>> c) {
    if (r.empty() || c.size() != r.size())
      return invalid_argument(std::string(who) + ": needs its ranks and one communicator per rank");
    first = want_first >= 0 ? want_first : r[0]->tensor_parallel().rank;
    n_group = r[0]->tensor_parallel().n_ranks;
    if (n_group < 2) return invalid_argument(std::string(who) + ": needs a group of two ranks or more");
    for (std::size_t i = 0; i < r.size(); ++i) {
      const TensorParallel& tp = r[i]->tensor_parallel();
      if (tp.rank != first + static_cast<int>(i) || tp.n_ranks != n_group || tp.comm != c[i].get())
        return invalid_argument(std::string(who) + ": model " + std::to_string(i) + " is not rank " +
                                std::to_string(first + static_cast<int>(i)) + " of this group of " +
                                std::to_string(n_group));
    }
    ranks = std::move(r);
    comms = std::move(c);
    kv.resize(ranks.size());
    results.resize(ranks.size());
    try {
      for (int i = 0; i < static_cast<int>(ranks.size()); ++i) threads.emplace_back([this, i] { worker(i); });
    } catch (const std::system_error& e) {
      return internal_error(std::string(who) + ": cannot start a rank thread: " + e.what());
    }
    return Status::ok();
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lock(mu);
      stopping = true;
    }
    cv.notify_all();
    for (std::thread& t : threads) t.join();
    threads.clear();
  }

  // Rank 0's side of a spread group: every local rank takes part in the
  // broadcast of `h` and its payload (rank 0 sends `payload` itself, the
  // others receive into a buffer of their own). A failure aborts the group.
  Status send(int r, PassHeader h, const std::vector<std::int32_t>& payload) {
    Communicator& c = *comms[static_cast<std::size_t>(r)];
    Status s = c.broadcast(&h, sizeof h);
    if (s.is_ok() && !payload.empty()) {
      const std::int64_t bytes = static_cast<std::int64_t>(payload.size() * sizeof(std::int32_t));
      if (r == 0) {
        s = c.broadcast(const_cast<std::int32_t*>(payload.data()), bytes);  // the root's bytes are only read
      } else {
        std::vector<std::int32_t> mine(payload.size());
        s = c.broadcast(mine.data(), bytes);
      }
    }
    if (!s.is_ok()) ranks[static_cast<std::size_t>(r)]->fail_group(s);
    return s;
  }

  // A follower's rank: runs what rank 0 sends until it stops.
  Status follow(int r) {
    Model& m = *ranks[static_cast<std::size_t>(r)];
    Communicator& c = *comms[static_cast<std::size_t>(r)];
    auto fail = [&](Status s) {
      m.fail_group(s);  // the other ranks may be waiting in a collective
      return s;
    };
    KvStorage storage;
    std::int64_t n_blocks = 0;
    std::vector<std::int32_t> payload;
    while (true) {
      PassHeader h;
      // A broadcast that fails on this rank alone (its staging memory, say)
      // must still end the others' wait: every failure aborts the group.
      if (Status s = c.broadcast(&h, sizeof h); !s.is_ok()) return fail(s);
      Result<std::size_t> words = payload_words(h);
      if (!words.is_ok()) return fail(words.status());
      payload.resize(*words);
      if (!payload.empty()) {
        Status s = c.broadcast(payload.data(), static_cast<std::int64_t>(payload.size() * sizeof(std::int32_t)));
        if (!s.is_ok()) return fail(s);
      }
      switch (static_cast<PassKind>(h.kind)) {
        case PassKind::kStop:
          return Status::ok();
        case PassKind::kAllocKv: {
          storage = KvStorage();  // the old storage's room first
          Result<KvStorage> kv_new = m.alloc_kv(h.n_blocks, static_cast<KvType>(h.kv_type));
          if (!kv_new.is_ok()) return fail(kv_new.status());
          storage = std::move(*kv_new);
          n_blocks = h.n_blocks;
          break;
        }
        case PassKind::kPass: {
          if (n_blocks == 0) return fail(invalid_argument("pass message: a pass before any KV storage"));
          DecodedPass d;
          Status s = decode_pass(h, payload, PassLimits{m.params().n_vocab, m.params().n_ctx_train, n_blocks}, &d);
          if (s.is_ok()) s = m.prepare(h.n_tokens, h.n_out);
          if (s.is_ok()) s = m.compute(d.batch, d.plan, storage, PassOutput{});
          if (!s.is_ok()) return fail(s);
          // The pass is the decoder's only once every rank says so.
          if (s = c.barrier(); !s.is_ok()) return fail(s);
          break;
        }
      }
    }
  }
};

}  // namespace

struct TensorParallelDecoder::Impl : RankGroup {};
struct TensorParallelFollower::Impl : RankGroup {};

Result<std::unique_ptr<TensorParallelDecoder>> TensorParallelDecoder::create(
    std::vector<std::shared_ptr<Model>> ranks, std::vector<std::unique_ptr<Communicator>> comms) {
  // Owned by the decoder at once, so that its destructor stops and joins
  // whatever threads started if starting one fails.
  std::unique_ptr<TensorParallelDecoder> d(new TensorParallelDecoder(std::make_unique<Impl>()));
  AIRLOCK_RETURN_IF_ERROR(d->impl_->start("tensor-parallel decoder", 0, std::move(ranks), std::move(comms)));
  return d;
}

TensorParallelDecoder::TensorParallelDecoder(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

TensorParallelDecoder::~TensorParallelDecoder() {
  Impl& g = *impl_;
  // The followers' loops end (a failed group's broadcast fails at once).
  if (g.spread() && g.running()) {
    PassHeader stop;
    stop.kind = static_cast<std::int32_t>(PassKind::kStop);
    (void)g.run([&](int r) { return g.send(r, stop, {}); });
  }
  g.stop();
}

const ModelParams& TensorParallelDecoder::params() const { return impl_->ranks[0]->params(); }
int TensorParallelDecoder::n_ranks() const { return impl_->n_group; }
int TensorParallelDecoder::n_local_ranks() const { return static_cast<int>(impl_->ranks.size()); }
const Model& TensorParallelDecoder::rank(int i) const { return *impl_->ranks[static_cast<std::size_t>(i)]; }

Status TensorParallelDecoder::alloc_kv(int n_blocks, KvType type) {
  Impl& g = *impl_;
  PassHeader h;
  h.kind = static_cast<std::int32_t>(PassKind::kAllocKv);
  h.n_blocks = n_blocks;
  h.kv_type = static_cast<std::int32_t>(type);
  return g.run([&](int r) -> Status {
    if (g.spread()) AIRLOCK_RETURN_IF_ERROR(g.send(r, h, {}));
    g.kv[static_cast<std::size_t>(r)] = KvStorage();  // the old storage's room first
    AIRLOCK_ASSIGN_OR_RETURN(g.kv[static_cast<std::size_t>(r)], g.ranks[static_cast<std::size_t>(r)]->alloc_kv(n_blocks, type));
    return Status::ok();
  });
}

Status TensorParallelDecoder::forward(const Batch& batch, KvCache& cache, const PassOutput& out) {
  Impl& g = *impl_;
  // The same on every rank: checked once.
  AIRLOCK_ASSIGN_OR_RETURN(const std::int64_t n_out, g.ranks[0]->check(batch, cache));
  AIRLOCK_RETURN_IF_ERROR(Model::check_output(out, n_out));
  // Buffers on every local rank before the cache changes; no collective
  // yet, so a rank that cannot grow its buffers fails the pass alone.
  const std::int64_t n = static_cast<std::int64_t>(batch.size());
  AIRLOCK_RETURN_IF_ERROR(g.run([&](int r) { return g.ranks[static_cast<std::size_t>(r)]->prepare(n, n_out); }));
  AIRLOCK_ASSIGN_OR_RETURN(const PassPlan plan, Model::commit(batch, cache));
  // The other processes' ranks run the pass as planned here.
  PassHeader header;
  std::vector<std::int32_t> message;
  if (g.spread()) {
    Result<std::vector<std::int32_t>> m = encode_pass(batch, plan, &header);
    if (!m.is_ok()) {
      g.ranks[0]->fail_group(m.status());
      return m.status();
    }
    message = std::move(*m);
  }
  return g.run([&](int r) {
    Model& m = *g.ranks[static_cast<std::size_t>(r)];
    Status rs = g.spread() ? g.send(r, header, message) : Status::ok();
    // Every rank holds the same final residual stream: only rank 0 goes on
    // through the output matrix (and writes `out`).
    if (rs.is_ok()) rs = m.compute(batch, plan, g.kv[static_cast<std::size_t>(r)], r == 0 ? out : PassOutput{});
    // Every rank elsewhere confirms its share of the pass (a rank there that
    // failed after the last all-reduce has aborted the group instead).
    if (rs.is_ok() && g.spread()) rs = g.comms[static_cast<std::size_t>(r)]->barrier();
    if (!rs.is_ok()) m.fail_group(rs);  // wakes the ranks waiting for this one
    return rs;
  });
}

Result<std::unique_ptr<TensorParallelFollower>> TensorParallelFollower::create(
    std::vector<std::shared_ptr<Model>> ranks, std::vector<std::unique_ptr<Communicator>> comms) {
  std::unique_ptr<TensorParallelFollower> f(new TensorParallelFollower(std::make_unique<Impl>()));
  if (!ranks.empty() && ranks[0]->tensor_parallel().rank == 0)
    return invalid_argument("tensor-parallel follower: rank 0 belongs to the decoder");
  AIRLOCK_RETURN_IF_ERROR(f->impl_->start("tensor-parallel follower", -1, std::move(ranks), std::move(comms)));
  return f;
}

TensorParallelFollower::TensorParallelFollower(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
TensorParallelFollower::~TensorParallelFollower() { impl_->stop(); }

void TensorParallelFollower::abort(const Status& reason) { impl_->comms[0]->abort(reason); }

Status TensorParallelFollower::run() {
  Impl& g = *impl_;
  return g.run([&](int r) { return g.follow(r); });
}

}  // namespace airlock::engine
