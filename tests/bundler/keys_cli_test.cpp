// End-to-end tests of `airlock keys ...` and `airlock audit ...` through the
// real binary: what goes to stdout (the key alone), exit codes (0 ok, 1 a
// broken audit chain, 2 usage or I/O), and hostile state directories.
// Audit rows are written with the library (the daemon is not needed) and
// tampered with through SQLite directly.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <spawn.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <string>
#include <vector>

#include "airlock/common/json.h"

#include "airlock/statedb/state_db.h"
#include "test_bundles.h"

extern char** environ;

namespace airlock {
namespace {

using testing::TempDir;

struct RunResult {
  int exit_code = -1;  // -1 when killed by a signal
  int signal = 0;
  std::string out;
  std::string err;
};

RunResult airlock(std::vector<std::string> args) {
  args.insert(args.begin(), AIRLOCK_CLI_PATH);
  TempDir io;
  const std::string out_path = io / "out", err_path = io / "err";
  std::vector<char*> cargv;
  for (std::string& a : args) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  RunResult r;
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, cargv[0], &fa, nullptr, cargv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) {
    r.err = "spawn failed";
    return r;
  }
  int status = 0;
  waitpid(pid, &status, 0);
  if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) r.signal = WTERMSIG(status);
  r.out = testing::read_file(out_path);
  r.err = testing::read_file(err_path);
  return r;
}

state::AuditRecord rec(int i) {
  state::AuditRecord r;
  r.time_ms = 1790000000000 + 1000 * i;
  r.key_name = i % 2 ? "app-a" : "app-b";
  r.route = "/v1/chat/completions";
  r.model = "llama";
  r.request_id = "chatcmpl-" + std::to_string(i);
  r.status = 200;
  r.prompt_tokens = 10 + i;
  r.completion_tokens = 5;
  r.latency_s = 0.5;
  return r;
}

// "ak_<16 lower-case hex>_<43 base64url>\n" and nothing else. (Not
// std::regex: GCC 12 warns inside it under -O2 with ASan.)
bool is_key_line(const std::string& s) {
  if (s.size() != 64 || s.rfind("ak_", 0) != 0 || s[19] != '_' || s[63] != '\n') return false;
  for (std::size_t i = 3; i < 19; ++i)
    if (!std::isdigit(static_cast<unsigned char>(s[i])) && (s[i] < 'a' || s[i] > 'f')) return false;
  for (std::size_t i = 20; i < 63; ++i)
    if (!std::isalnum(static_cast<unsigned char>(s[i])) && s[i] != '-' && s[i] != '_') return false;
  return true;
}

void sql(const std::string& db_path, const std::string& statement) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(db_path.c_str(), &db), SQLITE_OK);
  char* err = nullptr;
  EXPECT_EQ(sqlite3_exec(db, statement.c_str(), nullptr, nullptr, &err), SQLITE_OK) << (err ? err : "");
  sqlite3_free(err);
  sqlite3_close(db);
}

class KeysCliTest : public ::testing::Test {
 protected:
  std::string state() const { return dir / "state"; }
  std::string db_path() const { return dir / "state/airlock-state.db"; }

  // `n` audit rows written through the library, as the daemon writes them.
  void append_rows(int n) {
    Result<state::StateDb> db = state::StateDb::open(state());
    ASSERT_TRUE(db.is_ok()) << db.status().to_string();
    std::vector<state::AuditRecord> batch;
    for (int i = 1; i <= n; ++i) batch.push_back(rec(i));
    ASSERT_TRUE(db->append_audit(batch).is_ok());
  }

  TempDir dir;
};

