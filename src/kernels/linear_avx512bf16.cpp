// AVX-512 BF16 kernels for few rows (compiled with -mavx512{f,bw,vl,dq,bf16,vnni}):
// only called on the avx512_bf16 path.
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

constexpr int kRows = 4;  // output rows (W rows) per block: 4 independent streams

// Same 512 bits seen as 32 bf16 (a GCC/Clang vector cast, no instruction).
inline __m512bh as_bh(__m512i v) { return (__m512bh)v; }

#include "kernels/linear_avx512_sums.inc"
#include "kernels/stream_prefetch.inc"
#include "kernels/next_block_prefetch.inc"

// acc[m][r] = sum over k of xb[m][k] * w[r][k], R rows of W with stride K.
template <int R, int MT>
inline void dot_bf16(const uint16_t* xb, int64_t ldx, const uint16_t* w, int64_t K,
                     __m512 (&acc)[MT][R], uintptr_t pf, uintptr_t pf_end, int per_step) {
  for (int m = 0; m < MT; ++m)
    for (int r = 0; r < R; ++r) acc[m][r] = _mm512_setzero_ps();
  // pf: this tile's share of the next block (next_block_prefetch.inc)
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    __m512bh wv[R];
    for (int r = 0; r < R; ++r) wv[r] = as_bh(_mm512_loadu_si512(w + r * K + k));
    for (int m = 0; m < MT; ++m) {
      const __m512bh xv = as_bh(_mm512_load_si512(xb + m * ldx + k));
      for (int r = 0; r < R; ++r) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], xv, wv[r]);
    }
    prefetch_step(pf, pf_end, per_step);
  }
  if (k < K) {
    // Masked W loads read zeros past the row (never garbage that could be NaN); x is zero-padded.
    const __mmask32 mask = (__mmask32{1} << (K - k)) - 1;
    __m512bh wv[R];
    for (int r = 0; r < R; ++r) wv[r] = as_bh(_mm512_maskz_loadu_epi16(mask, w + r * K + k));
    for (int m = 0; m < MT; ++m) {
      const __m512bh xv = as_bh(_mm512_load_si512(xb + m * ldx + k));
      for (int r = 0; r < R; ++r) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], xv, wv[r]);
    }
  }
}

template <int R, int MT>
inline void block_bf16(const uint16_t* xb, int64_t ldx, int64_t K, const uint16_t* W, int64_t n,
                       const float* bias, float* y, int64_t ldy, uintptr_t pf, uintptr_t pf_end,
                       int per_step) {
  __m512 acc[MT][R];
  dot_bf16<R, MT>(xb, ldx, W + n * K, K, acc, pf, pf_end, per_step);
  store_sums<R, MT>(acc, bias, n, y, ldy);
}

// Row block of R outputs for all M rows of x, tiled by 4 rows of x: W's
// block is read from memory once and re-read from L1/L2 for later tiles,
// while the next block is prefetched.
template <int R>
inline void rows_bf16(const uint16_t* xb, int64_t M, int64_t K, int64_t ldx, const uint16_t* W,
                      int64_t n, const float* bias, float* y, int64_t ldy) {
  const uint16_t* next = W + (n + R) * K;
  const int64_t bytes = R * K * int64_t(sizeof(uint16_t)), tiles = (M + 3) / 4, steps = K / 32;
  for (int64_t m = 0; m < M; m += 4) {
    const uint16_t* xm = xb + m * ldx;
    float* ym = y + m * ldy;
    const PrefetchShare pf = next_block_share(next, bytes, m / 4, tiles, steps);
    switch (M - m < 4 ? M - m : 4) {
      case 4:
        block_bf16<R, 4>(xm, ldx, K, W, n, bias, ym, ldy, pf.begin, pf.end, pf.per_step);
        break;
      case 3:
        block_bf16<R, 3>(xm, ldx, K, W, n, bias, ym, ldy, pf.begin, pf.end, pf.per_step);
        break;
      case 2:
        block_bf16<R, 2>(xm, ldx, K, W, n, bias, ym, ldy, pf.begin, pf.end, pf.per_step);
        break;
      default:
        block_bf16<R, 1>(xm, ldx, K, W, n, bias, ym, ldy, pf.begin, pf.end, pf.per_step);
        break;
    }
  }
}

