#include "airlock/verifier/gguf_facts.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <optional>
#include <vector>

#include "airlock/verifier/mapped_file.h"
#include "guarded_read.h"

namespace airlock::verifier {
namespace {

constexpr std::uint64_t kMaxStringBytes = 1 << 20;
constexpr std::uint64_t kMaxKeyBytes = 65535;
constexpr int kMaxArrayDepth = 4;
constexpr std::uint32_t kMaxDims = 4;

enum ValueType : std::uint32_t {
  kU8 = 0, kI8, kU16, kI16, kU32, kI32, kF32, kBool, kString, kArray, kU64, kI64, kF64, kValueTypeCount
};

// ggml type: name and (block bytes, block elements); block bytes 0 means the
// size is not checked (rare or retired types).
struct TypeInfo {
  const char* name;
  std::uint32_t block_bytes;
  std::uint32_t block_elems;
};
const std::map<std::uint32_t, TypeInfo>& ggml_types() {
  static const std::map<std::uint32_t, TypeInfo> t = {
      {0, {"F32", 4, 1}},       {1, {"F16", 2, 1}},       {2, {"Q4_0", 18, 32}},    {3, {"Q4_1", 20, 32}},
      {6, {"Q5_0", 22, 32}},    {7, {"Q5_1", 24, 32}},    {8, {"Q8_0", 34, 32}},    {9, {"Q8_1", 36, 32}},
      {10, {"Q2_K", 84, 256}},  {11, {"Q3_K", 110, 256}}, {12, {"Q4_K", 144, 256}}, {13, {"Q5_K", 176, 256}},
      {14, {"Q6_K", 210, 256}}, {15, {"Q8_K", 292, 256}}, {16, {"IQ2_XXS", 0, 0}},  {17, {"IQ2_XS", 0, 0}},
      {18, {"IQ3_XXS", 0, 0}},  {19, {"IQ1_S", 0, 0}},    {20, {"IQ4_NL", 0, 0}},   {21, {"IQ3_S", 0, 0}},
      {22, {"IQ2_S", 0, 0}},    {23, {"IQ4_XS", 0, 0}},   {24, {"I8", 1, 1}},       {25, {"I16", 2, 1}},
      {26, {"I32", 4, 1}},      {27, {"I64", 8, 1}},      {28, {"F64", 8, 1}},      {29, {"IQ1_M", 0, 0}},
      {30, {"BF16", 2, 1}},     {34, {"TQ1_0", 0, 0}},    {35, {"TQ2_0", 0, 0}},    {39, {"MXFP4", 0, 0}},
  };
  return t;
}

// llama.cpp's LLAMA_FTYPE values (general.file_type).
const char* file_type_name(std::uint32_t v) {
  switch (v) {
    case 0: return "F32";     case 1: return "F16";     case 2: return "Q4_0";    case 3: return "Q4_1";
    case 7: return "Q8_0";    case 8: return "Q5_0";    case 9: return "Q5_1";    case 10: return "Q2_K";
    case 11: return "Q3_K_S"; case 12: return "Q3_K_M"; case 13: return "Q3_K_L"; case 14: return "Q4_K_S";
    case 15: return "Q4_K_M"; case 16: return "Q5_K_S"; case 17: return "Q5_K_M"; case 18: return "Q6_K";
    case 19: return "IQ2_XXS"; case 20: return "IQ2_XS"; case 21: return "Q2_K_S"; case 22: return "IQ3_XS";
    case 23: return "IQ3_XXS"; case 24: return "IQ1_S";  case 25: return "IQ4_NL"; case 26: return "IQ3_S";
    case 27: return "IQ3_M";  case 28: return "IQ2_S";  case 29: return "IQ2_M";  case 30: return "IQ4_XS";
    case 31: return "IQ1_M";  case 32: return "BF16";   case 36: return "TQ1_0";  case 37: return "TQ2_0";
    case 38: return "MXFP4_MOE";
    default: return nullptr;
  }
}

// A cursor over the file that refuses to move past its end. It may hold
// only the first bytes of a file of `file_size` bytes (a copy of a prefix):
// bounds are checked against the whole file, and a read that the file has
// but the prefix does not fails with *prefix_short set, so the caller can
// retry with a longer prefix.
class Cursor {
 public:
  Cursor(std::span<const std::uint8_t> prefix, std::uint64_t file_size, bool* prefix_short)
      : bytes_(prefix), file_size_(file_size), prefix_short_(prefix_short) {}

  std::uint64_t pos() const { return pos_; }
  std::uint64_t remaining() const { return file_size_ - pos_; }

