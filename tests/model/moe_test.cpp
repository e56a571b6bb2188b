// MoE layers: the FineRMoE router against a plain re-implementation of
// Algorithm 1, the sparse permute/index_add path against a per-token loop,
// the dense FinMoE gate against Eq. 1-2, router outputs, the load-balancing
// loss, parameter counts and checkpoint round trips.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <set>

#include "../tolerance.h"
#include "finmoe/error.h"
#include "finmoe/finer_router.h"
#include "kernels/linear.h"
#include "model/moe.h"
#include "test_util.h"

namespace finmoe {
namespace {

ModelConfig finer_config(int64_t G_I, int64_t R_I, int64_t G_O, int64_t R_O, int64_t T_I,
                         bool concat = false, int64_t shared = 0) {
  nlohmann::json j = {{"model_type", "finer_moe"},
                      {"vocab_size", 50},
                      {"hidden_size", 24},
                      {"intermediate_size", 48},
                      {"num_hidden_layers", 1},
                      {"num_attention_heads", 4},
                      {"num_experts", G_I * R_I * G_O * R_O},
                      {"num_experts_per_tok", T_I * G_O},
                      {"moe_intermediate_size", 12},
                      {"shared_expert_intermediate_size", shared},
                      {"G_I", G_I},
                      {"R_I", R_I},
                      {"G_O", G_O},
                      {"R_O", R_O},
                      {"moe_concat_proj", concat}};
  return ModelConfig::from_json(j, "finer_config");
}

// Algorithm 1 for one token, written with loops: returns expert -> weight.
std::map<int64_t, double> reference_finer_route(const std::vector<float>& s, const ModelConfig& c) {
  const int64_t group = c.G_I * c.R_I, n_groups = c.G_O * c.R_O, T_I = c.T_I();
  std::vector<bool> sum_mask(s.size(), false), cc_mask(s.size(), false);
  std::vector<double> cc_score(size_t(n_groups), 0.0);
  for (int64_t g = 0; g < n_groups; ++g) {
    std::vector<int64_t> idx(static_cast<size_t>(group));
    std::iota(idx.begin(), idx.end(), g * group);
    std::sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return s[a] > s[b]; });
    for (int64_t i = 0; i < T_I; ++i) sum_mask[size_t(idx[size_t(i)])] = true;
    for (int64_t j = 0; j < group; ++j) cc_score[size_t(g)] += s[size_t(g * group + j)];
  }
  for (int64_t o = 0; o < c.G_O; ++o) {
    int64_t best = 0;
    for (int64_t r = 1; r < c.R_O; ++r)
      if (cc_score[size_t(o * c.R_O + r)] > cc_score[size_t(o * c.R_O + best)]) best = r;
    const int64_t g = o * c.R_O + best;
    for (int64_t j = 0; j < group; ++j) cc_mask[size_t(g * group + j)] = true;
  }
  std::vector<int64_t> allowed;
  for (size_t e = 0; e < s.size(); ++e)
    if (sum_mask[e] && cc_mask[e]) allowed.push_back(int64_t(e));
  std::sort(allowed.begin(), allowed.end(), [&](int64_t a, int64_t b) { return s[a] > s[b]; });
  allowed.resize(size_t(c.num_experts_per_tok));
  double z = 0;
  for (int64_t e : allowed) z += std::exp(double(s[size_t(e)]));
  std::map<int64_t, double> out;
  for (int64_t e : allowed) out[e] = std::exp(double(s[size_t(e)])) / z;
  return out;
}

// Token t's routing as expert -> weight.
std::map<int64_t, double> routed_row(const RouterOutput& r, int64_t t) {
  std::map<int64_t, double> got;
  for (int64_t i = 0; i < r.indices.size(1); ++i)
    got[r.indices[t][i].item<int64_t>()] = r.weights[t][i].item<double>();
  return got;
}

// The same experts as `want`, each weight within 1e-6.
void expect_same_route(const std::map<int64_t, double>& got, const std::map<int64_t, double>& want,
                       int64_t t) {
  ASSERT_EQ(got.size(), want.size()) << "token " << t;
  for (const auto& [e, w] : want) {
    ASSERT_TRUE(got.count(e)) << "token " << t << ": expert " << e << " not selected";
    EXPECT_NEAR(got.at(e), w, 1e-6) << "token " << t << " expert " << e;
  }
}

struct Granularity {
  int64_t G_I, R_I, G_O, R_O, T_I;
};

class FinerRouter : public ::testing::TestWithParam<Granularity> {};

