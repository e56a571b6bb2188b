#pragma once
// A step's logits brought to the host for sampling.
#include <torch/torch.h>

namespace finmoe {

// logits [S,V] as a contiguous CPU tensor. From a GPU the copy goes through
// pinned memory: a pageable copy of a [64, 151936] float32 batch took ~10x
// longer and was most of a graph-replayed decode step. Waits for the device.
inline torch::Tensor logits_to_host(const torch::Tensor& logits) {
  if (logits.device().is_cpu()) return logits.contiguous();
  auto host =
      torch::empty(logits.sizes(), logits.options().device(torch::kCPU).pinned_memory(true));
  host.copy_(logits);
  return host;
}

}  // namespace finmoe
