#include "rag_commands.h"

#include <arpa/inet.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>

#include <httplib.h>
#include "airlock/common/json.h"

#include "airlock/verifier/manifest.h"
#include "args.h"
#include "progress.h"
#include "terminal.h"

namespace airlock::bundler {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

int usage(const std::string& message) {
  std::fprintf(stderr, "airlock: %s\n(run 'airlock help' for usage)\n", message.c_str());
  return 2;
}

// Percent-encoding for a path or query component ('/' kept where allowed).
std::string encode(const std::string& s, bool keep_slash) {
  static const char* kHex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' || (keep_slash && c == '/')) {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

// The daemon: http(s)://NUMERIC-IP:PORT, a bearer key, an optional CA file.
class Daemon {
 public:
  static Result<Daemon> connect(const Args& args) {
    std::string url = args.get("url").value_or(std::getenv("AIRLOCK_URL") ? std::getenv("AIRLOCK_URL")
                                                                          : "http://127.0.0.1:8080");
    Daemon d;
    bool tls = false;
    if (url.rfind("http://", 0) == 0) url = url.substr(7);
    else if (url.rfind("https://", 0) == 0) {
      url = url.substr(8);
      tls = true;
    } else {
      return invalid_argument("--url must start with http:// or https://");
    }
    while (!url.empty() && url.back() == '/') url.pop_back();
    std::string host, port = tls ? "443" : "80";
    if (!url.empty() && url[0] == '[') {
      const std::size_t close = url.find(']');
      if (close == std::string::npos) return invalid_argument("--url: unclosed [IPv6] address");
      host = url.substr(1, close - 1);
      if (close + 1 < url.size()) {
        if (url[close + 1] != ':') return invalid_argument("--url: expected :PORT after the address");
        port = url.substr(close + 2);
      }
    } else {
      const std::size_t colon = url.rfind(':');
      host = colon == std::string::npos ? url : url.substr(0, colon);
      if (colon != std::string::npos) port = url.substr(colon + 1);
    }
    unsigned char buf[16];
    // Numeric addresses only: no name is ever looked up.
    if (inet_pton(AF_INET, host.c_str(), buf) != 1 && inet_pton(AF_INET6, host.c_str(), buf) != 1)
      return invalid_argument("--url host must be a numeric IP address (no names are resolved), not '" + host + "'");
    char* end = nullptr;
    const long p = std::strtol(port.c_str(), &end, 10);
    if (port.empty() || *end != '\0' || p < 1 || p > 65535) return invalid_argument("--url port must be 1 to 65535");

    std::string key;
    if (auto f = args.get("key-file")) {
      std::ifstream in(*f);
      if (!in) return not_found("cannot read the key file " + *f);
      std::getline(in, key);
    } else if (const char* k = std::getenv("AIRLOCK_API_KEY")) {
      key = k;
    }
    while (!key.empty() && (key.back() == '\n' || key.back() == '\r' || key.back() == ' ')) key.pop_back();
    if (key.empty()) return invalid_argument("no API key: use --key-file FILE or set AIRLOCK_API_KEY");

    d.where_ = std::string(tls ? "https://" : "http://") + (host.find(':') != std::string::npos ? "[" + host + "]" : host) +
               ":" + std::to_string(p);
    // Built from the checked address, never from the URL text: cpp-httplib's
    // URL parser does not match most IPv6 literals and falls back to a
    // plain-HTTP client on port 80 whose host (the whole URL) goes to the
    // resolver. The address map makes it connect with AI_NUMERICHOST.
    if (tls) {
      auto ssl = std::make_unique<httplib::SSLClient>(host, static_cast<int>(p));
      if (auto ca = args.get("cacert")) ssl->set_ca_cert_path(ca->c_str());
      ssl->enable_server_certificate_verification(true);
      d.client_ = std::move(ssl);
    } else {
      d.client_ = std::make_unique<httplib::ClientImpl>(host, static_cast<int>(p));
    }
    d.client_->set_hostname_addr_map({{host, host}});
    d.client_->set_connection_timeout(5, 0);
    d.client_->set_read_timeout(600, 0);
    d.client_->set_write_timeout(600, 0);
    d.client_->set_default_headers({{"Authorization", "Bearer " + key}});
    return d;
  }

  // The parsed JSON answer, or the error the daemon (or the connection)
  // gave: 429 (busy, try again) is kResourceExhausted, and *retry_after_s
  // (when given) then gets the seconds its Retry-After asks for (1 to 60).
  Result<json> call(const std::string& method, const std::string& path, const std::string& body = "",
                    const std::string& type = "application/json", int* retry_after_s = nullptr) {
    httplib::Result r = method == "GET"      ? client_->Get(path.c_str())
                        : method == "DELETE" ? client_->Delete(path.c_str())
                                             : client_->Post(path.c_str(), body, type.c_str());
    if (!r) return unavailable("cannot reach airlockd at " + where_ + ": " + httplib::to_string(r.error()));
    json j = json::parse(r->body, nullptr, false);
    if (r->status >= 400) {
      std::string msg = j.is_object() && j.contains("error") && j["error"].is_object() &&
                                j["error"].contains("message") && j["error"]["message"].is_string()
                            ? j["error"]["message"].get<std::string>()
                            : "HTTP " + std::to_string(r->status);
      if (r->status == 429 && retry_after_s != nullptr) {
        const long after = std::strtol(r->get_header_value("Retry-After").c_str(), nullptr, 10);
        *retry_after_s = static_cast<int>(std::clamp(after, 1L, 60L));
      }
      return Status(r->status == 404 ? StatusCode::kNotFound
                    : r->status == 429 ? StatusCode::kResourceExhausted
                    : r->status == 403 ? StatusCode::kPermissionDenied
                    : r->status == 401 ? StatusCode::kUnauthenticated
                    : r->status >= 500 ? StatusCode::kUnavailable
                                       : StatusCode::kInvalidArgument,
                    msg);
    }
    if (j.is_discarded()) return internal_error("airlockd answered with something that is not JSON");
    return j;
  }

 private:
  std::unique_ptr<httplib::ClientImpl> client_;
  std::string where_;
};

// The message can carry the daemon's text (an error body): shown() keeps
// its escape sequences off the terminal.
int fail(const Status& s) {
  std::fprintf(stderr, "airlock: %s\n", shown(s.to_string()).c_str());
  return 2;
}

// Files to ingest: each file argument, and every regular file under each
// directory argument (sorted, hidden names skipped), with the name it gets
// in the collection: the file name, or its path relative to the directory.
Result<std::vector<std::pair<std::string, std::string>>> gather(const std::vector<std::string>& paths) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const std::string& p : paths) {
    std::error_code ec;
    const fs::file_status st = fs::status(p, ec);
    if (ec) return not_found(p + ": " + ec.message());
    if (fs::is_regular_file(st)) {
      out.emplace_back(p, fs::path(p).filename().string());
    } else if (fs::is_directory(st)) {
      std::vector<std::pair<std::string, std::string>> found;
      fs::recursive_directory_iterator it(p, fs::directory_options::none, ec), end;
      for (; !ec && it != end; it.increment(ec)) {
        const std::string name = it->path().filename().string();
        if (!name.empty() && name[0] == '.') {
          if (it->is_directory()) it.disable_recursion_pending();
          continue;
        }
        // Symbolic links inside a directory are not followed: a link to a
        // key or a file outside the tree would be uploaded unseen. (A file
        // named on the command line is read wherever it points.)
        if (it->is_regular_file() && !it->is_symlink())
          found.emplace_back(it->path().string(), fs::relative(it->path(), p).string());
      }
      if (ec) return io_error(p, ec.value());
      std::sort(found.begin(), found.end());
      out.insert(out.end(), found.begin(), found.end());
    } else {
      return invalid_argument(p + " is neither a file nor a directory");
    }
  }
  return out;
}

