#include <map>

#include "finmoe/error.h"
#include "finmoe/model.h"

namespace finmoe {
namespace {

// HF config.json fields of each preset (public model shapes; weights are random).
const std::map<std::string, nlohmann::json>& presets() {
  static const std::map<std::string, nlohmann::json> p = {
      {"tiny",
       {{"model_type", "qwen2"}, {"hidden_size", 64}, {"intermediate_size", 128},
        {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"num_key_value_heads", 2},
        {"vocab_size", 512}, {"max_position_embeddings", 2048}, {"rope_theta", 1000000.0},
        {"rms_norm_eps", 1e-6}, {"tie_word_embeddings", true}}},
      {"small",
       {{"model_type", "qwen2"}, {"hidden_size", 256}, {"intermediate_size", 704},
        {"num_hidden_layers", 4}, {"num_attention_heads", 4}, {"num_key_value_heads", 2},
        {"vocab_size", 512}, {"max_position_embeddings", 4096}, {"rope_theta", 1000000.0},
        {"rms_norm_eps", 1e-6}, {"tie_word_embeddings", true}}},
      {"qwen2-0.5b",
       {{"model_type", "qwen2"}, {"hidden_size", 896}, {"intermediate_size", 4864},
        {"num_hidden_layers", 24}, {"num_attention_heads", 14}, {"num_key_value_heads", 2},
        {"vocab_size", 151936}, {"max_position_embeddings", 32768}, {"rope_theta", 1000000.0},
        {"rms_norm_eps", 1e-6}, {"tie_word_embeddings", true}}},
      {"qwen2.5-1.5b",
       {{"model_type", "qwen2"}, {"hidden_size", 1536}, {"intermediate_size", 8960},
        {"num_hidden_layers", 28}, {"num_attention_heads", 12}, {"num_key_value_heads", 2},
        {"vocab_size", 151936}, {"max_position_embeddings", 32768}, {"rope_theta", 1000000.0},
        {"rms_norm_eps", 1e-6}, {"tie_word_embeddings", true}}},
      {"llama3.2-1b",
       {{"model_type", "llama"}, {"hidden_size", 2048}, {"intermediate_size", 8192},
        {"num_hidden_layers", 16}, {"num_attention_heads", 32}, {"num_key_value_heads", 8},
        {"head_dim", 64}, {"vocab_size", 128256}, {"max_position_embeddings", 131072},
        {"rope_theta", 500000.0}, {"rms_norm_eps", 1e-5}, {"tie_word_embeddings", true},
        {"rope_scaling",
         {{"rope_type", "llama3"}, {"factor", 32.0}, {"low_freq_factor", 1.0},
          {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}}}}},
      {"llama3-8b",
       {{"model_type", "llama"}, {"hidden_size", 4096}, {"intermediate_size", 14336},
        {"num_hidden_layers", 32}, {"num_attention_heads", 32}, {"num_key_value_heads", 8},
        {"vocab_size", 128256}, {"max_position_embeddings", 8192}, {"rope_theta", 500000.0},
        {"rms_norm_eps", 1e-5}, {"tie_word_embeddings", false}}},
      {"mistral-7b",
       {{"model_type", "mistral"}, {"hidden_size", 4096}, {"intermediate_size", 14336},
        {"num_hidden_layers", 32}, {"num_attention_heads", 32}, {"num_key_value_heads", 8},
        {"vocab_size", 32768}, {"max_position_embeddings", 32768}, {"rope_theta", 1000000.0},
        {"rms_norm_eps", 1e-5}, {"tie_word_embeddings", false}}},
  };
  return p;
}

}  // namespace

const std::vector<std::string>& preset_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> n;
    for (const auto& [k, v] : presets()) n.push_back(k);
    return n;
  }();
  return names;
}

ModelConfig preset_config(const std::string& preset, const std::string& model_type,
                          int64_t vocab_size) {
  auto it = presets().find(preset);
  if (it == presets().end()) {
    std::string names;
    for (const auto& n : preset_names()) names += (names.empty() ? "" : ", ") + n;
    throw Error("unknown preset '" + preset + "' (presets: " + names + ")");
  }
  nlohmann::json j = it->second;
  if (!model_type.empty()) j["model_type"] = model_type;
  if (vocab_size > 0) j["vocab_size"] = vocab_size;
  const std::string arch = j["model_type"];
  j["architectures"] = {default_architecture(arch)};
  j["hidden_act"] = "silu";
  j["initializer_range"] = 0.02;
  j["torch_dtype"] = "bfloat16";
  return ModelConfig::from_json(j, "preset " + preset);
}

}  // namespace finmoe
