#pragma once
// Model configuration parsed from a Hugging Face `config.json`, and the
// sampling defaults of `generation_config.json`.
//
// Field names mirror the HF keys. Derived values are computed in
// ModelConfig::finalize() only. Unknown keys are kept in `raw` so a loaded
// config writes back unchanged.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "finmoe/error.h"

namespace finmoe {

// `rope_scaling` of config.json (HF `rope_type`, or the older `type` key).
struct RopeScaling {
  std::string rope_type = "default";  // default | linear | dynamic | llama3 | yarn
  double factor = 1.0;
  // llama3
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 0;  // llama3 / yarn; 0 = unset
  // yarn
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  std::optional<double> attention_factor;  // yarn; default 0.1*ln(factor)+1
  double mscale = 0.0;                      // deepseek-style yarn; 0 = unset
  double mscale_all_dim = 0.0;
};

// `quantization_config` of an 8-bit checkpoint written by `finmoe quantize`
// (docs/formats/int8.md). A module's 2-D `weight` is stored as int8 with a
// `weight_scale` beside it unless the module is listed in `ignore`; norms and
// biases are never quantized.
struct QuantizationConfig {
  static constexpr int64_t kFormatVersion = 1;  // the newest this build reads
  std::string quant_method = "finmoe_int8";     // the only method
  int64_t format_version = kFormatVersion;
  int64_t bits = 8;
  int64_t group_size = 0;                 // 0: one scale per output channel; or 32
  std::string scale_dtype = "bfloat16";   // bfloat16 | float32
  std::vector<std::string> ignore;        // module names kept in torch_dtype (router gates)

  // Whether the tensor `name` (HF name, `shape`) is stored as int8: the 2-D
  // `<module>.weight` of a module not in `ignore`.
  bool quantizes(const std::string& name, const std::vector<int64_t>& shape) const;
  static QuantizationConfig from_json(const nlohmann::json& j, const std::string& source);
  nlohmann::json to_json() const;
};

// Upper bounds ModelConfig::finalize() puts on config.json (docs/formats/config.md,
// "Limits"): each far beyond released models, so that a corrupt or hostile
// file is refused before anything is sized from it.
inline constexpr int64_t kMaxVocabSize = int64_t(1) << 24;         // 16.8M tokens
inline constexpr int64_t kMaxHiddenSize = int64_t(1) << 17;        // 131072
inline constexpr int64_t kMaxIntermediateSize = int64_t(1) << 20;  // any FFN or expert width
inline constexpr int64_t kMaxLayers = int64_t(1) << 12;            // 4096
inline constexpr int64_t kMaxHeads = int64_t(1) << 12;             // query or key/value heads
inline constexpr int64_t kMaxHeadDim = int64_t(1) << 13;
inline constexpr int64_t kMaxExperts = int64_t(1) << 16;    // also each of G_I, R_I, G_O, R_O
inline constexpr int64_t kMaxPositions = int64_t(1) << 30;  // context, window, original context
inline constexpr int64_t kMaxParams = int64_t(1) << 48;     // 2.8e14 parameters in all

struct ModelConfig {
  std::string model_type;  // llama | qwen2 | mistral | mixtral | qwen2_moe | finer_moe | finmoe_dense
                           // | deepseek_v2 | deepseek_v3
  std::vector<std::string> architectures; // e.g. ["Qwen2ForCausalLM"]
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;        // default: num_attention_heads
  int64_t head_dim = 0;                   // default: hidden_size / num_attention_heads
  std::string hidden_act = "silu";
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool rope_interleaved = false;          // finmoe: pairs (2i, 2i+1) instead of HF rotate-half
  int64_t max_position_embeddings = 2048;
  bool tie_word_embeddings = false;
  bool attention_bias = false;            // q/k/v bias (llama family: o_proj too; qwen family: q/k/v only)
  bool mlp_bias = false;
  std::optional<int64_t> sliding_window;  // mistral / qwen2 (use_sliding_window)
  int64_t max_window_layers = 28;         // qwen family: layers below this keep full attention
  std::vector<std::string> layer_types;   // "full_attention" | "sliding_attention"; empty = derived
  std::string torch_dtype = "float32";    // float32 | bfloat16 | float16
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_id;      // int or list in config.json
  std::optional<int64_t> pad_token_id;
  double initializer_range = 0.02;
  // `quantization_config`: int8 weights (docs/formats/int8.md); none for float checkpoints.
  std::optional<QuantizationConfig> quantization;

