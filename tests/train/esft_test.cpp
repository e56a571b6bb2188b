// ESFT (include/finmoe/esft.h): relevance scores and expert selection against
// hand-computed examples, the expert-config and score layouts, training only
// the selected experts, and delta checkpoints that load as base + delta.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "../expect_error.h"
#include "../model/test_util.h"
#include "finmoe/analysis.h"
#include "finmoe/esft.h"
#include "finmoe/model.h"
#include "finmoe/safetensors.h"
#include "finmoe/tokenizer.h"
#include "finmoe/train.h"
#include "../router_output.h"
#include "train_test_util.h"

namespace finmoe {
namespace {

namespace fs = std::filesystem;
using test::message_of;

// Routing of T tokens with zero logits: the scores read only indices and weights.
RouterOutput router(int64_t layer, int64_t E, const std::vector<std::vector<int64_t>>& idx,
                    const std::vector<std::vector<float>>& w) {
  return test::router_output(layer, idx, w, torch::zeros({int64_t(idx.size()), E}));
}

void expect_scores(const std::vector<double>& got, const std::vector<double>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t e = 0; e < want.size(); ++e) EXPECT_NEAR(got[e], want[e], 1e-7) << "expert " << e;
}

// ---- scores ---------------------------------------------------------------------

TEST(EsftScores, ReproduceHandComputedExample) {
  // 4 experts, top-2, weights not renormalised (qwen2_moe without norm_topk_prob);
  // layer 1 sees 6 tokens in two forward calls, layer 3 the same tokens routed otherwise
  RoutingStats stats(4);
  stats.add(router(1, 4, {{0, 1}, {0, 2}, {1, 2}}, {{0.6f, 0.2f}, {0.5f, 0.1f}, {0.4f, 0.4f}}));
  stats.add(router(1, 4, {{0, 3}, {2, 0}, {0, 1}}, {{0.9f, 0.1f}, {0.3f, 0.3f}, {0.2f, 0.2f}}));
  stats.add(router(3, 4, {{3, 2}, {3, 1}, {3, 2}}, {{0.5f, 0.5f}, {0.8f, 0.2f}, {0.7f, 0.3f}}));
  stats.add(router(3, 4, {{3, 2}, {3, 2}, {1, 2}}, {{0.6f, 0.4f}, {0.5f, 0.5f}, {0.5f, 0.5f}}));
  // zero logits: the weights as given are the gate values
  const EsftScores s = esft_scores(stats.results(), EsftGate::Applied);
  // layer 1 gate sums: e0 .6+.5+.9+.3+.2 = 2.5, e1 .2+.4+.2 = .8, e2 .1+.4+.3 = .8,
  // e3 .1; total 4.2. Selections: e0 5, e1 3, e2 3, e3 1 of K*T = 12.
  expect_scores(s.gate_scores.at(1), {2.5 / 4.2, 0.8 / 4.2, 0.8 / 4.2, 0.1 / 4.2});
  expect_scores(s.token_scores.at(1), {5 / 12.0, 3 / 12.0, 3 / 12.0, 1 / 12.0});
  // layer 3: gate e1 .2+.5 = .7, e2 .5+.3+.4+.5+.5 = 2.2, e3 .5+.8+.7+.6+.5 = 3.1; total 6.
  // Selections: e1 2, e2 5, e3 5.
  expect_scores(s.gate_scores.at(3), {0.0, 0.7 / 6, 2.2 / 6, 3.1 / 6});
  expect_scores(s.token_scores.at(3), {0.0, 2 / 12.0, 5 / 12.0, 5 / 12.0});
  EXPECT_EQ(s.tokens, 6);
  EXPECT_EQ(s.gate_scores.size(), 2u);
}

TEST(EsftScores, GateScoresUseTheFullSoftmaxByDefaultAndTheAppliedWeightOnRequest) {
  // a renormalising router (mixtral): 3 experts, top-2, 2 tokens
  RouterOutput r;
  r.layer = 0;
  r.logits = torch::tensor({{std::log(5.0), std::log(3.0), std::log(2.0)},    // softmax .5 .3 .2
                            {std::log(1.0), std::log(2.0), std::log(7.0)}})  // .1 .2 .7
                 .to(torch::kFloat32);
  r.indices = torch::tensor({{0, 1}, {2, 1}}, torch::kInt64);
  r.weights = torch::tensor({{0.625f, 0.375f}, {0.7f / 0.9f, 0.2f / 0.9f}});  // renormalised
  RoutingStats stats(3);
  stats.add(r);
  // the paper's g: softmax at the selected experts, e0 .5, e1 .3 + .2, e2 .7 (total 1.7)
  expect_scores(esft_scores(stats.results()).gate_scores.at(0), {0.5 / 1.7, 0.5 / 1.7, 0.7 / 1.7});
  // applied weights: e0 .625, e1 .375 + .2/.9, e2 .7/.9 (total 2)
  expect_scores(esft_scores(stats.results(), EsftGate::Applied).gate_scores.at(0),
                {0.3125, (0.375 + 0.2 / 0.9) / 2, 0.7 / 0.9 / 2});
  // token scores do not depend on it
  expect_scores(esft_scores(stats.results()).token_scores.at(0), {0.25, 0.5, 0.25});
  EXPECT_EQ(esft_gate_from_string("applied", "--gate-score"), EsftGate::Applied);
  EXPECT_THROW(esft_gate_from_string("token", "--gate-score"), Error);
}

TEST(EsftScores, EqualLengthSequencesGiveEq6And7Shares) {
  // Eq. 6/7 average per sequence first; for equal lengths that is the pooled
  // mean, so the scores equal RoutingStats' per-sequence ESFT shares
  torch::manual_seed(3);
  const int64_t E = 8, K = 2, T = 40;
  RoutingStats stats(E);
  RouterOutput r;
  r.layer = 0;
  r.logits = torch::randn({T, E});
  auto probs = torch::softmax(r.logits, -1);
  std::tie(r.weights, r.indices) = probs.topk(K, -1);
  stats.add(r, /*seq_len=*/10);
  const auto layers = stats.results();
  // RoutingStats' per-sequence shares take the weights as given (float32 here;
  // the default softmax gate recomputes them in double: equal to rounding)
  const EsftScores s = esft_scores(layers, EsftGate::Applied);
  const EsftScores softmax = esft_scores(layers);
  for (int64_t e = 0; e < E; ++e) {
    EXPECT_NEAR(softmax.gate_scores.at(0)[size_t(e)], s.gate_scores.at(0)[size_t(e)], 1e-7);
    EXPECT_NEAR(s.gate_scores.at(0)[size_t(e)], layers[0].experts[size_t(e)].esft_gate_share, 1e-12);
    EXPECT_NEAR(s.token_scores.at(0)[size_t(e)], layers[0].experts[size_t(e)].esft_token_share,
                1e-12);
  }
}

TEST(EsftScores, JsonRoundTripsInTheReferenceLayout) {
  EsftScores s;
  s.token_scores[1] = {0.5, 0.25, 0.25};
  s.gate_scores[1] = {0.6, 0.3, 0.1};
  s.token_scores[2] = {0.0, 1.0, 0.0};
  s.gate_scores[2] = {0.1, 0.8, 0.1};
  s.tokens = 96;
  s.sequences = 3;
  const nlohmann::json j = esft_scores_to_json(s);
  EXPECT_DOUBLE_EQ(j["token_scores"]["1"]["0"].get<double>(), 0.5);
  EXPECT_DOUBLE_EQ(j["gate_scores"]["2"]["1"].get<double>(), 0.8);
  test::TempDir dir;
  const std::string path = dir.str() + "/scores.json";
  save_esft_scores(path, s);
  const EsftScores back = load_esft_scores(path);
  EXPECT_EQ(back.token_scores, s.token_scores);
  EXPECT_EQ(back.gate_scores, s.gate_scores);
  EXPECT_EQ(back.tokens, 96);
}

TEST(EsftScores, BadFilesAreRejectedWithTheirPath) {
  test::TempDir dir;
  const std::string path = dir.str() + "/scores.json";
  std::ofstream(path) << "{\"token_scores\": {\"1\": {\"0\": 0.5,";
  EXPECT_CONTAINS(message_of([&] { load_esft_scores(path); }), path);
  auto bad = [](const std::string& text) {
    return message_of([&] { esft_scores_from_json(nlohmann::json::parse(text), "s.json"); });
  };
  EXPECT_CONTAINS(bad(R"({"token_scores": {}})"), "gate_scores");
  EXPECT_CONTAINS(bad(R"({"token_scores": {"x": {"0": 1}}, "gate_scores": {}})"), "'x'");
  EXPECT_CONTAINS(bad(R"({"token_scores": {"1": {"0": -1}}, "gate_scores": {}})"), ">= 0");
  EXPECT_CONTAINS(bad(R"({"token_scores": {"1": {"0": 0.5, "2": 0.5}}, "gate_scores": {}})"),
                  "0..1");
  EXPECT_CONTAINS(
      bad(R"({"token_scores": {"1": {"0": 1}, "2": {"0": 0.5, "1": 0.5}}, "gate_scores": {}})"),
      "other layers");
}

// ---- selection --------------------------------------------------------------------

EsftScores example_scores() {
  EsftScores s;
  s.token_scores[1] = {0.1, 0.5, 0.3, 0.1};
  s.gate_scores[1] = {0.4, 0.2, 0.2, 0.2};
  s.token_scores[4] = {0.05, 0.05, 0.05, 0.85};
  s.gate_scores[4] = {0.25, 0.25, 0.25, 0.25};
  return s;
}

TEST(EsftSelect, ReproducesHandComputedExampleWithTheCrossingExpert) {
  const EsftScores s = example_scores();
  using V = std::vector<int64_t>;
  // token, layer 1 sorted: e1 .5, e2 .3, e0 .1, e3 .1 (ties by lower id)
  EXPECT_EQ(select_experts(s, EsftScoreKind::Token, 0.2).experts.at(1), V({1}));     // .5 crosses .2
  EXPECT_EQ(select_experts(s, EsftScoreKind::Token, 0.5).experts.at(1), V({1}));     // .5 reaches .5
  EXPECT_EQ(select_experts(s, EsftScoreKind::Token, 0.6).experts.at(1), V({1, 2}));  // .8 crosses
  EXPECT_EQ(select_experts(s, EsftScoreKind::Token, 0.8).experts.at(1), V({1, 2}));  // .5+.3 reaches
  EXPECT_EQ(select_experts(s, EsftScoreKind::Token, 0.81).experts.at(1), V({0, 1, 2}));
  EXPECT_EQ(select_experts(s, EsftScoreKind::Token, 1.0).experts.at(1), V({0, 1, 2, 3}));
  // layer 4: one dominant expert covers p up to .85
  EXPECT_EQ(select_experts(s, EsftScoreKind::Token, 0.85).experts.at(4), V({3}));
  EXPECT_EQ(select_experts(s, EsftScoreKind::Token, 0.9).experts.at(4), V({0, 3}));
  // gate scores: layer 1 e0 .4 then ties .2 by id; layer 4 uniform
  EXPECT_EQ(select_experts(s, EsftScoreKind::Gate, 0.5).experts.at(1), V({0, 1}));
  EXPECT_EQ(select_experts(s, EsftScoreKind::Gate, 0.5).experts.at(4), V({0, 1}));
  EXPECT_EQ(select_experts(s, EsftScoreKind::Gate, 0.51).experts.at(4), V({0, 1, 2}));
  const ExpertConfig c = select_experts(s, EsftScoreKind::Gate, 0.3);
  EXPECT_FALSE(c.shared_experts);
  EXPECT_FALSE(c.non_expert_modules);
  EXPECT_EQ(c.experts.size(), 2u);
}

TEST(EsftSelect, RejectsThresholdsOutsideTheUnitIntervalAndUnknownScores) {
  const EsftScores s = example_scores();
  for (double p : {0.0, -0.1, 1.01, std::nan("")})
    EXPECT_CONTAINS(message_of([&] { select_experts(s, EsftScoreKind::Token, p); }), "(0, 1]");
  EXPECT_EQ(esft_score_kind("token"), EsftScoreKind::Token);
  EXPECT_EQ(esft_score_kind("gate"), EsftScoreKind::Gate);
  EXPECT_CONTAINS(message_of([] { esft_score_kind("router"); }), "--score 'router'");
}

// ESFT Table 4's control: the same count per layer, distinct ids in range,
// a fixed draw per seed, and every expert equally likely over many seeds.
TEST(EsftSelect, RandomExpertsKeepTheCountPerLayerAndAreUniform) {
  ExpertConfig like;
  like.experts = {{1, {0, 3, 5}}, {2, {7}}, {4, {}}};
  like.shared_experts = true;
  const int64_t E = 8;
  const ExpertConfig a = random_experts_like(like, E, 42);
  EXPECT_EQ(a.shared_experts, true);
  ASSERT_EQ(a.experts.size(), like.experts.size());
  for (const auto& [layer, ids] : like.experts) {
    const auto& got = a.experts.at(layer);
    EXPECT_EQ(got.size(), ids.size()) << layer;
    EXPECT_TRUE(std::is_sorted(got.begin(), got.end()));
    EXPECT_EQ(std::set<int64_t>(got.begin(), got.end()).size(), got.size());
    for (int64_t e : got) EXPECT_TRUE(e >= 0 && e < E);
  }
  EXPECT_EQ(random_experts_like(like, E, 42).experts, a.experts);
  std::vector<int64_t> counts(E, 0);
  bool differs = false;
  const int seeds = 4000;
  for (int s = 0; s < seeds; ++s) {
    const ExpertConfig r = random_experts_like(like, E, uint64_t(s));
    differs |= r.experts != a.experts;
    for (int64_t e : r.experts.at(1)) ++counts[size_t(e)];
  }
  EXPECT_TRUE(differs);
  // each expert is in layer 1's draw of 3 with probability 3/8: 1500 of 4000
  // expected, sd ~ 31; 5 sd apart would be a biased draw
  for (int64_t e = 0; e < E; ++e) EXPECT_NEAR(double(counts[size_t(e)]), seeds * 3.0 / 8.0, 155.0) << e;
  EXPECT_THROW(random_experts_like(like, 2, 1), Error);  // 3 of 2 experts
}

TEST(ExpertConfigFile, ReadsTheReferenceFormatAndRoundTrips) {
  // as the ESFT repo's generate_expert_config.py writes it
  const auto j = nlohmann::json::parse(
      R"({"experts": {"1": [5, 12, 0], "2": [3], "26": []}, "shared_experts": true,
          "non_expert_modules": false})");
  const ExpertConfig c = expert_config_from_json(j, "expert_cfg.json");
  EXPECT_EQ(c.experts.at(1), std::vector<int64_t>({5, 12, 0}));
  EXPECT_TRUE(c.experts.at(26).empty());
  EXPECT_TRUE(c.shared_experts);
  EXPECT_FALSE(c.non_expert_modules);
  test::TempDir dir;
  save_expert_config(dir.str() + "/e.json", c);
  const ExpertConfig back = load_expert_config(dir.str() + "/e.json");
  EXPECT_EQ(back.experts, c.experts);
  EXPECT_EQ(back.shared_experts, c.shared_experts);
  EXPECT_EQ(read_json_file(dir.str() + "/e.json"), j);
}