TEST_F(KeysCliTest, CreatePrintsOnlyTheKeyAndStoresItsHash) {
  RunResult r = airlock({"keys", "create", "--name", "app-a", "--state", state()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(is_key_line(r.out)) << r.out;
  EXPECT_EQ(r.err.find(r.out.substr(0, 63)), std::string::npos);  // never repeated on stderr
  struct stat st {};
  ASSERT_EQ(::stat(db_path().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(::stat(state().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0750u);
  // The secret part is nowhere in the database files.
  std::string files = testing::read_file(db_path());
  if (testing::exists(db_path() + "-wal")) files += testing::read_file(db_path() + "-wal");
  EXPECT_EQ(files.find(r.out.substr(20, 43)), std::string::npos);
  // The printed key is the one the daemon would accept.
  Result<state::StateDb> db = state::StateDb::open(state());
  ASSERT_TRUE(db.is_ok());
  state::KeyVerifier v(*db->load_active_keys());
  EXPECT_EQ(v.authenticate(r.out.substr(0, 63)), "app-a");
}

TEST_F(KeysCliTest, CreateRefusesDuplicatesAndBadNames) {
  ASSERT_EQ(airlock({"keys", "create", "--name", "app-a", "--state", state()}).exit_code, 0);
  RunResult dup = airlock({"keys", "create", "--name", "app-a", "--state", state()});
  EXPECT_EQ(dup.exit_code, 2);
  EXPECT_EQ(dup.out, "");
  EXPECT_NE(dup.err.find("already_exists"), std::string::npos) << dup.err;
  for (const std::string& name : std::vector<std::string>{"", "has space", "semi;colon", std::string(65, 'a'), "caf\xc3\xa9", "a/b"}) {
    RunResult bad = airlock({"keys", "create", "--name", name, "--state", state()});
    EXPECT_EQ(bad.exit_code, 2) << name;
    EXPECT_EQ(bad.out, "") << name;
  }
  EXPECT_EQ(airlock({"keys", "create", "--name", std::string(64, 'a'), "--state", state()}).exit_code, 0);
  EXPECT_EQ(airlock({"keys", "create", "--name", "ops.bot_1@site-2", "--state", state()}).exit_code, 0);
  RunResult missing = airlock({"keys", "create", "--state", state()});
  EXPECT_EQ(missing.exit_code, 2);
  EXPECT_EQ(missing.out, "");
}

TEST_F(KeysCliTest, ListShowsActiveAndRevokedKeysAsTextAndJson) {
  RunResult a = airlock({"keys", "create", "--name", "app-a", "--state", state()});
  RunResult b = airlock({"keys", "create", "--name", "app-b", "--state", state()});
  ASSERT_EQ(a.exit_code, 0);
  ASSERT_EQ(b.exit_code, 0);
  ASSERT_EQ(airlock({"keys", "revoke", "--name", "app-a", "--state", state()}).exit_code, 0);

  RunResult text = airlock({"keys", "list", "--state", state()});
  ASSERT_EQ(text.exit_code, 0) << text.err;
  EXPECT_NE(text.out.find("app-a"), std::string::npos);
  EXPECT_NE(text.out.find("app-b"), std::string::npos);
  EXPECT_NE(text.out.find("revoked"), std::string::npos);
  EXPECT_NE(text.out.find("active"), std::string::npos);
  EXPECT_NE(text.out.find(a.out.substr(3, 16)), std::string::npos);  // the id, not secret
  EXPECT_EQ(text.out.find(a.out.substr(20, 43)), std::string::npos);  // never the secret
  EXPECT_EQ(text.out.find(b.out.substr(20, 43)), std::string::npos);

  RunResult js = airlock({"keys", "list", "--json", "--state", state()});
  ASSERT_EQ(js.exit_code, 0) << js.err;
  nlohmann::json j = nlohmann::json::parse(js.out);
  ASSERT_TRUE(j.is_array());
  ASSERT_EQ(j.size(), 2u);
  for (const auto& k : j) {
    const bool is_a = k.at("name") == "app-a";
    EXPECT_EQ(k.at("id"), (is_a ? a : b).out.substr(3, 16));
    EXPECT_TRUE(k.at("created_at").is_number_integer());
    EXPECT_EQ(k.at("revoked_at").is_null(), !is_a);
  }
  // An empty store lists nothing, successfully.
  ASSERT_TRUE(state::StateDb::open(dir / "other").is_ok());
  RunResult empty = airlock({"keys", "list", "--json", "--state", dir / "other"});
  ASSERT_EQ(empty.exit_code, 0) << empty.err;
  EXPECT_EQ(nlohmann::json::parse(empty.out), nlohmann::json::array());
}

TEST_F(KeysCliTest, OnlyCreateMakesAStateDirectory) {
  // A mistyped --state is an error, never an empty store that looks fine.
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"keys", "list", "--state", dir / "typo"},
           {"keys", "revoke", "--name", "app-a", "--state", dir / "typo"},
           {"audit", "verify", "--state", dir / "typo"},
           {"audit", "tail", "--state", dir / "typo"},
       }) {
    RunResult r = airlock(args);
    EXPECT_EQ(r.exit_code, 2) << args[1] << r.err;
    EXPECT_EQ(r.out, "") << args[1];
    EXPECT_NE(r.err.find("no state directory"), std::string::npos) << r.err;
    EXPECT_FALSE(testing::exists(dir / "typo")) << args[1];
  }
  // A directory without a database: the same.
  ASSERT_EQ(::mkdir((dir / "empty").c_str(), 0750), 0);
  RunResult r = airlock({"audit", "verify", "--state", dir / "empty"});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("no state database"), std::string::npos) << r.err;
  EXPECT_FALSE(testing::exists(dir / "empty/airlock-state.db"));
}

TEST_F(KeysCliTest, RootCreatingKeysLeavesTheDatabaseToTheDirectoryOwner) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (chown)";
  // The daemon's state directory belongs to its user; an operator runs
  // `sudo airlock keys create`: the daemon must still own its database.
  ASSERT_EQ(::mkdir(state().c_str(), 0750), 0);
  ASSERT_EQ(::chown(state().c_str(), 4242, 4343), 0);
  ASSERT_EQ(airlock({"keys", "create", "--name", "app-a", "--state", state()}).exit_code, 0);
  for (const std::string& f : {db_path(), db_path() + "-wal", db_path() + "-shm"}) {
    struct stat st {};
    if (::stat(f.c_str(), &st) != 0) continue;  // SQLite removes -wal/-shm on the last close
    EXPECT_EQ(st.st_uid, 4242u) << f;
    EXPECT_EQ(st.st_gid, 4343u) << f;
  }
  struct stat st {};
  ASSERT_EQ(::stat(db_path().c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 4242u);
}

TEST_F(KeysCliTest, AnExistingDatabaseIsTightenedTo0600) {
  ASSERT_EQ(airlock({"keys", "create", "--name", "app-a", "--state", state()}).exit_code, 0);
  ASSERT_EQ(::chmod(db_path().c_str(), 0644), 0);
  ASSERT_EQ(airlock({"keys", "list", "--state", state()}).exit_code, 0);
  struct stat st {};
  ASSERT_EQ(::stat(db_path().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST_F(KeysCliTest, RevokeStopsTheKeyAndFreesTheName) {
  RunResult a = airlock({"keys", "create", "--name", "app-a", "--state", state()});
  ASSERT_EQ(a.exit_code, 0);
  RunResult rv = airlock({"keys", "revoke", "--name", "app-a", "--state", state()});
  EXPECT_EQ(rv.exit_code, 0) << rv.err;
  EXPECT_EQ(rv.out, "");
  {
    Result<state::StateDb> db = state::StateDb::open(state());
    ASSERT_TRUE(db.is_ok());
    state::KeyVerifier v(*db->load_active_keys());
    EXPECT_FALSE(v.authenticate(a.out.substr(0, 63)));
  }
  RunResult again = airlock({"keys", "revoke", "--name", "app-a", "--state", state()});
  EXPECT_EQ(again.exit_code, 2);
  EXPECT_NE(again.err.find("not_found"), std::string::npos) << again.err;
  EXPECT_EQ(airlock({"keys", "revoke", "--name", "nobody", "--state", state()}).exit_code, 2);
  EXPECT_EQ(airlock({"keys", "revoke", "--state", state()}).exit_code, 2);
  RunResult fresh = airlock({"keys", "create", "--name", "app-a", "--state", state()});
  ASSERT_EQ(fresh.exit_code, 0);
  EXPECT_NE(fresh.out, a.out);
}

TEST_F(KeysCliTest, UsageErrorsExitTwo) {
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"keys"},
           {"keys", "frob", "--state", state()},
           {"keys", "list", "--bogus", "--state", state()},
           {"keys", "list", "extra", "--state", state()},
           {"keys", "create", "--name"},
           {"audit"},
           {"audit", "frob", "--state", state()},
           {"audit", "tail", "--last", "0", "--state", state()},
           {"audit", "tail", "--last", "-5", "--state", state()},
           {"audit", "tail", "--last", "many", "--state", state()},
           {"audit", "tail", "--last", "100001", "--state", state()},
           {"audit", "tail", "--last", "5abc", "--state", state()},
           {"audit", "tail", "--last", "5 ", "--state", state()},
           {"audit", "tail", "--last", "", "--state", state()},
           {"audit", "verify", "--json=1", "--state", state()},
       }) {
    RunResult r = airlock(args);
    std::string joined;
    for (const std::string& a : args) joined += a + " ";
    EXPECT_EQ(r.exit_code, 2) << joined << r.err;
    EXPECT_EQ(r.out, "") << joined;
  }
}

TEST_F(KeysCliTest, AuditVerifyAndTail) {
  ASSERT_TRUE(state::StateDb::open(state()).is_ok());  // what airlockd's first start leaves
  RunResult empty = airlock({"audit", "verify", "--state", state()});
  ASSERT_EQ(empty.exit_code, 0) << empty.err;
  EXPECT_EQ(empty.out.rfind("OK 0 rows", 0), 0u) << empty.out;

  append_rows(12);
  RunResult ok = airlock({"audit", "verify", "--state", state()});
  ASSERT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_EQ(ok.out.rfind("OK 12 rows", 0), 0u) << ok.out;

  RunResult js = airlock({"audit", "tail", "--last", "3", "--json", "--state", state()});
  ASSERT_EQ(js.exit_code, 0) << js.err;
  nlohmann::json j = nlohmann::json::parse(js.out);
  ASSERT_EQ(j.size(), 3u);
  EXPECT_EQ(j[0].at("seq"), 10);
  EXPECT_EQ(j[2].at("seq"), 12);
  EXPECT_EQ(j[2].at("request_id"), "chatcmpl-12");
  EXPECT_EQ(j[2].at("key"), "app-b");
  EXPECT_EQ(j[2].at("status"), 200);
  EXPECT_EQ(j[2].at("prompt_tokens"), 22);
  EXPECT_EQ(j[2].at("row_hash").get<std::string>().size(), 64u);

  RunResult text = airlock({"audit", "tail", "--state", state()});  // default: the newest 20
  ASSERT_EQ(text.exit_code, 0) << text.err;
  EXPECT_EQ(std::count(text.out.begin(), text.out.end(), '\n'), 13);  // 12 rows and the head hash
  EXPECT_NE(text.out.find("/v1/chat/completions"), std::string::npos);
  const std::string head = j[2].at("row_hash").get<std::string>();
  EXPECT_NE(text.out.find("\nhead " + head + "\n"), std::string::npos) << text.out;
  EXPECT_NE(ok.out.find("\nhead " + head + "\n"), std::string::npos) << ok.out;

  // Anchored to a hash kept elsewhere: row 10's is still in the log.
  const std::string row10 = j[0].at("row_hash").get<std::string>();
  RunResult anchored = airlock({"audit", "verify", "--expect-hash", row10, "--state", state()});
  EXPECT_EQ(anchored.exit_code, 0) << anchored.err;
  EXPECT_NE(anchored.out.find("holds the expected row"), std::string::npos) << anchored.out;
  RunResult unknown = airlock({"audit", "verify", "--expect-hash", std::string(64, 'a'), "--state", state()});
  EXPECT_EQ(unknown.exit_code, 1) << unknown.out;
  EXPECT_NE(unknown.err.find("recorded earlier"), std::string::npos) << unknown.err;
  for (const std::vector<std::string>& bad :
       {std::vector<std::string>{"audit", "verify", "--expect-hash", "abc", "--state", state()},
        std::vector<std::string>{"audit", "verify", "--expect-hash", std::string(64, 'g'), "--state", state()},
        std::vector<std::string>{"audit", "tail", "--expect-hash", row10, "--state", state()}}) {
    RunResult r = airlock(bad);
    EXPECT_EQ(r.exit_code, 2) << r.err;
  }
}

TEST_F(KeysCliTest, AuditTailNeutralisesTerminalControlCharacters) {
  {
    Result<state::StateDb> db = state::StateDb::open(state());
    ASSERT_TRUE(db.is_ok());
    state::AuditRecord r = rec(1);
    r.model = "evil\x1b]0;owned\x07\x1b[2J\r\nforged row";
    r.key_name = "";  // a refused request has no key name
    state::AuditRecord c1 = rec(2);
    // C1 CSI as UTF-8 and as a lone byte, a right-to-left override.
    c1.route = "/v1/\xc2\x9b" "2J/\x9b" "2J/\xe2\x80\xae" "txt.exe/caf\xc3\xa9";
    ASSERT_TRUE(db->append_audit({r, c1}).is_ok());
  }
  RunResult text = airlock({"audit", "tail", "--state", state()});
  ASSERT_EQ(text.exit_code, 0) << text.err;
  EXPECT_EQ(text.out.find('\x1b'), std::string::npos);
  EXPECT_EQ(text.out.find('\r'), std::string::npos);
  EXPECT_EQ(std::count(text.out.begin(), text.out.end(), '\n'), 3);  // 2 rows and the head hash
  EXPECT_EQ(text.out.find("\xc2\x9b"), std::string::npos);
  EXPECT_EQ(text.out.find('\x9b'), std::string::npos);
  EXPECT_EQ(text.out.find("\xe2\x80\xae"), std::string::npos);
  EXPECT_NE(text.out.find("/v1/?2J/?2J/?txt.exe/caf\xc3\xa9"), std::string::npos) << text.out;  // letters stay
  RunResult js = airlock({"audit", "tail", "--json", "--state", state()});
  ASSERT_EQ(js.exit_code, 0) << js.err;
  EXPECT_EQ(js.out.find('\x1b'), std::string::npos);  // JSON escapes it
  EXPECT_EQ(nlohmann::json::parse(js.out)[0].at("model"), "evil\x1b]0;owned\x07\x1b[2J\r\nforged row");
}

TEST_F(KeysCliTest, AuditVerifyNamesTheFirstBadRow) {
  append_rows(10);
  {
    Result<state::StateDb> db = state::StateDb::open(state());  // a clean close checkpoints the WAL
  }
  const std::string pristine = testing::read_file(db_path());
  struct Case {
    std::string sql;
    std::string row;  // what stderr must name
  };
  for (const Case& c : std::vector<Case>{
           {"UPDATE audit SET status = 500 WHERE seq = 4", "row 4"},
           {"DELETE FROM audit WHERE seq = 6", "row 6"},
           {"DELETE FROM audit WHERE seq = 10", "row 10"},  // the head still counts 10 rows
           {"UPDATE audit SET seq = -1 WHERE seq = 2; UPDATE audit SET seq = 2 WHERE seq = 3;"
            " UPDATE audit SET seq = 3 WHERE seq = -1", "row 2"},
           {"UPDATE audit SET key_name = 'app-c' WHERE seq = 9", "row 9"},
           {"UPDATE audit_head SET rows = 9", "row 11"},
       }) {
    TempDir copy;
    testing::write_file(copy / "airlock-state.db", pristine);
    sql(copy / "airlock-state.db", c.sql);
    RunResult r = airlock({"audit", "verify", "--state", copy.path()});
    EXPECT_EQ(r.exit_code, 1) << c.sql << "\n" << r.err;
    EXPECT_EQ(r.out, "") << c.sql;
    EXPECT_NE(r.err.find("FAILED at " + c.row), std::string::npos) << c.sql << "\n" << r.err;
  }
  // The untouched copy still verifies.
  TempDir copy;
  testing::write_file(copy / "airlock-state.db", pristine);
  RunResult r = airlock({"audit", "verify", "--state", copy.path()});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("OK 10 rows", 0), 0u) << r.out;
}

