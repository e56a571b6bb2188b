#pragma once
// The framing of HTTP/1.1 requests on one connection, followed byte by byte:
// where a request's head (request line + headers) and its body
// (Content-Length or chunked) end, and the limits a client must keep.
//
// The server (http_server.cpp) passes every byte it hands to cpp-httplib
// through take() first. A byte that breaks a limit or the framing is refused,
// so httplib never reads past it (a 100 MB line or body is never buffered),
// and the reason is kept for the error response. After each response the
// connection is kept only when the request was read to its last byte: a
// response sent before the body was read (401, 404, 413, ...) closes it, so
// the rest of a request is never parsed as the next one.
//
// The framing is as strict as httplib 0.11 or stricter, never looser: CRLF
// line ends, Content-Length as plain digits (one value), Transfer-Encoding
// only "chunked" and never with Content-Length, no chunk trailers.
//
// Not thread-safe; one per connection.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "finmoe/server.h"

namespace finmoe::serve {

// Why a request is refused at the HTTP level.
struct HttpViolation {
  int status = 400;
  std::string message;
  std::string code;  // OpenAI error code ("" = null)
};

class RequestFraming {
 public:
  RequestFraming(const HttpLimits& limits, int64_t max_body_bytes);

  // Expects the first byte of the next request (after the last one completed).
  void start();
  // Takes bytes of the connection in order; returns how many were taken.
  // Fewer than n: the next byte broke a limit or the framing (violation() is
  // set and nothing more is taken), or the request has completed (the rest
  // belongs to the next one).
  size_t take(const char* data, size_t n);
  // The reader's own verdict (a timeout); the request is over.
  void fail(HttpViolation why);

  bool started() const { return phase_ != Phase::Idle; }
  bool in_head() const {
    return phase_ == Phase::Idle || phase_ == Phase::RequestLine || phase_ == Phase::Headers;
  }
  // Head and whole body taken: the connection is at a request boundary.
  bool complete() const { return phase_ == Phase::Done; }
  const std::optional<HttpViolation>& violation() const { return violation_; }

  // Valid once the head is taken.
  bool chunked() const { return chunked_; }
  std::optional<int64_t> content_length() const { return content_length_; }

 private:
  enum class Phase {
    Idle,
    RequestLine,
    Headers,
    FixedBody,
    ChunkSize,
    ChunkData,
    ChunkEnd,
    LastChunkEnd,
    Done,
    Broken
  };

  bool take_byte(char c);  // false: c refused
  bool end_header_line();
  bool end_head();
  bool end_chunk_size_line();
  bool refuse(int status, std::string message, std::string code = "");

  HttpLimits limits_;
  int64_t max_body_bytes_;
  Phase phase_ = Phase::Idle;
  std::string line_;  // the line being read (bounded by the line limits)
  int64_t line_bytes_ = 0;
  int64_t header_count_ = 0;
  std::optional<int64_t> content_length_;
  bool chunked_ = false;
  int64_t remaining_ = 0;   // body or chunk bytes still to come
  int64_t body_bytes_ = 0;  // chunk sizes so far
  std::optional<HttpViolation> violation_;
};

}  // namespace finmoe::serve
