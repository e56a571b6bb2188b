// finmoe bench serve: concurrent clients against an engine or an HTTP server.
#include "finmoe/serve_bench.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <iomanip>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>

#include <httplib.h>

#include "core/progress.h"
#include "finmoe/error.h"

namespace finmoe {
namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// ---- in-process engine ---------------------------------------------------

class EngineTarget : public ServeBenchTarget {
 public:
  EngineTarget(Engine& e, int64_t vocab, int64_t max_model_len) : engine_(e), vocab_(vocab), max_len_(max_model_len) {}
  std::string describe() const override { return "in-process engine"; }
  int64_t vocab_size() const override { return vocab_; }

  RequestRecord run(const std::vector<int32_t>& prompt, int64_t max_tokens) override {
    struct State {
      std::mutex mu;
      std::condition_variable cv;
      bool done = false;
      RequestRecord rec;
      Clock::time_point start = Clock::now(), last;
    };
    auto st = std::make_shared<State>();
    RequestParams p;
    p.sampling.temperature = 0;
    p.max_tokens = max_tokens;  // no stop tokens: exactly max_tokens
    try {
      engine_.submit(prompt, p, [st](const RequestOutput& o) {
        std::lock_guard lock(st->mu);
        const auto now = Clock::now();
        const double t = std::chrono::duration<double>(now - st->start).count();
        if (!o.token_ids.empty()) {
          if (st->last == Clock::time_point{}) st->rec.ttft = t;
          else st->rec.itl.push_back(std::chrono::duration<double>(now - st->last).count());
          st->last = now;
        }
        if (o.finished) {
          st->rec.ok = o.finish_reason != "abort";
          if (!st->rec.ok) st->rec.error = "aborted";
          st->rec.e2e = t;
          st->rec.prompt_tokens = o.prompt_tokens;
          st->rec.output_tokens = o.completion_tokens;
          st->done = true;
          st->cv.notify_all();
        }
      });
    } catch (const Error& e) {
      RequestRecord r;
      r.error = e.what();
      return r;
    }
    std::unique_lock lock(st->mu);
    st->cv.wait(lock, [&] { return st->done; });
    return st->rec;
  }

  ServeSideStats side_stats() override {
    const EngineStats s = engine_.stats();
    ServeSideStats out;
    out.max_running_seen = s.max_running_seen;
    out.kv_capacity_tokens = s.max_tokens_in_cache;
    out.kv_full_length_seqs = s.max_full_length_seqs;
    out.prefix_query_tokens = s.prefix_query_tokens;
    out.prefix_hit_tokens = s.prefix_hit_tokens;
    out.preemptions = s.preemptions;
    out.max_model_len = max_len_;
    return out;
  }

 private:
  Engine& engine_;
  int64_t vocab_, max_len_;
};

// ---- HTTP ------------------------------------------------------------------

class HttpTarget : public ServeBenchTarget {
 public:
  HttpTarget(std::string url, std::string api_key) : url_(std::move(url)), key_(std::move(api_key)) {
    while (!url_.empty() && url_.back() == '/') url_.pop_back();
    if (url_.size() > 3 && url_.compare(url_.size() - 3, 3, "/v1") == 0) url_.resize(url_.size() - 3);
    auto cli = client();
    auto res = cli->Get("/v1/models", headers());
    if (!res) throw Error("bench serve: no answer from " + url_ + " (" + httplib::to_string(res.error()) + ")");
    if (res->status != 200)
      throw Error("bench serve: GET " + url_ + "/v1/models returned " + std::to_string(res->status) + ": " + res->body);
    const auto j = nlohmann::json::parse(res->body, nullptr, false);
    if (j.is_discarded() || !j.contains("data") || j["data"].empty())
      throw Error("bench serve: " + url_ + "/v1/models lists no model");
    const auto& m = j["data"][0];
    model_ = m.value("id", "");
    max_len_ = m.value("max_model_len", int64_t(0));
    vocab_ = m.value("vocab_size", int64_t(32000));  // finmoe reports it; others: a common size
  }

  std::string describe() const override { return url_ + " (model " + model_ + ")"; }
  int64_t vocab_size() const override { return vocab_; }

