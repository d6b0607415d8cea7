// The byte-level grammar recogniser: sentences read whole, the first byte
// that cannot lead refused, recursion, ambiguity, copies and compaction,
// strings against the JSON recogniser, and the bounds on work.
#include "airlock/engine/grammar.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "airlock/common/json.h"

#include "airlock/engine/constraint.h"

namespace airlock::engine {
namespace {

using Seq = std::vector<Grammar::Symbol>;

Seq lit(std::string_view text) {
  Seq s;
  Grammar::literal(text, &s);
  return s;
}

// How many bytes of `text` the matcher takes before one is refused.
std::size_t taken(GrammarMatcher m, std::string_view text, bool* accepting = nullptr) {
  std::size_t i = 0;
  while (i < text.size() && m.feed(static_cast<unsigned char>(text[i]))) ++i;
  if (accepting) *accepting = i == text.size() && m.accepting();
  return i;
}

bool sentence(const Grammar& g, std::string_view text) {
  GrammarArena arena;
  bool ok = false;
  return taken(GrammarMatcher(&g, &arena), text, &ok) == text.size() && ok;
}

// s ::= "(" s ")" s | ""   (balanced parentheses)
Grammar balanced() {
  Grammar g;
  const auto s = g.add_rule();
  g.add_alternative(s, {});
  g.add_alternative(s, Seq{Grammar::byte('('), Grammar::ref(s), Grammar::byte(')'), Grammar::ref(s)});
  g.set_start(s);
  return g;
}

TEST(GrammarTest, RecursiveRulesNest) {
  const Grammar g = balanced();
  for (const char* ok : {"", "()", "(())", "()()", "((()())())"}) EXPECT_TRUE(sentence(g, ok)) << ok;
  GrammarArena arena;
  GrammarMatcher m(&g, &arena);
  EXPECT_EQ(taken(m, "())"), 2u);
  bool whole = true;
  EXPECT_EQ(taken(m, "(()"), 3u);  // a prefix, not a sentence
  EXPECT_EQ(taken(m, "(()", &whole), 3u);
  EXPECT_FALSE(whole);
  // Deep nesting is bounded by kMaxDepth open rules, not by memory.
  std::string deep(GrammarMatcher::kMaxDepth + 10, '(');
  EXPECT_LT(taken(m, deep), deep.size());
  EXPECT_GT(taken(m, deep), GrammarMatcher::kMaxDepth / 2);
}

TEST(GrammarTest, AlternativesAndNextBytes) {
  // v ::= "true" | "trie" | "null"
  Grammar g;
  const auto v = g.add_rule();
  for (const char* t : {"true", "trie", "null"}) g.add_alternative(v, lit(t));
  g.set_start(v);
  GrammarArena arena;
  GrammarMatcher m(&g, &arena);
  Grammar::ByteSet first;
  first.set('t');
  first.set('n');
  EXPECT_EQ(m.next_bytes(), first);
  ASSERT_TRUE(m.feed("tr"));
  Grammar::ByteSet third;
  third.set('u');
  third.set('i');
  EXPECT_EQ(m.next_bytes(), third);
  EXPECT_FALSE(m.accepting());
  GrammarMatcher copy = m;  // copies go their own way
  ASSERT_TRUE(copy.feed("ie"));
  EXPECT_TRUE(copy.accepting());
  EXPECT_TRUE(copy.complete());
  EXPECT_FALSE(m.feed('x'));
  EXPECT_TRUE(m.next_bytes().none());
  EXPECT_TRUE(m.complete());  // dead: nothing may follow
}

TEST(GrammarTest, AcceptingIsNotComplete) {
  // n ::= [0-9] n | [0-9]
  Grammar g;
  const auto n = g.add_rule();
  g.add_alternative(n, Seq{Grammar::range('0', '9'), Grammar::ref(n)});
  g.add_alternative(n, Seq{Grammar::range('0', '9')});
  g.set_start(n);
  GrammarArena arena;
  GrammarMatcher m(&g, &arena);
  ASSERT_TRUE(m.feed("12345"));
  EXPECT_TRUE(m.accepting());
  EXPECT_FALSE(m.complete());  // more digits may come
  // A long run keeps one stack: the loop is in tail position.
  const std::size_t before = arena.nodes.size();
  ASSERT_TRUE(m.feed(std::string(10000, '7')));
  EXPECT_TRUE(m.accepting());
  EXPECT_LT(arena.nodes.size() - before, 40000u);
}

TEST(GrammarTest, AmbiguityDoesNotMultiplyStacks) {
  // s ::= w w "x";  w ::= " " w | ""   (two runs of spaces: many ways to
  // split one run, all the same after dedupe)
  Grammar g;
  const auto w = g.add_rule();
  g.add_alternative(w, {});
  g.add_alternative(w, Seq{Grammar::byte(' '), Grammar::ref(w)});
  const auto s = g.add_rule();
  g.add_alternative(s, Seq{Grammar::ref(w), Grammar::ref(w), Grammar::byte('x')});
  g.set_start(s);
  GrammarArena arena;
  GrammarMatcher m(&g, &arena);
  for (int i = 0; i < 2000; ++i) ASSERT_TRUE(m.feed(' ')) << i;
  const std::size_t before = arena.nodes.size();
  ASSERT_TRUE(m.feed(' '));
  EXPECT_LT(arena.nodes.size() - before, 16u);  // a handful of stacks, not thousands
  ASSERT_TRUE(m.feed('x'));
  EXPECT_TRUE(m.complete());
}

TEST(GrammarTest, LeftRecursionIsDroppedNotLooped) {
  // r ::= r "a" | "b"   (left-recursive: not supported, must not hang)
  Grammar g;
  const auto r = g.add_rule();
  g.add_alternative(r, Seq{Grammar::ref(r), Grammar::byte('a')});
  g.add_alternative(r, Seq{Grammar::byte('b')});
  g.set_start(r);
  GrammarArena arena;
  GrammarMatcher m(&g, &arena);
  // Expanded to the bounds (kMaxExpansion rules deep, kMaxStacks stacks),
  // no further; what it then reads is a sentence of the grammar.
  EXPECT_LE(arena.nodes.size(), static_cast<std::size_t>(GrammarMatcher::kMaxExpansion) + GrammarMatcher::kMaxStacks + 2);
  ASSERT_TRUE(m.feed('b'));
  ASSERT_TRUE(m.feed('a'));
}

TEST(GrammarTest, CompactionKeepsTheState) {
  const Grammar g = balanced();
  GrammarArena arena;
  GrammarMatcher m(&g, &arena);
  ASSERT_TRUE(m.feed("((()"));
  {
    GrammarMatcher scratch = m;  // garbage for compaction to drop
    for (int i = 0; i < 100; ++i) ASSERT_TRUE(scratch.feed("()"));
  }
  const std::size_t before = arena.nodes.size();
  m.compact();
  EXPECT_LT(arena.nodes.size(), before);
  EXPECT_EQ(taken(m, "))x"), 2u);
  bool whole = false;
  EXPECT_EQ(taken(m, "))", &whole), 2u);
  EXPECT_TRUE(whole);
}

// The string element against JsonGrammar, the JSON recogniser, on random
// bytes that favour what strings are made of: both take exactly the same
// prefixes (a string value inside an object for JsonGrammar).
TEST(GrammarTest, StringsAgreeWithTheJsonRecogniser) {
  Grammar g;
  const auto s = g.add_rule();
  g.add_alternative(s, Seq{Grammar::string()});
  g.set_start(s);
  const std::string alphabet[] = {"a", " ", "\"", "\\", "u", "d", "D", "8", "b", "C", "0", "f", "n", "/", "\x01", "\x7f",
                                  "\xc3", "\xa9", "\xe0", "\xed", "\xa0", "\x9f", "\xf0", "\x90", "\xf4", "\x8f", "\xc0",
                                  "\xff", "\x80"};
  std::mt19937 rng(9);
  int whole = 0;
  for (int run = 0; run < 20000; ++run) {
    std::string text = "\"";
    const int n = 1 + static_cast<int>(rng() % 12);
    for (int i = 0; i < n; ++i) text += alphabet[rng() % std::size(alphabet)];
    GrammarArena arena;
    GrammarMatcher m(&g, &arena);
    JsonGrammar j;
    ASSERT_TRUE(j.feed(std::string_view("{\"k\":")));
    for (std::size_t i = 0; i < text.size(); ++i) {
      const bool a = m.feed(static_cast<unsigned char>(text[i]));
      const bool b = j.feed(static_cast<unsigned char>(text[i]));
      ASSERT_EQ(a, b) << "at " << i << " of " << ::testing::PrintToString(text);
      if (!a) break;
      if (m.accepting()) {  // the string is whole (JsonGrammar goes on with the object)
        ++whole;
        EXPECT_TRUE(m.complete());
        EXPECT_TRUE(nlohmann::json::accept(text.substr(0, i + 1))) << ::testing::PrintToString(text);
        break;
      }
    }
  }
  EXPECT_GT(whole, 1000);
}

// Bounds count characters (a UTF-8 character, an escape and a surrogate
// pair each one), and the room left for plain text.
TEST(GrammarTest, StringBounds) {
  Grammar g;
  const auto s = g.add_rule();
  g.add_alternative(s, Seq{Grammar::string(2, 4)});
  g.set_start(s);
  auto whole = [&](std::string_view text) {
    GrammarArena arena;
    GrammarMatcher m(&g, &arena);
    return m.feed(text) && m.accepting();
  };
  for (const char* ok : {R"("ab")", R"("abcd")", "\"\xc3\xa9\xe2\x82\xac\"", R"("\n\u00e9")", R"("\ud83d\ude00x")"})
    EXPECT_TRUE(whole(ok)) << ok;
  for (const char* bad : {R"("a")", R"("abcde")", R"("\ud83d\ude00")", R"("")"}) EXPECT_FALSE(whole(bad)) << bad;
  GrammarArena arena;
  GrammarMatcher m(&g, &arena);
  EXPECT_EQ(m.free_text_room(), 0u);  // before the quote
  ASSERT_TRUE(m.feed("\"a"));
  EXPECT_EQ(m.free_text_room(), 3u);
  ASSERT_TRUE(m.feed("\xc3"));
  EXPECT_EQ(m.free_text_room(), 0u);  // inside a character
  ASSERT_TRUE(m.feed("\xa9" "bc"));
  EXPECT_EQ(m.free_text_room(), 0u);
  EXPECT_FALSE(m.feed('d'));
}

// Runs: characters of a class between bounds, each written one way, no
// quotes; plain text fits when the class holds all of it.
TEST(GrammarTest, RunsOfAClass) {
  Grammar::ByteSet any;
  for (unsigned c = 0; c < 128; ++c) any.set(c);
  const Grammar::CodePoints all_wide = {{0x80, 0xD7FF}, {0xE000, 0x10FFFF}};
  Grammar::ByteSet digits;
  for (unsigned c = '0'; c <= '9'; ++c) digits.set(c);
  Grammar g;
  const auto s = g.add_rule();
  g.add_alternative(s, Seq{Grammar::byte('"'), Grammar::run(digits, {}, 1, 3), Grammar::byte('-'),
                           Grammar::run(any, all_wide, 0, 4), Grammar::byte('"')});
  g.set_start(s);
  for (const char* ok : {R"("1-")", R"("123-abcd")", "\"9-\xc3\xa9\\n\\\"\\u001f\"", R"("0-\\")"})
    EXPECT_TRUE(sentence(g, ok)) << ok;
  for (const char* bad : {R"("-")", R"("1234-")", R"("1-abcde")", R"("a-")", R"("1-\u000a")", R"("1-\/")",
                          R"("1-\u001F")", R"("\u0031-")", "\"1-\xc0\xaf\"", R"("1-\ud83d\ude00")"})
    EXPECT_FALSE(sentence(g, bad)) << bad;
  GrammarArena arena;
  GrammarMatcher m(&g, &arena);
  ASSERT_TRUE(m.feed("\"1"));
  EXPECT_EQ(m.free_text_room(), 0u);  // digits only: not plain text
  EXPECT_FALSE(m.next_bytes()['\\']);  // no escape is a digit: no way on after a backslash
  ASSERT_TRUE(m.feed("2-a"));
  EXPECT_EQ(m.free_text_room(), 3u);
  ASSERT_TRUE(m.feed("\xe2\x82"));
  EXPECT_EQ(m.free_text_room(), 0u);  // inside a character
  ASSERT_TRUE(m.feed("\xac" "bc"));
  EXPECT_EQ(m.free_text_room(), 0u);
  EXPECT_TRUE(m.next_bytes()['"']);
  EXPECT_FALSE(m.next_bytes()['d']);
  // Non-ASCII ranges: all but U+2028 and U+2029 (E2 80 A8, E2 80 A9); a
  // byte that could begin no character of them is refused at once.
  Grammar h;
  const auto t = h.add_rule();
  h.add_alternative(t, Seq{Grammar::run({}, {{0x80, 0x2027}, {0x202A, 0xD7FF}, {0xE000, 0x10FFFF}}, 1, 1)});
  h.set_start(t);
  EXPECT_TRUE(sentence(h, "\xe2\x80\xa7"));
  EXPECT_TRUE(sentence(h, "\xe2\x81\xa8"));
  EXPECT_FALSE(sentence(h, "\xe2\x80\xa8"));
  EXPECT_FALSE(sentence(h, "\xe2\x80\xa9"));
  EXPECT_FALSE(sentence(h, "a"));
  Grammar k;
  const auto u = k.add_rule();
  k.add_alternative(u, Seq{Grammar::run({}, {{0xE9, 0xE9}, {0x1F600, 0x1F600}}, 1, 2)});  // é and U+1F600
  k.set_start(u);
  EXPECT_TRUE(sentence(k, "\xc3\xa9\xf0\x9f\x98\x80"));
  EXPECT_FALSE(sentence(k, "\xc3\xa8"));
  GrammarArena ka;
  GrammarMatcher km(&k, &ka);
  const Grammar::ByteSet first = km.next_bytes();
  EXPECT_EQ(first.count(), 2u);  // C3 and F0 only
  EXPECT_TRUE(first[0xC3] && first[0xF0]);
  ASSERT_TRUE(km.feed(0xF0));
  EXPECT_EQ(km.next_bytes().count(), 1u);  // 9F
}

// A grammar whose ways multiply (each rule two ways to the next, 40 deep:
// 2^40 paths to the same byte) is bounded by kMaxWork, not expanded.
TEST(GrammarTest, ExponentialWaysAreBounded) {
  Grammar g;
  auto r = g.add_rule();
  g.add_alternative(r, Seq{Grammar::byte('x')});
  for (int i = 0; i < 40; ++i) {
    const auto up = g.add_rule();
    g.add_alternative(up, Seq{Grammar::ref(r)});
    g.add_alternative(up, Seq{Grammar::ref(r)});
    r = up;
  }
  g.set_start(r);
  GrammarArena arena;
  GrammarMatcher m(&g, &arena);
  EXPECT_LT(arena.nodes.size(), static_cast<std::size_t>(GrammarMatcher::kMaxWork) + 10);
  EXPECT_TRUE(m.feed('x'));
  EXPECT_TRUE(m.accepting());
}

}  // namespace
}  // namespace airlock::engine
