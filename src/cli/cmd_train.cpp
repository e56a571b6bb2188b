// finmoe train: a YAML config plus command-line overrides -> finmoe/train.h.
#include <cstdio>
#include <iostream>
#include <optional>

#include "cli/commands.h"
#include "finmoe/error.h"
#include "finmoe/train.h"

namespace finmoe::cli {
namespace {

// A YAML double-quoted string (file names and paths stay strings).
std::string quoted(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

std::string quoted_list(const std::vector<std::string>& v) {
  std::string out = "[";
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + quoted(v[i]);
  return out + "]";
}

}  // namespace

void add_train(CLI::App& app, Run& run) {
  auto* c = app.add_subcommand(
      "train",
      "Train a model: pretrain | cpt | sft | hybrid | kd | esft | lora (keys: docs/training.md)");
  static std::string config_file;
  static std::vector<std::string> sets;
  static std::optional<std::string> mode, model, preset, tokenizer, output, device, precision,
      schedule, teacher, resume, expert_config;
  static std::vector<std::string> data, eval_data;
  static std::optional<std::string> lr, min_lr, max_steps, epochs, num_tokens, warmup, batch, seq_len,
      accum, seed, save_interval, eval_interval, grad_clip, weight_decay, lora_r, lora_alpha;
  static bool dry_run = false, json = false;
  c->add_option("-c,--config", config_file, "YAML train config (optional: flags alone also work)");
  c->add_option("--set", sets,
                "KEY=VALUE override of any config key, dotted for sections "
                "(data.seq_len=256); repeatable, applied before the flags below");
  auto* m = "Model and output";
  c->add_option("--mode", mode, "pretrain | cpt | sft | hybrid | kd | esft | lora (default pretrain)")
      ->group(m);
  c->add_option("--model", model, "HF model directory to start from")->group(m);
  c->add_option("--init-preset", preset, "a seeded preset instead of --model (finmoe init)")
      ->group(m);
  c->add_option("--tokenizer", tokenizer, "tokenizer directory (default: the model's)")->group(m);
  c->add_option("-o,--output-dir", output, "checkpoints, metrics, plots")->group(m);
  c->add_option("--teacher", teacher, "teacher model directory (mode kd)")->group(m);
  c->add_option("--expert-config", expert_config,
                "expert_cfg.json from `finmoe esft select` (mode esft)")
      ->group(m);
  c->add_option("--lora-r", lora_r, "LoRA rank (mode lora; default 8)")->group(m);
  c->add_option("--lora-alpha", lora_alpha, "LoRA alpha (mode lora; default 16)")->group(m);
  c->add_option("--device", device, "cpu | cuda | cuda:N (default cpu)")->group(m);
  c->add_option("--precision", precision, "auto | fp32 | bf16 (default auto)")->group(m);
  c->add_option("--resume", resume, "auto | CHECKPOINT_DIR | OUTPUT_DIR")->group(m);
  auto* d = "Data";
  c->add_option("--data", data, "training files (.jsonl / .txt); repeatable")->group(d);
  c->add_option("--eval-data", eval_data, "held-out files; repeatable")->group(d);
  c->add_option("--batch-size", batch, "sequences per micro-batch (default 8)")->group(d);
  c->add_option("--seq-len", seq_len, "tokens per sequence (default 512)")->group(d);
  auto* o = "Optimisation";
  c->add_option("--lr", lr, "peak learning rate (default 3e-4)")->group(o);
  c->add_option("--min-lr", min_lr, "final learning rate (default 0)")->group(o);
  c->add_option("--schedule", schedule, "cosine | linear | constant (default cosine)")->group(o);
  c->add_option("--warmup-steps", warmup, "linear warmup steps (default 0)")->group(o);
  c->add_option("--max-steps", max_steps, "optimizer steps")->group(o);
  c->add_option("--epochs", epochs,
                "passes over the data (instead of steps; --max-steps wins, as in HF)")
      ->group(o);
  c->add_option("--num-tokens", num_tokens, "train this many input tokens (instead of steps)")
      ->group(o);
  c->add_option("--grad-accum", accum, "micro-batches per step (default 1)")->group(o);
  c->add_option("--grad-clip", grad_clip, "global gradient norm limit, 0 = off (default 1.0)")
      ->group(o);
  c->add_option("--weight-decay", weight_decay, "AdamW decay on 2-D+ tensors (default 0.1)")
      ->group(o);
  c->add_option("--seed", seed, "random seed (default 0)")->group(o);
  auto* r = "Run";
  c->add_option("--save-interval", save_interval, "steps between checkpoints (default: end only)")
      ->group(r);
  c->add_option("--eval-interval", eval_interval, "steps between evaluations (default: end only)")
      ->group(r);
  c->add_flag("--dry-run", dry_run, "print the resolved config and the step count, train nothing")
      ->group(r);
  c->add_flag("--json", json, "print the summary as one JSON object")->group(r);
  c->callback([&run] {
    run = [] {
      std::vector<std::string> ov = sets;
      auto str = [&](const char* key, const std::optional<std::string>& v) {
        if (v) ov.push_back(std::string(key) + "=" + quoted(*v));
      };
      auto num = [&](const char* key, const std::optional<std::string>& v) {
        if (v) ov.push_back(std::string(key) + "=" + *v);
      };
      str("mode", mode);
      str("model", model);
      str("init_preset", preset);
      str("tokenizer", tokenizer);
      str("output_dir", output);
      str("kd.teacher", teacher);
      str("esft.expert_config", expert_config);
      num("lora.r", lora_r);
      num("lora.alpha", lora_alpha);
      str("device", device);
      str("precision", precision);
      str("resume", resume);
      str("schedule", schedule);
      if (!data.empty()) ov.push_back("data.files=" + quoted_list(data));
      if (!eval_data.empty()) ov.push_back("eval_data.files=" + quoted_list(eval_data));
      num("data.batch_size", batch);
      num("data.seq_len", seq_len);
      num("lr", lr);
      num("min_lr", min_lr);
      num("warmup_steps", warmup);
      num("max_steps", max_steps);
      num("epochs", epochs);
      num("num_tokens", num_tokens);
      num("grad_accum", accum);
      num("grad_clip", grad_clip);
      num("weight_decay", weight_decay);
      num("seed", seed);
      num("save_interval", save_interval);
      num("eval_interval", eval_interval);
      const TrainConfig cfg = load_train_config(config_file, ov);
      if (dry_run) {
        nlohmann::json j = cfg.to_json();
        // epochs: counted from the data when training starts
        j["total_steps"] = cfg.total_steps() > 0 ? nlohmann::json(cfg.total_steps()) : nlohmann::json();
        std::cout << j.dump(2) << "\n";
        return 0;
      }
      Trainer trainer(cfg);
      const TrainSummary s = trainer.run();
      if (s.stopped_by_signal) {  // checkpointed; the shell's code for the signal
        if (json) std::cout << s.to_json().dump(2) << "\n";
        return 128 + s.stopped_by_signal;
      }
      if (json) {
        std::cout << s.to_json().dump(2) << "\n";
      } else {
        std::printf("trained %lld steps, %lld tokens in %.1f s (%.0f tokens/s); final loss %.4f\n",
                    static_cast<long long>(s.steps), static_cast<long long>(s.tokens), s.seconds,
                    s.tokens_per_second, s.final_loss);
        if (s.final_eval)
          std::printf("eval: loss %.4f, perplexity %.3f over %lld tokens\n", s.final_eval->loss,
                      s.final_eval->ppl, static_cast<long long>(s.final_eval->tokens));
        std::printf("trainable: %lld of %lld parameters (%.2f%%); checkpoint weights %lld bytes\n",
                    static_cast<long long>(s.trainable_params),
                    static_cast<long long>(s.model_params),
                    s.model_params ? 100.0 * double(s.trainable_params) / double(s.model_params) : 0.0,
                    static_cast<long long>(s.checkpoint_bytes));
        std::printf("checkpoint: %s%s\n", s.checkpoint.c_str(),
                    s.checkpoint != s.last_checkpoint ? " (load_best_model_at_end)" : "");
        if (!s.best_checkpoint.empty())
          std::printf("best: %s (%s %.4f at step %lld)\n", s.best_checkpoint.c_str(),
                      cfg.best_metric_field().c_str(), s.best_metric,
                      static_cast<long long>(s.best_step));
      }
      return 0;
    };
  });
}

}  // namespace finmoe::cli
