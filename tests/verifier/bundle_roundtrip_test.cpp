// create -> verify -> import on generated payloads, through the library.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>

#include <sqlite3.h>

#include "airlock/verifier/bundle_reader.h"
#include "airlock/verifier/bundle_store.h"
#include "airlock/verifier/bundle_writer.h"
#include "task_pool.h"
#include "test_bundles.h"

namespace airlock::verifier {
namespace {

struct Fixture {
  testing::TempDir dir;
  SecretKey key = testing::test_key(3);
  std::string big = testing::random_bytes(3 * 1024 * 1024 + 12345, 7);  // 4 chunks of 1 MiB

  Result<VerifiedBundle> create(std::uint64_t version, const std::string& out) {
    testing::write_file(dir / "weights.bin", big);
    testing::write_file(dir / "LICENSE", "MIT\n");
    testing::write_file(dir / "empty.cfg", "");
    CreateOptions o;
    o.name = "demo-model";
    o.version = version;
    o.chunk_size = 1 << 20;
    return create_bundle({{FileRole::kLlm, dir / "weights.bin", "weights.bin"},
                          {FileRole::kLicense, dir / "LICENSE", "docs/LICENSE"},
                          {FileRole::kConfig, dir / "empty.cfg", "empty.cfg"}},
                         key, o, out);
  }
};

TEST(BundleRoundTrip, CreateVerifyImport) {
  Fixture f;
  std::string out = f.dir / "demo-model-1.airlock";
  Result<VerifiedBundle> made = f.create(1, out);
  ASSERT_TRUE(made.is_ok()) << made.status().to_string();
  const Manifest& m = made->manifest;
  ASSERT_EQ(m.files.size(), 3u);
  EXPECT_EQ(m.files[0].chunk_sha256.size(), 4u);
  EXPECT_EQ(m.files[0].sha256, sha256(f.big));
  EXPECT_EQ(m.files[2].size, 0u);
  EXPECT_TRUE(m.files[2].chunk_sha256.empty());

  TrustStore trust = testing::trust_only(f.key);
  std::vector<std::uint64_t> seen;
  VerifyOptions vo;
  vo.progress = [&](std::uint64_t done, std::uint64_t total) {
    EXPECT_LE(done, total);
    seen.push_back(done);
  };
  Result<VerifiedBundle> checked = verify_bundle_file(out, trust, vo);
  ASSERT_TRUE(checked.is_ok()) << checked.status().to_string();
  EXPECT_EQ(checked->manifest_sha256, made->manifest_sha256);
  ASSERT_FALSE(seen.empty());
  EXPECT_EQ(seen.back(), m.total_bytes());

  Result<BundleStore> store = BundleStore::open(f.dir / "store");
  ASSERT_TRUE(store.is_ok());
  Result<ImportRecord> rec = store->import_bundle(out, trust, {});
  ASSERT_TRUE(rec.is_ok()) << rec.status().to_string();
  EXPECT_EQ(rec->name, "demo-model");
  EXPECT_EQ(rec->version, 1u);
  EXPECT_EQ(rec->key_id, f.key.id.to_string());
  std::string root = f.dir / "store/demo-model/1";
  EXPECT_EQ(testing::read_file(root + "/weights.bin"), f.big);
  EXPECT_EQ(testing::read_file(root + "/docs/LICENSE"), "MIT\n");
  EXPECT_EQ(testing::read_file(root + "/empty.cfg"), "");
  EXPECT_EQ(testing::read_file(root + "/manifest.json"), made->manifest_bytes);
  EXPECT_EQ(testing::read_file(root + "/manifest.json.minisig"), made->signature_text);
  EXPECT_TRUE(testing::list_tree(f.dir / "store/.staging").empty());
  Result<std::optional<std::uint64_t>> hv = store->highest_version("demo-model");
  ASSERT_TRUE(hv.is_ok());
  EXPECT_EQ(hv->value_or(0), 1u);
}

// The store is written for its group whatever the importer's umask (root
// imports into a store of group airlock that airlockd reads): files 0640,
// directories 0750, and a set-group-ID store keeps the bit, and so the
// group, all the way down.
TEST(BundleRoundTrip, TheStoreIsReadableByItsGroupWhateverTheUmask) {
  Fixture f;
  const std::string out = f.dir / "demo-model-1.airlock";
  ASSERT_TRUE(f.create(1, out).is_ok());
  const std::string dir = f.dir / "store";
  ASSERT_EQ(::mkdir(dir.c_str(), 0750), 0);
  ASSERT_EQ(::chmod(dir.c_str(), 02750), 0);
  const mode_t old_umask = ::umask(077);
  Result<BundleStore> store = BundleStore::open(dir);
  Result<ImportRecord> rec = store.is_ok() ? store->import_bundle(out, testing::trust_only(f.key), {})
                                           : Result<ImportRecord>(store.status());
  ::umask(old_umask);
  ASSERT_TRUE(rec.is_ok()) << rec.status().to_string();
  int files = 0, dirs = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    struct stat st {};
    ASSERT_EQ(::lstat(e.path().c_str(), &st), 0);
    const std::string rel = e.path().string().substr(dir.size());
    if (rel.rfind("/.staging", 0) == 0 || rel == "/.lock") continue;  // (the importer's own)
    if (S_ISDIR(st.st_mode)) {
      EXPECT_EQ(st.st_mode & 07777, 02750u) << rel;
      ++dirs;
    } else if (rel.rfind("/state.db", 0) != 0 || rel == "/state.db") {
      EXPECT_EQ(st.st_mode & 07777, 0640u) << rel;
      ++files;
    }
  }
  EXPECT_EQ(dirs, 3);   // demo-model, demo-model/1, demo-model/1/docs
  EXPECT_EQ(files, 6);  // state.db, the three files, manifest.json and its signature
}

// Paths as long as bundles allow: one that ustar splits into prefix and
// name, and one that fits neither (pax path, a shortened ustar name).
// Both verify and import: the ustar fields' checks accept what the writer
// makes of them.
TEST(BundleRoundTrip, TheLongestPathsVerify) {
  Fixture f;
  testing::write_file(f.dir / "x.bin", "x");
  const std::string split = std::string(100, 'a') + "/" + std::string(50, 'b') + "/" + std::string(99, 'c');  // 251
  const std::string unsplittable = std::string(100, 'd') + "/" + std::string(100, 'e') + "/" + std::string(53, 'f');
  CreateOptions o;
  o.name = "long-paths";
  o.version = 1;
  const std::string out = f.dir / "long.airlock";
  Result<VerifiedBundle> made = create_bundle({{FileRole::kLlm, f.dir / "x.bin", "model.gguf"},
                                               {FileRole::kConfig, f.dir / "x.bin", split},
                                               {FileRole::kConfig, f.dir / "x.bin", unsplittable}},
                                              f.key, o, out);
  ASSERT_TRUE(made.is_ok()) << made.status().to_string();
  TrustStore trust = testing::trust_only(f.key);
  Result<VerifiedBundle> checked = verify_bundle_file(out, trust, {});
  ASSERT_TRUE(checked.is_ok()) << checked.status().to_string();
  Result<BundleStore> store = BundleStore::open(f.dir / "store");
  ASSERT_TRUE(store.is_ok());
  Result<ImportRecord> rec = store->import_bundle(out, trust, {});
  ASSERT_TRUE(rec.is_ok()) << rec.status().to_string();
  EXPECT_EQ(testing::read_file(f.dir / ("store/long-paths/1/" + unsplittable)), "x");
}

TEST(BundleRoundTrip, RollbackRefusedUnlessAllowed) {
  Fixture f;
  ASSERT_TRUE(f.create(1, f.dir / "v1.airlock").is_ok());
  ASSERT_TRUE(f.create(2, f.dir / "v2.airlock").is_ok());
  TrustStore trust = testing::trust_only(f.key);
  Result<BundleStore> store = BundleStore::open(f.dir / "store");
  ASSERT_TRUE(store.is_ok());
  ASSERT_TRUE(store->import_bundle(f.dir / "v2.airlock", trust, {}).is_ok());
  Result<ImportRecord> old = store->import_bundle(f.dir / "v1.airlock", trust, {});
  ASSERT_FALSE(old.is_ok());
  EXPECT_EQ(old.status().code(), StatusCode::kVerificationFailed);
  EXPECT_NE(old.status().message().find("rollback"), std::string::npos);
  EXPECT_FALSE(testing::exists(f.dir / "store/demo-model/1"));
  Result<ImportRecord> again = store->import_bundle(f.dir / "v2.airlock", trust, {});
  EXPECT_FALSE(again.is_ok());  // the same version is not newer either

  ImportOptions allow;
  allow.allow_downgrade = true;
  Result<ImportRecord> forced = store->import_bundle(f.dir / "v1.airlock", trust, allow);
  ASSERT_TRUE(forced.is_ok()) << forced.status().to_string();
  EXPECT_TRUE(forced->downgrade);
  Result<ImportRecord> twice = store->import_bundle(f.dir / "v1.airlock", trust, allow);
  ASSERT_FALSE(twice.is_ok());
  EXPECT_EQ(twice.status().code(), StatusCode::kAlreadyExists);
}

// A store whose state.db is gone but whose bundles are still there has
// lost its rollback record: opening it for an import is refused (a new
// record would forget every version and the sweep would delete them all),
// and nothing in it changes. A new, empty store starts a record as before.
TEST(BundleRoundTrip, AStoreWithBundlesButNoRecordIsNotStartedAfresh) {
  Fixture f;
  ASSERT_TRUE(f.create(1, f.dir / "v1.airlock").is_ok());
  ASSERT_TRUE(f.create(2, f.dir / "v2.airlock").is_ok());
  {
    Result<BundleStore> store = BundleStore::open(f.dir / "store");
    ASSERT_TRUE(store.is_ok());
    ASSERT_TRUE(store->import_bundle(f.dir / "v2.airlock", testing::trust_only(f.key), {}).is_ok());
  }
  for (const char* leftover : {"state.db", "state.db-wal", "state.db-shm"})
    ::unlink((f.dir / "store/" + leftover).c_str());
  Result<BundleStore> reopened = BundleStore::open(f.dir / "store");
  ASSERT_FALSE(reopened.is_ok());
  EXPECT_EQ(reopened.status().code(), StatusCode::kVerificationFailed);
  EXPECT_NE(reopened.status().message().find("no state.db"), std::string::npos) << reopened.status().message();
  EXPECT_EQ(testing::read_file(f.dir / "store/demo-model/2/weights.bin"), f.big);
  EXPECT_FALSE(testing::exists(f.dir / "store/state.db"));
  // Anything else in the directory (no NAME/VERSION) does not hold it back.
  ASSERT_EQ(::mkdir((f.dir / "fresh").c_str(), 0750), 0);
  ASSERT_EQ(::mkdir((f.dir / "fresh/notes").c_str(), 0750), 0);
  testing::write_file(f.dir / "fresh/README", "x");
  Result<BundleStore> fresh = BundleStore::open(f.dir / "fresh");
  ASSERT_TRUE(fresh.is_ok()) << fresh.status().to_string();
  EXPECT_TRUE(fresh->import_bundle(f.dir / "v1.airlock", testing::trust_only(f.key), {}).is_ok());
}

// A state.db that is there but holds no record is as lost as a missing
// one: emptied to 0 bytes, SQLite opened it as a new database, the import
// started a fresh record, its sweep deleted v2 as unrecorded and v1 was
// accepted again. Now the open is refused and nothing changes; an empty
// state.db in a store without bundles still starts a record.
TEST(BundleRoundTrip, AStoreWithBundlesAndAnEmptyRecordIsNotStartedAfresh) {
  Fixture f;
  ASSERT_TRUE(f.create(1, f.dir / "v1.airlock").is_ok());
  ASSERT_TRUE(f.create(2, f.dir / "v2.airlock").is_ok());
  TrustStore trust = testing::trust_only(f.key);
  {
    Result<BundleStore> store = BundleStore::open(f.dir / "store");
    ASSERT_TRUE(store.is_ok());
    ASSERT_TRUE(store->import_bundle(f.dir / "v1.airlock", trust, {}).is_ok());
    ASSERT_TRUE(store->import_bundle(f.dir / "v2.airlock", trust, {}).is_ok());
  }
  ASSERT_EQ(::truncate((f.dir / "store/state.db").c_str(), 0), 0);
  Result<BundleStore> reopened = BundleStore::open(f.dir / "store");
  ASSERT_FALSE(reopened.is_ok());
  EXPECT_EQ(reopened.status().code(), StatusCode::kVerificationFailed);
  EXPECT_NE(reopened.status().message().find("imports table"), std::string::npos) << reopened.status().message();
  EXPECT_EQ(testing::read_file(f.dir / "store/demo-model/1/weights.bin"), f.big);
  EXPECT_EQ(testing::read_file(f.dir / "store/demo-model/2/weights.bin"), f.big);
  EXPECT_EQ(testing::read_file(f.dir / "store/state.db"), "");

  ASSERT_EQ(::mkdir((f.dir / "fresh").c_str(), 0750), 0);
  testing::write_file(f.dir / "fresh/state.db", "");
  Result<BundleStore> fresh = BundleStore::open(f.dir / "fresh");
  ASSERT_TRUE(fresh.is_ok()) << fresh.status().to_string();
  EXPECT_TRUE(fresh->import_bundle(f.dir / "v1.airlock", trust, {}).is_ok());
}

// The same for a state.db replaced by another SQLite database (a valid
// file without the imports table).
TEST(BundleRoundTrip, AStoreWithBundlesAndAForeignRecordIsNotStartedAfresh) {
  Fixture f;
  ASSERT_TRUE(f.create(1, f.dir / "v1.airlock").is_ok());
  ASSERT_TRUE(f.create(2, f.dir / "v2.airlock").is_ok());
  TrustStore trust = testing::trust_only(f.key);
  {
    Result<BundleStore> store = BundleStore::open(f.dir / "store");
    ASSERT_TRUE(store.is_ok());
    ASSERT_TRUE(store->import_bundle(f.dir / "v2.airlock", trust, {}).is_ok());
  }
  const std::string db_path = f.dir / "store/state.db";
  ASSERT_EQ(::unlink(db_path.c_str()), 0);
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(db_path.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "CREATE TABLE other (x INTEGER);", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(db);
  const std::string before = testing::read_file(db_path);
  Result<BundleStore> reopened = BundleStore::open(f.dir / "store");
  ASSERT_FALSE(reopened.is_ok());
  EXPECT_EQ(reopened.status().code(), StatusCode::kVerificationFailed);
  EXPECT_NE(reopened.status().message().find("imports table"), std::string::npos) << reopened.status().message();
  EXPECT_EQ(testing::read_file(f.dir / "store/demo-model/2/weights.bin"), f.big);
  EXPECT_EQ(testing::read_file(db_path), before);
}

// The same for a state.db overwritten with bytes that are not SQLite; in a
// store without bundles such a file stays an I/O error (nothing to lose,
// nothing to start over it).
TEST(BundleRoundTrip, AStoreWithBundlesAndAnUnreadableRecordIsNotStartedAfresh) {
  Fixture f;
  ASSERT_TRUE(f.create(1, f.dir / "v1.airlock").is_ok());
  TrustStore trust = testing::trust_only(f.key);
  {
    Result<BundleStore> store = BundleStore::open(f.dir / "store");
    ASSERT_TRUE(store.is_ok());
    ASSERT_TRUE(store->import_bundle(f.dir / "v1.airlock", trust, {}).is_ok());
  }
  const std::string db_path = f.dir / "store/state.db";
  const std::string garbage(8192, 'x');
  testing::write_file(db_path, garbage);
  Result<BundleStore> reopened = BundleStore::open(f.dir / "store");
  ASSERT_FALSE(reopened.is_ok());
  EXPECT_EQ(reopened.status().code(), StatusCode::kVerificationFailed) << reopened.status().to_string();
  EXPECT_NE(reopened.status().message().find("not an intact SQLite database"), std::string::npos)
      << reopened.status().message();
  EXPECT_EQ(testing::read_file(f.dir / "store/demo-model/1/weights.bin"), f.big);
  EXPECT_EQ(testing::read_file(db_path), garbage);

  ASSERT_EQ(::mkdir((f.dir / "fresh").c_str(), 0750), 0);
  testing::write_file(f.dir / "fresh/state.db", garbage);
  for (BundleStore::Access access : {BundleStore::Access::kReadWrite, BundleStore::Access::kReadOnly}) {
    Result<BundleStore> fresh = BundleStore::open(f.dir / "fresh", access);
    ASSERT_FALSE(fresh.is_ok());
    EXPECT_EQ(fresh.status().code(), StatusCode::kIoError) << fresh.status().to_string();
  }
  EXPECT_EQ(testing::read_file(f.dir / "fresh/state.db"), garbage);
}

// Readers (airlockd, `verify --store`, `list`) refuse a lost record as the
// writer does: verification failed, naming it and what to do, rather than
// the I/O error of a query on the missing imports table, which had
// airlockd's unit restart it for ever. A missing state.db in a store with
// bundles is the same loss; in a store without bundles, an empty state.db
// is no store to a reader, as a missing one is. Nothing is written.
TEST(BundleRoundTrip, ReadersRefuseALostRecordAsAVerificationFailure) {
  Fixture f;
  ASSERT_TRUE(f.create(1, f.dir / "v1.airlock").is_ok());
  {
    Result<BundleStore> store = BundleStore::open(f.dir / "store");
    ASSERT_TRUE(store.is_ok());
    ASSERT_TRUE(store->import_bundle(f.dir / "v1.airlock", testing::trust_only(f.key), {}).is_ok());
  }
  const std::string db_path = f.dir / "store/state.db";
  auto expect_refused = [&](const std::string& lost) {
    SCOPED_TRACE(lost);
    const std::vector<std::string> before = testing::list_tree(f.dir / "store");
    const std::string db_before = testing::exists(db_path) ? testing::read_file(db_path) : "(none)";
    Result<BundleStore> ro = BundleStore::open(f.dir / "store", BundleStore::Access::kReadOnly);
    ASSERT_FALSE(ro.is_ok());
    EXPECT_EQ(ro.status().code(), StatusCode::kVerificationFailed) << ro.status().to_string();
    EXPECT_NE(ro.status().message().find("holds bundles (demo-model/...) but " + lost), std::string::npos)
        << ro.status().message();
    EXPECT_NE(ro.status().message().find("Restore state.db from a backup"), std::string::npos) << ro.status().message();
    EXPECT_EQ(testing::list_tree(f.dir / "store"), before);
    EXPECT_EQ(testing::exists(db_path) ? testing::read_file(db_path) : "(none)", db_before);
  };
  ASSERT_EQ(::truncate(db_path.c_str(), 0), 0);
  expect_refused("a state.db without its imports table");
  ASSERT_EQ(::unlink(db_path.c_str()), 0);
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(db_path.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "CREATE TABLE other (x INTEGER);", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(db);
  expect_refused("a state.db without its imports table");
  // not SQLite at all (SQLite calls it "not a database"): the same loss,
  // not an I/O error that would have the service restarted for ever
  testing::write_file(db_path, std::string(8192, 'x'));
  expect_refused("a state.db that is not an intact SQLite database");
  ASSERT_EQ(::unlink(db_path.c_str()), 0);
  expect_refused("no state.db");

  ASSERT_EQ(::mkdir((f.dir / "fresh").c_str(), 0750), 0);
  testing::write_file(f.dir / "fresh/state.db", "");
  Result<BundleStore> fresh = BundleStore::open(f.dir / "fresh", BundleStore::Access::kReadOnly);
  ASSERT_FALSE(fresh.is_ok());
  EXPECT_EQ(fresh.status().code(), StatusCode::kNotFound) << fresh.status().to_string();
  EXPECT_NE(fresh.status().message().find("not a bundle store"), std::string::npos) << fresh.status().message();
  EXPECT_EQ(testing::list_tree(f.dir / "fresh"), std::vector<std::string>{"state.db"});
  EXPECT_EQ(testing::read_file(f.dir / "fresh/state.db"), "");
}

// The store's record uses a rollback journal, not WAL: airlockd reads it
// through a read-only mount, where a WAL reader could not create its -shm
// file. After an import no -wal or -shm file is left, and a read-only open
// and listing create none (a store made in WAL mode is converted).
TEST(BundleRoundTrip, TheRecordIsReadableWithoutWritingBesideIt) {
  Fixture f;
  ASSERT_TRUE(f.create(1, f.dir / "v1.airlock").is_ok());
  auto to_wal = [&] {  // the record as an earlier version left it
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open((f.dir / "store/state.db").c_str(), &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db, "PRAGMA journal_mode=WAL;", nullptr, nullptr, nullptr), SQLITE_OK);
    sqlite3_close(db);
  };
  auto beside = [&] {
    std::vector<std::string> out;
    for (const char* suffix : {"-wal", "-shm", "-journal"})
      if (testing::exists(f.dir / ("store/state.db" + std::string(suffix)))) out.push_back(suffix);
    return out;
  };
  auto read_only_lists_the_import = [&] {
    Result<BundleStore> ro = BundleStore::open(f.dir / "store", BundleStore::Access::kReadOnly);
    ASSERT_TRUE(ro.is_ok()) << ro.status().to_string();
    Result<std::vector<ImportRecord>> listed = ro->list_imports();
    ASSERT_TRUE(listed.is_ok()) << listed.status().to_string();
    EXPECT_EQ(listed->size(), 1u);
    EXPECT_TRUE(beside().empty());
  };
  ::mkdir((f.dir / "store").c_str(), 0750);
  to_wal();  // a store made by an earlier version
  {
    Result<BundleStore> store = BundleStore::open(f.dir / "store");
    ASSERT_TRUE(store.is_ok()) << store.status().to_string();
    ASSERT_TRUE(store->import_bundle(f.dir / "v1.airlock", testing::trust_only(f.key), {}).is_ok());
  }
  EXPECT_TRUE(beside().empty());
  std::string header = testing::read_file(f.dir / "store/state.db").substr(18, 2);
  EXPECT_EQ(header, std::string("\x01\x01", 2));  // file format bytes: 1 = rollback journal, 2 = WAL
  read_only_lists_the_import();

  // A store last written before this change (still in WAL mode, closed
  // cleanly) is read as immutable: it lists its imports and creates no
  // side file, as on the service's read-only mount after an upgrade.
  to_wal();
  ASSERT_EQ(testing::read_file(f.dir / "store/state.db").substr(18, 2), std::string("\x02\x02", 2));
  ASSERT_TRUE(beside().empty());
  read_only_lists_the_import();
}

// An import's hashing threads each copy a chunk: they are held to 1 GiB of
// copies in all, whatever the cores or --threads (1 GiB chunks: one
// thread), and never to none.
TEST(BundleRoundTrip, ImportThreadsAreHeldToTheCopyBudget) {
  EXPECT_EQ(extract_threads(64, 1ULL << 30), 1u);
  EXPECT_EQ(extract_threads(64, 256ULL << 20), 4u);
  EXPECT_EQ(extract_threads(3, 64ULL << 20), 3u);
  EXPECT_EQ(extract_threads(0, 1ULL << 30), 1u);
  EXPECT_EQ(extract_threads(0, 64ULL << 20), std::min(16u, available_cores()));
}

TEST(BundleRoundTrip, ConcurrentImportIsRefusedWhileTheLockIsHeld) {
  Fixture f;
  ASSERT_TRUE(f.create(1, f.dir / "v1.airlock").is_ok());
  Result<BundleStore> store = BundleStore::open(f.dir / "store");
  ASSERT_TRUE(store.is_ok());
  int fd = ::open((f.dir / "store/.lock").c_str(), O_RDWR | O_CREAT, 0640);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::flock(fd, LOCK_EX), 0);  // another process's import, as far as flock can tell
  Result<ImportRecord> r = store->import_bundle(f.dir / "v1.airlock", testing::trust_only(f.key), {});
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable);
  ::close(fd);
  EXPECT_TRUE(store->import_bundle(f.dir / "v1.airlock", testing::trust_only(f.key), {}).is_ok());
}

