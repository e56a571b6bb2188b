// `finmoe experts` end to end on a tiny mixtral checkpoint built here from a
// dense `finmoe init` model (each expert a perturbed copy of the dense MLP).
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "finmoe/safetensors.h"
#include "cli_util.h"
#include "core/file_util.h"

namespace {

using finmoe::clitest::Result;
using finmoe::clitest::run;

namespace fs = std::filesystem;


std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

constexpr int64_t kExperts = 4, kTopK = 2;

class CliExperts : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / ("finmoe-cli-experts-" + std::to_string(::getpid()));
    const std::string tok = std::string(FINMOE_TEST_DATA_DIR) + "/tokenizer/qwen3";
    auto r = run("init " + dense() +
                 " --preset tiny --arch llama --dtype float32 --seed 5 --tokenizer " + tok);
    ASSERT_EQ(r.status, 0) << r.out;
    make_mixtral();
    std::ofstream data(dir_ / "corpus.jsonl");
    for (int i = 0; i < 30; ++i)
      data << nlohmann::json{{"text", "Quarter " + std::to_string(i) +
                                          ": revenue grew, margins held, and the company "
                                          "repurchased shares worth $" +
                                          std::to_string(10 * i) + "m."}}
                  .dump()
           << "\n";
  }
  static void TearDownTestSuite() { finmoe::remove_tree(dir_.string()); }

  // The dense model's tensors, its MLP replaced by kExperts noisy copies and a random router.
  static void make_mixtral() {
    const fs::path out = dir_ / "moe";
    fs::create_directories(out);
    auto cfg = nlohmann::json::parse(slurp(fs::path(dense()) / "config.json"));
    const int64_t D = cfg["hidden_size"], L = cfg["num_hidden_layers"];
    cfg["model_type"] = "mixtral";
    cfg["architectures"] = {"MixtralForCausalLM"};
    cfg["num_local_experts"] = kExperts;
    cfg["num_experts_per_tok"] = kTopK;
    std::ofstream(out / "config.json") << cfg.dump(2);
    for (const char* f : {"tokenizer.json", "tokenizer_config.json", "generation_config.json"})
      if (fs::exists(fs::path(dense()) / f)) fs::copy_file(fs::path(dense()) / f, out / f);

    auto reader = finmoe::CheckpointReader::open(dense());
    std::vector<finmoe::TensorData> tensors;
    std::vector<std::vector<float>> store;  // owns the new tensors' data
    store.reserve(size_t(L * (1 + 3 * kExperts)));
    std::mt19937 rng(9);
    std::normal_distribution<float> noise(0.0f, 0.02f);
    auto add_new = [&](const std::string& name, std::vector<int64_t> shape, const float* base) {
      int64_t n = 1;
      for (auto s : shape) n *= s;
      std::vector<float> v(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) v[size_t(i)] = (base ? base[i] : 0.0f) + noise(rng);
      store.push_back(std::move(v));
      tensors.push_back({name, finmoe::DType::F32, shape, store.back().data(), size_t(n) * 4});
    };
    const std::map<std::string, std::string> w_name = {
        {"gate_proj", "w1"}, {"up_proj", "w3"}, {"down_proj", "w2"}};
    for (const auto& name : reader.names()) {
      const auto& t = reader.get(name);
      const size_t mlp = name.find(".mlp.");
      if (mlp == std::string::npos) {
        tensors.push_back({name, t.dtype, t.shape, t.data, t.nbytes});
        continue;
      }
      ASSERT_EQ(t.dtype, finmoe::DType::F32) << name;
      const std::string layer = name.substr(0, mlp);  // model.layers.{i}
      const std::string proj = name.substr(mlp + 5, name.find('.', mlp + 5) - mlp - 5);
      for (int64_t e = 0; e < kExperts; ++e)
        add_new(layer + ".block_sparse_moe.experts." + std::to_string(e) + "." + w_name.at(proj) +
                    ".weight",
                t.shape, reinterpret_cast<const float*>(t.data));
      if (proj == "gate_proj")
        add_new(layer + ".block_sparse_moe.gate.weight", {kExperts, D}, nullptr);
    }
    finmoe::write_checkpoint(out.string(), tensors);
  }

  static std::string dense() { return (dir_ / "dense").string(); }
  static std::string moe() { return (dir_ / "moe").string(); }
  static fs::path dir_;
};
fs::path CliExperts::dir_;

