#pragma once
// Running the built `finmoe` binary from the CLI tests.
#include <array>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <sys/wait.h>

namespace finmoe::clitest {

struct Result {
  int status = -1;
  std::string out;  // stdout + stderr
};

// Runs `finmoe ARGS` (FINMOE_BIN overrides the binary the build made).
inline Result run(const std::string& args) {
  const char* bin = std::getenv("FINMOE_BIN");
  const std::string cmd = std::string(bin ? bin : FINMOE_CLI_PATH) + " " + args + " 2>&1";
  Result r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  r.status = WEXITSTATUS(pclose(p));
  return r;
}

}  // namespace finmoe::clitest
