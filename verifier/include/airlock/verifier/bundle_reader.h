// Verifying and inspecting bundles (docs/bundle-format.md).
//
// verify_bundle() checks, in this order and stopping at the first failure:
// the container (an uncompressed tar, regular-file entries only), the
// minisign signature of manifest.json against the trust store (full public
// key, revocation), the manifest itself (schema, expiry, minimum version),
// then streams every payload entry once, requiring exactly the manifest's
// files in its order with its sizes, and hashes every chunk in parallel on
// all cores. A failure is kVerificationFailed with a message naming the
// entry, file and chunk; I/O problems are kIoError / kNotFound.
//
// Extraction: given an ExtractSink, the same pass hands the sink each file
// only after its entry matched the signed manifest, and each chunk only after
// its SHA-256 matched. The sink never sees an unverified byte.
//
// Thread-safety: the functions may run concurrently on different inputs.
// ExtractSink::write_chunk and close_file are called from worker threads.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "airlock/common/status.h"
#include "airlock/verifier/manifest.h"
#include "airlock/verifier/minisign.h"
#include "airlock/verifier/trust_store.h"

namespace airlock::verifier {

// Called with bytes processed so far and the total; from the calling thread,
// at most about ten times a second, and once at the end.
using ProgressFn = std::function<void(std::uint64_t done, std::uint64_t total)>;

struct VerifyOptions {
  std::int64_t now_unix = 0;  // expiry reference; 0 means the system clock
  unsigned n_threads = 0;     // hashing threads; 0 means one per available core
  ProgressFn progress;
};

// A bundle whose signature and manifest checked out.
struct VerifiedBundle {
  Manifest manifest;
  std::string manifest_bytes;
  std::string signature_text;
  PublicKey signer;
  std::string manifest_sha256;  // lower-case hex
};

class ExtractSink {
 public:
  virtual ~ExtractSink() = default;
  // Signature and manifest are good; no payload byte has been read yet.
  virtual Status begin(const VerifiedBundle& bundle) = 0;
  // The entry for manifest file `index` matched name, position, type and size.
  // Called on the reading thread, in manifest order.
  virtual Status open_file(std::size_t index) = 0;
  // Bytes at `offset` of file `index` whose chunk hash matched. Called from
  // worker threads, concurrently, in any order.
  virtual Status write(std::size_t index, std::uint64_t offset, std::span<const std::uint8_t> data) = 0;
  // Every chunk of file `index` has been written. Any thread.
  virtual Status close_file(std::size_t index) = 0;
};

// Checks a detached signature and the manifest it signs (steps 1-7 of
// docs/bundle-format.md §3). Used by verify_bundle() and by anything that
// re-checks an imported bundle.
Result<VerifiedBundle> check_signed_manifest(std::string manifest_bytes, std::string signature_text,
                                             const TrustStore& trust, std::int64_t now_unix);

Result<VerifiedBundle> verify_bundle(std::span<const std::uint8_t> archive, const TrustStore& trust,
                                     const VerifyOptions& options, ExtractSink* sink = nullptr);
Result<VerifiedBundle> verify_bundle_file(const std::string& path, const TrustStore& trust,
                                          const VerifyOptions& options, ExtractSink* sink = nullptr);

// What `airlock bundle inspect` shows, read without trusting anything.
struct InspectedEntry {
  std::string name;
  std::uint64_t size = 0;
  std::string kind;
};
struct InspectedBundle {
  std::vector<InspectedEntry> entries;
  Status archive_status;                // problems reading the tar itself
  std::string manifest_bytes;
  std::optional<Manifest> manifest;     // set when manifest.json parsed
  Status manifest_status;
  std::optional<Signature> signature;   // set when the .minisig parsed
  Status signature_status;
};
InspectedBundle inspect_bundle(std::span<const std::uint8_t> archive);

}  // namespace airlock::verifier
