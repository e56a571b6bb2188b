// Tiled bf16 GEMM for prefill-sized M (compiled with -mavx512{f,bw,vl,dq,bf16,vnni}
// and -mamx-{tile,bf16}; only called on the avx512_bf16 path, the AMX tiles
// only where cpu_features().amx_bf16).
//
// y[M, n0:n1) = xb[M, K] · W[n0:n1, K]ᵀ (+ bias). W is repacked per panel of
// 32 output columns into K/2 pairs x 32 columns x 2 (the operand layout of
// vdpbf16ps: each lane multiplies one column's pair of k values), which
// stays in L2 while every 12-row tile of x streams past it. A tile keeps
// 12 x 32 float32 sums in 24 zmm registers; per k pair it loads 2 vectors of
// W and broadcasts one pair of x per row (24 vdpbf16ps for 14 loads).
//
// On CPUs with AMX (amx_bf16, also compiled with -mamx-tile -mamx-bf16) the
// same packed panel is the B operand of tdpbf16ps as it stands: a tile row is
// one k pair of 16 columns, and a panel row holds the pair for 32 columns, so
// the two halves of the panel are two tiles with a 128-byte stride. x, rows
// padded to 32 with zeros, is the A operand as it stands. 32 rows of x at a
// time keep 2 x 2 tiles of 16 x 16 float32 sums; rows left over (fewer than
// 16) take the vector tiles above.
//
// Fewer rows than the GEMM's (batched decode, a prefill's routed experts)
// run on AMX too, from linear.cpp's few-row scheduler (linear_bf16_rows_amx):
// W is not packed at all. Its rows, 32 at a time, are the A operand in place,
// x packed once per product is the B operand, and the sums come out
// transposed. The tiles then stream W at about the same cost for 1 to 16
// rows of x, where the vector kernels are compute-bound from about 5.
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "kernels/linear_isa.h"

