// libFuzzer target: SafetensorsFile::open on arbitrary bytes. Anything but a
// finmoe::Error, or a file opened whose tensors do not tile the data buffer
// after the header, is a finding (an abort).
// Build and run: docs/RELIABILITY.md, "Sanitizers and libFuzzer".
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "finmoe/error.h"
#include "finmoe/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // an in-memory file, which open() maps as it maps one on disk
  static const int fd = memfd_create("fuzz.safetensors", 0);
  static const std::string path = "/proc/self/fd/" + std::to_string(fd);
  if (ftruncate(fd, 0) != 0 || pwrite(fd, data, size, 0) != ssize_t(size)) return 0;
  try {
    auto f = finmoe::SafetensorsFile::open(path);
    uint64_t header_len = 0;
    std::memcpy(&header_len, data, 8);  // open() succeeded: the file has the 8 bytes
    const uint8_t* next = f->mapped_data() + 8 + header_len;
    for (const auto& t : f->tensors()) {
      if (t.data != next) std::abort();  // a gap, an overlap, or a view outside the buffer
      next += t.nbytes;
      volatile uint8_t sum = 0;
      for (size_t i = 0; i < t.nbytes; ++i) sum = uint8_t(sum + t.data[i]);  // readable
    }
    if (next != f->mapped_data() + f->mapped_size()) std::abort();
  } catch (const finmoe::Error&) {
  }
  return 0;
}
