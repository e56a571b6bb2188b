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

// The warped distribution before the draw: p[id] over the ids of `cand`
// (ascending), or over every id when `all` (no truncating warper ran: the
// common temperature-only request skips building and sorting a candidate
// list as long as the vocabulary, and p is left unnormalised, summing to
// `total`). `greedy` >= 0 when temperature is 0.
struct Warped {
  std::vector<float> z;
  std::vector<int32_t> cand;
  std::vector<double> p;
  double total = 1;
  bool all = false;
  int32_t greedy = -1;
};

// Fills w (its buffers reused) with the HF warpers' result; with a candidate
// list p is normalised over the survivors of top_k but not renormalised after
// top_p and min_p (the caller divides by the kept mass).
void warp(const SamplingParams& params, std::span<const float> logits,
          std::span<const int32_t> history, Warped& w) {
  auto& z = w.z;
  z.assign(logits.begin(), logits.end());
  apply_repetition_penalty(z, history, params.repetition_penalty);
  const int64_t V = int64_t(z.size());
  w.greedy = -1;
  if (params.temperature == 0) {
    w.greedy = int32_t(std::max_element(z.begin(), z.end()) - z.begin());
    return;
  }
  if (params.temperature != 1.0)
    for (float& v : z) v = float(v / params.temperature);
  auto& cand = w.cand;
  cand.clear();
  w.all = true;
  auto by_logit = [&](int32_t a, int32_t b) { return z[a] > z[b] || (z[a] == z[b] && a < b); };
  auto materialize = [&] {
    if (!w.all) return;
    cand.resize(static_cast<size_t>(V));
    std::iota(cand.begin(), cand.end(), 0);
    w.all = false;
  };
  if (params.top_k > 0 && params.top_k < V) {
    materialize();
    std::nth_element(cand.begin(), cand.begin() + params.top_k, cand.end(), by_logit);
    // ties with the k-th value stay, as HF's `logits < kth` filter keeps them
    const float kth = z[*std::min_element(cand.begin(), cand.begin() + params.top_k,
                                          [&](int32_t a, int32_t b) { return z[a] < z[b]; })];
    cand.erase(std::remove_if(cand.begin(), cand.end(), [&](int32_t i) { return z[i] < kth; }),
               cand.end());
    std::sort(cand.begin(), cand.end());
  }
  if (params.top_p < 1.0 || params.min_p > 0) materialize();  // they need p normalised
  // softmax over the survivors (only their entries are written, and read)
  auto& p = w.p;
  p.resize(static_cast<size_t>(V));
  float zmax = -INFINITY;
  double sum = 0;
  if (w.all) {  // exp in float as HF's float32 softmax (twice as fast as double), sums in double
    for (float v : z) zmax = std::max(zmax, v);
    for (int64_t i = 0; i < V; ++i) sum += (p[i] = std::exp(z[i] - zmax));
    w.total = sum;
  } else {
    for (int32_t i : cand) zmax = std::max(zmax, z[i]);
    for (int32_t i : cand) sum += (p[i] = std::exp(double(z[i]) - zmax));
    for (int32_t i : cand) p[i] /= sum;
  }
  if (params.top_p < 1.0) {
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
        if ((cum -= byp[i].first) >= params.top_p - 1e-12) keep = i + 1;
      if (keep > 0 || head == byp.size()) {
        if (keep > 0) byp.resize(keep);
        break;
      }
      head = head >= 1024 ? byp.size() : std::min(byp.size(), head * 16);
    }
    cand.clear();
    for (const auto& [negp, i] : byp) cand.push_back(i);
    std::sort(cand.begin(), cand.end());
  }
  if (params.min_p > 0) {
    double pmax = 0;
    for (int32_t i : cand) pmax = std::max(pmax, p[i]);
    const double floor = params.min_p * pmax;
    cand.erase(std::remove_if(cand.begin(), cand.end(), [&](int32_t i) { return p[i] < floor; }),
               cand.end());
  }
}

// Calls f(id, p) for each id the warped distribution keeps, ascending, with
// p renormalised over them (as float, the precision distribution() returns);
// stops when f returns true. Returns the last id visited.
template <class F>
int32_t for_each_kept(const Warped& w, F&& f) {
  double mass = 0;
  int32_t last = -1;
  if (w.all) {
    for (size_t i = 0; i < w.p.size(); ++i)
      if (last = int32_t(i); f(last, float(w.p[i] / w.total))) break;
  } else {
    for (int32_t i : w.cand) mass += w.p[size_t(i)];
    for (int32_t i : w.cand)
      if (last = i; f(i, float(w.p[size_t(i)] / mass))) break;
  }
  return last;
}

}  // namespace

std::vector<std::pair<int32_t, float>> Sampler::distribution(
    std::span<const float> logits, std::span<const int32_t> history) const {
  Warped w;
  warp(params_, logits, history, w);
  if (w.greedy >= 0) return {{w.greedy, 1.0f}};
  std::vector<std::pair<int32_t, float>> out;
  out.reserve(w.all ? w.p.size() : w.cand.size());
  for_each_kept(w, [&](int32_t id, float p) {
    out.emplace_back(id, p);
    return false;
  });
  return out;
}

int32_t Sampler::sample(std::span<const float> logits, std::span<const int32_t> history) {
  if (params_.temperature == 0 && params_.repetition_penalty == 1.0)
    return int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
  // The buffers (a few MB for a 150k vocabulary) are kept between calls: a
  // serving step samples every running sequence on the one stepping thread.
  thread_local Warped w;
  warp(params_, logits, history, w);
  if (w.greedy >= 0) return w.greedy;
  double u = uniform();
  if (w.all) {  // the first id whose cumulative mass passes u * total, in one pass
    const double target = u * w.total;
    double cum = 0;
    for (size_t i = 0; i < w.p.size(); ++i)
      if (target < (cum += w.p[i])) return int32_t(i);
    for (size_t i = w.p.size(); i-- > 0;)  // rounding left a sliver: the last id with mass
      if (w.p[i] > 0) return int32_t(i);
    return int32_t(w.p.size()) - 1;  // no id has mass (every logit -inf)
  }
  // the last id when rounding left a sliver of mass
  return for_each_kept(w, [&](int32_t, float p) {
    if (u < p) return true;
    u -= p;
    return false;
  });
}

}  // namespace finmoe
