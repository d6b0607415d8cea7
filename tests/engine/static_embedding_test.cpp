// model2vec static embeddings and the safetensors reader: the real fixtures
// in ../shared/models reproduce their reference vectors; hostile files are
// refused.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "airlock/common/json.h"

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

// A config.json value of the wrong type is refused at load (it used to
// throw out of load() and end the daemon).
TEST(StaticEmbeddingTest, WrongTypesInConfigAreRefused) {
  if (fixtures().empty() || !std::filesystem::exists(fixtures() + "/test-model-float32"))
    GTEST_SKIP() << "model2vec fixtures not found (set AIRLOCK_MODELS_DIR to ../shared/models)";
  const std::filesystem::path dir = std::filesystem::temp_directory_path() /
                                    ("airlock-m2v-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::copy(fixtures() + "/test-model-float32", dir, std::filesystem::copy_options::recursive);
  std::ofstream(dir / "config.json", std::ios::trunc) << R"({"normalize":"yes"})";
  auto m = StaticEmbedding::load(dir.string());
  std::filesystem::remove_all(dir);
  ASSERT_FALSE(m.is_ok());
  EXPECT_EQ(m.status().code(), StatusCode::kVerificationFailed) << m.status().to_string();
  EXPECT_NE(m.status().message().find("wrong type"), std::string::npos) << m.status().message();
}

TEST(StaticEmbeddingTest, VocabQuantizedUnigramFixtureReproducesTheReference) {
  if (fixtures().empty() || !std::filesystem::exists(fixtures() + "/test-model-vocab-quantized"))
    GTEST_SKIP() << "model2vec fixtures not found (set AIRLOCK_MODELS_DIR to ../shared/models)";
  auto m = StaticEmbedding::load(fixtures() + "/test-model-vocab-quantized");
  ASSERT_TRUE(m.is_ok()) << m.status().to_string();
  EXPECT_EQ((*m)->dim(), 64);
  // The ids the Hugging Face tokenizers library gives for this tokenizer.json.
  EXPECT_EQ((*m)->tokenizer().encode("hello world", false, false), (std::vector<std::int32_t>{6594, 1091}));
  EXPECT_EQ((*m)->tokenizer().encode("Héllo, WORLD!!  foo-bar", false, false),
            (std::vector<std::int32_t>{6594, 13, 1091, 2, 2, 28381, 14, 2349}));
  EXPECT_EQ((*m)->tokenizer().encode("aé☃☃b", false, false), (std::vector<std::int32_t>{28349, 1, 1499}));
  // model2vec-rs's test_encode_matches_python_model2vec_vocab_quantized: "hello" x 1000.
  std::string text = "hello";
  for (int i = 1; i < 1000; ++i) text += " hello";
  const std::vector<float> got = (*m)->embed(text);
  const std::vector<double> want = reference("embeddings_vocab_quantized.json");
  ASSERT_EQ(got.size(), want.size());
  EXPECT_LT(max_abs_diff(got, want), 1e-5);
  EXPECT_EQ((*m)->embed(""), std::vector<float>(64, 0.0f));
}

// A small Unigram tokenizer.json; the expected ids below are what the Hugging
// Face tokenizers library (0.23) gives for the same files.
std::string unigram_json(const std::string& pre_tokenizer, const std::string& normalizer = "null",
                         bool byte_fallback = false, const std::string& vocab_extra = "") {
  return R"({"version":"1.0","added_tokens":[{"id":14,"content":"<s>","special":true}],"normalizer":)" + normalizer +
         R"(,"pre_tokenizer":)" + pre_tokenizer +
         R"(,"model":{"type":"Unigram","unk_id":0,"byte_fallback":)" + (byte_fallback ? "true" : "false") +
         R"(,"vocab":[["<unk>",0],["▁",-3],["▁a",-2],["a",-2.5],["b",-2.5],["ab",-2],["▁ab",-3],["c",-4],)"
         R"(["abc",-5],["▁c",-4],["é",-3],["<0xE2>",-8],["<0x98>",-8],["<0x83>",-8],["<s>",0])" + vocab_extra + "]}}";
}

std::string metaspace(const std::string& scheme, bool split) {
  return R"({"type":"Metaspace","replacement":"▁","prepend_scheme":")" + scheme + R"(","split":)" +
         (split ? "true" : "false") + "}";
}

std::unique_ptr<Tokenizer> unigram_tokenizer(const std::string& json) {
  auto spec = spec_from_hf_json(json);
  EXPECT_TRUE(spec.is_ok()) << spec.status().to_string();
  if (!spec.is_ok()) return nullptr;
  auto tok = Tokenizer::from_spec(std::move(*spec));
  EXPECT_TRUE(tok.is_ok()) << tok.status().to_string();
  return tok.is_ok() ? std::move(*tok) : nullptr;
}

using Ids = std::vector<std::int32_t>;

TEST(UnigramTest, SegmentsAsHuggingFaceDoes) {
  auto t = unigram_tokenizer(unigram_json(metaspace("always", true)));
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->encode("ab", false, true), (Ids{6}));
  EXPECT_EQ(t->encode("abc ab", false, true), (Ids{6, 7, 6}));
  EXPECT_EQ(t->encode("a b c", false, true), (Ids{2, 1, 4, 9}));
  EXPECT_EQ(t->encode("", false, true), (Ids{}));
  EXPECT_EQ(t->encode(" ", false, true), (Ids{1}));
  EXPECT_EQ(t->encode("ab  c", false, true), (Ids{6, 1, 9}));
  EXPECT_EQ(t->encode("b\u2581a", false, true), (Ids{1, 4, 2}));   // the replacement character in the text
  EXPECT_EQ(t->encode("\u2581ab", false, true), (Ids{6}));         // ... already there: nothing prepended
  // Unknown characters: consecutive ones are one <unk>, each case apart.
  EXPECT_EQ(t->encode("xy", false, true), (Ids{1, 0}));
  EXPECT_EQ(t->encode("axyb", false, true), (Ids{2, 0, 4}));
  EXPECT_EQ(t->encode("AbÉ x", false, true), (Ids{1, 0, 4, 0, 1, 0}));
  EXPECT_EQ(t->encode("é", false, true), (Ids{1, 10}));
  EXPECT_EQ(t->encode("ab<s>ab", false, true), (Ids{6, 14, 6}));
  EXPECT_EQ(t->encode("\xff\xfe", false, true), (Ids{1, 0}));   // invalid UTF-8 reads as U+FFFD, unknown
  EXPECT_EQ(t->token_bytes(6), " ab");
}

