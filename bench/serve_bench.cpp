// Serving benchmark (issue 4): aggregate generation rate for 1, 4 and 16
// concurrent streaming clients over HTTP against the same requests run
// straight on the engine's scheduler, in the same process and run, plus
// time to first token (p50/p99) over HTTP.
//
// Both paths run identical greedy requests that ignore EOS, so every client
// generates exactly --tokens tokens; the HTTP path adds request parsing,
// the chat-free completions route, SSE encoding and the loopback socket.
// The server runs in this process (airlockd's Server class on 127.0.0.1:0)
// with the model loaded from the GGUF directly (no bundle store): the bundle
// checks happen once at start and are not part of serving.
//
// Both paths also report the process's CPU time per generated token (user
// plus system, all threads, the benchmark's HTTP clients included): on a
// machine with few cores the clients and connection threads share the cores
// with the compute threads, so that is where the HTTP path's cost shows.
// It is split into the scheduler and compute threads' time (each path) and
// the connection threads' (HTTP); the rest is the client and the listener.
//
// The HTTP clients are either one thread that reads every stream through
// epoll (`--client loop`, the default, as load generators such as wrk
// work), or a thread per client with cpp-httplib's client (`--client
// threads`): on a 2-core machine the latter's wake-up per client and token
// takes CPU from the server that a client elsewhere would not.
//
// --stream-interval is airlockd's stream_interval_ms (0: a write per
// token); left out, airlockd's default ("auto": 20 ms when the model
// computes on the CPU, 0 on a GPU).
//
// usage: serve_bench MODEL.gguf [--tokens N] [--threads T] [--clients 1,4,16] [--device cpu|cuda|auto]
//                    [--stream-interval MS] [--client loop|threads] [--only engine|http] [--rounds N]
#include <arpa/inet.h>
#include <dirent.h>
#include <httplib.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "airlock/common/json.h"

#include "airlock/engine/backend_registry.h"
#include "airlock/engine/thread_pool.h"
#include "model_host.h"
#include "server.h"

using namespace airlock;
using namespace airlock::daemon;
using Clock = std::chrono::steady_clock;

