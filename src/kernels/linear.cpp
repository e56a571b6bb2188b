#include "kernels/linear.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "finmoe/error.h"
#include "kernels/cpu_features.h"
#include "kernels/linear_isa.h"
#include "kernels/ops_isa.h"
#include "kernels/qlinear_isa.h"
#include "kernels/thread_pool.h"

namespace finmoe::kernels {
namespace {

// Output rows per claimed chunk: a multiple of every kernel's row block.
constexpr int64_t kGrain = 16;
// Weight bytes per claimed chunk, about: small enough that the threads finish
// together, large enough that claiming (one atomic) costs nothing.
constexpr int64_t kChunkBytes = 64 * 1024;
// kGemmMinRows (linear.h): from there a product switches from the few-row
// kernels (W streamed once, x re-read from L1 per row tile) to the tiled GEMM
// (W repacked per panel; compute-bound). bench_kernels gemm measures both.
// Output columns per panel of the avx512_bf16 GEMM (gemm_avx512bf16.cpp).
constexpr int64_t kBf16Panel = 32;
// Rows of x per GEMM task: a panel streams past at most this block of x
// (<= 10 MB at K = 4864), which stays in L3 however long the prompt; each
// block repacks the panel, so a 512-token prefill packs once.
constexpr int64_t kGemmRowBlock = 512;
// From this many rows bf16 products on AMX tiles read W in place as tiles
// (linear_bf16_rows_amx) instead of the vector few-row kernels, which slow
// down with every row from about 5 while the tiles cost about the same from
// 6 to 16 (bench_kernels rows-amx, docs/PERFORMANCE.md: with the tiles'
// prefetch, at 6 rows 1.10-1.43x the vector kernels, at 8 rows 1.28-1.71x).
constexpr int64_t kAmxFewMinRows = 6;
// From this many rows bf16 products on AMX tiles run the tiled GEMM; below
// it, from kAmxFewMinRows, they read W in place (linear_bf16_rows_amx), each
// block of W against x 32 rows at a time, the later chunks from cache. The
// GEMM packs each panel of W first, which costs more than its tiles' work up
// to about 64 rows (bench_kernels rows-amx, GEMM / in-place time on the
// FineRMoE expert and Qwen2-0.5B FFN shapes, two runs: 1.38-1.86x at 32
// rows, 1.09-1.37x at 64, 0.94-1.44x at 96, 0.84-1.34x at 128;
// docs/PERFORMANCE.md).
constexpr int64_t kAmxGemmMinRows = 96;
// Below this many weights (128 KiB of bf16) waking a worker costs more than it saves.
constexpr int64_t kMinParallelWeights = 64 * 1024;

void check_args(const char* op, const void* x, int64_t M, int64_t K, const void* W, int64_t N,
                const void* y) {
  if (M < 0 || K < 0 || N < 0)
    throw Error(std::string(op) + ": negative shape M=" + std::to_string(M) +
                " K=" + std::to_string(K) + " N=" + std::to_string(N));
  if ((M * K > 0 && x == nullptr) || (N * K > 0 && W == nullptr) || (M * N > 0 && y == nullptr))
    throw Error(std::string(op) + ": null x, W or y for a non-empty shape");
}


// Rows [lo, hi) of one thread's share not yet claimed, in one atomic word so
// that the owner (from the front) and thieves (from the back) never both
// claim a row.
class Share {
 public:
  void reset(int64_t lo, int64_t hi) { word_.store(pack(lo, hi), std::memory_order_relaxed); }
  int64_t left() const {
    const uint64_t w = word_.load(std::memory_order_relaxed);
    return int64_t(uint32_t(w)) - int64_t(w >> 32);
  }
  // Claims up to `rows` rows from the front (owner) or the back (thief) into
  // [a, b); false when the share is empty. With lo and `rows` multiples of
  // kGrain every boundary but N is one, whatever the schedule: the kernels'
  // row blocks, and so the results' rounding, do not depend on it.
  bool claim(int64_t rows, bool front, int64_t& a, int64_t& b) {
    uint64_t w = word_.load(std::memory_order_relaxed);
    for (;;) {
      const int64_t lo = int64_t(w >> 32), hi = int64_t(uint32_t(w));
      if (lo >= hi) return false;
      a = front ? lo : std::max(lo, (hi - rows) / kGrain * kGrain);
      b = front ? std::min(hi, lo + rows) : hi;
      if (word_.compare_exchange_weak(w, front ? pack(b, hi) : pack(lo, a),
                                      std::memory_order_relaxed))
        return true;
    }
  }

