// The fused merge kernels (src/kernels/merge_kernels.h) against the libtorch
// path of merge_methods.h on random tensors: every method the kernel takes,
// every input/output dtype and input rounding (mergekit's `dtype`), on every
// ISA this CPU runs (scalar, avx2, avx512), bit for bit; the magnitude
// selection against a stable descending sort; and whole merges with the
// fused path on and off.
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <string>
#include <vector>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include "../model/test_util.h"
#include "finmoe/error.h"
#include "convert/merge_methods.h"
#include "finmoe/merge.h"
#include "finmoe/safetensors.h"
#include "kernels/merge_kernels.h"
#include "model/torch_dtype.h"

namespace finmoe {
namespace {

using kernels::Isa;
using kernels::MergeCombine;
using kernels::MergeType;

torch::ScalarType scalar_type(MergeType t) {
  switch (t) {
    case MergeType::kBF16: return torch::kBFloat16;
    case MergeType::kF16: return torch::kFloat16;
    case MergeType::kF32: break;
  }
  return torch::kFloat32;
}

const char* type_name(MergeType t) {
  switch (t) {
    case MergeType::kBF16: return "bf16";
    case MergeType::kF16: return "f16";
    case MergeType::kF32: break;
  }
  return "f32";
}

std::vector<Isa> isas_here() {
  std::vector<Isa> out;
  for (Isa i : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512})
    if (kernels::cpu_runs(i)) out.push_back(i);
  return out;
}

// A float32 tensor with the cases that matter for rounding and signs: values
// of size ~1, exact copies of the base (zero deltas), large values (float16
// overflow) and tiny ones (float16 subnormals).
torch::Tensor values(int64_t n, uint64_t seed, const torch::Tensor& near = {}) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto x = near.defined() ? near + 0.02 * torch::randn({n}, gen) : torch::randn({n}, gen);
  auto pick = torch::rand({n}, gen);
  if (near.defined()) x = torch::where(pick < 0.05, near, x);  // delta exactly 0
  x = torch::where((pick > 0.97) & (pick < 0.98), x * 7e4, x);     // beyond float16's range
  x = torch::where(pick > 0.99, x * 3e-6, x);                      // float16 subnormals
  return x;
}

struct Case {
  std::string name;
  MergeCombine::Method method;
  merge_math::TaskArithmetic how;
  std::vector<double> weights, densities;
  bool normalize = true;  // linear
};

std::vector<Case> cases() {
  using merge_math::Sparsify;
  const auto TA = MergeCombine::Method::kTaskArithmetic;
  const auto L = MergeCombine::Method::kLinear;
  return {
      {"linear", L, {}, {0.3, 0.5, 0.7}, {}, true},
      {"linear_nonorm", L, {}, {0.3, -0.5, 1.7}, {}, false},
      {"task_arithmetic", TA, {Sparsify::None, false, false, false, 1.0}, {0.5, 0.5}, {1, 1}},
      {"task_arithmetic_norm_lambda", TA, {Sparsify::None, false, true, false, 0.7},
       {0.5, -0.2, 1.3}, {1, 1, 1}},
      {"ties", TA, {Sparsify::Magnitude, true, true, false, 1.0}, {1.0, 0.6}, {0.5, 0.7}},
      {"ties_lambda_nonorm", TA, {Sparsify::Magnitude, true, false, false, 1.5}, {0.9, 0.4, 0.7},
       {0.3, 1.0, 0.05}},
      {"consensus_no_mask", TA, {Sparsify::None, true, false, false, 1.0}, {0.7, 0.4}, {1, 1}},
  };
}

// The libtorch path: merge.cpp's read_input (round to `round`, widen to
// float32), the method of merge_methods.h, rounding to the output type.
torch::Tensor torch_path(const Case& c, const torch::Tensor& base,
                         const std::vector<torch::Tensor>& xs, MergeType round, MergeType out) {
  auto in = [&](const torch::Tensor& t) {
    return t.to(scalar_type(round == MergeType::kF32 ? MergeType::kF32 : round)).to(torch::kFloat32);
  };
  std::vector<torch::Tensor> w;
  for (const auto& x : xs) w.push_back(in(x));
  torch::Tensor r;
  if (c.method == MergeCombine::Method::kLinear) {
    r = merge_math::linear(w, c.weights, c.normalize);
  } else {
    std::vector<merge_math::ModelParams> p;
    for (size_t i = 0; i < xs.size(); ++i) p.push_back({c.weights[i], c.densities[i], 0.01, 0.15});
    auto gen = at::make_generator<at::CPUGeneratorImpl>(1);
    r = merge_math::task_arithmetic(in(base), w, p, c.how, gen);
  }
  return r.to(scalar_type(out)).contiguous();
}

