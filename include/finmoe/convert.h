#pragma once
// Upcycling: a dense checkpoint (llama, qwen2, mistral) becomes a mixture of
// experts, every FFN turned into experts cut from and copied off the dense
// FFN (FineRMoE §3.3, Eq. 10). One set of hyper-parameters covers the usual
// schemes; presets reproduce the baselines of FineRMoE Table 1:
//
//   copy      C32A2 (Komatsuzaki et al.): 32 copies, top-2
//   split     S16A4 (LLaMA-MoE): the FFN cut into 16 along its width, top-4
//   drop      Drop-Upcycling (Nakamura et al.): 8 copies, half of each expert's
//             width re-initialised, top-2
//   nvshard   He et al. 2024: 8 shards x 8 replicas = 64 experts, top-8, router
//             "virtual groups" and the GLU weight scaling s^(1/3)
//   finermoe  FineRMoE: G_I=32 R_I=1 G_O=2 R_O=2 T_I=1 + the FFN as shared expert
//   dense-moe FinMoE: 4 copies, all experts active (softmax gate)
//
// Expert e (0 <= e < N = G_I*R_I*G_O*R_O), Eq. 10, in HF's [out, in] layout:
//   j   = (e mod G_I*R_I) mod G_I          intermediate slice, width F/G_I
//   g_o = floor(e / (R_O*G_I*R_I))         output slice, width D/G_O
//   gate_proj = W_gate[j*F/G_I : (j+1)*F/G_I, :]              [F/G_I, D]
//   up_proj   = W_up  [j*F/G_I : (j+1)*F/G_I, :]              [F/G_I, D]
//   down_proj = W_down[g_o*D/G_O : (g_o+1)*D/G_O, j*F/G_I : (j+1)*F/G_I]
//                                                             [D/G_O, F/G_I]
// Experts with the same (j, g_o) are exact copies. Output format and the
// remaining initialisations: docs/formats/moe.md, "Upcycling output".
#include <cstdint>
#include <string>
#include <vector>

#include "finmoe/config.h"

namespace finmoe {

struct UpcycleOptions {
  // ---- FineRMoE hyper-parameters (§3.1). R_I / R_O = 0 mean "equal to G_I / G_O".
  int64_t G_I = 1;  // intermediate granularity: the dense FFN width is cut into G_I slices
  int64_t R_I = 1;  // intermediate expansion: copies of each slice in a group
  int64_t G_O = 1;  // output granularity: an expert writes hidden_size/G_O values
  int64_t R_O = 1;  // output expansion: candidate groups per output slice
  int64_t T_I = 1;  // experts activated per group; top-k = T_I * G_O

  // "copy": a shared expert initialised as the dense FFN (Eq. 9); "none".
  std::string shared_expert = "none";
  // The router ("gate") weight [N, D]: "normal:STD" (N(0, STD^2)), "zeros"
  // (uniform weights at init), "virtual-groups:STD" (He et al.: one N(0, STD^2)
  // row per replica, shared by its G_I shards, so a replica's shards are
  // chosen together).
  std::string router_init = "normal:0.02";
  // finer_moe's routers (finmoe/finer_router.h): "single" (FineRMoE's one
  // router, §3.2) or "separate" (a second router `concat_gate` [G_O*R_O, D]
  // chooses each output slice's candidate: the §4.3 / Table 3 ablation;
  // initialised as `router_init` says for the first, virtual-groups as
  // normal with its STD). Needs format finer_moe and R_O > 1.
  std::string router_mode = "single";
  // finer_moe's concat projection [D, D] after the concatenation: "none",
  // "normal" (N(0, initializer_range^2) of the dense config) or "zeros".
  std::string concat_proj = "none";
  // How expert weights are scaled. FineRMoE's Eq. 10 copies the dense slices
  // unscaled ("none", the default of every preset but nvshard); the others
  // make the routed sum keep the dense FFN's size:
  //   "down"  down_proj x G_I (a token then sums weights adding to 1 over
  //           shards that each carry 1/G_I of the FFN)
  //   "glu"   gate, up and down each x s^(1/3), s = G_I (He et al. for a
  //           softmax-after-top-k router; SwiGLU is roughly cubic in the scale)
  //   "none"  the slices as they are (Eq. 10)
  std::string expert_scale = "none";
  // Every expert active with softmax weights (FinMoE's dense MoE): top-k = N,
  // T_I ignored; needs G_O = R_O = 1.
  bool all_experts = false;
  // Drop-Upcycling: the fraction r of each expert's intermediate width that is
  // re-initialised (round(r * F/G_I) rows of gate/up, the same columns of down,
  // one index set per expert) from N(mean, std) of the values it replaces. 0 = off.
  double drop_ratio = 0.0;
  // Output model_type: "" = by the rule in docs/formats/moe.md (mixtral,
  // qwen2_moe, finer_moe; finmoe_dense with all_experts when the attention
  // fits it); otherwise that type, checked for compatibility.
  std::string format;
  std::string dtype;            // output dtype: "" = the dense config's torch_dtype
  uint64_t seed = 0;            // router, concat projection and Drop-Upcycling draws
  size_t max_shard_bytes = size_t(5) << 30;  // output shard size limit
  bool progress = true;         // a progress line on stderr
  std::string preset;           // informational: the preset these came from ("" = none)
};

// The preset's options (see the table above). Throws Error naming the preset
// and listing the known ones.
UpcycleOptions upcycle_preset(const std::string& name);
const std::vector<std::string>& upcycle_preset_names();

// Hyper-parameters after resolution against a dense config: R = 0 replaced,
// format chosen, scale and router made explicit.
struct UpcyclePlan {
  UpcycleOptions options;  // resolved: R_I, R_O, format, expert_scale, dtype filled in
  ModelConfig dense;       // the input
  ModelConfig config;      // the output's config.json, as it will be written
  double gate_up_scale = 1.0;  // applied to every routed expert's gate_proj and up_proj
  double down_scale = 1.0;     // applied to every routed expert's down_proj
  int64_t num_experts() const { return config.num_experts; }
  int64_t params() const { return config.param_count(); }               // #P
  int64_t active_params() const { return config.active_param_count(); } // #AP
  // One line per hyper-parameter, for people.
  std::string describe() const;
};

// Checks the options against the dense config and builds the output config.
// Throws Error naming the option (G_I, G_O, ...) or config field at fault:
// a MoE (not dense) input, G_I not dividing intermediate_size, G_O not
// dividing hidden_size, T_I*G_O out of range, a format the input cannot take.
UpcyclePlan plan_upcycle(const ModelConfig& dense, const UpcycleOptions& options);
// The same for DENSE_DIR/config.json; input faults name that file.
UpcyclePlan plan_upcycle(const std::string& dense_dir, const UpcycleOptions& options);

struct UpcycleReport {
  UpcyclePlan plan;
  uint64_t bytes_written = 0;
  size_t num_shards = 0;
  double seconds = 0.0;
};

// Reads DENSE_DIR (config.json + safetensors, memory-mapped) and writes the
// upcycled checkpoint into OUT_DIR (created; an older checkpoint there is
// replaced): layer by layer, each tensor written as soon as it is made, so
// memory holds the mapped input and one tensor, never a second model.
// config.json is written last; tokenizer files are copied. Throws Error.
UpcycleReport upcycle(const std::string& dense_dir, const std::string& out_dir,
                      const UpcycleOptions& options);

}  // namespace finmoe
