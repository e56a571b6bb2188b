// finmoe generate | chat
#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <optional>
#include <sstream>

#include "cli/commands.h"
#include "cli/sampling_defaults.h"
#include "finmoe/chat_template.h"
#include "finmoe/config.h"
#include "finmoe/error.h"
#include "finmoe/generate.h"
#include "kernels/thread_pool.h"
#include "serve/constraint.h"

namespace finmoe::cli {
namespace {

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot read " + path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// Options shared by generate and chat: one registry, one meaning. Sampling
// values left out come from the model's generation_config.json, as in
// `serve` (sampling_defaults.h); llama.cpp's short flags where free.
struct GenFlags {
  std::string dir;
  std::string dtype;
  std::string device = "cpu";
  std::string chat_template;
  std::string adapter;
  std::optional<int64_t> max_new_tokens;  // else generation_config's max_new_tokens, else 128
  std::optional<double> temperature;
  std::optional<int64_t> top_k;
  std::optional<double> top_p;
  std::optional<double> min_p;
  std::optional<double> repetition_penalty;
  uint64_t seed = 0;
  bool greedy = false;
  int threads = 0;       // 0: FINMOE_NUM_THREADS, else the CPUs this process may use
  int64_t ctx_size = 0;  // 0: the model's max_position_embeddings
  std::vector<std::string> stop;
  std::string json_schema;  // file
  std::string regex;

  static constexpr int64_t kDefaultMaxNewTokens = 128;
  static constexpr int kMaxThreads = 4096;

  void add(CLI::App* c) {
    const char* from_config = " (default: generation_config.json's, else ";
    c->add_option("DIR", dir, "model directory")->required();
    c->add_option("--dtype", dtype, "float32 | bfloat16 (default: the checkpoint's)");
    c->add_option("--device", device, "cpu | cuda | cuda:N")->capture_default_str();
    c->add_option("--adapter", adapter, "LoRA adapter directory (PEFT layout), applied unmerged");
    c->add_option("-n,--max-new-tokens", max_new_tokens,
                  std::string("tokens to generate") + from_config +
                      std::to_string(kDefaultMaxNewTokens) + ")");
    c->add_option("--temperature", temperature, std::string("0 = greedy") + from_config + "1.0)");
    c->add_option("--top-k", top_k, std::string("0 = off") + from_config + "0)");
    c->add_option("--top-p", top_p, std::string("1 = off") + from_config + "1.0)");
    c->add_option("--min-p", min_p, std::string("0 = off") + from_config + "0)");
    c->add_option("--repetition-penalty", repetition_penalty,
                  std::string("1 = off") + from_config + "1.0)");
    c->add_option("-s,--seed", seed, "sampling seed")->capture_default_str();
    c->add_flag("--greedy", greedy, "same as --temperature 0");
    c->add_option("--stop", stop, "stop string (repeatable)");
    c->add_option("-t,--threads", threads,
                  "decode threads (default 0: FINMOE_NUM_THREADS, else all CPUs this process may use)");
    c->add_option("-c,--ctx-size", ctx_size,
                  "tokens of prompt + generation per sequence (default 0: the model's "
                  "max_position_embeddings)");
    c->add_option("--json-schema", json_schema,
                  "JSON schema file: the output is JSON valid against it (constrained decoding)");
    c->add_option("--regex", regex, "the output matches this regex in full (constrained decoding)");
    c->add_option("--chat-template", chat_template,
                  "built-in template chatml | llama3 | deepseek_v3 instead of the model's own "
                  "(default: the tokenizer's chat_template)");
  }

  // Before the model loads: --threads sizes the decode thread pool, which
  // reads FINMOE_NUM_THREADS when it is first used.
  void apply_threads() const {
    if (threads < 0 || threads > kMaxThreads)
      throw Error("--threads must be in [0, " + std::to_string(kMaxThreads) + "], got " +
                  std::to_string(threads));
    if (threads == 0) return;
    ::setenv("FINMOE_NUM_THREADS", std::to_string(threads).c_str(), 1);
    if (kernels::ThreadPool::global().num_threads() != threads)
      throw Error("--threads " + std::to_string(threads) + ": the thread pool already runs " +
                  std::to_string(kernels::ThreadPool::global().num_threads()) + " threads");
  }

