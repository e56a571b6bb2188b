// HTTP/1.1 request framing as the server follows it under cpp-httplib: where
// requests end (so a connection is kept only at a request boundary), and the
// limits that refuse a byte before anything buffers it.
#include "serve/http_framing.h"

#include <gtest/gtest.h>

#include <string>

#include "../expect_error.h"

namespace finmoe::serve {
namespace {

HttpLimits small_limits() {
  HttpLimits l;
  l.max_request_line = 64;
  l.max_header_line = 48;
  l.max_header_count = 4;
  l.max_chunk_line = 16;
  return l;
}

// Feeds `bytes` in pieces of `step`; returns how many were taken.
size_t feed(RequestFraming& f, const std::string& bytes, size_t step = 1) {
  size_t taken = 0;
  for (size_t i = 0; i < bytes.size(); i += step) {
    const size_t n = std::min(step, bytes.size() - i);
    const size_t k = f.take(bytes.data() + i, n);
    taken += k;
    if (k < n) break;
  }
  return taken;
}

const std::string kLine = "POST /v1/completions HTTP/1.1\r\n";

TEST(RequestFraming, ContentLengthBodyEndsTheRequestAtItsLastByte) {
  RequestFraming f(small_limits(), 1000);
  const std::string req = kLine + "Host: x\r\nContent-Length: 5\r\n\r\nhello";
  for (size_t step : {1, 3, 1000}) {
    f.start();
    EXPECT_FALSE(f.started());
    // the next request's bytes are not taken
    EXPECT_EQ(feed(f, req + "GET /health HTTP/1.1\r\n", step), req.size()) << step;
    EXPECT_TRUE(f.complete());
    EXPECT_EQ(f.content_length(), 5);
    EXPECT_FALSE(f.chunked());
  }
  f.start();
  const std::string partial = kLine + "Content-Length: 5\r\n\r\nhel";
  EXPECT_EQ(feed(f, partial), partial.size());
  EXPECT_FALSE(f.complete()) << "two body bytes missing";
  EXPECT_FALSE(f.in_head());
}

TEST(RequestFraming, NoBodyWithoutContentLengthOrChunked) {
  RequestFraming f(small_limits(), 1000);
  f.start();
  const std::string req = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
  EXPECT_EQ(feed(f, req + "junk"), req.size());
  EXPECT_TRUE(f.complete());
  f.start();
  feed(f, kLine + "Content-Length: 0\r\n\r\n");
  EXPECT_TRUE(f.complete());
}

TEST(RequestFraming, ChunkedBodyEndsAfterTheLastChunk) {
  RequestFraming f(small_limits(), 1000);
  const std::string req =
      kLine + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\na;ext=1\r\n0123456789\r\n0\r\n\r\n";
  for (size_t step : {1, 7, 1000}) {
    f.start();
    EXPECT_EQ(feed(f, req + "POST", step), req.size()) << step;
    EXPECT_TRUE(f.complete());
    EXPECT_TRUE(f.chunked());
    EXPECT_FALSE(f.violation());
  }
}

TEST(RequestFraming, LongLinesAreRefusedAtTheFirstByteOverTheLimit) {
  struct Case {
    std::string bytes;
    size_t taken;  // bytes taken before the refusal
    int status;
  };
  const std::string head = kLine + "Transfer-Encoding: chunked\r\n\r\n";
  const std::vector<Case> cases = {
      {"GET /" + std::string(1000, 'a'), 64, 414},                            // request line
      {kLine + "X-Long: " + std::string(1000, 'b'), kLine.size() + 48, 431},  // one header line
      {kLine + "A: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n", kLine.size() + 29,
       431},                                                   // header count, at E's LF
      {head + std::string(1000, '0'), head.size() + 16, 400},  // chunk-size line
  };
  for (const auto& c : cases) {
    RequestFraming f(small_limits(), 1 << 20);
    f.start();
    EXPECT_EQ(feed(f, c.bytes, 7), c.taken) << c.bytes.substr(0, 40);
    ASSERT_TRUE(f.violation()) << c.bytes.substr(0, 40);
    EXPECT_EQ(f.violation()->status, c.status);
    EXPECT_FALSE(f.complete());
    EXPECT_EQ(f.take("x", 1), 0u) << "nothing more is taken";
  }
}

TEST(RequestFraming, BodiesOverTheLimitAreRefusedBeforeAnyBodyByte) {
  RequestFraming f(small_limits(), 100);
  f.start();
  const std::string head = kLine + "Content-Length: 101\r\n\r\n";
  EXPECT_EQ(feed(f, head + "x"), head.size() - 1) << "the head's last byte is refused";
  EXPECT_EQ(f.violation()->status, 413);
  EXPECT_EQ(f.violation()->code, "request_too_large");
  // chunked: the chunk that crosses the limit, before its data
  f.start();
  const std::string chunks =
      kLine + "Transfer-Encoding: chunked\r\n\r\n32\r\n" + std::string(50, 'a') + "\r\n33\r\n";
  EXPECT_EQ(feed(f, chunks + std::string(51, 'b'), 5), chunks.size() - 1);
  EXPECT_EQ(f.violation()->status, 413);
  RequestFraming g(HttpLimits{}, 100);  // chunk-size lines of up to 1024 bytes
  g.start();
  const std::string huge =
      kLine + "Transfer-Encoding: chunked\r\n\r\n" + std::string(40, 'F') + "\r\n";
  EXPECT_EQ(feed(g, huge), huge.size() - 1);
  EXPECT_EQ(g.violation()->status, 413)
      << "a size past 64 bits is over the limit, not wrapped around";
}

TEST(RequestFraming, AmbiguousFramingIsRefused) {
  const std::vector<std::pair<std::string, int>> heads = {
      {"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", 400},  // smuggling
      {"Content-Length: 5\r\nContent-Length: 6\r\n", 400},
      {"Content-Length: -1\r\n", 400},
      {"Content-Length: 5x\r\n", 400},
      {"Content-Length: %35\r\n", 400},  // httplib would url-decode header values
      {"Transfer-Encoding: gzip, chunked\r\n", 501},
      {"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", 400},
      {"Bad Name: 1\r\n", 400},
      {"NoColon\r\n", 400},
      {" folded\r\n", 400},
      {"Host: x\n", 400},  // LF without CR
  };
  for (const auto& [h, status] : heads) {
    RequestFraming f(small_limits(), 1000);
    f.start();
    const std::string bytes = kLine + h + "\r\n";
    EXPECT_LT(feed(f, bytes), bytes.size()) << h;
    ASSERT_TRUE(f.violation()) << h;
    EXPECT_EQ(f.violation()->status, status) << h;
  }
  // equal duplicates and surrounding whitespace are fine
  RequestFraming f(small_limits(), 1000);
  f.start();
  feed(f, kLine + "content-length:  3 \r\nContent-Length: 3\r\n\r\nabc");
  EXPECT_TRUE(f.complete());
  EXPECT_FALSE(f.violation());
}

TEST(RequestFraming, MalformedChunksAreRefused) {
  const std::string head = kLine + "Transfer-Encoding: chunked\r\n\r\n";
  for (const std::string body : {"x\r\n", "+5\r\nhello\r\n", "0x5\r\n", "5\r\nhelloXX",
                                 "0\r\nTrailer: 1\r\n\r\n", "5\nhello"}) {
    RequestFraming f(small_limits(), 1000);
    f.start();
    EXPECT_LT(feed(f, head + body), head.size() + body.size()) << body;
    ASSERT_TRUE(f.violation()) << body;
    EXPECT_EQ(f.violation()->status, 400) << body;
    EXPECT_FALSE(f.complete());
  }
}

TEST(RequestFraming, AReaderTimeoutEndsTheRequest) {
  RequestFraming f(small_limits(), 1000);
  f.start();
  feed(f, "GET /hea");
  EXPECT_TRUE(f.in_head());
  f.fail({408, "slow", "request_timeout"});
  EXPECT_EQ(f.violation()->status, 408);
  EXPECT_EQ(f.take("d", 1), 0u);
  f.start();
  EXPECT_FALSE(f.violation()) << "the next request starts clean";
}

}  // namespace
}  // namespace finmoe::serve
