// `finmoe`, the front end of the command. It loads no libtorch: loading
// Debian's libtorch (its ~290 libraries, their relocations and static
// constructors) costs 0.4-0.7 s before main, a fifth of merging three
// Qwen2-0.5B-shape models from the disk. `finmoe merge` of a recipe the fused
// kernel covers (linear, task_arithmetic, ties on float types) runs here;
// every other command line, including --help, a line CLI11 refuses and a
// merge that needs libtorch, is executed unchanged by the engine,
// finmoe-engine beside this binary (or $FINMOE_ENGINE), so the two never
// disagree on what a command means or prints.
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <optional>
#include <string>

#include "cli/cli_common.h"
#include "cli/merge_args.h"
#include "kernels/isa.h"
#include "merge/merge_job.h"

namespace {

std::string engine_path() {
  if (const char* e = std::getenv("FINMOE_ENGINE"); e && *e) return e;
  std::error_code ec;
  const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ((ec ? std::filesystem::path() : self.parent_path()) / "finmoe-engine").string();
}

[[noreturn]] void exec_engine(char** argv) {
  const std::string engine = engine_path();
  ::execv(engine.c_str(), argv);  // argv[0] unchanged: the engine's usage line says `finmoe`
  std::cerr << "finmoe: error: cannot run the engine " << engine << ": " << std::strerror(errno)
            << " (it is installed beside the finmoe binary; FINMOE_ENGINE names another)\n";
  std::exit(1);
}

// `finmoe merge ...` when it runs without libtorch: its exit code; nullopt
// when the engine is to run the command line instead.
std::optional<int> merge_here(int argc, char** argv) {
  CLI::App app{"finmoe"};
  app.require_subcommand(1);
  finmoe::cli::MergeArgs args;
  finmoe::cli::add_merge_options(app, args);
  finmoe::cli::check_numbers(&app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError&) {
    return std::nullopt;  // --help, or a mistake: the engine prints either
  }
  if (args.moe) return std::nullopt;
  try {
    return finmoe::cli::run_reporting_errors([&] {
      finmoe::kernels::active_isa();  // a bad FINMOE_ISA fails here, naming the variable
      return finmoe::cli::run_merge(args, [](const finmoe::MergeRecipe& r, const std::string& out,
                                             const finmoe::MergeOptions& o) {
        return finmoe::merging::merge_models_with(r, out, o, nullptr);
      });
    });
  } catch (const finmoe::merging::NeedsLibtorch&) {  // not a std::exception: thrown through
    return std::nullopt;                             // after planning, before anything is written
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 2 && std::strcmp(argv[1], "merge") == 0) {
    finmoe::cli::keep_freed_memory();
    if (const std::optional<int> rc = merge_here(argc, argv)) return *rc;
  }
  exec_engine(argv);
}
