#include "model/linear.h"

#include <cstdlib>

#include "kernels/linear.h"

namespace finmoe {

int64_t kernel_max_rows() {
  static const int64_t rows = [] {
    const char* env = std::getenv("FINMOE_KERNEL_MAX_ROWS");
    return env ? std::atoll(env) : int64_t{16};
  }();
  return rows;
}

LinearImpl::LinearImpl(int64_t in, int64_t out, bool with_bias, torch::TensorOptions options) {
  weight = register_parameter("weight", torch::zeros({out, in}, options), false);
  if (with_bias) bias = register_parameter("bias", torch::zeros({out}, options), false);
}

torch::Tensor LinearImpl::forward(const torch::Tensor& x) { return linear(x, weight, bias); }

torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& weight,
                     const torch::Tensor& bias) {
  const int64_t in = weight.size(1);
  const int64_t out = weight.size(0);
  const int64_t rows = x.numel() / in;
  const bool kernel = rows <= kernel_max_rows() && x.device().is_cpu() &&
                      !torch::GradMode::is_enabled() && weight.is_contiguous() &&
                      (weight.scalar_type() == torch::kBFloat16 ||
                       weight.scalar_type() == torch::kFloat32);
  if (!kernel) return torch::linear(x, weight, bias);

  auto x32 = x.to(torch::kFloat32).contiguous();  // [rows, in]
  auto y = torch::empty({rows, out}, x32.options());
  torch::Tensor b32;
  if (bias.defined()) b32 = bias.to(torch::kFloat32).contiguous();
  const float* bptr = b32.defined() ? b32.data_ptr<float>() : nullptr;
  if (weight.scalar_type() == torch::kBFloat16) {
    kernels::linear_bf16(x32.data_ptr<float>(), rows, in,
                         reinterpret_cast<const uint16_t*>(weight.data_ptr()), out, bptr,
                         y.data_ptr<float>());
  } else {
    kernels::linear_f32(x32.data_ptr<float>(), rows, in, weight.data_ptr<float>(), out, bptr,
                        y.data_ptr<float>());
  }
  auto sizes = x.sizes().vec();
  sizes.back() = out;
  return y.view(sizes).to(x.scalar_type());
}

RMSNormImpl::RMSNormImpl(int64_t dim, double eps_, torch::TensorOptions options) : eps(eps_) {
  weight = register_parameter("weight", torch::ones({dim}, options), false);
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  auto xf = x.to(torch::kFloat32);
  auto normed = xf * torch::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * normed.to(x.scalar_type());
}

}  // namespace finmoe
