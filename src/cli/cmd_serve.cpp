// finmoe serve | bench serve
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>

#include "cli/commands.h"
#include "cli/sampling_defaults.h"
#include "finmoe/chat_template.h"
#include "finmoe/engine.h"
#include "finmoe/error.h"
#include "finmoe/serve_bench.h"
#include "finmoe/serving_adapters.h"
#include "finmoe/server.h"
#include "kernels/cpu_features.h"
#include "kernels/thread_pool.h"

namespace finmoe::cli {
namespace {

// The model and engine options serve and bench serve share: one registry.
struct EngineFlags {
  std::string dtype, device = "cpu", kv_memory = "2GiB";
  EngineOptions engine;
  bool no_prefix_caching = false;

  void add(CLI::App* c) {
    const char* g = "Engine";
    c->add_option("--kv-cache-memory", kv_memory,
                  "KV-cache budget: a size (2GiB, 512MiB) or a share of the memory left once the model is loaded "
                  "(0.5 or 50%: of MemAvailable on the CPU, of the GPU's free memory with --device cuda)")
        ->capture_default_str()
        ->group(g);
    c->add_option("--max-num-seqs", engine.max_num_seqs, "sequences running per step")->capture_default_str()->group(g);
    c->add_option("--max-batched-tokens", engine.max_batched_tokens, "tokens per step (decode + prefill chunks)")
        ->capture_default_str()
        ->group(g);
    c->add_option("--block-size", engine.block_size, "tokens per KV block")->capture_default_str()->group(g);
    c->add_option("--max-model-len", engine.max_model_len, "context length (0 = the model's)")
        ->capture_default_str()
        ->group(g);
    c->add_flag("--no-prefix-caching", no_prefix_caching, "do not share KV blocks of identical prompt prefixes")
        ->group(g);
    c->add_option("--dtype", dtype, "float32 | bfloat16 (default: the checkpoint's)")->group("Model");
    c->add_option("--device", device, "cpu | cuda | cuda:N")->capture_default_str()->group("Model");
  }

  // Call after the model is loaded: a share is of the memory left beside it.
  EngineOptions options() {
    EngineOptions o = engine;
    o.kv_cache_bytes = resolve_kv_cache_memory(parse_kv_cache_memory(kv_memory), device);
    o.enable_prefix_caching = !no_prefix_caching;
    return o;
  }

  Transformer load(const std::string& dir) const {
    LoadOptions lo;
    if (!dtype.empty()) lo.dtype = dtype_from_string(dtype);
    lo.device = device_from_string(device);
    return load_model(dir, lo);
  }

