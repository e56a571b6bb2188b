#include "core/file_util.h"

#include <fcntl.h>
#include <ftw.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>

#include "finmoe/config.h"
#include "finmoe/error.h"

namespace finmoe {

void throw_errno(const std::string& what, const std::string& path) {
  throw Error(what + " " + path + ": " + std::strerror(errno));
}

std::string temp_path_for(const std::string& path) {
  // A per-process random base plus a counter: unique across threads and
  // processes writing into the same directory.
  static const uint64_t base = std::random_device{}() ^ (uint64_t(std::random_device{}()) << 32);
  static std::atomic<uint64_t> counter{0};
  char suffix[64];
  std::snprintf(suffix, sizeof(suffix), ".tmp-%d-%016llx", int(::getpid()),
                static_cast<unsigned long long>(base + counter.fetch_add(1)));
  return path + suffix;
}

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  for (int attempt = 0; attempt < 8 && fd_ < 0; ++attempt) {
    temp_path_ = temp_path_for(path_);
    fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd_ < 0 && errno != EEXIST) throw_errno("cannot create temporary file for", path_);
  }
  if (fd_ < 0) throw_errno("cannot create temporary file for", path_);
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(temp_path_.c_str());
}

void AtomicFile::write(const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    // Linux writes at most ~2 GiB per call.
    ssize_t w = ::write(fd_, p, std::min<size_t>(n, size_t(1) << 30));
    if (w < 0) {
      if (errno == EINTR) continue;
      throw_errno("cannot write", path_);
    }
    p += w;
    n -= size_t(w);
    written_ += uint64_t(w);
  }
  if (written_ - flushed_ >= kWriteBehindBytes) {
    // A hint: a file system without it (EINVAL, ESPIPE) leaves all to fsync.
    ::sync_file_range(fd_, off64_t(flushed_), off64_t(written_ - flushed_), SYNC_FILE_RANGE_WRITE);
    flushed_ = written_;
  }
}

void AtomicFile::commit() {
  if (::fsync(fd_) != 0) throw_errno("cannot fsync", path_);
  int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) throw_errno("cannot close", path_);
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) throw_errno("cannot rename onto", path_);
  committed_ = true;
  // Make the rename itself durable; failure here does not undo the write.
  std::string dir = std::filesystem::path(path_).parent_path().string();
  int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

void write_file_atomic(const std::string& path, std::string_view bytes) {
  AtomicFile f(path);
  f.write(bytes);
  f.commit();
}

bool remove_tree(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return errno == ENOENT;
  // depth-first (FTW_DEPTH), not following symlinks (FTW_PHYS)
  auto remove_one = [](const char* p, const struct stat*, int, struct FTW*) -> int {
    return ::remove(p) == 0 || errno == ENOENT ? 0 : -1;
  };
  return ::nftw(path.c_str(), remove_one, 16, FTW_DEPTH | FTW_PHYS) == 0;
}

}  // namespace finmoe
