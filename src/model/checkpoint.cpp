// Loading, saving and initialising Transformer weights in HF format.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>

#include <sys/mman.h>
#include <unistd.h>

#include "finmoe/error.h"
#include "finmoe/esft.h"
#include "finmoe/finer_router.h"
#include "finmoe/lora.h"
#include "finmoe/model.h"
#include "finmoe/safetensors.h"
#include "kernels/thread_pool.h"
#include "model/torch_dtype.h"
#include "model/transformer.h"

namespace finmoe {

c10::ScalarType to_torch(DType d) {
  switch (d) {
    case DType::F64: return torch::kFloat64;
    case DType::F32: return torch::kFloat32;
    case DType::F16: return torch::kFloat16;
    case DType::BF16: return torch::kBFloat16;
    case DType::I64: return torch::kInt64;
    case DType::I32: return torch::kInt32;
    case DType::I16: return torch::kInt16;
    case DType::I8: return torch::kInt8;
    case DType::U8: return torch::kUInt8;
    case DType::BOOL: return torch::kBool;
  }
  throw Error("unknown dtype");
}

DType from_torch(c10::ScalarType t) {
  switch (t) {
    case torch::kFloat64: return DType::F64;
    case torch::kFloat32: return DType::F32;
    case torch::kFloat16: return DType::F16;
    case torch::kBFloat16: return DType::BF16;
    case torch::kInt64: return DType::I64;
    case torch::kInt32: return DType::I32;
    case torch::kInt16: return DType::I16;
    case torch::kInt8: return DType::I8;
    case torch::kUInt8: return DType::U8;
    case torch::kBool: return DType::BOOL;
    default: throw Error(std::string("dtype ") + c10::toString(t) + " cannot be saved");
  }
}

namespace {

std::string shape_str(c10::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// Names some checkpoints carry that are derived, not learned.
bool ignorable(const std::string& name) {
  return name.ends_with("rotary_emb.inv_freq");
}

// int8 weights hold [-127, 127]: the kernels' sign trick has no -128.
void check_int8_range(const TensorView& v, const std::string& file) {
  const auto* q = reinterpret_cast<const int8_t*>(v.data);
  int8_t lowest = 0;
  for (size_t i = 0; i < v.nbytes; ++i) lowest = std::min(lowest, q[i]);
  if (lowest == -128)
    throw Error(file + ": tensor '" + v.name +
                "' holds -128; int8 weights must lie in [-127, 127] (docs/formats/int8.md)");
}

// A MoE layer's tensors (see model/moe.h for the layout).
// MLA (attention.h): q_proj or its low-rank pair, the joint KV projection, o_proj.
void mla_tensors(const ModelConfig& c, const std::string& p, std::vector<TensorSpec>& out) {
  const int64_t D = c.hidden_size, H = c.num_attention_heads, R = c.kv_lora_rank;
  const int64_t qr = c.q_lora_rank, rope = c.qk_rope_head_dim;
  const bool bias = c.attention_bias;
  if (qr > 0) {
    out.push_back({p + "q_a_proj.weight", {qr, D}});
    if (bias) out.push_back({p + "q_a_proj.bias", {qr}});
    out.push_back({p + "q_a_layernorm.weight", {qr}});
    out.push_back({p + "q_b_proj.weight", {H * c.qk_head_dim(), qr}});
  } else {
    out.push_back({p + "q_proj.weight", {H * c.qk_head_dim(), D}});
  }
  out.push_back({p + "kv_a_proj_with_mqa.weight", {R + rope, D}});
  if (bias) out.push_back({p + "kv_a_proj_with_mqa.bias", {R + rope}});
  out.push_back({p + "kv_a_layernorm.weight", {R}});
  out.push_back({p + "kv_b_proj.weight", {H * (c.qk_nope_head_dim + c.v_head_dim), R}});
  out.push_back({p + "o_proj.weight", {D, H * c.v_head_dim}});
  if (bias) out.push_back({p + "o_proj.bias", {D}});
}

void moe_tensors(const ModelConfig& c, const std::string& layer, std::vector<TensorSpec>& out) {
  const int64_t D = c.hidden_size, Fe = c.moe_intermediate_size, E = c.num_experts;
  const bool mixtral = c.model_type == "mixtral";
  const std::string p = layer + (mixtral ? "block_sparse_moe." : "mlp.");
  out.push_back({p + "gate.weight", {E, D}});
  if (separate_routers(c)) out.push_back({p + "concat_gate.weight", {c.G_O * c.R_O, D}});
  if (c.is_deepseek() && c.topk_method == "noaux_tc")
    out.push_back({p + "gate.e_score_correction_bias", {E}});
  for (int64_t e = 0; e < E; ++e) {
    const std::string x = p + "experts." + std::to_string(e) + ".";
    out.push_back({x + (mixtral ? "w1" : "gate_proj") + ".weight", {Fe, D}});
    out.push_back({x + (mixtral ? "w2" : "down_proj") + ".weight", {D / c.G_O, Fe}});
    out.push_back({x + (mixtral ? "w3" : "up_proj") + ".weight", {Fe, D}});
  }
  if (const int64_t Fs = c.shared_expert_intermediate_size; Fs > 0) {
    const std::string s = p + (c.is_deepseek() ? "shared_experts." : "shared_expert.");
    out.push_back({s + "gate_proj.weight", {Fs, D}});
    out.push_back({s + "up_proj.weight", {Fs, D}});
    out.push_back({s + "down_proj.weight", {D, Fs}});
    if (!c.is_deepseek()) out.push_back({p + "shared_expert_gate.weight", {1, D}});
  }
  if (c.moe_concat_proj) out.push_back({p + "concat_proj.weight", {D, D}});
}

// One anonymous mapping, 2 MiB-aligned and madvised MADV_HUGEPAGE, holding
// copies of the tensors load_model would otherwise use in place.
class HugePageCopy {
 public:
  static constexpr size_t kAlign = 64;  // each tensor starts on a cache line
  // Lays out `views` and copies them in (both threads of the pool); nullptr
  // when the memory cannot be had, and the caller maps instead.
  static std::shared_ptr<HugePageCopy> make(const std::vector<const TensorView*>& views) {
    std::vector<size_t> offset;
    size_t total = 0;
    for (const TensorView* v : views) {
      offset.push_back(total);
      total += (v->nbytes + kAlign - 1) / kAlign * kAlign;
    }
    if (total == 0) return nullptr;
    constexpr size_t kHuge = size_t(2) << 20;
    const size_t len = (total + kHuge - 1) / kHuge * kHuge + kHuge;  // room to align the start
    void* map = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED) return nullptr;
    std::shared_ptr<HugePageCopy> copy(new HugePageCopy(map, len));
    copy->base_ = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(map) + kHuge - 1) & ~(kHuge - 1));
    ::madvise(copy->base_, len - kHuge, MADV_HUGEPAGE);  // advice: without it, 4 KiB pages
    copy->offset_ = std::move(offset);
    // 2 MiB slices of the concatenation, spread over the pool's threads
    kernels::ThreadPool::global().parallel_for(
        int64_t((total + kHuge - 1) / kHuge), 1, [&](int64_t s0, int64_t s1) {
          const size_t lo = size_t(s0) * kHuge, hi = std::min(total, size_t(s1) * kHuge);
          // offsets ascend: from the last view starting at or before lo, until one starts at hi
          const auto& at = copy->offset_;
          size_t i = size_t(std::upper_bound(at.begin(), at.end(), lo) - at.begin());
          for (i = i > 0 ? i - 1 : 0; i < views.size() && at[i] < hi; ++i) {
            const size_t b = std::max(lo, at[i]), e = std::min(hi, at[i] + views[i]->nbytes);
            if (b < e) std::memcpy(copy->base_ + b, views[i]->data + (b - at[i]), e - b);
          }
        });
    // the copied pages of the file mapping leave this process (the page
    // cache keeps them; a later read faults them back from the file)
    static const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
    for (const TensorView* v : views) {
      const uintptr_t b = (reinterpret_cast<uintptr_t>(v->data) + page - 1) & ~(page - 1);
      const uintptr_t e = (reinterpret_cast<uintptr_t>(v->data) + v->nbytes) & ~(page - 1);
      if (b < e) ::madvise(reinterpret_cast<void*>(b), e - b, MADV_DONTNEED);
    }
    return copy;
  }
  ~HugePageCopy() { ::munmap(map_, len_); }
  HugePageCopy(const HugePageCopy&) = delete;
  HugePageCopy& operator=(const HugePageCopy&) = delete;
  uint8_t* data(size_t i) const { return base_ + offset_[i]; }

