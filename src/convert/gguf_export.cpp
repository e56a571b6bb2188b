// finmoe export gguf: a checkpoint into one GGUF v3 file (docs/formats/gguf.md).
// The header (metadata and tensor infos with their offsets) is laid out first
// from shapes and types alone; then each tensor is made from the mapped
// safetensors (widened to float32, reordered, stacked), encoded and written
// before the next one, so only one tensor is held at a time.
#include "finmoe/gguf.h"

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <set>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "core/file_util.h"
#include "core/progress.h"
#include "finmoe/config.h"
#include "finmoe/error.h"
#include "finmoe/safetensors.h"
#include "finmoe/tokenizer.h"
#include "model/torch_dtype.h"

namespace fs = std::filesystem;

namespace finmoe {

namespace {

constexpr uint32_t kAlignment = 32;
constexpr int64_t kQ8Block = 32;       // values per Q8_0 block
constexpr int64_t kQ8BlockBytes = 34;  // f16 scale + 32 int8

// GGUF metadata value types.
enum : uint32_t { kU8 = 0, kI8, kU16, kI16, kU32, kI32, kF32, kBool, kString, kArray, kU64, kI64, kF64 };

// The two byte-level BPE pre-tokenizer regexes llama.cpp knows by name.
const char* kLlama3Regex =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const char* kQwen2Regex =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

uint64_t align_up(uint64_t n) { return (n + kAlignment - 1) / kAlignment * kAlignment; }

uint64_t type_bytes(GgufType t, uint64_t numel) {
  switch (t) {
    case GgufType::F32: return numel * 4;
    case GgufType::F16:
    case GgufType::BF16: return numel * 2;
    case GgufType::Q8_0: return numel / kQ8Block * kQ8BlockBytes;
  }
  throw Error("unknown ggml type " + std::to_string(uint32_t(t)));
}

// Little-endian serialisation of the header.
struct Buf {
  std::string b;
  template <class T>
  void pod(T v) { b.append(reinterpret_cast<const char*>(&v), sizeof(T)); }
  void str(const std::string& s) { pod<uint64_t>(s.size()); b += s; }
};

struct Metadata {
  Buf buf;
  int64_t count = 0;
  void key(const std::string& k, uint32_t type) { buf.str(k); buf.pod<uint32_t>(type); ++count; }
  void u32(const std::string& k, int64_t v) {
    if (v < 0 || v > int64_t(UINT32_MAX)) throw Error("GGUF key " + k + ": " + std::to_string(v) + " does not fit u32");
    key(k, kU32); buf.pod<uint32_t>(uint32_t(v));
  }
  void f32(const std::string& k, double v) { key(k, kF32); buf.pod<float>(float(v)); }
  void boolean(const std::string& k, bool v) { key(k, kBool); buf.pod<uint8_t>(v ? 1 : 0); }
  void string(const std::string& k, const std::string& v) { key(k, kString); buf.str(v); }
  void strings(const std::string& k, const std::vector<std::string>& v) {
    key(k, kArray); buf.pod<uint32_t>(kString); buf.pod<uint64_t>(v.size());
    for (const auto& s : v) buf.str(s);
  }
  void i32s(const std::string& k, const std::vector<int32_t>& v) {
    key(k, kArray); buf.pod<uint32_t>(kI32); buf.pod<uint64_t>(v.size());
    for (int32_t x : v) buf.pod<int32_t>(x);
  }
};

// One output tensor: its GGUF name, ggml shape, type and how to make it
// (float32, torch layout: the reverse of `ne`).
struct Planned {
  std::string name;
  std::vector<uint64_t> ne;
  GgufType type = GgufType::F32;
  std::function<torch::Tensor()> make;
  uint64_t offset = 0;
};

torch::Tensor widen(const TensorView& v) {
  return torch::from_blob(v.data, v.shape, to_torch(v.dtype)).to(torch::kFloat32);
}

// HF rotate-half rows of q/k ([H*hd, ...]) into llama.cpp's adjacent pairs
// for arch "llama" (inverse = false), or pairs back into halves (inverse = true).
torch::Tensor reorder_rope_rows(const torch::Tensor& w, int64_t heads, bool inverse) {
  const int64_t rows = w.size(0), hd = rows / heads;
  std::vector<int64_t> shape = {heads, inverse ? hd / 2 : 2, inverse ? 2 : hd / 2};
  for (int64_t d = 1; d < w.dim(); ++d) shape.push_back(w.size(d));
  return w.reshape(shape).transpose(1, 2).reshape(w.sizes()).contiguous();
}

// Q8_0 as ggml's reference quantizer: per block of 32, d = max|x| / 127,
// q = round(x / d) computed with the float32 d, d stored as f16.
void encode_q8_0(const float* x, int64_t n, char* out) {
  for (int64_t b = 0; b < n / kQ8Block; ++b) {
    const float* xb = x + b * kQ8Block;
    float amax = 0;
    for (int64_t i = 0; i < kQ8Block; ++i) amax = std::max(amax, std::fabs(xb[i]));
    const float d = amax / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
    const c10::Half dh(d);
    std::memcpy(out, &dh, 2);
    auto* q = reinterpret_cast<int8_t*>(out + 2);
    for (int64_t i = 0; i < kQ8Block; ++i) q[i] = int8_t(std::lround(xb[i] * id));
    out += kQ8BlockBytes;
  }
}

std::string encode(const torch::Tensor& t, GgufType type) {
  const torch::Tensor f = t.contiguous();
  std::string bytes;
  if (type == GgufType::Q8_0) {
    bytes.resize(type_bytes(type, uint64_t(f.numel())));
    encode_q8_0(f.data_ptr<float>(), f.numel(), bytes.data());
    return bytes;
  }
  const torch::Tensor c = type == GgufType::F32 ? f
                          : type == GgufType::F16 ? f.to(torch::kFloat16).contiguous()
                                                  : f.to(torch::kBFloat16).contiguous();
  bytes.assign(static_cast<const char*>(c.data_ptr()), size_t(c.nbytes()));
  return bytes;
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error("cannot open " + path);
  try {
    return nlohmann::json::parse(in);
  } catch (const std::exception& e) {
    throw Error(path + ": " + e.what());
  }
}

// The Split regex of a byte-level pre-tokenizer ("" when none).
std::string split_regex(const nlohmann::json& pre) {
  if (pre.is_object()) {
    if (pre.value("type", "") == "Split" && pre.contains("pattern") && pre["pattern"].contains("Regex"))
      return pre["pattern"]["Regex"].get<std::string>();
    if (pre.contains("pretokenizers"))
      for (const auto& p : pre["pretokenizers"])
        if (auto r = split_regex(p); !r.empty()) return r;
  }
  return "";
}

struct Vocab {
  std::vector<std::string> tokens, merges;
  std::vector<int32_t> types;
  std::string pre;
};

// tokenizer.json as llama.cpp's "gpt2" (byte-level BPE) vocabulary, padded
// to the model's vocab_size with unused "[PAD<id>]" entries.
Vocab read_vocab(const std::string& dir, int64_t vocab_size, const std::string& pre_option) {
  const std::string path = dir + "/tokenizer.json";
  const nlohmann::json j = read_json(path);
  const auto& model = j.at("model");
  const std::string dumped_pre = j.contains("pre_tokenizer") ? j["pre_tokenizer"].dump() : "";
  if (model.value("type", "") != "BPE" || dumped_pre.find("ByteLevel") == std::string::npos)
    throw Error(path + ": model.type '" + model.value("type", "") +
                "' without a ByteLevel pre_tokenizer; GGUF export supports byte-level BPE tokenizers only "
                "(tokenizer.ggml.model gpt2)");
  Vocab v;
  v.tokens.resize(size_t(vocab_size));
  v.types.assign(size_t(vocab_size), 0);
  const auto put = [&](int64_t id, const std::string& s, int32_t type) {
    if (id < 0 || id >= vocab_size)
      throw Error(path + ": token '" + s + "' has id " + std::to_string(id) +
                  ", outside the model's vocab_size " + std::to_string(vocab_size));
    v.tokens[size_t(id)] = s;
    v.types[size_t(id)] = type;
  };
  for (const auto& [s, id] : model.at("vocab").items()) put(id.get<int64_t>(), s, 1);  // NORMAL
  if (j.contains("added_tokens"))
    for (const auto& a : j["added_tokens"])  // CONTROL (special) or USER_DEFINED
      put(a.at("id").get<int64_t>(), a.at("content").get<std::string>(), a.value("special", false) ? 3 : 4);
  for (int64_t i = 0; i < vocab_size; ++i)
    if (v.types[size_t(i)] == 0) {
      v.tokens[size_t(i)] = "[PAD" + std::to_string(i) + "]";
      v.types[size_t(i)] = 5;  // UNUSED
    }
  for (const auto& m : model.at("merges"))
    v.merges.push_back(m.is_string() ? m.get<std::string>()
                                     : m.at(0).get<std::string>() + " " + m.at(1).get<std::string>());
  if (pre_option != "auto") {
    v.pre = pre_option;
  } else {
    const std::string re = j.contains("pre_tokenizer") ? split_regex(j["pre_tokenizer"]) : "";
    if (re == kLlama3Regex) v.pre = "llama-bpe";
    else if (re == kQwen2Regex) v.pre = "qwen2";
    else
      throw Error(path + ": the pre_tokenizer's Split regex is neither Llama-3's nor Qwen2's; "
                  "name llama.cpp's pre-tokenizer with --pre (e.g. --pre deepseek-v3)");
  }
  return v;
}

struct ArchInfo {
  std::string arch;       // llama.cpp's name
  bool permute_qk;        // HF halves -> adjacent pairs
  bool unpermute_qk;      // finmoe pairs -> halves (qwen2 family with rope_interleaved)
};

ArchInfo arch_of(const ModelConfig& c) {
  const std::string& t = c.model_type;
  if (t == "llama" || t == "mistral" || t == "mixtral") return {"llama", !c.rope_interleaved, false};
  if (t == "qwen2") return {"qwen2", false, c.rope_interleaved};
  if (t == "qwen2_moe") return {"qwen2moe", false, c.rope_interleaved};
  // llama.cpp ropes deepseek2 on adjacent pairs (HF's interleaved layout)
  if (t == "deepseek_v2" || t == "deepseek_v3") return {"deepseek2", false, !c.rope_interleaved};
  throw Error("finmoe export gguf: model_type '" + t +
              "' is not supported (supported: llama, mistral, mixtral, qwen2, qwen2_moe, deepseek_v2, "
              "deepseek_v3)");
}

GgufType weight_type(const std::string& type) {
  if (type == "f16") return GgufType::F16;
  if (type == "bf16") return GgufType::BF16;
  if (type == "q8_0") return GgufType::Q8_0;
  throw Error("--type '" + type + "' is not supported (supported: f16, bf16, q8_0)");
}

}  // namespace

uint64_t GgufTensorInfo::nbytes() const {
  uint64_t n = 1;
  for (uint64_t d : ne) n *= d;
  return type_bytes(type, n);
}

GgufExportReport export_gguf(const std::string& dir, const std::string& out, const GgufExportOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  const GgufType wtype = weight_type(o.type);
  const ModelConfig c = ModelConfig::load(dir);
  const ArchInfo ai = arch_of(c);
  if (c.hidden_act != "silu")
    throw Error(dir + "/config.json: hidden_act '" + c.hidden_act + "': GGUF export supports silu only");
  const bool deepseek = ai.arch == "deepseek2";
  if (c.rope_scaling.rope_type != "default" && c.rope_scaling.rope_type != "linear" &&
      !(deepseek && c.rope_scaling.rope_type == "yarn"))
    throw Error(dir + "/config.json: rope_scaling.rope_type '" + c.rope_scaling.rope_type +
                "' is not supported by GGUF export (supported: default, linear; yarn for deepseek)");
  // llama.cpp's deepseek2 takes first_k_dense_replace dense layers, then MoE ones
  for (int64_t i = 0; i < c.num_hidden_layers; ++i)
    if (c.is_moe() && !c.moe_layers[size_t(i)] && !(deepseek && i < c.first_k_dense_replace))
      throw Error(dir + "/config.json: layer " + std::to_string(i) +
                  " is dense in a MoE model; llama.cpp's " + ai.arch +
                  (deepseek ? " needs every layer after first_k_dense_replace MoE (moe_layer_freq 1)"
                            : " needs every layer MoE"));
  GgufExportReport report;
  if (deepseek && c.n_group > 1 && c.topk_group < c.n_group &&
      (c.topk_method == "group_limited_greedy" || c.topk_method == "noaux_tc"))
    report.warnings.push_back(
        "llama.cpp's deepseek2 ignores group-limited routing (n_group " + std::to_string(c.n_group) +
        ", topk_group " + std::to_string(c.topk_group) +
        "): it picks the top-k experts over all groups, so its routing can differ from finmoe's and HF's");
  if (deepseek && c.q_lora_rank == 0 && c.num_hidden_layers != 27)
    report.warnings.push_back(
        "no q_lora_rank (q_proj): llama.cpp builds up to early 2025 expect q_proj only for the "
        "27-layer DeepSeek-V2-Lite; newer ones read it from the missing q_lora_rank key");
  if (c.model_type == "qwen2_moe" && c.norm_topk_prob)
    throw Error(dir + "/config.json: norm_topk_prob true: llama.cpp's qwen2moe does not renormalise "
                "the top-k router weights");
  const CheckpointReader ckpt = CheckpointReader::open(dir);
  const Tokenizer tok = Tokenizer::from_dir(dir);
  const Vocab vocab = read_vocab(dir, c.vocab_size, o.pre);

  // --- tensors
  std::vector<Planned> plan;
  std::set<std::string> used;
  const auto view = [&](const std::string& n) -> const TensorView& { used.insert(n); return ckpt.get(n); };
  const auto ne_of = [](std::vector<int64_t> shape) {
    std::vector<uint64_t> ne(shape.rbegin(), shape.rend());
    return ne;
  };
  // a 2-D/3-D weight gets the chosen type; Q8_0 needs rows of whole blocks
  const auto wt = [&](const std::vector<int64_t>& shape) {
    if (shape.size() < 2) return GgufType::F32;
    if (wtype == GgufType::Q8_0 && shape.back() % kQ8Block != 0) return GgufType::F16;
    return wtype;
  };
  const auto add = [&](const std::string& gguf, const std::string& hf, GgufType type,
                       std::function<torch::Tensor(torch::Tensor)> fn = nullptr) {
    const TensorView& v = view(hf);
    plan.push_back({gguf, ne_of(v.shape), type, [&v, fn] { return fn ? fn(widen(v)) : widen(v); }});
  };
  const auto weight = [&](const std::string& gguf, const std::string& hf,
                          std::function<torch::Tensor(torch::Tensor)> fn = nullptr) {
    add(gguf, hf, wt(ckpt.get(hf).shape), fn);
  };
  // deepseek: within each of `heads` blocks of `block` rows, the last
  // qk_rope_head_dim rows go from HF rotate-half to llama.cpp's adjacent pairs
  const auto rope_tail_fn = [&](int64_t heads, int64_t block) -> std::function<torch::Tensor(torch::Tensor)> {
    if (!ai.unpermute_qk) return nullptr;
    const int64_t rope = c.qk_rope_head_dim;
    return [heads, block, rope](torch::Tensor w) {
      auto v = w.reshape({heads, block, -1});
      auto tail = reorder_rope_rows(v.narrow(1, block - rope, rope).reshape({heads * rope, -1}), heads, true);
      return torch::cat({v.narrow(1, 0, block - rope), tail.reshape({heads, rope, -1})}, 1)
          .reshape(w.sizes())
          .contiguous();
    };
  };
  const auto rope_fn = [&](int64_t heads) -> std::function<torch::Tensor(torch::Tensor)> {
    if (ai.permute_qk) return [heads](torch::Tensor w) { return reorder_rope_rows(w, heads, false); };
    if (ai.unpermute_qk) return [heads](torch::Tensor w) { return reorder_rope_rows(w, heads, true); };
    return nullptr;
  };
  // experts e = 0..E-1 of `fmt` (with {} for e) stacked into [E, out, in]
  const auto experts = [&](const std::string& gguf, const std::string& prefix, const std::string& suffix) {
    std::vector<const TensorView*> vs;
    for (int64_t e = 0; e < c.num_experts; ++e)
      vs.push_back(&view(prefix + std::to_string(e) + "." + suffix));
    std::vector<int64_t> shape = vs[0]->shape;
    shape.insert(shape.begin(), c.num_experts);
    plan.push_back({gguf, ne_of(shape), wt(shape), [vs] {
                      std::vector<torch::Tensor> ts;
                      for (const auto* v : vs) ts.push_back(widen(*v));
                      return torch::stack(ts);
                    }});
  };

  weight("token_embd.weight", "model.embed_tokens.weight");
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string L = "model.layers." + std::to_string(i) + ".", B = "blk." + std::to_string(i) + ".";
    add(B + "attn_norm.weight", L + "input_layernorm.weight", GgufType::F32);
    const std::string A = L + "self_attn.";
    if (deepseek) {
      const int64_t H = c.num_attention_heads, qk = c.qk_head_dim();
      if (c.q_lora_rank > 0) {
        weight(B + "attn_q_a.weight", A + "q_a_proj.weight");
        add(B + "attn_q_a_norm.weight", A + "q_a_layernorm.weight", GgufType::F32);
        weight(B + "attn_q_b.weight", A + "q_b_proj.weight", rope_tail_fn(H, qk));
      } else {
        weight(B + "attn_q.weight", A + "q_proj.weight", rope_tail_fn(H, qk));
      }
      weight(B + "attn_kv_a_mqa.weight", A + "kv_a_proj_with_mqa.weight",
             rope_tail_fn(1, c.kv_lora_rank + c.qk_rope_head_dim));
      add(B + "attn_kv_a_norm.weight", A + "kv_a_layernorm.weight", GgufType::F32);
      weight(B + "attn_kv_b.weight", A + "kv_b_proj.weight");
      weight(B + "attn_output.weight", A + "o_proj.weight");
      add(B + "ffn_norm.weight", L + "post_attention_layernorm.weight", GgufType::F32);
      const std::string M = L + "mlp.";
      if (!c.moe_layers[size_t(i)]) {
        weight(B + "ffn_gate.weight", M + "gate_proj.weight");
        weight(B + "ffn_up.weight", M + "up_proj.weight");
        weight(B + "ffn_down.weight", M + "down_proj.weight");
        continue;
      }
      add(B + "ffn_gate_inp.weight", M + "gate.weight", GgufType::F32);
      if (ckpt.has(M + "gate.e_score_correction_bias"))
        add(B + "exp_probs_b.bias", M + "gate.e_score_correction_bias", GgufType::F32);
      experts(B + "ffn_gate_exps.weight", M + "experts.", "gate_proj.weight");
      experts(B + "ffn_down_exps.weight", M + "experts.", "down_proj.weight");
      experts(B + "ffn_up_exps.weight", M + "experts.", "up_proj.weight");
      if (c.n_shared_experts > 0) {
        weight(B + "ffn_gate_shexp.weight", M + "shared_experts.gate_proj.weight");
        weight(B + "ffn_up_shexp.weight", M + "shared_experts.up_proj.weight");
        weight(B + "ffn_down_shexp.weight", M + "shared_experts.down_proj.weight");
      }
      continue;
    }
    weight(B + "attn_q.weight", A + "q_proj.weight", rope_fn(c.num_attention_heads));
    weight(B + "attn_k.weight", A + "k_proj.weight", rope_fn(c.num_key_value_heads));
    weight(B + "attn_v.weight", A + "v_proj.weight");
    weight(B + "attn_output.weight", A + "o_proj.weight");
    if (ckpt.has(A + "q_proj.bias")) {
      add(B + "attn_q.bias", A + "q_proj.bias", GgufType::F32, rope_fn(c.num_attention_heads));
      add(B + "attn_k.bias", A + "k_proj.bias", GgufType::F32, rope_fn(c.num_key_value_heads));
      add(B + "attn_v.bias", A + "v_proj.bias", GgufType::F32);
    }
    if (ckpt.has(A + "o_proj.bias")) add(B + "attn_output.bias", A + "o_proj.bias", GgufType::F32);
    add(B + "ffn_norm.weight", L + "post_attention_layernorm.weight", GgufType::F32);
    if (!c.is_moe()) {
      weight(B + "ffn_gate.weight", L + "mlp.gate_proj.weight");
      weight(B + "ffn_up.weight", L + "mlp.up_proj.weight");
      weight(B + "ffn_down.weight", L + "mlp.down_proj.weight");
    } else if (c.model_type == "mixtral") {
      const std::string M = L + "block_sparse_moe.";
      add(B + "ffn_gate_inp.weight", M + "gate.weight", GgufType::F32);
      experts(B + "ffn_gate_exps.weight", M + "experts.", "w1.weight");
      experts(B + "ffn_down_exps.weight", M + "experts.", "w2.weight");
      experts(B + "ffn_up_exps.weight", M + "experts.", "w3.weight");
    } else {  // qwen2_moe
      const std::string M = L + "mlp.";
      add(B + "ffn_gate_inp.weight", M + "gate.weight", GgufType::F32);
      experts(B + "ffn_gate_exps.weight", M + "experts.", "gate_proj.weight");
      experts(B + "ffn_down_exps.weight", M + "experts.", "down_proj.weight");
      experts(B + "ffn_up_exps.weight", M + "experts.", "up_proj.weight");
      if (c.shared_expert_intermediate_size > 0) {
        // [1, D] in HF, a vector {D} in llama.cpp
        const TensorView& g = view(M + "shared_expert_gate.weight");
        plan.push_back({B + "ffn_gate_inp_shexp.weight", {uint64_t(c.hidden_size)}, GgufType::F32,
                        [&g] { return widen(g).reshape({-1}); }});
        weight(B + "ffn_gate_shexp.weight", M + "shared_expert.gate_proj.weight");
        weight(B + "ffn_up_shexp.weight", M + "shared_expert.up_proj.weight");
        weight(B + "ffn_down_shexp.weight", M + "shared_expert.down_proj.weight");
      }
    }
  }
  add("output_norm.weight", "model.norm.weight", GgufType::F32);
  if (!c.tie_word_embeddings) weight("output.weight", "lm_head.weight");
  else if (deepseek) weight("output.weight", "model.embed_tokens.weight");  // deepseek2 needs its own
  for (const auto& n : ckpt.names())
    if (!used.count(n) && !n.ends_with("rotary_emb.inv_freq"))
      throw Error(dir + ": tensor '" + n + "' has no GGUF counterpart for " + c.model_type);

