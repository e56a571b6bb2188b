// The inference entry (ragged batches over a paged KV cache) must give the
// training forward's logits on the same tokens, and the packed-document mask
// must equal running each document alone.
#include <gtest/gtest.h>

#include <numeric>
#include <optional>
#include <random>

#include "finmoe/error.h"
#include "model/rope.h"
#include "test_util.h"
#include "../scoped_env.h"
#include "../tolerance.h"

namespace finmoe {
namespace {

Transformer random_model(const std::string& arch, torch::Dtype dtype = torch::kFloat32,
                         uint64_t seed = 7) {
  Transformer m(test::tiny_config(arch), dtype, test::test_device());
  init_random(m, seed);
  return m;
}

torch::Tensor random_tokens(int64_t n, int64_t vocab, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  return at::randint(vocab, {n}, gen, torch::TensorOptions().dtype(torch::kInt64));
}

// A parameter "arch@mode" runs an MLA architecture with FINMOE_MLA_ATTENTION=mode
// (absorbed or expanded attention over the latent cache for every sequence).
class PagedStep : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const std::string p = ::testing::TestWithParam<std::string>::GetParam();
    const auto at = p.find('@');
    arch_ = p.substr(0, at);
    if (at != std::string::npos)
      env_.emplace("FINMOE_MLA_ATTENTION", p.substr(at + 1).c_str());
  }
  const std::string& GetParam() const { return arch_; }

 private:
  std::string arch_;
  std::optional<test::ScopedEnv> env_;
};

TEST_P(PagedStep, RaggedMixedBatchesEqualFullForward) {
  auto model = random_model(GetParam());
  const int64_t V = model.config().vocab_size;
  const std::vector<int64_t> lengths{23, 5, 40};
  std::vector<torch::Tensor> toks;
  std::vector<torch::Tensor> full;
  torch::NoGradGuard no_grad;
  for (size_t s = 0; s < lengths.size(); ++s) {
    toks.push_back(random_tokens(lengths[s], V, 100 + s));
    full.push_back(model.forward(toks[s].unsqueeze(0))[0]);  // [T,V]
  }
  // block size 4, blocks handed out shuffled so tables are non-contiguous
  const int64_t bs = 4;
  std::vector<int32_t> pool(40);
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), std::mt19937(3));
  std::vector<std::vector<int32_t>> tables(3);
  size_t next = 0;
  for (size_t s = 0; s < 3; ++s)
    for (int64_t b = 0; b < (lengths[s] + bs - 1) / bs; ++b) tables[s].push_back(pool[next++]);
  KVCache cache(model, 40, bs);

  // Each step takes up to `chunk[s]` tokens from each unfinished sequence:
  // sequences are mid-prefill, decoding, or finished at different times.
  const std::vector<int64_t> chunk{7, 1, 13};
  std::vector<int64_t> done(3, 0);
  int steps = 0;
  while (done[0] < lengths[0] || done[1] < lengths[1] || done[2] < lengths[2]) {
    StepBatch batch;
    batch.all_logits = true;
    std::vector<std::pair<size_t, int64_t>> rows;  // (sequence, first position)
    for (size_t s = 0; s < 3; ++s) {
      const int64_t n = std::min(chunk[s], lengths[s] - done[s]);
      if (n == 0) continue;
      StepBatch::Seq q{int64_t(batch.tokens.size()), n, done[s] + n, tables[s]};
      for (int64_t i = 0; i < n; ++i) {
        batch.tokens.push_back(int32_t(toks[s][done[s] + i].item<int64_t>()));
        batch.positions.push_back(int32_t(done[s] + i));
      }
      batch.seqs.push_back(q);
      rows.emplace_back(s, done[s]);
      done[s] += n;
    }
    auto logits = model.step(batch, cache);  // [N,V]
    for (size_t k = 0; k < rows.size(); ++k) {
      const auto& q = batch.seqs[k];
      auto got = logits.narrow(0, q.q_start, q.q_len);
      auto want = full[rows[k].first].narrow(0, rows[k].second, q.q_len);
      ASSERT_TRUE(test::AllClose(got, want, 1e-4, /*floor=*/1.0))
          << "sequence " << rows[k].first << " positions " << rows[k].second << "+" << q.q_len;
    }
    ++steps;
  }
  EXPECT_GE(steps, 4);
}

