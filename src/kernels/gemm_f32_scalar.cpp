// The tiled float32 GEMM (gemm_f32_impl.inc) for the scalar path: baseline
// x86-64, so SSE2 (4 lanes, no FMA: a multiply then an add).
#include <emmintrin.h>
#include <xmmintrin.h>

#include <cstdint>

#include "kernels/linear_isa.h"

namespace finmoe::kernels {
namespace {

using Vec = __m128;
constexpr int kLanes = 4;
constexpr int kTileRows = 6;  // 12 sums + 2 panel vectors + 1 broadcast of 16 xmm
constexpr int64_t kKc = 512;  // 512 x 8 floats = 16 KiB of panel per k block
inline Vec vzero() { return _mm_setzero_ps(); }
inline Vec vload(const float* p) { return _mm_loadu_ps(p); }
inline void vstore(float* p, Vec v) { _mm_storeu_ps(p, v); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm_add_ps(_mm_mul_ps(a, b), c); }
inline Vec vbcast(float s) { return _mm_set1_ps(s); }
inline Vec load_widened(const float* p) { return _mm_loadu_ps(p); }
inline Vec load_widened(const uint16_t* p) {  // (0, w) 16-bit pairs = w << 16 per 32-bit lane
  const __m128i h = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  return _mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), h));
}
inline Vec load_widened(const int8_t* p) {  // 4 bytes, each sign-extended to 32 bits
  int32_t v;
  __builtin_memcpy(&v, p, 4);
  __m128i b = _mm_cvtsi32_si128(v);
  b = _mm_unpacklo_epi8(b, b);
  b = _mm_unpacklo_epi16(b, b);
  return _mm_cvtepi32_ps(_mm_srai_epi32(b, 24));
}
inline Vec vunpacklo(Vec a, Vec b) { return _mm_unpacklo_ps(a, b); }
inline Vec vunpackhi(Vec a, Vec b) { return _mm_unpackhi_ps(a, b); }
inline Vec vshuffle_lo(Vec a, Vec b) { return _mm_shuffle_ps(a, b, 0x44); }
inline Vec vshuffle_hi(Vec a, Vec b) { return _mm_shuffle_ps(a, b, 0xee); }
inline void permute_lanes(const Vec (&u)[4], Vec (&r)[4]) {  // one 128-bit lane: done
  for (int j = 0; j < 4; ++j) r[j] = u[j];
}

#include "kernels/gemm_f32_impl.inc"

}  // namespace

const GemmF32& gemm_f32_scalar() {
  static constexpr GemmF32 kGemm{kPanel, &gemm_run, &gemm_run_int8};
  return kGemm;
}

}  // namespace finmoe::kernels
