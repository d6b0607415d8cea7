#include "text_builder.h"

#include <algorithm>

#include "airlock/common/utf8.h"

namespace airlock::rag::internal {

std::optional<std::size_t> first_invalid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const std::size_t n = s.size();
  std::size_t i = 0;
  while (i < n) {
    const unsigned char c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t len = 0;
    unsigned char lo = 0x80, hi = 0xbf;  // allowed range of the second byte
    if (c >= 0xc2 && c <= 0xdf) {
      len = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
      len = 3;
      if (c == 0xe0) lo = 0xa0;  // overlong
      if (c == 0xed) hi = 0x9f;  // surrogates
    } else if (c >= 0xf0 && c <= 0xf4) {
      len = 4;
      if (c == 0xf0) lo = 0x90;  // overlong
      if (c == 0xf4) hi = 0x8f;  // above U+10FFFF
    } else {
      return i;
    }
    if (n - i < len || p[i + 1] < lo || p[i + 1] > hi) return i;
    for (std::size_t k = 2; k < len; ++k)
      if ((p[i + k] & 0xc0) != 0x80) return i;
    i += len;
  }
  return std::nullopt;
}

Status check_text_input(std::string_view bytes, std::string_view what) {
  if (auto bad = first_invalid_utf8(bytes))
    return invalid_argument(std::string(what) + ": not valid UTF-8 at byte offset " + std::to_string(*bad));
  if (auto nul = bytes.find('\0'); nul != std::string_view::npos)
    return invalid_argument(std::string(what) + ": NUL byte at offset " + std::to_string(nul) + " (binary file?)");
  return Status::ok();
}

std::string_view strip_bom(std::string_view s) {
  if (s.starts_with("\xEF\xBB\xBF")) s.remove_prefix(3);
  return s;
}

Status TextBuilder::append(std::string_view s) {
  if (overflow_) return overflow_status();
  std::size_t i = 0;
  while (i < s.size()) {
    // Visible bytes (most of any text) go in as one run; the rest one by one.
    std::size_t j = i;
    while (j < s.size() && static_cast<unsigned char>(s[j]) > 0x20 && s[j] != 0x7f) ++j;
    if (j == i) {
      if (!put(s[i])) return overflow_status();
      ++i;
      continue;
    }
    if (!put(s[i])) return overflow_status();  // flushes pending breaks and whitespace
    const std::string_view run = s.substr(i + 1, j - i - 1);
    if (run.size() > max_bytes_ - out_.size()) {
      overflow_ = true;
      return overflow_status();
    }
    out_.append(run);
    i = j;
  }
  return Status::ok();
}

Status TextBuilder::overflow_status() const {
  return resource_exhausted("extracted text is larger than the " + std::to_string(max_bytes_) +
                            "-byte limit (max_output_bytes)");
}

bool TextBuilder::put(char c) {
  if (last_was_cr_) {
    last_was_cr_ = false;
    if (c == '\n') return true;  // the LF of a CRLF
  }
  if (c == '\r') {
    last_was_cr_ = true;
    c = '\n';
  }
  if (c == '\n') {
    pending_ws_.clear();  // trailing whitespace
    if (!out_.empty() && pending_newlines_ < 2) ++pending_newlines_;
    return true;
  }
  const bool at_line_start = out_.empty() || pending_newlines_ > 0;
  const auto u = static_cast<unsigned char>(c);
  if (c == '\t' || c == ' ' || u < 0x20 || u == 0x7f) {
    if (at_line_start) return true;  // leading whitespace
    // Beyond the limit any flush overflows anyway; stop growing.
    if (pending_ws_.size() > max_bytes_) return true;
    if (c == '\t') pending_ws_ += '\t';
    else if (pending_ws_.empty() || pending_ws_.back() != ' ') pending_ws_ += ' ';
    return true;
  }
  if (pending_newlines_ > 0) {
    out_.append(static_cast<std::size_t>(pending_newlines_), '\n');
    pending_newlines_ = 0;
  }
  out_ += pending_ws_;
  pending_ws_.clear();
  out_ += c;
  if (out_.size() > max_bytes_) {
    overflow_ = true;
    return false;
  }
  return true;
}

void TextBuilder::line_break() {
  pending_ws_.clear();
  if (!out_.empty()) pending_newlines_ = std::max(pending_newlines_, 1);
}

void TextBuilder::paragraph_break() {
  pending_ws_.clear();
  if (!out_.empty()) pending_newlines_ = 2;
}

Result<std::string> TextBuilder::finish() {
  if (overflow_) return overflow_status();
  if (auto bad = first_invalid_utf8(out_))
    return invalid_argument("extracted text is not valid UTF-8 at byte offset " + std::to_string(*bad));
  if (out_.empty()) return invalid_argument("no text");
  pending_ws_.clear();
  pending_newlines_ = 0;
  return std::move(out_);
}

namespace {

// U+0080-U+009F (C1 controls) as Windows-1252 reads those bytes: what a
// page labelled ISO-8859-1, or decoded as Latin-1 for want of a label,
// meant by them (HTML5 decodes that label as Windows-1252). 0: undefined.
constexpr char16_t kCp1252High[32] = {
    0x20AC, 0,      0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160, 0x2039, 0x0152, 0, 0x017D, 0,
    0,      0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0, 0x017E, 0x0178};

}  // namespace

std::string one_line(std::string_view s, std::size_t max_bytes) {
  std::string out;
  bool space = false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    const auto u = static_cast<unsigned char>(s[i]);
    // A C1 control (UTF-8 C2 80-9F) becomes its Windows-1252 character, or
    // a space where that is undefined: a title is one line of text.
    char16_t c1 = 0;
    const bool is_c1 = u == 0xC2 && i + 1 < s.size() && static_cast<unsigned char>(s[i + 1]) >= 0x80 &&
                       static_cast<unsigned char>(s[i + 1]) <= 0x9F;
    if (is_c1) c1 = kCp1252High[static_cast<unsigned char>(s[++i]) - 0x80];
    if (u <= 0x20 || u == 0x7f || (is_c1 && c1 == 0)) {
      space = !out.empty();
      continue;
    }
    if (space) out += ' ';
    space = false;
    if (is_c1) append_utf8(out, c1);
    else out += s[i];
    if (out.size() > max_bytes) break;
  }
  if (out.size() > max_bytes) {
    std::size_t cut = max_bytes;
    while (cut > 0 && (static_cast<unsigned char>(out[cut]) & 0xc0) == 0x80) --cut;
    out.resize(cut);
    while (!out.empty() && out.back() == ' ') out.pop_back();
  }
  if (first_invalid_utf8(out)) return {};
  return out;
}

Result<ExtractedDocument> extract_plain_text(std::string_view bytes, const ExtractLimits& limits) {
  AIRLOCK_RETURN_IF_ERROR(check_text_input(bytes, "text"));
  TextBuilder b(limits.max_output_bytes);
  AIRLOCK_RETURN_IF_ERROR(b.append(strip_bom(bytes)));
  AIRLOCK_ASSIGN_OR_RETURN(std::string text, b.finish());
  return ExtractedDocument{DocFormat::kText, {}, std::move(text)};
}

}  // namespace airlock::rag::internal
