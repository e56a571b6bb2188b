// finmoe merge: mergekit-format recipes, the chat-vector preset and --moe
// (finmoe/merge.h). The front end runs the recipes the fused kernel covers
// without libtorch (src/front/main.cpp); the engine runs every merge.
#include <cstdio>
#include <iostream>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/merge_args.h"
#include "finmoe/error.h"
#include "finmoe/merge.h"

namespace finmoe::cli {

namespace {

// `finmoe merge --moe RECIPE OUT`: an MoE from dense fine-tunes of one base.
int run_merge_moe(const MergeArgs& a) {
  if (a.chat_vector) throw Error("merge: --moe and --chat-vector exclude each other");
  if (a.recipe_path.empty()) throw Error("merge --moe: RECIPE.yaml is required");
  if (a.out_dir.empty()) throw Error("merge --moe: OUT is required");
  const MoeRecipe moe_recipe = load_moe_recipe(a.recipe_path);
  const MergeReport r = merge_moe(moe_recipe, a.out_dir, merge_options_of(a));
  if (a.json) {
    std::cout << nlohmann::json{{"out", a.out_dir},
                                {"architecture", moe_recipe.architecture},
                                {"experts", moe_recipe.experts.size()},
                                {"gate_mode", moe_recipe.gate_mode},
                                {"tensors", r.tensors},
                                {"bytes_read", r.bytes_read},
                                {"bytes_written", r.bytes_written},
                                {"seconds", r.seconds}}
                     .dump(2)
              << "\n";
  } else {
    std::printf("built a %s MoE of %zu experts (gate_mode %s) into %s: %lld tensors in %.1f s\n",
                moe_recipe.architecture.c_str(), moe_recipe.experts.size(),
                moe_recipe.gate_mode.c_str(), a.out_dir.c_str(), static_cast<long long>(r.tensors),
                r.seconds);
  }
  return 0;
}

}  // namespace

void add_merge(CLI::App& app, Run& run) {
  static MergeArgs args;
  CLI::App* c = add_merge_options(app, args);
  c->callback([&run] {
    run = [] {
      if (args.moe) return run_merge_moe(args);
      return run_merge(args, [](const MergeRecipe& r, const std::string& out,
                                const MergeOptions& o) { return merge_models(r, out, o); });
    };
  });
}

}  // namespace finmoe::cli
