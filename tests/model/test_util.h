#pragma once
// Shared helpers for the model-layer tests.
#include "core/file_util.h"
#include <cstdlib>
#include <filesystem>
#include <string>

#include <torch/torch.h>

#include "finmoe/model.h"
#include "finmoe/safetensors.h"

namespace finmoe::test {

inline std::string hf_dir(const std::string& name) {
  return std::string(FINMOE_TEST_DATA_DIR) + "/hf/" + name;
}

// A tensor from a safetensors file, copied out of the mapping.
inline torch::Tensor read_tensor(const std::string& file, const std::string& name) {
  auto f = SafetensorsFile::open(file);
  const TensorView* v = f->find(name);
  if (!v) throw std::runtime_error(name + " not in " + file);
  torch::ScalarType t = v->dtype == DType::I64 ? torch::kInt64 : torch::kFloat32;
  return torch::from_blob(v->data, v->shape, torch::TensorOptions().dtype(t)).clone();
}

inline double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kCPU, torch::kFloat64) - b.to(torch::kCPU, torch::kFloat64))
      .abs()
      .max()
      .item<double>();
}

// The device model tests run on: FINMOE_TEST_DEVICE (cpu | cuda | cuda:N), default cpu.
inline torch::Device test_device() {
  const char* env = std::getenv("FINMOE_TEST_DEVICE");
  return device_from_string(env && *env ? env : "cpu");
}

// A fresh directory under the system temp dir, removed on destruction.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    path = std::filesystem::temp_directory_path() /
           ("finmoe-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter()++));
    std::filesystem::create_directories(path);
  }
  ~TempDir() { finmoe::remove_tree(path.string()); }
  std::string str() const { return path.string(); }
  static int& counter() {
    static int c = 0;
    return c;
  }
};

// A small random model of the given architecture (seeded).
// "mistral_sliding" / "qwen2_sliding": those types with a sliding window
// shorter than the tests' sequences (qwen2: on layer 1 only).
inline ModelConfig tiny_config(const std::string& variant) {
  const bool sliding = variant.ends_with("_sliding");
  const std::string model_type = sliding ? variant.substr(0, variant.size() - 8) : variant;
  nlohmann::json j = {{"model_type", model_type},       {"vocab_size", 300},
                      {"hidden_size", 48},              {"intermediate_size", 80},
                      {"num_hidden_layers", 2},         {"num_attention_heads", 6},
                      {"num_key_value_heads", 2},       {"max_position_embeddings", 128},
                      {"rms_norm_eps", 1e-5},           {"rope_theta", 10000.0},
                      {"tie_word_embeddings", model_type == "qwen2"},
                      {"initializer_range", 0.2}};
  // MoE variants of the same shape: the first layer dense where the format allows
  if (model_type == "mixtral") {
    j.update({{"num_local_experts", 4}, {"num_experts_per_tok", 2}});
  } else if (model_type == "qwen2_moe") {
    j.update({{"num_experts", 6}, {"num_experts_per_tok", 2}, {"moe_intermediate_size", 24},
              {"shared_expert_intermediate_size", 40}, {"mlp_only_layers", {0}}});
  } else if (model_type == "finer_moe") {
    // G_I=2 R_I=2 G_O=2 R_O=2: 16 experts, T_I=1 -> top-2, concat projection
    j.update({{"num_experts", 16}, {"num_experts_per_tok", 2}, {"moe_intermediate_size", 20},
              {"shared_expert_intermediate_size", 40}, {"G_I", 2}, {"R_I", 2}, {"G_O", 2},
              {"R_O", 2}, {"moe_concat_proj", true}});
  } else if (model_type == "finmoe_dense") {
    j.update({{"num_experts", 3}, {"moe_intermediate_size", 32}});
  } else if (model_type == "deepseek_v2") {
    // MLA without q LoRA, 4 routed experts (group-limited greedy over 2 groups) + 1 shared
    j.update({{"q_lora_rank", nullptr}, {"kv_lora_rank", 16}, {"qk_nope_head_dim", 8},
              {"qk_rope_head_dim", 4}, {"v_head_dim", 6}, {"n_routed_experts", 4},
              {"num_experts_per_tok", 2}, {"moe_intermediate_size", 16}, {"n_shared_experts", 1},
              {"topk_method", "group_limited_greedy"}, {"n_group", 2}, {"topk_group", 1},
              {"routed_scaling_factor", 1.5}, {"first_k_dense_replace", 1}});
  } else if (model_type == "deepseek_v3") {
    // MLA with q LoRA, noaux_tc over 2 groups of 3, renormalised and scaled
    j.update({{"q_lora_rank", 12}, {"kv_lora_rank", 16}, {"qk_nope_head_dim", 8},
              {"qk_rope_head_dim", 4}, {"v_head_dim", 6}, {"n_routed_experts", 6},
              {"num_experts_per_tok", 2}, {"moe_intermediate_size", 16}, {"n_shared_experts", 1},
              {"n_group", 2}, {"topk_group", 1}, {"routed_scaling_factor", 2.0},
              {"first_k_dense_replace", 1}});
  }
  if (sliding && model_type == "qwen2")
    j.update({{"use_sliding_window", true}, {"sliding_window", 7}, {"max_window_layers", 1}});
  else if (sliding)
    j.update({{"sliding_window", 9}});
  return ModelConfig::from_json(j, "tiny_config");
}

}  // namespace finmoe::test
