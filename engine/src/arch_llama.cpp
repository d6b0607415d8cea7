// The Llama family forward pass (llama, qwen2, qwen3, phi3, granite, and
// the Gemma family's variations on it: gemma, gemma2, gemma3), written against the
// backend operations only.
#include <algorithm>
#include <cmath>
#include <map>

#include "model_internal.h"

namespace airlock::engine {

std::uint64_t Model::scratch_bytes(std::int64_t n_tokens, std::int64_t n_logits) const {
  // activations(): x, h, o (n_embd); q, att (query heads); k, v
  // (key/value heads); gate, up (feed-forward); logits.
  const std::int64_t q_dim = static_cast<std::int64_t>(shard_.n_head) * params_.head_dim,
                     kv_dim = static_cast<std::int64_t>(shard_.n_head_kv) * params_.head_dim;
  const std::int64_t per_token = 3 * params_.n_embd + 2 * q_dim + 2 * kv_dim + 2 * static_cast<std::int64_t>(shard_.n_ff);
  return static_cast<std::uint64_t>(n_tokens * per_token + n_logits * params_.n_vocab) * sizeof(float);
}

Status Model::usable() const {
  if (group_failure_.is_ok()) return Status::ok();
  return unavailable("tensor-parallel rank " + std::to_string(tp_.rank) + " is unusable after a failed pass (" +
                     group_failure_.to_string() + "); load the model again");
}

Status Model::forward(const Batch& batch, KvCache& cache, const KvStorage& kv, std::vector<float>* logits) {
  PassOutput out;
  out.logits = logits;
  return forward(batch, cache, kv, out);
}

Status Model::check_output(const PassOutput& out, std::int64_t n_out) {
  if (out.hidden != nullptr && (out.tokens != nullptr || out.logits != nullptr))
    return invalid_argument("forward: hidden states are asked for instead of logits or tokens, not with them");
  if (out.tokens != nullptr && static_cast<std::int64_t>(out.rows.size()) != n_out)
    return invalid_argument("forward: " + std::to_string(out.rows.size()) + " sampling rows for " +
                            std::to_string(n_out) + " tokens that want logits");
  return Status::ok();
}

Status Model::forward(const Batch& batch, KvCache& cache, const KvStorage& kv, const PassOutput& out) {
  AIRLOCK_RETURN_IF_ERROR(usable());
  // check() and commit() fail alike on every rank of a tensor-parallel
  // group; prepare() and compute() may fail on one rank only, which must
  // then abort the group (the others may be waiting in a collective).
  AIRLOCK_ASSIGN_OR_RETURN(const std::int64_t n_out, check(batch, cache));
  AIRLOCK_RETURN_IF_ERROR(check_output(out, n_out));
  // Buffers before the cache: a failed allocation leaves the cache untouched.
  // (hidden states need no logits buffer: n_vocab floats a row)
  Status s = prepare(static_cast<std::int64_t>(batch.size()), out.hidden != nullptr ? 0 : n_out);
  if (s.is_ok()) {
    AIRLOCK_ASSIGN_OR_RETURN(PassPlan plan, commit(batch, cache));
    s = compute(batch, plan, kv, out);
  }
  if (!s.is_ok()) fail_group(s);
  return s;
}

void Model::fail_group(const Status& s) {
  if (tp_.n_ranks == 1) return;
  tp_.comm->abort(s);
  if (group_failure_.is_ok()) group_failure_ = s;
}

Result<std::int64_t> Model::check(const Batch& batch, const KvCache& cache) const {
  const ModelParams& p = params_;
  const std::int64_t n = static_cast<std::int64_t>(batch.size());
  if (n == 0) return invalid_argument("empty batch");
  if (batch.positions.size() != batch.tokens.size() || batch.seq_ids.size() != batch.tokens.size() ||
      batch.want_logits.size() != batch.tokens.size())
    return invalid_argument("batch vectors differ in length");

  // Each sequence's tokens must continue it, in order.
  std::map<int, int> next_pos, n_new;
  std::int64_t n_out = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const int seq = batch.seq_ids[i];
    if (batch.tokens[i] < 0 || batch.tokens[i] >= p.n_vocab)
      return invalid_argument("token id " + std::to_string(batch.tokens[i]) + " is outside the vocabulary");
    if (!cache.has_sequence(seq)) return invalid_argument("sequence " + std::to_string(seq) + " is not in the cache");
    auto it = next_pos.find(seq);
    const int expected = it == next_pos.end() ? cache.length(seq) : it->second;
    if (batch.positions[i] != expected)
      return invalid_argument("sequence " + std::to_string(seq) + ": position " + std::to_string(batch.positions[i]) +
                              " given, " + std::to_string(expected) + " expected");
    if (expected + 1 > p.n_ctx_train)
      return invalid_argument("sequence " + std::to_string(seq) + " exceeds the context length " +
                              std::to_string(p.n_ctx_train));
    next_pos[seq] = expected + 1;
    ++n_new[seq];
    n_out += batch.want_logits[i] ? 1 : 0;
  }
  // All or nothing: the whole batch must fit before the cache is touched.
  int blocks = 0;
  for (auto [seq, count] : n_new) blocks += cache.blocks_needed(seq, count);
  if (blocks > cache.n_free_blocks())
    return resource_exhausted("KV cache full: the batch needs " + std::to_string(blocks) + " blocks, " +
                              std::to_string(cache.n_free_blocks()) + " free");
  return n_out;
}

