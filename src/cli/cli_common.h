#pragma once
// What both executables of the `finmoe` command share (src/front/main.cpp, the
// front end; src/cli/main.cpp, the engine): strict numeric options, the
// allocator setting, and how an error becomes a message and an exit code.
#include <functional>

#include <CLI/CLI.hpp>

namespace finmoe::cli {

// CLI11 reads integers with strtoll(s, 0): "010" is 8, "0x10" is 16, a
// number past 64 bits saturates silently, "-1" for an unsigned option wraps
// to 2^64-1; it reads "nan" and "1e999" (inf) as floats. finmoe's numeric
// options take decimal integers (leading zeros dropped) that fit their type,
// and finite numbers; anything else is refused naming the option (exit 2).
void check_numbers(CLI::App* app);

// glibc returns every freed block above its mmap threshold (at most 32 MiB)
// to the kernel and trims the heap top, so a command that allocates and frees
// tensors of tens of MiB per step (merge chunks, conversions, logits) pays
// page faults and zeroing for fresh pages every time: a merge of three
// 0.5B models spent half its time there. Keep freed memory for reuse
// (MALLOC_* / GLIBC_TUNABLES in the environment still win).
void keep_freed_memory();

// Runs a command: its return value, or 2 with "finmoe: error: ..." on stderr
// for bad input (a finmoe::Error, a path the file system refuses), or 1 with
// "finmoe: internal error: ..." for any other std::exception (others pass through).
int run_reporting_errors(const std::function<int()>& command);

}  // namespace finmoe::cli
