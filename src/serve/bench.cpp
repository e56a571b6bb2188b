#include "finmoe/bench.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <numeric>
#include <optional>
#include <string>

#include "finmoe/error.h"
#include "finmoe/serve_bench.h"

#include "kernels/cpu_features.h"
#include "kernels/linear.h"
#include "kernels/thread_pool.h"
#include "serve/host_logits.h"

namespace finmoe {
namespace {

using Clock = std::chrono::steady_clock;
constexpr size_t kProbeAhead = 8192 / sizeof(uint64_t);  // elements
double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

}  // namespace

ReadBandwidthProbe::ReadBandwidthProbe(size_t bytes)
    : buf_(bytes / sizeof(uint64_t)), partial_(256, 0) {
  // first touch in parallel so pages spread like the weights do
  kernels::ThreadPool::global().parallel_for(int64_t(buf_.size()), 4096, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) buf_[size_t(i)] = uint64_t(i);
  });
}

double ReadBandwidthProbe::gigabytes() const { return double(buf_.size() * sizeof(uint64_t)) / 1e9; }

double ReadBandwidthProbe::sample_gb_s() {
  const auto t = Clock::now();
  kernels::ThreadPool::global().parallel_for(int64_t(buf_.size()), 4096, [&](int64_t b, int64_t e) {
    // four independent accumulators keep the loads in flight
    uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    int64_t i = b;
    const bool l2 = kernels::cpu_features().intel;
    for (; i + 8 <= e; i += 8) {
      // the weight kernels' software prefetch (kernels/next_block_prefetch.inc)
      if (l2)
        __builtin_prefetch(&buf_[size_t(i)] + kProbeAhead, 0, 2);
      else
        __builtin_prefetch(&buf_[size_t(i)] + kProbeAhead, 0, 3);
      a0 += buf_[size_t(i)];
      a1 += buf_[size_t(i + 1)];
      a2 += buf_[size_t(i + 2)];
      a3 += buf_[size_t(i + 3)];
      a0 += buf_[size_t(i + 4)];
      a1 += buf_[size_t(i + 5)];
      a2 += buf_[size_t(i + 6)];
      a3 += buf_[size_t(i + 7)];
    }
    for (; i + 4 <= e; i += 4) {
      a0 += buf_[size_t(i)];
      a1 += buf_[size_t(i + 1)];
      a2 += buf_[size_t(i + 2)];
      a3 += buf_[size_t(i + 3)];
    }
    for (; i < e; ++i) a0 += buf_[size_t(i)];
    partial_[size_t(b / 4096) % partial_.size()] += a0 + a1 + a2 + a3;
  });
  const double gb_s = gigabytes() / seconds_since(t);
  sink_ = sink_ + std::accumulate(partial_.begin(), partial_.end(), uint64_t{0});
  return gb_s;
}

double decode_weight_bytes(const Transformer& model) {
  // Each tensor at its own element size: int8 weights count their bytes and scales.
  const ModelConfig& c = model.config();
  double bytes = 0;
  for (const auto& [name, t] : model.named_parameters()) {
    double b = double(t.numel()) * double(t.element_size());
    if (name.starts_with("model.embed_tokens.")) {
      if (!c.tie_word_embeddings) continue;  // a token reads one row
    } else if (name.find(".experts.") != std::string::npos) {
      b *= double(c.num_experts_per_tok) / double(c.num_experts);  // its k routed experts
    }
    bytes += b;
  }
  return bytes;
}

// Read bandwidth of an accelerator's memory: a reduction over 2 GiB, best of 5.
double measure_device_read_bandwidth(torch::Device device) {
  auto a = torch::ones({int64_t(1) << 29}, torch::TensorOptions().dtype(torch::kFloat32).device(device));
  double best = 1e30;
  for (int rep = 0; rep < 6; ++rep) {
    const auto t = Clock::now();
    a.sum().item<float>();
    if (rep > 0) best = std::min(best, seconds_since(t));  // first run warms up
  }
  return double(a.numel()) * 4 / best / 1e9;
}

