#pragma once
// An OpenAI-compatible chat endpoint run inside a test (cpp-httplib): each
// request's user message goes to `reply`; the first `fail_first` requests,
// and those after `fail_after`, fail with `status`.
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

namespace finmoe::datatest {

class FakeChat {
 public:
  explicit FakeChat(std::function<std::string(const std::string&)> reply)
      : reply_(std::move(reply)) {
    server_.Post("/v1/chat/completions", [this](const httplib::Request& req,
                                                httplib::Response& res) {
      const int64_t n = ++requests;
      if (n <= fail_first || (fail_after >= 0 && n > fail_after)) {
        res.status = status;
        res.set_content("{\"error\": {\"message\": \"busy\"}}", "application/json");
        return;
      }
      const auto body = nlohmann::json::parse(req.body);
      const std::string prompt = body["messages"][0]["content"];
      {
        std::lock_guard<std::mutex> lock(mu);
        prompts.push_back(prompt);
      }
      res.set_content(
          nlohmann::json{
              {"choices", {{{"message", {{"role", "assistant"}, {"content", reply_(prompt)}}}}}}}
              .dump(),
          "application/json");
    });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    while (!server_.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ~FakeChat() {
    server_.stop();
    thread_.join();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }

  std::atomic<int64_t> requests{0};
  int64_t fail_first = 0;
  int64_t fail_after = -1;
  int status = 503;
  std::mutex mu;
  std::vector<std::string> prompts;  // guarded by mu

 private:
  std::function<std::string(const std::string&)> reply_;
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
};

}  // namespace finmoe::datatest
