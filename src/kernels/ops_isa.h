#pragma once
// The per-ISA implementations behind ops.h and attention.h: one source
// (ops_impl.inc) compiled three times, for baseline x86-64 (ops_scalar.cpp),
// AVX2+FMA (ops_avx2.cpp) and AVX-512 (ops_avx512.cpp). Each table's
// functions work serially on the range they are given; ops.cpp and
// attention.cpp split work across threads. Call a table only when
// best_isa(cpu_features()) allows it.
#include <cstdint>

#include "kernels/attention.h"
#include "kernels/isa.h"
#include "kernels/ops.h"

namespace finmoe::kernels {

struct OpsTable {
  // Rows [0, M) of rms_norm / add_rms_norm (pointers already offset to the first row).
  void (*rms_norm)(ElemType t, const void* x, int64_t M, int64_t D, const void* w, float eps,
                   void* y);
  void (*add_rms_norm)(ElemType t, void* x, const void* delta, int64_t M, int64_t D,
                       const void* w, float eps, void* y);
  // Tokens [0, N) of rope.
  void (*rope)(ElemType t, void* x, int64_t N, int64_t H, int64_t ld, int64_t rot,
               const float* cos, const float* sin, bool interleaved);
  void (*swiglu)(ElemType t, const void* gate, const void* up, int64_t n, void* y);
  // Rows [0, M) of gated_add.
  void (*gated_add)(ElemType t, void* y, const void* x, const void* gate, int64_t M, int64_t D);
  void (*convert)(ElemType src_t, const void* src, ElemType dst_t, void* dst, int64_t n);
  // Queries [i0, i1) of sequence `seq` for the query heads of kv head `kv_head`.
  void (*attention)(const AttentionArgs& a, int64_t seq, int64_t kv_head, int64_t i0, int64_t i1);
};

const OpsTable& ops_scalar();
const OpsTable& ops_avx2();
const OpsTable& ops_avx512();
// The table of `isa`; throws finmoe::Error if this CPU cannot run it.
const OpsTable& ops_table(Isa isa);

// paged_attention (attention.h) on an explicit path.
void paged_attention_isa(Isa isa, const AttentionArgs& args);

// A per-thread float32 buffer of at least n elements, 64-byte aligned; `slot`
// (0..7) names independent buffers. Valid until the same thread asks for the
// same slot again. Throws finmoe::Error when out of memory.
float* scratch_floats(int slot, int64_t n);

// p advanced by n elements of type t.
inline const void* elem_offset(const void* p, ElemType t, int64_t n) {
  return static_cast<const char*>(p) + n * elem_size(t);
}
inline void* elem_offset(void* p, ElemType t, int64_t n) {
  return static_cast<char*>(p) + n * elem_size(t);
}

}  // namespace finmoe::kernels
