// A loaded decoder model and its batched forward pass.
//
// Model::load() opens a GGUF file, reads the hyper-parameters of its
// architecture (llama, qwen2, qwen3, phi3, granite, gemma, gemma2, gemma3), checks every tensor's presence, type
// and shape, and hands the weights to a backend (the CPU backend keeps them in
// the file mapping: no copy). forward() runs one batch that mixes prompt
// chunks and decode steps of many sequences over a paged KV cache.
//
// Errors: load() returns kVerificationFailed for a malformed file,
// kInvalidArgument for an unsupported architecture or weight type (named).
// forward() returns kInvalidArgument for a malformed batch (positions must
// continue each sequence) and kResourceExhausted when the KV cache cannot
// hold the batch; in both cases nothing is changed.
//
// Thread-safety: forward() calls are serialised by the caller; params() and
// other const accessors are safe concurrently.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "airlock/common/status.h"
#include "airlock/engine/backend.h"
#include "airlock/engine/collective.h"
#include "airlock/engine/gguf.h"
#include "airlock/engine/kv_cache.h"
#include "airlock/engine/sampler.h"

namespace airlock::engine {

// The decoder architectures Model loads (general.architecture), and
// their names as a list for messages ("llama, qwen2, ...").
inline constexpr std::string_view kDecoderArchitectures[] = {"llama",   "qwen2", "qwen3",  "phi3",
                                                            "granite", "gemma", "gemma2", "gemma3"};
bool is_decoder_architecture(std::string_view arch);
std::string decoder_architecture_list();

struct ModelParams {
  std::string arch;         // "llama", "qwen2", "qwen3", "phi3", "granite", "gemma", "gemma2", "gemma3"
  int n_vocab = 0;
  int n_embd = 0;
  int n_layer = 0;
  int n_head = 0;
  int n_head_kv = 0;
  int head_dim = 0;
  int n_ff = 0;
  int n_ctx_train = 0;
  float rms_eps = 1e-5f;
  RopeParams rope;
  bool qkv_bias = false;    // qwen2: q, k and v biases required (optional elsewhere)
  bool qk_norm = false;     // qwen3, gemma3
  bool tied_output = false; // no output.weight: the embedding table is reused
  // The Gemma family:
  bool gelu_ffn = false;        // GeGLU feed-forward (gelu(gate) * up) instead of SwiGLU
  float embd_scale = 1.0f;      // the token embeddings times this (sqrt(n_embd))
  bool post_norms = false;      // gemma2/3: RMSNorm of the attention and feed-forward outputs before the residual add
  float attn_scale = 0.0f;      // attention's score scale (1/sqrt(head_dim) unless the family says otherwise)
  float attn_softcap = 0.0f;    // gemma2: attention scores capped at c * tanh(s / c)
  float final_softcap = 0.0f;   // gemma2: the logits capped likewise
  // Sliding-window attention (gemma2, gemma3): a layer il with
  // (il + 1) % swa_period != 0 attends to its last `swa_window` positions
  // and rotates with rope_swa; the others attend to the whole context.
  int swa_window = 0;           // 0: every layer attends to the whole context
  int swa_period = 0;
  RopeParams rope_swa;
  bool is_swa_layer(int il) const { return swa_window > 0 && (il + 1) % swa_period != 0; }
  // Granite: each layer's attention and feed-forward outputs times
  // residual_scale before their residual add, the logits divided by
  // logit_scale (embd_scale and attn_scale above from its keys too), and
  // no rotation at all when rope.scaling.finetuned says false.
  float residual_scale = 1.0f;
  float logit_scale = 1.0f;
  bool use_rope = true;
  int kv_dim() const { return n_head_kv * head_dim; }
};

// One forward pass's tokens. Token i belongs to sequence seq_ids[i] at
// position positions[i]; logits are produced for tokens with want_logits.
struct Batch {
  std::vector<std::int32_t> tokens;
  std::vector<std::int32_t> positions;
  std::vector<std::int32_t> seq_ids;
  std::vector<char> want_logits;

