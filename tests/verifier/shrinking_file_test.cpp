// A bundle (or any mapped file) that becomes shorter while it is read: a
// truncation by another process, or removable media pulled out during
// `bundle verify` / `import`. The pages past the new end raise SIGBUS; every
// reader must turn that into kIoError, leave nothing behind, and keep the
// process alive.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "airlock/verifier/bundle_reader.h"
#include "airlock/verifier/bundle_store.h"
#include "airlock/verifier/mapped_file.h"
#include "guarded_read.h"
#include "test_bundles.h"

namespace airlock::verifier {
namespace {

constexpr std::size_t kPage = 4096;

std::span<const std::uint8_t> as_span(const std::string& s) {
  return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

struct ShrinkFixture {
  testing::TempDir dir;
  SecretKey key = testing::test_key(5);
  std::string bundle_bytes;
  std::string path = dir / "in.airlock";

  ShrinkFixture() {
    testing::BundleSpec spec;
    spec.files = {{"model.gguf", testing::random_bytes(300 * 1024 + 5, 1)},  // 5 chunks of 64 KiB
                  {"LICENSE", "test licence\n"},
                  {"tail.bin", testing::random_bytes(40 * 1024, 2)}};
    bundle_bytes = testing::build_bundle(spec, key);
    testing::write_file(path, bundle_bytes);
  }
  TrustStore trust() const { return testing::trust_only(key); }
  VerifyOptions options() const {
    VerifyOptions o;
    o.now_unix = 1790000100;
    return o;
  }
};

void shrink(const std::string& path, std::size_t n_bytes) { ASSERT_EQ(::truncate(path.c_str(), n_bytes), 0); }

TEST(ShrinkingFile, TheUnchangedFileVerifies) {
  ShrinkFixture f;
  Result<MappedFile> mapped = MappedFile::open(f.path);
  ASSERT_TRUE(mapped.is_ok());
  Result<VerifiedBundle> r = verify_bundle(mapped->bytes(), f.trust(), f.options());
  EXPECT_TRUE(r.is_ok()) << r.status().to_string();
}

// Cuts on page boundaries: in the headers, in the manifest's page, inside
// each payload file, and in the end-of-archive padding. Every byte of a
// bundle is read by verify, so each cut is met as a fault, never as data.
TEST(ShrinkingFile, VerifyOfAShrunkMappingFailsWithIoError) {
  ShrinkFixture f0;
  const std::size_t size = f0.bundle_bytes.size();
  ASSERT_GT(size, 80 * kPage);
  const std::vector<std::size_t> cuts = {0, kPage, 2 * kPage, 40 * kPage, (size / kPage - 11) * kPage,
                                         (size / kPage - 1) * kPage};
  for (std::size_t cut : cuts) {
    SCOPED_TRACE("cut at " + std::to_string(cut) + " of " + std::to_string(size));
    ShrinkFixture f;
    Result<MappedFile> mapped = MappedFile::open(f.path);
    ASSERT_TRUE(mapped.is_ok());
    shrink(f.path, cut);
    Result<VerifiedBundle> r = verify_bundle(mapped->bytes(), f.trust(), f.options());
    ASSERT_FALSE(r.is_ok());
    EXPECT_EQ(r.status().code(), StatusCode::kIoError) << r.status().to_string();
    EXPECT_NE(r.status().message().find("became shorter"), std::string::npos) << r.status().message();

    // inspect reads headers only; it reports the fault as an archive error.
    InspectedBundle ib = inspect_bundle(mapped->bytes());
    if (cut < 2 * kPage) {
      EXPECT_FALSE(ib.archive_status.is_ok() && ib.manifest_status.is_ok() && ib.signature_status.is_ok());
    }
  }
}

// The import path: the file is truncated (to nothing) by the progress
// callback, after the manifest was read and while payload chunks are being
// hashed and written. The import fails with kIoError and publishes nothing.
TEST(ShrinkingFile, ImportOfABundleTruncatedMidwayLeavesNothing) {
  ShrinkFixture f;
  std::string store_dir = f.dir / "store";
  Result<BundleStore> store = BundleStore::open(store_dir);
  ASSERT_TRUE(store.is_ok());
  ImportOptions opts;
  opts.verify = f.options();
  opts.verify.n_threads = 2;
  bool cut = false;
  opts.verify.progress = [&](std::uint64_t, std::uint64_t) {
    if (!cut) shrink(f.path, 0);
    cut = true;
  };
  Result<ImportRecord> r = store->import_bundle(f.path, f.trust(), opts);
  ASSERT_TRUE(cut);
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), StatusCode::kIoError) << r.status().to_string();
  EXPECT_NE(r.status().message().find("became shorter"), std::string::npos) << r.status().message();
  for (const std::string& p : testing::list_tree(store_dir))
    EXPECT_TRUE(p == "state.db" || p.rfind("state.db-", 0) == 0 || p == ".lock" || p == ".staging") << p;
  EXPECT_TRUE(testing::list_tree(store_dir + "/.staging").empty());
  Result<std::vector<ImportRecord>> rows = store->list_imports();
  ASSERT_TRUE(rows.is_ok());
  EXPECT_TRUE(rows->empty());