// How long `rag ingest` waits for a place for one file while the daemon
// answers that it is ingesting as many documents as it may (429).
constexpr int kBusyWaitS = 600;

int ingest(Daemon& d, const Args& args) {
  std::optional<std::string> collection = args.get("collection");
  if (!collection || args.positional().empty())
    return usage("usage: airlock rag ingest --collection NAME PATH... [--create] [--quiet]");
  Result<std::vector<std::pair<std::string, std::string>>> files = gather(args.positional());
  if (!files.is_ok()) return fail(files.status());
  if (files->empty()) return usage("no files to ingest");
  if (args.has("create")) {
    Result<json> c = d.call("POST", "/v1/rag/collections", json{{"name", *collection}}.dump(-1, ' ', false, json::error_handler_t::replace));
    if (!c.is_ok() && c.status().message().find("exists") == std::string::npos) return fail(c.status());
  }
  const bool quiet = args.has("quiet");
  std::uint64_t total = 0, done = 0;
  for (const auto& [path, name] : *files) {
    std::error_code ec;
    total += fs::file_size(path, ec);
  }
  Progress progress("ingesting " + std::to_string(files->size()) + " files", quiet);
  int added = 0, replaced = 0, unchanged = 0, duplicate = 0, refused = 0;
  std::vector<std::string> errors;
  for (const auto& [path, name] : *files) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    if (!in && !in.eof()) {
      ++refused;
      errors.push_back(name + ": cannot read " + path);
      continue;
    }
    const std::string bytes = ss.str();
    const std::string target =
        "/v1/rag/collections/" + encode(*collection, false) + "/documents?source=" + encode(name, false);
    int retry_after_s = 1;
    Result<json> r = d.call("POST", target, bytes, "application/octet-stream", &retry_after_s);
    // 429: the daemon is ingesting rag.max_concurrent_ingests documents
    // already (others' uploads); this one waits its turn, for a while.
    for (int waited_s = 0; !r.is_ok() && r.status().code() == StatusCode::kResourceExhausted && waited_s < kBusyWaitS;
         waited_s += retry_after_s) {
      ::sleep(static_cast<unsigned>(retry_after_s));
      r = d.call("POST", target, bytes, "application/octet-stream", &retry_after_s);
    }
    if (!r.is_ok()) {
      if (r.status().code() == StatusCode::kUnavailable && r.status().message().find("cannot reach") == 0)
        return fail(r.status());
      ++refused;
      errors.push_back(r.status().message());
    } else {
      const std::string st = r->value("status", "");
      added += st == "added";
      replaced += st == "replaced";
      unchanged += st == "unchanged";
      duplicate += st == "duplicate";
    }
    done += bytes.size();
    progress.update(done, total);
  }
  progress.finish();
  for (const std::string& e : errors) std::fprintf(stderr, "airlock: refused: %s\n", shown(e).c_str());
  std::printf("%zu files: %d added, %d replaced, %d unchanged, %d duplicates, %d refused\n", files->size(), added,
              replaced, unchanged, duplicate, refused);
  return refused > 0 ? 1 : 0;
}

