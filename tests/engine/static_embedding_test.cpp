// model2vec static embeddings and the safetensors reader: the real fixtures
// in ../shared/models reproduce their reference vectors; hostile files are
// refused.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "airlock/engine/static_embedding.h"

namespace airlock::engine {
namespace {

std::string fixtures() {
  const char* d = std::getenv("AIRLOCK_MODELS_DIR");
  return d ? std::string(d) + "/embeddings/model2vec-rs-fixtures" : "";
}

std::vector<double> reference(const std::string& file) {
  std::ifstream in(fixtures() + "/" + file);
  std::ostringstream ss;
  ss << in.rdbuf();
  return nlohmann::json::parse(ss.str())[0].get<std::vector<double>>();
}

double max_abs_diff(const std::vector<float>& got, const std::vector<double>& want) {
  double m = 0;
  for (std::size_t i = 0; i < want.size(); ++i) m = std::max(m, std::fabs(got[i] - want[i]));
  return m;
}

TEST(StaticEmbeddingTest, Float32FixtureReproducesTheReference) {
  if (fixtures().empty() || !std::filesystem::exists(fixtures()))
    GTEST_SKIP() << "model2vec fixtures not found (set AIRLOCK_MODELS_DIR to ../shared/models)";
  auto m = StaticEmbedding::load(fixtures() + "/test-model-float32");
  ASSERT_TRUE(m.is_ok()) << m.status().to_string();
  EXPECT_EQ((*m)->dim(), 2);
  const std::vector<float> hello = (*m)->embed("hello world");
  const std::vector<double> want = reference("embeddings_short.json");
  ASSERT_EQ(hello.size(), want.size());
  EXPECT_LT(max_abs_diff(hello, want), 1e-6) << hello[0] << " " << hello[1];
  std::string long_text;
  for (int i = 0; i < 1000; ++i) long_text += "hello ";
  const std::vector<float> longer = (*m)->embed(long_text);
  // The reference sums 512 rows in f32; this sums in double: 1e-5 apart.
  EXPECT_LT(max_abs_diff(longer, reference("embeddings_long.json")), 1e-5) << longer[0] << " " << longer[1];
  EXPECT_EQ((*m)->embed(""), std::vector<float>(2, 0.0f));
}

TEST(StaticEmbeddingTest, UnigramTokenizersAreRefusedByName) {
  if (fixtures().empty() || !std::filesystem::exists(fixtures()))
    GTEST_SKIP() << "model2vec fixtures not found (set AIRLOCK_MODELS_DIR to ../shared/models)";
  auto m = StaticEmbedding::load(fixtures() + "/test-model-vocab-quantized");
  ASSERT_FALSE(m.is_ok());
  EXPECT_EQ(m.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(m.status().message().find("Unigram"), std::string::npos) << m.status().message();
}

std::string st_file(const std::string& header, std::size_t data_bytes) {
  std::string out(8, '\0');
  const std::uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<char>(n >> (8 * i));
  return out + header + std::string(data_bytes, '\x01');
}

Result<std::unique_ptr<SafetensorsFile>> parse(const std::string& bytes) {
  return SafetensorsFile::parse({reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()});
}

TEST(SafetensorsTest, ReadsTensorsAndRefusesHostileHeaders) {
  // parse() keeps views into the bytes: they must outlive the result.
  const std::string good = st_file(R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
                                   R"("b":{"dtype":"I32","shape":[2],"data_offsets":[24,32]}})", 32);
  auto ok = parse(good);
  ASSERT_TRUE(ok.is_ok()) << ok.status().to_string();
  ASSERT_NE((*ok)->find("a"), nullptr);
  EXPECT_EQ((*ok)->find("a")->n_elements(), 6);
  EXPECT_EQ((*ok)->metadata().at("format"), "pt");
  EXPECT_EQ(SafetensorsFile::element(*(*ok)->find("b"), 1), 16843009.0);  // 0x01010101
  const std::vector<std::pair<std::string, std::size_t>> bad = {
      {"", 0},
      {"{}", 0},  // fine header... but see below: valid, so handled separately
      {"not json", 0},
      {"[]", 0},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}})", 8},     // past the data
      {R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8},      // shape vs bytes
      {R"({"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}})", 8},       // dtype
      {R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8},     // negative dim
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8},      // reversed
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8},
      {R"({"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,8]}})", 8},  // overflow
      {R"({"a":{"dtype":"F32","shape":[[[[[[2]]]]]],"data_offsets":[0,8]}})", 8},           // depth
      {R"({"a":{"dtype":"F32","shape":[2]}})", 8},                                        // no offsets
  };
  for (std::size_t i = 0; i < bad.size(); ++i) {
    if (i == 1) continue;
    auto r = parse(st_file(bad[i].first, bad[i].second));
    ASSERT_FALSE(r.is_ok()) << bad[i].first;
    EXPECT_EQ(r.status().code(), StatusCode::kVerificationFailed) << bad[i].first;
  }
  // A header length beyond the file, and a truncated length field.
  std::string lying = st_file("{}", 0);
  lying[0] = 100;
  EXPECT_FALSE(parse(lying).is_ok());
  EXPECT_FALSE(parse(std::string(5, '\0')).is_ok());
  // Random bytes never crash.
  std::mt19937 rng(3);
  for (int k = 0; k < 500; ++k) {
    std::string r = st_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 8);
    for (int f = 0; f < 4; ++f) r[rng() % r.size()] = static_cast<char>(rng());
    (void)parse(r);
  }
}

}  // namespace
}  // namespace airlock::engine
