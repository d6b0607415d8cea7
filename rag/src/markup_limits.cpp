// A pass over HTML or XML bytes before libxml2 parses them, counting what
// its start-tag parsing costs. libxml2 2.9 (Debian 12) checks each
// attribute of a start tag against every earlier one of the same tag, so
// one element with tens of thousands of attributes takes seconds to hours
// (80,000 in a 709 KB page: 15.6 s). The scan counts the attribute pairs
// the parser would compare, and it skips only what the parser skips.
//
// XML (DOCX): comments, CDATA and processing instructions; the parser
// stops at the first error, so anything malformed ends its work anyway.
//
// HTML follows libxml2 2.9.14's HTMLparser.c construct by construct, since
// whatever the scan skips and the parser reads is never counted:
//  - start tags: names of ASCII letters, digits and ":-_." cut at 100
//    characters (htmlParseHTMLName; the rest of a longer name is the next
//    attribute), blanks of " \t\n\r" only, an attribute name that does not
//    start like a name is dropped up to the next blank, '>' or "/>"
//    (quotes included), values quoted or up to a blank or '>', and a NUL
//    ends the tag;
//  - <script> and <style> are raw text only when their start tag ends in
//    '>': "<script/>" is closed at once and what follows is markup. Raw
//    text ends at an end tag of exactly that name ("</scriptx>" does not
//    end it: the parser skips that end tag and reads on as raw text), or
//    where a start tag that closes the element begins (<noscript> closes
//    <script>, <body> and <frameset> close <style>) right at the start of
//    the raw text or after such a skipped end tag;
//  - end tags run to the next '>', whatever lies between;
//  - comments end at "-->" or "--!>"; processing instructions (a name
//    after "<?", non-ASCII letters included) and DOCTYPEs at '>', a
//    DOCTYPE's quoted public and system identifiers included.
// Anything else after a '<' is text, and the scan goes on at the next byte.
//
// What the scan cannot see (an encoding the parser switches to, a nesting
// that only the parser's element stack knows, such as an end tag that
// closes <script> through an open <scriptx>) html.cpp bounds while parsing.
#include <libxml/chvalid.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "text_builder.h"

