// Routing statistics and expert similarity (include/finmoe/analysis.h).
#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <map>

#include <torch/torch.h>

#include "finmoe/analysis.h"
#include "finmoe/config.h"
#include "finmoe/error.h"
#include "finmoe/model.h"
#include "finmoe/tokenizer.h"

namespace finmoe {

double load_imbalance(std::span<const double> load) {
  if (load.empty()) return 0.0;
  double sum = 0, mx = 0;
  for (double v : load) sum += v, mx = std::max(mx, v);
  return sum > 0 ? mx / (sum / double(load.size())) : 0.0;
}

double normalized_entropy(std::span<const double> load) {
  if (load.size() < 2) return 0.0;
  double sum = 0;
  for (double v : load) sum += v;
  if (sum <= 0) return 0.0;
  double h = 0;
  for (double v : load)
    if (v > 0) h -= (v / sum) * std::log(v / sum);
  return h / std::log(double(load.size()));
}

// ---- RoutingStats ----------------------------------------------------------

RoutingStats::RoutingStats(int64_t num_experts) : num_experts_(num_experts) {
  if (num_experts < 1)
    throw Error("RoutingStats: num_experts must be positive, got " + std::to_string(num_experts));
}

void RoutingStats::add(const RouterOutput& r, int64_t seq_len) {
  const std::string where = "router output of layer " + std::to_string(r.layer);
  if (!r.logits.defined() || !r.indices.defined() || !r.weights.defined())
    throw Error(where + ": logits, indices and weights must all be set");
  const int64_t E = num_experts_;
  if (r.logits.dim() != 2 || r.logits.size(1) != E)
    throw Error(where + ": logits must be [T, " + std::to_string(E) + "]");
  const int64_t T = r.logits.size(0);
  if (r.indices.dim() != 2 || r.indices.size(0) != T ||
      !r.weights.sizes().equals(r.indices.sizes()))
    throw Error(where + ": indices and weights must both be [T, K] with T = " + std::to_string(T));
  const int64_t K = r.indices.size(1);
  if (K < 1 || K > E) throw Error(where + ": K = " + std::to_string(K) + " outside [1, E]");
  if (T == 0) return;
  const int64_t L = seq_len > 0 ? seq_len : T;
  if (T % L != 0)
    throw Error(where + ": " + std::to_string(T) + " rows are not whole sequences of " +
                std::to_string(L));
  auto idx = r.indices.to(torch::kCPU, torch::kInt64);
  if (idx.min().item<int64_t>() < 0 || idx.max().item<int64_t>() >= E)
    throw Error(where + ": an expert index is outside [0, " + std::to_string(E) + ")");

  Acc& a = layers_[r.layer];
  if (a.load.empty()) {
    a.top_k = K;
    for (auto* v : {&a.load, &a.gate, &a.prob, &a.sel_prob, &a.esft_gate, &a.esft_token})
      v->assign(size_t(E), 0.0);
  } else if (a.top_k != K) {
    throw Error(where + ": K changed from " + std::to_string(a.top_k) + " to " + std::to_string(K));
  }
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  auto ones = torch::ones({T, K}, f64);
  auto sel = torch::zeros({T, E}, f64).scatter_add_(1, idx, ones);  // [T, E] 0/1
  auto g = torch::zeros({T, E}, f64)
               .scatter_add_(1, idx, r.weights.to(torch::kCPU, torch::kFloat64));  // [T, E]
  auto s = torch::softmax(r.logits.to(torch::kCPU, torch::kFloat64), -1);          // [T, E]
  const int64_t S = T / L;
  // ESFT averages within each sequence first, then over sequences
  auto gate_seq = g.view({S, L, E}).mean(1).sum(0);                   // [E]
  auto token_seq = (sel / double(K)).view({S, L, E}).mean(1).sum(0);  // [E]
  auto add_to = [](std::vector<double>& acc, const torch::Tensor& v) {
    auto c = v.contiguous();
    const double* p = c.data_ptr<double>();
    for (size_t e = 0; e < acc.size(); ++e) acc[e] += p[e];
  };
  add_to(a.load, sel.sum(0));
  add_to(a.gate, g.sum(0));
  add_to(a.prob, s.sum(0));
  add_to(a.sel_prob, (s * sel).sum(0));
  add_to(a.esft_gate, gate_seq);
  add_to(a.esft_token, token_seq);
  a.tokens += T;
  a.sequences += S;
}

void RoutingStats::add(const std::vector<RouterOutput>& routers, int64_t seq_len) {
  for (const auto& r : routers) add(r, seq_len);
}

int64_t RoutingStats::tokens() const {
  return layers_.empty() ? 0 : layers_.begin()->second.tokens;
}

std::vector<LayerRouting> RoutingStats::results() const {
  std::vector<LayerRouting> out;
  for (const auto& [layer, a] : layers_) {
    LayerRouting l;
    l.layer = layer;
    l.tokens = a.tokens;
    l.sequences = a.sequences;
    l.top_k = a.top_k;
    const double T = double(std::max<int64_t>(a.tokens, 1)),
                 S = double(std::max<int64_t>(a.sequences, 1));
    double gate_total = 0, token_total = 0;
    for (size_t e = 0; e < a.load.size(); ++e)
      gate_total += a.esft_gate[e], token_total += a.esft_token[e];
    for (size_t e = 0; e < a.load.size(); ++e) {
      ExpertRouting x;
      x.load = int64_t(std::llround(a.load[e]));
      x.selection_ratio = a.load[e] / T;
      x.mean_gate = a.gate[e] / T;
      x.mean_router_prob = a.prob[e] / T;
      x.mean_selected_prob = a.sel_prob[e] / T;
      x.esft_gate = a.esft_gate[e] / S;
      x.esft_token = a.esft_token[e] / S;
      x.esft_gate_share = gate_total > 0 ? a.esft_gate[e] / gate_total : 0.0;
      x.esft_token_share = token_total > 0 ? a.esft_token[e] / token_total : 0.0;
      l.experts.push_back(x);
    }
    l.imbalance = load_imbalance(a.load);
    l.entropy = normalized_entropy(a.load);
    out.push_back(std::move(l));
  }
  return out;
}

// ---- expert similarity -------------------------------------------------------

namespace {

// "model.layers.{l}.<...>.experts.{e}.<suffix>" -> (l, e, suffix); false for other names.
bool parse_expert_name(const std::string& name, int64_t& layer, int64_t& expert,
                       std::string& suffix) {
  static const std::string prefix = "model.layers.", mark = ".experts.";
  if (!name.starts_with(prefix)) return false;
  const size_t p = name.find(mark);
  if (p == std::string::npos) return false;
  try {
    size_t used = 0;
    layer = std::stoll(name.substr(prefix.size()), &used);
    const std::string rest = name.substr(p + mark.size());
    expert = std::stoll(rest, &used);
    if (used >= rest.size() || rest[used] != '.') return false;
    suffix = rest.substr(used + 1);
  } catch (const std::exception&) {
    return false;
  }
  return true;
}

}  // namespace

std::vector<LayerSimilarity> expert_similarity(const Transformer& model) {
  const int64_t E = model.config().num_experts;
  // layer -> tensor suffix -> the E experts' tensors
  std::map<int64_t, std::map<std::string, std::vector<torch::Tensor>>> layers;
  for (const auto& [name, t] : model.named_parameters()) {
    int64_t l = 0, e = 0;
    std::string suffix;
    if (!parse_expert_name(name, l, e, suffix)) continue;
    if (e < 0 || e >= E)
      throw Error(name + ": expert index outside [0, " + std::to_string(E) + ")");
    auto& slot = layers[l][suffix];
    slot.resize(size_t(E));
    slot[size_t(e)] = t;
  }
  std::vector<LayerSimilarity> out;
  torch::NoGradGuard no_grad;
  for (const auto& [layer, tensors] : layers) {
    LayerSimilarity ls;
    ls.layer = layer;
    ls.num_experts = E;
    auto gram = torch::zeros({E, E}, torch::kFloat64);  // sum over tensors of <w_i, w_j>
    for (const auto& [suffix, ts] : tensors) {
      const std::string what = "model.layers." + std::to_string(layer) + ".*.experts.{e}." + suffix;
      for (int64_t e = 0; e < E; ++e)
        if (!ts[size_t(e)].defined())
          throw Error(what + ": missing for expert " + std::to_string(e));
      const int64_t n = ts[0].numel();
      for (const auto& t : ts)
        if (!t.sizes().equals(ts[0].sizes())) throw Error(what + ": experts have different shapes");
      ls.params_per_expert += n;
      // columns in chunks so a real model's layer is never copied whole to float64
      const int64_t chunk = std::max<int64_t>(1, (int64_t(1) << 24) / E);
      for (int64_t off = 0; off < n; off += chunk) {
        const int64_t len = std::min(chunk, n - off);
        std::vector<torch::Tensor> rows;
        for (const auto& t : ts) rows.push_back(t.detach().reshape({-1}).slice(0, off, off + len));
        auto X = torch::stack(rows).to(torch::kCPU, torch::kFloat64);  // [E, len]
        gram += X.mm(X.t());                                           // [E, E]
      }
    }
    auto norm = gram.diagonal().sqrt();                  // [E]
    auto denom = norm.unsqueeze(1) * norm.unsqueeze(0);  // [E, E]
    auto cos = torch::where(denom > 0, gram / denom, torch::zeros_like(gram));
    cos.fill_diagonal_(1.0);
    cos = cos.contiguous();
    const double* c = cos.data_ptr<double>();
    ls.matrix.assign(c, c + E * E);
    double sum = 0, mn = std::numeric_limits<double>::infinity(), mx = -mn;
    int64_t pairs = 0;
    for (int64_t i = 0; i < E; ++i)
      for (int64_t j = i + 1; j < E; ++j) {
        const double v = c[i * E + j];
        sum += v, mn = std::min(mn, v), mx = std::max(mx, v), ++pairs;
      }
    ls.mean = pairs ? sum / double(pairs) : 1.0;
    ls.min = pairs ? mn : 1.0;
    ls.max = pairs ? mx : 1.0;
    out.push_back(std::move(ls));
  }
  return out;
}

// ---- corpus ------------------------------------------------------------------

namespace {

// Appends `ids` as document `doc` to the stream, up to `limit` tokens in all.
void append_doc(std::vector<int32_t>& tokens, std::vector<int32_t>& docs,
                const std::vector<int32_t>& ids, int32_t doc, int64_t limit) {
  for (int32_t id : ids) {
    if (limit > 0 && int64_t(tokens.size()) >= limit) return;
    tokens.push_back(id);
    docs.push_back(doc);
  }
}

}  // namespace

std::vector<TokenChunk> tokenize_corpus(const std::string& path, const Tokenizer& tok,
                                        const CorpusOptions& opt) {
  if (opt.seq_len < 1) throw Error("seq_len must be positive, got " + std::to_string(opt.seq_len));
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open the data file");
  const int64_t limit = opt.max_tokens;
  auto full = [&](const std::vector<int32_t>& t) {
    return limit > 0 && int64_t(t.size()) >= limit;
  };
  std::vector<int32_t> tokens, docs;
  std::string line;
  if (path.ends_with(".jsonl")) {
    int64_t n = 0;
    int32_t doc = 0;
    while (!full(tokens) && std::getline(in, line)) {
      ++n;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      const std::string where = path + ":" + std::to_string(n);
      const nlohmann::json rec = parse_json(line, where);
      std::string text;
      if (rec.is_object() && rec.contains("text") && rec["text"].is_string()) {
        text = rec["text"].get<std::string>();
      } else if (rec.is_object() && rec.contains("messages") && rec["messages"].is_array()) {
        std::vector<ChatMessage> msgs;
        for (const auto& m : rec["messages"]) {
          if (!m.is_object() || !m.contains("role") || !m["role"].is_string() ||
              !m.contains("content") || !m["content"].is_string())
            throw Error(where + ": each message needs string fields 'role' and 'content'");
          msgs.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
        }
        text = render_chat(tok, msgs, /*add_generation_prompt=*/false);
      } else {
        throw Error(where +
                    ": expected an object with a string field 'text' or an array 'messages'");
      }
      append_doc(tokens, docs, tok.encode(text, false), doc++, limit);
    }
  } else {
    // One document, encoded in blocks of whole lines so a large file is read
    // only as far as max_tokens needs.
    std::string block;
    auto flush = [&] {
      append_doc(tokens, docs, tok.encode(block, false), 0, limit);
      block.clear();
    };
    while (!full(tokens) && std::getline(in, line)) {
      block += line;
      block += '\n';
      if (block.size() >= (size_t(1) << 16)) flush();
    }
    if (!full(tokens) && !block.empty()) flush();
  }
  if (in.bad()) throw Error(path + ": read error");
  if (tokens.empty()) throw Error(path + ": no tokens (empty data file?)");

  std::vector<TokenChunk> chunks;
  for (size_t off = 0; off < tokens.size(); off += size_t(opt.seq_len)) {
    const size_t end = std::min(tokens.size(), off + size_t(opt.seq_len));
    TokenChunk c;
    c.tokens.assign(tokens.begin() + long(off), tokens.begin() + long(end));
    const int32_t first = docs[off];
    for (size_t i = off; i < end; ++i) c.document_ids.push_back(docs[i] - first);
    chunks.push_back(std::move(c));
  }
  return chunks;
}

// ---- routing over a corpus -----------------------------------------------------

RoutingStats collect_routing(Transformer& model, const std::vector<TokenChunk>& chunks,
                             const std::function<void(int64_t)>& progress) {
  const ModelConfig& cfg = model.config();
  if (!cfg.is_moe())
    throw Error("model_type '" + cfg.model_type + "' has no routed experts (num_experts = 0)");
  RoutingStats stats(cfg.num_experts);
  torch::NoGradGuard no_grad;
  constexpr size_t kBatch = 8;  // chunks of equal length per forward
  int64_t done = 0;
  for (size_t i = 0; i < chunks.size();) {
    const size_t L = chunks[i].tokens.size();
    size_t j = i;
    std::vector<int64_t> ids, docs;
    bool multi_doc = false;
    while (j < chunks.size() && j - i < kBatch && chunks[j].tokens.size() == L) {
      for (size_t t = 0; t < L; ++t) {
        const int32_t id = chunks[j].tokens[t];
        if (id < 0 || id >= cfg.vocab_size)
          throw Error("token " + std::to_string(id) + " outside the model's vocabulary of " +
                      std::to_string(cfg.vocab_size));
        ids.push_back(id);
        docs.push_back(chunks[j].document_ids[t]);
        multi_doc |= chunks[j].document_ids[t] != 0;
      }
      ++j;
    }
    const int64_t B = int64_t(j - i);
    auto tokens =
        torch::tensor(ids, torch::kInt64).view({B, int64_t(L)}).to(model.device());  // [B, L]
    std::vector<RouterOutput> routers;
    ForwardOptions fo;
    fo.router_outputs = &routers;
    if (multi_doc)
      fo.document_ids = torch::tensor(docs, torch::kInt64).view({B, int64_t(L)}).to(model.device());
    model.forward(tokens, fo);
    stats.add(routers, int64_t(L));  // rows are B sequences of L tokens
    done += B * int64_t(L);
    if (progress) progress(done);
    i = j;
  }
  return stats;
}

}  // namespace finmoe
