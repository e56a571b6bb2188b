#pragma once
// Pieces of the HTTP server (server.h) that need no socket: the hand-off of
// engine events to the HTTP worker answering the request, and the API-key
// check.
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "finmoe/engine.h"
#include "serve/metrics.h"

namespace finmoe::serve {

// The events of one HTTP request's engine requests (its choices), from the
// engine thread (push) to the HTTP worker (wait). push() also records the
// request's latencies (TTFT, inter-token, end-to-end) in `metrics`.
// Thread safety: push and wait may run concurrently; guarded by mu_.
class OutputChannel {
 public:
  using Clock = std::chrono::steady_clock;
  OutputChannel(int64_t num_choices, ServerMetrics* metrics, Clock::time_point arrival);

  void push(int64_t choice, const RequestOutput& out);
  // The events queued so far, waiting up to `timeout` for the first one.
  std::vector<std::pair<int64_t, RequestOutput>> wait(std::chrono::milliseconds timeout);
  bool all_finished() const;

 private:
  mutable std::mutex mu_;  // guards everything below
  std::condition_variable cv_;
  std::deque<std::pair<int64_t, RequestOutput>> queue_;
  std::vector<Clock::time_point> last_token_;  // per choice; epoch = no token yet
  std::vector<bool> finished_;
  ServerMetrics* metrics_;
  Clock::time_point arrival_;
};

// Whether an Authorization header value carries `api_key` as a Bearer token
// (compared in constant time). An empty api_key authorizes everything.
bool authorized(const std::string& authorization, const std::string& api_key);

}  // namespace finmoe::serve
