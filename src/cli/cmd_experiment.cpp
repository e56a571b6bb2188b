// finmoe experiment NAME: rerun a paper's experiment from its recipe
// (experiments/NAME.yaml; see cli/experiment.h and docs/EXPERIMENTS.md).
#include <iostream>

#include "cli/commands.h"
#include "cli/experiment.h"
#include "finmoe/error.h"

namespace finmoe::cli {

void add_experiment(CLI::App& app, Run& run) {
  auto* c = app.add_subcommand(
      "experiment", "Rerun a paper experiment from its recipe (experiments/NAME.yaml): cached stages, "
                    "results.json, a Markdown table with the spread over seeds, SVG curves, the commands");
  static ExperimentOptions o;
  static std::vector<std::string> sets;
  static bool list = false;
  c->add_option("NAME", o.recipe, "experiment name (see --list) or a recipe .yaml path");
  c->add_flag("--list", list, "list the recipes found");
  c->add_option("--out", o.out, "output directory (default experiments-out/NAME)");
  c->add_option("--cache", o.cache, "shared stages (corpus, tokenizer, base models); default ~/.cache/finmoe/experiments");
  c->add_option("--scale", o.scale, "multiplies the recipe's scaled sizes and step counts")->capture_default_str();
  c->add_option("--seeds", o.seeds, "seeds 1..N for every seeded stage")->capture_default_str();
  c->add_option("--device", o.device, "cpu | cuda | cuda:N, passed to the training and evaluation steps")
      ->capture_default_str();
  c->add_option("--set", sets, "KEY=VALUE: override a recipe parameter (a YAML value); repeatable");
  c->add_flag("--dry-run", o.dry_run, "print the stages and commands without running them");
  c->add_flag("--verbose", o.verbose, "show every step's own output (else it goes to the stage's log.txt)");
  c->callback([&run] {
    run = [] {
      if (list) {
        const auto recipes = list_recipes();
        if (recipes.empty()) std::cout << "no recipes found (set FINMOE_EXPERIMENTS to a directory of .yaml recipes)\n";
        for (const auto& [name, title] : recipes) std::cout << name << "  " << title << "\n";
        return 0;
      }
      if (o.recipe.empty()) throw Error("experiment: NAME is required (see finmoe experiment --list)");
      for (const auto& s : sets) {
        const auto eq = s.find('=');
        if (eq == std::string::npos || eq == 0) throw Error("--set " + s + ": expected KEY=VALUE");
        o.set[s.substr(0, eq)] = s.substr(eq + 1);
      }
      return run_experiment(o);
    };
  });
}

}  // namespace finmoe::cli
