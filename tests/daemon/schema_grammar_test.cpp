// JSON Schemas compiled to grammars: instances read whole, non-instances
// refused, random sentences that follow the schema (checked by the
// independent validator and parser), refusals named, and a walk through a
// real vocabulary under JsonConstraint.
#include "schema_grammar.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <optional>
#include <random>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "airlock/common/json.h"

#include "airlock/engine/constraint.h"
#include "airlock/engine/gguf.h"
#include "airlock/engine/tokenizer.h"
#include "json_pattern.h"
#include "tool_calls.h"

namespace airlock::daemon {
namespace {

using ojson = nlohmann::ordered_json;
using engine::Grammar;
using engine::GrammarArena;
using engine::GrammarMatcher;

// CTest sets AIRLOCK_MODELS_DIR; run by hand, the shared folder is the default.
std::string models_dir() {
  const char* d = std::getenv("AIRLOCK_MODELS_DIR");
  return d && *d ? d : "/work/shared/models";
}

std::shared_ptr<const Grammar> compile(const char* schema) {
  std::string why;
  auto g = compile_schema(ojson::parse(schema), "schema", &why);
  EXPECT_TRUE(g) << schema << ": " << why;
  return g;
}

std::string refusal(const char* schema) {
  std::string why;
  auto g = compile_schema(ojson::parse(schema), "schema", &why);
  EXPECT_FALSE(g) << schema;
  return why;
}

bool instance(const Grammar& g, std::string_view text) {
  GrammarArena arena;
  GrammarMatcher m(&g, &arena);
  return m.feed(text) && m.accepting();
}

// A random sentence of `g`: a byte drawn among those allowed each step,
// ending (when a sentence is whole) with probability `stop`; empty when
// it grew past `limit` bytes.
std::string random_sentence(const Grammar& g, std::mt19937& rng, double stop = 0.5, std::size_t limit = 20000) {
  GrammarArena arena;
  GrammarMatcher m(&g, &arena);
  std::string text;
  std::uniform_real_distribution<double> coin(0, 1);
  while (text.size() < limit) {
    if (m.accepting() && (m.complete() || coin(rng) < stop)) return text;
    const Grammar::ByteSet next = m.next_bytes();
    std::vector<unsigned char> choices;
    for (unsigned c = 0; c < 256; ++c)
      if (next[c]) choices.push_back(static_cast<unsigned char>(c));
    if (choices.empty()) return {};
    // Structure over text: a quote or closing bracket, when allowed, half
    // the time (else strings run to hundreds of bytes).
    unsigned char c = choices[rng() % choices.size()];
    for (unsigned char close : {'"', '}', ']'})
      if (next[close] && coin(rng) < 0.15) c = close;
    EXPECT_TRUE(m.feed(c)) << text;
    text += static_cast<char>(c);
  }
  return {};
}

// Schemas whose every keyword is held to: each random sentence parses and
// follows the schema.
TEST(SchemaGrammarTest, RandomSentencesFollowTheSchema) {
  const char* schemas[] = {
      R"({"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"},"ok":{"type":"boolean"}},
          "required":["name","age","ok"],"additionalProperties":false})",
      R"({"type":"object","properties":{"a":{"type":"number"},"b":{"type":"string","maxLength":3},"c":{"type":"null"},
          "d":{"enum":["x","y",3,null,{"k":[1]}]}},"required":["b"]})",
      R"({"type":"object","properties":{"tags":{"type":"array","items":{"type":"string","minLength":1,"maxLength":4},
          "minItems":1,"maxItems":3},"score":{"type":"integer","minimum":-2,"maximum":12}},"required":["tags","score"],
          "additionalProperties":false})",
      R"({"type":"object","properties":{"when":{"anyOf":[{"type":"string","minLength":2,"maxLength":2},{"type":"null"}]},
          "kind":{"const":"fixed"},"n":{"type":["integer","null"],"minimum":0}},"required":["when","kind","n"]})",
      R"({"$defs":{"node":{"type":"object","properties":{"v":{"type":"integer"},"kids":{"type":"array",
          "items":{"$ref":"#/$defs/node"},"maxItems":2}},"required":["v","kids"],"additionalProperties":false}},
          "$ref":"#/$defs/node"})",
      R"({"type":"object","additionalProperties":{"type":"array","items":{"type":"boolean"}}})",
      R"({"type":"object","properties":{"p":{"type":"object"},"q":{},"r":true,"s":{"type":"array"}},
          "required":["p","q","r","s"]})",
      R"({"type":"array","items":{"oneOf":[{"type":"integer","exclusiveMinimum":0,"exclusiveMaximum":4},
          {"type":"string","enum":["é","\u00ff\ud83d\ude00"]}]},"minItems":2})",
      R"({"type":"object","required":["x","y"],"properties":{"y":{"type":"number","minimum":0}}})",
      R"({"type":"object","properties":{"a":{"allOf":[{"type":"string","maxLength":1}],"description":"one"},
          "o1":{"type":"integer"},"o2":{"type":"integer"},"o3":{"type":"integer"}},"required":["a"],
          "additionalProperties":false})",
  };
  std::mt19937 rng(7);
  for (const char* s : schemas) {
    const ojson schema = ojson::parse(s);
    auto g = compile(s);
    ASSERT_TRUE(g);
    int whole = 0;
    for (int i = 0; i < 300; ++i) {
      const std::string text = random_sentence(*g, rng);
      if (text.empty()) continue;
      ++whole;
      ASSERT_TRUE(ojson::accept(text)) << s << "\n" << text;
      const ojson v = ojson::parse(text);
      ASSERT_TRUE(follows_schema(schema, v)) << s << "\n" << text;
    }
    EXPECT_GT(whole, 250) << s;
  }
}

TEST(SchemaGrammarTest, InstancesAreReadAndOthersRefused) {
  auto g = compile(R"({"type":"object","properties":{"name":{"type":"string","maxLength":5},
      "level":{"enum":["low","high"]},"n":{"type":"integer","minimum":1,"maximum":3},"x":{"type":"number"}},
      "required":["name","level"],"additionalProperties":false})");
  ASSERT_TRUE(g);
  for (const char* ok : {
           R"({"name":"ab","level":"low"})",
           R"(  {"name" : "é\u00e9\n", "level":"high", "n": 2, "x": -1.5e+3})",
           "{\n  \"name\": \"\",\n  \"level\": \"low\",\n  \"x\": 0\n}",
           R"({"name":"abcde","level":"low","x":12345678901234567890.12345678901234567890E-12})",
       })
    EXPECT_TRUE(instance(*g, ok)) << ok;
  for (const char* bad : {
           R"({"level":"low","name":"ab"})",              // order: as the schema gives
           R"({"name":"ab"})",                            // level required
           R"({"name":"abcdef","level":"low"})",          // maxLength
           R"({"name":"ab","level":"mid"})",              // enum
           R"({"name":"ab","level":"low","n":4})",        // integer range
           R"({"name":"ab","level":"low","n":1.5})",      // integer
           R"({"name":"ab","level":"low","other":1})",    // additionalProperties
           R"({"name":"ab","level":"low","x":01})",       // JSON numbers
           R"({"name":"ab","level":"low","x":1e123})",    // two exponent digits at most
           R"({"name":"\ud800","level":"low"})",          // a lone surrogate
           "{\"name\":\"\xc0\xaf\",\"level\":\"low\"}",   // overlong UTF-8
           R"({"name":"ab","level":"low"} )",             // nothing after the value
           R"([])",
       })
    EXPECT_FALSE(instance(*g, bad)) << bad;
}

