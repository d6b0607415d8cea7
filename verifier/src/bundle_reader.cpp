#include "airlock/verifier/bundle_reader.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <ctime>
#include <memory>
#include <mutex>

#include "airlock/common/version.h"
#include "airlock/verifier/mapped_file.h"
#include "guarded_read.h"
#include "task_pool.h"
#include "tar_reader.h"

namespace airlock::verifier {

unsigned extract_threads(unsigned requested, std::uint64_t chunk_size) {
  constexpr std::uint64_t kBudget = 1ULL << 30;  // the chunk copies of all threads together
  const unsigned n = requested == 0 ? available_cores() : requested;
  return static_cast<unsigned>(std::clamp<std::uint64_t>(kBudget / std::max<std::uint64_t>(chunk_size, 1), 1, n));
}

namespace {

std::span<const std::uint8_t> as_bytes(const std::string& s) {
  return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

// Reads the first two entries: manifest.json and its signature.
Status read_signed_manifest(TarReader& tar, std::string* manifest, std::string* signature) {
  TarEntry e;
  const std::pair<std::string_view, std::string*> wanted[] = {{kManifestEntry, manifest}, {kSignatureEntry, signature}};
  const std::uint64_t limits[] = {kMaxManifestBytes, kMaxSignatureBytes};
  for (int i = 0; i < 2; ++i) {
    AIRLOCK_ASSIGN_OR_RETURN(bool has, tar.next(&e));
    if (!has) return verification_failed("archive ends before " + std::string(wanted[i].first));
    if (e.name != wanted[i].first)
      return verification_failed("entry " + std::to_string(i + 1) + " must be '" + std::string(wanted[i].first) +
                                 "', found '" + printable_name(e.name) + "'");
    AIRLOCK_RETURN_IF_ERROR(require_regular_file(e));
    Status s = tar.read_small(wanted[i].second, limits[i]);
    if (!s.is_ok()) return s.with_context(std::string(wanted[i].first));
  }
  return Status::ok();
}

// One chunk of one payload file: a span of the archive's mapping.
struct Chunk {
  std::size_t file = 0;
  std::uint64_t index = 0;
  std::uint64_t offset = 0;  // in the file
  std::span<const std::uint8_t> bytes;
};

// State shared between the reading thread and the hashing workers.
class PayloadCheck {
 public:
  PayloadCheck(const VerifiedBundle& bundle, ExtractSink* sink)
      : bundle_(bundle), sink_(sink), remaining_(bundle.manifest.files.size()) {}

  void set_chunks(std::size_t file, std::uint64_t n) { remaining_[file].store(n); }

  void hash(const Chunk& c) {
    // After a failure, only chunks before it in manifest order still matter
    // (they could fail too, and the earliest failure is the one reported,
    // whatever the thread timing).
    if (failed_.load(std::memory_order_relaxed)) {
      std::lock_guard<std::mutex> lock(mu_);
      if (std::make_pair(c.file, c.index) > std::make_pair(first_file_, first_chunk_)) return;
    }
    const ManifestFile& f = bundle_.manifest.files[c.file];
    // When extracting, read the chunk exactly once into a private buffer and
    // hash and write that buffer: the mapping could change between a second
    // read and the write (a file modified during import, or media that
    // returns different data when read again).
    thread_local std::vector<std::uint8_t> copy;
    std::span<const std::uint8_t> data = c.bytes;
    if (sink_ != nullptr) {
      copy.resize(c.bytes.size());
      if (!copy_guarded(copy.data(), c.bytes.data(), c.bytes.size()))
        return fail(c.file, c.index, file_shrank("bundle (reading '" + f.path + "')"));
      data = copy;
    }
    Result<Sha256Digest> digest = sha256_guarded(data, "bundle (reading '" + f.path + "')");
    if (!digest.is_ok()) return fail(c.file, c.index, digest.status());
    if (*digest != f.chunk_sha256[c.index]) {
      fail(c.file, c.index,
           verification_failed("file '" + f.path + "' chunk " + std::to_string(c.index) + " (bytes " +
                               std::to_string(c.offset) + "-" + std::to_string(c.offset + data.size()) +
                               "): SHA-256 does not match the manifest"));
      return;
    }
    if (sink_ != nullptr) {
      Status s = sink_->write(c.file, c.offset, data);
      if (!s.is_ok()) return fail(c.file, c.index, s);
    }
    done_bytes_.fetch_add(data.size(), std::memory_order_relaxed);
    if (remaining_[c.file].fetch_sub(1) == 1) close(c.file);
  }
  void close(std::size_t file) {
    if (sink_ == nullptr) return;
    Status s = sink_->close_file(file);
    if (!s.is_ok()) fail(file, ~std::uint64_t{0}, s);
  }

  void fail(std::size_t file, std::uint64_t chunk, const Status& s) {
    std::lock_guard<std::mutex> lock(mu_);
    // Keep the earliest failure so the message does not depend on thread timing.
    if (!failed_.load() || std::make_pair(file, chunk) < std::make_pair(first_file_, first_chunk_)) {
      first_error_ = s;
      first_file_ = file;
      first_chunk_ = chunk;
    }
    failed_.store(true);
  }

  bool failed() const { return failed_.load(std::memory_order_relaxed); }
  Status first_error() {
    std::lock_guard<std::mutex> lock(mu_);
    return first_error_;
  }
  std::uint64_t done_bytes() const { return done_bytes_.load(std::memory_order_relaxed); }

 private:
  const VerifiedBundle& bundle_;
  ExtractSink* sink_;
  std::vector<std::atomic<std::uint64_t>> remaining_;
  std::atomic<bool> failed_{false};
  std::atomic<std::uint64_t> done_bytes_{0};
  std::mutex mu_;
  Status first_error_;
  std::size_t first_file_ = 0;
  std::uint64_t first_chunk_ = 0;
};

class ProgressThrottle {
 public:
  ProgressThrottle(const ProgressFn& fn, std::uint64_t total) : fn_(fn), total_(total) {}
  void maybe(std::uint64_t done) {
    if (!fn_) return;
    auto now = std::chrono::steady_clock::now();
    if (now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    fn_(done, total_);
  }
  void finish() {
    if (fn_) fn_(total_, total_);
  }

 private:
  const ProgressFn& fn_;
  std::uint64_t total_;
  std::chrono::steady_clock::time_point last_{};
};

// Streams the payload entries, handing chunks to the pool.
Status read_payload(TarReader& tar, std::span<const std::uint8_t> archive, const VerifiedBundle& vb,
                    PayloadCheck& check, TaskPool& pool, ExtractSink* sink, ProgressThrottle& progress) {
  const Manifest& m = vb.manifest;
  TarEntry e;
  for (std::size_t i = 0; i < m.files.size(); ++i) {
    const ManifestFile& f = m.files[i];
    AIRLOCK_ASSIGN_OR_RETURN(bool has, tar.next(&e));
    if (!has)
      return verification_failed("archive ends before file '" + f.path + "' (" + std::to_string(i) + " of " +
                                 std::to_string(m.files.size()) + " payload files present)");
    AIRLOCK_RETURN_IF_ERROR(require_regular_file(e));
    if (e.name != f.path)
      return verification_failed("payload entry " + std::to_string(i + 1) + " is '" + printable_name(e.name) +
                                 "', the manifest expects '" + f.path + "' (entries must follow manifest order)");
    if (e.size != f.size)
      return verification_failed("entry '" + f.path + "' is " + std::to_string(e.size) +
                                 " bytes, the manifest says " + std::to_string(f.size));
    if (sink != nullptr) AIRLOCK_RETURN_IF_ERROR(sink->open_file(i));
    check.set_chunks(i, f.chunk_sha256.size());
    // The entry's data is hashed in place; libarchive only skips it.
    Result<std::uint64_t> at = tar.data_offset();
    if (!at.is_ok()) return at.status().with_context("file '" + f.path + "'");
    if (f.size == 0) {
      if (Status s = tar.skip_data(); !s.is_ok()) return s.with_context("file '" + f.path + "'");
      check.close(i);
      continue;
    }
    const std::span<const std::uint8_t> data = archive.subspan(static_cast<std::size_t>(*at),
                                                               static_cast<std::size_t>(f.size));
    for (std::uint64_t c = 0; c < f.chunk_sha256.size(); ++c) {
      if (check.failed()) break;  // the worker's error is reported
      const std::uint64_t off = c * m.chunk_size;
      Chunk chunk{i, c, off, data.subspan(static_cast<std::size_t>(off),
                                          static_cast<std::size_t>(std::min<std::uint64_t>(m.chunk_size, f.size - off)))};
      pool.submit([&check, chunk] { check.hash(chunk); });  // blocks while the queue is full
      progress.maybe(check.done_bytes());
    }
    if (check.failed()) return Status::ok();
    Status s = tar.skip_data();
    if (!s.is_ok()) return s.with_context("file '" + f.path + "'");
  }
  AIRLOCK_ASSIGN_OR_RETURN(bool extra, tar.next(&e));
  if (extra) return verification_failed("extra entry '" + printable_name(e.name) + "' is not in the manifest");
  return Status::ok();
}

}  // namespace

Result<VerifiedBundle> check_signed_manifest(std::string manifest_bytes, std::string signature_text,
                                             const TrustStore& trust, std::int64_t now_unix) {
  AIRLOCK_ASSIGN_OR_RETURN(Signature sig, parse_signature(signature_text));
  std::vector<PublicKey> candidates = trust.keys_with_id(sig.key_id);
  if (candidates.empty())
    return verification_failed("signed by key " + sig.key_id.to_string() + ", which is not a trusted key");
  if (trust.is_revoked(sig.key_id))
    return verification_failed("signed by key " + sig.key_id.to_string() + ", which has been revoked");
  std::span<const std::uint8_t> message = as_bytes(manifest_bytes);
  std::optional<PublicKey> signer;
  Status last;
  for (const PublicKey& k : candidates) {
    last = verify_signature(k, message, sig);
    if (last.is_ok()) {
      signer = k;
      break;
    }
  }
  if (!signer) return last;
  AIRLOCK_ASSIGN_OR_RETURN(Manifest m, parse_manifest(manifest_bytes));
  if (!(m.key_id == sig.key_id))
    return verification_failed("manifest names key " + m.key_id.to_string() + " but was signed by " +
                               sig.key_id.to_string());
  if (sig.trusted_comment != expected_trusted_comment(m, manifest_bytes))
    return verification_failed("trusted comment does not describe this manifest: '" + sig.trusted_comment + "'");
  std::uint64_t need[3], have[3];
  if (!parse_semver(m.min_daemon_version, need) || !parse_semver(kVersion, have) || compare_semver(have, need) < 0)
    return verification_failed("bundle needs Airlock " + m.min_daemon_version + " or newer; this is " + kVersion);
  std::int64_t now = now_unix != 0 ? now_unix : static_cast<std::int64_t>(std::time(nullptr));
  if (m.expires_at && now >= *m.expires_at)
    return verification_failed("bundle expired at " + format_utc(*m.expires_at));
  VerifiedBundle vb;
  vb.manifest = std::move(m);
  vb.manifest_sha256 = to_hex(sha256(manifest_bytes));
  vb.manifest_bytes = std::move(manifest_bytes);
  vb.signature_text = std::move(signature_text);
  vb.signer = *signer;
  return vb;
}

Result<VerifiedBundle> verify_bundle(std::span<const std::uint8_t> archive, const TrustStore& trust,
                                     const VerifyOptions& options, ExtractSink* sink) {
  if (archive.empty()) return verification_failed("empty file: not a bundle");
  AIRLOCK_ASSIGN_OR_RETURN(std::string_view kind, compression_magic(archive));
  if (!kind.empty())
    return verification_failed(std::string(kind) + " data: bundles are plain tar and are never decompressed");
  TarReader tar(archive);
  std::string manifest_bytes, signature_text;
  AIRLOCK_RETURN_IF_ERROR(read_signed_manifest(tar, &manifest_bytes, &signature_text));
  AIRLOCK_ASSIGN_OR_RETURN(VerifiedBundle vb, check_signed_manifest(std::move(manifest_bytes),
                                                                    std::move(signature_text), trust,
                                                                    options.now_unix));
  if (sink != nullptr) AIRLOCK_RETURN_IF_ERROR(sink->begin(vb));

  ProgressThrottle progress(options.progress, vb.manifest.total_bytes());
  PayloadCheck check(vb, sink);
  Status read_status;
  Status pool_status;
  // Extracting, each hashing thread copies one chunk at a time into its
  // own buffer: the threads are held to 1 GiB of such buffers in all (a
  // bundle of 1 GiB chunks on 64 cores would otherwise need 64 GiB).
  const unsigned n_threads = sink != nullptr ? extract_threads(options.n_threads, vb.manifest.chunk_size)
                                             : options.n_threads;
  {
    TaskPool pool(n_threads);
    read_status = read_payload(tar, archive, vb, check, pool, sink, progress);
    pool_status = pool.wait();  // workers hold references into `check`, `vb` and the sink
  }
  AIRLOCK_RETURN_IF_ERROR(pool_status);
  if (check.failed()) return check.first_error();
  AIRLOCK_RETURN_IF_ERROR(read_status);
  progress.finish();
  return vb;
}

Result<VerifiedBundle> verify_bundle_file(const std::string& path, const TrustStore& trust,
                                          const VerifyOptions& options, ExtractSink* sink) {
  AIRLOCK_ASSIGN_OR_RETURN(MappedFile file, MappedFile::open(path));
  return verify_bundle(file.bytes(), trust, options, sink);
}

InspectedBundle inspect_bundle(std::span<const std::uint8_t> archive) {
  constexpr std::size_t kMaxListedEntries = 100000;
  InspectedBundle out;
  out.manifest_status = verification_failed("manifest.json not read");
  out.signature_status = verification_failed("manifest.json.minisig not read");
  if (archive.empty()) {
    out.archive_status = verification_failed("empty file: not a bundle");
    return out;
  }
  Result<std::string_view> kind = compression_magic(archive);
  if (!kind.is_ok() || !kind->empty()) {
    out.archive_status = kind.is_ok() ? verification_failed(std::string(*kind) + " data: bundles are plain tar")
                                      : kind.status();
    return out;
  }
  TarReader tar(archive);
  TarEntry e;
  while (out.entries.size() < kMaxListedEntries) {
    Result<bool> has = tar.next(&e);
    if (!has.is_ok()) {
      out.archive_status = has.status();
      break;
    }
    if (!*has) break;
    std::size_t position = out.entries.size();
    out.entries.push_back({printable_name(e.name), e.size, e.kind});
    if (position == 0 && e.name == kManifestEntry && e.kind == "file") {
      out.manifest_status = tar.read_small(&out.manifest_bytes, kMaxManifestBytes);
      if (out.manifest_status.is_ok()) {
        Result<Manifest> m = parse_manifest(out.manifest_bytes);
        out.manifest_status = m.status();
        if (m.is_ok()) out.manifest = std::move(*m);
      }
    } else if (position == 1 && e.name == kSignatureEntry && e.kind == "file") {
      std::string text;
      out.signature_status = tar.read_small(&text, kMaxSignatureBytes);
      if (out.signature_status.is_ok()) {
        Result<Signature> s = parse_signature(text);
        out.signature_status = s.status();
        if (s.is_ok()) out.signature = std::move(*s);
      }
    }
  }
  return out;
}

}  // namespace airlock::verifier
