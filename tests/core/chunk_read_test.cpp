// Reads past the page cache (core/chunk_read.h): unaligned ranges land where
// read() says with the file's bytes, the read-ahead queue hands chunks over in
// order through fewer slots than chunks, and errors name the file.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "core/chunk_read.h"
#include "core/file_util.h"
#include "finmoe/error.h"

namespace finmoe {
namespace {

namespace fs = std::filesystem;

// A file of `n` pseudo-random bytes in the build directory (a disk file
// system, where /tmp may be a tmpfs without O_DIRECT); removed afterwards.
class DataFile {
 public:
  explicit DataFile(size_t n) : bytes_(n) {
    std::mt19937 g(7);
    for (auto& b : bytes_) b = uint8_t(g());
    dir_ = fs::path(FINMOE_BINARY_DIR) / ("direct-read-test-" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    path_ = (dir_ / "data.bin").string();
    std::ofstream(path_, std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes_.data()), std::streamsize(n));
  }
  ~DataFile() { remove_tree(dir_.string()); }
  const std::string& path() const { return path_; }
  const std::vector<uint8_t>& bytes() const { return bytes_; }

 private:
  std::vector<uint8_t> bytes_;
  fs::path dir_;
  std::string path_;
};

#define OPEN_OR_SKIP(var, path, direct)                                      \
  std::unique_ptr<ChunkFile> var = ChunkFile::open(path, direct);           \
  if (!var) GTEST_SKIP() << "the build directory's file system has no O_DIRECT"

class ChunkFileModes : public ::testing::TestWithParam<bool> {};  // direct or not

TEST_P(ChunkFileModes, UnalignedRangesReadTheFilesBytes) {
  const DataFile data(3 * ChunkFile::kAlign + 1234);  // the last block is partial
  OPEN_OR_SKIP(f, data.path(), GetParam());
  EXPECT_EQ(f->size(), data.bytes().size());
  std::mt19937 g(1);
  for (int i = 0; i < 200; ++i) {
    const size_t offset = g() % data.bytes().size();
    const size_t size = g() % (data.bytes().size() - offset + 1);
    AlignedBuffer buf = aligned_buffer(ChunkFile::span(offset, size));
    const uint8_t* at = f->read(offset, size, buf.get());
    ASSERT_EQ(0, std::memcmp(at, data.bytes().data() + offset, size)) << offset << "+" << size;
  }
  AlignedBuffer buf = aligned_buffer(2 * ChunkFile::kAlign);
  try {
    f->read(data.bytes().size() - 10, 11, buf.get());
    FAIL() << "a range past the end was read";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(data.path()), std::string::npos) << e.what();
  }
}

TEST_P(ChunkFileModes, TheQueueHandsChunksOverInOrderThroughFewerSlots) {
  const DataFile data(1 << 20);
  OPEN_OR_SKIP(f, data.path(), GetParam());
  std::mt19937 g(2);
  std::vector<ChunkReadQueue::Chunk> chunks(64);
  for (auto& c : chunks)
    for (int r = 0; r < 3; ++r) {
      const size_t offset = g() % (data.bytes().size() - 1);
      c.push_back({f.get(), offset, 1 + g() % std::min<size_t>(50000, data.bytes().size() - offset - 1)});
    }
  for (int threads : {1, 4}) {
    ChunkReadQueue q(chunks, /*slots=*/3, threads);
    ASSERT_EQ(q.size(), chunks.size());
    for (size_t c = 0; c < chunks.size(); ++c) {
      const std::vector<const uint8_t*>& at = q.wait(c);
      ASSERT_EQ(at.size(), chunks[c].size());
      for (size_t r = 0; r < at.size(); ++r)
        ASSERT_EQ(0, std::memcmp(at[r], data.bytes().data() + chunks[c][r].offset,
                                 chunks[c][r].size))
            << "chunk " << c << " read " << r << ", " << threads << " threads";
      q.done(c);
    }
  }
  ChunkReadQueue abandoned(chunks, 2, 4);  // destroyed with readers waiting for slots
  abandoned.wait(0);
}

TEST_P(ChunkFileModes, ChunksHeldTogetherNeverShareABuffer) {
  const DataFile data(1 << 20);
  OPEN_OR_SKIP(f, data.path(), GetParam());
  std::vector<ChunkReadQueue::Chunk> chunks;
  for (size_t c = 0; c < 40; ++c) chunks.push_back({{f.get(), c * 8192 + 100, 5000}});
  ChunkReadQueue q(chunks, /*slots=*/4, /*threads=*/3);
  // consumed in groups of 4, the most it may hold: a group's chunks lie in
  // 4 different buffers, and each still holds its own bytes when the group
  // is checked (a buffer handed out twice would hold the later chunk's)
  for (size_t first = 0; first < chunks.size(); first += 4) {
    std::vector<const uint8_t*> held;
    for (size_t c = first; c < first + 4; ++c) held.push_back(q.wait(c)[0]);
    for (size_t i = 0; i < held.size(); ++i) {
      ASSERT_EQ(0, std::memcmp(held[i], data.bytes().data() + chunks[first + i][0].offset, 5000))
          << "chunk " << first + i;
      for (size_t j = 0; j < i; ++j) EXPECT_GE(std::abs(held[i] - held[j]), 5000) << first + i;
    }
    for (size_t c = first; c < first + 4; ++c) {
      q.done(c);
      q.done(c);  // a second done() changes nothing
    }
  }
}

TEST_P(ChunkFileModes, AReadersErrorReachesTheConsumerNamingTheFile) {
  const DataFile data(100000);
  OPEN_OR_SKIP(f, data.path(), GetParam());
  std::vector<ChunkReadQueue::Chunk> chunks = {{{f.get(), 0, 100}}, {{f.get(), 99990, 20}}};
  ChunkReadQueue q(chunks, 2, 2);
  try {
    q.wait(0);
    q.done(0);
    q.wait(1);
    FAIL() << "a read past the end succeeded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(data.path()), std::string::npos) << e.what();
  }
}

INSTANTIATE_TEST_SUITE_P(CacheOrDirect, ChunkFileModes, ::testing::Values(false, true),
                         [](const auto& p) { return p.param ? "Direct" : "PageCache"; });

TEST(ChunkFile, AMissingFileIsNamed) {
  try {
    ChunkFile::open("/nonexistent/finmoe-chunk-read", false);
    FAIL() << "opened a missing file";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/finmoe-chunk-read"), std::string::npos);
  }
}

TEST(ResidentFraction, CountsCachedPagesOfAFileMapping) {
  const DataFile data(64 * ChunkFile::kAlign);
  const int fd = ::open(data.path().c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  ::fdatasync(fd);
  void* map = ::mmap(nullptr, data.bytes().size(), PROT_READ, MAP_SHARED, fd, 0);
  ASSERT_NE(map, MAP_FAILED);
  volatile uint8_t sink = 0;  // read every page: all cached
  for (size_t i = 0; i < data.bytes().size(); i += ChunkFile::kAlign)
    sink = sink + static_cast<uint8_t*>(map)[i];
  EXPECT_EQ(resident_fraction(map, data.bytes().size(), 64), 1.0);
  EXPECT_EQ(resident_fraction(map, data.bytes().size(), 5), 1.0);
  EXPECT_EQ(resident_fraction(map, 0, 5), 0.0);
  ::munmap(map, data.bytes().size());
  // dropped (clean and no longer mapped): none or nearly none cached
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  map = ::mmap(nullptr, data.bytes().size(), PROT_READ, MAP_SHARED, fd, 0);
  ASSERT_NE(map, MAP_FAILED);
  EXPECT_LE(resident_fraction(map, data.bytes().size(), 64), 0.25);
  ::munmap(map, data.bytes().size());
  ::close(fd);
}

}  // namespace
}  // namespace finmoe
