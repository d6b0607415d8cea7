#include "airlock/engine/pass_message.h"

#include <map>
#include <string>

namespace airlock::engine {
namespace {

Status bad(const std::string& what) { return invalid_argument("pass message: " + what); }

// Block-table entries a context of n positions reads, in 64 bits (n may
// be anything a peer sent).
std::int64_t table_len(std::int64_t n_ctx) { return (n_ctx + kBlockTokens - 1) / kBlockTokens; }

}  // namespace

Result<std::vector<std::int32_t>> encode_pass(const Batch& batch, const PassPlan& plan, PassHeader* header) {
  const std::size_t n = batch.size();
  if (n > static_cast<std::size_t>(kMaxPassTokens) || plan.slots.size() != n || plan.n_ctx.size() != n ||
      plan.tables.size() != n || plan.copies.size() > static_cast<std::size_t>(kMaxPassTokens))
    return bad("a pass of " + std::to_string(n) + " tokens cannot be sent");
  // Each distinct table once (a sequence's tokens share the cache's table),
  // as long as its longest context needs.
  std::map<const std::int32_t*, std::int32_t> index;
  std::vector<const std::int32_t*> tables;
  std::vector<std::int64_t> lengths;
  std::vector<std::int32_t> table_of(n);
  for (std::size_t t = 0; t < n; ++t) {
    auto [it, added] = index.emplace(plan.tables[t], static_cast<std::int32_t>(tables.size()));
    if (added) {
      tables.push_back(plan.tables[t]);
      lengths.push_back(0);
    }
    table_of[t] = it->second;
    lengths[static_cast<std::size_t>(it->second)] =
        std::max(lengths[static_cast<std::size_t>(it->second)], table_len(plan.n_ctx[t]));
  }
  std::int64_t table_words = 0;
  for (std::int64_t l : lengths) table_words += l;
  if (table_words > kMaxPassTableWords) return bad("block tables of " + std::to_string(table_words) + " entries");
  *header = PassHeader{};
  header->kind = static_cast<std::int32_t>(PassKind::kPass);
  header->n_tokens = static_cast<std::int32_t>(n);
  header->n_out = static_cast<std::int32_t>(plan.n_out);
  header->n_copies = static_cast<std::int32_t>(plan.copies.size());
  header->n_tables = static_cast<std::int32_t>(tables.size());
  header->n_table_words = static_cast<std::int32_t>(table_words);
  std::vector<std::int32_t> w;
  w.reserve(6 * n + 2 * plan.copies.size() + tables.size() + static_cast<std::size_t>(table_words));
  w.insert(w.end(), batch.tokens.begin(), batch.tokens.end());
  w.insert(w.end(), batch.positions.begin(), batch.positions.end());
  for (char c : batch.want_logits) w.push_back(c != 0 ? 1 : 0);
  for (auto [from, to] : plan.copies) {
    w.push_back(from);
    w.push_back(to);
  }
  w.insert(w.end(), plan.slots.begin(), plan.slots.end());
  w.insert(w.end(), plan.n_ctx.begin(), plan.n_ctx.end());
  w.insert(w.end(), table_of.begin(), table_of.end());
  for (std::int64_t l : lengths) w.push_back(static_cast<std::int32_t>(l));
  for (std::size_t i = 0; i < tables.size(); ++i) w.insert(w.end(), tables[i], tables[i] + lengths[i]);
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
      h.n_copies > kMaxPassTokens || h.n_tables < 0 || h.n_tables > h.n_tokens || h.n_table_words < 0 ||
      h.n_table_words > kMaxPassTableWords)
    return bad("counts out of range (" + std::to_string(h.n_tokens) + " tokens, " + std::to_string(h.n_out) +
               " with logits, " + std::to_string(h.n_copies) + " copies, " + std::to_string(h.n_tables) +
               " tables of " + std::to_string(h.n_table_words) + " entries)");
  return 6 * static_cast<std::size_t>(h.n_tokens) + 2 * static_cast<std::size_t>(h.n_copies) +
         static_cast<std::size_t>(h.n_tables) + static_cast<std::size_t>(h.n_table_words);
}

