// LoRA adapters in PEFT's layout (include/finmoe/lora.h, docs/formats/lora.md).
#include "finmoe/lora.h"

#include <cmath>
#include <filesystem>
#include <map>
#include <regex>
#include <set>

#include "core/file_util.h"
#include "core/side_files.h"
#include "finmoe/config.h"
#include "finmoe/error.h"
#include "finmoe/model.h"
#include "finmoe/safetensors.h"
#include "finmoe/serving_adapters.h"
#include "model/linear.h"
#include "model/torch_dtype.h"

namespace finmoe {
namespace fs = std::filesystem;

namespace {

const std::string kKeyPrefix = "base_model.model.";
const std::string kConfigFile = "adapter_config.json";
const std::string kWeightsFile = "adapter_model.safetensors";

// Every linear module of the model by HF module name, in module order.
std::vector<std::pair<std::string, LinearImpl*>> linear_modules(const Transformer& model) {
  std::vector<std::pair<std::string, LinearImpl*>> out;
  auto& root = const_cast<Transformer&>(model).module();
  for (const auto& item : root.named_modules(/*name_prefix=*/"", /*include_self=*/false))
    if (auto* l = dynamic_cast<LinearImpl*>(item.value().get())) out.emplace_back(item.key(), l);
  return out;
}

// The modules a config adapts. lm_head is excluded: the output projection runs
// through finmoe::linear directly (it may be the tied embedding).
std::vector<std::pair<std::string, LinearImpl*>> targets(const Transformer& model,
                                                         const LoraConfig& config) {
  std::vector<std::pair<std::string, LinearImpl*>> out;
  for (const auto& [name, l] : linear_modules(model)) {
    if (!config.matches(name)) continue;
    if (name == "lm_head")
      throw Error("LoRA target 'lm_head': the output projection cannot carry an adapter");
    out.emplace_back(name, l);
  }
  if (!config.target_regex.empty()) {
    if (out.empty())
      throw Error("LoRA target_modules regex '" + config.target_regex +
                  "' matches no linear layer of this " + model.config().model_type + " model");
    return out;
  }
  for (const auto& t : config.target_modules) {
    bool found = false;
    for (const auto& [name, l] : out) found = found || name == t || name.ends_with("." + t);
    if (!found)
      throw Error("LoRA target module '" + t + "' matches no linear layer of this " +
                  model.config().model_type + " model");
  }
  return out;
}

void check_config(const LoraConfig& c, const std::string& source) {
  if (c.r < 1) throw Error(source + ": r must be >= 1, got " + std::to_string(c.r));
  if (!(c.alpha > 0) || !std::isfinite(c.alpha))
    throw Error(source + ": lora_alpha must be positive, got " + std::to_string(c.alpha));
  if (!(c.dropout >= 0 && c.dropout < 1))
    throw Error(source + ": lora_dropout must be in [0, 1), got " + std::to_string(c.dropout));
  if (c.target_modules.empty() && c.target_regex.empty())
    throw Error(source + ": target_modules is empty");
}

void attach(LinearImpl& l, torch::Tensor A, torch::Tensor B, const LoraConfig& c) {
  l.lora_A = std::move(A);
  l.lora_B = std::move(B);
  l.lora_scaling = c.scaling();
  l.lora_dropout = c.dropout;
}

void detach(LinearImpl& l) {
  l.lora_A = torch::Tensor();
  l.lora_B = torch::Tensor();
  l.lora_scaling = 0.0;
  l.lora_dropout = 0.0;
}

void check_no_adapters(const Transformer& model) {
  for (const auto& [name, l] : linear_modules(model))
    if (l->has_lora())
      throw Error(name + " already carries a LoRA adapter; merge_lora or remove_lora first");
}

std::string shape_str(c10::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

}  // namespace

// ---- config -------------------------------------------------------------------

double LoraConfig::scaling() const {
  return use_rslora ? alpha / std::sqrt(double(r)) : alpha / double(r);
}

bool LoraConfig::matches(const std::string& name) const {
  if (!target_regex.empty()) return std::regex_match(name, std::regex(target_regex));
  for (const auto& t : target_modules)
    if (name == t || name.ends_with("." + t)) return true;
  return false;
}

nlohmann::json lora_config_to_json(const LoraConfig& c) {
  // the fields PEFT 0.21 writes for a plain LoRA; absent ones take PEFT's defaults
  nlohmann::json targets = c.target_regex.empty() ? nlohmann::json(c.target_modules)
                                                  : nlohmann::json(c.target_regex);
  return {{"peft_type", "LORA"},
          {"task_type", "CAUSAL_LM"},
          {"base_model_name_or_path",
           c.base_model_name_or_path.empty() ? nlohmann::json(nullptr)
                                             : nlohmann::json(c.base_model_name_or_path)},
          {"r", c.r},
          {"lora_alpha", c.alpha},
          {"lora_dropout", c.dropout},
          {"target_modules", targets},
          {"use_rslora", c.use_rslora},
          {"use_dora", false},
          {"bias", "none"},
          {"fan_in_fan_out", false},
          {"init_lora_weights", true},
          {"inference_mode", true},
          {"modules_to_save", nullptr},
          {"layers_to_transform", nullptr},
          {"layers_pattern", nullptr},
          {"rank_pattern", nlohmann::json::object()},
          {"alpha_pattern", nlohmann::json::object()},
          {"revision", nullptr}};
}

LoraConfig lora_config_from_json(const nlohmann::json& j, const std::string& source) {
  if (!j.is_object()) throw Error(source + ": expected a JSON object");
  LoraConfig c;
  auto field = [&](const char* key) -> const nlohmann::json* {
    auto it = j.find(key);
    return it == j.end() || it->is_null() ? nullptr : &*it;
  };
  auto bad = [&](const std::string& key, const std::string& want) {
    return Error(source + ": field '" + key + "' " + want);
  };
  if (auto* v = field("peft_type"); v && (!v->is_string() || v->get<std::string>() != "LORA"))
    throw bad("peft_type", "must be \"LORA\" (finmoe reads LoRA adapters only), got " + v->dump());
  if (auto* v = field("r")) {
    if (!v->is_number_integer()) throw bad("r", "must be an integer");
    c.r = v->get<int64_t>();
  }
  if (auto* v = field("lora_alpha")) {
    if (!v->is_number()) throw bad("lora_alpha", "must be a number");
    c.alpha = v->get<double>();
  }
  if (auto* v = field("lora_dropout")) {
    if (!v->is_number()) throw bad("lora_dropout", "must be a number");
    c.dropout = v->get<double>();
  }
  if (auto* v = field("use_rslora")) {
    if (!v->is_boolean()) throw bad("use_rslora", "must be true or false");
    c.use_rslora = v->get<bool>();
  }
  if (auto* v = field("target_modules")) {
    if (v->is_string()) {
      c.target_regex = v->get<std::string>();
      c.target_modules.clear();
      // std::regex compiles and matches recursively: a short pattern suffices
      // for module names and keeps a hostile one from exhausting the stack
      if (c.target_regex.size() > 1024)
        throw bad("target_modules", "is a regular expression of " +
                                        std::to_string(c.target_regex.size()) +
                                        " characters (at most 1024)");
      try {
        std::regex check(c.target_regex);
      } catch (const std::regex_error& e) {
        throw bad("target_modules", "is not a valid regular expression: " + std::string(e.what()));
      }
    } else if (v->is_array()) {
      c.target_modules.clear();
      for (const auto& t : *v) {
        if (!t.is_string()) throw bad("target_modules", "must list module names (strings)");
        c.target_modules.push_back(t.get<std::string>());
      }
    } else {
      throw bad("target_modules", "must be a list of module names or a regex string");
    }
  } else {
    throw bad("target_modules", "is missing");
  }
  if (auto* v = field("base_model_name_or_path"); v && v->is_string())
    c.base_model_name_or_path = v->get<std::string>();
  // what finmoe does not implement fails loudly rather than loading a different model
  auto must_be = [&](const char* key, const nlohmann::json& want, const std::string& why) {
    if (auto* v = field(key); v && *v != want)
      throw bad(key, "= " + v->dump() + " is not supported (" + why + ")");
  };
  must_be("use_dora", false, "DoRA");
  must_be("fan_in_fan_out", false, "transposed Conv1D weights");
  must_be("bias", "none", "trained biases");
  must_be("lora_bias", false, "a bias on lora_B");
  for (const char* key : {"rank_pattern", "alpha_pattern"})
    if (auto* v = field(key); v && !(v->is_object() && v->empty()))
      throw bad(key, "must be empty (per-module ranks are not supported)");
  for (const char* key : {"layers_to_transform", "modules_to_save", "exclude_modules",
                          "layer_replication", "trainable_token_indices", "target_parameters"})
    if (auto* v = field(key); v && !(v->is_array() && v->empty()))
      throw bad(key, "= " + v->dump() + " is not supported");
  check_config(c, source);
  return c;
}

// ---- attaching, listing, merging ---------------------------------------------

std::vector<std::pair<std::string, torch::Tensor>> add_lora(Transformer& model,
                                                            const LoraConfig& config,
                                                            uint64_t seed) {
  check_config(config, "LoRA config");
  check_no_adapters(model);
  auto gen = at::detail::createCPUGenerator(seed);
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
  torch::NoGradGuard no_grad;
  for (const auto& [name, l] : targets(model, config)) {
    const int64_t out = l->weight.size(0), in = l->weight.size(1);
    // kaiming_uniform_(a=sqrt(5)): gain sqrt(2/(1+5)), bound gain*sqrt(3/in) = 1/sqrt(in)
    const double bound = 1.0 / std::sqrt(double(in));
    auto A = at::empty({config.r, in}, f32).uniform_(-bound, bound, gen);  // [r, in]
    auto B = torch::zeros({out, config.r}, f32);                           // [out, r]
    const auto dev = l->weight.device();
    attach(*l, A.to(dev).requires_grad_(true), B.to(dev).requires_grad_(true), config);
  }
  return lora_parameters(model);
}

std::vector<std::pair<std::string, torch::Tensor>> lora_parameters(const Transformer& model) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& [name, l] : linear_modules(model)) {
    if (!l->has_lora()) continue;
    out.emplace_back(name + ".lora_A.weight", l->lora_A);
    out.emplace_back(name + ".lora_B.weight", l->lora_B);
  }
  return out;
}