 private:
  static uint64_t pack(int64_t lo, int64_t hi) { return uint64_t(lo) << 32 | uint32_t(hi); }
  std::atomic<uint64_t> word_{0};
};

// Rows per claimed chunk of rows of `row_bytes` weight bytes each.
int64_t chunk_rows(int64_t row_bytes) {
  const int64_t rows = kChunkBytes / std::max<int64_t>(row_bytes, 1);
  return std::max<int64_t>(1, (rows + kGrain - 1) / kGrain) * kGrain;
}
// First row of thread t's share of [0, N) (t == threads: N).
int64_t share_start(int64_t N, int64_t t, int64_t threads) {
  return t == threads ? N : N * t / threads / kGrain * kGrain;
}

// Contiguous shares of [0, N) rows, one per thread. Each thread walks its
// own share front to back, so its weights arrive as one sequential stream
// that the prefetchers follow across chunks; a thread done with its share
// takes chunks from the back of the fullest other share (on a shared machine
// one core is often slower, and a static split would leave the other idle).
class Shares {
 public:
  Shares(int64_t N, int64_t chunk, int64_t threads) : chunk_(chunk), shares_(size_t(threads)) {
    for (int64_t t = 0; t < threads; ++t)
      shares_[size_t(t)].reset(share_start(N, t, threads), share_start(N, t + 1, threads));
  }
  // Runs rows(a, b) on chunks until no share has rows left; thread t starts with its own.
  template <class F>
  void walk(int64_t t, const F& rows) {
    int64_t a, b;
    while (shares_[size_t(t)].claim(chunk_, true, a, b)) rows(a, b);
    for (;;) {
      Share* fullest = nullptr;
      for (auto& s : shares_)
        if (s.left() > 0 && (!fullest || s.left() > fullest->left())) fullest = &s;
      if (!fullest) return;
      if (fullest->claim(chunk_, false, a, b)) rows(a, b);
    }
  }

 private:
  int64_t chunk_;
  std::vector<Share> shares_;
};

std::atomic<uint64_t>& bytes_read() {
  static std::atomic<uint64_t> bytes{0};
  return bytes;
}

// Per-thread scratch for the converted activations, grown as needed, 64-byte
// aligned; `Slot` tells apart buffers of one call.
template <class T, int Slot = 0>
T* scratch(size_t count) {
  struct Free {
    void operator()(void* p) const { std::free(p); }
  };
  thread_local std::unique_ptr<T, Free> buf;
  thread_local size_t capacity = 0;
  if (count > capacity) {
    const size_t bytes = (count * sizeof(T) + 63) / 64 * 64;
    buf.reset(static_cast<T*>(std::aligned_alloc(64, bytes)));
    if (!buf) throw Error("kernels: out of memory for " + std::to_string(bytes) + " scratch bytes");
    capacity = count;
  }
  return buf.get();
}

// Scalar reference: 8 interleaved partial sums (fewer rounding steps than one running sum).
template <class Wt, class Widen>
void rows_scalar(const float* x, int64_t M, int64_t K, const Wt* W, int64_t n0, int64_t n1,
                 const float* bias, float* y, int64_t ldy, Widen widen) {
  for (int64_t n = n0; n < n1; ++n) {
    const Wt* w = W + n * K;
    for (int64_t m = 0; m < M; ++m) {
      const float* xm = x + m * K;
      float part[8] = {};
      int64_t k = 0;
      for (; k + 8 <= K; k += 8)
        for (int i = 0; i < 8; ++i) part[i] += xm[k + i] * widen(w[k + i]);
      for (; k < K; ++k) part[k & 7] += xm[k] * widen(w[k]);
      float s =
          ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
      y[m * ldy + n] = s + (bias ? bias[n] : 0.0f);
    }
  }
}

}  // namespace

uint16_t float_to_bf16(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1);  // round to nearest, ties to even
  return static_cast<uint16_t>(u >> 16);
}

