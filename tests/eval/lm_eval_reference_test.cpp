// The evaluation harness on a real (tiny random) model, against
// lm-evaluation-harness's own output: tests/data/eval/ref/reference.json was
// written by tests/ref/make_lm_eval_reference.py with lm_eval's HF backend on
// the same model, tokenizer, task files and shots.
#include <cmath>
#include <cstdlib>
#include <filesystem>

#include <unistd.h>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "finmoe/config.h"
#include "finmoe/eval.h"
#include "finmoe/eval_model.h"
#include "finmoe/model.h"
#include "finmoe/tokenizer.h"

using nlohmann::json;
using namespace finmoe;
using namespace finmoe::eval;

namespace {

const std::string kRef = std::string(FINMOE_TEST_DATA_DIR) + "/eval/ref";

struct RefModel {
  Transformer model = load_model(kRef + "/model", {.dtype = torch::kFloat32});
  Tokenizer tok = Tokenizer::from_dir(kRef + "/model");
};

RefModel& ref_model() {
  static RefModel m;
  return m;
}

const json& reference() {
  static const json r = read_json_file(kRef + "/reference.json");
  return r;
}

EvalOutput run_ref_tasks(const LocalModelOptions& lo, std::vector<std::string> names = {},
                         const ChatOptions& chat = {}) {
  if (names.empty()) names = {"ref_mc", "ref_mc_random", "ref_ppl", "ref_gen"};
  std::vector<TaskConfig> tasks;
  for (const auto& t : names) tasks.push_back(parse_task_yaml(kRef + "/" + t + ".yaml"));
  auto lm = make_local_model(ref_model().model, ref_model().tok, lo);
  EvalOptions o;
  o.log_samples = true;
  o.chat = chat;
  return evaluate(tasks, *lm, o);
}

// Prompts byte for byte, per-choice log-likelihoods within 1e-4, greedy
// flags, acc and acc_norm per document and in total.
void expect_multiple_choice_matches(const EvalOutput& out, const std::string& task,
                                    const std::string& ref_task) {
  SCOPED_TRACE(ref_task);
  const json& ref = reference()["tasks"][ref_task];
  const json* mine_p = nullptr;
  for (const auto& t : out.tasks)
    if (t.task == task) mine_p = &t.samples;
  ASSERT_NE(mine_p, nullptr);
  const json& mine = *mine_p;
  ASSERT_EQ(mine.size(), ref["samples"].size());
  double max_diff = 0;
  for (size_t i = 0; i < mine.size(); ++i) {
    const json& r = ref["samples"][i];
    const json& m = mine[i];
    ASSERT_EQ(m["doc_id"], r["doc_id"]);
    ASSERT_EQ(m["arguments"].size(), r["arguments"].size());
    for (size_t c = 0; c < r["arguments"].size(); ++c) {
      EXPECT_EQ(m["arguments"][c]["arg_0"], r["arguments"][c][0]) << "doc " << i;
      EXPECT_EQ(m["arguments"][c]["arg_1"], r["arguments"][c][1]) << "doc " << i;
      const double ll_ref = r["resps"][c][0][0].get<double>();
      const double ll = m["resps"][c][0].get<double>();
      EXPECT_NEAR(ll, ll_ref, 1e-4) << "doc " << i << " choice " << c;
      max_diff = std::max(max_diff, std::fabs(ll - ll_ref));
      EXPECT_EQ(m["resps"][c][1].get<bool>(), r["resps"][c][0][1].get<bool>());
    }
    EXPECT_EQ(m["acc"].get<double>(), r["metrics"]["acc"].get<double>()) << "doc " << i;
    EXPECT_EQ(m["acc_norm"].get<double>(), r["metrics"]["acc_norm"].get<double>()) << "doc " << i;
  }
  std::printf("%s: max |ll - lm_eval ll| = %.3g\n", ref_task.c_str(), max_diff);
  const json& res = out.results["results"][task];
  EXPECT_EQ(res["acc,none"].get<double>(), ref["results"]["acc,none"].get<double>());
  EXPECT_EQ(res["acc_norm,none"].get<double>(), ref["results"]["acc_norm,none"].get<double>());
  EXPECT_NEAR(res["acc_stderr,none"].get<double>(), ref["results"]["acc_stderr,none"].get<double>(),
              1e-12);
  EXPECT_EQ(out.results["n-shot"][task], ref["n-shot"]);
}

const json& samples_of(const EvalOutput& out, const std::string& task) {
  for (const auto& t : out.tasks)
    if (t.task == task) return t.samples;
  throw std::runtime_error("no task " + task);
}

}  // namespace

