// GQA/MHA -> MLA (finmoe/mla_convert.h, docs/mla.md): calibration
// statistics, the partial-RoPE rotation (RoRoPE / FreqFold), the joint
// low-rank K/V, the layer-adaptive FreqFold search (YouZhi Eq. 3), the
// probe table (Fig. 4) and the deepseek_v3 checkpoint.
//
// Notation (per layer): D hidden, H query heads, n_kv key/value heads, d
// head_dim, g = H/n_kv, r rope dims, c = d/r, KV = n_kv*d, nope = KV - r,
// n_x = nope + KV (the rows of [K_nope; V]).
#include "finmoe/mla_convert.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <limits>
#include <optional>
#include <sstream>

#include <torch/torch.h>

#include "convert/svg.h"
#include "core/file_util.h"
#include "core/progress.h"
#include "finmoe/error.h"
#include "finmoe/model.h"
#include "model/transformer.h"

namespace fs = std::filesystem;

namespace finmoe {

namespace {

using torch::indexing::Slice;

// beta over the largest norm the other latent dims can reach: the latent's
// RMSNorm then divides by a constant up to a relative 1/(2*1024^2) = 5e-7.
constexpr double kAnchorMargin = 1024.0;
constexpr double kLatentNormEps = 1e-6;  // HF's kv_a_layernorm / q_a_layernorm eps
constexpr int64_t kBatch = 4;            // sequences per forward

const auto kF64 = torch::TensorOptions().dtype(torch::kFloat64);

std::string str(int64_t v) { return std::to_string(v); }

struct Dims {
  int64_t D, H, n_kv, d, r, c, g, KV, nope, n_x;
  Dims(const ModelConfig& s, int64_t rope_dim)
      : D(s.hidden_size),
        H(s.num_attention_heads),
        n_kv(s.num_key_value_heads),
        d(s.head_dim),
        r(rope_dim),
        c(s.head_dim / rope_dim),
        g(s.num_attention_heads / s.num_key_value_heads),
        KV(s.num_key_value_heads * s.head_dim),
        nope(KV - rope_dim),
        n_x(2 * KV - rope_dim) {}
};

// Calibration statistics of one layer, over the bias-free projections
// k = W_k x, v = W_v x of the attention input x (after input_layernorm).
struct LayerStats {
  torch::Tensor S;  // [2KV, 2KV] float64: sum of [k;v][k;v]^T
  torch::Tensor s;  // [2KV] float64: sum of [k;v]
  int64_t n = 0;
};

// One source attention, float64.
struct SourceAttn {
  torch::Tensor wq, wk, wv, wo;  // [H*d, D], [KV, D], [KV, D], [D, H*d]
  torch::Tensor bq, bk, bv, bo;  // [H*d], [KV], [KV], [D] or undefined
  double input_norm_max = 1.0;   // max |input_layernorm.weight|
};

// An MLA attention in HF's layout (docs/formats/deepseek.md), float64.
struct MlaWeights {
  torch::Tensor q_proj;  // [H*(d+r), D] (no query bias)
  torch::Tensor q_a, q_a_bias, q_a_norm,
      q_b;  // query bias: [H*d+1, D], [H*d+1], [H*d+1], [H*(d+r), H*d+1]
  torch::Tensor kv_a, kv_a_bias, kv_a_norm;  // [R+r, D], [R+r], [R]
  torch::Tensor kv_b;                        // [H*2d, R]
  torch::Tensor o, o_bias;                   // [D, H*d], [D]
};

torch::Tensor f64(const torch::Tensor& t) {
  return t.defined() ? t.detach().to(torch::kCPU).to(torch::kFloat64) : t;
}

// The anchor value for a latent whose non-anchor part is P x + b, x an
// RMS-normalised input times a weight of largest magnitude w_max
// (|x| <= sqrt(D) * w_max).
double anchor_beta(const torch::Tensor& P, const torch::Tensor& b, double w_max) {
  double bound = torch::linalg_svdvals(P).max().item<double>() *  // spectral norm
                 std::sqrt(double(P.size(1))) * w_max;
  if (b.defined()) bound += b.norm().item<double>();
  return kAnchorMargin * std::max(bound, 1e-3);
}

// RMSNorm weight that undoes the normalisation of an anchored latent of
// `dims` values (the anchor, last, gets 0).
torch::Tensor anchored_norm_weight(int64_t dims, double beta) {
  auto w = torch::full({dims}, std::sqrt(beta * beta / double(dims) + kLatentNormEps), kF64);
  w[dims - 1] = 0.0;
  return w;
}

// Stage 1. The orthogonal M [KV, KV] with M·k = [rope part (r, pairs (2i, 2i+1)) ;
// NoPE part]. Per group of `ff` adjacent frequencies, the n_kv*ff rotary pairs
// of the group (feature f = kv_head*ff + offset) are PCA'd over both pair
// components (Ckk: the keys' second moments, bias included); component m of
// group gi keeps RoPE as pair gi*(ff/c) + m when m < ff/c.
torch::Tensor rope_rotation(const Dims& z, const torch::Tensor& Ckk, int64_t ff,
                            bool src_interleaved) {
  const int64_t half = z.d / 2, groups = half / ff, F = z.n_kv * ff, keep = ff / z.c;
  auto M = torch::zeros({z.KV, z.KV}, kF64);
  auto dim_of = [&](int64_t j, int64_t p, int64_t which) {  // component `which` of pair p, head j
    return j * z.d + (src_interleaved ? 2 * p + which : p + which * half);
  };
  int64_t nope_row = z.r;
  for (int64_t gi = 0; gi < groups; ++gi) {
    std::vector<int64_t> ia(static_cast<size_t>(F)), ib(static_cast<size_t>(F));
    for (int64_t j = 0; j < z.n_kv; ++j)
      for (int64_t a = 0; a < ff; ++a) {
        ia[size_t(j * ff + a)] = dim_of(j, gi * ff + a, 0);
        ib[size_t(j * ff + a)] = dim_of(j, gi * ff + a, 1);
      }
    auto A = torch::tensor(ia, torch::kInt64), B = torch::tensor(ib, torch::kInt64);
    auto C = Ckk.index({A}).index({Slice(), A}) + Ckk.index({B}).index({Slice(), B});  // [F, F]
    auto U = std::get<1>(torch::linalg::eigh(C, "L")).flip({1});  // [F, F], descending
    for (int64_t m = 0; m < F; ++m) {
      int64_t row_a, row_b;
      if (m < keep) {
        row_a = 2 * (gi * keep + m);
        row_b = row_a + 1;
      } else {
        row_a = nope_row++;
        row_b = nope_row++;
      }
      auto u = U.index({Slice(), m});
      M.index_put_({row_a, A}, u);
      M.index_put_({row_b, B}, u);
    }
  }
  return M;
}

// Both stages for one layer. kv_rank = latent dims including the anchor;
// full: stage 1 only (the latent is all of [K_nope; V], no PCA needed).
MlaWeights build_layer(const Dims& z, const SourceAttn& w, const LayerStats& st, int64_t ff,
                       int64_t kv_rank, double balance_kv, bool src_interleaved, bool full) {
  const int64_t KV = z.KV, d = z.d, r = z.r;
  auto Ckk = st.S.narrow(0, 0, KV).narrow(1, 0, KV);  // [KV, KV]
  if (w.bk.defined()) {
    auto sk = st.s.narrow(0, 0, KV);
    Ckk = Ckk + torch::outer(sk, w.bk) + torch::outer(w.bk, sk) +
          double(st.n) * torch::outer(w.bk, w.bk);
  }
  auto M = rope_rotation(z, Ckk, ff, src_interleaved);
  auto Mr = M.narrow(0, 0, r), Mn = M.narrow(0, r, z.nope);  // [r, KV], [nope, KV]

  // [K_nope; V] = T [k; v], K_nope divided by alpha (BKV)
  auto T = torch::zeros({z.n_x, 2 * KV}, kF64);
  T.index_put_({Slice(0, z.nope), Slice(0, KV)}, Mn);
  T.index_put_({Slice(z.nope, z.n_x), Slice(KV, 2 * KV)}, torch::eye(KV, kF64));
  double alpha = 1.0;
  if (balance_kv > 0) {
    auto diag = T.matmul(st.S).matmul(T.t()).diagonal().clamp_min(0).sqrt();  // column norms
    const double k_norm = diag.narrow(0, 0, z.nope).mean().item<double>();
    const double v_norm = diag.narrow(0, z.nope, KV).mean().item<double>();
    if (k_norm > 0 && v_norm > 0) alpha = k_norm / (v_norm * balance_kv);
  }
  T.narrow(0, 0, z.nope).div_(alpha);

  const int64_t n_pca = full ? z.n_x : kv_rank - 1;
  torch::Tensor R;  // [n_x, n_pca]
  if (full) {
    R = torch::eye(z.n_x, kF64);
  } else {
    auto Sx = T.matmul(st.S).matmul(T.t());  // [n_x, n_x]
    R = std::get<1>(torch::linalg::eigh(Sx, "L")).flip({1}).narrow(1, 0, n_pca).contiguous();
  }
  const int64_t latent = n_pca + 1;
  auto Wkv = torch::cat({w.wk, w.wv}, 0);  // [2KV, D]
  auto P = R.t().matmul(T).matmul(Wkv);    // [n_pca, D]

  MlaWeights m;
  m.kv_a = torch::cat({P, torch::zeros({1, z.D}, kF64), Mr.matmul(w.wk)}, 0);  // [latent + r, D]
  const double beta = anchor_beta(P, {}, w.input_norm_max);
  m.kv_a_bias = torch::cat({torch::zeros({n_pca}, kF64), torch::full({1}, beta, kF64),
                            w.bk.defined() ? Mr.matmul(w.bk) : torch::zeros({r}, kF64)});
  m.kv_a_norm = anchored_norm_weight(latent, beta);
  // per head h (kv head j = h/g): k_nope = alpha Mn^T[j] R_k c, v = R_v[j] c
  m.kv_b = torch::zeros({z.H * 2 * d, latent}, kF64);
  auto Rk = R.narrow(0, 0, z.nope), Rv = R.narrow(0, z.nope, KV);
  auto MnT = Mn.t();  // [KV, nope]
  for (int64_t h = 0; h < z.H; ++h) {
    const int64_t j = h / z.g;
    m.kv_b.index_put_({Slice(h * 2 * d, h * 2 * d + d), Slice(0, n_pca)},
                      MnT.narrow(0, j * d, d).matmul(Rk) * alpha);
    m.kv_b.index_put_({Slice(h * 2 * d + d, (h + 1) * 2 * d), Slice(0, n_pca)},
                      Rv.narrow(0, j * d, d));
  }

  // queries: per head [q_h ; Mr[:, head j] q_h], scaled from d^-1/2 to (d+r)^-1/2
  const double s = std::sqrt(double(d + r) / double(d));
  auto head_map = [&](int64_t h) {  // [d + r, d]
    return torch::cat({torch::eye(d, kF64), Mr.narrow(1, (h / z.g) * d, d)}, 0) * s;
  };
  if (!w.bq.defined()) {
    std::vector<torch::Tensor> rows;
    for (int64_t h = 0; h < z.H; ++h) rows.push_back(head_map(h).matmul(w.wq.narrow(0, h * d, d)));
    m.q_proj = torch::cat(rows, 0);  // [H*(d+r), D]
  } else {
    const int64_t Q = z.H * d;
    m.q_a = torch::cat({w.wq, torch::zeros({1, z.D}, kF64)}, 0);  // [Q+1, D]
    const double beta_q = anchor_beta(w.wq, w.bq, w.input_norm_max);
    m.q_a_bias = torch::cat({w.bq, torch::full({1}, beta_q, kF64)});
    m.q_a_norm = anchored_norm_weight(Q + 1, beta_q);
    m.q_b = torch::zeros({z.H * (d + r), Q + 1}, kF64);
    for (int64_t h = 0; h < z.H; ++h)
      m.q_b.index_put_({Slice(h * (d + r), (h + 1) * (d + r)), Slice(h * d, (h + 1) * d)},
                       head_map(h));
  }
  // the value bias passes through the softmax average unchanged: o_proj's bias
  m.o = w.wo;
  m.o_bias = w.bo.defined() ? w.bo.clone() : torch::zeros({z.D}, kF64);
  if (w.bv.defined())  // each query head h reads kv head h/g's bias
    m.o_bias += w.wo.matmul(w.bv.view({z.n_kv, d}).repeat_interleave(z.g, 0).flatten());
  return m;
}

void set_param(torch::Tensor& dst, const torch::Tensor& src, const std::string& what) {
  if (!dst.defined() || !src.defined() || dst.sizes() != src.sizes())
    throw Error("internal: mla-convert tensor '" + what + "' has the wrong shape");
  dst.copy_(src.to(dst.scalar_type()));
}

void load_attention(AttentionImpl& a, const MlaWeights& m) {
  torch::NoGradGuard no_grad;
  if (m.q_proj.defined()) {
    set_param(a.q_proj->weight, m.q_proj, "q_proj");
  } else {
    set_param(a.q_a_proj->weight, m.q_a, "q_a_proj");
    set_param(a.q_a_proj->bias, m.q_a_bias, "q_a_proj.bias");
    set_param(a.q_a_layernorm->weight, m.q_a_norm, "q_a_layernorm");
    set_param(a.q_b_proj->weight, m.q_b, "q_b_proj");
  }
  set_param(a.kv_a_proj_with_mqa->weight, m.kv_a, "kv_a_proj_with_mqa");
  set_param(a.kv_a_proj_with_mqa->bias, m.kv_a_bias, "kv_a_proj_with_mqa.bias");
  set_param(a.kv_a_layernorm->weight, m.kv_a_norm, "kv_a_layernorm");
  set_param(a.kv_b_proj->weight, m.kv_b, "kv_b_proj");
  set_param(a.o_proj->weight, m.o, "o_proj");
  set_param(a.o_proj->bias, m.o_bias, "o_proj.bias");
}

ModelConfig output_config(const ModelConfig& s, const MlaConvertOptions& o, int64_t kv_rank,
                          bool query_bias) {
  ModelConfig c;
  c.model_type = "deepseek_v3";
  c.architectures = {"DeepseekV3ForCausalLM"};
  c.vocab_size = s.vocab_size;
  c.hidden_size = s.hidden_size;
  c.intermediate_size = s.intermediate_size;
  c.num_hidden_layers = s.num_hidden_layers;
  c.num_attention_heads = s.num_attention_heads;
  c.num_key_value_heads = s.num_attention_heads;  // HF repeats nothing: every head has its K/V
  c.hidden_act = s.hidden_act;
  c.rms_norm_eps = s.rms_norm_eps;
  c.rope_theta = s.rope_theta;
  c.rope_scaling = s.rope_scaling;
  c.rope_interleaved = true;  // DeepSeek's pair layout (rope_interleave)
  c.max_position_embeddings = s.max_position_embeddings;
  c.tie_word_embeddings = s.tie_word_embeddings;
  c.attention_bias = true;  // the latent's anchor is kv_a_proj_with_mqa's bias
  c.torch_dtype = o.dtype.empty() ? s.torch_dtype : o.dtype;
  c.bos_token_id = s.bos_token_id;
  c.eos_token_id = s.eos_token_id;
  c.pad_token_id = s.pad_token_id;
  c.initializer_range = s.initializer_range;
  c.q_lora_rank = query_bias ? s.num_attention_heads * s.head_dim + 1 : 0;
  c.kv_lora_rank = kv_rank;
  c.qk_nope_head_dim = s.head_dim;
  c.qk_rope_head_dim = o.rope_dim;
  c.v_head_dim = s.head_dim;
  c.head_dim = o.rope_dim;
  // no routed experts: every MLP is the dense one it was
  c.num_experts = 0;
  c.first_k_dense_replace = s.num_hidden_layers;
  c.n_group = 1;
  c.topk_group = 1;
  c.finalize("mla-convert output config");
  return c;
}

// The source model and everything measured on it.
class Converter {
 public:
  Converter(const std::string& src_dir, const MlaConvertOptions& o,
            const std::vector<std::vector<int32_t>>& calib)
      : opt_(o),
        model_(load_model(src_dir, {torch::kFloat32})),
        impl_(dynamic_cast<TransformerImpl&>(model_.module())),
        src_(model_.config()),
        z_(src_, o.rope_dim) {
    require_float_weights(model_, "mla-convert " + src_dir);
    const int64_t T = int64_t(calib.front().size());
    std::vector<int64_t> ids;
    ids.reserve(calib.size() * size_t(T));
    for (size_t i = 0; i < calib.size(); ++i) {
      if (int64_t(calib[i].size()) != T)
        throw Error("calibration: sequence " + str(int64_t(i)) + " has " +
                    str(int64_t(calib[i].size())) + " tokens, the first " + str(T));
      for (const int32_t id : calib[i]) {
        if (id < 0 || id >= src_.vocab_size)
          throw Error("calibration: token id " + str(id) + " outside the vocabulary [0, " +
                      str(src_.vocab_size) + ")");
        ids.push_back(id);
      }
    }
    tokens_ = torch::tensor(ids, torch::kInt64).view({int64_t(calib.size()), T});
    // sequences per evaluation forward: logits of about 128 Mi floats at most
    eval_batch_ = std::clamp<int64_t>((int64_t(1) << 27) / (T * src_.vocab_size), 1, kBatch);
    n_eval_ = std::min<int64_t>(o.eval_sequences, tokens_.size(0));
    for (const auto& layer : impl_.layer_list) {
      const auto& a = *layer->self_attn;
      SourceAttn w;
      w.wq = f64(a.q_proj->weight), w.wk = f64(a.k_proj->weight), w.wv = f64(a.v_proj->weight);
      w.wo = f64(a.o_proj->weight);
      w.bq = f64(a.q_proj->bias), w.bk = f64(a.k_proj->bias), w.bv = f64(a.v_proj->bias);
      w.bo = f64(a.o_proj->bias);
      w.input_norm_max = layer->input_layernorm->weight.abs().max().item<double>();
      attn_.push_back(std::move(w));
    }
  }

