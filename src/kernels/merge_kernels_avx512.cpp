// MergeTable compiled for the avx512 path (see merge_kernels_isa.h).
#include <cstddef>
#include <cstdint>

#include "kernels/merge_kernels_isa.h"

namespace finmoe::kernels {
namespace {
#include "kernels/merge_kernels_impl.inc"
}  // namespace

const MergeTable& merge_avx512() { return kTable; }

}  // namespace finmoe::kernels