TEST_P(FinerRouter, MatchesAlgorithmOneOnRandomLogits) {
  const Granularity g = GetParam();
  const ModelConfig c = finer_config(g.G_I, g.R_I, g.G_O, g.R_O, g.T_I);
  auto gen = at::detail::createCPUGenerator(11);
  auto logits = at::normal(0.0, 2.0, {200, c.num_experts}, gen, torch::TensorOptions());
  // both ways route() runs: plain loops without autograd (inference), tensor
  // ops when the logits need gradients (training)
  for (const bool grad : {false, true}) {
    SCOPED_TRACE(grad ? "tensor ops (autograd)" : "host loops (no autograd)");
    RouterOutput r = route(grad ? logits.clone().requires_grad_() : logits, c);
    EXPECT_EQ(r.weights.requires_grad(), grad);
    r.weights = r.weights.detach();
    ASSERT_EQ(r.indices.sizes(), (std::vector<int64_t>{200, c.num_experts_per_tok}));
    for (int64_t t = 0; t < 200; ++t) {
      auto row = logits[t].contiguous();
      std::vector<float> s(row.data_ptr<float>(), row.data_ptr<float>() + c.num_experts);
      auto want = reference_finer_route(s, c);
      const auto got = routed_row(r, t);
      ASSERT_NO_FATAL_FAILURE(expect_same_route(got, want, t));
      // every output slice g_o gets exactly T_I experts, all from one candidate r_o
      std::map<int64_t, std::set<int64_t>> per_slice;
      for (const auto& [e, w] : got)
        per_slice[e / (c.R_O * c.G_I * c.R_I)].insert(e / (c.G_I * c.R_I));
      EXPECT_EQ(int64_t(per_slice.size()), c.G_O);
      for (const auto& [o, groups] : per_slice) EXPECT_EQ(groups.size(), 1u) << "slice " << o;
    }
  }
}

