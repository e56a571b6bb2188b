#include "model/linear.h"

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <string>

#include "finmoe/error.h"
#include "finmoe/model.h"
#include "kernels/linear.h"
#include "model/adapter_rows.h"

namespace finmoe {

namespace {

bool float_or_bf16(const torch::Tensor& t) {
  return t.scalar_type() == torch::kFloat32 || t.scalar_type() == torch::kBFloat16;
}

}  // namespace

bool kernel_path(const torch::Tensor& t) {
  static const bool enabled = [] {
    const char* env = std::getenv("FINMOE_KERNELS");
    return env == nullptr || std::string(env) != "0";
  }();
  return enabled && t.device().is_cpu() && !torch::GradMode::is_enabled() && float_or_bf16(t);
}

kernels::ElemType elem_type(const torch::Tensor& t) {
  return t.scalar_type() == torch::kBFloat16 ? kernels::ElemType::kBF16 : kernels::ElemType::kF32;
}

int64_t kernel_max_rows() {
  static const int64_t rows = [] {
    const char* env = std::getenv("FINMOE_KERNEL_MAX_ROWS");
    return env ? std::atoll(env) : std::numeric_limits<int64_t>::max();
  }();
  return rows;
}

LinearImpl::LinearImpl(int64_t in, int64_t out, bool with_bias, torch::TensorOptions options) {
  weight = register_parameter("weight", torch::zeros({out, in}, options), false);
  if (with_bias) bias = register_parameter("bias", torch::zeros({out}, options), false);
}

bool LinearImpl::kernel_input(const torch::Tensor& x) const {
  return kernel_path(x) && (quantized() || weight.scalar_type() == x.scalar_type());
}

void LinearImpl::use_int8(const QuantizationConfig& q) {
  weight_scale = int8_layout(*this, weight, q);
}

torch::Tensor int8_layout(torch::nn::Module& module, torch::Tensor& weight,
                          const QuantizationConfig& q) {
  const int64_t rows = weight.size(0), cols = weight.size(1);
  const int64_t groups = q.group_size ? (cols + q.group_size - 1) / q.group_size : 1;
  const auto on = torch::TensorOptions().device(weight.device());
  torch::NoGradGuard no_grad;
  weight.set_data(torch::zeros({rows, cols}, on.dtype(torch::kInt8)));
  return module.register_parameter(
      "weight_scale", torch::zeros({rows, groups}, on.dtype(dtype_from_string(q.scale_dtype))),
      false);
}

kernels::Int8Format int8_format(const torch::Tensor& scale) {
  return {scale.size(1) == 1 ? 0 : kernels::kInt8Group,
          scale.scalar_type() == torch::kFloat32 ? kernels::ElemType::kF32
                                                 : kernels::ElemType::kBF16};
}

torch::Tensor dequantize(const torch::Tensor& q, const torch::Tensor& scale, torch::Dtype dtype) {
  const int64_t cols = q.size(1), groups = scale.size(1);
  auto s = scale.to(torch::kFloat32);  // [rows, groups]
  if (groups > 1) s = s.repeat_interleave(kernels::kInt8Group, 1).narrow(1, 0, cols);
  return (q.to(torch::kFloat32) * s).to(dtype);  // [rows, cols]
}

torch::Tensor LinearImpl::forward(const torch::Tensor& x) {
  auto y = linear(x, weight, bias, weight_scale);
  if (has_lora()) y = add_lora(y, x);
  return has_served_lora() ? add_served_lora(std::move(y), x) : y;
}

torch::Tensor LinearImpl::add_served_lora(torch::Tensor y, const torch::Tensor& x) const {
  const AdapterRows* rows = current_adapter_rows();
  if (rows == nullptr) return y;
  const int64_t in = x.size(-1), out = y.size(-1);
  const int64_t n = x.numel() / std::max<int64_t>(in, 1);
  if (n != rows->rows())
    throw Error("serving adapters: a layer of " + std::to_string(n) + " rows ran under " +
                std::to_string(rows->rows()) + " adapter rows");
  auto x2 = x.reshape({n, in});
  auto y2 = y.contiguous().view({n, out});
  for (const ServedLora& a : served_lora) {
    auto r = rows->rows_of(a.id);
    if (r.numel() == 0) continue;
    auto h = x2.index_select(0, r).to(a.A.scalar_type());
    auto z = torch::linear(torch::linear(h, a.A), a.B);  // [n_a, out]
    y2.index_copy_(0, r, (y2.index_select(0, r) + z * a.scaling).to(y2.scalar_type()));
  }
  return y2.view(y.sizes());
}

torch::Tensor LinearImpl::add_lora(const torch::Tensor& y, const torch::Tensor& x) const {
  auto h = x.to(lora_A.scalar_type());
  // dropout only in training: modules start in train mode, so gradients decide
  if (lora_dropout > 0 && is_training() && torch::GradMode::is_enabled())
    h = torch::dropout(h, lora_dropout, /*train=*/true);
  auto z = torch::linear(torch::linear(h, lora_A), lora_B);  // [..., r] -> [..., out]
  return (y + z * lora_scaling).to(y.scalar_type());
}

namespace {

// Whether the kernels take weight (and its scales) for x; bias of x's type.
bool kernel_weights(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                    const torch::Tensor& scale) {
  const bool int8 = scale.defined();
  return weight.device().is_cpu() && weight.is_contiguous() && x.size(-1) == weight.size(1) &&
         (int8 ? weight.scalar_type() == torch::kInt8 && scale.is_contiguous() &&
                     scale.device().is_cpu()
               : weight.scalar_type() == x.scalar_type()) &&
         (!bias.defined() || (bias.scalar_type() == x.scalar_type() && bias.is_contiguous() &&
                              bias.numel() == weight.size(0)));
}

}  // namespace

torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& weight,
                     const torch::Tensor& bias, const torch::Tensor& weight_scale) {
  const int64_t in = weight.size(1);
  const int64_t out = weight.size(0);
  const int64_t rows = x.numel() / in;
  // Few rows: the skinny kernels stream W once. Many rows: the tiled GEMM.
  const bool kernel =
      rows <= kernel_max_rows() && kernel_path(x) && kernel_weights(x, weight, bias, weight_scale);
  if (!kernel) {
    if (!weight_scale.defined()) return torch::linear(x, weight, bias);
    // int8 off the kernel path (CUDA, FINMOE_KERNELS=0): dequantized for this call
    return torch::linear(x, dequantize(weight, weight_scale, x.scalar_type()), bias);
  }

  auto xc = x.contiguous();  // [rows, in]
  auto sizes = x.sizes().vec();
  sizes.back() = out;
  auto y = torch::empty(sizes, x.options());  // [..., out]
  const auto t = elem_type(x);
  const void* b = bias.defined() ? bias.data_ptr() : nullptr;
  if (weight_scale.defined())
    kernels::linear_int8(t, xc.data_ptr(), rows, in, weight.data_ptr<int8_t>(),
                         weight_scale.data_ptr(), int8_format(weight_scale), out, b, t, y.data_ptr());
  else
    kernels::linear(t, xc.data_ptr(), rows, in, t, weight.data_ptr(), out, b, t, y.data_ptr());
  return y;
}

