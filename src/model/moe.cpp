#include "model/moe.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "finmoe/error.h"
#include "finmoe/finer_router.h"
#include "finmoe/load_balance.h"
#include "kernels/linear.h"
#include "kernels/ops.h"
#include "kernels/thread_pool.h"
#include "model/adapter_rows.h"

namespace finmoe {

torch::Tensor finer_moe_mask(const torch::Tensor& logits, const ModelConfig& c,
                             const torch::Tensor& concat_logits) {
  const int64_t T = logits.size(0);
  const int64_t group = c.G_I * c.R_I;  // experts per sum group
  const int64_t groups = c.G_O * c.R_O;
  auto scores = logits.view({T, groups, group});                          // [T, G_O*R_O, G_I*R_I]
  auto group_act = std::get<1>(scores.topk(c.T_I(), -1));                 // [T, G_O*R_O, T_I]
  auto sum_mask = torch::zeros_like(scores, torch::kBool).scatter_(-1, group_act, true);
  auto cc_score = concat_logits.defined() ? concat_logits.view({T, c.G_O, c.R_O})
                                          : scores.sum(-1).view({T, c.G_O, c.R_O});  // [T, G_O, R_O]
  auto cc_act = cc_score.argmax(-1, /*keepdim=*/true);                    // [T, G_O, 1]
  auto cc_mask = torch::zeros_like(cc_score, torch::kBool).scatter_(-1, cc_act, true);
  cc_mask = cc_mask.view({T, groups, 1}).expand({T, groups, group});      // [T, G_O*R_O, G_I*R_I]
  return sum_mask.logical_and(cc_mask).reshape({T, c.num_experts});       // [T, E]
}

// DeepSeekMoE: scores (softmax or sigmoid), the choice among the best
// topk_group of n_group groups, the chosen experts' scores as weights,
// renormalised and scaled as each version does (v2: renormalised or scaled;
// v3: renormalised when asked, then scaled).
void route_deepseek(RouterOutput& r, const ModelConfig& c, const torch::Tensor& choice_bias) {
  const int64_t T = r.logits.size(0), E = c.num_experts, k = c.num_experts_per_tok;
  auto scores = c.scoring_func == "sigmoid" ? torch::sigmoid(r.logits) : torch::softmax(r.logits, -1);
  auto choice = choice_bias.defined() ? scores + choice_bias.to(scores.scalar_type()) : scores;
  const bool noaux = c.topk_method == "noaux_tc";
  if (c.topk_method != "greedy" && c.n_group > 1) {
    const int64_t per_group = E / c.n_group;
    auto grouped = choice.view({T, c.n_group, per_group});
    auto group_scores = noaux ? std::get<0>(grouped.topk(2, -1)).sum(-1)  // best two
                              : std::get<0>(grouped.max(-1));              // best one
    auto best = std::get<1>(group_scores.topk(c.topk_group, -1));         // [T, topk_group]
    auto keep = torch::zeros({T, c.n_group}, scores.options().dtype(torch::kBool))
                    .scatter_(1, best, true)
                    .unsqueeze(-1)
                    .expand({T, c.n_group, per_group})
                    .reshape({T, E});
    // HF: v3 masks with -inf, v2 with 0 (scores are positive there)
    choice = choice.masked_fill(keep.logical_not(),
                                noaux ? -std::numeric_limits<double>::infinity() : 0.0);
  }
  r.indices = std::get<1>(choice.topk(k, -1));  // [T, k]
  r.weights = scores.gather(1, r.indices);
  const auto normalised = [&] { return r.weights / (r.weights.sum(-1, true) + 1e-20); };
  if (c.model_type == "deepseek_v2") {
    r.weights = k > 1 && c.norm_topk_prob ? normalised() : r.weights * c.routed_scaling_factor;
  } else {
    if (c.norm_topk_prob) r.weights = normalised();
    r.weights = r.weights * c.routed_scaling_factor;
  }
}

namespace {

// top-k softmax routing (SoftmaxTopK, and TopKSoftmax with FineRMoE's mask)
// of float32 logits on the CPU without autograd, one token at a time in
// plain loops: the choices and weights of the tensor ops below without their
// dozen small libtorch calls per layer, which a decode step pays per MoE
// layer. Ties go to the lower expert index. False (nothing set) where the
// tensor ops must run: autograd, another device or dtype, other routings, or
// a k above the experts FineRMoE's mask allows.
bool route_on_host(RouterOutput& r, const ModelConfig& c) {
  const auto routing = c.routing();
  if (routing != ModelConfig::Routing::SoftmaxTopK && routing != ModelConfig::Routing::TopKSoftmax) return false;
  if (!r.logits.device().is_cpu() || r.logits.scalar_type() != torch::kFloat32 ||
      (r.logits.requires_grad() && torch::GradMode::is_enabled()) || r.logits.dim() != 2)
    return false;
  const int64_t T = r.logits.size(0), E = c.num_experts, k = c.num_experts_per_tok;
  const bool finer = routing == ModelConfig::Routing::TopKSoftmax;
  const int64_t group = c.G_I * c.R_I, T_I = c.T_I();
  const bool masked = finer && (c.G_O * c.R_O > 1 || T_I < group);
  if (r.logits.size(1) != E || k < 1 || k > E || (masked && k > c.G_O * T_I)) return false;
  const auto logits = r.logits.contiguous();
  auto indices = torch::empty({T, k}, torch::kInt64);
  auto weights = torch::empty({T, k}, torch::kFloat32);
  const float* lp = logits.data_ptr<float>();
  int64_t* ip = indices.data_ptr<int64_t>();
  float* wp = weights.data_ptr<float>();
  const auto higher = [](const float* l) {
    return [l](int64_t a, int64_t b) { return l[a] > l[b] || (l[a] == l[b] && a < b); };
  };
  // tokens over the pool: independent rows, hundreds of them in a prefill
  kernels::ThreadPool::global().parallel_for(T, 64, [&](int64_t t0, int64_t t1) {
    std::vector<int64_t> cand, in_group;
    for (int64_t t = t0; t < t1; ++t) {
      const float* l = lp + t * E;
      cand.clear();
      if (masked) {
        // per output slice, the sum group of largest logit sum, and its T_I best experts
        for (int64_t go = 0; go < c.G_O; ++go) {
          int64_t best = -1;
          float best_sum = 0;
          for (int64_t ro = 0; ro < c.R_O; ++ro) {
            const float* g = l + (go * c.R_O + ro) * group;
            float sum = 0;
            for (int64_t j = 0; j < group; ++j) sum += g[j];
            if (best < 0 || sum > best_sum) best = go * c.R_O + ro, best_sum = sum;
          }
          in_group.resize(size_t(group));
          for (int64_t j = 0; j < group; ++j) in_group[size_t(j)] = best * group + j;
          std::partial_sort(in_group.begin(), in_group.begin() + T_I, in_group.end(), higher(l));
          cand.insert(cand.end(), in_group.begin(), in_group.begin() + T_I);
        }
      } else {
        cand.resize(size_t(E));
        for (int64_t e = 0; e < E; ++e) cand[size_t(e)] = e;
      }
      std::partial_sort(cand.begin(), cand.begin() + k, cand.end(), higher(l));
      // softmax over the k chosen logits (FineRMoE) or over all E (then the k largest)
      const float top = l[cand[0]];
      double denom = 0;
      if (finer) {
        for (int64_t i = 0; i < k; ++i) denom += std::exp(double(l[cand[size_t(i)]] - top));
      } else {
        for (int64_t e = 0; e < E; ++e) denom += std::exp(double(l[e] - top));
      }
      double kept = 0;
      for (int64_t i = 0; i < k; ++i) {
        ip[t * k + i] = cand[size_t(i)];
        const double w = std::exp(double(l[cand[size_t(i)]] - top)) / denom;
        wp[t * k + i] = float(w);
        kept += w;
      }
      if (!finer && c.norm_topk_prob)
        for (int64_t i = 0; i < k; ++i) wp[t * k + i] = float(double(wp[t * k + i]) / kept);
    }
  });
  r.indices = indices.to(r.logits.device());
  r.weights = weights;
  return true;
}

}  // namespace

RouterOutput route(const torch::Tensor& logits_in, const ModelConfig& c,
                   const torch::Tensor& choice_bias, const torch::Tensor& concat_in,
                   RouterOutput* concat_out) {
  RouterOutput r;
  r.logits = at_least_float32(logits_in);  // [T, E]
  if (!concat_in.defined() && route_on_host(r, c)) return r;  // separate routers: the tensor ops
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
    case ModelConfig::Routing::DeepSeek:
      route_deepseek(r, c, choice_bias);
      break;
    case ModelConfig::Routing::TopKSoftmax: {
      torch::Tensor concat;  // [T, G_O*R_O] float32: router_mode separate
      if (concat_in.defined()) {
        concat = at_least_float32(concat_in);
        if (concat.dim() != 2 || concat.size(0) != T || concat.size(1) != c.G_O * c.R_O)
          throw Error("route: concatenation router logits must be [" + std::to_string(T) + ", " +
                      std::to_string(c.G_O * c.R_O) + "]");
      }
      auto masked = r.logits;
      if (c.G_O * c.R_O > 1 || c.T_I() < c.G_I * c.R_I)
        masked = r.logits.masked_fill(finer_moe_mask(r.logits, c, concat).logical_not(),
                                      -std::numeric_limits<float>::infinity());
      torch::Tensor top;
      std::tie(top, r.indices) = masked.topk(k, -1);  // [T, k]
      // one softmax over the k selected logits across all groups (no per-group renormalisation)
      r.weights = torch::softmax(top, -1);
      if (concat.defined()) {
        auto probs = torch::softmax(concat.view({T, c.G_O, c.R_O}), -1);        // [T, G_O, R_O]
        auto [p, j] = probs.max(-1);                                            // [T, G_O]
        auto straight = p / p.detach();                                         // [T, G_O], value 1
        auto slice = r.indices.div(c.R_O * c.G_I * c.R_I, "floor");             // [T, k]
        r.weights = r.weights * straight.gather(1, slice);
        if (concat_out) {
          concat_out->logits = concat;
          concat_out->indices = j + torch::arange(c.G_O, j.options()).mul(c.R_O);  // [T, G_O]
          concat_out->weights = p;
        }
      }
      break;
    }
  }
  return r;
}

