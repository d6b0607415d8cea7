// airlockd's own stream for plain-TCP connections, in place of
// cpp-httplib's, so that a request's head is bounded before the library
// holds it.
//
// Why: cpp-httplib 0.11 (Debian 12's, a compiled library whose limits
// cannot be set) reads a request line or a header line whole before it
// checks its length, and takes any number of header lines: a client that
// sends a line without an end, or header after header, makes it hold all
// of it, for as long as it sends, before any of airlockd's code runs and
// without a key. Each request is read through a Stream, and a server
// subclass may supply its own (server.cpp); this one reads as the
// library's does (the same system calls and timeouts), writes with one
// system call where the library's made three (see write()), and also:
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
// Thread-safety: a PlainStream is used by the one connection thread that
// made it. HeadScanner is a plain value.
#pragma once

#include <sys/time.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

#include <httplib.h>

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

 private:
  bool ended_ = false;
  bool first_line_ = true;
  std::uint64_t line_bytes_ = 0;  // of the line being read
  bool line_is_cr_ = false;       // the line so far is "\r"
  std::uint64_t bytes_ = 0;
  std::uint64_t header_lines_ = 0;
};

class PlainStream final : public httplib::Stream {
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
  PlainStream(int fd, const Limits& limits);
  ~PlainStream() override;
  PlainStream(const PlainStream&) = delete;
  PlainStream& operator=(const PlainStream&) = delete;

  // The stream of the request this thread is reading or answering, or null.
  static const PlainStream* current();

  // Waits up to `timeout` for something to read on fd (a request, or the
  // end of the connection); retried on EINTR. The keep-alive wait between
  // requests, and each of the stream's own waits.
  static bool wait_readable(int fd, std::chrono::milliseconds timeout);

  Refusal refusal() const { return refusal_; }
  const Limits& limits() const { return limits_; }
  // The server's answer to a refusal was written (or tried): by the
  // library through its error handler, which calls mark_answered().
  bool answered() const { return answered_; }
  void mark_answered() const { answered_ = true; }

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
  ssize_t write(const char* ptr, std::size_t size) override;
  void get_remote_ip_and_port(std::string& ip, int& port) const override;
  void get_local_ip_and_port(std::string& ip, int& port) const override;
  int socket() const override { return fd_; }

 private:
  ssize_t read_head(char* ptr, std::size_t size);

  int fd_;
  Limits limits_;
  std::chrono::steady_clock::time_point head_deadline_;
  HeadScanner head_;
  Refusal refusal_ = Refusal::kNone;
  mutable bool answered_ = false;
  // Read ahead, as the library's stream does: the library reads a head a
  // byte at a time.
  char buf_[4096];
  std::size_t off_ = 0, len_ = 0;
  const PlainStream* outer_;  // current() before this one
};

}  // namespace airlock::daemon