  void add(std::int32_t token, std::int32_t pos, std::int32_t seq_id, bool logits) {
    tokens.push_back(token);
    positions.push_back(pos);
    seq_ids.push_back(seq_id);
    want_logits.push_back(logits ? 1 : 0);
  }
  std::size_t size() const { return tokens.size(); }
  void clear() { tokens.clear(); positions.clear(); seq_ids.clear(); want_logits.clear(); }
};

// Tensor parallelism: this model is rank `rank` of `n_ranks`, holding the
// query heads [rank * n_head / n_ranks, ...) with their key/value heads and
// the feed-forward columns [rank * n_ff / n_ranks, ...): the q/k/v and
// gate/up matrices split by rows (views of the file), attention output and
// down projections by columns (copied), norms, embeddings and the output
// matrix whole. Each rank keeps the KV cache of its own heads; forward()
// sums the partial attention and feed-forward outputs through `comm`, so
// every rank computes the same residual stream and logits.
struct TensorParallel {
  int rank = 0;
  int n_ranks = 1;
  Communicator* comm = nullptr;  // not owned; needed when n_ranks > 1; outlives the model
};

// What a pass returns for its tokens that want logits, in batch order:
// with `tokens` set, the token each of `rows` (one per such token) chooses,
// chosen where the logits are (Backend::sample: on a device only the
// tokens are downloaded); otherwise, with `logits` set, the logits
// (n_wanted, n_vocab); with neither, nothing (the pass stops after its
// last layer).
struct PassOutput {
  std::vector<float>* logits = nullptr;
  std::span<const SampleRow> rows;
  std::vector<SampledToken>* tokens = nullptr;
  // Instead of logits: each wanting token's final hidden state, after the
  // output norm (n_wanted, n_embd), for embedding models.
  std::vector<float>* hidden = nullptr;
};

// One pass's changes to the KV cache, made once (Model::commit) and shared
// by every rank of a tensor-parallel group.
struct PassPlan {
  std::int64_t n_out = 0;                           // tokens that want logits
  std::vector<std::pair<int, int>> copies;          // blocks to copy first (from, to): copy-on-write after a fork
  std::vector<std::int32_t> slots;                  // per token: where its key and value go
  std::vector<std::int32_t> n_ctx;                  // per token: positions it attends to
  std::vector<const std::int32_t*> tables;          // per token: its sequence's block table (the cache's own)
};

// What one rank computes (the whole model with one rank).
struct Shard {
  int n_head = 0;     // query heads
  int n_head_kv = 0;  // key/value heads
  int n_ff = 0;       // feed-forward width
};

class Model {
 public:
  // Errors besides those above: kInvalidArgument when `tp` cannot split
  // this model (key/value heads or the feed-forward width not divisible by
  // n_ranks, or a quantised matrix whose split would cut a block).
  static Result<std::unique_ptr<Model>> load(const std::string& path, std::shared_ptr<Backend> backend,
                                             TensorParallel tp = {});
  static Result<std::unique_ptr<Model>> from_gguf(std::unique_ptr<GgufFile> file, std::shared_ptr<Backend> backend,
                                                  TensorParallel tp = {});
  // A reranker's decoder (decoder_reranker.h): the file's classification
  // head (cls.output.weight) is its caller's to read, not an unread tensor.
  static Result<std::unique_ptr<Model>> from_gguf_with_rank_head(std::unique_ptr<GgufFile> file,
                                                                 std::shared_ptr<Backend> backend);
  ~Model();

  const ModelParams& params() const { return params_; }  // the whole model's
  const Shard& shard() const { return shard_; }
  const TensorParallel& tensor_parallel() const { return tp_; }
  const GgufFile& gguf() const { return *file_; }
  Backend& backend() const { return *backend_; }
  std::uint64_t n_params() const { return n_params_; }         // held by this rank
  std::uint64_t weight_bytes() const { return weight_bytes_; }  // held by this rank
  // Weight bytes one decode step reads: every matrix, but of the token
  // embedding table (unless it is also the output matrix) only one row. The
  // numerator of a batch-1 roofline.
  std::uint64_t weight_bytes_per_token() const;

  // KV storage for `n_blocks` blocks of kBlockTokens positions of this
  // rank's key/value heads, as `type` (KvType says what F16 trades).
  Result<KvStorage> alloc_kv(int n_blocks, KvType type = KvType::kF32) const;
  // Bytes of that storage per block (all layers, keys and values).
  std::uint64_t kv_bytes_per_block(KvType type = KvType::kF32) const;
  // Bytes of backend memory forward() keeps for its activations after a
  // pass of n_tokens tokens of which n_logits want logits (what a device
  // must keep free besides the KV cache).
  std::uint64_t scratch_bytes(std::int64_t n_tokens, std::int64_t n_logits) const;