LoadBalance parse_load_balance(const std::string& s, const std::string& field) {
  if (s == "sequence") return LoadBalance::Sequence;
  if (s == "batch") return LoadBalance::Batch;
  throw Error(field + ": '" + s + "' is not a load-balancing form (sequence | batch)");
}

const char* load_balance_name(LoadBalance lb) {
  return lb == LoadBalance::Sequence ? "sequence" : "batch";
}

LoadBalance default_load_balance(const ModelConfig& c) {
  return c.model_type == "finer_moe" || c.is_deepseek() ? LoadBalance::Sequence : LoadBalance::Batch;
}

torch::Tensor load_balancing_loss(const std::vector<RouterOutput>& routers, double alpha,
                                  LoadBalance form, int64_t rows, const torch::Tensor& padding) {
  torch::Tensor total;
  for (const auto& r : routers) {
    const int64_t T = r.logits.size(0), N = r.logits.size(1), K = r.indices.size(1);
    if (rows < 1 || T % rows != 0)
      throw Error("load_balancing_loss: " + std::to_string(T) + " routed tokens are not " +
                  std::to_string(rows) + " equal rows");
    if (padding.defined() && padding.numel() != T)
      throw Error("load_balancing_loss: padding has " + std::to_string(padding.numel()) +
                  " entries for " + std::to_string(T) + " routed tokens");
    const auto opts = r.logits.options();
    const auto iopts = opts.dtype(torch::kInt64);
    const int64_t G = form == LoadBalance::Sequence ? rows : 1;
    auto real = padding.defined() ? padding.reshape({T}).logical_not().to(opts)
                                  : torch::ones({T}, opts);  // [T] 1 = a token of its sequence
    auto group = form == LoadBalance::Sequence ? torch::arange(T, iopts).div(T / rows, "floor")
                                               : torch::zeros({T}, iopts);  // [T]
    auto slot = (group.unsqueeze(1) * N + r.indices).flatten();              // [T*K] into [G*N]
    auto counts = torch::zeros({G * N}, opts)
                      .index_add_(0, slot, real.unsqueeze(1).expand({T, K}).flatten())
                      .view({G, N});                                          // [G,N]
    auto probs = torch::softmax(r.logits, -1) * real.unsqueeze(1);            // [T,N]
    auto prob_sum = torch::zeros({G, N}, opts).index_add_(0, group, probs);   // [G,N]
    auto n = torch::zeros({G}, opts).index_add_(0, group, real);              // [G] real tokens
    auto has = n.gt(0).to(opts);                                              // [G]
    auto inv = (1.0 / n.clamp_min(1)).unsqueeze(1);                           // [G,1]
    auto f = counts * inv * (double(N) / double(K));                          // [G,N]
    auto P = prob_sum * inv;                                                  // [G,N]
    auto per_group = (f * P).sum(1) * has;                                    // [G]
    auto l = per_group.sum() / has.sum().clamp_min(1) * alpha;
    total = total.defined() ? total + l : l;
  }
  return total.defined() ? total : torch::zeros({});
}

