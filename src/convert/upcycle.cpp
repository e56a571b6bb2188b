// Upcycling a dense checkpoint into a mixture of experts (FineRMoE §3.3).
// Streams: the dense checkpoint stays memory-mapped, each output tensor is
// made from it and handed to a CheckpointWriter before the next one is made.
#include "convert/upcycle.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>

#include <torch/torch.h>

#include "core/progress.h"
#include "finmoe/convert.h"
#include "finmoe/error.h"
#include "finmoe/model.h"
#include "finmoe/safetensors.h"
#include "model/torch_dtype.h"

namespace fs = std::filesystem;

namespace finmoe {

namespace upcycle_detail {

ExpertSlice expert_slice(int64_t e, int64_t G_I, int64_t R_I, int64_t R_O) {
  return {(e % (G_I * R_I)) % G_I, e / (R_O * G_I * R_I)};
}

RouterInit parse_router_init(const std::string& spec) {
  RouterInit r;
  const auto colon = spec.find(':');
  const std::string kind = spec.substr(0, colon);
  if (kind == "zeros" && colon == std::string::npos) {
    r.kind = RouterInit::Kind::Zeros;
    return r;
  }
  if (kind != "normal" && kind != "virtual-groups")
    throw Error("router-init '" + spec +
                "' is not supported (supported: normal:STD, zeros, virtual-groups:STD)");
  r.kind = kind == "normal" ? RouterInit::Kind::Normal : RouterInit::Kind::VirtualGroups;
  if (colon != std::string::npos) {
    const std::string num = spec.substr(colon + 1);
    try {
      size_t used = 0;
      r.std = std::stod(num, &used);
      if (used != num.size()) throw std::invalid_argument(num);
    } catch (const std::exception&) {
      throw Error("router-init '" + spec + "': '" + num + "' is not a number");
    }
    if (!(r.std >= 0)) throw Error("router-init '" + spec + "': the std must not be negative");
  }
  return r;
}

int64_t drop_count(double ratio, int64_t width) {
  return int64_t(std::floor(ratio * double(width) + 0.5));
}

}  // namespace upcycle_detail

using namespace upcycle_detail;

namespace {

const std::vector<std::string>& presets() {
  static const std::vector<std::string> names = {"copy",    "split",    "drop",
                                                 "nvshard", "finermoe", "dense-moe"};
  return names;
}

std::string join(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : ", ") + s;
  return out;
}

template <typename T>
nlohmann::json opt_json(const std::optional<T>& v) {
  return v ? nlohmann::json(*v) : nlohmann::json(nullptr);
}

// The output config.json: the dense config with the MoE keys of `format`.
// Keys whose meaning or absent-key default differs between model types are
// written explicitly, then the parsed result is checked against the input.
ModelConfig moe_config(const ModelConfig& dense, const UpcycleOptions& o, const std::string& dtype) {
  const std::string& fmt = o.format;
  const int64_t F = dense.intermediate_size, D = dense.hidden_size;
  const int64_t N = o.G_I * o.R_I * o.G_O * o.R_O;
  nlohmann::json j = dense.to_json();
  for (const char* k : {"attention_bias", "mlp_bias", "qkv_bias", "use_sliding_window",
                        "sliding_window", "max_window_layers", "layer_types", "torch_dtype", "dtype"})
    j.erase(k);
  const bool qwen_family = fmt == "qwen2_moe" || fmt == "finer_moe";
  j["model_type"] = fmt;
  j["architectures"] = {default_architecture(fmt)};
  j["rope_theta"] = dense.rope_theta;
  j["rms_norm_eps"] = dense.rms_norm_eps;
  j["max_position_embeddings"] = dense.max_position_embeddings;
  j["tie_word_embeddings"] = dense.tie_word_embeddings;
  j["hidden_act"] = dense.hidden_act;
  j["initializer_range"] = dense.initializer_range;
  j["num_key_value_heads"] = dense.num_key_value_heads;
  j["head_dim"] = dense.head_dim;
  j["bos_token_id"] = opt_json(dense.bos_token_id);
  j["pad_token_id"] = opt_json(dense.pad_token_id);
  j["eos_token_id"] = dense.eos_token_id.empty() ? nlohmann::json(nullptr)
                      : dense.eos_token_id.size() == 1 ? nlohmann::json(dense.eos_token_id[0])
                                                       : nlohmann::json(dense.eos_token_id);
  j["torch_dtype"] = dtype;
  if (qwen_family) {
    j["qkv_bias"] = dense.attention_bias;
    j["use_sliding_window"] = dense.sliding_window.has_value();
    if (dense.sliding_window) j["sliding_window"] = *dense.sliding_window;
  } else {
    if (fmt == "finmoe_dense") j["attention_bias"] = dense.attention_bias;
    if (fmt == "mixtral") j["sliding_window"] = opt_json(dense.sliding_window);
  }
  if (fmt == "mixtral") {
    j["intermediate_size"] = F / o.G_I;  // mixtral's expert width
    j["num_local_experts"] = N;
    j["num_experts_per_tok"] = o.T_I * o.G_O;
  } else {
    j["num_experts"] = N;
    j["num_experts_per_tok"] = fmt == "finmoe_dense" ? N : o.T_I * o.G_O;
    j["moe_intermediate_size"] = F / o.G_I;
    j["shared_expert_intermediate_size"] = o.shared_expert == "copy" ? F : 0;
    j["norm_topk_prob"] = true;  // qwen2_moe: softmax over the top-k, as mixtral
    j["decoder_sparse_step"] = 1;
    j["mlp_only_layers"] = nlohmann::json::array();
  }
  if (fmt == "finer_moe") {
    j["G_I"] = o.G_I;
    j["R_I"] = o.R_I;
    j["G_O"] = o.G_O;
    j["R_O"] = o.R_O;
    j["moe_concat_proj"] = o.concat_proj != "none";
    if (o.router_mode == "separate") j["router_mode"] = o.router_mode;
  }
  ModelConfig c = ModelConfig::from_json(j, "upcycled config.json");

  // What the attention/embedding part of the new type can represent.
  auto cannot = [&](const std::string& what) {
    throw Error("--format " + fmt + " cannot represent the dense model's " + what +
                " (model_type " + dense.model_type + ")");
  };
  if (c.attention_bias != dense.attention_bias || c.o_proj_bias() != dense.o_proj_bias())
    cannot("attention_bias=" + std::string(dense.attention_bias ? "true" : "false") +
           (dense.o_proj_bias() ? " with an o_proj bias" : ""));
  if (c.sliding_window != dense.sliding_window) cannot("sliding_window");
  if (c.rope_theta != dense.rope_theta || c.rope_scaling.rope_type != dense.rope_scaling.rope_type ||
      c.rope_scaling.factor != dense.rope_scaling.factor)
    cannot("rope settings");
  if (c.head_dim != dense.head_dim || c.rms_norm_eps != dense.rms_norm_eps ||
      c.tie_word_embeddings != dense.tie_word_embeddings)
    cannot("head_dim / rms_norm_eps / tie_word_embeddings");
  if (c.hidden_size != D) cannot("hidden_size");
  return c;
}

}  // namespace

