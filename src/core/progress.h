#pragma once
// A progress line on stderr for long jobs (conversion, evaluation, training):
//   label  done/total unit  rate unit/s  ETA mm:ss  [status]
// On a terminal the line is redrawn in place (\r) at most ~5 times a second;
// otherwise (logs, pipes) a plain line is printed every few seconds.
// Not thread-safe: one owner calls update().
#include <chrono>
#include <cstdint>
#include <string>

namespace finmoe {

class Progress {
 public:
  // total <= 0: unknown, no ETA is shown.
  Progress(std::string label, int64_t total, std::string unit);
  ~Progress();  // calls finish() if it was not called
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  void update(int64_t done);  // cheap when throttled; `done` is cumulative
  // As update(done), with `status` (e.g. "loss 2.31 lr 3e-4") shown after the ETA.
  void update(int64_t done, std::string status);
  void finish();              // prints the final line and a newline, once
  // Prints `line` on its own line (above the progress line on a terminal).
  void message(const std::string& line);

  // The text of one line (no \r or newline); exposed for tests.
  static std::string format(const std::string& label, int64_t done, int64_t total,
                            const std::string& unit, double seconds,
                            const std::string& status = "");

 private:
  void print(bool final);

  using Clock = std::chrono::steady_clock;
  std::string label_;
  int64_t total_;
  std::string unit_;
  int64_t done_ = 0;
  std::string status_;
  bool tty_;
  bool finished_ = false;
  Clock::time_point start_;
  Clock::time_point last_print_;
  size_t last_len_ = 0;
};

}  // namespace finmoe
