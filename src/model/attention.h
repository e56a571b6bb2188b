#pragma once
// Grouped-query attention (MHA when kv_heads == heads) with optional q/k/v
// bias, RoPE, and two entries: the training forward over [B,T] and the
// paged-KV inference step over a ragged batch. DeepSeek's multi-head latent
// attention (config.is_mla()) is the same module with other projections:
//   q_proj | q_a_proj, q_a_layernorm, q_b_proj     q [H, qk_nope + qk_rope]
//   kv_a_proj_with_mqa -> [latent kv_lora_rank | k_rope], k_rope shared by the heads
//   kv_a_layernorm, kv_b_proj: latent -> [H, qk_nope + v_head_dim]
//   o_proj                                          [D, H * v_head_dim]
// Its paged cache holds one latent row per token, [kv_a_layernorm(latent) |
// roped k_rope] (kv_lora_rank + qk_rope_head_dim values, shared by the heads):
// a step attends in that space with kv_b_proj absorbed (W_UK folded into the
// queries, W_UV applied to the attention output), or, for a long chunk of
// queries where that costs less, expands the rows to per-head K and V
// (FINMOE_MLA_ATTENTION=absorbed|expanded forces one way for every sequence).
#include <torch/torch.h>

#include "finmoe/model.h"
#include "model/linear.h"
#include "model/paged_batch.h"
#include "model/rope.h"

namespace finmoe {

// What every layer of one step() shares: computed once per step.
struct StepPlan {
  torch::Tensor cos, sin;      // [N, rotary_dim]
  // CPU kernels and libtorch's per-sequence attention:
  torch::Tensor write_slots;   // [N] int64: flat cache slot of each new token
  struct Seq {
    int64_t q_start = 0, q_len = 0;
    torch::Tensor read_slots;  // [context_len] int64: flat slots of positions 0..context_len-1
    torch::Tensor mask;        // [1,1,q_len,context_len] bool, undefined when all true
    torch::Tensor window_mask; // mask for sliding-window layers; undefined when = mask
  };
  std::vector<Seq> seqs;
  // The CUDA kernels (defined only on that path, which leaves the above empty)
  PagedBatch paged;
};

// softmax(q·kᵀ·scale + mask)·v with GQA head sharing.
// q [B,H,Tq,d], k/v [B,Hkv,Tk,d]; mask bool [*,*,Tq,Tk] (true = attend) or
// undefined; causal: apply the Tq x Tk lower-triangular mask aligned at the end.
// Uses libtorch's fused scaled_dot_product_attention where it exists (>= 2.0).
torch::Tensor attention_core(const torch::Tensor& q, const torch::Tensor& k,
                             const torch::Tensor& v, const torch::Tensor& mask, bool causal,
                             double scale);

class AttentionImpl : public torch::nn::Module {
 public:
  // window: this layer's sliding window (ModelConfig::attention_window), 0 = full.
  AttentionImpl(const ModelConfig& config, torch::TensorOptions options, int64_t window = 0);

  // x [B,T,D]; cos/sin [B,T,d]; mask [B,1,T,T] bool or undefined (plain
  // causal); a sliding layer is given its windowed mask by the caller
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const torch::Tensor& mask);
  // x [N,D]; cache: {K, V} each [blocks, block_size, Hkv, d]
  torch::Tensor step(const torch::Tensor& x, const StepPlan& plan,
                     std::vector<torch::Tensor>& cache);

  CacheSpec cache_spec() const {
    if (mla_) return {{kv_lora_ + head_dim_}};
    return {{n_kv_head_, head_dim_}, {n_kv_head_, head_dim_}};
  }
  const Rope& rope() const { return rope_; }
  int64_t window() const { return window_; }

  Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  // MLA only (k_proj and v_proj stay null; q_proj too when q_lora_rank > 0)
  Linear q_a_proj{nullptr}, q_b_proj{nullptr}, kv_a_proj_with_mqa{nullptr}, kv_b_proj{nullptr};
  RMSNorm q_a_layernorm{nullptr}, kv_a_layernorm{nullptr};

 private:
  // MLA: per-head q, k [..., H, qk_nope + qk_rope] (rope applied) and v
  // [..., H, v_head_dim] of x [..., D]; cos/sin [..., qk_rope].
  std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> mla_qkv(const torch::Tensor& x,
                                                                  const torch::Tensor& cos,
                                                                  const torch::Tensor& sin);
  // step()'s libtorch path from q [N,H,dk], k [N,Hkv,dk], v [N,Hkv,dv]: writes
  // k/v to the cache, attends per sequence, returns [N, H*dv] before o_proj.
  torch::Tensor step_torch(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                           const StepPlan& plan, std::vector<torch::Tensor>& cache);
  // step() through the fused CPU kernels: RoPE and the cache write in place,
  // attention read straight from the paged cache.
  torch::Tensor step_kernels(const torch::Tensor& x, const StepPlan& plan,
                             std::vector<torch::Tensor>& cache);
  bool kernels_apply(const torch::Tensor& x, const StepPlan& plan,
                     const std::vector<torch::Tensor>& cache) const;
  // step() of an MLA layer over the latent cache {rows [blocks, block_size, R + rope]}.
  torch::Tensor step_mla(const torch::Tensor& x, const StepPlan& plan,
                         std::vector<torch::Tensor>& cache);
  // kv_b_proj split per head for absorption, float32, LoRA folded in:
  // uk [H, qk_nope, R] (q_nope -> latent), uv [H, R, v_head_dim] (latent -> v).
  // Rebuilt when the weight changes (its data or version).
  std::pair<torch::Tensor, torch::Tensor> absorbed_kv_b();
  // The q_nope -> latent half of kv_b_proj for the CPU kernels, in the
  // weight's dtype: [H, R, qk_nope] (per head a [out, in] weight); the
  // latent -> v half is read in place from kv_b_proj's rows. Rebuilt like
  // absorbed_kv_b(); only for a plain (not int8, no LoRA) weight.
  const torch::Tensor& absorbed_uk_rows();
  // step() through the CUDA kernels (model/cuda/attention_step.cpp; CUDA builds only).
  torch::Tensor step_cuda(const torch::Tensor& x, const StepPlan& plan,
                          std::vector<torch::Tensor>& cache);

  int64_t n_head_, n_kv_head_, head_dim_;  // MLA: head_dim_ = qk_rope_head_dim
  bool mla_ = false;
  int64_t nope_dim_ = 0, v_dim_ = 0, kv_lora_ = 0;
  int64_t window_;
  double scale_;
  struct Absorbed {
    const void* data = nullptr;
    int64_t version = -1;
    const void* lora = nullptr;
    torch::Tensor uk, uv;
  } absorbed_, absorbed_rows_;
  Rope rope_;
};
TORCH_MODULE(Attention);

}  // namespace finmoe