  // --- metadata
  Metadata md;
  const std::string& a = ai.arch;
  md.string("general.architecture", a);
  md.string("general.name", fs::path(dir).lexically_normal().filename().string().empty()
                                ? fs::path(dir).lexically_normal().parent_path().filename().string()
                                : fs::path(dir).lexically_normal().filename().string());
  md.u32("general.alignment", kAlignment);
  md.u32("general.file_type", wtype == GgufType::F16 ? 1 : wtype == GgufType::BF16 ? 32 : 7);
  md.u32("general.quantization_version", 2);
  md.u32(a + ".vocab_size", c.vocab_size);
  md.u32(a + ".context_length", c.max_position_embeddings);
  md.u32(a + ".embedding_length", c.hidden_size);
  md.u32(a + ".block_count", c.num_hidden_layers);
  md.u32(a + ".feed_forward_length", c.intermediate_size);
  md.u32(a + ".attention.head_count", c.num_attention_heads);
  md.u32(a + ".attention.head_count_kv", c.num_key_value_heads);
  md.u32(a + ".attention.key_length", deepseek ? c.qk_head_dim() : c.head_dim);
  md.u32(a + ".attention.value_length", deepseek ? c.v_head_dim : c.head_dim);
  md.u32(a + ".rope.dimension_count", deepseek ? c.qk_rope_head_dim : c.head_dim);
  md.f32(a + ".rope.freq_base", c.rope_theta);
  md.f32(a + ".attention.layer_norm_rms_epsilon", c.rms_norm_eps);
  if (c.rope_scaling.rope_type == "linear") {
    md.string(a + ".rope.scaling.type", "linear");
    md.f32(a + ".rope.scaling.factor", c.rope_scaling.factor);
  } else if (c.rope_scaling.rope_type == "yarn") {  // deepseek only (checked above)
    md.string(a + ".rope.scaling.type", "yarn");
    md.f32(a + ".rope.scaling.factor", c.rope_scaling.factor);
    md.u32(a + ".rope.scaling.original_context_length", c.rope_scaling.original_max_position_embeddings);
    md.f32(a + ".rope.scaling.yarn_log_multiplier", 0.1 * c.rope_scaling.mscale_all_dim);
  }
  if (deepseek) {
    // llama.cpp reads it always; without yarn it multiplies log(1) = 0
    if (c.rope_scaling.rope_type != "yarn") md.f32(a + ".rope.scaling.yarn_log_multiplier", 0.0);
    md.u32(a + ".leading_dense_block_count", c.first_k_dense_replace);
    if (c.q_lora_rank > 0) md.u32(a + ".attention.q_lora_rank", c.q_lora_rank);
    md.u32(a + ".attention.kv_lora_rank", c.kv_lora_rank);
    md.u32(a + ".expert_feed_forward_length", c.moe_intermediate_size);
    md.u32(a + ".expert_shared_count", c.n_shared_experts);
    md.f32(a + ".expert_weights_scale", c.routed_scaling_factor);
    md.boolean(a + ".expert_weights_norm", c.norm_topk_prob);
    md.u32(a + ".expert_gating_func", c.scoring_func == "sigmoid" ? 2 : 1);  // llama.cpp's enum
  }
  if (c.is_moe()) {
    md.u32(a + ".expert_count", c.num_experts);
    md.u32(a + ".expert_used_count", c.num_experts_per_tok);
    if (c.model_type == "qwen2_moe") {
      md.u32(a + ".expert_feed_forward_length", c.moe_intermediate_size);
      md.u32(a + ".expert_shared_feed_forward_length", c.shared_expert_intermediate_size);
    }
  }
  md.string("tokenizer.ggml.model", "gpt2");
  md.string("tokenizer.ggml.pre", vocab.pre);
  md.strings("tokenizer.ggml.tokens", vocab.tokens);
  md.i32s("tokenizer.ggml.token_type", vocab.types);
  md.strings("tokenizer.ggml.merges", vocab.merges);
  std::optional<int64_t> bos = tok.bos_id(), eos = tok.eos_id(), pad;
  if (!bos) bos = c.bos_token_id;
  if (!eos && !c.eos_token_id.empty()) eos = c.eos_token_id[0];
  if (!tok.config().pad_token.empty()) pad = tok.token_to_id(tok.config().pad_token);
  if (!pad) pad = c.pad_token_id;
  if (bos) md.u32("tokenizer.ggml.bos_token_id", *bos);
  if (eos) md.u32("tokenizer.ggml.eos_token_id", *eos);
  if (pad) md.u32("tokenizer.ggml.padding_token_id", *pad);
  // what encode(add_special_tokens=true) does, as HF
  const std::vector<int32_t> probe = tok.encode("a", true), plain = tok.encode("a", false);
  md.boolean("tokenizer.ggml.add_bos_token", bos && probe.size() > plain.size() && probe.front() == *bos);
  md.boolean("tokenizer.ggml.add_eos_token", eos && probe.size() > plain.size() && probe.back() == *eos);
  if (!tok.config().chat_template.empty()) md.string("tokenizer.chat_template", tok.config().chat_template);

