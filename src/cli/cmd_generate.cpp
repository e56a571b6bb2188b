// finmoe generate | chat
#include <filesystem>
#include <fstream>
#include <sstream>
#include <iomanip>
#include <iostream>

#include "cli/commands.h"
#include "finmoe/chat_template.h"
#include "finmoe/config.h"
#include "finmoe/error.h"
#include "finmoe/generate.h"
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

// Options shared by generate and chat: one registry, one meaning.
struct GenFlags {
  std::string dir;
  std::string dtype;
  std::string device = "cpu";
  std::string chat_template;
  std::string adapter;
  int64_t max_new_tokens = 128;
  double temperature = 0.7;
  int64_t top_k = 0;
  double top_p = 1.0;
  double min_p = 0.0;
  double repetition_penalty = 1.0;
  uint64_t seed = 0;
  bool greedy = false;
  std::vector<std::string> stop;
  std::string json_schema;  // file
  std::string regex;

  void add(CLI::App* c) {
    c->add_option("DIR", dir, "model directory")->required();
    c->add_option("--dtype", dtype, "float32 | bfloat16 (default: the checkpoint's)");
    c->add_option("--device", device, "cpu | cuda | cuda:N")->capture_default_str();
    c->add_option("--adapter", adapter, "LoRA adapter directory (PEFT layout), applied unmerged");
    c->add_option("-n,--max-new-tokens", max_new_tokens, "tokens to generate")->capture_default_str();
    c->add_option("--temperature", temperature, "0 = greedy")->capture_default_str();
    c->add_option("--top-k", top_k, "0 = off")->capture_default_str();
    c->add_option("--top-p", top_p, "1 = off")->capture_default_str();
    c->add_option("--min-p", min_p, "0 = off")->capture_default_str();
    c->add_option("--repetition-penalty", repetition_penalty, "1 = off")->capture_default_str();
    c->add_option("--seed", seed, "sampling seed")->capture_default_str();
    c->add_flag("--greedy", greedy, "same as --temperature 0");
    c->add_option("--stop", stop, "stop string (repeatable)");
    c->add_option("--json-schema", json_schema,
                  "JSON schema file: the output is JSON valid against it (constrained decoding)");
    c->add_option("--regex", regex, "the output matches this regex in full (constrained decoding)");
    c->add_option("--chat-template", chat_template,
                  "built-in template chatml | llama3 | deepseek_v3 instead of the model's own "
                  "(default: the tokenizer's chat_template)");
  }

  GenerationOptions options(const ModelConfig& cfg, const std::string& model_dir, const Tokenizer& tok) const {
    if (max_new_tokens < 0 || max_new_tokens > kMaxPositions)
      throw Error("--max-new-tokens must be in [0, " + std::to_string(kMaxPositions) + "], got " +
                  std::to_string(max_new_tokens));
    GenerationOptions o;
    o.sampling.temperature = greedy ? 0.0 : temperature;
    o.sampling.top_k = top_k;
    o.sampling.top_p = top_p;
    o.sampling.min_p = min_p;
    o.sampling.repetition_penalty = repetition_penalty;
    o.sampling.seed = seed;
    o.max_new_tokens = max_new_tokens;
    o.stop_strings = stop;
    for (int64_t e : GenerationConfig::load(model_dir, cfg).eos_token_id) o.stop_token_ids.push_back(int32_t(e));
    o.sampling.constraint = constraint(cfg, tok);
    return o;
  }

  std::shared_ptr<const TokenConstraint> constraint(const ModelConfig& cfg, const Tokenizer& tok) const {
    if (!json_schema.empty() && !regex.empty()) throw Error("--json-schema and --regex exclude each other");
    if (json_schema.empty() && regex.empty()) return nullptr;
    auto vocab = std::make_shared<const TokenVocab>(cfg.vocab_size, tok);
    if (!regex.empty()) {
      try {
        return regex_constraint(regex, vocab);
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
      return json_schema_constraint(schema, vocab);
    } catch (const constrain::SchemaError& e) {
      throw Error("--json-schema " + json_schema + (e.path().empty() ? "" : ": at " + e.path()) + ": " + e.what());
    }
  }

  std::optional<ChatTemplateKind> template_kind() const {
    if (chat_template.empty()) return std::nullopt;
    return chat_template_from_name(chat_template);
  }
};

void print_stats(const GenerationStats& s, int64_t prompt_tokens) {
  std::cerr << std::fixed << std::setprecision(1) << "\n[" << prompt_tokens << " prompt tokens] TTFT "
            << s.ttft_s * 1e3 << " ms, prefill " << s.prefill_tokens_per_s() << " tok/s, decode "
            << s.decode_tokens_per_s() << " tok/s (" << s.decode_tokens << " tokens)\n";
}

}  // namespace

void add_generate(CLI::App& app, Run& run) {
  auto* c = app.add_subcommand("generate", "Generate text from a prompt (streams), then print speed");
  static GenFlags f;
  static std::vector<std::string> prompts;
  static bool chat = false;
  f.add(c);
  c->add_option("-p,--prompt", prompts, "prompt (repeat for a batch)")->required();
  c->add_flag("--chat", chat, "wrap each prompt as a user message with the chat template");
  c->callback([&run] {
    run = [] {
      auto tok = Tokenizer::from_dir(f.dir);
      LoadOptions lo;
      if (!f.dtype.empty()) lo.dtype = dtype_from_string(f.dtype);
      lo.device = device_from_string(f.device);
      lo.lora_adapter = f.adapter;
      auto model = load_model(f.dir, lo);
      std::vector<std::vector<int32_t>> ids;
      for (const auto& p : prompts) {
        std::string text = chat ? render_chat(tok, {{"user", p}}, true, f.template_kind()) : p;
        ids.push_back(tok.encode(text, !chat));
      }
      Generator gen(model, &tok);
      GenerationStats stats;
      const bool single = prompts.size() == 1;
      auto results = gen.generate(ids, f.options(model.config(), f.dir, tok),
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
      auto tok = Tokenizer::from_dir(f.dir);
      const auto kind = f.template_kind();
      if (!kind) ChatTemplate::from_tokenizer(tok);  // the model's own template parses
      LoadOptions lo;
      if (!f.dtype.empty()) lo.dtype = dtype_from_string(f.dtype);
      lo.device = device_from_string(f.device);
      lo.lora_adapter = f.adapter;
      auto model = load_model(f.dir, lo);
      Generator gen(model, &tok);
      const auto opts = f.options(model.config(), f.dir, tok);
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
