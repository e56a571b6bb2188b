// Tiled bf16 GEMM for prefill-sized M (compiled with -mavx512{f,bw,vl,dq,bf16,vnni}; only
// called on the avx512_bf16 path).
//
// y[M, n0:n1) = xb[M, K] · W[n0:n1, K]ᵀ (+ bias). W is repacked per panel of
// 32 output columns into K/2 pairs x 32 columns x 2 (the operand layout of
// vdpbf16ps: each lane multiplies one column's pair of k values), which
// stays in L2 while every 12-row tile of x streams past it. A tile keeps
// 12 x 32 float32 sums in 24 zmm registers; per k pair it loads 2 vectors of
// W and broadcasts one pair of x per row (24 vdpbf16ps for 14 loads).
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "kernels/linear_isa.h"

namespace finmoe::kernels {
namespace {

constexpr int kPanel = 32;  // output columns per packed panel (2 zmm of float32 sums)
constexpr int kTile = 12;   // rows of x per register tile

inline __m512bh as_bh(__m512i v) { return (__m512bh)v; }

// packed[p][c][0..1] = W[n0 + c][2p .. 2p+1], zero past K and past n1.
// W comes from memory: 16 pairs (one cache line) of all 32 rows are loaded
// together so their misses overlap, then transposed through an L1 buffer.
// load(row, p0, np): np <= 16 pairs of W's row from pair p0 as bf16 (zeros
// after them); last(row): the row's last element of an odd K.
template <class Load, class Last>
void pack_panel(const Load& load, const Last& last, int64_t K, int64_t n0, int64_t n1,
                uint16_t* packed) {
  const int64_t pairs = (K + 1) / 2, full = K / 2;
  const int64_t cols = n1 - n0;
  uint32_t* out = reinterpret_cast<uint32_t*>(packed);
  alignas(64) uint32_t tmp[kPanel][16];
  for (int64_t p0 = 0; p0 < full; p0 += 16) {
    const int64_t np = full - p0 < 16 ? full - p0 : 16;
    for (int64_t c = 0; c < kPanel; ++c)
      _mm512_store_si512(tmp[c], c < cols ? load(n0 + c, p0, np) : _mm512_setzero_si512());
    for (int64_t j = 0; j < np; ++j)
      for (int64_t c = 0; c < kPanel; ++c) out[(p0 + j) * kPanel + c] = tmp[c][j];
  }
  if (full < pairs)  // odd K: (last, 0)
    for (int64_t c = 0; c < kPanel; ++c) out[full * kPanel + c] = c < cols ? last(n0 + c) : 0;
}

// Rows [0, MT) of a tile against one packed panel.
template <int MT>
inline void tile(const uint16_t* xb, int64_t ldx, int64_t pairs, const uint16_t* packed,
                 const float* bias, float* y, uint16_t* yb, int64_t ldy, int64_t cols) {
  __m512 acc[MT][2];
  for (int r = 0; r < MT; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  const uint32_t* x32 = reinterpret_cast<const uint32_t*>(xb);
  const int64_t ldx32 = ldx / 2;
  for (int64_t p = 0; p < pairs; ++p) {
    const __m512bh b0 = as_bh(_mm512_load_si512(packed + p * 2 * kPanel));
    const __m512bh b1 = as_bh(_mm512_load_si512(packed + p * 2 * kPanel + kPanel));
    for (int r = 0; r < MT; ++r) {
      const __m512bh a = as_bh(_mm512_set1_epi32(static_cast<int>(x32[r * ldx32 + p])));
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], a, b0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], a, b1);
    }
  }
  const __mmask16 lo = cols >= 16 ? 0xffff : static_cast<__mmask16>((1u << cols) - 1);
  const __mmask16 hi = cols >= 32 ? 0xffff : cols <= 16 ? 0 : static_cast<__mmask16>((1u << (cols - 16)) - 1);
  const __m512 bias0 = bias ? _mm512_maskz_loadu_ps(lo, bias) : _mm512_setzero_ps();
  const __m512 bias1 = bias ? _mm512_maskz_loadu_ps(hi, bias + 16) : _mm512_setzero_ps();
  if (y != nullptr) {
    for (int r = 0; r < MT; ++r) {
      _mm512_mask_storeu_ps(y + r * ldy, lo, _mm512_add_ps(acc[r][0], bias0));
      _mm512_mask_storeu_ps(y + r * ldy + 16, hi, _mm512_add_ps(acc[r][1], bias1));
    }
    return;
  }
  for (int r = 0; r < MT; ++r) {
    const __m256i v0 = (__m256i)_mm512_cvtneps_pbh(_mm512_add_ps(acc[r][0], bias0));
    const __m256i v1 = (__m256i)_mm512_cvtneps_pbh(_mm512_add_ps(acc[r][1], bias1));
    _mm256_mask_storeu_epi16(yb + r * ldy, lo, v0);
    _mm256_mask_storeu_epi16(yb + r * ldy + 16, hi, v1);
  }
}

