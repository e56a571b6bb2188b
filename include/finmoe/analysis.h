#pragma once
// Expert analysis of MoE checkpoints (`finmoe experts`, `finmoe esft score`):
//
//   RoutingStats        per-layer, per-expert routing statistics accumulated
//                       over RouterOutputs: selection ratio, gate scores, the
//                       two ESFT relevance scores (ESFT §3.3, Eq. 6-7), load
//                       imbalance and entropy
//   expert_similarity   mean pairwise cosine similarity of the experts'
//                       flattened weights, per MoE layer (FineRMoE App. D)
//   tokenize_corpus     a text / JSONL file -> fixed-length token chunks
//   write_expert_report routing.{json,csv}, similarity.{json,csv} and SVG plots
//
// Definitions (T = tokens of a layer, K = experts per token, E = experts):
//   g_{e,t}  the gate value of expert e for token t: its combination weight
//            (RouterOutput::weights) when e is among the token's selected
//            experts (RouterOutput::indices), else 0. This is what ESFT
//            records from the router (DeepSeekMoE: s_{e,t} if selected, else 0).
//   s_{e,t}  softmax of the router logits over all E experts (the P_i of the
//            load-balancing loss), whether or not e was selected.
//   load_e   tokens that selected e; sum_e load_e = K*T.
//
// Thread safety: a RoutingStats is mutated by add() from one thread at a time.
#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <vector>

namespace finmoe {

struct RouterOutput;
class Transformer;
class Tokenizer;

// One expert's statistics in one layer.
struct ExpertRouting {
  int64_t load = 0;             // tokens whose selected experts include e
  double selection_ratio = 0;   // load / T, in [0, 1]; sums to K over experts
  double mean_gate = 0;         // (1/T) sum_t g_{e,t}
  double mean_router_prob = 0;  // (1/T) sum_t s_{e,t}; sums to 1 over experts
  // (1/T) sum_t s_{e,t}·1[e selected for t]: the gate value of a router that
  // does not renormalise its top-k (DeepSeek-V2-Lite, ESFT's g_{e,t})
  double mean_selected_prob = 0;
  // ESFT Eq. 6, average gate score: (1/N_s) sum_j (1/L_j) sum_{t in seq j} g_{e,t}
  double esft_gate = 0;
  // ESFT Eq. 7, token selection ratio: (1/N_s) sum_j (1/L_j) sum_{t in seq j} 1[e selected]/K
  double esft_token = 0;
  // The relevance scores R of ESFT Eq. 8: each score divided by its sum over the
  // layer's experts, so a layer's shares sum to 1 (ESFT's expert-config script).
  double esft_gate_share = 0;
  double esft_token_share = 0;
};

// One MoE layer's statistics.
struct LayerRouting {
  int64_t layer = -1;                  // decoder layer index
  int64_t tokens = 0;                  // T
  int64_t sequences = 0;               // N_s
  int64_t top_k = 0;                   // K
  std::vector<ExpertRouting> experts;  // [E]
  double imbalance = 0;  // load_imbalance(load): 1 = balanced, E = one expert takes every token
  double entropy = 0;    // normalized_entropy(load): 1 = uniform, 0 = one expert
};

// max_e load_e / mean_e load_e; 0 for an empty or all-zero load.
double load_imbalance(std::span<const double> load);
// -sum_e p_e ln p_e / ln E with p = load / sum(load); 0 when E < 2 or the load is all zero.
double normalized_entropy(std::span<const double> load);

// Accumulates routing statistics over batches of RouterOutputs (one per MoE
// layer per forward call). Sums are kept in double; results() derives the ratios.
class RoutingStats {
 public:
  // num_experts: E; the router outputs' widths are checked against it.
  explicit RoutingStats(int64_t num_experts);

