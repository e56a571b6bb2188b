// config.json / generation_config.json. Keys and defaults follow the HF
// config classes (LlamaConfig, Qwen2Config, MistralConfig); see
// docs/formats/config.md.
#include "finmoe/config.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>

#include "core/hf_remote_code.h"
#include "finmoe/error.h"
#include "finmoe/finer_router.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace finmoe {

namespace {

std::string json_type(const json& v) {
  if (v.is_number_integer()) return "integer";
  if (v.is_number_float()) return "float";
  return v.type_name();
}

// Typed, optional reads from one JSON object. An absent key or a null keeps
// the default (except for optional fields, where null means "none"); a wrong
// type throws "SOURCE: field 'PREFIX.KEY' must be T, got U".
class Fields {
 public:
  Fields(const json& j, std::string source, std::string prefix = "")
      : j_(j), source_(std::move(source)), prefix_(std::move(prefix)) {}

  [[noreturn]] void fail(const std::string& key, const std::string& msg) const {
    throw Error(source_ + ": field '" + prefix_ + key + "' " + msg);
  }
  const json* get(const std::string& key) const {
    auto it = j_.find(key);
    return it == j_.end() || it->is_null() ? nullptr : &*it;
  }
  bool has(const std::string& key) const { return get(key) != nullptr; }

  int64_t to_int(const std::string& key, const json& v) const {
    if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX))
      fail(key, "is too large: " + v.dump());
    if (!v.is_number_integer()) fail(key, "must be an integer, got " + json_type(v));
    return v.get<int64_t>();
  }
  void read(const std::string& key, int64_t& out) const {
    if (const json* v = get(key)) out = to_int(key, *v);
  }
  void read(const std::string& key, std::optional<int64_t>& out) const {
    auto it = j_.find(key);
    if (it == j_.end()) return;
    if (it->is_null()) {
      out.reset();
      return;
    }
    out = to_int(key, *it);
  }
  void read(const std::string& key, double& out) const {
    if (const json* v = get(key)) {
      if (!v->is_number()) fail(key, "must be a number, got " + json_type(*v));
      out = v->get<double>();
    }
  }
  void read(const std::string& key, std::optional<double>& out) const {
    if (!has(key)) return;
    double d = 0;
    read(key, d);
    out = d;
  }
  void read(const std::string& key, bool& out) const {
    if (const json* v = get(key)) {
      if (!v->is_boolean()) fail(key, "must be a boolean, got " + json_type(*v));
      out = v->get<bool>();
    }
  }
  void read(const std::string& key, std::string& out) const {
    if (const json* v = get(key)) {
      if (!v->is_string()) fail(key, "must be a string, got " + json_type(*v));
      out = v->get<std::string>();
    }
  }
  void read(const std::string& key, std::vector<std::string>& out) const {
    if (const json* v = get(key)) {
      if (!v->is_array()) fail(key, "must be an array of strings, got " + json_type(*v));
      out.clear();
      for (const auto& e : *v) {
        if (!e.is_string()) fail(key, "must be an array of strings, got an element " + json_type(e));
        out.push_back(e.get<std::string>());
      }
    }
  }
  // Token ids: an integer or a list of integers; null clears.
  void read_ids(const std::string& key, std::vector<int64_t>& out) const {
    auto it = j_.find(key);
    if (it == j_.end()) return;
    out.clear();
    if (it->is_null()) return;
    if (it->is_array()) {
      for (const auto& e : *it) out.push_back(to_int(key, e));
    } else if (it->is_number_integer()) {
      out.push_back(to_int(key, *it));
    } else {
      fail(key, "must be an integer or a list of integers, got " + json_type(*it));
    }
  }
  void read_ids_or_empty(const std::string& key, std::vector<int64_t>& out) const {
    if (const json* v = get(key)) {
      if (!v->is_array()) fail(key, "must be a list of integers, got " + json_type(*v));
      out.clear();
      for (const auto& e : *v) out.push_back(to_int(key, e));
    }
  }
  int64_t required_int(const std::string& key) const {
    if (!has(key)) throw Error(source_ + ": missing required field '" + prefix_ + key + "'");
    return to_int(key, *get(key));
  }

 private:
  const json& j_;
  std::string source_;
  std::string prefix_;
};

constexpr double kFloatMax = std::numeric_limits<float>::max();
constexpr double kFloatMin = std::numeric_limits<float>::min();  // the smallest normal float

const std::vector<std::string> kRopeTypes = {"default", "linear", "dynamic", "llama3", "yarn"};
const std::vector<std::string> kTorchDtypes = {"float32", "bfloat16", "float16"};

std::string join_list(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& e : v) s += (s.empty() ? "" : ", ") + e;
  return s;
}

// The value each field takes when its key is absent, per model type (the HF
// config class defaults; sizes have none here: they are required).
ModelConfig defaults_for(const std::string& model_type) {
  ModelConfig c;
  c.model_type = model_type;
  c.rms_norm_eps = 1e-6;
  c.rope_theta = 10000.0;
  if (model_type == "llama") {
    c.max_position_embeddings = 2048;
    c.bos_token_id = 1;
    c.eos_token_id = {2};
  } else if (model_type == "qwen2") {
    c.max_position_embeddings = 32768;
    c.attention_bias = true;  // q/k/v projections always have a bias
  } else if (model_type == "mistral") {
    c.max_position_embeddings = 4096 * 32;
    c.bos_token_id = 1;
    c.eos_token_id = {2};
    c.sliding_window = 4096;
  } else if (model_type == "mixtral") {
    c.max_position_embeddings = 4096 * 32;
    c.rope_theta = 1e6;
    c.rms_norm_eps = 1e-5;
    c.bos_token_id = 1;
    c.eos_token_id = {2};
    c.num_experts = 8;
    c.num_experts_per_tok = 2;
  } else if (model_type == "qwen2_moe" || model_type == "finer_moe") {
    c.max_position_embeddings = 32768;
    c.attention_bias = true;  // q/k/v (qkv_bias)
    c.num_experts = 60;
    c.num_experts_per_tok = 4;
    c.moe_intermediate_size = 1408;
    c.shared_expert_intermediate_size = 5632;
  } else if (model_type == "finmoe_dense") {
    c.max_position_embeddings = 2048;
  } else if (model_type == "deepseek_v2" || model_type == "deepseek_v3") {
    // HF's DeepseekV2Config / DeepseekV3Config defaults
    const bool v3 = model_type == "deepseek_v3";
    c.max_position_embeddings = v3 ? 4096 : 2048;
    c.bos_token_id = v3 ? 0 : 1;
    c.eos_token_id = {v3 ? 1 : 2};
    c.q_lora_rank = 1536;
    c.kv_lora_rank = 512;
    c.qk_nope_head_dim = 128;
    c.qk_rope_head_dim = 64;
    c.v_head_dim = 128;
    c.num_experts = v3 ? 256 : 64;
    c.num_experts_per_tok = v3 ? 8 : 0;  // v2: no default, the config must say
    c.moe_intermediate_size = v3 ? 2048 : 1407;
    c.n_shared_experts = v3 ? 1 : 2;
    c.routed_scaling_factor = v3 ? 2.5 : 1.0;
    c.scoring_func = v3 ? "sigmoid" : "softmax";
    c.topk_method = v3 ? "noaux_tc" : "greedy";
    c.n_group = v3 ? 8 : 1;
    c.topk_group = v3 ? 4 : 1;
    c.first_k_dense_replace = v3 ? 3 : 0;
    c.norm_topk_prob = v3;
    c.rope_interleaved = true;  // v2 always; v3 unless rope_interleave is false
  }
  return c;
}

