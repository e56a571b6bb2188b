#include "model/attention.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "kernels/attention.h"
#include "kernels/linear.h"
#include "kernels/thread_pool.h"

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
  if (mla_) return step_mla(x, plan, cache);
  if (kernels_apply(x, plan, cache)) return step_kernels(x, plan, cache);
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

std::pair<torch::Tensor, torch::Tensor> AttentionImpl::absorbed_kv_b() {
  const LinearImpl& b = *kv_b_proj;
  const void* lora = b.has_lora() ? b.lora_A.data_ptr() : nullptr;
  if (absorbed_.data != b.weight.data_ptr() || absorbed_.version != b.weight._version() ||
      absorbed_.lora != lora) {
    torch::NoGradGuard no_grad;
    auto w = b.quantized() ? dequantize(b.weight, b.weight_scale, torch::kFloat32)
                           : b.weight.to(torch::kFloat32);  // [H*(nope+v), R]
    if (b.has_lora())
      w = w + b.lora_scaling * torch::matmul(b.lora_B.to(torch::kFloat32),
                                             b.lora_A.to(torch::kFloat32));
    w = w.view({n_head_, nope_dim_ + v_dim_, kv_lora_});
    absorbed_.uk = w.narrow(1, 0, nope_dim_).contiguous();                    // [H, nope, R]
    absorbed_.uv = w.narrow(1, nope_dim_, v_dim_).transpose(1, 2).contiguous();  // [H, R, v]
    absorbed_.data = b.weight.data_ptr();
    absorbed_.version = b.weight._version();
    absorbed_.lora = lora;
  }
  return {absorbed_.uk, absorbed_.uv};
}

const torch::Tensor& AttentionImpl::absorbed_uk_rows() {
  const LinearImpl& b = *kv_b_proj;
  if (absorbed_rows_.data != b.weight.data_ptr() || absorbed_rows_.version != b.weight._version()) {
    torch::NoGradGuard no_grad;
    absorbed_rows_.uk = b.weight.view({n_head_, nope_dim_ + v_dim_, kv_lora_})
                            .narrow(1, 0, nope_dim_)
                            .transpose(1, 2)
                            .contiguous();  // [H, R, nope]
    absorbed_rows_.data = b.weight.data_ptr();
    absorbed_rows_.version = b.weight._version();
  }
  return absorbed_rows_.uk;
}

namespace {

// y[h] = x[h] · W[h]^T for every head h in one pass of the kernel pool: x
// [H, M, K] contiguous, W[h] the [N, K] rows at w + h * w_head_stride
// elements, y [H, M, N] contiguous.
void per_head_linear(const torch::Tensor& x, const torch::Tensor& w, int64_t w_head_stride, int64_t N,
                     torch::Tensor& y) {
  const int64_t H = x.size(0), M = x.size(1), K = x.size(2);
  const auto* xp = static_cast<const char*>(x.data_ptr());
  const auto* wp = static_cast<const char*>(w.data_ptr());
  auto* yp = static_cast<char*>(y.data_ptr());
  std::vector<kernels::LinearProduct> products(H);
  for (int64_t h = 0; h < H; ++h)
    products[h] = {xp + h * M * K * x.element_size(), M, wp + h * w_head_stride * w.element_size(), N, nullptr,
                   yp + h * M * N * y.element_size()};
  kernels::linear_batch(elem_type(x), K, elem_type(w), products, elem_type(y));
}

}  // namespace

