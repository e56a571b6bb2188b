// `finmoe merge --moe`: a mixtral or qwen2_moe model from dense fine-tunes of
// one base, mergekit-moe's recipe format (include/finmoe/merge.h).
//
// Plan first, write second: the recipe, every model's architecture and
// shapes and the output config are checked and the router vectors computed
// before OUT's temporary directory is made; OUT appears by one rename.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <set>

#include <ATen/CPUGeneratorImpl.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>
#include <yaml-cpp/yaml.h>

#include "core/file_util.h"
#include "core/hf_remote_code.h"
#include "core/progress.h"
#include "core/side_files.h"
#include "core/yaml_bounds.h"
#include "finmoe/config.h"
#include "finmoe/error.h"
#include "finmoe/merge.h"
#include "finmoe/model.h"
#include "finmoe/safetensors.h"
#include "finmoe/tokenizer.h"
#include "merge/merge_plan.h"
#include "model/torch_dtype.h"
#include "model/transformer.h"

namespace finmoe {

namespace fs = std::filesystem;

namespace {

// ---- the recipe ----------------------------------------------------------------

std::string where(const std::string& source, const YAML::Node& n, const std::string& key) {
  const YAML::Mark m = n.Mark();
  std::string s = source;
  if (!m.is_null() && m.line >= 0) s += ":" + std::to_string(m.line + 1);
  return s + ": " + key;
}

std::string scalar_of(const YAML::Node& n, const std::string& source, const std::string& key) {
  if (!n.IsScalar()) throw Error(where(source, n, key) + ": expected a scalar");
  return n.Scalar();
}

void only_keys(const YAML::Node& n, const std::string& source, const std::string& key,
               const std::set<std::string>& known) {
  if (!n.IsMap()) throw Error(where(source, n, key) + ": expected a mapping");
  for (const auto& kv : n) {
    const std::string k = scalar_of(kv.first, source, key);
    if (known.count(k)) continue;
    std::string list;
    for (const auto& x : known) list += (list.empty() ? "" : ", ") + x;
    throw Error(where(source, kv.first, (key.empty() ? "" : key + ".") + k) +
                ": unknown or unsupported key (expected one of: " + list + ")");
  }
}

std::vector<std::string> prompts_of(const YAML::Node& n, const std::string& source,
                                    const std::string& key) {
  std::vector<std::string> out;
  if (!n || n.IsNull()) return out;
  if (!n.IsSequence()) throw Error(where(source, n, key) + ": expected a list of prompts");
  for (const auto& p : n) out.push_back(scalar_of(p, source, key));
  return out;
}

std::vector<MoeExpert> experts_of(const YAML::Node& n, const std::string& source,
                                  const std::string& key) {
  if (!n.IsSequence()) throw Error(where(source, n, key) + ": expected a list");
  std::vector<MoeExpert> out;
  for (size_t i = 0; i < n.size(); ++i) {
    const std::string k = key + "[" + std::to_string(i) + "]";
    only_keys(n[i], source, k, {"source_model", "positive_prompts", "negative_prompts"});
    if (!n[i]["source_model"]) throw Error(where(source, n[i], k) + ": source_model is missing");
    MoeExpert e;
    e.source_model = scalar_of(n[i]["source_model"], source, k + ".source_model");
    e.positive_prompts = prompts_of(n[i]["positive_prompts"], source, k + ".positive_prompts");
    e.negative_prompts = prompts_of(n[i]["negative_prompts"], source, k + ".negative_prompts");
    out.push_back(std::move(e));
  }
  return out;
}

// The merge recipe of `shared_weights: {merge_method, parameters}` over the
// base and the expert models; errors are the recipe's, named by `label`.
MergeRecipe shared_merge_recipe(const std::string& method_yaml, const std::string& base,
                                const std::vector<std::string>& models, const std::string& label,
                                const fs::path& recipe_dir) {
  YAML::Node n = YAML::Load(method_yaml);
  n.SetStyle(YAML::EmitterStyle::Block);
  n["base_model"] = base;
  for (const std::string& m : models) {
    YAML::Node e;
    e["model"] = m;
    n["models"].push_back(e);
  }
  const std::string prefix = "shared_weights";
  try {
    MergeRecipe mr = parse_merge_recipe(YAML::Dump(n), prefix);
    // a model named by tokenizer_source or a token's source, as the MoE recipe's paths
    if (!mr.tokenizer_source.empty() && mr.tokenizer_source != "base" && mr.tokenizer_source != "union")
      mr.tokenizer_source = resolve_recipe_path(mr.tokenizer_source, recipe_dir);
    for (auto& [tok, ts] : mr.tokens)
      if (!ts.model.empty()) ts.model = resolve_recipe_path(ts.model, recipe_dir);
    return mr;
  } catch (const Error& e) {
    // "shared_weights:LINE: KEY: ..." of the generated text -> "LABEL: KEY: ..."
    std::string m = e.what();
    if (m.rfind(prefix, 0) == 0) m = m.substr(m.find(": ") + 2);
    throw Error(label + ": " + m);
  }
}

}  // namespace

MoeRecipe parse_moe_recipe(const std::string& yaml, const std::string& source) {
  check_yaml_bounds(yaml, source);
  YAML::Node root;
  try {
    root = YAML::Load(yaml);
  } catch (const YAML::Exception& e) {
    throw Error(source + ":" + std::to_string(e.mark.line + 1) + ": not valid YAML: " + e.msg);
  }
  if (!root.IsMap()) throw Error(source + ": expected a mapping with base_model and experts");
  only_keys(root, source, "",
            {"base_model", "experts", "gate_mode", "dtype", "experts_per_token",
             "shared_experts", "architecture", "shared_weights"});
  MoeRecipe r;
  r.source = source;
  r.text = yaml;
  if (!root["base_model"]) throw Error(source + ": base_model is missing");
  r.base_model = scalar_of(root["base_model"], source, "base_model");
  if (!root["experts"]) throw Error(source + ": experts is missing");
  r.experts = experts_of(root["experts"], source, "experts");
  if (r.experts.empty()) throw Error(where(source, root["experts"], "experts") + ": no experts");
  if (root["shared_experts"]) r.shared_experts = experts_of(root["shared_experts"], source, "shared_experts");
  if (root["gate_mode"]) r.gate_mode = scalar_of(root["gate_mode"], source, "gate_mode");
  static const std::set<std::string> modes = {"hidden", "hidden_avg", "cheap_embed", "random"};
  if (!modes.count(r.gate_mode))
    throw Error(where(source, root["gate_mode"], "gate_mode") + ": '" + r.gate_mode +
                "' is not one finmoe implements (hidden, hidden_avg, cheap_embed, random)");
  if (root["dtype"]) {
    r.dtype = scalar_of(root["dtype"], source, "dtype");
    if (r.dtype == "bf16") r.dtype = "bfloat16";
    if (r.dtype == "fp16") r.dtype = "float16";
    if (r.dtype == "fp32") r.dtype = "float32";
    if (r.dtype != "float32" && r.dtype != "float16" && r.dtype != "bfloat16")
      throw Error(where(source, root["dtype"], "dtype") + ": '" + r.dtype +
                  "' is not float32, float16 or bfloat16");
  }
  if (root["experts_per_token"]) {
    try {
      r.experts_per_token = root["experts_per_token"].as<int64_t>();
    } catch (const YAML::Exception&) {
      throw Error(where(source, root["experts_per_token"], "experts_per_token") + ": expected an integer");
    }
  }
  if (r.experts_per_token < 1 || r.experts_per_token > int64_t(r.experts.size()))
    throw Error(source + ": experts_per_token " + std::to_string(r.experts_per_token) +
                " must be in [1, " + std::to_string(r.experts.size()) + "] (the number of experts)");
  if (root["architecture"]) {
    r.architecture = scalar_of(root["architecture"], source, "architecture");
    if (r.architecture == "qwen") r.architecture = "qwen2_moe";
    if (r.architecture != "mixtral" && r.architecture != "qwen2_moe")
      throw Error(where(source, root["architecture"], "architecture") + ": '" + r.architecture +
                  "' is not an output finmoe writes (mixtral, qwen2_moe)");
  }
  if (r.architecture.empty()) r.architecture = r.shared_experts.empty() ? "mixtral" : "qwen2_moe";
  if (r.shared_experts.size() > 1 || (!r.shared_experts.empty() && r.architecture != "qwen2_moe"))
    throw Error(source + ": shared_experts: " + r.architecture +
                " takes " + (r.architecture == "qwen2_moe" ? "at most one shared expert" : "none"));
  if (const YAML::Node sw = root["shared_weights"]; sw && sw.IsMap()) {
    // merged by a mergekit method; the models are the base and the experts
    only_keys(sw, source, "shared_weights",
              {"merge_method", "parameters", "tokenizer_source", "tokenizer", "chat_template"});
    if (!sw["merge_method"])
      throw Error(where(source, sw, "shared_weights") + ": merge_method is missing");
    r.shared_weights = "merge";
    r.shared_merge = YAML::Dump(sw);
    // the method and its parameters are checked now, on stand-in model names
    std::vector<std::string> names;
    for (size_t i = 0; i < r.experts.size(); ++i) names.push_back("expert" + std::to_string(i));
    shared_merge_recipe(r.shared_merge, "base", names, where(source, sw, "shared_weights"), "");
  } else if (sw) {
    r.shared_weights = scalar_of(sw, source, "shared_weights");
    if (r.shared_weights != "base" && r.shared_weights != "average")
      throw Error(where(source, sw, "shared_weights") + ": '" + r.shared_weights +
                  "' is not base, average or {merge_method: ..., parameters: ...}");
  }
  if (r.gate_mode != "random") {
    auto need = [&](const std::vector<MoeExpert>& es, const std::string& key) {
      for (size_t i = 0; i < es.size(); ++i)
        if (es[i].positive_prompts.empty())
          throw Error(source + ": " + key + "[" + std::to_string(i) + "] ('" + es[i].source_model +
                      "'): gate_mode " + r.gate_mode + " needs positive_prompts");
    };
    need(r.experts, "experts");
    need(r.shared_experts, "shared_experts");
  }
  return r;
}

MoeRecipe load_moe_recipe(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot read the recipe");
  std::string text((std::istreambuf_iterator<char>(in)), {});
  MoeRecipe r = parse_moe_recipe(text, path);
  const fs::path dir = fs::path(path).parent_path();
  r.base_model = resolve_recipe_path(r.base_model, dir);
  for (auto* es : {&r.experts, &r.shared_experts})
    for (auto& e : *es) e.source_model = resolve_recipe_path(e.source_model, dir);
  return r;
}

namespace {

// ---- inputs ------------------------------------------------------------------------

struct Dense {
  std::string dir;
  nlohmann::json config;
  std::optional<CheckpointReader> reader;
};

std::unique_ptr<Dense> open_dense(const std::string& dir) {
  if (!fs::is_directory(dir)) throw Error("model '" + dir + "': no such directory");
  const fs::path cfg = fs::path(dir) / "config.json";
  if (!fs::exists(cfg)) throw Error("model '" + dir + "': no config.json");
  auto d = std::make_unique<Dense>();
  d->dir = dir;
  d->config = read_json_file(cfg.string());
  const std::string type = d->config.value("model_type", "");
  if (type != "llama" && type != "mistral" && type != "qwen2")
    throw Error("model '" + dir + "': model_type '" + type +
                "' is not a dense llama, mistral or qwen2 model (finmoe merge --moe builds "
                "an MoE from dense models)");
  d->reader = CheckpointReader::open(dir);
  return d;
}

std::string shape_text(const std::vector<int64_t>& s) {
  std::string t = "[";
  for (size_t i = 0; i < s.size(); ++i) t += (i ? ", " : "") + std::to_string(s[i]);
  return t + "]";
}

torch::Tensor as_float(const TensorView& v) {
  return torch::from_blob(v.data, v.shape, torch::TensorOptions().dtype(to_torch(v.dtype)))
      .to(torch::kFloat32);
}

// ---- router vectors ------------------------------------------------------------------

// The prompts' token ids as mergekit-moe makes them: the text of the
// tokenizer's bos token (when it has one) and the prompt, encoded without
// added special tokens (the bos text is matched as the special token).
std::vector<std::vector<int64_t>> tokenize(const Tokenizer& tok, const std::vector<std::string>& ps) {
  std::vector<std::vector<int64_t>> out;
  for (const auto& p : ps) {
    std::vector<int64_t> ids;
    for (int32_t t : tok.encode(tok.config().bos_token + p)) ids.push_back(t);
    if (ids.empty()) throw Error("prompt '" + p + "' has no tokens");
    out.push_back(std::move(ids));
  }
  return out;
}

// [L, D]: per layer the mean over prompts of the hidden state entering the
// layer (the residual stream), at the last token or averaged over tokens.
torch::Tensor hidden_means(TransformerImpl& m, const std::vector<std::vector<int64_t>>& prompts,
                           bool average) {
  const int64_t L = int64_t(m.layer_list.size()), D = m.config.hidden_size;
  auto sum = torch::zeros({L, D}, torch::kFloat64);
  for (const auto& p : prompts) {
    const int64_t T = int64_t(p.size());
    if (m.config.sliding_window && T > *m.config.sliding_window)
      throw Error("a prompt of " + std::to_string(T) + " tokens is longer than the sliding window");
    auto ids = torch::tensor(p, torch::kInt64).unsqueeze(0);
    auto x = m.model->embed_tokens->lookup(ids, torch::kFloat32);
    auto [cos, sin] = m.layer_list.front()->self_attn->rope().cos_sin(
        torch::arange(T, torch::kInt64).unsqueeze(0));
    for (int64_t l = 0; l < L; ++l) {
      auto& layer = m.layer_list[size_t(l)];
      sum[l] += (average ? x[0].mean(0) : x[0][T - 1]).to(torch::kFloat64);
      x = x + layer->self_attn(layer->input_layernorm(x), cos, sin, torch::Tensor());
      x = x + layer->ffn(layer->post_attention_layernorm(x));
    }
  }
  return sum / double(prompts.size());
}

torch::Tensor unit_rows(const torch::Tensor& v) {
  return v / v.norm(2, -1, true).clamp_min(1e-8);
}

// [L, E, D] router vectors of `experts` (routed, then shared) per gate mode.
torch::Tensor gate_vectors(const MoeRecipe& r, const std::vector<MoeExpert>& experts,
                           const Dense& base, int64_t L, int64_t D, uint64_t seed) {
  const int64_t E = int64_t(experts.size());
  if (r.gate_mode == "random") {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    return torch::randn({L, E, D}, gen, torch::TensorOptions().dtype(torch::kFloat32));
  }
  const fs::path tj = fs::path(base.dir) / "tokenizer.json";
  if (!fs::exists(tj))
    throw Error(r.source + ": gate_mode " + r.gate_mode + " tokenizes the prompts with the base's "
                "tokenizer and " + tj.string() + " does not exist");
  const Tokenizer tok = Tokenizer::from_dir(base.dir);
  std::vector<torch::Tensor> out;  // per expert [L, D]
  if (r.gate_mode == "cheap_embed") {
    const TensorView& ev = base.reader->get("model.embed_tokens.weight");
    const auto embed = as_float(ev).to(torch::kFloat64);
    auto embedded = [&](const std::vector<std::string>& ps) {
      auto s = torch::zeros({D}, torch::kFloat64);
      for (const auto& ids : tokenize(tok, ps))
        for (int64_t id : ids) {
          if (id >= embed.size(0))
            throw Error("a prompt token id " + std::to_string(id) + " is past the base's " +
                        std::to_string(embed.size(0)) + " embedding rows");
          s += embed[id];
        }
      return unit_rows(s);
    };
    for (const auto& e : experts) {
      auto v = embedded(e.positive_prompts);
      if (!e.negative_prompts.empty()) v = v - embedded(e.negative_prompts);
      out.push_back(unit_rows(v).unsqueeze(0).expand({L, D}));
    }
  } else {
    Transformer model = load_model(base.dir, {.dtype = torch::kFloat32});
    auto* impl = dynamic_cast<TransformerImpl*>(&model.module());
    if (!impl) throw Error("internal: the model is not a TransformerImpl");
    torch::NoGradGuard no_grad;
    const bool average = r.gate_mode == "hidden_avg";
    for (const auto& e : experts) {
      auto v = hidden_means(*impl, tokenize(tok, e.positive_prompts), average);
      if (!e.negative_prompts.empty())
        v = v - hidden_means(*impl, tokenize(tok, e.negative_prompts), average);
      out.push_back(unit_rows(v));
    }
  }
  return torch::stack(out, 1).to(torch::kFloat32);  // [L, E, D]
}

// A directory removed with everything in it when this goes out of scope.
struct TempTree {
  explicit TempTree(std::string p) : path(std::move(p)) {
    std::error_code ec;
    fs::remove_all(path, ec);  // left by a killed run
  }
  ~TempTree() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  TempTree(const TempTree&) = delete;
  TempTree& operator=(const TempTree&) = delete;
  std::string path;
};

// ---- the plan ---------------------------------------------------------------------------

// Where one output tensor comes from.
struct Source {
  std::vector<const Dense*> models;  // averaged (one: copied)
  std::string tensor;                // its name in them
  int64_t router_layer = -1;         // >= 0: router rows of that layer
  bool shared_gate = false;          // the shared expert's [1, D] gate
  bool zeros = false;                // a bias the dense models do not have
};

std::pair<int64_t, std::string> split_layer(const std::string& name) {
  static const std::string prefix = "model.layers.";
  if (name.rfind(prefix, 0) != 0) return {-1, ""};
  const size_t dot = name.find('.', prefix.size());
  return {std::stoll(name.substr(prefix.size(), dot - prefix.size())), name.substr(dot + 1)};
}

std::string model_card(const MoeRecipe& r) {
  std::string c = "---\nbase_model: " + nlohmann::json(r.base_model).dump() +
                  "\ntags:\n  - merge\n  - moe\n  - finmoe\n---\n\n# Mixture of experts\n\n"
                  "Made with `finmoe merge --moe`: " + std::to_string(r.experts.size()) + " " +
                  r.architecture + " experts, gate mode `" + r.gate_mode + "`, " +
                  std::to_string(r.experts_per_token) + " per token.\n\n## Experts\n\n";
  for (const auto& e : r.experts) c += "- `" + e.source_model + "`\n";
  for (const auto& e : r.shared_experts) c += "- `" + e.source_model + "` (shared)\n";
  c += "\n## Recipe\n\n```yaml\n" + r.text + (r.text.ends_with("\n") ? "" : "\n") + "```\n";
  return c;
}

}  // namespace

MergeReport merge_moe(const MoeRecipe& r, const std::string& out_dir, const MergeOptions& options) {
  const auto t0 = std::chrono::steady_clock::now();
  check_new_output(out_dir);
  if (r.experts.empty()) throw Error(r.source + ": no experts");

  // the models: the base and each distinct expert source
  std::map<std::string, std::unique_ptr<Dense>> models;
  auto open = [&](const std::string& dir) -> const Dense* {
    auto& m = models[dir];
    if (!m) m = open_dense(dir);
    return m.get();
  };
  const Dense* base = open(r.base_model);
  std::vector<const Dense*> experts, shared, sources;
  for (const auto& e : r.experts) experts.push_back(open(e.source_model));
  for (const auto& e : r.shared_experts) shared.push_back(open(e.source_model));
  // attention, embeddings, norms: the base's, the mean of the distinct expert
  // models, or those merged by a mergekit method (into a model beside OUT)
  std::vector<const Dense*> distinct;
  for (const Dense* e : experts)
    if (std::find(distinct.begin(), distinct.end(), e) == distinct.end()) distinct.push_back(e);
  if (r.shared_weights == "base") sources = {base};
  if (r.shared_weights == "average") sources = distinct;
  std::optional<MergeRecipe> shared_recipe;
  if (r.shared_weights == "merge") {
    std::vector<std::string> dirs;
    for (const Dense* e : distinct) dirs.push_back(e->dir);
    shared_recipe = shared_merge_recipe(r.shared_merge, base->dir, dirs, r.source + ": shared_weights",
                                        fs::path(r.source).parent_path());
  }
  // with a tokenizer source the models' vocabularies may differ: the shared
  // merge maps their embedding rows, and OUT takes its vocabulary and tokenizer
  const bool vocab_mapped =
      shared_recipe && (!shared_recipe->tokenizer_source.empty() || shared_recipe->tokenizer_block);
  auto vocab_rows = [](const std::string& n) {
    return n == "model.embed_tokens.weight" || n == "lm_head.weight";
  };
  const std::string type = base->config.value("model_type", "");
  for (const auto& [dir, m] : models) {
    if (m->config.value("model_type", "") != type)
      throw Error("model '" + dir + "' is a " + m->config.value("model_type", "") +
                  " model and the base '" + base->dir + "' a " + type +
                  " model: the experts must be fine-tunes of one base");
    for (const std::string& n : base->reader->names()) {
      if (vocab_mapped && vocab_rows(n)) continue;
      if (!m->reader->has(n))
        throw Error("model '" + dir + "' has no tensor '" + n + "' (the base '" + base->dir +
                    "' has)");
      if (m->reader->get(n).shape != base->reader->get(n).shape)
        throw Error("tensor '" + n + "' has shape " + shape_text(m->reader->get(n).shape) +
                    " in model '" + dir + "' but " + shape_text(base->reader->get(n).shape) +
                    " in the base '" + base->dir + "'" +
                    (vocab_rows(n) ? " (vocabularies that differ merge with shared_weights: {merge_method: "
                                     "..., tokenizer_source: union})"
                                   : ""));
    }
  }

  // every input checked: the shared merge, into a model beside OUT
  std::optional<TempTree> merged_dir;
  if (shared_recipe) {
    merged_dir.emplace(out_dir + ".shared-weights.tmp");
    MergeOptions o = options;
    o.progress = false;
    merge_models(*shared_recipe, merged_dir->path, o);
    sources = {open(merged_dir->path)};
  }

  // the output config: the base's turned into the MoE architecture
  const ModelConfig dense = ModelConfig::from_json(base->config, base->dir + "/config.json");
  nlohmann::json cj = base->config;
  if (vocab_mapped) cj["vocab_size"] = sources.front()->config.at("vocab_size");
  const int64_t E = int64_t(r.experts.size());
  cj["num_experts_per_tok"] = r.experts_per_token;
  if (r.architecture == "mixtral") {
    cj["model_type"] = "mixtral";
    cj["architectures"] = {"MixtralForCausalLM"};
    cj["num_local_experts"] = E;
    if (type != "mistral") cj["sliding_window"] = nullptr;
    if (dense.attention_bias)
      throw Error("model '" + base->dir + "' has attention biases, which mixtral has not: use "
                  "architecture: qwen2_moe");
  } else {
    cj["model_type"] = "qwen2_moe";
    cj["architectures"] = {"Qwen2MoeForCausalLM"};
    cj["num_experts"] = E;
    cj["moe_intermediate_size"] = dense.intermediate_size;
    cj["shared_expert_intermediate_size"] = shared.empty() ? 0 : dense.intermediate_size;
    cj["norm_topk_prob"] = true;
    cj["decoder_sparse_step"] = 1;
    cj["mlp_only_layers"] = nlohmann::json::array();
    cj["qkv_bias"] = dense.attention_bias || type == "qwen2";
  }
  if (!r.dtype.empty()) cj["torch_dtype"] = r.dtype;
  const ModelConfig cfg = ModelConfig::from_json(cj, "the MoE config");
  const int64_t L = cfg.num_hidden_layers, D = cfg.hidden_size;

  const TensorView& embed = base->reader->get("model.embed_tokens.weight");
  const DType out_dtype = r.dtype == "float32"   ? DType::F32
                          : r.dtype == "float16" ? DType::F16
                          : r.dtype == "bfloat16" ? DType::BF16
                                                  : embed.dtype;

  std::vector<PlannedTensor> plan;
  std::vector<Source> how;
  for (const TensorSpec& spec : expected_tensors(cfg)) {
    Source s;
    auto [layer, rest] = split_layer(spec.name);
    const std::string mlp = layer >= 0 ? "model.layers." + std::to_string(layer) + ".mlp." : "";
    auto after = [&](const std::string& prefix) {
      return rest.rfind(prefix, 0) == 0 ? std::optional(rest.substr(prefix.size())) : std::nullopt;
    };
    if (auto x = after("block_sparse_moe.experts.") ? after("block_sparse_moe.experts.")
                                                    : after("mlp.experts.")) {
      const size_t dot = x->find('.');
      const int64_t e = std::stoll(x->substr(0, dot));
      std::string proj = x->substr(dot + 1);
      if (proj == "w1.weight") proj = "gate_proj.weight";
      if (proj == "w2.weight") proj = "down_proj.weight";
      if (proj == "w3.weight") proj = "up_proj.weight";
      s.models = {experts[size_t(e)]};
      s.tensor = mlp + proj;
    } else if (rest == "block_sparse_moe.gate.weight" || rest == "mlp.gate.weight") {
      s.router_layer = layer;
    } else if (rest == "mlp.shared_expert_gate.weight") {
      s.router_layer = layer;
      s.shared_gate = true;
    } else if (auto y = after("mlp.shared_expert.")) {
      s.models = {shared.at(0)};
      s.tensor = mlp + *y;
    } else {
      s.models = sources;
      s.tensor = spec.name;
      if (!base->reader->has(spec.name)) {
        if (spec.name.ends_with(".bias") && spec.name.find("self_attn") != std::string::npos)
          s.zeros = true;  // qwen2_moe's q/k/v biases over a llama base
        else
          throw Error("the " + r.architecture + " model needs tensor '" + spec.name +
                      "', which the base '" + base->dir + "' has not");
      }
    }
    if (!s.zeros && s.router_layer < 0 && !s.models.front()->reader->has(s.tensor))
      throw Error("model '" + s.models.front()->dir + "' has no tensor '" + s.tensor + "'");
    if (!s.zeros && s.router_layer < 0 &&
        s.models.front()->reader->get(s.tensor).shape != spec.shape)
      throw Error("tensor '" + s.tensor + "' of model '" + s.models.front()->dir + "' has shape " +
                  shape_text(s.models.front()->reader->get(s.tensor).shape) + " where the " +
                  r.architecture + " model needs " + shape_text(spec.shape));
    plan.push_back({spec.name, out_dtype, spec.shape});
    how.push_back(s);
  }
  // every expert's prompts' router vectors: [L, E (+1 shared), D]
  std::vector<MoeExpert> all = r.experts;
  all.insert(all.end(), r.shared_experts.begin(), r.shared_experts.end());
  const torch::Tensor gates = gate_vectors(r, all, *base, L, D, options.seed);

  // everything is checked: write under a temporary name beside OUT
  StagedOutput staged(out_dir);
  const std::string& tmp = staged.dir();

  MergeReport report;
  {
    CheckpointWriter writer(tmp, plan, {{"format", "pt"}}, options.max_shard_bytes);
    std::optional<Progress> progress;
    if (options.progress) progress.emplace("merge --moe", int64_t(plan.size()), "tensors");
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < plan.size(); ++i) {
      const Source& s = how[i];
      torch::Tensor t;
      if (s.router_layer >= 0) {
        t = s.shared_gate ? gates[s.router_layer].narrow(0, E, 1) : gates[s.router_layer].narrow(0, 0, E);
      } else if (s.zeros) {
        t = torch::zeros(plan[i].shape, torch::kFloat32);
      } else if (s.models.size() == 1 && s.models[0]->reader->get(s.tensor).dtype == out_dtype) {
        const TensorView& v = s.models[0]->reader->get(s.tensor);  // copied bit for bit
        report.bytes_read += v.nbytes;
        t = torch::from_blob(v.data, v.shape, torch::TensorOptions().dtype(to_torch(v.dtype)));
      } else {
        t = torch::zeros(plan[i].shape, torch::kFloat32);
        for (const Dense* m : s.models) {
          const TensorView& v = m->reader->get(s.tensor);
          report.bytes_read += v.nbytes;
          t += as_float(v);
        }
        t /= double(s.models.size());
      }
      t = t.to(to_torch(out_dtype)).contiguous();
      writer.write(plan[i].name, t.data_ptr(), size_t(t.numel()) * t.element_size());
      if (progress) progress->update(int64_t(i + 1));
    }
    writer.finish();
    if (progress) progress->finish();
    report.bytes_written = writer.bytes_written();
    report.num_shards = writer.num_shards();
  }
  add_hf_remote_code(tmp, cj);  // finer_moe / finmoe_dense: modeling code + auto_map
  write_json_file((fs::path(tmp) / "config.json").string(), cj);
  // the tokenizer: the base's, or the shared merge's (its vocabulary, chat template)
  copy_side_files(merged_dir ? merged_dir->path : base->dir, tmp, /*with_config=*/false);
  write_file_atomic((fs::path(tmp) / "mergekit_moe_config.yml").string(), r.text);
  write_file_atomic((fs::path(tmp) / "README.md").string(), model_card(r));
  staged.commit();
  report.tensors = int64_t(plan.size());
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return report;
}

}  // namespace finmoe
