// Constrained decoding: the JSON recogniser against nlohmann's parser, and
// JsonConstraint over real vocabularies.
#include "airlock/engine/constraint.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <optional>
#include <random>
#include <string>

#include "airlock/common/json.h"

#include "airlock/engine/gguf.h"
#include "airlock/engine/grammar.h"

namespace airlock::engine {
namespace {

// CTest sets AIRLOCK_MODELS_DIR (tests/CMakeLists.txt); run by hand, the
// shared folder is the default.
std::string models_dir() {
  const char* d = std::getenv("AIRLOCK_MODELS_DIR");
  return d && *d ? d : "/work/shared/models";
}

// How far the grammar reads `text`: its length when all of it is a prefix
// of a JSON object within the bounds, else the offset of the byte refused.
std::size_t accepted(std::string_view text, JsonGrammar* g_out = nullptr) {
  JsonGrammar g;
  std::size_t i = 0;
  while (i < text.size() && g.feed(static_cast<unsigned char>(text[i]))) ++i;
  if (g_out) *g_out = g;
  return i;
}

bool whole(std::string_view text) {
  JsonGrammar g;
  return accepted(text, &g) == text.size() && g.complete();
}

TEST(JsonGrammarTest, ObjectsAreReadWhole) {
  for (const char* doc : {
           R"({})",
           R"({"a":1})",
           R"(  {"a" : [1, -2.5e+3, 0, 0.0, 1E9, -0e-0, true, false, null, "x", {}, []], "b": {"c": {"d": []}}})",
           "{\n  \"k\": \"tab\\t quote\\\" slash\\/ \\\\ \\b\\f\\n\\r \\u00e9 \\ud83d\\ude00\"\n}",
           "{\"\xc3\xa9t\xc3\xa9\": \"\xe2\x82\xac \xf0\x9f\x98\x80\"}",
           R"({"":""})",
           R"({"n":[[[[1]]]]})",
       })
    EXPECT_TRUE(whole(doc)) << doc;
}

TEST(JsonGrammarTest, RefusesAtTheFirstByteThatCannotLead) {
  struct Case {
    const char* text;
    std::size_t at;  // the byte refused
  };
  for (const Case& c : std::vector<Case>{
           {"[1]", 0}, {"1", 0}, {"\"s\"", 0}, {"x", 0},          // the top level is an object
           {"{} ", 2}, {"{}{}", 2},                                  // nothing after it
           {"{\"a\":01}", 6}, {"{\"a\":1.}", 7}, {"{\"a\":-}", 6},   // numbers
           {"{\"a\":1e}", 7}, {"{\"a\":.5}", 5}, {"{\"a\":+1}", 5}, {"{\"a\":1.e1}", 7},
           {"{\"a\":tru}", 8}, {"{\"a\":nul }", 8}, {"{\"a\":truex}", 9},
           {"{\"a\":\"\\x\"}", 7}, {"{\"a\":\"\\u12g4\"}", 10},      // escapes
           {"{\"a\":\"\\udc00\"}", 11}, {"{\"a\":\"\\ud800\"}", 12},  // lone surrogate halves
           {"{\"a\":\"\\ud800\\n\"}", 13}, {"{\"a\":\"\\ud800\\u0041\"}", 17},
           {"{\"a\":\"\x01\"}", 6}, {"{\"a\":\"\xc0\x80\"}", 6},     // control byte, overlong UTF-8
           {"{\"a\":\"\xe2\x82\"}", 8}, {"{\"a\":\"\xf5\x80\"}", 6},
           {"{\"a\":\"\xe0\x80\x80\"}", 7}, {"{\"a\":\"\xed\xa0\x80\"}", 7},  // overlong, surrogate
           {"{\"a\":\"\xf4\x90\x80\x80\"}", 7},                               // above U+10FFFF
           {"{\"a\":1,}", 7}, {"{\"a\" 1}", 5}, {"{a:1}", 1}, {"{\"a\":[1,]}", 8},
           {"{\"a\":[1}", 7}, {"{\"a\":{]}", 6}, {"{\"a\":1]", 6}, {"{,}", 1}}) {
    JsonGrammar g;
    EXPECT_EQ(accepted(c.text, &g), c.at) << c.text;
    EXPECT_FALSE(g.complete()) << c.text;
  }
}

TEST(JsonGrammarTest, BoundsTheStructure) {
  std::string deep = "{\"a\":";
  for (int i = 1; i < JsonGrammar::kMaxDepth; ++i) deep += "[";
  EXPECT_EQ(accepted(deep), deep.size());  // 32 containers
  EXPECT_EQ(accepted(deep + "["), deep.size());
  const std::string spaces(JsonGrammar::kMaxSpaces, ' ');
  EXPECT_TRUE(whole("{" + spaces + "}"));
  EXPECT_EQ(accepted("{" + spaces + " }"), 1 + spaces.size());
  const std::string digits(JsonGrammar::kMaxNumber, '1');
  EXPECT_TRUE(whole("{\"n\":" + digits + "}"));
  EXPECT_EQ(accepted("{\"n\":" + digits + "1}"), 5 + digits.size());
  // No dead end at the bound: '.', 'e' or a sign only with room for a digit.
  for (const char* tail : {".", "e", "E"}) {
    const std::string at_bound = "{\"n\":" + digits.substr(1) + tail;
    EXPECT_EQ(accepted(at_bound), at_bound.size() - 1) << at_bound;
  }
  EXPECT_EQ(accepted("{\"n\":" + digits.substr(3) + "e+"), 5 + digits.size() - 3 + 2);
  EXPECT_EQ(accepted("{\"n\":" + digits.substr(2) + "e+"), 5 + digits.size() - 2 + 1);
  EXPECT_TRUE(whole("{\"n\":" + digits.substr(2) + ".5}"));
  // Every number a finite double: 64 digits times 10^99 is.
  EXPECT_TRUE(whole("{\"n\":-" + digits.substr(5) + "e+99}"));  // 64 characters
  EXPECT_EQ(accepted("{\"n\":1e999}"), 9u);
  EXPECT_TRUE(nlohmann::json::parse("{\"n\":" + digits.substr(1) + "e99}")["n"].is_number_float());
}

// Random JSON-like texts: whatever the grammar reads whole, nlohmann parses
// as an object; and every random object nlohmann prints (within the
// bounds), the grammar reads whole.
TEST(JsonGrammarTest, AgreesWithAJsonParser) {
  std::mt19937 rng(11);
  const std::vector<std::string> parts = {"{", "}", "[", "]", ",", ":", "\"", "\"a\"", "1", "-", "0", ".", "e", "+",
                                          " ", "\n", "true", "null", "\\", "\\u", "d83d", "de00", "\xc3\xa9", "x"};
  int complete = 0;
  for (int round = 0; round < 200000; ++round) {
    std::string text = "{";
    const int n = 1 + static_cast<int>(rng() % 14);
    for (int k = 0; k < n; ++k) text += parts[rng() % parts.size()];
    JsonGrammar g;
    if (accepted(text, &g) == text.size() && g.complete()) {
      ++complete;
      ASSERT_TRUE(nlohmann::json::accept(text)) << text;
      ASSERT_TRUE(nlohmann::json::parse(text).is_object()) << text;
    }
  }
  EXPECT_GT(complete, 100);
  auto random_value = [&](auto&& self, int depth) -> nlohmann::json {
    switch (rng() % (depth < 6 ? 7 : 5)) {
      case 0: return nullptr;
      case 1: return rng() % 2 == 0;
      case 2: return static_cast<double>(static_cast<int>(rng() % 20001) - 10000) / 7.0;
      case 3: return static_cast<int>(rng() % 1000) - 500;
      case 4: {
        static const char* const kPieces[] = {"s", "\"", "\\", "\n", "\x01", "\xc3\xa9", "\xf0\x9f\x98\x80", " "};
        std::string str;
        for (int k = static_cast<int>(rng() % 5); k > 0; --k) str += kPieces[rng() % 8];
        return str;
      }
      case 5: {
        nlohmann::json a = nlohmann::json::array();
        for (int k = static_cast<int>(rng() % 4); k > 0; --k) a.push_back(self(self, depth + 1));
        return a;
      }
      default: {
        nlohmann::json o = nlohmann::json::object();
        for (int k = static_cast<int>(rng() % 4); k > 0; --k) o["k" + std::to_string(rng() % 9)] = self(self, depth + 1);
        return o;
      }
    }
  };
  for (int round = 0; round < 3000; ++round) {
    nlohmann::json o = nlohmann::json::object();
    for (int k = static_cast<int>(rng() % 5); k > 0; --k) o["key" + std::to_string(k)] = random_value(random_value, 1);
    const std::string compact = o.dump(), pretty = o.dump(2), ascii = o.dump(-1, ' ', true);
    ASSERT_TRUE(whole(compact)) << compact;
    ASSERT_TRUE(whole(pretty)) << pretty;
    ASSERT_TRUE(whole(ascii)) << ascii;  // \u escapes, surrogate pairs
  }
}

// A real vocabulary from ../shared/models (tokenizer and JsonVocab), or
// nothing when the file is absent.
struct Vocab {
  std::unique_ptr<Tokenizer> tok;
  std::shared_ptr<const JsonVocab> json;
};
std::optional<Vocab> load_vocab(const std::string& vocab_file) {
  auto file = GgufFile::open(models_dir() + "/tokenizers/llama.cpp-vocab/" + vocab_file);
  if (!file.is_ok()) return std::nullopt;
  auto tok = Tokenizer::from_gguf(**file);
  EXPECT_TRUE(tok.is_ok()) << tok.status().to_string();
  if (!tok.is_ok()) return std::nullopt;
  Vocab v{std::move(*tok), nullptr};
  v.json = std::make_shared<const JsonVocab>(*v.tok);
  return v;
}
#define LOAD_VOCAB_OR_SKIP(var, file)                                                             \
  std::optional<Vocab> var##_loaded = load_vocab(file);                                           \
  if (!var##_loaded) GTEST_SKIP() << file << " not found (set AIRLOCK_MODELS_DIR)";               \
  std::unique_ptr<Tokenizer>& tok = var##_loaded->tok;                                            \
  std::shared_ptr<const JsonVocab>& var = var##_loaded->json

// A walk through a real vocabulary, taking a random allowed token each
// step (closing what is open once it has gone on long enough): every token
// offered keeps the text a prefix of an object, and the walk ends with the
// end token alone allowed and a text that parses.
void walk(const std::string& vocab_file) {
  LOAD_VOCAB_OR_SKIP(vocab, vocab_file);
  ASSERT_FALSE(vocab->end_tokens.empty());
  std::mt19937 rng(3);
  for (int run = 0; run < 5; ++run) {
    JsonConstraint c(vocab);
    std::string text;
    std::vector<std::uint64_t> mask;
    bool ended = false;
    for (int step = 0; step < 400 && !ended; ++step) {
      c.allowed(&mask);
      std::vector<std::int32_t> ok;
      for (std::int32_t t = 0; t < tok->n_vocab(); ++t)
        if ((mask[static_cast<std::size_t>(t) / 64] >> (t % 64)) & 1u) ok.push_back(t);
      ASSERT_FALSE(ok.empty());
      // Every allowed token keeps the text a prefix, and every token that
      // would is allowed (checked on samples of both).
      for (int k = 0; k < 50; ++k) {
        const std::int32_t t = ok[rng() % ok.size()];
        if (std::find(vocab->end_tokens.begin(), vocab->end_tokens.end(), t) != vocab->end_tokens.end()) continue;
        const std::string next = text + vocab->bytes[static_cast<std::size_t>(t)];
        ASSERT_EQ(accepted(next), next.size()) << next;
      }
      for (int k = 0; k < 300 && !c.complete(); ++k) {
        const std::int32_t t = static_cast<std::int32_t>(rng() % static_cast<std::uint32_t>(tok->n_vocab()));
        const std::string& b = vocab->bytes[static_cast<std::size_t>(t)];
        if (b.empty()) continue;
        const std::string next = text + b;
        ASSERT_EQ((mask[static_cast<std::size_t>(t) / 64] >> (t % 64)) & 1u, accepted(next) == next.size() ? 1u : 0u)
            << next;
      }
      std::int32_t pick = ok[rng() % ok.size()];
      if (step > 40)  // close: a quote, a bracket or a brace when one is allowed
        for (std::int32_t t : ok)
          if (const std::string& b = vocab->bytes[static_cast<std::size_t>(t)]; b == "\"" || b == "}" || b == "]") {
            pick = t;
            break;
          }
      if (std::find(vocab->end_tokens.begin(), vocab->end_tokens.end(), pick) != vocab->end_tokens.end()) {
        EXPECT_TRUE(c.complete());
        EXPECT_EQ(ok.size(), vocab->end_tokens.size());  // nothing but the end
        ended = true;
        break;
      }
      c.accept(pick);
      text += vocab->bytes[static_cast<std::size_t>(pick)];
    }
    ASSERT_TRUE(ended) << text;
    EXPECT_TRUE(nlohmann::json::parse(text).is_object()) << text;
  }
}

TEST(JsonConstraintTest, SentencePieceVocabulary) { walk("ggml-vocab-llama-spm.gguf"); }

// With a marker to wait for (the end of the thinking of a model whose
// prompt opened it): free text first, the end refused, then the object.
TEST(JsonConstraintTest, TheObjectFollowsTheMarker) {
  LOAD_VOCAB_OR_SKIP(vocab, "ggml-vocab-gpt-2.gguf");
  JsonConstraint c(vocab, ThinkBlock{"", "</think>"});
  std::vector<std::uint64_t> mask;
  auto allowed = [&](std::int32_t t) { return ((mask[static_cast<std::size_t>(t) / 64] >> (t % 64)) & 1u) != 0; };
  auto count = [&] {
    std::size_t n = 0;
    for (std::uint64_t w : mask) n += static_cast<std::size_t>(__builtin_popcountll(w));
    return n;
  };
  const std::vector<std::int32_t> thinking = tok->encode("Sure, an object with a key.\n</think>\n\n", false, false);
  std::string text;
  for (std::int32_t t : thinking) {
    c.allowed(&mask);
    ASSERT_TRUE(allowed(t)) << "token " << t;
    // The answer may end while thinking, not once the object is due.
    for (std::int32_t e : vocab->end_tokens) EXPECT_EQ(allowed(e), text.find("</think>") == std::string::npos) << text;
    c.accept(t);
    text += vocab->bytes[static_cast<std::size_t>(t)];
  }
  c.allowed(&mask);
  const std::size_t after = count();
  EXPECT_LT(after, static_cast<std::size_t>(tok->n_vocab()) / 2);  // held to the object now
  for (std::int32_t e : vocab->end_tokens) EXPECT_FALSE(allowed(e));
  for (std::int32_t t = 0; t < tok->n_vocab(); ++t)
    if (allowed(t)) {
      const std::string b = vocab->bytes[static_cast<std::size_t>(t)];
      ASSERT_EQ(accepted(b), b.size()) << b;
    }
  for (std::int32_t t : tok->encode("{\"key\": [1, 2]}", false, false)) {
    c.allowed(&mask);
    ASSERT_TRUE(allowed(t)) << "token " << t;
    c.accept(t);
  }
  EXPECT_TRUE(c.complete());
  c.allowed(&mask);
  EXPECT_EQ(count(), vocab->end_tokens.size());
}
TEST(JsonConstraintTest, ByteLevelBpeVocabulary) { walk("ggml-vocab-gpt-2.gguf"); }

// A model that may open its own block (Qwen3): the answer begins with the
// block or with the object; inside the block it may end, before it not.
TEST(JsonConstraintTest, AnOptionalBlockBeforeTheObject) {
  LOAD_VOCAB_OR_SKIP(vocab, "ggml-vocab-gpt-2.gguf");
  std::vector<std::uint64_t> mask;
  auto allowed = [&](std::int32_t t) { return ((mask[static_cast<std::size_t>(t) / 64] >> (t % 64)) & 1u) != 0; };
  auto ends = [&] {
    return std::all_of(vocab->end_tokens.begin(), vocab->end_tokens.end(), [&](std::int32_t e) { return allowed(e); });
  };
  for (const std::string answer : {"\n<think>\nHmm, a key.\n</think>\n\n{\"k\": 1}", " {\"k\": <think>1}",
                                   "<think></think>{}", "{\"<think>\": \"</think>\"}"}) {
    const bool valid = answer.find("<think>1") == std::string::npos;
    JsonConstraint c(vocab, ThinkBlock{"<think>", "</think>"});
    std::string text;
    bool refused = false;
    for (std::int32_t t : tok->encode(answer, false, false)) {
      c.allowed(&mask);
      if (!allowed(t)) {
        refused = true;
        break;
      }
      const bool thinking = text.find("<think>") != std::string::npos && text.find("</think>") == std::string::npos &&
                            text.find('{') == std::string::npos;
      EXPECT_EQ(ends(), thinking) << answer << " at '" << text << "'";
      c.accept(t);
      text += vocab->bytes[static_cast<std::size_t>(t)];
    }
    EXPECT_EQ(refused, !valid) << answer;
    EXPECT_EQ(c.complete(), valid) << answer;
  }
  // Neither the tag nor the object: refused.
  JsonConstraint c(vocab, ThinkBlock{"<think>", "</think>"});
  for (std::int32_t t : tok->encode("<thi", false, false)) c.accept(t);
  c.allowed(&mask);
  for (std::int32_t t : tok->encode("{", false, false)) EXPECT_FALSE(allowed(t));
  EXPECT_TRUE(allowed(tok->encode("nk>", false, false).at(0)));
}

// A lead token (Mistral's [TOOL_CALLS], here any token that is not JSON):
// allowed first only, taken as no text.
TEST(JsonConstraintTest, ALeadTokenMayComeFirstOnly) {
  LOAD_VOCAB_OR_SKIP(vocab, "ggml-vocab-gpt-2.gguf");
  const std::int32_t lead = tok->token_id("hello");
  ASSERT_GE(lead, 0);
  std::vector<std::uint64_t> mask;
  auto allowed = [&](std::int32_t t) { return ((mask[static_cast<std::size_t>(t) / 64] >> (t % 64)) & 1u) != 0; };
  const std::int32_t brace = tok->token_id("{");
  for (const bool take_lead : {true, false}) {
    JsonConstraint c(vocab, std::nullopt, nullptr, {lead});
    c.allowed(&mask);
    EXPECT_TRUE(allowed(lead));
    EXPECT_TRUE(allowed(brace));
    if (take_lead) {
      c.accept(lead);
      c.allowed(&mask);
      EXPECT_FALSE(allowed(lead));  // once
      EXPECT_TRUE(allowed(brace));  // and it was no text
    }
    for (std::int32_t t : tok->encode("{ }", false, false)) {  // (no string: "hello" fits in one)
      c.allowed(&mask);
      ASSERT_TRUE(allowed(t));
      EXPECT_EQ(allowed(lead), !take_lead && t == brace);
      c.accept(t);
    }
    EXPECT_TRUE(c.complete());
  }
}

// The mask before and inside the block, over the whole vocabulary, against
// what the block allows spelled out: whitespace, then the tag (and free
// text up to the close, then the object) or the object itself. Without a
// grammar (json_object), with one (the object held to {"k": DIGITS}), and
// with one whose sentences begin as the tag does (<tool>DIGITS, as Hermes
// calls begin with "<tool_call>").
TEST(JsonConstraintTest, TheBlockMaskIsEveryTokenThatFits) {
  LOAD_VOCAB_OR_SKIP(vocab, "ggml-vocab-gpt-2.gguf");
  using Seq = std::vector<Grammar::Symbol>;
  Grammar::ByteSet digits;
  for (char c = '0'; c <= '9'; ++c) digits.set(static_cast<unsigned char>(c));
  auto make = [&](std::string_view before, std::string_view after) {
    auto g = std::make_shared<Grammar>();
    const Grammar::RuleId start = g->add_rule(), space = g->add_rule();
    g->add_alternative(space, Seq{Grammar::byte(' '), Grammar::ref(space)});
    g->add_alternative(space, Seq{});
    Seq sentence{Grammar::ref(space)};
    Grammar::literal(before, &sentence);
    sentence.push_back(Grammar::run(digits, {}, 1, 8));
    Grammar::literal(after, &sentence);
    g->add_alternative(start, sentence);
    g->set_start(start);
    return g;
  };
  const std::shared_ptr<const Grammar> grammars[] = {nullptr, make("{\"k\": ", "}"), make("<tool>", "</tool>")};
  const std::string open = "<think>", close = "</think>";
  for (const std::shared_ptr<const Grammar>& grammar : grammars) {
    auto object_prefix = [&](std::string_view text) {
      if (!grammar) return accepted(text) == text.size();
      GrammarArena arena;
      GrammarMatcher m(grammar.get(), &arena);
      return m.feed(text);
    };
    auto fits = [&](std::string_view text) {
      std::size_t i = 0;
      while (i < text.size() && (text[i] == ' ' || text[i] == '\n' || text[i] == '\t' || text[i] == '\r')) ++i;
      const std::string_view rest = text.substr(i);
      if (rest.substr(0, open.size()) == open) {
        const std::size_t at = rest.find(close);
        return at == std::string_view::npos || object_prefix(rest.substr(at + close.size()));
      }
      if (rest.size() < open.size() && std::string_view(open).substr(0, rest.size()) == rest)
        return accepted(text.substr(0, i)) == i;  // whitespace, to JSON's bound
      return object_prefix(text);
    };
    for (const std::string prefix : {"", "  ", "<", "\n<t", "\n<th", " <think", "<think>a b", "<think>a</thi", "<think></think> "}) {
      JsonConstraint c(vocab, ThinkBlock{open, close}, grammar);
      std::vector<std::uint64_t> mask;
      for (std::int32_t t : tok->encode(prefix, false, false)) {
        c.allowed(&mask);
        ASSERT_TRUE((mask[static_cast<std::size_t>(t) / 64] >> (t % 64)) & 1u) << prefix;
        c.accept(t);
      }
      c.allowed(&mask);
      std::size_t n = 0;
      for (std::int32_t t = 0; t < tok->n_vocab(); ++t) {
        const std::string& b = vocab->bytes[static_cast<std::size_t>(t)];
        if (b.empty()) continue;
        const bool allowed = (mask[static_cast<std::size_t>(t) / 64] >> (t % 64)) & 1u;
        ASSERT_EQ(allowed, fits(prefix + b)) << (grammar ? grammar->elements() : 0) << " '" << prefix << "' + '" << b << "'";
        n += allowed;
      }
      EXPECT_GT(n, 0u) << prefix;
    }
  }
}

// A lead token with a block: allowed before the answer and after the
// block, not inside it; after it, the object (no block).
TEST(JsonConstraintTest, ALeadTokenComesBeforeTheObject) {
  LOAD_VOCAB_OR_SKIP(vocab, "ggml-vocab-gpt-2.gguf");
  const std::int32_t lead = tok->token_id("hello");
  std::vector<std::uint64_t> mask;
  auto allowed = [&](std::int32_t t) { return ((mask[static_cast<std::size_t>(t) / 64] >> (t % 64)) & 1u) != 0; };
  auto feed = [&](JsonConstraint& c, std::string_view text) {
    for (std::int32_t t : tok->encode(text, false, false)) {
      c.allowed(&mask);
      ASSERT_TRUE(allowed(t)) << text;
      c.accept(t);
    }
  };
  {
    JsonConstraint c(vocab, ThinkBlock{"<think>", "</think>"}, nullptr, {lead});
    feed(c, "\n");
    c.allowed(&mask);
    EXPECT_TRUE(allowed(lead));  // after whitespace
    c.accept(lead);
    c.allowed(&mask);
    EXPECT_FALSE(allowed(lead));
    EXPECT_FALSE(allowed(tok->token_id("<")));  // no block after it
    feed(c, "{}");
    EXPECT_TRUE(c.complete());
  }
  {
    JsonConstraint c(vocab, ThinkBlock{"<think>", "</think>"}, nullptr, {lead});
    feed(c, "<think>Hmm.</think>\n");
    c.allowed(&mask);
    EXPECT_TRUE(allowed(lead));  // after it
    c.accept(lead);
    feed(c, "{}");
    EXPECT_TRUE(c.complete());
  }
}

}  // namespace
}  // namespace airlock::engine
