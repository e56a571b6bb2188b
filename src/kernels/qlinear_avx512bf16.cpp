// int8-weight row kernels with AVX-512 VNNI (compiled with
// -mavx512{f,bw,vl,dq,bf16,vnni}): only called on the avx512_bf16 path.
// vpdpbusd multiplies unsigned by signed bytes and adds 4 products into each
// int32 lane: W is flipped to unsigned (w + 128, one xor per 64 bytes) and
// each lane starts from the record's -128 * Σq correction, so the lane holds
// Σ q·w exactly.
#include <immintrin.h>

#include <cstdint>

// GCC 12 flags _mm512_undefined_ps() inside its own shuffle/extract intrinsics (a false positive).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "kernels/linear_isa.h"
#include "kernels/qlinear_isa.h"

namespace finmoe::kernels {
namespace {

inline __m512i prep_w(__m512i w) { return _mm512_xor_si512(w, _mm512_set1_epi8(char(0x80))); }

inline __m512i dot4(__m512i w_u8, __m512i q, const int32_t* bias) {
  return _mm512_dpbusd_epi32(_mm512_load_si512(bias), w_u8, q);
}

#include "kernels/qlinear_avx512_impl.inc"

}  // namespace

void q8_rows_avx512bf16(const Q8Args& a, int64_t n0, int64_t n1) { rows_any(a, n0, n1); }

}  // namespace finmoe::kernels
