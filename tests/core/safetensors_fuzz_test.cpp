// Randomized corruption: any mutation of a valid file either opens with
// its tensors tiling the data buffer, or throws finmoe::Error. Fixed seed.
// Character-level header edits here; structure-aware ones (tests/fuzz_mutations.h)
// too, and through load_model and the CLI in tests/fuzz/file_fuzz_test.cpp.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "../fuzz_mutations.h"
#include "core_test_util.h"
#include "finmoe/error.h"
#include "finmoe/safetensors.h"

namespace finmoe {
namespace {

using test::ScratchDir;

std::string valid_file(const ScratchDir& dir) {
  std::vector<float> a(12);
  for (size_t i = 0; i < a.size(); ++i) a[i] = float(i);
  std::vector<uint16_t> b = {1, 2, 3};
  std::vector<int64_t> c = {7, -7};
  std::vector<uint8_t> d = {1, 0, 1, 1};
  write_safetensors(dir / "valid.safetensors",
                    {{"model.a.weight", DType::F32, {3, 4}, a.data(), 48},
                     {"b", DType::BF16, {3}, b.data(), 6},
                     {"empty", DType::F16, {0, 5}, nullptr, 0},
                     {"c", DType::I64, {2, 1}, c.data(), 16},
                     {"d", DType::BOOL, {4}, d.data(), 4}},
                    {{"format", "pt"}});
  return test::read_bytes(dir / "valid.safetensors");
}

// One random edit of the header text: digits, structure characters, numbers.
void mutate_json(std::string& h, std::mt19937_64& rng) {
  if (h.empty()) return;
  static const char* tokens[] = {"0", "9", "-1", "18446744073709551615", "1e309", "null", "[",
                                 "]", "{", "}", ",", ":", "\"", "\\", "\"F64\"", "\"BF16\"",
                                 "[]", "[0,0]", "99999999999999999999999", "true", " "};
  size_t p = rng() % h.size();
  switch (rng() % 4) {
    case 0:  // replace one character
      h[p] = tokens[rng() % std::size(tokens)][0];
      break;
    case 1:  // delete a run
      h.erase(p, rng() % 4 + 1);
      break;
    case 2:  // insert a token
      h.insert(p, tokens[rng() % std::size(tokens)]);
      break;
    default:  // change the next digit
      for (size_t i = p; i < h.size(); ++i)
        if (std::isdigit(uint8_t(h[i]))) {
          h[i] = char('0' + rng() % 10);
          break;
        }
  }
}

TEST(SafetensorsFuzz, RandomCorruptionsOpenCleanlyOrThrowError) {
  ScratchDir dir;
  const std::string valid = valid_file(dir);
  uint64_t header_len = 0;
  std::memcpy(&header_len, valid.data(), 8);
  const size_t header_end = 8 + size_t(header_len);

  std::mt19937_64 rng(20240611);
  const std::string path = dir / "mutant.safetensors";
  int opened = 0, rejected = 0;
  const int kIterations = 4000;
  for (int it = 0; it < kIterations; ++it) {
    std::string s = valid;
    const int kind = int(rng() % 6);
    const int edits = 1 + int(rng() % 3);
    if (kind >= 3) {  // JSON edits, with a length field that matches the new header
      std::string header = s.substr(8, header_len);
      std::string data = s.substr(8 + header_len);
      if (kind == 5)  // a value of the tree: an extreme number, another type, a deep nest
        header = test::fuzz::mutate_json(nlohmann::ordered_json::parse(header), rng,
                                         {"dtype", "shape", "data_offsets", "__metadata__"});
      else
        for (int e = 0; e < edits; ++e) mutate_json(header, rng);
      s = test::raw_safetensors(header, data);
    }
    for (int e = 0; e < edits && kind < 3; ++e) {
      switch (kind) {
        case 0:  // bit flips in the length field or header
          s[rng() % header_end] ^= char(1u << (rng() % 8));
          break;
        case 1:  // truncation
          s.resize(rng() % (s.size() + 1));
          break;
        default: {  // a random header length: anything, or near the real one
          uint64_t v = rng() % 2 ? rng() : header_len + (rng() % 64) - 32;
          if (s.size() >= 8) std::memcpy(s.data(), &v, 8);
        }
      }
    }
    test::write_bytes(path, s);
    try {
      auto f = SafetensorsFile::open(path);
      ++opened;
      const uint8_t* begin = f->mapped_data();
      const uint8_t* end = begin + f->mapped_size();
      ASSERT_EQ(f->mapped_size(), s.size());
      // the tensors tile the data buffer: each begins where the previous ends
      uint64_t n = 0;
      std::memcpy(&n, s.data(), 8);
      const uint8_t* next = begin + 8 + n;
      for (const auto& t : f->tensors()) {
        ASSERT_EQ(t.data, next) << "gap or overlap, iteration " << it;
        ASSERT_LE(t.data + t.nbytes, end) << "iteration " << it;
        ASSERT_EQ(uint64_t(t.numel()) * dtype_size(t.dtype), t.nbytes) << "iteration " << it;
        next = t.data + t.nbytes;
        // The view shows the file's bytes.
        ASSERT_EQ(std::memcmp(t.data, s.data() + (t.data - begin), t.nbytes), 0);
      }
      ASSERT_EQ(next, end) << "bytes after the last tensor, iteration " << it;
    } catch (const Error& e) {
      ++rejected;
      ASSERT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    }
    // Any other exception type propagates and fails the test.
  }
  EXPECT_EQ(opened + rejected, kIterations);
  EXPECT_GT(rejected, kIterations / 4);  // the mutations do reach the validation
  EXPECT_GT(opened, 0);                  // and some survive (e.g. flips inside names)
  std::cout << "opened " << opened << ", rejected " << rejected << "\n";
}

}  // namespace
}  // namespace finmoe