  const ModelConfig& source() const { return src_; }
  const Dims& dims() const { return z_; }
  bool query_bias() const { return attn_.front().bq.defined(); }
  int64_t tokens() const { return tokens_.numel(); }
  int64_t layers() const { return src_.num_hidden_layers; }
  TransformerImpl& impl() { return impl_; }
  const Transformer& model() const { return model_; }

  // One pass over the calibration set: per-layer statistics and the inputs of
  // every layer for the evaluation sequences.
  void calibrate(Progress* bar) {
    torch::NoGradGuard no_grad;
    const int64_t L = layers(), N = tokens_.size(0), T = tokens_.size(1);
    stats_.assign(size_t(L), {});
    for (auto& st : stats_) {
      st.S = torch::zeros({2 * z_.KV, 2 * z_.KV}, kF64);
      st.s = torch::zeros({2 * z_.KV}, kF64);
    }
    eval_inputs_.assign(size_t(L), torch::Tensor());
    for (int64_t b0 = 0; b0 < N; b0 += kBatch) {
      const int64_t B = std::min(kBatch, N - b0);
      auto positions = torch::arange(T, torch::kInt64).unsqueeze(0).expand({B, T});
      auto [cos, sin] = impl_.layer_list.front()->self_attn->rope().cos_sin(positions);
      auto x = impl_.model->embed_tokens->lookup(tokens_.narrow(0, b0, B), torch::kFloat32);
      for (int64_t l = 0; l < L; ++l) {
        auto& layer = impl_.layer_list[size_t(l)];
        if (b0 < n_eval_) {
          auto keep = x.narrow(0, 0, std::min(B, n_eval_ - b0)).clone();
          auto& e = eval_inputs_[size_t(l)];
          e = e.defined() ? torch::cat({e, keep}, 0) : keep;
        }
        auto xn = layer->input_layernorm(x);  // [B,T,D]
        const auto& a = *layer->self_attn;
        auto kv = torch::cat({torch::matmul(xn, a.k_proj->weight.t()),
                              torch::matmul(xn, a.v_proj->weight.t())},
                             -1)
                      .reshape({-1, 2 * z_.KV})
                      .to(torch::kFloat64);  // [B*T, 2KV]
        auto& st = stats_[size_t(l)];
        st.S += kv.t().matmul(kv);
        st.s += kv.sum(0);
        st.n += kv.size(0);
        x = x + layer->self_attn(xn, cos, sin, torch::Tensor());
        x = x + layer->ffn(layer->post_attention_layernorm(x));
      }
      if (bar) bar->update(b0 + B);
    }
  }