int64_t lora_param_count(const Transformer& model) {
  int64_t n = 0;
  for (const auto& [name, t] : lora_parameters(model)) n += t.numel();
  return n;
}

void merge_lora(Transformer& model) {
  torch::NoGradGuard no_grad;
  for (const auto& [name, l] : linear_modules(model)) {
    if (!l->has_lora()) continue;
    auto delta = l->lora_B.to(torch::kFloat32).mm(l->lora_A.to(torch::kFloat32));  // [out, in]
    auto merged = (l->weight.to(torch::kFloat32) + delta * l->lora_scaling).to(l->weight.dtype());
    // a fresh tensor: the weight may be a view of a read-only-shared mapping
    l->weight.set_data(merged.contiguous());
    detach(*l);
  }
}

void remove_lora(Transformer& model) {
  for (const auto& [name, l] : linear_modules(model)) detach(*l);
}

// ---- files -------------------------------------------------------------------

int64_t save_lora_adapter(const Transformer& model, const LoraConfig& config,
                          const std::string& dir) {
  const auto params = lora_parameters(model);
  if (params.empty()) throw Error("save_lora_adapter: the model carries no LoRA adapter");
  std::vector<torch::Tensor> keep;  // contiguous CPU copies alive during the write
  std::vector<TensorData> tensors;
  for (const auto& [name, t] : params) {
    auto c = t.detach().to(torch::kCPU, torch::kFloat32).contiguous();
    keep.push_back(c);
    tensors.push_back({kKeyPrefix + name, DType::F32, c.sizes().vec(), c.data_ptr(),
                       size_t(c.numel()) * sizeof(float)});
  }
  fs::create_directories(dir);
  const std::string weights = (fs::path(dir) / kWeightsFile).string();
  write_safetensors(weights, tensors, {{"format", "pt"}});
  write_json_file((fs::path(dir) / kConfigFile).string(), lora_config_to_json(config));
  return int64_t(fs::file_size(weights));
}

