// Saving and loading HF checkpoints: round trips are bit-exact and broken
// checkpoints fail with messages that name the tensor and file.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <iterator>

#include "finmoe/error.h"
#include "finmoe/safetensors.h"
#include "test_util.h"

namespace finmoe {
namespace {

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Checkpoint, SaveLoadRoundTripIsBitExact) {
  for (const char* variant : {"qwen2", "deepseek_v2", "deepseek_v3"})
  for (auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    SCOPED_TRACE(variant);
    Transformer m(test::tiny_config(variant), dtype);
    init_random(m, 11);
    test::TempDir dir;
    save_model(m, dir.str(), /*max_shard_bytes=*/40000);  // forces several shards
    EXPECT_TRUE(std::filesystem::exists(dir.path / "model.safetensors.index.json"));
    auto back = load_model(dir.str());
    EXPECT_EQ(back.dtype(), dtype);
    auto a = m.named_parameters(), b = back.named_parameters();
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(a[i].first, b[i].first);
      EXPECT_TRUE(torch::equal(a[i].second, b[i].second)) << a[i].first;
    }
  }
}

// safetensors does not align data_offsets to the element size: a header
// padded to 8k + 2 bytes puts every float32 tensor 2 bytes off a 4-byte
// boundary. The file loads with equal weights, each parameter aligned (the
// kernels read parameters as typed arrays; UBSan flagged the zero-copy view).
TEST(Checkpoint, TensorsOffTheirAlignmentInTheFileLoadAligned) {
  Transformer m(test::tiny_config("qwen2"), torch::kFloat32);
  init_random(m, 12);
  test::TempDir dir;
  save_model(m, dir.str());
  const std::string file = (dir.path / "model.safetensors").string();
  std::string bytes;
  {
    std::ifstream in(file, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  std::string header = bytes.substr(8, header_len);
  while (header.size() > 1 && header.back() == ' ') header.pop_back();
  while ((8 + header.size()) % 8 != 2) header.push_back(' ');
  const uint64_t new_len = header.size();
  std::string out(8, '\0');
  std::memcpy(out.data(), &new_len, 8);
  out += header;
  out += bytes.substr(8 + header_len);
  {
    std::ofstream f(file, std::ios::binary | std::ios::trunc);
    f.write(out.data(), std::streamsize(out.size()));
  }
  auto f = SafetensorsFile::open(file);
  ASSERT_FALSE(f->tensors().empty());
  EXPECT_NE(reinterpret_cast<uintptr_t>(f->tensors()[0].data) % 4, 0u) << "the file is not misaligned";
  auto back = load_model(dir.str());
  auto a = m.named_parameters(), b = back.named_parameters();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(torch::equal(a[i].second, b[i].second)) << a[i].first;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(b[i].second.data_ptr()) % 4, 0u) << b[i].first;
  }
  const auto tokens = torch::tensor({{3, 1, 4, 1, 5}}, torch::kInt64);
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(m.forward(tokens), back.forward(tokens)));
}

// LoadOptions::map_weights: weights copied into huge pages equal the mapped
// ones bit for bit, at other addresses, each on a 64-byte boundary, and the
// two models give the same logits.
TEST(Checkpoint, WeightsCopiedIntoHugePagesEqualTheMappedOnes) {
  for (auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    Transformer m(test::tiny_config("qwen2"), dtype);
    init_random(m, 13);
    test::TempDir dir;
    save_model(m, dir.str());
    LoadOptions mapped, copied;
    mapped.map_weights = true;
    copied.map_weights = false;
    auto a = load_model(dir.str(), mapped), b = load_model(dir.str(), copied);
    auto pa = a.named_parameters(), pb = b.named_parameters();
    ASSERT_EQ(pa.size(), pb.size());
    for (size_t i = 0; i < pa.size(); ++i) {
      EXPECT_TRUE(torch::equal(pa[i].second, pb[i].second)) << pa[i].first;
      EXPECT_NE(pa[i].second.data_ptr(), pb[i].second.data_ptr()) << pa[i].first;
      EXPECT_EQ(reinterpret_cast<uintptr_t>(pb[i].second.data_ptr()) % 64, 0u) << pb[i].first;
    }
    const auto tokens = torch::tensor({{3, 1, 4, 1, 5, 9}}, torch::kInt64);
    torch::NoGradGuard no_grad;
    EXPECT_TRUE(torch::equal(a.forward(tokens), b.forward(tokens)));
  }
}

TEST(Checkpoint, FinmoeMmapMustBeZeroOrOne) {
  const char* old = std::getenv("FINMOE_MMAP");
  const std::string saved = old ? old : "";
  setenv("FINMOE_MMAP", "0", 1);
  EXPECT_FALSE(default_map_weights());
  setenv("FINMOE_MMAP", "1", 1);
  EXPECT_TRUE(default_map_weights());
  setenv("FINMOE_MMAP", "yes", 1);
  EXPECT_NE(error_of([] { default_map_weights(); }).find("FINMOE_MMAP='yes'"), std::string::npos);
  if (old) setenv("FINMOE_MMAP", saved.c_str(), 1); else unsetenv("FINMOE_MMAP");
  EXPECT_TRUE(old || default_map_weights()) << "unset maps";
}

