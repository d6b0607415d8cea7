#include "plain_stream.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace airlock::daemon {

namespace {

thread_local const PlainStream* t_current = nullptr;

std::chrono::milliseconds to_ms(const timeval& t) {
  return std::chrono::milliseconds(static_cast<std::int64_t>(t.tv_sec) * 1000 + (t.tv_usec + 999) / 1000);
}

// poll() for `events` on fd for up to ms milliseconds; retried on EINTR
// (with the whole timeout again: a signal is rare, and the library's
// select_read does the same).
bool poll_for(int fd, short events, std::chrono::milliseconds timeout) {
  pollfd p{fd, events, 0};
  const int ms = static_cast<int>(std::clamp<std::int64_t>(timeout.count(), 0, 24 * 3600 * 1000));
  int r;
  do r = ::poll(&p, 1, ms);
  while (r < 0 && errno == EINTR);
  return r > 0;
}

ssize_t recv_retrying(int fd, void* buf, std::size_t n, int flags) {
  ssize_t r;
  do r = ::recv(fd, buf, n, flags);
  while (r < 0 && errno == EINTR);
  return r;
}

// Numeric address and port of a socket address (no name is looked up).
void ip_and_port(const sockaddr_storage& a, std::string& ip, int& port) {
  char text[INET6_ADDRSTRLEN] = {};
  if (a.ss_family == AF_INET) {
    const auto& in = reinterpret_cast<const sockaddr_in&>(a);
    port = ntohs(in.sin_port);
    if (::inet_ntop(AF_INET, &in.sin_addr, text, sizeof text)) ip = text;
  } else if (a.ss_family == AF_INET6) {
    const auto& in6 = reinterpret_cast<const sockaddr_in6&>(a);
    port = ntohs(in6.sin6_port);
    if (::inet_ntop(AF_INET6, &in6.sin6_addr, text, sizeof text)) ip = text;
  }
}

}  // namespace

std::size_t HeadScanner::feed(const char* p, std::size_t n) {
  std::size_t i = 0;
  for (; i < n && !ended_; ++i) {
    const char c = p[i];
    if (c != '\n') {
      if (line_bytes_ == 0 && !first_line_) ++header_lines_;
      line_is_cr_ = line_bytes_ == 0 && c == '\r';
      ++line_bytes_;
      continue;
    }
    if (!first_line_ && line_is_cr_ && line_bytes_ == 1) {
      ended_ = true;
      --header_lines_;  // the blank line that ends the head
    } else if (line_bytes_ == 0 && !first_line_) {
      ++header_lines_;  // a line that is a bare '\n'
    }
    first_line_ = false;
    line_bytes_ = 0;
    line_is_cr_ = false;
  }
  bytes_ += i;
  return i;
}

PlainStream::PlainStream(int fd, const Limits& limits)
    : fd_(fd), limits_(limits), head_deadline_(std::chrono::steady_clock::now() + limits.head_timeout),
      outer_(t_current) {
  t_current = this;
}

PlainStream::~PlainStream() { t_current = outer_; }

const PlainStream* PlainStream::current() { return t_current; }

bool PlainStream::wait_readable(int fd, std::chrono::milliseconds timeout) { return poll_for(fd, POLLIN, timeout); }

bool PlainStream::is_readable() const { return off_ < len_ || wait_readable(fd_, to_ms(limits_.read_timeout)); }

bool PlainStream::is_writable() const {
  if (!poll_for(fd_, POLLOUT, to_ms(limits_.write_timeout))) return false;
  // Alive as the library judges it: nothing to read, or something (a byte
  // peeked, not taken) rather than the end of the connection.
  if (!poll_for(fd_, POLLIN, std::chrono::milliseconds(0))) return true;
  char byte;
  return recv_retrying(fd_, &byte, 1, MSG_PEEK) > 0;
}

ssize_t PlainStream::read_head(char* ptr, std::size_t size) {
  if (off_ == len_) {
    const auto now = std::chrono::steady_clock::now();
    if (now >= head_deadline_) {
      refusal_ = Refusal::kHeadTimedOut;
      return -1;
    }
    // (rounded up: a wait of 0 ms would not wait for the deadline)
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(head_deadline_ - now);
    if (!wait_readable(fd_, std::min(left, to_ms(limits_.read_timeout)))) {
      if (std::chrono::steady_clock::now() >= head_deadline_) refusal_ = Refusal::kHeadTimedOut;
      return -1;
    }
    const ssize_t n = recv_retrying(fd_, buf_, sizeof buf_, 0);
    if (n <= 0) return n;
    off_ = 0;
    len_ = static_cast<std::size_t>(n);
  }
  const std::size_t k = std::min(size, len_ - off_);
  head_.feed(buf_ + off_, k);
  // What would pass the bounds is not handed over: the library never holds
  // more than max_head_bytes of a head, nor more header lines than allowed.
  if (head_.head_bytes() > limits_.max_head_bytes) {
    refusal_ = Refusal::kHeadTooLarge;
    return -1;
  }
  if (head_.header_lines() > limits_.max_header_lines) {
    refusal_ = Refusal::kTooManyHeaderLines;
    return -1;
  }
  std::memcpy(ptr, buf_ + off_, k);
  off_ += k;
  return static_cast<ssize_t>(k);
}

ssize_t PlainStream::read(char* ptr, std::size_t size) {
  if (refusal_ != Refusal::kNone) return -1;
  if (!head_.ended()) return read_head(ptr, size);
  // The body (and anything after the head), as the library reads it.
  if (off_ < len_) {
    const std::size_t k = std::min(size, len_ - off_);
    std::memcpy(ptr, buf_ + off_, k);
    off_ += k;
    return static_cast<ssize_t>(k);
  }
  if (!wait_readable(fd_, to_ms(limits_.read_timeout))) return -1;
  if (size >= sizeof buf_) return recv_retrying(fd_, ptr, size, 0);
  const ssize_t n = recv_retrying(fd_, buf_, sizeof buf_, 0);
  if (n <= 0) return n;
  const std::size_t k = std::min(size, static_cast<std::size_t>(n));
  std::memcpy(ptr, buf_, k);
  off_ = k;
  len_ = static_cast<std::size_t>(n);
  return static_cast<ssize_t>(k);
}

ssize_t PlainStream::write(const char* ptr, std::size_t size) {
  ssize_t n;
  do n = ::send(fd_, ptr, size, MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  return n;
}

void PlainStream::get_remote_ip_and_port(std::string& ip, int& port) const {
  sockaddr_storage a{};
  socklen_t len = sizeof a;
  if (::getpeername(fd_, reinterpret_cast<sockaddr*>(&a), &len) == 0) ip_and_port(a, ip, port);
}

void PlainStream::get_local_ip_and_port(std::string& ip, int& port) const {
  sockaddr_storage a{};
  socklen_t len = sizeof a;
  if (::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len) == 0) ip_and_port(a, ip, port);
}

}  // namespace airlock::daemon
