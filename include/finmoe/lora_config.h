#pragma once
// A LoRA adapter's hyper-parameters (PEFT's LoraConfig; finmoe/lora.h has the
// adapters themselves). No torch here, so the training config parses without it.
#include <cstdint>
#include <string>
#include <vector>

namespace finmoe {

struct LoraConfig {
  int64_t r = 8;          // rank
  double alpha = 16.0;    // lora_alpha
  double dropout = 0.0;   // lora_dropout, applied to x before A while training
  bool use_rslora = false;
  // Linear modules to adapt: a module matches when its name is a target or
  // ends with "." + target (PEFT's rule), so "gate_proj" adapts every dense
  // FFN's and every expert's gate_proj but not the router "gate". In PEFT
  // files a single string is a regular expression the whole name must match;
  // it is kept in target_regex.
  std::vector<std::string> target_modules = {"q_proj",    "k_proj",  "v_proj", "o_proj",
                                             "gate_proj", "up_proj", "down_proj"};
  std::string target_regex;
  std::string base_model_name_or_path;  // recorded in adapter_config.json

  double scaling() const;  // alpha / r, or alpha / sqrt(r) with use_rslora
  bool matches(const std::string& module_name) const;
};

}  // namespace finmoe
