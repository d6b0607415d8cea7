#include "airlock/engine/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace airlock::engine {
namespace {

constexpr std::uint64_t kMaxStringBytes = 16ULL << 20;
constexpr std::uint64_t kMaxKeyBytes = 65535;
constexpr int kMaxDims = 4;

std::uint64_t scalar_bytes(GgufValueType t) {
  switch (t) {
    case GgufValueType::kU8: case GgufValueType::kI8: case GgufValueType::kBool: return 1;
    case GgufValueType::kU16: case GgufValueType::kI16: return 2;
    case GgufValueType::kU32: case GgufValueType::kI32: case GgufValueType::kF32: return 4;
    case GgufValueType::kU64: case GgufValueType::kI64: case GgufValueType::kF64: return 8;
    default: return 0;
  }
}

bool is_known_value_type(std::uint32_t t) { return t <= static_cast<std::uint32_t>(GgufValueType::kF64); }

// Reads little-endian values from the file, never past its end.
class Reader {
 public:
  explicit Reader(std::span<const std::uint8_t> b) : b_(b) {}
  std::uint64_t pos() const { return pos_; }
  std::uint64_t remaining() const { return b_.size() - pos_; }

  Status fail(const std::string& what) const {
    return verification_failed("gguf: " + what + " at offset " + std::to_string(pos_));
  }
  Status need(std::uint64_t n, const char* what) const {
    return n <= remaining() ? Status::ok() : fail(std::string(what) + " runs past the end of the file");
  }
  template <typename T>
  Status read(T* out, const char* what) {
    AIRLOCK_RETURN_IF_ERROR(need(sizeof(T), what));
    std::memcpy(out, b_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return Status::ok();
  }
  Status string(std::string_view* out, std::uint64_t max, const char* what) {
    std::uint64_t n = 0;
    AIRLOCK_RETURN_IF_ERROR(read(&n, what));
    if (n > max) return fail(std::string(what) + " claims " + std::to_string(n) + " bytes");
    AIRLOCK_RETURN_IF_ERROR(need(n, what));
    *out = std::string_view(reinterpret_cast<const char*>(b_.data() + pos_), n);
    pos_ += n;
    return Status::ok();
  }
  std::span<const std::uint8_t> take(std::uint64_t n) {
    auto s = b_.subspan(pos_, n);
    pos_ += n;
    return s;
  }

 private:
  std::span<const std::uint8_t> b_;
  std::uint64_t pos_ = 0;
};

Status read_scalar(Reader& r, GgufValueType t, GgufValue* v) {
  v->type = t;
  switch (t) {
    case GgufValueType::kU8: { std::uint8_t x{}; AIRLOCK_RETURN_IF_ERROR(r.read(&x, "value")); v->u = x; break; }
    case GgufValueType::kBool: {
      std::uint8_t x = 0;
      AIRLOCK_RETURN_IF_ERROR(r.read(&x, "value"));
      if (x > 1) return r.fail("bool value " + std::to_string(x));
      v->u = x;
      break;
    }
    case GgufValueType::kU16: { std::uint16_t x{}; AIRLOCK_RETURN_IF_ERROR(r.read(&x, "value")); v->u = x; break; }
    case GgufValueType::kU32: { std::uint32_t x{}; AIRLOCK_RETURN_IF_ERROR(r.read(&x, "value")); v->u = x; break; }
    case GgufValueType::kU64: { std::uint64_t x{}; AIRLOCK_RETURN_IF_ERROR(r.read(&x, "value")); v->u = x; break; }
    case GgufValueType::kI8: { std::int8_t x{}; AIRLOCK_RETURN_IF_ERROR(r.read(&x, "value")); v->i = x; break; }
    case GgufValueType::kI16: { std::int16_t x{}; AIRLOCK_RETURN_IF_ERROR(r.read(&x, "value")); v->i = x; break; }
    case GgufValueType::kI32: { std::int32_t x{}; AIRLOCK_RETURN_IF_ERROR(r.read(&x, "value")); v->i = x; break; }
    case GgufValueType::kI64: { std::int64_t x{}; AIRLOCK_RETURN_IF_ERROR(r.read(&x, "value")); v->i = x; break; }
    case GgufValueType::kF32: { float x{}; AIRLOCK_RETURN_IF_ERROR(r.read(&x, "value")); v->f = x; break; }
    case GgufValueType::kF64: { double x{}; AIRLOCK_RETURN_IF_ERROR(r.read(&x, "value")); v->f = x; break; }
    default: return r.fail("not a scalar type");
  }
  switch (t) {
    case GgufValueType::kU8: case GgufValueType::kBool: case GgufValueType::kU16: case GgufValueType::kU32:
    case GgufValueType::kU64:
      v->i = v->u <= static_cast<std::uint64_t>(INT64_MAX) ? static_cast<std::int64_t>(v->u) : 0;
      v->f = static_cast<double>(v->u);
      break;
    case GgufValueType::kI8: case GgufValueType::kI16: case GgufValueType::kI32: case GgufValueType::kI64:
      v->u = v->i >= 0 ? static_cast<std::uint64_t>(v->i) : 0;
      v->f = static_cast<double>(v->i);
      break;
    default: break;
  }
  return Status::ok();
}

Status read_value(Reader& r, std::uint32_t type_id, GgufValue* v) {
  if (!is_known_value_type(type_id)) return r.fail("unknown metadata value type " + std::to_string(type_id));
  auto t = static_cast<GgufValueType>(type_id);
  if (t == GgufValueType::kString) {
    v->type = t;
    return r.string(&v->str, kMaxStringBytes, "string value");
  }
  if (t != GgufValueType::kArray) return read_scalar(r, t, v);
  v->type = t;
  std::uint32_t elem = 0;
  AIRLOCK_RETURN_IF_ERROR(r.read(&elem, "array element type"));
  AIRLOCK_RETURN_IF_ERROR(r.read(&v->n_elems, "array length"));
  if (!is_known_value_type(elem) || elem == static_cast<std::uint32_t>(GgufValueType::kArray))
    return r.fail("unsupported array element type " + std::to_string(elem));  // nested arrays: none in practice
  v->elem_type = static_cast<GgufValueType>(elem);
  if (v->elem_type == GgufValueType::kString) {
    if (v->n_elems > r.remaining() / 8) return r.fail("string array of " + std::to_string(v->n_elems) + " runs past the end");
    v->strings.resize(v->n_elems);
    for (std::uint64_t i = 0; i < v->n_elems; ++i)
      AIRLOCK_RETURN_IF_ERROR(r.string(&v->strings[i], kMaxStringBytes, "array string"));
    return Status::ok();
  }
  std::uint64_t eb = scalar_bytes(v->elem_type);
  if (v->n_elems > r.remaining() / eb) return r.fail("array of " + std::to_string(v->n_elems) + " runs past the end");
  v->raw = r.take(v->n_elems * eb);
  return Status::ok();
}

}  // namespace

GgufFile::~GgufFile() {
  if (map_ != nullptr) ::munmap(map_, map_size_);
}

Result<std::unique_ptr<GgufFile>> GgufFile::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT ? not_found(path + ": no such file") : io_error(path, errno);
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size == 0) {
    ::close(fd);
    return invalid_argument(path + ": not a non-empty regular file");
  }
  void* p = ::mmap(nullptr, static_cast<std::size_t>(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
  int e = errno;
  ::close(fd);
  if (p == MAP_FAILED) return io_error(path + ": mmap", e);
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->map_ = p;
  f->map_size_ = static_cast<std::size_t>(st.st_size);
  f->bytes_ = {static_cast<const std::uint8_t*>(p), f->map_size_};
  Status s = f->parse_all();
  if (!s.is_ok()) return s.with_context(path);
  return f;
}

Result<std::unique_ptr<GgufFile>> GgufFile::parse(std::span<const std::uint8_t> bytes) {
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->bytes_ = bytes;
  AIRLOCK_RETURN_IF_ERROR(f->parse_all());
  return f;
}

Status GgufFile::parse_all() {
  Reader r(bytes_);
  std::uint32_t magic = 0;
  AIRLOCK_RETURN_IF_ERROR(r.read(&magic, "magic"));
  if (std::memcmp(&magic, "GGUF", 4) != 0) return verification_failed("gguf: not a GGUF file (bad magic)");
  AIRLOCK_RETURN_IF_ERROR(r.read(&version_, "version"));
  if (version_ != 2 && version_ != 3)
    return verification_failed("gguf: version " + std::to_string(version_) + " is not supported (2 or 3)");
  std::uint64_t n_tensors = 0, n_kv = 0;
  AIRLOCK_RETURN_IF_ERROR(r.read(&n_tensors, "tensor count"));
  AIRLOCK_RETURN_IF_ERROR(r.read(&n_kv, "metadata count"));
  // A key/value takes at least 12 bytes and a tensor info 24: hostile counts
  // cannot drive long loops or large reservations.
  if (n_kv > r.remaining() / 12) return r.fail("metadata count " + std::to_string(n_kv) + " exceeds the file");
  if (n_tensors > r.remaining() / 24) return r.fail("tensor count " + std::to_string(n_tensors) + " exceeds the file");

  for (std::uint64_t i = 0; i < n_kv; ++i) {
    std::string_view key;
    std::uint32_t type = 0;
    AIRLOCK_RETURN_IF_ERROR(r.string(&key, kMaxKeyBytes, "metadata key"));
    AIRLOCK_RETURN_IF_ERROR(r.read(&type, "metadata type"));
    GgufValue v;
    AIRLOCK_RETURN_IF_ERROR(read_value(r, type, &v));
    if (!metadata_.emplace(std::string(key), std::move(v)).second)
      return r.fail("duplicate metadata key '" + std::string(key) + "'");
  }
  if (const GgufValue* a = find("general.alignment")) {
    if (a->type != GgufValueType::kU32 && a->type != GgufValueType::kU64)
      return verification_failed("gguf: general.alignment is not an unsigned integer");
    alignment_ = a->u;
    // The spec asks for a multiple of 8; tensors are read in place as
    // floats and wider, so less would misalign them.
    if (alignment_ < 8 || (alignment_ & (alignment_ - 1)) != 0 || alignment_ > (1u << 20))
      return verification_failed("gguf: general.alignment " + std::to_string(alignment_) +
                                 " is not a power of two from 8 to 2^20");
  }

  struct Info {
    std::uint32_t type;
    std::uint64_t offset;
  };
  std::vector<Info> infos;
  tensors_.reserve(n_tensors);
  for (std::uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensor t;
    std::string_view name;
    AIRLOCK_RETURN_IF_ERROR(r.string(&name, kMaxKeyBytes, "tensor name"));
    t.name = std::string(name);
    std::uint32_t n_dims = 0;
    AIRLOCK_RETURN_IF_ERROR(r.read(&n_dims, "tensor dimension count"));
    if (n_dims == 0 || n_dims > kMaxDims)
      return r.fail("tensor '" + t.name + "' has " + std::to_string(n_dims) + " dimensions");
    t.n_dims = static_cast<int>(n_dims);
    std::uint64_t n = 1;
    for (std::uint32_t d = 0; d < n_dims; ++d) {
      std::uint64_t dim = 0;
      AIRLOCK_RETURN_IF_ERROR(r.read(&dim, "tensor dimension"));
      if (dim == 0 || dim > (1ULL << 40) || n > (1ULL << 46) / dim)
        return r.fail("tensor '" + t.name + "' has an invalid or overflowing shape");
      n *= dim;
      t.ne[d] = static_cast<std::int64_t>(dim);
    }
    t.n_elements = static_cast<std::int64_t>(n);
    Info info{};
    AIRLOCK_RETURN_IF_ERROR(r.read(&info.type, "tensor type"));
    AIRLOCK_RETURN_IF_ERROR(r.read(&info.offset, "tensor offset"));
    const TypeTraits* tt = type_traits(info.type);
    if (tt == nullptr) return r.fail("tensor '" + t.name + "' has unknown type " + std::to_string(info.type));
    if (t.ne[0] % tt->block_elems != 0)
      return r.fail("tensor '" + t.name + "' rows are not a whole number of " + std::string(tt->name) + " blocks");
    if (info.offset % alignment_ != 0) return r.fail("tensor '" + t.name + "' data is not aligned");
    t.type = static_cast<GgmlType>(info.type);
    if (!tensor_index_.emplace(t.name, tensors_.size()).second) return r.fail("duplicate tensor '" + t.name + "'");
    tensors_.push_back(std::move(t));
    infos.push_back(info);
  }
  std::uint64_t data_start = (r.pos() + alignment_ - 1) / alignment_ * alignment_;
  if (data_start > bytes_.size() && !tensors_.empty())
    return verification_failed("gguf: tensor data section starts past the end of the file");
  for (std::size_t i = 0; i < tensors_.size(); ++i) {
    GgufTensor& t = tensors_[i];
    const TypeTraits& tt = *type_traits(infos[i].type);
    std::uint64_t n_bytes = static_cast<std::uint64_t>(t.n_elements) / tt.block_elems * tt.block_bytes;
    std::uint64_t avail = bytes_.size() - data_start;
    if (infos[i].offset > avail || n_bytes > avail - infos[i].offset)
      return verification_failed("gguf: tensor '" + t.name + "' data (offset " + std::to_string(infos[i].offset) +
                                 ", " + std::to_string(n_bytes) + " bytes) lies outside the file");
    t.data = bytes_.subspan(data_start + infos[i].offset, n_bytes);
  }
  return Status::ok();
}

const GgufValue* GgufFile::find(std::string_view key) const {
  auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

namespace {
bool is_unsigned(GgufValueType t) {
  return t == GgufValueType::kU8 || t == GgufValueType::kU16 || t == GgufValueType::kU32 || t == GgufValueType::kU64;
}
bool is_signed(GgufValueType t) {
  return t == GgufValueType::kI8 || t == GgufValueType::kI16 || t == GgufValueType::kI32 || t == GgufValueType::kI64;
}
}  // namespace

std::optional<std::uint64_t> GgufFile::get_uint(std::string_view key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return std::nullopt;
  if (is_unsigned(v->type)) return v->u;
  if (is_signed(v->type) && v->i >= 0) return static_cast<std::uint64_t>(v->i);
  return std::nullopt;
}

std::optional<std::int64_t> GgufFile::get_int(std::string_view key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return std::nullopt;
  if (is_signed(v->type)) return v->i;
  if (is_unsigned(v->type) && v->u <= static_cast<std::uint64_t>(INT64_MAX)) return v->i;
  return std::nullopt;
}

std::optional<double> GgufFile::get_float(std::string_view key) const {
  const GgufValue* v = find(key);
  if (v == nullptr || v->type == GgufValueType::kString || v->type == GgufValueType::kArray ||
      v->type == GgufValueType::kBool)
    return std::nullopt;
  return v->f;
}

std::optional<bool> GgufFile::get_bool(std::string_view key) const {
  const GgufValue* v = find(key);
  if (v == nullptr || v->type != GgufValueType::kBool) return std::nullopt;
  return v->u != 0;
}

std::optional<std::string_view> GgufFile::get_string(std::string_view key) const {
  const GgufValue* v = find(key);
  if (v == nullptr || v->type != GgufValueType::kString) return std::nullopt;
  return v->str;
}

Result<std::vector<std::string_view>> GgufFile::get_string_array(std::string_view key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return not_found("gguf: no metadata '" + std::string(key) + "'");
  if (v->type != GgufValueType::kArray || v->elem_type != GgufValueType::kString)
    return invalid_argument("gguf: '" + std::string(key) + "' is not an array of strings");
  return v->strings;
}

Result<std::vector<float>> GgufFile::get_float_array(std::string_view key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return not_found("gguf: no metadata '" + std::string(key) + "'");
  if (v->type != GgufValueType::kArray || (v->elem_type != GgufValueType::kF32 && v->elem_type != GgufValueType::kF64))
    return invalid_argument("gguf: '" + std::string(key) + "' is not an array of floats");
  std::vector<float> out(v->n_elems);
  for (std::uint64_t i = 0; i < v->n_elems; ++i) {
    if (v->elem_type == GgufValueType::kF32) {
      std::memcpy(&out[i], v->raw.data() + 4 * i, 4);
    } else {
      double d;
      std::memcpy(&d, v->raw.data() + 8 * i, 8);
      out[i] = static_cast<float>(d);
    }
  }
  return out;
}

Result<std::vector<std::int64_t>> GgufFile::get_int_array(std::string_view key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return not_found("gguf: no metadata '" + std::string(key) + "'");
  if (v->type != GgufValueType::kArray || !(is_signed(v->elem_type) || is_unsigned(v->elem_type)))
    return invalid_argument("gguf: '" + std::string(key) + "' is not an array of integers");
  std::uint64_t eb = scalar_bytes(v->elem_type);
  std::vector<std::int64_t> out(v->n_elems);
  for (std::uint64_t i = 0; i < v->n_elems; ++i) {
    const std::uint8_t* p = v->raw.data() + eb * i;
    std::int64_t x = 0;
    switch (v->elem_type) {
      case GgufValueType::kU8: x = *p; break;
      case GgufValueType::kI8: x = static_cast<std::int8_t>(*p); break;
      case GgufValueType::kU16: { std::uint16_t y; std::memcpy(&y, p, 2); x = y; break; }
      case GgufValueType::kI16: { std::int16_t y; std::memcpy(&y, p, 2); x = y; break; }
      case GgufValueType::kU32: { std::uint32_t y; std::memcpy(&y, p, 4); x = y; break; }
      case GgufValueType::kI32: { std::int32_t y; std::memcpy(&y, p, 4); x = y; break; }
      case GgufValueType::kU64: { std::uint64_t y; std::memcpy(&y, p, 8); x = static_cast<std::int64_t>(y); break; }
      case GgufValueType::kI64: { std::memcpy(&x, p, 8); break; }
      default: break;
    }
    out[i] = x;
  }
  return out;
}

const GgufTensor* GgufFile::tensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

}  // namespace airlock::engine
