#include "kernels/linear.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "finmoe/error.h"
#include "kernels/linear_isa.h"
#include "kernels/ops_isa.h"
#include "kernels/thread_pool.h"

namespace finmoe::kernels {
namespace {

// Output rows per claimed chunk: a multiple of every kernel's row block.
constexpr int64_t kGrain = 16;
// Weight bytes per claimed chunk, about: small enough that the threads finish
// together, large enough that claiming (one atomic) costs nothing.
constexpr int64_t kChunkBytes = 64 * 1024;
// Rows from which the AVX-512 bf16 path switches from the skinny kernel
// (W streamed once, x re-read from L1 per 4 rows) to the tiled GEMM (W
// repacked per 32-column panel; compute-bound). bench_kernels gemm measures both.
constexpr int64_t kGemmMinRows = 32;
// Output columns per GEMM panel (gemm_avx512.cpp).
constexpr int64_t kGemmPanel = 32;
// Below this many weights (128 KiB of bf16) waking a worker costs more than it saves.
constexpr int64_t kMinParallelWeights = 64 * 1024;

void check_args(const char* op, const float* x, int64_t M, int64_t K, const void* W, int64_t N,
                float* y) {
  if (M < 0 || K < 0 || N < 0)
    throw Error(std::string(op) + ": negative shape M=" + std::to_string(M) +
                " K=" + std::to_string(K) + " N=" + std::to_string(N));
  if ((M * K > 0 && x == nullptr) || (N * K > 0 && W == nullptr) || (M * N > 0 && y == nullptr))
    throw Error(std::string(op) + ": null x, W or y for a non-empty shape");
}

// y = bias (or 0) when K == 0: the empty sum.
void fill_bias(int64_t M, int64_t N, const float* bias, float* y) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) y[m * N + n] = bias ? bias[n] : 0.0f;
}

