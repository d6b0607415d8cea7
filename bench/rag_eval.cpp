// Retrieval quality and RAG store performance.
//
//   rag_eval quality --eval DIR [--embedding MODEL] [--chunk-tokens N]
//                    [--query-prefix TEXT] [--document-prefix TEXT]
//     ingests the Cranfield collection (DIR: cran.all.1400, cran.qry,
//     cranqrel), runs its 225 queries through BM25 alone, vectors alone and
//     hybrid (reciprocal-rank fusion), and prints nDCG@10 (gain 5 - grade)
//     and recall@100 per mode; then the evidence the grounding policy sees
//     for in-domain queries and for out-of-domain questions (which should be
//     handed off), and the share handed off at the configured thresholds.
//     MODEL: a model2vec directory, a BERT GGUF or a decoder GGUF; without
//     it, BM25 only. The prefixes as airlockd's [rag] query_prefix and
//     document_prefix.
//
//   rag_eval perf [--chunks N] [--dim D] [--queries Q]
//     N chunks of random text with random unit vectors: ingest throughput
//     (chunks/s stored), HNSW build time, query latency p50/p99 per mode,
//     and ANN recall@10 against exact search (the target: >= 0.95 at 100k
//     chunks of 384 dimensions with queries <= 10 ms).
//
// Results: docs/benchmarks.md.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "airlock/engine/embedder.h"
#include "airlock/rag/chunker.h"
#include "airlock/rag/grounding.h"
#include "airlock/rag/ingest.h"
#include "airlock/rag/store.h"
#include "rag_embedder.h"

namespace {

using namespace airlock;
using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

std::string read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "rag_eval: cannot read %s\n", path.c_str());
    std::exit(2);
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// SMART format: ".I id" then fields ".T", ".A", ".B", ".W".
struct SmartRecord {
  std::string id;
  std::map<char, std::string> fields;
};
std::vector<SmartRecord> parse_smart(const std::string& text) {
  std::vector<SmartRecord> out;
  std::istringstream in(text);
  std::string line;
  char field = 0;
  while (std::getline(in, line)) {
    if (line.rfind(".I ", 0) == 0) {
      out.push_back({line.substr(3), {}});
      field = 0;
    } else if (line.size() == 2 && line[0] == '.' && !out.empty()) {
      field = line[1];
    } else if (!out.empty() && field != 0) {
      out.back().fields[field] += line + "\n";
    }
  }
  return out;
}

struct Temp {
  std::string path;
  Temp() {
    std::string t = (std::filesystem::temp_directory_path() / "rag-eval-XXXXXX").string();
    path = ::mkdtemp(t.data());
  }
  ~Temp() { std::filesystem::remove_all(path); }
};

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<std::size_t>(p * static_cast<double>(v.size() - 1) + 0.5))];
}

// An embedder for BM25-only runs (its vectors are never searched).
class NoEmbedder final : public rag::Embedder {
 public:
  std::string model_id() const override { return "none"; }
  int dim() const override { return 1; }
  std::size_t count_tokens(std::string_view t) const override {
    std::size_t n = 0;
    bool in = false;
    for (char c : t) {
      const bool sp = c == ' ' || c == '\n' || c == '\t';
      n += !sp && !in;
      in = !sp;
    }
    return n;
  }
  std::vector<std::vector<float>> embed(std::span<const std::string> texts) const override {
    return std::vector<std::vector<float>>(texts.size(), std::vector<float>{1.0f});
  }
};

const char* kOutOfDomain[] = {
    "What is the capital of France?",
    "How do I reset my online banking password?",
    "Who won the football world cup in 2014?",
    "What is a good recipe for chocolate chip cookies?",
    "How many days of annual leave do employees get?",
    "What are the symptoms of type 2 diabetes?",
    "Explain the rules of chess castling.",
    "Which programming language should I learn first?",
    "What is the interest rate on a fixed-term savings account?",
    "How do I file my income tax return?",
    "What year did the Berlin wall fall?",
    "Recommend a good novel to read on holiday.",
    "How do vaccines train the immune system?",
    "What is the best way to care for a houseplant?",
    "How do I configure a printer on my laptop?",
    "Who painted the Mona Lisa?",
    "What time does the pharmacy open on Sunday?",
    "How is a mortgage approved by a bank?",
    "What does GDPR require for customer data?",
    "How do I bake sourdough bread at home?",
};

