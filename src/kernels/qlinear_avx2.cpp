// int8-weight kernels on AVX2 (compiled with -mavx2 -mfma -mf16c): only
// called after best_isa() said the CPU runs them. One block of 32 weights is
// one ymm: vpsignb moves x's signs onto W, vpmaddubsw multiplies |x| (u8)
// by them into int16 pairs (|sum| <= 2 * 127 * 127, no saturation),
// vpmaddwd adds pairs into 8 int32 lanes, one FMA scales them into float32.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernels/cpu_features.h"
#include "kernels/linear_isa.h"
#include "kernels/qlinear_isa.h"

namespace finmoe::kernels {
namespace {

#include "kernels/stream_prefetch.inc"

inline float hsum(__m256 a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float scale1(const float* s, int64_t i) { return s[i]; }
inline float scale1(const uint16_t* s, int64_t i) { return bf16_to_float(s[i]); }

// 8 int32 lanes: Σ over 4 bytes of q·w.
inline __m256i dot4(__m256i w, __m256i q) {
  const __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(w, q));
  return _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
}

// y[m0 .. m0+MT) at column n. One row of W streams once for the MT records;
// a single record alternates two accumulators to hide the FMA latency.
// Software prefetch into L2 only, as on AVX-512 (qlinear_avx512_impl.inc):
// on Intel the int8 chain went from 27.1 to 38.3 tokens/s (group of 32: 19.2
// to 31.5); into L1 it measured slower than the hardware prefetchers alone.
template <int MT, bool kGroup, class S>
void block_rows(const Q8Args& a, const S* scale, int64_t per_row, int64_t n, int64_t m0) {
  constexpr int C = MT == 1 ? 2 : 1;
  const int64_t K = a.K;
  const int8_t* w = a.W + n * K;
  Q8Record r[MT];
  for (int m = 0; m < MT; ++m) r[m] = q8_record(a, m0 + m);
  __m256 acc[C][MT];
  for (int c = 0; c < C; ++c)
    for (int m = 0; m < MT; ++m) acc[c][m] = _mm256_setzero_ps();
  const auto block = [&](int64_t b, __m256i wv, __m256(&sums)[MT]) {
    const float sw = kGroup ? scale1(scale, n * per_row + b) : 1.0f;
    for (int m = 0; m < MT; ++m) {
      const __m256i p = dot4(wv, _mm256_load_si256(reinterpret_cast<const __m256i*>(r[m].q + 32 * b)));
      const __m256 s = _mm256_set1_ps(kGroup ? r[m].d[b] * sw : r[m].d[b]);
      sums[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), s, sums[m]);
    }
  };
  const auto load = [&](int64_t b) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 32 * b));
  };
  const int64_t full = K / 32;
  int64_t b = 0;
  const uintptr_t ahead = reinterpret_cast<uintptr_t>(w) + kStreamAhead;
  for (; b + C <= full; b += C) {
    if (kPrefetchToL2 && b % 2 == 0) prefetch_line(ahead + uintptr_t(32 * b));  // a line per 64 bytes
    block(b, load(b), acc[0]);
    if constexpr (C == 2) block(b + 1, load(b + 1), acc[C - 1]);
  }
  for (; b < full; ++b) block(b, load(b), acc[0]);
  if (full * 32 < K) {  // the last partial block: W copied so nothing past the row is read
    alignas(32) int8_t tail[32] = {};
    std::memcpy(tail, w + full * 32, size_t(K - full * 32));
    block(full, _mm256_load_si256(reinterpret_cast<const __m256i*>(tail)), acc[0]);
  }
  for (int m = 0; m < MT; ++m) {
    float v = hsum(C == 2 ? _mm256_add_ps(acc[0][m], acc[C - 1][m]) : acc[0][m]);
    if (!kGroup) v *= scale1(scale, n);
    a.y[(m0 + m) * a.ldy + n] = v + (a.bias ? a.bias[n] : 0.0f);
  }
}

