#include "kernels/cpu_features.h"

#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "finmoe/error.h"
#include "kernels/isa.h"
#include "kernels/linear_isa.h"

namespace finmoe::kernels {
namespace {

// XCR0 via xgetbv, written as inline asm so this file needs no -mxsave.
uint64_t read_xcr0() {
  uint32_t eax = 0, edx = 0;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (uint64_t{edx} << 32) | eax;
}

// Linux hands a process the AMX tile data (8 KiB more per thread's saved
// state) only on request; without it the first tile instruction faults.
bool request_tile_data() {
#if defined(__linux__)
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

CpuFeatures detect() {
  CpuFeatures f;
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid(0, &a, &b, &c, &d))  // vendor string in ebx, edx, ecx
    f.intel = b == 0x756e6547u && d == 0x49656e69u && c == 0x6c65746eu;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = (c >> 27) & 1;
  const bool fma = (c >> 12) & 1;
  const bool f16c = (c >> 29) & 1;
  if (!osxsave) return f;  // the OS does not save YMM/ZMM state: no AVX at all
  const uint64_t xcr0 = read_xcr0();
  const bool os_ymm = (xcr0 & 0x6) == 0x6;    // XMM | YMM
  const bool os_zmm = (xcr0 & 0xe6) == 0xe6;  // + opmask, ZMM_Hi256, Hi16_ZMM
  if (!os_ymm) return f;
  f.fma = fma;
  f.f16c = f16c;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return f;
  f.avx2 = (b >> 5) & 1;
  if (os_zmm) {
    f.avx512f = (b >> 16) & 1;
    f.avx512bw = (b >> 30) & 1;
    f.avx512vl = (b >> 31) & 1;
    f.avx512dq = (b >> 17) & 1;
    f.avx512_vnni = (c >> 11) & 1;
    unsigned a1 = 0, b1 = 0, c1 = 0, d1 = 0;
    if (__get_cpuid_count(7, 1, &a1, &b1, &c1, &d1)) f.avx512_bf16 = (a1 >> 5) & 1;
    const bool amx = ((d >> 22) & 1) && ((d >> 24) & 1);  // AMX-BF16, AMX-TILE
    const bool os_tiles = (xcr0 & 0x60000) == 0x60000;      // XTILECFG, XTILEDATA
    f.amx_bf16 = f.avx512_bf16 && amx && os_tiles && request_tile_data();
  }
  return f;
}

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = detect();
  return features;
}

Isa best_isa(const CpuFeatures& f) {
  if (!(f.avx2 && f.fma && f.f16c)) return Isa::kScalar;
  if (!(f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq)) return Isa::kAvx2;
  if (!(f.avx512_bf16 && f.avx512_vnni)) return Isa::kAvx512;
  return Isa::kAvx512Bf16;
}

Isa select_isa(const CpuFeatures& f, const char* request) {
  const Isa best = best_isa(f);
  if (request == nullptr || *request == '\0') return best;
  Isa wanted = Isa::kScalar;
  bool known = false;
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kAvx512Bf16})
    if (std::strcmp(request, isa_name(isa)) == 0) {
      wanted = isa;
      known = true;
    }
  if (!known)
    throw Error(std::string("FINMOE_ISA: unknown value '") + request +
                "', expected scalar, avx2, avx512 or avx512_bf16");
  if (static_cast<int>(wanted) > static_cast<int>(best))
    throw Error(std::string("FINMOE_ISA=") + request + ": this CPU cannot run that path (its best is " +
                isa_name(best) + "); unset FINMOE_ISA or ask for a lower one");
  return wanted;
}

Isa active_isa() {
  static const Isa isa = select_isa(cpu_features(), std::getenv("FINMOE_ISA"));
  return isa;
}

bool cpu_runs(Isa isa) { return static_cast<int>(isa) <= static_cast<int>(best_isa(cpu_features())); }

void require_isa(Isa isa) {
  if (!cpu_runs(isa))
    throw Error(std::string("kernels: this CPU cannot run the ") + isa_name(isa) + " path");
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512Bf16:
      return "avx512_bf16";
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kScalar:
      break;
  }
  return "scalar";
}

const char* isa_name() { return isa_name(active_isa()); }

bool gemm_on_amx() { return active_isa() == Isa::kAvx512Bf16 && gemm_amx(); }

const char* path_name() { return gemm_on_amx() ? "avx512_bf16+amx" : isa_name(); }

}  // namespace finmoe::kernels