RopeScaling parse_rope_scaling(const json& j, const std::string& source) {
  RopeScaling r;
  if (!j.is_object())
    throw Error(source + ": field 'rope_scaling' must be an object or null, got " + json_type(j));
  Fields f(j, source, "rope_scaling.");
  std::string type;
  f.read("type", type);  // legacy spelling; rope_type wins
  f.read("rope_type", type);
  if (type.empty()) f.fail("rope_type", "is missing (supported: " + join_list(kRopeTypes) + ")");
  if (std::find(kRopeTypes.begin(), kRopeTypes.end(), type) == kRopeTypes.end())
    f.fail("rope_type", "has unsupported value '" + type + "' (supported: " +
                            join_list(kRopeTypes) + ")");
  r.rope_type = type;
  if (type == "default") return r;
  if (!f.has("factor")) f.fail("factor", "is required for rope_type '" + type + "'");
  f.read("factor", r.factor);
  // RoPE runs in float32: a value beyond its range throws in torch, a factor
  // below 1 (which HF warns about) or a non-positive beta yields NaN angles
  auto within = [&](const char* key, double v, double lo, double hi, const char* range) {
    if (!(v >= lo && v <= hi))
      f.fail(key, "must be in " + std::string(range) + ", got " + json(v).dump());
  };
  within("factor", r.factor, 1.0, kFloatMax, "[1, 3.4e38]");
  f.read("original_max_position_embeddings", r.original_max_position_embeddings);
  if (type == "llama3") {
    for (const char* key : {"low_freq_factor", "high_freq_factor",
                            "original_max_position_embeddings"})
      if (!f.has(key)) f.fail(key, "is required for rope_type 'llama3'");
    f.read("low_freq_factor", r.low_freq_factor);
    f.read("high_freq_factor", r.high_freq_factor);
    within("low_freq_factor", r.low_freq_factor, kFloatMin, kFloatMax, "[1.2e-38, 3.4e38]");
    within("high_freq_factor", r.high_freq_factor, kFloatMin, kFloatMax, "[1.2e-38, 3.4e38]");
    if (!(r.high_freq_factor > r.low_freq_factor))
      f.fail("high_freq_factor", "must be greater than low_freq_factor");
  }
  if (type == "yarn") {
    f.read("beta_fast", r.beta_fast);
    f.read("beta_slow", r.beta_slow);
    f.read("attention_factor", r.attention_factor);
    f.read("mscale", r.mscale);
    f.read("mscale_all_dim", r.mscale_all_dim);
    within("beta_fast", r.beta_fast, kFloatMin, kFloatMax, "[1.2e-38, 3.4e38]");
    within("beta_slow", r.beta_slow, kFloatMin, kFloatMax, "[1.2e-38, 3.4e38]");
    if (r.attention_factor)
      within("attention_factor", *r.attention_factor, kFloatMin, kFloatMax, "[1.2e-38, 3.4e38]");
    within("mscale", r.mscale, 0.0, kFloatMax, "[0, 3.4e38]");
    within("mscale_all_dim", r.mscale_all_dim, 0.0, kFloatMax, "[0, 3.4e38]");
  }
  if (r.original_max_position_embeddings < 0)
    f.fail("original_max_position_embeddings", "must not be negative");
  return r;
}

// A double written back as an integer when the file had an integer there.
json number_like(double v, const json* old) {
  if (old != nullptr && old->is_number_integer() && std::floor(v) == v && std::abs(v) < 9e15)
    return json(int64_t(v));
  return json(v);
}

// Sets j[key] when the value differs from its absent-key default or the key
// is already there (an explicit null stays null while the value is default).
void put(json& j, const std::string& key, const json& value, bool is_default) {
  auto it = j.find(key);
  if (it != j.end()) {
    if (!(it->is_null() && is_default)) *it = value;
  } else if (!is_default) {
    j[key] = value;
  }
}

json ids_json(const std::vector<int64_t>& ids, const json* old) {
  if (ids.empty()) return nullptr;
  if (ids.size() == 1 && !(old != nullptr && old->is_array())) return ids[0];
  return ids;
}

const json* find_or_null(const json& j, const std::string& key) {
  auto it = j.find(key);
  return it == j.end() ? nullptr : &*it;
}

}  // namespace

const std::vector<std::string>& ModelConfig::supported_model_types() {
  static const std::vector<std::string> types = {
      "llama",     "qwen2",        "mistral",     "mixtral",    "qwen2_moe",
      "finer_moe", "finmoe_dense", "deepseek_v2", "deepseek_v3"};
  return types;
}