TEST(ExpertConfigFile, RejectsMalformedConfigs) {
  auto bad = [](const std::string& text) {
    return message_of([&] { expert_config_from_json(nlohmann::json::parse(text), "cfg.json"); });
  };
  EXPECT_CONTAINS(bad(R"({"shared_experts": false})"), "'experts'");
  EXPECT_CONTAINS(bad(R"({"experts": {"one": [1]}})"), "'one'");
  EXPECT_CONTAINS(bad(R"({"experts": {"1": [-2]}})"), "non-negative");
  EXPECT_CONTAINS(bad(R"({"experts": {"1": 3}})"), "list");
  EXPECT_CONTAINS(bad(R"({"experts": {}, "shared_experts": "yes"})"), "true or false");
  EXPECT_CONTAINS(bad(R"({"experts": {}, "train_router": true})"), "unknown field 'train_router'");
  // against a model: layer 0 of the tiny qwen2_moe is dense, it has 6 experts
  const ModelConfig m = test::tiny_config("qwen2_moe");
  ExpertConfig c;
  c.experts[0] = {1};
  EXPECT_CONTAINS(message_of([&] { check_expert_config(c, m, "cfg"); }), "not an MoE layer");
  c.experts = {{1, {6}}};
  EXPECT_CONTAINS(message_of([&] { check_expert_config(c, m, "cfg"); }), "outside [0, 6)");
  c.experts = {{1, {2, 2}}};
  EXPECT_CONTAINS(message_of([&] { check_expert_config(c, m, "cfg"); }), "twice");
  c.experts = {{1, {2}}};
  EXPECT_CONTAINS(message_of([&] { check_expert_config(c, test::tiny_config("qwen2"), "cfg"); }),
                  "no routed experts");
}