  MlaWeights build(int64_t layer, int64_t ff, int64_t kv_rank, bool full) const {
    return build_layer(z_, attn_[size_t(layer)], stats_[size_t(layer)], ff, kv_rank,
                       opt_.balance_kv, src_.rope_interleaved, full);
  }

  // An MLA attention module of `config` holding `w`, for evaluation.
  std::shared_ptr<AttentionImpl> module(const ModelConfig& config, const MlaWeights& w) const {
    auto a = std::make_shared<AttentionImpl>(config, torch::TensorOptions().dtype(torch::kFloat32));
    load_attention(*a, w);
    return a;
  }

  // Perplexity of the evaluation sequences with layers [start, L) using
  // `mla[l]` where set (the source attention elsewhere), from the source's
  // input of layer `start`.
  double perplexity(int64_t start, const std::vector<std::shared_ptr<AttentionImpl>>& mla) {
    torch::NoGradGuard no_grad;
    const int64_t L = layers(), T = tokens_.size(1);
    double nll = 0.0;
    int64_t count = 0;
    for (int64_t b0 = 0; b0 < n_eval_; b0 += eval_batch_) {
      const int64_t B = std::min(eval_batch_, n_eval_ - b0);
      auto positions = torch::arange(T, torch::kInt64).unsqueeze(0).expand({B, T});
      auto [cos, sin] = impl_.layer_list.front()->self_attn->rope().cos_sin(positions);
      torch::Tensor mcos, msin;  // the MLA layers' rope (rope_dim dims)
      for (const auto& m : mla)
        if (m) {
          std::tie(mcos, msin) = m->rope().cos_sin(positions);
          break;
        }
      auto x = eval_inputs_[size_t(start)].narrow(0, b0, B);
      for (int64_t l = start; l < L; ++l) {
        auto& layer = impl_.layer_list[size_t(l)];
        auto xn = layer->input_layernorm(x);
        const auto& m = mla[size_t(l)];
        x = x + (m ? m->forward(xn, mcos, msin, torch::Tensor())
                   : layer->self_attn(xn, cos, sin, torch::Tensor()));
        x = x + layer->ffn(layer->post_attention_layernorm(x));
      }
      auto logits = finmoe::linear(impl_.model->norm(x), impl_.lm_head_weight(), {})
                        .to(torch::kFloat32);  // [B,T,V]
      auto logp = torch::log_softmax(logits.narrow(1, 0, T - 1), -1);
      auto target = tokens_.narrow(0, b0, B).narrow(1, 1, T - 1).unsqueeze(-1);
      nll -= logp.gather(-1, target).sum().item<double>();
      count += B * (T - 1);
    }
    return std::exp(nll / double(count));
  }

