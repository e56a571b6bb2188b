#include "core/hf_remote_code.h"

#include <filesystem>

#include "finmoe/config.h"

namespace finmoe {

bool needs_hf_remote_code(const std::string& model_type) {
  return model_type == "finer_moe" || model_type == "finmoe_dense";
}

void add_hf_remote_code(const std::string& dir, nlohmann::json& config) {
  if (!config.is_object() || !config.contains("model_type") || !config["model_type"].is_string())
    return;
  const std::string type = config["model_type"].get<std::string>();
  if (!needs_hf_remote_code(type)) return;
  if (config.contains("quantization_config")) {  // finmoe's int8 layout: the Python code reads floats
    config.erase("auto_map");
    return;
  }
  for (const HfRemoteCodeFile& f : hf_remote_code_files())
    write_file_atomic((std::filesystem::path(dir) / f.name).string(), f.text);
  const bool finer = type == "finer_moe";
  config["auto_map"] = {
      {"AutoConfig", finer ? "configuration_finer_moe.FineRMoeConfig"
                           : "configuration_finer_moe.FinMoeDenseConfig"},
      {"AutoModelForCausalLM", finer ? "modeling_finer_moe.FineRMoeForCausalLM"
                                     : "modeling_finer_moe.FinMoeDenseForCausalLM"}};
}

}  // namespace finmoe
