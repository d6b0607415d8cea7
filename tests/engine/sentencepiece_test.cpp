// SentencePiece's Unigram tokenizer with its precompiled charsmap ("t5" in
// GGUF: T5, XLM-RoBERTa), against the sentencepiece library's own ids
// (sentencepiece/make_vectors.py), and on hostile charsmaps.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "airlock/common/json.h"

#include "airlock/engine/gguf.h"
#include "airlock/engine/tokenizer.h"
#include "gguf_writer.h"
#include "sentencepiece_vocab.h"

namespace airlock::engine {
namespace {

using testing::decode_base64;
using testing::model_named;
using testing::spec_of;
using testing::vectors;

std::unique_ptr<Tokenizer> t5(const std::string& name) {
  auto t = Tokenizer::from_spec(spec_of(model_named(name)));
  EXPECT_TRUE(t.is_ok()) << t.status().message();
  return t.is_ok() ? std::move(*t) : nullptr;
}

TEST(SentencePieceUnigram, AgreesWithSentencepieceOnEveryVector) {
  const nlohmann::json& v = vectors();
  ASSERT_GT(decode_base64(v.at("charsmaps").at("nmt_nfkc")).size(), 100000u);
  const auto& texts = v.at("texts");
  ASSERT_GT(texts.size(), 200u);
  int models = 0;
  for (const auto& m : v.at("models")) {
    auto t = Tokenizer::from_spec(spec_of(m));
    ASSERT_TRUE(t.is_ok()) << t.status().message();
    int failed = 0;
    for (std::size_t i = 0; i < texts.size(); ++i) {
      const std::string text = texts[i];
      const std::vector<std::int32_t> want = m.at("ids")[i];
      const std::vector<std::int32_t> got = (*t)->encode(text, /*add_special=*/false, /*parse_special=*/false);
      if (got != want && ++failed <= 5)
        ADD_FAILURE() << m.at("name") << ": " << nlohmann::json(text).dump() << " gives " << nlohmann::json(got).dump()
                      << ", sentencepiece " << nlohmann::json(want).dump();
    }
    EXPECT_EQ(failed, 0) << m.at("name") << ": " << failed << " of " << texts.size() << " differ";
    ++models;
  }
  EXPECT_EQ(models, 4);
}

// The vectors do cover what they are for: the charsmap changes the ids of
// compatibility characters, and unknown characters appear.
TEST(SentencePieceUnigram, VectorsExerciseTheCharsmapAndUnknowns) {
  auto nfkc = t5("nfkc");
  ASSERT_NE(nfkc, nullptr);
  TokenizerSpec bare = spec_of(model_named("nfkc"));
  bare.precompiled_charsmap.clear();
  auto plain = Tokenizer::from_spec(bare);
  ASSERT_TRUE(plain.is_ok());
  const std::string wide = "\xEF\xBD\x86\xEF\xBD\x8C\xEF\xBD\x8F\xEF\xBD\x97 \xEF\xAC\x81" "eld";  // ｆｌｏｗ ﬁeld
  EXPECT_EQ(nfkc->encode(wide, false, false), nfkc->encode("flow field", false, false));
  EXPECT_NE((*plain)->encode(wide, false, false), nfkc->encode("flow field", false, false));
  const std::int32_t unk = model_named("nfkc").at("unk");
  int with_unk = 0;
  for (const auto& ids : model_named("nfkc").at("ids"))
    for (std::int32_t id : ids.get<std::vector<std::int32_t>>()) with_unk += id == unk;
  EXPECT_GT(with_unk, 20);
}

TEST(SentencePieceUnigram, RunsOfUnknownCharactersAreOneToken) {
  auto t = t5("nfkc");
  ASSERT_NE(t, nullptr);
  const std::int32_t unk = model_named("nfkc").at("unk");
  // Hexagram symbols are not in the training text.
  const std::vector<std::int32_t> one = t->encode("\xE4\xB7\x80", false, false);
  const std::vector<std::int32_t> three = t->encode("\xE4\xB7\x80\xE4\xB7\x81\xE4\xB7\x82", false, false);
  ASSERT_FALSE(one.empty());
  EXPECT_EQ(one.back(), unk);
  EXPECT_EQ(one, three);
}

// A malformed byte reads as U+FFFD, one per byte, as sentencepiece has it.
TEST(SentencePieceUnigram, MalformedBytesReadAsReplacementCharacters) {
  auto t = t5("identity");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->encode("flow\xFF" "field", false, false), t->encode("flow\xEF\xBF\xBD" "field", false, false));
  EXPECT_EQ(t->encode("a\xC3", false, false), t->encode("a\xEF\xBF\xBD", false, false));
}

// A user-defined piece in the text is its own token; the text around it is
// encoded on its own, each part with its dummy prefix (llama.cpp and Hugging
// Face's XLM-R tokenizer alike).
TEST(SentencePieceUnigram, UserDefinedPiecesSplitTheText) {
  auto t = t5("nfkc");
  ASSERT_NE(t, nullptr);
  const std::int32_t sep = t->token_id("<sep2>");
  ASSERT_GE(sep, 0);
  std::vector<std::int32_t> want = t->encode("the flow", false, false);
  want.push_back(sep);
  for (std::int32_t id : t->encode("over the wing", false, false)) want.push_back(id);
  EXPECT_EQ(t->encode("the flow<sep2>over the wing", false, false), want);
}

TEST(SentencePieceUnigram, DecodingGivesTheNormalizedText) {
  auto t = t5("nfkc");
  ASSERT_NE(t, nullptr);
  EXPECT_TRUE(t->strips_leading_space());
  std::string text;
  for (std::int32_t id : t->encode("  the   boundary layer  ", false, false)) text += t->token_bytes(id);
  EXPECT_EQ(text, " the boundary layer");
}

TokenizerSpec tiny_t5() {
  TokenizerSpec s;
  s.model = "t5";
  s.tokens = {"<unk>", "\xE2\x96\x81", "a", "b", "\xE2\x96\x81" "b", "ab"};
  s.scores = {0, -1, -2, -2, -1.5f, -3};
  s.types = {TokenType::kUnknown, TokenType::kNormal, TokenType::kNormal, TokenType::kNormal, TokenType::kNormal,
             TokenType::kNormal};
  s.unk = 0;
  return s;
}

std::string le32(std::uint32_t v) {
  std::string s(4, '\0');
  for (int i = 0; i < 4; ++i) s[static_cast<std::size_t>(i)] = static_cast<char>((v >> (8 * i)) & 0xFF);
  return s;
}

// The layout llama.cpp's converter writes for XLM-RoBERTa: <s> <pad> </s>
// <unk> first (fairseq's ids), the pieces after, then <mask> and unused
// [PAD] pieces at -10000. Control and unknown pieces written in the text
// are text, unused pieces do not lower the unknown score, and the ids are
// the file's: the same pieces as sentencepiece, renumbered.
TEST(SentencePieceUnigram, XlmRobertaLayoutEncodesAsSentencepiece) {
  const nlohmann::json& m = model_named("nfkc");
  const TokenizerSpec spm = spec_of(m);
  TokenizerSpec s;
  s.model = "t5";
  auto add = [&](const std::string& piece, float score, TokenType type) {
    s.tokens.push_back(piece);
    s.scores.push_back(score);
    s.types.push_back(type);
  };
  add("<s>", 0, TokenType::kControl);
  add("<pad>", 0, TokenType::kControl);
  add("</s>", 0, TokenType::kControl);
  add("<unk>", 0, TokenType::kUnknown);
  std::vector<std::int32_t> renumber(spm.tokens.size(), -1);
  renumber[static_cast<std::size_t>(spm.unk)] = 3;
  for (std::size_t i = 0; i < spm.tokens.size(); ++i)
    if (spm.types[i] == TokenType::kNormal || spm.types[i] == TokenType::kUserDefined) {
      renumber[i] = static_cast<std::int32_t>(s.tokens.size());
      add(spm.tokens[i], spm.scores[i], spm.types[i]);
    }
  add("<mask>", 0, TokenType::kUserDefined);
  for (int k = 0; k < 4; ++k) add("[PAD" + std::to_string(k) + "]", -10000, TokenType::kUnused);
  s.unk = 3;
  s.bos = 0;
  s.eos = 2;
  s.add_bos = s.add_eos = true;
  s.add_space_prefix = spm.add_space_prefix;
  s.remove_extra_whitespaces = spm.remove_extra_whitespaces;
  s.precompiled_charsmap = spm.precompiled_charsmap;
  auto t = Tokenizer::from_spec(s);
  ASSERT_TRUE(t.is_ok()) << t.status().message();
  int failed = 0, with_markup = 0;
  for (std::size_t i = 0; i < vectors().at("texts").size(); ++i) {
    const std::string text = vectors().at("texts")[i];
    if (text.find("<mask>") != std::string::npos) continue;  // user-defined: split out first (another test)
    with_markup += text.find("<s>") != std::string::npos || text.find("[PAD0]") != std::string::npos;
    std::vector<std::int32_t> want = {0};
    for (std::int32_t id : m.at("ids")[i].get<std::vector<std::int32_t>>()) want.push_back(renumber[static_cast<std::size_t>(id)]);
    want.push_back(2);
    const std::vector<std::int32_t> got = (*t)->encode(text, /*add_special=*/true, /*parse_special=*/false);
    if (got != want && ++failed <= 5)
      ADD_FAILURE() << nlohmann::json(text).dump() << " gives " << nlohmann::json(got).dump() << ", want "
                    << nlohmann::json(want).dump();
  }
  EXPECT_EQ(failed, 0);
  EXPECT_EQ(with_markup, 2);
}

TEST(SentencePieceUnigram, ARepeatedPieceIsEmittedAsTheLastOfItsIds) {
  TokenizerSpec s = tiny_t5();
  s.tokens.push_back("ab");
  s.scores.push_back(-3);
  s.types.push_back(TokenType::kNormal);
  auto t = Tokenizer::from_spec(s);
  ASSERT_TRUE(t.is_ok()) << t.status().message();
  EXPECT_EQ((*t)->encode("ab", false, false), (std::vector<std::int32_t>{1, 6}));
}

// Bounds whatever the file says: a piece longer than kMaxPieceBytes is never
// a candidate (Viterbi's steps a byte), a replacement longer than
// kMaxReplacement is refused.
TEST(SentencePieceUnigram, OverlongPiecesAndReplacementsAreBounded) {
  TokenizerSpec s = tiny_t5();
  s.tokens.push_back(std::string(300, 'a'));
  s.scores.push_back(0);
  s.types.push_back(TokenType::kNormal);
  auto t = Tokenizer::from_spec(s);
  ASSERT_TRUE(t.is_ok()) << t.status().message();
  const std::vector<std::int32_t> ids = (*t)->encode(std::string(300, 'a'), false, false);
  EXPECT_EQ(ids.size(), 301u);  // the dummy prefix, then each 'a' alone
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 6), 0);
  // A charsmap whose one rule ('a') gives 300 spaces.
  std::vector<std::uint32_t> units(128, 0);
  units[97] = (97u << 10) | (1u << 8) | 97u;
  std::string blob = le32(static_cast<std::uint32_t>(units.size() * 4));
  for (std::uint32_t u : units) blob += le32(u);
  TokenizerSpec r = tiny_t5();
  r.precompiled_charsmap = blob + std::string(300, ' ') + std::string(1, '\0');
  auto refused = Tokenizer::from_spec(r);
  ASSERT_FALSE(refused.is_ok());
  EXPECT_NE(refused.status().message().find("a replacement longer than 256 bytes"), std::string::npos)
      << refused.status().message();
  r.precompiled_charsmap = blob + std::string(256, ' ') + std::string(1, '\0');
  EXPECT_TRUE(Tokenizer::from_spec(r).is_ok());
}

