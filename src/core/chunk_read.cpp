#include "core/chunk_read.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <vector>

#include "core/file_util.h"
#include "finmoe/error.h"

namespace finmoe {

std::unique_ptr<ChunkFile> ChunkFile::open(const std::string& path, bool direct) {
  const int fd = ::open(path.c_str(), O_RDONLY | (direct ? O_DIRECT : 0) | O_CLOEXEC);
  if (fd < 0) {
    if (direct && errno == EINVAL) return nullptr;  // the file system has no O_DIRECT
    throw_errno("cannot open", path);
  }
  std::unique_ptr<ChunkFile> f(new ChunkFile());
  f->path_ = path;
  f->fd_ = fd;
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw_errno("cannot stat", path);
  f->size_ = uint64_t(st.st_size);
  if (!direct) {
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);  // a larger readahead window
  } else if (f->size_ > 0) {  // some file systems accept the flag and fail the reads
    AlignedBuffer probe = aligned_buffer(kAlign);
    if (::pread(fd, probe.get(), kAlign, 0) < 0) {
      if (errno == EINVAL) return nullptr;
      throw_errno("cannot read", path);
    }
  }
  return f;
}

ChunkFile::~ChunkFile() {
  if (fd_ >= 0) ::close(fd_);
}

size_t ChunkFile::span(uint64_t offset, size_t size) {
  const uint64_t first = offset & ~uint64_t(kAlign - 1);
  const uint64_t end = (offset + size + kAlign - 1) & ~uint64_t(kAlign - 1);
  return size_t(end - first);
}

const uint8_t* ChunkFile::read(uint64_t offset, size_t size, uint8_t* buffer) const {
  if (offset + size > size_)
    throw Error("cannot read bytes [" + std::to_string(offset) + ", " +
                std::to_string(offset + size) + ") of " + path_ + ": the file has " +
                std::to_string(size_));
  const uint64_t first = offset & ~uint64_t(kAlign - 1);
  const size_t want = span(offset, size);
  const size_t need = size_t(offset + size - first);  // the last block may pass the end
  size_t got = 0;
  while (got < need) {
    const ssize_t r = ::pread(fd_, buffer + got, want - got, off_t(first + got));
    if (r < 0) {
      if (errno == EINTR) continue;
      throw_errno("cannot read", path_);
    }
    if (r == 0) break;  // the file's end
    got += size_t(r);
  }
  if (got < need)
    throw Error("cannot read bytes [" + std::to_string(offset) + ", " +
                std::to_string(offset + size) + ") of " + path_ + ": short read");
  return buffer + (offset - first);
}

void AlignedFree::operator()(uint8_t* p) const { std::free(p); }

AlignedBuffer aligned_buffer(size_t bytes) {
  const size_t n = (bytes + ChunkFile::kAlign - 1) & ~(ChunkFile::kAlign - 1);
  void* p = std::aligned_alloc(ChunkFile::kAlign, n == 0 ? ChunkFile::kAlign : n);
  if (!p) throw Error("cannot allocate " + std::to_string(n) + " bytes for reading");
  return AlignedBuffer(static_cast<uint8_t*>(p));
}

ChunkReadQueue::ChunkReadQueue(std::vector<Chunk> chunks, int slots, int threads)
    : chunks_(std::move(chunks)),
      slots_(size_t(std::max(1, slots))),
      ready_(chunks_.size(), 0),
      at_(chunks_.size()) {
  for (const Chunk& c : chunks_) {
    size_t bytes = 0;
    for (const Read& r : c) bytes += ChunkFile::span(r.offset, r.size);
    slot_bytes_ = std::max(slot_bytes_, bytes);
  }
  const size_t used = std::min(slots_, chunks_.size());
  for (size_t s = 0; s < used; ++s) buffers_.push_back(aligned_buffer(slot_bytes_));
  const int n = int(std::min<size_t>(size_t(std::max(1, threads)), chunks_.size()));
  for (int t = 0; t < n; ++t) threads_.emplace_back([this] { reader(); });
}

ChunkReadQueue::~ChunkReadQueue() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (std::thread& t : threads_) t.join();
}

void ChunkReadQueue::reader() {
  for (;;) {
    size_t c = 0;
    {
      std::unique_lock<std::mutex> lock(mu_);
      // chunk c goes into slot c % slots_, free once chunk c - slots_ is done
      cv_.wait(lock, [&] {
        return stop_ || next_ >= chunks_.size() || next_ < released_ + slots_;
      });
      if (stop_ || next_ >= chunks_.size()) return;
      c = next_++;
    }
    std::vector<const uint8_t*> at;
    std::exception_ptr error;
    try {
      uint8_t* buffer = buffers_[c % slots_].get();
      for (const Read& r : chunks_[c]) {
        at.push_back(r.file->read(r.offset, r.size, buffer));
        buffer += ChunkFile::span(r.offset, r.size);
      }
    } catch (...) {
      error = std::current_exception();
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (error && !error_) error_ = error;
      at_[c] = std::move(at);
      ready_[c] = error ? 2 : 1;
    }
    cv_.notify_all();
  }
}

const std::vector<const uint8_t*>& ChunkReadQueue::wait(size_t c) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return ready_[c] != 0 || error_ != nullptr; });
  if (ready_[c] != 1) std::rethrow_exception(error_);  // this chunk or one after it failed
  return at_[c];
}

void ChunkReadQueue::done(size_t c) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    released_ = std::max(released_, c + 1);
  }
  cv_.notify_all();
}

double resident_fraction(const void* data, size_t size, int samples) {
  if (size == 0 || samples <= 0) return 0.0;
  static const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
  const uintptr_t first = uintptr_t(data) & ~(page - 1);
  const size_t pages = (uintptr_t(data) + size - first + page - 1) / page;
  const size_t n = std::min(pages, size_t(samples));
  size_t in = 0;
  for (size_t i = 0; i < n; ++i) {
    unsigned char v = 0;
    const uintptr_t at = first + (i * pages / n) * page;
    if (::mincore(reinterpret_cast<void*>(at), page, &v) == 0) in += v & 1;
  }
  return double(in) / double(n);
}

}  // namespace finmoe
