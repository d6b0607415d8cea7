#include "decoder_pass.h"

#include <algorithm>

#include "airlock/engine/model.h"

namespace airlock::engine {

Status decoder_hidden_pass(Model& model, std::span<const std::vector<std::int32_t>> seqs, bool all_rows,
                           KvType kv_type, std::vector<float>* hidden) {
  std::int64_t n_slots = 0;
  for (const std::vector<std::int32_t>& s : seqs) n_slots += decoder_pass_slots(s.size());
  const int n_blocks = static_cast<int>(n_slots / kBlockTokens);
  KvCache cache(n_blocks);
  AIRLOCK_ASSIGN_OR_RETURN(KvStorage kv, model.alloc_kv(n_blocks, kv_type));
  for (std::size_t i = 0; i < seqs.size(); ++i) AIRLOCK_RETURN_IF_ERROR(cache.add_sequence(static_cast<int>(i)));
  // Chunks of the sequences' tokens in order: each chunk's rows follow the
  // previous chunk's, so *hidden comes out in the same order as one
  // forward() over everything would give it.
  hidden->clear();
  std::vector<float> rows;
  PassOutput po;
  po.hidden = &rows;
  Batch batch;
  for (std::size_t i = 0; i < seqs.size(); ++i) {
    for (std::size_t t = 0; t < seqs[i].size(); ++t) {
      batch.add(seqs[i][t], static_cast<std::int32_t>(t), static_cast<int>(i), all_rows || t + 1 == seqs[i].size());
      const bool last = i + 1 == seqs.size() && t + 1 == seqs[i].size();
      if (static_cast<std::int64_t>(batch.size()) == kDecoderPassSlots || last) {
        AIRLOCK_RETURN_IF_ERROR(model.forward(batch, cache, kv, po));
        hidden->insert(hidden->end(), rows.begin(), rows.end());
        batch.clear();
      }
    }
  }
  return Status::ok();
}

std::uint64_t decoder_pass_bytes(const Model& model, std::size_t max_tokens, bool all_rows, KvType kv_type) {
  const std::int64_t slots = std::max(kDecoderPassSlots, decoder_pass_slots(max_tokens));
  const std::int64_t rows = all_rows ? slots : slots / kBlockTokens;  // at most one sequence a block
  return static_cast<std::uint64_t>(slots / kBlockTokens) * model.kv_bytes_per_block(kv_type) +
         model.scratch_bytes(kDecoderPassSlots, 0) +
         static_cast<std::uint64_t>(rows) * static_cast<std::uint64_t>(model.params().n_embd) * sizeof(float);
}

}  // namespace airlock::engine
