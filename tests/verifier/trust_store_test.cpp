#include "airlock/verifier/trust_store.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test_bundles.h"

namespace airlock::verifier {
namespace {

TEST(TrustStoreTest, LoadsKeysAndRevocationsFromADirectory) {
  testing::TempDir dir;
  SecretKey a = testing::test_key(1), b = testing::test_key(2);
  testing::write_file(dir / "a.pub", format_public_key(a.public_key()));
  testing::write_file(dir / "b.pub", format_public_key(b.public_key()));
  testing::write_file(dir / "notes.txt", "ignored: not a .pub file");
  testing::write_file(dir / "revoked", "# header\n\n  " + b.id.to_string() + "  # leaked 2026-10\n");
  Result<TrustStore> t = TrustStore::load(dir.path());
  ASSERT_TRUE(t.is_ok()) << t.status().to_string();
  EXPECT_EQ(t->n_keys(), 2u);
  ASSERT_EQ(t->keys_with_id(a.id).size(), 1u);
  EXPECT_EQ(t->keys_with_id(a.id)[0], a.public_key());
  EXPECT_FALSE(t->is_revoked(a.id));
  EXPECT_TRUE(t->is_revoked(b.id));
  Result<TrustStore> single = TrustStore::load(dir / "a.pub");
  ASSERT_TRUE(single.is_ok());
  EXPECT_EQ(single->n_keys(), 1u);
}

TEST(TrustStoreTest, ErrorsNameTheProblem) {
  testing::TempDir dir;
  EXPECT_EQ(TrustStore::load(dir / "missing").status().code(), StatusCode::kNotFound);
  Result<TrustStore> empty = TrustStore::load(dir.path());
  ASSERT_FALSE(empty.is_ok());
  EXPECT_NE(empty.status().message().find("no trusted public keys"), std::string::npos);
  testing::write_file(dir / "bad.pub", "untrusted comment: x\nnot base64 at all\n");
  Result<TrustStore> bad = TrustStore::load(dir.path());
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find("bad.pub"), std::string::npos);
  ::unlink((dir / "bad.pub").c_str());
  testing::write_file(dir / "a.pub", format_public_key(testing::test_key(1).public_key()));
  testing::write_file(dir / "revoked", "0123456789ABCDEF\nnot-a-key-id\n");
  Result<TrustStore> rev = TrustStore::load(dir.path());
  ASSERT_FALSE(rev.is_ok());
  EXPECT_NE(rev.status().message().find("revoked:2"), std::string::npos) << rev.status().message();
  testing::write_file(dir / "huge.pub", std::string(10000, 'A'));
  EXPECT_FALSE(TrustStore::load(dir / "huge.pub").is_ok());
  ::unlink((dir / "huge.pub").c_str());
  // A revocation list that is a link to nothing is an error, not an empty
  // list (failing open would trust a revoked key).
  ::unlink((dir / "revoked").c_str());
  ASSERT_EQ(::symlink((dir / "gone").c_str(), (dir / "revoked").c_str()), 0);
  Result<TrustStore> dangling = TrustStore::load(dir.path());
  ASSERT_FALSE(dangling.is_ok());
  EXPECT_NE(dangling.status().message().find("revocation list"), std::string::npos) << dangling.status().message();
  ::unlink((dir / "revoked").c_str());
  EXPECT_TRUE(TrustStore::load(dir.path()).is_ok());  // no list at all is an empty one
}

}  // namespace
}  // namespace airlock::verifier
