#include "airlock/verifier/gguf_facts.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "airlock/verifier/mapped_file.h"
#include "test_bundles.h"

namespace airlock::verifier {
namespace {

// Builds GGUF bytes field by field.
class GgufBuilder {
 public:
  explicit GgufBuilder(std::uint32_t version = 3) {
    bytes_ = "GGUF";
    u32(version);
    count_at_ = bytes_.size();
    u64(0);  // tensor count, patched by finish()
    u64(0);  // kv count
  }
  GgufBuilder& kv_string(const std::string& key, const std::string& v) {
    str(key); u32(8); str(v); ++n_kv_; return *this;
  }
  GgufBuilder& kv_u32(const std::string& key, std::uint32_t v) {
    str(key); u32(4); u32(v); ++n_kv_; return *this;
  }
  GgufBuilder& kv_raw(const std::string& key, std::uint32_t type, const std::string& raw) {
    str(key); u32(type); bytes_ += raw; ++n_kv_; return *this;
  }
  GgufBuilder& tensor(const std::string& name, std::vector<std::uint64_t> dims, std::uint32_t type,
                      std::uint64_t data_bytes) {
    tensors_ += le(static_cast<std::uint64_t>(name.size())) + name + le(static_cast<std::uint32_t>(dims.size()));
    for (std::uint64_t d : dims) tensors_ += le(d);
    tensors_ += le(type) + le(data_offset_);
    data_offset_ += (data_bytes + 31) / 32 * 32;
    ++n_tensors_;
    return *this;
  }
  std::string finish() const {
    std::string out = bytes_ + tensors_;
    std::memcpy(out.data() + count_at_, &n_tensors_, 8);
    std::memcpy(out.data() + count_at_ + 8, &n_kv_, 8);
    out.resize((out.size() + 31) / 32 * 32, '\0');
    out += std::string(data_offset_, '\0');
    return out;
  }
  template <typename T>
  static std::string le(T v) { return std::string(reinterpret_cast<const char*>(&v), sizeof v); }

 private:
  void u32(std::uint32_t v) { bytes_ += le(v); }
  void u64(std::uint64_t v) { bytes_ += le(v); }
  void str(const std::string& s) { u64(s.size()); bytes_ += s; }
  std::string bytes_, tensors_;
  std::size_t count_at_ = 0;
  std::uint64_t n_kv_ = 0, n_tensors_ = 0, data_offset_ = 0;
};

Result<ModelFacts> facts(const std::string& b) {
  return read_gguf_facts({reinterpret_cast<const std::uint8_t*>(b.data()), b.size()});
}

std::string small_model(std::uint32_t version = 3) {
  return GgufBuilder(version)
      .kv_string("general.architecture", "qwen2")
      .kv_u32("qwen2.context_length", 32768)
      .kv_u32("general.file_type", 15)
      .tensor("token_embd.weight", {256, 64}, 12, 256 * 64 / 256 * 144)
      .tensor("output_norm.weight", {64}, 0, 64 * 4)
      .finish();
}

TEST(GgufFactsTest, ReadsArchitectureParametersQuantisationContext) {
  for (std::uint32_t v : {2u, 3u}) {
    Result<ModelFacts> f = facts(small_model(v));
    ASSERT_TRUE(f.is_ok()) << f.status().to_string();
    EXPECT_EQ(f->architecture, "qwen2");
    EXPECT_EQ(f->parameter_count, 256u * 64 + 64);
    EXPECT_EQ(f->quantization, "Q4_K_M");
    EXPECT_EQ(f->context_length, 32768u);
    EXPECT_EQ(f->gguf_version, v);
    EXPECT_EQ(f->tensor_count, 2u);
  }
}

TEST(GgufFactsTest, WithoutFileTypeTheDominantTensorTypeIsReported) {
  std::string b = GgufBuilder()
                      .kv_string("general.architecture", "llama")
                      .tensor("a", {32, 32}, 8, 32 * 34)  // Q8_0
                      .tensor("b", {64}, 0, 256)          // F32
                      .finish();
  Result<ModelFacts> f = facts(b);
  ASSERT_TRUE(f.is_ok()) << f.status().to_string();
  EXPECT_EQ(f->quantization, "Q8_0");
  EXPECT_EQ(f->context_length, 0u);
}

TEST(GgufFactsTest, EveryTruncationIsRefusedWithoutCrashing) {
  std::string b = small_model();
  std::size_t header_end = b.size() - 256 * 64 / 256 * 144 - 256;  // truncations inside data too
  for (std::size_t n = 0; n < b.size(); n += (n < header_end + 64 ? 1 : 997)) {
    Result<ModelFacts> f = facts(b.substr(0, n));
    ASSERT_FALSE(f.is_ok()) << "accepted a file cut at " << n;
    EXPECT_EQ(f.status().code(), StatusCode::kVerificationFailed);
  }
}

TEST(GgufFactsTest, HostileHeaders) {
  using B = GgufBuilder;
  auto arch = [](B b) { return b.kv_string("general.architecture", "llama"); };
  std::string good = small_model();
  auto patch = [&](std::size_t at, const std::string& bytes) {
    std::string s = good;
    s.replace(at, bytes.size(), bytes);
    return s;
  };
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"", "magic"},
      {"GGML" + good.substr(4), "magic"},
      {patch(4, B::le<std::uint32_t>(1)), "version 1"},
      {patch(4, B::le<std::uint32_t>(99)), "version 99"},
      {patch(8, B::le<std::uint64_t>(1ULL << 40)), "tensor count"},
      {patch(16, B::le<std::uint64_t>(1ULL << 60)), "metadata count"},
      {patch(24, B::le<std::uint64_t>(1ULL << 50)), "claims"},  // key length
      {B().kv_raw("k", 8, B::le<std::uint64_t>(1ULL << 50)).finish(), "claims"},
      {B().kv_raw("k", 9, B::le<std::uint32_t>(4) + B::le<std::uint64_t>(1ULL << 61)).finish(), "array of"},
      {B().kv_raw("k", 99, "").finish(), "unknown metadata value type"},
      {B().kv_raw("k", 9, B::le<std::uint32_t>(9) + B::le<std::uint64_t>(1) + B::le<std::uint32_t>(9) +
                               B::le<std::uint64_t>(1) + B::le<std::uint32_t>(9) + B::le<std::uint64_t>(1) +
                               B::le<std::uint32_t>(9) + B::le<std::uint64_t>(1) + B::le<std::uint32_t>(9) +
                               B::le<std::uint64_t>(1) + std::string(64, '\0')).finish(),
       "nested too deeply"},
      {B().kv_u32("x", 1).finish(), "general.architecture is missing"},
      {arch(B()).tensor("t", {1, 2, 3, 4, 5}, 0, 480).finish(), "5 dimensions"},
      {arch(B()).tensor("t", {1ULL << 40, 1ULL << 40}, 0, 0).finish(), "overflowing"},
      {arch(B()).tensor("t", {0}, 0, 0).finish(), "invalid"},
      {arch(B()).tensor("t", {8}, 77, 32).finish(), "unknown type 77"},
      {arch(B()).kv_u32("general.alignment", 24).tensor("t", {8}, 0, 32).finish(), "power of two"},
      {arch(B()).tensor("t", {1 << 20}, 0, 0).finish(), "outside the file"},
      {arch(B()).tensor("t", {1ULL << 31, 1ULL << 30}, 28, 0).finish(), "outside the file"},  // 2^64 bytes of F64
      {arch(B()).tensor("t", {33}, 8, 64).finish(), "whole number"},
  };
  for (const auto& [bytes, expect] : cases) {
    Result<ModelFacts> f = facts(bytes);
    ASSERT_FALSE(f.is_ok()) << "accepted; expected: " << expect;
    EXPECT_EQ(f.status().code(), StatusCode::kVerificationFailed);
    EXPECT_NE(f.status().message().find(expect), std::string::npos) << expect << " vs " << f.status().message();
  }
}