  // Runs `batch`. Each sequence's tokens must be in order and continue it:
  // the first has position cache.length(seq). The cache is extended (all or
  // nothing); `logits` receives (n_wanted, n_vocab) in batch order.
  // With tensor parallelism, a pass that fails on one rank alone (device
  // memory, a device fault) aborts the group (collective.h): every rank's
  // pass fails, and so does every later one (kUnavailable: make a new group
  // and load the model again). A malformed batch or a full KV cache fails
  // alike on every rank and leaves the group usable.
  // With PassOutput: the same pass, returning what `out` asks for
  // (kInvalidArgument, changing nothing, when out.rows does not have one
  // row per token that wants logits).
  Status forward(const Batch& batch, KvCache& cache, const KvStorage& kv, std::vector<float>* logits);
  Status forward(const Batch& batch, KvCache& cache, const KvStorage& kv, const PassOutput& out);

  // forward() in its steps, so the ranks of a group can share one KvCache
  // (TensorParallelDecoder): check() and commit() once for the group,
  // prepare() and compute() on every rank (compute() on all at once: it
  // holds collectives). check() validates the batch against the cache and
  // returns how many tokens want logits (changes nothing); prepare() grows
  // this rank's buffers; commit() extends the cache; compute() runs the
  // planned pass. A failing compute() of a rank in a group must be followed
  // by fail_group() (the other ranks may be waiting in a collective);
  // prepare() runs before any collective, so its failure fails the pass
  // alone. prepare() also has the backend reserve its workspaces
  // (Backend::reserve_pass), so compute() allocates nothing.
  // compute() with an empty PassOutput stops after the last layer (the
  // other ranks of a group: their logits would be rank 0's).
  Result<std::int64_t> check(const Batch& batch, const KvCache& cache) const;
  Status prepare(std::int64_t n_tokens, std::int64_t n_out);
  static Result<PassPlan> commit(const Batch& batch, KvCache& cache);
  Status compute(const Batch& batch, const PassPlan& plan, const KvStorage& kv, const PassOutput& out);
  // kInvalidArgument unless `out` asks for tokens with one row each of
  // n_out, or for logits, or for nothing.
  static Status check_output(const PassOutput& out, std::int64_t n_out);
  // Aborts this rank's group with `why` and refuses every later pass
  // (kUnavailable); nothing with one rank.
  void fail_group(const Status& why);

 private:
  struct Layer;
  struct Scratch {
    std::shared_ptr<float> data;
    std::int64_t n_floats = 0;
  };
  Model() = default;
  static Result<std::unique_ptr<Model>> from_gguf_impl(std::unique_ptr<GgufFile> file, std::shared_ptr<Backend> backend,
                                                       TensorParallel tp, bool rank_head);
  // dry_run: every check, nothing uploaded.
  Status load_weights(bool dry_run);
  struct Activations {
    float *x, *h, *q, *k, *v, *att, *o, *gate, *up, *out;
  };
  // kUnavailable, with the reason, once this rank's group has failed.
  Status usable() const;
  // This rank's buffers for n tokens and n_out logits (grown as needed).
  Result<Activations> activations(std::int64_t n, std::int64_t n_out);

  std::unique_ptr<GgufFile> file_;
  std::shared_ptr<Backend> backend_;
  ModelParams params_;
  TensorParallel tp_;
  bool rank_head_ = false;  // cls.output.weight is read by the reranker
  Shard shard_;
  std::vector<std::unique_ptr<std::uint8_t[]>> column_slices_;  // weights a column split copied
  WeightTensor tok_embd_, output_norm_, output_;
  std::vector<Layer> layers_;
  std::vector<float> rope_freq_factors_;
  std::vector<Scratch> scratch_;  // forward()'s activation buffers
  // Why this rank's tensor-parallel group failed: no pass runs once set,
  // so no buffer another rank may still read is written again.
  Status group_failure_;
  std::uint64_t n_params_ = 0;
  std::uint64_t weight_bytes_ = 0;
  std::uint64_t embd_bytes_ = 0;      // the token embedding table
  std::uint64_t embd_row_bytes_ = 0;  // one row of it
};

}  // namespace airlock::engine
