// Text extraction for RAG ingestion: each format's exact output, format
// detection, and hostile documents (invalid UTF-8, deep nesting, zip bombs,
// entity bombs, broken and runaway PDFs), each refused with its own error.
#include "airlock/rag/extract.h"
#include "doc_builders.h"
#include "pdf_sandbox.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace airlock::rag {
namespace {

using testing::document_xml;
using testing::kWordNs;
using testing::make_docx;
using testing::make_pdf;
using testing::ZipWriter;
using Clock = std::chrono::steady_clock;
constexpr const char* kPdftotext = "/usr/bin/pdftotext";

std::string message(const Result<ExtractedDocument>& r) { return r.is_ok() ? "(ok)" : r.status().message(); }

// A temporary folder with executable scripts that stand in for pdftotext.
// Shell scripts fork (pipes, command substitution, any command not run with
// exec), which the sandbox refuses to pdftotext: while a ScriptDir lives its
// children may start processes (expect_child_cannot_escape() takes that back
// to check the refusal).
class ScriptDir {
 public:
  ScriptDir() {
    char tmpl[] = "/tmp/airlock-rag-test-XXXXXX";
    const char* d = ::mkdtemp(tmpl);
    EXPECT_NE(d, nullptr);
    dir_ = d != nullptr ? d : "/tmp";
    internal::allow_child_processes_for_testing(true);
  }
  ~ScriptDir() {
    internal::allow_child_processes_for_testing(false);
    for (const std::string& f : files_) ::unlink(f.c_str());
    ::rmdir(dir_.c_str());
  }
  std::string script(const std::string& name, const std::string& body) {
    const std::string path = dir_ + "/" + name;
    std::ofstream(path) << "#!/bin/sh\n" << body << "\n";
    ::chmod(path.c_str(), 0755);
    files_.push_back(path);
    return path;
  }

