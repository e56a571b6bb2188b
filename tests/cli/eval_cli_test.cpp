// `finmoe eval`: the task harness through the binary (results files, the
// plain and `run` forms, compare, bad input exit 2 with nothing written) and
// `eval ppl` beside it.
#include <filesystem>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "../expect_error.h"
#include "cli_util.h"

namespace fs = std::filesystem;
using finmoe::clitest::run;
using nlohmann::json;

namespace {

const std::string kRef = std::string(FINMOE_TEST_DATA_DIR) + "/eval/ref";

struct Tmp {
  fs::path path;
  Tmp() {
    path = fs::temp_directory_path() /
           ("finmoe_eval_cli_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~Tmp() { fs::remove_all(path); }
  std::string write(const std::string& name, const std::string& body) const {
    std::ofstream(path / name, std::ios::binary) << body;
    return (path / name).string();
  }
};

json read_json(const fs::path& p) {
  std::ifstream in(p);
  return json::parse(in);
}

const std::string kModel = kRef + "/model";

}  // namespace

TEST(EvalCli, TasksWriteLmEvalResultsSamplesAndMarkdown) {
  Tmp t;
  const auto r = run("eval " + kModel + " --tasks " + kRef + "/ref_mc.yaml," + kRef +
                     "/ref_ppl.yaml --out " + (t.path / "a").string() + " --log-samples");
  ASSERT_EQ(r.status, 0) << r.out;
  const json res = read_json(t.path / "a" / "results.json");
  const json ref = read_json(kRef + "/reference.json");
  EXPECT_EQ(res["results"]["ref_mc"]["acc,none"], ref["tasks"]["ref_mc"]["results"]["acc,none"]);
  EXPECT_EQ(res["results"]["ref_mc"]["acc_norm,none"],
            ref["tasks"]["ref_mc"]["results"]["acc_norm,none"]);
  EXPECT_EQ(res["n-shot"]["ref_mc"], 2);
  EXPECT_EQ(res["group_subtasks"]["ref_tasks"], json({"ref_mc", "ref_ppl"}));
  std::ifstream samples(t.path / "a" / "samples_ref_mc.jsonl");
  int lines = 0;
  for (std::string l; std::getline(samples, l);) ++lines;
  EXPECT_EQ(lines, 10);
  EXPECT_CONTAINS(r.out, "### ref_tasks");  // the Markdown table on stdout
  EXPECT_CONTAINS(r.out, "| ref_mc | 2 | acc | ↑ |");
  EXPECT_TRUE(fs::exists(t.path / "a" / "results.md"));

  // `eval run` with another shot count, then compare the two
  const auto r2 = run("eval run " + kModel + " --tasks " + kRef +
                      "/ref_mc.yaml --num-fewshot 0 --limit 4 --out " + (t.path / "b").string());
  ASSERT_EQ(r2.status, 0) << r2.out;
  const json b = read_json(t.path / "b" / "results.json");
  EXPECT_EQ(b["n-samples"]["ref_mc"]["effective"], 4);
  EXPECT_EQ(b["n-shot"]["ref_mc"], 0);
  const auto c =
      run("eval compare " + (t.path / "a" / "results.json").string() + " " +
          (t.path / "b" / "results.json").string() + " --out " + (t.path / "cmp.md").string());
  ASSERT_EQ(c.status, 0) << c.out;
  char delta[32];
  std::snprintf(delta, sizeof delta, "%+.4f",
                b["results"]["ref_mc"]["acc,none"].get<double>() -
                    res["results"]["ref_mc"]["acc,none"].get<double>());
  EXPECT_CONTAINS(c.out, std::string("| ref_mc | acc | "));
  EXPECT_CONTAINS(c.out, delta);
  EXPECT_CONTAINS(c.out, "| ref_ppl | bits_per_byte |");
  EXPECT_TRUE(fs::exists(t.path / "cmp.md"));
}

TEST(EvalCli, BadInputExitsTwoNamingFileLineAndFieldAndWritesNothing) {
  Tmp t;
  t.write(
      "d.jsonl",
      "{\"q\": \"a\", \"c\": [\"x\", \"y\"], \"a\": 0}\n{\"q\": \"b\", \"c\": [\"x\", \"y\"]}\n");
  const auto yaml = t.write("t.yaml",
                            "task: t\ndataset_path: d.jsonl\ndoc_to_text: '{{q}}'\n"
                            "doc_to_choice: '{{c}}'\ndoc_to_target: '{{a}}'\n");
  const std::string out = (t.path / "o").string();
  auto r = run("eval " + kModel + " --tasks " + yaml + " --out " + out);
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_CONTAINS(r.out, (t.path / "d.jsonl").string() + ":2");
  EXPECT_CONTAINS(r.out, "field 'a' is not in the document");
  EXPECT_FALSE(fs::exists(fs::path(out) / "results.json"));

  // malformed JSONL: an error with the line, skipped with --skip-bad
  t.write("d.jsonl", "{\"q\": \"a\", \"c\": [\"x\", \"y\"], \"a\": 0}\n{\"q\": \"b\",\n");
  r = run("eval " + kModel + " --tasks " + yaml);
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_CONTAINS(r.out, (t.path / "d.jsonl").string() + ":2: invalid JSON");
  r = run("eval " + kModel + " --tasks " + yaml + " --skip-bad --out " + out);
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_CONTAINS(r.out, "skipped: " + (t.path / "d.jsonl").string() + ":2");
  EXPECT_EQ(read_json(fs::path(out) / "results.json")["n-samples"]["t"]["original"], 1);

  // the answer is not among the choices
  t.write("d.jsonl", "{\"q\": \"a\", \"c\": [\"x\", \"y\"], \"a\": 5}\n");
  r = run("eval " + kModel + " --tasks " + yaml);
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_CONTAINS(r.out, "the choices do not contain the answer 5");

  for (const std::string& args :
       {"eval " + kModel + " --tasks nope", "eval " + kModel,
        "eval " + kModel + " --tasks " + yaml + " --log-samples",
        "eval " + kModel + " --tasks " + yaml + " --model-url http://127.0.0.1:9",
        "eval " + kModel + " --tasks " + yaml + " --limit 0",
        "eval " + kModel + " --tasks " + yaml + " --max-length 129"}) {
    r = run(args);
    EXPECT_EQ(r.status, 2) << args << "\n" << r.out;
    EXPECT_CONTAINS(r.out, "finmoe: error:");
  }
  r = run("eval compare " + yaml + " " + yaml);
  EXPECT_EQ(r.status, 2) << r.out;
}

TEST(EvalCli, TaskListAndPerplexityStillThere) {
  auto r = run("eval tasks");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_CONTAINS(r.out, "finmoe_fin ");
  EXPECT_CONTAINS(r.out, "finmoe_fin_mc");
  r = run("eval ppl " + kModel + " --data " + kRef +
          "/ref_text.jsonl --seq-len 16 --batch-size 2 --batches 2 --json");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_CONTAINS(r.out, "\"ppl\":");
}
