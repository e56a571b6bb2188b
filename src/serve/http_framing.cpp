#include "serve/http_framing.h"

#include <algorithm>
#include <cctype>

namespace finmoe::serve {
namespace {

bool iequals(const std::string& a, const char* b) {
  size_t i = 0;
  for (; i < a.size() && b[i]; ++i)
    if (std::tolower(static_cast<unsigned char>(a[i])) !=
        std::tolower(static_cast<unsigned char>(b[i])))
      return false;
  return i == a.size() && !b[i];
}

bool space_or_tab(char c) { return c == ' ' || c == '\t'; }

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// A client's bytes quoted in a message: short, printable.
std::string printable(const std::string& s) {
  std::string out;
  for (char c : s.substr(0, 40)) out += (c >= 0x20 && c < 0x7f) ? c : '?';
  return "'" + out + (s.size() > 40 ? "...'" : "'");
}

}  // namespace

RequestFraming::RequestFraming(const HttpLimits& limits, int64_t max_body_bytes)
    : limits_(limits), max_body_bytes_(max_body_bytes) {}

void RequestFraming::start() {
  phase_ = Phase::Idle;
  line_.clear();
  line_bytes_ = header_count_ = remaining_ = body_bytes_ = 0;
  content_length_.reset();
  chunked_ = false;
  violation_.reset();
}

size_t RequestFraming::take(const char* data, size_t n) {
  size_t i = 0;
  while (i < n) {
    if (phase_ == Phase::Done || phase_ == Phase::Broken) return i;
    if (phase_ == Phase::FixedBody || phase_ == Phase::ChunkData) {
      const auto k =
          static_cast<size_t>(std::min<int64_t>(remaining_, static_cast<int64_t>(n - i)));
      remaining_ -= static_cast<int64_t>(k);
      i += k;
      if (remaining_ == 0) {
        phase_ = phase_ == Phase::FixedBody ? Phase::Done : Phase::ChunkEnd;
        line_.clear();
      }
      continue;
    }
    if (!take_byte(data[i])) return i;
    ++i;
  }
  return i;
}

void RequestFraming::fail(HttpViolation why) {
  if (!violation_) violation_ = std::move(why);
  phase_ = Phase::Broken;
}

bool RequestFraming::refuse(int status, std::string message, std::string code) {
  fail({status, std::move(message), std::move(code)});
  return false;
}

bool RequestFraming::take_byte(char c) {
  switch (phase_) {
    case Phase::Idle:
      phase_ = Phase::RequestLine;
      [[fallthrough]];
    case Phase::RequestLine:
      if (++line_bytes_ > limits_.max_request_line)
        return refuse(414,
                      "The request line is longer than " +
                          std::to_string(limits_.max_request_line) + " bytes.",
                      "request_line_too_long");
      if (c == '\n') {
        phase_ = Phase::Headers;
        line_.clear();
      }
      return true;
    case Phase::Headers:
      line_ += c;
      if (static_cast<int64_t>(line_.size()) > limits_.max_header_line)
        return refuse(
            431,
            "A header line is longer than " + std::to_string(limits_.max_header_line) + " bytes.",
            "header_too_large");
      return c != '\n' || end_header_line();
    case Phase::ChunkSize:
      line_ += c;
      if (static_cast<int64_t>(line_.size()) > limits_.max_chunk_line)
        return refuse(400,
                      "A chunk-size line is longer than " + std::to_string(limits_.max_chunk_line) +
                          " bytes.",
                      "invalid_chunked_body");
      return c != '\n' || end_chunk_size_line();
    case Phase::ChunkEnd:
    case Phase::LastChunkEnd: {
      line_ += c;
      if (line_ == "\r") return true;
      if (line_ != "\r\n")
        return refuse(400,
                      phase_ == Phase::ChunkEnd
                          ? "Chunk data must be followed by CRLF."
                          : "A chunked body ends with '0' CRLF CRLF; trailer fields are not "
                            "supported.",
                      "invalid_chunked_body");
      phase_ = phase_ == Phase::ChunkEnd ? Phase::ChunkSize : Phase::Done;
      line_.clear();
      return true;
    }
    default:
      return false;
  }
}

bool RequestFraming::end_header_line() {
  if (line_.size() < 2 || line_[line_.size() - 2] != '\r')
    return refuse(400, "Header lines must end with CRLF.");
  if (line_ == "\r\n") return end_head();
  if (space_or_tab(line_[0]))
    return refuse(400, "Folded header lines (obs-fold) are not accepted.");
  if (++header_count_ > limits_.max_header_count)
    return refuse(
        431,
        "The request has more than " + std::to_string(limits_.max_header_count) + " header lines.",
        "header_too_large");
  const size_t colon = line_.find(':');
  if (colon == std::string::npos)
    return refuse(400, "A header line has no ':': " + printable(line_) + ".");
  const std::string name = line_.substr(0, colon);
  if (name.empty() || std::any_of(name.begin(), name.end(), space_or_tab))
    return refuse(400, "A header name is empty or holds whitespace: " + printable(name) + ".");
  size_t b = colon + 1, e = line_.size() - 2;  // the value without CRLF and surrounding whitespace
  while (b < e && space_or_tab(line_[b])) ++b;
  while (e > b && space_or_tab(line_[e - 1])) --e;
  const std::string value = line_.substr(b, e - b);
  if (iequals(name, "content-length")) {
    if (value.empty() || value.size() > 18 ||
        !std::all_of(value.begin(), value.end(), [](char c) { return c >= '0' && c <= '9'; }))
      return refuse(400, "Content-Length must be a number of bytes, got " + printable(value) + ".");
    const int64_t v = std::stoll(value);
    if (content_length_ && *content_length_ != v)
      return refuse(400, "The request has conflicting Content-Length headers.");
    content_length_ = v;
  } else if (iequals(name, "transfer-encoding")) {
    if (chunked_) return refuse(400, "The request has more than one Transfer-Encoding header.");
    if (!iequals(value, "chunked"))
      return refuse(501,
                    "Transfer-Encoding " + printable(value) +
                        " is not supported; send Content-Length or chunked.",
                    "unsupported_transfer_encoding");
    chunked_ = true;
  }
  line_.clear();
  return true;
}

bool RequestFraming::end_head() {
  line_.clear();
  if (chunked_ && content_length_)
    return refuse(400, "A request must not have both Content-Length and Transfer-Encoding.");
  if (content_length_ && *content_length_ > max_body_bytes_)
    return refuse(413,
                  "The request body is larger than the server's limit of " +
                      std::to_string(max_body_bytes_) + " bytes.",
                  "request_too_large");
  if (chunked_) {
    phase_ = Phase::ChunkSize;
  } else if (content_length_.value_or(0) > 0) {
    phase_ = Phase::FixedBody;
    remaining_ = *content_length_;
  } else {
    phase_ = Phase::Done;
  }
  return true;
}

bool RequestFraming::end_chunk_size_line() {
  if (line_.size() < 2 || line_[line_.size() - 2] != '\r')
    return refuse(400, "Chunk-size lines must end with CRLF.");
  size_t digits = 0;
  int64_t size = 0;
  for (; digits < line_.size() && hex_value(line_[digits]) >= 0;
       ++digits)  // saturates far above any limit
    size = std::min<int64_t>(size * 16 + hex_value(line_[digits]), int64_t(1) << 56);
  const char after = line_[digits];  // the CR at worst
  if (digits == 0 || !(after == '\r' || after == ';' || space_or_tab(after)))
    return refuse(400,
                  "A chunk-size line must be a hexadecimal size (and extensions), got " +
                      printable(line_) + ".",
                  "invalid_chunked_body");
  if (size > max_body_bytes_ - body_bytes_)
    return refuse(413,
                  "The request body is larger than the server's limit of " +
                      std::to_string(max_body_bytes_) + " bytes.",
                  "request_too_large");
  body_bytes_ += size;
  line_.clear();
  if (size == 0) {
    phase_ = Phase::LastChunkEnd;
  } else {
    phase_ = Phase::ChunkData;
    remaining_ = size;
  }
  return true;
}

}  // namespace finmoe::serve
