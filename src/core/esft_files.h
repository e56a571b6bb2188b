#pragma once
// The file names of an ESFT delta directory (docs/formats/esft.md). Internal.
namespace finmoe::esft_files {

inline constexpr const char* kDelta = "esft_delta.json";           // format, version, base_model
inline constexpr const char* kExperts = "expert_cfg.json";         // the expert config
inline constexpr const char* kTensors = "esft_delta.safetensors";  // the trained tensors
inline constexpr const char* kFormat = "finmoe-esft-delta";

}  // namespace finmoe::esft_files
