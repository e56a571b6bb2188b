#pragma once
// Decode/prefill throughput of a model against the memory-bandwidth floor
// measured in the same run. On a shared machine the bandwidth drifts by tens
// of percent within seconds, so on CPU every timed decode run is bracketed by
// two bandwidth samples and its ratio to the floor uses their mean.
#include <cstdint>
#include <vector>

#include <nlohmann/json.hpp>

#include "finmoe/model.h"

namespace finmoe {

struct DecodeBenchOptions {
  int64_t prefill_tokens = 512;
  std::vector<int64_t> batch_sizes{1, 4, 16};
  int64_t context_tokens = 64;  // prompt length of each decoding sequence
  int64_t decode_steps = 32;    // timed steps per batch size
  int repeats = 3;              // timed runs per figure (best tokens/s, median ratio)
};

struct DecodeBenchResult {
  double bandwidth_gb_s = 0;        // read bandwidth (all threads), median of the samples
  double weight_bytes_per_token = 0;  // weights one decode step streams
  double floor_tokens_per_s = 0;    // bandwidth / bytes per token (batch 1)
  double prefill_tokens_per_s = 0;
  struct Decode {
    int64_t batch = 0;
    double tokens_per_s = 0;  // best run
    double ms_per_step = 0;   // best run
    // Median over the runs of (steps/s ÷ the floor's steps/s at that run):
    // how close a step comes to streaming the weights once.
    double step_ratio_to_floor = 0;
  };
  std::vector<Decode> decode;
  nlohmann::json to_json() const;
};

// Read bandwidth of host memory: sums a buffer with every kernel-pool thread.
// Kept alive so a benchmark can sample it between its timed runs.
class ReadBandwidthProbe {
 public:
  explicit ReadBandwidthProbe(size_t bytes = size_t(1) << 30);
  // One timed pass over the buffer, in GB/s.
  double sample_gb_s();

 private:
  double gigabytes() const;
  std::vector<uint64_t> buf_;
  std::vector<uint64_t> partial_;
  volatile uint64_t sink_ = 0;
};

// Bytes of weights a batch-1 decode step reads: every parameter but the
// embedding table (one row read), plus the table again when it is the tied head;
// of a MoE layer's routed experts only the num_experts_per_tok a token uses.
double decode_weight_bytes(const Transformer& model);

DecodeBenchResult bench_decode(Transformer& model, const DecodeBenchOptions& options);

}  // namespace finmoe
