// A pass over HTML or XML bytes before libxml2 parses them, counting what
// its start-tag parsing costs. libxml2 2.9 (Debian 12) checks each
// attribute of a start tag against every earlier one of the same tag, so
// one element with tens of thousands of attributes takes seconds to hours
// (80,000 in a 709 KB page: 15.6 s). The scan follows start tags as the
// parsers do (quoted and unquoted values) and counts the attribute pairs
// they would compare. It skips only what the parser skips: comments, a
// DOCTYPE, processing instructions that have a target, CDATA in XML, and
// in HTML the raw text of <script> and <style>; anything else after a '<'
// that starts no tag for the parser (in HTML: not an ASCII letter) is
// text, and the scan goes on at the next byte. Where the scan and the
// parser could disagree, the scan counts more, never less.
#include <cstdint>

#include "text_builder.h"

namespace airlock::rag::internal {
namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f'; }

bool is_ascii_letter(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

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
    if (iequals_at(s, i, "!doctype")) {
      i = past(s, i, ">");
      continue;
    }
    if (!html && s.compare(i, 8, "![CDATA[") == 0) {
      i = past(s, i + 8, "]]>");
      continue;
    }
    if (s[i] == '?' && i + 1 < n && (is_ascii_letter(s[i + 1]) || s[i + 1] == '_' || s[i + 1] == ':')) {
      i = past(s, i, html ? ">" : "?>");  // a processing instruction (HTML ends it at '>')
      continue;
    }
    const unsigned char first = static_cast<unsigned char>(s[i]);
    const bool starts_tag = is_ascii_letter(s[i]) || (!html && (first == '_' || first == ':' || first >= 0x80));
    if (!starts_tag) continue;  // an end tag, or a '<' that is text: on from the next byte
    const std::size_t name = i;
    while (i < n && !is_space(s[i]) && s[i] != '>' && s[i] != '/') ++i;
    const std::string_view tag = s.substr(name, i - name);
    const bool is_script = tag.size() == 6 && iequals_at(tag, 0, "script");
    const bool is_style = tag.size() == 5 && iequals_at(tag, 0, "style");
    const bool raw_text = html && (is_script || is_style);
    const std::string_view raw_end = is_script ? "</script" : "</style";
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
