#include "airlock/verifier/bundle_writer.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <memory>
#include <mutex>
#include <thread>

#include "airlock/verifier/gguf_facts.h"
#include "airlock/verifier/mapped_file.h"
#include "guarded_read.h"
#include "task_pool.h"

namespace airlock::verifier {
namespace {

constexpr std::size_t kWriteBlock = 1 << 20;

// Partial outputs are removed when the process is interrupted while writing
// them (Ctrl-C during a multi-GB write to a transfer medium would otherwise
// leave a .partial file there). A fixed table, so the handler needs no
// allocation or lock: it unlinks what is registered, restores the signal's
// previous disposition and raises the signal again. Signals that were
// ignored when the first output opened (nohup) are left alone.
constexpr int kMaxPartials = 16;
char g_partial_paths[kMaxPartials][PATH_MAX];
std::atomic<bool> g_partial_used[kMaxPartials];     // the path is complete; the handler may read it
std::atomic<bool> g_partial_claimed[kMaxPartials];  // the slot is taken
constexpr int kCleanupSignals[] = {SIGINT, SIGTERM, SIGHUP};
struct sigaction g_previous_action[3];

void remove_partials_and_reraise(int sig) {
  const int saved_errno = errno;
  for (int i = 0; i < kMaxPartials; ++i)
    if (g_partial_used[i].load()) ::unlink(g_partial_paths[i]);
  for (int k = 0; k < 3; ++k)
    if (kCleanupSignals[k] == sig) ::sigaction(sig, &g_previous_action[k], nullptr);
  ::raise(sig);  // delivered when the handler returns, to the previous disposition
  errno = saved_errno;
}

void install_cleanup_handlers_once() {
  static std::once_flag once;
  std::call_once(once, [] {
    for (int k = 0; k < 3; ++k) {
      struct sigaction current {};
      if (::sigaction(kCleanupSignals[k], nullptr, &current) != 0 || current.sa_handler == SIG_IGN) continue;
      struct sigaction sa {};
      sa.sa_handler = remove_partials_and_reraise;
      sigemptyset(&sa.sa_mask);
      ::sigaction(kCleanupSignals[k], &sa, &g_previous_action[k]);
    }
  });
}

// A slot in the table for `path`, or -1 (table full or path too long: the
// output is then just not cleaned up on a signal).
int register_partial(const std::string& path) {
  if (path.size() >= PATH_MAX) return -1;
  for (int i = 0; i < kMaxPartials; ++i) {
    bool expected = false;
    if (!g_partial_claimed[i].compare_exchange_strong(expected, true)) continue;
    std::memcpy(g_partial_paths[i], path.c_str(), path.size() + 1);
    g_partial_used[i].store(true);
    return i;
  }
  return -1;
}

// Test hook: AIRLOCK_TEST_CREATE_PAUSE_MS sleeps once the partial output
// exists, so a test can interrupt the write. Only with AIRLOCK_TEST_HOOKS.
void test_pause_after_open() {
#if defined(AIRLOCK_TEST_HOOKS)
  if (const char* v = std::getenv("AIRLOCK_TEST_CREATE_PAUSE_MS"))
    std::this_thread::sleep_for(std::chrono::milliseconds(std::strtoul(v, nullptr, 10)));
#endif
}

// Owns the temporary output until it is renamed into place.
class TempOutput {
 public:
  ~TempOutput() {
    if (fd_ >= 0) ::close(fd_);
    if (!path_.empty()) ::unlink(path_.c_str());
    release();
  }
  Status open(const std::string& final_path) {
    path_ = final_path + ".partial-XXXXXX";
    // The cleanup signals wait while the file is created and registered, so
    // none can leave it unregistered.
    install_cleanup_handlers_once();
    sigset_t cleanup, old;
    sigemptyset(&cleanup);
    for (int sig : kCleanupSignals) sigaddset(&cleanup, sig);
    ::pthread_sigmask(SIG_BLOCK, &cleanup, &old);
    fd_ = ::mkostemp(path_.data(), O_CLOEXEC);
    const int e = errno;
    if (fd_ >= 0) slot_ = register_partial(path_);
    ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
    if (fd_ < 0) {
      path_.clear();
      return io_error("cannot create a temporary file beside " + final_path, e);
    }
    ::fchmod(fd_, 0644);
    test_pause_after_open();
    return Status::ok();
  }
  int fd() const { return fd_; }
  Status commit(const std::string& final_path) {
    if (::fsync(fd_) != 0) return io_error("fsync " + path_, errno);
    if (::close(fd_) != 0) {
      fd_ = -1;
      return io_error("close " + path_, errno);
    }
    fd_ = -1;
    // Never replaces an existing file, unlike rename(). RENAME_NOREPLACE
    // works on the media bundles travel on (vfat, exFAT), where link() fails
    // with EPERM; link() is the fallback for file systems without it.
    const bool renamed = ::renameat2(AT_FDCWD, path_.c_str(), AT_FDCWD, final_path.c_str(), RENAME_NOREPLACE) == 0;
    if (!renamed && errno != EINVAL && errno != ENOSYS && errno != ENOTSUP) {
      if (errno == EEXIST) return already_exists(final_path + " already exists");
      return io_error("cannot create " + final_path, errno);
    }
    if (!renamed) {
      if (::link(path_.c_str(), final_path.c_str()) != 0) {
        if (errno == EEXIST) return already_exists(final_path + " already exists");
        return io_error("cannot create " + final_path, errno);
      }
      ::unlink(path_.c_str());
    }
    release();
    path_.clear();
    const std::size_t slash = final_path.rfind('/');
    const std::string dir = slash == std::string::npos ? std::string(".")
                            : slash == 0                ? std::string("/")
                                                        : std::string(final_path.data(), slash);
    int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      ::fsync(dfd);
      ::close(dfd);
    }
    return Status::ok();
  }

