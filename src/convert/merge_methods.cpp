// The per-tensor math of model merging (src/convert/merge_methods.h).
#include "convert/merge_methods.h"

#include <algorithm>
#include <cmath>

#include "finmoe/error.h"

namespace finmoe::merge_math {

namespace {

// Scales the kept entries so the L1 norm of the whole tensor is kept.
torch::Tensor l1_rescaled(const torch::Tensor& delta, const torch::Tensor& kept) {
  const double before = delta.abs().sum().item<double>();
  const double after = kept.abs().sum().item<double>();
  if (before < 1e-7 || after < 1e-7) return kept;
  return kept * (before / after);
}

// A 0/1 mask of `x`'s shape with ones at the flat `indices`.
torch::Tensor mask_at(const torch::Tensor& x, const torch::Tensor& indices) {
  auto mask = torch::zeros({x.numel()}, x.options());  // [n]
  mask.index_fill_(0, indices, 1);
  return mask.view(x.sizes());
}

torch::Tensor stack_deltas(const torch::Tensor& base, const std::vector<torch::Tensor>& xs) {
  std::vector<torch::Tensor> d;
  d.reserve(xs.size());
  for (const auto& x : xs) d.push_back(x - base);
  return torch::stack(d);  // [M, ...]
}

// [M] -> [M, 1, ..., 1] broadcasting against a stack of `like`'s shape.
torch::Tensor per_model(const std::vector<double>& v, const torch::Tensor& like) {
  std::vector<int64_t> shape(size_t(like.dim()) + 1, 1);
  shape[0] = int64_t(v.size());
  return torch::tensor(v, torch::TensorOptions().dtype(torch::kFloat64))
      .to(like.scalar_type())
      .view(shape);
}

}  // namespace

torch::Tensor sparsify(const torch::Tensor& delta, Sparsify method, double density, bool rescale,
                       double gamma, double epsilon, at::Generator& gen) {
  if (method == Sparsify::None || density >= 1.0) return delta;
  const int64_t n = delta.numel();
  if (n == 0) return delta;
  switch (method) {
    case Sparsify::Magnitude: {
      const int64_t k = std::max<int64_t>(1, int64_t(density * double(n)));
      // of entries tied at the k-th magnitude the lowest indices (a stable
      // descending sort), as the fused kernel (kernels/merge_kernels.h) keeps them
      auto order = std::get<1>(delta.abs().reshape(-1).sort(/*stable=*/true, 0, /*descending=*/true));
      auto top = order.narrow(0, 0, k);  // [k]
      auto kept = delta * mask_at(delta, top);
      return rescale ? l1_rescaled(delta, kept) : kept;
    }
    case Sparsify::MagnitudeOutliers: {
      const int64_t keep = int64_t(density * double(n));
      const int64_t n_top = int64_t(gamma * double(n));
      const int64_t n_bot = std::max<int64_t>(0, n - keep - n_top);
      auto order = std::get<1>(delta.abs().reshape(-1).sort());  // [n], ascending |delta|
      auto kept = delta * mask_at(delta, order.narrow(0, n_bot, std::min(keep, n - n_bot)));
      return rescale ? l1_rescaled(delta, kept) : kept;
    }
    case Sparsify::Random: {
      auto mask = at::bernoulli(torch::full_like(delta, density), gen);  // 0/1, [...]
      return rescale ? delta * mask / density : delta * mask;
    }
    case Sparsify::DellaMagprune: {
      if (density - epsilon <= 0 || density + epsilon >= 1)
        throw Error("epsilon " + std::to_string(epsilon) + " with density " +
                    std::to_string(density) + ": density +- epsilon must lie in (0, 1)");
      // ranks of |delta| within each row: 0 (smallest) .. cols-1
      auto rows = delta.dim() < 2 ? delta.reshape({1, -1}) : delta.reshape({delta.size(0), -1});
      const int64_t cols = rows.size(1);
      auto order = std::get<1>(rows.abs().sort(1));                          // [R, C]
      auto rank = std::get<1>(order.sort(1)).to(rows.scalar_type());       // [R, C]
      auto rank_norm = cols > 1 ? rank / double(cols - 1) : torch::zeros_like(rank);
      auto probs = (density - epsilon) + rank_norm * (2 * epsilon);  // [R, C]
      auto mask = at::bernoulli(probs, gen);
      auto kept = rescale ? rows * mask / probs : rows * mask;
      return kept.view(delta.sizes());
    }
    case Sparsify::None:
      break;
  }
  return delta;
}

torch::Tensor sign_consensus(const torch::Tensor& deltas) {
  auto majority = (deltas.sum(0) >= 0).to(deltas.scalar_type()) * 2 - 1;  // [...], +-1
  return (deltas.sign() == majority).to(deltas.scalar_type());           // [M, ...]
}

torch::Tensor task_arithmetic(const torch::Tensor& base, const std::vector<torch::Tensor>& xs,
                              const std::vector<ModelParams>& params, const TaskArithmetic& how,
                              at::Generator& gen) {
  if (xs.empty()) return base;
  std::vector<torch::Tensor> d;
  std::vector<double> w;
  for (size_t i = 0; i < xs.size(); ++i) {
    d.push_back(sparsify(xs[i] - base, how.sparsify, params[i].density, how.rescale,
                         params[i].gamma, params[i].epsilon, gen));
    w.push_back(params[i].weight);
  }
  auto weights = per_model(w, base);            // [M, 1, ...]
  auto deltas = torch::stack(d) * weights;      // [M, ...]
  torch::Tensor mixed, divisor;
  if (how.consensus) {
    auto mask = sign_consensus(deltas);         // [M, ...]
    mixed = (deltas * mask).sum(0);
    divisor = (weights * mask).sum(0);
    divisor.masked_fill_(divisor == 0, 1);
  } else {
    mixed = deltas.sum(0);
    divisor = weights.sum(0);
    divisor.masked_fill_(divisor.abs() < 1e-8, 1);
  }
  if (how.normalize) mixed = mixed / divisor;
  if (how.lambda != 1.0) mixed = mixed * how.lambda;
  return base + mixed;
}

torch::Tensor linear(const std::vector<torch::Tensor>& xs, const std::vector<double>& weights,
                     bool normalize) {
  auto out = torch::zeros_like(xs.at(0));
  double sum = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    out.add_(xs[i], weights[i]);
    sum += weights[i];
  }
  return normalize ? out / sum : out;
}

