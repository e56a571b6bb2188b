// The evaluation harness without a model: templates, metrics, rolling
// windows, data loaders, task YAMLs, prompts and aggregation (a scripted
// LanguageModel stands in for the model).
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>

#include <gtest/gtest.h>

#include "../expect_error.h"
#include "eval/py_random.h"
#include "finmoe/config.h"
#include "finmoe/eval.h"

namespace fs = std::filesystem;
using finmoe::test::message_of;
using nlohmann::json;
using namespace finmoe::eval;

namespace {

const std::string kData = std::string(FINMOE_TEST_DATA_DIR) + "/eval";

// A fresh directory under the build tree, removed at the end of the test.
struct TempDir {
  fs::path path;
  TempDir() {
    path =
        fs::temp_directory_path() /
        ("finmoe_eval_test_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) +
         "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string write(const std::string& name, const std::string& body) const {
    const auto p = (path / name).string();
    std::ofstream(p, std::ios::binary) << body;
    return p;
  }
};

json render(const std::string& t, const json& doc) {
  return default_template_engine()->render(t, doc, "test");
}

}  // namespace

// ---- templates -------------------------------------------------------------

TEST(EvalTemplate, SubstitutesFieldsPathsAndFilters) {
  const json doc = {{"q", "  Why?  "},
                    {"n", 3},
                    {"choices", {{"text", {"a", "b"}}}},
                    {"messages", {{{"role", "user"}, {"content", "hi"}}}}};
  EXPECT_EQ(render("Q: {{q.strip()}} ({{ n }})", doc), json("Q: Why? (3)"));
  EXPECT_EQ(render("{{ choices.text[1] | upper }}", doc), json("B"));
  EXPECT_EQ(render("{{messages[0].content}}!", doc), json("hi!"));
  EXPECT_EQ(render("{{q|trim}}", doc), json("Why?"));
  // a lone expression is the value itself: a list of choices, an integer label
  EXPECT_EQ(render("{{choices.text}}", doc), json({"a", "b"}));
  EXPECT_EQ(render(" {{n}} ", doc), json(3));
  EXPECT_EQ(render("{{ ['A', 'B'] }}", doc), json({"A", "B"}));
  // lm-eval: a bare field name is that field
  EXPECT_EQ(render("n", doc), json(3));
  EXPECT_EQ(render("plain text", doc), json("plain text"));
}

TEST(EvalTemplate, UnknownFieldIsAnErrorNamingFieldAndDocument) {
  const json doc = {{"question", "x"}, {"answer", 1}};
  const std::string m = message_of([&] {
    default_template_engine()->render("{{questoin}}", doc, "task t, doc_to_text (f.jsonl:7)");
  });
  EXPECT_CONTAINS(m, "task t, doc_to_text (f.jsonl:7)");
  EXPECT_CONTAINS(m, "field 'questoin' is not in the document");
  EXPECT_CONTAINS(m, "answer, question");
  EXPECT_CONTAINS(message_of([&] { render("{% if x %}y{% endif %}", doc); }), "Jinja statements");
  EXPECT_CONTAINS(message_of([&] { render("{{question", doc); }), "without a closing");
}

// ---- metrics ---------------------------------------------------------------

TEST(EvalMetrics, AccNormDividesByCharactersAndAccBytesByBytes) {
  // lm-eval: acc = argmax ll; acc_norm = argmax ll/len(choice) (Python len:
  // code points); acc_bytes = argmax ll/len(choice.encode()).
  // "元" is 1 code point, 3 bytes; "abcd" 4 of each.
  const std::vector<std::string> ch = {"元", "abcd"};
  const std::vector<double> ll = {-3.0, -8.0};
  // per char: -3 vs -2 -> 1; per byte: -1 vs -2 -> 0; raw: 0
  const auto s = score_choices(ll, ch, 1);
  EXPECT_EQ(s.pred, 0);
  EXPECT_EQ(s.pred_norm, 1);
  EXPECT_EQ(s.acc, 0.0);
  EXPECT_EQ(s.acc_norm, 1.0);
  EXPECT_EQ(s.acc_bytes, 0.0);
  // ties: numpy's argmax takes the first
  EXPECT_EQ(score_choices({-1.0, -1.0}, {"ab", "cd"}, 0).pred, 0);
}

TEST(EvalMetrics, CountWordsIsPythonRegexSplit) {
  // len(re.split(r"\s+", s)) in Python 3
  EXPECT_EQ(count_words("a b  c"), 3);
  EXPECT_EQ(count_words(" a"), 2);
  EXPECT_EQ(count_words("a \n"), 2);
  EXPECT_EQ(count_words(""), 1);
  EXPECT_EQ(count_words("资产\u3000负债"), 2);  // U+3000 is whitespace to Python
}

TEST(EvalMetrics, GenerationScorers) {
  MetricSpec em{"exact_match", "mean", true, json::object()};
  EXPECT_EQ(score_generation(em, " Yen", "Yen"), 0.0);  // HF exact_match does not strip
  em.kwargs = {{"ignore_case", true}, {"ignore_punctuation", true}, {"strip", true}};
  EXPECT_EQ(score_generation(em, " yen.", "Yen"), 1.0);
  em.kwargs = {{"regexes_to_ignore", {"^The answer is "}}};
  EXPECT_EQ(score_generation(em, "The answer is 42", "42"), 1.0);

  MetricSpec re{"regex_match", "mean", true, {{"pattern", "answer: ([A-D])"}}};
  EXPECT_EQ(score_generation(re, "so the answer: B because", "B"), 1.0);
  EXPECT_EQ(score_generation(re, "so the answer: C", "B"), 0.0);
  EXPECT_EQ(score_generation(re, "no idea", "B"), 0.0);

  MetricSpec num{"numeric", "mean", true, {{"tolerance", 0.01}}};
  EXPECT_EQ(score_generation(num, "It is 1,234.561 dollars", "1234.56"), 1.0);
  EXPECT_EQ(score_generation(num, "first 7 then 12.5", "12.5"), 1.0);  // the last number
  EXPECT_EQ(score_generation(num, "1234.6", "1234.56"), 0.0);
  num.kwargs = {{"rel_tolerance", 0.05}};
  EXPECT_EQ(score_generation(num, "-103", "-100"), 1.0);
  EXPECT_CONTAINS(message_of([&] { score_generation(num, "1", "none"); }), "holds no number");

  MetricSpec jf{"json_field", "mean", true, {{"field", "intent.name"}}};
  EXPECT_EQ(score_generation(jf, "ok {\"intent\": {\"name\": \"transfer\"}, \"x\": \"}\"} end",
                             "transfer"),
            1.0);
  EXPECT_EQ(score_generation(jf, "{\"intent\": {\"name\": \"balance\"}}", "transfer"), 0.0);
  EXPECT_EQ(score_generation(jf, "not json", "transfer"), 0.0);
  jf.kwargs = {{"field", "amount"}};
  EXPECT_EQ(score_generation(jf, "{\"amount\": 12.0}", "12"), 1.0);
}

TEST(EvalMetrics, RollingWindowsPredictEveryTokenOnceWithinTheContext) {
  std::vector<int32_t> toks;
  for (int i = 0; i < 23; ++i) toks.push_back(100 + i);
  for (int64_t max_len : {4, 8, 23, 30})
    for (int64_t ctx : {int64_t(1), int64_t(3), max_len}) {
      if (ctx > max_len) continue;
      const auto w = rolling_windows(toks, 7, max_len, ctx);
      std::vector<int32_t> predicted;
      for (const auto& [c, x] : w) {
        ASSERT_FALSE(x.empty());
        // the model sees context + continuation[:-1]: at most max_len tokens
        EXPECT_LE(int64_t(c.size() + x.size()) - 1, max_len);
        // the context is what precedes the continuation (the prefix token first)
        std::vector<int32_t> all = {7};
        all.insert(all.end(), toks.begin(), toks.end());
        const size_t at = 1 + predicted.size();  // index of x[0] in `all`
        ASSERT_GE(at, c.size());
        EXPECT_TRUE(std::equal(c.begin(), c.end(), all.begin() + int64_t(at - c.size())));
        predicted.insert(predicted.end(), x.begin(), x.end());
      }
      EXPECT_EQ(predicted, toks) << max_len << " " << ctx;
      // lm-eval's first window: the prefix token then max_len - 1 tokens
      EXPECT_EQ(w.front().first.front(), 7);
    }
  // context_len 1 gives disjoint windows of max_len predictions
  EXPECT_EQ(rolling_windows(toks, 7, 8, 1).size(), 3u);
  // context_len = max_len slides one token at a time after the first window
  EXPECT_EQ(rolling_windows(toks, 7, 8, 8).size(), 1u + 15u);
}

TEST(EvalMetrics, PyRandomIsCPythonsRandom) {
  // CPython 3.11: r = random.Random(1234); [r.getrandbits(32) for _ in range(3)]
  PyRandom r(1234);
  EXPECT_EQ(r.getrandbits(32), 4150886329u);
  EXPECT_EQ(r.getrandbits(32), 3342196574u);
  EXPECT_EQ(r.getrandbits(32), 1892932127u);
  // r = random.Random(1234); r.sample(range(10), 3), r.sample(range(10), 4),
  // r.sample(range(100), 7) (the set-based branch), r.sample(range(30), 29)
  PyRandom s(1234);
  EXPECT_EQ(s.sample(10, 3), (std::vector<uint64_t>{7, 1, 0}));
  EXPECT_EQ(s.sample(10, 4), (std::vector<uint64_t>{1, 0, 9, 8}));
  EXPECT_EQ(s.sample(100, 7), (std::vector<uint64_t>{98, 45, 30, 2, 3, 44, 82}));
  EXPECT_EQ(s.sample(30, 29),
            (std::vector<uint64_t>{19, 15, 29, 14, 4, 2,  5,  22, 3, 0,  16, 28, 7,  24, 26,
                                   1,  9,  10, 18, 8, 13, 20, 25, 6, 17, 12, 27, 11, 21}));
  EXPECT_EQ(PyRandom(0).sample(5, 2), (std::vector<uint64_t>{3, 4}));         // random.Random(0)
  EXPECT_EQ(PyRandom((uint64_t(1) << 40) + 5).getrandbits(32), 2166296868u);  // a two-word seed
}

// ---- data files ------------------------------------------------------------

TEST(EvalData, CsvWithQuotesCommasAndNewlines) {
  TempDir d;
  const auto p =
      d.write("x.csv", "\xEF\xBB\xBFid,question,A\r\n1,\"a, \"\"b\"\"\nc\",x\n2,plain,y\n");
  const auto docs = read_records(p);
  ASSERT_EQ(docs.size(), 2u);
  EXPECT_EQ(docs[0].fields["question"], "a, \"b\"\nc");
  EXPECT_EQ(docs[0].fields["id"], "1");
  EXPECT_EQ(docs[1].where, p + ":4");  // the record's first line
  const auto bad = d.write("y.csv", "a,b\n1,2,3\n");
  const auto m = message_of([&] { read_records(bad); });
  EXPECT_CONTAINS(m, bad + ":2: 3 fields, the header has 2");
}

TEST(EvalData, MalformedJsonlLinesNameFileAndLineAndSkipOnlyWithSkipBad) {
  TempDir d;
  const auto p = d.write("x.jsonl", "{\"a\": 1}\n\n{\"a\": \n[1,2]\n{\"a\": 3}\n");
  const auto m = message_of([&] { read_records(p); });
  EXPECT_CONTAINS(m, p + ":3");
  EXPECT_CONTAINS(m, "--skip-bad");
  std::vector<std::string> warned;
  LoadOptions o;
  o.skip_bad = true;
  o.warn = [&](const std::string& w) { warned.push_back(w); };
  const auto docs = read_records(p, o);
  ASSERT_EQ(docs.size(), 2u);
  EXPECT_EQ(docs[1].fields["a"], 3);
  EXPECT_EQ(docs[1].where, p + ":5");
  ASSERT_EQ(warned.size(), 2u);
  EXPECT_CONTAINS(warned[1], p + ":4: a line must be a JSON object");
}

TEST(EvalData, CEvalAndCmmluCsvLayouts) {
  // C-Eval: id,question,A,B,C,D,answer,explanation; CMMLU: ,Question,A,B,C,D,Answer
  for (const char* layout : {"ceval", "cmmlu"}) {
    TempDir d;
    TaskConfig t = parse_task_yaml_text(std::string("task: t\nlayout: ") + layout +
                                            "\ndataset_path: data\ndataset_name: accountant\n",
                                        "t.yaml", d.path.string());
    fs::create_directories(d.path / "data" / "val");
    if (std::string(layout) == "ceval")
      d.write("data/val/accountant_val.csv",
              "id,question,A,B,C,D,answer,explanation\n0,资产等于负债加上____。,收入,所有者权益,"
              "费用,利润,B,\n");
    else
      d.write("data/val/accountant.csv",
              ",Question,A,B,C,D,Answer\n0,资产等于负债加上____。,收入,所有者权益,费用,利润,B\n");
    const auto docs = load_docs(t, "val");
    ASSERT_EQ(docs.size(), 1u);
    EXPECT_EQ(docs[0].fields["question"], "资产等于负债加上____。");
    EXPECT_EQ(docs[0].fields["choices"], json({"收入", "所有者权益", "费用", "利润"}));
    EXPECT_EQ(docs[0].fields["answer"], "B");
    EXPECT_EQ(t.doc_to_choice_list, (std::vector<std::string>{"A", "B", "C", "D"}));
    EXPECT_EQ(default_template_engine()->render(t.doc_to_text, docs[0].fields, "x"),
              json("资产等于负债加上____。\nA. 收入\nB. 所有者权益\nC. 费用\nD. 利润\n答案："));
  }
  TempDir d;
  d.write("x.csv", "question,A,B,C,answer\nq,1,2,3,A\n");
  TaskConfig t = parse_task_yaml_text("task: t\nlayout: ceval\ndataset_path: x.csv\n", "t.yaml",
                                      d.path.string());
  EXPECT_CONTAINS(message_of([&] { load_docs(t, "test"); }), "x.csv:2: field 'D' is missing");
}

TEST(EvalData, CflueJsonAndFlareJsonlLayouts) {
  TempDir d;
  d.write("cflue.json", R"({"data": [
    {"question": "Q1", "options": {"A": "x", "B": "y", "C": "z"}, "answer": "C"},
    {"question": "Q2", "options": "A. one\nB. two", "answer": "A"},
    {"question": "Q3", "choices": ["p", "q", "r", "s"], "answer": "D"}]})");
  TaskConfig c = parse_task_yaml_text("task: c\nlayout: cflue\ndataset_path: cflue.json\n",
                                      "c.yaml", d.path.string());
  const auto docs = load_docs(c, "test");
  ASSERT_EQ(docs.size(), 3u);
  EXPECT_EQ(docs[0].fields["choices"], json({"x", "y", "z"}));
  EXPECT_EQ(docs[1].fields["B"], "two");
  EXPECT_EQ(docs[2].fields["D"], "s");
  EXPECT_EQ(docs[0].where, d.path.string() + "/cflue.json: record 0");

  d.write("fpb.jsonl",
          "{\"id\": \"fpb0\", \"query\": \"Sentiment of: profits rose\", \"answer\": \"positive\", "
          "\"choices\": [\"negative\", \"neutral\", \"positive\"], \"gold\": 2, \"text\": "
          "\"profits rose\"}\n"
          "{\"id\": \"fpb1\", \"query\": \"q\", \"choices\": [\"a\"], \"gold\": 4}\n");
  TaskConfig f = parse_task_yaml_text("task: f\nlayout: flare\ndataset_path: fpb.jsonl\n", "f.yaml",
                                      d.path.string());
  EXPECT_CONTAINS(message_of([&] { load_docs(f, "test"); }),
                  "fpb.jsonl:2: field 'gold' must be an index");
  LoadOptions skip;
  skip.skip_bad = true;
  const auto fd = load_docs(f, "test", skip);
  ASSERT_EQ(fd.size(), 1u);
  EXPECT_EQ(fd[0].fields["gold"], 2);
  EXPECT_EQ(*f.doc_to_choice, "{{choices}}");
}

