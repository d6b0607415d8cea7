// Creating a signed bundle (`airlock bundle create`).
//
// create_bundle() hashes every input (whole file and every chunk, in
// parallel), reads GGUF facts for model roles, builds and signs the manifest,
// and writes the tar to a temporary file beside `out_path` that is fsynced
// and renamed into place only when complete (renameat2 RENAME_NOREPLACE,
// which vfat and exFAT transfer media support; link() where it is missing):
// a crash never leaves a half-written bundle under the final name. While the
// temporary file exists, SIGINT, SIGTERM and SIGHUP (those not ignored when
// the first bundle is written) remove it and then take their previous
// action; the handlers stay installed for the life of the process.
//
// Before reading any input it checks every manifest rule but the hashes,
// and refuses inputs whose manifest would be over kMaxManifestBytes (too
// many chunks for the chunk size): that is known from the sizes alone, and
// finding it out after hashing a 100 GB input wastes hours.
//
// Errors: kInvalidArgument for bad options or inputs (named; a manifest over
// the limit names a chunk size that fits), kNotFound for a missing input,
// kAlreadyExists when out_path exists, kIoError for the OS.
//
// Thread-safety: may run concurrently for different outputs.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "airlock/common/status.h"
#include "airlock/common/version.h"
#include "airlock/verifier/bundle_reader.h"
#include "airlock/verifier/manifest.h"
#include "airlock/verifier/minisign.h"

namespace airlock::verifier {

struct BundleInput {
  FileRole role = FileRole::kOther;
  std::string source_path;  // file on the staging host
  std::string bundle_path;  // its path inside the bundle (validate_bundle_path)
};

struct CreateOptions {
  std::string name;
  std::uint64_t version = 0;
  std::int64_t created_at = 0;  // 0 means now
  std::optional<std::int64_t> expires_at;
  std::uint64_t chunk_size = kDefaultChunkSize;
  std::string min_daemon_version = kVersion;
  unsigned n_threads = 0;
  ProgressFn progress;  // bytes hashed then written: total is twice the payload
};

// Returns the manifest that was signed and written.
Result<VerifiedBundle> create_bundle(const std::vector<BundleInput>& inputs, const SecretKey& key,
                                     const CreateOptions& options, const std::string& out_path);

}  // namespace airlock::verifier