const std::vector<std::string>& upcycle_preset_names() { return presets(); }

UpcycleOptions upcycle_preset(const std::string& name) {
  UpcycleOptions o;
  o.preset = name;
  if (name == "copy") {  // C32A2
    o.G_I = 1, o.R_I = 32, o.T_I = 2;
  } else if (name == "split") {  // S16A4
    o.G_I = 16, o.R_I = 1, o.T_I = 4;
  } else if (name == "drop") {  // Drop-Upcycling: 8 copies, 50% re-initialised, top-2
    o.G_I = 1, o.R_I = 8, o.T_I = 2;
    o.drop_ratio = 0.5;
  } else if (name == "nvshard") {  // He et al.: 8 shards x 8 replicas, top-8
    o.G_I = 8, o.R_I = 8, o.T_I = 8;
    o.router_init = "virtual-groups:0.02";
    o.expert_scale = "glu";
  } else if (name == "finermoe") {
    o.G_I = 32, o.R_I = 1, o.G_O = 2, o.R_O = 2, o.T_I = 1;
    o.shared_expert = "copy";
  } else if (name == "dense-moe") {  // FinMoE: the paper does not fix N; 4 copies
    o.G_I = 1, o.R_I = 4;
    o.all_experts = true;
  } else {
    throw Error("--preset: upcycle preset '" + name + "' is not known (presets: " +
                join(presets()) + ")");
  }
  return o;
}

