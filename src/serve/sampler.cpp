#include <algorithm>
#include <cmath>
#include <numeric>

#include "finmoe/error.h"
#include "finmoe/generate.h"

namespace finmoe {

void SamplingParams::validate() const {
  if (!(temperature >= 0) || !std::isfinite(temperature))
    throw Error("temperature must be >= 0, got " + std::to_string(temperature));
  if (top_k < 0) throw Error("top_k must be >= 0, got " + std::to_string(top_k));
  if (!(top_p > 0 && top_p <= 1)) throw Error("top_p must be in (0, 1], got " + std::to_string(top_p));
  if (!(min_p >= 0 && min_p <= 1)) throw Error("min_p must be in [0, 1], got " + std::to_string(min_p));
  if (!(repetition_penalty > 0))
    throw Error("repetition_penalty must be > 0, got " + std::to_string(repetition_penalty));
}

Sampler::Sampler(const SamplingParams& params, uint64_t seed) : params_(params), rng_(seed) {
  params_.validate();
}

double Sampler::uniform() { return double(rng_() >> 11) * 0x1.0p-53; }

namespace {

void apply_repetition_penalty(std::vector<float>& z, std::span<const int32_t> history,
                              double penalty) {
  if (penalty == 1.0) return;
  std::vector<int32_t> seen(history.begin(), history.end());
  std::sort(seen.begin(), seen.end());
  seen.erase(std::unique(seen.begin(), seen.end()), seen.end());
  for (int32_t id : seen) {
    if (id < 0 || size_t(id) >= z.size()) continue;
    float& v = z[size_t(id)];
    v = v > 0 ? float(v / penalty) : float(v * penalty);  // HF's rule
  }
}

}  // namespace

std::vector<std::pair<int32_t, float>> Sampler::distribution(
    std::span<const float> logits, std::span<const int32_t> history) const {
  std::vector<float> z(logits.begin(), logits.end());
  apply_repetition_penalty(z, history, params_.repetition_penalty);
  const int64_t V = int64_t(z.size());
  if (params_.temperature == 0) {
    auto best = int32_t(std::max_element(z.begin(), z.end()) - z.begin());
    return {{best, 1.0f}};
  }
  for (float& v : z) v = float(v / params_.temperature);
  std::vector<int32_t> cand(static_cast<size_t>(V));
  std::iota(cand.begin(), cand.end(), 0);
  auto by_logit = [&](int32_t a, int32_t b) { return z[a] > z[b] || (z[a] == z[b] && a < b); };
  if (params_.top_k > 0 && params_.top_k < V) {
    std::nth_element(cand.begin(), cand.begin() + params_.top_k, cand.end(), by_logit);
    // ties with the k-th value stay, as HF's `logits < kth` filter keeps them
    const float kth = z[*std::min_element(cand.begin(), cand.begin() + params_.top_k,
                                          [&](int32_t a, int32_t b) { return z[a] < z[b]; })];
    cand.erase(std::remove_if(cand.begin(), cand.end(), [&](int32_t i) { return z[i] < kth; }),
               cand.end());
  }
  // softmax over the survivors, in double
  float zmax = -INFINITY;
  for (int32_t i : cand) zmax = std::max(zmax, z[i]);
  std::vector<double> p(static_cast<size_t>(V), 0.0);
  double sum = 0;
  for (int32_t i : cand) sum += (p[i] = std::exp(double(z[i]) - zmax));
  for (int32_t i : cand) p[i] /= sum;
  if (params_.top_p < 1.0) {
    // smallest most-probable prefix whose mass reaches top_p (HF drops tokens
    // whose ascending cumulative mass is <= 1 - top_p). Sorting (p, id) pairs
    // by value, and only a growing head of them, keeps this cheap for 150k
    // vocabularies.
    std::vector<std::pair<double, int32_t>> byp;
    byp.reserve(cand.size());
    for (int32_t i : cand) byp.emplace_back(-p[i], i);  // ascending = most probable first
    size_t head = std::min<size_t>(64, byp.size());
    while (true) {
      std::partial_sort(byp.begin(), byp.begin() + head, byp.end());
      double cum = 0;
      size_t keep = 0;
      for (size_t i = 0; i < head && keep == 0; ++i)
        if ((cum -= byp[i].first) >= params_.top_p - 1e-12) keep = i + 1;
      if (keep > 0 || head == byp.size()) {
        if (keep > 0) byp.resize(keep);
        break;
      }
      head = head >= 1024 ? byp.size() : std::min(byp.size(), head * 16);
    }
    cand.clear();
    for (const auto& [negp, i] : byp) cand.push_back(i);
  }
  if (params_.min_p > 0) {
    double pmax = 0;
    for (int32_t i : cand) pmax = std::max(pmax, p[i]);
    const double floor = params_.min_p * pmax;
    cand.erase(std::remove_if(cand.begin(), cand.end(), [&](int32_t i) { return p[i] < floor; }),
               cand.end());
  }
  std::sort(cand.begin(), cand.end());
  double mass = 0;
  for (int32_t i : cand) mass += p[i];
  std::vector<std::pair<int32_t, float>> out;
  out.reserve(cand.size());
  for (int32_t i : cand) out.emplace_back(i, float(p[i] / mass));
  return out;
}

int32_t Sampler::sample(std::span<const float> logits, std::span<const int32_t> history) {
  if (params_.temperature == 0 && params_.repetition_penalty == 1.0)
    return int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
  auto dist = distribution(logits, history);
  double u = uniform();
  for (const auto& [id, p] : dist) {
    if (u < p) return id;
    u -= p;
  }
  return dist.back().first;  // rounding left a sliver of mass
}

}  // namespace finmoe
