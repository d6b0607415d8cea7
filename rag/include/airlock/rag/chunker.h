// Splits extracted document text into overlapping chunks sized in the
// embedding model's tokens, cutting at sentence ends where it can.
//
// A chunk is a run of whole sentences of at most `max_tokens` tokens; a
// sentence longer than that is cut at word boundaries (and after the
// clauses of CJK text, 、，；：), and a word longer than that (a run of CJK
// text, a long token) at UTF-8 character boundaries, each piece as long as
// the budget allows, so every chunk fits. (A single character that alone
// counts more than `max_tokens` is a chunk of its own rather than cut.)
// Sentences end at a line break; at . ! ? and closing quotes or brackets
// before white space or CJK text; and at the ideographic and fullwidth
// sentence ends 。！？． and the closing brackets and quotes after them
// (」』）” ...), with no space needed. Consecutive chunks share up to
// `overlap_tokens` tokens (and 32 bytes a token) of whole trailing
// sentences.
// Offsets are byte offsets into the input text, so a citation can point at
// the exact passage.
//
// Thread-safety: a pure function of its arguments.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "airlock/common/status.h"

namespace airlock::rag {

struct ChunkOptions {
  std::size_t max_tokens = 256;
  std::size_t overlap_tokens = 32;  // and at most 32 bytes a token of it
  std::size_t max_chunks = 200000;  // more: kInvalidArgument, found before any is embedded
};

struct TextChunk {
  std::string text;
  std::size_t begin = 0;  // byte offsets into the input: text == input.substr(begin, end - begin)
  std::size_t end = 0;
  std::size_t n_tokens = 0;
};

using TokenCounter = std::function<std::size_t(std::string_view)>;

// kInvalidArgument when max_tokens is 0, overlap_tokens >= max_tokens, or the
// text makes more than max_chunks chunks.
// Empty or whitespace-only text gives no chunks.
Result<std::vector<TextChunk>> chunk_text(std::string_view text, const TokenCounter& count_tokens,
                                          const ChunkOptions& options);

}  // namespace airlock::rag