UpcyclePlan plan_upcycle(const ModelConfig& dense, const UpcycleOptions& options) {
  UpcyclePlan p;
  p.dense = dense;
  UpcycleOptions& o = p.options;
  o = options;
  const std::string& mt = dense.model_type;
  if (mt != "llama" && mt != "qwen2" && mt != "mistral")
    throw Error("config.json: model_type '" + mt +
                "' is not a dense model; upcycling reads llama, qwen2 or mistral checkpoints");
  if (dense.mlp_bias)
    throw Error("config.json: field 'mlp_bias' is true; experts carry no biases");
  if (dense.quantization)
    throw Error("config.json: field 'quantization_config' is set: upcycling needs bf16/f32 "
                "weights; upcycle the checkpoint it was quantized from, then quantize the result");
  auto str = [](int64_t v) { return std::to_string(v); };
  if (o.R_I == 0) o.R_I = o.G_I;
  if (o.R_O == 0) o.R_O = o.G_O;
  for (auto [flag, v] : {std::pair{"G_I", o.G_I}, {"R_I", o.R_I}, {"G_O", o.G_O}, {"R_O", o.R_O},
                         {"T_I", o.T_I}})
    if (v <= 0) throw Error(std::string(flag) + " must be positive, got " + str(v));
  const int64_t F = dense.intermediate_size, D = dense.hidden_size;
  if (F % o.G_I != 0)
    throw Error("G_I=" + str(o.G_I) + " does not divide the FFN width (intermediate_size=" +
                str(F) + ")");
  if (D % o.G_O != 0)
    throw Error("G_O=" + str(o.G_O) + " does not divide hidden_size=" + str(D));
  if (o.shared_expert != "copy" && o.shared_expert != "none")
    throw Error("shared-expert '" + o.shared_expert + "' is not supported (supported: copy, none)");
  if (o.concat_proj != "none" && o.concat_proj != "normal" && o.concat_proj != "zeros")
    throw Error("concat-proj '" + o.concat_proj +
                "' is not supported (supported: none, normal, zeros)");
  if (!(o.drop_ratio >= 0.0 && o.drop_ratio < 1.0))
    throw Error("drop ratio must be in [0, 1), got " + std::to_string(o.drop_ratio));
  const RouterInit router = parse_router_init(o.router_init);
  if (o.router_mode != "single" && o.router_mode != "separate")
    throw Error("router-mode '" + o.router_mode + "' is not supported (supported: single, separate)");

  const bool fine_out = o.G_O > 1 || o.R_O > 1 || o.concat_proj != "none";
  if (o.format == "finmoe_dense") o.all_experts = true;
  if (o.all_experts && fine_out)
    throw Error("all experts active (dense MoE) needs G_O=1, R_O=1 and no concat projection (got "
                "G_O=" + str(o.G_O) + ", R_O=" + str(o.R_O) + ", concat-proj " + o.concat_proj + ")");
  if (o.all_experts) o.T_I = o.G_I * o.R_I;  // top-k = N
  // finmoe_dense is llama-shaped: o_proj bias with attention_bias, no window
  const bool llama_shaped = mt == "llama" || (mt == "mistral" && !dense.sliding_window);
  if (o.format.empty()) {
    if (o.all_experts && llama_shaped)
      o.format = "finmoe_dense";
    else if (fine_out)
      o.format = "finer_moe";
    else if (o.shared_expert == "none" && mt != "qwen2")
      o.format = "mixtral";
    else
      o.format = "qwen2_moe";
  }
  const std::string& fmt = o.format;
  if (fmt != "mixtral" && fmt != "qwen2_moe" && fmt != "finer_moe" && fmt != "finmoe_dense")
    throw Error("--format '" + fmt +
                "' is not an upcycling output (supported: mixtral, qwen2_moe, finer_moe, "
                "finmoe_dense)");
  if (fmt != "finer_moe" && fine_out)
    throw Error("--format " + fmt + " needs G_O=1, R_O=1 and no concat projection (got G_O=" +
                str(o.G_O) + ", R_O=" + str(o.R_O) + ", concat-proj " + o.concat_proj +
                "); use finer_moe");
  if (fmt == "mixtral" && o.shared_expert != "none")
    throw Error("--format mixtral has no shared expert (shared-expert " + o.shared_expert +
                "); use qwen2_moe or finer_moe");
  const int64_t group = o.G_I * o.R_I;
  if (fmt != "finmoe_dense" && o.T_I > group)
    throw Error("T_I=" + str(o.T_I) + " exceeds the experts per group G_I*R_I=" + str(group));
  if (o.router_mode == "separate" && fmt != "finer_moe")
    throw Error("router-mode separate needs --format finer_moe (got " + fmt +
                "): only FineRMoE has a sparse concatenation layer to route");
  if (o.router_mode == "separate" && o.R_O < 2)
    throw Error("router-mode separate needs R_O > 1 (got R_O=" + str(o.R_O) +
                "): with one candidate per output slice the second router has nothing to choose");
  if (router.kind == RouterInit::Kind::VirtualGroups && o.G_I == 1)
    throw Error("router-init virtual-groups needs G_I > 1 (a group is one replica's G_I shards)");

  if (o.expert_scale == "down") {
    p.down_scale = double(o.G_I);
  } else if (o.expert_scale == "glu") {
    p.gate_up_scale = p.down_scale = std::cbrt(double(o.G_I));
  } else if (o.expert_scale != "none") {
    throw Error("expert-scale '" + o.expert_scale +
                "' is not supported (supported: none, down, glu)");
  }
  if (o.dtype.empty()) o.dtype = dense.torch_dtype;
  dtype_from_string(o.dtype);  // validates
  p.config = moe_config(dense, o, dtype_to_string(dtype_from_string(o.dtype)));
  return p;
}