// ---- parameter roles and trainable sets -------------------------------------------------

TEST(EsftParams, RolesFollowTheHfNames) {
  auto role = [](const std::string& n) { return esft_param_role(n); };
  auto r = role("model.layers.3.mlp.experts.12.down_proj.weight");
  EXPECT_EQ(r.kind, EsftParamRole::RoutedExpert);
  EXPECT_EQ(r.layer, 3);
  EXPECT_EQ(r.expert, 12);
  r = role("model.layers.0.block_sparse_moe.experts.2.w1.weight");
  EXPECT_EQ(r.kind, EsftParamRole::RoutedExpert);
  EXPECT_EQ(r.expert, 2);
  EXPECT_EQ(role("model.layers.1.mlp.shared_expert.up_proj.weight").kind,
            EsftParamRole::SharedExpert);
  EXPECT_EQ(role("model.layers.1.mlp.shared_experts.up_proj.weight").kind,
            EsftParamRole::SharedExpert);
  for (const char* n : {"model.layers.1.mlp.shared_expert_gate.weight", "model.layers.1.mlp.gate.weight",
                        "model.layers.1.mlp.up_proj.weight", "model.layers.1.self_attn.q_proj.weight",
                        "model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"})
    EXPECT_EQ(role(n).kind, EsftParamRole::NonExpert) << n;
}

