#include "reasoning.h"

#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace airlock::daemon {
namespace {

struct Split {
  std::string reasoning, content;
  bool operator==(const Split&) const = default;
};

std::ostream& operator<<(std::ostream& os, const Split& s) {
  return os << "{reasoning '" << s.reasoning << "', content '" << s.content << "'}";
}

// The whole answer in one piece.
Split whole(std::string_view text, bool starts_open = false) {
  ReasoningSplitter s(true, starts_open);
  ReasoningSplitter::Delta d = s.push(text, true);
  return {d.reasoning, d.content};
}

// A plain statement of the rule, not incremental: the splitter must agree
// with it however the answer is cut.
Split reference(std::string text, bool starts_open) {
  constexpr std::string_view kSpace = " \t\n\r\f\v";
  auto ltrim = [&](std::string s) { return s.erase(0, std::min(s.size(), s.find_first_not_of(kSpace))); };
  auto trim = [&](std::string s) {
    s = ltrim(s);
    const std::size_t e = s.find_last_not_of(kSpace);
    return s.erase(e == std::string::npos ? 0 : e + 1);
  };
  std::string body;
  if (starts_open) {
    body = text;
  } else {
    const std::string t = ltrim(text);
    if (t.rfind("<think>", 0) != 0) return {"", text};
    body = t.substr(7);
  }
  const std::size_t close = body.find("</think>");
  if (close == std::string::npos) return {trim(body), ""};
  return {trim(body.substr(0, close)), ltrim(body.substr(close + 8))};
}

TEST(Reasoning, FormatOfTheTemplate) {
  EXPECT_EQ(reasoning_format_of("{{ content.split('</think>')[-1] }}"), ReasoningFormat::kThinkTags);
  EXPECT_EQ(reasoning_format_of("<|im_start|>assistant\n"), ReasoningFormat::kNone);
  EXPECT_STREQ(reasoning_format_name(ReasoningFormat::kThinkTags), "think_tags");
  EXPECT_STREQ(reasoning_format_name(ReasoningFormat::kNone), "none");
}

TEST(Reasoning, WhereThePromptLeavesTheAnswer) {
  EXPECT_EQ(reasoning_start("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n"), ReasoningStart::kInside);
  EXPECT_EQ(reasoning_start("<think>"), ReasoningStart::kInside);
  // Qwen3 with enable_thinking false: an empty block, closed.
  EXPECT_EQ(reasoning_start("<|im_start|>assistant\n<think>\n\n</think>\n\n"), ReasoningStart::kAfter);
  EXPECT_EQ(reasoning_start("<|im_start|>assistant\n"), ReasoningStart::kBefore);
  EXPECT_EQ(reasoning_start("think>\n"), ReasoningStart::kBefore);
  EXPECT_EQ(reasoning_start("/think>"), ReasoningStart::kBefore);
  EXPECT_EQ(reasoning_start(""), ReasoningStart::kBefore);
  EXPECT_EQ(reasoning_start("  \n"), ReasoningStart::kBefore);
}

TEST(Reasoning, WholeAnswers) {
  // Qwen3: the answer opens the block.
  EXPECT_EQ(whole("<think>\nThe user greets me.\n</think>\n\nHello!"), (Split{"The user greets me.", "Hello!"}));
  // DeepSeek-R1, QwQ: the prompt opened it.
  EXPECT_EQ(whole("Two and two.\n</think>\n\n4", true), (Split{"Two and two.", "4"}));
  // Not thinking: the content is the answer byte for byte.
  EXPECT_EQ(whole("  Hello <think> there\n"), (Split{"", "  Hello <think> there\n"}));
  EXPECT_EQ(whole("<thi"), (Split{"", "<thi"}));
  EXPECT_EQ(whole(""), (Split{"", ""}));
  EXPECT_EQ(whole(" \n"), (Split{"", " \n"}));
  // Cut inside the block (max_tokens): all reasoning.
  EXPECT_EQ(whole("<think>\nFirst, </thi"), (Split{"First, </thi", ""}));
  EXPECT_EQ(whole("partial\n", true), (Split{"partial", ""}));
  // An empty block, and a second one, which is content.
  EXPECT_EQ(whole("<think>\n\n</think>\n\nAnswer"), (Split{"", "Answer"}));
  EXPECT_EQ(whole("<think>a</think>b<think>c</think>"), (Split{"a", "b<think>c</think>"}));
  // Multi-byte text on both sides.
  EXPECT_EQ(whole("<think>\u00e9t\u00e9 \U0001F600</think>\u00e0 bient\u00f4t"),
            (Split{"\u00e9t\u00e9 \U0001F600", "\u00e0 bient\u00f4t"}));
}

TEST(Reasoning, DisabledPassesEverythingAtOnce) {
  ReasoningSplitter s;
  EXPECT_FALSE(s.enabled());
  ReasoningSplitter::Delta d = s.push("<think>x", false);
  EXPECT_EQ(d.content, "<think>x");
  EXPECT_EQ(d.reasoning, "");
  EXPECT_FALSE(s.in_reasoning());
}

TEST(Reasoning, StreamsWhatIsSettledAndHoldsOnlyWhatMayBeATag) {
  ReasoningSplitter s(true, false);
  EXPECT_EQ(s.push("\n", false).content, "");  // could still be "\n<think>"
  EXPECT_EQ(s.push("<th", false).content, "");
  EXPECT_FALSE(s.in_reasoning());
  ReasoningSplitter::Delta d = s.push("ink>\nStep one", false);
  EXPECT_TRUE(s.in_reasoning());
  EXPECT_EQ(d.reasoning, "Step one");
  d = s.push(".\n</", false);
  EXPECT_EQ(d.reasoning, ".");  // the newline and "</" wait
  d = s.push("b> and\n", false);
  EXPECT_EQ(d.reasoning, "\n</b> and");
  d = s.push("</think>", false);
  EXPECT_EQ(d.reasoning, "");
  EXPECT_FALSE(s.in_reasoning());
  EXPECT_EQ(s.push("\n\n", false).content, "");
  EXPECT_EQ(s.push("Answer", false).content, "Answer");
  EXPECT_EQ(s.push(" <think>", true).content, " <think>");

  // Content that is not a thinking answer goes out as soon as it cannot be.
  ReasoningSplitter plain(true, false);
  EXPECT_EQ(plain.push(" <t", false).content, "");
  EXPECT_EQ(plain.push("ool_call>", false).content, " <tool_call>");
  EXPECT_EQ(plain.push("{", false).content, "{");
}

// Random answers made of tags, pieces of tags, whitespace and words, cut
// into random pieces: the pieces' results join up to the reference split,
// whatever the cuts.
TEST(Reasoning, PiecesJoinUpToTheWholeSplit) {
  const std::vector<std::string> parts = {"<think>", "</think>", "<", "</", "</th", "<thi", "think>", ">", " ", "\n",
                                          "\n\n", "\t", "word", "x", "\u00e9", "</think", "<think"};
  std::mt19937 rng(7);
  for (int round = 0; round < 20000; ++round) {
    std::string text;
    const int n = static_cast<int>(rng() % 12);
    for (int k = 0; k < n; ++k) text += parts[rng() % parts.size()];
    const bool open = rng() % 3 == 0;
    const Split want = reference(text, open);
    ASSERT_EQ(whole(text, open), want) << "'" << text << "' open " << open;
    ReasoningSplitter s(true, open);
    Split got;
    std::size_t at = 0;
    while (at < text.size()) {
      std::size_t len = 1 + rng() % 6;
      // Cut at character boundaries, as the decoder gives pieces.
      while (at + len < text.size() && (static_cast<unsigned char>(text[at + len]) & 0xC0) == 0x80) ++len;
      len = std::min(len, text.size() - at);
      ReasoningSplitter::Delta d = s.push(std::string_view(text).substr(at, len), false);
      got.reasoning += d.reasoning;
      got.content += d.content;
      at += len;
      // What came out is a prefix of what the whole answer gives.
      ASSERT_EQ(want.reasoning.compare(0, got.reasoning.size(), got.reasoning), 0) << "'" << text << "'";
      ASSERT_EQ(want.content.compare(0, got.content.size(), got.content), 0) << "'" << text << "'";
    }
    ReasoningSplitter::Delta d = s.push("", true);
    got.reasoning += d.reasoning;
    got.content += d.content;
    ASSERT_EQ(got, want) << "'" << text << "' open " << open;
  }
}

// Each piece is looked at once: a long run of whitespace inside the block,
// a token at a time, is not rescanned at every token (quadratic, it would
// take minutes here).
TEST(Reasoning, LongWhitespaceRunsAreNotRescanned) {
  ReasoningSplitter s(true, false);
  std::string reasoning = s.push("<think>a", false).reasoning;
  std::string run;
  for (int k = 0; k < 400000; ++k) {
    const std::string ws = k % 2 ? " " : "\n";
    run += ws;
    reasoning += s.push(ws, false).reasoning;
  }
  EXPECT_EQ(reasoning, "a");  // the run waits: it may end the reasoning
  ReasoningSplitter::Delta d = s.push("b</think>  c", true);
  EXPECT_EQ(reasoning + d.reasoning, "a" + run + "b");
  EXPECT_EQ(d.content, "c");
}

}  // namespace
}  // namespace airlock::daemon
