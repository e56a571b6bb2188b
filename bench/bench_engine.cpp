// In-process load on the serving engine (no HTTP): N requests of random
// prompts against a randomly initialised preset model, every request
// generating exactly --gen tokens (no stop tokens).
//   bench_engine [--preset qwen2-0.5b] [--device cpu|cuda] [--dtype bfloat16]
//                [--requests 64] [--prompt 256] [--gen 128] [--shared-prefix 0]
//                [--max-num-seqs 64] [--max-batched-tokens 2048] [--block-size 16]
//                [--kv-mib 4096] [--rate 0] [--generator 0] [--warmup-s 10]
//                [--temperature 0]
// --rate R > 0 submits with Poisson arrivals at R requests/s from another
// thread while the engine steps on its own; 0 submits everything at once.
// --shared-prefix P: every prompt starts with the same P tokens (prefix cache).
// --temperature T > 0: the engine's requests sample at T over the whole
// vocabulary (no top_k/top_p), each with its own seed; 0 is greedy.
// --generator 1 (2) also runs the static-batch Generator on the same prompts
// after (before) the engine.
// Prints one JSON object: throughput, TTFT and inter-token latency
// percentiles, and the engine's stats (after --warmup-s seconds of short
// warm-up requests, which the stats include: a fresh GPU runs slow at first). Timings on a shared
// machine are noisy. Warm-up batches have as many requests as the timed
// run has at once, so on CUDA the decode graph of that batch size is
// captured before the clock starts (the Generator gets a short warm-up call
// with the same cache size for the same reason).
// The CUDA switches in effect (FINMOE_CUDA_ATTENTION, FINMOE_CUDA_GRAPHS) are
// part of the JSON.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "finmoe/engine.h"
#include "finmoe/error.h"
#include "finmoe/generate.h"
#include "finmoe/model.h"

namespace {

using Clock = std::chrono::steady_clock;
double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, size_t(p * double(v.size() - 1) + 0.5))];
}

struct Timeline {
  Clock::time_point submitted, first, last;
  std::vector<double> gaps;  // seconds between events after the first
  int64_t tokens = 0;
};

}  // namespace

