#include "airlock/engine/kv_cache.h"

#include <cstdlib>

namespace airlock::engine {

KvCache::KvCache(int n_blocks) : ref_(n_blocks, 0) {
  free_.reserve(n_blocks);
  // Hand out low block numbers first (a stack popped from the back).
  for (int b = n_blocks - 1; b >= 0; --b) free_.push_back(b);
}

int KvCache::take_block() {
  int b = free_.back();
  free_.pop_back();
  ref_[b] = 1;
  return b;
}

void KvCache::release_block(int block) {
  if (--ref_[block] == 0) free_.push_back(block);
}

Status KvCache::add_sequence(int seq_id) {
  if (!seqs_.emplace(seq_id, Sequence{}).second)
    return already_exists("sequence " + std::to_string(seq_id) + " already exists");
  return Status::ok();
}

Status KvCache::reserve(int seq_id, int n_new, std::vector<std::pair<int, int>>* copies) {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) return not_found("sequence " + std::to_string(seq_id) + " does not exist");
  if (n_new < 0) return invalid_argument("negative reservation");
  Sequence& s = it->second;
  int total = blocks_needed(seq_id, n_new);
  if (total > n_free_blocks())
    return resource_exhausted("KV cache full: sequence " + std::to_string(seq_id) + " needs " +
                              std::to_string(total) + " blocks, " + std::to_string(n_free_blocks()) + " free");
  // The partly filled last block is written too: copy it first if shared.
  bool cow = n_new > 0 && s.length % kBlockTokens != 0 && ref_[s.blocks.back()] > 1;
  int need = blocks_for(s.length + n_new) - static_cast<int>(s.blocks.size());
  if (cow) {
    int old = s.blocks.back();
    int fresh = take_block();
    release_block(old);
    s.blocks.back() = fresh;
    if (copies) copies->emplace_back(old, fresh);
  }
  for (int i = 0; i < need; ++i) s.blocks.push_back(take_block());
  s.length += n_new;
  return Status::ok();
}

int KvCache::blocks_needed(int seq_id, int n_new) const {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end() || n_new < 0) return -1;
  const Sequence& s = it->second;
  int need = blocks_for(s.length + n_new) - static_cast<int>(s.blocks.size());
  bool cow = n_new > 0 && s.length % kBlockTokens != 0 && ref_[s.blocks.back()] > 1;
  return need + (cow ? 1 : 0);
}

Status KvCache::truncate(int seq_id, int length) {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) return not_found("sequence " + std::to_string(seq_id) + " does not exist");
  Sequence& s = it->second;
  if (length < 0 || length > s.length) return invalid_argument("truncate beyond the sequence");
  int keep = blocks_for(length);
  while (static_cast<int>(s.blocks.size()) > keep) {
    release_block(s.blocks.back());
    s.blocks.pop_back();
  }
  s.length = length;
  return Status::ok();
}

Status KvCache::fork(int src_seq_id, int dst_seq_id) {
  auto src = seqs_.find(src_seq_id);
  if (src == seqs_.end()) return not_found("sequence " + std::to_string(src_seq_id) + " does not exist");
  if (seqs_.count(dst_seq_id)) return already_exists("sequence " + std::to_string(dst_seq_id) + " already exists");
  Sequence copy = src->second;
  for (int b : copy.blocks) ++ref_[b];
  seqs_.emplace(dst_seq_id, std::move(copy));
  return Status::ok();
}

void KvCache::remove_sequence(int seq_id) {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) return;
  for (int b : it->second.blocks) release_block(b);
  seqs_.erase(it);
}

int KvCache::length(int seq_id) const {
  auto it = seqs_.find(seq_id);
  return it == seqs_.end() ? 0 : it->second.length;
}

const std::vector<std::int32_t>& KvCache::block_table(int seq_id) const {
  static const std::vector<std::int32_t> kEmpty;
  auto it = seqs_.find(seq_id);
  return it == seqs_.end() ? kEmpty : it->second.blocks;
}

std::int32_t KvCache::slot(int seq_id, int pos) const {
  return block_table(seq_id)[pos / kBlockTokens] * kBlockTokens + pos % kBlockTokens;
}

}  // namespace airlock::engine
