// The OpenAI-compatible HTTP server (server.h) on cpp-httplib.
//
// Each connection is served by one worker of a thread pool. A completion
// request is parsed (openai_api.h), submitted to the engine as one engine
// request per choice, and answered from a chunked content provider that
// waits on the request's OutputChannel: SSE chunks as tokens arrive, or one
// JSON body at the end. While it waits it polls whether the client is still
// there (sink.is_writable() peeks the socket), so a client that goes away
// cancels its engine requests within ~0.1 s, streaming or not.
#include "serve/http_server.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <ctime>
#include <iostream>
#include <map>
#include <sstream>
#include <thread>

#include <httplib.h>

#include "finmoe/error.h"
#include "finmoe/server.h"
#include "serve/openai_api.h"

namespace finmoe {
namespace serve {

// ---- OutputChannel -------------------------------------------------------

OutputChannel::OutputChannel(int64_t num_choices, ServerMetrics* metrics, Clock::time_point arrival)
    : last_token_(size_t(num_choices)), finished_(size_t(num_choices), false), metrics_(metrics), arrival_(arrival) {}

void OutputChannel::push(int64_t choice, const RequestOutput& out) {
  const auto now = Clock::now();
  const auto secs = [](Clock::duration d) { return std::chrono::duration<double>(d).count(); };
  {
    std::lock_guard lock(mu_);
    auto& last = last_token_.at(size_t(choice));
    if (metrics_ && !out.token_ids.empty()) {
      if (last == Clock::time_point{}) metrics_->ttft.observe(secs(now - arrival_));
      else metrics_->inter_token.observe(secs(now - last));
    }
    if (!out.token_ids.empty()) last = now;
    if (out.finished) {
      finished_.at(size_t(choice)) = true;
      if (metrics_) {
        metrics_->e2e.observe(secs(now - arrival_));
        metrics_->count_finished(out.finish_reason);
      }
    }
    queue_.emplace_back(choice, out);
  }
  cv_.notify_one();
}

std::vector<std::pair<int64_t, RequestOutput>> OutputChannel::wait(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  cv_.wait_for(lock, timeout, [&] { return !queue_.empty(); });
  std::vector<std::pair<int64_t, RequestOutput>> out(std::make_move_iterator(queue_.begin()),
                                                     std::make_move_iterator(queue_.end()));
  queue_.clear();
  return out;
}

bool OutputChannel::all_finished() const {
  std::lock_guard lock(mu_);
  for (bool f : finished_)
    if (!f) return false;
  return true;
}

bool authorized(const std::string& authorization, const std::string& api_key) {
  if (api_key.empty()) return true;
  const std::string prefix = "Bearer ";
  if (authorization.size() != prefix.size() + api_key.size() || authorization.compare(0, prefix.size(), prefix) != 0)
    return false;
  unsigned char diff = 0;  // constant time in the key's length
  for (size_t i = 0; i < api_key.size(); ++i) diff |= uint8_t(authorization[prefix.size() + i] ^ api_key[i]);
  return diff == 0;
}

}  // namespace serve

// ---- Server --------------------------------------------------------------

using serve::ApiError;
using serve::ApiRequest;
using serve::Endpoint;
using serve::OutputChannel;
using serve::ResponseBuilder;
using Clock = std::chrono::steady_clock;

namespace {

// One completion request being answered.
struct Job {
  uint64_t ticket = 0;
  ApiRequest request;
  std::unique_ptr<ResponseBuilder> builder;  // refers to `request`
  std::shared_ptr<OutputChannel> channel;    // shared with the engine callbacks
  std::vector<uint64_t> engine_ids;
  Clock::time_point arrival;
  std::string route;
  bool client_gone = false;
};

// httplib listens with a backlog of 5: a burst of clients overflows it, and
// under load a connection whose handshake was dropped can reach a worker only
// after its read timeout. Linux lets listen() be called again to enlarge it.
class HttpListener : public httplib::Server {
 public:
  void enlarge_backlog() { ::listen(svr_sock_, SOMAXCONN); }
};

void set_json(httplib::Response& res, int status, const nlohmann::json& body) {
  res.status = status;
  res.set_content(serve::dump_json(body), "application/json");
}

void set_error(httplib::Response& res, int status, const std::string& message, const std::string& param = "",
               const std::string& code = "") {
  set_json(res, status, serve::error_body(status, message, param, code));
}

}  // namespace

struct Server::Impl {
  Impl(Engine& e, const Tokenizer& t, const ModelConfig& config, ServerOptions o)
      : engine(e), tokenizer(t), options(std::move(o)) {
    ctx.model_name = options.served_model_name;
    ctx.tokenizer = &tokenizer;
    ctx.chat_template = options.chat_template;
    ctx.eos_token_ids = options.eos_token_ids;
    ctx.max_model_len = engine.options().max_model_len > 0 ? engine.options().max_model_len
                                                           : config.max_position_embeddings;
    ctx.vocab_size = config.vocab_size;
    ctx.default_sampling = options.default_sampling;
    if (options.served_model_name.empty()) throw Error("ServerOptions.served_model_name must not be empty");
    if (options.http_threads < 1) throw Error("ServerOptions.http_threads must be >= 1");
    if (options.max_body_bytes < 1) throw Error("ServerOptions.max_body_bytes must be >= 1");
    routes();
  }

