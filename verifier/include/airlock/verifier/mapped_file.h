// A read-only memory mapping of a whole regular file.
//
// Bundles are verified straight from the mapping: the hashing threads read
// file data without a copy. A file that becomes shorter while mapped makes
// reads past its new end raise SIGBUS; the verifier reads mappings only
// through guarded reads that turn this into kIoError (verifier/src/
// guarded_read.h). Other readers of bytes() must do the same or accept the
// risk.
//
// Errors from open(): kNotFound, kInvalidArgument (not a regular file),
// kIoError. An empty file maps to an empty span.
//
// Thread-safety: the mapping is immutable; share it freely.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "airlock/common/status.h"

namespace airlock::verifier {

class MappedFile {
 public:
  MappedFile() = default;
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  static Result<MappedFile> open(const std::string& path);

  std::span<const std::uint8_t> bytes() const { return {data_, size_}; }

 private:
  const std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace airlock::verifier
