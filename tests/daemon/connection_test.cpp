// The socket probes behind non-streamed hang-up detection and socket
// activation, on real loopback sockets.
#include "connection.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <string>
#include <thread>

namespace airlock::daemon {
namespace {

struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }
  void reset() {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
};

// A listening socket on 127.0.0.1 with an ephemeral port.
int listener(int type = SOCK_STREAM, bool listen = true) {
  const int fd = ::socket(AF_INET, type | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  if (listen) {
    EXPECT_EQ(::listen(fd, 4), 0);
  }
  return fd;
}

int port_of(int fd, bool peer = false) {
  sockaddr_in a{};
  socklen_t len = sizeof a;
  if (peer) ::getpeername(fd, reinterpret_cast<sockaddr*>(&a), &len);
  else ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  return ntohs(a.sin_port);
}

// A connected pair: client end and the server's accepted end.
struct Connection {
  Fd listen{listener()};
  Fd client{::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)};
  Fd accepted{-1};
  Connection() {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<std::uint16_t>(port_of(listen.fd)));
    EXPECT_EQ(::connect(client.fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    accepted.fd = ::accept(listen.fd, nullptr, nullptr);
    EXPECT_GE(accepted.fd, 0);
  }
  PeerSocket peer() const { return PeerSocket::of(accepted.fd); }
};

TEST(PeerSocket, SeesTheClientHangUpButNotItsData) {
  Connection c;
  const std::optional<PeerSocket> p = c.peer();
  EXPECT_FALSE(p->peer_closed());
  ASSERT_EQ(::write(c.client.fd, "GET / HTTP/1.1\r\n\r\n", 18), 18);  // a pipelined request is not a hang-up
  EXPECT_FALSE(p->peer_closed());
  char buf[32];
  EXPECT_EQ(::recv(c.accepted.fd, buf, sizeof buf, MSG_PEEK), 18);  // and it stays unread
  c.client.reset();
  EXPECT_TRUE(p->peer_closed());
}

TEST(PeerSocket, SeesAReset) {
  Connection c;
  const std::optional<PeerSocket> p = c.peer();
  linger l{1, 0};  // close with RST
  ASSERT_EQ(::setsockopt(c.client.fd, SOL_SOCKET, SO_LINGER, &l, sizeof l), 0);
  c.client.reset();
  EXPECT_TRUE(p->peer_closed());
}

// After a refusal: the client reads the answer and then the end of the
// connection; the body it sent is dropped, not left for the next read of
// the socket (httplib would take it for requests); once the linger is over,
// more bytes from the client reset the connection.
TEST(PeerSocket, EndAfterAnswerDropsTheBodyAndEndsTheConnection) {
  Connection c;
  const std::optional<PeerSocket> p = c.peer();
  const std::string body(256 * 1024, 'B');
  ASSERT_EQ(::send(c.client.fd, body.data(), body.size(), MSG_NOSIGNAL), static_cast<ssize_t>(body.size()));
  ASSERT_EQ(::write(c.accepted.fd, "ANSWER", 6), 6);
  const auto start = std::chrono::steady_clock::now();
  // The client neither closes nor sends: the whole linger (shorter than its idle wait).
  p->end_after_answer(std::chrono::milliseconds(200), std::chrono::seconds(1), UINT64_MAX);
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(150));
  char buf[64];
  EXPECT_EQ(::recv(c.accepted.fd, buf, sizeof buf, MSG_DONTWAIT), 0);  // dropped, and the end
  std::string got;
  for (ssize_t n; (n = ::recv(c.client.fd, buf, sizeof buf, MSG_DONTWAIT)) > 0;) got.append(buf, static_cast<std::size_t>(n));
  EXPECT_EQ(got, "ANSWER");
  EXPECT_EQ(::recv(c.client.fd, buf, sizeof buf, MSG_DONTWAIT), 0);  // then the end of the connection
  bool reset = false;
  for (int i = 0; i < 20 && !reset; ++i) {
    reset = ::send(c.client.fd, "more", 4, MSG_NOSIGNAL) < 0 && (errno == EPIPE || errno == ECONNRESET);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(reset);
}

// The linger ends as soon as the client closes, and what the client sends
// during it is taken and dropped.
TEST(PeerSocket, EndAfterAnswerLingersOnlyWhileTheClientStays) {
  Connection c;
  const std::optional<PeerSocket> p = c.peer();
  std::thread client([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    const std::string more(1 << 20, 'B');
    EXPECT_EQ(::send(c.client.fd, more.data(), more.size(), MSG_NOSIGNAL), static_cast<ssize_t>(more.size()));
    c.client.reset();
  });
  const auto start = std::chrono::steady_clock::now();
  p->end_after_answer(std::chrono::seconds(10), std::chrono::seconds(10), UINT64_MAX);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  client.join();
  char buf[64];
  EXPECT_LE(::recv(c.accepted.fd, buf, sizeof buf, MSG_DONTWAIT), 0);
}

// A client that stays connected but sends nothing more holds the linger
// (and the server's thread) only for the idle wait, not the whole linger;
// more bytes from it then reset the connection.
TEST(PeerSocket, EndAfterAnswerStopsWhenTheClientFallsSilent) {
  Connection c;
  const std::optional<PeerSocket> p = c.peer();
  ASSERT_EQ(::send(c.client.fd, "BODY", 4, MSG_NOSIGNAL), 4);
  const auto start = std::chrono::steady_clock::now();
  p->end_after_answer(std::chrono::seconds(60), std::chrono::milliseconds(300), UINT64_MAX);
  const auto took = std::chrono::steady_clock::now() - start;
  EXPECT_GE(took, std::chrono::milliseconds(250));
  EXPECT_LT(took, std::chrono::seconds(5));
  bool reset = false;
  for (int i = 0; i < 20 && !reset; ++i) {
    reset = ::send(c.client.fd, "more", 4, MSG_NOSIGNAL) < 0 && (errno == EPIPE || errno == ECONNRESET);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(reset);
}

// The linger ends once the announced rest of the body has been dropped,
// without waiting for the client to close or to fall silent.
TEST(PeerSocket, EndAfterAnswerStopsOnceTheAnnouncedBodyIsDropped) {
  Connection c;
  const std::optional<PeerSocket> p = c.peer();
  const std::size_t n = 300 * 1024;
  std::thread client([&] {
    const std::string body(n, 'B');
    EXPECT_EQ(::send(c.client.fd, body.data(), body.size(), MSG_NOSIGNAL), static_cast<ssize_t>(body.size()));
  });
  const auto start = std::chrono::steady_clock::now();
  p->end_after_answer(std::chrono::seconds(60), std::chrono::seconds(30), n);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
  client.join();
  char buf[64];
  EXPECT_EQ(::recv(c.accepted.fd, buf, sizeof buf, MSG_DONTWAIT), 0);  // all of it dropped, then the end
}

// Stopping: the accepted connections of the served port stop reading (a
// thread waiting on one for its next request wakes up to its end) and can
// still write; the listening socket, the client ends and another port's
// connections are left alone.
TEST(ShutDownReading, EndsReadingOnTheAcceptedConnectionsOfOnePort) {
  Connection c;
  Connection other;
  char buf[8];
  EXPECT_EQ(::recv(c.accepted.fd, buf, sizeof buf, MSG_DONTWAIT), -1);  // idle: nothing to read yet
  EXPECT_EQ(shut_down_reading(port_of(c.listen.fd)), 1);
  EXPECT_EQ(::recv(c.accepted.fd, buf, sizeof buf, MSG_DONTWAIT), 0);  // the end, at once
  EXPECT_EQ(::recv(other.accepted.fd, buf, sizeof buf, MSG_DONTWAIT), -1);
  EXPECT_EQ(errno, EAGAIN);
  EXPECT_EQ(::recv(c.client.fd, buf, sizeof buf, MSG_DONTWAIT), -1);  // the client end: its peer has the port
  EXPECT_EQ(errno, EAGAIN);
  ASSERT_EQ(::write(c.accepted.fd, "answer", 6), 6);  // an answer is still written
  EXPECT_EQ(::recv(c.client.fd, buf, sizeof buf, 0), 6);
  // The listening socket still accepts.
  Fd late{::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)};
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<std::uint16_t>(port_of(c.listen.fd)));
  ASSERT_EQ(::connect(late.fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  Fd accepted{::accept(c.listen.fd, nullptr, nullptr)};
  EXPECT_GE(accepted.fd, 0);
  EXPECT_EQ(shut_down_reading(0), 0);
}

TEST(ListeningTcpAddress, AcceptsAListeningTcpSocket) {
  Fd l{listener()};
  Result<SocketAddress> a = listening_tcp_address(l.fd);
  ASSERT_TRUE(a.is_ok()) << a.status().to_string();
  EXPECT_EQ(a->host, "127.0.0.1");
  EXPECT_EQ(a->port, port_of(l.fd));
  EXPECT_EQ(a->to_string(), "127.0.0.1:" + std::to_string(a->port));
  EXPECT_EQ((SocketAddress{"::1", 8080}).to_string(), "[::1]:8080");
}

TEST(ListeningTcpAddress, RefusesWhatSystemdMustNotPass) {
  Fd bound{listener(SOCK_STREAM, false)};  // bound, not listening
  EXPECT_FALSE(listening_tcp_address(bound.fd).is_ok());
  Fd udp{listener(SOCK_DGRAM, false)};
  EXPECT_FALSE(listening_tcp_address(udp.fd).is_ok());
  Connection c;  // a connected socket
  EXPECT_FALSE(listening_tcp_address(c.accepted.fd).is_ok());
  int unix_pair[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, unix_pair), 0);
  EXPECT_FALSE(listening_tcp_address(unix_pair[0]).is_ok());
  ::close(unix_pair[0]);
  ::close(unix_pair[1]);
  Fd file{::open("/dev/null", O_RDONLY | O_CLOEXEC)};
  Result<SocketAddress> r = listening_tcp_address(file.fd);
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("not a socket"), std::string::npos) << r.status().message();
  EXPECT_FALSE(listening_tcp_address(-1).is_ok());
}

}  // namespace
}  // namespace airlock::daemon
