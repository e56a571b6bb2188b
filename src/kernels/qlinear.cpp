// int8 weights: quantization, the scalar reference kernels, per-ISA dispatch
// and the public entry points (the scheduler is linear.cpp's run_batch).
#include "kernels/qlinear.h"

#include <xmmintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "finmoe/error.h"
#include "kernels/linear_isa.h"
#include "kernels/qlinear_isa.h"

namespace finmoe::kernels {

int64_t int8_scales_per_row(const Int8Format& f, int64_t K) {
  if (f.group != 0 && f.group != kInt8Group)
    throw Error("int8 weights: group size " + std::to_string(f.group) + " is not supported (0 = " +
                "per output channel, or " + std::to_string(kInt8Group) + ")");
  return f.group == 0 ? 1 : (K + f.group - 1) / f.group;
}

namespace {

// v rounded to an integer in [-127, 127] as the vector paths do it:
// cvtss2si (nearest even under the default MXCSR; NaN and overflow give
// INT_MIN), then saturation.
inline int8_t q8_round(float v) {
  return static_cast<int8_t>(std::clamp(_mm_cvtss_si32(_mm_set_ss(v)), -127, 127));
}

inline float scale_of(const void* scale, ElemType t, int64_t i) {
  return t == ElemType::kF32 ? static_cast<const float*>(scale)[i]
                             : bf16_to_float(static_cast<const uint16_t*>(scale)[i]);
}

}  // namespace

void quantize_int8(const float* w, int64_t N, int64_t K, const Int8Format& f, int8_t* q,
                   void* scale) {
  const int64_t per_row = int8_scales_per_row(f, K);
  const int64_t g = f.group ? f.group : K;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < per_row; ++j) {
      const int64_t k0 = j * g, k1 = std::min(K, k0 + g);
      const float* wr = w + n * K;
      float amax = 0.0f;
      for (int64_t k = k0; k < k1; ++k) {
        if (!std::isfinite(wr[k]))
          throw Error("quantize_int8: non-finite weight " + std::to_string(wr[k]) + " at row " +
                      std::to_string(n) + ", column " + std::to_string(k));
        amax = std::max(amax, std::fabs(wr[k]));
      }
      float s = amax / 127.0f;
      if (f.scale_t == ElemType::kBF16) {
        uint16_t b = float_to_bf16(s);
        if (bf16_to_float(b) < s) ++b;  // round up: |w| / s stays <= 127
        static_cast<uint16_t*>(scale)[n * per_row + j] = b;
        s = bf16_to_float(b);
      } else {
        static_cast<float*>(scale)[n * per_row + j] = s;
      }
      for (int64_t k = k0; k < k1; ++k)
        q[n * K + k] = s > 0.0f ? q8_round(wr[k] / s) : int8_t{0};
    }
}

void dequantize_int8(const int8_t* q, const void* scale, const Int8Format& f, int64_t N, int64_t K,
                     float* w) {
  const int64_t per_row = int8_scales_per_row(f, K);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k)
      w[n * K + k] = scale_of(scale, f.scale_t, n * per_row + (f.group ? k / f.group : 0)) *
                     float(q[n * K + k]);
}

// ---- activation records ----------------------------------------------------

void quantize_x_q8_scalar(ElemType x_t, const void* x, int64_t K, uint8_t* rec) {
  const int64_t Kp = q8_padded(K);
  const Q8Record r = q8_record(rec, K);
  for (int64_t b = 0; b < Kp / 32; ++b) {
    float v[32];
    for (int64_t i = 0; i < 32; ++i) {
      const int64_t k = b * 32 + i;
      v[i] = k >= K                   ? 0.0f
             : x_t == ElemType::kF32 ? static_cast<const float*>(x)[k]
                                      : bf16_to_float(static_cast<const uint16_t*>(x)[k]);
    }
    float amax = 0.0f;
    for (float e : v) amax = std::max(amax, std::fabs(e));
    const float d = amax / 127.0f, inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    for (int64_t i = 0; i < 32; ++i) r.q[b * 32 + i] = q8_round(v[i] * inv);
    r.d[b] = d;
    for (int64_t l = 0; l < 8; ++l) {
      const int8_t* q4 = r.q + b * 32 + 4 * l;
      r.bias[b * 8 + l] = -128 * (q4[0] + q4[1] + q4[2] + q4[3]);
      r.lane_d[b * 8 + l] = d;
    }
  }
}

// Σ_b d[b] · s[b] · Σ_k x.q[k] w[k] per (row of x, row of W), blocks in order.
void q8_rows_scalar(const Q8Args& a, int64_t n0, int64_t n1) {
  const int64_t per_row = int8_scales_per_row(a.f, a.K);
  const int64_t blocks = (a.K + 31) / 32;
  for (int64_t n = n0; n < n1; ++n) {
    const int8_t* w = a.W + n * a.K;
    for (int64_t m = 0; m < a.M; ++m) {
      const Q8Record r = q8_record(a, m);
      float acc = 0.0f;
      for (int64_t b = 0; b < blocks; ++b) {
        int32_t dot = 0;
        for (int64_t k = b * 32; k < std::min(a.K, b * 32 + 32); ++k) dot += r.q[k] * w[k];
        const float s = a.f.group ? r.d[b] * scale_of(a.scale, a.f.scale_t, n * per_row + b) : r.d[b];
        acc += float(dot) * s;
      }
      if (!a.f.group) acc *= scale_of(a.scale, a.f.scale_t, n);
      a.y[m * a.ldy + n] = acc + (a.bias ? a.bias[n] : 0.0f);
    }
  }
}

// ---- dispatch and entry points -----------------------------------------------

void quantize_x_q8(Isa isa, ElemType x_t, const void* x, int64_t K, uint8_t* rec) {
  // O(K) per row against the product's O(N K): one AVX2 version serves the AVX-512 paths too
  if (isa == Isa::kScalar) return quantize_x_q8_scalar(x_t, x, K, rec);
  quantize_x_q8_avx2(x_t, x, K, rec);
}

void q8_rows(Isa isa, const Q8Args& a, int64_t n0, int64_t n1) {
  switch (isa) {
    case Isa::kAvx512Bf16:
      return q8_rows_avx512bf16(a, n0, n1);
    case Isa::kAvx512:
      return q8_rows_avx512(a, n0, n1);
    case Isa::kAvx2:
      return q8_rows_avx2(a, n0, n1);
    case Isa::kScalar:
      break;
  }
  q8_rows_scalar(a, n0, n1);
}

void linear_int8(ElemType x_t, const void* x, int64_t M, int64_t K, const int8_t* W,
                 const void* scale, const Int8Format& f, int64_t N, const void* bias, ElemType y_t,
                 void* y) {
  linear_int8_batch_isa(active_isa(), x_t, K, f, {{x, M, W, N, bias, y, scale}}, y_t);
}

void linear_group_int8(ElemType x_t, const void* x, int64_t M, int64_t K, const Int8Format& f,
                       const std::vector<LinearOutput>& outs, ElemType y_t) {
  std::vector<LinearProduct> products;
  products.reserve(outs.size());
  for (const LinearOutput& o : outs) products.push_back({x, M, o.W, o.N, o.bias, o.y, o.scale});
  linear_int8_batch_isa(active_isa(), x_t, K, f, products, y_t);
}

}  // namespace finmoe::kernels
