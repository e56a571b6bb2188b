// `finmoe esft score | select`, ESFT delta directories as model directories,
// and `finmoe lora merge` / `--adapter`, end to end through the binary.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli_util.h"
#include "core/file_util.h"
#include "finmoe/safetensors.h"

namespace {

using finmoe::clitest::run;
namespace fs = std::filesystem;

nlohmann::json read_json(const fs::path& p) {
  std::ifstream in(p);
  return nlohmann::json::parse(in);
}

class EsftCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / ("finmoe-esft-cli-" + std::to_string(::getpid()));
    auto r = run("init " + path("dense") + " --preset tiny --arch qwen2 --dtype float32 --seed 5 " +
                 "--tokenizer " + std::string(FINMOE_TEST_DATA_DIR) + "/tokenizer/qwen3");
    ASSERT_EQ(r.status, 0) << r.out;
    // qwen2_moe, 4 experts
    r = run("upcycle " + path("dense") + " " + path("moe") + " --preset copy --R-I 4");
    ASSERT_EQ(r.status, 0) << r.out;
    std::ofstream data(dir_ / "task.jsonl");
    for (int i = 0; i < 24; ++i)
      data << nlohmann::json{{"messages",
                              {{{"role", "user"},
                                {"content", "Is invoice " + std::to_string(i) + " overdue?"}},
                               {{"role", "assistant"}, {"content", "Yes, by 12 days."}}}}}
                  .dump()
           << "\n";
  }
  static void TearDownTestSuite() { finmoe::remove_tree(dir_.string()); }
  static std::string path(const std::string& name) { return (dir_ / name).string(); }
  static fs::path dir_;
};
fs::path EsftCli::dir_;

TEST_F(EsftCli, ScoreThenSelectFollowsTheThresholdRule) {
  auto r = run("esft score " + path("moe") + " --data " + path("task.jsonl") +
               " --seq-len 16 --max-tokens 64 --seed 2 --out " + path("scores.json"));
  ASSERT_EQ(r.status, 0) << r.out;
  const auto scores = read_json(path("scores.json"));
  EXPECT_EQ(scores["tokens"], 64);
  for (const char* kind : {"token_scores", "gate_scores"}) {
    ASSERT_FALSE(scores[kind].empty()) << kind;
    for (const auto& [layer, row] : scores[kind].items()) {
      double sum = 0;
      for (const auto& [e, v] : row.items()) sum += v.get<double>();
      EXPECT_NEAR(sum, 1.0, 1e-9) << kind << " layer " << layer;
      EXPECT_EQ(row.size(), 4u);
    }
  }

  r = run("esft select " + path("scores.json") + " --score gate --p 0.45 --out " +
          path("cfg.json") + " --train-shared-experts --model " + path("moe"));
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("trainable"), std::string::npos) << r.out;
  const auto cfg = read_json(path("cfg.json"));
  EXPECT_EQ(cfg["shared_experts"], true);
  EXPECT_EQ(cfg["non_expert_modules"], false);
  // recompute the selection from the file: add by descending score while the sum is < p
  for (const auto& [layer, row] : scores["gate_scores"].items()) {
    std::vector<std::pair<double, int>> v;
    for (const auto& [e, s] : row.items()) v.push_back({s.get<double>(), std::stoi(e)});
    std::stable_sort(v.begin(), v.end(), [](auto a, auto b) { return a.first > b.first; });
    std::vector<int> want;
    double sum = 0;
    for (auto [s, e] : v) {
      if (sum >= 0.45) break;
      want.push_back(e);
      sum += s;
    }
    std::sort(want.begin(), want.end());
    EXPECT_EQ(cfg["experts"][layer].get<std::vector<int>>(), want) << "layer " << layer;
  }
}

TEST_F(EsftCli, BadArgumentsExitWithAMessage) {
  const std::string s = path("s.json");
  std::ofstream(s) << R"({"token_scores": {"1": {"0": 0.7, "1": 0.3}}, "gate_scores": {"1": {"0": 0.5, "1": 0.5}}})";
  auto r = run("esft select " + s + " --p 1.5");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find("(0, 1]"), std::string::npos) << r.out;
  r = run("esft select " + s + " --score router");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find("--score 'router'"), std::string::npos) << r.out;
  r = run("esft select " + s + " --p 0.6");  // prints the config to stdout
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find(R"({"experts":{"1":[0]},"non_expert_modules":false,"shared_experts":false})"),
            std::string::npos)
      << r.out;
  std::ofstream(path("broken.json")) << "{\"token_scores\": ";
  r = run("esft select " + path("broken.json"));
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find("broken.json"), std::string::npos) << r.out;
  r = run("esft score " + path("dense") + " --data " + path("task.jsonl"));
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find("no routed experts"), std::string::npos) << r.out;
}

