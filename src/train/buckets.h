#pragma once
// Internal to the train layer: packing many tensors into a few contiguous
// buffers so that a collective runs once per buffer, not once per tensor.
#include <cstddef>
#include <vector>

#include <torch/torch.h>

namespace finmoe::dist {

// Indices into a tensor list; all of one dtype and device.
using Bucket = std::vector<size_t>;

// Groups tensors of the same dtype and device, in list order, into buckets of
// at most max_bytes (a larger tensor is a bucket of its own). The plan depends
// only on the tensors' sizes, dtypes and devices, so every rank makes the same.
std::vector<Bucket> plan_buckets(const std::vector<torch::Tensor>& tensors, size_t max_bytes);

// The bucket's tensors one after another: [sum of numel].
torch::Tensor flatten_bucket(const std::vector<torch::Tensor>& tensors, const Bucket& bucket);

// Copies slices of `flat` back into the bucket's tensors (the inverse of flatten_bucket).
void unflatten_bucket(const torch::Tensor& flat, const std::vector<torch::Tensor>& tensors,
                      const Bucket& bucket);

}  // namespace finmoe::dist
