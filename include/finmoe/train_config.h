#pragma once
// The training config: modes, keys and defaults (docs/training.md, "Config
// keys"), parsed from YAML with dotted-key overrides. finmoe/train.h runs it.
// No torch here: the config parses (and is fuzzed) without it.
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "finmoe/data_config.h"
#include "finmoe/lora_config.h"

namespace finmoe {

// What is trained (see TrainMethod in finmoe/train.h) and which data checks apply.
//   pretrain  every parameter; the model may be a seeded preset (init_preset)
//   cpt       continual pretraining of an existing model (`model` required)
//   sft       instruction tuning; data.format defaults to "sft"
//   hybrid    FinMoE §4.2: text and instruction files shuffled into one stream
//             (data.instruction_files and data.instruction_ratio required)
//   kd        forward-KL distillation from kd.teacher (YouZhi §3.2)
//   esft      only the experts esft.expert_config selects (ESFT, docs/esft.md);
//             checkpoints are ESFT delta directories
//   lora      low-rank adapters (lora.*); checkpoints are PEFT adapter directories
enum class TrainMode { Pretrain, Cpt, Sft, Hybrid, Kd, Esft, Lora };

std::string_view to_string(TrainMode mode);
// Throws Error listing the modes.
TrainMode train_mode_from_string(std::string_view name);

struct KdConfig {
  std::string teacher;       // teacher model directory (mode kd); same vocabulary as the student
  double temperature = 1.0;  // tau: both distributions are softmax(z / tau); KL scaled by tau^2
  double alpha = 1.0;        // loss = alpha * KL + (1 - alpha) * CE
};

struct EsftTrainConfig {
  std::string expert_config;  // expert_cfg.json (`finmoe esft select`); required in mode esft
};

// Every field is a YAML key of the same name (nested: data.*, eval_data.*, kd.*,
// esft.*, lora.* with lora.r, lora.alpha, lora.dropout, lora.target_modules,
// lora.use_rslora of LoraConfig). Hugging Face TrainingArguments names are
// accepted for the common keys (kTrainConfigAliases); an alias and its key
// both given with different values is an error naming both.
struct TrainConfig {
  TrainMode mode = TrainMode::Pretrain;

  // ---- model
  std::string model;            // HF directory to start from
  std::string init_preset;      // when `model` is empty: a seeded preset (finmoe init)
  std::string init_model_type;  // preset's architecture override ("" = the preset's)
  int64_t init_vocab_size = 0;  // 0 = the tokenizer's vocabulary (else the preset's)
  std::string tokenizer;        // directory with tokenizer.json; "" = `model`
  std::string output_dir;       // required: checkpoints, metrics, plots
  std::string device = "cpu";   // cpu | cuda | cuda:N
  // auto: bf16 autocast on CUDA, fp32 on CPU; fp32; bf16 (autocast). The
  // weights and optimizer state are float32 in every case.
  std::string precision = "auto";

  // ---- data (dataset.h). data.seed defaults to `seed`.
  DataConfig data;
  // Held-out data; files empty = no evaluation. Unset keys are taken from
  // `data` (seq_len, batch_size, format, ...), shuffle defaults to false.
  DataConfig eval_data;
  int64_t eval_interval = 0;  // steps between evaluations; 0 = only at the end
  int64_t eval_batches = 8;   // fixed batches read once from eval_data

  // ---- optimizer: AdamW as PyTorch's (decoupled weight decay).
  double lr = 3e-4;
  double min_lr = 0.0;
  std::array<double, 2> betas = {0.9, 0.95};
  double eps = 1e-8;
  double weight_decay = 0.1;  // Megatron-style: only tensors of 2+ dims (not norms, biases)