float bf16_to_float(uint16_t b) {
  const uint32_t u = uint32_t{b} << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}


namespace {

// The weights of a batch's products.
struct WeightFormat {
  bool int8 = false;
  ElemType float_t = ElemType::kBF16;  // float weights: their type
  Int8Format q8;                       // int8 weights: their scales
  int64_t bytes() const { return int8 ? 1 : elem_size(float_t); }
};

// How x enters the kernels of one product.
enum class XForm {
  kF32,         // float32 as given (float32 weights; int8 weights' GEMM)
  kRounded,     // rounded to bf16, held as float32, in order (GEMMs, avx512 and scalar rows)
  kEvenOdd,     // the same in pack_x_bf16_avx2's even/odd order (avx2 rows)
  kBf16Padded,  // bf16, rows padded to 32 (avx512_bf16 rows and GEMM)
  kQ8,          // quantized per block of 32, one q8_record_bytes(K) record per row (int8 rows)
};

int64_t xform_elem_bytes(XForm form) {
  return form == XForm::kQ8 ? 1 : form == XForm::kBf16Padded ? 2 : 4;
}

bool bf16_on_amx(Isa isa, const WeightFormat& w) {
  return isa == Isa::kAvx512Bf16 && !w.int8 && w.float_t == ElemType::kBF16 && gemm_amx();
}

std::atomic<int64_t>& amx_gemm_rows() {
  static std::atomic<int64_t> rows{kAmxGemmMinRows};
  return rows;
}

// Rows from which a product runs the tiled GEMM.
int64_t gemm_min_rows(Isa isa, const WeightFormat& w) {
  return bf16_on_amx(isa, w) ? amx_gemm_min_rows() : kGemmMinRows;
}

// Whether a few-row product runs on AMX tiles (linear_bf16_rows_amx).
bool rows_on_amx(Isa isa, const WeightFormat& w, int64_t M) {
  return bf16_on_amx(isa, w) && M >= kAmxFewMinRows && M < gemm_min_rows(isa, w);
}

XForm xform_for(Isa isa, ElemType x_t, const WeightFormat& w, int64_t M) {
  // int8 GEMMs take x as it comes: bf16 activations into the bf16 GEMM (W
  // dequantized to bf16), float32 ones into the float32 GEMM (W exact)
  if (w.int8) {
    const bool bf16_dots = isa == Isa::kAvx512Bf16 && x_t == ElemType::kBF16;
    if (M >= kGemmMinRows) return bf16_dots ? XForm::kBf16Padded : XForm::kF32;
    return bf16_dots && M >= kInt8Bf16xMinRows ? XForm::kBf16Padded : XForm::kQ8;
  }
  if (w.float_t == ElemType::kF32) return XForm::kF32;
  if (isa == Isa::kAvx512Bf16) return XForm::kBf16Padded;
  if (isa == Isa::kAvx2 && M < kGemmMinRows) return XForm::kEvenOdd;
  return XForm::kRounded;
}

// Rows [m0, m1) of x (x_t, [M, K]) into dst ([M, ldx] of the form's element).
void prepare_rows(Isa isa, const OpsTable& ops, XForm form, ElemType x_t, const void* x, int64_t K,
                  int64_t m0, int64_t m1, void* dst, int64_t ldx) {
  for (int64_t m = m0; m < m1; ++m) {
    const void* in = elem_offset(x, x_t, m * K);
    if (form == XForm::kQ8) {
      quantize_x_q8(isa, x_t, in, K, static_cast<uint8_t*>(dst) + m * ldx);
      continue;
    }
    if (form == XForm::kBf16Padded) {
      uint16_t* out = static_cast<uint16_t*>(dst) + m * ldx;
      if (x_t == ElemType::kF32)
        pack_x_bf16_avx512bf16(static_cast<const float*>(in), 1, K, out, ldx);
      else
        std::memcpy(out, in, size_t(K) * 2);
      std::memset(out + K, 0, size_t(ldx - K) * 2);
      continue;
    }
    float* out = static_cast<float*>(dst) + m * ldx;
    if (x_t == ElemType::kBF16) {  // already bf16: widening is exact, whatever the form
      if (form != XForm::kEvenOdd) {
        ops.convert(ElemType::kBF16, in, ElemType::kF32, out, K);
      } else {
        float* tmp = scratch<float, 7>(size_t(K));
        ops.convert(ElemType::kBF16, in, ElemType::kF32, tmp, K);
        pack_x_bf16_avx2(tmp, 1, K, out);
      }
      continue;
    }
    const float* xf = static_cast<const float*>(in);
    if (form == XForm::kF32) {
      std::memcpy(out, xf, size_t(K) * 4);
    } else if (form == XForm::kEvenOdd) {
      pack_x_bf16_avx2(xf, 1, K, out);
    } else {
      uint16_t* tmp = scratch<uint16_t, 6>(size_t(K));
      ops.convert(ElemType::kF32, xf, ElemType::kBF16, tmp, K);
      ops.convert(ElemType::kBF16, tmp, ElemType::kF32, out, K);
    }
  }
}

// One product as the kernels see it.
struct Job {
  const LinearProduct* p = nullptr;
  XForm form = XForm::kF32;
  const void* x = nullptr;  // prepared x: float32, bf16 (kBf16Padded) or records (kQ8) [M, ldx]
  int64_t ldx = 0;
  const float* bias = nullptr;  // float32 or null
  float* y32 = nullptr;  // float32 sums of the few-row kernels: y itself or scratch [M, N]
  bool gemm = false;
  const uint16_t* xv = nullptr;  // few-row jobs on AMX tiles: x as their B operand
  int64_t virt0 = 0;  // few-row jobs: first row in the batch's row space (a multiple of kGrain)
};

struct GemmTask {
  int64_t job, m0, m1, n0, n1;
};

// Columns [n0, n1) of job j's few-row product, into j.y32.
void rows_of(Isa isa, const Job& j, int64_t K, const WeightFormat& w, int64_t n0, int64_t n1) {
  const LinearProduct& p = *j.p;
  if (w.int8) {
    const Q8Args a{j.x, j.ldx * xform_elem_bytes(j.form), p.M, K, static_cast<const int8_t*>(p.W),
                   p.scale, w.q8, j.bias, j.y32, p.N};
    return j.form == XForm::kBf16Padded ? q8_rows_bf16x_avx512bf16(a, n0, n1) : q8_rows(isa, a, n0, n1);
  }
  const float* xf = static_cast<const float*>(j.x);
  const uint16_t* wb = static_cast<const uint16_t*>(p.W);
  const float* wf = static_cast<const float*>(p.W);
  const bool bf16 = w.float_t == ElemType::kBF16;
  switch (isa) {
    case Isa::kAvx512Bf16:
      if (j.xv) return linear_bf16_rows_amx(j.xv, p.M, K, wb, n0, n1, j.bias, j.y32, p.N);
      if (bf16)
        return linear_bf16_rows_avx512bf16(static_cast<const uint16_t*>(j.x), p.M, K, j.ldx, wb,
                                           n0, n1, j.bias, j.y32, p.N);
      return linear_f32_rows_avx512(xf, p.M, K, wf, n0, n1, j.bias, j.y32, p.N);
    case Isa::kAvx512:
      if (bf16) return linear_bf16_rows_avx512(xf, p.M, K, wb, n0, n1, j.bias, j.y32, p.N);
      return linear_f32_rows_avx512(xf, p.M, K, wf, n0, n1, j.bias, j.y32, p.N);
    case Isa::kAvx2:
      if (bf16) return linear_bf16_rows_avx2(xf, p.M, K, wb, n0, n1, j.bias, j.y32, p.N);
      return linear_f32_rows_avx2(xf, p.M, K, wf, n0, n1, j.bias, j.y32, p.N);
    case Isa::kScalar:
      if (bf16)
        return rows_scalar(xf, p.M, K, wb, n0, n1, j.bias, j.y32, p.N,
                           [](uint16_t w) { return bf16_to_float(w); });
      return rows_scalar(xf, p.M, K, wf, n0, n1, j.bias, j.y32, p.N, [](float w) { return w; });
  }
}

std::atomic<bool>& amx_on() {
  static std::atomic<bool> on{[] {
    const char* env = std::getenv("FINMOE_AMX");
    return cpu_features().amx_bf16 && !(env && std::strcmp(env, "0") == 0);
  }()};
  return on;
}

const GemmF32& gemm_f32_for(Isa isa) {
  switch (isa) {
    case Isa::kAvx512Bf16:
    case Isa::kAvx512:
      return gemm_f32_avx512();
    case Isa::kAvx2:
      return gemm_f32_avx2();
    case Isa::kScalar:
      break;
  }
  return gemm_f32_scalar();
}

void run_gemm(Isa isa, const Job& j, const GemmTask& t, int64_t K, const WeightFormat& w,
              ElemType y_t) {
  const LinearProduct& p = *j.p;
  float* yf = y_t == ElemType::kF32 ? static_cast<float*>(p.y) + t.m0 * p.N : nullptr;
  uint16_t* yb = y_t == ElemType::kF32 ? nullptr : static_cast<uint16_t*>(p.y) + t.m0 * p.N;
  if (j.form == XForm::kBf16Padded) {
    uint16_t* packed = scratch<uint16_t, 4>(size_t(gemm_pack_elems_avx512bf16(K)));
    const uint16_t* xb = static_cast<const uint16_t*>(j.x) + t.m0 * j.ldx;
    if (w.int8)
      gemm_int8_avx512bf16(xb, t.m1 - t.m0, K, j.ldx, static_cast<const int8_t*>(p.W), p.scale,
                           w.q8, t.n0, t.n1, j.bias, yf, yb, p.N, packed, gemm_amx());
    else
      gemm_bf16_avx512bf16(xb, t.m1 - t.m0, K, j.ldx, static_cast<const uint16_t*>(p.W), t.n0,
                           t.n1, j.bias, yf, yb, p.N, packed, gemm_amx());
    return;
  }
  const GemmF32& g = gemm_f32_for(isa);
  float* work = scratch<float, 5>(size_t(g.scratch_floats(t.m1 - t.m0, K)));
  const float* x = static_cast<const float*>(j.x) + t.m0 * j.ldx;
  if (w.int8)
    g.run_int8(x, t.m1 - t.m0, K, j.ldx, static_cast<const int8_t*>(p.W), p.scale, w.q8, t.n0,
               t.n1, j.bias, yf, yb, p.N, work);
  else
    g.run(x, t.m1 - t.m0, K, j.ldx, w.float_t, p.W, t.n0, t.n1, j.bias, yf, yb, p.N, work);
}

// The core of every entry point: products of one K and types; bias of bias_t.
void run_batch(Isa isa, ElemType x_t, int64_t K, const WeightFormat& w, ElemType bias_t,
               const std::vector<LinearProduct>& products, ElemType y_t) {
  require_isa(isa);
  if (K < 0) throw Error("linear: negative K=" + std::to_string(K));
  for (const LinearProduct& p : products) {
    check_args("linear", p.x, p.M, K, p.W, p.N, p.y);
    if (w.int8 && p.N * K > 0 && p.scale == nullptr)
      throw Error("linear: int8 weights without scales");
  }
  const OpsTable& ops = ops_table(isa);
  std::vector<Job> jobs;
  uint64_t w_bytes = 0;
  const int64_t scale_bytes = w.int8 ? int8_scales_per_row(w.q8, K) * elem_size(w.q8.scale_t) : 0;
  for (const LinearProduct& p : products)
    if (p.M > 0 && p.N > 0) {
      jobs.push_back(Job{&p});
      w_bytes += uint64_t(p.N * (K * w.bytes() + scale_bytes));
    }
  if (jobs.empty()) return;
  bytes_read().fetch_add(w_bytes, std::memory_order_relaxed);
  if (K == 0) {  // the empty sum: y = bias (or 0)
    std::vector<float> row;
    for (const Job& j : jobs) {
      row.assign(size_t(j.p->N), 0.0f);
      if (j.p->bias) ops.convert(bias_t, j.p->bias, ElemType::kF32, row.data(), j.p->N);
      for (int64_t m = 0; m < j.p->M; ++m)
        ops.convert(ElemType::kF32, row.data(), y_t, elem_offset(j.p->y, y_t, m * j.p->N), j.p->N);
    }
    return;
  }

  // Scratch layout: prepared x of each distinct (x, M), float32 biases, float32 sums.
  size_t x_bytes = 0, bias_floats = 0, sum_floats = 0;
  std::vector<size_t> x_at(jobs.size()), bias_at(jobs.size()), sum_at(jobs.size());
  std::vector<bool> x_owner(jobs.size(), false), amx_x(jobs.size(), false);
  for (size_t i = 0; i < jobs.size(); ++i) {
    Job& j = jobs[i];
    const LinearProduct& p = *j.p;
    j.form = xform_for(isa, x_t, w, p.M);
    j.gemm = p.M >= gemm_min_rows(isa, w);
    amx_x[i] = !j.gemm && rows_on_amx(isa, w, p.M);
    j.ldx = j.form == XForm::kBf16Padded ? (K + 31) / 32 * 32
            : j.form == XForm::kQ8       ? q8_record_bytes(K)
                                         : K;
    bool shared = false;
    for (size_t k = i; k-- > 0 && !shared;)  // products sharing x are adjacent (q/k/v, gate/up)
      if (jobs[k].p->x == p.x && jobs[k].p->M == p.M) {
        x_at[i] = x_at[k];
        shared = true;
      }
    if (!shared && !(j.form == XForm::kF32 && x_t == ElemType::kF32)) {
      x_at[i] = x_bytes;
      x_owner[i] = true;
      x_bytes += size_t(p.M * j.ldx * xform_elem_bytes(j.form));
      if (amx_x[i]) x_bytes += size_t(amx_rows_x_elems(p.M, K)) * 2;  // xv after x
      x_bytes = (x_bytes + 63) / 64 * 64;
    }
    if (p.bias && bias_t != ElemType::kF32) {
      bias_at[i] = bias_floats;
      bias_floats += size_t(p.N);
    }
    if (!j.gemm && y_t != ElemType::kF32) {
      sum_at[i] = sum_floats;
      sum_floats += size_t(p.M * p.N);
    }
  }
  char* xbuf = x_bytes ? scratch<char, 0>(x_bytes) : nullptr;
  float* bias32 = bias_floats ? scratch<float, 2>(bias_floats) : nullptr;
  float* sums = sum_floats ? scratch<float, 3>(sum_floats) : nullptr;

  std::vector<GemmTask> tasks;
  int64_t virt_rows = 0, work = 0, prep = 0;
  for (size_t i = 0; i < jobs.size(); ++i) {
    Job& j = jobs[i];
    const LinearProduct& p = *j.p;
    j.x = j.form == XForm::kF32 && x_t == ElemType::kF32 ? p.x : xbuf + x_at[i];
    if (amx_x[i]) j.xv = static_cast<const uint16_t*>(j.x) + p.M * j.ldx;
    if (p.bias)
      j.bias = bias_t == ElemType::kF32 ? static_cast<const float*>(p.bias) : bias32 + bias_at[i];
    if (x_owner[i]) prep += p.M * K;
    work += p.M * p.N * K;
    if (j.gemm) {
      const int64_t panel = j.form == XForm::kBf16Padded ? kBf16Panel : gemm_f32_for(isa).panel;
      for (int64_t n0 = 0; n0 < p.N; n0 += panel)
        for (int64_t m0 = 0; m0 < p.M; m0 += kGemmRowBlock)
          tasks.push_back({int64_t(i), m0, std::min(p.M, m0 + kGemmRowBlock), n0,
                           std::min(p.N, n0 + panel)});
    } else {
      j.y32 = y_t == ElemType::kF32 ? static_cast<float*>(p.y) : sums + sum_at[i];
      j.virt0 = (virt_rows + kGrain - 1) / kGrain * kGrain;
      virt_rows = j.virt0 + p.N;
    }
  }

  ThreadPool& pool = ThreadPool::global();
  const int64_t threads = pool.num_threads();
  // x and bias conversions, over the pool when there is enough of them
  const auto pack_xv = [&](const Job& j) {
    if (j.xv)
      amx_rows_pack_x(static_cast<const uint16_t*>(j.x), j.p->M, j.ldx,
                      const_cast<uint16_t*>(j.xv));
  };
  const auto prepare = [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const Job& j = jobs[size_t(i)];
      if (x_owner[size_t(i)]) {
        prepare_rows(isa, ops, j.form, x_t, j.p->x, K, 0, j.p->M, const_cast<void*>(j.x), j.ldx);
        pack_xv(j);
      }
      if (j.p->bias && bias_t != ElemType::kF32)
        ops.convert(bias_t, j.p->bias, ElemType::kF32, const_cast<float*>(j.bias), j.p->N);
    }
  };
  if (jobs.size() == 1 && x_owner[0] && jobs[0].p->M * K >= kMinParallelWeights) {
    const Job& j = jobs[0];
    pool.parallel_for(j.p->M, kGrain, [&](int64_t m0, int64_t m1) {
      prepare_rows(isa, ops, j.form, x_t, j.p->x, K, m0, m1, const_cast<void*>(j.x), j.ldx);
    });
    pack_xv(j);
    if (j.p->bias && bias_t != ElemType::kF32)
      ops.convert(bias_t, j.p->bias, ElemType::kF32, const_cast<float*>(j.bias), j.p->N);
  } else if (prep >= kMinParallelWeights) {
    pool.parallel_for(int64_t(jobs.size()), 1, prepare);
  } else {
    prepare(0, int64_t(jobs.size()));
  }

