// TreeCut-style refusal data (finmoe/refusal.h).
#include "finmoe/refusal.h"

#include <cmath>
#include <cstdio>
#include <functional>
#include <random>

#include "finmoe/error.h"

namespace finmoe {

namespace {

// A quantity: a premise (leaf) or a formula over its children.
struct Node {
  std::string name, unit;
  char op = 0;            // 0 leaf, '+', '-', '*', '/'
  std::vector<int> kids;  // indices into the tree
  double lo = 0, hi = 0;  // leaf values drawn in [lo, hi]
  int decimals = 0;       // of a leaf value
  std::string sentence;   // leaf: premise with {v}
};

Node formula_node(std::string name, std::string unit, char op, std::vector<int> kids) {
  Node n;
  n.name = std::move(name);
  n.unit = std::move(unit);
  n.op = op;
  n.kids = std::move(kids);
  return n;
}

struct Tree {
  std::string id;
  std::vector<Node> nodes;  // nodes[0] is the root
  std::string question;     // asks for the root
};

std::vector<Tree> trees() {
  std::vector<Tree> t;
  // eps = (revenue - cost - expense) / shares
  t.push_back({"eps",
               {formula_node("每股收益", "元", '/', {1, 5}),
                formula_node("净利润", "万元", '-', {2, 3, 4}),
                {"营业收入", "万元", 0, {}, 5000, 90000, 0, "该公司全年营业收入为{v}万元。"},
                {"营业成本", "万元", 0, {}, 1000, 3000, 0, "营业成本为{v}万元。"},
                {"期间费用", "万元", 0, {}, 100, 1500, 0, "期间费用合计{v}万元。"},
                {"总股本", "万股", 0, {}, 1000, 20000, 0, "公司总股本为{v}万股。"}},
               "该公司的每股收益是多少元？（保留两位小数）"});
  // pe = price / (profit / shares)
  t.push_back({"pe",
               {formula_node("市盈率", "倍", '/', {1, 2}),
                {"股价", "元", 0, {}, 3, 120, 2, "某股票当前股价为{v}元。"},
                formula_node("每股收益", "元", '/', {3, 4}),
                {"净利润", "万元", 0, {}, 500, 80000, 0, "该公司上一年度净利润为{v}万元。"},
                {"总股本", "万股", 0, {}, 1000, 50000, 0, "总股本为{v}万股。"}},
               "该股票的市盈率是多少倍？（保留两位小数）"});
  // roe = profit / (assets - liabilities) * 100
  t.push_back({"roe",
               {formula_node("净资产收益率", "%", '/', {1, 2}),
                {"净利润", "万元", 0, {}, 100, 9000, 0, "某企业本年净利润为{v}万元。"},
                formula_node("净资产", "万元", '-', {3, 4}),
                {"总资产", "万元", 0, {}, 60000, 120000, 0, "年末总资产为{v}万元。"},
                {"总负债", "万元", 0, {}, 10000, 50000, 0, "年末总负债为{v}万元。"}},
               "该企业的净资产收益率（按年末净资产计算）是多少？（以百分比表示，保留两位小数）"});
  // deposit = principal + principal * rate * years
  t.push_back({"deposit",
               {formula_node("到期本息和", "元", '+', {1, 2}),
                {"本金", "元", 0, {}, 10000, 500000, 0, "小王在银行存入定期存款{v}元。"},
                formula_node("利息", "元", '*', {3, 4, 5}),
                {"本金", "元", 0, {}, 0, 0, 0, ""},  // the same principal, filled from node 1
                {"年利率", "%", 0, {}, 1, 4, 2, "年利率为{v}%，单利计息。"},
                {"存期", "年", 0, {}, 1, 5, 0, "存期为{v}年。"}},
               "到期时小王可以取回的本息和是多少元？（保留两位小数）"});
  // cash = opening + inflow - outflow
  t.push_back({"cash",
               {formula_node("期末现金余额", "万元", '-', {1, 4}),
                formula_node("期初与流入合计", "万元", '+', {2, 3}),
                {"期初现金余额", "万元", 0, {}, 100, 5000, 0, "某公司月初现金余额为{v}万元。"},
                {"本月现金流入", "万元", 0, {}, 100, 8000, 0, "本月现金流入{v}万元。"},
                {"本月现金流出", "万元", 0, {}, 100, 4000, 0, "本月现金流出{v}万元。"}},
               "该公司月末现金余额是多少万元？"});
  return t;
}

std::string number(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", decimals, v);
  return buf;
}

// Value of node i (percent leaves count as v/100; a percent result is x100).
double eval(const Tree& t, const std::vector<double>& leaf, int i) {
  const Node& n = t.nodes[size_t(i)];
  if (n.op == 0) return n.unit == "%" ? leaf[size_t(i)] / 100.0 : leaf[size_t(i)];
  double r = eval(t, leaf, n.kids[0]);
  for (size_t k = 1; k < n.kids.size(); ++k) {
    const double v = eval(t, leaf, n.kids[k]);
    r = n.op == '+' ? r + v : n.op == '-' ? r - v : n.op == '*' ? r * v : r / v;
  }
  return r;
}

double shown(const Node& n, double v) { return n.unit == "%" ? v * 100.0 : v; }

void depths(const Tree& t, int i, int d, std::vector<int>& out) {
  out[size_t(i)] = d;
  for (int k : t.nodes[size_t(i)].kids) depths(t, k, d + 1, out);
}

}  // namespace

std::vector<std::string> refusal_templates() {
  std::vector<std::string> out;
  for (const auto& t : trees()) out.push_back(t.id);
  return out;
}

std::vector<nlohmann::json> refusal_records(const RefusalOptions& opt) {
  std::vector<nlohmann::json> out;
  refusal_records(opt, [&](nlohmann::json&& r) { out.push_back(std::move(r)); });
  return out;
}

void refusal_records(const RefusalOptions& opt, const std::function<void(nlohmann::json&&)>& sink) {
  if (opt.n < 0) throw Error("refusal: -n must be >= 0");
  if (!(opt.unanswerable_share >= 0 && opt.unanswerable_share <= 1))
    throw Error("refusal: --unanswerable-share must be in [0, 1]");
  if (opt.cut_depth < 0 || opt.cut_depth > 3)
    throw Error("refusal: --cut-depth must be 0 (any), 1, 2 or 3");
  const auto all = trees();
  std::vector<const Tree*> usable;
  for (const auto& t : all) {
    std::vector<int> d(t.nodes.size());
    depths(t, 0, 0, d);
    bool has = opt.cut_depth == 0;
    for (size_t i = 0; i < t.nodes.size(); ++i)
      has |= t.nodes[i].op == 0 && !t.nodes[i].sentence.empty() && d[i] == opt.cut_depth;
    if (has) usable.push_back(&t);
  }
  if (usable.empty())
    throw Error("refusal: no tree has a premise at depth " + std::to_string(opt.cut_depth));
  std::mt19937_64 rng(opt.seed);
  for (int64_t r = 0; r < opt.n; ++r) {
    const Tree& t = *usable[size_t(r) % usable.size()];
    std::vector<int> depth(t.nodes.size());
    depths(t, 0, 0, depth);
    // premises: the leaves with a sentence; a leaf without one repeats the premise of the same name
    std::vector<double> leaf(t.nodes.size(), 0.0);
    nlohmann::json values = nlohmann::json::object();
    std::vector<size_t> premises;
    for (size_t i = 0; i < t.nodes.size(); ++i) {
      const Node& n = t.nodes[i];
      if (n.op != 0 || n.sentence.empty()) continue;
      const double scale = std::pow(10.0, n.decimals);
      leaf[i] = std::round(std::uniform_real_distribution<double>(n.lo, n.hi)(rng) * scale) / scale;
      values[n.name] = leaf[i];
      premises.push_back(i);
    }
    for (size_t i = 0; i < t.nodes.size(); ++i)
      if (t.nodes[i].op == 0 && t.nodes[i].sentence.empty())
        leaf[i] = values[t.nodes[i].name].get<double>();
    const bool unanswerable =
        std::uniform_real_distribution<double>(0, 1)(rng) < opt.unanswerable_share;
    int64_t cut = -1;
    if (unanswerable) {
      std::vector<size_t> at;
      for (size_t i : premises)
        if (opt.cut_depth == 0 || depth[i] == opt.cut_depth) at.push_back(i);
      cut = int64_t(at[rng() % at.size()]);
    }
    std::string question;
    for (size_t i : premises) {
      if (int64_t(i) == cut) continue;
      std::string s = t.nodes[i].sentence;
      s.replace(s.find("{v}"), 3, number(leaf[i], t.nodes[i].decimals));
      question += s;
    }
    question += t.question;
    nlohmann::json rec = {{"template", t.id}, {"answerable", !unanswerable}};
    std::string answer;
    if (unanswerable) {
      const Node& gone = t.nodes[size_t(cut)];
      values.erase(gone.name);
      // the formula that needs it: its parent
      std::string parent;
      for (const auto& n : t.nodes)
        for (int k : n.kids)
          if (k == cut) parent = n.name;
      answer =
          "无法回答。题目没有给出" + gone.name + "，而计算" + parent + "需要这一数据" +
          (parent == t.nodes[0].name ? ""
                                     : "，" + parent + "又是计算" + t.nodes[0].name + "所必需的") +
          "，因此无法求出" + t.nodes[0].name + "。请补充" + gone.name + "后再计算。";
      rec["cut"] = {{"name", gone.name}, {"depth", depth[size_t(cut)]}};
    } else {
      // worked answer: every formula node, deepest first
      std::vector<int> order;
      std::function<void(int)> post = [&](int i) {
        for (int k : t.nodes[size_t(i)].kids) post(k);
        if (t.nodes[size_t(i)].op != 0) order.push_back(i);
      };
      post(0);
      for (int i : order) {
        const Node& n = t.nodes[size_t(i)];
        const char* op = n.op == '+' ? " + " : n.op == '-' ? " − " : n.op == '*' ? " × " : " ÷ ";
        std::string names, nums;
        for (size_t k = 0; k < n.kids.size(); ++k) {
          const Node& c = t.nodes[size_t(n.kids[k])];
          names += (k ? op : "") + c.name;
          const double v = c.op == 0 ? leaf[size_t(n.kids[k])] : shown(c, eval(t, leaf, n.kids[k]));
          nums += (k ? op : "") + number(v, c.op == 0 ? c.decimals : 4) + c.unit;
        }
        const double v = shown(n, eval(t, leaf, i));
        // intermediate results with 4 decimals so that the next step recomputes to the rounded
        // answer
        answer += n.name + " = " + names + " = " + nums + " = " + number(v, i == 0 ? 2 : 4) +
                  n.unit + "；";
      }
      const double v = shown(t.nodes[0], eval(t, leaf, 0));
      answer.pop_back();  // the last "；" is 3 bytes
      answer.pop_back();
      answer.pop_back();
      answer += "。答：" + t.nodes[0].name + "为" + number(v, 2) + t.nodes[0].unit + "。";
      rec["answer"] = std::stod(number(v, 2));  // the number the answer text shows
    }
    rec["values"] = values;
    rec["messages"] = {{{"role", "user"}, {"content", question}},
                       {{"role", "assistant"}, {"content", answer}}};
    sink(std::move(rec));
  }
}

}  // namespace finmoe
