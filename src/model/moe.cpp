#include "model/moe.h"

#include "finmoe/error.h"

namespace finmoe {

torch::Tensor finer_moe_mask(const torch::Tensor& logits, const ModelConfig& c) {
  const int64_t T = logits.size(0);
  const int64_t group = c.G_I * c.R_I;  // experts per sum group
  const int64_t groups = c.G_O * c.R_O;
  auto scores = logits.view({T, groups, group});                          // [T, G_O*R_O, G_I*R_I]
  auto group_act = std::get<1>(scores.topk(c.T_I(), -1));                 // [T, G_O*R_O, T_I]
  auto sum_mask = torch::zeros_like(scores, torch::kBool).scatter_(-1, group_act, true);
  auto cc_score = scores.sum(-1).view({T, c.G_O, c.R_O});                 // [T, G_O, R_O]
  auto cc_act = cc_score.argmax(-1, /*keepdim=*/true);                    // [T, G_O, 1]
  auto cc_mask = torch::zeros_like(cc_score, torch::kBool).scatter_(-1, cc_act, true);
  cc_mask = cc_mask.view({T, groups, 1}).expand({T, groups, group});      // [T, G_O*R_O, G_I*R_I]
  return sum_mask.logical_and(cc_mask).reshape({T, c.num_experts});       // [T, E]
}

RouterOutput route(const torch::Tensor& logits_in, const ModelConfig& c) {
  RouterOutput r;
  r.logits = at_least_float32(logits_in);  // [T, E]
  const int64_t T = r.logits.size(0), E = c.num_experts, k = c.num_experts_per_tok;
  switch (c.routing()) {
    case ModelConfig::Routing::Dense:
      r.weights = torch::softmax(r.logits, -1);  // [T, E]
      r.indices = torch::arange(E, r.logits.options().dtype(torch::kInt64)).expand({T, E});
      break;
    case ModelConfig::Routing::SoftmaxTopK: {
      auto probs = torch::softmax(r.logits, -1);  // [T, E]
      std::tie(r.weights, r.indices) = probs.topk(k, -1);
      if (c.norm_topk_prob) r.weights = r.weights / r.weights.sum(-1, /*keepdim=*/true);
      break;
    }
    case ModelConfig::Routing::TopKSoftmax: {
      auto masked = r.logits;
      if (c.G_O * c.R_O > 1 || c.T_I() < c.G_I * c.R_I)
        masked = r.logits.masked_fill(finer_moe_mask(r.logits, c).logical_not(),
                                      -std::numeric_limits<float>::infinity());
      torch::Tensor top;
      std::tie(top, r.indices) = masked.topk(k, -1);  // [T, k]
      // one softmax over the k selected logits across all groups (no per-group renormalisation)
      r.weights = torch::softmax(top, -1);
      break;
    }
  }
  return r;
}

torch::Tensor load_balancing_loss(const std::vector<RouterOutput>& routers, double alpha) {
  torch::Tensor total;
  for (const auto& r : routers) {
    const int64_t T = r.logits.size(0), N = r.logits.size(1), K = r.indices.size(1);
    auto counts = torch::zeros({N}, r.logits.options())
                      .index_add_(0, r.indices.flatten(),
                                  torch::ones({T * K}, r.logits.options()));  // [N]
    auto f = counts * (double(N) / double(K * T));                           // [N]
    auto P = torch::softmax(r.logits, -1).mean(0);                            // [N]
    auto l = (f * P).sum() * alpha;
    total = total.defined() ? total + l : l;
  }
  return total.defined() ? total : torch::zeros({});
}

MoeImpl::MoeImpl(const ModelConfig& c, torch::TensorOptions options) : config_(c) {
  const int64_t D = c.hidden_size;
  slice_ = D / c.G_O;
  per_slice_ = c.R_O * c.G_I * c.R_I;
  const bool mixtral = c.model_type == "mixtral";
  gate = register_module("gate", Linear(D, c.num_experts, false, options));
  auto list = register_module("experts", torch::nn::ModuleList());
  for (int64_t e = 0; e < c.num_experts; ++e) {
    experts.push_back(Mlp(D, c.moe_intermediate_size, false, options, slice_, mixtral));
    list->push_back(experts.back());
  }
  if (c.shared_expert_intermediate_size > 0) {
    shared_expert = register_module(
        "shared_expert", Mlp(D, c.shared_expert_intermediate_size, false, options));
    shared_expert_gate = register_module("shared_expert_gate", Linear(D, 1, false, options));
  }
  if (c.moe_concat_proj) concat_proj = register_module("concat_proj", Linear(D, D, false, options));
}

torch::Tensor MoeImpl::forward(const torch::Tensor& x_in, RouterOutput* router_out) {
  const auto shape = x_in.sizes().vec();
  const int64_t D = shape.back();
  auto x = x_in.reshape({-1, D});  // [T, D]
  const int64_t T = x.size(0);
  RouterOutput r = route(gate(x), config_);
  auto out = torch::zeros({T, D}, x.options());  // [T, D]
  const auto dtype = x.scalar_type();

  if (config_.routing() == ModelConfig::Routing::Dense) {
    auto w = r.weights.to(dtype);  // [T, E]
    for (int64_t e = 0; e < config_.num_experts; ++e)
      out = out + experts[size_t(e)](x) * w.select(1, e).unsqueeze(1);
  } else {
    // Permute (token, slot) pairs by expert, run each expert on its tokens,
    // scatter back with index_add (FineRMoE Fig. 3).
    const int64_t k = r.indices.size(1);
    auto flat_expert = r.indices.flatten();  // [T*k]
    auto order = std::get<1>(flat_expert.sort(/*stable=*/true, 0, false));  // [T*k]
    auto token_of = torch::arange(T, r.indices.options()).repeat_interleave(k);  // [T*k]
    auto sorted_tokens = token_of.index_select(0, order);                     // [T*k]
    auto sorted_weights = r.weights.flatten().index_select(0, order).to(dtype).unsqueeze(1);
    auto xs = x.index_select(0, sorted_tokens);                               // [T*k, D]
    auto counts = torch::bincount(flat_expert, {}, config_.num_experts).to(torch::kCPU);
    const int64_t* cnt = counts.data_ptr<int64_t>();
    int64_t start = 0;
    for (int64_t e = 0; e < config_.num_experts; ++e) {
      const int64_t n = cnt[e];
      if (n == 0) continue;
      auto y = experts[size_t(e)](xs.narrow(0, start, n)) * sorted_weights.narrow(0, start, n);
      auto rows = sorted_tokens.narrow(0, start, n);
      if (slice_ == D) {
        out.index_add_(0, rows, y);  // [n, D]
      } else {
        const int64_t g_o = e / per_slice_;  // output slice this expert writes (concatenation)
        out.narrow(1, g_o * slice_, slice_).index_add_(0, rows, y);  // [n, D/G_O]
      }
      start += n;
    }
  }
  if (concat_proj) out = concat_proj(out);
  if (shared_expert) out = out + shared_expert(x) * torch::sigmoid(shared_expert_gate(x));
  if (router_out) *router_out = std::move(r);
  return out.view(shape);
}

}  // namespace finmoe
