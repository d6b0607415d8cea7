// HTML to text with libxml2's HTML parser driven through SAX callbacks: no
// tree is built (memory stays near the output size) and nothing here
// recurses, so nesting depth costs no stack. libxml2 keeps its own stack of
// open elements and scans all of it for each end tag that matches none (a
// stray end tag never reaches our callbacks): kMaxDepth bounds that stack,
// and kMaxMismatchedEndTags (counted through libxml2's error reports) the
// number of such scans, so hostile input cannot make parsing quadratic.
//
// Attributes: libxml2 2.9 compares each attribute of a start tag with every
// earlier one. check_attribute_work() counts those comparisons in the bytes
// before parsing; the parser then bounds them itself, for what the scan
// cannot see (the page decoded from UTF-16 or from a charset that a <meta>
// names, or an element stack that ends a <script> where the scan did not):
//  - its name dictionary holds at most kMaxNameBytes: every attribute of
//    one tag needs a distinct name there, so no tag holds more than about
//    20,000 (a fraction of a second);
//  - each start tag's attributes are counted when it is reported, and a
//    misplaced <html>, <head> or <body>, which libxml2 drops unreported,
//    from its bytes when libxml2 reports dropping it, before it reads its
//    attributes; all together against kMaxAttributePairs;
//  - a repeated attribute name, compared with the tag's attributes before
//    it, is reported: at most kMaxRepeatedAttributes in one tag.
//
// The document is parsed whole (htmlParseDocument): libxml2 2.9's push
// parser drops everything after </html> or after a stray end tag at the
// start, and does not look for a UTF-16 byte order mark.
#include <libxml/HTMLparser.h>
#include <libxml/dict.h>
#include <libxml/parser.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstdint>
#include <cstring>

#include "text_builder.h"

namespace airlock::rag::internal {
namespace {

constexpr int kMaxDepth = 1024;  // browsers stop nesting at 512
constexpr std::size_t kMaxMismatchedEndTags = 100000;
// The parser's name dictionary (element, attribute and entity names). It
// grows in pools of 1,000, 4,000, 16,000 and 64,000 bytes and takes no new
// pool once it holds more than this: at most about 85 KB of names.
constexpr std::size_t kMaxNameBytes = 64 * 1024;
constexpr std::size_t kMaxRepeatedAttributes = 1000;

// Elements whose content is never text for a reader.
constexpr std::array kSkipped = {"script", "style", "noscript", "template", "head", "svg", "math",
                                 "iframe", "object", "embed", "canvas", "select", "textarea", "button"};
// Elements that end a line (list items, rows, breaks) or a paragraph.
constexpr std::array kLineBreaks = {"br", "li", "tr", "dt", "dd", "option", "hr"};
constexpr std::array kParagraphs = {"p",        "div",     "h1",      "h2",         "h3",         "h4",
                                    "h5",       "h6",      "section", "article",    "aside",      "header",
                                    "footer",   "nav",     "main",    "blockquote", "pre",        "ul",
                                    "ol",       "dl",      "table",   "thead",      "tbody",      "tfoot",
                                    "caption",  "figure",  "figcaption", "address", "details",    "summary",
                                    "fieldset", "legend",  "form",    "body",       "html",       "center",
                                    "dialog",   "menu",    "hgroup"};
constexpr std::array kCells = {"td", "th"};

template <std::size_t N>
bool is_one_of(const char* name, const std::array<const char*, N>& names) {
  return std::any_of(names.begin(), names.end(), [&](const char* n) { return std::strcmp(name, n) == 0; });
}

struct HtmlState {
  explicit HtmlState(std::size_t max_bytes) : text(max_bytes) {}
  TextBuilder text;
  htmlParserCtxtPtr ctxt = nullptr;
  Status error;
  int depth = 0;
  std::size_t mismatched = 0;  // end tags that matched no open element
  std::uint64_t attribute_pairs = 0;  // attribute comparisons the parser made
  std::size_t repeated = 0;           // repeated attribute names since the last start tag
  int skip_depth = 0;  // > 0 inside an element of kSkipped
  int svg_depth = 0;   // an <svg> has <title> elements of its own
  int pre_depth = 0;
  bool in_title = false;
  bool have_title = false;
  std::string title;

