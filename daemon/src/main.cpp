// airlockd: loads the signed model bundle from its store and serves it.
//
//   airlockd [--config FILE] [--listen HOST:PORT] [--store DIR] [--trusted PATH]
//            [--state DIR] [--model NAME] [--threads N] [--check-config]
//            [--log-level LEVEL]
//
// Lifecycle: systemd Type=notify (READY=1 once the model is loaded and a
// forward pass has run; RELOADING=1 / READY=1 around SIGHUP; STOPPING=1 on
// SIGTERM; WATCHDOG=1 when WatchdogSec is set). SIGHUP re-checks the store
// and loads a newer or re-verified bundle; a bundle that fails keeps the old
// model serving. SIGTERM/SIGINT drain (no new requests; running ones finish
// within drain_seconds) and exit 0. Started by airlockd.socket, it serves on
// the listening socket systemd passes (LISTEN_FDS) instead of binding.
//
// A follower node (config nodes > 1, node_rank > 0) serves nothing: it
// loads its ranks of the bundle, joins node 0's group and runs the passes
// node 0 sends (READY=1 once joined). It exits 0 when node 0 stops the
// group or on SIGTERM (which aborts the group: node 0's passes then fail
// and it needs restarting too), 1 when the group fails; SIGHUP is ignored
// with a warning (a group reloads by restarting every node).
//
// Exit statuses: 0 after a clean stop; 2 for a usage or configuration
// error; 65 (EX_DATAERR) when the bundle to serve is refused: it fails
// verification (signature, revoked key, rollback record, expiry, required
// Airlock version, sizes or, with verify_on_load = "full", hashes) or its
// model cannot be read (a malformed GGUF or tokenizer); 1 for any other
// failure. The unit does not restart on 2 or 65 (RestartPreventExitStatus):
// neither goes away by itself, and restarting would verify (with "full",
// re-hash) the bundle every few seconds. A missing bundle, or a file that
// cannot be opened or mapped, exits 1 and is retried.
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>
#include <systemd/sd-daemon.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "airlock/common/log.h"
#include "airlock/common/version.h"
#include "airlock/rag/extract.h"
#include "airlock/statedb/state_db.h"
#include "airlock/verifier/manifest.h"
#include "config.h"
#include "model_host.h"
#include "server.h"