torch::Tensor load_balancing_loss(const std::vector<RouterOutput>& routers, double alpha) {
  return load_balancing_loss(routers, alpha, LoadBalance::Batch, 1, {});
}

torch::Tensor concat_load_balancing_loss(const std::vector<RouterOutput>& concat, double alpha,
                                         LoadBalance form, int64_t rows,
                                         const torch::Tensor& padding) {
  torch::Tensor total;
  for (const auto& r : concat) {
    const int64_t G_O = r.indices.size(1), R_O = r.logits.size(1) / std::max<int64_t>(G_O, 1);
    if (G_O < 1 || r.logits.size(1) != G_O * R_O)
      throw Error("concat_load_balancing_loss: logits [T, " + std::to_string(r.logits.size(1)) +
                  "] are not G_O=" + std::to_string(G_O) + " slices of candidates");
    std::vector<RouterOutput> slices;  // each slice's R_O-way choice
    for (int64_t i = 0; i < G_O; ++i) {
      RouterOutput s;
      s.logits = r.logits.narrow(1, i * R_O, R_O);                   // [T, R_O]
      s.indices = r.indices.narrow(1, i, 1) - i * R_O;               // [T, 1] in [0, R_O)
      s.weights = r.weights.narrow(1, i, 1);
      slices.push_back(std::move(s));
    }
    auto l = load_balancing_loss(slices, alpha, form, rows, padding) / double(G_O);
    total = total.defined() ? total + l : l;
  }
  return total.defined() ? total : torch::zeros({});
}