int quality(const std::string& dir, const std::string& model_path, int chunk_tokens, const std::string& query_prefix,
            const std::string& document_prefix) {
  std::unique_ptr<engine::Embedder> model;
  std::unique_ptr<rag::Embedder> embedder;
  if (!model_path.empty()) {
    auto m = engine::load_embedder(model_path);
    if (!m.is_ok()) return std::fprintf(stderr, "rag_eval: %s\n", m.status().to_string().c_str()), 2;
    model = std::move(*m);
    embedder = std::make_unique<daemon::RagEmbedder>(*model, "eval", query_prefix, document_prefix);
  } else {
    embedder = std::make_unique<NoEmbedder>();
  }
  Temp tmp;
  auto store = rag::Store::open(tmp.path + "/rag.db", embedder->model_id(), embedder->dim());
  if (!store.is_ok()) return std::fprintf(stderr, "rag_eval: %s\n", store.status().to_string().c_str()), 2;
  rag::Principal who{"eval", {}, false};
  (void)(*store)->create_collection("cranfield", who, {}, "");
  const std::vector<SmartRecord> docs = parse_smart(read(dir + "/cran.all.1400"));
  rag::IngestOptions o;
  o.chunk.max_tokens = static_cast<std::size_t>(chunk_tokens);
  o.chunk.overlap_tokens = static_cast<std::size_t>(chunk_tokens / 8);
  const auto t0 = Clock::now();
  std::size_t n_chunks = 0, failed = 0;
  for (const SmartRecord& d : docs) {
    auto field = [&](char f) { return d.fields.count(f) ? d.fields.at(f) : std::string(); };
    const std::string text = field('T') + "\n" + field('W');
    auto r = rag::ingest_document(**store, *embedder, "cranfield", d.id + ".txt", text, "{}", who, o);
    if (!r.is_ok()) {
      ++failed;  // e.g. empty documents in the collection
      continue;
    }
    n_chunks += r->n_chunks;
  }
  const double ingest_s = ms_since(t0) / 1000;
  std::printf("collection: %zu documents (%zu not ingested: empty), %zu chunks of <= %d tokens, ingested in %.1f s "
              "(%.0f chunks/s)\n",
              docs.size(), failed, n_chunks, chunk_tokens, ingest_s, static_cast<double>(n_chunks) / ingest_s);
  std::printf("embedding model: %s\n", model_path.empty() ? "none (BM25 only)" : model_path.c_str());

  const std::vector<SmartRecord> queries = parse_smart(read(dir + "/cran.qry"));
  // cranqrel numbers queries 1..225 in file order.
  std::map<int, std::map<std::string, int>> qrels;
  {
    std::istringstream in(read(dir + "/cranqrel"));
    int q, grade;
    std::string doc;
    while (in >> q >> doc >> grade)
      if (grade >= 1 && grade <= 4) qrels[q][doc] = 5 - grade;
  }
  std::vector<std::pair<const char*, rag::SearchMode>> modes = {{"bm25", rag::SearchMode::kBm25}};
  if (embedder->dim() > 1) {
    modes.push_back({"vector", rag::SearchMode::kVector});
    modes.push_back({"hybrid", rag::SearchMode::kHybrid});
  }
  rag::GroundingPolicy policy;
  std::printf("\n| mode | nDCG@10 | recall@100 | queries | p50 ms | p99 ms |\n|---|---|---|---|---|---|\n");
  std::vector<double> in_sim, in_cov;
  for (const auto& [name, mode] : modes) {
    double ndcg_sum = 0, recall_sum = 0;
    int n = 0;
    std::vector<double> lat;
    for (std::size_t qi = 0; qi < queries.size(); ++qi) {
      const int qn = static_cast<int>(qi) + 1;
      if (!qrels.count(qn)) continue;
      rag::SearchRequest sr;
      sr.query = queries[qi].fields.count('W') ? queries[qi].fields.at('W') : std::string();
      sr.mode = mode;
      sr.top_k = 100;
      sr.candidates = 200;
      if (mode != rag::SearchMode::kBm25) sr.query_vector = embedder->embed_query(sr.query);
      const auto t = Clock::now();
      auto hits = (*store)->search(sr, who);
      lat.push_back(ms_since(t));
      if (!hits.is_ok()) return std::fprintf(stderr, "rag_eval: %s\n", hits.status().to_string().c_str()), 2;
      // Documents in order of their best chunk.
      std::vector<std::string> ranked;
      std::set<std::string> seen;
      for (const rag::SearchHit& h : *hits) {
        const std::string id = h.source.substr(0, h.source.size() - 4);
        if (seen.insert(id).second) ranked.push_back(id);
      }
      const auto& rel = qrels[qn];
      double dcg = 0, idcg = 0;
      for (std::size_t i = 0; i < std::min<std::size_t>(10, ranked.size()); ++i)
        if (rel.count(ranked[i])) dcg += rel.at(ranked[i]) / std::log2(static_cast<double>(i) + 2.0);
      std::vector<int> gains;
      for (const auto& [doc, gain] : rel) gains.push_back(gain);
      std::sort(gains.rbegin(), gains.rend());
      for (std::size_t i = 0; i < std::min<std::size_t>(10, gains.size()); ++i) idcg += gains[i] / std::log2(static_cast<double>(i) + 2.0);
      int found = 0;
      for (std::size_t i = 0; i < std::min<std::size_t>(100, ranked.size()); ++i) found += rel.count(ranked[i]) ? 1 : 0;
      ndcg_sum += idcg > 0 ? dcg / idcg : 0;
      recall_sum += static_cast<double>(found) / static_cast<double>(rel.size());
      ++n;
      if (mode == modes.back().second) {
        rag::Evidence e = rag::assess_evidence(std::vector<rag::SearchHit>(hits->begin(), hits->begin() + std::min<std::size_t>(5, hits->size())), policy);
        in_sim.push_back(e.best_similarity);
        in_cov.push_back(e.best_term_coverage);
      }
    }
    std::printf("| %s | %.4f | %.4f | %d | %.2f | %.2f |\n", name, ndcg_sum / n, recall_sum / n, n, percentile(lat, 0.5),
                percentile(lat, 0.99));
  }
  // Abstention: evidence for in-domain and out-of-domain questions.
  std::vector<double> out_sim, out_cov;
  for (const char* q : kOutOfDomain) {
    rag::SearchRequest sr;
    sr.query = q;
    sr.mode = modes.back().second;
    sr.top_k = 5;
    if (sr.mode != rag::SearchMode::kBm25) sr.query_vector = embedder->embed_query(q);
    auto hits = (*store)->search(sr, who);
    rag::Evidence e = rag::assess_evidence(*hits, policy);
    out_sim.push_back(e.best_similarity);
    out_cov.push_back(e.best_term_coverage);
  }
  auto handed_off = [&](const std::vector<double>& sim, const std::vector<double>& cov) {
    int n = 0;
    for (std::size_t i = 0; i < sim.size(); ++i)
      n += !((embedder->dim() > 1 && sim[i] >= policy.min_similarity) || cov[i] >= policy.min_term_coverage);
    return 100.0 * n / static_cast<double>(sim.size());
  };
  std::printf("\nevidence (%s mode, top 5), thresholds min_similarity %.2f, min_term_coverage %.2f:\n", modes.back().first,
              policy.min_similarity, policy.min_term_coverage);
  std::printf("| questions | n | best similarity p10/p50/p90 | best term coverage p10/p50/p90 | handed off |\n"
              "|---|---|---|---|---|\n");
  std::printf("| Cranfield queries (in domain) | %zu | %.2f / %.2f / %.2f | %.2f / %.2f / %.2f | %.0f%% |\n", in_sim.size(),
              percentile(in_sim, 0.1), percentile(in_sim, 0.5), percentile(in_sim, 0.9), percentile(in_cov, 0.1),
              percentile(in_cov, 0.5), percentile(in_cov, 0.9), handed_off(in_sim, in_cov));
  std::printf("| other domains (bench/rag_eval.cpp) | %zu | %.2f / %.2f / %.2f | %.2f / %.2f / %.2f | %.0f%% |\n",
              out_sim.size(), percentile(out_sim, 0.1), percentile(out_sim, 0.5), percentile(out_sim, 0.9),
              percentile(out_cov, 0.1), percentile(out_cov, 0.5), percentile(out_cov, 0.9), handed_off(out_sim, out_cov));
  return 0;
}