// Which layers use the window: layer_types when given, else HF's rule (qwen
// family: layers from max_window_layers on; mistral/mixtral: every layer).
static void finalize_sliding(ModelConfig& c,
                             const std::function<void(const std::string&, const std::string&)>& fail) {
  const bool qwen = c.model_type == "qwen2" || c.model_type == "qwen2_moe" ||
                    c.model_type == "finer_moe";
  c.sliding_layers.assign(size_t(c.num_hidden_layers), false);
  if (!c.layer_types.empty()) {
    if (int64_t(c.layer_types.size()) != c.num_hidden_layers)
      fail("layer_types", "has " + std::to_string(c.layer_types.size()) + " entries for " +
                              std::to_string(c.num_hidden_layers) + " layers");
    for (size_t i = 0; i < c.layer_types.size(); ++i) {
      const auto& t = c.layer_types[i];
      if (t != "full_attention" && t != "sliding_attention")
        fail("layer_types", "entry " + std::to_string(i) + " is '" + t +
                                "' (supported: full_attention, sliding_attention)");
      c.sliding_layers[i] = c.sliding_window && t == "sliding_attention";
    }
    return;
  }
  if (!c.sliding_window) return;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i)
    c.sliding_layers[size_t(i)] = !qwen || i >= c.max_window_layers;
}

static void finalize_moe(ModelConfig& c,
                         const std::function<void(const std::string&, const std::string&)>& fail);

// The MLA and DeepSeekMoE keys of a deepseek_v2 / deepseek_v3 config.json.
static void read_deepseek(const Fields& f, ModelConfig& c) {
  std::optional<int64_t> q_lora = c.q_lora_rank;
  f.read("q_lora_rank", q_lora);  // null: q_proj
  c.q_lora_rank = q_lora.value_or(0);
  f.read("kv_lora_rank", c.kv_lora_rank);
  f.read("qk_nope_head_dim", c.qk_nope_head_dim);
  f.read("qk_rope_head_dim", c.qk_rope_head_dim);
  f.read("v_head_dim", c.v_head_dim);
  c.head_dim = c.qk_rope_head_dim;  // the rope's dims, as HF's config sets it
  if (c.model_type == "deepseek_v3") f.read("rope_interleave", c.rope_interleaved);
  f.read("attention_bias", c.attention_bias);
  f.read("n_routed_experts", c.num_experts);
  f.read("num_experts_per_tok", c.num_experts_per_tok);
  f.read("moe_intermediate_size", c.moe_intermediate_size);
  f.read("n_shared_experts", c.n_shared_experts);
  c.shared_expert_intermediate_size = c.moe_intermediate_size * c.n_shared_experts;
  f.read("routed_scaling_factor", c.routed_scaling_factor);
  f.read("scoring_func", c.scoring_func);
  f.read("topk_method", c.topk_method);
  std::optional<int64_t> n_group = c.n_group, topk_group = c.topk_group;
  f.read("n_group", n_group);
  f.read("topk_group", topk_group);
  c.n_group = n_group.value_or(1);
  c.topk_group = topk_group.value_or(1);
  f.read("norm_topk_prob", c.norm_topk_prob);
  f.read("first_k_dense_replace", c.first_k_dense_replace);
  f.read("moe_layer_freq", c.moe_layer_freq);
  f.read("aux_loss_alpha", c.router_aux_loss_coef);
}

namespace {
template <class T>
T count_params(const ModelConfig& c, bool active);
}  // namespace

ModelConfig ModelConfig::from_json(const json& j, const std::string& source) {
  if (!j.is_object()) throw Error(source + ": expected a JSON object, got " + json_type(j));
  Fields f(j, source);
  std::string model_type;
  f.read("model_type", model_type);
  const auto& types = supported_model_types();
  if (std::find(types.begin(), types.end(), model_type) == types.end())
    throw Error(source + ": model_type '" + model_type + "' is not supported (supported: " +
                join_list(types) + ")");

  ModelConfig c = defaults_for(model_type);
  c.raw = j;
  f.read("architectures", c.architectures);
  c.vocab_size = f.required_int("vocab_size");
  c.hidden_size = f.required_int("hidden_size");
  c.intermediate_size = f.required_int("intermediate_size");
  c.num_hidden_layers = f.required_int("num_hidden_layers");
  c.num_attention_heads = f.required_int("num_attention_heads");
  f.read("num_key_value_heads", c.num_key_value_heads);
  f.read("head_dim", c.head_dim);  // null or absent: derived in finalize()
  f.read("hidden_act", c.hidden_act);
  f.read("rms_norm_eps", c.rms_norm_eps);
  f.read("rope_theta", c.rope_theta);
  if (f.has("rope_scaling")) c.rope_scaling = parse_rope_scaling(j["rope_scaling"], source);
  // transformers >= 5 writes rope_theta and the scaling into one `rope_parameters`
  if (f.has("rope_parameters")) {
    const json& rp = j["rope_parameters"];
    c.rope_scaling = parse_rope_scaling(rp, source);
    Fields(rp, source, "rope_parameters.").read("rope_theta", c.rope_theta);
  }
  f.read("rope_interleaved", c.rope_interleaved);
  f.read("max_position_embeddings", c.max_position_embeddings);
  f.read("tie_word_embeddings", c.tie_word_embeddings);
  if (model_type == "llama" || model_type == "finmoe_dense") {
    f.read("attention_bias", c.attention_bias);
    f.read("mlp_bias", c.mlp_bias);
  }
  if (model_type == "qwen2_moe" || model_type == "finer_moe") f.read("qkv_bias", c.attention_bias);
  if (model_type == "mixtral") {
    f.read("num_local_experts", c.num_experts);
    f.read("num_experts_per_tok", c.num_experts_per_tok);
    c.moe_intermediate_size = c.intermediate_size;
    f.read("router_aux_loss_coef", c.router_aux_loss_coef);
  } else if (model_type == "qwen2_moe" || model_type == "finer_moe" ||
             model_type == "finmoe_dense") {
    if (model_type == "finmoe_dense") c.num_experts = f.required_int("num_experts");
    f.read("num_experts", c.num_experts);
    f.read("num_experts_per_tok", c.num_experts_per_tok);
    c.moe_intermediate_size = c.intermediate_size;  // finmoe_dense default
    f.read("moe_intermediate_size", c.moe_intermediate_size);
    f.read("shared_expert_intermediate_size", c.shared_expert_intermediate_size);
    f.read("norm_topk_prob", c.norm_topk_prob);
    f.read("decoder_sparse_step", c.decoder_sparse_step);
    f.read_ids_or_empty("mlp_only_layers", c.mlp_only_layers);
    f.read("router_aux_loss_coef", c.router_aux_loss_coef);
    if (model_type == "finmoe_dense") c.num_experts_per_tok = c.num_experts;
  }
  if (c.is_deepseek()) read_deepseek(f, c);
  if (model_type == "finer_moe") {
    f.read("G_I", c.G_I);
    f.read("R_I", c.R_I);
    f.read("G_O", c.G_O);
    f.read("R_O", c.R_O);
    f.read("moe_concat_proj", c.moe_concat_proj);
  }
  if (model_type == "qwen2" || model_type == "qwen2_moe" || model_type == "finer_moe") {
    bool use_sliding_window = false;
    f.read("use_sliding_window", use_sliding_window);
    std::optional<int64_t> window = 4096;
    f.read("sliding_window", window);
    if (use_sliding_window) c.sliding_window = window;
    f.read("max_window_layers", c.max_window_layers);
    f.read("layer_types", c.layer_types);
  } else if (model_type == "mistral" || model_type == "mixtral") {
    f.read("sliding_window", c.sliding_window);
  }
  f.read("torch_dtype", c.torch_dtype);
  f.read("dtype", c.torch_dtype);  // the newer transformers spelling
  f.read("bos_token_id", c.bos_token_id);
  f.read_ids("eos_token_id", c.eos_token_id);
  f.read("pad_token_id", c.pad_token_id);
  f.read("initializer_range", c.initializer_range);
  if (f.has("quantization_config"))
    c.quantization = QuantizationConfig::from_json(j["quantization_config"], source);
  c.finalize(source);
  return c;
}

