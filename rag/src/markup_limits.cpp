// A pass over HTML or XML bytes before libxml2 parses them, counting what
// its start-tag parsing costs. libxml2 2.9 (Debian 12) checks each
// attribute of a start tag against every earlier one of the same tag, so
// one element with tens of thousands of attributes takes seconds to hours
// (80,000 in a 709 KB page: 15.6 s). The scan follows start tags as the
// parsers do (quoted and unquoted values; comments, CDATA, declarations and
// processing instructions skipped; in HTML the raw text of <script> and
// <style> too) and counts the attribute pairs they would compare.
#include <cstdint>

#include "text_builder.h"

namespace airlock::rag::internal {
namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f'; }

bool iequals_at(std::string_view s, std::size_t at, std::string_view word) {
  if (at + word.size() > s.size()) return false;
  for (std::size_t k = 0; k < word.size(); ++k) {
    char c = s[at + k];
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    if (c != word[k]) return false;
  }
  return true;
}

// The index just past `end` at or after `from`, or the input's end.
std::size_t past(std::string_view s, std::size_t from, std::string_view end) {
  const std::size_t e = s.find(end, from);
  return e == std::string_view::npos ? s.size() : e + end.size();
}

}  // namespace

Status check_attribute_work(std::string_view s, bool html, std::string_view what) {
  std::uint64_t pairs = 0;
  const std::size_t n = s.size();
  std::size_t i = 0;
  while ((i = s.find('<', i)) != std::string_view::npos && ++i < n) {
    if (s.compare(i, 3, "!--") == 0) {
      i = past(s, i + 3, "-->");
      continue;
    }
    if (s.compare(i, 8, "![CDATA[") == 0) {
      i = past(s, i + 8, "]]>");
      continue;
    }
    if (s[i] == '!' || s[i] == '?') {  // <!DOCTYPE ...>, <?xml ...?>
      i = past(s, i, ">");
      continue;
    }
    const unsigned char first = static_cast<unsigned char>(s[i]);
    if (!((first >= 'a' && first <= 'z') || (first >= 'A' && first <= 'Z') || first == '_' || first >= 0x80))
      continue;  // an end tag, or a '<' that is text
    const std::size_t name = i;
    while (i < n && !is_space(s[i]) && s[i] != '>' && s[i] != '/') ++i;
    const bool raw_text = html && (iequals_at(s, name, "script") || iequals_at(s, name, "style"));
    const std::string_view raw_end = iequals_at(s, name, "script") ? "</script" : "</style";
    std::uint64_t attributes = 0;
    while (i < n) {
      while (i < n && (is_space(s[i]) || s[i] == '/')) ++i;
      if (i >= n || s[i] == '>') break;
      ++attributes;
      while (i < n && !is_space(s[i]) && s[i] != '=' && s[i] != '>' && s[i] != '/') ++i;
      while (i < n && is_space(s[i])) ++i;
      if (i < n && s[i] == '=') {
        ++i;
        while (i < n && is_space(s[i])) ++i;
        if (i < n && (s[i] == '"' || s[i] == '\'')) {
          const std::size_t close = s.find(s[i], i + 1);
          i = close == std::string_view::npos ? n : close + 1;
        } else {
          while (i < n && !is_space(s[i]) && s[i] != '>') ++i;
        }
      }
    }
    if (attributes > 1) pairs += attributes * (attributes - 1) / 2;
    if (pairs > kMaxAttributePairs)
      return invalid_argument(std::string(what) + ": too many attributes for the parser (a start tag with " +
                              std::to_string(attributes) + "; refused before parsing)");
    if (raw_text && i < n) {
      // Raw text up to the element's end tag, whatever it holds.
      std::size_t j = i;
      while ((j = s.find('<', j + 1)) != std::string_view::npos && !iequals_at(s, j, raw_end)) {
      }
      i = j == std::string_view::npos ? n : j;
    }
  }
  return Status::ok();
}

}  // namespace airlock::rag::internal
