// libFuzzer target: text (request prompts are outside input) through every
// byte-level BPE pre-tokenizer, the first byte choosing which. Its pieces
// must put the text back together exactly (qwen2's: its NFC, for valid
// UTF-8, by ICU here), and encoding over a vocabulary of the 256 byte
// symbols must give ids that decode to the same.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <unicode/normalizer2.h>
#include <unicode/unistr.h>

#include "airlock/common/utf8.h"
#include "airlock/engine/tokenizer.h"

namespace {

using airlock::engine::Tokenizer;
using airlock::engine::TokenizerSpec;

constexpr const char* kPres[] = {"gpt-2", "llama-bpe", "qwen2", "refact", "gpt-4o", "tekken"};

void append_utf8(std::string& s, char32_t c) {
  if (c < 0x80) {
    s += static_cast<char>(c);
  } else {
    s += static_cast<char>(0xC0 | (c >> 6));
    s += static_cast<char>(0x80 | (c & 0x3F));
  }
}

// GPT-2's byte symbols (printable Latin-1 as itself, the rest from U+0100),
// and a few merges among them.
std::unique_ptr<Tokenizer> make(const char* pre) {
  TokenizerSpec s;
  s.model = "gpt2";
  s.pre = pre;
  char32_t next = 0x100;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    std::string t;
    append_utf8(t, printable ? static_cast<char32_t>(b) : next++);
    s.tokens.push_back(t);
  }
  for (const char* m : {"e r", "\xC4\xA0 t", "\xC4\xA0t h", "i n", "1 2"}) {
    s.merges.push_back(m);
    std::string joined(m);
    joined.erase(joined.find(' '), 1);
    s.tokens.push_back(joined);
  }
  auto t = Tokenizer::from_spec(std::move(s));
  if (!t.is_ok()) std::abort();
  return std::move(*t);
}

std::string nfc(std::string_view text) {
  if (!airlock::valid_utf8(text)) return std::string(text);
  UErrorCode err = U_ZERO_ERROR;
  const icu::Normalizer2* n = icu::Normalizer2::getNFCInstance(err);
  if (U_FAILURE(err)) std::abort();
  const icu::UnicodeString out =
      n->normalize(icu::UnicodeString::fromUTF8(icu::StringPiece(text.data(), static_cast<std::int32_t>(text.size()))), err);
  if (U_FAILURE(err)) std::abort();
  std::string s;
  out.toUTF8String(s);
  return s;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static std::vector<std::unique_ptr<Tokenizer>> tokenizers = [] {
    std::vector<std::unique_ptr<Tokenizer>> v;
    for (const char* pre : kPres) v.push_back(make(pre));
    return v;
  }();
  if (size == 0) return 0;
  const std::size_t which = data[0] % tokenizers.size();
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  const Tokenizer& t = *tokenizers[which];
  std::string joined;
  for (const std::string& piece : t.pre_tokens(text)) {
    if (piece.empty()) std::abort();
    joined += piece;
  }
  const bool normalises = std::string_view(kPres[which]) == "qwen2";
  if (joined != (normalises ? nfc(text) : std::string(text))) std::abort();
  std::string decoded;
  for (std::int32_t id : t.encode(text, false, false)) {
    if (id < 0 || id >= t.n_vocab()) std::abort();
    decoded += t.token_bytes(id);
  }
  if (decoded != joined) std::abort();
  return 0;
}
