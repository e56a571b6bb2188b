// linear_bf16 / linear_f32 on every ISA path the CPU has, against a
// double-precision reference computed here, over decode-sized shapes
// (including K, N that are not multiples of any vector width).
#include "kernels/linear.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "finmoe/error.h"
#include "kernels/cpu_features.h"
#include "kernels/isa.h"
#include "kernels/linear_isa.h"

namespace finmoe::kernels {
namespace {

const int64_t kMs[] = {1, 2, 3, 4, 7, 16, 17, 32};
const int64_t kKs[] = {1, 15, 32, 96, 896, 4864, 1000};
const int64_t kNs[] = {1, 5, 16, 896, 1003};
// |y - ref| <= kRelTol * (|bias| + sum_k |x_k w_k|): float32 accumulation over K <= 4864 terms.
constexpr double kRelTol = 1e-5;
constexpr float kSentinel = -12345.f;

// bf16 rounding done with frexp/nearbyint (ties to even), not with bit tricks as the kernels do.
double round_to_bf16(double v) {
  if (v == 0 || !std::isfinite(v)) return v;
  int e = 0;
  std::frexp(v, &e);                                               // v = f * 2^e, 0.5 <= |f| < 1
  return std::ldexp(std::nearbyint(std::ldexp(v, 8 - e)), e - 8);  // keep 8 significant bits
}

uint16_t bits_of_bf16(double rounded) {
  const float f = static_cast<float>(rounded);  // exact: rounded has 8 significant bits
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>(u >> 16);
}

// Weights (and bias) of one [N, K] layer; for bf16 layers w_f32 holds the bf16 values.
struct Layer {
  std::vector<uint16_t> w_bf16;  // [N, K]
  std::vector<float> w_f32;      // [N, K]
  std::vector<double> w_ref;     // [N, K] what the reference multiplies
  std::vector<float> bias;       // [N]
};

struct Problem {
  const Layer* layer;
  std::vector<float> x;       // [M, K]
  std::vector<double> dot;    // [M, N] sum_k x w, in double
  std::vector<double> scale;  // [M, N] sum_k |x w|
};

const Layer& layer(bool bf16, int64_t K, int64_t N) {
  static std::map<std::tuple<bool, int64_t, int64_t>, Layer> cache;
  const auto key = std::make_tuple(bf16, K, N);
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  Layer l;
  std::mt19937 rng(static_cast<uint32_t>(K * 1009 + N * 7 + bf16));
  std::uniform_real_distribution<float> wd(-0.1f, 0.1f), bd(-1.f, 1.f);
  l.w_bf16.resize(size_t(N * K));
  l.w_f32.resize(size_t(N * K));
  l.w_ref.resize(size_t(N * K));
  for (size_t i = 0; i < l.w_f32.size(); ++i) {
    const float v = wd(rng);
    const double r = round_to_bf16(v);
    l.w_bf16[i] = bits_of_bf16(r);
    l.w_f32[i] = bf16 ? static_cast<float>(r) : v;
    l.w_ref[i] = l.w_f32[i];
  }
  l.bias.resize(size_t(N));
  for (auto& v : l.bias) v = bd(rng);
  return cache.emplace(key, std::move(l)).first->second;
}

// Deterministic data for one shape; the reference uses bf16-rounded x when `bf16`.
const Problem& problem(bool bf16, int64_t M, int64_t K, int64_t N) {
  static std::map<std::tuple<bool, int64_t, int64_t, int64_t>, Problem> cache;
  const auto key = std::make_tuple(bf16, M, K, N);
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  Problem p;
  p.layer = &layer(bf16, K, N);
  std::mt19937 rng(static_cast<uint32_t>(M * 1000003 + K));
  std::uniform_real_distribution<float> xd(-2.f, 2.f);
  p.x.resize(size_t(M * K));
  for (auto& v : p.x) v = xd(rng);
  std::vector<double> xr(p.x.size());  // the x the reference multiplies
  for (size_t i = 0; i < p.x.size(); ++i) xr[i] = bf16 ? round_to_bf16(p.x[i]) : p.x[i];
  p.dot.resize(size_t(M * N));
  p.scale.resize(size_t(M * N));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      const double* xm = xr.data() + m * K;
      const double* w = p.layer->w_ref.data() + n * K;
      double s0 = 0, s1 = 0, a0 = 0, a1 = 0;  // two chains: double has precision to spare
      int64_t k = 0;
      for (; k + 2 <= K; k += 2) {
        const double t0 = xm[k] * w[k], t1 = xm[k + 1] * w[k + 1];
        s0 += t0;
        s1 += t1;
        a0 += std::fabs(t0);
        a1 += std::fabs(t1);
      }
      if (k < K) {
        s0 += xm[k] * w[k];
        a0 += std::fabs(xm[k] * w[k]);
      }
      p.dot[size_t(m * N + n)] = s0 + s1;
      p.scale[size_t(m * N + n)] = a0 + a1;
    }
  return cache.emplace(key, std::move(p)).first->second;
}

// Runs one shape and checks every output and the guard cells after y.
void check_shape(Isa isa, bool bf16, int64_t M, int64_t K, int64_t N, bool with_bias) {
  SCOPED_TRACE(std::string(bf16 ? "bf16" : "f32") + " M=" + std::to_string(M) + " K=" +
               std::to_string(K) + " N=" + std::to_string(N) + (with_bias ? " bias" : " no-bias"));
  const Problem& p = problem(bf16, M, K, N);
  const int64_t guard = 64;
  std::vector<float> y(size_t(M * N + guard), kSentinel);
  const Layer& l = *p.layer;
  const float* bias = with_bias ? l.bias.data() : nullptr;
  if (bf16)
    linear_bf16_isa(isa, p.x.data(), M, K, l.w_bf16.data(), N, bias, y.data());
  else
    linear_f32_isa(isa, p.x.data(), M, K, l.w_f32.data(), N, bias, y.data());
  for (int64_t i = 0; i < M * N; ++i) {
    const double b = with_bias ? l.bias[size_t(i % N)] : 0.0;
    const double ref = b + p.dot[size_t(i)];
    const double tol = kRelTol * (std::fabs(b) + p.scale[size_t(i)]) + 1e-30;
    ASSERT_LE(std::fabs(y[size_t(i)] - ref), tol)
        << "y[" << i / N << "," << i % N << "] = " << y[size_t(i)] << ", reference " << ref;
  }
  for (int64_t i = M * N; i < M * N + guard; ++i)
    ASSERT_EQ(y[size_t(i)], kSentinel) << "wrote past y";
}

class LinearIsa : public ::testing::TestWithParam<Isa> {
 protected:
  void SetUp() override {
    if (!cpu_runs(GetParam()))
      GTEST_SKIP() << "this CPU lacks the " << isa_name(GetParam()) << " path";
  }
};

TEST_P(LinearIsa, Bf16MatchesDoubleReferenceOnBf16RoundedX) {
  for (int64_t M : kMs)
    for (int64_t K : kKs)
      for (int64_t N : kNs)
        for (bool b : {false, true}) {
          check_shape(GetParam(), true, M, K, N, b);
          if (HasFatalFailure()) return;
        }
}

// Prefill-sized M: every path switches to its tiled GEMM (panels of 8-32
// columns, tiles of 6-12 rows); odd K exercises the zero-padded last k pair
// of avx512_bf16 and the k tails of the panel transposes.
TEST_P(LinearIsa, Bf16ManyRowsMatchDoubleReference) {
  for (int64_t M : {33, 64, 131, 600})
    for (int64_t K : {1, 31, 896, 1001})
      for (int64_t N : {1, 5, 33, 1003})
        for (bool b : {false, true}) {
          check_shape(GetParam(), true, M, K, N, b);
          if (HasFatalFailure()) return;
        }
}

// Past kGemmRowBlock (512) rows a product splits into row blocks per panel.
TEST_P(LinearIsa, F32ManyRowsMatchDoubleReference) {
  for (int64_t M : {32, 45, 600})
    for (int64_t K : {1, 31, 896})
      for (int64_t N : {1, 17, 33, 1003})
        for (bool b : {false, true}) {
          check_shape(GetParam(), false, M, K, N, b);
          if (HasFatalFailure()) return;
        }
}

TEST_P(LinearIsa, F32MatchesDoubleReference) {
  for (int64_t M : kMs)
    for (int64_t K : kKs)
      for (int64_t N : kNs)
        for (bool b : {false, true}) {
          check_shape(GetParam(), false, M, K, N, b);
          if (HasFatalFailure()) return;
        }
}

TEST_P(LinearIsa, EmptyInnerDimensionGivesBias) {
  const float bias[3] = {1.f, -2.f, 3.f};
  std::vector<float> y(6, kSentinel);
  linear_bf16_isa(GetParam(), nullptr, 2, 0, nullptr, 3, bias, y.data());
  EXPECT_EQ(y, (std::vector<float>{1.f, -2.f, 3.f, 1.f, -2.f, 3.f}));
  linear_f32_isa(GetParam(), nullptr, 2, 0, nullptr, 3, nullptr, y.data());
  EXPECT_EQ(y, std::vector<float>(6, 0.f));
}

TEST_P(LinearIsa, Bf16RoundsXToNearestEven) {
  // x = 1 + 2^-8 is halfway between bf16 1 and 1 + 2^-7: ties to even -> 1.
  // x = 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties to even -> 1 + 2^-6.
  const float x[2] = {1.f + 1.f / 256, 1.f + 3.f / 256};
  const uint16_t w[1] = {0x3f80};  // 1.0
  float y[2] = {0, 0};
  linear_bf16_isa(GetParam(), x, 2, 1, w, 1, nullptr, y);
  EXPECT_EQ(y[0], 1.f);
  EXPECT_EQ(y[1], 1.f + 1.f / 64);
}

INSTANTIATE_TEST_SUITE_P(Paths, LinearIsa,
                         ::testing::Values(Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kAvx512Bf16),
                         [](const auto& info) { return std::string(isa_name(info.param)); });

// The avx512_bf16 products with AMX tiles off (the vector kernels, which
// CPUs without AMX run and AMX takes rows left over from) and on (a CPU with
// AMX), at the edges of the tiles' blocks: M = 4 (vector few-row kernels on
// either), 5 .. 95 (on AMX W read in place, 16 or 32 rows of it against 1 or
// 2 blocks of x at a time, 32 rows of x a chunk, W's last rows below 16
// copied), 96, 530 and 600 (the GEMM: W packed per panel, a 512-row block then
// 18 or 88 rows); K from 1 to 1001, its last k step partial or whole. On AMX
// also with the GEMM from 32 rows and with W in place at every row count.
enum class Tiles { kVector, kAmx, kAmxGemmFrom32, kAmxInPlace };

std::string tiles_name(Tiles t) {
  switch (t) {
    case Tiles::kVector:
      return "vector";
    case Tiles::kAmx:
      return "amx";
    case Tiles::kAmxGemmFrom32:
      return "amx_gemm_from_32";
    case Tiles::kAmxInPlace:
      return "amx_in_place";
  }
  return "";
}

class GemmTiles : public ::testing::TestWithParam<Tiles> {
 protected:
  void SetUp() override {
    if (!cpu_runs(Isa::kAvx512Bf16)) GTEST_SKIP() << "this CPU lacks the avx512_bf16 path";
    if (GetParam() != Tiles::kVector && !cpu_features().amx_bf16)
      GTEST_SKIP() << "this CPU (or OS) has no AMX tiles";
    was_ = gemm_amx();
    rows_was_ = amx_gemm_min_rows();
    set_gemm_amx(GetParam() != Tiles::kVector);
    if (GetParam() == Tiles::kAmxGemmFrom32) set_amx_gemm_min_rows(kGemmMinRows);
    if (GetParam() == Tiles::kAmxInPlace) set_amx_gemm_min_rows(INT32_MAX);
  }
  void TearDown() override {
    set_gemm_amx(was_);
    set_amx_gemm_min_rows(rows_was_);
  }