void ModelConfig::finalize(const std::string& source) {
  auto fail = [&](const std::string& field, const std::string& msg) {
    throw Error(source + ": field '" + field + "' " + msg);
  };
  auto positive = [&](const char* field, int64_t v) {
    if (v <= 0) fail(field, "must be positive, got " + std::to_string(v));
  };
  // Sizes far beyond any real model are a corrupt or hostile file: refused
  // before anything is sized from them (docs/formats/config.md, "Limits").
  auto at_most = [&](const char* field, int64_t v, int64_t limit) {
    if (v > limit)
      fail(field, "is " + std::to_string(v) + ", above finmoe's limit of " + std::to_string(limit));
  };
  positive("vocab_size", vocab_size);
  positive("hidden_size", hidden_size);
  positive("intermediate_size", intermediate_size);
  positive("num_hidden_layers", num_hidden_layers);
  positive("num_attention_heads", num_attention_heads);
  positive("max_position_embeddings", max_position_embeddings);
  // MLA expands keys and values per head: HF's grouping must see no sharing
  if (num_key_value_heads == 0 || is_mla()) num_key_value_heads = num_attention_heads;
  positive("num_key_value_heads", num_key_value_heads);
  at_most("vocab_size", vocab_size, kMaxVocabSize);
  at_most("hidden_size", hidden_size, kMaxHiddenSize);
  at_most("intermediate_size", intermediate_size, kMaxIntermediateSize);
  at_most("num_hidden_layers", num_hidden_layers, kMaxLayers);
  at_most("num_attention_heads", num_attention_heads, kMaxHeads);
  at_most("num_key_value_heads", num_key_value_heads, kMaxHeads);
  at_most("head_dim", head_dim, kMaxHeadDim);
  at_most("max_position_embeddings", max_position_embeddings, kMaxPositions);
  if (sliding_window) at_most("sliding_window", *sliding_window, kMaxPositions);
  at_most("rope_scaling.original_max_position_embeddings",
          rope_scaling.original_max_position_embeddings, kMaxPositions);
  auto token_id = [&](const char* field, int64_t id) {
    if (id < INT32_MIN || id > INT32_MAX)
      fail(field, "is " + std::to_string(id) + ", not a token id (32-bit)");
  };
  if (bos_token_id) token_id("bos_token_id", *bos_token_id);
  if (pad_token_id) token_id("pad_token_id", *pad_token_id);
  for (int64_t id : eos_token_id) token_id("eos_token_id", id);
  if (num_attention_heads % num_key_value_heads != 0)
    fail("num_attention_heads", std::to_string(num_attention_heads) +
                                    " is not a multiple of num_key_value_heads " +
                                    std::to_string(num_key_value_heads));
  if (head_dim == 0) {
    if (hidden_size % num_attention_heads != 0)
      fail("hidden_size", std::to_string(hidden_size) +
                              " is not divisible by num_attention_heads " +
                              std::to_string(num_attention_heads) + " (and no head_dim is given)");
    head_dim = hidden_size / num_attention_heads;
  }
  positive("head_dim", head_dim);
  if (is_deepseek()) {
    positive("kv_lora_rank", kv_lora_rank);
    positive("qk_rope_head_dim", qk_rope_head_dim);
    positive("v_head_dim", v_head_dim);
    if (qk_nope_head_dim < 0) fail("qk_nope_head_dim", "must not be negative");
    if (q_lora_rank < 0) fail("q_lora_rank", "must be positive or null");
    if (qk_rope_head_dim % 2 != 0)
      fail("qk_rope_head_dim", "must be even (rope rotates pairs), got " +
                                   std::to_string(qk_rope_head_dim));
    head_dim = qk_rope_head_dim;
  }
  if (sliding_window) positive("sliding_window", *sliding_window);
  finalize_sliding(*this, fail);
  // both enter float32 math: an epsilon above 1 or a RoPE base below 1 is no
  // model, and values beyond float32 throw in torch
  if (!(rms_norm_eps > 0 && rms_norm_eps <= 1))
    fail("rms_norm_eps", "must be in (0, 1], got " + json(rms_norm_eps).dump());
  if (!(rope_theta >= 1 && rope_theta <= kFloatMax))
    fail("rope_theta", "must be in [1, 3.4e38], got " + json(rope_theta).dump());
  if (std::find(kTorchDtypes.begin(), kTorchDtypes.end(), torch_dtype) == kTorchDtypes.end())
    fail("torch_dtype", "has unsupported value '" + torch_dtype + "' (supported: " +
                            join_list(kTorchDtypes) + ")");
  finalize_moe(*this, fail);
  // Each size is bounded above, their products are not: counted in double,
  // which cannot overflow, so the int64 counts and tensor shapes derived
  // from this config never do.
  const double params = count_params<double>(*this, false);
  if (params > double(kMaxParams))
    throw Error(source +
                ": the sizes (vocab_size, hidden_size, intermediate_size, "
                "num_hidden_layers, heads, experts) describe " +
                std::to_string(params) + " parameters, above finmoe's limit of " +
                std::to_string(kMaxParams));
}

