#pragma once
// Fused elementwise kernels of `finmoe merge` (src/convert/merge.cpp): one
// pass over the memory-mapped inputs (bfloat16, float16 or float32) that
// widens, combines and rounds into the output dtype, a block of elements at a
// time (the block's float32 copies stay in cache), split over the thread pool
// and compiled per ISA (isa.h). Every float32 operation is the one, in the
// order, that the libtorch path of merge_methods.h performs, so the results
// are bit-identical to it (tests/merge/merge_kernel_test.cpp):
//
//   linear:          acc = 0; acc = fma(x_i, w_i, acc) for each i   (torch's add_(x, alpha))
//                    out = normalize ? acc / float(sum_i w_i) : acc
//   task arithmetic: s_i = x_i - base, zeroed where a magnitude mask drops it
//                    d_i = s_i * w_i;  sum = ((0 + d_0) + d_1) + ...
//                    consensus: m_i = sign(d_i) == (sum >= 0 ? +1 : -1)
//                               mixed = 0 + sum of m_i d_i, divisor = 0 + sum of m_i w_i (0 -> 1)
//                    otherwise: mixed = sum, divisor = 0 + sum of w_i (|.| < 1e-8 -> 1)
//                    mixed /= divisor when normalize; mixed *= lambda when lambda != 1
//                    out = base + mixed
// (NaN payloads aside: a NaN result is stored as some quiet NaN. linear's
// fma is what libtorch's AVX2/AVX-512 kernels do; on a CPU without FMA,
// libtorch's default kernel rounds w_i * x_i first and the last bit can differ.)
#include <cstdint>
#include <vector>

#include "kernels/isa.h"

namespace finmoe::kernels {

enum class MergeType { kF32, kBF16, kF16 };

inline int64_t merge_type_size(MergeType t) { return t == MergeType::kF32 ? 4 : 2; }

// One input tensor as stored (n elements, contiguous).
struct MergeInput {
  const void* data = nullptr;
  MergeType type = MergeType::kF32;
};

struct MergeCombine {
  enum class Method { kLinear, kTaskArithmetic };
  Method method = Method::kLinear;
  int64_t n = 0;                   // elements of every tensor
  MergeInput base;                 // task arithmetic only
  std::vector<MergeInput> xs;      // the models (besides the base)
  std::vector<double> weights;     // per model, rounded to float32 as libtorch does
  bool normalize = false;
  double lambda = 1.0;             // task arithmetic
  bool consensus = false;          // TIES sign election + disjoint mean
  // mergekit's `dtype`: every input is rounded to it before the float32 math
  // (a no-op where it is the input's own type or float32).
  MergeType round_inputs = MergeType::kF32;
  // A magnitude mask per model (empty: none): entry e of model i is kept when
  // |x_i - base| > keep[i].threshold, or equals it and e <= keep[i].tie_cut,
  // compared as float32 bits (NaN above inf). {0, n} keeps everything.
  struct Keep {
    uint32_t threshold_bits = 0;
    int64_t tie_cut = -1;
  };
  std::vector<Keep> keep;
  void* out = nullptr;
  MergeType out_type = MergeType::kF32;
};

// Runs `a` on the active ISA (FINMOE_ISA), or on `isa` (tests). Throws
// finmoe::Error on inconsistent arguments or an ISA this CPU cannot run.
void merge_combine(const MergeCombine& a);
void merge_combine_isa(Isa isa, const MergeCombine& a);

// TIES' magnitude selection of one model: the k largest |x - base| (after the
// input rounding of `round_inputs`), as a threshold and tie cut for
// MergeCombine::keep. Exact: entries above the k-th largest magnitude are all
// kept, and of those equal to it the ones with the lowest indices (the
// order of a stable descending sort). 1 <= k <= n.
MergeCombine::Keep magnitude_keep(MergeInput x, MergeInput base, int64_t n, int64_t k,
                                  MergeType round_inputs);
// max_candidates (tests): the most entries of the threshold's high-bits bin
// held in memory (-1: 2^24); a larger bin takes two more passes instead.
MergeCombine::Keep magnitude_keep_isa(Isa isa, MergeInput x, MergeInput base, int64_t n,
                                      int64_t k, MergeType round_inputs,
                                      int64_t max_candidates = -1);

}  // namespace finmoe::kernels
