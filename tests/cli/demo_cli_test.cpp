// `finmoe demo` resumes per step: a second run with the same --out runs no
// command and writes the same results; a step killed half-way (its directory
// without the finished marker) reruns alone. On a synthetic corpus and QA set
// in the --cache layout the demo reads, at the smallest scale.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "core/file_util.h"
#include "cli_util.h"

namespace finmoe {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

void write_lines(const fs::path& file, const std::vector<json>& rows) {
  fs::create_directories(file.parent_path());
  std::ofstream f(file);
  for (const auto& r : rows) f << r.dump() << "\n";
}

// corpus/{general,fin,zh}/{train,test}.jsonl, qa/{train,test}.jsonl and their manifests
void synthetic_cache(const fs::path& cache) {
  std::mt19937 rng(1);
  const std::vector<std::string> en = {"bank", "loan", "interest", "rate", "market", "bond", "yield",
                                       "credit", "risk", "capital", "the", "of", "and", "to", "is"};
  const std::vector<std::string> zh = {"银行", "贷款", "利率", "市场", "股票", "债券", "收益", "风险"};
  const auto text = [&](const std::vector<std::string>& words, int n) {
    std::string s;
    for (int i = 0; i < n; ++i) s += (i ? " " : "") + words[rng() % words.size()];
    return s;
  };
  for (const auto& [domain, words] : {std::pair{"general", en}, {"fin", en}, {"zh", zh}})
    for (const auto& [split, n] : {std::pair{"train", 60}, {"test", 12}}) {
      std::vector<json> rows;
      for (int i = 0; i < n; ++i) rows.push_back({{"text", text(words, 80)}});
      write_lines(cache / "corpus" / domain / (std::string(split) + ".jsonl"), rows);
    }
  for (const auto& [split, n] : {std::pair{"train", 40}, {"test", 10}}) {
    std::vector<json> rows;
    for (int i = 0; i < n; ++i)
      rows.push_back({{"messages", {{{"role", "user"}, {"content", "What is " + text(en, 6) + "?"}},
                                    {{"role", "assistant"}, {"content", text(en, 12)}}}}});
    write_lines(cache / "qa" / (std::string(split) + ".jsonl"), rows);
  }
  std::ofstream(cache / "corpus" / "manifest.json") << R"({"synthetic": true})";
  std::ofstream(cache / "qa" / "manifest.json") << R"({"synthetic": true})";
}

size_t count(const std::string& haystack, const std::string& needle) {
  size_t n = 0;
  for (size_t at = haystack.find(needle); at != std::string::npos; at = haystack.find(needle, at + 1)) ++n;
  return n;
}

json results_without_time(const fs::path& out) {
  std::ifstream f(out / "results.json");
  json j = json::parse(f);
  j.erase("seconds");
  for (auto& t : j["task"]) t.erase("seconds"), t.erase("seconds_per_step");
  for (auto& c : j["cpt"]) c.erase("tokens_per_second");
  return j;
}

struct ScratchDir {
  fs::path path = fs::temp_directory_path() / ("finmoe-demo-" + std::to_string(::getpid()));
  ScratchDir() { fs::create_directories(path); }
  ~ScratchDir() { remove_tree(path.string()); }
};

TEST(DemoCli, ASecondRunResumesEveryStepAndAKilledStepRerunsAlone) {
  ScratchDir dir;
  const fs::path cache = dir.path / "cache", out = dir.path / "out";
  synthetic_cache(cache);
  const std::vector<std::string> args = {"demo",         "--cache",     cache.string(), "--out",
                                         out.string(),   "--scale",     "0.01",         "--vocab-size",
                                         "400",          "--seq-len",   "32",           "--batch-size",
                                         "2"};
  const auto first = clitest::run_args(args, 600);
  ASSERT_EQ(first.code, 0) << first.out;
  const size_t commands = count(first.out, "\n$ finmoe ");
  EXPECT_GE(commands, 20u) << first.out;  // upcycles, trainings, evaluations, ESFT
  const json want = results_without_time(out);

  const auto second = clitest::run_args(args, 600);
  ASSERT_EQ(second.code, 0) << second.out;
  EXPECT_EQ(count(second.out, "\n$ finmoe "), 0u) << second.out;
  EXPECT_GE(count(second.out, "done in an earlier run"), commands - 4) << second.out;  // base, tokenizer
  EXPECT_EQ(results_without_time(out), want);

  // the ESFT run killed before it finished: its directory has no marker
  fs::remove(out / "task-esft" / ".finmoe-stage.json");
  const auto third = clitest::run_args(args, 600);
  ASSERT_EQ(third.code, 0) << third.out;
  EXPECT_EQ(count(third.out, "\n$ finmoe "), 1u) << third.out;
  EXPECT_NE(third.out.find("rerunning the unfinished " + (out / "task-esft").string()), std::string::npos)
      << third.out;
  EXPECT_EQ(results_without_time(out), want);  // training is deterministic
}

}  // namespace
}  // namespace finmoe
