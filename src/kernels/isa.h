#pragma once
// Which instruction-set path the kernels take. Internal to the kernels layer
// (and its tests); users see only isa_name().
#include "kernels/cpu_features.h"

namespace finmoe::kernels {

// Ordered: a larger value needs more of the CPU.
//   kScalar      baseline x86-64 (SSE2)
//   kAvx2        AVX2 + FMA + F16C (Haswell and later, Zen 1-3)
//   kAvx512      + AVX-512 F/BW/VL/DQ (Skylake-SP, Cascade/Ice Lake): float32 FMA
//                kernels, bf16 weights widened in registers
//   kAvx512Bf16  + AVX-512 BF16 and VNNI (Zen 4, Sapphire Rapids): vdpbf16ps
// Translation units named *_avx2.cpp, *_avx512.cpp and *_avx512bf16.cpp are
// compiled for their level (CMakeLists.txt) and only called at or above it.
enum class Isa { kScalar = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3 };

// The fastest path `f` supports.
Isa best_isa(const CpuFeatures& f);
// The path `request` names ("scalar", "avx2", "avx512", "avx512_bf16"; null or
// "" = best_isa(f)). Throws finmoe::Error naming FINMOE_ISA for an unknown
// value or a path this CPU cannot run (never a SIGILL later).
Isa select_isa(const CpuFeatures& f, const char* request);
// select_isa(cpu_features(), getenv("FINMOE_ISA")), read once per process.
Isa active_isa();
const char* isa_name(Isa isa);
// Whether this CPU runs `isa`; kernels throw finmoe::Error through require_isa otherwise.
bool cpu_runs(Isa isa);
void require_isa(Isa isa);

}  // namespace finmoe::kernels