TEST_F(CliExperts, WritesEveryReportFileWithConsistentStatistics) {
  const fs::path out = dir_ / "report";
  auto r = run("experts " + moe() + " --data " + (dir_ / "corpus.jsonl").string() + " --out " +
               out.string() + " --seq-len 32 --max-tokens 300");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("imbalance"), std::string::npos) << r.out;  // the summary table

  const auto routing = nlohmann::json::parse(slurp(out / "routing.json"));
  EXPECT_EQ(routing["model_type"], "mixtral");
  ASSERT_EQ(routing["layers"].size(), 2u);  // both tiny layers are MoE
  for (const auto& l : routing["layers"]) {
    EXPECT_EQ(l["tokens"].get<int64_t>(), 300);
    EXPECT_EQ(l["sequences"].get<int64_t>(), 10);  // ceil(300 / 32)
    ASSERT_EQ(l["experts"].size(), size_t(kExperts));
    double ratio = 0, share = 0;
    int64_t load = 0, max_load = 0;
    for (const auto& x : l["experts"]) {
      ratio += x["selection_ratio"].get<double>();
      share += x["esft_gate_share"].get<double>();
      load += x["load"].get<int64_t>();
      max_load = std::max(max_load, x["load"].get<int64_t>());
    }
    EXPECT_NEAR(ratio, double(kTopK), 1e-9);  // every token picks K experts
    EXPECT_NEAR(share, 1.0, 1e-9);
    EXPECT_EQ(load, 300 * kTopK);
    EXPECT_NEAR(l["imbalance"].get<double>(), double(max_load) / (double(load) / kExperts), 1e-9);
  }

  // CSV: a header and one row per layer x expert, loads as in the JSON
  std::istringstream csv(slurp(out / "routing.csv"));
  std::string line;
  std::getline(csv, line);
  EXPECT_EQ(line.rfind("layer,expert,load,", 0), 0u) << line;
  int rows = 0;
  while (std::getline(csv, line)) {
    std::istringstream f(line);
    std::string layer, expert, load;
    std::getline(f, layer, ',');
    std::getline(f, expert, ',');
    std::getline(f, load, ',');
    EXPECT_EQ(
        std::stoll(load),
        routing["layers"][size_t(rows / kExperts)]["experts"][size_t(std::stoll(expert))]["load"]
            .get<int64_t>());
    ++rows;
  }
  EXPECT_EQ(rows, 2 * kExperts);

  // experts are noisy copies of one MLP: similar, but not identical
  const auto sim = nlohmann::json::parse(slurp(out / "similarity.json"));
  ASSERT_EQ(sim["layers"].size(), 2u);
  for (const auto& l : sim["layers"]) {
    EXPECT_GT(l["mean"].get<double>(), 0.3);
    EXPECT_LT(l["max"].get<double>(), 1.0);
  }
  ASSERT_EQ(sim["matrices"].size(), 2u);
  EXPECT_EQ(sim["matrices"][0]["matrix"].size(), size_t(kExperts));
  std::istringstream scsv(slurp(out / "similarity.csv"));
  int srows = -1;
  while (std::getline(scsv, line)) ++srows;
  EXPECT_EQ(srows, 2);
  for (const char* svg : {"load_heatmap.svg", "similarity.svg"}) {
    const std::string s = slurp(out / svg);
    EXPECT_EQ(s.rfind("<svg", 0), 0u) << svg;
    EXPECT_NE(s.find("</svg>"), std::string::npos) << svg;
  }
}

TEST_F(CliExperts, BadInputExitsWithMessageNamingIt) {
  const std::string missing = (dir_ / "no-such-corpus.jsonl").string();
  auto r = run("experts " + moe() + " --data " + missing + " --out " + (dir_ / "r2").string());
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find(missing), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(dir_ / "r2" / "routing.json"));

  r = run("experts " + dense() + " --data " + (dir_ / "corpus.jsonl").string() + " --out " +
          (dir_ / "r3").string());
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find("'llama'"), std::string::npos) << r.out;
}

}  // namespace
