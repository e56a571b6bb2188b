// `finmoe tokenizer train`: trains on files, writes HF tokenizer files that
// `finmoe tokenize` then uses; bad input is a one-line error.
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli_util.h"
#include "core/file_util.h"

namespace {

namespace fs = std::filesystem;
using finmoe::clitest::run;

struct Dir {
  fs::path path = fs::temp_directory_path() / ("finmoe-tokcli-" + std::to_string(::getpid()));
  Dir() { fs::create_directories(path); }
  ~Dir() { finmoe::remove_tree(path.string()); }
  std::string operator/(const std::string& f) const { return (path / f).string(); }
};

TEST(TokenizerCli, TrainWritesATokenizerThatTokenizeUses) {
  Dir d;
  const std::string cases = std::string(FINMOE_TEST_DATA_DIR) + "/tokenizer/cases.jsonl";
  {
    std::ofstream txt(d / "notes.txt");
    for (int i = 0; i < 50; ++i) txt << "The ledger balances: debit " << i << " equals credit " << i << ".\n";
  }
  auto r = run("tokenizer train --vocab-size 600 --min-frequency 2 --chat-template llama3 "
               "--special-tokens '<|fin|>' --threads 2 " + cases + " " + (d / "notes.txt") + " " + (d / "tok"));
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("vocab 600"), std::string::npos) << r.out;

  auto tj = nlohmann::json::parse(std::ifstream(d / "tok/tokenizer.json"));
  auto cfg = nlohmann::json::parse(std::ifstream(d / "tok/tokenizer_config.json"));
  EXPECT_EQ(tj["model"]["vocab"].size() + tj["added_tokens"].size(), 600u);
  EXPECT_EQ(tj["added_tokens"].back()["content"], "<|fin|>");
  EXPECT_EQ(tj["added_tokens"].back()["id"], 599);
  EXPECT_EQ(cfg["eos_token"], "<|eot_id|>");
  EXPECT_EQ(cfg["bos_token"], "<|begin_of_text|>");
  EXPECT_NE(cfg["chat_template"].get<std::string>().find("<|start_header_id|>"), std::string::npos);

  // The special token is one id; text round-trips through `finmoe tokenize`.
  r = run("tokenize " + (d / "tok") + " --text 'debit<|fin|>credit' --json");
  ASSERT_EQ(r.status, 0) << r.out;
  auto j = nlohmann::json::parse(r.out);
  std::string joined;
  for (const auto& t : j["tokens"]) joined += t.get<std::string>();
  EXPECT_EQ(joined, "debit<|fin|>credit");
  EXPECT_NE(std::find(j["ids"].begin(), j["ids"].end(), 599), j["ids"].end());
}

TEST(TokenizerCli, ErrorsNameTheProblem) {
  Dir d;
  auto r = run("tokenizer train --vocab-size 100 " + (d / "missing.txt") + " " + (d / "out"));
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("vocab_size 100"), std::string::npos) << r.out;
  r = run("tokenizer train " + (d / "missing.txt") + " " + (d / "out"));
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("missing.txt: cannot open"), std::string::npos) << r.out;
  r = run("tokenizer train --chat-template alpaca " + (d / "missing.txt") + " " + (d / "out"));
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("chat template 'alpaca'"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(d / "out/tokenizer.json"));
}

}  // namespace