namespace airlock::rag::internal {
namespace {

// libxml2's IS_BLANK_CH: no form feed.
bool is_blank(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
bool is_ascii_letter(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool is_ascii_digit(char c) { return c >= '0' && c <= '9'; }

char lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

bool iequals_at(std::string_view s, std::size_t at, std::string_view word) {
  if (at + word.size() > s.size()) return false;
  for (std::size_t k = 0; k < word.size(); ++k)
    if (lower(s[at + k]) != word[k]) return false;
  return true;
}

// The index just past `end` at or after `from`, or the input's end.
std::size_t past(std::string_view s, std::size_t from, std::string_view end) {
  const std::size_t e = s.find(end, from);
  return e == std::string_view::npos ? s.size() : e + end.size();
}

std::size_t skip_blanks(std::string_view s, std::size_t i) {
  while (i < s.size() && is_blank(s[i])) ++i;
  return i;
}

// HTML_PARSER_BUFFER_SIZE: the longest tag or attribute name libxml2 reads
// at once.
constexpr std::size_t kHtmlNameMax = 100;

bool is_html_name_char(char c) {
  return is_ascii_letter(c) || is_ascii_digit(c) || c == ':' || c == '-' || c == '_' || c == '.';
}

// htmlParseHTMLName from `at`: the end of the name, or `at` when none starts there.
std::size_t html_name_end(std::string_view s, std::size_t at) {
  if (at >= s.size() || !(is_ascii_letter(s[at]) || s[at] == '_' || s[at] == ':' || s[at] == '.')) return at;
  std::size_t e = at;
  while (e < s.size() && e - at < kHtmlNameMax && is_html_name_char(s[e])) ++e;
  return e;
}

// The lower-cased HTML name at `at` (as htmlParseHTMLName returns it).
std::string html_name_at(std::string_view s, std::size_t at, std::size_t* end) {
  *end = html_name_end(s, at);
  std::string name(s.substr(at, *end - at));
  for (char& c : name) c = lower(c);
  return name;
}

// The code point at s[i] and its length: UTF-8 where valid, else the byte
// as Latin-1 (where libxml2 falls back to ISO-8859-1).
char32_t code_point_at(std::string_view s, std::size_t i, std::size_t* len) {
  const auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[i + k]); };
  const unsigned char c = b(0);
  *len = 1;
  if (c < 0x80) return c;
  const std::size_t n = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 ? 2 : 0;
  if (n == 0 || i + n > s.size()) return c;
  char32_t cp = c & (0x7F >> n);
  for (std::size_t k = 1; k < n; ++k) {
    if ((b(k) & 0xC0) != 0x80) return c;
    cp = (cp << 6) | (b(k) & 0x3F);
  }
  *len = n;
  return cp;
}

bool is_xml_letter(char32_t c) { return xmlIsBaseChar(c) || xmlIsIdeographic(c); }

// htmlParseName (processing-instruction targets, DOCTYPE names): XML 1.0
// names, non-ASCII letters included. The end, or `at` when none starts there.
std::size_t markup_name_end(std::string_view s, std::size_t at) {
  std::size_t i = at, len = 0;
  if (i >= s.size()) return at;
  const char32_t first = code_point_at(s, i, &len);
  if (!is_xml_letter(first) && first != '_' && first != ':') return at;
  for (i += len; i < s.size(); i += len) {
    const char32_t c = code_point_at(s, i, &len);
    if (!(is_xml_letter(c) || xmlIsDigit(c) || c == '.' || c == '-' || c == '_' || c == ':' || xmlIsCombining(c) ||
          xmlIsExtender(c)))
      break;
  }
  return i;
}

// htmlParseStartTag's attribute loop from just after the tag's name: the
// attributes it reads and where the tag ends (at its '>', at the '/' of
// "/>", or at a NUL or the input's end).
struct HtmlTagEnd {
  std::uint64_t attributes = 0;
  std::size_t end = 0;
};

HtmlTagEnd html_attributes(std::string_view s, std::size_t i) {
  const std::size_t n = s.size();
  const auto closes = [&](std::size_t k) { return s[k] == '>' || (s[k] == '/' && k + 1 < n && s[k + 1] == '>'); };
  HtmlTagEnd t;
  for (i = skip_blanks(s, i); i < n && s[i] != '\0' && !closes(i); i = skip_blanks(s, i)) {
    const std::size_t name_end = html_name_end(s, i);
    if (name_end == i) {
      // Not a name: dropped up to a blank or the tag's end, quotes and all.
      while (i < n && s[i] != '\0' && !is_blank(s[i]) && !closes(i)) ++i;
      continue;
    }
    ++t.attributes;
    i = skip_blanks(s, name_end);
    if (i >= n || s[i] != '=') continue;
    i = skip_blanks(s, i + 1);
    if (i < n && (s[i] == '"' || s[i] == '\'')) {
      const std::size_t close = s.find_first_of(std::string_view(s[i] == '"' ? "\"\0" : "'\0", 2), i + 1);
      i = close == std::string_view::npos ? n : s[close] == '\0' ? close : close + 1;
    } else {
      while (i < n && s[i] != '\0' && !is_blank(s[i]) && s[i] != '>') ++i;
    }
  }
  t.end = i;
  return t;
}

// htmlStartClose: a start tag that closes an open <script> or <style>.
bool closes_raw_element(std::string_view tag, std::string_view raw) {
  return (raw == "script" && tag == "noscript") || (raw == "style" && (tag == "body" || tag == "frameset"));
}

// From the start of the raw text of <script> or <style> (`raw`): where the
// parser reads markup again. Each turn is one of htmlParseContentInternal.
std::size_t skip_raw_text(std::string_view s, std::size_t i, std::string_view raw) {
  const std::size_t n = s.size();
  std::string end_tag = "</";
  end_tag += raw;
  for (;;) {
    if (i + 1 < n && s[i] == '<' && s[i + 1] == '/') {
      // An end tag: the element's own ends the raw text; any other is
      // skipped to its '>' (a "</" without a name: those two bytes).
      std::size_t name_end = 0;
      const std::string name = html_name_at(s, i + 2, &name_end);
      if (name_end == i + 2) {
        i += 2;
        continue;
      }
      if (name == raw) return i;
      std::size_t k = skip_blanks(s, name_end);
      while (k < n && s[k] != '>' && s[k] != '\0') ++k;
      if (k < n && s[k] == '\0') return k;  // the parser stops there
      i = k < n ? k + 1 : n;
      continue;
    }
    // A start tag that closes the element (its name read without '.').
    if (i + 1 < n && s[i] == '<' && (is_ascii_letter(s[i + 1]) || s[i + 1] == '_' || s[i + 1] == ':')) {
      std::string tag;
      for (std::size_t e = i + 1; e < n && e - (i + 1) < kHtmlNameMax && is_html_name_char(s[e]) && s[e] != '.'; ++e)
        tag += lower(s[e]);
      if (closes_raw_element(tag, raw)) return i;
    }
    if (i >= n || s[i] == '\0') return i;  // a NUL here ends the parse
    // htmlParseScript: raw text up to "</" and the element's name, in any case.
    std::size_t j = i;
    while ((j = s.find("</", j)) != std::string_view::npos && !iequals_at(s, j, end_tag)) j += 2;
    if (j == std::string_view::npos) return n;
    i = j;
  }
}

// htmlParseDocTypeDecl from just after "<!DOCTYPE": the index past its end.
std::size_t skip_html_doctype(std::string_view s, std::size_t i) {
  const std::size_t n = s.size();
  const auto literal = [&](std::size_t k) {  // a quoted identifier runs to its quote or a NUL
    if (k >= n || (s[k] != '"' && s[k] != '\'')) return k;
    const std::size_t close = s.find_first_of(std::string_view(s[k] == '"' ? "\"\0" : "'\0", 2), k + 1);
    return close == std::string_view::npos ? n : s[close] == '\0' ? close : close + 1;
  };
  i = skip_blanks(s, markup_name_end(s, skip_blanks(s, i)));
  if (iequals_at(s, i, "system")) {
    i = literal(skip_blanks(s, i + 6));
  } else if (iequals_at(s, i, "public")) {
    i = skip_blanks(s, literal(skip_blanks(s, i + 6)));
    i = literal(i);
  }
  i = skip_blanks(s, i);
  while (i < n && s[i] != '>' && s[i] != '\0') ++i;
  return i < n && s[i] == '>' ? i + 1 : i;
}

// htmlParseComment from just after "<!--": the index past its "-->" or
// "--!>" (one pass: looking for each separately would read the rest of the
// input again for every comment).
std::size_t past_html_comment(std::string_view s, std::size_t from) {
  for (std::size_t j = from; (j = s.find("--", j)) != std::string_view::npos; ++j) {
    if (j + 2 < s.size() && s[j + 2] == '>') return j + 3;
    if (j + 3 < s.size() && s[j + 2] == '!' && s[j + 3] == '>') return j + 4;
  }
  return s.size();
}

Status too_many(std::string_view what, std::uint64_t attributes) {
  return invalid_argument(std::string(what) + ": too many attributes for the parser (a start tag with " +
                          std::to_string(attributes) + "; refused before parsing)");
}

Status check_html(std::string_view s, std::string_view what) {
  std::uint64_t pairs = 0;
  const std::size_t n = s.size();
  std::size_t i = 0;
  while ((i = s.find('<', i)) != std::string_view::npos && ++i < n) {
    if (s.compare(i, 3, "!--") == 0) {
      i = past_html_comment(s, i + 3);
      continue;
    }
    if (iequals_at(s, i, "!doctype")) {
      i = skip_html_doctype(s, i + 8);
      continue;
    }
    if (s[i] == '?') {
      if (markup_name_end(s, i + 1) > i + 1) i = past(s, i + 1, ">");  // a processing instruction
      continue;  // else "<?" is text
    }
    if (s[i] == '/') {
      std::size_t name_end = html_name_end(s, i + 1);
      if (name_end == i + 1) continue;  // "</" is skipped, what follows is text
      i = skip_blanks(s, name_end);
      while (i < n && s[i] != '>' && s[i] != '\0') ++i;
      continue;
    }
    if (!is_ascii_letter(s[i])) continue;  // a '<' that is text: on from the next byte
    std::size_t name_end = 0;
    const std::string tag = html_name_at(s, i, &name_end);
    const HtmlTagEnd t = html_attributes(s, name_end);
    if (t.attributes > 1) pairs += t.attributes * (t.attributes - 1) / 2;
    if (pairs > kMaxAttributePairs) return too_many(what, t.attributes);
    i = t.end;
    // Raw text only after "<script ...>"; "<script/>" is empty and a tag
    // cut short by a NUL or the input's end is dropped.
    if ((tag == "script" || tag == "style") && i < n && s[i] == '>') i = skip_raw_text(s, i + 1, tag);
  }
  return Status::ok();
}

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f'; }

Status check_xml(std::string_view s, std::string_view what) {
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
    if (s.compare(i, 8, "![CDATA[") == 0) {
      i = past(s, i + 8, "]]>");
      continue;
    }
    if (s[i] == '?' && i + 1 < n && (is_ascii_letter(s[i + 1]) || s[i + 1] == '_' || s[i + 1] == ':')) {
      i = past(s, i, "?>");
      continue;
    }
    const unsigned char first = static_cast<unsigned char>(s[i]);
    if (!(is_ascii_letter(s[i]) || first == '_' || first == ':' || first >= 0x80)) continue;
    while (i < n && !is_space(s[i]) && s[i] != '>' && s[i] != '/') ++i;
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
    if (pairs > kMaxAttributePairs) return too_many(what, attributes);
  }
  return Status::ok();
}

}  // namespace

Status check_attribute_work(std::string_view s, bool html, std::string_view what) {
  return html ? check_html(s, what) : check_xml(s, what);
}

std::uint64_t html_start_tag_attributes(std::string_view rest) { return html_attributes(rest, 0).attributes; }

}  // namespace airlock::rag::internal
