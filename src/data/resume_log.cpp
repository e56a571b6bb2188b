// OUT.partial of the resumable data tools (data/resume_log.h).
#include "data/resume_log.h"

#include <sys/stat.h>

#include <cstdio>
#include <vector>

#include "finmoe/config.h"
#include "finmoe/error.h"

namespace finmoe::data {

ResumeLog::ResumeLog(const std::string& out, std::string key_field, bool resume,
                     const std::function<void(const std::string&)>& log)
    : path_(out + ".partial"), key_(std::move(key_field)) {
  struct stat st {};
  if (::stat(path_.c_str(), &st) == 0) {
    if (!resume)
      throw Error(path_ +
                  " exists: an earlier run stopped before the end; --resume continues it (or "
                  "remove it)");
    std::ifstream p(path_);
    std::string line;
    int64_t n = 0;
    std::vector<std::string> good;
    while (std::getline(p, line)) {
      ++n;
      try {
        const auto j = parse_json(line, path_ + ":" + std::to_string(n));
        done_[j.at(key_).get<int64_t>()] = true;
        good.push_back(line);
      } catch (const std::exception&) {
        if (log)
          log(path_ + ":" + std::to_string(n) + ": incomplete line dropped; that work is redone");
      }
    }
    // rewritten without the cut line so that appends start on a line of their own
    std::string all;
    for (const auto& g : good) all += g + "\n";
    write_file_atomic(path_, all);
  }
  file_.open(path_, std::ios::app | std::ios::binary);
  if (!file_) throw Error(path_ + ": cannot open for appending");
}

void ResumeLog::append(const nlohmann::json& line) {
  const std::string s = line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  std::lock_guard<std::mutex> lock(mu_);
  file_ << s << "\n";
  file_.flush();
  if (!file_) throw Error(path_ + ": write failed");
}

std::map<int64_t, nlohmann::json> ResumeLog::read_all() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    file_.flush();
  }
  std::map<int64_t, nlohmann::json> out;
  std::ifstream p(path_);
  std::string line;
  int64_t n = 0;
  while (std::getline(p, line)) {
    auto j = parse_json(line, path_ + ":" + std::to_string(++n));
    const int64_t k = j.at(key_).get<int64_t>();
    out[k] = std::move(j);
  }
  return out;
}

void ResumeLog::remove() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    file_.close();
  }
  std::remove(path_.c_str());
}

}  // namespace finmoe::data
