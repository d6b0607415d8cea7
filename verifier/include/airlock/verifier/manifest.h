// The signed manifest of a bundle (docs/bundle-format.md, section 2).
//
// serialize_manifest() produces the exact bytes that get signed;
// parse_manifest() reads untrusted bytes strictly: duplicate or unknown keys,
// wrong types, out-of-range numbers and invalid paths are all refused with
// kVerificationFailed naming the offending field. Both run the same
// validate_manifest() rules, so nothing a writer can produce is rejected by a
// reader and nothing a reader accepts could not have been written.
//
// Thread-safety: plain values and pure functions.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "airlock/common/status.h"
#include "airlock/common/version.h"
#include "airlock/verifier/gguf_facts.h"
#include "airlock/verifier/minisign.h"
#include "airlock/verifier/sha256.h"

namespace airlock::verifier {

inline constexpr int kBundleFormat = 1;
inline constexpr std::uint64_t kMaxManifestBytes = 16ULL << 20;
inline constexpr std::uint64_t kMaxSignatureBytes = 4096;
inline constexpr std::uint64_t kDefaultChunkSize = 64ULL << 20;
inline constexpr std::uint64_t kMinChunkSize = 64ULL << 10;
inline constexpr std::uint64_t kMaxChunkSize = 1ULL << 30;
inline constexpr std::size_t kMaxFiles = 4096;
inline constexpr std::uint64_t kMaxJsonInteger = (1ULL << 53) - 1;
inline constexpr std::string_view kManifestEntry = "manifest.json";
inline constexpr std::string_view kSignatureEntry = "manifest.json.minisig";

enum class FileRole { kLlm, kEmbedding, kReranker, kTokenizer, kLicense, kConfig, kOther };
std::string_view role_name(FileRole role);
bool parse_role(std::string_view name, FileRole* out);

struct ManifestFile {
  std::string path;
  FileRole role = FileRole::kOther;
  std::uint64_t size = 0;
  Sha256Digest sha256{};
  std::vector<Sha256Digest> chunk_sha256;
  std::optional<ModelFacts> model;  // GGUF facts; only architecture, parameter_count,
                                    // quantization, context_length are serialised
};

struct Manifest {
  std::string name;
  std::uint64_t version = 0;
  std::int64_t created_at = 0;
  std::optional<std::int64_t> expires_at;
  KeyId key_id;
  std::string min_daemon_version = kVersion;
  std::uint64_t chunk_size = kDefaultChunkSize;
  std::vector<ManifestFile> files;

  std::uint64_t total_bytes() const;
};

// Number of chunks a file of `size` bytes has at `chunk_size`.
std::uint64_t chunk_count(std::uint64_t size, std::uint64_t chunk_size);

// The rules of docs/bundle-format.md for names, paths and the whole manifest.
Status validate_bundle_name(std::string_view name);
Status validate_bundle_path(std::string_view path);
Status validate_manifest(const Manifest& manifest);
// Every rule of validate_manifest() but the number of chunk hashes a file
// has: what a writer can check before it has hashed anything.
Status validate_manifest_unhashed(const Manifest& manifest);

// Canonical UTF-8 JSON. Precondition: validate_manifest(m) is OK.
std::string serialize_manifest(const Manifest& manifest);

// The exact size of serialize_manifest(m) once every file carries its
// chunk_count(size, chunk_size) chunk hashes, whatever its chunk_sha256 and
// sha256 hold now (a digest's value does not change the size): what a writer
// checks against kMaxManifestBytes before it hashes anything. Serializes a
// copy of `m` with at most one chunk hash a file, so with empty chunk lists
// it costs little even for a manifest far over the limit. Precondition:
// validate_manifest_unhashed(m) is OK.
std::uint64_t serialized_manifest_size(const Manifest& m);

Result<Manifest> parse_manifest(std::string_view bytes);

// "airlock-bundle name=N version=V manifest_sha256=HEX"
std::string expected_trusted_comment(const Manifest& manifest, std::string_view manifest_bytes);

// "2026-11-22T11:07:19Z" for Unix seconds (UTC).
std::string format_utc(std::int64_t unix_seconds);

// Compares "MAJOR.MINOR.PATCH" strings; returns false if either is malformed.
bool parse_semver(std::string_view text, std::uint64_t out[3]);
int compare_semver(const std::uint64_t a[3], const std::uint64_t b[3]);

}  // namespace airlock::verifier
