// API keys and the hash-chained audit log in SQLite.
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "airlock/statedb/state_db.h"
#include "test_bundles.h"

namespace airlock::state {
namespace {

using airlock::testing::TempDir;

AuditRecord rec(int i) {
  AuditRecord r;
  r.time_ms = 1790000000000 + i;
  r.key_name = "app" + std::to_string(i % 3);
  r.route = "/v1/chat/completions";
  r.model = "m";
  r.request_id = "chatcmpl-" + std::to_string(i);
  r.status = 200;
  r.prompt_tokens = 10 + i;
  r.completion_tokens = 5;
  r.latency_s = 0.25 * i;
  if (i % 2) r.prompt_text = "text " + std::to_string(i);
  return r;
}

void sql(const std::string& db_path, const std::string& statement) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(db_path.c_str(), &db), SQLITE_OK);
  char* err = nullptr;
  EXPECT_EQ(sqlite3_exec(db, statement.c_str(), nullptr, nullptr, &err), SQLITE_OK) << (err ? err : "");
  sqlite3_free(err);
  sqlite3_close(db);
}

// A state directory whose log holds rec(0) .. rec(n - 1), closed again.
void write_audit_rows(const std::string& state_dir, int n) {
  Result<StateDb> db = StateDb::open(state_dir);
  ASSERT_TRUE(db.is_ok());
  std::vector<AuditRecord> batch;
  for (int i = 0; i < n; ++i) batch.push_back(rec(i));
  ASSERT_TRUE(db->append_audit(batch).is_ok());
}

// Verifies a copy of the database at `path` after running `tamper` on it.
AuditVerifyResult verify_tampered_copy(const std::string& path, const std::string& tamper,
                                       const std::optional<std::string>& expect_hash = std::nullopt) {
  TempDir copy;
  testing::write_file(copy / "airlock-state.db", testing::read_file(path));
  sql(copy / "airlock-state.db", tamper);
  Result<StateDb> db = StateDb::open(copy.path());
  EXPECT_TRUE(db.is_ok());
  Result<AuditVerifyResult> v = db->verify_audit(expect_hash);
  EXPECT_TRUE(v.is_ok());
  return v.is_ok() ? *v : AuditVerifyResult{};
}

