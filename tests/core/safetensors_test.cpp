// SafetensorsFile / write_safetensors: round trips, exact bytes, validation.
#include "finmoe/safetensors.h"

#include <gtest/gtest.h>
#include <sys/mman.h>

#include <cstring>

#include "core_test_util.h"
#include "finmoe/error.h"

namespace finmoe {
namespace {

using test::raw_safetensors;
using test::read_bytes;
using test::ScratchDir;
using test::write_bytes;

template <typename T>
TensorData tensor(const std::string& name, DType dtype, std::vector<int64_t> shape,
                  const std::vector<T>& values) {
  return TensorData{name, dtype, std::move(shape), values.data(), values.size() * sizeof(T)};
}

std::string bytes_of(const TensorView& t) { return std::string((const char*)t.data, t.nbytes); }
template <typename T>
std::string bytes_of(const std::vector<T>& v) {
  return std::string((const char*)v.data(), v.size() * sizeof(T));
}

TEST(DType, NamesAndSizesFollowTheSafetensorsSpelling) {
  const std::vector<std::tuple<DType, std::string, size_t>> expected = {
      {DType::F64, "F64", 8}, {DType::F32, "F32", 4}, {DType::F16, "F16", 2},
      {DType::BF16, "BF16", 2}, {DType::I64, "I64", 8}, {DType::I32, "I32", 4},
      {DType::I16, "I16", 2}, {DType::I8, "I8", 1},   {DType::U8, "U8", 1},
      {DType::BOOL, "BOOL", 1}};
  for (const auto& [dtype, name, size] : expected) {
    EXPECT_EQ(dtype_name(dtype), name);
    EXPECT_EQ(dtype_size(dtype), size);
    EXPECT_EQ(dtype_from_name(name), dtype);
  }
  try {
    dtype_from_name("F8_E4M3");
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'F8_E4M3'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL"),
              std::string::npos)
        << e.what();
  }
}

TEST(Safetensors, RoundTripOfEveryDTypeKeepsBytesShapesAndOrder) {
  ScratchDir dir;
  std::vector<double> f64 = {1.0 / 3, -2.5e300, 0.0, 4.0};
  std::vector<float> f32 = {1.5f, -2.25f, 3e10f, -0.0f, 7.0f, 8.0f};
  std::vector<uint16_t> f16 = {0x3C00, 0xC000, 0x7BFF};   // 1, -2, 65504
  std::vector<uint16_t> bf16 = {0x3F80, 0xC040, 0x7F7F};  // 1, -3, max
  std::vector<int64_t> i64 = {INT64_MIN, -1, INT64_MAX};
  std::vector<int32_t> i32 = {INT32_MIN, 0, INT32_MAX, 5};
  std::vector<int16_t> i16 = {-32768, 32767};
  std::vector<int8_t> i8 = {-128, 127, 0};
  std::vector<uint8_t> u8 = {0, 255, 17, 3, 4};
  std::vector<uint8_t> boolean = {1, 0, 1};
  // Not in alphabetical order: the file must keep this order.
  std::vector<TensorData> in = {
      tensor("z.f64", DType::F64, {2, 2}, f64),  tensor("y.f32", DType::F32, {2, 3}, f32),
      tensor("x.f16", DType::F16, {3}, f16),     tensor("w.bf16", DType::BF16, {3, 1}, bf16),
      tensor("v.i64", DType::I64, {3}, i64),     tensor("u.i32", DType::I32, {2, 2}, i32),
      tensor("t.i16", DType::I16, {2}, i16),     tensor("s.i8", DType::I8, {3}, i8),
      tensor("r.u8", DType::U8, {5}, u8),        tensor("q.bool", DType::BOOL, {3}, boolean),
  };
  const std::string path = dir / "all.safetensors";
  write_safetensors(path, in, {{"format", "pt"}, {"note", "héllo"}});

  auto f = SafetensorsFile::open(path);
  ASSERT_EQ(f->tensors().size(), in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    const TensorView& t = f->tensors()[i];
    EXPECT_EQ(t.name, in[i].name);
    EXPECT_EQ(t.dtype, in[i].dtype) << t.name;
    EXPECT_EQ(t.shape, in[i].shape) << t.name;
    EXPECT_EQ(t.nbytes, in[i].nbytes) << t.name;
    EXPECT_EQ(bytes_of(t), std::string((const char*)in[i].data, in[i].nbytes)) << t.name;
    EXPECT_EQ(f->find(t.name), &t);
  }
  EXPECT_EQ(f->find("absent"), nullptr);
  EXPECT_EQ(f->metadata(), (std::map<std::string, std::string>{{"format", "pt"}, {"note", "héllo"}}));
  EXPECT_EQ(f->tensors()[1].numel(), 6);
}

TEST(Safetensors, WriterProducesTheExactSpecifiedBytes) {
  ScratchDir dir;
  std::vector<float> a = {1.0f, 2.0f};
  std::vector<uint8_t> b = {7};
  write_safetensors(dir / "x.safetensors",
                    {tensor("a", DType::F32, {2}, a), tensor("b", DType::U8, {1, 1}, b)},
                    {{"format", "pt"}});
  std::string header =
      R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("b":{"dtype":"U8","shape":[1,1],"data_offsets":[8,9]}})";
  header.append((8 - header.size() % 8) % 8, ' ');  // aligned data buffer
  EXPECT_EQ(header.size() % 8, 0u);
  EXPECT_EQ(read_bytes(dir / "x.safetensors"), raw_safetensors(header, bytes_of(a) + bytes_of(b)));
}

