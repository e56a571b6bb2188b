// finmoe bench decode | constrained
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "cli/commands.h"
#include "finmoe/bench.h"
#include "finmoe/error.h"
#include "finmoe/config.h"
#include "kernels/cpu_features.h"
#include "kernels/thread_pool.h"

namespace finmoe::cli {

constexpr int64_t kMaxBenchBatch = 4096;  // decoding sequences at once

namespace {

// finmoe bench constrained (the work is bench_constrained in finmoe/bench.h).
void add_bench_constrained(CLI::App* b, Run& run) {
  auto* c = b->add_subcommand("constrained",
                              "Decode tokens/s at batch 1 with and without a JSON-schema constraint, "
                              "and the cost of a state's token mask");
  static std::string dir, dtype, device = "cpu", schema_file;
  static ConstrainedBenchOptions o;
  static bool json = false;
  c->add_option("DIR", dir, "model directory")->required();
  c->add_option("--dtype", dtype, "float32 | bfloat16 (default: the checkpoint's)");
  c->add_option("--device", device, "cpu | cuda | cuda:N")->capture_default_str();
  c->add_option("--json-schema", schema_file, "schema file (default: a built-in slot-filling schema)");
  c->add_option("--prompt", o.prompt, "prompt text")->capture_default_str();
  c->add_option("--tokens", o.tokens, "new tokens per run at most")->capture_default_str();
  c->add_option("--repeats", o.repeats, "timed runs per figure (best kept)")->capture_default_str();
  c->add_option("--mask-states", o.mask_states, "DFA states whose masks are timed")->capture_default_str();
  c->add_flag("--json", json, "print one JSON object");
  c->callback([&run] {
    run = [] {
      if (o.tokens < 1 || o.repeats < 1 || o.mask_states < 1)
        throw Error("--tokens, --repeats and --mask-states must be >= 1");
      if (!schema_file.empty()) {
        std::ifstream in(schema_file);
        if (!in) throw Error("--json-schema: cannot read " + schema_file);
        std::stringstream ss;
        ss << in.rdbuf();
        o.schema = ss.str();
      }
      auto tok = Tokenizer::from_dir(dir);
      LoadOptions lo;
      if (!dtype.empty()) lo.dtype = dtype_from_string(dtype);
      lo.device = device_from_string(device);
      auto model = load_model(dir, lo);
      for (int64_t e : GenerationConfig::load(dir, model.config()).eos_token_id) o.stop_token_ids.push_back(int32_t(e));
      ConstrainedBenchResult r;
      try {
        r = bench_constrained(model, tok, o);
      } catch (const Error& e) {
        throw Error(std::string("--json-schema") + (schema_file.empty() ? "" : " " + schema_file) + ": " + e.what());
      }
      nlohmann::json j = r.to_json();
      j["model"] = dir;
      j["dtype"] = dtype_to_string(model.dtype());
      j["threads"] = kernels::ThreadPool::global().num_threads();
      if (json) {
        std::cout << j.dump(2) << "\n";
        return 0;
      }
      const double share = j["constraint_share_of_decode_step"];
      std::cout << std::fixed << std::setprecision(2) << "model " << dir << " (" << j["dtype"].get<std::string>() << ", "
                << j["threads"].get<int>() << " threads), vocabulary " << r.vocab_ids << " ids (byte trie "
                << r.vocab_build_s << " s)\n"
                << "schema: " << r.dfa_states << " DFA states, compiled in " << r.schema_compile_s * 1e3 << " ms\n"
                << "decode batch 1, unconstrained       " << r.unconstrained.decode_tokens_per_s << " tok/s ("
                << r.unconstrained.tokens << " tokens)\n"
                << "decode batch 1, constrained (cold)  " << r.cold.decode_tokens_per_s << " tok/s (" << r.cold.tokens
                << " tokens, " << r.cold_masks_computed << " masks computed in " << r.cold_mask_s * 1e3 << " ms)\n"
                << "decode batch 1, constrained (warm)  " << r.warm.decode_tokens_per_s << " tok/s (" << r.warm.tokens
                << " tokens)\n"
                << "ratio constrained/unconstrained     cold " << j["ratio_cold"].get<double>() << ", warm "
                << j["ratio_warm"].get<double>() << "\n"
                << "constraint work per token (warm)    " << std::setprecision(3) << r.constraint_ms_per_token
                << " ms = " << std::setprecision(2) << 100 * share << "% of an unconstrained decode step\n"
                << "sampler per token, raw / masked     " << std::setprecision(3) << r.sampler_ms_raw << " / "
                << r.sampler_ms_masked << " ms\n" << std::setprecision(2)
                << "mask of one state (" << r.mask_states_timed << " states)  mean " << r.mask_ms_mean << " ms, max "
                << r.mask_ms_max << " ms\n"
                << "mask of an open-string state        " << r.mask_ms_open_string << " ms (median of 5; "
                << r.open_string_tokens_allowed << " tokens allowed)\n"
                << "constrained output: " << r.warm.text << "\n";
      return 0;
    };
  });
}

}  // namespace

void add_bench(CLI::App& app, Run& run) {
  auto* b = app.add_subcommand("bench", "Benchmarks");
  b->require_subcommand(1);
  add_bench_serve(b, run);
  add_bench_constrained(b, run);
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
      j["amx"] = kernels::gemm_on_amx();
      if (json) {
        std::cout << j.dump(2) << "\n";
        return 0;
      }
      std::cout << std::fixed << std::setprecision(1) << "model " << dir << " (" << j["dtype"].get<std::string>()
                << ", " << j["threads"].get<int>() << " threads, " << kernels::path_name() << ")\n"
                << "memory bandwidth   " << r.bandwidth_gb_s
                << " GB/s (median of samples taken around the timed runs)\n"
                << "weights per token  " << r.weight_bytes_per_token / 1e6 << " MB\n"
                << "decode floor       " << r.floor_tokens_per_s << " tok/s at batch 1\n"
                << "prefill " << o.prefill_tokens << "        " << r.prefill_tokens_per_s << " tok/s\n";
      for (const auto& d : r.decode) {
        std::cout << "decode batch " << std::setw(3) << d.batch << "   " << d.tokens_per_s << " tok/s ("
                  << d.ms_per_step << " ms/step";
        std::cout << ", " << std::setprecision(0) << 100 * d.step_ratio_to_floor << "% of floor";
        if (d.weight_bytes_per_step > r.weight_bytes_per_token * 1.001)
          std::cout << " for its " << d.weight_bytes_per_step / 1e6 << " MB of weights";
        std::cout << std::setprecision(1);
        std::cout << ")\n";
      }
      return 0;
    };
  });
}

}  // namespace finmoe::cli