DecodeBenchResult bench_decode(Transformer& model, const DecodeBenchOptions& o) {
  if (o.prefill_tokens < 1 || o.context_tokens < 1 || o.decode_steps < 1 || o.repeats < 1)
    throw Error("bench decode: prefill, context, steps and repeats must be >= 1");
  for (int64_t B : o.batch_sizes)
    if (B < 1) throw Error("bench decode: batch sizes must be >= 1, got " + std::to_string(B));
  DecodeBenchResult r;
  r.weight_bytes_per_token = decode_weight_bytes(model);
  // Host memory drifts, so it is sampled around every timed run; an
  // accelerator's is measured once.
  const bool cpu = model.device().is_cpu();
  std::optional<ReadBandwidthProbe> probe;
  std::vector<double> samples;
  double device_gb_s = 0;
  if (cpu) probe.emplace(); else device_gb_s = measure_device_read_bandwidth(model.device());
  auto bandwidth_now = [&] {
    if (!cpu) return device_gb_s;
    samples.push_back(probe->sample_gb_s());
    return samples.back();
  };
  bandwidth_now();
  const int64_t V = model.config().vocab_size;
  const int64_t bs = 16;
  auto token = [&](int64_t i) { return int32_t((i * 7919 + 13) % V); };

  // prefill: one sequence of prefill_tokens in a single step
  {
    const int64_t T = o.prefill_tokens;
    KVCache cache(model, (T + bs - 1) / bs, bs);
    StepBatch b;
    for (int64_t i = 0; i < T; ++i) {
      b.tokens.push_back(token(i));
      b.positions.push_back(int32_t(i));
    }
    StepBatch::Seq q{0, T, T, {}};
    for (int64_t k = 0; k < cache.num_blocks(); ++k) q.block_table.push_back(int32_t(k));
    b.seqs.push_back(q);
    double best = 1e30;
    for (int rep = 0; rep < o.repeats; ++rep) {
      const auto t = Clock::now();
      logits_to_host(model.step(b, cache));  // the copy a sampler makes; waits for the GPU
      best = std::min(best, seconds_since(t));
    }
    r.prefill_tokens_per_s = double(T) / best;
  }

  for (int64_t B : o.batch_sizes) {
    const int64_t len = o.context_tokens + o.decode_steps;
    const int64_t per_seq = (len + bs - 1) / bs;
    KVCache cache(model, B * per_seq, bs);
    std::vector<std::vector<int32_t>> tables(static_cast<size_t>(B));
    for (int64_t s = 0; s < B; ++s)
      for (int64_t k = 0; k < per_seq; ++k) tables[size_t(s)].push_back(int32_t(s * per_seq + k));
    double best = 1e30, step_bytes = r.weight_bytes_per_token;
    std::vector<double> ratios;
    for (int rep = 0; rep < o.repeats; ++rep) {
      StepBatch prefill;
      for (int64_t s = 0; s < B; ++s) {
        prefill.seqs.push_back({s * o.context_tokens, o.context_tokens, o.context_tokens,
                                tables[size_t(s)]});
        for (int64_t i = 0; i < o.context_tokens; ++i) {
          prefill.tokens.push_back(token(s * 131 + i));
          prefill.positions.push_back(int32_t(i));
        }
      }
      logits_to_host(model.step(prefill, cache));
      const double before = bandwidth_now();
      const uint64_t read_before = kernels::weight_bytes_read();
      const auto t = Clock::now();
      for (int64_t step = 0; step < o.decode_steps; ++step) {
        StepBatch d;
        const int64_t pos = o.context_tokens + step;
        for (int64_t s = 0; s < B; ++s) {
          d.tokens.push_back(token(s + step));
          d.positions.push_back(int32_t(pos));
          d.seqs.push_back({s, 1, pos + 1, tables[size_t(s)]});
        }
        logits_to_host(model.step(d, cache));
      }
      const double secs = seconds_since(t);
      const double read =
          double(kernels::weight_bytes_read() - read_before) / double(o.decode_steps);
      const double after = bandwidth_now();
      best = std::min(best, secs);
      // the floor of this run: its steps' weights at the bandwidth sampled around it
      // (the same tokens every run, so the same experts)
      step_bytes = std::max(r.weight_bytes_per_token, read);
      const double floor_steps_per_s = (before + after) / 2 * 1e9 / step_bytes;
      ratios.push_back(double(o.decode_steps) / secs / floor_steps_per_s);
    }
    r.decode.push_back({B, double(B * o.decode_steps) / best, best / double(o.decode_steps) * 1e3,
                        step_bytes, percentile(ratios, 50)});
  }
  r.bandwidth_gb_s = cpu ? percentile(samples, 50) : device_gb_s;
  r.floor_tokens_per_s = r.bandwidth_gb_s * 1e9 / r.weight_bytes_per_token;
  return r;
}

nlohmann::json DecodeBenchResult::to_json() const {
  nlohmann::json j = {{"bandwidth_gb_s", bandwidth_gb_s},
                      {"weight_bytes_per_token", weight_bytes_per_token},
                      {"floor_tokens_per_s", floor_tokens_per_s},
                      {"prefill_tokens_per_s", prefill_tokens_per_s}};
  for (const auto& d : decode) {
    nlohmann::json e = {{"batch", d.batch},
                        {"tokens_per_s", d.tokens_per_s},
                        {"ms_per_step", d.ms_per_step},
                        {"weight_bytes_per_step", d.weight_bytes_per_step}};
    e["step_ratio_to_floor"] = d.step_ratio_to_floor;
    if (d.batch == 1) e["ratio_to_floor"] = d.step_ratio_to_floor;
    j["decode"].push_back(e);
  }
  return j;
}

}  // namespace finmoe