TEST(Safetensors, EmptyScalarAndZeroTensorFilesAreValid) {
  ScratchDir dir;
  std::vector<float> none;
  std::vector<float> scalar = {3.5f};
  write_safetensors(dir / "e.safetensors",
                    {tensor("empty", DType::F32, {0, 4}, none), tensor("s", DType::F32, {}, scalar),
                     tensor("empty2", DType::BF16, {4, 0}, none)});
  auto f = SafetensorsFile::open(dir / "e.safetensors");
  ASSERT_EQ(f->tensors().size(), 3u);
  EXPECT_EQ(f->find("empty")->numel(), 0);
  EXPECT_EQ(f->find("empty")->nbytes, 0u);
  EXPECT_EQ(f->find("s")->numel(), 1);
  EXPECT_TRUE(f->find("s")->shape.empty());
  float v;
  std::memcpy(&v, f->find("s")->data, 4);
  EXPECT_EQ(v, 3.5f);

  write_safetensors(dir / "none.safetensors", {});
  EXPECT_TRUE(SafetensorsFile::open(dir / "none.safetensors")->tensors().empty());
  // Hand-made: an unpadded "{}" header and no data.
  write_bytes(dir / "min.safetensors", raw_safetensors("{}"));
  EXPECT_TRUE(SafetensorsFile::open(dir / "min.safetensors")->tensors().empty());
}

TEST(Safetensors, TensorsComeInFileOrderWhateverTheHeaderOrder) {
  ScratchDir dir;
  std::string header = R"({"b":{"dtype":"U8","shape":[2],"data_offsets":[2,4]},)"
                       R"("a":{"dtype":"U8","shape":[2],"data_offsets":[4,6]},)"
                       R"("c":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})";
  write_bytes(dir / "o.safetensors", raw_safetensors(header, "CCBBAA"));
  auto f = SafetensorsFile::open(dir / "o.safetensors");
  ASSERT_EQ(f->tensors().size(), 3u);
  EXPECT_EQ(f->tensors()[0].name, "c");
  EXPECT_EQ(f->tensors()[1].name, "b");
  EXPECT_EQ(f->tensors()[2].name, "a");
  EXPECT_EQ(bytes_of(f->tensors()[2]), "AA");
}

