#include "airlock/verifier/manifest.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <ctime>
#include <set>
#include <string>
#include <utility>

#include "airlock/common/json.h"

namespace airlock::verifier {
namespace {

using nlohmann::json;
using nlohmann::ordered_json;

constexpr std::size_t kMaxPathBytes = 255;
constexpr std::size_t kMaxComponentBytes = 100;
constexpr std::size_t kMaxComponents = 8;
constexpr std::size_t kMaxNameBytes = 64;
constexpr std::size_t kMaxFactBytes = 64;
constexpr int kMaxJsonDepth = 4;  // root, files array, file object, chunk list / model object
// The most keys of any schema object (a file entry) with room to spare.
constexpr std::size_t kMaxJsonKeys = 32;
// A chunk hash costs at least 67 bytes of JSON ("<64 hex>",), so a 16 MiB
// manifest holds at most ~250k of them; 400k values is ample for any valid
// manifest and caps the parsed size of a hostile one.
constexpr std::size_t kMaxJsonValues = 400000;

bool is_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
}

bool is_path_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-' || c == '+';
}

// Untrusted text made safe for a message: at most 80 bytes, non-printable
// bytes as '?'.
std::string printable(std::string_view text) {
  std::string shown(text.substr(0, 80));
  for (char& c : shown)
    if (!std::isprint(static_cast<unsigned char>(c))) c = '?';
  return shown;
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

Status validate_fact_string(std::string_view field, std::string_view value) {
  if (value.empty() || value.size() > kMaxFactBytes)
    return verification_failed(std::string(field) + " must be 1-64 bytes");
  for (char c : value)
    if (!is_path_char(c)) return verification_failed(std::string(field) + " has a character outside [A-Za-z0-9._+-]");
  return Status::ok();
}

// Typed field access over a parsed JSON object. Every accessor records the
// first error; callers check `status` once at the end of an object.
class ObjectReader {
 public:
  ObjectReader(const json& obj, std::string where) : obj_(obj), where_(std::move(where)) {
    if (!obj_.is_object()) fail("must be a JSON object");
  }

  const json* field(const char* key, bool required) {
    seen_.insert(key);
    if (!obj_.is_object()) return nullptr;
    auto it = obj_.find(key);
    if (it == obj_.end()) {
      if (required) fail(std::string("missing field '") + key + "'");
      return nullptr;
    }
    return &*it;
  }

  std::uint64_t uint(const char* key, bool required = true) {
    const json* v = field(key, required);
    if (v == nullptr) return 0;
    if (!v->is_number_unsigned() || v->get<std::uint64_t>() > kMaxJsonInteger) {
      fail(std::string("field '") + key + "' must be an integer from 0 to 2^53-1");
      return 0;
    }
    return v->get<std::uint64_t>();
  }

  std::string str(const char* key, bool required = true) {
    const json* v = field(key, required);
    if (v == nullptr) return {};
    if (!v->is_string()) {
      fail(std::string("field '") + key + "' must be a string");
      return {};
    }
    return v->get<std::string>();
  }

  // Refuses keys that the schema does not know.
  void finish() {
    if (!obj_.is_object()) return;
    for (auto it = obj_.begin(); it != obj_.end(); ++it)
      if (!seen_.count(it.key())) fail("unknown field '" + printable(it.key()) + "'");
  }

  void fail(const std::string& message) {
    if (status.is_ok()) status = verification_failed("manifest: " + where_ + ": " + message);
  }

  Status status;

 private:
  const json& obj_;
  std::string where_;
  std::set<std::string> seen_;
};

bool parse_digest(const json& v, Sha256Digest* out) {
  if (!v.is_string()) return false;
  const std::string& s = v.get_ref<const std::string&>();
  // Lower-case only, so that one digest has exactly one spelling.
  if (std::any_of(s.begin(), s.end(), [](char c) { return c >= 'A' && c <= 'F'; })) return false;
  return from_hex(s, *out);
}

Result<ManifestFile> parse_file(const json& obj, std::size_t index) {
  ObjectReader r(obj, "files[" + std::to_string(index) + "]");
  ManifestFile f;
  f.path = r.str("path");
  std::string role = r.str("role");
  if (r.status.is_ok() && !parse_role(role, &f.role)) r.fail("unknown role '" + printable(role) + "'");
  f.size = r.uint("size");
  if (const json* v = r.field("sha256", true); v && !parse_digest(*v, &f.sha256))
    r.fail("'sha256' must be 64 lower-case hex digits");
  if (const json* v = r.field("chunk_sha256", true)) {
    if (!v->is_array()) {
      r.fail("'chunk_sha256' must be an array");
    } else {
      f.chunk_sha256.resize(v->size());
      for (std::size_t i = 0; i < v->size(); ++i)
        if (!parse_digest((*v)[i], &f.chunk_sha256[i])) {
          r.fail("chunk_sha256[" + std::to_string(i) + "] must be 64 lower-case hex digits");
          break;
        }
    }
  }
  if (const json* v = r.field("model", false)) {
    ObjectReader m(*v, "files[" + std::to_string(index) + "].model");
    ModelFacts facts{};
    std::string format = m.str("format");
    if (m.status.is_ok() && format != "gguf") m.fail("format must be \"gguf\"");
    facts.architecture = m.str("architecture");
    facts.parameter_count = m.uint("parameter_count");
    facts.quantization = m.str("quantization");
    facts.context_length = m.uint("context_length");
    m.finish();
    if (!m.status.is_ok()) return m.status;
    f.model = facts;
  }
  r.finish();
  if (!r.status.is_ok()) return r.status;
  return f;
}

}  // namespace