std::vector<torch::Tensor> linear_group(const torch::Tensor& x,
                                        const std::vector<const LinearImpl*>& layers) {
  const int64_t in = x.size(-1);
  const int64_t rows = x.numel() / std::max<int64_t>(in, 1);
  bool kernel = rows <= kernel_max_rows() && kernel_path(x) && !layers.empty();
  // one pass needs one weight format: all float, or all int8 with the same scales' layout
  const LinearImpl* first = layers.empty() ? nullptr : layers.front();
  const bool int8 = first && first->quantized();
  for (const LinearImpl* l : layers) {
    kernel = kernel && !l->has_lora() && l->quantized() == int8 &&
             kernel_weights(x, l->weight, l->bias, l->weight_scale);
    if (kernel && int8) {
      const auto f = int8_format(l->weight_scale), f0 = int8_format(first->weight_scale);
      kernel = f.group == f0.group && f.scale_t == f0.scale_t;
    }
  }
  std::vector<torch::Tensor> ys;
  if (!kernel) {
    for (const LinearImpl* l : layers) {
      auto y = linear(x, l->weight, l->bias, l->weight_scale);
      if (l->has_lora()) y = l->add_lora(y, x);
      ys.push_back(l->has_served_lora() ? l->add_served_lora(std::move(y), x) : y);
    }
    return ys;
  }
  auto xc = x.contiguous();  // [rows, in]
  std::vector<kernels::LinearOutput> outs;
  for (const LinearImpl* l : layers) {
    auto sizes = x.sizes().vec();
    sizes.back() = l->weight.size(0);
    ys.push_back(torch::empty(sizes, x.options()));  // [..., out_i]
    outs.push_back({l->weight.data_ptr(), l->weight.size(0),
                    l->bias.defined() ? l->bias.data_ptr() : nullptr, ys.back().data_ptr(),
                    int8 ? l->weight_scale.data_ptr() : nullptr});
  }
  const auto t = elem_type(x);
  if (int8)
    kernels::linear_group_int8(t, xc.data_ptr(), rows, in, int8_format(first->weight_scale), outs, t);
  else
    kernels::linear_group(t, xc.data_ptr(), rows, in, t, outs, t);
  for (size_t i = 0; i < layers.size(); ++i)
    if (layers[i]->has_served_lora()) ys[i] = layers[i]->add_served_lora(std::move(ys[i]), x);
  return ys;
}

