#pragma once
// Mixture-of-experts FFN: one module for every routed variant finmoe reads.
//
//   mixtral       block_sparse_moe.{gate, experts.{e}.w1|w2|w3}; softmax over the top-k logits
//   qwen2_moe     mlp.{gate, experts.{e}.*_proj, shared_expert.*, shared_expert_gate};
//                 softmax over all experts, top-k, optional renormalisation
//   finer_moe     qwen2_moe's names + mlp.concat_proj; FineRMoE's bi-level router
//                 (Algorithm 1) and experts writing hidden/G_O slices (concatenation)
//   finmoe_dense  mlp.{gate, experts.{e}.*_proj}; all experts, softmax gate (FinMoE Eq. 1-2)
//   deepseek_v2/3 mlp.{gate[.e_score_correction_bias], experts.{e}.*_proj, shared_experts.*};
//                 DeepSeekMoE routing (ModelConfig::Routing::DeepSeek), ungated shared experts
//
// Experts are separate modules named as in the HF checkpoints (not stacked
// [E, out, in]): loading stays a zero-copy name walk over the mmapped file, and
// ESFT can train a chosen subset by toggling requires_grad per expert.
#include <cstdint>
#include <map>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "finmoe/load_balance.h"
#include "finmoe/model.h"
#include "model/mlp.h"

namespace finmoe {

// Router logits [T, E] (float32) -> selected experts and their weights, per
// config.routing() and, for finer_moe, FineRMoE's Algorithm 1. `choice_bias`
// [E] (DeepSeek's noaux_tc e_score_correction_bias) shifts which experts are
// chosen, not their weights.
//
// finer_moe with router_mode separate (finmoe/finer_router.h): `concat_logits`
// [T, G_O*R_O] are the concatenation router's; each output slice takes its
// best candidate by them, and the weights of the experts of slice i are
// multiplied by p_i/stopgrad(p_i) (value 1; p_i the chosen candidate's softmax
// probability among the slice's R_O). `concat_out`, when given, receives that
// router's routing: logits [T, G_O*R_O], indices [T, G_O] (the chosen
// candidate i*R_O + j of each slice i), weights [T, G_O] (p_i).
RouterOutput route(const torch::Tensor& logits, const ModelConfig& config,
                   const torch::Tensor& choice_bias = {}, const torch::Tensor& concat_logits = {},
                   RouterOutput* concat_out = nullptr);

// FineRMoE Algorithm 1, lines 7-21: which experts a token may use. logits [T, E]
// -> bool [T, E]; T_I per group of G_I*R_I experts, and only the groups of the
// best-scoring candidate (of R_O) of each of the G_O output slices: the
// candidate whose group's logits sum highest, or, when `concat_logits`
// [T, G_O*R_O] are given (router_mode separate), the one they score highest.
torch::Tensor finer_moe_mask(const torch::Tensor& logits, const ModelConfig& config,
                             const torch::Tensor& concat_logits = {});

// The load-balancing loss of the concatenation routers (router_mode
// separate), their outputs as route() gives them (one per MoE layer): Eq. 11
// for each output slice's R_O-way choice (N = R_O, K = 1, s the softmax over
// the slice's R_O logits), averaged over the G_O slices and summed over
// layers; `form`, `rows` and `padding` as load_balancing_loss.
torch::Tensor concat_load_balancing_loss(const std::vector<RouterOutput>& concat, double alpha,
                                         LoadBalance form, int64_t rows,
                                         const torch::Tensor& padding);

// While in scope, the decoder layers run on this thread with a router sink
// (ForwardOptions::router_outputs) also append their concatenation routers'
// outputs (router_mode separate) to `out`, in layer order; nullptr collects
// nothing. Scopes nest.
class ConcatRouterSink {
 public:
  explicit ConcatRouterSink(std::vector<RouterOutput>* out);
  ~ConcatRouterSink();
  ConcatRouterSink(const ConcatRouterSink&) = delete;
  ConcatRouterSink& operator=(const ConcatRouterSink&) = delete;
  static std::vector<RouterOutput>* current();

 private:
  std::vector<RouterOutput>* previous_;
};

class MoeImpl : public torch::nn::Module {
 public:
  MoeImpl(const ModelConfig& config, torch::TensorOptions options);
  // x [..., D] -> [..., D]. `router`, when given, receives this call's routing;
  // `concat_router` the concatenation router's (router_mode separate; else
  // left as it is).
  torch::Tensor forward(const torch::Tensor& x, RouterOutput* router = nullptr,
                        RouterOutput* concat_router = nullptr);

  Linear gate{nullptr};                      // router, weight [E, D]
  Linear concat_gate{nullptr};               // finer_moe router_mode separate: the
                                             // concatenation layer's router, [G_O*R_O, D]
  torch::Tensor score_bias;                  // deepseek noaux_tc: gate.e_score_correction_bias [E]
  std::vector<Mlp> experts;                  // E experts: D -> moe_intermediate -> D/G_O
  Mlp shared_expert{nullptr};                // optional, D -> shared_intermediate -> D
                                             // ("shared_experts" in deepseek checkpoints)
  Linear shared_expert_gate{nullptr};        // optional, weight [1, D]; none for deepseek
  Linear concat_proj{nullptr};               // optional, weight [D, D]

  // Serving ESFT deltas (finmoe/serving_adapters.h): adapter id -> routed
  // expert -> that delta's copy of the expert, run for the rows of the
  // current AdapterRows that name the adapter; adapter id -> its shared
  // experts. Not registered modules.
  std::map<int32_t, std::map<int64_t, Mlp>> esft_experts;
  std::map<int32_t, Mlp> esft_shared;

 private:
  // Whether the routed experts can run grouped on the CPU kernels (no
  // autograd, CPU weights of x's dtype, no LoRA or bias on an expert).
  // Which module each (token, slot) pair of a routing runs: key e < E is
  // routed expert e; a key >= E an ESFT delta's copy, for the rows of the
  // current AdapterRows that name the delta.
  struct ExpertKeys {
    torch::Tensor keys;                                   // [T*k] int64, CPU
    std::vector<std::pair<MlpImpl*, int64_t>> modules;    // key -> (module, routed expert)
  };
  ExpertKeys expert_keys(const torch::Tensor& indices);
  bool grouped_applies(const torch::Tensor& x, const ExpertKeys& keys) const;
  bool rows_over_kernel_limit(const torch::Tensor& x) const;
  torch::Tensor experts_grouped(const torch::Tensor& x, const RouterOutput& r,
                                const ExpertKeys& keys);

  ModelConfig config_;
  int64_t slice_ = 0;        // values one expert writes: D / G_O
  int64_t per_slice_ = 0;    // experts per output slice: R_O * G_I * R_I
};
TORCH_MODULE(Moe);

}  // namespace finmoe
