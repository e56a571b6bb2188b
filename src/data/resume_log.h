#pragma once
// OUT.partial of a resumable data tool (selfqa, persona --url, refusal
// --model-url): one JSON line per finished unit of work, appended and
// flushed as each finishes, keyed by an integer field (the input line, the
// record index). A run stopped by an error or a signal continues with
// --resume, skipping the keys there; a line cut by the stop is dropped (that
// unit is redone). Internal to the data layer.
#include <cstdint>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <string>

#include <nlohmann/json.hpp>

namespace finmoe::data {

class ResumeLog {
 public:
  // Opens OUT.partial for appending. An existing one is an Error unless
  // `resume` (then its complete lines are read, `log` told of a cut one).
  ResumeLog(const std::string& out, std::string key_field, bool resume,
            const std::function<void(const std::string&)>& log = {});

  bool done(int64_t key) const { return done_.count(key) != 0; }
  int64_t resumed() const { return int64_t(done_.size()); }
  const std::string& path() const { return path_; }

  // Appends `line` (which holds key_field) and flushes; thread-safe.
  void append(const nlohmann::json& line);
  // Every line of the file by key (the earlier run's and this one's).
  std::map<int64_t, nlohmann::json> read_all();
  // Closes and deletes OUT.partial (after OUT is committed).
  void remove();

 private:
  std::string path_, key_;
  std::map<int64_t, bool> done_;  // keys finished in an earlier run
  std::ofstream file_;            // guarded by mu_
  std::mutex mu_;
};

}  // namespace finmoe::data
