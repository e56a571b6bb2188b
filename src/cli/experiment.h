#pragma once
// `finmoe experiment`: a paper experiment as a recipe of `finmoe` steps.
//
// A recipe (YAML, experiments/NAME.yaml) names its parameters, its stages
// (each one or more `finmoe` commands, expanded over a matrix of values such
// as presets x seeds) and the tables and curves to report. Strings are Jinja
// templates over the parameters, the built-ins (scale, seeds, device, out,
// cache), the stage's matrix values, its own `dir` and `stages` (every
// earlier stage by name: dir, result).
//
// Caching: each stage's key hashes the recipe version, its rendered commands
// and files, and the keys of the earlier stages it refers to. A stage whose
// directory holds a finished marker with the same key is skipped, so a killed
// run resumes; a marker with another key (recipe edited, version bumped,
// upstream changed) or an unfinished directory is announced and rerun, never
// reused silently. `shared: true` stages (corpus, tokenizer, base model) live
// in the cache directory under their key and serve every experiment.
//
// Outputs in --out: results.json (parameters, every stage's key, time and
// result, every table cell's values, mean, sd and n), results.md (the
// tables, the claim, which differences exceed the spread over seeds),
// commands.sh (the exact commands in order), the SVG curves, stages/.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace finmoe::cli {

struct ExperimentOptions {
  std::string recipe;        // a name (looked up in the recipe directories) or a .yaml path
  std::string out;           // default experiments-out/NAME
  std::string cache;         // default ~/.cache/finmoe/experiments
  double scale = 1.0;        // scales every `scaled` parameter
  int64_t seeds = 3;         // seeds 1..N
  std::string device = "cpu";
  std::map<std::string, std::string> set;  // --set KEY=VALUE (YAML values)
  bool dry_run = false;      // print the stages and commands, run nothing
  bool verbose = false;      // children's output on the terminal as well as in each stage's log
};

// Where recipes are looked up: $FINMOE_EXPERIMENTS, then experiments/ beside
// the binary's source tree or install prefix.
std::vector<std::string> recipe_dirs();

// name -> title of every recipe found.
std::map<std::string, std::string> list_recipes();

// Runs (or, with dry_run, prints) the experiment; returns the process exit
// code. Throws Error naming the recipe file and key for a bad recipe, the
// stage and its log for a failed step.
int run_experiment(const ExperimentOptions& options);

}  // namespace finmoe::cli