  // The store still works: the intact bundle imports afterwards.
  testing::write_file(f.path, f.bundle_bytes);
  opts.verify.progress = nullptr;
  Result<ImportRecord> again = store->import_bundle(f.path, f.trust(), opts);
  EXPECT_TRUE(again.is_ok()) << again.status().to_string();
}

TEST(GuardedRead, HashOfAShrunkMappingIsAnErrorAndTheNextReadsStillWork) {
  testing::TempDir dir;
  const std::string path = dir / "data.bin";
  const std::string data = testing::random_bytes(8 * kPage, 9);
  testing::write_file(path, data);
  Result<MappedFile> mapped = MappedFile::open(path);
  ASSERT_TRUE(mapped.is_ok());
  shrink(path, 2 * kPage);
  for (int round = 0; round < 3; ++round) {  // the signal mask is restored after each fault
    Result<Sha256Digest> whole = sha256_guarded(mapped->bytes(), "data.bin");
    ASSERT_FALSE(whole.is_ok());
    EXPECT_EQ(whole.status().code(), StatusCode::kIoError);
    EXPECT_NE(whole.status().message().find("data.bin"), std::string::npos);
    Result<Sha256Digest> head = sha256_guarded(mapped->bytes().first(2 * kPage), "data.bin");
    ASSERT_TRUE(head.is_ok());
    EXPECT_EQ(*head, sha256(as_span(data).first(2 * kPage)));
    std::vector<std::uint8_t> copy(kPage);
    EXPECT_FALSE(copy_guarded(copy.data(), mapped->bytes().data() + 3 * kPage, kPage));
    EXPECT_TRUE(copy_guarded(copy.data(), mapped->bytes().data() + kPage, kPage));
    EXPECT_EQ(0, std::memcmp(copy.data(), data.data() + kPage, kPage));
  }
}

// A fault outside a guarded read is not swallowed: it reaches the handler
// installed before ours. Without one the process dies of SIGBUS; under
// AddressSanitizer, ASan's handler reports the BUS and exits 1.
#if defined(__SANITIZE_ADDRESS__)
const ::testing::ExitedWithCode kDiesOfTheFault(1);
constexpr const char* kDeathMessage = "AddressSanitizer: BUS";
#else
const ::testing::KilledBySignal kDiesOfTheFault(SIGBUS);
constexpr const char* kDeathMessage = "";
#endif

TEST(GuardedReadDeathTest, AFaultOutsideAGuardedReadStillKillsTheProcess) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  testing::TempDir dir;
  const std::string path = dir / "data.bin";
  testing::write_file(path, testing::random_bytes(4 * kPage, 3));
  EXPECT_EXIT(
      {
        Result<MappedFile> mapped = MappedFile::open(path);
        if (!mapped.is_ok()) std::_Exit(3);
        std::uint8_t byte = 0;
        (void)copy_guarded(&byte, mapped->bytes().data(), 1);  // installs the handler
        if (::truncate(path.c_str(), 0) != 0) std::_Exit(4);
        volatile const std::uint8_t* p = mapped->bytes().data() + 2 * kPage;
        std::_Exit(*p == 0 ? 5 : 6);
      },
      kDiesOfTheFault, kDeathMessage);
}

}  // namespace
}  // namespace airlock::verifier
