// The fused ops (kernels/ops.h) and the paged attention (kernels/attention.h)
// on every ISA path the CPU has, against double-precision references
// written here from the formulas, over odd shapes (widths that are not
// multiples of any vector width, GQA groups, ragged sequences).
#include "kernels/ops.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "finmoe/error.h"
#include "kernels/attention.h"
#include "kernels/cpu_features.h"
#include "kernels/isa.h"
#include "kernels/linear.h"
#include "kernels/linear_isa.h"
#include "kernels/ops_isa.h"

namespace finmoe::kernels {
namespace {

// bf16 rounding with frexp/nearbyint (ties to even), independent of the kernels' bit tricks.
double round_bf16(double v) {
  if (v == 0 || !std::isfinite(v)) return v;
  int e = 0;
  std::frexp(v, &e);
  return std::ldexp(std::nearbyint(std::ldexp(v, 8 - e)), e - 8);
}

uint16_t bf16_bits(double v) {
  const float f = static_cast<float>(round_bf16(v));
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>(u >> 16);
}

double bf16_value(uint16_t b) {
  const uint32_t u = uint32_t{b} << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Values of one buffer in both dtypes: `f32` holds exactly the values of `bf16`
// when the buffer is meant as bf16, so one reference serves both.
struct Buf {
  std::vector<float> f32;
  std::vector<uint16_t> bf16;
  ElemType t = ElemType::kF32;
  const void* data() const {
    return t == ElemType::kF32 ? static_cast<const void*>(f32.data()) : bf16.data();
  }
  void* data() { return t == ElemType::kF32 ? static_cast<void*>(f32.data()) : bf16.data(); }
  double at(size_t i) const { return t == ElemType::kF32 ? f32[i] : bf16_value(bf16[i]); }
};

Buf random_buf(ElemType t, size_t n, uint32_t seed, float lo = -2.f, float hi = 2.f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  Buf b;
  b.t = t;
  b.f32.resize(n);
  b.bf16.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const float v = d(rng);
    b.bf16[i] = bf16_bits(v);
    b.f32[i] = t == ElemType::kF32 ? v : static_cast<float>(bf16_value(b.bf16[i]));
  }
  return b;
}

Buf zeros(ElemType t, size_t n) {
  Buf b;
  b.t = t;
  b.f32.assign(n, 0.f);
  b.bf16.assign(n, 0);
  return b;
}

const char* name(ElemType t) { return t == ElemType::kF32 ? "f32" : "bf16"; }

// |got - want| <= tol: float32 results within a few float ulps of the
// double reference; bf16 results within the reference's bf16 rounding
// (two roundings in a row may each land one bf16 ulp apart: 2^-6 relative).
double tolerance(ElemType t, double want, double scale) {
  return t == ElemType::kF32 ? 4e-6 * scale + 1e-30 : std::ldexp(std::fabs(want), -6) + 1e-30;
}

class OpsIsa : public ::testing::TestWithParam<Isa> {
 protected:
  void SetUp() override {
    if (!cpu_runs(GetParam()))
      GTEST_SKIP() << "this CPU lacks the " << isa_name(GetParam()) << " path";
  }
  const OpsTable& ops() const { return ops_table(GetParam()); }
};

TEST_P(OpsIsa, RmsNormMatchesDoubleReference) {
  const float eps = 1e-6f;
  for (ElemType t : {ElemType::kF32, ElemType::kBF16})
    for (int64_t D : {1, 7, 16, 33, 896, 1000})
      for (int64_t M : {1, 3, 17}) {
        SCOPED_TRACE(std::string(name(t)) + " M=" + std::to_string(M) + " D=" + std::to_string(D));
        const Buf x = random_buf(t, size_t(M * D), uint32_t(D * 31 + M));
        const Buf w = random_buf(t, size_t(D), uint32_t(D), 0.5f, 1.5f);
        Buf y = zeros(t, size_t(M * D));
        ops().rms_norm(t, x.data(), M, D, w.data(), eps, y.data());
        for (int64_t m = 0; m < M; ++m) {
          double ss = 0;
          for (int64_t k = 0; k < D; ++k) ss += x.at(size_t(m * D + k)) * x.at(size_t(m * D + k));
          const double r = 1.0 / std::sqrt(ss / double(D) + eps);
          for (int64_t k = 0; k < D; ++k) {
            const size_t i = size_t(m * D + k);
            double normed = x.at(i) * r;
            if (t == ElemType::kBF16) normed = round_bf16(normed);
            double want = w.at(size_t(k)) * normed;
            if (t == ElemType::kBF16) want = round_bf16(want);
            ASSERT_LE(std::fabs(y.at(i) - want), tolerance(t, want, std::fabs(want)))
                << "y[" << m << "," << k << "]";
          }
        }
      }
}

TEST_P(OpsIsa, AddRmsNormUpdatesResidualThenNormalisesIt) {
  const float eps = 1e-5f;
  for (ElemType t : {ElemType::kF32, ElemType::kBF16}) {
    const int64_t M = 5, D = 77;
    Buf x = random_buf(t, size_t(M * D), 1);
    const Buf delta = random_buf(t, size_t(M * D), 2);
    const Buf w = random_buf(t, size_t(D), 3, 0.5f, 1.5f);
    const Buf x0 = x;
    Buf y = zeros(t, size_t(M * D)), y_ref = zeros(t, size_t(M * D));
    ops().add_rms_norm(t, x.data(), delta.data(), M, D, w.data(), eps, y.data());
    for (size_t i = 0; i < size_t(M * D); ++i) {
      double sum = x0.at(i) + delta.at(i);
      if (t == ElemType::kBF16) sum = round_bf16(sum);
      ASSERT_LE(std::fabs(x.at(i) - sum), tolerance(t, sum, std::fabs(sum))) << name(t) << " " << i;
    }
    // y is exactly rms_norm of the updated residual
    ops().rms_norm(t, x.data(), M, D, w.data(), eps, y_ref.data());
    if (t == ElemType::kF32)
      EXPECT_EQ(y.f32, y_ref.f32);
    else
      EXPECT_EQ(y.bf16, y_ref.bf16);
  }
}

TEST_P(OpsIsa, RopeRotatesPairsInBothLayouts) {
  for (ElemType t : {ElemType::kF32, ElemType::kBF16})
    for (bool interleaved : {false, true})
      for (auto [ld, rot] : {std::pair<int64_t, int64_t>{64, 64}, {40, 40}, {48, 32}, {6, 2}}) {
        SCOPED_TRACE(std::string(name(t)) + (interleaved ? " interleaved" : " half") +
                     " ld=" + std::to_string(ld) + " rot=" + std::to_string(rot));
        const int64_t N = 5, H = 3;
        Buf x = random_buf(t, size_t(N * H * ld), uint32_t(ld + rot));
        const Buf x0 = x;
        std::vector<float> cos(size_t(N * rot)), sin(size_t(N * rot));
        for (int64_t n = 0; n < N; ++n)
          for (int64_t i = 0; i < rot; ++i) {
            const double angle = double(n + 1) * std::pow(1e4, -double(i % (rot / 2)) / rot);
            cos[size_t(n * rot + i)] = float(std::cos(angle));
            sin[size_t(n * rot + i)] = float(std::sin(angle));
          }
        ops().rope(t, x.data(), N, H, ld, rot, cos.data(), sin.data(), interleaved);
        for (int64_t n = 0; n < N; ++n)
          for (int64_t h = 0; h < H; ++h)
            for (int64_t i = 0; i < ld; ++i) {
              const size_t base = size_t((n * H + h) * ld);
              double want = x0.at(base + size_t(i)), scale = std::fabs(want);
              if (i < rot) {
                // partner of i and the sign of its term in x*cos + rotate(x)*sin
                int64_t j;
                double sign;
                if (interleaved) {
                  j = i ^ 1;
                  sign = i % 2 == 0 ? -1 : 1;
                } else {
                  j = i < rot / 2 ? i + rot / 2 : i - rot / 2;
                  sign = i < rot / 2 ? -1 : 1;
                }
                const double c = cos[size_t(n * rot + i)], s = sin[size_t(n * rot + i)];
                const double xi = x0.at(base + size_t(i)), xj = x0.at(base + size_t(j));
                want = xi * c + sign * xj * s;
                scale = std::fabs(xi * c) + std::fabs(xj * s);
                if (t == ElemType::kBF16) want = round_bf16(want);
              }
              const double got = x.at(base + size_t(i));
              ASSERT_LE(std::fabs(got - want),
                        t == ElemType::kF32 ? 4e-7 * scale + 1e-30
                                            : std::ldexp(scale, -8) + 1e-30)
                  << "x[" << n << "," << h << "," << i << "]";
            }
      }
}

TEST_P(OpsIsa, SwigluMatchesSiluTimesUpOverTheExpRange) {
  for (ElemType t : {ElemType::kF32, ElemType::kBF16}) {
    const int64_t n = 3001;  // covers a partial chunk
    Buf g = random_buf(t, size_t(n), 5, -95.f, 95.f);
    const Buf u = random_buf(t, size_t(n), 6);
    Buf y = zeros(t, size_t(n));
    ops().swiglu(t, g.data(), u.data(), n, y.data());
    for (size_t i = 0; i < size_t(n); ++i) {
      double silu = g.at(i) / (1.0 + std::exp(-g.at(i)));
      if (t == ElemType::kBF16) silu = round_bf16(silu);
      double want = silu * u.at(i);
      if (t == ElemType::kBF16) want = round_bf16(want);
      // silu of large negative g underflows: exp's clamp keeps |error| below 1e-36
      ASSERT_LE(std::fabs(y.at(i) - want), tolerance(t, want, std::fabs(want)) + 1e-36)
          << name(t) << " g=" << g.at(i) << " u=" << u.at(i);
    }
  }
}

TEST_P(OpsIsa, GatedAddRoundsLikeLibtorchsSigmoidProductAndSum) {
  // y + x * sigmoid(gate) with each op's result rounded to t, as libtorch does:
  // bf16 bit for bit, except that float sigmoid (libm's expf) may land on the
  // other side of a rounding tie than the double one, so near a tie either
  // neighbour of the sigmoid is accepted
  for (ElemType t : {ElemType::kF32, ElemType::kBF16}) {
    const int64_t M = 7, D = 203;  // D not a multiple of any vector width
    const Buf gate = random_buf(t, size_t(M), 41, -12.f, 12.f);
    const Buf x = random_buf(t, size_t(M * D), 42);
    Buf y = random_buf(t, size_t(M * D), 43);
    const Buf y0 = y;
    ops().gated_add(t, y.data(), x.data(), gate.data(), M, D);
    const auto round_t = [t](double v) {
      return t == ElemType::kBF16 ? round_bf16(v) : double(static_cast<float>(v));
    };
    for (int64_t m = 0; m < M; ++m) {
      const double sig = 1.0 / (1.0 + std::exp(-gate.at(size_t(m))));
      const double sigs[] = {round_t(sig), round_t(sig * (1 - 1e-6)), round_t(sig * (1 + 1e-6))};
      for (int64_t i = 0; i < D; ++i) {
        const size_t at = size_t(m * D + i);
        // float32: the float sigmoid and product are within a few ulps of the double ones
        const double slack =
            t == ElemType::kF32 ? 4e-7 * (std::fabs(y0.at(at)) + std::fabs(x.at(at))) : 0.0;
        bool matched = false;
        for (double s : sigs)
          matched = matched ||
                    std::fabs(y.at(at) - round_t(y0.at(at) + round_t(x.at(at) * s))) <= slack;
        ASSERT_TRUE(matched) << name(t) << " m=" << m << " i=" << i << " got " << y.at(at)
                             << " want " << round_t(y0.at(at) + round_t(x.at(at) * sigs[0]));
      }
    }
  }
}

TEST_P(OpsIsa, ConvertRoundsToNearestEvenAndKeepsNaN) {
  const uint32_t bits[] = {0x3f808000u /* tie, even below */, 0x3f818000u /* tie, even above */,
                           0x3f808001u, 0x7f800000u /* inf */, 0x7f800001u /* sNaN */,
                           0xbf800000u};
  std::vector<float> src;
  for (uint32_t b : bits) {
    float f;
    std::memcpy(&f, &b, 4);
    src.push_back(f);
  }
  std::vector<uint16_t> dst(src.size());
  ops().convert(ElemType::kF32, src.data(), ElemType::kBF16, dst.data(), int64_t(src.size()));
  EXPECT_EQ(dst[0], 0x3f80);
  EXPECT_EQ(dst[1], 0x3f82);
  EXPECT_EQ(dst[2], 0x3f81);
  EXPECT_EQ(dst[3], 0x7f80);
  EXPECT_TRUE(std::isnan(bf16_value(dst[4])));
  EXPECT_EQ(dst[5], 0xbf80);
  std::vector<float> back(src.size());
  ops().convert(ElemType::kBF16, dst.data(), ElemType::kF32, back.data(), int64_t(src.size()));
  EXPECT_EQ(back[0], 1.0f);
  EXPECT_EQ(back[5], -1.0f);
}

// ---- paged attention ----------------------------------------------------------

struct AttnCase {
  int64_t H, Hkv, d;
  std::vector<int64_t> q_len, context_len;
  // MLA's latent layout: one row of d values per slot read by every head
  // group as K, its first dv values as V (Hkv only splits the heads)
  int64_t latent_dv = 0;
};

// Runs `isa`'s paged attention over a shuffled cache and checks it against
// softmax(q k^T scale) v computed in double with the causal limit per query.
void check_attention(Isa isa, ElemType qt, ElemType ct, ElemType ot, const AttnCase& c) {
  SCOPED_TRACE(std::string("q ") + name(qt) + " cache " + name(ct) + " out " + name(ot) +
               " H=" + std::to_string(c.H) + " Hkv=" + std::to_string(c.Hkv) +
               " d=" + std::to_string(c.d) + " latent dv=" + std::to_string(c.latent_dv));
  const bool latent = c.latent_dv > 0;
  const int64_t dv = latent ? c.latent_dv : c.d;
  const int64_t S = int64_t(c.q_len.size());
  const int64_t N = std::accumulate(c.q_len.begin(), c.q_len.end(), int64_t{0});
  const int64_t total = std::accumulate(c.context_len.begin(), c.context_len.end(), int64_t{0});
  const int64_t slots = total + 7;
  const int64_t row = latent ? c.d : c.Hkv * c.d;
  const int64_t head_stride = latent ? 0 : c.d;
  const Buf q = random_buf(qt, size_t(N * c.H * c.d), 11);
  const Buf k = random_buf(ct, size_t(slots * row), 12);
  const Buf v = random_buf(ct, size_t(slots * row), 13);
  std::vector<int64_t> perm(static_cast<size_t>(slots));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937(4));  // non-contiguous slots
  std::vector<std::vector<int64_t>> seq_slots(static_cast<size_t>(S));
  std::vector<AttentionSeq> seqs(static_cast<size_t>(S));
  int64_t q_start = 0, used = 0;
  for (int64_t s = 0; s < S; ++s) {
    for (int64_t p = 0; p < c.context_len[size_t(s)]; ++p)
      seq_slots[size_t(s)].push_back(perm[size_t(used++)]);
    seqs[size_t(s)] = {q_start, c.q_len[size_t(s)], c.context_len[size_t(s)],
                       seq_slots[size_t(s)].data()};
    q_start += c.q_len[size_t(s)];
  }
  const Buf& values = latent ? k : v;
  Buf out = zeros(ot, size_t(N * c.H * dv));
  const float scale = 1.0f / std::sqrt(float(c.d));
  AttentionArgs a;
  a.q_t = qt;
  a.q = q.data();
  a.n_head = c.H;
  a.n_kv_head = c.Hkv;
  a.head_dim = c.d;
  a.cache_t = ct;
  a.k_cache = k.data();
  a.v_cache = values.data();
  if (latent) {
    a.v_dim = dv;
    a.cache_row = c.d;
    a.kv_head_stride = 0;
  }
  a.seqs = seqs.data();
  a.n_seqs = S;
  a.scale = scale;
  a.out_t = ot;
  a.out = out.data();
  paged_attention_isa(isa, a);

