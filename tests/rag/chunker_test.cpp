// chunk_text: every chunk fits the token budget, is a verbatim slice of the
// input at its offsets, prefers sentence ends, overlaps its predecessor, and
// survives text with no sentence or word boundaries at all.
#include <gtest/gtest.h>

#include <cctype>
#include <chrono>
#include <string>

#include "airlock/rag/chunker.h"
#include "rag_test_util.h"

namespace airlock::rag {
namespace {

const testing::HashEmbedder kWords;  // one token per whitespace-separated word
const TokenCounter kCount = [](std::string_view t) { return kWords.count_tokens(t); };

bool valid_utf8(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    const std::size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (std::size_t k = 1; k < n; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    i += n;
  }
  return true;
}

std::string sentence(int i) {
  return "Sentence number " + std::to_string(i) + " talks about wing flutter and boundary layers.";
}

TEST(ChunkerTest, ChunksAreSlicesWithinBudgetEndingAtSentences) {
  std::string text;
  for (int i = 0; i < 60; ++i) text += sentence(i) + (i % 7 == 6 ? "\n\n" : " ");
  ChunkOptions o;
  o.max_tokens = 40;
  o.overlap_tokens = 10;
  Result<std::vector<TextChunk>> r = chunk_text(text, kCount, o);
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  ASSERT_GT(r->size(), 10u);
  std::size_t covered_to = 0;
  for (std::size_t i = 0; i < r->size(); ++i) {
    const TextChunk& c = (*r)[i];
    EXPECT_EQ(c.text, text.substr(c.begin, c.end - c.begin));
    EXPECT_LE(c.n_tokens, 40u);
    EXPECT_EQ(c.n_tokens, kCount(c.text));
    EXPECT_EQ(c.text.back(), '.') << c.text;  // whole sentences only
    EXPECT_LE(c.begin, covered_to + 1) << "gap before chunk " << i;
    if (i > 0) {
      EXPECT_LT(c.begin, (*r)[i - 1].end) << "no overlap with the previous chunk";
      EXPECT_GT(c.begin, (*r)[i - 1].begin) << "no progress";
    }
    covered_to = std::max(covered_to, c.end);
  }
  EXPECT_EQ(covered_to, text.find_last_of('.') + 1);  // everything but trailing space
}

TEST(ChunkerTest, LongSentencesAndWordsAreCut) {
  std::string text = "Short one. ";
  for (int i = 0; i < 500; ++i) text += "word" + std::to_string(i) + " ";
  text += "end. ";
  std::string word;
  for (int i = 0; i < 3000; ++i) word += "\xc3\xa9";  // é: a 6000-byte word
  text += word + " tail.";
  ChunkOptions o;
  o.max_tokens = 50;
  o.overlap_tokens = 5;
  Result<std::vector<TextChunk>> r = chunk_text(text, kCount, o);
  ASSERT_TRUE(r.is_ok());
  std::size_t bytes_of_word = 0;
  for (const TextChunk& c : *r) {
    EXPECT_LE(c.n_tokens, 50u);
    EXPECT_LE(c.text.size(), 50u * 32u);
    EXPECT_TRUE(valid_utf8(c.text)) << "cut inside a character at " << c.begin;
    EXPECT_EQ(c.text, text.substr(c.begin, c.end - c.begin));
    if (c.text.find("\xc3\xa9\xc3\xa9") != std::string::npos) bytes_of_word += c.text.size();
  }
  EXPECT_GE(bytes_of_word, word.size());
}

TEST(ChunkerTest, AHugeLineWithoutBoundariesIsBoundedAndFast) {
  const std::string text(20u << 20, 'x');  // 20 MB, one "token" to a word counter
  ChunkOptions o;
  o.max_tokens = 256;
  o.overlap_tokens = 0;
  const auto t0 = std::chrono::steady_clock::now();
  Result<std::vector<TextChunk>> r = chunk_text(text, kCount, o);
  ASSERT_TRUE(r.is_ok());
  std::size_t total = 0;
  for (const TextChunk& c : *r) {
    EXPECT_LE(c.text.size(), 256u * 32u);
    total += c.text.size();
  }
  EXPECT_EQ(total, text.size());
  // Not a timing assertion on the product: a quadratic loop would take hours.
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(60));
}

// Units the tokenizer counts as no tokens (the BERT tokenizer drops U+3000,
// zero-width spaces and combining marks) must not all be repeated as
// overlap: that made one chunk of ~8 KiB per 3-byte line, so a 1 MB upload
// became ~2 GB of chunks. The overlap is bounded in bytes too.
TEST(ChunkerTest, ZeroTokenUnitsDoNotMultiplyTheText) {
  const TokenCounter ascii_words = [](std::string_view t) {
    std::size_t n = 0;
    for (std::size_t i = 0; i < t.size(); ++i)
      if (std::isalnum(static_cast<unsigned char>(t[i])) && (i == 0 || !std::isalnum(static_cast<unsigned char>(t[i - 1]))))
        ++n;
    return n;
  };
  std::string text = "An opening sentence.\n";
  for (int i = 0; i < 20000; ++i) text += "\xe3\x80\x80\n";  // U+3000, a line of no tokens
  text += "A closing sentence.";
  ChunkOptions o;  // 256 tokens, 32 of overlap
  Result<std::vector<TextChunk>> r = chunk_text(text, ascii_words, o);
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  std::size_t total = 0, covered_to = 0;
  for (const TextChunk& c : *r) {
    EXPECT_EQ(c.text, text.substr(c.begin, c.end - c.begin));
    EXPECT_LE(c.begin, covered_to + 1);
    covered_to = std::max(covered_to, c.end);
    total += c.text.size();
  }
  EXPECT_EQ(covered_to, text.size());
  // Each chunk repeats at most 32 * 32 bytes of the one before it.
  EXPECT_LE(total, text.size() + r->size() * 32 * 32) << r->size() << " chunks";
  EXPECT_LE(r->size(), text.size() / (256 * 32 - 32 * 32) + 2);
}

// The chunk count is capped while chunking, before anything is embedded.
TEST(ChunkerTest, TooManyChunksIsAnErrorBeforeAnyIsReturned) {
  std::string text;
  for (int i = 0; i < 100; ++i) text += sentence(i) + " ";
  ChunkOptions o;
  o.max_tokens = 20;
  o.overlap_tokens = 0;
  Result<std::vector<TextChunk>> all = chunk_text(text, kCount, o);
  ASSERT_TRUE(all.is_ok());
  o.max_chunks = all->size();
  EXPECT_TRUE(chunk_text(text, kCount, o).is_ok());
  o.max_chunks = all->size() - 1;
  Result<std::vector<TextChunk>> capped = chunk_text(text, kCount, o);
  ASSERT_EQ(capped.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(capped.status().message().find("chunks"), std::string::npos) << capped.status().to_string();
}

TEST(ChunkerTest, EmptyTextAndBadOptions) {
  ChunkOptions o;
  Result<std::vector<TextChunk>> empty = chunk_text(" \n\n\t ", kCount, o);
  ASSERT_TRUE(empty.is_ok());
  EXPECT_TRUE(empty->empty());
  o.max_tokens = 0;
  EXPECT_EQ(chunk_text("a b", kCount, o).status().code(), StatusCode::kInvalidArgument);
  o.max_tokens = 10;
  o.overlap_tokens = 10;
  EXPECT_EQ(chunk_text("a b", kCount, o).status().code(), StatusCode::kInvalidArgument);
}

TEST(ChunkerTest, OneShortTextIsOneChunk) {
  Result<std::vector<TextChunk>> r = chunk_text("  Hello there. How are you?  ", kCount, ChunkOptions{});
  ASSERT_TRUE(r.is_ok());
  ASSERT_EQ(r->size(), 1u);
  EXPECT_EQ((*r)[0].text, "Hello there. How are you?");
  EXPECT_EQ((*r)[0].begin, 2u);
  EXPECT_EQ((*r)[0].n_tokens, 5u);
}

}  // namespace
}  // namespace airlock::rag