// ------------------------------------------------------------------ GGUF

std::string t5_gguf(const nlohmann::json& m, bool with_ids, GgufValueType charsmap_type = GgufValueType::kU8) {
  testing::GgufWriter w;
  w.set_string("general.architecture", "bert");
  testing::set_t5_vocab(w, m, with_ids, charsmap_type);
  return w.bytes();
}

std::unique_ptr<GgufFile> parsed(const std::string& bytes) {
  auto f = GgufFile::parse(std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()));
  EXPECT_TRUE(f.is_ok()) << f.status().message();
  return f.is_ok() ? std::move(*f) : nullptr;
}

TEST(SentencePieceUnigram, FromGgufEncodesAsSentencepiece) {
  const nlohmann::json& v = vectors();
  for (const char* name : {"nfkc", "keep_ws", "no_prefix"}) {
    const nlohmann::json& m = model_named(name);
    const std::string bytes = t5_gguf(m, /*with_ids=*/true);
    auto f = parsed(bytes);
    ASSERT_NE(f, nullptr);
    auto t = Tokenizer::from_gguf(*f);
    ASSERT_TRUE(t.is_ok()) << t.status().message();
    EXPECT_TRUE((*t)->add_bos());
    EXPECT_TRUE((*t)->add_eos());
    for (std::size_t i = 0; i < v.at("texts").size(); i += 7) {
      std::vector<std::int32_t> want = m.at("ids")[i];
      want.insert(want.begin(), 1);
      want.push_back(2);
      EXPECT_EQ((*t)->encode(v.at("texts")[i].get<std::string>(), true, false), want) << name << " text " << i;
    }
  }
}