int perf(std::size_t n_chunks, int dim, int n_queries, int ef_search) {
  Temp tmp;
  rag::StoreOptions so;
  so.ann_threshold = 20000;
  if (ef_search > 0) so.hnsw_ef_search = ef_search;
  std::printf("HNSW M %d, ef_construction %d, ef_search %d\n", so.hnsw_m, so.hnsw_ef_construction, so.hnsw_ef_search);
  auto store = rag::Store::open(tmp.path + "/rag.db", "random", dim, so);
  if (!store.is_ok()) return std::fprintf(stderr, "rag_eval: %s\n", store.status().to_string().c_str()), 2;
  rag::Principal who{"bench", {}, false};
  (void)(*store)->create_collection("c", who, {}, "");
  std::mt19937 rng(42);
  std::normal_distribution<float> normal;
  std::uniform_int_distribution<int> word(0, 49999);
  // Vectors like real embeddings: a low-dimensional structure (a 32-dim
  // latent mapped by a fixed random matrix) plus a little noise, unit
  // length. Uniformly random 384-dim vectors have no neighbourhoods at all,
  // which no ANN index (and no embedding model) produces.
  constexpr int kLatent = 32;
  std::vector<float> basis(static_cast<std::size_t>(dim) * kLatent);
  for (float& x : basis) x = normal(rng);
  auto unit = [&] {
    float z[kLatent];
    for (float& x : z) x = normal(rng);
    std::vector<float> v(static_cast<std::size_t>(dim));
    double n = 0;
    for (int i = 0; i < dim; ++i) {
      double x = 0.1 * normal(rng);
      for (int k = 0; k < kLatent; ++k) x += basis[static_cast<std::size_t>(i) * kLatent + k] * z[k] / std::sqrt(kLatent);
      v[static_cast<std::size_t>(i)] = static_cast<float>(x);
      n += x * x;
    }
    for (float& x : v) x = static_cast<float>(x / std::sqrt(n));
    return v;
  };
  auto words = [&](int n) {
    std::string t;
    for (int i = 0; i < n; ++i) t += "w" + std::to_string(word(rng)) + (i % 12 == 11 ? ". " : " ");
    return t;
  };
  // 100 chunks per document, as a long manual would be.
  const std::size_t per_doc = 100;
  std::vector<std::vector<float>> all;
  all.reserve(n_chunks);
  const auto t0 = Clock::now();
  double build_ms_max = 0;
  for (std::size_t d = 0; d * per_doc < n_chunks; ++d) {
    rag::DocumentRecord doc;
    doc.source = "doc" + std::to_string(d);
    doc.format = "text";
    doc.owner = "bench";
    doc.content_hash = rag::sha256_hex(doc.source);
    for (std::size_t c = 0; c < per_doc && d * per_doc + c < n_chunks; ++c) {
      rag::ChunkRecord r;
      r.text = words(120);
      r.n_tokens = 120;
      r.embedding = unit();
      all.push_back(r.embedding);
      doc.chunks.push_back(std::move(r));
    }
    const auto tb = Clock::now();
    auto put = (*store)->put_document("c", doc, who);
    build_ms_max = std::max(build_ms_max, ms_since(tb));
    if (!put.is_ok()) return std::fprintf(stderr, "rag_eval: %s\n", put.status().to_string().c_str()), 2;
  }
  const double ingest_s = ms_since(t0) / 1000;
  std::printf("stored %zu chunks (%d dims, 100 per document) in %.1f s: %.0f chunks/s (slowest put %.0f ms)\n", n_chunks,
              dim, ingest_s, static_cast<double>(n_chunks) / ingest_s, build_ms_max);
  // Reopen: what a daemon start costs (vectors loaded, the graph built in
  // the background while searches scan exactly).
  store->reset();
  const auto to = Clock::now();
  store = rag::Store::open(tmp.path + "/rag.db", "random", dim, so);
  const double open_s = ms_since(to) / 1000;
  (*store)->wait_for_index();
  auto report = (*store)->check();
  std::printf("reopen: %.1f s to serve (exact), HNSW graph ready after %.1f s more; HNSW in use: %s\n", open_s,
              ms_since(to) / 1000 - open_s, report.is_ok() && report->n_hnsw_collections > 0 ? "yes" : "no (exact)");

  std::vector<double> lat_vec, lat_bm25, lat_hybrid;
  double recall = 0;
  for (int q = 0; q < n_queries; ++q) {
    rag::SearchRequest sr;
    sr.query = words(8);
    sr.query_vector = unit();
    sr.top_k = 10;
    sr.candidates = 10;
    sr.mode = rag::SearchMode::kVector;
    auto t = Clock::now();
    auto hits = (*store)->search(sr, who);
    lat_vec.push_back(ms_since(t));
    std::vector<double> sims;
    sims.reserve(all.size());
    for (const auto& v : all) {
      double dot = 0;
      for (int i = 0; i < dim; ++i) dot += static_cast<double>(v[static_cast<std::size_t>(i)]) * sr.query_vector[static_cast<std::size_t>(i)];
      sims.push_back(dot);
    }
    std::nth_element(sims.begin(), sims.begin() + 9, sims.end(), std::greater<double>());
    int good = 0;
    for (const auto& h : *hits) good += *h.similarity >= sims[9] - 1e-5;
    recall += good / 10.0;
    sr.mode = rag::SearchMode::kBm25;
    t = Clock::now();
    (void)(*store)->search(sr, who);
    lat_bm25.push_back(ms_since(t));
    sr.mode = rag::SearchMode::kHybrid;
    sr.candidates = 50;
    sr.top_k = 5;
    t = Clock::now();
    (void)(*store)->search(sr, who);
    lat_hybrid.push_back(ms_since(t));
  }
  std::printf("| chunks | dims | ANN recall@10 | vector p50/p99 ms | bm25 p50/p99 ms | hybrid (top 5 of 50+50) p50/p99 ms |\n"
              "|---|---|---|---|---|---|\n");
  std::printf("| %zu | %d | %.3f | %.2f / %.2f | %.2f / %.2f | %.2f / %.2f |\n", n_chunks, dim, recall / n_queries,
              percentile(lat_vec, 0.5), percentile(lat_vec, 0.99), percentile(lat_bm25, 0.5), percentile(lat_bm25, 0.99),
              percentile(lat_hybrid, 0.5), percentile(lat_hybrid, 0.99));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr,
                 "usage: rag_eval quality --eval DIR [--embedding MODEL] [--chunk-tokens N]\n"
                 "                        [--query-prefix TEXT] [--document-prefix TEXT]\n"
                 "       rag_eval perf [--chunks N] [--dim D] [--queries Q] [--ef-search N]\n");
    return 2;
  }
  const std::string cmd = argv[1];
  std::map<std::string, std::string> opt;
  for (int i = 2; i + 1 < argc; i += 2) opt[argv[i]] = argv[i + 1];
  if (cmd == "quality") {
    if (!opt.count("--eval")) return std::fprintf(stderr, "rag_eval quality needs --eval DIR\n"), 2;
    return quality(opt["--eval"], opt.count("--embedding") ? opt["--embedding"] : "",
                   opt.count("--chunk-tokens") ? std::stoi(opt["--chunk-tokens"]) : 256, opt["--query-prefix"],
                   opt["--document-prefix"]);
  }
  if (cmd == "perf")
    return perf(opt.count("--chunks") ? std::stoul(opt["--chunks"]) : 10000,
                opt.count("--dim") ? std::stoi(opt["--dim"]) : 384,
                opt.count("--queries") ? std::stoi(opt["--queries"]) : 200,
                opt.count("--ef-search") ? std::stoi(opt["--ef-search"]) : 0);
  std::fprintf(stderr, "rag_eval: unknown command %s\n", cmd.c_str());
  return 2;
}
