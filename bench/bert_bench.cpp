// BERT encoder benchmark: a generated bge-small-shaped model (384 wide, 12
// layers, 12 heads, feed-forward 1536, 512 positions) with the real bge
// vocabulary, embedding 64 texts of about 120 tokens one at a time and as one
// embed_batch() call. Reports tokens per second for both.
//
// usage: bert_bench [--threads N] [--type f32|f16|q8_0] [--vocab ggml-vocab-bert-bge.gguf]
//                   [--decoder MODEL.gguf] [--rerank]
//
// With --rerank, it measures a cross-encoder instead: a generated
// ms-marco-MiniLM-L-6-shaped reranker (384 wide, 6 layers, 12 heads,
// feed-forward 1536, 512 positions, the dense + tanh head) scoring what a
// RAG query with rag.rerank_candidates = 20 scores: a 12-word question
// against 20 chunks of about 256 tokens, as one score() call, five times,
// then the 20 pairs one call each. Reports milliseconds per query (the
// median of the five) and pair tokens per second.
//
// With --decoder, it then measures embedding while MODEL decodes one
// sequence in another thread (the daemon ingesting documents while it
// generates), two ways, alternating over three rounds: each with its own
// pool of N threads (2N compute threads on N cores), and the encoder on the
// decoder's pool (their jobs take turns). Reports both rates during the
// overlap, and each alone.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "airlock/engine/bert_embedding.h"
#include "airlock/engine/kernels.h"
#include "airlock/engine/model.h"
#include "airlock/engine/thread_pool.h"
#include "gguf_writer.h"

using namespace airlock;
using namespace airlock::engine;

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Decodes one sequence (token 1 at every position; the speed does not
// depend on the tokens) until `stop`, restarting at 256 positions. Returns
// tokens per second.
double decode_until(Model& m, const std::atomic<bool>& stop) {
  const int n_blocks = KvCache::blocks_for(256) + 1;
  KvCache cache(n_blocks);
  auto kv = m.alloc_kv(n_blocks, KvType::kF16);
  if (!kv.is_ok()) std::exit(2);
  std::vector<float> logits;
  Batch b;
  long tokens = 0;
  const double t0 = now_s();
  while (!stop.load()) {
    (void)cache.add_sequence(0);
    for (int pos = 0; pos < 256 && !stop.load(); ++pos, ++tokens) {
      b.clear();
      b.add(1, pos, 0, true);
      if (!m.forward(b, cache, *kv, &logits).is_ok()) std::exit(2);
    }
    cache.remove_sequence(0);
  }
  return static_cast<double>(tokens) / (now_s() - t0);
}

double embed_rate(Embedder& e, const std::vector<std::string>& texts, std::size_t n_tokens) {
  const double t0 = now_s();
  for (const std::string& t : texts) e.embed(t);
  return static_cast<double>(n_tokens) / (now_s() - t0);
}

// Embedding `texts` while `decoder` decodes: {embed tok/s, decode tok/s}.
std::pair<double, double> overlapped(Embedder& e, Model& decoder, const std::vector<std::string>& texts,
                                     std::size_t n_tokens) {
  std::atomic<bool> stop{false};
  double decode = 0;
  std::thread d([&] { decode = decode_until(decoder, stop); });
  const double embed = embed_rate(e, texts, n_tokens);
  stop = true;
  d.join();
  return {embed, decode};
}

}  // namespace

