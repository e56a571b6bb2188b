#pragma once
// Data-parallel training over libtorch's c10d: every process (rank) holds a
// full copy of the model, takes its own rows of each global batch, and the
// ranks sum their gradients before the optimizer step, so W ranks take the
// same steps as one process would on the whole batch.
//
// Processes find each other the way torchrun sets them up (environment
// variables RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT): rank 0
// serves a TCPStore at MASTER_ADDR:MASTER_PORT, the others connect to it, and
// the collectives run over Gloo (CPU tensors) or NCCL (CUDA tensors, in builds
// against a CUDA libtorch). `finmoe launch` starts the ranks of one machine.
//
// Thread safety: a DistContext is used by one thread; every rank must call the
// collectives in the same order with tensors of the same shapes and dtypes.
// Errors: finmoe::Error naming the variable, rank or operation, on the rank
// that saw the problem (the others then fail with a lost-connection error).
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace at {
class Tensor;
}

namespace finmoe {

struct TrainBatch;

// How this process takes part in the job; defaults are a single process.
struct DistConfig {
  int rank = 0;                           // RANK: 0 .. world_size-1
  int world_size = 1;                     // WORLD_SIZE
  int local_rank = 0;                     // LOCAL_RANK: rank on this machine (the GPU to use)
  std::string master_addr = "127.0.0.1";  // MASTER_ADDR: host of rank 0
  int master_port = 29500;                // MASTER_PORT: its TCPStore port
  double timeout_s = 600;                 // FINMOE_DIST_TIMEOUT: rendezvous and each collective
  std::string backend = "auto";           // FINMOE_DIST_BACKEND: auto | gloo | nccl
};

// The torchrun variables of this process's environment; unset ones keep the
// single-process defaults. Throws Error naming the variable when one is not a
// number, RANK is outside [0, WORLD_SIZE), or WORLD_SIZE > 1 comes without
// MASTER_ADDR and MASTER_PORT.
DistConfig dist_config_from_env();

// The c10d backends this build can use: "gloo" (needs gloo's headers at build
// time) and "nccl" (builds against a CUDA libtorch with NCCL).
std::vector<std::string> dist_backends();

class DistContext {
 public:
  // world_size 1: no process group; every collective returns at once with its
  // input unchanged. Otherwise joins the group (blocks until all ranks have
  // joined or timeout_s passed) and checks that the ranks agree on
  // WORLD_SIZE and that no rank is taken twice. `cuda`: the tensors given to
  // the collectives live on cuda:local_rank, which picks NCCL under "auto".
  // Throws Error when the master cannot be reached or does not hear from every
  // rank in time, the port is taken, or the backend is not in this build.
  explicit DistContext(const DistConfig& config = {}, bool cuda = false);
  ~DistContext();
  DistContext(const DistContext&) = delete;
  DistContext& operator=(const DistContext&) = delete;

  int rank() const;
  int world_size() const;
  int local_rank() const;
  bool is_main() const { return rank() == 0; }  // writes checkpoints, metrics, progress
  bool distributed() const { return world_size() > 1; }
  const std::string& backend() const;  // "none" (one process), "gloo" or "nccl"

  // Tensors, in place. Tensors of one dtype and device are packed into
  // contiguous buffers of at most bucket_bytes (a larger tensor travels
  // alone), one collective per buffer.
  void broadcast(const std::vector<at::Tensor>& tensors, int root = 0);
  void all_reduce_sum(const std::vector<at::Tensor>& tensors);
  void all_reduce_mean(const std::vector<at::Tensor>& tensors);

  // The gradients of `params`, summed (mean = false) or averaged over the
  // ranks. A parameter without a gradient on some ranks (an expert no token
  // of theirs was routed to) counts as zeros there and gets one; one without
  // a gradient on every rank keeps none, as in a single process.
  void all_reduce_grads(const std::vector<at::Tensor>& params, bool mean);

  // Sums of scalars over the ranks (loss sums, token counts: exact for
  // integers below 2^53), one collective for the whole vector.
  std::vector<double> all_reduce_sum(const std::vector<double>& values);
  double all_reduce_sum(double value) { return all_reduce_sum(std::vector<double>{value})[0]; }

  void barrier();

  // Throws Error on every rank, listing the values, when `value` is not the
  // same on all ranks; for start-up checks (configuration, model, resume
  // step), not per step: it goes through the TCPStore.
  void check_same(const std::string& what, const std::string& value);

  // This rank's share of a global batch: rows rank, rank + W, rank + 2W, ...
  // Every rank draws the same global batch from the same deterministic
  // source, so shards are disjoint and resuming needs no per-rank state.
  // Throws Error when the batch has fewer rows than there are ranks.
  TrainBatch shard(const TrainBatch& global) const;

  size_t bucket_bytes = size_t(25) << 20;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// `finmoe launch`: starts the ranks of one machine as child processes.
struct LaunchOptions {
  int nproc = 1;                          // ranks on this machine
  int nnodes = 1;                         // machines in the job
  int node_rank = 0;                      // this machine: RANK = node_rank * nproc + LOCAL_RANK
  std::string master_addr = "127.0.0.1";  // MASTER_ADDR
  int master_port = 0;                    // MASTER_PORT; 0: a free port (one machine only)
  bool prefix_output = true;              // "[rankN] " before every line of a child's output
  std::vector<std::string> command;       // program (looked up in PATH) and its arguments
};

// Runs `command` nproc times with RANK, LOCAL_RANK, WORLD_SIZE,
// LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT set (and OMP_NUM_THREADS =
// cores / nproc unless set), forwards each child's stdout and stderr line by
// line, and forwards SIGINT and SIGTERM to the children (a second one kills
// them). When a child fails, the others get SIGTERM (SIGKILL 10 s later).
// Returns 0 when all succeeded, else the first failing child's exit code
// (128 + signal when it was killed), or 128 + signal when interrupted.
// Throws Error for bad options or when a child cannot be started.
int launch(const LaunchOptions& options);

}  // namespace finmoe
