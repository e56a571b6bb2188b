// `finmoe train`: the config file and flags resolve to one config (dry run),
// and bad configs fail with exit code 2 and a message naming the key.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "cli_util.h"
#include "core/file_util.h"

namespace {

using finmoe::clitest::run;
namespace fs = std::filesystem;

// The JSON object printed last, on lines of its own (log lines come before it).
nlohmann::json summary(const std::string& out) {
  const size_t p = out.starts_with("{\n") ? 0 : out.rfind("\n{\n") + 1;
  return nlohmann::json::parse(out.substr(p));
}

class TrainCli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("finmoe-train-cli-" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { finmoe::remove_tree(dir_.string()); }
  std::string write(const std::string& name, const std::string& text) {
    const std::string p = (dir_ / name).string();
    std::ofstream(p) << text;
    return p;
  }
  fs::path dir_;
};

TEST_F(TrainCli, FlagsOverrideTheConfigFile) {
  const std::string cfg = write("train.yaml",
                                "mode: sft\nmodel: some/model\noutput_dir: runs/x\n"
                                "data:\n  files: [a.jsonl]\n  seq_len: 128\n"
                                "lr: 1.0e-3\nmax_steps: 50\n");
  auto r = run("train -c " + cfg + " --lr 2e-5 --seq-len 64 --data 'b c.jsonl' --data d.txt " +
               "--set kd.temperature=3 --dry-run");
  ASSERT_EQ(r.status, 0) << r.out;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["mode"], "sft");
  EXPECT_DOUBLE_EQ(j["lr"].get<double>(), 2e-5);
  EXPECT_EQ(j["data"]["seq_len"], 64);
  EXPECT_EQ(j["data"]["format"], "sft");
  EXPECT_EQ(j["data"]["files"], nlohmann::json({"b c.jsonl", "d.txt"}));
  EXPECT_DOUBLE_EQ(j["kd"]["temperature"].get<double>(), 3.0);
  EXPECT_EQ(j["total_steps"], 50);
}

TEST_F(TrainCli, BadConfigsNameTheKey) {
  const std::string cfg = write("bad.yaml",
                                "model: m\noutput_dir: o\nmax_steps: 1\n"
                                "data: {files: a.txt}\nlearning_rat: 1e-4\n");
  auto r = run("train -c " + cfg + " --dry-run");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find("bad.yaml:5: learning_rat: unknown key"), std::string::npos) << r.out;

  // HF names are finmoe keys; a flag still overrides them, a conflict names both
  const std::string hf = write("hf.yaml",
                               "model: m\noutput_dir: o\nnum_train_epochs: 2\n"
                               "data: {files: a.txt}\nlearning_rate: 1e-4\nsave_total_limit: 2\n");
  r = run("train -c " + hf + " --dry-run --weight-decay 0.01");
  ASSERT_EQ(r.status, 0) << r.out;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_DOUBLE_EQ(j["lr"].get<double>(), 1e-4);
  EXPECT_EQ(j["keep_checkpoints"], 2);
  EXPECT_DOUBLE_EQ(j["epochs"].get<double>(), 2.0);
  EXPECT_TRUE(j["total_steps"].is_null());  // counted from the data when training starts
  r = run("train -c " + hf + " --dry-run --lr 3e-4");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_DOUBLE_EQ(nlohmann::json::parse(r.out)["lr"].get<double>(), 3e-4);
  const std::string both = write("both.yaml", "model: m\noutput_dir: o\nmax_steps: 1\n"
                                              "data: {files: a.txt}\nlearning_rate: 1e-4\nlr: 2e-4\n");
  r = run("train -c " + both + " --dry-run");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find("both.yaml:5: learning_rate '1e-4' and lr '2e-4'"), std::string::npos) << r.out;

  r = run("train --model m --output-dir o --data a.txt --max-steps 1 --lr fast --dry-run");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find("lr: expected a number, got 'fast'"), std::string::npos) << r.out;

  r = run("train --model m --output-dir o --data a.txt --dry-run");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find("max_steps or num_tokens is required"), std::string::npos) << r.out;

  r = run("train -c " + (dir_ / "missing.yaml").string());
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find("missing.yaml"), std::string::npos) << r.out;

  // the model directory is checked when training starts
  r = run("train --model " + (dir_ / "no-model").string() + " --output-dir " +
          (dir_ / "out").string() + " --data a.txt --max-steps 1");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find("no-model"), std::string::npos) << r.out;
}

TEST_F(TrainCli, TrainsResumesAndWritesAModelDirectory) {
  std::string data;
  for (int i = 0; i < 20; ++i)
    data += nlohmann::json{{"text", "The bank reported assets of " + std::to_string(i * 1000) +
                                        " and liabilities of " + std::to_string(i * 700) + "."}}
                .dump() +
            "\n";
  const std::string file = write("data.jsonl", data);
  const std::string out = (dir_ / "run").string();
  const std::string common =
      "train --init-preset tiny --tokenizer " + std::string(FINMOE_TEST_DATA_DIR) +
      "/tokenizer/qwen3 --data " + file + " --eval-data " + file +
      " --seq-len 16 --batch-size 1 --set eval_batches=1 --output-dir " + out + " --json";
  auto r = run(common + " --max-steps 2");
  ASSERT_EQ(r.status, 0) << r.out;
  auto j = summary(r.out);
  EXPECT_EQ(j["steps"], 2);
  EXPECT_EQ(j["tokens"], 2 * 16);
  EXPECT_TRUE(j["final_eval"]["ppl"].get<double>() > 1.0);
  for (const char* f : {"metrics.csv", "metrics.jsonl", "loss.svg", "train_summary.json",
                        "checkpoint-2/model.safetensors", "checkpoint-2/tokenizer.json"})
    EXPECT_TRUE(fs::exists(fs::path(out) / f)) << f;

  // a second run into the same directory must resume, not overwrite
  r = run(common + " --max-steps 3");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find("already holds checkpoints"), std::string::npos) << r.out;
  r = run(common + " --max-steps 3 --resume auto");
  ASSERT_EQ(r.status, 0) << r.out;
  j = summary(r.out);
  EXPECT_EQ(j["steps"], 3);

  auto info = run("info " + out + "/checkpoint-3 --json");
  ASSERT_EQ(info.status, 0) << info.out;
  EXPECT_EQ(nlohmann::json::parse(info.out)["model_type"], "qwen2");
}

}  // namespace
