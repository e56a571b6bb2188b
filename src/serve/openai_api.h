#pragma once
// The OpenAI HTTP API without HTTP: request bodies of /v1/completions,
// /v1/chat/completions and /v1/embeddings parsed and validated, and the
// JSON / server-sent-event bodies built from engine outputs. The HTTP server
// (http_server.cpp) only moves these strings over sockets, so everything the
// API promises is tested here without a socket or an engine.
//
// Thread safety: parse_* are pure functions; a ResponseBuilder belongs to one
// HTTP request and is used from one thread at a time.
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "finmoe/engine.h"
#include "finmoe/error.h"
#include "finmoe/server.h"
#include "finmoe/tokenizer.h"

namespace finmoe {
class ConstraintFactory;  // serve/constraint.h
}

namespace finmoe::serve {

using nlohmann::json;

// A request the server rejects, as OpenAI reports it: the HTTP status and the
// body {"error": {"message", "type", "param", "code"}}. `param` names the
// offending request field ("" = null).
class ApiError : public Error {
 public:
  ApiError(int status, std::string message, std::string param = "", std::string code = "",
           std::string type = "");
  int status() const { return status_; }
  const std::string& param() const { return param_; }
  const std::string& code() const { return code_; }
  const std::string& type() const { return type_; }
  json body() const;

 private:
  int status_;
  std::string param_, code_, type_;
};

// The OpenAI error body for any status; type defaults by status
// (400/404/413 invalid_request_error, 401 authentication_error... as OpenAI).
json error_body(int status, const std::string& message, const std::string& param = "",
                const std::string& code = "", const std::string& type = "");

// What the parser needs to know about the served model.
struct ApiContext {
  std::string model_name;                         // the id clients must send as "model"
  // Serving adapters (serving_adapters.h) by the name a request sends as
  // "model" instead of model_name -> adapter id (>= 1)
  std::map<std::string, int32_t> adapters;
  const Tokenizer* tokenizer = nullptr;           // renders chat, encodes text (required)
  std::optional<ChatTemplateKind> chat_template;  // built-in, not the model's own
  std::vector<int32_t> eos_token_ids;             // stop tokens unless "ignore_eos"
  int64_t max_model_len = 0;                      // prompt + completion tokens at most
  int64_t kv_cache_tokens = 0;                    // the engine's whole KV cache: a prompt must be
                                                  // shorter (0 = not checked)
  int64_t vocab_size = 0;                         // token-id prompts must be below it
  int64_t hidden_size = 0;                        // embeddings' dimensions
  int32_t max_logprobs = 20;                      // top logprobs per token at most
  SamplingParams default_sampling;                // for fields a request leaves out (generation_config)
  RequestLimits limits;                           // prompts, n, stop strings, logit_bias, messages
  // Constrained decoding (response_format json_object / json_schema, guided_json,
  // guided_regex, guided_choice, tool_choice required or named); null: such
  // requests are rejected.
  std::shared_ptr<ConstraintFactory> constraints;
};

enum class Endpoint { Completions, Chat };

// A validated request: one engine request per (prompt, choice).
struct ApiRequest {
  Endpoint endpoint = Endpoint::Completions;
  std::vector<std::vector<int32_t>> prompts;  // completions may batch prompts; chat has one
  int64_t n = 1;                              // choices per prompt
  std::string model;           // the name responses carry: model_name or an adapter's
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool continuous_usage = false;  // and stream_options.continuous_usage_stats: usage in every chunk
  // vLLM fields the request gave that finmoe accepts and does not act on
  // (sent back in the X-Finmoe-Ignored-Fields header).
  std::vector<std::string> ignored_fields;
  bool logprobs = false;       // return logprobs (params.logprobs = top-N count)
  // Chat with tools (tool_choice auto): the tools' names. The output is read
  // back for tool calls (serve/tool_calls.h); when streaming, each choice's
  // message is then sent as one chunk when it finishes.
  std::vector<std::string> tool_names;
  // Per-prompt engine parameters, complete (stop tokens, max_tokens for that
  // prompt's length). Choice j of a seeded request uses seed + j, so n
  // choices differ and each is reproducible.
  std::vector<RequestParams> params;

