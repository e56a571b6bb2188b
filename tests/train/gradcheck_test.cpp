// Gradients of the training objective (cross-entropy over labelled tokens +
// the MoE load-balancing loss) against central finite differences, in
// float64, for every layer variant: dense llama / qwen2 MLPs, the dense FinMoE
// MoE, sparse Mixtral and Qwen2-MoE (shared expert) and FineRMoE. Sparse
// routing is piecewise: an entry whose perturbation changes any token's
// experts is skipped (and must be rare). Also the KD loss: zero for a
// student equal to its teacher, and its gradient against finite differences
// and the closed form tau * (p_S - p_T).
#include <gtest/gtest.h>

#include <random>

#include "../model/test_util.h"
#include "finmoe/model.h"
#include "train/losses.h"

namespace finmoe {
namespace {

struct Objective {
  double alpha;  // load-balancing weight
  bool doc_mask;

  // loss and the routing it used
  std::pair<torch::Tensor, std::vector<torch::Tensor>> operator()(Transformer& m,
                                                                  const torch::Tensor& tokens,
                                                                  const torch::Tensor& labels,
                                                                  const torch::Tensor& docs) const {
    std::vector<RouterOutput> routers;
    ForwardOptions fo;
    fo.router_outputs = &routers;
    if (doc_mask) fo.document_ids = docs;
    auto logits = m.forward(tokens, fo);  // [B,T,V] float64
    const double n = double(labels.ne(kIgnoreLabel).sum().item<int64_t>());
    auto loss = lm_loss_sum(logits, labels) / n + load_balancing_loss(routers, alpha);
    std::vector<torch::Tensor> idx;
    for (auto& r : routers) idx.push_back(r.indices);
    return {loss, idx};
  }
};

bool same_routing(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (!torch::equal(a[i], b[i])) return false;
  return true;
}

class GradCheck : public ::testing::TestWithParam<std::string> {};

TEST_P(GradCheck, ParameterGradientsMatchFiniteDifferences) {
  const std::string type = GetParam();
  ModelConfig c = test::tiny_config(type);
  c.initializer_range = 0.1;
  Transformer m(c, torch::kFloat64);
  init_random(m, 17);
  // two rows of 6 tokens; some labels ignored; two documents in the second row
  auto tokens = torch::tensor({{5, 17, 42, 99, 3, 250}, {7, 64, 128, 11, 2, 77}}, torch::kInt64);
  auto labels =
      torch::tensor({{17, 42, -100, 3, 250, -100}, {64, 128, 11, 2, 77, 9}}, torch::kInt64);
  auto docs = torch::tensor({{0, 0, 0, 0, 0, 0}, {0, 0, 0, 1, 1, 1}}, torch::kInt64);
  const Objective f{c.is_moe() ? 0.05 : 0.0, /*doc_mask=*/type != "llama"};

  auto params = m.named_parameters();
  for (auto& [n, t] : params) t.requires_grad_(true);
  auto [loss, routing] = f(m, tokens, labels, docs);
  loss.backward();

  std::mt19937 rng(23);
  const double h = 1e-6;
  int checked = 0, skipped = 0, router_checked = 0;
  torch::NoGradGuard no_grad;
  for (auto& [name, t] : params) {
    ASSERT_TRUE(t.grad().defined() || name.find("experts.") != std::string::npos) << name;
    auto flat = t.view({-1});
    for (int k = 0; k < 3; ++k) {
      const int64_t i = int64_t(rng() % uint64_t(flat.numel()));
      const double orig = flat[i].item<double>();
      flat[i] = orig + h;
      auto [lp, rp] = f(m, tokens, labels, docs);
      flat[i] = orig - h;
      auto [lm, rm] = f(m, tokens, labels, docs);
      flat[i] = orig;
      if (!same_routing(rp, routing) || !same_routing(rm, routing)) {
        ++skipped;
        continue;
      }
      const double numeric = (lp.item<double>() - lm.item<double>()) / (2 * h);
      // an expert no token chose has no gradient at all
      const double analytic = t.grad().defined() ? t.grad().view({-1})[i].item<double>() : 0.0;
      EXPECT_NEAR(analytic, numeric, 1e-7 + 1e-5 * std::abs(numeric))
          << type << " " << name << "[" << i << "]";
      ++checked;
      if (name.ends_with("gate.weight") && name.find("experts") == std::string::npos)
        ++router_checked;
    }
  }
  EXPECT_GT(checked, 20);
  EXPECT_LE(skipped, checked / 20) << "too many routing flips";
  if (c.is_moe()) {
    EXPECT_GT(router_checked, 0);
  }
}

INSTANTIATE_TEST_SUITE_P(EveryLayerVariant, GradCheck,
                         ::testing::Values("llama", "qwen2", "finmoe_dense", "mixtral", "qwen2_moe",
                                           "finer_moe"));

TEST(GradCheck, LoadBalancingLossAddsARouterGradient) {
  // With everything else equal, alpha > 0 changes only what reaches the routers.
  ModelConfig c = test::tiny_config("mixtral");
  Transformer m(c, torch::kFloat64);
  init_random(m, 3);
  auto tokens = torch::tensor({{5, 17, 42, 99, 3, 250, 8, 9}}, torch::kInt64);
  auto labels = torch::tensor({{17, 42, 99, 3, 250, 8, 9, -100}}, torch::kInt64);
  auto grads = [&](double alpha) {
    for (auto& [n, t] : m.named_parameters()) {
      t.requires_grad_(true);
      t.mutable_grad() = torch::Tensor();
    }
    auto [loss, r] = Objective{alpha, false}(m, tokens, labels, {});
    loss.backward();
    std::map<std::string, torch::Tensor> g;
    for (auto& [n, t] : m.named_parameters())
      if (t.grad().defined()) g[n] = t.grad().clone();
    return g;
  };
  auto g0 = grads(0.0), g1 = grads(0.5);
  for (auto& [name, g] : g0) {
    const bool router = name.ends_with("block_sparse_moe.gate.weight");
    const double d = test::max_abs_diff(g, g1.at(name));
    if (router) {
      EXPECT_GT(d, 1e-6) << name;
    } else if (name.find("layers.1.block_sparse_moe.experts") != std::string::npos ||
               name.starts_with("model.norm") || name.starts_with("lm_head")) {
      // nothing after the last router sees the load-balancing loss
      EXPECT_EQ(d, 0.0) << name;
    }
  }
}

TEST(KdLoss, IsZeroWhenTheStudentIsTheTeacher) {
  auto gen = at::detail::createCPUGenerator(9);
  auto logits =
      at::normal(0.0, 3.0, {2, 5, 11}, gen, torch::TensorOptions().dtype(torch::kFloat64));
  auto labels = torch::tensor({{1, 2, -100, 4, 5}, {-100, 1, 2, 3, 4}}, torch::kInt64);
  auto s = logits.clone().requires_grad_(true);
  auto kl = forward_kl_sum(s, logits, labels, 2.0);
  EXPECT_EQ(kl.item<double>(), 0.0);
  kl.backward();
  EXPECT_LT(s.grad().abs().max().item<double>(), 1e-15);
}

TEST(KdLoss, GradientMatchesFiniteDifferencesAndTheClosedForm) {
  auto gen = at::detail::createCPUGenerator(10);
  auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  auto student = at::normal(0.0, 2.0, {2, 4, 7}, gen, opts);
  auto teacher = at::normal(0.0, 2.0, {2, 4, 7}, gen, opts);
  auto labels = torch::tensor({{1, -100, 3, 4}, {0, 1, -100, 6}}, torch::kInt64);
  for (double tau : {1.0, 2.5}) {
    auto s = student.clone().requires_grad_(true);
    auto kl = forward_kl_sum(s, teacher, labels, tau);
    kl.backward();
    // KL itself, written out: tau^2 sum_t sum_v pT (log pT - log pS)
    auto pT = torch::softmax(teacher / tau, -1), pS = torch::softmax(student / tau, -1);
    auto mask = labels.ne(-100).unsqueeze(-1).to(torch::kFloat64);  // [B,T,1]
    auto ref = (tau * tau * (pT * (pT.log() - pS.log())) * mask).sum().item<double>();
    EXPECT_NEAR(kl.item<double>(), ref, 1e-12);
    EXPECT_GT(kl.item<double>(), 0.0);
    // d/ds tau^2 KL = tau (pS - pT) at labelled positions, 0 elsewhere
    EXPECT_LT(test::max_abs_diff(s.grad(), tau * (pS - pT) * mask), 1e-12);
    torch::NoGradGuard g;
    auto flat = student.view({-1});
    for (int64_t i : {0, 9, 30, 55}) {
      const double orig = flat[i].item<double>(), h = 1e-6;
      flat[i] = orig + h;
      const double up = forward_kl_sum(student, teacher, labels, tau).item<double>();
      flat[i] = orig - h;
      const double down = forward_kl_sum(student, teacher, labels, tau).item<double>();
      flat[i] = orig;
      EXPECT_NEAR(s.grad().view({-1})[i].item<double>(), (up - down) / (2 * h), 1e-7) << i;
    }
  }
}

TEST(LmLoss, SumsCrossEntropyOverLabelledPositions) {
  auto gen = at::detail::createCPUGenerator(11);
  auto logits = at::normal(0.0, 1.0, {2, 3, 5}, gen, torch::TensorOptions().dtype(torch::kFloat64));
  auto labels = torch::tensor({{1, -100, 4}, {0, 2, -100}}, torch::kInt64);
  double ref = 0;
  auto acc = logits.accessor<double, 3>();
  for (int b = 0; b < 2; ++b)
    for (int t = 0; t < 3; ++t) {
      const int64_t y = labels[b][t].item<int64_t>();
      if (y == -100) continue;
      double z = 0;
      for (int v = 0; v < 5; ++v) z += std::exp(acc[b][t][v]);
      ref += std::log(z) - acc[b][t][y];
    }
  EXPECT_NEAR(lm_loss_sum(logits, labels).item<double>(), ref, 1e-12);
  EXPECT_EQ(lm_loss_sum(logits, torch::full({2, 3}, -100, torch::kInt64)).item<double>(), 0.0);
}

}  // namespace
}  // namespace finmoe
