#pragma once
// Matrix products for inference: y[M,N] = x[M,K] · W[N,K]^T (+ bias[N]),
// W in Hugging Face's [out, in] row-major layout, any M: few rows (decode)
// stream W once with every row of x sharing each load; from kGemmMinRows
// rows (prefill) a tiled GEMM repacks W per panel of columns and is
// compute-bound. Weights are bf16 (raw uint16 bits) or float32; int8
// weights with scales go through the same scheduler (qlinear.h).
// Multi-threaded over N with the global ThreadPool.
// Dispatch (kernels/isa.h), picked at runtime: avx512_bf16 (vdpbf16ps) >
// avx512 (float32 FMA, bf16 widened in registers) > avx2 (the same on ymm) >
// scalar (SSE2).
// Accuracy: with bf16 weights x is rounded to bf16 (round-to-nearest-even)
// and the products accumulate in float32, as torch's bf16 matmul does, on
// every path; avx512_bf16 flushes bf16 denormals to zero (vdpbf16ps), which
// only affects |x| < 1e-38. Paths differ only in the order of the float32 sums.
// Contract: x, W, y must not overlap; bias may be null; K == 0 gives y =
// bias (or 0). Throws finmoe::Error on negative shapes or null buffers for a
// non-empty shape. Results do not depend on the thread schedule.
// Thread safety: concurrent calls are safe (they serialise on the pool).
#include <cstdint>
#include <vector>

#include "kernels/ops.h"

namespace finmoe::kernels {

void linear_bf16(const float* x, int64_t M, int64_t K, const uint16_t* W, int64_t N,
                 const float* bias, float* y);
void linear_f32(const float* x, int64_t M, int64_t K, const float* W, int64_t N, const float* bias,
                float* y);

// The same products on tensors as the model stores them: x [M,K] of x_t,
// W [N,K] and bias [N] (or null) of w_t, y [M,N] of y_t (bf16 results
// rounded to nearest even once, after the float32 sum). Saves the
// conversions around linear_bf16 / linear_f32.
void linear(ElemType x_t, const void* x, int64_t M, int64_t K, ElemType w_t, const void* W,
            int64_t N, const void* bias, ElemType y_t, void* y);

// One product of a group that shares its input: y [M,N] = x · W[N,K]^T (+ bias[N]).
struct LinearOutput {
  const void* W = nullptr;
  int64_t N = 0;
  const void* bias = nullptr;  // may be null
  void* y = nullptr;
  const void* scale = nullptr;  // int8 W only (qlinear.h): its scales
};

// Several products of the same x [M,K] (q/k/v, gate/up): linear_batch with
// x shared. Every W and bias is of w_t, every y of y_t.
void linear_group(ElemType x_t, const void* x, int64_t M, int64_t K, ElemType w_t,
                  const std::vector<LinearOutput>& outs, ElemType y_t);

// One of several independent products of a batch: y [M,N] = x [M,K] · W[N,K]^T (+ bias[N]).
struct LinearProduct {
  const void* x = nullptr;
  int64_t M = 0;
  const void* W = nullptr;
  int64_t N = 0;
  const void* bias = nullptr;  // may be null
  void* y = nullptr;
  const void* scale = nullptr;  // int8 W only (qlinear.h): its scales
};

// The results of linear() for every product (all of x_t / w_t / y_t and the
// same K), in one pass of the thread pool over all their weights: grouped
// expert GEMMs (each expert's tokens times its weights, no wait between the
// experts) and q/k/v or gate/up sharing one x (converted once).
void linear_batch(ElemType x_t, int64_t K, ElemType w_t, const std::vector<LinearProduct>& products,
                  ElemType y_t);

// Weight bytes that the products of every call so far have read: each
// product's W (and int8 scales) once, however many rows it has. A decode
// step's delta is the least it streams from memory, counted where a MoE
// layer's batch reads more experts than one token's (`bench decode`).
uint64_t weight_bytes_read();

// Rows from which a product runs the tiled GEMM instead of the few-row
// kernels (bf16 weights on AMX tiles: from amx_gemm_min_rows(), linear_isa.h;
// below it their tiles read W in place).
constexpr int64_t kGemmMinRows = 32;

}  // namespace finmoe::kernels
