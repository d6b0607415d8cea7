// airlockd configuration: a TOML file (/etc/airlock/airlockd.toml by
// default) with command-line overrides. Every key is optional; unknown keys
// and out-of-range values are errors (a typo must not silently fall back to
// a default in a security product).
//
// Errors: kNotFound for a missing file named explicitly, kInvalidArgument
// naming the key for everything else.
#pragma once

#include "airlock/engine/backend.h"
#include "airlock/engine/backend_registry.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "airlock/common/status.h"

namespace airlock::daemon {

// [rag]: documents, retrieval and grounded answers (docs/rag.md).
struct RagConfig {
  bool enabled = true;                    // needs a bundle with an embedding model
  std::string database;                   // empty: STATE/rag.db
  int chunk_tokens = 256;
  int chunk_overlap = 32;
  int top_k = 5;                          // sources given to the model by default
  int candidates = 50;                    // per retriever before fusion
  int rerank_candidates = 20;             // fused hits the bundle's reranker reorders (0-100, the most a search returns; 0: no reranking)
  double min_similarity = 0.55;           // evidence thresholds (rag/grounding.h)
  double min_term_coverage = 0.6;
  std::uint64_t ann_threshold = 20000;    // vectors per collection before HNSW is used
  std::uint64_t max_document_bytes = 32u << 20;
  // Document uploads read or ingested at once; more get 429 with
  // Retry-After before their body is read. Each holds its document in
  // memory several times over (body, text, chunks) and a connection thread.
  int max_concurrent_ingests = 2;
  // The least time a document upload's body is given to arrive in whole;
  // a larger body gets as long as its Content-Length takes at 64 KiB/s
  // (server.cpp, upload_read_time()). A slower one is cut off with 408 and
  // gives its place among the ingests back.
  int upload_timeout_ms = 30000;
  int pdf_timeout_ms = 30000;
  std::uint64_t pdf_memory_mib = 512;
  std::string refusal;                    // empty: the built-in text
  // Put in front of every question / every chunk before embedding (models
  // trained with instructions: "search_query: ", "query: ", ...). A new
  // document prefix makes a new store (ingest again).
  std::string query_prefix;
  std::string document_prefix;
  std::vector<std::string> admins;        // key names that may read and manage every collection
  std::map<std::string, std::vector<std::string>> groups;  // group -> key names
};

// stream_interval_ms = "auto" (stream_interval()).
inline constexpr int kStreamIntervalAuto = -1;

struct Config {
  std::string listen_host = "127.0.0.1";  // numeric IPv4/IPv6 only: nothing is ever resolved
  int listen_port = 8080;                  // 0: an ephemeral port (printed at start)
  std::string store = "/var/lib/airlock/bundles";
  std::string state = "/var/lib/airlock";
  std::string trusted = "/etc/airlock/trusted.d";
  std::string model;                       // bundle name to serve; empty: the most recent import
  bool verify_full = false;                // verify_on_load = "full" re-hashes every chunk
  engine::Device device = engine::Device::kAuto;  // "auto" (CUDA when built and present), "cpu", "cuda"
  int threads = 0;                         // compute threads; 0: every available core
  int tensor_parallel = 1;                 // ranks of the model: GPUs 0..N-1 (NCCL), or CPU threads sharing `threads`
  // A tensor-parallel group spanning machines (GPUs only): `nodes`
  // machines of tensor_parallel GPUs each; this one holds ranks
  // node_rank * tensor_parallel onwards. Node 0 serves the API and drives
  // the others, which only follow. They meet at nccl_root, a literal
  // "IPv4:port" or "[IPv6]:port" where node 0 listens (NCCL's bootstrap).
  int nodes = 1;
  int node_rank = 0;
  std::string nccl_root;
  std::uint64_t kv_cache_mib = 0;          // 0: "auto" (1024 MiB on the CPU; on a GPU what is free after the weights)
  std::uint64_t device_reserve_mib = 1024;  // GPU memory kept free beyond the activations (libraries, context)
  engine::KvType kv_cache_type = engine::KvType::kF16;  // "f16" (half the memory per sequence) or "f32"
  int max_running = 16;
  int max_waiting = 64;
  int prefill_chunk = 256;
  std::uint64_t max_body_bytes = 8u << 20;
  // Memory for request bodies in flight and their JSON trees, in MiB (0:
  // "auto", body_memory_bytes()); document uploads are bounded by the
  // ingests instead.
  std::uint64_t max_body_memory_mib = 0;
  int drain_seconds = 30;
  int http_threads = 0;                     // 0: "auto", http_thread_count()
  // SSE: least time between two writes of one stream (0: every token at
  // once); kStreamIntervalAuto: stream_interval().
  int stream_interval_ms = kStreamIntervalAuto;
  // A thinking model's <think> block: "separate" returns it as
  // reasoning_content beside the content; "inline" leaves it in the content.
  bool separate_reasoning = true;
  // Cached prompt blocks shared only among the requests of one API key
  // (cache hits would otherwise tell one client what another sent), or
  // among all.
  bool prefix_cache_per_key = true;
  bool audit_text = false;                 // store prompt and completion text in the audit log
  std::string tls_cert, tls_key, tls_client_ca;
  RagConfig rag;
};

// What a request's body takes of max_body_memory_mib while it is read and
// parsed, per byte of its Content-Length: the body itself and its JSON
// tree, which nlohmann builds at up to ~30 times the text's size ([[],
// [],...] or [[[0]]],...: 240 MiB for 8 MiB).
inline constexpr std::uint64_t kBodyMemoryPerByte = 32;

// max_body_memory_mib in bytes: "auto" is 1 GiB, or room for four bodies of
// max_body_bytes if that is more.
inline std::uint64_t body_memory_bytes(const Config& c) {
  if (c.max_body_memory_mib != 0) return c.max_body_memory_mib << 20;
  return std::max<std::uint64_t>(std::uint64_t{1} << 30, 4 * kBodyMemoryPerByte * c.max_body_bytes);
}

// stream_interval_ms "auto" (the default): 20 ms while the model computes
// on the host's cores, 0 on a GPU. On the CPU every wake-up and write of a
// stream's connection thread takes a core from the model, and a small
// model's stream gets a token every millisecond or less: written one by
// one, at 16 clients the HTTP path made 0.79-0.92 of the engine's rate,
// gathered every 20 ms (50 writes a second at most) 0.90-0.97
// (docs/benchmarks.md). Tokens further apart than the interval (any model
// of a useful size on a CPU) go out at once, so it delays nothing there.
// On a GPU the host's cores are free for the writes, and a fast stream's
// tokens go out one by one.
inline constexpr int kAutoStreamIntervalOnHostMs = 20;
inline std::chrono::milliseconds stream_interval(const Config& c, bool model_uses_host_cores) {
  if (c.stream_interval_ms != kStreamIntervalAuto) return std::chrono::milliseconds(c.stream_interval_ms);
  return std::chrono::milliseconds(model_uses_host_cores ? kAutoStreamIntervalOnHostMs : 0);
}

// Connection threads beyond the requests admitted (running or waiting):
// for the 429s and 503s of a full queue, /health, /metrics, and idle
// keep-alive connections.
inline constexpr int kSpareHttpThreads = 64;

// Each running or waiting request holds a connection thread for its whole
// life (cpp-httplib: a thread per connection), so "auto" gives every
// admitted request one plus the spares; a set value must exceed
// max_running + max_waiting, or a full pool would leave new connections
// queued unanswered before the waiting queue could answer 429. These
// threads are kept; more are started while every one is busy (an idle
// connection holds one for up to the keep-alive timeout), up to
// http_thread_cap().
inline int http_thread_count(const Config& c) {
  return c.http_threads != 0 ? c.http_threads : c.max_running + c.max_waiting + kSpareHttpThreads;
}

// The most connection threads at once: beyond them, a new connection waits
// for a thread to finish with its connection.
inline constexpr int kMaxHttpThreads = 1024;
inline int http_thread_cap(const Config& c) {
  const int kept = http_thread_count(c);
  return kept > kMaxHttpThreads ? kept : kMaxHttpThreads;
}

// Parses TOML text (`origin` names it in messages).
Result<Config> parse_config(std::string_view text, const std::string& origin, Config base = {});
// Reads `path`; when `must_exist` is false a missing file gives the defaults.
Result<Config> load_config(const std::string& path, bool must_exist);
// "HOST:PORT", "[v6]:PORT" with a numeric address.
Status parse_listen(const std::string& value, Config* config);

// With TLS configured: the certificate, its private key (and that they
// belong together) and the client CA file (at least one certificate) can be
// read. kInvalidArgument naming the file otherwise. Run by --check-config and
// before serving (httplib does not say which file failed, and ignores a CA
// file it cannot read: every client would then be refused without a word).
Status check_tls_files(const Config& config);

}  // namespace airlock::daemon
