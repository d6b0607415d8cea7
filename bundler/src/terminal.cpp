#include "terminal.h"

namespace airlock::bundler {

namespace {

// As shown() below; with keep_breaks, line feeds and tabs pass through.
std::string shown_impl(const std::string& s, bool keep_breaks) {
  std::string out;
  out.reserve(s.size());
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const std::size_t n = s.size();
  for (std::size_t i = 0; i < n;) {
    const unsigned char c = p[i];
    std::size_t len = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
    char32_t cp = len == 1 ? c : len == 2 ? (c & 0x1f) : len == 3 ? (c & 0x0f) : (c & 0x07);
    bool ok = len != 0 && i + len <= n;
    for (std::size_t k = 1; ok && k < len; ++k) {
      ok = (p[i + k] & 0xc0) == 0x80;
      cp = (cp << 6) | (p[i + k] & 0x3f);
    }
    static constexpr char32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    ok = ok && cp >= kMin[len] && cp <= 0x10ffff && !(cp >= 0xd800 && cp <= 0xdfff);
    const bool control = cp < 0x20 || (cp >= 0x7f && cp <= 0x9f) || (cp >= 0x202a && cp <= 0x202e) ||
                         (cp >= 0x2066 && cp <= 0x2069);
    if (ok && keep_breaks && (cp == '\n' || cp == '\t')) {
      out += static_cast<char>(cp);
      ++i;
      continue;
    }
    if (!ok || control) {
      out += '?';
      i += ok ? len : 1;
      continue;
    }
    out.append(s, i, len);
    i += len;
  }
  return out;
}

}  // namespace

std::string shown(const std::string& s) { return shown_impl(s, false); }

std::string shown_text(const std::string& s) {
  std::string unix_breaks;  // CR LF as LF (a lone CR could overwrite a line)
  unix_breaks.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i)
    if (!(s[i] == '\r' && i + 1 < s.size() && s[i + 1] == '\n')) unix_breaks += s[i];
  return shown_impl(unix_breaks, true);
}

std::string one_line(const std::string& s) {
  std::string flat;
  flat.reserve(s.size());
  bool space = false;
  for (const char c : s) {
    const bool ws = c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
    if (ws && space) continue;
    flat += ws ? ' ' : c;
    space = ws;
  }
  return shown_impl(flat, false);
}

}  // namespace airlock::bundler
