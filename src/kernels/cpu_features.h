#pragma once
// Runtime CPU feature detection (cpuid + OS support via xgetbv). ISA-specific
// kernels are compiled in their own translation units (*_avx512.cpp,
// *_avx2.cpp) and only called when these flags say the CPU runs them.
namespace finmoe::kernels {

struct CpuFeatures {
  bool avx2 = false;
  bool fma = false;
  bool f16c = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512dq = false;
  bool avx512_bf16 = false;
  bool avx512_vnni = false;
  // AMX tiles with bf16 dot products, the OS saving their state (XCR0) and
  // having granted this process the tile data (arch_prctl, Linux 5.16+).
  bool amx_bf16 = false;
  bool intel = false;  // cpuid vendor "GenuineIntel" (a measured per-vendor kernel choice)
};

const CpuFeatures& cpu_features();
// "avx512_bf16", "avx512", "avx2" or "scalar": the path the kernels take on
// this CPU (FINMOE_ISA=scalar|avx2|avx512|avx512_bf16 in the environment picks
// a lower one, to run another CPU's path here).
const char* isa_name();
// Whether the active path's many-row bf16 GEMM runs on AMX tiles (avx512_bf16
// on a CPU with AMX, FINMOE_AMX not 0).
bool gemm_on_amx();
// isa_name(), with "+amx" where gemm_on_amx(): for logs and benchmark headers.
const char* path_name();

}  // namespace finmoe::kernels
