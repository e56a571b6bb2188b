// int8-weight row kernels for the avx512_bf16 path (compiled with
// -mavx512{f,bw,vl,dq,bf16,vnni}).
// - Quantized activations (q8_rows): vpdpbusd multiplies unsigned by signed
//   bytes and adds 4 products into each int32 lane: W is flipped to unsigned
//   (w + 128, one xor per 64 bytes) and each lane starts from the record's
//   -128 * Σq correction, so the lane holds Σ q·w exactly.
// - bf16 activations, several rows (q8_rows_bf16x): W dequantized to bf16 a
//   few rows at a time, then the bf16 kernels' tiles (vdpbf16ps).
#include <immintrin.h>

#include <cstdint>
#include <vector>

// GCC 12 flags _mm512_undefined_ps() inside its own shuffle/extract intrinsics (a false positive).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "kernels/cpu_features.h"
#include "kernels/linear_isa.h"
#include "kernels/qlinear_isa.h"

namespace finmoe::kernels {
namespace {

inline __m512i prep_w(__m512i w) { return _mm512_xor_si512(w, _mm512_set1_epi8(char(0x80))); }

inline __m512i dot4(__m512i w_u8, __m512i q, const int32_t* bias) {
  return _mm512_dpbusd_epi32(_mm512_load_si512(bias), w_u8, q);
}

#include "kernels/linear_avx512_sums.inc"
#include "kernels/stream_prefetch.inc"
#include "kernels/qlinear_avx512_impl.inc"

// 32 weights of w from k (fewer at the row's end: zeros) times `s`, as bf16
// rounded to nearest even: the values the bf16 GEMM's panels hold.
inline __m512i dequant32(const int8_t* w, __mmask32 mask, float s) {
  const __m256i q = _mm256_maskz_loadu_epi8(mask, w);
  const __m512 sv = _mm512_set1_ps(s);
  const __m512 lo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(q))), sv);
  const __m512 hi = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(q, 1))), sv);
  return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
}

// Rows [n, n + rows) of W dequantized to bf16 into out [rows, K].
template <bool kGroup, class S>
void dequant_rows(const Q8Args& a, const S* scale, int64_t n, int64_t rows, uint16_t* out) {
  const int64_t per_row = int8_scales_per_row(a.f, a.K);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < a.K; k += 32) {
      const __mmask32 mask = a.K - k >= 32 ? ~__mmask32{0} : (__mmask32{1} << (a.K - k)) - 1;
      const float s = scale1(scale, (n + r) * per_row + (kGroup ? k / 32 : 0));
      _mm512_mask_storeu_epi16(out + r * a.K + k, mask, dequant32(a.W + (n + r) * a.K + k, mask, s));
    }
}

}  // namespace

void q8_rows_avx512bf16(const Q8Args& a, int64_t n0, int64_t n1) { rows_any(a, n0, n1); }

// A few rows of W at a time are dequantized into an L1/L2 buffer once, then
// the bf16 kernels' 4 x 4 tiles run over them for every row of x.
void q8_rows_bf16x_avx512bf16(const Q8Args& a, int64_t n0, int64_t n1) {
  constexpr int64_t kRows = 4;  // 4 x K bf16: 7 KiB for K = 896, 38 KiB for 4864
  thread_local std::vector<uint16_t> buf;
  buf.resize(size_t(kRows * a.K));
  const bool f32 = a.f.scale_t == ElemType::kF32;
  for (int64_t n = n0; n < n1; n += kRows) {
    const int64_t rows = n1 - n < kRows ? n1 - n : kRows;
    if (a.f.group)
      f32 ? dequant_rows<true>(a, static_cast<const float*>(a.scale), n, rows, buf.data())
          : dequant_rows<true>(a, static_cast<const uint16_t*>(a.scale), n, rows, buf.data());
    else
      f32 ? dequant_rows<false>(a, static_cast<const float*>(a.scale), n, rows, buf.data())
          : dequant_rows<false>(a, static_cast<const uint16_t*>(a.scale), n, rows, buf.data());
    linear_bf16_rows_avx512bf16(static_cast<const uint16_t*>(a.x), a.M, a.K, a.x_stride / 2,
                                buf.data(), 0, rows,
                                a.bias ? a.bias + n : nullptr, a.y + n, a.ldy);
  }
}

}  // namespace finmoe::kernels