  // One layer's routing of a batch: its rows are sequences of `seq_len`
  // consecutive tokens (rows % seq_len == 0); seq_len <= 0 = one sequence.
  // Throws Error on shapes that do not fit (logits [T, E], indices and weights [T, K]).
  void add(const RouterOutput& router, int64_t seq_len = 0);
  // Every layer of one forward call.
  void add(const std::vector<RouterOutput>& routers, int64_t seq_len = 0);

  int64_t num_experts() const { return num_experts_; }
  // Tokens seen by the first MoE layer (every layer sees the same tokens).
  int64_t tokens() const;
  // The MoE layers seen, in layer order.
  std::vector<LayerRouting> results() const;

 private:
  struct Acc {
    int64_t tokens = 0, sequences = 0, top_k = 0;
    std::vector<double> load, gate, prob, sel_prob, esft_gate, esft_token;  // [E] sums
  };
  int64_t num_experts_;
  std::map<int64_t, Acc> layers_;
};

// ---- expert weight similarity (FineRMoE App. D) ---------------------------

struct LayerSimilarity {
  int64_t layer = -1;
  int64_t num_experts = 0;  // E
  int64_t params_per_expert = 0;
  double mean = 0;             // mean cosine over the E*(E-1)/2 pairs i < j
  double min = 0, max = 0;     // over the same pairs
  std::vector<double> matrix;  // [E*E] row-major, cos(expert i, expert j); diagonal 1
};

// For every MoE layer of `model`: each routed expert's parameters (every
// `...experts.{e}.*` tensor, in name order) flattened into one vector, and the
// cosine similarity of each pair. Shared experts are not routed and not included.
// Throws Error when a layer's experts do not have the same tensors and shapes.
std::vector<LayerSimilarity> expert_similarity(const Transformer& model);

// ---- corpus ---------------------------------------------------------------

struct CorpusOptions {
  int64_t seq_len = 256;       // tokens per chunk
  int64_t max_tokens = 20000;  // stop after this many tokens; <= 0 = whole file
};

// Token chunks of a corpus; document_ids[i] numbers the document each token
// comes from, so attention can stay inside documents (ForwardOptions::document_ids).
struct TokenChunk {
  std::vector<int32_t> tokens;
  std::vector<int32_t> document_ids;  // same length, starting at 0 in each chunk
};

// A `.jsonl` file is one document per line: {"text": "..."} or {"messages":
// [{"role", "content"}, ...]} (rendered with the tokenizer's chat template).
// Any other file is plain text, one document. Documents are tokenized without
// special tokens, concatenated (each is a separate document in the mask) and cut
// into chunks of seq_len; the last chunk may be shorter. Throws Error naming
// the file (and line) when it cannot be read or parsed, or holds no tokens.
std::vector<TokenChunk> tokenize_corpus(const std::string& path, const Tokenizer& tokenizer,
                                        const CorpusOptions& options = {});

// Runs the model over the chunks (one forward per chunk, no autograd) and
// accumulates its routing; each chunk is one ESFT sequence. `progress`, when
// set, is called with the tokens done after every chunk.
RoutingStats collect_routing(Transformer& model, const std::vector<TokenChunk>& chunks,
                             const std::function<void(int64_t)>& progress = {});

// ---- report ---------------------------------------------------------------

struct ExpertReport {
  std::string model;  // model directory, for the report header
  std::string model_type;
  std::string data;  // corpus path
  std::vector<LayerRouting> routing;
  std::vector<LayerSimilarity> similarity;
};

// Writes into `dir` (created if missing), each file atomically:
//   routing.json, routing.csv (a row per layer x expert), similarity.json (per
//   layer mean/min/max; full matrices of the first and last MoE layer),
//   similarity.csv (a row per layer), load_heatmap.svg (layers x experts
//   selection ratio), similarity.svg (per-layer mean similarity and the
//   first/last layer matrices). Returns the paths written.
std::vector<std::string> write_expert_report(const std::string& dir, const ExpertReport& report);

// A fixed-width per-layer summary table for a terminal.
std::string format_expert_summary(const ExpertReport& report);

}  // namespace finmoe
