#include "airlock/verifier/minisign.h"

#include <cstdio>
#include <cstring>
#include <mutex>
#include <vector>

#include <sodium.h>

namespace airlock::verifier {
namespace {

constexpr std::string_view kUntrustedPrefix = "untrusted comment: ";
constexpr std::string_view kTrustedPrefix = "trusted comment: ";
constexpr std::size_t kMaxSignatureText = 4096;
constexpr std::size_t kMaxKeyText = 4096;
constexpr std::uint64_t kMaxKdfMemlimit = 4ULL << 30;
constexpr std::uint64_t kMaxKdfOpslimit = 1ULL << 32;

constexpr std::uint8_t kSigAlg[2] = {'E', 'd'};         // key files
constexpr std::uint8_t kSigAlgHashed[2] = {'E', 'D'};   // prehashed signatures
constexpr std::uint8_t kKdfScrypt[2] = {'S', 'c'};
constexpr std::uint8_t kKdfNone[2] = {0, 0};
constexpr std::uint8_t kChkBlake2b[2] = {'B', '2'};

// Byte layout of a secret key file's payload (docs/bundle-format.md §4).
constexpr std::size_t kKeynumSkBytes = 8 + 64 + 32;
constexpr std::size_t kSecretPayloadBytes = 2 + 2 + 2 + 32 + 8 + 8 + kKeynumSkBytes;
constexpr std::size_t kPublicPayloadBytes = 2 + 8 + 32;
constexpr std::size_t kSigPayloadBytes = 2 + 8 + 64;

void ensure_sodium() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (sodium_init() < 0) std::abort();  // no usable randomness: cannot continue safely
  });
}

std::string base64_encode(std::span<const std::uint8_t> bytes) {
  std::string out(sodium_base64_ENCODED_LEN(bytes.size(), sodium_base64_VARIANT_ORIGINAL), '\0');
  sodium_bin2base64(out.data(), out.size(), bytes.data(), bytes.size(), sodium_base64_VARIANT_ORIGINAL);
  out.resize(std::strlen(out.c_str()));
  return out;
}

// Decodes exactly `expected` bytes of standard base64, or returns false.
bool base64_decode_exact(std::string_view text, std::uint8_t* out, std::size_t expected) {
  std::vector<std::uint8_t> buf(text.size() + 1);
  std::size_t n = 0;
  const char* end = nullptr;
  if (sodium_base642bin(buf.data(), buf.size(), text.data(), text.size(), nullptr, &n, &end,
                        sodium_base64_VARIANT_ORIGINAL) != 0)
    return false;
  if (end != text.data() + text.size() || n != expected) return false;
  std::memcpy(out, buf.data(), n);
  return true;
}

// Splits text into lines, dropping one trailing "\r" per line and a final
// empty line after the last "\n".
std::vector<std::string_view> split_lines(std::string_view text) {
  std::vector<std::string_view> lines;
  while (!text.empty()) {
    std::size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    lines.push_back(line);
    if (nl == std::string_view::npos) break;
    text.remove_prefix(nl + 1);
  }
  return lines;
}

void store_le64(std::uint8_t* p, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<std::uint8_t>(v >> (8 * i));
}
std::uint64_t load_le64(const std::uint8_t* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = v << 8 | p[i];
  return v;
}

void keynum_checksum(const std::uint8_t* keynum_sk, std::uint8_t out[32]) {
  crypto_generichash_state st;
  crypto_generichash_init(&st, nullptr, 0, 32);
  crypto_generichash_update(&st, kSigAlg, 2);
  crypto_generichash_update(&st, keynum_sk, 8 + 64);
  crypto_generichash_final(&st, out, 32);
}

std::array<std::uint8_t, 64> blake2b_512(std::span<const std::uint8_t> message) {
  std::array<std::uint8_t, 64> h{};
  crypto_generichash(h.data(), h.size(), message.data(), message.size(), nullptr, 0);
  return h;
}

}  // namespace

std::string KeyId::to_string() const {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llX", static_cast<unsigned long long>(load_le64(bytes.data())));
  return buf;
}