TEST(EvalData, SplitField) {
  TempDir d;
  d.write(
      "all.jsonl",
      "{\"s\": \"train\", \"x\": 1}\n{\"s\": \"test\", \"x\": 2}\n{\"s\": \"test\", \"x\": 3}\n");
  auto t = parse_task_yaml_text(
      "task: t\ndataset_path: all.jsonl\nsplit_field: s\nfewshot_split: train\ndoc_to_text: "
      "'{{x}}'\n"
      "doc_to_target: '{{x}}'\noutput_type: generate_until\n",
      "t.yaml", d.path.string());
  EXPECT_EQ(load_docs(t, "test").size(), 2u);
  EXPECT_EQ(load_docs(t, "train").at(0).fields["x"], 1);
}

// ---- task YAML -------------------------------------------------------------

TEST(EvalTask, ParsesLmEvalKeysAndIncludes) {
  TempDir d;
  d.write("base.yaml",
          "dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: t.jsonl\noutput_type: "
          "multiple_choice\n"
          "doc_to_text: 'Q: {{q}}'\ndoc_to_choice: ['yes', 'no']\ndoc_to_target: '{{label}}'\n"
          "target_delimiter: ''\nfewshot_delimiter: \"\\n###\\n\"\n");
  const auto p = d.write(
      "t.yaml",
      "include: base.yaml\ntask: t\ngroup: fin\nnum_fewshot: 3\nmetric_list:\n  - metric: "
      "acc_norm\n"
      "generation_kwargs:\n  until: [\"\\n\"]\n  max_gen_toks: 7\nmetadata:\n  version: 2.0\n");
  const TaskConfig t = parse_task_yaml(p);
  EXPECT_EQ(t.task, "t");
  EXPECT_EQ(t.group, "fin");
  EXPECT_EQ(t.data_files.at("test"), (d.path / "t.jsonl").string());
  EXPECT_EQ(t.target_delimiter, "");
  EXPECT_EQ(t.fewshot_delimiter, "\n###\n");
  EXPECT_EQ(t.num_fewshot, 3);
  ASSERT_EQ(t.metrics.size(), 1u);
  EXPECT_EQ(t.metrics[0].name, "acc_norm");
  EXPECT_EQ(t.until, std::vector<std::string>{"\n"});
  EXPECT_EQ(t.max_gen_toks, 7);
  EXPECT_EQ(t.version, 2.0);
  EXPECT_EQ(t.doc_to_choice_list, (std::vector<std::string>{"yes", "no"}));
}