  RequestRecord run(const std::vector<int32_t>& prompt, int64_t max_tokens) override {
    RequestRecord rec;
    const nlohmann::json body = {{"model", model_},      {"prompt", prompt},   {"max_tokens", max_tokens},
                                 {"temperature", 0},      {"ignore_eos", true}, {"stream", true},
                                 {"stream_options", {{"include_usage", true}}}};
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.headers = headers();
    req.set_header("Content-Type", "application/json");
    req.body = body.dump();
    std::string buf, raw;
    bool done = false;
    Clock::time_point last;
    const auto start = Clock::now();
    req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
      if (raw.size() < 4096) raw.append(data, std::min(n, 4096 - raw.size()));  // for error messages
      buf.append(data, n);
      for (size_t end; (end = buf.find("\n\n")) != std::string::npos; buf.erase(0, end + 2)) {
        const std::string ev = buf.substr(0, end);
        if (ev.rfind("data: ", 0) != 0) continue;
        if (ev == "data: [DONE]") {
          done = true;
          continue;
        }
        const auto j = nlohmann::json::parse(ev.substr(6), nullptr, false);
        if (j.is_discarded()) continue;
        if (j.contains("usage") && j["usage"].is_object()) {
          rec.prompt_tokens = j["usage"].value("prompt_tokens", int64_t(0));
          rec.output_tokens = j["usage"].value("completion_tokens", int64_t(0));
        }
        if (!j.contains("choices") || j["choices"].empty()) continue;
        const auto now = Clock::now();
        if (last == Clock::time_point{}) rec.ttft = std::chrono::duration<double>(now - start).count();
        else rec.itl.push_back(std::chrono::duration<double>(now - last).count());
        last = now;
      }
      return true;
    };
    httplib::Response res;
    httplib::Error err = httplib::Error::Success;
    auto cli = client();
    const bool sent = cli->send(req, res, err);
    rec.e2e = since(start);
    if (!sent) {
      rec.error = "HTTP error: " + httplib::to_string(err);
    } else if (res.status != 200) {
      rec.error = "HTTP " + std::to_string(res.status) + ": " + raw;
    } else if (!done) {
      rec.error = "stream ended without [DONE]";
    } else {
      rec.ok = true;
    }
    return rec;
  }

  ServeSideStats side_stats() override {
    ServeSideStats s;
    s.max_model_len = max_len_;
    auto res = client()->Get("/metrics", headers());
    if (!res || res->status != 200) return s;
    std::istringstream in(res->body);
    std::string line;
    while (std::getline(in, line)) {
      if (line.empty() || line[0] == '#') continue;
      const size_t sp = line.rfind(' ');
      const std::string name = line.substr(0, line.find_first_of("{ "));
      const auto v = int64_t(std::atof(line.c_str() + sp + 1));
      if (name == "finmoe_num_requests_running_max") s.max_running_seen = v;
      else if (name == "finmoe_kv_cache_capacity_tokens") s.kv_capacity_tokens = v;
      else if (name == "finmoe_kv_cache_full_length_seqs") s.kv_full_length_seqs = v;
      else if (name == "finmoe_prefix_cache_queries_tokens_total") s.prefix_query_tokens = v;
      else if (name == "finmoe_prefix_cache_hits_tokens_total") s.prefix_hit_tokens = v;
      else if (name == "finmoe_num_preemptions_total") s.preemptions = v;
    }
    return s;
  }

 private:
  std::unique_ptr<httplib::Client> client() const {
    auto c = std::make_unique<httplib::Client>(url_);
    c->set_connection_timeout(10);
    c->set_read_timeout(3600);
    c->set_write_timeout(60);
    return c;
  }
  httplib::Headers headers() const {
    if (key_.empty()) return {};
    return {{"Authorization", "Bearer " + key_}};
  }

  std::string url_, key_, model_;
  int64_t max_len_ = 0, vocab_ = 0;
};

LatencyStats latency(const std::vector<double>& seconds) {
  LatencyStats s;
  if (seconds.empty()) return s;
  double sum = 0;
  for (double v : seconds) sum += v;
  s.mean = 1e3 * sum / double(seconds.size());
  s.p50 = 1e3 * percentile(seconds, 50);
  s.p90 = 1e3 * percentile(seconds, 90);
  s.p99 = 1e3 * percentile(seconds, 99);
  return s;
}

nlohmann::json latency_json(const LatencyStats& s) {
  return {{"mean", s.mean}, {"p50", s.p50}, {"p90", s.p90}, {"p99", s.p99}};
}

}  // namespace

std::unique_ptr<ServeBenchTarget> make_engine_target(Engine& engine, int64_t vocab_size, int64_t max_model_len) {
  return std::make_unique<EngineTarget>(engine, vocab_size, max_model_len);
}

