#pragma once
// The decoder-only transformer: one definition for training and inference.
//
//   forward(tokens[B,T])  -> logits[B,T,V]   training / evaluation (causal,
//                                            optional packed-document mask)
//   step(StepBatch, cache) -> logits          inference: a ragged batch mixing
//                                            prefill chunks and decode tokens of
//                                            many sequences over a paged KV cache
//
// Both entries run the same modules; step() == forward() on the same tokens
// (tests/model). Parameters carry Hugging Face names (named_parameters() ==
// the checkpoint's tensor names), so loading and saving are a name walk.
//
// Thread safety: a Transformer may run forward/step from one thread at a time.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "finmoe/config.h"
#include "finmoe/safetensors.h"

namespace finmoe {

class KVCache;

// One layer's share of the KV cache, per token: a list of tensor shapes.
// GQA: {K [kv_heads, head_dim], V [kv_heads, head_dim]}; MLA (later): one
// latent [kv_lora_rank + rope_dim]. KVCache allocates [num_blocks, block_size, ...shape].
using CacheSpec = std::vector<std::vector<int64_t>>;

// A ragged inference batch. Tokens of one sequence are contiguous in
// `tokens`; `positions[i]` is token i's position in its sequence.
struct StepBatch {
  struct Seq {
    int64_t q_start = 0;               // first index into tokens
    int64_t q_len = 0;                 // tokens of this sequence in this step
    int64_t context_len = 0;           // cached tokens after this step (= last position + 1)
    std::vector<int32_t> block_table;  // cache block of positions [i*bs, (i+1)*bs)
  };
  std::vector<int32_t> tokens;     // [N]
  std::vector<int32_t> positions;  // [N]
  std::vector<Seq> seqs;
  bool all_logits = false;  // logits for every token [N,V] instead of each sequence's last [S,V]

  // Checks the invariants above against a cache; throws Error naming the field.
  void validate(const KVCache& cache) const;
};

// One MoE layer's routing of its T tokens (rows of the flattened [B*T] batch).
// The same value feeds the load-balancing loss, ESFT scores and statistics.
struct RouterOutput {
  int64_t layer = -1;     // decoder layer index
  torch::Tensor logits;   // [T, E] float32 (float64 for a float64 model), the router's raw output
  torch::Tensor indices;  // [T, k] int64, the experts each token uses (k = E for dense MoE)
  torch::Tensor weights;  // [T, k] logits' dtype, their combination weights
};

struct ForwardOptions {
  // [B,T] int64 document ids for packed sequences: a token attends only to
  // earlier tokens of the same document, and positions restart at 0 at each
  // document start. Undefined = one document per row.
  torch::Tensor document_ids;
  // When set, receives one RouterOutput per MoE layer, in layer order.
  std::vector<RouterOutput>* router_outputs = nullptr;
};

// Load-balancing loss of DeepSeek-V2 / FineRMoE App. B.1, summed over layers:
//   L = alpha * sum_i f_i * P_i,  f_i = N/(K*T) * sum_t 1[token t uses expert i],
//   P_i = 1/T * sum_t s_{i,t},   s = softmax of the router logits over all N experts.
// Differentiable through the logits (f is a count). Zero for no routers.
torch::Tensor load_balancing_loss(const std::vector<RouterOutput>& routers, double alpha);

struct ParamCount {
  int64_t total = 0;      // every distinct parameter (tied head counted once)
  int64_t embedding = 0;  // embed_tokens (+ untied lm_head)
  int64_t active = 0;     // used per token: total minus the routed experts a token skips
};

class TransformerImpl;

// A decoder model and its configuration. Cheap to move; holds the module.
class Transformer {
 public:
  // Builds the module with uninitialised (zero) parameters of `dtype` on `device`.
  Transformer(const ModelConfig& config, torch::Dtype dtype = torch::kFloat32,
              torch::Device device = torch::kCPU);
  ~Transformer();
  Transformer(Transformer&&) noexcept;
  Transformer& operator=(Transformer&&) noexcept;

  const ModelConfig& config() const;
  torch::Dtype dtype() const;
  torch::Device device() const;

  // tokens [B,T] int64 -> logits [B,T,V] float32 (float64 for a float64 model).
  torch::Tensor forward(const torch::Tensor& tokens, const ForwardOptions& options = {});
  // Writes the batch's K/V into `cache`, returns float32 logits [S,V] (one per
  // sequence, its last token) or [N,V] with batch.all_logits. No autograd.
  torch::Tensor step(const StepBatch& batch, KVCache& cache);

  CacheSpec cache_spec(int64_t layer) const;
  ParamCount param_count() const;
  // HF-named parameters (the tied lm_head is not listed separately).
  std::vector<std::pair<std::string, torch::Tensor>> named_parameters() const;
  torch::nn::Module& module();

 private:
  std::shared_ptr<TransformerImpl> impl_;
};

class StepGraphs;  // CUDA graphs of decode steps (src/model/cuda/step_graphs.h)

// A paged KV cache for every layer of one model. Owned by whoever schedules
// sequences (Generator, serving engine); the block allocation policy is theirs.
class KVCache {
 public:
  KVCache(const Transformer& model, int64_t num_blocks, int64_t block_size = 16,
          std::optional<torch::Dtype> dtype = std::nullopt);
  int64_t num_blocks() const { return num_blocks_; }
  int64_t block_size() const { return block_size_; }
  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }
  // layer's tensors, each [num_blocks, block_size, ...spec]
  std::vector<torch::Tensor>& layer(int64_t i) { return layers_.at(static_cast<size_t>(i)); }
  // Bytes one token occupies over all layers.
  int64_t bytes_per_token() const;
  int64_t total_bytes() const { return bytes_per_token() * num_blocks_ * block_size_; }
  // Internal to Transformer::step: the CUDA graphs captured against this
  // cache's tensors, which live and die with it; null until a CUDA decode
  // step captures one.
  std::shared_ptr<StepGraphs>& step_graphs() { return step_graphs_; }