  void routes();
  bool check_auth(const httplib::Request& req, httplib::Response& res) const;
  void handle_generate(const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& read,
                       Endpoint endpoint);
  void too_large(httplib::Response& res) const;
  bool pump(Job& job, httplib::DataSink& sink);
  void release(const std::shared_ptr<Job>& job);
  void cancel(Job& job);
  void drain();

  Engine& engine;
  const Tokenizer& tokenizer;
  ServerOptions options;
  serve::ApiContext ctx;
  serve::ServerMetrics metrics;
  HttpListener http;
  int64_t created = int64_t(std::time(nullptr));

  std::mutex mu;  // guards jobs, next_ticket, shutdown_calls
  std::condition_variable cv;
  std::map<uint64_t, std::shared_ptr<Job>> jobs;
  uint64_t next_ticket = 0;
  int shutdown_calls = 0;
  std::atomic<bool> draining{false};
  bool bound = false;
};

bool Server::Impl::check_auth(const httplib::Request& req, httplib::Response& res) const {
  if (serve::authorized(req.get_header_value("Authorization"), options.api_key)) return true;
  set_error(res, 401,
            req.has_header("Authorization") ? "Incorrect API key provided." : "Missing API key: send 'Authorization: Bearer KEY'.",
            "", "invalid_api_key");
  return false;
}

void Server::Impl::routes() {
  http.new_task_queue = [n = options.http_threads] { return new httplib::ThreadPool(size_t(n)); };
  http.set_payload_max_length(size_t(options.max_body_bytes));

  http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    if (draining) set_error(res, 503, "The server is shutting down.");
    else res.status = 200;
  });
  http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(serve::format_metrics(engine.stats(), metrics.snapshot(), options.served_model_name),
                    "text/plain; version=0.0.4; charset=utf-8");
  });
  auto model_card = [this] {
    return nlohmann::json{{"id", options.served_model_name}, {"object", "model"}, {"created", created},
                          {"owned_by", "finmoe"}, {"root", options.served_model_name},
                          {"max_model_len", ctx.max_model_len}, {"vocab_size", ctx.vocab_size}};
  };
  http.Get("/v1/models", [this, model_card](const httplib::Request& req, httplib::Response& res) {
    if (!check_auth(req, res)) return;
    set_json(res, 200, {{"object", "list"}, {"data", nlohmann::json::array({model_card()})}});
  });
  http.Get(R"(/v1/models/(.+))", [this, model_card](const httplib::Request& req, httplib::Response& res) {
    if (!check_auth(req, res)) return;
    if (req.matches[1] == options.served_model_name) set_json(res, 200, model_card());
    else set_error(res, 404, "The model `" + std::string(req.matches[1]) + "` does not exist.", "model", "model_not_found");
  });
  // Bodies are read here, not by httplib, so that the size limit also holds
  // for chunked uploads (httplib checks only Content-Length).
  http.Post("/v1/completions",
            [this](const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& read) {
              handle_generate(req, res, read, Endpoint::Completions);
            });
  http.Post("/v1/chat/completions",
            [this](const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& read) {
              handle_generate(req, res, read, Endpoint::Chat);
            });
  http.Get(R"(/v1/(chat/)?completions)", [](const httplib::Request& req, httplib::Response& res) {
    set_error(res, 405, "Method GET is not allowed for " + req.path + "; use POST.", "", "method_not_allowed");
  });

  // Responses httplib makes itself (no route, body too large, bad HTTP)
  // get an OpenAI error body; handlers' own errors already have one.
  http.set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request& req,
                                                                     httplib::Response& res) {
    if (!res.body.empty() || res.is_chunked_content_provider_) return httplib::Server::HandlerResponse::Unhandled;
    switch (res.status) {
      case 404:
        set_error(res, 404, "Unknown request URL: " + req.method + " " + req.path + ".", "", "unknown_url");
        break;
      case 413:
        too_large(res);
        break;
      default:
        set_error(res, res.status, "HTTP error " + std::to_string(res.status) + ".");
    }
    return httplib::Server::HandlerResponse::Handled;
  }));
  http.set_exception_handler([](const httplib::Request& req, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "unknown exception";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    std::cerr << "finmoe serve: internal error on " << req.method << " " << req.path << ": " << what << "\n";
    set_error(res, 500, "Internal server error: " + what, "", "internal_error");
  });
  http.set_logger([this](const httplib::Request&, const httplib::Response& res) { metrics.count_response(res.status); });
}

