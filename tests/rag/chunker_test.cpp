// chunk_text: every chunk fits the token budget, is a verbatim slice of the
// input at its offsets, prefers sentence ends (Latin and CJK), overlaps its
// predecessor, fills the budget, and survives text with no sentence or word
// boundaries at all.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <string>
#include <vector>

#include "airlock/common/utf8.h"
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

// Counts as a BERT tokenizer roughly does: every CJK character (Han, kana,
// CJK punctuation, fullwidth forms) and every ASCII punctuation mark is a
// token; any other run of characters between them and white space (a Latin
// word, a number, a Korean word) is one.
std::size_t cjk_tokens(std::string_view t) {
  std::size_t n = 0;
  bool in_word = false;
  for (std::size_t i = 0, len = 0; i < t.size(); i += len) {
    const char32_t c = next_code_point(t, i, &len);
    const bool space = c == ' ' || c == '\n' || c == '\t';
    const bool alone = (c >= 0x2E80 && c <= 0x9FFF) || (c >= 0xF900 && c <= 0xFAFF) || (c >= 0xFF00 && c <= 0xFFEF) ||
                       (c >= 0x2000 && c <= 0x206F) || (c < 0x80 && std::ispunct(static_cast<int>(c)));
    if (!space && !alone && !in_word) ++n;
    if (alone) ++n;
    in_word = !space && !alone;
  }
  return n;
}
const TokenCounter kCjkCount = [](std::string_view t) { return cjk_tokens(t); };

// Real sentences, each ending as such text ends them: 。！？, fullwidth
// ．, closing brackets and quotes after the end, Korean's ". ".
const std::vector<std::string> kChinese = {
    "飞机机翼的形状决定了升力的大小。",
    "当气流流过机翼上表面时，速度加快，压力降低。",
    "边界层是紧贴物体表面的一层薄薄的空气。",
    "如果迎角过大，气流就会从机翼表面分离，导致失速。",
    "为什么高空飞行更省油？",
    "因为空气稀薄，阻力更小！",
    "工程师说：“结冰会严重破坏机翼前缘的升力。”",
    "喷气发动机通过向后高速喷出燃气来产生推力。",
    "超音速飞行时，飞机前方会形成激波（也叫冲击波）。",
};
const std::vector<std::string> kJapanese = {
    "飛行機の翼は揚力を生み出す。",
    "「迎角が大きすぎると失速します。」",
    "と教官は言った。",
    "境界層は物体の表面に沿って流れる薄い空気の層です。",
    "なぜ高高度では燃費が良いのでしょうか？",
    "空気が薄く、抵抗が小さいからです！",
    "着氷は翼の前縁で揚力を大きく損なう（特に冬季に）。",
    "円周率は約３．１４です．",
    "『航空力学入門』は名著だ！？",
};
const std::vector<std::string> kKorean = {
    "비행기 날개의 모양은 양력의 크기를 결정합니다. ",
    "받음각이 너무 크면 실속이 발생합니다. ",
    "경계층은 물체 표면에 붙어 흐르는 얇은 공기층입니다. ",
    "왜 높은 고도에서 연비가 좋을까요? ",
    "공기가 희박하기 때문입니다! ",
    "제트 엔진은 뒤로 가스를 분사하여 추력을 만듭니다.",  // no space before the next: still a sentence end
};

// `n` sentences taken in turn from `sentences`, a paragraph break after
// every `paragraph`-th; *ends gets the offset just past each sentence.
std::string cjk_text(const std::vector<std::string>& sentences, int n, int paragraph, std::vector<std::size_t>* ends) {
  std::string text;
  for (int i = 0; i < n; ++i) {
    text += sentences[static_cast<std::size_t>(i) % sentences.size()];
    std::size_t e = text.size();
    while (e > 0 && text[e - 1] == ' ') --e;
    ends->push_back(e);
    if (i % paragraph == paragraph - 1) {
      while (!text.empty() && text.back() == ' ') text.pop_back();
      text += "\n\n";
    }
  }
  return text;
}

