// finmoe info | logits | init
#include <array>
#include <cmath>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "cli/commands.h"
#include "finmoe/error.h"
#include "finmoe/esft.h"
#include "finmoe/finer_router.h"
#include "finmoe/model.h"
#include "finmoe/safetensors.h"
#include "finmoe/tokenizer.h"

namespace finmoe::cli {
namespace {

// n in steps of 1000 with each step's unit: scaled(1.5e6, counts) = "1.50M".
std::string scaled(double n, const std::array<const char*, 5>& units) {
  int u = 0;
  while (std::abs(n) >= 1000 && u < 4) {
    n /= 1000;
    ++u;
  }
  std::ostringstream s;
  s << std::fixed << std::setprecision(u ? 2 : 0) << n << units[size_t(u)];
  return s.str();
}

std::string human(double n) { return scaled(n, {"", "K", "M", "B", "T"}); }
std::string human_bytes(double n) { return scaled(n, {" B", " KB", " MB", " GB", " TB"}); }

// ", + shared experts, + non-expert modules" for the flags an ESFT delta trains.
std::string esft_flags(const nlohmann::json& esft) {
  std::string s;
  if (esft["shared_experts"].get<bool>()) s += ", + shared experts";
  if (esft["non_expert_modules"].get<bool>()) s += ", + non-expert modules";
  return s;
}

// Comma-separated ids, read as int64 so that 4294967297 is refused rather
// than wrapped to 1; checked against the vocabulary once the model is loaded.
std::vector<int32_t> parse_ids(const std::string& s) {
  std::vector<int32_t> ids;
  std::stringstream ss(s);
  std::string part;
  while (std::getline(ss, part, ',')) {
    long long id = 0;
    try {
      size_t used = 0;
      id = std::stoll(part, &used);
      if (used != part.size()) throw std::invalid_argument(part);
    } catch (const std::invalid_argument&) {
      throw Error("--ids: '" + part + "' is not an integer");
    } catch (const std::out_of_range&) {
      throw Error("--ids: '" + part + "' is not a token id (outside 64-bit integers)");
    }
    if (id < 0 || id > INT32_MAX)
      throw Error("--ids: " + part + " is not a token id (ids lie in [0, 2^31))");
    ids.push_back(int32_t(id));
  }
  return ids;
}

}  // namespace

void add_info(CLI::App& app, Run& run) {
  auto* c = app.add_subcommand("info", "Architecture, parameters, per-layer summary, KV-cache size");
  static std::string dir;
  static bool json = false;
  c->add_option("DIR", dir, "model directory (HF format)")->required();
  c->add_flag("--json", json, "print one JSON object");
  c->callback([&run] {
    run = [] {
      // an ESFT delta: describe its base, then what the delta replaces
      std::string model_dir = dir;
      nlohmann::json esft = nullptr;
      if (is_esft_delta(dir)) {
        const EsftDeltaInfo d = read_esft_delta(dir);
        model_dir = esft_delta_base(d);
        int64_t experts = 0;
        for (const auto& [layer, ids] : d.experts.experts) experts += int64_t(ids.size());
        esft = {{"base_model", model_dir},         {"tensors", d.tensors},
                {"params", d.params},              {"bytes", d.bytes},
                {"routed_experts", experts},       {"layers", d.experts.experts.size()},
                {"shared_experts", d.experts.shared_experts},
                {"non_expert_modules", d.experts.non_expert_modules}};
      }
      ModelConfig cfg = ModelConfig::load(model_dir);
      auto reader = CheckpointReader::open(model_dir);
      int64_t total = 0, bytes = 0;
      int64_t int8_tensors = 0, int8_weights = 0, int8_bytes = 0;  // 8-bit weights and their scales
      for (const auto& n : reader.names()) {
        const TensorView& v = reader.get(n);
        bytes += int64_t(v.nbytes);
        if (v.dtype == DType::I8) {
          ++int8_tensors;
          int8_weights += v.numel();
        }
        if (v.dtype == DType::I8 || n.ends_with(".weight_scale")) int8_bytes += int64_t(v.nbytes);
        if (!n.ends_with(".weight_scale")) total += v.numel();  // scales are not parameters
      }
      nlohmann::json quant = nullptr;
      if (cfg.quantization) {
        quant = cfg.quantization->to_json();
        quant["int8_tensors"] = int8_tensors;
        quant["int8_weights"] = int8_weights;
        quant["int8_bytes"] = int8_bytes;  // values and scales
      }
      // per-layer parameters from the declared tensors; MoE and dense layers differ
      const auto specs = expected_tensors(cfg);
      std::vector<int64_t> layer_params(size_t(cfg.num_hidden_layers), 0);
      nlohmann::json layer = nlohmann::json::object();  // tensors of the first (and first MoE) layer
      // -1 when no layer is MoE (a dense model, or one whose decoder_sparse_step
      // or mlp_only_layers leave every layer dense)
      const auto moe_it = std::find(cfg.moe_layers.begin(), cfg.moe_layers.end(), true);
      const int64_t first_moe =
          moe_it == cfg.moe_layers.end() ? -1 : int64_t(moe_it - cfg.moe_layers.begin());
      for (const auto& s : specs) {
        if (!s.name.starts_with("model.layers.")) continue;
        const size_t dot = s.name.find('.', 13);
        const int64_t l = std::stoll(s.name.substr(13, dot - 13));
        int64_t n = s.name.ends_with(".weight_scale") ? 0 : 1;
        for (auto d : s.shape) n *= d;
        layer_params[size_t(l)] += n;
        if (l == 0 || l == first_moe) layer[s.name.substr(13)] = s.shape;
      }
      const int64_t per_layer = layer_params.empty() ? 0 : layer_params[0];
      const int64_t active = cfg.is_moe() ? total - (cfg.param_count() - cfg.active_param_count())
                                          : total;
      nlohmann::json moe = nullptr;
      std::string routing_name;
      if (cfg.is_moe()) {
        switch (cfg.routing()) {
          case ModelConfig::Routing::Dense: routing_name = "dense (softmax over all experts)"; break;
          case ModelConfig::Routing::SoftmaxTopK:
            routing_name = std::string("softmax then top-k") +
                           (cfg.norm_topk_prob ? ", renormalised" : "");
            break;
          case ModelConfig::Routing::TopKSoftmax: routing_name = "softmax over the top-k logits"; break;
          case ModelConfig::Routing::DeepSeek:
            routing_name = cfg.scoring_func + " scores, " + cfg.topk_method +
                           (cfg.n_group > 1 ? " (best " + std::to_string(cfg.topk_group) + " of " +
                                                  std::to_string(cfg.n_group) + " groups)"
                                            : std::string()) +
                           (cfg.norm_topk_prob ? ", renormalised" : "") + ", x" +
                           std::to_string(cfg.routed_scaling_factor).substr(0, 4);
            break;
        }
        std::vector<int64_t> moe_layers;
        for (size_t l = 0; l < cfg.moe_layers.size(); ++l)
          if (cfg.moe_layers[l]) moe_layers.push_back(int64_t(l));
        moe = {{"num_experts", cfg.num_experts},
               {"num_experts_per_tok", cfg.num_experts_per_tok},
               {"moe_intermediate_size", cfg.moe_intermediate_size},
               {"shared_expert_intermediate_size", cfg.shared_expert_intermediate_size},
               {"routing", routing_name},
               {"moe_layers", moe_layers},
               {"G_I", cfg.G_I},
               {"R_I", cfg.R_I},
               {"G_O", cfg.G_O},
               {"R_O", cfg.R_O},
               {"T_I", cfg.T_I()},
               {"moe_concat_proj", cfg.moe_concat_proj},
               {"router_mode", router_mode_name(router_mode(cfg))},
               {"params_per_moe_layer", first_moe < 0 ? 0 : layer_params[size_t(first_moe)]}};
      }
      nlohmann::json kv = {{"float32", kv_cache_bytes_per_token(cfg, 4)},
                           {"bfloat16", kv_cache_bytes_per_token(cfg, 2)},
                           {"int8", kv_cache_bytes_per_token(cfg, 1)}};
      if (json) {
        nlohmann::json j = {{"model_type", cfg.model_type},
                            {"architectures", cfg.architectures},
                            {"total_params", total},
                            {"active_params", active},
                            {"checkpoint_bytes", bytes},
                            {"num_hidden_layers", cfg.num_hidden_layers},
                            {"hidden_size", cfg.hidden_size},
                            {"intermediate_size", cfg.intermediate_size},
                            {"num_attention_heads", cfg.num_attention_heads},
                            {"num_key_value_heads", cfg.num_key_value_heads},
                            {"head_dim", cfg.head_dim},
                            {"vocab_size", cfg.vocab_size},
                            {"tie_word_embeddings", cfg.tie_word_embeddings},
                            {"torch_dtype", cfg.torch_dtype},
                            {"rope_theta", cfg.rope_theta},
                            {"rope_scaling", cfg.rope_scaling.rope_type},
                            {"max_context", cfg.max_position_embeddings},
                            {"params_per_layer", per_layer},
                            {"layer_tensors", layer},
                            {"moe", moe},
                            {"kv_cache_bytes_per_token", kv},
                            {"quantization", quant},
                            {"esft_delta", esft}};
        std::cout << j.dump(2) << "\n";
        return 0;
      }
      if (!esft.is_null())
        std::cout << "esft delta  " << dir << ": " << esft["tensors"].get<int64_t>()
                  << " trained tensors, " << human(double(esft["params"].get<int64_t>())) << " params ("
                  << std::fixed << std::setprecision(2)
                  << 100.0 * double(esft["params"].get<int64_t>()) / double(std::max<int64_t>(total, 1))
                  << "% of the model), " << human_bytes(double(esft["bytes"].get<int64_t>()))
                  << " on disk; " << esft["routed_experts"].get<int64_t>() << " routed experts in "
                  << esft["layers"].get<size_t>() << " layers"
                  << esft_flags(esft) << "\n"
                  << std::defaultfloat;
      std::cout << "model       " << model_dir << "\n"
                << "arch        " << cfg.model_type
                << (cfg.architectures.empty() ? "" : " (" + cfg.architectures[0] + ")") << "\n"
                << "params      " << human(double(total)) << " (" << total << "), "
                << human_bytes(double(bytes)) << " on disk, dtype " << cfg.torch_dtype << "\n"
                << "layers      " << cfg.num_hidden_layers << " x [attn "
                << (cfg.is_mla() ? "MLA " + std::to_string(cfg.num_attention_heads) + " heads"
                                 : std::to_string(cfg.num_attention_heads) + "q/" +
                                       std::to_string(cfg.num_key_value_heads) + "kv heads x " +
                                       std::to_string(cfg.head_dim))
                << (cfg.attention_bias ? ", qkv bias" : "") << "; SwiGLU " << cfg.hidden_size
                << "->" << cfg.intermediate_size << "] = " << human(double(per_layer))
                << " params in layer 0\n";
      if (cfg.is_mla())
        std::cout << "mla         q " << (cfg.q_lora_rank > 0 ? "lora " + std::to_string(cfg.q_lora_rank)
                                                              : std::string("proj"))
                  << ", kv latent " << cfg.kv_lora_rank << " + rope " << cfg.qk_rope_head_dim
                  << "; per head qk " << cfg.qk_nope_head_dim << "+" << cfg.qk_rope_head_dim
                  << ", v " << cfg.v_head_dim << "\n";
      if (cfg.quantization) {
        const QuantizationConfig& q = *cfg.quantization;
        std::cout << "weights     int8 (" << q.quant_method << " v" << q.format_version << "), "
                  << (q.group_size ? "a scale per group of " + std::to_string(q.group_size) + " inputs"
                                   : std::string("a scale per output channel"))
                  << ", " << q.scale_dtype << " scales: " << int8_tensors << " tensors, "
                  << human(double(int8_weights)) << " weights in " << human_bytes(double(int8_bytes))
                  << " (" << std::fixed << std::setprecision(3)
                  << double(int8_bytes) / double(std::max<int64_t>(int8_weights, 1))
                  << " B/weight)" << std::defaultfloat << "; " << q.ignore.size()
                  << " modules kept in " << cfg.torch_dtype << "\n";
      }
      if (cfg.is_moe()) {
        std::cout << "experts     " << cfg.num_experts << " x SwiGLU " << cfg.hidden_size << "->"
                  << cfg.moe_intermediate_size << "->" << cfg.hidden_size / cfg.G_O << ", "
                  << cfg.num_experts_per_tok << " active per token, " << routing_name;
        if (cfg.shared_expert_intermediate_size > 0)
          std::cout << "; shared expert " << cfg.shared_expert_intermediate_size;
        if (cfg.model_type == "finer_moe")
          std::cout << "; G_I=" << cfg.G_I << " R_I=" << cfg.R_I << " G_O=" << cfg.G_O
                    << " R_O=" << cfg.R_O << " T_I=" << cfg.T_I()
                    << (cfg.moe_concat_proj ? ", concat_proj" : "")
                    << (separate_routers(cfg) ? ", separate routers (gate + concat_gate)" : "");
        std::cout << "\n"
                  << "moe layers  " << moe["moe_layers"].size() << " of " << cfg.num_hidden_layers
                  << ", " << human(double(moe["params_per_moe_layer"].get<int64_t>()))
                  << " params each\n"
                  << "active      " << human(double(active)) << " params per token ("
                  << active << ")\n";
      }
      std::cout                 << "embedding   " << cfg.vocab_size << " x " << cfg.hidden_size
                << (cfg.tie_word_embeddings ? " (tied lm_head)" : " + lm_head") << "\n"
                << "rope        theta " << cfg.rope_theta << ", scaling " << cfg.rope_scaling.rope_type
                << "\n"
                << "max context " << cfg.max_position_embeddings << " tokens\n"
                << "KV cache    " << kv["bfloat16"].get<int64_t>() << " B/token bf16, "
                << kv["float32"].get<int64_t>() << " B/token fp32, " << kv["int8"].get<int64_t>()
                << " B/token int8; full context bf16: "
                << human_bytes(double(kv["bfloat16"].get<int64_t>()) *
                               double(cfg.max_position_embeddings))
                << "\n";
      return 0;
    };
  });
}

void add_logits(CLI::App& app, Run& run) {
  auto* c = app.add_subcommand("logits", "Top-K next-token log-probabilities at every position (JSON)");
  static std::string dir, text, ids_arg, dtype, device = "cpu", adapter;
  static int64_t top = 5;
  c->add_option("DIR", dir, "model directory")->required();
  auto* t = c->add_option("--text", text, "text to encode (no special tokens added)");
  auto* i = c->add_option("--ids", ids_arg, "comma-separated token ids");
  t->excludes(i);
  c->add_option("--top", top, "alternatives per position")->capture_default_str();
  c->add_option("--dtype", dtype, "float32 | bfloat16 (default float32, for comparisons)");
  c->add_option("--device", device, "cpu | cuda | cuda:N")->capture_default_str();
  c->add_option("--adapter", adapter, "LoRA adapter directory (PEFT layout), applied unmerged");
  c->callback([&run] {
    run = [] {
      if (text.empty() == ids_arg.empty()) throw Error("give exactly one of --text and --ids");
      if (top < 1) throw Error("--top must be at least 1, got " + std::to_string(top));
      std::vector<int32_t> ids;
      std::optional<Tokenizer> tok;
      if (std::filesystem::exists(dir + "/tokenizer.json")) tok.emplace(Tokenizer::from_dir(dir));
      if (!text.empty()) {
        if (!tok) throw Error(dir + ": --text needs tokenizer.json");
        ids = tok->encode(text, false);
      } else {
        ids = parse_ids(ids_arg);
      }
      if (ids.empty()) throw Error("no tokens to score");
      auto model = load_model(dir, {.dtype = dtype_from_string(dtype.empty() ? "float32" : dtype),
                                    .device = device_from_string(device),
                                    .lora_adapter = adapter});
      for (int32_t id : ids)
        if (id < 0 || id >= model.config().vocab_size)
          throw Error("--ids: token " + std::to_string(id) + " outside the vocabulary");
      torch::NoGradGuard no_grad;
      auto input = torch::tensor(std::vector<int64_t>(ids.begin(), ids.end())).unsqueeze(0);
      auto logp = torch::log_softmax(model.forward(input)[0], -1).to(torch::kCPU);  // [T,V] fp32
      auto [vals, idx] = logp.topk(std::min<int64_t>(top, logp.size(1)), -1);
      // null for an id the tokenizer has no token for: a vocabulary padded
      // past the tokenizer (Qwen) has rows the model scores but no text
      auto token_of = [&](int32_t id) -> nlohmann::json {
        if (id >= tok->vocab_size()) return nullptr;
        try {
          return tok->id_to_token(id);
        } catch (const Error&) {  // a gap among the added tokens
          return nullptr;
        }
      };
      nlohmann::json out = {{"model", dir}, {"ids", ids}};
      for (int64_t p = 0; p < logp.size(0); ++p) {
        nlohmann::json alts = nlohmann::json::array();
        for (int64_t k = 0; k < vals.size(1); ++k) {
          nlohmann::json a = {{"id", idx[p][k].item<int64_t>()}, {"logprob", vals[p][k].item<double>()}};
          if (tok) a["token"] = token_of(int32_t(idx[p][k].item<int64_t>()));
          alts.push_back(a);
        }
        out["positions"].push_back({{"position", p}, {"token_id", ids[size_t(p)]}, {"top", alts}});
      }
      std::cout << out.dump() << "\n";
      return 0;
    };
  });
}

void add_init(CLI::App& app, Run& run) {
  auto* c = app.add_subcommand("init", "Write a seeded random-initialised checkpoint in HF format");
  static std::string out, arch, preset = "tiny", tokenizer, dtype = "bfloat16", config_file;
  static uint64_t seed = 0;
  c->add_option("OUT", out, "output directory")->required();
  c->add_option("--preset", preset, "model shape: " + [] {
    std::string s;
    for (const auto& n : preset_names()) s += (s.empty() ? "" : "|") + n;
    return s;
  }())->capture_default_str();
  c->add_option("--arch", arch, "llama | qwen2 | mistral (default: the preset's)");
  c->add_option("--config", config_file,
                "an HF config.json to initialise instead of a preset (any architecture finmoe loads)")
      ->excludes(c->get_option("--preset"))
      ->excludes(c->get_option("--arch"));
  c->add_option("--tokenizer", tokenizer, "directory with tokenizer.json to copy (sets vocab for tiny/small)");
  c->add_option("--dtype", dtype, "float32 | bfloat16 | float16")->capture_default_str();
  c->add_option("--seed", seed, "random seed")->capture_default_str();
  c->callback([&run] {
    run = [] {
      int64_t vocab = 0;
      std::optional<Tokenizer> tok;
      if (!tokenizer.empty()) {
        tok.emplace(Tokenizer::from_dir(tokenizer));
        if (preset == "tiny" || preset == "small") vocab = (tok->vocab_size() + 63) / 64 * 64;
      }
      ModelConfig cfg = config_file.empty()
                            ? preset_config(preset, arch, vocab)
                            : ModelConfig::from_json(read_json_file(config_file), config_file);
      const std::string shape = config_file.empty() ? "preset " + preset : config_file;
      if (tok && tok->vocab_size() > cfg.vocab_size)
        throw Error("tokenizer has " + std::to_string(tok->vocab_size()) + " tokens, " + shape +
                    " only " + std::to_string(cfg.vocab_size));
      if (tok) {
        if (auto b = tok->bos_id()) cfg.bos_token_id = *b;
        if (auto e = tok->eos_id()) cfg.eos_token_id = {*e};
      }
      const auto dt = dtype_from_string(dtype);
      cfg.torch_dtype = dtype_to_string(dt);
      Transformer model(cfg, dt);
      init_random(model, seed);
      std::filesystem::create_directories(out);
      save_model(model, out);
      GenerationConfig gen;
      gen.bos_token_id = cfg.bos_token_id;
      gen.eos_token_id = cfg.eos_token_id;
      write_json_file(out + "/generation_config.json", gen.to_json());
      if (tok) {
        for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) {
          const auto src = std::filesystem::path(tokenizer) / f;
          if (std::filesystem::exists(src))
            std::filesystem::copy_file(src, std::filesystem::path(out) / f,
                                       std::filesystem::copy_options::overwrite_existing);
        }
      }
      std::cerr << "wrote " << out << ": " << cfg.model_type << " " << shape << ", "
                << human(double(model.param_count().total)) << " params, " << cfg.torch_dtype
                << ", seed " << seed << "\n";
      return 0;
    };
  });
}

}  // namespace finmoe::cli