  // ---- Mixture of experts (docs/formats/moe.md). num_experts == 0: every FFN is dense.
  int64_t num_experts = 0;            // mixtral: num_local_experts; others: num_experts
  int64_t num_experts_per_tok = 0;    // routed experts per token (top-k); finmoe_dense: all
  int64_t moe_intermediate_size = 0;  // a routed expert's width (mixtral: intermediate_size)
  int64_t shared_expert_intermediate_size = 0;  // qwen2_moe / finer_moe; 0 = no shared expert
  bool norm_topk_prob = false;        // qwen2_moe: renormalise the top-k probabilities
  int64_t decoder_sparse_step = 1;    // layer i is MoE when (i + 1) % step == 0
  std::vector<int64_t> mlp_only_layers;  // layers kept dense
  double router_aux_loss_coef = 0.001;   // alpha of the load-balancing loss
  // finer_moe (FineRMoE §3.1, the reference repository's keys): N = G_I*R_I*G_O*R_O
  // experts; each expert's down_proj writes hidden_size/G_O values; top-k = T_I*G_O.
  int64_t G_I = 1, R_I = 1, G_O = 1, R_O = 1;
  bool moe_concat_proj = false;       // an extra hidden x hidden projection after the concat

  // ---- DeepSeek-V2/V3 (docs/formats/deepseek.md). Multi-head latent attention:
  // q = q_proj(x), or q_b_proj(q_a_layernorm(q_a_proj(x))) when q_lora_rank > 0;
  // [latent | k_rope] = kv_a_proj_with_mqa(x); [k_nope | v] per head =
  // kv_b_proj(kv_a_layernorm(latent)); the rope part is shared by all heads.
  int64_t q_lora_rank = 0;           // 0 (null in config.json): q_proj
  int64_t kv_lora_rank = 0;          // > 0: the model uses MLA
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;      // = head_dim (the rope's dims)
  int64_t v_head_dim = 0;
  // DeepSeekMoE: n_shared_experts always-on experts of moe_intermediate_size
  // each (one MLP of their summed width, no gate); routed weights times
  // routed_scaling_factor; scoring softmax | sigmoid; topk_method greedy |
  // group_limited_greedy (best topk_group of n_group groups by their best
  // score) | noaux_tc (sigmoid + e_score_correction_bias for the choice,
  // groups by their best two). Layer i is MoE when i >= first_k_dense_replace
  // and i % moe_layer_freq == 0.
  int64_t n_shared_experts = 0;
  double routed_scaling_factor = 1.0;
  std::string scoring_func = "softmax";
  std::string topk_method = "greedy";
  int64_t n_group = 1;
  int64_t topk_group = 1;
  int64_t first_k_dense_replace = 0;
  int64_t moe_layer_freq = 1;

  // Derived in finalize():
  std::vector<bool> moe_layers;       // per layer: MoE FFN (true) or dense SwiGLU
  std::vector<bool> sliding_layers;   // per layer: attends only to the last sliding_window positions

  nlohmann::json raw;  // the parsed file, for round-trip of unknown keys

  // Parses and validates (positive sizes, heads divide, known model_type,
  // known rope type). `source` names the file in error messages.
  static ModelConfig from_json(const nlohmann::json& j, const std::string& source = "config.json");
  // Fills the derived defaults (num_key_value_heads and head_dim when 0) and
  // validates, naming `source` in errors. from_json calls it; call it on a
  // config built in code.
  void finalize(const std::string& source = "config.json");
  // Reads DIR/config.json.
  static ModelConfig load(const std::string& dir);
  nlohmann::json to_json() const;
  // Writes DIR/config.json atomically.
  void save(const std::string& dir) const;

  static const std::vector<std::string>& supported_model_types();

