// Tokenizers from GGUF metadata: SentencePiece-style ("llama": score-driven
// bigram merges with byte fallback) and byte-level BPE ("gpt2": rank-driven
// merges after a pre-tokenizer; GPT-2, Llama-3 and Qwen2 rules), with
// special tokens and add_bos/add_eos, following llama.cpp's behaviour so the
// same text gives the same ids. WordPiece ("bert") and Hugging Face's
// Unigram model ("unigram": a normalizer, the Metaspace pre-tokenizer and a
// Viterbi segmentation over the pieces' log probabilities, as the Hugging
// Face tokenizers library does it) are built from a tokenizer.json
// (static_embedding.h). SentencePiece's Unigram with its precompiled
// normalization charsmap ("t5": T5, XLM-RoBERTa's multilingual-e5, bge-m3
// and bge-reranker-v2-m3) comes from GGUF, as sentencepiece encodes it.
//
// Errors from the factories: kVerificationFailed for missing or
// inconsistent metadata (no tokenizer.ggml.model or tokens, arrays of the
// wrong type, array lengths that differ, BOS/EOS/UNK/EOT ids out of range,
// a merge without a space, an empty or implausibly large vocabulary),
// kInvalidArgument for a tokenizer model this engine does not have. The
// metadata is untrusted: nothing in it can make encode() or token_bytes()
// read out of bounds, emit an id outside [0, n_vocab), or run in more than
// O(n log n) time in the length of the text.
//
// Ownership: a Tokenizer copies what it needs from the GgufFile (or spec);
// the file may be closed afterwards.
//
// Thread-safety: a Tokenizer is immutable after construction; encode() and
// token_bytes() may run concurrently. StreamDecoder is per stream.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "airlock/common/status.h"
#include "airlock/engine/gguf.h"

namespace airlock::engine {

// Token types as GGUF stores them (tokenizer.ggml.token_type).
enum class TokenType : std::int32_t {
  kUndefined = 0, kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6,
};

// One step of a Hugging Face normalizer (tokenizer.json "normalizer"),
// applied in order to each piece of text between special tokens.
struct NormalizerStep {
  enum class Kind {
    kBert,              // BertNormalizer: clean text, space out CJK, strip accents, lower case (the flags below)
    kReplace,           // Replace{String pattern}: every occurrence of `pattern` becomes `content`
    kCollapseSpaces,    // Replace{Regex "\s+"}: every run of white space becomes `content`
    kStrip,             // Strip: white space at the left and/or right end removed
    kLowercase,         // Lowercase (per character, full mapping)
    kStripAccents,      // StripAccents: nonspacing marks removed (no decomposition of its own)
    kNfc, kNfd, kNfkc, kNfkd,
    kPrepend,           // Prepend: `content` in front of non-empty text
  };
  Kind kind = Kind::kLowercase;
  bool clean_text = true, handle_chinese_chars = true, strip_accents = true, lowercase = true;  // kBert
  bool strip_left = true, strip_right = true;                                                // kStrip
  std::string pattern;  // kReplace
  std::string content;  // kReplace, kCollapseSpaces, kPrepend
};

// When the Metaspace pre-tokenizer puts its replacement character in front.
enum class PrependScheme { kAlways, kFirst, kNever };

// Everything a tokenizer is built from, whatever the source (GGUF metadata,
// or a Hugging Face tokenizer.json in tests).
struct TokenizerSpec {
  std::string model;                 // "llama" (SentencePiece BPE), "gpt2" (byte-level BPE), "bert" (WordPiece),
                                     // "unigram" (Hugging Face Unigram), "t5" (SentencePiece Unigram)
  std::string pre;                   // gpt2 pre-tokenizer: "gpt-2" (and aliases), "llama-bpe"/"llama3", "qwen2", "refact",
                                     // "gpt-4o"/"llama4", "tekken"
  std::vector<std::string> tokens;
  std::vector<float> scores;         // SentencePiece only (may be empty for BPE)
  std::vector<TokenType> types;      // may be empty: all normal
  std::vector<std::string> merges;   // BPE only: "left right", best first
  std::int32_t bos = -1, eos = -1, unk = -1, eot = -1;
  bool add_bos = false, add_eos = false;
  bool add_space_prefix = true;      // SentencePiece only ("llama", "t5")
  // "t5" only: sentencepiece's normalizer_spec.precompiled_charsmap (may be
  // empty: no rules) and remove_extra_whitespaces. piece_scores is filled
  // from scores.
  std::string precompiled_charsmap;
  bool remove_extra_whitespaces = false;
  std::size_t max_word_chars = 0;    // WordPiece: longer words are [UNK] (Hugging Face: 100, also set for GGUF BERT; 0: no limit)

