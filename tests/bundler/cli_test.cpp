// End-to-end tests of the real `airlock` binary: exit codes, files on disk,
// minisign interoperability, and an import killed mid-extraction.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <fstream>
#include <string>
#include <vector>

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

// `during`, if given, runs with the child's pid while it runs.
RunResult run(const std::vector<std::string>& argv, const std::vector<std::string>& extra_env = {},
              const std::string& work_dir = "/tmp", const std::function<void(pid_t)>& during = nullptr) {
  TempDir io;
  std::string out_path = io / "out", err_path = io / "err";
  std::vector<std::string> env_store;
  for (char** e = environ; *e; ++e) env_store.emplace_back(*e);
  for (const std::string& e : extra_env) env_store.push_back(e);
  std::vector<char*> env;
  for (std::string& e : env_store) env.push_back(e.data());
  env.push_back(nullptr);
  std::vector<std::string> args = argv;
  std::vector<char*> cargv;
  for (std::string& a : args) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addchdir_np(&fa, work_dir.c_str());
  pid_t pid = 0;
  RunResult r;
  if (posix_spawnp(&pid, cargv[0], &fa, nullptr, cargv.data(), env.data()) != 0) {
    r.err = "spawn failed";
    return r;
  }
  posix_spawn_file_actions_destroy(&fa);
  if (during) during(pid);
  int status = 0;
  waitpid(pid, &status, 0);
  if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) r.signal = WTERMSIG(status);
  r.out = testing::read_file(out_path);
  r.err = testing::read_file(err_path);
  return r;
}

RunResult airlock(std::vector<std::string> args, const std::vector<std::string>& env = {},
                  const std::string& work_dir = "/tmp") {
  args.insert(args.begin(), AIRLOCK_CLI_PATH);
  return run(args, env, work_dir);
}

bool have_minisign() { return run({"sh", "-c", "command -v minisign"}).exit_code == 0; }

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    RunResult k = airlock({"bundle", "keygen", "--out", dir / "signer", "--unencrypted"});
    ASSERT_EQ(k.exit_code, 0) << k.err;
    testing::write_file(dir / "weights.bin", testing::random_bytes(5 * 1024 * 1024 + 3, 11));
    testing::write_file(dir / "LICENSE", "MIT licence text\n");
    ::mkdir((dir / "trusted").c_str(), 0755);
    testing::write_file(dir / "trusted/signer.pub", testing::read_file(dir / "signer.pub"));
  }

  RunResult create(const std::string& version, const std::string& out, std::vector<std::string> extra = {}) {
    std::vector<std::string> a = {"bundle", "create", "--key", dir / "signer.key", "--name", "demo",
                                  "--version", version, "--file", "other=" + dir / "weights.bin",
                                  "--file", "license=" + dir / "LICENSE", "--chunk-size", "1048576",
                                  "--out", out, "--quiet"};
    a.insert(a.end(), extra.begin(), extra.end());
    return airlock(a);
  }

  std::vector<std::string> store_entries() { return testing::list_tree(dir / "store"); }

  TempDir dir;
};

