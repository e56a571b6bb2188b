// The OpenAI-compatible HTTP server (server.h) on cpp-httplib.
//
// Each connection is served by one worker of a thread pool. A completion
// request is parsed (openai_api.h), submitted to the engine as one engine
// request per choice (at most max_seqs_per_request at a time), and answered
// from a chunked content provider that waits on the request's OutputChannel:
// SSE chunks as tokens arrive, or one JSON body at the end. While it waits it
// polls whether the client is still there (sink.is_writable() peeks the
// socket), so a client that goes away cancels its engine requests within
// ~0.1 s, streaming or not.
//
// Debian's cpp-httplib 0.11 is a compiled library: its limits (CPPHTTPLIB_*
// macros) are fixed inside it, and it reads request lines, header lines and
// chunk-size lines of any length, allows each read 5 s however slowly a head
// arrives, reads the body of an unrouted request whole, and keeps a
// connection after answering a request whose body it did not read, so the
// rest of that body is parsed as the next request. So the server serves each
// connection itself (HttpListener::process_and_close_socket): httplib parses
// and routes, but reads through a Connection that follows the request framing
// (http_framing.h) with the limits and deadlines of HttpLimits, and the
// connection is kept only after a request read to its last byte. Requests
// that would be refused anyway (unknown route, wrong method, missing API key,
// shutting down) are answered before their body is read.
#include "serve/http_server.h"
#include "serve/constraint.h"
#include "serve/embeddings.h"

#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <functional>
#include <future>
#include <iomanip>
#include <iostream>
#include <map>
#include <sstream>
#include <thread>

#include <httplib.h>

#include "finmoe/error.h"
#include "finmoe/server.h"
#include "serve/http_framing.h"
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

// ---- connections ---------------------------------------------------------

using serve::ApiError;
using serve::ApiRequest;
using serve::Endpoint;
using serve::HttpViolation;
using serve::OutputChannel;
using serve::RequestFraming;
using serve::ResponseBuilder;
using Clock = std::chrono::steady_clock;

namespace {

Clock::duration seconds(double s) {
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
}

const char* reason_phrase(int status) {
  switch (status) {
    case 400: return "Bad Request";
    case 408: return "Request Timeout";
    case 413: return "Payload Too Large";
    case 414: return "URI Too Long";
    case 431: return "Request Header Fields Too Large";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    default: return "Error";
  }
}

// One client connection as httplib reads and writes it: bytes go to httplib
// only through a RequestFraming, waits are bounded by the deadlines of
// HttpLimits (the head as a whole, each wait for body bytes, each write), and
// every wait gives up when the server stops. Bytes read past the current
// request stay buffered for the next one.
// Thread safety: used by the one worker serving the connection.
class Connection : public httplib::Stream {
 public:
  Connection(socket_t sock, const HttpLimits& limits, int64_t max_body_bytes, std::function<bool()> stopping)
      : sock_(sock), limits_(limits), framing_(limits, max_body_bytes), stopping_(std::move(stopping)),
        buf_(16384) {}
  ~Connection() { close(); }
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Waits for the first byte of the next request; false when the client
  // closed or stayed idle past keep_alive_timeout_s, or the server stops.
  bool next_request() {
    framing_.start();
    responded_ = false;
    if (begin_ == end_ && wait(POLLIN, Clock::now() + seconds(limits_.keep_alive_timeout_s)) != Wait::Ready)
      return false;
    head_deadline_ = Clock::now() + seconds(limits_.header_timeout_s);
    return true;
  }

  const RequestFraming& framing() const { return framing_; }
  bool responded() const { return responded_; }

  // An error response of our own, for a request httplib gave up on without
  // answering (its request line broke a limit or timed out).
  void respond(const HttpViolation& v) {
    const std::string body = serve::dump_json(serve::error_body(v.status, v.message, "", v.code));
    const std::string head = "HTTP/1.1 " + std::to_string(v.status) + " " + reason_phrase(v.status) +
                             "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
                             "\r\nConnection: close\r\n\r\n";
    const std::string all = head + body;
    for (size_t off = 0; off < all.size();) {
      const ssize_t n = write(all.data() + off, all.size() - off);
      if (n <= 0) return;
      off += size_t(n);
    }
  }

