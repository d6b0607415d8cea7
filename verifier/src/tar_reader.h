// Reads an uncompressed tar archive held in memory (a file mapping), through
// libarchive. Internal to the verifier.
//
// libarchive never reads the mapping itself: it gets the bytes it parses
// (headers, small entries) as copies made by a guarded read
// (guarded_read.h), and skips the data of large entries, which callers hash
// in place at data_offset(). A mapping that shrinks while it is read fails
// with kIoError instead of ending the process with SIGBUS.
//
// Only the tar family is enabled, and of it ustar and pax headers are
// accepted (GNU headers are refused): no decompression filter and no other
// format is ever attempted, so a compressed or foreign file fails at the
// first header.
//
// Thread-safety: one TarReader per thread.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include <archive.h>

#include "airlock/common/status.h"

namespace airlock::verifier {

struct TarEntry {
  std::string name;  // exact bytes from the header; show with printable_name()
  std::uint64_t size = 0;
  std::string kind;  // "file", "directory", "symlink", "hardlink", "device", "fifo", "socket", "sparse file", "unknown"
};

class TarReader {
 public:
  explicit TarReader(std::span<const std::uint8_t> archive_bytes);
  ~TarReader();
  TarReader(const TarReader&) = delete;
  TarReader& operator=(const TarReader&) = delete;

  // Advances to the next entry. Returns false at a clean end of archive:
  // the end-of-archive marker followed by nothing but zero bytes (anything
  // else after the marker is kVerificationFailed).
  Result<bool> next(TarEntry* entry);

  // Reads the current entry's data as blocks: `sink(data, n_bytes)` in order,
  // with no holes. Fails if the archive ends early or the data length differs
  // from the header's size.
  Status read_data(const std::function<Status(const std::uint8_t*, std::size_t)>& sink);

  // Reads the current entry whole into `out`; its size must be <= max_bytes
  // (checked from the header before reading).
  Status read_small(std::string* out, std::uint64_t max_bytes);

  // Where the current entry's data starts in the archive (call right after
  // next(), before reading any of it). Its `size` bytes lie inside the
  // archive, or kVerificationFailed says the archive ends inside the entry.
  Result<std::uint64_t> data_offset();

  // Moves past the current entry's data without reading it.
  Status skip_data();

 private:
  static la_ssize_t read_callback(::archive* a, void* self, const void** block);
  static la_int64_t skip_callback(::archive* a, void* self, la_int64_t request);
  Status check_end();
  Status check_headers(std::uint64_t data_at);
  Status check_ustar_fields(const std::string& name, std::uint64_t size) const;
  Status archive_error(std::string_view what);

  std::span<const std::uint8_t> bytes_;
  std::uint64_t position_ = 0;       // next byte handed to libarchive
  std::vector<std::uint8_t> block_;  // what libarchive reads: a copy of the mapping
  bool shrank_ = false;              // a guarded copy faulted
  ::archive* ar_ = nullptr;
  std::uint64_t current_size_ = 0;
  std::uint64_t prev_data_end_ = 0;  // where the last entry's data ended (0 before the first)
  std::array<std::uint8_t, 512> entry_header_{};  // the current entry's own ustar header, raw
  Status open_status_;
};

// A name safe to print in a message: non-printable bytes become '?', long
// names are cut.
std::string printable_name(std::string_view name);

// Names a compression format from the archive's magic bytes, or returns
// empty. Reads the mapping guarded: kIoError if it shrank.
Result<std::string_view> compression_magic(std::span<const std::uint8_t> archive);

// kVerificationFailed unless the entry is a plain regular file.
Status require_regular_file(const TarEntry& entry);

}  // namespace airlock::verifier
