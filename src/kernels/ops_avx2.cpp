// OpsTable compiled for the avx2 path (see ops_isa.h).
#include <cstddef>
#include <cstdint>

#include "kernels/ops_isa.h"

namespace finmoe::kernels {
namespace {
#include "kernels/ops_impl.inc"
}  // namespace

const OpsTable& ops_avx2() { return kTable; }

}  // namespace finmoe::kernels
