// Logits of tiny random models saved by HF transformers must match the
// logits transformers itself computed (tests/ref/make_hf_reference.py).
#include <gtest/gtest.h>

#include "test_util.h"
#include "../tolerance.h"

namespace finmoe {
namespace {

class HfParity : public ::testing::TestWithParam<std::string> {};

TEST_P(HfParity, Float32LogitsMatchTransformers) {
  const std::string dir = test::hf_dir(GetParam());
  auto model = load_model(dir, {.dtype = torch::kFloat32, .device = test::test_device()});
  auto ids = test::read_tensor(dir + "/reference.safetensors", "input_ids");
  auto expected = test::read_tensor(dir + "/reference.safetensors", "logits");
  torch::NoGradGuard no_grad;
  auto logits = model.forward(ids);
  ASSERT_EQ(logits.sizes(), expected.sizes());
  EXPECT_TRUE(test::AllClose(logits, expected, 1e-4, /*floor=*/1.0)) << GetParam();
}

TEST_P(HfParity, PagedStepMatchesTransformers) {
  // the inference entry, token by token after a prefill, against HF's logits
  const std::string dir = test::hf_dir(GetParam());
  auto model = load_model(dir, {.dtype = torch::kFloat32, .device = test::test_device()});
  auto ids = test::read_tensor(dir + "/reference.safetensors", "input_ids")[0];
  auto expected = test::read_tensor(dir + "/reference.safetensors", "logits")[0];
  const int64_t T = ids.size(0);
  KVCache cache(model, (T + 7) / 8 + 2, 8);
  std::vector<int32_t> blocks;
  for (int64_t b = (T + 7) / 8 + 1; b >= 0; --b) blocks.push_back(int32_t(b));  // reversed order
  int64_t done = 0;
  while (done < T) {
    const int64_t n = done == 0 ? 19 : 1;
    StepBatch batch;
    for (int64_t i = 0; i < n; ++i) {
      batch.tokens.push_back(int32_t(ids[done + i].item<int64_t>()));
      batch.positions.push_back(int32_t(done + i));
    }
    batch.seqs.push_back({0, n, done + n, blocks});
    batch.all_logits = true;
    auto logits = model.step(batch, cache);
    ASSERT_TRUE(test::AllClose(logits, expected.narrow(0, done, n), 1e-4, /*floor=*/1.0))
        << GetParam() << " at position " << done;
    done += n;
  }
}

TEST_P(HfParity, Bfloat16StaysCloseToFloat32Reference) {
  const std::string dir = test::hf_dir(GetParam());
  auto model = load_model(dir, {.dtype = torch::kBFloat16, .device = test::test_device()});
  auto ids = test::read_tensor(dir + "/reference.safetensors", "input_ids");
  auto expected = test::read_tensor(dir + "/reference.safetensors", "logits");
  torch::NoGradGuard no_grad;
  auto logits = model.forward(ids);
  // bf16 keeps 8 bits of mantissa: logits of magnitude ~6 move by a few 0.01
  const double scale = expected.abs().max().item<double>();
  auto per_token = (logits.cpu() - expected).abs().amax(-1).flatten();  // [B*T]
  if (model.config().is_moe()) {
    // a router score that rounds past its neighbour picks another expert for that
    // token (a discrete change), so bound most tokens rather than the worst one
    auto close = (per_token < 0.08 * scale).to(torch::kFloat32).mean().item<double>();
    EXPECT_GT(close, 0.9);
  } else {
    EXPECT_LT(per_token.max().item<double>(), 0.08 * scale);
  }
  // and the argmax agrees almost everywhere
  auto agree = (logits.cpu().argmax(-1) == expected.argmax(-1)).to(torch::kFloat32).mean().item<float>();
  EXPECT_GT(agree, 0.9);
}

INSTANTIATE_TEST_SUITE_P(Architectures, HfParity,
                         ::testing::Values("llama_gqa_llama3rope", "llama_linear_bias_tied",
                                           "llama_yarn", "qwen2_tied", "mistral_headdim",
                                           "mixtral_top2", "qwen2_moe_shared", "qwen2_moe_norm",
                                           "mistral_sliding", "qwen2_sliding",
                                           "deepseek_v2_greedy", "deepseek_v2_group_yarn",
                                           "deepseek_v3_noaux_yarn", "deepseek_v3_plain"));

}  // namespace
}  // namespace finmoe