  // Few-row products: rows [a, b) of the batch's row space, job by job; bf16
  // results rounded from the float32 sums while they are in cache.
  std::vector<int64_t> virt_jobs;  // few-row jobs in row-space order
  for (size_t i = 0; i < jobs.size(); ++i)
    if (!jobs[i].gemm) virt_jobs.push_back(int64_t(i));
  const auto rows = [&](int64_t a, int64_t b) {
    for (int64_t i : virt_jobs) {
      const Job& j = jobs[size_t(i)];
      const int64_t n0 = std::max(a, j.virt0) - j.virt0;
      const int64_t n1 = std::min(b, j.virt0 + j.p->N) - j.virt0;
      if (n0 >= n1) continue;
      rows_of(isa, j, K, w, n0, n1);
      if (y_t != ElemType::kF32)
        for (int64_t m = 0; m < j.p->M; ++m)
          ops.convert(ElemType::kF32, j.y32 + m * j.p->N + n0, y_t,
                      elem_offset(j.p->y, y_t, m * j.p->N + n0), n1 - n0);
    }
  };
  const int64_t n_tasks = int64_t(tasks.size());
  const int64_t row_bytes = K * w.bytes();
  const int64_t chunk = chunk_rows(row_bytes);
  const bool parallel = threads > 1 && virt_rows <= INT32_MAX &&
                        (n_tasks > 1 || virt_rows * row_bytes >= 2 * kMinParallelWeights) &&
                        (n_tasks > 0 || virt_rows > chunk) && work >= kMinParallelWeights;
  // AMX few-row jobs: this thread's tiles configured while it walks rows
  // (after its GEMM tasks, which configure and release their own)
  const bool amx_rows = std::any_of(amx_x.begin(), amx_x.end(), [](bool b) { return b; });
  const auto walk = [&](const auto& run) {
    std::optional<AmxTileScope> tiles;
    if (amx_rows) tiles.emplace();
    run();
  };
  if (!parallel) {
    for (const GemmTask& t : tasks) run_gemm(isa, jobs[size_t(t.job)], t, K, w, y_t);
    if (virt_rows > 0) walk([&] { rows(0, virt_rows); });
    return;
  }
  std::atomic<int64_t> next{0};
  Shares shares(virt_rows, chunk, threads);
  pool.parallel_for(threads, 1, [&](int64_t t, int64_t) {
    for (int64_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < n_tasks;)
      run_gemm(isa, jobs[size_t(tasks[size_t(i)].job)], tasks[size_t(i)], K, w, y_t);
    walk([&] { shares.walk(t, rows); });
  });
}

