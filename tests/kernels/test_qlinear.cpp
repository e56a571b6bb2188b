// int8-weight products (kernels/qlinear.h) on every ISA path the CPU has,
// against references computed here in double precision:
// - few rows: the quantized math itself (x quantized per block of 32 exactly
//   as the spec says, then Σ_b d·s·Σ xq·q), so only float32 summation order
//   may differ;
// - many rows (the GEMM): x unquantized times the dequantized weights s·q;
// - weight quantization: every element within half a scale of the original.
#include "kernels/qlinear.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "finmoe/error.h"
#include "kernels/cpu_features.h"
#include "kernels/isa.h"
#include "kernels/linear.h"
#include "kernels/linear_isa.h"
#include "kernels/qlinear_isa.h"

namespace finmoe::kernels {
namespace {

constexpr double kRelTol = 1e-5;  // float32 sums of <= ~5000 terms, relative to Σ|terms|

double bf16_value(uint16_t b) {
  const uint32_t u = uint32_t{b} << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t bf16_bits(float f) {  // round to nearest even (finite inputs only)
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return uint16_t((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

std::string fmt_name(const Int8Format& f) {
  return std::string(f.group ? "group32" : "channel") +
         (f.scale_t == ElemType::kF32 ? "/f32" : "/bf16");
}

const Int8Format kFormats[] = {{0, ElemType::kF32},
                               {0, ElemType::kBF16},
                               {kInt8Group, ElemType::kF32},
                               {kInt8Group, ElemType::kBF16}};

// A quantized layer: q, raw scales, and the scales as doubles [N, per_row].
struct QLayer {
  Int8Format f;
  int64_t N = 0, K = 0, per_row = 0;
  std::vector<int8_t> q;
  std::vector<char> scale;
  std::vector<double> s;
  std::vector<float> bias;
  double s_at(int64_t n, int64_t k) const { return s[size_t(n * per_row + (f.group ? k / 32 : 0))]; }
};

QLayer make_layer(const Int8Format& f, int64_t N, int64_t K, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 0.05f);
  std::vector<float> w(size_t(N * K));
  for (auto& v : w) v = nd(rng);
  if (N > 2)
    for (int64_t k = 0; k < K; ++k) w[size_t(2 * K + k)] = 0.0f;  // an all-zero row
  QLayer l;
  l.f = f;
  l.N = N;
  l.K = K;
  l.per_row = int8_scales_per_row(f, K);
  l.q.resize(w.size());
  l.scale.resize(size_t(N * l.per_row) * elem_size(f.scale_t));
  quantize_int8(w.data(), N, K, f, l.q.data(), l.scale.data());
  for (int64_t i = 0; i < N * l.per_row; ++i)
    l.s.push_back(f.scale_t == ElemType::kF32 ? reinterpret_cast<const float*>(l.scale.data())[i]
                                              : bf16_value(reinterpret_cast<const uint16_t*>(l.scale.data())[i]));
  std::uniform_real_distribution<float> bd(-1.f, 1.f);
  for (int64_t n = 0; n < N; ++n) l.bias.push_back(bd(rng));
  return l;
}

// x quantized per block of 32 as qlinear.h specifies, computed independently.
struct RefQ8 {
  std::vector<int> q;     // [K] (padded to whole blocks with 0)
  std::vector<double> d;  // [blocks]
};
RefQ8 ref_quantize(const float* x, int64_t K) {
  RefQ8 r;
  const int64_t blocks = (K + 31) / 32;
  r.q.assign(size_t(blocks * 32), 0);
  for (int64_t b = 0; b < blocks; ++b) {
    float amax = 0;
    for (int64_t k = b * 32; k < std::min(K, b * 32 + 32); ++k) amax = std::max(amax, std::fabs(x[k]));
    const float inv = amax > 0 ? 127.0f / amax : 0.0f;
    for (int64_t k = b * 32; k < std::min(K, b * 32 + 32); ++k)
      r.q[size_t(k)] = int(std::nearbyint(x[k] * inv));  // float32 product, as specified
    r.d.push_back(double(amax / 127.0f));
  }
  return r;
}

std::vector<float> random_x(int64_t M, int64_t K, uint32_t seed, bool bf16_values) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(size_t(M * K));
  for (auto& v : x) v = bf16_values ? float(bf16_value(bf16_bits(nd(rng)))) : nd(rng);
  return x;
}

class Int8Isa : public ::testing::TestWithParam<Isa> {
 protected:
  void SetUp() override {
    if (!cpu_runs(GetParam())) GTEST_SKIP() << "this CPU lacks the " << isa_name(GetParam()) << " path";
  }

 public:
  // y [M, N] of one int8 product on this path, float32 or bf16 results widened.
  std::vector<double> run(ElemType x_t, const std::vector<float>& x, int64_t M, const QLayer& l,
                          bool bias, ElemType y_t) {
    std::vector<uint16_t> xb;
    const void* xp = x.data();
    std::vector<uint16_t> bb;
    const void* bp = bias ? static_cast<const void*>(l.bias.data()) : nullptr;
    if (x_t == ElemType::kBF16) {
      for (float v : x) xb.push_back(bf16_bits(v));
      xp = xb.data();
      for (float v : l.bias) bb.push_back(bf16_bits(v));
      if (bias) bp = bb.data();
    }
    const int64_t guard = 16;
    std::vector<char> y(size_t((M * l.N + guard) * elem_size(y_t)), char(0x5a));
    linear_int8_batch_isa(GetParam(), x_t, l.K, l.f,
                          {{xp, M, l.q.data(), l.N, bp, y.data(), l.scale.data()}}, y_t);
    for (size_t i = size_t(M * l.N * elem_size(y_t)); i < y.size(); ++i)
      EXPECT_EQ(y[i], char(0x5a)) << "wrote past y";
    std::vector<double> out;
    for (int64_t i = 0; i < M * l.N; ++i)
      out.push_back(y_t == ElemType::kF32 ? reinterpret_cast<const float*>(y.data())[i]
                                          : bf16_value(reinterpret_cast<const uint16_t*>(y.data())[i]));
    return out;
  }
};

// What a product computes (qlinear.h), by rows, ISA and activation type.
enum class Math {
  kQuantizedX,  // few rows: Σ_b d_b s_b Σ xq q, x quantized per block of 32
  kBf16W,       // bf16 x on avx512_bf16 from kInt8Bf16xMinRows rows: Σ x · bf16(s q)
  kExactW,      // many rows otherwise: Σ x · s q
};
Math math_of(Isa isa, ElemType x_t, int64_t M) {
  const bool bf16_dots = isa == Isa::kAvx512Bf16 && x_t == ElemType::kBF16;
  if (bf16_dots && M >= kInt8Bf16xMinRows) return Math::kBf16W;
  return M < kGemmMinRows ? Math::kQuantizedX : Math::kExactW;
}

// One product on this path against the double reference of its math.
void check(Int8Isa& t, const Int8Format& f, int64_t M, int64_t K, int64_t N, bool bias,
           ElemType x_t, ElemType y_t) {
  SCOPED_TRACE(fmt_name(f) + " M=" + std::to_string(M) + " K=" + std::to_string(K) + " N=" +
               std::to_string(N) + (bias ? " bias" : "") + (x_t == ElemType::kBF16 ? " x bf16" : "") +
               (y_t == ElemType::kBF16 ? " y bf16" : ""));
  const Math math = math_of(t.GetParam(), x_t, M);
  const QLayer l = make_layer(f, N, K, uint32_t(K * 31 + N));
  const auto x = random_x(M, K, uint32_t(M * 7 + K), x_t == ElemType::kBF16);
  const auto y = t.run(x_t, x, M, l, bias, y_t);
  const auto w = [&](int64_t n, int64_t k) {  // the weight the math multiplies
    const float v = float(l.s_at(n, k)) * float(l.q[size_t(n * K + k)]);
    return math == Math::kBf16W ? bf16_value(bf16_bits(v)) : double(v);
  };
  for (int64_t m = 0; m < M; ++m) {
    const RefQ8 r = ref_quantize(x.data() + m * K, K);
    for (int64_t n = 0; n < N; ++n) {
      double ref = 0, mag = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double term =
            math == Math::kQuantizedX
                ? r.d[size_t(k / 32)] * l.s_at(n, k) * r.q[size_t(k)] * l.q[size_t(n * K + k)]
                : double(x[size_t(m * K + k)]) * w(n, k);
        ref += term;
        mag += std::fabs(term);
      }
      const double b = bias ? (x_t == ElemType::kBF16 ? bf16_value(bf16_bits(l.bias[size_t(n)]))
                                                      : double(l.bias[size_t(n)]))
                            : 0.0;
      ref += b;
      double tol = kRelTol * (mag + std::fabs(b)) + 1e-30;
      if (y_t == ElemType::kBF16) tol += std::fabs(ref) * (1.0 / 256);  // one rounding to bf16
      ASSERT_LE(std::fabs(y[size_t(m * N + n)] - ref), tol)
          << "y[" << m << "," << n << "] = " << y[size_t(m * N + n)] << ", reference " << ref;
    }
  }
}

TEST_P(Int8Isa, FewRowsMatchDoubleReferenceOfTheQuantizedMath) {
  for (const Int8Format& f : kFormats)
    for (int64_t M : {1, 2, 3, 4, 5, 16, 31})
      for (int64_t K : {1, 31, 32, 33, 64, 100, 896, 1000})
        for (int64_t N : {1, 5, 19}) {
          check(*this, f, M, K, N, (M + N) % 2 == 0, ElemType::kF32, ElemType::kF32);
          if (HasFatalFailure()) return;
        }
}

// bf16 activations: quantized per block for a few rows; on avx512_bf16 from
// kInt8Bf16xMinRows rows the bf16 dot products of dequantized W.
TEST_P(Int8Isa, Bf16ActivationsAndBf16Results) {
  for (const Int8Format& f : kFormats)
    for (int64_t M : {int64_t{1}, int64_t{3}, kInt8Bf16xMinRows, int64_t{16}, int64_t{31}})
      for (int64_t K : {33, 896, 4864})
        for (ElemType y_t : {ElemType::kF32, ElemType::kBF16}) {
          check(*this, f, M, K, M < 16 ? 130 : 37, true, ElemType::kBF16, y_t);
          if (HasFatalFailure()) return;
        }
}

// Many rows (the tiled GEMMs): x unquantized times s·q, which avx512_bf16
// rounds to bf16 for bf16 x (its bf16 GEMM).
TEST_P(Int8Isa, ManyRowsMatchDoubleReferenceOfTheDequantizedWeights) {
  for (const Int8Format& f : kFormats)
    for (int64_t M : {32, 45, 300})
      for (int64_t K : {1, 31, 100, 896})
        for (int64_t N : {1, 17, 33, 70})
          for (ElemType x_t : {ElemType::kF32, ElemType::kBF16}) {
            check(*this, f, M, K, N, N % 2 == 1, x_t, ElemType::kF32);
            if (HasFatalFailure()) return;
          }
}

// On a CPU with AMX the avx512_bf16 int8 GEMM (bf16 x) runs on AMX tiles;
// with them off, its vector tiles give the same math.
TEST_P(Int8Isa, ManyRowsOnVectorTilesWhereAmxIsOn) {
  if (GetParam() != Isa::kAvx512Bf16 || !gemm_amx()) GTEST_SKIP() << "the GEMM has no AMX tiles here";
  set_gemm_amx(false);
  [&] {
    for (const Int8Format& f : kFormats)
      for (int64_t M : {32, 45, 300})
        for (int64_t K : {31, 100, 896})
          for (int64_t N : {17, 70}) {
            check(*this, f, M, K, N, N % 2 == 1, ElemType::kBF16, ElemType::kF32);
            if (HasFatalFailure()) return;
          }
  }();
  set_gemm_amx(true);
}

// Every path writes the same activation records, and they are what the spec says.
TEST_P(Int8Isa, ActivationRecordsAreBitIdenticalToTheSpec) {
  for (int64_t K : {1, 31, 32, 33, 64, 100, 896})
    for (ElemType x_t : {ElemType::kF32, ElemType::kBF16}) {
      auto x = random_x(1, K, uint32_t(K), x_t == ElemType::kBF16);
      if (K > 40)
        for (int64_t k = 32; k < 64; ++k) x[size_t(k)] = 0.0f;  // an all-zero block
      std::vector<uint16_t> xb;
      for (float v : x) xb.push_back(bf16_bits(v));
      const void* xp = x_t == ElemType::kF32 ? static_cast<const void*>(x.data()) : xb.data();
      const int64_t bytes = q8_record_bytes(K);
      std::vector<uint8_t> mine(size_t(bytes) + 64), scalar(size_t(bytes) + 64);
      uint8_t* a = mine.data() + (64 - reinterpret_cast<uintptr_t>(mine.data()) % 64) % 64;
      uint8_t* s = scalar.data() + (64 - reinterpret_cast<uintptr_t>(scalar.data()) % 64) % 64;
      std::memset(a, 0x77, size_t(bytes));
      quantize_x_q8(GetParam(), x_t, xp, K, a);
      quantize_x_q8_scalar(x_t, xp, K, s);
      const int64_t Kp = q8_padded(K), used = 3 * Kp + Kp / 8;  // q, bias, lane_d, d
      ASSERT_EQ(0, std::memcmp(a, s, size_t(used))) << "K=" << K;
      const Q8Record r = q8_record(a, K);
      const RefQ8 ref = ref_quantize(x.data(), K);
      for (int64_t k = 0; k < q8_padded(K); ++k) {
        const int want = k < int64_t(ref.q.size()) ? ref.q[size_t(k)] : 0;
        ASSERT_EQ(r.q[k], want) << "K=" << K << " q[" << k << "]";
      }
      for (int64_t b = 0; b < (K + 31) / 32; ++b) {
        ASSERT_EQ(double(r.d[b]), ref.d[size_t(b)]) << "d[" << b << "]";
        for (int64_t l = 0; l < 8; ++l) {
          EXPECT_EQ(r.lane_d[8 * b + l], r.d[b]);
          const int8_t* q4 = r.q + 32 * b + 4 * l;
          EXPECT_EQ(r.bias[8 * b + l], -128 * (q4[0] + q4[1] + q4[2] + q4[3]));
        }
      }
    }
}

// A batch of int8 products (q/k/v-like, experts with their own x and M, few
// and many rows mixed) equals separate calls bit for bit.
TEST_P(Int8Isa, BatchEqualsSeparateProductsBitForBit) {
  const int64_t K = 200, N = 37;
  const std::vector<int64_t> Ms = {1, 0, 5, 40, 2, 300, 16, 33};
  for (const Int8Format& f : kFormats) {
    std::vector<QLayer> layers;
    std::vector<std::vector<float>> xs;
    std::vector<std::vector<float>> got, want;
    std::vector<LinearProduct> products;
    for (size_t i = 0; i < Ms.size(); ++i) {
      layers.push_back(make_layer(f, N, K, uint32_t(100 + i)));
      xs.push_back(random_x(Ms[i], K, uint32_t(200 + i), false));
      got.emplace_back(size_t(Ms[i] * N));
      want.emplace_back(size_t(Ms[i] * N));
    }
    for (size_t i = 0; i < Ms.size(); ++i) {
      const void* bias = i % 3 == 1 ? nullptr : layers[i].bias.data();
      products.push_back({xs[i].data(), Ms[i], layers[i].q.data(), N, bias, got[i].data(),
                          layers[i].scale.data()});
      linear_int8_batch_isa(GetParam(), ElemType::kF32, K, f,
                            {{xs[i].data(), Ms[i], layers[i].q.data(), N, bias, want[i].data(),
                              layers[i].scale.data()}},
                            ElemType::kF32);
    }
    linear_int8_batch_isa(GetParam(), ElemType::kF32, K, f, products, ElemType::kF32);
    for (size_t i = 0; i < Ms.size(); ++i)
      EXPECT_EQ(got[i], want[i]) << fmt_name(f) << " product " << i << " M=" << Ms[i];
  }
}

INSTANTIATE_TEST_SUITE_P(Paths, Int8Isa,
                         ::testing::Values(Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kAvx512Bf16),
                         [](const auto& info) { return std::string(isa_name(info.param)); });

TEST(QuantizeInt8, EveryElementIsWithinHalfAScale) {
  std::mt19937 rng(3);
  std::student_t_distribution<float> heavy(3.0f);  // outliers, as real weights have
  for (const Int8Format& f : kFormats)
    for (int64_t K : {1, 7, 32, 45, 896}) {
      const int64_t N = 9;
      std::vector<float> w(size_t(N * K));
      for (auto& v : w) v = 0.02f * heavy(rng);
      for (int64_t k = 0; k < K; ++k) w[size_t(K + k)] = 0.0f;  // row 1: all zero
      const int64_t per_row = int8_scales_per_row(f, K);
      EXPECT_EQ(per_row, f.group ? (K + 31) / 32 : 1);
      std::vector<int8_t> q(w.size());
      std::vector<char> scale(size_t(N * per_row) * elem_size(f.scale_t));
      quantize_int8(w.data(), N, K, f, q.data(), scale.data());
      std::vector<float> back(w.size());
      dequantize_int8(q.data(), scale.data(), f, N, K, back.data());
      for (int64_t n = 0; n < N; ++n)
        for (int64_t g = 0; g < per_row; ++g) {
          const int64_t k0 = f.group ? g * 32 : 0, k1 = f.group ? std::min(K, k0 + 32) : K;
          double amax = 0;
          for (int64_t k = k0; k < k1; ++k) amax = std::max(amax, double(std::fabs(w[size_t(n * K + k)])));
          const double s = f.scale_t == ElemType::kF32
                               ? reinterpret_cast<const float*>(scale.data())[n * per_row + g]
                               : bf16_value(reinterpret_cast<const uint16_t*>(scale.data())[n * per_row + g]);
          // the scale is max|w| / 127 (a bf16 scale rounded up by less than one bf16 step)
          EXPECT_GE(s * 127 * (1 + 1e-6), amax) << fmt_name(f) << " row " << n;
          EXPECT_LE(s * 127, amax * (f.scale_t == ElemType::kF32 ? 1 + 1e-6 : 1 + 1.0 / 128));
          for (int64_t k = k0; k < k1; ++k) {
            const size_t i = size_t(n * K + k);
            ASSERT_GE(q[i], -127);
            // half a scale, plus float32's rounding of w / s (|w / s| <= 127.5: 2^-17 of s)
            ASSERT_LE(std::fabs(double(back[i]) - double(w[i])), s * (0.5 + 1.0 / 131072))
                << fmt_name(f) << " K=" << K << " w[" << n << "," << k << "] = " << w[i];
            ASSERT_EQ(double(back[i]), double(float(s) * float(q[i])));
          }
        }
    }
}

TEST(QuantizeInt8, RejectsNonFiniteWeightsAndUnsupportedGroups) {
  float w[4] = {0.1f, std::numeric_limits<float>::infinity(), 0.2f, 0.3f};
  int8_t q[4];
  float s[4];
  EXPECT_THROW(quantize_int8(w, 1, 4, {0, ElemType::kF32}, q, s), Error);
  w[1] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(quantize_int8(w, 1, 4, {kInt8Group, ElemType::kF32}, q, s), Error);
  w[1] = 0.5f;
  EXPECT_THROW(quantize_int8(w, 1, 4, {64, ElemType::kF32}, q, s), Error);
  std::vector<float> y(4);
  EXPECT_THROW(linear_int8(ElemType::kF32, w, 1, 4, q, s, {16, ElemType::kF32}, 1, nullptr,
                           ElemType::kF32, y.data()),
               Error);
}

// Threads claim chunks of rows dynamically; the int8 results must not depend on it.
TEST(Int8Linear, ResultsDoNotDependOnTheSchedule) {
  const QLayer l = make_layer({kInt8Group, ElemType::kBF16}, 1003, 896, 5);
  for (const int64_t M : {1, 3}) {
    const auto x = random_x(M, 896, 9, false);
    std::vector<float> first(size_t(M * 1003)), y(first.size());
    linear_int8(ElemType::kF32, x.data(), M, 896, l.q.data(), l.scale.data(), l.f, 1003,
                l.bias.data(), ElemType::kF32, first.data());
    for (int rep = 0; rep < 30; ++rep) {
      linear_int8(ElemType::kF32, x.data(), M, 896, l.q.data(), l.scale.data(), l.f, 1003,
                  l.bias.data(), ElemType::kF32, y.data());
      ASSERT_EQ(y, first) << "M=" << M << " call " << rep;
    }
  }
}

// weight_bytes_read counts each product's weights (and int8 scales) once,
// whatever its rows (few-row kernels or the GEMM); empty products read none.
TEST(WeightBytesRead, CountsEachProductsWeightsOnce) {
  const int64_t K = 96;
  const auto x = random_x(40, K, 3, true);
  std::vector<uint16_t> xb(x.size()), wb(size_t(20 * K), 0x3f80);
  for (size_t i = 0; i < x.size(); ++i) xb[i] = bf16_bits(x[i]);
  std::vector<float> wf(size_t(20 * K), 0.5f), y(size_t(40 * 20));
  std::vector<uint16_t> yb(y.size());
  uint64_t before = weight_bytes_read();
  linear_batch(ElemType::kBF16, K, ElemType::kBF16,
               {{xb.data(), 3, wb.data(), 5, nullptr, yb.data()},
                {xb.data(), 0, wb.data(), 7, nullptr, yb.data()},    // no rows: no weights read
                {xb.data(), 40, wb.data(), 9, nullptr, yb.data()}},  // the GEMM
               ElemType::kBF16);
  EXPECT_EQ(weight_bytes_read() - before, uint64_t((5 + 9) * K * 2));
  before = weight_bytes_read();
  linear(ElemType::kF32, x.data(), 2, K, ElemType::kF32, wf.data(), 6, nullptr, ElemType::kF32,
         y.data());
  EXPECT_EQ(weight_bytes_read() - before, uint64_t(6 * K * 4));
  for (const Int8Format& f : kFormats) {
    const QLayer l = make_layer(f, 11, K, 4);
    before = weight_bytes_read();
    linear_int8(ElemType::kF32, x.data(), 4, K, l.q.data(), l.scale.data(), f, 11, nullptr,
                ElemType::kF32, y.data());
    EXPECT_EQ(weight_bytes_read() - before, uint64_t(11 * K + l.scale.size())) << fmt_name(f);
  }
}

}  // namespace
}  // namespace finmoe::kernels
