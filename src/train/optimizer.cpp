#include "train/optimizer.h"

#include <cmath>
#include <set>

#include "finmoe/error.h"
#include "finmoe/safetensors.h"

namespace finmoe {

AdamW::AdamW(NamedTensors params, AdamWOptions options)
    : params_(std::move(params)), options_(options) {
  std::set<std::string> names;
  for (const auto& [name, p] : params_) {
    if (!names.insert(name).second) throw Error("optimizer: parameter '" + name + "' listed twice");
    if (!p.is_floating_point())
      throw Error("optimizer: parameter '" + name + "' is not floating point");
    State s;
    // float32 state (float64 for a float64 parameter, e.g. in reference tests)
    auto opts =
        p.options().dtype(p.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32);
    s.exp_avg = torch::zeros(p.sizes(), opts);
    s.exp_avg_sq = torch::zeros(p.sizes(), opts);
    state_.push_back(std::move(s));
  }
}

void AdamW::step(double lr) {
  torch::NoGradGuard no_grad;
  const double b1 = options_.beta1, b2 = options_.beta2;
  for (size_t i = 0; i < params_.size(); ++i) {
    torch::Tensor p = params_[i].second;
    const torch::Tensor& grad = p.grad();
    if (!grad.defined()) continue;
    State& s = state_[i];
    s.step += 1;
    auto g = grad.to(s.exp_avg.scalar_type());
    if (options_.weight_decay != 0 && decays(p)) p.mul_(1.0 - lr * options_.weight_decay);
    s.exp_avg.mul_(b1).add_(g, 1.0 - b1);
    s.exp_avg_sq.mul_(b2).addcmul_(g, g, 1.0 - b2);
    const double bc1 = 1.0 - std::pow(b1, double(s.step));
    const double bc2 = 1.0 - std::pow(b2, double(s.step));
    auto denom = (s.exp_avg_sq.sqrt() / std::sqrt(bc2)).add_(options_.eps);
    if (p.scalar_type() == s.exp_avg.scalar_type()) {
      p.addcdiv_(s.exp_avg, denom, -lr / bc1);
    } else {  // a lower-precision parameter: update in float32, round once
      p.copy_(p.to(torch::kFloat32).addcdiv_(s.exp_avg, denom, -lr / bc1));
    }
  }
}

void AdamW::zero_grad() {
  for (auto& [name, p] : params_) p.mutable_grad() = torch::Tensor();
}

void AdamW::save(const std::string& path) const {
  std::vector<torch::Tensor> keep;  // CPU copies alive during the write
  std::vector<TensorData> tensors;
  auto add = [&](const std::string& name, torch::Tensor t, DType dtype) {
    t = t.detach().to(torch::kCPU).contiguous();
    keep.push_back(t);
    tensors.push_back(
        {name, dtype, t.sizes().vec(), t.data_ptr(), size_t(t.numel()) * t.element_size()});
  };
  for (size_t i = 0; i < params_.size(); ++i) {
    const std::string& name = params_[i].first;
    const DType dt = state_[i].exp_avg.scalar_type() == torch::kFloat64 ? DType::F64 : DType::F32;
    add("exp_avg." + name, state_[i].exp_avg, dt);
    add("exp_avg_sq." + name, state_[i].exp_avg_sq, dt);
    add("step." + name, torch::tensor({state_[i].step}, torch::kInt64), DType::I64);
  }
  write_safetensors(path, tensors, {{"format", "finmoe-adamw"}, {"version", "1"}});
}

void AdamW::load(const std::string& path) {
  auto file = SafetensorsFile::open(path);
  auto version = file->metadata().find("version");
  if (file->metadata().count("format") == 0 || file->metadata().at("format") != "finmoe-adamw" ||
      version == file->metadata().end() || version->second != "1")
    throw Error(path + ": not a finmoe AdamW state of version 1");
  std::set<std::string> expected;
  for (size_t i = 0; i < params_.size(); ++i) {
    const std::string& name = params_[i].first;
    const torch::Tensor& p = params_[i].second;
    auto get = [&](const std::string& key, DType dtype, std::vector<int64_t> shape) {
      expected.insert(key);
      const TensorView* v = file->find(key);
      if (!v) throw Error(path + ": missing optimizer state '" + key + "'");
      if (v->dtype != dtype || v->shape != shape)
        throw Error(path + ": optimizer state '" + key + "' has another dtype or shape than '" +
                    name + "'");
      auto t = torch::from_blob(v->data, v->shape,
                                dtype == DType::F32   ? torch::kFloat32
                                : dtype == DType::F64 ? torch::kFloat64
                                                      : torch::kInt64);
      return t.clone();
    };
    State& s = state_[i];
    torch::NoGradGuard no_grad;
    const DType dt = s.exp_avg.scalar_type() == torch::kFloat64 ? DType::F64 : DType::F32;
    s.exp_avg.copy_(get("exp_avg." + name, dt, p.sizes().vec()));
    s.exp_avg_sq.copy_(get("exp_avg_sq." + name, dt, p.sizes().vec()));
    s.step = get("step." + name, DType::I64, {1}).item<int64_t>();
  }
  for (const auto& t : file->tensors())
    if (!expected.count(t.name))
      throw Error(path + ": optimizer state '" + t.name +
                  "' belongs to no trainable parameter of this run");
}

double clip_grad_norm(const NamedTensors& params, double max_norm) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> norms;
  for (const auto& [name, p] : params)
    if (p.grad().defined()) norms.push_back(p.grad().to(torch::kFloat32).norm());
  if (norms.empty()) return 0.0;
  const double total = torch::stack(norms).norm().item<double>();
  if (max_norm > 0 && total > max_norm) {
    const double scale = max_norm / (total + 1e-6);
    for (const auto& [name, p] : params)
      if (p.grad().defined()) p.grad().mul_(scale);
  }
  return total;
}

}  // namespace finmoe
