#include "serve/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>

#include "finmoe/error.h"

namespace finmoe::serve {

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {
  for (size_t i = 1; i < bounds_.size(); ++i)
    if (!(bounds_[i] > bounds_[i - 1])) throw Error("Histogram: bounds must be strictly increasing");
}

void Histogram::observe(double v) {
  // first bucket whose upper bound is >= v (Prometheus buckets are "le")
  const size_t b = size_t(std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin());
  std::lock_guard lock(mu_);
  ++counts_[b];
  sum_ += v;
  ++count_;
}

Histogram::Snapshot Histogram::snapshot() const {
  std::lock_guard lock(mu_);
  return {bounds_, counts_, sum_, count_};
}

// Bucket bounds as vLLM uses for the same quantities.
ServerMetrics::ServerMetrics()
    : ttft({0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
            40.0, 80.0, 160.0, 640.0, 2560.0}),
      inter_token({0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                   40.0, 80.0}),
      e2e({0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0,
           960.0, 1920.0, 7680.0}) {}

void ServerMetrics::count_finished(const std::string& reason) {
  std::lock_guard lock(mu_);
  ++finished_by_reason_[reason];
}

void ServerMetrics::count_response(int status) {
  std::lock_guard lock(mu_);
  ++responses_by_status_[status];
}

ServerMetrics::Snapshot ServerMetrics::snapshot() const {
  Snapshot s;
  s.ttft = ttft.snapshot();
  s.inter_token = inter_token.snapshot();
  s.e2e = e2e.snapshot();
  s.requests_in_flight = requests_in_flight.load();
  s.embedding_requests = embedding_requests.load();
  s.embedding_prompt_tokens = embedding_prompt_tokens.load();
  std::lock_guard lock(mu_);
  s.finished_by_reason = finished_by_reason_;
  s.responses_by_status = responses_by_status_;
  return s;
}

namespace {

// Shortest text that reads back as the same double; Prometheus' +Inf/-Inf/NaN.
std::string number(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, r.ptr);
}

// A label value with \ " and newline escaped.
std::string escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

class Writer {
 public:
  explicit Writer(const std::string& model) : model_label_("model_name=\"" + escape(model) + "\"") {}

  void family(const std::string& name, const char* type, const std::string& help) {
    out_ += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
  }
  void sample(const std::string& name, double v, const std::string& extra_labels = "") {
    out_ += name + "{" + model_label_ + (extra_labels.empty() ? "" : "," + extra_labels) + "} " + number(v) + "\n";
  }
  void gauge(const std::string& name, double v, const std::string& help) {
    family(name, "gauge", help);
    sample(name, v);
  }
  void counter(const std::string& name, double v, const std::string& help) {
    family(name, "counter", help);
    sample(name, v);
  }
  // A counter as Python's prometheus_client writes it (vLLM's): the family
  // without the _total suffix its sample has.
  void counter_total(const std::string& family_name, double v, const std::string& help) {
    family(family_name, "counter", help);
    sample(family_name + "_total", v);
  }
  void histogram(const std::string& name, const Histogram::Snapshot& h, const std::string& help) {
    family(name, "histogram", help);
    uint64_t cumulative = 0;
    for (size_t i = 0; i < h.counts.size(); ++i) {
      cumulative += h.counts[i];
      const double le = i < h.bounds.size() ? h.bounds[i] : INFINITY;
      sample(name + "_bucket", double(cumulative), "le=\"" + number(le) + "\"");
    }
    sample(name + "_sum", h.sum);
    sample(name + "_count", double(h.count));
  }
  std::string str() && { return std::move(out_); }

 private:
  std::string model_label_;
  std::string out_;
};

}  // namespace