 private:
  std::string dir_;
  std::vector<std::string> files_;
};

bool have_pdftotext() { return ::access(kPdftotext, X_OK) == 0; }
#define REQUIRE_PDFTOTEXT()                                                                          \
  if (!have_pdftotext()) GTEST_SKIP() << kPdftotext << " is absent (apt install poppler-utils)"

// After a PDF extraction this test process has no child left: reaped, not a zombie.
void expect_no_children() {
  int status = 0;
  EXPECT_EQ(::waitpid(-1, &status, WNOHANG), -1);
  EXPECT_EQ(errno, ECHILD);
}

// ---------------------------------------------------------------- detection

TEST(ExtractTest, FormatNames) {
  EXPECT_EQ(format_name(DocFormat::kText), "text");
  EXPECT_EQ(format_name(DocFormat::kMarkdown), "markdown");
  EXPECT_EQ(format_name(DocFormat::kHtml), "html");
  EXPECT_EQ(format_name(DocFormat::kDocx), "docx");
  EXPECT_EQ(format_name(DocFormat::kPdf), "pdf");
}

TEST(ExtractTest, DetectsByExtensionAndConfirmsByContent) {
  EXPECT_EQ(*detect_format("a.TXT", "x"), DocFormat::kText);
  EXPECT_EQ(*detect_format("a.text", "x"), DocFormat::kText);
  EXPECT_EQ(*detect_format("notes/README.Md", "x"), DocFormat::kMarkdown);
  EXPECT_EQ(*detect_format("a.markdown", "x"), DocFormat::kMarkdown);
  EXPECT_EQ(*detect_format("index.HTM", "<p>"), DocFormat::kHtml);
  EXPECT_EQ(*detect_format("index.html", "<p>"), DocFormat::kHtml);
  EXPECT_EQ(*detect_format("paper.PDF", "%PDF-1.7\n"), DocFormat::kPdf);
  EXPECT_EQ(*detect_format("letter.docx", std::string("PK\3\4rest", 8)), DocFormat::kDocx);
  // Extension and content disagree.
  auto pdf = detect_format("paper.pdf", "hello");
  EXPECT_EQ(pdf.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(pdf.status().message().find("%PDF-"), std::string::npos) << pdf.status().message();
  auto docx = detect_format("letter.docx", "%PDF-1.7");
  EXPECT_EQ(docx.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(docx.status().message().find("not a zip"), std::string::npos) << docx.status().message();
  // Unknown extension (or none, or a dot file): text if it is clean UTF-8.
  EXPECT_EQ(*detect_format("LICENSE", "MIT License\n"), DocFormat::kText);
  EXPECT_EQ(*detect_format("dir.d/file", "caf\xC3\xA9"), DocFormat::kText);
  EXPECT_EQ(*detect_format(".bashrc", "x=1"), DocFormat::kText);
  EXPECT_EQ(*detect_format("data.csv", "a,b\n1,2\n"), DocFormat::kText);
  for (std::string bytes : {std::string("\x7f" "ELF\0\0", 6), std::string("caf\xE9"), std::string("%PDF-1.4\0", 9)}) {
    auto r = detect_format("program.bin", bytes);
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find("unsupported file type"), std::string::npos) << r.status().message();
  }
}

// ---------------------------------------------------------------- plain text

TEST(ExtractTest, PlainTextIsNormalised) {
  const std::string in =
      "\xEF\xBB\xBF  Hello   world \t\r\nsecond\tline  \r\r\n\n\n\nThird\x01para\x7f end\x0c  \n\n";
  auto r = extract_document("a.txt", in);
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(r->format, DocFormat::kText);
  EXPECT_EQ(r->title, "");
  EXPECT_EQ(r->text, "Hello world\nsecond\tline\n\nThird para end");
  // A lone CR is a line end too, and UTF-8 passes through untouched.
  auto cr = extract_document("b.txt", "one\rtwo\r\rthree \xE2\x98\xBA");
  ASSERT_TRUE(cr.is_ok()) << cr.status().to_string();
  EXPECT_EQ(cr->text, "one\ntwo\n\nthree \xE2\x98\xBA");
}

TEST(ExtractTest, InvalidUtf8IsRejectedWithItsOffset) {
  const struct {
    std::string bytes;
    std::size_t offset;
  } cases[] = {
      {"abc\xC3\x28", 3},             // bad continuation
      {"ok \xC0\xAF", 3},             // overlong '/'
      {"x\xED\xA0\x80", 1},           // UTF-16 surrogate
      {"12\xF4\x90\x80\x80", 2},      // above U+10FFFF
      {"\xC3\xA9\xE2\x82", 2},        // truncated at the end
      {"\xFF", 0},
  };
  for (const auto& c : cases) {
    for (const char* name : {"a.txt", "a.md"}) {
      auto r = extract_document(name, c.bytes);
      ASSERT_FALSE(r.is_ok()) << name;
      EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
      EXPECT_NE(r.status().message().find("not valid UTF-8 at byte offset " + std::to_string(c.offset)), std::string::npos)
          << r.status().message();
    }
  }
}

TEST(ExtractTest, NulBytesAreRejected) {
  for (const char* name : {"a.txt", "a.md"}) {
    auto r = extract_document(name, std::string("ab\0cd", 5));
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(message(r).find("NUL byte at offset 2"), std::string::npos) << message(r);
  }
}

TEST(ExtractTest, NoTextIsAnError) {
  for (const auto& [name, bytes] : std::vector<std::pair<std::string, std::string>>{
           {"a.txt", ""}, {"a.txt", " \n\t\r\n  "}, {"a.md", "---\n---\n\n"}, {"a.html", "<html><script>x</script></html>"},
           {"a.html", ""}, {"a.docx", make_docx(document_xml("<w:p/><w:p><w:r><w:t>  </w:t></w:r></w:p>"))}}) {
    auto r = extract_document(name, bytes);
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << name;
    EXPECT_NE(message(r).find("no text"), std::string::npos) << name << ": " << message(r);
  }
}

TEST(ExtractTest, InputOverTheLimitIsRefusedBeforeParsing) {
  ExtractLimits limits;
  limits.max_input_bytes = 10;
  EXPECT_TRUE(extract_document("a.txt", "0123456789", limits).is_ok());
  auto r = extract_document("a.txt", "0123456789a", limits);
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(message(r).find("max_input_bytes"), std::string::npos) << message(r);
}

TEST(ExtractTest, HugeSingleLineWithinAndOverTheOutputLimit) {
  const std::string line(20 << 20, 'a');
  ExtractLimits big;
  big.max_output_bytes = 32 << 20;
  auto ok = extract_document("long.txt", line, big);
  ASSERT_TRUE(ok.is_ok()) << ok.status().to_string();
  EXPECT_EQ(ok->text.size(), line.size());
  auto over = extract_document("long.txt", line);  // default: 16 MiB
  EXPECT_EQ(over.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(message(over).find("max_output_bytes"), std::string::npos) << message(over);
}

// ---------------------------------------------------------------- markdown

TEST(ExtractTest, MarkdownKeepsTextAndDropsSyntax) {
  const std::string md =
      "---\ntitle: front matter is dropped\ntags: [a, b]\n---\n"
      "# Airlock *Guide* #\n\n"
      "Some **bold** and _italic_ and ~~struck~~ text with a [link](http://x.example/a_(b) \"t\") and "
      "![alt text](img.png).\n"
      "Keep snake_case, 2 * 3 and a \\*literal\\* star. See [the spec][spec] &amp; <https://example.org>.\n\n"
      "[spec]: http://spec.example\n"
      "- item one\n"
      "* [x] item two\n"
      "12. numbered\n\n"
      "| a | b |\n|---|:-:|\n| 1 | 2 |\n\n"
      "```cpp\nint main() { return 0; }\n```\n"
      "<div>html <b>tags</b></div><!-- a\ncomment -->\n"
      "Setext\n======\n"
      "> quoted `code *span*`\n"
      "***\n"
      "## Last\n";
  auto r = extract_document("guide.md", md);
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(r->format, DocFormat::kMarkdown);
  EXPECT_EQ(r->title, "Airlock Guide");
  EXPECT_EQ(r->text,
            "Airlock Guide\n\n"
            "Some bold and italic and struck text with a link and alt text.\n"
            "Keep snake_case, 2 * 3 and a *literal* star. See the spec & https://example.org.\n\n"
            "item one\nitem two\nnumbered\n\n"
            "a b\n1 2\n\n"
            "int main() { return 0; }\n\n"
            "html tags\nSetext\n\n"
            "quoted code *span*\n\n"
            "Last");
}

TEST(ExtractTest, MarkdownSetextTitleAndUnclosedFrontMatter) {
  auto r = extract_document("a.markdown", "Big Title\n=========\n\nbody");
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(r->title, "Big Title");
  EXPECT_EQ(r->text, "Big Title\n\nbody");
  // "---" with no closing line is not front matter: a thematic break.
  auto open = extract_document("b.md", "---\nnot: front matter");
  ASSERT_TRUE(open.is_ok()) << open.status().to_string();
  EXPECT_EQ(open->text, "not: front matter");
}

TEST(ExtractTest, MarkdownPathologicalLinesStayLinear) {
  // Unmatched brackets, backticks and tags: each used to be a rescan per byte
  // in naive parsers (1e12 steps here). 1 MiB lines must finish in moments,
  // even in a sanitizer build.
  for (const std::string& unit : {std::string("["), std::string("[a]("), std::string("``x`"), std::string("<a"),
                                  std::string("*_"), std::string("![")}) {
    std::string line;
    while (line.size() < (1u << 20)) line += unit;
    const auto start = Clock::now();
    auto r = extract_document("p.md", line + "\nend");
    EXPECT_LT(Clock::now() - start, std::chrono::seconds(10)) << unit;
    if (r.is_ok()) {
      EXPECT_TRUE(r->text.ends_with("end")) << unit;
    }
  }
  // Backtick runs of lengths 1, 2, 3, ... on one 15 MiB line: no run has a
  // closer, and searching the rest of the line for each opener's closer
  // was O(L^1.5): ~15 s here (2 s at 4 MiB, 45 s at 32 MiB).
  std::string ramp;
  for (std::size_t n = 1; ramp.size() < (15u << 20); ++n) ramp += std::string(n, '`') + " a ";
  const auto start = Clock::now();
  auto r = extract_document("ramp.md", ramp + "\nend");
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(10));
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_TRUE(r->text.ends_with("end"));
  // Code spans still close on a run of exactly their opener's length.
  auto spans = extract_document("s.md", "a ``x ` y`` b ``` c ```` d ``` e `f`");
  ASSERT_TRUE(spans.is_ok());
  EXPECT_EQ(spans->text, "a x ` y b c ```` d e f");
}

// ---------------------------------------------------------------- HTML

TEST(ExtractTest, HtmlKeepsReadableTextOnly) {
  const std::string html =
      "<!DOCTYPE html><html><head><title> The  Title </title><meta charset=\"utf-8\">"
      "<style>body{color:red}</style><script>var s = \"SCRIPT\";</script></head>\n"
      "<body><h1>Heading &amp; more</h1><p>First <b>bold</b>\n   paragraph.</p>"
      "<div>Block<br>next line</div><ul><li>one</li><li>two</li></ul>"
      "<table><tr><td>a</td><td>b</td></tr><tr><th>c</th><td>d</td></tr></table>"
      "<noscript>NOSCRIPT</noscript><template>TEMPLATE</template>"
      "<svg><title>SVGTITLE</title><text>SVGTEXT</text></svg><iframe>IFRAME</iframe>"
      "<object>OBJECT</object><pre>  code\n  indented</pre><p>caf&eacute; &#x263A;&nbsp;!</p></body></html>";
  auto r = extract_document("page.html", html);
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(r->format, DocFormat::kHtml);
  EXPECT_EQ(r->title, "The Title");
  EXPECT_EQ(r->text,
            "Heading & more\n\nFirst bold paragraph.\n\nBlock\nnext line\n\none\ntwo\n\na b\nc d\n\n"
            "code\nindented\n\ncaf\xC3\xA9 \xE2\x98\xBA\xC2\xA0!");
}

// Titles from pages in ISO-8859-1 (or read as Latin-1 for want of a
// label) with Windows-1252 punctuation: the C1 code points become the
// characters meant (as HTML5 decodes that label), not a refused document.
TEST(ExtractTest, HtmlTitlesWithWindows1252PunctuationAreKept) {
  for (const std::string head : {"<meta charset=\"iso-8859-1\">", ""}) {
    auto r = extract_document("legacy.html", "<html><head>" + head +
                                                 "<title>Don\x92t panic\x85 \x93now\x94\x81</title></head>"
                                                 "<body><p>Body text.</p></body></html>");
    ASSERT_TRUE(r.is_ok()) << r.status().to_string();
    EXPECT_EQ(r->title, "Don\u2019t panic\u2026 \u201cnow\u201d") << head;
  }
  auto md = extract_document("note.md", "# Caf\xc2\x85 notes\n\nText.\n");
  ASSERT_TRUE(md.is_ok()) << md.status().to_string();
  EXPECT_EQ(md->title, "Caf\u2026 notes");
}

TEST(ExtractTest, HtmlScriptAndStyleNeverAppear) {
  const std::string html =
      "<p>visible</p><script>document.write('<p>SECRET1</p>')</script>"
      "<SCRIPT type=module>SECRET2 </p> <div>x</div></SCRIPT>"
      "<style>p::after{content:'SECRET3'}</style><script><!-- SECRET4 --></script>"
      "<p>also visible</p><script>SECRET5 unclosed";
  auto r = extract_document("page.htm", html);
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(r->text, "visible\n\nalso visible");
  EXPECT_EQ(r->text.find("SECRET"), std::string::npos);
}

TEST(ExtractTest, MalformedHtmlStillGivesItsText) {
  const std::string html =
      "<html><body><p>Unclosed <b>bold <i>italic<div>block</p></span><p>after &bogus; <<>> text"
      "<td>cell</tr></table><li>item<p attr=\"unterminated>tail";
  auto r = extract_document("bad.html", html);
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_NE(r->text.find("Unclosed bold italic"), std::string::npos) << r->text;
  EXPECT_NE(r->text.find("block"), std::string::npos) << r->text;
  EXPECT_NE(r->text.find("after &bogus;"), std::string::npos) << r->text;
  EXPECT_NE(r->text.find("item"), std::string::npos) << r->text;
  // Truncating a valid page anywhere never crashes.
  const std::string page = "<html><head><title>T</title></head><body><p>one <b>two</b></p><!-- c --><p>three</p></body></html>";
  for (std::size_t n = 0; n <= page.size(); ++n) {
    auto cut = extract_document("cut.html", page.substr(0, n));
    if (!cut.is_ok()) {
      EXPECT_EQ(cut.status().code(), StatusCode::kInvalidArgument) << n;
    }
  }
}

TEST(ExtractTest, DeeplyNestedHtmlIsRefusedWithoutRecursion) {
  auto nested = [](std::size_t depth) {
    std::string s;
    for (std::size_t i = 0; i < depth; ++i) s += "<div>";
    s += "deep";
    for (std::size_t i = 0; i < depth; ++i) s += "</div>";
    return s;
  };
  auto ok = extract_document("ok.html", nested(1000));
  ASSERT_TRUE(ok.is_ok()) << ok.status().to_string();
  EXPECT_EQ(ok->text, "deep");
  const auto start = Clock::now();
  auto deep = extract_document("deep.html", nested(100000));
  EXPECT_EQ(deep.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(message(deep).find("nested deeper than"), std::string::npos) << message(deep);
  // Unclosed too: 100k <span>s and stray end tags.
  std::string spans;
  for (int i = 0; i < 100000; ++i) spans += "<span>x";
  for (int i = 0; i < 100000; ++i) spans += "</p>";
  auto unclosed = extract_document("spans.html", spans);
  EXPECT_EQ(unclosed.status().code(), StatusCode::kInvalidArgument);
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(20));
}

// libxml2 scans its whole stack of open elements for each end tag that
// matches none: nesting within the limit, then millions of stray end tags,
// cost depth x tags. Past 100,000 of them the page is refused.
TEST(ExtractTest, StrayEndTagsAreBounded) {
  std::string page;
  for (int i = 0; i < 1000; ++i) page += "<span>";
  page += "text";
  for (int i = 0; i < 200000; ++i) page += "</x>";
  auto r = extract_document("stray.html", page);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(message(r).find("end tags that match no open element"), std::string::npos) << message(r);
  // A page with a few thousand of them is still read.
  std::string sloppy = "<p>kept</p>";
  for (int i = 0; i < 5000; ++i) sloppy += "</b>";
  auto ok = extract_document("sloppy.html", sloppy);
  ASSERT_TRUE(ok.is_ok()) << ok.status().to_string();
  EXPECT_EQ(ok->text, "kept");
}

// libxml2 2.9 compares each attribute of a start tag with every earlier
// one: 80,000 on one element took 15.6 s. Such input is refused before
// parsing; attributes spread over elements, and '<' in scripts, are not
// counted against a page.
TEST(ExtractTest, AttributeBombsAreRefusedBeforeParsing) {
  std::string attrs;
  for (int i = 0; i < 9000; ++i) attrs += " a" + std::to_string(i) + "=1";
  auto r = extract_document("bomb.html", "<p" + attrs + ">text</p>");
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(message(r).find("too many attributes"), std::string::npos) << message(r);
  // Quoted values may hold '>' and spaces; a value without its quote runs
  // to the end.
  std::string quoted;
  for (int i = 0; i < 9000; ++i) quoted += " b" + std::to_string(i) + "=\"> x\"";
  EXPECT_EQ(extract_document("q.html", "<div" + quoted + ">t</div>").status().code(), StatusCode::kInvalidArgument);
  // Behind what looks like a declaration, a processing instruction, a tag
  // of another alphabet or a script-like name, the parser still parses the
  // tag that follows (the scan once skipped ahead there).
  for (const std::string& before : {std::string("<!x "), std::string("<? "), std::string("<\xc3\xa9 x=\""),
                                    std::string("<stylex>"), std::string("<scripts>")}) {
    auto hidden = extract_document("hidden.html", "<p>a</p>" + before + "<div" + attrs + ">text</div>");
    EXPECT_EQ(hidden.status().code(), StatusCode::kInvalidArgument) << before;
  }
  auto docx = extract_document("bomb.docx", make_docx(document_xml("<w:p" + attrs + "><w:r><w:t>x</w:t></w:r></w:p>")));
  EXPECT_EQ(docx.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(message(docx).find("too many attributes"), std::string::npos) << message(docx);

  std::string page = "<html><body>";
  for (int i = 0; i < 3000; ++i) page += "<p class=\"c\" id=\"p" + std::to_string(i) + "\" data-x=1 title='t'>para</p>";
  page += "<script>";
  for (int i = 0; i < 9000; ++i) page += "if (a<b" + std::to_string(i) + " && c) x = ";  // not a tag
  page += "1;</script><p>end</p></body></html>";
  auto ok = extract_document("fine.html", page);
  ASSERT_TRUE(ok.is_ok()) << ok.status().to_string();
  EXPECT_EQ(ok->text.substr(ok->text.size() - 3), "end");
  std::string body;
  for (int i = 0; i < 2000; ++i) body += "<w:p w:rsidR=\"00A1\" w:rsidRDefault=\"00A1\"><w:r><w:t>p</w:t></w:r></w:p>";
  EXPECT_TRUE(extract_document("fine.docx", make_docx(document_xml(body))).is_ok());
}

// libxml2 closes "<script/>" and "<style/>" at once and parses what follows
// as markup; the scan once took them as the start of raw text and never
// counted the tag after them. Nor does it skip what the parser reads: an
// end tag that is not the element's own inside <script>, a comment closed
// by "--!>", the rest of an end tag, a quoted DOCTYPE identifier, a
// processing instruction with a non-ASCII target, or an attribute name
// that is no name (dropped with its quotes).
TEST(ExtractTest, SelfClosingScriptAndStyleDoNotHideAnAttributeBomb) {
  std::string attrs;
  for (int i = 0; i < 30000; ++i) attrs += " a" + std::to_string(i) + "=1";
  const std::string bomb = "<x" + attrs + ">tail text</x>";
  for (const std::string before : {"<script/>", "<style/>", "<SCRIPT/>", "<script />", "<script type=\"module\"/>",
                                   "<style media='all'/>", "<script a/>"}) {
    const auto start = Clock::now();
    auto r = extract_document("selfclose.html", "<html><body><p>hello text</p>" + before + bomb + "</body></html>");
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << before;
    EXPECT_NE(message(r).find("too many attributes"), std::string::npos) << before << ": " << message(r);
    EXPECT_NE(message(r).find("refused before parsing"), std::string::npos) << before << ": " << message(r);
    EXPECT_LT(Clock::now() - start, std::chrono::seconds(10)) << before;
  }
  for (const std::string& page :
       {"<p>hello text</p><script></scriptx></x </script> <!-- </script> " + bomb + " -->",
        "<p>hello text</p><!-- --!>" + bomb + " -->", "<p>hello text</p></p <!-- > " + bomb + " -->",
        "<!DOCTYPE html PUBLIC \"a> <!--\" ><p>hello text</p>" + bomb + " -->",
        "<p>hello text</p><?\xc3\xa9 <!-- > " + bomb + " -->", "<p $a=\"x> " + bomb + " \">hello text</p>"}) {
    auto r = extract_document("hidden.html", page);
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << page.substr(0, 60);
    EXPECT_NE(message(r).find("refused before parsing"), std::string::npos) << page.substr(0, 60) << ": " << message(r);
  }
  // The scan stays linear: 200,000 comments, none closed by "--!>".
  std::string comments = "<p>hello text</p>";
  for (int i = 0; i < 200000; ++i) comments += "<!-- c -->";
  const auto start = Clock::now();
  EXPECT_TRUE(extract_document("comments.html", comments).is_ok());
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(10));
  // A script whose start tag does not end in "/>" is raw text up to its
  // end tag, as before: what looks like a tag inside is not counted.
  for (const std::string start_tag : {"<script a=b/>", "<script>", "<style/ >"}) {
    const std::string end_tag = start_tag.find("style") != std::string::npos ? "</style>" : "</script>";
    auto raw = extract_document("raw.html", "<p>hello text</p>" + start_tag + bomb + end_tag + "<p>end</p>");
    ASSERT_TRUE(raw.is_ok()) << start_tag << ": " << raw.status().to_string();
    EXPECT_EQ(raw->text, "hello text\n\nend") << start_tag;
  }
}

// What the scan of the bytes cannot see, the parser bounds itself: a page
// it decodes from UTF-16 or from a <meta> charset, an end tag that closes
// <script> through the parser's element stack, a misplaced <body> that it
// drops unreported, repeated attribute names, and names enough to fill its
// dictionary. Each is refused within a fraction of a second (unbounded,
// the bombs here take seconds to minutes).
TEST(ExtractTest, AttributeBombsTheScanCannotSeeAreBoundedWhileParsing) {
  const auto utf16 = [](const std::string& ascii) {
    std::string out = "\xff\xfe";
    for (char c : ascii) {
      out += c;
      out += '\0';
    }
    return out;
  };
  std::string attrs;
  for (int i = 0; i < 100000; ++i) attrs += " a" + std::to_string(i) + "=1";
  std::string body_tags;
  for (int i = 0; i < 40; ++i) body_tags += "<body" + attrs.substr(0, attrs.find(" a5000=")) + ">";
  std::string repeated = "<x" + attrs.substr(0, attrs.find(" a10000="));
  for (int i = 0; i < 100000; ++i) repeated += " a9999=1";
  std::string utf7_attrs;  // " a0=1 a1=1 ..." in UTF-7: "+ACA-a0+AD0-1..."
  for (int i = 0; i < 100000; ++i) utf7_attrs += "+ACA-a" + std::to_string(i) + "+AD0-1";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"utf-16", utf16("<html><body><p>hello text</p><x" + attrs + ">tail text</x></body></html>")},
      {"meta charset", "<html><head><meta charset=\"UTF-7\"></head><body><p>hello text</p>+ADw-x" + utf7_attrs +
                           "+AD4-tail</body></html>"},
      {"element stack", "<p>hello text</p><scriptx><script></scriptx><x" + attrs + ">tail text</x>"},
      {"misplaced body", utf16("<html><body><p>hello text</p>" + body_tags + "</body></html>")},
      {"repeated names", utf16("<p>hello text</p>" + repeated + ">tail</x>")},
  };
  for (const auto& [what, page] : cases) {
    const auto start = Clock::now();
    auto r = extract_document("bomb.html", page);
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << what;
    EXPECT_NE(message(r).find("too many attributes for the parser"), std::string::npos) << what << ": " << message(r);
    EXPECT_NE(message(r).find("parsing stopped"), std::string::npos) << what << ": " << message(r);
    EXPECT_LT(Clock::now() - start, std::chrono::seconds(10)) << what;
  }
  // The dictionary holds the names of every element too: a page of
  // 20,000 differently named elements fills it, and is refused rather
  // than parsed without them (libxml2 would retry such a name for ever).
  std::string elements = "<p>hello text</p>";
  for (int i = 0; i < 20000; ++i) elements += "<e" + std::to_string(i) + ">t</e" + std::to_string(i) + ">";
  auto names = extract_document("names.html", elements);
  EXPECT_EQ(names.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(message(names).find("distinct element and attribute names"), std::string::npos) << message(names);
  // Thousands of elements and attributes of a few hundred names are fine.
  std::string page = "<p>hello text</p>";
  for (int i = 0; i < 5000; ++i)
    page += "<div data-k" + std::to_string(i % 300) + "=\"v\" class=\"c\"><span id=s" + std::to_string(i) + ">w</span></div>";
  auto fine = extract_document("fine.html", utf16(page));
  ASSERT_TRUE(fine.is_ok()) << fine.status().to_string();
  EXPECT_EQ(fine->text.substr(0, 10), "hello text");
}

// The page is parsed whole: text after </html> and after a stray end tag
// at the start is kept (libxml2's push parser dropped both), and a UTF-16
// page with its byte order mark is decoded.
TEST(ExtractTest, HtmlTextAfterTheDocumentEndAndUtf16AreRead) {
  auto after = extract_document("after.html", "<html><body><p>first</p></body></html><p>more text</p>");
  ASSERT_TRUE(after.is_ok()) << after.status().to_string();
  EXPECT_NE(after->text.find("more text"), std::string::npos) << after->text;
  auto stray = extract_document("stray.html", "</div><p>kept text</p>");
  ASSERT_TRUE(stray.is_ok()) << stray.status().to_string();
  EXPECT_EQ(stray->text, "kept text");
  const std::string ascii = "<html><head><title>Wide</title><script>var s = 1;</script></head><body><p>Hello wide</p></body></html>";
  std::string utf16 = "\xff\xfe";
  for (char c : ascii) {
    utf16 += c;
    utf16 += '\0';
  }
  auto wide = extract_document("wide.html", utf16);
  ASSERT_TRUE(wide.is_ok()) << wide.status().to_string();
  EXPECT_EQ(wide->title, "Wide");
  EXPECT_EQ(wide->text, "Hello wide");
}

// ---------------------------------------------------------------- DOCX

TEST(ExtractTest, DocxRunsTabsBreaksAndParagraphs) {
  const std::string body =
      "<w:p><w:pPr><w:pStyle w:val=\"Title\"/></w:pPr><w:r><w:t>Quarterly</w:t></w:r>"
      "<w:r><w:t xml:space=\"preserve\"> report &amp; </w:t></w:r><w:r><w:t>notes</w:t></w:r></w:p>"
      "<w:p><w:r><w:t>Name</w:t><w:tab/><w:t>Value</w:t><w:br/><w:t>second</w:t><w:cr/><w:t>third</w:t></w:r></w:p>"
      "<w:p/>"
      "<w:p><w:r><w:delText>DELETED</w:delText><w:instrText>FIELD</w:instrText><w:t>kept \xC3\xA9</w:t></w:r></w:p>"
      "<w:tbl><w:tr><w:tc><w:p><w:r><w:t>cell</w:t></w:r></w:p></w:tc></w:tr></w:tbl>";
  auto r = extract_document("report.docx", make_docx(document_xml(body)));
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(r->format, DocFormat::kDocx);
  EXPECT_EQ(r->text, "Quarterly report & notes\n\nName\tValue\nsecond\nthird\n\nkept \xC3\xA9\n\ncell");
}

// Word writes a text box twice, in <mc:Choice> and in <mc:Fallback> for
// older readers: its text is read once.
TEST(ExtractTest, DocxTextBoxesAreReadOnce) {
  const std::string mc = "http://schemas.openxmlformats.org/markup-compatibility/2006";
  const std::string box = "<w:txbxContent><w:p><w:r><w:t>Payment limit is 500.</w:t></w:r></w:p></w:txbxContent>";
  const std::string body = "<w:p><w:r><w:t>Intro paragraph.</w:t></w:r></w:p><w:p><w:r><mc:AlternateContent xmlns:mc=\"" +
                           mc + "\"><mc:Choice Requires=\"wps\"><w:drawing>" + box +
                           "</w:drawing></mc:Choice><mc:Fallback><w:pict>" + box +
                           "</w:pict></mc:Fallback></mc:AlternateContent></w:r></w:p><w:p><w:r><w:t>After.</w:t></w:r></w:p>";
  auto r = extract_document("box.docx", make_docx(document_xml(body)));
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(r->text, "Intro paragraph.\n\nPayment limit is 500.\n\nAfter.");
}

TEST(ExtractTest, DocxZipBombFailsFastWithBoundedMemory) {
  // 200 MiB of spaces deflates to ~200 KiB; the cap stops inflation at 64 MiB.
  ZipWriter z;
  z.add("[Content_Types].xml", "<Types/>");
  z.add("word/document.xml", std::string(1 << 20, ' '), 200);
  const std::string bomb = z.finish();
  ASSERT_LT(bomb.size(), 1u << 20);
  const auto start = Clock::now();
  auto r = extract_document("bomb.docx", bomb);
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(message(r).find("max_docx_entry_bytes"), std::string::npos) << message(r);
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(10));
  // A smaller cap stops it sooner: the limit is enforced while inflating.
  ExtractLimits small;
  small.max_docx_entry_bytes = 1 << 20;
  auto r2 = extract_document("bomb.docx", bomb, small);
  EXPECT_EQ(r2.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(message(r2).find("1048576"), std::string::npos) << message(r2);
}

TEST(ExtractTest, DocxEntityBombsAndExternalEntitiesAreRefused) {
  std::string dtd = "<!DOCTYPE w:document [<!ENTITY lol \"lol\">";
  std::string prev = "lol";
  for (int i = 1; i <= 9; ++i) {
    std::string def;
    for (int k = 0; k < 10; ++k) def += "&" + prev + ";";
    prev = "lol" + std::to_string(i);
    dtd += "<!ENTITY " + prev + " \"" + def + "\">";
  }
  dtd += "]>\n";
  const auto start = Clock::now();
  auto laughs = extract_document("lol.docx", make_docx(document_xml("<w:p><w:r><w:t>&lol9;</w:t></w:r></w:p>", dtd)));
  EXPECT_EQ(laughs.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(message(laughs).find("DTD"), std::string::npos) << message(laughs);
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(10));

  const std::string xxe = "<!DOCTYPE w:document [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]>\n";
  auto ext = extract_document("xxe.docx", make_docx(document_xml("<w:p><w:r><w:t>x&xxe;</w:t></w:r></w:p>", xxe)));
  EXPECT_EQ(ext.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(message(ext).find("root:"), std::string::npos);
}

// The attribute scan reads word/document.xml's bytes, so libxml2 must not
// decode them otherwise: UTF-16 (with or without a byte order mark),
// UTF-32 and EBCDIC are refused, and an encoding that the XML declaration
// names is ignored (the bytes are read as UTF-8). A tag of 30,000
// attributes in UTF-16 took 8 s to parse.
TEST(ExtractTest, DocxThatIsNotUtf8IsRefused) {
  std::string attrs;
  for (int i = 0; i < 30000; ++i) attrs += " a" + std::to_string(i) + "=\"1\"";
  const std::string xml = document_xml("<w:p" + attrs + "><w:r><w:t>x</w:t></w:r></w:p>");
  const auto wide = [&](std::size_t width, bool big_endian) {
    std::string out;
    for (char c : xml) {
      std::string unit(width, '\0');
      unit[big_endian ? width - 1 : 0] = c;
      out += unit;
    }
    return out;
  };
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"UTF-16LE", "\xff\xfe" + wide(2, false)},
      {"UTF-16BE", "\xfe\xff" + wide(2, true)},
      {"UTF-16 without a byte order mark", wide(2, false)},
      {"UTF-32", std::string("\xff\xfe\0\0", 4) + wide(4, false)},
      {"EBCDIC", "\x4c\x6f\xa7\x94" + xml.substr(4)},
  };
  for (const auto& [what, bytes] : cases) {
    const auto start = Clock::now();
    auto r = extract_document("wide.docx", make_docx(bytes));
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << what;
    EXPECT_NE(message(r).find("not UTF-8"), std::string::npos) << what << ": " << message(r);
    EXPECT_LT(Clock::now() - start, std::chrono::seconds(10)) << what;
  }
  // Declared UTF-7, "+ADw-" would be '<': read as UTF-8 it stays text.
  std::string utf7;
  for (int i = 0; i < 30000; ++i) utf7 += "+ACA-a" + std::to_string(i) + "+AD0-+ACI-1+ACI-";
  auto r = extract_document("utf7.docx", make_docx("<?xml version=\"1.0\" encoding=\"UTF-7\"?><w:document xmlns:w=\"" +
                                                     std::string(kWordNs) + "\"><w:body><w:p><w:r><w:t>+ADw-x" + utf7 +
                                                     "+AD4-</w:t></w:r></w:p></w:body></w:document>"));
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(r->text.substr(0, 13), "+ADw-x+ACA-a0");
  // UTF-8 with a byte order mark is fine, whatever the declaration says.
  auto bom = extract_document("bom.docx", make_docx("\xef\xbb\xbf<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?>"
                                                    "<w:document xmlns:w=\"" + std::string(kWordNs) +
                                                    "\"><w:body><w:p><w:r><w:t>caf\xc3\xa9</w:t></w:r></w:p></w:body></w:document>"));
  ASSERT_TRUE(bom.is_ok()) << bom.status().to_string();
  EXPECT_EQ(bom->text, "caf\xc3\xa9");
}

