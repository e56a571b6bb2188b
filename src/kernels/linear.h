#pragma once
// Skinny matrix products for decode: y[M,N] = x[M,K] · W[N,K]^T (+ bias[N]),
// W in Hugging Face's [out, in] row-major layout, M small (1..32).
// Activations x and results y are float32; weights are bf16 (raw uint16
// bits) or float32. Multi-threaded over N with the global ThreadPool.
// Dispatch: AVX-512 BF16 (vdpbf16ps) > AVX2+FMA > scalar, picked at runtime.
// Accuracy: the bf16 path rounds x to bf16 (round-to-nearest-even) and
// accumulates in float32, as torch's bf16 matmul does; the AVX-512 path
// flushes bf16 denormals to zero (vdpbf16ps), which only affects |x| < 1e-38.
// Contract: W is read once per call (M rows of x share every W load), so the
// cost at M <= 16 is close to streaming W from memory. x, W, y must not
// overlap; bias may be null; K == 0 gives y = bias (or 0). Throws
// finmoe::Error on negative shapes or null buffers for a non-empty shape.
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
};

// Several products of the same x [M,K] (q/k/v, gate/up): the results of
// linear() for each output, from one conversion of x and one pass of the
// thread pool over all their weight rows (no wait between the products).
// Every W and bias is of w_t, every y of y_t.
void linear_group(ElemType x_t, const void* x, int64_t M, int64_t K, ElemType w_t,
                  const std::vector<LinearOutput>& outs, ElemType y_t);

// Whether linear() has its tiled many-row GEMM for bf16 weights on the
// active path (AVX-512 BF16): then it beats libtorch's bf16 matmul at
// prefill sizes too. On the other paths only few-row (decode) calls pay off.
bool linear_bf16_gemm_available();

}  // namespace finmoe::kernels
