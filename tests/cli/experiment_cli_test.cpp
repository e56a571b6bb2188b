// `finmoe experiment` end to end on a recipe of tiny steps
// (tests/data/experiments/tiny-seeds.yaml): the table's numbers are the
// stages' own outputs aggregated over seeds (mean and sample sd computed
// here), a rerun is all cache hits, a changed parameter reruns exactly the
// stages that use it, an unfinished stage reruns, bad recipes and failed
// steps are errors naming the file, key or stage.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli_util.h"
#include "core/file_util.h"

namespace {

using finmoe::clitest::run;
namespace fs = std::filesystem;
using json = nlohmann::json;

std::string data(const std::string& rel) { return std::string(FINMOE_TEST_DATA_DIR) + "/" + rel; }

std::string slurp(const fs::path& p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t i = s.find(what); i != std::string::npos; i = s.find(what, i + 1)) ++n;
  return n;
}

class Experiment : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("finmoe-exp-" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { finmoe::remove_tree(dir_.string()); }
  std::string args(const std::string& extra = "") const {
    return "experiment " + data("experiments/tiny-seeds.yaml") + " --seeds 2 --out " + (dir_ / "out").string() +
           " --cache " + (dir_ / "cache").string() + " --set tokenizer=" + data("tokenizer/qwen3") + " " + extra;
  }
  fs::path dir_;
};

TEST_F(Experiment, TableIsTheStagesOutputsOverSeedsAndRerunsAreCached) {
  auto r = run(args("--scale 1.5"));
  ASSERT_EQ(r.status, 0) << r.out;
  const fs::path out = dir_ / "out";
  const json res = json::parse(slurp(out / "results.json"));
  EXPECT_EQ(res["params"]["layers"], 3);  // scaled: round(2 * 1.5)
  ASSERT_EQ(res["stages"].size(), 8u);
  const json& rows = res["tables"][0]["rows"];
  ASSERT_EQ(rows.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    const std::string arch = rows[i]["keys"]["arch"];
    std::vector<double> lp, params;
    for (int seed : {1, 2}) {
      const fs::path s = out / "stages" / ("logits-" + arch + "-s" + std::to_string(seed));
      lp.push_back(json::parse(slurp(s / "logits.json"))["positions"][0]["top"][0]["logprob"].get<double>());
      const fs::path m = out / "stages" / ("init-" + arch + "-s" + std::to_string(seed));
      params.push_back(json::parse(slurp(m / "info.json"))["total_params"].get<double>());
    }
    const json& v = rows[i]["values"]["top logprob"];
    ASSERT_EQ(v["n"], 2);
    EXPECT_DOUBLE_EQ(v["values"][0].get<double>(), lp[0]);
    EXPECT_DOUBLE_EQ(v["values"][1].get<double>(), lp[1]);
    EXPECT_NEAR(v["mean"].get<double>(), (lp[0] + lp[1]) / 2, 1e-12);
    EXPECT_NEAR(v["sd"].get<double>(), std::abs(lp[0] - lp[1]) / std::sqrt(2.0), 1e-12);
    EXPECT_NE(lp[0], lp[1]);  // the seed changes the weights
    EXPECT_EQ(rows[i]["values"]["parameters"]["mean"].get<double>(), params[0]);
    EXPECT_EQ(params[0], params[1]);
  }
  // against the baseline (llama): the parameter count does not change with the
  // seed (an exact difference the table shows); the log-probability does
  const json& diffs = res["tables"][0]["differences"];
  ASSERT_EQ(diffs.size(), 1u);
  EXPECT_EQ(diffs[0]["column"], "top logprob");
  const json &q = rows[1]["values"]["top logprob"], &l = rows[0]["values"]["top logprob"];
  const double d = q["mean"].get<double>() - l["mean"].get<double>();
  const double spread = q["sd"].get<double>() + l["sd"].get<double>();
  EXPECT_NEAR(diffs[0]["difference"].get<double>(), d, 1e-12);
  EXPECT_NEAR(diffs[0]["spread"].get<double>(), spread, 1e-12);
  EXPECT_EQ(diffs[0]["larger_than_spread"].get<bool>(), std::abs(d) > spread);
  const std::string md = slurp(out / "results.md");
  EXPECT_NE(md.find("| arch | parameters | top logprob |"), std::string::npos) << md;
  EXPECT_NE(md.find(" ± "), std::string::npos);
  EXPECT_NE(md.find("over 2 seeds"), std::string::npos);
  const std::string cmds = slurp(out / "commands.sh");
  EXPECT_EQ(count(cmds, "\nfinmoe init "), 4u) << cmds;
  EXPECT_EQ(count(cmds, "\nfinmoe logits "), 4u);
  EXPECT_EQ(slurp(out / "stages/logits-llama-s1/note.txt"),
            "ids 1,2,3 on " + (out / "stages/init-llama-s1").string() + " of " +
                std::to_string(int64_t(rows[0]["values"]["parameters"]["mean"].get<double>())) + "\n");

  // a second run runs nothing
  r = run(args("--scale 1.5"));
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(count(r.out, "  cached ("), 8u) << r.out;
  EXPECT_EQ(count(r.out, "$ finmoe"), 0u) << r.out;
  // nor would it say otherwise in a dry run, which reads the cached stages'
  // results (the logits stage's note names one) to render what follows them
  r = run(args("--scale 1.5 --dry-run"));
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(count(r.out, "  cached ("), 8u) << r.out;
  EXPECT_EQ(count(r.out, "rerunning"), 0u) << r.out;

  // another `ids` changes only the logits stages; their old outputs are announced as stale
  r = run(args("--scale 1.5 --set ids=4,5"));
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(count(r.out, "  cached ("), 4u) << r.out;
  EXPECT_EQ(count(r.out, "was made by other inputs"), 4u) << r.out;
  EXPECT_EQ(count(r.out, "$ finmoe logits"), 4u) << r.out;

  // an unfinished stage (no marker) reruns, and so do the stages that use it
  fs::remove(out / "stages/init-qwen2-s2/.finmoe-stage.json");
  r = run(args("--scale 1.5 --set ids=4,5"));
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(count(r.out, "holds an unfinished run"), 1u) << r.out;
  EXPECT_EQ(count(r.out, "$ finmoe init"), 1u) << r.out;
  // same inputs, so the logits stage's key is unchanged: it stays cached
  EXPECT_EQ(count(r.out, "  cached ("), 7u) << r.out;
}