TEST(UnigramTest, MetaspaceVariants) {
  // split false: the whole text is one word (same ids here).
  auto whole = unigram_tokenizer(unigram_json(metaspace("always", false)));
  ASSERT_NE(whole, nullptr);
  EXPECT_EQ(whole->encode("abc ab", false, true), (Ids{6, 7, 6}));
  // first: only text at the start of the input gets the prefix.
  auto first = unigram_tokenizer(unigram_json(metaspace("first", true)));
  ASSERT_NE(first, nullptr);
  EXPECT_EQ(first->encode("ab<s>ab", false, true), (Ids{6, 14, 5}));
  EXPECT_EQ(first->encode("<s>ab", false, true), (Ids{14, 5}));
  // never
  auto never = unigram_tokenizer(unigram_json(metaspace("never", true)));
  ASSERT_NE(never, nullptr);
  EXPECT_EQ(never->encode("abc ab", false, true), (Ids{8, 6}));
  EXPECT_EQ(never->encode("b\u2581a", false, true), (Ids{4, 2}));
  EXPECT_EQ(never->encode("xy", false, true), (Ids{0}));
  // The older form: add_prefix_space false is "never".
  auto legacy = unigram_tokenizer(unigram_json(R"({"type":"Metaspace","replacement":"▁","add_prefix_space":false})"));
  ASSERT_NE(legacy, nullptr);
  EXPECT_EQ(legacy->encode("abc ab", false, true), (Ids{8, 6}));
  // No pre-tokenizer: spaces stay spaces (unknown here).
  auto none = unigram_tokenizer(unigram_json("null"));
  ASSERT_NE(none, nullptr);
  EXPECT_EQ(none->encode("a b c", false, true), (Ids{3, 0, 4, 0, 7}));
  EXPECT_EQ(none->encode("ab  c", false, true), (Ids{5, 0, 7}));
  EXPECT_EQ(none->encode("AbÉ x", false, true), (Ids{0, 4, 0}));
}

