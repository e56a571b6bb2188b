// MergeTable compiled for the scalar path (see merge_kernels_isa.h).
#include <cstddef>
#include <cstdint>

#include "kernels/merge_kernels_isa.h"

namespace finmoe::kernels {
namespace {
#include "kernels/merge_kernels_impl.inc"
}  // namespace

const MergeTable& merge_scalar() { return kTable; }

}  // namespace finmoe::kernels
