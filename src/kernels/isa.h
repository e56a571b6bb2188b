#pragma once
// Which instruction-set path the kernels take. Internal to the kernels layer
// (and its tests); users see only isa_name().
#include "kernels/cpu_features.h"

namespace finmoe::kernels {

// Ordered: a larger value needs more of the CPU.
enum class Isa { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

// The fastest path `f` supports (AVX-512 needs F/BW/VL/BF16/VNNI; AVX2 needs FMA and F16C).
Isa best_isa(const CpuFeatures& f);
// best_isa(f) lowered to `request` ("scalar", "avx2", "avx512"; null or "" = no request).
// Never raises the path above what `f` supports. Throws finmoe::Error on other values.
Isa select_isa(const CpuFeatures& f, const char* request);
// select_isa(cpu_features(), getenv("FINMOE_ISA")), read once per process.
Isa active_isa();
const char* isa_name(Isa isa);

}  // namespace finmoe::kernels
