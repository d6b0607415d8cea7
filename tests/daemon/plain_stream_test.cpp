// PlainStream, airlockd's stream for plain-TCP requests, and its head
// scanner, over a socket pair: heads are bounded in size and time, bodies
// are not touched, and the scanner finds a head's end however the bytes
// are split.
#include "plain_stream.h"

#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
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
std::string drain(PlainStream& strm, std::size_t limit) {
  std::string out;
  char c;
  while (out.size() < limit && strm.read(&c, 1) == 1) out += c;
  return out;
}

PlainStream::Limits limits(std::size_t max_head, int timeout_ms) {
  PlainStream::Limits l;
  l.max_head_bytes = max_head;
  l.head_timeout = std::chrono::milliseconds(timeout_ms);
  l.read_timeout = {0, 200000};
  return l;
}

TEST(PlainStreamTest, AHeadOverTheLimitIsRefusedBeforeItsExcessIsRead) {
  Pair p;
  ASSERT_GE(p.a, 0);
  p.send("GET / HTTP/1.1\r\nX-Long: " + std::string(300, 'a'));
  PlainStream strm(p.a, limits(100, 5000));
  EXPECT_EQ(PlainStream::current(), &strm);
  const std::string got = drain(strm, 1000);
  EXPECT_EQ(got.size(), 100u);  // never more than the limit
  EXPECT_EQ(strm.refusal(), PlainStream::Refusal::kHeadTooLarge);
  char c;
  EXPECT_EQ(strm.read(&c, 1), -1);  // and it stays refused
  EXPECT_FALSE(strm.answered());
}

TEST(PlainStreamTest, TooManyHeaderLinesAreRefusedAtTheFirstByteOfTheOneTooMany) {
  Pair p;
  ASSERT_GE(p.a, 0);
  std::string head = "GET / HTTP/1.1\r\n";
  for (int i = 0; i < 5; ++i) head += ":a\r\n";  // the shortest header httplib takes
  p.send(head + ":b\r\n\r\n");
  PlainStream::Limits l;
  l.max_header_lines = 5;
  PlainStream strm(p.a, l);
  EXPECT_EQ(drain(strm, 1000), head);
  EXPECT_EQ(strm.refusal(), PlainStream::Refusal::kTooManyHeaderLines);
}

TEST(PlainStreamTest, ABodyAfterTheHeadIsNotCounted) {
  Pair p;
  ASSERT_GE(p.a, 0);
  const std::string head = "POST /x HTTP/1.1\r\nContent-Length: 5000\r\n\r\n";
  const std::string body(5000, 'b');
  std::thread sender([&] { p.send(head + body); });
  PlainStream strm(p.a, limits(head.size(), 5000));  // the head exactly at the limit
  EXPECT_EQ(drain(strm, head.size()), head);
  std::string got;
  char buf[1500];
  while (got.size() < body.size()) {
    const ssize_t n = strm.read(buf, sizeof buf);
    ASSERT_GT(n, 0);
    got.append(buf, static_cast<std::size_t>(n));
  }
  sender.join();
  EXPECT_EQ(got, body);
  EXPECT_EQ(strm.refusal(), PlainStream::Refusal::kNone);
}

TEST(PlainStreamTest, AHeadThatTricklesPastItsTimeIsRefused) {
  Pair p;
  ASSERT_GE(p.a, 0);
  std::atomic<bool> stop{false};
  std::thread sender([&] {
    for (int i = 0; i < 40 && !stop; ++i) {  // a byte every 100 ms, well within each read's timeout (2 s)
      p.send("a");
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });
  PlainStream::Limits l = limits(1000, 350);
  l.read_timeout = {2, 0};
  const auto start = std::chrono::steady_clock::now();
  PlainStream strm(p.a, l);
  const std::string got = drain(strm, 1000);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  stop = true;
  sender.join();
  EXPECT_EQ(strm.refusal(), PlainStream::Refusal::kHeadTimedOut);
  EXPECT_LE(got.size(), 5u);  // the bytes of 0.35 s, not of the 4 s the sender would go on
  EXPECT_GE(s, 0.34);
  EXPECT_LT(s, 2.0);  // 0.35 s, with room for a loaded machine
}

TEST(PlainStreamTest, WritesReachThePeerAndTheStreamIsCurrentWhileItLives) {
  Pair p;
  ASSERT_GE(p.a, 0);
  {
    PlainStream strm(p.a, limits(100, 1000));
    EXPECT_TRUE(strm.is_writable());
    EXPECT_EQ(strm.write("hello", 5), 5);
    EXPECT_EQ(strm.socket(), p.a);
  }
  EXPECT_EQ(PlainStream::current(), nullptr);
  char buf[8] = {};
  EXPECT_EQ(::read(p.b, buf, sizeof buf), 5);
  EXPECT_EQ(std::string(buf, 5), "hello");
  // A peer that has closed is not writable (as httplib judges it).
  ::close(p.b);
  p.b = -1;
  PlainStream strm(p.a, limits(100, 1000));
  EXPECT_FALSE(strm.is_writable());
}

}  // namespace
}  // namespace airlock::daemon
