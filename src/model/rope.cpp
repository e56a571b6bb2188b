#include "model/rope.h"

#include <cmath>
#include <numbers>

#include "finmoe/error.h"

namespace finmoe {
namespace {

double yarn_mscale(double scale, double mscale) {
  return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}

// Dimension index at which a frequency makes `rotations` turns over `max_pos`.
double yarn_correction_dim(double rotations, int64_t dim, double base, double max_pos) {
  return (dim * std::log(max_pos / (rotations * 2 * std::numbers::pi))) / (2 * std::log(base));
}

}  // namespace

std::pair<torch::Tensor, double> rope_inv_freq(const ModelConfig& c, int64_t dim) {
  const RopeScaling& s = c.rope_scaling;
  const double base = c.rope_theta;
  // base^(2i/dim) in float32, as HF computes it
  auto exponents = torch::arange(0, dim, 2, torch::kInt64).to(torch::kFloat32) / double(dim);
  auto pos_freqs = torch::pow(torch::tensor(base, torch::kFloat32), exponents);  // [dim/2]
  auto inv_freq = 1.0 / pos_freqs;
  const std::string& type = s.rope_type;
  if (type == "default") return {inv_freq, 1.0};
  if (type == "linear") return {inv_freq / s.factor, 1.0};
  if (type == "llama3") {
    const double old_ctx = double(s.original_max_position_embeddings);
    const double low_wavelen = old_ctx / s.low_freq_factor;
    const double high_wavelen = old_ctx / s.high_freq_factor;
    auto wavelen = 2 * std::numbers::pi / inv_freq;
    auto scaled = torch::where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq);
    auto smooth = (old_ctx / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
    auto smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled;
    auto medium = (wavelen >= high_wavelen).logical_and(wavelen <= low_wavelen);
    return {torch::where(medium, smoothed, scaled), 1.0};
  }
  if (type == "yarn") {
    const double factor = s.factor;
    const double orig = s.original_max_position_embeddings > 0
                            ? double(s.original_max_position_embeddings)
                            : double(c.max_position_embeddings);
    double attn = 0;
    if (s.attention_factor) {
      attn = *s.attention_factor;
    } else if (s.mscale != 0 && s.mscale_all_dim != 0) {
      attn = yarn_mscale(factor, s.mscale) / yarn_mscale(factor, s.mscale_all_dim);
    } else {
      attn = yarn_mscale(factor, 1.0);
    }
    double low = std::floor(yarn_correction_dim(s.beta_fast, dim, base, orig));
    double high = std::ceil(yarn_correction_dim(s.beta_slow, dim, base, orig));
    low = std::max(low, 0.0);
    high = std::min(high, double(dim - 1));
    if (low == high) high += 0.001;
    auto ramp = ((torch::arange(dim / 2, torch::kFloat32) - low) / (high - low)).clamp(0, 1);
    auto extrapolation = 1 - ramp;  // 1 where the original frequency is kept
    auto interp = 1.0 / (factor * pos_freqs);
    return {interp * (1 - extrapolation) + inv_freq * extrapolation, attn};
  }
  throw Error("rope_scaling.rope_type '" + type +
              "' is not supported (supported: default, linear, llama3, yarn)");
}

Rope::Rope(const ModelConfig& config, int64_t rotary_dim, torch::Device device)
    : interleaved_(config.rope_interleaved) {
  auto [inv, scale] = rope_inv_freq(config, rotary_dim);
  inv_freq_ = inv.to(device);
  attention_scaling_ = scale;
}

std::pair<torch::Tensor, torch::Tensor> Rope::cos_sin(const torch::Tensor& positions) const {
  auto freqs = positions.to(torch::kFloat32).unsqueeze(-1) *
               inv_freq_.to(positions.device());  // [..., d/2]
  // rotate-half pairs dim i with i + d/2; interleaved pairs 2i with 2i+1
  auto emb = interleaved_ ? freqs.repeat_interleave(2, -1) : torch::cat({freqs, freqs}, -1);
  auto cos = emb.cos();
  auto sin = emb.sin();
  if (attention_scaling_ != 1.0) {
    cos = cos * attention_scaling_;
    sin = sin * attention_scaling_;
  }
  return {cos, sin};
}

torch::Tensor Rope::apply(const torch::Tensor& x, const torch::Tensor& cos,
                          const torch::Tensor& sin) const {
  auto c = cos.unsqueeze(-2).to(x.dtype());  // [..., 1, d]
  auto s = sin.unsqueeze(-2).to(x.dtype());
  torch::Tensor rotated;
  if (interleaved_) {
    auto pairs = x.unflatten(-1, {-1, 2});  // [..., H, d/2, 2]
    auto even = pairs.select(-1, 0);
    auto odd = pairs.select(-1, 1);
    rotated = torch::stack({-odd, even}, -1).flatten(-2);
  } else {
    const int64_t half = x.size(-1) / 2;
    rotated = torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  }
  return x * c + rotated * s;
}

}  // namespace finmoe