 private:
  MlaConvertOptions opt_;
  Transformer model_;
  TransformerImpl& impl_;
  ModelConfig src_;
  Dims z_;
  torch::Tensor tokens_;  // [N, T] int64
  int64_t n_eval_ = 0;
  int64_t eval_batch_ = kBatch;
  std::vector<SourceAttn> attn_;
  std::vector<LayerStats> stats_;
  std::vector<torch::Tensor> eval_inputs_;  // per layer [n_eval, T, D] float32
};

std::string join_sizes(const std::vector<int64_t>& v) {
  std::string s;
  for (auto x : v) s += (s.empty() ? "" : ", ") + str(x);
  return s;
}

// The FreqFold candidates: c * 2^k dividing d/2, up to max_freqfold.
std::vector<int64_t> freqfold_candidates(const Dims& z, int64_t max_ff) {
  std::vector<int64_t> out;
  for (int64_t ff = z.c; ff <= max_ff && ff <= z.d / 2; ff *= 2)
    if ((z.d / 2) % ff == 0) out.push_back(ff);
  return out;
}

std::string fmt(double v, int prec = 4) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(prec) << v;
  return s.str();
}

const std::vector<std::string> kColours = {"#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd",
                                           "#8c564b", "#e377c2", "#7f7f7f"};

// Fig. 4: perplexity increase over the source per layer, one line per size.
std::string write_probe_svg(const std::string& path, const MlaConvertReport& r) {
  const double W = 640, Hh = 400, x0 = 60, y0 = 30, pw = 500, ph = 300;
  double lo = 0, hi = 0;
  for (const auto& row : r.probe)
    for (double v : row) lo = std::min(lo, v - r.ppl_source), hi = std::max(hi, v - r.ppl_source);
  if (hi <= lo) hi = lo + 1e-9;
  const double n = double(std::max<size_t>(r.probe.size(), 2) - 1);
  auto px = [&](double l) { return x0 + pw * l / n; };
  auto py = [&](double v) { return y0 + ph * (1.0 - (v - lo) / (hi - lo)); };
  svg::Document doc(W, Hh);
  doc.text(W / 2, 18, "Perplexity increase with one layer converted (stage 1)", 13, "middle");
  doc.line(x0, y0 + ph, x0 + pw, y0 + ph);
  doc.line(x0, y0, x0, y0 + ph);
  doc.line(x0, py(0), x0 + pw, py(0), "#bbb", 0.8);
  doc.text(x0 - 5, y0 + 4, svg::num(hi), 10, "end");
  doc.text(x0 - 5, y0 + ph, svg::num(lo), 10, "end");
  doc.text(x0 + pw / 2, y0 + ph + 30, "layer", 11, "middle");
  doc.text(x0, y0 + ph + 15, "0", 10, "middle");
  doc.text(x0 + pw, y0 + ph + 15, str(int64_t(r.probe.size()) - 1), 10, "middle");
  double ly = y0 + 10;
  for (size_t i = 0; i < r.freqfold_sizes.size(); ++i) {
    std::vector<std::pair<double, double>> pts;
    for (size_t l = 0; l < r.probe.size(); ++l)
      pts.push_back({px(double(l)), py(r.probe[l][i] - r.ppl_source)});
    const auto& col = kColours[i % kColours.size()];
    doc.polyline(pts, col, 1.5);
    doc.text(x0 + pw + 5, ly, "FreqFold " + str(r.freqfold_sizes[i]), 10);
    doc.line(x0 + pw + 70, ly - 3, x0 + pw + 85, ly - 3, col, 2);
    ly += 14;
  }
  write_file_atomic(path, doc.str());
  return path;
}

// report.json, layers.csv, probe.csv, probe.svg, trajectory.svg under `dir`.
std::vector<std::string> write_report_files(const std::string& dir, const MlaConvertReport& r) {
  fs::create_directories(dir);
  std::vector<std::string> files;
  nlohmann::json layers = nlohmann::json::array();
  for (const auto& c : r.trajectory)
    layers.push_back({{"layer", c.layer}, {"freqfold", c.freqfold}, {"ppl_after", c.ppl}});
  nlohmann::json uniform = nlohmann::json::object();
  for (const auto& [ff, v] : r.uniform_trajectory) uniform[str(ff)] = v;
  nlohmann::json j = {
      {"source_model_type", r.source.model_type},
      {"rope_dim", r.rope_dim},
      {"kv_lora_rank", r.kv_lora_rank},
      {"collapse", r.collapse},
      {"q_lora_rank",
       r.config.q_lora_rank > 0 ? nlohmann::json(r.config.q_lora_rank) : nlohmann::json(nullptr)},
      {"freqfold_candidates", r.freqfold_sizes},
      {"freqfold_per_layer", r.freqfold},
      {"ppl_source", r.ppl_source},
      {"ppl_partial_rope", r.ppl_partial_rope},
      {"ppl_converted", r.ppl_converted},
      {"kv_values_per_token_per_layer",
       {{"source", r.kv_values_source}, {"converted", r.kv_values_converted}}},
      {"calibration_tokens", r.calibration_tokens},
      {"trajectory", layers},
      {"uniform_trajectory", uniform},
      {"probe", r.probe},
      {"seconds", r.seconds}};
  const std::string jpath = (fs::path(dir) / "report.json").string();
  write_json_file(jpath, j);
  files.push_back(jpath);

  std::ostringstream csv;
  csv << "step,layer,freqfold,ppl_after";
  for (const auto& [ff, v] : r.uniform_trajectory) csv << ",uniform_" << ff;
  csv << "\n";
  for (size_t k = 0; k < r.trajectory.size(); ++k) {
    const auto& c = r.trajectory[k];
    csv << k + 1 << "," << c.layer << "," << c.freqfold << "," << fmt(c.ppl, 6);
    for (const auto& [ff, v] : r.uniform_trajectory) csv << "," << fmt(v.at(k), 6);
    csv << "\n";
  }
  const std::string cpath = (fs::path(dir) / "layers.csv").string();
  write_file_atomic(cpath, csv.str());
  files.push_back(cpath);

  if (!r.probe.empty()) {
    std::ostringstream p;
    p << "layer";
    for (auto ff : r.freqfold_sizes) p << ",ppl_ff" << ff << ",delta_ff" << ff;
    p << "\n";
    for (size_t l = 0; l < r.probe.size(); ++l) {
      p << l;
      for (double v : r.probe[l]) p << "," << fmt(v, 6) << "," << fmt(v - r.ppl_source, 6);
      p << "\n";
    }
    const std::string ppath = (fs::path(dir) / "probe.csv").string();
    write_file_atomic(ppath, p.str());
    files.push_back(ppath);
    files.push_back(write_probe_svg((fs::path(dir) / "probe.svg").string(), r));
  }

  // Fig. 9: perplexity against layers converted (last to first)
  const double W = 640, Hh = 400, x0 = 60, y0 = 30, pw = 540, ph = 300;
  double lo = r.ppl_source, hi = r.ppl_source;
  for (const auto& c : r.trajectory) lo = std::min(lo, c.ppl), hi = std::max(hi, c.ppl);
  for (const auto& [ff, v] : r.uniform_trajectory)
    for (double x : v) lo = std::min(lo, x), hi = std::max(hi, x);
  if (hi <= lo) hi = lo + 1e-9;
  const double n = double(std::max<size_t>(r.trajectory.size(), 1));
  auto px = [&](double k) { return x0 + pw * k / n; };
  auto py = [&](double v) { return y0 + ph * (1.0 - (v - lo) / (hi - lo)); };
  svg::Document doc(W, Hh);
  doc.text(W / 2, 18, "Calibration perplexity vs layers converted (last to first), stage 1", 13,
           "middle");
  doc.line(x0, y0 + ph, x0 + pw, y0 + ph);
  doc.line(x0, y0, x0, y0 + ph);
  doc.text(x0 - 5, y0 + 4, svg::num(hi), 10, "end");
  doc.text(x0 - 5, y0 + ph, svg::num(lo), 10, "end");
  doc.text(x0 + pw / 2, y0 + ph + 30, "layers converted", 11, "middle");
  doc.text(x0, y0 + ph + 15, "0", 10, "middle");
  doc.text(x0 + pw, y0 + ph + 15, str(int64_t(n)), 10, "middle");
  double ly = y0 + 10;
  size_t ci = 0;
  for (const auto& [ff, v] : r.uniform_trajectory) {
    std::vector<std::pair<double, double>> pts = {{px(0), py(r.ppl_source)}};
    for (size_t k = 0; k < v.size(); ++k) pts.push_back({px(double(k + 1)), py(v[k])});
    const auto& col = kColours[ci++ % kColours.size()];
    doc.polyline(pts, col, 1.2);
    doc.text(x0 + pw + 5, ly, "uniform " + str(ff), 10);
    doc.line(x0 + pw + 60, ly - 3, x0 + pw + 75, ly - 3, col, 2);
    ly += 14;
  }
  if (!r.trajectory.empty() && r.uniform_trajectory.size() != 1) {
    std::vector<std::pair<double, double>> pts = {{px(0), py(r.ppl_source)}};
    for (size_t k = 0; k < r.trajectory.size(); ++k)
      pts.push_back({px(double(k + 1)), py(r.trajectory[k].ppl)});
    doc.polyline(pts, "#d62728", 2.2);
    doc.text(x0 + pw + 5, ly, "adaptive", 10);
    doc.line(x0 + pw + 60, ly - 3, x0 + pw + 75, ly - 3, "#d62728", 2);
  }
  const std::string spath = (fs::path(dir) / "trajectory.svg").string();
  write_file_atomic(spath, doc.str());
  files.push_back(spath);
  return files;
}

const char* kSideFiles[] = {"tokenizer.json",
                            "tokenizer_config.json",
                            "generation_config.json",
                            "special_tokens_map.json",
                            "vocab.json",
                            "merges.txt",
                            "tokenizer.model",
                            "chat_template.jinja",
                            "chat_template.json"};

void copy_side_file(const fs::path& from, const fs::path& to) {
  std::ifstream in(from, std::ios::binary);
  std::stringstream bytes;
  bytes << in.rdbuf();
  if (!in && !in.eof()) throw Error("cannot read " + from.string());
  write_file_atomic(to.string(), bytes.str());
}

}  // namespace

