// The CUDA serving-step kernels against float64 references on the host:
// paged attention over ragged batches (decode tokens, chunked and whole
// prefills, long contexts split over blocks, GQA and MHA, sliding windows,
// shuffled block tables) and RoPE + the cache write. Skipped without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>

#include "model/paged_batch.h"
#include "model/rope.h"
#include "test_util.h"
#if FINMOE_HAVE_CUDA
#include "model/cuda/attention_ops.h"
#endif

namespace finmoe {
namespace {

#if FINMOE_HAVE_CUDA

struct Shape {
  int64_t heads, kv_heads, head_dim;
};

struct Case {
  torch::Dtype dtype;
  Shape shape;
  int64_t window;
  int64_t n_splits;  // 0: the device's choice
};

std::string name_of(const ::testing::TestParamInfo<Case>& info) {
  const Case& c = info.param;
  const std::string t = c.dtype == torch::kFloat32    ? "f32"
                        : c.dtype == torch::kBFloat16 ? "bf16"
                                                      : "f16";
  return t + "_H" + std::to_string(c.shape.heads) + "_Hkv" + std::to_string(c.shape.kv_heads) +
         "_d" + std::to_string(c.shape.head_dim) + "_w" + std::to_string(c.window) + "_s" +
         std::to_string(c.n_splits);
}

// A ragged batch over a cache of shuffled blocks: sequence s has q_len[s]
// queries ending at context[s].
StepBatch ragged_batch(const std::vector<int64_t>& q_len, const std::vector<int64_t>& context,
                       int64_t block_size, int64_t num_blocks, uint64_t seed) {
  std::vector<int32_t> pool(static_cast<size_t>(num_blocks));
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), std::mt19937(uint32_t(seed)));
  StepBatch b;
  size_t next = 0;
  for (size_t s = 0; s < q_len.size(); ++s) {
    StepBatch::Seq q;
    q.q_start = int64_t(b.tokens.size());
    q.q_len = q_len[s];
    q.context_len = context[s];
    for (int64_t i = 0; i < (context[s] + block_size - 1) / block_size; ++i)
      q.block_table.push_back(pool.at(next++));
    for (int64_t p = context[s] - q_len[s]; p < context[s]; ++p) {
      b.tokens.push_back(0);
      b.positions.push_back(int32_t(p));
    }
    b.seqs.push_back(std::move(q));
  }
  return b;
}

PagedBatch on_device(const StepBatch& b, int64_t block_size, int64_t q_tile, torch::Device dev) {
  const PagedLayout l = paged_layout(b, block_size, q_tile);
  int64_t max_context = 0;
  for (const auto& s : b.seqs) max_context = std::max(max_context, s.context_len);
  auto buffer = pack_paged_batch(b, l, block_size, q_tile, false).to(dev);
  return view_paged_batch(buffer, l, block_size, q_tile, max_context);
}

// softmax(q·kᵀ·scale)·v per sequence in float64, K/V gathered through the
// block tables: out [N,H,d].
torch::Tensor reference(const torch::Tensor& q, const torch::Tensor& k_cache,
                        const torch::Tensor& v_cache, const StepBatch& b, int64_t block_size,
                        double scale, int64_t window) {
  const int64_t H = q.size(1), Hkv = k_cache.size(-2), d = q.size(2);
  auto q64 = q.to(torch::kCPU, torch::kFloat64);
  auto k64 = k_cache.to(torch::kCPU, torch::kFloat64).view({-1, Hkv, d});
  auto v64 = v_cache.to(torch::kCPU, torch::kFloat64).view({-1, Hkv, d});
  auto out = torch::zeros_like(q64);
  for (const auto& s : b.seqs) {
    std::vector<int64_t> rows;
    for (int64_t p = 0; p < s.context_len; ++p)
      rows.push_back(int64_t(s.block_table[size_t(p / block_size)]) * block_size + p % block_size);
    auto idx = torch::tensor(rows);
    auto k = k64.index_select(0, idx).repeat_interleave(H / Hkv, 1).transpose(0, 1);  // [H,ctx,d]
    auto v = v64.index_select(0, idx).repeat_interleave(H / Hkv, 1).transpose(0, 1);
    auto qs = q64.narrow(0, s.q_start, s.q_len).transpose(0, 1);  // [H,q,d]
    auto scores = torch::matmul(qs, k.transpose(1, 2)) * scale;   // [H,q,ctx]
    auto qpos = torch::arange(s.context_len - s.q_len, s.context_len).unsqueeze(1);
    auto kpos = torch::arange(s.context_len).unsqueeze(0);
    auto visible = kpos <= qpos;
    if (window > 0) visible = visible.logical_and(kpos > qpos - window);
    scores = scores.masked_fill(visible.logical_not(), -INFINITY);
    out.narrow(0, s.q_start, s.q_len).copy_(torch::matmul(scores.softmax(-1), v).transpose(0, 1));
  }
  return out;
}

