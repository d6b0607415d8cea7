// The byte-level grammar recogniser: sentences read whole, the first byte
// that cannot lead refused, recursion, ambiguity, copies and compaction.
#include "airlock/engine/grammar.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

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
  EXPECT_TRUE(m.feed('b'));
  EXPECT_TRUE(m.accepting());
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

TEST(GrammarTest, FreeTextIsMarked) {
  // s ::= "\"" c "\"";  c ::= [a-z]* (marked free text)
  Grammar g;
  const auto c = g.add_rule();
  g.add_alternative(c, {});
  Grammar::ByteSet letters;
  for (char x = 'a'; x <= 'z'; ++x) letters.set(static_cast<unsigned char>(x));
  g.add_alternative(c, Seq{Grammar::set(letters, /*free_text=*/true), Grammar::ref(c)});
  const auto s = g.add_rule();
  g.add_alternative(s, Seq{Grammar::byte('"'), Grammar::ref(c), Grammar::byte('"')});
  g.set_start(s);
  GrammarArena arena;
  GrammarMatcher m(&g, &arena);
  EXPECT_FALSE(m.in_free_text());
  ASSERT_TRUE(m.feed('"'));
  EXPECT_TRUE(m.in_free_text());
  ASSERT_TRUE(m.feed("abc\""));
  EXPECT_FALSE(m.in_free_text());
  EXPECT_TRUE(m.complete());
}

}  // namespace
}  // namespace airlock::engine