  // Closes the socket. When the client may still be sending the request we
  // did not read, its bytes are drained for a moment first (as nginx's
  // lingering close): closing with unread bytes resets the connection, and
  // the reset can destroy the response before the client reads it.
  void close() {
    if (sock_ == INVALID_SOCKET) return;
    if (framing_.started() && !framing_.complete()) {
      ::shutdown(sock_, SHUT_WR);
      const auto deadline = Clock::now() + std::chrono::seconds(1);
      for (int64_t drained = 0; drained < (int64_t(1) << 20) && wait(POLLIN, deadline) == Wait::Ready;) {
        const ssize_t n = ::recv(sock_, buf_.data(), buf_.size(), MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)) break;
        if (n > 0) drained += n;
      }
    }
    ::shutdown(sock_, SHUT_RDWR);
    ::close(sock_);
    sock_ = INVALID_SOCKET;
  }

  bool is_readable() const override {
    return begin_ < end_ || wait(POLLIN, Clock::now() + seconds(limits_.read_timeout_s)) == Wait::Ready;
  }

  // Whether the client is still there: the socket takes bytes (within the
  // write timeout) and has not been closed by the peer.
  bool is_writable() const override {
    if (wait(POLLOUT, Clock::now() + seconds(limits_.write_timeout_s)) != Wait::Ready) return false;
    char c;
    const ssize_t n = ::recv(sock_, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return n > 0 || (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR));
  }

  ssize_t read(char* ptr, size_t size) override {
    if (framing_.complete()) return 0;  // the request has ended: nothing more is its body
    if (framing_.violation()) return -1;
    if (begin_ == end_) {
      const ssize_t n = fill();
      if (n <= 0) return n;
    }
    const size_t k = framing_.take(buf_.data() + begin_, std::min(size, end_ - begin_));
    if (k == 0) return framing_.complete() ? 0 : -1;
    std::memcpy(ptr, buf_.data() + begin_, k);
    begin_ += k;
    return ssize_t(k);
  }

  ssize_t write(const char* ptr, size_t size) override {
    const auto deadline = Clock::now() + seconds(limits_.write_timeout_s);
    for (;;) {
      if (wait(POLLOUT, deadline) != Wait::Ready) return -1;
      const ssize_t n = ::send(sock_, ptr, size, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n >= 0) {
        responded_ = responded_ || n > 0;
        return n;
      }
      if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK) return -1;
    }
  }

  void get_remote_ip_and_port(std::string& ip, int& port) const override { address(::getpeername, ip, port); }
  void get_local_ip_and_port(std::string& ip, int& port) const override { address(::getsockname, ip, port); }
  socket_t socket() const override { return sock_; }

 private:
  enum class Wait { Ready, Timeout, Closed, Stopping };

  // Polls for `events` until `deadline`, in slices so that a stopping server
  // is noticed within 0.1 s.
  Wait wait(short events, Clock::time_point deadline) const {
    for (;;) {
      if (stopping_()) return Wait::Stopping;
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) return Wait::Timeout;
      pollfd p{sock_, events, 0};
      const int r = ::poll(&p, 1, int(std::min<int64_t>(left, 100)));
      if (r > 0) {
        if (p.revents & events) return Wait::Ready;
        if (p.revents & (POLLERR | POLLHUP | POLLNVAL)) return events == POLLIN ? Wait::Ready : Wait::Closed;
      } else if (r < 0 && errno != EINTR) {
        return Wait::Closed;
      }
    }
  }

  // Reads what the socket has into buf_: > 0 bytes, 0 at the client's end
  // of stream, -1 on an error or a timeout (recorded in the framing).
  ssize_t fill() {
    const bool head = framing_.in_head();
    const auto deadline = head ? head_deadline_ : Clock::now() + seconds(limits_.read_timeout_s);
    for (;;) {
      switch (wait(POLLIN, deadline)) {
        case Wait::Ready:
          break;
        case Wait::Timeout:
          framing_.fail({408,
                         head ? "The request line and headers did not arrive within " +
                                    std::to_string(int64_t(limits_.header_timeout_s)) + " s."
                              : "No bytes of the request body arrived for " +
                                    std::to_string(int64_t(limits_.read_timeout_s)) + " s.",
                         "request_timeout"});
          return -1;
        case Wait::Stopping:
          framing_.fail({503, "The server is shutting down.", ""});
          return -1;
        case Wait::Closed:
          return -1;
      }
      const ssize_t n = ::recv(sock_, buf_.data(), buf_.size(), MSG_DONTWAIT);
      if (n >= 0) {
        begin_ = 0;
        end_ = size_t(n);
        return n;
      }
      if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK) return -1;
    }
  }

  using NameFn = int (*)(int, sockaddr*, socklen_t*);
  void address(NameFn fn, std::string& ip, int& port) const {
    sockaddr_storage a{};
    socklen_t len = sizeof(a);
    char host[NI_MAXHOST], serv[NI_MAXSERV];
    if (fn(sock_, reinterpret_cast<sockaddr*>(&a), &len) == 0 &&
        ::getnameinfo(reinterpret_cast<sockaddr*>(&a), len, host, sizeof(host), serv, sizeof(serv),
                      NI_NUMERICHOST | NI_NUMERICSERV) == 0) {
      ip = host;
      port = std::atoi(serv);
    }
  }

  socket_t sock_;
  HttpLimits limits_;
  RequestFraming framing_;
  std::function<bool()> stopping_;
  std::vector<char> buf_;
  size_t begin_ = 0, end_ = 0;  // unread bytes of buf_
  Clock::time_point head_deadline_;
  bool responded_ = false;  // a byte of the current response was sent
};