TEST(BundleRoundTrip, UnrecordedLeftoversAreReplaced) {
  // An import killed between the rename and the state.db record leaves a
  // complete but unrecorded NAME/VERSION; one killed earlier leaves staging.
  Fixture f;
  ASSERT_TRUE(f.create(1, f.dir / "v1.airlock").is_ok());
  Result<BundleStore> store = BundleStore::open(f.dir / "store");
  ASSERT_TRUE(store.is_ok());
  ASSERT_EQ(::mkdir((f.dir / "store/demo-model").c_str(), 0750), 0);
  ASSERT_EQ(::mkdir((f.dir / "store/demo-model/1").c_str(), 0750), 0);
  testing::write_file(f.dir / "store/demo-model/1/stale.bin", "old");
  ASSERT_EQ(::mkdir((f.dir / "store/.staging").c_str(), 0750), 0);
  ASSERT_EQ(::mkdir((f.dir / "store/.staging/import-1-dead").c_str(), 0750), 0);
  testing::write_file(f.dir / "store/.staging/import-1-dead/weights.bin", "partial");
  ASSERT_EQ(::symlink("/etc", (f.dir / "store/.staging/import-1-dead/link").c_str()), 0);
  // A sweep killed while deleting left a half-deleted tree in .staging
  // under the name the next sweep will want.
  ASSERT_EQ(::mkdir((f.dir / "store/.staging/unrecorded-demo-model-1").c_str(), 0750), 0);
  testing::write_file(f.dir / "store/.staging/unrecorded-demo-model-1/x", "half deleted");
  // An unrecorded leftover of another version (an import of v5 killed after
  // its rename) and one of another bundle name.
  ASSERT_EQ(::mkdir((f.dir / "store/demo-model/5").c_str(), 0750), 0);
  testing::write_file(f.dir / "store/demo-model/5/weights.bin", "looks like a bundle");
  ASSERT_EQ(::mkdir((f.dir / "store/other").c_str(), 0750), 0);
  ASSERT_EQ(::mkdir((f.dir / "store/other/3").c_str(), 0750), 0);
  Result<ImportRecord> r = store->import_bundle(f.dir / "v1.airlock", testing::trust_only(f.key), {});
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_FALSE(testing::exists(f.dir / "store/demo-model/1/stale.bin"));
  EXPECT_EQ(testing::read_file(f.dir / "store/demo-model/1/weights.bin"), f.big);
  EXPECT_FALSE(testing::exists(f.dir / "store/demo-model/5"));
  EXPECT_FALSE(testing::exists(f.dir / "store/other/3"));
  EXPECT_TRUE(testing::list_tree(f.dir / "store/.staging").empty());
  EXPECT_TRUE(testing::exists("/etc/passwd"));  // the link was removed, not followed

  // A recorded version survives the next import's sweep.
  ASSERT_TRUE(f.create(2, f.dir / "v2.airlock").is_ok());
  ASSERT_TRUE(store->import_bundle(f.dir / "v2.airlock", testing::trust_only(f.key), {}).is_ok());
  EXPECT_EQ(testing::read_file(f.dir / "store/demo-model/1/weights.bin"), f.big);
  EXPECT_EQ(testing::read_file(f.dir / "store/demo-model/2/weights.bin"), f.big);
}