TEST(EsftParams, TrainableSetsFollowTheConfigFlags) {
  Transformer model(test::tiny_config("qwen2_moe"));
  ExpertConfig c;
  c.experts[1] = {0, 3};
  std::set<std::string> names;
  for (const auto& [n, t] : esft_trainable_parameters(model, c)) names.insert(n);
  const std::set<std::string> want = {
      "model.layers.1.mlp.experts.0.gate_proj.weight", "model.layers.1.mlp.experts.0.up_proj.weight",
      "model.layers.1.mlp.experts.0.down_proj.weight", "model.layers.1.mlp.experts.3.gate_proj.weight",
      "model.layers.1.mlp.experts.3.up_proj.weight", "model.layers.1.mlp.experts.3.down_proj.weight"};
  EXPECT_EQ(names, want);

  // counts from the config's declared shapes agree with the built model's tensors
  auto count = [&](const ExpertConfig& cfg) {
    int64_t n = 0;
    for (const auto& [name, t] : esft_trainable_parameters(model, cfg)) n += t.numel();
    return n;
  };
  const auto n0 = esft_param_count(model.config(), c);
  EXPECT_EQ(n0.trainable, count(c));
  EXPECT_EQ(n0.routed, n0.trainable);
  EXPECT_EQ(n0.experts, 2);
  EXPECT_EQ(n0.total, model.param_count().total);
  c.shared_experts = true;
  const auto n1 = esft_param_count(model.config(), c);
  EXPECT_EQ(n1.trainable, count(c));
  EXPECT_EQ(n1.shared, n1.trainable - n0.trainable);
  EXPECT_GT(n1.shared, 0);
  c.non_expert_modules = true;
  const auto n2 = esft_param_count(model.config(), c);
  EXPECT_EQ(n2.trainable, count(c));
  // everything but the 4 unselected routed experts of layer 1
  const int64_t per_expert = n0.trainable / 2;
  EXPECT_EQ(n2.trainable, n2.total - 4 * per_expert);
}

