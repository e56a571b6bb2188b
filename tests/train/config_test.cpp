// TrainConfig: YAML keys, dotted overrides, inherited defaults, validation
// and the errors that name the offending key.
#include <gtest/gtest.h>

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

TEST(TrainConfig, ModesWithoutAMethodAreClearErrors) {
  TrainConfig c = parse_train_config(kYaml, "train.yaml", {"mode=esft"});
  EXPECT_CONTAINS(message_of([&] { make_train_method(c); }), "mode 'esft'");
  EXPECT_EQ(train_mode_from_string("lora"), TrainMode::Lora);
  EXPECT_EQ(to_string(TrainMode::Hybrid), "hybrid");
}

}  // namespace
}  // namespace finmoe