TEST(BundleRoundTrip, ReadOnlyStoreChangesNothing) {
  Fixture f;
  ASSERT_EQ(::mkdir((f.dir / "empty").c_str(), 0750), 0);
  Result<BundleStore> none = BundleStore::open(f.dir / "empty", BundleStore::Access::kReadOnly);
  ASSERT_FALSE(none.is_ok());
  EXPECT_EQ(none.status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(testing::list_tree(f.dir / "empty").empty());
  EXPECT_EQ(BundleStore::open(f.dir / "missing", BundleStore::Access::kReadOnly).status().code(), StatusCode::kNotFound);
  EXPECT_FALSE(testing::exists(f.dir / "missing"));

  ASSERT_TRUE(f.create(1, f.dir / "v1.airlock").is_ok());
  {
    Result<BundleStore> rw = BundleStore::open(f.dir / "store");
    ASSERT_TRUE(rw.is_ok());
    ASSERT_TRUE(rw->import_bundle(f.dir / "v1.airlock", testing::trust_only(f.key), {}).is_ok());
  }
  const std::vector<std::string> before = testing::list_tree(f.dir / "store");
  Result<BundleStore> ro = BundleStore::open(f.dir / "store", BundleStore::Access::kReadOnly);
  ASSERT_TRUE(ro.is_ok()) << ro.status().to_string();
  Result<std::optional<std::uint64_t>> highest = ro->highest_version("demo-model");
  ASSERT_TRUE(highest.is_ok());
  EXPECT_EQ(highest->value_or(0), 1u);
  ASSERT_TRUE(f.create(2, f.dir / "v2.airlock").is_ok());
  EXPECT_EQ(ro->import_bundle(f.dir / "v2.airlock", testing::trust_only(f.key), {}).status().code(),
            StatusCode::kInvalidArgument);
  // SQLite's WAL coordination files may appear; nothing else changes.
  std::vector<std::string> after = testing::list_tree(f.dir / "store");
  std::erase_if(after, [](const std::string& p) { return p == "state.db-shm" || p == "state.db-wal"; });
  EXPECT_EQ(after, before);
}

TEST(BundleRoundTrip, CheckInstalledCatchesTamperingInTheStore) {
  Fixture f;
  ASSERT_TRUE(f.create(1, f.dir / "v1.airlock").is_ok());
  const TrustStore trust = testing::trust_only(f.key);
  Result<BundleStore> store = BundleStore::open(f.dir / "store");
  ASSERT_TRUE(store.is_ok());
  Result<ImportRecord> rec = store->import_bundle(f.dir / "v1.airlock", trust, {});
  ASSERT_TRUE(rec.is_ok());
  auto check = [&](bool rehash, const TrustStore& t) { return store->check_installed(*rec, t, rehash, 2); };
  ASSERT_TRUE(check(false, trust).is_ok());
  Result<VerifiedBundle> full = check(true, trust);
  ASSERT_TRUE(full.is_ok()) << full.status().to_string();
  EXPECT_EQ(full->manifest.name, "demo-model");

  const std::string weights = f.dir / "store/demo-model/1/weights.bin";
  std::string bytes = testing::read_file(weights);
  bytes[2 * 1024 * 1024 + 5] ^= 1;  // chunk 2
  ::chmod(weights.c_str(), 0640);
  testing::write_file(weights, bytes);
  EXPECT_TRUE(check(false, trust).is_ok());  // same size: only a re-hash sees it
  Result<VerifiedBundle> bad = check(true, trust);
  ASSERT_FALSE(bad.is_ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kVerificationFailed);
  EXPECT_NE(bad.status().message().find("weights.bin' chunk 2"), std::string::npos) << bad.status().message();

  testing::write_file(weights, bytes.substr(0, bytes.size() - 1));
  EXPECT_NE(check(false, trust).status().message().find("bytes, the manifest says"), std::string::npos);
  testing::write_file(weights, f.big);
  ASSERT_TRUE(check(true, trust).is_ok());

  // A link in place of a file is not followed.
  const std::string lic = f.dir / "store/demo-model/1/docs/LICENSE";
  ASSERT_EQ(::unlink(lic.c_str()), 0);
  ASSERT_EQ(::symlink("/etc/hostname", lic.c_str()), 0);
  EXPECT_FALSE(check(false, trust).is_ok());
  ASSERT_EQ(::unlink(lic.c_str()), 0);
  // Nor is a FIFO waited on (opening one for reading blocks until a writer
  // comes).
  ASSERT_EQ(::mkfifo(lic.c_str(), 0640), 0);
  EXPECT_NE(check(false, trust).status().message().find("not a regular file"), std::string::npos);
  ASSERT_EQ(::unlink(lic.c_str()), 0);
  testing::write_file(lic, "MIT\n");
  ASSERT_TRUE(check(true, trust).is_ok());

  // A revoked signer, and a manifest that is not the one recorded.
  TrustStore revoked = testing::trust_only(f.key);
  revoked.revoke(f.key.id);
  EXPECT_NE(check(false, revoked).status().message().find("revoked"), std::string::npos);
  const std::string manifest = f.dir / "store/demo-model/1/manifest.json";
  ::chmod(manifest.c_str(), 0640);
  testing::write_file(manifest, testing::read_file(manifest) + " ");
  EXPECT_NE(check(false, trust).status().message().find("not the manifest recorded"), std::string::npos);
}

// A link in place of a stored file or directory fails the check as
// verification (airlockd exits 65, which systemd does not restart), as a
// FIFO does, not as an I/O error (exit 1, restarted in a loop): openat's
// ELOOP (the leaf) and ENOTDIR (a directory component) name the link.
TEST(BundleRoundTrip, ALinkInTheStoreFailsVerificationNotIo) {
  Fixture f;
  ASSERT_TRUE(f.create(1, f.dir / "v1.airlock").is_ok());
  const TrustStore trust = testing::trust_only(f.key);
  Result<BundleStore> store = BundleStore::open(f.dir / "store");
  ASSERT_TRUE(store.is_ok());
  Result<ImportRecord> rec = store->import_bundle(f.dir / "v1.airlock", trust, {});
  ASSERT_TRUE(rec.is_ok());
  auto expect_refused = [&](const std::string& what, const std::string& expect) {
    Result<VerifiedBundle> r = store->check_installed(*rec, trust, false, 2);
    ASSERT_FALSE(r.is_ok()) << what;
    EXPECT_EQ(r.status().code(), StatusCode::kVerificationFailed) << what << ": " << r.status().to_string();
    EXPECT_NE(r.status().message().find(expect), std::string::npos) << what << ": " << r.status().message();
  };
  const std::string root = f.dir / "store/demo-model/1";
  const std::string copy = f.dir / "copy";
  ASSERT_EQ(::mkdir(copy.c_str(), 0750), 0);
  testing::write_file(copy + "/LICENSE", "MIT\n");
  testing::write_file(copy + "/manifest.json", testing::read_file(root + "/manifest.json"));

  const std::string lic = root + "/docs/LICENSE";  // a payload file
  ASSERT_EQ(::rename(lic.c_str(), (lic + ".away").c_str()), 0);
  ASSERT_EQ(::symlink((copy + "/LICENSE").c_str(), lic.c_str()), 0);
  expect_refused("payload file", "docs/LICENSE is a symbolic link");
  ASSERT_EQ(::rename((lic + ".away").c_str(), lic.c_str()), 0);
  ASSERT_TRUE(store->check_installed(*rec, trust, true, 2).is_ok());

  const std::string manifest = root + "/manifest.json";  // read before the files
  ASSERT_EQ(::rename(manifest.c_str(), (manifest + ".away").c_str()), 0);
  ASSERT_EQ(::symlink((copy + "/manifest.json").c_str(), manifest.c_str()), 0);
  expect_refused("manifest", "manifest.json is a symbolic link");
  ASSERT_EQ(::rename((manifest + ".away").c_str(), manifest.c_str()), 0);

  const std::string docs = root + "/docs";  // a directory component
  ASSERT_EQ(::rename(docs.c_str(), (docs + ".away").c_str()), 0);
  ASSERT_EQ(::symlink(copy.c_str(), docs.c_str()), 0);
  expect_refused("directory", "docs is a symbolic link");
  ASSERT_EQ(::unlink(docs.c_str()), 0);
  testing::write_file(docs, "not a directory");  // and a file in its place
  expect_refused("file for a directory", "docs is not a directory");
  ASSERT_EQ(::unlink(docs.c_str()), 0);
  ASSERT_EQ(::rename((docs + ".away").c_str(), docs.c_str()), 0);
  ASSERT_TRUE(store->check_installed(*rec, trust, true, 2).is_ok());
}

// A state.db whose import record lacks a column (written by something
// else: the schema says NOT NULL) is refused, not read through a null
// pointer.
TEST(BundleRoundTrip, AnImportRecordWithNullsIsRefused) {
  Fixture f;
  ASSERT_TRUE(f.create(1, f.dir / "v1.airlock").is_ok());
  {
    Result<BundleStore> store = BundleStore::open(f.dir / "store");
    ASSERT_TRUE(store.is_ok());
    ASSERT_TRUE(store->import_bundle(f.dir / "v1.airlock", testing::trust_only(f.key), {}).is_ok());
  }
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((f.dir / "store/state.db").c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db,
                         "CREATE TABLE loose AS SELECT * FROM imports; DROP TABLE imports;"
                         "ALTER TABLE loose RENAME TO imports; UPDATE imports SET key_id = NULL;",
                         nullptr, nullptr, nullptr),
            SQLITE_OK)
      << sqlite3_errmsg(db);
  sqlite3_close(db);
  Result<BundleStore> store = BundleStore::open(f.dir / "store", BundleStore::Access::kReadOnly);
  ASSERT_TRUE(store.is_ok()) << store.status().to_string();
  Result<std::vector<ImportRecord>> imports = store->list_imports();
  ASSERT_FALSE(imports.is_ok());
  EXPECT_NE(imports.status().message().find("lacks"), std::string::npos) << imports.status().to_string();
}

