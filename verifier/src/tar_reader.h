// Reads an uncompressed tar archive held in memory, through libarchive.
// Internal to the verifier. Only the tar family is enabled (ustar, pax, GNU):
// no decompression filter and no other format is ever attempted, so a
// compressed or foreign file fails at the first header.
//
// Thread-safety: one TarReader per thread.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>

#include "airlock/common/status.h"

struct archive;

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

 private:
  Status check_end();

  std::span<const std::uint8_t> bytes_;
  ::archive* ar_ = nullptr;
  std::uint64_t current_size_ = 0;
  Status open_status_;
};

// A name safe to print in a message: non-printable bytes become '?', long
// names are cut.
std::string printable_name(std::string_view name);

// Names a compression format from its magic bytes, or returns empty.
std::string_view compression_magic(std::span<const std::uint8_t> head);

// kVerificationFailed unless the entry is a plain regular file.
Status require_regular_file(const TarEntry& entry);

}  // namespace airlock::verifier