// The connection this worker thread serves: httplib runs a connection's
// requests, handlers and content providers on the worker that accepted it,
// and hands handlers no stream, so they find its framing here.
thread_local Connection* t_connection = nullptr;

// httplib with our own connection loop (see the top of the file).
class HttpListener : public httplib::Server {
 public:
  HttpLimits limits;
  int64_t max_body_bytes = 0;
  std::function<void(int status)> count_response;  // responses httplib does not log

  // httplib listens with a backlog of 5: a burst of clients overflows it, and
  // under load a connection whose handshake was dropped can reach a worker
  // only after its read timeout. Linux lets listen() be called again to enlarge it.
  void enlarge_backlog() { ::listen(svr_sock_, SOMAXCONN); }

 private:
  bool process_and_close_socket(socket_t sock) override {
    Connection conn(sock, limits, max_body_bytes, [this] { return svr_sock_ == INVALID_SOCKET; });
    struct Current {  // t_connection for this connection's lifetime
      explicit Current(Connection* c) { t_connection = c; }
      ~Current() { t_connection = nullptr; }
    } current(&conn);
    bool ok = true;
    for (int64_t served = 1; ok && conn.next_request(); ++served) {
      const bool last = served >= limits.max_requests_per_connection;
      bool client_closes = false;
      ok = process_request(conn, last, client_closes, nullptr);
      const auto& violation = conn.framing().violation();
      if (!ok && violation && !conn.responded()) {  // httplib gave up on the request line
        conn.respond(*violation);
        if (count_response) count_response(violation->status);
      }
      ok = ok && !last && !client_closes && conn.framing().complete();
    }
    return ok;  // ~Connection closes the socket
  }
};

void set_json(httplib::Response& res, int status, const nlohmann::json& body) {
  res.status = status;
  res.set_content(serve::dump_json(body), "application/json");
}

void set_error(httplib::Response& res, int status, const std::string& message, const std::string& param = "",
               const std::string& code = "") {
  set_json(res, status, serve::error_body(status, message, param, code));
}

// Why the current request could not be read, if the framing knows.
const std::optional<HttpViolation>& connection_violation() {
  static const std::optional<HttpViolation> none;
  return t_connection ? t_connection->framing().violation() : none;
}

// The HTTP methods a path answers to ("" = unknown path).
std::string allowed_methods(const std::string& path) {
  if (path == "/health" || path == "/metrics" || path == "/v1/models") return "GET";
  if (path.rfind("/v1/models/", 0) == 0 && path.size() > 11) return "GET";
  if (path == "/v1/completions" || path == "/v1/chat/completions" || path == "/v1/embeddings") return "POST";
  if (path == "/tokenize" || path == "/detokenize") return "POST";
  return "";
}

// Routes that need the API key (when the server has one).
bool needs_auth(const std::string& path) {
  return path.rfind("/v1/", 0) == 0 || path == "/tokenize" || path == "/detokenize";
}

// ---- one completion request ------------------------------------------------

