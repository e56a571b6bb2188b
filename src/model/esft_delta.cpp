// ESFT expert configs, trainable parameter sets and delta checkpoints
// (include/finmoe/esft.h, docs/formats/esft.md). In the model layer because
// load_model() reads deltas; scoring and selection are in src/train/esft.cpp.
#include <algorithm>
#include <cctype>
#include <filesystem>
#include <map>
#include <set>

#include "core/esft_files.h"
#include "core/side_files.h"
#include "finmoe/config.h"
#include "finmoe/error.h"
#include "finmoe/esft.h"
#include "finmoe/model.h"
#include "finmoe/safetensors.h"
#include "model/torch_dtype.h"

namespace finmoe {
namespace fs = std::filesystem;

namespace {



std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

}  // namespace

// ---- expert configs ------------------------------------------------------------

void check_expert_config(const ExpertConfig& c, const ModelConfig& m, const std::string& source) {
  if (!m.is_moe())
    throw Error(source + ": model_type '" + m.model_type + "' has no routed experts to select");
  for (const auto& [layer, ids] : c.experts) {
    const std::string where = source + ": layer " + std::to_string(layer);
    if (layer >= m.num_hidden_layers || !m.moe_layers.at(size_t(layer)))
      throw Error(where + " is not an MoE layer of this " + m.model_type + " model (" +
                  std::to_string(m.num_hidden_layers) + " layers)");
    std::set<int64_t> seen;
    for (int64_t e : ids) {
      if (e >= m.num_experts)
        throw Error(where + ": expert " + std::to_string(e) + " outside [0, " +
                    std::to_string(m.num_experts) + ")");
      if (!seen.insert(e).second) throw Error(where + ": expert " + std::to_string(e) + " listed twice");
    }
  }
}

// ---- trainable parameters --------------------------------------------------------

EsftParamRole esft_param_role(const std::string& name) {
  static const std::string prefix = "model.layers.";
  EsftParamRole r;
  if (!name.starts_with(prefix)) return r;
  const size_t dot = name.find('.', prefix.size());
  int64_t layer = 0;
  if (dot == std::string::npos || !parse_esft_index(name.substr(prefix.size(), dot - prefix.size()), layer))
    return r;
  const std::string rest = name.substr(dot + 1);  // "mlp.experts.3.up_proj.weight"
  for (const char* block : {"mlp.", "block_sparse_moe."}) {
    if (!rest.starts_with(block)) continue;
    const std::string sub = rest.substr(std::string(block).size());
    if (sub.starts_with("experts.")) {
      const size_t end = sub.find('.', 8);
      int64_t e = 0;
      if (end != std::string::npos && parse_esft_index(sub.substr(8, end - 8), e))
        return {EsftParamRole::RoutedExpert, layer, e};
    }
    if (sub.starts_with("shared_expert.") || sub.starts_with("shared_experts."))
      return {EsftParamRole::SharedExpert, layer, -1};
  }
  return r;
}

bool gradient_free_parameter(const std::string& name) {
  return name.ends_with(".gate.e_score_correction_bias");
}

bool esft_trains(const ExpertConfig& c, const std::string& name) {
  if (gradient_free_parameter(name)) return false;
  const EsftParamRole r = esft_param_role(name);
  switch (r.kind) {
    case EsftParamRole::RoutedExpert: {
      auto it = c.experts.find(r.layer);
      return it != c.experts.end() &&
             std::find(it->second.begin(), it->second.end(), r.expert) != it->second.end();
    }
    case EsftParamRole::SharedExpert: return c.shared_experts;
    case EsftParamRole::NonExpert: return c.non_expert_modules;
  }
  return false;
}

std::vector<std::pair<std::string, torch::Tensor>> esft_trainable_parameters(
    const Transformer& model, const ExpertConfig& c) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (auto& [name, t] : model.named_parameters())
    if (esft_trains(c, name)) out.emplace_back(name, t);
  return out;
}

std::vector<std::pair<std::string, torch::Tensor>> apply_esft(Transformer& model,
                                                              const ExpertConfig& c) {
  check_expert_config(c, model.config(), "expert config");
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (auto& [name, t] : model.named_parameters()) {
    const bool train = esft_trains(c, name);
    t.requires_grad_(train);
    if (train) out.emplace_back(name, t);
  }
  return out;
}

EsftParamCount esft_param_count(const ModelConfig& m, const ExpertConfig& c) {
  check_expert_config(c, m, "expert config");
  EsftParamCount n;
  for (const auto& [layer, ids] : c.experts) n.experts += int64_t(ids.size());
  for (const TensorSpec& s : expected_tensors(m)) {
    int64_t k = 1;
    for (int64_t d : s.shape) k *= d;
    n.total += k;
    if (!esft_trains(c, s.name)) continue;
    n.trainable += k;
    switch (esft_param_role(s.name).kind) {
      case EsftParamRole::RoutedExpert: n.routed += k; break;
      case EsftParamRole::SharedExpert: n.shared += k; break;
      case EsftParamRole::NonExpert: n.other += k; break;
    }
  }
  return n;
}

// ---- delta checkpoints -------------------------------------------------------------