// The chunks of `text` are slices of whole sentences (ending at one of
// `ends`), within the budget, overlapping, covering it all, and full: each
// stops only where the next sentence would not have fitted.
void expect_whole_sentences_filling_the_budget(const std::string& text, const std::vector<std::size_t>& ends,
                                               const ChunkOptions& o) {
  Result<std::vector<TextChunk>> r = chunk_text(text, kCjkCount, o);
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  ASSERT_GT(r->size(), 3u);
  std::size_t covered_to = 0;
  for (std::size_t i = 0; i < r->size(); ++i) {
    const TextChunk& c = (*r)[i];
    EXPECT_EQ(c.text, text.substr(c.begin, c.end - c.begin));
    EXPECT_TRUE(valid_utf8(c.text)) << c.text;
    EXPECT_LE(c.n_tokens, o.max_tokens);
    EXPECT_EQ(c.n_tokens, cjk_tokens(c.text));
    const auto end = std::find(ends.begin(), ends.end(), c.end);
    EXPECT_NE(end, ends.end()) << "chunk " << i << " ends inside a sentence: " << c.text;
    EXPECT_TRUE(c.begin == 0 || std::find(ends.begin(), ends.end(), c.begin) != ends.end() ||
                text[c.begin - 1] == ' ' || text[c.begin - 1] == '\n')
        << "chunk " << i << " begins inside a sentence: " << c.text;
    EXPECT_LE(c.begin, covered_to + 2) << "gap before chunk " << i;
    if (i > 0) {
      EXPECT_LT(c.begin, (*r)[i - 1].end) << "no overlap with the previous chunk";
      EXPECT_GT(c.begin, (*r)[i - 1].begin) << "no progress";
    }
    if (i + 1 < r->size() && end != ends.end() && end + 1 != ends.end()) {
      EXPECT_GT(cjk_tokens(std::string_view(text).substr(c.begin, *(end + 1) - c.begin)), o.max_tokens)
          << "chunk " << i << " stopped with room for the next sentence: " << c.text;
    }
    covered_to = std::max(covered_to, c.end);
  }
  EXPECT_EQ(covered_to, ends.back());
}

// Chinese and Japanese end sentences with 。！？ (and fullwidth ．), with no
// space after them, and closing brackets or quotes stay with the end they
// follow: each chunk is a run of whole sentences, as in Latin text, and
// takes sentences while they fit (before, a paragraph was one "sentence"
// cut wherever its bytes ran out).
TEST(ChunkerTest, ChineseAndJapaneseAreCutAtSentenceEnds) {
  ChunkOptions o;
  o.max_tokens = 64;
  o.overlap_tokens = 30;  // more than the longest sentence: the overlap is of whole sentences
  {
    SCOPED_TRACE("Chinese");
    std::vector<std::size_t> ends;
    const std::string text = cjk_text(kChinese, 60, 9, &ends);
    expect_whole_sentences_filling_the_budget(text, ends, o);
  }
  {
    SCOPED_TRACE("Japanese");
    std::vector<std::size_t> ends;
    const std::string text = cjk_text(kJapanese, 60, 9, &ends);
    expect_whole_sentences_filling_the_budget(text, ends, o);
  }
  {
    SCOPED_TRACE("Korean");
    std::vector<std::size_t> ends;
    const std::string text = cjk_text(kKorean, 60, 7, &ends);
    expect_whole_sentences_filling_the_budget(text, ends, o);
  }
}

// What is not a sentence end: a fullwidth point between digits or letters
// (３．１４, ｗｗｗ．ｅｘａｍｐｌｅ), and an ASCII point before a digit. A
// closing bracket never begins a chunk.
TEST(ChunkerTest, NumbersAndClosingBracketsAreNotCutFromTheirSentence) {
  const std::string a = "円周率は約３．１４で、ｗｗｗ．ｅｘａｍｐｌｅ．ｃｏｍに詳しい。";
  const std::string b = "版本2.0已经发布!新版本更快。";
  const std::string c = "彼は「本当？！」と叫んだ。";
  const std::string text = a + b + c;
  ChunkOptions o;
  o.max_tokens = cjk_tokens(a + b);  // a and b fit together, c does not fit beside them
  o.overlap_tokens = 0;
  ASSERT_LE(cjk_tokens(c), o.max_tokens);
  Result<std::vector<TextChunk>> r = chunk_text(text, kCjkCount, o);
  ASSERT_TRUE(r.is_ok());
  ASSERT_EQ(r->size(), 2u);
  EXPECT_EQ((*r)[0].text, a + b);
  EXPECT_EQ((*r)[1].text, c);
  // With room for one sentence at a time: "!" before Han text ends one
  // (b has two), and 」 stays with the ！ before it.
  o.max_tokens = 12;
  r = chunk_text(b + c, kCjkCount, o);
  ASSERT_TRUE(r.is_ok());
  std::vector<std::string> texts;
  for (const TextChunk& k : *r) texts.push_back(k.text);
  EXPECT_EQ(texts, (std::vector<std::string>{"版本2.0已经发布!", "新版本更快。", "彼は「本当？！」", "と叫んだ。"}));
}

