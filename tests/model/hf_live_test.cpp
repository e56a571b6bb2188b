// Live comparison (labelled; needs torch + transformers in FINMOE_PYTHON,
// e.g. `FINMOE_LIVE_HF=1 ./finmoe.sh test`): checkpoints finmoe writes load
// in HF transformers unchanged and give finmoe's logits.
#include <gtest/gtest.h>

#include <cstdlib>

#include "test_util.h"

namespace finmoe {
namespace {

class HfLive : public ::testing::TestWithParam<std::string> {};

TEST_P(HfLive, SavedCheckpointLoadsInTransformersWithSameLogits) {
  const char* py = std::getenv("FINMOE_PYTHON");
  if (!py) GTEST_SKIP() << "FINMOE_PYTHON not set";
  if (std::system((std::string(py) + " -c 'import torch, transformers' 2>/dev/null").c_str()) != 0)
    GTEST_SKIP() << "torch/transformers not installed (set FINMOE_LIVE_HF=1 for ./finmoe.sh test)";
  auto cfg = test::tiny_config(GetParam());
  cfg.attention_bias = GetParam() != "mistral" && GetParam() != "mixtral";
  cfg.rope_theta = 50000.0;
  Transformer m(cfg);
  init_random(m, 17);
  {
    // non-trivial norms and biases so a dropped tensor would show
    torch::NoGradGuard g;
    auto gen = at::detail::createCPUGenerator(99);
    for (auto& [name, t] : m.named_parameters())
      t.add_(at::normal(0.0, 0.1, t.sizes(), gen, t.options()));
  }
  test::TempDir dir;
  save_model(m, dir.str());
  auto ids = torch::randint(cfg.vocab_size, {2, 33}, torch::kInt64);
  torch::Tensor logits;
  {
    torch::NoGradGuard g;
    logits = m.forward(ids).contiguous();
  }
  auto ids_c = ids.contiguous();
  const std::string expected = dir.str() + "/expected.safetensors";
  write_safetensors(expected,
                    {{"input_ids", DType::I64, ids_c.sizes().vec(), ids_c.data_ptr(),
                      size_t(ids_c.numel()) * 8},
                     {"logits", DType::F32, logits.sizes().vec(), logits.data_ptr(),
                      size_t(logits.numel()) * 4}});
  const std::string cmd = std::string(py) + " " + FINMOE_SOURCE_DIR + "/tests/ref/check_hf_live.py " +
                          dir.str() + " " + expected;
  const int rc = WEXITSTATUS(std::system(cmd.c_str()));
  if (rc == 77) GTEST_SKIP() << "reference not available";
  EXPECT_EQ(rc, 0) << cmd;
}

INSTANTIATE_TEST_SUITE_P(Architectures, HfLive,
                         ::testing::Values("llama", "qwen2", "mistral", "mixtral", "qwen2_moe",
                                           "deepseek_v2", "deepseek_v3"));

}  // namespace
}  // namespace finmoe
