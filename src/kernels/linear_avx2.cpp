// AVX2 + FMA kernels (compiled with -mavx2 -mfma -mf16c): only called after
// best_isa() said the CPU runs them.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cpu_features.h"
#include "kernels/linear_isa.h"

namespace finmoe::kernels {
namespace {

constexpr int kRows = 4;

inline __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 ab = _mm256_hadd_ps(a, b);  // [a01 a23 b01 b23 | a45 a67 b45 b67]
  const __m256 cd = _mm256_hadd_ps(c, d);
  const __m256 s = _mm256_hadd_ps(ab, cd);  // [a0-3 b0-3 c0-3 d0-3 | a4-7 ...]
  return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

inline float hsum(__m256 a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float widen(uint16_t b) {
  const uint32_t u = uint32_t{b} << 16;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}

template <int R, int MT>
void store_sums(__m256 (&acc)[MT][R], const float (&tail)[MT][R], const float* bias, int64_t n,
                float* y, int64_t ldy) {
  for (int m = 0; m < MT; ++m) {
    if constexpr (R == 4) {
      __m128 s =
          _mm_add_ps(hsum4(acc[m][0], acc[m][1], acc[m][2], acc[m][3]), _mm_loadu_ps(tail[m]));
      if (bias) s = _mm_add_ps(s, _mm_loadu_ps(bias + n));
      _mm_storeu_ps(y + m * ldy + n, s);
    } else {
      for (int r = 0; r < R; ++r)
        y[m * ldy + n + r] = hsum(acc[m][r]) + tail[m][r] + (bias ? bias[n + r] : 0.0f);
    }
  }
}

#include "kernels/stream_prefetch.inc"
#include "kernels/next_block_prefetch.inc"

// 8 consecutive bf16 weights as float32, in order (the k tail past the last
// 16: x's tail is in order too, see pack_x_bf16_avx2).
inline __m256 widen8(const uint16_t* w) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

// bf16 W rows widened in registers: a 32-bit lane holds the pair (w[2i], w[2i+1]);
// shifting left 16 gives w[2i] as float, masking the low half gives w[2i+1].
// A k tail of 8 or more (FineRMoE's experts have K = 152 = 9 * 16 + 8) takes
// one in-order vector step before the scalar rest.
template <int R, int MT>
void block(const float* xr, int64_t K, const uint16_t* W, int64_t n, const float* bias,
                float* y, int64_t ldy, uintptr_t pf, uintptr_t pf_end, int per_step) {
  const uint16_t* w = W + n * K;
  __m256 acc[MT][R];
  for (int m = 0; m < MT; ++m)
    for (int r = 0; r < R; ++r) acc[m][r] = _mm256_setzero_ps();
  const __m256i hi_mask = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    prefetch_step(pf, pf_end, per_step);
    for (int r = 0; r < R; ++r) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + r * K + k));
      const __m256 we = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
      const __m256 wo = _mm256_castsi256_ps(_mm256_and_si256(v, hi_mask));
      for (int m = 0; m < MT; ++m) {
        acc[m][r] = _mm256_fmadd_ps(_mm256_loadu_ps(xr + m * K + k), we, acc[m][r]);
        acc[m][r] = _mm256_fmadd_ps(_mm256_loadu_ps(xr + m * K + k + 8), wo, acc[m][r]);
      }
    }
  }
  if (k + 8 <= K) {
    for (int r = 0; r < R; ++r) {
      const __m256 wv = widen8(w + r * K + k);
      for (int m = 0; m < MT; ++m)
        acc[m][r] = _mm256_fmadd_ps(_mm256_loadu_ps(xr + m * K + k), wv, acc[m][r]);
    }
    k += 8;
  }
  float tail[MT][R] = {};
  for (; k < K; ++k)
    for (int r = 0; r < R; ++r)
      for (int m = 0; m < MT; ++m) tail[m][r] += xr[m * K + k] * widen(w[r * K + k]);
  store_sums<R, MT>(acc, tail, bias, n, y, ldy);
}

