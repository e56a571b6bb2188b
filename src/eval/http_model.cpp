// The evaluation harness against an OpenAI-compatible server: generate_until
// through POST /v1/completions (greedy, the task's stop strings), requests in
// flight in parallel, each retried before a clear error.
#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>

#include <httplib.h>

#include "finmoe/error.h"
#include "finmoe/eval_model.h"

namespace finmoe::eval {

namespace {

using nlohmann::json;

class HttpModel : public LanguageModel {
 public:
  explicit HttpModel(HttpModelOptions o) : o_(std::move(o)) {
    while (!o_.url.empty() && o_.url.back() == '/') o_.url.pop_back();
    if (o_.url.size() > 3 && o_.url.compare(o_.url.size() - 3, 3, "/v1") == 0)
      o_.url.resize(o_.url.size() - 3);
    if (o_.url.rfind("http://", 0) != 0 && o_.url.rfind("https://", 0) != 0)
      throw Error("--model-url must start with http:// or https://, got '" + o_.url + "'");
  }
  std::string name() const override { return o_.url; }

  std::vector<LlResult> loglikelihood(const std::vector<Request>&,
                                      const std::function<void(int64_t)>&) override {
    throw Error(
        "--model-url: loglikelihood tasks (multiple_choice, loglikelihood) need a local model; "
        "the endpoint is used for generate_until tasks");
  }
  std::vector<LlResult> loglikelihood_rolling(const std::vector<Request>&, int64_t,
                                              const std::function<void(int64_t)>&) override {
    throw Error("--model-url: loglikelihood_rolling tasks need a local model");
  }

  std::vector<std::string> generate_until(const std::vector<Request>& reqs,
                                          const std::function<void(int64_t)>& progress) override {
    std::vector<std::string> out(reqs.size());
    std::atomic<size_t> next{0};
    std::atomic<int64_t> done{0};
    std::mutex mu;
    std::string first_error;
    auto worker = [&] {
      while (true) {
        const size_t i = next++;
        if (i >= reqs.size()) return;
        {
          std::lock_guard<std::mutex> l(mu);
          if (!first_error.empty()) return;
        }
        try {
          out[i] = complete(reqs[i]);
        } catch (const std::exception& e) {
          std::lock_guard<std::mutex> l(mu);
          if (first_error.empty()) first_error = "request " + std::to_string(i) + ": " + e.what();
          return;
        }
        ++done;
      }
    };
    std::vector<std::thread> pool;
    const int64_t n = std::max<int64_t>(1, std::min<int64_t>(o_.batch_size, int64_t(reqs.size())));
    for (int64_t t = 0; t < n; ++t) pool.emplace_back(worker);
    int64_t shown = -1;
    while (true) {
      const int64_t d = done.load();
      if (progress && d != shown) progress(shown = d);
      bool finished;
      {
        std::lock_guard<std::mutex> l(mu);
        finished = d == int64_t(reqs.size()) || !first_error.empty();
      }
      if (finished) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    for (auto& t : pool) t.join();
    if (!first_error.empty()) throw Error("--model-url " + o_.url + ": " + first_error);
    if (progress) progress(done.load());
    return out;
  }

 private:
  std::string complete(const Request& r) const {
    json body = {{"prompt", r.context}, {"max_tokens", r.max_gen_toks}, {"temperature", 0}};
    if (!o_.model.empty()) body["model"] = o_.model;  // else the server's one model
    json stop = json::array();
    for (const auto& s : r.until)
      if (!s.empty() && stop.size() < 4) stop.push_back(s);
    if (!stop.empty()) body["stop"] = stop;
    std::string last;
    for (int attempt = 0; attempt <= o_.retries; ++attempt) {
      if (attempt > 0) std::this_thread::sleep_for(std::chrono::milliseconds(500 * attempt));
      httplib::Client c(o_.url);
      const auto secs = std::chrono::duration<double>(o_.timeout_s);
      c.set_connection_timeout(std::chrono::duration_cast<std::chrono::microseconds>(
          std::min(secs, std::chrono::duration<double>(30))));
      c.set_read_timeout(std::chrono::duration_cast<std::chrono::microseconds>(secs));
      httplib::Headers h;
      if (!o_.api_key.empty()) h.emplace("Authorization", "Bearer " + o_.api_key);
      auto res = c.Post("/v1/completions", h, body.dump(), "application/json");
      if (!res) {
        last = "no response (" + httplib::to_string(res.error()) + ")";
        continue;
      }
      if (res->status != 200) {
        last = "HTTP " + std::to_string(res->status) + ": " + res->body.substr(0, 300);
        if (res->status >= 400 && res->status < 500 && res->status != 429) break;  // not retried
        continue;
      }
      json j;
      try {
        j = json::parse(res->body);
      } catch (const json::exception&) {
        last = "the response is not JSON";
        continue;
      }
      if (!j.contains("choices") || !j["choices"].is_array() || j["choices"].empty() ||
          !j["choices"][0].contains("text") || !j["choices"][0]["text"].is_string()) {
        last = "the response has no choices[0].text";
        continue;
      }
      std::string text = j["choices"][0]["text"].get<std::string>();
      for (const auto& s : r.until)  // a server may return the stop string or ignore `stop`
        if (!s.empty())
          if (const size_t p = text.find(s); p != std::string::npos) text.resize(p);
      return text;
    }
    throw Error(last + " after " + std::to_string(o_.retries + 1) + " attempts");
  }

  HttpModelOptions o_;
};

}  // namespace

std::unique_ptr<LanguageModel> make_http_model(const HttpModelOptions& options) {
  return std::make_unique<HttpModel>(options);
}

}  // namespace finmoe::eval
