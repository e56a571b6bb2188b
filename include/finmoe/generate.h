#pragma once
// Sampling and batched generation on top of Transformer::step.
//
// Generator runs several prompts together: their prefills are packed into
// ragged steps (chunked to max_batched_tokens) and their decode tokens share
// every following step; each sequence owns blocks of a paged KV cache.
// Thread safety: one Generator per thread.
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "finmoe/model.h"
#include "finmoe/tokenizer.h"

namespace finmoe {

class TokenConstraint;  // src/serve/constraint.h: a compiled regex / JSON-schema automaton

struct SamplingParams {
  double temperature = 1.0;         // 0 = greedy
  int64_t top_k = 0;                // 0 = off
  double top_p = 1.0;               // 1 = off
  double min_p = 0.0;               // 0 = off; keep p >= min_p * p_max
  double repetition_penalty = 1.0;  // 1 = off; HF's rule on prompt + generated tokens
  uint64_t seed = 0;                // per-sequence generator seed (sequence i uses seed + i)
  // Constrained decoding: only tokens that keep the output inside the
  // automaton's language are sampled (masked before every warper), a stop
  // token only where the output is complete; null = unconstrained.
  std::shared_ptr<const TokenConstraint> constraint;

  // Throws Error naming the field when out of range.
  void validate() const;
};

// Picks the next token from float32 logits [V] with the HF warper order:
// repetition penalty -> temperature -> top_k -> top_p -> min_p -> sample.
class Sampler {
 public:
  explicit Sampler(const SamplingParams& params, uint64_t seed);
  int32_t sample(std::span<const float> logits, std::span<const int32_t> history);
  // Probability distribution the sampler would draw from (for tests): sparse
  // (id, p) pairs, sorted by id.
  std::vector<std::pair<int32_t, float>> distribution(std::span<const float> logits,
                                                      std::span<const int32_t> history) const;

 private:
  double uniform();  // [0, 1) from the sequence's own generator
  SamplingParams params_;
  std::mt19937_64 rng_;
};

struct GenerationOptions {
  SamplingParams sampling;
  int64_t max_new_tokens = 128;
  std::vector<int32_t> stop_token_ids;    // usually eos from generation_config
  std::vector<std::string> stop_strings;  // text stops; the stop string is not returned
  int64_t max_batched_tokens = 1024;      // prefill chunk budget per step
  int64_t block_size = 16;
};

struct GenerationResult {
  std::vector<int32_t> tokens;  // generated ids (a stop token is included)
  std::string text;             // decoded, cut before a stop string
  std::string finish_reason;    // "stop" | "length" | "abort" (a constraint no token continues)
  int64_t prompt_tokens = 0;
};

struct GenerationStats {
  double ttft_s = 0;         // start -> first sampled token
  double prefill_s = 0;
  double decode_s = 0;
  int64_t prefill_tokens = 0;
  int64_t decode_tokens = 0;  // tokens sampled after the first of each sequence
  double prefill_tokens_per_s() const { return prefill_s > 0 ? prefill_tokens / prefill_s : 0; }
  double decode_tokens_per_s() const { return decode_s > 0 ? decode_tokens / decode_s : 0; }
};

// Called for each new piece of text (UTF-8 complete, never part of a stop string).
using StreamCallback = std::function<void(size_t sequence, const std::string& text)>;

class SampleableVocab;  // src/serve/sampleable_vocab.h

class Generator {
 public:
  // tokenizer may be null: then no text and no stop strings. With one, ids
  // it has no token for (a vocabulary padded past it) are never sampled.
  Generator(Transformer& model, const Tokenizer* tokenizer);

  std::vector<GenerationResult> generate(const std::vector<std::vector<int32_t>>& prompts,
                                         const GenerationOptions& options,
                                         const StreamCallback& on_text = {},
                                         GenerationStats* stats = nullptr);

 private:
  Transformer& model_;
  const Tokenizer* tokenizer_;
  std::shared_ptr<const SampleableVocab> sampleable_;  // the ids with a token
  std::optional<KVCache> cache_;  // grown on demand, reused across calls
};

}  // namespace finmoe