TEST(EvalLmEvalReference, MultipleChoicePromptsLoglikelihoodsAndAccuracyMatch) {
  for (int64_t batch : {1, 16}) {
    SCOPED_TRACE("batch_size " + std::to_string(batch));
    const auto out = run_ref_tasks({.batch_size = batch, .block_size = 8});
    expect_multiple_choice_matches(out, "ref_mc", "ref_mc");
    // lm-eval's default sampler: the same few-shot examples per document
    expect_multiple_choice_matches(out, "ref_mc_random", "ref_mc_random");
  }
}

TEST(EvalLmEvalReference, ChatTemplateSystemAndMultiTurnFewShotMatch) {
  ChatOptions chat;
  chat.apply_chat_template = true;
  chat.system = reference()["chat_system"].get<std::string>();
  const Tokenizer* tok = &ref_model().tok;
  chat.render = [tok](const std::vector<std::pair<std::string, std::string>>& msgs) {
    std::vector<ChatMessage> m;
    for (const auto& [role, content] : msgs) m.push_back({role, content});
    return render_chat(*tok, m, true);
  };
  const auto out = run_ref_tasks({.batch_size = 16}, {"ref_mc"}, chat);
  expect_multiple_choice_matches(out, "ref_mc", "ref_mc_chat");
}

TEST(EvalLmEvalReference, RollingPerplexityMatches) {
  const auto out = run_ref_tasks({.batch_size = 4, .block_size = 16});
  const json& ref = reference()["tasks"]["ref_ppl"];
  const json& mine = samples_of(out, "ref_ppl");
  ASSERT_EQ(mine.size(), ref["samples"].size());
  for (size_t i = 0; i < mine.size(); ++i) {
    const double ll_ref = ref["samples"][i]["resps"][0][0].get<double>();
    // a sum over up to ~250 float32 token log-probabilities
    EXPECT_NEAR(mine[i]["resps"][0][0].get<double>(), ll_ref, 1e-6 * std::fabs(ll_ref) + 1e-4)
        << "doc " << i;
    EXPECT_EQ(mine[i]["word_perplexity"][1], ref["samples"][i]["metrics"]["word_perplexity"][1]);
    EXPECT_EQ(mine[i]["bits_per_byte"][1], ref["samples"][i]["metrics"]["bits_per_byte"][1]);
  }
  for (const char* m : {"word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"}) {
    const double r = ref["results"][m].get<double>();
    EXPECT_NEAR(out.results["results"]["ref_ppl"][m].get<double>(), r, 1e-5 * std::fabs(r)) << m;
  }
}

TEST(EvalLmEvalReference, GreedyGenerationsMatch) {
  const auto out = run_ref_tasks({.batch_size = 16});
  const json& ref = reference()["tasks"]["ref_gen"];
  const json& mine = samples_of(out, "ref_gen");
  ASSERT_EQ(mine.size(), ref["samples"].size());
  for (size_t i = 0; i < mine.size(); ++i) {
    EXPECT_EQ(mine[i]["arguments"][0]["arg_0"], ref["samples"][i]["arguments"][0][0]);
    EXPECT_EQ(mine[i]["resps"][0][0], ref["samples"][i]["resps"][0][0]) << "doc " << i;
  }
  EXPECT_EQ(out.results["results"]["ref_gen"]["exact_match,none"].get<double>(),
            ref["results"]["exact_match,none"].get<double>());
}