TEST(EvalTask, BadTaskFilesNameFileAndKey) {
  auto err = [](const std::string& y) {
    return message_of([&] { parse_task_yaml_text(y, "bad.yaml", "."); });
  };
  EXPECT_CONTAINS(err("task: t\ndataset_path: x.jsonl\ndoc_to_text: a\ndoc_to_target: b\n"),
                  "bad.yaml: output_type multiple_choice needs 'doc_to_choice'");
  EXPECT_CONTAINS(err("dataset_path: x.jsonl\n"), "bad.yaml: missing key 'task'");
  EXPECT_CONTAINS(err("task: t\ndoc_to_text: a\n"), "missing key 'dataset_path'");
  EXPECT_CONTAINS(err("task: t\ndataset_path: x\ndoc_to_txt: a\n"), "unknown key 'doc_to_txt'");
  EXPECT_CONTAINS(err("task: t\ndataset_path: x\noutput_type: generate_until\ndoc_to_text: "
                      "a\ndoc_to_target: b\n"
                      "metric_list:\n  - metric: acc\n"),
                  "metric 'acc' does not apply to output_type generate_until");
  EXPECT_CONTAINS(err("task: t\ndataset_path: x\noutput_type: generate\n"), "output_type must be");
  EXPECT_CONTAINS(err("task: t\ndataset_path: x\ndoc_to_text: !function utils.f\n"), "!function");
  EXPECT_CONTAINS(err("task: t\ndataset_path: x\nlayout: mmlu\n"), "unknown layout 'mmlu'");
  EXPECT_CONTAINS(message_of([] { resolve_tasks({"no_such_task"}, "."); }),
                  "built-in: finmoe_fin_mc");
}

