#pragma once
// SwiGLU feed-forward: down(silu(gate(x)) * up(x)).
#include <torch/torch.h>

#include "finmoe/config.h"
#include "model/linear.h"

namespace finmoe {

class MlpImpl : public torch::nn::Module {
 public:
  MlpImpl(int64_t hidden, int64_t intermediate, bool bias, torch::TensorOptions options);
  torch::Tensor forward(const torch::Tensor& x);  // [..., hidden] -> [..., hidden]

  Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(Mlp);

}  // namespace finmoe
