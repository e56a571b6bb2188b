#pragma once
// An OpenAI-compatible chat endpoint (`finmoe serve` or any other) as the
// data tools call it: `finmoe data selfqa`, `persona --url`, `refusal
// --model-url`. One user message in, the reply's text out; connection
// errors, timeouts, 429 and 5xx retried with exponential backoff; request
// starts spaced by a shared rate limit. docs/data_tools.md.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace finmoe {

struct ChatEndpointOptions {
  std::string url;  // base URL, e.g. http://127.0.0.1:8000 (POST URL/v1/chat/completions)
  std::string model = "finmoe";
  std::string api_key;  // sent as "Authorization: Bearer KEY" when set
  int max_tokens = 512;
  double temperature = 0.7;
  int retries = 4;            // after the first try, on connection errors, timeouts, 429 and 5xx
  double backoff_s = 0.5;     // first wait; doubled per retry
  double timeout_s = 120;     // per request (connect, read, write)
  double requests_per_s = 0;  // 0: no limit; shared by all workers
};

// Throws Error naming the flag (`tool`: the command, for the message) when
// an option is out of range or the URL is not http(s)://HOST[:PORT][/PATH].
void check_chat_endpoint_options(const ChatEndpointOptions& o, const std::string& tool);

// Spacing of request starts to at most `rate` per second across threads.
// acquire(now) returns the time the caller may start (>= now).
class RateLimiter {
 public:
  explicit RateLimiter(double rate) : interval_(rate > 0 ? 1.0 / rate : 0.0) {}
  double acquire(double now) {
    std::lock_guard<std::mutex> lock(mu_);
    const double start = std::max(now, next_);
    next_ = start + interval_;
    return start;
  }

 private:
  std::mutex mu_;
  double interval_;
  double next_ = 0;  // guarded by mu_
};

// Safe to call from several threads at once (the counters are atomic; the
// limiter has its own lock). Keeps a copy of the options.
class ChatEndpoint {
 public:
  explicit ChatEndpoint(ChatEndpointOptions opt);
  // The reply's choices[0].message.content. Throws Error naming the URL: a
  // 4xx other than 429 at once, other failures after `retries` retries.
  std::string chat(const std::string& prompt);

  std::atomic<int64_t> requests{0}, retried{0};

 private:
  ChatEndpointOptions opt_;
  RateLimiter limiter_;
  std::string base_, path_;
};

// The numbers of a text (digit runs with their decimal part, in order):
// what the data tools check a model's rewrite keeps and does not add to.
std::vector<std::string> numbers_in(const std::string& text);

}  // namespace finmoe
