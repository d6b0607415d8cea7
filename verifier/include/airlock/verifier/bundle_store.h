// The enclave's bundle store: verified extraction, atomic publication and the
// rollback record (docs/bundle-format.md, section 6).
//
// import_bundle() verifies and extracts in one pass through an ExtractSink
// that writes into a private staging directory, then renames it to
// NAME/VERSION and records the import in STORE/state.db. A process killed at
// any point leaves no partial NAME/VERSION; the next import moves every
// NAME/VERSION that state.db does not list into .staging and deletes it. Imports are serialised by an flock on STORE/.lock.
//
// Errors: everything verify_bundle() returns, plus kVerificationFailed for a
// rollback (version not above the highest imported, without
// allow_downgrade), kAlreadyExists when NAME/VERSION is already imported,
// kUnavailable when another import holds the lock, kIoError for the OS.
//
// Thread-safety: a BundleStore object is used by one thread at a time;
// separate processes are serialised by the lock.
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "airlock/common/status.h"
#include "airlock/verifier/bundle_reader.h"
#include "airlock/verifier/trust_store.h"

struct sqlite3;

namespace airlock::verifier {

struct ImportOptions {
  bool allow_downgrade = false;
  VerifyOptions verify;
};

struct ImportRecord {
  std::string name;
  std::uint64_t version = 0;
  std::string key_id;
  std::string manifest_sha256;
  std::int64_t imported_at = 0;
  bool downgrade = false;
  std::string path;  // STORE/NAME/VERSION
};

class BundleStore {
 public:
  BundleStore(BundleStore&& other) noexcept;
  BundleStore& operator=(BundleStore&&) = delete;
  BundleStore(const BundleStore&) = delete;
  ~BundleStore();

  enum class Access { kReadWrite, kReadOnly };
  // Opens the store at `dir`. kReadWrite creates it when missing (mode
  // 0750); kReadOnly (for readers such as `verify --store` and the daemon)
  // changes nothing (SQLite may create its -wal/-shm files) and fails with
  // kNotFound when `dir` holds no state.db, or one without the imports
  // table, and no bundle. import_bundle() on a read-only store fails.
  // Both fail with kVerificationFailed, changing nothing, when `dir` holds
  // bundles (a NAME/VERSION directory) but its state.db is missing or has
  // no imports table (an emptied file, another database): the rollback
  // record is lost. A new one would let older versions back in and delete
  // every bundle as unrecorded; a reader cannot tell what was imported.
  static Result<BundleStore> open(const std::string& dir, Access access = Access::kReadWrite);

  Result<ImportRecord> import_bundle(const std::string& bundle_path, const TrustStore& trust,
                                     const ImportOptions& options);

  // Re-checks an imported bundle before it is used (the daemon, on start and
  // on reload): the stored manifest's signature against `trust` (revoked
  // keys, expiry), that it is the manifest recorded at import, and every
  // file's type and size; with `rehash`, also every chunk's SHA-256, on
  // `n_threads` threads (0: one per core). kVerificationFailed names the
  // first problem. When `cancel` becomes true the rehash stops at the next
  // chunk and the call returns kUnavailable ("cancelled").
  Result<VerifiedBundle> check_installed(const ImportRecord& record, const TrustStore& trust, bool rehash,
                                         unsigned n_threads = 0, const std::atomic<bool>* cancel = nullptr) const;

  // Every recorded import, oldest first.
  Result<std::vector<ImportRecord>> list_imports() const;
  // The highest version ever imported under `name`, if any.
  Result<std::optional<std::uint64_t>> highest_version(const std::string& name) const;

 private:
  BundleStore(std::string dir, int dir_fd, sqlite3* db) : dir_(std::move(dir)), dir_fd_(dir_fd), db_(db) {}
  Status record(const ImportRecord& r);
  Result<bool> is_recorded(const std::string& name, std::uint64_t version) const;
  Status sweep_unrecorded();

  std::string dir_;
  int dir_fd_ = -1;
  sqlite3* db_ = nullptr;
  bool read_only_ = false;
};

}  // namespace airlock::verifier