// One completion request being answered.
// The access-log facts of the request a worker thread is answering: httplib
// runs the pre-routing handler, the handler, the response's content provider
// (pump) and the logger of one request on the same thread, one request at a
// time.
struct AccessRecord {
  Clock::time_point start{};        // {} when routing never began (a malformed request)
  int64_t prompt_tokens = -1;       // completions only
  int64_t completion_tokens = -1;
  bool client_gone = false;
};
thread_local AccessRecord t_access;

// "2026-12-05T01:23:45.123Z finmoe serve: POST /v1/completions 200 12.3 ms prompt_tokens=5 completion_tokens=8\n"
std::string access_line(const httplib::Request& req, int status, const AccessRecord& a) {
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char stamp[32];
  std::strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
  std::ostringstream line;
  line << stamp << '.' << std::setfill('0') << std::setw(3) << ms << std::setfill(' ') << "Z finmoe serve: "
       << (req.method.empty() ? "-" : req.method) << ' ' << (req.path.empty() ? "-" : req.path) << ' ' << status
       << ' ';
  if (a.start == Clock::time_point{})
    line << '-';
  else
    line << std::fixed << std::setprecision(1)
         << std::chrono::duration<double, std::milli>(Clock::now() - a.start).count();
  line << " ms";
  if (a.prompt_tokens >= 0)
    line << " prompt_tokens=" << a.prompt_tokens << " completion_tokens=" << a.completion_tokens;
  if (a.client_gone) line << " (client disconnected, cancelled)";
  line << '\n';
  return line.str();
}

struct Job {
  uint64_t ticket = 0;
  ApiRequest request;
  std::unique_ptr<ResponseBuilder> builder;  // refers to `request`
  std::shared_ptr<OutputChannel> channel;    // shared with the engine callbacks
  Clock::time_point arrival;
  std::string route;
  bool client_gone = false;
  int64_t finished = 0;  // choices finished (the answering worker's)

  std::mutex mu;  // guards the three below: the worker submits, shutdown cancels
  std::vector<uint64_t> engine_ids;
  int64_t submitted = 0;  // choices 0..submitted-1 went to the engine
  bool cancelled = false;
};

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
    ctx.kv_cache_tokens = engine.stats().max_tokens_in_cache;
    ctx.vocab_size = config.vocab_size;
    ctx.hidden_size = config.hidden_size;
    ctx.default_sampling = options.default_sampling;
    ctx.limits = options.limits;
    ctx.constraints = std::make_shared<ConstraintFactory>(config.vocab_size, &tokenizer);
    if (options.served_model_name.empty()) throw Error("ServerOptions.served_model_name must not be empty");
    for (const auto& a : options.adapters) {
      if (a.name.empty() || a.name == options.served_model_name || ctx.adapters.count(a.name))
        throw Error("adapter name '" + a.name + "' is empty or already serves another model");
      if (a.id < 1) throw Error("adapter '" + a.name + "' needs an id >= 1");
      ctx.adapters[a.name] = a.id;
    }
    if (options.http_threads < 1) throw Error("ServerOptions.http_threads must be >= 1");
    if (options.max_body_bytes < 1) throw Error("ServerOptions.max_body_bytes must be >= 1");
    if (options.max_seqs_per_request < 0) throw Error("ServerOptions.max_seqs_per_request must be >= 0");
    const RequestLimits& l = options.limits;
    for (const auto& [v, name] : {std::pair{l.max_prompts, "max_prompts"}, {l.max_n, "max_n"},
                                  {l.max_choices, "max_choices"}, {l.max_stop, "max_stop"},
                                  {l.max_stop_bytes, "max_stop_bytes"}, {l.max_logit_bias, "max_logit_bias"},
                                  {l.max_messages, "max_messages"}})
      if (v < 1) throw Error(std::string("ServerOptions.limits.") + name + " must be >= 1, got " + std::to_string(v));
    const HttpLimits& h = options.http;
    for (int64_t v : {h.max_request_line, h.max_header_line, h.max_header_count, h.max_chunk_line,
                      h.max_requests_per_connection})
      if (v < 1) throw Error("ServerOptions.http: line, header and request limits must be >= 1");
    for (double v : {h.header_timeout_s, h.read_timeout_s, h.write_timeout_s, h.keep_alive_timeout_s})
      if (!(v > 0)) throw Error("ServerOptions.http: timeouts must be > 0 seconds");
    routes();
  }

  void routes();
  bool check_auth(const httplib::Request& req, httplib::Response& res) const;
  bool refuse_early(const httplib::Request& req, httplib::Response& res) const;
  void handle_generate(const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& read,
                       Endpoint endpoint);
  bool read_body(const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& read,
                 std::string& body);
  void handle_tokenizer(const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& read,
                        bool encode);
  void handle_embeddings(const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& read);
  void too_large(httplib::Response& res) const;
  bool pump(Job& job, httplib::DataSink& sink);
  std::vector<int64_t> submit_more(Job& job);
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
  std::atomic<bool> listen_done{false};  // the HTTP listen loop has returned
  bool bound = false;
};

