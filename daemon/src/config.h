// airlockd configuration: a TOML file (/etc/airlock/airlockd.toml by
// default) with command-line overrides. Every key is optional; unknown keys
// and out-of-range values are errors (a typo must not silently fall back to
// a default in a security product).
//
// Errors: kNotFound for a missing file named explicitly, kInvalidArgument
// naming the key for everything else.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "airlock/common/status.h"

namespace airlock::daemon {

struct Config {
  std::string listen_host = "127.0.0.1";  // numeric IPv4/IPv6 only: nothing is ever resolved
  int listen_port = 8080;                  // 0: an ephemeral port (printed at start)
  std::string store = "/var/lib/airlock/bundles";
  std::string state = "/var/lib/airlock";
  std::string trusted = "/etc/airlock/trusted.d";
  std::string model;                       // bundle name to serve; empty: the most recent import
  bool verify_full = false;                // verify_on_load = "full" re-hashes every chunk
  int threads = 0;                         // compute threads; 0: every available core
  std::uint64_t kv_cache_mib = 1024;
  int max_running = 16;
  int max_waiting = 64;
  int prefill_chunk = 256;
  std::uint64_t max_body_bytes = 8u << 20;
  int drain_seconds = 30;
  int http_threads = 64;
  bool audit_text = false;                 // store prompt and completion text in the audit log
  std::string tls_cert, tls_key, tls_client_ca;
};

// Parses TOML text (`origin` names it in messages).
Result<Config> parse_config(std::string_view text, const std::string& origin, Config base = {});
// Reads `path`; when `must_exist` is false a missing file gives the defaults.
Result<Config> load_config(const std::string& path, bool must_exist);
// "HOST:PORT", "[v6]:PORT" with a numeric address.
Status parse_listen(const std::string& value, Config* config);

}  // namespace airlock::daemon