void require(Isa isa) {
  if (static_cast<int>(isa) > static_cast<int>(best_isa(cpu_features())))
    throw Error(std::string("kernels: this CPU cannot run the ") + isa_name(isa) + " path");
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

// Rows per claimed chunk of K bf16-sized elements each.
int64_t chunk_rows(int64_t K) {
  const int64_t rows = kChunkBytes / (2 * std::max<int64_t>(K, 1));
  return std::max<int64_t>(1, (rows + kGrain - 1) / kGrain) * kGrain;
}
// First row of thread t's share of [0, N) (t == threads: N).
int64_t share_start(int64_t N, int64_t t, int64_t threads) {
  return t == threads ? N : N * t / threads / kGrain * kGrain;
}

// Runs rows(n0, n1) over [0, N) on all threads when the weights (N rows of K
// bf16-sized elements) are big enough. Each thread walks its own contiguous
// share front to back, so its weights arrive as one sequential stream that the
// prefetchers follow across chunks; a thread done with its share takes chunks
// from the back of the fullest other share (on a shared machine one core is
// often slower, and a static split would leave the other idle at the end).
template <class F>
void split_rows(int64_t N, int64_t K, const F& rows) {
  ThreadPool& pool = ThreadPool::global();
  const int64_t threads = pool.num_threads();
  const int64_t chunk = chunk_rows(K);
  if (threads == 1 || N * K < kMinParallelWeights || N <= chunk || N > INT32_MAX) {
    rows(int64_t{0}, N);
    return;
  }
  std::vector<Share> shares(static_cast<size_t>(threads));
  for (int64_t t = 0; t < threads; ++t)
    shares[size_t(t)].reset(share_start(N, t, threads), share_start(N, t + 1, threads));
  pool.parallel_for(threads, 1, [&](int64_t t, int64_t) {
    int64_t a, b;
    while (shares[size_t(t)].claim(chunk, true, a, b)) rows(a, b);
    for (;;) {
      Share* fullest = nullptr;
      for (auto& s : shares)
        if (s.left() > 0 && (!fullest || s.left() > fullest->left())) fullest = &s;
      if (!fullest) return;
      if (fullest->claim(chunk, false, a, b)) rows(a, b);
    }
  });
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

// y (float32) or yb (bf16) = xb · Wᵀ + bias with the tiled AVX-512 GEMM, one
// 32-column panel per task, handed out dynamically (see split_rows).
void gemm_avx512(const uint16_t* xb, int64_t ldx, int64_t M, int64_t K, const uint16_t* W,
                 int64_t N, const float* bias, float* y, uint16_t* yb) {
  const int64_t panels = (N + kGemmPanel - 1) / kGemmPanel;
  std::atomic<int64_t> next{0};
  auto work = [&](int64_t, int64_t) {
    uint16_t* packed = scratch<uint16_t, 4>(static_cast<size_t>(gemm_pack_elems_avx512(K)));
    for (int64_t p; (p = next.fetch_add(1, std::memory_order_relaxed)) < panels;) {
      const int64_t n0 = p * kGemmPanel;
      gemm_bf16_avx512(xb, M, K, ldx, W, n0, std::min(N, n0 + kGemmPanel), bias, y, yb, N,
                       packed);
    }
  };
  ThreadPool& pool = ThreadPool::global();
  if (panels == 1) return work(0, 1);
  pool.parallel_for(pool.num_threads(), 1, work);
}

// linear_bf16_isa, then after(n0, n1) on each finished range of output columns
// (on the thread that computed it, while the rows are still in cache).
template <class After>
void run_bf16(Isa isa, const float* x, int64_t M, int64_t K, const uint16_t* W, int64_t N,
              const float* bias, float* y, const After& after) {
  check_args("linear_bf16", x, M, K, W, N, y);
  require(isa);
  if (M == 0 || N == 0) return;
  if (K == 0) {
    fill_bias(M, N, bias, y);
    return after(int64_t{0}, N);
  }
  switch (isa) {
    case Isa::kAvx512: {
      const int64_t ldx = (K + 31) / 32 * 32;
      uint16_t* xb = scratch<uint16_t>(static_cast<size_t>(M * ldx));
      pack_x_bf16_avx512(x, M, K, xb, ldx);
      if (M >= kGemmMinRows) return gemm_avx512(xb, ldx, M, K, W, N, bias, y, nullptr);
      split_rows(N, K, [&](int64_t n0, int64_t n1) {
        linear_bf16_rows_avx512(xb, M, K, ldx, W, n0, n1, bias, y, N);
        after(n0, n1);
      });
      return;
    }
    case Isa::kAvx2: {
      float* xr = scratch<float>(static_cast<size_t>(M * K));
      pack_x_bf16_avx2(x, M, K, xr);
      split_rows(N, K, [&](int64_t n0, int64_t n1) {
        linear_bf16_rows_avx2(xr, M, K, W, n0, n1, bias, y, N);
        after(n0, n1);
      });
      return;
    }
    case Isa::kScalar: {
      float* xr = scratch<float>(static_cast<size_t>(M * K));
      for (int64_t i = 0; i < M * K; ++i) xr[i] = bf16_to_float(float_to_bf16(x[i]));
      split_rows(N, K, [&](int64_t n0, int64_t n1) {
        rows_scalar(xr, M, K, W, n0, n1, bias, y, N, [](uint16_t w) { return bf16_to_float(w); });
        after(n0, n1);
      });
      return;
    }
  }
}

template <class After>
void run_f32(Isa isa, const float* x, int64_t M, int64_t K, const float* W, int64_t N,
             const float* bias, float* y, const After& after) {
  check_args("linear_f32", x, M, K, W, N, y);
  require(isa);
  if (M == 0 || N == 0) return;
  if (K == 0) {
    fill_bias(M, N, bias, y);
    return after(int64_t{0}, N);
  }
  switch (isa) {
    case Isa::kAvx512:
      split_rows(N, 2 * K, [&](int64_t n0, int64_t n1) {
        linear_f32_rows_avx512(x, M, K, W, n0, n1, bias, y, N);
        after(n0, n1);
      });
      return;
    case Isa::kAvx2:
      split_rows(N, 2 * K, [&](int64_t n0, int64_t n1) {
        linear_f32_rows_avx2(x, M, K, W, n0, n1, bias, y, N);
        after(n0, n1);
      });
      return;
    case Isa::kScalar:
      split_rows(N, 2 * K, [&](int64_t n0, int64_t n1) {
        rows_scalar(x, M, K, W, n0, n1, bias, y, N, [](float w) { return w; });
        after(n0, n1);
      });
      return;
  }
}

constexpr auto kNothingAfter = [](int64_t, int64_t) {};

}  // namespace

void linear_bf16_isa(Isa isa, const float* x, int64_t M, int64_t K, const uint16_t* W, int64_t N,
                     const float* bias, float* y) {
  run_bf16(isa, x, M, K, W, N, bias, y, kNothingAfter);
}

void linear_f32_isa(Isa isa, const float* x, int64_t M, int64_t K, const float* W, int64_t N,
                    const float* bias, float* y) {
  run_f32(isa, x, M, K, W, N, bias, y, kNothingAfter);
}

void linear_isa(Isa isa, ElemType x_t, const void* x, int64_t M, int64_t K, ElemType w_t,
                const void* W, int64_t N, const void* bias, ElemType y_t, void* y) {
  if (M < 0 || K < 0 || N < 0)
    throw Error("linear: negative shape M=" + std::to_string(M) + " K=" + std::to_string(K) +
                " N=" + std::to_string(N));
  if ((M * K > 0 && x == nullptr) || (N * K > 0 && W == nullptr) || (M * N > 0 && y == nullptr))
    throw Error("linear: null x, W or y for a non-empty shape");
  const OpsTable& ops = ops_table(isa);
  require(isa);
  if (isa == Isa::kAvx512 && w_t == ElemType::kBF16 && M >= kGemmMinRows && K > 0 && N > 0) {
    // Prefill: x straight into the GEMM's padded bf16 rows, results stored in y's type.
    const int64_t ldx = (K + 31) / 32 * 32;
    uint16_t* xb = scratch<uint16_t>(static_cast<size_t>(M * ldx));
    ThreadPool::global().parallel_for(M, 16, [&](int64_t m0, int64_t m1) {
      if (x_t == ElemType::kF32) {
        pack_x_bf16_avx512(static_cast<const float*>(x) + m0 * K, m1 - m0, K, xb + m0 * ldx, ldx);
        return;
      }
      for (int64_t m = m0; m < m1; ++m) {
        std::memcpy(xb + m * ldx, static_cast<const uint16_t*>(x) + m * K, size_t(K) * 2);
        std::memset(xb + m * ldx + K, 0, size_t(ldx - K) * 2);
      }
    });
    const float* bf = nullptr;
    if (bias != nullptr) {
      float* buf = scratch<float, 2>(static_cast<size_t>(N));
      ops.convert(w_t, bias, ElemType::kF32, buf, N);
      bf = buf;
    }
    const bool f32_out = y_t == ElemType::kF32;
    return gemm_avx512(xb, ldx, M, K, static_cast<const uint16_t*>(W), N, bf,
                       f32_out ? static_cast<float*>(y) : nullptr,
                       f32_out ? nullptr : static_cast<uint16_t*>(y));
  }
  const float* xf = static_cast<const float*>(x);
  if (x_t != ElemType::kF32 && M * K > 0) {
    float* buf = scratch<float, 1>(static_cast<size_t>(M * K));
    ops.convert(x_t, x, ElemType::kF32, buf, M * K);
    xf = buf;
  }
  const float* bf = static_cast<const float*>(bias);
  if (bias != nullptr && w_t != ElemType::kF32) {
    float* buf = scratch<float, 2>(static_cast<size_t>(N));
    ops.convert(w_t, bias, ElemType::kF32, buf, N);
    bf = buf;
  }
  if (y_t == ElemType::kF32) {
    float* yf = static_cast<float*>(y);
    if (w_t == ElemType::kF32)
      return run_f32(isa, xf, M, K, static_cast<const float*>(W), N, bf, yf, kNothingAfter);
    return run_bf16(isa, xf, M, K, static_cast<const uint16_t*>(W), N, bf, yf, kNothingAfter);
  }
  // Sums land in float32 scratch; each finished column range is rounded into y.
  float* y32 = scratch<float, 3>(static_cast<size_t>(M * N));
  const auto round_out = [&](int64_t n0, int64_t n1) {
    for (int64_t m = 0; m < M; ++m)
      ops.convert(ElemType::kF32, y32 + m * N + n0, y_t, elem_offset(y, y_t, m * N + n0), n1 - n0);
  };
  if (w_t == ElemType::kF32)
    return run_f32(isa, xf, M, K, static_cast<const float*>(W), N, bf, y32, round_out);
  run_bf16(isa, xf, M, K, static_cast<const uint16_t*>(W), N, bf, y32, round_out);
}

void linear_bf16(const float* x, int64_t M, int64_t K, const uint16_t* W, int64_t N,
                 const float* bias, float* y) {
  linear_bf16_isa(active_isa(), x, M, K, W, N, bias, y);
}

void linear_f32(const float* x, int64_t M, int64_t K, const float* W, int64_t N, const float* bias,
                float* y) {
  linear_f32_isa(active_isa(), x, M, K, W, N, bias, y);
}

bool linear_bf16_gemm_available() { return active_isa() == Isa::kAvx512; }

void linear_group(ElemType x_t, const void* x, int64_t M, int64_t K, ElemType w_t,
                  const std::vector<LinearOutput>& outs, ElemType y_t) {
  const Isa isa = active_isa();
  if (isa != Isa::kAvx512 || w_t != ElemType::kBF16 || M <= 0 || M >= kGemmMinRows || K <= 0) {
    for (const auto& o : outs) linear_isa(isa, x_t, x, M, K, w_t, o.W, o.N, o.bias, y_t, o.y);
    return;
  }
  std::vector<int64_t> offset(outs.size() + 1, 0);  // output i owns rows [offset[i], offset[i+1])
  for (size_t i = 0; i < outs.size(); ++i) {
    check_args("linear_group", static_cast<const float*>(x), M, K, outs[i].W, outs[i].N,
               static_cast<float*>(outs[i].y));
    offset[i + 1] = offset[i] + outs[i].N;
  }
  const int64_t total = offset.back();
  if (total == 0) return;
  const OpsTable& ops = ops_table(isa);
  // x -> float32 -> padded bf16 rows, once for every output
  const float* xf = static_cast<const float*>(x);
  if (x_t != ElemType::kF32) {
    float* buf = scratch<float, 1>(static_cast<size_t>(M * K));
    ops.convert(x_t, x, ElemType::kF32, buf, M * K);
    xf = buf;
  }
  const int64_t ldx = (K + 31) / 32 * 32;
  uint16_t* xb = scratch<uint16_t>(static_cast<size_t>(M * ldx));
  pack_x_bf16_avx512(xf, M, K, xb, ldx);
  float* bias32 = scratch<float, 2>(static_cast<size_t>(total));
  for (size_t i = 0; i < outs.size(); ++i)
    if (outs[i].bias) ops.convert(w_t, outs[i].bias, ElemType::kF32, bias32 + offset[i], outs[i].N);
  // float32 sums: in y itself for float32 outputs, else in scratch rounded per finished range
  float* y32 = y_t == ElemType::kF32 ? nullptr : scratch<float, 3>(static_cast<size_t>(M * total));
  split_rows(total, K, [&](int64_t n0, int64_t n1) {
    for (size_t i = 0; i < outs.size(); ++i) {
      const int64_t a = std::max(n0, offset[i]) - offset[i];
      const int64_t b = std::min(n1, offset[i + 1]) - offset[i];
      if (a >= b) continue;
      const LinearOutput& o = outs[i];
      float* yi = y32 ? y32 + M * offset[i] : static_cast<float*>(o.y);  // [M, N_i]
      linear_bf16_rows_avx512(xb, M, K, ldx, static_cast<const uint16_t*>(o.W), a, b,
                              o.bias ? bias32 + offset[i] : nullptr, yi, o.N);
      if (y32)
        for (int64_t m = 0; m < M; ++m)
          ops.convert(ElemType::kF32, yi + m * o.N + a, y_t, elem_offset(o.y, y_t, m * o.N + a),
                      b - a);
    }
  });
}

void linear(ElemType x_t, const void* x, int64_t M, int64_t K, ElemType w_t, const void* W,
            int64_t N, const void* bias, ElemType y_t, void* y) {
  linear_isa(active_isa(), x_t, x, M, K, w_t, W, N, bias, y_t, y);
}

}  // namespace finmoe::kernels
