// Transformer::step on CUDA: the kernel step against libtorch's
// per-sequence attention (FINMOE_CUDA_ATTENTION=eager), and decode steps
// replayed through CUDA graphs against the same steps run eagerly
// (FINMOE_CUDA_GRAPHS=0). Skipped without a GPU.
#include <gtest/gtest.h>

#include <algorithm>

#include "../scoped_env.h"
#include "test_util.h"
#if FINMOE_HAVE_CUDA
#include "model/cuda/step_graphs.h"
#endif

namespace finmoe {
namespace {

#if FINMOE_HAVE_CUDA

Transformer cuda_model(const std::string& arch, torch::Dtype dtype) {
  Transformer m(test::tiny_config(arch), dtype, torch::Device(torch::kCUDA));
  init_random(m, 13);
  return m;
}

// Sequences of different lengths over shuffled blocks of 4 tokens, stepped
// together: each step takes up to chunk[s] tokens of sequence s (prefill
// chunks, then one decode token at a time once prompt[s] is cached).
struct Ragged {
  std::vector<std::vector<int32_t>> tokens;
  std::vector<std::vector<int32_t>> tables;
  std::vector<int64_t> chunk, prompt, done;

  Ragged(int64_t vocab, std::vector<int64_t> lengths, std::vector<int64_t> chunks,
         std::vector<int64_t> prompts)
      : chunk(std::move(chunks)), prompt(std::move(prompts)), done(lengths.size(), 0) {
    int32_t next = 0;
    for (size_t s = 0; s < lengths.size(); ++s) {
      std::vector<int32_t> t, b;
      for (int64_t i = 0; i < lengths[s]; ++i) t.push_back(int32_t((s * 97 + i * 31 + 7) % vocab));
      for (int64_t i = 0; i < (lengths[s] + 3) / 4; ++i) b.push_back(next++);
      tokens.push_back(t);
      tables.push_back(b);
    }
    // interleave the sequences' blocks
    std::vector<int32_t> perm(static_cast<size_t>(next));
    for (int32_t i = 0; i < next; ++i) perm[size_t(i)] = (i * 7) % next;
    for (auto& b : tables)
      for (auto& id : b) id = perm[size_t(id)];
  }
  int64_t num_blocks() const {
    int64_t n = 0;
    for (const auto& b : tables) n += int64_t(b.size());
    return n;
  }
  // The next step's batch, or an empty one when every sequence is done.
  StepBatch next(bool all_logits) {
    StepBatch batch;
    batch.all_logits = all_logits;
    for (size_t s = 0; s < tokens.size(); ++s) {
      const int64_t left = int64_t(tokens[s].size()) - done[s];
      const int64_t n = done[s] < prompt[s] ? std::min(chunk[s], prompt[s] - done[s])
                                            : std::min<int64_t>(1, left);
      if (n <= 0) continue;
      StepBatch::Seq q{int64_t(batch.tokens.size()), n, done[s] + n, tables[s]};
      for (int64_t i = 0; i < n; ++i) {
        batch.tokens.push_back(tokens[s][size_t(done[s] + i)]);
        batch.positions.push_back(int32_t(done[s] + i));
      }
      batch.seqs.push_back(std::move(q));
      done[s] += n;
    }
    return batch;
  }
};

class CudaStep : public ::testing::TestWithParam<std::tuple<std::string, torch::Dtype>> {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_P(CudaStep, KernelStepEqualsPerSequenceAttention) {
  const auto [arch, dtype] = GetParam();
  auto model = cuda_model(arch, dtype);
  const int64_t V = model.config().vocab_size;
  Ragged a(V, {23, 5, 40, 17}, {7, 5, 13, 17}, {16, 5, 26, 17});
  KVCache kernel_cache(model, a.num_blocks(), 4), eager_cache(model, a.num_blocks(), 4);
  double worst = 0, scale = 0;
  int steps = 0;
  for (;; ++steps) {
    StepBatch batch = a.next(true);
    if (batch.tokens.empty()) break;
    torch::Tensor got, want;
    {
      test::ScopedEnv graphs("FINMOE_CUDA_GRAPHS", "0");
      got = model.step(batch, kernel_cache);  // [N,V]
    }
    {
      test::ScopedEnv eager("FINMOE_CUDA_ATTENTION", "eager");
      want = model.step(batch, eager_cache);
    }
    worst = std::max(worst, test::max_abs_diff(got, want));
    scale = std::max(scale, want.abs().max().item<double>());
  }
  EXPECT_GE(steps, 10);
  // float32: summation order only; bfloat16: the roundings of two kernels
  EXPECT_LT(worst, (dtype == torch::kFloat32 ? 1e-4 : 0.05) * scale) << "scale " << scale;
}

INSTANTIATE_TEST_SUITE_P(Architectures, CudaStep,
                         ::testing::Combine(::testing::Values("llama", "qwen2", "mistral_sliding",
                                                              "qwen2_sliding"),
                                            ::testing::Values(torch::kFloat32, torch::kBFloat16)));

class CudaGraphs : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  }
};

// Decode steps of `n_seqs` sequences (after their prompts), with graphs and
// without, on two caches: the logits of every step, both ways.
std::pair<std::vector<torch::Tensor>, std::vector<torch::Tensor>> decode_both_ways(
    Transformer& model, int n_seqs, int steps, std::shared_ptr<StepGraphs>* graphs = nullptr) {
  const int64_t V = model.config().vocab_size;
  std::vector<int64_t> lengths, chunks, prompts;
  for (int s = 0; s < n_seqs; ++s) {
    prompts.push_back(3 + 5 * s);
    lengths.push_back(prompts.back() + steps);
    chunks.push_back(64);
  }
  Ragged a(V, lengths, chunks, prompts);
  KVCache with(model, a.num_blocks(), 4), without(model, a.num_blocks(), 4);
  std::vector<torch::Tensor> replayed, eager;
  for (int i = 0; i <= steps; ++i) {
    StepBatch batch = a.next(false);
    if (batch.tokens.empty()) break;
    replayed.push_back(model.step(batch, with).cpu());
    test::ScopedEnv off("FINMOE_CUDA_GRAPHS", "0");
    eager.push_back(model.step(batch, without).cpu());
  }
  if (graphs) *graphs = with.step_graphs();
  return {replayed, eager};
}

TEST_F(CudaGraphs, ReplayedDecodeStepsEqualEagerSteps) {
  auto model = cuda_model("qwen2", torch::kFloat32);
  for (int n_seqs : {1, 3, 4, 9}) {  // exactly a bucket, and padded up to one
    std::shared_ptr<StepGraphs> graphs;
    auto [replayed, eager] = decode_both_ways(model, n_seqs, 6, &graphs);
    ASSERT_EQ(replayed.size(), eager.size());
    ASSERT_GE(replayed.size(), 6u);
    for (size_t i = 0; i < replayed.size(); ++i) {
      ASSERT_EQ(replayed[i].sizes(), eager[i].sizes());
      EXPECT_LT(test::max_abs_diff(replayed[i], eager[i]), 1e-5) << n_seqs << " seqs, step " << i;
    }
    ASSERT_TRUE(graphs != nullptr) << "no graph was captured";
    EXPECT_EQ(graphs->captures, 1) << "one bucket, captured once";
    EXPECT_EQ(graphs->replays, int64_t(replayed.size()) - 1);  // all but the prefill
  }
}

TEST_F(CudaGraphs, Bfloat16ReplaysTrackEagerSteps) {
  auto model = cuda_model("llama", torch::kBFloat16);
  auto [replayed, eager] = decode_both_ways(model, 5, 4);
  for (size_t i = 0; i < replayed.size(); ++i) {
    // the same kernels; cuBLAS may pick another algorithm for the padded rows
    const double scale = eager[i].abs().max().item<double>();
    EXPECT_LT(test::max_abs_diff(replayed[i], eager[i]), 0.02 * scale) << "step " << i;
  }
}

TEST_F(CudaGraphs, MoeModelsDecodeEagerly) {
  auto model = cuda_model("mixtral", torch::kFloat32);
  std::shared_ptr<StepGraphs> graphs;
  auto [replayed, eager] = decode_both_ways(model, 2, 3, &graphs);
  EXPECT_EQ(graphs, nullptr);
  for (size_t i = 0; i < replayed.size(); ++i)
    EXPECT_LT(test::max_abs_diff(replayed[i], eager[i]), 1e-5);
}

#else

TEST(CudaStep, NeedsACudaBuild) { GTEST_SKIP() << "built against a CPU libtorch"; }

#endif

}  // namespace
}  // namespace finmoe
