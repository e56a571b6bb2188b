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
                                "data: {files: a.txt}\nlearning_rate: 1e-4\n");
  auto r = run("train -c " + cfg + " --dry-run");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find("bad.yaml:5: learning_rate: unknown key"), std::string::npos) << r.out;

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

}  // namespace
