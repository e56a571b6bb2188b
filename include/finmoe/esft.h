#pragma once
// Expert-Specialized Fine-Tuning (ESFT, Wang et al. 2024, §3.3 and §6.3):
//
//   score   route a sample of the task's tokens through the model and rate every
//           routed expert of every MoE layer by its average gate score (ESFT-Gate,
//           Eq. 6) and its token selection ratio (ESFT-Token, Eq. 7)
//   select  per layer, the top-scored experts until their cumulative score
//           reaches p (Eq. 8) -> an ExpertConfig (the ESFT repo's expert_cfg.json)
//   train   only the selected routed experts; optionally the shared experts and/or
//           every non-expert module (§6.3); router, attention, norms and
//           embeddings stay frozen otherwise
//   save    a delta checkpoint with only the trained tensors, the expert config
//           and the base model's path (docs/formats/esft.md); load_model() on the
//           delta directory gives base + delta as one model
//
// Scores (docs/esft.md): with g_{e,t} the gate value of expert e for token t
// when selected (else 0) and K experts per token, pooled over the T
// sampled tokens of a layer and normalised so each layer sums to 1 over its experts:
//   gate_score_e  = sum_t g_{e,t} / sum_{e',t} g_{e',t}
//   token_score_e = sum_t 1[e selected for t] / (K*T)
// For sequences of equal length these are Eq. 6 and Eq. 7 divided by their sum over
// the layer's experts (the relevance scores R of Eq. 8). The paper's g (on
// DeepSeek-V2-Lite, whose router does not renormalise its top-k) is the full
// softmax over all experts at the selected ones (EsftGate::Softmax, default);
// EsftGate::Applied takes the weight the layer actually applies, which differs
// for routers that renormalise (mixtral, finer_moe, norm_topk_prob).
//
// Thread safety: free functions; a Transformer they take is used by the calling
// thread only. Errors: finmoe::Error naming the file, field or option.
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>
#include <torch/torch.h>

#include "finmoe/esft_delta.h"