template <int R, int MT>
void block(const float* x, int64_t K, const float* W, int64_t n, const float* bias, float* y,
               int64_t ldy, uintptr_t pf, uintptr_t pf_end, int per_step) {
  const float* w = W + n * K;
  __m256 acc[MT][R];
  for (int m = 0; m < MT; ++m)
    for (int r = 0; r < R; ++r) acc[m][r] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    prefetch_step(pf, pf_end, per_step);
    for (int r = 0; r < R; ++r) {
      const __m256 wv = _mm256_loadu_ps(w + r * K + k);
      for (int m = 0; m < MT; ++m)
        acc[m][r] = _mm256_fmadd_ps(_mm256_loadu_ps(x + m * K + k), wv, acc[m][r]);
    }
  }
  if (k < K) {
    alignas(32) int lanes[8];
    for (int i = 0; i < 8; ++i) lanes[i] = i < K - k ? -1 : 0;
    const __m256i mask = _mm256_load_si256(reinterpret_cast<const __m256i*>(lanes));
    for (int r = 0; r < R; ++r) {
      const __m256 wv = _mm256_maskload_ps(w + r * K + k, mask);
      for (int m = 0; m < MT; ++m)
        acc[m][r] = _mm256_fmadd_ps(_mm256_maskload_ps(x + m * K + k, mask), wv, acc[m][r]);
    }
  }
  const float tail[MT][R] = {};
  store_sums<R, MT>(acc, tail, bias, n, y, ldy);
}

// One token (M = 1): W's rows one after another, a single sequential stream,
// with a software prefetch kStreamAhead bytes ahead. For bf16 rows the
// prefetch is chosen per CPU vendor, as measured (docs/PERFORMANCE.md): on
// AMD Zen 4 the loop already spends four instructions per 64 bytes widening
// W, and without the prefetch the model's avx2 decode went from 0.94x to
// 1.00-1.08x of llama.cpp's in the same minutes; on an Intel Xeon the
// prefetch into L2 (prefetch_line) made the one-row chain 33% faster and
// FineRMoE's routed experts at batch 16 (272 KiB matrices, one row each) 28%.
const bool kPrefetchBf16Rows = cpu_features().intel;

template <bool kPrefetch>
inline float row_dot_bf16(const float* xr, const uint16_t* w, int64_t K) {
  const uintptr_t ahead = reinterpret_cast<uintptr_t>(w) + kStreamAhead;
  const __m256i hi_mask = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
  // four accumulators: at ~20 GB/s per core two FMA chains (4-cycle latency)
  // would bound the stream
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    if constexpr (kPrefetch) prefetch_line(ahead + k * 2);
    const __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k));
    const __m256i v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k + 16));
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(xr + k), _mm256_castsi256_ps(_mm256_slli_epi32(v0, 16)), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(xr + k + 8), _mm256_castsi256_ps(_mm256_and_si256(v0, hi_mask)),
                         a1);
    a2 = _mm256_fmadd_ps(_mm256_loadu_ps(xr + k + 16), _mm256_castsi256_ps(_mm256_slli_epi32(v1, 16)),
                         a2);
    a3 = _mm256_fmadd_ps(_mm256_loadu_ps(xr + k + 24), _mm256_castsi256_ps(_mm256_and_si256(v1, hi_mask)),
                         a3);
  }
  a0 = _mm256_add_ps(a0, a2);
  a1 = _mm256_add_ps(a1, a3);
  for (; k + 16 <= K; k += 16) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k));
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(xr + k), _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(xr + k + 8), _mm256_castsi256_ps(_mm256_and_si256(v, hi_mask)),
                         a1);
  }
  if (k + 8 <= K) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(xr + k), widen8(w + k), a0);
    k += 8;
  }
  float tail = 0.0f;
  for (; k < K; ++k) tail += xr[k] * widen(w[k]);
  return hsum(_mm256_add_ps(a0, a1)) + tail;
}

inline float row_dot_f32(const float* x, const float* w, int64_t K) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  const uintptr_t ahead = reinterpret_cast<uintptr_t>(w) + kStreamAhead;
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    prefetch_line(ahead + k * 4);
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), _mm256_loadu_ps(w + k), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 8), _mm256_loadu_ps(w + k + 8), a1);
  }
  float tail = 0.0f;
  for (; k < K; ++k) tail += x[k] * w[k];
  return hsum(_mm256_add_ps(a0, a1)) + tail;
}

// x tiled by 2 rows: 8 accumulators + W temporaries fit the 16 ymm registers;
// the next block of W is prefetched meanwhile (next_block_prefetch.inc).
template <int R, class Wt>
void rows(const float* x, int64_t M, int64_t K, const Wt* W, int64_t n, const float* bias,
          float* y, int64_t ldy) {
  constexpr int64_t kStepK = sizeof(Wt) == 2 ? 16 : 8;  // block's k step
  const Wt* next = W + (n + R) * K;
  const int64_t bytes = R * K * int64_t(sizeof(Wt)), tiles = (M + 1) / 2, steps = K / kStepK;
  int64_t m = 0;
  for (; m + 2 <= M; m += 2) {
    const PrefetchShare pf = next_block_share(next, bytes, m / 2, tiles, steps);
    block<R, 2>(x + m * K, K, W, n, bias, y + m * ldy, ldy, pf.begin, pf.end, pf.per_step);
  }
  if (m < M) {
    const PrefetchShare pf = next_block_share(next, bytes, m / 2, tiles, steps);
    block<R, 1>(x + m * K, K, W, n, bias, y + m * ldy, ldy, pf.begin, pf.end, pf.per_step);
  }
}