TEST(BundleRoundTrip, ManyDirectoriesDoNotExhaustDescriptors) {
  // Import keeps one directory descriptor open at a time: a bundle with
  // 200 directories imports under a descriptor limit of open + 24.
  Fixture f;
  std::vector<BundleInput> inputs;
  for (int i = 0; i < 200; ++i) {
    const std::string dir = "d" + std::to_string(i);
    testing::write_file(f.dir / ("in" + std::to_string(i)), "file " + std::to_string(i));
    inputs.push_back({FileRole::kOther, f.dir / ("in" + std::to_string(i)), dir + "/sub/f"});
  }
  CreateOptions o;
  o.name = "many-dirs";
  o.version = 1;
  ASSERT_TRUE(create_bundle(inputs, f.key, o, f.dir / "m.airlock").is_ok());
  Result<BundleStore> store = BundleStore::open(f.dir / "store");
  ASSERT_TRUE(store.is_ok());
  int open_fds = 0;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) open_fds += entry.path().empty() ? 0 : 1;
  struct rlimit old {};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &old), 0);
  struct rlimit low = old;
  low.rlim_cur = static_cast<rlim_t>(open_fds + 24);
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &low), 0);
  ImportOptions io;
  io.verify.n_threads = 1;
  Result<ImportRecord> r = store->import_bundle(f.dir / "m.airlock", testing::trust_only(f.key), io);
  ::setrlimit(RLIMIT_NOFILE, &old);
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(testing::read_file(f.dir / "store/many-dirs/1/d199/sub/f"), "file 199");
}