  const int64_t G = c.H / c.Hkv;
  for (int64_t s = 0; s < S; ++s) {
    const AttentionSeq& sq = seqs[size_t(s)];
    for (int64_t i = 0; i < sq.q_len; ++i)
      for (int64_t h = 0; h < c.H; ++h) {
        const int64_t n = sq.q_start + i, kvh = h / G;
        const int64_t lim = sq.context_len - sq.q_len + i + 1;
        std::vector<double> p(static_cast<size_t>(lim));
        double mx = -1e300;
        for (int64_t j = 0; j < lim; ++j) {
          double dot = 0;
          for (int64_t e = 0; e < c.d; ++e)
            dot += q.at(size_t((n * c.H + h) * c.d + e)) *
                   k.at(size_t(sq.slots[j] * row + kvh * head_stride + e));
          p[size_t(j)] = dot * double(scale);
          mx = std::max(mx, p[size_t(j)]);
        }
        double sum = 0;
        for (double& x : p) sum += (x = std::exp(x - mx));
        for (int64_t e = 0; e < dv; ++e) {
          double want = 0, mag = 0;
          for (int64_t j = 0; j < lim; ++j) {
            const double vj = values.at(size_t(sq.slots[j] * row + kvh * head_stride + e));
            want += p[size_t(j)] / sum * vj;
            mag += p[size_t(j)] / sum * std::fabs(vj);
          }
          if (ot == ElemType::kBF16) want = round_bf16(want);
          // float32 scores over d terms and exp to ~2 ulp: relative error ~1e-6 of the |v| mix
          const double tol = ot == ElemType::kF32 ? 2e-5 * (mag + 1e-3)
                                                  : std::ldexp(std::fabs(want), -7) + 2e-5 * mag;
          ASSERT_LE(std::fabs(out.at(size_t((n * c.H + h) * dv + e)) - want), tol)
              << "seq " << s << " query " << i << " head " << h << " dim " << e;
        }
      }
  }
}

TEST_P(OpsIsa, PagedAttentionMatchesDoubleReference) {
  const std::vector<AttnCase> cases = {
      // decode tokens, a mid-prefill chunk, a whole prompt longer than a query block
      {6, 2, 64, {1, 5, 40, 1}, {1, 23, 40, 70}},
      {4, 4, 40, {3, 1}, {3, 17}},  // MHA, d not a multiple of 16
      {7, 1, 8, {17}, {33}},        // one kv head for 7 query heads, tiny d
      // MLA latent rows (kv_lora 64 + rope 8, values the first 64), heads in 2 groups
      {8, 2, 72, {1, 3, 20}, {9, 3, 41}, 64},
      {4, 1, 40, {1, 18}, {30, 18}, 33},  // one group, dv not a multiple of 16
  };
  for (const AttnCase& c : cases)
    for (ElemType qt : {ElemType::kF32, ElemType::kBF16})
      for (ElemType ct : {ElemType::kF32, ElemType::kBF16}) {
        check_attention(GetParam(), qt, ct, qt, c);
        if (HasFatalFailure()) return;
      }
}

TEST_P(OpsIsa, LinearOnBf16TensorsRoundsTheFloatResultOnce) {
  for (int64_t M : {1, 3, 17})
    for (auto [K, N] : {std::pair<int64_t, int64_t>{33, 7}, {896, 1003}}) {
      SCOPED_TRACE("M=" + std::to_string(M) + " K=" + std::to_string(K) + " N=" + std::to_string(N));
      const Buf x = random_buf(ElemType::kBF16, size_t(M * K), 21);
      const Buf w = random_buf(ElemType::kBF16, size_t(N * K), 22, -0.1f, 0.1f);
      const Buf b = random_buf(ElemType::kBF16, size_t(N), 23);
      // the float path on the same values
      std::vector<float> y32(size_t(M * N));
      linear_bf16_isa(GetParam(), x.f32.data(), M, K, w.bf16.data(), N, b.f32.data(), y32.data());
      std::vector<uint16_t> y(size_t(M * N) + 16, 0xdead);
      linear_isa(GetParam(), ElemType::kBF16, x.bf16.data(), M, K, ElemType::kBF16, w.bf16.data(),
                 N, b.bf16.data(), ElemType::kBF16, y.data());
      for (size_t i = 0; i < size_t(M * N); ++i) ASSERT_EQ(y[i], bf16_bits(y32[i])) << i;
      for (size_t i = size_t(M * N); i < y.size(); ++i) ASSERT_EQ(y[i], 0xdead) << "wrote past y";
      // bf16 activations with float32 results equal the float path exactly
      std::vector<float> yf(size_t(M * N));
      linear_isa(GetParam(), ElemType::kBF16, x.bf16.data(), M, K, ElemType::kBF16, w.bf16.data(),
                 N, b.bf16.data(), ElemType::kF32, yf.data());
      EXPECT_EQ(yf, y32);
    }
}

INSTANTIATE_TEST_SUITE_P(Paths, OpsIsa, ::testing::Values(Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kAvx512Bf16),
                         [](const auto& info) { return std::string(isa_name(info.param)); });

TEST(Ops, PublicEntriesSplitRowsLikeTheSerialPath) {
  // Large enough to be split over the pool: the result must not depend on the split.
  const int64_t M = 300, D = 896;
  const Buf x = random_buf(ElemType::kBF16, size_t(M * D), 31);
  const Buf w = random_buf(ElemType::kBF16, size_t(D), 32, 0.5f, 1.5f);
  Buf y = zeros(ElemType::kBF16, size_t(M * D)), y_serial = zeros(ElemType::kBF16, size_t(M * D));
  rms_norm(ElemType::kBF16, x.data(), M, D, w.data(), 1e-6f, y.data());
  ops_table(active_isa()).rms_norm(ElemType::kBF16, x.data(), M, D, w.data(), 1e-6f,
                                   y_serial.data());
  EXPECT_EQ(y.bf16, y_serial.bf16);

  const int64_t n = 100000;
  const Buf g = random_buf(ElemType::kF32, size_t(n), 33), u = random_buf(ElemType::kF32, size_t(n), 34);
  Buf s = zeros(ElemType::kF32, size_t(n)), s_serial = zeros(ElemType::kF32, size_t(n));
  swiglu(ElemType::kF32, g.data(), u.data(), n, s.data());
  ops_table(active_isa()).swiglu(ElemType::kF32, g.data(), u.data(), n, s_serial.data());
  EXPECT_EQ(s.f32, s_serial.f32);

  const Buf gate = random_buf(ElemType::kBF16, size_t(M), 36);
  Buf a = random_buf(ElemType::kBF16, size_t(M * D), 37);
  Buf a_serial = a;
  gated_add(ElemType::kBF16, a.data(), x.data(), gate.data(), M, D);
  ops_table(active_isa()).gated_add(ElemType::kBF16, a_serial.data(), x.data(), gate.data(), M, D);
  EXPECT_EQ(a.bf16, a_serial.bf16);

  std::vector<int64_t> rows = {4, 0, 2};
  const Buf src = random_buf(ElemType::kF32, 3 * 5, 35);
  std::vector<uint16_t> dst(5 * 5, 0);
  scatter_rows(ElemType::kF32, src.data(), 3, 5, ElemType::kBF16, dst.data(), rows.data());
  for (int64_t i = 0; i < 3; ++i)
    for (int64_t e = 0; e < 5; ++e)
      EXPECT_EQ(dst[size_t(rows[size_t(i)] * 5 + e)], bf16_bits(src.f32[size_t(i * 5 + e)]));
  for (int64_t e = 0; e < 5; ++e) EXPECT_EQ(dst[size_t(5 + e)], 0) << "row 1 untouched";
}

TEST(Ops, RejectsInconsistentShapes) {
  AttentionArgs a;
  a.n_head = 6;
  a.n_kv_head = 4;
  a.head_dim = 8;
  EXPECT_THROW(paged_attention(a), Error);
  std::vector<int64_t> slots(2, 0);
  AttentionSeq s{0, 3, 2, slots.data()};  // more queries than context
  a.n_kv_head = 2;
  a.seqs = &s;
  a.n_seqs = 1;
  EXPECT_THROW(paged_attention(a), Error);
  float x[4] = {};
  EXPECT_THROW(rope(ElemType::kF32, x, 1, 1, 4, 3, x, x, false), Error);
  EXPECT_THROW(rms_norm(ElemType::kF32, x, -1, 4, x, 1e-6f, x), Error);
}

}  // namespace
}  // namespace finmoe::kernels
