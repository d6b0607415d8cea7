#include "airlock/rag/extract.h"

#include <string>

#include "text_builder.h"

namespace airlock::rag {
namespace {

std::string lower_extension(std::string_view file_name) {
  if (auto slash = file_name.find_last_of('/'); slash != std::string_view::npos) file_name.remove_prefix(slash + 1);
  const auto dot = file_name.find_last_of('.');
  if (dot == std::string_view::npos || dot == 0) return {};  // no extension, or a dot file
  std::string ext(file_name.substr(dot + 1));
  for (char& c : ext)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return ext;
}

// A name for messages: at most 100 bytes of what the caller gave.
std::string shown(std::string_view file_name) {
  std::string s = internal::one_line(file_name, 100);
  return s.empty() ? std::string("document") : s;
}


// The format, with messages that do not name the file.
Result<DocFormat> format_of(std::string_view file_name, std::string_view bytes) {
  const std::string ext = lower_extension(file_name);
  if (ext == "txt" || ext == "text") return DocFormat::kText;
  if (ext == "md" || ext == "markdown") return DocFormat::kMarkdown;
  if (ext == "html" || ext == "htm") return DocFormat::kHtml;
  if (ext == "pdf") {
    if (!bytes.starts_with("%PDF-")) return invalid_argument("not a PDF (does not start with %PDF-)");
    return DocFormat::kPdf;
  }
  if (ext == "docx") {
    if (!bytes.starts_with(std::string_view("PK\3\4", 4))) return invalid_argument("not a DOCX (not a zip archive)");
    return DocFormat::kDocx;
  }
  if (!internal::check_text_input(bytes, "").is_ok()) return invalid_argument("unsupported file type");
  return DocFormat::kText;
}

// A failure named after the file.
template <typename T>
Result<T> named(Result<T> r, std::string_view file_name) {
  if (!r.is_ok()) return r.status().with_context(shown(file_name));
  return r;
}

}  // namespace

std::string_view format_name(DocFormat format) {
  switch (format) {
    case DocFormat::kText: return "text";
    case DocFormat::kMarkdown: return "markdown";
    case DocFormat::kHtml: return "html";
    case DocFormat::kDocx: return "docx";
    case DocFormat::kPdf: return "pdf";
  }
  return "unknown";
}

Result<DocFormat> detect_format(std::string_view file_name, std::string_view bytes) {
  return named(format_of(file_name, bytes), file_name);
}

Result<ExtractedDocument> extract_document(std::string_view file_name, std::string_view bytes,
                                           const ExtractLimits& limits) {
  return named(internal::extract_unnamed(file_name, bytes, limits), file_name);
}

namespace internal {

Result<ExtractedDocument> extract_unnamed(std::string_view file_name, std::string_view bytes,
                                          const ExtractLimits& limits) {
  if (bytes.size() > limits.max_input_bytes)
    return resource_exhausted(std::to_string(bytes.size()) + " bytes is over the " +
                              std::to_string(limits.max_input_bytes) + "-byte limit (max_input_bytes)");
  AIRLOCK_ASSIGN_OR_RETURN(DocFormat format, format_of(file_name, bytes));
  switch (format) {
    case DocFormat::kText: return extract_plain_text(bytes, limits);
    case DocFormat::kMarkdown: return extract_markdown(bytes, limits);
    case DocFormat::kHtml: return extract_html(bytes, limits);
    case DocFormat::kDocx: return extract_docx(bytes, limits);
    case DocFormat::kPdf: return extract_pdf(bytes, limits);
  }
  return internal_error("unknown document format");
}

}  // namespace internal

}  // namespace airlock::rag
