#include "state_commands.h"

#include <charconv>
#include <cstdio>
#include <initializer_list>
#include <iostream>

#include "airlock/common/json.h"

#include "airlock/statedb/state_db.h"
#include "airlock/verifier/manifest.h"
#include "args.h"
#include "terminal.h"

namespace airlock::bundler {
namespace {

using airlock::state::StateDb;
constexpr const char* kDefaultState = "/var/lib/airlock";

int fail(const Status& s) {
  std::fprintf(stderr, "airlock: %s\n", s.to_string().c_str());
  return s.code() == StatusCode::kVerificationFailed ? 1 : 2;
}

int usage(const std::string& message) {
  std::fprintf(stderr, "airlock: %s\n(run 'airlock help' for usage)\n", message.c_str());
  return 2;
}

bool one_of(const std::string& s, std::initializer_list<const char*> names) {
  for (const char* n : names)
    if (s == n) return true;
  return false;
}

}  // namespace

int run_keys_command(const std::vector<std::string>& argv) {
  if (argv.empty()) return usage("usage: airlock keys create|list|revoke ...");
  const std::string sub = argv[0];
  auto args = Args::parse({argv.begin() + 1, argv.end()}, {"name", "state"}, {"json"});
  if (!args.is_ok()) return usage(args.status().message());
  if (!args->positional().empty()) return usage("unexpected argument '" + args->positional()[0] + "'");
  if (!one_of(sub, {"create", "list", "revoke"})) return usage("unknown keys command '" + sub + "' (create, list, revoke)");
  // Only `create` may make the state directory; the others need the real one.
  Result<StateDb> db = StateDb::open(args->get("state").value_or(kDefaultState),
                                     sub == "create" ? StateDb::Open::kCreate : StateDb::Open::kExisting);
  if (!db.is_ok()) return fail(db.status());
  if (sub == "create" || sub == "revoke") {
    std::optional<std::string> name = args->get("name");
    if (!name) return usage("usage: airlock keys " + sub + " --name NAME [--state DIR]");
    if (sub == "revoke") {
      if (Status s = db->revoke_key(*name); !s.is_ok()) return fail(s);
      std::fprintf(stderr, "revoked the key '%s' (a running airlockd drops it on SIGHUP: systemctl reload airlockd)\n",
                   name->c_str());
      return 0;
    }
    Result<std::string> key = db->create_key(*name);
    if (!key.is_ok()) return fail(key.status());
    // The key on stdout alone, so scripts can capture it; it is shown once.
    std::printf("%s\n", key->c_str());
    std::fprintf(stderr, "created the key '%s'; store it now, it is not shown again (airlockd picks it up on SIGHUP)\n",
                 name->c_str());
    return 0;
  }
  if (sub == "list") {
    Result<std::vector<state::ApiKeyInfo>> keys = db->list_keys();
    if (!keys.is_ok()) return fail(keys.status());
    if (args->has("json")) {
      nlohmann::json j = nlohmann::json::array();
      for (const auto& k : *keys)
        j.push_back({{"name", k.name}, {"id", k.id}, {"created_at", k.created_at},
                     {"revoked_at", k.revoked_at ? nlohmann::json(*k.revoked_at) : nlohmann::json()}});
      std::cout << j.dump(2) << "\n";
      return 0;
    }
    std::printf("%-24s %-16s %-20s %s\n", "NAME", "ID", "CREATED", "STATE");
    for (const auto& k : *keys)
      std::printf("%-24s %-16s %-20s %s\n", shown(k.name).c_str(), k.id.c_str(),
                  verifier::format_utc(k.created_at).c_str(),
                  k.revoked_at ? ("revoked " + verifier::format_utc(*k.revoked_at)).c_str() : "active");
    return 0;
  }
  return usage("unknown keys command '" + sub + "' (create, list, revoke)");
}

int run_audit_command(const std::vector<std::string>& argv) {
  if (argv.empty()) return usage("usage: airlock audit verify|tail ...");
  const std::string sub = argv[0];
  auto args = Args::parse({argv.begin() + 1, argv.end()}, {"state", "last", "expect-hash"}, {"json"});
  if (!args.is_ok()) return usage(args.status().message());
  if (!args->positional().empty()) return usage("unexpected argument '" + args->positional()[0] + "'");
  if (!one_of(sub, {"verify", "tail"})) return usage("unknown audit command '" + sub + "' (verify, tail)");
  int n = 20;
  if (auto v = args->get("last")) {
    const char* end = v->data() + v->size();
    auto [ptr, ec] = std::from_chars(v->data(), end, n);
    if (ec != std::errc() || ptr != end) return usage("--last needs a number, not '" + shown(*v) + "'");
    if (n < 1 || n > 100000) return usage("--last must be 1 to 100000");
  }
  // A missing database is an error, never "OK 0 rows".
  Result<StateDb> db = StateDb::open(args->get("state").value_or(kDefaultState), StateDb::Open::kExisting);
  if (!db.is_ok()) return fail(db.status());
  std::optional<std::string> expect;
  if (auto v = args->get("expect-hash")) {
    if (sub != "verify") return usage("--expect-hash is an option of audit verify");
    if (v->size() != 64 || v->find_first_not_of("0123456789abcdefABCDEF") != std::string::npos)
      return usage("--expect-hash needs a row hash as verify or tail print it (64 hex digits)");
    expect = std::string(*v);
  }
  if (sub == "verify") {
    Result<state::AuditVerifyResult> r = db->verify_audit(expect);
    if (!r.is_ok()) return fail(r.status());
    if (!r->ok) {
      std::fprintf(stderr, "airlock: audit log FAILED at row %lld: %s\n",
                   static_cast<long long>(r->first_bad_row.value_or(0)), r->why.c_str());
      return 1;
    }
    std::printf("OK %lld rows: the audit hash chain is intact%s\nhead %s\n", static_cast<long long>(r->rows),
                expect ? ", and holds the expected row" : "", r->head_hex.c_str());
    return 0;
  }
  if (sub == "tail") {
    Result<std::vector<state::AuditRow>> rows = db->tail_audit(n);
    if (!rows.is_ok()) return fail(rows.status());
    if (args->has("json")) {
      nlohmann::json j = nlohmann::json::array();
      for (const auto& row : *rows) {
        const state::AuditRecord& r = row.record;
        j.push_back({{"seq", row.seq}, {"time_ms", r.time_ms}, {"key", r.key_name}, {"route", r.route},
                     {"model", r.model}, {"request_id", r.request_id}, {"status", r.status},
                     {"prompt_tokens", r.prompt_tokens}, {"completion_tokens", r.completion_tokens},
                     {"latency_s", r.latency_s}, {"row_hash", row.row_hash_hex}});
      }
      std::cout << j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
      return 0;
    }
    for (const auto& row : *rows) {
      const state::AuditRecord& r = row.record;
      std::printf("%6lld %s %-16s %-22s %-12s %3d prompt %lld completion %lld %.3fs\n", static_cast<long long>(row.seq),
                  verifier::format_utc(r.time_ms / 1000).c_str(), shown(r.key_name).c_str(), shown(r.route).c_str(),
                  shown(r.model).c_str(), r.status, static_cast<long long>(r.prompt_tokens),
                  static_cast<long long>(r.completion_tokens), r.latency_s);
      // Rows the writer adds itself ("(refused requests)", "(audit gap)")
      // carry their count and meaning in the request id.
      if (!r.route.empty() && r.route[0] == '(') std::printf("       %s\n", shown(r.request_id).c_str());
    }
    // The newest row's hash, to keep elsewhere for verify --expect-hash.
    if (!rows->empty()) std::printf("head %s\n", rows->back().row_hash_hex.c_str());
    return 0;
  }
  return usage("unknown audit command '" + sub + "' (verify, tail)");
}

void print_state_usage() {
  std::printf(
      "\nairlock keys    (API keys of airlockd; --state DIR, default /var/lib/airlock)\n"
      "  create  --name NAME     prints a new key once; only its hash is stored\n"
      "  list    [--json]\n"
      "  revoke  --name NAME\n"
      "\nairlock audit   (airlockd's hash-chained audit log)\n"
      "  verify  [--expect-hash HASH]   exit 0 when the chain is intact (and still holds the row\n"
      "                          whose hash was recorded earlier), 1 naming the first bad row;\n"
      "                          prints the head hash: keep it outside this machine\n"
      "  tail    [--last N] [--json]   the newest N rows (default 20), then the head hash\n");
}

}  // namespace airlock::bundler
