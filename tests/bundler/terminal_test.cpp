// What the airlock CLI prints of text it did not write (names, answers and
// snippets from the daemon or a database): nothing that steers a terminal,
// line breaks only where the text has several lines.

#include <gtest/gtest.h>

#include "terminal.h"

namespace airlock::bundler {
namespace {

TEST(Terminal, ShownReplacesControlsBidiOverridesAndBadUtf8) {
  EXPECT_EQ(shown("caf\xc3\xa9 \xe2\x98\x83"), "caf\xc3\xa9 \xe2\x98\x83");
  EXPECT_EQ(shown("a\x1b[31mb"), "a?[31mb");
  EXPECT_EQ(shown("line\nforged"), "line?forged");
  EXPECT_EQ(shown("tab\there"), "tab?here");
  EXPECT_EQ(shown("\xc2\x9b" "c1"), "?c1");                  // C1 control (CSI)
  EXPECT_EQ(shown("x\xe2\x80\xaey"), "x?y");                  // right-to-left override
  EXPECT_EQ(shown("\xff\xc3"), "??");                         // not UTF-8, a cut sequence
  EXPECT_EQ(shown("\xc0\xaf"), "??");                         // overlong
}

TEST(Terminal, ShownTextKeepsLinesAndTabs) {
  EXPECT_EQ(shown_text("First.\n\n\tSecond."), "First.\n\n\tSecond.");
  EXPECT_EQ(shown_text("dos\r\nline"), "dos\nline");
  EXPECT_EQ(shown_text("over\rwrite"), "over?write");         // a lone CR would rewrite the line
  EXPECT_EQ(shown_text("a\x1b]0;title\x07"), "a?]0;title?");
}

TEST(Terminal, OneLineJoinsWhitespaceRunsIntoOneSpace) {
  EXPECT_EQ(one_line("Travel expenses\n\nRail travel"), "Travel expenses Rail travel");
  EXPECT_EQ(one_line("a \t\r\n\v\f b"), "a b");
  EXPECT_EQ(one_line("\nlead and trail\n"), " lead and trail ");
  EXPECT_EQ(one_line("esc\x1b[2Jape"), "esc?[2Jape");
  EXPECT_EQ(one_line(""), "");
}

}  // namespace
}  // namespace airlock::bundler
