#pragma once
// The serving engine: continuous batching over a paged KV cache.
//
// Requests join and leave between steps. Every step mixes the decode token of
// each running sequence with prefill chunks of waiting ones, within
// max_batched_tokens and max_num_seqs. KV blocks come from a BlockManager
// (block_manager.h) with prefix caching; when blocks run out the youngest
// running sequence is preempted (its blocks freed, recomputed later from its
// prompt + generated tokens), so the engine never fails or hangs for lack of
// memory. A request that cannot fit even alone is rejected at submit(), and
// a sequence stops with "length" when it would outgrow the whole cache.
//
// Scheduling is first come, first served: running sequences (a decode token
// each, or their next prefill chunk) before newly admitted ones, admission in
// arrival order, the most recently admitted running sequence preempted first
// and put back at the front of the queue. A preempted request continues
// seamlessly: same sampler state, no token or text emitted twice.
//
// Library use, no HTTP needed:
//   Engine engine(model, &tokenizer, options);
//   auto id = engine.submit(prompt_ids, params, [](const RequestOutput& out) {...});
//   engine.run_until_idle();            // or engine.start() for a background thread
//
// Thread safety: submit(), cancel() and stats() may be called from any
// thread at any time. Steps run either on the engine's own thread
// (start()/stop()) or in the caller's thread (step(), run_until_idle()), never
// both. Output callbacks run on the stepping thread: they must be quick and
// must not call back into the engine except cancel().
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "finmoe/generate.h"

namespace finmoe {

struct EngineOptions {
  int64_t kv_cache_bytes = int64_t(1) << 30;  // KV budget; sets the number of blocks
  int64_t block_size = 16;                    // tokens per KV block
  int64_t max_num_seqs = 64;                  // running sequences per step
  int64_t max_batched_tokens = 512;           // tokens per step (decode + prefill chunks)
  bool enable_prefix_caching = true;
  int64_t max_model_len = 0;                  // 0 = the model's max_position_embeddings
};

// What a request asks for. validate() throws Error naming the field.
// Logits are processed as: ids without a token masked (SampleableVocab: a
// vocabulary padded past the tokenizer is never sampled) -> logit_bias added
// -> presence/frequency penalties (OpenAI: logits[t] -= presence * (count[t] >
// 0) + frequency * count[t], counts over generated tokens) -> the Sampler's HF
// order (repetition penalty over prompt + generated, temperature, top_k,
// top_p, min_p) -> sample.
struct RequestParams {
  SamplingParams sampling;          // temperature, top_k/p, min_p, repetition penalty, seed
  double presence_penalty = 0.0;    // OpenAI rule, over generated tokens; [-2, 2]
  double frequency_penalty = 0.0;   // OpenAI rule, over generated tokens; [-2, 2]
  std::vector<std::pair<int32_t, float>> logit_bias;  // (token id, bias in [-100, 100]) added
  int64_t max_tokens = 16;          // new tokens at most, >= 1 (capped by max_model_len)
  std::vector<int32_t> stop_token_ids;    // eos etc.; the stop token is not in the text
  std::vector<std::string> stop_strings;  // text stops; cut before the stop string
  bool include_stop_str_in_output = false;
  int64_t min_tokens = 0;           // stop_token_ids are masked until this many new tokens (vLLM)
  bool skip_special_tokens = true;  // false: special tokens are written into the text
  int32_t logprobs = -1;            // -1 off; 0 = chosen token's logprob; N = plus top-N (<= 20)
  bool seed_given = false;          // true: sampling.seed seeds this request's sampler;
                                    // false: the engine draws a seed
  int32_t adapter = 0;              // serving adapter id (serving_adapters.h); 0 = the base model

