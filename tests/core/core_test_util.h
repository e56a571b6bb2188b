#pragma once
// Helpers shared by the core tests: scratch directories, raw files, Python.
#include "core/file_util.h"
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace finmoe::test {

// A fresh directory per test, removed afterwards.
class ScratchDir {
 public:
  ScratchDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = std::string("finmoe-core-") + std::to_string(::getpid()) + "-" +
                       (info ? std::string(info->test_suite_name()) + "." + info->name() : "x");
    for (char& c : name)
      if (c == '/') c = '_';
    path_ = std::filesystem::temp_directory_path() / name;
    finmoe::remove_tree(path_.string());
    std::filesystem::create_directories(path_);
  }
  ~ScratchDir() {
    finmoe::remove_tree(path_.string());
  }
  std::string str() const { return path_.string(); }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }
  // File names in the directory, sorted.
  std::vector<std::string> list() const {
    std::vector<std::string> out;
    for (const auto& e : std::filesystem::directory_iterator(path_))
      out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }

 private:
  std::filesystem::path path_;
};

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
}

// 8-byte little-endian length + header text + data: a hand-made safetensors file.
inline std::string raw_safetensors(const std::string& header, const std::string& data = "",
                                   uint64_t header_len = UINT64_MAX) {
  if (header_len == UINT64_MAX) header_len = header.size();
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = char(uint8_t(header_len >> (8 * i)));
  return out + header + data;
}

// The interpreter in FINMOE_PYTHON if it can import `modules` (comma list), else "".
inline std::string python_with(const std::string& modules) {
  const char* py = std::getenv("FINMOE_PYTHON");
  if (py == nullptr || *py == '\0') return "";
  std::string cmd = std::string("'") + py + "' -c 'import " + modules + "' >/dev/null 2>&1";
  return std::system(cmd.c_str()) == 0 ? std::string(py) : std::string();
}

// Runs `script` with `python`, passing `args`; returns the exit status and
// appends stdout+stderr to `output`.
inline int run_python(const std::string& python, const std::string& script_path,
                      const std::string& args, std::string* output) {
  std::string out_path = script_path + ".out";
  std::string cmd = "'" + python + "' '" + script_path + "' " + args + " >'" + out_path + "' 2>&1";
  int rc = std::system(cmd.c_str());
  if (output) *output += read_bytes(out_path);
  return rc;
}

}  // namespace finmoe::test
