#pragma once
// Comparing floating-point results whose order of summation differs (ISA
// paths, thread counts, BLAS builds, ranks): the tolerance scales with the
// magnitudes compared instead of a bare absolute bound, so a CPU with another
// vector width cannot turn a test red.
#include <cmath>
#include <sstream>
#include <string>

#include <gtest/gtest.h>
#include <torch/torch.h>

namespace finmoe::test {

// max |got - want| <= rel * max(max |want|, max |got|, floor): `rel` is the
// relative error a float32 computation in another order may make on values of
// that size. Reports the worst element, its index and the scale on failure.
inline ::testing::AssertionResult AllClose(const torch::Tensor& got, const torch::Tensor& want,
                                           double rel, double floor = 1e-30) {
  auto g = got.detach().to(torch::kCPU, torch::kFloat64);
  auto w = want.detach().to(torch::kCPU, torch::kFloat64);
  if (g.sizes() != w.sizes()) {
    std::ostringstream s;
    s << "shapes differ: " << g.sizes() << " vs " << w.sizes();
    return ::testing::AssertionFailure() << s.str();
  }
  if (g.numel() == 0) return ::testing::AssertionSuccess();
  const double scale =
      std::max({g.abs().max().item<double>(), w.abs().max().item<double>(), floor});
  auto diff = (g - w).abs().flatten();
  const int64_t at = diff.argmax().item<int64_t>();
  const double worst = diff[at].item<double>();
  if (std::isfinite(worst) && worst <= rel * scale) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "max |got - want| = " << worst << " at flat index " << at << " (got "
         << g.flatten()[at].item<double>() << ", want " << w.flatten()[at].item<double>()
         << ") > " << rel << " x scale " << scale;
}

// |got - want| <= rel * max(|got|, |want|, floor), for scalars such as losses.
inline ::testing::AssertionResult NearRel(double got, double want, double rel, double floor = 1e-30) {
  const double scale = std::max({std::fabs(got), std::fabs(want), floor});
  if (std::fabs(got - want) <= rel * scale) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << got << " vs " << want << ": |diff| "
                                       << std::fabs(got - want) << " > " << rel << " x " << scale;
}

}  // namespace finmoe::test