static void finalize_deepseek_moe(
    ModelConfig& c, const std::function<void(const std::string&, const std::string&)>& fail) {
  const auto str = [](int64_t v) { return std::to_string(v); };
  if (c.first_k_dense_replace < 0) fail("first_k_dense_replace", "must not be negative");
  if (c.moe_layer_freq <= 0) fail("moe_layer_freq", "must be positive");
  for (int64_t i = 0; i < c.num_hidden_layers; ++i)
    c.moe_layers[size_t(i)] = i >= c.first_k_dense_replace && i % c.moe_layer_freq == 0;
  // a model whose every layer is dense (an MLA conversion of a dense model)
  // never routes: its routing keys are not checked, as HF does not use them
  if (std::find(c.moe_layers.begin(), c.moe_layers.end(), true) == c.moe_layers.end()) return;
  if (c.scoring_func != "softmax" && c.scoring_func != "sigmoid")
    fail("scoring_func", "has unsupported value '" + c.scoring_func + "' (supported: softmax, sigmoid)");
  if (c.topk_method != "greedy" && c.topk_method != "group_limited_greedy" &&
      c.topk_method != "noaux_tc")
    fail("topk_method", "has unsupported value '" + c.topk_method +
                            "' (supported: greedy, group_limited_greedy, noaux_tc)");
  if (c.n_group <= 0 || c.num_experts % c.n_group != 0)
    fail("n_group", str(c.n_group) + " does not divide n_routed_experts " + str(c.num_experts));
  if (c.topk_group <= 0 || c.topk_group > c.n_group)
    fail("topk_group", "must be in [1, n_group=" + str(c.n_group) + "], got " + str(c.topk_group));
  if (c.topk_method == "noaux_tc" && c.num_experts / c.n_group < 2)
    fail("n_group", "noaux_tc scores a group by its best two experts: needs >= 2 experts per group");
  if (c.n_shared_experts < 0) fail("n_shared_experts", "must not be negative");
  if (!(c.routed_scaling_factor > 0)) fail("routed_scaling_factor", "must be positive");
}

static void finalize_moe(ModelConfig& c,
                         const std::function<void(const std::string&, const std::string&)>& fail) {
  const auto str = [](int64_t v) { return std::to_string(v); };
  c.moe_layers.assign(size_t(c.num_hidden_layers), false);
  if (c.num_experts == 0) return;
  const bool mixtral = c.model_type == "mixtral";
  const std::string n_key =
      mixtral ? "num_local_experts" : c.is_deepseek() ? "n_routed_experts" : "num_experts";
  if (c.num_experts < 0) fail(n_key, "must not be negative, got " + str(c.num_experts));
  auto at_most = [&](const std::string& field, int64_t v, int64_t limit) {
    if (v > limit) fail(field, "is " + str(v) + ", above finmoe's limit of " + str(limit));
  };
  at_most(n_key, c.num_experts, kMaxExperts);
  at_most("moe_intermediate_size", c.moe_intermediate_size, kMaxIntermediateSize);
  at_most("shared_expert_intermediate_size", c.shared_expert_intermediate_size,
          kMaxIntermediateSize);
  if (c.model_type == "finmoe_dense") c.num_experts_per_tok = c.num_experts;
  if (c.num_experts_per_tok <= 0 || c.num_experts_per_tok > c.num_experts)
    fail("num_experts_per_tok", "must be in [1, " + n_key + "=" + str(c.num_experts) + "], got " +
                                    str(c.num_experts_per_tok));
  if (mixtral) c.moe_intermediate_size = c.intermediate_size;
  if (c.moe_intermediate_size <= 0)
    fail("moe_intermediate_size", "must be positive, got " + str(c.moe_intermediate_size));
  if (c.shared_expert_intermediate_size < 0)
    fail("shared_expert_intermediate_size", "must not be negative");
  if (c.decoder_sparse_step <= 0) fail("decoder_sparse_step", "must be positive");
  for (int64_t l : c.mlp_only_layers)
    if (l < 0 || l >= c.num_hidden_layers)
      fail("mlp_only_layers", "names layer " + str(l) + ", the model has " +
                                  str(c.num_hidden_layers));
  for (int64_t key_value : {c.G_I, c.R_I, c.G_O, c.R_O})
    if (key_value <= 0 || key_value > kMaxExperts)
      fail("G_I/R_I/G_O/R_O", "must all be in [1, " + str(kMaxExperts) + "]");
  if (c.model_type != "finer_moe" &&
      (c.G_I != 1 || c.R_I != 1 || c.G_O != 1 || c.R_O != 1 || c.moe_concat_proj))
    fail("G_O", "granularity keys need model_type finer_moe");
  const int64_t groups = c.G_I * c.R_I * c.G_O * c.R_O;
  if (c.model_type == "finer_moe") {
    if (c.num_experts != groups)
      fail("num_experts", str(c.num_experts) + " != G_I*R_I*G_O*R_O = " + str(groups));
    if (c.num_experts_per_tok % c.G_O != 0)
      fail("num_experts_per_tok", str(c.num_experts_per_tok) +
                                      " is not a multiple of G_O=" + str(c.G_O) + " (top-k = T_I*G_O)");
    if (c.T_I() > c.G_I * c.R_I)
      fail("num_experts_per_tok", "T_I = top_k/G_O = " + str(c.T_I()) +
                                      " exceeds the experts per group G_I*R_I = " +
                                      str(c.G_I * c.R_I));
    if (c.hidden_size % c.G_O != 0)
      fail("G_O", "hidden_size " + str(c.hidden_size) + " is not divisible by G_O=" + str(c.G_O));
  }
  if (c.raw.is_object() && c.raw.contains("router_mode") && !c.raw["router_mode"].is_null()) {
    const json& v = c.raw["router_mode"];
    if (!v.is_string()) fail("router_mode", "must be a string (single | separate)");
    if (c.model_type != "finer_moe") fail("router_mode", "needs model_type finer_moe");
    try {
      parse_router_mode(v.get<std::string>(), "router_mode");
    } catch (const Error& e) {
      fail("router_mode", "'" + v.get<std::string>() + "' is not a router mode (single | separate)");
    }
  }
  if (c.is_deepseek()) {
    finalize_deepseek_moe(c, fail);
    return;
  }
  std::vector<bool> dense_only(size_t(c.num_hidden_layers), false);
  for (int64_t l : c.mlp_only_layers) dense_only[size_t(l)] = true;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i)
    c.moe_layers[size_t(i)] = !dense_only[size_t(i)] && (i + 1) % c.decoder_sparse_step == 0;
}

