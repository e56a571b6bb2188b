// finmoe launch: the ranks of a data-parallel job on one machine (finmoe/distributed.h).
#include <climits>
#include <string>
#include <vector>

#include <unistd.h>

#include "cli/commands.h"
#include "finmoe/distributed.h"

namespace finmoe::cli {
namespace {

// `finmoe` as the command means this very binary, PATH or not.
std::string self_path() {
  char buf[PATH_MAX];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  return n > 0 ? std::string(buf, size_t(n)) : "finmoe";
}

}  // namespace

void add_launch(CLI::App& app, Run& run) {
  auto* c = app.add_subcommand(
      "launch", "Run a command as the N ranks of a data-parallel job (torchrun's environment)");
  c->footer(
      "Example: finmoe launch --nproc 2 -- finmoe train ...\n"
      "Each child gets RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT\n"
      "(and OMP_NUM_THREADS = cores / nproc unless set). Lines of its output are prefixed\n"
      "[rankN]. SIGINT/SIGTERM are passed on; when a rank fails the others are stopped and\n"
      "launch exits with the failed rank's code. `finmoe` as CMD is this binary.");
  static LaunchOptions o;
  c->add_option("--nproc", o.nproc, "ranks on this machine")->capture_default_str();
  c->add_option("--nnodes", o.nnodes, "machines in the job")->capture_default_str();
  c->add_option("--node-rank", o.node_rank, "this machine, 0 .. nnodes-1")->capture_default_str();
  c->add_option("--master-addr", o.master_addr, "host of rank 0")->capture_default_str();
  c->add_option("--master-port", o.master_port,
                "port of rank 0's rendezvous (default: a free port; required with --nnodes > 1)");
  c->add_flag("--no-prefix", [](int64_t) { o.prefix_output = false; },
              "print the children's output without the [rankN] prefix");
  c->add_option("command", o.command, "CMD ARGS... (after --)")->required();
  c->callback([&run] {
    run = [] {
      if (!o.command.empty() && o.command[0] == "finmoe") o.command[0] = self_path();
      return launch(o);
    };
  });
}

}  // namespace finmoe::cli