// Qwen2-MoE routing (softmax over all experts, top-k, renormalised or not)
// and Mixtral's (softmax over the top-k logits): the host loops equal the
// tensor ops, the order of the k slots included.
TEST(Moe, TopKRoutingOnTheHostEqualsTheTensorOps) {
  for (const auto& [type, norm] : {std::pair{"qwen2_moe", true}, {"qwen2_moe", false}, {"mixtral", true}}) {
    SCOPED_TRACE(std::string(type) + (norm ? " norm_topk_prob" : ""));
    nlohmann::json j = {{"model_type", type}, {"vocab_size", 16}, {"hidden_size", 8},
                        {"intermediate_size", 16}, {"num_hidden_layers", 1}, {"num_attention_heads", 2},
                        {"num_key_value_heads", 1}, {"num_local_experts", 6}, {"num_experts", 6},
                        {"num_experts_per_tok", 2}, {"moe_intermediate_size", 8}, {"norm_topk_prob", norm}};
    const ModelConfig c = ModelConfig::from_json(j, "topk_routing");
    EXPECT_EQ(c.routing(), std::string(type) == "mixtral" ? ModelConfig::Routing::TopKSoftmax
                                                           : ModelConfig::Routing::SoftmaxTopK);
    auto gen = at::detail::createCPUGenerator(5);
    auto logits = at::normal(0.0, 2.0, {300, 6}, gen, torch::TensorOptions());
    RouterOutput host = route(logits, c), ops = route(logits.clone().requires_grad_(), c);
    ASSERT_FALSE(host.weights.requires_grad());
    ASSERT_TRUE(ops.weights.requires_grad());
    EXPECT_TRUE(torch::equal(host.indices, ops.indices));
    EXPECT_LT((host.weights - ops.weights.detach()).abs().max().item<double>(), 1e-6);
    if (norm) {
      EXPECT_LT((host.weights.sum(-1) - 1).abs().max().item<double>(), 1e-6);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, FinerRouter,
                         ::testing::Values(Granularity{4, 1, 1, 1, 2},  // plain top-2 of 4
                                           Granularity{2, 2, 2, 2, 1},  // 16 experts, top-2
                                           Granularity{4, 1, 2, 2, 1},  // the paper's shape, small
                                           Granularity{2, 3, 3, 1, 2},  // G_O=3, no candidates
                                           Granularity{1, 4, 2, 3, 3}));  // replicas only

// v · Wᵀ in float64: references are computed in another precision than the code they check.
torch::Tensor mm64(const torch::Tensor& v, const torch::Tensor& W) {
  return v.to(torch::kFloat64).matmul(W.to(torch::kFloat64).t());
}

// One token's MoE output [1, D] in float64: each routed (expert, weight) pair
// into its G_O slice, the concatenation projection, the gated shared expert.
torch::Tensor reference_token(MoeImpl& moe, const ModelConfig& c, const torch::Tensor& xt,
                              const std::vector<std::pair<int64_t, double>>& routed) {
  const int64_t D = c.hidden_size, slice = D / c.G_O;
  auto swiglu = [](Mlp& m, const torch::Tensor& v) {
    auto h = torch::silu(mm64(v, m->gate_proj->weight)) * mm64(v, m->up_proj->weight);
    return mm64(h, m->down_proj->weight);
  };
  auto out = torch::zeros({1, D}, torch::kFloat64);
  for (const auto& [e, w] : routed) {
    const int64_t g_o = e / (c.R_O * c.G_I * c.R_I);
    out.narrow(1, g_o * slice, slice) += w * swiglu(moe.experts[size_t(e)], xt);
  }
  if (moe.concat_proj) out = mm64(out, moe.concat_proj->weight);
  if (moe.shared_expert)
    out = out + swiglu(moe.shared_expert, xt) *
                    torch::sigmoid(mm64(xt, moe.shared_expert_gate->weight));
  return out;
}

// The MoE block computed token by token with plain float64 matmuls.
torch::Tensor reference_moe(MoeImpl& moe, const ModelConfig& c, const torch::Tensor& x,
                            const RouterOutput& r) {
  std::vector<torch::Tensor> rows;
  for (int64_t t = 0; t < x.size(0); ++t) {
    std::vector<std::pair<int64_t, double>> routed;
    for (int64_t i = 0; i < r.indices.size(1); ++i)
      routed.emplace_back(r.indices[t][i].item<int64_t>(), r.weights[t][i].item<double>());
    rows.push_back(reference_token(moe, c, x[t].unsqueeze(0).to(torch::kFloat64), routed));
  }
  return torch::cat(rows);
}

void randomize(torch::nn::Module& m, uint64_t seed) {
  torch::NoGradGuard g;
  auto gen = at::detail::createCPUGenerator(seed);
  for (auto& p : m.parameters()) p.copy_(at::normal(0.0, 0.3, p.sizes(), gen, p.options()));
}

TEST(Moe, SparsePathEqualsPerTokenLoopWithConcatAndSharedExpert) {
  for (bool concat : {false, true}) {
    const ModelConfig c = finer_config(2, 2, 2, 2, 1, concat, /*shared=*/16);
    Moe moe(c, torch::TensorOptions());
    randomize(*moe, 5);
    auto x = at::normal(0.0, 1.0, {37, c.hidden_size}, at::detail::createCPUGenerator(6),
                        torch::TensorOptions());
    torch::NoGradGuard g;
    RouterOutput r;
    auto y = moe(x, &r);
    EXPECT_TRUE(test::AllClose(y, reference_moe(*moe, c, x, r), 1e-5)) << "concat " << concat;
  }
}

// What `bench decode` counts as a step's weights: a MoE layer in inference
// reads its router, every expert some token chose (once, however many tokens
// chose it) and its shared expert, and nothing else.
TEST(Moe, InferenceReadsTheChosenExpertsWeightsOnce) {
  const ModelConfig c = finer_config(2, 2, 2, 2, 1, /*concat=*/true, /*shared=*/16);
  Moe moe(c, torch::TensorOptions());
  randomize(*moe, 5);
  const auto bytes = [](const torch::Tensor& w) { return uint64_t(w.numel() * w.element_size()); };
  const auto mlp_bytes = [&](Mlp& m) {
    return bytes(m->gate_proj->weight) + bytes(m->up_proj->weight) + bytes(m->down_proj->weight);
  };
  torch::NoGradGuard g;
  for (const int64_t T : {1, 3, 37}) {
    auto x = at::normal(0.0, 1.0, {T, c.hidden_size}, at::detail::createCPUGenerator(uint64_t(T)),
                        torch::TensorOptions());
    RouterOutput r;
    const uint64_t before = kernels::weight_bytes_read();
    moe(x, &r);
    const uint64_t read = kernels::weight_bytes_read() - before;
    const auto idx = r.indices.flatten();
    std::set<int64_t> chosen(idx.data_ptr<int64_t>(), idx.data_ptr<int64_t>() + idx.numel());
    uint64_t want = bytes(moe->gate->weight) + bytes(moe->concat_proj->weight) +
                    mlp_bytes(moe->shared_expert) + bytes(moe->shared_expert_gate->weight);
    for (const int64_t e : chosen) want += mlp_bytes(moe->experts[size_t(e)]);
    EXPECT_EQ(read, want) << "T=" << T << ", " << chosen.size() << " experts chosen";
  }
}

TEST(Moe, DenseMoeIsSoftmaxWeightedSumOfAllExperts) {
  auto c = test::tiny_config("finmoe_dense");
  Moe moe(c, torch::TensorOptions());
  randomize(*moe, 8);
  auto x = at::normal(0.0, 1.0, {9, c.hidden_size}, at::detail::createCPUGenerator(9),
                      torch::TensorOptions());
  torch::NoGradGuard g;
  auto G = torch::softmax(mm64(x, moe->gate->weight), -1);  // Eq. 2, [T, N]
  auto want = torch::zeros(x.sizes(), torch::kFloat64);
  for (int64_t i = 0; i < c.num_experts; ++i) {
    auto& f = moe->experts[size_t(i)];
    auto h = torch::silu(mm64(x, f->gate_proj->weight)) * mm64(x, f->up_proj->weight);
    want += G.select(1, i).unsqueeze(1) * mm64(h, f->down_proj->weight);  // Eq. 1
  }
  EXPECT_TRUE(test::AllClose(moe(x), want, 1e-5));
}

TEST(Moe, ForwardReturnsOneRouterOutputPerMoeLayer) {
  auto c = test::tiny_config("qwen2_moe");  // layer 0 dense (mlp_only_layers)
  Transformer m(c);
  init_random(m, 3);
  std::vector<RouterOutput> routers;
  torch::NoGradGuard g;
  m.forward(torch::randint(c.vocab_size, {2, 7}, torch::kInt64), {.document_ids = {}, .router_outputs = &routers});
  ASSERT_EQ(routers.size(), 1u);
  EXPECT_EQ(routers[0].layer, 1);
  EXPECT_EQ(routers[0].logits.sizes(), (std::vector<int64_t>{14, 6}));
  EXPECT_EQ(routers[0].indices.sizes(), (std::vector<int64_t>{14, 2}));
  // qwen2_moe without norm_topk_prob: the top-2 of a softmax over all 6
  auto probs = torch::softmax(routers[0].logits, -1);
  EXPECT_LT(test::max_abs_diff(routers[0].weights, probs.gather(1, routers[0].indices)), 1e-6);
  EXPECT_TRUE((routers[0].weights.sum(-1) < 1.0).all().item<bool>());
}

TEST(Moe, LoadBalancingLossMatchesDefinitionAndHasGradient) {
  const int64_t T = 30, N = 8, K = 2;
  auto gen = at::detail::createCPUGenerator(4);
  auto logits = at::normal(0.0, 1.0, {T, N}, gen, torch::TensorOptions()).requires_grad_(true);
  RouterOutput r;
  r.logits = logits;
  r.indices = std::get<1>(logits.detach().topk(K, -1));
  r.weights = torch::ones({T, K});
  const double alpha = 0.01;
  auto loss = load_balancing_loss({r, r}, alpha);
  // by the definition, with loops
  auto s = torch::softmax(logits.detach(), -1);
  double want = 0;
  for (int64_t i = 0; i < N; ++i) {
    double count = 0, p = 0;
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t k = 0; k < K; ++k) count += r.indices[t][k].item<int64_t>() == i;
      p += s[t][i].item<double>();
    }
    want += (double(N) / double(K * T) * count) * (p / double(T));
  }
  want *= alpha * 2;  // two layers
  EXPECT_NEAR(loss.item<double>(), want, 1e-7);
  loss.backward();
  EXPECT_GT(logits.grad().abs().sum().item<double>(), 0.0);
  // perfectly balanced uniform routing gives alpha per layer
  RouterOutput u;
  u.logits = torch::zeros({4, 4});
  u.indices = torch::arange(4, torch::kInt64).view({4, 1});
  EXPECT_NEAR(load_balancing_loss({u}, 0.5).item<double>(), 0.5, 1e-7);
}