 private:
  void release() {
    if (slot_ < 0) return;
    g_partial_used[slot_].store(false);  // first: the handler no longer reads the path
    g_partial_claimed[slot_].store(false);
    slot_ = -1;
  }

  std::string path_;
  int fd_ = -1;
  int slot_ = -1;
};

class TarWriter {
 public:
  explicit TarWriter(int fd, std::int64_t mtime) : mtime_(mtime) {
    ar_ = archive_write_new();
    archive_write_set_format_pax_restricted(ar_);  // ustar unless a field needs pax
    archive_write_set_bytes_per_block(ar_, 0);      // pass writes straight through
    if (archive_write_open_fd(ar_, fd) != ARCHIVE_OK) error_ = message();
  }
  ~TarWriter() { archive_write_free(ar_); }

  Status add(const std::string& name, std::span<const std::uint8_t> data,
             const std::function<void(std::size_t)>& on_bytes = {}) {
    if (!error_.empty()) return io_error("tar: " + error_, EIO);
    archive_entry* e = archive_entry_new();
    archive_entry_set_pathname(e, name.c_str());
    archive_entry_set_size(e, static_cast<la_int64_t>(data.size()));
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0644);
    archive_entry_set_mtime(e, mtime_, 0);
    archive_entry_set_uid(e, 0);
    archive_entry_set_gid(e, 0);
    int rc = archive_write_header(ar_, e);
    archive_entry_free(e);
    if (rc != ARCHIVE_OK) return io_error("tar header for " + name + ": " + message(), EIO);
    for (std::size_t off = 0; off < data.size(); off += kWriteBlock) {
      std::size_t n = std::min(kWriteBlock, data.size() - off);
      la_ssize_t w = archive_write_data(ar_, data.data() + off, n);
      if (w < 0 || static_cast<std::size_t>(w) != n) return io_error("writing " + name + ": " + message(), EIO);
      if (on_bytes) on_bytes(n);
    }
    return Status::ok();
  }

  Status close() {
    if (archive_write_close(ar_) != ARCHIVE_OK) return io_error("tar: " + message(), EIO);
    return Status::ok();
  }

 private:
  std::string message() {
    const char* m = archive_error_string(ar_);
    return m ? m : "unknown error";
  }
  ::archive* ar_;
  std::int64_t mtime_;
  std::string error_;
};

