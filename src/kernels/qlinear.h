#pragma once
// Matrix products with int8 weights (docs/formats/int8.md): W [N, K] holds
// symmetric int8 values q in [-127, 127] and float scales s, one per output
// row (group 0) or per row and group of 32 consecutive k (group 32):
//   W[n, k] = s[n, k / group] * q[n, k]        (group 0: s[n])
// Scales are float32 or bf16 (raw uint16 bits), the bias and x of the
// activations' type.
//
// Few rows (decode, M < kGemmMinRows; with bf16 x on avx512_bf16 only below
// kInt8Bf16xMinRows = 8, see below): x is quantized on the fly per block of
// 32 values, as llama.cpp's Q8_0 activations: d = max|x_block| / 127,
// xq = round-to-nearest-even(x * (127 / max|x_block|)), so x[m, k] ≈
// d[m, k/32] * xq[m, k]. Then
//   y[m, n] = Σ_b d[m, b] · s[n, b] · Σ_{k in block b} xq[m, k] q[n, k]
// with every block's inner sum exact in int32 and the outer sum in float32:
// one byte of W per weight streamed, int8 dot products on avx512_bf16
// (VNNI vpdpbusd, W flipped to unsigned), avx512 (vpmaddubsw + vpmaddwd on
// zmm), avx2 (vpsignb + vpmaddubsw + vpmaddwd) and scalar. Paths differ only
// in the order of the float32 sums.
// Batched decode with bf16 x on avx512_bf16 (8 <= M < kGemmMinRows): a few
// rows of W at a time are dequantized to bf16 (s · q rounded to nearest
// even) and the bf16 kernels' tiles run over them: three vector operations
// per 64 weights and row of x (the quantized path) would make it
// compute-bound.
// Many rows (prefill, M >= kGemmMinRows): x is not quantized; W is
// dequantized panel by panel into the tiled GEMMs of linear_isa.h: for bf16
// x on avx512_bf16 into the bf16 GEMM (s · q rounded to nearest even bf16,
// as a bf16 model's weights are), otherwise into the float32 GEMM (s · q
// exact).
// Threads, contract and errors as linear.h (the same scheduler runs both).
#include <cstdint>
#include <vector>

#include "kernels/linear.h"
#include "kernels/ops.h"

namespace finmoe::kernels {

// The one group size besides per-row scales: a group is one activation block.
constexpr int64_t kInt8Group = 32;

// How a product's int8 weights are scaled.
struct Int8Format {
  int64_t group = 0;                  // 0 (a scale per output row) or kInt8Group
  ElemType scale_t = ElemType::kF32;  // the scales' type
};

// Scales per row of a [N, K] int8 matrix: 1, or ceil(K / group).
int64_t int8_scales_per_row(const Int8Format& f, int64_t K);

// Symmetric quantization of w [N, K] (float32) into q [N, K] and scales
// [N, int8_scales_per_row(f, K)] of f.scale_t: per row or group, s = max|w| /
// 127 (a bf16 scale is rounded up, so no value leaves [-127, 127]) and q =
// round-to-nearest-even(w / s); an all-zero group gets s = 0, q = 0. Then
// |s·q - w| <= s/2 for every element. Throws finmoe::Error for a non-finite
// value or a group other than 0 and kInt8Group.
void quantize_int8(const float* w, int64_t N, int64_t K, const Int8Format& f, int8_t* q,
                   void* scale);
// w [N, K] = s · q in float32 (exact).
void dequantize_int8(const int8_t* q, const void* scale, const Int8Format& f, int64_t N, int64_t K,
                     float* w);

// y [M, N] = x [M, K] · Wᵀ (+ bias [N]), W int8 [N, K] with `scale` of format f;
// x and bias of x_t, y of y_t (bf16 rounded to nearest even once).
void linear_int8(ElemType x_t, const void* x, int64_t M, int64_t K, const int8_t* W,
                 const void* scale, const Int8Format& f, int64_t N, const void* bias, ElemType y_t,
                 void* y);
// Several products of the same x (q/k/v, gate/up) in one pass of the pool:
// every output's W is int8 of format f with its `scale`; bias of x_t.
void linear_group_int8(ElemType x_t, const void* x, int64_t M, int64_t K, const Int8Format& f,
                       const std::vector<LinearOutput>& outs, ElemType y_t);

}  // namespace finmoe::kernels
