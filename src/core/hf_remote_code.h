#pragma once
// The Python modeling code that lets HF transformers load finmoe's own model
// types (finer_moe, finmoe_dense) with trust_remote_code: the files of
// python/finmoe_hf/, embedded in the binary at build time, and the
// config.json `auto_map` that points at them (docs/formats/hf-remote-code.md).
// Internal to the build; not part of the public API.
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace finmoe {

struct HfRemoteCodeFile {
  const char* name;       // e.g. "modeling_finer_moe.py"
  std::string_view text;  // its bytes, as in python/finmoe_hf/
};

// Defined in the generated hf_remote_code_files.cpp (CMakeLists.txt).
const std::vector<HfRemoteCodeFile>& hf_remote_code_files();

// Whether model_type has no class in transformers and so needs the files.
bool needs_hf_remote_code(const std::string& model_type);

// For a config.json object `config` whose model_type needs the files: writes
// them into `dir` (atomically, each) and sets config["auto_map"]; an int8
// checkpoint (quantization_config) gets none. Other model types: nothing. Call before writing config.json into the same directory.
void add_hf_remote_code(const std::string& dir, nlohmann::json& config);

}  // namespace finmoe
