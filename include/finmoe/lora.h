#pragma once
// LoRA (Hu et al. 2021), the parameter-efficient baseline of ESFT §5, in
// Hugging Face PEFT's layout so adapters move between finmoe and `peft`
// (docs/formats/lora.md).
//
// An adapter on a linear layer W [out, in] adds a rank-r update:
//   y = x·Wᵀ + b + scaling · (dropout(x)·Aᵀ)·Bᵀ,   A [r, in], B [out, r],
//   scaling = alpha / r   (alpha / sqrt(r) with use_rslora)
// A starts kaiming-uniform (a = sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in))) and
// B at zero, as PEFT does, so a fresh adapter leaves the model unchanged.
// Adapters are float32 whatever the model's dtype (PEFT's autocast_adapter_dtype).
// They are not module parameters: Transformer::named_parameters() keeps
// listing the checkpoint's tensors; lora_parameters() lists the adapters.
//
// Files: DIR/adapter_config.json (PEFT's LoraConfig) and
// DIR/adapter_model.safetensors with keys
//   base_model.model.<module>.lora_A.weight  [r, in]
//   base_model.model.<module>.lora_B.weight  [out, r]
// where <module> is the HF module name (model.layers.0.self_attn.q_proj).
//
// Thread safety: functions that change a model need it to be used by no other
// thread meanwhile. Errors: finmoe::Error naming the file, field or module.
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>
#include <torch/torch.h>

#include "finmoe/lora_config.h"

namespace finmoe {

class Transformer;
struct LoadOptions;

// adapter_config.json <-> LoraConfig. Reading rejects what finmoe does not
// implement (peft_type other than LORA, use_dora, fan_in_fan_out, bias other
// than "none", rank/alpha patterns, layers_to_transform, modules_to_save,
// exclude_modules) with an Error naming the field.
nlohmann::json lora_config_to_json(const LoraConfig& config);
LoraConfig lora_config_from_json(const nlohmann::json& j, const std::string& source);

// Attaches a fresh adapter (A kaiming-uniform from `seed`, B zero) to every
// matching linear layer and returns the adapters' tensors, requires_grad on,
// named as lora_parameters() names them. Base parameters are not touched.
// Throws Error when r < 1, alpha <= 0, dropout outside [0, 1), a target
// matches no linear layer, or the model already carries adapters.
std::vector<std::pair<std::string, torch::Tensor>> add_lora(Transformer& model,
                                                            const LoraConfig& config,
                                                            uint64_t seed = 0);

// The attached adapters: "<module>.lora_A.weight" / "<module>.lora_B.weight",
// in module order.
std::vector<std::pair<std::string, torch::Tensor>> lora_parameters(const Transformer& model);
// Trainable elements of the attached adapters.
int64_t lora_param_count(const Transformer& model);

// Writes DIR/adapter_config.json and DIR/adapter_model.safetensors (float32),
// each atomically; returns the bytes of the safetensors file.
int64_t save_lora_adapter(const Transformer& model, const LoraConfig& config,
                          const std::string& dir);
LoraConfig load_lora_config(const std::string& adapter_dir);
// Reads an adapter directory (finmoe's or PEFT's) and attaches it to `model`.
// Throws Error when a key is not base_model.model.<module>.lora_{A,B}.weight
// of a linear module of the model, a shape does not fit, or a module the
// config targets has no tensors.
LoraConfig load_lora_adapter(Transformer& model, const std::string& adapter_dir);
// Copies an adapter's tensors into the adapters already attached (same
// modules, ranks and scaling), in place: tensors handed out by add_lora (an
// optimizer's) stay the adapter's. For resuming training.
void load_lora_weights(Transformer& model, const std::string& adapter_dir);

// W += scaling · B·A on every adapted layer (in float32, rounded once to W's
// dtype), then detaches the adapters.
void merge_lora(Transformer& model);
// Detaches the adapters without merging.
void remove_lora(Transformer& model);

// `finmoe lora merge`: loads base (its torch_dtype unless `dtype` is given) +
// adapter, merges (B·A in float32, rounded once) and writes a plain HF checkpoint with the
// base's tokenizer and generation files into `out_dir`, built in a temporary
// sibling directory and renamed into place. `out_dir` must not exist or be empty.
void merge_lora_checkpoint(const std::string& base_dir, const std::string& adapter_dir,
                           const std::string& out_dir,
                           std::optional<torch::Dtype> dtype = std::nullopt);

}  // namespace finmoe