TEST(EvalTask, BuiltinGroupsResolveAgainstTheDataDir) {
  const auto fin = resolve_tasks({"finmoe_fin"}, "/data");
  std::vector<std::string> names;
  for (const auto& t : fin) names.push_back(t.task);
  EXPECT_EQ(names, (std::vector<std::string>{"finmoe_fin_mc", "finmoe_fin_qa", "finmoe_fin_ppl"}));
  EXPECT_EQ(fin[0].data_files.at("test"), "/data/qa/test_mc.jsonl");
  EXPECT_EQ(fin[2].dataset_path, "/data/corpus/fin");
  EXPECT_EQ(resolve_tasks({"finmoe_general"}, "/d").size(), 2u);
}

// ---- prompts, requests and aggregation -----------------------------------------

namespace {

// Scores a continuation by a fixed table (else -10 - length), generates by a
// table; records the requests it was asked.
class ScriptedModel : public LanguageModel {
 public:
  std::map<std::string, double> ll;
  std::map<std::string, std::string> gen;
  std::vector<Request> seen_ll, seen_gen, seen_roll;
  std::string name() const override { return "scripted"; }
  std::vector<LlResult> loglikelihood(const std::vector<Request>& r,
                                      const std::function<void(int64_t)>& p) override {
    std::vector<LlResult> out;
    for (const auto& q : r) {
      seen_ll.push_back(q);
      const auto it = ll.find(q.continuation);
      out.push_back(
          {it != ll.end() ? it->second : -10.0 - double(q.continuation.size()), false, 1});
    }
    if (p) p(int64_t(r.size()));
    return out;
  }
  std::vector<LlResult> loglikelihood_rolling(const std::vector<Request>& r, int64_t,
                                              const std::function<void(int64_t)>&) override {
    std::vector<LlResult> out;
    for (const auto& q : r) {
      seen_roll.push_back(q);
      out.push_back(
          {-0.5 * double(q.continuation.size()), false, int64_t(q.continuation.size()) / 2});
    }
    return out;
  }
  std::vector<std::string> generate_until(const std::vector<Request>& r,
                                          const std::function<void(int64_t)>&) override {
    std::vector<std::string> out;
    for (const auto& q : r) {
      seen_gen.push_back(q);
      out.push_back(gen.count(q.context) ? gen.at(q.context) : "?");
    }
    return out;
  }
};

}  // namespace

TEST(EvalHarness, FewShotPromptsAndMultipleChoiceScoresAsLmEval) {
  TempDir d;
  d.write("mc.jsonl",
          "{\"q\": \"one\", \"c\": [\"x\", \"yy\"], \"a\": 0}\n"
          "{\"q\": \"two\", \"c\": [\"x\", \"yy\"], \"a\": \"yy\"}\n"
          "{\"q\": \"three\", \"c\": [\"x\", \"yy\"], \"a\": 1}\n");
  const auto t = parse_task_yaml_text(
      "task: mc\ngroup: g\ndataset_path: mc.jsonl\ndoc_to_text: 'Q: {{q}}'\ndoc_to_choice: "
      "'{{c}}'\n"
      "doc_to_target: '{{a}}'\nfewshot_config:\n  sampler: first_n\ndescription: \"Quiz.\\n\\n\"\n",
      "mc.yaml", d.path.string());
  ScriptedModel m;
  m.ll = {{" x", -2.0}, {" yy", -3.0}};  // acc picks x; acc_norm: -2/1 < -3/2 picks yy
  EvalOptions o;
  o.num_fewshot = 1;
  o.log_samples = true;
  const auto out = evaluate({t}, m, o);
  ASSERT_EQ(m.seen_ll.size(), 6u);
  // lm-eval: description + q_fs + target_delimiter + answer + fewshot_delimiter + q
  EXPECT_EQ(m.seen_ll[0].context, "Quiz.\n\nQ: two yy\n\nQ: one");
  EXPECT_EQ(m.seen_ll[0].continuation, " x");
  EXPECT_EQ(m.seen_ll[1].continuation, " yy");
  EXPECT_EQ(m.seen_ll[2].context, "Quiz.\n\nQ: one x\n\nQ: two");  // the document itself is skipped
  const json& r = out.results["results"]["mc"];
  EXPECT_DOUBLE_EQ(r["acc,none"].get<double>(), 1.0 / 3);
  EXPECT_DOUBLE_EQ(r["acc_norm,none"].get<double>(), 2.0 / 3);
  // sample stderr of the mean: sqrt(var/(n-1))/sqrt(n) of {1,0,0}
  EXPECT_NEAR(r["acc_stderr,none"].get<double>(), std::sqrt((2.0 / 3) / 2 / 3) * 1.0, 1e-12);
  EXPECT_EQ(out.results["n-shot"]["mc"], 1);
  EXPECT_EQ(out.results["n-samples"]["mc"]["original"], 3);
  EXPECT_EQ(out.results["group_subtasks"]["g"], json({"mc"}));
  for (const char* k : {"results", "groups", "configs", "versions", "n-shot", "higher_is_better",
                        "n-samples", "config"})
    EXPECT_TRUE(out.results.contains(k)) << k;
  ASSERT_EQ(out.tasks[0].samples.size(), 3u);
  EXPECT_EQ(out.tasks[0].samples[1]["target"], "yy");
  EXPECT_EQ(out.tasks[0].samples[1]["resps"][1][0], -3.0);
}

TEST(EvalHarness, ChatTemplateFewShotAsMultiTurn) {
  TempDir d;
  d.write("mc.jsonl", "{\"q\": \"one\", \"a\": 0}\n{\"q\": \"two\", \"a\": 1}\n");
  const auto t = parse_task_yaml_text(
      "task: mc\ndataset_path: mc.jsonl\ndoc_to_text: '{{q}}'\ndoc_to_choice: ['A', 'B']\n"
      "doc_to_target: '{{a}}'\nfewshot_config:\n  sampler: first_n\n",
      "mc.yaml", d.path.string());
  ScriptedModel m;
  EvalOptions o;
  o.num_fewshot = 1;
  o.limit = 1;
  o.chat.apply_chat_template = true;
  o.chat.system = "Be brief.";
  o.chat.render = [](const std::vector<std::pair<std::string, std::string>>& msgs) {
    std::string s;
    for (const auto& [role, content] : msgs) s += "<" + role + ">" + content + "</>";
    return s + "<assistant>";
  };
  evaluate({t}, m, o);
  ASSERT_EQ(m.seen_ll.size(), 2u);
  EXPECT_EQ(m.seen_ll[0].context,
            "<system>Be brief.</><user>two</><assistant>B</><user>one</><assistant>");
  EXPECT_EQ(m.seen_ll[0].continuation, "A");  // no target delimiter after a chat turn
  m.seen_ll.clear();
  o.chat.fewshot_as_multiturn = false;
  evaluate({t}, m, o);
  EXPECT_EQ(m.seen_ll[0].context, "<system>Be brief.</><user>two B\n\none</><assistant>");
}