double tolerance(torch::Dtype t) {
  return t == torch::kFloat32 ? 2e-5 : t == torch::kFloat16 ? 2e-3 : 1e-2;
}

class CudaPagedAttention : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_P(CudaPagedAttention, RaggedBatchesMatchThePerSequenceReference) {
  const Case c = GetParam();
  const auto [H, Hkv, d] = c.shape;
  const torch::Device dev(torch::kCUDA);
  const int64_t bs = 16, num_blocks = 200;
  // decode tokens at short, tile-edge and long contexts; chunked prefills
  // (queries after a cached prefix); whole prompts; a one-token prompt
  const std::vector<std::vector<int64_t>> q_lens{{1, 1, 1, 1}, {7, 1, 33, 1, 20}, {1}};
  const std::vector<std::vector<int64_t>> contexts{{1, 64, 65, 900}, {40, 300, 33, 2, 150}, {1500}};
  auto gen = at::detail::createCPUGenerator(11);
  const auto opts = torch::TensorOptions().dtype(c.dtype);
  auto k_cache = at::randn({num_blocks, bs, Hkv, d}, gen, opts).to(dev);
  auto v_cache = at::randn({num_blocks, bs, Hkv, d}, gen, opts).to(dev);
  const double scale = 1.0 / std::sqrt(double(d));
  for (size_t i = 0; i < q_lens.size(); ++i) {
    const StepBatch b = ragged_batch(q_lens[i], contexts[i], bs, num_blocks, 5 + i);
    const int64_t N = int64_t(b.tokens.size());
    auto q = at::randn({N, H, d}, gen, opts).to(dev);
    for (int64_t q_tile : {int64_t(1), paged_q_tile(H, Hkv)}) {
      const PagedBatch pb = on_device(b, bs, q_tile, dev);
      auto got = paged_attention_cuda(q, k_cache, v_cache, pb, scale, c.window, c.n_splits);
      auto want = reference(q, k_cache, v_cache, b, bs, scale, c.window);
      auto err = (got.to(torch::kCPU, torch::kFloat64) - want).abs().max().item<double>();
      EXPECT_LT(err, tolerance(c.dtype) * want.abs().max().item<double>())
          << "batch " << i << " q_tile " << q_tile;
      EXPECT_TRUE(got.isfinite().all().item<bool>());
    }
  }
}

std::vector<Case> cases() {
  std::vector<Case> out;
  for (auto t : {torch::kFloat32, torch::kBFloat16, torch::kFloat16})
    for (Shape s : {Shape{8, 2, 64}, Shape{4, 4, 32}, Shape{14, 2, 64}, Shape{6, 2, 8},
                    Shape{4, 1, 128}, Shape{2, 2, 256}})
      for (int64_t window : {0, 37})
        for (int64_t splits : {0, 1, 5}) {
          if (t != torch::kFloat32 && (window != 0 || splits == 5))
            continue;  // dtypes: the plain cases
          out.push_back({t, s, window, splits});
        }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaPagedAttention, ::testing::ValuesIn(cases()), name_of);