WeightFormat float_weights(ElemType w_t) { return {false, w_t, {}}; }

}  // namespace

uint64_t weight_bytes_read() { return bytes_read().load(std::memory_order_relaxed); }

int64_t amx_gemm_min_rows() { return amx_gemm_rows().load(std::memory_order_relaxed); }

void set_amx_gemm_min_rows(int64_t rows) {
  amx_gemm_rows().store(std::clamp<int64_t>(rows, kGemmMinRows, INT32_MAX),
                        std::memory_order_relaxed);
}

bool gemm_amx() { return amx_on().load(std::memory_order_relaxed); }

void set_gemm_amx(bool on) {
  amx_on().store(on && cpu_features().amx_bf16, std::memory_order_relaxed);
}

void linear_bf16_isa(Isa isa, const float* x, int64_t M, int64_t K, const uint16_t* W, int64_t N,
                     const float* bias, float* y) {
  run_batch(isa, ElemType::kF32, K, float_weights(ElemType::kBF16), ElemType::kF32,
            {{x, M, W, N, bias, y}},
            ElemType::kF32);
}

void linear_f32_isa(Isa isa, const float* x, int64_t M, int64_t K, const float* W, int64_t N,
                    const float* bias, float* y) {
  run_batch(isa, ElemType::kF32, K, float_weights(ElemType::kF32), ElemType::kF32,
            {{x, M, W, N, bias, y}},
            ElemType::kF32);
}

