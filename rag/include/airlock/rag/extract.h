// Document text extraction for RAG ingestion: turns an uploaded file (plain
// text, Markdown, HTML, DOCX, PDF) into normalised UTF-8 text for the chunker.
//
// Every document is hostile. Sizes are checked before anything is parsed;
// HTML and DOCX are parsed in-process with libxml2 (no network, no external
// entities, no entity expansion) and libarchive (the inflated size of
// word/document.xml is counted while inflating, never taken from headers);
// PDF is never parsed in this process: poppler's pdftotext runs as a child
// under resource limits (see ExtractLimits) and only its stdout is read.
//
// Output text contract (the chunker relies on it), whatever the format:
//   - valid UTF-8 (strict: no overlongs, surrogates or code points > U+10FFFF);
//   - '\n' line ends only (CRLF and CR are normalised), no NUL and no other
//     C0 control or DEL except '\n' and '\t' (they become spaces);
//   - runs of spaces collapse to one; spaces and tabs are trimmed from both
//     ends of every line; tabs inside a line are kept;
//   - paragraphs are separated by exactly one blank line; no blank lines at
//     the start or end and no final newline;
//   - a leading UTF-8 byte order mark is dropped;
//   - never empty: a document with no text is an error.
//
// Errors (Status codes, see airlock/common/status.h):
//   kInvalidArgument   unsupported type, extension/content mismatch,
//                      malformed document (invalid UTF-8 with its byte offset,
//                      NUL bytes in text, not a zip, no word/document.xml,
//                      XML that is not well-formed or carries a DTD, a PDF
//                      pdftotext rejects or crashes on), or no text at all.
//   kResourceExhausted a limit in ExtractLimits was hit (input size, output
//                      size, inflated document.xml size, zip entry count,
//                      pdftotext wall-clock or CPU time); the message names it.
//   kUnavailable       pdftotext is not installed at ExtractLimits::pdftotext.
//   kIoError           the operating system refused pipes, fork or poll.
//
// Thread-safety: extract_document and detect_format may be called from many
// threads at once; they share no state (libxml2 is initialised once).
//
// SIGPIPE: writing the PDF to a pdftotext that exits early would raise
// SIGPIPE. The PDF path blocks SIGPIPE in the calling thread for the duration
// of the child's run and consumes any SIGPIPE it caused before restoring the
// mask, so callers need not ignore SIGPIPE (airlockd does anyway).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "airlock/common/status.h"

namespace airlock::rag {

enum class DocFormat { kText, kMarkdown, kHtml, kDocx, kPdf };

// "text", "markdown", "html", "docx", "pdf".
std::string_view format_name(DocFormat format);

// Limits on one extraction. The defaults suit an appliance ingesting office
// documents; every one is enforced while working, not after.
struct ExtractLimits {
  std::size_t max_input_bytes = 64 << 20;       // larger input: kResourceExhausted
  std::size_t max_output_bytes = 16 << 20;      // normalised text (and raw pdftotext output)
  std::size_t max_docx_entry_bytes = 64 << 20;  // inflated word/document.xml, counted while inflating
  int pdf_timeout_ms = 30000;                   // wall clock; RLIMIT_CPU is this rounded up to seconds
  std::size_t pdf_memory_bytes = 512 << 20;     // RLIMIT_AS of the pdftotext child
  std::string pdftotext = "/usr/bin/pdftotext";
};

struct ExtractedDocument {
  DocFormat format = DocFormat::kText;
  // May be empty: the HTML <title>, or the first Markdown heading (which
  // also stays in text). Normalised like text, on one line, at most 1 KiB.
  std::string title;
  std::string text;  // follows the output text contract above
};

// The format of a file from its name's extension (.txt .text .md .markdown
// .html .htm .docx .pdf, case-insensitive), confirmed by content: a .pdf must
// start with "%PDF-" and a .docx with the zip magic "PK\3\4", else
// kInvalidArgument. Any other extension (or none) is text when the bytes are
// valid UTF-8 without NUL, else kInvalidArgument "unsupported file type".
// Reads only the bytes it needs to decide (all of them for unknown types).
Result<DocFormat> detect_format(std::string_view file_name, std::string_view bytes);

// Detects the format and extracts the text. bytes need only live for the
// call. Plain text and Markdown are rejected, not repaired, when they are not
// valid UTF-8 (the message names the byte offset) or contain NUL bytes. May
// run /usr/bin/pdftotext (limits.pdftotext) for PDF and block for up to
// limits.pdf_timeout_ms.
Result<ExtractedDocument> extract_document(std::string_view file_name, std::string_view bytes,
                                           const ExtractLimits& limits = {});

// One line for the log: how the PDF extractor is confined in this process
// (seccomp filter, Landlock ABI or its absence, rlimits).
std::string pdf_sandbox_summary();

}  // namespace airlock::rag
