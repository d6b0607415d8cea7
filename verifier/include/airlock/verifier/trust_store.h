// The public keys an enclave trusts, and the key ids it has revoked
// (docs/bundle-format.md, section 5).
//
// A trusted directory holds one minisign public key per `*.pub` file and an
// optional `revoked` file listing revoked key ids (16 hex digits per line,
// '#' comments). load() reads either such a directory or a single .pub file.
//
// Errors from load(): kNotFound when the path does not exist, kIoError for
// unreadable files, kInvalidArgument for a malformed key or revocation line
// (naming the file and line), and kInvalidArgument when no key was found:
// an empty trust store would make every bundle fail, which is never what the
// operator meant.
//
// Thread-safety: immutable after load(); concurrent const use is safe.
#pragma once

#include <string>
#include <vector>

#include "airlock/common/status.h"
#include "airlock/verifier/minisign.h"

namespace airlock::verifier {

class TrustStore {
 public:
  TrustStore() = default;

  static Result<TrustStore> load(const std::string& path);

  void add_key(const PublicKey& key) { keys_.push_back(key); }
  void revoke(const KeyId& id) { revoked_.push_back(id); }

  // All trusted keys whose id equals `id` (usually zero or one).
  std::vector<PublicKey> keys_with_id(const KeyId& id) const;
  bool is_revoked(const KeyId& id) const;
  std::size_t n_keys() const { return keys_.size(); }

 private:
  std::vector<PublicKey> keys_;
  std::vector<KeyId> revoked_;
};

// Parses the text of a `revoked` file; `source` names it in errors.
Result<std::vector<KeyId>> parse_revocation_list(std::string_view text, const std::string& source);

// Reads a whole small file (at most `max_bytes`) into a string.
Result<std::string> read_small_file(const std::string& path, std::size_t max_bytes);

}  // namespace airlock::verifier
