// Hugging Face's Unigram tokenizer model (tokenizer.json "model": {"type":
// "Unigram"}) with the normalizer and the Metaspace pre-tokenizer in front of
// it, as the Hugging Face tokenizers library runs them:
//
//   text -> normalizer steps -> ' ' becomes the replacement character (U+2581),
//   one put in front -> words split before each replacement character ->
//   each word segmented by Viterbi: the pieces whose scores (log
//   probabilities) add up to the most, ties to the path found first (shorter
//   pieces, earlier starts). A character that no single-character piece
//   covers may also be "unknown" at min(score) - 10; consecutive unknown
//   characters become one token: the piece they spell if there is one, else
//   their <0xNN> byte pieces (byte_fallback), else the unk piece.
//
// SentencePiece's own Unigram ("t5" in GGUF: T5, XLM-RoBERTa) is the same
// Viterbi with SentencePiece's front end instead: the precompiled charsmap
// (a darts-clone double array of byte strings and the replacement of each;
// at each position the longest rule that matches is applied, else the
// character is copied, a malformed byte becoming U+FFFD), then its white
// space rules (a dummy prefix; optionally leading, trailing and repeated
// spaces removed; every space becomes U+2581). The segmentation runs over
// the whole text; a run of unknown characters is one unk token, and the
// unknown score is the lowest normal score minus 10, as in sentencepiece.
// Candidates are normal, user-defined (score 0) and unused pieces, as
// llama.cpp has it (sentencepiece skips unused pieces and scores
// user-defined ones otherwise; neither matters for real files: their
// unused pieces score -10000, and user-defined pieces are split out of the
// text before it gets here).
//
// Bounds, whatever the metadata says: a piece longer than kMaxPieceBytes
// is never a candidate (Viterbi costs at most that many steps a byte), a
// charsmap rule matches at most kMaxCharsmapRule bytes and a replacement
// longer than kMaxReplacement bytes is refused.
//
// Internal to the engine: Tokenizer (tokenizer.h) owns one for "unigram"
// and "t5" specs. Immutable after build(); encode() may run concurrently.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "airlock/common/status.h"
#include "airlock/engine/tokenizer.h"

namespace airlock::engine {

class UnigramModel {
 public:
  // Checks the Unigram fields of `spec` (see Tokenizer::from_spec) and builds
  // the piece trie. kVerificationFailed for a spec that breaks them.
  static Result<std::shared_ptr<const UnigramModel>> build(const TokenizerSpec& spec);

  // Appends the ids of `text`, one piece of input between special tokens;
  // at_start says whether it begins the input (PrependScheme::kFirst).
  // Invalid UTF-8 reads as U+FFFD. The normalized text is capped at
  // 8 * |text| + 4096 characters ("t5": bytes, plus at most one
  // replacement), so no normalizer can blow it up.
  void encode(std::string_view text, bool at_start, std::vector<std::int32_t>* out) const;

  // The normalizer alone, as UTF-8 ("t5": with the white space rules).
  std::string normalize(std::string_view text) const;

  // A rule in the charsmap longer than this never matches; it bounds the
  // work per input byte whatever the table says. (nmt_nfkc's longest: 10.)
  static constexpr std::size_t kMaxCharsmapRule = 256;
  // A charsmap with a replacement longer than this is refused. (nmt_nfkc's
  // longest: 33.)
  static constexpr std::size_t kMaxReplacement = 256;
  // Longer pieces are never candidates. (sentencepiece's trainer makes
  // pieces of at most 16 characters by default.)
  static constexpr std::size_t kMaxPieceBytes = 256;

 private:
  UnigramModel() = default;
  std::u32string normalize32(std::string_view text) const;
  std::string normalize_spm(std::string_view text) const;
  // The charsmap's longest rule at the start of `text`: its replacement and
  // the bytes it covers (0 when none).
  std::pair<std::string_view, std::size_t> charsmap_rule(std::string_view text) const;
  std::int32_t child(std::int32_t node, unsigned char byte) const;
  std::int32_t find(std::string_view piece) const;  // the id of exactly `piece`, or -1
  void segment(std::string_view word, std::vector<std::int32_t>* out) const;

  // Piece trie over bytes: node 0 is the root; edges sorted by key.
  std::vector<std::uint64_t> edge_key_;    // (parent node << 8) | byte
  std::vector<std::int32_t> edge_child_;   // same order as edge_key_
  std::vector<std::int32_t> node_piece_;   // the piece ending at each node, or -1
  std::vector<double> scores_;             // per piece
  double unk_score_ = 0;
  std::int32_t unk_ = -1;
  bool byte_fallback_ = false;
  std::int32_t byte_ids_[256] = {};        // <0xNN> piece ids, -1 when absent
  std::vector<NormalizerStep> normalizer_;
  std::vector<std::u32string> patterns_, contents_;  // per normalizer step, as code points
  bool metaspace_ = true;
  char32_t replacement_ = 0x2581;
  PrependScheme prepend_ = PrependScheme::kAlways;
  bool split_ = true;

  // "t5" (SentencePiece's front end).
  bool spm_ = false;
  bool dummy_prefix_ = true, remove_extra_spaces_ = false;
  std::vector<std::uint32_t> charsmap_units_;  // darts-clone double array
  std::string charsmap_pool_;                  // NUL-terminated replacements
};

}  // namespace airlock::engine