Result<PassPlan> Model::commit(const Batch& batch, KvCache& cache) {
  const std::int64_t n = static_cast<std::int64_t>(batch.size());
  PassPlan plan;
  std::map<int, int> n_new;  // in sequence order, as check() counted
  for (std::int64_t i = 0; i < n; ++i) {
    ++n_new[batch.seq_ids[i]];
    plan.n_out += batch.want_logits[i] ? 1 : 0;
  }
  for (auto [seq, count] : n_new) {
    std::vector<std::pair<int, int>> copies;
    AIRLOCK_RETURN_IF_ERROR(cache.reserve(seq, count, &copies));
    plan.copies.insert(plan.copies.end(), copies.begin(), copies.end());
  }
  plan.slots.resize(static_cast<std::size_t>(n));
  plan.n_ctx.resize(static_cast<std::size_t>(n));
  plan.tables.resize(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    plan.slots[i] = cache.slot(batch.seq_ids[i], batch.positions[i]);
    plan.n_ctx[i] = batch.positions[i] + 1;
    plan.tables[i] = cache.block_table(batch.seq_ids[i]).data();
  }
  return plan;
}

Result<Model::Activations> Model::activations(std::int64_t n, std::int64_t n_out) {
  const ModelParams& p = params_;
  const std::int64_t d = p.n_embd, q_dim = static_cast<std::int64_t>(shard_.n_head) * p.head_dim,
                     kv_dim = static_cast<std::int64_t>(shard_.n_head_kv) * p.head_dim, n_ff = shard_.n_ff;
  // Activations live in scratch buffers kept across calls (grown, never
  // shrunk), so steady-state decoding allocates nothing. scratch_bytes()
  // counts these.
  int slot_index = 0;
  auto buffer = [&](std::int64_t count) -> Result<float*> {
    const int slot = slot_index++;
    if (scratch_.size() <= static_cast<std::size_t>(slot)) scratch_.resize(static_cast<std::size_t>(slot) + 1);
    Scratch& sc = scratch_[slot];
    if (sc.n_floats < count) {
      sc.data.reset();  // the old buffer's room first
      sc.n_floats = 0;
      AIRLOCK_ASSIGN_OR_RETURN(sc.data, backend_->alloc(count));
      sc.n_floats = count;
    }
    return sc.data.get();
  };
  Activations a;
  AIRLOCK_ASSIGN_OR_RETURN(a.x, buffer(n * d));        // (n, d) residual stream
  AIRLOCK_ASSIGN_OR_RETURN(a.h, buffer(n * d));        // (n, d) normalised
  AIRLOCK_ASSIGN_OR_RETURN(a.q, buffer(n * q_dim));    // (n, n_head * head_dim)
  AIRLOCK_ASSIGN_OR_RETURN(a.k, buffer(n * kv_dim));   // (n, n_head_kv * head_dim)
  AIRLOCK_ASSIGN_OR_RETURN(a.v, buffer(n * kv_dim));
  AIRLOCK_ASSIGN_OR_RETURN(a.att, buffer(n * q_dim));  // (n, n_head * head_dim)
  AIRLOCK_ASSIGN_OR_RETURN(a.o, buffer(n * d));        // (n, d)
  AIRLOCK_ASSIGN_OR_RETURN(a.gate, buffer(n * n_ff));  // (n, n_ff)
  AIRLOCK_ASSIGN_OR_RETURN(a.up, buffer(n * n_ff));
  AIRLOCK_ASSIGN_OR_RETURN(a.out, buffer(n_out * p.n_vocab));  // (n_out, n_vocab)
  return a;
}

