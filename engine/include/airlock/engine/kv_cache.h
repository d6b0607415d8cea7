// The paged key/value cache: fixed-size blocks of kBlockTokens positions,
// a block table per sequence, reference-counted blocks so sequences can
// share a prefix (fork), and all-or-nothing admission.
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
#include <map>
#include <vector>

#include "airlock/common/status.h"

namespace airlock::engine {

inline constexpr int kBlockTokens = 16;

class KvCache {
 public:
  explicit KvCache(int n_blocks);

  int n_blocks() const { return static_cast<int>(ref_.size()); }
  int n_free_blocks() const { return static_cast<int>(free_.size()); }

  Status add_sequence(int seq_id);
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
  };
  int take_block();
  void release_block(int block);

  std::vector<int> ref_;
  std::vector<std::int32_t> free_;
  std::map<int, Sequence> seqs_;
};

}  // namespace airlock::engine
