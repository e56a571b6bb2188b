// finmoe bench decode
#include <iomanip>
#include <iostream>

#include "cli/commands.h"
#include "finmoe/bench.h"
#include "finmoe/error.h"
#include "kernels/cpu_features.h"
#include "kernels/thread_pool.h"

namespace finmoe::cli {

constexpr int64_t kMaxBenchBatch = 4096;  // decoding sequences at once

void add_bench(CLI::App& app, Run& run) {
  auto* b = app.add_subcommand("bench", "Benchmarks");
  b->require_subcommand(1);
  add_bench_serve(b, run);
  auto* c = b->add_subcommand("decode", "Prefill and decode tokens/s vs the memory-bandwidth floor");
  static std::string dir, dtype, device = "cpu";
  static bool json = false;
  static DecodeBenchOptions o;
  c->add_option("DIR", dir, "model directory")->required();
  c->add_option("--dtype", dtype, "float32 | bfloat16 (default: the checkpoint's)");
  c->add_option("--device", device, "cpu | cuda | cuda:N")->capture_default_str();
  c->add_option("--prefill", o.prefill_tokens, "prefill length")->capture_default_str();
  c->add_option("--batch", o.batch_sizes, "decode batch sizes")->capture_default_str();
  c->add_option("--steps", o.decode_steps, "timed decode steps")->capture_default_str();
  c->add_option("--context", o.context_tokens, "context per decoding sequence")->capture_default_str();
  c->add_option("--repeats", o.repeats, "timed runs per figure: best tokens/s, median ratio to the floor")->capture_default_str();
  c->add_flag("--json", json, "print one JSON object");
  c->callback([&run] {
    run = [] {
      LoadOptions lo;
      if (!dtype.empty()) lo.dtype = dtype_from_string(dtype);
      lo.device = device_from_string(device);
      auto model = load_model(dir, lo);
      // sizes within the model's context, so that the benchmark allocates what
      // a real run of the model would
      const int64_t ctx = model.config().max_position_embeddings;
      auto at_most = [](const std::string& option, int64_t v, int64_t limit, const char* what) {
        if (v > limit)
          throw Error(option + " is " + std::to_string(v) + ", above " + what + " (" +
                      std::to_string(limit) + ")");
      };
      const char* context = "the model's max_position_embeddings";
      at_most("--prefill", o.prefill_tokens, ctx, context);
      at_most("--context", o.context_tokens, ctx, context);
      at_most("--steps", o.decode_steps, ctx, context);
      at_most("--context + --steps", o.context_tokens + o.decode_steps, ctx, context);
      for (int64_t b : o.batch_sizes) at_most("--batch", b, kMaxBenchBatch, "the limit on sequences");
      auto r = bench_decode(model, o);
      auto j = r.to_json();
      j["model"] = dir;
      j["dtype"] = dtype_to_string(model.dtype());
      j["threads"] = kernels::ThreadPool::global().num_threads();
      j["isa"] = kernels::isa_name();
      if (json) {
        std::cout << j.dump(2) << "\n";
        return 0;
      }
      std::cout << std::fixed << std::setprecision(1) << "model " << dir << " (" << j["dtype"].get<std::string>()
                << ", " << j["threads"].get<int>() << " threads, " << kernels::isa_name() << ")\n"
                << "memory bandwidth   " << r.bandwidth_gb_s
                << " GB/s (median of samples taken around the timed runs)\n"
                << "weights per token  " << r.weight_bytes_per_token / 1e6 << " MB\n"
                << "decode floor       " << r.floor_tokens_per_s << " tok/s at batch 1\n"
                << "prefill " << o.prefill_tokens << "        " << r.prefill_tokens_per_s << " tok/s\n";
      for (const auto& d : r.decode) {
        std::cout << "decode batch " << std::setw(3) << d.batch << "   " << d.tokens_per_s << " tok/s ("
                  << d.ms_per_step << " ms/step";
        if (d.batch == 1)
          std::cout << ", " << std::setprecision(0) << 100 * d.step_ratio_to_floor
                    << "% of floor" << std::setprecision(1);
        std::cout << ")\n";
      }
      return 0;
    };
  });
}

}  // namespace finmoe::cli