int main(int argc, char** argv) {
  int n_threads = 0;
  std::string decoder_path;
  bool rerank = false;
  GgmlType type = GgmlType::kF16;
  const char* models = std::getenv("AIRLOCK_MODELS_DIR");
  std::string vocab_path = std::string(models ? models : "../shared/models") +
                           "/tokenizers/llama.cpp-vocab/ggml-vocab-bert-bge.gguf";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--threads" && i + 1 < argc) n_threads = std::atoi(argv[++i]);
    else if (a == "--vocab" && i + 1 < argc) vocab_path = argv[++i];
    else if (a == "--decoder" && i + 1 < argc) decoder_path = argv[++i];
    else if (a == "--rerank") rerank = true;
    else if (a == "--type" && i + 1 < argc) {
      std::string t = argv[++i];
      type = t == "f32" ? GgmlType::kF32 : t == "q8_0" ? GgmlType::kQ8_0 : GgmlType::kF16;
    } else {
      std::fprintf(stderr, "usage: bert_bench [--threads N] [--type f32|f16|q8_0] [--vocab PATH] [--decoder MODEL.gguf] [--rerank]\n");
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
  std::mt19937 rng(1);
  const char* words[] = {"offline", "language", "model", "appliance", "bundle", "signature", "embedding",
                         "vector", "search", "document", "the", "of", "and", "quickly", "retrieval"};
  if (rerank) {
    s.n_layer = 6;
    s.pooling = 4;
    s.rank_head = 2;
    testing::BertTestModel rm = testing::make_bert_model(s);
    auto f = GgufFile::parse({reinterpret_cast<const std::uint8_t*>(rm.gguf.data()), rm.gguf.size()});
    if (!f.is_ok()) return 1;
    auto rpool = std::make_shared<ThreadPool>(n_threads);
    auto r = BertEmbedding::from_gguf(std::move(*f), make_cpu_backend(rpool), EncoderUse::kRerank);
    if (!r.is_ok()) {
      std::fprintf(stderr, "%s\n", r.status().to_string().c_str());
      return 1;
    }
    std::string question;
    for (int w = 0; w < 12; ++w) question += std::string(words[rng() % 15]) + " ";
    const std::vector<std::int32_t> q = (*r)->query_ids(question);
    std::vector<BertEmbedding::Pair> pairs;
    std::size_t pair_tokens = 0;
    for (int c = 0; c < 20; ++c) {
      std::string chunk;
      for (int w = 0; w < 240; ++w) chunk += std::string(words[rng() % 15]) + " ";
      pairs.push_back((*r)->pair(q, chunk));
      pair_tokens += pairs.back().ids.size();
    }
    (void)(*r)->score(std::span<const BertEmbedding::Pair>(pairs.data(), 1));  // warm up
    std::vector<double> ms;
    for (int round = 0; round < 5; ++round) {
      const double t0 = now_s();
      if (!(*r)->score(pairs).is_ok()) return 1;
      ms.push_back((now_s() - t0) * 1000);
    }
    std::sort(ms.begin(), ms.end());
    const double t1 = now_s();
    for (const BertEmbedding::Pair& p : pairs)
      if (!(*r)->score(std::span<const BertEmbedding::Pair>(&p, 1)).is_ok()) return 1;
    std::printf("one pair at a time: %.0f ms for the 20\n", (now_s() - t1) * 1000);
    std::printf("reranker 384x6 %s, %d threads (%s): 20 pairs, %zu tokens; per query %.0f ms median (%.0f-%.0f), "
                "%.0f pair tok/s\n",
                std::string(traits(type).name).c_str(), rpool->n_threads(), kernel_isa(), pair_tokens, ms[2], ms[0],
                ms[4], static_cast<double>(pair_tokens) / (ms[2] / 1000));
    return 0;
  }
  testing::BertTestModel tm = testing::make_bert_model(s);
  auto file = GgufFile::parse({reinterpret_cast<const std::uint8_t*>(tm.gguf.data()), tm.gguf.size()});
  if (!file.is_ok()) return 1;
  auto pool = std::make_shared<ThreadPool>(n_threads);
  auto e = BertEmbedding::from_gguf(std::move(*file), make_cpu_backend(pool));
  if (!e.is_ok()) {
    std::fprintf(stderr, "%s\n", e.status().to_string().c_str());
    return 1;
  }
  std::vector<std::string> texts(64);
  std::size_t n_tokens = 0;
  for (std::string& t : texts) {
    for (int w = 0; w < 110; ++w) t += std::string(words[rng() % 15]) + " ";
    n_tokens += (*e)->input_ids(t).size();
  }
  (*e)->embed(texts[0]);  // warm up
  const double one = embed_rate(**e, texts, n_tokens);
  const double t0 = now_s();
  (*e)->embed_batch(texts);
  const double batch = now_s() - t0;
  std::printf("bert 384x12 %s, %d threads (%s): %zu tokens in 64 texts; one at a time %.0f tok/s, batched %.0f tok/s\n",
              std::string(traits(type).name).c_str(), pool->n_threads(), kernel_isa(), n_tokens, one,
              static_cast<double>(n_tokens) / batch);
  if (decoder_path.empty()) return 0;

  // The same encoder and decoder twice: each on its own pool, and both on one.
  auto encoder_on = [&](std::shared_ptr<ThreadPool> p) {
    auto f = GgufFile::parse({reinterpret_cast<const std::uint8_t*>(tm.gguf.data()), tm.gguf.size()});
    auto enc = BertEmbedding::from_gguf(std::move(*f), make_cpu_backend(std::move(p)));
    if (!enc.is_ok()) std::exit(1);
    return std::move(*enc);
  };
  auto decoder_on = [&](std::shared_ptr<ThreadPool> p) {
    auto dec = Model::load(decoder_path, make_cpu_backend(std::move(p)));
    if (!dec.is_ok()) {
      std::fprintf(stderr, "%s: %s\n", decoder_path.c_str(), dec.status().to_string().c_str());
      std::exit(2);
    }
    return std::move(*dec);
  };
  auto shared = std::make_shared<ThreadPool>(n_threads);
  std::unique_ptr<Model> dec_own = decoder_on(pool), dec_shared = decoder_on(shared);
  std::unique_ptr<BertEmbedding> enc_own = encoder_on(std::make_shared<ThreadPool>(n_threads)),
                                 enc_shared = encoder_on(shared);
  const std::vector<std::string> some(texts.begin(), texts.begin() + 16);
  std::size_t some_tokens = 0;
  for (const std::string& t : some) some_tokens += enc_own->input_ids(t).size();
  std::printf("\nembedding 16 texts (%zu tokens) while %s decodes, %d threads:\n\n", some_tokens,
              decoder_path.c_str(), pool->n_threads());
  std::printf("| round | decode alone tok/s | embed alone tok/s | separate pools: embed / decode tok/s | "
              "one shared pool: embed / decode tok/s |\n|---:|---:|---:|---:|---:|\n");
  for (int round = 1; round <= 3; ++round) {
    std::atomic<bool> stop{false};
    double alone = 0;
    std::thread d([&] { alone = decode_until(*dec_own, stop); });
    std::this_thread::sleep_for(std::chrono::seconds(1));
    stop = true;
    d.join();
    const double embed_alone = embed_rate(*enc_own, some, some_tokens);
    const auto sep = overlapped(*enc_own, *dec_own, some, some_tokens);
    const auto both = overlapped(*enc_shared, *dec_shared, some, some_tokens);
    std::printf("| %d | %.1f | %.0f | %.0f / %.1f | %.0f / %.1f |\n", round, alone, embed_alone, sep.first, sep.second,
                both.first, both.second);
  }
  return 0;
}
