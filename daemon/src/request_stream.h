// airlockd's own stream for the requests of a connection, plain TCP or
// TLS, in place of cpp-httplib's, so that a request's head is bounded
// before the library holds it.
//
// Why: cpp-httplib 0.11 (Debian 12's, a compiled library whose limits
// cannot be set) reads a request line or a header line whole before it
// checks its length, and takes any number of header lines: a client that
// sends a line without an end, or header after header, makes it hold all
// of it, for as long as it sends, before any of airlockd's code runs and
// without a key. Each request is read through a Stream, and a server
// subclass may supply its own (server.cpp); this one reads as the
// library's does (the same timeouts), writes with one system call where
// the library's made three (see write()), and also:
//   - counts the bytes and lines of each request's head (request line and
//     headers, up to the blank line that ends them) and fails the read
//     that would pass `max_head_bytes` or `max_header_lines`, so the
//     library never holds more (a header costs the library ~150 bytes
//     beside its text: 64 KiB of 4-byte headers would have held ~2 MiB);
//   - fails a head read once `head_timeout` has passed since the request
//     began (a client trickling its head holds the connection's thread for
//     that long at most, rather than for as long as it trickles).
// The refusal is then answered 431 or 408 by the server.
//
// Over TLS the bytes are read and written through an OpenSSL session on a
// non-blocking socket, each wait a poll() bounded as above: a client that
// trickles a TLS record a byte at a time is cut off at the head's deadline
// too (OpenSSL on a blocking socket would wait for the whole record, each
// byte restarting the socket's timeout).
//
// Thread-safety: a RequestStream is used by the one connection thread that
// made it. HeadScanner is a plain value.
#pragma once

#include <sys/time.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

#include <httplib.h>
#include <openssl/ssl.h>

namespace airlock::daemon {

// Finds the end of a request head as cpp-httplib 0.11 reads one: lines end
// at '\n'; the first is the request line; the head ends with the first
// line after it that is exactly "\r\n" (a line ending in a bare '\n' is
// skipped by the library, so it counts as a header line here).
class HeadScanner {
 public:
  // Scans n bytes: returns how many of them belong to the head (all n,
  // or fewer when the head ends inside them; 0 once it has ended).
  std::size_t feed(const char* p, std::size_t n);
  bool ended() const { return ended_; }
  std::uint64_t head_bytes() const { return bytes_; }
  // Lines after the request line, the blank one that ends the head not
  // counted (a line begun counts once its first byte came).
  std::uint64_t header_lines() const { return header_lines_; }
  // A header line ended in a bare '\n' (no '\r' before it).
  bool bare_lf() const { return bare_lf_; }

 private:
  bool ended_ = false;
  bool first_line_ = true;
  std::uint64_t line_bytes_ = 0;  // of the line being read
  bool line_is_cr_ = false;       // the line so far is "\r"
  bool last_cr_ = false;          // the byte before was '\r'
  bool bare_lf_ = false;
  std::uint64_t bytes_ = 0;
  std::uint64_t header_lines_ = 0;
};

class RequestStream final : public httplib::Stream {
 public:
  enum class Refusal { kNone, kHeadTooLarge, kTooManyHeaderLines, kHeadTimedOut };

  struct Limits {
    std::size_t max_head_bytes = 64 * 1024;
    std::size_t max_header_lines = 100;  // as Apache's LimitRequestFields
    std::chrono::milliseconds head_timeout{10000};
    timeval read_timeout{5, 0};   // per read, as the library's
    timeval write_timeout{5, 0};  // per write, as the library's
  };

  // A stream for one request on `fd` (not owned), its head starting at the
  // next byte read; makes itself current() on this thread until destroyed.
  // With `ssl` (not owned; its handshake done, see accept_tls()) the bytes
  // go through that TLS session, and fd must be non-blocking.
  // Bytes read from a connection and not taken yet. A head is read ahead
  // (the library reads one a byte at a time, a system call each), so what
  // follows it (its body, and requests a client sent without waiting for
  // the answer: pipelining) may be in here: a connection's loop keeps one
  // for all its requests, so that none of those bytes is lost between them.
  struct ReadAhead {
    char buf[4096];
    std::size_t off = 0, len = 0;
    bool empty() const { return off == len; }
    // Empty lines (CR, LF) before a request line are dropped, up to this
    // many bytes (RFC 9112, 2.2: a client may send a CRLF after a body).
    static constexpr std::size_t kMaxBlank = 4;
    // Drops up to `most` such bytes from the front; returns how many.
    std::size_t skip_blank(std::size_t most = kMaxBlank) {
      std::size_t n = 0;
      for (; n < most && off < len && (buf[off] == '\r' || buf[off] == '\n'); ++n) ++off;
      return n;
    }
  };

  RequestStream(int fd, const Limits& limits, SSL* ssl = nullptr, ReadAhead* ahead = nullptr);
  ~RequestStream() override;
  RequestStream(const RequestStream&) = delete;
  RequestStream& operator=(const RequestStream&) = delete;

  // The stream of the request this thread is reading or answering, or null.
  static const RequestStream* current();