bool ModelConfig::o_proj_bias() const {
  const bool qwen_family =
      model_type == "qwen2" || model_type == "qwen2_moe" || model_type == "finer_moe";
  return attention_bias && !qwen_family;
}

ModelConfig::Routing ModelConfig::routing() const {
  if (model_type == "finmoe_dense") return Routing::Dense;
  if (model_type == "qwen2_moe") return Routing::SoftmaxTopK;
  if (is_deepseek()) return Routing::DeepSeek;
  return Routing::TopKSoftmax;
}

namespace {

// The counts in T: int64_t for the API, double for finalize()'s overflow check.
template <class T>
T swiglu_params(T in, T width, T out, bool bias) {
  return 2 * in * width + width * out + (bias ? 2 * width + out : 0);
}

// Parameters of one layer; `experts_counted` routed experts of the MoE FFN.
template <class T>
T layer_params(const ModelConfig& c, size_t layer, T experts_counted) {
  const T D = T(c.hidden_size), q = T(c.num_attention_heads) * T(c.head_dim),
          kv = T(c.num_key_value_heads) * T(c.head_dim);
  T n = 2 * D;  // the two norms
  if (c.is_mla()) {
    const T H = T(c.num_attention_heads), R = T(c.kv_lora_rank), qr = T(c.q_lora_rank);
    const T qk = T(c.qk_head_dim()), rope = T(c.qk_rope_head_dim);
    n += c.q_lora_rank > 0 ? D * qr + qr + qr * H * qk : D * H * qk;
    n += D * (R + rope) + R + R * H * (T(c.qk_nope_head_dim) + T(c.v_head_dim));
    n += H * T(c.v_head_dim) * D;
    if (c.attention_bias) n += (c.q_lora_rank > 0 ? qr : T(0)) + R + rope + D;
  } else {
    n += D * q + 2 * D * kv + q * D;  // q, k, v, o
    if (c.attention_bias) n += q + 2 * kv;
    if (c.o_proj_bias()) n += D;
  }
  if (!c.is_moe() || !c.moe_layers[layer])
    return n + swiglu_params<T>(D, T(c.intermediate_size), D, c.mlp_bias);
  n += T(c.num_experts) * D;  // router
  if (c.is_deepseek() && c.topk_method == "noaux_tc") n += T(c.num_experts);  // its choice bias
  n += experts_counted *
       swiglu_params<T>(D, T(c.moe_intermediate_size), T(c.hidden_size / c.G_O), false);
  if (c.shared_expert_intermediate_size > 0)  // + its gate, except DeepSeek's
    n += swiglu_params<T>(D, T(c.shared_expert_intermediate_size), D, false) +
         (c.is_deepseek() ? T(0) : D);
  if (c.moe_concat_proj) n += D * D;
  if (separate_routers(c)) n += T(c.G_O * c.R_O) * D;  // the concatenation layer's router
  return n;
}

template <class T>
T count_params(const ModelConfig& c, bool active) {
  const T D = T(c.hidden_size), V = T(c.vocab_size);
  T n = V * D + D + (c.tie_word_embeddings ? 0 : V * D);
  for (size_t l = 0; l < size_t(c.num_hidden_layers); ++l)
    n += layer_params<T>(c, l, T(active ? c.num_experts_per_tok : c.num_experts));
  return n;
}

}  // namespace

RouterMode parse_router_mode(const std::string& s, const std::string& field) {
  if (s == "single") return RouterMode::Single;
  if (s == "separate") return RouterMode::Separate;
  throw Error(field + ": '" + s + "' is not a router mode (single | separate)");
}

const char* router_mode_name(RouterMode m) {
  return m == RouterMode::Separate ? "separate" : "single";
}

RouterMode router_mode(const ModelConfig& c) {
  if (c.model_type != "finer_moe" || !c.raw.is_object()) return RouterMode::Single;
  auto it = c.raw.find("router_mode");
  if (it == c.raw.end() || !it->is_string()) return RouterMode::Single;
  return parse_router_mode(it->get<std::string>(), "config.json: field 'router_mode'");
}

int64_t ModelConfig::param_count() const { return count_params<int64_t>(*this, false); }
int64_t ModelConfig::active_param_count() const { return count_params<int64_t>(*this, true); }

