#pragma once
// Rotary position embeddings: inverse frequencies for the HF scaling variants
// (default, linear, llama3, yarn) and both pair layouts.
#include <torch/torch.h>

#include "finmoe/config.h"

namespace finmoe {

class Rope {
 public:
  // rotary_dim: the number of leading head dims that rotate (head_dim for
  // llama/qwen2; MLA's rope part later). The frequencies live on `device`
  // (the model's): cos_sin() of positions there copies nothing from the host,
  // which a CUDA graph capture would reject.
  Rope(const ModelConfig& config, int64_t rotary_dim, torch::Device device = torch::kCPU);

  // positions [...] (int) -> cos, sin [..., rotary_dim] float32, already
  // multiplied by the attention scaling (yarn), laid out for `apply`.
  std::pair<torch::Tensor, torch::Tensor> cos_sin(const torch::Tensor& positions) const;
  // x [..., H, rotary_dim]; cos/sin [..., rotary_dim] (broadcast over H).
  torch::Tensor apply(const torch::Tensor& x, const torch::Tensor& cos,
                      const torch::Tensor& sin) const;

  const torch::Tensor& inv_freq() const { return inv_freq_; }  // [rotary_dim/2] float32, on device
  double attention_scaling() const { return attention_scaling_; }
  bool interleaved() const { return interleaved_; }
  int64_t rotary_dim() const { return 2 * inv_freq_.size(0); }

 private:
  torch::Tensor inv_freq_;
  double attention_scaling_ = 1.0;
  bool interleaved_ = false;
};

// Inverse frequencies [dim/2] (float32) and the cos/sin scale for a scaling
// variant; exposed for tests.
std::pair<torch::Tensor, double> rope_inv_freq(const ModelConfig& config, int64_t dim);

}  // namespace finmoe
