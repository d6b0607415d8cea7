// Finds a vocabulary's special tokens (control and user-defined) in a text
// the way llama.cpp does: each special in turn, longest first (by rank among
// those of one length), takes its leftmost occurrences that overlap no
// occurrence taken before, its own included. A control token never matches
// inside a literal span (a chat message's content), and no match crosses
// the edge of a span.
//
// That is not "the longest match at the earliest position": with specials
// "bcdefg" and "xab", "xabcdefg" splits as "xa" + bcdefg, not xab + "cdefg".
//
// Work: building over specials of T bytes in all takes O(T) steps (each
// over at most 256 branches); find() takes O(n log n) for a text of n bytes
// and O(n) memory, whatever the specials are (no factor of their number or
// their length). It runs Aho-Corasick over the text once, keeping at each
// position only the longest special that ends there; a position whose
// special cannot be taken (it overlaps one taken before) moves on to the
// longest shorter special ending there that still can, found by climbing a
// tree of "longest special that is a proper suffix of this one" with jump
// pointers. Lengths are handled longest first, so every
// occurrence taken is at least as long as any tried after it, and a window
// overlaps one exactly when its first or its last byte is taken.
//
// Internal to the engine: Tokenizer (tokenizer.h) owns one. Immutable after
// construction; find() may run concurrently.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

namespace airlock::engine {

class SpecialMatcher {
 public:
  struct Special {
    std::string_view text;  // not empty; read only while constructing
    bool control;           // never matched inside a literal span
  };
  // A special's rank is its index in `by_rank`: of two of one length, the
  // lower rank goes first; of twins (one text twice), only the first of
  // lower rank is ever matched (inside a literal span: the first that is
  // not a control token). Empty texts are ignored.
  explicit SpecialMatcher(std::span<const Special> by_rank);

  // A piece of the text: [begin, end), inside the text; no match crosses
  // its edges.
  struct Span {
    std::size_t begin, end;
    bool literal;
  };
  struct Match {
    std::size_t begin, end;  // the bytes of the text it covers
    std::int32_t rank;
  };
  // The matches taken in `spans` (sorted, not overlapping), ordered by
  // begin. n_steps, when not null, has the work done added to it (a
  // count of elementary steps, for tests that check it grows linearly).
  std::vector<Match> find(std::string_view text, std::span<const Span> spans,
                          std::uint64_t* n_steps = nullptr) const;

 private:
  // Over the specials' bytes: node 0 is the root (the empty text).
  struct Node {
    std::vector<std::pair<unsigned char, std::uint32_t>> next;  // sorted by byte
    std::uint32_t fail = 0;  // the longest proper suffix of this node's text that is a node
    // By mode (0: outside literal spans, 1: inside): the rank of the
    // longest special that is a suffix of this node's text (itself
    // included), or -1.
    std::int32_t emit[2] = {-1, -1};
  };
  // By mode, per rank: the longest special that is a proper suffix of this
  // one (-1 for none), its depth in that tree and a jump pointer up it
  // (Myers' skew-binary scheme: any ancestor is reached in O(log) jumps).
  struct Chain {
    std::vector<std::int32_t> parent, jump, depth;
  };

  std::uint32_t child(std::uint32_t node, unsigned char byte) const;  // 0 when none
  // The longest proper suffix of special `rank` that may be taken with its
  // last byte at `end`, given that `rank` itself may not (its first byte is
  // taken, its last is not); -1 when none.
  std::int32_t next_shorter(int mode, std::int32_t rank, std::size_t end, const std::vector<bool>& taken,
                            std::uint64_t* n_steps) const;

  std::vector<Node> nodes_;
  std::vector<std::size_t> len_;         // by rank: the special's length in bytes
  std::vector<std::uint32_t> class_;     // by rank: its length's index among the lengths, longest first
  std::vector<std::size_t> class_len_;  // by class: that length
  Chain chain_[2];
};

}  // namespace airlock::engine