bool Server::Impl::check_auth(const httplib::Request& req, httplib::Response& res) const {
  // The value as received: get_header_value() goes through a C string and
  // would end "Bearer KEY\0anything" at the NUL. More than one is refused.
  if (options.api_key.empty()) return true;
  const auto [first, last] = req.headers.equal_range("Authorization");
  if (first != last && std::next(first) == last && serve::authorized(first->second, options.api_key)) return true;
  set_error(res, 401, first != last ? "Incorrect API key provided." : "Missing API key: send 'Authorization: Bearer KEY'.",
            "", "invalid_api_key");
  return false;
}

// Answers a request that is refused whatever its body holds, before the body
// is read: a missing or wrong API key (for /v1/*), an unknown path, a method
// the path does not take, a completion while shutting down. True: answered.
bool Server::Impl::refuse_early(const httplib::Request& req, httplib::Response& res) const {
  if (needs_auth(req.path) && !check_auth(req, res)) return true;
  const std::string allowed = allowed_methods(req.path);
  if (allowed.empty()) {
    set_error(res, 404, "Unknown request URL: " + req.method + " " + req.path + ".", "", "unknown_url");
    return true;
  }
  if (req.method != allowed && !(allowed == "GET" && req.method == "HEAD")) {
    set_error(res, 405, "Method " + req.method + " is not allowed for " + req.path + "; use " + allowed + ".", "",
              "method_not_allowed");
    res.set_header("Allow", allowed);
    return true;
  }
  if (allowed == "POST" && draining) {
    set_error(res, 503, "The server is shutting down.");
    return true;
  }
  return false;
}

