// ESFT expert relevance scores and expert selection (include/finmoe/esft.h).
// The expert-config format and delta checkpoints are in src/model/esft_delta.cpp.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <numeric>
#include <random>

#include "finmoe/analysis.h"
#include "finmoe/config.h"
#include "finmoe/error.h"
#include "finmoe/esft.h"
#include "finmoe/model.h"
#include "finmoe/tokenizer.h"

namespace finmoe {

// ---- scores --------------------------------------------------------------------

EsftGate esft_gate_from_string(const std::string& name, const std::string& field) {
  if (name == "softmax") return EsftGate::Softmax;
  if (name == "applied") return EsftGate::Applied;
  throw Error(field + ": '" + name + "' is not a gate score (softmax | applied)");
}

EsftScores esft_scores(const std::vector<LayerRouting>& routing, EsftGate g) {
  EsftScores s;
  for (const LayerRouting& l : routing) {
    // pooled over the layer's tokens: mean_gate_e = sum_t g / T and
    // selection_ratio_e = load_e / T; normalising over experts cancels T
    double gate_total = 0, token_total = 0;
    const auto gate_of = [g](const ExpertRouting& e) {
      return g == EsftGate::Softmax ? e.mean_selected_prob : e.mean_gate;
    };
    for (const auto& e : l.experts) gate_total += gate_of(e), token_total += e.selection_ratio;
    auto& gate = s.gate_scores[l.layer];
    auto& token = s.token_scores[l.layer];
    for (const auto& e : l.experts) {
      gate.push_back(gate_total > 0 ? gate_of(e) / gate_total : 0.0);
      token.push_back(token_total > 0 ? e.selection_ratio / token_total : 0.0);
    }
    if (s.tokens == 0) s.tokens = l.tokens, s.sequences = l.sequences;
  }
  return s;
}

EsftScores score_experts(Transformer& model, const Tokenizer& tokenizer, const std::string& data,
                         const EsftScoreOptions& o,
                         const std::function<void(int64_t, int64_t)>& progress) {
  if (o.seq_len < 1) throw Error("seq_len must be positive, got " + std::to_string(o.seq_len));
  const ModelConfig& cfg = model.config();
  if (!cfg.is_moe())
    throw Error("model_type '" + cfg.model_type +
                "' has no routed experts (num_experts = 0); ESFT needs an MoE model");
  // the whole task file, so the sample can come from anywhere in it
  auto chunks = tokenize_corpus(data, tokenizer, {.seq_len = o.seq_len, .max_tokens = 0});
  // fixed-length sequences (§3.3: concatenated samples of length L)
  if (chunks.size() > 1 && int64_t(chunks.back().tokens.size()) < o.seq_len) chunks.pop_back();
  std::mt19937_64 rng(o.seed);
  std::shuffle(chunks.begin(), chunks.end(), rng);
  if (o.max_tokens > 0) {
    const size_t keep = size_t(std::max<int64_t>(1, (o.max_tokens + o.seq_len - 1) / o.seq_len));
    if (chunks.size() > keep) chunks.resize(keep);
  }
  int64_t total = 0;
  for (const auto& c : chunks) total += int64_t(c.tokens.size());
  const RoutingStats stats = collect_routing(model, chunks, [&](int64_t done) {
    if (progress) progress(done, total);
  });
  return esft_scores(stats.results(), o.gate);
}

nlohmann::json esft_scores_to_json(const EsftScores& s) {
  auto table = [](const std::map<int64_t, std::vector<double>>& m) {
    nlohmann::json j = nlohmann::json::object();
    for (const auto& [layer, v] : m) {
      nlohmann::json row = nlohmann::json::object();
      for (size_t e = 0; e < v.size(); ++e) row[std::to_string(e)] = v[e];
      j[std::to_string(layer)] = row;
    }
    return j;
  };
  return {{"token_scores", table(s.token_scores)},
          {"gate_scores", table(s.gate_scores)},
          {"tokens", s.tokens},
          {"sequences", s.sequences}};
}

EsftScores esft_scores_from_json(const nlohmann::json& j, const std::string& source) {
  if (!j.is_object()) throw Error(source + ": expected a JSON object with token_scores and gate_scores");
  EsftScores s;
  int64_t num_experts = -1;
  auto index = [&](const std::string& key, const std::string& what) {
    if (key.empty() || key.size() > 9 ||
        !std::all_of(key.begin(), key.end(), [](unsigned char c) { return std::isdigit(c); }))
      throw Error(source + ": " + what + " key '" + key + "' is not a non-negative integer");
    return std::stoll(key);
  };
  auto table = [&](const char* name, std::map<int64_t, std::vector<double>>& out) {
    auto it = j.find(name);
    if (it == j.end() || !it->is_object())
      throw Error(source + ": '" + name + "' must be an object {\"<layer>\": {\"<expert>\": score}}");
    for (const auto& [lkey, row] : it->items()) {
      const std::string where = source + ": " + name + "[\"" + lkey + "\"]";
      const int64_t layer = index(lkey, std::string(name) + " layer");
      if (!row.is_object() || row.empty())
        throw Error(where + " must be a non-empty object {\"<expert>\": score}");
      std::map<int64_t, double> by_expert;
      for (const auto& [ekey, v] : row.items()) {
        if (!v.is_number() || !std::isfinite(v.get<double>()) || v.get<double>() < 0)
          throw Error(where + "[\"" + ekey + "\"] must be a finite score >= 0, got " + v.dump());
        by_expert[index(ekey, "expert")] = v.get<double>();
      }
      const int64_t E = int64_t(by_expert.size());
      if (by_expert.rbegin()->first != E - 1)
        throw Error(where + ": expert ids must be 0.." + std::to_string(E - 1));
      if (num_experts >= 0 && E != num_experts)
        throw Error(where + " has " + std::to_string(E) + " experts, other layers " +
                    std::to_string(num_experts));
      num_experts = E;
      auto& v = out[layer];
      for (const auto& [e, score] : by_expert) v.push_back(score);
    }
  };
  table("token_scores", s.token_scores);
  table("gate_scores", s.gate_scores);
  for (const char* k : {"tokens", "sequences"})
    if (auto it = j.find(k); it != j.end() && it->is_number_integer())
      (std::string(k) == "tokens" ? s.tokens : s.sequences) = it->get<int64_t>();
  return s;
}

EsftScores load_esft_scores(const std::string& path) {
  return esft_scores_from_json(read_json_file(path), path);
}

void save_esft_scores(const std::string& path, const EsftScores& s) {
  write_json_file(path, esft_scores_to_json(s));
}

// ---- selection -------------------------------------------------------------------

EsftScoreKind esft_score_kind(const std::string& name) {
  if (name == "token") return EsftScoreKind::Token;
  if (name == "gate") return EsftScoreKind::Gate;
  throw Error("--score '" + name + "': expected token (ESFT-Token) or gate (ESFT-Gate)");
}

ExpertConfig random_experts_like(const ExpertConfig& like, int64_t num_experts, uint64_t seed) {
  ExpertConfig c = like;
  std::mt19937_64 rng(seed);  // its output sequence is fixed by the standard
  for (auto& [layer, ids] : c.experts) {
    const size_t k = ids.size();
    if (int64_t(k) > num_experts)
      throw Error("layer " + std::to_string(layer) + " lists " + std::to_string(k) + " experts of " +
                  std::to_string(num_experts));
    std::vector<int64_t> all(static_cast<size_t>(num_experts));
    std::iota(all.begin(), all.end(), 0);
    for (size_t i = 0; i < k; ++i) {  // a partial Fisher-Yates shuffle
      const size_t j = i + size_t(rng() % uint64_t(all.size() - i));
      std::swap(all[i], all[j]);
    }
    ids.assign(all.begin(), all.begin() + long(k));
    std::sort(ids.begin(), ids.end());
  }
  return c;
}

ExpertConfig select_experts(const EsftScores& s, EsftScoreKind kind, double p) {
  if (!(p > 0.0 && p <= 1.0))
    throw Error("--p " + std::to_string(p) + ": the score threshold must be in (0, 1]");
  constexpr double kTolerance = 1e-9;  // so 0.5 + 0.3 "reaches" 0.8
  const auto& table = kind == EsftScoreKind::Token ? s.token_scores : s.gate_scores;
  if (table.empty()) throw Error("no layers in the scores");
  ExpertConfig c;
  for (const auto& [layer, scores] : table) {
    if (std::accumulate(scores.begin(), scores.end(), 0.0) <= 0)
      throw Error("layer " + std::to_string(layer) + " has no positive score to select by");
    std::vector<int64_t> order(scores.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return scores[size_t(a)] > scores[size_t(b)]; });
    auto& chosen = c.experts[layer];
    double sum = 0;
    for (int64_t e : order) {
      if (sum >= p - kTolerance) break;
      chosen.push_back(e);
      sum += scores[size_t(e)];
    }
    std::sort(chosen.begin(), chosen.end());
  }
  return c;
}

}  // namespace finmoe
