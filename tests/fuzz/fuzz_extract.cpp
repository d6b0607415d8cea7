// libFuzzer target: document text extraction (rag/) for text, Markdown, HTML
// and DOCX; the first byte picks the file name, so the format. PDF is left
// out: it runs a child process per input. Every text that comes back must
// keep the output contract of extract.h; a breach aborts.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "airlock/rag/extract.h"

namespace {

bool valid_utf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    std::size_t len = c < 0x80 ? 1 : c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
    if (len == 0 || s.size() - i < len) return false;
    for (std::size_t k = 1; k < len; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xc0) != 0x80) return false;
    i += len;
  }
  return true;
}

void check_contract(std::string_view t) {
  if (t.empty() || !valid_utf8(t)) std::abort();
  if (t.front() == '\n' || t.back() == '\n' || t.find("\n\n\n") != std::string_view::npos) std::abort();
  if (t.find("  ") != std::string_view::npos || t.find(" \n") != std::string_view::npos ||
      t.find("\n ") != std::string_view::npos || t.find("\t\n") != std::string_view::npos)
    std::abort();
  if (t.front() == ' ' || t.front() == '\t' || t.back() == ' ' || t.back() == '\t') std::abort();
  for (char c : t) {
    const auto u = static_cast<unsigned char>(c);
    if ((u < 0x20 && c != '\n' && c != '\t') || u == 0x7f) std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  static constexpr const char* kNames[] = {"f.txt", "f.md", "f.html", "f.docx", "f"};
  const char* name = kNames[data[0] % (sizeof kNames / sizeof kNames[0])];
  airlock::rag::ExtractLimits limits;
  limits.max_output_bytes = 1 << 20;
  limits.max_docx_entry_bytes = 4 << 20;
  limits.pdftotext = "/nonexistent/pdftotext";  // never run a child from the fuzzer
  auto r = airlock::rag::extract_document(name, {reinterpret_cast<const char*>(data) + 1, size - 1}, limits);
  if (!r.is_ok()) return 0;
  check_contract(r->text);
  if (r->title.size() > 1024 || !valid_utf8(r->title) || r->title.find('\n') != std::string::npos) std::abort();
  // A title is one line of printable text, as the store accepts it: no
  // ASCII control, no C1 control (UTF-8 C2 80-9F).
  for (std::size_t i = 0; i < r->title.size(); ++i) {
    const auto u = static_cast<unsigned char>(r->title[i]);
    if (u < 0x20 || u == 0x7f) std::abort();
    if (u == 0xC2 && i + 1 < r->title.size() && static_cast<unsigned char>(r->title[i + 1]) <= 0x9F) std::abort();
  }
  return 0;
}
