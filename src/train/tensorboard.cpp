// TensorBoard event files: CRC-32C, TFRecord framing, hand-encoded Event
// messages (see tensorboard.h for the layout).
#include "train/tensorboard.h"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <system_error>

namespace finmoe::tensorboard {

namespace fs = std::filesystem;

namespace {

constexpr std::array<uint32_t, 256> make_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    t[i] = c;
  }
  return t;
}
constexpr std::array<uint32_t, 256> kTable = make_table();

void put_le(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out += char((v >> (8 * i)) & 0xff);
}

// Protocol buffers' base-128 varint (a negative int64 takes ten bytes).
void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out += char((v & 0x7f) | 0x80);
    v >>= 7;
  }
  out += char(v);
}

enum Wire : uint32_t { kVarint = 0, kFixed64 = 1, kBytes = 2, kFixed32 = 5 };

void put_key(std::string& out, uint32_t field, Wire wire) { put_varint(out, (field << 3) | wire); }

void put_bytes(std::string& out, uint32_t field, std::string_view data) {
  put_key(out, field, kBytes);
  put_varint(out, data.size());
  out += data;
}

// Event fields 1 (wall_time) and 2 (step).
std::string event_head(double wall_time, int64_t step) {
  std::string e;
  uint64_t bits;
  std::memcpy(&bits, &wall_time, sizeof bits);
  put_key(e, 1, kFixed64);
  put_le(e, bits, 8);
  if (step != 0) {  // proto3 leaves a zero out
    put_key(e, 2, kVarint);
    put_varint(e, uint64_t(step));
  }
  return e;
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string host_name() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0 || !buf[0]) return "localhost";
  std::string h = buf;
  for (char& c : h)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.') c = '_';
  return h;
}

}  // namespace

uint32_t crc32c(std::string_view data, uint32_t crc) {
  crc = ~crc;
  for (unsigned char b : data) crc = kTable[(crc ^ b) & 0xff] ^ (crc >> 8);
  return ~crc;
}

uint32_t masked_crc32c(std::string_view data) {
  const uint32_t c = crc32c(data);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

std::string tfrecord(std::string_view data) {
  std::string r;
  put_le(r, data.size(), 8);
  put_le(r, masked_crc32c(r), 4);
  r += data;
  put_le(r, masked_crc32c(data), 4);
  return r;
}

std::string file_version_event(double wall_time) {
  std::string e = event_head(wall_time, 0);
  put_bytes(e, 3, "brain.Event:2");
  return e;
}

std::string session_start_event(double wall_time, int64_t step) {
  std::string log;
  put_key(log, 1, kVarint);  // status
  put_varint(log, 1);        // START
  std::string e = event_head(wall_time, step);
  put_bytes(e, 7, log);
  return e;
}

std::string scalars_event(double wall_time, int64_t step,
                          const std::vector<std::pair<std::string, float>>& values) {
  std::string summary;
  for (const auto& [tag, v] : values) {
    std::string value;
    put_bytes(value, 1, tag);
    put_key(value, 2, kFixed32);
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    put_le(value, bits, 4);
    put_bytes(summary, 1, value);
  }
  std::string e = event_head(wall_time, step);
  put_bytes(e, 5, summary);
  return e;
}

EventWriter::EventWriter(const std::string& dir, int64_t first_step) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    fail("cannot create " + dir + ": " + ec.message());
    return;
  }
  // after every event file already there: TensorBoard reads them in name order
  const double now = now_seconds();
  int64_t secs = int64_t(now);
  const std::string prefix = "events.out.tfevents.";
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename().string();
    if (!n.starts_with(prefix)) continue;
    try {
      secs = std::max<int64_t>(secs, std::stoll(n.substr(prefix.size())) + 1);
    } catch (const std::exception&) {
    }
  }
  path_ = (fs::path(dir) / (prefix + std::to_string(secs) + "." + host_name() + "." +
                            std::to_string(::getpid())))
              .string();
  file_ = std::fopen(path_.c_str(), "wb");
  if (!file_) {
    fail("cannot create " + path_ + ": " + std::strerror(errno));
    return;
  }
  pending_ += tfrecord(file_version_event(now));
  pending_ += tfrecord(session_start_event(now, first_step));
  flush();
}

EventWriter::~EventWriter() {
  flush();
  if (file_) std::fclose(file_);
}

void EventWriter::scalars(int64_t step, const std::vector<std::pair<std::string, double>>& values) {
  if (!file_) return;
  std::vector<std::pair<std::string, float>> v;
  v.reserve(values.size());
  for (const auto& [tag, x] : values) v.emplace_back(tag, float(x));
  pending_ += tfrecord(scalars_event(now_seconds(), step, v));
}

void EventWriter::flush() {
  if (!file_ || pending_.empty()) return;
  if (std::fwrite(pending_.data(), 1, pending_.size(), file_) != pending_.size() ||
      std::fflush(file_) != 0) {
    fail("cannot write " + path_ + ": " + std::strerror(errno));
    return;
  }
  pending_.clear();
}

void EventWriter::fail(const std::string& what) {
  std::cerr << "warning: TensorBoard events: " << what << "; training goes on without them"
            << std::endl;
  if (file_) std::fclose(file_);
  file_ = nullptr;
  pending_.clear();
}

}  // namespace finmoe::tensorboard