void Server::Impl::routes() {
  http.new_task_queue = [n = options.http_threads] { return new httplib::ThreadPool(size_t(n)); };
  http.set_payload_max_length(size_t(options.max_body_bytes));
  // only for the Keep-Alive header httplib writes; the connection loop enforces them
  http.set_keep_alive_max_count(size_t(options.http.max_requests_per_connection));
  http.set_keep_alive_timeout(time_t(options.http.keep_alive_timeout_s));
  http.limits = options.http;
  http.max_body_bytes = options.max_body_bytes;
  http.count_response = [this](int status) { metrics.count_response(status); };

  // Refusals that need no body come before it is read (and before httplib
  // answers "Expect: 100-continue", so a refused client never sends it).
  http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    t_access = AccessRecord{};  // the access line's latency starts here
    t_access.start = Clock::now();
    return refuse_early(req, res) ? httplib::Server::HandlerResponse::Handled
                                  : httplib::Server::HandlerResponse::Unhandled;
  });
  http.set_expect_100_continue_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (!refuse_early(req, res)) return 100;
    res.set_header("Content-Length", std::to_string(res.body.size()));  // httplib writes this one as it is
    return res.status;
  });
  // A response to a request whose body was not read ends the connection.
  http.set_post_routing_handler([](const httplib::Request&, httplib::Response& res) {
    if (t_connection && !t_connection->framing().complete()) res.set_header("Connection", "close");
  });

  http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    if (draining) set_error(res, 503, "The server is shutting down.");
    else res.status = 200;
  });
  http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(serve::format_metrics(engine.stats(), metrics.snapshot(), options.served_model_name),
                    "text/plain; version=0.0.4; charset=utf-8");
  });
  // the base model, then each adapter with its base as "parent" (vLLM's cards)
  auto model_cards = [this] {
    auto cards = nlohmann::json::array();
    cards.push_back({{"id", options.served_model_name}, {"object", "model"}, {"created", created},
                     {"owned_by", "finmoe"}, {"root", options.served_model_name}, {"parent", nullptr},
                     {"max_model_len", ctx.max_model_len}, {"vocab_size", ctx.vocab_size}});
    for (const auto& a : options.adapters)
      cards.push_back({{"id", a.name}, {"object", "model"}, {"created", created}, {"owned_by", "finmoe"},
                       {"root", a.source}, {"parent", options.served_model_name},
                       {"max_model_len", ctx.max_model_len}, {"vocab_size", ctx.vocab_size}});
    return cards;
  };
  http.Get("/v1/models", [model_cards](const httplib::Request&, httplib::Response& res) {
    set_json(res, 200, {{"object", "list"}, {"data", model_cards()}});
  });
  http.Get(R"(/v1/models/(.+))", [model_cards](const httplib::Request& req, httplib::Response& res) {
    for (const auto& card : model_cards())
      if (card["id"] == std::string(req.matches[1])) return set_json(res, 200, card);
    set_error(res, 404, "The model `" + std::string(req.matches[1]) + "` does not exist.", "model", "model_not_found");
  });
  // Bodies are read here, not by httplib, within max_body_bytes.
  http.Post("/v1/completions",
            [this](const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& read) {
              handle_generate(req, res, read, Endpoint::Completions);
            });
  http.Post("/v1/chat/completions",
            [this](const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& read) {
              handle_generate(req, res, read, Endpoint::Chat);
            });
  http.Post("/v1/embeddings",
            [this](const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& read) {
              handle_embeddings(req, res, read);
            });
  http.Post("/tokenize", [this](const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& read) {
    handle_tokenizer(req, res, read, /*encode=*/true);
  });
  http.Post("/detokenize", [this](const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& read) {
    handle_tokenizer(req, res, read, /*encode=*/false);
  });

  // Responses httplib makes itself (a request it could not parse or read)
  // get an OpenAI error body, with the framing's reason when it has one;
  // handlers' own errors already have one.
  http.set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request& req,
                                                                     httplib::Response& res) {
    if (!res.body.empty() || res.is_chunked_content_provider_) return httplib::Server::HandlerResponse::Unhandled;
    if (const auto& v = connection_violation()) {
      set_error(res, v->status, v->message, "", v->code);
      return httplib::Server::HandlerResponse::Handled;
    }
    switch (res.status) {
      case 404:
        set_error(res, 404, "Unknown request URL: " + req.method + " " + req.path + ".", "", "unknown_url");
        break;
      case 413:
        too_large(res);
        break;
      case 400:
        set_error(res, 400, "The request is not valid HTTP/1.1 (request line or headers).", "", "invalid_http");
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
  http.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
    metrics.count_response(res.status);
    if (options.log_level >= LogLevel::Info) std::cerr << access_line(req, res.status, t_access);
    t_access = AccessRecord{};
  });
}

void Server::Impl::too_large(httplib::Response& res) const {
  set_error(res, 413,
            "The request body is larger than the server's limit of " + std::to_string(options.max_body_bytes) +
                " bytes.",
            "", "request_too_large");
}

// Reads the body within max_body_bytes; false: `res` holds the error.
bool Server::Impl::read_body(const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& read,
                             std::string& body) {
  // A request with neither Content-Length nor chunked encoding has no body
  // (RFC 9112); httplib would read one until the client closes.
  if (!req.has_header("Content-Length") && !req.has_header("Transfer-Encoding")) return true;
  bool over = false;
  const bool complete = read([&](const char* data, size_t n) {
    over = body.size() + n > size_t(options.max_body_bytes);
    if (!over) body.append(data, n);
    return !over;
  });
  if (const auto& v = connection_violation()) {
    set_error(res, v->status, v->message, "", v->code);
    return false;
  }
  if (over || res.status == 413) {
    too_large(res);
    return false;
  }
  if (!complete) {
    set_error(res, 400, "The request body could not be read completely.", "", "invalid_body");
    return false;
  }
  return true;
}

// vLLM's /tokenize and /detokenize: the tokenizer only, no engine.
void Server::Impl::handle_tokenizer(const httplib::Request& req, httplib::Response& res,
                                    const httplib::ContentReader& read, bool encode) {
  if (!check_auth(req, res)) return;
  std::string body;
  if (!read_body(req, res, read, body)) return;
  try {
    set_json(res, 200, encode ? serve::tokenize(body, ctx) : serve::detokenize(body, ctx));
  } catch (const ApiError& e) {
    set_json(res, e.status(), e.body());
  } catch (const Error& e) {
    set_error(res, 400, e.what(), "", "invalid_request");
  }
}

