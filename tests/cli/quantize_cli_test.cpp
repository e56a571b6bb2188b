// `finmoe quantize` end to end: the 8-bit directory goes through info,
// logits, generate, eval and bench decode unchanged; bad input exits 2 with
// a message naming the file.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "cli_util.h"
#include "core/file_util.h"

namespace {

using finmoe::clitest::run;
namespace fs = std::filesystem;

std::string data(const std::string& rel) { return std::string(FINMOE_TEST_DATA_DIR) + "/" + rel; }

class QuantizeCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / ("finmoe-quantize-cli-" + std::to_string(::getpid()));
    auto r = run("init " + path("float") + " --preset tiny --arch qwen2 --dtype bfloat16 --seed 4 " +
                 "--tokenizer " + data("tokenizer/qwen3"));
    ASSERT_EQ(r.status, 0) << r.out;
    r = run("quantize " + path("float") + " " + path("int8") + " --group-size 32");
    ASSERT_EQ(r.status, 0) << r.out;
    quantize_out_ = r.out;
  }
  static void TearDownTestSuite() { finmoe::remove_tree(dir_.string()); }
  static std::string path(const std::string& name) { return (dir_ / name).string(); }
  static nlohmann::json json_of(const std::string& args) {
    auto r = run(args);
    EXPECT_EQ(r.status, 0) << r.out;
    return nlohmann::json::parse(r.out.substr(r.out.find('{')));
  }
  static fs::path dir_;
  static std::string quantize_out_;
};
fs::path QuantizeCli::dir_;
std::string QuantizeCli::quantize_out_;

TEST_F(QuantizeCli, ReportsSizesAndErrors) {
  EXPECT_NE(quantize_out_.find("wrote " + path("int8") + ": int8, a scale per group of 32 inputs"),
            std::string::npos)
      << quantize_out_;
  EXPECT_NE(quantize_out_.find("largest max |s*q - w| / max |w|"), std::string::npos);
  auto j = json_of("quantize " + path("float") + " " + path("int8-channel") + " --json");
  EXPECT_EQ(j["quantization_config"]["group_size"], nullptr);
  int64_t int8 = 0;
  for (const auto& t : j["tensors"]) {
    if (t["dtype_out"] != "I8") continue;
    ++int8;
    // per channel, bf16 scales: at most half a scale, i.e. max|w| / 254 (+ the scale's rounding up)
    EXPECT_LE(t["max_abs_error"].get<double>(), t["max_abs"].get<double>() / 254 * (1 + 1.0 / 128))
        << t["name"];
  }
  EXPECT_GT(int8, 0);
  EXPECT_LT(j["bytes_out"].get<double>(), 0.6 * j["bytes_in"].get<double>());  // bf16 -> int8
}

TEST_F(QuantizeCli, InfoShowsTheQuantizationAndTheSameParameters) {
  auto f = json_of("info " + path("float") + " --json");
  auto q = json_of("info " + path("int8") + " --json");
  EXPECT_EQ(q["total_params"], f["total_params"]);
  EXPECT_EQ(q["quantization"]["quant_method"], "finmoe_int8");
  EXPECT_EQ(q["quantization"]["group_size"], 32);
  // every 2-D weight is int8: the tied embedding and 7 linears per layer
  EXPECT_EQ(q["quantization"]["int8_tensors"], 1 + 7 * f["num_hidden_layers"].get<int64_t>());
  EXPECT_LT(q["checkpoint_bytes"].get<double>(), 0.6 * f["checkpoint_bytes"].get<double>());
  auto r = run("info " + path("int8"));
  EXPECT_NE(r.out.find("weights     int8 (finmoe_int8 v1), a scale per group of 32 inputs"),
            std::string::npos)
      << r.out;
}

TEST_F(QuantizeCli, LogitsGenerateEvalAndBenchTakeTheQuantizedDirectory) {
  const std::string ids = "--ids 9707,11,1879,0,576,8172,374 --top 1";
  auto f = json_of("logits " + path("float") + " " + ids);
  auto q = json_of("logits " + path("int8") + " " + ids);
  ASSERT_EQ(q["positions"].size(), f["positions"].size());
  for (size_t p = 0; p < f["positions"].size(); ++p)
    EXPECT_NEAR(q["positions"][p]["top"][0]["logprob"].get<double>(),
                f["positions"][p]["top"][0]["logprob"].get<double>(), 0.05)
        << "position " << p;

  auto r = run("generate " + path("int8") + " -p 'The balance sheet' -n 6 --greedy");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("decode"), std::string::npos) << r.out;

  const std::string text = path("heldout.txt");
  std::ofstream(text) << "Interest expense rose as the company refinanced its debt at higher "
                         "rates, while revenue grew four percent on higher volumes.\n";
  auto ef = json_of("eval ppl " + path("float") + " --data " + text +
                    " --seq-len 16 --batch-size 2 --batches 1 --json");
  auto eq = json_of("eval ppl " + path("int8") + " --data " + text +
                    " --seq-len 16 --batch-size 2 --batches 1 --json");
  EXPECT_NEAR(eq["ppl"].get<double>(), ef["ppl"].get<double>(), 0.02 * ef["ppl"].get<double>());
  // bf16 activations (the batched kernels and the bf16 GEMM)
  auto eb = json_of("eval ppl " + path("int8") + " --data " + text +
                    " --seq-len 16 --batch-size 2 --batches 1 --json --dtype bfloat16");
  EXPECT_EQ(eb["dtype"], "bfloat16");
  EXPECT_NEAR(eb["ppl"].get<double>(), ef["ppl"].get<double>(), 0.03 * ef["ppl"].get<double>());

  // a decode step streams the int8 weights with their scales (the tied embedding as the head)
  auto info = json_of("info " + path("int8") + " --json");
  auto b = json_of("bench decode " + path("int8") +
                   " --json --prefill 8 --batch 1 --steps 2 --repeats 1 --context 4");
  const double int8_bytes = info["quantization"]["int8_bytes"].get<double>();
  EXPECT_GT(b["weight_bytes_per_token"].get<double>(), int8_bytes);  // + norms and biases (bf16)
  EXPECT_LT(b["weight_bytes_per_token"].get<double>(), 1.05 * int8_bytes);
}

TEST_F(QuantizeCli, BadInputExitsTwoAndNamesTheFile) {
  auto r = run("quantize " + path("int8") + " " + path("twice"));
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find(path("int8") + "/config.json: the checkpoint is already quantized"),
            std::string::npos)
      << r.out;
  r = run("quantize " + path("float") + " " + path("int4") + " --type int4");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find("--type 'int4' is not supported"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(path("int4")));

  r = run("train --model " + path("int8") + " --output-dir " + path("run") + " --data " +
          data("tokenizer/qwen3/qwen3.ids.jsonl") + " --max-steps 1");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find("train: model " + path("int8") + ": the model has int8 weights"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("needs bf16/f32 weights"), std::string::npos) << r.out;
}

}  // namespace
