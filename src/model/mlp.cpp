#include "model/mlp.h"

namespace finmoe {

MlpImpl::MlpImpl(int64_t hidden, int64_t intermediate, bool bias, torch::TensorOptions options,
                 int64_t out, bool mixtral_names) {
  if (out == 0) out = hidden;
  gate_proj = register_module(mixtral_names ? "w1" : "gate_proj",
                              Linear(hidden, intermediate, bias, options));
  up_proj = register_module(mixtral_names ? "w3" : "up_proj",
                            Linear(hidden, intermediate, bias, options));
  down_proj = register_module(mixtral_names ? "w2" : "down_proj",
                              Linear(intermediate, out, bias, options));
}

torch::Tensor MlpImpl::forward(const torch::Tensor& x) {
  auto gate_up = linear_group(x, {gate_proj.get(), up_proj.get()});
  return down_proj(silu_mul(gate_up[0], gate_up[1]));
}

}  // namespace finmoe
