// A GGUF file (v2 or v3), memory-mapped and checked.
//
// open() maps the file read-only and parses the header, every metadata entry
// and the tensor table. Every count, string length, array length, dimension,
// offset and size is checked against the file before it is used; a hostile
// or damaged file yields kVerificationFailed ("gguf: <reason> at offset N")
// and never a crash or an allocation the file does not pay for. Tensor data
// stays in the mapping: GgufTensor::data points into it, no copy.
//
// Ownership: GgufFile owns the mapping; every string_view and span handed
// out (metadata strings, string arrays, tensor data) lives as long as the
// GgufFile object.
//
// Thread-safety: immutable after open(); concurrent const use is safe.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "airlock/common/status.h"
#include "airlock/engine/ggml_types.h"

namespace airlock::engine {

enum class GgufValueType : std::uint32_t {
  kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7,
  kString = 8, kArray = 9, kU64 = 10, kI64 = 11, kF64 = 12,
};

// One metadata value. Scalars are decoded; arrays keep their element type,
// length and raw little-endian bytes (strings: their views).
struct GgufValue {
  GgufValueType type = GgufValueType::kU8;
  std::uint64_t u = 0;        // unsigned / bool scalars
  std::int64_t i = 0;         // signed scalars (also set for unsigned that fit)
  double f = 0;               // float scalars (also set for every numeric scalar)
  std::string_view str;       // kString
  GgufValueType elem_type = GgufValueType::kU8;  // kArray
  std::uint64_t n_elems = 0;                     // kArray
  std::span<const std::uint8_t> raw;             // kArray of numbers: the elements' bytes
  std::vector<std::string_view> strings;         // kArray of strings
};

struct GgufTensor {
  std::string name;
  GgmlType type = GgmlType::kF32;
  int n_dims = 0;
  std::int64_t ne[4] = {1, 1, 1, 1};  // ggml order: ne[0] is the row length
  std::int64_t n_elements = 0;
  std::span<const std::uint8_t> data;  // into the mapping
};

class GgufFile {
 public:
  static Result<std::unique_ptr<GgufFile>> open(const std::string& path);
  // Parses bytes owned by the caller (tests, fuzzing); they must outlive the file.
  static Result<std::unique_ptr<GgufFile>> parse(std::span<const std::uint8_t> bytes);
  ~GgufFile();

  std::uint32_t version() const { return version_; }
  std::uint64_t alignment() const { return alignment_; }

  const GgufValue* find(std::string_view key) const;
  // Typed accessors: nullopt when absent or of an incompatible type.
  std::optional<std::uint64_t> get_uint(std::string_view key) const;
  std::optional<std::int64_t> get_int(std::string_view key) const;
  std::optional<double> get_float(std::string_view key) const;
  std::optional<bool> get_bool(std::string_view key) const;
  std::optional<std::string_view> get_string(std::string_view key) const;
  // Arrays; kNotFound when absent, kInvalidArgument for the wrong element type.
  Result<std::vector<std::string_view>> get_string_array(std::string_view key) const;
  Result<std::vector<float>> get_float_array(std::string_view key) const;
  Result<std::vector<std::int64_t>> get_int_array(std::string_view key) const;

  const std::vector<GgufTensor>& tensors() const { return tensors_; }
  const GgufTensor* tensor(std::string_view name) const;
  const std::map<std::string, GgufValue, std::less<>>& metadata() const { return metadata_; }

 private:
  GgufFile() = default;
  Status parse_all();

  void* map_ = nullptr;
  std::size_t map_size_ = 0;
  std::span<const std::uint8_t> bytes_;
  std::uint32_t version_ = 0;
  std::uint64_t alignment_ = 32;
  std::map<std::string, GgufValue, std::less<>> metadata_;
  std::vector<GgufTensor> tensors_;
  std::map<std::string, std::size_t, std::less<>> tensor_index_;
};

}  // namespace airlock::engine
