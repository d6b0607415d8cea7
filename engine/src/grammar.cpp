#include "airlock/engine/grammar.h"

#include <algorithm>
#include <utility>

namespace airlock::engine {

Grammar::Symbol Grammar::byte(unsigned char c) {
  Symbol s;
  s.bytes.set(c);
  return s;
}

Grammar::Symbol Grammar::range(unsigned char lo, unsigned char hi) {
  Symbol s;
  for (unsigned c = lo; c <= hi; ++c) s.bytes.set(c);
  return s;
}

Grammar::Symbol Grammar::set(const ByteSet& bytes, bool free_text) {
  Symbol s;
  s.bytes = bytes;
  s.free_text = free_text;
  return s;
}

Grammar::Symbol Grammar::ref(RuleId r) {
  Symbol s;
  s.is_rule = true;
  s.rule = r;
  return s;
}

void Grammar::literal(std::string_view text, std::vector<Symbol>* out) {
  for (char c : text) out->push_back(byte(static_cast<unsigned char>(c)));
}

Grammar::RuleId Grammar::add_rule() {
  rules_.emplace_back();
  return static_cast<RuleId>(rules_.size() - 1);
}

void Grammar::add_alternative(RuleId r, const std::vector<Symbol>& symbols) {
  rules_[r].push_back(static_cast<std::uint32_t>(elements_.size()));
  for (const Symbol& s : symbols) {
    if (s.is_rule) {
      elements_.push_back({Kind::kRule, false, s.rule});
      continue;
    }
    auto [it, added] = set_index_.try_emplace(s.bytes, static_cast<std::uint32_t>(sets_.size()));
    if (added) sets_.push_back(s.bytes);
    elements_.push_back({Kind::kBytes, s.free_text, it->second});
  }
  elements_.push_back({Kind::kEnd, false, 0});
}

GrammarMatcher::GrammarMatcher(const Grammar* grammar, GrammarArena* arena) : g_(grammar), arena_(arena) {
  for (std::uint32_t start : g_->rules_[g_->start_]) expand(start, kBottom, 0);
  dedupe();
}

std::uint32_t GrammarMatcher::push(std::uint32_t pos, std::uint32_t tail) {
  const std::uint32_t depth = tail == kBottom ? 1 : arena_->nodes[tail].depth + 1;
  if (depth > kMaxDepth) return kDropped;
  arena_->nodes.push_back({pos, tail, depth});
  return static_cast<std::uint32_t>(arena_->nodes.size() - 1);
}

void GrammarMatcher::emit(std::uint32_t top) {
  if (next_.size() < kMaxStacks) next_.push_back(top);
}

// Brings the stack "element `pos`, then `tail`" to a byte set on top,
// one stack per way there.
void GrammarMatcher::expand(std::uint32_t pos, std::uint32_t tail, int guard) {
  const Grammar::Element e = g_->elements_[pos];
  switch (e.kind) {
    case Grammar::Kind::kBytes:
      if (const std::uint32_t n = push(pos, tail); n != kDropped) emit(n);
      return;
    case Grammar::Kind::kRule:
      expand_rule(pos, tail, guard);
      return;
    case Grammar::Kind::kEnd: {
      if (tail == kBottom) {
        emit(kAccept);
        return;
      }
      // The alternative is done: go on with what its rule was followed by
      // (a node in an arena is a byte set or a rule, never an end).
      const GrammarArena::Node t = arena_->nodes[tail];
      if (g_->elements_[t.pos].kind == Grammar::Kind::kBytes) emit(tail);
      else expand_rule(t.pos, t.next, guard);
      return;
    }
  }
}

void GrammarMatcher::expand_rule(std::uint32_t pos, std::uint32_t tail, int guard) {
  if (guard >= kMaxExpansion) return;
  // What follows the rule, unless it is the end of this alternative (a
  // rule in tail position adds nothing to the stack: loops stay flat).
  std::uint32_t cont = tail;
  if (g_->elements_[pos + 1].kind != Grammar::Kind::kEnd) {
    cont = push(pos + 1, tail);
    if (cont == kDropped) return;
  }
  for (std::uint32_t start : g_->rules_[g_->elements_[pos].arg]) expand(start, cont, guard + 1);
}

bool GrammarMatcher::feed(unsigned char c) {
  next_.clear();
  for (std::uint32_t top : tops_) {
    if (top == kAccept) continue;
    const GrammarArena::Node n = arena_->nodes[top];
    if (!g_->sets_[g_->elements_[n.pos].arg][c]) continue;
    expand(n.pos + 1, n.next, 0);
  }
  dedupe();
  return !tops_.empty();
}

bool GrammarMatcher::same_stack(std::uint32_t a, std::uint32_t b) const {
  while (a != b) {
    if (a == kBottom || b == kBottom || a == kAccept || b == kAccept) return false;
    const GrammarArena::Node& x = arena_->nodes[a];
    const GrammarArena::Node& y = arena_->nodes[b];
    if (x.pos != y.pos || x.depth != y.depth) return false;
    a = x.next;
    b = y.next;
  }
  return true;
}

// Leaves one of each stack in tops_ (ways through the rules that met
// again would otherwise multiply at every byte).
void GrammarMatcher::dedupe() {
  auto key = [&](std::uint32_t t) {
    if (t == kAccept) return std::pair<std::uint32_t, std::uint32_t>{kAccept, 0};
    const GrammarArena::Node& n = arena_->nodes[t];
    return std::pair<std::uint32_t, std::uint32_t>{n.pos, n.depth};
  };
  std::sort(next_.begin(), next_.end(), [&](std::uint32_t a, std::uint32_t b) { return key(a) < key(b) || (key(a) == key(b) && a < b); });
  tops_.clear();
  std::size_t group = 0;  // first of the run of equal keys in tops_
  for (std::uint32_t t : next_) {
    if (!tops_.empty() && key(tops_.back()) != key(t)) group = tops_.size();
    bool seen = false;
    for (std::size_t i = group; i < tops_.size() && !seen; ++i) seen = same_stack(tops_[i], t);
    if (!seen) tops_.push_back(t);
  }
  next_.clear();
}

bool GrammarMatcher::accepting() const { return std::find(tops_.begin(), tops_.end(), kAccept) != tops_.end(); }

bool GrammarMatcher::complete() const { return std::all_of(tops_.begin(), tops_.end(), [](std::uint32_t t) { return t == kAccept; }); }

bool GrammarMatcher::in_free_text() const {
  return std::any_of(tops_.begin(), tops_.end(), [&](std::uint32_t t) {
    return t != kAccept && g_->elements_[arena_->nodes[t].pos].free_text;
  });
}

Grammar::ByteSet GrammarMatcher::next_bytes() const {
  Grammar::ByteSet out;
  for (std::uint32_t t : tops_)
    if (t != kAccept) out |= g_->sets_[g_->elements_[arena_->nodes[t].pos].arg];
  return out;
}

void GrammarMatcher::compact() {
  GrammarArena fresh;
  std::unordered_map<std::uint32_t, std::uint32_t> moved;  // old id -> new id
  // Copies the stack under `id`, bottom first, sharing what was shared.
  auto copy = [&](std::uint32_t id) {
    std::vector<std::uint32_t> path;
    while (id != kBottom && !moved.count(id)) {
      path.push_back(id);
      id = arena_->nodes[id].next;
    }
    std::uint32_t below = id == kBottom ? kBottom : moved[id];
    for (auto it = path.rbegin(); it != path.rend(); ++it) {
      const GrammarArena::Node& n = arena_->nodes[*it];
      fresh.nodes.push_back({n.pos, below, n.depth});
      below = static_cast<std::uint32_t>(fresh.nodes.size() - 1);
      moved[*it] = below;
    }
    return below;
  };
  for (std::uint32_t& t : tops_)
    if (t != kAccept) t = copy(t);
  arena_->nodes = std::move(fresh.nodes);
}

}  // namespace airlock::engine
