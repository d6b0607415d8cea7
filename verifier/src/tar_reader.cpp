#include "tar_reader.h"

#include <archive.h>
#include <archive_entry.h>

#include <algorithm>
#include <cctype>
#include <cstring>

#include "guarded_read.h"

namespace airlock::verifier {
namespace {

// The longest pax records an entry may carry (a bundle's: a long path, a
// large size).
constexpr std::uint64_t kMaxPaxRecordBytes = 64 * 1024;

std::string archive_message(::archive* ar) {
  const char* m = archive_error_string(ar);
  return m != nullptr ? std::string(m) : std::string("unknown archive error");
}

// The offset of the first non-zero byte of a mapped span (its size when all
// are zero), read guarded.
Result<std::size_t> first_nonzero(std::span<const std::uint8_t> bytes) {
  std::size_t at = 0;
  auto scan = [&] {
    at = static_cast<std::size_t>(std::find_if(bytes.begin(), bytes.end(), [](std::uint8_t b) { return b != 0; }) -
                                  bytes.begin());
  };
  if (!read_guarded(scan)) return file_shrank("bundle");
  return at;
}

}  // namespace

std::string printable_name(std::string_view name) {
  std::string out;
  for (char c : name.substr(0, 120)) out.push_back(std::isprint(static_cast<unsigned char>(c)) ? c : '?');
  if (name.size() > 120) out += "...";
  return out;
}

Result<std::string_view> compression_magic(std::span<const std::uint8_t> archive) {
  std::uint8_t head[8] = {};
  const std::span<const std::uint8_t> h(head, std::min(archive.size(), sizeof head));
  if (!copy_guarded(head, archive.data(), h.size())) return file_shrank("bundle");
  auto starts = [&](std::initializer_list<std::uint8_t> magic) {
    if (h.size() < magic.size()) return false;
    return std::equal(magic.begin(), magic.end(), h.begin());
  };
  if (starts({0x1f, 0x8b})) return std::string_view("gzip");
  if (starts({0x1f, 0x9d}) || starts({0x1f, 0xa0})) return std::string_view("compress");
  if (starts({'B', 'Z', 'h'})) return std::string_view("bzip2");
  if (starts({0xfd, '7', 'z', 'X', 'Z', 0x00})) return std::string_view("xz");
  if (starts({0x28, 0xb5, 0x2f, 0xfd})) return std::string_view("zstd");
  if (starts({0x04, 0x22, 0x4d, 0x18})) return std::string_view("lz4");
  if (starts({0x5d, 0x00, 0x00})) return std::string_view("lzma");
  if (starts({'P', 'K', 0x03, 0x04})) return std::string_view("zip");
  return std::string_view();
}

TarReader::TarReader(std::span<const std::uint8_t> archive_bytes) : bytes_(archive_bytes) {
  ar_ = archive_read_new();
  if (ar_ == nullptr) {
    open_status_ = internal_error("libarchive: out of memory");
    return;
  }
  archive_read_support_format_tar(ar_);
  archive_read_set_read_callback(ar_, &TarReader::read_callback);
  archive_read_set_skip_callback(ar_, &TarReader::skip_callback);
  archive_read_set_callback_data(ar_, this);
  if (archive_read_open1(ar_) != ARCHIVE_OK) open_status_ = archive_error("not a tar archive");
}

// Hands libarchive the next block as a copy. Headers and small entries are
// all it reads; payload data is skipped (skip_callback) and hashed in place.
la_ssize_t TarReader::read_callback(::archive* a, void* self, const void** block) {
  constexpr std::size_t kBlockBytes = 64 * 1024;
  auto* r = static_cast<TarReader*>(self);
  const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(kBlockBytes, r->bytes_.size() - r->position_));
  *block = nullptr;
  if (n == 0) return 0;
  r->block_.resize(kBlockBytes);
  if (!copy_guarded(r->block_.data(), r->bytes_.data() + r->position_, n)) {
    r->shrank_ = true;
    archive_set_error(a, EIO, "the file became shorter while it was being read");
    return ARCHIVE_FATAL;
  }
  r->position_ += n;
  *block = r->block_.data();
  return static_cast<la_ssize_t>(n);
}