namespace {

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Every request of every run has its own first block, so the prefix cache
// never serves one run's prompt to the next and both paths compute the same.
std::atomic<int> g_run{0};
std::string prompt_text(int run, int i) {
  return std::to_string(run) + "/" + std::to_string(i) + " story: once upon a time, in a small town,";
}

std::shared_ptr<LoadedModel> load(const std::string& path, engine::Device device, int threads, int max_running) {
  auto m = std::make_shared<LoadedModel>();
  m->id = "bench";
  auto backend = engine::make_backend(device, threads);
  if (!backend.is_ok()) {
    std::fprintf(stderr, "serve_bench: %s\n", backend.status().to_string().c_str());
    std::exit(2);
  }
  auto model = engine::Model::load(path, std::move(*backend));
  if (!model.is_ok()) {
    std::fprintf(stderr, "serve_bench: %s\n", model.status().to_string().c_str());
    std::exit(2);
  }
  m->model = std::move(*model);
  auto tok = engine::Tokenizer::from_gguf(m->model->gguf());
  if (!tok.is_ok()) {
    std::fprintf(stderr, "serve_bench: %s\n", tok.status().to_string().c_str());
    std::exit(2);
  }
  m->tokenizer = std::move(*tok);
  m->chat_template = engine::ChatTemplate::parse("{% for m in messages %}{{ m.content }}{% endfor %}").value();
  engine::SchedulerOptions so;
  so.max_running = max_running;
  so.max_waiting = 64;
  so.kv_blocks = max_running * engine::KvCache::blocks_for(m->model->params().n_ctx_train);
  auto sched = engine::Scheduler::start(*m->model, so);
  if (!sched.is_ok()) {
    std::fprintf(stderr, "serve_bench: %s\n", sched.status().to_string().c_str());
    std::exit(2);
  }
  m->scheduler = std::move(sched).value();
  return m;
}

// Engine path: the same requests submitted to the scheduler directly.
double engine_rate(LoadedModel& m, int clients, int tokens) {
  const int run = g_run++;
  std::vector<std::shared_ptr<engine::TokenStream>> streams;
  const Clock::time_point t0 = Clock::now();
  for (int i = 0; i < clients; ++i) {
    engine::GenerationRequest r;
    r.prompt = m.tokenizer->encode(prompt_text(run, i), true, false);
    r.max_tokens = tokens;
    r.sampling.temperature = 0;
    streams.push_back(*m.scheduler->submit(r));
  }
  // Each stream is read once it has ended (pop_until wakes for the last
  // event only), so the consumer costs the engine nothing per token: this
  // is the engine's own rate for these requests.
  std::uint64_t n = 0;
  for (auto& s : streams) {
    bool done = false;
    while (!done)
      for (auto& e : s->pop_until(Clock::now() + std::chrono::seconds(1))) {
        n += e.token ? 1 : 0;
        done = done || e.finish != engine::FinishReason::kNone;
      }
  }
  return static_cast<double>(n) / since(t0);
}

struct HttpResult {
  double rate = 0;
  std::vector<double> ttft;
};

std::string request_body(int run, int i, int tokens) {
  nlohmann::json body = {{"model", "bench"},         {"prompt", prompt_text(run, i)}, {"max_tokens", tokens},
                         {"temperature", 0},         {"stream", true},           {"ignore_eos", true},
                         {"stream_options", {{"include_usage", true}}}};
  return body.dump();
}

// The generated tokens a finished stream reports in its usage chunk.
std::uint64_t completion_tokens(const std::string& stream) {
  const std::size_t at = stream.rfind("\"completion_tokens\":");
  return at == std::string::npos ? 0 : std::strtoull(stream.c_str() + at + 20, nullptr, 10);
}

// One thread, every client: each connects to 127.0.0.1 (numeric), sends its
// request and is read through epoll as its chunks arrive; a stream is whole
// at the chunked encoding's last chunk.
HttpResult http_rate_loop(int port, int clients, int tokens) {
  const int run = g_run++;
  struct Conn {
    int fd = -1;
    Clock::time_point start;
    std::string in;
    double ttft = 0;
    bool done = false;
  };
  std::vector<Conn> conns(static_cast<std::size_t>(clients));
  const int ep = epoll_create1(EPOLL_CLOEXEC);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  auto fail = [](const char* what) {
    std::perror(what);
    std::exit(1);
  };
  // Connected first, as load generators (wrk) do, and the requests then
  // sent back to back: connecting each just before its request, the client
  // thread waited for a core (~4 ms, a scheduler tick) once the first
  // request was computing, and the rest reached the server that much later.
  // The clock (and each request's time to first token) starts at the sends.
  for (int i = 0; i < clients; ++i) {
    Conn& c = conns[static_cast<std::size_t>(i)];
    c.fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c.fd < 0 || connect(c.fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) fail("connect");
    const int one = 1;
    setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u32 = static_cast<std::uint32_t>(i);
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c.fd, &ev) != 0) fail("epoll_ctl");
  }
  std::vector<std::string> reqs;
  for (int i = 0; i < clients; ++i) {
    const std::string body = request_body(run, i, tokens);
    reqs.push_back("POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer bench\r\n"
                   "Content-Type: application/json\r\nContent-Length: " +
                   std::to_string(body.size()) + "\r\n\r\n" + body);
  }
  const Clock::time_point t0 = Clock::now();
  for (int i = 0; i < clients; ++i) {
    Conn& c = conns[static_cast<std::size_t>(i)];
    c.start = Clock::now();
    const std::string& req = reqs[static_cast<std::size_t>(i)];
    for (std::size_t off = 0; off < req.size();) {
      const ssize_t w = send(c.fd, req.data() + off, req.size() - off, MSG_NOSIGNAL);
      if (w <= 0) fail("send");
      off += static_cast<std::size_t>(w);
    }
  }
  HttpResult out;
  std::uint64_t n = 0;
  char buf[65536];
  for (int open = clients; open > 0;) {
    epoll_event evs[64];
    const int k = epoll_wait(ep, evs, 64, 600000);
    if (k <= 0) fail("epoll_wait");
    for (int e = 0; e < k; ++e) {
      Conn& c = conns[evs[e].data.u32];
      const ssize_t r = recv(c.fd, buf, sizeof buf, 0);
      if (r > 0) c.in.append(buf, static_cast<std::size_t>(r));
      if (c.ttft == 0 && c.in.find("\r\n\r\n") != std::string::npos && c.in.find("data:") != std::string::npos)
        c.ttft = since(c.start);
      const bool whole = c.in.size() >= 5 && c.in.compare(c.in.size() - 5, 5, "0\r\n\r\n") == 0;
      if (r <= 0 || whole) {
        if (r <= 0 && !whole) std::fprintf(stderr, "serve_bench: stream %u ended early\n", evs[e].data.u32);
        n += completion_tokens(c.in);
        epoll_ctl(ep, EPOLL_CTL_DEL, c.fd, nullptr);
        close(c.fd);
        c.done = true;
        --open;
      }
    }
  }
  close(ep);
  out.rate = static_cast<double>(n) / since(t0);
  for (const Conn& c : conns) out.ttft.push_back(c.ttft);
  return out;
}