torch::Tensor slerp(const torch::Tensor& a, const torch::Tensor& b, double t) {
  const double eps = 1e-8;
  auto fa = a.reshape(-1), fb = b.reshape(-1);
  double na = fa.norm().item<double>(), nb = fb.norm().item<double>();
  if (!(na > eps)) na = 1;
  if (!(nb > eps)) nb = 1;
  // the cosine of unit vectors, computed as mergekit does: normalise, then dot
  const double dot = std::clamp(((fa / na) * (fb / nb)).sum().item<double>(), -1.0, 1.0);
  if (std::abs(dot) > 0.9995) return a * (1 - t) + b * t;
  const double theta = std::acos(dot), s = std::sin(theta);
  return a * (std::sin((1 - t) * theta) / s) + b * (std::sin(t * theta) / s);
}

torch::Tensor nuslerp(const torch::Tensor& v0, const torch::Tensor& v1, double t, bool row_wise,
                      bool flatten) {
  torch::Tensor a = v0, b = v1;
  const bool transpose = !flatten && row_wise && v0.dim() >= 2;
  if (flatten) {
    a = a.reshape(-1);
    b = b.reshape(-1);
  } else if (transpose) {  // vectors along dim 0
    a = a.transpose(0, -1);
    b = b.transpose(0, -1);
  }
  auto unit = [](const torch::Tensor& x) {
    return x / x.square().sum(-1, true).sqrt().clamp_min(1e-7);
  };
  auto cos = (unit(a) * unit(b)).sum(-1, true).clamp(-1, 1);  // [..., 1]
  auto colinear = (1 - cos.square()) <= 1e-16;
  auto theta = torch::acos(torch::where(colinear, torch::zeros_like(cos), cos));
  auto spherical = ((theta * (1 - t)).sin() * a + (theta * t).sin() * b) / theta.sin();
  auto out = torch::where(colinear, a * (1 - t) + b * t, spherical);
  if (transpose) out = out.transpose(0, -1);
  return out.reshape(v0.sizes());
}

