// finmoe experts: routing statistics and expert similarity of an MoE checkpoint.
#include <iostream>

#include "cli/commands.h"
#include "core/progress.h"
#include "finmoe/analysis.h"
#include "finmoe/error.h"
#include "finmoe/model.h"
#include "finmoe/tokenizer.h"

namespace finmoe::cli {

void add_experts(CLI::App& app, Run& run) {
  auto* c = app.add_subcommand(
      "experts", "Routing statistics on a corpus and expert weight similarity of an MoE model");
  c->footer(
      "Per expert e and MoE layer (g = e's combination weight when selected, else 0):\n"
      "  selection_ratio  tokens selecting e / tokens\n"
      "  esft_gate        ESFT Eq. 6: mean over sequences of the per-sequence mean of g\n"
      "  esft_token       ESFT Eq. 7: mean over sequences of the per-sequence mean of "
      "1[selected]/K\n"
      "  imbalance        max load / mean load; entropy: normalised entropy of the load\n"
      "  similarity       cosine of two experts' flattened weights, averaged over pairs\n"
      "Writes routing.{json,csv}, similarity.{json,csv}, load_heatmap.svg, similarity.svg.");
  static std::string dir, data, out = "experts-report", dtype = "float32", device = "cpu";
  static int64_t seq_len = 256, max_tokens = 20000;
  c->add_option("DIR", dir, "MoE model directory (HF format, with tokenizer.json)")->required();
  c->add_option("--data", data, "corpus: plain text, or .jsonl lines {\"text\"} / {\"messages\"}")
      ->required();
  c->add_option("--out", out, "report directory")->capture_default_str();
  c->add_option("--seq-len", seq_len, "tokens per sequence (one ESFT sequence each)")
      ->capture_default_str();
  c->add_option("--max-tokens", max_tokens, "tokens of the corpus to route (<= 0: all)")
      ->capture_default_str();
  c->add_option("--dtype", dtype, "float32 | bfloat16")->capture_default_str();
  c->add_option("--device", device, "cpu | cuda | cuda:N")->capture_default_str();
  c->callback([&run] {
    run = [] {
      const ModelConfig cfg = ModelConfig::load(dir);
      if (!cfg.is_moe())
        throw Error(
            dir + ": model_type '" + cfg.model_type +
            "' has no routed experts (num_experts = 0); `finmoe experts` needs an MoE model");
      const auto tok = Tokenizer::from_dir(dir);
      const auto chunks =
          tokenize_corpus(data, tok, {.seq_len = seq_len, .max_tokens = max_tokens});
      int64_t total = 0;
      for (const auto& ch : chunks) total += int64_t(ch.tokens.size());
      auto model = load_model(
          dir, {.dtype = dtype_from_string(dtype), .device = device_from_string(device)});

      ExpertReport report;
      report.model = dir;
      report.model_type = cfg.model_type;
      report.data = data;
      {
        Progress bar("routing", total, "tok");
        report.routing =
            collect_routing(model, chunks, [&](int64_t done) { bar.update(done); }).results();
      }
      report.similarity = expert_similarity(model);
      const auto files = write_expert_report(out, report);
      std::cout << cfg.model_type << ", " << cfg.num_experts << " experts, top-"
                << cfg.num_experts_per_tok << ", " << total << " tokens in " << chunks.size()
                << " sequences of <= " << seq_len << "\n"
                << format_expert_summary(report);
      for (const auto& f : files) std::cout << "wrote " << f << "\n";
      return 0;
    };
  });
}

}  // namespace finmoe::cli