int query(Daemon& d, const Args& args) {
  if (args.positional().size() != 1) return usage("usage: airlock rag query [--collection NAME]... \"QUESTION\"");
  json body = {{"question", args.positional()[0]}};
  std::vector<std::string> cols = args.all("collection");
  if (!cols.empty()) body["collections"] = cols;
  if (auto k = args.get("top-k")) {
    char* end = nullptr;
    const long v = std::strtol(k->c_str(), &end, 10);
    if (*end != '\0' || v < 1 || v > 20) return usage("--top-k must be 1 to 20");
    body["top_k"] = v;
  }
  if (auto m = args.get("mode")) body["mode"] = *m;
  if (args.has("no-generate")) body["generate"] = false;
  Result<json> r = d.call("POST", "/v1/rag/query", body.dump(-1, ' ', false, json::error_handler_t::replace));
  if (!r.is_ok()) return fail(r.status());
  if (args.has("json")) {
    std::cout << r->dump(2, ' ', false, json::error_handler_t::replace) << "\n";
    return (*r)["handoff"] == true ? 1 : 0;
  }
  // What the server sent, printed defensively: fields may be missing and
  // text may hold terminal escapes.
  const json& a = *r;
  auto text = [](const json& j, const char* key) {
    return j.contains(key) && j[key].is_string() ? shown(j[key].get<std::string>()) : std::string();
  };
  // A source's first 160 characters on one line (not cut inside a character).
  auto snippet = [](const json& j) {
    std::string line = j.contains("snippet") && j["snippet"].is_string() ? one_line(j["snippet"].get<std::string>())
                                                                         : std::string();
    std::size_t end = 0;
    for (int chars = 0; end < line.size() && chars < 160; ++chars)
      do ++end; while (end < line.size() && (static_cast<unsigned char>(line[end]) & 0xc0) == 0x80);
    return line.substr(0, end);
  };
  if (a.contains("answer") && a["answer"].is_string())
    std::printf("%s\n\n", shown_text(a["answer"].get<std::string>()).c_str());
  const bool handoff = a.value("handoff", false);
  if (handoff)
    std::printf("(handed off: %s)\n", text(a, "handoff_reason") == "no_evidence" ? "the documents do not support an answer"
                                                                              : "the answer cited no source");
  const bool cited = a.contains("citations") && a["citations"].is_array() && !a["citations"].empty();
  const json list = cited ? a["citations"] : a.value("sources", json::array());
  std::printf("%s:\n", cited ? "citations" : "sources");
  for (const json& s : list) {
    if (!s.is_object()) continue;
    std::printf("  [%d] %s/%s (chunk %lld, score %.4f)\n      %s\n", s.value("n", 0), text(s, "collection").c_str(),
                text(s, "document").c_str(), static_cast<long long>(s.value("position", std::int64_t{0})),
                s.value("score", 0.0), snippet(s).c_str());
  }
  return handoff ? 1 : 0;
}

