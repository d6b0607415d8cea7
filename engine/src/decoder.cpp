#include "airlock/engine/decoder.h"

#include <condition_variable>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <system_error>
#include <thread>

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

// One thread per rank, each running the job it is handed and reporting
// its status; run() returns once every rank has finished the job.
struct TensorParallelDecoder::Impl {
  std::vector<std::shared_ptr<Model>> ranks;
  std::vector<std::unique_ptr<Communicator>> comms;
  std::vector<KvStorage> kv;

  std::mutex mu;
  std::condition_variable cv;
  std::function<Status(int)> job;
  std::uint64_t generation = 0;
  int pending = 0;
  bool stopping = false;
  std::vector<Status> results;
  std::vector<std::thread> threads;

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
        s = internal_error(std::string("tensor-parallel rank ") + std::to_string(r) + ": " + e.what());
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
};

Result<std::unique_ptr<TensorParallelDecoder>> TensorParallelDecoder::create(
    std::vector<std::shared_ptr<Model>> ranks, std::vector<std::unique_ptr<Communicator>> comms) {
  const int n = static_cast<int>(ranks.size());
  if (n < 2 || comms.size() != ranks.size())
    return invalid_argument("tensor-parallel decoder: needs two ranks or more, and one communicator per rank");
  for (int r = 0; r < n; ++r) {
    const TensorParallel& tp = ranks[static_cast<std::size_t>(r)]->tensor_parallel();
    if (tp.rank != r || tp.n_ranks != n || tp.comm != comms[static_cast<std::size_t>(r)].get())
      return invalid_argument("tensor-parallel decoder: model " + std::to_string(r) + " is not rank " +
                              std::to_string(r) + " of this group of " + std::to_string(n));
  }
  auto impl = std::make_unique<Impl>();
  impl->ranks = std::move(ranks);
  impl->comms = std::move(comms);
  impl->kv.resize(static_cast<std::size_t>(n));
  impl->results.resize(static_cast<std::size_t>(n));
  // Owned by the decoder at once, so that its destructor stops and joins
  // whatever threads started if starting one fails.
  std::unique_ptr<TensorParallelDecoder> d(new TensorParallelDecoder(std::move(impl)));
  try {
    for (int r = 0; r < n; ++r) d->impl_->threads.emplace_back([p = d->impl_.get(), r] { p->worker(r); });
  } catch (const std::system_error& e) {
    return internal_error(std::string("tensor-parallel decoder: cannot start a rank thread: ") + e.what());
  }
  return d;
}

TensorParallelDecoder::TensorParallelDecoder(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

TensorParallelDecoder::~TensorParallelDecoder() {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->stopping = true;
  }
  impl_->cv.notify_all();
  for (std::thread& t : impl_->threads) t.join();
}

const ModelParams& TensorParallelDecoder::params() const { return impl_->ranks[0]->params(); }
int TensorParallelDecoder::n_ranks() const { return static_cast<int>(impl_->ranks.size()); }
const Model& TensorParallelDecoder::rank(int i) const { return *impl_->ranks[static_cast<std::size_t>(i)]; }

Status TensorParallelDecoder::alloc_kv(int n_blocks, KvType type) {
  Impl& g = *impl_;
  return g.run([&](int r) -> Status {
    AIRLOCK_ASSIGN_OR_RETURN(g.kv[static_cast<std::size_t>(r)], g.ranks[static_cast<std::size_t>(r)]->alloc_kv(n_blocks, type));
    return Status::ok();
  });
}

Status TensorParallelDecoder::forward(const Batch& batch, KvCache& cache, const PassOutput& out) {
  Impl& g = *impl_;
  // The same on every rank: checked once.
  AIRLOCK_ASSIGN_OR_RETURN(const std::int64_t n_out, g.ranks[0]->check(batch, cache));
  AIRLOCK_RETURN_IF_ERROR(Model::check_output(out, n_out));
  // Buffers on every rank before the cache changes; no collective yet, so a
  // rank that cannot grow its buffers fails the pass alone.
  const std::int64_t n = static_cast<std::int64_t>(batch.size());
  AIRLOCK_RETURN_IF_ERROR(g.run([&](int r) { return g.ranks[static_cast<std::size_t>(r)]->prepare(n, n_out); }));
  AIRLOCK_ASSIGN_OR_RETURN(const PassPlan plan, Model::commit(batch, cache));
  Status s = g.run([&](int r) {
    Model& m = *g.ranks[static_cast<std::size_t>(r)];
    // Every rank holds the same final residual stream: only rank 0 goes on
    // through the output matrix (and writes `out`).
    Status rs = m.compute(batch, plan, g.kv[static_cast<std::size_t>(r)], r == 0 ? out : PassOutput{});
    if (!rs.is_ok()) m.fail_group(rs);  // wakes the ranks waiting for this one
    return rs;
  });
  return s;
}

}  // namespace airlock::engine