TEST_F(CliTest, KeygenWritesMinisignKeysWithSafeModes) {
  struct stat st {};
  ASSERT_EQ(::stat((dir / "signer.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  std::string pub = testing::read_file(dir / "signer.pub");
  EXPECT_EQ(pub.rfind("untrusted comment: minisign public key ", 0), 0u);
  RunResult again = airlock({"bundle", "keygen", "--out", dir / "signer", "--unencrypted"});
  EXPECT_EQ(again.exit_code, 2) << "must refuse to overwrite a key";
  EXPECT_EQ(testing::read_file(dir / "signer.pub"), pub);
  // A stray public key also blocks keygen, so no orphan secret key is left.
  testing::write_file(dir / "lonely.pub", pub);
  EXPECT_EQ(airlock({"bundle", "keygen", "--out", dir / "lonely", "--unencrypted"}).exit_code, 2);
  EXPECT_FALSE(testing::exists(dir / "lonely.key"));
}

TEST_F(CliTest, EncryptedKeyNeedsItsPassphrase) {
  testing::write_file(dir / "pass", "s3cret passphrase\n");
  RunResult k = airlock({"bundle", "keygen", "--out", dir / "enc", "--passphrase-file", dir / "pass"});
  ASSERT_EQ(k.exit_code, 0) << k.err;
  EXPECT_NE(k.out.find("encrypted"), std::string::npos);
  std::vector<std::string> base = {"bundle", "create", "--key", dir / "enc.key", "--name", "x", "--version", "1",
                                   "--file", "license=" + dir / "LICENSE", "--quiet"};
  testing::write_file(dir / "wrong", "not it\n");
  std::vector<std::string> wrong = base;
  wrong.insert(wrong.end(), {"--passphrase-file", dir / "wrong", "--out", dir / "w.airlock"});
  RunResult w = airlock(wrong);
  EXPECT_EQ(w.exit_code, 2);
  EXPECT_NE(w.err.find("wrong passphrase"), std::string::npos) << w.err;
  EXPECT_FALSE(testing::exists(dir / "w.airlock"));
  std::vector<std::string> right = base;
  right.insert(right.end(), {"--passphrase-file", dir / "pass", "--out", dir / "r.airlock"});
  RunResult r = airlock(right);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  std::vector<std::string> no_tty = base;
  no_tty.insert(no_tty.end(), {"--out", dir / "n.airlock"});
  EXPECT_EQ(airlock(no_tty).exit_code, 2);
}

TEST_F(CliTest, CreateVerifyInspectImportList) {
  RunResult c = create("1", dir / "demo-1.airlock");
  ASSERT_EQ(c.exit_code, 0) << c.err;
  RunResult v = airlock({"bundle", "verify", dir / "demo-1.airlock", "--trusted", dir / "trusted"});
  EXPECT_EQ(v.exit_code, 0) << v.err;
  EXPECT_NE(v.out.find("OK"), std::string::npos);
  RunResult vf = airlock({"bundle", "verify", dir / "demo-1.airlock", "--trusted", dir / "signer.pub", "--quiet"});
  EXPECT_EQ(vf.exit_code, 0) << vf.err;
  EXPECT_TRUE(vf.out.empty());

  RunResult i = airlock({"bundle", "inspect", dir / "demo-1.airlock"});
  EXPECT_EQ(i.exit_code, 0) << i.err;
  EXPECT_NE(i.out.find("UNVERIFIED"), std::string::npos);
  EXPECT_NE(i.out.find("weights.bin"), std::string::npos);
  RunResult ij = airlock({"bundle", "inspect", dir / "demo-1.airlock", "--json"});
  EXPECT_EQ(ij.exit_code, 0);
  EXPECT_NE(ij.out.find("\"verified\": false"), std::string::npos);
  EXPECT_NE(ij.out.find("\"chunks\": 6"), std::string::npos) << ij.out;

  RunResult im = airlock({"bundle", "import", dir / "demo-1.airlock", "--store", dir / "store", "--trusted",
                          dir / "trusted"});
  ASSERT_EQ(im.exit_code, 0) << im.err;
  EXPECT_EQ(testing::read_file(dir / "store/demo/1/weights.bin"), testing::read_file(dir / "weights.bin"));
  RunResult l = airlock({"bundle", "list", "--store", dir / "store"});
  EXPECT_EQ(l.exit_code, 0);
  EXPECT_NE(l.out.find("demo"), std::string::npos);
  // list reads: a mistyped store is an error, and nothing is created there.
  RunResult typo = airlock({"bundle", "list", "--store", dir / "stroe"});
  EXPECT_EQ(typo.exit_code, 2);
  EXPECT_FALSE(testing::exists(dir / "stroe"));

  // verify --store checks "not older" against the store's record.
  RunResult vs = airlock({"bundle", "verify", dir / "demo-1.airlock", "--trusted", dir / "trusted", "--store",
                          dir / "store"});
  EXPECT_EQ(vs.exit_code, 1);
  EXPECT_NE(vs.err.find("rollback"), std::string::npos) << vs.err;
  ASSERT_EQ(create("2", dir / "demo-2.airlock").exit_code, 0);
  EXPECT_EQ(airlock({"bundle", "verify", dir / "demo-2.airlock", "--trusted", dir / "trusted", "--store",
                     dir / "store", "--quiet"}).exit_code, 0);
  EXPECT_EQ(airlock({"bundle", "verify", dir / "demo-2.airlock", "--trusted", dir / "trusted", "--store",
                     dir / "no-such-store"}).exit_code, 2);
  EXPECT_FALSE(testing::exists(dir / "no-such-store"));

  // Rollback through the CLI: exit 1, and an explicit override works.
  RunResult again = airlock({"bundle", "import", dir / "demo-1.airlock", "--store", dir / "store", "--trusted",
                             dir / "trusted"});
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_NE(again.err.find("rollback"), std::string::npos) << again.err;
}

// verify --store and list on a store whose rollback record was lost
// (state.db emptied to 0 bytes, here by `: > state.db`): exit 1 like any
// other verification failure, saying what was lost, not exit 2 for an I/O
// error on the missing table.
TEST_F(CliTest, VerifyAgainstAStoreWithAnEmptiedRecordIsAVerificationFailure) {
  ASSERT_EQ(create("1", dir / "demo-1.airlock").exit_code, 0);
  ASSERT_EQ(create("2", dir / "demo-2.airlock").exit_code, 0);
  ASSERT_EQ(airlock({"bundle", "import", dir / "demo-1.airlock", "--store", dir / "store", "--trusted",
                     dir / "trusted", "--quiet"}).exit_code, 0);
  ASSERT_EQ(::truncate((dir / "store/state.db").c_str(), 0), 0);
  RunResult vs = airlock({"bundle", "verify", dir / "demo-2.airlock", "--trusted", dir / "trusted", "--store",
                          dir / "store"});
  EXPECT_EQ(vs.exit_code, 1) << vs.err;
  EXPECT_NE(vs.err.find("verification_failed"), std::string::npos) << vs.err;
  EXPECT_NE(vs.err.find("state.db without its imports table"), std::string::npos) << vs.err;
  EXPECT_EQ(vs.out.find("OK"), std::string::npos) << vs.out;
  RunResult l = airlock({"bundle", "list", "--store", dir / "store"});
  EXPECT_EQ(l.exit_code, 1) << l.err;
  EXPECT_NE(l.err.find("state.db without its imports table"), std::string::npos) << l.err;
  EXPECT_EQ(testing::read_file(dir / "store/state.db"), "");
}

// inspect prints the signature's trusted comment before anything is
// verified: C1 controls (CSI as U+009B) and bidirectional overrides in it
// must not reach the terminal.
TEST_F(CliTest, InspectKeepsControlsInTheUnverifiedCommentOffTheTerminal) {
  const verifier::SecretKey key = testing::test_key(2);
  testing::BundleSpec spec;
  spec.files = {{"model.gguf", "weights"}};
  const std::string manifest = verifier::serialize_manifest(testing::manifest_for(spec, key));
  std::string sig = testing::sign_manifest(key, manifest);
  const std::size_t at = sig.find("trusted comment: ");
  ASSERT_NE(at, std::string::npos);
  sig.replace(at, sig.find('\n', at) - at, "trusted comment: evil \xC2\x9B" "31m red \xE2\x80\xAE" "txt.exe");
  testing::write_file(dir / "evil.airlock",
                      testing::build_tar({{"manifest.json", manifest}, {"manifest.json.minisig", sig},
                                          {"model.gguf", "weights"}}));
  RunResult i = airlock({"bundle", "inspect", dir / "evil.airlock"});
  EXPECT_EQ(i.exit_code, 0) << i.err;
  EXPECT_NE(i.out.find("evil"), std::string::npos) << i.out;  // the comment is printed
  EXPECT_EQ(i.out.find("\xC2\x9B"), std::string::npos) << i.out;
  EXPECT_EQ(i.out.find("\xE2\x80\xAE"), std::string::npos) << i.out;
}

#if defined(AIRLOCK_TEST_HOOKS)
// SIGTERM (or Ctrl-C) while create writes: the partial file beside the
// output is removed, nothing appears under the final name, and the process
// still ends by the signal. The test hook holds the write open for 10 s.
TEST_F(CliTest, InterruptedCreateLeavesNoPartialFile) {
  auto leftovers = [&] {
    std::vector<std::string> found;
    for (const std::string& p : testing::list_tree(dir.path()))
      if (p.rfind("cut.airlock", 0) == 0) found.push_back(p);
    return found;
  };
  bool sent = false;
  RunResult r = run({AIRLOCK_CLI_PATH, "bundle", "create", "--key", dir / "signer.key", "--name", "demo", "--version",
                     "1", "--file", "other=" + dir / "weights.bin", "--out", dir / "cut.airlock", "--quiet"},
                    {"AIRLOCK_TEST_CREATE_PAUSE_MS=10000"}, "/tmp", [&](pid_t pid) {
                      for (int i = 0; i < 2000 && !sent; ++i) {
                        if (!leftovers().empty()) {
                          ::kill(pid, SIGTERM);
                          sent = true;
                        } else {
                          ::usleep(5000);
                        }
                      }
                    });
  ASSERT_TRUE(sent) << "the partial output never appeared";
  EXPECT_EQ(r.signal, SIGTERM) << r.err;
  EXPECT_TRUE(leftovers().empty()) << leftovers()[0];
}
#endif

TEST_F(CliTest, ExitCodesForTamperedMissingAndUsage) {
  ASSERT_EQ(create("1", dir / "b.airlock").exit_code, 0);
  std::string bytes = testing::read_file(dir / "b.airlock");
  bytes[bytes.size() / 2] ^= 0x20;
  testing::write_file(dir / "t.airlock", bytes);
  RunResult t = airlock({"bundle", "verify", dir / "t.airlock", "--trusted", dir / "trusted"});
  EXPECT_EQ(t.exit_code, 1);
  EXPECT_NE(t.err.find("weights.bin' chunk"), std::string::npos) << t.err;
  EXPECT_EQ(airlock({"bundle", "verify", dir / "nope.airlock", "--trusted", dir / "trusted"}).exit_code, 2);
  EXPECT_EQ(airlock({"bundle", "verify", dir / "b.airlock"}).exit_code, 2);
  EXPECT_EQ(airlock({"bundle", "frobnicate"}).exit_code, 2);
  EXPECT_EQ(airlock({"bundle", "verify", dir / "b.airlock", "--trusted", dir / "nokeys"}).exit_code, 2);

  // Untrusted signer and revoked key: exit 1, store untouched.
  ASSERT_EQ(airlock({"bundle", "keygen", "--out", dir / "other", "--unencrypted"}).exit_code, 0);
  ::mkdir((dir / "trusted2").c_str(), 0755);
  testing::write_file(dir / "trusted2/other.pub", testing::read_file(dir / "other.pub"));
  RunResult u = airlock({"bundle", "import", dir / "b.airlock", "--store", dir / "store", "--trusted", dir / "trusted2"});
  EXPECT_EQ(u.exit_code, 1);
  EXPECT_NE(u.err.find("not a trusted key"), std::string::npos) << u.err;
  std::string key_id = testing::read_file(dir / "signer.pub").substr(39, 16);
  testing::write_file(dir / "trusted/revoked", "# compromised 2026-11-01\n" + key_id + "\n");
  RunResult rv = airlock({"bundle", "import", dir / "b.airlock", "--store", dir / "store", "--trusted", dir / "trusted"});
  EXPECT_EQ(rv.exit_code, 1);
  EXPECT_NE(rv.err.find("revoked"), std::string::npos) << rv.err;
  EXPECT_FALSE(testing::exists(dir / "store/demo"));
}

TEST_F(CliTest, MinisignAcceptsTheManifestSignature) {
  if (!have_minisign()) GTEST_SKIP() << "minisign not installed (scripts/setup installs it)";
  ASSERT_EQ(create("1", dir / "b.airlock").exit_code, 0);
  ASSERT_EQ(airlock({"bundle", "import", dir / "b.airlock", "--store", dir / "store", "--trusted", dir / "trusted",
                     "--quiet"}).exit_code, 0);
  std::string pub = testing::read_file(dir / "signer.pub");
  std::string b64 = pub.substr(pub.find('\n') + 1);
  b64.pop_back();
  RunResult m = run({"minisign", "-Vm", dir / "store/demo/1/manifest.json", "-P", b64});
  EXPECT_EQ(m.exit_code, 0) << m.out << m.err;
  EXPECT_NE(m.out.find("airlock-bundle name=demo version=1"), std::string::npos) << m.out;
  // And a flipped manifest byte is caught by minisign too.
  std::string manifest = testing::read_file(dir / "store/demo/1/manifest.json");
  manifest[10] ^= 1;
  testing::write_file(dir / "manifest.json", manifest);
  testing::write_file(dir / "manifest.json.minisig", testing::read_file(dir / "store/demo/1/manifest.json.minisig"));
  EXPECT_NE(run({"minisign", "-Vm", dir / "manifest.json", "-P", b64}).exit_code, 0);
}

TEST_F(CliTest, KeysMadeByMinisignSignBundles) {
  if (!have_minisign()) GTEST_SKIP() << "minisign not installed (scripts/setup installs it)";
  RunResult g = run({"minisign", "-G", "-W", "-p", dir / "ms.pub", "-s", dir / "ms.key"});
  ASSERT_EQ(g.exit_code, 0) << g.err;
  RunResult c = airlock({"bundle", "create", "--key", dir / "ms.key", "--name", "ms", "--version", "3", "--file",
                         "license=" + dir / "LICENSE", "--out", dir / "ms.airlock", "--quiet"});
  ASSERT_EQ(c.exit_code, 0) << c.err;
  EXPECT_EQ(airlock({"bundle", "verify", dir / "ms.airlock", "--trusted", dir / "ms.pub"}).exit_code, 0);
}

TEST_F(CliTest, MinisignUsesKeysMadeByAirlock) {
  if (!have_minisign()) GTEST_SKIP() << "minisign not installed (scripts/setup installs it)";
  testing::write_file(dir / "f", "hello\n");
  // Unencrypted key from SetUp: minisign -W signs with it, airlock's .pub verifies.
  RunResult s = run({"minisign", "-S", "-W", "-s", dir / "signer.key", "-m", dir / "f"});
  ASSERT_EQ(s.exit_code, 0) << s.err;
  EXPECT_EQ(run({"minisign", "-Vm", dir / "f", "-p", dir / "signer.pub"}).exit_code, 0);
  // Encrypted key: minisign derives the same scrypt key from the passphrase.
  testing::write_file(dir / "pass", "pw-for-minisign\n");
  ASSERT_EQ(airlock({"bundle", "keygen", "--out", dir / "enc", "--passphrase-file", dir / "pass"}).exit_code, 0);
  ::unlink((dir / "f.minisig").c_str());
  RunResult e = run({"sh", "-c", "minisign -S -s '" + dir / "enc.key" + "' -m '" + dir / "f" + "' < '" + dir / "pass" + "'"});
  ASSERT_EQ(e.exit_code, 0) << e.out << e.err;
  EXPECT_EQ(run({"minisign", "-Vm", dir / "f", "-p", dir / "enc.pub"}).exit_code, 0);
  EXPECT_NE(run({"minisign", "-Vm", dir / "f", "-p", dir / "signer.pub"}).exit_code, 0);
}

TEST_F(CliTest, ImportKilledMidExtractionLeavesNothingVisible) {
#if !defined(AIRLOCK_TEST_HOOKS)
  GTEST_SKIP() << "built with AIRLOCK_TEST_HOOKS=OFF: the kill hook is not compiled in";
#endif
  ASSERT_EQ(create("1", dir / "b.airlock").exit_code, 0);
  RunResult killed = airlock({"bundle", "import", dir / "b.airlock", "--store", dir / "store", "--trusted",
                              dir / "trusted", "--quiet", "--threads", "1"},
                             {"AIRLOCK_TEST_KILL_AFTER_BYTES=2097152"});
  ASSERT_EQ(killed.signal, SIGKILL) << "exit " << killed.exit_code << " " << killed.err;
  EXPECT_FALSE(testing::exists(dir / "store/demo"));
  // The partial extraction exists only inside the private staging area.
  bool partial_seen = false;
  for (const std::string& p : testing::list_tree(dir / "store/.staging"))
    if (p.find("weights.bin") != std::string::npos) partial_seen = true;
  EXPECT_TRUE(partial_seen) << "the kill should have happened mid-extraction";
  RunResult l = airlock({"bundle", "list", "--store", dir / "store"});
  EXPECT_TRUE(l.out.empty()) << l.out;

  RunResult ok = airlock({"bundle", "import", dir / "b.airlock", "--store", dir / "store", "--trusted",
                          dir / "trusted", "--quiet"});
  ASSERT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_EQ(testing::read_file(dir / "store/demo/1/weights.bin"), testing::read_file(dir / "weights.bin"));
  EXPECT_TRUE(testing::list_tree(dir / "store/.staging").empty());
}

TEST_F(CliTest, CreateNamesTheOutputAfterNameAndVersion) {
  RunResult c = airlock({"bundle", "create", "--key", dir / "signer.key", "--name", "tiny", "--version", "12",
                         "--file", "license=" + dir / "LICENSE", "--quiet"}, {}, dir.path());
  ASSERT_EQ(c.exit_code, 0) << c.err;
  EXPECT_TRUE(testing::exists(dir / "tiny-12.airlock"));
  EXPECT_EQ(airlock({"bundle", "create", "--key", dir / "signer.key", "--version", "1", "--file",
                     "license=" + dir / "LICENSE"}).exit_code, 2);
}

// A bundle whose manifest would be over 16 MiB (1 TiB, sparse, at 64 KiB
// chunks) is refused before its inputs are read: exit 2 within moments
// (hashing 1 TiB would take hours), saying what would fit, and no output
// or partial file.
TEST_F(CliTest, CreateRefusesAManifestOverTheLimitBeforeHashing) {
  const std::string huge = dir / "huge.bin";
  testing::write_file(huge, "");
  std::filesystem::resize_file(huge, 1ull << 40);
  const auto start = std::chrono::steady_clock::now();
  RunResult c = airlock({"bundle", "create", "--key", dir / "signer.key", "--name", "huge", "--version", "1",
                         "--file", "other=" + huge, "--chunk-size", "65536", "--out", dir / "huge.airlock"});
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
  EXPECT_EQ(c.exit_code, 2) << c.err;
  EXPECT_NE(c.err.find("over the 16 MiB a bundle's manifest may have"), std::string::npos) << c.err;
  EXPECT_NE(c.err.find("8388608 bytes or more would fit"), std::string::npos) << c.err;
  EXPECT_EQ(c.err.find("create: "), std::string::npos) << c.err;  // no progress line
  for (const std::string& p : testing::list_tree(dir.path())) EXPECT_EQ(p.find("huge.airlock"), std::string::npos) << p;
}

TEST_F(CliTest, ProgressLinesWhenNotATerminal) {
  RunResult c = airlock({"bundle", "create", "--key", dir / "signer.key", "--name", "demo", "--version", "1",
                         "--file", "other=" + dir / "weights.bin", "--out", dir / "p.airlock"});
  ASSERT_EQ(c.exit_code, 0) << c.err;
  EXPECT_NE(c.err.find("create: 100%"), std::string::npos) << c.err;
  EXPECT_EQ(c.err.find('\r'), std::string::npos);
}

TEST_F(CliTest, ProgressBarOnATerminal) {
  if (run({"sh", "-c", "command -v script"}).exit_code != 0) GTEST_SKIP() << "util-linux script(1) not installed";
  ASSERT_EQ(create("1", dir / "b.airlock").exit_code, 0);
  // script(1) runs the command on a pseudo-terminal, so stderr is a tty.
  std::string cmd = std::string(AIRLOCK_CLI_PATH) + " bundle verify " + dir / "b.airlock" + " --trusted " +
                    dir / "trusted";
  RunResult r = run({"script", "-qefc", cmd, "/dev/null"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("\rverify   ["), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("100%"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("ETA"), std::string::npos) << r.out;
  RunResult q = run({"script", "-qefc", cmd + " --quiet", "/dev/null"});
  EXPECT_EQ(q.exit_code, 0);
  EXPECT_EQ(q.out.find("verify   ["), std::string::npos) << q.out;
}

}  // namespace
}  // namespace airlock