TEST(StateDbTest, KeysAreShownOnceStoredHashedAndChecked) {
  TempDir dir;
  Result<StateDb> db = StateDb::open(dir / "state");
  ASSERT_TRUE(db.is_ok()) << db.status().to_string();
  struct stat st {};
  ASSERT_EQ(::stat((dir / "state/airlock-state.db").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  Result<std::string> a = db->create_key("app-a");
  Result<std::string> b = db->create_key("app-b");
  ASSERT_TRUE(a.is_ok() && b.is_ok());
  EXPECT_EQ(a->size(), 63u);
  EXPECT_EQ(a->substr(0, 3), "ak_");
  EXPECT_EQ(db->create_key("app-a").status().code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(db->create_key("bad name").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(db->create_key("").status().code(), StatusCode::kInvalidArgument);
  // The database holds no key text.
  const std::string file = testing::read_file(dir / "state/airlock-state.db") +
                           testing::read_file(dir / "state/airlock-state.db-wal");
  EXPECT_EQ(file.find(a->substr(20)), std::string::npos);

  KeyVerifier v(*db->load_active_keys());
  EXPECT_EQ(v.authenticate(*a), "app-a");
  EXPECT_EQ(v.authenticate(*b), "app-b");
  std::string flipped = *a;
  flipped.back() = flipped.back() == 'A' ? 'B' : 'A';
  EXPECT_FALSE(v.authenticate(flipped));
  // b's id with a's secret.
  std::string mixed = b->substr(0, 20) + a->substr(20);
  EXPECT_FALSE(v.authenticate(mixed));
  for (std::string junk : {std::string(), std::string("ak_"), std::string(10000, 'x'), a->substr(0, 62), *a + "x"})
    EXPECT_FALSE(v.authenticate(junk));

  ASSERT_TRUE(db->revoke_key("app-a").is_ok());
  EXPECT_EQ(db->revoke_key("app-a").code(), StatusCode::kNotFound);
  KeyVerifier after(*db->load_active_keys());
  EXPECT_FALSE(after.authenticate(*a));
  EXPECT_EQ(after.authenticate(*b), "app-b");
  auto keys = db->list_keys();
  ASSERT_TRUE(keys.is_ok());
  ASSERT_EQ(keys->size(), 2u);
  EXPECT_TRUE((*keys)[0].revoked_at.has_value() != (*keys)[1].revoked_at.has_value());
  EXPECT_TRUE(db->create_key("app-a").is_ok());  // the name is free again

  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 1000; ++i) ok += after.authenticate(*b).has_value();
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 4000);
}

TEST(StateDbTest, AuditChainDetectsEditsDeletionsAndReordering) {
  TempDir dir;
  const std::string path = dir / "state/airlock-state.db";
  {
    Result<StateDb> db = StateDb::open(dir / "state");
    ASSERT_TRUE(db.is_ok());
    std::vector<AuditRecord> batch;
    for (int i = 0; i < 10; ++i) batch.push_back(rec(i));
    ASSERT_TRUE(db->append_audit(batch).is_ok());
    ASSERT_TRUE(db->append_audit({rec(10)}).is_ok());
    Result<AuditVerifyResult> v = db->verify_audit();
    ASSERT_TRUE(v.is_ok());
    EXPECT_TRUE(v->ok) << v->why;
    EXPECT_EQ(v->rows, 11);
    auto tail = db->tail_audit(3);
    ASSERT_TRUE(tail.is_ok());
    ASSERT_EQ(tail->size(), 3u);
    EXPECT_EQ((*tail)[2].seq, 11);
    EXPECT_EQ((*tail)[2].record.request_id, "chatcmpl-10");
  }
  auto verify_after = [&](const std::string& tamper) -> AuditVerifyResult {
    TempDir copy;
    const std::string p = copy / "airlock-state.db";
    {
      Result<StateDb> db = StateDb::open(dir / "state");  // checkpoint through a clean open/close
    }
    testing::write_file(p, testing::read_file(path));
    sql(p, tamper);
    Result<StateDb> db = StateDb::open(copy.path());
    EXPECT_TRUE(db.is_ok());
    return *db->verify_audit();
  };
  AuditVerifyResult edited = verify_after("UPDATE audit SET completion_tokens = 500 WHERE seq = 4");
  EXPECT_FALSE(edited.ok);
  EXPECT_EQ(edited.first_bad_row, 4);
  AuditVerifyResult middle = verify_after("DELETE FROM audit WHERE seq = 6");
  EXPECT_FALSE(middle.ok);
  EXPECT_EQ(middle.first_bad_row, 6);
  AuditVerifyResult last = verify_after("DELETE FROM audit WHERE seq = 11");
  EXPECT_FALSE(last.ok);
  EXPECT_NE(last.why.find("newest rows were removed"), std::string::npos) << last.why;
  AuditVerifyResult swapped = verify_after(
      "UPDATE audit SET seq = -1 WHERE seq = 2; UPDATE audit SET seq = 2 WHERE seq = 3; UPDATE audit SET seq = 3 WHERE seq = -1");
  EXPECT_FALSE(swapped.ok);
  EXPECT_EQ(swapped.first_bad_row, 2);
  AuditVerifyResult text = verify_after("UPDATE audit SET prompt_text = NULL WHERE seq = 8");
  EXPECT_FALSE(text.ok);
  EXPECT_EQ(text.first_bad_row, 8);
}

// A value stored with another type than it was written with (SQLite keeps
// what an UPDATE stores) is an edit, though the column readers would see
// only its leading number.
TEST(StateDbTest, AuditChainDetectsValuesOfTheWrongType) {
  TempDir dir;
  write_audit_rows(dir / "state", 10);
  for (const char* edit : {"UPDATE audit SET prompt_tokens = '19 (really 9000)' WHERE seq = 10",
                           "UPDATE audit SET status = '200abc' WHERE seq = 10",
                           "UPDATE audit SET latency_s = '2.25s' WHERE seq = 10",
                           "UPDATE audit SET key_name = CAST('app0' AS BLOB) WHERE seq = 10"}) {
    AuditVerifyResult v = verify_tampered_copy(dir / "state/airlock-state.db", edit);
    EXPECT_FALSE(v.ok) << edit;
    EXPECT_EQ(v.first_bad_row, 10) << edit << ": " << v.why;
  }
}

// Cutting the log back and rewriting the head to match, or wiping it, is
// only visible against a hash kept elsewhere: verify --expect-hash.
TEST(StateDbTest, AuditVerifyAgainstAHashRecordedEarlier) {
  TempDir dir;
  {
    Result<StateDb> db = StateDb::open(dir / "state");
    ASSERT_TRUE(db.is_ok());
    Result<AuditVerifyResult> empty = db->verify_audit(std::string(64, '0'));
    ASSERT_TRUE(empty.is_ok());
    EXPECT_TRUE(empty->ok) << empty->why;  // the empty log's head
  }
  write_audit_rows(dir / "state", 10);
  Result<StateDb> db = StateDb::open(dir / "state");
  ASSERT_TRUE(db.is_ok());
  Result<std::vector<AuditRow>> rows = db->tail_audit(10);
  ASSERT_TRUE(rows.is_ok());
  const std::string row5 = (*rows)[4].row_hash_hex;
  Result<AuditVerifyResult> v = db->verify_audit(row5);
  ASSERT_TRUE(v.is_ok());
  EXPECT_TRUE(v->ok) << v->why;  // the log has grown past the recorded row: fine
  EXPECT_EQ(v->head_hex, rows->back().row_hash_hex);
  Result<std::pair<std::int64_t, std::string>> h = db->audit_head();
  ASSERT_TRUE(h.is_ok());
  EXPECT_EQ(h->first, 10);
  EXPECT_EQ(h->second, v->head_hex);
  std::string upper = row5;
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  EXPECT_TRUE(db->verify_audit(upper)->ok);
  for (const char* tamper : {"DELETE FROM audit WHERE seq > 4; UPDATE audit_head SET rows = 4,"
                             " head = (SELECT row_hash FROM audit WHERE seq = 4)",
                             "DELETE FROM audit; DELETE FROM audit_head", "DROP TABLE audit; DROP TABLE audit_head"}) {
    EXPECT_TRUE(verify_tampered_copy(dir / "state/airlock-state.db", tamper).ok)
        << tamper << ": consistent in itself, as documented";
    AuditVerifyResult anchored = verify_tampered_copy(dir / "state/airlock-state.db", tamper, row5);
    EXPECT_FALSE(anchored.ok) << tamper;
    EXPECT_NE(anchored.why.find("recorded earlier"), std::string::npos) << anchored.why;
  }
}

// Rows and head are read from one snapshot: a log airlockd is writing
// verifies (read separately, the newer head made it look truncated).
TEST(StateDbTest, AuditVerifyWhileTheDaemonWrites) {
  TempDir dir;
  Result<StateDb> writer_db = StateDb::open(dir / "state");
  ASSERT_TRUE(writer_db.is_ok());
  Result<StateDb> reader_db = StateDb::open(dir / "state", StateDb::Open::kExisting);
  ASSERT_TRUE(reader_db.is_ok());
  std::atomic<bool> stop{false};
  std::atomic<int> written{0};
  std::atomic<bool> write_failed{false};
  std::thread writer([&] {
    for (int i = 0; !stop.load(); ++i) {
      if (!writer_db->append_audit({rec(i)}).is_ok()) {
        write_failed = true;
        return;
      }
      ++written;
    }
  });
  int failed = 0, checked = 0;
  for (; (checked < 30 || written.load() < 500) && !write_failed.load(); ++checked) {
    Result<AuditVerifyResult> v = reader_db->verify_audit();
    ASSERT_TRUE(v.is_ok()) << v.status().to_string();
    if (!v->ok && failed++ == 0) ADD_FAILURE() << "verify " << checked << ": " << v->why;
  }
  stop = true;
  writer.join();
  ASSERT_FALSE(write_failed.load());
  EXPECT_EQ(failed, 0) << "of " << checked;
  Result<AuditVerifyResult> v = reader_db->verify_audit();
  ASSERT_TRUE(v.is_ok());
  EXPECT_TRUE(v->ok) << v->why;
  EXPECT_GE(v->rows, 500);
}

std::vector<AuditRow> all_rows(const StateDb& db) {
  Result<std::vector<AuditRow>> rows = db.tail_audit(100000);
  EXPECT_TRUE(rows.is_ok());
  return rows.is_ok() ? *rows : std::vector<AuditRow>{};
}

// A flood of requests without a key (anyone who can connect can send them)
// is written as a few rows one by one and summary rows per batch with the
// rest's count, 401s and other statuses apart; nothing is lost from the
// count, and flush() waits for the counts too.
TEST(StateDbTest, AuditWriterCountsRefusedRequestsBeyondItsRate) {
  TempDir dir;
  Result<StateDb> db = StateDb::open(dir / "state");
  ASSERT_TRUE(db.is_ok());
  AuditWriter w(*db, 65536, nullptr, std::chrono::seconds(1), /*anonymous_per_second=*/2);
  for (int i = 0; i < 5000; ++i) {
    AuditRecord r = rec(i);
    r.key_name.clear();
    r.status = i < 4900 ? 401 : 400;  // the last 100: malformed requests, refused before their key was read
    ASSERT_TRUE(w.record(std::move(r)));
  }
  ASSERT_TRUE(w.record(rec(7)));  // a key's request is written as always
  ASSERT_TRUE(w.flush());         // the counts are written too, not left for the writer's end
  std::int64_t one_by_one = 0, refused = 0, other = 0, with_key = 0;
  for (const AuditRow& row : all_rows(*db)) {
    if (row.record.route == "(refused requests)") {
      EXPECT_EQ(row.record.status, 401);
      refused += std::atoll(row.record.request_id.c_str());
      EXPECT_NE(row.record.request_id.find("more requests without a valid key"), std::string::npos);
    } else if (row.record.route == "(requests without a key)") {
      EXPECT_EQ(row.record.status, 0);
      other += std::atoll(row.record.request_id.c_str());
    } else if (row.record.key_name.empty()) {
      ++one_by_one;
      EXPECT_EQ(row.record.status, 401);
    } else {
      ++with_key;
    }
  }
  EXPECT_EQ(with_key, 1);
  EXPECT_GE(one_by_one, 20);  // the burst
  EXPECT_LE(one_by_one, 40);
  EXPECT_EQ(one_by_one + refused, 4900);
  EXPECT_EQ(other, 100);
  EXPECT_TRUE(db->verify_audit()->ok);
}

// While the database is slow, requests without a key fill at most half the
// queue (the rest are counted): requests with a key still have room.
// Records with a key refused for a full queue leave an "(audit gap)" row
// with their count.
TEST(StateDbTest, AuditWriterKeepsRoomForKeysAndRecordsGaps) {
  TempDir dir;
  Result<StateDb> db = StateDb::open(dir / "state");
  ASSERT_TRUE(db.is_ok());
  sqlite3* blocker = nullptr;
  ASSERT_EQ(sqlite3_open((dir / "state" + "/airlock-state.db").c_str(), &blocker), SQLITE_OK);
  int keyed_accepted = 0, refused = 0;
  {
    AuditWriter w(*db, 100, nullptr, std::chrono::milliseconds(50), 1000000);
    ASSERT_EQ(sqlite3_exec(blocker, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr), SQLITE_OK);
    ASSERT_TRUE(w.record(rec(0)));
    std::this_thread::sleep_for(std::chrono::milliseconds(400));  // taken as a batch; its write waits for the lock
    for (int i = 0; i < 100; ++i) {
      AuditRecord r = rec(1000 + i);
      r.key_name.clear();
      r.status = 401;
      EXPECT_TRUE(w.record(std::move(r)));  // queued, or counted
    }
    for (int i = 0; i < 100; ++i) (w.record(rec(2000 + i)) ? keyed_accepted : refused) += 1;
    ASSERT_EQ(sqlite3_exec(blocker, "COMMIT", nullptr, nullptr, nullptr), SQLITE_OK);
    EXPECT_TRUE(w.flush());
  }
  sqlite3_close(blocker);
  EXPECT_GE(keyed_accepted, 49);  // room kept for them although refused requests came first
  EXPECT_EQ(keyed_accepted + refused, 100);
  std::int64_t gap = 0, counted = 0, anonymous_rows = 0, keyed_rows = 0;
  for (const AuditRow& row : all_rows(*db)) {
    if (row.record.route == "(audit gap)") gap += std::atoll(row.record.request_id.c_str());
    else if (row.record.route == "(refused requests)") counted += std::atoll(row.record.request_id.c_str());
    else if (row.record.key_name.empty()) ++anonymous_rows;
    else ++keyed_rows;
  }
  EXPECT_GE(anonymous_rows, 49);
  EXPECT_LE(anonymous_rows, 50);
  EXPECT_EQ(anonymous_rows + counted, 100);
  EXPECT_EQ(keyed_rows, 1 + keyed_accepted);
  EXPECT_EQ(gap, refused);
  EXPECT_TRUE(db->verify_audit()->ok);
}

TEST(StateDbTest, AuditWriterBatchesFromManyThreads) {
  TempDir dir;
  Result<StateDb> db = StateDb::open(dir / "state");
  ASSERT_TRUE(db.is_ok());
  {
    AuditWriter w(*db);
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t)
      threads.emplace_back([&, t] {
        for (int i = 0; i < 1000; ++i) EXPECT_TRUE(w.record(rec(t * 1000 + i)));
      });
    for (auto& t : threads) t.join();
    EXPECT_TRUE(w.flush());
    EXPECT_EQ(w.failed_attempts(), 0u);
  }
  Result<AuditVerifyResult> v = db->verify_audit();
  ASSERT_TRUE(v.is_ok());
  EXPECT_TRUE(v->ok) << v->why;
  EXPECT_EQ(v->rows, 8000);
  AuditWriter small(*db, 2);
  int accepted = 0;
  for (int i = 0; i < 1000; ++i) accepted += small.record(rec(i)) ? 1 : 0;
  EXPECT_LT(accepted, 1000);  // a full queue refuses instead of blocking
}

// While the database refuses writes (here another connection holds the
// write lock past the 5 s busy timeout), failed batches stay queued and are
// retried: once it takes writes again every record is there, in order, and
// the chain verifies. Each failure is reported.
TEST(StateDbTest, AuditWriterRetriesFailedWritesInOrder) {
  TempDir dir;
  Result<StateDb> db = StateDb::open(dir / "state");
  ASSERT_TRUE(db.is_ok());
  sqlite3* blocker = nullptr;
  ASSERT_EQ(sqlite3_open((dir / "state" + "/airlock-state.db").c_str(), &blocker), SQLITE_OK);
  std::mutex mu;
  std::vector<std::pair<std::size_t, bool>> reported;
  {
    AuditWriter w(
        *db, 65536,
        [&](const Status& why, std::size_t records, bool dropped) {
          EXPECT_FALSE(why.is_ok());
          std::lock_guard<std::mutex> lock(mu);
          reported.emplace_back(records, dropped);
        },
        std::chrono::milliseconds(50));
    for (int i = 0; i < 10; ++i) ASSERT_TRUE(w.record(rec(i)));
    ASSERT_TRUE(w.flush());
    ASSERT_EQ(sqlite3_exec(blocker, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr), SQLITE_OK);
    for (int i = 10; i < 30; ++i) ASSERT_TRUE(w.record(rec(i)));
    EXPECT_FALSE(w.flush());  // the attempt fails after the busy timeout
    for (int i = 30; i < 40; ++i) ASSERT_TRUE(w.record(rec(i)));
    ASSERT_EQ(sqlite3_exec(blocker, "COMMIT", nullptr, nullptr, nullptr), SQLITE_OK);
    EXPECT_TRUE(w.flush());
    EXPECT_GE(w.failed_attempts(), 1u);
  }
  sqlite3_close(blocker);
  {
    std::lock_guard<std::mutex> lock(mu);
    ASSERT_FALSE(reported.empty());
    EXPECT_EQ(reported.front(), std::make_pair(std::size_t{20}, false));
    for (const auto& [records, dropped] : reported) EXPECT_FALSE(dropped);
  }
  Result<AuditVerifyResult> v = db->verify_audit();
  ASSERT_TRUE(v.is_ok());
  EXPECT_TRUE(v->ok) << v->why;
  EXPECT_EQ(v->rows, 40);
  Result<std::vector<AuditRow>> rows = db->tail_audit(40);
  ASSERT_TRUE(rows.is_ok());
  ASSERT_EQ(rows->size(), 40u);
  for (int i = 0; i < 40; ++i) EXPECT_EQ((*rows)[static_cast<std::size_t>(i)].record.request_id, rec(i).request_id);
}

// Stopping while the database refuses writes: one last attempt, then the
// records still queued are reported as dropped (never silently), and the
// writer does not hang.
TEST(StateDbTest, AuditWriterReportsWhatItCouldNotWriteAtStop) {
  TempDir dir;
  Result<StateDb> db = StateDb::open(dir / "state");
  ASSERT_TRUE(db.is_ok());
  sqlite3* blocker = nullptr;
  ASSERT_EQ(sqlite3_open((dir / "state" + "/airlock-state.db").c_str(), &blocker), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(blocker, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr), SQLITE_OK);
  std::vector<std::pair<std::size_t, bool>> reported;  // written by the writer's thread, read after it ends
  {
    AuditWriter w(
        *db, 65536, [&](const Status&, std::size_t records, bool dropped) { reported.emplace_back(records, dropped); },
        std::chrono::milliseconds(50));
    for (int i = 0; i < 5; ++i) ASSERT_TRUE(w.record(rec(i)));
    EXPECT_FALSE(w.flush());
  }
  ASSERT_GE(reported.size(), 2u);
  EXPECT_EQ(reported.front(), std::make_pair(std::size_t{5}, false));
  EXPECT_EQ(reported.back(), std::make_pair(std::size_t{5}, true));
  ASSERT_EQ(sqlite3_exec(blocker, "COMMIT", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(blocker);
  Result<AuditVerifyResult> v = db->verify_audit();
  ASSERT_TRUE(v.is_ok());
  EXPECT_EQ(v->rows, 0);
}

TEST(StateDbTest, HostileStateDirectories) {
  TempDir dir;
  ASSERT_EQ(::mkdir((dir / "real").c_str(), 0750), 0);
  ASSERT_EQ(::symlink((dir / "real").c_str(), (dir / "link").c_str()), 0);
  EXPECT_FALSE(StateDb::open(dir / "link").is_ok());
  ASSERT_EQ(::mkdir((dir / "garbage").c_str(), 0750), 0);
  testing::write_file(dir / "garbage/airlock-state.db", std::string(4096, 'x'));
  Result<StateDb> g = StateDb::open(dir / "garbage");
  ASSERT_FALSE(g.is_ok());
  EXPECT_EQ(g.status().code(), StatusCode::kIoError);
  testing::write_file(dir / "file", "x");
  EXPECT_FALSE(StateDb::open(dir / "file").is_ok());
  // A hard link to a file elsewhere (root running `keys create` would
  // tighten it and hand it to the directory's owner): refused, untouched.
  ASSERT_EQ(::mkdir((dir / "linked").c_str(), 0750), 0);
  testing::write_file(dir / "victim", "root's file");
  ASSERT_EQ(::chmod((dir / "victim").c_str(), 0644), 0);
  ASSERT_EQ(::link((dir / "victim").c_str(), (dir / "linked/airlock-state.db").c_str()), 0);
  Result<StateDb> l = StateDb::open(dir / "linked");
  ASSERT_FALSE(l.is_ok());
  EXPECT_NE(l.status().message().find("not a plain file with one name"), std::string::npos) << l.status().to_string();
  struct stat st {};
  ASSERT_EQ(::stat((dir / "victim").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0644u);
  EXPECT_EQ(testing::read_file(dir / "victim"), "root's file");
}

}  // namespace
}  // namespace airlock::state