  // Derived sizes.
  int64_t q_size() const { return num_attention_heads * head_dim; }
  int64_t kv_size() const { return num_key_value_heads * head_dim; }
  bool is_moe() const { return num_experts > 0; }
  // Attention window of a layer: a token sees positions > its own - window;
  // 0 = full causal attention (HF's sliding_window_overlay).
  int64_t attention_window(int64_t layer) const {
    return sliding_window && sliding_layers.at(size_t(layer)) ? *sliding_window : 0;
  }
  bool o_proj_bias() const;  // attention_bias reaches o_proj (llama family) or not (qwen family)
  // How router logits become expert weights (FineRMoE's bi-level mask is applied
  // first when G_O*R_O > 1 or T_I < G_I*R_I).
  enum class Routing {
    TopKSoftmax,  // mixtral, finer_moe: softmax over the selected top-k logits
    SoftmaxTopK,  // qwen2_moe: softmax over all experts, keep top-k (renormalised if norm_topk_prob)
    Dense,        // finmoe_dense: softmax over all experts, all active (FinMoE Eq. 2)
    DeepSeek,     // deepseek_v2/v3: scoring_func, topk_method, groups, scaling factor
  };
  Routing routing() const;
  int64_t T_I() const { return G_O > 0 ? num_experts_per_tok / G_O : 0; }
  // Total and activated (per token) parameter counts, as FineRMoE Table 1's #P / #AP.
  int64_t param_count() const;
  int64_t active_param_count() const;

  bool is_deepseek() const { return model_type == "deepseek_v2" || model_type == "deepseek_v3"; }
  bool is_mla() const { return kv_lora_rank > 0; }
  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  // K and V values cached per token over all layers (MLA: one latent row of
  // kv_lora_rank + qk_rope_head_dim per layer, shared by every head).
  int64_t kv_values_per_token() const {
    if (is_mla()) return num_hidden_layers * (kv_lora_rank + qk_rope_head_dim);
    return 2 * num_hidden_layers * kv_size();
  }
};

struct GenerationConfig {
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_id;
  std::optional<int64_t> pad_token_id;
  bool do_sample = false;
  double temperature = 1.0;
  int64_t top_k = 0;        // 0 = off (HF default 50 only applies when do_sample)
  double top_p = 1.0;
  double min_p = 0.0;
  double repetition_penalty = 1.0;
  std::optional<int64_t> max_new_tokens;

  static GenerationConfig from_json(const nlohmann::json& j, const std::string& source);
  // Reads DIR/generation_config.json when present; otherwise takes bos/eos
  // from `model`.
  static GenerationConfig load(const std::string& dir, const ModelConfig& model);
  nlohmann::json to_json() const;
};

// The HF `architectures` entry for a model_type ("qwen2" -> "Qwen2ForCausalLM";
// finer_moe -> "FineRMoeForCausalLM" as its reference code; finmoe_dense ->
// "FinMoeDenseForCausalLM").
std::string default_architecture(const std::string& model_type);

// The deepest nesting of arrays and objects any JSON input may have: files,
// JSONL records and request bodies alike. Deeper input is refused before it
// is parsed (nlohmann's dump and comparisons recurse on depth).
inline constexpr int kMaxJsonDepth = 64;

// Thrown by parse_json for input that is not JSON or nests too deep; what()
// begins with the `source` given.
struct JsonError : Error {
  using Error::Error;
};

// Parses `text` as JSON without recursing on its depth: a scan first checks
// that arrays and objects nest at most `max_depth` levels (error naming the
// byte offset), then nlohmann parses it. Errors name `source` (a file, a
// "file:line", or "the request body") and the position.
nlohmann::json parse_json(std::string_view text, std::string_view source,
                          int max_depth = kMaxJsonDepth);
// The nesting depth of arrays and objects in `text` up to `limit` (returns
// limit + 1 as soon as it is exceeded, with `*offset` the byte where).
int json_depth(std::string_view text, int limit, size_t* offset = nullptr);

// Reads a JSON file through parse_json; throws Error naming the file and the
// parse position.
nlohmann::json read_json_file(const std::string& path);
// Writes `j` to `path` atomically (temp file + rename), pretty-printed.
void write_json_file(const std::string& path, const nlohmann::json& j);
// Writes bytes to `path` atomically.
void write_file_atomic(const std::string& path, std::string_view bytes);

}  // namespace finmoe