// ---- the tiled GEMM (gemm_f32_impl.inc) on ymm registers ----
using Vec = __m256;
constexpr int kLanes = 8;
constexpr int kTileRows = 6;  // 12 sums + 2 panel vectors + 1 broadcast of 16 ymm
constexpr int64_t kKc = 256;  // 256 x 16 floats = 16 KiB of panel per k block
inline Vec vzero() { return _mm256_setzero_ps(); }
inline Vec vload(const float* p) { return _mm256_loadu_ps(p); }
inline void vstore(float* p, Vec v) { _mm256_storeu_ps(p, v); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
inline Vec vbcast(float s) { return _mm256_set1_ps(s); }
inline Vec load_widened(const float* p) { return _mm256_loadu_ps(p); }
inline Vec load_widened(const uint16_t* p) { return widen8(p); }

inline Vec load_widened(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
inline Vec vunpacklo(Vec a, Vec b) { return _mm256_unpacklo_ps(a, b); }
inline Vec vunpackhi(Vec a, Vec b) { return _mm256_unpackhi_ps(a, b); }
inline Vec vshuffle_lo(Vec a, Vec b) { return _mm256_shuffle_ps(a, b, 0x44); }
inline Vec vshuffle_hi(Vec a, Vec b) { return _mm256_shuffle_ps(a, b, 0xee); }
// u[j] / u[4 + j] hold rows 0..3 / 4..7: column j from their low halves, 4 + j from their high ones
inline void permute_lanes(const Vec (&u)[8], Vec (&r)[8]) {
  for (int j = 0; j < 4; ++j) {
    r[j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x20);
    r[4 + j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x31);
  }
}

#include "kernels/gemm_f32_impl.inc"

}  // namespace

const GemmF32& gemm_f32_avx2() {
  static constexpr GemmF32 kGemm{kPanel, &gemm_run, &gemm_run_int8};
  return kGemm;
}

void pack_x_bf16_avx2(const float* x, int64_t M, int64_t K, float* xr) {
  for (int64_t m = 0; m < M; ++m) {
    const float* in = x + m * K;
    float* out = xr + m * K;
    int64_t k = 0;
    for (; k + 16 <= K; k += 16)
      for (int i = 0; i < 8; ++i) {
        out[k + i] = bf16_to_float(float_to_bf16(in[k + 2 * i]));
        out[k + 8 + i] = bf16_to_float(float_to_bf16(in[k + 2 * i + 1]));
      }
    for (; k < K; ++k) out[k] = bf16_to_float(float_to_bf16(in[k]));
  }
}

void linear_bf16_rows_avx2(const float* xr, int64_t M, int64_t K, const uint16_t* W, int64_t n0,
                           int64_t n1, const float* bias, float* y, int64_t ldy) {
  if (M == 1) {
    for (int64_t n = n0; n < n1; ++n)
      y[n] = (kPrefetchBf16Rows ? row_dot_bf16<true>(xr, W + n * K, K)
                                : row_dot_bf16<false>(xr, W + n * K, K)) +
             (bias ? bias[n] : 0.0f);
    return;
  }
  int64_t n = n0;
  for (; n + kRows <= n1; n += kRows) rows<kRows>(xr, M, K, W, n, bias, y, ldy);
  for (; n < n1; ++n) rows<1>(xr, M, K, W, n, bias, y, ldy);
}

void linear_f32_rows_avx2(const float* x, int64_t M, int64_t K, const float* W, int64_t n0,
                          int64_t n1, const float* bias, float* y, int64_t ldy) {
  if (M == 1) {
    for (int64_t n = n0; n < n1; ++n) y[n] = row_dot_f32(x, W + n * K, K) + (bias ? bias[n] : 0.0f);
    return;
  }
  int64_t n = n0;
  for (; n + kRows <= n1; n += kRows) rows<kRows>(x, M, K, W, n, bias, y, ldy);
  for (; n < n1; ++n) rows<1>(x, M, K, W, n, bias, y, ldy);
}

}  // namespace finmoe::kernels
