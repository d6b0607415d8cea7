// Ed25519 keys and signatures in the minisign formats (libsodium).
//
// Airlock writes and reads minisign's key files and detached signatures byte
// for byte (docs/bundle-format.md, sections 3 and 4), so the stock `minisign`
// tool can check a bundle's manifest and keys can move between the tools.
// Only the prehashed signature algorithm ("ED": Ed25519 over BLAKE2b-512 of
// the message) is produced or accepted.
//
// Errors: parse functions return kVerificationFailed for malformed key or
// signature text (it is untrusted input), kInvalidArgument for a wrong
// passphrase. verify_signature() returns kVerificationFailed with a reason.
//
// Thread-safety: all functions are reentrant; SecretKey objects are values
// that wipe their secret bytes on destruction.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "airlock/common/status.h"

namespace airlock::verifier {

// Eight random bytes naming a key. Not a security boundary: two keys may
// share an id, so a signature is always checked under the full public key.
struct KeyId {
  std::array<std::uint8_t, 8> bytes{};

  // minisign's display form: 16 upper-case hex digits of the bytes read as
  // a little-endian integer ("23F60D0BC084C8C0").
  std::string to_string() const;
  static bool parse(std::string_view text, KeyId* out);
  bool operator==(const KeyId&) const = default;
};

struct PublicKey {
  KeyId id;
  std::array<std::uint8_t, 32> key{};
  bool operator==(const PublicKey&) const = default;
};

class SecretKey {
 public:
  SecretKey() = default;
  SecretKey(const SecretKey&) = default;
  SecretKey& operator=(const SecretKey&) = default;
  ~SecretKey();

  KeyId id;
  std::array<std::uint8_t, 64> key{};  // libsodium Ed25519 secret key (seed || pk)

  PublicKey public_key() const;
};

// scrypt parameters used to encrypt a secret key. kSensitive matches
// minisign's defaults; kInteractive exists for tests that must stay fast.
struct KdfLimits {
  std::uint64_t opslimit;
  std::uint64_t memlimit;
  static KdfLimits sensitive() { return {33554432ULL, 1073741824ULL}; }
  static KdfLimits interactive() { return {524288ULL, 16777216ULL}; }
};

// A fresh random key pair.
SecretKey generate_secret_key();

// A key pair derived from a 32-byte seed: the same seed gives the same key.
// For tests and fuzzers that need a fixed trusted key; never for real keys.
SecretKey secret_key_from_seed(std::span<const std::uint8_t, 32> seed, const KeyId& id);

// "untrusted comment: minisign public key <ID>\n<base64>\n"
std::string format_public_key(const PublicKey& key);
// Accepts a whole public key file or the bare base64 line.
Result<PublicKey> parse_public_key(std::string_view text);

// Returns true when the secret key file is passphrase-protected; false when
// it is stored in clear or cannot be parsed (parse_secret_key says why).
bool secret_key_is_encrypted(std::string_view text);

// Encrypts with `passphrase` under `limits`, or stores in clear when
// passphrase is nullopt.
std::string format_secret_key(const SecretKey& key, const std::optional<std::string>& passphrase,
                              KdfLimits limits = KdfLimits::sensitive());

// `passphrase` is called only if the file is encrypted. A hostile file cannot
// make this allocate more than 4 GiB for scrypt: larger limits are refused.
Result<SecretKey> parse_secret_key(std::string_view text,
                                   const std::function<Result<std::string>()>& passphrase);

struct Signature {
  KeyId key_id;
  std::array<std::uint8_t, 64> signature{};         // over BLAKE2b-512(message)
  std::string trusted_comment;                       // without prefix or newline
  std::array<std::uint8_t, 64> global_signature{};  // over signature || trusted_comment
};

// Produces the four-line .minisig text.
std::string sign_message(const SecretKey& key, std::span<const std::uint8_t> message,
                         std::string_view trusted_comment, std::string_view untrusted_comment);

// Parses the four-line .minisig text (untrusted input, at most 4 KiB).
Result<Signature> parse_signature(std::string_view text);

// Checks both the message signature and the global signature under `key`.
// Does not compare key ids: the caller selects keys (TrustStore).
Status verify_signature(const PublicKey& key, std::span<const std::uint8_t> message,
                        const Signature& sig);

}  // namespace airlock::verifier
