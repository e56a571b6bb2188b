// ./finmoe.sh itself: no command prints the usage (exit code 2) instead of
// starting the demo, and its log lines are bold on a terminal only.
#include <gtest/gtest.h>

#include <pty.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <string>

namespace {

const std::string kScript = std::string(FINMOE_SOURCE_DIR) + "/finmoe.sh";

struct Ran {
  int status = -1;
  std::string out;
};

// stdout and stderr into a pipe (not a terminal).
Ran run_piped(const std::string& args) {
  const std::string cmd = "FINMOE_BUILD_DIR='" + std::string(FINMOE_BINARY_DIR) + "' bash '" +
                          kScript + "' " + args + " 2>&1 </dev/null";
  Ran r;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  for (size_t n; (n = std::fread(buf.data(), 1, buf.size(), p)) > 0;) r.out.append(buf.data(), n);
  r.status = WEXITSTATUS(::pclose(p));
  return r;
}

// stdout and stderr on a pseudo-terminal.
Ran run_on_terminal() {
  Ran r;
  int master = -1;
  const pid_t pid = ::forkpty(&master, nullptr, nullptr, nullptr);
  if (pid < 0) return r;
  if (pid == 0) {
    ::setenv("FINMOE_BUILD_DIR", FINMOE_BINARY_DIR, 1);
    ::execlp("bash", "bash", kScript.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  char buf[4096];
  for (ssize_t n; (n = ::read(master, buf, sizeof(buf))) > 0;) r.out.append(buf, size_t(n));
  ::close(master);
  int status = 0;
  ::waitpid(pid, &status, 0);
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

}  // namespace

TEST(FinmoeSh, NoCommandPrintsUsageAndExits2) {
  const Ran r = run_piped("");
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find("usage: ./finmoe.sh COMMAND"), std::string::npos) << r.out;
  for (const char* cmd : {"./finmoe.sh demo", "./finmoe.sh test", "./finmoe.sh build"})
    EXPECT_NE(r.out.find(cmd), std::string::npos) << cmd << " missing from\n" << r.out;
  // the demo did not start
  EXPECT_EQ(r.out.find("building with"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("[finmoe] no command given"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find('\033'), std::string::npos) << "an escape code in piped output:\n" << r.out;
}

TEST(FinmoeSh, HelpExits0) {
  const Ran r = run_piped("--help");
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("./finmoe.sh tour"), std::string::npos) << r.out;
}

TEST(FinmoeSh, LogLinesAreBoldOnATerminalOnly) {
  const Ran r = run_on_terminal();
  EXPECT_EQ(r.status, 2) << r.out;
  EXPECT_NE(r.out.find("\033[1m[finmoe]\033[0m no command given"), std::string::npos) << r.out;
}
