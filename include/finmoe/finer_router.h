#pragma once
// FineRMoE's routers (config.json key `router_mode` of finer_moe;
// docs/formats/moe.md, "finer_moe router_mode").
//
//   single    the paper's design (§3.2, Algorithm 1): one router `mlp.gate`
//             [N, D] scores the N experts; within each sum group of G_I*R_I
//             experts the best T_I are used, and for each of the G_O output
//             slices the candidate (of R_O) whose group's scores sum highest
//             is concatenated.
//   separate  the ablation of §4.3 / Table 3: `mlp.gate` [N, D] scores the
//             experts and picks the best T_I of each group (sparse sum layer)
//             only; a second router `mlp.concat_gate` [G_O*R_O, D] scores the
//             candidates, and each slice takes its best of R_O by that router
//             (sparse concatenation layer). The selected experts' weights are
//             a softmax over their `gate` logits, as in single mode; the
//             chosen candidate's output is multiplied by p/stopgrad(p) (value
//             1), p its softmax probability among the slice's R_O under
//             `concat_gate`, so the language-model loss reaches that router.
// The key is absent (or "single") for every checkpoint that predates it.
#include <string>

namespace finmoe {

struct ModelConfig;

enum class RouterMode { Single, Separate };

// "single" | "separate"; throws Error naming `field` otherwise.
RouterMode parse_router_mode(const std::string& s, const std::string& field);
const char* router_mode_name(RouterMode m);
// The config's router_mode (its config.json key; Single when absent). A
// config that ModelConfig::finalize() accepted has a valid value.
RouterMode router_mode(const ModelConfig& c);
inline bool separate_routers(const ModelConfig& c) { return router_mode(c) == RouterMode::Separate; }

}  // namespace finmoe