TEST_P(PagedStep, LastTokenLogitsPerSequence) {
  auto model = random_model(GetParam());
  torch::NoGradGuard no_grad;
  auto a = random_tokens(9, model.config().vocab_size, 1);
  auto b = random_tokens(4, model.config().vocab_size, 2);
  KVCache cache(model, 8, 16);
  StepBatch batch;
  for (int64_t i = 0; i < 9; ++i) batch.tokens.push_back(int32_t(a[i].item<int64_t>()));
  for (int64_t i = 0; i < 4; ++i) batch.tokens.push_back(int32_t(b[i].item<int64_t>()));
  for (int i = 0; i < 9; ++i) batch.positions.push_back(i);
  for (int i = 0; i < 4; ++i) batch.positions.push_back(i);
  batch.seqs = {{0, 9, 9, {0}}, {9, 4, 4, {5}}};
  auto logits = model.step(batch, cache);  // [2,V]
  ASSERT_EQ(logits.size(0), 2);
  EXPECT_TRUE(test::AllClose(logits[0], model.forward(a.unsqueeze(0))[0][8], 1e-4, 1.0));
  EXPECT_TRUE(test::AllClose(logits[1], model.forward(b.unsqueeze(0))[0][3], 1e-4, 1.0));
}

TEST_P(PagedStep, Bfloat16StepTracksBfloat16Forward) {
  auto model = random_model(GetParam(), torch::kBFloat16);
  torch::NoGradGuard no_grad;
  auto toks = random_tokens(20, model.config().vocab_size, 9);
  auto full = model.forward(toks.unsqueeze(0))[0];
  KVCache cache(model, 4, 16);
  const double limit = 0.05 * full.abs().max().item<double>();
  int within = 0;
  double worst = 0;
  for (int64_t p = 0; p < 20; ++p) {
    StepBatch batch;
    batch.tokens = {int32_t(toks[p].item<int64_t>())};
    batch.positions = {int32_t(p)};
    batch.seqs = {{0, 1, p + 1, {2, 3}}};
    const double d = test::max_abs_diff(model.step(batch, cache)[0], full[p]);
    worst = std::max(worst, d);
    within += d < limit;
  }
  // different kernels and summation orders in bf16: within bf16 noise of the logits
  if (model.config().is_moe()) {
    // a router score rounded differently can pick another expert for a token (a
    // discrete change that then reaches later positions through attention)
    EXPECT_GE(within, 16) << "worst " << worst << " limit " << limit;
  } else {
    EXPECT_LT(worst, limit);
  }
}

TEST_P(PagedStep, PackedDocumentsEqualSeparateForwards) {
  auto model = random_model(GetParam());
  torch::NoGradGuard no_grad;
  const int64_t V = model.config().vocab_size;
  auto a = random_tokens(11, V, 5), b = random_tokens(6, V, 6), c = random_tokens(9, V, 7);
  auto packed = torch::cat({a, b, c}).unsqueeze(0);  // [1,26]
  auto docs = torch::cat({torch::zeros({11}, torch::kInt64), torch::ones({6}, torch::kInt64),
                          torch::full({9}, 2, torch::kInt64)})
                  .unsqueeze(0);
  auto logits = model.forward(packed, {.document_ids = docs})[0];
  EXPECT_TRUE(test::AllClose(logits.narrow(0, 0, 11), model.forward(a.unsqueeze(0))[0], 1e-4, 1.0));
  EXPECT_TRUE(test::AllClose(logits.narrow(0, 11, 6), model.forward(b.unsqueeze(0))[0], 1e-4, 1.0));
  EXPECT_TRUE(test::AllClose(logits.narrow(0, 17, 9), model.forward(c.unsqueeze(0))[0], 1e-4, 1.0));
  // without the document mask the later documents see the earlier ones
  auto plain = model.forward(packed)[0];
  EXPECT_GT(test::max_abs_diff(plain.narrow(0, 11, 6), model.forward(b.unsqueeze(0))[0]), 1e-3);
}

