// The engine's GGUF reader on valid and hostile files.
#include "airlock/engine/gguf.h"

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>

#include "gguf_writer.h"

namespace airlock::engine {
namespace {

Result<std::unique_ptr<GgufFile>> parse(const std::string& b) {
  return GgufFile::parse({reinterpret_cast<const std::uint8_t*>(b.data()), b.size()});
}

std::string sample_file() {
  testing::GgufWriter w;
  w.set_string("general.architecture", "llama");
  w.set_u32("llama.context_length", 4096);
  w.set_f32("llama.rope.freq_base", 500000.0f);
  w.set_bool("tokenizer.ggml.add_bos_token", true);
  w.set_string_array("tokenizer.ggml.tokens", {"<s>", "a", "b"});
  w.set_f32_array("tokenizer.ggml.scores", {0.0f, -1.5f, -2.5f});
  w.set_i32_array("tokenizer.ggml.token_type", {3, 1, 1});
  std::vector<float> v(64 * 3);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i);
  w.add_tensor("token_embd.weight", GgmlType::kF32, {64, 3}, v);
  w.add_tensor("norm", GgmlType::kF32, {64}, std::vector<float>(64, 1.0f));
  return w.bytes();
}

TEST(GgufTest, ReadsMetadataAndTensorsWithoutCopying) {
  std::string b = sample_file();
  auto f = parse(b);
  ASSERT_TRUE(f.is_ok()) << f.status().to_string();
  const GgufFile& g = **f;
  EXPECT_EQ(g.version(), 3u);
  EXPECT_EQ(g.get_string("general.architecture").value_or(""), "llama");
  EXPECT_EQ(g.get_uint("llama.context_length").value_or(0), 4096u);
  EXPECT_EQ(g.get_int("llama.context_length").value_or(0), 4096);
  EXPECT_FLOAT_EQ(static_cast<float>(g.get_float("llama.rope.freq_base").value_or(0)), 500000.0f);
  EXPECT_TRUE(g.get_bool("tokenizer.ggml.add_bos_token").value_or(false));
  EXPECT_FALSE(g.get_uint("general.architecture").has_value());  // wrong type
  EXPECT_FALSE(g.get_string("missing").has_value());
  auto tokens = g.get_string_array("tokenizer.ggml.tokens");
  ASSERT_TRUE(tokens.is_ok());
  EXPECT_EQ((*tokens)[2], "b");
  auto scores = g.get_float_array("tokenizer.ggml.scores");
  ASSERT_TRUE(scores.is_ok());
  EXPECT_FLOAT_EQ((*scores)[1], -1.5f);
  auto types = g.get_int_array("tokenizer.ggml.token_type");
  ASSERT_TRUE(types.is_ok());
  EXPECT_EQ((*types)[0], 3);
  EXPECT_EQ(g.get_float_array("tokenizer.ggml.tokens").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(g.get_string_array("nope").status().code(), StatusCode::kNotFound);
  const GgufTensor* t = g.tensor("token_embd.weight");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->ne[0], 64);
  EXPECT_EQ(t->ne[1], 3);
  EXPECT_EQ(t->n_elements, 192);
  // The data is a view into the caller's bytes.
  EXPECT_GE(t->data.data(), reinterpret_cast<const std::uint8_t*>(b.data()));
  EXPECT_LE(t->data.data() + t->data.size(), reinterpret_cast<const std::uint8_t*>(b.data()) + b.size());
  float x;
  std::memcpy(&x, t->data.data() + 4 * 65, 4);
  EXPECT_EQ(x, 65.0f);
  EXPECT_EQ(g.tensor("nope"), nullptr);
}

TEST(GgufTest, EveryTruncationFailsCleanly) {
  std::string b = sample_file();
  for (std::size_t n = 0; n < b.size(); ++n) {
    auto f = parse(b.substr(0, n));
    ASSERT_FALSE(f.is_ok()) << "accepted a file cut at " << n << " of " << b.size();
    EXPECT_EQ(f.status().code(), StatusCode::kVerificationFailed);
  }
}

TEST(GgufTest, HostileHeaders) {
  std::string good = sample_file();
  auto patch = [&](std::size_t at, const void* p, std::size_t n) {
    std::string s = good;
    std::memcpy(s.data() + at, p, n);
    return s;
  };
  std::uint32_t v1 = 1, v9 = 9;
  std::uint64_t huge = 1ULL << 60;
  std::string cases[] = {
      std::string("GGML") + good.substr(4),
      patch(4, &v1, 4),
      patch(4, &v9, 4),
      patch(8, &huge, 8),   // tensor count
      patch(16, &huge, 8),  // kv count
      patch(24, &huge, 8),  // first key length
  };
  for (const std::string& c : cases) {
    auto f = parse(c);
    ASSERT_FALSE(f.is_ok());
    EXPECT_EQ(f.status().code(), StatusCode::kVerificationFailed);
  }
  // Structural problems built with the writer.
  auto one_tensor = [](GgmlType t, std::vector<std::int64_t> ne, std::size_t n_values) {
    testing::GgufWriter w;
    w.set_string("general.architecture", "llama");
    w.add_tensor("t", t, std::move(ne), std::vector<float>(n_values, 0.5f));
    return w.bytes();
  };
  std::string five_dims = one_tensor(GgmlType::kF32, {2, 2, 2, 2, 2}, 32);
  EXPECT_NE(parse(five_dims).status().message().find("dimensions"), std::string::npos);
  testing::GgufWriter dup;
  dup.set_u32("a", 1);
  dup.set_u32("a", 2);
  EXPECT_NE(parse(dup.bytes()).status().message().find("duplicate metadata key"), std::string::npos);
  testing::GgufWriter align;
  align.set_u32("general.alignment", 48);
  EXPECT_NE(parse(align.bytes()).status().message().find("power of two"), std::string::npos);
  for (std::uint32_t small : {1u, 2u, 4u}) {  // floats read in place would be misaligned
    testing::GgufWriter w;
    w.set_u32("general.alignment", small);
    EXPECT_NE(parse(w.bytes()).status().message().find("from 8 to 2^20"), std::string::npos) << small;
  }
  // A tensor whose data runs past the end.
  std::string t = one_tensor(GgmlType::kF32, {64, 4}, 256);
  EXPECT_NE(parse(t.substr(0, t.size() - 64)).status().message().find("outside the file"), std::string::npos);
  // An unknown tensor type id.
  std::string u = one_tensor(GgmlType::kF32, {8}, 8);
  std::size_t type_at = u.find(std::string("t\x01\x00\x00\x00", 5)) + 1 + 4 + 8;
  std::uint32_t bad_type = 77;
  std::memcpy(u.data() + type_at, &bad_type, 4);
  EXPECT_NE(parse(u).status().message().find("unknown type 77"), std::string::npos);
}

TEST(GgufTest, OpenErrors) {
  EXPECT_EQ(GgufFile::open("/nonexistent/x.gguf").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(GgufFile::open("/").status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace airlock::engine