 private:
  HugePageCopy(void* map, size_t len) : map_(map), len_(len) {}
  void* map_;
  size_t len_;
  uint8_t* base_ = nullptr;
  std::vector<size_t> offset_;  // of each view, from base_
};

}  // namespace

bool default_map_weights() {
  if (const char* e = std::getenv("FINMOE_MMAP"); e && *e) {
    const std::string v = e;
    if (v == "1") return true;
    if (v == "0") return false;
    throw Error("FINMOE_MMAP='" + v + "': must be 1 (map the weights) or 0 (copy them into huge pages)");
  }
  return true;
}

torch::Dtype dtype_from_string(const std::string& name) {
  if (name == "float32" || name == "fp32" || name == "f32") return torch::kFloat32;
  if (name == "bfloat16" || name == "bf16") return torch::kBFloat16;
  if (name == "float16" || name == "fp16" || name == "f16") return torch::kFloat16;
  throw Error("dtype '" + name + "' is not supported (supported: float32, bfloat16, float16)");
}

void set_torch_threads_for(TorchWork work) {
  if (const char* s = std::getenv("OMP_NUM_THREADS"); s != nullptr && *s != '\0') return;
  at::set_num_threads(work == TorchWork::kTraining ? kernels::default_num_threads() : 1);
}