// ---- training and delta checkpoints -------------------------------------------------------

// A tiny qwen2_moe base saved to disk; layer 0 dense, layer 1 MoE (6 experts, top-2, shared expert).
struct EsftFixture : ::testing::Test {
  test::TempDir dir;
  std::string base() const { return dir.str() + "/base"; }
  std::string delta() const { return dir.str() + "/delta"; }
  void SetUp() override {
    Transformer m(test::tiny_config("qwen2_moe"));
    init_random(m, 11);
    save_model(m, base());
  }
};

// A few Adam steps on a language-model loss, only over `params`.
void train_steps(Transformer& model, const std::vector<std::pair<std::string, torch::Tensor>>& params,
                 int steps) {
  std::vector<torch::Tensor> ts;
  for (const auto& [n, t] : params) ts.push_back(t);
  torch::optim::Adam opt(ts, torch::optim::AdamOptions(1e-2));
  torch::manual_seed(5);
  auto tokens = torch::randint(model.config().vocab_size, {2, 24}, torch::kInt64);
  for (int s = 0; s < steps; ++s) {
    opt.zero_grad();
    auto logits = model.forward(tokens.narrow(1, 0, 23));  // [B,T,V]
    auto loss = torch::nn::functional::cross_entropy(
        logits.reshape({-1, logits.size(-1)}), tokens.narrow(1, 1, 23).reshape({-1}));
    loss.backward();
    opt.step();
  }
}

std::map<std::string, torch::Tensor> snapshot(const Transformer& m) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& [n, t] : m.named_parameters()) out[n] = t.detach().clone();
  return out;
}

