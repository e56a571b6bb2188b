#pragma once
// Server metrics in the Prometheus text exposition format (version 0.0.4):
// the engine's gauges and counters (EngineStats) plus latency histograms and
// request counters the HTTP layer records.
//
// Thread safety: ServerMetrics may be updated from any thread (engine
// callbacks, HTTP workers) and read concurrently; each member is guarded by
// its own mutex or is atomic.
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "finmoe/engine.h"

namespace finmoe::serve {

// A cumulative histogram over fixed upper bounds (seconds).
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);  // strictly increasing
  void observe(double value);

  struct Snapshot {
    std::vector<double> bounds;
    std::vector<uint64_t> counts;  // per bucket (not cumulative); one more than bounds (+Inf)
    double sum = 0;
    uint64_t count = 0;
  };
  Snapshot snapshot() const;

 private:
  mutable std::mutex mu_;  // guards counts_, sum_, count_
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;
  double sum_ = 0;
  uint64_t count_ = 0;
};

// What the HTTP layer measures.
struct ServerMetrics {
  ServerMetrics();
  Histogram ttft;           // request arrival -> first token
  Histogram inter_token;    // between successive token events of a request
  Histogram e2e;            // request arrival -> last token
  std::atomic<int64_t> requests_in_flight{0};
  std::atomic<int64_t> embedding_requests{0};       // /v1/embeddings answered with 200
  std::atomic<int64_t> embedding_prompt_tokens{0};  // their inputs' tokens

  void count_finished(const std::string& finish_reason);
  void count_response(int status);

  struct Snapshot {
    Histogram::Snapshot ttft, inter_token, e2e;
    int64_t requests_in_flight = 0;
    int64_t embedding_requests = 0, embedding_prompt_tokens = 0;
    std::map<std::string, int64_t> finished_by_reason;  // stop, length, abort
    std::map<int, int64_t> responses_by_status;
  };
  Snapshot snapshot() const;

 private:
  mutable std::mutex mu_;  // guards the two maps
  std::map<std::string, int64_t> finished_by_reason_;
  std::map<int, int64_t> responses_by_status_;
};

// The /metrics body: every family with # HELP and # TYPE, names prefixed
// "finmoe_", histograms as _bucket{le=...} (cumulative), _sum and _count;
// then the same quantities under vLLM's names ("vllm:...", counters as
// prometheus_client writes them: family NAME, sample NAME_total), every
// sample labelled model_name.
std::string format_metrics(const EngineStats& engine, const ServerMetrics::Snapshot& server,
                           const std::string& model_name);

}  // namespace finmoe::serve
