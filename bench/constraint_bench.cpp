// JSON mode's cost: the time to work out the allowed tokens for one step
// (JsonConstraint::allowed) over a real vocabulary, at a few points of an
// object (before it, inside a string, inside a number in nested
// containers), and the time to prepare the vocabulary once per model.
// Then the same with a JSON Schema's grammar (response_format json_schema):
// the schema's compile time, and the step at points of an instance; and
// with a second schema of number bounds, string formats and patterns.
//
//   constraint_bench VOCAB.gguf [REPEATS]
// VOCAB.gguf: any GGUF with a tokenizer (a model, or llama.cpp's
// vocabulary-only files in ../shared/models/tokenizers/llama.cpp-vocab).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "airlock/engine/constraint.h"
#include "airlock/engine/gguf.h"
#include "airlock/engine/thread_pool.h"
#include "airlock/engine/tokenizer.h"
#include "schema_grammar.h"

using namespace airlock::engine;
using Clock = std::chrono::steady_clock;

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: constraint_bench VOCAB.gguf [REPEATS]\n");
    return 2;
  }
  const int repeats = argc > 2 ? std::max(1, std::atoi(argv[2])) : 200;
  auto file = GgufFile::open(argv[1]);
  if (!file.is_ok()) return std::fprintf(stderr, "%s\n", file.status().to_string().c_str()), 2;
  auto tok = Tokenizer::from_gguf(**file);
  if (!tok.is_ok()) return std::fprintf(stderr, "%s\n", tok.status().to_string().c_str()), 2;
  const Clock::time_point t0 = Clock::now();
  auto vocab = std::make_shared<const JsonVocab>(**tok);
  const double build_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  std::printf("%s: %d tokens; vocabulary prepared in %.1f ms\n", argv[1], (*tok)->n_vocab(), build_ms);
  // A schema of the usual shape: named members of several types (a
  // string with length bounds, as pydantic and zod write min and max), an enum,
  // a nullable member, an array of objects.
  const char* schema_text = R"({"type":"object","properties":{"title":{"type":"string","minLength":1,"maxLength":200},"year":{"type":"integer"},
      "rating":{"type":"number","minimum":0},"genre":{"enum":["drama","comedy","documentary","science fiction"]},
      "sequel_of":{"anyOf":[{"type":"string"},{"type":"null"}]},"cast":{"type":"array","items":{"type":"object",
      "properties":{"name":{"type":"string"},"role":{"type":"string"}},"required":["name","role"],
      "additionalProperties":false}}},"required":["title","year","rating","genre","sequel_of","cast"],
      "additionalProperties":false})";
  // The same shape with what pydantic writes for bounded numbers, dates,
  // ids and constrained strings: number bounds, string formats, patterns.
  const char* bounded_text = R"({"type":"object","properties":{"title":{"type":"string","minLength":1,"maxLength":200},
      "year":{"type":"integer","minimum":1888,"maximum":2100},"rating":{"type":"number","minimum":0,"maximum":10},
      "released":{"type":"string","format":"date"},"id":{"type":"string","format":"uuid"},
      "code":{"type":"string","pattern":"^[A-Z]{3}-\\d{4}$"},"note":{"type":"string","pattern":"^[^\\n]*\\.$"}},
      "required":["title","year","rating","released","id","code","note"],"additionalProperties":false})";
  std::shared_ptr<const Grammar> grammars[2];
  int s = 0;
  for (const char* text : {schema_text, bounded_text}) {
    const Clock::time_point c0 = Clock::now();
    std::string why;
    grammars[s] = airlock::daemon::compile_schema(nlohmann::ordered_json::parse(text), "schema", &why);
    if (!grammars[s]) return std::fprintf(stderr, "%s\n", why.c_str()), 2;
    std::printf("schema %d compiled in %.2f ms (%zu grammar elements)\n", s + 1,
                std::chrono::duration<double, std::milli>(Clock::now() - c0).count(), grammars[s]->elements());
    ++s;
  }
  struct Case {
    const char* prefix;
    int schema;          // 0: none (json_object), else which
    bool think = false;  // a model that may open a <think> block first (Qwen3)
  };
  for (const Case& k : {Case{"", 0}, Case{"{\"key\": \"some text here", 0}, Case{"{\"key\": [1, 2, {\"a\": 12", 0},
                        Case{"", 1}, Case{"{\"title\": \"some text here", 1}, Case{"{\"title\": \"x\", \"year\": 19", 1},
                        Case{"{\"title\": \"x\", \"year\": 1999, ", 1},
                        Case{"{\"title\": \"x\", \"year\": 1999, \"rating\": 7.5, \"genre\": \"do", 1},
                        Case{"{\"title\": \"x\", \"year\": 19", 2}, Case{"{\"title\": \"x\", \"year\": 1999, \"rating\": 7.", 2},
                        Case{"{\"title\": \"x\", \"year\": 1999, \"rating\": 7.5, \"released\": \"1999-0", 2},
                        Case{"{\"title\": \"x\", \"year\": 1999, \"rating\": 7.5, \"released\": \"1999-01-02\", \"id\": \"12ab", 2},
                        Case{"{\"title\": \"x\", \"year\": 1999, \"rating\": 7.5, \"released\": \"1999-01-02\", \"id\": "
                             "\"12345678-1234-1234-1234-123456789abc\", \"code\": \"AB", 2},
                        Case{"{\"title\": \"x\", \"year\": 1999, \"rating\": 7.5, \"released\": \"1999-01-02\", \"id\": "
                             "\"12345678-1234-1234-1234-123456789abc\", \"code\": \"ABC-1234\", \"note\": \"some text here", 2},
                        Case{"", 0, true}, Case{"", 1, true}, Case{"<think>Let me see", 1, true},
                        Case{"<think>Let me see</think>\n\n", 1, true}}) {
    const char* prefix = k.prefix;
    std::optional<ThinkBlock> think;
    if (k.think) think = ThinkBlock{"<think>", "</think>"};
    JsonConstraint c(vocab, think, k.schema > 0 ? grammars[k.schema - 1] : nullptr);
    if (k.schema > 0) std::printf("  schema %d", k.schema);
    if (k.think) std::printf(" (thinking model)");
    for (std::int32_t t : (*tok)->encode(prefix, false, false)) c.accept(t);
    std::vector<std::uint64_t> mask;
    const Clock::time_point a = Clock::now();
    for (int i = 0; i < repeats; ++i) c.allowed(&mask);
    const double ms = std::chrono::duration<double, std::milli>(Clock::now() - a).count() / repeats;
    std::size_t n = 0;
    for (std::uint64_t w : mask) n += static_cast<std::size_t>(__builtin_popcountll(w));
    std::printf("%s after '%s': %.3f ms a step, %zu tokens allowed\n", k.schema > 0 ? "" : "  json_object", prefix, ms, n);
  }
  // A step of several constrained sequences, as the scheduler works their
  // masks out: one after the other, and on the compute threads.
  ThreadPool pool;
  for (const int n_seq : {4, 16}) {
    std::vector<std::unique_ptr<JsonConstraint>> cs;
    for (int i = 0; i < n_seq; ++i) {
      cs.push_back(std::make_unique<JsonConstraint>(vocab, std::nullopt, grammars[0]));
      for (std::int32_t t : (*tok)->encode(i % 2 == 0 ? "{\"title\": \"x\", \"year\": 1999, " : "{\"title\": \"x\", \"year\": 19",
                                           false, false))
        cs.back()->accept(t);
    }
    std::vector<std::vector<std::uint64_t>> masks(static_cast<std::size_t>(n_seq));
    auto work_out = [&](std::int64_t b, std::int64_t e) {
      for (std::int64_t i = b; i < e; ++i) cs[static_cast<std::size_t>(i)]->allowed(&masks[static_cast<std::size_t>(i)]);
    };
    double ms[2] = {0, 0};
    for (int round = 0; round < 2 * repeats / n_seq + 2; ++round)
      for (int on_pool = 0; on_pool < 2; ++on_pool) {
        const Clock::time_point a = Clock::now();
        if (on_pool) pool.parallel_for(n_seq, work_out);
        else work_out(0, n_seq);
        ms[on_pool] += std::chrono::duration<double, std::milli>(Clock::now() - a).count();
      }
    const int rounds = 2 * repeats / n_seq + 2;
    std::printf("%d sequences of schema 1 in one step: %.3f ms one after the other, %.3f ms on %d threads\n", n_seq,
                ms[0] / rounds, ms[1] / rounds, pool.n_threads());
  }
  return 0;
}
