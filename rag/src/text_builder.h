// Internal to airlock_rag: the normaliser every format writes through, UTF-8
// validation, and the per-format extractors that extract.cpp dispatches to.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "airlock/common/status.h"
#include "airlock/rag/extract.h"

namespace airlock::rag::internal {

// Offset of the first byte that does not start a valid UTF-8 sequence
// (strict: no overlong forms, no surrogates, nothing above U+10FFFF), or
// nullopt when all of s is valid.
std::optional<std::size_t> first_invalid_utf8(std::string_view s);

// The input as text or Markdown: valid UTF-8 and no NUL, else
// kInvalidArgument naming the byte offset. `what` prefixes the message.
Status check_text_input(std::string_view bytes, std::string_view what);

// The attribute comparisons libxml2 2.9's start-tag parsing makes over
// the whole input (pairs of attributes of one tag), at most this many: a
// tag of 8,000 attributes alone, or 100,000 elements of 25 each. About a
// fifth of a second.
inline constexpr std::uint64_t kMaxAttributePairs = 32'000'000;

// kInvalidArgument, before libxml2 sees `markup` (HTML, or XML when `html`
// is false), when parsing it would compare more attribute pairs than
// kMaxAttributePairs (markup_limits.cpp). `what` prefixes the message.
// The scan reads the bytes as given: html.cpp bounds what an encoding the
// HTML parser switches to could hide from it, docx.cpp takes UTF-8 only.
Status check_attribute_work(std::string_view markup, bool html, std::string_view what);

// The attributes libxml2 2.9's HTML parser reads in a start tag, `rest`
// beginning just after the tag's name (markup_limits.cpp).
std::uint64_t html_start_tag_attributes(std::string_view rest);

// s without a leading UTF-8 byte order mark.
std::string_view strip_bom(std::string_view s);

// Streams extracted text into the output contract of extract.h: CR/CRLF to
// '\n', controls to spaces, runs of spaces collapsed, lines trimmed, blank
// lines collapsed to one paragraph break. Appends fail with
// kResourceExhausted as soon as the normalised text passes max_bytes, so an
// extractor can stop early; memory stays within max_bytes plus pending
// whitespace. Not thread-safe; one builder per extraction.
class TextBuilder {
 public:
  explicit TextBuilder(std::size_t max_bytes) : max_bytes_(max_bytes) {}

  // Appends raw text (any bytes; UTF-8 is checked in finish()).
  Status append(std::string_view s);
  // Ends the current line / paragraph. Repeated breaks collapse; breaks
  // before any text are dropped.
  void line_break();
  void paragraph_break();

  // The text so far, checked: kInvalidArgument when it is not valid UTF-8
  // (naming the offset in the output) or empty ("no text").
  Result<std::string> finish();

  std::size_t size() const { return out_.size(); }

 private:
  bool put(char c);  // false once the output passed max_bytes_
  Status overflow_status() const;

  std::size_t max_bytes_;
  bool overflow_ = false;
  std::string out_;
  std::string pending_ws_;      // spaces/tabs seen since the last visible byte
  int pending_newlines_ = 0;    // 0, 1 (line break) or 2 (paragraph break)
  bool last_was_cr_ = false;    // the previous byte was '\r' (CRLF across appends)
};

// Collapses whitespace (any ASCII space or control) to single spaces, trims,
// and cuts at max_bytes on a UTF-8 boundary: for titles.
std::string one_line(std::string_view s, std::size_t max_bytes);

// extract_document() with messages that do not name the file (for a
// caller that names it itself).
Result<ExtractedDocument> extract_unnamed(std::string_view file_name, std::string_view bytes,
                                          const ExtractLimits& limits);

Result<ExtractedDocument> extract_plain_text(std::string_view bytes, const ExtractLimits& limits);
Result<ExtractedDocument> extract_markdown(std::string_view bytes, const ExtractLimits& limits);
Result<ExtractedDocument> extract_html(std::string_view bytes, const ExtractLimits& limits);
Result<ExtractedDocument> extract_docx(std::string_view bytes, const ExtractLimits& limits);
Result<ExtractedDocument> extract_pdf(std::string_view bytes, const ExtractLimits& limits);

constexpr std::size_t kMaxTitleBytes = 1024;

}  // namespace airlock::rag::internal
