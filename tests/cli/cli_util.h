#pragma once
// Running the built `finmoe` binary from the CLI tests.
#include <array>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <string_view>
#include <vector>

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

// How a process ended: its exit code, or the signal that ended it.
struct Exit {
  int code = -1;    // when it exited
  int signal = 0;   // when a signal ended it (SIGALRM: the time limit)
  std::string out;  // stdout + stderr
  bool timed_out() const { return signal == SIGALRM; }
};

// Runs `finmoe ARGS...` without a shell, ended by SIGALRM after
// `timeout_s` seconds; a crash shows as a signal, not as an exit code.
inline Exit run_args(const std::vector<std::string>& args, unsigned timeout_s = 60) {
  const char* bin = std::getenv("FINMOE_BIN");
  const std::string exe = bin ? bin : FINMOE_CLI_PATH;
  Exit e;
  int fds[2];
  if (::pipe(fds) != 0) return e;
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(fds[1], 1);
    ::dup2(fds[1], 2);
    ::close(fds[0]);
    ::close(fds[1]);
    ::alarm(timeout_s);  // kept across exec
    std::vector<char*> argv = {const_cast<char*>(exe.c_str())};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(exe.c_str(), argv.data());
    ::_exit(127);
  }
  ::close(fds[1]);
  char buf[4096];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof(buf))) != 0;) {
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (e.out.size() < (size_t(1) << 26)) e.out.append(buf, size_t(n));  // 64 MiB
  }
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (WIFSIGNALED(status))
    e.signal = WTERMSIG(status);
  else
    e.code = WEXITSTATUS(status);
  return e;
}

}  // namespace finmoe::clitest
