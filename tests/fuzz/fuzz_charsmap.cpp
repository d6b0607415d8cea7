// libFuzzer target: SentencePiece's precompiled normalization charsmap (the
// untrusted tokenizer.ggml.precompiled_charsmap of "t5" GGUF vocabularies:
// XLM-RoBERTa, T5) and a text to encode. Input: one flag byte (bit 0 the
// dummy prefix, bit 1 remove_extra_whitespaces), the charsmap's length
// (u32 little-endian), the charsmap, then the text. A charsmap that loads
// must encode without reading out of bounds, give ids of the vocabulary
// only, and give the same ids twice.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "airlock/engine/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace airlock::engine;
  if (size < 5) return 0;
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  std::uint32_t n = 0;
  for (int b = 4; b >= 1; --b) n = (n << 8) | data[b];
  if (n > size - 5) n = static_cast<std::uint32_t>(size - 5);
  TokenizerSpec s;
  s.model = "t5";
  s.tokens = {"<pad>", "</s>", "<unk>", "\xE2\x96\x81", "a", "b", "\xE2\x96\x81" "a", "ab", "\xC3\xA9", "\xE3\x82\xAB", "<u>"};
  s.scores = {0, 0, 0, -1, -2, -2, -1.5f, -3, -4, -5, 0};
  s.types = {TokenType::kControl, TokenType::kControl, TokenType::kUnknown, TokenType::kNormal, TokenType::kNormal,
             TokenType::kNormal,  TokenType::kNormal,  TokenType::kNormal,  TokenType::kNormal, TokenType::kNormal,
             TokenType::kUserDefined};
  s.unk = 2;
  s.eos = 1;
  s.add_eos = true;
  s.add_space_prefix = (data[0] & 1) != 0;
  s.remove_extra_whitespaces = (data[0] & 2) != 0;
  s.precompiled_charsmap = std::string(in.substr(5, n));
  auto tok = Tokenizer::from_spec(std::move(s));
  if (!tok.is_ok()) return 0;
  const std::string_view text = in.substr(5 + n);
  const std::vector<std::int32_t> ids = (*tok)->encode(text, true, true);
  for (std::int32_t id : ids)
    if (id < 0 || id >= (*tok)->n_vocab()) std::abort();
  if ((*tok)->encode(text, true, true) != ids) std::abort();
  return 0;
}
