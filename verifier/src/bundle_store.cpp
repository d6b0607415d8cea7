#include "airlock/verifier/bundle_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <functional>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include <sodium.h>
#include <sqlite3.h>

#include "airlock/verifier/sha256.h"
#include "guarded_read.h"
#include "task_pool.h"

namespace airlock::verifier {
namespace {

constexpr const char* kStagingDir = ".staging";
constexpr const char* kLockFile = ".lock";
constexpr const char* kStateDb = "state.db";

// The names in directory `name` under `parent_fd` (not "." and ".."),
// never following a symbolic link.
Result<std::vector<std::string>> list_dir_at(int parent_fd, const std::string& name) {
  int fd = ::openat(parent_fd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return io_error("open " + name, errno);
  DIR* d = ::fdopendir(fd);
  if (d == nullptr) {
    const int err = errno;
    ::close(fd);
    return io_error("opendir " + name, err);
  }
  std::vector<std::string> children;
  errno = 0;
  while (dirent* ent = ::readdir(d)) {
    std::string child = ent->d_name;
    if (child != "." && child != "..") children.push_back(child);
  }
  const int err = errno;
  ::closedir(d);
  if (err != 0) return io_error("read directory " + name, err);
  return children;
}

bool is_dir_at(int parent_fd, const std::string& name) {
  struct stat st {};
  return ::fstatat(parent_fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode);
}

// Removes `name` under `parent_fd` and everything below it, never following
// a symbolic link (a link is unlinked, not entered).
Status remove_tree_at(int parent_fd, const std::string& name) {
  struct stat st {};
  if (::fstatat(parent_fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0)
    return errno == ENOENT ? Status::ok() : io_error("stat " + name, errno);
  if (!S_ISDIR(st.st_mode)) {
    if (::unlinkat(parent_fd, name.c_str(), 0) != 0 && errno != ENOENT) return io_error("unlink " + name, errno);
    return Status::ok();
  }
  AIRLOCK_ASSIGN_OR_RETURN(std::vector<std::string> children, list_dir_at(parent_fd, name));
  int fd = ::openat(parent_fd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return io_error("open " + name, errno);
  Status s;
  for (const std::string& child : children) {
    s = remove_tree_at(fd, child);
    if (!s.is_ok()) break;
  }
  ::close(fd);
  AIRLOCK_RETURN_IF_ERROR(s);
  if (::unlinkat(parent_fd, name.c_str(), AT_REMOVEDIR) != 0 && errno != ENOENT)
    return io_error("rmdir " + name, errno);
  return Status::ok();
}

// A version directory name as the store writes it: decimal, no sign, no
// leading zero.
std::optional<std::uint64_t> parse_version_dir(const std::string& name) {
  if (name.empty() || name.size() > 16 || (name[0] == '0' && name.size() > 1)) return std::nullopt;
  std::uint64_t v = 0;
  for (char c : name) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + static_cast<std::uint64_t>(c - '0');
  }
  return v;
}

// What the store writes is readable by its group (airlockd's, where root
// owns the store: docs/install.md) whatever the importer's umask: files
// 0640, directories 0750, keeping a directory's set-group-ID bit (inherited
// from a parent that has it, so that everything below stays in the group).
Status set_store_mode(int fd, const std::string& what) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return io_error("stat " + what, errno);
  const mode_t mode = S_ISDIR(st.st_mode) ? (0750 | (st.st_mode & S_ISGID)) : 0640;
  if ((st.st_mode & 07777) != mode && ::fchmod(fd, mode) != 0) return io_error("chmod " + what, errno);
  return Status::ok();
}

// Creates the directory `name` under `parent_fd` (false: it was there).
Result<bool> make_dir_at(int parent_fd, const std::string& name) {
  if (::mkdirat(parent_fd, name.c_str(), 0750) != 0) {
    if (errno == EEXIST) return false;
    return io_error("mkdir " + name, errno);
  }
  const int fd = ::openat(parent_fd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return io_error("open directory " + name, errno);
  const Status s = set_store_mode(fd, name);
  ::close(fd);
  AIRLOCK_RETURN_IF_ERROR(s);
  return true;
}

// Creates the file `name` under `dir_fd` (it must not exist), for writing.
Result<int> create_file_at(int dir_fd, const std::string& name, int flags = O_WRONLY) {
  const int fd = ::openat(dir_fd, name.c_str(), flags | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0640);
  if (fd < 0) return io_error("create " + name, errno);
  if (Status s = set_store_mode(fd, name); !s.is_ok()) {
    ::close(fd);
    return s;
  }
  return fd;
}

// Opens (creating if needed) the directory `name` under `parent_fd`.
Result<int> open_dir_at(int parent_fd, const std::string& name, bool create) {
  if (create) AIRLOCK_RETURN_IF_ERROR(make_dir_at(parent_fd, name).status());
  int fd = ::openat(parent_fd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return io_error("open directory " + name + " (links are never followed)", errno);
  return fd;
}

Status write_all(int fd, const std::uint8_t* p, std::size_t n, std::uint64_t offset, const std::string& what) {
  while (n > 0) {
    ssize_t w = ::pwrite(fd, p, n, static_cast<off_t>(offset));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return io_error("write " + what, w < 0 ? errno : EIO);
    p += w;
    n -= static_cast<std::size_t>(w);
    offset += static_cast<std::uint64_t>(w);
  }
  return Status::ok();
}

Status write_new_file(int dir_fd, const std::string& name, const std::string& data) {
  AIRLOCK_ASSIGN_OR_RETURN(const int fd, create_file_at(dir_fd, name));
  Status s = write_all(fd, reinterpret_cast<const std::uint8_t*>(data.data()), data.size(), 0, name);
  if (s.is_ok() && ::fsync(fd) != 0) s = io_error("fsync " + name, errno);
  ::close(fd);
  return s;
}

// Test-only fault injection: AIRLOCK_TEST_KILL_AFTER_BYTES=N makes the
// importing process SIGKILL itself once N payload bytes are written, so tests
// can prove that an import killed mid-extraction leaves nothing visible.
// Compiled only with AIRLOCK_TEST_HOOKS (on in test builds, off in packages).
std::uint64_t kill_after_bytes() {
#if defined(AIRLOCK_TEST_HOOKS)
  const char* v = std::getenv("AIRLOCK_TEST_KILL_AFTER_BYTES");
  return v != nullptr ? std::strtoull(v, nullptr, 10) : 0;
#else
  return 0;
#endif
}

// Writes verified data into STORE/.staging/<random>/.
class StagingSink : public ExtractSink {
 public:
  StagingSink(int store_fd, sqlite3* db, const ImportOptions& options,
              std::function<Result<bool>(const std::string&, std::uint64_t)> is_recorded,
              std::function<Result<std::optional<std::uint64_t>>(const std::string&)> highest)
      : store_fd_(store_fd), options_(options), is_recorded_(std::move(is_recorded)),
        highest_(std::move(highest)), kill_after_(kill_after_bytes()) {
    (void)db;
  }

  ~StagingSink() override {
    for (int fd : file_fds_)
      if (fd >= 0) ::close(fd);
    if (staging_parent_fd_ >= 0) {
      if (!staging_name_.empty()) remove_tree_at(staging_parent_fd_, staging_name_).ignore();
      ::close(staging_parent_fd_);
    }
  }

  // `bundle` outlives every call but publish().
  Status begin(const VerifiedBundle& bundle) override {
    bundle_ = &bundle;
    const Manifest& m = bundle.manifest;
    AIRLOCK_ASSIGN_OR_RETURN(std::optional<std::uint64_t> highest, highest_(m.name));
    if (highest && m.version <= *highest && !options_.allow_downgrade)
      return verification_failed("rollback refused: " + m.name + " version " + std::to_string(m.version) +
                                 " is not newer than the imported version " + std::to_string(*highest) +
                                 " (--allow-downgrade to override)");
    downgrade_ = highest && m.version <= *highest;
    AIRLOCK_ASSIGN_OR_RETURN(bool recorded, is_recorded_(m.name, m.version));
    if (recorded) return already_exists(m.name + " version " + std::to_string(m.version) + " is already imported");

    AIRLOCK_ASSIGN_OR_RETURN(staging_parent_fd_, open_dir_at(store_fd_, kStagingDir, true));
    std::uint8_t rnd[8];
    randombytes_buf(rnd, sizeof rnd);
    std::string name = "import-" + std::to_string(::getpid()) + "-" + to_hex(rnd);
    AIRLOCK_ASSIGN_OR_RETURN(const bool made, make_dir_at(staging_parent_fd_, name));
    if (!made) return io_error("mkdir staging " + name, EEXIST);
    staging_name_ = name;
    AIRLOCK_ASSIGN_OR_RETURN(int root, open_dir_at(staging_parent_fd_, name, false));
    Status s = write_new_file(root, std::string(kManifestEntry), bundle.manifest_bytes);
    if (s.is_ok()) s = write_new_file(root, std::string(kSignatureEntry), bundle.signature_text);
    ::close(root);
    AIRLOCK_RETURN_IF_ERROR(s);
    dirs_.insert("");
    file_fds_.assign(m.files.size(), -1);
    return Status::ok();
  }

  Status open_file(std::size_t index) override {
    // The path was validated with the manifest; build it component by
    // component through directory descriptors anyway (O_NOFOLLOW at every
    // step). Only one directory descriptor is open at a time, so a bundle
    // with thousands of directories cannot exhaust the descriptor table.
    const std::string& path = bundle_->manifest.files[index].path;
    const std::size_t leaf_at = path.rfind('/') == std::string::npos ? 0 : path.rfind('/') + 1;
    AIRLOCK_ASSIGN_OR_RETURN(int parent, open_staging_dir(path.substr(0, leaf_at == 0 ? 0 : leaf_at - 1), true));
    std::string leaf = path.substr(leaf_at);
    Result<int> fd = create_file_at(parent, leaf);
    ::close(parent);
    if (!fd.is_ok()) return fd.status().with_context(path);
    file_fds_[index] = *fd;
    return Status::ok();
  }

  Status write(std::size_t index, std::uint64_t offset, std::span<const std::uint8_t> data) override {
    AIRLOCK_RETURN_IF_ERROR(
        write_all(file_fds_[index], data.data(), data.size(), offset, bundle_->manifest.files[index].path));
    if (kill_after_ != 0 && written_.fetch_add(data.size()) + data.size() >= kill_after_) ::raise(SIGKILL);
    return Status::ok();
  }

  Status close_file(std::size_t index) override {
    int fd = file_fds_[index];
    file_fds_[index] = -1;
    Status s;
    if (::fsync(fd) != 0) s = io_error("fsync " + bundle_->manifest.files[index].path, errno);
    if (::close(fd) != 0 && s.is_ok()) s = io_error("close " + bundle_->manifest.files[index].path, errno);
    return s;
  }

  // Makes the extracted tree durable and renames it to NAME/VERSION.
  // `bundle` is the verifier's result (the one passed to begin() is gone).
  // The caller holds the store lock and has swept unrecorded versions, so
  // NAME/VERSION does not exist; renameat fails rather than replace it if it
  // somehow does.
  Result<std::string> publish(const VerifiedBundle& bundle) {
    for (const std::string& dir : dirs_) {
      AIRLOCK_ASSIGN_OR_RETURN(int fd, open_staging_dir(dir, false));
      const int rc = ::fsync(fd);
      const int err = errno;
      ::close(fd);
      if (rc != 0) return io_error("fsync staging directory", err);
    }
    const Manifest& m = bundle.manifest;
    AIRLOCK_ASSIGN_OR_RETURN(int name_fd, open_dir_at(store_fd_, m.name, true));
    std::string version = std::to_string(m.version);
    Status s;
    if (::renameat(staging_parent_fd_, staging_name_.c_str(), name_fd, version.c_str()) != 0)
      s = io_error("rename staging directory to " + m.name + "/" + version, errno);
    if (s.is_ok()) {
      staging_name_.clear();
      if (::fsync(name_fd) != 0 || ::fsync(store_fd_) != 0) s = io_error("fsync store", errno);
    }
    ::close(name_fd);
    AIRLOCK_RETURN_IF_ERROR(s);
    return m.name + "/" + version;
  }

  bool downgrade() const { return downgrade_; }

 private:
  // Opens STAGING/`rel` (a '/'-separated directory path, "" for the root),
  // walking one component at a time with O_NOFOLLOW; with `create`, makes
  // the missing components and remembers them for publish()'s fsync.
  Result<int> open_staging_dir(const std::string& rel, bool create) {
    AIRLOCK_ASSIGN_OR_RETURN(int fd, open_dir_at(staging_parent_fd_, staging_name_, false));
    std::size_t start = 0;
    while (start < rel.size()) {
      std::size_t slash = rel.find('/', start);
      if (slash == std::string::npos) slash = rel.size();
      Result<int> next = open_dir_at(fd, rel.substr(start, slash - start), create);
      ::close(fd);
      AIRLOCK_RETURN_IF_ERROR(next.status());
      fd = *next;
      if (create) dirs_.insert(rel.substr(0, slash));
      start = slash + 1;
    }
    return fd;
  }

  int store_fd_;
  const ImportOptions& options_;
  std::function<Result<bool>(const std::string&, std::uint64_t)> is_recorded_;
  std::function<Result<std::optional<std::uint64_t>>(const std::string&)> highest_;
  const VerifiedBundle* bundle_ = nullptr;
  int staging_parent_fd_ = -1;
  std::string staging_name_;
  std::set<std::string> dirs_;  // directories made under the staging root ("" is the root)
  std::vector<int> file_fds_;
  bool downgrade_ = false;
  std::uint64_t kill_after_;
  std::atomic<std::uint64_t> written_{0};
};

Status sqlite_status(sqlite3* db, const std::string& what) {
  return io_error(what + ": " + sqlite3_errmsg(db), EIO);
}

Status exec(sqlite3* db, const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string m = err ? err : "unknown";
    sqlite3_free(err);
    return io_error(std::string("state.db: ") + m, EIO);
  }
  return Status::ok();
}

// Whether state.db has the imports table. False for an empty file or
// another SQLite database (no such table), and for a file that is not an
// intact SQLite database at all (*unreadable set: SQLite reports it as
// "not a database" or corrupt); other failures (I/O, locking) are errors.
Result<bool> has_imports_table(sqlite3* db, bool* unreadable) {
  *unreadable = false;
  sqlite3_stmt* st = nullptr;
  int rc = sqlite3_prepare_v2(db, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'imports'", -1, &st,
                              nullptr);
  if (rc == SQLITE_OK) rc = sqlite3_step(st);
  if (rc == SQLITE_ROW || rc == SQLITE_DONE) {
    sqlite3_finalize(st);
    return rc == SQLITE_ROW;
  }
  Status failed = sqlite_status(db, "state.db");
  sqlite3_finalize(st);
  if ((rc & 0xff) == SQLITE_NOTADB || (rc & 0xff) == SQLITE_CORRUPT) {
    *unreadable = true;
    return false;
  }
  return failed;
}

// A store that holds bundles (any NAME/VERSION directory) but whose
// state.db is missing or holds no record (`lost` says which) has lost its
// rollback record. Starting a new one would forget every version seen
// (rollback protection reset) and the first import's sweep would delete
// every bundle as unrecorded; a reader cannot tell which bundles were
// imported or which version is the newest: kVerificationFailed, saying
// what to do, for writers and readers alike (a reader's I/O error would
// have airlockd's unit restart it for ever). OK when the store holds no
// bundle.
Status refuse_lost_record(int store_fd, const std::string& dir, const std::string& lost, bool read_only) {
  AIRLOCK_ASSIGN_OR_RETURN(std::vector<std::string> names, list_dir_at(store_fd, "."));
  for (const std::string& name : names) {
    if (!validate_bundle_name(name).is_ok() || !is_dir_at(store_fd, name)) continue;
    AIRLOCK_ASSIGN_OR_RETURN(std::vector<std::string> versions, list_dir_at(store_fd, name));
    if (std::any_of(versions.begin(), versions.end(), [](const std::string& v) { return parse_version_dir(v).has_value(); }))
      return verification_failed(
          dir + " holds bundles (" + name + "/...) but " + lost + ", its record of imported versions: " +
          (read_only ? "without it no bundle in the store can be trusted as imported and not rolled back"
                     : "refusing to start a new record over them (that would reset rollback protection and delete "
                       "them as unrecorded)") +
          ". Restore " + kStateDb + " from a backup, or move the bundle directories out of the store");
  }
  return Status::ok();
}

}  // namespace

BundleStore::BundleStore(BundleStore&& other) noexcept
    : dir_(std::move(other.dir_)), dir_fd_(std::exchange(other.dir_fd_, -1)), db_(std::exchange(other.db_, nullptr)),
      read_only_(other.read_only_) {}

BundleStore::~BundleStore() {
  if (db_ != nullptr) sqlite3_close(db_);
  if (dir_fd_ >= 0) ::close(dir_fd_);
}

namespace {

// file: URI for a path, every byte outside [A-Za-z0-9/._~-] percent-encoded.
std::string sqlite_uri(const std::string& path, const char* query) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string out = "file:";
  for (char c : path) {
    const auto u = static_cast<unsigned char>(c);
    if (std::isalnum(u) || c == '/' || c == '.' || c == '_' || c == '~' || c == '-') {
      out += c;
    } else {
      out += '%';
      out += kHex[u >> 4];
      out += kHex[u & 15];
    }
  }
  return out + "?" + query;
}

}  // namespace

Result<BundleStore> BundleStore::open(const std::string& dir, Access access) {
  const bool read_only = access == Access::kReadOnly;
  if (!read_only && ::mkdir(dir.c_str(), 0750) != 0 && errno != EEXIST) return io_error("create store " + dir, errno);
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT ? not_found(dir + ": no such store") : io_error("open store " + dir, errno);
  std::string db_path = dir + "/" + kStateDb;
  if (read_only && ::faccessat(fd, kStateDb, F_OK, AT_SYMLINK_NOFOLLOW) != 0) {
    const Status lost =
        errno == ENOENT ? refuse_lost_record(fd, dir, std::string("no ") + kStateDb, true) : Status::ok();
    ::close(fd);
    AIRLOCK_RETURN_IF_ERROR(lost);
    return not_found(dir + ": not a bundle store (no " + kStateDb + ")");
  }
  // A record made before the store used a rollback journal is in WAL mode
  // (header byte 18 is 2), and a WAL reader must create a -shm file beside
  // it, which the service's read-only mount of the store forbids: after an
  // upgrade airlockd could not read its store until the next import. One
  // closed cleanly (no -wal file) holds everything in the main file, so it
  // is read as immutable (no locks, no side files); the next import
  // converts it.
  bool legacy_wal = false;
  if (read_only) {
    const int db_fd = ::openat(fd, kStateDb, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    unsigned char header[20];
    if (db_fd >= 0 && ::pread(db_fd, header, sizeof header, 0) == static_cast<ssize_t>(sizeof header) && header[18] == 2 &&
        ::faccessat(fd, (std::string(kStateDb) + "-wal").c_str(), F_OK, AT_SYMLINK_NOFOLLOW) != 0)
      legacy_wal = true;
    if (db_fd >= 0) ::close(db_fd);
  }
  // A new record is made here, not by SQLite (0644 less the umask): with
  // the store's mode (its journal takes the same). Only where the store
  // holds no bundle: otherwise the record was lost (refuse_lost_record).
  bool made_record = false;
  if (!read_only && ::faccessat(fd, kStateDb, F_OK, AT_SYMLINK_NOFOLLOW) != 0 && errno == ENOENT) {
    if (Status held = refuse_lost_record(fd, dir, std::string("no ") + kStateDb, false); !held.is_ok()) {
      ::close(fd);
      return held;
    }
    made_record = true;
    Result<int> made = create_file_at(fd, kStateDb, O_RDWR);
    if (!made.is_ok()) {
      ::close(fd);
      return made.status().with_context(dir);
    }
    ::close(*made);
  }
  sqlite3* db = nullptr;
  const int flags = (read_only ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE) | SQLITE_OPEN_NOFOLLOW |
                    (legacy_wal ? SQLITE_OPEN_URI : 0);
  if (sqlite3_open_v2(legacy_wal ? sqlite_uri(db_path, "immutable=1").c_str() : db_path.c_str(), &db, flags, nullptr) !=
      SQLITE_OK) {
    Status s = sqlite_status(db, "open " + db_path);
    sqlite3_close(db);
    ::close(fd);
    return s;
  }
  BundleStore store(dir, fd, db);
  store.read_only_ = read_only;
  sqlite3_busy_timeout(db, 5000);
  // A state.db that is there but holds no imports table (emptied to 0
  // bytes, or replaced by another SQLite file) has lost its record as surely
  // as a missing one: SQLite would open it empty, the table below would
  // start the record afresh, and a reader's first query would fail on the
  // missing table. Only a record made just now, or one in a store without
  // bundles, is given its tables; to a reader, such a store is one without
  // state.db.
  // A state.db that is not an intact SQLite database (overwritten,
  // truncated mid-page) has lost the record too, in a store with bundles;
  // in one without, it stays the I/O error it is.
  if (!made_record) {
    bool unreadable = false;
    AIRLOCK_ASSIGN_OR_RETURN(const bool has_imports, has_imports_table(db, &unreadable));
    if (!has_imports) {
      AIRLOCK_RETURN_IF_ERROR(refuse_lost_record(
          fd, dir,
          std::string("a ") + kStateDb + (unreadable ? " that is not an intact SQLite database" : " without its imports table"),
          read_only));
      if (unreadable) return io_error(dir + "/" + kStateDb + ": not an intact SQLite database", EIO);
      if (read_only) return not_found(dir + ": not a bundle store (its " + kStateDb + " holds no record)");
    }
  }
  if (read_only) return store;
  // A rollback journal, not WAL: the service reads the store through a
  // read-only mount (ReadOnlyPaths in airlockd.service, so that it can
  // change neither the bundles nor this record), and a reader of a WAL
  // database must be able to create its -shm file. Imports are rare; a
  // store made in WAL mode is converted by its next import.
  AIRLOCK_RETURN_IF_ERROR(exec(db, "PRAGMA journal_mode=DELETE; PRAGMA synchronous=FULL;"));
  AIRLOCK_RETURN_IF_ERROR(exec(db,
      "CREATE TABLE IF NOT EXISTS imports ("
      " id INTEGER PRIMARY KEY,"
      " name TEXT NOT NULL,"
      " version INTEGER NOT NULL,"
      " key_id TEXT NOT NULL,"
      " manifest_sha256 TEXT NOT NULL,"
      " imported_at INTEGER NOT NULL,"
      " downgrade INTEGER NOT NULL);"
      "CREATE INDEX IF NOT EXISTS imports_by_name ON imports(name, version);"));
  return store;
}

Result<std::optional<std::uint64_t>> BundleStore::highest_version(const std::string& name) const {
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(db_, "SELECT MAX(version) FROM imports WHERE name = ?", -1, &st, nullptr) != SQLITE_OK)
    return sqlite_status(db_, "state.db");
  sqlite3_bind_text(st, 1, name.c_str(), -1, SQLITE_TRANSIENT);
  std::optional<std::uint64_t> out;
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
    out = static_cast<std::uint64_t>(sqlite3_column_int64(st, 0));
  sqlite3_finalize(st);
  if (rc != SQLITE_ROW) return sqlite_status(db_, "state.db");
  return out;
}

Result<bool> BundleStore::is_recorded(const std::string& name, std::uint64_t version) const {
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(db_, "SELECT 1 FROM imports WHERE name = ? AND version = ?", -1, &st, nullptr) != SQLITE_OK)
    return sqlite_status(db_, "state.db");
  sqlite3_bind_text(st, 1, name.c_str(), -1, SQLITE_TRANSIENT);
  sqlite3_bind_int64(st, 2, static_cast<sqlite3_int64>(version));
  int rc = sqlite3_step(st);
  sqlite3_finalize(st);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) return sqlite_status(db_, "state.db");
  return rc == SQLITE_ROW;
}

