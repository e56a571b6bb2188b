// Refusal data: answerable records' answers against the formulas written out
// here, unanswerable ones missing exactly the premise they name at the depth
// asked; the model stage through a fake endpoint, its rewrites checked.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <map>

#include "../expect_error.h"
#include "data_test_util.h"
#include "fake_chat.h"
#include "finmoe/refusal.h"

namespace {

using namespace finmoe;
using finmoe::test::message_of;

double formula(const std::string& id, const nlohmann::json& v) {
  auto g = [&](const char* k) { return v.at(k).get<double>(); };
  if (id == "eps") return (g("营业收入") - g("营业成本") - g("期间费用")) / g("总股本");
  if (id == "pe") return g("股价") / (g("净利润") / g("总股本"));
  if (id == "roe") return g("净利润") / (g("总资产") - g("总负债")) * 100;
  if (id == "deposit") return g("本金") * (1 + g("年利率") / 100 * g("存期"));
  if (id == "cash") return g("期初现金余额") + g("本月现金流入") - g("本月现金流出");
  ADD_FAILURE() << "unknown template " << id;
  return 0;
}

int count_of(const std::string& s, const std::string& what) {
  int n = 0;
  for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + what.size())) ++n;
  return n;
}

TEST(Refusal, AnswersFollowTheFormulasAndCutsRemoveOneNamedPremise) {
  const std::map<std::string, size_t> premises = {
      {"eps", 4}, {"pe", 3}, {"roe", 3}, {"deposit", 3}, {"cash", 3}};
  RefusalOptions o;
  o.n = 1000;
  o.seed = 5;
  const auto recs = refusal_records(o);
  ASSERT_EQ(recs.size(), 1000u);
  int unanswerable = 0;
  std::map<std::string, int> per_template;
  for (const auto& r : recs) {
    const std::string id = r["template"], q = r["messages"][0]["content"],
                      a = r["messages"][1]["content"];
    ++per_template[id];
    // one premise sentence per value given
    EXPECT_EQ(size_t(count_of(q, "。")), r["values"].size()) << q;
    if (r["answerable"]) {
      ASSERT_EQ(r["values"].size(), premises.at(id));
      const double expect = formula(id, r["values"]);
      EXPECT_NEAR(r["answer"].get<double>(), expect, 0.0051) << q;
      char buf[64];
      std::snprintf(buf, sizeof(buf), "%.2f", r["answer"].get<double>());
      EXPECT_NE(a.find(std::string("为") + buf), std::string::npos) << a;
    } else {
      ++unanswerable;
      const std::string cut = r["cut"]["name"];
      EXPECT_EQ(r["values"].size(), premises.at(id) - 1);
      EXPECT_FALSE(r["values"].contains(cut));
      EXPECT_EQ(a.rfind("无法回答。题目没有给出" + cut, 0), 0u) << a;
      EXPECT_FALSE(r.contains("answer"));
      // a computed answer would need the cut premise: the formula cannot be evaluated
      EXPECT_THROW(formula(id, r["values"]), nlohmann::json::out_of_range);
    }
  }
  EXPECT_NEAR(unanswerable, 500, 60);
  EXPECT_EQ(per_template.size(), 5u);
  EXPECT_EQ(refusal_records(o), recs);  // deterministic
}

TEST(Refusal, CutDepthIsHonoured) {
  RefusalOptions o;
  o.n = 200;
  o.unanswerable_share = 1.0;
  for (int depth : {1, 2}) {
    o.cut_depth = depth;
    for (const auto& r : refusal_records(o)) EXPECT_EQ(r["cut"]["depth"], depth);
  }
  o.cut_depth = 3;
  EXPECT_CONTAINS(message_of([&] { refusal_records(o); }), "no tree has a premise at depth 3");
  o.cut_depth = 0;
  o.unanswerable_share = 2;
  EXPECT_CONTAINS(message_of([&] { refusal_records(o); }), "--unanswerable-share");
}

}  // namespace

// ---- the model stage (--model-url) -------------------------------------------

