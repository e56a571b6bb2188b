// finmoe upcycle: a dense checkpoint into a MoE checkpoint (finmoe/convert.h).
#include <cstdio>
#include <iostream>
#include <optional>

#include "cli/commands.h"
#include "finmoe/convert.h"
#include "finmoe/error.h"

namespace finmoe::cli {
namespace {

// "0.63B" style, as FineRMoE Table 1 prints #P / #AP.
std::string billions(int64_t n) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.3fB (%lld)", double(n) / 1e9, static_cast<long long>(n));
  return buf;
}

}  // namespace

void add_upcycle(CLI::App& app, Run& run) {
  auto* c = app.add_subcommand(
      "upcycle", "Turn a dense checkpoint into a MoE checkpoint (FineRMoE Eq. 10 and baselines)");
  static std::string dense_dir, out_dir, preset;
  static std::optional<int64_t> G_I, R_I, G_O, R_O, T_I;
  static std::optional<std::string> shared, router, router_mode, concat, scale, format, dtype;
  static std::optional<double> drop;
  static std::optional<uint64_t> seed;
  static bool all_experts = false, dry_run = false, json = false;
  static size_t shard_mb = 5 * 1024;
  c->add_option("DENSE_DIR", dense_dir, "dense model directory (llama, qwen2, mistral)")
      ->required();
  c->add_option("OUT_DIR", out_dir, "output directory");
  std::string names;
  for (const auto& n : upcycle_preset_names()) names += (names.empty() ? "" : " | ") + n;
  c->add_option("--preset", preset, "starting values: " + names + " (flags below override)");
  auto* g = "Expert construction (FineRMoE §3.1; R = 0 means equal to G)";
  c->add_option("--G-I", G_I, "intermediate granularity (default 1)")->group(g);
  c->add_option("--R-I", R_I, "intermediate expansion rate (default 1)")->group(g);
  c->add_option("--G-O", G_O, "output granularity (default 1)")->group(g);
  c->add_option("--R-O", R_O, "output expansion rate (default 1)")->group(g);
  c->add_option("--T-I", T_I, "experts activated per group; top-k = T_I*G_O (default 1)")
      ->group(g);
  c->add_flag("--all-experts", all_experts, "every expert active, softmax gate (FinMoE)")->group(g);
  c->add_option("--shared-expert", shared, "copy | none (default none)")->group(g);
  c->add_option("--expert-scale", scale,
                "none | down | glu (default none, FineRMoE Eq. 10; nvshard: glu; down = down_proj x G_I)")
      ->group(g);
  c->add_option("--drop-ratio", drop, "Drop-Upcycling: share of each expert re-initialised (default 0)")
      ->group(g);
  auto* i = "Initialisation and output";
  c->add_option("--router-init", router,
                "normal:STD | zeros | virtual-groups:STD (default normal:0.02)")
      ->group(i);
  c->add_option("--router-mode", router_mode,
                "single | separate (finer_moe; default single, FineRMoE's one router; separate: a "
                "second router for the concatenation layer, the Table 3 ablation)")
      ->group(i);
  c->add_option("--concat-proj", concat, "none | normal | zeros (finer_moe; default none)")->group(i);
  c->add_option("--format", format,
                "mixtral | qwen2_moe | finer_moe | finmoe_dense (default: by the rule in "
                "docs/formats/moe.md)")
      ->group(i);
  c->add_option("--dtype", dtype, "float32 | bfloat16 | float16 (default: the dense model's)")
      ->group(i);
  c->add_option("--seed", seed, "random seed (default 0)")->group(i);
  c->add_option("--max-shard-mb", shard_mb, "output shard size limit in MiB")
      ->capture_default_str()
      ->group(i);
  c->add_flag("--dry-run", dry_run, "print the resolved hyper-parameters and counts only");
  c->add_flag("--json", json, "print one JSON object instead of text");
  c->callback([&run] {
    run = [] {
      UpcycleOptions o = preset.empty() ? UpcycleOptions{} : upcycle_preset(preset);
      if (G_I) o.G_I = *G_I;
      if (R_I) o.R_I = *R_I;
      if (G_O) o.G_O = *G_O;
      if (R_O) o.R_O = *R_O;
      if (T_I) o.T_I = *T_I;
      if (all_experts) o.all_experts = true;
      if (shared) o.shared_expert = *shared;
      if (scale) o.expert_scale = *scale;
      if (drop) o.drop_ratio = *drop;
      if (router) o.router_init = *router;
      if (concat) o.concat_proj = *concat;
      if (router_mode) o.router_mode = *router_mode;
      if (format) o.format = *format;
      if (dtype) o.dtype = *dtype;
      if (seed) o.seed = *seed;
      o.max_shard_bytes = shard_mb << 20;
      o.progress = !json;

      const UpcyclePlan plan = plan_upcycle(dense_dir, o);
      if (!json) {
        std::cout << "upcycle " << dense_dir << " -> " << (dry_run ? "(dry run)" : out_dir) << "\n"
                  << plan.describe() << "  #P                " << billions(plan.params()) << "\n"
                  << "  #AP               " << billions(plan.active_params()) << "\n"
                  << "  dense #P          " << billions(plan.dense.param_count()) << std::endl;
      }
      std::optional<UpcycleReport> report;
      if (!dry_run) {
        if (out_dir.empty()) throw Error("OUT_DIR is required (or --dry-run)");
        report = upcycle(dense_dir, out_dir, o);
      }
      if (json) {
        const UpcycleOptions& r = plan.options;
        nlohmann::json j = {{"preset", r.preset},          {"format", plan.config.model_type},
                            {"G_I", r.G_I},                {"R_I", r.R_I},
                            {"G_O", r.G_O},                {"R_O", r.R_O},
                            {"T_I", r.T_I},                {"num_experts", plan.num_experts()},
                            {"num_experts_per_tok", plan.config.num_experts_per_tok},
                            {"shared_expert", r.shared_expert},
                            {"router_init", r.router_init}, {"router_mode", r.router_mode},
                            {"concat_proj", r.concat_proj},
                            {"expert_scale", r.expert_scale}, {"drop_ratio", r.drop_ratio},
                            {"dtype", plan.config.torch_dtype}, {"params", plan.params()},
                            {"active_params", plan.active_params()},
                            {"dense_params", plan.dense.param_count()}};
        if (report) {
          j["bytes_written"] = report->bytes_written;
          j["num_shards"] = report->num_shards;
          j["seconds"] = report->seconds;
        }
        std::cout << j.dump(2) << "\n";
      } else if (report) {
        std::printf("wrote %zu shard(s), %.1f MiB in %.1f s\n", report->num_shards,
                    double(report->bytes_written) / double(1 << 20), report->seconds);
      }
      return 0;
    };
  });
}

}  // namespace finmoe::cli
