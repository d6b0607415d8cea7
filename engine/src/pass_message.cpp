#include "airlock/engine/pass_message.h"

#include <string>

namespace airlock::engine {
namespace {

Status bad(const std::string& what) { return invalid_argument("pass message: " + what); }

std::int64_t table_len(std::int32_t n_ctx) { return KvCache::blocks_for(n_ctx); }

}  // namespace

Result<std::vector<std::int32_t>> encode_pass(const Batch& batch, const PassPlan& plan, PassHeader* header) {
  const std::size_t n = batch.size();
  if (n > static_cast<std::size_t>(kMaxPassTokens) || plan.slots.size() != n || plan.n_ctx.size() != n ||
      plan.tables.size() != n)
    return bad("a pass of " + std::to_string(n) + " tokens cannot be sent");
  std::int64_t table_words = 0;
  for (std::int32_t c : plan.n_ctx) table_words += table_len(c);
  if (table_words > kMaxPassTableWords || plan.copies.size() > static_cast<std::size_t>(kMaxPassTokens))
    return bad("block tables of " + std::to_string(table_words) + " entries cannot be sent");
  *header = PassHeader{};
  header->kind = static_cast<std::int32_t>(PassKind::kPass);
  header->n_tokens = static_cast<std::int32_t>(n);
  header->n_out = static_cast<std::int32_t>(plan.n_out);
  header->n_copies = static_cast<std::int32_t>(plan.copies.size());
  header->n_table_words = static_cast<std::int32_t>(table_words);
  std::vector<std::int32_t> w;
  w.reserve(5 * n + 2 * plan.copies.size() + static_cast<std::size_t>(table_words));
  w.insert(w.end(), batch.tokens.begin(), batch.tokens.end());
  w.insert(w.end(), batch.positions.begin(), batch.positions.end());
  for (char c : batch.want_logits) w.push_back(c != 0 ? 1 : 0);
  for (auto [from, to] : plan.copies) {
    w.push_back(from);
    w.push_back(to);
  }
  w.insert(w.end(), plan.slots.begin(), plan.slots.end());
  w.insert(w.end(), plan.n_ctx.begin(), plan.n_ctx.end());
  for (std::size_t t = 0; t < n; ++t) w.insert(w.end(), plan.tables[t], plan.tables[t] + table_len(plan.n_ctx[t]));
  return w;
}

Result<std::size_t> payload_words(const PassHeader& h) {
  if (h.magic != kPassMagic) return bad("not a pass message (magic " + std::to_string(h.magic) + ")");
  switch (static_cast<PassKind>(h.kind)) {
    case PassKind::kStop:
      return std::size_t{0};
    case PassKind::kAllocKv:
      if (h.n_blocks < 1 || (h.kv_type != static_cast<std::int32_t>(KvType::kF32) &&
                             h.kv_type != static_cast<std::int32_t>(KvType::kF16)))
        return bad("KV allocation of " + std::to_string(h.n_blocks) + " blocks of type " + std::to_string(h.kv_type));
      return std::size_t{0};
    case PassKind::kPass:
      break;
    default:
      return bad("unknown kind " + std::to_string(h.kind));
  }
  if (h.n_tokens < 0 || h.n_tokens > kMaxPassTokens || h.n_out < 0 || h.n_out > h.n_tokens || h.n_copies < 0 ||
      h.n_copies > kMaxPassTokens || h.n_table_words < 0 || h.n_table_words > kMaxPassTableWords)
    return bad("counts out of range (" + std::to_string(h.n_tokens) + " tokens, " + std::to_string(h.n_out) +
               " with logits, " + std::to_string(h.n_copies) + " copies, " + std::to_string(h.n_table_words) +
               " table entries)");
  return 5 * static_cast<std::size_t>(h.n_tokens) + 2 * static_cast<std::size_t>(h.n_copies) +
         static_cast<std::size_t>(h.n_table_words);
}

Status decode_pass(const PassHeader& h, std::span<const std::int32_t> payload, const PassLimits& limits,
                   DecodedPass* out) {
  AIRLOCK_ASSIGN_OR_RETURN(const std::size_t words, payload_words(h));
  if (h.kind != static_cast<std::int32_t>(PassKind::kPass)) return bad("not a pass");
  if (payload.size() != words)
    return bad(std::to_string(payload.size()) + " words where the header announces " + std::to_string(words));
  const std::size_t n = static_cast<std::size_t>(h.n_tokens), c = static_cast<std::size_t>(h.n_copies);
  const std::int32_t* tokens = payload.data();
  const std::int32_t* positions = tokens + n;
  const std::int32_t* want = positions + n;
  const std::int32_t* copies = want + n;
  const std::int32_t* slots = copies + 2 * c;
  const std::int32_t* n_ctx = slots + n;
  const std::int32_t* tables = n_ctx + n;
  const std::int64_t n_slots = limits.n_blocks * kBlockTokens;
  std::int64_t n_want = 0, table_words = 0;
  for (std::size_t t = 0; t < n; ++t) {
    const std::string at = " of token " + std::to_string(t);
    if (tokens[t] < 0 || tokens[t] >= limits.n_vocab) return bad("token id " + std::to_string(tokens[t]) + at);
    if (want[t] != 0 && want[t] != 1) return bad("logits flag " + std::to_string(want[t]) + at);
    if (slots[t] < 0 || slots[t] >= n_slots) return bad("slot " + std::to_string(slots[t]) + at);
    // A token attends to the positions up to its own, which its slot holds.
    if (n_ctx[t] < 1 || positions[t] != n_ctx[t] - 1)
      return bad("context " + std::to_string(n_ctx[t]) + " at position " + std::to_string(positions[t]) + at);
    n_want += want[t];
    table_words += table_len(n_ctx[t]);
    if (table_words > h.n_table_words) return bad("block tables longer than announced");
  }
  if (n_want != h.n_out) return bad(std::to_string(n_want) + " tokens want logits, the header says " +
                                    std::to_string(h.n_out));
  if (table_words != h.n_table_words) return bad("block tables shorter than announced");
  for (std::size_t i = 0; i < 2 * c; ++i)
    if (copies[i] < 0 || copies[i] >= limits.n_blocks) return bad("copied block " + std::to_string(copies[i]));
  for (std::int64_t i = 0; i < table_words; ++i)
    if (tables[i] < 0 || tables[i] >= limits.n_blocks) return bad("block " + std::to_string(tables[i]) + " in a table");
  // Each token's slot is its position's place in its own table.
  for (std::size_t t = 0, offset = 0; t < n; offset += static_cast<std::size_t>(table_len(n_ctx[t])), ++t) {
    const std::int32_t p = positions[t];
    if (slots[t] != tables[offset + static_cast<std::size_t>(p / kBlockTokens)] * kBlockTokens + p % kBlockTokens)
      return bad("slot " + std::to_string(slots[t]) + " of token " + std::to_string(t) + " is not in its table");
  }

  DecodedPass d;
  d.tables.assign(tables, tables + table_words);
  for (std::size_t t = 0; t < n; ++t) d.batch.add(tokens[t], positions[t], 0, want[t] != 0);
  d.plan.n_out = h.n_out;
  for (std::size_t i = 0; i < c; ++i) d.plan.copies.emplace_back(copies[2 * i], copies[2 * i + 1]);
  d.plan.slots.assign(slots, slots + n);
  d.plan.n_ctx.assign(n_ctx, n_ctx + n);
  std::int64_t offset = 0;
  for (std::size_t t = 0; t < n; ++t) {
    d.plan.tables.push_back(d.tables.data() + offset);
    offset += table_len(n_ctx[t]);
  }
  *out = std::move(d);
  return Status::ok();
}

}  // namespace airlock::engine
