#pragma once
// Internal helpers of the data layer: running a command, reading (gzipped)
// files, listing a package's files.
#include <string>
#include <vector>

namespace finmoe::data {

struct ProcessResult {
  int status = -1;     // exit status; 127 when the program could not be started
  std::string output;  // stdout and stderr together
};
// Runs argv[0] (looked up in PATH) with the arguments, in `cwd` ("" = here),
// without a shell. Never throws for a failing command; throws Error when no
// process can be created.
ProcessResult run_process(const std::vector<std::string>& argv, const std::string& cwd = "");

// Whole file, gunzipped when it is gzip data (zlib reads plain files as is).
// Throws Error naming the file.
std::string read_maybe_gzipped(const std::string& path);

// Regular files under `dir` (recursively), as paths relative to it, sorted.
// Throws Error naming the directory when it does not exist.
std::vector<std::string> list_files(const std::string& dir);

}  // namespace finmoe::data