TEST_F(EsftFixture, TrainingChangesOnlySelectedExpertsAndDeltaReloadsTheTrainedModel) {
  auto model = load_model(base(), {.dtype = torch::kFloat32});
  ExpertConfig c;
  c.experts[1] = {1, 4};
  const auto before = snapshot(model);
  const auto trainable = apply_esft(model, c);
  ASSERT_EQ(trainable.size(), 6u);
  train_steps(model, trainable, 3);

  std::set<std::string> changed;
  for (const auto& [n, t] : model.named_parameters()) {
    if (!torch::equal(t.detach(), before.at(n))) changed.insert(n);
    if (!esft_trains(c, n)) {
      EXPECT_TRUE(torch::equal(t.detach(), before.at(n))) << n << " moved";
    }
  }
  EXPECT_FALSE(changed.empty());
  for (const auto& n : changed) EXPECT_TRUE(esft_trains(c, n)) << n;

  const EsftDeltaInfo info = save_esft_delta(model, c, base(), delta());
  EXPECT_EQ(info.tensors, 6);
  EXPECT_EQ(info.params, esft_param_count(model.config(), c).trainable);
  // exactly the selected experts' tensors, nothing else
  auto file = SafetensorsFile::open(delta() + "/esft_delta.safetensors");
  std::set<std::string> saved;
  for (const auto& v : file->tensors()) saved.insert(v.name);
  std::set<std::string> want;
  for (const auto& [n, t] : trainable) want.insert(n);
  EXPECT_EQ(saved, want);
  EXPECT_EQ(info.bytes, int64_t(fs::file_size(delta() + "/esft_delta.safetensors")));
  EXPECT_GE(info.bytes, info.params * 4);
  EXPECT_LT(info.bytes, info.params * 4 + 4096);  // tensors plus a header
  EXPECT_TRUE(fs::exists(delta() + "/config.json"));
  EXPECT_EQ(load_expert_config(delta() + "/expert_cfg.json").experts, c.experts);

  // base + delta as one model: the trained model's logits
  auto reloaded = load_model(delta(), {.dtype = torch::kFloat32});
  torch::NoGradGuard no_grad;
  auto ids = torch::randint(model.config().vocab_size, {2, 17}, torch::kInt64);
  auto want_logits = model.forward(ids);
  auto got = reloaded.forward(ids);
  EXPECT_EQ(test::max_abs_diff(got, want_logits), 0.0);
  auto base_logits = load_model(base(), {.dtype = torch::kFloat32}).forward(ids);
  EXPECT_GT(test::max_abs_diff(base_logits, want_logits), 1e-4);  // training did something
  const EsftDeltaInfo read = read_esft_delta(delta());
  EXPECT_EQ(read.tensors, 6);
  EXPECT_EQ(esft_delta_base(read), fs::absolute(base()).lexically_normal().string());
}

TEST_F(EsftFixture, SharedAndNonExpertFlagsTrainThoseModulesToo) {
  auto model = load_model(base(), {.dtype = torch::kFloat32});
  ExpertConfig c;
  c.experts[1] = {2};
  c.shared_experts = true;
  const auto before = snapshot(model);
  const auto trainable = apply_esft(model, c);
  train_steps(model, trainable, 2);
  bool shared_moved = false;
  for (const auto& [n, t] : model.named_parameters()) {
    const auto role = esft_param_role(n);
    if (role.kind == EsftParamRole::SharedExpert)
      shared_moved = shared_moved || !torch::equal(t.detach(), before.at(n));
    if (role.kind == EsftParamRole::NonExpert) {
      EXPECT_TRUE(torch::equal(t.detach(), before.at(n))) << n << " moved";
    }
  }
  EXPECT_TRUE(shared_moved);
  save_esft_delta(model, c, base(), delta());
  auto reloaded = load_model(delta(), {.dtype = torch::kFloat32});
  torch::NoGradGuard no_grad;
  auto ids = torch::randint(model.config().vocab_size, {1, 9}, torch::kInt64);
  EXPECT_EQ(test::max_abs_diff(reloaded.forward(ids), model.forward(ids)), 0.0);
}

// DeepSeek-V3 (MLA + DeepSeekMoE with noaux_tc): ESFT trains the chosen routed
// experts (and, with the flag, the non-expert modules) while the ungated shared
// experts and the router's e_score_correction_bias stay as they were, as the
// ESFT paper trains DeepSeek-V2-Lite.
TEST(EsftDeepSeek, SharedExpertsAndTheCorrectionBiasStayFrozen) {
  Transformer model(test::tiny_config("deepseek_v3"));
  init_random(model, 21);
  {
    torch::NoGradGuard no_grad;
    for (auto& [n, t] : model.named_parameters())
      if (gradient_free_parameter(n)) t.uniform_(-0.2, 0.2);  // a correction that matters
  }
  ExpertConfig c;
  c.experts[1] = {0, 3};
  c.non_expert_modules = true;
  const auto before = snapshot(model);
  const auto trainable = apply_esft(model, c);
  int biases = 0;
  for (const auto& [n, t] : model.named_parameters()) biases += gradient_free_parameter(n);
  ASSERT_EQ(biases, 1);  // layer 1, the one MoE layer
  for (const auto& [n, t] : trainable) {
    EXPECT_FALSE(gradient_free_parameter(n)) << n;
    EXPECT_NE(esft_param_role(n).kind, EsftParamRole::SharedExpert) << n;
  }
  train_steps(model, trainable, 2);
  bool expert_moved = false, attention_moved = false;
  for (const auto& [n, t] : model.named_parameters()) {
    const bool moved = !torch::equal(t.detach(), before.at(n));
    const auto role = esft_param_role(n);
    if (role.kind == EsftParamRole::SharedExpert || gradient_free_parameter(n)) {
      EXPECT_FALSE(moved) << n << " moved";
    }
    if (role.kind == EsftParamRole::RoutedExpert) {
      const bool chosen = role.expert == 0 || role.expert == 3;
      if (!chosen) EXPECT_FALSE(moved) << n << " moved";
      expert_moved = expert_moved || (chosen && moved);
    }
    attention_moved = attention_moved || (moved && n.find("kv_b_proj") != std::string::npos);
  }
  EXPECT_TRUE(expert_moved);
  EXPECT_TRUE(attention_moved);
}