  // Waits up to `timeout` for something to read on fd (a request, or the
  // end of the connection); retried on EINTR. The keep-alive wait between
  // requests, and each of the stream's own waits.
  static bool wait_readable(int fd, std::chrono::milliseconds timeout);
  // The same for a connection, plain (ssl null) or TLS: bytes a TLS session
  // has already taken from the socket count as something to read.
  static bool wait_readable(int fd, SSL* ssl, std::chrono::milliseconds timeout);

  // A TLS session over `fd` from `ctx`, its handshake done within the
  // head's time limit (each wait for the client at most the read timeout),
  // fd made non-blocking; null (and nothing left to free) when it fails.
  // The caller frees it with end_tls().
  static SSL* accept_tls(int fd, SSL_CTX* ctx, const Limits& limits);
  // Says close_notify when `graceful` (one try, without waiting), then
  // frees the session.
  static void end_tls(SSL* ssl, bool graceful);

  Refusal refusal() const { return refusal_; }
  const Limits& limits() const { return limits_; }
  // The server's answer to a refusal was written (or tried): by the
  // library through its error handler, which calls mark_answered().
  bool answered() const { return answered_; }
  void mark_answered() const { answered_ = true; }
  // A connection's place among those that may be ended to free their
  // thread (server.cpp's IdleConnections) while a head arrives.
  class Place {
   public:
    virtual ~Place() = default;
    // The head has arrived whole: leaves the place; false when the
    // connection was ended meanwhile.
    virtual bool leave() = 0;
    // The connection has been ended.
    virtual bool ended() = 0;
  };
  // Holds `place` (not owned; it outlives the stream) until the head has
  // arrived whole, and then leaves it (at once if it has arrived already).
  // A head that arrives whole after its connection was ended, and a head
  // read that fails after that, cut the stream off: that read and every
  // one after it fail, and the request is not handled (nor counted).
  void hold(Place* place);

  // Bytes of the request after its head that the library has read (its
  // body, as far as it read it). Empty lines skipped before a request
  // line count for neither.
  std::uint64_t body_bytes_read() const { return taken_ > head_.head_bytes() ? taken_ - head_.head_bytes() : 0; }
  bool head_ended() const { return head_.ended(); }
  // Bytes handed to the library, head and body.
  std::uint64_t bytes_taken() const { return taken_; }
  // The connection was ended while its head arrived (hold()).
  bool cut_off() const { return cut_off_; }
  // A header line of the head ended in a bare LF, which the library skips
  // (a proxy may not): the request is refused.
  bool bare_lf() const { return head_.bare_lf(); }

  // The connection was ended after this request's answer (a refusal that
  // left bytes unread): no further request may be read from it.
  bool connection_ended() const { return connection_ended_; }
  void mark_connection_ended() const { connection_ended_ = true; }

  // httplib::Stream
  bool is_readable() const override;
  bool is_writable() const override;
  ssize_t read(char* ptr, std::size_t size) override;
  // One send(). The library's stream first waited for the socket to be
  // writable and peeked whether the client had gone: its loop over a
  // streamed answer does both before each piece anyway, and a send waits
  // no longer than the write timeout (SO_SNDTIMEO, which the library sets
  // on every accepted socket). A client gone since costs one send into
  // the void, then the loop's check ends the stream as before.
  // stories260K, serve_bench --rounds 8, three rounds alternating, HTTP /
  // engine at 4 / 16 clients: 0.948-0.988 / 0.903-0.921 against
  // 0.929-0.947 / 0.897-0.905.
  // Over TLS: SSL_write, each wait for the socket up to the write timeout.
  ssize_t write(const char* ptr, std::size_t size) override;
  // Writes what the socket takes now, without waiting (a refusal's answer
  // to a client that may not read it).
  void write_now(const std::string& bytes);
  void get_remote_ip_and_port(std::string& ip, int& port) const override;
  void get_local_ip_and_port(std::string& ip, int& port) const override;
  int socket() const override { return fd_; }

 private:
  ssize_t read_head(char* ptr, std::size_t size);
  ssize_t read_body(char* ptr, std::size_t size);
  // Up to n bytes, waiting up to `wait` for the first: > 0 bytes, 0 at
  // the end of the connection, -1 on an error or when the wait ran out.
  ssize_t receive(char* buf, std::size_t n, std::chrono::milliseconds wait);

  int fd_;
  SSL* ssl_;
  Limits limits_;
  std::chrono::steady_clock::time_point head_deadline_;
  HeadScanner head_;
  Refusal refusal_ = Refusal::kNone;
  mutable bool answered_ = false;
  mutable bool connection_ended_ = false;
  Place* place_ = nullptr;
  bool cut_off_ = false;         // ended while its head arrived: every read fails
  std::uint64_t taken_ = 0;      // bytes handed to the library (head and body)
  std::size_t blank_bytes_ = 0;  // CR and LF skipped before the request line
  ReadAhead own_;     // when the caller keeps none
  ReadAhead& ahead_;  // the caller's, or own_
  const RequestStream* outer_;  // current() before this one
};

}  // namespace airlock::daemon
