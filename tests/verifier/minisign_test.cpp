#include "airlock/verifier/minisign.h"

#include <gtest/gtest.h>
#include <sodium.h>

#include <cstring>
#include <vector>

#include "test_bundles.h"

namespace airlock::verifier {
namespace {

std::span<const std::uint8_t> bytes_of(const std::string& s) {
  return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

TEST(MinisignTest, KeyIdPrintsLikeMinisign) {
  KeyId id;
  // minisign prints the 8 bytes as a little-endian integer.
  id.bytes = {0xC0, 0xC8, 0x84, 0xC0, 0x0B, 0x0D, 0xF6, 0x23};
  EXPECT_EQ(id.to_string(), "23F60D0BC084C8C0");
  KeyId back;
  ASSERT_TRUE(KeyId::parse("23F60D0BC084C8C0", &back));
  EXPECT_EQ(back, id);
  EXPECT_FALSE(KeyId::parse("23F60D0BC084C8C", &back));
  EXPECT_FALSE(KeyId::parse("23F60D0BC084C8CG", &back));
}

TEST(MinisignTest, ParsesAPublicKeyWrittenByMinisign) {
  // Generated with `minisign -G -W` (0.11).
  const std::string text =
      "untrusted comment: minisign public key 23F60D0BC084C8C0\n"
      "RWTAyITACw32I7/tnW2RRvGJpVCgGHMrlI7rzIeOzRIxMW1KtLeKhQbq\n";
  Result<PublicKey> pk = parse_public_key(text);
  ASSERT_TRUE(pk.is_ok()) << pk.status().to_string();
  EXPECT_EQ(pk->id.to_string(), "23F60D0BC084C8C0");
  EXPECT_EQ(format_public_key(*pk), text);
}

TEST(MinisignTest, VerifiesASignatureMadeByMinisign) {
  // `echo hello > f; minisign -S -s k.key -m f -t "tc here"` with the key above.
  Result<PublicKey> pk = parse_public_key("RWTAyITACw32I7/tnW2RRvGJpVCgGHMrlI7rzIeOzRIxMW1KtLeKhQbq");
  ASSERT_TRUE(pk.is_ok());
  const std::string sig_text =
      "untrusted comment: signature from minisign secret key\n"
      "RUTAyITACw32Iyq9Hi9zPeZKOiFjl7bYQDTxxVnYEg4Zd1N3oiaPiSXsB2BNkm7Yb6Lf1fEJuW3SQty64So5YeSk4FfrTU6u+A8=\n"
      "trusted comment: tc here\n"
      "6Yrf1aDjAW8BAyL2RtZLB1O5xtWFCkPden84642Jyk2fCvbX0Suav2Y3Pw914CwBuXO4/vrTLWgxal2OqZRIAA==\n";
  Result<Signature> sig = parse_signature(sig_text);
  ASSERT_TRUE(sig.is_ok()) << sig.status().to_string();
  EXPECT_EQ(sig->trusted_comment, "tc here");
  EXPECT_TRUE(verify_signature(*pk, bytes_of("hello\n"), *sig).is_ok());
  EXPECT_EQ(verify_signature(*pk, bytes_of("hellO\n"), *sig).code(), StatusCode::kVerificationFailed);
  Signature forged = *sig;
  forged.trusted_comment = "tc there";
  EXPECT_NE(verify_signature(*pk, bytes_of("hello\n"), forged).message().find("trusted comment"), std::string::npos);
}

TEST(MinisignTest, SignAndVerifyRoundTrip) {
  SecretKey sk = generate_secret_key();
  std::string text = sign_message(sk, bytes_of("payload"), "comment one", "untrusted");
  Result<Signature> sig = parse_signature(text);
  ASSERT_TRUE(sig.is_ok());
  EXPECT_EQ(sig->key_id, sk.id);
  EXPECT_TRUE(verify_signature(sk.public_key(), bytes_of("payload"), *sig).is_ok());
  EXPECT_FALSE(verify_signature(generate_secret_key().public_key(), bytes_of("payload"), *sig).is_ok());
}

TEST(MinisignTest, UnencryptedSecretKeyRoundTrip) {
  SecretKey sk = generate_secret_key();
  std::string text = format_secret_key(sk, std::nullopt);
  EXPECT_FALSE(secret_key_is_encrypted(text));
  Result<SecretKey> back = parse_secret_key(text, nullptr);
  ASSERT_TRUE(back.is_ok()) << back.status().to_string();
  EXPECT_EQ(back->key, sk.key);
  EXPECT_EQ(back->id, sk.id);
}

TEST(MinisignTest, EncryptedSecretKeyNeedsTheRightPassphrase) {
  SecretKey sk = generate_secret_key();
  std::string text = format_secret_key(sk, std::string("correct horse"), KdfLimits::interactive());
  EXPECT_TRUE(secret_key_is_encrypted(text));
  Result<SecretKey> good = parse_secret_key(text, [] { return Result<std::string>(std::string("correct horse")); });
  ASSERT_TRUE(good.is_ok()) << good.status().to_string();
  EXPECT_EQ(good->key, sk.key);
  Result<SecretKey> bad = parse_secret_key(text, [] { return Result<std::string>(std::string("wrong")); });
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find("wrong passphrase"), std::string::npos);
  Result<SecretKey> none = parse_secret_key(text, nullptr);
  EXPECT_FALSE(none.is_ok());
}

TEST(MinisignTest, HostileKeyAndSignatureText) {
  EXPECT_FALSE(parse_public_key("").is_ok());
  EXPECT_FALSE(parse_public_key("untrusted comment: x\n!!!notbase64\n").is_ok());
  EXPECT_FALSE(parse_public_key("untrusted comment: x\nRWQ=\n").is_ok());  // too short
  EXPECT_FALSE(parse_public_key(std::string(5000, 'A')).is_ok());
  EXPECT_FALSE(parse_signature("untrusted comment: x\n").is_ok());
  EXPECT_FALSE(parse_signature("a\nb\nc\nd\n").is_ok());
  EXPECT_FALSE(parse_signature(std::string(5000, '\n')).is_ok());
  EXPECT_FALSE(parse_secret_key("untrusted comment: x\nAAAA\n", nullptr).is_ok());
  // A secret key file claiming absurd scrypt limits is refused before scrypt runs.
  std::string text = format_secret_key(generate_secret_key(), std::string("p"), KdfLimits::interactive());
  std::string b64 = text.substr(text.find('\n') + 1);
  b64.pop_back();
  std::vector<unsigned char> raw(200);
  std::size_t n = 0;
  ASSERT_EQ(sodium_base642bin(raw.data(), raw.size(), b64.data(), b64.size(), nullptr, &n, nullptr,
                              sodium_base64_VARIANT_ORIGINAL), 0);
  raw.resize(n);
  raw[46 + 5] = 0x10;  // memlimit = 2^40 + ...
  std::string evil(sodium_base64_ENCODED_LEN(raw.size(), sodium_base64_VARIANT_ORIGINAL), '\0');
  sodium_bin2base64(evil.data(), evil.size(), raw.data(), raw.size(), sodium_base64_VARIANT_ORIGINAL);
  evil.resize(std::strlen(evil.c_str()));
  bool asked = false;
  Result<SecretKey> r = parse_secret_key("untrusted comment: x\n" + evil + "\n", [&] {
    asked = true;
    return Result<std::string>(std::string("p"));
  });
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("implausibly large"), std::string::npos);
  EXPECT_FALSE(asked);
}

}  // namespace
}  // namespace airlock::verifier