  // `longest_prompt`: tokens of the longest prompt, checked against --ctx-size.
  GenerationOptions options(const ModelConfig& cfg, const std::string& model_dir, const Tokenizer& tok,
                            int64_t longest_prompt = 0) const {
    const GenerationConfig gen = GenerationConfig::load(model_dir, cfg);
    GenerationOptions o;
    apply_generation_config(gen, o.sampling);
    if (temperature) o.sampling.temperature = *temperature;
    if (greedy) o.sampling.temperature = 0.0;
    if (top_k) o.sampling.top_k = *top_k;
    if (top_p) o.sampling.top_p = *top_p;
    if (min_p) o.sampling.min_p = *min_p;
    if (repetition_penalty) o.sampling.repetition_penalty = *repetition_penalty;
    o.sampling.seed = seed;
    o.max_new_tokens = max_new_tokens.value_or(gen.max_new_tokens.value_or(kDefaultMaxNewTokens));
    if (o.max_new_tokens < 0 || o.max_new_tokens > kMaxPositions)
      throw Error(std::string(max_new_tokens ? "--max-new-tokens" : "generation_config.json: max_new_tokens") +
                  " must be in [0, " + std::to_string(kMaxPositions) + "], got " +
                  std::to_string(o.max_new_tokens));
    if (ctx_size < 0 || ctx_size > kMaxPositions)
      throw Error("--ctx-size must be in [0, " + std::to_string(kMaxPositions) + "], got " +
                  std::to_string(ctx_size));
    if (ctx_size > 0) {
      if (longest_prompt >= ctx_size)
        throw Error("--ctx-size " + std::to_string(ctx_size) + ": a prompt of " +
                    std::to_string(longest_prompt) + " tokens leaves no room to generate");
      o.max_new_tokens = std::min(o.max_new_tokens, ctx_size - longest_prompt);
    }
    o.stop_strings = stop;
    for (int64_t e : gen.eos_token_id) o.stop_token_ids.push_back(int32_t(e));
    o.sampling.constraint = constraint(cfg, tok);
    return o;
  }

  // Compiled once (a chat builds its options every turn).
  std::shared_ptr<const TokenConstraint> constraint(const ModelConfig& cfg, const Tokenizer& tok) const {
    if (!json_schema.empty() && !regex.empty()) throw Error("--json-schema and --regex exclude each other");
    if (json_schema.empty() && regex.empty()) return nullptr;
    if (compiled_) return compiled_;
    auto vocab = std::make_shared<const TokenVocab>(cfg.vocab_size, tok);
    if (!regex.empty()) {
      try {
        return compiled_ = regex_constraint(regex, vocab);
      } catch (const Error& e) {
        throw Error(std::string("--regex: ") + e.what());
      }
    }
    nlohmann::ordered_json schema;
    try {
      schema = nlohmann::ordered_json::parse(read_text_file(json_schema));
    } catch (const nlohmann::json::exception& e) {
      throw Error("--json-schema " + json_schema + ": not valid JSON: " + e.what());
    }
    try {
      return compiled_ = json_schema_constraint(schema, vocab);
    } catch (const constrain::SchemaError& e) {
      throw Error("--json-schema " + json_schema + (e.path().empty() ? "" : ": at " + e.path()) + ": " + e.what());
    }
  }
  mutable std::shared_ptr<const TokenConstraint> compiled_;

