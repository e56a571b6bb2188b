#pragma once
// The module tree behind finmoe::Transformer, named like HF's checkpoints:
//   model.embed_tokens.weight                       [V, D]
//   model.layers.{i}.input_layernorm.weight         [D]
//   model.layers.{i}.self_attn.{q,k,v,o}_proj.*     see attention.h
//   model.layers.{i}.post_attention_layernorm.weight [D]
//   model.layers.{i}.mlp.{gate,up,down}_proj.*      see mlp.h (dense FFN layers)
//   model.layers.{i}.mlp.* | block_sparse_moe.*     see moe.h (MoE layers)
//   model.norm.weight                               [D]
//   lm_head.weight                                  [V, D] (absent when tied)
// An 8-bit checkpoint (docs/formats/int8.md) stores the 2-D weights of
// linears and the embedding as int8 with a `weight_scale` beside each.
#include <torch/torch.h>

#include "finmoe/model.h"
#include "model/attention.h"
#include "model/mlp.h"
#include "model/moe.h"

namespace finmoe {

class DecoderLayerImpl : public torch::nn::Module {
 public:
  DecoderLayerImpl(const ModelConfig& config, int64_t index, torch::TensorOptions options);
  // The FFN half: dense SwiGLU or MoE. x [..., D] -> [..., D]; MoE layers append
  // their routing to `routers` when given.
  torch::Tensor ffn(const torch::Tensor& x, std::vector<RouterOutput>* routers = nullptr);

  int64_t index;
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  Attention self_attn{nullptr};
  Mlp mlp{nullptr};  // dense layers
  Moe moe{nullptr};  // MoE layers (registered as "mlp", or "block_sparse_moe" for mixtral)
};
TORCH_MODULE(DecoderLayer);

class EmbeddingImpl : public torch::nn::Module {
 public:
  EmbeddingImpl(int64_t vocab, int64_t dim, torch::TensorOptions options);
  // Rows of `ids` (any shape) -> [..., D] in `dtype` (int8 rows dequantized).
  torch::Tensor lookup(const torch::Tensor& ids, torch::Dtype dtype) const;
  torch::Tensor weight;        // [V, D], float or int8
  torch::Tensor weight_scale;  // int8 weight: [V, 1] or [V, ceil(D/32)]; else undefined
};
TORCH_MODULE(Embedding);

class BackboneImpl : public torch::nn::Module {
 public:
  BackboneImpl(const ModelConfig& config, torch::TensorOptions options);
  Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RMSNorm norm{nullptr};
};
TORCH_MODULE(Backbone);

class TransformerImpl : public torch::nn::Module {
 public:
  TransformerImpl(const ModelConfig& config, torch::TensorOptions options);
  torch::Tensor forward(const torch::Tensor& tokens, const ForwardOptions& options);
  // forward() up to the head: the hidden states after the final norm (what
  // lm_head reads), tokens [B,T] -> [B,T,D] in the model's dtype. No autograd
  // guard: callers that only read it take a NoGradGuard.
  torch::Tensor final_hidden(const torch::Tensor& tokens, const ForwardOptions& options);
  torch::Tensor step(const StepBatch& batch, KVCache& cache);
  // step()'s layers from device inputs: ids/positions [N] -> logits [R,V] of
  // the token rows `rows` [R] (undefined: all N). Fills plan.cos/sin; the
  // rest of the plan is the caller's.
  torch::Tensor step_layers(const torch::Tensor& ids, const torch::Tensor& positions,
                            StepPlan& plan, KVCache& cache, const torch::Tensor& rows);
  const torch::Tensor& lm_head_weight() const;
  const torch::Tensor& lm_head_scale() const;  // undefined unless the head is int8
  // Lays out the int8 weights of an 8-bit config (every linear and the
  // embedding but q.ignore's); throws Error for an ignore entry naming no such module.
  void use_int8(const QuantizationConfig& q);

  ModelConfig config;
  torch::TensorOptions options;
  Backbone model{nullptr};
  Linear lm_head{nullptr};  // null when tie_word_embeddings
  std::vector<DecoderLayer> layer_list;

 private:
  torch::Tensor logits(const torch::Tensor& hidden);
  // The residual stream after the last layer (before the final norm), [B,T,D].
  torch::Tensor residual(const torch::Tensor& tokens, const ForwardOptions& options);
  // CUDA steps: whether the kernels take this model and cache (and
  // FINMOE_CUDA_ATTENTION allows them); the step through them, eagerly.
  bool cuda_kernels_apply(KVCache& cache) const;
  torch::Tensor step_paged(const StepBatch& batch, KVCache& cache);
  // A decode-only batch replayed through a CUDA graph (model/cuda/step_graphs.h;
  // CUDA builds only); undefined when the batch or the model does not qualify.
  torch::Tensor step_graph(const StepBatch& batch, KVCache& cache);
};

}  // namespace finmoe