namespace {
thread_local std::vector<RouterOutput>* g_concat_sink = nullptr;
}  // namespace

ConcatRouterSink::ConcatRouterSink(std::vector<RouterOutput>* out) : previous_(g_concat_sink) {
  g_concat_sink = out;
}
ConcatRouterSink::~ConcatRouterSink() { g_concat_sink = previous_; }
std::vector<RouterOutput>* ConcatRouterSink::current() { return g_concat_sink; }

MoeImpl::MoeImpl(const ModelConfig& c, torch::TensorOptions options) : config_(c) {
  const int64_t D = c.hidden_size;
  slice_ = D / c.G_O;
  per_slice_ = c.R_O * c.G_I * c.R_I;
  const bool mixtral = c.model_type == "mixtral";
  gate = register_module("gate", Linear(D, c.num_experts, false, options));
  if (separate_routers(c))
    concat_gate = register_module("concat_gate", Linear(D, c.G_O * c.R_O, false, options));
  if (c.is_deepseek() && c.topk_method == "noaux_tc")
    score_bias = gate->register_parameter("e_score_correction_bias",
                                          torch::zeros({c.num_experts}, options), false);
  auto list = register_module("experts", torch::nn::ModuleList());
  for (int64_t e = 0; e < c.num_experts; ++e) {
    experts.push_back(Mlp(D, c.moe_intermediate_size, false, options, slice_, mixtral));
    list->push_back(experts.back());
  }
  if (c.shared_expert_intermediate_size > 0) {
    shared_expert =
        register_module(c.is_deepseek() ? "shared_experts" : "shared_expert",
                        Mlp(D, c.shared_expert_intermediate_size, false, options));
    if (!c.is_deepseek())
      shared_expert_gate = register_module("shared_expert_gate", Linear(D, 1, false, options));
  }
  if (c.moe_concat_proj) concat_proj = register_module("concat_proj", Linear(D, D, false, options));
}

