#include "test_bundles.h"

#include <archive.h>
#include <archive_entry.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>

namespace airlock::testing {

namespace fs = std::filesystem;

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base ? base : "/tmp") + "/airlock-test-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

void write_file(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
  if (!out) throw std::runtime_error("cannot write " + path);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool exists(const std::string& path) {
  std::error_code ec;
  return fs::exists(fs::symlink_status(path, ec));
}

std::vector<std::string> list_tree(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  if (!fs::exists(dir, ec)) return out;
  for (auto it = fs::recursive_directory_iterator(dir, ec); it != fs::recursive_directory_iterator(); it.increment(ec))
    out.push_back(fs::relative(it->path(), dir).string());
  std::sort(out.begin(), out.end());
  return out;
}

std::string random_bytes(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::string out(n, '\0');
  for (char& c : out) c = static_cast<char>(rng() & 0xff);
  return out;
}

verifier::SecretKey test_key(std::uint8_t seed) {
  std::array<std::uint8_t, 32> s{};
  s.fill(seed);
  verifier::KeyId id;
  for (std::size_t i = 0; i < id.bytes.size(); ++i) id.bytes[i] = static_cast<std::uint8_t>(seed * 7 + i);
  return verifier::secret_key_from_seed(s, id);
}

verifier::TrustStore trust_only(const verifier::SecretKey& key) {
  verifier::TrustStore t;
  t.add_key(key.public_key());
  return t;
}

std::string build_tar(const std::vector<RawEntry>& entries) {
  archive* a = archive_write_new();
  archive_write_set_format_pax_restricted(a);
  archive_write_set_bytes_per_block(a, 0);
  std::vector<char> buf(64 << 20);
  std::size_t used = 0;
  archive_write_open_memory(a, buf.data(), buf.size(), &used);
  for (const RawEntry& e : entries) {
    archive_entry* ae = archive_entry_new();
    archive_entry_set_pathname(ae, e.name.c_str());
    archive_entry_set_perm(ae, 0644);
    archive_entry_set_mtime(ae, 1790000000, 0);
    std::int64_t size = static_cast<std::int64_t>(e.data.size());
    switch (e.kind) {
      case RawEntry::Kind::kFile: archive_entry_set_filetype(ae, AE_IFREG); break;
      case RawEntry::Kind::kDirectory: archive_entry_set_filetype(ae, AE_IFDIR); size = 0; break;
      case RawEntry::Kind::kSymlink:
        archive_entry_set_filetype(ae, AE_IFLNK);
        archive_entry_set_symlink(ae, e.link_target.c_str());
        size = 0;
        break;
      case RawEntry::Kind::kHardlink:
        archive_entry_set_filetype(ae, AE_IFREG);
        archive_entry_set_hardlink(ae, e.link_target.c_str());
        size = 0;
        break;
      case RawEntry::Kind::kCharDevice:
        archive_entry_set_filetype(ae, AE_IFCHR);
        archive_entry_set_rdev(ae, makedev(1, 3));
        size = 0;
        break;
      case RawEntry::Kind::kFifo: archive_entry_set_filetype(ae, AE_IFIFO); size = 0; break;
    }
    archive_entry_set_size(ae, size);
    if (archive_write_header(a, ae) != ARCHIVE_OK) throw std::runtime_error(archive_error_string(a));
    if (size > 0) archive_write_data(a, e.data.data(), e.data.size());
    archive_entry_free(ae);
  }
  archive_write_close(a);
  archive_write_free(a);
  return std::string(buf.data(), used);
}

std::string build_compressed_bomb(const std::string& filter, std::uint64_t n_zero_bytes) {
  archive* a = archive_write_new();
  archive_write_set_format_pax_restricted(a);
  if (archive_write_add_filter_by_name(a, filter.c_str()) != ARCHIVE_OK)
    throw std::runtime_error("libarchive lacks filter " + filter);
  std::vector<char> buf(16 << 20);
  std::size_t used = 0;
  archive_write_open_memory(a, buf.data(), buf.size(), &used);
  archive_entry* ae = archive_entry_new();
  archive_entry_set_pathname(ae, "manifest.json");
  archive_entry_set_filetype(ae, AE_IFREG);
  archive_entry_set_perm(ae, 0644);
  archive_entry_set_size(ae, static_cast<la_int64_t>(n_zero_bytes));
  archive_write_header(a, ae);
  archive_entry_free(ae);
  std::vector<char> zeros(1 << 20, '\0');
  for (std::uint64_t done = 0; done < n_zero_bytes; done += zeros.size())
    archive_write_data(a, zeros.data(), static_cast<std::size_t>(std::min<std::uint64_t>(zeros.size(), n_zero_bytes - done)));
  archive_write_close(a);
  archive_write_free(a);
  return std::string(buf.data(), used);
}

std::string sign_manifest(const verifier::SecretKey& key, const std::string& manifest_bytes) {
  std::span<const std::uint8_t> bytes(reinterpret_cast<const std::uint8_t*>(manifest_bytes.data()),
                                      manifest_bytes.size());
  Result<verifier::Manifest> m = verifier::parse_manifest(manifest_bytes);
  std::string comment = m.is_ok() ? verifier::expected_trusted_comment(*m, manifest_bytes)
                                  : "airlock-bundle unparsable manifest";
  return verifier::sign_message(key, bytes, comment, "test signature");
}

verifier::Manifest manifest_for(const BundleSpec& spec, const verifier::SecretKey& key) {
  verifier::Manifest m;
  m.name = spec.name;
  m.version = spec.version;
  m.created_at = spec.created_at;
  m.expires_at = spec.expires_at;
  m.key_id = key.id;
  m.chunk_size = spec.chunk_size;
  for (std::size_t i = 0; i < spec.files.size(); ++i) {
    const auto& [path, content] = spec.files[i];
    verifier::ManifestFile f;
    f.path = path;
    f.role = i == 0 ? verifier::FileRole::kLlm : verifier::FileRole::kOther;
    f.size = content.size();
    f.sha256 = verifier::sha256(content);
    for (std::size_t off = 0; off < content.size(); off += spec.chunk_size)
      f.chunk_sha256.push_back(verifier::sha256(std::string_view(content).substr(off, spec.chunk_size)));
    m.files.push_back(std::move(f));
  }
  return m;
}

std::vector<RawEntry> payload_entries(const BundleSpec& spec) {
  std::vector<RawEntry> out;
  for (const auto& [path, content] : spec.files) out.push_back({path, content});
  return out;
}

std::string build_bundle(const BundleSpec& spec, const verifier::SecretKey& key) {
  std::string manifest = verifier::serialize_manifest(manifest_for(spec, key));
  std::vector<RawEntry> entries = {{"manifest.json", manifest}, {"manifest.json.minisig", sign_manifest(key, manifest)}};
  for (RawEntry& e : payload_entries(spec)) entries.push_back(std::move(e));
  return build_tar(entries);
}

}  // namespace airlock::testing
