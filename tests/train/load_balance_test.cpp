// The load-balancing loss in its two forms (finmoe/load_balance.h) against
// loop references written from the definitions: per sequence over its real
// tokens (FineRMoE Eq. 11, DeepSeek seq_aux), per micro-batch (Switch /
// Mixtral / Qwen2-MoE); padding never counts; the trainer picks the
// architecture's form and takes a config override (SFT padding: dataset_test).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "../expect_error.h"
#include "finmoe/load_balance.h"
#include "train_test_util.h"

namespace finmoe {
namespace {

using test::TempDir;

// alpha * sum_i f_i P_i over the tokens t of `group` (indices into the
// flattened [B*T] routing), computed with scalar loops in double.
double group_term(const RouterOutput& r, const std::vector<int64_t>& group, double alpha) {
  if (group.empty()) return 0;
  const int64_t N = r.logits.size(1), K = r.indices.size(1);
  auto s = torch::softmax(r.logits.detach().to(torch::kFloat64), -1);
  double sum = 0;
  for (int64_t i = 0; i < N; ++i) {
    double count = 0, p = 0;
    for (int64_t t : group) {
      for (int64_t k = 0; k < K; ++k) count += r.indices[t][k].item<int64_t>() == i;
      p += s[t][i].item<double>();
    }
    const double L = double(group.size());
    sum += (double(N) / (double(K) * L) * count) * (p / L);
  }
  return alpha * sum;
}

// The reference: per sequence = mean over rows with a real token of each
// row's term; batch = one term over every real token. Summed over layers.
double reference(const std::vector<RouterOutput>& routers, double alpha, LoadBalance form, int64_t B,
                 const torch::Tensor& padding) {
  double total = 0;
  for (const auto& r : routers) {
    const int64_t T = r.logits.size(0) / B;
    auto is_pad = [&](int64_t b, int64_t t) {
      return padding.defined() && padding[b][t].item<bool>();
    };
    if (form == LoadBalance::Batch) {
      std::vector<int64_t> all;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < T; ++t)
          if (!is_pad(b, t)) all.push_back(b * T + t);
      total += group_term(r, all, alpha);
    } else {
      double sum = 0;
      int64_t rows = 0;
      for (int64_t b = 0; b < B; ++b) {
        std::vector<int64_t> row;
        for (int64_t t = 0; t < T; ++t)
          if (!is_pad(b, t)) row.push_back(b * T + t);
        if (row.empty()) continue;
        sum += group_term(r, row, alpha);
        ++rows;
      }
      total += rows ? sum / double(rows) : 0;
    }
  }
  return total;
}

RouterOutput random_router(int64_t tokens, int64_t N, int64_t K, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  RouterOutput r;
  // a skew per token block so that rows route differently
  r.logits = at::normal(0.0, 1.5, {tokens, N}, gen, torch::TensorOptions()).requires_grad_(true);
  r.indices = std::get<1>(r.logits.detach().topk(K, -1));
  r.weights = torch::ones({tokens, K});
  return r;
}

TEST(LoadBalance, BothFormsMatchTheirDefinitionsWithPadding) {
  const int64_t B = 4, T = 9, N = 8, K = 2;
  const double alpha = 0.01;
  std::vector<RouterOutput> routers{random_router(B * T, N, K, 3), random_router(B * T, N, K, 4)};
  auto padding = torch::zeros({B, T}, torch::kBool);
  padding[1].narrow(0, 6, 3).fill_(true);  // a row ending in padding
  padding[3].fill_(true);                  // a row of padding only
  for (LoadBalance form : {LoadBalance::Sequence, LoadBalance::Batch}) {
    SCOPED_TRACE(load_balance_name(form));
    for (const torch::Tensor& pad : {torch::Tensor(), padding}) {
      const double got = load_balancing_loss(routers, alpha, form, B, pad).item<double>();
      EXPECT_NEAR(got, reference(routers, alpha, form, B, pad), 1e-7);
    }
  }
  // The forms differ on this routing, and padding changes each.
  const double seq = load_balancing_loss(routers, alpha, LoadBalance::Sequence, B, {}).item<double>();
  const double batch = load_balancing_loss(routers, alpha, LoadBalance::Batch, B, {}).item<double>();
  EXPECT_GT(std::abs(seq - batch), 1e-5);
  // The batch form without padding is the model layer's load_balancing_loss.
  EXPECT_NEAR(batch, load_balancing_loss(routers, alpha).item<double>(), 1e-9);
}

TEST(LoadBalance, PaddingTokensGetNoGradient) {
  const int64_t B = 2, T = 6;
  RouterOutput r = random_router(B * T, 6, 2, 11);
  auto padding = torch::zeros({B, T}, torch::kBool);
  padding[0].narrow(0, 4, 2).fill_(true);
  for (LoadBalance form : {LoadBalance::Sequence, LoadBalance::Batch}) {
    r.logits.mutable_grad() = torch::Tensor();
    load_balancing_loss({r}, 0.1, form, B, padding).backward();
    auto g = r.logits.grad().view({B, T, -1}).abs().sum(-1);  // [B,T]
    EXPECT_EQ(g[0].narrow(0, 4, 2).sum().item<double>(), 0.0);
    EXPECT_GT(g[0].narrow(0, 0, 4).min().item<double>(), 0.0);
    EXPECT_GT(g[1].min().item<double>(), 0.0);
  }
}

// Each row routes every token to one expert of its own: the batch is
// balanced while no sequence is. With uniform scores both forms are alpha;
// once each row's scores favour its expert the sequence form grows to
// alpha*N*p_own while the batch form stays alpha (f_i = 1, sum_i P_i = 1).
TEST(LoadBalance, SequenceFormSeesImbalanceTheBatchAverageHides) {
  const int64_t B = 4, T = 5, N = 4;
  RouterOutput r;
  r.logits = torch::zeros({B * T, N});  // uniform scores: P_i = 1/N
  r.indices = torch::arange(B, torch::kInt64).repeat_interleave(T).view({B * T, 1});
  r.weights = torch::ones({B * T, 1});
  EXPECT_NEAR(load_balancing_loss({r}, 1.0, LoadBalance::Batch, B, {}).item<double>(), 1.0, 1e-6);
  EXPECT_NEAR(load_balancing_loss({r}, 1.0, LoadBalance::Sequence, B, {}).item<double>(), 1.0, 1e-6);
  // now skew the scores towards each row's expert: only the sequence form rewards it
  for (int64_t b = 0; b < B; ++b) r.logits.narrow(0, b * T, T).select(1, b).fill_(2.0);
  const double seq = load_balancing_loss({r}, 1.0, LoadBalance::Sequence, B, {}).item<double>();
  const double batch = load_balancing_loss({r}, 1.0, LoadBalance::Batch, B, {}).item<double>();
  const double p_own = std::exp(2.0) / (std::exp(2.0) + 3.0);
  EXPECT_NEAR(batch, 1.0, 1e-6);      // f = 1 for every expert, sum_i P_i = 1
  EXPECT_NEAR(seq, N * p_own, 1e-6);  // f = N on the row's expert
}

TEST(LoadBalance, ParseAndDefaults) {
  EXPECT_EQ(parse_load_balance("sequence", "x"), LoadBalance::Sequence);
  EXPECT_EQ(parse_load_balance("batch", "x"), LoadBalance::Batch);
  EXPECT_CONTAINS(test::message_of([] { parse_load_balance("token", "moe_aux_loss_type"); }),
                  "moe_aux_loss_type");
  EXPECT_EQ(default_load_balance(test::tiny_config("finer_moe")), LoadBalance::Sequence);
  EXPECT_EQ(default_load_balance(test::tiny_config("deepseek_v3")), LoadBalance::Sequence);
  EXPECT_EQ(default_load_balance(test::tiny_config("mixtral")), LoadBalance::Batch);
  EXPECT_EQ(default_load_balance(test::tiny_config("qwen2_moe")), LoadBalance::Batch);
}

// A source of random rows whose second row ends in 4 pad tokens.
class PaddedSource : public test::SyntheticSource {
 public:
  using SyntheticSource::SyntheticSource;
  TrainBatch next() override {
    TrainBatch b = SyntheticSource::next();
    b.padding = torch::zeros(b.tokens.sizes(), torch::kBool);
    const int64_t T = b.tokens.size(1);
    b.padding[1].narrow(0, T - 4, 4).fill_(true);
    b.labels[1].narrow(0, T - 5, 5).fill_(-100);
    return b;
  }
};

// The trainer's aux_loss for a finer_moe model is the per-sequence form over
// real tokens by default, the batch form when the config says so; the run's
// train_config.json records the form.
TEST(LoadBalance, TrainerUsesTheArchitecturesFormAndTheOverride) {
  TempDir model;
  const ModelConfig mc = test::save_tiny_model("finer_moe", model.str(), 5);
  for (const std::string type : {"", "batch"}) {
    SCOPED_TRACE("moe_aux_loss_type '" + type + "'");
    TempDir out;
    TrainConfig c = test::tiny_train_config(model.str(), out.str());
    c.moe_aux_loss_alpha = 0.3;
    c.moe_aux_loss_type = type;
    TrainerHooks hooks = test::synthetic_hooks(mc.vocab_size);
    hooks.make_source = [&](const DataConfig& d) -> std::unique_ptr<BatchSource> {
      return std::make_unique<PaddedSource>(d, mc.vocab_size);
    };
    Transformer m = load_model(model.str(), {torch::kFloat32});
    PaddedSource src(c.data, mc.vocab_size);
    const TrainBatch b = src.next();
    std::vector<RouterOutput> routers;
    {
      torch::NoGradGuard g;
      m.forward(b.tokens, {torch::Tensor(), &routers});
    }
    ASSERT_FALSE(routers.empty());
    const LoadBalance form = type.empty() ? LoadBalance::Sequence : LoadBalance::Batch;
    const double expected = reference(routers, 0.3, form, b.tokens.size(0), b.padding);
    Trainer t(c, hooks);
    EXPECT_NEAR(t.step().aux_loss, expected, 1e-6);
    std::ifstream in(out.str() + "/train_config.json");
    const auto j = nlohmann::json::parse(in);
    EXPECT_EQ(j.at("moe_aux_loss_type"), load_balance_name(form));
  }
  TempDir out;
  TrainConfig c = test::tiny_train_config(model.str(), out.str());
  c.moe_aux_loss_type = "token";
  EXPECT_CONTAINS(test::message_of([&] { c.validate(); }), "moe_aux_loss_type");
}

}  // namespace
}  // namespace finmoe