TEST(EvalHarness, ChoicesWithoutTheAnswerAreAnErrorNamingTheLine) {
  TempDir d;
  d.write("mc.jsonl", "{\"q\": \"one\", \"a\": \"B\"}\n{\"q\": \"two\", \"a\": \"Z\"}\n");
  const auto t = parse_task_yaml_text(
      "task: mc\ndataset_path: mc.jsonl\ndoc_to_text: '{{q}}'\ndoc_to_choice: ['A', "
      "'B']\ndoc_to_target: a\n",
      "mc.yaml", d.path.string());
  ScriptedModel m;
  const auto msg = message_of([&] { evaluate({t}, m, {}); });
  EXPECT_CONTAINS(msg, "mc.jsonl:2): the choices do not contain the answer \"Z\"");
  EXPECT_TRUE(m.seen_ll.empty());  // nothing ran
  const auto t2 = parse_task_yaml_text(
      "task: mc\ndataset_path: mc.jsonl\ndoc_to_text: '{{question}}'\ndoc_to_choice: ['A', "
      "'B']\ndoc_to_target: a\n",
      "mc.yaml", d.path.string());
  EXPECT_CONTAINS(message_of([&] { evaluate({t2}, m, {}); }),
                  "task mc, doc_to_text (" + (d.path / "mc.jsonl").string() +
                      ":1): template {{question}}: field 'question'");
}

TEST(EvalHarness, GenerationRollingAndGroupAggregation) {
  TempDir d;
  d.write("g.jsonl", "{\"q\": \"2+2\", \"a\": \"4\"}\n{\"q\": \"3+3\", \"a\": \"6\"}\n");
  d.write("t.jsonl", "{\"text\": \"ab cd\"}\n{\"text\": \"efgh\"}\n");
  const auto gen = parse_task_yaml_text(
      "task: gen\ngroup: g\ndataset_path: g.jsonl\noutput_type: generate_until\ndoc_to_text: "
      "'{{q}}='\n"
      "doc_to_target: '{{a}}'\ngeneration_kwargs:\n  until: [';']\n  max_gen_toks: 5\n"
      "metric_list:\n  - metric: exact_match\n  - metric: numeric\n",
      "gen.yaml", d.path.string());
  const auto roll = parse_task_yaml_text(
      "task: roll\ngroup: g\ndataset_path: t.jsonl\noutput_type: "
      "loglikelihood_rolling\ndoc_to_target: '{{text}}'\n"
      "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n  - metric: "
      "token_perplexity\n",
      "roll.yaml", d.path.string());
  ScriptedModel m;
  m.gen = {{"2+2=", "4"}, {"3+3=", " 6.0"}};
  const auto out = evaluate({gen, roll}, m, {});
  ASSERT_EQ(m.seen_gen.size(), 2u);
  EXPECT_EQ(m.seen_gen[0].until, std::vector<std::string>{";"});
  EXPECT_EQ(m.seen_gen[0].max_gen_toks, 5);
  const json& r = out.results["results"];
  EXPECT_DOUBLE_EQ(r["gen"]["exact_match,none"].get<double>(), 0.5);
  EXPECT_DOUBLE_EQ(r["gen"]["numeric,none"].get<double>(), 1.0);
  // ll = -0.5 * bytes: docs of 5 and 4 bytes -> -4.5 over 3 words, 9 bytes, 4 tokens
  EXPECT_NEAR(r["roll"]["word_perplexity,none"].get<double>(), std::exp(4.5 / 3), 1e-12);
  EXPECT_NEAR(r["roll"]["bits_per_byte,none"].get<double>(), 4.5 / 9 / std::log(2.0), 1e-12);
  EXPECT_NEAR(r["roll"]["token_perplexity,none"].get<double>(), std::exp(4.5 / 4), 1e-12);
  EXPECT_EQ(r["roll"]["bits_per_byte_stderr,none"], "N/A");
  // the group averages each metric over the tasks reporting it, by size
  EXPECT_DOUBLE_EQ(out.results["groups"]["g"]["exact_match,none"].get<double>(), 0.5);
  const std::string md = markdown_report(out.results);
  EXPECT_CONTAINS(md, "### g");
  EXPECT_CONTAINS(md, "| gen | 0 | exact_match | ↑ | 0.5000 |");
  EXPECT_CONTAINS(md, "| roll | 0 | bits_per_byte | ↓ |");
}

TEST(EvalHarness, LimitIsACountOrAFraction) {
  TempDir d;
  std::string lines;
  for (int i = 0; i < 7; ++i) lines += "{\"t\": \"x" + std::to_string(i) + "\"}\n";
  d.write("t.jsonl", lines);
  const auto t = parse_task_yaml_text(
      "task: r\ndataset_path: t.jsonl\noutput_type: loglikelihood_rolling\ndoc_to_target: "
      "'{{t}}'\n",
      "r.yaml", d.path.string());
  for (const auto& [limit, n] :
       std::vector<std::pair<double, int>>{{3, 3}, {3.9, 3}, {0.5, 4}, {1e308, 7}, {7, 7}}) {
    ScriptedModel m;
    EvalOptions o;
    o.limit = limit;
    const auto out = evaluate({t}, m, o);
    EXPECT_EQ(m.seen_roll.size(), size_t(n)) << limit;
    EXPECT_EQ(out.results["n-samples"]["r"]["effective"], n);
    EXPECT_EQ(out.results["n-samples"]["r"]["original"], 7);
  }
}