// #P by hand for the finer_moe tiny config (test_util.h): D=48, V=300, 2 layers,
// 6 heads of 8, 2 KV heads, qkv bias, E=16 experts of width 20 writing D/2,
// shared expert 40 with its gate, concat projection, untied head.
TEST(Moe, ParameterCountsMatchTheFormula) {
  auto c = test::tiny_config("finer_moe");
  const int64_t D = 48, V = 300, kv = 16;
  const int64_t attn = D * D + 2 * D * kv + D * D + D + 2 * kv;
  const int64_t expert = 2 * D * 20 + 20 * (D / 2);
  const int64_t moe = 16 * D + 16 * expert + (3 * D * 40 + D) + D * D;
  const int64_t layer = 2 * D + attn + moe;
  const int64_t total = 2 * V * D + D + 2 * layer;
  const int64_t active = total - 2 * (16 - 2) * expert;
  EXPECT_EQ(c.param_count(), total);
  EXPECT_EQ(c.active_param_count(), active);
  Transformer m(c);
  EXPECT_EQ(m.param_count().total, total);
  EXPECT_EQ(m.param_count().active, active);
}

class MoeCheckpoint : public ::testing::TestWithParam<std::string> {};

TEST_P(MoeCheckpoint, SaveLoadRoundTripIsBitExact) {
  Transformer m(test::tiny_config(GetParam()), torch::kBFloat16);
  init_random(m, 21);
  test::TempDir dir;
  save_model(m, dir.str());
  auto back = load_model(dir.str());
  EXPECT_EQ(back.dtype(), torch::kBFloat16);
  ModelConfig want = m.config();
  want.torch_dtype = "bfloat16";
  // the saved config is the model's plus, for finmoe's own formats, the
  // auto_map of the HF remote code written beside it (hf_remote_code.h)
  auto got = back.config().to_json();
  const bool remote_code = GetParam() == "finer_moe" || GetParam() == "finmoe_dense";
  EXPECT_EQ(got.contains("auto_map"), remote_code);
  got.erase("auto_map");
  EXPECT_EQ(got, want.to_json());
  auto a = m.named_parameters(), b = back.named_parameters();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a[i].first, b[i].first);
    EXPECT_TRUE(torch::equal(a[i].second, b[i].second)) << a[i].first;
  }
  // the declared tensor list is exactly what the module holds
  auto spec = expected_tensors(m.config());
  std::set<std::string> declared, held;
  for (const auto& t : spec) declared.insert(t.name);
  for (const auto& [name, t] : a) held.insert(name);
  EXPECT_EQ(declared, held);
}