torch::Tensor model_stock(const torch::Tensor& base, const std::vector<torch::Tensor>& xs,
                          bool filter_wise) {
  if (xs.size() < 2) throw Error("model_stock needs at least two models besides the base");
  auto rows = [&](const torch::Tensor& x) {
    if (!filter_wise) return x.reshape(-1);
    return x.dim() == 1 ? x.unsqueeze(0) : x;
  };
  auto w0 = rows(base);
  std::vector<torch::Tensor> off;
  for (const auto& x : xs) off.push_back(rows(x) - w0);
  std::vector<torch::Tensor> cos;
  for (size_t i = 0; i < off.size(); ++i)
    for (size_t j = i + 1; j < off.size(); ++j) {
      auto norms = off[i].square().sum(-1).sqrt() * off[j].square().sum(-1).sqrt();
      cos.push_back(((off[i] * off[j]).sum(-1) / norms.clamp_min(1e-6)).clamp(-1, 1));
    }
  auto c = torch::stack(cos).mean(0).unsqueeze(-1);  // [1] or [rows, 1]
  const double k = double(xs.size());
  auto denom = 1 + (k - 1) * c;
  auto singular = denom.abs() < 1e-6;  // no finite estimate: keep the base
  auto t = torch::where(singular, torch::zeros_like(c),
                        k * c / torch::where(singular, torch::ones_like(denom), denom));
  auto avg = torch::zeros_like(w0);
  for (const auto& x : xs) avg += rows(x);
  avg /= k;
  return (t * avg + (1 - t) * w0).reshape(base.sizes());
}

torch::Tensor sce(const torch::Tensor& base, const std::vector<torch::Tensor>& xs,
                  double select_topk) {
  if (xs.empty()) return base;
  auto tv = stack_deltas(base, xs);  // [M, ...]
  if (select_topk < 1) {
    auto var = (tv - tv.mean(0)).square().mean(0);  // [...], the biased variance
    const int64_t k = int64_t(double(var.count_nonzero().item<int64_t>()) * select_topk);
    torch::Tensor mask = torch::zeros_like(var);
    if (k > 0) mask = mask_at(var, std::get<1>(var.abs().reshape(-1).topk(k)));
    tv = tv * mask.unsqueeze(0);
  }
  auto erase = sign_consensus(tv);
  const int64_t m = tv.size(0);
  auto w = tv.square().reshape({m, -1}).mean(1);  // [M]
  const double sum = w.sum().item<double>();
  w = std::abs(sum) < 1e-6 ? torch::full_like(w, 1.0 / double(m)) : w / sum;
  std::vector<int64_t> shape(size_t(tv.dim()), 1);
  shape[0] = m;
  auto ew = w.view(shape) * erase;  // [M, ...]
  return base + (tv * ew).sum(0) / ew.sum(0).clamp_min(1e-6);
}

torch::Tensor varm(const torch::Tensor& base, const std::vector<torch::Tensor>& xs) {
  if (xs.empty()) return base;
  auto tv = stack_deltas(base, xs);  // [M, ...]
  const int64_t m = tv.size(0);
  auto w = tv.square().reshape({m, -1}).mean(1);  // [M]
  const double sum = w.sum().item<double>();
  w = sum > 0 ? w / sum : torch::full_like(w, 1.0 / double(m));
  std::vector<int64_t> shape(size_t(tv.dim()), 1);
  shape[0] = m;
  return base + (tv * w.view(shape)).sum(0);
}

}  // namespace finmoe::merge_math
