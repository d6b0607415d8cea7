#include "model_host.h"

#include <algorithm>
#include <set>
#include <thread>

#include "airlock/common/log.h"
#include "airlock/engine/backend.h"
#include "airlock/engine/decoder_embedding.h"
#include "airlock/engine/decoder_reranker.h"
#include "airlock/engine/thread_pool.h"
#include "airlock/verifier/bundle_store.h"
#include "airlock/verifier/sha256.h"
#include "airlock/verifier/trust_store.h"
#include "rag_embedder.h"

namespace airlock::daemon {
namespace {

// Used when the GGUF carries no tokenizer.chat_template (base models):
// ChatML, the format llama.cpp falls back to as well.
constexpr const char* kFallbackTemplate =
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

// What names the embedding model to the RAG store (vectors made by another
// model must not share an index): a GGUF encoder is its file's SHA-256; a
// model2vec directory is its vectors, tokenizer and configuration together
// (the same vectors with another tokenizer.json map tokens to other rows).
std::string embedding_identity(const verifier::Manifest& manifest, const verifier::ManifestFile& embedding) {
  using verifier::FileRole;
  const std::string dir = embedding.path.substr(0, embedding.path.rfind('/') + 1);
  std::vector<const verifier::ManifestFile*> parts = {&embedding};
  if (!dir.empty())
    for (const verifier::ManifestFile& f : manifest.files)
      if ((f.role == FileRole::kTokenizer || f.role == FileRole::kConfig) && f.path.rfind(dir, 0) == 0 &&
          f.path.find('/', dir.size()) == std::string::npos)
        parts.push_back(&f);
  if (parts.size() == 1) return "sha256:" + verifier::to_hex(embedding.sha256);
  std::sort(parts.begin() + 1, parts.end(), [](auto* a, auto* b) { return a->path < b->path; });
  std::string all;
  for (const verifier::ManifestFile* f : parts) all += f->path + "=" + verifier::to_hex(f->sha256) + "\n";
  return "model2vec:sha256:" + verifier::to_hex(verifier::sha256(all));
}

// Opens the RAG store for the bundle's embedding model. RAG problems never
// stop the daemon: chat keeps working and the RAG routes say why they are off.
void open_rag(const Config& config, const std::string& embedding_id, LoadedModel& m, const LoadedModel* previous) {
  if (!config.rag.enabled) {
    m.rag_off_reason = "RAG is disabled in the configuration ([rag] enabled = false)";
    return;
  }
  if (!m.embedder) {
    m.rag_off_reason = "the bundle '" + m.id + "' has no embedding model (airlock bundle create --embedding)";
    return;
  }
  auto adapter =
      std::make_unique<RagEmbedder>(*m.embedder, embedding_id, config.rag.query_prefix, config.rag.document_prefix);
  const std::string path = config.rag.database.empty() ? config.state + "/rag.db" : config.rag.database;
  if (previous != nullptr && previous->rag_store && previous->rag_embedder &&
      previous->rag_embedder->model_id() == adapter->model_id() && previous->rag_path == path) {
    m.rag_embedder = std::move(adapter);
    m.rag_store = previous->rag_store;
    m.rag_path = path;
    airlock::log().info("RAG store {}: kept across the reload (same embedding model)", path);
    return;
  }
  rag::StoreOptions o;
  o.ann_threshold = config.rag.ann_threshold;
  Result<std::unique_ptr<rag::Store>> store = rag::Store::open(path, adapter->model_id(), adapter->dim(), o);
  if (!store.is_ok()) {
    m.rag_off_reason = "the RAG store could not be opened: " + store.status().to_string();
    airlock::log().error("{}", m.rag_off_reason);
    return;
  }
  m.rag_embedder = std::move(adapter);
  m.rag_store = std::move(*store);
  m.rag_path = path;
  airlock::log().info("RAG store {}: embedding model {} ({} dimensions)", path, m.rag_embedder->model_id(),
                      m.rag_embedder->dim());
}

// This machine's ranks of a group spanning `nodes` machines (config.h):
// GPUs 0..tensor_parallel-1 as ranks node_rank * tensor_parallel onwards,
// joined through NCCL at nccl_root. Node 0 gets the decoder that drives the
// group, the others the follower.
struct SpreadRanks {
  std::vector<std::shared_ptr<engine::Model>> ranks;
  std::vector<std::unique_ptr<engine::Communicator>> comms;
};
Result<SpreadRanks> load_spread_models(const Config& config, const std::string& gguf_path) {
  const int n_local = config.tensor_parallel, n_ranks = config.nodes * n_local, first = config.node_rank * n_local;
  airlock::log().info("tensor-parallel group of {} ranks on {} machines: this one (node {}) holds ranks {}..{}, "
                      "meeting at {}", n_ranks, config.nodes, config.node_rank, first, first + n_local - 1,
                      config.nccl_root);
  SpreadRanks out;
  const engine::Device device = engine::resolve_device(config.device);
  AIRLOCK_ASSIGN_OR_RETURN(out.comms, engine::make_spread_group(device, n_local, first, n_ranks, config.nccl_root));
  for (int i = 0; i < n_local; ++i) {
    AIRLOCK_ASSIGN_OR_RETURN(std::shared_ptr<engine::Backend> backend, engine::make_backend(device, config.threads, i));
    engine::TensorParallel tp{first + i, n_ranks, out.comms[static_cast<std::size_t>(i)].get()};
    AIRLOCK_ASSIGN_OR_RETURN(std::shared_ptr<engine::Model> rank, engine::Model::load(gguf_path, std::move(backend), tp));
    out.ranks.push_back(std::move(rank));
  }
  return out;
}

Result<std::unique_ptr<engine::TensorParallelDecoder>> load_spread_ranks(
    const Config& config, const std::string& gguf_path, std::vector<std::shared_ptr<engine::Model>>* ranks) {
  AIRLOCK_ASSIGN_OR_RETURN(SpreadRanks sr, load_spread_models(config, gguf_path));
  *ranks = sr.ranks;
  return engine::TensorParallelDecoder::create(std::move(sr.ranks), std::move(sr.comms));
}

// The model on its backend, or the ranks of a tensor-parallel group each on
// its own (GPU i, or a CPU pool of threads / n), behind the scheduler's
// decoder. Sets m.model (rank 0) and m.n_ranks; `ranks` receives them all.
Result<std::unique_ptr<engine::Decoder>> load_ranks(const Config& config, LoadedModel& m,
                                                    std::vector<std::shared_ptr<engine::Model>>* ranks) {
  const int n = config.tensor_parallel;
  const engine::Device device = engine::resolve_device(config.device);
  if (config.nodes > 1) {
    AIRLOCK_ASSIGN_OR_RETURN(std::unique_ptr<engine::TensorParallelDecoder> group, load_spread_ranks(config, m.gguf_path, ranks));
    m.model = (*ranks)[0];
    m.n_ranks = group->n_ranks();
    return std::unique_ptr<engine::Decoder>(std::move(group));
  }
  if (n == 1) {
    AIRLOCK_ASSIGN_OR_RETURN(std::shared_ptr<engine::Backend> backend, engine::make_backend(device, config.threads));
    airlock::log().info("device = \"{}\": {}", engine::device_name(config.device), backend->name());
    AIRLOCK_ASSIGN_OR_RETURN(m.model, engine::Model::load(m.gguf_path, std::move(backend)));
    ranks->push_back(m.model);
    return engine::make_single_decoder(*m.model);
  }
  AIRLOCK_ASSIGN_OR_RETURN(std::vector<std::unique_ptr<engine::Communicator>> comms, engine::make_group(device, n));
  // CPU ranks share the configured threads (0: every allowed core).
  const int cores = config.threads > 0 ? config.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  for (int r = 0; r < n; ++r) {
    AIRLOCK_ASSIGN_OR_RETURN(std::shared_ptr<engine::Backend> backend,
                             engine::make_backend(device, std::max(1, cores / n), r));
    airlock::log().info("device = \"{}\", tensor-parallel rank {} of {}: {}", engine::device_name(config.device), r, n,
                        backend->name());
    engine::TensorParallel tp{r, n, comms[static_cast<std::size_t>(r)].get()};
    AIRLOCK_ASSIGN_OR_RETURN(std::shared_ptr<engine::Model> rank, engine::Model::load(m.gguf_path, std::move(backend), tp));
    ranks->push_back(std::move(rank));
  }
  m.model = (*ranks)[0];
  m.n_ranks = n;
  AIRLOCK_ASSIGN_OR_RETURN(std::unique_ptr<engine::TensorParallelDecoder> group,
                           engine::TensorParallelDecoder::create(*ranks, std::move(comms)));
  return std::unique_ptr<engine::Decoder>(std::move(group));
}

}  // namespace

LoadedModel::~LoadedModel() {
  scheduler.reset();  // stops the scheduler thread before the model goes
}

namespace {

// The bundle to serve, checked (load_model's first steps).
struct ChosenBundle {
  verifier::ImportRecord record;
  verifier::VerifiedBundle vb;
  std::string gguf_path;
  std::optional<verifier::ManifestFile> embedding;
  std::optional<verifier::ManifestFile> reranker;
};

Result<ChosenBundle> choose_bundle(const Config& config, const std::atomic<bool>* cancel = nullptr) {
  using namespace airlock::verifier;
  AIRLOCK_ASSIGN_OR_RETURN(TrustStore trust, TrustStore::load(config.trusted));
  AIRLOCK_ASSIGN_OR_RETURN(BundleStore store, BundleStore::open(config.store, BundleStore::Access::kReadOnly));
  AIRLOCK_ASSIGN_OR_RETURN(std::vector<ImportRecord> imports, store.list_imports());
  // The most recent import of the configured name (imports are in order, so
  // an operator's --allow-downgrade import wins over an older higher one).
  const ImportRecord* chosen = nullptr;
  for (const ImportRecord& r : imports)
    if (config.model.empty() || r.name == config.model) chosen = &r;
  if (chosen == nullptr)
    return not_found(config.model.empty() ? "no bundle has been imported into " + config.store
                                          : "bundle '" + config.model + "' has not been imported into " + config.store);
  if (config.model.empty()) {
    // The rollback record is kept per bundle name: with no name pinned, an
    // older bundle imported under a new name is what gets served. Say so
    // whenever that choice exists.
    std::set<std::string> names;
    for (const ImportRecord& r : imports) names.insert(r.name);
    if (names.size() > 1)
      airlock::log().warn(
          "model is empty: serving '{}', the most recent import of the {} bundle names in the store. Rollback "
          "protection is per name, so an older bundle imported under another name would be served; set model = "
          "\"{}\" to pin the name",
          chosen->name, names.size(), chosen->name);
  }
  airlock::log().info("checking bundle {} version {} ({})", chosen->name, chosen->version,
                   config.verify_full ? "signature, sizes and every chunk" : "signature and sizes");
  AIRLOCK_ASSIGN_OR_RETURN(VerifiedBundle vb, store.check_installed(*chosen, trust, config.verify_full,
                                                                    static_cast<unsigned>(config.threads), cancel));
  const ManifestFile* llm = nullptr;
  for (const ManifestFile& f : vb.manifest.files)
    if (f.role == FileRole::kLlm) llm = &f;
  if (llm == nullptr) return invalid_argument(chosen->name + ": the bundle has no llm file");

  ChosenBundle c;
  c.record = *chosen;
  c.gguf_path = chosen->path + "/" + llm->path;
  for (const ManifestFile& f : vb.manifest.files)
    if (f.role == FileRole::kEmbedding) c.embedding = f;
    else if (f.role == FileRole::kReranker) c.reranker = f;
  c.vb = std::move(vb);
  return c;
}

}  // namespace

Status recheck_served(const Config& config, const LoadedModel& served) {
  using namespace airlock::verifier;
  // Fails closed: a revocation list that cannot be read (a mistyped line
  // added while revoking a key, say) cannot clear the bundle served.
  Result<TrustStore> trust = TrustStore::load(config.trusted);
  if (!trust.is_ok())
    return verification_failed("the trusted keys or the revocation list cannot be read (" +
                               trust.status().to_string() + "), so the bundle served cannot be checked");
  Result<BundleStore> store = BundleStore::open(config.store, BundleStore::Access::kReadOnly);
  // A store refused as a whole (its rollback record lost since the start)
  // says nothing against the bundle served, which was chosen from the record
  // while it was intact: the reload fails, and it keeps serving.
  if (!store.is_ok() && store.status().code() == StatusCode::kVerificationFailed)
    return unavailable(store.status().message());
  AIRLOCK_RETURN_IF_ERROR(store.status());
  AIRLOCK_ASSIGN_OR_RETURN(std::vector<ImportRecord> imports, store->list_imports());
  for (const ImportRecord& r : imports)
    if (r.name == served.id && r.version == served.version && r.manifest_sha256 == served.manifest_sha256)
      return store->check_installed(r, *trust, /*rehash=*/false, 1).status();
  return not_found(served.id + " version " + std::to_string(served.version) + " is no longer recorded in the store");
}

Result<std::unique_ptr<FollowerHost>> load_follower(const Config& config) {
  if (config.node_rank == 0) return invalid_argument("node 0 serves; only the other nodes follow");
  AIRLOCK_ASSIGN_OR_RETURN(ChosenBundle c, choose_bundle(config));
  auto host = std::make_unique<FollowerHost>();
  host->id = c.record.name;
  host->version = c.record.version;
  AIRLOCK_ASSIGN_OR_RETURN(SpreadRanks sr, load_spread_models(config, c.gguf_path));
  host->ranks = sr.ranks;
  AIRLOCK_ASSIGN_OR_RETURN(host->follower, engine::TensorParallelFollower::create(std::move(sr.ranks), std::move(sr.comms)));
  return host;
}

Result<std::shared_ptr<LoadedModel>> load_model(const Config& config, std::shared_ptr<const LoadedModel> previous,
                                                const std::atomic<bool>* cancel) {
  using namespace airlock::verifier;
  if (config.node_rank != 0) return invalid_argument("node " + std::to_string(config.node_rank) + " follows node 0");
  AIRLOCK_ASSIGN_OR_RETURN(ChosenBundle c, choose_bundle(config, cancel));
  const ImportRecord* chosen = &c.record;
  const VerifiedBundle& vb = c.vb;
  const ManifestFile* embedding = c.embedding ? &*c.embedding : nullptr;

  auto m = std::make_shared<LoadedModel>();
  m->id = chosen->name;
  m->version = chosen->version;
  m->created = vb.manifest.created_at;
  m->manifest_sha256 = vb.manifest_sha256;
  m->key_id = vb.manifest.key_id.to_string();
  m->expires_at = vb.manifest.expires_at;
  m->gguf_path = c.gguf_path;
  std::vector<std::shared_ptr<engine::Model>> ranks;
  AIRLOCK_ASSIGN_OR_RETURN(std::unique_ptr<engine::Decoder> decoder, load_ranks(config, *m, &ranks));
  AIRLOCK_ASSIGN_OR_RETURN(m->tokenizer, engine::Tokenizer::from_gguf(m->model->gguf()));
  if (Status fits = engine::check_vocab_fits(*m->tokenizer, m->model->params().n_vocab); !fits.is_ok())
    return fits.with_context(chosen->name);
  for (std::int32_t t = 0; t < m->tokenizer->n_vocab(); ++t)
    if (m->tokenizer->is_end_of_generation(t)) m->end_of_generation.push_back(t);
  m->json_vocab = std::make_shared<const engine::JsonVocab>(*m->tokenizer);
  std::optional<std::string_view> tmpl = m->model->gguf().get_string("tokenizer.chat_template");
  m->chat_template_from_model = tmpl.has_value();
  Result<engine::ChatTemplate> ct = engine::ChatTemplate::parse(tmpl ? *tmpl : kFallbackTemplate);
  if (!ct.is_ok()) return ct.status().with_context(chosen->name + ": tokenizer.chat_template");
  m->chat_template = std::move(*ct);
  if (!tmpl) airlock::log().warn("{}: the model has no chat template; chat requests use ChatML", m->id);
  if (tmpl) m->tool_format = tool_format_of(*tmpl);
  if (tmpl && config.separate_reasoning) m->reasoning = reasoning_format_of(*tmpl);

  if (embedding != nullptr) {
    // A model2vec directory (its vectors file names the directory), a
    // BERT-family GGUF encoder or a decoder GGUF (Qwen3-Embedding). The
    // model gets its own CPU backend, so it
    // never shares forward-pass buffers with the decoder, but a decoder on
    // the CPU lends it its threads: with a pool each, embedding while
    // generating ran twice the threads there are cores, and decoding fell
    // well below half speed (bench/bert_bench --decoder).
    const std::string full = chosen->path + "/" + embedding->path;
    std::shared_ptr<engine::ThreadPool> pool = m->n_ranks == 1 ? m->model->backend().cpu_pool() : nullptr;
    Result<std::unique_ptr<engine::Embedder>> e =
        engine::load_embedder(full, pool ? std::shared_ptr<engine::Backend>(engine::make_cpu_backend(pool)) : nullptr,
                              config.kv_cache_type);
    if (!e.is_ok()) {
      // Chat still works; /v1/embeddings and RAG say the model is missing.
      airlock::log().error("{}: embedding model {} could not be loaded: {}", chosen->name, embedding->path,
                           e.status().to_string());
    } else {
      m->embedder = std::move(*e);
      airlock::log().info("embedding model {}: {}, {} dimensions, up to {} tokens{}", embedding->path,
                          m->embedder->kind(), m->embedder->dim(), m->embedder->max_tokens(),
                          pool && m->embedder->kind() != "model2vec" ? ", on the decoder's compute threads" : "");
      const auto* as_decoder = dynamic_cast<const engine::DecoderEmbedding*>(m->embedder.get());
      if (as_decoder != nullptr)
        airlock::log().info("embedding model {}: a pass holds up to {:.1f} MiB besides the weights ({} KV cache)",
                            embedding->path, static_cast<double>(as_decoder->pass_bytes()) / (1 << 20),
                            engine::kv_type_name(config.kv_cache_type));
      if (as_decoder != nullptr && as_decoder->pooling() == engine::DecoderEmbedding::Pooling::kLast &&
          !as_decoder->appends_eos())
        airlock::log().warn("embedding model {}: its tokenizer adds no end-of-sequence token (add_eos_token), so "
                            "last-token pooling reads each text's last word; Qwen3-Embedding files need "
                            "add_eos_token = true (converted by llama.cpp since mid-2025)",
                            embedding->path);
    }
  }
  if (c.reranker) {
    // A cross-encoder GGUF (BERT with a head, or a yes/no decoder such as
    // Qwen3-Reranker), on the decoder's compute threads as the embedding
    // model is. Chat and embeddings work without it; /v1/rerank says it is
    // missing and RAG ranks without it.
    const std::string full = chosen->path + "/" + c.reranker->path;
    std::shared_ptr<engine::ThreadPool> pool = m->n_ranks == 1 ? m->model->backend().cpu_pool() : nullptr;
    Result<std::unique_ptr<engine::Reranker>> r = engine::load_reranker(
        full, engine::make_cpu_backend(pool ? pool : std::make_shared<engine::ThreadPool>()), config.kv_cache_type);
    if (!r.is_ok()) {
      airlock::log().error("{}: reranker {} could not be loaded: {}", chosen->name, c.reranker->path,
                           r.status().to_string());
    } else {
      m->reranker = std::move(*r);
      airlock::log().info("reranker {}: {}, {} layers, pairs of up to {} tokens{}", c.reranker->path,
                          m->reranker->reranker_kind(), m->reranker->n_layer(), m->reranker->context_length(),
                          pool ? ", on the decoder's compute threads" : "");
      if (const auto* d = dynamic_cast<const engine::DecoderReranker*>(m->reranker.get()))
        airlock::log().info("reranker {}: a pass holds up to {:.1f} MiB besides the weights ({} KV cache)",
                            c.reranker->path, static_cast<double>(d->pass_bytes()) / (1 << 20),
                            engine::kv_type_name(config.kv_cache_type));
    }
  }
  open_rag(config, embedding != nullptr ? embedding_identity(vb.manifest, *embedding) : "", *m, previous.get());
  if (m->rag_store && m->embedder &&
      static_cast<std::size_t>(config.rag.chunk_tokens) > m->embedder->max_tokens())
    airlock::log().warn("rag.chunk_tokens = {} is more than the embedding model takes; documents are chunked at {} tokens",
                        config.rag.chunk_tokens, m->embedder->max_tokens());

  const engine::ModelParams& p = m->model->params();
  const std::uint64_t per_block = m->model->kv_bytes_per_block(config.kv_cache_type);
  engine::KvBudgetInput kb;
  kb.bytes_per_block = per_block;
  kb.configured_bytes = config.kv_cache_mib << 20;
  // Every rank holds its share of each block: the device with the least
  // free memory sets the count.
  for (const std::shared_ptr<engine::Model>& r : ranks)
    if (std::optional<std::uint64_t> f = r->backend().free_device_memory())
      kb.device_free = std::min(kb.device_free.value_or(*f), *f);
  // On a device, the activations of the largest step (a prefill chunk next
  // to every running sequence's decode token) stay free besides the reserve.
  kb.device_reserve = (config.device_reserve_mib << 20) +
                      m->model->scratch_bytes(config.prefill_chunk + config.max_running, config.max_running);
  kb.max_running = config.max_running;
  kb.blocks_per_sequence = engine::KvCache::blocks_for(p.n_ctx_train);
  AIRLOCK_ASSIGN_OR_RETURN(engine::KvBudget budget, engine::plan_kv_blocks(kb));
  const int blocks = budget.blocks;
  engine::SchedulerOptions so;
  so.kv_blocks = blocks;
  so.max_running = config.max_running;
  so.max_waiting = config.max_waiting;
  so.prefill_chunk = config.prefill_chunk;
  so.kv_type = config.kv_cache_type;
  // The constrained sequences' allowed tokens on the decoder's compute
  // threads (between passes, when they are idle).
  if (m->n_ranks == 1) so.pool = m->model->backend().cpu_pool();
  AIRLOCK_ASSIGN_OR_RETURN(m->scheduler, engine::Scheduler::start(std::move(decoder), so));
  const int full_ctx = std::min(p.n_ctx_train, m->scheduler->max_context());
  airlock::log().info(
      "model {} version {}: {} ({} layers), {} parameters{}, {:.1f} MiB of weights, context {}; KV cache {} blocks "
      "({:.1f} MiB, {}, set by {}), {} sequences at full context; tool calls: {}; reasoning: {}",
      m->id, m->version, p.arch, p.n_layer, m->model->n_params(),
      m->n_ranks > 1 ? " in rank 0 of " + std::to_string(m->n_ranks) + " (the figures are per rank)" : std::string(),
      static_cast<double>(m->model->weight_bytes()) / (1 << 20), full_ctx, blocks,
      static_cast<double>(per_block) * blocks / (1 << 20), engine::kv_type_name(config.kv_cache_type),
      budget.limited_by, blocks / std::max(1, engine::KvCache::blocks_for(full_ctx)), tool_format_name(m->tool_format),
      reasoning_format_name(m->reasoning));
  if (config.stream_interval_ms == kStreamIntervalAuto) {
    const bool host = m->model->backend().uses_host_cores();
    airlock::log().info("stream_interval_ms = \"auto\": {} ms ({})", stream_interval(config, host).count(),
                        host ? "the model computes on the CPU's cores: a stream's tokens are gathered between writes"
                             : "the model computes on the GPU: every token is written at once");
  }

  // Warm-up: one token through the whole model before the server says ready.
  engine::GenerationRequest warm;
  warm.prompt = {m->tokenizer->bos() >= 0 ? m->tokenizer->bos() : 0};
  warm.max_tokens = 1;
  warm.sampling.temperature = 0;
  AIRLOCK_ASSIGN_OR_RETURN(std::shared_ptr<engine::TokenStream> ws, m->scheduler->submit(warm));
  while (true) {
    bool done = false;
    for (engine::TokenEvent& e : ws->pop(std::chrono::milliseconds(1000))) {
      if (e.finish == engine::FinishReason::kError) return e.error.with_context("warm-up forward pass");
      if (e.finish != engine::FinishReason::kNone) done = true;
    }
    if (done) break;
  }
  return m;
}

}  // namespace airlock::daemon