torch::Tensor AttentionImpl::step_mla(const torch::Tensor& x, const StepPlan& plan,
                                      std::vector<torch::Tensor>& cache) {
  const int64_t N = x.size(0), H = n_head_, R = kv_lora_, rope = head_dim_;
  const int64_t row_dim = R + rope;
  // absorbed attention runs in float32 (float64 for a float64 model)
  const auto f32 = x.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
  auto q = (q_proj ? q_proj(x) : q_b_proj(q_a_layernorm(q_a_proj(x)))).view({N, H, -1});
  auto q_nope = q.narrow(-1, 0, nope_dim_);                                            // [N,H,nope]
  auto q_pe = rope_.apply(q.narrow(-1, nope_dim_, rope).contiguous(), plan.cos, plan.sin);  // [N,H,rope]
  auto latent_rope = kv_a_proj_with_mqa(x);  // [N, R + rope]
  auto k_pe = rope_.apply(latent_rope.narrow(-1, R, rope).unsqueeze(1).contiguous(), plan.cos,
                          plan.sin)
                  .squeeze(1);  // [N, rope]
  auto rows = torch::cat({kv_a_layernorm(latent_rope.narrow(-1, 0, R)), k_pe}, -1);  // [N, R+rope]
  auto flat = cache.at(0).view({-1, row_dim});
  flat.index_copy_(0, plan.write_slots, rows.to(flat.scalar_type()));

  // Per sequence: absorbed attention costs q_len·H·(2R + rope) per key and
  // H·R·(nope + v) per query; expanding the rows costs H·R·(nope + v) per key
  // (kv_b_proj) and q_len·H·(nope + rope + v) per key. A decode step or a
  // short chunk is absorbed, a long prompt chunk expanded.
  // FINMOE_MLA_ATTENTION=absorbed|expanded forces one way (A/B, tests).
  const char* force = std::getenv("FINMOE_MLA_ATTENTION");
  const std::string mode = force ? force : "";
  std::vector<const StepPlan::Seq*> absorbed, expanded;
  for (const auto& sq : plan.seqs) {
    if (mode == "absorbed" || mode == "expanded") {
      (mode == "absorbed" ? absorbed : expanded).push_back(&sq);
      continue;
    }
    const int64_t ctx = sq.read_slots.size(0);
    const double absorb = double(sq.q_len) * (ctx * (2 * R + rope) + R * (nope_dim_ + v_dim_));
    const double expand = double(ctx) * (R * (nope_dim_ + v_dim_) +
                                         sq.q_len * (nope_dim_ + rope + v_dim_));
    (absorb <= expand ? absorbed : expanded).push_back(&sq);
  }
  auto out = torch::empty({N, H, v_dim_}, x.options());

  if (!absorbed.empty()) {
    // the absorbed sequences' query rows, in batch order
    torch::Tensor idx;
    int64_t n_abs = 0;
    if (absorbed.size() != plan.seqs.size()) {
      std::vector<int64_t> r;
      for (const auto* sq : absorbed)
        for (int64_t i = 0; i < sq->q_len; ++i) r.push_back(sq->q_start + i);
      idx = torch::tensor(r, torch::dtype(torch::kInt64));
      n_abs = static_cast<int64_t>(r.size());
    } else {
      n_abs = N;
    }
    const auto pick = [&](const torch::Tensor& t) {
      return idx.defined() ? t.index_select(0, idx.to(t.device())) : t;
    };
    const bool kernels = f32 == torch::kFloat32 && kernel_path(flat) && flat.is_contiguous() &&
                         plan.write_slots.device().is_cpu() &&
                         std::all_of(absorbed.begin(), absorbed.end(), [](const auto* sq) {
                           return sq->read_slots.scalar_type() == torch::kInt64 &&
                                  sq->read_slots.is_contiguous() && sq->read_slots.device().is_cpu();
                         });
    // With the CPU kernels and a plain kv_b_proj, both absorptions are
    // per-head products over its bf16 (or float32) rows on the kernel pool;
    // otherwise float32 batched matmuls over the unpacked halves.
    const LinearImpl& kv_b = *kv_b_proj;
    const bool fused = kernels && kernel_path(x) && kernel_path(kv_b.weight) && kv_b.weight.is_contiguous() &&
                       !kv_b.quantized() && !kv_b.has_lora();
    torch::Tensor q_lat;  // [n,H,R]
    if (fused) {
      auto qn = pick(q_nope).transpose(0, 1).contiguous();  // [H,n,nope]
      auto lat = torch::empty({H, n_abs, R}, x.options().dtype(f32));
      per_head_linear(qn, absorbed_uk_rows(), R * nope_dim_, R, lat);
      q_lat = lat.transpose(0, 1);
    } else {
      auto [uk, uv] = absorbed_kv_b();
      q_lat = torch::bmm(pick(q_nope).to(f32).transpose(0, 1), uk.to(x.device(), f32)).transpose(0, 1);
    }
    auto q_full = torch::cat({q_lat, pick(q_pe).to(f32)}, -1).contiguous();  // [n,H,R+rope]
    auto o_lat = torch::empty({n_abs, H, R}, q_full.options());
    if (kernels) {
      std::vector<kernels::AttentionSeq> seqs;
      int64_t at = 0;
      for (const auto* sq : absorbed) {
        seqs.push_back({at, sq->q_len, sq->read_slots.size(0), sq->read_slots.data_ptr<int64_t>()});
        at += sq->q_len;
      }
      // heads in as many groups as the pool has threads: each group widens
      // every cached row it reads, so more groups than threads only repeat that
      const int64_t threads = kernels::ThreadPool::global().num_threads();
      int64_t groups = 1;
      for (int64_t g = std::min<int64_t>(threads, H); g > 1; --g)
        if (H % g == 0) {
          groups = g;
          break;
        }
      kernels::AttentionArgs args;
      args.q_t = kernels::ElemType::kF32;
      args.q = q_full.data_ptr();
      args.n_head = H;
      args.n_kv_head = groups;
      args.head_dim = row_dim;
      args.v_dim = R;
      args.cache_row = row_dim;
      args.kv_head_stride = 0;
      args.cache_t = elem_type(flat);
      args.k_cache = flat.data_ptr();
      args.v_cache = flat.data_ptr();
      args.seqs = seqs.data();
      args.n_seqs = static_cast<int64_t>(seqs.size());
      args.scale = static_cast<float>(scale_);
      args.window = window_;
      args.out_t = kernels::ElemType::kF32;
      args.out = o_lat.data_ptr();
      kernels::paged_attention(args);
    } else {
      int64_t at = 0;
      for (const auto* sq : absorbed) {
        auto keys = flat.index_select(0, sq->read_slots).to(f32).view({1, 1, -1, row_dim});
        const auto& mask = window_ > 0 && sq->window_mask.defined() ? sq->window_mask : sq->mask;
        auto qs = q_full.narrow(0, at, sq->q_len).transpose(0, 1).unsqueeze(0);  // [1,H,q,R+rope]
        auto o = attention_core(qs, keys.expand({1, H, -1, row_dim}),
                                keys.narrow(-1, 0, R).expand({1, H, -1, R}), mask, false, scale_);
        o_lat.narrow(0, at, sq->q_len).copy_(o.squeeze(0).transpose(0, 1));
        at += sq->q_len;
      }
    }
    torch::Tensor o;  // [n,H,v]
    if (fused) {
      // latent -> v: head h's rows h*(nope+v)+nope .. +v of kv_b_proj, [v, R]
      auto per_head = torch::empty({H, n_abs, v_dim_}, x.options());
      per_head_linear(o_lat.transpose(0, 1).contiguous(), kv_b.weight.narrow(0, nope_dim_, v_dim_),
                      (nope_dim_ + v_dim_) * R, v_dim_, per_head);
      o = per_head.transpose(0, 1);
    } else {
      auto uv = absorbed_kv_b().second.to(x.device(), f32);
      o = torch::bmm(o_lat.transpose(0, 1), uv).transpose(0, 1).to(x.scalar_type());
    }
    if (idx.defined())
      out.index_copy_(0, idx.to(out.device()), o);
    else
      out.copy_(o);
  }

  for (const auto* sq : expanded) {
    auto keys = flat.index_select(0, sq->read_slots).to(x.scalar_type());  // [ctx, R+rope]
    const int64_t ctx = keys.size(0);
    auto kv = kv_b_proj(keys.narrow(-1, 0, R)).view({ctx, H, nope_dim_ + v_dim_});
    auto k = torch::cat({kv.narrow(-1, 0, nope_dim_),
                         keys.narrow(-1, R, rope).unsqueeze(1).expand({ctx, H, rope})},
                        -1);  // [ctx,H,nope+rope]
    auto qs = torch::cat({q_nope.narrow(0, sq->q_start, sq->q_len),
                          q_pe.narrow(0, sq->q_start, sq->q_len)},
                         -1);  // [q,H,nope+rope]
    const auto& mask = window_ > 0 && sq->window_mask.defined() ? sq->window_mask : sq->mask;
    auto o = attention_core(qs.transpose(0, 1).unsqueeze(0), k.transpose(0, 1).unsqueeze(0),
                            kv.narrow(-1, nope_dim_, v_dim_).transpose(0, 1).unsqueeze(0), mask,
                            false, scale_);  // [1,H,q,v]
    out.narrow(0, sq->q_start, sq->q_len).copy_(o.squeeze(0).transpose(0, 1));
  }
  return o_proj(out.view({N, H * v_dim_}));
}

}  // namespace finmoe