int main(int argc, char** argv) {
  using namespace finmoe;
  std::map<std::string, std::string> arg{
      {"preset", "qwen2-0.5b"}, {"device", "cpu"},      {"dtype", "bfloat16"},
      {"requests", "64"},       {"prompt", "256"},      {"gen", "128"},
      {"shared-prefix", "0"},   {"max-num-seqs", "64"}, {"max-batched-tokens", "2048"},
      {"block-size", "16"},     {"kv-mib", "4096"},     {"rate", "0"},
      {"generator", "0"},       {"warmup-s", "10"},     {"temperature", "0"}};
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i];
    if (k.rfind("--", 0) != 0 || !arg.count(k.substr(2))) {
      std::fprintf(stderr, "bench_engine: unknown option %s\n", argv[i]);
      return 2;
    }
    arg[k.substr(2)] = argv[i + 1];
  }
  auto num = [&](const char* k) { return int64_t(std::stoll(arg.at(k))); };
  try {
    set_torch_threads_for(TorchWork::kDecoding);
    const ModelConfig cfg = preset_config(arg["preset"]);
    Transformer model(cfg, dtype_from_string(arg["dtype"]), device_from_string(arg["device"]));
    init_random(model, 1);

    const int64_t n = num("requests"), plen = num("prompt"), gen = num("gen");
    const int64_t shared = std::min(num("shared-prefix"), plen - 1);
    std::mt19937_64 rng(7);
    std::uniform_int_distribution<int32_t> tok(0, int32_t(cfg.vocab_size - 1));
    std::vector<int32_t> prefix(size_t(std::max<int64_t>(shared, 0)));
    for (auto& t : prefix) t = tok(rng);
    std::vector<std::vector<int32_t>> prompts;
    for (int64_t i = 0; i < n; ++i) {
      auto p = prefix;
      while (int64_t(p.size()) < plen) p.push_back(tok(rng));
      prompts.push_back(std::move(p));
    }

    auto run_generator = [&] {
      Generator g(model, nullptr);
      GenerationOptions go;
      go.sampling.temperature = 0;
      go.max_new_tokens = std::min<int64_t>(gen, 4);
      go.max_batched_tokens = num("max-batched-tokens");
      go.block_size = num("block-size");
      {  // warm-up: the same sequence lengths (so the same cache), a few decode steps
        std::vector<std::vector<int32_t>> longer = prompts;
        for (auto& p : longer) p.resize(size_t(plen + gen - go.max_new_tokens), 1);
        g.generate(longer, go);
      }
      go.max_new_tokens = gen;
      const auto g0 = Clock::now();
      g.generate(prompts, go);
      const double gw = seconds(Clock::now() - g0);
      return nlohmann::json{{"wall_s", gw}, {"output_tokens_per_s", double(n * gen) / gw}};
    };
    nlohmann::json generator_first;
    if (num("generator") == 2) generator_first = run_generator();

    EngineOptions eo;
    eo.kv_cache_bytes = num("kv-mib") << 20;
    eo.block_size = num("block-size");
    eo.max_num_seqs = num("max-num-seqs");
    eo.max_batched_tokens = num("max-batched-tokens");
    Engine engine(model, nullptr, eo);
    RequestParams rp;
    rp.sampling.temperature = std::stod(arg.at("temperature"));
    rp.max_tokens = gen;

    {  // warm-up: first-use costs (kernel loading, allocator, clocks) stay out of the timings
      RequestParams w = rp;
      w.max_tokens = 4;
      std::mt19937_64 wrng(99);  // prompts of their own: nothing for the prefix cache
      const auto w0 = Clock::now();
      do {
        for (int64_t k = 0; k < std::min(n, num("max-num-seqs")); ++k) {
          std::vector<int32_t> p(64);
          for (auto& t : p) t = tok(wrng);
          engine.submit(p, w, {});
        }
        engine.run_until_idle();
      } while (seconds(Clock::now() - w0) < std::stod(arg["warmup-s"]));
    }
    std::mutex mu;
    std::vector<Timeline> tl(static_cast<size_t>(n));
    std::vector<uint64_t> ids(static_cast<size_t>(n));
    auto callback = [&](size_t i) {
      return [&, i](const RequestOutput& out) {
        const auto now = Clock::now();
        std::lock_guard lock(mu);
        Timeline& t = tl[i];
        if (t.tokens == 0)
          t.first = now;
        else
          t.gaps.push_back(seconds(now - t.last));
        t.last = now;
        t.tokens += int64_t(out.token_ids.size());
      };
    };
    const double rate = std::stod(arg["rate"]);
    const auto t0 = Clock::now();
    if (rate <= 0) {
      for (size_t i = 0; i < size_t(n); ++i) {
        tl[i].submitted = Clock::now();
        ids[i] = engine.submit(prompts[i], rp, callback(i));
      }
      engine.run_until_idle();
    } else {
      engine.start();
      std::exponential_distribution<double> gap(rate);
      for (size_t i = 0; i < size_t(n); ++i) {
        std::this_thread::sleep_for(std::chrono::duration<double>(gap(rng)));
        {
          std::lock_guard lock(mu);
          tl[i].submitted = Clock::now();
        }
        ids[i] = engine.submit(prompts[i], rp, callback(i));
      }
      while (engine.stats().requests_finished < n)
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      engine.stop();
    }
    const double wall = seconds(Clock::now() - t0);

    std::vector<double> ttft, itl;
    int64_t out_tokens = 0;
    for (const auto& t : tl) {
      ttft.push_back(seconds(t.first - t.submitted));
      itl.insert(itl.end(), t.gaps.begin(), t.gaps.end());
      out_tokens += t.tokens;
    }
    const EngineStats s = engine.stats();
    const auto env = [](const char* name) {
      const char* v = std::getenv(name);
      return std::string(v ? v : "");
    };
    nlohmann::json j = {{"preset", arg["preset"]},
                        {"FINMOE_CUDA_ATTENTION", env("FINMOE_CUDA_ATTENTION")},
                        {"FINMOE_CUDA_GRAPHS", env("FINMOE_CUDA_GRAPHS")},
                        {"device", arg["device"]},
                        {"dtype", arg["dtype"]},
                        {"requests", n},
                        {"prompt_tokens", plen},
                        {"gen_tokens", gen},
                        {"shared_prefix", shared},
                        {"rate", rate},
                        {"temperature", rp.sampling.temperature},
                        {"wall_s", wall},
                        {"output_tokens", out_tokens},
                        {"output_tokens_per_s", out_tokens / wall},
                        {"total_tokens_per_s", (out_tokens + n * plen) / wall},
                        {"ttft_s",
                         {{"p50", percentile(ttft, 0.5)},
                          {"p90", percentile(ttft, 0.9)},
                          {"max", percentile(ttft, 1.0)}}},
                        {"itl_s",
                         {{"p50", percentile(itl, 0.5)},
                          {"p90", percentile(itl, 0.9)},
                          {"p99", percentile(itl, 0.99)}}},
                        {"engine",
                         {{"num_blocks", s.num_blocks},
                          {"max_tokens_in_cache", s.max_tokens_in_cache},
                          {"steps", s.steps},
                          {"preemptions", s.preemptions},
                          {"max_running_seen", s.max_running_seen},
                          {"prompt_tokens_computed", s.prompt_tokens},
                          {"prefix_hit_tokens", s.prefix_hit_tokens}}}};
    if (num("generator") == 1) j["generator"] = run_generator();
    if (num("generator") == 2) j["generator_first"] = generator_first;
    std::printf("%s\n", j.dump(2).c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_engine: %s\n", e.what());
    return 1;
  }
  return 0;
}