json ModelConfig::to_json() const {
  json j = raw.is_object() ? raw : json::object();
  const ModelConfig d = defaults_for(model_type);
  auto num = [&](const char* key, double v, double def) {
    put(j, key, number_like(v, find_or_null(j, key)), v == def);
  };
  j["model_type"] = model_type;
  put(j, "architectures", architectures, architectures.empty());
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = num_hidden_layers;
  j["num_attention_heads"] = num_attention_heads;
  put(j, "num_key_value_heads", num_key_value_heads, num_key_value_heads == num_attention_heads);
  put(j, "head_dim", head_dim,
      num_attention_heads > 0 && head_dim * num_attention_heads == hidden_size);
  put(j, "hidden_act", hidden_act, hidden_act == d.hidden_act);
  num("rms_norm_eps", rms_norm_eps, d.rms_norm_eps);
  num("rope_theta", rope_theta, d.rope_theta);

  const RopeScaling& r = rope_scaling;
  const RopeScaling rd;
  if (r.rope_type == "default") {
    auto it = j.find("rope_scaling");
    if (it != j.end() && !it->is_null()) {
      const json* t = it->is_object() ? find_or_null(*it, "rope_type") : nullptr;
      if (t == nullptr && it->is_object()) t = find_or_null(*it, "type");
      if (t == nullptr || *t != "default") *it = nullptr;
    }
  } else {
    json rs = j.contains("rope_scaling") && j["rope_scaling"].is_object() ? j["rope_scaling"]
                                                                           : json::object();
    // Keep the file's spelling: the legacy `type` alone, or `rope_type`.
    if (rs.contains("type")) rs["type"] = r.rope_type;
    if (rs.contains("rope_type") || !rs.contains("type")) rs["rope_type"] = r.rope_type;
    rs["factor"] = number_like(r.factor, find_or_null(rs, "factor"));
    put(rs, "original_max_position_embeddings", r.original_max_position_embeddings,
        r.original_max_position_embeddings == 0 && r.rope_type != "llama3");
    if (r.rope_type == "llama3") {
      rs["low_freq_factor"] = number_like(r.low_freq_factor, find_or_null(rs, "low_freq_factor"));
      rs["high_freq_factor"] =
          number_like(r.high_freq_factor, find_or_null(rs, "high_freq_factor"));
    }
    if (r.rope_type == "yarn") {
      put(rs, "beta_fast", number_like(r.beta_fast, find_or_null(rs, "beta_fast")),
          r.beta_fast == rd.beta_fast);
      put(rs, "beta_slow", number_like(r.beta_slow, find_or_null(rs, "beta_slow")),
          r.beta_slow == rd.beta_slow);
      put(rs, "attention_factor", r.attention_factor ? json(*r.attention_factor) : json(nullptr),
          !r.attention_factor);
      put(rs, "mscale", r.mscale, r.mscale == 0.0);
      put(rs, "mscale_all_dim", r.mscale_all_dim, r.mscale_all_dim == 0.0);
    }
    j["rope_scaling"] = rs;
  }
  if (is_deepseek()) {  // v2's pairs are always interleaved; v3 says so in rope_interleave
    if (model_type == "deepseek_v3") j["rope_interleave"] = rope_interleaved;
  } else {
    put(j, "rope_interleaved", rope_interleaved, !rope_interleaved);
  }
  put(j, "max_position_embeddings", max_position_embeddings,
      max_position_embeddings == d.max_position_embeddings);
  put(j, "tie_word_embeddings", tie_word_embeddings, tie_word_embeddings == d.tie_word_embeddings);
  const bool qwen_moe = model_type == "qwen2_moe" || model_type == "finer_moe";
  if (qwen_moe) {
    put(j, "qkv_bias", attention_bias, false);
  } else if (model_type != "qwen2") {
    put(j, "attention_bias", attention_bias, attention_bias == d.attention_bias);
    put(j, "mlp_bias", mlp_bias, mlp_bias == d.mlp_bias);
  }
  if (model_type == "mixtral") {
    j["num_local_experts"] = num_experts;
    j["num_experts_per_tok"] = num_experts_per_tok;
    num("router_aux_loss_coef", router_aux_loss_coef, 0.001);
  } else if (qwen_moe || model_type == "finmoe_dense") {
    j["num_experts"] = num_experts;
    j["num_experts_per_tok"] = num_experts_per_tok;
    j["moe_intermediate_size"] = moe_intermediate_size;
    j["shared_expert_intermediate_size"] = shared_expert_intermediate_size;
    j["norm_topk_prob"] = norm_topk_prob;
    j["decoder_sparse_step"] = decoder_sparse_step;
    j["mlp_only_layers"] = mlp_only_layers;
    num("router_aux_loss_coef", router_aux_loss_coef, 0.001);
  }
  if (is_deepseek()) {
    j["q_lora_rank"] = q_lora_rank > 0 ? json(q_lora_rank) : json(nullptr);
    j["kv_lora_rank"] = kv_lora_rank;
    j["qk_nope_head_dim"] = qk_nope_head_dim;
    j["qk_rope_head_dim"] = qk_rope_head_dim;
    j["v_head_dim"] = v_head_dim;
    j["n_routed_experts"] = num_experts;
    j["num_experts_per_tok"] = num_experts_per_tok;
    j["moe_intermediate_size"] = moe_intermediate_size;
    j["n_shared_experts"] = n_shared_experts;
    num("routed_scaling_factor", routed_scaling_factor, -1.0);
    j["scoring_func"] = scoring_func;
    j["topk_method"] = topk_method;
    j["n_group"] = n_group;
    j["topk_group"] = topk_group;
    j["norm_topk_prob"] = norm_topk_prob;
    j["first_k_dense_replace"] = first_k_dense_replace;
    j["moe_layer_freq"] = moe_layer_freq;
  }
  if (model_type == "finer_moe") {
    j["G_I"] = G_I;
    j["R_I"] = R_I;
    j["G_O"] = G_O;
    j["R_O"] = R_O;
    j["moe_concat_proj"] = moe_concat_proj;
  }
  if (model_type == "qwen2" || qwen_moe) {
    if (sliding_window) {
      j["use_sliding_window"] = true;
      j["sliding_window"] = *sliding_window;
      j["max_window_layers"] = max_window_layers;
    } else if (j.contains("use_sliding_window")) {
      j["use_sliding_window"] = false;  // keeps the file's inactive sliding_window
    }
  } else {
    put(j, "sliding_window", sliding_window ? json(*sliding_window) : json(nullptr),
        sliding_window == d.sliding_window);
  }
  const bool has_new_dtype_key = j.contains("dtype") && !j.contains("torch_dtype");
  put(j, has_new_dtype_key ? "dtype" : "torch_dtype", torch_dtype, torch_dtype == d.torch_dtype);
  if (j.contains("dtype") && j.contains("torch_dtype")) j["dtype"] = torch_dtype;
  put(j, "bos_token_id", bos_token_id ? json(*bos_token_id) : json(nullptr),
      bos_token_id == d.bos_token_id);
  put(j, "eos_token_id", ids_json(eos_token_id, find_or_null(j, "eos_token_id")),
      eos_token_id == d.eos_token_id);
  put(j, "pad_token_id", pad_token_id ? json(*pad_token_id) : json(nullptr),
      pad_token_id == d.pad_token_id);
  num("initializer_range", initializer_range, d.initializer_range);
  if (quantization)
    j["quantization_config"] = quantization->to_json();
  else
    j.erase("quantization_config");
  return j;
}

// ------------------------------------------------------------ quantization

bool QuantizationConfig::quantizes(const std::string& name, const std::vector<int64_t>& shape) const {
  constexpr std::string_view kSuffix = ".weight";
  if (shape.size() != 2 || !name.ends_with(kSuffix)) return false;
  const std::string module = name.substr(0, name.size() - kSuffix.size());
  return std::find(ignore.begin(), ignore.end(), module) == ignore.end();
}