namespace {

using namespace airlock;
using namespace airlock::daemon;

constexpr int kExitBundleRefused = 65;  // the unit's RestartPreventExitStatus (see the top of this file)

// The exit status for a model that could not be loaded.
int load_failure_exit(const Status& s) {
  if (s.code() != StatusCode::kVerificationFailed) return 1;
  log().error("exit {}: the bundle was refused; systemd does not restart airlockd for this. Import a good "
              "bundle (airlock bundle import), then start airlockd again",
              kExitBundleRefused);
  return kExitBundleRefused;
}

// The audit log's size and newest hash, into the journal: an anchor outside
// the database for `airlock audit verify --expect-hash`.
void log_audit_head(const state::StateDb& db, const char* when) {
  Result<std::pair<std::int64_t, std::string>> head = db.audit_head();
  if (head.is_ok()) log().info("audit log {}: {} rows, head {}", when, head->first, head->second);
  else log().error("audit log {}: {}", when, head.status().to_string());
}

// The unit's WatchdogSec (nothing without it): WATCHDOG=1 every half
// period while alive() says so, until `stop`.
std::thread start_watchdog(const std::atomic<bool>& stop, std::function<bool()> alive) {
  return std::thread([&stop, alive = std::move(alive)] {
    std::uint64_t usec = 0;
    if (::sd_watchdog_enabled(0, &usec) <= 0 || usec == 0) return;
    while (!stop) {
      if (alive()) ::sd_notify(0, "WATCHDOG=1");
      for (std::uint64_t slept = 0; slept < usec / 2 && !stop; slept += 100000)
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });
}

// A follower node's life (see the top of this file).
int run_follower(const Config& config, const sigset_t& signals) {
  log().info("airlockd {} starting as node {} of {} (following node 0)", kVersion, config.node_rank, config.nodes);
  // Signals from the start: forming the group waits for the other nodes,
  // and a stop must not wait for that.
  std::atomic<engine::TensorParallelFollower*> following{nullptr};
  std::atomic<bool> stopped_by_signal{false};
  std::atomic<bool> done{false};
  std::thread signal_thread([&] {
    while (!done) {
      int sig = 0;
      if (sigwait(&signals, &sig) != 0) continue;
      if (done) return;  // the wake-up at the end of run_follower
      if (sig == SIGHUP) {
        log().warn("SIGHUP: a follower node does not reload; restart every node of the group to change the model");
        continue;
      }
      log().info("signal {}: leaving the group", sig == SIGTERM ? "SIGTERM" : "SIGINT");
      ::sd_notify(0, "STOPPING=1");
      stopped_by_signal = true;
      engine::TensorParallelFollower* f = following.load();
      if (f == nullptr) {
        log().info("stopped before the group formed");
        std::_Exit(0);  // nothing to flush: a follower keeps no state
      }
      f->abort(unavailable("node " + std::to_string(config.node_rank) + " is stopping"));
      return;
    }
  });
  auto finish = [&](int code) {
    done = true;
    ::pthread_kill(signal_thread.native_handle(), SIGTERM);  // wakes sigwait (a no-op once it has returned)
    signal_thread.join();
    return code;
  };
  Result<std::unique_ptr<FollowerHost>> host = load_follower(config);
  if (!host.is_ok()) {
    log().error("not following: {}", host.status().to_string());
    return finish(load_failure_exit(host.status()));
  }
  log().info("joined the group with {} version {}; following node 0", (*host)->id, (*host)->version);
  following = (*host)->follower.get();
  ::sd_notify(0, "READY=1\nSTATUS=following node 0");
  // Alive while following (a group whose peer fails is ended by NCCL's
  // error, not by this ping).
  std::thread watchdog = start_watchdog(done, [] { return true; });
  const Status s = (*host)->follower->run();
  const int code = finish(s.is_ok() || stopped_by_signal ? 0 : 1);
  watchdog.join();
  if (s.is_ok()) log().info("node 0 stopped the group");
  else if (!stopped_by_signal) log().error("the group failed: {}", s.to_string());
  return code;
}

int usage(const std::string& why) {
  if (!why.empty()) std::fprintf(stderr, "airlockd: %s\n", why.c_str());
  std::fprintf(stderr,
               "usage: airlockd [--config FILE] [--listen HOST:PORT] [--store DIR] [--trusted PATH] [--state DIR]\n"
               "                [--model NAME] [--threads N] [--log-level debug|info|warn|error] [--check-config]\n");
  return 2;
}

struct Args {
  std::string config_path = "/etc/airlock/airlockd.toml";
  bool config_given = false;
  bool check_only = false;
  LogLevel level = LogLevel::kInfo;
  std::vector<std::pair<std::string, std::string>> overrides;
};

}  // namespace

int main(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&](std::string* out) {
      if (i + 1 >= argc) return false;
      *out = argv[++i];
      return true;
    };
    std::string v;
    if (arg == "--help" || arg == "-h") {
      usage("");
      return 0;
    }
    if (arg == "--check-config") a.check_only = true;
    else if (arg == "--version") {
      std::printf("airlockd %s\n", kVersion);
      return 0;
    } else if (arg == "--config") {
      if (!value(&a.config_path)) return usage("--config needs a file");
      a.config_given = true;
    } else if (arg == "--log-level") {
      if (!value(&v) || !parse_log_level(v, &a.level)) return usage("--log-level needs debug, info, warn or error");
    } else if (arg == "--listen" || arg == "--store" || arg == "--trusted" || arg == "--state" || arg == "--model" ||
               arg == "--threads") {
      if (!value(&v)) return usage(arg + " needs a value");
      a.overrides.emplace_back(arg.substr(2), v);
    } else {
      return usage("unknown argument '" + arg + "'");
    }
  }
  init_logging(a.level);

  Result<Config> loaded = load_config(a.config_path, a.config_given);
  if (!loaded.is_ok()) {
    std::fprintf(stderr, "airlockd: %s\n", loaded.status().message().c_str());
    return 2;
  }
  Config config = *loaded;
  for (const auto& [k, v] : a.overrides) {
    if (k == "listen") {
      if (Status s = parse_listen(v, &config); !s.is_ok()) return usage(s.message());
    } else if (k == "store") config.store = v;
    else if (k == "trusted") config.trusted = v;
    else if (k == "state") config.state = v;
    else if (k == "model") config.model = v;
    else if (k == "threads") {
      try {
        config.threads = std::stoi(v);
      } catch (...) {
        return usage("--threads needs a number");
      }
      if (config.threads < 0 || config.threads > 1024) return usage("--threads must be 0 to 1024");
    }
  }
  if (a.check_only) {
    if (Status s = check_tls_files(config); !s.is_ok()) {
      std::fprintf(stderr, "airlockd: %s\n", s.message().c_str());
      return 2;
    }
    std::printf("configuration OK: listen %s:%d, store %s, trusted %s, state %s\n", config.listen_host.c_str(),
                config.listen_port, config.store.c_str(), config.trusted.c_str(), config.state.c_str());
    if (config.nodes > 1)
      std::printf("node %d of %d, %d GPUs each, meeting at %s%s\n", config.node_rank, config.nodes,
                  config.tensor_parallel, config.nccl_root.c_str(), config.node_rank > 0 ? " (follows node 0)" : "");
    return 0;
  }

  // A group spanning machines meets through NCCL's bootstrap, which reads
  // its root from the environment: set before any thread starts (setenv
  // is not safe against other threads' getenv).
  if (config.nodes > 1) {
    ::setenv("NCCL_COMM_ID", config.nccl_root.c_str(), 1);
    ::setenv("NCCL_RUNTIME_CONNECT", "0", 0);
  }

  // Signals are handled by one thread through sigwait; block them everywhere.
  sigset_t signals;
  sigemptyset(&signals);
  for (int s : {SIGHUP, SIGTERM, SIGINT}) sigaddset(&signals, s);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  // Not dumpable: another process of the same user (an exploited PDF
  // extractor, say) cannot ptrace airlockd or read /proc/PID/mem for the
  // bearer keys and TLS private key in memory, and no core file holds them.
  if (::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) log().warn("prctl(PR_SET_DUMPABLE, 0) failed: {}", std::strerror(errno));

  // The bundle check holds every file of the bundle open until it ends (up
  // to 4,096 files), beside sockets and databases: the soft limit on open
  // files (often 1,024) is raised to the hard one, as it may be.
  if (struct rlimit nofile; ::getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
    const rlim_t was = nofile.rlim_cur;
    nofile.rlim_cur = nofile.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &nofile) != 0)
      log().warn("could not raise the open-file limit from {}: {}", static_cast<unsigned long long>(was), std::strerror(errno));
  }

  if (config.node_rank > 0) return run_follower(config, signals);
  log().info("airlockd {} starting", kVersion);
  if (config.rag.enabled) log().info("PDF extraction sandbox: {}", rag::pdf_sandbox_summary());
  Result<state::StateDb> db = state::StateDb::open(config.state);
  if (!db.is_ok()) {
    log().error("state: {}", db.status().to_string());
    return 1;
  }
  log_audit_head(*db, "at start");
  auto keys = std::make_shared<std::shared_ptr<const state::KeyVerifier>>();
  std::mutex keys_mu;
  auto reload_keys = [&]() -> Status {
    AIRLOCK_ASSIGN_OR_RETURN(std::vector<state::StoredKey> k, db->load_active_keys());
    log().info("{} active API keys", k.size());
    auto v = std::make_shared<const state::KeyVerifier>(std::move(k));
    std::lock_guard<std::mutex> lock(keys_mu);
    *keys = std::move(v);
    return Status::ok();
  };
  if (Status s = reload_keys(); !s.is_ok()) {
    log().error("state: {}", s.to_string());
    return 1;
  }
  Metrics metrics;
  Counter& audit_drops = metrics.counter("airlock_audit_dropped_total", "Audit records dropped because the queue was full");
  Counter& audit_failures =
      metrics.counter("airlock_audit_write_failures_total", "Failed attempts to write audit records (each retried)");
  // A failed write keeps its records queued and is retried with a growing
  // pause (at most one attempt a second at first), so this logs at most as often.
  state::AuditWriter audit_writer(*db, 65536, [&](const Status& why, std::size_t records, bool dropped) {
    audit_failures.inc();
    if (dropped) log().error("audit: {} records could not be written and are lost: {}", records, why.to_string());
    else log().error("audit: writing {} records failed (kept, retrying): {}", records, why.to_string());
  });

  std::atomic<std::int64_t> audit_drop_logged{0};  // when a drop was last logged (unix seconds)
  Server server(
      config,
      [&](std::string_view token) -> std::optional<std::string> {
        std::shared_ptr<const state::KeyVerifier> v;
        {
          std::lock_guard<std::mutex> lock(keys_mu);
          v = *keys;
        }
        return v->authenticate(token);
      },
      [&](AuditEvent e) {
        state::AuditRecord r;
        r.time_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                        std::chrono::system_clock::now().time_since_epoch()).count();
        r.key_name = e.key_name;
        r.route = e.route;
        r.model = e.model;
        r.status = e.status;
        r.prompt_tokens = e.prompt_tokens;
        r.completion_tokens = e.completion_tokens;
        r.latency_s = e.latency_s;
        r.request_id = e.request_id;
        if (config.audit_text) {
          r.prompt_text = e.prompt_text;
          r.completion_text = e.completion_text;
        }
        const std::int64_t now_s = r.time_ms / 1000;
        if (!audit_writer.record(std::move(r))) {
          audit_drops.inc();
          // Logged at most every 10 s; the chain gets an "(audit gap)" row with the count.
          std::int64_t last = audit_drop_logged.load();
          if (now_s >= last + 10 && audit_drop_logged.compare_exchange_strong(last, now_s))
            log().error("audit: the queue is full (the database is not taking writes fast enough); records are being "
                        "dropped, see airlock_audit_dropped_total");
        }
      },
      metrics);

  Result<std::shared_ptr<LoadedModel>> model = load_model(config);
  if (!model.is_ok()) {
    log().error("no model loaded: {}", model.status().to_string());
    return load_failure_exit(model.status());
  }
  server.set_model(*model);
  // Socket activation (airlockd.socket): systemd passes one listening
  // socket, and the configured listen address is not used. Otherwise bind.
  std::string listening;
  const int n_passed = ::sd_listen_fds(1);
  if (n_passed < 0) {
    log().error("socket activation: {}", std::strerror(-n_passed));
    return 1;
  }
  if (n_passed > 1) {
    log().error("socket activation: systemd passed {} sockets; airlockd serves on one (one ListenStream= line)",
                n_passed);
    return 1;
  }
  if (n_passed == 1) {
    Result<SocketAddress> passed = server.adopt(SD_LISTEN_FDS_START);
    if (!passed.is_ok()) {
      log().error("socket activation: {}", passed.status().to_string());
      return 1;
    }
    listening = passed->to_string();
    log().info("serving on the socket passed by systemd; 'listen' in the configuration is not used");
  } else {
    Result<int> port = server.bind();
    if (!port.is_ok()) {
      log().error("{}", port.status().to_string());
      return 1;
    }
    listening = SocketAddress{config.listen_host, *port}.to_string();
  }
  log().info("listening on {}", listening);
  std::fprintf(stdout, "airlockd listening on %s\n", listening.c_str());
  std::fflush(stdout);
  ::sd_notify(0, "READY=1\nSTATUS=serving");

  std::atomic<bool> stopping{false};
  std::thread watchdog = start_watchdog(stopping, [&] {
    std::shared_ptr<LoadedModel> m = server.model();
    return m ? m->scheduler->healthy() : server.withdrawn();  // withdrawn on purpose: alive
  });

  // A reload runs on its own thread so that a SIGTERM during it (a long
  // rehash with verify_on_load = "full") is answered at once: the rehash is
  // cancelled and the new model, if it finished loading, is dropped.
  // reload_mu orders "publish the new model" against "begin the shutdown".
  std::mutex reload_mu;
  std::atomic<bool> reload_cancel{false};
  std::atomic<bool> reloading{false};
  std::thread reload_thread;
  // A served bundle that may no longer be served (a revoked key found by a
  // reload, its expiry passed) is withdrawn: 503 naming why, until a reload
  // loads a good bundle; /health stays up and the watchdog keeps pinging.
  std::weak_ptr<LoadedModel> withdrawn;  // while requests still hold it: the next reload keeps its RAG store
  auto withdraw = [&](const std::shared_ptr<LoadedModel>& m, const std::string& why) {
    const std::string what = m->id + " version " + std::to_string(m->version) + " may no longer be served: " + why;
    withdrawn = m;
    server.withdraw_model(what);
    log().error("{}; not serving it any more (503) until a good bundle is imported and airlockd reloaded", what);
    ::sd_notifyf(0, "READY=1\nSTATUS=not serving: %s", what.c_str());
  };
  auto reload = [&] {
    log().info("SIGHUP: reloading keys and re-checking the bundle store");
    if (Status s = reload_keys(); !s.is_ok()) log().error("keys not reloaded: {}", s.to_string());
    // The model served, or one withdrawn that requests still use: its RAG
    // store (and in-memory index) is kept rather than opened twice.
    std::shared_ptr<LoadedModel> previous = server.model();
    if (!previous) {
      std::lock_guard<std::mutex> lock(reload_mu);  // withdraw() writes it under reload_mu
      previous = withdrawn.lock();
    }
    Result<std::shared_ptr<LoadedModel>> next = load_model(config, previous, &reload_cancel);
    previous.reset();
    std::lock_guard<std::mutex> lock(reload_mu);
    if (reload_cancel.load()) {
      log().info("reload abandoned: airlockd is stopping");
    } else if (next.is_ok()) {
      server.set_model(*next);
      log().info("now serving {} version {}", (*next)->id, (*next)->version);
      ::sd_notify(0, "READY=1\nSTATUS=serving");
    } else if (std::shared_ptr<LoadedModel> served = server.model(); !served) {
      log().error("reload failed, no model is served: {}", next.status().to_string());
      ::sd_notify(0, "READY=1\nSTATUS=no model served");
    } else if (Status still = recheck_served(config, *served); still.code() == StatusCode::kVerificationFailed) {
      // The bundle being served is itself refused now (its key revoked or
      // no longer trusted, expired): it stops being served.
      withdraw(served, still.message());
    } else {
      log().error("reload failed, still serving the previous model: {}", next.status().to_string());
      ::sd_notify(0, "READY=1\nSTATUS=serving");
    }
    reloading = false;
  };

  std::thread signal_thread([&] {
    while (true) {
      // Woken every second to withdraw a bundle whose expiry has passed.
      const struct timespec second = {1, 0};
      const int sig = ::sigtimedwait(&signals, nullptr, &second);
      if (sig < 0) {
        std::shared_ptr<LoadedModel> m = server.model();
        std::lock_guard<std::mutex> lock(reload_mu);  // not while a reload publishes
        if (m && m->expires_at && std::time(nullptr) >= *m->expires_at && server.model() == m)
          withdraw(m, "the bundle expired at " + verifier::format_utc(*m->expires_at));
        continue;
      }
      if (sig == SIGHUP && config.nodes > 1) {
        log().info("SIGHUP: reloading keys");
        if (Status s = reload_keys(); !s.is_ok()) log().error("keys not reloaded: {}", s.to_string());
        log().warn("SIGHUP: a group spanning machines does not reload its model; restart every node to change it");
        continue;
      }
      if (sig == SIGHUP) {
        if (reloading.exchange(true)) {
          log().warn("SIGHUP: a reload is already running; send SIGHUP again once it has finished");
          continue;
        }
        ::sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu", static_cast<unsigned long long>(
                                                                 std::chrono::duration_cast<std::chrono::microseconds>(
                                                                     std::chrono::steady_clock::now().time_since_epoch())
                                                                     .count()));
        if (reload_thread.joinable()) reload_thread.join();  // the previous one, finished
        reload_thread = std::thread(reload);
        continue;
      }
      log().info("signal {}: draining", sig == SIGTERM ? "SIGTERM" : "SIGINT");
      {
        std::lock_guard<std::mutex> lock(reload_mu);
        if (reloading.load()) log().info("cancelling the reload in progress");
        reload_cancel = true;
      }
      ::sd_notify(0, "STOPPING=1");
      server.shutdown();
      return;
    }
  });

  server.run();
  // httplib leaves its accept loop by itself on errors such as ENFILE: drain
  // and exit 1 (systemd restarts the service) instead of waiting forever
  // for a signal with the watchdog still pinging.
  const bool unasked = !server.stopping();
  if (unasked) {
    log().error("the listener stopped accepting connections; draining and exiting");
    ::kill(::getpid(), SIGTERM);
  }
  stopping = true;
  signal_thread.join();
  if (reload_thread.joinable()) reload_thread.join();  // cancelled: returns at its next chunk
  watchdog.join();
  if (!audit_writer.flush()) log().error("audit: stopping while audit writes fail; the queued records get one more attempt");
  log_audit_head(*db, "at stop");
  log().info("stopped");
  return unasked ? 1 : 0;
}