bool KeyId::parse(std::string_view text, KeyId* out) {
  if (text.size() != 16) return false;
  std::uint64_t v = 0;
  for (char c : text) {
    int d;
    if (c >= '0' && c <= '9') d = c - '0';
    else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
    else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
    else return false;
    v = v << 4 | static_cast<std::uint64_t>(d);
  }
  store_le64(out->bytes.data(), v);
  return true;
}

SecretKey::~SecretKey() { sodium_memzero(key.data(), key.size()); }

PublicKey SecretKey::public_key() const {
  PublicKey pk;
  pk.id = id;
  crypto_sign_ed25519_sk_to_pk(pk.key.data(), key.data());
  return pk;
}

SecretKey generate_secret_key() {
  ensure_sodium();
  SecretKey sk;
  std::array<std::uint8_t, 32> pk{};
  crypto_sign_keypair(pk.data(), sk.key.data());
  randombytes_buf(sk.id.bytes.data(), sk.id.bytes.size());
  return sk;
}

SecretKey secret_key_from_seed(std::span<const std::uint8_t, 32> seed, const KeyId& id) {
  ensure_sodium();
  SecretKey sk;
  std::array<std::uint8_t, 32> pk{};
  crypto_sign_seed_keypair(pk.data(), sk.key.data(), seed.data());
  sk.id = id;
  return sk;
}

std::string format_public_key(const PublicKey& key) {
  std::uint8_t payload[kPublicPayloadBytes];
  std::memcpy(payload, kSigAlg, 2);
  std::memcpy(payload + 2, key.id.bytes.data(), 8);
  std::memcpy(payload + 10, key.key.data(), 32);
  return std::string(kUntrustedPrefix) + "minisign public key " + key.id.to_string() + "\n" +
         base64_encode(payload) + "\n";
}

Result<PublicKey> parse_public_key(std::string_view text) {
  if (text.size() > kMaxKeyText) return verification_failed("public key text is too long");
  std::vector<std::string_view> lines = split_lines(text);
  std::string_view b64;
  if (lines.size() == 1) {
    b64 = lines[0];
  } else if (lines.size() == 2 && lines[0].starts_with(kUntrustedPrefix)) {
    b64 = lines[1];
  } else {
    return verification_failed("public key: expected an 'untrusted comment:' line and a base64 line");
  }
  std::uint8_t payload[kPublicPayloadBytes];
  if (!base64_decode_exact(b64, payload, sizeof payload))
    return verification_failed("public key: base64 does not decode to 42 bytes");
  if (std::memcmp(payload, kSigAlg, 2) != 0)
    return verification_failed("public key: unsupported algorithm (expected Ed25519)");
  PublicKey pk;
  std::memcpy(pk.id.bytes.data(), payload + 2, 8);
  std::memcpy(pk.key.data(), payload + 10, 32);
  return pk;
}

bool secret_key_is_encrypted(std::string_view text) {
  std::vector<std::string_view> lines = split_lines(text);
  if (lines.size() != 2) return false;
  std::uint8_t payload[kSecretPayloadBytes];
  if (!base64_decode_exact(lines[1], payload, sizeof payload)) return false;
  return std::memcmp(payload + 2, kKdfScrypt, 2) == 0;
}

