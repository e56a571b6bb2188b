// AVX-512F kernels (compiled with -mavx512{f,bw,vl,dq} -mfma -mf16c): the
// avx512 path (float32 FMA, bf16 weights widened in registers) and the
// float32 weights of the avx512_bf16 path. Only called at or above avx512.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

// GCC 12 flags _mm512_undefined_ps() inside its own shuffle/extract intrinsics (a false positive).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "kernels/cpu_features.h"
#include "kernels/linear_isa.h"

namespace finmoe::kernels {
namespace {

#include "kernels/linear_avx512_sums.inc"
#include "kernels/stream_prefetch.inc"
#include "kernels/next_block_prefetch.inc"

constexpr int kRows = 4;  // output rows (W rows) per block: 4 independent streams

// 16 consecutive weights as float32; bf16 widened exactly (a shift into the high half).
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const uint16_t* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
// The first `mask` lanes of the same, zeros beyond (never reads past them).
inline __m512 load16(const float* p, __mmask16 mask) { return _mm512_maskz_loadu_ps(mask, p); }
inline __m512 load16(const uint16_t* p, __mmask16 mask) {
  const __m256i h = _mm256_maskz_loadu_epi16(mask, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// dot's k step: one cache line of W per row (16 floats or 32 bf16)
template <class Wt>
constexpr int64_t kDotStep = 64 / sizeof(Wt) < 16 ? 16 : 64 / sizeof(Wt);

// acc[m][r] = sum over k of x[m][k] * w[r][k], R rows of W with stride K.
template <int R, int MT, class Wt>
inline void dot(const float* x, int64_t K, const Wt* w, __m512 (&acc)[MT][R], uintptr_t pf,
                uintptr_t pf_end, int per_step) {
  for (int m = 0; m < MT; ++m)
    for (int r = 0; r < R; ++r) acc[m][r] = _mm512_setzero_ps();
  // pf: this tile's share of the next block (next_block_prefetch.inc)
  constexpr int64_t kStep = kDotStep<Wt>;
  int64_t k = 0;
  for (; k + kStep <= K; k += kStep) {
    for (int64_t j = 0; j < kStep; j += 16) {
      __m512 wv[R];
      for (int r = 0; r < R; ++r) wv[r] = load16(w + r * K + k + j);
      for (int m = 0; m < MT; ++m) {
        const __m512 xv = _mm512_loadu_ps(x + m * K + k + j);
        for (int r = 0; r < R; ++r) acc[m][r] = _mm512_fmadd_ps(xv, wv[r], acc[m][r]);
      }
    }
    prefetch_step(pf, pf_end, per_step);
  }
  for (; k < K; k += 16) {
    const __mmask16 mask = K - k >= 16 ? 0xffff : static_cast<__mmask16>((1u << (K - k)) - 1);
    __m512 wv[R];
    for (int r = 0; r < R; ++r) wv[r] = load16(w + r * K + k, mask);
    for (int m = 0; m < MT; ++m) {
      const __m512 xv = load16(x + m * K + k, mask);
      for (int r = 0; r < R; ++r) acc[m][r] = _mm512_fmadd_ps(xv, wv[r], acc[m][r]);
    }
  }
}

template <int R, int MT, class Wt>
inline void block(const float* x, int64_t K, const Wt* W, int64_t n, const float* bias, float* y,
                  int64_t ldy, const PrefetchShare& pf) {
  __m512 acc[MT][R];
  dot<R, MT>(x, K, W + n * K, acc, pf.begin, pf.end, pf.per_step);
  store_sums<R, MT>(acc, bias, n, y, ldy);
}

// Row block of R outputs for all M rows of x, tiled by 4 rows of x: W's
// block is read from memory once and re-read from L1/L2 for later tiles,
// while the next block is prefetched.
template <int R, class Wt>
inline void rows(const float* x, int64_t M, int64_t K, const Wt* W, int64_t n, const float* bias,
                 float* y, int64_t ldy) {
  const Wt* next = W + (n + R) * K;
  const int64_t bytes = R * K * int64_t(sizeof(Wt)), tiles = (M + 3) / 4;
  const int64_t steps = K / kDotStep<Wt>;
  for (int64_t m = 0; m < M; m += 4) {
    const float* xm = x + m * K;
    float* ym = y + m * ldy;
    const PrefetchShare pf = next_block_share(next, bytes, m / 4, tiles, steps);
    switch (M - m < 4 ? M - m : 4) {
      case 4:
        block<R, 4>(xm, K, W, n, bias, ym, ldy, pf);
        break;
      case 3:
        block<R, 3>(xm, K, W, n, bias, ym, ldy, pf);
        break;
      case 2:
        block<R, 2>(xm, K, W, n, bias, ym, ldy, pf);
        break;
      default:
        block<R, 1>(xm, K, W, n, bias, ym, ldy, pf);
        break;
    }
  }
}

// One token (M = 1): W's rows one after another, a single sequential stream
// with a software prefetch kStreamAhead bytes ahead (linear_avx512bf16.cpp
// measures why).

template <class Wt>
inline float row_dot(const float* x, const Wt* w, int64_t K) {
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
  const uintptr_t ahead = reinterpret_cast<uintptr_t>(w) + kStreamAhead;
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    prefetch_line(ahead + k * sizeof(Wt));
    if constexpr (sizeof(Wt) == 4) prefetch_line(ahead + k * sizeof(Wt) + 64);
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + k), load16(w + k), a0);
    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + k + 16), load16(w + k + 16), a1);
  }
  for (; k < K; k += 16) {
    const __mmask16 mask = K - k >= 16 ? 0xffff : static_cast<__mmask16>((1u << (K - k)) - 1);
    a0 = _mm512_fmadd_ps(load16(x + k, mask), load16(w + k, mask), a0);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

template <class Wt>
void rows_any(const float* x, int64_t M, int64_t K, const Wt* W, int64_t n0, int64_t n1,
              const float* bias, float* y, int64_t ldy) {
  if (M == 1) {
    for (int64_t n = n0; n < n1; ++n) y[n] = row_dot(x, W + n * K, K) + (bias ? bias[n] : 0.0f);
    return;
  }
  int64_t n = n0;
  for (; n + kRows <= n1; n += kRows) rows<kRows>(x, M, K, W, n, bias, y, ldy);
  for (; n < n1; ++n) rows<1>(x, M, K, W, n, bias, y, ldy);
}

// ---- the tiled GEMM (gemm_f32_impl.inc) on zmm registers ----
using Vec = __m512;
constexpr int kLanes = 16;
constexpr int kTileRows = 12;  // 24 sums + 2 panel vectors + 1 broadcast of 32 zmm
constexpr int64_t kKc = 128;   // 128 x 32 floats = 16 KiB of panel per k block
inline Vec vzero() { return _mm512_setzero_ps(); }
inline Vec vload(const float* p) { return _mm512_loadu_ps(p); }
inline void vstore(float* p, Vec v) { _mm512_storeu_ps(p, v); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
inline Vec vbcast(float s) { return _mm512_set1_ps(s); }
inline Vec load_widened(const float* p) { return load16(p); }
inline Vec load_widened(const uint16_t* p) { return load16(p); }

inline Vec load_widened(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
inline Vec vunpacklo(Vec a, Vec b) { return _mm512_unpacklo_ps(a, b); }
inline Vec vunpackhi(Vec a, Vec b) { return _mm512_unpackhi_ps(a, b); }
inline Vec vshuffle_lo(Vec a, Vec b) { return _mm512_shuffle_ps(a, b, 0x44); }
inline Vec vshuffle_hi(Vec a, Vec b) { return _mm512_shuffle_ps(a, b, 0xee); }
// u[4g + j] holds rows 4g..4g+3, its lane l column 4l + j: two rounds of
// 128-bit lane shuffles gather each column's four lanes.
inline void permute_lanes(const Vec (&u)[16], Vec (&r)[16]) {
  Vec t[16];
  for (int h = 0; h < 16; h += 8)
    for (int j = 0; j < 4; ++j) {
      t[h + j] = _mm512_shuffle_f32x4(u[h + j], u[h + 4 + j], 0x88);
      t[h + 4 + j] = _mm512_shuffle_f32x4(u[h + j], u[h + 4 + j], 0xdd);
    }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
  }
}

#include "kernels/gemm_f32_impl.inc"

}  // namespace

void linear_f32_rows_avx512(const float* x, int64_t M, int64_t K, const float* W, int64_t n0,
                            int64_t n1, const float* bias, float* y, int64_t ldy) {
  rows_any(x, M, K, W, n0, n1, bias, y, ldy);
}

void linear_bf16_rows_avx512(const float* xr, int64_t M, int64_t K, const uint16_t* W, int64_t n0,
                             int64_t n1, const float* bias, float* y, int64_t ldy) {
  rows_any(xr, M, K, W, n0, n1, bias, y, ldy);
}

const GemmF32& gemm_f32_avx512() {
  static constexpr GemmF32 kGemm{kPanel, &gemm_run, &gemm_run_int8};
  return kGemm;
}

}  // namespace finmoe::kernels