bool MoeImpl::grouped_applies(const torch::Tensor& x, const ExpertKeys& keys) const {
  if (!kernel_path(x) || rows_over_kernel_limit(x)) return false;
  const bool adapter_rows = current_adapter_rows() != nullptr;
  // only the keys some row chose (a decode step's few of FineRMoE's 128 experts)
  std::vector<char> used(keys.modules.size(), 0);
  const int64_t* key = keys.keys.data_ptr<int64_t>();
  for (int64_t i = 0; i < keys.keys.numel(); ++i) used[size_t(key[i])] = 1;
  for (size_t e = 0; e < used.size(); ++e) {
    if (!used[e]) continue;
    const MlpImpl* m = keys.modules[e].first;
    for (const LinearImpl* l : {m->gate_proj.get(), m->up_proj.get(), m->down_proj.get()})
      if (l->has_lora() || (adapter_rows && l->has_served_lora()) || l->bias.defined() ||
          l->weight.scalar_type() != x.scalar_type() || !l->weight.is_contiguous() ||
          !l->weight.device().is_cpu())
        return false;
  }
  return true;
}

bool MoeImpl::rows_over_kernel_limit(const torch::Tensor& x) const {
  return x.numel() / std::max<int64_t>(x.size(-1), 1) > kernel_max_rows();
}

MoeImpl::ExpertKeys MoeImpl::expert_keys(const torch::Tensor& indices) {
  const int64_t E = config_.num_experts;
  ExpertKeys out;
  for (int64_t e = 0; e < E; ++e) out.modules.emplace_back(experts[size_t(e)].get(), e);
  auto flat = indices.flatten().to(torch::kCPU, torch::kInt64).contiguous();  // [T*k]
  const int64_t* idx = flat.data_ptr<int64_t>();
  for (int64_t i = 0; i < flat.numel(); ++i)
    if (idx[i] < 0 || idx[i] >= E)
      throw Error("moe: router chose expert " + std::to_string(idx[i]) + " of " + std::to_string(E));
  const AdapterRows* rows = current_adapter_rows();
  if (rows == nullptr || esft_experts.empty()) {
    out.keys = flat;
    return out;
  }
  const int64_t k = indices.size(1);
  if (indices.size(0) != rows->rows())
    throw Error("serving adapters: a MoE layer of " + std::to_string(indices.size(0)) +
                " rows ran under " + std::to_string(rows->rows()) + " adapter rows");
  std::map<std::pair<int32_t, int64_t>, int64_t> key_of;  // (adapter, expert) -> key
  for (auto& [adapter, by_expert] : esft_experts)
    for (auto& [e, m] : by_expert) {
      key_of[{adapter, e}] = static_cast<int64_t>(out.modules.size());
      out.modules.emplace_back(m.get(), e);
    }
  out.keys = flat.clone();
  int64_t* key = out.keys.data_ptr<int64_t>();
  const auto& ids = rows->ids();
  for (int64_t i = 0; i < flat.numel(); ++i) {
    const int32_t adapter = ids[size_t(i / k)];
    if (adapter == 0) continue;
    auto it = key_of.find({adapter, key[i]});
    if (it != key_of.end()) key[i] = it->second;
  }
  return out;
}