TEST_F(EsftFixture, DeltaErrorsNameTheProblem) {
  auto model = load_model(base(), {.dtype = torch::kFloat32});
  ExpertConfig c;
  c.experts[1] = {0, 5};
  save_esft_delta(model, c, base(), delta());
  const std::string meta = delta() + "/esft_delta.json";
  auto j = read_json_file(meta);

  // a newer format version
  auto newer = j;
  newer["format_version"] = kEsftDeltaFormatVersion + 1;
  write_json_file(meta, newer);
  EXPECT_CONTAINS(message_of([&] { load_model(delta()); }), "upgrade finmoe");
  // the base moved away
  auto moved = j;
  moved["base_model"] = dir.str() + "/nowhere";
  write_json_file(meta, moved);
  EXPECT_CONTAINS(message_of([&] { load_model(delta()); }), "nowhere");
  // a relative base path is taken from the delta's directory
  auto rel = j;
  rel["base_model"] = "../base";
  write_json_file(meta, rel);
  EXPECT_NO_THROW(load_model(delta()));
  write_json_file(meta, j);
  // the expert config no longer covers a stored tensor
  ExpertConfig fewer;
  fewer.experts[1] = {0};
  save_expert_config(delta() + "/expert_cfg.json", fewer);
  EXPECT_CONTAINS(message_of([&] { load_model(delta()); }), "experts.5");
  // ... or lists one the delta lacks
  ExpertConfig more;
  more.experts[1] = {0, 3, 5};
  save_expert_config(delta() + "/expert_cfg.json", more);
  EXPECT_CONTAINS(message_of([&] { load_model(delta()); }), "missing tensor 'model.layers.1.mlp.experts.3");
  // writing into the base's directory is refused
  EXPECT_CONTAINS(message_of([&] { save_esft_delta(model, c, base(), base()); }),
                  "base model's directory");
}

TEST(EsftScoring, ScoresATaskFileThroughTheModel) {
  // the whole pipeline on a tiny model whose tokenizer is a byte-level BPE:
  // sampled sequences are full length, every layer's scores sum to 1
  test::TempDir dir;
  const std::string tok_dir = std::string(FINMOE_TEST_DATA_DIR) + "/tokenizer/qwen3";
  auto tok = Tokenizer::from_dir(tok_dir);
  auto cfg_json = test::tiny_config("mixtral").to_json();
  cfg_json["vocab_size"] = (tok.vocab_size() + 63) / 64 * 64;
  Transformer model(ModelConfig::from_json(cfg_json, "mixtral"));
  init_random(model, 4);
  const std::string data = dir.str() + "/task.jsonl";
  {
    std::ofstream f(data);
    for (int i = 0; i < 40; ++i)
      f << nlohmann::json{{"messages",
                           {{{"role", "user"}, {"content", "Classify intent " + std::to_string(i)}},
                            {{"role", "assistant"}, {"content", "refund request"}}}}}
               .dump()
        << "\n";
  }
  int64_t last_done = 0, last_total = 0;
  const EsftScores s = score_experts(model, tok, data, {.seq_len = 32, .max_tokens = 96, .seed = 1},
                                     [&](int64_t d, int64_t t) { last_done = d, last_total = t; });
  EXPECT_EQ(s.tokens, 96);  // three full sequences of 32
  EXPECT_EQ(s.sequences, 3);
  EXPECT_EQ(last_done, 96);
  EXPECT_EQ(last_total, 96);
  ASSERT_EQ(s.token_scores.size(), 2u);
  for (const auto* table : {&s.token_scores, &s.gate_scores})
    for (const auto& [layer, v] : *table) {
      EXPECT_EQ(v.size(), 4u);
      double sum = 0;
      for (double x : v) sum += x;
      EXPECT_NEAR(sum, 1.0, 1e-9) << "layer " << layer;
    }
  // the seed picks the sample; the same seed the same scores
  const EsftScores again = score_experts(model, tok, data, {.seq_len = 32, .max_tokens = 96, .seed = 1});
  EXPECT_EQ(again.gate_scores, s.gate_scores);
  EXPECT_CONTAINS(message_of([&] {
                    Transformer dense(test::tiny_config("qwen2"));
                    score_experts(dense, tok, data);
                  }),
                  "no routed experts");
}

