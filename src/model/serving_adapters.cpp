// Serving adapters (include/finmoe/serving_adapters.h): the ESFT side and the
// lookup; LoRA adapters are read in lora.cpp.
#include "finmoe/serving_adapters.h"

#include <map>

#include "finmoe/error.h"
#include "finmoe/esft.h"
#include "finmoe/model.h"
#include "model/linear.h"
#include "model/moe.h"

namespace finmoe {

namespace {

std::map<std::string, MoeImpl*> moe_modules(const Transformer& model) {
  std::map<std::string, MoeImpl*> out;
  auto& root = const_cast<Transformer&>(model).module();
  for (const auto& item : root.named_modules("", /*include_self=*/false))
    if (auto* m = dynamic_cast<MoeImpl*>(item.value().get())) out.emplace(item.key(), m);
  return out;
}

// A copy of `base` whose projections named in `trained` ("gate_proj",
// "w1", ...) take those tensors (in the model's dtype) and whose others share
// the base's weights.
Mlp expert_copy(const MlpImpl& base, const std::map<std::string, torch::Tensor>& trained,
                torch::Dtype dtype, bool mixtral_names) {
  const auto& g = base.gate_proj->weight;
  const auto options = torch::TensorOptions().dtype(dtype).device(g.device());
  // zero-sized parameters: every projection's tensors are set below
  Mlp copy(0, 0, false, options, 0, mixtral_names);
  const std::vector<std::pair<std::string, std::pair<const LinearImpl*, LinearImpl*>>> projs = {
      {mixtral_names ? "w1" : "gate_proj", {base.gate_proj.get(), copy->gate_proj.get()}},
      {mixtral_names ? "w3" : "up_proj", {base.up_proj.get(), copy->up_proj.get()}},
      {mixtral_names ? "w2" : "down_proj", {base.down_proj.get(), copy->down_proj.get()}}};
  for (const auto& [name, pair] : projs) {
    const auto& [from, to] = pair;
    auto it = trained.find(name);
    to->bias = from->bias;
    if (it == trained.end()) {
      to->weight = from->weight;
      to->weight_scale = from->weight_scale;
    } else {
      to->weight = it->second.to(from->weight.device(), dtype).contiguous();
    }
  }
  return copy;
}

}  // namespace

bool has_serving_adapter(const Transformer& model, int32_t id) {
  auto& root = const_cast<Transformer&>(model).module();
  for (const auto& item : root.named_modules("", /*include_self=*/false)) {
    if (auto* l = dynamic_cast<LinearImpl*>(item.value().get()))
      for (const auto& a : l->served_lora)
        if (a.id == id) return true;
    if (auto* m = dynamic_cast<MoeImpl*>(item.value().get()))
      if (m->esft_experts.count(id) || m->esft_shared.count(id)) return true;
  }
  return false;
}

ServingAdapterInfo attach_serving_esft(Transformer& model, const std::string& dir, int32_t id) {
  if (id < 1) throw Error(dir + ": serving adapter id must be >= 1, got " + std::to_string(id));
  if (has_serving_adapter(model, id))
    throw Error(dir + ": serving adapter id " + std::to_string(id) + " is already attached");
  const EsftDeltaInfo info = read_esft_delta(dir);
  if (info.experts.non_expert_modules)
    throw Error(dir + ": this ESFT delta also trained non-expert modules (attention, router, "
                "norms, embeddings); they cannot be swapped per request: serve the delta "
                "directory as a model of its own");
  const auto tensors = read_esft_delta_tensors(model, dir);
  const auto moes = moe_modules(model);

  // (MoE module, routed expert or -1 for the shared experts) -> projection -> tensor
  std::map<std::pair<MoeImpl*, int64_t>, std::map<std::string, torch::Tensor>> groups;
  for (const auto& [name, t] : tensors) {
    MoeImpl* moe = nullptr;
    std::string rest;
    for (const auto& [prefix, m] : moes)
      if (name.starts_with(prefix + ".")) {
        moe = m;
        rest = name.substr(prefix.size() + 1);
      }
    const auto fail = [&] {
      return Error(dir + ": tensor '" + name + "' is not a routed or shared expert's weight");
    };
    if (moe == nullptr || !rest.ends_with(".weight")) throw fail();
    rest.resize(rest.size() - std::string(".weight").size());  // experts.5.up_proj | shared_expert.up_proj
    int64_t expert = -1;
    std::string proj;
    if (rest.starts_with("experts.")) {
      const auto dot = rest.find('.', 8);
      if (dot == std::string::npos) throw fail();
      expert = std::stoll(rest.substr(8, dot - 8));
      proj = rest.substr(dot + 1);
    } else if (rest.starts_with("shared_expert.") || rest.starts_with("shared_experts.")) {
      proj = rest.substr(rest.find('.') + 1);
    } else {
      throw fail();
    }
    groups[{moe, expert}][proj] = t;
  }

  ServingAdapterInfo out;
  const bool mixtral = model.config().model_type == "mixtral";
  for (const auto& [key, trained] : groups) {
    auto [moe, expert] = key;
    for (const auto& [proj, t] : trained) out.params += t.numel();
    ++out.modules;
    if (expert < 0)
      moe->esft_shared.insert_or_assign(id, expert_copy(*moe->shared_expert, trained, model.dtype(), false));
    else
      moe->esft_experts[id].insert_or_assign(
          expert, expert_copy(*moe->experts.at(size_t(expert)), trained, model.dtype(), mixtral));
  }
  return out;
}

}  // namespace finmoe
