// JSON Schema patterns compiled to grammar rules: matching checked against
// std::regex (ECMAScript, search semantics) on random ASCII strings; random
// sentences of the rules are JSON strings that match; non-ASCII and escape
// handling by hand; refusals named; the schema compiler and validator use it.
#include "json_pattern.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <regex>
#include <string>
#include <vector>

#include "airlock/common/json.h"

#include "schema_grammar.h"
#include "tool_calls.h"

namespace airlock::daemon {
namespace {

using engine::Grammar;
using engine::GrammarArena;
using engine::GrammarMatcher;
using ojson = nlohmann::ordered_json;

// Patterns whose meaning on ASCII strings std::regex shares.
const char* kPatterns[] = {
    "^\\d{3}-\\d{4}$",
    "^[A-Z]{2}[0-9]{2,4}$",
    "ab+c",
    "^(?:[a-z0-9-]+\\.)+[a-z]{2,}$",
    "^(cat|dog|bird)s?$",
    "x|^y|z$",
    "^[^\"\\\\]*$",
    "^\\w+(\\s\\w+)*$",
    "[.]\\.",
    "^a{2}b{0,2}c{1,}$",
    "^(\\d{4})-(0[1-9]|1[0-2])$",
    "^[\\x41-\\x43\\u0064]+$",
    "^.{3}$",
    "\\W\\D",
    "^[-a]+$",
    "^[a-]+$",
    "^$",
    "^[^\\W\\d]+$",
    "^a*?b+?$",
    "^[\\]\\[]+$",
    "^\\n?\\t\\\\\"$",
};

// A random ASCII string from characters the patterns use.
std::string random_text(std::mt19937& rng) {
  static const std::string alphabet = "abcxyzABC0123456789-._ \"\\\n\t{},[]dogcatsbird";
  const std::size_t n = rng() % 9;
  std::string s;
  for (std::size_t i = 0; i < n; ++i) s += alphabet[rng() % alphabet.size()];
  return s;
}

// A random walk through `g` by the bytes it allows, up to `limit` bytes:
// ended, once a sentence is whole, one time in `stop` (0: only when
// nothing may follow), a quote taken one time in `quote` when allowed (0:
// never favoured). A live matcher must always allow a byte and take it;
// when one does not, the test fails and the walk stops there. *whole: it
// ended on a sentence.
std::string walk(GrammarMatcher m, std::mt19937& rng, std::size_t limit, unsigned stop, unsigned quote, bool* whole) {
  std::string text;
  while (text.size() < limit && !m.complete() && !(stop > 0 && m.accepting() && rng() % stop == 0)) {
    const Grammar::ByteSet next = m.next_bytes();
    std::vector<unsigned char> choices;
    for (unsigned c = 0; c < 256; ++c)
      if (next[c]) choices.push_back(static_cast<unsigned char>(c));
    if (choices.empty()) {
      ADD_FAILURE() << "stuck after " << text;
      break;
    }
    unsigned char c = choices[rng() % choices.size()];
    if (quote > 0 && next['"'] && rng() % quote == 0) c = '"';
    if (!m.feed(c)) {
      ADD_FAILURE() << "an allowed byte refused after " << text;
      break;
    }
    text += static_cast<char>(c);
  }
  *whole = m.accepting();
  return text;
}

TEST(JsonPatternTest, MatchesAsStdRegexOnAscii) {
  std::mt19937 rng(17);
  for (const char* p : kPatterns) {
    const std::regex re(p, std::regex::ECMAScript);
    std::vector<std::string> texts;
    for (int i = 0; i < 3000; ++i) texts.push_back(random_text(rng));
    for (const char* t : {"555-1234", "AB123", "abbbc", "mail.example.org", "dogs", "y", "z", "ab cd", "aabbc", "aac",
                          "2024-12", "ABCd", "abc", "", "a{,2}", "][", "\n\t\\\"", "\t\\\""})
      texts.push_back(t);
    int matched = 0;
    for (const std::string& t : texts) {
      const std::optional<bool> ours = pattern_matches(p, t);
      ASSERT_TRUE(ours.has_value()) << p;
      const bool theirs = std::regex_search(t, re);
      EXPECT_EQ(*ours, theirs) << p << " on " << ojson(t).dump();
      matched += theirs ? 1 : 0;
    }
    EXPECT_GT(matched, 0) << p;  // the cases reach both answers
    EXPECT_LT(matched, static_cast<int>(texts.size())) << p;
  }
}

// Random sentences of a pattern's rules are JSON strings that match it.
TEST(JsonPatternTest, SentencesAreJsonStringsThatMatch) {
  std::mt19937 rng(19);
  for (const char* p : kPatterns) {
    Grammar g;
    std::string why;
    const std::optional<Grammar::RuleId> r = pattern_rule(&g, p, "pattern", &why);
    ASSERT_TRUE(r) << p << ": " << why;
    g.set_start(*r);
    const std::regex re(p, std::regex::ECMAScript);
    int whole = 0;
    for (int i = 0; i < 200; ++i) {
      GrammarArena arena;
      bool accepted = false;
      const std::string text = walk(GrammarMatcher(&g, &arena), rng, 400, 3, 4, &accepted);
      if (!accepted) continue;
      ++whole;
      ASSERT_TRUE(ojson::accept(text)) << p << ": " << text;
      const std::string value = ojson::parse(text).get<std::string>();
      EXPECT_EQ(pattern_json_text(value), text) << p;  // one spelling
      EXPECT_EQ(pattern_matches(p, value), true) << p << ": " << text;
      const bool ascii = std::all_of(value.begin(), value.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; });
      if (ascii) {
        EXPECT_TRUE(std::regex_search(value, re)) << p << ": " << text;
      }
    }
    if (p[0] == '^') {  // (a walk seldom writes an unanchored pattern's match by chance)
      EXPECT_GT(whole, 100) << p;
    }
  }
}

TEST(JsonPatternTest, CharactersAreCodePoints) {
  EXPECT_EQ(pattern_matches("^.$", "é"), true);
  EXPECT_EQ(pattern_matches("^.$", "\xF0\x9F\x98\x80"), true);  // U+1F600: one character, not two units
  EXPECT_EQ(pattern_matches("^..$", "\xF0\x9F\x98\x80"), false);
  EXPECT_EQ(pattern_matches("^.$", "\n"), false);
  EXPECT_EQ(pattern_matches("^.$", "\xE2\x80\xA8"), false);  // U+2028, a line terminator
  EXPECT_EQ(pattern_matches("^.$", "\xE2\x80\xA7"), true);
  EXPECT_EQ(pattern_matches("^[\\s]+$", " \t\xC2\xA0\xE3\x80\x80"), true);  // U+00A0, U+3000
  EXPECT_EQ(pattern_matches("^\\W$", "é"), true);
  EXPECT_EQ(pattern_matches("^\\w$", "é"), false);
  EXPECT_EQ(pattern_matches("^[^a]$", "é"), true);
  EXPECT_EQ(pattern_matches("^[éa]+$", "aéa"), true);
  EXPECT_EQ(pattern_matches("^caf\\u00e9$", "café"), true);
  EXPECT_EQ(pattern_matches("^[^]$", "\n"), true);
  EXPECT_EQ(pattern_matches("^a{,2}$", "a{,2}"), true);  // not a count: the characters
  EXPECT_EQ(pattern_matches("^(a?){64}$", ""), true);
  EXPECT_EQ(pattern_matches("^(a?){64}$", std::string(64, 'a')), true);
  EXPECT_EQ(pattern_matches("\\0", std::string(1, '\0')), true);
  // Long strings: an unanchored match early, then much more (every place a
  // match could begin is one way through, merged).
  std::string long_text(65536, 'x');
  long_text[10] = 'a';
  EXPECT_EQ(pattern_matches("a", long_text), true);
  EXPECT_EQ(pattern_matches(".{64}x", long_text), true);
  EXPECT_EQ(pattern_matches("^[^a]*$", long_text), false);
  // Counted sets of many ranges are one way through each (the review's
  // \S{19} had run out of ways).
  EXPECT_EQ(pattern_matches("\\S{40}", std::string(40, 'a')), true);
  EXPECT_EQ(pattern_matches("\\S{40}", std::string(39, 'a') + " "), false);
  EXPECT_EQ(pattern_matches("^[\\s\\S]{1000}x$", std::string(1000, 'y') + "x"), true);
  // A run that may end has what follows it expanded after every run has
  // stepped: 1,000+ ways after one run's end must not crowd out another run
  // (a review's case: free_text_room promised room that was then lost).
  std::string crowd = "^[a-z]+(?:(?:";
  for (char c = 'a'; c <= 'z'; ++c) crowd += std::string(c == 'a' ? "" : "|") + "z" + c;
  crowd += ")?){40}0$|^[^\\n]{0,50}!$";
  EXPECT_EQ(pattern_matches(crowd, "a1!"), true);
  // A budget is spent by strings that fail as well as by those that match.
  std::uint64_t work = 1'000'000;
  EXPECT_EQ(pattern_matches("[^x]{100}x", std::string(300, 'a'), &work), false);
  EXPECT_LT(work, 1'000'000u);
  std::uint64_t little = 10;
  EXPECT_EQ(pattern_matches("a", std::string(300, 'b') + "a", &little), false);  // past the budget: no
  EXPECT_EQ(little, 0u);
  EXPECT_EQ(pattern_matches("^(?<year>\\d{4})-(?<m>\\d\\d)$", "2024-12"), true);  // named groups
  EXPECT_EQ(pattern_json_text("a\"b\\c\n\x01é"), "\"a\\\"b\\\\c\\n\\u0001é\"");
  EXPECT_EQ(pattern_matches("^\\S+$", "é\xE2\x82\xAC"), true);
  EXPECT_EQ(pattern_matches("^\\S$", "\xE3\x80\x80"), false);  // U+3000 is a space
  EXPECT_EQ(pattern_matches("^[à-ü]+$", "éü"), true);
  EXPECT_EQ(pattern_matches("^[à-ü]$", "ÿ"), false);
  EXPECT_EQ(pattern_matches("^[^é]$", "é"), false);
  EXPECT_EQ(pattern_matches("^[^é]$", "è"), true);
  EXPECT_EQ(pattern_matches("^[^\\s\"]+$", "a\"b"), false);
  EXPECT_EQ(pattern_matches("^[\\x00-\\u00ff]+$", "a\té"), true);
}

// Sets of characters are runs over code-point ranges: every code point of
// the BMP from U+0080 (and a sample above it) is read or refused as the
// set says.
TEST(JsonPatternTest, EveryCodePointOfASet) {
  struct Case {
    const char* pattern;
    bool (*member)(std::uint32_t);
  };
  const Case cases[] = {
      {"^.$", [](std::uint32_t c) { return c != 0x2028 && c != 0x2029; }},
      {"^[^a]$", [](std::uint32_t) { return true; }},
      {"^\\S$", [](std::uint32_t c) {
         return c != 0xA0 && c != 0x1680 && !(c >= 0x2000 && c <= 0x200A) && c != 0x2028 && c != 0x2029 && c != 0x202F &&
                c != 0x205F && c != 0x3000 && c != 0xFEFF;
       }},
      {"^[^à-ü\\u4e00-\\u9fff\\u07ff\\u0800]$", [](std::uint32_t c) {
         return !(c >= 0xE0 && c <= 0xFC) && !(c >= 0x4E00 && c <= 0x9FFF) && c != 0x7FF && c != 0x800;
       }},
      {"^[\\u00ff-\\u0901\\uffff]$", [](std::uint32_t c) { return (c >= 0xFF && c <= 0x901) || c == 0xFFFF; }},
  };
  for (int form = 0; form < 2; ++form)  // the set alone, then counted ("{1}")
  for (const Case& k : cases) {
    Grammar g;
    std::string why;
    std::string pattern = k.pattern;
    if (form == 1) pattern.insert(pattern.size() - 1, "{1}");
    const std::optional<Grammar::RuleId> r = pattern_rule(&g, pattern, "p", &why);
    ASSERT_TRUE(r) << why;
    g.set_start(*r);
    int wrong = 0;
    for (std::uint32_t c = 0x80; c <= 0x10FFFF && wrong < 5; ++c) {
      if (c >= 0xD800 && c <= 0xDFFF) continue;
      // Above the BMP: a sample, and each 4,096's edges.
      if (c >= 0x10000 && c % 61 != 0 && (c & 0xFFF) != 0 && (c & 0xFFF) != 0xFFF) continue;
      std::string text = "\"";
      if (c < 0x800) {
        text += static_cast<char>(0xC0 | (c >> 6));
      } else if (c < 0x10000) {
        text += static_cast<char>(0xE0 | (c >> 12));
        text += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
      } else {
        text += static_cast<char>(0xF0 | (c >> 18));
        text += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
        text += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
      }
      text += static_cast<char>(0x80 | (c & 0x3F));
      text += '"';
      GrammarArena arena;
      GrammarMatcher m(&g, &arena);
      const bool read = m.feed(text) && m.accepting();
      if (read != k.member(c)) {
        ++wrong;
        ADD_FAILURE() << pattern << " U+" << std::hex << c << (read ? " read" : " refused");
      }
    }
  }
}

// A repeated set is one run with the counts; the same set inside a group
// is a run of one, repeated by rules. Both read the same strings, and a
// random walk through either never reaches a dead end.
TEST(JsonPatternTest, RunsReadAsRules) {
  const char* sets[] = {"\\d", "[^\\n]", ".", "\\W", "[^\"\\\\]", "[\\x00-\\x1f]", "[^a]", "[\\x01\\x1f\"]", "[\\n\\\\]",
                        "[^]"};
  const char* counts[] = {"*", "+", "{2}", "{1,3}", "{0,2}", "{2,}"};
  std::mt19937 rng(23);
  const std::string alphabet[] = {"a", "1", "\n", "\"", "\\", "\x01", "\x1f", "\t", "é", "\xE2\x80\xA8", "\xF0\x9F\x98\x80", "-"};
  for (const char* set : sets) {
    for (const char* count : counts) {
      const std::string as_run = std::string("^") + set + count + "-$";
      const std::string as_rules = std::string("^(?:") + set + ")" + count + "-$";
      for (int i = 0; i < 300; ++i) {
        std::string text;
        for (std::size_t n = rng() % 6; n > 0; --n) text += alphabet[rng() % std::size(alphabet)];
        text += "-";
        EXPECT_EQ(pattern_matches(as_run, text), pattern_matches(as_rules, text)) << as_run << " on " << ojson(text).dump();
      }
      // Random walks by allowed bytes: always a way on, and what is read
      // matches.
      Grammar g;
      std::string why;
      const std::optional<Grammar::RuleId> r = pattern_rule(&g, as_run, "p", &why);
      ASSERT_TRUE(r) << why;
      g.set_start(*r);
      for (int i = 0; i < 40; ++i) {
        GrammarArena arena;
        bool accepted = false;
        const std::string out = walk(GrammarMatcher(&g, &arena), rng, 60, 0, 0, &accepted);
        if (!accepted) continue;
        EXPECT_EQ(pattern_matches(as_rules, ojson::parse(out).get<std::string>()), true) << as_run << ": " << out;
      }
    }
  }
}

TEST(JsonPatternTest, RefusalsSayWhy) {
  struct Case {
    const char* pattern;
    const char* why;
  };
  for (const Case& c : {Case{"(a)\\1", "back-reference"}, Case{"a(?=b)", "look-around"}, Case{"(?<!a)b", "look-around"},
                        Case{"\\bword", "\\b"}, Case{"a^b", "'^'"}, Case{"a$b", "'$'"}, Case{"(a$)", "'$'"},
                        Case{"(a*)*", "can match nothing"}, Case{"a{2000}", "over 1,000"}, Case{"a{3,2}", "below n"},
                        Case{"(ab", "unclosed '('"}, Case{"ab)", "unmatched ')'"}, Case{"[ab", "unclosed '['"},
                        Case{"*a", "nothing before"}, Case{"a**", "two quantifiers"}, Case{"\\", "backslash"},
                        Case{"\\q", "\\q"}, Case{"[z-a]", "out of order"}, Case{"\\ud800", "surrogate"},
                        Case{"\xff", "UTF-8"}, Case{"\xc0\x80", "UTF-8"}, Case{"\xed\xa0\x80", "UTF-8"},
                        Case{"\\01", "octal"}, Case{"[\\07]", "octal"}, Case{"{1}", "nothing before"},
                        Case{"a|{3}", "nothing before"}, Case{"(?<>a)", "group name"}, Case{"(?<a)b>c)", "group name"},
                        Case{"(?i)a", "flags"}, Case{"(a?){1000}", "can match nothing"},
                        Case{"((a?){64}){64}", "too many times over"}, Case{"^a[]$", "no character"},
                        Case{"[^\\s\\S]", "no character"}}) {
    Grammar g;
    std::string why;
    EXPECT_FALSE(pattern_rule(&g, c.pattern, "schema.pattern", &why)) << c.pattern;
    EXPECT_NE(why.find(c.why), std::string::npos) << c.pattern << ": " << why;
    EXPECT_EQ(why.rfind("schema.pattern: the pattern ", 0), 0u) << why;
    EXPECT_FALSE(pattern_matches(c.pattern, "a").has_value()) << c.pattern;
  }
  Grammar g;
  std::string why;
  EXPECT_FALSE(pattern_rule(&g, std::string(1001, 'a'), "p", &why));
  EXPECT_NE(why.find("1,000 bytes"), std::string::npos) << why;
  // Large but within the bounds, and then too large.
  EXPECT_TRUE(pattern_rule(&g, "^((a{1000}b?){1000}c?){1000}$", "p", &why)) << why;  // each count refers to one rule
  std::string wide;
  for (int i = 0; i < 80; ++i) wide += "(ab){0,1000}";  // 1,000 optional rules each
  EXPECT_FALSE(pattern_rule(&g, wide, "p", &why));
  EXPECT_NE(why.find("too large"), std::string::npos) << why;
}

// The schema compiler holds patterns; the validator checks them; a pattern
// beside a length bound is held, the bound is not (so not exactly).
TEST(JsonPatternTest, SchemasHoldPatterns) {
  const ojson schema = ojson::parse(R"({"type":"object","properties":{"zip":{"type":"string","pattern":"^\\d{5}$"},
      "code":{"pattern":"^[A-Z]{3}$"}},"required":["zip","code"],"additionalProperties":false})");
  std::string why;
  bool exact = false;
  auto g = compile_schema(schema, "schema", &why, &exact);
  ASSERT_TRUE(g) << why;
  EXPECT_TRUE(exact);
  auto read = [&](const std::string& text) {
    GrammarArena arena;
    GrammarMatcher m(g.get(), &arena);
    return m.feed(text) && m.accepting();
  };
  EXPECT_TRUE(read(R"({"zip":"12345","code":"ABC"})"));
  EXPECT_FALSE(read(R"({"zip":"1234","code":"ABC"})"));
  EXPECT_FALSE(read(R"({"zip":"12345","code":"abc"})"));
  EXPECT_TRUE(follows_schema(schema, ojson::parse(R"({"zip":"12345","code":"ABC"})")));
  EXPECT_FALSE(follows_schema(schema, ojson::parse(R"({"zip":"1234x","code":"ABC"})")));
  EXPECT_FALSE(follows_schema(schema, ojson::parse(R"({"zip":"12345","code":"AB"})")));

  // Lengths beside a pattern: held where one run varies (schema_grammar_test
  // has the rest), not where two do.
  ASSERT_TRUE(compile_schema(ojson::parse(R"({"type":"string","pattern":"^a+$","maxLength":3})"), "schema", &why, &exact));
  EXPECT_TRUE(exact);
  ASSERT_TRUE(compile_schema(ojson::parse(R"({"type":"string","pattern":"^a+b+$","maxLength":3})"), "schema", &why, &exact));
  EXPECT_FALSE(exact);
  EXPECT_FALSE(compile_schema(ojson::parse(R"({"type":"string","pattern":"(a)\\1"})"), "schema", &why));
  EXPECT_EQ(why, "schema.pattern: the pattern uses a back-reference (not supported)");
  EXPECT_FALSE(compile_schema(ojson::parse(R"({"type":"string","pattern":3})"), "schema", &why));
  EXPECT_EQ(why, "schema.pattern must be a string");
  // A strict forced call with a pattern is held exactly.
  const std::vector<ToolSpec> tools = {{"f", true, ojson::parse(R"({"type":"object","properties":{"id":{"type":"string",
      "pattern":"^[a-f0-9]{4}$"}},"required":["id"],"additionalProperties":false})")}};
  EXPECT_TRUE(tool_call_grammar(ToolFormat::kHermes, tools, "", false, &why)) << why;
}

}  // namespace
}  // namespace airlock::daemon
