// evaluate_lm: held-out loss per label token, checked against cross-entropy
// computed directly from the forward logits with log_softmax + gather.
#include <gtest/gtest.h>

#include <cmath>

#include "../expect_error.h"
#include "train_test_util.h"

namespace finmoe {
namespace {

TEST(EvaluateLm, MeanCrossEntropyOverLabelTokensOfEveryBatch) {
  auto cfg = test::tiny_config("qwen2");
  Transformer model(cfg);
  init_random(model, 3);
  DataConfig dc;
  dc.batch_size = 2;
  dc.seq_len = 12;
  // prompt-like masking on every second row: batches carry different label counts
  test::SyntheticSource source(dc, cfg.vocab_size, "random", 7, /*mask_rows_every=*/2);
  test::SyntheticSource replay(dc, cfg.vocab_size, "random", 7, 2);
  int64_t calls = 0;
  const EvalResult r = evaluate_lm(model, source, 3, [&](int64_t done) { calls = done; });
  EXPECT_EQ(calls, 3);

  torch::NoGradGuard g;
  double sum = 0;
  int64_t n = 0;
  for (int i = 0; i < 3; ++i) {
    const TrainBatch b = replay.next();
    auto logp = torch::log_softmax(model.forward(b.tokens).to(torch::kFloat64), -1);  // [B,T,V]
    auto keep = b.labels.ne(-100);
    auto picked = logp.gather(-1, b.labels.clamp_min(0).unsqueeze(-1)).squeeze(-1);  // [B,T]
    sum -= picked.masked_select(keep).sum().item<double>();
    n += keep.sum().item<int64_t>();
  }
  EXPECT_EQ(r.tokens, n);
  EXPECT_NEAR(r.loss, sum / double(n), 1e-5);
  EXPECT_NEAR(r.ppl, std::exp(sum / double(n)), 1e-4 * r.ppl);
  // a uniform model would score log(V); a random one is near it, not far below
  EXPECT_GT(r.loss, 0.5 * std::log(double(cfg.vocab_size)));
}

TEST(EvaluateLm, ZeroBatchesIsAnError) {
  auto cfg = test::tiny_config("llama");
  Transformer model(cfg);
  DataConfig dc;
  test::SyntheticSource source(dc, cfg.vocab_size);
  EXPECT_CONTAINS(test::message_of([&] { evaluate_lm(model, source, 0); }),
                  "batches must be in [1, 1048576], got 0");
}

}  // namespace
}  // namespace finmoe