HttpResult http_rate_threads(int port, int clients, int tokens) {
  const int run = g_run++;
  HttpResult out;
  std::vector<std::thread> threads;
  std::vector<double> ttft(static_cast<std::size_t>(clients), 0);
  std::atomic<std::uint64_t> n{0};
  const Clock::time_point t0 = Clock::now();
  for (int i = 0; i < clients; ++i)
    threads.emplace_back([&, i] {
      httplib::Client c("127.0.0.1", port);
      c.set_read_timeout(600, 0);
      httplib::Request req;
      req.method = "POST";
      req.path = "/v1/completions";
      req.headers = {{"Authorization", "Bearer bench"}, {"Content-Type", "application/json"}};
      req.body = request_body(run, i, tokens);
      const Clock::time_point start = Clock::now();
      std::string buffer;
      req.content_receiver = [&](const char* data, size_t len, uint64_t, uint64_t) {
        if (ttft[static_cast<std::size_t>(i)] == 0) ttft[static_cast<std::size_t>(i)] = since(start);
        buffer.append(data, len);
        return true;
      };
      c.send(req);
      n += completion_tokens(buffer);
    });
  for (auto& t : threads) t.join();
  out.rate = static_cast<double>(n.load()) / since(t0);
  out.ttft = ttft;
  return out;
}

// On-CPU nanoseconds of this process's threads whose name starts with
// `prefix` (/proc/self/task/*/schedstat). A thread that ends between two
// readings takes its time with it: the connection threads are read around
// one HTTP round, which they outlive (the pool keeps idle threads longer).
double thread_cpu(const char* prefix) {
  double total = 0;
  DIR* d = opendir("/proc/self/task");
  if (!d) return 0;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    char path[320];
    std::snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
    FILE* f = std::fopen(path, "r");
    if (!f) continue;
    char name[64] = {};
    const bool got = std::fgets(name, sizeof name, f) != nullptr;
    std::fclose(f);
    if (!got || std::strncmp(name, prefix, std::strlen(prefix)) != 0) continue;
    std::snprintf(path, sizeof path, "/proc/self/task/%s/schedstat", e->d_name);
    f = std::fopen(path, "r");
    if (!f) continue;
    unsigned long long ns = 0;
    if (std::fscanf(f, "%llu", &ns) == 1) total += static_cast<double>(ns);
    std::fclose(f);
  }
  closedir(d);
  return total;
}