torch::Device device_from_string(const std::string& name) {
  if (name == "cpu") return torch::kCPU;
  if (name == "cuda" || name.starts_with("cuda:")) {
    if (!torch::cuda::is_available())
      throw Error("device '" + name + "': this build's libtorch sees no CUDA device (" +
                  (torch::cuda::device_count() == 0 ? "none found" : "unavailable") + ")");
    torch::Device d(name);
    if (d.has_index() && d.index() >= int64_t(torch::cuda::device_count()))
      throw Error("device '" + name + "': only " + std::to_string(torch::cuda::device_count()) +
                  " CUDA device(s)");
    return d;
  }
  throw Error("device '" + name + "' is not supported (supported: cpu, cuda, cuda:N)");
}

std::string dtype_to_string(torch::Dtype dtype) {
  switch (dtype) {
    case torch::kFloat32: return "float32";
    case torch::kBFloat16: return "bfloat16";
    case torch::kFloat16: return "float16";
    default: throw Error(std::string("dtype ") + c10::toString(dtype) + " has no config name");
  }
}

std::vector<TensorSpec> expected_tensors(const ModelConfig& c) {
  // Listed from the config rather than read off a built module, so checking a
  // checkpoint allocates no weights. Must name what TransformerImpl registers.
  const int64_t D = c.hidden_size, F = c.intermediate_size, V = c.vocab_size;
  const bool o_bias = c.o_proj_bias();
  std::vector<TensorSpec> out;
  out.push_back({"model.embed_tokens.weight", {V, D}});
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    out.push_back({p + "input_layernorm.weight", {D}});
    if (c.is_mla()) {
      mla_tensors(c, p + "self_attn.", out);
    } else {
      out.push_back({p + "self_attn.q_proj.weight", {c.q_size(), D}});
      out.push_back({p + "self_attn.k_proj.weight", {c.kv_size(), D}});
      out.push_back({p + "self_attn.v_proj.weight", {c.kv_size(), D}});
      if (c.attention_bias) {
        out.push_back({p + "self_attn.q_proj.bias", {c.q_size()}});
        out.push_back({p + "self_attn.k_proj.bias", {c.kv_size()}});
        out.push_back({p + "self_attn.v_proj.bias", {c.kv_size()}});
      }
      out.push_back({p + "self_attn.o_proj.weight", {D, c.q_size()}});
      if (o_bias) out.push_back({p + "self_attn.o_proj.bias", {D}});
    }
    out.push_back({p + "post_attention_layernorm.weight", {D}});
    if (c.is_moe() && c.moe_layers.at(size_t(i))) {
      moe_tensors(c, p, out);
      continue;
    }
    out.push_back({p + "mlp.gate_proj.weight", {F, D}});
    out.push_back({p + "mlp.up_proj.weight", {F, D}});
    out.push_back({p + "mlp.down_proj.weight", {D, F}});
    if (c.mlp_bias) {
      out.push_back({p + "mlp.gate_proj.bias", {F}});
      out.push_back({p + "mlp.up_proj.bias", {F}});
      out.push_back({p + "mlp.down_proj.bias", {D}});
    }
  }
  out.push_back({"model.norm.weight", {D}});
  if (!c.tie_word_embeddings) out.push_back({"lm_head.weight", {V, D}});
  if (!c.quantization) return out;
  // 8-bit: each quantized weight as I8, its scales right after it
  const QuantizationConfig& q = *c.quantization;
  const DType scale_t = from_torch(dtype_from_string(q.scale_dtype));
  std::vector<TensorSpec> quantized;
  for (TensorSpec& s : out) {
    const bool int8 = q.quantizes(s.name, s.shape);
    const std::string module = s.name.substr(0, s.name.size() - 7);  // without ".weight"
    const int64_t rows = int8 ? s.shape[0] : 0, cols = int8 ? s.shape[1] : 0;
    if (int8) s.dtype = DType::I8;
    quantized.push_back(std::move(s));
    if (int8)
      quantized.push_back({module + ".weight_scale",
                           {rows, q.group_size ? (cols + q.group_size - 1) / q.group_size : 1},
                           scale_t});
  }
  return quantized;
}

