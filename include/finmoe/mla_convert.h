#pragma once
// GQA/MHA -> MLA conversion (TransMLA's two stages, YouZhi's layer-adaptive
// FreqFold; docs/mla.md). A dense llama / qwen2 / mistral checkpoint becomes
// a `deepseek_v3` checkpoint with multi-head latent attention, every MLP kept
// dense (first_k_dense_replace = num_hidden_layers).
//
// Per layer, with d = head_dim, n_kv key/value heads, r = rope_dim, c = d/r:
//  Stage 1 (partial RoPE, RoRoPE/FreqFold): the calibration keys (k_proj
//   outputs before RoPE) of every group of `freqfold` adjacent frequencies
//   are PCA'd (float64) over the n_kv*freqfold 2-D rotary pairs of the group;
//   the rotation M of all key dims is absorbed into the queries. The group's
//   top freqfold/c components keep RoPE (at the frequencies HF's r-dim rope
//   gives them); every other component becomes NoPE. Exact when freqfold = 1
//   and the key has one component per frequency (MQA, or kv heads whose
//   per-frequency pairs are proportional).
//  Stage 2 (joint low-rank K/V): the NoPE key components are balanced against
//   V (BKV: divided by mean column norm of K_nope / mean column norm of V)
//   and [K_nope; V] is PCA'd to kv_lora_rank - 1 dims: kv_a_proj_with_mqa
//   (latent, then the rope part), kv_b_proj (per head [k_nope d | v d]).
//  The latent's RMSNorm (kv_a_layernorm): one latent dim is an anchor, a
//   constant beta (kv_a_proj_with_mqa's bias) far above the largest norm the
//   other dims can reach for an RMS-normalised input; the norm then divides
//   by a constant up to a relative 1e-6 and the norm weight undoes it. A query
//   bias (qwen2) uses the same anchor through q_a_proj / q_a_layernorm
//   (q_lora_rank = heads*d + 1); the key bias's NoPE part cancels in the
//   softmax, its rope part is kv_a_proj_with_mqa's bias; the value bias
//   becomes o_proj's bias. q is scaled for the softmax scale (d + r)^-1/2.
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "finmoe/config.h"

namespace finmoe {

struct MlaConvertOptions {
  int64_t rope_dim = 0;      // qk_rope_head_dim; 0 = min(64, head_dim). Divides head_dim.
  int64_t kv_lora_rank = 0;  // latent dims incl. the anchor; 0 = min(512, largest that
                             // compresses: 2*n_kv*d - rope_dim - 1, and <= what PCA can fill)
  int64_t freqfold = 0;      // uniform FreqFold size (TransMLA); 0 = layer-adaptive (YouZhi Eq. 3)
  int64_t max_freqfold = 8;  // candidates of the search and the probe: c*2^k up to this
  bool probe = false;        // also the per-layer degradation table (YouZhi Fig. 4)
  double balance_kv = 1.0;   // BKV target ratio of K_nope to V norms; 0 = no balancing
  int64_t eval_sequences = 16;  // calibration sequences whose perplexity drives the search
  std::string dtype;            // output dtype: "" = the source config's torch_dtype
  bool progress = true;         // a progress line with ETA on stderr
};

// One layer's choice: the FreqFold size and the calibration perplexity of
// the model after converting it (and every later layer).
struct MlaLayerChoice {
  int64_t layer = 0;
  int64_t freqfold = 0;
  double ppl = 0.0;
};

struct MlaConvertReport {
  ModelConfig source;
  ModelConfig config;  // the output's config.json
  int64_t rope_dim = 0, kv_lora_rank = 0, collapse = 1;
  std::vector<int64_t> freqfold_sizes;  // the candidates (auto, probe)
  std::vector<int64_t> freqfold;        // chosen per layer
  double ppl_source = 0.0;              // on the evaluation sequences
  double ppl_partial_rope = 0.0;        // stage 1 only (full-rank K/V), the final sizes
  double ppl_converted = 0.0;           // the written model
  // Layers converted from the last to the first: step k = layers L-1..L-k
  // converted. adaptive[k-1] in auto mode; uniform[size][k-1] for each
  // candidate in auto mode, for the chosen size in uniform mode. Stage 1.
  std::vector<MlaLayerChoice> trajectory;
  std::map<int64_t, std::vector<double>> uniform_trajectory;
  // probe[layer][i]: perplexity with only `layer` converted (stage 1) at
  // freqfold_sizes[i] (Fig. 4); empty without probe.
  std::vector<std::vector<double>> probe;
  int64_t kv_values_source = 0;     // cached values per token per layer
  int64_t kv_values_converted = 0;  // kv_lora_rank + rope_dim
  int64_t calibration_tokens = 0;
  double seconds = 0.0;
  std::vector<std::string> files;  // report files written
};

// Checks a source config and options before any work; throws Error naming
// the flag (--rope-dim, --kv-lora-rank, --freqfold, --max-freqfold) or the
// config.json key at fault (model_type, mlp_bias, sliding_window,
// rope_scaling). Returns the resolved options (rope_dim, kv_lora_rank set).
MlaConvertOptions resolve_mla_options(const ModelConfig& source, const MlaConvertOptions& options);

// Converts SRC_DIR into OUT_DIR (a deepseek_v3 HF directory + `mla_report/`
// with report.json, layers.csv, probe.csv, trajectory.svg). `calibration` holds
// the token sequences (each the same length >= 2); the first eval_sequences
// of them also measure perplexity. OUT_DIR appears only complete: everything
// is written into a temporary sibling directory renamed at the end; a
// previous OUT_DIR is replaced. Throws Error; on error OUT_DIR is untouched.
MlaConvertReport mla_convert(const std::string& src_dir, const std::string& out_dir,
                             const std::vector<std::vector<int32_t>>& calibration,
                             const MlaConvertOptions& options);

// A readable summary of a report (the table printed by `finmoe mla-convert`).
std::string format_mla_report(const MlaConvertReport& report);

}  // namespace finmoe