std::string format_secret_key(const SecretKey& key, const std::optional<std::string>& passphrase,
                              KdfLimits limits) {
  ensure_sodium();
  std::uint8_t payload[kSecretPayloadBytes] = {};
  std::uint8_t* p = payload;
  std::memcpy(p, kSigAlg, 2);
  std::memcpy(p + 2, passphrase ? kKdfScrypt : kKdfNone, 2);
  std::memcpy(p + 4, kChkBlake2b, 2);
  std::uint8_t* salt = p + 6;
  std::uint8_t* keynum_sk = p + 6 + 32 + 16;
  std::memcpy(keynum_sk, key.id.bytes.data(), 8);
  std::memcpy(keynum_sk + 8, key.key.data(), 64);
  keynum_checksum(keynum_sk, keynum_sk + 72);
  if (passphrase) {
    randombytes_buf(salt, 32);
    store_le64(p + 38, limits.opslimit);
    store_le64(p + 46, limits.memlimit);
    std::uint8_t stream[kKeynumSkBytes];
    if (crypto_pwhash_scryptsalsa208sha256(stream, sizeof stream, passphrase->data(), passphrase->size(),
                                           salt, limits.opslimit, static_cast<std::size_t>(limits.memlimit)) != 0)
      std::abort();  // only fails when memory for scrypt cannot be had
    for (std::size_t i = 0; i < kKeynumSkBytes; ++i) keynum_sk[i] ^= stream[i];
    sodium_memzero(stream, sizeof stream);
  }
  std::string out = std::string(kUntrustedPrefix) +
                    (passphrase ? "minisign encrypted secret key\n" : "minisign secret key (unencrypted)\n") +
                    base64_encode(payload) + "\n";
  sodium_memzero(payload, sizeof payload);
  return out;
}

Result<SecretKey> parse_secret_key(std::string_view text,
                                   const std::function<Result<std::string>()>& passphrase) {
  ensure_sodium();
  if (text.size() > kMaxKeyText) return verification_failed("secret key text is too long");
  std::vector<std::string_view> lines = split_lines(text);
  if (lines.size() != 2 || !lines[0].starts_with(kUntrustedPrefix))
    return verification_failed("secret key: expected an 'untrusted comment:' line and a base64 line");
  std::uint8_t payload[kSecretPayloadBytes];
  if (!base64_decode_exact(lines[1], payload, sizeof payload))
    return verification_failed("secret key: base64 does not decode to 158 bytes");
  if (std::memcmp(payload, kSigAlg, 2) != 0) return verification_failed("secret key: unsupported algorithm");
  if (std::memcmp(payload + 4, kChkBlake2b, 2) != 0)
    return verification_failed("secret key: unsupported checksum algorithm");
  std::uint8_t* keynum_sk = payload + 6 + 32 + 16;
  if (std::memcmp(payload + 2, kKdfScrypt, 2) == 0) {
    std::uint64_t opslimit = load_le64(payload + 38);
    std::uint64_t memlimit = load_le64(payload + 46);
    if (opslimit > kMaxKdfOpslimit || memlimit > kMaxKdfMemlimit)
      return verification_failed("secret key: scrypt limits are implausibly large");
    Result<std::string> pass = passphrase ? passphrase() : Result<std::string>(invalid_argument("secret key is encrypted and no passphrase was given"));
    if (!pass.is_ok()) return pass.status();
    std::uint8_t stream[kKeynumSkBytes];
    int rc = crypto_pwhash_scryptsalsa208sha256(stream, sizeof stream, pass->data(), pass->size(),
                                                payload + 6, opslimit, static_cast<std::size_t>(memlimit));
    sodium_memzero(pass->data(), pass->size());
    if (rc != 0) return resource_exhausted("secret key: scrypt could not run with the file's limits");
    for (std::size_t i = 0; i < kKeynumSkBytes; ++i) keynum_sk[i] ^= stream[i];
    sodium_memzero(stream, sizeof stream);
  } else if (std::memcmp(payload + 2, kKdfNone, 2) != 0) {
    return verification_failed("secret key: unsupported key derivation algorithm");
  }
  std::uint8_t chk[32];
  keynum_checksum(keynum_sk, chk);
  bool chk_ok = sodium_memcmp(chk, keynum_sk + 72, 32) == 0;
  // minisign leaves the checksum all-zero in unencrypted (-W) key files.
  bool chk_absent = std::memcmp(payload + 2, kKdfNone, 2) == 0 && sodium_is_zero(keynum_sk + 72, 32);
  SecretKey sk;
  std::memcpy(sk.id.bytes.data(), keynum_sk, 8);
  std::memcpy(sk.key.data(), keynum_sk + 8, 64);
  sodium_memzero(payload, sizeof payload);
  // Independently of the checksum, the public half stored in the secret key
  // must be the one its seed derives.
  std::array<std::uint8_t, 32> pk{};
  std::array<std::uint8_t, 64> rederived{};
  crypto_sign_seed_keypair(pk.data(), rederived.data(), sk.key.data());
  bool consistent = sodium_memcmp(rederived.data(), sk.key.data(), 64) == 0;
  sodium_memzero(rederived.data(), rederived.size());
  if (!(chk_ok || chk_absent) || !consistent)
    return invalid_argument("secret key: wrong passphrase or corrupted key file");
  return sk;
}