MlaConvertOptions resolve_mla_options(const ModelConfig& s, const MlaConvertOptions& options) {
  MlaConvertOptions o = options;
  const std::string& type = s.model_type;
  if (type != "llama" && type != "qwen2" && type != "mistral")
    throw Error("config.json: model_type '" + type +
                "' is not supported by mla-convert (supported: llama, qwen2, mistral: dense "
                "GQA/MHA sources)");
  if (s.quantization)
    throw Error(
        "config.json: an 8-bit checkpoint (quantization_config); mla-convert needs "
        "float weights");
  if (s.mlp_bias)
    throw Error(
        "config.json: mlp_bias is true; deepseek_v3's MLP has no bias, so mla-convert "
        "cannot carry it");
  for (int64_t l = 0; l < s.num_hidden_layers; ++l)
    if (s.attention_window(l) > 0 && s.attention_window(l) < s.max_position_embeddings)
      throw Error("config.json: sliding_window " + str(*s.sliding_window) +
                  " is active; deepseek_v3 attends to the whole context, so mla-convert refuses "
                  "sliding-window sources");
  const std::string& rt = s.rope_scaling.rope_type;
  if (rt != "default" && rt != "linear" && rt != "llama3")
    throw Error("config.json: rope_scaling type '" + rt +
                "' is not supported by mla-convert (supported: default, linear, llama3: the "
                "ones whose frequencies do not depend on the rotary dims)");
  const int64_t d = s.head_dim;
  if (o.rope_dim == 0) o.rope_dim = std::min<int64_t>(64, d);
  if (o.rope_dim <= 0 || o.rope_dim % 2 != 0 || o.rope_dim > d || d % o.rope_dim != 0)
    throw Error("--rope-dim " + str(o.rope_dim) + ": must be even and divide head_dim " + str(d) +
                " (at most the head's " + str(d) + " dims)");
  const Dims z(s, o.rope_dim);
  if (o.freqfold < 0)
    throw Error("--freqfold " + str(o.freqfold) + ": must be a positive size or 'auto'");
  if (o.freqfold > 0) {
    if ((d / 2) % o.freqfold != 0)
      throw Error("--freqfold " + str(o.freqfold) + ": does not divide the head's " + str(d / 2) +
                  " rotary frequencies (head_dim " + str(d) + ")");
    if (o.freqfold % z.c != 0)
      throw Error("--freqfold " + str(o.freqfold) + ": must be a multiple of head_dim/rope_dim = " +
                  str(z.c) + " (each group keeps freqfold/" + str(z.c) + " rope pairs)");
  } else if (freqfold_candidates(z, o.max_freqfold).empty()) {
    throw Error("--max-freqfold " + str(o.max_freqfold) +
                ": no FreqFold size to search (sizes are " + str(z.c) + "*2^k dividing " +
                str(d / 2) + ")");
  }
  if (o.probe && freqfold_candidates(z, o.max_freqfold).empty())
    throw Error("--max-freqfold " + str(o.max_freqfold) + ": no FreqFold size to probe");
  const int64_t most = z.n_x + 1;  // every dim of [K_nope; V] plus the anchor
  if (o.kv_lora_rank == 0) {
    o.kv_lora_rank = std::min<int64_t>({512, 2 * z.KV - o.rope_dim - 1, most});
    if (o.kv_lora_rank < 2) o.kv_lora_rank = most;
  }
  if (o.kv_lora_rank < 2 || o.kv_lora_rank > most)
    throw Error("--kv-lora-rank " + str(o.kv_lora_rank) + ": must be in [2, " + str(most) +
                "]: [K_nope; V] has " + str(z.n_x) + " dims (2*" + str(z.n_kv) + " kv heads*" +
                str(d) + " - rope " + str(o.rope_dim) + ") plus one anchor dim");
  if (o.eval_sequences <= 0)
    throw Error("--eval-samples " + str(o.eval_sequences) + ": must be positive");
  if (!(o.balance_kv == 0 || (o.balance_kv >= 1e-3 && o.balance_kv <= 1e3)))
    throw Error("--bkv " + nlohmann::json(o.balance_kv).dump() +
                ": must be 0 (off) or in [0.001, 1000]");
  if (!o.dtype.empty()) (void)dtype_from_string(o.dtype);
  return o;
}