std::string_view role_name(FileRole role) {
  switch (role) {
    case FileRole::kLlm: return "llm";
    case FileRole::kEmbedding: return "embedding";
    case FileRole::kReranker: return "reranker";
    case FileRole::kTokenizer: return "tokenizer";
    case FileRole::kLicense: return "license";
    case FileRole::kConfig: return "config";
    case FileRole::kOther: return "other";
  }
  return "other";
}

bool parse_role(std::string_view name, FileRole* out) {
  for (FileRole r : {FileRole::kLlm, FileRole::kEmbedding, FileRole::kReranker, FileRole::kTokenizer,
                     FileRole::kLicense, FileRole::kConfig, FileRole::kOther})
    if (role_name(r) == name) {
      *out = r;
      return true;
    }
  return false;
}

std::uint64_t Manifest::total_bytes() const {
  std::uint64_t n = 0;
  for (const ManifestFile& f : files) n += f.size;
  return n;
}

std::uint64_t chunk_count(std::uint64_t size, std::uint64_t chunk_size) {
  return size / chunk_size + (size % chunk_size != 0 ? 1 : 0);
}

Status validate_bundle_name(std::string_view name) {
  if (name.empty() || name.size() > kMaxNameBytes) return verification_failed("bundle name must be 1-64 bytes");
  if (!((name[0] >= 'a' && name[0] <= 'z') || (name[0] >= '0' && name[0] <= '9')))
    return verification_failed("bundle name must start with [a-z0-9]");
  for (char c : name)
    if (!is_name_char(c)) return verification_failed("bundle name may only contain [a-z0-9._-]");
  // The store keeps its SQLite database and its journals beside the NAME
  // directories.
  if (name.starts_with("state.db")) return verification_failed("bundle names starting with 'state.db' are reserved");
  return Status::ok();
}