 private:
  bool was_ = false;
  int64_t rows_was_ = 0;
};

TEST_P(GemmTiles, Bf16RowBlocksMatchDoubleReference) {
  ASSERT_EQ(gemm_amx(), GetParam() != Tiles::kVector);
  for (int64_t M : {4, 5, 8, 15, 16, 17, 24, 31, 32, 47, 48, 63, 80, 95, 96, 530, 600})
    for (int64_t K : {1, 32, 33, 64, 152, 896, 1001})
      for (int64_t N : {1, 33, 1003})
        for (bool b : {false, true}) {
          check_shape(Isa::kAvx512Bf16, true, M, K, N, b);
          if (HasFatalFailure()) return;
        }
}

INSTANTIATE_TEST_SUITE_P(Avx512Bf16, GemmTiles,
                         ::testing::Values(Tiles::kVector, Tiles::kAmx, Tiles::kAmxGemmFrom32,
                                           Tiles::kAmxInPlace),
                         [](const auto& info) { return tiles_name(info.param); });

TEST(GemmTiles, AreOnlyWhereTheCpuHasThem) {
  const bool was = gemm_amx();
  set_gemm_amx(true);
  EXPECT_EQ(gemm_amx(), cpu_features().amx_bf16);
  if (cpu_features().amx_bf16) {
    EXPECT_TRUE(cpu_features().avx512_bf16);
  }
  set_gemm_amx(false);
  EXPECT_FALSE(gemm_amx());
  set_gemm_amx(was);
}

TEST(Linear, PublicEntryPointsUseTheActivePath) {
  const Problem& p = problem(true, 3, 896, 1003);
  std::vector<float> y(3 * 1003), y_isa(3 * 1003);
  linear_bf16(p.x.data(), 3, 896, p.layer->w_bf16.data(), 1003, p.layer->bias.data(), y.data());
  linear_bf16_isa(active_isa(), p.x.data(), 3, 896, p.layer->w_bf16.data(), 1003,
                  p.layer->bias.data(), y_isa.data());
  EXPECT_EQ(y, y_isa);
  const Problem& q = problem(false, 2, 1000, 5);
  std::vector<float> z(2 * 5), z_isa(2 * 5);
  linear_f32(q.x.data(), 2, 1000, q.layer->w_f32.data(), 5, nullptr, z.data());
  linear_f32_isa(active_isa(), q.x.data(), 2, 1000, q.layer->w_f32.data(), 5, nullptr,
                 z_isa.data());
  EXPECT_EQ(z, z_isa);
}

// Threads claim row chunks dynamically (and steal from each other), so which
// thread computes a row, and in which range, changes from call to call; the
// result must not.
TEST(Linear, ResultsDoNotDependOnTheSchedule) {
  for (const int64_t M : {1, 3}) {
    const Problem& p = problem(true, M, 896, 1003);
    std::vector<float> first(size_t(M * 1003)), y(first.size());
    linear_bf16(p.x.data(), M, 896, p.layer->w_bf16.data(), 1003, p.layer->bias.data(),
                first.data());
    for (int rep = 0; rep < 50; ++rep) {
      linear_bf16(p.x.data(), M, 896, p.layer->w_bf16.data(), 1003, p.layer->bias.data(),
                  y.data());
      ASSERT_EQ(y, first) << "M=" << M << " call " << rep;
    }
  }
}

TEST(Linear, RejectsNegativeShapesAndMissingBuffers) {
  float y[4];
  EXPECT_THROW(linear_f32(nullptr, -1, 4, nullptr, 1, nullptr, y), Error);
  EXPECT_THROW(linear_bf16(nullptr, 1, 4, nullptr, 1, nullptr, y), Error);
}

TEST(Linear, Bf16ConversionRoundsToNearestEvenAndKeepsSpecials) {
  EXPECT_EQ(float_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(float_to_bf16(-2.0f), 0xc000);
  uint32_t u = 0x3f808000;  // exactly halfway, even neighbour below
  float f;
  std::memcpy(&f, &u, 4);
  EXPECT_EQ(float_to_bf16(f), 0x3f80);
  u = 0x3f818000;  // halfway, even neighbour above
  std::memcpy(&f, &u, 4);
  EXPECT_EQ(float_to_bf16(f), 0x3f82);
  u = 0x3f808001;  // just above halfway
  std::memcpy(&f, &u, 4);
  EXPECT_EQ(float_to_bf16(f), 0x3f81);
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::max()), 0x7f80);  // rounds up to inf
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  u = 0x7f800001;  // signalling NaN whose payload sits in the dropped half
  std::memcpy(&f, &u, 4);
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(f))));
  EXPECT_EQ(bf16_to_float(0x4049), 3.140625f);
}

}  // namespace
}  // namespace finmoe::kernels