// /v1/embeddings: parsed here; each input's forward pass is one engine task
// (Engine::submit_task), so it runs between generation steps on the
// stepping thread and generation moves on between inputs.
void Server::Impl::handle_embeddings(const httplib::Request& req, httplib::Response& res,
                                     const httplib::ContentReader& read) {
  if (!check_auth(req, res)) return;
  if (draining) return set_error(res, 503, "The server is shutting down.");
  std::string body;
  if (!read_body(req, res, read, body)) return;
  auto request = std::make_shared<serve::EmbeddingRequest>();
  try {
    *request = serve::parse_embedding_request(body, ctx);
  } catch (const ApiError& e) {
    return set_json(res, e.status(), e.body());
  } catch (const Error& e) {  // not expected: the parser names the field of what it rejects
    return set_error(res, 400, e.what(), "", "invalid_request");
  }
  metrics.requests_in_flight++;
  std::vector<std::future<std::vector<float>>> results;
  for (size_t i = 0; i < request->inputs.size(); ++i) {
    auto done = std::make_shared<std::promise<std::vector<float>>>();
    results.push_back(done->get_future());
    engine.submit_task([done, request, i, pooling = options.embedding_pooling,
                        normalize = options.embedding_normalize](Transformer& model) {
      try {
        done->set_value(serve::embed_prompt(model, request->inputs[i], pooling, normalize, request->adapter));
      } catch (...) {
        done->set_exception(std::current_exception());
      }
    });
  }
  std::vector<std::vector<float>> vectors;
  try {
    for (auto& r : results) vectors.push_back(r.get());
    const nlohmann::json response = serve::embedding_response(*request, vectors, ctx);
    const int64_t tokens = response["usage"]["prompt_tokens"].get<int64_t>();
    metrics.embedding_requests++;
    metrics.embedding_prompt_tokens += tokens;
    t_access.prompt_tokens = tokens;
    t_access.completion_tokens = 0;
    set_json(res, 200, response);
  } catch (const std::future_error&) {  // the engine stopped before running it
    set_error(res, 503, "The server is shutting down.");
  } catch (const std::exception& e) {
    std::cerr << "finmoe serve: internal error on POST /v1/embeddings: " << e.what() << "\n";
    set_error(res, 500, std::string("Internal server error: ") + e.what(), "", "internal_error");
  }
  metrics.requests_in_flight--;
}

void Server::Impl::handle_generate(const httplib::Request& req, httplib::Response& res,
                                   const httplib::ContentReader& read, Endpoint endpoint) {
  if (!check_auth(req, res)) return;
  if (draining) return set_error(res, 503, "The server is shutting down.");
  std::string body;
  if (!read_body(req, res, read, body)) return;
  auto job = std::make_shared<Job>();
  job->arrival = Clock::now();
  job->route = req.path;
  try {
    job->request = endpoint == Endpoint::Chat ? serve::parse_chat_request(body, ctx)
                                              : serve::parse_completion_request(body, ctx);
  } catch (const ApiError& e) {
    return set_json(res, e.status(), e.body());
  } catch (const Error& e) {  // not expected: the parser names the field of what it rejects
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
    submit_more(*job);
  } catch (const Error& e) {
    release(job);
    return set_error(res, 400, e.what(), "", "invalid_request");
  }
  const char* type = r.stream ? "text/event-stream" : "application/json";
  if (r.stream) res.set_header("Cache-Control", "no-cache");
  if (!r.ignored_fields.empty()) {  // vLLM fields accepted without effect: the client is told which
    std::string names;
    for (const auto& f : r.ignored_fields) names += (names.empty() ? "" : ", ") + f;
    res.set_header("X-Finmoe-Ignored-Fields", names);
  }
  res.set_chunked_content_provider(
      type, [this, job](size_t, httplib::DataSink& sink) { return pump(*job, sink); },
      [this, job](bool) { release(job); });
}

