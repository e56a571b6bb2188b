#pragma once
// Small fused ops around the decode/prefill matrix products: RMSNorm, RoPE,
// SwiGLU, residual add, dtype conversion and cache-row scatter, on raw
// row-major buffers of float32 or bf16 (raw uint16_t bits). Each op reads and
// writes its data once in one call, where libtorch 1.13 needs several ops of
// ~20 µs each at decode sizes.
// Arithmetic is float32; bf16 results are rounded to nearest even. Where the
// model's libtorch formula rounds an intermediate to the activation dtype,
// the op does too (noted per op), so bf16 results match libtorch's to the
// rounding of float32 sums.
// Dispatch: the same source compiled for AVX-512, AVX2 and baseline x86-64,
// chosen by active_isa() (FINMOE_ISA lowers it). Rows are split over the
// kernel ThreadPool when the op is large enough to pay for a wake-up.
// Buffers of one call must not overlap unless stated; null pointers are
// only allowed for empty shapes. Shapes are not validated beyond
// non-negativity: callers (model/*.cpp) check them against the tensors.
#include <cstdint>

namespace finmoe::kernels {

enum class ElemType { kF32, kBF16 };

inline int64_t elem_size(ElemType t) { return t == ElemType::kF32 ? 4 : 2; }

// y[m,:] = w * to_t(x[m,:] * rsqrt(mean(x[m,:]^2) + eps)), x, y, w [.., D]
// all of type t: HF's RMSNorm (normalised in float32, rounded to t, then
// scaled by w and rounded again). y may equal x.
void rms_norm(ElemType t, const void* x, int64_t M, int64_t D, const void* w, float eps, void* y);

// x[m,:] += delta[m,:] (rounded to t), then y[m,:] = rms_norm(x[m,:]): the
// residual add fused with the next layer norm. x is updated in place.
void add_rms_norm(ElemType t, void* x, const void* delta, int64_t M, int64_t D, const void* w,
                  float eps, void* y);

// Rotary embedding in place on x [N, H, ld] (head h of token n starts at
// x + (n*H + h)*ld): the first `rot` dims of every head become
// x*cos + rotate(x)*sin with cos/sin [N, rot] float32; rotate pairs i with
// i + rot/2 (rotate-half, `interleaved` false) or 2i with 2i+1.
// Computed in float32 and rounded once (libtorch rounds cos/sin and each
// product to bf16 for bf16 tensors: results differ by ~1 bf16 ulp).
void rope(ElemType t, void* x, int64_t N, int64_t H, int64_t ld, int64_t rot, const float* cos,
          const float* sin, bool interleaved);

// y[i] = to_t(silu(gate[i])) * up[i] (rounded to t), gate/up/y [n]; y may equal gate or up.
void swiglu(ElemType t, const void* gate, const void* up, int64_t n, void* y);

// y[m,:] = to_t(y[m,:] + to_t(x[m,:] * to_t(sigmoid(gate[m])))), y/x [M, D] and
// gate [M] of type t: Qwen2-MoE's shared expert added to the routed output
// with libtorch's roundings of `y + x * torch::sigmoid(gate)`. y is updated in place.
void gated_add(ElemType t, void* y, const void* x, const void* gate, int64_t M, int64_t D);
// dst[i] = to_dst(src[i]) for i < n.
void convert(ElemType src_t, const void* src, ElemType dst_t, void* dst, int64_t n);

// dst row rows[i] = src row i, for i < n, rows of `width` elements (types may differ).
void scatter_rows(ElemType src_t, const void* src, int64_t n, int64_t width, ElemType dst_t,
                  void* dst, const int64_t* rows);

}  // namespace finmoe::kernels