MlaConvertReport mla_convert(const std::string& src_dir, const std::string& out_dir,
                             const std::vector<std::vector<int32_t>>& calibration,
                             const MlaConvertOptions& options) {
  const auto t0 = std::chrono::steady_clock::now();
  const ModelConfig src_config = ModelConfig::load(src_dir);
  const MlaConvertOptions o = resolve_mla_options(src_config, options);
  if (calibration.empty() || calibration.front().size() < 2)
    throw Error("calibration: needs at least one sequence of 2 or more tokens");
  std::error_code ec;
  if (out_dir.empty()) throw Error("OUT_DIR is empty");
  if (fs::exists(out_dir) && fs::equivalent(out_dir, src_dir, ec))
    throw Error("OUT_DIR " + out_dir + " is the source checkpoint's directory; choose another");
  if (fs::exists(out_dir) && !fs::is_directory(out_dir))
    throw Error("OUT_DIR " + out_dir + " exists and is not a directory");

  Converter cv(src_dir, o, calibration);
  const Dims& z = cv.dims();
  const int64_t L = cv.layers();
  MlaConvertReport rep;
  rep.source = cv.source();
  rep.rope_dim = o.rope_dim;
  rep.kv_lora_rank = o.kv_lora_rank;
  rep.collapse = z.c;
  rep.config = output_config(cv.source(), o, o.kv_lora_rank, cv.query_bias());
  rep.calibration_tokens = cv.tokens();
  rep.kv_values_source = 2 * z.KV;
  rep.kv_values_converted = o.kv_lora_rank + o.rope_dim;
  // evaluation modules take full-rank latents (stage 1 alone)
  ModelConfig full_cfg = rep.config;
  full_cfg.kv_lora_rank = z.n_x + 1;
  const std::vector<int64_t> sizes = o.freqfold > 0 && !o.probe
                                         ? std::vector<int64_t>{o.freqfold}
                                         : freqfold_candidates(z, o.max_freqfold);
  rep.freqfold_sizes = sizes;
  const int64_t S = int64_t(sizes.size());

  // work: calibration sequences, then layer evaluations (one per layer run)
  int64_t evals = L;                       // the uniform trajectory
  if (o.freqfold == 0) evals = 2 * S * L;  // search + every uniform one
  if (o.probe) evals += S * L;
  evals += 2;  // source + final
  std::optional<Progress> bar;
  if (o.progress) bar.emplace("mla-convert: calibration", int64_t(calibration.size()), "seq");
  cv.calibrate(bar ? &*bar : nullptr);
  if (bar) bar->finish();
  if (o.progress) bar.emplace("mla-convert: search", evals, "eval");
  int64_t done = 0;
  auto tick = [&](const std::string& status) {
    ++done;
    if (bar) bar->update(done, status);
  };

  using Mods = std::vector<std::shared_ptr<AttentionImpl>>;
  const Mods none(static_cast<size_t>(L));
  rep.ppl_source = cv.perplexity(0, none);
  tick("source ppl " + fmt(rep.ppl_source, 3));

  // stage-1 modules, built on demand per (layer, size)
  auto stage1 = [&](int64_t l, int64_t ff) {
    return cv.module(full_cfg, cv.build(l, ff, z.n_x + 1, /*full=*/true));
  };

  if (o.probe) {  // Fig. 4: one layer at a time
    rep.probe.assign(size_t(L), std::vector<double>(size_t(S)));
    for (int64_t l = 0; l < L; ++l)
      for (int64_t i = 0; i < S; ++i) {
        Mods m(static_cast<size_t>(L));
        m[size_t(l)] = stage1(l, sizes[size_t(i)]);
        rep.probe[size_t(l)][size_t(i)] = cv.perplexity(l, m);
        tick("probe layer " + str(l) + " ff " + str(sizes[size_t(i)]));
      }
  }
  // uniform trajectories: the chosen size, or every candidate in auto mode
  const std::vector<int64_t> uniform = o.freqfold > 0 ? std::vector<int64_t>{o.freqfold} : sizes;
  for (int64_t ff : uniform) {
    Mods m(static_cast<size_t>(L));
    auto& traj = rep.uniform_trajectory[ff];
    for (int64_t l = L - 1; l >= 0; --l) {
      m[size_t(l)] = stage1(l, ff);
      traj.push_back(cv.perplexity(l, m));
      tick("uniform ff " + str(ff) + " layer " + str(l));
    }
  }
  rep.freqfold.assign(size_t(L), o.freqfold);
  if (o.freqfold > 0) {
    const auto& traj = rep.uniform_trajectory[o.freqfold];
    for (int64_t k = 0; k < L; ++k)
      rep.trajectory.push_back({L - 1 - k, o.freqfold, traj[size_t(k)]});
  } else {  // YouZhi Eq. 3: last layer first, each the size that minimises perplexity
    Mods m(static_cast<size_t>(L));
    for (int64_t l = L - 1; l >= 0; --l) {
      double best = std::numeric_limits<double>::infinity();
      int64_t best_ff = sizes.front();
      std::shared_ptr<AttentionImpl> best_mod;
      for (int64_t ff : sizes) {
        m[size_t(l)] = stage1(l, ff);
        const double p = cv.perplexity(l, m);
        tick("adaptive layer " + str(l) + " ff " + str(ff) + " ppl " + fmt(p, 3));
        if (p < best) best = p, best_ff = ff, best_mod = m[size_t(l)];
      }
      m[size_t(l)] = best_mod;
      rep.freqfold[size_t(l)] = best_ff;
      rep.trajectory.push_back({l, best_ff, best});
    }
  }
  rep.ppl_partial_rope = rep.trajectory.back().ppl;

  // the final layers (both stages) and their perplexity
  std::vector<MlaWeights> final_w;
  Mods final_m(static_cast<size_t>(L));
  for (int64_t l = 0; l < L; ++l) {
    final_w.push_back(cv.build(l, rep.freqfold[size_t(l)], o.kv_lora_rank, /*full=*/false));
    final_m[size_t(l)] = cv.module(rep.config, final_w.back());
  }
  if (rep.config.torch_dtype == "float16")  // the anchor and its norm weight are large
    for (const auto& w : final_w)
      for (const auto* t : {&w.kv_a_bias, &w.kv_a_norm, &w.q_a_bias, &w.q_a_norm})
        if (t->defined() && t->abs().max().item<double>() > 65504.0)
          throw Error("--dtype float16: the latent's anchor (" +
                      fmt(t->abs().max().item<double>(), 1) +
                      ") exceeds float16's range; write bfloat16 or float32");
  rep.ppl_converted = cv.perplexity(0, final_m);
  tick("converted ppl " + fmt(rep.ppl_converted, 3));
  if (bar) bar->finish();

  // the checkpoint, in a temporary sibling renamed at the end
  const fs::path out = fs::absolute(out_dir).lexically_normal();
  const fs::path tmp = temp_path_for(out.string());
  struct Cleanup {
    fs::path p;
    ~Cleanup() {
      if (!p.empty()) remove_tree(p.string());
    }
  } cleanup{tmp};
  fs::create_directories(tmp);
  {
    const torch::Dtype dt = dtype_from_string(rep.config.torch_dtype);
    Transformer out_model(rep.config, dt);
    auto& oi = dynamic_cast<TransformerImpl&>(out_model.module());
    std::map<std::string, torch::Tensor> src_params;
    for (const auto& [name, t] : cv.model().named_parameters()) src_params[name] = t;
    torch::NoGradGuard no_grad;
    for (auto [name, t] : out_model.named_parameters()) {
      if (name.find(".self_attn.") != std::string::npos) continue;
      auto it = src_params.find(name);
      if (it == src_params.end()) throw Error("internal: mla-convert has no source for " + name);
      set_param(t, it->second, name);
    }
    for (int64_t l = 0; l < L; ++l)
      load_attention(*oi.layer_list[size_t(l)]->self_attn, final_w[size_t(l)]);
    save_model(out_model, tmp.string());
  }
  for (const char* name : kSideFiles) {
    const fs::path from = fs::path(src_dir) / name;
    if (fs::is_regular_file(from)) copy_side_file(from, tmp / name);
  }
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  write_report_files((tmp / "mla_report").string(), rep);
  // swap in: a previous OUT_DIR moves aside first and goes once the new one is in place
  fs::path old;
  if (fs::exists(out)) {
    old = temp_path_for(out.string() + ".old");
    fs::rename(out, old);
  }
  fs::rename(tmp, out);
  cleanup.p.clear();
  if (!old.empty()) remove_tree(old.string());
  for (const char* f : {"report.json", "layers.csv", "probe.csv", "probe.svg", "trajectory.svg"})
    if (fs::exists(out / "mla_report" / f)) rep.files.push_back((out / "mla_report" / f).string());
  return rep;
}

