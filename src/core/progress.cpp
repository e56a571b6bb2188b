#include "core/progress.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>

namespace finmoe {

namespace {

std::string mmss(double seconds) {
  // unknown, or beyond a readable clock (and beyond lround's range)
  if (!std::isfinite(seconds) || seconds < 0 || seconds >= 1e9) return "--:--";
  long s = std::lround(seconds);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof(buf), "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
  else
    std::snprintf(buf, sizeof(buf), "%02ld:%02ld", s / 60, s % 60);
  return buf;
}

std::string rate_text(double rate) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), rate >= 100 ? "%.0f" : rate >= 10 ? "%.1f" : "%.2f", rate);
  return buf;
}

}  // namespace

Progress::Progress(std::string label, int64_t total, std::string unit)
    : label_(std::move(label)),
      total_(total),
      unit_(std::move(unit)),
      tty_(::isatty(STDERR_FILENO) == 1),
      start_(Clock::now()),
      last_print_(start_) {}

Progress::~Progress() {
  if (!finished_) finish();
}

std::string Progress::format(const std::string& label, int64_t done, int64_t total,
                             const std::string& unit, double seconds, const std::string& status) {
  const double rate = seconds > 0 ? double(done) / seconds : 0.0;
  std::string s = label;
  s.append("  ").append(std::to_string(done));
  if (total > 0) s.append("/").append(std::to_string(total));
  s.append(" ").append(unit).append("  ").append(rate_text(rate));
  s.append(" ").append(unit).append("/s");
  if (total > 0) {
    double eta = rate > 0 ? double(total - done) / rate : NAN;
    s += "  ETA ";
    s += mmss(done >= total ? 0.0 : eta);
  }
  if (!status.empty()) s.append("  ").append(status);
  return s;
}

void Progress::update(int64_t done) {
  done_ = done;
  auto now = Clock::now();
  // ~5 redraws a second on a terminal; a line every 5 s in a log.
  auto interval = tty_ ? std::chrono::milliseconds(200) : std::chrono::milliseconds(5000);
  if (now - last_print_ < interval) return;
  last_print_ = now;
  print(false);
}

void Progress::update(int64_t done, std::string status) {
  status_ = std::move(status);
  update(done);
}

void Progress::message(const std::string& line) {
  if (tty_ && last_len_ > 0) {
    // clear the progress line, print the message, redraw below it
    std::fprintf(stderr, "\r%s\r%s\n", std::string(last_len_, ' ').c_str(), line.c_str());
    last_len_ = 0;
    if (!finished_) print(false);
  } else {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
  std::fflush(stderr);
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  print(true);
}

void Progress::print(bool final) {
  double seconds = std::chrono::duration<double>(Clock::now() - start_).count();
  std::string line = format(label_, done_, total_, unit_, seconds, status_);
  if (tty_) {
    // Pad over the previous, possibly longer, line.
    std::string pad(last_len_ > line.size() ? last_len_ - line.size() : 0, ' ');
    last_len_ = line.size();
    std::fprintf(stderr, "\r%s%s%s", line.c_str(), pad.c_str(), final ? "\n" : "");
  } else {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
  std::fflush(stderr);
}

}  // namespace finmoe
