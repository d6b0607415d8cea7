// UTF-8 helpers (the engine's tokenizers and chat templates, rag's text).
#pragma once

#include <string>
#include <string_view>

namespace airlock {

// Appends the UTF-8 encoding of code point `cp` (at most U+10FFFF; callers
// replace surrogates and invalid values before).
inline void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// Decodes the code point at s[i] (i < s.size()) and sets *len to its length
// in bytes. An invalid, truncated, overlong or surrogate sequence decodes as
// U+FFFD with length 1, so every byte is consumed exactly once.
inline char32_t next_code_point(std::string_view s, std::size_t i, std::size_t* len) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  *len = 1;
  if (c < 0x80) return c;
  std::size_t n = 0;
  char32_t cp = 0, min = 0;
  if ((c >> 5) == 0x6) {
    n = 2; cp = c & 0x1F; min = 0x80;
  } else if ((c >> 4) == 0xE) {
    n = 3; cp = c & 0x0F; min = 0x800;
  } else if ((c >> 3) == 0x1E) {
    n = 4; cp = c & 0x07; min = 0x10000;
  } else {
    return 0xFFFD;
  }
  if (i + n > s.size()) return 0xFFFD;
  for (std::size_t k = 1; k < n; ++k) {
    const unsigned char cc = static_cast<unsigned char>(s[i + k]);
    if ((cc & 0xC0) != 0x80) return 0xFFFD;
    cp = (cp << 6) | (cc & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0xFFFD;
  *len = n;
  return cp;
}

// True when `s` is well-formed UTF-8 (a U+FFFD written in it is fine).
inline bool valid_utf8(std::string_view s) {
  for (std::size_t i = 0, len = 0; i < s.size(); i += len)
    if (next_code_point(s, i, &len) == 0xFFFD && !(len == 3 && s.compare(i, 3, "\xEF\xBF\xBD") == 0)) return false;
  return true;
}

}  // namespace airlock