 private:
  int64_t num_blocks_;
  int64_t block_size_;
  std::vector<std::vector<torch::Tensor>> layers_;
  std::shared_ptr<StepGraphs> step_graphs_;
};

// KV-cache bytes per token for a config and element size, without building a model.
int64_t kv_cache_bytes_per_token(const ModelConfig& config, int64_t element_bytes);

// ---- checkpoints -------------------------------------------------------

struct LoadOptions {
  std::optional<torch::Dtype> dtype;  // default: config.torch_dtype
  torch::Device device = torch::kCPU;
  // A LoRA adapter directory (PEFT layout, finmoe/lora.h) attached, unmerged,
  // after loading; empty = none.
  std::string lora_adapter = {};
  // CPU tensors whose dtype already matches: true = used in place in the
  // file's private copy-on-write mapping (no copy; the page cache decides
  // whether they are mapped with 4 KiB or 2 MiB entries); false = copied
  // into one anonymous region the kernel backs with 2 MiB pages
  // (MADV_HUGEPAGE), so decoding streams them with few TLB misses whatever
  // state the file is cached in (decode 5-15% faster on a VM whose page
  // cache maps the file with 4 KiB entries), at a load cost: a VM backs
  // freshly touched huge pages slowly (1-3 s per GB measured,
  // docs/PERFORMANCE.md). Unset: FINMOE_MMAP=0 copies, else maps.
  std::optional<bool> map_weights = {};
};

// Whether load_model maps (true) or copies (false) weights when
// LoadOptions::map_weights is unset: false when FINMOE_MMAP=0, true when it
// is 1 or unset. Throws Error for any other value.
bool default_map_weights();

// Loads an HF checkpoint directory (config.json + safetensors). Tensors whose
// dtype and device already match are used as stored: copied into huge pages
// or memory-mapped (private copy-on-write), see LoadOptions::map_weights. Missing, unexpected or wrongly shaped tensors throw Error
// naming the tensor and file. A directory holding an ESFT delta
// (finmoe/esft.h, docs/formats/esft.md) loads as its base model with the
// delta's tensors in place of the base's.
Transformer load_model(const std::string& dir, const LoadOptions& options = {});

// Writes config.json + safetensors (sharded past max_shard_bytes) into `dir`,
// each file atomically.
void save_model(const Transformer& model, const std::string& dir,
                size_t max_shard_bytes = size_t(5) << 30);

// Seeded random initialisation as HF does for these architectures:
// N(0, initializer_range) for linears and embeddings, ones for norms, zero biases.
void init_random(Transformer& model, uint64_t seed);

// The tensors an architecture expects, with shapes (llama.cpp-style
// declaration). With config.quantization the quantized weights are I8 and
// each is followed by its `<module>.weight_scale` (docs/formats/int8.md).
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  std::optional<DType> dtype = std::nullopt;  // fixed (int8 weights, scales); else any float
};
std::vector<TensorSpec> expected_tensors(const ModelConfig& config);
// The tensor `spec` declares, from `reader`; throws Error naming the
// directory or file when it is missing or has another shape.
const TensorView& checked_tensor(const CheckpointReader& reader, const TensorSpec& spec,
                                 const ModelConfig& config);
// Throws Error naming the first tensor of `reader` that `specs` does not
// declare (a derived rotary table and a tied head's redundant copy excepted).
void check_no_extra_tensors(const CheckpointReader& reader, const std::vector<TensorSpec>& specs,
                            const ModelConfig& config);

// Throws Error when `model` holds int8 weights (an 8-bit checkpoint):
// training, LoRA merging and ESFT deltas need bf16/f32 weights. `what` names
// the operation and the directory it was given.
void require_float_weights(const Transformer& model, const std::string& what);

torch::Dtype dtype_from_string(const std::string& name);  // "float32" | "bfloat16" | "float16"
// "cpu" | "cuda" | "cuda:N"; throws Error when CUDA is asked for and this
// libtorch has none or sees no device.
torch::Device device_from_string(const std::string& name);
std::string dtype_to_string(torch::Dtype dtype);

// What a process mostly runs, for sizing libtorch's intra-op (OpenMP) pool.
// kTraining: every usable CPU (kernels::default_num_threads()). Debian's
// libtorch starts with one thread, which leaves training and float32
// matmuls on one core.
// kDecoding: one thread. CPU decoding runs its heavy work (linears,
// attention) on finmoe's own kernel pool; OpenMP workers woken by any large
// torch op (a logits conversion, a softmax over the vocabulary) then spin on
// the same cores for milliseconds and slow every kernel after it (measured
// on 2 cores, Qwen2-0.5B bf16: 41 ms/token with two torch threads, 31 with one).
// OMP_NUM_THREADS, when set, wins over both. Call before the first torch op;
// the `finmoe` command does, per subcommand.
enum class TorchWork { kTraining, kDecoding };
void set_torch_threads_for(TorchWork work);

}  // namespace finmoe

namespace finmoe {

// Named model shapes for `finmoe init` and benchmarks: "tiny", "small",
// "qwen2-0.5b", "qwen2.5-1.5b", "llama3.2-1b", "llama3-8b", "mistral-7b".
// `model_type` overrides the preset's architecture when non-empty;
// vocab_size > 0 overrides its vocabulary.
ModelConfig preset_config(const std::string& preset, const std::string& model_type = "",
                          int64_t vocab_size = 0);
const std::vector<std::string>& preset_names();

}  // namespace finmoe