la_int64_t TarReader::skip_callback(::archive*, void* self, la_int64_t request) {
  auto* r = static_cast<TarReader*>(self);
  if (request <= 0) return 0;
  const std::uint64_t n = std::min<std::uint64_t>(static_cast<std::uint64_t>(request), r->bytes_.size() - r->position_);
  r->position_ += n;
  return static_cast<la_int64_t>(n);
}

Status TarReader::archive_error(std::string_view what) {
  if (shrank_) return file_shrank("bundle");
  return verification_failed(std::string(what) + ": " + archive_message(ar_));
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
  if (rc != ARCHIVE_OK) return archive_error("damaged or truncated tar archive");
  // GNU headers can carry a "realsize" that libarchive reports as the size
  // while other readers extract the stored length; bundles are written with
  // ustar and pax headers only.
  if (archive_format(ar_) == ARCHIVE_FORMAT_TAR_GNUTAR)
    return verification_failed("GNU tar header: bundles use ustar and pax headers only");
  const la_int64_t data_at = archive_filter_bytes(ar_, -1);
  if (data_at < 0 || static_cast<std::uint64_t>(data_at) > bytes_.size())
    return verification_failed("truncated tar archive: cannot locate the entry's data");
  AIRLOCK_RETURN_IF_ERROR(check_headers(static_cast<std::uint64_t>(data_at)));
  const char* name = archive_entry_pathname(e);
  entry->name = name != nullptr ? std::string(name) : std::string();
  entry->size = archive_entry_size_is_set(e) && archive_entry_size(e) >= 0
                    ? static_cast<std::uint64_t>(archive_entry_size(e)) : 0;
  AIRLOCK_RETURN_IF_ERROR(check_ustar_fields(entry->name, entry->size));
  current_size_ = entry->size;
  prev_data_end_ = static_cast<std::uint64_t>(data_at) + entry->size;
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

// Every byte from the end of the previous entry's data to this entry's
// data is accounted for: zero padding, at most one pax extended header
// ('x') with its records, then the entry's own header. libarchive applies
// other headers silently (a pax global header 'g', a volume label 'V'),
// where GNU tar and Python's tarfile apply a global header's path to every
// later entry (outside the extraction directory); and it never looks at
// the padding after data it hands out whole.
Status TarReader::check_headers(std::uint64_t data_at) {
  const std::uint64_t padded = (prev_data_end_ + 511) / 512 * 512;
  if (padded > data_at) return verification_failed("tar archive: an entry's headers overlap the previous entry's data");
  AIRLOCK_ASSIGN_OR_RETURN(std::size_t nonzero, first_nonzero(bytes_.subspan(prev_data_end_, padded - prev_data_end_)));
  if (nonzero != padded - prev_data_end_)
    return verification_failed("non-zero bytes in the padding after an entry's data");
  std::uint64_t pos = padded;
  bool extended = false;
  while (true) {
    if (data_at - pos < 512) return verification_failed("tar archive: an entry's headers do not end where its data begins");
    std::uint8_t h[512];
    if (!copy_guarded(h, bytes_.data() + pos, sizeof h)) return file_shrank("bundle");
    // The ustar magic and version exactly, as the writer emits them: the
    // prefix field (check_ustar_fields) means the same to every reader only
    // then. libarchive applies the prefix whenever the magic begins
    // "ustar", GNU tar only for "ustar\0" (otherwise it reads a v7 header
    // and ignores the prefix), so a bundle could verify as one path and
    // extract to another.
    if (std::memcmp(h + 257, "ustar\0" "00", 8) != 0)
      return verification_failed("tar header at offset " + std::to_string(pos) +
                                 ": its magic and version are not POSIX ustar's (\"ustar\\0\" \"00\"), which tar "
                                 "readers interpret differently; bundles hold ustar headers only");
    pos += 512;
    const char type = static_cast<char>(h[156]);
    if (pos == data_at && type != 'x' && type != 'g') {  // the entry's own header
      std::memcpy(entry_header_.data(), h, sizeof h);
      return Status::ok();
    }
    if (type != 'x' || extended) {
      const std::string shown = std::isprint(static_cast<unsigned char>(type)) ? std::string(1, type) : "\\0";
      return verification_failed("tar header of type '" + shown + "' at offset " + std::to_string(pos - 512) +
                                 ": bundles hold ustar headers with at most one pax extended header each (no global "
                                 "or volume headers)");
    }
    extended = true;
    // The pax records' length: octal in the size field.
    std::uint64_t size = 0;
    int digits = 0;
    for (int i = 124; i < 136 && h[i] != 0 && h[i] != ' '; ++i, ++digits) {
      if (h[i] < '0' || h[i] > '7' || size > (std::uint64_t{1} << 40)) return verification_failed("tar header: bad size field");
      size = size * 8 + (h[i] - '0');
    }
    if (digits == 0) return verification_failed("tar header: bad size field");
    const std::uint64_t records = (size + 511) / 512 * 512;
    if (records > data_at - pos) return verification_failed("tar archive: a pax header's records overrun the entry");
    // GNU.sparse.* records rename and reshape an entry for the readers
    // that apply them (libarchive: GNU.sparse.name replaces the path)
    // and not for others; bundles never carry them, nor records this long.
    if (size > kMaxPaxRecordBytes) return verification_failed("tar archive: a pax header's records are over 64 KiB");
    std::string text(size, '\0');
    if (!copy_guarded(text.data(), bytes_.data() + pos, size)) return file_shrank("bundle");
    if (text.find(" GNU.sparse.") != std::string::npos)
      return verification_failed("tar archive: a pax header with GNU.sparse records (bundles hold plain files)");
    pos += records;
  }
}

// The entry's own ustar header against what libarchive made of it (with
// its pax records applied): a reader that ignores pax headers uses the raw
// fields, so they must say the same. The path: prefix/name (every reader
// takes the prefix: check_headers has required the exact ustar magic) equal
// to the entry's path, or, when the path needs pax (it does not fit), a
// relative path without '.' components; the size field equal to the size
// (octal, or base-256 when the high bit of its first byte is set).
Status TarReader::check_ustar_fields(const std::string& name, std::uint64_t size) const {
  const std::uint8_t* h = entry_header_.data();
  auto field = [h](std::size_t at, std::size_t n) {
    std::size_t len = 0;
    while (len < n && h[at + len] != 0) ++len;
    return std::string(reinterpret_cast<const char*>(h + at), len);
  };
  const std::string prefix = field(345, 155), base = field(0, 100);
  const std::string raw = prefix.empty() ? base : prefix + "/" + base;
  if (raw != name) {
    bool safe = name.size() > 100 && !raw.empty() && raw[0] != '/';
    for (std::size_t start = 0; safe && start <= raw.size();) {
      const std::size_t slash = std::min(raw.find('/', start), raw.size());
      safe = slash > start && raw[start] != '.';
      start = slash + 1;
    }
    if (!safe)
      return verification_failed("tar header: its ustar name '" + printable_name(raw) + "' differs from the entry's path '" +
                                 printable_name(name) + "' (a reader that ignores pax headers would use it)");
  }
  std::uint64_t raw_size = 0;
  if (h[124] & 0x80) {  // base-256
    if ((h[124] & 0x7f) != 0 || h[125] != 0 || h[126] != 0 || h[127] != 0)
      return verification_failed("tar header: a base-256 size field over 2^64");
    for (std::size_t i = 128; i < 136; ++i) raw_size = raw_size << 8 | h[i];
  } else {
    std::size_t i = 124;
    while (i < 136 && h[i] == ' ') ++i;
    for (; i < 136 && h[i] >= '0' && h[i] <= '7'; ++i) raw_size = raw_size * 8 + (h[i] - '0');
    if (i < 136 && h[i] != 0 && h[i] != ' ') return verification_failed("tar header: bad size field");
  }
  if (raw_size != size)
    return verification_failed("tar header: its size field says " + std::to_string(raw_size) + " bytes, the entry has " +
                               std::to_string(size) + " (a reader that ignores pax headers would read other bytes)");
  return Status::ok();
}

// libarchive stops at the first zero block; what follows it could carry
// anything (a second archive, a script) that a different tar reader would
// see. Only zero padding may follow the end-of-archive marker.
Status TarReader::check_end() {
  const la_int64_t consumed = archive_filter_bytes(ar_, -1);
  if (consumed < 0 || static_cast<std::uint64_t>(consumed) > bytes_.size())
    return verification_failed("tar archive: cannot locate the end-of-archive marker");
  // From the last entry's data to the end marker: its padding and zero
  // blocks only (not a global header that applies to nothing).
  if (prev_data_end_ > static_cast<std::uint64_t>(consumed))
    return verification_failed("tar archive: cannot locate the end-of-archive marker");
  AIRLOCK_ASSIGN_OR_RETURN(std::size_t tail, first_nonzero(bytes_.subspan(prev_data_end_, static_cast<std::size_t>(consumed) - prev_data_end_)));
  if (tail != static_cast<std::size_t>(consumed) - prev_data_end_)
    return verification_failed("tar archive: a header or data after the last entry (offset " +
                               std::to_string(prev_data_end_ + tail) + ")");
  const std::span<const std::uint8_t> rest = bytes_.subspan(static_cast<std::size_t>(consumed));
  AIRLOCK_ASSIGN_OR_RETURN(std::size_t nonzero, first_nonzero(rest));
  if (nonzero != rest.size())
    return verification_failed("data after the end of the tar archive (offset " +
                               std::to_string(static_cast<std::size_t>(consumed) + nonzero) +
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
    if (rc != ARCHIVE_OK) return archive_error("damaged or truncated tar archive");
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

Result<std::uint64_t> TarReader::data_offset() {
  // The client-level filter's position is what the tar reader has consumed:
  // every header of the entry, and none of its data yet.
  const la_int64_t at = archive_filter_bytes(ar_, -1);
  if (at < 0 || static_cast<std::uint64_t>(at) > bytes_.size())
    return verification_failed("truncated tar archive: cannot locate the entry's data");
  const std::uint64_t present = bytes_.size() - static_cast<std::uint64_t>(at);
  if (current_size_ > present)
    return verification_failed("truncated tar archive: it ends inside the entry (" + std::to_string(present) + " of " +
                               std::to_string(current_size_) + " bytes present)");
  return static_cast<std::uint64_t>(at);
}

Status TarReader::skip_data() {
  const la_int64_t at = archive_filter_bytes(ar_, -1);
  if (archive_read_data_skip(ar_) != ARCHIVE_OK) return archive_error("damaged or truncated tar archive");
  // What was skipped must be exactly the entry's size rounded up to a block:
  // a header can give libarchive a size (a "realsize") other than the
  // length of data stored, and another tar reader would then extract bytes
  // that were never hashed.
  const la_int64_t after = archive_filter_bytes(ar_, -1);
  const std::uint64_t padded = (current_size_ + 511) / 512 * 512;
  if (at < 0 || after < at || static_cast<std::uint64_t>(after - at) != padded || after > static_cast<la_int64_t>(bytes_.size()))
    return verification_failed("the entry stores " + std::to_string(after - at) + " bytes of data and padding, but its size is " +
                               std::to_string(current_size_) + " (another tar reader would see other bytes)");
  // The padding after the data is zero, as every writer leaves it.
  const std::span<const std::uint8_t> pad =
      bytes_.subspan(static_cast<std::size_t>(at) + current_size_, padded - current_size_);
  AIRLOCK_ASSIGN_OR_RETURN(std::size_t nonzero, first_nonzero(pad));
  if (nonzero != pad.size()) return verification_failed("non-zero bytes in the padding after the entry's data");
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
