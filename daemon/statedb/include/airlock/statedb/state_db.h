// airlockd's persistent security state in SQLite (STATE_DIR/airlock-state.db):
// API keys and the tamper-evident audit log.
//
// API keys: a key is `ak_<16 hex id>_<43 base64url chars>` (32 random bytes
// from libsodium). It is shown once, by create_key(); the database keeps the
// id and the BLAKE2b-256 hash of the whole key, never the key itself.
// KeyVerifier checks a presented key by id lookup and a constant-time
// comparison of hashes (sodium_memcmp).
//
// Audit log: one row per request. Each row stores the hash of the previous
// row and its own hash over (previous hash || a length-prefixed encoding of
// every field), and a one-row `audit_head` table holds the last hash and the
// row count, updated in the same transaction. verify_audit() recomputes the
// chain: editing, deleting or reordering rows, or deleting the newest ones,
// is detected. What it cannot prove: that someone able to write the
// database did not recompute the whole chain and head (the chain makes
// tampering evident, not impossible; ship the head hash elsewhere, e.g.
// into the journal, to anchor it).
//
// Errors: kInvalidArgument for a bad key name, kAlreadyExists for an active
// duplicate name, kNotFound for revoking an unknown name, kIoError for the
// file system and SQLite (a damaged or foreign database file included).
//
// Thread-safety: StateDb serialises its own calls with a mutex; KeyVerifier
// is immutable and safe to share; AuditWriter::record() is safe from any
// thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "airlock/common/status.h"

struct sqlite3;

namespace airlock::state {

struct ApiKeyInfo {
  std::string name;
  std::string id;  // 16 hex digits (the part of the key that is not secret)
  std::int64_t created_at = 0;
  std::optional<std::int64_t> revoked_at;
};

struct StoredKey {
  std::string name;
  std::string id;
  std::string hash;  // 32 bytes
};

struct AuditRecord {
  std::int64_t time_ms = 0;
  std::string key_name, route, model, request_id;
  int status = 0;
  std::int64_t prompt_tokens = 0, completion_tokens = 0;
  double latency_s = 0;
  std::optional<std::string> prompt_text, completion_text;
};

struct AuditRow {
  std::int64_t seq = 0;
  AuditRecord record;
  std::string row_hash_hex;
};

struct AuditVerifyResult {
  bool ok = false;
  std::int64_t rows = 0;
  std::string head_hex;  // the newest row's hash (64 zero bytes for an empty log), when ok
  std::optional<std::int64_t> first_bad_row;
  std::string why;
};

class StateDb {
 public:
  enum class Open {
    kCreate,    // create STATE_DIR (0750) and the database (0600) when missing
    kExisting,  // kNotFound when either is missing (commands that only read or revoke)
  };
  // An existing database readable by group or others is tightened to 0600.
  // Run as root on a state directory owned by another user (the daemon's),
  // the database files are handed to that user so the daemon can open them.
  static Result<StateDb> open(const std::string& state_dir, Open mode = Open::kCreate);
  StateDb(StateDb&& other) noexcept;
  StateDb& operator=(StateDb&&) = delete;
  ~StateDb();

  // Returns the new key; only its hash is stored.
  Result<std::string> create_key(const std::string& name);
  Result<std::vector<ApiKeyInfo>> list_keys() const;
  Status revoke_key(const std::string& name);
  Result<std::vector<StoredKey>> load_active_keys() const;

  Status append_audit(const std::vector<AuditRecord>& batch);
  // With expect_row_hash (hex, as verify and tail print it, recorded
  // earlier outside this database): the log must still hold a row with that
  // hash, so cutting the log back past it, or replacing the whole log, is
  // detected as well.
  Result<AuditVerifyResult> verify_audit(const std::optional<std::string>& expect_row_hash = std::nullopt) const;
  Result<std::vector<AuditRow>> tail_audit(int n) const;
  // The head row: how many rows the log has and the newest one's hash (hex),
  // read without checking the chain (for the daemon's log, an anchor kept
  // outside this database).
  Result<std::pair<std::int64_t, std::string>> audit_head() const;

 private:
  StateDb(sqlite3* db) : db_(db), mu_(std::make_unique<std::mutex>()) {}
  sqlite3* db_ = nullptr;
  std::unique_ptr<std::mutex> mu_;
};

class KeyVerifier {
 public:
  explicit KeyVerifier(std::vector<StoredKey> keys);
  // The key's name, or nullopt for anything that is not an active key.
  std::optional<std::string> authenticate(std::string_view token) const;

 private:
  std::unordered_map<std::string, StoredKey> by_id_;
};

// Batches audit records into the database from a background thread, so a
// request never waits for a disk write. record() returns false (and the
// caller counts a drop) when `max_queue` records are already waiting.
//
// A batch that fails to write (disk full, the database locked past its
// busy timeout, an I/O error) is not dropped: it goes back to the front of
// the queue, `on_error` is called with the reason, and the writer tries
// again after `retry_after`, doubling up to 30 s, so the chain resumes in
// order once the database is writable. Meanwhile the queue fills and new
// records are refused. When the writer is destroyed it makes one last
// attempt; if that fails, `on_error` is told the records are dropped.
//
// Records without a key name (requests refused for a missing or wrong key,
// which anyone who can connect can send by the thousand a second) are kept
// from crowding out the rest: at most `anonymous_per_second` of them (with
// bursts of ten times that) are written one by one, and beyond that rate,
// or once the queue is half full, they are counted instead: one
// "(refused requests)" row (401s) and one "(requests without a key)" row
// (others, e.g. malformed requests) per batch, the count in request_id.
// Records with a key refused because the queue was full leave an "(audit
// gap)" row with their count in the chain once writing resumes, so `audit
// verify` and `tail` show that records are missing where they are.
class AuditWriter {
 public:
  // records: how many are queued (and, with dropped, now lost).
  using ErrorFn = std::function<void(const Status& why, std::size_t records, bool dropped)>;
  explicit AuditWriter(StateDb& db, std::size_t max_queue = 65536, ErrorFn on_error = nullptr,
                       std::chrono::milliseconds retry_after = std::chrono::seconds(1), int anonymous_per_second = 50);
  ~AuditWriter();  // writes what is queued (one attempt)
  bool record(AuditRecord r);
  // Blocks until everything recorded so far is written (true), or a write
  // attempt after the call failed (false).
  bool flush();
  std::uint64_t failed_attempts() const;

 private:
  void run();
  StateDb& db_;
  std::size_t max_queue_;
  ErrorFn on_error_;
  std::chrono::milliseconds retry_after_;
  mutable std::mutex mu_;
  std::condition_variable cv_, idle_;
  std::deque<AuditRecord> queue_;
  bool stopping_ = false;
  bool writing_ = false;
  int flushing_ = 0;
  std::uint64_t failed_attempts_ = 0;
  std::uint64_t refused_queue_full_ = 0;  // since the last "(audit gap)" row
  // Records without a key counted since the last summary rows: status 401, and any other.
  std::uint64_t anonymous_folded_refused_ = 0, anonymous_folded_other_ = 0;
  const double anonymous_per_second_;
  double anonymous_allowance_;
  std::chrono::steady_clock::time_point anonymous_refilled_;
  std::thread thread_;
};

}  // namespace airlock::state
