#pragma once
// AdamW with PyTorch's semantics (torch.optim.AdamW, decoupled weight decay):
//   p <- p * (1 - lr * wd)                      (decay group only)
//   m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
//   p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// with t counted per tensor (a tensor without a gradient in a step, e.g. an
// expert no token chose, is skipped entirely, as PyTorch skips grad=None).
//
// State is kept per parameter NAME, so it is saved to and restored from a
// safetensors file independent of tensor identities:
//   exp_avg.<name>, exp_avg_sq.<name>  float32 (float64 for float64 parameters)
//   step.<name>                        int64 [1]
// Thread safety: one thread.
#include <string>
#include <vector>

#include <torch/torch.h>

#include "finmoe/train.h"

namespace finmoe {

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
};

class AdamW {
 public:
  // `params` are the trainable tensors (floating point, unique names).
  // Weight decay applies to tensors of 2+ dims only: norms and biases are
  // exempt (Megatron's convention; embeddings and the head do decay).
  AdamW(NamedTensors params, AdamWOptions options);

  // One update of every parameter that has a gradient, with rate `lr`.
  void step(double lr);
  // Drops the gradients (set to undefined, as zero_grad(set_to_none=True)).
  void zero_grad();

  static bool decays(const torch::Tensor& param) { return param.dim() >= 2; }

  // Writes the state to `path` (safetensors, atomically).
  void save(const std::string& path) const;
  // Reads a state written by save() for the same parameter names and shapes;
  // throws Error naming the file and the first tensor that differs.
  void load(const std::string& path);

  const NamedTensors& params() const { return params_; }

 private:
  struct State {
    torch::Tensor exp_avg, exp_avg_sq;  // float32, on the parameter's device
    int64_t step = 0;
  };
  NamedTensors params_;
  std::vector<State> state_;
  AdamWOptions options_;
};

// Global L2 norm of the gradients of `params` (those that have one); when
// max_norm > 0 and the norm exceeds it, scales every gradient by
// max_norm / (norm + 1e-6), as torch.nn.utils.clip_grad_norm_. Returns the
// norm before clipping.
double clip_grad_norm(const NamedTensors& params, double max_norm);

}  // namespace finmoe