// ref_gen's generations, three repeats, through five filter pipelines
// (lm-eval's default GSM8K regex, its flexible-extract, an inline flag and
// named group with uppercase, regex + map + majority_vote, whitespace +
// lowercase + take_first_k + majority_vote): per (filter, document) the same
// answer and exact match as lm-eval, and the same "exact_match,NAME" rows.
TEST(EvalLmEvalReference, FilterPipelinesMatchPerSample) {
  const auto out = run_ref_tasks({.batch_size = 16}, {"ref_gen_filters"});
  const json& ref = reference()["tasks"]["ref_gen_filters"];
  const json& mine = samples_of(out, "ref_gen_filters");
  ASSERT_EQ(mine.size(), ref["samples"].size());
  ASSERT_EQ(mine.size(), 50u);
  for (size_t i = 0; i < mine.size(); ++i) {
    const json& r = ref["samples"][i];
    SCOPED_TRACE(r["filter"].get<std::string>() + " doc " + std::to_string(i % 10));
    EXPECT_EQ(mine[i]["filter"], r["filter"]);
    EXPECT_EQ(mine[i]["doc_id"], r["doc_id"]);
    EXPECT_EQ(mine[i]["resps"][0], r["resps"][0]);
    EXPECT_EQ(mine[i]["filtered_resps"], r["filtered_resps"]);
    EXPECT_EQ(mine[i]["exact_match"], r["metrics"]["exact_match"]);
  }
  const json& rr = ref["results"];
  const json& mr = out.results["results"]["ref_gen_filters"];
  int n_keys = 0;
  for (auto it = rr.begin(); it != rr.end(); ++it) {
    if (it.key().rfind("exact_match", 0) != 0) continue;
    ++n_keys;
    ASSERT_TRUE(mr.contains(it.key())) << it.key();
    EXPECT_NEAR(mr[it.key()].get<double>(), it.value().get<double>(), 1e-12) << it.key();
  }
  EXPECT_EQ(n_keys, 10);
  EXPECT_GT(rr["exact_match,has-digit"].get<double>(), 0.0);  // not all zeros
}

// Each filter step against lm-eval's own filter classes on hand-written
// responses (filters.json, made by the same script).
TEST(EvalLmEvalReference, FilterStepsMatchLmEvalFilters) {
  const json cases = read_json_file(kRef + "/filters.json");
  ASSERT_GE(cases.size(), 9u);
  for (const auto& c : cases) {
    SCOPED_TRACE(c["name"].get<std::string>());
    FilterPipeline p;
    p.name = c["name"].get<std::string>();
    int64_t repeats = 0;
    for (const auto& r : c["responses"]) repeats = std::max<int64_t>(repeats, int64_t(r.size()));
    for (const auto& st : c["filter"]) {
      json o = st;
      o.erase("function");
      p.steps.push_back({st["function"].get<std::string>(), o});
    }
    const ResponseFilter f(p, repeats, "filters.json");
    ASSERT_EQ(c["responses"].size(), c["answers"].size());
    for (size_t i = 0; i < c["responses"].size(); ++i)
      EXPECT_EQ(f.apply(c["responses"][i].get<std::vector<std::string>>()),
                c["answers"][i].get<std::string>())
          << "document " << i;
  }
}