torch::Tensor fused_path(Isa isa, const Case& c, const torch::Tensor& base,
                         const std::vector<torch::Tensor>& xs, MergeType round, MergeType out) {
  MergeCombine a;
  a.method = c.method;
  a.n = xs[0].numel();
  a.weights = c.weights;
  a.round_inputs = round;
  a.out_type = out;
  auto type_of = [](const torch::Tensor& t) {
    return t.scalar_type() == torch::kBFloat16 ? MergeType::kBF16
           : t.scalar_type() == torch::kFloat16 ? MergeType::kF16
                                                : MergeType::kF32;
  };
  for (const auto& x : xs) a.xs.push_back({x.data_ptr(), type_of(x)});
  if (c.method == MergeCombine::Method::kLinear) {
    a.normalize = c.normalize;
  } else {
    a.base = {base.data_ptr(), type_of(base)};
    a.normalize = c.how.normalize;
    a.consensus = c.how.consensus;
    a.lambda = c.how.lambda;
    if (c.how.sparsify == merge_math::Sparsify::Magnitude)
      for (size_t i = 0; i < xs.size(); ++i) {
        MergeCombine::Keep k{0, a.n};
        if (c.densities[i] < 1)
          k = kernels::magnitude_keep_isa(
              isa, a.xs[i], a.base, a.n,
              std::max<int64_t>(1, int64_t(c.densities[i] * double(a.n))), round);
        a.keep.push_back(k);
      }
  }
  auto y = torch::empty({a.n}, scalar_type(out));
  a.out = y.data_ptr();
  kernels::merge_combine_isa(isa, a);
  return y;
}

// Entries whose bytes differ (so -0 and +0 differ), NaN payloads aside: a
// NaN (inf - inf after float16 rounding) only has to be a NaN in both.
int64_t differing(const torch::Tensor& a, const torch::Tensor& b) {
  const int64_t n = a.numel(), es = a.element_size();
  const auto nan = torch::isnan(a.to(torch::kFloat32)) & torch::isnan(b.to(torch::kFloat32));
  const bool* both_nan = nan.data_ptr<bool>();
  int64_t bad = 0;
  const auto* pa = static_cast<const char*>(a.data_ptr());
  const auto* pb = static_cast<const char*>(b.data_ptr());
  for (int64_t i = 0; i < n; ++i)
    bad += !both_nan[i] && std::memcmp(pa + i * es, pb + i * es, size_t(es)) != 0;
  return bad;
}

TEST(MergeKernel, FusedEqualsTheLibtorchPathBitForBitOnEveryIsaDtypeAndMethod) {
  torch::NoGradGuard no_grad;
  // 70001: several blocks of the thread split plus a ragged tail; 777: one thread
  for (int64_t n : {int64_t(70001), int64_t(777)}) {
    const auto base32 = values(n, 11);
    for (const Case& c : cases()) {
      std::vector<torch::Tensor> xs32;
      for (size_t i = 0; i < c.weights.size(); ++i) xs32.push_back(values(n, 20 + i, base32));
      // input types: all bf16, all f16, all f32, and mixed
      const std::vector<std::vector<MergeType>> typesets = {
          {MergeType::kBF16}, {MergeType::kF16}, {MergeType::kF32},
          {MergeType::kBF16, MergeType::kF32, MergeType::kF16}};
      for (const auto& ts : typesets) {
        auto as = [&](const torch::Tensor& t, size_t i) {
          return t.to(scalar_type(ts[i % ts.size()])).contiguous();
        };
        const auto base = as(base32, 0);
        std::vector<torch::Tensor> xs;
        for (size_t i = 0; i < xs32.size(); ++i) xs.push_back(as(xs32[i], i + 1));
        for (MergeType round : {MergeType::kF32, MergeType::kBF16, MergeType::kF16})
          for (MergeType out : {MergeType::kBF16, MergeType::kF16, MergeType::kF32}) {
            const auto want = torch_path(c, base, xs, round, out);
            for (Isa isa : isas_here()) {
              const auto got = fused_path(isa, c, base, xs, round, out);
              ASSERT_EQ(differing(got, want), 0)
                  << c.name << " n " << n << " inputs " << type_name(ts[0]) << (ts.size() > 1 ? "+mixed" : "")
                  << " dtype " << type_name(round) << " out " << type_name(out) << " isa "
                  << kernels::isa_name(isa);
            }
          }
      }
    }
  }
}

