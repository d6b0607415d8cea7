#include "airlock/engine/kv_cache.h"

#include <algorithm>
#include <cstdlib>
#include <random>

namespace airlock::engine {

KvCache::KvCache(int n_blocks) : ref_(n_blocks, 0), pub_(static_cast<std::size_t>(n_blocks)) {
  free_.reserve(n_blocks);
  // Hand out low block numbers first (a stack popped from the back).
  for (int b = n_blocks - 1; b >= 0; --b) free_.push_back(b);
  std::random_device rd;
  key_ = (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
}

int KvCache::take_block() {
  int b;
  if (!free_.empty()) {
    b = free_.back();
    free_.pop_back();
  } else {
    // Evict the least recently used cached prefix block.
    b = lru_.front();
    lru_.pop_front();
    unpublish(b);
  }
  ref_[b] = 1;
  // New contents: a published child that names this block as its parent
  // no longer matches, even if the block was never published itself.
  ++pub_[static_cast<std::size_t>(b)].generation;
  return b;
}

void KvCache::release_block(int block) {
  if (--ref_[block] != 0) return;
  Published& p = pub_[static_cast<std::size_t>(block)];
  if (p.published) p.lru = lru_.insert(lru_.end(), block);
  else free_.push_back(block);
}

void KvCache::unpublish(int block) {
  Published& p = pub_[static_cast<std::size_t>(block)];
  if (!p.published) return;
  auto it = index_.find(p.hash);
  if (it != index_.end() && it->second == block) index_.erase(it);
  p.published = false;
  p.tokens.clear();
  ++p.generation;  // children that name this block as parent no longer match
}

std::uint64_t KvCache::chain_hash(std::uint64_t prev, std::span<const std::int32_t> block_tokens) const {
  auto mix = [](std::uint64_t x) {  // splitmix64 finaliser
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
  };
  std::uint64_t h = mix(prev ^ key_);
  for (std::int32_t t : block_tokens) h = mix(h ^ static_cast<std::uint32_t>(t));
  return h;
}

int KvCache::attach_prefix(int seq_id, std::span<const std::int32_t> tokens, int max_blocks) {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end() || it->second.length != 0) return 0;
  Sequence& s = it->second;
  const int n = std::min(max_blocks, static_cast<int>(tokens.size()) / kBlockTokens);
  std::uint64_t chain = s.scope;
  int parent = -1;
  std::uint64_t parent_generation = 0;
  for (int b = 0; b < n; ++b) {
    std::span<const std::int32_t> bt = tokens.subspan(static_cast<std::size_t>(b) * kBlockTokens, kBlockTokens);
    const std::uint64_t h = chain_hash(chain, bt);
    auto hit = index_.find(h);
    if (hit == index_.end()) break;
    const int block = hit->second;
    const Published& p = pub_[static_cast<std::size_t>(block)];
    // Exact check: the hash only finds candidates.
    if (p.parent != parent || p.parent_generation != parent_generation || p.scope != s.scope ||
        !std::equal(bt.begin(), bt.end(), p.tokens.begin(), p.tokens.end()))
      break;
    if (ref_[block] == 0) lru_.erase(p.lru);
    ++ref_[block];
    s.blocks.push_back(block);
    chain = h;
    parent = block;
    parent_generation = p.generation;
  }
  s.n_published = static_cast<int>(s.blocks.size());
  s.chain = chain;
  s.length = s.n_published * kBlockTokens;
  return s.n_published;
}

void KvCache::publish(int seq_id, std::span<const std::int32_t> tokens) {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) return;
  Sequence& s = it->second;
  const int full = std::min(s.length, static_cast<int>(tokens.size())) / kBlockTokens;
  for (int b = s.n_published; b < full; ++b) {
    std::span<const std::int32_t> bt = tokens.subspan(static_cast<std::size_t>(b) * kBlockTokens, kBlockTokens);
    const std::uint64_t h = chain_hash(s.chain, bt);
    const int block = s.blocks[static_cast<std::size_t>(b)];
    Published& p = pub_[static_cast<std::size_t>(block)];
    if (!p.published && index_.find(h) == index_.end()) {
      p.published = true;
      p.hash = h;
      p.parent = b == 0 ? -1 : s.blocks[static_cast<std::size_t>(b) - 1];
      p.parent_generation = b == 0 ? 0 : pub_[static_cast<std::size_t>(p.parent)].generation;
      p.tokens.assign(bt.begin(), bt.end());
      p.scope = s.scope;
      index_.emplace(h, block);
    }
    s.chain = h;
    s.n_published = b + 1;
  }
}