template <bool kGroup, class S>
void rows(const Q8Args& a, int64_t n0, int64_t n1) {
  const S* scale = static_cast<const S*>(a.scale);
  const int64_t per_row = int8_scales_per_row(a.f, a.K);
  for (int64_t n = n0; n < n1; ++n)
    for (int64_t m = 0; m < a.M; m += 4) {
      switch (a.M - m < 4 ? a.M - m : 4) {
        case 4: block_rows<4, kGroup>(a, scale, per_row, n, m); break;
        case 3: block_rows<3, kGroup>(a, scale, per_row, n, m); break;
        case 2: block_rows<2, kGroup>(a, scale, per_row, n, m); break;
        default: block_rows<1, kGroup>(a, scale, per_row, n, m); break;
      }
    }
}

// 32 floats of one block, zero past K.
inline void load_block(ElemType x_t, const void* x, int64_t K, int64_t k0, __m256 (&v)[4]) {
  if (k0 + 32 <= K) {
    for (int i = 0; i < 4; ++i) {
      if (x_t == ElemType::kF32) {
        v[i] = _mm256_loadu_ps(static_cast<const float*>(x) + k0 + 8 * i);
      } else {
        const __m128i h =
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(x) + k0 + 8 * i));
        v[i] = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
      }
    }
    return;
  }
  alignas(32) float tmp[32] = {};
  for (int64_t k = k0; k < K; ++k)
    tmp[k - k0] = x_t == ElemType::kF32 ? static_cast<const float*>(x)[k]
                                        : bf16_to_float(static_cast<const uint16_t*>(x)[k]);
  for (int i = 0; i < 4; ++i) v[i] = _mm256_load_ps(tmp + 8 * i);
}

}  // namespace

void quantize_x_q8_avx2(ElemType x_t, const void* x, int64_t K, uint8_t* rec) {
  const int64_t Kp = q8_padded(K);
  const Q8Record r = q8_record(rec, K);
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  for (int64_t b = 0; b < Kp / 32; ++b) {
    __m256 v[4];
    load_block(x_t, x, K, 32 * b, v);
    __m256 mx = _mm256_and_ps(v[0], abs_mask);
    for (int i = 1; i < 4; ++i) mx = _mm256_max_ps(mx, _mm256_and_ps(v[i], abs_mask));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float amax = _mm_cvtss_f32(m4);
    const float d = amax / 127.0f, inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    const __m256 vinv = _mm256_set1_ps(inv);
    __m256i i32[4];
    for (int i = 0; i < 4; ++i) i32[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], vinv));
    // packs work per 128-bit lane: bytes come out as 4-value chunks
    // [v0 0-3, v1 0-3, v2 0-3, v3 0-3 | v0 4-7, ...]; the permute restores order
    const __m256i p16a = _mm256_packs_epi32(i32[0], i32[1]);
    const __m256i p16b = _mm256_packs_epi32(i32[2], i32[3]);
    __m256i q = _mm256_packs_epi16(p16a, p16b);
    q = _mm256_permutevar8x32_epi32(q, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    q = _mm256_max_epi8(q, _mm256_set1_epi8(-127));
    _mm256_store_si256(reinterpret_cast<__m256i*>(r.q + 32 * b), q);
    const __m256i sums = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), q),
                                           _mm256_set1_epi16(1));
    _mm256_store_si256(reinterpret_cast<__m256i*>(r.bias + 8 * b),
                       _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(sums, 7)));
    _mm256_store_ps(r.lane_d + 8 * b, _mm256_set1_ps(d));
    r.d[b] = d;
  }
}

void q8_rows_avx2(const Q8Args& a, int64_t n0, int64_t n1) {
  const bool f32 = a.f.scale_t == ElemType::kF32;
  if (a.f.group)
    return f32 ? rows<true, float>(a, n0, n1) : rows<true, uint16_t>(a, n0, n1);
  f32 ? rows<false, float>(a, n0, n1) : rows<false, uint16_t>(a, n0, n1);
}

}  // namespace finmoe::kernels