INSTANTIATE_TEST_SUITE_P(Formats, MoeCheckpoint,
                         ::testing::Values("mixtral", "qwen2_moe", "finer_moe", "finmoe_dense"));

TEST(MoeConfig, InconsistentGranularityIsAnErrorNamingTheField) {
  auto j = test::tiny_config("finer_moe").to_json();
  j["num_experts"] = 12;
  try {
    ModelConfig::from_json(j, "x/config.json");
    FAIL() << "accepted 12 experts for G_I*R_I*G_O*R_O = 16";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("x/config.json: field 'num_experts'"), std::string::npos)
        << e.what();
  }
  j = test::tiny_config("finer_moe").to_json();
  j["num_experts_per_tok"] = 3;  // not a multiple of G_O = 2
  EXPECT_THROW(ModelConfig::from_json(j), Error);
  j = test::tiny_config("mixtral").to_json();
  j["num_experts_per_tok"] = 5;  // more than the 4 experts
  EXPECT_THROW(ModelConfig::from_json(j), Error);
}

}  // namespace
}  // namespace finmoe

namespace finmoe {
namespace {

TEST(Moe, TrainingForwardGivesGradientsOnlyToRoutedExperts) {
  auto c = test::tiny_config("mixtral");
  c.num_experts = 6;
  c.finalize("test");
  Transformer m(c);
  init_random(m, 12);
  for (auto& [name, t] : m.named_parameters()) t.requires_grad_(true);
  std::vector<RouterOutput> routers;
  auto ids = torch::randint(c.vocab_size, {1, 2}, torch::kInt64);  // 2 tokens: at most 4 experts used
  auto logits = m.forward(ids, {.document_ids = {}, .router_outputs = &routers});
  auto loss = logits.logsumexp(-1).mean() + load_balancing_loss(routers, 0.01);
  loss.backward();
  ASSERT_EQ(routers.size(), 2u);
  for (const auto& r : routers) {
    std::set<int64_t> used;
    for (int64_t v : std::vector<int64_t>(r.indices.data_ptr<int64_t>(),
                                          r.indices.data_ptr<int64_t>() + r.indices.numel()))
      used.insert(v);
    for (const auto& [name, t] : m.named_parameters()) {
      const std::string p = "model.layers." + std::to_string(r.layer) + ".block_sparse_moe.experts.";
      if (!name.starts_with(p)) continue;
      const int64_t e = std::stoll(name.substr(p.size()));
      const bool has_grad = t.grad().defined() && t.grad().abs().sum().item<double>() > 0;
      EXPECT_EQ(has_grad, used.count(e) == 1) << name;
    }
    // the router learns through both the weights and the balancing loss
    const std::string gate = "model.layers." + std::to_string(r.layer) + ".block_sparse_moe.gate.weight";
    for (const auto& [name, t] : m.named_parameters()) {
      if (name == gate) {
        EXPECT_GT(t.grad().abs().sum().item<double>(), 0.0);
      }
    }
  }
}

}  // namespace
}  // namespace finmoe

// ---- finer_moe router_mode separate (FineRMoE §4.3, Table 3's ablation) ----