Status KvCache::add_sequence(int seq_id, std::uint64_t scope) {
  Sequence s;
  s.scope = scope;
  s.chain = scope;
  if (!seqs_.emplace(seq_id, std::move(s)).second)
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
  // Room first: a block taken and then lost to a failed push_back
  // (bad_alloc) would never come back.
  s.blocks.reserve(s.blocks.size() + static_cast<std::size_t>(std::max(need, 0)));
  if (cow && copies) copies->reserve(copies->size() + 1);
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
  const int full = length / kBlockTokens;
  if (s.n_published > full) {
    // A kept block cut into will be written again: published, it could be
    // attached under its old tokens while it holds new ones. Held by this
    // sequence alone it stops being findable; shared, the next write copies
    // it (reserve) and the published block stays as it is.
    if (full < static_cast<int>(s.blocks.size()) && ref_[s.blocks[static_cast<std::size_t>(full)]] == 1)
      unpublish(s.blocks[static_cast<std::size_t>(full)]);
    s.n_published = 0;  // publish() recomputes the chain from the start
    s.chain = s.scope;
  }
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
  // Tail first: the least recently used end of the cache then holds chain
  // tails, and eviction takes them before the blocks they hang from (taking
  // a chain's first block strands all the others until they age out).
  const std::vector<std::int32_t>& blocks = it->second.blocks;
  for (auto b = blocks.rbegin(); b != blocks.rend(); ++b) release_block(*b);
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

Result<KvBudget> plan_kv_blocks(const KvBudgetInput& in) {
  if (in.bytes_per_block == 0) return invalid_argument("KV budget: a block of zero bytes");
  auto mib = [](std::uint64_t b) { return std::to_string(b >> 20) + " MiB"; };
  std::uint64_t bytes = in.configured_bytes != 0 ? in.configured_bytes : in.host_auto_bytes;
  std::string why = in.configured_bytes != 0 ? "kv_cache_mib" : "the host default (" + mib(in.host_auto_bytes) + ")";
  if (in.device_free) {
    const std::uint64_t avail = *in.device_free > in.device_reserve ? *in.device_free - in.device_reserve : 0;
    if (avail < in.bytes_per_block)
      return resource_exhausted("KV cache: the device has " + mib(*in.device_free) + " free after the weights and " +
                                mib(in.device_reserve) + " must stay free; one block needs " +
                                std::to_string(in.bytes_per_block) + " bytes");
    if (in.configured_bytes == 0 || avail < in.configured_bytes) {
      bytes = avail;
      why = "free device memory (" + mib(*in.device_free) + " after the weights, less " + mib(in.device_reserve) +
            " reserved)";
    }
  }
  std::uint64_t blocks = bytes / in.bytes_per_block;
  if (blocks < 1)
    return resource_exhausted("KV cache: " + mib(bytes) + " is too small for one block of " +
                              std::to_string(in.bytes_per_block) + " bytes");
  const std::uint64_t useful = static_cast<std::uint64_t>(std::max(1, in.max_running)) *
                               static_cast<std::uint64_t>(std::max(1, in.blocks_per_sequence));
  if (useful < blocks) {
    blocks = useful;
    why = "max_running (" + std::to_string(in.max_running) + ") full-context sequences";
  }
  constexpr std::uint64_t kMaxBlocks = 1u << 24;  // block ids stay far inside int32
  if (kMaxBlocks < blocks) {
    blocks = kMaxBlocks;
    why = "the block table's limit";
  }
  return KvBudget{static_cast<int>(blocks), why};
}

}  // namespace airlock::engine
