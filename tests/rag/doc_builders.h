// Builders of real documents for tests: DOCX (a zip made with libarchive)
// and a one-page PDF with a correct xref table. Used by the extraction tests
// and the daemon's RAG end-to-end tests.
#pragma once

#include <archive.h>
#include <archive_entry.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

namespace airlock::rag::testing {

constexpr std::string_view kWordNs = "http://schemas.openxmlformats.org/wordprocessingml/2006/main";

// Writes a zip archive into a string with libarchive (deflate).
class ZipWriter {
 public:
  ZipWriter() : a_(archive_write_new()) {
    archive_write_set_format_zip(a_);
    archive_write_set_options(a_, "zip:compression=deflate");
    archive_write_set_bytes_per_block(a_, 0);
    archive_write_open(a_, &out_, nullptr, &ZipWriter::write_cb, nullptr);
  }
  ~ZipWriter() { archive_write_free(a_); }

  // An entry of `repeat` copies of `chunk` (so a large entry is never held whole).
  void add(const std::string& name, const std::string& chunk, std::size_t repeat = 1) {
    archive_entry* e = archive_entry_new();
    archive_entry_set_pathname(e, name.c_str());
    archive_entry_set_size(e, static_cast<la_int64_t>(chunk.size() * repeat));
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0644);
    EXPECT_EQ(archive_write_header(a_, e), ARCHIVE_OK) << archive_error_string(a_);
    for (std::size_t i = 0; i < repeat; ++i)
      EXPECT_EQ(archive_write_data(a_, chunk.data(), chunk.size()), static_cast<la_ssize_t>(chunk.size()));
    archive_entry_free(e);
  }
  std::string finish() {
    archive_write_close(a_);
    return out_;
  }

 private:
  static la_ssize_t write_cb(archive*, void* out, const void* buf, std::size_t n) {
    static_cast<std::string*>(out)->append(static_cast<const char*>(buf), n);
    return static_cast<la_ssize_t>(n);
  }
  archive* a_;
  std::string out_;
};

inline std::string document_xml(const std::string& body, const std::string& prolog = {}) {
  return "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n" + prolog + "<w:document xmlns:w=\"" +
         std::string(kWordNs) + "\"><w:body>" + body + "</w:body></w:document>";
}

inline std::string make_docx(const std::string& xml) {
  ZipWriter z;
  z.add("[Content_Types].xml", "<?xml version=\"1.0\"?><Types/>");
  z.add("word/document.xml", xml);
  z.add("word/styles.xml", "<styles/>");
  return z.finish();
}

// A one-page PDF drawing `text` in Helvetica, with a correct xref table.
inline std::string make_pdf(const std::string& text) {
  const std::string stream = "BT /F1 24 Tf 72 700 Td (" + text + ") Tj ET";
  const std::vector<std::string> objects = {
      "<< /Type /Catalog /Pages 2 0 R >>",
      "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
      "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
      "/Resources << /Font << /F1 5 0 R >> >> >>",
      "<< /Length " + std::to_string(stream.size()) + " >>\nstream\n" + stream + "\nendstream",
      "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
  };
  std::string pdf = "%PDF-1.4\n";
  std::vector<std::size_t> offsets;
  for (std::size_t i = 0; i < objects.size(); ++i) {
    offsets.push_back(pdf.size());
    pdf += std::to_string(i + 1) + " 0 obj\n" + objects[i] + "\nendobj\n";
  }
  const std::size_t xref = pdf.size();
  pdf += "xref\n0 " + std::to_string(objects.size() + 1) + "\n0000000000 65535 f \n";
  for (std::size_t off : offsets) {
    char line[32];
    std::snprintf(line, sizeof line, "%010zu 00000 n \n", off);
    pdf += line;
  }
  pdf += "trailer\n<< /Size " + std::to_string(objects.size() + 1) + " /Root 1 0 R >>\nstartxref\n" +
         std::to_string(xref) + "\n%%EOF\n";
  return pdf;
}

}  // namespace airlock::rag::testing
