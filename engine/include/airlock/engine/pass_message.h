// A pass's description as the process holding rank 0 of a tensor-parallel
// group spread over several processes (machines) hands it to the others:
// TensorParallelDecoder sends, TensorParallelFollower receives (decoder.h),
// through Communicator::broadcast. The others hold no KV cache bookkeeping
// of their own: they run each pass as rank 0's process planned it.
//
// Format: int32 words, host byte order (every process of a group runs the
// same build on the same kind of machine). A fixed PassHeader, then the
// payload whose length the header gives:
//   kPass:    tokens[n], positions[n], want_logits[n] (0 or 1), copies
//             [2 * n_copies] (from, to), slots[n], n_ctx[n], then each
//             token's block table, blocks_for(n_ctx[t]) words each;
//   kAllocKv: no payload (n_blocks and kv_type in the header);
//   kStop:    no payload.
//
// The words come from another machine: decode_pass() checks every count,
// every index against the follower's vocabulary and KV storage, and the
// consistency of the parts, before anything is built; a malformed message
// is kInvalidArgument naming what is wrong.
//
// Thread-safety: pure functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "airlock/common/status.h"
#include "airlock/engine/model.h"

namespace airlock::engine {

inline constexpr std::int32_t kPassMagic = 0x50524941;  // "AIRP"
inline constexpr std::int32_t kMaxPassTokens = 1 << 20;
inline constexpr std::int32_t kMaxPassTableWords = 1 << 26;

enum class PassKind : std::int32_t { kPass = 1, kAllocKv = 2, kStop = 3 };

struct PassHeader {
  std::int32_t magic = kPassMagic;
  std::int32_t kind = 0;  // PassKind
  std::int32_t n_tokens = 0;
  std::int32_t n_out = 0;
  std::int32_t n_copies = 0;
  std::int32_t n_table_words = 0;
  std::int32_t n_blocks = 0;  // kAllocKv
  std::int32_t kv_type = 0;   // kAllocKv: KvType
};

// The header and payload of `batch` run with `plan` (what Model::commit
// made of it). kInvalidArgument when the pass exceeds the limits above.
Result<std::vector<std::int32_t>> encode_pass(const Batch& batch, const PassPlan& plan, PassHeader* header);

// Words of payload `h` announces; kInvalidArgument for a header that is
// not one (magic, kind, counts out of range).
Result<std::size_t> payload_words(const PassHeader& h);

// What a follower's storage holds, to check a pass against.
struct PassLimits {
  std::int64_t n_vocab = 0;
  std::int64_t n_blocks = 0;  // KV blocks allocated (kAllocKv)
};

// A received pass: its batch and plan (whose tables point into `tables`:
// keep the DecodedPass while the plan is used; moving it keeps them valid).
struct DecodedPass {
  Batch batch;
  PassPlan plan;
  std::vector<std::int32_t> tables;
};

Status decode_pass(const PassHeader& h, std::span<const std::int32_t> payload, const PassLimits& limits,
                   DecodedPass* out);

}  // namespace airlock::engine
