#include "model/mlp.h"

namespace finmoe {

MlpImpl::MlpImpl(int64_t hidden, int64_t intermediate, bool bias, torch::TensorOptions options) {
  gate_proj = register_module("gate_proj", Linear(hidden, intermediate, bias, options));
  up_proj = register_module("up_proj", Linear(hidden, intermediate, bias, options));
  down_proj = register_module("down_proj", Linear(intermediate, hidden, bias, options));
}

torch::Tensor MlpImpl::forward(const torch::Tensor& x) {
  return down_proj(silu_mul(gate_proj(x), up_proj(x)));
}

}  // namespace finmoe
