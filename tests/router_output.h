#pragma once
// Hand-made MoE router outputs for tests of what reads them (expert
// statistics, ESFT's expert scores).
#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "finmoe/model.h"

namespace finmoe::test {

// Layer `layer`'s routing of T tokens: token t chose experts idx[t] with
// weights w[t] (K each); `logits` [T, E] are the router scores to report.
inline RouterOutput router_output(int64_t layer, const std::vector<std::vector<int64_t>>& idx,
                                  const std::vector<std::vector<float>>& w,
                                  const torch::Tensor& logits) {
  const int64_t T = int64_t(idx.size()), K = int64_t(idx[0].size());
  RouterOutput r;
  r.layer = layer;
  r.logits = logits;
  r.indices = torch::empty({T, K}, torch::kInt64);
  r.weights = torch::empty({T, K});
  for (int64_t t = 0; t < T; ++t)
    for (int64_t k = 0; k < K; ++k) {
      r.indices[t][k] = idx[size_t(t)][size_t(k)];
      r.weights[t][k] = w[size_t(t)][size_t(k)];
    }
  return r;
}

}  // namespace finmoe::test
