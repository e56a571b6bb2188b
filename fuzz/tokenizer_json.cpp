// libFuzzer target: tokenizer.json text through Tokenizer::from_file, then an
// encode and decode of a fixed text. Anything but a finmoe::Error is a finding.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <string>

#include "finmoe/error.h"
#include "finmoe/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const int fd = memfd_create("tokenizer.json", 0);
  static const std::string path = "/proc/self/fd/" + std::to_string(fd);
  if (ftruncate(fd, 0) != 0 || pwrite(fd, data, size, 0) != ssize_t(size)) return 0;
  try {
    const finmoe::Tokenizer tok = finmoe::Tokenizer::from_file(path);
    const auto ids =
        tok.encode("Debit 1,250.00 EUR <s> caf\xC3\xA9 \xE4\xB8\xAD\xE6\x96\x87\n", true);
    for (int32_t id : ids)
      if (id < 0) std::abort();
    (void)tok.decode(ids);
    (void)tok.decode(ids, true);
  } catch (const finmoe::Error&) {
  }
  return 0;
}