UpcyclePlan plan_upcycle(const std::string& dense_dir, const UpcycleOptions& options) {
  const std::string cfg = (fs::path(dense_dir) / "config.json").string();
  ModelConfig dense = ModelConfig::load(dense_dir);
  try {
    return plan_upcycle(dense, options);
  } catch (const Error& e) {
    const std::string m = e.what();
    const std::string key = "config.json:";  // faults of the input: name its file
    throw Error(m.compare(0, key.size(), key) == 0 ? cfg + m.substr(key.size() - 1) : m);
  }
}

std::string UpcyclePlan::describe() const {
  const UpcycleOptions& o = options;
  const ModelConfig& c = config;
  std::ostringstream s;
  auto line = [&](const char* key) -> std::ostringstream& {
    s << "  " << key << std::string(18 - std::string(key).size(), ' ');
    return s;
  };
  line("preset") << (o.preset.empty() ? "(none)" : o.preset) << "\n";
  line("format") << c.model_type << " (from " << dense.model_type << ")\n";
  line("G_I R_I G_O R_O") << o.G_I << " " << o.R_I << " " << o.G_O << " " << o.R_O << "\n";
  line("T_I") << (o.all_experts ? "all experts (dense MoE)"
                                                  : std::to_string(o.T_I))
              << "\n";
  line("experts") << c.num_experts << ", top-k " << c.num_experts_per_tok << ", width "
                  << c.moe_intermediate_size << " -> " << c.hidden_size / c.G_O << "\n";
  line("shared expert") << o.shared_expert;
  if (c.shared_expert_intermediate_size > 0)
    s << " (width " << c.shared_expert_intermediate_size
      << ", gate zeros, down_proj x2 so sigmoid(0)*2 = 1)";
  s << "\n";
  line("router init") << o.router_init << "\n";
  if (c.model_type == "finer_moe") line("router mode") << o.router_mode << "\n";
  line("concat proj") << o.concat_proj << "\n";
  line("expert scale") << o.expert_scale << " (gate/up x" << gate_up_scale << ", down x"
                       << down_scale << ")\n";
  line("drop ratio") << o.drop_ratio;
  if (o.drop_ratio > 0)
    s << " (" << drop_count(o.drop_ratio, c.moe_intermediate_size) << " of "
      << c.moe_intermediate_size << " rows per expert)";
  s << "\n";
  line("dtype") << c.torch_dtype << "\n";
  line("seed") << o.seed << "\n";
  return s.str();
}