Status validate_bundle_path(std::string_view path) {
  auto bad = [&](const std::string& why) {
    return verification_failed("path '" + printable(path) + "': " + why);
  };
  if (path.empty() || path.size() > kMaxPathBytes) return bad("must be 1-255 bytes");
  if (path == kManifestEntry || path == kSignatureEntry) return bad("reserved name");
  std::size_t n_components = 0;
  std::size_t start = 0;
  while (true) {
    std::size_t slash = path.find('/', start);
    std::string_view comp = path.substr(start, slash == std::string_view::npos ? std::string_view::npos : slash - start);
    if (comp.empty()) return bad("empty component (leading, trailing or doubled '/')");
    if (comp.size() > kMaxComponentBytes) return bad("component longer than 100 bytes");
    if (comp[0] == '.') return bad("component starts with '.' ('..', '.' and hidden names are refused)");
    for (char c : comp)
      if (!is_path_char(c)) return bad("character outside [A-Za-z0-9._+-]");
    if (++n_components > kMaxComponents) return bad("more than 8 components");
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  return Status::ok();
}

bool parse_semver(std::string_view text, std::uint64_t out[3]) {
  for (int i = 0; i < 3; ++i) {
    std::size_t dot = i < 2 ? text.find('.') : text.size();
    if (dot == std::string_view::npos || dot == 0 || dot > 9) return false;
    std::string_view part = text.substr(0, dot);
    auto [p, ec] = std::from_chars(part.data(), part.data() + part.size(), out[i]);
    if (ec != std::errc() || p != part.data() + part.size()) return false;
    text.remove_prefix(i < 2 ? dot + 1 : dot);
  }
  return text.empty();
}

int compare_semver(const std::uint64_t a[3], const std::uint64_t b[3]) {
  for (int i = 0; i < 3; ++i)
    if (a[i] != b[i]) return a[i] < b[i] ? -1 : 1;
  return 0;
}

namespace {

// A model2vec embedding is a directory: the daemon reads the vectors'
// config.json and tokenizer.json beside them, so those must be signed too,
// with the roles that name them (the store holds nothing unsigned).
Status check_model2vec_parts(const Manifest& m) {
  for (const ManifestFile& e : m.files) {
    if (e.role != FileRole::kEmbedding) continue;
    const std::size_t slash = e.path.rfind('/');
    const std::string dir = slash == std::string::npos ? "" : e.path.substr(0, slash + 1);
    if (e.path.substr(dir.size()) != "model.safetensors") continue;
    static constexpr std::pair<const char*, FileRole> kParts[] = {{"config.json", FileRole::kConfig},
                                                                   {"tokenizer.json", FileRole::kTokenizer}};
    for (const auto& part : kParts) {
      const std::string path = dir + part.first;
      const bool listed = std::any_of(m.files.begin(), m.files.end(),
                                      [&](const ManifestFile& f) { return f.path == path && f.role == part.second; });
      if (!listed)
        return verification_failed("the model2vec embedding '" + e.path + "' needs '" + path + "' with role '" +
                                   std::string(role_name(part.second)) + "' in the bundle");
    }
  }
  return Status::ok();
}

Status validate(const Manifest& m, bool check_chunk_lists) {
  AIRLOCK_RETURN_IF_ERROR(validate_bundle_name(m.name));
  if (m.version < 1 || m.version > kMaxJsonInteger) return verification_failed("version must be 1 to 2^53-1");
  if (m.created_at < 0 || static_cast<std::uint64_t>(m.created_at) > kMaxJsonInteger)
    return verification_failed("created_at out of range");
  if (m.expires_at && (*m.expires_at <= m.created_at || static_cast<std::uint64_t>(*m.expires_at) > kMaxJsonInteger))
    return verification_failed("expires_at must be after created_at");
  std::uint64_t semver[3];
  if (!parse_semver(m.min_daemon_version, semver))
    return verification_failed("min_daemon_version must be MAJOR.MINOR.PATCH");
  if (m.chunk_size < kMinChunkSize || m.chunk_size > kMaxChunkSize || (m.chunk_size & (m.chunk_size - 1)) != 0)
    return verification_failed("chunk_size must be a power of two from 64 KiB to 1 GiB");
  if (m.files.empty() || m.files.size() > kMaxFiles) return verification_failed("a bundle holds 1 to 4096 files");

  std::set<std::string> folded_paths;
  std::set<std::string> directories;
  bool seen_unique_role[3] = {false, false, false};
  for (const ManifestFile& f : m.files) {
    AIRLOCK_RETURN_IF_ERROR(validate_bundle_path(f.path));
    if (!folded_paths.insert(lower(f.path)).second)
      return verification_failed("path '" + f.path + "' appears twice (compared case-insensitively)");
    for (std::size_t slash = f.path.find('/'); slash != std::string::npos; slash = f.path.find('/', slash + 1))
      directories.insert(lower(f.path.substr(0, slash)));
    if (f.size > kMaxJsonInteger) return verification_failed("file '" + f.path + "' is too large");
    if (check_chunk_lists && f.chunk_sha256.size() != chunk_count(f.size, m.chunk_size))
      return verification_failed("file '" + f.path + "': chunk_sha256 has " + std::to_string(f.chunk_sha256.size()) +
                                 " entries, size needs " + std::to_string(chunk_count(f.size, m.chunk_size)));
    int unique_index = f.role == FileRole::kLlm ? 0 : f.role == FileRole::kEmbedding ? 1
                     : f.role == FileRole::kReranker ? 2 : -1;
    if (unique_index >= 0) {
      if (seen_unique_role[unique_index])
        return verification_failed("more than one file has role '" + std::string(role_name(f.role)) + "'");
      seen_unique_role[unique_index] = true;
    }
    if (f.model) {
      AIRLOCK_RETURN_IF_ERROR(validate_fact_string("model.architecture", f.model->architecture));
      AIRLOCK_RETURN_IF_ERROR(validate_fact_string("model.quantization", f.model->quantization));
      if (f.model->parameter_count > kMaxJsonInteger || f.model->context_length > kMaxJsonInteger)
        return verification_failed("model facts out of range");
    }
  }
  for (const std::string& dir : directories)
    if (folded_paths.count(dir)) return verification_failed("path '" + dir + "' is both a file and a directory");
  return check_model2vec_parts(m);
}

}  // namespace

Status validate_manifest(const Manifest& m) { return validate(m, true); }

Status validate_manifest_unhashed(const Manifest& m) { return validate(m, false); }

std::string serialize_manifest(const Manifest& m) {
  ordered_json root;
  root["bundle_format"] = kBundleFormat;
  root["name"] = m.name;
  root["version"] = m.version;
  root["created_at"] = m.created_at;
  if (m.expires_at) root["expires_at"] = *m.expires_at;
  root["key_id"] = m.key_id.to_string();
  root["min_daemon_version"] = m.min_daemon_version;
  root["chunk_size"] = m.chunk_size;
  ordered_json files = ordered_json::array();
  for (const ManifestFile& f : m.files) {
    ordered_json jf;
    jf["path"] = f.path;
    jf["role"] = role_name(f.role);
    jf["size"] = f.size;
    jf["sha256"] = to_hex(f.sha256);
    ordered_json chunks = ordered_json::array();
    for (const Sha256Digest& d : f.chunk_sha256) chunks.push_back(to_hex(d));
    jf["chunk_sha256"] = std::move(chunks);
    if (f.model) {
      ordered_json jm;
      jm["format"] = "gguf";
      jm["architecture"] = f.model->architecture;
      jm["parameter_count"] = f.model->parameter_count;
      jm["quantization"] = f.model->quantization;
      jm["context_length"] = f.model->context_length;
      jf["model"] = std::move(jm);
    }
    files.push_back(std::move(jf));
  }
  root["files"] = std::move(files);
  return root.dump(2) + "\n";
}

std::uint64_t serialized_manifest_size(const Manifest& m) {
  // dump(2) puts each chunk hash on a line of its own at depth 4 (root,
  // files, file, chunk list): 8 spaces, the quoted 64 hex digits, and ",\n"
  // on all but the last. So one hash a file stands in for the list, and
  // each further hash adds a line of this length (the test compares with
  // serialize_manifest() to keep the two in step). Valid sizes (< 2^53) and
  // chunk sizes (>= 64 KiB) keep the sum far from overflowing.
  constexpr std::uint64_t kChunkLineBytes = 8 + 66 + 2;
  Manifest shape = m;
  std::uint64_t more_lines = 0;
  for (ManifestFile& f : shape.files) {
    const std::uint64_t n = chunk_count(f.size, m.chunk_size);
    if (n > 1) more_lines += n - 1;
    f.chunk_sha256.assign(std::min<std::uint64_t>(n, 1), Sha256Digest{});
  }
  return serialize_manifest(shape).size() + more_lines * kChunkLineBytes;
}

Result<Manifest> parse_manifest(std::string_view bytes) {
  if (bytes.size() > kMaxManifestBytes) return verification_failed("manifest: larger than 16 MiB");
  // The callback refuses, while parsing, what the schema can never hold:
  // nesting deeper than the schema, an object with more keys than any schema
  // object, more values than a 16 MiB manifest of real chunk hashes has, and
  // duplicate keys (nlohmann would silently keep the last). Aborting early
  // keeps a hostile 16 MiB manifest from growing into hundreds of MB of
  // parsed values.
  struct Refused {
    std::string why;
  };
  std::vector<std::set<std::string>> open_objects;
  std::size_t n_values = 0;
  auto callback = [&](int depth, json::parse_event_t event, json& parsed) {
    if (depth > kMaxJsonDepth) throw Refused{"nested deeper than the schema allows"};
    if (++n_values > kMaxJsonValues) throw Refused{"more JSON values than any valid manifest holds"};
    switch (event) {
      case json::parse_event_t::object_start: open_objects.emplace_back(); break;
      case json::parse_event_t::object_end:
        if (!open_objects.empty()) open_objects.pop_back();
        break;
      case json::parse_event_t::key:
        if (!open_objects.empty() && parsed.is_string()) {
          if (open_objects.back().size() >= kMaxJsonKeys) throw Refused{"an object with more keys than the schema allows"};
          if (!open_objects.back().insert(parsed.get<std::string>()).second)
            throw Refused{"duplicate key '" + printable(parsed.get<std::string>()) + "'"};
        }
        break;
      default: break;
    }
    return true;
  };
  json root;
  try {
    root = json::parse(bytes.begin(), bytes.end(), callback, /*allow_exceptions=*/false);
  } catch (const Refused& r) {
    return verification_failed("manifest: " + r.why);
  } catch (const std::exception& e) {
    return verification_failed(std::string("manifest: ") + e.what());
  }
  if (root.is_discarded()) return verification_failed("manifest: not valid JSON (or not valid UTF-8)");

  try {
    ObjectReader r(root, "top level");
    Manifest m;
    std::uint64_t format = r.uint("bundle_format");
    if (r.status.is_ok() && format != static_cast<std::uint64_t>(kBundleFormat))
      r.fail("bundle_format " + std::to_string(format) + " is not supported (this verifier reads 1)");
    m.name = r.str("name");
    m.version = r.uint("version");
    m.created_at = static_cast<std::int64_t>(r.uint("created_at"));
    if (r.field("expires_at", false)) m.expires_at = static_cast<std::int64_t>(r.uint("expires_at"));
    std::string key_id = r.str("key_id");
    // One spelling only, as minisign prints it (upper case).
    if (r.status.is_ok() && (!KeyId::parse(key_id, &m.key_id) || m.key_id.to_string() != key_id))
      r.fail("key_id must be 16 upper-case hex digits");
    m.min_daemon_version = r.str("min_daemon_version");
    m.chunk_size = r.uint("chunk_size");
    const json* files = r.field("files", true);
    r.finish();
    AIRLOCK_RETURN_IF_ERROR(r.status);
    if (!files->is_array()) return verification_failed("manifest: 'files' must be an array");
    if (files->size() > kMaxFiles) return verification_failed("manifest: more than 4096 files");
    for (std::size_t i = 0; i < files->size(); ++i) {
      AIRLOCK_ASSIGN_OR_RETURN(ManifestFile f, parse_file((*files)[i], i));
      m.files.push_back(std::move(f));
    }
    Status valid = validate_manifest(m);
    if (!valid.is_ok()) return valid.with_context("manifest");
    return m;
  } catch (const std::exception& e) {
    return verification_failed(std::string("manifest: ") + e.what());
  }
}

std::string format_utc(std::int64_t unix_seconds) {
  std::time_t t = static_cast<std::time_t>(unix_seconds);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string expected_trusted_comment(const Manifest& manifest, std::string_view manifest_bytes) {
  return "airlock-bundle name=" + manifest.name + " version=" + std::to_string(manifest.version) +
         " manifest_sha256=" + to_hex(sha256(manifest_bytes));
}

}  // namespace airlock::verifier