  void check(Status s) {
    if (s.is_ok()) return;
    if (error.is_ok()) error = std::move(s);
    if (ctxt != nullptr) xmlStopParser(ctxt);
  }
};

HtmlState* state_of(void* ctx) { return static_cast<HtmlState*>(ctx); }
const char* name_of(const xmlChar* name) { return name != nullptr ? reinterpret_cast<const char*>(name) : ""; }

// A start tag of `n` attributes has been read (or, for one libxml2 drops,
// is about to be): its comparisons, those of its repeated names included,
// join the document's.
void count_attributes(HtmlState* s, std::uint64_t n) {
  s->attribute_pairs += n * (n > 0 ? n - 1 : 0) / 2 + s->repeated * n;
  s->repeated = 0;
  if (s->attribute_pairs > kMaxAttributePairs)
    s->check(invalid_argument("html: too many attributes for the parser (a start tag with " + std::to_string(n) +
                              "; parsing stopped)"));
}

void on_start(void* ctx, const xmlChar* xname, const xmlChar** attributes) {
  HtmlState* s = state_of(ctx);
  if (!s->error.is_ok()) return;
  std::uint64_t n_attributes = 0;
  for (const xmlChar** a = attributes; a != nullptr && a[0] != nullptr; a += 2) ++n_attributes;
  count_attributes(s, n_attributes);
  if (!s->error.is_ok()) return;
  const char* name = name_of(xname);
  if (++s->depth > kMaxDepth) {
    s->check(invalid_argument("html: elements nested deeper than " + std::to_string(kMaxDepth)));
    return;
  }
  if (std::strcmp(name, "svg") == 0) ++s->svg_depth;
  if (std::strcmp(name, "title") == 0 && s->svg_depth == 0 && !s->have_title) s->in_title = true;
  if (is_one_of(name, kSkipped)) ++s->skip_depth;
  if (std::strcmp(name, "pre") == 0) ++s->pre_depth;
  if (s->skip_depth > 0) return;
  if (is_one_of(name, kParagraphs)) s->text.paragraph_break();
  else if (is_one_of(name, kLineBreaks)) s->text.line_break();
  else if (is_one_of(name, kCells)) s->check(s->text.append(" "));
}

void on_end(void* ctx, const xmlChar* xname) {
  HtmlState* s = state_of(ctx);
  if (!s->error.is_ok()) return;
  const char* name = name_of(xname);
  --s->depth;
  if (std::strcmp(name, "title") == 0 && s->in_title) {
    s->in_title = false;
    s->have_title = true;
  }
  if (std::strcmp(name, "svg") == 0 && s->svg_depth > 0) --s->svg_depth;
  if (std::strcmp(name, "pre") == 0 && s->pre_depth > 0) --s->pre_depth;
  if (is_one_of(name, kSkipped)) {
    if (s->skip_depth > 0) --s->skip_depth;
    return;
  }
  if (s->skip_depth > 0) return;
  if (is_one_of(name, kParagraphs)) s->text.paragraph_break();
  else if (is_one_of(name, kLineBreaks) || is_one_of(name, kCells)) {
    if (is_one_of(name, kCells)) s->check(s->text.append(" "));
    else s->text.line_break();
  }
}

bool is_ascii_letter(xmlChar c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

// libxml2 reports a name its dictionary refused (past kMaxNameBytes) as a
// missing name. A refused attribute name is dropped, which is harmless; an
// element name is read again at the same "<name" for ever
// (htmlParseContentInternal retries it), so the parse stops there. The
// name at the cursor is looked up as the parser looks it up: the
// dictionary refuses it only when it is full.
bool dictionary_refused_element(htmlParserCtxtPtr ctxt) {
  if (ctxt == nullptr || ctxt->input == nullptr || ctxt->dict == nullptr ||
      xmlDictGetUsage(ctxt->dict) <= kMaxNameBytes)
    return false;
  const xmlChar* p = ctxt->input->cur;
  const xmlChar* end = ctxt->input->end;
  if (p == nullptr || end - p < 2 || p[0] != '<' || !(is_ascii_letter(p[1]) || p[1] == '_' || p[1] == ':'))
    return false;
  std::string name;  // as htmlParseHTMLName_nonInvasive reads it: lower case, at most 100 bytes
  for (++p; p < end && name.size() < 100; ++p) {
    const xmlChar c = *p;
    if (!(is_ascii_letter(c) || (c >= '0' && c <= '9') || c == ':' || c == '-' || c == '_')) break;
    name += static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  }
  return xmlDictLookup(ctxt->dict, reinterpret_cast<const xmlChar*>(name.data()), static_cast<int>(name.size())) ==
         nullptr;
}

// libxml2's structured error reports (messages stay off: HTML_PARSE_NOERROR
// silences only the unstructured channel).
void on_error(void* ctx, xmlErrorPtr e) {
  if (e == nullptr) return;
  HtmlState* s = state_of(ctx);
  switch (e->code) {
    case XML_ERR_TAG_NAME_MISMATCH:
      if (++s->mismatched > kMaxMismatchedEndTags)
        s->check(invalid_argument("html: more than " + std::to_string(kMaxMismatchedEndTags) +
                                  " end tags that match no open element"));
      break;
    case XML_ERR_ATTRIBUTE_REDEFINED:
      if (++s->repeated > kMaxRepeatedAttributes)
        s->check(invalid_argument("html: too many attributes for the parser (a start tag repeats names more than " +
                                  std::to_string(kMaxRepeatedAttributes) + " times; parsing stopped)"));
      break;
    case XML_HTML_STRUCURE_ERROR: {
      // A misplaced <html>, <head> or <body>: dropped unreported, its
      // attributes not yet read. The cursor is just past its name, in the
      // parser's own (decoded) text.
      const std::string_view name = e->str1 != nullptr ? std::string_view(e->str1) : std::string_view();
      const htmlParserCtxtPtr c = s->ctxt;
      if ((name == "html" || name == "head" || name == "body") && c != nullptr && c->input != nullptr &&
          c->input->cur != nullptr && c->input->end != nullptr && c->input->end >= c->input->cur) {
        const std::string_view rest(reinterpret_cast<const char*>(c->input->cur),
                                    static_cast<std::size_t>(c->input->end - c->input->cur));
        s->repeated = 0;
        count_attributes(s, html_start_tag_attributes(rest));
      }
      break;
    }
    case XML_ERR_NAME_REQUIRED:
      if (s->error.is_ok() && dictionary_refused_element(s->ctxt)) {
        s->error = invalid_argument("html: too many distinct element and attribute names for the parser (over " +
                                    std::to_string(kMaxNameBytes / 1024) + " KiB; parsing stopped)");
        // Not xmlStopParser(): at this error libxml2 2.9.14 skips "while
        // (CUR == 0 && ...)", for ever once the input is cleared. It ends
        // the document as on running out of memory instead.
        s->ctxt->instate = XML_PARSER_EOF;
        s->ctxt->disableSAX = 1;
      }
      break;
    default:
      break;
  }
}

void on_characters(void* ctx, const xmlChar* chars, int len) {
  HtmlState* s = state_of(ctx);
  if (!s->error.is_ok() || len <= 0) return;
  std::string_view v(reinterpret_cast<const char*>(chars), static_cast<std::size_t>(len));
  if (s->in_title) {
    // Raw title text is kept to a few KiB; one_line() trims it later.
    if (s->title.size() < 4 * kMaxTitleBytes) s->title.append(v.substr(0, 4 * kMaxTitleBytes - s->title.size()));
    return;
  }
  if (s->skip_depth > 0) return;
  if (s->pre_depth > 0) {
    s->check(s->text.append(v));
    return;
  }
  // Outside <pre>, any run of HTML whitespace is one space.
  std::string collapsed;
  collapsed.reserve(v.size());
  for (char c : v) collapsed += (c == '\n' || c == '\r' || c == '\t' || c == '\f') ? ' ' : c;
  s->check(s->text.append(collapsed));
}

}  // namespace

Result<ExtractedDocument> extract_html(std::string_view bytes, const ExtractLimits& limits) {
  xmlInitParser();  // idempotent and thread-safe from libxml2 2.9 on
  htmlSAXHandler sax;
  std::memset(&sax, 0, sizeof sax);
  sax.startElement = on_start;
  sax.endElement = on_end;
  sax.characters = on_characters;
  sax.ignorableWhitespace = on_characters;
  sax.serror = on_error;
  sax.initialized = XML_SAX2_MAGIC;  // libxml2 reports errors to serror only then (SAX1 callbacks still used)
  // cdataBlock (the raw content of <script> and <style>), comments and
  // processing instructions stay unset: never text.
  if (bytes.size() > static_cast<std::size_t>(INT_MAX)) return resource_exhausted("html: over 2 GiB");
  AIRLOCK_RETURN_IF_ERROR(check_attribute_work(bytes, /*html=*/true, "html"));
  HtmlState state(limits.max_output_bytes);
  if (bytes.empty()) {  // (libxml2 makes no context for no bytes) no text
    AIRLOCK_ASSIGN_OR_RETURN(std::string none, state.text.finish());
    return ExtractedDocument{DocFormat::kHtml, "", std::move(none)};
  }
  // (htmlParseDocument detects the encoding from the first bytes: a UTF-16
  // or UTF-8 byte order mark, or a <meta> charset.)
  state.ctxt = htmlCreateMemoryParserCtxt(bytes.data(), static_cast<int>(bytes.size()));
  if (state.ctxt == nullptr) return internal_error("html: libxml2 could not create a parser");
  // Our callbacks instead of the context's own (which would build a tree),
  // taken back before the context is freed, as htmlSAXParseDoc does.
  if (state.ctxt->sax != nullptr) xmlFree(state.ctxt->sax);
  state.ctxt->sax = reinterpret_cast<xmlSAXHandlerPtr>(&sax);
  state.ctxt->userData = &state;
  htmlCtxtUseOptions(state.ctxt, HTML_PARSE_RECOVER | HTML_PARSE_NONET | HTML_PARSE_NOERROR | HTML_PARSE_NOWARNING);
  if (state.ctxt->dict != nullptr) xmlDictSetLimit(state.ctxt->dict, kMaxNameBytes);
  htmlParseDocument(state.ctxt);
  state.ctxt->sax = nullptr;
  state.ctxt->userData = nullptr;
  if (state.ctxt->myDoc != nullptr) xmlFreeDoc(state.ctxt->myDoc);  // (none: no tree callbacks)
  htmlFreeParserCtxt(state.ctxt);
  state.ctxt = nullptr;
  AIRLOCK_RETURN_IF_ERROR(state.error);
  AIRLOCK_ASSIGN_OR_RETURN(std::string text, state.text.finish());
  return ExtractedDocument{DocFormat::kHtml, one_line(state.title, kMaxTitleBytes), std::move(text)};
}

}  // namespace airlock::rag::internal
