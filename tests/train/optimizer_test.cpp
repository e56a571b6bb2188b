// AdamW against a hand-written reference of PyTorch's update rule (and
// against libtorch's own torch::optim::AdamW), gradient clipping against
// its definition, and the learning-rate schedules against closed forms.
#include <gtest/gtest.h>

#include <cmath>
#include <numbers>

#include "../expect_error.h"
#include "../model/test_util.h"
#include "train/optimizer.h"
#include "train/schedule.h"

namespace finmoe {
namespace {

using test::message_of;

// PyTorch's AdamW in textbook form, one scalar at a time, in double.
struct RefAdamW {
  double lr, b1, b2, eps, wd;
  struct S {
    double m = 0, v = 0;
    int64_t t = 0;
  };
  void update(double& p, double g, S& s, bool decay) const {
    s.t += 1;
    if (decay) p -= lr * wd * p;
    s.m = b1 * s.m + (1 - b1) * g;
    s.v = b2 * s.v + (1 - b2) * g * g;
    const double mhat = s.m / (1 - std::pow(b1, double(s.t)));
    const double vhat = s.v / (1 - std::pow(b2, double(s.t)));
    p -= lr * mhat / (std::sqrt(vhat) + eps);
  }
};

TEST(AdamW, MatchesTheReferenceUpdateWithDecayGroupsAndSkippedTensors) {
  auto gen = at::detail::createCPUGenerator(3);
  auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  torch::Tensor w = at::normal(0.0, 1.0, {3, 4}, gen, opts);  // 2-D: decays
  torch::Tensor b = at::normal(0.0, 1.0, {4}, gen, opts);     // 1-D: no decay
  std::vector<double> rw(w.data_ptr<double>(), w.data_ptr<double>() + 12);
  std::vector<double> rb(b.data_ptr<double>(), b.data_ptr<double>() + 4);
  AdamWOptions o{0.9, 0.95, 1e-8, 0.1};
  AdamW opt({{"w", w}, {"b", b}}, o);
  RefAdamW ref{0, o.beta1, o.beta2, o.eps, o.weight_decay};
  std::vector<RefAdamW::S> sw(12), sb(4);
  const double lrs[] = {1e-2, 5e-3, 2e-3, 1e-3};
  for (int step = 0; step < 4; ++step) {
    auto gw = at::normal(0.0, 1.0, {3, 4}, gen, opts);
    auto gb = at::normal(0.0, 1.0, {4}, gen, opts);
    w.mutable_grad() = gw;
    // step 1: `b` has no gradient (an expert nobody chose): untouched, its t stays behind
    b.mutable_grad() = step == 1 ? torch::Tensor() : gb;
    opt.step(lrs[step]);
    ref.lr = lrs[step];
    for (int i = 0; i < 12; ++i) ref.update(rw[i], gw.data_ptr<double>()[i], sw[i], true);
    if (step != 1)
      for (int i = 0; i < 4; ++i) ref.update(rb[i], gb.data_ptr<double>()[i], sb[i], false);
    for (int i = 0; i < 12; ++i) EXPECT_NEAR(w.data_ptr<double>()[i], rw[i], 1e-12) << step;
    for (int i = 0; i < 4; ++i) EXPECT_NEAR(b.data_ptr<double>()[i], rb[i], 1e-12) << step;
  }
}

TEST(AdamW, AgreesWithLibtorchsAdamW) {
  auto gen = at::detail::createCPUGenerator(5);
  torch::Tensor a = at::normal(0.0, 1.0, {8, 5}, gen, torch::TensorOptions());
  torch::Tensor a2 = a.clone();
  AdamW ours({{"a", a}}, {0.9, 0.95, 1e-8, 0.05});
  torch::optim::AdamW theirs(
      {a2}, torch::optim::AdamWOptions(1e-2).betas({0.9, 0.95}).eps(1e-8).weight_decay(0.05));
  for (int step = 0; step < 5; ++step) {
    auto g = at::normal(0.0, 1.0, {8, 5}, gen, torch::TensorOptions());
    a.mutable_grad() = g.clone();
    a2.mutable_grad() = g.clone();
    ours.step(1e-2);
    theirs.step();
  }
  EXPECT_LT(test::max_abs_diff(a, a2), 1e-6);
}

TEST(AdamW, StateRoundTripsThroughItsFile) {
  test::TempDir dir;
  auto gen = at::detail::createCPUGenerator(7);
  torch::Tensor p = at::normal(0.0, 1.0, {4, 3}, gen, torch::TensorOptions());
  torch::Tensor q = at::normal(0.0, 1.0, {3}, gen, torch::TensorOptions());
  AdamW a({{"p", p}, {"q", q}}, {});
  p.mutable_grad() = torch::ones_like(p);
  q.mutable_grad() = torch::ones_like(q);
  a.step(1e-2);
  const std::string file = dir.str() + "/opt.safetensors";
  a.save(file);
  // a copy of the parameters with a restored optimizer continues identically
  torch::Tensor p2 = p.clone(), q2 = q.clone();
  AdamW b({{"p", p2}, {"q", q2}}, {});
  b.load(file);
  for (auto* o : {&a, &b}) {
    for (auto& [n, t] : o->params()) t.mutable_grad() = torch::full_like(t, 0.5);
    o->step(5e-3);
  }
  EXPECT_TRUE(torch::equal(p, p2));
  EXPECT_TRUE(torch::equal(q, q2));
  // a state for other parameters is refused, naming the tensor
  torch::Tensor r = torch::zeros({2});
  AdamW c({{"r", r}}, {});
  EXPECT_CONTAINS(message_of([&] { c.load(file); }), "exp_avg.r");
  torch::Tensor pbad = torch::zeros({3, 4});
  AdamW d({{"p", pbad}, {"q", q.clone()}}, {});
  EXPECT_CONTAINS(message_of([&] { d.load(file); }), "exp_avg.p");
}

TEST(ClipGradNorm, ScalesToTheMaximumNorm) {
  torch::Tensor a = torch::zeros({2}), b = torch::zeros({1}), c = torch::zeros({1});
  a.mutable_grad() = torch::tensor({3.0f, 0.0f});
  b.mutable_grad() = torch::tensor({4.0f});  // global norm 5; c has no gradient
  NamedTensors ps = {{"a", a}, {"b", b}, {"c", c}};
  EXPECT_NEAR(clip_grad_norm(ps, 0), 5.0, 1e-6);  // off: norm only
  EXPECT_FLOAT_EQ(a.grad()[0].item<float>(), 3.0f);
  EXPECT_NEAR(clip_grad_norm(ps, 1.0), 5.0, 1e-6);
  EXPECT_NEAR(a.grad()[0].item<float>(), 3.0 / (5.0 + 1e-6), 1e-6);
  EXPECT_NEAR(b.grad()[0].item<float>(), 4.0 / (5.0 + 1e-6), 1e-6);
  EXPECT_NEAR(clip_grad_norm(ps, 2.0), 1.0, 1e-5);  // below the maximum: unchanged
  EXPECT_NEAR(b.grad()[0].item<float>(), 0.8, 1e-5);
}

TEST(LrSchedule, CosineFollowsItsClosedForm) {
  LrSchedule s{"cosine", 1.0, 0.1, 10, 110};
  EXPECT_DOUBLE_EQ(s.at(0), 0.1);  // update 1 of a 10-step warmup
  EXPECT_DOUBLE_EQ(s.at(4), 0.5);
  EXPECT_DOUBLE_EQ(s.at(9), 1.0);                                      // warmup ends at the peak
  EXPECT_NEAR(s.at(34), 0.1 + 0.9 * (1 + std::sqrt(0.5)) / 2, 1e-12);  // a quarter: cos(pi/4)
  EXPECT_NEAR(s.at(59), 0.55, 1e-12);                                  // halfway
  EXPECT_NEAR(s.at(84), 0.1 + 0.9 * (1 - std::sqrt(0.5)) / 2, 1e-12);
  EXPECT_NEAR(s.at(109), 0.1, 1e-12);  // the last update uses min_lr
  EXPECT_NEAR(s.at(500), 0.1, 1e-12);  // and stays there
  for (int64_t i = 10; i < 110; ++i) EXPECT_LE(s.at(i), s.at(i - 1) + 1e-15);
}

TEST(LrSchedule, LinearAndConstant) {
  LrSchedule lin{"linear", 2.0, 0.0, 0, 100};
  EXPECT_NEAR(lin.at(0), 2.0 * 99 / 100, 1e-12);
  EXPECT_NEAR(lin.at(49), 1.0, 1e-12);
  EXPECT_NEAR(lin.at(99), 0.0, 1e-12);
  LrSchedule con{"constant", 3e-4, 0.0, 4, 100};
  EXPECT_NEAR(con.at(1), 1.5e-4, 1e-18);
  EXPECT_DOUBLE_EQ(con.at(3), 3e-4);
  EXPECT_DOUBLE_EQ(con.at(99), 3e-4);
  LrSchedule warm_only{"cosine", 1.0, 0.0, 10, 5};  // warmup longer than the run
  EXPECT_DOUBLE_EQ(warm_only.at(4), 0.5);
}

}  // namespace
}  // namespace finmoe