// libxml2 2.9 looks each prefix up through every namespace declaration in
// scope, one by one: 7,900 on the root over a million paragraphs took 13 s
// (0.14 s without them). More than 256 in scope of one element are
// refused; declarations on siblings do not add up.
TEST(ExtractTest, DocxWithTooManyNamespacesInScopeIsRefused) {
  const auto decls = [](int from, int n) {
    std::string d;
    for (int i = from; i < from + n; ++i) d += " xmlns:n" + std::to_string(i) + "=\"urn:n:" + std::to_string(i) + "\"";
    return d;
  };
  const auto docx = [](const std::string& root_decls, const std::string& body) {  // root: these and xmlns:w
    return make_docx("<?xml version=\"1.0\"?><w:document" + root_decls + " xmlns:w=\"" + std::string(kWordNs) +
                     "\"><w:body>" + body + "</w:body></w:document>");
  };
  std::string paragraphs;
  for (int i = 0; i < 100000; ++i) paragraphs += "<w:p/>";
  const auto start = Clock::now();
  auto r = extract_document("ns.docx", docx(decls(0, 7900), paragraphs + "<w:p><w:r><w:t>x</w:t></w:r></w:p>"));
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(message(r).find("more than 256 namespace declarations in scope"), std::string::npos) << message(r);
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(10));
  // 201 on the root and 56 on a paragraph in it: 257 in scope.
  const std::string run = "<w:r><w:t>x</w:t></w:r>";
  auto nested = extract_document("nested.docx", docx(decls(0, 200), "<w:p" + decls(200, 56) + ">" + run + "</w:p>"));
  EXPECT_EQ(nested.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(message(nested).find("namespace declarations"), std::string::npos) << message(nested);
  // 201 and 55 on each of many paragraphs: at most 256 in scope.
  std::string siblings;
  for (int i = 0; i < 100; ++i) siblings += "<w:p" + decls(1000, 55) + ">" + run + "</w:p>";
  auto fine = extract_document("siblings.docx", docx(decls(0, 200), siblings));
  ASSERT_TRUE(fine.is_ok()) << fine.status().to_string();
  EXPECT_EQ(fine->text.substr(0, 4), "x\n\nx");
}

