// ESFT and LoRA as trainer modes (src/train/peft_methods.h).
#include "train/peft_methods.h"

#include "finmoe/esft.h"
#include "finmoe/lora.h"
#include "finmoe/model.h"

namespace finmoe {
namespace {

// Only the selected experts move; a checkpoint is an ESFT delta of `model`
// (docs/formats/esft.md) holding those tensors in float32, the trainer's dtype.
class EsftTraining : public TrainMethod {
 public:
  EsftTraining(ExpertConfig experts, std::string base)
      : experts_(std::move(experts)), base_(std::move(base)) {}

  NamedTensors prepare(Transformer& model) override { return apply_esft(model, experts_); }

  void save(Transformer& model, const std::string& dir) override {
    save_esft_delta(model, experts_, base_, dir);
  }

  // set_data keeps each parameter's identity, so the optimizer's tensors stay the model's
  void load(Transformer& model, const std::string& dir) override { apply_esft_delta(model, dir); }

 private:
  ExpertConfig experts_;
  std::string base_;
};

// Adapters on the base's linears; base weights frozen. A checkpoint is a PEFT
// adapter directory (docs/formats/lora.md).
class LoraTraining : public TrainMethod {
 public:
  LoraTraining(LoraConfig config, uint64_t seed) : config_(std::move(config)), seed_(seed) {}

  NamedTensors prepare(Transformer& model) override {
    for (auto& [name, t] : model.named_parameters()) t.requires_grad_(false);
    return add_lora(model, config_, seed_);
  }

  void save(Transformer& model, const std::string& dir) override {
    save_lora_adapter(model, config_, dir);
  }

  void load(Transformer& model, const std::string& dir) override { load_lora_weights(model, dir); }

 private:
  LoraConfig config_;
  uint64_t seed_;
};

}  // namespace

std::unique_ptr<TrainMethod> make_esft_method(const TrainConfig& c) {
  return std::make_unique<EsftTraining>(load_expert_config(c.esft.expert_config), c.model);
}

std::unique_ptr<TrainMethod> make_lora_method(const TrainConfig& c) {
  LoraConfig lora = c.lora;
  lora.base_model_name_or_path = c.model;
  return std::make_unique<LoraTraining>(lora, c.seed);
}

}  // namespace finmoe