LoraConfig load_lora_config(const std::string& dir) {
  const std::string path = (fs::path(dir) / kConfigFile).string();
  if (!fs::exists(path)) throw Error(dir + ": no " + kConfigFile + " (not a LoRA adapter directory)");
  return lora_config_from_json(read_json_file(path), path);
}

namespace {

// An adapter directory's tensors per module, checked against the model: keys,
// target modules, shapes, and a complete A/B pair for every targeted module.
struct AdapterTensors {
  LoraConfig config;
  std::map<std::string, std::pair<torch::Tensor, torch::Tensor>> by_module;  // (A, B), float32
};

AdapterTensors read_adapter(const Transformer& model, const std::string& dir) {
  AdapterTensors out;
  const LoraConfig& config = out.config = load_lora_config(dir);
  const std::string path = (fs::path(dir) / kWeightsFile).string();
  if (!fs::exists(path)) throw Error(dir + ": no " + kWeightsFile);
  auto file = SafetensorsFile::open(path);

  std::map<std::string, LinearImpl*> modules;
  for (const auto& [name, l] : linear_modules(model)) modules.emplace(name, l);
  for (const TensorView& v : file->tensors()) {
    const std::string where = path + ": tensor '" + v.name + "'";
    std::string module;
    bool is_a = false;
    for (const std::string suffix : {".lora_A.weight", ".lora_B.weight"})
      if (v.name.starts_with(kKeyPrefix) && v.name.ends_with(suffix)) {
        module = v.name.substr(kKeyPrefix.size(), v.name.size() - kKeyPrefix.size() - suffix.size());
        is_a = suffix == ".lora_A.weight";
      }
    if (module.empty())
      throw Error(where + ": expected base_model.model.<module>.lora_A.weight or .lora_B.weight");
    auto it = modules.find(module);
    if (it == modules.end())
      throw Error(where + ": '" + module + "' is not a linear layer of this " +
                  model.config().model_type + " model");
    if (!config.matches(module) || module == "lm_head")
      throw Error(where + ": '" + module + "' is not among the config's target_modules");
    const LinearImpl& l = *it->second;
    const std::vector<int64_t> want = is_a ? std::vector<int64_t>{config.r, l.weight.size(1)}
                                           : std::vector<int64_t>{l.weight.size(0), config.r};
    if (v.shape != want)
      throw Error(where + " has shape " + shape_str(v.shape) + ", expected " + shape_str(want) +
                  " (r = " + std::to_string(config.r) + ")");
    auto t = torch::from_blob(v.data, v.shape, torch::TensorOptions().dtype(to_torch(v.dtype)))
                 .to(l.weight.device(), torch::kFloat32, /*non_blocking=*/false, /*copy=*/true);
    auto& pair = out.by_module[module];
    (is_a ? pair.first : pair.second) = t;
  }
  for (const auto& [name, l] : targets(model, config)) {
    auto it = out.by_module.find(name);
    if (it == out.by_module.end() || !it->second.first.defined() || !it->second.second.defined())
      throw Error(path + ": no lora_A/lora_B pair for target module '" + name + "'");
  }
  return out;
}

}  // namespace

