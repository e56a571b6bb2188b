// TrainConfig: YAML keys, dotted overrides, inherited defaults, validation
// and the errors that name the offending key.
#include <gtest/gtest.h>

#include <algorithm>

#include "../expect_error.h"
#include "finmoe/train.h"

namespace finmoe {
namespace {

using test::message_of;

const char* kYaml = R"(
mode: pretrain
model: models/base
output_dir: runs/a
data:
  files: [a.jsonl, b.txt]
  seq_len: 256
  batch_size: 4
  document_mask: true
eval_data:
  files: held.jsonl
lr: 2.0e-4
betas: [0.9, 0.99]
schedule: linear
warmup_ratio: 0.01
max_steps: 1000
grad_accum: 8
moe_aux_loss_alpha: 0.001
seed: 7
)";

TEST(TrainConfig, ParsesKeysAndNestedSections) {
  TrainConfig c = parse_train_config(kYaml, "train.yaml");
  EXPECT_EQ(c.mode, TrainMode::Pretrain);
  EXPECT_EQ(c.model, "models/base");
  EXPECT_EQ(c.data.files, (std::vector<std::string>{"a.jsonl", "b.txt"}));
  EXPECT_EQ(c.data.seq_len, 256);
  EXPECT_EQ(c.data.batch_size, 4);
  EXPECT_TRUE(c.data.document_mask);
  EXPECT_DOUBLE_EQ(c.lr, 2e-4);
  EXPECT_DOUBLE_EQ(c.betas[1], 0.99);
  EXPECT_EQ(c.schedule, "linear");
  EXPECT_EQ(c.grad_accum, 8);
  ASSERT_TRUE(c.moe_aux_loss_alpha.has_value());
  EXPECT_DOUBLE_EQ(*c.moe_aux_loss_alpha, 0.001);
  // untouched keys keep their documented defaults
  EXPECT_DOUBLE_EQ(c.betas[0], 0.9);
  EXPECT_DOUBLE_EQ(c.weight_decay, 0.1);
  EXPECT_DOUBLE_EQ(c.grad_clip, 1.0);
  EXPECT_EQ(c.precision, "auto");
  // 1000 steps
  EXPECT_EQ(c.total_steps(), 1000);
}

TEST(TrainConfig, SectionsTakeDefaultsFromTheirParents) {
  TrainConfig c = parse_train_config(kYaml, "train.yaml");
  EXPECT_EQ(c.data.seed, 7u);  // data.seed defaults to seed
  // eval_data inherits shapes from data, not its files, and does not shuffle
  EXPECT_EQ(c.eval_data.files, std::vector<std::string>{"held.jsonl"});
  EXPECT_EQ(c.eval_data.seq_len, 256);
  EXPECT_EQ(c.eval_data.batch_size, 4);
  EXPECT_TRUE(c.eval_data.document_mask);
  EXPECT_FALSE(c.eval_data.shuffle);
  EXPECT_TRUE(c.data.shuffle);
  // sft reads chat data unless told otherwise
  TrainConfig s = parse_train_config(
      "mode: sft\nmodel: m\noutput_dir: o\nmax_steps: 1\n"
      "data: {files: x.jsonl}\n",
      "s.yaml");
  EXPECT_EQ(s.data.format, "sft");
  TrainConfig s2 = parse_train_config(
      "mode: sft\nmodel: m\noutput_dir: o\nmax_steps: 1\n"
      "data: {files: x.jsonl, format: text}\n",
      "s.yaml");
  EXPECT_EQ(s2.data.format, "text");
}

TEST(TrainConfig, OverridesReplaceFileValues) {
  TrainConfig c = parse_train_config(kYaml, "train.yaml",
                                     {"lr=1e-4", "data.seq_len=64", "data.files=[c.jsonl]",
                                      "kd.temperature=2", "max_steps=5", "eval_data.batch_size=2"});
  EXPECT_DOUBLE_EQ(c.lr, 1e-4);
  EXPECT_EQ(c.data.seq_len, 64);
  EXPECT_EQ(c.data.files, std::vector<std::string>{"c.jsonl"});
  EXPECT_DOUBLE_EQ(c.kd.temperature, 2.0);
  EXPECT_EQ(c.max_steps, 5);
  EXPECT_EQ(c.eval_data.batch_size, 2);
  EXPECT_EQ(c.eval_data.seq_len, 64);  // inherited from the overridden data.seq_len
}

TEST(TrainConfig, OverridesAloneMakeAConfig) {
  TrainConfig c =
      load_train_config("", {"model=m", "output_dir=o", "data.files=x.txt", "num_tokens=1000",
                             "data.seq_len=10", "data.batch_size=3", "grad_accum=2"});
  // 1000 tokens / (2 * 3 * 10) per step, rounded up
  EXPECT_EQ(c.total_steps(), 17);
}

TEST(TrainConfig, UnknownKeysAreErrorsNamingTheKey) {
  auto msg = message_of([] { parse_train_config(std::string(kYaml) + "lrr: 1\n", "train.yaml"); });
  EXPECT_CONTAINS(msg, "train.yaml:");
  EXPECT_CONTAINS(msg, "lrr");
  EXPECT_CONTAINS(msg, "unknown key");
  msg = message_of([] {
    parse_train_config("model: m\noutput_dir: o\nmax_steps: 1\ndata:\n  files: a\n  seq_lenn: 3\n",
                       "t.yaml");
  });
  EXPECT_CONTAINS(msg, "t.yaml:6: data.seq_lenn: unknown key");
  msg = message_of([] { parse_train_config(kYaml, "train.yaml", {"kd.teacherr=x"}); });
  EXPECT_CONTAINS(msg, "kd.teacherr");
}

TEST(TrainConfig, WrongTypesAreErrorsNamingTheKey) {
  auto msg = message_of([] { parse_train_config(kYaml, "train.yaml", {"lr=fast"}); });
  EXPECT_CONTAINS(msg, "lr: expected a number, got 'fast'");
  msg = message_of([] { parse_train_config(kYaml, "train.yaml", {"data.seq_len=1.5"}); });
  EXPECT_CONTAINS(msg, "data.seq_len: expected an integer");
  msg = message_of([] { parse_train_config(kYaml, "train.yaml", {"betas=0.9"}); });
  EXPECT_CONTAINS(msg, "betas: expected a list of two numbers");
  msg = message_of([] { parse_train_config(kYaml, "train.yaml", {"mode=rlhf"}); });
  EXPECT_CONTAINS(msg, "mode: unknown mode 'rlhf'");
  msg = message_of([] { parse_train_config(kYaml, "train.yaml", {"data=3"}); });
  EXPECT_CONTAINS(msg, "data: expected a mapping");
  msg = message_of([] { parse_train_config("lr: [1, 2\n", "bad.yaml"); });
  EXPECT_CONTAINS(msg, "bad.yaml");
  EXPECT_CONTAINS(msg, "invalid YAML");
  msg = message_of([] { parse_train_config(kYaml, "train.yaml", {"lr"}); });
  EXPECT_CONTAINS(msg, "expected KEY=VALUE");
}

TEST(TrainConfig, ValidationNamesWhatIsMissing) {
  auto msg = message_of([] { parse_train_config(kYaml, "train.yaml", {"output_dir="}); });
  EXPECT_CONTAINS(msg, "output_dir is required");
  msg = message_of([] { parse_train_config(kYaml, "train.yaml", {"init_preset=tiny"}); });
  EXPECT_CONTAINS(msg, "exactly one of model");
  msg = message_of([] { parse_train_config(kYaml, "train.yaml", {"mode=hybrid"}); });
  EXPECT_CONTAINS(msg, "data.instruction_files");
  msg = message_of([] { parse_train_config(kYaml, "train.yaml", {"mode=kd"}); });
  EXPECT_CONTAINS(msg, "kd.teacher");
  msg = message_of([] { parse_train_config(kYaml, "train.yaml", {"max_steps=0"}); });
  EXPECT_CONTAINS(msg, "max_steps or num_tokens");
  msg = message_of([] { parse_train_config(kYaml, "train.yaml", {"min_lr=1"}); });
  EXPECT_CONTAINS(msg, "min_lr");
  msg = message_of([] { parse_train_config(kYaml, "train.yaml", {"schedule=step"}); });
  EXPECT_CONTAINS(msg, "schedule must be cosine, linear or constant");
  msg = message_of([] { parse_train_config(kYaml, "train.yaml", {"precision=fp8"}); });
  EXPECT_CONTAINS(msg, "precision");
  // hybrid with instruction data is fine
  TrainConfig h = parse_train_config(
      kYaml, "train.yaml",
      {"mode=hybrid", "data.instruction_files=[sft.jsonl]", "data.instruction_ratio=0.3"});
  EXPECT_EQ(h.mode, TrainMode::Hybrid);
}

TEST(TrainConfig, JsonRoundTripsThroughTheParser) {
  TrainConfig c = parse_train_config(kYaml, "train.yaml", {"kd.alpha=0.5"});
  const nlohmann::json j = c.to_json();
  EXPECT_EQ(j["data"]["seq_len"], 256);
  EXPECT_EQ(j["mode"], "pretrain");
  // JSON is YAML: the dump parses back to the same config
  TrainConfig back = parse_train_config(j.dump(), "dump.json");
  EXPECT_EQ(back.to_json(), j);
}

TEST(TrainConfig, EsftAndLoraSectionsAndTheirRequirements) {
  EXPECT_CONTAINS(message_of([] { parse_train_config(kYaml, "train.yaml", {"mode=esft"}); }),
                  "esft.expert_config");
  TrainConfig c = parse_train_config(kYaml, "train.yaml",
                                     {"mode=lora", "lora.r=4", "lora.alpha=32",
                                      "lora.target_modules=[q_proj, v_proj]"});
  EXPECT_EQ(c.lora.r, 4);
  EXPECT_DOUBLE_EQ(c.lora.scaling(), 8.0);
  EXPECT_EQ(c.lora.target_modules, (std::vector<std::string>{"q_proj", "v_proj"}));
  EXPECT_EQ(c.to_json()["lora"]["alpha"], 32.0);
  EXPECT_CONTAINS(message_of([] { parse_train_config(kYaml, "train.yaml", {"lora.r=0"}); }),
                  "lora.r");
  EXPECT_CONTAINS(message_of([] { parse_train_config(kYaml, "train.yaml", {"lora.rank=4"}); }),
                  "lora.rank");
  EXPECT_EQ(train_mode_from_string("lora"), TrainMode::Lora);
  EXPECT_EQ(to_string(TrainMode::Hybrid), "hybrid");
}

// ---- Hugging Face TrainingArguments names ------------------------------------------

const char* kBase = "model: m\noutput_dir: o\ndata:\n  files: a.jsonl\n";

TEST(TrainConfigAliases, HfNamesSetTheSameConfigAsFinmoeKeys) {
  const TrainConfig hf = parse_train_config(std::string(kBase) + R"(
learning_rate: 2.0e-5
gradient_accumulation_steps: 4
per_device_train_batch_size: 3
per_device_eval_batch_size: 5
num_train_epochs: 2.5
lr_scheduler_type: linear
max_grad_norm: 0.5
adam_epsilon: 1.0e-6
save_steps: 50
save_total_limit: 2
logging_steps: 5
eval_steps: 25
warmup_ratio: 0.1
weight_decay: 0.01
seed: 42
)", "hf.yaml");
  const TrainConfig own = parse_train_config(std::string(kBase) + R"(
lr: 2.0e-5
grad_accum: 4
data: {files: a.jsonl, batch_size: 3}
eval_data: {batch_size: 5}
epochs: 2.5
schedule: linear
grad_clip: 0.5
eps: 1.0e-6
save_interval: 50
keep_checkpoints: 2
log_interval: 5
eval_interval: 25
warmup_ratio: 0.1
weight_decay: 0.01
seed: 42
)", "own.yaml");
  EXPECT_EQ(hf.to_json(), own.to_json());
  EXPECT_EQ(hf.data.batch_size, 3);
  EXPECT_EQ(hf.eval_data.batch_size, 5);
  EXPECT_DOUBLE_EQ(hf.epochs, 2.5);
  EXPECT_EQ(hf.keep_checkpoints, 2);
  // every alias names a key the parser knows (the table above covers them all)
  EXPECT_EQ(kTrainConfigAliases.size(), 12u);
}

TEST(TrainConfigAliases, AnAliasAndItsKeyMustAgree) {
  // the same value twice is fine, also when written differently
  EXPECT_DOUBLE_EQ(
      parse_train_config(std::string(kBase) + "max_steps: 1\nlr: 0.0003\nlearning_rate: 3e-4\n", "t.yaml").lr,
      3e-4);
  auto msg = message_of([] {
    parse_train_config(std::string(kBase) + "max_steps: 1\nlr: 1e-4\nlearning_rate: 3e-4\n", "t.yaml");
  });
  EXPECT_CONTAINS(msg, "t.yaml:7: learning_rate '3e-4' and lr '1e-4'");
  EXPECT_CONTAINS(msg, "different values");
  msg = message_of([] {
    parse_train_config(std::string(kBase) + "  batch_size: 8\nmax_steps: 1\nper_device_train_batch_size: 4\n",
                       "t.yaml");
  });
  EXPECT_CONTAINS(msg, "per_device_train_batch_size '4' and data.batch_size '8'");
  // an override of the HF name replaces the file's finmoe key (overrides win)
  const TrainConfig c = parse_train_config(std::string(kBase) + "max_steps: 1\nlr: 1e-4\n", "t.yaml",
                                           {"learning_rate=5e-4", "save_total_limit=3"});
  EXPECT_DOUBLE_EQ(c.lr, 5e-4);
  EXPECT_EQ(c.keep_checkpoints, 3);
  // HF's constant_with_warmup is finmoe's constant (which warms up)
  EXPECT_EQ(parse_train_config(std::string(kBase) + "max_steps: 1\nlr_scheduler_type: constant_with_warmup\n",
                               "t.yaml")
                .schedule,
            "constant");
  msg = message_of([] {
    parse_train_config(std::string(kBase) + "max_steps: 1\nlr_scheduler_type: polynomial\n", "t.yaml");
  });
  EXPECT_CONTAINS(msg, "schedule must be cosine, linear or constant, got 'polynomial'");
}

TEST(TrainConfigAliases, EpochStepsCountLikeHfAndMaxStepsWins) {
  TrainConfig c = parse_train_config(std::string(kBase) + "num_train_epochs: 3\n", "t.yaml");
  EXPECT_EQ(c.total_steps(), 0);  // from the data
  c.data.batch_size = 4;
  c.grad_accum = 2;
  // HF: update steps per epoch = max(1, floor(ceil(rows / batch) / accum)); ceil(epochs * that)
  for (int64_t rows : {1, 7, 8, 9, 33, 100}) {
    const int64_t batches = (rows + 3) / 4;
    const int64_t per_epoch = std::max<int64_t>(1, batches / 2);
    EXPECT_EQ(c.epoch_steps(rows), 3 * per_epoch) << rows;
  }
  c.epochs = 0.3;
  EXPECT_EQ(c.epoch_steps(100), 4);  // 25 batches -> 12 steps per epoch; 3.6 rounded up
  const TrainConfig both =
      parse_train_config(std::string(kBase) + "num_train_epochs: 3\nmax_steps: 11\n", "t.yaml");
  EXPECT_EQ(both.total_steps(), 11);
  EXPECT_CONTAINS(message_of([] {
                    parse_train_config(std::string(kBase) + "epochs: 1\nnum_tokens: 1000\n", "t.yaml");
                  }),
                  "epochs and num_tokens both say how long to train");
  EXPECT_CONTAINS(message_of([] { parse_train_config(std::string(kBase) + "epochs: -1\n", "t.yaml"); }),
                  "epochs must be in [0, 1e6]");
}

}  // namespace
}  // namespace finmoe