template <int MT>
void tiles_of(const uint16_t* xb, int64_t ldx, int64_t pairs, const uint16_t* packed,
              const float* bias, float* y, uint16_t* yb, int64_t ldy, int64_t cols) {
  tile<MT>(xb, ldx, pairs, packed, bias, y, yb, ldy, cols);
}

using TileFn = void (*)(const uint16_t*, int64_t, int64_t, const uint16_t*, const float*, float*,
                        uint16_t*, int64_t, int64_t);
constexpr TileFn kTail[kTile + 1] = {nullptr,      &tiles_of<1>, &tiles_of<2>,  &tiles_of<3>,
                                     &tiles_of<4>, &tiles_of<5>, &tiles_of<6>,  &tiles_of<7>,
                                     &tiles_of<8>, &tiles_of<9>, &tiles_of<10>, &tiles_of<11>,
                                     &tiles_of<12>};

// The panels of columns [n0, n1): pack(n, n_end) fills `packed` for [n, n_end).
template <class Pack>
void gemm_panels(const uint16_t* xb, int64_t M, int64_t K, int64_t ldx, int64_t n0, int64_t n1,
                 const float* bias, float* y, uint16_t* yb, int64_t ldy, uint16_t* packed,
                 const Pack& pack) {
  const int64_t pairs = (K + 1) / 2;
  for (int64_t n = n0; n < n1; n += kPanel) {
    const int64_t cols = n1 - n < kPanel ? n1 - n : kPanel;
    pack(n, n + cols);
    const float* b = bias ? bias + n : nullptr;
    float* yn = y ? y + n : nullptr;
    uint16_t* ybn = y ? nullptr : yb + n;
    int64_t m = 0;
    for (; m + kTile <= M; m += kTile)
      tile<kTile>(xb + m * ldx, ldx, pairs, packed, b, yn ? yn + m * ldy : nullptr,
                  ybn ? ybn + m * ldy : nullptr, ldy, cols);
    if (m < M)
      kTail[M - m](xb + m * ldx, ldx, pairs, packed, b, yn ? yn + m * ldy : nullptr,
                   ybn ? ybn + m * ldy : nullptr, ldy, cols);
  }
}

inline float scale_of(const void* scale, ElemType t, int64_t i) {
  if (t == ElemType::kF32) return static_cast<const float*>(scale)[i];
  const uint32_t u = uint32_t{static_cast<const uint16_t*>(scale)[i]} << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace

int64_t gemm_pack_elems_avx512bf16(int64_t K) { return (K + 1) / 2 * 2 * kPanel; }

void gemm_bf16_avx512bf16(const uint16_t* xb, int64_t M, int64_t K, int64_t ldx, const uint16_t* W,
                          int64_t n0, int64_t n1, const float* bias, float* y, uint16_t* yb,
                          int64_t ldy, uint16_t* packed) {
  const auto load = [&](int64_t row, int64_t p0, int64_t np) {
    const uint16_t* w = W + row * K + 2 * p0;
    if (np == 16) return _mm512_loadu_si512(w);
    return _mm512_maskz_loadu_epi32(static_cast<__mmask16>((1u << np) - 1), w);
  };
  const auto last = [&](int64_t row) -> uint32_t { return W[row * K + K - 1]; };
  gemm_panels(xb, M, K, ldx, n0, n1, bias, y, yb, ldy, packed, [&](int64_t n, int64_t n_end) {
    pack_panel(load, last, K, n, n_end, packed);
  });
}

void gemm_int8_avx512bf16(const uint16_t* xb, int64_t M, int64_t K, int64_t ldx, const int8_t* W,
                          const void* scale, const Int8Format& f, int64_t n0, int64_t n1,
                          const float* bias, float* y, uint16_t* yb, int64_t ldy,
                          uint16_t* packed) {
  const int64_t per_row = int8_scales_per_row(f, K);
  // pairs from p0 (a multiple of 16): 32 weights from k = 2 p0, within one group of 32
  const auto s = [&](int64_t row, int64_t k) {
    return scale_of(scale, f.scale_t, row * per_row + (f.group ? k / f.group : 0));
  };
  const auto load = [&](int64_t row, int64_t p0, int64_t np) {
    const __mmask32 mask = np == 16 ? ~__mmask32{0} : (__mmask32{1} << (2 * np)) - 1;
    const __m256i q = _mm256_maskz_loadu_epi8(mask, W + row * K + 2 * p0);
    const __m512 sv = _mm512_set1_ps(s(row, 2 * p0));
    const __m512 lo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(q))), sv);
    const __m512 hi = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(q, 1))), sv);
    return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);  // round to nearest even
  };
  const auto last = [&](int64_t row) -> uint32_t {
    return float_to_bf16(s(row, K - 1) * float(W[row * K + K - 1]));
  };
  gemm_panels(xb, M, K, ldx, n0, n1, bias, y, yb, ldy, packed, [&](int64_t n, int64_t n_end) {
    pack_panel(load, last, K, n, n_end, packed);
  });
}

}  // namespace finmoe::kernels