std::unique_ptr<ServeBenchTarget> make_http_target(const std::string& url, const std::string& api_key) {
  return std::make_unique<HttpTarget>(url, api_key);
}

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double pos = q / 100.0 * double(v.size() - 1);
  const auto lo = size_t(std::floor(pos));
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - double(lo));
}

ServeBenchResult bench_serve(ServeBenchTarget& target, const ServeBenchOptions& o) {
  if (o.num_prompts < 1 || o.input_len < 1 || o.output_len < 1 || o.concurrency < 1)
    throw Error("bench serve: num_prompts, input_len, output_len and concurrency must be >= 1");
  if (!(o.shared_prefix_ratio >= 0 && o.shared_prefix_ratio <= 1))
    throw Error("bench serve: shared_prefix_ratio must be in [0, 1]");
  if (!(o.request_rate >= 0)) throw Error("bench serve: request_rate must be >= 0");

  // prompts: a common prefix, then per-request random ids
  std::mt19937_64 rng(o.seed);
  const int64_t V = std::max<int64_t>(2, target.vocab_size());
  std::uniform_int_distribution<int32_t> token(0, int32_t(V - 1));
  const auto n_shared = int64_t(std::llround(o.shared_prefix_ratio * double(o.input_len)));
  std::vector<int32_t> shared(static_cast<size_t>(n_shared), 0);
  for (auto& t : shared) t = token(rng);
  std::vector<std::vector<int32_t>> prompts(size_t(o.num_prompts));
  for (auto& p : prompts) {
    p = shared;
    while (int64_t(p.size()) < o.input_len) p.push_back(token(rng));
  }
  // Poisson arrivals: exponential gaps at request_rate; closed loop: all at 0
  std::vector<double> arrival(size_t(o.num_prompts), 0.0);
  if (o.request_rate > 0) {
    std::exponential_distribution<double> gap(o.request_rate);
    double t = 0;
    for (auto& a : arrival) a = (t += gap(rng));
    const double first = arrival[0];
    for (auto& a : arrival) a -= first;
  }

  const ServeSideStats before = target.side_stats();
  std::vector<RequestRecord> records(prompts.size());
  std::atomic<int64_t> next{0}, finished{0}, in_flight{0}, max_in_flight{0};
  const auto t0 = Clock::now();
  auto client = [&] {
    while (true) {
      const int64_t i = next++;
      if (i >= o.num_prompts) return;
      const auto at = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(arrival[size_t(i)]));
      std::this_thread::sleep_until(at);
      const int64_t now_in = ++in_flight;
      for (int64_t m = max_in_flight.load(); now_in > m && !max_in_flight.compare_exchange_weak(m, now_in);) {
      }
      records[size_t(i)] = target.run(prompts[size_t(i)], o.output_len);
      --in_flight;
      ++finished;
    }
  };
  std::vector<std::thread> clients;
  for (int64_t c = 0; c < std::min(o.concurrency, o.num_prompts); ++c) clients.emplace_back(client);
  {
    std::unique_ptr<Progress> progress;
    if (o.progress)
      progress = std::make_unique<Progress>("bench serve c=" + std::to_string(o.concurrency), o.num_prompts, "req");
    while (finished.load() < o.num_prompts) {
      if (progress) progress->update(finished.load());
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    if (progress) progress->finish();
  }
  for (auto& t : clients) t.join();

  ServeBenchResult r;
  r.options = o;
  r.target = target.describe();
  r.duration_s = since(t0);
  std::vector<double> ttft, tpot, itl, e2e;
  for (const auto& rec : records) {
    if (!rec.ok) {
      ++r.failed;
      if (r.first_error.empty()) r.first_error = rec.error;
      continue;
    }
    ++r.completed;
    r.input_tokens += rec.prompt_tokens;
    r.output_tokens += rec.output_tokens;
    ttft.push_back(rec.ttft);
    e2e.push_back(rec.e2e);
    if (rec.output_tokens > 1) tpot.push_back((rec.e2e - rec.ttft) / double(rec.output_tokens - 1));
    itl.insert(itl.end(), rec.itl.begin(), rec.itl.end());
  }
  r.request_throughput = double(r.completed) / r.duration_s;
  r.output_throughput = double(r.output_tokens) / r.duration_s;
  r.total_token_throughput = double(r.input_tokens + r.output_tokens) / r.duration_s;
  r.ttft = latency(ttft);
  r.tpot = latency(tpot);
  r.itl = latency(itl);
  r.e2e = latency(e2e);
  r.max_concurrent_requests = max_in_flight.load();
  r.side = target.side_stats();
  const int64_t q = r.side.prefix_query_tokens - before.prefix_query_tokens;
  r.prefix_hit_rate = q > 0 ? double(r.side.prefix_hit_tokens - before.prefix_hit_tokens) / double(q) : 0.0;
  return r;
}