namespace finmoe::kernels {
namespace {

constexpr int kPanel = 32;  // output columns per packed panel (2 zmm of float32 sums)
constexpr int kTile = 12;   // rows of x per register tile
inline __m512bh as_bh(__m512i v) { return (__m512bh)v; }

// Pairs of k a packed panel holds: K rounded up to 32 (a whole AMX tile of
// k), those past K zero.
inline int64_t packed_pairs(int64_t K) { return (K + 31) / 32 * 16; }

// r[i][j] becomes r[j][i] (16 x 16 32-bit elements): pairs of rows
// interleaved by 32 and 64 bits within each 128-bit lane, then the lanes of
// four rows gathered.
inline void transpose16(__m512i (&r)[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  // u[4i + e], lane l: element 4l + e of rows 4i .. 4i+3
  __m512i u[16];
  for (int i = 0; i < 16; i += 4) {
    u[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    u[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    u[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    u[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int e = 0; e < 4; ++e) {
    const __m512i a = _mm512_shuffle_i32x4(u[e], u[4 + e], 0x88);  // lanes 0, 2
    const __m512i b = _mm512_shuffle_i32x4(u[e], u[4 + e], 0xdd);  // lanes 1, 3
    const __m512i c = _mm512_shuffle_i32x4(u[8 + e], u[12 + e], 0x88);
    const __m512i d = _mm512_shuffle_i32x4(u[8 + e], u[12 + e], 0xdd);
    r[e] = _mm512_shuffle_i32x4(a, c, 0x88);
    r[8 + e] = _mm512_shuffle_i32x4(a, c, 0xdd);
    r[4 + e] = _mm512_shuffle_i32x4(b, d, 0x88);
    r[12 + e] = _mm512_shuffle_i32x4(b, d, 0xdd);
  }
}

// packed[p][c][0..1] = W[n0 + c][2p .. 2p+1], zero past K and past n1.
// W comes from memory: 16 pairs (one cache line) of all 32 rows are loaded
// together so their misses overlap, then transposed through an L1 buffer, 16
// rows at a time in registers.
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
    for (int64_t half = 0; half < kPanel; half += 16) {
      __m512i r[16];
      for (int64_t c = 0; c < 16; ++c) r[c] = _mm512_load_si512(tmp[half + c]);
      transpose16(r);
      // rows p0 + np .. p0 + 15 (zeros) lie within packed_pairs(K); the odd
      // pair and the padding below write them again
      for (int64_t j = 0; j < 16; ++j) _mm512_store_si512(out + (p0 + j) * kPanel + half, r[j]);
    }
  }
  if (full < pairs)  // odd K: (last, 0)
    for (int64_t c = 0; c < kPanel; ++c) out[full * kPanel + c] = c < cols ? last(n0 + c) : 0;
  std::memset(out + pairs * kPanel, 0, size_t(packed_pairs(K) - pairs) * kPanel * 4);
}

// Where a panel's sums go: float32 y or, when y is null, bf16 yb, [rows, ldy],
// columns [0, cols) of the panel, plus the bias when there is one.
struct PanelOut {
  const float* bias;
  float* y;
  uint16_t* yb;
  int64_t ldy;
  int64_t cols;

  // The panel of `cols` columns from column n of the whole product's output.
  static PanelOut at(const float* bias, float* y, uint16_t* yb, int64_t ldy, int64_t n,
                     int64_t cols) {
    return {bias ? bias + n : nullptr, y ? y + n : nullptr, y ? nullptr : yb + n, ldy, cols};
  }
  // The same panel from row m on.
  PanelOut from_row(int64_t m) const {
    return {bias, y ? y + m * ldy : nullptr, yb ? yb + m * ldy : nullptr, ldy, cols};
  }
};

// Row r's 32 sums (s0: columns 0-15, s1: 16-31) stored.
inline void store_row(const PanelOut& o, int64_t r, __m512 s0, __m512 s1) {
  const __mmask16 lo = o.cols >= 16 ? 0xffff : static_cast<__mmask16>((1u << o.cols) - 1);
  const __mmask16 hi = o.cols >= 32   ? 0xffff
                       : o.cols <= 16 ? 0
                                      : static_cast<__mmask16>((1u << (o.cols - 16)) - 1);
  if (o.bias) {
    s0 = _mm512_add_ps(s0, _mm512_maskz_loadu_ps(lo, o.bias));
    s1 = _mm512_add_ps(s1, _mm512_maskz_loadu_ps(hi, o.bias + 16));
  }
  if (o.y != nullptr) {
    _mm512_mask_storeu_ps(o.y + r * o.ldy, lo, s0);
    _mm512_mask_storeu_ps(o.y + r * o.ldy + 16, hi, s1);
    return;
  }
  _mm256_mask_storeu_epi16(o.yb + r * o.ldy, lo, (__m256i)_mm512_cvtneps_pbh(s0));
  _mm256_mask_storeu_epi16(o.yb + r * o.ldy + 16, hi, (__m256i)_mm512_cvtneps_pbh(s1));
}

// Rows [0, MT) of a tile against one packed panel.
template <int MT>
inline void tile(const uint16_t* xb, int64_t ldx, int64_t pairs, const uint16_t* packed,
                 const PanelOut& o) {
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
  for (int r = 0; r < MT; ++r) store_row(o, r, acc[r][0], acc[r][1]);
}

template <int MT>
void tiles_of(const uint16_t* xb, int64_t ldx, int64_t pairs, const uint16_t* packed,
              const PanelOut& o) {
  tile<MT>(xb, ldx, pairs, packed, o);
}

using TileFn = void (*)(const uint16_t*, int64_t, int64_t, const uint16_t*, const PanelOut&);
constexpr TileFn kTail[kTile + 1] = {nullptr,      &tiles_of<1>, &tiles_of<2>,  &tiles_of<3>,
                                     &tiles_of<4>, &tiles_of<5>, &tiles_of<6>,  &tiles_of<7>,
                                     &tiles_of<8>, &tiles_of<9>, &tiles_of<10>, &tiles_of<11>,
                                     &tiles_of<12>};

// AMX tile registers: 0-3 sums (rows 0-15 | 16-31 of x) x (columns 0-15 |
// 16-31 of the panel), 4-5 x, 6-7 the panel's halves. Every tile is 16 rows
// of 64 bytes.
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// GCC 12's tile loads and stores are asm statements that name no memory, so
// the compiler may move plain stores of a buffer after the tile load that
// reads it, or plain loads of a buffer before the tile store that writes it.
// This barrier (no instruction) sits between them.
inline void tile_memory_barrier() { asm volatile("" ::: "memory"); }

inline void load_tile_config(const TileConfig& c) {
  // ldtilecfg written out: GCC 12 does not see _tile_loadconfig read the
  // whole struct and dropped the stores of colsb (a #GP at run time)
  asm volatile("ldtilecfg %0" : : "m"(c));
}

// 16 x Blocks rows of x (Blocks 1 or 2) against one packed panel, over
// `pairs` k pairs (a multiple of 16), stored with o.
template <int Blocks>
void amx_rows(const uint16_t* xb, int64_t ldx, int64_t pairs, const uint16_t* packed,
              const PanelOut& o) {
  constexpr int64_t kPairRow = 2 * kPanel * 2;  // bytes of one k pair of the panel
  const int64_t ldx_bytes = ldx * 2;
  tile_memory_barrier();  // the panel and x written before
  _tile_zero(0);
  _tile_zero(1);
  if constexpr (Blocks == 2) {
    _tile_zero(2);
    _tile_zero(3);
  }
  for (int64_t p = 0; p < pairs; p += 16) {
    const uint16_t* b = packed + p * 2 * kPanel;
    _tile_loadd(6, b, kPairRow);
    _tile_loadd(7, b + kPanel, kPairRow);
    _tile_loadd(4, xb + 2 * p, ldx_bytes);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    if constexpr (Blocks == 2) {
      _tile_loadd(5, xb + 16 * ldx + 2 * p, ldx_bytes);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
  }
  alignas(64) float sums[32][kPanel];
  _tile_stored(0, &sums[0][0], kPanel * 4);
  _tile_stored(1, &sums[0][16], kPanel * 4);
  if constexpr (Blocks == 2) {
    _tile_stored(2, &sums[16][0], kPanel * 4);
    _tile_stored(3, &sums[16][16], kPanel * 4);
  }
  tile_memory_barrier();
  for (int r = 0; r < 16 * Blocks; ++r)
    store_row(o, r, _mm512_load_ps(&sums[r][0]), _mm512_load_ps(&sums[r][16]));
}

// Steps ahead (of 32 k each) that amx_few prefetches W. A tile register is
// not renamed, so a step's load of W waits for the previous step's product
// with that register, which waits for its own load: without prefetching,
// one or two tiles of W (16-32 lines) are in flight at a time, and a block's
// rows are streams too short for the hardware prefetchers (28 lines a row
// at K = 896). Each step brings into L1 the lines of every row of its block
// this many steps ahead, and in a block's last steps the first lines of the
// rows after it. Measured with bench_kernels rows-amx (alternating runs in
// one process, 6-24 rows of x, docs/PERFORMANCE.md): the routed experts'
// gate [152, 896] and down [448, 152] products and the dense gate_proj
// [4864, 896] 1.04-1.35x faster at 2-8 steps ahead; the next block's lines
// in address order 0.98-1.25x; into L2 or L3 0.89-1.06x of into L1; the
// [896, 4864] down projection, whose rows are long, unchanged.
constexpr int64_t kAmxAheadSteps = 4;

inline void prefetch_l1(uintptr_t p) {
  _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T0);
}

// 16 x Blocks rows of W from w (rows of K), read in place, against the XB
// 16-row blocks of xv (amx_rows_pack_x; x's rows [0, M), M <= 16 XB): tiles
// 0-3 the sums (W block b, x block h as 2b + h), 4-5 W, 6-7 x; the sums,
// transposed, become rows [0, M) of o. The last K % 32 columns of W are
// copied into a zero-padded tile first: a tile row is 64 bytes, and W's row
// may end before them (or the matrix, at its last row). `ahead`: W's rows
// come from memory, so each step prefetches them further on; `next_rows`
// rows of K from `next` are the rows read after these (prefetched; 0: none).
template <int Blocks, int XB>
void amx_few(const uint16_t* xv, int64_t M, int64_t K, const uint16_t* w, const PanelOut& o,
             bool ahead, const uint16_t* next, int64_t next_rows) {
  const int64_t full = K / 32 * 32, stride = K * 2;
  // addresses as integers: past the matrix's end a prefetch never faults
  const uintptr_t here = reinterpret_cast<uintptr_t>(w), after = reinterpret_cast<uintptr_t>(next);
  const int64_t x_block = (K + 31) / 32 * 32 * 16;  // elements of one 16-row block of xv
  tile_memory_barrier();  // xv and W (a copy of its last rows) written before
  _tile_zero(0);
  if constexpr (XB == 2) _tile_zero(1);
  if constexpr (Blocks == 2) _tile_zero(2);
  if constexpr (Blocks == 2 && XB == 2) _tile_zero(3);
  const auto step = [&](const uint16_t* w0, const uint16_t* w1, int64_t w_stride, int64_t k) {
    const int64_t col = k + 32 * kAmxAheadSteps;
    if (col < K) {
      if (ahead)
        for (int64_t r = 0; r < 16 * Blocks; ++r) prefetch_l1(here + uintptr_t((r * K + col) * 2));
    } else {
      for (int64_t r = 0; r < next_rows; ++r) prefetch_l1(after + uintptr_t((r * K + col - K) * 2));
    }
    _tile_loadd(6, xv + k * 16, 64);
    if constexpr (XB == 2) _tile_loadd(7, xv + x_block + k * 16, 64);
    _tile_loadd(4, w0, w_stride);
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (XB == 2) _tile_dpbf16ps(1, 4, 7);
    if constexpr (Blocks == 2) {
      _tile_loadd(5, w1, w_stride);
      _tile_dpbf16ps(2, 5, 6);
      if constexpr (XB == 2) _tile_dpbf16ps(3, 5, 7);
    }
  };
  for (int64_t k = 0; k < full; k += 32) step(w + k, w + 16 * K + k, stride, k);
  if (full < K) {
    alignas(64) uint16_t tail[Blocks][16][32] = {};
    for (int64_t r = 0; r < 16 * Blocks; ++r)
      std::memcpy(tail[r / 16][r % 16], w + r * K + full, size_t(K - full) * 2);
    tile_memory_barrier();
    step(&tail[0][0][0], &tail[Blocks - 1][0][0], 64, full);
  }
  alignas(64) int32_t c[4][16][16];
  _tile_stored(0, c[0], 64);
  if constexpr (XB == 2) _tile_stored(1, c[1], 64);
  if constexpr (Blocks == 2) _tile_stored(2, c[2], 64);
  if constexpr (Blocks == 2 && XB == 2) _tile_stored(3, c[3], 64);
  tile_memory_barrier();
  for (int h = 0; h < XB; ++h) {
    __m512i lo[16], hi[16];  // [row of W][row of x] -> [row of x][row of W]
    for (int i = 0; i < 16; ++i) {
      lo[i] = _mm512_load_si512(c[h][i]);
      hi[i] = Blocks == 2 ? _mm512_load_si512(c[2 + h][i]) : _mm512_setzero_si512();
    }
    transpose16(lo);
    if constexpr (Blocks == 2) transpose16(hi);
    for (int64_t i = 0; i < 16 && 16 * h + i < M; ++i)
      store_row(o, 16 * h + i, _mm512_castsi512_ps(lo[i]), _mm512_castsi512_ps(hi[i]));
  }
}

// One block of 16 x Blocks rows of W (w, rows of K) against all M rows of
// xv, 32 at a time (the last 1-32): the block comes from memory in the first
// chunk of x and from the caches in the others; the rows after it (next,
// next_rows) are prefetched in the last.
template <int Blocks>
void amx_block(const uint16_t* xv, int64_t M, int64_t K, const uint16_t* w, const PanelOut& o,
               const uint16_t* next, int64_t next_rows) {
  const int64_t x_block = (K + 31) / 32 * 32 * 16;  // elements of one 16-row block of xv
  for (int64_t m = 0; m < M; m += 32) {
    const bool last = m + 32 >= M;
    const uint16_t* xm = xv + m / 16 * x_block;
    const int64_t rows = std::min<int64_t>(32, M - m);
    if (rows > 16)
      amx_few<Blocks, 2>(xm, rows, K, w, o.from_row(m), m == 0, last ? next : nullptr,
                         last ? next_rows : 0);
    else
      amx_few<Blocks, 1>(xm, rows, K, w, o.from_row(m), m == 0, last ? next : nullptr,
                         last ? next_rows : 0);
  }
}

// The panels of columns [n0, n1): pack(n, n_end) fills `packed` for [n, n_end).
template <class Pack>
void gemm_panels(const uint16_t* xb, int64_t M, int64_t K, int64_t ldx, int64_t n0, int64_t n1,
                 const float* bias, float* y, uint16_t* yb, int64_t ldy, uint16_t* packed,
                 bool amx, const Pack& pack) {
  const int64_t pairs = (K + 1) / 2;
  std::optional<AmxTileScope> tiles;
  if (amx && M >= 16) tiles.emplace();
  for (int64_t n = n0; n < n1; n += kPanel) {
    const int64_t cols = n1 - n < kPanel ? n1 - n : kPanel;
    pack(n, n + cols);
    const PanelOut o = PanelOut::at(bias, y, yb, ldy, n, cols);
    int64_t m = 0;
    if (tiles) {
      for (; m + 32 <= M; m += 32)
        amx_rows<2>(xb + m * ldx, ldx, packed_pairs(K), packed, o.from_row(m));
      if (m + 16 <= M) {
        amx_rows<1>(xb + m * ldx, ldx, packed_pairs(K), packed, o.from_row(m));
        m += 16;
      }
    }
    for (; m + kTile <= M; m += kTile) tile<kTile>(xb + m * ldx, ldx, pairs, packed, o.from_row(m));
    if (m < M) kTail[M - m](xb + m * ldx, ldx, pairs, packed, o.from_row(m));
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

int64_t gemm_pack_elems_avx512bf16(int64_t K) { return packed_pairs(K) * 2 * kPanel; }

void gemm_bf16_avx512bf16(const uint16_t* xb, int64_t M, int64_t K, int64_t ldx, const uint16_t* W,
                          int64_t n0, int64_t n1, const float* bias, float* y, uint16_t* yb,
                          int64_t ldy, uint16_t* packed, bool amx) {
  const auto load = [&](int64_t row, int64_t p0, int64_t np) {
    const uint16_t* w = W + row * K + 2 * p0;
    if (np == 16) return _mm512_loadu_si512(w);
    return _mm512_maskz_loadu_epi32(static_cast<__mmask16>((1u << np) - 1), w);
  };
  const auto last = [&](int64_t row) -> uint32_t { return W[row * K + K - 1]; };
  gemm_panels(xb, M, K, ldx, n0, n1, bias, y, yb, ldy, packed, amx, [&](int64_t n, int64_t n_end) {
    pack_panel(load, last, K, n, n_end, packed);
  });
}

void gemm_int8_avx512bf16(const uint16_t* xb, int64_t M, int64_t K, int64_t ldx, const int8_t* W,
                          const void* scale, const Int8Format& f, int64_t n0, int64_t n1,
                          const float* bias, float* y, uint16_t* yb, int64_t ldy,
                          uint16_t* packed, bool amx) {
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
  gemm_panels(xb, M, K, ldx, n0, n1, bias, y, yb, ldy, packed, amx, [&](int64_t n, int64_t n_end) {
    pack_panel(load, last, K, n, n_end, packed);
  });
}

AmxTileScope::AmxTileScope() {
  TileConfig c;
  for (int t = 0; t < 8; ++t) {
    c.colsb[t] = 64;
    c.rows[t] = 16;
  }
  load_tile_config(c);
}

AmxTileScope::~AmxTileScope() { _tile_release(); }

int64_t amx_rows_x_elems(int64_t M, int64_t K) { return (M + 15) / 16 * 16 * ((K + 31) / 32 * 32); }

// xv[b][p][i][0..1] = x[16 b + i][2p .. 2p+1]: 16-row blocks of pairs of k,
// rows past M zero (ldx, a multiple of 32, is zero-padded past K already).
void amx_rows_pack_x(const uint16_t* xb, int64_t M, int64_t ldx, uint16_t* xv) {
  const int64_t pairs = ldx / 2;
  const uint32_t* x32 = reinterpret_cast<const uint32_t*>(xb);
  uint32_t* out = reinterpret_cast<uint32_t*>(xv);
  for (int64_t b = 0; b * 16 < M; ++b)
    for (int64_t p0 = 0; p0 < pairs; p0 += 16) {
      __m512i r[16];
      for (int64_t i = 0; i < 16; ++i)
        r[i] = b * 16 + i < M ? _mm512_loadu_si512(x32 + (b * 16 + i) * pairs + p0)
                              : _mm512_setzero_si512();
      transpose16(r);
      for (int64_t j = 0; j < 16; ++j) _mm512_store_si512(out + (b * pairs + p0 + j) * 16, r[j]);
    }
}

void linear_bf16_rows_amx(const uint16_t* xv, int64_t M, int64_t K, const uint16_t* W, int64_t n0,
                          int64_t n1, const float* bias, float* y, int64_t ldy) {
  int64_t n = n0;
  for (; n + 32 <= n1; n += 32)
    amx_block<2>(xv, M, K, W + n * K, PanelOut::at(bias, y, nullptr, ldy, n, 32), W + (n + 32) * K,
                 std::min<int64_t>(32, n1 - n - 32));
  if (n + 16 <= n1) {
    amx_block<1>(xv, M, K, W + n * K, PanelOut::at(bias, y, nullptr, ldy, n, 16), W + (n + 16) * K,
                 std::min<int64_t>(32, n1 - n - 16));
    n += 16;
  }
  if (n == n1) return;
  // fewer than 16 rows left: the 16 rows ending with them, in place when W
  // has that many (the rows before are read again, from cache), else a copy
  // (a tile never reads past W); only the rows left are stored
  const int64_t left = n1 - n;
  thread_local std::vector<uint16_t> copy;
  thread_local std::vector<float> sums;
  const uint16_t* w16 = W + (n1 - 16) * K;
  if (n1 < 16) {
    copy.resize(size_t(16 * K));
    std::memcpy(copy.data(), W + n * K, size_t(left * K) * 2);
    w16 = copy.data();
  }
  sums.resize(size_t(M * 16));
  amx_block<1>(xv, M, K, w16, PanelOut::at(nullptr, sums.data(), nullptr, 16, 0, 16), nullptr, 0);
  const int64_t first = n1 < 16 ? 0 : 16 - left;  // the first of them in sums' columns
  for (int64_t m = 0; m < M; ++m)
    for (int64_t i = 0; i < left; ++i)
      y[m * ldy + n + i] = sums[size_t(m * 16 + first + i)] + (bias ? bias[n + i] : 0.0f);
}

}  // namespace finmoe::kernels
