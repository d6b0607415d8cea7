#include <algorithm>
#include <cmath>
#include <cstring>
#include <iterator>
#include <set>
#include <string>

#include "model_internal.h"

namespace airlock::engine {
namespace {

Status check_shape(const GgufTensor& t, std::int64_t ne0, std::int64_t ne1) {
  bool ok = t.ne[0] == ne0 && t.ne[1] == ne1 && t.ne[2] == 1 && t.ne[3] == 1;
  if (!ok)
    return verification_failed("tensor '" + t.name + "' has shape [" + std::to_string(t.ne[0]) + ", " +
                               std::to_string(t.ne[1]) + "], expected [" + std::to_string(ne0) + ", " +
                               std::to_string(ne1) + "]");
  return Status::ok();
}

// Rows [r0, r1) of t (its ne[1] axis): a view, no copy.
GgufTensor slice_rows(const GgufTensor& t, std::int64_t r0, std::int64_t r1) {
  const std::size_t rb = row_bytes(t.type, t.ne[0]);
  GgufTensor s = t;
  s.ne[1] = r1 - r0;
  s.n_elements = t.ne[0] * s.ne[1];
  s.data = t.data.subspan(rb * static_cast<std::size_t>(r0), rb * static_cast<std::size_t>(r1 - r0));
  return s;
}

// Columns [c0, c1) of every row of t (its ne[0] axis), copied into a new
// buffer appended to `storage`. A quantised row splits only between blocks.
Result<GgufTensor> slice_cols(const GgufTensor& t, std::int64_t c0, std::int64_t c1,
                              std::vector<std::unique_ptr<std::uint8_t[]>>* storage) {
  const std::int64_t blk = traits(t.type).block_elems;
  if (c0 % blk != 0 || c1 % blk != 0)
    return invalid_argument("tensor parallelism: '" + t.name + "' (" + std::string(traits(t.type).name) +
                            ", blocks of " + std::to_string(blk) + ") cannot be split at column " +
                            std::to_string(c0 % blk != 0 ? c0 : c1));
  const std::size_t rb = row_bytes(t.type, t.ne[0]), off = row_bytes(t.type, c0), len = row_bytes(t.type, c1 - c0);
  const std::int64_t n_rows = t.ne[1];
  auto buf = std::make_unique<std::uint8_t[]>(len * static_cast<std::size_t>(n_rows));
  for (std::int64_t r = 0; r < n_rows; ++r)
    std::memcpy(buf.get() + len * static_cast<std::size_t>(r), t.data.data() + rb * static_cast<std::size_t>(r) + off, len);
  GgufTensor s = t;
  s.ne[0] = c1 - c0;
  s.n_elements = s.ne[0] * n_rows;
  s.data = std::span<const std::uint8_t>(buf.get(), len * static_cast<std::size_t>(n_rows));
  storage->push_back(std::move(buf));
  return s;
}

// A positive number under `max` at `key`: absent leaves *out (or fails
// when required).
Status read_positive(const GgufFile& f, const std::string& key, bool required, double max, float* out) {
  if (!f.find(key)) return required ? verification_failed("gguf: " + key + " is missing") : Status::ok();
  const double v = f.get_float(key).value_or(0.0);
  if (!(v > 0 && v < max)) return verification_failed("gguf: " + key + " must be a positive number");
  *out = static_cast<float>(v);
  return Status::ok();
}

// The Gemma family's differences from Llama, as llama.cpp reads and runs
// them (keys it ignores for these architectures are ignored here too):
// GeGLU, embeddings times sqrt(n_embd), and for gemma2/gemma3 norms after
// attention and the feed-forward, sliding-window layers and the query
// scale of the 27B models; gemma2's soft-capping. (The converter has
// already added Gemma's +1 to every norm weight.)
Status read_gemma_params(const GgufFile& f, ModelParams* p) {
  p->gelu_ffn = true;
  p->embd_scale = std::sqrt(static_cast<float>(p->n_embd));
  if (p->arch == "gemma") return Status::ok();
  p->post_norms = true;
  // The 27B models scale queries by 1/sqrt(n_embd / n_head) (their
  // query_pre_attn_scalar, not their head size); llama.cpp knows them by
  // their layer count, and so does this.
  const int big_layers = p->arch == "gemma2" ? 46 : 62;
  if (p->n_layer == big_layers) {
    if (p->n_embd < p->n_head)
      return verification_failed("gguf: " + p->arch + " with " + std::to_string(p->n_layer) +
                                 " layers needs embedding_length >= head_count (its query scale)");
    p->attn_scale = 1.0f / std::sqrt(static_cast<float>(p->n_embd / p->n_head));
  }
  // gemma2 always caps, at 50 and 30 unless the file says (llama.cpp's
  // defaults); gemma3 never does.
  if (p->arch == "gemma2") {
    p->attn_softcap = 50.0f;
    p->final_softcap = 30.0f;
    AIRLOCK_RETURN_IF_ERROR(read_positive(f, p->arch + ".attn_logit_softcapping", false, 1e30, &p->attn_softcap));
    AIRLOCK_RETURN_IF_ERROR(read_positive(f, p->arch + ".final_logit_softcapping", false, 1e30, &p->final_softcap));
  }
  // Gemma 2: every other layer local (the first one of each pair), 4096
  // positions unless the file says; Gemma 3: five local layers then one
  // global, the local ones rotating at base 10000 without scaling, or,
  // without a window in the file, every layer global.
  const std::string window_key = p->arch + ".attention.sliding_window";
  std::uint64_t window = p->arch == "gemma2" ? 4096 : 0;
  if (f.find(window_key)) {
    window = f.get_uint(window_key).value_or(0);
    if ((window == 0 && p->arch == "gemma2") || window > (1u << 24))
      return verification_failed("gguf: " + window_key + " is out of range");
  }
  p->swa_window = static_cast<int>(window);
  p->swa_period = p->arch == "gemma2" ? 2 : 6;
  p->rope_swa = p->rope;
  if (p->arch == "gemma3") {
    p->rope_swa.freq_base = 10000.0f;
    p->rope_swa.freq_scale = 1.0f;
  }
  return Status::ok();
}

// IBM Granite (3.x dense): Llama with four multipliers, as llama.cpp reads
// them: logit_scale (required), and residual_scale, embedding_scale and
// attention.scale when present; rope.scaling.finetuned false turns RoPE off.
Status read_granite_params(const GgufFile& f, ModelParams* p) {
  auto factor = [&](const std::string& key, bool required, float* out) {
    return read_positive(f, p->arch + "." + key, required, 1e6, out);
  };
  AIRLOCK_RETURN_IF_ERROR(factor("logit_scale", true, &p->logit_scale));
  AIRLOCK_RETURN_IF_ERROR(factor("residual_scale", false, &p->residual_scale));
  AIRLOCK_RETURN_IF_ERROR(factor("embedding_scale", false, &p->embd_scale));
  AIRLOCK_RETURN_IF_ERROR(factor("attention.scale", false, &p->attn_scale));
  p->use_rope = f.get_bool(p->arch + ".rope.scaling.finetuned").value_or(true);
  return Status::ok();
}

}  // namespace

bool is_decoder_architecture(std::string_view arch) {
  return std::find(std::begin(kDecoderArchitectures), std::end(kDecoderArchitectures), arch) !=
         std::end(kDecoderArchitectures);
}

std::string decoder_architecture_list() {
  std::string out;
  for (std::string_view a : kDecoderArchitectures) {
    if (!out.empty()) out += ", ";
    out += a;
  }
  return out;
}

Model::~Model() = default;

Result<std::unique_ptr<Model>> Model::load(const std::string& path, std::shared_ptr<Backend> backend,
                                           TensorParallel tp) {
  AIRLOCK_ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> file, GgufFile::open(path));
  return from_gguf(std::move(file), std::move(backend), tp);
}