std::string format_mla_report(const MlaConvertReport& r) {
  std::ostringstream s;
  const int64_t L = int64_t(r.freqfold.size());
  s << r.source.model_type << " -> deepseek_v3 (MLA), " << L << " layers\n"
    << "  rope dims " << r.rope_dim << " (collapse " << r.collapse << "), kv_lora_rank "
    << r.kv_lora_rank << " (incl. 1 anchor dim)"
    << (r.config.q_lora_rank > 0 ? ", q_lora_rank " + str(r.config.q_lora_rank) + " (query bias)"
                                 : std::string())
    << "\n"
    << "  KV cache values per token per layer: " << r.kv_values_source << " -> "
    << r.kv_values_converted << " ("
    << fmt(100.0 * double(r.kv_values_converted) / double(std::max<int64_t>(r.kv_values_source, 1)),
           1)
    << "%)\n"
    << "  calibration tokens " << r.calibration_tokens << "\n"
    << "  FreqFold per layer: " << join_sizes(r.freqfold) << "\n\n"
    << "| model                     | calib ppl |\n"
    << "|---------------------------|-----------|\n"
    << "| source                    | " << std::setw(9) << fmt(r.ppl_source, 3) << " |\n";
  for (const auto& [ff, v] : r.uniform_trajectory)
    s << "| partial RoPE, uniform " << std::setw(3) << ff << " | " << std::setw(9)
      << fmt(v.back(), 3) << " |\n";
  if (r.uniform_trajectory.size() != 1)
    s << "| partial RoPE, adaptive    | " << std::setw(9) << fmt(r.ppl_partial_rope, 3) << " |\n";
  s << "| converted (both stages)   | " << std::setw(9) << fmt(r.ppl_converted, 3) << " |\n";
  if (!r.probe.empty()) {
    s << "\nprobe (one layer converted, stage 1): ppl - source ppl\n| layer |";
    for (auto ff : r.freqfold_sizes) s << " ff " << std::setw(3) << ff << "   |";
    s << "\n";
    for (size_t l = 0; l < r.probe.size(); ++l) {
      s << "| " << std::setw(5) << l << " |";
      for (double v : r.probe[l]) s << " " << std::setw(9) << fmt(v - r.ppl_source, 4) << " |";
      s << "\n";
    }
  }
  return s.str();
}

}  // namespace finmoe