namespace {

constexpr uint64_t kConcatSeedSalt = 0x636f6e636174ULL;  // "concat"

// The tensor names of one MoE layer, split into their role.
struct Role {
  enum Kind { Copy, Router, ConcatRouter, ExpertGate, ExpertUp, ExpertDown, SharedGate, SharedUp, SharedDown,
              SharedExpertGate, ConcatProj } kind = Copy;
  int64_t layer = -1;
  int64_t expert = -1;
};

Role role_of(const std::string& name) {
  Role r;
  const std::string pre = "model.layers.";
  if (name.compare(0, pre.size(), pre) != 0) return r;
  size_t pos = pre.size();
  const size_t dot = name.find('.', pos);
  const int64_t layer = std::stoll(name.substr(pos, dot - pos));
  std::string rest = name.substr(dot + 1);
  for (const char* block : {"block_sparse_moe.", "mlp."}) {
    const std::string b = block;
    if (rest.compare(0, b.size(), b) != 0) continue;
    std::string t = rest.substr(b.size());
    r.layer = layer;
    if (t == "gate.weight") return r.kind = Role::Router, r;
    if (t == "concat_gate.weight") return r.kind = Role::ConcatRouter, r;
    if (t == "shared_expert.gate_proj.weight") return r.kind = Role::SharedGate, r;
    if (t == "shared_expert.up_proj.weight") return r.kind = Role::SharedUp, r;
    if (t == "shared_expert.down_proj.weight") return r.kind = Role::SharedDown, r;
    if (t == "shared_expert_gate.weight") return r.kind = Role::SharedExpertGate, r;
    if (t == "concat_proj.weight") return r.kind = Role::ConcatProj, r;
    if (t.compare(0, 8, "experts.") == 0) {
      const size_t d2 = t.find('.', 8);
      r.expert = std::stoll(t.substr(8, d2 - 8));
      const std::string w = t.substr(d2 + 1);
      if (w == "w1.weight" || w == "gate_proj.weight") return r.kind = Role::ExpertGate, r;
      if (w == "w3.weight" || w == "up_proj.weight") return r.kind = Role::ExpertUp, r;
      if (w == "w2.weight" || w == "down_proj.weight") return r.kind = Role::ExpertDown, r;
    }
    r.layer = -1;
  }
  return r;
}

// Re-initialises `rows` of w along `dim` from N(mean, std) of the values replaced.
torch::Tensor drop_reinit(const torch::Tensor& w, const torch::Tensor& rows, int64_t dim,
                          at::Generator& gen) {
  auto out = w.to(torch::kFloat32).clone();              // [out, in]
  auto old = out.index_select(dim, rows);                // the dropped slice
  const double mean = old.mean().item<double>();
  const double std = old.numel() > 1 ? old.std().item<double>() : 0.0;
  auto fresh = at::normal(mean, std, old.sizes(), gen);  // same shape as the slice
  return out.index_copy_(dim, rows, fresh);
}

const char* kTokenizerFiles[] = {"tokenizer.json",          "tokenizer_config.json",
                                 "generation_config.json",  "special_tokens_map.json",
                                 "vocab.json",              "merges.txt",
                                 "tokenizer.model",         "chat_template.jinja",
                                 "chat_template.json"};

}  // namespace

