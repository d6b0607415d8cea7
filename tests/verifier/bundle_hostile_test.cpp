// Hostile bundles: every one must be refused with kVerificationFailed and a
// message naming the problem, by verify and by import, and import must leave
// nothing behind in the store or anywhere else.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <string>
#include <vector>

#include "airlock/verifier/bundle_reader.h"
#include "airlock/verifier/bundle_store.h"
#include "test_bundles.h"

namespace airlock::verifier {
namespace {

using testing::BundleSpec;
using testing::RawEntry;

BundleSpec base_spec() {
  BundleSpec s;
  s.files = {{"model.gguf", testing::random_bytes(200 * 1024 + 17, 1)},   // 4 chunks of 64 KiB
             {"LICENSE", "Apache-2.0 test licence\n"},
             {"a.bin", testing::random_bytes(1000, 2)},
             {"b.bin", testing::random_bytes(1000, 3)}};  // a twin of a.bin in size
  return s;
}

const SecretKey& signer() {
  static const SecretKey k = testing::test_key(1);
  return k;
}

// Manifest + signature entries for `spec`, optionally with edited manifest text.
std::vector<RawEntry> signed_head(const BundleSpec& spec,
                                  const std::function<void(std::string&)>& edit = nullptr,
                                  const SecretKey& key = signer()) {
  std::string manifest = serialize_manifest(testing::manifest_for(spec, key));
  if (edit) edit(manifest);
  return {{"manifest.json", manifest}, {"manifest.json.minisig", testing::sign_manifest(key, manifest)}};
}

std::string with_payload(std::vector<RawEntry> head, std::vector<RawEntry> payload) {
  for (RawEntry& e : payload) head.push_back(std::move(e));
  return testing::build_tar(head);
}

void replace_once(std::string& s, const std::string& from, const std::string& to) {
  std::size_t at = s.find(from);
  ASSERT_NE(at, std::string::npos) << from;
  s.replace(at, from.size(), to);
}

// Raw tar editing for the header cases below.
std::string tar_octal(std::uint64_t v, std::size_t width) {  // width-1 octal digits, then NUL
  std::string digits(width - 1, '0');
  for (std::size_t k = width - 1; k-- > 0; v >>= 3) digits[k] = static_cast<char>('0' + (v & 7));
  return digits + '\0';
}
void tar_checksum(std::string& block, std::size_t at) {  // the header block at `at`
  std::fill(block.begin() + static_cast<std::ptrdiff_t>(at + 148), block.begin() + static_cast<std::ptrdiff_t>(at + 156), ' ');
  unsigned sum = 0;
  for (std::size_t k = 0; k < 512; ++k) sum += static_cast<unsigned char>(block[at + k]);
  const std::string field = tar_octal(sum, 7) + " ";
  block.replace(at + 148, 8, field);
}
std::size_t tar_header_of(const std::string& tar, const std::string& name) {  // ustar header naming `name`
  for (std::size_t at = 0; at + 512 <= tar.size(); at += 512)
    if (tar.compare(at, name.size() + 1, name + std::string(1, '\0')) == 0) return at;
  ADD_FAILURE() << name << " not found";
  return 0;
}
// A pax header block of `type` ('x', 'g') with one record, or a bare header
// of another type, padded to whole blocks.
std::string pax_header(char type, const std::string& key_value) {
  auto padded = [](std::size_t v) { return (v + 511) / 512 * 512; };
  const std::string body = key_value + "\n";
  std::string record = std::to_string(body.size() + 3) + " " + body;  // a 2-digit length plus its space
  if (record.size() != body.size() + 3) record = std::to_string(body.size() + 4) + " " + body;
  if (type != 'x' && type != 'g') record.clear();
  std::string pax(512, '\0');
  pax.replace(0, 13, "PaxHeader/a.b");
  pax.replace(100, 8, tar_octal(0644, 8));
  pax.replace(108, 8, tar_octal(0, 8));
  pax.replace(116, 8, tar_octal(0, 8));
  pax.replace(124, 12, tar_octal(record.size(), 12));
  pax.replace(136, 12, tar_octal(0, 12));
  pax[156] = type;
  pax.replace(257, 8, std::string("ustar\0" "00", 8));
  tar_checksum(pax, 0);
  return pax + record + std::string(padded(record.size()) - record.size(), '\0');
}

// Entry `name` (of `n` data bytes) made to store n + extra.size() bytes (the
// extra ones after its data) while a pax SCHILY.realsize record tells
// libarchive its size is still n: GNU tar would extract the extra bytes.
std::string with_realsize(std::string tar, const std::string& name, std::size_t n, const std::string& extra) {
  const std::size_t h = tar_header_of(tar, name);
  const std::size_t stored = n + extra.size();
  auto padded = [](std::size_t v) { return (v + 511) / 512 * 512; };
  std::string header = tar.substr(h, 512);
  header.replace(124, 12, tar_octal(stored, 12));
  tar_checksum(header, 0);
  std::string data = tar.substr(h + 512, n) + extra;
  data += std::string(padded(data.size()) - data.size(), '\0');
  return tar.substr(0, h) + pax_header('x', "SCHILY.realsize=" + std::to_string(n)) + header + data +
         tar.substr(h + 512 + padded(n));
}

// An entry at `at` that another tar reader would see and libarchive hides: a
// pax global header ('g', applied by GNU tar and Python's tarfile to every
// later entry) or a volume label ('V').
std::string with_header_at(const std::string& tar, std::size_t at, char type, const std::string& record) {
  return tar.substr(0, at) + pax_header(type, record) + tar.substr(at);
}

struct HostileCase {
  std::string name;
  std::function<std::string()> make;  // the bundle bytes
  std::string expect;                 // a substring of the error message
  std::function<TrustStore()> trust = [] { return testing::trust_only(signer()); };
  std::int64_t now = 1790000100;
};

std::vector<HostileCase> hostile_cases() {
  std::vector<HostileCase> c;
  const BundleSpec spec = base_spec();
  auto valid = [spec] { return testing::build_bundle(spec, signer()); };
  auto flip_in = [valid](const std::string& needle, std::size_t delta) {
    return [valid, needle, delta] {
      std::string b = valid();
      std::size_t at = b.find(needle);
      b[at + delta] = static_cast<char>(b[at + delta] ^ 0x01);
      return b;
    };
  };
  const std::string& model = spec.files[0].second;

  c.push_back({"payload_byte_flipped_first_chunk", flip_in(model.substr(0, 64), 10), "chunk 0"});
  c.push_back({"payload_byte_flipped_last_chunk", flip_in(model.substr(model.size() - 64), 60), "chunk 3"});
  c.push_back({"manifest_byte_flipped", flip_in("\"version\": 1", 11), "signature does not match"});
  c.push_back({"signature_byte_flipped", [valid] {
                 std::string b = valid();
                 std::size_t at = b.find("untrusted comment: test signature\n") + 34 + 60;  // inside the signature bytes
                 b[at] = b[at] == 'A' ? 'B' : 'A';
                 return b;
               }, "signature"});
  // Entries whose stored data differs from the size libarchive reports:
  // the bytes after the hashed ones would reach anyone extracting the
  // verified bundle with GNU tar.
  c.push_back({"gnu_header", [valid] {
                 std::string b = valid();
                 const std::size_t h = tar_header_of(b, "a.bin");
                 b.replace(h + 257, 8, std::string("ustar  \0", 8));
                 tar_checksum(b, h);
                 return b;
               }, "GNU tar header"});
  // Magic and version other than ustar's exact "ustar\0" "00": libarchive
  // takes the prefix field whenever the magic begins "ustar", GNU tar reads
  // anything but "ustar\0" as a v7 header and ignores it. Here the manifest
  // names sub/a.bin and the header says prefix "sub", name "a.bin", magic
  // "ustarX": libarchive saw sub/a.bin and it verified, GNU tar extracted
  // a.bin.
  c.push_back({"ustar_magic_not_exact_with_prefix", [] {
                 BundleSpec s = base_spec();
                 s.files[2].first = "sub/a.bin";
                 std::string b = testing::build_bundle(s, signer());
                 const std::size_t h = tar_header_of(b, "sub/a.bin");
                 b.replace(h, 100, std::string("a.bin").append(95, '\0'));
                 b.replace(h + 345, 3, "sub");
                 b.replace(h + 257, 8, std::string("ustarX\0\0", 8));
                 tar_checksum(b, h);
                 return b;
               }, "not POSIX ustar's"});
  c.push_back({"v7_header", [valid] {  // no magic at all
                 std::string b = valid();
                 const std::size_t h = tar_header_of(b, "a.bin");
                 b.replace(h + 257, 8, std::string(8, '\0'));
                 tar_checksum(b, h);
                 return b;
               }, "not POSIX ustar's"});
  c.push_back({"ustar_version_not_00", [valid] {
                 std::string b = valid();
                 const std::size_t h = tar_header_of(b, "LICENSE");
                 b.replace(h + 263, 2, "01");
                 tar_checksum(b, h);
                 return b;
               }, "not POSIX ustar's"});
  c.push_back({"pax_header_magic_not_exact", [valid] {
                 std::string b = valid();
                 const std::size_t h = tar_header_of(b, "a.bin");
                 std::string pax = pax_header('x', "comment=x");
                 pax.replace(257, 8, std::string("ustar \0\0", 8));
                 tar_checksum(pax, 0);
                 return b.substr(0, h) + pax + b.substr(h);
               }, "not POSIX ustar's"});
  // Headers libarchive applies without showing them, which other readers
  // act on, and bytes libarchive never looks at.
  c.push_back({"pax_global_header_before_an_entry", [valid] {
                 std::string b = valid();
                 return with_header_at(b, tar_header_of(b, "a.bin"), 'g', "path=../../../tmp/pwned");
               }, "global"});
  c.push_back({"pax_global_header_before_the_manifest", [valid] {
                 return with_header_at(valid(), 0, 'g', "comment=" + std::string(2000, 'c'));
               }, "global"});
  c.push_back({"pax_global_header_after_the_last_entry", [valid] {
                 std::string b = valid();
                 const std::size_t last = tar_header_of(b, "b.bin") + 512 + 1024;  // b.bin: 1000 bytes, two blocks
                 return with_header_at(b, last, 'g', "path=x");
               }, "after the last entry"});
  c.push_back({"volume_header_before_an_entry", [valid] {
                 std::string b = valid();
                 return with_header_at(b, tar_header_of(b, "LICENSE"), 'V', "");
               }, "volume"});
  c.push_back({"two_pax_extended_headers", [valid] {
                 std::string b = valid();
                 const std::size_t h = tar_header_of(b, "a.bin");
                 return b.substr(0, h) + pax_header('x', "comment=a") + pax_header('x', "comment=b") + b.substr(h);
               }, "pax"});  // libarchive itself refuses the second one
  c.push_back({"bytes_in_the_manifests_padding", [valid] {
                 std::string b = valid();
                 const std::size_t sig = tar_header_of(b, "manifest.json.minisig");
                 b[sig - 1] = 'X';  // the last byte of the manifest's padding
                 return b;
               }, "padding"});
  // (Both were refused by the padding and end checks before the ustar
  // size field was compared with the size.)
  c.push_back({"realsize_hides_bytes_in_the_padding", [valid] {
                 return with_realsize(valid(), "a.bin", 1000, "#!/bin/sh\necho hidden\n");  // stored 1023: one block
               }, "size field says 1022"});
  c.push_back({"realsize_hides_a_block", [valid] {
                 return with_realsize(valid(), "a.bin", 1000, std::string(600, 'X'));  // stored 1600: two blocks more
               }, "size field says 1600"});
  // The raw ustar fields of an entry say what a reader that ignores pax
  // headers uses: they must agree with the pax values libarchive applies.
  c.push_back({"ustar_name_escapes_while_pax_names_the_file", [valid] {
                 std::string b = valid();
                 const std::size_t h = tar_header_of(b, "a.bin");
                 b.replace(h, 100, std::string("../../../tmp/pwned").append(82, '\0'));
                 tar_checksum(b, h);
                 return b.substr(0, h) + pax_header('x', "path=a.bin") + b.substr(h);
               }, "ustar name '../../../tmp/pwned'"});
  c.push_back({"gnu_sparse_name_renames_an_entry", [valid] {
                 std::string b = valid();
                 const std::size_t h = tar_header_of(b, "a.bin");
                 return b.substr(0, h) + pax_header('x', "GNU.sparse.name=a.bin") + b.substr(h);
               }, "GNU.sparse"});
  c.push_back({"ustar_size_zero_while_pax_gives_the_size", [valid] {
                 std::string b = valid();
                 const std::size_t h = tar_header_of(b, "a.bin");
                 b.replace(h + 124, 12, tar_octal(0, 12));
                 tar_checksum(b, h);
                 return b.substr(0, h) + pax_header('x', "size=1000") + b.substr(h);
               }, "size field says 0"});
  c.push_back({"truncated_mid_payload", [valid] {
                 std::string b = valid();
                 return b.substr(0, b.size() / 2);
               }, "truncated"});
  c.push_back({"data_after_end_of_archive", [valid] {
                 std::string b = valid();
                 b += std::string(1024, '\0');
                 b += "#!/bin/sh\necho a second archive or a script hides here\n";
                 return b;
               }, "data after the end of the tar archive"});
  c.push_back({"data_inside_end_padding", [valid] {
                 std::string b = valid();
                 std::size_t last = b.find_last_not_of('\0');
                 b[last + 700] = 'X';  // past the last entry's padding, inside the zero blocks
                 return b;
               }, "tar archive"});
  c.push_back({"truncated_in_manifest", [valid] { return valid().substr(0, 700); }, "manifest.json"});
  c.push_back({"extra_file_not_in_manifest", [spec] {
                 auto p = testing::payload_entries(spec);
                 p.push_back({"evil.sh", "#!/bin/sh\n"});
                 return with_payload(signed_head(spec), p);
               }, "extra entry 'evil.sh'"});
  c.push_back({"missing_file", [spec] {
                 auto p = testing::payload_entries(spec);
                 p.pop_back();
                 return with_payload(signed_head(spec), p);
               }, "archive ends before file 'b.bin'"});
  c.push_back({"twins_swapped_in_order", [spec] {
                 auto p = testing::payload_entries(spec);
                 std::swap(p[2], p[3]);
                 return with_payload(signed_head(spec), p);
               }, "expects 'a.bin'"});
  c.push_back({"twins_contents_swapped", [spec] {
                 auto p = testing::payload_entries(spec);
                 std::swap(p[2].data, p[3].data);
                 return with_payload(signed_head(spec), p);
               }, "file 'a.bin' chunk 0"});
  c.push_back({"dotdot_entry_name", [spec] {
                 auto p = testing::payload_entries(spec);
                 p[1].name = "../../evil";
                 return with_payload(signed_head(spec), p);
               }, "expects 'LICENSE'"});
  c.push_back({"absolute_entry_name", [spec] {
                 auto p = testing::payload_entries(spec);
                 p[1].name = "/tmp/airlock-evil";
                 return with_payload(signed_head(spec), p);
               }, "expects 'LICENSE'"});
  c.push_back({"dotdot_path_in_signed_manifest", [spec] {
                 auto p = testing::payload_entries(spec);
                 p[1].name = "../evil";
                 return with_payload(signed_head(spec, [](std::string& m) { replace_once(m, "\"LICENSE\"", "\"../evil\""); }), p);
               }, "component starts with '.'"});
  c.push_back({"absolute_path_in_signed_manifest", [spec] {
                 auto p = testing::payload_entries(spec);
                 p[1].name = "/etc/evil";
                 return with_payload(signed_head(spec, [](std::string& m) { replace_once(m, "\"LICENSE\"", "\"/etc/evil\""); }), p);
               }, "empty component"});
  auto replace_entry = [spec](RawEntry::Kind kind, std::string target) {
    return [spec, kind, target] {
      auto p = testing::payload_entries(spec);
      p[1].kind = kind;
      p[1].link_target = target;
      return with_payload(signed_head(spec), p);
    };
  };
  c.push_back({"symlink_entry", replace_entry(RawEntry::Kind::kSymlink, "/etc/passwd"), "is a symlink"});
  c.push_back({"hardlink_entry", replace_entry(RawEntry::Kind::kHardlink, "model.gguf"), "is a hardlink"});
  c.push_back({"char_device_entry", replace_entry(RawEntry::Kind::kCharDevice, ""), "is a device"});
  c.push_back({"fifo_entry", replace_entry(RawEntry::Kind::kFifo, ""), "is a fifo"});
  c.push_back({"directory_entry", replace_entry(RawEntry::Kind::kDirectory, ""), "is a directory"});
  c.push_back({"symlink_manifest", [spec] {
                 std::vector<RawEntry> e = {{"manifest.json", "", RawEntry::Kind::kSymlink, "/etc/passwd"}};
                 return testing::build_tar(e);
               }, "is a symlink"});
  c.push_back({"duplicate_entry", [spec] {
                 auto p = testing::payload_entries(spec);
                 p.insert(p.begin() + 2, p[1]);
                 return with_payload(signed_head(spec), p);
               }, "is 'LICENSE', the manifest expects 'a.bin'"});
  c.push_back({"manifest_over_size_limit", [] {
                 std::vector<RawEntry> e = {{"manifest.json", std::string((16 << 20) + 1, ' ')}};
                 return testing::build_tar(e);
               }, "limit"});
  c.push_back({"entry_size_differs_from_manifest", [spec] {
                 auto p = testing::payload_entries(spec);
                 p[1].data += "appended";
                 return with_payload(signed_head(spec), p);
               }, "the manifest says 24"});
  c.push_back({"untrusted_key", [spec] {
                 return with_payload(signed_head(spec, nullptr, testing::test_key(9)), testing::payload_entries(spec));
               }, "not a trusted key"});
  c.push_back({"revoked_key", valid, "has been revoked", [] {
                 TrustStore t = testing::trust_only(signer());
                 t.revoke(signer().id);
                 return t;
               }});
  c.push_back({"same_key_id_different_key", [spec] {
                 SecretKey impostor = testing::test_key(9);
                 impostor.id = signer().id;  // claims the trusted key's id
                 return with_payload(signed_head(spec, nullptr, impostor), testing::payload_entries(spec));
               }, "signature does not match"});
  c.push_back({"signature_over_different_manifest", [spec] {
                 BundleSpec other = spec;
                 other.version = 2;
                 auto head = signed_head(spec);
                 head[1] = signed_head(other)[1];
                 return with_payload(head, testing::payload_entries(spec));
               }, "signature does not match"});
  c.push_back({"expired_bundle", [] {
                 BundleSpec s = base_spec();
                 s.expires_at = 1790000050;
                 return testing::build_bundle(s, signer());
               }, "expired at"});
  c.push_back({"garbage_file", [] { return testing::random_bytes(8192, 42); }, "tar"});
  c.push_back({"zero_length_file", [] { return std::string(); }, "empty file"});
  c.push_back({"gzip_bomb", [] {
                 // A gzip stream of zeros; it is refused by its magic, never inflated.
                 std::string g = "\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03";
                 return g + std::string(4096, '\0');
               }, "gzip data"});
  // Real bombs: 256 MiB of zeros in a few hundred KiB. Refused by magic
  // before a single byte is inflated.
  c.push_back({"gzip_bomb_real", [] { return testing::build_compressed_bomb("gzip", 256ULL << 20); }, "gzip data"});
  c.push_back({"zstd_bomb_real", [] { return testing::build_compressed_bomb("zstd", 256ULL << 20); }, "zstd data"});
  c.push_back({"xz_bomb_real", [] { return testing::build_compressed_bomb("xz", 64ULL << 20); }, "xz data"});
  c.push_back({"zstd_data", [] { return std::string("\x28\xb5\x2f\xfd") + testing::random_bytes(1000, 5); }, "zstd data"});
  c.push_back({"not_a_tar", [] { return std::string("#!/bin/sh\necho hello\n") + std::string(2000, 'x'); }, "tar"});
  c.push_back({"payload_before_manifest", [spec] {
                 auto p = testing::payload_entries(spec);
                 auto head = signed_head(spec);
                 std::vector<RawEntry> e = {p[0], head[0], head[1]};
                 return testing::build_tar(e);
               }, "entry 1 must be 'manifest.json'"});
  c.push_back({"signature_missing", [spec] {
                 auto head = signed_head(spec);
                 head.pop_back();
                 return with_payload(head, testing::payload_entries(spec));
               }, "entry 2 must be 'manifest.json.minisig'"});
  c.push_back({"manifest_key_id_differs", [spec] {
                 auto head = signed_head(spec, [](std::string& m) {
                   replace_once(m, testing::test_key(1).id.to_string(), testing::test_key(9).id.to_string());
                 });
                 return with_payload(head, testing::payload_entries(spec));
               }, "manifest names key"});
  c.push_back({"trusted_comment_for_other_bundle", [spec] {
                 std::string manifest = serialize_manifest(testing::manifest_for(spec, signer()));
                 std::span<const std::uint8_t> bytes(reinterpret_cast<const std::uint8_t*>(manifest.data()), manifest.size());
                 std::string sig = sign_message(signer(), bytes, "airlock-bundle name=other version=99 manifest_sha256=00", "x");
                 return with_payload({{"manifest.json", manifest}, {"manifest.json.minisig", sig}}, testing::payload_entries(spec));
               }, "trusted comment does not describe"});
  c.push_back({"duplicate_json_key", [spec] {
                 return with_payload(signed_head(spec, [](std::string& m) { replace_once(m, "\"version\": 1,", "\"version\": 1,\n  \"version\": 7,"); }),
                                     testing::payload_entries(spec));
               }, "duplicate key 'version'"});
  c.push_back({"unknown_manifest_field", [spec] {
                 return with_payload(signed_head(spec, [](std::string& m) { replace_once(m, "\"version\": 1,", "\"version\": 1,\n  \"run\": \"rm -rf /\","); }),
                                     testing::payload_entries(spec));
               }, "unknown field 'run'"});
  c.push_back({"chunk_list_too_short", [spec] {
                 return with_payload(signed_head(spec, [&](std::string& m) {
                   std::string last = to_hex(testing::manifest_for(spec, signer()).files[0].chunk_sha256[3]);
                   replace_once(m, ",\n        \"" + last + "\"", "");
                 }), testing::payload_entries(spec));
               }, "chunk_sha256 has 3 entries"});
  c.push_back({"needs_newer_daemon", [spec] {
                 return with_payload(signed_head(spec, [](std::string& m) { replace_once(m, "\"min_daemon_version\": \"0.1.0\"", "\"min_daemon_version\": \"99.0.0\""); }),
                                     testing::payload_entries(spec));
               }, "needs Airlock 99.0.0"});
  c.push_back({"legacy_signature_algorithm", [spec] {
                 auto head = signed_head(spec);
                 std::string& sig = head[1].data;
                 std::size_t line2 = sig.find('\n') + 1;
                 // base64 of "ED" starts "RU"; "Ed" starts "RW": the legacy mode.
                 sig[line2 + 1] = 'W';
                 return with_payload(head, testing::payload_entries(spec));
               }, "legacy"});
  return c;
}

void PrintTo(const HostileCase& c, std::ostream* os) { *os << c.name; }

class HostileBundleTest : public ::testing::TestWithParam<HostileCase> {};

TEST_P(HostileBundleTest, VerifyRefusesWithReason) {
  const HostileCase& hc = GetParam();
  std::string bytes = hc.make();
  VerifyOptions opts;
  opts.now_unix = hc.now;
  std::span<const std::uint8_t> span(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());
  Result<VerifiedBundle> r = verify_bundle(span, hc.trust(), opts);
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), StatusCode::kVerificationFailed) << r.status().to_string();
  EXPECT_NE(r.status().message().find(hc.expect), std::string::npos)
      << "expected '" << hc.expect << "' in: " << r.status().message();
}

