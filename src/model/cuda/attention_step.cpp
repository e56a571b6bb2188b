// AttentionImpl::step on CUDA and the tensor wrappers of its kernels.
#include <ATen/cuda/CUDAContext.h>

#include "finmoe/error.h"
#include "kernels/cuda/paged_attention.h"
#include "model/attention.h"
#include "model/cuda/attention_ops.h"

namespace finmoe {
namespace {

namespace kc = kernels::cuda;

kc::DType kernel_dtype(const torch::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case torch::kFloat32:
      return kc::DType::kF32;
    case torch::kFloat16:
      return kc::DType::kF16;
    case torch::kBFloat16:
      return kc::DType::kBF16;
    default:
      throw Error(std::string("CUDA attention: ") + name + " is " +
                  std::string(c10::toString(t.scalar_type())) +
                  ", the kernels take float32, float16 or bfloat16");
  }
}

void expect(bool ok, const std::string& what) {
  if (!ok) throw Error("CUDA attention: " + what);
}

// t on q's device, contiguous, of `dims` dimensions with trailing sizes `tail`.
void check_tensor(const torch::Tensor& t, const char* name, const torch::Tensor& q,
                  std::vector<int64_t> tail) {
  expect(t.device() == q.device(), std::string(name) + " is not on " + q.device().str());
  expect(t.is_contiguous(), std::string(name) + " is not contiguous");
  expect(t.scalar_type() == q.scalar_type(),
         std::string(name) + " is " + std::string(c10::toString(t.scalar_type())) + ", q is " +
             std::string(c10::toString(q.scalar_type())));
  const auto sizes = t.sizes();
  bool ok = sizes.size() >= tail.size();
  for (size_t i = 0; ok && i < tail.size(); ++i)
    ok = sizes[sizes.size() - tail.size() + i] == tail[i];
  expect(ok, std::string(name) + " has shape " + c10::str(sizes) + ", expected [..., " +
                 c10::str(c10::IntArrayRef(tail)).substr(1));
}

// The kernels' sizes of q [N,H,d] and the caches [blocks, block_size, Hkv, d],
// checked against each other and the batch.
kc::HeadShape checked_shape(const torch::Tensor& q, const torch::Tensor& k_cache,
                            const torch::Tensor& v_cache, const PagedBatch& batch) {
  expect(q.dim() == 3 && q.is_cuda() && q.is_contiguous(), "q must be a contiguous CUDA [N,H,d]");
  const int64_t N = q.size(0), d = q.size(2), Hkv = k_cache.size(-2);
  check_tensor(k_cache, "k_cache", q, {Hkv, d});
  check_tensor(v_cache, "v_cache", q, {Hkv, d});
  expect(batch.slots.size(0) == N, "the batch has " + std::to_string(batch.slots.size(0)) +
                                       " tokens, q " + std::to_string(N));
  kc::HeadShape s;
  s.dtype = kernel_dtype(q, "q");
  s.n_tokens = int32_t(N);
  s.n_head = int32_t(q.size(1));
  s.n_kv_head = int32_t(Hkv);
  s.head_dim = int32_t(d);
  return s;
}

kc::PagedPlan kernel_plan(const PagedBatch& b) {
  kc::PagedPlan p;
  p.seqs = b.seqs.data_ptr<int32_t>();
  p.tables = b.tables.data_ptr<int32_t>();
  p.items = b.items.data_ptr<int32_t>();
  p.n_items = int32_t(b.items.size(0));
  p.table_stride = int32_t(b.tables.size(1));
  p.block_size = int32_t(b.block_size);
  p.q_tile = int32_t(b.q_tile);
  return p;
}

void* current_stream() { return at::cuda::getCurrentCUDAStream().stream(); }

}  // namespace

void rope_write_kv_cuda(torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const torch::Tensor& cos, const torch::Tensor& sin, bool interleaved,
                        const PagedBatch& batch, torch::Tensor& k_cache, torch::Tensor& v_cache) {
  kc::RopeWriteArgs a;
  static_cast<kc::HeadShape&>(a) = checked_shape(q, k_cache, v_cache, batch);
  const int64_t N = a.n_tokens, Hkv = a.n_kv_head, d = a.head_dim;
  check_tensor(k, "k", q, {N, Hkv, d});
  check_tensor(v, "v", q, {N, Hkv, d});
  for (const auto* t : {&cos, &sin})
    expect(t->scalar_type() == torch::kFloat32 && t->is_contiguous() && t->dim() == 2 &&
               t->size(0) == N && t->size(1) == d && t->device() == q.device(),
           "cos/sin must be contiguous float32 [N, head_dim] on q's device");
  a.q = q.data_ptr();
  a.k = k.data_ptr();
  a.v = v.data_ptr();
  a.cos = cos.data_ptr<float>();
  a.sin = sin.data_ptr<float>();
  a.interleaved = interleaved;
  a.slots = batch.slots.data_ptr<int32_t>();
  a.k_cache = k_cache.data_ptr();
  a.v_cache = v_cache.data_ptr();
  kc::rope_write_kv(a, current_stream());
}

torch::Tensor paged_attention_cuda(const torch::Tensor& q, const torch::Tensor& k_cache,
                                   const torch::Tensor& v_cache, const PagedBatch& batch,
                                   double scale, int64_t window, int64_t n_splits) {
  kc::AttentionArgs a;
  static_cast<kc::HeadShape&>(a) = checked_shape(q, k_cache, v_cache, batch);
  if (n_splits <= 0)
    n_splits = kc::attention_splits(batch.items.size(0), a.n_kv_head, batch.max_context);
  auto out = torch::empty_like(q);  // [N,H,d]
  torch::Tensor workspace;
  a.q = q.data_ptr();
  a.k_cache = k_cache.data_ptr();
  a.v_cache = v_cache.data_ptr();
  a.out = out.data_ptr();
  a.scale = float(scale);
  a.window = int32_t(window);
  a.n_splits = int32_t(n_splits);
  if (n_splits > 1) {  // [N, H, n_splits, d + 2] float32
    workspace =
        torch::empty({kc::attention_workspace_floats(a.n_tokens, a.n_head, a.head_dim, a.n_splits)},
                     q.options().dtype(torch::kFloat32));
    a.workspace = workspace.data_ptr<float>();
  }
  try {
    kc::paged_attention(a, kernel_plan(batch), current_stream());
  } catch (const std::invalid_argument& e) {
    throw Error(e.what());
  }
  return out;
}

torch::Tensor AttentionImpl::step_cuda(const torch::Tensor& x, const StepPlan& plan,
                                       std::vector<torch::Tensor>& cache) {
  const int64_t N = x.size(0);
  auto q = q_proj(x).view({N, n_head_, head_dim_}).contiguous();  // [N,H,d]
  auto k = k_proj(x).view({N, n_kv_head_, head_dim_}).contiguous();
  auto v = v_proj(x).view({N, n_kv_head_, head_dim_}).contiguous();
  rope_write_kv_cuda(q, k, v, plan.cos, plan.sin, rope_.interleaved(), plan.paged, cache[0],
                     cache[1]);
  auto out = paged_attention_cuda(q, cache[0], cache[1], plan.paged, scale_, window_);  // [N,H,d]
  return o_proj(out.view({N, n_head_ * head_dim_}));
}

}  // namespace finmoe
