// airlockd's HTTP surface (cpp-httplib): OpenAI-compatible completions,
// chat completions and responses (streamed as Server-Sent Events or
// whole), embeddings, RAG, models, health, readiness and Prometheus
// metrics, behind bearer API keys.
//
// Routes: GET /health (no key), GET /ready, GET /metrics, GET /v1/models,
// POST /v1/chat/completions, POST /v1/completions, POST /v1/responses
// (responses_api.h), POST /v1/embeddings, /v1/rag/... Every error is an OpenAI
// envelope {"error": {message, type, param, code}} with 400 (bad JSON or
// parameter, named), 401 (missing or wrong key), 404 (unknown model or
// route), 413 (body over max_body_bytes), 429 (queue full, or
// rag.max_concurrent_ingests documents being ingested; Retry-After),
// 503 (no model, unhealthy, draining; Retry-After).
//
// A client that disconnects has its sequences cancelled, and its KV blocks
// freed, at the next scheduler step: a stream notices on its next write, a
// non-streamed request by watching its socket (counted and audited as 499).
//
// Thread-safety: handlers run on httplib's worker threads; the served model
// is swapped atomically by set_model() (reload), requests in flight finish
// on the model they started with.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "airlock/common/status.h"
#include "config.h"
#include "connection.h"
#include "metrics.h"
#include "model_host.h"

namespace httplib {
class Server;
}

namespace airlock::daemon {

// Returns the key's name for a valid bearer token.
using Authenticator = std::function<std::optional<std::string>(std::string_view token)>;

struct AuditEvent {
  std::string key_name, route, model, request_id;
  int status = 0;
  std::int64_t prompt_tokens = 0, completion_tokens = 0;
  double latency_s = 0;
  std::string prompt_text, completion_text;  // only with audit_text
};
using AuditSink = std::function<void(AuditEvent)>;

class Server {
 public:
  Server(Config config, Authenticator authenticate, AuditSink audit, Metrics& metrics);
  ~Server();

  void set_model(std::shared_ptr<LoadedModel> model);
  // Stops serving the model (its bundle was refused after it was loaded: a
  // revoked or no longer trusted key, expiry): requests get 503 naming
  // `why` until set_model(); requests in flight finish.
  void withdraw_model(std::string why);
  bool withdrawn() const;
  std::shared_ptr<LoadedModel> model() const;

  // Binds the listening socket; returns the port (useful with port 0).
  Result<int> bind();
  // Instead of bind(): serves on `fd`, a listening TCP socket created by
  // systemd (socket activation), whose address it returns; the configured
  // listen address is not used. The server owns the socket from then on.
  // Errors: invalid_argument when fd is not a listening IPv4/IPv6 stream
  // socket or the TLS files do not load.
  Result<SocketAddress> adopt(int fd);
  // Serves until shutdown(); returns when the listener has closed (also,
  // unasked, when accepting connections fails: stopping() is then false).
  // Returns at once when shutdown() came first.
  void run();
  // Stops admitting requests (503 + Retry-After), drains the schedulers of
  // the current model and of any a reload replaced that requests still use,
  // and lets the requests being handled finish, within drain_seconds in all
  // (and at least 2 s after the drain, for the answers it cancelled to be
  // written); then stops the listener (also when run() has not started
  // listening yet) and ends every connection's reading side, so that idle
  // keep-alive connections end at once (a handler still running still
  // writes its answer). Returns once run() has returned, or would return
  // at once. Called from another thread than run().
  void shutdown();
  bool stopping() const;

 private:
  void routes();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace airlock::daemon