Status BundleStore::record(const ImportRecord& r) {
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(db_,
                         "INSERT INTO imports (name, version, key_id, manifest_sha256, imported_at, downgrade)"
                         " VALUES (?, ?, ?, ?, ?, ?)", -1, &st, nullptr) != SQLITE_OK)
    return sqlite_status(db_, "state.db");
  sqlite3_bind_text(st, 1, r.name.c_str(), -1, SQLITE_TRANSIENT);
  sqlite3_bind_int64(st, 2, static_cast<sqlite3_int64>(r.version));
  sqlite3_bind_text(st, 3, r.key_id.c_str(), -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(st, 4, r.manifest_sha256.c_str(), -1, SQLITE_TRANSIENT);
  sqlite3_bind_int64(st, 5, r.imported_at);
  sqlite3_bind_int(st, 6, r.downgrade ? 1 : 0);
  int rc = sqlite3_step(st);
  sqlite3_finalize(st);
  if (rc != SQLITE_DONE) return sqlite_status(db_, "state.db insert");
  return Status::ok();
}

Result<std::vector<ImportRecord>> BundleStore::list_imports() const {
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(db_,
                         "SELECT name, version, key_id, manifest_sha256, imported_at, downgrade FROM imports"
                         " ORDER BY id", -1, &st, nullptr) != SQLITE_OK)
    return sqlite_status(db_, "state.db");
  std::vector<ImportRecord> out;
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    // The columns are NOT NULL in the schema this code creates; a state.db
    // written otherwise is refused, not read through a null pointer.
    if (sqlite3_column_type(st, 0) != SQLITE_TEXT || sqlite3_column_type(st, 2) != SQLITE_TEXT ||
        sqlite3_column_type(st, 3) != SQLITE_TEXT) {
      sqlite3_finalize(st);
      return verification_failed("state.db: an import record lacks its name, key id or manifest hash");
    }
    ImportRecord r;
    r.name = reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
    r.version = static_cast<std::uint64_t>(sqlite3_column_int64(st, 1));
    r.key_id = reinterpret_cast<const char*>(sqlite3_column_text(st, 2));
    r.manifest_sha256 = reinterpret_cast<const char*>(sqlite3_column_text(st, 3));
    r.imported_at = sqlite3_column_int64(st, 4);
    r.downgrade = sqlite3_column_int(st, 5) != 0;
    r.path = dir_ + "/" + r.name + "/" + std::to_string(r.version);
    out.push_back(std::move(r));
  }
  sqlite3_finalize(st);
  if (rc != SQLITE_DONE) return sqlite_status(db_, "state.db");
  return out;
}

