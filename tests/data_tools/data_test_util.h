#pragma once
// Helpers of the data-tools tests: fixture files, temporary directories and
// fake Debian packages built with dpkg-deb (no network).
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

#include "core/file_util.h"
#include "data/debian_package.h"
#include "finmoe/config.h"

namespace finmoe::datatest {

namespace fs = std::filesystem;

inline std::string fixture_path(const std::string& rel) {
  return std::string(FINMOE_TEST_DATA_DIR) + "/corpus/" + rel;
}

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << path;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline std::string fixture(const std::string& rel) { return read_file(fixture_path(rel)); }

// A fresh directory under the system temp dir, removed at the end of the scope.
class TempDir {
 public:
  explicit TempDir(const std::string& tag) {
    path_ = (fs::temp_directory_path() / ("finmoe-data-" + tag + "-" + std::to_string(::getpid()))).string();
    remove_tree(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { remove_tree(path_); }
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& rel) const { return path_ + "/" + rel; }

 private:
  std::string path_;
};

inline void write(const std::string& path, const std::string& bytes) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

// Builds CACHE/NAME_0.0-test_all.deb holding `files` (path in the package ->
// content; a path ending in ".gz" is gzipped).
inline void make_fake_deb(const std::string& cache, const std::string& name,
                          const std::map<std::string, std::string>& files) {
  const std::string root = cache + "/.build-" + name;
  remove_tree(root);
  write(root + "/DEBIAN/control", "Package: " + name +
                                      "\nVersion: 0.0-test\nArchitecture: all\nMaintainer: finmoe tests "
                                      "<tests@example.invalid>\nDescription: test fixture\n");
  for (const auto& [rel, content] : files) {
    const bool gz = rel.size() > 3 && rel.substr(rel.size() - 3) == ".gz";
    const std::string path = root + "/" + (gz ? rel.substr(0, rel.size() - 3) : rel);
    write(path, content);
    if (gz) {
      auto r = data::run_process({"gzip", "-n", path});
      ASSERT_EQ(r.status, 0) << r.output;
    }
  }
  fs::create_directories(cache);
  auto r = data::run_process({"dpkg-deb", "--root-owner-group", "-Zgzip", "-b", root,
                              cache + "/" + name + "_0.0-test_all.deb"});
  ASSERT_EQ(r.status, 0) << r.output;
  remove_tree(root);
}

// Lines of a JSONL file.
inline std::vector<std::string> lines_of(const std::string& path) {
  std::vector<std::string> out;
  std::ifstream in(path);
  for (std::string l; std::getline(in, l);)
    if (!l.empty()) out.push_back(l);
  return out;
}

}  // namespace finmoe::datatest
