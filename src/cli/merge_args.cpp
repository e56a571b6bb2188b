#include "cli/merge_args.h"

#include <cstdio>
#include <iostream>

#include <nlohmann/json.hpp>

#include "finmoe/error.h"

namespace finmoe::cli {

CLI::App* add_merge_options(CLI::App& app, MergeArgs& a) {
  auto* c = app.add_subcommand(
      "merge",
      "Merge models: a mergekit YAML recipe (linear, task_arithmetic, ties, dare_*, slerp, "
      "breadcrumbs, della, nuslerp, model_stock, sce, varm, passthrough), or --chat-vector");
  ChatVectorOptions& cv = a.chat_vector_options;
  c->add_option("RECIPE", a.recipe_path, "a mergekit YAML recipe (with --chat-vector: OUT)");
  c->add_option("OUT", a.out_dir, "output directory (must not exist)");
  auto* g = "Chat vector: OUT = BASE + s_d (DOMAIN - BASE) + s_i (INSTRUCT - BASE)";
  c->add_flag("--chat-vector", a.chat_vector, "the chat-vector preset instead of a recipe")
      ->group(g);
  c->add_option("--base", cv.base, "the base model both others were trained from")->group(g);
  c->add_option("--domain", cv.domain, "the continually pretrained (domain) model")->group(g);
  c->add_option("--instruct", cv.instruct, "the instruction-tuned model")->group(g);
  c->add_option("--domain-scale", cv.domain_scale, "s_d")->capture_default_str()->group(g);
  c->add_option("--instruct-scale", cv.instruct_scale, "s_i")->capture_default_str()->group(g);
  c->add_flag("--keep-special-rows", cv.keep_special_rows,
              "embedding/lm_head rows of the instruct tokenizer's special tokens from INSTRUCT")
      ->group(g);
  c->add_flag("--moe", a.moe,
              "RECIPE is a mergekit-moe recipe: an MoE (mixtral, qwen2_moe) from dense "
              "fine-tunes of one base, each model's FFN an expert");
  auto* o = "Output";
  c->add_option("--seed", a.seed, "random seed of dare_* and della* (default 0)")->group(o);
  c->add_option("--max-shard-mb", a.shard_mb, "output shard size limit in MiB")
      ->capture_default_str()
      ->group(o);
  c->add_flag("--json", a.json, "print one JSON object instead of text")->group(o);
  c->add_flag("--no-fused", a.no_fused,
              "merge linear/task_arithmetic/ties through libtorch ops instead of the fused "
              "kernel (the same bits, slower; for comparison)")
      ->group(o);
  c->add_option("--io", a.io,
                "how linear/task_arithmetic/ties read their inputs: mmap (the mapping; fastest "
                "from the page cache), read (reader threads ahead of the merge; fastest from the "
                "disk), direct (read, past the page cache: O_DIRECT), auto (mmap when most input "
                "bytes are cached, else read)")
      ->check(CLI::IsMember({"auto", "mmap", "read", "direct"}))
      ->capture_default_str()
      ->group(o);
  return c;
}

MergeOptions merge_options_of(const MergeArgs& a) {
  MergeOptions options;
  options.seed = a.seed;
  options.max_shard_bytes = a.shard_mb << 20;
  options.progress = !a.json;
  options.fused = !a.no_fused;
  options.io = a.io == "mmap"     ? MergeOptions::Io::kMmap
               : a.io == "read"   ? MergeOptions::Io::kRead
               : a.io == "direct" ? MergeOptions::Io::kDirect
                                  : MergeOptions::Io::kAuto;
  return options;
}

int run_merge(const MergeArgs& a, const MergeFunction& merge) {
  MergeRecipe recipe;
  std::string out = a.out_dir;
  if (a.chat_vector) {
    // `finmoe merge --chat-vector ... OUT`: the one positional is OUT
    if (!out.empty()) throw Error("merge --chat-vector takes one positional argument, OUT");
    out = a.recipe_path;
    recipe = chat_vector_recipe(a.chat_vector_options);
  } else {
    if (a.recipe_path.empty()) throw Error("merge: RECIPE.yaml is required (or --chat-vector)");
    if (!a.chat_vector_options.base.empty() || !a.chat_vector_options.domain.empty() ||
        !a.chat_vector_options.instruct.empty())
      throw Error("merge: --base/--domain/--instruct belong to --chat-vector");
    recipe = load_merge_recipe(a.recipe_path);
  }
  if (out.empty()) throw Error("merge: OUT is required");
  const MergeReport r = merge(recipe, out, merge_options_of(a));
  if (a.json) {
    std::cout << nlohmann::json{{"out", out},
                                {"merge_method", recipe.merge_method},
                                {"tensors", r.tensors},
                                {"bytes_read", r.bytes_read},
                                {"bytes_written", r.bytes_written},
                                {"num_shards", r.num_shards},
                                {"bytes_streamed", r.bytes_streamed},
                                {"seconds", r.seconds}}
                     .dump(2)
              << "\n";
  } else {
    char streamed[64] = "";
    if (r.bytes_streamed > 0)
      std::snprintf(streamed, sizeof(streamed), " (%.1f MiB by reader threads)",
                    double(r.bytes_streamed) / 1048576.0);
    std::printf(
        "merged %lld tensors (%s) into %s: %zu shard(s), %.1f MiB read%s, %.1f MiB "
        "written in %.1f s\n",
        static_cast<long long>(r.tensors), recipe.merge_method.c_str(), out.c_str(), r.num_shards,
        double(r.bytes_read) / 1048576.0, streamed, double(r.bytes_written) / 1048576.0, r.seconds);
  }
  return 0;
}

}  // namespace finmoe::cli
