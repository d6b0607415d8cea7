#include "airlock/statedb/state_db.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cerrno>
#include <cstring>
#include <ctime>

#include <sodium.h>
#include <sqlite3.h>

#include "airlock/common/log.h"

namespace airlock::state {
namespace {

constexpr const char* kDbName = "airlock-state.db";
constexpr std::size_t kHashBytes = 32;
constexpr std::size_t kIdHex = 16;
constexpr std::size_t kSecretChars = 43;  // 32 bytes, base64url without padding

Status db_error(sqlite3* db, const std::string& what) {
  return io_error("state database: " + what + ": " + (db ? sqlite3_errmsg(db) : "out of memory"), EIO);
}

Status exec(sqlite3* db, const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string m = err ? err : sqlite3_errmsg(db);
    sqlite3_free(err);
    return io_error("state database: " + m, EIO);
  }
  return Status::ok();
}

// A prepared statement that finalises itself.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) {
    if (sqlite3_prepare_v2(db, sql, -1, &st_, nullptr) != SQLITE_OK) st_ = nullptr;
  }
  ~Stmt() { sqlite3_finalize(st_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  bool ok() const { return st_ != nullptr; }
  sqlite3_stmt* get() const { return st_; }
  void text(int i, const std::string& v) { sqlite3_bind_text(st_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT); }
  void blob(int i, const std::string& v) { sqlite3_bind_blob(st_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT); }
  void i64(int i, std::int64_t v) { sqlite3_bind_int64(st_, i, v); }
  void real(int i, double v) { sqlite3_bind_double(st_, i, v); }
  void null(int i) { sqlite3_bind_null(st_, i); }
  int step() { return sqlite3_step(st_); }
  std::string col_text(int i) const {
    const unsigned char* p = sqlite3_column_text(st_, i);
    return p ? std::string(reinterpret_cast<const char*>(p), static_cast<std::size_t>(sqlite3_column_bytes(st_, i))) : "";
  }
  std::string col_blob(int i) const {
    const void* p = sqlite3_column_blob(st_, i);
    return p ? std::string(static_cast<const char*>(p), static_cast<std::size_t>(sqlite3_column_bytes(st_, i))) : "";
  }
  std::int64_t col_i64(int i) const { return sqlite3_column_int64(st_, i); }
  double col_real(int i) const { return sqlite3_column_double(st_, i); }
  bool col_null(int i) const { return sqlite3_column_type(st_, i) == SQLITE_NULL; }

 private:
  sqlite3_stmt* st_ = nullptr;
};

std::string to_hex(const std::string& bytes) {
  static const char* d = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out += d[c >> 4];
    out += d[c & 15];
  }
  return out;
}

std::string blake2b(std::string_view data) {
  std::string out(kHashBytes, '\0');
  crypto_generichash(reinterpret_cast<unsigned char*>(out.data()), kHashBytes,
                     reinterpret_cast<const unsigned char*>(data.data()), data.size(), nullptr, 0);
  return out;
}

bool valid_name(const std::string& name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '@' || c == '-')) return false;
  return true;
}

// The bytes a row hash covers: every field, length-prefixed, so no two
// different rows encode the same.
std::string encode_row(std::int64_t seq, const AuditRecord& r, const std::string& prev) {
  std::string out = prev;
  auto u64 = [&](std::uint64_t v) {
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>(v >> (8 * i)));
  };
  auto str = [&](const std::string& s) {
    u64(s.size());
    out += s;
  };
  auto opt = [&](const std::optional<std::string>& s) {
    out.push_back(s ? 1 : 0);
    if (s) str(*s);
  };
  u64(static_cast<std::uint64_t>(seq));
  u64(static_cast<std::uint64_t>(r.time_ms));
  str(r.key_name);
  str(r.route);
  str(r.model);
  str(r.request_id);
  u64(static_cast<std::uint64_t>(static_cast<std::int64_t>(r.status)));
  u64(static_cast<std::uint64_t>(r.prompt_tokens));
  u64(static_cast<std::uint64_t>(r.completion_tokens));
  std::uint64_t bits;
  std::memcpy(&bits, &r.latency_s, sizeof bits);
  u64(bits);
  opt(r.prompt_text);
  opt(r.completion_text);
  return out;
}