// ---- through the trainer (finmoe train --mode esft) -------------------------------

// A tiny ESFT run of max_steps on the model in model_dir, its expert config
// saved next to the model.
TrainConfig esft_train_config(const std::string& model_dir, const std::string& out_dir,
                              const ExpertConfig& experts, int64_t max_steps) {
  const std::string cfg_path = model_dir + "/expert_cfg.json";
  save_expert_config(cfg_path, experts);
  TrainConfig c = test::tiny_train_config(model_dir, out_dir);
  c.mode = TrainMode::Esft;
  c.esft.expert_config = cfg_path;
  c.max_steps = max_steps;
  return c;
}

TEST(EsftTrainer, TrainsOnlyTheSelectedExpertsAndCheckpointsALoadableDelta) {
  test::TempDir model, out;
  const ModelConfig mc = test::save_tiny_model("qwen2_moe", model.str(), 3);
  ExpertConfig experts;
  experts.experts[1] = {0, 2, 5};
  TrainConfig c = esft_train_config(model.str(), out.str(), experts, 4);
  Trainer t(c, test::synthetic_hooks(mc.vocab_size));
  const TrainSummary s = t.run();

  auto base = load_model(model.str(), {.dtype = torch::kFloat32});
  std::map<std::string, torch::Tensor> base_params;
  for (const auto& [n, p] : base.named_parameters()) base_params[n] = p;
  int moved = 0;
  for (const auto& [n, p] : t.model().named_parameters()) {
    const bool same = torch::equal(p.detach(), base_params.at(n));
    if (!esft_trains(experts, n)) {
      EXPECT_TRUE(same) << n << " is frozen but moved";
    }
    moved += !same;
  }
  EXPECT_GT(moved, 0);
  const EsftParamCount n = esft_param_count(mc, experts);
  EXPECT_EQ(s.trainable_params, n.trainable);
  EXPECT_EQ(s.model_params, n.total);
  // the checkpoint is an ESFT delta: only the trained tensors are stored
  ASSERT_TRUE(is_esft_delta(s.checkpoint));
  const EsftDeltaInfo d = read_esft_delta(s.checkpoint);
  EXPECT_EQ(d.params, n.trainable);
  EXPECT_EQ(s.checkpoint_bytes, d.bytes);
  EXPECT_EQ(d.experts.experts, experts.experts);
  torch::NoGradGuard no_grad;
  auto ids = torch::randint(mc.vocab_size, {2, 10}, torch::kInt64);
  auto reloaded = load_model(s.checkpoint, {.dtype = torch::kFloat32});
  EXPECT_EQ(test::max_abs_diff(reloaded.forward(ids), t.model().forward(ids)), 0.0);
}

TEST(EsftTrainer, ResumedRunEqualsUninterruptedRun) {
  test::TempDir model, full, part;
  const ModelConfig mc = test::save_tiny_model("mixtral", model.str(), 4);
  ExpertConfig experts;
  experts.experts = {{0, {1}}, {1, {0, 3}}};
  TrainConfig c = esft_train_config(model.str(), full.str(), experts, 4);
  c.save_interval = 2;
  Trainer uninterrupted(c, test::synthetic_hooks(mc.vocab_size));
  uninterrupted.run();
  c.output_dir = part.str();
  c.resume = full.str() + "/checkpoint-2";
  Trainer resumed(c, test::synthetic_hooks(mc.vocab_size));
  EXPECT_EQ(resumed.step_count(), 2);
  resumed.run();
  ASSERT_EQ(resumed.history().size(), 4u);
  for (size_t i = 0; i < 4; ++i)
    EXPECT_EQ(resumed.history()[i].loss, uninterrupted.history()[i].loss) << "step " << i + 1;
  auto a = uninterrupted.model().named_parameters(), b = resumed.model().named_parameters();
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_TRUE(torch::equal(a[i].second, b[i].second)) << a[i].first;
}

}  // namespace
}  // namespace finmoe
