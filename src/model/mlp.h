#pragma once
// SwiGLU feed-forward: down(silu(gate(x)) * up(x)). Also the expert of every
// MoE layer, whose down_proj may write only a slice of the hidden vector
// (FineRMoE: hidden/G_O values).
#include <torch/torch.h>

#include "finmoe/config.h"
#include "model/linear.h"

namespace finmoe {

class MlpImpl : public torch::nn::Module {
 public:
  // `out` = 0 means `hidden`. `mixtral_names` registers the projections as
  // Mixtral's w1 (gate), w3 (up), w2 (down) instead of gate/up/down_proj.
  MlpImpl(int64_t hidden, int64_t intermediate, bool bias, torch::TensorOptions options,
          int64_t out = 0, bool mixtral_names = false);
  torch::Tensor forward(const torch::Tensor& x);  // [..., hidden] -> [..., out]

  Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(Mlp);

}  // namespace finmoe
