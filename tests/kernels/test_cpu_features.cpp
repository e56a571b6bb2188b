// ISA selection: FINMOE_ISA picks a path the CPU runs; unknown values and paths
// the CPU lacks are errors naming the variable (never a SIGILL later).
#include <gtest/gtest.h>

#include <fstream>
#include <string>

#include "finmoe/error.h"
#include "kernels/cpu_features.h"
#include "kernels/isa.h"

namespace finmoe::kernels {
namespace {

CpuFeatures avx2_only() {
  CpuFeatures f;
  f.avx2 = f.fma = f.f16c = true;
  return f;
}

CpuFeatures skylake_sp_like() {
  CpuFeatures f = avx2_only();
  f.avx512f = f.avx512bw = f.avx512vl = f.avx512dq = true;
  return f;
}

CpuFeatures zen4_like() {
  CpuFeatures f = skylake_sp_like();
  f.avx512_bf16 = f.avx512_vnni = true;
  return f;
}

void expect_error_naming(const CpuFeatures& f, const char* request, const char* word) {
  try {
    select_isa(f, request);
    ADD_FAILURE() << "no exception for FINMOE_ISA=" << request;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("FINMOE_ISA"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(word), std::string::npos) << e.what();
  }
}

TEST(CpuFeatures, IntelVendorAgreesWithProcCpuinfo) {
  std::ifstream info("/proc/cpuinfo");
  std::string line, vendor;
  while (vendor.empty() && std::getline(info, line))
    if (line.rfind("vendor_id", 0) == 0) vendor = line.substr(line.find(':') + 2);
  if (vendor.empty()) GTEST_SKIP() << "no vendor_id in /proc/cpuinfo";
  EXPECT_EQ(cpu_features().intel, vendor == "GenuineIntel") << vendor;
}

TEST(CpuFeatures, BestPathNeedsEveryFeatureItUses) {
  EXPECT_EQ(best_isa(CpuFeatures{}), Isa::kScalar);
  EXPECT_EQ(best_isa(avx2_only()), Isa::kAvx2);
  EXPECT_EQ(best_isa(skylake_sp_like()), Isa::kAvx512);
  EXPECT_EQ(best_isa(zen4_like()), Isa::kAvx512Bf16);
  CpuFeatures no_bf16 = zen4_like();
  no_bf16.avx512_bf16 = false;  // Cascade Lake / Ice Lake: VNNI without BF16
  EXPECT_EQ(best_isa(no_bf16), Isa::kAvx512);
  CpuFeatures no_dq = skylake_sp_like();
  no_dq.avx512dq = false;
  EXPECT_EQ(best_isa(no_dq), Isa::kAvx2);
  CpuFeatures no_fma = avx2_only();
  no_fma.fma = false;
  EXPECT_EQ(best_isa(no_fma), Isa::kScalar);
}

TEST(CpuFeatures, RequestPicksAnyPathTheCpuRuns) {
  EXPECT_EQ(select_isa(zen4_like(), nullptr), Isa::kAvx512Bf16);
  EXPECT_EQ(select_isa(zen4_like(), ""), Isa::kAvx512Bf16);
  EXPECT_EQ(select_isa(zen4_like(), "avx512_bf16"), Isa::kAvx512Bf16);
  EXPECT_EQ(select_isa(zen4_like(), "avx512"), Isa::kAvx512);
  EXPECT_EQ(select_isa(zen4_like(), "avx2"), Isa::kAvx2);
  EXPECT_EQ(select_isa(zen4_like(), "scalar"), Isa::kScalar);
  EXPECT_EQ(select_isa(skylake_sp_like(), "avx512"), Isa::kAvx512);
  EXPECT_EQ(select_isa(CpuFeatures{}, "scalar"), Isa::kScalar);
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kAvx512Bf16})
    EXPECT_EQ(select_isa(zen4_like(), isa_name(isa)), isa) << isa_name(isa);
}

TEST(CpuFeatures, RequestAboveTheCpuIsAnErrorNotASigill) {
  expect_error_naming(avx2_only(), "avx512", "cannot run");
  expect_error_naming(skylake_sp_like(), "avx512_bf16", "cannot run");
  expect_error_naming(CpuFeatures{}, "avx2", "cannot run");
}

TEST(CpuFeatures, UnknownRequestIsAnErrorNamingTheVariable) {
  expect_error_naming(zen4_like(), "sse9", "sse9");
  expect_error_naming(zen4_like(), "AVX2", "AVX2");
}

TEST(CpuFeatures, ActivePathIsOneThisCpuRuns) {
  const Isa isa = active_isa();
  EXPECT_LE(static_cast<int>(isa), static_cast<int>(best_isa(cpu_features())));
  EXPECT_EQ(std::string(isa_name()), isa_name(isa));
  // Detected flags are self-consistent: AVX-512 BF16 implies AVX-512F implies AVX2.
  const CpuFeatures& f = cpu_features();
  if (f.avx512_bf16) {
    EXPECT_TRUE(f.avx512f);
  }
  if (f.avx512f) {
    EXPECT_TRUE(f.avx2);
  }
}

}  // namespace
}  // namespace finmoe::kernels
