#pragma once
// Load benchmark for serving: many concurrent clients against a running
// `finmoe serve` (HTTP, streaming /v1/completions) or an in-process Engine,
// with the metrics vLLM's serving benchmark reports (TTFT, time per output
// token, inter-token latency, request and token throughput) plus the most
// sequences the engine ran together within its KV budget.
//
// Prompts are random token ids of exactly input_len tokens, the first
// shared_prefix_ratio of them common to all prompts; every request asks for
// exactly output_len tokens (greedy, eos ignored), so runs are comparable.
//
// Thread safety: a target's run() is called from many client threads at once.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "finmoe/engine.h"

namespace finmoe {

struct ServeBenchOptions {
  int64_t num_prompts = 64;          // requests per run
  int64_t input_len = 1024;          // prompt tokens (YouZhi's setting; scale down on CPU)
  int64_t output_len = 1024;         // generated tokens per request
  double shared_prefix_ratio = 0.0;  // leading fraction of every prompt that is identical
  double request_rate = 0;           // Poisson arrivals per second; 0 = closed loop
  int64_t concurrency = 16;          // clients = requests in flight at most
  uint64_t seed = 0;                 // prompts and arrival times
  bool progress = true;              // a progress line with ETA on stderr
};

// One request as a client saw it (seconds from its own start).
struct RequestRecord {
  bool ok = false;
  std::string error;
  double ttft = 0, e2e = 0;
  std::vector<double> itl;  // gaps between successive token events
  int64_t prompt_tokens = 0, output_tokens = 0;
};

// What the serving side reports about itself (engine stats, or /metrics).
struct ServeSideStats {
  int64_t max_running_seen = 0;
  int64_t kv_capacity_tokens = 0, kv_full_length_seqs = 0;
  int64_t prefix_query_tokens = 0, prefix_hit_tokens = 0;
  int64_t preemptions = 0;
  int64_t max_model_len = 0;
};

// Where the requests go.
class ServeBenchTarget {
 public:
  virtual ~ServeBenchTarget() = default;
  virtual std::string describe() const = 0;
  virtual int64_t vocab_size() const = 0;
  // One request to completion; blocks. Never throws for a failed request
  // (RequestRecord::ok, ::error).
  virtual RequestRecord run(const std::vector<int32_t>& prompt, int64_t max_tokens) = 0;
  virtual ServeSideStats side_stats() = 0;
};

// The engine must be started (Engine::start) while the benchmark runs.
std::unique_ptr<ServeBenchTarget> make_engine_target(Engine& engine, int64_t vocab_size, int64_t max_model_len);
// A server at `url` (http://host:port); reads the model id, context length
// and vocabulary from /v1/models and the server's stats from /metrics.
// Throws Error if the server does not answer.
std::unique_ptr<ServeBenchTarget> make_http_target(const std::string& url, const std::string& api_key = "");

struct LatencyStats {
  double mean = 0, p50 = 0, p90 = 0, p99 = 0;  // milliseconds
};

struct ServeBenchResult {
  ServeBenchOptions options;
  std::string target;
  int64_t completed = 0, failed = 0;
  std::string first_error;
  double duration_s = 0;
  int64_t input_tokens = 0, output_tokens = 0;
  double request_throughput = 0;      // completed requests / s
  double output_throughput = 0;       // generated tokens / s
  double total_token_throughput = 0;  // (prompt + generated) / s
  LatencyStats ttft, tpot, itl, e2e;
  int64_t max_concurrent_requests = 0;  // in flight at once, client side
  ServeSideStats side;                  // after the run
  double prefix_hit_rate = 0;           // in this run

  nlohmann::json to_json() const;
};

ServeBenchResult bench_serve(ServeBenchTarget& target, const ServeBenchOptions& options);

// Percentile of `v` (0..100) with linear interpolation (numpy's default); 0 for empty.
double percentile(std::vector<double> v, double q);

// The readable table of several runs; with `compare`, each run's output
// throughput as a ratio to the first (batch-1 sequential) run.
std::string format_serve_bench_table(const std::vector<ServeBenchResult>& runs, bool compare);

}  // namespace finmoe
