// RequestStream, airlockd's stream for requests over plain TCP or TLS, and
// its head scanner, over socket pairs: heads are bounded in size and time
// (over TLS too, however a record is trickled, and the handshake in time),
// bodies are not touched, and the scanner finds a head's end however the
// bytes are split.
#include "request_stream.h"

#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <thread>

namespace airlock::daemon {
namespace {

// Where a head ends in `s` as cpp-httplib 0.11 reads one (just past the
// first line after the request line that is exactly "\r\n"), or npos;
// and how many header lines come before it (or in all of `s`).
std::size_t reference_end(const std::string& s, std::size_t* lines = nullptr) {
  std::size_t at = 0, n = 0;
  for (bool first = true; at < s.size(); first = false) {
    const std::size_t nl = s.find('\n', at);
    const std::string line = s.substr(at, nl == std::string::npos ? std::string::npos : nl + 1 - at);
    if (!first && line == "\r\n") {
      if (lines) *lines = n;
      return nl + 1;
    }
    if (!first) ++n;
    if (nl == std::string::npos) break;
    at = nl + 1;
  }
  if (lines) *lines = n;
  return std::string::npos;
}

TEST(HeadScannerTest, FindsTheEndHoweverTheBytesAreSplit) {
  std::mt19937 rng(5);
  const std::string alphabet = "\r\n\r\na:";
  for (int round = 0; round < 5000; ++round) {
    std::string s;
    const int n = static_cast<int>(rng() % 40);
    for (int i = 0; i < n; ++i) s += alphabet[rng() % alphabet.size()];
    std::size_t want_lines = 0;
    const std::size_t want = reference_end(s, &want_lines);
    HeadScanner scan;
    std::size_t head = 0, at = 0;
    while (at < s.size()) {
      const std::size_t k = std::min<std::size_t>(s.size() - at, 1 + rng() % 5);
      const std::size_t took = scan.feed(s.data() + at, k);
      ASSERT_LE(took, k);
      head += took;
      at += k;
    }
    ASSERT_EQ(scan.ended(), want != std::string::npos) << s;
    ASSERT_EQ(head, want == std::string::npos ? s.size() : want) << s;
    ASSERT_EQ(scan.head_bytes(), head);
    ASSERT_EQ(scan.header_lines(), want_lines) << s;
  }
  // The request line never ends the head; a line ending in a bare '\n' is
  // a header line (httplib skips it), and "\r\r\n" is not blank.
  HeadScanner scan;
  const std::string s = "\r\nX: a\n\r\r\n\r\nbody";
  EXPECT_EQ(scan.feed(s.data(), s.size()), s.size() - 4);
  EXPECT_TRUE(scan.ended());
  EXPECT_EQ(scan.header_lines(), 2u);
  EXPECT_EQ(scan.feed("\r\n\r\n", 4), 0u);
}

struct Pair {
  int a = -1, b = -1;
  Pair() {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0) {
      a = fds[0];
      b = fds[1];
    }
  }
  ~Pair() {
    if (a >= 0) ::close(a);
    if (b >= 0) ::close(b);
  }
  void send(const std::string& s) const { ASSERT_EQ(::write(b, s.data(), s.size()), static_cast<ssize_t>(s.size())); }
};

// Reads everything the stream gives, a byte at a time as httplib reads a
// head, until a read fails or `limit` bytes came.
std::string drain(RequestStream& strm, std::size_t limit) {
  std::string out;
  char c;
  while (out.size() < limit && strm.read(&c, 1) == 1) out += c;
  return out;
}

// Reads n bytes as httplib reads a body, in pieces of at most what is left
// (and at most 1500 here); fails the test if the stream ends first.
std::string read_body(RequestStream& strm, std::size_t n) {
  std::string got;
  char buf[1500];
  while (got.size() < n) {
    const ssize_t k = strm.read(buf, std::min(sizeof buf, n - got.size()));
    EXPECT_GT(k, 0);
    if (k <= 0) break;
    got.append(buf, static_cast<std::size_t>(k));
  }
  return got;
}

// A place among the connections that may give way, for tests: counts the
// leaves, and says whether the connection was ended.
struct TestPlace final : RequestStream::Place {
  bool is_ended = false;
  int left = 0;
  bool leave() override {
    ++left;
    return !is_ended;
  }
  bool ended() override { return is_ended; }
};

RequestStream::Limits limits(std::size_t max_head, int timeout_ms) {
  RequestStream::Limits l;
  l.max_head_bytes = max_head;
  l.head_timeout = std::chrono::milliseconds(timeout_ms);
  l.read_timeout = {0, 200000};
  return l;
}

// The connection loop learns when a head has arrived whole (a slow head
// may give way to a new connection until then): once, as the head's last
// byte is read, not for the body, and not for a head that never ends.
TEST(RequestStreamTest, LeavesItsPlaceOnceTheHeadHasArrived) {
  Pair p;
  ASSERT_GE(p.a, 0);
  RequestStream strm(p.a, limits(1000, 5000));
  TestPlace place;
  strm.hold(&place);
  const std::string head = "POST / HTTP/1.1\r\nContent-Length: 4\r\n";
  p.send(head);
  EXPECT_EQ(drain(strm, head.size()), head);
  EXPECT_EQ(place.left, 0);  // not yet ended
  p.send("\r\nbody");
  char c;
  ASSERT_EQ(strm.read(&c, 1), 1);
  EXPECT_EQ(place.left, 0);
  ASSERT_EQ(strm.read(&c, 1), 1);  // the blank line's '\n'
  EXPECT_EQ(place.left, 1);
  EXPECT_EQ(read_body(strm, 4), "body");
  EXPECT_EQ(place.left, 1);
  TestPlace late;
  strm.hold(&late);  // held after the head: left at once
  EXPECT_EQ(late.left, 1);
  EXPECT_FALSE(strm.cut_off());

  Pair q;
  ASSERT_GE(q.a, 0);
  q.send("GET / HTTP/1.1\r\nX: a\r\n");
  RequestStream never(q.a, limits(1000, 150));
  TestPlace unended;
  never.hold(&unended);
  (void)drain(never, 1000);
  EXPECT_EQ(never.refusal(), RequestStream::Refusal::kHeadTimedOut);
  EXPECT_EQ(unended.left, 0);
}

// A connection ended to free its thread just as its head arrived: the
// read that ends the head fails, and so does every read after it. One
// ended while its head was still arriving (its reads then fail) is cut off
// too: neither is a request to answer, count or audit.
TEST(RequestStreamTest, AHeadWhoseConnectionWasEndedIsNotHandedOver) {
  Pair p;
  ASSERT_GE(p.a, 0);
  const std::string head = "GET / HTTP/1.1\r\nX: a\r\n\r\n";
  p.send(head);
  RequestStream strm(p.a, limits(1000, 5000));
  TestPlace place;
  place.is_ended = true;
  strm.hold(&place);
  EXPECT_EQ(drain(strm, 1000), head.substr(0, head.size() - 1));  // all but the byte that ends it
  EXPECT_TRUE(strm.cut_off());
  char c;
  EXPECT_EQ(strm.read(&c, 1), -1);
  EXPECT_EQ(strm.refusal(), RequestStream::Refusal::kNone);  // not a refusal to answer

  Pair q;
  ASSERT_GE(q.a, 0);
  q.send("GET / HTTP/1.1\r\n");
  RequestStream slow(q.a, limits(1000, 5000));
  TestPlace ended_meanwhile;
  slow.hold(&ended_meanwhile);
  EXPECT_EQ(drain(slow, 1000), "GET / HTTP/1.1\r\n");
  EXPECT_FALSE(slow.cut_off());  // its read timed out, and it was not ended: the library answers it
  ended_meanwhile.is_ended = true;
  ::shutdown(q.a, SHUT_RDWR);  // as end_oldest() does
  RequestStream again(q.a, limits(1000, 5000));
  again.hold(&ended_meanwhile);
  EXPECT_EQ(again.read(&c, 1), 0);
  EXPECT_TRUE(again.cut_off());
}

// A header line ending in a bare LF is one the library skips (a proxy may
// not): the stream says so, and the server refuses the request.
TEST(RequestStreamTest, TellsOfAHeaderLineEndingInABareLf) {
  HeadScanner crlf, bare;
  const std::string good = "GET / HTTP/1.1\r\nX: a\r\n\r\n", bad = "GET / HTTP/1.1\r\nContent-Length: 5\nX: a\r\n\r\n";
  crlf.feed(good.data(), good.size());
  bare.feed(bad.data(), bad.size());
  EXPECT_TRUE(crlf.ended());
  EXPECT_FALSE(crlf.bare_lf());
  EXPECT_TRUE(bare.ended());
  EXPECT_TRUE(bare.bare_lf());
  HeadScanner request_line;  // (the request line is the library's to judge)
  const std::string lf_request_line = "GET / HTTP/1.1\nX: a\r\n\r\n";
  request_line.feed(lf_request_line.data(), lf_request_line.size());
  EXPECT_FALSE(request_line.bare_lf());
}

// Empty lines before a request line are skipped (RFC 9112, 2.2), a few
// bytes of them; and the stream counts the body bytes the library took.
TEST(RequestStreamTest, SkipsBlankLinesBeforeARequestAndCountsTheBody) {
  Pair p;
  ASSERT_GE(p.a, 0);
  const std::string request = "POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody";
  p.send("\r\n" + request);
  RequestStream strm(p.a, limits(1000, 5000));
  const std::string head = request.substr(0, request.size() - 4);
  EXPECT_EQ(drain(strm, head.size()), head);
  EXPECT_TRUE(strm.head_ended());
  EXPECT_EQ(strm.body_bytes_read(), 0u);
  EXPECT_EQ(read_body(strm, 2), "bo");
  EXPECT_EQ(strm.body_bytes_read(), 2u);
  EXPECT_EQ(read_body(strm, 2), "dy");
  EXPECT_EQ(strm.body_bytes_read(), 4u);
  // More than a few such bytes are handed over (and the library refuses
  // the request line).
  p.send("\r\n\r\n\r\nGET / HTTP/1.1\r\n\r\n");
  RequestStream next(p.a, limits(1000, 5000));
  EXPECT_EQ(drain(next, 2), "\r\n");
}

// A client may send its next requests without waiting for the answer
// (pipelining): read with one request's head, they are kept for the next
// stream on the connection, head and body, however the reads fall.
TEST(RequestStreamTest, PipelinedRequestsAreKeptForTheNextStream) {
  Pair p;
  ASSERT_GE(p.a, 0);
  const std::string first = "POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
  const std::string second = "POST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\n12345";
  const std::string third = "GET /c HTTP/1.1\r\n\r\n";
  p.send(first + second + third);  // one write, one read
  RequestStream::ReadAhead ahead;
  auto head_of = [](RequestStream& strm, const std::string& request) {
    return drain(strm, request.find("\r\n\r\n") + 4);
  };
  {
    RequestStream strm(p.a, limits(1000, 5000), nullptr, &ahead);
    EXPECT_EQ(head_of(strm, first), first.substr(0, first.size() - 3));
    EXPECT_EQ(read_body(strm, 3), "abc");
  }
  EXPECT_FALSE(ahead.empty());  // the rest came with the first head
  {
    RequestStream strm(p.a, limits(1000, 5000), nullptr, &ahead);
    EXPECT_TRUE(strm.is_readable());
    EXPECT_EQ(head_of(strm, second), second.substr(0, second.size() - 5));
    EXPECT_EQ(read_body(strm, 5), "12345");
  }
  {
    RequestStream strm(p.a, limits(1000, 5000), nullptr, &ahead);
    EXPECT_EQ(head_of(strm, third), third);
  }
  EXPECT_TRUE(ahead.empty());
  // Without a ReadAhead of the caller's, a stream keeps its own: what it
  // read past its request goes with it (the library's stream did the same).
  p.send(first + third);
  {
    RequestStream strm(p.a, limits(1000, 5000));
    EXPECT_EQ(head_of(strm, first), first.substr(0, first.size() - 3));
  }
  RequestStream next(p.a, limits(1000, 100));
  char c;
  EXPECT_EQ(next.read(&c, 1), -1);  // nothing left on the socket
}

TEST(RequestStreamTest, AHeadOverTheLimitIsRefusedBeforeItsExcessIsRead) {
  Pair p;
  ASSERT_GE(p.a, 0);
  p.send("GET / HTTP/1.1\r\nX-Long: " + std::string(300, 'a'));
  RequestStream strm(p.a, limits(100, 5000));
  EXPECT_EQ(RequestStream::current(), &strm);
  const std::string got = drain(strm, 1000);
  EXPECT_EQ(got.size(), 100u);  // never more than the limit
  EXPECT_EQ(strm.refusal(), RequestStream::Refusal::kHeadTooLarge);
  char c;
  EXPECT_EQ(strm.read(&c, 1), -1);  // and it stays refused
  EXPECT_FALSE(strm.answered());
}

TEST(RequestStreamTest, TooManyHeaderLinesAreRefusedAtTheFirstByteOfTheOneTooMany) {
  Pair p;
  ASSERT_GE(p.a, 0);
  std::string head = "GET / HTTP/1.1\r\n";
  for (int i = 0; i < 5; ++i) head += ":a\r\n";  // the shortest header httplib takes
  p.send(head + ":b\r\n\r\n");
  RequestStream::Limits l;
  l.max_header_lines = 5;
  RequestStream strm(p.a, l);
  EXPECT_EQ(drain(strm, 1000), head);
  EXPECT_EQ(strm.refusal(), RequestStream::Refusal::kTooManyHeaderLines);
}

TEST(RequestStreamTest, ABodyAfterTheHeadIsNotCounted) {
  Pair p;
  ASSERT_GE(p.a, 0);
  const std::string head = "POST /x HTTP/1.1\r\nContent-Length: 5000\r\n\r\n";
  const std::string body(5000, 'b');
  std::thread sender([&] { p.send(head + body); });
  RequestStream strm(p.a, limits(head.size(), 5000));  // the head exactly at the limit
  EXPECT_EQ(drain(strm, head.size()), head);
  const std::string got = read_body(strm, body.size());
  sender.join();
  EXPECT_EQ(got, body);
  EXPECT_EQ(strm.refusal(), RequestStream::Refusal::kNone);
}

TEST(RequestStreamTest, AHeadThatTricklesPastItsTimeIsRefused) {
  Pair p;
  ASSERT_GE(p.a, 0);
  std::atomic<bool> stop{false};
  std::thread sender([&] {
    for (int i = 0; i < 40 && !stop; ++i) {  // a byte every 100 ms, well within each read's timeout (2 s)
      p.send("a");
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });
  RequestStream::Limits l = limits(1000, 350);
  l.read_timeout = {2, 0};
  const auto start = std::chrono::steady_clock::now();
  RequestStream strm(p.a, l);
  const std::string got = drain(strm, 1000);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  stop = true;
  sender.join();
  EXPECT_EQ(strm.refusal(), RequestStream::Refusal::kHeadTimedOut);
  EXPECT_LE(got.size(), 5u);  // the bytes of 0.35 s, not of the 4 s the sender would go on
  EXPECT_GE(s, 0.34);
  EXPECT_LT(s, 2.0);  // 0.35 s, with room for a loaded machine
}

TEST(RequestStreamTest, WritesReachThePeerAndTheStreamIsCurrentWhileItLives) {
  Pair p;
  ASSERT_GE(p.a, 0);
  {
    RequestStream strm(p.a, limits(100, 1000));
    EXPECT_TRUE(strm.is_writable());
    EXPECT_EQ(strm.write("hello", 5), 5);
    EXPECT_EQ(strm.socket(), p.a);
  }
  EXPECT_EQ(RequestStream::current(), nullptr);
  char buf[8] = {};
  EXPECT_EQ(::read(p.b, buf, sizeof buf), 5);
  EXPECT_EQ(std::string(buf, 5), "hello");
  // A peer that has closed is not writable (as httplib judges it).
  ::close(p.b);
  p.b = -1;
  RequestStream strm(p.a, limits(100, 1000));
  EXPECT_FALSE(strm.is_writable());
}

// ---------------------------------------------------------------- TLS

// A server context with a new self-signed P-256 certificate (made here).
std::shared_ptr<SSL_CTX> server_context() {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  X509* cert = X509_new();
  std::shared_ptr<SSL_CTX> ctx(SSL_CTX_new(TLS_server_method()), SSL_CTX_free);
  if (key == nullptr || cert == nullptr || ctx == nullptr) return nullptr;
  ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
  X509_gmtime_adj(X509_getm_notBefore(cert), 0);
  X509_gmtime_adj(X509_getm_notAfter(cert), 3600);
  X509_set_pubkey(cert, key);
  X509_NAME* name = X509_get_subject_name(cert);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("test"), -1, -1, 0);
  X509_set_issuer_name(cert, name);
  const bool ok = X509_sign(cert, key, EVP_sha256()) > 0 && SSL_CTX_use_certificate(ctx.get(), cert) == 1 &&
                  SSL_CTX_use_PrivateKey(ctx.get(), key) == 1;
  X509_free(cert);
  EVP_PKEY_free(key);
  return ok ? ctx : nullptr;
}

// Copies bytes between a client's socket and the server's, the client's
// a byte every `trickle_ms` once `trickle` is set (0: as they come).
class Relay {
 public:
  Relay(int client, int server) : client_(client), server_(server), thread_([this] { run(); }) {}
  ~Relay() {
    stop_ = true;
    thread_.join();
  }
  std::atomic<int> trickle_ms{0};

