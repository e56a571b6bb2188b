#pragma once
// CPython's `random.Random`: MT19937 seeded by init_by_array from an integer,
// getrandbits, _randbelow and `sample` exactly as Python 3 computes them, so
// the few-shot examples lm-eval's default sampler draws (Random(seed).sample
// per document, in document order) are the ones finmoe draws.
#include <cstdint>
#include <vector>

namespace finmoe::eval {

class PyRandom {
 public:
  explicit PyRandom(uint64_t seed);
  uint32_t genrand_uint32();
  uint32_t getrandbits(int k);     // 1 <= k <= 32
  uint64_t randbelow(uint64_t n);  // [0, n), n in [1, 2^32]
  // random.sample(range(n), k): indices into a population of n
  std::vector<uint64_t> sample(uint64_t n, uint64_t k);

 private:
  uint32_t mt_[624];
  int mti_ = 625;
};

}  // namespace finmoe::eval