namespace finmoe {
namespace {

ModelConfig separate_config(ModelConfig c) {
  auto j = c.to_json();
  j["router_mode"] = "separate";
  return ModelConfig::from_json(j, "separate_config");
}

// router_mode separate for one token, with loops: expert -> weight. `s` the
// experts' logits (gate), `cc` the candidates' logits (concat_gate, G_O*R_O):
// the best T_I of each sum group by s, the best candidate of each slice by cc,
// then the k allowed experts by s and one softmax over them.
std::map<int64_t, double> reference_separate_route(const std::vector<double>& s,
                                                   const std::vector<double>& cc,
                                                   const ModelConfig& c) {
  const int64_t group = c.G_I * c.R_I, n_groups = c.G_O * c.R_O, T_I = c.T_I();
  std::vector<bool> sum_mask(s.size(), false), cc_mask(s.size(), false);
  for (int64_t g = 0; g < n_groups; ++g) {
    std::vector<int64_t> idx(static_cast<size_t>(group));
    std::iota(idx.begin(), idx.end(), g * group);
    std::sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return s[a] > s[b]; });
    for (int64_t i = 0; i < T_I; ++i) sum_mask[size_t(idx[size_t(i)])] = true;
  }
  for (int64_t o = 0; o < c.G_O; ++o) {
    int64_t best = 0;
    for (int64_t r = 1; r < c.R_O; ++r)
      if (cc[size_t(o * c.R_O + r)] > cc[size_t(o * c.R_O + best)]) best = r;
    for (int64_t j = 0; j < group; ++j) cc_mask[size_t((o * c.R_O + best) * group + j)] = true;
  }
  std::vector<int64_t> allowed;
  for (size_t e = 0; e < s.size(); ++e)
    if (sum_mask[e] && cc_mask[e]) allowed.push_back(int64_t(e));
  std::sort(allowed.begin(), allowed.end(), [&](int64_t a, int64_t b) { return s[a] > s[b]; });
  allowed.resize(size_t(c.num_experts_per_tok));
  double z = 0;
  for (int64_t e : allowed) z += std::exp(s[size_t(e)]);
  std::map<int64_t, double> out;
  for (int64_t e : allowed) out[e] = std::exp(s[size_t(e)]) / z;
  return out;
}

std::vector<double> row_of(const torch::Tensor& m, int64_t t) {
  auto r = m[t].to(torch::kFloat64).contiguous();
  return std::vector<double>(r.data_ptr<double>(), r.data_ptr<double>() + r.numel());
}

class SeparateRouter : public ::testing::TestWithParam<Granularity> {};