// The built-in tasks over files in the layout `finmoe corpus qa` and
// `finmoe corpus fetch` write (finmoe/corpus.h).
TEST(EvalHarness, BuiltinTasksRunOnTheCorpusLayout) {
  TempDir d;
  fs::create_directories(d.path / "qa");
  for (const char* dom : {"fin", "general", "zh"}) fs::create_directories(d.path / "corpus" / dom);
  d.write("qa/test_mc.jsonl",
          "{\"answer\":1,\"choices\":[\"Section 9-105.\",\"Section 1-103.\"],\"lang\":\"en\","
          "\"question\":\"Which section covers X?\",\"source\":\"ucc-section\"}\n"
          "{\"answer\":0,\"choices\":[\"Y.\",\"Z.\"],\"lang\":\"en\",\"question\":\"Which topic is "
          "Y?\","
          "\"source\":\"ucc-topic\"}\n");
  const std::string qa =
      "{\"messages\":[{\"content\":\"What is NPV?\",\"role\":\"user\"},"
      "{\"content\":\"Net present value.\",\"role\":\"assistant\"}]}\n";
  d.write("qa/test.jsonl", qa);
  d.write("qa/train.jsonl", qa);
  d.write("corpus/fin/test.jsonl", "{\"text\":\"A journal records transactions.\"}\n");
  d.write("corpus/general/test.jsonl", "{\"text\":\"Debian is an operating system.\"}\n");
  d.write("corpus/zh/test.jsonl", "{\"text\":\"复式记账\"}\n");
  ScriptedModel m;
  m.gen = {{"Question: What is NPV?\nAnswer: Net present value.\n\nQuestion: What is NPV?\nAnswer:",
            " net present value"}};
  EvalOptions o;
  o.num_fewshot = 1;
  const auto out = evaluate(resolve_tasks({"finmoe_fin", "finmoe_general"}, d.path.string()), m, o);
  ASSERT_EQ(m.seen_ll.size(), 4u);
  EXPECT_EQ(
      m.seen_ll[0].context,
      "Question: Which topic is Y?\nAnswer: Y.\n\nQuestion: Which section covers X?\nAnswer:");
  EXPECT_EQ(m.seen_ll[1].continuation, " Section 1-103.");
  EXPECT_EQ(m.seen_roll.size(), 3u);
  const json& r = out.results["results"];
  EXPECT_DOUBLE_EQ(r["finmoe_fin_qa"]["exact_match,none"].get<double>(),
                   1.0);  // case and punctuation ignored
  EXPECT_TRUE(r["finmoe_fin_ppl"].contains("bits_per_byte,none"));
  EXPECT_TRUE(out.results["groups"].contains("finmoe_general"));
}

TEST(EvalReport, CompareShowsDeltasAndWhichIsBetter) {
  json a = {{"results",
             {{"t", {{"acc,none", 0.5}, {"acc_stderr,none", 0.1}, {"bits_per_byte,none", 2.0}}}}},
            {"higher_is_better", {{"t", {{"acc", true}, {"bits_per_byte", false}}}}}};
  json b = a;
  b["results"]["t"]["acc,none"] = 0.75;
  b["results"]["t"]["bits_per_byte,none"] = 2.5;
  b["results"]["u"] = {{"acc,none", 0.1}};
  const std::string md = compare_report(a, b, "base", "tuned");
  EXPECT_CONTAINS(md, "| t | acc | 0.5000 | 0.7500 | +0.2500 | B better |");
  EXPECT_CONTAINS(md, "| t | bits_per_byte | 2.0000 | 2.5000 | +0.5000 | A better |");
  EXPECT_CONTAINS(md, "| u | acc |  | 0.1000 |  |  |");
  EXPECT_EQ(md.find("stderr"), std::string::npos);
  EXPECT_CONTAINS(message_of([&] { compare_report(json::object(), b, "x.json", "y"); }),
                  "x.json: not an evaluation result");
}

TEST(EvalReport, WritesResultFilesAtomically) {
  TempDir d;
  EvalOutput out;
  out.results = {{"results", {{"t", {{"alias", "t"}, {"acc,none", 1.0}}}}}};
  out.tasks.push_back({"t", json::array({{{"doc_id", 0}}})});
  const auto files = write_outputs(out, (d.path / "o").string());
  EXPECT_EQ(files.size(), 3u);
  EXPECT_EQ(
      finmoe::read_json_file((d.path / "o" / "results.json").string())["results"]["t"]["acc,none"],
      1.0);
  for (const auto& e : fs::directory_iterator(d.path / "o"))
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos);
}

// ---- filter_list and process_docs ------------------------------------------------

namespace {

const char* kGenTask =
    "task: gen\ngroup: g\ndataset_path: g.jsonl\noutput_type: generate_until\n"
    "doc_to_text: '{{q}}='\ndoc_to_target: '{{a}}'\n";

}  // namespace

TEST(EvalFilters, BadPipelinesAreErrorsNamingFileFilterAndStep) {
  auto err = [](const std::string& extra) {
    return message_of([&] { parse_task_yaml_text(kGenTask + extra, "f.yaml", "."); });
  };
  EXPECT_CONTAINS(err("filter_list:\n  - name: x\n    filter:\n      - function: regexp\n"),
                  "f.yaml: filter_list 'x', step 1 (regexp): unknown filter function 'regexp' "
                  "(known: regex,");
  EXPECT_CONTAINS(err("filter_list:\n  - name: x\n    filter:\n      - function: regex\n"),
                  "filter_list 'x': the pipeline must end with take_first");
  EXPECT_CONTAINS(err("filter_list:\n  - name: v\n    filter:\n      - function: majority_vote\n"
                      "      - function: take_first\n"),
                  "step 1 (majority_vote): votes over the 'repeats' responses of a document; "
                  "the task has repeats: 1");
  EXPECT_CONTAINS(err("repeats: 2\nfilter_list:\n  - name: k\n    filter:\n"
                      "      - function: take_first_k\n        k: 3\n"
                      "      - function: take_first\n"),
                  "k = 3 but there are 2 responses per document");
  EXPECT_CONTAINS(err("filter_list:\n  - name: x\n    filter:\n      - function: take_first\n"
                      "      - function: lowercase\n"),
                  "step 2 (lowercase): comes after take_first");
  EXPECT_CONTAINS(err("filter_list:\n  - name: x\n    filter:\n      - function: regex\n"
                      "        regex_patern: a\n      - function: take_first\n"),
                  "step 1 (regex): unknown option 'regex_patern'");
  EXPECT_CONTAINS(err("filter_list:\n  - name: x\n    filter:\n      - function: regex\n"
                      "        regex_pattern: '(a'\n      - function: take_first\n"),
                  "pattern '(a' is not a valid regular expression");
  EXPECT_CONTAINS(err("filter_list:\n  - name: a\n    filter: [{function: take_first}]\n"
                      "  - name: a\n    filter: [{function: take_first}]\n"),
                  "filter_list name 'a' is given twice");
  EXPECT_CONTAINS(message_of([] {
                    parse_task_yaml_text(
                        "task: mc\ndataset_path: x.jsonl\ndoc_to_text: q\ndoc_to_choice: [a, "
                        "b]\ndoc_to_target: 0\nfilter_list:\n  - name: x\n    filter: "
                        "[{function: take_first}]\n",
                        "mc.yaml", ".");
                  }),
                  "mc.yaml: 'filter_list' applies to output_type generate_until only");
}