LoraConfig load_lora_adapter(Transformer& model, const std::string& dir) {
  check_no_adapters(model);
  AdapterTensors a = read_adapter(model, dir);
  std::map<std::string, LinearImpl*> modules;
  for (const auto& [name, l] : linear_modules(model)) modules.emplace(name, l);
  for (auto& [name, p] : a.by_module) attach(*modules.at(name), p.first, p.second, a.config);
  return a.config;
}

void load_lora_weights(Transformer& model, const std::string& dir) {
  AdapterTensors a = read_adapter(model, dir);
  torch::NoGradGuard no_grad;
  for (const auto& [name, l] : linear_modules(model)) {
    auto it = a.by_module.find(name);
    if (l->has_lora() != (it != a.by_module.end()))
      throw Error(dir + ": the adapter " + (l->has_lora() ? "lacks" : "has") +
                  " module '" + name + "' that the model's attached adapters " +
                  (l->has_lora() ? "have" : "do not have"));
    if (!l->has_lora()) continue;
    if (!l->lora_A.sizes().equals(it->second.first.sizes()) ||
        !l->lora_B.sizes().equals(it->second.second.sizes()) ||
        l->lora_scaling != a.config.scaling())
      throw Error(dir + ": module '" + name + "' has another rank or scaling than the attached adapter");
    l->lora_A.copy_(it->second.first);
    l->lora_B.copy_(it->second.second);
  }
}

