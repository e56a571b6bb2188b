#pragma once
// Per-ISA row-range kernels behind linear.h, and an explicit-ISA entry point
// for tests and benchmarks. Each *_rows_* function computes output columns
// [n0, n1) of y[M, ldy] for all M rows; callers split N across threads.
// The *_avx512 / *_avx2 functions live in translation units compiled for
// their ISA: call them only when best_isa(cpu_features()) allows.
#include <cstdint>

#include "kernels/isa.h"
#include "kernels/ops.h"

namespace finmoe::kernels {

// linear_bf16 / linear_f32 on an explicit path; throws finmoe::Error if the CPU lacks it.
void linear_bf16_isa(Isa isa, const float* x, int64_t M, int64_t K, const uint16_t* W, int64_t N,
                     const float* bias, float* y);
void linear_f32_isa(Isa isa, const float* x, int64_t M, int64_t K, const float* W, int64_t N,
                    const float* bias, float* y);
void linear_isa(Isa isa, ElemType x_t, const void* x, int64_t M, int64_t K, ElemType w_t,
                const void* W, int64_t N, const void* bias, ElemType y_t, void* y);

// float -> bf16 bits, round-to-nearest-even; NaN stays a (quiet) NaN.
uint16_t float_to_bf16(float v);
float bf16_to_float(uint16_t b);

// AVX-512 BF16. xb: x rounded to bf16, [M, ldx], ldx a multiple of 32 >= K,
// zero beyond K (pack_x_bf16_avx512 writes it).
void pack_x_bf16_avx512(const float* x, int64_t M, int64_t K, uint16_t* xb, int64_t ldx);
void linear_bf16_rows_avx512(const uint16_t* xb, int64_t M, int64_t K, int64_t ldx,
                             const uint16_t* W, int64_t n0, int64_t n1, const float* bias, float* y,
                             int64_t ldy);
// Tiled GEMM for many rows (gemm_avx512.cpp): columns [n0, n1) of
// xb (as above) times Wᵀ (+ bias), into y (float32) or, when y is null, into
// yb (bf16, rounded to nearest even; denormal results flush to zero), both
// [M, ldy]. `packed` is 64-byte aligned scratch of gemm_pack_elems_avx512(K)
// elements, private to the calling thread.
int64_t gemm_pack_elems_avx512(int64_t K);
void gemm_bf16_avx512(const uint16_t* xb, int64_t M, int64_t K, int64_t ldx, const uint16_t* W,
                      int64_t n0, int64_t n1, const float* bias, float* y, uint16_t* yb,
                      int64_t ldy, uint16_t* packed);
void linear_f32_rows_avx512(const float* x, int64_t M, int64_t K, const float* W, int64_t n0,
                            int64_t n1, const float* bias, float* y, int64_t ldy);

// AVX2 + FMA. xr: x rounded to bf16 and widened back to float, [M, K], each
// full block of 16 stored as its 8 even-index then its 8 odd-index elements
// (matches widening a bf16 pair vector with shift / mask); the K % 16 tail in order.
void pack_x_bf16_avx2(const float* x, int64_t M, int64_t K, float* xr);
void linear_bf16_rows_avx2(const float* xr, int64_t M, int64_t K, const uint16_t* W, int64_t n0,
                           int64_t n1, const float* bias, float* y, int64_t ldy);
void linear_f32_rows_avx2(const float* x, int64_t M, int64_t K, const float* W, int64_t n0,
                          int64_t n1, const float* bias, float* y, int64_t ldy);

}  // namespace finmoe::kernels
