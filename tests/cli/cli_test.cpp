// The `finmoe` command end to end: subprocesses on models made at test time.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "finmoe/safetensors.h"
#include "cli_util.h"
#include "core/file_util.h"

namespace {

using finmoe::clitest::Result;
using finmoe::clitest::run;

namespace fs = std::filesystem;


std::string data(const std::string& rel) { return std::string(FINMOE_TEST_DATA_DIR) + "/" + rel; }

class Cli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / ("finmoe-cli-" + std::to_string(::getpid()));
    auto r = run("init " + model() + " --preset tiny --arch llama --dtype float32 --seed 3 --tokenizer " +
                data("tokenizer/qwen3"));
    ASSERT_EQ(r.status, 0) << r.out;
  }
  static void TearDownTestSuite() { finmoe::remove_tree(fs::path(dir_).string()); }
  static std::string model() { return (dir_ / "tiny").string(); }
  static fs::path dir_;
};
fs::path Cli::dir_;

TEST_F(Cli, InfoReportsParameterCountAndKvBytes) {
  auto r = run("info " + model() + " --json");
  ASSERT_EQ(r.status, 0) << r.out;
  auto j = nlohmann::json::parse(r.out);
  const int64_t V = j["vocab_size"], D = j["hidden_size"], F = j["intermediate_size"];
  const int64_t L = j["num_hidden_layers"], H = j["num_attention_heads"], KV = j["num_key_value_heads"];
  const int64_t hd = j["head_dim"];
  // llama, tied head (tiny preset): embed + final norm + L * (2 norms + q,o + k,v + 3 mlp)
  ASSERT_TRUE(j["tie_word_embeddings"].get<bool>());
  const int64_t per_layer = 2 * D + 2 * D * H * hd + 2 * D * KV * hd + 3 * D * F;
  EXPECT_EQ(j["total_params"].get<int64_t>(), V * D + D + L * per_layer);
  EXPECT_EQ(j["kv_cache_bytes_per_token"]["bfloat16"].get<int64_t>(), 2 * L * KV * hd * 2);
  EXPECT_GE(V, 151643);  // vocabulary sized for the tokenizer
}

// `init --config` builds any architecture from an HF config.json; a DeepSeek-V3
// model's cache is one latent row per layer (kv_lora_rank + qk_rope_head_dim),
// not per-head K and V.
TEST_F(Cli, InitFromAConfigFileReportsTheLatentKvRowOfMla) {
  const std::string cfg_path = data("hf/deepseek_v3_plain/config.json");
  const std::string out = (dir_ / "ds").string();
  auto r = run("init " + out + " --config " + cfg_path + " --dtype float32 --seed 1");
  ASSERT_EQ(r.status, 0) << r.out;
  r = run("info " + out + " --json");
  ASSERT_EQ(r.status, 0) << r.out;
  std::ifstream f(cfg_path);
  const auto cfg = nlohmann::json::parse(f);
  const int64_t L = cfg["num_hidden_layers"], R = cfg["kv_lora_rank"], rope = cfg["qk_rope_head_dim"];
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["model_type"], "deepseek_v3");
  EXPECT_EQ(j["kv_cache_bytes_per_token"]["bfloat16"].get<int64_t>(), L * (R + rope) * 2);
  // the expanded per-head K and V would be H * (qk_nope + rope + v) per layer
  EXPECT_LT(j["kv_cache_bytes_per_token"]["float32"].get<int64_t>(),
            L * cfg["num_attention_heads"].get<int64_t>() *
                (cfg["qk_nope_head_dim"].get<int64_t>() + rope + cfg["v_head_dim"].get<int64_t>()) * 4);
  // the engine runs it over the latent cache (no tokenizer: token ids only)
  r = run("bench serve " + out + " --num-prompts 3 --input-len 8 --output-len 4 --concurrency 2");
  EXPECT_EQ(r.status, 0) << r.out;
  // a preset and a config file together are a usage error
  r = run("init " + (dir_ / "ds2").string() + " --config " + cfg_path + " --preset tiny");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.out.find("--preset"), std::string::npos) << r.out;
  r = run("init " + (dir_ / "ds3").string() + " --config " + (dir_ / "missing.json").string());
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("missing.json"), std::string::npos) << r.out;
}

TEST_F(Cli, TokenizeJsonlMatchesGoldenIds) {
  // golden ids were produced by Hugging Face's tokenizer, not by finmoe
  std::ifstream golden(data("tokenizer/qwen3/qwen3.ids.jsonl"));
  ASSERT_TRUE(golden) << "missing golden file";
  const fs::path in = dir_ / "in.jsonl";
  std::ofstream out(in);
  std::vector<nlohmann::json> want;
  std::string line;
  for (int i = 0; i < 40 && std::getline(golden, line); ++i) {
    auto j = nlohmann::json::parse(line);
    out << nlohmann::json{{"text", j["text"]}}.dump() << "\n";
    want.push_back(j["ids"]);
  }
  out.close();
  auto r = run("tokenize " + model() + " --jsonl " + in.string());
  ASSERT_EQ(r.status, 0) << r.out;
  std::istringstream got(r.out);
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_TRUE(std::getline(got, line)) << "missing output line " << i;
    EXPECT_EQ(nlohmann::json::parse(line)["ids"], want[i]) << "line " << i;
  }
}