void Server::Impl::too_large(httplib::Response& res) const {
  set_error(res, 413,
            "The request body is larger than the server's limit of " + std::to_string(options.max_body_bytes) +
                " bytes.",
            "", "request_too_large");
  res.set_header("Connection", "close");  // the rest of the body is not read
}

void Server::Impl::handle_generate(const httplib::Request& req, httplib::Response& res,
                                   const httplib::ContentReader& read, Endpoint endpoint) {
  if (!check_auth(req, res)) return;
  if (draining) return set_error(res, 503, "The server is shutting down.");
  std::string body;
  bool over = false;
  const bool complete = read([&](const char* data, size_t n) {
    over = body.size() + n > size_t(options.max_body_bytes);
    if (!over) body.append(data, n);
    return !over;
  });
  // httplib refuses a Content-Length over the limit itself (status 413)
  if (over || res.status == 413) return too_large(res);
  if (!complete) return set_error(res, 400, "The request body could not be read completely.", "", "invalid_body");
  auto job = std::make_shared<Job>();
  job->arrival = Clock::now();
  job->route = req.path;
  try {
    job->request = endpoint == Endpoint::Chat ? serve::parse_chat_request(body, ctx)
                                              : serve::parse_completion_request(body, ctx);
  } catch (const ApiError& e) {
    return set_json(res, e.status(), e.body());
  } catch (const Error& e) {  // e.g. a tokenizer error on odd input
    return set_error(res, 400, e.what(), "", "invalid_request");
  }
  const ApiRequest& r = job->request;
  job->builder = std::make_unique<ResponseBuilder>(r, ctx, serve::make_response_id(endpoint), int64_t(std::time(nullptr)));
  job->channel = std::make_shared<OutputChannel>(r.num_choices(), &metrics, job->arrival);
  {
    // Registered before submitting so that shutdown() sees it.
    std::lock_guard lock(mu);
    job->ticket = next_ticket++;
    jobs[job->ticket] = job;
  }
  metrics.requests_in_flight++;
  try {
    for (int64_t c = 0; c < r.num_choices(); ++c) {
      auto channel = job->channel;
      job->engine_ids.push_back(engine.submit(r.prompts[size_t(c / r.n)], r.choice_params(c),
                                              [channel, c](const RequestOutput& out) { channel->push(c, out); }));
    }
  } catch (const Error& e) {
    release(job);
    return set_error(res, 400, e.what(), "", "invalid_request");
  }
  const char* type = r.stream ? "text/event-stream" : "application/json";
  if (r.stream) res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      type, [this, job](size_t, httplib::DataSink& sink) { return pump(*job, sink); },
      [this, job](bool) { release(job); });
}

