#pragma once
// An OpenAI-compatible HTTP server over the serving engine (engine.h).
//
// Endpoints: GET /v1/models, POST /v1/completions, POST /v1/chat/completions
// (JSON or server-sent events with "stream": true), POST /v1/embeddings,
// POST /tokenize and /detokenize (vLLM's), GET /health, GET /metrics
// (Prometheus text). docs/serving.md lists every field and metric.
//
// Errors come back as OpenAI error objects {"error": {message, type, param,
// code}}: 400 for bad requests (the field is named in "param"), 401 for a
// missing or wrong API key, 404 for unknown routes, 405 for a wrong method,
// 408/413/414/431 for requests over the HTTP limits, 503 while shutting down,
// 500 for internal errors; the server keeps serving after each. A client that
// disconnects cancels its requests.
//
// Usage:
//   Engine engine(model, &tokenizer, engine_options);
//   Server server(engine, tokenizer, model.config(), options);
//   server.bind();        // throws Error if the address is taken
//   server.serve();       // blocks until shutdown(); starts and stops the engine
//
// Thread safety: shutdown() may be called from any thread (and from a signal
// watcher); the other members from the thread that owns the Server.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "finmoe/config.h"
#include "finmoe/engine.h"
#include "finmoe/tokenizer.h"

namespace finmoe {

// What one completion request may ask for. A request over a limit is a 400
// naming the field and the limit; nothing of it reaches the engine.
struct RequestLimits {
  int64_t max_prompts = 64;       // prompts in one /v1/completions request
  int64_t max_n = 128;            // choices per prompt ("n", "best_of"; OpenAI's maximum)
  int64_t max_choices = 256;      // prompts x n
  int64_t max_stop = 16;          // stop strings
  int64_t max_stop_bytes = 4096;  // their total length
  int64_t max_logit_bias = 300;   // logit_bias entries
  int64_t max_messages = 1024;    // chat messages
};

// What one HTTP request may be, checked while it is read: a request over a
// limit gets an OpenAI error body (status in the comment) and its connection
// is closed without reading the rest of it. max_body_bytes lives in
// ServerOptions.
struct HttpLimits {
  int64_t max_request_line = 8192;   // bytes, CRLF included; 414
  int64_t max_header_line = 8192;    // bytes of one header line; 431
  int64_t max_header_count = 100;    // header lines; 431
  int64_t max_chunk_line = 1024;     // a chunk-size line with its extensions; 400
  double header_timeout_s = 10;      // request line + headers, from their first byte; 408
  double read_timeout_s = 30;        // the longest wait for more body bytes; 408
  double write_timeout_s = 30;       // the longest wait to send (a client that stopped reading)
  double keep_alive_timeout_s = 10;  // an idle connection is closed after this
  int64_t max_requests_per_connection = 100;  // then the response says Connection: close
};

// What the server writes to stderr (`serve --log-level`); each level adds to
// the ones before it:
//   error    internal errors (500s, a failed stream)
//   warning  requests the engine aborted
//   info     one access line per HTTP request, after its response is sent:
//            2026-12-05T01:23:45.123Z finmoe serve: POST /v1/chat/completions 200 153.2 ms prompt_tokens=12 completion_tokens=30
//            (tokens for completions; "client disconnected" when it left early)
enum class LogLevel { Error, Warning, Info };
// "error" | "warning" | "info"; throws Error listing them.
LogLevel log_level_from_string(std::string_view name);

// How /v1/embeddings pools a prompt's final hidden states (after the model's
// final norm): the last token's (vLLM's default for a generative model run
// as an embedding model) or the mean over every token.
enum class EmbeddingPooling { Last, Mean };
// "last" | "mean"; throws Error listing them.
EmbeddingPooling embedding_pooling_from_string(std::string_view name);

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;                                // 0 = any free port (bind() returns it)
  std::string served_model_name = "finmoe";       // the id of /v1/models; requests must name it
  // Serving adapters attached to the engine's model (serving_adapters.h),
  // each served as a model of its own: a request naming one runs it.
  struct Adapter {
    std::string name;    // the "model" id requests send
    int32_t id = 0;      // attach_serving_lora / attach_serving_esft id (>= 1)
    std::string source;  // directory it came from (/v1/models "root")
  };
  std::vector<Adapter> adapters;
  std::string api_key;                            // "" = no auth; else /v1/* need "Authorization: Bearer KEY"
  int64_t max_body_bytes = int64_t(8) << 20;      // larger request bodies get 413
  int http_threads = 256;                         // connections served at once (each stream holds one)
  std::optional<ChatTemplateKind> chat_template;  // a built-in template, not the model's own
  std::vector<int32_t> eos_token_ids;             // stop tokens of every request (unless ignore_eos)
  SamplingParams default_sampling;                // for fields a request leaves out (generation_config)
  double shutdown_timeout_s = 30;                 // shutdown(): wait this long for in-flight requests
  LogLevel log_level = LogLevel::Info;            // what goes to stderr (see LogLevel)
  EmbeddingPooling embedding_pooling = EmbeddingPooling::Last;  // /v1/embeddings
  bool embedding_normalize = true;                // L2-normalise embeddings (vLLM's default)
  RequestLimits limits;                           // per completion request (400 over a limit)
  HttpLimits http;                                // per HTTP request and connection
  // Sequences one HTTP request has in the engine at once (its prompts x n
  // choices); the rest wait in the server and go in as earlier ones finish,
  // so one huge request cannot hold every running slot. 0 = no cap.
  int64_t max_seqs_per_request = 16;
};

