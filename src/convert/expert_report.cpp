// Report files and the terminal summary of `finmoe experts` (include/finmoe/analysis.h).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "convert/svg.h"
#include "finmoe/analysis.h"
#include "finmoe/config.h"
#include "finmoe/error.h"

namespace finmoe {
namespace {

// Numbers in CSV with enough digits to round-trip typical statistics.
std::string f(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.9g", v);
  return buf;
}

nlohmann::json header(const ExpertReport& r) {
  return {{"model", r.model}, {"model_type", r.model_type}, {"data", r.data}};
}

nlohmann::json routing_json(const ExpertReport& r) {
  nlohmann::json j = header(r);
  j["definitions"] = {
      {"g", "gate value of expert e for token t: its combination weight if selected, else 0"},
      {"s", "softmax of the router logits over all experts"},
      {"load", "tokens whose selected experts include e"},
      {"selection_ratio", "load / tokens"},
      {"mean_gate", "mean over tokens of g"},
      {"mean_router_prob", "mean over tokens of s"},
      {"esft_gate", "ESFT Eq. 6: mean over sequences of the per-sequence mean of g"},
      {"esft_token", "ESFT Eq. 7: mean over sequences of the per-sequence mean of 1[selected]/K"},
      {"esft_gate_share", "esft_gate / sum over the layer's experts"},
      {"esft_token_share", "esft_token / sum over the layer's experts"},
      {"imbalance", "max load / mean load"},
      {"entropy", "entropy of load / sum(load), divided by ln(num_experts)"}};
  j["layers"] = nlohmann::json::array();
  for (const auto& l : r.routing) {
    nlohmann::json experts = nlohmann::json::array();
    for (size_t e = 0; e < l.experts.size(); ++e) {
      const auto& x = l.experts[e];
      experts.push_back({{"expert", e},
                         {"load", x.load},
                         {"selection_ratio", x.selection_ratio},
                         {"mean_gate", x.mean_gate},
                         {"mean_router_prob", x.mean_router_prob},
                         {"esft_gate", x.esft_gate},
                         {"esft_token", x.esft_token},
                         {"esft_gate_share", x.esft_gate_share},
                         {"esft_token_share", x.esft_token_share}});
    }
    j["layers"].push_back({{"layer", l.layer},
                           {"tokens", l.tokens},
                           {"sequences", l.sequences},
                           {"top_k", l.top_k},
                           {"num_experts", l.experts.size()},
                           {"imbalance", l.imbalance},
                           {"entropy", l.entropy},
                           {"experts", experts}});
  }
  return j;
}

std::string routing_csv(const ExpertReport& r) {
  std::string s =
      "layer,expert,load,selection_ratio,mean_gate,mean_router_prob,esft_gate,esft_token,"
      "esft_gate_share,esft_token_share\n";
  for (const auto& l : r.routing)
    for (size_t e = 0; e < l.experts.size(); ++e) {
      const auto& x = l.experts[e];
      s += std::to_string(l.layer) + "," + std::to_string(e) + "," + std::to_string(x.load) + "," +
           f(x.selection_ratio) + "," + f(x.mean_gate) + "," + f(x.mean_router_prob) + "," +
           f(x.esft_gate) + "," + f(x.esft_token) + "," + f(x.esft_gate_share) + "," +
           f(x.esft_token_share) + "\n";
    }
  return s;
}

nlohmann::json similarity_json(const ExpertReport& r) {
  nlohmann::json j = header(r);
  j["definition"] =
      "cosine similarity of two experts' flattened weights (all of their tensors); "
      "mean/min/max over the pairs i < j of a layer";
  j["layers"] = nlohmann::json::array();
  j["matrices"] = nlohmann::json::array();
  for (size_t i = 0; i < r.similarity.size(); ++i) {
    const auto& l = r.similarity[i];
    j["layers"].push_back({{"layer", l.layer},
                           {"num_experts", l.num_experts},
                           {"params_per_expert", l.params_per_expert},
                           {"mean", l.mean},
                           {"min", l.min},
                           {"max", l.max}});
    if (i == 0 || i + 1 == r.similarity.size()) {
      nlohmann::json m = nlohmann::json::array();
      const auto E = size_t(l.num_experts);
      for (size_t a = 0; a < E; ++a)
        m.push_back(std::vector<double>(l.matrix.begin() + long(a * E),
                                        l.matrix.begin() + long((a + 1) * E)));
      j["matrices"].push_back({{"layer", l.layer}, {"matrix", m}});
    }
  }
  return j;
}

std::string similarity_csv(const ExpertReport& r) {
  std::string s = "layer,num_experts,params_per_expert,mean_cosine,min_cosine,max_cosine\n";
  for (const auto& l : r.similarity)
    s += std::to_string(l.layer) + "," + std::to_string(l.num_experts) + "," +
         std::to_string(l.params_per_expert) + "," + f(l.mean) + "," + f(l.min) + "," + f(l.max) +
         "\n";
  return s;
}

// Layers x experts heatmap of the selection ratio, scaled to the largest ratio.
std::string load_heatmap_svg(const ExpertReport& r) {
  size_t E = 0;
  double hi = 0;
  for (const auto& l : r.routing) {
    E = std::max(E, l.experts.size());
    for (const auto& x : l.experts) hi = std::max(hi, x.selection_ratio);
  }
  const double cell = std::clamp(640.0 / double(std::max<size_t>(E, 1)), 6.0, 28.0);
  const double left = 70, top = 50, W = left + cell * double(E) + 90;
  const double H = top + cell * double(r.routing.size()) + 50;
  svg::Document d(W, H);
  d.text(left, 20, "Token selection ratio per expert (" + r.model_type + ")", 14);
  d.text(left, 36, "colour: tokens selecting the expert / tokens; scale 0 .. " + svg::num(hi), 10);
  for (size_t i = 0; i < r.routing.size(); ++i) {
    const auto& l = r.routing[i];
    const double y = top + cell * double(i);
    d.text(left - 6, y + cell * 0.5 + 4, "layer " + std::to_string(l.layer), 10, "end");
    for (size_t e = 0; e < l.experts.size(); ++e) {
      const auto& x = l.experts[e];
      d.rect(left + cell * double(e), y, cell, cell,
             svg::sequential(hi > 0 ? x.selection_ratio / hi : 0),
             "layer " + std::to_string(l.layer) + ", expert " + std::to_string(e) + ": selection " +
                 svg::num(x.selection_ratio) + ", gate " + svg::num(x.mean_gate));
    }
  }
  const double by = top + cell * double(r.routing.size());
  const size_t step = std::max<size_t>(1, size_t(std::ceil(24.0 / cell)));
  for (size_t e = 0; e < E; e += step)
    d.text(left + cell * (double(e) + 0.5), by + 14, std::to_string(e), 9, "middle");
  d.text(left + cell * double(E) / 2, by + 32, "expert", 11, "middle");
  // colour bar
  const double bx = left + cell * double(E) + 20,
               bh = std::max(60.0, cell * double(r.routing.size()));
  for (int k = 0; k < 20; ++k)
    d.rect(bx, top + bh * (1 - (k + 1) / 20.0), 14, bh / 20 + 0.5, svg::sequential(k / 19.0));
  d.text(bx + 18, top + 8, svg::num(hi), 9);
  d.text(bx + 18, top + bh, "0", 9);
  return d.str();
}

// Per-layer mean similarity as bars, then the first and last layers' matrices.
std::string similarity_svg(const ExpertReport& r) {
  const auto& S = r.similarity;
  const double left = 60, top = 50, plot_h = 180;
  const double bar = std::clamp(600.0 / double(std::max<size_t>(S.size(), 1)), 4.0, 40.0);
  double lo = 0;
  for (const auto& l : S) lo = std::min(lo, l.min);
  lo = std::floor(lo * 10) / 10;  // y axis [lo, 1]
  std::vector<size_t> shown;
  if (!S.empty()) shown.push_back(0);
  if (S.size() > 1) shown.push_back(S.size() - 1);
  const double mat = 240, W = std::max(left + bar * double(S.size()) + 40, left + 2 * (mat + 60));
  const double H = top + plot_h + 60 + (shown.empty() ? 0 : mat + 60);
  svg::Document d(W, H);
  d.text(left, 20, "Expert weight similarity (" + r.model_type + ")", 14);
  d.text(left, 36, "bars: mean cosine over expert pairs per layer; whiskers: min .. max", 10);
  auto y_of = [&](double v) { return top + plot_h * (1 - (v - lo) / (1 - lo)); };
  d.line(left, top, left, top + plot_h);
  d.line(left, y_of(0), left + bar * double(S.size()), y_of(0));
  for (double t : {lo, 0.0, 0.5, 1.0}) {
    if (t < lo) continue;
    d.line(left - 4, y_of(t), left, y_of(t));
    d.text(left - 6, y_of(t) + 4, svg::num(t, 2), 9, "end");
  }
  for (size_t i = 0; i < S.size(); ++i) {
    const auto& l = S[i];
    const double x = left + bar * double(i);
    const double y0 = y_of(0), y1 = y_of(l.mean);
    d.rect(x + bar * 0.15, std::min(y0, y1), bar * 0.7, std::abs(y1 - y0), "#4c72b0",
           "layer " + std::to_string(l.layer) + ": mean " + svg::num(l.mean) + ", min " +
               svg::num(l.min) + ", max " + svg::num(l.max));
    d.line(x + bar * 0.5, y_of(l.min), x + bar * 0.5, y_of(l.max), "#222", 1);
    if (S.size() <= 40 || i % size_t(std::ceil(double(S.size()) / 40)) == 0)
      d.text(x + bar * 0.5, top + plot_h + 14, std::to_string(l.layer), 9, "middle");
  }
  d.text(left + bar * double(S.size()) / 2, top + plot_h + 30, "layer", 11, "middle");
  const double my = top + plot_h + 60;
  for (size_t k = 0; k < shown.size(); ++k) {
    const auto& l = S[shown[k]];
    const auto E = size_t(l.num_experts);
    const double x0 = left + double(k) * (mat + 60), c = mat / double(std::max<size_t>(E, 1));
    d.text(x0, my - 8, "layer " + std::to_string(l.layer) + " cosine matrix (-1 blue .. 1 red)",
           11);
    for (size_t a = 0; a < E; ++a)
      for (size_t b = 0; b < E; ++b) {
        const double v = l.matrix[a * E + b];
        // tooltips only where the file stays small (E*E cells per matrix)
        d.rect(x0 + c * double(b), my + c * double(a), c, c, svg::diverging(v),
               E > 48 ? std::string()
                      : "experts " + std::to_string(a) + ", " + std::to_string(b) + ": " +
                            svg::num(v));
      }
  }
  return d.str();
}

}  // namespace

std::vector<std::string> write_expert_report(const std::string& dir, const ExpertReport& report) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw Error(dir + ": cannot create the output directory: " + ec.message());
  std::vector<std::string> written;
  auto put = [&](const std::string& name, const std::string& bytes) {
    const std::string p = (std::filesystem::path(dir) / name).string();
    write_file_atomic(p, bytes);
    written.push_back(p);
  };
  put("routing.json", routing_json(report).dump(2) + "\n");
  put("routing.csv", routing_csv(report));
  put("similarity.json", similarity_json(report).dump(2) + "\n");
  put("similarity.csv", similarity_csv(report));
  put("load_heatmap.svg", load_heatmap_svg(report));
  put("similarity.svg", similarity_svg(report));
  return written;
}

