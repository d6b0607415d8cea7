// A reader for the safetensors format (Hugging Face): an 8-byte
// little-endian header length N, N bytes of JSON naming each tensor's dtype,
// shape and [begin, end) byte offsets into the data that follows, then the
// data. The file is mapped; tensors are views into the mapping.
//
// The file is untrusted: the header length, the JSON (depth, size, key
// duplicates), every dtype, shape and offset are checked against the file
// before use: shapes must multiply out to the byte range exactly, ranges must
// lie inside the data, and no two tensors may overlap.
//
// Errors: kNotFound / kIoError for the file, kVerificationFailed for
// anything malformed (the message names the tensor).
//
// Thread-safety: immutable after open(); views stay valid while the
// SafetensorsFile lives.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "airlock/common/status.h"

namespace airlock::engine {

enum class StDtype { kF64, kF32, kF16, kBF16, kI64, kI32, kI16, kI8, kU8, kBool };

struct StTensor {
  StDtype dtype = StDtype::kF32;
  std::vector<std::int64_t> shape;
  std::span<const std::uint8_t> data;
  std::int64_t n_elements() const;
};

class SafetensorsFile {
 public:
  static Result<std::unique_ptr<SafetensorsFile>> open(const std::string& path);
  // Parses bytes that the caller keeps alive (tests, fuzzing).
  static Result<std::unique_ptr<SafetensorsFile>> parse(std::span<const std::uint8_t> bytes);
  ~SafetensorsFile();

  const StTensor* find(const std::string& name) const;
  const std::map<std::string, StTensor>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // Element i of a tensor as float (any numeric dtype); i < n_elements().
  static double element(const StTensor& t, std::int64_t i);

 private:
  SafetensorsFile() = default;
  void* map_ = nullptr;
  std::size_t map_size_ = 0;
  std::map<std::string, StTensor> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace airlock::engine