  // --- header: counts, metadata, tensor infos with aligned offsets
  Buf h;
  h.b = "GGUF";
  h.pod<uint32_t>(3);
  h.pod<uint64_t>(plan.size());
  h.pod<uint64_t>(uint64_t(md.count));
  h.b += md.buf.b;
  uint64_t offset = 0;
  for (Planned& p : plan) {
    p.offset = offset;
    h.str(p.name);
    h.pod<uint32_t>(uint32_t(p.ne.size()));
    for (uint64_t d : p.ne) h.pod<uint64_t>(d);
    h.pod<uint32_t>(uint32_t(p.type));
    h.pod<uint64_t>(offset);
    uint64_t numel = 1;
    for (uint64_t d : p.ne) numel *= d;
    offset = align_up(offset + type_bytes(p.type, numel));
  }
  h.b.resize(align_up(h.b.size()), '\0');

  AtomicFile f(out);
  f.write(h.b);
  std::optional<Progress> progress;
  if (o.progress) progress.emplace("export gguf", int64_t(plan.size()), "tensors");
  uint64_t written = 0;
  const std::string zeros(kAlignment, '\0');
  for (size_t i = 0; i < plan.size(); ++i) {
    const Planned& p = plan[i];
    const torch::Tensor t = p.make();
    uint64_t numel = 1;
    for (uint64_t d : p.ne) numel *= d;
    if (uint64_t(t.numel()) != numel)
      throw Error(dir + ": tensor for " + p.name + " has " + std::to_string(t.numel()) + " values, expected " +
                  std::to_string(numel));
    if (written != p.offset) throw Error("internal: GGUF offset mismatch at " + p.name);
    const std::string bytes = encode(t, p.type);
    f.write(bytes);
    written += bytes.size();
    const uint64_t pad_to = align_up(written);
    f.write(zeros.data(), pad_to - written);
    written = pad_to;
    if (progress) progress->update(int64_t(i + 1), p.name);
  }
  if (progress) progress->finish();
  f.commit();