TEST_F(EsftCli, DeltaDirectoryWorksAsAModelDirectory) {
  // a delta written by hand from the documented format (docs/formats/esft.md):
  // layer 1's expert 2, its tensors scaled by 3
  const fs::path delta = dir_ / "delta";
  fs::create_directories(delta);
  auto base = finmoe::CheckpointReader::open(path("moe"));
  std::vector<std::vector<float>> keep;
  std::vector<finmoe::TensorData> tensors;
  for (const auto& name : base.names()) {
    if (name.rfind("model.layers.1.mlp.experts.2.", 0) != 0) continue;
    const auto& v = base.get(name);
    const float* src = reinterpret_cast<const float*>(v.data);
    keep.emplace_back(src, src + v.numel());
    for (float& x : keep.back()) x *= 3;
    tensors.push_back({name, finmoe::DType::F32, v.shape, keep.back().data(), v.nbytes});
  }
  ASSERT_EQ(tensors.size(), 3u);
  finmoe::write_safetensors((delta / "esft_delta.safetensors").string(), tensors);
  std::ofstream(delta / "expert_cfg.json")
      << R"({"experts": {"1": [2]}, "shared_experts": false, "non_expert_modules": false})";
  for (const char* f : {"config.json", "tokenizer.json", "tokenizer_config.json"})
    fs::copy_file(fs::path(path("moe")) / f, delta / f);
  std::ofstream(delta / "esft_delta.json")
      << nlohmann::json{{"format", "finmoe-esft-delta"}, {"format_version", 1},
                        {"base_model", "../moe"}}
             .dump();

  auto info = run("info " + delta.string() + " --json");
  ASSERT_EQ(info.status, 0) << info.out;
  const auto j = nlohmann::json::parse(info.out);
  EXPECT_EQ(j["esft_delta"]["tensors"], 3);
  EXPECT_EQ(j["esft_delta"]["routed_experts"], 1);
  EXPECT_EQ(j["model_type"], "qwen2_moe");

  auto ids = std::string(" --ids 3,17,42,9,250,7 --top 3");
  auto with = run("logits " + delta.string() + ids);
  auto without = run("logits " + path("moe") + ids);
  ASSERT_EQ(with.status, 0) << with.out;
  ASSERT_EQ(without.status, 0) << without.out;
  EXPECT_NE(nlohmann::json::parse(with.out)["positions"],
            nlohmann::json::parse(without.out)["positions"]);  // the delta is in use

  // a format this finmoe cannot read
  std::ofstream(delta / "esft_delta.json")
      << R"({"format": "finmoe-esft-delta", "format_version": 9, "base_model": "../moe"})";
  auto r = run("logits " + delta.string() + ids);
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find("upgrade finmoe"), std::string::npos) << r.out;
}

TEST_F(EsftCli, LoraMergeAndAdapterGiveTheSameLogits) {
  const std::string data = std::string(FINMOE_TEST_DATA_DIR) + "/lora";
  auto r = run("lora merge " + data + "/base " + data + "/all_targets " + path("merged"));
  ASSERT_EQ(r.status, 0) << r.out;
  const std::string ids = " --ids 5,1,77,30,12 --top 4";
  auto merged = run("logits " + path("merged") + ids);
  auto adapter = run("logits " + data + "/base --adapter " + data + "/all_targets" + ids);
  ASSERT_EQ(merged.status, 0) << merged.out;
  ASSERT_EQ(adapter.status, 0) << adapter.out;
  const auto a = nlohmann::json::parse(merged.out)["positions"];
  const auto b = nlohmann::json::parse(adapter.out)["positions"];
  ASSERT_EQ(a.size(), b.size());
  for (size_t p = 0; p < a.size(); ++p)
    for (size_t k = 0; k < a[p]["top"].size(); ++k) {
      EXPECT_EQ(a[p]["top"][k]["id"], b[p]["top"][k]["id"]);
      EXPECT_NEAR(a[p]["top"][k]["logprob"].get<double>(), b[p]["top"][k]["logprob"].get<double>(),
                  1e-4);
    }
  r = run("lora merge " + data + "/base " + data + "/all_targets " + path("merged"));
  EXPECT_EQ(r.status, 2) << r.out;  // OUT exists
  EXPECT_NE(r.out.find("not an empty directory"), std::string::npos) << r.out;
}

}  // namespace