// Without the keys: llama.cpp's UGM defaults (EOS 1 added, unknown 2, no BOS).
TEST(SentencePieceUnigram, FromGgufDefaults) {
  const std::string bytes = t5_gguf(model_named("nfkc"), /*with_ids=*/false);  // outlives the file
  auto f = parsed(bytes);
  ASSERT_NE(f, nullptr);
  auto t = Tokenizer::from_gguf(*f);
  ASSERT_TRUE(t.is_ok()) << t.status().message();
  EXPECT_FALSE((*t)->add_bos());
  EXPECT_TRUE((*t)->add_eos());
  EXPECT_EQ((*t)->eos(), 1);
  const std::vector<std::int32_t> ids = (*t)->encode("\xE4\xB7\x80", true, false);
  ASSERT_EQ(ids.size(), 3u);  // ▁, the unknown run, EOS
  EXPECT_EQ(ids[1], 2);
  EXPECT_EQ(ids[2], 1);
}

TEST(SentencePieceUnigram, FromGgufRefusesACharsmapThatIsNotBytes) {
  const std::string bytes = t5_gguf(model_named("nfkc"), true, GgufValueType::kI32);
  auto f = parsed(bytes);
  ASSERT_NE(f, nullptr);
  auto t = Tokenizer::from_gguf(*f);
  ASSERT_FALSE(t.is_ok());
  EXPECT_NE(t.status().message().find("precompiled_charsmap is not an array of bytes"), std::string::npos);
}