  // Unigram only. unk may be -1: unknown characters are then dropped (the
  // Hugging Face library fails the whole encoding instead).
  std::vector<double> piece_scores;          // log probability of each token, full precision
  std::vector<NormalizerStep> normalizer;
  bool metaspace = true;                     // the Metaspace pre-tokenizer (false: none)
  std::string metaspace_replacement = "\xE2\x96\x81";  // one character, in place of ' '
  PrependScheme prepend_scheme = PrependScheme::kAlways;  // kFirst: only before text that starts the input
  bool metaspace_split = true;               // words split before each replacement character
  bool byte_fallback = false;                // a piece-less character becomes its <0xNN> tokens when all exist
};

class SpecialMatcher;
class UnigramModel;

class Tokenizer {
 public:
  // Reads tokenizer.ggml.{model, pre, tokens, scores, token_type, merges,
  // bos/eos/unknown/eot_token_id, add_bos_token, add_eos_token,
  // add_space_prefix, precompiled_charsmap, remove_extra_whitespaces}. A
  // negative or 0xFFFFFFFF id means "none".
  static Result<std::unique_ptr<Tokenizer>> from_gguf(const GgufFile& file);
  // The same checks on a spec built by other means (a Hugging Face
  // tokenizer.json, static_embedding.h). A "unigram" spec must also have one
  // finite score per token, no empty or repeated piece, a Metaspace
  // replacement of exactly one character and Replace patterns that are not
  // empty (kVerificationFailed otherwise). A "t5" spec: a finite score per
  // token and a charsmap whose header fits it; of pieces that repeat, the
  // last is the one encode() emits (as llama.cpp).
  static Result<std::unique_ptr<Tokenizer>> from_spec(TokenizerSpec spec);

  // add_special: BOS/EOS as the metadata says. parse_special: control tokens
  // written in the text ("<|eot_id|>") become their ids; user-defined tokens
  // are always recognised, as in llama.cpp.
  std::vector<std::int32_t> encode(std::string_view text, bool add_special, bool parse_special) const;
  // As encode(text, add_special, true), except that control tokens written
  // inside the byte ranges `literal` (begin, end; sorted, not overlapping)
  // stay text: a chat template's own markup is parsed, the messages it
  // wraps are not. Text on both sides of a range boundary is encoded
  // together, exactly as without the ranges, where no control token is.
  std::vector<std::int32_t> encode(std::string_view text, bool add_special,
                                   std::span<const std::pair<std::size_t, std::size_t>> literal) const;

  // The bytes a token stands for. Control tokens give "" unless render_special.
  std::string token_bytes(std::int32_t id, bool render_special = false) const;