Status decode_pass(const PassHeader& h, std::span<const std::int32_t> payload, const PassLimits& limits,
                   DecodedPass* out) {
  AIRLOCK_ASSIGN_OR_RETURN(const std::size_t words, payload_words(h));
  if (h.kind != static_cast<std::int32_t>(PassKind::kPass)) return bad("not a pass");
  if (payload.size() != words)
    return bad(std::to_string(payload.size()) + " words where the header announces " + std::to_string(words));
  const std::size_t n = static_cast<std::size_t>(h.n_tokens), c = static_cast<std::size_t>(h.n_copies),
                    n_tables = static_cast<std::size_t>(h.n_tables);
  const std::int32_t* tokens = payload.data();
  const std::int32_t* positions = tokens + n;
  const std::int32_t* want = positions + n;
  const std::int32_t* copies = want + n;
  const std::int32_t* slots = copies + 2 * c;
  const std::int32_t* n_ctx = slots + n;
  const std::int32_t* table_of = n_ctx + n;
  const std::int32_t* lengths = table_of + n;
  const std::int32_t* table_words = lengths + n_tables;

  // The tables: lengths that add up to what the header announced, every
  // entry a block of the storage.
  std::vector<std::int64_t> start(n_tables);
  std::int64_t total = 0;
  for (std::size_t i = 0; i < n_tables; ++i) {
    if (lengths[i] < 0 || lengths[i] > h.n_table_words - total)
      return bad("table " + std::to_string(i) + " of " + std::to_string(lengths[i]) + " entries");
    start[i] = total;
    total += lengths[i];
  }
  if (total != h.n_table_words) return bad("tables shorter than announced");
  for (std::int64_t i = 0; i < total; ++i)
    if (table_words[i] < 0 || table_words[i] >= limits.n_blocks)
      return bad("block " + std::to_string(table_words[i]) + " in a table");

  const std::int64_t n_slots = limits.n_blocks * kBlockTokens;
  std::int64_t n_want = 0;
  for (std::size_t t = 0; t < n; ++t) {
    const std::string at = " of token " + std::to_string(t);
    if (tokens[t] < 0 || tokens[t] >= limits.n_vocab) return bad("token id " + std::to_string(tokens[t]) + at);
    if (want[t] != 0 && want[t] != 1) return bad("logits flag " + std::to_string(want[t]) + at);
    // A token attends to the positions up to its own, within the model's
    // context, all of them in its table.
    if (n_ctx[t] < 1 || n_ctx[t] > limits.n_ctx || positions[t] != n_ctx[t] - 1)
      return bad("context " + std::to_string(n_ctx[t]) + " at position " + std::to_string(positions[t]) + at);
    if (table_of[t] < 0 || static_cast<std::size_t>(table_of[t]) >= n_tables)
      return bad("table " + std::to_string(table_of[t]) + at);
    const std::size_t ti = static_cast<std::size_t>(table_of[t]);
    if (table_len(n_ctx[t]) > lengths[ti]) return bad("context " + std::to_string(n_ctx[t]) + " longer than its table" + at);
    if (slots[t] < 0 || slots[t] >= n_slots) return bad("slot " + std::to_string(slots[t]) + at);
    const std::int32_t p = positions[t];
    const std::int64_t block = table_words[start[ti] + p / kBlockTokens];
    if (slots[t] != block * kBlockTokens + p % kBlockTokens)
      return bad("slot " + std::to_string(slots[t]) + at + " is not its position's place in its table");
    n_want += want[t];
  }
  if (n_want != h.n_out)
    return bad(std::to_string(n_want) + " tokens want logits, the header says " + std::to_string(h.n_out));
  for (std::size_t i = 0; i < 2 * c; ++i)
    if (copies[i] < 0 || copies[i] >= limits.n_blocks) return bad("copied block " + std::to_string(copies[i]));

  DecodedPass d;
  d.tables.assign(table_words, table_words + total);
  for (std::size_t t = 0; t < n; ++t) d.batch.add(tokens[t], positions[t], table_of[t], want[t] != 0);
  d.plan.n_out = h.n_out;
  for (std::size_t i = 0; i < c; ++i) d.plan.copies.emplace_back(copies[2 * i], copies[2 * i + 1]);
  d.plan.slots.assign(slots, slots + n);
  d.plan.n_ctx.assign(n_ctx, n_ctx + n);
  for (std::size_t t = 0; t < n; ++t) d.plan.tables.push_back(d.tables.data() + start[static_cast<std::size_t>(table_of[t])]);
  *out = std::move(d);
  return Status::ok();
}

}  // namespace airlock::engine