// ------------------------------------------------------------------ hostile charsmaps

TEST(SentencePieceUnigram, RefusesMalformedCharsmapHeaders) {
  for (const std::string& blob : {std::string("\x01\x00\x00", 3), le32(4), le32(8) + "xxxx", le32(0) + "ab",
                                  le32(6) + std::string(8, 'x'), le32(0xFFFFFFFF) + "abcdefgh"}) {
    TokenizerSpec s = tiny_t5();
    s.precompiled_charsmap = blob;
    auto t = Tokenizer::from_spec(s);
    ASSERT_FALSE(t.is_ok()) << nlohmann::json(blob).dump();
    EXPECT_EQ(t.status().code(), StatusCode::kVerificationFailed);
    EXPECT_NE(t.status().message().find("precompiled_charsmap"), std::string::npos) << t.status().message();
  }
}

// A table that matches 'a' at every depth, each prefix a rule giving "b":
// rules are capped at kMaxCharsmapRule bytes, so a long run of 'a' becomes
// one "b" per 256 bytes, in work linear in the text.
TEST(SentencePieceUnigram, ACyclicCharsmapMatchesAtMost256Bytes) {
  // Unit 0 (root): offset 0. Unit 'a' (97): label 'a', has a leaf, offset
  // 97, so the walk goes back to 0 and reads the leaf value there... which
  // is unit 0 itself: value 0 (its low 31 bits), the pool's first string.
  std::vector<std::uint32_t> units(128, 0);
  units[0] = 0;                          // offset 0, value 0
  units[97] = (97u << 10) | (1u << 8) | 97u;
  std::string blob = le32(static_cast<std::uint32_t>(units.size() * 4));
  for (std::uint32_t u : units) blob += le32(u);
  blob += std::string("b\0", 2);
  TokenizerSpec s = tiny_t5();
  s.precompiled_charsmap = blob;
  auto t = Tokenizer::from_spec(s);
  ASSERT_TRUE(t.is_ok()) << t.status().message();
  const std::int32_t b = 3, space_b = 4;
  EXPECT_EQ((*t)->encode("a", false, false), (std::vector<std::int32_t>{space_b}));
  EXPECT_EQ((*t)->encode(std::string(1024, 'a'), false, false), (std::vector<std::int32_t>{space_b, b, b, b}));
  EXPECT_EQ((*t)->encode(std::string(1025, 'a'), false, false), (std::vector<std::int32_t>{space_b, b, b, b, b}));
  // A value past the replacements is no rule: 'a' stays 'a'.
  units[0] = 1000;
  blob = le32(static_cast<std::uint32_t>(units.size() * 4));
  for (std::uint32_t u : units) blob += le32(u);
  blob += std::string("b\0", 2);
  s.precompiled_charsmap = blob;
  auto t2 = Tokenizer::from_spec(s);
  ASSERT_TRUE(t2.is_ok());
  EXPECT_EQ((*t2)->encode("ab", false, false), (std::vector<std::int32_t>{1, 5}));
}

