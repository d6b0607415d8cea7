// The seam between model architectures and compute devices.
//
// Architecture code (llama.cpp, one file per family) is written once against
// these operations; each backend implements them for its device. The CPU
// backend is the reference and the default; a CUDA backend implements the
// same table. Pointers passed to operations point into backend memory
// (host memory for the CPU backend): activations come from alloc(),
// weights from upload(), key/value storage from alloc_kv().
//
// Shapes are written (rows, columns), row-major, and every float buffer's
// shape is given next to the operation.
//
// Errors: upload() and alloc*() fail with kResourceExhausted when the device
// is out of memory and kInvalidArgument for a type the backend cannot use.
// Compute operations cannot fail on the CPU; a device backend remembers the
// first failure and take_error() reports it (forward() checks it once per
// pass, so a device fault fails that pass, never the process).
//
// Thread-safety: one forward pass at a time per backend; operations may use
// the backend's own threads internally.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "airlock/common/status.h"
#include "airlock/engine/ggml_types.h"
#include "airlock/engine/gguf.h"
#include "airlock/engine/sampler.h"

namespace airlock::engine {

class ThreadPool;

// A weight matrix or vector in backend memory. ne[0] is the row length;
// rows are row_bytes(type, ne[0]) apart.
struct WeightTensor {
  std::string name;
  GgmlType type = GgmlType::kF32;
  std::int64_t ne[4] = {1, 1, 1, 1};
  const std::uint8_t* data = nullptr;
  std::shared_ptr<void> owner;  // set when the backend made a copy
  std::int64_t n_rows() const { return ne[1] * ne[2] * ne[3]; }
};

// Whether an optional weight (a bias, say) was loaded.
inline bool present(const WeightTensor& w) { return w.data != nullptr; }

struct RopeParams {
  int n_rot = 0;               // leading dimensions of each head that rotate
  float freq_base = 10000.0f;
  float freq_scale = 1.0f;     // linear scaling: positions are multiplied by this
  bool neox = false;           // pairs (i, i + n_rot/2) instead of (2i, 2i+1)
  const float* freq_factors = nullptr;  // optional (n_rot / 2): divides each frequency
  float attn_factor = 1.0f;    // the rotated numbers are also multiplied by this (LongRoPE's magnitude scale)
};

// How cached keys and values are stored. F16 halves the cache (twice the
// sequences in the same memory, half the bytes attention reads per token)
// at a relative rounding error of at most 2^-11 per number within half's
// normal range (numbers beyond +-65504 become infinite, ones below 6e-5
// lose precision gradually, as in other engines' f16 caches); F32 keeps
// the forward pass exact against an f32 reference.
enum class KvType { kF32, kF16 };
const char* kv_type_name(KvType t);  // "f32", "f16"
std::size_t kv_type_bytes(KvType t);  // 4, 2

// Key/value numbers for every layer: (n_slots, kv_dim) each, where a slot
// is KvCache block * kBlockTokens + offset; elements are f32 or IEEE half
// bits (std::uint16_t) as `type` says.
struct KvStorage {
  int n_layers = 0;
  std::int64_t n_slots = 0;
  std::int64_t kv_dim = 0;
  KvType type = KvType::kF32;
  std::shared_ptr<void> k;  // (n_layers, n_slots, kv_dim)
  std::shared_ptr<void> v;
  // The shape, without storage yet (what a backend's alloc_kv fills in).
  static KvStorage of_shape(int n_layers, std::int64_t n_slots, std::int64_t kv_dim, KvType type) {
    KvStorage kv;
    kv.n_layers = n_layers;
    kv.n_slots = n_slots;
    kv.kv_dim = kv_dim;
    kv.type = type;
    return kv;
  }
  std::size_t layer_bytes() const { return static_cast<std::size_t>(n_slots * kv_dim) * kv_type_bytes(type); }
  void* k_layer(int layer) const { return static_cast<char*>(k.get()) + static_cast<std::size_t>(layer) * layer_bytes(); }
  void* v_layer(int layer) const { return static_cast<char*>(v.get()) + static_cast<std::size_t>(layer) * layer_bytes(); }
};

struct AttentionArgs {
  const float* q = nullptr;         // (n_tokens, n_head * head_dim), already rotated
  float* out = nullptr;             // (n_tokens, n_head * head_dim)
  std::int64_t n_tokens = 0;
  int n_head = 0;
  int n_kv_head = 0;
  int head_dim = 0;
  float scale = 1.0f;               // usually 1/sqrt(head_dim)
  float softcap = 0.0f;             // > 0: scores capped to softcap * tanh(score / softcap) (Gemma 2)
  int window = 0;                   // > 0: each token attends to its last `window` positions only
  const KvStorage* kv = nullptr;
  int layer = 0;
  // Token t attends to positions [0, n_ctx[t]) of its sequence (with a
  // window, [max(0, n_ctx[t] - window), n_ctx[t])), whose slots are
  // block_table[t][p / kBlockTokens] * kBlockTokens + p % kBlockTokens.
  const std::int32_t* n_ctx = nullptr;
  const std::int32_t* const* block_table = nullptr;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  // Whether its operations run on the host's cores (the CPU backend): then
  // every other thread that runs while it computes, a connection thread
  // writing a token, takes time from it.
  virtual bool uses_host_cores() const = 0;