 private:
  void run() {
    std::string to_server;
    while (!stop_) {
      pollfd p[2] = {{client_, POLLIN, 0}, {server_, POLLIN, 0}};
      if (::poll(p, 2, 10) < 0) return;
      char buf[4096];
      if (p[0].revents & POLLIN) {
        const ssize_t n = ::read(client_, buf, sizeof buf);
        if (n <= 0) return;
        to_server.append(buf, static_cast<std::size_t>(n));
      }
      if (p[1].revents & POLLIN) {
        const ssize_t n = ::read(server_, buf, sizeof buf);
        if (n <= 0 || ::write(client_, buf, static_cast<std::size_t>(n)) != n) return;
      }
      const int ms = trickle_ms;
      const std::size_t k = ms > 0 ? std::min<std::size_t>(1, to_server.size()) : to_server.size();
      if (k > 0) {
        if (::write(server_, to_server.data(), k) != static_cast<ssize_t>(k)) return;
        to_server.erase(0, k);
        if (ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(ms));
      }
    }
  }
  int client_, server_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// A TLS client on its own thread: connects over `fd`, then runs `then`
// with its session.
class TlsClient {
 public:
  TlsClient(int fd, std::function<void(SSL*)> then)
      : ctx_(SSL_CTX_new(TLS_client_method()), SSL_CTX_free), thread_([this, fd, then = std::move(then)] {
          SSL* ssl = SSL_new(ctx_.get());  // the server's certificate is not checked here
          SSL_set_fd(ssl, fd);
          connected = SSL_connect(ssl) == 1;
          if (connected) then(ssl);
          SSL_free(ssl);
        }) {}
  ~TlsClient() { thread_.join(); }
  std::atomic<bool> connected{false};

