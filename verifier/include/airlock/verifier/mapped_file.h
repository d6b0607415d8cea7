// A read-only memory mapping of a whole regular file.
//
// Bundles are verified straight from the mapping: libarchive parses the tar
// headers in place and the hashing threads read file data without a copy.
// The file must not be truncated while mapped (the kernel would deliver
// SIGBUS); copy bundles off removable media before verifying them.
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
