// libFuzzer target: a Hugging Face tokenizer.json (the untrusted tokenizer of
// static embedding models: WordPiece or Unigram) and a text to encode, split
// at the first NUL byte. Whatever loads must encode without reading out of
// bounds and give only ids inside the vocabulary.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "airlock/engine/static_embedding.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace airlock::engine;
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const std::size_t nul = in.find('\0');
  const std::string_view json = in.substr(0, nul);
  const std::string_view text = nul == std::string_view::npos ? std::string_view("Hello, world! x\xE2\x98\x83y") : in.substr(nul + 1);
  auto spec = spec_from_hf_json(json);
  if (!spec.is_ok()) return 0;
  auto tok = Tokenizer::from_spec(std::move(*spec));
  if (!tok.is_ok()) return 0;
  for (bool special : {false, true})
    for (std::int32_t id : (*tok)->encode(text, special, special))
      if (id < 0 || id >= (*tok)->n_vocab()) std::abort();
  return 0;
}