// CPU seconds this process has used (user and system, every thread).
double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         1e-6 * static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<std::size_t>(p * static_cast<double>(v.size() - 1) + 0.5))];
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr,
                 "usage: serve_bench MODEL.gguf [--tokens N] [--threads T] [--clients 1,4,16] [--device cpu|cuda|auto] "
                 "[--stream-interval MS] [--client loop|threads] [--only engine|http] [--rounds N]\n");
    return 2;
  }
  const std::string path = argv[1];
  int tokens = 64, threads = 0, stream_interval_ms = kStreamIntervalAuto, rounds = 2;
  bool loop_client = true;
  std::string only;  // "engine" or "http": run one path alone (for profiling it)
  engine::Device device = engine::Device::kCpu;
  std::vector<int> counts = {1, 4, 16};
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--tokens") tokens = std::atoi(argv[i + 1]);
    else if (a == "--threads") threads = std::atoi(argv[i + 1]);
    else if (a == "--stream-interval") {
      stream_interval_ms = std::atoi(argv[i + 1]);
      if (stream_interval_ms < 0 || stream_interval_ms > 1000)
        return std::fprintf(stderr, "serve_bench: --stream-interval must be 0 to 1000 (ms)\n"), 2;
    }
    else if (a == "--rounds") rounds = std::max(1, std::atoi(argv[i + 1]));
    else if (a == "--only") only = argv[i + 1];
    else if (a == "--client") {
      const std::string k = argv[i + 1];
      if (k != "loop" && k != "threads") return std::fprintf(stderr, "serve_bench: --client must be loop or threads\n"), 2;
      loop_client = k == "loop";
    }
    else if (a == "--device") {
      const std::optional<engine::Device> d = engine::parse_device(argv[i + 1]);
      if (!d) return std::fprintf(stderr, "serve_bench: --device must be cpu, cuda or auto\n"), 2;
      device = *d;
    } else if (a == "--clients") {
      counts.clear();
      std::stringstream ss(argv[i + 1]);
      for (std::string x; std::getline(ss, x, ',');) counts.push_back(std::atoi(x.c_str()));
    }
  }
  const int max_clients = *std::max_element(counts.begin(), counts.end());
  std::shared_ptr<LoadedModel> model = load(path, device, threads, max_clients);
  Metrics metrics;
  Config config;
  config.listen_port = 0;
  config.stream_interval_ms = stream_interval_ms;
  Server server(config, [](std::string_view t) -> std::optional<std::string> {
    if (t == "bench") return std::string("bench");
    return std::nullopt;
  }, nullptr, metrics);
  server.set_model(model);
  const int port = *server.bind();
  std::thread serve([&] { server.run(); });

  (void)engine_rate(*model, 1, 8);  // warm-up
  std::printf("model %s, %d tokens per client, backend %s, stream interval %d ms%s, client %s, %d rounds\n\n",
              path.c_str(), tokens, model->model->backend().name().c_str(),
              static_cast<int>(stream_interval(config, model->model->backend().uses_host_cores()).count()),
              stream_interval_ms == kStreamIntervalAuto ? " (\"auto\", airlockd's default)" : "",
              loop_client ? "loop (one thread, epoll)" : "threads (one per client)", rounds);
  std::printf("| clients | engine tok/s | HTTP tok/s | HTTP / engine | per round: median (min-max) | "
              "engine CPU us/tok | HTTP CPU us/tok | "
              "compute threads us/tok, engine / HTTP | connection threads us/tok | "
              "engine steps | HTTP steps | TTFT p50 (s) | TTFT p99 (s) |\n");
  std::printf("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (int c : counts) {
    // Alternate the two paths so drift on a noisy machine hits both.
    double e = 0, h = 0, cpu_e = 0, cpu_h = 0;
    // On-CPU time of the scheduler and compute threads in each path, and of
    // the connection threads in the HTTP path (ns).
    double compute_e = 0, compute_h = 0, conn_h = 0;
    auto compute_now = [] { return thread_cpu("airlock-sched") + thread_cpu("airlock-pool"); };
    std::uint64_t steps_e = 0, steps_h = 0;  // scheduler steps (forward passes) each path took
    HttpResult hr;
    // Each round's HTTP rate over the engine round just before it: their
    // spread says how far one run's ratio of means can be trusted.
    std::vector<double> pair_ratios;
    auto steps = [&] { return model->scheduler->stats().steps; };
    for (int rep = 0; rep < rounds; ++rep) {
      // (the threads' times are read outside the process-CPU brackets)
      const double k0 = compute_now();
      double c0 = cpu_seconds();
      const std::uint64_t s0 = steps();
      const double er = only != "http" ? engine_rate(*model, c, tokens) : 0;
      e += er;
      cpu_e += cpu_seconds() - c0;
      const double k1 = compute_now();
      const double h1 = thread_cpu("airlock-http");
      c0 = cpu_seconds();
      const std::uint64_t s1 = steps();
      if (only != "engine") hr = loop_client ? http_rate_loop(port, c, tokens) : http_rate_threads(port, c, tokens);
      cpu_h += cpu_seconds() - c0;
      steps_e += s1 - s0;
      steps_h += steps() - s1;
      compute_e += k1 - k0;
      compute_h += compute_now() - k1;
      conn_h += thread_cpu("airlock-http") - h1;
      h += hr.rate;
      if (er > 0 && hr.rate > 0) pair_ratios.push_back(hr.rate / er);
    }
    e /= rounds;
    h /= rounds;
    const double n_tok = static_cast<double>(rounds) * c * tokens;
    std::printf("| %d | %.1f | %.1f | %.3f | %.3f (%.3f-%.3f) | %.1f | %.1f | %.1f / %.1f | %.2f | %.1f | %.1f | %.3f "
                "| %.3f |\n",
                c, e, h, h / e, percentile(pair_ratios, 0.5), percentile(pair_ratios, 0), percentile(pair_ratios, 1),
                1e6 * cpu_e / n_tok, 1e6 * cpu_h / n_tok, 1e-3 * compute_e / n_tok, 1e-3 * compute_h / n_tok,
                1e-3 * conn_h / n_tok, static_cast<double>(steps_e) / rounds,
                static_cast<double>(steps_h) / rounds, percentile(hr.ttft, 0.5), percentile(hr.ttft, 0.99));
    std::fflush(stdout);
  }
  server.shutdown();
  serve.join();
  return 0;
}