 private:
  std::shared_ptr<SSL_CTX> ctx_;
  std::thread thread_;
};

// Runs `f` when it goes out of scope: declared after a TlsClient, it ends
// what the client waits for before the client's thread is joined, also
// when an assertion ends the test early.
struct AtExit {
  std::function<void()> f;
  ~AtExit() { f(); }
};

void ssl_send(SSL* ssl, const std::string& s) { ASSERT_EQ(SSL_write(ssl, s.data(), static_cast<int>(s.size())), static_cast<int>(s.size())); }

TEST(RequestStreamTlsTest, HeadsAreBoundedAndBodiesAndWritesPassAsOverPlainTcp) {
  ::signal(SIGPIPE, SIG_IGN);  // OpenSSL writes with write(): a closed peer must be an error, not a signal
  auto ctx = server_context();
  ASSERT_TRUE(ctx);
  const std::string head = "POST /x HTTP/1.1\r\nContent-Length: 5000\r\n\r\n";
  const std::string body(5000, 'b');
  std::string answer;
  {
    Pair p;
    ASSERT_GE(p.a, 0);
    TlsClient client(p.b, [&](SSL* ssl) {
      ssl_send(ssl, head + body);
      char buf[64];
      const int n = SSL_read(ssl, buf, sizeof buf);
      if (n > 0) answer.assign(buf, static_cast<std::size_t>(n));
      ssl_send(ssl, "GET / HTTP/1.1\r\nX-Long: " + std::string(300, 'a'));
      SSL_read(ssl, buf, sizeof buf);  // until the server ends the connection
    });
    AtExit end{[&] { ::shutdown(p.a, SHUT_RDWR); }};
    const RequestStream::Limits l = limits(head.size(), 5000);  // the head exactly at the limit
    SSL* ssl = RequestStream::accept_tls(p.a, ctx.get(), l);
    ASSERT_NE(ssl, nullptr);
    {
      RequestStream strm(p.a, l, ssl);
      EXPECT_EQ(drain(strm, head.size()), head);
      EXPECT_EQ(read_body(strm, body.size()), body);
      EXPECT_EQ(strm.refusal(), RequestStream::Refusal::kNone);
      EXPECT_TRUE(strm.is_writable());
      EXPECT_EQ(strm.write("hello", 5), 5);
    }
    // The next request on the connection: over the limit.
    ASSERT_TRUE(RequestStream::wait_readable(p.a, ssl, std::chrono::seconds(5)));
    {
      RequestStream strm(p.a, limits(100, 5000), ssl);
      EXPECT_EQ(drain(strm, 1000).size(), 100u);  // never more than the limit
      EXPECT_EQ(strm.refusal(), RequestStream::Refusal::kHeadTooLarge);
    }
    RequestStream::end_tls(ssl, true);
  }
  EXPECT_EQ(answer, "hello");
}

TEST(RequestStreamTlsTest, AHeadTrickledAByteAtATimeIsCutOffAtItsDeadline) {
  // Each byte of the record comes well within a read's timeout: OpenSSL
  // on a blocking socket would wait for the whole record (~3 s here).
  ::signal(SIGPIPE, SIG_IGN);
  auto ctx = server_context();
  ASSERT_TRUE(ctx);
  Pair server_side, client_side;
  ASSERT_GE(server_side.a, 0);
  ASSERT_GE(client_side.a, 0);
  Relay relay(client_side.a, server_side.b);
  std::atomic<bool> done{false};
  TlsClient client(client_side.b, [&](SSL* ssl) {
    relay.trickle_ms = 40;
    ssl_send(ssl, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");  // one record of ~50 bytes
    while (!done) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  });
  AtExit end{[&] {
    done = true;
    ::shutdown(server_side.a, SHUT_RDWR);
  }};
  RequestStream::Limits l = limits(1000, 350);
  l.read_timeout = {2, 0};
  // (the handshake with time to spare on a loaded machine)
  SSL* ssl = RequestStream::accept_tls(server_side.a, ctx.get(), limits(1000, 10000));
  ASSERT_NE(ssl, nullptr);
  const auto start = std::chrono::steady_clock::now();
  {
    RequestStream strm(server_side.a, l, ssl);
    EXPECT_EQ(drain(strm, 1000), "");
    EXPECT_EQ(strm.refusal(), RequestStream::Refusal::kHeadTimedOut);
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  RequestStream::end_tls(ssl, false);
  EXPECT_GE(s, 0.34);
  EXPECT_LT(s, 1.5);  // 0.35 s, with room for a loaded machine; the record would take ~2 s more
}

TEST(RequestStreamTlsTest, AHandshakeMustEndWithinTheHeadsTime) {
  ::signal(SIGPIPE, SIG_IGN);
  auto ctx = server_context();
  ASSERT_TRUE(ctx);
  RequestStream::Limits l = limits(1000, 350);
  l.read_timeout = {2, 0};
  // A client that trickles its hello (~300 bytes, 40 ms each).
  {
    Pair server_side, client_side;
    ASSERT_GE(server_side.a, 0);
    ASSERT_GE(client_side.a, 0);
    Relay relay(client_side.a, server_side.b);
    relay.trickle_ms = 40;
    TlsClient client(client_side.b, [](SSL*) {});
    AtExit end{[&] {
      ::shutdown(server_side.a, SHUT_RDWR);
      ::shutdown(client_side.b, SHUT_RDWR);
      relay.trickle_ms = 0;
    }};
    const auto start = std::chrono::steady_clock::now();
    EXPECT_EQ(RequestStream::accept_tls(server_side.a, ctx.get(), l), nullptr);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_GE(s, 0.34);
    EXPECT_LT(s, 1.5);
  }
  // A client that sends nothing.
  Pair p;
  ASSERT_GE(p.a, 0);
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(RequestStream::accept_tls(p.a, ctx.get(), l), nullptr);
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 1.5);
  // Plain HTTP sent to a TLS port: no session.
  p.send("GET / HTTP/1.1\r\n\r\n");
  EXPECT_EQ(RequestStream::accept_tls(p.a, ctx.get(), l), nullptr);
}

}  // namespace
}  // namespace airlock::daemon
