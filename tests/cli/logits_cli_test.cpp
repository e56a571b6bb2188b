// `finmoe logits` on a vocabulary padded past its tokenizer (as Qwen's): the
// padded ids are scored like any other and reported with "token": null.
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli_util.h"
#include "core/file_util.h"

namespace {

namespace fs = std::filesystem;
using finmoe::clitest::run;

// Ids the tokenizer has a token for: the largest id of its vocab and added tokens + 1.
int64_t tokenizer_size(const std::string& tokenizer_json) {
  const auto j = nlohmann::json::parse(std::ifstream(tokenizer_json));
  int64_t top = -1;
  for (const auto& id : j["model"]["vocab"]) top = std::max(top, id.get<int64_t>());
  for (const auto& a : j["added_tokens"]) top = std::max(top, a["id"].get<int64_t>());
  return top + 1;
}

TEST(LogitsCli, PaddedVocabularyIdsHaveANullToken) {
  const fs::path dir = fs::temp_directory_path() / ("finmoe-logits-" + std::to_string(::getpid()));
  const std::string tok = std::string(FINMOE_TEST_DATA_DIR) + "/tokenizer/qwen3";
  const std::string model = (dir / "tiny").string();
  auto r = run("init " + model +
               " --preset tiny --arch qwen2 --dtype float32 --seed 4 --tokenizer " + tok);
  ASSERT_EQ(r.status, 0) << r.out;
  const int64_t n_tok = tokenizer_size(tok + "/tokenizer.json");
  const int64_t V = nlohmann::json::parse(std::ifstream(model + "/config.json"))["vocab_size"];
  ASSERT_GT(V, n_tok) << "the tiny preset pads the vocabulary to a multiple of 64";

  // every id ranked: the padded ones among them
  r = run("logits " + model + " --ids 1,2 --top " + std::to_string(V));
  ASSERT_EQ(r.status, 0) << r.out.substr(0, 2000);
  const auto j = nlohmann::json::parse(r.out);
  for (const auto& pos : j["positions"]) {
    ASSERT_EQ(int64_t(pos["top"].size()), V);
    int64_t padded = 0;
    for (const auto& a : pos["top"]) {
      if (a["id"].get<int64_t>() >= n_tok) {
        EXPECT_TRUE(a["token"].is_null()) << a;
        ++padded;
      } else {
        EXPECT_TRUE(a["token"].is_string()) << a;
      }
    }
    EXPECT_EQ(padded, V - n_tok);
  }
  finmoe::remove_tree(dir.string());
}

}  // namespace
