#include "request_stream.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <utility>

namespace airlock::daemon {

namespace {

thread_local const RequestStream* t_current = nullptr;

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

// The poll() events a TLS call that returned r waits for before it is
// tried again (0: it failed, or the session ended).
short tls_wants(SSL* ssl, int r) {
  switch (SSL_get_error(ssl, r)) {
    case SSL_ERROR_WANT_READ:
      return POLLIN;
    case SSL_ERROR_WANT_WRITE:
      return POLLOUT;
    default:
      return 0;
  }
}

// Calls `op` (an SSL_* call) until it succeeds (> 0), waiting for what it
// wants, each wait at most `wait` and all of them ending by `deadline`.
// Its last result: > 0, or <= 0 when it failed or the time ran out.
template <class Op>
int tls_retrying(SSL* ssl, int fd, Op op, std::chrono::milliseconds wait, std::chrono::steady_clock::time_point deadline) {
  for (;;) {
    ERR_clear_error();  // SSL_get_error reads the thread's error queue
    const int r = op();
    if (r > 0) return r;
    const short events = tls_wants(ssl, r);
    if (events == 0) return r;
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) return -1;
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - now);
    if (!poll_for(fd, events, std::min(wait, left))) return -1;
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
      last_cr_ = c == '\r';
      ++line_bytes_;
      continue;
    }
    if (!first_line_ && !last_cr_) bare_lf_ = true;
    last_cr_ = false;
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

RequestStream::RequestStream(int fd, const Limits& limits, SSL* ssl, ReadAhead* ahead)
    : fd_(fd),
      ssl_(ssl),
      limits_(limits),
      head_deadline_(std::chrono::steady_clock::now() + limits.head_timeout),
      ahead_(ahead != nullptr ? *ahead : own_),
      outer_(t_current) {
  t_current = this;
}

RequestStream::~RequestStream() { t_current = outer_; }

const RequestStream* RequestStream::current() { return t_current; }

bool RequestStream::wait_readable(int fd, std::chrono::milliseconds timeout) { return poll_for(fd, POLLIN, timeout); }

bool RequestStream::wait_readable(int fd, SSL* ssl, std::chrono::milliseconds timeout) {
  return (ssl != nullptr && SSL_pending(ssl) > 0) || wait_readable(fd, timeout);
}

SSL* RequestStream::accept_tls(int fd, SSL_CTX* ctx, const Limits& limits) {
  const int flags = ::fcntl(fd, F_GETFL);
  if (ctx == nullptr || flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) return nullptr;
  SSL* ssl = SSL_new(ctx);
  if (ssl == nullptr) return nullptr;
  // A write may end after some records, as a send() may (the caller writes
  // the rest): each wait is bounded, not the whole of a large answer.
  SSL_set_mode(ssl, SSL_MODE_ENABLE_PARTIAL_WRITE);
  if (SSL_set_fd(ssl, fd) != 1 ||
      tls_retrying(ssl, fd, [ssl] { return SSL_accept(ssl); }, to_ms(limits.read_timeout),
                   std::chrono::steady_clock::now() + limits.head_timeout) != 1) {
    SSL_free(ssl);
    return nullptr;
  }
  return ssl;
}

void RequestStream::end_tls(SSL* ssl, bool graceful) {
  if (ssl == nullptr) return;
  if (graceful) {
    ERR_clear_error();
    (void)SSL_shutdown(ssl);
  }
  SSL_free(ssl);
}

bool RequestStream::is_readable() const {
  return !ahead_.empty() || wait_readable(fd_, ssl_, to_ms(limits_.read_timeout));
}

bool RequestStream::is_writable() const {
  if (!poll_for(fd_, POLLOUT, to_ms(limits_.write_timeout))) return false;
  // Alive as the library judges it: nothing to read, or something (a byte
  // peeked, not taken) rather than the end of the connection.
  if (!poll_for(fd_, POLLIN, std::chrono::milliseconds(0))) return true;
  char byte;
  return recv_retrying(fd_, &byte, 1, MSG_PEEK) > 0;
}

ssize_t RequestStream::read_head(char* ptr, std::size_t size) {
  for (;;) {
    if (ahead_.empty()) {
      const auto now = std::chrono::steady_clock::now();
      if (now >= head_deadline_) {
        refusal_ = Refusal::kHeadTimedOut;
        return -1;
      }
      // (rounded up: a wait of 0 ms would not wait for the deadline)
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(head_deadline_ - now);
      const ssize_t n = receive(ahead_.buf, sizeof ahead_.buf, std::min(left, to_ms(limits_.read_timeout)));
      if (n <= 0) {
        if (place_ != nullptr && place_->ended()) cut_off_ = true;  // (its end, or a read that failed with it)
        else if (n < 0 && std::chrono::steady_clock::now() >= head_deadline_) refusal_ = Refusal::kHeadTimedOut;
        return n;
      }
      ahead_.off = 0;
      ahead_.len = static_cast<std::size_t>(n);
    }
    // Empty lines before the request line are ignored, a few bytes of them.
    if (head_.head_bytes() == 0) blank_bytes_ += ahead_.skip_blank(ReadAhead::kMaxBlank - blank_bytes_);
    if (!ahead_.empty()) break;
  }
  const std::size_t k = std::min(size, ahead_.len - ahead_.off);
  head_.feed(ahead_.buf + ahead_.off, k);
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
  if (head_.ended() && place_ != nullptr && !std::exchange(place_, nullptr)->leave()) {
    cut_off_ = true;
    return -1;
  }
  std::memcpy(ptr, ahead_.buf + ahead_.off, k);
  ahead_.off += k;
  taken_ += k;
  return static_cast<ssize_t>(k);
}

void RequestStream::hold(Place* place) {
  if (!head_.ended()) place_ = place;
  else if (!place->leave()) cut_off_ = true;
}

ssize_t RequestStream::read(char* ptr, std::size_t size) {
  if (refusal_ != Refusal::kNone || cut_off_) return -1;
  if (!head_.ended()) return read_head(ptr, size);
  const ssize_t n = read_body(ptr, size);
  if (n > 0) taken_ += static_cast<std::uint64_t>(n);
  return n;
}

ssize_t RequestStream::read_body(char* ptr, std::size_t size) {
  // The body (and anything after the head), as the library reads it.
  if (!ahead_.empty()) {
    const std::size_t k = std::min(size, ahead_.len - ahead_.off);
    std::memcpy(ptr, ahead_.buf + ahead_.off, k);
    ahead_.off += k;
    return static_cast<ssize_t>(k);
  }
  // (Over TLS, no more than asked for, as the library's stream: OpenSSL
  // keeps what it decrypted beyond, and wait_readable() counts it.)
  if (size >= sizeof ahead_.buf || ssl_ != nullptr) return receive(ptr, size, to_ms(limits_.read_timeout));
  const ssize_t n = receive(ahead_.buf, sizeof ahead_.buf, to_ms(limits_.read_timeout));
  if (n <= 0) return n;
  const std::size_t k = std::min(size, static_cast<std::size_t>(n));
  std::memcpy(ptr, ahead_.buf, k);
  ahead_.off = k;
  ahead_.len = static_cast<std::size_t>(n);
  return static_cast<ssize_t>(k);
}

ssize_t RequestStream::receive(char* buf, std::size_t n, std::chrono::milliseconds wait) {
  if (ssl_ == nullptr) return wait_readable(fd_, wait) ? recv_retrying(fd_, buf, n, 0) : -1;
  const int want = static_cast<int>(std::min<std::size_t>(n, INT_MAX));
  const int r = tls_retrying(
      ssl_, fd_, [&] { return SSL_read(ssl_, buf, want); }, wait, std::chrono::steady_clock::now() + wait);
  if (r > 0) return r;
  return SSL_get_error(ssl_, r) == SSL_ERROR_ZERO_RETURN ? 0 : -1;  // close_notify: the end
}

ssize_t RequestStream::write(const char* ptr, std::size_t size) {
  if (ssl_ != nullptr) {
    // What the socket took, in whole records (partial writes are on); a
    // retry after a wait passes the same bytes, as OpenSSL requires.
    const int n = static_cast<int>(std::min<std::size_t>(size, INT_MAX));
    const auto wait = to_ms(limits_.write_timeout);
    const int r = tls_retrying(
        ssl_, fd_, [&] { return SSL_write(ssl_, ptr, n); }, wait, std::chrono::steady_clock::now() + wait);
    return r > 0 ? r : -1;
  }
  ssize_t n;
  do n = ::send(fd_, ptr, size, MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  return n;
}

void RequestStream::write_now(const std::string& bytes) {
  if (ssl_ != nullptr) {
    ERR_clear_error();
    (void)SSL_write(ssl_, bytes.data(), static_cast<int>(std::min<std::size_t>(bytes.size(), INT_MAX)));
    return;
  }
  (void)::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
}

void RequestStream::get_remote_ip_and_port(std::string& ip, int& port) const {
  sockaddr_storage a{};
  socklen_t len = sizeof a;
  if (::getpeername(fd_, reinterpret_cast<sockaddr*>(&a), &len) == 0) ip_and_port(a, ip, port);
}

void RequestStream::get_local_ip_and_port(std::string& ip, int& port) const {
  sockaddr_storage a{};
  socklen_t len = sizeof a;
  if (::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len) == 0) ip_and_port(a, ip, port);
}

}  // namespace airlock::daemon
