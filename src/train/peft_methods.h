#pragma once
// The parameter-efficient TrainMethods (finmoe/train.h): ESFT trains the
// experts of esft.expert_config and checkpoints an ESFT delta; LoRA trains
// adapters (lora.*) and checkpoints a PEFT adapter directory.
#include <memory>

#include "finmoe/train.h"

namespace finmoe {

std::unique_ptr<TrainMethod> make_esft_method(const TrainConfig& config);
std::unique_ptr<TrainMethod> make_lora_method(const TrainConfig& config);

}  // namespace finmoe