TEST_P(SeparateRouter, MatchesTheLoopReferenceAndReportsTheConcatenationChoice) {
  const Granularity g = GetParam();
  const ModelConfig c = separate_config(finer_config(g.G_I, g.R_I, g.G_O, g.R_O, g.T_I));
  auto gen = at::detail::createCPUGenerator(31);
  const int64_t T = 200, C = c.G_O * c.R_O;
  auto logits = at::normal(0.0, 2.0, {T, c.num_experts}, gen, torch::TensorOptions());
  auto cc = at::normal(0.0, 2.0, {T, C}, gen, torch::TensorOptions());
  RouterOutput concat;
  RouterOutput r = route(logits, c, {}, cc, &concat);
  ASSERT_EQ(r.indices.sizes(), (std::vector<int64_t>{T, c.num_experts_per_tok}));
  ASSERT_EQ(concat.logits.sizes(), (std::vector<int64_t>{T, C}));
  ASSERT_EQ(concat.indices.sizes(), (std::vector<int64_t>{T, c.G_O}));
  for (int64_t t = 0; t < T; ++t) {
    const auto s = row_of(logits, t), ct = row_of(cc, t);
    auto want = reference_separate_route(s, ct, c);
    const auto got = routed_row(r, t);
    ASSERT_NO_FATAL_FAILURE(expect_same_route(got, want, t));
    // the concatenation router's choice: each slice's best candidate and its probability
    for (int64_t o = 0; o < c.G_O; ++o) {
      int64_t best = 0;
      double z = 0;
      for (int64_t j = 0; j < c.R_O; ++j) {
        z += std::exp(ct[size_t(o * c.R_O + j)]);
        if (ct[size_t(o * c.R_O + j)] > ct[size_t(o * c.R_O + best)]) best = j;
      }
      EXPECT_EQ(concat.indices[t][o].item<int64_t>(), o * c.R_O + best) << "token " << t;
      EXPECT_NEAR(concat.weights[t][o].item<double>(), std::exp(ct[size_t(o * c.R_O + best)]) / z,
                  1e-6);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, SeparateRouter,
                         ::testing::Values(Granularity{2, 2, 2, 2, 1},   // 16 experts, top-2
                                           Granularity{4, 1, 2, 2, 1},   // the paper's shape, small
                                           Granularity{2, 1, 1, 3, 1},   // one slice, 3 candidates
                                           Granularity{1, 4, 2, 3, 3})); // replicas only

TEST(SeparateRouter, GroupSumsAsConcatenationLogitsGiveTheSingleRouter) {
  // Algorithm 1 scores a candidate by its group's summed logits: a second
  // router that outputs exactly those sums must route as the single router.
  const ModelConfig single = finer_config(4, 1, 2, 2, 1);
  const ModelConfig separate = separate_config(single);
  auto logits = at::normal(0.0, 1.0, {64, single.num_experts}, at::detail::createCPUGenerator(8),
                           torch::TensorOptions());
  auto sums = logits.view({64, 4, 4}).sum(-1);  // [T, G_O*R_O]
  RouterOutput a = route(logits, single), b = route(logits, separate, {}, sums);
  EXPECT_TRUE(torch::equal(a.indices, b.indices));
  // single routes in host loops without autograd, separate through tensor ops
  EXPECT_LT((a.weights - b.weights).abs().max().item<double>(), 1e-6);
}

// The whole layer from x alone in float64 (both routers, the loop reference
// routing, each expert as plain matmuls), never through route() or the
// grouped kernels.
torch::Tensor reference_separate_moe(MoeImpl& moe, const ModelConfig& c, const torch::Tensor& x) {
  auto logits = mm64(x, moe.gate->weight), cc = mm64(x, moe.concat_gate->weight);
  std::vector<torch::Tensor> rows;
  for (int64_t t = 0; t < x.size(0); ++t) {
    const auto route = reference_separate_route(row_of(logits, t), row_of(cc, t), c);
    rows.push_back(reference_token(moe, c, x[t].unsqueeze(0).to(torch::kFloat64),
                                   {route.begin(), route.end()}));
  }
  return torch::cat(rows);
}

TEST(Moe, SeparateRoutersLayerEqualsLoopReferenceOnKernelAndAutogradPaths) {
  for (bool concat : {false, true}) {
    const ModelConfig c = separate_config(finer_config(2, 2, 2, 2, 1, concat, /*shared=*/16));
    Moe moe(c, torch::TensorOptions());
    ASSERT_TRUE(moe->concat_gate);
    EXPECT_EQ(moe->concat_gate->weight.sizes(), (std::vector<int64_t>{4, c.hidden_size}));
    randomize(*moe, 5);
    auto x = at::normal(0.0, 1.0, {37, c.hidden_size}, at::detail::createCPUGenerator(6),
                        torch::TensorOptions());
    auto want = reference_separate_moe(*moe, c, x);
    torch::Tensor inference;
    {
      torch::NoGradGuard g;  // the grouped CPU kernels
      inference = moe(x);
    }
    auto training = moe(x).detach();  // autograd: the permute/index_add path
    EXPECT_TRUE(test::AllClose(inference, want, 1e-5)) << "concat " << concat;
    EXPECT_TRUE(test::AllClose(training, want, 1e-5)) << "concat " << concat;
  }
}

// Eq. 11 per output slice with loops: alpha/G_O * sum over slices of
// sum_j f_j P_j, f_j = R_O/L * #tokens choosing candidate j, P_j = mean softmax.
double reference_concat_lbl(const torch::Tensor& logits, const torch::Tensor& chosen, int64_t G_O,
                            int64_t R_O, double alpha) {
  const int64_t T = logits.size(0);
  double total = 0;
  for (int64_t o = 0; o < G_O; ++o) {
    auto p = torch::softmax(logits.narrow(1, o * R_O, R_O).to(torch::kFloat64), -1);
    for (int64_t j = 0; j < R_O; ++j) {
      double count = 0, P = 0;
      for (int64_t t = 0; t < T; ++t) {
        count += chosen[t][o].item<int64_t>() == o * R_O + j;
        P += p[t][j].item<double>();
      }
      total += (double(R_O) / double(T) * count) * (P / double(T));
    }
  }
  return alpha * total / double(G_O);
}

TEST(Moe, ConcatLoadBalancingLossMatchesEquation11PerSlice) {
  const ModelConfig c = separate_config(finer_config(2, 1, 2, 3, 1));
  auto gen = at::detail::createCPUGenerator(9);
  const int64_t rows = 3, L = 10, T = rows * L;
  auto cc = at::normal(0.0, 1.0, {T, 6}, gen, torch::TensorOptions()).requires_grad_(true);
  RouterOutput concat;
  route(at::normal(0.0, 1.0, {T, c.num_experts}, gen, torch::TensorOptions()), c, {}, cc, &concat);
  const double alpha = 0.01;
  auto batch = concat_load_balancing_loss({concat, concat}, alpha, LoadBalance::Batch, rows, {});
  EXPECT_NEAR(batch.item<double>(),
              2 * reference_concat_lbl(cc.detach(), concat.indices, 2, 3, alpha), 1e-7);
  // per sequence: the mean of each row's own loss
  double want = 0;
  for (int64_t r = 0; r < rows; ++r)
    want += reference_concat_lbl(cc.detach().narrow(0, r * L, L), concat.indices.narrow(0, r * L, L),
                                 2, 3, alpha);
  auto seq = concat_load_balancing_loss({concat}, alpha, LoadBalance::Sequence, rows, {});
  EXPECT_NEAR(seq.item<double>(), want / rows, 1e-7);
  seq.backward();
  EXPECT_GT(cc.grad().abs().sum().item<double>(), 0.0);
}

TEST(Moe, SeparateRoutersBothLearnFromTheLossAndTheBalancingLoss) {
  ModelConfig c = separate_config(test::tiny_config("finer_moe"));
  Transformer m(c);
  init_random(m, 14);
  for (auto& [name, t] : m.named_parameters()) t.requires_grad_(true);
  auto grad_of = [&](const std::string& name) {
    for (const auto& [n, t] : m.named_parameters())
      if (n == name) return t.grad().defined() ? t.grad().abs().sum().item<double>() : 0.0;
    ADD_FAILURE() << "no parameter " << name;
    return 0.0;
  };
  auto ids = torch::randint(c.vocab_size, {2, 6}, torch::kInt64);
  std::vector<RouterOutput> routers, concat;
  torch::Tensor logits;
  {
    ConcatRouterSink sink(&concat);
    logits = m.forward(ids, {.document_ids = {}, .router_outputs = &routers});
  }
  ASSERT_EQ(routers.size(), 2u);
  ASSERT_EQ(concat.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(concat[i].layer, routers[i].layer);
    EXPECT_EQ(concat[i].logits.sizes(), (std::vector<int64_t>{12, 4}));
  }
  // the language-model loss alone reaches both routers of every layer
  logits.logsumexp(-1).mean().backward({}, /*retain_graph=*/true);
  for (int layer = 0; layer < 2; ++layer) {
    const std::string p = "model.layers." + std::to_string(layer) + ".mlp.";
    EXPECT_GT(grad_of(p + "gate.weight"), 0.0) << layer;
    EXPECT_GT(grad_of(p + "concat_gate.weight"), 0.0) << layer;
  }
  // the concatenation routers' balancing loss reaches them, and not the last
  // layer's expert router (which only earlier layers' outputs depend on)
  for (auto& [name, t] : m.named_parameters())
    if (t.grad().defined()) t.grad().zero_();
  concat_load_balancing_loss(concat, 0.01, LoadBalance::Sequence, 2, {}).backward();
  for (int layer = 0; layer < 2; ++layer)
    EXPECT_GT(grad_of("model.layers." + std::to_string(layer) + ".mlp.concat_gate.weight"), 0.0)
        << layer;
  EXPECT_EQ(grad_of("model.layers.1.mlp.gate.weight"), 0.0);
  // without a sink nothing is collected
  std::vector<RouterOutput> more;
  torch::NoGradGuard g;
  m.forward(ids, {.document_ids = {}, .router_outputs = &more});
  EXPECT_EQ(more.size(), 2u);
  EXPECT_EQ(concat.size(), 2u);
}

TEST(Moe, SeparateRoutersCheckpointRoundTripAndParameterCount) {
  const ModelConfig single = test::tiny_config("finer_moe");
  const ModelConfig c = separate_config(single);
  Transformer m(c);
  init_random(m, 15);
  // #P: the single-router model's plus a [G_O*R_O, D] router per MoE layer
  const int64_t extra = 2 * 4 * c.hidden_size;
  EXPECT_EQ(c.param_count(), single.param_count() + extra);
  EXPECT_EQ(c.active_param_count(), single.active_param_count() + extra);
  int64_t held = 0;
  for (const auto& [name, t] : m.named_parameters()) held += t.numel();
  EXPECT_EQ(held, c.param_count());
  test::TempDir dir;
  save_model(m, dir.str());
  auto back = load_model(dir.str());
  EXPECT_EQ(back.config().raw.value("router_mode", ""), "separate");
  EXPECT_TRUE(separate_routers(back.config()));
  auto a = m.named_parameters(), b = back.named_parameters();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a[i].first, b[i].first);
    EXPECT_TRUE(torch::equal(a[i].second, b[i].second)) << a[i].first;
  }
  std::set<std::string> declared, names;
  for (const auto& t : expected_tensors(c)) declared.insert(t.name);
  for (const auto& [name, t] : a) names.insert(name);
  EXPECT_EQ(declared, names);
  EXPECT_TRUE(names.count("model.layers.1.mlp.concat_gate.weight"));
  auto ids = torch::randint(c.vocab_size, {1, 5}, torch::kInt64);
  torch::NoGradGuard g;
  EXPECT_TRUE(torch::equal(m.forward(ids), back.forward(ids)));
}

TEST(MoeConfig, RouterModeIsCheckedAndNamed) {
  auto j = test::tiny_config("finer_moe").to_json();
  j["router_mode"] = "both";
  try {
    ModelConfig::from_json(j, "x/config.json");
    FAIL() << "accepted router_mode 'both'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("x/config.json: field 'router_mode'"), std::string::npos)
        << e.what();
  }
  j["router_mode"] = 2;
  EXPECT_THROW(ModelConfig::from_json(j), Error);
  j["router_mode"] = "single";
  EXPECT_FALSE(separate_routers(ModelConfig::from_json(j)));
  j = test::tiny_config("qwen2_moe").to_json();
  j["router_mode"] = "separate";
  EXPECT_THROW(ModelConfig::from_json(j), Error);
}

}  // namespace
}  // namespace finmoe