UpcycleReport upcycle(const std::string& dense_dir, const std::string& out_dir,
                      const UpcycleOptions& options) {
  const auto t0 = std::chrono::steady_clock::now();
  UpcycleReport report;
  report.plan = plan_upcycle(dense_dir, options);
  const UpcyclePlan& plan = report.plan;
  const ModelConfig& c = plan.config;
  const UpcycleOptions& o = plan.options;
  std::error_code ec;
  if (fs::exists(out_dir) && fs::equivalent(out_dir, dense_dir, ec))
    throw Error("OUT_DIR " + out_dir + " is the dense checkpoint's directory; choose another");

  const CheckpointReader reader = CheckpointReader::open(dense_dir);
  const torch::ScalarType out_type = dtype_from_string(c.torch_dtype);
  const std::vector<TensorSpec> specs = expected_tensors(c);
  std::vector<PlannedTensor> planned;
  for (const auto& s : specs) planned.push_back({s.name, from_torch(out_type), s.shape});
  CheckpointWriter writer(out_dir, planned, {{"format", "pt"}}, o.max_shard_bytes);

  // The dense checkpoint's tensor as a zero-copy view of the mapping.
  auto view = [&](const std::string& name, const std::vector<int64_t>& shape) {
    const TensorView& v = reader.get(name);
    if (v.shape != shape) {
      std::string want, got;
      for (auto d : shape) want += (want.empty() ? "" : ", ") + std::to_string(d);
      for (auto d : v.shape) got += (got.empty() ? "" : ", ") + std::to_string(d);
      throw Error(reader.file_of(name) + ": tensor '" + name + "' has shape [" + got +
                  "], expected [" + want + "]");
    }
    return torch::from_blob(v.data, v.shape, torch::TensorOptions().dtype(to_torch(v.dtype)));
  };

  const int64_t D = c.hidden_size, F = plan.dense.intermediate_size;
  const int64_t He = F / o.G_I, Ds = D / o.G_O, N = c.num_experts;
  const RouterInit router = parse_router_init(o.router_init);
  auto gen = at::detail::createCPUGenerator(o.seed);
  // the concatenation routers (router_mode separate) draw from their own
  // stream, so every other tensor is the single-router upcycle's for the seed
  auto concat_gen = at::detail::createCPUGenerator(o.seed ^ kConcatSeedSalt);
  torch::NoGradGuard no_grad;

  int64_t cached_layer = -1;
  torch::Tensor w_gate, w_up, w_down;  // the layer's dense FFN: [F, D], [F, D], [D, F]
  std::map<int64_t, torch::Tensor> drop_rows;  // per expert of the current layer
  auto dense_ffn = [&](int64_t layer) {
    if (layer == cached_layer) return;
    const std::string p = "model.layers." + std::to_string(layer) + ".mlp.";
    w_gate = view(p + "gate_proj.weight", {F, D});
    w_up = view(p + "up_proj.weight", {F, D});
    w_down = view(p + "down_proj.weight", {D, F});
    drop_rows.clear();
    cached_layer = layer;
  };
  auto rows_of = [&](int64_t e) -> const torch::Tensor& {
    auto it = drop_rows.find(e);
    if (it == drop_rows.end()) {
      const int64_t n = drop_count(o.drop_ratio, He);
      auto perm = torch::randperm(He, gen, torch::kInt64);      // [He]
      auto rows = std::get<0>(perm.narrow(0, 0, n).sort());     // [n], ascending
      it = drop_rows.emplace(e, rows).first;
    }
    return it->second;
  };
  auto scaled = [](const torch::Tensor& w, double s) {
    return s == 1.0 ? w : w.to(torch::kFloat32) * s;
  };

  std::optional<Progress> progress;
  if (o.progress) progress.emplace("upcycle", int64_t(writer.total_bytes() >> 20), "MiB");

  for (const TensorSpec& spec : specs) {
    const Role r = role_of(spec.name);
    torch::Tensor t;
    if (r.layer >= 0) dense_ffn(r.layer);
    switch (r.kind) {
      case Role::Copy:
        t = view(spec.name, spec.shape);
        break;
      case Role::Router:
        if (router.kind == RouterInit::Kind::Zeros) {
          t = torch::zeros({N, D});
        } else if (router.kind == RouterInit::Kind::Normal) {
          t = at::normal(0.0, router.std, {N, D}, gen);  // [N, D]
        } else {
          // one row per (sum group, replica); expert e uses row e / G_I
          t = at::normal(0.0, router.std, {N / o.G_I, D}, gen)  // [N/G_I, D]
                  .repeat_interleave(o.G_I, 0);                 // [N, D]
        }
        break;
      case Role::ConcatRouter:  // [G_O*R_O, D], drawn as the first router is
        t = router.kind == RouterInit::Kind::Zeros
                ? torch::zeros({o.G_O * o.R_O, D})
                : at::normal(0.0, router.std, {o.G_O * o.R_O, D}, concat_gen);
        break;
      case Role::ExpertGate:
      case Role::ExpertUp:
      case Role::ExpertDown: {
        const ExpertSlice s = expert_slice(r.expert, o.G_I, o.R_I, o.R_O);
        if (r.kind == Role::ExpertDown) {
          t = scaled(w_down.narrow(0, s.g_o * Ds, Ds).narrow(1, s.j * He, He),  // [D/G_O, He]
                     plan.down_scale);
        } else {
          const auto& w = r.kind == Role::ExpertGate ? w_gate : w_up;
          t = scaled(w.narrow(0, s.j * He, He), plan.gate_up_scale);  // [He, D]
        }
        if (o.drop_ratio > 0)
          t = drop_reinit(t, rows_of(r.expert), r.kind == Role::ExpertDown ? 1 : 0, gen);
        break;
      }
      case Role::SharedGate:
        t = w_gate;
        break;
      case Role::SharedUp:
        t = w_up;
        break;
      case Role::SharedDown:
        t = w_down.to(torch::kFloat32) * 2.0;  // the gate starts at sigmoid(0) = 1/2
        break;
      case Role::SharedExpertGate:
        t = torch::zeros({1, D});
        break;
      case Role::ConcatProj:
        t = o.concat_proj == "zeros" ? torch::zeros({D, D})
                                     : at::normal(0.0, plan.dense.initializer_range, {D, D}, gen);
        break;
    }
    t = t.to(out_type).contiguous();
    if (t.sizes().vec() != spec.shape)
      throw Error("internal: upcycled tensor '" + spec.name + "' has the wrong shape");
    writer.write(spec.name, t.data_ptr(), size_t(t.numel()) * t.element_size());
    if (progress) progress->update(int64_t(writer.bytes_written() >> 20));
  }
  writer.finish();
  if (progress) progress->finish();
  c.save(out_dir);
  for (const char* name : kTokenizerFiles) {
    const fs::path src = fs::path(dense_dir) / name;
    if (!fs::is_regular_file(src)) continue;
    std::ifstream in(src, std::ios::binary);
    std::stringstream bytes;
    bytes << in.rdbuf();
    if (!in && !in.eof()) throw Error("cannot read " + src.string());
    write_file_atomic((fs::path(out_dir) / name).string(), bytes.str());
  }
  report.bytes_written = writer.bytes_written();
  report.num_shards = writer.num_shards();
  report.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return report;
}

}  // namespace finmoe