  std::optional<ChatTemplateKind> template_kind() const {
    if (chat_template.empty()) return std::nullopt;
    return chat_template_from_name(chat_template);
  }
};

// A prompt file (-f): its bytes, as llama.cpp reads them.
std::string read_prompt_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("--file " + path + ": cannot read the prompt file");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void print_stats(const GenerationStats& s, int64_t prompt_tokens) {
  std::cerr << std::fixed << std::setprecision(1) << "\n[" << prompt_tokens << " prompt tokens] TTFT "
            << s.ttft_s * 1e3 << " ms, prefill " << s.prefill_tokens_per_s() << " tok/s, decode "
            << s.decode_tokens_per_s() << " tok/s (" << s.decode_tokens << " tokens)\n";
}

}  // namespace

void add_generate(CLI::App& app, Run& run) {
  auto* c = app.add_subcommand("generate", "Generate text from a prompt (streams), then print speed");
  static GenFlags f;
  static std::vector<std::string> prompts, prompt_files;
  static bool chat = false;
  f.add(c);
  c->add_option("-p,--prompt", prompts, "prompt (repeat for a batch)");
  c->add_option("-f,--file", prompt_files, "a file whose text is a prompt (repeatable; after the -p prompts)");
  c->add_flag("--chat", chat, "wrap each prompt as a user message with the chat template");
  c->callback([&run] {
    run = [] {
      std::vector<std::string> all = prompts;
      for (const auto& path : prompt_files) all.push_back(read_prompt_file(path));
      if (all.empty()) throw Error("generate: give a prompt with -p/--prompt or -f/--file");
      f.apply_threads();
      auto tok = Tokenizer::from_dir(f.dir);
      LoadOptions lo;
      if (!f.dtype.empty()) lo.dtype = dtype_from_string(f.dtype);
      lo.device = device_from_string(f.device);
      lo.lora_adapter = f.adapter;
      auto model = load_model(f.dir, lo);
      std::vector<std::vector<int32_t>> ids;
      int64_t longest = 0;
      for (const auto& p : all) {
        std::string text = chat ? render_chat(tok, {{"user", p}}, true, f.template_kind()) : p;
        ids.push_back(tok.encode(text, !chat));
        longest = std::max(longest, int64_t(ids.back().size()));
      }
      Generator gen(model, &tok);
      GenerationStats stats;
      const bool single = all.size() == 1;
      auto results = gen.generate(ids, f.options(model.config(), f.dir, tok, longest),
                                  [&](size_t, const std::string& s) {
                                    if (single) std::cout << s << std::flush;
                                  },
                                  &stats);
      if (!single)
        for (size_t i = 0; i < results.size(); ++i)
          std::cout << "--- [" << i << "] " << results[i].finish_reason << "\n" << results[i].text << "\n";
      else
        std::cout << "\n";
      int64_t prompt_tokens = 0;
      for (const auto& r : results) prompt_tokens += r.prompt_tokens;
      print_stats(stats, prompt_tokens);
      return 0;
    };
  });
}

void add_chat(CLI::App& app, Run& run) {
  auto* c = app.add_subcommand("chat", "Interactive chat (the tokenizer's template, with history)");
  static GenFlags f;
  static std::string system;
  f.add(c);
  c->add_option("--system", system, "system prompt");
  c->callback([&run] {
    run = [] {
      f.apply_threads();
      auto tok = Tokenizer::from_dir(f.dir);
      const auto kind = f.template_kind();
      if (!kind) ChatTemplate::from_tokenizer(tok);  // the model's own template parses
      LoadOptions lo;
      if (!f.dtype.empty()) lo.dtype = dtype_from_string(f.dtype);
      lo.device = device_from_string(f.device);
      lo.lora_adapter = f.adapter;
      auto model = load_model(f.dir, lo);
      Generator gen(model, &tok);
      f.options(model.config(), f.dir, tok);  // bad flags fail now, not at the first turn
      std::vector<ChatMessage> history;
      if (!system.empty()) history.push_back({"system", system});
      std::cerr << "finmoe chat: " << f.dir << " (/reset clears history, /quit or EOF ends)\n";
      std::string line;
      while (true) {
        std::cout << "\n> " << std::flush;
        if (!std::getline(std::cin, line) || line == "/quit") break;
        if (line == "/reset") {
          history.erase(history.begin() + (system.empty() ? 0 : 1), history.end());
          continue;
        }
        if (line.empty()) continue;
        history.push_back({"user", line});
        auto ids = tok.encode(render_chat(tok, history, true, kind), false);
        GenerationStats stats;
        const auto opts = f.options(model.config(), f.dir, tok, int64_t(ids.size()));
        auto r = gen.generate({ids}, opts, [](size_t, const std::string& s) { std::cout << s << std::flush; },
                              &stats)[0];
        history.push_back({"assistant", r.text});
        print_stats(stats, r.prompt_tokens);
      }
      return 0;
    };
  });
}

}  // namespace finmoe::cli
