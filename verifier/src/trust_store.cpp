#include "airlock/verifier/trust_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>

namespace airlock::verifier {
namespace {
constexpr std::size_t kMaxKeyFileBytes = 4096;
constexpr std::size_t kMaxRevocationBytes = 1 << 20;
}  // namespace

Result<std::string> read_small_file(const std::string& path, std::size_t max_bytes) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return not_found(path + ": no such file");
    return io_error(path, errno);
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return invalid_argument(path + ": not a regular file");
  }
  if (static_cast<std::uint64_t>(st.st_size) > max_bytes) {
    ::close(fd);
    return invalid_argument(path + ": larger than " + std::to_string(max_bytes) + " bytes");
  }
  std::string out(static_cast<std::size_t>(st.st_size), '\0');
  std::size_t done = 0;
  while (done < out.size()) {
    ssize_t n = ::read(fd, out.data() + done, out.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int e = errno;
      ::close(fd);
      return n == 0 ? io_error(path + ": file shrank while reading", EIO) : io_error(path, e);
    }
    done += static_cast<std::size_t>(n);
  }
  ::close(fd);
  return out;
}

Result<std::vector<KeyId>> parse_revocation_list(std::string_view text, const std::string& source) {
  std::vector<KeyId> ids;
  std::size_t line_no = 0;
  while (!text.empty()) {
    ++line_no;
    std::size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    if (std::size_t hash = line.find('#'); hash != std::string_view::npos) line = line.substr(0, hash);
    while (!line.empty() && std::isspace(static_cast<unsigned char>(line.back()))) line.remove_suffix(1);
    while (!line.empty() && std::isspace(static_cast<unsigned char>(line.front()))) line.remove_prefix(1);
    if (line.empty()) continue;
    KeyId id;
    if (!KeyId::parse(line, &id))
      return invalid_argument(source + ":" + std::to_string(line_no) + ": expected a 16-hex-digit key id");
    ids.push_back(id);
  }
  return ids;
}

Result<TrustStore> TrustStore::load(const std::string& path) {
  std::error_code ec;
  auto status = std::filesystem::status(path, ec);
  if (ec || !std::filesystem::exists(status)) return not_found(path + ": no such file or directory");
  TrustStore store;
  auto add_key_file = [&](const std::string& file) -> Status {
    AIRLOCK_ASSIGN_OR_RETURN(std::string text, read_small_file(file, kMaxKeyFileBytes));
    Result<PublicKey> key = parse_public_key(text);
    if (!key.is_ok()) return invalid_argument(file + ": " + key.status().message());
    store.add_key(*key);
    return Status::ok();
  };
  if (std::filesystem::is_directory(status)) {
    std::vector<std::string> files;
    // increment(ec), not operator++: a directory that fails while being
    // read (removed, I/O error) must give an error, not an exception.
    std::filesystem::directory_iterator it(path, ec);
    for (; !ec && it != std::filesystem::directory_iterator(); it.increment(ec))
      if (it->path().extension() == ".pub") files.push_back(it->path().string());
    if (ec) return io_error(path, ec.value());
    std::sort(files.begin(), files.end());
    for (const std::string& f : files) AIRLOCK_RETURN_IF_ERROR(add_key_file(f));
    std::string revoked_path = path + "/revoked";
    Result<std::string> revoked = read_small_file(revoked_path, kMaxRevocationBytes);
    if (revoked.is_ok()) {
      AIRLOCK_ASSIGN_OR_RETURN(std::vector<KeyId> ids, parse_revocation_list(*revoked, revoked_path));
      for (const KeyId& id : ids) store.revoke(id);
    } else if (revoked.status().code() != StatusCode::kNotFound) {
      return revoked.status();
    } else if (struct stat st; ::lstat(revoked_path.c_str(), &st) == 0) {
      // A link to nothing is not an empty list: fail closed.
      return io_error(revoked_path + ": a link to a file that does not exist; a revocation list that cannot be read "
                      "is not taken as empty",
                      ENOENT);
    }
  } else {
    AIRLOCK_RETURN_IF_ERROR(add_key_file(path));
  }
  if (store.n_keys() == 0) return invalid_argument(path + ": no trusted public keys (*.pub) found");
  return store;
}

std::vector<PublicKey> TrustStore::keys_with_id(const KeyId& id) const {
  std::vector<PublicKey> out;
  for (const PublicKey& k : keys_)
    if (k.id == id) out.push_back(k);
  return out;
}

bool TrustStore::is_revoked(const KeyId& id) const {
  return std::find(revoked_.begin(), revoked_.end(), id) != revoked_.end();
}

}  // namespace airlock::verifier
