// int8-weight row kernels on AVX-512F/BW (compiled with -mavx512{f,bw,vl,dq}):
// the avx512 path. Only called at or above avx512.
#include <immintrin.h>

#include <cstdint>

// GCC 12 flags _mm512_undefined_ps() inside its own shuffle/extract intrinsics (a false positive).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "kernels/cpu_features.h"
#include "kernels/linear_isa.h"
#include "kernels/qlinear_isa.h"

namespace finmoe::kernels {
namespace {

inline __m512i prep_w(__m512i w) { return w; }

// No unsigned x signed byte product but vpmaddubsw: |q| (u8) times w with
// q's sign moved onto it; pairs fit int16 (|sum| <= 2 * 127 * 127).
inline __m512i dot4(__m512i w, __m512i q, const int32_t*) {
  const __m512i signed_w = _mm512_mask_sub_epi8(w, _mm512_movepi8_mask(q), _mm512_setzero_si512(), w);
  return _mm512_madd_epi16(_mm512_maddubs_epi16(_mm512_abs_epi8(q), signed_w), _mm512_set1_epi16(1));
}

#include "kernels/linear_avx512_sums.inc"
#include "kernels/stream_prefetch.inc"
#include "kernels/qlinear_avx512_impl.inc"

}  // namespace

void q8_rows_avx512(const Q8Args& a, int64_t n0, int64_t n1) { rows_any(a, n0, n1); }

}  // namespace finmoe::kernels