namespace finmoe::kernels {
namespace {

// bf16 bits of a float (round to nearest even), for building test weights.
uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return uint16_t((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

TEST(LinearGroup, EqualsSeparateLinearsForEveryOutputAndDtype) {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int64_t M : {1, 3, 16}) {
    const int64_t K = 77;                                // not a multiple of 32
    const std::vector<int64_t> Ns = {40, 19, 128};       // q/k/v-like, odd sizes
    std::vector<std::vector<uint16_t>> W, B;
    for (int64_t N : Ns) {
      W.emplace_back(size_t(N * K));
      B.emplace_back(size_t(N));
      for (auto& w : W.back()) w = to_bf16(0.2f * nd(rng));
      for (auto& b : B.back()) b = to_bf16(nd(rng));
    }
    std::vector<uint16_t> x(size_t(M * K));
    for (auto& v : x) v = to_bf16(nd(rng));
    for (ElemType y_t : {ElemType::kBF16, ElemType::kF32}) {
      const size_t es = y_t == ElemType::kF32 ? 4 : 2;
      std::vector<std::vector<char>> got(Ns.size()), want(Ns.size());
      std::vector<LinearOutput> outs;
      for (size_t i = 0; i < Ns.size(); ++i) {
        got[i].assign(size_t(M * Ns[i]) * es, 0);
        want[i].assign(size_t(M * Ns[i]) * es, 0);
        // the middle output without a bias
        outs.push_back({W[i].data(), Ns[i], i == 1 ? nullptr : B[i].data(), got[i].data()});
        linear(ElemType::kBF16, x.data(), M, K, ElemType::kBF16, W[i].data(), Ns[i],
               i == 1 ? nullptr : B[i].data(), y_t, want[i].data());
      }
      linear_group(ElemType::kBF16, x.data(), M, K, ElemType::kBF16, outs, y_t);
      for (size_t i = 0; i < Ns.size(); ++i)
        EXPECT_EQ(got[i], want[i]) << "M=" << M << " output " << i
                                   << (y_t == ElemType::kF32 ? " f32" : " bf16");
    }
  }
}

// A batch of products with their own x, M and W (grouped expert GEMMs, few-row
// and many-row products mixed) gives exactly what separate linear() calls
// give, on every path, for both weight dtypes and both result dtypes.
class LinearBatchIsa : public ::testing::TestWithParam<Isa> {
 protected:
  void SetUp() override {
    if (!cpu_runs(GetParam())) GTEST_SKIP() << "this CPU lacks the " << isa_name(GetParam()) << " path";
  }
};

TEST_P(LinearBatchIsa, EqualsSeparateLinearsBitForBit) {
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int64_t K = 200, N = 37;
  const std::vector<int64_t> Ms = {1, 0, 5, 40, 2, 600, 16, 33};  // an expert with no tokens too
  for (ElemType w_t : {ElemType::kBF16, ElemType::kF32})
    for (ElemType y_t : {ElemType::kBF16, ElemType::kF32}) {
      const size_t ws = w_t == ElemType::kF32 ? 4 : 2, ys = y_t == ElemType::kF32 ? 4 : 2;
      std::vector<std::vector<char>> X, W, B, got, want;
      std::vector<LinearProduct> products;
      for (int64_t M : Ms) {
        X.emplace_back(size_t(M * K) * ws);
        W.emplace_back(size_t(N * K) * ws);
        B.emplace_back(size_t(N) * ws);
        for (auto* buf : {&X.back(), &W.back(), &B.back()})
          for (size_t i = 0; i < buf->size() / ws; ++i) {
            const float v = 0.5f * nd(rng);
            if (w_t == ElemType::kF32)
              std::memcpy(buf->data() + 4 * i, &v, 4);
            else
              reinterpret_cast<uint16_t*>(buf->data())[i] = to_bf16(v);
          }
        got.emplace_back(size_t(M * N) * ys, 0);
        want.emplace_back(size_t(M * N) * ys, 0);
      }
      for (size_t i = 0; i < Ms.size(); ++i) {
        const void* bias = i % 3 == 1 ? nullptr : B[i].data();
        products.push_back({X[i].data(), Ms[i], W[i].data(), N, bias, got[i].data()});
        linear_isa(GetParam(), w_t, X[i].data(), Ms[i], K, w_t, W[i].data(), N, bias, y_t,
                   want[i].data());
      }
      linear_batch_isa(GetParam(), w_t, K, w_t, products, y_t);
      for (size_t i = 0; i < Ms.size(); ++i)
        EXPECT_EQ(got[i], want[i]) << "product " << i << " M=" << Ms[i]
                                   << (w_t == ElemType::kF32 ? " f32 W" : " bf16 W")
                                   << (y_t == ElemType::kF32 ? " f32 y" : " bf16 y");
    }
}

INSTANTIATE_TEST_SUITE_P(Paths, LinearBatchIsa,
                         ::testing::Values(Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kAvx512Bf16),
                         [](const auto& info) { return std::string(isa_name(info.param)); });

// Every path's GEMM rounds a bf16 result once from its float32 sum: the bf16
// output equals the float32 output rounded to nearest even.
TEST_P(LinearBatchIsa, GemmBf16ResultsAreTheFloat32ResultsRounded) {
  const Problem& p = problem(true, 70, 896, 1003);
  std::vector<uint16_t> xb(p.x.size()), wb = p.layer->w_bf16;
  for (size_t i = 0; i < xb.size(); ++i) xb[i] = float_to_bf16(p.x[i]);
  std::vector<float> y32(70 * 1003);
  std::vector<uint16_t> y16(70 * 1003);
  linear_isa(GetParam(), ElemType::kBF16, xb.data(), 70, 896, ElemType::kBF16, wb.data(), 1003,
             nullptr, ElemType::kF32, y32.data());
  linear_isa(GetParam(), ElemType::kBF16, xb.data(), 70, 896, ElemType::kBF16, wb.data(), 1003,
             nullptr, ElemType::kBF16, y16.data());
  for (size_t i = 0; i < y16.size(); ++i) {
    if (std::fabs(y32[i]) < 1e-37f) continue;  // avx512_bf16 flushes denormal results
    ASSERT_EQ(y16[i], float_to_bf16(y32[i])) << "element " << i;
  }
}

}  // namespace
}  // namespace finmoe::kernels