void linear_isa(Isa isa, ElemType x_t, const void* x, int64_t M, int64_t K, ElemType w_t,
                const void* W, int64_t N, const void* bias, ElemType y_t, void* y) {
  run_batch(isa, x_t, K, float_weights(w_t), w_t, {{x, M, W, N, bias, y}}, y_t);
}

void linear_batch_isa(Isa isa, ElemType x_t, int64_t K, ElemType w_t,
                      const std::vector<LinearProduct>& products, ElemType y_t) {
  run_batch(isa, x_t, K, float_weights(w_t), w_t, products, y_t);
}

void linear_int8_batch_isa(Isa isa, ElemType x_t, int64_t K, const Int8Format& f,
                           const std::vector<LinearProduct>& products, ElemType y_t) {
  int8_scales_per_row(f, K);  // validates the group
  run_batch(isa, x_t, K, {true, ElemType::kBF16, f}, x_t, products, y_t);
}

void linear_bf16(const float* x, int64_t M, int64_t K, const uint16_t* W, int64_t N,
                 const float* bias, float* y) {
  linear_bf16_isa(active_isa(), x, M, K, W, N, bias, y);
}

void linear_f32(const float* x, int64_t M, int64_t K, const float* W, int64_t N, const float* bias,
                float* y) {
  linear_f32_isa(active_isa(), x, M, K, W, N, bias, y);
}

void linear(ElemType x_t, const void* x, int64_t M, int64_t K, ElemType w_t, const void* W,
            int64_t N, const void* bias, ElemType y_t, void* y) {
  linear_isa(active_isa(), x_t, x, M, K, w_t, W, N, bias, y_t, y);
}

void linear_batch(ElemType x_t, int64_t K, ElemType w_t, const std::vector<LinearProduct>& products,
                  ElemType y_t) {
  run_batch(active_isa(), x_t, K, float_weights(w_t), w_t, products, y_t);
}

void linear_group(ElemType x_t, const void* x, int64_t M, int64_t K, ElemType w_t,
                  const std::vector<LinearOutput>& outs, ElemType y_t) {
  std::vector<LinearProduct> products;
  products.reserve(outs.size());
  for (const LinearOutput& o : outs) products.push_back({x, M, o.W, o.N, o.bias, o.y});
  run_batch(active_isa(), x_t, K, float_weights(w_t), w_t, products, y_t);
}

}  // namespace finmoe::kernels
