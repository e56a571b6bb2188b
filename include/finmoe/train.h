#pragma once
// Training: pretraining, continual pretraining, SFT, FinMoE's hybrid tuning
// (FinMoE §4) and forward-KL distillation (YouZhi §3.2) of one Transformer,
// with AdamW, warmup + cosine/linear/constant schedules, gradient
// accumulation and clipping, the MoE load-balancing loss (FineRMoE App. B.1),
// periodic held-out perplexity, atomic checkpoints and exact resume.
//
//   TrainConfig cfg = load_train_config("train.yaml", {"lr=1e-4"});
//   Trainer trainer(cfg);
//   TrainSummary s = trainer.run();
//
// Config keys, defaults, the checkpoint layout and the metrics files are
// described in docs/training.md.
//
// Errors: bad configuration (unknown key, wrong type, missing model or data,
// inconsistent mode) throws finmoe::Error naming the key; so do a non-finite
// loss and tokens outside the model's vocabulary.
//
// Thread safety: a Trainer is used by one thread.
#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "finmoe/dataset.h"
#include "finmoe/lora.h"
#include "finmoe/train_config.h"

namespace finmoe {

class Transformer;

// ---- what a mode trains -------------------------------------------------

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

// The one place where modes differ in the model: which tensors the optimizer
// updates and what a checkpoint holds. Full training (pretrain, cpt, sft,
// hybrid, kd) trains every parameter and saves an HF checkpoint.
//
// Extension point for ESFT (train only the selected experts, save only them)
// and LoRA (adapters): implement a TrainMethod and return it from
// make_train_method() for TrainMode::Esft / TrainMode::Lora. The Trainer calls
//   prepare(model)            once, after the base model is loaded (and before
//                             any resume), to get the trainable tensors;
//   save(model, dir)          for each checkpoint (dir is a fresh temp dir);
//   load(model, dir)          on resume, with a dir written by save().
// Optimizer state is kept per name returned by prepare(); the names must be
// stable across runs.
class TrainMethod {
 public:
  virtual ~TrainMethod() = default;
  // Sets requires_grad on exactly the returned tensors (others off).
  virtual NamedTensors prepare(Transformer& model) = 0;
  virtual void save(Transformer& model, const std::string& dir) = 0;
  virtual void load(Transformer& model, const std::string& dir) = 0;
};

// The switch over modes. Throws Error for modes without an implementation.
std::unique_ptr<TrainMethod> make_train_method(const TrainConfig& config);

// ---- the trainer --------------------------------------------------------

// One optimizer step's numbers (a row of metrics.jsonl / metrics.csv).
struct StepMetrics {
  int64_t step = 0;     // optimizer steps done, this one included
  double loss = 0;      // the optimised objective: lm or kd mix + aux
  double lm_loss = 0;   // mean cross-entropy over the window's label tokens
  double aux_loss = 0;  // load-balancing loss (alpha applied), mean over micro-batches
  double kd_loss = 0;   // tau^2 * mean KL(p_teacher || p_student) over label tokens
  double lr = 0;
  double grad_norm = 0;             // global L2 norm before clipping
  int64_t tokens = 0;               // input tokens seen so far (B*T per micro-batch)
  int64_t loss_tokens = 0;          // label tokens of this step
  double tokens_per_second = 0;     // this step's input tokens over its wall time
  std::optional<double> eval_loss;  // when evaluated after this step
  std::optional<double> eval_ppl;

  nlohmann::json to_json() const;
  static StepMetrics from_json(const nlohmann::json& j);
};

struct EvalResult {
  double loss = 0;  // mean cross-entropy per label token
  double ppl = 0;   // exp(loss)
  int64_t tokens = 0;
};

// Mean cross-entropy per label token of `model` over the next `batches`
// batches of `source`, without gradients (documents masked when the batches
// carry document_ids). on_batch, when set, gets the batches done so far.
// Throws Error for batches outside [1, kMaxEvalBatches].
inline constexpr int64_t kMaxEvalBatches = int64_t(1) << 20;
EvalResult evaluate_lm(Transformer& model, BatchSource& source, int64_t batches,
                       const std::function<void(int64_t)>& on_batch = {});

struct TrainSummary {
  int64_t steps = 0;
  int64_t tokens = 0;
  double seconds = 0;            // this process's training time
  double tokens_per_second = 0;  // input tokens / seconds, this process
  double final_loss = 0;
  std::optional<EvalResult> final_eval;
  // The run's model: the last checkpoint written, or the best one with
  // load_best_model_at_end.
  std::string checkpoint;
  std::string last_checkpoint;  // the last checkpoint written
  // The checkpoint with the best metric_for_best_model among those written at
  // a step that evaluated ("" = none), its step and value.
  std::string best_checkpoint;
  int64_t best_step = 0;
  double best_metric = 0;
  int64_t trainable_params = 0;  // elements of the tensors the mode trains
  int64_t model_params = 0;      // elements of the model's parameters (adapters not included)
  int64_t checkpoint_bytes = 0;  // safetensors bytes of the last checkpoint's model part
                                 // (HF weights, ESFT delta or LoRA adapter; no optimizer state)
  int stopped_by_signal = 0;  // SIGINT / SIGTERM that ended run() early (after a checkpoint); 0 = none
  nlohmann::json to_json() const;
};

struct TrainerHooks {
  // Builds the training / eval streams. Default: make_batch_source() with the
  // tokenizer of config.tokenizer (or config.model).
  std::function<std::unique_ptr<BatchSource>(const DataConfig&)> make_source;
  bool progress = true;  // a progress line (and log lines) on stderr
};

class Trainer {
 public:
  // Loads (or initialises) the model, the teacher, the data and the optimizer;
  // resumes from a checkpoint when config.resume says so.
  explicit Trainer(TrainConfig config, TrainerHooks hooks = {});
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // Steps until total_steps(), evaluating, logging and checkpointing as
  // configured; a final evaluation and checkpoint, loss.svg and
  // train_summary.json at the end. SIGINT or SIGTERM during run() finishes
  // the current step, writes a checkpoint and returns early with
  // stopped_by_signal set (a second signal acts as it would without run());
  // the handlers are in place only while run() runs.
  TrainSummary run();
  // One optimizer step over grad_accum micro-batches (no eval, no checkpoint).
  StepMetrics step();
  // Perplexity on the fixed eval batches; throws Error without eval data.
  EvalResult evaluate();
  // Writes OUTPUT/checkpoint-<step> atomically and points OUTPUT/latest at
  // it; returns its path.
  std::string save_checkpoint();

  int64_t step_count() const;
  // Steps run() trains to: config().total_steps(), or the steps of
  // config().epochs over the training data (counted at construction).
  int64_t total_steps() const;
  const TrainConfig& config() const;
  const std::vector<StepMetrics>& history() const;
  Transformer& model();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace finmoe
