#include "airlock/verifier/manifest.h"

#include <gtest/gtest.h>

#include "test_bundles.h"

namespace airlock::verifier {
namespace {

Manifest sample() {
  testing::BundleSpec spec;
  spec.files = {{"model.gguf", testing::random_bytes(150000, 1)}, {"docs/LICENSE", "MIT"}};
  Manifest m = testing::manifest_for(spec, testing::test_key(1));
  m.expires_at = m.created_at + 86400;
  m.files[0].model = ModelFacts{"llama", 260000, "F32", 2048, 3, 48};
  return m;
}

TEST(ManifestTest, SerializeParseRoundTrip) {
  Manifest m = sample();
  ASSERT_TRUE(validate_manifest(m).is_ok());
  std::string bytes = serialize_manifest(m);
  Result<Manifest> back = parse_manifest(bytes);
  ASSERT_TRUE(back.is_ok()) << back.status().to_string();
  EXPECT_EQ(serialize_manifest(*back), bytes);
  EXPECT_EQ(back->files[0].model->architecture, "llama");
  EXPECT_EQ(back->expires_at.value_or(0), m.expires_at.value_or(-1));
}

TEST(ManifestTest, PathRules) {
  for (const char* good : {"model.gguf", "a/b/c.bin", "LICENSE", "x+y-z_1.txt"})
    EXPECT_TRUE(validate_bundle_path(good).is_ok()) << good;
  for (const char* bad : {"", "/abs", "a//b", "a/", "../x", "a/../b", ".hidden", "./x", "a/.b", "a\\b", "sp ace",
                          "manifest.json", "manifest.json.minisig", "a/b/c/d/e/f/g/h/i", "caf\xc3\xa9"})
    EXPECT_FALSE(validate_bundle_path(bad).is_ok()) << bad;
  EXPECT_FALSE(validate_bundle_path(std::string(256, 'a')).is_ok());
  EXPECT_FALSE(validate_bundle_path(std::string(101, 'a')).is_ok());
}

TEST(ManifestTest, NameAndSemanticRules) {
  EXPECT_TRUE(validate_bundle_name("llama-3.1_8b").is_ok());
  EXPECT_FALSE(validate_bundle_name("Llama").is_ok());
  EXPECT_FALSE(validate_bundle_name("-x").is_ok());
  EXPECT_FALSE(validate_bundle_name(std::string(65, 'a')).is_ok());

  Manifest m = sample();
  m.files[1].path = "MODEL.GGUF";  // case-insensitive duplicate
  EXPECT_FALSE(validate_manifest(m).is_ok());
  m = sample();
  m.files[1].path = "model.gguf/x";  // file and directory at once
  EXPECT_FALSE(validate_manifest(m).is_ok());
  m = sample();
  m.files[1].role = FileRole::kLlm;  // two LLMs
  EXPECT_FALSE(validate_manifest(m).is_ok());
  m = sample();
  m.chunk_size = 100000;  // not a power of two
  EXPECT_FALSE(validate_manifest(m).is_ok());
  m = sample();
  m.expires_at = m.created_at;
  EXPECT_FALSE(validate_manifest(m).is_ok());
  m = sample();
  m.version = 0;
  EXPECT_FALSE(validate_manifest(m).is_ok());
  m = sample();
  m.files[0].model->architecture = "llama\n";
  EXPECT_FALSE(validate_manifest(m).is_ok());
}

// serialized_manifest_size() predicts the serialized size from the sizes
// alone (what bundle create checks before hashing): exact for every count
// of chunk hashes, 0, 1, 2 and many, with and without model facts and an
// expiry, whatever the chunk lists hold when it is asked.
TEST(ManifestTest, SerializedSizeIsPredictedWithoutTheHashes) {
  for (const std::uint64_t size : {0ull, 1ull, 65536ull, 65537ull, 150000ull, 1000ull * 65536 + 5}) {
    for (const bool facts : {false, true}) {
      Manifest m = sample();
      m.files[0].size = size;
      if (!facts) {
        m.files[0].model.reset();
        m.expires_at.reset();
      }
      for (ManifestFile& f : m.files) {
        f.chunk_sha256.assign(chunk_count(f.size, m.chunk_size), Sha256Digest{});
        for (std::size_t c = 0; c < f.chunk_sha256.size(); ++c) f.chunk_sha256[c][0] = static_cast<std::uint8_t>(c);
      }
      ASSERT_TRUE(validate_manifest(m).is_ok());
      const std::size_t actual = serialize_manifest(m).size();
      EXPECT_EQ(serialized_manifest_size(m), actual) << size << (facts ? " with facts" : "");
      for (ManifestFile& f : m.files) f.chunk_sha256.clear();
      ASSERT_TRUE(validate_manifest_unhashed(m).is_ok());
      EXPECT_FALSE(size > 0 && validate_manifest(m).is_ok());
      EXPECT_EQ(serialized_manifest_size(m), actual) << size << (facts ? " with facts" : "") << ", no chunk lists";
    }
  }
  // Far over the limit, from the sizes alone: 2^40 bytes at 64 KiB chunks.
  Manifest huge = sample();
  for (ManifestFile& f : huge.files) f.chunk_sha256.clear();
  huge.files[0].size = 1ull << 40;
  EXPECT_GT(serialized_manifest_size(huge), 76ull << 24);
}

// A model2vec embedding is read with the config.json and tokenizer.json
// beside it: a manifest that leaves either out (or gives it another role)
// would have the daemon read an unsigned file from the store.
TEST(ManifestTest, Model2VecNeedsItsConfigAndTokenizer) {
  Manifest m = sample();
  ManifestFile vectors = m.files[1];
  vectors.path = "embedding/model.safetensors";
  vectors.role = FileRole::kEmbedding;
  ManifestFile config = vectors, tokenizer = vectors;
  config.path = "embedding/config.json";
  config.role = FileRole::kConfig;
  tokenizer.path = "embedding/tokenizer.json";
  tokenizer.role = FileRole::kTokenizer;
  m.files.insert(m.files.end(), {vectors, config, tokenizer});
  ASSERT_TRUE(validate_manifest(m).is_ok()) << validate_manifest(m).to_string();

  Manifest without = m;
  without.files.pop_back();
  Status s = validate_manifest(without);
  EXPECT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("needs 'embedding/tokenizer.json' with role 'tokenizer'"), std::string::npos) << s.to_string();
  without = m;
  without.files.erase(without.files.end() - 2);
  EXPECT_NE(validate_manifest(without).message().find("'embedding/config.json'"), std::string::npos);
  Manifest wrong_role = m;
  wrong_role.files.back().role = FileRole::kOther;
  EXPECT_FALSE(validate_manifest(wrong_role).is_ok());
  Manifest elsewhere = m;
  elsewhere.files.back().path = "tokenizer.json";  // not beside the vectors
  EXPECT_FALSE(validate_manifest(elsewhere).is_ok());
  // Top level: the parts are top-level too.
  Manifest top = m;
  for (ManifestFile& f : top.files) f.path = f.path.substr(f.path.find('/') + 1);
  top.files[1].path = "docs/LICENSE";
  EXPECT_TRUE(validate_manifest(top).is_ok()) << validate_manifest(top).to_string();
  top.files.pop_back();
  EXPECT_FALSE(validate_manifest(top).is_ok());
  // A GGUF embedding needs neither.
  Manifest gguf = m;
  gguf.files.resize(2);
  gguf.files[1].path = "embed.gguf";
  gguf.files[1].role = FileRole::kEmbedding;
  EXPECT_TRUE(validate_manifest(gguf).is_ok());
}

TEST(ManifestTest, HostileJson) {
  std::string good = serialize_manifest(sample());
  auto edit = [&](const std::string& from, const std::string& to) {
    std::string s = good;
    std::size_t at = s.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    return s.replace(at, from.size(), to);
  };
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"not json", "not valid JSON"},
      {"[]", "must be a JSON object"},
      {"{}", "missing field"},
      {good.substr(0, good.size() / 2), "not valid JSON"},
      {edit("\"version\": 1", "\"version\": -1"), "integer"},
      {edit("\"version\": 1", "\"version\": 1.5"), "integer"},
      {edit("\"version\": 1", "\"version\": 18446744073709551616"), "integer"},
      {edit("\"version\": 1", "\"version\": \"1\""), "integer"},
      {edit("\"bundle_format\": 1", "\"bundle_format\": 2"), "not supported"},
      {edit("\"role\": \"llm\"", "\"role\": \"rootkit\""), "unknown role"},
      {edit("\"name\": \"demo\"", "\"name\": \"demo\", \"name\": \"evil\""), "duplicate key"},
      {edit("\"format\": \"gguf\"", "\"format\": \"gguf\", \"format\": \"x\""), "duplicate key"},
      {edit("\"path\": \"model.gguf\"", "\"path\": \"model.gguf\", \"mode\": 4755"), "unknown field 'mode'"},
      {edit("\"size\": 150000", "\"size\": 196609"), "chunk_sha256"},
      {edit("\"size\": 150000", "\"size\": 9999999999"), "chunk_sha256"},
      {edit("\"path\": \"model.gguf\"", "\"path\": \"mod\\u0000el.gguf\""), "path"},
      {edit("\"demo\"", "\"d\xff\xfe\""), "not valid JSON"},
      {edit("\"files\": [", "\"files\": [[[[[[[[[[[[[[[[[["), "nested deeper"},
      {edit("\"files\": [", "\"files\": [[[[[[[[[[[[[[[[[[" + std::string(100000, '[')), "nested deeper"},
      {edit("\"key_id\": \"", "\"x\": [" + [] {
         std::string many;
         for (int i = 0; i < 500000; ++i) many += "0,";
         return many;
       }() + "0], \"key_id\": \""), "more JSON values"},
      {edit("\"key_id\": \"", [] {
         std::string keys;
         for (int i = 0; i < 40; ++i) keys += "\"k" + std::to_string(i) + "\": 0, ";
         return keys;
       }() + "\"key_id\": \""), "more keys"},
      {[&] {
         std::string s = good;
         const std::size_t at = s.find("\"key_id\": \"") + 11;
         for (std::size_t i = at; i < at + 16; ++i) s[i] = static_cast<char>(std::tolower(static_cast<unsigned char>(s[i])));
         return s;
       }(), "upper-case"},
      {edit("\"key_id\": \"", "\"key_id\": \"Z"), "key_id"},
      {std::string(kMaxManifestBytes + 1, ' '), "larger than 16 MiB"},
  };
  for (const auto& [text, expect] : cases) {
    Result<Manifest> r = parse_manifest(text);
    ASSERT_FALSE(r.is_ok()) << "expected failure: " << expect;
    EXPECT_EQ(r.status().code(), StatusCode::kVerificationFailed);
    EXPECT_NE(r.status().message().find(expect), std::string::npos) << expect << " vs " << r.status().message();
  }
  // Upper-case hex digests are refused so that one digest has one spelling.
  std::string upper = good;
  std::string d = to_hex(sample().files[1].sha256);
  std::string D = d;
  for (char& c : D) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  upper.replace(upper.find(d), d.size(), D);
  if (D != d) {
    EXPECT_FALSE(parse_manifest(upper).is_ok());
  }
}

}  // namespace
}  // namespace airlock::verifier