  std::int32_t n_vocab() const { return static_cast<std::int32_t>(spec_.tokens.size()); }
  std::int32_t bos() const { return spec_.bos; }
  std::int32_t eos() const { return spec_.eos; }
  bool add_bos() const { return spec_.add_bos; }
  bool add_eos() const { return spec_.add_eos; }
  // True when SentencePiece decoding should drop the space it added in front.
  bool strips_leading_space() const {
    return (spec_.model == "llama" && spec_.add_space_prefix) || spec_.model == "bert" ||
           (spec_.model == "unigram" && spec_.metaspace && spec_.prepend_scheme != PrependScheme::kNever) ||
           (spec_.model == "t5" && spec_.add_space_prefix);
  }
  bool is_end_of_generation(std::int32_t id) const;
  // A byte-level BPE ("gpt2") vocabulary's pre-tokenizer: the pieces its
  // rules split `text` into (after its normalisation), on which the merges
  // then run separately.
  std::vector<std::string> pre_tokens(std::string_view text) const;
  std::int32_t token_id(std::string_view text) const;  // -1 when absent

 private:
  explicit Tokenizer(TokenizerSpec spec);
  // A piece of a text being encoded: plain text (special < 0), inside a
  // literal range or not, or a special token.
  struct Fragment {
    std::string_view text;
    std::int32_t special;
    bool literal = false;
  };
  std::vector<Fragment> split_at_specials(std::string_view text, std::vector<Fragment> frags) const;
  void encode_spm(std::string_view text, std::vector<std::int32_t>* out) const;
  void encode_bpe(std::string_view text, std::vector<std::int32_t>* out) const;
  void bpe_word(const std::string& word, std::vector<std::int32_t>* out) const;
  void encode_wpm(std::string_view text, std::vector<std::int32_t>* out) const;

  TokenizerSpec spec_;
  std::unordered_map<std::string, std::int32_t> ids_;
  std::unordered_map<std::string, int> merge_rank_;  // "left\0right" -> rank
  std::vector<std::int32_t> specials_;  // longest first: their rank is their priority
  // Finds specials_ (by rank) in a text in time linear in the text, times a
  // log (special_matcher.h); null when there are none.
  std::shared_ptr<const SpecialMatcher> special_matcher_;
  std::int32_t byte_tokens_[256];
  bool ignore_merges_ = false;
  std::size_t max_token_bytes_ = 0;
  std::shared_ptr<const UnigramModel> unigram_;  // "unigram" and "t5" only (unigram.h)
};

// kVerificationFailed when `tokenizer` can make a token that an embedding
// matrix of `rows` rows has no row for (fewer tokens than rows is common:
// padded matrices).
Status check_vocab_fits(const Tokenizer& tokenizer, int rows);

// Turns generated tokens into text that never splits a UTF-8 character:
// push() returns the complete bytes available so far, finish() the rest
// (an incomplete trailing sequence becomes U+FFFD; an invalid byte anywhere
// becomes U+FFFD as well, so every returned string is valid UTF-8).
//
// SentencePiece vocabularies put a space in front of the first word of a
// sequence (add_space_prefix); llama.cpp drops it when it decodes a whole
// sequence, and keeps it when it streams pieces that continue a prompt.
// LeadingSpace says which of the two this decoder is doing: kStrip for text
// that starts at the beginning of the sequence (tokens after BOS), kKeep for
// tokens that continue earlier text (generation after a prompt: "Once upon
// a" + " time" must stay " time"). Other tokenizers ignore it.
//
// Ownership: keeps a reference to `tokenizer`, which must outlive it.
// Thread-safety: one decoder per stream; not safe for concurrent use.
class StreamDecoder {
 public:
  enum class LeadingSpace { kStrip, kKeep };
  explicit StreamDecoder(const Tokenizer& tokenizer, LeadingSpace leading = LeadingSpace::kStrip)
      : tok_(tokenizer), started_(leading == LeadingSpace::kKeep) {}
  // Appends the bytes of `id` (ids out of range and control tokens add
  // nothing) and returns every complete character not returned before.
  std::string push(std::int32_t id);
  // Returns what is still held back (U+FFFD for an incomplete character)
  // and empties the decoder.
  std::string finish();

 private:
  const Tokenizer& tok_;
  std::string pending_;
  bool started_ = false;  // true once the leading-space decision is made
};

}  // namespace airlock::engine
