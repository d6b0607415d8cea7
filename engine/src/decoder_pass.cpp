#include "decoder_pass.h"

#include "airlock/engine/kv_cache.h"
#include "airlock/engine/model.h"

namespace airlock::engine {

Status decoder_hidden_pass(Model& model, std::span<const std::vector<std::int32_t>> seqs, bool all_rows,
                           std::vector<float>* hidden) {
  int n_blocks = 0;
  for (const std::vector<std::int32_t>& s : seqs) n_blocks += KvCache::blocks_for(static_cast<int>(s.size()));
  KvCache cache(n_blocks);
  AIRLOCK_ASSIGN_OR_RETURN(KvStorage kv, model.alloc_kv(n_blocks));
  Batch batch;
  for (std::size_t i = 0; i < seqs.size(); ++i) {
    const int seq = static_cast<int>(i);
    AIRLOCK_RETURN_IF_ERROR(cache.add_sequence(seq));
    for (std::size_t t = 0; t < seqs[i].size(); ++t)
      batch.add(seqs[i][t], static_cast<std::int32_t>(t), seq, all_rows || t + 1 == seqs[i].size());
  }
  PassOutput po;
  po.hidden = hidden;
  return model.forward(batch, cache, kv, po);
}

}  // namespace airlock::engine