TEST(Safetensors, MappingIsCopyOnWrite) {
  ScratchDir dir;
  std::vector<float> a = {1.0f, 2.0f};
  write_safetensors(dir / "w.safetensors", {tensor("a", DType::F32, {2}, a)});
  const std::string before = read_bytes(dir / "w.safetensors");
  {
    auto f = SafetensorsFile::open(dir / "w.safetensors");
    float* p = reinterpret_cast<float*>(f->find("a")->data);
    p[0] = 42.0f;  // allowed: private writable mapping
    EXPECT_EQ(p[0], 42.0f);
    auto g = SafetensorsFile::open(dir / "w.safetensors");  // another mapping sees the file
    float v;
    std::memcpy(&v, g->find("a")->data, 4);
    EXPECT_EQ(v, 1.0f);
  }
  EXPECT_EQ(read_bytes(dir / "w.safetensors"), before);
}

// --- validation: every error names the file, and the tensor where there is one.

struct BadFile {
  std::string what;
  std::string bytes;
  std::vector<std::string> expect;  // substrings of the message (besides the file name)
};

std::string t_f32(const std::string& extra) { return R"({"w":{)" + extra + "}}"; }

TEST(Safetensors, EveryMalformedFileGivesAnErrorNamingFileAndTensor) {
  ScratchDir dir;
  const std::string data8(8, '\0');
  const std::vector<BadFile> cases = {
      {"empty file", "", {"0 bytes", "shorter than"}},
      {"5-byte file", "\x01\x02\x03\x04\x05", {"5 bytes", "shorter than"}},
      {"header longer than file", raw_safetensors("{}", "", 1000), {"header length 1000"}},
      {"header length 2^64-1", raw_safetensors("{}", "", UINT64_MAX - 1), {"header length"}},
      {"not JSON", raw_safetensors("{not json"), {"header: invalid JSON"}},
      {"not an object", raw_safetensors("[1,2]"), {"must be a JSON object", "array"}},
      {"offsets nested 10^5 deep",
       raw_safetensors(t_f32(R"("dtype":"F32","shape":[2],"data_offsets":)" +
                             std::string(100000, '[') + "0" + std::string(100000, ']')),
                       data8),
       {"header: JSON nested deeper than 64 levels"}},
      {"entry not object", raw_safetensors(R"({"w":3})"), {"tensor 'w'", "must be an object"}},
      {"no dtype",
       raw_safetensors(t_f32(R"("shape":[2],"data_offsets":[0,8])"), data8),
       {"tensor 'w'", "no 'dtype'"}},
      {"no shape",
       raw_safetensors(t_f32(R"("dtype":"F32","data_offsets":[0,8])"), data8),
       {"tensor 'w'", "no 'shape'"}},
      {"no offsets",
       raw_safetensors(t_f32(R"("dtype":"F32","shape":[2])"), data8),
       {"tensor 'w'", "no 'data_offsets'"}},
      {"dtype not string",
       raw_safetensors(t_f32(R"("dtype":4,"shape":[2],"data_offsets":[0,8])"), data8),
       {"tensor 'w'", "'dtype' must be a string, got integer"}},
      {"shape not array",
       raw_safetensors(t_f32(R"("dtype":"F32","shape":"2","data_offsets":[0,8])"), data8),
       {"tensor 'w'", "'shape' must be an array, got string"}},
      {"shape float",
       raw_safetensors(t_f32(R"("dtype":"F32","shape":[2.0],"data_offsets":[0,8])"), data8),
       {"tensor 'w'", "'shape[0]' must be an integer, got float"}},
      {"offsets one value",
       raw_safetensors(t_f32(R"("dtype":"F32","shape":[2],"data_offsets":[8])"), data8),
       {"tensor 'w'", "'data_offsets' must be an array [begin, end]"}},
      {"offset string",
       raw_safetensors(t_f32(R"("dtype":"F32","shape":[2],"data_offsets":["0",8])"), data8),
       {"tensor 'w'", "'data_offsets[0]' must be an integer, got string"}},
      {"negative offset",
       raw_safetensors(t_f32(R"("dtype":"F32","shape":[2],"data_offsets":[-8,0])"), data8),
       {"tensor 'w'", "'data_offsets[0]' must be non-negative"}},
      {"unknown dtype",
       raw_safetensors(t_f32(R"("dtype":"F8","shape":[2],"data_offsets":[0,8])"), data8),
       {"tensor 'w'", "unknown dtype 'F8'", "known: F64, F32, F16, BF16, I64, I32"}},
      {"negative dim",
       raw_safetensors(t_f32(R"("dtype":"F32","shape":[-2],"data_offsets":[0,8])"), data8),
       {"tensor 'w'", "'shape[0]' must be non-negative"}},
      {"begin > end",
       raw_safetensors(t_f32(R"("dtype":"F32","shape":[2],"data_offsets":[8,0])"), data8),
       {"tensor 'w'", "begin 8 > end 0"}},
      {"beyond buffer",
       raw_safetensors(t_f32(R"("dtype":"F32","shape":[4],"data_offsets":[0,16])"), data8),
       {"tensor 'w'", "end 16 is beyond the data buffer of 8 bytes"}},
      {"size mismatch",
       raw_safetensors(t_f32(R"("dtype":"F32","shape":[3],"data_offsets":[0,8])"), data8),
       {"tensor 'w'", "needs 12 bytes but data_offsets span 8"}},
      {"numel overflow",
       raw_safetensors(
           t_f32(R"("dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,8])"), data8),
       {"tensor 'w'", "too many elements"}},
      {"bytes overflow",
       raw_safetensors(t_f32(R"("dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,8])"),
                       data8),
       {"tensor 'w'", "too many"}},
      {"overlap",
       raw_safetensors(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                       R"("w":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                       std::string(12, '\0')),
       {"tensors 'a' and 'w' overlap"}},
      {"gap between tensors",
       raw_safetensors(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                       R"("w":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})",
                       std::string(20, '\0')),
       {"tensor 'w' begins at data offset 12, leaving bytes 8..12", "to no tensor"}},
      {"data not starting at 0",
       raw_safetensors(t_f32(R"("dtype":"F32","shape":[2],"data_offsets":[4,12])"),
                       std::string(12, '\0')),
       {"tensor 'w' begins at data offset 4, leaving bytes 0..4"}},
      {"trailing bytes",
       raw_safetensors(t_f32(R"("dtype":"F32","shape":[2],"data_offsets":[0,8])"),
                       std::string(9, '\0')),
       {"the tensors cover 8 of the 9 bytes after the header"}},
      {"bytes but no tensors", raw_safetensors("{}", "xy"), {"cover 0 of the 2 bytes"}},
      {"metadata value not string",
       raw_safetensors(R"({"__metadata__":{"k":1}})"),
       {"__metadata__ value of 'k' must be a string, got integer"}},
      {"metadata not object",
       raw_safetensors(R"({"__metadata__":[]})"),
       {"__metadata__ must be an object"}},
  };
  for (const auto& c : cases) {
    const std::string path = dir / ("bad-" + std::to_string(&c - cases.data()) + ".safetensors");
    write_bytes(path, c.bytes);
    try {
      SafetensorsFile::open(path);
      ADD_FAILURE() << c.what << ": opened without error";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(path), std::string::npos) << c.what << ": " << msg;
      for (const auto& s : c.expect)
        EXPECT_NE(msg.find(s), std::string::npos) << c.what << ": '" << s << "' not in: " << msg;
    }
  }
}