QuantizationConfig QuantizationConfig::from_json(const json& j, const std::string& source) {
  if (!j.is_object())
    throw Error(source + ": field 'quantization_config' must be an object, got " + json_type(j));
  Fields f(j, source, "quantization_config.");
  QuantizationConfig q;
  std::string method;
  f.read("quant_method", method);
  if (method != q.quant_method)
    f.fail("quant_method", "is '" + method + "'; finmoe reads only '" + q.quant_method +
                               "' (checkpoints written by `finmoe quantize`)");
  q.format_version = f.required_int("format_version");
  if (q.format_version < 1 || q.format_version > kFormatVersion)
    f.fail("format_version", "is " + std::to_string(q.format_version) +
                                 "; this finmoe reads version " + std::to_string(kFormatVersion) +
                                 (q.format_version > kFormatVersion
                                      ? " (the checkpoint is newer: update finmoe)"
                                      : ""));
  f.read("bits", q.bits);
  if (q.bits != 8) f.fail("bits", "must be 8, got " + std::to_string(q.bits));
  f.read("group_size", q.group_size);
  if (q.group_size != 0 && q.group_size != 32)
    f.fail("group_size", "must be 0 (per output channel) or 32, got " + std::to_string(q.group_size));
  f.read("scale_dtype", q.scale_dtype);
  if (q.scale_dtype != "bfloat16" && q.scale_dtype != "float32")
    f.fail("scale_dtype", "must be bfloat16 or float32, got '" + q.scale_dtype + "'");
  bool symmetric = true;
  f.read("symmetric", symmetric);
  if (!symmetric) f.fail("symmetric", "must be true (finmoe_int8 has no zero points)");
  f.read("ignore", q.ignore);
  return q;
}

json QuantizationConfig::to_json() const {
  return {{"quant_method", quant_method}, {"format_version", format_version},
          {"bits", bits},                 {"symmetric", true},
          {"group_size", group_size == 0 ? json(nullptr) : json(group_size)},
          {"scale_dtype", scale_dtype},   {"ignore", ignore}};
}

std::string default_architecture(const std::string& model_type) {
  static const std::map<std::string, std::string> names = {
      {"llama", "LlamaForCausalLM"},         {"qwen2", "Qwen2ForCausalLM"},
      {"mistral", "MistralForCausalLM"},     {"mixtral", "MixtralForCausalLM"},
      {"qwen2_moe", "Qwen2MoeForCausalLM"},  {"finer_moe", "FineRMoeForCausalLM"},
      {"finmoe_dense", "FinMoeDenseForCausalLM"}, {"deepseek_v2", "DeepseekV2ForCausalLM"},
      {"deepseek_v3", "DeepseekV3ForCausalLM"}};
  auto it = names.find(model_type);
  if (it == names.end())
    throw Error("model_type '" + model_type + "' is not supported (supported: " +
                join_list(ModelConfig::supported_model_types()) + ")");
  return it->second;
}

ModelConfig ModelConfig::load(const std::string& dir) {
  const std::string path = (fs::path(dir) / "config.json").string();
  return from_json(read_json_file(path), path);
}

void ModelConfig::save(const std::string& dir) const {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error("cannot create directory " + dir + ": " + ec.message());
  json j = to_json();
  add_hf_remote_code(dir, j);  // finer_moe / finmoe_dense: modeling code + auto_map
  write_json_file((fs::path(dir) / "config.json").string(), j);
}

// ------------------------------------------------------------ generation

GenerationConfig GenerationConfig::from_json(const json& j, const std::string& source) {
  if (!j.is_object()) throw Error(source + ": expected a JSON object, got " + json_type(j));
  Fields f(j, source);
  GenerationConfig g;
  f.read("bos_token_id", g.bos_token_id);
  f.read_ids("eos_token_id", g.eos_token_id);
  f.read("pad_token_id", g.pad_token_id);
  f.read("do_sample", g.do_sample);
  f.read("temperature", g.temperature);
  // transformers' top_k default of 50 takes effect only when sampling.
  if (g.do_sample) g.top_k = 50;
  f.read("top_k", g.top_k);
  f.read("top_p", g.top_p);
  f.read("min_p", g.min_p);
  f.read("repetition_penalty", g.repetition_penalty);
  f.read("max_new_tokens", g.max_new_tokens);
  if (g.temperature < 0) f.fail("temperature", "must not be negative");
  if (g.top_k < 0) f.fail("top_k", "must not be negative");
  if (!(g.top_p > 0 && g.top_p <= 1)) f.fail("top_p", "must be in (0, 1]");
  if (!(g.min_p >= 0 && g.min_p <= 1)) f.fail("min_p", "must be in [0, 1]");
  if (!(g.repetition_penalty > 0)) f.fail("repetition_penalty", "must be positive");
  if (g.max_new_tokens && (*g.max_new_tokens < 0 || *g.max_new_tokens > kMaxPositions))
    f.fail("max_new_tokens", "must be in [0, " + std::to_string(kMaxPositions) + "]");
  auto token_id = [&](const char* key, int64_t id) {
    if (id < INT32_MIN || id > INT32_MAX)
      f.fail(key, "is " + std::to_string(id) + ", not a token id (32-bit)");
  };
  if (g.bos_token_id) token_id("bos_token_id", *g.bos_token_id);
  if (g.pad_token_id) token_id("pad_token_id", *g.pad_token_id);
  for (int64_t id : g.eos_token_id) token_id("eos_token_id", id);
  return g;
}

GenerationConfig GenerationConfig::load(const std::string& dir, const ModelConfig& model) {
  const std::string path = (fs::path(dir) / "generation_config.json").string();
  GenerationConfig g;
  if (fs::exists(path)) g = from_json(read_json_file(path), path);
  // Ids the file leaves out come from config.json, as transformers does.
  if (!g.bos_token_id) g.bos_token_id = model.bos_token_id;
  if (g.eos_token_id.empty()) g.eos_token_id = model.eos_token_id;
  if (!g.pad_token_id) g.pad_token_id = model.pad_token_id;
  return g;
}

json GenerationConfig::to_json() const {
  json j = json::object();
  if (bos_token_id) j["bos_token_id"] = *bos_token_id;
  if (!eos_token_id.empty()) j["eos_token_id"] = ids_json(eos_token_id, nullptr);
  if (pad_token_id) j["pad_token_id"] = *pad_token_id;
  j["do_sample"] = do_sample;
  j["temperature"] = temperature;
  j["top_k"] = top_k;
  j["top_p"] = top_p;
  j["min_p"] = min_p;
  j["repetition_penalty"] = repetition_penalty;
  if (max_new_tokens) j["max_new_tokens"] = *max_new_tokens;
  return j;
}

}  // namespace finmoe
