#include "config.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <arpa/inet.h>
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <memory>
#include <fstream>
#include <set>
#include <sstream>

#include <toml++/toml.h>

namespace airlock::daemon {
namespace {

bool numeric_address(const std::string& host) {
  unsigned char buf[16];
  return ::inet_pton(AF_INET, host.c_str(), buf) == 1 || ::inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

}  // namespace

Status parse_listen(const std::string& value, Config* config) {
  std::string host, port;
  if (!value.empty() && value[0] == '[') {
    const std::size_t close = value.find("]:");
    if (close == std::string::npos) return invalid_argument("listen: expected [IPv6]:PORT, got '" + value + "'");
    host = value.substr(1, close - 1);
    port = value.substr(close + 2);
  } else {
    const std::size_t colon = value.rfind(':');
    if (colon == std::string::npos || value.find(':') != colon)
      return invalid_argument("listen: expected HOST:PORT, got '" + value + "'");
    host = value.substr(0, colon);
    port = value.substr(colon + 1);
  }
  if (!numeric_address(host))
    return invalid_argument("listen: '" + host + "' is not a numeric IP address (host names are never resolved)");
  int p = -1;
  auto [ptr, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
  if (ec != std::errc() || ptr != port.data() + port.size() || p < 0 || p > 65535)
    return invalid_argument("listen: bad port '" + port + "'");
  config->listen_host = host;
  config->listen_port = p;
  return Status::ok();
}

namespace {

bool valid_key_name(std::string_view n) {
  return !n.empty() && n.size() <= 64 && std::all_of(n.begin(), n.end(), [](char ch) {
    return std::isalnum(static_cast<unsigned char>(ch)) || ch == '.' || ch == '_' || ch == '-' || ch == '@';
  });
}

// An integer key of `t` in [lo, hi] into *out (left alone when absent);
// `where` prefixes the key in messages ("rag." for the [rag] table).
template <typename T>
Status read_int(const toml::table& t, const std::string& origin, const std::string& where, const char* key,
                std::int64_t lo, std::int64_t hi, T* out) {
  if (const toml::node* n = t.get(key)) {
    const std::string name = origin + ": " + where + key + ": ";
    if (!n->is_integer()) return invalid_argument(name + "must be an integer");
    const std::int64_t v = n->as_integer()->get();
    if (v < lo || v > hi) return invalid_argument(name + "must be between " + std::to_string(lo) + " and " + std::to_string(hi));
    *out = static_cast<T>(v);
  }
  return Status::ok();
}

Status parse_rag(const toml::table& t, const std::string& origin, RagConfig* r) {
  static const std::set<std::string> kKeys = {
      "enabled", "database", "chunk_tokens", "chunk_overlap", "top_k", "candidates", "rerank_candidates", "min_similarity",
      "min_term_coverage", "ann_threshold", "max_document_bytes", "max_concurrent_ingests", "upload_timeout_ms",
      "pdf_timeout_ms", "pdf_memory_mib", "refusal",
      "query_prefix", "document_prefix", "admins", "groups"};
  auto bad = [&](const std::string& key, const std::string& why) {
    return invalid_argument(origin + ": rag." + key + ": " + why);
  };
  for (const auto& [k, v] : t)
    if (!kKeys.count(std::string(k.str()))) return bad(std::string(k.str()), "unknown key");
  auto get_int = [&](const char* key, std::int64_t lo, std::int64_t hi, auto* out) {
    return read_int(t, origin, "rag.", key, lo, hi, out);
  };
  auto get_ratio = [&](const char* key, double* out) -> Status {
    if (const toml::node* n = t.get(key)) {
      if (!n->is_number()) return bad(key, "must be a number");
      const double v = n->is_integer() ? static_cast<double>(n->as_integer()->get()) : n->as_floating_point()->get();
      if (!(v >= -1 && v <= 1)) return bad(key, "must be between -1 and 1");
      *out = v;
    }
    return Status::ok();
  };
  auto names = [&](const toml::node& n, const std::string& key, std::vector<std::string>* out) -> Status {
    const toml::array* a = n.as_array();
    if (a == nullptr) return bad(key, "must be an array of key names");
    for (const toml::node& x : *a) {
      if (!x.is_string() || !valid_key_name(x.as_string()->get())) return bad(key, "must hold API key names");
      out->push_back(x.as_string()->get());
    }
    return Status::ok();
  };
  if (const toml::node* n = t.get("enabled")) {
    if (!n->is_boolean()) return bad("enabled", "must be true or false");
    r->enabled = n->as_boolean()->get();
  }
  if (const toml::node* n = t.get("database")) {
    if (!n->is_string() || n->as_string()->get().empty()) return bad("database", "must be a path");
    r->database = n->as_string()->get();
  }
  if (const toml::node* n = t.get("refusal")) {
    if (!n->is_string() || n->as_string()->get().empty() || n->as_string()->get().size() > 4096)
      return bad("refusal", "must be a text of 1 to 4096 bytes");
    r->refusal = n->as_string()->get();
  }
  for (auto [key, out] : {std::pair{"query_prefix", &r->query_prefix}, std::pair{"document_prefix", &r->document_prefix}})
    if (const toml::node* n = t.get(key)) {
      if (!n->is_string() || n->as_string()->get().size() > 1024) return bad(key, "must be a text of at most 1024 bytes");
      *out = n->as_string()->get();
    }
  AIRLOCK_RETURN_IF_ERROR(get_int("chunk_tokens", 16, 8192, &r->chunk_tokens));
  AIRLOCK_RETURN_IF_ERROR(get_int("chunk_overlap", 0, 4096, &r->chunk_overlap));
  if (r->chunk_overlap >= r->chunk_tokens) return bad("chunk_overlap", "must be smaller than chunk_tokens");
  AIRLOCK_RETURN_IF_ERROR(get_int("top_k", 1, 50, &r->top_k));
  AIRLOCK_RETURN_IF_ERROR(get_int("candidates", 1, 1000, &r->candidates));
  AIRLOCK_RETURN_IF_ERROR(get_int("rerank_candidates", 0, 100, &r->rerank_candidates));
  AIRLOCK_RETURN_IF_ERROR(get_ratio("min_similarity", &r->min_similarity));
  AIRLOCK_RETURN_IF_ERROR(get_ratio("min_term_coverage", &r->min_term_coverage));
  AIRLOCK_RETURN_IF_ERROR(get_int("ann_threshold", 1, std::int64_t{1} << 40, &r->ann_threshold));
  AIRLOCK_RETURN_IF_ERROR(get_int("max_document_bytes", 1024, std::int64_t{1} << 32, &r->max_document_bytes));
  AIRLOCK_RETURN_IF_ERROR(get_int("max_concurrent_ingests", 1, 1024, &r->max_concurrent_ingests));
  AIRLOCK_RETURN_IF_ERROR(get_int("upload_timeout_ms", 1000, 3600000, &r->upload_timeout_ms));
  AIRLOCK_RETURN_IF_ERROR(get_int("pdf_timeout_ms", 100, 600000, &r->pdf_timeout_ms));
  AIRLOCK_RETURN_IF_ERROR(get_int("pdf_memory_mib", 64, 1 << 20, &r->pdf_memory_mib));
  if (const toml::node* n = t.get("admins")) AIRLOCK_RETURN_IF_ERROR(names(*n, "admins", &r->admins));
  if (const toml::node* n = t.get("groups")) {
    const toml::table* g = n->as_table();
    if (g == nullptr) return bad("groups", "must be a table of group = [key names]");
    for (const auto& [k, v] : *g) {
      const std::string group(k.str());
      if (!valid_key_name(group)) return bad("groups", "'" + group + "' is not a valid group name");
      AIRLOCK_RETURN_IF_ERROR(names(v, "groups." + group, &r->groups[group]));
    }
  }
  return Status::ok();
}

}  // namespace

Result<Config> parse_config(std::string_view text, const std::string& origin, Config c) {
  toml::table t;
  try {
    t = toml::parse(text, origin);
  } catch (const toml::parse_error& e) {
    std::ostringstream os;
    os << origin << ":" << e.source().begin.line << ":" << e.source().begin.column << ": " << e.description();
    return invalid_argument(os.str());
  }
  static const std::set<std::string> kTopKeys = {
      "listen", "store", "state", "trusted", "model", "verify_on_load", "device", "threads", "tensor_parallel", "nodes", "node_rank", "nccl_root", "kv_cache_mib", "kv_cache_type", "device_reserve_mib",
      "max_running",
      "max_waiting", "prefill_chunk", "max_body_bytes", "max_body_memory_mib", "drain_seconds", "http_threads", "stream_interval_ms", "reasoning", "prefix_cache", "audit_text", "tls", "rag"};
  for (const auto& [k, v] : t)
    if (!kTopKeys.count(std::string(k.str()))) return invalid_argument(origin + ": unknown key '" + std::string(k.str()) + "'");

  auto bad = [&](const std::string& key, const std::string& why) { return invalid_argument(origin + ": " + key + ": " + why); };
  auto get_string = [&](const toml::table& tab, const char* key, std::string* out) -> Status {
    if (const toml::node* n = tab.get(key)) {
      if (!n->is_string()) return bad(key, "must be a string");
      *out = n->as_string()->get();
    }
    return Status::ok();
  };
  auto get_int = [&](const char* key, std::int64_t lo, std::int64_t hi, auto* out) {
    return read_int(t, origin, "", key, lo, hi, out);
  };
  // A key that takes "auto" (stored as `automatic`) or a number in [lo, hi]
  // of `unit`.
  auto get_auto_or_int = [&](const char* key, const char* unit, std::int64_t lo, std::int64_t hi, auto automatic,
                             auto* out) -> Status {
    const toml::node* n = t.get(key);
    if (n == nullptr || !n->is_string()) return get_int(key, lo, hi, out);
    if (n->as_string()->get() != "auto") return bad(key, std::string("must be \"auto\" or a number of ") + unit);
    *out = automatic;
    return Status::ok();
  };
  if (const toml::node* n = t.get("listen")) {
    if (!n->is_string()) return bad("listen", "must be a string \"HOST:PORT\"");
    Status s = parse_listen(n->as_string()->get(), &c);
    if (!s.is_ok()) return invalid_argument(origin + ": " + s.message());
  }
  AIRLOCK_RETURN_IF_ERROR(get_string(t, "store", &c.store));
  AIRLOCK_RETURN_IF_ERROR(get_string(t, "state", &c.state));
  AIRLOCK_RETURN_IF_ERROR(get_string(t, "trusted", &c.trusted));
  AIRLOCK_RETURN_IF_ERROR(get_string(t, "model", &c.model));
  std::string verify = c.verify_full ? "full" : "sizes";
  AIRLOCK_RETURN_IF_ERROR(get_string(t, "verify_on_load", &verify));
  if (verify != "full" && verify != "sizes") return bad("verify_on_load", "must be \"sizes\" or \"full\"");
  c.verify_full = verify == "full";
  std::string device = engine::device_name(c.device);
  AIRLOCK_RETURN_IF_ERROR(get_string(t, "device", &device));
  const std::optional<engine::Device> d = engine::parse_device(device);
  if (!d) return bad("device", "must be \"auto\", \"cpu\" or \"cuda\"");
  c.device = *d;
  AIRLOCK_RETURN_IF_ERROR(get_int("threads", 0, 1024, &c.threads));
  AIRLOCK_RETURN_IF_ERROR(get_int("tensor_parallel", 1, 64, &c.tensor_parallel));
  AIRLOCK_RETURN_IF_ERROR(get_int("nodes", 1, 64, &c.nodes));
  AIRLOCK_RETURN_IF_ERROR(get_int("node_rank", 0, 63, &c.node_rank));
  AIRLOCK_RETURN_IF_ERROR(get_string(t, "nccl_root", &c.nccl_root));
  if (c.node_rank >= c.nodes) return bad("node_rank", "must be below nodes (" + std::to_string(c.nodes) + ")");
  if (c.nodes > 1) {
    if (c.device == engine::Device::kCpu) return bad("nodes", "a group spanning machines needs device = \"cuda\"");
    if (c.nccl_root.empty()) return bad("nccl_root", "is required with nodes > 1");
    if (Status s = engine::check_group_root(c.nccl_root); !s.is_ok()) return bad("nccl_root", s.message());
  }
  AIRLOCK_RETURN_IF_ERROR(get_auto_or_int("kv_cache_mib", "MiB", 1, 1 << 24, std::uint64_t{0}, &c.kv_cache_mib));
  AIRLOCK_RETURN_IF_ERROR(get_int("device_reserve_mib", 0, 1 << 24, &c.device_reserve_mib));
  std::string kv_type = engine::kv_type_name(c.kv_cache_type);
  AIRLOCK_RETURN_IF_ERROR(get_string(t, "kv_cache_type", &kv_type));
  if (kv_type != "f16" && kv_type != "f32") return bad("kv_cache_type", "must be \"f16\" or \"f32\"");
  c.kv_cache_type = kv_type == "f16" ? engine::KvType::kF16 : engine::KvType::kF32;
  AIRLOCK_RETURN_IF_ERROR(get_int("max_running", 1, 4096, &c.max_running));
  AIRLOCK_RETURN_IF_ERROR(get_int("max_waiting", 1, 16384, &c.max_waiting));
  AIRLOCK_RETURN_IF_ERROR(get_int("prefill_chunk", 1, 1 << 20, &c.prefill_chunk));
  AIRLOCK_RETURN_IF_ERROR(get_int("max_body_bytes", 1024, std::int64_t{1} << 32, &c.max_body_bytes));
  AIRLOCK_RETURN_IF_ERROR(
      get_auto_or_int("max_body_memory_mib", "MiB", 1, 1 << 24, std::uint64_t{0}, &c.max_body_memory_mib));
  if (c.max_body_memory_mib != 0 && (c.max_body_memory_mib << 20) < kBodyMemoryPerByte * c.max_body_bytes)
    return bad("max_body_memory_mib", "must hold one body of max_body_bytes and its JSON tree (" +
                                          std::to_string(kBodyMemoryPerByte) + " x max_body_bytes: " +
                                          std::to_string((kBodyMemoryPerByte * c.max_body_bytes + (1u << 20) - 1) >> 20) +
                                          " MiB)");
  AIRLOCK_RETURN_IF_ERROR(get_int("drain_seconds", 0, 3600, &c.drain_seconds));
  AIRLOCK_RETURN_IF_ERROR(get_auto_or_int("http_threads", "threads", 2, 32768, 0, &c.http_threads));
  if (c.http_threads != 0 && c.http_threads <= c.max_running + c.max_waiting)
    return bad("http_threads", "must be larger than max_running + max_waiting (" +
                                   std::to_string(c.max_running + c.max_waiting) +
                                   "): each running or waiting request holds a connection thread, and a full queue "
                                   "must still be answered with 429 (\"auto\" adds " +
                                   std::to_string(kSpareHttpThreads) + " spare threads)");
  AIRLOCK_RETURN_IF_ERROR(
      get_auto_or_int("stream_interval_ms", "milliseconds", 0, 1000, kStreamIntervalAuto, &c.stream_interval_ms));
  std::string reasoning = c.separate_reasoning ? "separate" : "inline";
  AIRLOCK_RETURN_IF_ERROR(get_string(t, "reasoning", &reasoning));
  if (reasoning != "separate" && reasoning != "inline") return bad("reasoning", "must be \"separate\" or \"inline\"");
  c.separate_reasoning = reasoning == "separate";
  std::string prefix_cache = c.prefix_cache_per_key ? "per_key" : "shared";
  AIRLOCK_RETURN_IF_ERROR(get_string(t, "prefix_cache", &prefix_cache));
  if (prefix_cache != "per_key" && prefix_cache != "shared") return bad("prefix_cache", "must be \"per_key\" or \"shared\"");
  c.prefix_cache_per_key = prefix_cache == "per_key";
  if (const toml::node* n = t.get("audit_text")) {
    if (!n->is_boolean()) return bad("audit_text", "must be true or false");
    c.audit_text = n->as_boolean()->get();
  }
  if (const toml::node* n = t.get("tls")) {
    const toml::table* tls = n->as_table();
    if (tls == nullptr) return bad("tls", "must be a table");
    for (const auto& [k, v] : *tls)
      if (k.str() != "cert" && k.str() != "key" && k.str() != "client_ca")
        return bad("tls", "unknown key '" + std::string(k.str()) + "'");
    AIRLOCK_RETURN_IF_ERROR(get_string(*tls, "cert", &c.tls_cert));
    AIRLOCK_RETURN_IF_ERROR(get_string(*tls, "key", &c.tls_key));
    AIRLOCK_RETURN_IF_ERROR(get_string(*tls, "client_ca", &c.tls_client_ca));
    if (c.tls_cert.empty() != c.tls_key.empty()) return bad("tls", "cert and key go together");
    if (!c.tls_client_ca.empty() && c.tls_cert.empty()) return bad("tls", "client_ca needs cert and key");
  }
  if (const toml::node* n = t.get("rag")) {
    const toml::table* rag = n->as_table();
    if (rag == nullptr) return bad("rag", "must be a table");
    AIRLOCK_RETURN_IF_ERROR(parse_rag(*rag, origin, &c.rag));
  }
  return c;
}

Result<Config> load_config(const std::string& path, bool must_exist) {
  // Only a file that is not there means "the defaults"; one that cannot be
  // read (permissions, a directory) is an error, never silently ignored.
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    const int e = errno;
    struct stat link {};
    const bool dangling = ::lstat(path.c_str(), &link) == 0;  // a link to nothing is not "no file"
    if (e == ENOENT && !must_exist && !dangling) return Config{};
    return not_found(path + ": cannot read the configuration file: " +
                     (dangling ? std::string("a symbolic link to a file that does not exist") : std::strerror(e)));
  }
  if (S_ISDIR(st.st_mode)) return invalid_argument(path + ": the configuration is a directory");
  std::ifstream in(path, std::ios::binary);
  if (!in) return not_found(path + ": cannot read the configuration file: " + std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (ss.str().size() > (1u << 20)) return invalid_argument(path + ": larger than 1 MiB");
  return parse_config(ss.str(), path);
}

namespace {

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};
using File = std::unique_ptr<std::FILE, FileCloser>;

Status tls_file_error(const std::string& what, const std::string& path, const std::string& why) {
  ERR_clear_error();
  return invalid_argument("TLS: " + what + " '" + path + "': " + why);
}

}  // namespace

Status check_tls_files(const Config& c) {
  if (c.tls_cert.empty()) return Status::ok();
  File cert_file(std::fopen(c.tls_cert.c_str(), "re"));
  if (!cert_file) return tls_file_error("certificate", c.tls_cert, std::strerror(errno));
  std::unique_ptr<X509, decltype(&X509_free)> cert(PEM_read_X509_AUX(cert_file.get(), nullptr, nullptr, nullptr), X509_free);
  if (!cert) return tls_file_error("certificate", c.tls_cert, "no PEM certificate in it");
  File key_file(std::fopen(c.tls_key.c_str(), "re"));
  if (!key_file) return tls_file_error("key", c.tls_key, std::strerror(errno));
  // A private key every local user can read is no secret (group-readable
  // is common: the ssl-cert group).
  struct stat key_stat {};
  if (::fstat(::fileno(key_file.get()), &key_stat) == 0 && (key_stat.st_mode & S_IRWXO) != 0)
    return tls_file_error("key", c.tls_key, "every user can read or write it (chmod o-rwx)");
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(PEM_read_PrivateKey(key_file.get(), nullptr, nullptr, nullptr),
                                                          EVP_PKEY_free);
  if (!key) return tls_file_error("key", c.tls_key, "no unencrypted PEM private key in it");
  if (X509_check_private_key(cert.get(), key.get()) != 1)
    return tls_file_error("key", c.tls_key, "it is not the key of the certificate '" + c.tls_cert + "'");
  if (!c.tls_client_ca.empty()) {
    File ca_file(std::fopen(c.tls_client_ca.c_str(), "re"));
    if (!ca_file) return tls_file_error("client CA", c.tls_client_ca, std::strerror(errno));
    std::unique_ptr<X509, decltype(&X509_free)> ca(PEM_read_X509_AUX(ca_file.get(), nullptr, nullptr, nullptr), X509_free);
    if (!ca) return tls_file_error("client CA", c.tls_client_ca, "no PEM certificate in it");
  }
  ERR_clear_error();
  return Status::ok();
}

}  // namespace airlock::daemon