// Number bounds are held exactly: every number written without an
// exponent (at most 3 fraction digits here) is read when it lies between
// the bounds and refused otherwise, compared as exact decimals; whatever is
// read also follows the schema by the validator's doubles.
TEST(SchemaGrammarTest, NumberBoundsAreExact) {
  struct Bound {
    const char* text;
    long milli;  // the value times 1,000
  };
  const Bound values[] = {{"-1000.5", -1000500}, {"-7", -7000}, {"-2.5", -2500}, {"-0.125", -125}, {"0", 0},
                          {"0.1", 100}, {"0.3", 300}, {"1", 1000}, {"2.5", 2500}, {"9", 9000}, {"10", 10000},
                          {"99.99", 99990}, {"100", 100000}, {"1000", 1000000}};
  // Candidates: their text and value times 1,000; canonical ones (no
  // leading or trailing zero, no "-0") must be read whenever they are within.
  struct Candidate {
    std::string text;
    long milli;
    bool whole, canonical;
  };
  std::vector<Candidate> candidates;
  std::set<long> at;  // each bound and around it, and a sparse grid
  for (const Bound& b : values)
    for (long d : {-1001, -1000, -999, -501, -500, -1, 0, 1, 499, 500, 999, 1000, 1001}) at.insert(b.milli + d);
  for (long m = -1100000; m <= 1100000; m += 7919) at.insert(m);
  for (long m = -3000; m <= 3000; m += 125) at.insert(m);
  for (long m : at) {
    const long a = m < 0 ? -m : m;
    const std::string whole = (m < 0 ? "-" : "") + std::to_string(a / 1000);
    std::string frac = std::to_string(1000 + a % 1000).substr(1);
    if (a % 1000 == 0) {
      candidates.push_back({whole, m, true, m != 0});
    } else {
      std::string shortest = frac.substr(0, frac.find_last_not_of('0') + 1);
      candidates.push_back({whole + "." + shortest, m, false, true});
    }
    candidates.push_back({whole + "." + frac + "0", m, false, false});  // trailing zeros
  }
  candidates.push_back({"0", 0, true, true});
  for (const char* t : {"-0", "-0.0", "0.0", "00", "-00.5", "1e2", "0.5e1"}) {
    const double v = std::strtod(t, nullptr);
    candidates.push_back({t, std::lround(v * 1000), std::floor(v) == v, false});
  }
  std::mt19937 rng(11);
  auto pick = [&] { return values[rng() % std::size(values)]; };
  for (int round = 0; round < 240; ++round) {
    const bool integer = round % 2 == 0;
    ojson schema = {{"type", integer ? "integer" : "number"}};
    std::optional<long> lo, hi;
    bool lo_open = false, hi_open = false;
    if (rng() % 3 != 0) {
      const Bound b = pick();
      lo_open = rng() % 2 == 0;
      schema[lo_open ? "exclusiveMinimum" : "minimum"] = ojson::parse(b.text);
      lo = b.milli;
    }
    if (rng() % 3 != 0 || !lo) {
      const Bound b = pick();
      hi_open = rng() % 2 == 0;
      schema[hi_open ? "exclusiveMaximum" : "maximum"] = ojson::parse(b.text);
      hi = b.milli;
    }
    std::string why;
    auto g = compile_schema(schema, "schema", &why);
    auto within = [&](long m) {
      return (!lo || (lo_open ? m > *lo : m >= *lo)) && (!hi || (hi_open ? m < *hi : m <= *hi));
    };
    bool any = false;
    for (const Candidate& c : candidates) any = any || (within(c.milli) && (c.whole || !integer) && c.canonical);
    if (!g) {
      // Refused only when nothing lies between (a narrow integer range).
      EXPECT_FALSE(any) << schema.dump() << ": " << why;
      EXPECT_NE(why.find("lies between its bounds"), std::string::npos) << why;
      continue;
    }
    for (const Candidate& c : candidates) {
      const bool in = within(c.milli) && (c.whole || !integer);
      const bool read = instance(*g, c.text);
      if (read) {
        EXPECT_TRUE(in) << schema.dump() << " read " << c.text;
        EXPECT_TRUE(follows_schema(schema, ojson::parse(c.text))) << schema.dump() << " " << c.text;
      } else if (c.canonical) {
        EXPECT_FALSE(in) << schema.dump() << " refused " << c.text;
      }
    }
    for (int i = 0; i < 20; ++i) {
      const std::string text = random_sentence(*g, rng, 0.3);
      ASSERT_FALSE(text.empty()) << schema.dump();
      EXPECT_TRUE(follows_schema(schema, ojson::parse(text))) << schema.dump() << " wrote " << text;
    }
  }
  // Bounds at the edges of what doubles and the grammar hold.
  auto g = compile(R"({"type":"number","exclusiveMinimum":0})");
  for (const char* ok : {"0.00000000000000000001", "1", "12345678901234567890.5"}) EXPECT_TRUE(instance(*g, ok)) << ok;
  for (const char* bad : {"0", "0.00000000000000000000", "-1"}) EXPECT_FALSE(instance(*g, bad)) << bad;
  g = compile(R"({"type":"number","exclusiveMinimum":0.1,"maximum":1e300})");
  EXPECT_TRUE(instance(*g, "0.10000000000000002"));
  EXPECT_FALSE(instance(*g, "0.1000000000000000100"));  // above 0.1, yet read as the double 0.1
  EXPECT_TRUE(instance(*g, "99999999999999999999"));
  g = compile(R"({"type":"number","maximum":-0.0})");  // -0.0 is 0
  for (const char* ok : {"0", "-0", "-5.5"}) EXPECT_TRUE(instance(*g, ok)) << ok;
  for (const char* bad : {"5", "0.9", "1"}) EXPECT_FALSE(instance(*g, bad)) << bad;
  g = compile(R"({"type":"integer","minimum":-0.0,"maximum":-0.0})");
  EXPECT_TRUE(instance(*g, "0"));
  EXPECT_FALSE(instance(*g, "1"));
  g = compile(R"({"type":"integer","minimum":-1e-300,"maximum":1e-300})");
  EXPECT_TRUE(instance(*g, "0"));
  EXPECT_FALSE(instance(*g, "1"));
  EXPECT_NE(refusal(R"({"type":"integer","minimum":2.2,"maximum":2.8})").find("no integer"), std::string::npos);
  EXPECT_NE(refusal(R"({"type":"number","minimum":1e-30,"maximum":1e-29})").find("no number"), std::string::npos);
}

// multipleOf, alone and with bounds: every canonical decimal (no exponent,
// no needless zero) that is an exact multiple of the keyword's shortest
// decimal form and lies within the bounds is read, and nothing else, when
// the schema is held exactly; what is read follows the validator's check.
TEST(SchemaGrammarTest, MultiplesAreExact) {
  // Candidates n * 10^-f, as canonical text and as units of 10^-4.
  struct Candidate {
    std::string text;
    long long units;
    bool whole;
  };
  std::vector<Candidate> candidates;
  std::set<std::pair<long long, int>> seen;
  auto add = [&](long long n, int f) {
    while (f > 0 && n % 10 == 0) n /= 10, --f;  // canonical
    if (!seen.insert({n, f}).second) return;
    const long long a = n < 0 ? -n : n;
    long long scale = 1;
    for (int k = 0; k < f; ++k) scale *= 10;
    std::string text = std::to_string(a / scale);
    if (f > 0) text += "." + std::to_string(scale + a % scale).substr(1);
    if (n < 0) text.insert(0, "-");
    long long units = n;
    for (int k = f; k < 4; ++k) units *= 10;
    candidates.push_back({text, units, f == 0});
  };
  for (int f = 0; f <= 4; ++f) {
    for (long long n = -60; n <= 60; ++n) add(n, f);
    for (long long n = -100000; n <= 100000; n += 743) add(n, f);
  }
  for (long long n : {1500LL, 3000LL, 10000LL, 12500LL, 99999LL, 100000LL, 250000LL}) add(n, 0), add(-n, 0);
  // multipleOf as text, and as Q * 10^E.
  struct Multiple {
    const char* text;
    long long q;
    int e;
  };
  const Multiple multiples[] = {{"5", 5, 0},     {"0.25", 25, -2}, {"0.01", 1, -2},  {"100", 1, 2},   {"1.5", 15, -1},
                                {"3", 3, 0},     {"7", 7, 0},      {"0.1", 1, -1},   {"1000", 1, 3},  {"12.5", 125, -1},
                                {"0.05", 5, -2}, {"0.0001", 1, -4}, {"1", 1, 0},     {"0.3", 3, -1},  {"2", 2, 0}};
  // [lo, hi] in units of 10^-4 (nullopt: none), and whether each is exclusive.
  struct Bounds {
    const char* schema;  // the bounds' keywords
    std::optional<long long> lo, hi;
    bool lo_open, hi_open;
  };
  const Bounds bounds[] = {{"", {}, {}, false, false},
                           {R"("minimum":0)", 0, {}, false, false},
                           {R"("exclusiveMinimum":0)", 0, {}, true, false},
                           {R"("minimum":0,"maximum":100)", 0, 1000000, false, false},
                           {R"("minimum":-2.5,"exclusiveMaximum":7.75)", -25000, 77500, false, true},
                           {R"("exclusiveMinimum":-1000,"maximum":1000)", -10000000, 10000000, true, false},
                           {R"("minimum":-3)", -30000, {}, false, false}};
  std::mt19937 rng(17);
  int exact_schemas = 0;
  for (const Multiple& m : multiples)
    for (const Bounds& b : bounds)
      for (const bool integer : {true, false}) {
        const std::string text = std::string("{\"type\":\"") + (integer ? "integer" : "number") + "\",\"multipleOf\":" +
                                 m.text + (b.schema[0] ? "," : "") + b.schema + "}";
        const ojson schema = ojson::parse(text);
        std::string why;
        bool exact = false;
        auto g = compile_schema(schema, "schema", &why, &exact);
        ASSERT_TRUE(g) << text << ": " << why;
        // An exact multiple: units * 10^-4 / (q * 10^e) whole.
        auto multiple = [&](long long units) {
          long long d = m.q;
          for (int k = 0; k < 4 + m.e; ++k) d *= 10;
          return units % d == 0;
        };
        auto within = [&](long long u) {
          return (!b.lo || (b.lo_open ? u > *b.lo : u >= *b.lo)) && (!b.hi || (b.hi_open ? u < *b.hi : u <= *b.hi));
        };
        exact_schemas += exact;
        for (const Candidate& c : candidates) {
          const bool read = instance(*g, c.text);
          const bool in = within(c.units) && (c.whole || !integer);
          if (read) {
            EXPECT_TRUE(in) << text << " read " << c.text;
            if (exact) {
              EXPECT_TRUE(multiple(c.units)) << text << " read " << c.text;
              EXPECT_TRUE(follows_schema(schema, ojson::parse(c.text))) << text << " " << c.text;
            }
          } else if (exact) {
            EXPECT_FALSE(in && multiple(c.units)) << text << " refused " << c.text;
          }
          // The validator agrees with the arithmetic on these (short) decimals.
          EXPECT_EQ(follows_schema(schema, ojson::parse(c.text)), in && multiple(c.units)) << text << " " << c.text;
        }
        for (int i = 0; exact && i < 20; ++i) {
          const std::string sentence = random_sentence(*g, rng, 0.3);
          ASSERT_FALSE(sentence.empty()) << text;
          EXPECT_TRUE(follows_schema(schema, ojson::parse(sentence))) << text << " wrote " << sentence;
        }
      }
  // Alone, with a lower bound of 0, and with bounds few multiples lie
  // between, every schema here is held; 0.25 from -1000 to 1000 (8,000
  // multiples) is not.
  EXPECT_GE(exact_schemas, 15 * 2 * 4);
  bool exact = true;
  std::string why;
  ASSERT_TRUE(compile_schema(ojson::parse(R"({"type":"number","multipleOf":0.25,"minimum":-1000,"maximum":1000})"), "s", &why, &exact));
  EXPECT_FALSE(exact);
  // Refused: 0, negative or not a number.
  for (const char* bad : {R"({"multipleOf":0})", R"({"multipleOf":-5})", R"({"multipleOf":"5"})"})
    EXPECT_NE(refusal(bad).find("multipleOf must be a number over 0"), std::string::npos) << bad;
  // No multiple between the bounds.
  EXPECT_NE(refusal(R"({"type":"integer","multipleOf":10,"minimum":1,"maximum":9})").find("no multiple"), std::string::npos);
  EXPECT_NE(refusal(R"({"multipleOf":1e-310})").find("at least 1e-300"), std::string::npos);
  // Review cases: a power of ten below 10^-20 (at most 20 fraction digits,
  // no exponent: 1e-30 is no multiple of 1e-21); a whole keyword past 2^53
  // (the validator reads it as its decimal, as the grammar does); the same
  // keyword in several members (one set of rules).
  for (const char* text : {R"({"type":"number","multipleOf":1e-21})", R"({"type":"number","multipleOf":1e-21,"minimum":0})",
                           R"({"type":"integer","multipleOf":757705733973000000,"minimum":1,"maximum":1e19})",
                           R"({"type":"object","properties":{"a":{"multipleOf":0.0625},"b":{"multipleOf":0.0625},
                               "c":{"multipleOf":0.0625},"d":{"multipleOf":0.0625}},"required":["a","b","c","d"]})"}) {
    const ojson schema = ojson::parse(text);
    std::string reason;
    bool held = false;
    auto g = compile_schema(schema, "schema", &reason, &held);
    ASSERT_TRUE(g) << text << ": " << reason;
    EXPECT_TRUE(held) << text;
    EXPECT_LT(g->elements(), 1'000'000u) << text;
    for (int i = 0; i < 50; ++i) {
      const std::string sentence = random_sentence(*g, rng, 0.3);
      ASSERT_FALSE(sentence.empty()) << text;
      EXPECT_TRUE(follows_schema(schema, ojson::parse(sentence))) << text << " wrote " << sentence;
    }
  }
  auto tiny = compile(R"({"type":"number","multipleOf":1e-21})");
  EXPECT_FALSE(instance(*tiny, "1e-30"));
  EXPECT_TRUE(instance(*tiny, "0.00000000000000000001"));
  EXPECT_TRUE(follows_schema(ojson::parse(R"({"type":"integer","multipleOf":757705733973000000})"),
                             ojson::parse("757705733973000000")));
}