TEST_P(HostileBundleTest, ImportLeavesNothingBehind) {
  const HostileCase& hc = GetParam();
  testing::TempDir root;
  std::string bundle = root / "in.airlock";
  testing::write_file(bundle, hc.make());
  std::string store_dir = root / "store";
  Result<BundleStore> store = BundleStore::open(store_dir);
  ASSERT_TRUE(store.is_ok()) << store.status().to_string();
  ImportOptions opts;
  opts.verify.now_unix = hc.now;
  Result<ImportRecord> r = store->import_bundle(bundle, hc.trust(), opts);
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), StatusCode::kVerificationFailed) << r.status().to_string();
  // Only the store's own bookkeeping may exist: no bundle directory, nothing
  // staged, nothing written beside the store.
  for (const std::string& p : testing::list_tree(store_dir))
    EXPECT_TRUE(p == "state.db" || p.rfind("state.db-", 0) == 0 || p == ".lock" || p == ".staging") << p;
  EXPECT_TRUE(testing::list_tree(store_dir + "/.staging").empty());
  EXPECT_EQ(testing::list_tree(root.path()).size(), testing::list_tree(store_dir).size() + 2u);  // in.airlock, store
  EXPECT_FALSE(testing::exists("/tmp/airlock-evil"));
  Result<std::vector<ImportRecord>> rows = store->list_imports();
  ASSERT_TRUE(rows.is_ok());
  EXPECT_TRUE(rows->empty());
}

INSTANTIATE_TEST_SUITE_P(AllCases, HostileBundleTest, ::testing::ValuesIn(hostile_cases()),
                         [](const auto& param_info) { return param_info.param.name; });

TEST(HostileBundleCount, AtLeastThirtyDistinctCases) { EXPECT_GE(hostile_cases().size(), 30u); }

}  // namespace
}  // namespace airlock::verifier