const TensorView& checked_tensor(const CheckpointReader& reader, const TensorSpec& spec,
                                 const ModelConfig& config) {
  if (!reader.has(spec.name))
    throw Error("checkpoint " + reader.dir() + ": missing tensor '" + spec.name +
                "' (expected shape " + shape_str(spec.shape) + " for model_type " +
                config.model_type + ")");
  const TensorView& view = reader.get(spec.name);
  if (view.shape != spec.shape)
    throw Error(reader.file_of(spec.name) + ": tensor '" + spec.name + "' has shape " +
                shape_str(view.shape) + ", expected " + shape_str(spec.shape));
  return view;
}

void check_no_extra_tensors(const CheckpointReader& reader, const std::vector<TensorSpec>& specs,
                            const ModelConfig& config) {
  std::set<std::string> expected;
  for (const TensorSpec& s : specs) expected.insert(s.name);
  for (const auto& name : reader.names()) {
    if (expected.count(name) || ignorable(name)) continue;
    if (name == "lm_head.weight" && config.tie_word_embeddings) continue;  // redundant copy
    throw Error(reader.file_of(name) + ": unexpected tensor '" + name + "' for model_type " +
                config.model_type + " (is config.json for this checkpoint?)");
  }
}

void require_float_weights(const Transformer& model, const std::string& what) {
  if (!model.config().quantization) return;
  throw Error(what + ": the model has int8 weights (quantization_config '" +
              model.config().quantization->quant_method +
              "' in config.json); this needs bf16/f32 weights: use the checkpoint it was "
              "quantized from, and quantize the result");
}

