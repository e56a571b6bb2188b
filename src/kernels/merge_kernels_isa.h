#pragma once
// The per-ISA implementations behind merge_kernels.h: one source
// (merge_kernels_impl.inc) compiled for baseline x86-64
// (merge_kernels_scalar.cpp), AVX2+FMA (merge_kernels_avx2.cpp) and AVX-512
// (merge_kernels_avx512.cpp). Each function works serially on the element
// range it is given; merge_kernels.cpp splits work across threads.
#include <cstdint>

#include "kernels/isa.h"
#include "kernels/merge_kernels.h"
#include "kernels/ops_isa.h"

namespace finmoe::kernels {

struct MergeTable {
  // Elements [i0, i1) of the merge (outputs written at the same indices).
  void (*combine)(const MergeCombine& a, int64_t i0, int64_t i1);
  // dst[0, i1 - i0) <- the float32 bits of |round(x) - round(base)| of elements [i0, i1).
  void (*abs_delta_bits)(MergeInput x, MergeInput base, MergeType round, int64_t i0, int64_t i1,
                         uint32_t* dst);
};

const MergeTable& merge_scalar();
const MergeTable& merge_avx2();
const MergeTable& merge_avx512();

}  // namespace finmoe::kernels