  GgufExportReport& r = report;
  r.arch = a;
  r.tensors = int64_t(plan.size());
  r.metadata_keys = md.count;
  r.bytes = h.b.size() + written;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

// --- reader

namespace {

struct Reader {
  std::ifstream in;
  std::string path;
  template <class T>
  T pod() {
    T v{};
    if (!in.read(reinterpret_cast<char*>(&v), sizeof(T))) throw Error(path + ": truncated GGUF header");
    return v;
  }
  std::string str() {
    const uint64_t n = pod<uint64_t>();
    if (n > (uint64_t(1) << 32)) throw Error(path + ": GGUF string length " + std::to_string(n) + " too large");
    std::string s(n, '\0');
    if (n && !in.read(s.data(), std::streamsize(n))) throw Error(path + ": truncated GGUF string");
    return s;
  }
  double number(uint32_t type) {
    switch (type) {
      case kU8: return pod<uint8_t>();
      case kI8: return pod<int8_t>();
      case kU16: return pod<uint16_t>();
      case kI16: return pod<int16_t>();
      case kU32: return pod<uint32_t>();
      case kI32: return pod<int32_t>();
      case kF32: return pod<float>();
      case kBool: return pod<uint8_t>();
      case kU64: return double(pod<uint64_t>());
      case kI64: return double(pod<int64_t>());
      case kF64: return pod<double>();
    }
    throw Error(path + ": unknown GGUF value type " + std::to_string(type));
  }
};

}  // namespace

GgufFile GgufFile::read(const std::string& path) {
  Reader r{std::ifstream(path, std::ios::binary), path};
  if (!r.in) throw Error("cannot open " + path);
  char magic[4];
  if (!r.in.read(magic, 4) || std::memcmp(magic, "GGUF", 4) != 0) throw Error(path + ": not a GGUF file (magic)");
  GgufFile g;
  g.file_size = fs::file_size(path);
  g.version = r.pod<uint32_t>();
  if (g.version != 3) throw Error(path + ": GGUF version " + std::to_string(g.version) + " (3 expected)");
  const uint64_t n_tensors = r.pod<uint64_t>(), n_kv = r.pod<uint64_t>();
  for (uint64_t i = 0; i < n_kv; ++i) {
    const std::string key = r.str();
    GgufValue v;
    v.type = r.pod<uint32_t>();
    if (v.type == kString) {
      v.scalar = r.str();
    } else if (v.type == kArray) {
      v.array_type = r.pod<uint32_t>();
      const uint64_t n = r.pod<uint64_t>();
      for (uint64_t k = 0; k < n; ++k) {
        if (v.array_type == kString) v.strings.push_back(r.str());
        else v.numbers.push_back(r.number(v.array_type));
      }
    } else if (v.type == kBool) {
      v.scalar = r.pod<uint8_t>() != 0;
    } else if (v.type == kF32 || v.type == kF64) {
      v.scalar = r.number(v.type);
    } else if (v.type == kU64) {
      v.scalar = r.pod<uint64_t>();
    } else {
      v.scalar = int64_t(r.number(v.type));
    }
    if (g.metadata.count(key)) throw Error(path + ": GGUF key '" + key + "' twice");
    g.key_order.push_back(key);
    g.metadata[key] = std::move(v);
  }
  if (auto it = g.metadata.find("general.alignment"); it != g.metadata.end())
    g.alignment = uint32_t(std::get<int64_t>(it->second.scalar));
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo t;
    t.name = r.str();
    const uint32_t n_dims = r.pod<uint32_t>();
    if (n_dims == 0 || n_dims > 4) throw Error(path + ": tensor '" + t.name + "' has " + std::to_string(n_dims) + " dims");
    for (uint32_t d = 0; d < n_dims; ++d) t.ne.push_back(r.pod<uint64_t>());
    t.type = GgufType(r.pod<uint32_t>());
    t.offset = r.pod<uint64_t>();
    if (t.offset % g.alignment != 0) throw Error(path + ": tensor '" + t.name + "' offset not aligned");
    g.tensors.push_back(std::move(t));
  }
  const uint64_t header_end = uint64_t(r.in.tellg());
  g.data_offset = (header_end + g.alignment - 1) / g.alignment * g.alignment;
  for (const auto& t : g.tensors)
    if (g.data_offset + t.offset + t.nbytes() > g.file_size)
      throw Error(path + ": tensor '" + t.name + "' lies past the end of the file");
  return g;
}