// The routed experts on the kernel path: (token, slot) pairs sorted by key
// (a stable counting sort; keys are experts, or an ESFT delta's copy of one),
// then one kernels::linear_batch for every key's gate and up projections,
// one SwiGLU over all rows, one linear_batch for the down projections, and a
// float32 weighted scatter-add into each token's row (or its expert's G_O
// slice). Plain loops over one scratch buffer: at decode sizes each libtorch
// op around the kernels (gather, casts, zeros) costs as much as an expert's
// product. x [T, D] contiguous -> [T, D].
torch::Tensor MoeImpl::experts_grouped(const torch::Tensor& x, const RouterOutput& r,
                                       const ExpertKeys& keys) {
  const int64_t T = x.size(0), D = x.size(1);
  const int64_t n_keys = static_cast<int64_t>(keys.modules.size());
  const int64_t I = config_.moe_intermediate_size;
  auto weights = r.weights.to(torch::kFloat32).contiguous();  // [T, k]
  const int64_t k = r.indices.size(1), pairs = T * k;
  const int64_t* key = keys.keys.data_ptr<int64_t>();
  std::vector<int64_t> start(size_t(n_keys) + 1, 0);  // key owns sorted rows [start[key], start[key+1])
  for (int64_t i = 0; i < pairs; ++i) ++start[size_t(key[i]) + 1];
  for (int64_t e = 0; e < n_keys; ++e) start[size_t(e) + 1] += start[size_t(e)];
  std::vector<int64_t> pair_of(static_cast<size_t>(pairs));  // sorted row -> (token * k + slot)
  {
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < pairs; ++i) pair_of[size_t(fill[size_t(key[i])]++)] = i;
  }
  const auto t = elem_type(x);
  const int64_t es = kernels::elem_size(t);
  // one scratch buffer, 64-byte aligned parts: xs [P, D], gate and up [P, I],
  // ys [P, D/G_O] in x's type
  const auto aligned = [](int64_t bytes) { return (bytes + 63) / 64 * 64; };
  const int64_t xs_at = 0, gate_at = xs_at + aligned(pairs * D * es);
  const int64_t up_at = gate_at + aligned(pairs * I * es), ys_at = up_at + aligned(pairs * I * es);
  const int64_t end = ys_at + aligned(pairs * slice_ * es);
  auto scratch = torch::empty({end}, x.options().dtype(torch::kUInt8));
  char* base = static_cast<char*>(scratch.data_ptr());
  char *xs = base + xs_at, *gate = base + gate_at, *up = base + up_at, *ys = base + ys_at;
  const char* xp = static_cast<const char*>(x.data_ptr());
  kernels::ThreadPool::global().parallel_for(pairs, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t row = r0; row < r1; ++row)  // xs row = x row of its token
      std::memcpy(xs + row * D * es, xp + (pair_of[size_t(row)] / k) * D * es, size_t(D * es));
  });

  std::vector<kernels::LinearProduct> gate_up, down;
  for (int64_t e = 0; e < n_keys; ++e) {
    const int64_t n = start[size_t(e) + 1] - start[size_t(e)], s = start[size_t(e)];
    if (n == 0) continue;
    const MlpImpl& m = *keys.modules[size_t(e)].first;
    gate_up.push_back({xs + s * D * es, n, m.gate_proj->weight.data_ptr(), I, nullptr, gate + s * I * es});
    gate_up.push_back({xs + s * D * es, n, m.up_proj->weight.data_ptr(), I, nullptr, up + s * I * es});
    down.push_back({gate + s * I * es, n, m.down_proj->weight.data_ptr(), slice_, nullptr,
                    ys + s * slice_ * es});
  }
  kernels::linear_batch(t, D, t, gate_up, t);
  kernels::swiglu(t, gate, up, pairs * I, gate);  // gate := h
  kernels::linear_batch(t, I, t, down, t);

  // out[token] = the sum of weight * ys[row] over its k rows, each into its
  // expert's slice, in float32 in ascending key order, rounded once; tokens
  // split over the pool (each writes only its own row)
  std::vector<int64_t> row_of(static_cast<size_t>(pairs)), col0(static_cast<size_t>(n_keys));
  for (int64_t row = 0; row < pairs; ++row) row_of[size_t(pair_of[size_t(row)])] = row;
  for (int64_t e = 0; e < n_keys; ++e)
    col0[size_t(e)] = slice_ == D ? 0 : (keys.modules[size_t(e)].second / per_slice_) * slice_;
  const float* wp = weights.data_ptr<float>();
  auto out = torch::empty({T, D}, x.options());
  char* op = static_cast<char*>(out.data_ptr());
  kernels::ThreadPool::global().parallel_for(T, 16, [&](int64_t t0, int64_t t1) {
    std::vector<float> acc(static_cast<size_t>(D)), y(static_cast<size_t>(slice_));
    std::vector<int64_t> slots(static_cast<size_t>(k));
    for (int64_t tok = t0; tok < t1; ++tok) {
      for (int64_t s = 0; s < k; ++s) slots[size_t(s)] = tok * k + s;
      std::stable_sort(slots.begin(), slots.end(),
                       [&](int64_t a, int64_t b) { return key[a] < key[b]; });
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (const int64_t pair : slots) {
        kernels::convert(t, ys + row_of[size_t(pair)] * slice_ * es, kernels::ElemType::kF32,
                         y.data(), slice_);
        const float w = wp[pair];
        float* o = acc.data() + col0[size_t(key[pair])];
        for (int64_t j = 0; j < slice_; ++j) o[j] += w * y[size_t(j)];
      }
      kernels::convert(kernels::ElemType::kF32, acc.data(), t, op + tok * D * es, D);
    }
  });
  return out;
}