// Submits choices while the request has fewer than max_seqs_per_request in
// the engine. Once the job is cancelled nothing more is submitted: returns
// the choices that never will be (each once), for the caller to end.
std::vector<int64_t> Server::Impl::submit_more(Job& job) {
  const ApiRequest& r = job.request;
  const int64_t total = r.num_choices();
  const int64_t cap = options.max_seqs_per_request > 0 ? options.max_seqs_per_request : total;
  std::lock_guard lock(job.mu);
  std::vector<int64_t> never;
  if (job.cancelled) {
    for (; job.submitted < total; ++job.submitted) never.push_back(job.submitted);
    return never;
  }
  while (job.submitted < total && job.submitted - job.finished < cap) {
    const int64_t c = job.submitted;
    auto channel = job.channel;
    job.engine_ids.push_back(engine.submit(r.prompts[size_t(c / r.n)], r.choice_params(c),
                                           [channel, c](const RequestOutput& out) { channel->push(c, out); }));
    ++job.submitted;
  }
  return never;
}

// Writes the whole response of `job`; false when the client went away.
bool Server::Impl::pump(Job& job, httplib::DataSink& sink) {
  // what the access line reports (this thread's request)
  auto note_usage = [&] {
    const auto u = job.builder->usage();
    t_access.prompt_tokens = u.value("prompt_tokens", int64_t(0));
    t_access.completion_tokens = u.value("completion_tokens", int64_t(0));
    t_access.client_gone = job.client_gone;
  };
  auto client_gone = [&] {
    job.client_gone = true;
    cancel(job);
    note_usage();
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
        if (out.finished && !out.error.empty() && options.log_level >= LogLevel::Warning)
          std::cerr << "finmoe serve: engine aborted a request on " << job.route << ": " << out.error << "\n";
        if (out.finished) ++job.finished;
        if (!send(b.add(choice, out))) return client_gone();  // "" when not streaming
      }
      // Choices that waited for a free slot, or end now when cancelled.
      for (int64_t c : submit_more(job)) {
        RequestOutput aborted;
        aborted.finished = true;
        aborted.finish_reason = "abort";
        job.channel->push(c, aborted);
      }
    }
    if (!send(stream ? b.stream_end() : serve::dump_json(b.response()))) return client_gone();
    note_usage();
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
  std::lock_guard lock(job.mu);
  job.cancelled = true;
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
  const auto deadline = Clock::now() + seconds(options.shutdown_timeout_s);
  cv.wait_until(lock, deadline, [&] { return jobs.empty() || shutdown_calls > 1; });
  if (!jobs.empty()) {
    std::cerr << "finmoe serve: cancelling " << jobs.size() << " request(s)\n";
    for (auto& [ticket, job] : jobs) cancel(*job);
    // their final "abort" events still reach the clients
    cv.wait_for(lock, std::chrono::seconds(5), [&] { return jobs.empty(); });
  }
  lock.unlock();
  // httplib's stop() does nothing before its listen loop runs (a signal right
  // after bind): repeat it until serve() has seen the loop end
  while (!listen_done) {
    if (http.is_running()) http.stop();
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

// ---- Server --------------------------------------------------------------

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
  impl_->listen_done = true;
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

LogLevel log_level_from_string(std::string_view name) {
  if (name == "error") return LogLevel::Error;
  if (name == "warning") return LogLevel::Warning;
  if (name == "info") return LogLevel::Info;
  throw Error("log level '" + std::string(name) + "' unknown (error, warning, info)");
}

void run_server(Server& server) {
  if (::pipe2(g_signal_pipe, O_CLOEXEC) != 0) throw Error("serve: pipe2 failed");
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  struct sigaction old_int {}, old_term {};
  ::sigaction(SIGINT, &sa, &old_int);
  ::sigaction(SIGTERM, &sa, &old_term);
  ::signal(SIGPIPE, SIG_IGN);  // a vanished client is a failed write, not a dead server

  const int port = server.bind();
  std::cerr << "finmoe serve: listening on http://" << server.options().host << ":" << port << " (model '"
            << server.options().served_model_name << "')" << std::endl;
  std::thread watcher([&server] {
    // the handler may run on this thread: a read it interrupts is retried
    for (char c = 0;;) {
      const ssize_t n = ::read(g_signal_pipe[0], &c, 1);
      if (n < 0 && errno == EINTR) continue;
      if (n != 1 || c == 0) break;
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
