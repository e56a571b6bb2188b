#pragma once
// Linear layer with HF's [out, in] weight; the module behind every projection.
// Without autograd, on CPU, for a few rows (decode) it calls the hand-written
// skinny-GEMM kernels (kernels/linear.h); otherwise torch::linear.
// A layer of an 8-bit checkpoint (docs/formats/int8.md) holds an int8 weight
// and its `weight_scale`: the CPU kernels compute with them directly
// (kernels/qlinear.h); every other path dequantizes on the fly.
#include <cstdint>
#include <vector>

#include <torch/torch.h>

#include "finmoe/config.h"
#include "kernels/ops.h"
#include "kernels/qlinear.h"

namespace finmoe {

// Whether the fused CPU kernels (src/kernels) may compute on `t`: a CPU
// float32/bf16 tensor, autograd off, and FINMOE_KERNELS not set to 0.
// Training (GradMode on) and other devices always take libtorch's ops.
bool kernel_path(const torch::Tensor& t);
// t's dtype as the kernels name it; only for float32 / bf16 tensors.
kernels::ElemType elem_type(const torch::Tensor& t);

class LinearImpl : public torch::nn::Module {
 public:
  LinearImpl(int64_t in, int64_t out, bool bias, torch::TensorOptions options);
  // x [..., in] -> [..., out]: x·Wᵀ + b, plus the LoRA term when an adapter is attached
  torch::Tensor forward(const torch::Tensor& x);

  // y + scaling · B(A(dropout(x))), the LoRA term computed in the adapter's
  // dtype and the sum returned in y's (as PEFT does); x [..., in], y [..., out]
  // the base output. Needs has_lora().
  torch::Tensor add_lora(const torch::Tensor& y, const torch::Tensor& x) const;
  bool has_lora() const { return lora_A.defined(); }

  // Whether the CPU kernels can compute this layer on x: float weights of
  // x's type, or int8 ones.
  bool kernel_input(const torch::Tensor& x) const;
  bool quantized() const { return weight_scale.defined(); }
  // Lays the layer out for int8 weights of `q` (zeros until loaded): weight
  // int8 [out, in], weight_scale [out, 1] or [out, ceil(in / 32)].
  void use_int8(const QuantizationConfig& q);

  torch::Tensor weight;  // [out, in], float, or int8 when quantized
  torch::Tensor bias;    // [out] or undefined
  torch::Tensor weight_scale;  // int8 weight: [out, 1] or [out, ceil(in/32)] bf16/f32; else undefined
  // LoRA adapter (finmoe/lora.h attaches and detaches it). Plain tensors, not
  // registered parameters: named_parameters() stays the checkpoint's names.
  torch::Tensor lora_A;  // [r, in] or undefined
  torch::Tensor lora_B;  // [out, r] or undefined
  double lora_scaling = 0.0;  // alpha / r (alpha / sqrt(r) with rsLoRA)
  double lora_dropout = 0.0;  // on x before A, in train mode with autograd on

  // Serving adapters (finmoe/serving_adapters.h): LoRA adapters kept beside
  // the weights, each added only to the rows of the current AdapterRows
  // (model/adapter_rows.h) that name its id. Plain tensors, float32.
  struct ServedLora {
    int32_t id = 0;
    torch::Tensor A;  // [r, in]
    torch::Tensor B;  // [out, r]
    double scaling = 0.0;
  };
  std::vector<ServedLora> served_lora;
  bool has_served_lora() const { return !served_lora.empty(); }
  // y plus each serving adapter's term on the rows that use it (computed as
  // add_lora does, row by row); y unchanged without a current AdapterRows.
  // Throws Error when x's rows are not the current AdapterRows' rows.
  torch::Tensor add_served_lora(torch::Tensor y, const torch::Tensor& x) const;
};
TORCH_MODULE(Linear);

// y = x·Wᵀ + b through the decode kernels when they apply, else torch::linear.
// An int8 weight comes with its weight_scale (else undefined).
torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& weight,
                     const torch::Tensor& bias, const torch::Tensor& weight_scale = {});

// Int8 weights of an 8-bit checkpoint, shared by LinearImpl and the embedding.
// An int8 [rows, cols] tensor and its scales [rows, 1] or [rows, ceil(cols/32)]
// (bf16/f32) as `dtype`: s·q per element.
torch::Tensor dequantize(const torch::Tensor& q, const torch::Tensor& scale, torch::Dtype dtype);
// Replaces `weight`'s data by int8 zeros and registers `weight_scale` on
// `module` in the layout of q (see LinearImpl::use_int8).
torch::Tensor int8_layout(torch::nn::Module& module, torch::Tensor& weight,
                          const QuantizationConfig& q);
// The kernels' description of an int8 weight's scales (group from their shape).
kernels::Int8Format int8_format(const torch::Tensor& scale);

// linear(x, layer.weight, layer.bias) for each layer, with one pass of the
// decode kernels over all their weights when they apply (q/k/v, gate/up).
std::vector<torch::Tensor> linear_group(const torch::Tensor& x,
                                        const std::vector<const LinearImpl*>& layers);

// silu(gate) * up, SwiGLU's gating product: one fused kernel on the kernel
// path (same roundings as libtorch's two ops), else torch::silu(gate) * up.
torch::Tensor silu_mul(const torch::Tensor& gate, const torch::Tensor& up);

// t in float32, or unchanged when it is float64: reductions (norms, softmax,
// logits) run in at least float32, and a float64 model (gradient checks) stays
// float64 throughout.
inline torch::Tensor at_least_float32(const torch::Tensor& t) {
  return t.scalar_type() == torch::kFloat64 ? t : t.to(torch::kFloat32);
}

// Rows at or below which linears run finmoe's kernels, else libtorch's
// (FINMOE_KERNEL_MAX_ROWS, default: all rows; 0 = never; 16 = decode only).
int64_t kernel_max_rows();

class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps, torch::TensorOptions options);
  // x [..., dim]; normalised in float32 as HF does, then scaled in x's dtype
  torch::Tensor forward(const torch::Tensor& x);
  // The residual add fused with this norm: x += delta (in place), returns
  // forward(x). One kernel on the CPU no-grad path.
  torch::Tensor add_forward(torch::Tensor& x, const torch::Tensor& delta);

  torch::Tensor weight;  // [dim]
  double eps;
};
TORCH_MODULE(RMSNorm);

}  // namespace finmoe