  // Builds the engine into `engine`, its option errors naming these flags.
  void make_engine(std::optional<Engine>& engine, Transformer& model, const Tokenizer* tok) {
    const EngineOptions o = options();
    try {
      engine.emplace(model, tok, o);
    } catch (const Error& e) {
      throw Error(engine_error_with_flags(e.what()));
    }
  }
};

void print_capacity(const std::string& dir, const Transformer& model, const Engine& engine, const std::string& device) {
  const EngineStats st = engine.stats();
  const int64_t L = engine.options().max_model_len > 0 ? engine.options().max_model_len
                                                       : model.config().max_position_embeddings;
  std::cerr << "finmoe: " << dir << " (" << dtype_to_string(model.dtype()) << ", " << device;
  if (model.device().is_cpu())
    std::cerr << ", kernels " << kernels::path_name() << " on "
              << kernels::ThreadPool::global().num_threads() << " threads";
  std::cerr << ")\n"
            << "finmoe: KV cache " << st.num_blocks << " blocks x " << st.block_size << " tokens = "
            << st.max_tokens_in_cache << " tokens; " << st.max_full_length_seqs << " sequence(s) of the full context ("
            << L << " tokens) fit at once\n";
  std::cerr << kv_capacity_warning(st.max_full_length_seqs, L, st.max_tokens_in_cache);
}

// The first line of `path`, without its line end. Throws Error naming the
// file when it cannot be read or holds no key.
std::string read_api_key(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error("--api-key-file " + path + ": cannot open");
  std::string key;
  std::getline(in, key);
  while (!key.empty() && (key.back() == '\r' || key.back() == ' ' || key.back() == '\t')) key.pop_back();
  if (key.empty()) throw Error("--api-key-file " + path + ": the first line is empty (expected the key)");
  return key;
}

// --lora / --esft NAME=DIR: each attached under the next id and served as NAME.
void attach_adapters(Transformer& model, const std::vector<std::string>& lora,
                     const std::vector<std::string>& esft, ServerOptions& so) {
  int32_t id = 0;
  for (const auto& [flag, specs] : {std::pair{"--lora", &lora}, std::pair{"--esft", &esft}})
    for (const std::string& spec : *specs) {
      const auto eq = spec.find('=');
      if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size())
        throw Error(std::string(flag) + " '" + spec + "': expected NAME=DIR");
      const std::string name = spec.substr(0, eq), path = spec.substr(eq + 1);
      for (const auto& other : so.adapters)
        if (other.name == name) throw Error(std::string(flag) + " " + name + ": the name is given twice");
      const auto info = std::string(flag) == "--lora" ? attach_serving_lora(model, path, ++id)
                                                      : attach_serving_esft(model, path, ++id);
      so.adapters.push_back({name, id, path});
      std::cerr << "finmoe: adapter " << name << " (" << (std::string(flag) == "--lora" ? "LoRA" : "ESFT")
                << ", " << path << "): " << info.modules << " modules, " << info.params << " parameters\n";
    }
}

}  // namespace

