#include "tar_reader.h"

#include <archive.h>
#include <archive_entry.h>

#include <algorithm>
#include <cctype>
#include <cstring>

namespace airlock::verifier {
namespace {

std::string archive_message(::archive* ar) {
  const char* m = archive_error_string(ar);
  return m != nullptr ? std::string(m) : std::string("unknown archive error");
}

}  // namespace

std::string printable_name(std::string_view name) {
  std::string out;
  for (char c : name.substr(0, 120)) out.push_back(std::isprint(static_cast<unsigned char>(c)) ? c : '?');
  if (name.size() > 120) out += "...";
  return out;
}

std::string_view compression_magic(std::span<const std::uint8_t> h) {
  auto starts = [&](std::initializer_list<std::uint8_t> magic) {
    if (h.size() < magic.size()) return false;
    return std::equal(magic.begin(), magic.end(), h.begin());
  };
  if (starts({0x1f, 0x8b})) return "gzip";
  if (starts({0x1f, 0x9d}) || starts({0x1f, 0xa0})) return "compress";
  if (starts({'B', 'Z', 'h'})) return "bzip2";
  if (starts({0xfd, '7', 'z', 'X', 'Z', 0x00})) return "xz";
  if (starts({0x28, 0xb5, 0x2f, 0xfd})) return "zstd";
  if (starts({0x04, 0x22, 0x4d, 0x18})) return "lz4";
  if (starts({0x5d, 0x00, 0x00})) return "lzma";
  if (starts({'P', 'K', 0x03, 0x04})) return "zip";
  return {};
}

TarReader::TarReader(std::span<const std::uint8_t> archive_bytes) : bytes_(archive_bytes) {
  ar_ = archive_read_new();
  if (ar_ == nullptr) {
    open_status_ = internal_error("libarchive: out of memory");
    return;
  }
  archive_read_support_format_tar(ar_);
  // archive_read_open_memory hands libarchive the whole span as one block, so
  // archive_read_data_block returns pointers into it: no copy of the payload.
  if (archive_read_open_memory(ar_, bytes_.data(), bytes_.size()) != ARCHIVE_OK)
    open_status_ = verification_failed("not a tar archive: " + archive_message(ar_));
}

TarReader::~TarReader() {
  if (ar_ != nullptr) archive_read_free(ar_);
}

Result<bool> TarReader::next(TarEntry* entry) {
  AIRLOCK_RETURN_IF_ERROR(open_status_);
  archive_entry* e = nullptr;
  int rc = archive_read_next_header(ar_, &e);
  if (rc == ARCHIVE_EOF) {
    AIRLOCK_RETURN_IF_ERROR(check_end());
    return false;
  }
  if (rc != ARCHIVE_OK) return verification_failed("damaged or truncated tar archive: " + archive_message(ar_));
  const char* name = archive_entry_pathname(e);
  entry->name = name != nullptr ? std::string(name) : std::string();
  entry->size = archive_entry_size_is_set(e) && archive_entry_size(e) >= 0
                    ? static_cast<std::uint64_t>(archive_entry_size(e)) : 0;
  current_size_ = entry->size;
  if (archive_entry_hardlink(e) != nullptr) entry->kind = "hardlink";
  else if (archive_entry_symlink(e) != nullptr) entry->kind = "symlink";
  else if (archive_entry_sparse_count(e) > 0) entry->kind = "sparse file";
  else {
    switch (archive_entry_filetype(e)) {
      case AE_IFREG: entry->kind = "file"; break;
      case AE_IFDIR: entry->kind = "directory"; break;
      case AE_IFLNK: entry->kind = "symlink"; break;
      case AE_IFCHR: case AE_IFBLK: entry->kind = "device"; break;
      case AE_IFIFO: entry->kind = "fifo"; break;
      case AE_IFSOCK: entry->kind = "socket"; break;
      default: entry->kind = "unknown"; break;
    }
  }
  return true;
}

// libarchive stops at the first zero block; what follows it could carry
// anything (a second archive, a script) that a different tar reader would
// see. Only zero padding may follow the end-of-archive marker.
Status TarReader::check_end() {
  const la_int64_t consumed = archive_filter_bytes(ar_, -1);
  if (consumed < 0 || static_cast<std::uint64_t>(consumed) > bytes_.size())
    return verification_failed("tar archive: cannot locate the end-of-archive marker");
  const std::span<const std::uint8_t> rest = bytes_.subspan(static_cast<std::size_t>(consumed));
  const auto nonzero = std::find_if(rest.begin(), rest.end(), [](std::uint8_t b) { return b != 0; });
  if (nonzero != rest.end())
    return verification_failed("data after the end of the tar archive (offset " +
                               std::to_string(static_cast<std::size_t>(consumed) +
                                              static_cast<std::size_t>(nonzero - rest.begin())) +
                               "); only zero padding may follow");
  return Status::ok();
}

Status TarReader::read_data(const std::function<Status(const std::uint8_t*, std::size_t)>& sink) {
  std::uint64_t expected_offset = 0;
  while (true) {
    const void* block = nullptr;
    size_t n = 0;
    la_int64_t offset = 0;
    int rc = archive_read_data_block(ar_, &block, &n, &offset);
    if (rc == ARCHIVE_EOF) break;
    if (rc != ARCHIVE_OK) return verification_failed("damaged or truncated tar archive: " + archive_message(ar_));
    if (offset < 0 || static_cast<std::uint64_t>(offset) != expected_offset)
      return verification_failed("entry data has a hole (sparse data is refused)");
    if (n > current_size_ - expected_offset) return verification_failed("entry data longer than its header says");
    if (n > 0) AIRLOCK_RETURN_IF_ERROR(sink(static_cast<const std::uint8_t*>(block), n));
    expected_offset += n;
  }
  if (expected_offset != current_size_)
    return verification_failed("archive ended inside an entry (" + std::to_string(expected_offset) + " of " +
                               std::to_string(current_size_) + " bytes)");
  return Status::ok();
}

Status TarReader::read_small(std::string* out, std::uint64_t max_bytes) {
  if (current_size_ > max_bytes)
    return verification_failed("entry is " + std::to_string(current_size_) + " bytes, limit " +
                               std::to_string(max_bytes));
  out->clear();
  out->reserve(static_cast<std::size_t>(current_size_));
  return read_data([&](const std::uint8_t* p, std::size_t n) {
    out->append(reinterpret_cast<const char*>(p), n);
    return Status::ok();
  });
}

Status require_regular_file(const TarEntry& entry) {
  if (entry.kind == "file") return Status::ok();
  return verification_failed("entry '" + printable_name(entry.name) + "' is a " + entry.kind + "; only regular files are allowed");
}

}  // namespace airlock::verifier