// oneOf is held exactly when no value can follow two branches; the check
// is sufficient, not complete: overlapping (or unknown) branches say no.
TEST(SchemaGrammarTest, DisjointOneOfIsExact) {
  // A pydantic discriminated union: $refs to objects with a const tag.
  const char* pets = R"({"$defs":{"Cat":{"type":"object","properties":{"pet_type":{"const":"cat","type":"string"},
      "meows":{"type":"integer","minimum":0}},"required":["pet_type","meows"],"additionalProperties":false},
      "Dog":{"type":"object","properties":{"pet_type":{"const":"dog","type":"string"},"barks":{"type":"number"}},
      "required":["pet_type","barks"],"additionalProperties":false}},"type":"object","properties":{"pet":{"oneOf":[
      {"$ref":"#/$defs/Cat"},{"$ref":"#/$defs/Dog"}],"discriminator":{"propertyName":"pet_type","mapping":{
      "cat":"#/$defs/Cat","dog":"#/$defs/Dog"}}}},"required":["pet"],"additionalProperties":false})";
  struct Case {
    const char* schema;
    bool exact;
  };
  for (const Case& c : {
           Case{pets, true},
           Case{R"({"oneOf":[{"type":"string"},{"type":["integer","null"]},{"type":"boolean"}]})", true},
           Case{R"({"oneOf":[{"enum":["a","b"]},{"enum":["c",1]},{"const":"d"}]})", true},
           Case{R"({"oneOf":[{"type":"string"},{"type":"null"},{"type":"integer","nullable":true}]})", false},
           Case{R"({"oneOf":[{"type":"integer"},{"type":"number","minimum":0.5}]})", false},
           Case{R"({"oneOf":[{"enum":["a","b"]},{"enum":["b"]}]})", false},
           Case{R"({"oneOf":[{"type":"object","properties":{"t":{"const":1}},"required":["t"]},
                   {"type":"object","properties":{"t":{"const":1},"u":{"const":2}},"required":["t","u"]}]})", false},
           Case{R"({"oneOf":[{"type":"object","properties":{"t":{"const":1}},"required":["t"]},
                   {"type":"object","properties":{"t":{"const":2}}}]})", false},
           Case{R"({"oneOf":[{"type":"string"},{"anyOf":[{"type":"integer"}]}]})", false},
           Case{R"({"oneOf":[{"type":"string"},{}]})", false},
           // null, wherever nullable allows it (beside a $ref too).
           Case{R"({"$defs":{"A":{"type":"string"}},"oneOf":[{"$ref":"#/$defs/A","nullable":true},{"type":"null"}]})", false},
           Case{R"({"oneOf":[{"enum":["a"],"nullable":true},{"enum":["b"],"nullable":true}]})", false},
           Case{R"({"oneOf":[{"const":"x","nullable":true},{"const":null}]})", false},
           Case{R"({"oneOf":[{"type":"object","required":["k"],"properties":{"k":{"const":"a","nullable":true}}},
                   {"type":"object","required":["k"],"properties":{"k":{"const":"b","nullable":true}}}]})", false},
           Case{R"({"oneOf":[{"enum":["a"],"nullable":true},{"enum":["b"]}]})", true},
           Case{R"({"oneOf":[{"enum":[1]},{"enum":[1.0]}]})", false},
           Case{R"({"oneOf":[{"enum":[{"a":1}]},{"enum":[{"a":2}]}]})", false},  // (objects are not compared)
       }) {
    std::string why;
    bool exact = !c.exact;
    const ojson schema = ojson::parse(c.schema);
    auto g = compile_schema(schema, "schema", &why, &exact);
    ASSERT_TRUE(g) << c.schema << ": " << why;
    EXPECT_EQ(exact, c.exact) << c.schema;
    if (!exact) continue;
    std::mt19937 rng(3);
    for (int i = 0; i < 200; ++i) {
      const std::string text = random_sentence(*g, rng, 0.3);
      if (text.empty()) continue;
      EXPECT_TRUE(follows_schema(schema, ojson::parse(text))) << c.schema << "\n" << text;
    }
  }
  // Many wide unions: each pair of definitions is compared once (a review
  // measured 2.3 s for this before pairs were remembered; the work is also
  // bounded, past which exact() is false).
  ojson wide = {{"$defs", ojson::object()}, {"type", "object"}, {"properties", ojson::object()}};
  ojson branches = ojson::array();
  for (int b = 0; b < 64; ++b) {
    ojson values = ojson::array();
    for (int v = 0; v < 64; ++v) values.push_back(b * 64 + v);
    wide["$defs"]["e" + std::to_string(b)] = {{"enum", values}};
    branches.push_back({{"$ref", "#/$defs/e" + std::to_string(b)}});
  }
  for (int k = 0; k < 5; ++k) wide["properties"]["p" + std::to_string(k)] = {{"oneOf", branches}};
  std::string why;
  bool exact = false;
  ASSERT_TRUE(compile_schema(wide, "schema", &why, &exact)) << why;
  EXPECT_TRUE(exact);
}

// String formats a grammar can spell are held: examples read, others
// refused, and random sentences match the format's regular expression.
// minLength/maxLength beside a pattern: held exactly where each top-level
// alternative already fits them or varies in one run only; checked against
// std::regex and the lengths on strings drawn from the pattern alone and
// on random ones.
TEST(SchemaGrammarTest, LengthsBesideAPattern) {
  struct Case {
    const char* pattern;
    bool held;  // exactly, with every bound below
  };
  const Case cases[] = {{"^[A-Z][a-z]+$", true}, {"^id-\\d+", true},     {"[a-z_]*", true},  {"x+y?z*", false},
                        {"^\\d{5}$", true},      {"^(ab|cd)x*$", true}, {"^[a-z]*x$|^yy$", true},
                        {"^(a|bc)+$", false},      {"^abc$|^a+b+$", false},     {"^[A-Z]{2,}-[0-9]{1,3}$", false}, {"foo", false}};
  const std::pair<int, int> bounds[] = {{0, 3}, {2, 5}, {5, 5}, {1, 20}, {3, -1}, {-1, 4}};
  std::mt19937 rng(31);
  const std::string alphabet = "AaBbxyz_-0123idfoc";
  for (const Case& c : cases) {
    const std::regex re(std::string(c.pattern).c_str());
    auto from_pattern = pattern_grammar(std::string(c.pattern).substr(0));
    ASSERT_TRUE(from_pattern) << c.pattern;
    std::vector<std::string> candidates;
    for (int i = 0; i < 60; ++i) {
      const std::string text = random_sentence(*from_pattern, rng, 0.2, 400);
      if (!text.empty()) candidates.push_back(ojson::parse(text).get<std::string>());
      std::string r;
      for (int k = static_cast<int>(rng() % 24); k > 0; --k) r += alphabet[rng() % alphabet.size()];
      candidates.push_back(r);
    }
    for (const auto& [lo, hi] : bounds) {
      ojson schema = {{"type", "string"}, {"pattern", c.pattern}};
      if (lo >= 0) schema["minLength"] = lo;
      if (hi >= 0) schema["maxLength"] = hi;
      std::string why;
      bool exact = false;
      auto g = compile_schema(schema, "schema", &why, &exact);
      if (!g) {
        // Only when no string of those lengths matches.
        EXPECT_NE(why.find("no string of those lengths"), std::string::npos) << schema.dump() << ": " << why;
        for (const std::string& x : candidates) EXPECT_FALSE(follows_schema(schema, ojson(x))) << schema.dump() << " " << x;
        continue;
      }
      if (c.held) {
        EXPECT_TRUE(exact) << schema.dump();
      }
      for (const std::string& x : candidates) {
        const int n = static_cast<int>(std::count_if(x.begin(), x.end(), [](char ch) { return (ch & 0xC0) != 0x80; }));
        const bool in = std::regex_search(x, re) && n >= std::max(lo, 0) && (hi < 0 || n <= hi);
        ASSERT_EQ(follows_schema(schema, ojson(x)), in) << schema.dump() << " " << x;
        const bool read = instance(*g, ojson(x).dump());
        if (exact) {
          EXPECT_EQ(read, in) << schema.dump() << " " << x;
        } else if (!read) {
          EXPECT_FALSE(std::regex_search(x, re)) << schema.dump() << " " << x;  // the pattern is held either way
        }
      }
      for (int i = 0; exact && i < 15; ++i) {
        const std::string text = random_sentence(*g, rng, 0.2);
        if (text.empty()) continue;
        EXPECT_TRUE(follows_schema(schema, ojson::parse(text))) << schema.dump() << " wrote " << text;
      }
    }
  }
}

