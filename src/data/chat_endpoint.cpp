// An OpenAI-compatible chat endpoint with retries and a rate limit
// (finmoe/chat_endpoint.h).
#include "finmoe/chat_endpoint.h"

#include <httplib.h>

#include <chrono>
#include <cmath>
#include <thread>

#include <nlohmann/json.hpp>

#include "finmoe/config.h"
#include "finmoe/error.h"

namespace finmoe {

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void sleep_s(double s) {
  if (s > 0) std::this_thread::sleep_for(std::chrono::duration<double>(s));
}

bool url_ok(const std::string& url) {
  const size_t scheme = url.find("://");
  return !url.empty() && scheme != std::string::npos && scheme + 3 < url.size();
}

}  // namespace

void check_chat_endpoint_options(const ChatEndpointOptions& o, const std::string& url_flag) {
  if (!url_ok(o.url))
    throw Error(url_flag + ": expected http://HOST:PORT[/PATH], got '" + o.url + "'");
  if (o.retries < 0) throw Error("--retries must be >= 0");
  if (!(o.requests_per_s >= 0) || !(o.timeout_s > 0) || !(o.backoff_s >= 0))
    throw Error("--rps >= 0, --timeout > 0, --backoff >= 0");
  if (o.max_tokens < 1) throw Error("--max-tokens must be >= 1");
}

ChatEndpoint::ChatEndpoint(ChatEndpointOptions opt)
    : opt_(std::move(opt)), limiter_(opt_.requests_per_s) {
  if (!url_ok(opt_.url))
    throw Error("endpoint URL: expected http://HOST:PORT[/PATH], got '" + opt_.url + "'");
  const size_t scheme = opt_.url.find("://");
  const size_t slash = opt_.url.find('/', scheme + 3);
  base_ = opt_.url.substr(0, slash);
  std::string prefix = slash == std::string::npos ? "" : opt_.url.substr(slash);
  while (!prefix.empty() && prefix.back() == '/') prefix.pop_back();
  if (prefix.size() >= 3 && prefix.compare(prefix.size() - 3, 3, "/v1") == 0)
    prefix.resize(prefix.size() - 3);
  path_ = prefix + "/v1/chat/completions";
}

std::string ChatEndpoint::chat(const std::string& prompt) {
  const nlohmann::json body = {{"model", opt_.model},
                               {"messages", {{{"role", "user"}, {"content", prompt}}}},
                               {"max_tokens", opt_.max_tokens},
                               {"temperature", opt_.temperature}};
  const std::string payload = body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  httplib::Headers headers;
  if (!opt_.api_key.empty()) headers.emplace("Authorization", "Bearer " + opt_.api_key);
  std::string last;
  for (int attempt = 0; attempt <= opt_.retries; ++attempt) {
    if (attempt > 0) {
      ++retried;
      sleep_s(opt_.backoff_s * std::pow(2.0, attempt - 1));
    }
    sleep_s(limiter_.acquire(now_s()) - now_s());
    httplib::Client cli(base_);
    const auto secs = std::chrono::duration<double>(opt_.timeout_s);
    cli.set_connection_timeout(std::chrono::duration_cast<std::chrono::microseconds>(secs));
    cli.set_read_timeout(std::chrono::duration_cast<std::chrono::microseconds>(secs));
    cli.set_write_timeout(std::chrono::duration_cast<std::chrono::microseconds>(secs));
    ++requests;
    auto res = cli.Post(path_, headers, payload, "application/json");
    if (!res) {
      last = "connection failed (" + httplib::to_string(res.error()) + ")";
      continue;
    }
    if (res->status == 429 || res->status >= 500) {
      last = "HTTP " + std::to_string(res->status) + ": " + res->body.substr(0, 200);
      continue;
    }
    if (res->status != 200)
      throw Error(opt_.url + path_ + ": HTTP " + std::to_string(res->status) + ": " +
                  res->body.substr(0, 300));
    const nlohmann::json j = parse_json(res->body, opt_.url + path_ + " reply");
    if (!j.is_object() || !j.contains("choices") || !j["choices"].is_array() ||
        j["choices"].empty() || !j["choices"][0].is_object() ||
        !j["choices"][0].contains("message") || !j["choices"][0]["message"].is_object() ||
        !j["choices"][0]["message"].contains("content") ||
        !j["choices"][0]["message"]["content"].is_string())
      throw Error(opt_.url + path_ + ": reply without a string choices[0].message.content");
    return j["choices"][0]["message"]["content"].get<std::string>();
  }
  throw Error(opt_.url + path_ + ": gave up after " + std::to_string(opt_.retries + 1) +
              " tries: " + last);
}

std::vector<std::string> numbers_in(const std::string& text) {
  std::vector<std::string> out;
  for (size_t i = 0; i < text.size();) {
    if (text[i] < '0' || text[i] > '9') {
      ++i;
      continue;
    }
    size_t e = i;
    while (e < text.size() &&
           ((text[e] >= '0' && text[e] <= '9') ||
            (text[e] == '.' && e + 1 < text.size() && text[e + 1] >= '0' && text[e + 1] <= '9')))
      ++e;
    out.push_back(text.substr(i, e - i));
    i = e;
  }
  return out;
}

}  // namespace finmoe
