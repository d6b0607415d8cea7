// Socket-level facts about airlockd's own connections, without the HTTP
// library: the accepted socket that carries a request (to notice a client
// that hangs up while its non-streamed answer is computed, and to end a
// connection after a refusal), every accepted connection (to end them when
// stopping), and checks of a listening socket handed over by systemd.
//
// How a handler knows its socket: cpp-httplib 0.11 (Debian 12) does not
// give a handler its connection, and a non-streamed answer writes nothing
// until it is whole, so a failed write cannot reveal the hang-up as it does
// for a stream. airlockd reads each request through its own stream on the
// thread that holds the accepted socket, and the handler runs on that
// thread inside the stream's life (RequestStream::current(), whose socket()
// is the connection's: server.cpp's this_connection()). The socket stays
// open until the connection's loop ends, after the handler has returned.
//
// Nothing here opens a connection or resolves a name: addresses are
// numeric (inet_pton/inet_ntop) and only existing descriptors are examined.
//
// Thread-safety: the functions are reentrant; a PeerSocket is used by the
// one handler thread that got it.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "airlock/common/status.h"

namespace airlock::daemon {

class PeerSocket {
 public:

  // True once the client has closed or reset its side of the connection.
  // Never blocks and never reads: a pipelined next request stays queued.
  // A client that only shuts down its sending side (half-close) after the
  // request counts as gone too: without writing, the two cannot be told
  // apart (nginx treats them alike by default).
  bool peer_closed() const;

  // Ends the connection once an answer has been written to it while the
  // client may still be sending (the body of a refused request), without
  // taking what it sends for anything:
  //   1. shuts down the sending side: the client reads the answer, then
  //      the end of the connection, at once;
  //   2. reads and drops what the client still sends (a lingering close,
  //      as nginx and Apache do: a client still sending its body is not
  //      reset before it could read the answer), until the first of: the
  //      client closes; `n_bytes` have been dropped (the rest of the body
  //      it announced); nothing arrived for `idle` (a client that sends
  //      nothing more holds no thread for it); `linger` has passed in all.
  //      Nothing is kept (a fixed buffer on the stack);
  //   3. shuts down the receiving side: a later read of the socket sees
  //      the end of the connection, and bytes the client sends after that
  //      reset it (Linux sends RST for data that arrives after both sides
  //      were shut down).
  // Blocks for up to `linger`. The descriptor stays open (its owner, the
  // HTTP library, closes it).
  void end_after_answer(std::chrono::milliseconds linger, std::chrono::milliseconds idle, std::uint64_t n_bytes) const;

  int fd() const { return fd_; }

  // The connection on descriptor `fd`, known to its caller (a connection
  // thread that holds the accepted socket).
  static PeerSocket of(int fd) { return PeerSocket(fd); }

 private:
  explicit PeerSocket(int fd) : fd_(fd) {}
  int fd_;  // not owned: the HTTP library closes it after the handler returns
};

// A numeric socket address.
struct SocketAddress {
  std::string host;  // "127.0.0.1", "::1"
  int port = 0;
  std::string to_string() const;  // "127.0.0.1:8080", "[::1]:8080"
};

// Shuts down the receiving side of every accepted TCP connection of this
// process whose local port is `local_port` (connected stream sockets; the
// listening socket itself and every other socket are left alone); returns
// how many. A thread blocked reading such a connection, or waiting for its
// next request, then sees the end of the connection at once; writing is
// not affected, so an answer being written is still written whole. Use it
// when stopping, after the listening socket no longer accepts: a
// connection accepted during the scan may be missed (call it again).
// Scans /proc/self/fd: a few system calls per open descriptor.
int shut_down_reading(int local_port);

// The address a socket is bound to, or an error for a descriptor that is not
// an IPv4/IPv6 stream socket listening for connections (what systemd must
// hand airlockd through socket activation).
Result<SocketAddress> listening_tcp_address(int fd);

}  // namespace airlock::daemon