  Status need(std::uint64_t n, const char* what) const {
    if (n > remaining())
      return verification_failed("gguf: " + std::string(what) + " at offset " + std::to_string(pos_) +
                                 " runs past the end of the file");
    if (pos_ > bytes_.size() || n > bytes_.size() - pos_) {
      *prefix_short_ = true;
      return verification_failed("gguf: the header runs past the bytes read");
    }
    return Status::ok();
  }
  template <typename T>
  Status read(T* out, const char* what) {
    AIRLOCK_RETURN_IF_ERROR(need(sizeof(T), what));
    std::memcpy(out, bytes_.data() + pos_, sizeof(T));  // GGUF is little-endian, as is every target
    pos_ += sizeof(T);
    return Status::ok();
  }
  // Skipped bytes need not be in the prefix (the end of the file is
  // checked; a later read past the prefix asks for more).
  Status skip(std::uint64_t n, const char* what) {
    if (n > remaining())
      return verification_failed("gguf: " + std::string(what) + " at offset " + std::to_string(pos_) +
                                 " runs past the end of the file");
    pos_ += n;
    return Status::ok();
  }
  Status string(std::string* out, std::uint64_t max_bytes, const char* what) {
    std::uint64_t n = 0;
    AIRLOCK_RETURN_IF_ERROR(read(&n, what));
    if (n > max_bytes)
      return verification_failed("gguf: " + std::string(what) + " at offset " + std::to_string(pos_ - 8) +
                                 " claims " + std::to_string(n) + " bytes");
    if (out != nullptr) {
      AIRLOCK_RETURN_IF_ERROR(need(n, what));
      out->assign(reinterpret_cast<const char*>(bytes_.data() + pos_), n);
      pos_ += n;
      return Status::ok();
    }
    return skip(n, what);
  }

