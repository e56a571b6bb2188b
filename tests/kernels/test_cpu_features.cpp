// ISA selection: FINMOE_ISA can only lower the path, and unknown values are errors.
#include <gtest/gtest.h>

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

CpuFeatures zen4_like() {
  CpuFeatures f = avx2_only();
  f.avx512f = f.avx512bw = f.avx512vl = f.avx512_bf16 = f.avx512_vnni = true;
  return f;
}

TEST(CpuFeatures, BestPathNeedsEveryFeatureItUses) {
  EXPECT_EQ(best_isa(CpuFeatures{}), Isa::kScalar);
  EXPECT_EQ(best_isa(avx2_only()), Isa::kAvx2);
  EXPECT_EQ(best_isa(zen4_like()), Isa::kAvx512);
  CpuFeatures no_bf16 = zen4_like();
  no_bf16.avx512_bf16 = false;
  EXPECT_EQ(best_isa(no_bf16), Isa::kAvx2);
  CpuFeatures no_fma = avx2_only();
  no_fma.fma = false;
  EXPECT_EQ(best_isa(no_fma), Isa::kScalar);
}

TEST(CpuFeatures, RequestOnlyLowersThePath) {
  EXPECT_EQ(select_isa(zen4_like(), nullptr), Isa::kAvx512);
  EXPECT_EQ(select_isa(zen4_like(), ""), Isa::kAvx512);
  EXPECT_EQ(select_isa(zen4_like(), "avx2"), Isa::kAvx2);
  EXPECT_EQ(select_isa(zen4_like(), "scalar"), Isa::kScalar);
  EXPECT_EQ(select_isa(avx2_only(), "avx512"), Isa::kAvx2);
  EXPECT_EQ(select_isa(CpuFeatures{}, "avx2"), Isa::kScalar);
}

TEST(CpuFeatures, UnknownRequestIsAnErrorNamingTheVariable) {
  try {
    select_isa(zen4_like(), "sse9");
    FAIL() << "no exception";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("FINMOE_ISA"), std::string::npos) << e.what();
  }
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
