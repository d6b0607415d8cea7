#include "connection.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace airlock::daemon {
namespace {

// Numeric address text and port of a socket address; false for a family
// other than IPv4/IPv6.
bool to_text(const sockaddr_storage& ss, std::string& host, int& port) {
  char buf[INET6_ADDRSTRLEN] = {};
  if (ss.ss_family == AF_INET) {
    const auto& a = reinterpret_cast<const sockaddr_in&>(ss);
    if (::inet_ntop(AF_INET, &a.sin_addr, buf, sizeof buf) == nullptr) return false;
    port = ntohs(a.sin_port);
  } else if (ss.ss_family == AF_INET6) {
    const auto& a = reinterpret_cast<const sockaddr_in6&>(ss);
    if (::inet_ntop(AF_INET6, &a.sin6_addr, buf, sizeof buf) == nullptr) return false;
    port = ntohs(a.sin6_port);
  } else {
    return false;
  }
  host = buf;
  return true;
}

}  // namespace

bool PeerSocket::peer_closed() const {
  pollfd p{};
  p.fd = fd_;
  p.events = POLLRDHUP;
  if (::poll(&p, 1, 0) <= 0) return false;
  return (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

int shut_down_reading(int local_port) {
  if (local_port <= 0) return 0;
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return 0;
  const int own = ::dirfd(dir);
  int n = 0;
  while (const dirent* e = ::readdir(dir)) {
    char* end = nullptr;
    const long parsed = std::strtol(e->d_name, &end, 10);
    if (end == e->d_name || *end != '\0' || parsed == own) continue;
    // Checked and shut down through a copy: another thread may close the
    // number meanwhile and a new socket (a link to another node) get it,
    // but the copy stays the socket that was checked.
    const int fd = ::fcntl(static_cast<int>(parsed), F_DUPFD_CLOEXEC, 0);
    if (fd < 0) continue;
    // Local address first: it fails fast (ENOTSOCK) on files and pipes.
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    std::string host;
    int port = 0;
    int type = 0, listening = 0;
    socklen_t n_type = sizeof type, n_listening = sizeof listening;
    socklen_t n_peer = sizeof ss;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) == 0 && to_text(ss, host, port) &&
        port == local_port && ::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &n_type) == 0 && type == SOCK_STREAM &&
        ::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &n_listening) == 0 && listening == 0 &&
        ::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &n_peer) == 0 &&  // connected
        ::shutdown(fd, SHUT_RD) == 0)
      ++n;
    ::close(fd);
  }
  ::closedir(dir);
  return n;
}

void PeerSocket::end_after_answer(std::chrono::milliseconds linger, std::chrono::milliseconds idle,
                                  std::uint64_t n_bytes) const {
  ::shutdown(fd_, SHUT_WR);
  const auto deadline = std::chrono::steady_clock::now() + linger;
  char dropped[64 * 1024];
  std::uint64_t n_dropped = 0;
  while (n_dropped < n_bytes) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    pollfd p{};
    p.fd = fd_;
    p.events = POLLIN;
    // Each wait is for `idle` at most: a client that sent nothing for that
    // long is not waited for any more.
    const int ready = ::poll(&p, 1, static_cast<int>(std::min(left, idle).count()));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) break;  // idle, or the time is up (or poll failed)
    const ssize_t n = ::recv(fd_, dropped, sizeof dropped, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) continue;
    if (n <= 0) break;  // the client closed (or reset) the connection
    n_dropped += static_cast<std::uint64_t>(n);
  }
  ::shutdown(fd_, SHUT_RD);
  // Bytes already queued stay readable after SHUT_RD (only later ones
  // reset the connection): drop them too, so httplib's next read sees the
  // end, not the rest of a refused body.
  while (::recv(fd_, dropped, sizeof dropped, MSG_DONTWAIT) > 0) {
  }
}

std::string SocketAddress::to_string() const {
  const std::string p = std::to_string(port);
  return host.find(':') != std::string::npos ? "[" + host + "]:" + p : host + ":" + p;
}

Result<SocketAddress> listening_tcp_address(int fd) {
  const std::string which = "descriptor " + std::to_string(fd);
  int type = 0, listening = 0;
  socklen_t len = sizeof type;
  if (::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0)
    return invalid_argument(which + " is not a socket: " + std::strerror(errno));
  len = sizeof listening;
  if (type != SOCK_STREAM || ::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0 || listening == 0)
    return invalid_argument(which + " is not a listening stream socket");
  sockaddr_storage ss{};
  len = sizeof ss;
  SocketAddress a;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0 || !to_text(ss, a.host, a.port))
    return invalid_argument(which + " is not an IPv4 or IPv6 socket");
  return a;
}

}  // namespace airlock::daemon