// A run of CJK text with no sentence end: cut first after its clauses
// (、，；：), and where a clause alone is over the budget, between
// characters: pieces fill the budget (they came out at about two thirds
// of it, a window of bytes halved until it fitted), never split a
// character, and do not begin with closing punctuation.
TEST(ChunkerTest, CjkRunsWithoutSentenceEndsFillTheBudget) {
  std::string clauses, run;
  for (int i = 0; i < 40; ++i) clauses += "气流流过机翼上表面时速度加快压力降低，";
  for (int i = 0; i < 200; ++i) run += "边界层是紧贴物体表面的一层薄薄的空气";
  ChunkOptions o;
  o.max_tokens = 256;
  o.overlap_tokens = 32;
  for (const std::string* text : {&clauses, &run}) {
    Result<std::vector<TextChunk>> r = chunk_text(*text, kCjkCount, o);
    ASSERT_TRUE(r.is_ok());
    ASSERT_GT(r->size(), 2u);
    std::size_t covered_to = 0;
    for (std::size_t i = 0; i < r->size(); ++i) {
      const TextChunk& c = (*r)[i];
      EXPECT_EQ(c.text, text->substr(c.begin, c.end - c.begin));
      EXPECT_TRUE(valid_utf8(c.text));
      EXPECT_LE(c.n_tokens, 256u);
      EXPECT_EQ(c.begin, covered_to) << "chunk " << i;
      covered_to = c.end;
      if (i + 1 < r->size()) {
        EXPECT_GE(c.n_tokens, 256u * 9 / 10) << "chunk " << i << ": " << c.text;
        if (text == &clauses) {
          EXPECT_TRUE(c.text.ends_with("，")) << c.text;
        }
      }
      EXPECT_FALSE(c.text.starts_with("，")) << c.text;
    }
    EXPECT_EQ(covered_to, text->size());
  }
}

// A long token of Latin letters in CJK text is not cut inside when a cut
// beside a CJK character is near; one with no CJK character near it is cut
// where it fills the budget.
TEST(ChunkerTest, LatinTokensInsideCjkRunsStayWhole) {
  std::string text;
  for (int i = 0; i < 30; ++i) text += "使用Kubernetes部署服务器集群需要配置网络策略";
  const TokenCounter one_per_char = [](std::string_view t) {
    std::size_t n = 0;
    for (std::size_t i = 0, len = 0; i < t.size(); i += len) {
      next_code_point(t, i, &len);
      ++n;
    }
    return n;
  };
  ChunkOptions o;
  o.max_tokens = 50;
  o.overlap_tokens = 0;
  Result<std::vector<TextChunk>> r = chunk_text(text, one_per_char, o);
  ASSERT_TRUE(r.is_ok());
  std::size_t covered_to = 0;
  for (std::size_t i = 0; i < r->size(); ++i) {
    const TextChunk& c = (*r)[i];
    EXPECT_EQ(c.begin, covered_to);
    covered_to = c.end;
    EXPECT_LE(c.n_tokens, 50u);
    if (i + 1 < r->size()) {
      EXPECT_GE(c.n_tokens, 40u) << c.text;
    }
    const unsigned char last = static_cast<unsigned char>(c.text.back()), first = static_cast<unsigned char>(c.text[0]);
    EXPECT_FALSE(std::isalpha(last) && c.end < text.size() && std::isalpha(static_cast<unsigned char>(text[c.end])))
        << "cut inside Kubernetes: " << c.text;
    EXPECT_TRUE(first >= 0x80 || c.begin == 0 || !std::isalpha(static_cast<unsigned char>(text[c.begin - 1]))) << c.text;
  }
  EXPECT_EQ(covered_to, text.size());
}

// A character that alone counts more tokens than the budget (a byte-level
// tokenizer's three tokens for a Han character, here with a budget of two)
// is a chunk by itself: over the budget rather than cut inside.
TEST(ChunkerTest, ACharacterIsNeverSplitEvenOverTheBudget) {
  const TokenCounter bytes = [](std::string_view t) { return t.size(); };
  ChunkOptions o;
  o.max_tokens = 2;
  o.overlap_tokens = 0;
  const std::string text = "日本語の文章";
  Result<std::vector<TextChunk>> r = chunk_text(text, bytes, o);
  ASSERT_TRUE(r.is_ok());
  ASSERT_EQ(r->size(), 6u);
  for (const TextChunk& c : *r) {
    EXPECT_EQ(c.text.size(), 3u);
    EXPECT_TRUE(valid_utf8(c.text));
  }
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
