// Loading the served model from the bundle store.
//
// load_model() picks the bundle (config `model`, or the most recent import),
// re-checks it with BundleStore::check_installed (signature, trusted and
// revoked keys, the manifest recorded at import, file sizes; every chunk
// with verify_on_load = "full"), opens its `llm` GGUF, builds the
// tokenizer, the chat template and a scheduler whose KV cache fills
// `kv_cache_mib`, and runs one forward pass (warm-up) before returning.
// Nothing of a bundle that fails any check is used. On a follower node
// (node_rank > 0) it is kInvalidArgument: load_follower() is what runs there.
//
// Thread-safety: a LoadedModel is immutable after load except for its
// scheduler, which is thread-safe; the server holds it by shared_ptr so a
// reload can swap models while old requests finish on the old one.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "airlock/common/status.h"
#include "airlock/engine/chat_template.h"
#include "airlock/engine/constraint.h"
#include "airlock/engine/decoder.h"
#include "airlock/engine/embedder.h"
#include "airlock/engine/model.h"
#include "airlock/engine/reranker.h"
#include "airlock/engine/scheduler.h"
#include "airlock/engine/tokenizer.h"
#include "airlock/rag/embedder.h"
#include "airlock/rag/store.h"
#include "config.h"
#include "reasoning.h"
#include "tool_calls.h"

namespace airlock::daemon {

struct LoadedModel {
  std::string id;  // the OpenAI model id: the bundle name
  std::uint64_t version = 0;
  std::int64_t created = 0;  // the bundle's created_at
  std::string manifest_sha256;
  std::string key_id;
  std::optional<std::int64_t> expires_at;  // the manifest's, unix seconds
  std::string gguf_path;
  bool chat_template_from_model = false;
  ToolFormat tool_format = ToolFormat::kNone;  // how the model's template teaches tool calls (none: tools refused)
  ReasoningFormat reasoning = ReasoningFormat::kNone;  // how chat answers' reasoning is split off (none: not at all)
  std::vector<std::int32_t> end_of_generation;  // token ids that end an answer (EOS, EOT, ...)
  // Declaration order is destruction order in reverse: the scheduler (which
  // uses the model) goes first. With tensor_parallel > 1, `model` is rank 0
  // (its metadata and tokenizer serve the API); the scheduler's decoder
  // holds every rank.
  std::shared_ptr<engine::Model> model;
  int n_ranks = 1;
  std::unique_ptr<engine::Tokenizer> tokenizer;
  std::shared_ptr<const engine::JsonVocab> json_vocab;  // the tokenizer's pieces, for response_format json_object
  std::optional<engine::ChatTemplate> chat_template;
  std::unique_ptr<engine::Scheduler> scheduler;
  // The bundle's embedding model, if it has one.
  std::unique_ptr<engine::Embedder> embedder;
  // The bundle's reranker (a cross-encoder), if it has one: /v1/rerank, and
  // the order of RAG's sources.
  std::unique_ptr<engine::Reranker> reranker;
  // RAG over it (config [rag]): the adapter and the store, or why RAG is off.
  std::unique_ptr<rag::Embedder> rag_embedder;
  std::shared_ptr<rag::Store> rag_store;  // kept across reloads while the embedding model stays the same
  std::string rag_path;
  std::string rag_off_reason;

  ~LoadedModel();
};

// A node that follows node 0 in a tensor-parallel group spanning machines
// (config `nodes`, `node_rank` > 0): its ranks of the bundle's model, which
// the follower runs as node 0 sends passes. No API, no scheduler.
struct FollowerHost {
  std::string id;  // the bundle name
  std::uint64_t version = 0;
  std::vector<std::shared_ptr<engine::Model>> ranks;
  std::unique_ptr<engine::TensorParallelFollower> follower;
  ~FollowerHost() { follower.reset(); }  // its threads stop before the ranks go
};

// The bundle checked as load_model() checks it, this node's ranks loaded
// and joined to the group (which waits for every node). kInvalidArgument
// on node 0 (load_model() serves there).
Result<std::unique_ptr<FollowerHost>> load_follower(const Config& config);

// The served bundle checked again for trust as load_model() checks it
// (signature under the trusted keys now, revocation, expiry, the manifest
// recorded at import, sizes; no rehash): a reload whose new bundle failed
// uses it to tell "keep serving" from "this bundle may no longer be
// served" (kVerificationFailed; also when the trusted keys or the
// revocation list cannot be read: fails closed). A store whose rollback
// record is lost is kUnavailable: it refuses no bundle in particular.
Status recheck_served(const Config& config, const LoadedModel& served);

// `previous` (a reload): its RAG store is reused when the embedding model and
// the database path are unchanged, so writes in flight on the old model and
// searches on the new one share one in-memory index. `cancel` (a SIGTERM
// during a reload) stops the rehash at its next chunk: kUnavailable.
Result<std::shared_ptr<LoadedModel>> load_model(const Config& config,
                                                std::shared_ptr<const LoadedModel> previous = nullptr,
                                                const std::atomic<bool>* cancel = nullptr);

}  // namespace airlock::daemon