// The reference library's rule: the tensors tile the data buffer exactly.
// Before it, a header length one byte short (the padding's last space
// dropped) opened and every tensor read one byte early.
TEST(Safetensors, AHeaderLengthOffByOneIsRefusedNotReadShifted) {
  ScratchDir dir;
  std::vector<float> a = {1.0f, 2.0f, 3.0f};
  write_safetensors(dir / "ok.safetensors", {tensor("a", DType::F32, {3}, a)});
  const std::string good = read_bytes(dir / "ok.safetensors");
  uint64_t n = 0;
  std::memcpy(&n, good.data(), 8);
  ASSERT_EQ(good[8 + n - 1], ' ') << "the writer pads the header: the case below needs padding";
  for (const int64_t delta : {-1, +1, -8, +4}) {
    std::string bad = good;
    const uint64_t m = n + uint64_t(delta);
    std::memcpy(bad.data(), &m, 8);
    write_bytes(dir / "bad.safetensors", bad);
    try {
      auto f = SafetensorsFile::open(dir / "bad.safetensors");
      ADD_FAILURE() << "header length " << m << " (file's " << n << ") opened; a[0] reads as "
                    << *reinterpret_cast<const float*>(f->find("a")->data);
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(dir / "bad.safetensors"), std::string::npos) << e.what();
    }
  }
  auto f = SafetensorsFile::open(dir / "ok.safetensors");
  float first;
  std::memcpy(&first, f->find("a")->data, 4);
  EXPECT_EQ(first, 1.0f);
}

