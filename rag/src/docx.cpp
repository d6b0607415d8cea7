// DOCX to text: find word/document.xml in the zip with libarchive (from
// memory), inflate it under a byte cap counted as the data arrives (a zip
// bomb's headers may claim anything), then walk it with libxml2's streaming
// reader. The XML is parsed without XML_PARSE_NOENT or XML_PARSE_DTDLOAD and
// any DOCTYPE is refused: Word never writes one, and refusing it stops
// entity-expansion bombs ("billion laughs") and external entities before any
// reference is read. It must be UTF-8, as Word writes it: the attribute
// scan (check_attribute_work) reads its bytes, so libxml2 must not decode
// them otherwise.
#include <archive.h>
#include <archive_entry.h>
#include <libxml/parser.h>
#include <libxml/xmlreader.h>

#include <climits>
#include <cstring>
#include <memory>
#include <vector>

#include "text_builder.h"

namespace airlock::rag::internal {
namespace {

constexpr std::size_t kMaxEntries = 10000;
// libxml2 2.9 looks up each element's and attribute's prefix through every
// namespace declaration in scope, one by one: 7,900 declarations on the
// root over 1M empty paragraphs took 13 s (0.14 s without them). Word
// declares a few dozen on the root and a few more on drawings.
constexpr std::size_t kMaxNamespacesInScope = 256;
constexpr std::string_view kDocumentXml = "word/document.xml";
// WordprocessingML namespaces: transitional (what Word writes) and strict.
constexpr std::string_view kWordNs = "http://schemas.openxmlformats.org/wordprocessingml/2006/main";
constexpr std::string_view kWordStrictNs = "http://purl.oclc.org/ooxml/wordprocessingml/main";

std::string archive_message(archive* a) {
  const char* m = archive_error_string(a);
  return m != nullptr ? one_line(m, 200) : std::string("unknown libarchive error");
}

struct ArchiveDeleter {
  void operator()(archive* a) const { archive_read_free(a); }
};

// The inflated word/document.xml, at most max_bytes of it.
Result<std::string> read_document_xml(std::string_view bytes, std::size_t max_bytes) {
  std::unique_ptr<archive, ArchiveDeleter> a(archive_read_new());
  if (a == nullptr) return internal_error("docx: libarchive: out of memory");
  archive_read_support_format_zip(a.get());
  if (archive_read_open_memory(a.get(), bytes.data(), bytes.size()) != ARCHIVE_OK)
    return invalid_argument("docx: not a zip archive: " + archive_message(a.get()));
  std::optional<std::string> xml;
  for (std::size_t n_entries = 0;; ++n_entries) {
    archive_entry* e = nullptr;
    const int rc = archive_read_next_header(a.get(), &e);
    if (rc == ARCHIVE_EOF) break;
    if (rc != ARCHIVE_OK && rc != ARCHIVE_WARN)
      return invalid_argument("docx: damaged or truncated zip: " + archive_message(a.get()));
    if (n_entries >= kMaxEntries)
      return resource_exhausted("docx: more than " + std::to_string(kMaxEntries) + " zip entries");
    const char* name = archive_entry_pathname(e);
    if (name == nullptr || kDocumentXml != name) continue;
    if (xml.has_value()) return invalid_argument("docx: two word/document.xml entries");
    std::string data;
    char block[64 * 1024];
    for (;;) {
      const la_ssize_t got = archive_read_data(a.get(), block, sizeof block);
      if (got < 0) return invalid_argument("docx: cannot inflate word/document.xml: " + archive_message(a.get()));
      if (got == 0) break;
      if (static_cast<std::size_t>(got) > max_bytes - data.size())
        return resource_exhausted("docx: word/document.xml inflates to more than " + std::to_string(max_bytes) +
                                  " bytes (max_docx_entry_bytes; zip bomb?)");
      data.append(block, static_cast<std::size_t>(got));
    }
    xml = std::move(data);
  }
  if (!xml.has_value()) return invalid_argument("docx: no word/document.xml (not a Word document)");
  return std::move(*xml);
}

struct ReaderDeleter {
  void operator()(xmlTextReader* r) const { xmlFreeTextReader(r); }
};

void keep_first_error(void* arg, xmlErrorPtr error) {
  auto* message = static_cast<std::string*>(arg);
  if (!message->empty() || error == nullptr) return;
  *message = one_line(error->message != nullptr ? error->message : "", 200) + " (line " + std::to_string(error->line) + ")";
}

bool is_word(xmlTextReader* r) {
  const xmlChar* ns = xmlTextReaderConstNamespaceUri(r);
  if (ns == nullptr) return false;
  const std::string_view v(reinterpret_cast<const char*>(ns));
  return v == kWordNs || v == kWordStrictNs;
}

// <mc:Fallback> of Office's markup-compatibility namespace.
bool is_fallback(xmlTextReader* r) {
  const xmlChar* ns = xmlTextReaderConstNamespaceUri(r);
  const xmlChar* local = xmlTextReaderConstLocalName(r);
  return ns != nullptr && local != nullptr &&
         std::string_view(reinterpret_cast<const char*>(ns)) ==
             "http://schemas.openxmlformats.org/markup-compatibility/2006" &&
         std::string_view(reinterpret_cast<const char*>(local)) == "Fallback";
}

// libxml2 decodes UTF-16 and UCS-4 (with or without a byte order mark) and
// EBCDIC from the first bytes, and any charset an XML declaration names.
// Here the bytes must start as UTF-8 XML does (a byte order mark, then
// '<' or a blank) and hold no NUL; a declared encoding is then ignored
// (XML_PARSE_IGNORE_ENC), so the parser reads the bytes the scan counted.
Status check_utf8_xml(std::string_view xml) {
  if (xml.starts_with("\xEF\xBB\xBF")) xml.remove_prefix(3);
  const bool xml_start =
      !xml.empty() && (xml[0] == '<' || xml[0] == ' ' || xml[0] == '\t' || xml[0] == '\r' || xml[0] == '\n');
  if (!xml_start || xml.find('\0') != std::string_view::npos)
    return invalid_argument("docx: word/document.xml is not UTF-8 XML (UTF-16, UTF-32 and EBCDIC are refused)");
  return Status::ok();
}

Status walk_document_xml(const std::string& xml, TextBuilder* text) {
  if (xml.size() > static_cast<std::size_t>(INT_MAX)) return resource_exhausted("docx: word/document.xml over 2 GiB");
  AIRLOCK_RETURN_IF_ERROR(check_utf8_xml(xml));
  // Refused before libxml2 sees it: a DTD is where entity bombs and external
  // entities are declared, and libxml2 may expand entities while reading
  // ahead of what the reader has returned. "<!DOCTYPE" cannot occur as
  // character data (it would be "&lt;!DOCTYPE"); in a comment or CDATA it is
  // refused too, which costs nothing for files Word writes.
  if (xml.find("<!DOCTYPE") != std::string::npos)
    return invalid_argument("docx: word/document.xml declares a DTD (refused: entity expansion)");
  AIRLOCK_RETURN_IF_ERROR(check_attribute_work(xml, /*html=*/false, "docx: word/document.xml"));
  xmlInitParser();
  // No NOENT (entities stay references), no DTDLOAD/DTDATTR/DTDVALID (no
  // external subset), NONET (no network even if asked), IGNORE_ENC (UTF-8
  // whatever the declaration says).
  const int options =
      XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING | XML_PARSE_NOCDATA | XML_PARSE_IGNORE_ENC;
  std::unique_ptr<xmlTextReader, ReaderDeleter> r(
      xmlReaderForMemory(xml.data(), static_cast<int>(xml.size()), nullptr, nullptr, options));
  if (r == nullptr) return internal_error("docx: libxml2 could not create a reader");
  std::string xml_error;
  xmlTextReaderSetStructuredErrorHandler(r.get(), keep_first_error, &xml_error);
  bool in_text = false;  // inside <w:t>
  std::vector<std::size_t> namespaces;  // (depth) declarations in scope of the open element at each depth
  // Inside <mc:Fallback>: Word writes text boxes and other new content
  // twice, in <mc:Choice> and again in <mc:Fallback> for older readers;
  // the fallback is skipped so the text is read once. Its depth, or -1.
  int fallback_depth = -1;
  for (;;) {
    const int rc = xmlTextReaderRead(r.get());
    if (rc == 0) break;
    if (rc < 0)
      return invalid_argument("docx: word/document.xml is not well-formed XML" +
                              (xml_error.empty() ? std::string() : ": " + xml_error));
    const int type = xmlTextReaderNodeType(r.get());
    if (type == XML_READER_TYPE_DOCUMENT_TYPE || type == XML_READER_TYPE_ENTITY_REFERENCE)
      return invalid_argument("docx: word/document.xml declares a DTD or entities (refused)");
    if (type == XML_READER_TYPE_ELEMENT) {
      // Counted as the reader meets each element, before libxml2 parses
      // more than a chunk beyond it.
      const int depth = xmlTextReaderDepth(r.get());
      const xmlNode* node = xmlTextReaderCurrentNode(r.get());
      if (depth < 0 || node == nullptr) return internal_error("docx: libxml2's reader lost its place");
      std::size_t declared = 0;
      for (const xmlNs* ns = node->nsDef; ns != nullptr; ns = ns->next) ++declared;
      namespaces.resize(static_cast<std::size_t>(depth) + 1);
      namespaces[depth] = (depth > 0 ? namespaces[depth - 1] : 0) + declared;
      if (namespaces[depth] > kMaxNamespacesInScope)
        return invalid_argument("docx: word/document.xml has more than " + std::to_string(kMaxNamespacesInScope) +
                                " namespace declarations in scope (line " +
                                std::to_string(xmlTextReaderGetParserLineNumber(r.get())) + ")");
    }
    if (fallback_depth >= 0) {
      if (type == XML_READER_TYPE_END_ELEMENT && xmlTextReaderDepth(r.get()) == fallback_depth) fallback_depth = -1;
      continue;
    }
    if (type == XML_READER_TYPE_ELEMENT && xmlTextReaderIsEmptyElement(r.get()) != 1 && is_fallback(r.get())) {
      fallback_depth = xmlTextReaderDepth(r.get());
      continue;
    }
    switch (type) {
      case XML_READER_TYPE_ELEMENT: {
        if (!is_word(r.get())) break;
        const char* local = reinterpret_cast<const char*>(xmlTextReaderConstLocalName(r.get()));
        const bool empty = xmlTextReaderIsEmptyElement(r.get()) == 1;
        if (std::strcmp(local, "t") == 0) in_text = !empty;
        else if (std::strcmp(local, "tab") == 0) AIRLOCK_RETURN_IF_ERROR(text->append("\t"));
        else if (std::strcmp(local, "br") == 0 || std::strcmp(local, "cr") == 0) text->line_break();
        else if (std::strcmp(local, "p") == 0 && empty) text->paragraph_break();
        break;
      }
      case XML_READER_TYPE_END_ELEMENT: {
        if (!is_word(r.get())) break;
        const char* local = reinterpret_cast<const char*>(xmlTextReaderConstLocalName(r.get()));
        if (std::strcmp(local, "t") == 0) in_text = false;
        else if (std::strcmp(local, "p") == 0) text->paragraph_break();
        break;
      }
      case XML_READER_TYPE_TEXT:
      case XML_READER_TYPE_SIGNIFICANT_WHITESPACE:
      case XML_READER_TYPE_WHITESPACE:
        if (in_text) {
          const xmlChar* v = xmlTextReaderConstValue(r.get());
          if (v != nullptr) AIRLOCK_RETURN_IF_ERROR(text->append(reinterpret_cast<const char*>(v)));
        }
        break;
      default:
        break;
    }
  }
  return Status::ok();
}

}  // namespace

Result<ExtractedDocument> extract_docx(std::string_view bytes, const ExtractLimits& limits) {
  AIRLOCK_ASSIGN_OR_RETURN(std::string xml, read_document_xml(bytes, limits.max_docx_entry_bytes));
  TextBuilder text(limits.max_output_bytes);
  AIRLOCK_RETURN_IF_ERROR(walk_document_xml(xml, &text));
  AIRLOCK_ASSIGN_OR_RETURN(std::string out, text.finish());
  return ExtractedDocument{DocFormat::kDocx, {}, std::move(out)};
}

}  // namespace airlock::rag::internal
