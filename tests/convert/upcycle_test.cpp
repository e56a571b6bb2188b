// Upcycling dense checkpoints into MoE checkpoints (FineRMoE §3.3, Eq. 10)
// on tiny random models made here: function preservation where the scheme
// promises it, expert slices against Eq. 10, Drop-Upcycling statistics,
// parameter counts and bad input.
#include <gtest/gtest.h>

#include <functional>
#include <set>

#include <torch/torch.h>

#include "../model/test_util.h"
#include "../tolerance.h"
#include "finmoe/convert.h"
#include "finmoe/error.h"
#include "finmoe/finer_router.h"
#include "finmoe/model.h"
#include "finmoe/safetensors.h"
#include "../expect_error.h"

namespace finmoe {
namespace {

using test::max_abs_diff;
using test::TempDir;

using test::message_of;

// A random dense float32 model of `type` saved in `dir` (intermediate_size 80
// unless `ffn` says otherwise; hidden 48, 2 layers).
ModelConfig make_dense(const std::string& type, const std::string& dir, uint64_t seed,
                       int64_t ffn = 80) {
  ModelConfig c = test::tiny_config(type);
  c.intermediate_size = ffn;
  c.finalize();
  Transformer m(c);
  init_random(m, seed);
  save_model(m, dir);
  write_file_atomic(dir + "/tokenizer_config.json", "{\"model_max_length\": 128}\n");
  return c;
}

torch::Tensor tokens() {
  return torch::tensor({{5, 17, 42, 99, 3, 250, 7, 64, 128, 11, 2, 77}}, torch::kInt64);
}

torch::Tensor logits_of(const std::string& dir) {
  Transformer m = load_model(dir, {torch::kFloat32});
  torch::NoGradGuard g;
  return m.forward(tokens());
}

UpcycleOptions quiet(UpcycleOptions o) {
  o.progress = false;
  return o;
}

// A tensor of a checkpoint directory, copied out as float32.
torch::Tensor tensor_of(const CheckpointReader& r, const std::string& name) {
  const TensorView& v = r.get(name);
  EXPECT_EQ(v.dtype, DType::F32) << name;
  return torch::from_blob(v.data, v.shape, torch::kFloat32).clone();
}

class UpcycleLogits : public ::testing::TestWithParam<std::string> {};

TEST_P(UpcycleLogits, CopyPresetReproducesDenseLogits) {
  TempDir dense, out;
  make_dense(GetParam(), dense.str(), 1);
  auto report = upcycle(dense.str(), out.str(), quiet(upcycle_preset("copy")));
  const ModelConfig& c = report.plan.config;
  EXPECT_EQ(c.model_type, GetParam() == "qwen2" ? "qwen2_moe" : "mixtral");
  EXPECT_EQ(c.num_experts, 32);
  EXPECT_EQ(c.num_experts_per_tok, 2);
  EXPECT_EQ(c.shared_expert_intermediate_size, 0);
  // identical experts and top-k weights summing to 1: the dense function
  EXPECT_TRUE(test::AllClose(logits_of(out.str()), logits_of(dense.str()), 2e-4, /*floor=*/1.0));
}

TEST_P(UpcycleLogits, SplitWithAllExpertsActiveAndDownScalingReproducesDenseLogits) {
  TempDir dense, out;
  make_dense(GetParam(), dense.str(), 2);
  UpcycleOptions o = upcycle_preset("split");  // G_I = 16: 80 -> 16 slices of 5
  o.T_I = 16;                                  // top-k = N
  o.router_init = "zeros";                     // every weight 1/16, down_proj x16
  o.expert_scale = "down";
  auto report = upcycle(dense.str(), out.str(), quiet(o));
  EXPECT_EQ(report.plan.config.num_experts_per_tok, 16);
  EXPECT_EQ(report.plan.down_scale, 16.0);
  EXPECT_TRUE(test::AllClose(logits_of(out.str()), logits_of(dense.str()), 2e-4, /*floor=*/1.0));
}

TEST_P(UpcycleLogits, DenseMoeWithZeroRouterReproducesDenseLogits) {
  TempDir dense, copies, splits;
  make_dense(GetParam(), dense.str(), 3);
  const auto want = logits_of(dense.str());
  UpcycleOptions o = upcycle_preset("dense-moe");
  o.router_init = "zeros";
  auto report = upcycle(dense.str(), copies.str(), quiet(o));
  // finmoe_dense is llama-shaped; qwen2's q/k/v-only bias and mistral's window
  // go to the equivalent qwen2_moe / mixtral with top-k = N (softmax over all)
  EXPECT_EQ(report.plan.config.model_type, GetParam() == "llama"   ? "finmoe_dense"
                                           : GetParam() == "qwen2" ? "qwen2_moe"
                                                                   : "mixtral");
  EXPECT_EQ(report.plan.config.num_experts_per_tok, report.plan.config.num_experts);
  EXPECT_TRUE(test::AllClose(logits_of(copies.str()), want, 2e-4, /*floor=*/1.0));
  // splits instead of copies: all active, weights 1/4, down_proj x4
  o.G_I = 4, o.R_I = 1;
  o.expert_scale = "down";
  upcycle(dense.str(), splits.str(), quiet(o));
  EXPECT_TRUE(test::AllClose(logits_of(splits.str()), want, 2e-4, /*floor=*/1.0));
}

INSTANTIATE_TEST_SUITE_P(DenseTypes, UpcycleLogits,
                         ::testing::Values("llama", "qwen2", "mistral"));

TEST(Upcycle, DenseMoeCopiesReproduceDenseLogitsWithARandomRouter) {
  TempDir dense, out;
  make_dense("llama", dense.str(), 4);
  upcycle(dense.str(), out.str(), quiet(upcycle_preset("dense-moe")));  // router normal:0.02
  EXPECT_TRUE(test::AllClose(logits_of(out.str()), logits_of(dense.str()), 2e-4, /*floor=*/1.0));
}

TEST(Upcycle, FineRMoeWithTrivialOutputGranularityMatchesSplit) {
  TempDir dense, split, finer;
  make_dense("llama", dense.str(), 5);
  UpcycleOptions s = upcycle_preset("split");
  s.G_I = 4, s.T_I = 4, s.router_init = "zeros";
  s.expert_scale = "down";  // with it, the whole FFN at initialisation
  upcycle(dense.str(), split.str(), quiet(s));
  UpcycleOptions f;
  f.G_I = 4, f.R_I = 1, f.G_O = 1, f.R_O = 1, f.T_I = 4;  // T_I = G_I
  f.router_init = "zeros";
  f.expert_scale = "down";
  f.format = "finer_moe";
  auto report = upcycle(dense.str(), finer.str(), quiet(f));
  ASSERT_EQ(report.plan.config.model_type, "finer_moe");
  // the same expert weights under the two naming schemes
  auto rs = CheckpointReader::open(split.str()), rf = CheckpointReader::open(finer.str());
  for (int e = 0; e < 4; ++e) {
    const std::string ps = "model.layers.1.block_sparse_moe.experts." + std::to_string(e) + ".";
    const std::string pf = "model.layers.1.mlp.experts." + std::to_string(e) + ".";
    EXPECT_TRUE(tensor_of(rs, ps + "w1.weight").equal(tensor_of(rf, pf + "gate_proj.weight")));
    EXPECT_TRUE(tensor_of(rs, ps + "w2.weight").equal(tensor_of(rf, pf + "down_proj.weight")));
    EXPECT_TRUE(tensor_of(rs, ps + "w3.weight").equal(tensor_of(rf, pf + "up_proj.weight")));
  }
  const auto a = logits_of(split.str()), b = logits_of(finer.str());
  EXPECT_TRUE(test::AllClose(a, b, 1e-5, /*floor=*/1.0));
  EXPECT_TRUE(test::AllClose(a, logits_of(dense.str()), 2e-4, /*floor=*/1.0));
}

TEST(Upcycle, SharedExpertCopyWithZeroConcatProjectionReproducesDenseLogits) {
  // The routed sum is zeroed by the concat projection, so only the shared
  // expert remains: sigmoid(0) * (2 * down_proj) must give back the dense FFN.
  TempDir dense, out;
  make_dense("qwen2", dense.str(), 6);
  UpcycleOptions o = upcycle_preset("finermoe");
  o.G_I = 4;  // 80 / 4
  o.concat_proj = "zeros";
  auto report = upcycle(dense.str(), out.str(), quiet(o));
  const ModelConfig& c = report.plan.config;
  EXPECT_EQ(c.model_type, "finer_moe");
  EXPECT_EQ(c.shared_expert_intermediate_size, 80);
  EXPECT_TRUE(c.moe_concat_proj);
  EXPECT_TRUE(test::AllClose(logits_of(out.str()), logits_of(dense.str()), 2e-4, /*floor=*/1.0));
}

// Eq. 10 written as a mixed-radix decomposition of the expert index:
//   e = ((g_o * R_O + r_o) * R_I + r_i) * G_I + j
// (FineRMoE Eq. 6 orders experts by output slice, candidate group, then the
// G_I*R_I experts of a group, whose slice index runs fastest).
struct Digits {
  int64_t j, r_i, r_o, g_o;
};
Digits digits(int64_t e, int64_t G_I, int64_t R_I, int64_t R_O) {
  Digits d;
  d.j = e % G_I;
  e /= G_I;
  d.r_i = e % R_I;
  e /= R_I;
  d.r_o = e % R_O;
  d.g_o = e / R_O;
  return d;
}

TEST(Upcycle, ExpertSlicesFollowEquation10) {
  TempDir dense, out;
  make_dense("llama", dense.str(), 7);
  const int64_t G_I = 4, R_I = 2, G_O = 2, R_O = 3, D = 48, F = 80;
  UpcycleOptions o;
  o.G_I = G_I, o.R_I = R_I, o.G_O = G_O, o.R_O = R_O, o.T_I = 1;
  o.expert_scale = "none";
  auto report = upcycle(dense.str(), out.str(), quiet(o));
  ASSERT_EQ(report.plan.config.model_type, "finer_moe");
  ASSERT_EQ(report.plan.config.num_experts, G_I * R_I * G_O * R_O);
  EXPECT_EQ(report.plan.config.num_experts_per_tok, G_O);  // T_I * G_O

  auto rd = CheckpointReader::open(dense.str()), ro = CheckpointReader::open(out.str());
  const int64_t He = F / G_I, Ds = D / G_O;
  for (int layer = 0; layer < 2; ++layer) {
    const std::string l = "model.layers." + std::to_string(layer) + ".mlp.";
    const auto gate = tensor_of(rd, l + "gate_proj.weight");  // [F, D]
    const auto up = tensor_of(rd, l + "up_proj.weight");      // [F, D]
    const auto down = tensor_of(rd, l + "down_proj.weight");  // [D, F]
    std::map<std::pair<int64_t, int64_t>, int> seen;          // (j, g_o) -> replicas
    for (int64_t e = 0; e < 48; ++e) {
      const Digits d = digits(e, G_I, R_I, R_O);
      const std::string x = l + "experts." + std::to_string(e) + ".";
      ++seen[{d.j, d.g_o}];
      using torch::indexing::Slice;
      auto rows = Slice(d.j * He, (d.j + 1) * He);
      EXPECT_TRUE(tensor_of(ro, x + "gate_proj.weight").equal(gate.index({rows})))
          << "layer " << layer << " expert " << e;
      EXPECT_TRUE(tensor_of(ro, x + "up_proj.weight").equal(up.index({rows})));
      EXPECT_TRUE(tensor_of(ro, x + "down_proj.weight")
                      .equal(down.index({Slice(d.g_o * Ds, (d.g_o + 1) * Ds), rows})))
          << "layer " << layer << " expert " << e;
    }
    // every (slice, output slice) pair appears R_I * R_O times: exact replicas
    EXPECT_EQ(seen.size(), size_t(G_I * G_O));
    for (const auto& [key, n] : seen) EXPECT_EQ(n, R_I * R_O);
  }

  // the default is Eq. 10 unscaled (the paper's setting); "down" is down_proj x G_I
  TempDir plain, scaled;
  UpcycleOptions d = o;
  d.expert_scale = UpcycleOptions{}.expert_scale;
  EXPECT_EQ(d.expert_scale, "none");
  EXPECT_EQ(upcycle_preset("split").expert_scale, "none");
  EXPECT_EQ(upcycle_preset("nvshard").expert_scale, "glu");
  upcycle(dense.str(), plain.str(), quiet(d));
  auto rp = CheckpointReader::open(plain.str());
  EXPECT_TRUE(tensor_of(rp, "model.layers.1.mlp.experts.29.down_proj.weight")
                  .equal(tensor_of(ro, "model.layers.1.mlp.experts.29.down_proj.weight")));
  o.expert_scale = "down";
  upcycle(dense.str(), scaled.str(), quiet(o));
  auto rs = CheckpointReader::open(scaled.str());
  const std::string x = "model.layers.1.mlp.experts.29.";
  EXPECT_TRUE(tensor_of(rs, x + "down_proj.weight")
                  .equal(tensor_of(ro, x + "down_proj.weight") * double(G_I)));
  EXPECT_TRUE(tensor_of(rs, x + "gate_proj.weight").equal(tensor_of(ro, x + "gate_proj.weight")));
}

TEST(Upcycle, NvShardUsesVirtualGroupRouterAndCubeRootScaling) {
  TempDir dense, out;
  make_dense("llama", dense.str(), 8);
  auto report = upcycle(dense.str(), out.str(), quiet(upcycle_preset("nvshard")));
  const ModelConfig& c = report.plan.config;
  EXPECT_EQ(c.num_experts, 64);
  EXPECT_EQ(c.num_experts_per_tok, 8);
  auto rd = CheckpointReader::open(dense.str()), ro = CheckpointReader::open(out.str());
  const auto router = tensor_of(ro, "model.layers.0.block_sparse_moe.gate.weight");  // [64, D]
  for (int64_t e = 0; e < 64; ++e) {
    // a replica's 8 shards share one router row; replicas differ
    EXPECT_TRUE(router[e].equal(router[e - e % 8])) << e;
    if (e % 8 == 0 && e > 0) {
      EXPECT_FALSE(router[e].equal(router[e - 8])) << e;
    }
  }
  const double s = std::cbrt(8.0);  // 2
  const auto up = tensor_of(rd, "model.layers.0.mlp.up_proj.weight");      // [80, 48]
  const auto down = tensor_of(rd, "model.layers.0.mlp.down_proj.weight");  // [48, 80]
  const std::string x = "model.layers.0.block_sparse_moe.experts.13.";    // shard 5 of 8
  using torch::indexing::Slice;
  EXPECT_LT(max_abs_diff(tensor_of(ro, x + "w3.weight"), up.index({Slice(50, 60)}) * s), 1e-6);
  EXPECT_LT(max_abs_diff(tensor_of(ro, x + "w2.weight"), down.index({Slice(), Slice(50, 60)}) * s),
            1e-6);
}

TEST(Upcycle, VirtualGroupsWithDownScalingReproduceDenseLogits) {
  // top-8 takes one replica's 8 shards (they share a router row), weights 1/8,
  // down_proj x8: the whole FFN, whichever replica a token picks
  TempDir dense, out;
  make_dense("mistral", dense.str(), 15);
  UpcycleOptions o = upcycle_preset("nvshard");
  o.expert_scale = "down";
  upcycle(dense.str(), out.str(), quiet(o));
  EXPECT_TRUE(test::AllClose(logits_of(out.str()), logits_of(dense.str()), 2e-4, /*floor=*/1.0));
}

TEST(Upcycle, DropUpcyclingReinitialisesHalfOfEachExpertWithTheSliceStatistics) {
  TempDir dense, out;
  make_dense("llama", dense.str(), 9);
  auto report = upcycle(dense.str(), out.str(), quiet(upcycle_preset("drop")));
  ASSERT_EQ(report.plan.config.num_experts, 8);
  auto rd = CheckpointReader::open(dense.str()), ro = CheckpointReader::open(out.str());
  std::set<std::vector<int64_t>> index_sets;
  for (int layer = 0; layer < 2; ++layer) {
    const std::string l = "model.layers." + std::to_string(layer) + ".";
    const auto gate = tensor_of(rd, l + "mlp.gate_proj.weight");  // [80, 48]
    const auto up = tensor_of(rd, l + "mlp.up_proj.weight");
    const auto down = tensor_of(rd, l + "mlp.down_proj.weight");  // [48, 80]
    for (int e = 0; e < 8; ++e) {
      const std::string x = l + "block_sparse_moe.experts." + std::to_string(e) + ".";
      const auto g = tensor_of(ro, x + "w1.weight"), u = tensor_of(ro, x + "w3.weight");
      const auto d = tensor_of(ro, x + "w2.weight");
      // a row (column of down) is re-initialised when any of its values changed
      auto changed_g = g.ne(gate).any(1), changed_u = u.ne(up).any(1), changed_d = d.ne(down).any(0);
      EXPECT_EQ(changed_g.sum().item<int64_t>(), 40) << "layer " << layer << " expert " << e;
      EXPECT_TRUE(changed_g.equal(changed_u));
      EXPECT_TRUE(changed_g.equal(changed_d));
      // the kept rows are the dense ones exactly, the dropped rows entirely new
      auto keep = changed_g.logical_not();
      EXPECT_TRUE(g.index({keep}).equal(gate.index({keep})));
      EXPECT_TRUE(d.index({torch::indexing::Slice(), keep}).equal(
          down.index({torch::indexing::Slice(), keep})));
      EXPECT_TRUE(g.index({changed_g}).ne(gate.index({changed_g})).all().item<bool>());
      // statistics of the new values follow the slice they replace (loose:
      // 40 x 48 draws of N(0, 0.2^2) weights)
      for (auto [name, now, before, dim] :
           {std::tuple{"gate", g, gate, 0}, {"up", u, up, 0}, {"down", d, down, 1}}) {
        auto idx = changed_g.nonzero().squeeze(1);
        auto fresh = now.index_select(dim, idx), old = before.index_select(dim, idx);
        EXPECT_NEAR(fresh.mean().item<double>(), old.mean().item<double>(), 0.03) << name;
        EXPECT_NEAR(fresh.std().item<double>() / old.std().item<double>(), 1.0, 0.1) << name;
      }
      auto idx = changed_g.nonzero().squeeze(1).contiguous();  // [40]
      index_sets.insert(
          std::vector<int64_t>(idx.data_ptr<int64_t>(), idx.data_ptr<int64_t>() + idx.numel()));
    }
  }
  EXPECT_GT(index_sets.size(), 8u);  // index sets are drawn per expert
}

TEST(Upcycle, DropCountRoundsHalvesUp) {
  TempDir dense, out;
  make_dense("llama", dense.str(), 10);
  UpcycleOptions o = upcycle_preset("split");  // width 80 / 16 = 5 per expert
  o.drop_ratio = 0.5;                          // 2.5 -> 3 rows
  upcycle(dense.str(), out.str(), quiet(o));
  auto rd = CheckpointReader::open(dense.str()), ro = CheckpointReader::open(out.str());
  const auto gate = tensor_of(rd, "model.layers.0.mlp.gate_proj.weight");
  for (int e = 0; e < 16; ++e) {
    auto g = tensor_of(ro, "model.layers.0.block_sparse_moe.experts." + std::to_string(e) +
                               ".w1.weight");  // [5, 48]
    auto slice = gate.index({torch::indexing::Slice(5 * e, 5 * e + 5)});
    EXPECT_EQ(g.ne(slice).any(1).sum().item<int64_t>(), 3) << e;
  }
}

TEST(Upcycle, PresetParamCountsMatchConfigAndLoadedModel) {
  TempDir dense;
  make_dense("qwen2", dense.str(), 11, /*ffn=*/64);  // divisible by finermoe's G_I = 32
  for (const auto& name : upcycle_preset_names()) {
    TempDir out;
    auto report = upcycle(dense.str(), out.str(), quiet(upcycle_preset(name)));
    const UpcyclePlan& p = report.plan;
    Transformer m = load_model(out.str());
    const ParamCount pc = m.param_count();
    EXPECT_EQ(p.params(), p.config.param_count()) << name;
    EXPECT_EQ(p.active_params(), p.config.active_param_count()) << name;
    EXPECT_EQ(p.params(), pc.total) << name;
    EXPECT_EQ(p.active_params(), pc.active) << name;
    // every preset's output runs
    torch::NoGradGuard g;
    EXPECT_TRUE(m.forward(tokens()).isfinite().all().item<bool>()) << name;
    // the tokenizer files travel with the model
    EXPECT_TRUE(std::filesystem::exists(out.path / "tokenizer_config.json")) << name;
  }
}

TEST(Upcycle, SeparateRoutersAddAConcatenationRouterDrawnAsTheFirst) {
  TempDir dense, single, separate, zeros;
  make_dense("qwen2", dense.str(), 16);
  UpcycleOptions o = upcycle_preset("finermoe");  // G_O = R_O = 2, router normal:0.02
  o.G_I = 4, o.seed = 3;
  upcycle(dense.str(), single.str(), quiet(o));
  o.router_mode = "separate";
  auto report = upcycle(dense.str(), separate.str(), quiet(o));
  const ModelConfig& c = report.plan.config;
  EXPECT_EQ(c.raw.value("router_mode", ""), "separate");
  auto rs = CheckpointReader::open(single.str()), rp = CheckpointReader::open(separate.str());
  for (int layer = 0; layer < 2; ++layer) {
    const std::string p = "model.layers." + std::to_string(layer) + ".mlp.";
    auto cg = tensor_of(rp, p + "concat_gate.weight");
    ASSERT_EQ(cg.sizes(), (std::vector<int64_t>{4, 48}));
    EXPECT_NEAR(cg.std().item<double>(), 0.02, 0.004) << layer;  // 192 draws of N(0, 0.02^2)
    EXPECT_NEAR(cg.mean().item<double>(), 0.0, 0.005) << layer;
    // the experts and the first router are the single-router model's
    EXPECT_TRUE(tensor_of(rs, p + "experts.5.down_proj.weight")
                    .equal(tensor_of(rp, p + "experts.5.down_proj.weight")));
    EXPECT_TRUE(tensor_of(rs, p + "gate.weight").equal(tensor_of(rp, p + "gate.weight"))) << layer;
  }
  Transformer m = load_model(separate.str());
  EXPECT_TRUE(separate_routers(m.config()));
  EXPECT_EQ(m.param_count().total, report.plan.params());
  EXPECT_EQ(report.plan.params(), ModelConfig::load(single.str()).param_count() + 2 * 4 * 48);
  // a zero router gives a zero concatenation router
  o.router_init = "zeros";
  upcycle(dense.str(), zeros.str(), quiet(o));
  auto rz = CheckpointReader::open(zeros.str());
  EXPECT_EQ(tensor_of(rz, "model.layers.1.mlp.concat_gate.weight").abs().sum().item<double>(), 0.0);
  torch::NoGradGuard g;
  EXPECT_TRUE(m.forward(tokens()).isfinite().all().item<bool>());
}

TEST(Upcycle, SeparateRoutersNeedFinerMoeWithCandidates) {
  TempDir dense, out;
  make_dense("qwen2", dense.str(), 17);
  UpcycleOptions o = upcycle_preset("finermoe");
  o.G_I = 4, o.router_mode = "bogus";
  EXPECT_CONTAINS(message_of([&] { upcycle(dense.str(), out.str(), quiet(o)); }),
                  "router-mode 'bogus'");
  o.router_mode = "separate", o.R_O = 1;
  EXPECT_CONTAINS(message_of([&] { upcycle(dense.str(), out.str(), quiet(o)); }),
                  "router-mode separate needs R_O > 1");
  o = upcycle_preset("split");
  o.G_I = 4, o.router_mode = "separate";
  EXPECT_CONTAINS(message_of([&] { upcycle(dense.str(), out.str(), quiet(o)); }),
                  "router-mode separate needs --format finer_moe");
  EXPECT_FALSE(std::filesystem::exists(out.path / "config.json"));
}

TEST(Upcycle, WritesShardsAsTheyFill) {
  TempDir dense, out;
  make_dense("llama", dense.str(), 12);
  UpcycleOptions o = quiet(upcycle_preset("copy"));
  o.max_shard_bytes = 200'000;
  auto report = upcycle(dense.str(), out.str(), o);
  EXPECT_GT(report.num_shards, 4u);
  EXPECT_TRUE(std::filesystem::exists(out.path / "model.safetensors.index.json"));
  EXPECT_TRUE(test::AllClose(logits_of(out.str()), logits_of(dense.str()), 2e-4, /*floor=*/1.0));
}

TEST(Upcycle, BadInputNamesTheOptionOrField) {
  TempDir dense, out, moe;
  make_dense("llama", dense.str(), 13);
  EXPECT_CONTAINS(message_of([] { upcycle_preset("bogus"); }), "preset 'bogus'");
  UpcycleOptions o;
  o.G_I = 3;
  std::string msg = message_of([&] { upcycle(dense.str(), out.str(), quiet(o)); });
  EXPECT_CONTAINS(msg, "G_I=3");
  EXPECT_CONTAINS(msg, "intermediate_size=80");
  o.G_I = 1, o.G_O = 5;
  msg = message_of([&] { upcycle(dense.str(), out.str(), quiet(o)); });
  EXPECT_CONTAINS(msg, "G_O=5");
  EXPECT_CONTAINS(msg, "hidden_size=48");
  o.G_O = 1, o.T_I = 3, o.R_I = 2;
  EXPECT_CONTAINS(message_of([&] { upcycle(dense.str(), out.str(), quiet(o)); }), "T_I=3");
  o.T_I = 1, o.R_I = 1;
  o.format = "mixtral", o.shared_expert = "copy";
  EXPECT_CONTAINS(message_of([&] { upcycle(dense.str(), out.str(), quiet(o)); }),
                  "--format mixtral");
  // an input that is already a mixture of experts
  Transformer m(test::tiny_config("mixtral"));
  init_random(m, 1);
  save_model(m, moe.str());
  msg = message_of([&] { upcycle(moe.str(), out.str(), quiet(UpcycleOptions{})); });
  EXPECT_CONTAINS(msg, "model_type 'mixtral' is not a dense model");
  EXPECT_CONTAINS(msg, moe.str());
  EXPECT_FALSE(std::filesystem::exists(out.path / "config.json"));
}

TEST(Upcycle, QwenOutputsKeepTheAttentionBiasAndWindowSettings) {
  TempDir dense, out;
  ModelConfig d = make_dense("qwen2", dense.str(), 14);
  UpcycleOptions o = quiet(upcycle_preset("copy"));
  o.shared_expert = "copy";
  auto report = upcycle(dense.str(), out.str(), o);
  const ModelConfig c = ModelConfig::load(out.str());
  EXPECT_EQ(c.model_type, "qwen2_moe");
  EXPECT_TRUE(c.attention_bias);
  EXPECT_TRUE(c.norm_topk_prob);
  EXPECT_EQ(c.tie_word_embeddings, d.tie_word_embeddings);
  EXPECT_EQ(c.rope_theta, d.rope_theta);
  EXPECT_EQ(c.architectures, std::vector<std::string>{"Qwen2MoeForCausalLM"});
}

}  // namespace
}  // namespace finmoe
