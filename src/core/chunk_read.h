#pragma once
// Internal to finmoe: reading large files chunk by chunk into buffers, ahead
// of the code that consumes them, by reader threads. For jobs that read every
// byte of large inputs once (merging checkpoints): from the disk, a few
// threads each with a sequential pread stream keep the device busier than
// page faults on a mapping, and the consumer never blocks in a fault.
// Optionally past the page cache (O_DIRECT). Not part of the public API.
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace finmoe {

// A file opened for chunk reads. Safe to read from several threads at once.
class ChunkFile {
 public:
  // Reads start and end on multiples of this and land in buffers aligned to
  // it (the page size: a multiple of every common logical block size, as
  // O_DIRECT needs).
  static constexpr size_t kAlign = 4096;

  // Opens PATH for reads through the page cache (sequential readahead
  // advised), or with `direct` past it (O_DIRECT); nullptr when `direct` and
  // its file system does not take O_DIRECT reads (tmpfs, some network and
  // FUSE file systems). Throws Error naming PATH when it cannot be opened.
  static std::unique_ptr<ChunkFile> open(const std::string& path, bool direct);
  ~ChunkFile();
  ChunkFile(const ChunkFile&) = delete;
  ChunkFile& operator=(const ChunkFile&) = delete;

  const std::string& path() const { return path_; }
  uint64_t size() const { return size_; }

  // The bytes a buffer must hold to read [offset, offset + size): the range
  // widened to kAlign boundaries.
  static size_t span(uint64_t offset, size_t size);
  // Reads [offset, offset + size) into `buffer` (kAlign-aligned, at least
  // span(offset, size) bytes) and returns where the range's first byte landed
  // in it. Throws Error naming the file on an I/O error or a range past its end.
  const uint8_t* read(uint64_t offset, size_t size, uint8_t* buffer) const;

 private:
  ChunkFile() = default;
  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

// A kAlign-aligned heap buffer.
struct AlignedFree {
  void operator()(uint8_t* p) const;
};
using AlignedBuffer = std::unique_ptr<uint8_t[], AlignedFree>;
AlignedBuffer aligned_buffer(size_t bytes);

// A sequence of chunks read ahead of their consumer by reader threads, in
// order, into a ring of `slots` buffers: a job reading chunk after chunk of
// large files keeps several requests in flight while it works on the chunks
// before, and holds `slots` chunks in memory, not the files. The consumer
// calls wait(c) then done(c) for c = 0, 1, 2, ...; one consumer thread.
class ChunkReadQueue {
 public:
  struct Read {
    const ChunkFile* file = nullptr;  // outlives the queue
    uint64_t offset = 0;
    size_t size = 0;
  };
  using Chunk = std::vector<Read>;  // read together into one slot

  ChunkReadQueue(std::vector<Chunk> chunks, int slots, int threads);
  ~ChunkReadQueue();  // stops the readers (unread chunks are dropped)
  ChunkReadQueue(const ChunkReadQueue&) = delete;
  ChunkReadQueue& operator=(const ChunkReadQueue&) = delete;

  size_t size() const { return chunks_.size(); }
  // Blocks until chunk c is read; where each of its reads' first byte lies,
  // valid until done(c). Rethrows a reader's Error (naming the file).
  const std::vector<const uint8_t*>& wait(size_t c);
  // Chunk c is used: its slot takes the chunk `slots` later.
  void done(size_t c);

 private:
  void reader();

  const std::vector<Chunk> chunks_;
  const size_t slots_;
  size_t slot_bytes_ = 0;
  std::vector<AlignedBuffer> buffers_;  // one per slot
  std::mutex mu_;
  std::condition_variable cv_;
  // guarded by mu_:
  size_t next_ = 0;                             // the next chunk a reader takes
  size_t released_ = 0;                         // chunks [0, released_) are done
  std::vector<char> ready_;                     // per chunk: 1 read, 2 failed
  std::vector<std::vector<const uint8_t*>> at_;  // per chunk, once ready
  std::exception_ptr error_;                    // the first reader's failure
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

// The fraction of [data, data + size) of a file mapping in the page cache
// now, estimated from at most `samples` pages spread evenly over it (one
// mincore call each: a whole 3 GB mapping takes tens of milliseconds).
double resident_fraction(const void* data, size_t size, int samples);

}  // namespace finmoe