// Writes the whole response of `job`; false when the client went away.
bool Server::Impl::pump(Job& job, httplib::DataSink& sink) {
  auto client_gone = [&] {
    job.client_gone = true;
    cancel(job);
    return false;  // httplib closes the connection
  };
  try {
    ResponseBuilder& b = *job.builder;
    const bool stream = job.request.stream;
    auto send = [&](const std::string& s) { return s.empty() || sink.write(s.data(), s.size()); };
    if (stream && !send(b.stream_start())) return client_gone();
    // Whether the client is still there is checked every 100 ms even while
    // tokens flow: a non-streaming request writes nothing until the end.
    auto checked = Clock::now();
    while (!b.all_finished()) {
      auto events = job.channel->wait(std::chrono::milliseconds(100));
      if (Clock::now() - checked >= std::chrono::milliseconds(100)) {
        if (!sink.is_writable()) return client_gone();
        checked = Clock::now();
      }
      for (const auto& [choice, out] : events) {
        if (out.finished && !out.error.empty())
          std::cerr << "finmoe serve: engine aborted a request on " << job.route << ": " << out.error << "\n";
        if (!send(b.add(choice, out))) return client_gone();  // "" when not streaming
      }
    }
    if (!send(stream ? b.stream_end() : serve::dump_json(b.response()))) return client_gone();
    sink.done();
    return true;
  } catch (const std::exception& e) {
    // Nothing may escape into httplib's worker; the status line is already sent.
    std::cerr << "finmoe serve: internal error while answering " << job.route << ": " << e.what() << "\n";
    cancel(job);
    return false;
  }
}

void Server::Impl::cancel(Job& job) {
  for (uint64_t id : job.engine_ids) engine.cancel(id);
}

void Server::Impl::release(const std::shared_ptr<Job>& job) {
  cancel(*job);  // ids that finished are ignored
  {
    std::lock_guard lock(mu);
    if (!jobs.erase(job->ticket)) return;  // released already
  }
  metrics.requests_in_flight--;
  cv.notify_all();
  if (options.log_requests && job->builder) {
    const auto u = job->builder->usage();
    std::ostringstream line;
    line << "finmoe serve: POST " << job->route << " choices=" << job->request.num_choices()
         << " prompt_tokens=" << u["prompt_tokens"] << " completion_tokens=" << u["completion_tokens"]
         << " seconds=" << std::chrono::duration<double>(Clock::now() - job->arrival).count()
         << (job->client_gone ? " (client disconnected, cancelled)" : "") << "\n";
    std::cerr << line.str();
  }
}

// Runs on its own thread once shutdown() was called: refuse new work, let
// in-flight requests finish (bounded), cancel the rest, stop listening.
void Server::Impl::drain() {
  std::unique_lock lock(mu);
  cv.wait(lock, [&] { return shutdown_calls > 0; });
  draining = true;
  if (!jobs.empty())
    std::cerr << "finmoe serve: shutting down, waiting up to " << options.shutdown_timeout_s << " s for "
              << jobs.size() << " request(s)\n";
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                           std::chrono::duration<double>(options.shutdown_timeout_s));
  cv.wait_until(lock, deadline, [&] { return jobs.empty() || shutdown_calls > 1; });
  if (!jobs.empty()) {
    std::cerr << "finmoe serve: cancelling " << jobs.size() << " request(s)\n";
    for (auto& [ticket, job] : jobs) cancel(*job);
    // their final "abort" events still reach the clients
    cv.wait_for(lock, std::chrono::seconds(5), [&] { return jobs.empty(); });
  }
  lock.unlock();
  http.stop();
}

