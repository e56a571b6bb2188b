#pragma once
// Per-ISA kernels behind linear.h, and explicit-ISA entry points for tests
// and benchmarks. Each *_rows_* function computes output columns [n0, n1) of
// y[M, ldy] for all M rows (few rows: W streamed once); the GEMMs do the same
// for many rows; callers split N across threads. Functions named *_avx2,
// *_avx512 and *_avx512bf16 live in translation units compiled for that
// ISA: call them only when cpu_runs() allows (kernels/isa.h).
#include <cstdint>

#include <vector>

#include "kernels/isa.h"
#include "kernels/linear.h"
#include "kernels/ops.h"
#include "kernels/qlinear.h"

namespace finmoe::kernels {

// linear_bf16 / linear_f32 on an explicit path; throws finmoe::Error if the CPU lacks it.
void linear_bf16_isa(Isa isa, const float* x, int64_t M, int64_t K, const uint16_t* W, int64_t N,
                     const float* bias, float* y);
void linear_f32_isa(Isa isa, const float* x, int64_t M, int64_t K, const float* W, int64_t N,
                    const float* bias, float* y);
void linear_isa(Isa isa, ElemType x_t, const void* x, int64_t M, int64_t K, ElemType w_t,
                const void* W, int64_t N, const void* bias, ElemType y_t, void* y);
// linear_batch (linear.h) on an explicit path.
void linear_batch_isa(Isa isa, ElemType x_t, int64_t K, ElemType w_t,
                      const std::vector<LinearProduct>& products, ElemType y_t);

// float -> bf16 bits, round-to-nearest-even; NaN stays a (quiet) NaN.
uint16_t float_to_bf16(float v);
float bf16_to_float(uint16_t b);

// Tiled float32 GEMM for many rows, one per ISA (gemm_f32_impl.inc).
struct GemmF32 {
  // Output columns per packed panel: callers split N on multiples of it.
  int64_t panel;
  // y or yb [M, ldy], columns [n0, n1) = x[M, K] (float32, row stride ldx) ·
  // W[n0:n1, K]ᵀ (+ bias), W of w_t (bf16 widened exactly); float32 into y,
  // or rounded to nearest even bf16 into yb when y is null. K > 0. `scratch`:
  // gemm_f32_scratch(M, K) floats, private to the calling thread.
  void (*run)(const float* x, int64_t M, int64_t K, int64_t ldx, ElemType w_t, const void* W,
              int64_t n0, int64_t n1, const float* bias, float* y, uint16_t* yb, int64_t ldy,
              float* scratch);
  // The same with int8 W [N, K] and `scale` of format f (qlinear.h), each
  // panel dequantized to float32 (s · q, exact) as it is packed.
  void (*run_int8)(const float* x, int64_t M, int64_t K, int64_t ldx, const int8_t* W,
                   const void* scale, const Int8Format& f, int64_t n0, int64_t n1,
                   const float* bias, float* y, uint16_t* yb, int64_t ldy, float* scratch);
  int64_t scratch_floats(int64_t M, int64_t K) const { return (K + M) * panel; }
};
const GemmF32& gemm_f32_scalar();
const GemmF32& gemm_f32_avx2();
const GemmF32& gemm_f32_avx512();

// AVX-512 BF16. xb: x rounded to bf16, [M, ldx], ldx a multiple of 32 >= K,
// zero beyond K (pack_x_bf16_avx512bf16 writes it).
void pack_x_bf16_avx512bf16(const float* x, int64_t M, int64_t K, uint16_t* xb, int64_t ldx);
void linear_bf16_rows_avx512bf16(const uint16_t* xb, int64_t M, int64_t K, int64_t ldx,
                                 const uint16_t* W, int64_t n0, int64_t n1, const float* bias,
                                 float* y, int64_t ldy);
// AMX tiles configured on the calling thread (all eight 16 rows x 64 bytes)
// for its lifetime, released after (the kernel saves no tile data for a
// thread that holds none). Only where gemm_amx().
class AmxTileScope {
 public:
  AmxTileScope();
  ~AmxTileScope();
  AmxTileScope(const AmxTileScope&) = delete;
  AmxTileScope& operator=(const AmxTileScope&) = delete;
};
// Products of up to a few tens of rows of x on AMX tiles
// (gemm_avx512bf16.cpp): W's rows are read in place as the A operand, 32 at
// a time, each block against all of x, 32 rows at a time, packed once per
// product as the B operand (xv, amx_rows_x_elems(M, K) elements, from xb [M,
// ldx] by amx_rows_pack_x); rows [n0, n1) of the float32 sums (+ bias) into
// y [M, ldy]. The calling thread holds an AmxTileScope throughout.
int64_t amx_rows_x_elems(int64_t M, int64_t K);
void amx_rows_pack_x(const uint16_t* xb, int64_t M, int64_t ldx, uint16_t* xv);
void linear_bf16_rows_amx(const uint16_t* xv, int64_t M, int64_t K, const uint16_t* W, int64_t n0,
                          int64_t n1, const float* bias, float* y, int64_t ldy);
// Tiled GEMM for many rows (gemm_avx512bf16.cpp): columns [n0, n1) of
// xb (as above) times Wᵀ (+ bias), into y (float32) or, when y is null, into
// yb (bf16, rounded to nearest even; denormal results flush to zero), both
// [M, ldy]. `packed` is 64-byte aligned scratch of gemm_pack_elems_avx512bf16(K)
// elements, private to the calling thread. With `amx` (only where gemm_amx()
// says the CPU and the OS allow it) the products run on AMX tiles.
int64_t gemm_pack_elems_avx512bf16(int64_t K);
void gemm_bf16_avx512bf16(const uint16_t* xb, int64_t M, int64_t K, int64_t ldx,
                          const uint16_t* W, int64_t n0, int64_t n1, const float* bias, float* y,
                          uint16_t* yb, int64_t ldy, uint16_t* packed, bool amx);
// The same with int8 W [N, K] and scales of format f (qlinear.h): each panel
// is dequantized to bf16 (s · q rounded to nearest even) as it is packed.
void gemm_int8_avx512bf16(const uint16_t* xb, int64_t M, int64_t K, int64_t ldx, const int8_t* W,
                          const void* scale, const Int8Format& f, int64_t n0, int64_t n1,
                          const float* bias, float* y, uint16_t* yb, int64_t ldy,
                          uint16_t* packed, bool amx);
// Whether the avx512_bf16 GEMM runs on AMX tiles: the CPU has AMX-BF16, the
// OS granted this process the tile data (cpu_features().amx_bf16) and
// FINMOE_AMX is not 0. set_gemm_amx(false) turns them off for this process
// (tests and benchmarks compare both); set_gemm_amx(true) cannot turn them on
// where the CPU lacks them.
bool gemm_amx();
void set_gemm_amx(bool on);
// Rows from which bf16 products on AMX tiles run the tiled GEMM instead of
// reading W in place (linear_bf16_rows_amx): kAmxGemmMinRows (linear.cpp)
// unless set here, which tests and benchmarks do to compare the two
// (clamped to [kGemmMinRows, INT32_MAX]).
int64_t amx_gemm_min_rows();
void set_amx_gemm_min_rows(int64_t rows);

// AVX-512F (linear_avx512.cpp): x (xr: rounded to bf16 for bf16 W) [M, K] in order.
void linear_bf16_rows_avx512(const float* xr, int64_t M, int64_t K, const uint16_t* W, int64_t n0,
                             int64_t n1, const float* bias, float* y, int64_t ldy);
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