  // ---- schedule: linear warmup to lr, then cosine | linear | constant to min_lr.
  std::string schedule = "cosine";
  int64_t warmup_steps = 0;
  double warmup_ratio = 0.0;  // of the total steps, when warmup_steps is 0 (FineRMoE: 0.01)
  int64_t max_steps = 0;      // optimizer steps (wins over epochs and num_tokens, as in HF); or
  double epochs = 0.0;        // passes over the data (HF num_train_epochs; steps from the data's
                              // size at start, a fraction allowed); or
  int64_t num_tokens = 0;     // train until this many input tokens
  double grad_clip = 1.0;     // global L2 norm; 0 = off
  int64_t grad_accum = 1;     // micro-batches (of data.batch_size) per optimizer step

  // ---- losses
  std::optional<double> moe_aux_loss_alpha;  // load-balancing alpha; default: router_aux_loss_coef
  // load-balancing form: "sequence" | "batch" (finmoe/load_balance.h); empty =
  // the architecture's (sequence for finer_moe and deepseek, batch otherwise)
  std::string moe_aux_loss_type;
  KdConfig kd;

  // ---- parameter-efficient modes
  EsftTrainConfig esft;
  LoraConfig lora;

  // ---- run
  uint64_t seed = 0;
  int64_t save_interval = 0;     // steps between checkpoints; 0 = only at the end
  int64_t keep_checkpoints = 0;  // newest N checkpoint-* kept; 0 = all
  int64_t log_interval = 10;     // steps between log lines (metrics files get every step); 0 = none
  std::string resume;            // "" | "auto" (OUTPUT/latest if present) | checkpoint dir

  // ---- reporting (HF names): TensorBoard event files of every step's metrics
  // in logging_dir ("" = OUTPUT/runs). report_to: "tensorboard" | "all" (the
  // same) | "none"; other integrations are refused.
  std::vector<std::string> report_to = {"tensorboard"};
  std::string logging_dir;

  // ---- best checkpoint (HF names): among checkpoints written at a step that
  // evaluated, the one with the best metric_for_best_model (eval_loss |
  // eval_ppl; HF's "loss" / "ppl" too) is recorded and never rotated away by
  // keep_checkpoints; load_best_model_at_end makes it the run's model.
  std::string metric_for_best_model = "eval_loss";
  bool greater_is_better = false;
  bool load_best_model_at_end = false;

  // report_to names TensorBoard.
  bool tensorboard() const;
  // metric_for_best_model as a metrics-file field: "eval_loss" or "eval_ppl".
  std::string best_metric_field() const;

  // Optimizer steps this config runs (max_steps, or num_tokens over the
  // tokens of one step, rounded up); 0 when they follow from epochs and the
  // data (the Trainer counts them, epoch_steps() below).
  int64_t total_steps() const;
  // Optimizer steps of `epochs` passes over data of `rows_per_epoch` packed
  // rows, as HF's Trainer counts them: ceil(epochs * max(1, floor(ceil(rows /
  // batch_size) / grad_accum))).
  int64_t epoch_steps(int64_t rows_per_epoch) const;
  // Checks values and mode requirements; throws Error naming the key.
  void validate() const;
  nlohmann::json to_json() const;
};

// Parses YAML text. `overrides` are "key=value" (dotted keys for nested
// sections, values in YAML: "lr=1e-4", "data.files=[a.jsonl, b.jsonl]")
// applied over the file. Unknown keys and wrongly typed values throw Error
// naming `source` and the key. Validates the result.
TrainConfig parse_train_config(const std::string& yaml, const std::string& source,
                               const std::vector<std::string>& overrides = {});
// Reads `path` ("" = overrides only) and parses it as above.
TrainConfig load_train_config(const std::string& path,
                              const std::vector<std::string>& overrides = {});

// HF TrainingArguments name -> finmoe key (dotted for sections), as parsed by
// parse_train_config: learning_rate -> lr, per_device_train_batch_size ->
// data.batch_size, num_train_epochs -> epochs, ... lr_scheduler_type values
// map too (constant_with_warmup -> constant).
struct TrainConfigAlias {
  std::string_view alias;
  std::string_view key;
};
extern const std::array<TrainConfigAlias, 12> kTrainConfigAliases;

}  // namespace finmoe