TEST_F(Cli, LogitsMatchTransformersReference) {
  // top-1 log-probabilities of `finmoe logits` on a model saved by HF, vs
  // log_softmax of the logits HF computed (tests/ref/make_hf_reference.py)
  const std::string m = data("hf/qwen2_tied");
  auto ref = finmoe::SafetensorsFile::open(m + "/reference.safetensors");
  const auto* ids = ref->find("input_ids");
  const auto* logits = ref->find("logits");
  const int64_t T = 12, V = logits->shape[2];
  std::string arg;
  for (int64_t t = 0; t < T; ++t)
    arg += (t ? "," : "") + std::to_string(reinterpret_cast<const int64_t*>(ids->data)[t]);
  auto r = run("logits " + m + " --ids " + arg + " --top 3");
  ASSERT_EQ(r.status, 0) << r.out;
  auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j["positions"].size(), size_t(T));
  const float* L = reinterpret_cast<const float*>(logits->data);
  for (int64_t t = 0; t < T; ++t) {
    const float* row = L + t * V;
    double mx = -1e30, sum = 0;
    int64_t arg_max = 0;
    for (int64_t v = 0; v < V; ++v)
      if (row[v] > mx) mx = row[v], arg_max = v;
    for (int64_t v = 0; v < V; ++v) sum += std::exp(double(row[v]) - mx);
    const auto& top = j["positions"][size_t(t)]["top"][0];
    EXPECT_EQ(top["id"].get<int64_t>(), arg_max) << "position " << t;
    EXPECT_NEAR(top["logprob"].get<double>(), -std::log(sum), 1e-4) << "position " << t;
  }
}

TEST_F(Cli, GenerateStreamsAndReportsSpeed) {
  auto r = run("generate " + model() + " -p 'The balance sheet' -n 8 --greedy");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("TTFT"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("decode"), std::string::npos) << r.out;
  // greedy is deterministic
  EXPECT_EQ(run("generate " + model() + " -p 'The balance sheet' -n 8 --greedy").out.substr(0, 40),
            r.out.substr(0, 40));
}

// stdout alone: the generated text (the speed line goes to stderr).
std::string text_of(const std::string& args) {
  const std::string cmd = std::string(FINMOE_CLI_PATH) + " " + args + " 2>/dev/null";
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return out;
  std::array<char, 4096> buf;
  for (size_t n; (n = fread(buf.data(), 1, buf.size(), p)) > 0;) out.append(buf.data(), n);
  pclose(p);
  return out;
}

// A copy of the tiny model (links) whose generation_config.json has `changes` applied.
std::string with_generation_config(const fs::path& model, const fs::path& dir, const nlohmann::json& changes) {
  fs::create_directories(dir);
  nlohmann::json gen = nlohmann::json::object();
  for (const auto& e : fs::directory_iterator(model)) {
    if (e.path().filename() == "generation_config.json")
      gen = nlohmann::json::parse(std::ifstream(e.path()));
    else
      fs::create_symlink(e.path(), dir / e.path().filename());
  }
  gen.update(changes);
  std::ofstream(dir / "generation_config.json") << gen.dump();
  return dir.string();
}

// The tiny model's greedy 6 tokens after "The balance sheet" (computed once).
const std::string& greedy_six(const std::string& model) {
  static const std::string text = text_of("generate " + model + " -p 'The balance sheet' -n 6 --greedy");
  return text;
}

TEST_F(Cli, GenerateTakesSamplingDefaultsFromGenerationConfigLikeServe) {
  const std::string prompt = " -p 'The balance sheet'";
  const std::string& greedy = greedy_six(model());
  ASSERT_GT(greedy.size(), 1u);
  // top_k 1 (and a temperature that would otherwise spread the choice):
  // sampling is greedy without --greedy, and max_new_tokens sets -n
  const std::string m = with_generation_config(
      model(), dir_ / "topk1", {{"top_k", 1}, {"temperature", 1.5}, {"max_new_tokens", 6}});
  for (int seed : {1, 2})
    EXPECT_EQ(text_of("generate " + m + prompt + " --seed " + std::to_string(seed)), greedy) << seed;
  // flags override the file: fewer tokens are a prefix of the greedy text
  const std::string three = text_of("generate " + m + prompt + " -n 3");
  EXPECT_LT(three.size(), greedy.size());
  EXPECT_EQ(greedy.substr(0, three.size() - 1), three.substr(0, three.size() - 1));
  // an out-of-range value in the file is refused naming it
  const std::string bad = with_generation_config(model(), dir_ / "badgen", {{"max_new_tokens", -4}});
  const Result r = run("generate " + bad + prompt);
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find("max_new_tokens"), std::string::npos) << r.out;
}

