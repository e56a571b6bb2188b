#include "kernels/ops.h"

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <string>

#include "finmoe/error.h"
#include "kernels/ops_isa.h"
#include "kernels/thread_pool.h"

namespace finmoe::kernels {
namespace {

// Elements below which an op runs on the calling thread: a worker wake-up
// (~1-50 µs) costs more than the op itself.
constexpr int64_t kMinParallelElems = 64 * 1024;

const OpsTable& active_ops() {
  static const OpsTable& table = ops_table(active_isa());
  return table;
}

void check_shape(const char* op, int64_t a, int64_t b) {
  if (a < 0 || b < 0)
    throw Error(std::string(op) + ": negative shape " + std::to_string(a) + " x " +
                std::to_string(b));
}

// fn(begin, end) over [0, rows), split over the pool when rows * width is large.
template <class F>
void split(int64_t rows, int64_t width, const F& fn) {
  if (rows <= 0) return;
  ThreadPool& pool = ThreadPool::global();
  if (rows * width < kMinParallelElems || rows < 2) return fn(int64_t{0}, rows);
  pool.parallel_for(rows, 1, fn);
}

}  // namespace

float* scratch_floats(int slot, int64_t n) {
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  constexpr int kSlots = 8;
  thread_local std::unique_ptr<float, Free> bufs[kSlots];
  thread_local int64_t capacity[kSlots] = {};
  if (slot < 0 || slot >= kSlots) throw Error("scratch_floats: slot out of range");
  if (n > capacity[slot]) {
    const size_t bytes = (static_cast<size_t>(n) * sizeof(float) + 63) / 64 * 64;
    bufs[slot].reset(static_cast<float*>(std::aligned_alloc(64, bytes)));
    if (!bufs[slot]) throw Error("kernels: out of memory for " + std::to_string(bytes) + " bytes");
    capacity[slot] = n;
  }
  return bufs[slot].get();
}

const OpsTable& ops_table(Isa isa) {
  require_isa(isa);
  switch (isa) {
    case Isa::kAvx512Bf16:
    case Isa::kAvx512:
      return ops_avx512();
    case Isa::kAvx2:
      return ops_avx2();
    case Isa::kScalar:
      break;
  }
  return ops_scalar();
}

void rms_norm(ElemType t, const void* x, int64_t M, int64_t D, const void* w, float eps, void* y) {
  check_shape("rms_norm", M, D);
  const OpsTable& ops = active_ops();
  split(M, D, [&](int64_t m0, int64_t m1) {
    ops.rms_norm(t, elem_offset(x, t, m0 * D), m1 - m0, D, w, eps, elem_offset(y, t, m0 * D));
  });
}

void add_rms_norm(ElemType t, void* x, const void* delta, int64_t M, int64_t D, const void* w,
                  float eps, void* y) {
  check_shape("add_rms_norm", M, D);
  const OpsTable& ops = active_ops();
  split(M, D, [&](int64_t m0, int64_t m1) {
    ops.add_rms_norm(t, elem_offset(x, t, m0 * D), elem_offset(delta, t, m0 * D), m1 - m0, D, w,
                     eps, elem_offset(y, t, m0 * D));
  });
}

void rope(ElemType t, void* x, int64_t N, int64_t H, int64_t ld, int64_t rot, const float* cos,
          const float* sin, bool interleaved) {
  check_shape("rope", N, H);
  if (rot < 0 || rot % 2 != 0 || rot > ld)
    throw Error("rope: rotary dims " + std::to_string(rot) + " must be even and <= " +
                std::to_string(ld));
  const OpsTable& ops = active_ops();
  split(N, H * rot, [&](int64_t n0, int64_t n1) {
    ops.rope(t, elem_offset(x, t, n0 * H * ld), n1 - n0, H, ld, rot, cos + n0 * rot,
             sin + n0 * rot, interleaved);
  });
}

void swiglu(ElemType t, const void* gate, const void* up, int64_t n, void* y) {
  check_shape("swiglu", n, 1);
  const OpsTable& ops = active_ops();
  constexpr int64_t kBlock = 4096;  // elements per parallel task
  split((n + kBlock - 1) / kBlock, kBlock, [&](int64_t b0, int64_t b1) {
    const int64_t i0 = b0 * kBlock, i1 = std::min(n, b1 * kBlock);
    ops.swiglu(t, elem_offset(gate, t, i0), elem_offset(up, t, i0), i1 - i0,
               elem_offset(y, t, i0));
  });
}

void gated_add(ElemType t, void* y, const void* x, const void* gate, int64_t M, int64_t D) {
  check_shape("gated_add", M, D);
  const OpsTable& ops = active_ops();
  split(M, D, [&](int64_t m0, int64_t m1) {
    ops.gated_add(t, elem_offset(y, t, m0 * D), elem_offset(x, t, m0 * D), elem_offset(gate, t, m0),
                  m1 - m0, D);
  });
}

void convert(ElemType src_t, const void* src, ElemType dst_t, void* dst, int64_t n) {
  check_shape("convert", n, 1);
  const OpsTable& ops = active_ops();
  constexpr int64_t kBlock = 16384;
  split((n + kBlock - 1) / kBlock, kBlock, [&](int64_t b0, int64_t b1) {
    const int64_t i0 = b0 * kBlock, i1 = std::min(n, b1 * kBlock);
    ops.convert(src_t, elem_offset(src, src_t, i0), dst_t, elem_offset(dst, dst_t, i0), i1 - i0);
  });
}

void scatter_rows(ElemType src_t, const void* src, int64_t n, int64_t width, ElemType dst_t,
                  void* dst, const int64_t* rows) {
  check_shape("scatter_rows", n, width);
  const OpsTable& ops = active_ops();
  split(n, width, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      ops.convert(src_t, elem_offset(src, src_t, i * width), dst_t,
                  elem_offset(dst, dst_t, rows[i] * width), width);
  });
}

}  // namespace finmoe::kernels