TEST(Safetensors, MissingFileNamesThePath) {
  ScratchDir dir;
  try {
    SafetensorsFile::open(dir / "nope.safetensors");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(dir / "nope.safetensors"), std::string::npos);
  }
}

// --- writer validation and atomicity

void expect_write_error(const std::string& path, const std::vector<TensorData>& in,
                        const std::string& expect) {
  try {
    write_safetensors(path, in);
    ADD_FAILURE() << "no error, expected " << expect;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(expect), std::string::npos) << e.what();
  }
}

TEST(SafetensorsWriter, RejectsInconsistentInputAndLeavesNoFile) {
  ScratchDir dir;
  std::vector<float> v = {1, 2, 3, 4};
  const std::string p = dir / "x.safetensors";
  expect_write_error(p, {TensorData{"a", DType::F32, {3}, v.data(), 16}},
                     "tensor 'a': nbytes 16 != numel 3 x 4 bytes of F32");
  expect_write_error(p, {tensor("a", DType::F32, {4}, v), tensor("a", DType::F32, {4}, v)},
                     "tensor 'a' is given twice");
  expect_write_error(p, {TensorData{"a", DType::F32, {-4}, v.data(), 16}},
                     "tensor 'a': negative dimension -4");
  expect_write_error(p, {TensorData{"a", DType::F32, {4}, nullptr, 16}}, "tensor 'a': data is null");
  expect_write_error(p, {tensor("__metadata__", DType::F32, {4}, v)}, "invalid tensor name");
  EXPECT_TRUE(dir.list().empty());
}

TEST(SafetensorsWriter, AFailedWriteKeepsThePreviousFileAndLeavesNoTempFile) {
  ScratchDir dir;
  const std::string p = dir / "m.safetensors";
  std::vector<float> v = {1, 2, 3, 4};
  write_safetensors(p, {tensor("a", DType::F32, {4}, v)});
  const std::string before = read_bytes(p);

  // Data the kernel cannot read: write(2) fails with EFAULT half-way through.
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  void* bad = mmap(nullptr, page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(bad, MAP_FAILED);
  std::vector<TensorData> in = {tensor("a", DType::F32, {4}, v),
                                TensorData{"b", DType::U8, {int64_t(page)}, bad, page}};
  EXPECT_THROW(write_safetensors(p, in), Error);
  munmap(bad, page);
  EXPECT_EQ(read_bytes(p), before);
  EXPECT_EQ(dir.list(), std::vector<std::string>{"m.safetensors"});

  // Rename onto a directory fails after the data was written.
  std::filesystem::create_directories(dir / "d.safetensors");
  EXPECT_THROW(write_safetensors(dir / "d.safetensors", {tensor("a", DType::F32, {4}, v)}),
               Error);
  EXPECT_EQ(dir.list(), (std::vector<std::string>{"d.safetensors", "m.safetensors"}));

  // Missing directory: Error naming the path, nothing created.
  try {
    write_safetensors(dir / "no/such/dir.safetensors", {});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(dir / "no/such/dir.safetensors"), std::string::npos);
  }
}

}  // namespace
}  // namespace finmoe