void add_serve(CLI::App& app, Run& run) {
  auto* c = app.add_subcommand("serve", "OpenAI-compatible HTTP server with continuous batching (docs/serving.md)");
  static std::string dir, chat_template, served_name, api_key_file, log_level = "info", embedding_pooling = "last";
  static std::vector<std::string> lora_specs, esft_specs;
  static bool no_embedding_normalize = false;
  static EngineFlags ef;
  static ServerOptions so;
  c->add_option("DIR", dir, "model directory")->required();
  const char* a = "Adapters (served over DIR in the same batch; a request picks one by \"model\")";
  c->add_option("--lora,--lora-modules", lora_specs,
                "NAME=DIR: a PEFT LoRA adapter served as model NAME (repeatable; vLLM's --lora-modules)")
      ->group(a);
  c->add_option("--esft", esft_specs,
                "NAME=DIR: an ESFT delta (finmoe train, mode esft) of DIR served as model NAME (repeatable)")
      ->group(a);
  const char* g = "Server";
  c->add_option("--host", so.host, "address to listen on")->capture_default_str()->group(g);
  c->add_option("--port", so.port, "port (0 = any free port)")->capture_default_str()->group(g);
  c->add_option("--served-model-name", served_name, "model id clients send (default: DIR as given)")->group(g);
  auto* key = c->add_option("--api-key", so.api_key,
                             "require 'Authorization: Bearer KEY' on /v1/*; a key given here is visible to every "
                             "user in `ps`: prefer --api-key-file or the env FINMOE_API_KEY")
                   ->group(g);
  c->add_option("--api-key-file", api_key_file, "read the API key from this file (its first line)")
      ->excludes(key)
      ->group(g);
  c->add_option("--max-body-bytes", so.max_body_bytes, "larger request bodies get 413")->capture_default_str()->group(g);
  c->add_option("--http-threads", so.http_threads, "connections served at once")->capture_default_str()->group(g);
  c->add_option("--header-timeout", so.http.header_timeout_s, "seconds a request line + headers may take (408)")
      ->capture_default_str()
      ->group(g);
  c->add_option("--read-timeout", so.http.read_timeout_s, "seconds to wait for more request body bytes (408)")
      ->capture_default_str()
      ->group(g);
  c->add_option("--keep-alive-timeout", so.http.keep_alive_timeout_s, "seconds an idle connection stays open")
      ->capture_default_str()
      ->group(g);
  c->add_option("--shutdown-timeout", so.shutdown_timeout_s, "seconds in-flight requests may finish after SIGTERM")
      ->capture_default_str()
      ->group(g);
  c->add_option("--chat-template", chat_template,
                "built-in template chatml | llama3 | deepseek_v3 instead of the model's own "
                "(default: the tokenizer's chat_template)")
      ->group(g);
  c->add_option("--embedding-pooling", embedding_pooling,
                "how /v1/embeddings pools the final hidden states: last (the last token's) | mean")
      ->capture_default_str()
      ->group(g);
  c->add_flag("--no-embedding-normalize", no_embedding_normalize, "/v1/embeddings without L2 normalisation")
      ->group(g);
  c->add_option("--log-level", log_level,
                "error | warning (and aborted requests) | info (and one access line per request: "
                "time, method, path, status, latency, tokens)")
      ->capture_default_str()
      ->group(g);
  const char* l = "Request limits (400 over a limit)";
  RequestLimits& lim = so.limits;
  c->add_option("--max-prompts-per-request", lim.max_prompts, "prompts in one /v1/completions request")
      ->capture_default_str()
      ->group(l);
  c->add_option("--max-n", lim.max_n, "choices per prompt (n, best_of)")->capture_default_str()->group(l);
  c->add_option("--max-choices-per-request", lim.max_choices, "prompts x n")->capture_default_str()->group(l);
  c->add_option("--max-stop-strings", lim.max_stop, "stop strings")->capture_default_str()->group(l);
  c->add_option("--max-stop-bytes", lim.max_stop_bytes, "total bytes of the stop strings")
      ->capture_default_str()
      ->group(l);
  c->add_option("--max-logit-bias", lim.max_logit_bias, "logit_bias entries")->capture_default_str()->group(l);
  c->add_option("--max-messages", lim.max_messages, "chat messages")->capture_default_str()->group(l);
  c->add_option("--max-seqs-per-request", so.max_seqs_per_request,
                "sequences one request runs at once; its other choices wait for them (0 = no cap)")
      ->capture_default_str()
      ->group(l);
  ef.add(c);
  c->callback([&run] {
    run = [] {
      try {
        so.log_level = log_level_from_string(log_level);
      } catch (const Error& e) {
        throw Error(std::string("--log-level: ") + e.what());
      }
      try {
        so.embedding_pooling = embedding_pooling_from_string(embedding_pooling);
      } catch (const Error& e) {
        throw Error(std::string("--embedding-pooling: ") + e.what());
      }
      so.embedding_normalize = !no_embedding_normalize;
      if (!api_key_file.empty()) so.api_key = read_api_key(api_key_file);
      if (so.api_key.empty())
        if (const char* k = std::getenv("FINMOE_API_KEY")) so.api_key = k;
      so.served_model_name = served_name.empty() ? dir : served_name;
      // the template is checked now, not at the first chat request
      auto tok = Tokenizer::from_dir(dir);
      if (chat_template.empty()) ChatTemplate::from_tokenizer(tok);  // the model's own template parses
      else so.chat_template = chat_template_from_name(chat_template);
      auto model = ef.load(dir);
      attach_adapters(model, lora_specs, esft_specs, so);
      const auto gen = GenerationConfig::load(dir, model.config());
      for (int64_t e : gen.eos_token_id) so.eos_token_ids.push_back(int32_t(e));
      // generation_config.json's sampling values are the defaults (as vLLM)
      apply_generation_config(gen, so.default_sampling);
      std::optional<Engine> engine;
      ef.make_engine(engine, model, &tok);
      print_capacity(dir, model, *engine, ef.device);
      Server server(*engine, tok, model.config(), so);
      run_server(server);
      return 0;
    };
  });
}