namespace finmoe {

class Transformer;
class Tokenizer;
struct ModelConfig;
struct LayerRouting;

// ---- relevance scores (§3.3) -------------------------------------------------

struct EsftScores {
  // decoder layer -> score of each routed expert [E]; a layer's scores sum to 1
  // (all 0 when the layer saw no tokens)
  std::map<int64_t, std::vector<double>> token_scores;  // ESFT-Token (Eq. 7)
  std::map<int64_t, std::vector<double>> gate_scores;   // ESFT-Gate (Eq. 6)
  int64_t tokens = 0;     // tokens routed (0 when read from a file without it)
  int64_t sequences = 0;  // sequences they formed
};

enum class EsftGate { Softmax, Applied };
// "softmax" | "applied"; throws Error naming `field` otherwise.
EsftGate esft_gate_from_string(const std::string& name, const std::string& field);

// Scores from routing statistics (analysis.h, RoutingStats::results()).
EsftScores esft_scores(const std::vector<LayerRouting>& routing,
                       EsftGate gate = EsftGate::Softmax);

struct EsftScoreOptions {
  int64_t seq_len = 1024;      // tokens per sampled sequence (the paper: 4096)
  int64_t max_tokens = 32768;  // tokens to sample (the paper: 32 x 4096); <= 0 = all
  uint64_t seed = 0;           // which sequences are sampled
  EsftGate gate = EsftGate::Softmax;  // g of the gate scores (see above)
};

// Tokenizes `data` (.jsonl of {"text"} / {"messages"} records, or plain text),
// concatenates its documents (attention stays inside each), cuts the stream
// into sequences of seq_len (a shorter tail is dropped when a full sequence
// exists), samples max_tokens worth of them with `seed`, routes them through
// `model` (no autograd) and scores the experts. `progress`, when set, gets the
// tokens routed so far. Throws Error when the model has no routed experts.
EsftScores score_experts(Transformer& model, const Tokenizer& tokenizer, const std::string& data,
                         const EsftScoreOptions& options = {},
                         const std::function<void(int64_t done, int64_t total)>& progress = {});

// {"token_scores": {"<layer>": {"<expert>": score}}, "gate_scores": {...},
//  "tokens": T, "sequences": S} -- the layout of the ESFT repo's summary.json.
nlohmann::json esft_scores_to_json(const EsftScores& scores);
// Reads that layout; `source` names the file in errors. Expert ids of a layer
// must be 0..E-1, every layer the same E, scores finite and >= 0.
EsftScores esft_scores_from_json(const nlohmann::json& j, const std::string& source);
EsftScores load_esft_scores(const std::string& path);
void save_esft_scores(const std::string& path, const EsftScores& scores);  // atomic

// ---- expert selection (Eq. 8) ------------------------------------------------

enum class EsftScoreKind { Token, Gate };
// "token" | "gate"; throws Error naming --score otherwise.
EsftScoreKind esft_score_kind(const std::string& name);


// Per layer: experts sorted by score (descending, ties by lower id), added
// while the sum of those already added is < p, so the expert whose score
// crosses p is included (the ESFT repo's rule). p must be in (0, 1]; sums are
// compared with a 1e-9 tolerance so float rounding adds no expert. Flags false.
ExpertConfig select_experts(const EsftScores& scores, EsftScoreKind kind, double p);

// ESFT Table 4's control: per layer of `like`, as many experts as it lists,
// drawn uniformly without replacement from the layer's `num_experts` routed
// experts by a generator seeded with `seed` (the same draw on every platform).
// Flags are copied from `like`.
ExpertConfig random_experts_like(const ExpertConfig& like, int64_t num_experts, uint64_t seed);

// Throws Error when a listed layer is not an MoE layer of `model` or an expert
// id is outside [0, num_experts) or repeated.
void check_expert_config(const ExpertConfig& config, const ModelConfig& model,
                         const std::string& source);

// ---- training -----------------------------------------------------------------

// What a parameter is, from its HF name.
struct EsftParamRole {
  enum Kind { RoutedExpert, SharedExpert, NonExpert } kind = NonExpert;
  int64_t layer = -1;   // decoder layer (experts only)
  int64_t expert = -1;  // routed expert id (RoutedExpert only)
};
// "model.layers.L.{mlp|block_sparse_moe}.experts.E.*" -> RoutedExpert (L, E);
// "model.layers.L.mlp.shared_expert.*" / ".shared_experts.*" -> SharedExpert;
// anything else (router "gate", "shared_expert_gate", attention, norms,
// embeddings, lm_head, dense FFNs, concat_proj) -> NonExpert.
EsftParamRole esft_param_role(const std::string& name);
// Whether the config trains a parameter of that name (never one that
// gradient_free_parameter names).
bool esft_trains(const ExpertConfig& config, const std::string& name);
// Parameters no training mode updates: DeepSeek-V3's
// "*.gate.e_score_correction_bias" (noaux_tc) only chooses experts, so it has
// no gradient, and its own balancing rule is not gradient descent; weight
// decay would still shrink it. Full fine-tuning and ESFT leave it frozen.
bool gradient_free_parameter(const std::string& name);

// The parameters an expert config trains, in named_parameters() order.
std::vector<std::pair<std::string, torch::Tensor>> esft_trainable_parameters(
    const Transformer& model, const ExpertConfig& config);
// Sets requires_grad on exactly those parameters (off on every other one) and
// returns them. Checks the config against the model first.
std::vector<std::pair<std::string, torch::Tensor>> apply_esft(Transformer& model,
                                                              const ExpertConfig& config);

// Parameter counts of a config on a model shape, without building the model.
struct EsftParamCount {
  int64_t trainable = 0;  // parameters the config trains
  int64_t total = 0;      // all parameters of the model
  int64_t routed = 0;     // of trainable: routed experts
  int64_t shared = 0;     // of trainable: shared experts
  int64_t other = 0;      // of trainable: non-expert modules
  int64_t experts = 0;    // routed experts selected, over all layers
};
EsftParamCount esft_param_count(const ModelConfig& model, const ExpertConfig& config);

// ---- delta checkpoints (docs/formats/esft.md; reading them: finmoe/esft_delta.h) --

// Writes into `out_dir` (created if missing; each file atomic): the tensors the
// config trains (HF names, in `dtype` or the model's), expert_cfg.json,
// esft_delta.json (format version, base_model = `base_dir` made absolute), and
// copies of the base's config.json, generation_config.json and tokenizer
// files so the directory works wherever a model directory does.
EsftDeltaInfo save_esft_delta(const Transformer& model, const ExpertConfig& config,
                              const std::string& base_dir, const std::string& out_dir,
                              std::optional<torch::Dtype> dtype = std::nullopt);

// Replaces the model's parameters with the delta's tensors (converted to the
// model's dtype and device). Throws Error when a tensor is not a parameter of
// the model, has another shape, or is not one the delta's expert config trains.
void apply_esft_delta(Transformer& model, const std::string& delta_dir);
// The delta's tensors as apply_esft_delta checks them against `model`, by
// HF name, as zero-copy views of the mapped file (the views keep it alive).
std::vector<std::pair<std::string, torch::Tensor>> read_esft_delta_tensors(
    const Transformer& model, const std::string& delta_dir);

}  // namespace finmoe
