#pragma once
// The MoE routers' load-balancing loss in the two forms training uses.
//
// Both are DeepSeek-V2's / FineRMoE App. B.1 Eq. 11 over a group of tokens:
//   L = alpha * sum_i f_i * P_i,  f_i = N/(K*L) * sum_t 1[token t uses expert i],
//   P_i = 1/L * sum_t s_{i,t},    s = softmax of the router logits over all N experts,
// summed over MoE layers. The forms differ in the group:
//   Sequence  one group per sequence (row) of the micro-batch, averaged over
//             the rows: FineRMoE's Eq. 11 ("L tokens in a sequence") and
//             DeepSeek-V2/V3's `seq_aux`;
//   Batch     one group of every token of the micro-batch: Switch, Mixtral and
//             Qwen2-MoE (HF's load_balancing_loss_func).
// Padding tokens belong to no group in either form. Differentiable through the
// logits (f is a count).
#include <cstdint>
#include <string>
#include <vector>

#include <torch/torch.h>

namespace finmoe {

struct RouterOutput;
struct ModelConfig;

enum class LoadBalance { Sequence, Batch };

// "sequence" | "batch"; throws Error naming `field` otherwise.
LoadBalance parse_load_balance(const std::string& s, const std::string& field);
const char* load_balance_name(LoadBalance lb);
// The form the architecture's reference trains with: Sequence for finer_moe
// and deepseek_v2/v3, Batch for mixtral and qwen2_moe.
LoadBalance default_load_balance(const ModelConfig& c);

// routers: one per MoE layer over the B*T tokens of a [B,T] micro-batch (row
// major). padding: [B,T] bool, true = a pad token; undefined = none. Zero when
// there are no routers or no real token.
torch::Tensor load_balancing_loss(const std::vector<RouterOutput>& routers, double alpha,
                                  LoadBalance form, int64_t rows, const torch::Tensor& padding);

}  // namespace finmoe