EsftDeltaInfo save_esft_delta(const Transformer& model, const ExpertConfig& c,
                              const std::string& base_dir, const std::string& out_dir,
                              std::optional<torch::Dtype> dtype) {
  check_expert_config(c, model.config(), "expert config");
  if (is_esft_delta(base_dir))
    throw Error("base model " + base_dir + " is itself an ESFT delta; give the model it is a delta of");
  const ModelConfig base = ModelConfig::load(base_dir);
  const ModelConfig& m = model.config();
  if (base.model_type != m.model_type || base.num_hidden_layers != m.num_hidden_layers ||
      base.hidden_size != m.hidden_size || base.num_experts != m.num_experts ||
      base.vocab_size != m.vocab_size)
    throw Error("base model " + base_dir + " (" + base.model_type + ", " +
                std::to_string(base.num_hidden_layers) + " layers) is not the shape of the trained " +
                m.model_type + " model");
  std::error_code ec;
  if (fs::exists(out_dir) && fs::equivalent(out_dir, base_dir, ec))
    throw Error("the ESFT delta cannot be written into the base model's directory " + base_dir);

  EsftDeltaInfo info;
  info.dir = out_dir;
  info.base_model = fs::absolute(base_dir).lexically_normal().string();
  info.experts = c;
  std::vector<torch::Tensor> keep;  // contiguous CPU copies alive during the write
  std::vector<TensorData> tensors;
  for (const auto& [name, t] : esft_trainable_parameters(model, c)) {
    auto x = t.detach().to(torch::kCPU, dtype.value_or(t.scalar_type())).contiguous();
    keep.push_back(x);
    tensors.push_back({name, from_torch(x.scalar_type()), x.sizes().vec(), x.data_ptr(),
                       size_t(x.numel()) * x.element_size()});
    info.params += x.numel();
  }
  if (tensors.empty()) throw Error("expert config trains no parameter of this model; nothing to save");
  info.tensors = int64_t(tensors.size());

  fs::create_directories(out_dir);
  const fs::path dir(out_dir);
  // the marker file last: a directory is a delta only once its tensors are complete
  write_safetensors((dir / esft_files::kTensors).string(), tensors, {{"format", "pt"}});
  info.bytes = int64_t(fs::file_size(dir / esft_files::kTensors));
  save_expert_config((dir / esft_files::kExperts).string(), c);
  copy_side_files(base_dir, out_dir, /*with_config=*/true);
  write_json_file((dir / esft_files::kDelta).string(),
                  {{"format", esft_files::kFormat},
                   {"format_version", kEsftDeltaFormatVersion},
                   {"base_model", info.base_model},
                   {"tensors", info.tensors},
                   {"params", info.params},
                   {"dtype", std::string(dtype_name(from_torch(keep.front().scalar_type())))}});
  return info;
}

std::vector<std::pair<std::string, torch::Tensor>> read_esft_delta_tensors(const Transformer& model,
                                                                           const std::string& dir) {
  const EsftDeltaInfo info = read_esft_delta(dir);
  check_expert_config(info.experts, model.config(), (fs::path(dir) / esft_files::kExperts).string());
  const std::string path = (fs::path(dir) / esft_files::kTensors).string();
  auto file = SafetensorsFile::open(path);
  std::map<std::string, torch::Tensor> params;
  for (auto& [name, t] : model.named_parameters()) params.emplace(name, t);

  std::vector<std::pair<std::string, torch::Tensor>> out;
  std::set<std::string> seen;
  for (const TensorView& v : file->tensors()) {
    const std::string where = path + ": tensor '" + v.name + "'";
    auto it = params.find(v.name);
    if (it == params.end())
      throw Error(where + " is not a parameter of this " + model.config().model_type + " model");
    if (!esft_trains(info.experts, v.name))
      throw Error(where + " is not one that " + esft_files::kExperts + " trains");
    if (v.shape != it->second.sizes().vec())
      throw Error(where + " has shape " + shape_str(v.shape) + ", the base model " +
                  shape_str(it->second.sizes().vec()));
    // zero-copy view of the mapping, kept alive by the deleter
    out.emplace_back(v.name, torch::from_blob(v.data, v.shape, [file](void*) {},
                                              torch::TensorOptions().dtype(to_torch(v.dtype))));
    seen.insert(v.name);
  }
  for (const auto& [name, t] : params)
    if (esft_trains(info.experts, name) && !seen.count(name))
      throw Error(path + ": missing tensor '" + name + "' that " + esft_files::kExperts + " trains");
  return out;
}

void apply_esft_delta(Transformer& model, const std::string& dir) {
  const auto tensors = read_esft_delta_tensors(model, dir);
  std::map<std::string, torch::Tensor> params;
  for (auto& [name, t] : model.named_parameters()) params.emplace(name, t);
  torch::NoGradGuard no_grad;
  for (const auto& [name, blob] : tensors) {
    auto& p = params.at(name);
    p.set_data(blob.scalar_type() == p.scalar_type() && p.device().is_cpu()
                   ? blob
                   : blob.to(p.device(), p.scalar_type()));
  }
}

}  // namespace finmoe