TEST_F(Experiment, BadRecipesAndFailedStepsNameTheProblem) {
  auto r = run("experiment no-such-experiment --out " + (dir_ / "o").string());
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("unknown experiment 'no-such-experiment'"), std::string::npos) << r.out;

  r = run(args("--set nope=1"));
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("no parameter 'nope'"), std::string::npos) << r.out;

  std::string text = slurp(data("experiments/tiny-seeds.yaml"));
  const fs::path bad = dir_ / "bad.yaml";
  std::ofstream(bad) << text << "colour: blue\n";
  r = run("experiment " + bad.string() + " --out " + (dir_ / "o").string());
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("unknown key 'colour'"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(bad.string()), std::string::npos) << r.out;

  // a step that fails: the error names the stage and shows its log
  r = run(args("--set tokenizer=" + (dir_ / "missing-tokenizer").string()));
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("stage 'init-llama-s1' failed"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("missing-tokenizer"), std::string::npos) << r.out;

  // a template error names the key
  std::string t2 = text;
  const std::string from = "top[0].logprob }}";
  t2.replace(t2.find(from), from.size(), "top[0].logprob }");
  const fs::path bad2 = dir_ / "bad2.yaml";
  std::ofstream(bad2) << t2;
  r = run("experiment " + bad2.string() + " --seeds 1 --out " + (dir_ / "o2").string() + " --cache " +
          (dir_ / "cache").string() + " --set tokenizer=" + data("tokenizer/qwen3"));
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find("tables[0].columns[1].value"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(dir_ / "o2")) << "a recipe whose table does not parse ran stages";

  // a result that names a file the stage wrote but that is not JSON names the
  // stage and the result
  std::string t4 = text;
  const std::string res = "result: \"{{ dir }}/logits.json\"";
  ASSERT_NE(t4.find(res), std::string::npos);
  t4.replace(t4.find(res), res.size(), "result: {logits: \"{{ dir }}/note.txt\"}");
  const fs::path bad4 = dir_ / "bad4.yaml";
  std::ofstream(bad4) << t4;
  r = run("experiment " + bad4.string() + " --seeds 1 --out " + (dir_ / "o4").string() + " --cache " +
          (dir_ / "cache").string() + " --set tokenizer=" + data("tokenizer/qwen3"));
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.out.find(bad4.string() + ": stage logits-llama-s1: result 'logits' must name a JSON file"),
            std::string::npos) << r.out;
  EXPECT_NE(r.out.find("note.txt"), std::string::npos) << r.out;

  // a syntax error in a stage's template is an error when the recipe is read,
  // in a dry run too (which shows a stage it cannot render yet as waiting for
  // earlier results), and nothing is run or written
  const std::pair<std::string, std::string> breaks[] = {
      {"ids {{ ids }} on", "stages[1].files.note.txt"},
      {"--ids, \"{{ ids }}\"", "stages[1].run[0][3]"},
  };
  for (const auto& [from3, key] : breaks) {
    std::string t3 = text;
    ASSERT_NE(t3.find(from3), std::string::npos) << from3;
    std::string broken = from3;
    broken.erase(broken.find("}}"), 1);  // "{{ ids }" does not parse
    t3.replace(t3.find(from3), from3.size(), broken);
    const fs::path bad3 = dir_ / "bad3.yaml";
    std::ofstream(bad3) << t3;
    for (const std::string mode : {"--dry-run", ""}) {
      r = run("experiment " + bad3.string() + " " + mode + " --seeds 1 --out " + (dir_ / "o3").string() +
              " --cache " + (dir_ / "cache3").string() + " --set tokenizer=" + data("tokenizer/qwen3"));
      EXPECT_EQ(r.status, 2) << mode << "\n" << r.out;
      EXPECT_NE(r.out.find(bad3.string() + ": " + key), std::string::npos) << r.out;
      EXPECT_FALSE(fs::exists(dir_ / "o3")) << mode;
      EXPECT_FALSE(fs::exists(dir_ / "cache3")) << mode;
    }
  }
}

// Every recipe shipped in experiments/ parses, expands and renders its
// commands (a dry run runs nothing), at a small scale and with one seed.
TEST_F(Experiment, ShippedRecipesDryRun) {
  auto list = run("experiment --list");
  ASSERT_EQ(list.status, 0) << list.out;
  int n = 0;
  for (const auto& e : fs::directory_iterator(std::string(FINMOE_SOURCE_DIR) + "/experiments")) {
    if (e.path().extension() != ".yaml") continue;
    const std::string name = e.path().stem().string();
    ++n;
    EXPECT_NE(list.out.find(name + "  "), std::string::npos) << list.out;
    EXPECT_EQ(list.out.find("(invalid"), std::string::npos) << list.out;
    auto r = run("experiment " + name + " --dry-run --scale 0.1 --seeds 1 --out " + (dir_ / name).string() +
                 " --cache " + (dir_ / "cache").string());
    EXPECT_EQ(r.status, 0) << name << "\n" << r.out;
    EXPECT_NE(r.out.find("\n    $ finmoe "), std::string::npos) << r.out;  // every stage's commands
    EXPECT_FALSE(fs::exists(dir_ / name)) << "a dry run wrote " << name;
  }
  EXPECT_GE(n, 2);
}

}  // namespace