TEST(Checkpoint, ParamCountMatchesFormula) {
  auto c = test::tiny_config("llama");  // untied, no bias
  Transformer m(c);
  const int64_t D = c.hidden_size, F = c.intermediate_size, V = c.vocab_size;
  const int64_t per_layer = 2 * D + D * c.q_size() * 2 + 2 * D * c.kv_size() + 3 * D * F;
  EXPECT_EQ(m.param_count().total, 2 * V * D + D + c.num_hidden_layers * per_layer);
  EXPECT_EQ(kv_cache_bytes_per_token(c, 2), 2 * 2 * c.num_hidden_layers * c.kv_size());
}

// The modules a config builds hold exactly the parameters its formula counts
// (MLA's projections and norms, DeepSeek's ungated shared experts and choice bias).
TEST(Checkpoint, ModuleParametersMatchTheConfigsCount) {
  for (const char* variant : {"llama", "qwen2_moe", "finer_moe", "deepseek_v2", "deepseek_v3"}) {
    const auto c = test::tiny_config(variant);
    Transformer m(c);
    int64_t n = 0;
    for (const auto& [name, t] : m.named_parameters()) n += t.numel();
    EXPECT_EQ(n, c.param_count()) << variant;
    EXPECT_EQ(m.named_parameters().size(), expected_tensors(c).size()) << variant;
  }
}

TEST(Checkpoint, InitRandomIsSeeded) {
  Transformer a(test::tiny_config("llama")), b(test::tiny_config("llama")),
      c(test::tiny_config("llama"));
  init_random(a, 5);
  init_random(b, 5);
  init_random(c, 6);
  auto pa = a.named_parameters(), pb = b.named_parameters(), pc = c.named_parameters();
  EXPECT_TRUE(torch::equal(pa[0].second, pb[0].second));
  EXPECT_FALSE(torch::equal(pa[0].second, pc[0].second));
  // HF's scheme: N(0, initializer_range) weights, unit norms
  const double sd = pa[0].second.std().item<double>();
  EXPECT_NEAR(sd, a.config().initializer_range, 0.02);
  for (auto& [name, t] : pa)
    if (name.ends_with("norm.weight")) {
      EXPECT_TRUE(torch::equal(t, torch::ones_like(t)));
    }
}

class BrokenCheckpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    Transformer m(test::tiny_config("llama"));
    init_random(m, 1);
    save_model(m, dir.str());
    for (auto& [name, t] : m.named_parameters()) params.emplace_back(name, t.contiguous());
  }
  // Rewrites model.safetensors from `params` (after a test edits them).
  void rewrite() {
    std::vector<TensorData> data;
    for (auto& [name, t] : params)
      data.push_back({name, DType::F32, t.sizes().vec(), t.data_ptr(),
                      size_t(t.numel()) * sizeof(float)});
    write_safetensors((dir.path / "model.safetensors").string(), data);
  }
  test::TempDir dir;
  std::vector<std::pair<std::string, torch::Tensor>> params;
};

TEST_F(BrokenCheckpoint, MissingTensorIsNamed) {
  params.erase(params.begin() + 3);
  rewrite();
  auto msg = error_of([&] { load_model(dir.str()); });
  EXPECT_NE(msg.find("missing tensor"), std::string::npos) << msg;
  EXPECT_NE(msg.find("model.layers.0."), std::string::npos) << msg;
}

TEST_F(BrokenCheckpoint, WrongShapeNamesTensorAndFile) {
  params[1].second = torch::zeros({3, 3});
  rewrite();
  auto msg = error_of([&] { load_model(dir.str()); });
  EXPECT_NE(msg.find(params[1].first), std::string::npos) << msg;
  EXPECT_NE(msg.find("model.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[3, 3]"), std::string::npos) << msg;
}

TEST_F(BrokenCheckpoint, UnexpectedTensorIsNamed) {
  params.emplace_back("model.layers.9.extra.weight", torch::zeros({2}));
  rewrite();
  auto msg = error_of([&] { load_model(dir.str()); });
  EXPECT_NE(msg.find("unexpected tensor 'model.layers.9.extra.weight'"), std::string::npos) << msg;
}

TEST_F(BrokenCheckpoint, UnknownArchitectureListsSupported) {
  std::ofstream(dir.path / "config.json") << R"({"model_type": "gpt2", "vocab_size": 10})";
  auto msg = error_of([&] { load_model(dir.str()); });
  EXPECT_NE(msg.find("gpt2"), std::string::npos) << msg;
  EXPECT_NE(msg.find("llama"), std::string::npos) << msg;
}

TEST_F(BrokenCheckpoint, TruncatedWeightsFileIsAnError) {
  std::filesystem::resize_file(dir.path / "model.safetensors", 100);
  EXPECT_FALSE(error_of([&] { load_model(dir.str()); }).empty());
}

}  // namespace
}  // namespace finmoe
