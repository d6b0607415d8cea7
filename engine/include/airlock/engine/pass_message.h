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
//             [2 * n_copies] (from, to), slots[n], n_ctx[n], table_of[n]
//             (which block table each token reads), table_len[n_tables],
//             then the tables, table_len[i] words each: a sequence's table
//             travels once however many of its tokens the pass holds;
//   kAllocKv: no payload (n_blocks and kv_type in the header);
//   kStop:    no payload.
//
// The words come from another machine: decode_pass() checks every count,
// every index against the follower's vocabulary, context length and KV
// storage, and the consistency of the parts (each token's context fits its
// table, its slot is its position's place in that table), before anything
// is built; a malformed message is kInvalidArgument naming what is wrong.
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
inline constexpr std::int32_t kMaxPassTokens = 1 << 22;
inline constexpr std::int32_t kMaxPassTableWords = 1 << 26;

enum class PassKind : std::int32_t { kPass = 1, kAllocKv = 2, kStop = 3 };

struct PassHeader {
  std::int32_t magic = kPassMagic;
  std::int32_t kind = 0;  // PassKind
  std::int32_t n_tokens = 0;
  std::int32_t n_out = 0;
  std::int32_t n_copies = 0;
  std::int32_t n_tables = 0;
  std::int32_t n_table_words = 0;
  std::int32_t n_blocks = 0;  // kAllocKv
  std::int32_t kv_type = 0;   // kAllocKv: KvType
};

// The header and payload of `batch` run with `plan` (what Model::commit
// made of it: tokens of one sequence share its table). kInvalidArgument
// when the pass exceeds the limits above (not for any pass a scheduler
// makes: those hold at most its running sequences' tables).
Result<std::vector<std::int32_t>> encode_pass(const Batch& batch, const PassPlan& plan, PassHeader* header);

// Words of payload `h` announces; kInvalidArgument for a header that is
// not one (magic, kind, counts out of range).
Result<std::size_t> payload_words(const PassHeader& h);

// What a follower's storage holds, to check a pass against.
struct PassLimits {
  std::int64_t n_vocab = 0;
  std::int64_t n_ctx = 0;     // the longest context a token may attend to (the model's)
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