std::string sign_message(const SecretKey& key, std::span<const std::uint8_t> message,
                         std::string_view trusted_comment, std::string_view untrusted_comment) {
  ensure_sodium();
  std::array<std::uint8_t, 64> digest = blake2b_512(message);
  std::uint8_t payload[kSigPayloadBytes];
  std::memcpy(payload, kSigAlgHashed, 2);
  std::memcpy(payload + 2, key.id.bytes.data(), 8);
  crypto_sign_detached(payload + 10, nullptr, digest.data(), digest.size(), key.key.data());

  std::vector<std::uint8_t> global(64 + trusted_comment.size());
  std::memcpy(global.data(), payload + 10, 64);
  std::memcpy(global.data() + 64, trusted_comment.data(), trusted_comment.size());
  std::uint8_t global_sig[64];
  crypto_sign_detached(global_sig, nullptr, global.data(), global.size(), key.key.data());

  std::string out;
  out += kUntrustedPrefix;
  out += untrusted_comment;
  out += "\n";
  out += base64_encode(payload);
  out += "\n";
  out += kTrustedPrefix;
  out += trusted_comment;
  out += "\n";
  out += base64_encode(global_sig);
  out += "\n";
  return out;
}

Result<Signature> parse_signature(std::string_view text) {
  if (text.size() > kMaxSignatureText) return verification_failed("signature: larger than 4 KiB");
  std::vector<std::string_view> lines = split_lines(text);
  if (lines.size() != 4) return verification_failed("signature: expected exactly 4 lines");
  if (!lines[0].starts_with(kUntrustedPrefix))
    return verification_failed("signature: first line is not an untrusted comment");
  if (!lines[2].starts_with(kTrustedPrefix))
    return verification_failed("signature: third line is not a trusted comment");
  std::uint8_t payload[kSigPayloadBytes];
  if (!base64_decode_exact(lines[1], payload, sizeof payload))
    return verification_failed("signature: base64 does not decode to 74 bytes");
  if (std::memcmp(payload, kSigAlg, 2) == 0)
    return verification_failed("signature: legacy (non-prehashed) minisign signatures are not accepted");
  if (std::memcmp(payload, kSigAlgHashed, 2) != 0)
    return verification_failed("signature: unsupported signature algorithm");
  Signature sig;
  std::memcpy(sig.key_id.bytes.data(), payload + 2, 8);
  std::memcpy(sig.signature.data(), payload + 10, 64);
  sig.trusted_comment = std::string(lines[2].substr(kTrustedPrefix.size()));
  if (!base64_decode_exact(lines[3], sig.global_signature.data(), 64))
    return verification_failed("signature: global signature does not decode to 64 bytes");
  return sig;
}

Status verify_signature(const PublicKey& key, std::span<const std::uint8_t> message,
                        const Signature& sig) {
  ensure_sodium();
  std::array<std::uint8_t, 64> digest = blake2b_512(message);
  if (crypto_sign_verify_detached(sig.signature.data(), digest.data(), digest.size(), key.key.data()) != 0)
    return verification_failed("signature does not match the manifest under key " + key.id.to_string());
  std::vector<std::uint8_t> global(64 + sig.trusted_comment.size());
  std::memcpy(global.data(), sig.signature.data(), 64);
  std::memcpy(global.data() + 64, sig.trusted_comment.data(), sig.trusted_comment.size());
  if (crypto_sign_verify_detached(sig.global_signature.data(), global.data(), global.size(), key.key.data()) != 0)
    return verification_failed("trusted comment signature is invalid under key " + key.id.to_string());
  return Status::ok();
}

}  // namespace airlock::verifier