namespace {

// log P(continuation | context) and greedy-ness from one plain forward pass
// over lm-eval's tokens for the request (context tokens + what encoding
// context + continuation adds), truncated on the left to max_len.
std::pair<double, bool> forward_loglikelihood(RefModel& rm, const Request& r, int64_t max_len,
                                              int64_t* n_cont_out) {
  std::vector<int32_t> ctx, whole;
  if (r.context.empty()) {
    ctx = {*rm.tok.eos_id()};
    whole = ctx;
    const auto c = rm.tok.encode(r.continuation);
    whole.insert(whole.end(), c.begin(), c.end());
  } else {
    ctx = rm.tok.encode(r.context);
    whole = rm.tok.encode(r.context + r.continuation);
  }
  const int64_t n_cont = int64_t(whole.size() - ctx.size());
  std::vector<int64_t> inp(whole.begin(), whole.end() - 1);
  if (int64_t(inp.size()) > max_len) inp.erase(inp.begin(), inp.end() - max_len);
  torch::NoGradGuard ng;
  auto logits = rm.model.forward(torch::tensor(inp).unsqueeze(0));  // [1,T,V]
  auto lp = torch::log_softmax(logits[0], -1);                      // [T,V]
  double want = 0;
  bool greedy = true;
  const int64_t T = int64_t(inp.size());
  for (int64_t k = 0; k < n_cont; ++k) {
    const int64_t row = T - n_cont + k;
    const int32_t target = whole[whole.size() - size_t(n_cont) + size_t(k)];
    want += lp[row][target].item<double>();
    greedy = greedy && lp[row].argmax().item<int64_t>() == target;
  }
  *n_cont_out = n_cont;
  return {want, greedy};
}

// Returns the tokens the forward steps computed for the first call.
int64_t expect_equals_forward(const std::vector<Request>& reqs, LocalModelOptions lo,
                              int64_t max_len) {
  auto& rm = ref_model();
  int64_t computed = 0;
  lo.computed_tokens = &computed;
  auto lm = make_local_model(rm.model, rm.tok, lo);
  const auto got = lm->loglikelihood(reqs, {});
  const int64_t first_call = computed;
  const auto again = lm->loglikelihood(reqs, {});  // a second call on the same cache
  for (size_t i = 0; i < reqs.size(); ++i) {
    int64_t n_cont = 0;
    const auto [want, greedy] = forward_loglikelihood(rm, reqs[i], max_len, &n_cont);
    EXPECT_NEAR(got[i].logprob, want, 1e-4) << "request " << i;
    EXPECT_EQ(got[i].is_greedy, greedy) << "request " << i;
    EXPECT_EQ(got[i].tokens, n_cont);
    EXPECT_NEAR(again[i].logprob, want, 1e-4) << "request " << i << " (second call)";
  }
  return first_call;
}

}  // namespace

// Context sharing through the paged cache (whole blocks of a shared context
// computed once, a few-shot prefix kept in the cache from one batch to the
// next) and left truncation give what one plain forward pass over each
// request's tokens gives.
TEST(EvalLocalModel, SharedContextScoringEqualsAPlainForwardPass) {
  const std::string long_ctx =
      "Question: The ratio of net income to equity is the return on what, and how does a ledger "
      "record the debit and credit of each transaction in the journal?\nAnswer:";
  const std::vector<Request> reqs = {{long_ctx, " equity", {}, 0},
                                     {long_ctx, " assets", {}, 0},
                                     {long_ctx, " investment capital", {}, 0},
                                     {"NPV", " value", {}, 0},
                                     {"", "Short line.", {}, 0},
                                     {long_ctx + long_ctx, " equity", {}, 0}};
  // 40 tokens: the long contexts lose tokens on the left
  expect_equals_forward(reqs, {.batch_size = 3, .max_length = 40, .block_size = 4}, 40);

  // a few-shot prefix common to every document, batches of two documents
  const std::string shots =
      "Question: What is the currency of Japan?\nAnswer: yen\n\n"
      "Question: NPV stands for net present\nAnswer: value\n\n";
  std::vector<Request> fs;
  for (const char* q : {"A bond's price moves opposite to its", "人民币的基本单位是什么？",
                        "The balance sheet lists assets, liabilities and", "Debits equal"})
    for (const char* c : {" yield", " equity", " 元"})
      fs.push_back({shots + "Question: " + q + "\nAnswer:", c, {}, 0});
  const int64_t shots_tokens = int64_t(ref_model().tok.encode(shots).size());
  for (int64_t bs : {1, 4, 16}) {
    SCOPED_TRACE("block_size " + std::to_string(bs));
    const int64_t computed = expect_equals_forward(fs, {.batch_size = 6, .block_size = bs}, 128);
    // without sharing every request computes its whole input; with it the
    // whole blocks of the examples' tokens are computed once for all 12
    // requests (in the first batch, kept in the cache for the second)
    int64_t all = 0;
    for (const auto& r : fs)
      all += int64_t(ref_model().tok.encode(r.context + r.continuation).size()) - 1;
    const int64_t shared_min = (shots_tokens - bs) / bs * bs;
    EXPECT_LE(computed, all - 11 * shared_min) << "computed " << computed << " of " << all;
    std::printf("block %lld: %lld of %lld input tokens computed\n", (long long)bs,
                (long long)computed, (long long)all);
  }
}