// A header longer than the first copy (1 MiB) read from a mapping: the
// mapped reader copies longer prefixes until the header fits, and agrees with
// the reader of the whole file.
std::string long_header_model() {
  return GgufBuilder()
      .kv_string("general.architecture", "llama")
      .kv_raw("tokenizer.blob", 9, GgufBuilder::le<std::uint32_t>(0) + GgufBuilder::le<std::uint64_t>(5u << 20) +
                                       std::string(5u << 20, 'x'))  // 5 MiB of u8, skipped unread
      .kv_u32("llama.context_length", 4096)
      .tensor("a", {32, 32}, 8, 32 * 34)
      .tensor("b", {64}, 0, 256)
      .finish();
}

TEST(GgufFactsTest, MappedReaderGrowsItsCopyUntilTheHeaderFits) {
  testing::TempDir dir;
  const std::string path = dir / "long.gguf";
  const std::string bytes = long_header_model();
  testing::write_file(path, bytes);
  Result<ModelFacts> whole = facts(bytes);
  Result<ModelFacts> mapped = read_gguf_facts_file(path);
  ASSERT_TRUE(whole.is_ok()) << whole.status().to_string();
  ASSERT_TRUE(mapped.is_ok()) << mapped.status().to_string();
  EXPECT_EQ(mapped->architecture, "llama");
  EXPECT_EQ(mapped->tensor_count, 2u);
  EXPECT_EQ(mapped->parameter_count, whole->parameter_count);
  EXPECT_EQ(mapped->context_length, 4096u);
  EXPECT_EQ(mapped->quantization, whole->quantization);
  // Truncations of the file are refused the same way through the mapping.
  for (std::size_t n : {std::size_t{0}, std::size_t{100}, std::size_t{1} << 20, (std::size_t{5} << 20) + 200,
                        bytes.size() - 1}) {
    testing::write_file(path, bytes.substr(0, n));
    Result<ModelFacts> cut = read_gguf_facts_file(path);
    ASSERT_FALSE(cut.is_ok()) << "accepted a file cut at " << n;
    EXPECT_EQ(cut.status().code(), StatusCode::kVerificationFailed) << cut.status().to_string();
  }
}

