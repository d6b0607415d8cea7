#include "airlock/engine/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "airlock/common/json.h"

#include "airlock/engine/ggml_types.h"

namespace airlock::engine {
namespace {

constexpr std::uint64_t kMaxHeaderBytes = 100u << 20;  // as the reference implementation
constexpr int kMaxDims = 8;

bool dtype_of(const std::string& s, StDtype* d, std::size_t* size) {
  static const struct {
    const char* name;
    StDtype dtype;
    std::size_t size;
  } kTypes[] = {{"F64", StDtype::kF64, 8}, {"F32", StDtype::kF32, 4}, {"F16", StDtype::kF16, 2},
                {"BF16", StDtype::kBF16, 2}, {"I64", StDtype::kI64, 8}, {"I32", StDtype::kI32, 4},
                {"I16", StDtype::kI16, 2}, {"I8", StDtype::kI8, 1}, {"U8", StDtype::kU8, 1}, {"BOOL", StDtype::kBool, 1}};
  for (const auto& t : kTypes)
    if (s == t.name) {
      *d = t.dtype;
      *size = t.size;
      return true;
    }
  return false;
}

}  // namespace

std::int64_t StTensor::n_elements() const {
  std::int64_t n = 1;
  for (std::int64_t d : shape) n *= d;
  return n;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(map_, map_size_);
}

Result<std::unique_ptr<SafetensorsFile>> SafetensorsFile::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT ? not_found(path + ": no such file") : io_error("open " + path, errno);
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return verification_failed(path + ": not a regular file");
  }
  const std::size_t size = static_cast<std::size_t>(st.st_size);
  void* map = size > 0 ? ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0) : nullptr;
  ::close(fd);
  if (size > 0 && map == MAP_FAILED) return io_error("mmap " + path, errno);
  auto parsed = parse({static_cast<const std::uint8_t*>(map), size});
  if (!parsed.is_ok()) {
    if (map != nullptr) ::munmap(map, size);
    return parsed.status().with_context(path);
  }
  (*parsed)->map_ = map;
  (*parsed)->map_size_ = size;
  return parsed;
}

Result<std::unique_ptr<SafetensorsFile>> SafetensorsFile::parse(std::span<const std::uint8_t> bytes) {
  auto bad = [](const std::string& why) { return verification_failed("safetensors: " + why); };
  if (bytes.size() < 8) return bad("shorter than its 8-byte header length");
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = n << 8 | bytes[static_cast<std::size_t>(i)];
  if (n < 2 || n > kMaxHeaderBytes || n > bytes.size() - 8) return bad("header length " + std::to_string(n) + " is out of range");
  const std::span<const std::uint8_t> data = bytes.subspan(8 + static_cast<std::size_t>(n));
  int depth_seen = 0;
  auto depth_guard = [&](int depth, nlohmann::json::parse_event_t, nlohmann::json&) {
    depth_seen = std::max(depth_seen, depth);
    return depth <= 4;
  };
  nlohmann::json j = nlohmann::json::parse(bytes.begin() + 8, bytes.begin() + 8 + static_cast<std::ptrdiff_t>(n), depth_guard,
                                           /*allow_exceptions=*/false);
  if (j.is_discarded() || depth_seen > 4) return bad("the header is not valid JSON (or nested too deep)");
  if (!j.is_object()) return bad("the header is not a JSON object");
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) return bad("__metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) return bad("__metadata__ values must be strings");
        f->metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string shown = "tensor '" + name.substr(0, 80) + "'";
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets") ||
        !v["dtype"].is_string() || !v["shape"].is_array() || !v["data_offsets"].is_array() || v["data_offsets"].size() != 2)
      return bad(shown + ": needs dtype, shape and two data_offsets");
    StTensor t;
    std::size_t esize = 0;
    if (!dtype_of(v["dtype"].get<std::string>(), &t.dtype, &esize)) return bad(shown + ": unsupported dtype");
    if (v["shape"].size() > kMaxDims) return bad(shown + ": more than 8 dimensions");
    std::uint64_t count = 1;
    for (const nlohmann::json& d : v["shape"]) {
      if (!d.is_number_unsigned()) return bad(shown + ": dimensions must be non-negative integers");
      const std::uint64_t dim = d.get<std::uint64_t>();
      if (dim != 0 && count > (std::uint64_t{1} << 62) / dim) return bad(shown + ": shape overflows");
      count *= dim;
      t.shape.push_back(static_cast<std::int64_t>(dim));
    }
    const nlohmann::json& off = v["data_offsets"];
    if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned()) return bad(shown + ": offsets must be integers");
    const std::uint64_t b = off[0].get<std::uint64_t>(), e = off[1].get<std::uint64_t>();
    if (b > e || e > data.size()) return bad(shown + ": data_offsets outside the data");
    if (count > (std::uint64_t{1} << 62) / esize || count * esize != e - b)
      return bad(shown + ": " + std::to_string(e - b) + " bytes do not hold its shape");
    t.data = data.subspan(static_cast<std::size_t>(b), static_cast<std::size_t>(e - b));
    if (e > b) ranges.emplace_back(b, e);
    f->tensors_.emplace(name, std::move(t));
  }
  std::sort(ranges.begin(), ranges.end());
  for (std::size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].first < ranges[i - 1].second) return bad("two tensors overlap");
  return f;
}

const StTensor* SafetensorsFile::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

double SafetensorsFile::element(const StTensor& t, std::int64_t i) {
  const std::uint8_t* p = t.data.data();
  auto load = [&](auto v) {
    std::memcpy(&v, p + static_cast<std::size_t>(i) * sizeof v, sizeof v);
    return v;
  };
  switch (t.dtype) {
    case StDtype::kF64: return load(double{});
    case StDtype::kF32: return load(float{});
    case StDtype::kF16: return fp16_to_fp32(load(std::uint16_t{}));
    case StDtype::kBF16: return bf16_to_fp32(load(std::uint16_t{}));
    case StDtype::kI64: return static_cast<double>(load(std::int64_t{}));
    case StDtype::kI32: return load(std::int32_t{});
    case StDtype::kI16: return load(std::int16_t{});
    case StDtype::kI8: return load(std::int8_t{});
    case StDtype::kU8: return load(std::uint8_t{});
    case StDtype::kBool: return load(std::uint8_t{}) != 0 ? 1.0 : 0.0;
  }
  return 0;
}

}  // namespace airlock::engine
