// The paged key/value cache: fixed-size blocks of kBlockTokens positions,
// a block table per sequence, reference-counted blocks so sequences can
// share a prefix (fork), and all-or-nothing admission.
//
// Prefix caching: publish() makes a sequence's full blocks findable by
// their tokens and everything before them; attach_prefix() gives a new
// sequence the longest published chain that starts its prompt, so those
// positions are not computed again. A published block whose last user goes
// away is kept (evictable, least recently used first) until its space is
// needed; n_free_blocks() counts it as free. Lookups hash the tokens (with a
// per-cache random key) and then compare the block's tokens and its parent
// block (the first block: its scope) exactly, so a hash collision can never
// attach another prompt's keys and values, nor another scope's.
//
// KvCache does the bookkeeping only (which block holds which positions of
// which sequence); the key/value numbers live in storage the backend
// allocates (KvStorage), so the same cache logic serves CPU and GPU.
//
// Errors: reserve() returns kResourceExhausted, changing nothing, when the
// free blocks cannot hold the new positions; kNotFound / kAlreadyExists /
// kInvalidArgument for unknown, duplicate or malformed sequence requests.
//
// Thread-safety: not thread-safe; the scheduler owns it.
#pragma once

#include <cstdint>
#include <list>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "airlock/common/status.h"

namespace airlock::engine {

inline constexpr int kBlockTokens = 16;

// How many KV blocks a server should allocate. On the host the budget is
// the configured size; on a device it is what is free after the weights,
// less a reserve (the forward pass's activations, library workspaces, the
// CUDA context's growth), and never more than the configured size if one is
// set. Neither is worth more than max_running full-context sequences.
struct KvBudgetInput {
  std::uint64_t bytes_per_block = 0;      // Model::kv_bytes_per_block
  std::uint64_t configured_bytes = 0;     // 0: "auto"
  std::uint64_t host_auto_bytes = 1u << 30;  // "auto" without a device
  std::optional<std::uint64_t> device_free;  // free device memory after the weights; nullopt on the host
  std::uint64_t device_reserve = 0;       // kept free on the device
  int max_running = 1;                    // concurrent sequences
  int blocks_per_sequence = 1;            // blocks of one full-context sequence
};
struct KvBudget {
  int blocks = 0;
  std::string limited_by;  // what set the number, for the logs
};
// kResourceExhausted, with the numbers, when not even one block fits;
// kInvalidArgument for a zero block size.
Result<KvBudget> plan_kv_blocks(const KvBudgetInput& in);

class KvCache {
 public:
  explicit KvCache(int n_blocks);
  int n_blocks() const { return static_cast<int>(ref_.size()); }
  // Unused blocks, including published ones kept for prefix reuse.
  int n_free_blocks() const { return static_cast<int>(free_.size() + lru_.size()); }
  // Published blocks no sequence uses (evictable).
  int n_cached_blocks() const { return static_cast<int>(lru_.size()); }

  // Attaches to the empty sequence `seq_id` the longest chain of published
  // blocks matching `tokens` block by block, at most `max_blocks` of them;
  // returns how many (its length becomes that many times kBlockTokens).
  int attach_prefix(int seq_id, std::span<const std::int32_t> tokens, int max_blocks);
  // Publishes every full block of `seq_id` not yet published; `tokens` holds
  // at least the sequence's tokens (positions 0..length-1).
  void publish(int seq_id, std::span<const std::int32_t> tokens);

  // `scope`: prefix-cache blocks are shared only between sequences of the
  // same scope (airlockd gives each API key its own, so that one client
  // cannot learn from cache hits what another sent).
  Status add_sequence(int seq_id, std::uint64_t scope = 0);
  // Makes room for positions [length, length + n_new) of `seq_id` and
  // advances its length. A block shared with another sequence (after fork)
  // is copied before it is written: `copies` receives (from, to) block pairs
  // the caller must copy in storage first.
  Status reserve(int seq_id, int n_new, std::vector<std::pair<int, int>>* copies);
  // Blocks reserve(seq_id, n_new) would take from the free list (including a
  // copy-on-write of a shared last block); -1 for an unknown sequence.
  int blocks_needed(int seq_id, int n_new) const;
  // Shortens a sequence to `length` positions, freeing whole blocks.
  Status truncate(int seq_id, int length);
  // dst shares every block of src (reference counts rise); dst must not exist.
  Status fork(int src_seq_id, int dst_seq_id);
  void remove_sequence(int seq_id);

  bool has_sequence(int seq_id) const { return seqs_.count(seq_id) > 0; }
  int length(int seq_id) const;
  const std::vector<std::int32_t>& block_table(int seq_id) const;
  // Storage slot of position `pos` of a sequence: block * kBlockTokens + offset.
  std::int32_t slot(int seq_id, int pos) const;
  // Blocks needed to hold n positions.
  static int blocks_for(int n_positions) { return (n_positions + kBlockTokens - 1) / kBlockTokens; }
  int ref_count(int block) const { return ref_[block]; }

 private:
  struct Sequence {
    std::vector<std::int32_t> blocks;
    int length = 0;
    int n_published = 0;      // leading blocks whose hash chain is known
    std::uint64_t chain = 0;  // hash of blocks [0, n_published) (the scope before the first)
    std::uint64_t scope = 0;
  };
  struct Published {
    bool published = false;
    std::uint64_t hash = 0;
    int parent = -1;  // the block before it in its chain (-1: first)
    std::uint64_t parent_generation = 0;
    std::uint64_t generation = 0;  // bumped whenever the block is unpublished
    std::vector<std::int32_t> tokens;
    std::uint64_t scope = 0;       // of the sequence that published it
    std::list<int>::iterator lru;  // valid while ref_ == 0
  };
  int take_block();
  void release_block(int block);
  void unpublish(int block);
  std::uint64_t chain_hash(std::uint64_t prev, std::span<const std::int32_t> block_tokens) const;

  std::vector<int> ref_;
  std::vector<std::int32_t> free_;
  std::map<int, Sequence> seqs_;
  std::vector<Published> pub_;
  std::unordered_map<std::uint64_t, int> index_;  // chain hash -> block
  std::list<int> lru_;                            // published blocks with ref 0, oldest first
  std::uint64_t key_ = 0;
};

}  // namespace airlock::engine