TEST(MergeKernel, MagnitudeSelectionKeepsTheKLargestTiesByLowestIndex) {
  torch::NoGradGuard no_grad;
  const int64_t n = 200003;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
  const auto base = torch::zeros({n});
  // few distinct magnitudes (most of the k-th largest value's entries are
  // ties), and the same mixed with distinct values that share their high bits
  const auto steps = (torch::randint(-6, 7, {n}, gen) * 0.25).to(torch::kFloat32);
  const auto mixed = torch::where(torch::rand({n}, gen) < 0.5, steps, torch::randn({n}, gen));
  for (const torch::Tensor& xt : {steps, mixed}) {
    const auto x = xt.contiguous();
    const auto a = x.abs();
    const auto idx = torch::arange(n);
    // the independent expectation: a stable descending sort's first k
    const auto order = std::get<1>(a.sort(/*stable=*/true, 0, /*descending=*/true));
    for (int64_t k : {int64_t(1), int64_t(777), n / 3, n / 2, n - 1, n}) {
      auto want = torch::zeros({n}, torch::kBool);
      want.index_fill_(0, order.narrow(0, 0, k), true);
      for (Isa isa : isas_here())
        for (int64_t held : {int64_t(-1), int64_t(0)}) {  // the bin held, or two more passes
          const auto keep = kernels::magnitude_keep_isa(isa, {x.data_ptr(), MergeType::kF32},
                                                        {base.data_ptr(), MergeType::kF32}, n, k,
                                                        MergeType::kF32, held);
          float thr;
          std::memcpy(&thr, &keep.threshold_bits, 4);
          const auto got = (a > thr) | ((a == thr) & (idx <= keep.tie_cut));
          EXPECT_EQ(got.sum().item<int64_t>(), k) << "k " << k;
          EXPECT_TRUE(torch::equal(got, want))
              << "k " << k << " isa " << kernels::isa_name(isa) << " held " << held;
        }
    }
  }
  EXPECT_THROW(kernels::magnitude_keep({steps.data_ptr(), MergeType::kF32},
                                       {base.data_ptr(), MergeType::kF32}, n, 0, MergeType::kF32),
               Error);
}

// ---- whole merges ----------------------------------------------------------------

std::string M(const std::string& n) {
  return std::string(FINMOE_TEST_DATA_DIR) + "/merge/models/" + n;
}

std::map<std::string, std::vector<char>> raw(const std::string& dir) {
  std::map<std::string, std::vector<char>> out;
  const CheckpointReader r = CheckpointReader::open(dir);
  for (const auto& n : r.names()) {
    const TensorView& v = r.get(n);
    out[n] = std::vector<char>(reinterpret_cast<const char*>(v.data),
                               reinterpret_cast<const char*>(v.data) + v.nbytes);
  }
  return out;
}

TEST(MergeKernel, WholeMergesWithTheFusedPathEqualTheLibtorchPath) {
  test::TempDir tmp;
  auto two = [](const std::string& a, const std::string& b) {
    return "models:\n  - model: " + M("a") + "\n    parameters: " + a + "\n  - model: " + M("b") +
           "\n    parameters: " + b + "\n";
  };
  const std::string models = two("{weight: 0.7, density: 0.4}", "{weight: 0.5, density: 0.8}");
  const std::vector<std::string> recipes = {
      "merge_method: linear\n" + two("{weight: 0.7}", "{weight: 0.5}") + "dtype: bfloat16\n",
      "merge_method: task_arithmetic\nbase_model: " + M("base") + "\n" +
          two("{weight: 0.7}", "{weight: 0.5}") +
          "parameters: {lambda: 0.8, normalize: true}\ndtype: float16\nout_dtype: bfloat16\n",
      "merge_method: ties\nbase_model: " + M("base") + "\n" + models + "dtype: bfloat16\n",
      "merge_method: ties\nbase_model: " + M("base") + "\n" + models + "out_dtype: float16\n"};
  for (size_t i = 0; i < recipes.size(); ++i) {
    MergeOptions o;
    o.progress = false;
    const std::string fused = tmp.str() + "/fused" + std::to_string(i);
    const std::string plain = tmp.str() + "/torch" + std::to_string(i);
    const MergeReport a = merge_models(parse_merge_recipe(recipes[i], "r"), fused, o);
    o.fused = false;
    const MergeReport b = merge_models(parse_merge_recipe(recipes[i], "r"), plain, o);
    EXPECT_TRUE(raw(fused) == raw(plain)) << recipes[i];
    EXPECT_EQ(a.bytes_read, b.bytes_read) << recipes[i];
    EXPECT_GT(a.bytes_read, 0u);
  }
}

}  // namespace
}  // namespace finmoe