std::string format_expert_summary(const ExpertReport& report) {
  std::map<int64_t, const LayerSimilarity*> sim;
  for (const auto& s : report.similarity) sim[s.layer] = &s;
  std::ostringstream o;
  char buf[160];
  std::snprintf(buf, sizeof(buf), "%5s %8s %9s %7s %12s %12s %9s %9s\n", "layer", "tokens",
                "imbalance", "entropy", "busiest", "idlest", "sim mean", "sim max");
  o << buf;
  for (const auto& l : report.routing) {
    size_t hi = 0, lo = 0;
    for (size_t e = 0; e < l.experts.size(); ++e) {
      if (l.experts[e].selection_ratio > l.experts[hi].selection_ratio) hi = e;
      if (l.experts[e].selection_ratio < l.experts[lo].selection_ratio) lo = e;
    }
    auto cell = [&](size_t e) {
      if (l.experts.empty()) return std::string("-");
      std::string c = "e";
      c.append(std::to_string(e)).append(" ").append(svg::num(l.experts[e].selection_ratio, 2));
      return c;
    };
    const auto it = sim.find(l.layer);
    std::snprintf(buf, sizeof(buf), "%5lld %8lld %9.3f %7.3f %12s %12s ", (long long)l.layer,
                  (long long)l.tokens, l.imbalance, l.entropy, cell(hi).c_str(), cell(lo).c_str());
    o << buf;
    if (it != sim.end())
      std::snprintf(buf, sizeof(buf), "%9.4f %9.4f\n", it->second->mean, it->second->max);
    else
      std::snprintf(buf, sizeof(buf), "%9s %9s\n", "-", "-");
    o << buf;
  }
  o << "busiest/idlest: expert with the highest/lowest token selection ratio; "
       "imbalance = max/mean load (1 = balanced); entropy normalised to [0, 1]\n";
  return o.str();
}

}  // namespace finmoe
