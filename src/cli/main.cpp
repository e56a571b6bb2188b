// `finmoe`: parse, call the library, print. Exit codes: 0 success; 2 bad
// input, with a one-line message naming the file, field or option (a
// finmoe::Error, a path the file system refuses, or a command line CLI11
// refuses); 1 a bug ("internal error").
#include <malloc.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <string>

#include "cli/commands.h"
#include "finmoe/error.h"
#include "finmoe/model.h"
#include "kernels/isa.h"

namespace {

// CLI11 reads integers with strtoll(s, 0): "010" is 8, "0x10" is 16, a
// number past 64 bits saturates silently, "-1" for an unsigned option wraps
// to 2^64-1; it reads "nan" and "1e999" (inf) as floats. finmoe's numeric
// options take decimal integers (leading zeros dropped) that fit their type,
// and finite numbers; anything else is refused naming the option (exit 2).
enum class Number { kInteger, kUnsigned, kFloat };

std::string strict_number(std::string& s, Number kind) {
  errno = 0;
  if (kind == Number::kFloat) {
    char* end = nullptr;
    const double v = std::strtod(s.c_str(), &end);
    if (end == s.c_str() || *end != '\0' || !std::isfinite(v) || errno == ERANGE)
      return "expected a finite number, got '" + s + "'";
    return "";
  }
  const size_t sign = !s.empty() && (s[0] == '-' || s[0] == '+') ? 1 : 0;
  if (s.size() == sign || s.find_first_not_of("0123456789", sign) != std::string::npos)
    return "expected a decimal integer, got '" + s + "'";
  if (kind == Number::kUnsigned && s[0] == '-')
    return "expected a non-negative integer, got '" + s + "'";
  // leading zeros are decimal here, not CLI11's octal: "010" is 10
  const size_t first = s.find_first_not_of('0', sign);
  s.erase(sign, std::min(first, s.size() - 1) - sign);
  if (kind == Number::kInteger)
    (void)std::strtoll(s.c_str(), nullptr, 10);
  else
    (void)std::strtoull(s.c_str(), nullptr, 10);
  if (errno == ERANGE)
    return "'" + s + "' does not fit in a " +
           (kind == Number::kInteger ? "signed" : "unsigned") + " 64-bit integer";
  return "";
}

void check_numbers(CLI::App* app) {
  for (CLI::Option* o : app->get_options()) {
    const std::string type = o->get_type_name();
    Number kind;
    if (type.starts_with("UINT"))
      kind = Number::kUnsigned;
    else if (type.starts_with("INT"))
      kind = Number::kInteger;
    else if (type.starts_with("FLOAT"))
      kind = Number::kFloat;
    else
      continue;
    o->transform(CLI::Validator([kind](std::string& s) { return strict_number(s, kind); }, ""));
  }
  for (CLI::App* sub : app->get_subcommands([](CLI::App*) { return true; })) check_numbers(sub);
}

}  // namespace

// glibc returns every freed block above its mmap threshold (at most 32 MiB)
// to the kernel and trims the heap top, so a command that allocates and frees
// tensors of tens of MiB per step (merge chunks, conversions, logits) pays
// page faults and zeroing for fresh pages every time: a merge of three
// 0.5B models spent half its time there. Keep freed memory for reuse
// (MALLOC_* / GLIBC_TUNABLES in the environment still win).
void keep_freed_memory() {
  if (std::getenv("GLIBC_TUNABLES") || std::getenv("MALLOC_MMAP_THRESHOLD_") || std::getenv("MALLOC_TRIM_THRESHOLD_"))
    return;
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

int main(int argc, char** argv) {
  keep_freed_memory();
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
  check_numbers(&app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version exit 0; an unknown option or a value that does not
    // convert is bad input like any other
    return app.exit(e) == 0 ? 0 : 2;
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
  } catch (const std::filesystem::filesystem_error& e) {
    // a path the system refuses (too long, a loop of links, no permission)
    // where a loader asks std::filesystem directly; what() names the path
    std::cerr << "finmoe: error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "finmoe: internal error: " << e.what() << "\n";
    return 1;
  }
}