 private:
  std::span<const std::uint8_t> bytes_;
  std::uint64_t file_size_;
  bool* prefix_short_;
  std::uint64_t pos_ = 0;
};

std::uint64_t scalar_size(std::uint32_t type) {
  switch (type) {
    case kU8: case kI8: case kBool: return 1;
    case kU16: case kI16: return 2;
    case kU32: case kI32: case kF32: return 4;
    case kU64: case kI64: case kF64: return 8;
    default: return 0;
  }
}

// Skips one value of `type`; integers that fit are returned in *as_uint.
Status skip_value(Cursor& c, std::uint32_t type, int depth, std::optional<std::uint64_t>* as_uint,
                  std::string* as_string) {
  if (type >= kValueTypeCount)
    return verification_failed("gguf: unknown metadata value type " + std::to_string(type) + " at offset " +
                               std::to_string(c.pos()));
  if (type == kString) return c.string(as_string, kMaxStringBytes, "string value");
  if (type == kArray) {
    if (depth >= kMaxArrayDepth) return verification_failed("gguf: arrays nested too deeply");
    std::uint32_t elem_type = 0;
    std::uint64_t n = 0;
    AIRLOCK_RETURN_IF_ERROR(c.read(&elem_type, "array type"));
    AIRLOCK_RETURN_IF_ERROR(c.read(&n, "array length"));
    if (elem_type >= kValueTypeCount) return verification_failed("gguf: unknown array element type");
    std::uint64_t fixed = scalar_size(elem_type);
    if (fixed > 0) {
      if (n > c.remaining() / fixed) return verification_failed("gguf: array of " + std::to_string(n) + " elements runs past the end of the file");
      return c.skip(n * fixed, "array");
    }
    // Strings need at least 8 bytes each and arrays 12: bound the loop by the file.
    if (n > c.remaining() / 8) return verification_failed("gguf: array of " + std::to_string(n) + " elements runs past the end of the file");
    for (std::uint64_t i = 0; i < n; ++i) AIRLOCK_RETURN_IF_ERROR(skip_value(c, elem_type, depth + 1, nullptr, nullptr));
    return Status::ok();
  }
  std::uint64_t n = scalar_size(type);
  AIRLOCK_RETURN_IF_ERROR(c.need(n, "value"));
  if (as_uint != nullptr && (type == kU8 || type == kU16 || type == kU32 || type == kU64 || type == kI32 || type == kI64)) {
    std::uint64_t v = 0;
    Cursor peek = c;
    if (n == 1) { std::uint8_t x = 0; (void)peek.read(&x, "value"); v = x; }
    else if (n == 2) { std::uint16_t x = 0; (void)peek.read(&x, "value"); v = x; }
    else if (n == 4) { std::uint32_t x = 0; (void)peek.read(&x, "value"); v = x; if (type == kI32 && static_cast<std::int32_t>(x) < 0) v = 0; }
    else { std::uint64_t x = 0; (void)peek.read(&x, "value"); v = x; if (type == kI64 && static_cast<std::int64_t>(x) < 0) v = 0; }
    *as_uint = v;
  }
  return c.skip(n, "value");
}

// Parses a file of `file_size` bytes from its first bytes, `prefix`.
Result<ModelFacts> parse(std::span<const std::uint8_t> prefix, std::uint64_t file_size, bool* prefix_short);

}  // namespace

bool looks_like_gguf(std::span<const std::uint8_t> b) {
  return b.size() >= 4 && std::memcmp(b.data(), "GGUF", 4) == 0;
}

Result<ModelFacts> read_gguf_facts(std::span<const std::uint8_t> file) {
  bool prefix_short = false;
  return parse(file, file.size(), &prefix_short);
}

Result<ModelFacts> read_gguf_facts_mapped(std::span<const std::uint8_t> mapped, const std::string& what,
                                          std::uint64_t first_copy_bytes, std::uint64_t max_copy_bytes) {
  // The header is parsed from guarded copies of the mapping's first bytes
  // (parsing allocates, so it cannot run under the guard itself), from 1 MiB
  // up, four times longer while the header goes on past the copy: real
  // headers (tokenizer vocabularies included) are a few MiB to tens of MiB.
  // A header may skip far (a huge array is checked against the file size
  // only): the copy stops at max_copy_bytes (by default 256 MiB, far above
  // any real header) instead of growing to the size of the file.
  const std::uint64_t cap = std::max<std::uint64_t>(max_copy_bytes, 1);
  std::vector<std::uint8_t> copy;
  for (std::uint64_t n = std::min({mapped.size(), std::max<std::uint64_t>(first_copy_bytes, 1), cap});;
       n = std::min({mapped.size(), 4 * n, cap})) {
    copy.resize(n);
    if (!copy_guarded(copy.data(), mapped.data(), n)) return file_shrank(what);
    bool prefix_short = false;
    Result<ModelFacts> facts = parse(copy, mapped.size(), &prefix_short);
    if (!prefix_short || n == mapped.size()) return facts;
    if (n == cap)
      return verification_failed("gguf: the header (metadata and tensor table) is longer than " +
                                 std::to_string(cap) + " bytes");
  }
}

Result<ModelFacts> read_gguf_facts_file(const std::string& path) {
  AIRLOCK_ASSIGN_OR_RETURN(MappedFile file, MappedFile::open(path));
  return read_gguf_facts_mapped(file.bytes(), path);
}

namespace {

Result<ModelFacts> parse(std::span<const std::uint8_t> prefix, std::uint64_t file_size, bool* prefix_short) {
  Cursor c(prefix, file_size, prefix_short);
  if (file_size < 4) return verification_failed("gguf: missing GGUF magic");
  AIRLOCK_RETURN_IF_ERROR(c.need(4, "magic"));
  if (!looks_like_gguf(prefix)) return verification_failed("gguf: missing GGUF magic");
  AIRLOCK_RETURN_IF_ERROR(c.skip(4, "magic"));
  ModelFacts facts;
  std::uint64_t n_tensors = 0, n_kv = 0;
  AIRLOCK_RETURN_IF_ERROR(c.read(&facts.gguf_version, "version"));
  if (facts.gguf_version != 2 && facts.gguf_version != 3)
    return verification_failed("gguf: version " + std::to_string(facts.gguf_version) + " is not supported (2 or 3)");
  AIRLOCK_RETURN_IF_ERROR(c.read(&n_tensors, "tensor count"));
  AIRLOCK_RETURN_IF_ERROR(c.read(&n_kv, "metadata count"));
  // Each key/value needs at least 12 bytes and each tensor info 24.
  if (n_kv > c.remaining() / 12) return verification_failed("gguf: metadata count " + std::to_string(n_kv) + " exceeds the file");
  if (n_tensors > c.remaining() / 24) return verification_failed("gguf: tensor count " + std::to_string(n_tensors) + " exceeds the file");

  std::map<std::string, std::uint64_t> uints;
  std::string architecture;
  std::uint64_t alignment = 32;
  for (std::uint64_t i = 0; i < n_kv; ++i) {
    std::string key;
    std::uint32_t type = 0;
    AIRLOCK_RETURN_IF_ERROR(c.string(&key, kMaxKeyBytes, "metadata key"));
    AIRLOCK_RETURN_IF_ERROR(c.read(&type, "metadata type"));
    std::optional<std::uint64_t> as_uint;
    std::string as_string;
    bool want_string = key == "general.architecture";
    AIRLOCK_RETURN_IF_ERROR(skip_value(c, type, 0, &as_uint, want_string ? &as_string : nullptr));
    if (want_string && type == kString) architecture = as_string;
    if (as_uint) uints[key] = *as_uint;
  }
  if (architecture.empty()) return verification_failed("gguf: general.architecture is missing");
  facts.architecture = architecture;
  if (auto it = uints.find("general.alignment"); it != uints.end()) {
    alignment = it->second;
    if (alignment == 0 || (alignment & (alignment - 1)) != 0 || alignment > (1 << 20))
      return verification_failed("gguf: general.alignment " + std::to_string(alignment) + " is not a power of two");
  }
  if (auto it = uints.find(architecture + ".context_length"); it != uints.end()) facts.context_length = it->second;

  struct Tensor {
    std::uint32_t type;
    std::uint64_t n_elements;
    std::uint64_t offset;
  };
  // Not reserved from n_tensors: through a mapping the count is bounded only
  // by the file's size (a sparse file of 1 TB may claim 4e10 tensors), not by
  // the bytes copied. The vector grows with the entries actually parsed, each
  // of which took at least 24 bytes of the copy.
  std::vector<Tensor> tensors;
  std::map<std::uint32_t, std::uint64_t> elements_by_type;
  for (std::uint64_t i = 0; i < n_tensors; ++i) {
    std::uint32_t n_dims = 0;
    AIRLOCK_RETURN_IF_ERROR(c.string(nullptr, kMaxKeyBytes, "tensor name"));
    AIRLOCK_RETURN_IF_ERROR(c.read(&n_dims, "tensor dimension count"));
    if (n_dims == 0 || n_dims > kMaxDims)
      return verification_failed("gguf: tensor " + std::to_string(i) + " has " + std::to_string(n_dims) + " dimensions");
    std::uint64_t n = 1;
    for (std::uint32_t d = 0; d < n_dims; ++d) {
      std::uint64_t dim = 0;
      AIRLOCK_RETURN_IF_ERROR(c.read(&dim, "tensor dimension"));
      if (dim == 0 || n > (std::uint64_t{1} << 62) / dim)
        return verification_failed("gguf: tensor " + std::to_string(i) + " has an invalid or overflowing shape");
      n *= dim;
    }
    Tensor t{};
    t.n_elements = n;
    AIRLOCK_RETURN_IF_ERROR(c.read(&t.type, "tensor type"));
    AIRLOCK_RETURN_IF_ERROR(c.read(&t.offset, "tensor offset"));
    if (!ggml_types().count(t.type))
      return verification_failed("gguf: tensor " + std::to_string(i) + " has unknown type " + std::to_string(t.type));
    if (facts.parameter_count > (std::uint64_t{1} << 62) - n) return verification_failed("gguf: parameter count overflows");
    facts.parameter_count += n;
    elements_by_type[t.type] += n;
    tensors.push_back(t);
  }
  facts.tensor_count = n_tensors;

  // Tensor data starts at the next multiple of the alignment.
  std::uint64_t data_start = (c.pos() + alignment - 1) / alignment * alignment;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const TypeInfo& info = ggml_types().at(tensors[i].type);
    if (info.block_bytes == 0) continue;
    if (tensors[i].n_elements % info.block_elems != 0)
      return verification_failed("gguf: tensor " + std::to_string(i) + " is not a whole number of " + info.name + " blocks");
    // Compare block counts before multiplying: 2^61 eight-byte elements
    // would otherwise wrap to 0 bytes and pass.
    const std::uint64_t n_blocks = tensors[i].n_elements / info.block_elems;
    if (data_start > file_size || tensors[i].offset > file_size - data_start ||
        n_blocks > (file_size - data_start - tensors[i].offset) / info.block_bytes)
      return verification_failed("gguf: tensor " + std::to_string(i) + " data (offset " +
                                 std::to_string(tensors[i].offset) + ", " + std::to_string(n_blocks) +
                                 " blocks) lies outside the file");
  }

  const char* ftype = nullptr;
  if (auto it = uints.find("general.file_type"); it != uints.end() && it->second <= 0xffffffffULL)
    ftype = file_type_name(static_cast<std::uint32_t>(it->second));
  if (ftype != nullptr) {
    facts.quantization = ftype;
  } else {
    std::uint32_t best = 0;
    std::uint64_t best_n = 0;
    for (auto [type, n] : elements_by_type)
      if (n > best_n) best = type, best_n = n;
    facts.quantization = best_n > 0 ? ggml_types().at(best).name : "none";
  }
  return facts;
}

}  // namespace

}  // namespace airlock::verifier
