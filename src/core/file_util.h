#pragma once
// Internal file helpers of the core layer: atomic replacement of a file and
// errno-aware errors. Not part of the public API.
#include <cstdint>
#include <string>
#include <string_view>

namespace finmoe {

// Writes a file atomically: bytes go to a fresh `PATH.tmp-<pid>-<random>` in
// the same directory; commit() fsyncs it and renames it over PATH. If the
// object is destroyed without commit() (an exception, an early return), the
// temp file is removed and PATH is untouched.
//
// Write-behind: every kWriteBehindBytes written start the kernel's writeback
// of those bytes (sync_file_range, asynchronous), so a large file goes to the
// disk while the writer still produces it, and commit()'s fsync waits only
// for the tail. Without it the dirty pages of a checkpoint stay in memory
// until the fsync (Linux starts writeback at 10% of RAM dirty), which then
// writes the whole file while nothing else happens.
class AtomicFile {
 public:
  explicit AtomicFile(std::string path);  // creates the temp file; throws Error
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t n);  // throws Error naming PATH
  void write(std::string_view bytes) { write(bytes.data(), bytes.size()); }
  void commit();  // fsync + rename + fsync of the directory (best effort)

  const std::string& temp_path() const { return temp_path_; }

  static constexpr uint64_t kWriteBehindBytes = uint64_t(32) << 20;

 private:
  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
  bool committed_ = false;
  uint64_t written_ = 0;  // bytes written so far
  uint64_t flushed_ = 0;  // bytes whose writeback has been started
};

// `PATH.tmp-<pid>-<random hex>`: unique per process and call.
std::string temp_path_for(const std::string& path);

// Removes PATH and everything below it (no error when absent); returns false
// when something could not be removed. Used instead of
// std::filesystem::remove_all, which crashes when the process also loads a
// PyPI libtorch (it exports a broken copy of that libstdc++ function).
bool remove_tree(const std::string& path);

// "what PATH: strerror(errno)" for a failed system call.
[[noreturn]] void throw_errno(const std::string& what, const std::string& path);

}  // namespace finmoe