INSTANTIATE_TEST_SUITE_P(Architectures, PagedStep,
                         ::testing::Values("llama", "qwen2", "mistral", "mixtral", "qwen2_moe",
                                           "finer_moe", "finmoe_dense", "mistral_sliding",
                                           "qwen2_sliding", "deepseek_v2", "deepseek_v3",
                                           "deepseek_v2@absorbed", "deepseek_v3@absorbed",
                                           "deepseek_v2@expanded", "deepseek_v3@expanded"),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& ch : name)
                             if (ch == '@') ch = '_';
                           return name;
                         });

TEST(PagedStepValidation, BadBatchesAreRejectedByField) {
  auto model = random_model("llama");
  KVCache cache(model, 2, 4);
  StepBatch batch;
  batch.tokens = {1, 2, 3};
  batch.positions = {0, 1};
  batch.seqs = {{0, 3, 3, {0}}};
  EXPECT_THROW(model.step(batch, cache), Error);
  batch.positions = {0, 1, 2};
  batch.seqs = {{0, 3, 3, {7}}};  // block out of range
  try {
    model.step(batch, cache);
    FAIL() << "expected Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("block id 7"), std::string::npos) << e.what();
  }
  batch.seqs = {{0, 3, 5, {0, 1}}};  // context_len disagrees with positions
  EXPECT_THROW(model.step(batch, cache), Error);
}

TEST(Rope, InterleavedLayoutRotatesAdjacentPairs) {
  // one head, dim 4, position 1: pairs (x0,x1) and (x2,x3) rotate by theta_0, theta_1
  auto cfg = test::tiny_config("llama");
  cfg.rope_interleaved = true;
  cfg.head_dim = 4;
  Rope rope(cfg, 4);
  auto [cos, sin] = rope.cos_sin(torch::tensor({1}, torch::kInt64));
  auto x = torch::tensor({1.0f, 2.0f, 3.0f, 4.0f}).view({1, 1, 4});
  auto y = rope.apply(x, cos, sin).view({4});
  const double t0 = 1.0, t1 = 1.0 / std::pow(10000.0, 2.0 / 4.0);
  std::vector<double> want{1 * std::cos(t0) - 2 * std::sin(t0), 2 * std::cos(t0) + 1 * std::sin(t0),
                           3 * std::cos(t1) - 4 * std::sin(t1), 4 * std::cos(t1) + 3 * std::sin(t1)};
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(y[i].item<double>(), want[size_t(i)], 1e-6);
}

}  // namespace
}  // namespace finmoe

namespace finmoe {
namespace {

TEST(SlidingWindow, TokensBeyondTheWindowDoNotChangeTheLogits) {
  // With window W, the last token's logits depend only on the last W tokens
  // per layer: changing a token that every layer has slid past (position 0
  // of 2W+2 tokens, out of sight of the last token even through the other
  // layer) leaves them unchanged; a full-attention model would change.
  auto cfg = test::tiny_config("mistral_sliding");
  const int64_t W = *cfg.sliding_window, T = 2 * W + 2;
  Transformer m(cfg);
  init_random(m, 2);
  torch::NoGradGuard g;
  auto a = random_tokens(T, cfg.vocab_size, 5).unsqueeze(0);  // [1,T]
  auto b = a.clone();
  b[0][0] = (a[0][0].item<int64_t>() + 1) % cfg.vocab_size;
  auto la = m.forward(a), lb = m.forward(b);
  EXPECT_TRUE(torch::equal(la[0][T - 1], lb[0][T - 1]));
  EXPECT_FALSE(torch::allclose(la[0][1], lb[0][1]));  // within the window it matters
  auto full_cfg = cfg;
  full_cfg.sliding_window.reset();
  full_cfg.sliding_layers.assign(size_t(cfg.num_hidden_layers), false);
  Transformer full(full_cfg);
  init_random(full, 2);
  EXPECT_FALSE(torch::allclose(full.forward(a)[0][T - 1], full.forward(b)[0][T - 1]));
}

}  // namespace
}  // namespace finmoe