// Called holding the lock. Everything in .staging is garbage from a killed
// import, and so is a NAME/VERSION that state.db does not list (an import
// killed between its rename and its record). Such a version is first moved
// into .staging with one atomic rename, then .staging is deleted as a whole:
// a process killed while deleting leaves its garbage inside .staging, never
// a half-deleted NAME/VERSION that looks like a bundle.
Status BundleStore::sweep_unrecorded() {
  AIRLOCK_RETURN_IF_ERROR(remove_tree_at(dir_fd_, kStagingDir));  // empty, so the names below are free
  AIRLOCK_ASSIGN_OR_RETURN(int staging_fd, open_dir_at(dir_fd_, kStagingDir, true));
  auto sweep_name = [&](const std::string& name) -> Status {
    AIRLOCK_ASSIGN_OR_RETURN(std::vector<std::string> versions, list_dir_at(dir_fd_, name));
    int name_fd = ::openat(dir_fd_, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (name_fd < 0) return io_error("open " + name, errno);
    Status s;
    for (const std::string& entry : versions) {
      std::optional<std::uint64_t> version = parse_version_dir(entry);
      if (!version) continue;
      Result<bool> recorded = is_recorded(name, *version);
      if (!recorded.is_ok()) {
        s = recorded.status();
        break;
      }
      if (*recorded) continue;
      const std::string aside = "unrecorded-" + name + "-" + entry;
      if (::renameat(name_fd, entry.c_str(), staging_fd, aside.c_str()) != 0) {
        s = io_error("move unrecorded " + name + "/" + entry + " aside", errno);
        break;
      }
    }
    if (s.is_ok() && ::fsync(name_fd) != 0) s = io_error("fsync " + name, errno);
    ::close(name_fd);
    return s;
  };
  Status s;
  Result<std::vector<std::string>> names = list_dir_at(dir_fd_, ".");
  if (!names.is_ok()) s = names.status();
  for (std::size_t i = 0; s.is_ok() && i < names->size(); ++i) {
    const std::string& name = (*names)[i];
    if (validate_bundle_name(name).is_ok() && is_dir_at(dir_fd_, name)) s = sweep_name(name);
  }
  if (s.is_ok() && ::fsync(staging_fd) != 0) s = io_error("fsync " + std::string(kStagingDir), errno);
  ::close(staging_fd);
  AIRLOCK_RETURN_IF_ERROR(s);
  return remove_tree_at(dir_fd_, kStagingDir);
}

namespace {

// Why openat(O_NOFOLLOW) refused `component` under `dir_fd` (`shown`: its
// path in the store). A symbolic link (ELOOP for the leaf, ENOTDIR for a
// directory component) or a file in place of a directory is a store changed
// since the import, like a FIFO in it: kVerificationFailed, so that airlockd
// exits 65 and is not restarted in a loop. Anything else is an I/O error.
Status open_failure(int dir_fd, const std::string& component, const std::string& shown, int err) {
  if (err == ELOOP) return verification_failed(shown + " is a symbolic link (links in the store are never followed)");
  if (err == ENOTDIR) {
    struct stat st {};
    if (::fstatat(dir_fd, component.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode))
      return verification_failed(shown + " is a symbolic link (links in the store are never followed)");
    return verification_failed(shown + " is not a directory");
  }
  return io_error("open " + shown, err);
}

// Opens STORE/rel (a validated relative path) for reading, one component at a
// time, never following a link; the leaf must be a regular file.
Result<int> open_file_nofollow(int root_fd, const std::string& rel) {
  int dir = ::dup(root_fd);
  if (dir < 0) return io_error("dup", errno);
  std::size_t start = 0;
  for (std::size_t slash = rel.find('/'); slash != std::string::npos; slash = rel.find('/', start)) {
    const std::string component = rel.substr(start, slash - start);
    const int next = ::openat(dir, component.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (next < 0) {
      const int err = errno;
      const Status s = open_failure(dir, component, rel.substr(0, slash), err);
      ::close(dir);
      return s;
    }
    ::close(dir);
    dir = next;
    start = slash + 1;
  }
  // O_NONBLOCK: opening a FIFO planted in the store would wait for a
  // writer (the fstat below refuses it).
  const std::string leaf = rel.substr(start);
  int fd = ::openat(dir, leaf.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    const int err = errno;
    const Status s = open_failure(dir, leaf, rel, err);
    ::close(dir);
    return s;
  }
  ::close(dir);
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return verification_failed(rel + " is not a regular file");
  }
  return fd;
}

Result<std::string> read_installed(int root_fd, const std::string& rel, std::uint64_t max_bytes) {
  AIRLOCK_ASSIGN_OR_RETURN(int fd, open_file_nofollow(root_fd, rel));
  std::string out;
  char buf[65536];
  Status s;
  while (true) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      s = io_error("read " + rel, errno);
      break;
    }
    if (n == 0) break;
    out.append(buf, static_cast<std::size_t>(n));
    if (out.size() > max_bytes) {
      s = verification_failed(rel + " is larger than " + std::to_string(max_bytes) + " bytes");
      break;
    }
  }
  ::close(fd);
  AIRLOCK_RETURN_IF_ERROR(s);
  return out;
}

}  // namespace

