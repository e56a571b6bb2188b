// Hostile numbers on the command line and in a model directory: each ends in
// exit 0 or in exit 2 with a message naming the option or file, never in a
// signal or "internal error" (exit 1).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "../expect_error.h"
#include "cli_util.h"
#include "core/file_util.h"

namespace {

using finmoe::clitest::Exit;
using finmoe::clitest::run_args;
namespace fs = std::filesystem;

std::string data(const std::string& rel) { return std::string(FINMOE_TEST_DATA_DIR) + "/" + rel; }

class HostileInput : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / ("finmoe-hostile-" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    const Exit e = run_args({"init", model(), "--preset", "tiny", "--dtype", "float32", "--seed",
                             "1", "--tokenizer", data("tokenizer/byte_fallback/llama2_style")});
    ASSERT_EQ(e.code, 0) << e.out;
    // without tokenizer.json: logits names ids only (vocabulary 512)
    const Exit b = run_args({"init", bare(), "--preset", "tiny", "--dtype", "float32"});
    ASSERT_EQ(b.code, 0) << b.out;
    std::ofstream(dir_ / "text.txt") << "Net income rose 12% to 4.1 billion EUR.\n";
    std::ofstream(dir_ / "text.jsonl") << R"({"text": "Net income rose 12% to 4.1 billion EUR."})"
                                       << "\n";
    std::ofstream(dir_ / "scores.json")
        << R"({"token_scores": {"0": {"0": 0.6, "1": 0.4}}, "gate_scores": {"0": {"0": 0.5, "1": 0.5}},
              "tokens": 10, "sequences": 1})";
  }
  static void TearDownTestSuite() { finmoe::remove_tree(dir_.string()); }
  static std::string model() { return (dir_ / "tiny").string(); }
  static std::string bare() { return (dir_ / "bare").string(); }
  static fs::path dir_;
};
fs::path HostileInput::dir_;

// Exit 2 with finmoe's message naming `what`, or CLI11's naming the option.
void expect_refused(const Exit& e, const std::string& what) {
  EXPECT_EQ(e.signal, 0) << e.out;
  EXPECT_EQ(e.code, 2) << e.out;
  EXPECT_CONTAINS(e.out, what);
  EXPECT_EQ(e.out.find("internal error"), std::string::npos) << e.out;
}

TEST_F(HostileInput, IdsAreCheckedAsInt64NotWrapped) {
  // 4294967297 = 2^32 + 1 was read as int32 and became id 1
  expect_refused(run_args({"logits", bare(), "--ids", "1,4294967297"}),
                 "--ids: 4294967297 is not a token id");
  expect_refused(run_args({"logits", bare(), "--ids", "-1"}), "--ids: -1 is not a token id");
  expect_refused(run_args({"logits", bare(), "--ids", "99999999999999999999"}),
                 "--ids: '99999999999999999999' is not a token id");
  expect_refused(run_args({"logits", bare(), "--ids", "512"}),
                 "--ids: token 512 outside the vocabulary");  // vocabulary 512: ids 0..511
  const Exit ok = run_args({"logits", bare(), "--ids", "511,1"});
  ASSERT_EQ(ok.code, 0) << ok.out;
  EXPECT_EQ(nlohmann::json::parse(ok.out)["ids"], nlohmann::json({511, 1}));
}

TEST_F(HostileInput, TopMustBePositive) {
  // --top -1 reached torch's topk: "internal error"
  expect_refused(run_args({"logits", bare(), "--ids", "1,2", "--top", "-1"}),
                 "--top must be at least 1, got -1");
  expect_refused(run_args({"logits", bare(), "--ids", "1,2", "--top", "0"}),
                 "--top must be at least 1");
  const Exit big = run_args({"logits", bare(), "--ids", "1,2", "--top", "2147483648"});
  ASSERT_EQ(big.code, 0) << big.out;  // as many as there are: the vocabulary
  EXPECT_EQ(nlohmann::json::parse(big.out)["positions"][0]["top"].size(), 512u);
}

// CLI11 alone read "010" as 8 (octal), "0x10" as 16, saturated 2^64 to 2^63-1,
// wrapped -1 to 2^64-1 for unsigned options and took nan and inf as floats.
TEST_F(HostileInput, NumbersAreDecimalAndFitTheirType) {
  for (const char* v : {"0x10", "99999999999999999999", "1e3", " 5", "+", "-"})
    expect_refused(run_args({"logits", bare(), "--ids", "1", "--top", v}), "--top");
  expect_refused(run_args({"logits", bare(), "--ids", "1", "--top", "99999999999999999999"}),
                 "does not fit in a signed 64-bit integer");
  expect_refused(run_args({"init", (dir_ / "never").string(), "--seed", "-1"}),
                 "expected a non-negative integer, got '-1'");
  for (const char* v : {"nan", "inf", "1e999", "-1e999", "0.5x"})
    expect_refused(run_args({"generate", model(), "-p", "x", "--temperature", v}),
                   "expected a finite number");
  EXPECT_FALSE(fs::exists(dir_ / "never"));
  for (const auto& [v, n] : {std::pair<const char*, size_t>{"+7", 7}, {"010", 10}, {"-0002", 0}}) {
    const Exit e = run_args({"logits", bare(), "--ids", "1", "--top", v});
    if (n == 0) {
      expect_refused(e, "--top must be at least 1, got -2");
      continue;
    }
    ASSERT_EQ(e.code, 0) << e.out;
    EXPECT_EQ(nlohmann::json::parse(e.out)["positions"][0]["top"].size(), n) << v;
  }
}

