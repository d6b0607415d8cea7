// Helpers shared by the verifier and CLI tests: temporary directories, file
// I/O, deterministic keys and payloads, and a raw tar builder for crafting
// hostile archives that the real writer would never produce.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "airlock/verifier/bundle_writer.h"
#include "airlock/verifier/minisign.h"
#include "airlock/verifier/trust_store.h"

namespace airlock::testing {

// A fresh directory under $TMPDIR, removed with everything in it on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

void write_file(const std::string& path, const std::string& data);
std::string read_file(const std::string& path);
bool exists(const std::string& path);
// Every file and directory below `dir`, as relative paths, sorted.
std::vector<std::string> list_tree(const std::string& dir);

// Deterministic pseudo-random bytes (not for cryptography).
std::string random_bytes(std::size_t n, std::uint32_t seed);

// A deterministic key for `seed`; distinct seeds give distinct keys and ids.
verifier::SecretKey test_key(std::uint8_t seed);
verifier::TrustStore trust_only(const verifier::SecretKey& key);

// One entry of a hand-built tar archive.
struct RawEntry {
  enum class Kind { kFile, kDirectory, kSymlink, kHardlink, kCharDevice, kFifo };
  RawEntry(std::string entry_name, std::string entry_data, Kind entry_kind = Kind::kFile,
           std::string target = {})
      : name(std::move(entry_name)), data(std::move(entry_data)), kind(entry_kind), link_target(std::move(target)) {}

  std::string name;
  std::string data;
  Kind kind = Kind::kFile;
  std::string link_target;  // symlink / hardlink
};
std::string build_tar(const std::vector<RawEntry>& entries);

// A real decompression bomb: a tar holding `n_zero_bytes` of zeros named
// manifest.json, compressed with libarchive's `filter` ("gzip", "zstd", "xz").
std::string build_compressed_bomb(const std::string& filter, std::uint64_t n_zero_bytes);

// Signs `manifest_bytes` the way a real writer would (trusted comment from
// the manifest when it parses, else `fallback_comment`).
std::string sign_manifest(const verifier::SecretKey& key, const std::string& manifest_bytes);

// A complete valid bundle, built in memory: `files` are (path, content),
// roles "other" except the first, which is "llm".
struct BundleSpec {
  std::string name = "demo";
  std::uint64_t version = 1;
  std::uint64_t chunk_size = 64 * 1024;
  std::int64_t created_at = 1790000000;
  std::optional<std::int64_t> expires_at;
  std::vector<std::pair<std::string, std::string>> files;
};
verifier::Manifest manifest_for(const BundleSpec& spec, const verifier::SecretKey& key);
std::vector<RawEntry> payload_entries(const BundleSpec& spec);
std::string build_bundle(const BundleSpec& spec, const verifier::SecretKey& key);

}  // namespace airlock::testing