TEST(SchemaGrammarTest, FormatsAreSpelled) {
  struct Case {
    const char* format;
    const char* pattern;  // ECMAScript, whole string
    std::vector<const char*> ok, bad;
  };
  const char* hour = "([01][0-9]|2[0-3])";
  const std::string time = std::string(hour) + ":[0-5][0-9]:([0-5][0-9]|60)(\\.[0-9]{1,9})?([Zz]|[+-]" + hour + ":[0-5][0-9])";
  const std::string date = "[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])";  // (the calendar is checked below)
  const std::string label = "[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?";
  const std::string duration_time = "T([0-9]{1,9}H([0-9]{1,9}M([0-9]{1,9}S)?)?|[0-9]{1,9}M([0-9]{1,9}S)?|[0-9]{1,9}S)";
  const std::string duration_date = "([0-9]{1,9}D|[0-9]{1,9}M([0-9]{1,9}D)?|[0-9]{1,9}Y([0-9]{1,9}M([0-9]{1,9}D)?)?)";
  const std::string patterns[] = {
      date,
      time,
      date + "[Tt]" + time,
      "P(" + duration_date + "(" + duration_time + ")?|" + duration_time + "|[0-9]{1,9}W)",
      "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
      "(([0-9]|[1-9][0-9]|1[0-9]{2}|2[0-4][0-9]|25[0-5])\\.){3}([0-9]|[1-9][0-9]|1[0-9]{2}|2[0-4][0-9]|25[0-5])",
      label + "(\\." + label + ")*",
      "[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,64}(\\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,64})*@" + label + "(\\." + label + ")+",
  };
  const Case cases[] = {
      {"date", "", {"2024-02-29", "2000-02-29", "0001-12-31", "2023-04-30", "2023-02-28"},
       {"2024-2-29", "2024-13-01", "2024-00-10", "2024-01-32", "24-01-01", "2023-02-29", "1900-02-29", "2024-04-31",
        "2024-02-30", "2024-11-31"}},
      {"time", "", {"23:59:60Z", "00:00:00.123456789+05:30", "12:30:00z"}, {"24:00:00Z", "12:30:00", "12:60:00Z", "1:00:00Z"}},
      {"date-time", "", {"2024-02-29T12:00:00Z", "1999-12-31t23:59:59.5-08:00"}, {"2024-02-29 12:00:00Z", "2024-02-29T12:00Z"}},
      {"duration", "", {"P3Y6M4DT12H30M5S", "PT20M", "P2W", "P1M", "P1DT1S", "PT1H5M"}, {"P", "PT", "P1H", "P1S", "P1W1D", "P1D1M", "PT1H5S"}},
      {"uuid", "", {"123e4567-e89b-12d3-a456-426614174000"}, {"123e4567e89b12d3a456426614174000", "123E4567-E89B-12D3-A456-426614174000"}},
      {"ipv4", "", {"0.0.0.0", "192.168.1.255", "10.0.10.100"}, {"256.1.1.1", "01.1.1.1", "1.1.1", "1.1.1.1.1"}},
      {"hostname", "", {"localhost", "a-b.example.org", "x1"}, {"-a.example", "a-.example", "a..b", ".a"}},
      {"email", "", {"jane.doe+tag@example.co.uk", "x@a.b"}, {"jane@localhost", "@a.b", "a@@b.c", ".a@b.c", "a b@c.d"}},
  };
  std::mt19937 rng(13);
  for (std::size_t i = 0; i < std::size(cases); ++i) {
    const Case& c = cases[i];
    auto g = compile(("{\"type\":\"string\",\"format\":\"" + std::string(c.format) + "\"}").c_str());
    ASSERT_TRUE(g);
    for (const char* ok : c.ok) EXPECT_TRUE(instance(*g, "\"" + std::string(ok) + "\"")) << c.format << " " << ok;
    for (const char* bad : c.bad) EXPECT_FALSE(instance(*g, "\"" + std::string(bad) + "\"")) << c.format << " " << bad;
    const std::regex re(patterns[i]);
    for (int k = 0; k < 200; ++k) {
      const std::string text = random_sentence(*g, rng, 0.3);
      ASSERT_GE(text.size(), 2u) << c.format;
      const std::string value = ojson::parse(text).get<std::string>();
      EXPECT_TRUE(std::regex_match(value, re)) << c.format << " wrote " << text;
      if (c.format == std::string("date") || c.format == std::string("date-time")) {
        // a day of the calendar
        const std::chrono::year_month_day day{std::chrono::year(std::stoi(value.substr(0, 4))),
                                              std::chrono::month(static_cast<unsigned>(std::stoi(value.substr(5, 2)))),
                                              std::chrono::day(static_cast<unsigned>(std::stoi(value.substr(8, 2))))};
        EXPECT_TRUE(day.ok()) << c.format << " wrote " << text;
      }
    }
  }
  // ipv6, against the C library's parser: what is written parses, and
  // the library's own spelling of random addresses (RFC 5952: compressed,
  // lowercase, IPv4-mapped ones with a dotted tail) is read, as are
  // uncompressed and dotted forms.
  {
    auto g = compile(R"({"type":"string","format":"ipv6"})");
    ASSERT_TRUE(g);
    auto parses = [](const std::string& text) {
      in6_addr a;
      return inet_pton(AF_INET6, text.c_str(), &a) == 1;
    };
    for (int k = 0; k < 300; ++k) {
      const std::string text = random_sentence(*g, rng, 0.3);
      ASSERT_GE(text.size(), 2u);
      const std::string value = ojson::parse(text).get<std::string>();
      EXPECT_TRUE(parses(value)) << "wrote " << value;
    }
    for (int k = 0; k < 2000; ++k) {
      in6_addr a{};
      for (int i = 0; i < 16; ++i) {
        // zero runs of every length and place, and IPv4-mapped addresses
        const int zeros_from = static_cast<int>(rng() % 17), zeros_to = zeros_from + static_cast<int>(rng() % 17);
        a.s6_addr[i] = i >= zeros_from && i < zeros_to ? 0 : static_cast<std::uint8_t>(rng());
      }
      if (k % 10 == 0) {
        std::fill(a.s6_addr, a.s6_addr + 10, 0);
        a.s6_addr[10] = a.s6_addr[11] = 0xff;
      }
      char text[INET6_ADDRSTRLEN];
      ASSERT_TRUE(inet_ntop(AF_INET6, &a, text, sizeof text));
      EXPECT_TRUE(instance(*g, "\"" + std::string(text) + "\"")) << text;
    }
    for (const char* ok : {"0:0:0:0:0:0:0:1", "::", "::1", "1::", "1:2:3:4:5:6:7::", "::2:3:4:5:6:7:8", "fe80::1:2",
                           "1:2:3:4:5:6:1.2.3.4", "::1.2.3.4", "1::1.2.3.4", "2001:db8::ff00:42:8329"}) {
      EXPECT_TRUE(parses(ok)) << ok;
      EXPECT_TRUE(instance(*g, "\"" + std::string(ok) + "\"")) << ok;
    }
    for (const char* bad : {"1:2:3:4:5:6:7:8:9", "1::2::3", ":1:2:3:4:5:6:7", "12345::", "1:2:3:4:5:6:7", "g::1",
                            "1:2:3:4:5:6:7:1.2.3.4", "::1.2.3", "::256.1.1.1", ":::"}) {
      EXPECT_FALSE(parses(bad)) << bad;
      EXPECT_FALSE(instance(*g, "\"" + std::string(bad) + "\"")) << bad;
    }
    EXPECT_FALSE(instance(*g, "\"FE80::1\""));  // lowercase, as RFC 5952 writes it
  }
  // Beside a length bound, or unknown: any string (of those lengths).
  for (const char* any : {R"({"type":"string","format":"date","maxLength":40})", R"({"type":"string","format":"uri"})"}) {
    auto g = compile(any);
    EXPECT_TRUE(instance(*g, "\"not a date\"")) << any;
  }
}

// Tuples (prefixItems, as pydantic writes tuple[int, str]) and sets
// (uniqueItems: checked by the validator, held only in part).
TEST(SchemaGrammarTest, TuplesAndSets) {
  struct Case {
    const char* schema;
    std::vector<const char*> ok, bad;
  };
  const Case cases[] = {
      {R"({"type":"array","prefixItems":[{"type":"integer"},{"type":"string"}],"minItems":2,"maxItems":2})",
       {R"([1,"a"])", R"([ -3 , "" ])"}, {R"([1])", R"([1,"a",2])", R"(["a",1])", "[]"}},
      {R"({"type":"array","prefixItems":[{"type":"integer"},{"type":"string"}],"items":false})",
       {"[]", "[1]", R"([1,"a"])"}, {R"([1,"a",2])", R"(["a"])"}},
      {R"({"type":"array","prefixItems":[{"type":"integer"}],"items":{"type":"boolean"},"minItems":3,"maxItems":4})",
       {"[1,true,false]", "[1,true,false,true]"}, {"[1,true]", "[1,true,false,true,true]", "[1,2,true]"}},
      {R"({"type":"array","prefixItems":[{"const":"a"},{"const":"b"},{"const":"c"}],"maxItems":2})",
       {"[]", R"(["a"])", R"(["a","b"])"}, {R"(["a","b","c"])", R"(["b"])"}},
  };
  std::mt19937 rng(29);
  for (const Case& c : cases) {
    const ojson schema = ojson::parse(c.schema);
    std::string why;
    bool exact = false;
    auto g = compile_schema(schema, "schema", &why, &exact);
    ASSERT_TRUE(g) << c.schema << ": " << why;
    EXPECT_TRUE(exact) << c.schema;
    for (const char* ok : c.ok) {
      EXPECT_TRUE(instance(*g, ok)) << c.schema << " " << ok;
      EXPECT_TRUE(follows_schema(schema, ojson::parse(ok))) << c.schema << " " << ok;
    }
    for (const char* bad : c.bad) {
      EXPECT_FALSE(instance(*g, bad)) << c.schema << " " << bad;
      EXPECT_FALSE(follows_schema(schema, ojson::parse(bad))) << c.schema << " " << bad;
    }
    for (int i = 0; i < 100; ++i) {
      const std::string text = random_sentence(*g, rng, 0.3);
      if (text.empty()) continue;
      EXPECT_TRUE(follows_schema(schema, ojson::parse(text))) << c.schema << "\n" << text;
    }
  }
  EXPECT_NE(refusal(R"({"type":"array","prefixItems":[{"type":"integer"}],"items":false,"minItems":2})").find("minItems"),
            std::string::npos);
  const ojson set = ojson::parse(R"({"type":"array","items":{"type":"integer"},"uniqueItems":true})");
  std::string why;
  bool exact = true;
  ASSERT_TRUE(compile_schema(set, "schema", &why, &exact)) << why;
  EXPECT_FALSE(exact);  // [1,1] is a sentence
  EXPECT_TRUE(follows_schema(set, ojson::parse("[1,2,3]")));
  EXPECT_FALSE(follows_schema(set, ojson::parse("[1,2,1.0]")));
  ASSERT_TRUE(compile_schema(ojson::parse(R"({"type":"array","uniqueItems":true,"maxItems":1})"), "schema", &why, &exact));
  EXPECT_TRUE(exact);
  EXPECT_EQ(refusal(R"({"type":"array","uniqueItems":1})"), "schema.uniqueItems must be true or false");
  // A set of a few values (pydantic's set of a Literal or an Enum): held
  // exactly. Every array of up to 4 items drawn from the values (repeats
  // included) against the validator, both ways. An enum holding an object
  // is not such a set (held in part).
  ASSERT_TRUE(compile_schema(ojson::parse(R"({"type":"array","items":{"enum":["a",{"x":1}]},"uniqueItems":true})"), "schema",
                             &why, &exact));
  EXPECT_FALSE(exact);
  for (const char* text : {R"({"type":"array","items":{"enum":["a","b","c",1,1.0]},"uniqueItems":true})",
                           R"({"type":"array","items":{"$ref":"#/$defs/E"},"uniqueItems":true,"minItems":1,"maxItems":2,
                               "$defs":{"E":{"type":"string","enum":["r","g","b",3]}}})",
                           R"({"type":"array","items":{"type":"boolean"},"uniqueItems":true})"}) {
    const ojson schema = ojson::parse(text);
    auto g = compile_schema(schema, "schema", &why, &exact);
    ASSERT_TRUE(g) << text << ": " << why;
    EXPECT_TRUE(exact) << text;
    const std::vector<ojson> pool = {"a", "b", "c", 1, 1.0, "r", "g", 3, true, false};
    std::vector<std::vector<std::size_t>> arrays = {{}};
    for (std::size_t len = 1; len <= 4; ++len) {
      std::vector<std::vector<std::size_t>> next;
      for (const auto& a : arrays)
        if (a.size() == len - 1)
          for (std::size_t i = 0; i < pool.size(); ++i) {
            auto b = a;
            b.push_back(i);
            next.push_back(b);
          }
      arrays.insert(arrays.end(), next.begin(), next.end());
    }
    for (const auto& a : arrays) {
      ojson v = ojson::array();
      for (std::size_t i : a) v.push_back(pool[i]);
      // (1.0 is the value 1, written "1")
      const bool spelled = std::none_of(v.begin(), v.end(), [](const ojson& x) { return x.is_number_float(); });
      if (instance(*g, v.dump())) {
        EXPECT_TRUE(follows_schema(schema, v)) << text << " " << v.dump();
      } else {
        EXPECT_FALSE(follows_schema(schema, v) && spelled) << text << " " << v.dump();
      }
    }
  }
}