// Random tables behind a valid header: encoding stays in bounds and gives
// ids of the vocabulary.
TEST(SentencePieceUnigram, RandomCharsmapsStayInBounds) {
  std::mt19937 rng(7);
  for (int round = 0; round < 200; ++round) {
    const std::size_t n_units = 1 + rng() % 300;
    std::string blob = le32(static_cast<std::uint32_t>(n_units * 4));
    for (std::size_t u = 0; u < n_units; ++u) {
      std::uint32_t v = static_cast<std::uint32_t>(rng());
      if (rng() % 2) v = (v & ~0x800000FFu) | (rng() % 4 == 0 ? 'a' : 'b');  // labels that match
      blob += le32(v);
    }
    const std::size_t pool = 1 + rng() % 64;
    for (std::size_t i = 0; i < pool; ++i) blob.push_back(static_cast<char>(rng() % 4 == 0 ? 0 : rng()));
    TokenizerSpec s = tiny_t5();
    s.precompiled_charsmap = blob;
    s.remove_extra_whitespaces = rng() % 2;
    auto t = Tokenizer::from_spec(s);
    ASSERT_TRUE(t.is_ok()) << t.status().message();
    for (const char* text : {"ab ba  aab", "aaaaaaaaaaaaaaaaaaaaaaaa", "\xFF\xFE a \xE2\x96\x81 b", ""})
      for (std::int32_t id : (*t)->encode(text, false, false)) ASSERT_TRUE(id >= 0 && id < (*t)->n_vocab());
  }
}

}  // namespace
}  // namespace airlock::engine