TEST(UnigramTest, ByteFallbackAndNormalizers) {
  auto fb = unigram_tokenizer(unigram_json(metaspace("always", true), "null", true));
  ASSERT_NE(fb, nullptr);
  EXPECT_EQ(fb->encode("☃a", false, true), (Ids{1, 11, 12, 13, 3}));
  EXPECT_EQ(fb->token_bytes(11), "\xE2");
  EXPECT_EQ(fb->encode("xy", false, true), (Ids{1, 0}));  // no byte pieces for x, y: <unk>
  const std::string norm = R"({"type":"Sequence","normalizers":[{"type":"NFKD"},{"type":"StripAccents"},{"type":"Lowercase"},)"
                           R"({"type":"Replace","pattern":{"String":"x"},"content":"ab"},)"
                           R"({"type":"Replace","pattern":{"Regex":"\\s+"},"content":" "},)"
                           R"({"type":"Strip","strip_left":true,"strip_right":true},{"type":"Prepend","prepend":"c"}]})";
  auto n = unigram_tokenizer(unigram_json(metaspace("always", true), norm));
  ASSERT_NE(n, nullptr);
  EXPECT_EQ(n->encode("xy", false, true), (Ids{9, 5, 0}));
  EXPECT_EQ(n->encode("AbÉ x", false, true), (Ids{9, 5, 0, 6}));
  EXPECT_EQ(n->encode("ab  c", false, true), (Ids{9, 5, 9}));
  EXPECT_EQ(n->encode(" ", false, true), (Ids{}));
  // A Replace that grows the text cannot grow it without bound.
  std::string grow = R"({"type":"Sequence","normalizers":[)";
  for (int i = 0; i < 40; ++i) grow += std::string(i ? "," : "") + R"({"type":"Replace","pattern":{"String":"a"},"content":"aa"})";
  auto g = unigram_tokenizer(unigram_json(metaspace("always", true), grow + "]}"));
  ASSERT_NE(g, nullptr);
  EXPECT_LE(g->encode("aaaa", false, true).size(), 8u * 4 + 4096 + 1);
  // Nor one that makes every run of spaces 256 characters (the step now
  // stops at the bound as it goes: 4 million runs made 4 GB before the cut
  // at its end, which this does not see).
  const std::string collapse = R"({"type":"Replace","pattern":{"Regex":"\\s+"},"content":")" + std::string(256, 'a') + R"("})";
  auto c = unigram_tokenizer(unigram_json(metaspace("never", true), collapse));
  ASSERT_NE(c, nullptr);
  std::string spaced;
  for (int i = 0; i < 20000; ++i) spaced += "b ";
  EXPECT_LE(c->encode(spaced, false, true).size(), 8u * spaced.size() + 4096 + 1);
}