// allOf of several schemas, merged: over every ordered pair of a set of
// members (objects open and closed, a $ref, nested allOf, types, bounds,
// enums, arrays), what the grammar writes follows the allOf, and every
// candidate value that follows it is written (in some order of its
// members: the grammar writes them in the merged schema's order).
TEST(SchemaGrammarTest, AllOfIsMerged) {
  const char* members[] = {
      R"({"type":"object","properties":{"a":{"type":"integer","minimum":0}},"required":["a"]})",
      R"({"type":"object","properties":{"b":{"type":"string","maxLength":3}},"required":["b"],"additionalProperties":false})",
      R"({"type":"object","properties":{"a":{"type":"integer","maximum":5},"b":{"enum":["x","yy","zzzz"]}}})",
      R"({"properties":{"c":{"type":"boolean"}},"additionalProperties":{"type":"integer"}})",
      R"({"$ref":"#/$defs/P"})",
      R"({"allOf":[{"type":"object"},{"required":["c"]}]})",
      R"({"type":["object","null"]})",
      R"({"type":"integer","minimum":-3})",
      R"({"type":"number","maximum":4.5})",
      R"({"enum":[1,2,"x",null]})",
      R"({"type":"string","minLength":2})",
      R"({"const":"yy"})",
      R"({"type":"array","items":{"type":"integer"},"maxItems":3})",
      R"({"type":"array","items":{"minimum":0},"minItems":1})",
      R"({"anyOf":[{"type":"string"},{"type":"integer"}]})",
      R"({"description":"annotations only"})",
      "true",
  };
  const char* candidates[] = {R"({})", R"({"a":1})", R"({"a":-1})", R"({"a":7})", R"({"a":1,"b":"x"})",
                              R"({"a":2,"b":"yy"})", R"({"a":3,"b":"zzzz"})", R"({"b":"x"})", R"({"a":1.5})",
                              R"({"a":2,"c":true})", R"({"a":2,"c":true,"d":4})", R"({"a":2,"d":"s"})", R"({"c":false})",
                              R"({"a":0,"b":"yy","c":true})", R"({"a":0.5,"c":true})", "null", "1", "2", "-3", "-4", "4",
                              "5", "4.5", R"("x")", R"("yy")", R"("abc")", R"("")", "[]", "[1]", "[1,2,3]", "[1,2,3,4]",
                              "[-1]", "[0,5]", "true"};
  // The candidate's members in every order (ordered_json keeps insertion).
  auto orders = [](const ojson& v) {
    std::vector<ojson> out;
    if (!v.is_object()) return std::vector<ojson>{v};
    std::vector<std::string> keys;
    for (auto it = v.begin(); it != v.end(); ++it) keys.push_back(it.key());
    std::sort(keys.begin(), keys.end());
    do {
      ojson o = ojson::object();
      for (const std::string& k : keys) o[k] = v[k];
      out.push_back(o);
    } while (std::next_permutation(keys.begin(), keys.end()));
    return out;
  };
  std::mt19937 rng(23);
  int compiled = 0, refused[2] = {0, 0};
  for (const char* first : members)
    for (const char* second : members) {
      ojson schema = {{"allOf", {ojson::parse(first), ojson::parse(second)}}};
      schema["$defs"] = ojson::parse(R"({"P":{"type":"object","properties":{"a":{"type":"number","multipleOf":0.5}},"required":["a"]}})");
      std::string why;
      bool exact = false;
      auto g = compile_schema(schema, "schema", &why, &exact);
      if (!g) {
        ++refused[why.find("anyOf cannot be merged") != std::string::npos ? 0 : 1];
        // Refused with the reason: an anyOf beside constraints, or no value.
        EXPECT_TRUE(why.find("anyOf cannot be merged") != std::string::npos || why.find("no ") != std::string::npos)
            << schema.dump() << ": " << why;
        if (why.find("no ") != std::string::npos) {
          for (const char* c : candidates) EXPECT_FALSE(follows_schema(schema, ojson::parse(c))) << schema.dump() << " " << c;
        }
        continue;
      }
      ++compiled;
      ASSERT_TRUE(exact) << schema.dump();
      // Beside named members only those are written (as for one schema):
      // the names of either member's properties and required.
      // And, as for one schema, object keywords without a type are read as
      // an object's (JSON Schema lets other values through).
      std::set<std::string> named;
      bool typed = false, object_words = false;
      for (const ojson* m : {&schema["allOf"][0], &schema["allOf"][1]}) {
        const ojson& target = m->contains("$ref") ? schema["$defs"]["P"] : *m;
        for (const ojson* at : {&target, target.contains("allOf") ? &target["allOf"][0] : &target,
                                target.contains("allOf") ? &target["allOf"][1] : &target}) {
          if (!at->is_object()) continue;
          typed = typed || at->contains("type") || at->contains("enum") || at->contains("const") || at->contains("anyOf");
          object_words = object_words || at->contains("properties") || at->contains("required");
          if (at->contains("properties"))
            for (auto it = (*at)["properties"].begin(); it != (*at)["properties"].end(); ++it) named.insert(it.key());
          if (at->contains("required"))
            for (const ojson& k : (*at)["required"]) named.insert(k.get<std::string>());
        }
      }
      for (const char* c : candidates) {
        const ojson v = ojson::parse(c);
        bool written = false;
        for (const ojson& o : orders(v)) written = written || instance(*g, o.dump());
        bool only_named = v.is_object() || typed || !object_words;
        if (v.is_object() && !named.empty())
          for (auto it = v.begin(); it != v.end(); ++it) only_named = only_named && named.count(it.key()) > 0;
        if (written) {
          EXPECT_TRUE(follows_schema(schema, v)) << schema.dump() << " " << c;
        } else {
          EXPECT_FALSE(follows_schema(schema, v) && only_named) << schema.dump() << " " << c;
        }
      }
      for (int i = 0; i < 10; ++i) {
        const std::string text = random_sentence(*g, rng, 0.3);
        if (text.empty()) continue;  // (cut at the walk's bound)
        EXPECT_TRUE(follows_schema(schema, ojson::parse(text))) << schema.dump() << " wrote " << text;
      }
    }
  EXPECT_GT(compiled, 100) << refused[0] << " refused for an anyOf, " << refused[1] << " for no value";
  // A closed member forbids the other's names (additionalProperties
  // applies to the names it does not list itself).
  EXPECT_NE(refusal(R"({"type":"object","allOf":[{"properties":{"v":{"type":"integer"}}}],"required":["v"],
                       "additionalProperties":false})").find("no value"), std::string::npos);
  // Keywords beside allOf are one more member; a $ref's recursion is kept
  // where one side alone constrains.
  auto g = compile(R"({"type":"object","allOf":[{"properties":{"n":{"$ref":"#"}}},{"properties":{"v":{"type":"integer"}}}],
                      "required":["v"]})");
  ASSERT_TRUE(g);
  EXPECT_TRUE(instance(*g, R"({"n":{"n":{"v":1},"v":2},"v":3})"));
  EXPECT_FALSE(instance(*g, R"({"n":{"v":1},"v":3,"w":4})"));
  EXPECT_FALSE(instance(*g, R"({"n":{"n":{}},"v":3})"));
  // Review cases. A member with both enum and const: its const, if its
  // enum lists it.
  EXPECT_NE(refusal(R"({"allOf":[{"enum":[1],"const":2},{"enum":[2]}]})").find("no value"), std::string::npos);
  // The same recursive $ref on both sides: merged once a level, the loop
  // closed (it had been expanded into a tree, exponential in the depth).
  g = compile(R"({"$defs":{"N":{"type":"object","properties":{"next":{"$ref":"#/$defs/N"}}}},
                  "allOf":[{"$ref":"#/$defs/N"},{"properties":{"next":{"$ref":"#/$defs/N"},"v":{"type":"integer"}}}]})");
  ASSERT_TRUE(g);
  EXPECT_TRUE(instance(*g, R"({"next":{"next":{}},"v":1})"));
  std::string wide = R"({"$defs":{)";
  for (int i = 0; i < 10; ++i) {
    wide += "\"D" + std::to_string(i) + "\":{\"type\":\"object\",\"properties\":{";
    for (int k = 0; k < 5; ++k) wide += std::string(k ? "," : "") + "\"p" + std::to_string(k) + "\":{\"$ref\":\"#/$defs/D" + std::to_string(i + 1) + "\"}";
    wide += "}},";
  }
  wide += R"("D10":{"type":"string"}},"allOf":[{"$ref":"#/$defs/D0"},{"$ref":"#/$defs/D0"}]})";
  g = compile(wide.c_str());
  ASSERT_TRUE(g);
  EXPECT_LT(g->elements(), 100'000u);
  // An enum beside a recursive $ref: the enum's values checked in the root.
  EXPECT_NE(refusal(R"({"type":"object","properties":{"v":{"allOf":[{"enum":[{"n":"s"}]},{"properties":{"n":{"$ref":"#"}}}]}}})")
                .find("no value"),
            std::string::npos);  // "s" is no object (it had been checked against the member, as a root)
  g = compile(R"({"$defs":{"S":{"type":"string"}},"allOf":[{"enum":[{"a":"x"}]},{"properties":{"a":{"$ref":"#/$defs/S"}}}]})");
  ASSERT_TRUE(g);
  EXPECT_TRUE(instance(*g, R"({"a":"x"})"));
  // An optional member no value follows is not written; two formats are
  // not spelled.
  g = compile(R"({"type":"object","properties":{"o":{"allOf":[{"required":["x"]},{"properties":{"y":{}},"additionalProperties":false}]},
                  "p":{"type":"integer"}}})");
  ASSERT_TRUE(g);
  EXPECT_TRUE(instance(*g, R"({"p":1})"));
  g = compile(R"({"allOf":[{"type":"string","format":"date"},{"format":"uuid"}]})");
  ASSERT_TRUE(g);
  EXPECT_TRUE(instance(*g, R"("not a date")"));
  // Second review. Three members on a recursive $ref (the lazy merges had
  // nested allOf in allOf, a new schema at each level: a stack overflow).
  for (const char* e : {R"({"type":"object","properties":{"b":{"$ref":"#/$defs/E"}}})",
                        R"({"type":"array","items":{"$ref":"#/$defs/E"}})"}) {
    ojson schema = ojson::parse(R"({"allOf":[{"$ref":"#/$defs/E"},{"$ref":"#/$defs/E"},{"$ref":"#/$defs/E"}]})");
    schema["$defs"]["E"] = ojson::parse(e);
    std::string why;
    ASSERT_TRUE(compile_schema(schema, "schema", &why)) << why;
  }
  // Merges were memoized by the members' addresses, which a copy made for
  // nullable (then freed) could hand to the next: one item got another's
  // grammar.
  {
    const ojson schema = ojson::parse(R"({"type":"array","items":false,"prefixItems":[
        {"nullable":true,"allOf":[{"type":"integer"},{"minimum":5}]},{"nullable":true,"allOf":[{"type":"string"},{"maxLength":3}]},
        {"nullable":true,"allOf":[{"type":"string"},{"maxLength":3}]}]})");
    std::string why;
    bool held = false;
    auto tuple = compile_schema(schema, "schema", &why, &held);
    ASSERT_TRUE(tuple) << why;
    EXPECT_TRUE(held);
    EXPECT_TRUE(instance(*tuple, R"([7,"ab","ab"])"));
    EXPECT_FALSE(instance(*tuple, R"([7,"ab",7])"));
    EXPECT_TRUE(instance(*tuple, R"([null,null,"abc"])"));
  }
  // An optional member with nullable beside an allOf is compiled as before.
  g = compile(R"({"type":"object","properties":{"a":{"nullable":true,"allOf":[{"type":"string"},{"maxLength":3}]}}})");
  ASSERT_TRUE(g);
  EXPECT_TRUE(instance(*g, R"({"a":null})"));
  // allOf of allOf of $refs, k members a level: the merges are bounded.
  std::string chain = R"({"$defs":{)";
  for (int i = 0; i < 14; ++i)
    chain += "\"D" + std::to_string(i) + "\":{\"allOf\":[" + [&] {
      std::string refs;
      for (int k = 0; k < 4; ++k) refs += std::string(k ? "," : "") + "{\"$ref\":\"#/$defs/D" + std::to_string(i + 1) + "\"}";
      return refs;
    }() + "]},";
  chain += R"("D14":{"type":"string"}},"$ref":"#/$defs/D0"})";
  std::string why;
  compile_schema(ojson::parse(chain), "schema", &why);  // compiled or refused, within its budget
}