std::string format_metrics(const EngineStats& e, const ServerMetrics::Snapshot& s, const std::string& model_name) {
  Writer w(model_name);
  w.gauge("finmoe_num_requests_running", double(e.running), "Sequences in the running batch.");
  w.gauge("finmoe_num_requests_waiting", double(e.waiting), "Sequences waiting to be scheduled (queued or preempted).");
  w.gauge("finmoe_num_requests_running_max", double(e.max_running_seen),
          "The most sequences that ran together since the server started.");
  w.gauge("finmoe_http_requests_in_flight", double(s.requests_in_flight),
          "Completion and embedding requests the HTTP server is answering.");
  w.gauge("finmoe_kv_cache_blocks_total", double(e.num_blocks), "KV-cache blocks.");
  w.gauge("finmoe_kv_cache_blocks_used", double(e.blocks_used), "KV-cache blocks held by sequences.");
  w.gauge("finmoe_kv_cache_blocks_free", double(e.blocks_free), "KV-cache blocks free (cached prefixes included).");
  w.gauge("finmoe_kv_cache_block_size_tokens", double(e.block_size), "Tokens per KV-cache block.");
  w.gauge("finmoe_kv_cache_usage_ratio", e.num_blocks > 0 ? double(e.blocks_used) / double(e.num_blocks) : 0.0,
          "Fraction of KV-cache blocks in use (1 = full).");
  w.gauge("finmoe_kv_cache_capacity_tokens", double(e.max_tokens_in_cache), "Tokens the KV cache holds.");
  w.gauge("finmoe_kv_cache_full_length_seqs", double(e.max_full_length_seqs),
          "Sequences of the maximum model length that fit in the KV cache at once.");
  w.counter("finmoe_prefix_cache_queries_tokens_total", double(e.prefix_query_tokens),
            "Prompt tokens looked up in the prefix cache.");
  w.counter("finmoe_prefix_cache_hits_tokens_total", double(e.prefix_hit_tokens),
            "Prompt tokens found in the prefix cache.");
  w.gauge("finmoe_prefix_cache_hit_rate",
          e.prefix_query_tokens > 0 ? double(e.prefix_hit_tokens) / double(e.prefix_query_tokens) : 0.0,
          "Prefix-cache hits over queries, in tokens, since the server started.");
  w.counter("finmoe_prompt_tokens_total", double(e.prompt_tokens), "Prompt tokens prefilled.");
  w.counter("finmoe_generation_tokens_total", double(e.generation_tokens), "Tokens generated.");
  w.counter("finmoe_embedding_requests_total", double(s.embedding_requests), "/v1/embeddings requests answered.");
  w.counter("finmoe_embedding_prompt_tokens_total", double(s.embedding_prompt_tokens),
            "Input tokens of the answered /v1/embeddings requests.");
  w.counter("finmoe_num_preemptions_total", double(e.preemptions),
            "Sequences preempted for lack of KV-cache blocks (recomputed later).");
  w.counter("finmoe_engine_steps_total", double(e.steps), "Scheduler steps run.");
  w.counter("finmoe_requests_cancelled_total", double(e.requests_cancelled),
            "Engine requests cancelled (client gone, shutdown).");
  w.family("finmoe_request_success_total", "counter", "Engine requests finished, by finish reason.");
  for (const char* r : {"stop", "length", "abort"}) {
    auto it = s.finished_by_reason.find(r);
    w.sample("finmoe_request_success_total", it == s.finished_by_reason.end() ? 0.0 : double(it->second),
             std::string("finished_reason=\"") + r + "\"");
  }
  w.family("finmoe_http_responses_total", "counter", "HTTP responses, by status code.");
  for (const auto& [status, n] : s.responses_by_status)
    w.sample("finmoe_http_responses_total", double(n), "status=\"" + std::to_string(status) + "\"");
  w.histogram("finmoe_time_to_first_token_seconds", s.ttft, "Request arrival to its first token.");
  w.histogram("finmoe_inter_token_latency_seconds", s.inter_token, "Time between successive tokens of a request.");
  w.histogram("finmoe_e2e_request_latency_seconds", s.e2e, "Request arrival to its last token.");

  // The same quantities under vLLM's names, so dashboards made for vLLM work.
  w.gauge("vllm:num_requests_running", double(e.running), "Number of requests in model execution batches.");
  w.gauge("vllm:num_requests_waiting", double(e.waiting), "Number of requests waiting to be processed.");
  w.gauge("vllm:kv_cache_usage_perc", e.num_blocks > 0 ? double(e.blocks_used) / double(e.num_blocks) : 0.0,
          "KV-cache usage. 1 means 100 percent usage.");
  w.counter_total("vllm:prefix_cache_queries", double(e.prefix_query_tokens),
                  "Prefix cache queries, in terms of number of queried tokens.");
  w.counter_total("vllm:prefix_cache_hits", double(e.prefix_hit_tokens),
                  "Prefix cache hits, in terms of number of cached tokens.");
  w.counter_total("vllm:num_preemptions", double(e.preemptions), "Cumulative number of preemptions.");
  w.counter_total("vllm:prompt_tokens", double(e.prompt_tokens), "Number of prefill tokens processed.");
  w.counter_total("vllm:generation_tokens", double(e.generation_tokens), "Number of generation tokens processed.");
  w.family("vllm:request_success", "counter", "Count of successfully processed requests.");
  for (const char* r : {"stop", "length", "abort"}) {
    auto it = s.finished_by_reason.find(r);
    w.sample("vllm:request_success_total", it == s.finished_by_reason.end() ? 0.0 : double(it->second),
             std::string("finished_reason=\"") + r + "\"");
  }
  w.histogram("vllm:time_to_first_token_seconds", s.ttft, "Histogram of time to first token in seconds.");
  w.histogram("vllm:inter_token_latency_seconds", s.inter_token, "Histogram of inter-token latency in seconds.");
  w.histogram("vllm:e2e_request_latency_seconds", s.e2e, "Histogram of e2e request latency in seconds.");
  return std::move(w).str();
}

}  // namespace finmoe::serve
