// finmoe bench decode | constrained
#include <algorithm>
#include <chrono>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <random>
#include <sstream>

#include "cli/commands.h"
#include "finmoe/bench.h"
#include "finmoe/error.h"
#include "finmoe/generate.h"
#include "serve/constraint.h"
#include "kernels/cpu_features.h"
#include "kernels/thread_pool.h"

namespace finmoe::cli {

constexpr int64_t kMaxBenchBatch = 4096;  // decoding sequences at once

namespace {

// The slot-filling schema of the constrained benchmark unless --json-schema names another.
const char* kSlotSchema = R"({"type": "object", "properties": {
  "intent": {"enum": ["transfer", "balance", "pay_bill", "exchange"]},
  "amount": {"type": "number", "minimum": 0},
  "currency": {"enum": ["USD", "EUR", "CNY", "GBP", "JPY"]},
  "account": {"type": "string", "pattern": "[A-Z]{2}[0-9]{6,10}"},
  "date": {"type": "string", "format": "date"},
  "memo": {"type": "string", "maxLength": 40}},
  "required": ["intent", "amount", "currency", "account"]})";

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// finmoe bench constrained: batch-1 decode tokens/s (Generator, greedy: model
// step + sampling) unconstrained, constrained with masks computed on the way
// (cold) and constrained with every visited state's mask cached (warm); and
// the time to compute one state's mask over the whole vocabulary.
void add_bench_constrained(CLI::App* b, Run& run) {
  auto* c = b->add_subcommand("constrained",
                              "Decode tokens/s at batch 1 with and without a JSON-schema constraint, "
                              "and the cost of a state's token mask");
  static std::string dir, dtype, device = "cpu", schema_file;
  static std::string prompt = "Extract the slots as JSON: send 250 EUR from account DE12345678 to pay the rent.";
  static int64_t tokens = 64, repeats = 3, mask_states = 200;
  static bool json = false;
  c->add_option("DIR", dir, "model directory")->required();
  c->add_option("--dtype", dtype, "float32 | bfloat16 (default: the checkpoint's)");
  c->add_option("--device", device, "cpu | cuda | cuda:N")->capture_default_str();
  c->add_option("--json-schema", schema_file, "schema file (default: a built-in slot-filling schema)");
  c->add_option("--prompt", prompt, "prompt text")->capture_default_str();
  c->add_option("--tokens", tokens, "new tokens per run at most")->capture_default_str();
  c->add_option("--repeats", repeats, "timed runs per figure (best kept)")->capture_default_str();
  c->add_option("--mask-states", mask_states, "DFA states whose masks are timed")->capture_default_str();
  c->add_flag("--json", json, "print one JSON object");
  c->callback([&run] {
    run = [] {
      if (tokens < 1 || repeats < 1 || mask_states < 1)
        throw Error("--tokens, --repeats and --mask-states must be >= 1");
      nlohmann::ordered_json schema;
      try {
        if (schema_file.empty()) {
          schema = nlohmann::ordered_json::parse(kSlotSchema);
        } else {
          std::ifstream in(schema_file);
          if (!in) throw Error("--json-schema: cannot read " + schema_file);
          std::stringstream ss;
          ss << in.rdbuf();
          schema = nlohmann::ordered_json::parse(ss.str());
        }
      } catch (const nlohmann::json::exception& e) {
        throw Error("--json-schema " + schema_file + ": not valid JSON: " + e.what());
      }
      auto tok = Tokenizer::from_dir(dir);
      LoadOptions lo;
      if (!dtype.empty()) lo.dtype = dtype_from_string(dtype);
      lo.device = device_from_string(device);
      auto model = load_model(dir, lo);
      auto t = std::chrono::steady_clock::now();
      auto vocab = std::make_shared<const TokenVocab>(model.config().vocab_size, tok);
      const double vocab_s = seconds_since(t);
      auto compile = [&] {
        try {
          return json_schema_constraint(schema, vocab);
        } catch (const constrain::SchemaError& e) {
          throw Error("--json-schema" + (e.path().empty() ? "" : ": at " + e.path()) + ": " + e.what());
        }
      };
      t = std::chrono::steady_clock::now();
      auto constraint = compile();
      const double compile_s = seconds_since(t);

      Generator gen(model, &tok);
      const std::vector<std::vector<int32_t>> ids = {tok.encode(prompt)};
      GenerationOptions o;
      o.sampling.temperature = 1.0;  // sampled (seeded: every run the same) to visit many states
      o.sampling.seed = 1;
      o.max_new_tokens = tokens;
      for (int64_t e : GenerationConfig::load(dir, model.config()).eos_token_id) o.stop_token_ids.push_back(int32_t(e));
      struct Figure {
        double tokens_per_s = 0;
        int64_t tokens = 0;
        std::string finish, text;
        std::vector<int32_t> ids;
      };
      auto timed = [&](std::shared_ptr<const TokenConstraint> c, int64_t runs) {
        Figure best;
        for (int64_t r = 0; r < runs; ++r) {
          GenerationOptions oo = o;
          oo.sampling.constraint = c;
          if (!c) oo.stop_token_ids.clear();  // the plain runs decode every token
          GenerationStats st;
          const auto out = gen.generate(ids, oo, {}, &st);
          if (st.decode_tokens_per_s() > best.tokens_per_s) {
            best.tokens_per_s = st.decode_tokens_per_s();
            best.tokens = int64_t(out[0].tokens.size());
            best.finish = out[0].finish_reason;
            best.text = out[0].text;
            best.ids = out[0].tokens;
          }
        }
        return best;
      };
      timed(nullptr, 1);  // warm-up
      Figure plain = timed(nullptr, 1);
      const Figure cold = timed(constraint, 1);
      const int64_t cold_masks = constraint->masks_computed();
      const double cold_mask_s = constraint->mask_seconds();
      Figure warm = timed(constraint, 1);
      // the rest alternate, so that a busy machine slows both alike; best of each
      for (int64_t r = 1; r < repeats; ++r) {
        const Figure p = timed(nullptr, 1), w = timed(constraint, 1);
        if (p.tokens_per_s > plain.tokens_per_s) plain = p;
        if (w.tokens_per_s > warm.tokens_per_s) warm = w;
      }

      // the constraint's own work per token, replayed on the warm run's tokens:
      // the mask applied to a vocabulary of logits and the state advanced
      std::vector<float> logits(size_t(model.config().vocab_size));
      double replay_s = 0, sample_raw_s = 0, sample_masked_s = 0;
      int64_t replayed = 0;
      std::mt19937 noise(5);
      std::normal_distribution<float> normal(0.f, 2.f);
      std::vector<float> raw(logits.size());
      for (float& v : raw) v = normal(noise);
      Sampler sampler(o.sampling, 1);
      for (int64_t r = 0; r < repeats; ++r) {
        int32_t st = constraint->start();
        for (int32_t id : warm.ids) {
          if (st < 0 || std::find(o.stop_token_ids.begin(), o.stop_token_ids.end(), id) != o.stop_token_ids.end()) break;
          std::copy(raw.begin(), raw.end(), logits.begin());
          t = std::chrono::steady_clock::now();
          constraint->apply(st, logits, o.stop_token_ids);
          st = constraint->advance(st, id);
          replay_s += seconds_since(t);
          ++replayed;
          // the sampler on the masked logits vs on the same logits unmasked
          t = std::chrono::steady_clock::now();
          sampler.sample(logits, warm.ids);
          sample_masked_s += seconds_since(t);
          t = std::chrono::steady_clock::now();
          sampler.sample(raw, warm.ids);
          sample_raw_s += seconds_since(t);
        }
      }
      const double per_token_ms = replayed ? replay_s * 1e3 / double(replayed) : 0;
      const double step_ms = plain.tokens_per_s > 0 ? 1e3 / plain.tokens_per_s : 0;

      // masks of the first states in breadth-first order, each computed fresh
      auto fresh = compile();
      const auto& dfa = fresh->dfa();
      std::vector<int32_t> order{dfa.start()};
      std::vector<char> seen(size_t(dfa.num_states()), 0);
      seen[size_t(dfa.start())] = 1;
      for (size_t i = 0; i < order.size() && int64_t(order.size()) < mask_states; ++i)
        for (int byte = 0; byte < 256; ++byte) {
          const int32_t n = dfa.next(order[i], uint8_t(byte));
          if (n >= 0 && !seen[size_t(n)]) {
            seen[size_t(n)] = 1;
            order.push_back(n);
          }
        }
      if (int64_t(order.size()) > mask_states) order.resize(size_t(mask_states));
      double max_ms = 0, sum_ms = 0;
      for (int32_t st : order) {
        t = std::chrono::steady_clock::now();
        fresh->mask(st);
        const double ms = seconds_since(t) * 1e3;
        sum_ms += ms;
        max_ms = std::max(max_ms, ms);
      }
      // the costliest kind of state: inside a free string almost every token is allowed
      std::vector<double> open_ms;
      int64_t open_allowed = 0;
      for (int r = 0; r < 5; ++r) {
        const auto any = json_object_constraint(vocab);
        const int32_t st = any->dfa().walk(any->start(), "{\"");
        t = std::chrono::steady_clock::now();
        const auto m = any->mask(st);
        open_ms.push_back(seconds_since(t) * 1e3);
        open_allowed = m->count;
      }
      std::sort(open_ms.begin(), open_ms.end());
      const double open_string_ms = open_ms[open_ms.size() / 2];
      auto fig = [](const Figure& f) {
        return nlohmann::json{{"decode_tokens_per_s", f.tokens_per_s}, {"tokens", f.tokens}, {"finish_reason", f.finish}};
      };
      nlohmann::json j = {{"model", dir},
                          {"dtype", dtype_to_string(model.dtype())},
                          {"threads", kernels::ThreadPool::global().num_threads()},
                          {"vocab_ids", vocab->size()},
                          {"vocab_build_s", vocab_s},
                          {"schema_compile_s", compile_s},
                          {"dfa_states", constraint->dfa().num_states()},
                          {"unconstrained", fig(plain)},
                          {"constrained_cold", fig(cold)},
                          {"constrained_warm", fig(warm)},
                          {"cold_masks_computed", cold_masks},
                          {"cold_mask_s", cold_mask_s},
                          {"ratio_cold", plain.tokens_per_s > 0 ? cold.tokens_per_s / plain.tokens_per_s : 0},
                          {"ratio_warm", plain.tokens_per_s > 0 ? warm.tokens_per_s / plain.tokens_per_s : 0},
                          {"mask_states_timed", order.size()},
                          {"mask_ms_mean", sum_ms / double(order.size())},
                          {"mask_ms_max", max_ms},
                          {"mask_ms_open_string", open_string_ms},
                          {"open_string_tokens_allowed", open_allowed},
                          {"constraint_ms_per_token_warm", per_token_ms},
                          {"sampler_ms_raw", replayed ? sample_raw_s * 1e3 / double(replayed) : 0},
                          {"sampler_ms_masked", replayed ? sample_masked_s * 1e3 / double(replayed) : 0},
                          {"constraint_share_of_decode_step", step_ms > 0 ? per_token_ms / step_ms : 0},
                          {"constrained_text", warm.text}};
      if (json) {
        std::cout << j.dump(2) << "\n";
        return 0;
      }
      std::cout << std::fixed << std::setprecision(2) << "model " << dir << " (" << j["dtype"].get<std::string>() << ", "
                << j["threads"].get<int>() << " threads), vocabulary " << vocab->size() << " ids (byte trie "
                << vocab_s << " s)\n"
                << "schema: " << constraint->dfa().num_states() << " DFA states, compiled in " << compile_s * 1e3 << " ms\n"
                << "decode batch 1, unconstrained       " << plain.tokens_per_s << " tok/s (" << plain.tokens << " tokens)\n"
                << "decode batch 1, constrained (cold)  " << cold.tokens_per_s << " tok/s (" << cold.tokens << " tokens, "
                << cold_masks << " masks computed in " << cold_mask_s * 1e3 << " ms)\n"
                << "decode batch 1, constrained (warm)  " << warm.tokens_per_s << " tok/s (" << warm.tokens << " tokens)\n"
                << "ratio constrained/unconstrained     cold " << j["ratio_cold"].get<double>() << ", warm "
                << j["ratio_warm"].get<double>() << "\n"
                << "constraint work per token (warm)    " << std::setprecision(3) << per_token_ms << " ms = "
                << std::setprecision(2) << 100 * (step_ms > 0 ? per_token_ms / step_ms : 0)
                << "% of an unconstrained decode step\n"
                << "sampler per token, raw / masked     " << std::setprecision(3)
                << (replayed ? sample_raw_s * 1e3 / double(replayed) : 0) << " / "
                << (replayed ? sample_masked_s * 1e3 / double(replayed) : 0) << " ms\n" << std::setprecision(2)
                << "mask of one state (" << order.size() << " states)  mean " << sum_ms / double(order.size())
                << " ms, max " << max_ms << " ms\n"
                << "mask of an open-string state        " << open_string_ms << " ms (median of 5; "
                << open_allowed << " tokens allowed)\n"
                << "constrained output: " << warm.text << "\n";
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