  void validate() const;
};

struct TokenLogprob {
  int32_t token = 0;
  // log-softmax of the raw logits of the sampleable ids (before bias,
  // penalties and temperature)
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top;      // top-N (id, logprob), best first
};

// One event for one request: the tokens sampled in the last step (usually
// one) and the text they completed. The last event has finished == true.
struct RequestOutput {
  uint64_t request_id = 0;
  std::vector<int32_t> token_ids;        // new tokens (a stop token included)
  std::string text;                      // new text (UTF-8 complete, never part of a stop string)
  std::vector<TokenLogprob> logprobs;    // one per new token when requested
  bool finished = false;
  std::string finish_reason;             // "stop" | "length" | "abort" (cancelled) when finished
  std::string error;                     // with "abort": why the engine gave up (a failed
                                         // model step, engine shut down); "" for cancel()
  int64_t prompt_tokens = 0;
  int64_t cached_prompt_tokens = 0;      // prompt tokens served from the prefix cache
  int64_t completion_tokens = 0;         // total so far
};

using OutputCallback = std::function<void(const RequestOutput&)>;

struct EngineStats {
  int64_t num_blocks = 0, block_size = 0;
  int64_t max_tokens_in_cache = 0;       // num_blocks * block_size
  int64_t max_full_length_seqs = 0;      // sequences of max_model_len that fit at once
  int64_t max_model_len = 0;             // as resolved (see EngineOptions)
  int64_t running = 0, waiting = 0;      // waiting includes requests not yet seen by a step
  int64_t blocks_used = 0, blocks_free = 0;
  int64_t prefix_query_tokens = 0, prefix_hit_tokens = 0;
  int64_t preemptions = 0;
  int64_t requests_finished = 0;         // ended with "stop" or "length"
  int64_t requests_cancelled = 0;        // ended with "abort"
  int64_t prompt_tokens = 0;             // prefill tokens computed (cache hits excluded,
                                         // recomputation after preemption included)
  int64_t generation_tokens = 0;         // tokens sampled
  int64_t steps = 0;
  int64_t max_running_seen = 0;          // the most sequences running together so far
};

class Engine {
 public:
  // The engine keeps references to model and tokenizer (tokenizer may be null:
  // then no text and no stop strings; with one, ids it has no token for are
  // never sampled). Allocates the KV cache now. Throws
  // Error naming the option when options are invalid or kv_cache_bytes holds
  // no block.
  Engine(Transformer& model, const Tokenizer* tokenizer, const EngineOptions& options);
  ~Engine();  // stops the background thread; pending requests finish with "abort"
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues a request; returns its id (ids increase from 1). Throws Error
  // (nothing queued) for an empty prompt, ids outside the vocabulary, invalid
  // params, stop strings without a tokenizer, or a prompt that leaves no room
  // for one new token within max_model_len or within the whole KV cache.
  // on_output may be empty (no events).
  uint64_t submit(std::vector<int32_t> prompt, const RequestParams& params, OutputCallback on_output);
  // Cancels a request: its blocks are freed before the next step and its
  // callback gets a final event with finish_reason "abort". Unknown or already
  // finished ids are ignored. Returns whether the request was still live.
  bool cancel(uint64_t request_id);
  // Queues work that needs the model outside the KV cache (the server's
  // embeddings): it runs on the stepping thread before a step's batch, one
  // task per step in submission order, so it never races a model step and
  // generation keeps moving between tasks. The task must not throw (one that
  // does is dropped); it reports its own result and errors, e.g. through a
  // std::promise it owns. stop() drops the tasks not yet run without running
  // them (a promise they own is then broken).
  void submit_task(std::function<void(Transformer&)> task);

  // One scheduler step in the caller's thread; returns false when idle.
  // Throws Error while the background thread runs. When the model step
  // itself throws, that step's requests end with "abort" (error set) and
  // the exception propagates; the engine stays usable.
  bool step();
  // Steps until no request is waiting or running.
  void run_until_idle();
  // Background stepping thread (sleeps while idle). stop() finishes the
  // current step, aborts what is left and joins.
  // The background thread reports a failed model step on stderr and goes on.
  void start();  // no-op when already started
  void stop();   // also without start(): aborts whatever is queued or running

  EngineStats stats() const;             // a snapshot taken after the last step
  const EngineOptions& options() const;  // as resolved (max_model_len filled in)

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace finmoe
