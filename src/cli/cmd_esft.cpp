// finmoe esft score | select, finmoe lora merge (finmoe/esft.h, finmoe/lora.h).
#include <algorithm>
#include <iomanip>
#include <optional>
#include <iostream>
#include <numeric>

#include "cli/commands.h"
#include "core/progress.h"
#include "finmoe/config.h"
#include "finmoe/error.h"
#include "finmoe/esft.h"
#include "finmoe/lora.h"
#include "finmoe/model.h"
#include "finmoe/tokenizer.h"

namespace finmoe::cli {
namespace {

// "layer 3  top: 5 (0.312) 1 (0.201) 0 (0.120) ..." for a terminal.
void print_top(std::ostream& os, const std::map<int64_t, std::vector<double>>& table, size_t top) {
  for (const auto& [layer, v] : table) {
    std::vector<size_t> order(v.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return v[a] > v[b]; });
    os << "  layer " << std::setw(3) << layer << "  top:";
    for (size_t i = 0; i < std::min(top, order.size()); ++i)
      os << " " << order[i] << " (" << std::fixed << std::setprecision(3) << v[order[i]] << ")";
    os << "\n";
  }
}

void add_esft_score(CLI::App* parent, Run& run) {
  auto* c = parent->add_subcommand(
      "score", "Expert relevance scores of a task (ESFT §3.3): average gate score, token selection ratio");
  c->footer(
      "Per MoE layer and routed expert, pooled over the sampled tokens and normalised so each\n"
      "layer sums to 1 over its experts (g = the expert's combination weight when selected):\n"
      "  gate_scores   sum_t g / sum over experts and tokens of g            (ESFT-Gate, Eq. 6)\n"
      "  token_scores  tokens selecting the expert / (K * tokens)            (ESFT-Token, Eq. 7)\n"
      "Output: {\"token_scores\": {\"<layer>\": {\"<expert>\": s}}, \"gate_scores\": {...}}");
  static std::string model_dir, data, out, dtype = "float32", device = "cpu", gate = "softmax";
  static EsftScoreOptions o;
  c->add_option("MODEL", model_dir, "MoE model directory (HF format, with tokenizer.json)")
      ->required();
  c->add_option("--data", data, "task data: .jsonl lines {\"text\"} / {\"messages\"}, or plain text")
      ->required();
  c->add_option("--out", out, "scores JSON file (default: print to stdout)");
  c->add_option("--seq-len", o.seq_len, "tokens per sampled sequence (the paper: 4096)")
      ->capture_default_str();
  c->add_option("--max-tokens", o.max_tokens, "tokens to sample (<= 0: the whole file)")
      ->capture_default_str();
  c->add_option("--seed", o.seed, "which sequences are sampled")->capture_default_str();
  c->add_option("--gate-score", gate,
                "g of the gate scores: softmax (the full softmax at the selected experts, the "
                "paper's) | applied (the weight the layer applies, renormalised top-k)")
      ->capture_default_str();
  c->add_option("--dtype", dtype, "float32 | bfloat16")->capture_default_str();
  c->add_option("--device", device, "cpu | cuda | cuda:N")->capture_default_str();
  c->callback([&run] {
    run = [] {
      o.gate = esft_gate_from_string(gate, "--gate-score");
      const auto tok = Tokenizer::from_dir(model_dir);
      auto model = load_model(
          model_dir, {.dtype = dtype_from_string(dtype), .device = device_from_string(device)});
      EsftScores scores;
      {
        std::optional<Progress> bar;
        scores = score_experts(model, tok, data, o, [&](int64_t done, int64_t total) {
          if (!bar) bar.emplace("routing", total, "tok");
          bar->update(done);
        });
      }
      std::cerr << model.config().model_type << ": " << scores.tokens << " tokens in "
                << scores.sequences << " sequences; token scores:\n";
      print_top(std::cerr, scores.token_scores, 6);
      if (out.empty()) {
        std::cout << esft_scores_to_json(scores).dump(2) << "\n";
      } else {
        save_esft_scores(out, scores);
        std::cerr << "wrote " << out << "\n";
      }
      return 0;
    };
  });
}

void add_esft_select(CLI::App* parent, Run& run) {
  auto* c = parent->add_subcommand(
      "select", "Per layer, the top experts whose cumulative score reaches p (ESFT Eq. 8)");
  c->footer(
      "Experts are added in descending score while the sum of those already added is < p, so\n"
      "the expert that crosses p is included. Output (the ESFT repo's expert config):\n"
      "  {\"experts\": {\"<layer>\": [ids]}, \"shared_experts\": b, \"non_expert_modules\": b}");
  static std::string scores_path, score = "token", out, model_dir;
  static double p = 0.2;
  static bool shared = false, non_expert = false;
  static std::optional<uint64_t> random_seed;
  c->add_option("SCORES", scores_path, "scores JSON from `finmoe esft score`")->required();
  c->add_option("--score", score, "token (ESFT-Token) | gate (ESFT-Gate)")->capture_default_str();
  c->add_option("--p", p, "share of each layer's total score to cover, in (0, 1]")
      ->capture_default_str();
  c->add_option("--out", out, "expert config JSON (default: print to stdout)");
  c->add_flag("--train-shared-experts", shared, "also train the shared experts (§6.3)");
  c->add_flag("--train-non-expert-modules", non_expert,
              "also train routers, attention, norms, embeddings, dense FFNs (§6.3)");
  c->add_option("--model", model_dir, "model directory: also print trainable parameters");
  c->add_option("--random", random_seed,
                "SEED: as many experts per layer as the score-based selection, drawn uniformly at "
                "random instead (ESFT Table 4's control)");
  c->callback([&run] {
    run = [] {
      const EsftScoreKind kind = esft_score_kind(score);
      const EsftScores scores = load_esft_scores(scores_path);
      ExpertConfig cfg = select_experts(scores, kind, p);
      if (random_seed) {
        const auto& table = kind == EsftScoreKind::Token ? scores.token_scores : scores.gate_scores;
        cfg = random_experts_like(cfg, int64_t(table.begin()->second.size()), *random_seed);
        std::cerr << "random experts (seed " << *random_seed << "), ";
      }
      cfg.shared_experts = shared;
      cfg.non_expert_modules = non_expert;
      int64_t total = 0, layers = 0;
      for (const auto& [layer, ids] : cfg.experts) total += int64_t(ids.size()), ++layers;
      std::cerr << "ESFT-" << (kind == EsftScoreKind::Token ? "Token" : "Gate") << ", p = " << p
                << ": " << total << " experts over " << layers << " layers (" << std::fixed
                << std::setprecision(1) << (layers ? double(total) / double(layers) : 0.0)
                << " per layer)\n";
      if (!model_dir.empty()) {
        const ModelConfig m = ModelConfig::load(model_dir);
        const EsftParamCount n = esft_param_count(m, cfg);
        const int64_t elem = dtype_from_string(m.torch_dtype) == torch::kFloat32 ? 4 : 2;
        std::cerr << "trainable   " << n.trainable << " of " << n.total << " parameters ("
                  << std::setprecision(2) << 100.0 * double(n.trainable) / double(n.total)
                  << "%): routed experts " << n.routed << ", shared experts " << n.shared
                  << ", non-expert " << n.other << "\n"
                  << "delta size  ~" << n.trainable * elem << " bytes in " << m.torch_dtype << "\n";
      }
      if (out.empty()) {
        std::cout << expert_config_to_json(cfg).dump() << "\n";
      } else {
        save_expert_config(out, cfg);
        std::cerr << "wrote " << out << "\n";
      }
      return 0;
    };
  });
}

}  // namespace