// One token (M = 1): W's rows one after another, so the weights are read as a
// single sequential stream (what the hardware prefetcher follows best) with a
// software prefetch kStreamAhead bytes ahead; two accumulators hide the
// dpbf16 latency. On the Qwen2-0.5B decode chain this reads 15-20% faster
// than 4 interleaved rows when the memory bus has headroom (76-78% vs 64-66%
// of a 64 GB/s read probe) and the same when it is busy (~94% of 35 GB/s).

inline float row_dot_bf16(const uint16_t* x, const uint16_t* w, int64_t K) {
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
  const uintptr_t ahead = reinterpret_cast<uintptr_t>(w) + kStreamAhead;  // as in dot_bf16
  int64_t k = 0;
  for (; k + 64 <= K; k += 64) {
    prefetch_line(ahead + k * 2);
    prefetch_line(ahead + k * 2 + 64);
    a0 = _mm512_dpbf16_ps(a0, as_bh(_mm512_load_si512(x + k)), as_bh(_mm512_loadu_si512(w + k)));
    a1 = _mm512_dpbf16_ps(a1, as_bh(_mm512_load_si512(x + k + 32)),
                          as_bh(_mm512_loadu_si512(w + k + 32)));
  }
  for (; k < K; k += 32) {  // x is zero-padded; W past the row is masked off
    const __mmask32 mask = K - k >= 32 ? ~__mmask32{0} : (__mmask32{1} << (K - k)) - 1;
    a0 = _mm512_dpbf16_ps(a0, as_bh(_mm512_load_si512(x + k)),
                          as_bh(_mm512_maskz_loadu_epi16(mask, w + k)));
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

}  // namespace

void pack_x_bf16_avx512bf16(const float* x, int64_t M, int64_t K, uint16_t* xb, int64_t ldx) {
  for (int64_t m = 0; m < M; ++m) {
    const float* xr = x + m * K;
    uint16_t* out = xb + m * ldx;
    for (int64_t k = 0; k < ldx; k += 32) {
      const int64_t left = K - k;
      const __mmask16 lo = left >= 16 ? 0xffff : left <= 0 ? 0 : (1u << left) - 1;
      const __mmask16 hi = left >= 32 ? 0xffff : left <= 16 ? 0 : (1u << (left - 16)) - 1;
      const __m512 a = _mm512_maskz_loadu_ps(lo, xr + k);
      const __m512 b = _mm512_maskz_loadu_ps(hi, xr + k + 16);
      // cvtne2ps_pbh(hi_half, lo_half): round-to-nearest-even.
      _mm512_storeu_si512(out + k, (__m512i)_mm512_cvtne2ps_pbh(b, a));
    }
  }
}

void linear_bf16_rows_avx512bf16(const uint16_t* xb, int64_t M, int64_t K, int64_t ldx,
                             const uint16_t* W, int64_t n0, int64_t n1, const float* bias, float* y,
                             int64_t ldy) {
  if (M == 1) {
    for (int64_t n = n0; n < n1; ++n) y[n] = row_dot_bf16(xb, W + n * K, K) + (bias ? bias[n] : 0.0f);
    return;
  }
  int64_t n = n0;
  for (; n + kRows <= n1; n += kRows) rows_bf16<kRows>(xb, M, K, ldx, W, n, bias, y, ldy);
  for (; n < n1; ++n) rows_bf16<1>(xb, M, K, ldx, W, n, bias, y, ldy);
}

}  // namespace finmoe::kernels