// Listings for a person (--json prints what the daemon sent instead). The
// daemon's fields are printed defensively: any may be missing, and names,
// titles and descriptions may hold terminal escapes.
std::string field(const json& j, const char* key) {
  return j.contains(key) && j[key].is_string() ? one_line(j[key].get<std::string>()) : std::string();
}

long long number(const json& j, const char* key) {
  return j.contains(key) && j[key].is_number_integer() ? j[key].get<long long>() : 0;
}

std::string when(const json& j, const char* key) {
  return j.contains(key) && j[key].is_number_integer() ? verifier::format_utc(j[key].get<std::int64_t>()) : "-";
}

const json& listed(const json& r) {
  static const json kEmpty = json::array();
  return r.contains("data") && r["data"].is_array() ? r["data"] : kEmpty;
}

void print_collections(const json& r) {
  std::printf("%-24s %9s %8s %-16s %-20s %s\n", "NAME", "DOCUMENTS", "CHUNKS", "OWNER", "CREATED", "DESCRIPTION");
  for (const json& c : listed(r)) {
    if (!c.is_object()) continue;
    std::printf("%-24s %9lld %8lld %-16s %-20s %s\n", field(c, "name").c_str(), number(c, "documents"),
                number(c, "chunks"), field(c, "owner").c_str(), when(c, "created_at").c_str(),
                field(c, "description").c_str());
  }
}

void print_documents(const json& r) {
  std::printf("%-32s %-8s %10s %6s %-20s %s\n", "SOURCE", "FORMAT", "BYTES", "CHUNKS", "INGESTED", "TITLE");
  std::size_t n = 0;
  for (const json& d : listed(r)) {
    if (!d.is_object()) continue;
    ++n;
    std::printf("%-32s %-8s %10lld %6lld %-20s %s\n", field(d, "source").c_str(), field(d, "format").c_str(),
                number(d, "bytes"), number(d, "chunks"), when(d, "ingested_at").c_str(), field(d, "title").c_str());
  }
  std::printf("%zu document%s\n", n, n == 1 ? "" : "s");
}

}  // namespace

