// `finmoe launch` (finmoe/distributed.h): the ranks of one machine as child
// processes with torchrun's environment, their output prefixed line by line.
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "finmoe/distributed.h"
#include "finmoe/error.h"

extern char** environ;

namespace finmoe {
namespace {

// Signals reach the poll loop through a pipe (the handler only writes a byte).
int g_signal_pipe[2] = {-1, -1};

void on_signal(int sig) {
  const int saved = errno;
  const unsigned char b = static_cast<unsigned char>(sig);
  [[maybe_unused]] auto n = ::write(g_signal_pipe[1], &b, 1);
  errno = saved;
}

// A port nobody listens on right now (the kernel picks it); rank 0 binds it
// moments later, so a race with another program is possible but unlikely.
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw Error(std::string("launch: socket(): ") + std::strerror(errno));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof(a);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    const std::string e = std::strerror(errno);
    ::close(fd);
    throw Error("launch: could not find a free port: " + e);
  }
  ::close(fd);
  return ntohs(a.sin_port);
}

void write_all(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    const ssize_t n = ::write(fd, s.data() + off, s.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // our own stdout is gone: nothing left to tell
    off += size_t(n);
  }
}

struct Stream {
  int fd = -1;      // read end of the child's stdout or stderr; -1 at EOF
  int out_fd = 1;   // where its lines go
  std::string buf;  // an unfinished line
};

struct Child {
  pid_t pid = -1;
  bool running = false;
  int code = 0;  // exit code, or 128 + signal
  Stream out, err;
};

// Writes the complete lines of `s.buf` (all of it at EOF) with the prefix.
void flush_lines(Stream& s, const std::string& prefix, bool eof) {
  std::string text;
  size_t start = 0;
  for (size_t nl; (nl = s.buf.find('\n', start)) != std::string::npos; start = nl + 1) {
    text += prefix;
    text.append(s.buf, start, nl + 1 - start);
  }
  s.buf.erase(0, start);
  if (eof && !s.buf.empty()) {
    text += prefix + s.buf + "\n";
    s.buf.clear();
  }
  if (!text.empty()) write_all(s.out_fd, text);
}