Result<std::unique_ptr<Model>> Model::from_gguf_with_rank_head(std::unique_ptr<GgufFile> file,
                                                               std::shared_ptr<Backend> backend) {
  return from_gguf_impl(std::move(file), std::move(backend), {}, /*rank_head=*/true);
}

Result<std::unique_ptr<Model>> Model::from_gguf(std::unique_ptr<GgufFile> file, std::shared_ptr<Backend> backend,
                                                TensorParallel tp) {
  return from_gguf_impl(std::move(file), std::move(backend), tp, /*rank_head=*/false);
}

Result<std::unique_ptr<Model>> Model::from_gguf_impl(std::unique_ptr<GgufFile> file, std::shared_ptr<Backend> backend,
                                                     TensorParallel tp, bool rank_head) {
  if (tp.n_ranks < 1 || tp.rank < 0 || tp.rank >= tp.n_ranks)
    return invalid_argument("tensor parallelism: rank " + std::to_string(tp.rank) + " of " + std::to_string(tp.n_ranks));
  if (tp.n_ranks > 1 && (tp.comm == nullptr || tp.comm->n_ranks() != tp.n_ranks || tp.comm->rank() != tp.rank))
    return invalid_argument("tensor parallelism: rank " + std::to_string(tp.rank) + " of " +
                            std::to_string(tp.n_ranks) + " needs its group's communicator");
  std::unique_ptr<Model> m(new Model());
  m->file_ = std::move(file);
  m->backend_ = std::move(backend);
  m->tp_ = tp;
  m->rank_head_ = rank_head;
  const GgufFile& f = *m->file_;
  ModelParams& p = m->params_;
  auto arch = f.get_string("general.architecture");
  if (!arch) return verification_failed("gguf: general.architecture is missing");
  p.arch = std::string(*arch);
  const bool gemma = p.arch == "gemma" || p.arch == "gemma2" || p.arch == "gemma3";
  if (!is_decoder_architecture(p.arch))
    return invalid_argument("architecture '" + p.arch + "' is not supported (" + decoder_architecture_list() + ")");
  // A positive count, or (as llama.cpp's get_key_or_arr reads it) an array
  // of one per layer, which must all be the same here.
  auto need_uint = [&](const std::string& key, int* out, std::uint64_t max) -> Status {
    const std::string k = p.arch + "." + key;
    std::optional<std::uint64_t> v = f.get_uint(k);
    const GgufValue* raw = f.find(k);
    if (!v && raw != nullptr && raw->type == GgufValueType::kArray && p.n_layer > 0) {
      Result<std::vector<std::int64_t>> per_layer = f.get_int_array(k);
      if (per_layer.is_ok() && static_cast<int>(per_layer->size()) == p.n_layer) {
        for (std::int64_t x : *per_layer)
          if (x != per_layer->front())
            return invalid_argument("gguf: " + k + " differs from layer to layer, which is not supported");
        if (per_layer->front() > 0) v = static_cast<std::uint64_t>(per_layer->front());
      }
    }
    if (!v || *v == 0 || *v > max) return verification_failed("gguf: " + k + " is missing or out of range");
    *out = static_cast<int>(*v);
    return Status::ok();
  };
  AIRLOCK_RETURN_IF_ERROR(need_uint("embedding_length", &p.n_embd, 1 << 16));
  AIRLOCK_RETURN_IF_ERROR(need_uint("block_count", &p.n_layer, 1024));
  AIRLOCK_RETURN_IF_ERROR(need_uint("attention.head_count", &p.n_head, 1024));
  AIRLOCK_RETURN_IF_ERROR(need_uint("feed_forward_length", &p.n_ff, 1 << 20));
  p.n_head_kv = p.n_head;
  if (f.find(p.arch + ".attention.head_count_kv"))
    AIRLOCK_RETURN_IF_ERROR(need_uint("attention.head_count_kv", &p.n_head_kv, 1024));
  if (p.n_head % p.n_head_kv != 0) return verification_failed("gguf: head_count is not a multiple of head_count_kv");
  p.head_dim = p.n_embd / p.n_head;
  if (f.find(p.arch + ".attention.key_length"))
    AIRLOCK_RETURN_IF_ERROR(need_uint("attention.key_length", &p.head_dim, 1 << 12));
  // Read as ints below: a value past 2^31 would wrap (2^32 + 8 read as 8).
  for (const char* key : {".context_length", ".rope.dimension_count"})
    if (f.get_uint(p.arch + key).value_or(0) > (1u << 24))
      return verification_failed("gguf: " + p.arch + key + " is implausibly large");
  p.n_ctx_train = static_cast<int>(f.get_uint(p.arch + ".context_length").value_or(2048));
  p.rms_eps = static_cast<float>(f.get_float(p.arch + ".attention.layer_norm_rms_epsilon").value_or(1e-5));
  p.rope.n_rot = static_cast<int>(f.get_uint(p.arch + ".rope.dimension_count").value_or(p.head_dim));
  if (p.rope.n_rot <= 0 || p.rope.n_rot > p.head_dim || p.rope.n_rot % 2 != 0)
    return verification_failed("gguf: rope.dimension_count is invalid");
  p.rope.freq_base = static_cast<float>(f.get_float(p.arch + ".rope.freq_base").value_or(10000.0));
  auto scaling = f.get_string(p.arch + ".rope.scaling.type");
  if (scaling && *scaling == "linear") {
    double factor = f.get_float(p.arch + ".rope.scaling.factor").value_or(1.0);
    if (!(factor > 0)) return verification_failed("gguf: rope.scaling.factor must be positive");
    p.rope.freq_scale = static_cast<float>(1.0 / factor);
  } else if (scaling && *scaling != "none" && *scaling != "longrope") {
    // (longrope: the frequency factors are tensors, read with the weights)
    return invalid_argument("rope scaling '" + std::string(*scaling) + "' is not supported");
  }
  // LongRoPE's magnitude scale (Phi-3 and Phi-4 with long contexts).
  if (f.find(p.arch + ".rope.scaling.attn_factor")) {
    const double af = f.get_float(p.arch + ".rope.scaling.attn_factor").value_or(0.0);
    if (!(af > 0 && af < 1e3)) return verification_failed("gguf: rope.scaling.attn_factor must be positive");
    p.rope.attn_factor = static_cast<float>(af);
  }
  // llama.cpp's converters permute llama (and granite) Q/K for
  // adjacent-pair rotation; the others rotate halves (NeoX style).
  p.rope.neox = p.arch != "llama" && p.arch != "granite";
  p.qkv_bias = p.arch == "qwen2";
  p.qk_norm = p.arch == "qwen3" || p.arch == "gemma3";
  p.attn_scale = 1.0f / std::sqrt(static_cast<float>(p.head_dim));
  if (gemma) AIRLOCK_RETURN_IF_ERROR(read_gemma_params(f, &p));
  if (p.arch == "granite") AIRLOCK_RETURN_IF_ERROR(read_granite_params(f, &p));
  // Whole key/value heads per rank (each rank's query heads then share
  // only its own), and equal feed-forward slices.
  if (p.n_head_kv % tp.n_ranks != 0 || p.n_ff % tp.n_ranks != 0)
    return invalid_argument("tensor parallelism: " + std::to_string(p.n_head_kv) + " key/value heads and a " +
                            "feed-forward width of " + std::to_string(p.n_ff) + " do not divide among " +
                            std::to_string(tp.n_ranks) + " ranks");
  m->shard_ = {p.n_head / tp.n_ranks, p.n_head_kv / tp.n_ranks, p.n_ff / tp.n_ranks};
  // Every check first, uploading nothing: a file refused for a shape or
  // a tensor the pass has no place for costs no copy to the device.
  AIRLOCK_RETURN_IF_ERROR(m->load_weights(/*dry_run=*/true));
  AIRLOCK_RETURN_IF_ERROR(m->load_weights(/*dry_run=*/false));
  return m;
}