// Test hook: while the file named by AIRLOCK_TEST_REHASH_DELAY_FILE exists,
// each rehashed chunk waits up to that many milliseconds (its content) or
// until cancelled, so a test can interrupt a reload mid-rehash. Only with
// AIRLOCK_TEST_HOOKS.
static void test_rehash_delay(const std::atomic<bool>* cancel) {
#if defined(AIRLOCK_TEST_HOOKS)
  const char* path = std::getenv("AIRLOCK_TEST_REHASH_DELAY_FILE");
  if (path == nullptr) return;
  std::FILE* f = std::fopen(path, "r");
  if (f == nullptr) return;
  long ms = 0;
  if (std::fscanf(f, "%ld", &ms) != 1) ms = 0;
  std::fclose(f);
  for (long waited = 0; waited < ms && !(cancel != nullptr && cancel->load()); waited += 10)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
#else
  (void)cancel;
#endif
}

Result<VerifiedBundle> BundleStore::check_installed(const ImportRecord& record, const TrustStore& trust, bool rehash,
                                                    unsigned n_threads, const std::atomic<bool>* cancel) const {
  const std::string where = record.name + "/" + std::to_string(record.version);
  auto fail = [&](const Status& s) { return s.with_context(where); };
  std::string manifest_bytes, signature_text;
  {
    Result<std::string> m = read_installed(dir_fd_, where + "/" + std::string(kManifestEntry), kMaxManifestBytes);
    if (!m.is_ok()) return fail(m.status());
    Result<std::string> sig = read_installed(dir_fd_, where + "/" + std::string(kSignatureEntry), kMaxSignatureBytes);
    if (!sig.is_ok()) return fail(sig.status());
    manifest_bytes = std::move(*m);
    signature_text = std::move(*sig);
  }
  if (to_hex(sha256(manifest_bytes)) != record.manifest_sha256)
    return fail(verification_failed("manifest.json is not the manifest recorded at import"));
  Result<VerifiedBundle> vb = check_signed_manifest(std::move(manifest_bytes), std::move(signature_text), trust, 0);
  if (!vb.is_ok()) return fail(vb.status());
  if (vb->manifest.name != record.name || vb->manifest.version != record.version)
    return fail(verification_failed("manifest names " + vb->manifest.name + " version " +
                                    std::to_string(vb->manifest.version)));
  const Manifest& m = vb->manifest;
  std::vector<int> fds;
  struct Closer {
    std::vector<int>& fds;
    ~Closer() {
      for (int fd : fds) ::close(fd);
    }
  } closer{fds};
  for (const ManifestFile& f : m.files) {
    Result<int> fd = open_file_nofollow(dir_fd_, where + "/" + f.path);
    if (!fd.is_ok()) return fail(fd.status());
    fds.push_back(*fd);
    struct stat st {};
    if (::fstat(*fd, &st) != 0) return fail(io_error("stat '" + f.path + "'", errno));
    if (static_cast<std::uint64_t>(st.st_size) != f.size)
      return fail(verification_failed("file '" + f.path + "' is " + std::to_string(st.st_size) + " bytes, the manifest says " +
                                      std::to_string(f.size)));
  }
  if (!rehash) return vb;

  // Every chunk of every file, on all cores: the same per-chunk check as
  // import, against the same signed manifest.
  std::mutex mu;
  std::string first_bad;
  Status pool_status, map_status;  // map_status: a file that could not be mapped or shrank (not a mismatch); under mu
  {
    TaskPool pool(n_threads);
    for (std::size_t i = 0; i < m.files.size(); ++i) {
      const ManifestFile& f = m.files[i];
      if (f.size == 0) continue;
      void* map = ::mmap(nullptr, f.size, PROT_READ, MAP_PRIVATE, fds[i], 0);
      if (map == MAP_FAILED) {
        std::lock_guard<std::mutex> lock(mu);
        map_status = io_error("cannot map '" + f.path + "'", errno);
        break;
      }
      std::shared_ptr<void> mapping(map, [size = f.size](void* p) { ::munmap(p, size); });
      for (std::uint64_t c = 0; c < f.chunk_sha256.size(); ++c) {
        pool.submit([&, mapping, i, c] {
          test_rehash_delay(cancel);
          if (cancel != nullptr && cancel->load(std::memory_order_relaxed)) return;
          const ManifestFile& file = m.files[i];
          const std::uint64_t off = c * m.chunk_size;
          const std::uint64_t len = std::min<std::uint64_t>(m.chunk_size, file.size - off);
          std::span<const std::uint8_t> piece(static_cast<const std::uint8_t*>(mapping.get()) + off, len);
          Result<Sha256Digest> digest = sha256_guarded(piece, "'" + file.path + "'");
          if (!digest.is_ok()) {
            std::lock_guard<std::mutex> lock(mu);
            if (map_status.is_ok()) map_status = digest.status();  // the file shrank: an I/O error
          } else if (*digest != file.chunk_sha256[c]) {
            std::lock_guard<std::mutex> lock(mu);
            if (first_bad.empty()) first_bad = "file '" + file.path + "' chunk " + std::to_string(c) + " does not match its SHA-256";
          }
        });
      }
    }
    pool_status = pool.wait();
  }
  AIRLOCK_RETURN_IF_ERROR(pool_status);
  if (cancel != nullptr && cancel->load()) return fail(unavailable("cancelled"));
  if (!first_bad.empty()) return fail(verification_failed(first_bad));
  if (!map_status.is_ok()) return fail(map_status);
  return vb;
}