TEST(ExtractTest, DocxThatIsNotAWordZipIsRefused) {
  auto not_zip = extract_document("a.docx", std::string("PK\3\4 this is no zip at all, just text", 38));
  EXPECT_EQ(not_zip.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(message(not_zip).find("zip"), std::string::npos) << message(not_zip);

  ZipWriter z;
  z.add("[Content_Types].xml", "<Types/>");
  z.add("word/other.xml", "<x/>");
  auto missing = extract_document("b.docx", z.finish());
  EXPECT_EQ(missing.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(message(missing).find("no word/document.xml"), std::string::npos) << message(missing);

  auto bad_xml = extract_document("c.docx", make_docx("<w:document xmlns:w=\"x\"><w:body><w:p>"));
  EXPECT_EQ(bad_xml.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(message(bad_xml).find("not well-formed"), std::string::npos) << message(bad_xml);

  // Every truncation of a valid DOCX fails cleanly (or, rarely, still reads).
  const std::string good = make_docx(document_xml("<w:p><w:r><w:t>Hello docx</w:t></w:r></w:p>"));
  ASSERT_TRUE(extract_document("d.docx", good).is_ok());
  for (std::size_t n = 4; n < good.size(); n += 7) {
    auto cut = extract_document("d.docx", good.substr(0, n));
    if (!cut.is_ok()) {
      EXPECT_EQ(cut.status().code(), StatusCode::kInvalidArgument) << n << ": " << message(cut);
    } else {
      EXPECT_EQ(cut->text, "Hello docx");
    }
  }
}

TEST(ExtractTest, DocxWithTooManyEntriesIsRefused) {
  ZipWriter z;
  z.add("word/document.xml", document_xml("<w:p><w:r><w:t>x</w:t></w:r></w:p>"));
  for (int i = 0; i < 10000; ++i) z.add("f/" + std::to_string(i), "");
  auto r = extract_document("many.docx", z.finish());
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(message(r).find("more than 10000 zip entries"), std::string::npos) << message(r);
}

// ---------------------------------------------------------------- PDF

TEST(ExtractTest, PdfTextComesFromPdftotext) {
  REQUIRE_PDFTOTEXT();
  auto r = extract_document("hello.pdf", make_pdf("Hello airlock PDF"));
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(r->format, DocFormat::kPdf);
  EXPECT_EQ(r->text, "Hello airlock PDF");
  expect_no_children();
}

TEST(ExtractTest, BrokenPdfIsAnErrorNotACrash) {
  REQUIRE_PDFTOTEXT();
  std::mt19937 rng(7);
  std::string pdf = "%PDF-1.7\n";
  for (int i = 0; i < 4096; ++i) pdf += static_cast<char>(rng() & 0xff);
  auto r = extract_document("broken.pdf", pdf);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(message(r).find("pdftotext"), std::string::npos) << message(r);
  // A truncated real PDF too.
  const std::string good = make_pdf("Hello airlock PDF");
  auto cut = extract_document("cut.pdf", good.substr(0, good.size() / 2));
  if (!cut.is_ok()) {
    EXPECT_EQ(cut.status().code(), StatusCode::kInvalidArgument) << message(cut);
  }
  expect_no_children();
}

TEST(ExtractTest, MissingPdftotextIsUnavailable) {
  ExtractLimits limits;
  limits.pdftotext = "/nonexistent/bin/pdftotext";
  auto r = extract_document("a.pdf", make_pdf("x"), limits);
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(message(r).find("apt install poppler-utils"), std::string::npos) << message(r);
}

TEST(ExtractTest, PdfChildPastTheDeadlineIsKilledAndReaped) {
  ScriptDir dir;
  ExtractLimits limits;
  limits.pdftotext = dir.script("slow", "exec sleep 30");
  limits.pdf_timeout_ms = 300;
  const auto start = Clock::now();
  auto r = extract_document("slow.pdf", make_pdf("x"), limits);
  const auto took = Clock::now() - start;
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(message(r).find("ran longer than 300 ms"), std::string::npos) << message(r);
  EXPECT_GE(took, std::chrono::milliseconds(300));
  EXPECT_LT(took, std::chrono::seconds(3));
  expect_no_children();
  // A child that closes its output but keeps running is caught as well, and
  // what it started (its process group) dies with it.
  limits.pdftotext = dir.script("detached", "exec >&- 2>&-\nsleep 30");
  auto r2 = extract_document("slow.pdf", make_pdf("x"), limits);
  EXPECT_EQ(r2.status().code(), StatusCode::kResourceExhausted) << message(r2);
  expect_no_children();
  // One that starts a process in a session of its own before it exits: a
  // new session is refused, so nothing it starts outlives the extraction.
  limits.pdftotext = dir.script("leaver", "setsid sleep 7.77 &\nsleep 0.2\necho text\nexit 0");
  (void)extract_document("leave.pdf", make_pdf("x"), limits);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  for (const auto& p : std::filesystem::directory_iterator("/proc")) {
    std::ifstream in(p.path() / "cmdline", std::ios::binary);
    const std::string cmd((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (cmd != std::string("sleep\0" "7.77\0", 11)) continue;
    ADD_FAILURE() << "a process outlived the extraction: " << p.path();
    ::kill(std::stoi(p.path().filename().string()), SIGKILL);
  }
}

TEST(ExtractTest, PdfChildOutputOverTheCapIsKilled) {
  ScriptDir dir;
  ExtractLimits limits;
  limits.pdftotext = dir.script("chatty", "exec yes airlock");
  limits.max_output_bytes = 1 << 20;
  auto r = extract_document("big.pdf", make_pdf("x"), limits);
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(message(r).find("wrote more than 1048576 bytes"), std::string::npos) << message(r);
  expect_no_children();
}

TEST(ExtractTest, PdfChildThatExitsEarlyDoesNotKillUsWithSigpipe) {
  ScriptDir dir;
  ExtractLimits limits;
  // It closes stdin at once and exits a little later: our next write to its
  // stdin raises SIGPIPE (EPIPE) while its output is still open.
  limits.pdftotext = dir.script("quitter", "exec 0<&-\necho 'Syntax Error: not today' >&2\nsleep 0.2\nexit 3");
  // 8 MiB of input: far more than a pipe holds.
  const std::string pdf = "%PDF-1.4\n" + std::string(8 << 20, 'x');
  auto r = extract_document("early.pdf", pdf, limits);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(message(r).find("exit status 3: Syntax Error: not today"), std::string::npos) << message(r);
  sigset_t pending;
  sigemptyset(&pending);
  ASSERT_EQ(::sigpending(&pending), 0);
  EXPECT_FALSE(sigismember(&pending, SIGPIPE));  // consumed, not left for the caller
  sigset_t mask;
  ASSERT_EQ(::pthread_sigmask(SIG_SETMASK, nullptr, &mask), 0);
  EXPECT_FALSE(sigismember(&mask, SIGPIPE));  // and the mask restored
  expect_no_children();
}

TEST(ExtractTest, PdfChildRunsConfined) {
  ScriptDir dir;
  // An inheritable descriptor in this process must not reach the child.
  const int leak = ::open("/dev/null", O_RDONLY);
  ASSERT_GE(leak, 0);
  ExtractLimits limits;
  limits.pdf_timeout_ms = 2500;
  limits.pdf_memory_bytes = 256 << 20;
  limits.pdftotext = dir.script(
      "probe",
      "echo \"args=$*\"\n"
      "echo \"cwd=$(pwd) stdin=$(head -c 5)\"\n"
      "echo \"fsize=$(ulimit -f) cpu=$(ulimit -t) as=$(ulimit -v) nofile=$(ulimit -n) core=$(ulimit -c)\"\n"
      "[ -e /proc/$$/fd/" + std::to_string(leak) + " ] && echo leaked || echo closed\n"
      "grep -E '^(SigBlk|NoNewPrivs)' /proc/$$/status | tr -s '\\t' ' '\n"
      "env | grep -v '^PWD=' | sort");
  auto r = extract_document("probe.pdf", make_pdf("x"), limits);
  ::close(leak);
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(r->text,
            "args=-enc UTF-8 -nopgbrk - -\n"
            "cwd=/ stdin=%PDF-\n"
            "fsize=0 cpu=3 as=262144 nofile=32 core=0\n"
            "closed\n"
            "SigBlk: 0000000000000000\n"
            "NoNewPrivs: 1\n"
            "LANG=C.UTF-8\nPATH=/usr/bin:/bin");
  expect_no_children();
}

// What an exploited pdftotext could try: open a socket, trace or signal
// airlockd, change the mode or length of files airlockd's user owns, read
// them (rag.db, the state database, TLS keys) or create files. The seccomp
// filter refuses all but reading and creating everywhere; Landlock, where
// the kernel has it, those two (checked when expect_landlock).
void expect_child_cannot_escape(bool expect_landlock) {
  ScriptDir dir;
  char secret_tmpl[] = "/tmp/airlock-secret-XXXXXX";
  const char* secret_dir = ::mkdtemp(secret_tmpl);
  ASSERT_NE(secret_dir, nullptr);
  const std::string secret = std::string(secret_dir) + "/rag.db";
  std::ofstream(secret) << "every collection's text";
  struct stat before {};
  ASSERT_EQ(::stat(secret.c_str(), &before), 0);
  const std::string created = std::string(secret_dir) + "/dropped";
  ExtractLimits limits;
  limits.pdf_timeout_ms = 20000;
  limits.pdf_memory_bytes = 1024u << 20;
  internal::allow_child_processes_for_testing(false);  // the product's filter, whole
  limits.pdftotext = dir.script(
      "escape",
      "exec /usr/bin/python3 - <<'EOF'\n"
      "import threading\n"
      "import ctypes, os, socket\n"
      "def attempt(what, f):\n"
      "    try:\n"
      "        f(); print(what, 'allowed')\n"
      "    except OSError as e:\n"
      "        print(what, os.strerror(e.errno))\n"
      "attempt('socket', lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))\n"
      "attempt('unix', lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))\n"
      "libc = ctypes.CDLL(None, use_errno=True)\n"
      "r = libc.ptrace(16, os.getppid(), 0, 0)\n"
      "print('ptrace', 'allowed' if r == 0 else os.strerror(ctypes.get_errno()))\n"
      "attempt('chmod', lambda: os.chmod('" + secret + "', 0o666))\n"
      "attempt('truncate', lambda: os.truncate('" + secret + "', 0))\n"
      "attempt('signal', lambda: os.kill(" + std::to_string(::getpid()) + ", 0))\n"  // this process: airlockd's place
      "attempt('group', lambda: os.kill(-" + std::to_string(::getpgid(0)) + ", 0))\n"
      "attempt('setsid', os.setsid)\n"
      "attempt('setpgid', lambda: os.setpgid(0, 0))\n"
      "attempt('read', lambda: open('" + secret + "').read())\n"
      "attempt('create', lambda: open('" + created + "', 'w'))\n"
      "def fork():\n"
      "    if os.fork() == 0: os._exit(0)\n"
      "    os.wait()\n"
      "attempt('fork', fork)\n"
      "import subprocess\n"
      "attempt('spawn', lambda: subprocess.run(['/usr/bin/true']))\n"
      "seen = []\n"
      "t = threading.Thread(target=lambda: seen.append(1)); t.start(); t.join()\n"
      "print('thread', 'ran' if seen else 'did not run')\n"
      "EOF");
  auto r = extract_document("escape.pdf", make_pdf("x"), limits);
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_NE(r->text.find("socket Operation not permitted"), std::string::npos) << r->text;
  EXPECT_NE(r->text.find("unix Operation not permitted"), std::string::npos) << r->text;
  EXPECT_NE(r->text.find("ptrace Operation not permitted"), std::string::npos) << r->text;
  EXPECT_NE(r->text.find("thread ran"), std::string::npos) << r->text;  // threads are not processes
  for (const char* what : {"chmod", "truncate", "signal", "group", "setsid", "setpgid", "fork", "spawn"})
    EXPECT_NE(r->text.find(std::string(what) + " Operation not permitted"), std::string::npos) << what << ": " << r->text;
  struct stat after {};
  ASSERT_EQ(::stat(secret.c_str(), &after), 0);
  EXPECT_EQ(after.st_size, before.st_size);  // not truncated
  EXPECT_EQ(after.st_mode, before.st_mode);
  if (expect_landlock) {
    EXPECT_NE(r->text.find("read Permission denied"), std::string::npos) << r->text;
    EXPECT_NE(r->text.find("create Permission denied"), std::string::npos) << r->text;
    EXPECT_NE(::access(created.c_str(), F_OK), 0);
  }
  ::unlink(created.c_str());
  ::unlink(secret.c_str());
  ::rmdir(secret_dir);
  expect_no_children();
}

TEST(ExtractTest, PdfChildCannotConnectTraceReadOrWrite) {
  if (::access("/usr/bin/python3", X_OK) != 0) GTEST_SKIP() << "python3 not installed (scripts/setup installs it)";
  const std::string summary = pdf_sandbox_summary();
  const bool landlock = summary.find("Landlock ABI") != std::string::npos;
  if (!landlock) std::printf("Landlock not available here (%s): file confinement not checked\n", summary.c_str());
  expect_child_cannot_escape(landlock);
}

// The rulesets of older kernels (ABI 1 of 5.13, ABI 2 of Debian 12's 6.1,
// ...), applied on this kernel: each still runs the program and denies
// reading and creating files outside its paths.
TEST(ExtractTest, PdfChildIsConfinedAtEveryLandlockAbi) {
  if (::access("/usr/bin/python3", X_OK) != 0) GTEST_SKIP() << "python3 not installed (scripts/setup installs it)";
  const std::string summary = pdf_sandbox_summary();
  const std::size_t at = summary.find("Landlock ABI ");
  if (at == std::string::npos) GTEST_SKIP() << "this kernel has no Landlock: " << summary;
  const int kernel_abi = std::atoi(summary.c_str() + at + 13);
  for (int abi = 1; abi < kernel_abi; ++abi) {
    SCOPED_TRACE("Landlock ABI " + std::to_string(abi));
    internal::limit_landlock_abi_for_testing(abi);
    EXPECT_NE(pdf_sandbox_summary().find("Landlock ABI " + std::to_string(abi) + " on"), std::string::npos);
    expect_child_cannot_escape(true);
  }
  internal::limit_landlock_abi_for_testing(INT_MAX);
}

TEST(ExtractTest, PdfChildCrashOrBadOutputIsReported) {
  ScriptDir dir;
  ExtractLimits limits;
  limits.pdftotext = dir.script("crash", "kill -SEGV $$");
  auto crash = extract_document("crash.pdf", make_pdf("x"), limits);
  EXPECT_EQ(crash.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(message(crash).find("signal 11 (SIGSEGV)"), std::string::npos) << message(crash);
  limits.pdftotext = dir.script("latin1", "printf 'caf\\351'");
  auto bad = extract_document("latin1.pdf", make_pdf("x"), limits);
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(message(bad).find("not valid UTF-8 at byte offset 3"), std::string::npos) << message(bad);
  expect_no_children();
}

TEST(ExtractTest, PdfExtractionFromManyThreads) {
  REQUIRE_PDFTOTEXT();
  std::vector<std::thread> threads;
  std::vector<std::string> texts(6);
  for (std::size_t i = 0; i < texts.size(); ++i)
    threads.emplace_back([&, i] {
      auto r = extract_document("t.pdf", make_pdf("Thread " + std::to_string(i)));
      texts[i] = r.is_ok() ? r->text : r.status().to_string();
    });
  for (auto& t : threads) t.join();
  for (std::size_t i = 0; i < texts.size(); ++i) EXPECT_EQ(texts[i], "Thread " + std::to_string(i));
  expect_no_children();
}

}  // namespace
}  // namespace airlock::rag