// Root running `airlock keys create` on the daemon's state directory: the
// files it creates there go to the directory's owner, or airlockd (User=airlock)
// could no longer open its own database.
// By descriptor, and only a plain file with no other name: the directory's
// owner could have put a hard link to a file of root's there (where
// fs.protected_hardlinks is off), and root must not hand that over.
void hand_to_dir_owner(const std::string& path, const struct stat& dir) {
  if (::geteuid() != 0 || dir.st_uid == 0) return;
  const int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    if (errno != ENOENT) airlock::log().warn("could not hand {} to uid {}: {}", path, dir.st_uid, std::strerror(errno));
    return;
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_nlink != 1)
    airlock::log().warn("not handing {} to uid {}: not a plain file with one name", path, dir.st_uid);
  else if (::fchown(fd, dir.st_uid, dir.st_gid) != 0)
    airlock::log().warn("could not hand {} to uid {}: {}", path, dir.st_uid, std::strerror(errno));
  ::close(fd);
}

}  // namespace

Result<StateDb> StateDb::open(const std::string& state_dir, Open mode) {
  if (sodium_init() < 0) return internal_error("libsodium failed to initialise");
  if (mode == Open::kCreate && ::mkdir(state_dir.c_str(), 0750) != 0 && errno != EEXIST)
    return io_error("create " + state_dir, errno);
  struct stat st {};
  if (::lstat(state_dir.c_str(), &st) != 0) {
    if (errno == ENOENT) return not_found("no state directory " + state_dir + " (wrong --state, or airlockd never ran)");
    return io_error(state_dir, errno);
  }
  if (!S_ISDIR(st.st_mode)) return io_error(state_dir + " is not a directory (links are not followed)", ENOTDIR);
  const std::string path = state_dir + "/" + kDbName;
  // Create the file ourselves first so it is 0600 whatever the umask.
  const int flags = O_RDWR | O_NOFOLLOW | O_CLOEXEC | (mode == Open::kCreate ? O_CREAT : 0);
  int fd = ::open(path.c_str(), flags, 0600);
  if (fd < 0) {
    if (errno == ENOENT) return not_found("no state database in " + state_dir + " (wrong --state, or airlockd never ran)");
    return io_error("open " + path, errno);
  }
  struct stat fst {};
  if (::fstat(fd, &fst) != 0 || !S_ISREG(fst.st_mode) || fst.st_nlink != 1) {
    ::close(fd);
    return io_error(path + " is not a plain file with one name (a hard link elsewhere?)", EINVAL);
  }
  if ((fst.st_mode & 077) != 0 && ::fchmod(fd, 0600) != 0) {
    const int e = errno;
    ::close(fd);
    return io_error("tighten " + path + " to 0600", e);
  }
  ::close(fd);
  hand_to_dir_owner(path, st);
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOFOLLOW | SQLITE_OPEN_FULLMUTEX, nullptr) !=
      SQLITE_OK) {
    Status s = db_error(db, "open " + path);
    sqlite3_close(db);
    return s;
  }
  StateDb out(db);
  sqlite3_busy_timeout(db, 5000);
  AIRLOCK_RETURN_IF_ERROR(exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"));
  AIRLOCK_RETURN_IF_ERROR(exec(db,
      "CREATE TABLE IF NOT EXISTS api_keys ("
      " id TEXT PRIMARY KEY, name TEXT NOT NULL, hash BLOB NOT NULL,"
      " created_at INTEGER NOT NULL, revoked_at INTEGER);"
      "CREATE UNIQUE INDEX IF NOT EXISTS api_keys_active_name ON api_keys(name) WHERE revoked_at IS NULL;"
      "CREATE TABLE IF NOT EXISTS audit ("
      " seq INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL, key_name TEXT NOT NULL, route TEXT NOT NULL,"
      " model TEXT NOT NULL, request_id TEXT NOT NULL, status INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL,"
      " completion_tokens INTEGER NOT NULL, latency_s REAL NOT NULL, prompt_text TEXT, completion_text TEXT,"
      " prev_hash BLOB NOT NULL, row_hash BLOB NOT NULL);"
      "CREATE TABLE IF NOT EXISTS audit_head (id INTEGER PRIMARY KEY CHECK (id = 1),"
      " rows INTEGER NOT NULL, head BLOB NOT NULL);"));
  // The WAL and shared-memory files exist now; a later write keeps their owner.
  hand_to_dir_owner(path + "-wal", st);
  hand_to_dir_owner(path + "-shm", st);
  return out;
}

