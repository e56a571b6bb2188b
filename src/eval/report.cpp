// Result files: lm-eval's JSON, per-sample JSONL, Markdown tables grouped by
// category, and the side-by-side comparison of two result files.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>

#include "finmoe/config.h"
#include "finmoe/error.h"
#include "finmoe/eval.h"

namespace fs = std::filesystem;

namespace finmoe::eval {

namespace {

using nlohmann::json;

std::string fmt(const json& v) {
  if (!v.is_number()) return v.is_string() ? v.get<std::string>() : "";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4f", v.get<double>());
  return buf;
}

// A row's metrics as labels: "acc,none" -> "acc"; a filtered metric keeps
// its filter ("exact_match,strict-match"). Stderr keys are not metrics.
std::vector<std::string> metric_names(const json& row) {
  std::vector<std::string> out;
  for (auto it = row.begin(); it != row.end(); ++it) {
    const std::string& k = it.key();
    const size_t comma = k.find(',');
    if (comma == std::string::npos || k.find("_stderr,") != std::string::npos) continue;
    out.push_back(k.compare(comma, std::string::npos, ",none") == 0 ? k.substr(0, comma) : k);
  }
  return out;
}

// label -> its value key, its stderr key and its metric name
std::string value_key(const std::string& label) {
  return label.find(',') == std::string::npos ? label + ",none" : label;
}
std::string stderr_key(const std::string& label) {
  const std::string k = value_key(label);
  const size_t comma = k.find(',');
  return k.substr(0, comma) + "_stderr" + k.substr(comma);
}
std::string metric_of(const std::string& label) { return label.substr(0, label.find(',')); }

// The group (category) of each task, "" when none.
std::map<std::string, std::string> task_groups(const json& r) {
  std::map<std::string, std::string> g;
  if (r.contains("group_subtasks"))
    for (auto it = r.at("group_subtasks").begin(); it != r.at("group_subtasks").end(); ++it)
      for (const auto& t : it.value()) g[t.get<std::string>()] = it.key();
  return g;
}

const json& section(const json& r, const char* key) {
  static const json empty = json::object();
  return r.contains(key) && r.at(key).is_object() ? r.at(key) : empty;
}

}  // namespace

std::string markdown_report(const json& r) {
  const json& results = section(r, "results");
  const json& groups = section(r, "groups");
  const json& nshot = section(r, "n-shot");
  const json& hib = section(r, "higher_is_better");
  const auto tg = task_groups(r);
  // categories in order of first appearance, ungrouped tasks last
  std::vector<std::string> order;
  std::map<std::string, std::vector<std::string>> by_group;
  for (auto it = results.begin(); it != results.end(); ++it) {
    const auto g = tg.count(it.key()) ? tg.at(it.key()) : std::string();
    if (!by_group.count(g)) order.push_back(g);
    by_group[g].push_back(it.key());
  }
  std::stable_partition(order.begin(), order.end(),
                        [](const std::string& g) { return !g.empty(); });
  std::string md;
  for (const auto& g : order) {
    md += "### " + (g.empty() ? std::string("(no group)") : g) + "\n\n";
    md += "| task | n-shot | metric | | value | ± stderr |\n|---|---:|---|---|---:|---:|\n";
    for (const auto& task : by_group[g]) {
      const json& row = results.at(task);
      for (const auto& m : metric_names(row)) {
        const bool up = !hib.contains(task) || !hib.at(task).contains(metric_of(m)) ||
                        hib.at(task).at(metric_of(m)).get<bool>();
        const std::string se = row.contains(stderr_key(m)) ? fmt(row.at(stderr_key(m))) : "";
        md += "| " + task + " | " + (nshot.contains(task) ? nshot.at(task).dump() : "") + " | " +
              m + " | " + (up ? "↑" : "↓") + " | " + fmt(row.at(value_key(m))) + " | " + se +
              " |\n";
      }
    }
    if (!g.empty() && groups.contains(g))
      for (const auto& m : metric_names(groups.at(g)))
        md += "| **" + g + "** (mean) | | " + m + " | | " + fmt(groups.at(g).at(value_key(m))) +
              " | |\n";
    md += "\n";
  }
  return md;
}

std::string compare_report(const json& a, const json& b, const std::string& name_a,
                           const std::string& name_b) {
  for (const auto* x : {&a, &b})
    if (!x->is_object() || !x->contains("results"))
      throw Error(std::string(x == &a ? name_a : name_b) +
                  ": not an evaluation result (no 'results')");
  struct Row {
    std::string task, metric;
    json va, vb;
    bool up = true;
  };
  std::vector<Row> rows;
  std::set<std::pair<std::string, std::string>> seen;
  auto add = [&](const json& r, const char* sec) {
    const json& s = section(r, sec);
    for (auto it = s.begin(); it != s.end(); ++it)
      for (const auto& m : metric_names(it.value())) {
        if (!seen.insert({it.key(), m}).second) continue;
        Row row{it.key(), m, nullptr, nullptr, true};
        for (const auto* src : {&a, &b}) {
          const json& ss = section(*src, sec);
          json v = ss.contains(it.key()) && ss.at(it.key()).contains(value_key(m))
                       ? ss.at(it.key()).at(value_key(m))
                       : json(nullptr);
          (src == &a ? row.va : row.vb) = v;
          const json& h = section(*src, "higher_is_better");
          if (h.contains(it.key()) && h.at(it.key()).contains(metric_of(m)))
            row.up = h.at(it.key()).at(metric_of(m)).get<bool>();
        }
        rows.push_back(row);
      }
  };
  add(a, "results");
  add(b, "results");
  add(a, "groups");
  add(b, "groups");
  std::string md = "| task | metric | " + name_a + " | " + name_b + " | Δ (B − A) | |\n";
  md += "|---|---|---:|---:|---:|---|\n";
  for (const auto& r : rows) {
    std::string delta, better;
    if (r.va.is_number() && r.vb.is_number()) {
      const double d = r.vb.get<double>() - r.va.get<double>();
      char buf[32];
      std::snprintf(buf, sizeof buf, "%+.4f", d);
      delta = buf;
      if (d != 0) better = (d > 0) == r.up ? "B better" : "A better";
    }
    md += "| " + r.task + " | " + r.metric + " | " + fmt(r.va) + " | " + fmt(r.vb) + " | " + delta +
          " | " + better + " |\n";
  }
  return md;
}

std::vector<std::string> write_outputs(const EvalOutput& out, const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error("--out " + dir + ": cannot create the directory: " + ec.message());
  std::vector<std::string> written;
  for (const auto& t : out.tasks) {
    if (t.samples.empty()) continue;
    std::string body;
    for (const auto& s : t.samples)
      body += s.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
    const std::string p = (fs::path(dir) / ("samples_" + t.task + ".jsonl")).string();
    write_file_atomic(p, body);
    written.push_back(p);
  }
  const std::string md = (fs::path(dir) / "results.md").string();
  write_file_atomic(md, markdown_report(out.results));
  written.push_back(md);
  const std::string js = (fs::path(dir) / "results.json").string();
  write_file_atomic(js, out.results.dump(2, ' ', false, json::error_handler_t::replace) + "\n");
  written.push_back(js);
  return written;
}

}  // namespace finmoe::eval