TEST(SchemaGrammarTest, RefusalsNameTheSubschema) {
  EXPECT_EQ(refusal(R"({"type":"object","patternProperties":{"^x":{}}})"),
            "schema: the keyword 'patternProperties' cannot be checked here (strict)");
  EXPECT_NE(refusal(R"({"allOf":[{"type":"string"},{"pattern":"a"},{"pattern":"b"}]})").find("schema.allOf[2]"),
            std::string::npos);
  EXPECT_NE(refusal(R"({"type":"object","anyOf":[{"required":["a"]}]})").find("'type' beside anyOf"), std::string::npos);
  EXPECT_NE(refusal("false").find("no value"), std::string::npos);
  EXPECT_NE(refusal(R"({"properties":{"a":false},"required":["a"]})").find("schema.properties.a"), std::string::npos);
  EXPECT_NE(refusal(R"({"$defs":{"a":{"$ref":"#/$defs/b"},"b":{"anyOf":[{"$ref":"#/$defs/a"}]}},"$ref":"#/$defs/a"})")
                .find("refers back to itself"),
            std::string::npos);
  EXPECT_NE(refusal(R"({"type":"array","maxItems":100000})").find("10,000"), std::string::npos);
  EXPECT_NE(refusal(R"({"type":"integer","minimum":5,"maximum":4})").find("no integer"), std::string::npos);
  EXPECT_NE(refusal(R"({"enum":[1,2],"type":"string"})").find("enum"), std::string::npos);
  EXPECT_NE(refusal(R"({"type":"string","minLength":3,"maxLength":2})").find("minLength"), std::string::npos);
  EXPECT_EQ(refusal(R"({"type":"object","required":["a",1]})"), "schema.required must list names (strings)");
  // Wide but within the bounds: compiled, whatever its size.
  std::string many = R"({"type":"object","properties":{)";
  for (int i = 0; i < 2000; ++i) many += (i ? "," : "") + std::string("\"k") + std::to_string(i) + R"(":{"type":"string","maxLength":20})";
  many += "}}";
  EXPECT_TRUE(compile(many.c_str()));
}

TEST(SchemaGrammarTest, OptionalMembersTakeTheirCommas) {
  auto g = compile(R"({"properties":{"a":{"type":"integer"},"b":{"type":"integer"},"c":{"type":"integer"}}})");
  ASSERT_TRUE(g);
  for (const char* ok : {"{}", R"({"a":1})", R"({"b":1})", R"({"c":1})", R"({"a":1,"c":2})", R"({"b":1,"c":2})",
                         R"({"a":1,"b":2,"c":3})", "{ }"})
    EXPECT_TRUE(instance(*g, ok)) << ok;
  for (const char* bad : {R"({,"a":1})", R"({"a":1,})", R"({"a":1 "b":2})", R"({"c":1,"a":2})", R"({"a":1,"a":2})"})
    EXPECT_FALSE(instance(*g, bad)) << bad;
}

// Tools beside a JSON response format: an answer of the grammar is calls
// (read back as calls, nothing else) or else the JSON answer (read back as
// content, no call, an instance of the schema), both kinds drawn.
TEST(SchemaGrammarTest, CallsOrAnAnswer) {
  const std::vector<ToolSpec> tools = {
      {"get_weather", true, ojson::parse(R"({"type":"object","properties":{"city":{"type":"string","maxLength":20}},
          "required":["city"],"additionalProperties":false})")}};
  const ojson schema = ojson::parse(
      R"({"type":"object","properties":{"a":{"type":"integer","minimum":0,"maximum":9}},"required":["a"],"additionalProperties":false})");
  std::mt19937 rng(7);
  for (ToolFormat format : {ToolFormat::kHermes, ToolFormat::kLlamaJson, ToolFormat::kMistral})
    for (const ojson& answer : {schema, ojson()}) {
      std::string why;
      auto g = tool_call_grammar(format, tools, "", true, &why, &answer);
      ASSERT_TRUE(g) << why;
      int calls = 0, answers = 0;
      for (int i = 0; i < 300; ++i) {
        const std::string text = random_sentence(*g, rng, 0.3);
        if (text.empty()) continue;
        const ToolOutput out = parse_tool_calls(format, text, tools);
        if (!out.calls.empty()) {
          ++calls;
          EXPECT_EQ(out.content, "") << text;
          for (const ToolCall& c : out.calls) EXPECT_TRUE(follows_schema(tools[0].parameters, ojson::parse(c.arguments))) << text;
        } else {
          ++answers;
          EXPECT_EQ(out.content, text);
          ASSERT_TRUE(ojson::accept(text)) << text;
          const ojson v = ojson::parse(text);
          EXPECT_TRUE(v.is_object()) << text;
          if (!answer.is_null()) {
            EXPECT_TRUE(follows_schema(schema, v)) << text;
          }
        }
      }
      // (llama3_json calls are objects too: beside any object, a random
      // walk almost never spells a call out.)
      if (format != ToolFormat::kLlamaJson || !answer.is_null()) {
        EXPECT_GT(calls, 30) << static_cast<int>(format);
      }
      EXPECT_GT(answers, 30) << static_cast<int>(format);
      EXPECT_TRUE(instance(*g, R"({"a": 3})"));
      EXPECT_FALSE(instance(*g, "Checking."));
      EXPECT_FALSE(instance(*g, R"(Checking. {"a": 3})"));
      if (!answer.is_null()) {
        EXPECT_FALSE(instance(*g, R"({"a": 30})"));
      }
      if (format == ToolFormat::kHermes) {
        EXPECT_TRUE(instance(*g, R"(<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>)"));
        // The same allOf text in a tool's schema and in the answer's, its
        // $ref read in each one's own root: each holds to its own.
        const std::string allof = R"("type":"object","properties":{"p":{"allOf":[{"type":"object","properties":
            {"a":{"$ref":"#/$defs/X"}}},{"required":["a"]}]}},"required":["p"],"additionalProperties":false)";
        const std::vector<ToolSpec> defs_tool = {
            {"f", false, ojson::parse(R"({"$defs":{"X":{"type":"integer"}},)" + allof + "}")}};
        const ojson defs_answer = ojson::parse(R"({"$defs":{"X":{"type":"string"}},)" + allof + "}");
        auto both = tool_call_grammar(format, defs_tool, "", true, &why, &defs_answer);
        ASSERT_TRUE(both) << why;
        EXPECT_TRUE(instance(*both, R"({"p":{"a":"s"}})"));
        EXPECT_FALSE(instance(*both, R"({"p":{"a":1}})"));
        EXPECT_TRUE(instance(*both, R"(<tool_call>{"name": "f", "arguments": {"p":{"a":1}}}</tool_call>)"));
        EXPECT_FALSE(instance(*both, R"(<tool_call>{"name": "f", "arguments": {"p":{"a":"s"}}}</tool_call>)"));
        EXPECT_FALSE(instance(*g, R"({"a": 3}<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>)"));
      }
    }
}

