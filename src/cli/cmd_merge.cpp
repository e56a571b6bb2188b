// finmoe merge: mergekit-format recipes and the chat-vector preset (finmoe/merge.h).
#include <cstdio>
#include <iostream>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "finmoe/error.h"
#include "finmoe/merge.h"

namespace finmoe::cli {

void add_merge(CLI::App& app, Run& run) {
  auto* c = app.add_subcommand(
      "merge",
      "Merge models: a mergekit YAML recipe (linear, task_arithmetic, ties, dare_*, slerp, "
      "breadcrumbs, della, nuslerp, model_stock, sce, varm, passthrough), or --chat-vector");
  static std::string recipe_path, out_dir;
  static ChatVectorOptions cv;
  static bool chat_vector = false, moe = false, json = false, no_fused = false;
  static uint64_t seed = 0;
  static std::string io = "auto";
  static size_t shard_mb = 5 * 1024;
  c->add_option("RECIPE", recipe_path, "a mergekit YAML recipe (with --chat-vector: OUT)");
  c->add_option("OUT", out_dir, "output directory (must not exist)");
  auto* g = "Chat vector: OUT = BASE + s_d (DOMAIN - BASE) + s_i (INSTRUCT - BASE)";
  c->add_flag("--chat-vector", chat_vector, "the chat-vector preset instead of a recipe")->group(g);
  c->add_option("--base", cv.base, "the base model both others were trained from")->group(g);
  c->add_option("--domain", cv.domain, "the continually pretrained (domain) model")->group(g);
  c->add_option("--instruct", cv.instruct, "the instruction-tuned model")->group(g);
  c->add_option("--domain-scale", cv.domain_scale, "s_d")->capture_default_str()->group(g);
  c->add_option("--instruct-scale", cv.instruct_scale, "s_i")->capture_default_str()->group(g);
  c->add_flag("--keep-special-rows", cv.keep_special_rows,
              "embedding/lm_head rows of the instruct tokenizer's special tokens from INSTRUCT")
      ->group(g);
  c->add_flag("--moe", moe,
              "RECIPE is a mergekit-moe recipe: an MoE (mixtral, qwen2_moe) from dense "
              "fine-tunes of one base, each model's FFN an expert");
  auto* o = "Output";
  c->add_option("--seed", seed, "random seed of dare_* and della* (default 0)")->group(o);
  c->add_option("--max-shard-mb", shard_mb, "output shard size limit in MiB")
      ->capture_default_str()
      ->group(o);
  c->add_flag("--json", json, "print one JSON object instead of text")->group(o);
  c->add_flag("--no-fused", no_fused,
              "merge linear/task_arithmetic/ties through libtorch ops instead of the fused "
              "kernel (the same bits, slower; for comparison)")
      ->group(o);
  c->add_option("--io", io,
                "how linear/task_arithmetic/ties read their inputs: mmap (the mapping; fastest "
                "from the page cache), read (reader threads ahead of the merge; fastest from the "
                "disk), direct (read, past the page cache: O_DIRECT), auto (mmap when most input "
                "bytes are cached, else read)")
      ->check(CLI::IsMember({"auto", "mmap", "read", "direct"}))
      ->capture_default_str()
      ->group(o);
  c->callback([&run] {
    run = [] {
      MergeRecipe recipe;
      std::string out = out_dir;
      if (moe) {
        if (chat_vector) throw Error("merge: --moe and --chat-vector exclude each other");
        if (recipe_path.empty()) throw Error("merge --moe: RECIPE.yaml is required");
        if (out.empty()) throw Error("merge --moe: OUT is required");
        MergeOptions options;
        options.seed = seed;
        options.max_shard_bytes = shard_mb << 20;
        options.progress = !json;
        const MoeRecipe moe_recipe = load_moe_recipe(recipe_path);
        const MergeReport r = merge_moe(moe_recipe, out, options);
        if (json) {
          std::cout << nlohmann::json{{"out", out},
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
          std::printf("built a %s MoE of %zu experts (gate_mode %s) into %s: %lld tensors in "
                      "%.1f s\n",
                      moe_recipe.architecture.c_str(), moe_recipe.experts.size(),
                      moe_recipe.gate_mode.c_str(), out.c_str(), static_cast<long long>(r.tensors),
                      r.seconds);
        }
        return 0;
      }
      if (chat_vector) {
        // `finmoe merge --chat-vector ... OUT`: the one positional is OUT
        if (!out.empty())
          throw Error("merge --chat-vector takes one positional argument, OUT");
        out = recipe_path;
        recipe = chat_vector_recipe(cv);
      } else {
        if (recipe_path.empty()) throw Error("merge: RECIPE.yaml is required (or --chat-vector)");
        if (!cv.base.empty() || !cv.domain.empty() || !cv.instruct.empty())
          throw Error("merge: --base/--domain/--instruct belong to --chat-vector");
        recipe = load_merge_recipe(recipe_path);
      }
      if (out.empty()) throw Error("merge: OUT is required");
      MergeOptions options;
      options.seed = seed;
      options.max_shard_bytes = shard_mb << 20;
      options.progress = !json;
      options.fused = !no_fused;
      options.io = io == "mmap"     ? MergeOptions::Io::kMmap
                   : io == "read"   ? MergeOptions::Io::kRead
                   : io == "direct" ? MergeOptions::Io::kDirect
                                    : MergeOptions::Io::kAuto;
      const MergeReport r = merge_models(recipe, out, options);
      if (json) {
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
        std::printf("merged %lld tensors (%s) into %s: %zu shard(s), %.1f MiB read%s, %.1f MiB "
                    "written in %.1f s\n",
                    static_cast<long long>(r.tensors), recipe.merge_method.c_str(), out.c_str(),
                    r.num_shards, double(r.bytes_read) / 1048576.0, streamed,
                    double(r.bytes_written) / 1048576.0, r.seconds);
      }
      return 0;
    };
  });
}

}  // namespace finmoe::cli
