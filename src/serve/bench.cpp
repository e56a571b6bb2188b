#include "finmoe/bench.h"

#include <chrono>
#include <cstring>
#include <numeric>

#include "kernels/thread_pool.h"

namespace finmoe {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

}  // namespace

double measure_read_bandwidth(size_t bytes, int repeats) {
  const size_t n = bytes / sizeof(uint64_t);
  std::vector<uint64_t> buf(n);
  auto& pool = kernels::ThreadPool::global();
  // first touch in parallel so pages spread like the weights do
  pool.parallel_for(int64_t(n), 4096, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) buf[size_t(i)] = uint64_t(i);
  });
  std::vector<uint64_t> sums(256, 0);
  double best = 0;
  for (int r = 0; r < repeats; ++r) {
    const auto t = Clock::now();
    pool.parallel_for(int64_t(n), 4096, [&](int64_t b, int64_t e) {
      // four independent accumulators keep the loads in flight
      uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
      int64_t i = b;
      for (; i + 4 <= e; i += 4) {
        a0 += buf[size_t(i)];
        a1 += buf[size_t(i + 1)];
        a2 += buf[size_t(i + 2)];
        a3 += buf[size_t(i + 3)];
      }
      for (; i < e; ++i) a0 += buf[size_t(i)];
      sums[size_t(b / 4096) % sums.size()] += a0 + a1 + a2 + a3;
    });
    best = std::max(best, double(bytes) / seconds_since(t) / 1e9);
  }
  volatile uint64_t sink = std::accumulate(sums.begin(), sums.end(), uint64_t{0});
  (void)sink;
  return best;
}

double decode_weight_bytes(const Transformer& model) {
  double bytes = 0;
  for (const auto& [name, t] : model.named_parameters()) {
    const double b = double(t.numel()) * double(t.element_size());
    if (name == "model.embed_tokens.weight") {
      if (model.config().tie_word_embeddings) bytes += b;  // read whole as lm_head
    } else {
      bytes += b;
    }
  }
  // a token reads only its k routed experts of each MoE layer
  const ParamCount pc = model.param_count();
  const auto elem = double(torch::elementSize(model.dtype()));
  return bytes - double(pc.total - pc.active) * elem;
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
  DecodeBenchResult r;
  r.bandwidth_gb_s = model.device().is_cpu() ? measure_read_bandwidth()
                                             : measure_device_read_bandwidth(model.device());
  r.weight_bytes_per_token = decode_weight_bytes(model);
  r.floor_tokens_per_s = r.bandwidth_gb_s * 1e9 / r.weight_bytes_per_token;
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
      model.step(b, cache).to(torch::kCPU);  // the copy a sampler makes; waits for the GPU
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
    double best = 1e30;
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
      model.step(prefill, cache).to(torch::kCPU);
      const auto t = Clock::now();
      for (int64_t step = 0; step < o.decode_steps; ++step) {
        StepBatch d;
        const int64_t pos = o.context_tokens + step;
        for (int64_t s = 0; s < B; ++s) {
          d.tokens.push_back(token(s + step));
          d.positions.push_back(int32_t(pos));
          d.seqs.push_back({s, 1, pos + 1, tables[size_t(s)]});
        }
        model.step(d, cache).to(torch::kCPU);
      }
      best = std::min(best, seconds_since(t));
    }
    r.decode.push_back({B, double(B * o.decode_steps) / best, best / o.decode_steps * 1e3});
  }
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
                        {"ms_per_step", d.ms_per_step}};
    if (d.batch == 1) e["ratio_to_floor"] = d.tokens_per_s / floor_tokens_per_s;
    j["decode"].push_back(e);
  }
  return j;
}

}  // namespace finmoe
