// The HTTP server's socket-free parts: the hand-off of engine events to the
// worker answering a request (with the latencies it records), the API-key
// check, byte sizes; and the load benchmark's statistics.
#include <gtest/gtest.h>

#include <thread>

#include "../expect_error.h"
#include "finmoe/serve_bench.h"
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
  // the whole value is compared: nothing may follow the key, not even after a NUL
  EXPECT_FALSE(authorized(std::string("Bearer sk-1\0anything", 20), "sk-1"));
  EXPECT_FALSE(authorized(std::string("Bearer sk-1\0", 12), "sk-1"));
  EXPECT_FALSE(authorized("Bearer sk-", "sk-1"));
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

TEST(ServeBench, PercentilesInterpolateLikeNumpy) {
  // numpy.percentile([...], q) with the default linear method
  EXPECT_DOUBLE_EQ(percentile({4, 1, 3, 2}, 50), 2.5);
  std::vector<double> v;
  for (int i = 1; i <= 100; ++i) v.push_back(i);
  EXPECT_DOUBLE_EQ(percentile(v, 99), 99.01);
  EXPECT_DOUBLE_EQ(percentile(v, 0), 1);
  EXPECT_DOUBLE_EQ(percentile(v, 100), 100);
  EXPECT_DOUBLE_EQ(percentile({7}, 99), 7);
  EXPECT_EQ(percentile({}, 50), 0);
}

TEST(ServeBench, CompareTableShowsThroughputRatiosToTheFirstRun) {
  std::vector<ServeBenchResult> runs(3);
  const double tput[] = {10, 25, 80};
  for (int i = 0; i < 3; ++i) {
    runs[i].options.concurrency = int64_t(1) << (2 * i);
    runs[i].output_throughput = tput[i];
  }
  const std::string t = format_serve_bench_table(runs, true);
  EXPECT_CONTAINS(t, "speedup");
  EXPECT_CONTAINS(t, "1.00x");
  EXPECT_CONTAINS(t, "2.50x");
  EXPECT_CONTAINS(t, "8.00x");
  EXPECT_EQ(format_serve_bench_table(runs, false).find("speedup"), std::string::npos);
}

}  // namespace
}  // namespace finmoe::serve