TEST_F(Cli, GenerateAcceptsLlamaCppShortFlags) {
  const std::string prompt = "The balance sheet";
  const std::string& greedy = greedy_six(model());
  ASSERT_GT(greedy.size(), 1u);
  // -f: the prompt from a file
  const fs::path file = dir_ / "prompt.txt";
  std::ofstream(file) << prompt;
  EXPECT_EQ(text_of("generate " + model() + " -f " + file.string() + " -n 6 --greedy"), greedy);
  // -s is --seed
  const std::string sampled = " -p '" + prompt + "' -n 6 --temperature 1.2";
  EXPECT_EQ(text_of("generate " + model() + sampled + " -s 9"),
            text_of("generate " + model() + sampled + " --seed 9"));
  // -t: the decode threads; the text does not depend on them
  EXPECT_EQ(text_of("generate " + model() + " -p '" + prompt + "' -n 6 --greedy -t 1"), greedy);
  Result r = run("generate " + model() + " -p x -t -1");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find("--threads"), std::string::npos) << r.out;
  // -c: prompt + generated tokens; the prompt's length from `finmoe tokenize`
  const auto ids = nlohmann::json::parse(
      run("tokenize " + model() + " --text '" + prompt + "' --add-special-tokens --json").out)["ids"];
  const int64_t n_prompt = int64_t(ids.size());
  ASSERT_GT(n_prompt, 0);
  EXPECT_EQ(text_of("generate " + model() + " -p '" + prompt + "' --greedy -c " + std::to_string(n_prompt + 2)),
            text_of("generate " + model() + " -p '" + prompt + "' --greedy -n 2"));
  r = run("generate " + model() + " -p '" + prompt + "' -c " + std::to_string(n_prompt));
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find("--ctx-size"), std::string::npos) << r.out;
  // no prompt at all names both ways to give one
  r = run("generate " + model());
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find("-f/--file"), std::string::npos) << r.out;
}

TEST_F(Cli, BenchDecodeReportsEveryBatchAgainstTheWeightFloor) {
  auto info = nlohmann::json::parse(run("info " + model() + " --json").out);
  auto r = run("bench decode " + model() +
               " --json --prefill 8 --batch 1 2 --steps 2 --repeats 2 --context 4");
  ASSERT_EQ(r.status, 0) << r.out;
  auto j = nlohmann::json::parse(r.out);
  // tied float32 model: a decode step reads every parameter once (the embedding as the head)
  ASSERT_TRUE(info["tie_word_embeddings"].get<bool>());
  EXPECT_EQ(j["weight_bytes_per_token"].get<double>(), 4.0 * info["total_params"].get<double>());
  EXPECT_GT(j["bandwidth_gb_s"].get<double>(), 0);
  EXPECT_NEAR(j["floor_tokens_per_s"].get<double>(),
              j["bandwidth_gb_s"].get<double>() * 1e9 / j["weight_bytes_per_token"].get<double>(),
              1e-6 * j["floor_tokens_per_s"].get<double>());
  EXPECT_GT(j["prefill_tokens_per_s"].get<double>(), 0);
  ASSERT_EQ(j["decode"].size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    const auto& d = j["decode"][i];
    const double batch = double(i + 1);
    EXPECT_EQ(d["batch"].get<double>(), batch);
    // tokens/s and ms/step describe the same best run
    EXPECT_NEAR(d["tokens_per_s"].get<double>() * d["ms_per_step"].get<double>(), 1e3 * batch,
                1e-6 * 1e3 * batch);
    EXPECT_GT(d["step_ratio_to_floor"].get<double>(), 0);
    // a dense model reads the same weights at every batch
    EXPECT_EQ(d["weight_bytes_per_step"].get<double>(), j["weight_bytes_per_token"].get<double>());
    EXPECT_EQ(d.contains("ratio_to_floor"), i == 0);
  }
  auto bad = run("bench decode " + model() + " --repeats 0");
  EXPECT_EQ(bad.status, 2);
  EXPECT_NE(bad.out.find("repeats"), std::string::npos) << bad.out;
}

TEST_F(Cli, BadInputExitsWithMessageNamingIt) {
  auto r = run("info " + (dir_ / "nope").string());
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("config.json"), std::string::npos) << r.out;

  const fs::path bad = dir_ / "bad";
  fs::create_directories(bad);
  fs::copy_file(fs::path(model()) / "model.safetensors", bad / "model.safetensors");
  std::ofstream(bad / "config.json") << R"({"model_type": "llama", "vocab_size": "many"})";
  r = run("info " + bad.string());
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("vocab_size"), std::string::npos) << r.out;

  r = run("logits " + model() + " --ids 1,x,3");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("'x'"), std::string::npos) << r.out;

  r = run("init " + (dir_ / "p").string() + " --preset enormous");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("qwen2-0.5b"), std::string::npos) << r.out;  // lists presets
}

}  // namespace