// Forced tool calls: random answers of the call grammar are read back by
// the server's own parser as calls of the tools, nothing else, with
// arguments that follow a strict tool's schema.
TEST(SchemaGrammarTest, ForcedToolCalls) {
  std::vector<ToolSpec> tools = {
      {"get_weather", true, ojson::parse(R"({"type":"object","properties":{"city":{"type":"string","maxLength":20},
          "unit":{"enum":["c","f"]}},"required":["city"],"additionalProperties":false})")},
      {"no_args", false, nullptr},
      {"loose", false, ojson::parse(R"({"type":"object","patternProperties":{"^x":{"type":"integer"}}})")},
  };
  std::mt19937 rng(5);
  struct Case {
    ToolFormat format;
    std::string only;
    bool parallel;
  };
  for (const Case& k : {Case{ToolFormat::kHermes, "", true}, Case{ToolFormat::kHermes, "", false},
                        Case{ToolFormat::kHermes, "no_args", true}, Case{ToolFormat::kLlamaJson, "", true},
                        Case{ToolFormat::kLlamaJson, "get_weather", false}, Case{ToolFormat::kMistral, "", true},
                        Case{ToolFormat::kMistral, "get_weather", false}}) {
    std::string why;
    auto g = tool_call_grammar(k.format, tools, k.only, k.parallel, &why);
    ASSERT_TRUE(g) << why;
    int whole = 0;
    std::size_t most = 0;
    for (int i = 0; i < 200; ++i) {
      const std::string text = random_sentence(*g, rng, 0.3);
      if (text.empty()) continue;
      ++whole;
      const ToolOutput out = parse_tool_calls(k.format, text, tools);
      ASSERT_FALSE(out.calls.empty()) << text;
      EXPECT_EQ(out.content, "") << text;
      if (k.format == ToolFormat::kHermes) {
        std::size_t blocks = 0;
        for (std::size_t at = 0; (at = text.find("<tool_call>", at)) != std::string::npos; ++at) ++blocks;
        EXPECT_EQ(out.calls.size(), blocks) << text;
      }
      if (k.format == ToolFormat::kMistral) {
        EXPECT_EQ(out.calls.size(), ojson::parse(text).size()) << text;  // one array of the calls
      }
      if (!k.parallel) {
        EXPECT_EQ(out.calls.size(), 1u) << text;
      }
      most = std::max(most, out.calls.size());
      for (const ToolCall& c : out.calls) {
        if (!k.only.empty()) {
          EXPECT_EQ(c.name, k.only) << text;
        }
        if (c.name == "no_args") {
          EXPECT_EQ(ojson::parse(c.arguments), ojson::object()) << text;
        }
        if (c.name == "get_weather") {
          EXPECT_TRUE(follows_schema(tools[0].parameters, ojson::parse(c.arguments))) << text;
        }
      }
    }
    EXPECT_GT(whole, 150);
    if (k.parallel) {
      EXPECT_GT(most, 1u);
    }
  }
  std::string why;
  EXPECT_FALSE(tool_call_grammar(ToolFormat::kNone, tools, "", true, &why));
  EXPECT_NE(why.find("cannot be forced"), std::string::npos) << why;
  EXPECT_FALSE(tool_call_grammar(ToolFormat::kHermes, tools, "nope", true, &why));
  EXPECT_NE(why.find("nope"), std::string::npos) << why;
  tools[2].strict = true;  // a strict tool whose schema cannot be held to
  EXPECT_FALSE(tool_call_grammar(ToolFormat::kHermes, tools, "", true, &why));
  EXPECT_NE(why.find("tools[2].function.parameters"), std::string::npos) << why;
  // ... or held only in part (a oneOf whose branches overlap): its forced
  // call might not follow it, and would then not be returned as a call.
  for (const char* p : {R"({"type":"object","properties":{"n":{"oneOf":[{"type":"integer"},{"type":"number"}]}}})",
                        R"({"type":"object","properties":{"n":{"oneOf":[{"type":"object","properties":{"k":{"const":1}},
                            "required":["k"]},{"type":"object"}]}}})"}) {
    std::vector<ToolSpec> strict = {{"f", true, ojson::parse(p)}};
    EXPECT_FALSE(tool_call_grammar(ToolFormat::kHermes, strict, "", true, &why)) << p;
    EXPECT_NE(why.find("held only in part"), std::string::npos) << why;
    strict[0].strict = false;  // not strict: forced, arguments as the model writes them within the grammar
    EXPECT_TRUE(tool_call_grammar(ToolFormat::kHermes, strict, "", true, &why)) << p;
  }
  // Held exactly: number bounds, and oneOf of branches no value follows two of.
  for (const char* p : {R"({"type":"object","properties":{"n":{"type":"integer","minimum":0},"m":{"type":"integer",
                            "minimum":1,"maximum":5}},"required":["n","m"]})",
                        R"({"type":"object","properties":{"n":{"type":"number","exclusiveMinimum":0}},"required":["n"]})",
                        R"({"type":"object","properties":{"n":{"oneOf":[{"type":"integer"},{"type":"string"}]}}})"}) {
    std::vector<ToolSpec> exact = {{"f", true, ojson::parse(p)}};
    EXPECT_TRUE(tool_call_grammar(ToolFormat::kHermes, exact, "", true, &why)) << p << ": " << why;
  }
  // An argument may mention the tags: the call is read whole all the same.
  const std::vector<ToolSpec> writer = {{"write", false, ojson::parse(R"({"type":"object"})")}};
  for (const char* text : {"<tool_call>{\"name\": \"write\", \"arguments\": {\"text\": \"a</tool_call>b\"}}</tool_call>",
                           "<tool_call>\n{\"name\": \"write\", \"arguments\": {\"text\": \"<tool_call>\"}}\n</tool_call>"}) {
    const ToolOutput out = parse_tool_calls(ToolFormat::kHermes, text, writer);
    ASSERT_EQ(out.calls.size(), 1u) << text;
    EXPECT_EQ(out.content, "") << text;
  }
}

// A grammar crowded with ways (1,100 string branches: past the bound on
// stacks, and past the bound on a step's work inside an escape): what the
// mask allows is still only what the recogniser takes.
TEST(SchemaGrammarTest, CrowdedGrammarsStaySound) {
  auto file = engine::GgufFile::open(models_dir() + "/tokenizers/llama.cpp-vocab/ggml-vocab-gpt-2.gguf");
  if (!file.is_ok()) GTEST_SKIP() << "ggml-vocab-gpt-2.gguf not found (set AIRLOCK_MODELS_DIR)";
  auto tok = engine::Tokenizer::from_gguf(**file);
  ASSERT_TRUE(tok.is_ok());
  auto vocab = std::make_shared<const engine::JsonVocab>(**tok);
  std::string schema = R"({"type":"array","items":{"anyOf":[)";
  for (int i = 0; i < 1100; ++i) schema += (i ? "," : "") + std::string(R"({"type":"string","maxLength":)") + std::to_string(20 + i) + "}";
  schema += "]}}";
  auto g = compile(schema.c_str());
  ASSERT_TRUE(g);
  for (const std::string prefix : {"[\"", "[\"abc\\", "[\"abc\\u00"}) {
    engine::JsonConstraint c(vocab, std::nullopt, g);
    for (std::int32_t t : (*tok)->encode(prefix, false, false)) c.accept(t);
    std::vector<std::uint64_t> mask;
    c.allowed(&mask);
    int allowed = 0, plain = 0;
    for (std::int32_t t = 0; t < (*tok)->n_vocab(); ++t) {
      const std::string& b = vocab->bytes[static_cast<std::size_t>(t)];
      if (b.empty() || !((mask[static_cast<std::size_t>(t) / 64] >> (t % 64)) & 1u)) continue;
      ++allowed;
      // (Tokens of plain text, 49,000 of them inside a string, sampled.)
      if (vocab->plain[static_cast<std::size_t>(t)] && ++plain % 50 != 0) continue;
      GrammarArena arena;
      GrammarMatcher m(g.get(), &arena);
      ASSERT_TRUE(m.feed(prefix + b)) << prefix << " + " << b;
    }
    EXPECT_GT(allowed, 0) << prefix;
  }
}