  // Makes a GGUF tensor usable by operations (the CPU keeps it in the mapping).
  virtual Result<WeightTensor> upload(const GgufTensor& t) = 0;
  virtual Result<std::shared_ptr<float>> alloc(std::int64_t n_floats) = 0;
  virtual Result<KvStorage> alloc_kv(int n_layers, std::int64_t n_slots, std::int64_t kv_dim, KvType type) = 0;

  // y (n_tokens, w.ne[1]) = x (n_tokens, w.ne[0]) times w transposed.
  virtual void matmul(const WeightTensor& w, const float* x, std::int64_t n_tokens, float* y) = 0;
  // Several products of one input (a layer's q, k and v; gate and up):
  // y[i] = x times w[i] transposed, for i < count; every w[i] has x's row
  // length. The default runs matmul() for each; the CPU backend prepares x
  // once and shares all the rows among its threads in one pass, which saves
  // a synchronisation and a memory-stream start per small matrix.
  virtual void matmul_many(const WeightTensor* const* w, float* const* y, int count, const float* x,
                           std::int64_t n_tokens) {
    for (int i = 0; i < count; ++i) matmul(*w[i], x, n_tokens, y[i]);
  }
  // out (n, table.ne[0]) = rows `ids` of the table.
  virtual void get_rows(const WeightTensor& table, const std::int32_t* ids, std::int64_t n, float* out) = 0;
  // y (n_rows, dim) = x / rms(x) * w, per row; w is an F32 vector of dim.
  virtual void rms_norm(const float* x, const WeightTensor& w, std::int64_t n_rows, std::int64_t dim, float eps,
                        float* y) = 0;
  // y (n_rows, dim) = (x - mean(x)) / sqrt(var(x) + eps) * w + b, per row
  // (BERT's LayerNorm; biased variance, as ggml_norm); w and b are vectors
  // of dim. y may be x.
  virtual void layer_norm(const float* x, const WeightTensor& w, const WeightTensor& b, std::int64_t n_rows,
                          std::int64_t dim, float eps, float* y) = 0;
  // y (n_rows, dim) += bias (dim).
  virtual void add_bias(float* y, const WeightTensor& bias, std::int64_t n_rows, std::int64_t dim) = 0;
  // x (n_tokens, n_heads * head_dim) rotated in place at `positions`.
  virtual void rope(float* x, std::int64_t n_tokens, int n_heads, int head_dim, const std::int32_t* positions,
                    const RopeParams& p) = 0;
  // out (n) = silu(gate) * up.
  virtual void swiglu(const float* gate, const float* up, std::int64_t n, float* out) = 0;
  // y (n) = gelu(x) in ggml's tanh form, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))),
  // which llama.cpp uses for BERT. y may be x.
  virtual void gelu(const float* x, std::int64_t n, float* y) = 0;
  // out (n) = gelu(gate) * up (GeGLU, gelu in the tanh form above).
  virtual void geglu(const float* gate, const float* up, std::int64_t n, float* out) = 0;
  // x (n) *= s.
  virtual void scale(float* x, std::int64_t n, float s) = 0;
  // x (n) = cap * tanh(x / cap), in place (Gemma 2's final logit
  // soft-capping); cap > 0.
  virtual void softcap(float* x, std::int64_t n, float cap) = 0;
  // y (n) += x (n).
  virtual void add(float* y, const float* x, std::int64_t n) = 0;
  // Stores k and v (n_tokens, kv_dim) at `slots` of `layer`, rounded to the
  // storage's type.
  virtual void kv_write(const KvStorage& kv, int layer, const float* k, const float* v, std::int64_t n_tokens,
                        const std::int32_t* slots) = 0;
  // Copies whole blocks (copy-on-write after a fork), every layer.
  virtual void kv_copy_blocks(const KvStorage& kv, int from_block, int to_block) = 0;
  virtual void attention(const AttentionArgs& args) = 0;
  // dst (n_rows, dim) = rows `rows` (n_rows, host memory, increasing) of
  // src; dst may be src (rows move down only).
  virtual void gather_rows(const float* src, const std::int64_t* rows, std::int64_t n_rows, std::int64_t dim,
                           float* dst) = 0;
  // host (n, host memory) = x (n).
  virtual void download(const float* x, std::int64_t n, float* host) = 0;
  // out (rows.size(), host memory) = the token rows[i] chooses from row i
  // of logits (rows.size(), n_vocab), as sample_row() (sampler.h) would.
  // The default downloads the logits and runs sample_row() on the host; a
  // device backend chooses on the device and downloads only the tokens and
  // their log-probabilities. Errors: the pass's (take_error()).
  virtual Status sample(const float* logits, std::int64_t n_vocab, std::span<const SampleRow> rows,
                        std::vector<SampledToken>* out);
  // The first failure since the last call (then cleared); OK on the CPU.
  virtual Status take_error() { return Status::ok(); }
  // Free bytes of the device's memory now; nullopt for host memory (whose
  // budget is configured, not measured).
  virtual std::optional<std::uint64_t> free_device_memory() { return std::nullopt; }
  // Makes the calling thread use this backend's device (a thread that runs
  // forward passes calls it once before the first); nothing on the CPU.
  virtual void bind_thread() {}
  // The largest pass coming: n_tokens tokens, query heads of head_dim,
  // matrix rows up to max_row numbers, block tables up to max_blocks.
  struct PassShape {
    std::int64_t n_tokens = 0;
    int n_head = 0;
    int head_dim = 0;
    std::int64_t max_row = 0;
    std::int64_t max_blocks = 0;
    std::int64_t n_out = 0;    // rows of logits
    std::int64_t n_vocab = 0;  // numbers per row of logits
  };
  // What a pass is, told by the model before its layers run (after any
  // copy-on-write block copies); end_pass() follows its last operation,
  // before its logits are downloaded or sampled. A replayable pass is one
  // whose operations (their order, sizes and buffers) are decided by
  // n_tokens alone, its host arguments (ids, positions, slots, contexts,
  // block tables) being the only things that change from one such pass to
  // the next: a device backend may then capture the operations once per
  // shape and replay them in one launch (CUDA graphs), queuing nothing
  // until end_pass(). end_pass() returns false when it ran nothing of the
  // pass (a capture that failed, a replay refused): the caller then issues
  // the pass's operations again, as a pass that is not replayable. Nothing
  // on the CPU.
  struct PassInfo {
    std::int64_t n_tokens = 0;
    int max_ctx = 0;          // the most positions a token of the pass attends to
    bool replayable = false;
    const KvStorage* kv = nullptr;  // the storage it reads and writes (a replay must use the same)
  };
  virtual void begin_pass(const PassInfo&) {}
  [[nodiscard]] virtual bool end_pass() { return true; }
  // Allocates, ahead of the pass, whatever workspace the backend's
  // operations would otherwise allocate during it (so that running out of
  // memory fails the pass before the KV cache changes); nothing on the CPU.
  virtual Status reserve_pass(const PassShape&) { return Status::ok(); }
  // The CPU backend's compute threads, for other CPU work of the process to
  // share rather than add threads beside them; null on a GPU.
  virtual std::shared_ptr<ThreadPool> cpu_pool() const { return nullptr; }
};

std::unique_ptr<Backend> make_cpu_backend(std::shared_ptr<ThreadPool> pool);

}  // namespace airlock::engine