StateDb::StateDb(StateDb&& other) noexcept : db_(std::exchange(other.db_, nullptr)), mu_(std::move(other.mu_)) {}

StateDb::~StateDb() {
  if (db_ != nullptr) sqlite3_close(db_);
}

Result<std::string> StateDb::create_key(const std::string& name) {
  if (!valid_name(name)) return invalid_argument("key name must be 1-64 characters of [A-Za-z0-9._@-]");
  std::lock_guard<std::mutex> lock(*mu_);
  unsigned char id[kIdHex / 2], secret[32];
  randombytes_buf(id, sizeof id);
  randombytes_buf(secret, sizeof secret);
  char b64[64];
  sodium_bin2base64(b64, sizeof b64, secret, sizeof secret, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
  const std::string id_hex = to_hex(std::string(reinterpret_cast<char*>(id), sizeof id));
  const std::string key = "ak_" + id_hex + "_" + b64;
  sodium_memzero(secret, sizeof secret);
  Stmt st(db_, "INSERT INTO api_keys (id, name, hash, created_at) VALUES (?, ?, ?, ?)");
  if (!st.ok()) return db_error(db_, "prepare");
  st.text(1, id_hex);
  st.text(2, name);
  st.blob(3, blake2b(key));
  st.i64(4, static_cast<std::int64_t>(std::time(nullptr)));
  const int rc = st.step();
  if (rc == SQLITE_CONSTRAINT) return already_exists("an active key named '" + name + "' exists (revoke it first)");
  if (rc != SQLITE_DONE) return db_error(db_, "insert key");
  return key;
}

Result<std::vector<ApiKeyInfo>> StateDb::list_keys() const {
  std::lock_guard<std::mutex> lock(*mu_);
  Stmt st(db_, "SELECT name, id, created_at, revoked_at FROM api_keys ORDER BY created_at, name");
  if (!st.ok()) return db_error(db_, "prepare");
  std::vector<ApiKeyInfo> out;
  int rc;
  while ((rc = st.step()) == SQLITE_ROW) {
    ApiKeyInfo k;
    k.name = st.col_text(0);
    k.id = st.col_text(1);
    k.created_at = st.col_i64(2);
    if (!st.col_null(3)) k.revoked_at = st.col_i64(3);
    out.push_back(std::move(k));
  }
  if (rc != SQLITE_DONE) return db_error(db_, "list keys");
  return out;
}

Status StateDb::revoke_key(const std::string& name) {
  std::lock_guard<std::mutex> lock(*mu_);
  Stmt st(db_, "UPDATE api_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL");
  if (!st.ok()) return db_error(db_, "prepare");
  st.i64(1, static_cast<std::int64_t>(std::time(nullptr)));
  st.text(2, name);
  if (st.step() != SQLITE_DONE) return db_error(db_, "revoke key");
  if (sqlite3_changes(db_) == 0) return not_found("no active key named '" + name + "'");
  return Status::ok();
}

Result<std::vector<StoredKey>> StateDb::load_active_keys() const {
  std::lock_guard<std::mutex> lock(*mu_);
  Stmt st(db_, "SELECT name, id, hash FROM api_keys WHERE revoked_at IS NULL");
  if (!st.ok()) return db_error(db_, "prepare");
  std::vector<StoredKey> out;
  int rc;
  while ((rc = st.step()) == SQLITE_ROW) out.push_back({st.col_text(0), st.col_text(1), st.col_blob(2)});
  if (rc != SQLITE_DONE) return db_error(db_, "load keys");
  return out;
}

Status StateDb::append_audit(const std::vector<AuditRecord>& batch) {
  if (batch.empty()) return Status::ok();
  std::lock_guard<std::mutex> lock(*mu_);
  AIRLOCK_RETURN_IF_ERROR(exec(db_, "BEGIN IMMEDIATE"));
  auto rollback = [&](Status s) {
    (void)exec(db_, "ROLLBACK");
    return s;
  };
  std::int64_t rows = 0;
  std::string head(kHashBytes, '\0');
  {
    Stmt h(db_, "SELECT rows, head FROM audit_head WHERE id = 1");
    if (!h.ok()) return rollback(db_error(db_, "prepare"));
    if (h.step() == SQLITE_ROW) {
      rows = h.col_i64(0);
      head = h.col_blob(1);
    }
  }
  Stmt ins(db_,
           "INSERT INTO audit (seq, time_ms, key_name, route, model, request_id, status, prompt_tokens,"
           " completion_tokens, latency_s, prompt_text, completion_text, prev_hash, row_hash)"
           " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
  if (!ins.ok()) return rollback(db_error(db_, "prepare"));
  for (const AuditRecord& r : batch) {
    const std::int64_t seq = rows + 1;
    const std::string row_hash = blake2b(encode_row(seq, r, head));
    sqlite3_reset(ins.get());
    ins.i64(1, seq);
    ins.i64(2, r.time_ms);
    ins.text(3, r.key_name);
    ins.text(4, r.route);
    ins.text(5, r.model);
    ins.text(6, r.request_id);
    ins.i64(7, r.status);
    ins.i64(8, r.prompt_tokens);
    ins.i64(9, r.completion_tokens);
    ins.real(10, r.latency_s);
    if (r.prompt_text) ins.text(11, *r.prompt_text);
    else ins.null(11);
    if (r.completion_text) ins.text(12, *r.completion_text);
    else ins.null(12);
    ins.blob(13, head);
    ins.blob(14, row_hash);
    if (ins.step() != SQLITE_DONE) return rollback(db_error(db_, "insert audit row"));
    head = row_hash;
    rows = seq;
  }
  Stmt up(db_, "INSERT INTO audit_head (id, rows, head) VALUES (1, ?, ?)"
               " ON CONFLICT(id) DO UPDATE SET rows = excluded.rows, head = excluded.head");
  if (!up.ok()) return rollback(db_error(db_, "prepare"));
  up.i64(1, rows);
  up.blob(2, head);
  if (up.step() != SQLITE_DONE) return rollback(db_error(db_, "update audit head"));
  // A failed COMMIT can leave the transaction open (SQLITE_BUSY does), and
  // every later BEGIN would then fail.
  if (Status c = exec(db_, "COMMIT"); !c.is_ok()) return rollback(c);
  return Status::ok();
}

namespace {

AuditRecord read_record(const Stmt& st) {
  AuditRecord r;
  r.time_ms = st.col_i64(1);
  r.key_name = st.col_text(2);
  r.route = st.col_text(3);
  r.model = st.col_text(4);
  r.request_id = st.col_text(5);
  r.status = static_cast<int>(st.col_i64(6));
  r.prompt_tokens = st.col_i64(7);
  r.completion_tokens = st.col_i64(8);
  r.latency_s = st.col_real(9);
  if (!st.col_null(10)) r.prompt_text = st.col_text(10);
  if (!st.col_null(11)) r.completion_text = st.col_text(11);
  return r;
}

// The columns read_record() and the chain need; callers add FROM and more.
constexpr const char* kSelectAudit =
    "SELECT seq, time_ms, key_name, route, model, request_id, status, prompt_tokens, completion_tokens,"
    " latency_s, prompt_text, completion_text, prev_hash, row_hash";

}  // namespace

Result<AuditVerifyResult> StateDb::verify_audit(const std::optional<std::string>& expect_row_hash) const {
  std::lock_guard<std::mutex> lock(*mu_);
  // Rows and head are read in one transaction, so from one snapshot: rows
  // airlockd appends meanwhile are in neither (read separately, a log being
  // written looked truncated).
  AIRLOCK_RETURN_IF_ERROR(exec(db_, "BEGIN"));
  struct EndRead {
    sqlite3* db;
    ~EndRead() { (void)exec(db, "ROLLBACK"); }  // a read transaction: nothing to keep
  } end_read{db_};
  AuditVerifyResult out;
  std::string prev(kHashBytes, '\0');
  // The hash recorded earlier (hex), a row's or the empty log's.
  std::optional<std::string> expect;
  if (expect_row_hash) {
    expect = *expect_row_hash;
    std::transform(expect->begin(), expect->end(), expect->begin(), [](unsigned char c) { return std::tolower(c); });
  }
  bool expected_seen = expect && *expect == to_hex(prev);
  auto bad = [&](std::int64_t row, const std::string& why) {
    out.first_bad_row = row;
    out.why = why;
    return out;
  };
  {
    // Each value must have the type it was written with: SQLite keeps what
    // an UPDATE stores ('2 (really 9000)' in an integer column), and the
    // column readers would take only its leading number.
    Stmt st(db_, (std::string(kSelectAudit) +
                  ", typeof(seq) = 'integer' AND typeof(time_ms) = 'integer' AND typeof(key_name) = 'text'"
                  " AND typeof(route) = 'text' AND typeof(model) = 'text' AND typeof(request_id) = 'text'"
                  " AND typeof(status) = 'integer' AND typeof(prompt_tokens) = 'integer'"
                  " AND typeof(completion_tokens) = 'integer' AND typeof(latency_s) = 'real'"
                  " AND typeof(prompt_text) IN ('text', 'null') AND typeof(completion_text) IN ('text', 'null')"
                  " AND typeof(prev_hash) = 'blob' AND typeof(row_hash) = 'blob'"
                  " FROM audit ORDER BY seq")
                     .c_str());
    if (!st.ok()) return db_error(db_, "prepare");
    std::int64_t next = 1;
    int rc;
    while ((rc = st.step()) == SQLITE_ROW) {
      const std::int64_t seq = st.col_i64(0);
      if (seq != next) return bad(next, "row " + std::to_string(next) + " is missing");
      if (st.col_i64(14) != 1) return bad(seq, "row " + std::to_string(seq) + " was changed (a value of the wrong type)");
      if (st.col_blob(12) != prev) return bad(seq, "row " + std::to_string(seq) + " does not follow the row before it");
      const std::string want = blake2b(encode_row(seq, read_record(st), prev));
      if (st.col_blob(13) != want) return bad(seq, "row " + std::to_string(seq) + " was changed");
      prev = want;
      expected_seen = expected_seen || (expect && *expect == to_hex(want));
      ++next;
    }
    if (rc != SQLITE_DONE) return db_error(db_, "read audit");
    out.rows = next - 1;
  }
  Stmt h(db_, "SELECT rows, head FROM audit_head WHERE id = 1");
  if (!h.ok()) return db_error(db_, "prepare");
  std::int64_t head_rows = 0;
  std::string head(kHashBytes, '\0');
  if (h.step() == SQLITE_ROW) {
    head_rows = h.col_i64(0);
    head = h.col_blob(1);
  }
  if (head_rows != out.rows || head != prev)
    return bad(out.rows + 1, "the log ends at row " + std::to_string(out.rows) + " but its head records " +
                                 std::to_string(head_rows) + " rows: the newest rows were removed or the head changed");
  out.head_hex = to_hex(prev);
  if (expect && !expected_seen)
    return bad(out.rows + 1, "no row of the log has the hash recorded earlier (" + *expect +
                                 "): the log was cut back past it, replaced or rewritten");
  out.ok = true;
  return out;
}

Result<std::vector<AuditRow>> StateDb::tail_audit(int n) const {
  std::lock_guard<std::mutex> lock(*mu_);
  Stmt st(db_, (std::string(kSelectAudit) + " FROM audit ORDER BY seq DESC LIMIT ?").c_str());
  if (!st.ok()) return db_error(db_, "prepare");
  st.i64(1, n);
  std::vector<AuditRow> out;
  int rc;
  while ((rc = st.step()) == SQLITE_ROW) out.push_back({st.col_i64(0), read_record(st), to_hex(st.col_blob(13))});
  if (rc != SQLITE_DONE) return db_error(db_, "read audit");
  std::reverse(out.begin(), out.end());
  return out;
}

Result<std::pair<std::int64_t, std::string>> StateDb::audit_head() const {
  std::lock_guard<std::mutex> lock(*mu_);
  Stmt h(db_, "SELECT rows, head FROM audit_head WHERE id = 1");
  if (!h.ok()) return db_error(db_, "prepare");
  const int rc = h.step();
  if (rc == SQLITE_ROW) return std::make_pair(h.col_i64(0), to_hex(h.col_blob(1)));
  if (rc != SQLITE_DONE) return db_error(db_, "read audit head");
  return std::make_pair(std::int64_t{0}, to_hex(std::string(kHashBytes, '\0')));
}

// ---------------------------------------------------------------- KeyVerifier

KeyVerifier::KeyVerifier(std::vector<StoredKey> keys) {
  for (StoredKey& k : keys) by_id_.emplace(k.id, std::move(k));
}

std::optional<std::string> KeyVerifier::authenticate(std::string_view token) const {
  if (token.size() != 3 + kIdHex + 1 + kSecretChars || token.substr(0, 3) != "ak_" || token[3 + kIdHex] != '_')
    return std::nullopt;
  auto it = by_id_.find(std::string(token.substr(3, kIdHex)));
  if (it == by_id_.end() || it->second.hash.size() != kHashBytes) return std::nullopt;
  const std::string h = blake2b(token);
  if (sodium_memcmp(h.data(), it->second.hash.data(), kHashBytes) != 0) return std::nullopt;
  return it->second.name;
}

// ---------------------------------------------------------------- AuditWriter

AuditWriter::AuditWriter(StateDb& db, std::size_t max_queue, ErrorFn on_error, std::chrono::milliseconds retry_after,
                         int anonymous_per_second)
    : db_(db),
      max_queue_(max_queue),
      on_error_(std::move(on_error)),
      retry_after_(retry_after),
      anonymous_per_second_(std::max(1, anonymous_per_second)),
      anonymous_allowance_(10.0 * anonymous_per_second_),
      anonymous_refilled_(std::chrono::steady_clock::now()) {
  thread_ = std::thread([this] { run(); });
}

AuditWriter::~AuditWriter() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

bool AuditWriter::record(AuditRecord r) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (r.key_name.empty()) {
      const auto now = std::chrono::steady_clock::now();
      anonymous_allowance_ = std::min(10.0 * anonymous_per_second_,
                                      anonymous_allowance_ + anonymous_per_second_ *
                                                                 std::chrono::duration<double>(now - anonymous_refilled_).count());
      anonymous_refilled_ = now;
      // Beyond the rate, or once they would fill half the queue, they are
      // counted into the next summary row instead.
      if (anonymous_allowance_ < 1 || queue_.size() >= max_queue_ / 2) {
        if (anonymous_folded_refused_ + anonymous_folded_other_ == 0)
          cv_.notify_all();  // the writer may be waiting for a first record
        ++(r.status == 401 ? anonymous_folded_refused_ : anonymous_folded_other_);
        return true;
      }
      anonymous_allowance_ -= 1;
    } else if (queue_.size() >= max_queue_) {
      ++refused_queue_full_;
      return false;
    }
    queue_.push_back(std::move(r));
  }
  cv_.notify_all();
  return true;
}