TEST_F(KeysCliTest, HostileStateDirectoriesFailCleanly) {
  ASSERT_EQ(::mkdir((dir / "real").c_str(), 0750), 0);
  ASSERT_EQ(::symlink((dir / "real").c_str(), (dir / "link").c_str()), 0);
  ASSERT_EQ(::mkdir((dir / "garbage").c_str(), 0750), 0);
  testing::write_file(dir / "garbage/airlock-state.db", testing::random_bytes(8192, 7));
  ASSERT_EQ(::mkdir((dir / "dblink").c_str(), 0750), 0);
  ASSERT_EQ(::symlink((dir / "garbage/airlock-state.db").c_str(), (dir / "dblink/airlock-state.db").c_str()), 0);
  testing::write_file(dir / "file", "x");
  for (const std::string& bad : {dir / "link", dir / "garbage", dir / "dblink", dir / "file"}) {
    for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
             {"keys", "create", "--name", "x", "--state", bad},
             {"keys", "list", "--state", bad},
             {"audit", "verify", "--state", bad},
             {"audit", "tail", "--json", "--state", bad},
         }) {
      RunResult r = airlock(args);
      EXPECT_EQ(r.exit_code, 2) << args[0] << " " << args[1] << " " << bad << "\n" << r.err;
      EXPECT_EQ(r.signal, 0);
      EXPECT_EQ(r.out, "") << bad;
      EXPECT_NE(r.err.find("airlock: "), std::string::npos) << r.err;
    }
  }
  EXPECT_FALSE(testing::exists(dir / "real/airlock-state.db"));  // nothing written through the link
}

}  // namespace
}  // namespace airlock
