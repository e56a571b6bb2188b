#include "model/attention.h"

#include <cmath>

#include "kernels/attention.h"

namespace finmoe {

torch::Tensor attention_core(const torch::Tensor& q, const torch::Tensor& k,
                             const torch::Tensor& v, const torch::Tensor& mask, bool causal,
                             double scale) {
  const int64_t groups = q.size(1) / k.size(1);
  auto kk = groups == 1 ? k : k.repeat_interleave(groups, 1);  // [B,H,Tk,d]
  auto vv = groups == 1 ? v : v.repeat_interleave(groups, 1);
  torch::Tensor m = mask;
  if (causal) {
    const int64_t tq = q.size(2), tk = k.size(2);
    auto tri = torch::ones({tq, tk}, q.options().dtype(torch::kBool)).tril(tk - tq);
    m = m.defined() ? m.logical_and(tri) : tri.view({1, 1, tq, tk});
  }
#if defined(TORCH_VERSION_MAJOR) && TORCH_VERSION_MAJOR >= 2
  return at::scaled_dot_product_attention(q, kk, vv, m.defined() ? c10::optional<at::Tensor>(m)
                                                                  : c10::nullopt,
                                          0.0, false, scale);
#else
  auto scores = torch::matmul(q, kk.transpose(-1, -2)) * scale;  // [B,H,Tq,Tk]
  if (m.defined()) scores = scores.masked_fill(m.logical_not(), -INFINITY);
  const auto acc = q.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  auto probs = torch::softmax(scores, -1, acc).to(q.scalar_type());
  return torch::matmul(probs, vv);  // [B,H,Tq,d]
#endif
}

namespace {

// MLA's softmax scale: (qk_nope + qk_rope)^-1/2, times yarn's mscale(factor,
// mscale_all_dim) squared when the rope scaling gives one (HF's yarn_apply_mscale).
double mla_scale(const ModelConfig& c) {
  double scale = 1.0 / std::sqrt(double(c.qk_head_dim()));
  const RopeScaling& r = c.rope_scaling;
  if (r.rope_type != "default" && r.mscale_all_dim != 0.0 && r.factor > 1.0) {
    const double m = 0.1 * r.mscale_all_dim * std::log(r.factor) + 1.0;
    scale *= m * m;
  }
  return scale;
}

}  // namespace

AttentionImpl::AttentionImpl(const ModelConfig& c, torch::TensorOptions options, int64_t window)
    : n_head_(c.num_attention_heads),
      n_kv_head_(c.is_mla() ? c.num_attention_heads : c.num_key_value_heads),
      head_dim_(c.head_dim),
      mla_(c.is_mla()),
      nope_dim_(c.qk_nope_head_dim),
      v_dim_(c.v_head_dim),
      kv_lora_(c.kv_lora_rank),
      window_(window),
      scale_(c.is_mla() ? mla_scale(c) : 1.0 / std::sqrt(double(c.head_dim))),
      rope_(c, c.head_dim, options.device()) {
  if (mla_) {
    const int64_t D = c.hidden_size, qk = c.qk_head_dim(), R = c.kv_lora_rank;
    const bool bias = c.attention_bias;
    if (c.q_lora_rank > 0) {
      q_a_proj = register_module("q_a_proj", Linear(D, c.q_lora_rank, bias, options));
      q_a_layernorm = register_module("q_a_layernorm", RMSNorm(c.q_lora_rank, 1e-6, options));
      q_b_proj = register_module("q_b_proj", Linear(c.q_lora_rank, n_head_ * qk, false, options));
    } else {
      q_proj = register_module("q_proj", Linear(D, n_head_ * qk, false, options));
    }
    kv_a_proj_with_mqa = register_module(
        "kv_a_proj_with_mqa", Linear(D, R + c.qk_rope_head_dim, bias, options));
    kv_a_layernorm = register_module("kv_a_layernorm", RMSNorm(R, 1e-6, options));
    kv_b_proj = register_module("kv_b_proj",
                                Linear(R, n_head_ * (nope_dim_ + v_dim_), false, options));
    o_proj = register_module("o_proj", Linear(n_head_ * v_dim_, D, bias, options));
    return;
  }
  const bool qkv_bias = c.attention_bias;
  q_proj = register_module("q_proj", Linear(c.hidden_size, c.q_size(), qkv_bias, options));
  k_proj = register_module("k_proj", Linear(c.hidden_size, c.kv_size(), qkv_bias, options));
  v_proj = register_module("v_proj", Linear(c.hidden_size, c.kv_size(), qkv_bias, options));
  // qwen2 has q/k/v bias but no o_proj bias; llama's attention_bias covers all four
  const bool o_bias = c.o_proj_bias();
  o_proj = register_module("o_proj", Linear(c.q_size(), c.hidden_size, o_bias, options));
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> AttentionImpl::mla_qkv(
    const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  auto heads = x.sizes().vec();  // [..., H, -1]
  heads.back() = n_head_;
  heads.push_back(-1);
  auto q = (q_proj ? q_proj(x) : q_b_proj(q_a_layernorm(q_a_proj(x)))).view(heads);
  auto q_rope = rope_.apply(q.narrow(-1, nope_dim_, head_dim_).contiguous(), cos, sin);
  auto latent_rope = kv_a_proj_with_mqa(x);  // [..., R + rope]
  auto k_rope = rope_.apply(latent_rope.narrow(-1, kv_lora_, head_dim_).unsqueeze(-2).contiguous(),
                            cos, sin);  // [..., 1, rope]: one key rope part for every head
  auto kv = kv_b_proj(kv_a_layernorm(latent_rope.narrow(-1, 0, kv_lora_))).view(heads);
  auto k_nope = kv.narrow(-1, 0, nope_dim_);
  auto k_shape = k_nope.sizes().vec();
  k_shape.back() = head_dim_;
  auto qh = torch::cat({q.narrow(-1, 0, nope_dim_), q_rope}, -1);
  auto kh = torch::cat({k_nope, k_rope.expand(k_shape)}, -1);
  return {qh, kh, kv.narrow(-1, nope_dim_, v_dim_)};
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& cos,
                                     const torch::Tensor& sin, const torch::Tensor& mask) {
  const int64_t B = x.size(0), T = x.size(1);
  if (mla_) {
    auto [q, k, v] = mla_qkv(x, cos, sin);  // [B,T,H,*]
    auto out = attention_core(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask,
                              /*causal=*/!mask.defined(), scale_);  // [B,H,T,dv]
    return o_proj(out.transpose(1, 2).reshape({B, T, n_head_ * v_dim_}));
  }
  auto q = q_proj(x).view({B, T, n_head_, head_dim_});     // [B,T,H,d]
  auto k = k_proj(x).view({B, T, n_kv_head_, head_dim_});  // [B,T,Hkv,d]
  auto v = v_proj(x).view({B, T, n_kv_head_, head_dim_});
  q = rope_.apply(q, cos, sin).transpose(1, 2);  // [B,H,T,d]
  k = rope_.apply(k, cos, sin).transpose(1, 2);  // [B,Hkv,T,d]
  v = v.transpose(1, 2);
  auto out = attention_core(q, k, v, mask, /*causal=*/!mask.defined(), scale_);  // [B,H,T,d]
  return o_proj(out.transpose(1, 2).reshape({B, T, n_head_ * head_dim_}));
}

bool AttentionImpl::kernels_apply(const torch::Tensor& x, const StepPlan& plan,
                                  const std::vector<torch::Tensor>& cache) const {
  const auto long_cpu = [](const torch::Tensor& t) {
    return t.device().is_cpu() && t.scalar_type() == torch::kInt64 && t.is_contiguous();
  };
  if (mla_ || !q_proj->kernel_input(x)) return false;  // float weights of the activations' dtype, or int8
  if (rope_.rotary_dim() > head_dim_ || !long_cpu(plan.write_slots)) return false;
  for (const auto* t : {&plan.cos, &plan.sin})
    if (t->scalar_type() != torch::kFloat32 || !t->is_contiguous() || t->dim() != 2 ||
        t->size(1) != rope_.rotary_dim())
      return false;
  for (const auto& c : cache)
    if (!kernel_path(c) || !c.is_contiguous()) return false;
  for (const auto& s : plan.seqs)
    if (!long_cpu(s.read_slots)) return false;
  return true;
}

torch::Tensor AttentionImpl::step_kernels(const torch::Tensor& x, const StepPlan& plan,
                                          std::vector<torch::Tensor>& cache) {
  const int64_t N = x.size(0);
  const kernels::ElemType t = elem_type(x);
  auto qkv = linear_group(x, {q_proj.get(), k_proj.get(), v_proj.get()});
  auto q = qkv[0].contiguous();  // [N, H*d]
  auto k = qkv[1].contiguous();  // [N, Hkv*d]
  auto v = qkv[2].contiguous();
  const int64_t rot = rope_.rotary_dim();
  kernels::rope(t, q.data_ptr(), N, n_head_, head_dim_, rot, plan.cos.data_ptr<float>(),
                plan.sin.data_ptr<float>(), rope_.interleaved());
  kernels::rope(t, k.data_ptr(), N, n_kv_head_, head_dim_, rot, plan.cos.data_ptr<float>(),
                plan.sin.data_ptr<float>(), rope_.interleaved());
  const kernels::ElemType ct = elem_type(cache[0]);
  const int64_t* write = plan.write_slots.data_ptr<int64_t>();
  kernels::scatter_rows(t, k.data_ptr(), N, n_kv_head_ * head_dim_, ct, cache[0].data_ptr(), write);
  kernels::scatter_rows(t, v.data_ptr(), N, n_kv_head_ * head_dim_, ct, cache[1].data_ptr(), write);

  std::vector<kernels::AttentionSeq> seqs;
  seqs.reserve(plan.seqs.size());
  for (const auto& s : plan.seqs)
    seqs.push_back({s.q_start, s.q_len, s.read_slots.size(0), s.read_slots.data_ptr<int64_t>()});
  auto out = torch::empty({N, n_head_ * head_dim_}, x.options());  // [N, H*d]
  kernels::AttentionArgs args;
  args.q_t = t;
  args.q = q.data_ptr();
  args.n_head = n_head_;
  args.n_kv_head = n_kv_head_;
  args.head_dim = head_dim_;
  args.cache_t = ct;
  args.k_cache = cache[0].data_ptr();
  args.v_cache = cache[1].data_ptr();
  args.seqs = seqs.data();
  args.n_seqs = static_cast<int64_t>(seqs.size());
  args.scale = static_cast<float>(scale_);
  args.window = window_;
  args.out_t = t;
  args.out = out.data_ptr();
  kernels::paged_attention(args);
  return o_proj(out);
}

torch::Tensor AttentionImpl::step(const torch::Tensor& x, const StepPlan& plan,
                                  std::vector<torch::Tensor>& cache) {
#if FINMOE_HAVE_CUDA
  if (plan.paged.defined()) return step_cuda(x, plan, cache);
#endif
  if (kernels_apply(x, plan, cache)) return step_kernels(x, plan, cache);
  if (mla_) {
    auto [q, k, v] = mla_qkv(x, plan.cos, plan.sin);  // [N,H,*]
    return o_proj(step_torch(q, k, v, plan, cache));
  }
  const int64_t N = x.size(0);
  auto q = rope_.apply(q_proj(x).view({N, n_head_, head_dim_}), plan.cos, plan.sin);
  auto k = rope_.apply(k_proj(x).view({N, n_kv_head_, head_dim_}), plan.cos, plan.sin);
  auto v = v_proj(x).view({N, n_kv_head_, head_dim_});
  return o_proj(step_torch(q, k, v, plan, cache));
}

torch::Tensor AttentionImpl::step_torch(const torch::Tensor& q, const torch::Tensor& k,
                                        const torch::Tensor& v, const StepPlan& plan,
                                        std::vector<torch::Tensor>& cache) {
  const int64_t N = q.size(0), H = q.size(1), dv = v.size(2);
  auto k_flat = cache[0].view({-1, k.size(1), k.size(2)});  // [blocks*bs, Hkv, dk]
  auto v_flat = cache[1].view({-1, v.size(1), dv});
  k_flat.index_copy_(0, plan.write_slots, k.to(k_flat.scalar_type()));
  v_flat.index_copy_(0, plan.write_slots, v.to(v_flat.scalar_type()));

  auto out = torch::empty({N, H, dv}, q.options());
  for (const auto& s : plan.seqs) {
    auto qs = q.narrow(0, s.q_start, s.q_len).transpose(0, 1).unsqueeze(0);  // [1,H,q,d]
    auto ks = k_flat.index_select(0, s.read_slots).to(q.scalar_type());     // [ctx,Hkv,d]
    auto vs = v_flat.index_select(0, s.read_slots).to(q.scalar_type());
    const auto& mask = window_ > 0 && s.window_mask.defined() ? s.window_mask : s.mask;
    auto o = attention_core(qs, ks.transpose(0, 1).unsqueeze(0), vs.transpose(0, 1).unsqueeze(0),
                            mask, false, scale_);  // [1,H,q,d]
    out.narrow(0, s.q_start, s.q_len).copy_(o.squeeze(0).transpose(0, 1));
  }
  return out.view({N, H * dv});
}

}  // namespace finmoe
