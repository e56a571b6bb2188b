// finer_moe and finmoe_dense checkpoints carry the HF modeling code
// (python/finmoe_hf, embedded in the binary) and an auto_map in config.json,
// whichever command wrote them; finmoe itself still loads them. The Python
// side is checked against transformers by tests/ref/check_finer_moe_hf_live.py
// (ctest hf_remote_code_live).
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli_util.h"
#include "core/file_util.h"

namespace {

namespace fs = std::filesystem;
using finmoe::clitest::run;

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

class HfRemoteCode : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("finmoe-hf-remote-" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { finmoe::remove_tree(dir_.string()); }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  // `finmoe init DIR --config` with a tiny config of this model type.
  std::string init(const std::string& name, nlohmann::json cfg) {
    cfg.update({{"vocab_size", 128}, {"hidden_size", 16}, {"intermediate_size", 32},
                {"num_hidden_layers", 2}, {"num_attention_heads", 2}});
    const std::string cfg_path = path(name + ".json");
    std::ofstream(cfg_path) << cfg.dump();
    auto r = run("init " + path(name) + " --config " + cfg_path + " --dtype float32 --seed 2");
    EXPECT_EQ(r.status, 0) << r.out;
    return path(name);
  }

  // The two files byte-identical to the sources, the auto_map naming their
  // classes, and finmoe loading the directory.
  void expect_remote_code(const std::string& dir, const std::string& config_class,
                          const std::string& model_class) {
    const fs::path src = fs::path(FINMOE_SOURCE_DIR) / "python" / "finmoe_hf";
    for (const char* f : {"configuration_finer_moe.py", "modeling_finer_moe.py"}) {
      ASSERT_TRUE(fs::exists(fs::path(dir) / f)) << dir << " lacks " << f;
      EXPECT_EQ(slurp(fs::path(dir) / f), slurp(src / f)) << f << " differs from python/finmoe_hf";
    }
    const auto cfg = nlohmann::json::parse(slurp(fs::path(dir) / "config.json"));
    ASSERT_TRUE(cfg.contains("auto_map")) << cfg.dump();
    EXPECT_EQ(cfg["auto_map"]["AutoConfig"], "configuration_finer_moe." + config_class);
    EXPECT_EQ(cfg["auto_map"]["AutoModelForCausalLM"], "modeling_finer_moe." + model_class);
    auto r = run("logits " + dir + " --ids 1,2,3 --top 2");
    EXPECT_EQ(r.status, 0) << r.out;
  }

  fs::path dir_;
};

TEST_F(HfRemoteCode, InitWritesTheModelingCodeForFinerMoeAndFinmoeDense) {
  expect_remote_code(init("finer", {{"model_type", "finer_moe"}, {"G_I", 2}, {"R_I", 1}, {"G_O", 2},
                                    {"R_O", 2}, {"num_experts", 8}, {"num_experts_per_tok", 2},
                                    {"moe_intermediate_size", 8},
                                    {"shared_expert_intermediate_size", 16}}),
                     "FineRMoeConfig", "FineRMoeForCausalLM");
  expect_remote_code(init("dense", {{"model_type", "finmoe_dense"}, {"num_experts", 3}}),
                     "FinMoeDenseConfig", "FinMoeDenseForCausalLM");
}

TEST_F(HfRemoteCode, UpcycleWritesItAndOtherModelTypesGetNone) {
  const std::string llama = init("llama", {{"model_type", "llama"}});
  const std::string qwen2 = init("qwen2", {{"model_type", "qwen2"}});
  for (const std::string& d : {llama, qwen2}) {  // transformers has these classes: no remote code
    EXPECT_FALSE(fs::exists(fs::path(d) / "modeling_finer_moe.py")) << d;
    EXPECT_FALSE(nlohmann::json::parse(slurp(fs::path(d) / "config.json")).contains("auto_map"));
  }
  auto r = run("upcycle " + llama + " " + path("up_dense") + " --preset copy --R-I 3 --all-experts");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(nlohmann::json::parse(slurp(fs::path(path("up_dense")) / "config.json"))["model_type"],
            "finmoe_dense");
  expect_remote_code(path("up_dense"), "FinMoeDenseConfig", "FinMoeDenseForCausalLM");

  r = run("upcycle " + qwen2 + " " + path("up_finer") +
          " --preset copy --format finer_moe --G-O 2 --R-O 2 --shared-expert copy");
  ASSERT_EQ(r.status, 0) << r.out;
  expect_remote_code(path("up_finer"), "FineRMoeConfig", "FineRMoeForCausalLM");

  // int8: the Python code reads float weights, so no auto_map points at it
  r = run("quantize " + path("up_finer") + " " + path("q8"));
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_FALSE(nlohmann::json::parse(slurp(fs::path(path("q8")) / "config.json")).contains("auto_map"));
  EXPECT_EQ(run("logits " + path("q8") + " --ids 1,2 --top 2").status, 0);
}

TEST_F(HfRemoteCode, SeparateRoutersTravelThroughUpcycleInfoAndTheModelingCode) {
  const std::string qwen2 = init("qwen2", {{"model_type", "qwen2"}});
  auto r = run("upcycle " + qwen2 + " " + path("sep") +
               " --preset finermoe --G-I 4 --router-mode separate --json");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("\"router_mode\": \"separate\""), std::string::npos) << r.out;
  const auto cfg = nlohmann::json::parse(slurp(fs::path(path("sep")) / "config.json"));
  EXPECT_EQ(cfg.value("router_mode", ""), "separate");
  expect_remote_code(path("sep"), "FineRMoeConfig", "FineRMoeForCausalLM");
  r = run("info " + path("sep") + " --json");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(nlohmann::json::parse(r.out)["moe"]["router_mode"], "separate");
  r = run("info " + path("sep"));
  EXPECT_NE(r.out.find("separate routers"), std::string::npos) << r.out;
  // bad input: exit 2 naming the option; GGUF has no FineRMoE architecture
  r = run("upcycle " + qwen2 + " " + path("bad") + " --preset finermoe --G-I 4 --router-mode both");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find("router-mode 'both'"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(path("bad") + "/config.json"));
  r = run("export gguf " + path("sep") + " " + path("sep.gguf"));
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find("finer_moe"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(path("sep.gguf")));
}

}  // namespace
