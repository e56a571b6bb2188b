// The HTTP server's socket-free parts: the hand-off of engine events to the
// worker answering a request (with the latencies it records), the API-key
// check and byte sizes.
#include <gtest/gtest.h>

#include <thread>

#include "../expect_error.h"
#include "finmoe/server.h"
#include "serve/http_server.h"

namespace finmoe::serve {
namespace {

RequestOutput event(std::vector<int32_t> ids, std::string text, int64_t completion, bool finished = false,
                    std::string reason = "") {
  RequestOutput o;
  o.token_ids = std::move(ids);
  o.text = std::move(text);
  o.completion_tokens = completion;
  o.finished = finished;
  o.finish_reason = std::move(reason);
  return o;
}

TEST(OutputChannel, RecordsLatenciesPerChoice) {
  ServerMetrics m;
  OutputChannel ch(2, &m, OutputChannel::Clock::now());
  std::thread engine([&] {
    ch.push(0, event({1}, "a", 1));
    ch.push(1, event({2}, "b", 1));
    ch.push(0, event({3}, "c", 2));
    ch.push(0, event({}, "", 2, true, "abort"));
    ch.push(1, event({4}, "d", 2, true, "length"));
  });
  std::vector<std::pair<int64_t, RequestOutput>> got;
  while (got.size() < 5) {
    auto evs = ch.wait(std::chrono::milliseconds(50));
    got.insert(got.end(), evs.begin(), evs.end());
  }
  engine.join();
  EXPECT_TRUE(ch.all_finished());
  EXPECT_EQ(got[2].second.text, "c");
  const auto s = m.snapshot();
  EXPECT_EQ(s.ttft.count, 2u);         // first token of each choice
  EXPECT_EQ(s.inter_token.count, 2u);  // later token events; the empty abort event has no token
  EXPECT_EQ(s.e2e.count, 2u);
  EXPECT_EQ(s.finished_by_reason.at("abort"), 1);
  EXPECT_EQ(s.finished_by_reason.at("length"), 1);
}

TEST(HttpServer, BearerTokenCheck) {
  EXPECT_TRUE(authorized("", ""));
  EXPECT_TRUE(authorized("Bearer anything", ""));
  EXPECT_TRUE(authorized("Bearer sk-1", "sk-1"));
  EXPECT_FALSE(authorized("Bearer sk-2", "sk-1"));
  EXPECT_FALSE(authorized("Bearer sk-1 ", "sk-1"));
  EXPECT_FALSE(authorized("sk-1", "sk-1"));
  EXPECT_FALSE(authorized("Basic sk-1", "sk-1"));
  EXPECT_FALSE(authorized("", "sk-1"));
}

TEST(HttpServer, ByteSizes) {
  EXPECT_EQ(parse_byte_size("2GiB"), int64_t(2) << 30);
  EXPECT_EQ(parse_byte_size("512MiB"), int64_t(512) << 20);
  EXPECT_EQ(parse_byte_size("1.5GB"), 1500000000);
  EXPECT_EQ(parse_byte_size("64KB"), 64000);
  EXPECT_EQ(parse_byte_size("1000"), 1000);
  EXPECT_EQ(parse_byte_size("1 GiB"), int64_t(1) << 30);
  for (const char* bad : {"", "GiB", "2XB", "-1GiB", "lots"})
    EXPECT_CONTAINS(test::message_of([&] { parse_byte_size(bad); }), "not a byte size");
}

}  // namespace
}  // namespace finmoe::serve
