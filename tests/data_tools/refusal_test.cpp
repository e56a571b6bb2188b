// Refusal data: answerable records' answers against the formulas written out
// here, unanswerable ones missing exactly the premise they name at the depth
// asked.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "../expect_error.h"
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