TEST_F(HostileInput, InfoOnAnMoeConfigWithoutMoeLayers) {
  // qwen2_moe whose mlp_only_layers keep every layer dense: the dense tiny
  // checkpoint is exactly right for it, and no MoE layer exists to describe
  const fs::path moe = dir_ / "moe-dense";
  fs::create_directories(moe);
  fs::copy_file(fs::path(model()) / "model.safetensors", moe / "model.safetensors");
  auto cfg = nlohmann::json::parse(std::ifstream(fs::path(model()) / "config.json"));
  cfg["model_type"] = "qwen2_moe";
  cfg["num_experts"] = 4;
  cfg["num_experts_per_tok"] = 2;
  cfg["moe_intermediate_size"] = 32;
  cfg["shared_expert_intermediate_size"] = 0;
  cfg["mlp_only_layers"] = {0, 1};
  std::ofstream(moe / "config.json") << cfg.dump(2);
  const Exit text = run_args({"info", moe.string()});
  ASSERT_EQ(text.code, 0) << text.out;
  EXPECT_CONTAINS(text.out, "moe layers  0 of 2, 0 params each");
  const Exit json = run_args({"info", moe.string(), "--json"});
  ASSERT_EQ(json.code, 0) << json.out;
  const auto j = nlohmann::json::parse(json.out);
  EXPECT_EQ(j["moe"]["moe_layers"], nlohmann::json::array());
  EXPECT_EQ(j["moe"]["params_per_moe_layer"], 0);
  EXPECT_EQ(j["active_params"], j["total_params"]);
}

TEST_F(HostileInput, HugeConfigSizesFailFastNamingTheField) {
  const fs::path big = dir_ / "big";
  fs::create_directories(big);
  fs::copy_file(fs::path(model()) / "model.safetensors", big / "model.safetensors");
  auto cfg = nlohmann::json::parse(std::ifstream(fs::path(model()) / "config.json"));
  cfg["num_hidden_layers"] = 1000000;
  std::ofstream(big / "config.json") << cfg.dump(2);
  expect_refused(run_args({"info", big.string()}, 10),
                 "config.json: field 'num_hidden_layers' is 1000000, above finmoe's limit of 4096");
  cfg["num_hidden_layers"] = 2;
  cfg["num_attention_heads"] = 4294967296;  // its products printed "KV cache 0 B/token"
  std::ofstream(big / "config.json") << cfg.dump(2);
  expect_refused(run_args({"logits", big.string(), "--ids", "1"}, 10),
                 "field 'num_attention_heads'");
  cfg["num_attention_heads"] = 4;
  cfg["rope_theta"] = "1e999";
  std::ofstream(big / "config.json") << cfg.dump(2);
  expect_refused(run_args({"info", big.string()}),
                 "field 'rope_theta' must be a number, got string");
  std::ofstream(big / "config.json") << R"({"model_type": "qwen2", "rope_theta": 1e999})";
  expect_refused(run_args({"info", big.string()}), "(at field 'rope_theta')");
}

// Every numeric option of these commands (read from their --help) given
// values at and past the limits of its type: exit 0 or 2, never a signal or
// an internal error. Commands run on the tiny model; the values that parse
// run the command for real.
TEST_F(HostileInput, EveryNumericOptionSurvivesExtremeValues) {
  const std::string out = (dir_ / "out").string();
  const std::vector<std::vector<std::string>> commands = {
      {"logits", model(), "--ids", "1,2"},
      {"generate", model(), "-p", "Net income"},
      {"eval", "ppl", model(), "--data", (dir_ / "text.jsonl").string()},
      {"bench", "decode", model()},
      {"tokenizer", "train", (dir_ / "text.txt").string(), out + "-tok"},
      {"esft", "select", (dir_ / "scores.json").string()},
      {"init", out + "-init", "--preset", "tiny"},
      {"launch", "--", "true"},
  };
  const std::vector<std::string> values = {"-1",  "0",    "2147483648", "9223372036854775808",
                                           "nan", "1e999"};
  const std::regex numeric(
      R"(^\s+((?:-\w,)?--[\w-]+)(?: |,)\s*(INT|UINT|FLOAT|FLOAT:\S*|INT:\S*)\b)");
  int runs = 0;
  for (const auto& base : commands) {
    // the subcommand path is the arguments before the first path-like one
    std::vector<std::string> path;
    for (const auto& a : base) {
      if (a.find('/') != std::string::npos || a.starts_with("-")) break;
      path.push_back(a);
    }
    std::vector<std::string> help_args = path;
    help_args.push_back("--help");
    const Exit help = run_args(help_args);
    ASSERT_EQ(help.code, 0) << help.out;
    std::set<std::string> options;
    std::istringstream lines(help.out);
    for (std::string line; std::getline(lines, line);) {
      std::smatch m;
      if (!std::regex_search(line, m, numeric)) continue;
      std::string opt = m[1];
      if (const size_t c = opt.find(','); c != std::string::npos) opt = opt.substr(c + 1);
      options.insert(opt);
    }
    for (const auto& opt : options) {
      for (const auto& v : values) {
        finmoe::remove_tree(out + "-tok");
        finmoe::remove_tree(out + "-init");
        std::vector<std::string> args = base;
        args.push_back(opt);
        args.push_back(v);
        const Exit e = run_args(args, 120);
        ++runs;
        std::string cmd;
        for (const auto& a : args) cmd += a + " ";
        EXPECT_EQ(e.signal, 0) << cmd << "\n" << e.out;
        EXPECT_TRUE(e.code == 0 || e.code == 2) << cmd << "exit " << e.code << "\n" << e.out;
        EXPECT_EQ(e.out.find("internal error"), std::string::npos) << cmd << "\n" << e.out;
      }
    }
  }
  EXPECT_GT(runs, 60);  // the help parsing found the options
}

}  // namespace