void add_bench_serve(CLI::App* bench, Run& run) {
  auto* c = bench->add_subcommand(
      "serve", "Serving load test: TTFT, TPOT, ITL, throughput vs concurrency (a server at --url, or DIR in-process)");
  static std::string dir, url, api_key, out;
  static ServeBenchOptions o;
  static bool compare = false;
  static std::vector<int64_t> levels = {1, 4, 16, 64};
  static EngineFlags ef;
  c->add_option("DIR", dir, "model directory (in-process engine)");
  c->add_option("--url", url, "a running `finmoe serve` (http://host:port) instead of DIR");
  c->add_option("--api-key", api_key, "Bearer token for --url");
  c->add_option("--num-prompts", o.num_prompts, "requests per run")->capture_default_str();
  c->add_option("--input-len", o.input_len, "prompt tokens")->capture_default_str();
  c->add_option("--output-len", o.output_len, "generated tokens per request")->capture_default_str();
  c->add_option("--shared-prefix-ratio", o.shared_prefix_ratio, "leading fraction of prompts shared by all")
      ->capture_default_str();
  c->add_option("--request-rate", o.request_rate, "Poisson arrivals per second (0 = closed loop)")->capture_default_str();
  c->add_option("--concurrency", o.concurrency, "concurrent clients")->capture_default_str();
  c->add_option("--seed", o.seed, "prompts and arrivals")->capture_default_str();
  c->add_flag("--compare", compare, "batch-1 sequential vs continuous batching at --levels, with throughput ratios");
  c->add_option("--levels", levels, "client counts for --compare (the first is the baseline)")
      ->delimiter(',')
      ->capture_default_str();
  c->add_option("--out", out, "write the results as JSON here");
  ef.add(c);
  c->callback([&run] {
    run = [] {
      if (dir.empty() == url.empty()) throw Error("bench serve: give a model DIR or --url, not both");
      std::optional<Transformer> model;
      std::optional<Engine> engine;
      std::unique_ptr<ServeBenchTarget> target;
      std::optional<Tokenizer> tok;
      if (!url.empty()) {
        target = make_http_target(url, api_key);
      } else {
        model.emplace(ef.load(dir));
        if (std::filesystem::exists(std::filesystem::path(dir) / "tokenizer.json")) tok.emplace(Tokenizer::from_dir(dir));
        ef.make_engine(engine, *model, tok ? &*tok : nullptr);
        print_capacity(dir, *model, *engine, ef.device);
        engine->start();
        const int64_t L = ef.engine.max_model_len > 0 ? ef.engine.max_model_len : model->config().max_position_embeddings;
        target = make_engine_target(*engine, model->config().vocab_size, L);
      }
      // one short request first: lazy allocations and first-call costs stay out of the numbers
      target->run(std::vector<int32_t>(8, 1), 2);
      std::vector<ServeBenchResult> runs;
      for (int64_t c : compare ? levels : std::vector<int64_t>{o.concurrency}) {
        ServeBenchOptions oc = o;
        oc.concurrency = c;
        if (compare) oc.num_prompts = std::max(o.num_prompts, c);  // enough requests to reach c at once
        runs.push_back(bench_serve(*target, oc));
      }
      if (engine) engine->stop();
      // the kernel path an in-process engine ran (a server at --url reports its own at start-up)
      const std::string isa = engine ? kernels::path_name() : "";
      if (engine)
        std::cout << "kernels " << isa << ", " << kernels::ThreadPool::global().num_threads()
                  << " threads\n";
      std::cout << format_serve_bench_table(runs, compare);
      if (!out.empty()) {
        nlohmann::json j = {{"compare", compare}, {"runs", nlohmann::json::array()}};
        if (engine) j["isa"] = isa;
        for (const auto& r : runs) j["runs"].push_back(r.to_json());
        write_json_file(out, j);
        std::cerr << "wrote " << out << "\n";
      }
      for (const auto& r : runs)
        if (r.failed > 0)
          throw Error("bench serve: " + std::to_string(r.failed) + " request(s) failed at " +
                      std::to_string(r.options.concurrency) + " clients: " + r.first_error);
      return 0;
    };
  });
}

}  // namespace finmoe::cli
