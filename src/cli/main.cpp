// `finmoe-engine`: the `finmoe` command with every subcommand (the front end,
// src/front/main.cpp, runs the merges it can without libtorch and executes
// this for everything else). Parse, call the library, print. Exit codes: 0
// success; 2 bad input, with a one-line message naming the file, field or
// option (a finmoe::Error, a path the file system refuses, or a command line
// CLI11 refuses); 1 a bug ("internal error").
#include <string>

#include "cli/cli_common.h"
#include "cli/commands.h"
#include "finmoe/error.h"
#include "finmoe/model.h"
#include "kernels/isa.h"

int main(int argc, char** argv) {
  finmoe::cli::keep_freed_memory();
  CLI::App app{"finmoe: build, adapt and serve financial Mixture-of-Experts models"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "finmoe 0.1.0");
  finmoe::cli::Run run;
  finmoe::cli::add_info(app, run);
  finmoe::cli::add_tokenize(app, run);
  finmoe::cli::add_tokenizer(app, run);
  finmoe::cli::add_logits(app, run);
  finmoe::cli::add_generate(app, run);
  finmoe::cli::add_chat(app, run);
  finmoe::cli::add_init(app, run);
  finmoe::cli::add_bench(app, run);
  finmoe::cli::add_upcycle(app, run);
  finmoe::cli::add_mla_convert(app, run);
  finmoe::cli::add_merge(app, run);
  finmoe::cli::add_quantize(app, run);
  finmoe::cli::add_export(app, run);
  finmoe::cli::add_experts(app, run);
  finmoe::cli::add_train(app, run);
  finmoe::cli::add_corpus(app, run);
  finmoe::cli::add_launch(app, run);
  finmoe::cli::add_serve(app, run);
  finmoe::cli::add_esft(app, run);
  finmoe::cli::add_lora(app, run);
  finmoe::cli::add_eval(app, run);
  finmoe::cli::add_demo(app, run);
  finmoe::cli::add_experiment(app, run);
  finmoe::cli::add_data(app, run);
  finmoe::cli::check_numbers(&app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version exit 0; an unknown option or a value that does not
    // convert is bad input like any other
    return app.exit(e) == 0 ? 0 : 2;
  }
  return finmoe::cli::run_reporting_errors([&] {
    // Commands that decode keep libtorch on one thread (see TorchWork); `bench`
    // is here for `bench decode` and `bench serve`.
    finmoe::kernels::active_isa();  // a bad FINMOE_ISA fails here, naming the variable
    const std::string command = app.get_subcommands().front()->get_name();
    const bool decodes = command == "generate" || command == "chat" || command == "serve" ||
                         command == "bench" || command == "logits";
    finmoe::set_torch_threads_for(decodes ? finmoe::TorchWork::kDecoding
                                          : finmoe::TorchWork::kTraining);
    return run();
  });
}