// Reads what is there; closes the stream at EOF.
void pump(Stream& s, const std::string& prefix) {
  char buf[65536];
  for (;;) {
    const ssize_t n = ::read(s.fd, buf, sizeof(buf));
    if (n > 0) {
      s.buf.append(buf, size_t(n));
      // an endless line must not grow without bound
      flush_lines(s, prefix, s.buf.size() > (1 << 20));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    flush_lines(s, prefix, true);
    ::close(s.fd);
    s.fd = -1;
    return;
  }
}

// "NAME=VALUE" strings: this process's environment with `set` replacing or adding.
std::vector<std::string> child_env(const std::vector<std::pair<std::string, std::string>>& set) {
  std::vector<std::string> out;
  for (char** e = environ; *e; ++e) {
    const std::string kv = *e;
    const std::string name = kv.substr(0, kv.find('='));
    const bool replaced = std::any_of(set.begin(), set.end(),
                                      [&](const auto& p) { return p.first == name; });
    if (!replaced) out.push_back(kv);
  }
  for (const auto& [k, v] : set) out.push_back(k + "=" + v);
  return out;
}

std::vector<char*> c_strings(std::vector<std::string>& v) {
  std::vector<char*> out;
  for (auto& s : v) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

// Restores the signal dispositions and closes the pipe when launch() returns.
struct SignalScope {
  struct sigaction old_int{}, old_term{};
  SignalScope() {
    if (::pipe2(g_signal_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
      throw Error(std::string("launch: pipe(): ") + std::strerror(errno));
    }
    struct sigaction sa{};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    ::sigaction(SIGINT, &sa, &old_int);
    ::sigaction(SIGTERM, &sa, &old_term);
  }
  ~SignalScope() {
    ::sigaction(SIGINT, &old_int, nullptr);
    ::sigaction(SIGTERM, &old_term, nullptr);
    ::close(g_signal_pipe[0]);
    ::close(g_signal_pipe[1]);
    g_signal_pipe[0] = g_signal_pipe[1] = -1;
  }
};

// Each child leads its own process group, so a signal reaches its children too.
void signal_all(std::vector<Child>& children, int sig) {
  for (auto& c : children) {
    if (c.running) ::kill(-c.pid, sig);
  }
}

}  // namespace

int launch(const LaunchOptions& o) {
  if (o.nproc < 1) throw Error("launch: --nproc must be at least 1, got " + std::to_string(o.nproc));
  if (o.nnodes < 1) throw Error("launch: --nnodes must be at least 1, got " + std::to_string(o.nnodes));
  if (o.node_rank < 0 || o.node_rank >= o.nnodes) {
    throw Error("launch: --node-rank " + std::to_string(o.node_rank) + " is outside [0, " +
                std::to_string(o.nnodes) + ")");
  }
  if (o.command.empty()) throw Error("launch: no command to run (finmoe launch --nproc N -- CMD ARGS...)");
  if (o.master_port < 0 || o.master_port > 65535) {
    throw Error("launch: --master-port " + std::to_string(o.master_port) + " is outside [0, 65535]");
  }
  if (o.master_port == 0 && o.nnodes > 1) {
    throw Error("launch: --nnodes " + std::to_string(o.nnodes) +
                " needs --master-port (the same on every machine)");
  }
  const int port = o.master_port ? o.master_port : free_port();
  const int world = o.nproc * o.nnodes;
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  const bool set_threads = !std::getenv("OMP_NUM_THREADS") && o.nproc > 1;

  SignalScope signals;
  std::vector<Child> children(size_t(o.nproc));
  std::vector<std::string> prefixes;
  for (int local = 0; local < o.nproc; ++local) {
    const int rank = o.node_rank * o.nproc + local;
    prefixes.push_back(o.prefix_output ? "[rank" + std::to_string(rank) + "] " : "");
  }

  auto stop_all = [&](int sig) { signal_all(children, sig); };
  int first_failure = -1;  // rank whose failure ended the job
  int interrupted = 0;     // the signal that stopped us
  using Clock = std::chrono::steady_clock;
  Clock::time_point kill_at = Clock::time_point::max();
  Clock::time_point reaped_all = Clock::time_point::max();

  for (int local = 0; local < o.nproc; ++local) {
    const int rank = o.node_rank * o.nproc + local;
    std::vector<std::pair<std::string, std::string>> set = {
        {"RANK", std::to_string(rank)},
        {"LOCAL_RANK", std::to_string(local)},
        {"WORLD_SIZE", std::to_string(world)},
        {"LOCAL_WORLD_SIZE", std::to_string(o.nproc)},
        {"GROUP_RANK", std::to_string(o.node_rank)},
        {"MASTER_ADDR", o.master_addr},
        {"MASTER_PORT", std::to_string(port)},
    };
    // N ranks each with all cores' threads would oversubscribe the machine.
    if (set_threads) set.push_back({"OMP_NUM_THREADS", std::to_string(std::max(1u, cores / o.nproc))});
    std::vector<std::string> env = child_env(set);
    std::vector<std::string> args = o.command;
    auto envp = c_strings(env);
    auto argv = c_strings(args);
    int out[2], err[2];
    if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0) {
      stop_all(SIGKILL);
      throw Error(std::string("launch: pipe(): ") + std::strerror(errno));
    }
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0) {
      stop_all(SIGKILL);
      throw Error(std::string("launch: fork(): ") + std::strerror(errno));
    }
    if (pid == 0) {
      // Child: only async-signal-safe calls until exec.
      ::setpgid(0, 0);
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);  // the launcher died: stop too
      if (::getppid() != parent) ::_exit(128 + SIGTERM);
      struct sigaction dfl{};
      dfl.sa_handler = SIG_DFL;
      ::sigaction(SIGINT, &dfl, nullptr);
      ::sigaction(SIGTERM, &dfl, nullptr);
      ::dup2(out[1], 1);
      ::dup2(err[1], 2);
      ::execvpe(argv[0], argv.data(), envp.data());
      const char msg[] = "finmoe launch: cannot run the command: ";
      [[maybe_unused]] auto n = ::write(2, msg, sizeof(msg) - 1);
      n = ::write(2, argv[0], std::strlen(argv[0]));
      n = ::write(2, "\n", 1);
      ::_exit(127);
    }
    ::setpgid(pid, pid);  // also here, so a signal sent right away finds the group
    ::close(out[1]);
    ::close(err[1]);
    Child& c = children[size_t(local)];
    c.pid = pid;
    c.running = true;
    c.out = {out[0], 1, {}};
    c.err = {err[0], 2, {}};
    ::fcntl(out[0], F_SETFL, O_NONBLOCK);
    ::fcntl(err[0], F_SETFL, O_NONBLOCK);
  }

  for (;;) {
    std::vector<pollfd> fds{{g_signal_pipe[0], POLLIN, 0}};
    std::vector<std::pair<size_t, Stream*>> owners;
    bool any_running = false;
    for (size_t i = 0; i < children.size(); ++i) {
      auto& c = children[i];
      any_running = any_running || c.running;
      for (Stream* s : {&c.out, &c.err}) {
        if (s->fd >= 0) {
          fds.push_back({s->fd, POLLIN, 0});
          owners.push_back({i, s});
        }
      }
    }
    // Done when every child is reaped and its pipes are drained; a grandchild
    // that keeps a pipe open is given two seconds.
    if (!any_running) {
      if (reaped_all == Clock::time_point::max()) reaped_all = Clock::now();
      if (owners.empty() || Clock::now() - reaped_all > std::chrono::seconds(2)) break;
    }
    ::poll(fds.data(), fds.size(), 100);
    for (size_t k = 1; k < fds.size(); ++k) {
      if (fds[k].revents) pump(*owners[k - 1].second, prefixes[owners[k - 1].first]);
    }
    unsigned char sig;
    while (::read(g_signal_pipe[0], &sig, 1) == 1) {
      // The first signal is passed on; a second one ends the children at once.
      stop_all(interrupted ? SIGKILL : int(sig));
      if (!interrupted) interrupted = sig;
      kill_at = std::min(kill_at, Clock::now() + std::chrono::seconds(10));
    }
    for (size_t i = 0; i < children.size(); ++i) {
      auto& c = children[i];
      if (!c.running) continue;
      int status = 0;
      if (::waitpid(c.pid, &status, WNOHANG) != c.pid) continue;
      c.running = false;
      c.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      if (c.code != 0 && first_failure < 0 && !interrupted) {
        first_failure = int(i);
        write_all(2, "finmoe launch: rank " + std::to_string(o.node_rank * o.nproc + int(i)) +
                         " exited with code " + std::to_string(c.code) +
                         "; stopping the other ranks\n");
        stop_all(SIGTERM);
        kill_at = Clock::now() + std::chrono::seconds(10);
      }
    }
    if (Clock::now() >= kill_at) {
      stop_all(SIGKILL);
      kill_at = Clock::time_point::max();
    }
  }
  // Whatever is still buffered or in the pipes.
  for (size_t i = 0; i < children.size(); ++i) {
    for (Stream* s : {&children[i].out, &children[i].err}) {
      if (s->fd < 0) continue;
      pump(*s, prefixes[i]);
      flush_lines(*s, prefixes[i], true);
      if (s->fd >= 0) ::close(s->fd);
    }
  }
  if (first_failure >= 0) return children[size_t(first_failure)].code;
  if (interrupted) return 128 + interrupted;
  return 0;
}

}  // namespace finmoe