namespace {

AuditRecord summary_row(const char* route, int status, std::string what) {
  AuditRecord r;
  r.time_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                  std::chrono::system_clock::now().time_since_epoch()).count();
  r.route = route;
  r.status = status;
  r.request_id = std::move(what);
  return r;
}

}  // namespace

bool AuditWriter::flush() {
  std::unique_lock<std::mutex> lock(mu_);
  const std::uint64_t failures = failed_attempts_;
  ++flushing_;
  cv_.notify_all();
  // Written means the queue and the counts waiting to become summary rows.
  auto written = [this] {
    return queue_.empty() && !writing_ && anonymous_folded_refused_ + anonymous_folded_other_ + refused_queue_full_ == 0;
  };
  idle_.wait(lock, [&] { return written() || failed_attempts_ != failures; });
  --flushing_;
  return written();
}

std::uint64_t AuditWriter::failed_attempts() const {
  std::lock_guard<std::mutex> lock(mu_);
  return failed_attempts_;
}

void AuditWriter::run() {
  std::unique_lock<std::mutex> lock(mu_);
  std::chrono::milliseconds backoff = retry_after_;
  while (true) {
    auto pending = [this] {
      return !queue_.empty() || anonymous_folded_refused_ + anonymous_folded_other_ + refused_queue_full_ > 0;
    };
    cv_.wait(lock, [&] { return stopping_ || pending(); });
    if (!pending() && stopping_) return;
    // Gather for up to 100 ms or 256 records, then write them in one transaction.
    cv_.wait_for(lock, std::chrono::milliseconds(100),
                 [this] { return stopping_ || flushing_ > 0 || queue_.size() >= 256; });
    std::vector<AuditRecord> batch;
    while (!queue_.empty() && batch.size() < 1024) {
      batch.push_back(std::move(queue_.front()));
      queue_.pop_front();
    }
    // The counts become rows of the chain (queued like any record if this
    // write fails).
    // Refused for their key (401), or failed before routing (malformed:
    // 400, 414, ...); each kind its own row.
    if (anonymous_folded_refused_ > 0)
      batch.push_back(summary_row("(refused requests)", 401,
                                  std::to_string(std::exchange(anonymous_folded_refused_, 0)) +
                                      " more requests without a valid key, counted here instead of one row each"));
    if (anonymous_folded_other_ > 0)
      batch.push_back(summary_row("(requests without a key)", 0,
                                  std::to_string(std::exchange(anonymous_folded_other_, 0)) +
                                      " more requests without a key (not refused for it: malformed, ...), counted here"));
    if (refused_queue_full_ > 0)
      batch.push_back(summary_row("(audit gap)", 0,
                                  std::to_string(std::exchange(refused_queue_full_, 0)) +
                                      " records were not written: the audit queue was full"));
    writing_ = true;
    lock.unlock();
    Status s = db_.append_audit(batch);
    lock.lock();
    writing_ = false;
    if (s.is_ok()) {
      backoff = retry_after_;
      if (!pending()) idle_.notify_all();
      continue;
    }
    ++failed_attempts_;
    // Back to the front, in order: the chain continues from the last row
    // written once the database takes writes again.
    for (auto it = batch.rbegin(); it != batch.rend(); ++it) queue_.push_front(std::move(*it));
    const std::size_t waiting = queue_.size();
    const bool dropped = stopping_;  // the destructor's last attempt
    if (dropped) queue_.clear();
    idle_.notify_all();  // a flush() waiting on this attempt returns false
    if (on_error_) {
      lock.unlock();
      on_error_(s, waiting, dropped);
      lock.lock();
    }
    if (dropped) return;
    cv_.wait_for(lock, backoff, [this] { return stopping_ || flushing_ > 0; });
    backoff = std::min<std::chrono::milliseconds>(backoff * 2, std::chrono::seconds(30));
  }
}

}  // namespace airlock::state
