// GGUF/ggml tensor element types: sizes, and conversion to and from float.
//
// Block layouts and dequantisation follow ggml's definitions bit for bit
// (ggml-common.h / ggml-quants.c): a quantised row of n elements is n /
// block_elems blocks of block_bytes each. The engine supports F32, F16, BF16,
// Q8_0, Q4_0, Q4_K, Q5_K and Q6_K; other ids are known by name and size so a
// file can be described, but a model using them is refused at load.
//
// Thread-safety: pure functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace airlock::engine {

enum class GgmlType : std::uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kBF16 = 30,
};

struct TypeTraits {
  std::string_view name;        // "Q4_K"
  std::uint32_t block_elems;    // elements per block (1 for plain types)
  std::uint32_t block_bytes;    // bytes per block
  bool supported;               // the engine can compute with it
};

// Traits of a type id read from a file; nullptr for an unknown id.
const TypeTraits* type_traits(std::uint32_t type_id);
inline const TypeTraits& traits(GgmlType t) { return *type_traits(static_cast<std::uint32_t>(t)); }

// Bytes of a row of n elements. Precondition: n % block_elems == 0.
inline std::size_t row_bytes(GgmlType t, std::int64_t n) {
  const TypeTraits& tt = traits(t);
  return static_cast<std::size_t>(n / tt.block_elems) * tt.block_bytes;
}

// IEEE half and bfloat16 conversions (round to nearest even on the way down).
float fp16_to_fp32(std::uint16_t h);
std::uint16_t fp32_to_fp16(float f);
float bf16_to_fp32(std::uint16_t h);
std::uint16_t fp32_to_bf16(float f);

// Converts n elements (a multiple of the block size) of a supported type.
void dequantize_row(GgmlType t, const void* src, float* dst, std::int64_t n);

// Quantises n floats into `dst` (row_bytes(t, n) bytes). Used by tests and the
// GGUF test writer; follows ggml's reference quantisers.
void quantize_row(GgmlType t, const float* src, void* dst, std::int64_t n);

}  // namespace airlock::engine
