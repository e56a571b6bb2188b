#pragma once
// The per-tensor math of `finmoe merge` (include/finmoe/merge.h): every method
// takes the tensors of one parameter from each input model (float32 or
// float64, all the same shape) and returns the merged tensor in that dtype.
// Pure functions of their arguments (the random ones of their generator).
// Internal to the convert layer; docs/merging.md states the formulas.
#include <cstdint>
#include <vector>

#include <ATen/core/Generator.h>
#include <torch/torch.h>

#include "merge/merge_math.h"

namespace finmoe::merge_math {

// Keep-mask application with the method's rescaling:
//   Random, DellaMagprune: kept entries divided by their keep probability
//     (DARE's 1/density, DELLA's 1/p_i), so E[result] = delta;
//   Magnitude, MagnitudeOutliers: the kept entries scaled so the L1 norm of
//     delta is kept (mergekit's `rescale`).
// `rescale` false: the kept entries unchanged.
torch::Tensor sparsify(const torch::Tensor& delta, Sparsify method, double density, bool rescale,
                       double gamma, double epsilon, at::Generator& gen);

// Sign election (TIES step 2): per entry the sign of sum_i delta_i ("sum",
// zero counts as +); returns 1 where delta_i agrees with it, else 0. [M, ...]
torch::Tensor sign_consensus(const torch::Tensor& deltas);  // deltas [M, ...]

// The task-arithmetic family (task_arithmetic, ties, dare_linear, dare_ties,
// breadcrumbs, breadcrumbs_ties, della, della_linear):
//   delta_i = sparsify(x_i - base);  d_i = w_i * delta_i
//   consensus:  mixed = sum_i m_i d_i,  divisor = sum_i m_i w_i (0 -> 1), m = sign_consensus(d)
//   otherwise:  mixed = sum_i d_i,      divisor = sum_i w_i (|.| < 1e-8 -> 1)
//   out = base + lambda * (normalize ? mixed / divisor : mixed)
torch::Tensor task_arithmetic(const torch::Tensor& base, const std::vector<torch::Tensor>& xs,
                              const std::vector<ModelParams>& params, const TaskArithmetic& how,
                              at::Generator& gen);

// sum_i w_i x_i, divided by sum_i w_i when normalize.
torch::Tensor linear(const std::vector<torch::Tensor>& xs, const std::vector<double>& weights,
                     bool normalize);

// Spherical interpolation of the whole tensors a (t = 0) and b (t = 1), the
// angle taken between a/|a| and b/|b|; linear interpolation when
// |cos| > 0.9995 (nearly parallel).
torch::Tensor slerp(const torch::Tensor& a, const torch::Tensor& b, double t);

// NuSLERP (mergekit): spherical interpolation at t of v0 and v1 taken as one
// flattened vector (flatten), else per row (vectors along the last dim) or,
// with row_wise, per column (vectors along dim 0); linear where the two are
// (anti)parallel, 1 - cos^2 <= 1e-16. Vectors are normalised with a 1e-7 floor.
torch::Tensor nuslerp(const torch::Tensor& v0, const torch::Tensor& v1, double t, bool row_wise,
                      bool flatten);

// Model Stock (Jang et al. 2024): the fine-tuned average pulled toward the
// base by t = k cos / (1 + (k - 1) cos), cos the mean pairwise cosine of the
// task vectors (per row when filter_wise). Needs k >= 2 models.
torch::Tensor model_stock(const torch::Tensor& base, const std::vector<torch::Tensor>& xs,
                          bool filter_wise);

// FuseChat 2.0 SCE: Select the top select_topk fraction of entries by variance
// of the task vectors across models, Calculate per-model weights as the mean
// squared (selected) task vector, normalised to sum 1, Erase entries whose
// sign disagrees with the elected sign; out = base + sum m w d / sum m w.
torch::Tensor sce(const torch::Tensor& base, const std::vector<torch::Tensor>& xs,
                  double select_topk);

// FuseChat 1.0 VaRM: per-matrix weights w_i = mean(delta_i^2) / sum_j mean(delta_j^2)
// (equal weights when every delta is 0); out = base + sum_i w_i delta_i.
torch::Tensor varm(const torch::Tensor& base, const std::vector<torch::Tensor>& xs);

}  // namespace finmoe::merge_math