TEST(BundleRoundTrip, CreateRefusesToOverwriteAndBadInputs) {
  Fixture f;
  std::string out = f.dir / "b.airlock";
  ASSERT_TRUE(f.create(1, out).is_ok());
  Result<VerifiedBundle> again = f.create(2, out);
  ASSERT_FALSE(again.is_ok());
  EXPECT_EQ(again.status().code(), StatusCode::kAlreadyExists);

  CreateOptions o;
  o.name = "Bad Name";
  o.version = 1;
  testing::write_file(f.dir / "x", "x");
  EXPECT_EQ(create_bundle({{FileRole::kOther, f.dir / "x", "x"}}, f.key, o, f.dir / "c.airlock").status().code(),
            StatusCode::kInvalidArgument);
  o.name = "ok";
  EXPECT_EQ(create_bundle({{FileRole::kOther, f.dir / "missing", "x"}}, f.key, o, f.dir / "c.airlock").status().code(),
            StatusCode::kNotFound);
  EXPECT_EQ(create_bundle({{FileRole::kOther, f.dir / "x", "../x"}}, f.key, o, f.dir / "c.airlock").status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_FALSE(testing::exists(f.dir / "c.airlock"));
  for (const std::string& p : testing::list_tree(f.dir.path())) EXPECT_EQ(p.find(".partial-"), std::string::npos) << p;
}

// A bundle whose manifest cannot fit in 16 MiB is refused before any input
// is read: 1 TiB (a sparse file) at 64 KiB chunks needs 16,777,216 chunk
// hashes, a manifest of 1.2 GB. Hashing it would take hours; the refusal
// takes no time, reports no progress (nothing was hashed), names a chunk
// size that fits and leaves no output or partial file. (Were the check to
// go, this test would hash until its timeout: the output is written only
// after the hashing, so the disk would not fill.) A chunk size of 0 or 1 is
// refused as such, also before the chunk lists are sized.
TEST(BundleRoundTrip, AManifestOverTheLimitIsRefusedBeforeAnythingIsRead) {
  Fixture f;
  const std::string huge = f.dir / "huge.bin";
  testing::write_file(huge, "");
  std::filesystem::resize_file(huge, 1ull << 40);
  testing::write_file(f.dir / "LICENSE", "MIT\n");
  CreateOptions o;
  o.name = "huge";
  o.version = 1;
  o.chunk_size = kMinChunkSize;
  bool progressed = false;
  o.progress = [&](std::uint64_t, std::uint64_t) { progressed = true; };
  const std::vector<BundleInput> inputs = {{FileRole::kOther, huge, "huge.bin"},
                                           {FileRole::kLicense, f.dir / "LICENSE", "LICENSE"}};
  const auto start = std::chrono::steady_clock::now();
  Result<VerifiedBundle> made = create_bundle(inputs, f.key, o, f.dir / "huge.airlock");
  const auto took = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(made.is_ok());
  EXPECT_EQ(made.status().code(), StatusCode::kInvalidArgument);
  const std::string& why = made.status().message();
  EXPECT_NE(why.find("over the 16 MiB"), std::string::npos) << why;
  EXPECT_NE(why.find("16777217 chunk hashes at a chunk size of 65536 bytes"), std::string::npos) << why;
  // 8 MiB chunks: 131,073 hashes, 10 MB of manifest; 4 MiB would be 20 MB.
  EXPECT_NE(why.find("a chunk size of 8388608 bytes or more would fit"), std::string::npos) << why;
  EXPECT_FALSE(progressed);
  EXPECT_LT(took, std::chrono::seconds(10));
  EXPECT_EQ(testing::list_tree(f.dir.path()), (std::vector<std::string>{"LICENSE", "huge.bin"}));

  for (const std::uint64_t bad : {0ull, 1ull}) {
    o.chunk_size = bad;
    made = create_bundle(inputs, f.key, o, f.dir / "huge.airlock");
    ASSERT_FALSE(made.is_ok());
    EXPECT_EQ(made.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(made.status().message().find("chunk_size must be a power of two"), std::string::npos)
        << made.status().message();
  }
  EXPECT_FALSE(progressed);
  EXPECT_FALSE(testing::exists(f.dir / "huge.airlock"));
}

TEST(BundleRoundTrip, GgufFactsReachTheManifest) {
  const char* models = std::getenv("AIRLOCK_MODELS_DIR");
  std::string path = std::string(models ? models : "") + "/stories260K.gguf";
  if (!models || !testing::exists(path)) GTEST_SKIP() << "stories260K.gguf not found (set AIRLOCK_MODELS_DIR)";
  Fixture f;
  CreateOptions o;
  o.name = "stories";
  o.version = 1;
  Result<VerifiedBundle> made = create_bundle({{FileRole::kLlm, path, "stories260K.gguf"}}, f.key, o, f.dir / "s.airlock");
  ASSERT_TRUE(made.is_ok()) << made.status().to_string();
  ASSERT_TRUE(made->manifest.files[0].model.has_value());
  EXPECT_EQ(made->manifest.files[0].model->architecture, "llama");
  EXPECT_EQ(made->manifest.files[0].model->context_length, 2048u);
  EXPECT_NE(made->manifest_bytes.find("\"architecture\": \"llama\""), std::string::npos);
}

}  // namespace
}  // namespace airlock::verifier
