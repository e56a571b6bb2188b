#pragma once
// Per-ISA kernels behind qlinear.h and explicit-ISA entry points for tests
// and benchmarks. Functions named *_avx2, *_avx512 and *_avx512bf16 live in
// translation units compiled for that ISA: call them only when cpu_runs()
// allows (kernels/isa.h); the dispatchers below check.
#include <cstdint>
#include <vector>

#include "kernels/isa.h"
#include "kernels/linear.h"
#include "kernels/qlinear.h"

namespace finmoe::kernels {

// One row of x quantized for the int8 kernels: a record of
// q8_record_bytes(K) bytes (a multiple of 64), laid out as
//   int8_t  q[Kp]         Kp = K rounded up to 64; zero past K
//   int32_t bias[Kp / 4]  -128 * (q[4i] + q[4i+1] + q[4i+2] + q[4i+3]): vpdpbusd
//                         multiplies unsigned bytes, so VNNI reads W as q + 128
//                         and starts each 4-byte lane from this correction
//   float   lane_d[Kp / 4] the block scale of each 4-byte lane (d[i / 8])
//   float   d[Kp / 32]    block scales: x[k] ≈ d[k / 32] * q[k]
// Only the first ceil(K / 32) block scales are meaningful; padding is zero.
inline int64_t q8_padded(int64_t K) { return (K + 63) / 64 * 64; }
inline int64_t q8_record_bytes(int64_t K) {
  const int64_t Kp = q8_padded(K);
  return (3 * Kp + Kp / 8 + 63) / 64 * 64;
}
struct Q8Record {
  int8_t* q;
  int32_t* bias;
  float* lane_d;
  float* d;
};
inline Q8Record q8_record(uint8_t* rec, int64_t K) {
  const int64_t Kp = q8_padded(K);
  return {reinterpret_cast<int8_t*>(rec), reinterpret_cast<int32_t*>(rec + Kp),
          reinterpret_cast<float*>(rec + 2 * Kp), reinterpret_cast<float*>(rec + 3 * Kp)};
}

// One row of x (K values of x_t) into the record at `rec` (64-byte aligned).
// Every path computes d = amax / 127 and q = round-to-nearest-even(x * (127 /
// amax)) in float32, so the records are bit-identical across paths.
void quantize_x_q8(Isa isa, ElemType x_t, const void* x, int64_t K, uint8_t* rec);
void quantize_x_q8_scalar(ElemType x_t, const void* x, int64_t K, uint8_t* rec);
void quantize_x_q8_avx2(ElemType x_t, const void* x, int64_t K, uint8_t* rec);  // also AVX-512's

// One few-row int8 product: M rows of x `x_stride` bytes apart (records for
// q8_rows, bf16 rows zero-padded to a multiple of 32 for q8_rows_bf16x), W
// int8 [N, K] with scales of format f, bias float32 [N] or null; columns
// [n0, n1) of y [M, ldy] (float32) are written.
struct Q8Args {
  const void* x;
  int64_t x_stride;
  int64_t M, K;
  const int8_t* W;
  const void* scale;
  Int8Format f;
  const float* bias;
  float* y;
  int64_t ldy;
};
// Row m's record of a q8_rows product.
inline Q8Record q8_record(const Q8Args& a, int64_t m) {
  return q8_record(const_cast<uint8_t*>(static_cast<const uint8_t*>(a.x)) + m * a.x_stride, a.K);
}
void q8_rows(Isa isa, const Q8Args& a, int64_t n0, int64_t n1);
void q8_rows_scalar(const Q8Args& a, int64_t n0, int64_t n1);
void q8_rows_avx2(const Q8Args& a, int64_t n0, int64_t n1);
void q8_rows_avx512(const Q8Args& a, int64_t n0, int64_t n1);
void q8_rows_avx512bf16(const Q8Args& a, int64_t n0, int64_t n1);

// Several rows of bf16 activations on avx512_bf16 (from kInt8Bf16xMinRows
// rows, below kGemmMinRows): x rounded to bf16, rows padded with zeros to
// ldx (a multiple of 32); W dequantized to bf16 (s · q rounded to nearest
// even, as the bf16 GEMM's panels) and dotted in float32 with vdpbf16ps.
// Per row of x this reads W once for 4 rows of x, where the quantized-x
// kernels spend three vector operations per 64 weights and row of x.
constexpr int64_t kInt8Bf16xMinRows = 8;
void q8_rows_bf16x_avx512bf16(const Q8Args& a, int64_t n0, int64_t n1);

// linear_int8 (qlinear.h) for a batch of products on an explicit path: every
// product's W is int8 of format f with its `scale`; bias of x_t. Same
// scheduler as linear_batch_isa (linear.cpp).
void linear_int8_batch_isa(Isa isa, ElemType x_t, int64_t K, const Int8Format& f,
                           const std::vector<LinearProduct>& products, ElemType y_t);

}  // namespace finmoe::kernels