void add_esft(CLI::App& app, Run& run) {
  auto* c = app.add_subcommand("esft", "Expert-Specialized Fine-Tuning: expert scores and selection");
  c->require_subcommand(1);
  add_esft_score(c, run);
  add_esft_select(c, run);
}

void add_lora(CLI::App& app, Run& run) {
  auto* c = app.add_subcommand("lora", "LoRA adapters in PEFT's layout");
  c->require_subcommand(1);
  auto* m = c->add_subcommand("merge", "Merge a LoRA adapter into its base: plain HF weights");
  static std::string base, adapter, out, dtype;
  m->add_option("BASE", base, "base model directory")->required();
  m->add_option("ADAPTER", adapter, "adapter directory (adapter_config.json, adapter_model.safetensors)")
      ->required();
  m->add_option("OUT", out, "output directory (must not exist or be empty)")->required();
  m->add_option("--dtype", dtype, "float32 | bfloat16 | float16 (default: the base's)");
  m->callback([&run] {
    run = [] {
      std::optional<torch::Dtype> dt;
      if (!dtype.empty()) dt = dtype_from_string(dtype);
      const LoraConfig cfg = load_lora_config(adapter);
      merge_lora_checkpoint(base, adapter, out, dt);
      std::cout << "merged LoRA r=" << cfg.r << " alpha=" << cfg.alpha << " (scaling "
                << cfg.scaling() << ") into " << out << "\n";
      return 0;
    };
  });
}

}  // namespace finmoe::cli