Status Model::load_weights(bool dry_run) {
  const GgufFile& f = *file_;
  ModelParams& p = params_;
  p.rope.freq_factors = nullptr;  // set again below (the dry run set it too)
  rope_freq_factors_.clear();
  // This rank's part of a tensor: whole, rows [lo, hi) or columns [lo, hi).
  enum class Split { kWhole, kRows, kCols };
  auto take = [&](const GgufTensor& part, WeightTensor* out) -> Status {
    if (dry_run) return Status::ok();
    AIRLOCK_ASSIGN_OR_RETURN(*out, backend_->upload(part));
    n_params_ += static_cast<std::uint64_t>(part.n_elements);
    weight_bytes_ += part.data.size();
    return Status::ok();
  };
  // Every tensor the pass reads; any other in the file is refused at the
  // end (as llama.cpp does): a tensor run without would change every answer.
  std::set<std::string, std::less<>> used;
  auto find = [&](const std::string& name, std::int64_t ne0, std::int64_t ne1) -> Result<const GgufTensor*> {
    const GgufTensor* t = f.tensor(name);
    if (t == nullptr) return verification_failed("gguf: tensor '" + name + "' is missing");
    AIRLOCK_RETURN_IF_ERROR(check_shape(*t, ne0, ne1));
    used.insert(name);
    return t;
  };
  auto get_part = [&](const std::string& name, std::int64_t ne0, std::int64_t ne1, WeightTensor* out, Split split,
                      std::int64_t lo, std::int64_t hi) -> Status {
    AIRLOCK_ASSIGN_OR_RETURN(const GgufTensor* t, find(name, ne0, ne1));
    if (dry_run) return Status::ok();
    GgufTensor part = *t;
    if (split == Split::kRows && tp_.n_ranks > 1) part = slice_rows(*t, lo, hi);
    if (split == Split::kCols && tp_.n_ranks > 1) {
      AIRLOCK_ASSIGN_OR_RETURN(part, slice_cols(*t, lo, hi, &column_slices_));
    }
    return take(part, out);
  };
  // Rows [offset, offset + rows) of a fused matrix (ne0, total) as a
  // matrix of its own (a view); with several ranks this rank's rows
  // [lo, hi) of those.
  auto get_fused = [&](const std::string& name, std::int64_t ne0, std::int64_t total, std::int64_t offset,
                       std::int64_t rows, WeightTensor* out, std::int64_t lo, std::int64_t hi) -> Status {
    AIRLOCK_ASSIGN_OR_RETURN(const GgufTensor* t, find(name, ne0, total));
    if (dry_run) return Status::ok();
    return take(tp_.n_ranks > 1 ? slice_rows(*t, offset + lo, offset + hi) : slice_rows(*t, offset, offset + rows), out);
  };
  auto get = [&](const std::string& name, std::int64_t ne0, std::int64_t ne1, WeightTensor* out) {
    return get_part(name, ne0, ne1, out, Split::kWhole, 0, 0);
  };
  // A bias vector of ne0 where the file has one (this rank's [lo, hi) of
  // it with kCols); none leaves *out without data.
  auto get_bias = [&](const std::string& name, std::int64_t ne0, WeightTensor* out, Split split, std::int64_t lo,
                      std::int64_t hi) -> Status {
    return f.tensor(name) == nullptr ? Status::ok() : get_part(name, ne0, 1, out, split, lo, hi);
  };
  // This rank's query dimensions, key/value dimensions and feed-forward columns.
  const std::int64_t r = tp_.rank, hd = p.head_dim;
  const std::int64_t q0 = r * shard_.n_head * hd, q1 = (r + 1) * shard_.n_head * hd;
  const std::int64_t k0 = r * shard_.n_head_kv * hd, k1 = (r + 1) * shard_.n_head_kv * hd;
  const std::int64_t f0 = r * shard_.n_ff, f1 = (r + 1) * shard_.n_ff;
  const GgufTensor* embd = f.tensor("token_embd.weight");
  if (embd == nullptr) return verification_failed("gguf: tensor 'token_embd.weight' is missing");
  p.n_vocab = static_cast<int>(embd->ne[1]);
  const std::int64_t q_dim = static_cast<std::int64_t>(p.n_head) * p.head_dim;
  AIRLOCK_RETURN_IF_ERROR(get("token_embd.weight", p.n_embd, p.n_vocab, &tok_embd_));
  embd_bytes_ = embd->data.size();
  embd_row_bytes_ = row_bytes(embd->type, p.n_embd);
  AIRLOCK_RETURN_IF_ERROR(get("output_norm.weight", p.n_embd, 1, &output_norm_));
  p.tied_output = f.tensor("output.weight") == nullptr;
  if (p.tied_output) output_ = tok_embd_;
  else AIRLOCK_RETURN_IF_ERROR(get("output.weight", p.n_embd, p.n_vocab, &output_));
  const bool gemma = p.arch.rfind("gemma", 0) == 0;  // the Gemma family rotates without factors
  if (gemma && (f.tensor("rope_freqs.weight") || f.tensor("rope_factors_long.weight") ||
                f.tensor("rope_factors_short.weight")))
    return verification_failed("gguf: a " + p.arch + " file has rope frequency factors, which Gemma does not use");
  // Frequency factors (F32, one per rotated pair, positive) become the
  // rotation's.
  auto use_factors = [&](const GgufTensor& t) -> Status {
    used.insert(t.name);
    if (t.type != GgmlType::kF32 || t.ne[0] != p.rope.n_rot / 2 || t.n_elements != t.ne[0])
      return verification_failed("gguf: '" + t.name + "' must be an F32 vector of rope dimensions / 2");
    rope_freq_factors_.assign(reinterpret_cast<const float*>(t.data.data()),
                              reinterpret_cast<const float*>(t.data.data()) + t.ne[0]);
    for (float x : rope_freq_factors_)
      if (!(x > 0 && std::isfinite(x))) return verification_failed("gguf: a factor of '" + t.name + "' is not positive");
    p.rope.freq_factors = rope_freq_factors_.data();
    return Status::ok();
  };
  if (const GgufTensor* rf = f.tensor("rope_freqs.weight")) AIRLOCK_RETURN_IF_ERROR(use_factors(*rf));
  // LongRoPE (Phi-3, Phi-4): frequency factors for contexts up to the
  // original length and for longer ones. As llama.cpp does, the long ones
  // serve when the model's context is longer than the original (the
  // context is the whole trained one here), so the short ones go unused.
  const GgufTensor* rope_long = f.tensor("rope_factors_long.weight");
  const GgufTensor* rope_short = f.tensor("rope_factors_short.weight");
  if (rope_long != nullptr || rope_short != nullptr) {
    if (p.rope.freq_factors != nullptr)
      return verification_failed("gguf: both rope_freqs and rope_factors_long/short are present");
    if (rope_long == nullptr || rope_short == nullptr)
      return verification_failed("gguf: rope_factors_long and rope_factors_short must both be present");
    const std::uint64_t orig =
        f.get_uint(p.arch + ".rope.scaling.original_context_length").value_or(static_cast<std::uint64_t>(p.n_ctx_train));
    AIRLOCK_RETURN_IF_ERROR(use_factors(static_cast<std::uint64_t>(p.n_ctx_train) > orig ? *rope_long : *rope_short));
    used.insert(rope_long->name);  // the other set is read, and deliberately unused
    used.insert(rope_short->name);
  }
  layers_.resize(static_cast<std::size_t>(p.n_layer));
  for (int i = 0; i < p.n_layer; ++i) {
    const std::string b = "blk." + std::to_string(i) + ".";
    Layer& l = layers_[i];
    AIRLOCK_RETURN_IF_ERROR(get(b + "attn_norm.weight", p.n_embd, 1, &l.attn_norm));
    if (f.tensor(b + "attn_qkv.weight") != nullptr) {  // q, k and v in one matrix (phi3)
      const std::string qkv = b + "attn_qkv.weight";
      const std::int64_t total = q_dim + 2 * p.kv_dim();
      AIRLOCK_RETURN_IF_ERROR(get_fused(qkv, p.n_embd, total, 0, q_dim, &l.wq, q0, q1));
      AIRLOCK_RETURN_IF_ERROR(get_fused(qkv, p.n_embd, total, q_dim, p.kv_dim(), &l.wk, k0, k1));
      AIRLOCK_RETURN_IF_ERROR(get_fused(qkv, p.n_embd, total, q_dim + p.kv_dim(), p.kv_dim(), &l.wv, k0, k1));
    } else {
      AIRLOCK_RETURN_IF_ERROR(get_part(b + "attn_q.weight", p.n_embd, q_dim, &l.wq, Split::kRows, q0, q1));
      AIRLOCK_RETURN_IF_ERROR(get_part(b + "attn_k.weight", p.n_embd, p.kv_dim(), &l.wk, Split::kRows, k0, k1));
      AIRLOCK_RETURN_IF_ERROR(get_part(b + "attn_v.weight", p.n_embd, p.kv_dim(), &l.wv, Split::kRows, k0, k1));
    }
    AIRLOCK_RETURN_IF_ERROR(get_part(b + "attn_output.weight", q_dim, p.n_embd, &l.wo, Split::kCols, q0, q1));
    // Biases: q, k and v (required for qwen2), split with their matrices'
    // rows; attn_output and ffn_down ones whole, added once after the
    // ranks' partial sums are reduced. (Fused attn_qkv with a bias: no
    // converter writes one; refused below as unused.)
    auto qkv_bias = [&](const char* name, std::int64_t dim, WeightTensor* out, std::int64_t lo, std::int64_t hi) {
      return p.qkv_bias ? get_part(b + name, dim, 1, out, Split::kCols, lo, hi)
                        : get_bias(b + name, dim, out, Split::kCols, lo, hi);
    };
    AIRLOCK_RETURN_IF_ERROR(qkv_bias("attn_q.bias", q_dim, &l.bq, q0, q1));
    AIRLOCK_RETURN_IF_ERROR(qkv_bias("attn_k.bias", p.kv_dim(), &l.bk, k0, k1));
    AIRLOCK_RETURN_IF_ERROR(qkv_bias("attn_v.bias", p.kv_dim(), &l.bv, k0, k1));
    AIRLOCK_RETURN_IF_ERROR(get_bias(b + "attn_output.bias", p.n_embd, &l.bo, Split::kWhole, 0, 0));
    if (p.qk_norm) {
      AIRLOCK_RETURN_IF_ERROR(get(b + "attn_q_norm.weight", p.head_dim, 1, &l.q_norm));
      AIRLOCK_RETURN_IF_ERROR(get(b + "attn_k_norm.weight", p.head_dim, 1, &l.k_norm));
    }
    if (p.post_norms) {
      AIRLOCK_RETURN_IF_ERROR(get(b + "post_attention_norm.weight", p.n_embd, 1, &l.post_attn_norm));
      AIRLOCK_RETURN_IF_ERROR(get(b + "post_ffw_norm.weight", p.n_embd, 1, &l.post_ffn_norm));
    }
    AIRLOCK_RETURN_IF_ERROR(get(b + "ffn_norm.weight", p.n_embd, 1, &l.ffn_norm));
    if (p.arch == "phi3") {
      // gate then up in one matrix (phi3): silu(first half) * second half
      const std::string up = b + "ffn_up.weight";
      AIRLOCK_RETURN_IF_ERROR(get_fused(up, p.n_embd, 2 * p.n_ff, 0, p.n_ff, &l.w_gate, f0, f1));
      AIRLOCK_RETURN_IF_ERROR(get_fused(up, p.n_embd, 2 * p.n_ff, p.n_ff, p.n_ff, &l.w_up, f0, f1));
    } else {
      AIRLOCK_RETURN_IF_ERROR(get_part(b + "ffn_gate.weight", p.n_embd, p.n_ff, &l.w_gate, Split::kRows, f0, f1));
      AIRLOCK_RETURN_IF_ERROR(get_part(b + "ffn_up.weight", p.n_embd, p.n_ff, &l.w_up, Split::kRows, f0, f1));
    }
    AIRLOCK_RETURN_IF_ERROR(get_part(b + "ffn_down.weight", p.n_ff, p.n_embd, &l.w_down, Split::kCols, f0, f1));
    if (p.arch != "phi3") {  // (phi3's fused gate/up has no bias in any converter)
      AIRLOCK_RETURN_IF_ERROR(get_bias(b + "ffn_gate.bias", p.n_ff, &l.b_gate, Split::kCols, f0, f1));
      AIRLOCK_RETURN_IF_ERROR(get_bias(b + "ffn_up.bias", p.n_ff, &l.b_up, Split::kCols, f0, f1));
    }
    AIRLOCK_RETURN_IF_ERROR(get_bias(b + "ffn_down.bias", p.n_embd, &l.b_down, Split::kWhole, 0, 0));
  }
  if (rank_head_) used.insert("cls.output.weight");
  for (const GgufTensor& t : f.tensors())
    if (!used.contains(t.name))
      return invalid_argument("gguf: tensor '" + t.name + "' has no place in this engine's " + p.arch +
                              " pass; the file is refused rather than run without it");
  return Status::ok();
}

std::uint64_t Model::weight_bytes_per_token() const {
  return params_.tied_output ? weight_bytes_ : weight_bytes_ - embd_bytes_ + embd_row_bytes_;
}

Result<KvStorage> Model::alloc_kv(int n_blocks, KvType type) const {
  return backend_->alloc_kv(params_.n_layer, static_cast<std::int64_t>(n_blocks) * kBlockTokens,
                            static_cast<std::int64_t>(shard_.n_head_kv) * params_.head_dim, type);
}

std::uint64_t Model::kv_bytes_per_block(KvType type) const {
  return 2ULL * static_cast<std::uint64_t>(params_.n_layer) * kBlockTokens *
         static_cast<std::uint64_t>(shard_.n_head_kv) * static_cast<std::uint64_t>(params_.head_dim) *
         kv_type_bytes(type);
}

}  // namespace airlock::engine