class Server {
 public:
  // Keeps references to engine and tokenizer; they must outlive the Server.
  // `config` is the engine's model's: its vocabulary bounds token-id prompts
  // and its max_position_embeddings the context when the engine sets none.
  Server(Engine& engine, const Tokenizer& tokenizer, const ModelConfig& config, ServerOptions options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds options.host:options.port; returns the port bound. Throws Error if
  // it cannot bind.
  int bind();
  // Starts the engine, answers requests until shutdown() has finished, stops
  // the engine. Call bind() first.
  void serve();
  // Graceful stop: new requests get 503, in-flight ones may finish for up to
  // shutdown_timeout_s, then the rest are cancelled (finish_reason "abort")
  // and serve() returns. Safe from any thread; returns at once. A second call
  // cancels in-flight requests without waiting further.
  void shutdown();

  const ServerOptions& options() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// "2GiB", "512MiB", "1.5GB", "64KB", "1000000" -> bytes (KiB/MiB/GiB/TiB are
// powers of 1024, KB/MB/GB/TB of 1000, a bare number is bytes). Throws Error.
int64_t parse_byte_size(const std::string& text);

// `serve --kv-cache-memory`: a byte size (parse_byte_size) or a share of the
// memory available at start-up, like vLLM's --gpu-memory-utilization: a bare
// number in (0, 1] ("0.5") or a percentage in (0, 100] ("50%"). Exactly one
// of bytes / fraction is set (> 0). Throws Error naming the flag.
struct KvCacheMemory {
  int64_t bytes = 0;
  double fraction = 0;
};
KvCacheMemory parse_kv_cache_memory(const std::string& text);
// MemAvailable of a /proc/meminfo text, in bytes. Throws Error when absent.
int64_t mem_available_bytes(const std::string& meminfo);
// The KV budget in bytes: `m.bytes`, or m.fraction of the memory available
// now on `device`: on the CPU MemAvailable of /proc/meminfo, on "cuda[:N]"
// the GPU's free memory (cudaMemGetInfo, after libtorch's caching allocator
// returns its unused blocks). Call it after the weights are loaded. A share
// on a GPU in a build without CUDA is an Error naming the flag.
int64_t resolve_kv_cache_memory(const KvCacheMemory& m, const std::string& device);
// The start-up warning when fewer than 4 sequences of max_model_len tokens
// fit in the KV cache at once (`fit` of them; the cache holds
// `cache_tokens`), naming --kv-cache-memory and --max-model-len; "" when 4
// or more fit.
std::string kv_capacity_warning(int64_t fit, int64_t max_model_len, int64_t cache_tokens);
// An Engine constructor error with the EngineOptions fields it names
// replaced by the `serve` flags that set them (--kv-cache-memory, ...).
std::string engine_error_with_flags(std::string message);

// bind(), serve() and shutdown() on the first SIGINT or SIGTERM (a second one
// cancels what is still running). Prints the address to stderr.
void run_server(Server& server);

}  // namespace finmoe