Transformer load_model(const std::string& dir, const LoadOptions& options) {
  if (!options.lora_adapter.empty()) {
    LoadOptions plain = options;
    plain.lora_adapter.clear();
    Transformer model = load_model(dir, plain);
    load_lora_adapter(model, options.lora_adapter);
    return model;
  }
  if (is_esft_delta(dir)) {
    const EsftDeltaInfo delta = read_esft_delta(dir);
    const std::string base = esft_delta_base(delta);
    if (!std::filesystem::is_directory(base))
      throw Error(dir + ": the ESFT delta's base model " + base +
                  " is not a directory (base_model in esft_delta.json)");
    if (is_esft_delta(base))
      throw Error(dir + ": base_model " + base + " is itself an ESFT delta (not supported)");
    Transformer model = load_model(base, options);
    require_float_weights(model, dir + ": the ESFT delta's base model " + base);
    apply_esft_delta(model, dir);
    return model;
  }
  ModelConfig config = ModelConfig::load(dir);
  const torch::Dtype dtype = options.dtype.value_or(dtype_from_string(config.torch_dtype));
  auto reader = std::make_shared<CheckpointReader>(CheckpointReader::open(dir));

  // Every tensor's name, shape and dtype checked against config.json before
  // the model allocates anything: the config's sizes are only trusted once
  // the checkpoint holds that many bytes.
  const std::vector<TensorSpec> specs = expected_tensors(config);
  std::vector<const TensorView*> views;
  views.reserve(specs.size());
  for (const TensorSpec& spec : specs) {
    const TensorView& view = checked_tensor(*reader, spec, config);
    if (spec.dtype ? view.dtype != *spec.dtype : !c10::isFloatingType(to_torch(view.dtype)))
      throw Error(reader->file_of(spec.name) + ": tensor '" + spec.name + "' has dtype " +
                  std::string(dtype_name(view.dtype)) + ", expected " +
                  (spec.dtype ? std::string(dtype_name(*spec.dtype)) +
                                    " (config.json's quantization_config, docs/formats/int8.md)"
                              : std::string("a floating type")));
    if (view.dtype == DType::I8) check_int8_range(view, reader->file_of(spec.name));
    views.push_back(&view);
  }
  check_no_extra_tensors(*reader, specs, config);

  Transformer model(config, dtype, options.device);
  std::map<std::string, torch::Tensor> params;
  for (auto& [name, t] : model.named_parameters()) params.emplace(name, t);

  // int8 weights and their scales keep their dtype; everything else becomes the model's
  auto wanted = [&](size_t i) { return specs[i].dtype ? to_torch(views[i]->dtype) : dtype; };
  auto as_stored = [&](size_t i) {
    return options.device.is_cpu() && to_torch(views[i]->dtype) == wanted(i);
  };
  std::shared_ptr<HugePageCopy> copy;  // the tensors used as stored, unless mapped
  std::vector<size_t> copy_index(specs.size(), 0);
  if (!options.map_weights.value_or(default_map_weights())) {
    std::vector<const TensorView*> stored;
    for (size_t i = 0; i < specs.size(); ++i)
      if (as_stored(i)) {
        copy_index[i] = stored.size();
        stored.push_back(views[i]);
      }
    copy = HugePageCopy::make(stored);
  }

  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < specs.size(); ++i) {
    const TensorSpec& spec = specs[i];
    const TensorView& view = *views[i];
    auto it = params.find(spec.name);
    if (it == params.end()) throw Error("internal: no parameter for " + spec.name);
    const auto src_type = to_torch(view.dtype);
    const torch::Dtype want = wanted(i);
    if (copy && as_stored(i)) {
      // the huge-page copy (aligned); the deleter keeps the copy alive
      it->second.set_data(torch::from_blob(copy->data(copy_index[i]), view.shape, [copy](void*) {},
                                           torch::TensorOptions().dtype(src_type)));
      continue;
    }
    // zero-copy view of the private mapping; the deleter keeps the files mapped
    auto blob = torch::from_blob(view.data, view.shape, [reader](void*) {},
                                 torch::TensorOptions().dtype(src_type));
    torch::Tensor value = blob;
    if (src_type != want || !options.device.is_cpu()) {
      value = blob.to(options.device, want);
    } else if (reinterpret_cast<uintptr_t>(view.data) % dtype_size(view.dtype) != 0) {
      // The format does not align data_offsets to the element size (a bf16
      // tensor of odd length moves every later one by 2 bytes): the kernels
      // read parameters as typed arrays, so such a tensor is copied, not viewed.
      value = blob.clone();
    }
    it->second.set_data(value);
  }
  return model;
}

void save_model(const Transformer& model, const std::string& dir, size_t max_shard_bytes) {
  std::vector<torch::Tensor> keep;  // contiguous CPU copies alive during the write
  std::vector<TensorData> tensors;
  for (const auto& [name, t] : model.named_parameters()) {
    auto c = t.detach().to(torch::kCPU).contiguous();
    keep.push_back(c);
    tensors.push_back({name, from_torch(c.scalar_type()), c.sizes().vec(), c.data_ptr(),
                       static_cast<size_t>(c.numel()) * c.element_size()});
  }
  write_checkpoint(dir, tensors, {{"format", "pt"}}, max_shard_bytes);
  ModelConfig config = model.config();
  config.torch_dtype = dtype_to_string(model.dtype());
  config.save(dir);
}

void init_random(Transformer& model, uint64_t seed) {
  torch::NoGradGuard no_grad;
  auto gen = at::detail::createCPUGenerator(seed);
  const double std = model.config().initializer_range;
  for (auto& [name, t] : model.named_parameters()) {
    torch::Tensor v;
    if (name.ends_with("norm.weight")) {
      v = torch::ones(t.sizes(), torch::kFloat32);
    } else if (name.ends_with(".bias")) {
      v = torch::zeros(t.sizes(), torch::kFloat32);
    } else {
      v = at::normal(0.0, std, t.sizes(), gen, torch::TensorOptions().dtype(torch::kFloat32));
    }
    t.copy_(v);
  }
}

}  // namespace finmoe
