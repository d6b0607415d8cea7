#include "special_matcher.h"

#include <algorithm>
#include <deque>
#include <functional>

namespace airlock::engine {

SpecialMatcher::SpecialMatcher(std::span<const Special> by_rank) {
  const std::size_t n = by_rank.size();
  len_.resize(n);
  nodes_.emplace_back();
  for (std::size_t r = 0; r < n; ++r) {
    len_[r] = by_rank[r].text.size();
    if (by_rank[r].text.empty()) continue;
    std::uint32_t at = 0;
    for (const char ch : by_rank[r].text) {
      const unsigned char c = static_cast<unsigned char>(ch);
      auto& next = nodes_[at].next;
      auto it = std::find_if(next.begin(), next.end(), [&](const auto& e) { return e.first == c; });
      if (it != next.end()) {
        at = it->second;
        continue;
      }
      const auto created = static_cast<std::uint32_t>(nodes_.size());
      nodes_[at].next.emplace_back(c, created);
      nodes_.emplace_back();
      at = created;
    }
    // Of twins the first wins; inside a literal span, the first that is
    // not a control token.
    Node& end = nodes_[at];
    if (end.emit[0] < 0) end.emit[0] = static_cast<std::int32_t>(r);
    if (end.emit[1] < 0 && !by_rank[r].control) end.emit[1] = static_cast<std::int32_t>(r);
  }
  for (Node& node : nodes_) std::sort(node.next.begin(), node.next.end());

  // Lengths, longest first: the order in which find() takes them.
  for (const std::size_t len : len_)
    if (len > 0) class_len_.push_back(len);
  std::sort(class_len_.begin(), class_len_.end(), std::greater<>());
  class_len_.erase(std::unique(class_len_.begin(), class_len_.end()), class_len_.end());
  class_.resize(n);
  for (std::size_t r = 0; r < n; ++r)
    class_[r] = static_cast<std::uint32_t>(
        std::lower_bound(class_len_.begin(), class_len_.end(), len_[r], std::greater<>()) - class_len_.begin());

  for (Chain& chain : chain_) {
    chain.parent.assign(n, -1);
    chain.jump.assign(n, -1);
    chain.depth.assign(n, 0);
  }
  // Breadth first, so that a node's failure link (shorter) is complete
  // before the node is reached; the same holds for the suffix trees.
  std::deque<std::uint32_t> queue;
  queue.push_back(0);
  while (!queue.empty()) {
    const std::uint32_t u = queue.front();
    queue.pop_front();
    for (const auto& [c, v] : nodes_[u].next) {
      std::uint32_t f = 0;
      if (u != 0) {
        for (std::uint32_t g = nodes_[u].fail;; g = nodes_[g].fail) {
          if (const std::uint32_t w = child(g, c)) {
            f = w;
            break;
          }
          if (g == 0) break;
        }
      }
      Node& node = nodes_[v];
      node.fail = f;
      for (int mode = 0; mode < 2; ++mode) {
        const std::int32_t shorter = nodes_[f].emit[mode];
        const std::int32_t own = node.emit[mode];
        if (own < 0) {
          node.emit[mode] = shorter;
          continue;
        }
        Chain& chain = chain_[mode];
        const auto o = static_cast<std::size_t>(own);
        chain.parent[o] = shorter;
        if (shorter < 0) {
          chain.jump[o] = own;
          continue;
        }
        const auto p = static_cast<std::size_t>(shorter);
        chain.depth[o] = chain.depth[p] + 1;
        const std::int32_t jp = chain.jump[p];
        const std::int32_t jjp = chain.jump[static_cast<std::size_t>(jp)];
        const bool skew = chain.depth[p] - chain.depth[static_cast<std::size_t>(jp)] ==
                          chain.depth[static_cast<std::size_t>(jp)] - chain.depth[static_cast<std::size_t>(jjp)];
        chain.jump[o] = skew ? jjp : shorter;
      }
      queue.push_back(v);
    }
  }
}

std::uint32_t SpecialMatcher::child(std::uint32_t node, unsigned char byte) const {
  const auto& next = nodes_[node].next;
  auto it = std::lower_bound(next.begin(), next.end(), std::pair<unsigned char, std::uint32_t>(byte, 0));
  return it != next.end() && it->first == byte ? it->second : 0;
}

std::int32_t SpecialMatcher::next_shorter(int mode, std::int32_t rank, std::size_t end,
                                          const std::vector<bool>& taken, std::uint64_t* n_steps) const {
  // Every occurrence taken so far is at least as long as `rank`, so a
  // shorter window ending at `end` (whose last byte is free) overlaps one
  // exactly when its first byte is taken; and once one fits, every shorter
  // one does. Climb past the ones that do not fit.
  const Chain& chain = chain_[mode];
  auto fits = [&](std::int32_t r) { return !taken[end + 1 - len_[static_cast<std::size_t>(r)]]; };
  for (std::int32_t v = rank;;) {
    ++*n_steps;
    const std::int32_t p = chain.parent[static_cast<std::size_t>(v)];
    if (p < 0 || fits(p)) return p;
    const std::int32_t j = chain.jump[static_cast<std::size_t>(v)];
    v = j != p && !fits(j) ? j : p;
  }
}

std::vector<SpecialMatcher::Match> SpecialMatcher::find(std::string_view text, std::span<const Span> spans,
                                                        std::uint64_t* n_steps) const {
  std::uint64_t steps = 0;
  std::vector<Match> out;
  if (nodes_.size() > 1) {
    // A position where some special ends: its last byte, the longest such
    // special that may still be taken there, and the span's mode.
    struct End {
      std::size_t end;
      std::int32_t rank;
      int mode;
    };
    std::vector<std::vector<End>> by_class(class_len_.size());
    steps += class_len_.size();
    for (const Span& span : spans) {
      const int mode = span.literal ? 1 : 0;
      std::uint32_t at = 0;
      for (std::size_t i = span.begin; i < span.end; ++i) {
        const unsigned char c = static_cast<unsigned char>(text[i]);
        for (;;) {
          ++steps;
          if (const std::uint32_t w = child(at, c)) {
            at = w;
            break;
          }
          if (at == 0) break;
          at = nodes_[at].fail;
        }
        const std::int32_t r = nodes_[at].emit[mode];
        if (r >= 0) by_class[class_[static_cast<std::size_t>(r)]].push_back({i, r, mode});
      }
    }
    std::vector<bool> taken(text.size(), false);
    auto move_on = [&](const End& e) {
      const std::int32_t r = next_shorter(e.mode, e.rank, e.end, taken, &steps);
      if (r >= 0) by_class[class_[static_cast<std::size_t>(r)]].push_back({e.end, r, e.mode});
    };
    std::vector<End> candidates;
    for (std::size_t k = 0; k < class_len_.size(); ++k) {
      if (by_class[k].empty()) continue;
      const std::size_t len = class_len_[k];
      // Whatever overlaps an occurrence taken at a greater length cannot be
      // taken at this one (each taken occurrence is at least `len` long, so
      // a window overlaps one exactly when its first or last byte is taken).
      candidates.clear();
      for (const End& e : by_class[k]) {
        ++steps;
        if (taken[e.end]) continue;  // nothing ending here can be taken
        if (taken[e.end + 1 - len]) move_on(e);
        else candidates.push_back(e);
      }
      std::vector<End>().swap(by_class[k]);
      // Each special of this length in turn, leftmost first.
      auto before = [](const End& a, const End& b) { return a.rank != b.rank ? a.rank < b.rank : a.end < b.end; };
      if (!std::is_sorted(candidates.begin(), candidates.end(), before))
        std::sort(candidates.begin(), candidates.end(), before);
      std::size_t n_refused = 0;
      for (const End& e : candidates) {
        ++steps;
        if (taken[e.end]) continue;
        const std::size_t begin = e.end + 1 - len;
        if (taken[begin]) {
          candidates[n_refused++] = e;  // overlaps one of this length: later, a shorter one may fit
          continue;
        }
        std::fill(taken.begin() + static_cast<std::ptrdiff_t>(begin), taken.begin() + static_cast<std::ptrdiff_t>(e.end + 1),
                  true);
        steps += len;
        out.push_back({begin, e.end + 1, e.rank});
      }
      // (Once this length is done, most of them lie inside one taken since.)
      for (std::size_t i = 0; i < n_refused; ++i) {
        ++steps;
        if (!taken[candidates[i].end]) move_on(candidates[i]);
      }
    }
    std::sort(out.begin(), out.end(), [](const Match& a, const Match& b) { return a.begin < b.begin; });
  }
  if (n_steps) *n_steps += steps;
  return out;
}

}  // namespace airlock::engine