Status Model::prepare(std::int64_t n_tokens, std::int64_t n_out) {
  AIRLOCK_RETURN_IF_ERROR(usable());
  AIRLOCK_RETURN_IF_ERROR(activations(n_tokens, n_out).status());
  Backend::PassShape shape;
  shape.n_tokens = n_tokens;
  shape.n_head = shard_.n_head;
  shape.head_dim = params_.head_dim;
  shape.max_row = std::max<std::int64_t>({params_.n_embd, static_cast<std::int64_t>(shard_.n_head) * params_.head_dim,
                                          shard_.n_ff});
  shape.max_blocks = KvCache::blocks_for(params_.n_ctx_train);
  shape.n_out = n_out;
  shape.n_vocab = params_.n_vocab;
  return backend_->reserve_pass(shape);
}

Status Model::compute(const Batch& batch, const PassPlan& plan, const KvStorage& kv, const PassOutput& pass_out) {
  AIRLOCK_RETURN_IF_ERROR(usable());
  const ModelParams& p = params_;
  const std::int64_t n = static_cast<std::int64_t>(batch.size()), n_out = plan.n_out;
  Backend& be = *backend_;
  // This rank's heads and feed-forward columns (all of them with one rank).
  const int n_head = shard_.n_head, n_head_kv = shard_.n_head_kv;
  const std::int64_t d = p.n_embd, q_dim = static_cast<std::int64_t>(n_head) * p.head_dim,
                     kv_dim = static_cast<std::int64_t>(n_head_kv) * p.head_dim, n_ff = shard_.n_ff;
  // (allocates nothing after prepare(); no logits rows for hidden states)
  AIRLOCK_ASSIGN_OR_RETURN(const Activations act, activations(n, pass_out.hidden != nullptr ? 0 : n_out));
  float *x = act.x, *h = act.h, *q = act.q, *k = act.k, *v = act.v, *att = act.att, *o = act.o, *gate = act.gate,
        *up = act.up, *out = act.out;
  for (auto [from, to] : plan.copies) be.kv_copy_blocks(kv, from, to);
  const std::vector<std::int32_t>& slots = plan.slots;
  // A decode step of one model on one device (every token wants logits)
  // runs the same operations on the same buffers for the same n_tokens:
  // the backend may replay it (Backend::PassInfo).
  Backend::PassInfo info;
  info.n_tokens = n;
  for (std::int32_t c : plan.n_ctx) info.max_ctx = std::max(info.max_ctx, c);
  info.replayable = tp_.n_ranks == 1 && n_out == n && (pass_out.logits != nullptr || pass_out.tokens != nullptr);  // (not hidden)
  info.kv = &kv;
  // Only the rows that want logits go through the output matrix.
  std::vector<std::int64_t> rows;
  for (std::int64_t i = 0; i < n; ++i)
    if (batch.want_logits[i]) rows.push_back(i);
  const std::int64_t m = static_cast<std::int64_t>(rows.size());
  const bool want_tokens = pass_out.tokens != nullptr, want_logits = !want_tokens && pass_out.logits != nullptr;
  const bool want_hidden = pass_out.hidden != nullptr;  // (check_output: alone)

  // The pass's operations, up to the logits (issued again, eagerly, when a
  // backend could not capture or replay them: Backend::end_pass).
  auto issue = [&]() -> Status {
    be.get_rows(tok_embd_, batch.tokens.data(), n, x);
    if (p.embd_scale != 1.0f) be.scale(x, n * d, p.embd_scale);
    AttentionArgs aa;
    aa.q = q;
    aa.out = att;
    aa.n_tokens = n;
    aa.n_head = n_head;
    aa.n_kv_head = n_head_kv;
    aa.head_dim = p.head_dim;
    aa.scale = p.attn_scale;
    aa.softcap = p.attn_softcap;
    aa.kv = &kv;
    aa.n_ctx = plan.n_ctx.data();
    aa.block_table = plan.tables.data();
    for (int il = 0; il < p.n_layer; ++il) {
      const Layer& l = layers_[il];
      be.rms_norm(x, l.attn_norm, n, d, p.rms_eps, h);
      {
        const WeightTensor* w[3] = {&l.wq, &l.wk, &l.wv};
        float* y[3] = {q, k, v};
        be.matmul_many(w, y, 3, h, n);
      }
      if (present(l.bq)) be.add_bias(q, l.bq, n, q_dim);
      if (present(l.bk)) be.add_bias(k, l.bk, n, kv_dim);
      if (present(l.bv)) be.add_bias(v, l.bv, n, kv_dim);
      if (p.qk_norm) {  // qwen3: RMSNorm over each head before rotation
        be.rms_norm(q, l.q_norm, n * n_head, p.head_dim, p.rms_eps, q);
        be.rms_norm(k, l.k_norm, n * n_head_kv, p.head_dim, p.rms_eps, k);
      }
      const bool swa = p.is_swa_layer(il);  // a sliding-window layer (gemma2, gemma3)
      const RopeParams& rope = swa ? p.rope_swa : p.rope;
      if (p.use_rope) {
        be.rope(q, n, n_head, p.head_dim, batch.positions.data(), rope);
        be.rope(k, n, n_head_kv, p.head_dim, batch.positions.data(), rope);
      }
      be.kv_write(kv, il, k, v, n, slots.data());
      aa.layer = il;
      aa.window = swa ? p.swa_window : 0;
      be.attention(aa);
      be.matmul(l.wo, att, n, o);
      if (tp_.n_ranks > 1) AIRLOCK_RETURN_IF_ERROR(tp_.comm->all_reduce_sum(o, n * d));  // the heads' partial sums
      if (present(l.bo)) be.add_bias(o, l.bo, n, d);
      if (p.post_norms) be.rms_norm(o, l.post_attn_norm, n, d, p.rms_eps, o);
      if (p.residual_scale != 1.0f) be.scale(o, n * d, p.residual_scale);
      be.add(x, o, n * d);

      be.rms_norm(x, l.ffn_norm, n, d, p.rms_eps, h);
      {
        const WeightTensor* w[2] = {&l.w_gate, &l.w_up};
        float* y[2] = {gate, up};
        be.matmul_many(w, y, 2, h, n);
      }
      if (present(l.b_gate)) be.add_bias(gate, l.b_gate, n, n_ff);
      if (present(l.b_up)) be.add_bias(up, l.b_up, n, n_ff);
      if (p.gelu_ffn) be.geglu(gate, up, n * n_ff, gate);
      else be.swiglu(gate, up, n * n_ff, gate);
      be.matmul(l.w_down, gate, n, o);
      if (tp_.n_ranks > 1) AIRLOCK_RETURN_IF_ERROR(tp_.comm->all_reduce_sum(o, n * d));  // the columns' partial sums
      if (present(l.b_down)) be.add_bias(o, l.b_down, n, d);
      if (p.post_norms) be.rms_norm(o, l.post_ffn_norm, n, d, p.rms_eps, o);
      if (p.residual_scale != 1.0f) be.scale(o, n * d, p.residual_scale);
      be.add(x, o, n * d);
    }

    if (m > 0 && (want_tokens || want_logits || want_hidden)) {
      be.gather_rows(x, rows.data(), m, d, x);
      be.rms_norm(x, output_norm_, m, d, p.rms_eps, h);
      if (want_hidden) return Status::ok();
      be.matmul(output_, h, m, out);
      if (p.final_softcap > 0) be.softcap(out, m * p.n_vocab, p.final_softcap);
      if (p.logit_scale != 1.0f) be.scale(out, m * p.n_vocab, 1.0f / p.logit_scale);
    }
    return Status::ok();
  };
  be.begin_pass(info);
  Status issued = issue();
  if (!be.end_pass()) {  // nothing of it ran
    info.replayable = false;
    be.begin_pass(info);
    if (issued.is_ok()) issued = issue();
    (void)be.end_pass();  // an eager pass always runs
  }
  AIRLOCK_RETURN_IF_ERROR(issued);

  if (want_tokens) pass_out.tokens->clear();
  if (want_logits) pass_out.logits->assign(static_cast<std::size_t>(n_out * p.n_vocab), 0.0f);
  if (want_hidden) {
    pass_out.hidden->assign(static_cast<std::size_t>(n_out * d), 0.0f);
    if (m > 0) be.download(h, m * d, pass_out.hidden->data());
  }
  if (m > 0 && (want_tokens || want_logits)) {
    if (want_logits) be.download(out, m * p.n_vocab, pass_out.logits->data());
    else AIRLOCK_RETURN_IF_ERROR(be.sample(out, p.n_vocab, pass_out.rows, pass_out.tokens));
  }
  // A device fault anywhere in the pass fails it (the cache was extended:
  // the caller drops the sequences, as after any failed pass).
  return be.take_error();
}

}  // namespace airlock::engine
