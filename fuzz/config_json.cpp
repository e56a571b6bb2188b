// libFuzzer target: config.json and generation_config.json text through
// parse_json, ModelConfig::from_json and GenerationConfig::from_json, then
// every count a loaded config feeds (tensor list, parameters, KV bytes).
// Anything but a finmoe::Error is a finding.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "finmoe/config.h"
#include "finmoe/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const nlohmann::json j = finmoe::parse_json(text, "config.json");
    try {
      const finmoe::ModelConfig c = finmoe::ModelConfig::from_json(j, "config.json");
      if (c.param_count() <= 0 || c.active_param_count() <= 0 ||
          c.active_param_count() > c.param_count())
        std::abort();
      if (c.kv_values_per_token() <= 0 || int64_t(c.moe_layers.size()) != c.num_hidden_layers)
        std::abort();
      (void)c.to_json().dump();
    } catch (const finmoe::Error&) {
    }
    (void)finmoe::GenerationConfig::from_json(j, "generation_config.json");
  } catch (const finmoe::Error&) {
  }
  return 0;
}