// Shapes found by review: many optional members (a long chain of rules
// read without a byte), zod's nullable, string bounds of any size, and
// schemas whose ways multiply ($ref graphs, many string branches): held,
// and the work of a byte bounded.
TEST(SchemaGrammarTest, HardShapes) {
  std::string many = R"({"type":"object","properties":{)";
  for (int i = 0; i < 70; ++i) many += (i ? "," : "") + std::string("\"p") + std::to_string(i) + R"(":{"type":"integer"})";
  many += "}}";
  auto g = compile(many.c_str());
  ASSERT_TRUE(g);
  for (const char* ok : {"{}", R"({"p0":1})", R"({"p69":2})", R"({"p0":1,"p69":2})", R"({"p3":1,"p40":2,"p68":3})"})
    EXPECT_TRUE(instance(*g, ok)) << ok;

  const char* nullable = R"({"type":"object","properties":{"phone":{"type":"string","nullable":true},
      "n":{"type":"integer","nullable":false}},"required":["phone","n"],"additionalProperties":false})";
  g = compile(nullable);
  ASSERT_TRUE(g);
  EXPECT_TRUE(instance(*g, R"({"phone":null,"n":1})"));
  EXPECT_TRUE(instance(*g, R"({"phone":"x","n":1})"));
  EXPECT_FALSE(instance(*g, R"({"phone":"x","n":null})"));
  EXPECT_TRUE(follows_schema(ojson::parse(nullable), ojson::parse(R"({"phone":null,"n":1})")));
  EXPECT_FALSE(follows_schema(ojson::parse(nullable), ojson::parse(R"({"phone":"x","n":null})")));

  g = compile(R"({"type":"string","minLength":3,"maxLength":1000000})");
  ASSERT_TRUE(g);
  EXPECT_TRUE(instance(*g, "\"" + std::string(5000, 'x') + "\""));
  EXPECT_FALSE(instance(*g, R"("xy")"));

  // 4 ways at each of 16 levels: 4^16 paths to a string.
  ojson dag = {{"$defs", ojson::object()}};
  for (int i = 0; i < 16; ++i) {
    const std::string next = "#/$defs/d" + std::to_string(i + 1);
    dag["$defs"]["d" + std::to_string(i)] = {{"anyOf", ojson::array({{{"$ref", next}}, {{"$ref", next}}, {{"$ref", next}}, {{"$ref", next}}})}};
  }
  dag["$defs"]["d16"] = {{"type", "string"}};
  dag["$ref"] = "#/$defs/d0";
  std::string why;
  g = compile_schema(dag, "schema", &why);
  ASSERT_TRUE(g) << why;
  {
    GrammarArena arena;
    GrammarMatcher m(g.get(), &arena);
    EXPECT_LT(arena.nodes.size(), 200'000u);
    const std::size_t before = arena.nodes.size();
    EXPECT_TRUE(m.feed(R"("abc")"));
    EXPECT_LT(arena.nodes.size() - before, 200'000u);
  }
  std::string strings = R"({"anyOf":[)";
  for (int i = 0; i < 50; ++i) strings += (i ? "," : "") + std::string(R"({"type":"string","maxLength":)") + std::to_string(50 + i) + "}";
  strings += "]}";
  g = compile(strings.c_str());
  ASSERT_TRUE(g);
  GrammarArena arena;
  GrammarMatcher m(g.get(), &arena);
  ASSERT_TRUE(m.feed(R"("hello)"));
  EXPECT_EQ(m.free_text_room(), 99u - 5u);
  EXPECT_LT(arena.nodes.size(), 2000u);
}

// Enum values sharing prefixes (held as a tree of the prefixes): each one
// is read, and neither a prefix of one nor one with more after it.
TEST(SchemaGrammarTest, EnumsWithSharedPrefixes) {
  auto g = compile(R"({"enum":["ab","abc","abd","abcdef","b","",1,10,100,"ab"]})");
  ASSERT_TRUE(g);
  for (const char* ok : {R"("ab")", R"("abc")", R"("abd")", R"("abcdef")", R"("b")", R"("")", "1", "10", "100"})
    EXPECT_TRUE(instance(*g, ok)) << ok;
  for (const char* no : {R"("a")", R"("abcd")", R"("abcde")", R"("abcdefg")", R"("abe")", R"("bb")", "1000", "0", R"("ab )"})
    EXPECT_FALSE(instance(*g, no)) << no;
  // 9,000 strings of 197 bytes each (1.8 MB of text): held as their shared
  // prefixes, not a node per byte (which took ~400 MB); every one read.
  std::mt19937 rng(5);
  ojson many = ojson::array();
  for (int i = 0; i < 9000; ++i) {
    std::string v(197, 'a');
    for (char& c : v) c = static_cast<char>('a' + rng() % 26);
    many.push_back(v);
  }
  std::string why;
  auto big = compile_schema({{"enum", many}}, "schema", &why);
  ASSERT_TRUE(big) << why;
  for (int i : {0, 4500, 8999}) EXPECT_TRUE(instance(*big, many[i].dump())) << i;
  std::string near = many[7].get<std::string>();
  near.back() = near.back() == 'a' ? 'b' : 'a';
  EXPECT_FALSE(instance(*big, ojson(near).dump()));
}

// Compiling a hostile schema is bounded work (it runs on the request's
// thread, before any answer): each of these took from seconds to minutes.
// One budget over the compile, not one per merge or per enum value.
TEST(SchemaGrammarTest, HostileEnumsAndMergesAreRefused) {
  auto range = [](int lo, int hi) {
    ojson a = ojson::array();
    for (int i = lo; i < hi; ++i) a.push_back(i);
    return a;
  };
  std::string why;
  // Two enums of 4,000 intersected: 16 million pairs.
  ojson pair = {{"allOf", ojson::array({{{"enum", range(0, 4000)}}, {{"enum", range(4000, 8000)}}})}};
  EXPECT_FALSE(compile_schema(pair, "schema", &why));
  EXPECT_NE(why.find("too many to intersect"), std::string::npos) << why;
  // Small enough, once: merged, and the intersection exact.
  ojson fits = {{"allOf", ojson::array({{{"enum", range(0, 100)}}, {{"enum", range(50, 150)}}})}};
  auto g = compile_schema(fits, "schema", &why);
  ASSERT_TRUE(g) << why;
  EXPECT_TRUE(instance(*g, "50"));
  EXPECT_TRUE(instance(*g, "99"));
  EXPECT_FALSE(instance(*g, "49"));
  EXPECT_FALSE(instance(*g, "100"));
  // The same pair of $defs merged under many properties: the budget is the
  // compile's, so the repeats run it out instead of multiplying the work.
  ojson shared = {{"$defs", {{"A", {{"enum", range(0, 1500)}}}, {"B", {{"enum", range(1000, 2500)}}}}},
                  {"type", "object"}, {"properties", ojson::object()}};
  for (int i = 0; i < 64; ++i)
    shared["properties"]["p" + std::to_string(i)] = {
        {"allOf", ojson::array({{{"$ref", "#/$defs/A"}}, {{"$ref", "#/$defs/B"}}})}, {"minimum", i}};
  EXPECT_FALSE(compile_schema(shared, "schema", &why));
  EXPECT_NE(why.find("too many to intersect"), std::string::npos) << why;
  // Enum values each costing a validator its whole budget (an anyOf of 4
  // ways at each of 14 levels): one budget for all of them.
  ojson x = {{"type", "array"},
             {"items", {{"anyOf", ojson::array({{{"$ref", "#/$defs/X"}}, {{"$ref", "#/$defs/X"}}, {{"$ref", "#/$defs/X"}},
                                                {{"$ref", "#/$defs/X"}}})}}}};
  ojson deep = 0;
  for (int i = 0; i < 14; ++i) deep = ojson::array({deep});
  ojson costly = {{"$defs", {{"X", x}}}, {"enum", ojson::array()}, {"items", x["items"]}};
  for (int i = 0; i < 200; ++i) costly["enum"].push_back(deep);
  EXPECT_FALSE(compile_schema(costly, "schema", &why));
  EXPECT_NE(why.find("its enum values take too much work to check"), std::string::npos) << why;
}

// Under JsonConstraint with a schema's grammar, a walk through gpt-2's
// vocabulary taking random allowed tokens (structure preferred once it has
// gone on) ends with the end token and a text that follows the schema;
// every sampled allowed token keeps the text a prefix of a sentence.
TEST(SchemaGrammarTest, ConstrainedWalkThroughARealVocabulary) {
  auto file = engine::GgufFile::open(models_dir() + "/tokenizers/llama.cpp-vocab/ggml-vocab-gpt-2.gguf");
  if (!file.is_ok()) GTEST_SKIP() << "ggml-vocab-gpt-2.gguf not found (set AIRLOCK_MODELS_DIR)";
  auto tok = engine::Tokenizer::from_gguf(**file);
  ASSERT_TRUE(tok.is_ok()) << tok.status().to_string();
  auto vocab = std::make_shared<const engine::JsonVocab>(**tok);
  const char* text_schema = R"({"type":"object","properties":{"title":{"type":"string","maxLength":12},
      "year":{"type":"integer","minimum":1900,"maximum":2030},"genres":{"type":"array","items":{"enum":["drama","comedy",
      "sci-fi"]},"maxItems":3},"note":{"anyOf":[{"type":"string"},{"type":"null"}]}},
      "required":["title","year","genres","note"],"additionalProperties":false})";
  const ojson schema = ojson::parse(text_schema);
  auto g = compile(text_schema);
  ASSERT_TRUE(g);
  std::mt19937 rng(11);
  for (int run = 0; run < 4; ++run) {
    engine::JsonConstraint c(vocab, std::nullopt, g);
    std::string text;
    std::vector<std::uint64_t> mask;
    bool ended = false;
    for (int step = 0; step < 300 && !ended; ++step) {
      c.allowed(&mask);
      std::vector<std::int32_t> ok;
      for (std::int32_t t = 0; t < (*tok)->n_vocab(); ++t)
        if ((mask[static_cast<std::size_t>(t) / 64] >> (t % 64)) & 1u) ok.push_back(t);
      ASSERT_FALSE(ok.empty());
      auto is_end = [&](std::int32_t t) {
        return std::find(vocab->end_tokens.begin(), vocab->end_tokens.end(), t) != vocab->end_tokens.end();
      };
      for (int k = 0; k < 20; ++k) {
        const std::int32_t t = ok[rng() % ok.size()];
        if (is_end(t)) continue;
        GrammarArena arena;
        GrammarMatcher m(g.get(), &arena);
        ASSERT_TRUE(m.feed(text + vocab->bytes[static_cast<std::size_t>(t)])) << text << " + " << t;
      }
      std::int32_t pick = ok[rng() % ok.size()];
      if (step > 15)
        for (std::int32_t t : ok)
          if (const std::string& b = vocab->bytes[static_cast<std::size_t>(t)]; is_end(t) || b == "\"" || b == "]" || b == "}") {
            pick = t;
            break;
          }
      if (is_end(pick)) {
        ended = true;
        break;
      }
      c.accept(pick);
      text += vocab->bytes[static_cast<std::size_t>(pick)];
    }
    ASSERT_TRUE(ended) << text;
    ASSERT_TRUE(ojson::accept(text)) << text;
    EXPECT_TRUE(follows_schema(schema, ojson::parse(text))) << text;
  }
}

}  // namespace
}  // namespace airlock::daemon