Server::Server(Engine& engine, const Tokenizer& tokenizer, const ModelConfig& config, ServerOptions options)
    : impl_(std::make_unique<Impl>(engine, tokenizer, config, std::move(options))) {}

Server::~Server() = default;

const ServerOptions& Server::options() const { return impl_->options; }

int Server::bind() {
  auto& o = impl_->options;
  int port = o.port;
  if (port == 0) {
    port = impl_->http.bind_to_any_port(o.host);
    if (port < 0) throw Error("serve: cannot bind " + o.host + " to a free port");
  } else if (!impl_->http.bind_to_port(o.host, port)) {
    throw Error("serve: cannot bind " + o.host + ":" + std::to_string(port) + " (in use, or not a local address)");
  }
  impl_->http.enlarge_backlog();
  impl_->bound = true;
  return port;
}

void Server::serve() {
  if (!impl_->bound) throw Error("serve: call bind() before serve()");
  impl_->engine.start();
  std::thread drainer([this] { impl_->drain(); });
  impl_->http.listen_after_bind();
  shutdown();  // listen may also end on its own (socket error): let the drainer finish
  drainer.join();
  impl_->engine.stop();
}

void Server::shutdown() {
  {
    std::lock_guard lock(impl_->mu);
    ++impl_->shutdown_calls;
  }
  impl_->cv.notify_all();
}

int64_t parse_byte_size(const std::string& text) {
  size_t pos = 0;
  double v = 0;
  try {
    v = std::stod(text, &pos);
  } catch (const std::exception&) {
    pos = 0;
  }
  std::string unit = text.substr(pos);
  while (!unit.empty() && unit.front() == ' ') unit.erase(0, 1);
  static const std::map<std::string, double> units = {
      {"", 1},          {"B", 1},          {"KB", 1e3},           {"MB", 1e6},           {"GB", 1e9},
      {"TB", 1e12},     {"KiB", 1024.0},   {"MiB", 1048576.0},    {"GiB", 1073741824.0}, {"TiB", 1099511627776.0},
      {"K", 1024.0},    {"M", 1048576.0},  {"G", 1073741824.0}};
  auto it = units.find(unit);
  if (pos == 0 || it == units.end() || !(v >= 0) || v * it->second > 9e18)
    throw Error("'" + text + "' is not a byte size (e.g. 2GiB, 512MiB, 1.5GB, 1000000)");
  return int64_t(v * it->second);
}

// ---- signals -------------------------------------------------------------

namespace {
int g_signal_pipe[2] = {-1, -1};
void on_signal(int) {
  const char c = 1;
  [[maybe_unused]] auto n = ::write(g_signal_pipe[1], &c, 1);  // async-signal-safe
}
}  // namespace

void run_server(Server& server) {
  if (::pipe2(g_signal_pipe, O_CLOEXEC) != 0) throw Error("serve: pipe2 failed");
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  struct sigaction old_int {}, old_term {};
  ::sigaction(SIGINT, &sa, &old_int);
  ::sigaction(SIGTERM, &sa, &old_term);
  ::signal(SIGPIPE, SIG_IGN);  // a vanished client is a failed write, not a dead server

  const int port = server.bind();
  std::cerr << "finmoe serve: listening on http://" << server.options().host << ":" << port << " (model '"
            << server.options().served_model_name << "')" << std::endl;
  std::thread watcher([&server] {
    char c = 0;
    while (::read(g_signal_pipe[0], &c, 1) == 1 && c != 0) {
      std::cerr << "finmoe serve: signal received, shutting down" << std::endl;
      server.shutdown();
    }
  });
  server.serve();
  const char stop = 0;
  [[maybe_unused]] auto n = ::write(g_signal_pipe[1], &stop, 1);
  watcher.join();
  ::sigaction(SIGINT, &old_int, nullptr);
  ::sigaction(SIGTERM, &old_term, nullptr);
  ::close(g_signal_pipe[0]);
  ::close(g_signal_pipe[1]);
  std::cerr << "finmoe serve: stopped" << std::endl;
}

}  // namespace finmoe