TEST(CudaPagedAttentionPadding, PaddingRowsGiveZerosAndWriteNothing) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const torch::Device dev(torch::kCUDA);
  StepBatch b = ragged_batch({1, 1}, {5, 20}, 16, 8, 3);
  const PagedLayout l{4, 4, 4, 2};  // padded to a graph bucket of 4
  auto buffer = pack_paged_batch(b, l, 16, 1, false).to(dev);
  const PagedBatch pb = view_paged_batch(buffer, l, 16, 1, 32);
  auto gen = at::detail::createCPUGenerator(3);
  auto k_cache = at::randn({8, 16, 2, 64}, gen).to(dev);
  auto v_cache = at::randn({8, 16, 2, 64}, gen).to(dev);
  auto q = at::randn({4, 4, 64}, gen).to(dev);
  auto k = at::randn({4, 2, 64}, gen).to(dev);
  auto v = at::randn({4, 2, 64}, gen).to(dev);
  Rope rope(test::tiny_config("llama"), 64);
  auto [cos, sin] = rope.cos_sin(pb.positions.to(torch::kInt64));
  auto k_before = k_cache.clone();
  rope_write_kv_cuda(q, k, v, cos.contiguous(), sin.contiguous(), false, pb, k_cache, v_cache);
  // exactly the two real rows changed
  auto changed = (k_cache != k_before).view({8 * 16, -1}).any(1).nonzero().view(-1);
  EXPECT_EQ(changed.numel(), 2);
  for (int64_t splits : {1, 3}) {
    auto out = paged_attention_cuda(q, k_cache, v_cache, pb, 0.125, 0, splits);
    EXPECT_EQ(out.narrow(0, 2, 2).abs().max().item<float>(), 0.0f) << splits << " splits";
    EXPECT_GT(out.narrow(0, 0, 2).abs().max().item<float>(), 0.0f);
  }
}

class CudaRopeWrite : public ::testing::TestWithParam<std::tuple<torch::Dtype, bool>> {};

TEST_P(CudaRopeWrite, RotatesLikeRopeApplyAndWritesTheSlots) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const auto [dtype, interleaved] = GetParam();
  const torch::Device dev(torch::kCUDA);
  auto cfg = test::tiny_config("llama");
  cfg.rope_interleaved = interleaved;
  const int64_t H = 6, Hkv = 2, d = 16, bs = 4;
  Rope rope(cfg, d);
  const StepBatch b = ragged_batch({3, 1}, {3, 9}, bs, 6, 9);
  const PagedBatch pb = on_device(b, bs, 1, dev);
  auto gen = at::detail::createCPUGenerator(4);
  const auto opts = torch::TensorOptions().dtype(dtype);
  auto q = at::randn({4, H, d}, gen, opts).to(dev);
  auto k = at::randn({4, Hkv, d}, gen, opts).to(dev);
  auto v = at::randn({4, Hkv, d}, gen, opts).to(dev);
  auto k_cache = torch::zeros({6, bs, Hkv, d}, opts.device(dev));
  auto v_cache = torch::zeros_like(k_cache);
  auto [cos, sin] = rope.cos_sin(pb.positions.to(torch::kInt64));  // [4,d]
  auto q_ref = rope.apply(q.to(torch::kFloat64), cos.to(torch::kFloat64), sin.to(torch::kFloat64));
  auto k_ref = rope.apply(k.to(torch::kFloat64), cos.to(torch::kFloat64), sin.to(torch::kFloat64));
  auto q_rot = q.clone();
  rope_write_kv_cuda(q_rot, k, v, cos, sin, interleaved, pb, k_cache, v_cache);
  const double tol = dtype == torch::kFloat32 ? 1e-5 : 2e-2;
  EXPECT_LT(test::max_abs_diff(q_rot, q_ref), tol * q_ref.abs().max().item<double>());
  auto slots = pb.slots.to(torch::kInt64);
  auto k_rows = k_cache.view({-1, Hkv, d}).index_select(0, slots);
  auto v_rows = v_cache.view({-1, Hkv, d}).index_select(0, slots);
  EXPECT_LT(test::max_abs_diff(k_rows, k_ref), tol * k_ref.abs().max().item<double>());
  EXPECT_EQ(test::max_abs_diff(v_rows, v), 0.0);
}

INSTANTIATE_TEST_SUITE_P(Layouts, CudaRopeWrite,
                         ::testing::Combine(::testing::Values(torch::kFloat32, torch::kBFloat16),
                                            ::testing::Bool()));

#else

TEST(CudaPagedAttention, NeedsACudaBuild) { GTEST_SKIP() << "built against a CPU libtorch"; }

#endif

}  // namespace
}  // namespace finmoe