TEST(UnigramTest, HostileTokenizerJsonIsRefused) {
  const std::string ms = metaspace("always", true);
  struct Case {
    std::string json;
    StatusCode code;
    const char* says;
  };
  const std::vector<Case> cases = {
      {unigram_json(ms, R"({"type":"Precompiled","precompiled_charsmap":""})"), StatusCode::kInvalidArgument, "Precompiled"},
      {unigram_json(ms, R"({"type":"Replace","pattern":{"Regex":"a|b"},"content":""})"), StatusCode::kInvalidArgument, "a|b"},
      {unigram_json(R"({"type":"ByteLevel"})"), StatusCode::kInvalidArgument, "ByteLevel"},
      {unigram_json(ms, R"({"type":"Replace","pattern":{"String":""},"content":"x"})"), StatusCode::kVerificationFailed, "empty"},
      {unigram_json(ms, R"({"type":"Replace","pattern":{},"content":"x"})"), StatusCode::kVerificationFailed, "Replace"},
      {unigram_json(ms, "[1,2]"), StatusCode::kVerificationFailed, "normalizer"},
      {unigram_json(R"({"type":"Metaspace","replacement":"ab"})"), StatusCode::kVerificationFailed, "one character"},
      {unigram_json(R"({"type":"Metaspace","prepend_scheme":"sometimes"})"), StatusCode::kVerificationFailed, "prepend_scheme"},
      {unigram_json(ms, "null", false, R"(,["▁a",-1])"), StatusCode::kVerificationFailed, "repeats"},
      {unigram_json(ms, "null", false, R"(,["",-1])"), StatusCode::kVerificationFailed, "empty"},
      {unigram_json(ms, "null", false, R"(,["q",1e999])"), StatusCode::kVerificationFailed, ""},
      {unigram_json(ms, "null", false, R"(,["q","-1"])"), StatusCode::kVerificationFailed, "[piece, score]"},
      {unigram_json(ms, "null", false, R"(,["q"])"), StatusCode::kVerificationFailed, "[piece, score]"},
      {unigram_json(ms, "null", false, R"(,7)"), StatusCode::kVerificationFailed, "[piece, score]"},
      {R"({"model":{"type":"Unigram","unk_id":5,"vocab":[["a",-1]]}})", StatusCode::kVerificationFailed, "unk_id"},
      {R"({"model":{"type":"Unigram","unk_id":-1,"vocab":[["a",-1]]}})", StatusCode::kVerificationFailed, "unk_id"},
      {R"({"model":{"type":"Unigram","vocab":[]}})", StatusCode::kVerificationFailed, "vocab"},
      {R"({"model":{"type":"Unigram","vocab":{"a":1}}})", StatusCode::kVerificationFailed, "vocab"},
      {R"({"model":{"type":"Unigram","vocab":[["a",-1]],"byte_fallback":1}})", StatusCode::kVerificationFailed, "byte_fallback"},
      {R"({"added_tokens":[{"id":0,"content":"b"}],"model":{"type":"Unigram","vocab":[["a",-1]]}})", StatusCode::kVerificationFailed, "differs"},
      {R"({"added_tokens":[{"id":9,"content":"b"}],"model":{"type":"Unigram","vocab":[["a",-1]]}})", StatusCode::kVerificationFailed, "range"},
      {R"({"model":{"type":"BPE","vocab":{}}})", StatusCode::kInvalidArgument, "BPE"},
      {R"({"model":{"type":"Unigram"}})", StatusCode::kVerificationFailed, "vocab"},
      {"[", StatusCode::kVerificationFailed, "JSON"},
      // A value of the wrong type where the reader asks for a default
      // (nlohmann's value() throws): refused, not an exception.
      {R"({"normalizer":{"type":1,"lowercase":true},"model":{"type":"WordPiece","vocab":{"a":0}}})", StatusCode::kVerificationFailed, "wrong type"},
      {R"({"normalizer":{"type":"BertNormalizer","lowercase":"yes"},"model":{"type":"WordPiece","vocab":{"a":0}}})", StatusCode::kVerificationFailed, "wrong type"},
      {R"({"normalizer":{"type":"BertNormalizer","lowercase":true},"model":{"type":"WordPiece","vocab":{"a":0},"continuing_subword_prefix":5}})", StatusCode::kVerificationFailed, "wrong type"},
      {R"({"normalizer":{"type":"BertNormalizer","lowercase":true},"model":{"type":"WordPiece","vocab":{"a":0},"max_input_chars_per_word":"x"}})", StatusCode::kVerificationFailed, "wrong type"},
      {R"({"normalizer":{"type":"BertNormalizer","lowercase":true},"added_tokens":[{"id":0,"content":"a","special":"y"}],"model":{"type":"WordPiece","vocab":{"a":0}}})", StatusCode::kVerificationFailed, "wrong type"},
  };
  for (const Case& c : cases) {
    Result<std::unique_ptr<Tokenizer>> t = invalid_argument("unset");
    auto spec = spec_from_hf_json(c.json);
    if (spec.is_ok()) t = Tokenizer::from_spec(std::move(*spec));
    const Status st = spec.is_ok() ? t.status() : spec.status();
    ASSERT_FALSE(st.is_ok()) << c.json;
    EXPECT_EQ(st.code(), c.code) << c.json << ": " << st.to_string();
    EXPECT_NE(st.message().find(c.says), std::string::npos) << st.message();
  }
  // Non-finite scores cannot come from JSON; a spec built by hand is checked too.
  auto spec = spec_from_hf_json(unigram_json(ms));
  ASSERT_TRUE(spec.is_ok());
  spec->piece_scores[3] = std::nan("");
  auto t = Tokenizer::from_spec(*spec);
  ASSERT_FALSE(t.is_ok());
  EXPECT_EQ(t.status().code(), StatusCode::kVerificationFailed);
  spec->piece_scores[3] = -1;
  spec->piece_scores.pop_back();
  EXPECT_FALSE(Tokenizer::from_spec(*spec).is_ok());
  spec->piece_scores.push_back(-1);
  ASSERT_TRUE(Tokenizer::from_spec(*spec).is_ok());
  spec->tokens[3] = "\xff";  // JSON cannot carry invalid UTF-8; a hand-made spec can
  EXPECT_FALSE(Tokenizer::from_spec(*spec).is_ok());
  // Random damage never crashes, and whatever loads encodes in range.
  std::mt19937 rng(5);
  const std::string good = unigram_json(ms, R"({"type":"BertNormalizer","lowercase":true})", true);
  for (int k = 0; k < 300; ++k) {
    std::string j = good;
    for (int f = 0; f < 3; ++f) j[rng() % j.size()] = static_cast<char>(rng());
    auto sp = spec_from_hf_json(j);
    if (!sp.is_ok()) continue;
    auto tok = Tokenizer::from_spec(std::move(*sp));
    if (!tok.is_ok()) continue;
    for (std::int32_t id : (*tok)->encode("Ab c\xE2\x98\x83 xyz <s>", true, true)) {
      EXPECT_GE(id, 0);
      EXPECT_LT(id, (*tok)->n_vocab());
    }
  }
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