namespace {

// module(x[rows]) with `rows` as the current adapter rows of its layers
// (their serving LoRA terms); rows int64 [n] into x's rows.
torch::Tensor run_on_rows(MlpImpl& module, const torch::Tensor& x, const torch::Tensor& rows) {
  const AdapterRows* current = current_adapter_rows();
  const bool lora = module.gate_proj->has_served_lora() || module.up_proj->has_served_lora() ||
                    module.down_proj->has_served_lora();
  std::optional<AdapterRows> sub;  // only layers with serving LoRA read the rows
  if (current && lora) sub.emplace(current->select(rows));
  AdapterRowsScope scope(sub ? &*sub : nullptr);
  return module.forward(x.index_select(0, rows));
}

}  // namespace

torch::Tensor MoeImpl::forward(const torch::Tensor& x_in, RouterOutput* router_out,
                               RouterOutput* concat_out) {
  const auto shape = x_in.sizes().vec();
  const int64_t D = shape.back();
  auto x = x_in.reshape({-1, D});  // [T, D]
  const int64_t T = x.size(0);
  RouterOutput r = concat_gate ? route(gate(x), config_, score_bias, concat_gate(x), concat_out)
                               : route(gate(x), config_, score_bias);
  torch::Tensor out;  // [T, D]
  const auto dtype = x.scalar_type();
  const AdapterRows* adapter_rows = current_adapter_rows();

  // Dense routing off the kernel path needs no keys (and no copy of its [T, E] indices).
  std::optional<ExpertKeys> keys;
  if (kernel_path(x) || config_.routing() != ModelConfig::Routing::Dense)
    keys = expert_keys(r.indices);
  if (keys && grouped_applies(x, *keys)) {
    out = experts_grouped(x.contiguous(), r, *keys);
  } else if (config_.routing() == ModelConfig::Routing::Dense) {
    out = torch::zeros({T, D}, x.options());
    auto w = r.weights.to(dtype);  // [T, E]
    for (int64_t e = 0; e < config_.num_experts; ++e) {
      auto y = experts[size_t(e)](x);  // [T, D/G_O]
      if (adapter_rows)
        for (auto& [adapter, by_expert] : esft_experts) {
          auto it = by_expert.find(e);
          auto rows = adapter_rows->rows_of(adapter);
          if (it == by_expert.end() || rows.numel() == 0) continue;
          y.index_copy_(0, rows, run_on_rows(*it->second, x, rows));
        }
      out = out + y * w.select(1, e).unsqueeze(1);
    }
  } else {
    // Permute (token, slot) pairs by key, run each expert (or an ESFT
    // delta's copy) on its tokens, scatter back with index_add (FineRMoE Fig. 3).
    out = torch::zeros({T, D}, x.options());
    const int64_t k = r.indices.size(1);
    const int64_t n_keys = static_cast<int64_t>(keys->modules.size());
    auto flat_key = keys->keys.to(r.indices.device());                           // [T*k]
    auto order = std::get<1>(flat_key.sort(/*stable=*/true, 0, false));         // [T*k]
    auto token_of = torch::arange(T, r.indices.options()).repeat_interleave(k);  // [T*k]
    auto sorted_tokens = token_of.index_select(0, order);                        // [T*k]
    auto sorted_weights = r.weights.flatten().index_select(0, order).to(dtype).unsqueeze(1);
    auto counts = torch::bincount(keys->keys, {}, n_keys);
    const int64_t* cnt = counts.data_ptr<int64_t>();
    int64_t start = 0;
    for (int64_t e = 0; e < n_keys; ++e) {
      const int64_t n = cnt[e];
      if (n == 0) continue;
      auto rows = sorted_tokens.narrow(0, start, n);
      auto y = run_on_rows(*keys->modules[size_t(e)].first, x, rows) *
               sorted_weights.narrow(0, start, n);
      if (slice_ == D) {
        out.index_add_(0, rows, y);  // [n, D]
      } else {
        const int64_t g_o = keys->modules[size_t(e)].second / per_slice_;  // slice it writes
        out.narrow(1, g_o * slice_, slice_).index_add_(0, rows, y);  // [n, D/G_O]
      }
      start += n;
    }
  }
  if (concat_proj) out = concat_proj(out);
  if (shared_expert) {
    auto s = shared_expert(x);  // [T, D]
    if (adapter_rows)
      for (auto& [adapter, m] : esft_shared) {
        auto rows = adapter_rows->rows_of(adapter);
        if (rows.numel() > 0) s.index_copy_(0, rows, run_on_rows(*m, x, rows));
      }
    if (!shared_expert_gate) {
      out = out + s;
    } else if (auto g = shared_expert_gate(x);  // [T, 1]
               kernel_path(out) && out.is_contiguous() && s.is_contiguous() && g.is_contiguous() &&
               s.scalar_type() == out.scalar_type() && g.scalar_type() == out.scalar_type()) {
      // out is this call's own tensor: updated in place, one pass
      kernels::gated_add(elem_type(out), out.data_ptr(), s.data_ptr(), g.data_ptr(), T, D);
    } else {
      out = out + s * torch::sigmoid(g);
    }
  }
  if (router_out) *router_out = std::move(r);
  return out.view(shape);
}

}  // namespace finmoe