namespace {

// Rewrites like a model: the question with a lead-in; the refusal with its
// first clause reworded. Record questions holding `invent` get a made-up
// number added (a hallucinated premise) and must be rejected.
std::string model_reply(const std::string& prompt, const std::string& invent) {
  const std::string qk = "题目：";
  const size_t q0 = prompt.find(qk) + qk.size();
  const size_t sk = prompt.find("\n说明：");
  if (sk == std::string::npos) {
    const std::string q = prompt.substr(q0);
    if (!invent.empty() && q.find(invent) != std::string::npos) return "已知总股本为8000万股。" + q;
    return "请帮忙算一下：" + q;
  }
  return "抱歉，" + prompt.substr(sk + std::string("\n说明：").size());
}

}  // namespace

TEST(RefusalModel, RewritesAreCheckedAndTheRunResumes) {
  RefusalOptions o;
  o.n = 12;
  o.seed = 3;
  const auto plain = refusal_records(o);
  // the first eps question gets an invented number
  std::string invent;
  for (const auto& r : plain)
    if (r["template"] == "eps" && invent.empty()) invent = r["messages"][0]["content"];
  ASSERT_FALSE(invent.empty());
  datatest::FakeChat chat([&](const std::string& p) { return model_reply(p, invent); });
  datatest::TempDir dir("refusal-model");
  RefusalModelOptions m;
  m.url = chat.url();
  m.backoff_s = 0.01;
  m.retries = 0;
  chat.fail_after = 5;
  const std::string out = dir / "r.jsonl";
  const std::string err = message_of([&] { refusal_with_model(o, m, out); });
  EXPECT_CONTAINS(err, "gave up after 1 tries: HTTP 503");
  EXPECT_CONTAINS(err, "--resume continues");
  EXPECT_FALSE(std::filesystem::exists(out));
  const size_t done_before = datatest::lines_of(out + ".partial").size();
  EXPECT_GE(done_before, 2u);
  chat.fail_after = -1;
  m.resume = true;
  const int64_t before = chat.requests;
  const RefusalModelResult r = refusal_with_model(o, m, out);
  EXPECT_EQ(r.resumed, int64_t(done_before));
  int64_t expected_requests = 0;
  for (size_t i = done_before; i < plain.size(); ++i)
    expected_requests += plain[i]["answerable"].get<bool>() ? 1 : 2;
  EXPECT_EQ(chat.requests - before, expected_requests);  // finished records not asked again
  EXPECT_FALSE(std::filesystem::exists(out + ".partial"));

  const auto lines = datatest::lines_of(out);
  ASSERT_EQ(lines.size(), plain.size());
  int64_t questions = 0, answers = 0;
  for (size_t i = 0; i < lines.size(); ++i) {
    const auto rec = nlohmann::json::parse(lines[i]);
    const auto& p = plain[i];
    SCOPED_TRACE(i);
    // the tree, its values and its cut are the templated record's
    EXPECT_EQ(rec["values"], p["values"]);
    EXPECT_EQ(rec["answerable"], p["answerable"]);
    EXPECT_EQ(rec.value("cut", nlohmann::json()), p.value("cut", nlohmann::json()));
    const std::string q = p["messages"][0]["content"], a = p["messages"][1]["content"];
    const auto& rw = rec["rewritten"];
    const bool q_done = std::find(rw.begin(), rw.end(), "question") != rw.end();
    if (q == invent) {
      EXPECT_FALSE(q_done);  // the invented premise is refused
      EXPECT_EQ(rec["messages"][0]["content"], q);
    } else {
      EXPECT_TRUE(q_done);
      EXPECT_EQ(rec["messages"][0]["content"], "请帮忙算一下：" + q);
    }
    questions += q_done;
    if (p["answerable"].get<bool>()) {
      EXPECT_EQ(rec["messages"][1]["content"], a);  // worked answers stay computed
    } else {
      EXPECT_EQ(rec["messages"][1]["content"], "抱歉，" + a);
      ++answers;
    }
  }
  // the counters of the second run cover its records only
  EXPECT_LE(r.questions, questions);
  EXPECT_LE(r.answers, answers);
  EXPECT_EQ(r.records, int64_t(plain.size()));
}

TEST(RefusalModel, BadUrlIsNamed) {
  datatest::TempDir dir("refusal-url");
  RefusalOptions o;
  o.n = 1;
  RefusalModelOptions m;
  m.url = "localhost:1";
  EXPECT_CONTAINS(message_of([&] { refusal_with_model(o, m, dir / "r.jsonl"); }),
                  "--model-url: expected http://HOST:PORT");
}
