#pragma once
// Language models for the evaluation harness (finmoe/eval.h):
//
//   make_local_model  a finmoe Transformer + Tokenizer. Tokenizes as
//                     lm-eval's HF backend does (trailing context spaces move
//                     to the continuation; context and context+continuation
//                     encoded separately; an empty context is the BOS/EOS
//                     token), and scores through the paged KV cache:
//                     requests that share a context share its cached blocks,
//                     so a multiple-choice question's context is computed
//                     once for all its choices; generate_until runs on the
//                     serving Engine (continuous batching, prefix cache).
//   make_http_model   an OpenAI-compatible server (`finmoe serve` or
//                     another): generate_until through /v1/completions.
//
// Thread safety: one model object per thread.
#include <cstdint>
#include <memory>
#include <string>

#include "finmoe/eval.h"
#include "finmoe/model.h"
#include "finmoe/tokenizer.h"

namespace finmoe::eval {

struct LocalModelOptions {
  int64_t batch_size = 16;  // requests per forward step
  int64_t max_length = 0;   // context window; 0 = config.max_position_embeddings
  int64_t block_size = 16;  // KV-cache block: the unit of context sharing
  int64_t max_logit_floats = int64_t(1) << 26;  // per step: scored tokens x vocab (256 MiB)
  int64_t* computed_tokens = nullptr;  // when set: += the tokens each forward step computes
};
// `model` and `tokenizer` must outlive the returned object.
std::unique_ptr<LanguageModel> make_local_model(Transformer& model, const Tokenizer& tokenizer,
                                                const LocalModelOptions& options = {});

struct HttpModelOptions {
  std::string url;         // http://host:port (the /v1/... paths are appended)
  std::string api_key;     // sent as a Bearer token when not empty
  std::string model;       // the request's "model" field
  int64_t batch_size = 8;  // requests in flight at once
  double timeout_s = 300;  // per request
  int retries = 2;         // after a failed or timed-out request
};
std::unique_ptr<LanguageModel> make_http_model(const HttpModelOptions& options);

}  // namespace finmoe::eval