  int64_t num_choices() const { return int64_t(prompts.size()) * n; }
  // Parameters of choice c (index = prompt * n + j).
  RequestParams choice_params(int64_t c) const;
};

// Parse and validate a request body. Throws ApiError (400) naming the field
// for invalid JSON, a wrong type, an out-of-range value, an unsupported
// option, an unknown model, a request over ctx.limits, or a prompt that does
// not fit max_model_len (with max_tokens: "max_tokens" is named).
ApiRequest parse_completion_request(std::string_view body, const ApiContext& ctx);
ApiRequest parse_chat_request(std::string_view body, const ApiContext& ctx);

// vLLM's /tokenize: {"prompt", "add_special_tokens"? (true)} or, as a chat
// request prompts the model, {"messages", "add_generation_prompt"? (true),
// "add_special_tokens"? (false), "tools"?, "chat_template_kwargs"?};
// "return_token_strs" adds the vocabulary strings. Returns {"count",
// "max_model_len", "tokens"[, "token_strs"]}. Throws ApiError (400) naming the field.
json tokenize(std::string_view body, const ApiContext& ctx);
// vLLM's /detokenize: {"tokens": [ids]} -> {"prompt": text} (special tokens kept).
json detokenize(std::string_view body, const ApiContext& ctx);

// /v1/embeddings (OpenAI's, with vLLM's add_special_tokens): "input" is a
// string, an array of strings, an array of token ids or an array of such
// arrays (at most ctx.limits.max_prompts; each at most max_model_len tokens);
// "encoding_format" float | base64; "dimensions" only as the hidden size (no
// Matryoshka truncation); "user" ignored. Throws ApiError (400) naming the field.
struct EmbeddingRequest {
  std::string model;       // the name the response carries: model_name or an adapter's
  int32_t adapter = 0;     // serving adapter id (0 = the base model)
  std::vector<std::vector<int32_t>> inputs;
  bool base64 = false;  // encoding_format base64: little-endian float32 bytes, base64-encoded
};
EmbeddingRequest parse_embedding_request(std::string_view body, const ApiContext& ctx);
// {"object": "list", "data": [{"object": "embedding", "index", "embedding"}],
// "model", "usage": {"prompt_tokens", "total_tokens"}}; one embedding per input.
json embedding_response(const EmbeddingRequest& r, const std::vector<std::vector<float>>& embeddings,
                        const ApiContext& ctx);
// The little-endian float32 bytes of `values`, base64-encoded (as OpenAI's
// client decodes encoding_format base64).
std::string base64_float32(const std::vector<float>& values);

// "data: <json>\n\n" and the closing "data: [DONE]\n\n" of a server-sent-event stream.
std::string sse_event(const json& j);
std::string sse_done();
// JSON text for a body: compact, invalid UTF-8 replaced (never throws).
std::string dump_json(const json& j);

// The id strings of responses: "cmpl-<24 hex>" / "chatcmpl-<24 hex>".
std::string make_response_id(Endpoint endpoint);

// Builds the responses of one request from the engine's events, streaming
// or not. Feed every RequestOutput of choice c to add(); the events of one
// choice in order, choices in any interleaving.
class ResponseBuilder {
 public:
  ResponseBuilder(const ApiRequest& request, const ApiContext& ctx, std::string id, int64_t created);

  // Streaming: the first bytes (chat: the assistant role chunk of each choice).
  std::string stream_start() const;
  // Records the event; when streaming returns the SSE chunk to send for it
  // ("" when it carries nothing a client sees).
  std::string add(int64_t choice, const RequestOutput& out);
  // Streaming: the usage chunk (when asked for) and [DONE].
  std::string stream_end() const;
  // Non-streaming: the whole response body once every choice finished.
  json response() const;

  bool all_finished() const;
  json usage() const;

 private:
  struct Choice {
    std::string text;
    std::string finish_reason;
    bool finished = false;
    int64_t prompt_tokens = 0, completion_tokens = 0, cached_prompt_tokens = 0;
    json logprobs_content = json::array();  // chat: [{token, logprob, bytes, top_logprobs}]
    json legacy_tokens = json::array(), legacy_token_logprobs = json::array(),
         legacy_top_logprobs = json::array(), legacy_text_offset = json::array();
    int64_t text_offset = 0;  // characters so far, for text_offset
  };
  json chunk(json choices) const;
  // The chat message of a finished choice, its tool calls read back when tools were given.
  json message(const Choice& c, std::string& finish_reason) const;
  json logprobs_delta(Choice& c, const std::vector<TokenLogprob>& lps);

  const ApiRequest& request_;
  const ApiContext& ctx_;
  std::string id_;
  int64_t created_;
  std::vector<Choice> choices_;
};

}  // namespace finmoe::serve