Result<ImportRecord> BundleStore::import_bundle(const std::string& bundle_path, const TrustStore& trust,
                                                const ImportOptions& options) {
  if (read_only_) return invalid_argument(dir_ + ": store opened read-only");
  int lock_fd = ::openat(dir_fd_, kLockFile, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0640);
  if (lock_fd < 0) return io_error("open " + dir_ + "/" + kLockFile, errno);
  struct LockGuard {
    int fd;
    ~LockGuard() { ::close(fd); }  // closing releases the flock
  } guard{lock_fd};
  if (::flock(lock_fd, LOCK_EX | LOCK_NB) != 0)
    return unavailable("another import is running in " + dir_);
  AIRLOCK_RETURN_IF_ERROR(sweep_unrecorded());

  StagingSink sink(
      dir_fd_, db_, options, [this](const std::string& n, std::uint64_t v) { return is_recorded(n, v); },
      [this](const std::string& n) { return highest_version(n); });
  AIRLOCK_ASSIGN_OR_RETURN(VerifiedBundle vb, verify_bundle_file(bundle_path, trust, options.verify, &sink));
  AIRLOCK_ASSIGN_OR_RETURN(std::string rel, sink.publish(vb));
  ImportRecord r;
  r.name = vb.manifest.name;
  r.version = vb.manifest.version;
  r.key_id = vb.manifest.key_id.to_string();
  r.manifest_sha256 = vb.manifest_sha256;
  r.imported_at = static_cast<std::int64_t>(std::time(nullptr));
  r.downgrade = sink.downgrade();
  r.path = dir_ + "/" + rel;
  AIRLOCK_RETURN_IF_ERROR(record(r));
  return r;
}

}  // namespace airlock::verifier
