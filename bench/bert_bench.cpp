// BERT encoder benchmark: a generated bge-small-shaped model (384 wide, 12
// layers, 12 heads, feed-forward 1536, 512 positions) with the real bge
// vocabulary, embedding 64 texts of about 120 tokens one at a time and as one
// embed_batch() call. Reports tokens per second for both.
//
// usage: bert_bench [--threads N] [--type f32|f16|q8_0] [--vocab ggml-vocab-bert-bge.gguf]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "airlock/engine/bert_embedding.h"
#include "airlock/engine/kernels.h"
#include "airlock/engine/thread_pool.h"
#include "gguf_writer.h"

using namespace airlock;
using namespace airlock::engine;

int main(int argc, char** argv) {
  int n_threads = 0;
  GgmlType type = GgmlType::kF16;
  const char* models = std::getenv("AIRLOCK_MODELS_DIR");
  std::string vocab_path = std::string(models ? models : "../shared/models") +
                           "/tokenizers/llama.cpp-vocab/ggml-vocab-bert-bge.gguf";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--threads" && i + 1 < argc) n_threads = std::atoi(argv[++i]);
    else if (a == "--vocab" && i + 1 < argc) vocab_path = argv[++i];
    else if (a == "--type" && i + 1 < argc) {
      std::string t = argv[++i];
      type = t == "f32" ? GgmlType::kF32 : t == "q8_0" ? GgmlType::kQ8_0 : GgmlType::kF16;
    } else {
      std::fprintf(stderr, "usage: bert_bench [--threads N] [--type f32|f16|q8_0] [--vocab PATH]\n");
      return 2;
    }
  }
  auto vocab = GgufFile::open(vocab_path);
  if (!vocab.is_ok()) {
    std::fprintf(stderr, "%s\n", vocab.status().to_string().c_str());
    return 2;
  }
  testing::BertModelSpec s;
  s.n_vocab = static_cast<int>((*vocab)->get_string_array("tokenizer.ggml.tokens")->size());
  s.n_embd = 384;
  s.n_layer = 12;
  s.n_head = 12;
  s.n_ff = 1536;
  s.n_ctx = 512;
  s.weight_type = type;
  s.metadata = [&](testing::GgufWriter& w) {
    w.copy_metadata(**vocab, "tokenizer.", {"tokenizer.ggml.token_type_count"});
  };
  testing::BertTestModel tm = testing::make_bert_model(s);
  auto file = GgufFile::parse({reinterpret_cast<const std::uint8_t*>(tm.gguf.data()), tm.gguf.size()});
  if (!file.is_ok()) return 1;
  auto pool = std::make_shared<ThreadPool>(n_threads);
  auto e = BertEmbedding::from_gguf(std::move(*file), make_cpu_backend(pool));
  if (!e.is_ok()) {
    std::fprintf(stderr, "%s\n", e.status().to_string().c_str());
    return 1;
  }
  std::mt19937 rng(1);
  const char* words[] = {"offline", "language", "model", "appliance", "bundle", "signature", "embedding",
                         "vector", "search", "document", "the", "of", "and", "quickly", "retrieval"};
  std::vector<std::string> texts(64);
  std::size_t n_tokens = 0;
  for (std::string& t : texts) {
    for (int w = 0; w < 110; ++w) t += std::string(words[rng() % 15]) + " ";
    n_tokens += (*e)->input_ids(t).size();
  }
  auto now = [] { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); };
  (*e)->embed(texts[0]);  // warm up
  double t0 = now();
  for (const std::string& t : texts) (*e)->embed(t);
  const double one = now() - t0;
  t0 = now();
  (*e)->embed_batch(texts);
  const double batch = now() - t0;
  std::printf("bert 384x12 %s, %d threads (%s): %zu tokens in 64 texts; one at a time %.0f tok/s, batched %.0f tok/s\n",
              std::string(traits(type).name).c_str(), pool->n_threads(), kernel_isa(), n_tokens, static_cast<double>(n_tokens) / one,
              static_cast<double>(n_tokens) / batch);
  return 0;
}
