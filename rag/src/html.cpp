// HTML to text with libxml2's HTML parser driven through SAX callbacks: no
// tree is built (memory stays near the output size) and nothing here
// recurses, so nesting depth costs no stack. libxml2 keeps its own stack of
// open elements and scans all of it for each end tag that matches none (a
// stray end tag never reaches our callbacks): kMaxDepth bounds that stack,
// and kMaxMismatchedEndTags (counted through libxml2's error reports) the
// number of such scans, and check_attribute_work() the attributes it
// compares, so hostile input cannot make parsing quadratic. The document
// is parsed whole (htmlParseDocument): libxml2 2.9's push parser drops
// everything after </html> or after a stray end tag at the start, and
// does not look for a UTF-16 byte order mark.
#include <libxml/HTMLparser.h>
#include <libxml/parser.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstring>

#include "text_builder.h"

namespace airlock::rag::internal {
namespace {

constexpr int kMaxDepth = 1024;  // browsers stop nesting at 512
constexpr std::size_t kMaxMismatchedEndTags = 100000;

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

void on_start(void* ctx, const xmlChar* xname, const xmlChar** /*attributes*/) {
  HtmlState* s = state_of(ctx);
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

// libxml2's structured error reports (messages stay off: HTML_PARSE_NOERROR
// silences only the unstructured channel).
void on_error(void* ctx, xmlErrorPtr e) {
  if (e == nullptr || e->code != XML_ERR_TAG_NAME_MISMATCH) return;
  HtmlState* s = state_of(ctx);
  if (++s->mismatched > kMaxMismatchedEndTags)
    s->check(invalid_argument("html: more than " + std::to_string(kMaxMismatchedEndTags) +
                              " end tags that match no open element"));
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
