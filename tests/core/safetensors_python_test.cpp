// Independent checks against the reference `safetensors` Python package:
// files it wrote (at test time, and the committed fixture) read here, and
// files written here read by it. Values follow formulas restated on both sides.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "core_test_util.h"
#include "finmoe/error.h"
#include "finmoe/safetensors.h"

namespace finmoe {
namespace {

using test::ScratchDir;

// The formulas, as Python computes them below (index i, row-major).
struct Spec {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  double (*value)(int64_t i);
};

const std::vector<Spec>& specs() {
  static const std::vector<Spec> s = {
      {"f64", DType::F64, {3, 4}, [](int64_t i) { return i * 0.125 - 0.5; }},
      {"f32", DType::F32, {5, 7}, [](int64_t i) { return i * 0.5 - 3; }},
      {"f16", DType::F16, {9}, [](int64_t i) { return i * 0.25 - 1; }},
      {"i64", DType::I64, {4}, [](int64_t i) { return double((i - 2) * 1000000000000000LL); }},
      {"i32", DType::I32, {6}, [](int64_t i) { return double(i * 100000 - 250000); }},
      {"i16", DType::I16, {5}, [](int64_t i) { return double(i * 1000 - 2000); }},
      {"i8", DType::I8, {7}, [](int64_t i) { return double(i * 20 - 60); }},
      {"u8", DType::U8, {6}, [](int64_t i) { return double(i * 50); }},
      {"bool", DType::BOOL, {5}, [](int64_t i) { return i % 3 == 0 ? 1.0 : 0.0; }},
      {"empty", DType::F32, {2, 0, 3}, [](int64_t) { return 0.0; }},
  };
  return s;
}

const char* kScript = R"PY(
import sys
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file, load_file

def arrays():
    a = np.arange
    return {
        "f64": (a(12, dtype=np.float64) * 0.125 - 0.5).reshape(3, 4),
        "f32": (a(35, dtype=np.float32) * 0.5 - 3).reshape(5, 7),
        "f16": a(9, dtype=np.float16) * np.float16(0.25) - np.float16(1),
        "i64": (a(4, dtype=np.int64) - 2) * 10**15,
        "i32": (a(6, dtype=np.int64) * 100000 - 250000).astype(np.int32),
        "i16": (a(5, dtype=np.int64) * 1000 - 2000).astype(np.int16),
        "i8": (a(7, dtype=np.int64) * 20 - 60).astype(np.int8),
        "u8": (a(6, dtype=np.int64) * 50).astype(np.uint8),
        "bool": a(5) % 3 == 0,
        "empty": np.zeros((2, 0, 3), dtype=np.float32),
    }

def bf16_values():
    import torch
    return (torch.arange(10, dtype=torch.float32) * 0.5 - 2).to(torch.bfloat16)

mode, path = sys.argv[1], sys.argv[2]
if mode == "write":
    save_file(arrays(), path, metadata={"who": "python"})
    try:
        from safetensors.torch import save_file as save_torch
        save_torch({"bf16": bf16_values().reshape(2, 5)}, path + ".bf16")
    except ImportError:
        pass
else:
    got = load_file(path)
    bad = []
    for k, v in arrays().items():
        if k not in got or got[k].dtype != v.dtype or got[k].shape != v.shape or not np.array_equal(got[k], v):
            bad.append(k)
    if sorted(got) != sorted(arrays()):
        bad.append("names " + str(sorted(got)))
    with safe_open(path, framework="np") as f:
        if f.metadata() != {"who": "finmoe"}:
            bad.append("metadata " + str(f.metadata()))
    try:
        import torch
        from safetensors.torch import load_file as load_torch
        t = load_torch(path + ".bf16")["bf16"]
        if t.dtype != torch.bfloat16 or list(t.shape) != [2, 5] or not torch.equal(t.flatten(), bf16_values()):
            bad.append("bf16")
        print("bf16 checked")
    except ImportError:
        pass
    if bad:
        print("MISMATCH", bad)
        sys.exit(1)
    print("OK")
)PY";

// Element i of a tensor, as a double.
double element(const TensorView& t, int64_t i) {
  const uint8_t* p = t.data + i * int64_t(dtype_size(t.dtype));
  auto load = [p](auto v) {
    std::memcpy(&v, p, sizeof(v));
    return v;
  };
  switch (t.dtype) {
    case DType::F64: return load(double());
    case DType::F32: return load(float());
    case DType::F16: {  // binary16 -> double, normal numbers and zero suffice here
      uint16_t h = load(uint16_t());
      int e = (h >> 10) & 31, m = h & 1023;
      double v = e == 0 ? std::ldexp(m, -24) : std::ldexp(1024 + m, e - 25);
      return h & 0x8000 ? -v : v;
    }
    case DType::BF16: {
      uint32_t bits = uint32_t(load(uint16_t())) << 16;
      float f;
      std::memcpy(&f, &bits, 4);
      return f;
    }
    case DType::I64: return double(load(int64_t()));
    case DType::I32: return load(int32_t());
    case DType::I16: return load(int16_t());
    case DType::I8: return load(int8_t());
    case DType::U8: return load(uint8_t());
    case DType::BOOL: return load(uint8_t());
  }
  return NAN;
}

void expect_matches(const TensorView* t, const Spec& s) {
  ASSERT_NE(t, nullptr) << s.name;
  EXPECT_EQ(t->dtype, s.dtype) << s.name;
  EXPECT_EQ(t->shape, s.shape) << s.name;
  for (int64_t i = 0; i < t->numel(); ++i)
    ASSERT_EQ(element(*t, i), s.value(i)) << s.name << "[" << i << "]";
}

std::string write_script(const ScratchDir& dir) {
  std::string path = dir / "check.py";
  test::write_bytes(path, kScript);
  return path;
}

TEST(SafetensorsPython, ReadsWhatThePythonPackageWrites) {
  std::string py = test::python_with("safetensors.numpy, numpy");
  if (py.empty()) GTEST_SKIP() << "FINMOE_PYTHON unset or lacks safetensors/numpy";
  ScratchDir dir;
  std::string out;
  ASSERT_EQ(test::run_python(py, write_script(dir), "write '" + (dir / "py.safetensors") + "'", &out),
            0)
      << out;
  auto f = SafetensorsFile::open(dir / "py.safetensors");
  EXPECT_EQ(f->tensors().size(), specs().size());
  for (const Spec& s : specs()) expect_matches(f->find(s.name), s);
  EXPECT_EQ(f->metadata().at("who"), "python");

  if (!std::filesystem::exists(dir / "py.safetensors.bf16")) {
    GTEST_SKIP() << "no torch in FINMOE_PYTHON: BF16 from Python not checked";
  }
  auto b = SafetensorsFile::open(dir / "py.safetensors.bf16");
  expect_matches(b->find("bf16"),
                 Spec{"bf16", DType::BF16, {2, 5}, [](int64_t i) { return i * 0.5 - 2; }});
}

TEST(SafetensorsPython, ThePythonPackageReadsWhatWeWrite) {
  std::string py = test::python_with("safetensors.numpy, numpy");
  if (py.empty()) GTEST_SKIP() << "FINMOE_PYTHON unset or lacks safetensors/numpy";
  ScratchDir dir;
  // Build every tensor from the formula, in the table's order.
  std::vector<std::vector<uint8_t>> buffers;
  std::vector<TensorData> tensors;
  for (const Spec& s : specs()) {
    int64_t n = 1;
    for (int64_t d : s.shape) n *= d;
    std::vector<uint8_t> buf(size_t(n) * dtype_size(s.dtype));
    for (int64_t i = 0; i < n; ++i) {
      double v = s.value(i);
      uint8_t* p = buf.data() + i * int64_t(dtype_size(s.dtype));
      auto store = [p](auto x) { std::memcpy(p, &x, sizeof(x)); };
      switch (s.dtype) {
        case DType::F64: store(v); break;
        case DType::F32: store(float(v)); break;
        case DType::F16: {  // exact for these values: sign, exponent, 10-bit mantissa
          int e;
          double m = std::frexp(std::fabs(v), &e);  // |v| = m * 2^e, m in [0.5, 1)
          uint16_t h = v == 0 ? 0 : uint16_t(((e + 14) << 10) | (uint16_t(m * 2048) & 1023));
          store(uint16_t(v < 0 ? h | 0x8000 : h));
          break;
        }
        case DType::I64: store(int64_t(v)); break;
        case DType::I32: store(int32_t(v)); break;
        case DType::I16: store(int16_t(v)); break;
        case DType::I8: store(int8_t(v)); break;
        case DType::U8:
        case DType::BOOL: store(uint8_t(v)); break;
        case DType::BF16: break;
      }
    }
    buffers.push_back(std::move(buf));
    tensors.push_back(TensorData{s.name, s.dtype, s.shape, buffers.back().data(),
                                 buffers.back().size()});
  }
  const std::string path = dir / "cpp.safetensors";
  write_safetensors(path, tensors, {{"who", "finmoe"}});
  // Round trip here first, so a mismatch below points at the encoding.
  for (const Spec& s : specs()) expect_matches(SafetensorsFile::open(path)->find(s.name), s);

  std::vector<uint16_t> bf16(10);
  for (int i = 0; i < 10; ++i) {
    float f = float(i * 0.5 - 2);
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    bf16[i] = uint16_t(bits >> 16);  // exact: these floats have short mantissas
  }
  write_safetensors(path + ".bf16", {TensorData{"bf16", DType::BF16, {2, 5}, bf16.data(), 20}});

  std::string out;
  EXPECT_EQ(test::run_python(py, write_script(dir), "check '" + path + "'", &out), 0) << out;
  EXPECT_NE(out.find("OK"), std::string::npos) << out;
}

// The committed fixture, written by tests/data/core/make_safetensors_fixture.py.
TEST(SafetensorsFixture, ReadsTheCommittedPythonWrittenFile) {
  auto f = SafetensorsFile::open(std::string(FINMOE_TEST_DATA_DIR) + "/core/fixture.safetensors");
  // File order as the Python package lays it out (by alignment, then name).
  std::vector<std::string> order;
  for (const auto& t : f->tensors()) order.push_back(t.name);
  EXPECT_EQ(order, (std::vector<std::string>{"i64", "empty", "f32", "f16", "i8", "flags"}));
  expect_matches(f->find("f32"), {"f32", DType::F32, {2, 3}, [](int64_t i) { return i * 0.5 - 1; }});
  expect_matches(f->find("f16"), {"f16", DType::F16, {4}, [](int64_t i) { return i * 0.25 - 0.5; }});
  expect_matches(f->find("i64"), {"i64", DType::I64, {3}, [](int64_t i) {
                                    return double((i - 1) * 1000000000000LL);
                                  }});
  expect_matches(f->find("i8"), {"i8", DType::I8, {5}, [](int64_t i) { return i * 30.0 - 64; }});
  expect_matches(f->find("flags"),
                 {"flags", DType::BOOL, {4}, [](int64_t i) { return i % 2 == 0 ? 1.0 : 0.0; }});
  expect_matches(f->find("empty"), {"empty", DType::F32, {0, 3}, [](int64_t) { return 0.0; }});
  EXPECT_EQ(f->metadata(), (std::map<std::string, std::string>{
                               {"format", "np"}, {"source", "make_safetensors_fixture.py"}}));
}

// The layout rules against the reference library itself: each of these
// files opens in finmoe exactly when it loads in `safetensors` (gaps, bytes
// after the last tensor, a header length off by one, overlaps, whitespace
// around the header object).
TEST(SafetensorsPython, AcceptsAndRefusesTheLayoutsThePythonPackageDoes) {
  std::string py = test::python_with("safetensors.numpy, numpy");
  if (py.empty()) GTEST_SKIP() << "FINMOE_PYTHON unset or lacks safetensors/numpy";
  ScratchDir dir;
  std::vector<float> a = {1.0f, 2.0f, 3.0f};
  write_safetensors(dir / "ok.safetensors", {{"a", DType::F32, {3}, a.data(), 12}});
  const std::string ok = test::read_bytes(dir / "ok.safetensors");
  uint64_t n = 0;
  std::memcpy(&n, ok.data(), 8);
  auto with_length = [&](uint64_t m) {
    std::string s = ok;
    std::memcpy(s.data(), &m, 8);
    return s;
  };
  const std::string two = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)";
  const std::vector<std::pair<std::string, std::string>> files = {
      {"ok", ok},
      {"length-1", with_length(n - 1)},
      {"length+1", with_length(n + 1)},
      {"trailing", ok + "x"},
      {"gap",
       test::raw_safetensors(two + R"("b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})",
                             std::string(20, '\0'))},
      {"overlap",
       test::raw_safetensors(two + R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                             std::string(12, '\0'))},
      {"packed",
       test::raw_safetensors(two + R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                             std::string(16, '\0'))},
      {"leading-space",
       test::raw_safetensors(R"( {"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", "x")},
      {"newline-padding",
       test::raw_safetensors(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})"
                             "\n",
                             "x")},
  };
  std::string list;
  for (const auto& [name, bytes] : files) {
    test::write_bytes(dir / (name + ".safetensors"), bytes);
    list += " '" + dir / (name + ".safetensors") + "'";
  }
  const std::string script = dir / "layouts.py";
  test::write_bytes(script, R"(import sys
from safetensors.numpy import load_file
for path in sys.argv[1:]:
    try:
        load_file(path)
        print("loads", path)
    except Exception:
        print("refused", path)
)");
  std::string out;
  ASSERT_EQ(test::run_python(py, script, list, &out), 0) << out;
  for (const auto& [name, bytes] : files) {
    const std::string path = dir / (name + ".safetensors");
    const bool python_loads = out.find("loads " + path + "\n") != std::string::npos;
    ASSERT_TRUE(python_loads || out.find("refused " + path + "\n") != std::string::npos) << out;
    bool finmoe_loads = true;
    try {
      SafetensorsFile::open(path);
    } catch (const Error&) {
      finmoe_loads = false;
    }
    EXPECT_EQ(finmoe_loads, python_loads) << name;
  }
}

}  // namespace
}  // namespace finmoe