// A source file truncated while `bundle create` reads its header (another
// process, media pulled out) is an I/O error, not SIGBUS.
TEST(GgufFactsTest, MappedReaderOfAShrunkFileFailsWithIoError) {
  testing::TempDir dir;
  const std::string path = dir / "long.gguf";
  testing::write_file(path, long_header_model());
  for (std::size_t keep : {std::size_t{0}, std::size_t{8192}, std::size_t{3} << 20}) {
    testing::write_file(path, long_header_model());
    Result<MappedFile> file = MappedFile::open(path);
    ASSERT_TRUE(file.is_ok());
    ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(keep)), 0);
    Result<ModelFacts> f = read_gguf_facts_mapped(file->bytes(), "long.gguf");
    ASSERT_FALSE(f.is_ok()) << "kept " << keep;
    EXPECT_EQ(f.status().code(), StatusCode::kIoError) << f.status().to_string();
    EXPECT_NE(f.status().message().find("long.gguf"), std::string::npos);
  }
}

// A header that skips far (an array checked against the file size only)
// and goes on after it: the copies stop at their cap (256 MiB by default, 1
// MiB here) with a clear error instead of growing to the size of the file
// (a model of tens of GB).
TEST(GgufFactsTest, MappedReaderBoundsItsCopy) {
  testing::TempDir dir;
  const std::string path = dir / "far.gguf";
  const std::uint64_t skip = 3ull << 20;
  std::string head = GgufBuilder()
                         .kv_string("general.architecture", "llama")
                         .kv_raw("big", 9, GgufBuilder::le<std::uint32_t>(0) + GgufBuilder::le<std::uint64_t>(skip))
                         .finish();
  std::memcpy(head.data() + 16, "\x03\0\0\0\0\0\0\0", 8);  // a third key/value after the array (zeros: an empty key, a u8)
  testing::write_file(path, head);
  ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(head.size() + skip + 4096)), 0);  // sparse
  Result<MappedFile> file = MappedFile::open(path);
  ASSERT_TRUE(file.is_ok());
  Result<ModelFacts> f = read_gguf_facts_mapped(file->bytes(), "far.gguf", 64 << 10, 1 << 20);
  ASSERT_FALSE(f.is_ok());
  EXPECT_EQ(f.status().code(), StatusCode::kVerificationFailed);
  EXPECT_NE(f.status().message().find("longer than 1048576 bytes"), std::string::npos) << f.status().to_string();
  // With room for it, the same header parses.
  EXPECT_TRUE(read_gguf_facts_mapped(file->bytes(), "far.gguf", 64 << 10, 8 << 20).is_ok());
}

// A tensor count bounded only by the size of a sparse file (4e10 tensors
// in ~1 TB of holes) read through a mapping: nothing is allocated from the
// count (a reserve() of it threw std::bad_alloc and `bundle create`
// aborted); the first tensor entry, zeros, is refused.
TEST(GgufFactsTest, AHugeClaimedTensorCountIsRefusedWithoutAllocatingForIt) {
  testing::TempDir dir;
  const std::string path = dir / "many.gguf";
  const std::uint64_t n_tensors = 40'000'000'000ULL;
  std::string head = GgufBuilder().kv_string("general.architecture", "llama").finish();
  std::memcpy(head.data() + 8, &n_tensors, 8);
  testing::write_file(path, head);
  ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(head.size() + n_tensors * 24 + 4096)), 0);  // sparse
  Result<ModelFacts> f = read_gguf_facts_file(path);
  ASSERT_FALSE(f.is_ok());
  EXPECT_EQ(f.status().code(), StatusCode::kVerificationFailed) << f.status().to_string();
  EXPECT_NE(f.status().message().find("tensor 0"), std::string::npos) << f.status().to_string();
}

TEST(GgufFactsTest, RealStoriesModel) {
  const char* dir = std::getenv("AIRLOCK_MODELS_DIR");
  std::string path = std::string(dir ? dir : "") + "/stories260K.gguf";
  if (!dir || !testing::exists(path)) GTEST_SKIP() << "stories260K.gguf not found (set AIRLOCK_MODELS_DIR)";
  Result<ModelFacts> f = read_gguf_facts_file(path);
  ASSERT_TRUE(f.is_ok()) << f.status().to_string();
  EXPECT_EQ(f->architecture, "llama");
  EXPECT_EQ(f->context_length, 2048u);
  EXPECT_EQ(f->tensor_count, 48u);
  EXPECT_EQ(f->quantization, "F32");
  // From the README's shapes: token_embd and output 512x64 each, output_norm 64,
  // and per layer (x5) two norms of 64, wq/wo 64x64, wk/wv 64x32, three
  // 64x172 feed-forward matrices: 32768*2 + 64 + 5*45440 = 292800 (also the
  // element total of the file's own tensor table, dumped with Python).
  EXPECT_EQ(f->parameter_count, 292800u);
}

}  // namespace
}  // namespace airlock::verifier
