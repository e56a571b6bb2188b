#pragma once
// ESFT's files without libtorch: the expert config (the ESFT repo's
// expert_cfg.json) and reading a delta checkpoint's description
// (docs/formats/esft.md). finmoe/esft.h has the training, the writing of
// deltas and their application to a model.
//
// Errors: finmoe::Error naming the file and field.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace finmoe {

// Which parameters ESFT trains: the ESFT repo's expert config.
struct ExpertConfig {
  // decoder layer -> ids of the routed experts to train (ascending in files
  // finmoe writes; a MoE layer not listed trains no expert)
  std::map<int64_t, std::vector<int64_t>> experts;
  bool shared_experts = false;      // also train the shared experts (§6.3)
  bool non_expert_modules = false;  // also train everything that is not an expert:
                                    // routers, attention, norms, embeddings, dense FFNs
};

// {"experts": {"<layer>": [ids]}, "shared_experts": b, "non_expert_modules": b}
nlohmann::json expert_config_to_json(const ExpertConfig& config);
ExpertConfig expert_config_from_json(const nlohmann::json& j, const std::string& source);
ExpertConfig load_expert_config(const std::string& path);
void save_expert_config(const std::string& path, const ExpertConfig& config);  // atomic

// ---- delta checkpoints (docs/formats/esft.md) ------------------------------------

inline constexpr int kEsftDeltaFormatVersion = 1;

struct EsftDeltaInfo {
  std::string dir;
  std::string base_model;  // as recorded in esft_delta.json
  ExpertConfig experts;
  int64_t tensors = 0;  // trained tensors stored
  int64_t params = 0;   // their elements
  int64_t bytes = 0;    // size of esft_delta.safetensors
};

// Whether `dir` holds an ESFT delta (an esft_delta.json).
bool is_esft_delta(const std::string& dir);
// Reads esft_delta.json and expert_cfg.json and sizes the tensor file; throws
// Error on a missing file, a format other than finmoe-esft-delta or a
// format_version newer than kEsftDeltaFormatVersion.
EsftDeltaInfo read_esft_delta(const std::string& dir);
// The base model directory: base_model, relative paths taken from the delta's directory.
std::string esft_delta_base(const EsftDeltaInfo& info);

// A non-negative integer written as a layer key or a name's layer field ("12").
bool parse_esft_index(const std::string& s, int64_t& out);

}  // namespace finmoe