// Live (opt-in: FINMOE_LIVE_LM_EVAL=1 and FINMOE_PYTHON with lm_eval, torch,
// transformers): the reference script run again into a scratch copy of the
// task files rebuilds the same model and lm_eval gives the committed numbers.
TEST(EvalLmEvalLive, ReferenceScriptReproducesTheCommittedReference) {
  const char* live = std::getenv("FINMOE_LIVE_LM_EVAL");
  const char* py = std::getenv("FINMOE_PYTHON");
  if (!live || std::string(live) != "1" || !py)
    GTEST_SKIP()
        << "set FINMOE_LIVE_LM_EVAL=1 and FINMOE_PYTHON (with lm_eval) to run lm-eval live";
  const auto dir = std::filesystem::temp_directory_path() /
                   ("finmoe_lm_eval_live_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  for (const auto& e : std::filesystem::directory_iterator(kRef))
    if (e.is_regular_file() && e.path().filename() != "reference.json" &&
        e.path().filename() != "filters.json")
      std::filesystem::copy_file(e.path(), dir / e.path().filename());
  const std::string cmd = std::string(py) + " " + FINMOE_SOURCE_DIR +
                          "/tests/ref/make_lm_eval_reference.py " + dir.string() + " > " +
                          (dir / "log.txt").string() + " 2>&1";
  const int rc = WEXITSTATUS(std::system(cmd.c_str()));
  if (rc == 77) {
    std::filesystem::remove_all(dir);
    GTEST_SKIP() << "lm_eval/torch/transformers not installed in FINMOE_PYTHON";
  }
  ASSERT_EQ(rc, 0) << cmd;
  const json fresh = read_json_file((dir / "reference.json").string());
  EXPECT_EQ(read_json_file((dir / "filters.json").string()),
            read_json_file(kRef + "/filters.json"));
  for (const char* task :
       {"ref_mc", "ref_mc_random", "ref_mc_chat", "ref_ppl", "ref_gen", "ref_gen_filters"}) {
    const json& a = fresh["tasks"][task]["samples"];
    const json& b = reference()["tasks"][task]["samples"];
    ASSERT_EQ(a.size(), b.size()) << task;
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(a[i]["arguments"], b[i]["arguments"]) << task << " doc " << i;
      for (size_t c = 0; c < a[i]["resps"].size(); ++c) {
        const json& x = a[i]["resps"][c][0];
        const json& y = b[i]["resps"][c][0];
        if (x.is_array())
          EXPECT_NEAR(x[0].get<double>(), y[0].get<double>(), 1e-4) << task << " doc " << i;
        else if (x.is_number())
          EXPECT_NEAR(x.get<double>(), y.get<double>(), 1e-3) << task << " doc " << i;
        else
          EXPECT_EQ(x, y) << task << " doc " << i;
      }
      EXPECT_EQ(a[i].value("filtered_resps", json()), b[i].value("filtered_resps", json()))
          << task << " doc " << i;
    }
  }
  std::filesystem::remove_all(dir);
}