int run_rag_command(const std::vector<std::string>& argv) {
  if (argv.empty()) return usage("usage: airlock rag ingest|query|collections|create|documents|delete ...");
  const std::string sub = argv[0];
  static const std::vector<std::string> kSubs = {"ingest", "query", "collections", "create", "documents", "delete",
                                                 "delete-collection"};
  if (std::find(kSubs.begin(), kSubs.end(), sub) == kSubs.end())
    return usage("unknown rag command '" + sub + "' (ingest, query, collections, create, documents, delete, "
                 "delete-collection)");
  auto args = Args::parse({argv.begin() + 1, argv.end()},
                          {"url", "key-file", "cacert", "collection", "top-k", "mode", "reader", "description"},
                          {"json", "quiet", "create", "no-generate"});
  if (!args.is_ok()) return usage(args.status().message());
  Result<Daemon> d = Daemon::connect(*args);
  if (!d.is_ok()) return usage(d.status().message());
  if (sub == "ingest") return ingest(*d, *args);
  if (sub == "query") return query(*d, *args);
  // The daemon's answer as JSON with --json, else through `show`.
  auto print = [&](const Result<json>& r, auto show) {
    if (!r.is_ok()) return fail(r.status());
    if (args->has("json")) std::cout << r->dump(2, ' ', false, json::error_handler_t::replace) << "\n";
    else show(*r);
    return 0;
  };
  if (sub == "collections") return print(d->call("GET", "/v1/rag/collections"), print_collections);
  if (sub == "create") {
    if (args->positional().size() != 1) return usage("usage: airlock rag create NAME [--reader key:K|group:G|*]...");
    json body = {{"name", args->positional()[0]}, {"readers", args->all("reader")}};
    if (auto desc = args->get("description")) body["description"] = *desc;
    return print(d->call("POST", "/v1/rag/collections", body.dump(-1, ' ', false, json::error_handler_t::replace)),
                 [](const json& c) { std::printf("created the collection '%s'\n", field(c, "name").c_str()); });
  }
  if (sub == "delete-collection") {
    if (args->positional().size() != 1) return usage("usage: airlock rag delete-collection NAME");
    const std::string name = args->positional()[0];
    return print(d->call("DELETE", "/v1/rag/collections/" + encode(name, false)),
                 [&](const json&) { std::printf("deleted the collection '%s'\n", shown(name).c_str()); });
  }
  std::optional<std::string> collection = args->get("collection");
  if (!collection) return usage("usage: airlock rag " + sub + " --collection NAME ...");
  const std::string base = "/v1/rag/collections/" + encode(*collection, false) + "/documents";
  if (sub == "documents") return print(d->call("GET", base), print_documents);
  // delete --collection NAME SOURCE...
  if (args->positional().empty()) return usage("usage: airlock rag delete --collection NAME SOURCE...");
  int rc = 0;
  for (const std::string& source : args->positional()) {
    Result<json> r = d->call("DELETE", base + "/" + encode(source, true));
    if (!r.is_ok()) rc = fail(r.status());
    else std::printf("deleted %s\n", shown(source).c_str());
  }
  return rc;
}

void print_rag_usage() {
  std::printf(
      "\nairlock rag     (documents and grounded answers of a running airlockd; --url http://IP:PORT or AIRLOCK_URL,\n"
      "                 default http://127.0.0.1:8080; the key from --key-file FILE or AIRLOCK_API_KEY)\n"
      "  ingest      --collection NAME PATH... [--create] [--quiet]   files and directories; text, Markdown, HTML,\n"
      "                                                               DOCX, PDF; exit 1 when any file is refused\n"
      "  query       [--collection NAME]... \"QUESTION\" [--top-k N] [--mode hybrid|bm25|vector] [--no-generate] [--json]\n"
      "                                                               exit 1 when the question is handed off\n"
      "  collections [--json]             the collections this key may read\n"
      "  create      NAME [--reader key:K|group:G|*]... [--description D] [--json]\n"
      "  documents   --collection NAME [--json]\n"
      "  delete      --collection NAME SOURCE...\n"
      "  delete-collection NAME [--json]\n");
}

}  // namespace airlock::bundler
