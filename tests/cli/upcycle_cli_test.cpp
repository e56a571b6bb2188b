// `finmoe upcycle` end to end: a tiny dense model made here, upcycled, then
// read by `finmoe info` and `finmoe logits`.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "cli_util.h"
#include "core/file_util.h"


namespace {

using finmoe::clitest::Result;
using finmoe::clitest::run;

namespace fs = std::filesystem;


// The JSON object at the end of a command's output (the progress line, if
// any, goes before it on stderr).
nlohmann::json last_json(const std::string& out) {
  return nlohmann::json::parse(out.substr(out.find("{\n")));
}

class UpcycleCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / ("finmoe-upcycle-cli-" + std::to_string(::getpid()));
    auto r = run("init " + dense() + " --preset tiny --arch qwen2 --dtype float32 --seed 5 " +
                 "--tokenizer " + std::string(FINMOE_TEST_DATA_DIR) + "/tokenizer/qwen3");
    ASSERT_EQ(r.status, 0) << r.out;
  }
  static void TearDownTestSuite() { finmoe::remove_tree(dir_.string()); }
  static std::string dense() { return (dir_ / "dense").string(); }
  static std::string out(const std::string& name) { return (dir_ / name).string(); }
  static fs::path dir_;
};
fs::path UpcycleCli::dir_;

TEST_F(UpcycleCli, CopyPresetPrintsCountsAndTheOutputLoadsWithTheDenseLogits) {
  auto r = run("upcycle " + dense() + " " + out("copy") + " --preset copy --R-I 4");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("G_I R_I G_O R_O   1 4 1 1"), std::string::npos) << r.out;  // flag wins
  EXPECT_NE(r.out.find("#P "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("#AP "), std::string::npos) << r.out;

  auto info = run("info " + out("copy") + " --json");
  ASSERT_EQ(info.status, 0) << info.out;
  auto j = nlohmann::json::parse(info.out);
  EXPECT_EQ(j["model_type"], "qwen2_moe");

  // #P printed by upcycle = the parameters actually written
  auto dry = run("upcycle " + dense() + " --preset copy --R-I 4 --dry-run --json");
  ASSERT_EQ(dry.status, 0) << dry.out;
  auto plan = last_json(dry.out);
  EXPECT_EQ(plan["params"].get<int64_t>(), j["total_params"].get<int64_t>());
  EXPECT_EQ(plan["num_experts"], 4);
  EXPECT_EQ(plan["format"], "qwen2_moe");

  // copies with top-k weights summing to 1: the dense model's next-token log-probabilities
  const std::string args = " --text \"The bank lends at a fixed rate\" --top 3";
  auto a = run("logits " + dense() + args), b = run("logits " + out("copy") + args);
  ASSERT_EQ(a.status, 0) << a.out;
  ASSERT_EQ(b.status, 0) << b.out;
  auto ja = nlohmann::json::parse(a.out)["positions"], jb = nlohmann::json::parse(b.out)["positions"];
  ASSERT_EQ(ja.size(), jb.size());
  for (size_t p = 0; p < ja.size(); ++p)
    for (size_t k = 0; k < 3; ++k) {
      EXPECT_NEAR(ja[p]["top"][k]["logprob"].get<double>(), jb[p]["top"][k]["logprob"].get<double>(),
                  1e-4);
    }
}

// bench decode's floor at a batch counts the experts its tokens chose: one
// token's k at batch 1, between that and every expert at batch 8.
TEST_F(UpcycleCli, BenchDecodeFloorCountsTheExpertsEachBatchReads) {
  auto r = run("upcycle " + dense() + " " + out("bench") + " --preset finermoe --G-I 4");
  ASSERT_EQ(r.status, 0) << r.out;
  auto info = nlohmann::json::parse(run("info " + out("bench") + " --json").out);
  auto b = run("bench decode " + out("bench") +
               " --json --prefill 4 --batch 1 8 --steps 2 --repeats 1 --context 4");
  ASSERT_EQ(b.status, 0) << b.out;
  auto j = nlohmann::json::parse(b.out);
  const double per_token = j["weight_bytes_per_token"].get<double>();
  EXPECT_LT(per_token, 4.0 * info["total_params"].get<double>());  // not every expert
  ASSERT_EQ(j["decode"].size(), 2u);
  EXPECT_EQ(j["decode"][0]["weight_bytes_per_step"].get<double>(), per_token);
  const double b8 = j["decode"][1]["weight_bytes_per_step"].get<double>();
  EXPECT_GE(b8, per_token);
  EXPECT_LE(b8, 4.0 * info["total_params"].get<double>());
}

TEST_F(UpcycleCli, BadInputExitsWithCode2AndNamesTheFlag) {
  auto r = run("upcycle " + dense() + " " + out("bad") + " --preset nope");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find("preset 'nope'"), std::string::npos) << r.out;
  r = run("upcycle " + dense() + " " + out("bad") + " --G-I 7");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find("G_I=7"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(out("bad") + "/config.json"));
}

}  // namespace