TEST(EvalFilters, GroupSelectBeyondTheMatchesAndAnUnmappedValueAreErrors) {
  // lm-eval stops with an IndexError / scores None here; finmoe names the step
  const ResponseFilter pick({"p",
                             {{"regex", {{"regex_pattern", "[0-9]"}, {"group_select", 2}}},
                              {"take_first", json::object()}}},
                            1, "t.yaml");
  EXPECT_EQ(pick.apply({"1 2 3"}), "3");
  EXPECT_CONTAINS(message_of([&] { pick.apply({"1 2"}); }),
                  "t.yaml: filter_list 'p', step 1 (regex): group_select 2 but the response has "
                  "2 match(es)");
  const ResponseFilter map(
      {"m", {{"map", {{"mapping_dict", {{"A", "0"}}}}}, {"take_first", json::object()}}}, 1,
      "t.yaml");
  EXPECT_EQ(map.apply({"A"}), "0");
  EXPECT_CONTAINS(message_of([&] { map.apply({"B"}); }),
                  "step 1 (map): no mapping for \"B\" and no 'default_value'");
}

TEST(EvalFilters, EachPipelineScoresUnderItsOwnMetricKey) {
  TempDir d;
  d.write("g.jsonl", "{\"q\": \"2+2\", \"a\": \"4\"}\n{\"q\": \"3+3\", \"a\": \"6\"}\n");
  const auto t = parse_task_yaml_text(
      std::string(kGenTask) +
          "filter_list:\n"
          "  - name: strict-match\n    filter:\n      - function: regex\n"
          "        regex_pattern: 'is (\\d+)\\.'\n      - function: take_first\n"
          "  - name: flexible-extract\n    filter:\n      - function: regex\n"
          "        regex_pattern: '(\\d+)'\n        group_select: -1\n"
          "      - function: take_first\n",
      "gen.yaml", d.path.string());
  ScriptedModel m;
  // strict: "4" from "is 4." / "[invalid]"; flexible: the last number, right in both
  m.gen = {{"2+2=", "it is 4. so 4"}, {"3+3=", "maybe 5, no: 6"}};
  EvalOptions o;
  o.log_samples = true;
  const auto out = evaluate({t}, m, o);
  EXPECT_EQ(m.seen_gen.size(), 2u);  // one generation per document, however many pipelines
  const json& r = out.results["results"]["gen"];
  EXPECT_DOUBLE_EQ(r["exact_match,strict-match"].get<double>(), 0.5);
  EXPECT_DOUBLE_EQ(r["exact_match,flexible-extract"].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(r["exact_match_stderr,flexible-extract"].get<double>(), 0.0);
  EXPECT_NEAR(r["exact_match_stderr,strict-match"].get<double>(), 0.5, 1e-12);  // sd 0.707 / √2
  EXPECT_FALSE(r.contains("exact_match,none"));
  EXPECT_DOUBLE_EQ(out.results["groups"]["g"]["exact_match,flexible-extract"].get<double>(), 1.0);
  // samples: one per (filter, document), filter by filter, as lm-eval logs them
  const json& s = out.tasks[0].samples;
  ASSERT_EQ(s.size(), 4u);
  EXPECT_EQ(s[0]["filter"], "strict-match");
  EXPECT_EQ(s[1]["filter"], "strict-match");
  EXPECT_EQ(s[1]["filtered_resps"], json::array({"[invalid]"}));
  EXPECT_EQ(s[2]["filter"], "flexible-extract");
  EXPECT_EQ(s[2]["filtered_resps"], json::array({"4"}));
  EXPECT_EQ(s[3]["resps"], json::array({json::array({"maybe 5, no: 6"})}));
  EXPECT_EQ(s[3]["exact_match"], 1.0);
  const std::string md = markdown_report(out.results);
  EXPECT_CONTAINS(md, "| gen | 0 | exact_match,strict-match | ↑ | 0.5000 | 0.5000 |");
  EXPECT_CONTAINS(md, "| **g** (mean) | | exact_match,flexible-extract | | 1.0000 | |");
}

TEST(EvalFilters, RepeatsFeedMajorityVote) {
  TempDir d;
  d.write("g.jsonl", "{\"q\": \"2+2\", \"a\": \"4\"}\n");
  const auto t =
      parse_task_yaml_text(std::string(kGenTask) +
                               "repeats: 3\nfilter_list:\n  - name: maj\n    filter:\n"
                               "      - function: regex\n        regex_pattern: '\\d'\n"
                               "      - function: majority_vote\n      - function: take_first\n",
                           "gen.yaml", d.path.string());
  ScriptedModel m;
  m.gen = {{"2+2=", "4 or 5"}};
  EvalOptions o;
  o.log_samples = true;
  const auto out = evaluate({t}, m, o);
  EXPECT_EQ(m.seen_gen.size(), 1u);  // greedy: one generation stands for the three
  EXPECT_EQ(out.tasks[0].samples[0]["resps"][0], json::array({"4 or 5", "4 or 5", "4 or 5"}));
  EXPECT_DOUBLE_EQ(out.results["results"]["gen"]["exact_match,maj"].get<double>(), 1.0);
}

TEST(EvalProcessDocs, StepsDeriveRenameDropKeepReplaceAndStrip) {
  TempDir d;
  d.write("h.jsonl",
          "{\"ctx_a\": \"Pay  the [title] bill\", \"ctx_b\": \"on time\", \"label\": \"1\", "
          "\"endings\": [\" early [x]\", \"late \"], \"split\": \"keep\", \"junk\": 1}\n"
          "{\"ctx_a\": \"Skip\", \"ctx_b\": \"me\", \"label\": \"0\", \"endings\": [\"a\", "
          "\"b\"], \"split\": \"other\", \"junk\": 2}\n");
  const auto t = parse_task_yaml_text(
      "task: h\ndataset_path: h.jsonl\ndoc_to_text: '{{query}}'\ndoc_to_choice: '{{choices}}'\n"
      "doc_to_target: '{{gold | int}}'\n"
      "process_docs:\n"
      "  - keep: {field: split, in: [keep, also]}\n"
      "  - set: {query: '{{ctx_a}} {{ctx_b | upper}}'}\n"
      "  - rename: {endings: choices, label: gold}\n"
      "  - replace: {field: [query, choices], pattern: ' ?\\[[^\\]]*\\]', with: ''}\n"
      "  - replace: {field: query, pattern: '  +', with: ' '}\n"
      "  - strip: choices\n"
      "  - drop: [junk, ctx_a, ctx_b, split]\n",
      "h.yaml", d.path.string());
  const auto docs = load_docs(t, "test");
  ASSERT_EQ(docs.size(), 1u);  // the second document fails `keep`
  EXPECT_EQ(docs[0].fields, json::parse(R"({"query": "Pay the bill ON TIME", "gold": "1",
                                             "choices": ["early", "late"]})"));
  EXPECT_CONTAINS(docs[0].where, "h.jsonl:1");
  // the processed documents are what the task scores
  ScriptedModel m;
  m.ll = {{" late", -1.0}, {" early", -2.0}};
  const auto out = evaluate({t}, m, {});
  EXPECT_EQ(m.seen_ll[0].context, "Pay the bill ON TIME");
  EXPECT_DOUBLE_EQ(out.results["results"]["h"]["acc,none"].get<double>(), 1.0);
}

TEST(EvalProcessDocs, KeepConditions) {
  TempDir d;
  d.write("k.jsonl",
          "{\"n\": 1, \"s\": \"abc\"}\n{\"n\": 2, \"s\": \"xbz\"}\n"
          "{\"n\": 3, \"s\": \"ABD\"}\n");
  auto kept = [&](const std::string& cond) {
    const auto t = parse_task_yaml_text(
        "task: k\ndataset_path: k.jsonl\ndoc_to_text: '{{s}}'\ndoc_to_choice: [a]\n"
        "doc_to_target: 0\nprocess_docs:\n  - keep: " +
            cond + "\n",
        "k.yaml", d.path.string());
    std::vector<int64_t> ns;
    for (const auto& doc : load_docs(t, "test")) ns.push_back(doc.fields["n"].get<int64_t>());
    return ns;
  };
  EXPECT_EQ(kept("{field: n, equals: 2}"), (std::vector<int64_t>{2}));
  EXPECT_EQ(kept("{field: n, not_equals: '2'}"), (std::vector<int64_t>{1, 3}));
  EXPECT_EQ(kept("{field: s, not_in: [abc, ABD]}"), (std::vector<int64_t>{2}));
  EXPECT_EQ(kept("{field: s, matches: '(?i)^ab'}"), (std::vector<int64_t>{1, 3}));
}

TEST(EvalProcessDocs, BadStepsAndPythonFunctionsAreClearErrors) {
  auto err = [](const std::string& y) {
    return message_of([&] {
      parse_task_yaml_text(
          "task: t\ndataset_path: x.jsonl\ndoc_to_text: a\ndoc_to_choice: "
          "[a]\ndoc_to_target: 0\n" +
              y,
          "p.yaml", ".");
    });
  };
  EXPECT_CONTAINS(err("process_docs: !function utils.process_docs\n"),
                  "p.yaml: 'process_docs: !function utils.process_docs' is a Python function, "
                  "which finmoe does not run; write process_docs as a list of steps");
  EXPECT_CONTAINS(
      err("process_docs:\n  - derive: {a: b}\n"),
      "p.yaml: process_docs, step 1 (derive): unknown step 'derive' (set, rename, drop, keep, "
      "replace, strip)");
  EXPECT_CONTAINS(err("process_docs:\n  - keep: {field: a, like: b}\n"),
                  "process_docs, step 1 (keep): unknown condition 'like'");
  EXPECT_CONTAINS(err("process_docs:\n  - set: {a: b}\n    drop: c\n"),
                  "step 1: a step is a mapping with one key");
  TempDir d;
  d.write("x.jsonl", "{\"a\": \"1\"}\n");
  const auto t = parse_task_yaml_text(
      "task: t\ndataset_path: x.jsonl\ndoc_to_text: a\ndoc_to_choice: [a]\ndoc_to_target: 0\n"
      "process_docs:\n  - rename: {b: c}\n",
      "p.yaml", d.path.string());
  EXPECT_CONTAINS(message_of([&] { load_docs(t, "test"); }),
                  "task t, process_docs, step 1 (rename) (" + (d.path / "x.jsonl").string() +
                      ":1): the document has no field 'b'");
}

// A task in the shape of lm-eval's gsm8k YAML (its metric options with the
// Python-only "(?s)" regex, generation_kwargs, repeats, both filter
// pipelines), pointed at a local directory: it runs as written.
TEST(EvalFilters, AGsm8kShapedTaskRunsAsWritten) {
  TempDir d;
  fs::create_directories(d.path / "gsm" / "main");
  const std::string train = "{\"question\": \"1+1?\", \"answer\": \"Add.\\n#### 2\"}\n";
  std::string tr;
  for (int i = 0; i < 5; ++i) tr += train;
  d.write("gsm/main/train.jsonl", tr);
  d.write("gsm/main/test.jsonl",
          "{\"question\": \"9+9?\", \"answer\": \"Sum.\\n#### 18\"}\n"
          "{\"question\": \"2*3?\", \"answer\": \"Times.\\n#### 6\"}\n"
          "{\"question\": \"600*2?\", \"answer\": \"So $1,200.\\n#### 1200\"}\n");
  const auto t = parse_task_yaml_text(
      R"yaml(tag:
  - math_word_problems
task: gsm8k
dataset_path: gsm
dataset_name: main
output_type: generate_until
training_split: train
fewshot_split: train
test_split: test
doc_to_text: "Question: {{question}}\nAnswer:"
doc_to_target: "{{answer}}"
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: false
    regexes_to_ignore:
      - ","
      - "\\$"
      - "(?s).*#### "
      - "\\.$"
generation_kwargs:
  until:
    - "Question:"
  do_sample: false
  temperature: 0.0
repeats: 1
num_fewshot: 5
filter_list:
  - name: "strict-match"
    filter:
      - function: "regex"
        regex_pattern: "#### (\\-?[0-9\\.\\,]+)"
      - function: "take_first"
  - name: "flexible-extract"
    filter:
      - function: "regex"
        group_select: -1
        regex_pattern: "(-?[$0-9.,]{2,})|(-?[0-9]+)"
      - function: "take_first"
metadata:
  version: 3.0
)yaml",
      "gsm8k.yaml", d.path.string());
  const std::string shots = [&] {
    std::string s;
    for (int i = 0; i < 5; ++i) s += "Question: 1+1?\nAnswer: Add.\n#### 2\n\n";
    return s;
  }();
  ScriptedModel m;
  m.gen = {{shots + "Question: 9+9?\nAnswer:", " Nine and nine.\n#### 18"},
           {shots + "Question: 2*3?\nAnswer:", " I think 5."},
           {shots + "Question: 600*2?\nAnswer:", " It is $1,200."}};
  EvalOptions o;
  o.log_samples = true;
  const auto out = evaluate({t}, m, o);
  ASSERT_EQ(m.seen_gen.size(), 3u);
  EXPECT_EQ(m.seen_gen[0].context, shots + "Question: 9+9?\nAnswer:");
  // the target loses everything up to "#### " (dot matching newlines), commas, "$" and a final
  // "."; strict: "18" / "[invalid]" / "[invalid]"; flexible (the last number): "18" / "5." /
  // "$1,200." -> "1200"
  const json& r = out.results["results"]["gsm8k"];
  EXPECT_NEAR(r["exact_match,strict-match"].get<double>(), 1.0 / 3, 1e-12);
  EXPECT_NEAR(r["exact_match,flexible-extract"].get<double>(), 2.0 / 3, 1e-12);
  EXPECT_EQ(out.tasks[0].samples[4]["filtered_resps"], json::array({"5."}));
}
