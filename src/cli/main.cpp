// `finmoe`: parse, call the library, print. Library errors (finmoe::Error)
// become a one-line message and exit code 2; bugs exit 1.
#include <iostream>
#include <string>

#include "cli/commands.h"
#include "finmoe/error.h"
#include "finmoe/model.h"
#include "kernels/isa.h"

int main(int argc, char** argv) {
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
  finmoe::cli::add_quantize(app, run);
  finmoe::cli::add_experts(app, run);
  finmoe::cli::add_train(app, run);
  finmoe::cli::add_corpus(app, run);
  finmoe::cli::add_launch(app, run);
  finmoe::cli::add_serve(app, run);
  finmoe::cli::add_esft(app, run);
  finmoe::cli::add_lora(app, run);
  finmoe::cli::add_eval(app, run);
  finmoe::cli::add_demo(app, run);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    // Commands that decode keep libtorch on one thread (see TorchWork); `bench`
    // is here for `bench decode` and `bench serve`.
    finmoe::kernels::active_isa();  // a bad FINMOE_ISA fails here, naming the variable
    const std::string command = app.get_subcommands().front()->get_name();
    const bool decodes = command == "generate" || command == "chat" || command == "serve" ||
                         command == "bench" || command == "logits";
    finmoe::set_torch_threads_for(decodes ? finmoe::TorchWork::kDecoding
                                          : finmoe::TorchWork::kTraining);
    return run();
  } catch (const finmoe::Error& e) {
    std::cerr << "finmoe: error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "finmoe: internal error: " << e.what() << "\n";
    return 1;
  }
}