void merge_lora_checkpoint(const std::string& base_dir, const std::string& adapter_dir,
                           const std::string& out_dir, std::optional<torch::Dtype> dtype) {
  if (fs::exists(out_dir) && !(fs::is_directory(out_dir) && fs::is_empty(out_dir)))
    throw Error("OUT " + out_dir + " exists and is not an empty directory");
  // W's dtype is the output dtype; merge_lora adds B·A in float32 and rounds once
  LoadOptions lo;
  lo.dtype = dtype;
  auto model = load_model(base_dir, lo);
  require_float_weights(model, "lora merge: base model " + base_dir);
  load_lora_adapter(model, adapter_dir);
  merge_lora(model);
  // everything goes to a sibling temp directory renamed into place at the end
  const std::string parent = fs::absolute(out_dir).parent_path().string();
  fs::create_directories(parent);
  const std::string tmp = temp_path_for(fs::absolute(out_dir).string());
  try {
    save_model(model, tmp);
    copy_side_files(base_dir, tmp, /*with_config=*/false);
    if (fs::exists(out_dir)) fs::remove(out_dir);  // empty
    fs::rename(tmp, out_dir);
  } catch (...) {
    remove_tree(tmp);
    throw;
  }
}

ServingAdapterInfo attach_serving_lora(Transformer& model, const std::string& dir, int32_t id) {
  if (id < 1) throw Error(dir + ": serving adapter id must be >= 1, got " + std::to_string(id));
  if (has_serving_adapter(model, id))
    throw Error(dir + ": serving adapter id " + std::to_string(id) + " is already attached");
  AdapterTensors a = read_adapter(model, dir);
  std::map<std::string, LinearImpl*> modules;
  for (const auto& [name, l] : linear_modules(model)) modules.emplace(name, l);
  for (const auto& [name, p] : a.by_module)
    if (name.ends_with("kv_b_proj"))
      throw Error(dir + ": module '" + name +
                  "' runs on cached latents, not on the batch's tokens; it cannot be served "
                  "per request (merge the adapter: finmoe lora merge)");
  ServingAdapterInfo info;
  for (auto& [name, p] : a.by_module) {
    modules.at(name)->served_lora.push_back({id, p.first, p.second, a.config.scaling()});
    ++info.modules;
    info.params += p.first.numel() + p.second.numel();
  }
  return info;
}

}  // namespace finmoe
