#pragma once
// `finmoe merge`'s command line, shared by the engine (cmd_merge.cpp) and the
// front end (src/front/main.cpp), which runs recipes the fused kernel covers
// without loading libtorch.
#include <cstdint>
#include <functional>
#include <string>

#include <CLI/CLI.hpp>

#include "finmoe/merge.h"

namespace finmoe::cli {

struct MergeArgs {
  std::string recipe_path, out_dir;
  ChatVectorOptions chat_vector_options;
  bool chat_vector = false, moe = false, json = false, no_fused = false;
  uint64_t seed = 0;
  std::string io = "auto";
  size_t shard_mb = 5 * 1024;
};

// Adds the `merge` subcommand with every option into `args` (which must
// outlive the parse); returns it.
CLI::App* add_merge_options(CLI::App& app, MergeArgs& args);

// The options every merge takes from the command line.
MergeOptions merge_options_of(const MergeArgs& args);

// A recipe or --chat-vector merge (not --moe) through `merge` (merge_models,
// or the front end's merge without libtorch), printing its report: 0.
using MergeFunction =
    std::function<MergeReport(const MergeRecipe&, const std::string&, const MergeOptions&)>;
int run_merge(const MergeArgs& args, const MergeFunction& merge);

}  // namespace finmoe::cli
