// libFuzzer target: request heads as airlockd reads them (request_stream.h).
// The first two bytes pick a head limit and how the rest is split; then
//   - HeadScanner, fed the rest in pieces of that split, must end the head
//     where a line-by-line reading as cpp-httplib's finds it (the first
//     line after the request line that is exactly "\r\n"), and count its
//     bytes and header lines;
//   - RequestStream, reading the rest from a socket pair a byte at a time
//     (as httplib reads a head) and then in blocks, must skip up to 4 CR
//     and LF bytes before the request line, and refuse without handing
//     over more than the limit when the head is over it; and when it is
//     not, after some of what follows as the body, a second stream on the
//     same connection (its next request) must hand over the rest (less
//     its own leading CR and LF): nothing lost or read twice.
// Nothing may crash, hang or leak.
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "request_stream.h"

using airlock::daemon::HeadScanner;
using airlock::daemon::RequestStream;

// Where the head ends (just past the first line after the request line
// that is exactly "\r\n"), or the input's size; and its header lines.
std::size_t reference_end(const std::string& s, std::size_t* lines, bool* ended) {
  std::size_t at = 0, n = 0;
  *ended = false;
  for (bool first = true; at < s.size(); first = false) {
    const std::size_t nl = s.find('\n', at);
    const std::string line = s.substr(at, nl == std::string::npos ? std::string::npos : nl + 1 - at);
    if (!first && line == "\r\n") {
      *ended = true;
      *lines = n;
      return nl + 1;
    }
    if (!first) ++n;
    if (nl == std::string::npos) break;
    at = nl + 1;
  }
  *lines = n;
  return s.size();
}

// How many bytes a stream skips before a request line: CR and LF, up to 4.
std::size_t blank_prefix(const std::string& s) {
  std::size_t n = 0;
  while (n < 4 && n < s.size() && (s[n] == '\r' || s[n] == '\n')) ++n;
  return n;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2 || size > 48 * 1024) return 0;  // within a socket pair's buffer
  const std::size_t max_head = 1 + data[0] * 64;
  const std::size_t piece = 1 + data[1] % 17;
  const std::string in(reinterpret_cast<const char*>(data + 2), size - 2);
  std::size_t lines = 0;
  bool ended = false;
  const std::size_t head_end = reference_end(in, &lines, &ended);

  HeadScanner scan;
  std::size_t head = 0;
  for (std::size_t i = 0; i < in.size(); i += piece) head += scan.feed(in.data() + i, std::min(piece, in.size() - i));
  if (scan.ended() != ended || head != head_end || scan.head_bytes() != head || scan.header_lines() != lines) std::abort();

  // A stream skips empty lines before a request line (up to 4 bytes of CR
  // and LF): what it hands over of its request is the input without them.
  const std::string request = in.substr(blank_prefix(in));
  const std::size_t request_head_end = reference_end(request, &lines, &ended);

  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) return 0;
  if (!in.empty() && ::write(fds[1], in.data(), in.size()) != static_cast<ssize_t>(in.size())) std::abort();
  ::shutdown(fds[1], SHUT_WR);
  RequestStream::Limits limits;
  limits.max_head_bytes = max_head;
  limits.max_header_lines = 1u << 20;  // the byte bound alone here
  limits.read_timeout = {0, 100000};
  std::string out;
  RequestStream::ReadAhead ahead;  // the connection's, across its requests
  {
    RequestStream strm(fds[0], limits, nullptr, &ahead);
    char c;
    while (out.size() < request_head_end && strm.read(&c, 1) == 1) out += c;
    if (request_head_end > max_head) {
      if (strm.refusal() != RequestStream::Refusal::kHeadTooLarge || out.size() != max_head) std::abort();
    } else {
      // Part of what follows the head as this request's body, at most
      // `piece` bytes, then the rest as the next request, whatever it
      // holds: nothing lost or read twice between the two.
      char buf[700];
      for (ssize_t n; out.size() < request_head_end + piece &&
                      (n = strm.read(buf, std::min(sizeof buf, request_head_end + piece - out.size()))) > 0;)
        out.append(buf, static_cast<std::size_t>(n));
      if (strm.refusal() != RequestStream::Refusal::kNone || out != request.substr(0, out.size())) std::abort();
    }
  }
  if (request_head_end <= max_head) {
    const std::string rest = request.substr(out.size());
    RequestStream::Limits any = limits;
    any.max_head_bytes = SIZE_MAX;
    RequestStream next(fds[0], any, nullptr, &ahead);
    std::string next_out;
    char buf[700];
    for (ssize_t n; (n = next.read(buf, next_out.size() % 2 == 0 ? 1 : sizeof buf)) > 0;)
      next_out.append(buf, static_cast<std::size_t>(n));
    if (next_out != rest.substr(blank_prefix(rest))) std::abort();
  }
  ::close(fds[0]);
  ::close(fds[1]);
  return 0;
}