nlohmann::json ServeBenchResult::to_json() const {
  return {{"target", target},
          {"num_prompts", options.num_prompts},
          {"input_len", options.input_len},
          {"output_len", options.output_len},
          {"shared_prefix_ratio", options.shared_prefix_ratio},
          {"request_rate", options.request_rate},
          {"concurrency", options.concurrency},
          {"completed", completed},
          {"failed", failed},
          {"first_error", first_error},
          {"duration_s", duration_s},
          {"input_tokens", input_tokens},
          {"output_tokens", output_tokens},
          {"request_throughput", request_throughput},
          {"output_throughput", output_throughput},
          {"total_token_throughput", total_token_throughput},
          {"ttft_ms", latency_json(ttft)},
          {"tpot_ms", latency_json(tpot)},
          {"itl_ms", latency_json(itl)},
          {"e2e_ms", latency_json(e2e)},
          {"max_concurrent_requests", max_concurrent_requests},
          {"max_running_seqs", side.max_running_seen},
          {"kv_capacity_tokens", side.kv_capacity_tokens},
          {"kv_full_length_seqs", side.kv_full_length_seqs},
          {"kv_seqs_at_this_length",
           side.kv_capacity_tokens / std::max<int64_t>(1, options.input_len + options.output_len)},
          {"prefix_hit_rate", prefix_hit_rate},
          {"preemptions_total", side.preemptions}};
}

std::string format_serve_bench_table(const std::vector<ServeBenchResult>& runs, bool compare) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(1);
  if (!runs.empty()) {
    const auto& o = runs[0].options;
    s << "target " << runs[0].target << "\ninput " << o.input_len << " tokens, output " << o.output_len
      << " tokens, shared prefix " << std::setprecision(0) << 100 * o.shared_prefix_ratio << "%, "
      << (o.request_rate > 0 ? "Poisson " + std::to_string(o.request_rate) + " req/s" : std::string("closed loop"))
      << std::setprecision(1) << "\nKV cache " << runs[0].side.kv_capacity_tokens << " tokens = "
      << runs[0].side.kv_capacity_tokens / std::max<int64_t>(1, o.input_len + o.output_len)
      << " sequences of input+output\n\n";
  }
  s << std::setw(7) << "clients" << std::setw(6) << "reqs" << std::setw(6) << "fail" << std::setw(9) << "req/s"
    << std::setw(10) << "out tok/s" << std::setw(10) << "tot tok/s" << std::setw(10) << "TTFT p50" << std::setw(10)
    << "TTFT p99" << std::setw(10) << "TPOT p50" << std::setw(10) << "TPOT p99" << std::setw(9) << "ITL p50"
    << std::setw(9) << "ITL p99" << std::setw(9) << "max run";
  if (compare) s << std::setw(9) << "speedup";
  s << "\n";
  for (const auto& r : runs) {
    s << std::setw(7) << r.options.concurrency << std::setw(6) << r.completed << std::setw(6) << r.failed
      << std::setprecision(2) << std::setw(9) << r.request_throughput << std::setprecision(1) << std::setw(10)
      << r.output_throughput << std::setw(10) << r.total_token_throughput << std::setw(10) << r.ttft.p50
      << std::setw(10) << r.ttft.p99 << std::setw(10) << r.tpot.p50 << std::setw(10) << r.tpot.p99 << std::setw(9)
      << r.itl.p50 << std::setw(9) << r.itl.p99 << std::setw(9) << r.side.max_running_seen;
    if (compare)
      s << std::setw(8) << std::setprecision(2)
        << (runs[0].output_throughput > 0 ? r.output_throughput / runs[0].output_throughput : 0.0) << "x"
        << std::setprecision(1);
    s << "\n";
  }
  s << "(latencies in ms; TPOT = (e2e - TTFT) / (output tokens - 1); max run = most sequences the engine ran at once)\n";
  for (const auto& r : runs)
    if (!r.first_error.empty()) s << "clients " << r.options.concurrency << ": first error: " << r.first_error << "\n";
  return s.str();
}

}  // namespace finmoe
