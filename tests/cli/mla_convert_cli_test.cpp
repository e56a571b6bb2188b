// `finmoe mla-convert` end to end on a tiny model made by `finmoe init`
// (qwen2: GQA with q/k/v biases): the summary, the report files, the output
// read by `finmoe info`; bad input exits 2 and leaves no OUT.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "cli_util.h"
#include "core/file_util.h"

namespace {

using finmoe::clitest::run;
namespace fs = std::filesystem;

class MlaConvertCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / ("finmoe-mla-cli-" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    auto r = run("init " + path("src") + " --preset tiny --arch qwen2 --dtype float32 --seed 3");
    ASSERT_EQ(r.status, 0) << r.out;
    std::ofstream ids(path("calib.jsonl"));
    for (int i = 0; i < 6; ++i) {  // 6 lines x 20 ids
      nlohmann::json line = {{"ids", nlohmann::json::array()}};
      for (int t = 0; t < 20; ++t) line["ids"].push_back((i * 131 + t * 17) % 500);
      ids << line.dump() << "\n";
    }
  }
  static void TearDownTestSuite() { finmoe::remove_tree(dir_.string()); }
  static std::string path(const std::string& name) { return (dir_ / name).string(); }
  static fs::path dir_;
};
fs::path MlaConvertCli::dir_;

TEST_F(MlaConvertCli, ConvertsWritesTheReportAndInfoReadsTheResult) {
  auto r =
      run("mla-convert " + path("src") + " " + path("mla") + " --calib " + path("calib.jsonl") +
          " --calib-samples 4 --calib-seq-len 24 --eval-samples 2 --freqfold 2 --rope-dim 8"
          " --kv-lora-rank 32");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("qwen2 -> deepseek_v3 (MLA), 2 layers"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("KV cache values per token per layer: 64 -> 40"), std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("ETA"), std::string::npos) << r.out;  // the progress line
  for (const char* f : {"config.json", "model.safetensors", "mla_report/report.json",
                        "mla_report/layers.csv", "mla_report/trajectory.svg"})
    EXPECT_TRUE(fs::is_regular_file(path("mla") + "/" + f)) << f;
  auto info = run("info " + path("mla") + " --json");
  ASSERT_EQ(info.status, 0) << info.out;
  auto j = nlohmann::json::parse(info.out);
  EXPECT_EQ(j["model_type"], "deepseek_v3");
}

TEST_F(MlaConvertCli, BadInputExitsTwoAndWritesNothing) {
  const std::string calib = " --calib " + path("calib.jsonl");
  struct Case {
    std::string args, needle;
  };
  const std::vector<Case> cases = {
      // 6 x 20 = 120 ids: not 8 sequences of 24
      {calib + " --calib-samples 8 --calib-seq-len 24", "--calib-samples asks for 8"},
      {calib + " --calib-samples 2 --calib-seq-len 24 --rope-dim 32", "--rope-dim 32"},
      {calib + " --calib-samples 2 --calib-seq-len 24 --freqfold 3", "--freqfold 3"},
      {calib + " --calib-samples 2 --calib-seq-len 24 --freqfold x", "--freqfold 'x'"},
      {calib + " --calib-samples 2 --calib-seq-len 24 --kv-lora-rank 4096", "--kv-lora-rank 4096"},
      {" --calib " + path("missing.jsonl"), "missing.jsonl"},
  };
  for (const auto& c : cases) {
    auto r = run("mla-convert " + path("src") + " " + path("bad") + c.args);
    EXPECT_EQ(r.status, 2) << c.args << "\n" << r.out;
    EXPECT_NE(r.out.find(c.needle), std::string::npos) << c.args << "\n" << r.out;
    EXPECT_FALSE(fs::exists(path("bad"))) << c.args;
  }
  // an MoE source
  auto init = run("init " + path("moe") + " --preset tiny --arch mixtral --dtype float32");
  ASSERT_EQ(init.status, 0) << init.out;
  auto r = run("mla-convert " + path("moe") + " " + path("bad") + calib);
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find("model_type 'mixtral'"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(path("bad")));
}

}  // namespace
