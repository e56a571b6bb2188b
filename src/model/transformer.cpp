#include "model/transformer.h"

#include <set>

#include "finmoe/error.h"
#include "model/adapter_rows.h"

namespace finmoe {

DecoderLayerImpl::DecoderLayerImpl(const ModelConfig& c, int64_t i, torch::TensorOptions options)
    : index(i) {
  input_layernorm =
      register_module("input_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps, options));
  self_attn = register_module("self_attn", Attention(c, options, c.attention_window(i)));
  post_attention_layernorm =
      register_module("post_attention_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps, options));
  if (c.is_moe() && c.moe_layers.at(size_t(i)))
    moe = register_module(c.model_type == "mixtral" ? "block_sparse_moe" : "mlp", Moe(c, options));
  else
    mlp = register_module("mlp", Mlp(c.hidden_size, c.intermediate_size, c.mlp_bias, options));
}

torch::Tensor DecoderLayerImpl::ffn(const torch::Tensor& x, std::vector<RouterOutput>* routers) {
  if (!moe) return mlp(x);
  if (!routers) return moe(x);
  RouterOutput r, concat;
  auto y = moe(x, &r, &concat);
  r.layer = index;
  routers->push_back(std::move(r));
  if (auto* sink = ConcatRouterSink::current(); sink && concat.logits.defined()) {
    concat.layer = index;
    sink->push_back(std::move(concat));
  }
  return y;
}

EmbeddingImpl::EmbeddingImpl(int64_t vocab, int64_t dim, torch::TensorOptions options) {
  weight = register_parameter("weight", torch::zeros({vocab, dim}, options), false);
}

torch::Tensor EmbeddingImpl::lookup(const torch::Tensor& ids, torch::Dtype dtype) const {
  if (!weight_scale.defined()) return torch::embedding(weight, ids);
  auto flat = ids.flatten();  // [N]
  auto rows = dequantize(weight.index_select(0, flat), weight_scale.index_select(0, flat), dtype);
  auto sizes = ids.sizes().vec();
  sizes.push_back(weight.size(1));
  return rows.view(sizes);  // [..., D]
}

BackboneImpl::BackboneImpl(const ModelConfig& c, torch::TensorOptions options) {
  embed_tokens = register_module("embed_tokens", Embedding(c.vocab_size, c.hidden_size, options));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) layers->push_back(DecoderLayer(c, i, options));
  norm = register_module("norm", RMSNorm(c.hidden_size, c.rms_norm_eps, options));
}

TransformerImpl::TransformerImpl(const ModelConfig& c, torch::TensorOptions opts)
    : config(c), options(opts) {
  model = register_module("model", Backbone(c, opts));
  if (!c.tie_word_embeddings)
    lm_head = register_module("lm_head", Linear(c.hidden_size, c.vocab_size, false, opts));
  for (const auto& m : *model->layers)
    layer_list.emplace_back(std::dynamic_pointer_cast<DecoderLayerImpl>(m));
  if (c.quantization) use_int8(*c.quantization);
}

void TransformerImpl::use_int8(const QuantizationConfig& q) {
  std::set<std::string> ignored(q.ignore.begin(), q.ignore.end());
  for (const auto& item : named_modules("", /*include_self=*/false)) {
    auto* linear = dynamic_cast<LinearImpl*>(item.value().get());
    auto* embedding = dynamic_cast<EmbeddingImpl*>(item.value().get());
    if (!linear && !embedding) continue;
    if (ignored.erase(item.key())) continue;
    if (linear) linear->use_int8(q);
    if (embedding) embedding->weight_scale = int8_layout(*embedding, embedding->weight, q);
  }
  if (!ignored.empty())
    throw Error("config.json: field 'quantization_config.ignore' names '" + *ignored.begin() +
                "', which is not a linear or embedding module of this " + config.model_type +
                " model");
}

const torch::Tensor& TransformerImpl::lm_head_weight() const {
  return lm_head ? lm_head->weight : model->embed_tokens->weight;
}

const torch::Tensor& TransformerImpl::lm_head_scale() const {
  return lm_head ? lm_head->weight_scale : model->embed_tokens->weight_scale;
}

torch::Tensor TransformerImpl::logits(const torch::Tensor& hidden) {
  return at_least_float32(
      finmoe::linear(model->norm(hidden), lm_head_weight(), torch::Tensor(), lm_head_scale()));
}

namespace {

// Position of each token within its document: t - (index where its document starts).
torch::Tensor document_positions(const torch::Tensor& doc) {  // [B,T] -> [B,T]
  const int64_t T = doc.size(1);
  auto t = torch::arange(T, doc.options().dtype(torch::kInt64)).expand_as(doc);
  auto starts = torch::ones_like(doc, torch::kBool);
  if (T > 1) starts.narrow(1, 1, T - 1).copy_(doc.narrow(1, 1, T - 1) != doc.narrow(1, 0, T - 1));
  auto start_idx = std::get<0>(torch::where(starts, t, torch::zeros_like(t)).cummax(1));
  return t - start_idx;
}

}  // namespace

// Keys a query may see under a sliding window: key position > query position - window.
static torch::Tensor window_overlay(const torch::Tensor& qpos, const torch::Tensor& kpos, int64_t window) {
  return kpos > qpos - window;
}

torch::Tensor TransformerImpl::forward(const torch::Tensor& tokens, const ForwardOptions& fo) {
  return logits(residual(tokens, fo));  // [B,T,V]
}

torch::Tensor TransformerImpl::final_hidden(const torch::Tensor& tokens, const ForwardOptions& fo) {
  return model->norm(residual(tokens, fo));  // [B,T,D]
}

torch::Tensor TransformerImpl::residual(const torch::Tensor& tokens, const ForwardOptions& fo) {
  if (tokens.dim() != 2) throw Error("forward: tokens must be [B,T], got " +
                                     std::to_string(tokens.dim()) + " dims");
  const int64_t B = tokens.size(0), T = tokens.size(1);
  auto ids = tokens.to(torch::kInt64);
  torch::Tensor positions, mask;
  if (fo.document_ids.defined()) {
    auto doc = fo.document_ids.to(ids.device()).to(torch::kInt64);
    if (doc.sizes() != tokens.sizes()) throw Error("forward: document_ids must have tokens' shape");
    positions = document_positions(doc);
    auto same = doc.unsqueeze(2) == doc.unsqueeze(1);  // [B,T,T]
    auto causal = torch::ones({T, T}, same.options()).tril();
    mask = same.logical_and(causal).unsqueeze(1);  // [B,1,T,T]
  } else {
    positions = torch::arange(T, ids.options()).unsqueeze(0).expand({B, T});
  }
  // Sliding layers: the window counts sequence positions (a packed document
  // starts its own, so the overlay on token indices is the same thing).
  torch::Tensor window_mask;
  if (config.sliding_window && T > *config.sliding_window) {
    auto t = torch::arange(T, ids.options());
    auto win = window_overlay(t.unsqueeze(1), t.unsqueeze(0), *config.sliding_window);  // [T,T]
    auto causal = torch::ones({T, T}, win.options()).tril();
    window_mask = mask.defined() ? mask.logical_and(win) : win.logical_and(causal).view({1, 1, T, T});
  }
  auto x = model->embed_tokens->lookup(ids, options.dtype().toScalarType());  // [B,T,D]
  const Rope& rope = layer_list.front()->self_attn->rope();
  auto [cos, sin] = rope.cos_sin(positions);  // [B,T,d]
  for (auto& layer : layer_list) {
    const auto& m = layer->self_attn->window() > 0 && window_mask.defined() ? window_mask : mask;
    x = x + layer->self_attn(layer->input_layernorm(x), cos, sin, m);
    x = x + layer->ffn(layer->post_attention_layernorm(x), fo.router_outputs);
  }
  return x;
}

void StepBatch::validate(const KVCache& cache) const {
  const int64_t N = static_cast<int64_t>(tokens.size());
  if (static_cast<int64_t>(positions.size()) != N)
    throw Error("StepBatch: positions has " + std::to_string(positions.size()) +
                " entries, tokens " + std::to_string(N));
  int64_t covered = 0;
  for (size_t s = 0; s < seqs.size(); ++s) {
    const Seq& q = seqs[s];
    const std::string where = "StepBatch.seqs[" + std::to_string(s) + "]";
    if (q.q_start != covered || q.q_len <= 0)
      throw Error(where + ": sequences must be contiguous and non-empty in tokens");
    covered += q.q_len;
    if (covered > N) throw Error(where + ": q_start + q_len exceeds the number of tokens");
    const int64_t last = positions[q.q_start + q.q_len - 1];
    if (q.context_len != last + 1)
      throw Error(where + ": context_len must be the last position + 1");
    const int64_t blocks_needed = (q.context_len + cache.block_size() - 1) / cache.block_size();
    if (static_cast<int64_t>(q.block_table.size()) < blocks_needed)
      throw Error(where + ": block_table has " + std::to_string(q.block_table.size()) +
                  " blocks, context needs " + std::to_string(blocks_needed));
    for (int64_t b = 0; b < blocks_needed; ++b)
      if (q.block_table[b] < 0 || q.block_table[b] >= cache.num_blocks())
        throw Error(where + ": block id " + std::to_string(q.block_table[b]) + " out of range");
    for (int64_t i = 1; i < q.q_len; ++i)
      if (positions[q.q_start + i] != positions[q.q_start + i - 1] + 1)
        throw Error(where + ": positions of a sequence must be consecutive");
  }
  if (covered != N) throw Error("StepBatch: tokens not covered by any sequence");
}

torch::Tensor TransformerImpl::step(const StepBatch& batch, KVCache& cache) {
  torch::NoGradGuard no_grad;
  batch.validate(cache);
  if (cuda_kernels_apply(cache)) {
#if FINMOE_HAVE_CUDA
    // a graph replays one batch's kernels: rows under serving adapters run eagerly
    if (cuda_graphs_enabled() && current_adapter_rows() == nullptr)
      if (auto logits = step_graph(batch, cache); logits.defined()) return logits;
#endif
    return step_paged(batch, cache);
  }
  const int64_t N = static_cast<int64_t>(batch.tokens.size());
  const int64_t bs = cache.block_size();
  const auto dev = options.device();
  auto cpu_long = torch::TensorOptions().dtype(torch::kInt64);

  StepPlan plan;
  std::vector<int64_t> write(N);
  std::vector<int64_t> last_rows;
  for (const auto& s : batch.seqs) {
    for (int64_t i = 0; i < s.q_len; ++i) {
      const int64_t pos = batch.positions[s.q_start + i];
      write[s.q_start + i] = int64_t(s.block_table[pos / bs]) * bs + pos % bs;
    }
    std::vector<int64_t> read(s.context_len);
    for (int64_t p = 0; p < s.context_len; ++p) read[p] = int64_t(s.block_table[p / bs]) * bs + p % bs;
    StepPlan::Seq ps;
    ps.q_start = s.q_start;
    ps.q_len = s.q_len;
    ps.read_slots = torch::tensor(read, cpu_long).to(dev);
    const int64_t first = batch.positions[s.q_start];
    if (!(s.q_len == 1 && first == s.context_len - 1)) {
      // query at position p sees keys 0..p
      auto qpos = torch::arange(first, first + s.q_len, cpu_long).unsqueeze(1);
      auto kpos = torch::arange(s.context_len, cpu_long).unsqueeze(0);
      ps.mask = (kpos <= qpos).view({1, 1, s.q_len, s.context_len}).to(dev);
    }
    if (config.sliding_window && s.context_len > *config.sliding_window) {
      auto qpos = torch::arange(first, first + s.q_len, cpu_long).unsqueeze(1);
      auto kpos = torch::arange(s.context_len, cpu_long).unsqueeze(0);
      auto m = (kpos <= qpos).logical_and(window_overlay(qpos, kpos, *config.sliding_window));
      ps.window_mask = m.view({1, 1, s.q_len, s.context_len}).to(dev);
    }
    plan.seqs.push_back(std::move(ps));
    last_rows.push_back(s.q_start + s.q_len - 1);
  }
  plan.write_slots = torch::tensor(write, cpu_long).to(dev);
  auto positions = torch::tensor(std::vector<int64_t>(batch.positions.begin(), batch.positions.end()),
                                 cpu_long).to(dev);
  auto ids = torch::tensor(std::vector<int64_t>(batch.tokens.begin(), batch.tokens.end()), cpu_long)
                 .to(dev);
  torch::Tensor rows;
  if (!batch.all_logits) rows = torch::tensor(last_rows, cpu_long).to(dev);
  return step_layers(ids, positions, plan, cache, rows);
}

bool TransformerImpl::cuda_kernels_apply(KVCache& cache) const {
#if FINMOE_HAVE_CUDA
  if (!options.device().is_cuda() || !cuda_attention_kernels_enabled() || config.is_mla())
    return false;
  const auto dtype = options.dtype().toScalarType();
  for (size_t l = 0; l < layer_list.size(); ++l) {
    const auto& attn = layer_list[l]->self_attn;
    if (!cuda_attention_supports(dtype, config.head_dim, attn->rope().rotary_dim())) return false;
    for (const auto& t : cache.layer(int64_t(l)))
      if (t.scalar_type() != dtype || !t.is_contiguous()) return false;
  }
  return true;
#else
  return false;  // a CPU libtorch has no CUDA tensors
#endif
}

// The CUDA kernels' step: the whole plan in one int32 transfer.
torch::Tensor TransformerImpl::step_paged(const StepBatch& batch, KVCache& cache) {
  const int64_t bs = cache.block_size();
  int64_t max_context = 0, max_q = 0;
  for (const auto& s : batch.seqs) {
    max_context = std::max(max_context, s.context_len);
    max_q = std::max(max_q, s.q_len);
  }
  // a work item of q_tile queries sizes the kernel's shared memory: no larger than needed
  const int64_t q_tile =
      std::min(max_q, paged_q_tile(config.num_attention_heads, config.num_key_value_heads));
  const PagedLayout layout = paged_layout(batch, bs, q_tile);
  auto buffer = pack_paged_batch(batch, layout, bs, q_tile, /*pinned=*/true)
                    .to(options.device(), /*non_blocking=*/true);
  StepPlan plan;
  plan.paged = view_paged_batch(buffer, layout, bs, q_tile, max_context);
  torch::Tensor rows;  // each sequence's last token
  if (!batch.all_logits && layout.n_seqs != layout.n_tokens) {
    auto seqs = plan.paged.seqs.to(torch::kInt64);
    rows = seqs.select(1, 0) + seqs.select(1, 1) - 1;  // [S]
  }
  return step_layers(plan.paged.ids, plan.paged.positions, plan, cache, rows);
}

torch::Tensor TransformerImpl::step_layers(const torch::Tensor& ids, const torch::Tensor& positions,
                                           StepPlan& plan, KVCache& cache,
                                           const torch::Tensor& rows) {
  std::tie(plan.cos, plan.sin) = layer_list.front()->self_attn->rope().cos_sin(positions);
  auto x = model->embed_tokens->lookup(ids, options.dtype().toScalarType());  // [N,D]
  // x is the residual stream, owned here: each residual add is fused with the
  // norm that follows it (the last one with nothing: the final norm runs on
  // the selected rows only)
  torch::Tensor h = layer_list.front()->input_layernorm(x);
  for (size_t l = 0; l < layer_list.size(); ++l) {
    auto& layer = layer_list[l];
    auto attn = layer->self_attn->step(h, plan, cache.layer(int64_t(l)));
    auto ffn = layer->ffn(layer->post_attention_layernorm->add_forward(x, attn));
    if (l + 1 < layer_list.size())
      h = layer_list[l + 1]->input_layernorm->add_forward(x, ffn);
    else
      x = x + ffn;
  }
  if (rows.defined()) x = x.index_select(0, rows);
  return logits(x);
}

// ---- Transformer ------------------------------------------------------------

Transformer::Transformer(const ModelConfig& config, torch::Dtype dtype, torch::Device device)
    : impl_(std::make_shared<TransformerImpl>(
          config, torch::TensorOptions().dtype(dtype).device(device))) {}
Transformer::~Transformer() = default;
Transformer::Transformer(Transformer&&) noexcept = default;
Transformer& Transformer::operator=(Transformer&&) noexcept = default;

const ModelConfig& Transformer::config() const { return impl_->config; }
torch::Dtype Transformer::dtype() const { return impl_->options.dtype().toScalarType(); }
torch::Device Transformer::device() const { return impl_->options.device(); }
torch::nn::Module& Transformer::module() { return *impl_; }

torch::Tensor Transformer::forward(const torch::Tensor& tokens, const ForwardOptions& options) {
  return impl_->forward(tokens.to(device()), options);
}
torch::Tensor Transformer::step(const StepBatch& batch, KVCache& cache) {
  return impl_->step(batch, cache);
}

CacheSpec Transformer::cache_spec(int64_t layer) const {
  return impl_->layer_list.at(static_cast<size_t>(layer))->self_attn->cache_spec();
}

ParamCount Transformer::param_count() const {
  ParamCount pc;
  for (const auto& [name, t] : named_parameters()) {
    if (name.ends_with(".weight_scale")) continue;  // int8 scales: not parameters of the model
    pc.total += t.numel();
    if (name == "model.embed_tokens.weight" || name == "lm_head.weight") pc.embedding += t.numel();
  }
  // routed experts a token does not use
  const ModelConfig& c = config();
  pc.active = pc.total - (c.param_count() - c.active_param_count());
  return pc;
}

std::vector<std::pair<std::string, torch::Tensor>> Transformer::named_parameters() const {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& item : impl_->named_parameters(/*recurse=*/true))
    out.emplace_back(item.key(), item.value());
  return out;
}

// ---- KVCache ------------------------------------------------------------------

KVCache::KVCache(const Transformer& model, int64_t num_blocks, int64_t block_size,
                 std::optional<torch::Dtype> dtype)
    : num_blocks_(num_blocks), block_size_(block_size) {
  if (num_blocks <= 0 || block_size <= 0)
    throw Error("KVCache: num_blocks and block_size must be positive");
  auto opts = torch::TensorOptions().dtype(dtype.value_or(model.dtype())).device(model.device());
  for (int64_t l = 0; l < model.config().num_hidden_layers; ++l) {
    std::vector<torch::Tensor> tensors;
    for (const auto& shape : model.cache_spec(l)) {
      std::vector<int64_t> full{num_blocks, block_size};
      full.insert(full.end(), shape.begin(), shape.end());
      tensors.push_back(torch::zeros(full, opts));
    }
    layers_.push_back(std::move(tensors));
  }
}

int64_t KVCache::bytes_per_token() const {
  int64_t bytes = 0;
  for (const auto& layer : layers_)
    for (const auto& t : layer) bytes += t[0][0].numel() * static_cast<int64_t>(t.element_size());
  return bytes;
}

int64_t kv_cache_bytes_per_token(const ModelConfig& config, int64_t element_bytes) {
  return config.kv_values_per_token() * element_bytes;
}

}  // namespace finmoe
