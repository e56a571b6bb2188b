#pragma once
// The sampling defaults of a model directory: generation_config.json's
// temperature, top_k, top_p, min_p and repetition_penalty (HF names, taken
// as vLLM takes them). `serve` requests and `generate` / `chat` flags that
// leave a value out get these.
#include "finmoe/config.h"
#include "finmoe/generate.h"

namespace finmoe::cli {

inline void apply_generation_config(const GenerationConfig& gen, SamplingParams& p) {
  p.temperature = gen.temperature;
  p.top_k = gen.top_k;
  p.top_p = gen.top_p;
  p.min_p = gen.min_p;
  p.repetition_penalty = gen.repetition_penalty;
}

}  // namespace finmoe::cli
