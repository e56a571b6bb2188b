#pragma once
// Decode/prefill throughput of a model against the memory-bandwidth floor
// measured in the same run. On a shared machine the bandwidth drifts by tens
// of percent within seconds, so on CPU every timed decode run is bracketed by
// two bandwidth samples and its ratio to the floor uses their mean.
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "finmoe/model.h"
#include "finmoe/tokenizer.h"

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
    // Weights a step of this batch reads: the bytes the weight products
    // counted (kernels::weight_bytes_read), at least weight_bytes_per_token.
    // Above it where a MoE layer's tokens choose different experts.
    double weight_bytes_per_step = 0;
    // Median over the runs of (steps/s ÷ the floor's steps/s at that run, the
    // floor streaming weight_bytes_per_step): how close a step comes to
    // reading its weights once.
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

// Batch-1 decode (the Generator: model step + sampling, temperature 1, seeded
// so every run draws the same tokens) without a constraint, with a JSON-schema
// constraint whose masks are computed on the way (cold) and with every
// visited state's mask cached (warm), plain and constrained runs alternating;
// the constraint's own work per token replayed on the warm run's tokens; the
// time to compute one state's mask.
struct ConstrainedBenchOptions {
  std::string schema;  // JSON text; "" = a built-in slot-filling schema
  std::string prompt = "Extract the slots as JSON: send 250 EUR from account DE12345678 to pay the rent.";
  int64_t tokens = 64;       // new tokens per run at most
  int64_t repeats = 3;       // runs per figure (best tokens/s)
  int64_t mask_states = 200; // DFA states whose masks are timed, breadth-first from the start
  std::vector<int32_t> stop_token_ids;  // end the constrained runs (eos)
};

struct ConstrainedBenchResult {
  int64_t vocab_ids = 0;      // ids with bytes considered
  double vocab_build_s = 0;   // the vocabulary's byte trie
  double schema_compile_s = 0;
  int64_t dfa_states = 0;
  struct Run {
    double decode_tokens_per_s = 0;
    int64_t tokens = 0;
    std::string finish_reason, text;
  };
  Run unconstrained, cold, warm;
  int64_t cold_masks_computed = 0;
  double cold_mask_s = 0;
  double constraint_ms_per_token = 0;  // mask applied to the logits + state advanced (warm)
  double sampler_ms_raw = 0, sampler_ms_masked = 0;  // the sampler on the same logits
  int64_t mask_states_timed = 0;
  double mask_ms_mean = 0, mask_ms_max = 0;
  double mask_ms_open_string = 0;  // inside a free string: most tokens allowed (median of 5)
  int64_t open_string_tokens_allowed = 0;
  nlohmann::json to_json() const;
};

// Throws Error for a schema that does not parse or compile (the path named).
ConstrainedBenchResult bench_constrained(Transformer& model, const Tokenizer& tokenizer,
                                         const ConstrainedBenchOptions& options);

}  // namespace finmoe