// Refuses a bundle whose manifest would be over kMaxManifestBytes, naming
// the chunk size that would fit where one does. `m` holds no chunk hashes
// or model facts yet: its size is exact but for the facts, which only add to
// it, so what this refuses would certainly be refused after hashing.
Status check_manifest_fits(const Manifest& m) {
  const std::uint64_t n_bytes = serialized_manifest_size(m);
  if (n_bytes <= kMaxManifestBytes) return Status::ok();
  std::uint64_t n_chunks = 0;
  for (const ManifestFile& f : m.files) n_chunks += chunk_count(f.size, m.chunk_size);
  std::string remedy = "split the files over several bundles";
  Manifest larger = m;
  for (larger.chunk_size = m.chunk_size * 2; larger.chunk_size <= kMaxChunkSize; larger.chunk_size *= 2)
    if (serialized_manifest_size(larger) <= kMaxManifestBytes) {
      remedy = "a chunk size of " + std::to_string(larger.chunk_size) + " bytes or more would fit";
      break;
    }
  return invalid_argument("the manifest would be at least " + std::to_string(n_bytes) + " bytes (" +
                          std::to_string(n_chunks) + " chunk hashes at a chunk size of " +
                          std::to_string(m.chunk_size) + " bytes), over the 16 MiB a bundle's manifest may have: " +
                          remedy + ". Nothing was read or written");
}

std::span<const std::uint8_t> as_bytes(const std::string& s) {
  return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

}  // namespace

