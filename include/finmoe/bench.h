#pragma once
// Decode/prefill throughput of a model against the memory-bandwidth floor
// measured in the same run (numbers on a shared machine are only comparable
// as ratios within one run).
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
  int repeats = 2;              // best of
};

struct DecodeBenchResult {
  double bandwidth_gb_s = 0;        // measured read bandwidth (all threads)
  double weight_bytes_per_token = 0;  // weights one decode step streams
  double floor_tokens_per_s = 0;    // bandwidth / bytes per token (batch 1)
  double prefill_tokens_per_s = 0;
  struct Decode {
    int64_t batch = 0;
    double tokens_per_s = 0;
    double ms_per_step = 0;
  };
  std::vector<Decode> decode;
  nlohmann::json to_json() const;
};

// Sums `bytes` of memory with every pool thread, best of `repeats`; GB/s.
double measure_read_bandwidth(size_t bytes = size_t(1) << 30, int repeats = 3);

// Bytes of weights a batch-1 decode step reads: every parameter but the
// embedding table (one row read), plus the table again when it is the tied head;
// of a MoE layer's routed experts only the num_experts_per_tok a token uses.
double decode_weight_bytes(const Transformer& model);

DecodeBenchResult bench_decode(Transformer& model, const DecodeBenchOptions& options);

}  // namespace finmoe