const GgufTensorInfo* GgufFile::find(const std::string& name) const {
  for (const auto& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

std::vector<float> GgufFile::load(const std::string& path, const GgufTensorInfo& t) const {
  std::ifstream in(path, std::ios::binary);
  in.seekg(std::streamoff(data_offset + t.offset));
  std::string bytes(t.nbytes(), '\0');
  if (!in.read(bytes.data(), std::streamsize(bytes.size()))) throw Error(path + ": cannot read " + t.name);
  uint64_t numel = 1;
  for (uint64_t d : t.ne) numel *= d;
  std::vector<float> out(numel);
  const char* p = bytes.data();
  for (uint64_t i = 0; i < numel; ++i) {
    switch (t.type) {
      case GgufType::F32: std::memcpy(&out[i], p + 4 * i, 4); break;
      case GgufType::F16: { c10::Half h; std::memcpy(&h, p + 2 * i, 2); out[i] = float(h); break; }
      case GgufType::BF16: { c10::BFloat16 h; std::memcpy(&h, p + 2 * i, 2); out[i] = float(h); break; }
      case GgufType::Q8_0: {
        const char* blk = p + (i / kQ8Block) * kQ8BlockBytes;
        c10::Half d;
        std::memcpy(&d, blk, 2);
        out[i] = float(d) * float(int8_t(blk[2 + i % kQ8Block]));
        break;
      }
    }
  }
  return out;
}

}  // namespace finmoe
