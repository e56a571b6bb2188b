#pragma once
// The CUDA kernels of the serving step (kernels/cuda/paged_attention.h) on
// tensors, on the current CUDA stream. Built only against a CUDA libtorch
// (FINMOE_HAVE_CUDA). Shapes and dtypes are checked; a mismatch throws Error
// naming the tensor.
#include <torch/torch.h>

#include "model/paged_batch.h"

namespace finmoe {

// q [N,H,d] is rotated in place; k [N,Hkv,d] rotated and v copied into the
// caches ([blocks, block_size, Hkv, d], q's dtype) at batch.slots.
// cos/sin [N,d] float32 (Rope::cos_sin of batch.positions).
void rope_write_kv_cuda(torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                        const torch::Tensor& cos, const torch::Tensor& sin, bool interleaved,
                        const PagedBatch& batch, torch::Tensor& k_cache, torch::Tensor& v_cache);

// Causal attention of the batch's queries q [N,H,d] over the caches -> [N,H,d].
// n_splits 0: kernels::cuda::attention_splits' choice for the device.
torch::Tensor paged_attention_cuda(const torch::Tensor& q, const torch::Tensor& k_cache,
                                   const torch::Tensor& v_cache, const PagedBatch& batch,
                                   double scale, int64_t window, int64_t n_splits = 0);

}  // namespace finmoe
