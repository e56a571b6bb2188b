#pragma once
// The `finmoe` subcommands. Each registers its options on the app and returns
// the function that runs it; the work itself is a library call.
#include <functional>
#include <string>

#include <CLI/CLI.hpp>

namespace finmoe::cli {

using Run = std::function<int()>;

void add_info(CLI::App& app, Run& run);
void add_tokenize(CLI::App& app, Run& run);
void add_tokenizer(CLI::App& app, Run& run);
void add_logits(CLI::App& app, Run& run);
void add_generate(CLI::App& app, Run& run);
void add_chat(CLI::App& app, Run& run);
void add_init(CLI::App& app, Run& run);
void add_bench(CLI::App& app, Run& run);
void add_upcycle(CLI::App& app, Run& run);
void add_mla_convert(CLI::App& app, Run& run);
void add_merge(CLI::App& app, Run& run);
void add_quantize(CLI::App& app, Run& run);
void add_export(CLI::App& app, Run& run);
void add_experts(CLI::App& app, Run& run);
void add_train(CLI::App& app, Run& run);
void add_corpus(CLI::App& app, Run& run);
void add_launch(CLI::App& app, Run& run);
void add_serve(CLI::App& app, Run& run);
void add_bench_serve(CLI::App* bench, Run& run);  // `bench serve`, under add_bench's `bench`
void add_esft(CLI::App& app, Run& run);
void add_lora(CLI::App& app, Run& run);
void add_eval(CLI::App& app, Run& run);
void add_demo(CLI::App& app, Run& run);
void add_experiment(CLI::App& app, Run& run);
void add_data(CLI::App& app, Run& run);

}  // namespace finmoe::cli