Result<VerifiedBundle> create_bundle(const std::vector<BundleInput>& inputs, const SecretKey& key,
                                     const CreateOptions& options, const std::string& out_path) {
  if (inputs.empty()) return invalid_argument("a bundle needs at least one file");
  Manifest m;
  m.name = options.name;
  m.version = options.version;
  m.created_at = options.created_at != 0 ? options.created_at : static_cast<std::int64_t>(std::time(nullptr));
  m.expires_at = options.expires_at;
  m.key_id = key.id;
  m.min_daemon_version = options.min_daemon_version;
  m.chunk_size = options.chunk_size;

  std::vector<MappedFile> sources;
  for (const BundleInput& in : inputs) {
    Status p = validate_bundle_path(in.bundle_path);
    if (!p.is_ok()) return invalid_argument(p.message());
    AIRLOCK_ASSIGN_OR_RETURN(MappedFile mf, MappedFile::open(in.source_path));
    ManifestFile f;
    f.path = in.bundle_path;
    f.role = in.role;
    f.size = mf.bytes().size();
    m.files.push_back(std::move(f));
    sources.push_back(std::move(mf));
  }
  // Everything but the hashes and model facts is checked before a byte of
  // the inputs is read, the manifest's size included: at a small chunk size
  // a large input needs more chunk hashes than 16 MiB holds, and finding
  // that out after hours of hashing and writing wastes them.
  Status valid = validate_manifest_unhashed(m);
  if (!valid.is_ok()) return invalid_argument(valid.message());
  AIRLOCK_RETURN_IF_ERROR(check_manifest_fits(m));
  for (std::size_t i = 0; i < m.files.size(); ++i) {
    ManifestFile& f = m.files[i];
    const std::span<const std::uint8_t> bytes = sources[i].bytes();
    const std::string& source = inputs[i].source_path;
    bool model_role = f.role == FileRole::kLlm || f.role == FileRole::kEmbedding || f.role == FileRole::kReranker;
    std::uint8_t magic[4] = {};
    const std::size_t n_magic = std::min<std::size_t>(4, bytes.size());
    if (model_role && !copy_guarded(magic, bytes.data(), n_magic)) return file_shrank(source);
    if (model_role && looks_like_gguf(std::span<const std::uint8_t>(magic, n_magic))) {
      Result<ModelFacts> facts = read_gguf_facts_mapped(bytes, source);
      if (facts.status().code() == StatusCode::kIoError) return facts.status();
      if (!facts.is_ok()) return invalid_argument(source + ": " + facts.status().message());
      f.model = *facts;
    }
  }
  // The facts too, before spending time on the hashes.
  for (ManifestFile& f : m.files) f.chunk_sha256.resize(chunk_count(f.size, m.chunk_size));
  valid = validate_manifest(m);
  if (!valid.is_ok()) return invalid_argument(valid.message());

  const std::uint64_t total = 2 * m.total_bytes();
  std::atomic<std::uint64_t> hashed{0};
  auto last_report = std::chrono::steady_clock::now();
  auto report = [&](std::uint64_t done, bool force) {
    if (!options.progress) return;
    auto now = std::chrono::steady_clock::now();
    if (!force && now - last_report < std::chrono::milliseconds(100)) return;
    last_report = now;
    options.progress(done, total);
  };
  // A source file that shrinks while it is hashed (see guarded_read.h).
  struct FirstError {
    std::mutex mu;
    Status status;
    void record(const Status& s) {
      std::lock_guard<std::mutex> lock(mu);
      if (status.is_ok()) status = s;
    }
    Status first() {
      std::lock_guard<std::mutex> lock(mu);
      return status;
    }
  } shrank;
  {
    TaskPool pool(options.n_threads);
    for (std::size_t i = 0; i < m.files.size(); ++i) {
      ManifestFile& f = m.files[i];
      std::span<const std::uint8_t> data = sources[i].bytes();
      // The whole-file hash is inherently serial: start it first so it runs
      // beside the chunk hashes instead of after them.
      const std::string& source = inputs[i].source_path;
      pool.submit([&f, &shrank, &source, data] {
        Result<Sha256Digest> d = sha256_guarded(data, source);
        if (d.is_ok()) f.sha256 = *d;
        else shrank.record(d.status());
      });
      for (std::uint64_t c = 0; c < f.chunk_sha256.size(); ++c) {
        std::uint64_t off = c * m.chunk_size;
        std::span<const std::uint8_t> piece = data.subspan(off, std::min<std::uint64_t>(m.chunk_size, f.size - off));
        pool.submit([&f, &hashed, &shrank, &source, piece, c] {
          Result<Sha256Digest> d = sha256_guarded(piece, source);
          if (d.is_ok()) f.chunk_sha256[c] = *d;
          else shrank.record(d.status());
          hashed.fetch_add(piece.size(), std::memory_order_relaxed);
        });
        report(hashed.load(), false);
      }
    }
    AIRLOCK_RETURN_IF_ERROR(pool.wait());
  }
  AIRLOCK_RETURN_IF_ERROR(shrank.first());

  VerifiedBundle vb;
  vb.manifest_bytes = serialize_manifest(m);
  // The authority on the limit (check_manifest_fits() did not count the
  // model facts); readers refuse a larger manifest.
  if (vb.manifest_bytes.size() > kMaxManifestBytes)
    return invalid_argument("the manifest is " + std::to_string(vb.manifest_bytes.size()) +
                            " bytes, over the 16 MiB a bundle's manifest may have");
  vb.signature_text = sign_message(key, as_bytes(vb.manifest_bytes), expected_trusted_comment(m, vb.manifest_bytes),
                                   "airlock bundle " + m.name + " " + std::to_string(m.version) +
                                       " signed with key " + key.id.to_string());
  vb.manifest_sha256 = to_hex(sha256(vb.manifest_bytes));
  vb.signer = key.public_key();

  struct stat st {};
  if (::stat(out_path.c_str(), &st) == 0) return already_exists(out_path + " already exists");
  TempOutput out;
  AIRLOCK_RETURN_IF_ERROR(out.open(out_path));
  TarWriter tar(out.fd(), m.created_at);
  AIRLOCK_RETURN_IF_ERROR(tar.add(std::string(kManifestEntry), as_bytes(vb.manifest_bytes)));
  AIRLOCK_RETURN_IF_ERROR(tar.add(std::string(kSignatureEntry), as_bytes(vb.signature_text)));
  std::uint64_t written = 0;
  for (std::size_t i = 0; i < m.files.size(); ++i) {
    AIRLOCK_RETURN_IF_ERROR(tar.add(m.files[i].path, sources[i].bytes(), [&](std::size_t n) {
      written += n;
      report(m.total_bytes() + written, false);
    }));
  }
  AIRLOCK_RETURN_IF_ERROR(tar.close());
  AIRLOCK_RETURN_IF_ERROR(out.commit(out_path));
  report(total, true);
  vb.manifest = std::move(m);
  return vb;
}

}  // namespace airlock::verifier