torch::Tensor silu_mul(const torch::Tensor& gate, const torch::Tensor& up) {
  if (!kernel_path(gate) || up.scalar_type() != gate.scalar_type() || up.sizes() != gate.sizes() ||
      !up.device().is_cpu())
    return torch::silu(gate) * up;
  auto g = gate.contiguous();
  auto u = up.contiguous();
  auto y = torch::empty_like(g);
  kernels::swiglu(elem_type(g), g.data_ptr(), u.data_ptr(), g.numel(), y.data_ptr());
  return y;
}

RMSNormImpl::RMSNormImpl(int64_t dim, double eps_, torch::TensorOptions options) : eps(eps_) {
  weight = register_parameter("weight", torch::ones({dim}, options), false);
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  if (kernel_path(x) && weight.scalar_type() == x.scalar_type() && weight.is_contiguous() &&
      x.dim() >= 1 && x.size(-1) == weight.numel()) {
    auto xc = x.contiguous();
    auto y = torch::empty_like(xc);
    kernels::rms_norm(elem_type(x), xc.data_ptr(), xc.numel() / weight.numel(), weight.numel(),
                      weight.data_ptr(), static_cast<float>(eps), y.data_ptr());
    return y;
  }
  auto xf = at_least_float32(x);
  auto normed = xf * torch::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * normed.to(x.scalar_type());
}

torch::Tensor RMSNormImpl::add_forward(torch::Tensor& x, const torch::Tensor& delta) {
  if (kernel_path(x) && x.is_contiguous() && weight.scalar_type() == x.scalar_type() &&
      weight.is_contiguous() && delta.scalar_type() == x.scalar_type() &&
      delta.sizes() == x.sizes() && x.dim() >= 1 && x.size(-1) == weight.numel()) {
    auto d = delta.contiguous();
    auto y = torch::empty_like(x);
    kernels::add_rms_norm(elem_type(x), x.data_ptr(), d.data_ptr(), x.numel() / weight.numel(),
                          weight.numel(), weight.data_ptr(), static_cast<float>(eps), y.data_ptr());
    return y;
  }
  x = x + delta;
  return forward(x);
}

}  // namespace finmoe
