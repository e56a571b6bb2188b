// finmoe merge (include/finmoe/merge.h): invariants every method must keep,
// the DARE/DELLA keep statistics, recipe parameters (gradients, filters,
// precedence), slices, MoE checkpoints per expert, ESFT deltas as inputs, the
// chat-vector preset, and bad input (a clear error, nothing left in OUT).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <map>
#include <set>

#include <ATen/CPUGeneratorImpl.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "../expect_error.h"
#include "../model/test_util.h"
#include "convert/merge_methods.h"
#include "core/chunk_read.h"
#include "core/file_util.h"
#include "finmoe/config.h"
#include "finmoe/esft.h"
#include "finmoe/merge.h"
#include "finmoe/model.h"
#include "finmoe/safetensors.h"
#include "merge/merge_plan.h"
#include "model/torch_dtype.h"

namespace finmoe {
namespace {

namespace fs = std::filesystem;
using test::message_of;
using test::TempDir;

// The committed tiny llama models: base, and a, b = base + noise.
std::string M(const std::string& n) {
  return std::string(FINMOE_TEST_DATA_DIR) + "/merge/models/" + n;
}

MergeReport run(const std::string& yaml, const std::string& out, uint64_t seed = 0) {
  MergeOptions o;
  o.progress = false;
  o.seed = seed;
  return merge_models(parse_merge_recipe(yaml, "recipe.yaml"), out, o);
}

using Tensors = std::map<std::string, torch::Tensor>;

Tensors load(const std::string& dir) {
  Tensors out;
  const CheckpointReader r = CheckpointReader::open(dir);
  for (const auto& n : r.names()) {
    const TensorView& v = r.get(n);
    out[n] = torch::from_blob(v.data, v.shape, torch::TensorOptions().dtype(to_torch(v.dtype)))
                 .to(torch::kFloat64)
                 .clone();
  }
  return out;
}

double max_diff(const Tensors& a, const Tensors& b) {
  EXPECT_EQ(a.size(), b.size());
  double d = 0;
  for (const auto& [n, t] : a) d = std::max(d, (t - b.at(n)).abs().max().item<double>());
  return d;
}

bool bitwise_equal(const Tensors& a, const Tensors& b) {
  if (a.size() != b.size()) return false;
  for (const auto& [n, t] : a)
    if (!b.count(n) || !torch::equal(t, b.at(n))) return false;
  return true;
}

std::string two_models(const std::string& method, const std::string& a_params,
                       const std::string& b_params, const std::string& global = "") {
  return "merge_method: " + method + "\nbase_model: " + M("base") + "\nmodels:\n  - model: " +
         M("a") + "\n    parameters: " + a_params + "\n  - model: " + M("b") +
         "\n    parameters: " + b_params + "\n" + global;
}

// ---- invariants ------------------------------------------------------------------

TEST(MergeInvariants, MergingAModelWithItselfReturnsIt) {
  TempDir tmp;
  const Tensors a = load(M("a"));
  run("merge_method: linear\nmodels:\n  - model: " + M("a") + "\n    parameters: {weight: 0.3}\n"
      "  - model: " + M("a") + "\n    parameters: {weight: 0.7}\n",
      tmp.str() + "/linear");
  EXPECT_LT(max_diff(load(tmp.str() + "/linear"), a), 1e-6);
  // every task-arithmetic method: the deltas are 0
  for (const std::string m : {"task_arithmetic", "ties", "dare_ties", "breadcrumbs", "della"}) {
    run("merge_method: " + m + "\nbase_model: " + M("a") + "\nmodels:\n  - model: " + M("a") +
            "\n    parameters: {weight: 0.8, density: 0.5}\n",
        tmp.str() + "/" + m);
    EXPECT_TRUE(bitwise_equal(load(tmp.str() + "/" + m), a)) << m;
  }
  // slerp needs a second model: a copy of a
  fs::create_directories(tmp.str() + "/copy");
  for (const char* f : {"config.json", "model.safetensors"})
    fs::copy_file(M("a") + "/" + f, tmp.str() + "/copy/" + f);
  run("merge_method: slerp\nbase_model: " + M("a") + "\nmodels:\n  - model: " + tmp.str() +
          "/copy\nparameters: {t: 0.4}\n",
      tmp.str() + "/slerp");
  EXPECT_LT(max_diff(load(tmp.str() + "/slerp"), a), 1e-6);
}

TEST(MergeInvariants, TaskArithmeticWithLambdaZeroReturnsTheBase) {
  TempDir tmp;
  run(two_models("task_arithmetic", "{weight: 0.7}", "{weight: 1.3}", "parameters: {lambda: 0}\n"),
      tmp.str() + "/out");
  EXPECT_TRUE(bitwise_equal(load(tmp.str() + "/out"), load(M("base"))));
}

TEST(MergeInvariants, DareWithDensityOneEqualsTaskArithmeticAndTiesExactly) {
  TempDir tmp;
  run(two_models("dare_linear", "{weight: 0.7, density: 1}", "{weight: 0.4}"), tmp.str() + "/dl");
  run(two_models("task_arithmetic", "{weight: 0.7}", "{weight: 0.4}"), tmp.str() + "/ta");
  EXPECT_TRUE(bitwise_equal(load(tmp.str() + "/dl"), load(tmp.str() + "/ta")));
  run(two_models("dare_ties", "{weight: 0.7, density: 1}", "{weight: 0.4, density: 1}",
                 "parameters: {normalize: true}\n"),
      tmp.str() + "/dt");
  run(two_models("ties", "{weight: 0.7, density: 1}", "{weight: 0.4, density: 1}"),
      tmp.str() + "/ties");
  EXPECT_TRUE(bitwise_equal(load(tmp.str() + "/dt"), load(tmp.str() + "/ties")));
}

// ---- DARE / DELLA statistics -----------------------------------------------------

TEST(MergeDare, KeepsTheDensityFractionRescaledByOneOverDensity) {
  TempDir tmp;
  const double density = 0.3;
  run("merge_method: dare_linear\nbase_model: " + M("base") + "\nmodels:\n  - model: " + M("a") +
          "\n    parameters: {weight: 1, density: 0.3}\n",
      tmp.str() + "/out", /*seed=*/7);
  const Tensors out = load(tmp.str() + "/out"), base = load(M("base")), a = load(M("a"));
  double n = 0, kept = 0, abs_in = 0, abs_out = 0, worst_scale = 0;
  for (const auto& [name, b] : base) {
    auto delta = a.at(name) - b, merged = out.at(name) - b;  // float32 deltas, as float64
    auto keep = merged.abs() > 1e-9;
    n += double(b.numel());
    kept += keep.sum().item<double>();
    abs_in += delta.abs().sum().item<double>();
    abs_out += merged.abs().sum().item<double>();
    // kept entries: delta / density (float32 rounding of base + delta/density)
    auto ratio = merged.masked_select(keep) / delta.masked_select(keep);
    if (ratio.numel())
      worst_scale = std::max(worst_scale, (ratio - 1 / density).abs().max().item<double>());
  }
  const double sigma = std::sqrt(density * (1 - density) / n);
  EXPECT_NEAR(kept / n, density, 5 * sigma) << n << " entries";
  EXPECT_LT(worst_scale, 1e-3);
  // E[kept / density] = delta: the L1 mass is kept (about 5 sigma of a Bernoulli sum)
  EXPECT_NEAR(abs_out / abs_in, 1.0, 5 * std::sqrt((1 - density) / density / n) * 1.5);

  // the seed decides the draws
  run("merge_method: dare_linear\nbase_model: " + M("base") + "\nmodels:\n  - model: " + M("a") +
          "\n    parameters: {weight: 1, density: 0.3}\n",
      tmp.str() + "/same", 7);
  run("merge_method: dare_linear\nbase_model: " + M("base") + "\nmodels:\n  - model: " + M("a") +
          "\n    parameters: {weight: 1, density: 0.3}\n",
      tmp.str() + "/other", 8);
  EXPECT_TRUE(bitwise_equal(load(tmp.str() + "/same"), out));
  EXPECT_FALSE(bitwise_equal(load(tmp.str() + "/other"), out));
}

TEST(MergeDare, RandomSparsifyMeanAndFractionOnALargeTensor) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
  auto x = torch::randn({400, 500}, gen, torch::kFloat64);
  for (double d : {0.1, 0.5, 0.9}) {
    auto y = merge_math::sparsify(x, merge_math::Sparsify::Random, d, true, 0, 0, gen);
    auto keep = y != 0;
    const double n = double(x.numel());
    EXPECT_NEAR(keep.sum().item<double>() / n, d, 5 * std::sqrt(d * (1 - d) / n)) << d;
    EXPECT_TRUE(torch::allclose(y.masked_select(keep), x.masked_select(keep) / d));
    // unbiased: mean(y - x) ~ 0 with sd sqrt((1-d)/d / n)
    EXPECT_NEAR((y - x).mean().item<double>(), 0.0, 5 * std::sqrt((1 - d) / d / n)) << d;
  }
}

TEST(MergeDella, KeepsTheDensityOnAverageAndLargerEntriesMoreOften) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
  auto x = torch::randn({200, 400}, gen, torch::kFloat64);
  const double d = 0.4, eps = 0.2;
  auto y = merge_math::sparsify(x, merge_math::Sparsify::DellaMagprune, d, false, 0, eps, gen);
  auto keep = (y != 0).to(torch::kFloat64);
  const double n = double(x.numel());
  EXPECT_NEAR(keep.mean().item<double>(), d, 5 * std::sqrt(d * (1 - d) / n));
  // per row the keep probability rises from d-eps to d+eps with |x|'s rank
  auto big = x.abs() > std::get<0>(x.abs().median(1, true));
  const double p_big = keep.masked_select(big).mean().item<double>();
  const double p_small = keep.masked_select(~big).mean().item<double>();
  EXPECT_NEAR(p_big - p_small, eps, 0.03);  // mean ranks of the halves differ by ~1/2
}

// ---- parameters --------------------------------------------------------------------

TEST(MergeParams, GradientsInterpolateAndFiltersTakeTheFirstMatch) {
  const MergeRecipe r = parse_merge_recipe(
      "merge_method: slerp\nbase_model: x\nmodels: [{model: x}, {model: y}]\nparameters:\n"
      "  t:\n    - filter: self_attn\n      value: [0.0, 0.5, 1.0]\n    - filter: mlp\n"
      "      value: 0.3\n    - value: [1, 3]\n",
      "r.yaml");
  const MergeParam& t = r.parameters.at("t");
  EXPECT_DOUBLE_EQ(*eval_number(t, "model.layers.1.self_attn.q_proj.weight", 0.25, "t"), 0.25);
  EXPECT_DOUBLE_EQ(*eval_number(t, "model.layers.1.self_attn.q_proj.weight", 0.75, "t"), 0.75);
  EXPECT_DOUBLE_EQ(*eval_number(t, "model.layers.1.mlp.up_proj.weight", 0.9, "t"), 0.3);
  EXPECT_DOUBLE_EQ(*eval_number(t, "model.norm.weight", 0.5, "t"), 2.0);
  MergeParam only_mlp;
  only_mlp.kind = MergeParam::Kind::Filtered;
  only_mlp.filtered = {{"mlp", MergeParam::number(2)}};
  EXPECT_FALSE(eval_number(only_mlp, "lm_head.weight", 0, "w").has_value());
}

TEST(MergeParams, AModelsOwnParameterOverridesTheGlobalOne) {
  TempDir tmp;
  // a's weight 0 locally beats the global 1: the result is base + (b - base)
  run("merge_method: task_arithmetic\nbase_model: " + M("base") + "\nmodels:\n  - model: " +
          M("a") + "\n    parameters: {weight: 0}\n  - model: " + M("b") +
          "\nparameters: {weight: 1}\n",
      tmp.str() + "/out");
  EXPECT_LT(max_diff(load(tmp.str() + "/out"), load(M("b"))), 1e-6);
}

// mergekit's `modules:` syntax: the decoder-only models finmoe merges have one
// module, "default"; its models/slices are the recipe's and its parameters
// come after the slice's and before the global ones (mergekit's
// ConfigReader.parameter_sources).
TEST(MergeParams, ModulesDefaultIsTheTopLevelRecipeWithItsOwnParameterLevel) {
  TempDir tmp;
  const std::string models = "models:\n      - model: " + M("a") + "\n        parameters: {weight: 0.25}\n"
                             "      - model: " + M("b") + "\n";
  // b takes the module's weight 2 over the global 7; a keeps its own 0.25
  run("merge_method: task_arithmetic\nbase_model: " + M("base") + "\nparameters: {weight: 7}\n"
      "modules:\n  default:\n    parameters: {weight: 2}\n    " + models,
      tmp.str() + "/modules");
  run(two_models("task_arithmetic", "{weight: 0.25}", "{weight: 2}"), tmp.str() + "/flat");
  EXPECT_TRUE(bitwise_equal(load(tmp.str() + "/modules"), load(tmp.str() + "/flat")));
  // and by the formula: base + 0.25 (a - base) + 2 (b - base)
  const Tensors base = load(M("base")), a = load(M("a")), b = load(M("b")),
                out = load(tmp.str() + "/modules");
  for (const auto& [n, t] : out) {
    const torch::Tensor want = base.at(n) + 0.25 * (a.at(n) - base.at(n)) + 2 * (b.at(n) - base.at(n));
    EXPECT_LT((t - want).abs().max().item<double>(), 1e-2 * (1 + want.abs().max().item<double>())) << n;
  }
  // slices inside the module stack as top-level slices do
  run("merge_method: passthrough\nmodules:\n  default:\n    slices:\n      - sources:\n"
      "          - model: " + M("a") + "\n            layer_range: [0, 1]\n      - sources:\n"
      "          - model: " + M("b") + "\n            layer_range: [2, 3]\n",
      tmp.str() + "/sliced");
  const Tensors sliced = load(tmp.str() + "/sliced");
  const std::string q = ".self_attn.q_proj.weight";
  EXPECT_TRUE(torch::equal(sliced.at("model.layers.0" + q), a.at("model.layers.0" + q)));
  EXPECT_TRUE(torch::equal(sliced.at("model.layers.1" + q), b.at("model.layers.2" + q)));
  EXPECT_EQ(read_json_file(tmp.str() + "/sliced/config.json")["num_hidden_layers"], 2);
}

TEST(MergeSlices, PassthroughStacksLayerRangesAndCountsTheLayers) {
  TempDir tmp;
  run("merge_method: passthrough\nslices:\n  - sources:\n      - model: " + M("a") +
          "\n        layer_range: [0, 2]\n  - sources:\n      - model: " + M("b") +
          "\n        layer_range: [1, 3]\n",
      tmp.str() + "/out");
  const Tensors out = load(tmp.str() + "/out"), a = load(M("a")), b = load(M("b"));
  const std::string q = ".self_attn.q_proj.weight";
  EXPECT_TRUE(torch::equal(out.at("model.layers.0" + q), a.at("model.layers.0" + q)));
  EXPECT_TRUE(torch::equal(out.at("model.layers.1" + q), a.at("model.layers.1" + q)));
  EXPECT_TRUE(torch::equal(out.at("model.layers.2" + q), b.at("model.layers.1" + q)));
  EXPECT_TRUE(torch::equal(out.at("model.layers.3" + q), b.at("model.layers.2" + q)));
  EXPECT_TRUE(torch::equal(out.at("model.embed_tokens.weight"), a.at("model.embed_tokens.weight")));
  EXPECT_TRUE(torch::equal(out.at("lm_head.weight"), b.at("lm_head.weight")));
  EXPECT_EQ(read_json_file(tmp.str() + "/out/config.json")["num_hidden_layers"], 4);
  EXPECT_EQ(out.size(), 3u + 4u * 9u);
}

TEST(MergeOutput, WritesConfigCardRecipeAndDtype) {
  TempDir tmp;
  const std::string yaml = two_models("ties", "{weight: 1, density: 0.5}", "{weight: 1, density: 0.5}",
                                      "out_dtype: bfloat16\n");
  run(yaml, tmp.str() + "/out");
  const CheckpointReader r = CheckpointReader::open(tmp.str() + "/out");
  EXPECT_EQ(r.get("model.norm.weight").dtype, DType::BF16);
  EXPECT_EQ(read_json_file(tmp.str() + "/out/config.json")["torch_dtype"], "bfloat16");
  std::ifstream card(tmp.str() + "/out/README.md"), cfg(tmp.str() + "/out/mergekit_config.yml");
  std::string card_text((std::istreambuf_iterator<char>(card)), {});
  std::string cfg_text((std::istreambuf_iterator<char>(cfg)), {});
  EXPECT_CONTAINS(card_text, "merge_method: ties");
  EXPECT_EQ(cfg_text, yaml);
  // finmoe loads it
  Transformer m = load_model(tmp.str() + "/out", {.dtype = torch::kFloat32});
  EXPECT_EQ(m.config().num_hidden_layers, 3);
}

TEST(MergeOutput, BigModelsAreShardedThroughTheCheckpointWriter) {
  TempDir tmp;
  MergeOptions o;
  o.progress = false;
  o.max_shard_bytes = 8 << 10;
  const auto rep = merge_models(
      parse_merge_recipe(two_models("task_arithmetic", "{weight: 1}", "{weight: 1}"), "r"),
      tmp.str() + "/out", o);
  EXPECT_GT(rep.num_shards, 3u);
  EXPECT_TRUE(fs::exists(tmp.str() + "/out/model.safetensors.index.json"));
  run(two_models("task_arithmetic", "{weight: 1}", "{weight: 1}"), tmp.str() + "/one");
  EXPECT_TRUE(bitwise_equal(load(tmp.str() + "/out"), load(tmp.str() + "/one")));
}

TEST(MergeOutput, MethodsMergedInRowBlocksEqualWholeTensors) {
  TempDir tmp;
  const std::vector<std::string> recipes = {
      "merge_method: linear\nmodels:\n  - model: " + M("a") + "\n    parameters: {weight: 0.3}\n"
      "  - model: " + M("b") + "\n    parameters: {weight: [0.5, 0.9]}\n",
      two_models("task_arithmetic", "{weight: 0.7}", "{weight: 1.1}", "parameters: {lambda: 0.8}\n"),
      two_models("dare_ties", "{weight: 0.7, density: 1}", "{weight: 0.4, density: 1}"),
      // TIES selects over whole tensors and merges them in blocks (bfloat16:
      // many magnitudes tie at the threshold, so the tie cut moves per block)
      two_models("ties", "{weight: 0.7, density: 0.4}", "{weight: 0.4, density: 0.7}",
                 "dtype: bfloat16\n"),
      "merge_method: passthrough\nmodels:\n  - model: " + M("a") + "\n    parameters: {scale: 0.5}\n"};
  for (size_t i = 0; i < recipes.size(); ++i) {
    MergeOptions o;
    o.progress = false;
    const std::string whole = tmp.str() + "/whole" + std::to_string(i);
    const std::string blocks = tmp.str() + "/blocks" + std::to_string(i);
    const MergeReport one = merge_models(parse_merge_recipe(recipes[i], "r"), whole, o);
    o.chunk_elements = 40;  // 2 rows of the embeddings, 2-3 of the projections
    const MergeReport rep = merge_models(parse_merge_recipe(recipes[i], "r"), blocks, o);
    EXPECT_TRUE(bitwise_equal(load(whole), load(blocks))) << recipes[i];
    EXPECT_EQ(rep.bytes_read, one.bytes_read) << recipes[i];  // every byte read once, per block
  }
  // DARE in blocks: still the density fraction
  MergeOptions o;
  o.progress = false;
  o.chunk_elements = 40;
  merge_models(parse_merge_recipe("merge_method: dare_linear\nbase_model: " + M("base") +
                                      "\nmodels:\n  - model: " + M("a") +
                                      "\n    parameters: {weight: 1, density: 0.3}\n",
                                  "r"),
               tmp.str() + "/dare", o);
  const Tensors out = load(tmp.str() + "/dare"), base = load(M("base"));
  double n = 0, kept = 0;
  for (const auto& [name, b] : base) {
    n += double(b.numel());
    kept += ((out.at(name) - b).abs() > 1e-9).sum().item<double>();
  }
  EXPECT_NEAR(kept / n, 0.3, 5 * std::sqrt(0.3 * 0.7 / n));
}

// Copies of the committed models in the build directory (a disk file system,
// where /tmp may be a tmpfs without O_DIRECT), their pages dropped from the
// page cache (written back first: only clean pages can be dropped).
std::string uncached_copy(const std::string& model, const std::string& dir) {
  const fs::path to = fs::path(dir) / fs::path(model).filename();
  fs::create_directories(to);
  for (const auto& e : fs::directory_iterator(model)) {
    fs::copy_file(e.path(), to / e.path().filename());
    const int fd = ::open((to / e.path().filename()).c_str(), O_RDONLY);
    ::fdatasync(fd);
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  }
  return to.string();
}

TEST(MergeOutput, InputsReadByReaderThreadsEqualTheMappedMerge) {
  const std::string dir = std::string(FINMOE_BINARY_DIR) + "/merge-read-" + std::to_string(::getpid());
  struct Cleanup {
    std::string d;
    ~Cleanup() { remove_tree(d); }
  } cleanup{dir};
  const std::string base = uncached_copy(M("base"), dir), a = uncached_copy(M("a"), dir),
                    b = uncached_copy(M("b"), dir);
  const bool has_direct = ChunkFile::open(base + "/model.safetensors", true) != nullptr;
  auto with = [&](const std::string& method, const std::string& pa, const std::string& pb,
                  const std::string& global) {
    return "merge_method: " + method + "\nbase_model: " + base + "\nmodels:\n  - model: " + a +
           "\n    parameters: " + pa + "\n  - model: " + b + "\n    parameters: " + pb + "\n" +
           global;
  };
  const std::vector<std::string> recipes = {
      "merge_method: linear\nmodels:\n  - model: " + a + "\n    parameters: {weight: 0.3}\n"
      "  - model: " + b + "\n    parameters: {weight: [0.5, 0.9]}\ndtype: bfloat16\n",
      with("task_arithmetic", "{weight: 0.7}", "{weight: 1.1}", "parameters: {lambda: 0.8}\n"),
      with("ties", "{weight: 0.7, density: 1}", "{weight: 0.4, density: 1}",
           "out_dtype: bfloat16\n"),
      with("ties", "{weight: 0.7, density: 0.5}", "{weight: 0.4, density: 0.6}", "")};
  for (size_t i = 0; i < recipes.size(); ++i) {
    const bool selects = i == 3;  // TIES below density 1: read through the mapping
    MergeOptions o;
    o.progress = false;
    o.io = MergeOptions::Io::kMmap;
    const std::string mapped = dir + "/mapped" + std::to_string(i);
    const MergeReport m = merge_models(parse_merge_recipe(recipes[i], "r"), mapped, o);
    EXPECT_EQ(m.bytes_streamed, 0u);
    for (MergeOptions::Io io : {MergeOptions::Io::kRead, MergeOptions::Io::kDirect}) {
      if (io == MergeOptions::Io::kDirect && !has_direct) continue;
      o.io = io;
      o.chunk_elements = 1000;  // chunks start at byte offsets no block boundary aligns
      const std::string read = dir + "/read" + std::to_string(i) + (o.io == MergeOptions::Io::kDirect ? "d" : "");
      const MergeReport d = merge_models(parse_merge_recipe(recipes[i], "r"), read, o);
      EXPECT_TRUE(bitwise_equal(load(mapped), load(read))) << recipes[i];
      EXPECT_EQ(d.bytes_read, m.bytes_read) << recipes[i];
      EXPECT_EQ(d.bytes_streamed, selects ? 0 : d.bytes_read) << recipes[i];
    }
  }
  // auto: models whose pages were dropped are read by reader threads; once
  // read whole into the cache, through the mapping. (Megabytes: the first
  // fault of a mapping reads ahead, which caches the committed models whole.)
  const std::string again = dir + "/again";
  auto big_model = [&](const std::string& name, int seed) {
    const std::string m = again + "/" + name;
    fs::create_directories(m);
    fs::copy_file(base + "/config.json", m + "/config.json");
    torch::manual_seed(seed);
    const torch::Tensor e = torch::randn({8192, 256}), h = torch::randn({8192, 256}),
                        n = torch::randn({256});
    write_checkpoint(m, {{"model.embed_tokens.weight", DType::F32, {8192, 256}, e.data_ptr(), 8 << 20},
                         {"lm_head.weight", DType::F32, {8192, 256}, h.data_ptr(), 8 << 20},
                         {"model.norm.weight", DType::F32, {256}, n.data_ptr(), 1024}});
    return uncached_copy(m, again + "/cold");
  };
  const std::string ta = "merge_method: task_arithmetic\nbase_model: " + big_model("base", 1) +
                         "\nmodels:\n  - model: " + big_model("a", 2) +
                         "\n  - model: " + big_model("b", 3) + "\nparameters: {weight: 0.6}\n";
  MergeOptions o;
  o.progress = false;
  const MergeReport c = merge_models(parse_merge_recipe(ta, "r"), dir + "/auto-cold", o);
  EXPECT_EQ(c.bytes_streamed, c.bytes_read);
  for (const std::string& m : {base, a, b}) {  // into the page cache
    std::ifstream in(again + "/cold/" + fs::path(m).filename().string() + "/model.safetensors",
                     std::ios::binary);
    std::vector<char> sink(1 << 20);
    while (in.read(sink.data(), std::streamsize(sink.size()))) {
    }
  }
  const MergeReport w = merge_models(parse_merge_recipe(ta, "r"), dir + "/auto-warm", o);
  EXPECT_EQ(w.bytes_streamed, 0u);
  EXPECT_TRUE(bitwise_equal(load(dir + "/auto-cold"), load(dir + "/auto-warm")));

  // --io direct where the file system refuses O_DIRECT (a tmpfs): an error naming the file
  const std::string shm = "/dev/shm/finmoe-merge-read-" + std::to_string(::getpid());
  if (fs::is_directory("/dev/shm")) {
    struct ShmCleanup {
      std::string d;
      ~ShmCleanup() { remove_tree(d); }
    } shm_cleanup{shm};
    fs::create_directories(shm);
    fs::copy(M("a"), shm + "/a");
    if (!ChunkFile::open(shm + "/a/model.safetensors", true)) {
      o.io = MergeOptions::Io::kDirect;
      const std::string msg = message_of([&] {
        merge_models(parse_merge_recipe("merge_method: linear\nmodels:\n  - model: " + shm +
                                            "/a\n    parameters: {weight: 1}\n",
                                        "r"),
                     dir + "/shm-out", o);
      });
      EXPECT_NE(msg.find(shm + "/a/model.safetensors"), std::string::npos) << msg;
      EXPECT_NE(msg.find("O_DIRECT"), std::string::npos) << msg;
      EXPECT_FALSE(fs::exists(dir + "/shm-out"));
    }
  }
}

// ---- chat vector -------------------------------------------------------------------

TEST(MergeChatVector, OnBaseBaseInstructReturnsInstruct) {
  TempDir tmp;
  MergeOptions o;
  o.progress = false;
  merge_models(chat_vector_recipe({M("base"), M("base"), M("b")}), tmp.str() + "/out", o);
  EXPECT_LT(max_diff(load(tmp.str() + "/out"), load(M("b"))), 1e-6);
}

TEST(MergeChatVector, IsDomainPlusScaledInstructionVector) {
  TempDir tmp;
  MergeOptions o;
  o.progress = false;
  ChatVectorOptions c{M("base"), M("a"), M("b"), 0.8, 1.25, false};
  merge_models(chat_vector_recipe(c), tmp.str() + "/out", o);
  const Tensors out = load(tmp.str() + "/out"), base = load(M("base")), a = load(M("a")),
                b = load(M("b"));
  double worst = 0;
  for (const auto& [n, t] : base) {
    auto want = t + 0.8 * (a.at(n) - t) + 1.25 * (b.at(n) - t);  // float64
    worst = std::max(worst, (out.at(n) - want).abs().max().item<double>());
  }
  EXPECT_LT(worst, 2e-6);
}

TEST(MergeChatVector, KeepsTheInstructRowsOfSpecialTokens) {
  TempDir tmp;
  // the instruct model with a tokenizer whose tokens 3 and 60 are special
  const std::string inst = tmp.str() + "/inst";
  fs::create_directories(inst);
  for (const char* f : {"config.json", "model.safetensors"})
    fs::copy_file(M("b") + "/" + f, inst + "/" + f);
  write_json_file(inst + "/tokenizer.json",
                  {{"added_tokens",
                    {{{"id", 3}, {"content", "<|im_start|>"}, {"special", true}},
                     {{"id", 60}, {"content", "<|im_end|>"}, {"special", true}},
                     {{"id", 10}, {"content", "word"}, {"special", false}}}}});
  MergeOptions o;
  o.progress = false;
  merge_models(chat_vector_recipe({M("base"), M("a"), inst, 1.0, 1.0, true}), tmp.str() + "/out",
               o);
  const Tensors out = load(tmp.str() + "/out"), b = load(M("b")), base = load(M("base")),
                a = load(M("a"));
  for (const std::string n : {"model.embed_tokens.weight", "lm_head.weight"}) {
    EXPECT_TRUE(torch::equal(out.at(n)[3], b.at(n)[3])) << n;
    EXPECT_TRUE(torch::equal(out.at(n)[60], b.at(n)[60])) << n;
    auto merged10 = a.at(n)[10] + b.at(n)[10] - base.at(n)[10];
    EXPECT_LT((out.at(n)[10] - merged10).abs().max().item<double>(), 2e-6) << n;
  }
  EXPECT_TRUE(fs::exists(tmp.str() + "/out/tokenizer.json"));  // the instruct tokenizer
}

// ---- MoE checkpoints and ESFT deltas -------------------------------------------------

class MergeMoE : public ::testing::TestWithParam<std::string> {};

TEST_P(MergeMoE, LinearMergeIsPerExpertTensorAndLoads) {
  TempDir tmp;
  const ModelConfig c = test::tiny_config(GetParam());
  for (uint64_t seed : {1, 2}) {
    Transformer m(c);
    init_random(m, seed);
    save_model(m, tmp.str() + "/m" + std::to_string(seed));
  }
  run("merge_method: linear\nmodels:\n  - model: " + tmp.str() + "/m1\n    parameters: {weight: 1}\n"
      "  - model: " + tmp.str() + "/m2\n    parameters: {weight: 3}\n",
      tmp.str() + "/out");
  const Tensors out = load(tmp.str() + "/out"), x = load(tmp.str() + "/m1"),
                y = load(tmp.str() + "/m2");
  ASSERT_EQ(out.size(), x.size());
  int experts = 0;
  double worst = 0;
  for (const auto& [n, t] : x) {
    experts += n.find(".experts.") != std::string::npos;
    worst = std::max(worst, (out.at(n) - (0.25 * t + 0.75 * y.at(n))).abs().max().item<double>());
  }
  EXPECT_GT(experts, 0);
  EXPECT_LT(worst, 1e-6);
  Transformer merged = load_model(tmp.str() + "/out", {.dtype = torch::kFloat32});
  EXPECT_EQ(merged.config().model_type, c.model_type);
  torch::NoGradGuard g;
  EXPECT_TRUE(merged.forward(torch::tensor({{1, 5, 9, 2}}, torch::kInt64)).isfinite().all().item<bool>());
}

INSTANTIATE_TEST_SUITE_P(Architectures, MergeMoE,
                         ::testing::Values("mixtral", "qwen2_moe", "finer_moe", "finmoe_dense",
                                           "deepseek_v3"));

TEST(MergeEsft, DeltasOfTasksWithDisjointExpertsMergeWithoutInterference) {
  TempDir tmp;
  const std::string base = tmp.str() + "/base";
  {
    Transformer m(test::tiny_config("mixtral"));
    init_random(m, 11);
    save_model(m, base);
  }
  // two "trained" tasks: each moves only its own experts
  auto task = [&](const std::string& dir, ExpertConfig cfg, double shift) {
    Transformer m = load_model(base, {.dtype = torch::kFloat32});
    torch::NoGradGuard g;
    for (auto& [n, p] : m.named_parameters())
      if (esft_trains(cfg, n)) p.add_(shift);
    save_esft_delta(m, cfg, base, dir);
    return cfg;
  };
  ExpertConfig ca, cb;
  ca.experts[0] = {1};
  cb.experts[0] = {2};
  cb.experts[1] = {0, 3};
  task(tmp.str() + "/da", ca, 0.25);
  task(tmp.str() + "/db", cb, -0.5);
  run("merge_method: ties\nbase_model: " + base + "\nmodels:\n  - model: " + tmp.str() +
          "/da\n    parameters: {weight: 1}\n  - model: " + tmp.str() +
          "/db\n    parameters: {weight: 1}\nparameters: {normalize: false}\n",
      tmp.str() + "/out");
  const Tensors out = load(tmp.str() + "/out"), b = load(base);
  int moved = 0;
  for (const auto& [n, t] : b) {
    const double want = esft_trains(ca, n) ? 0.25 : esft_trains(cb, n) ? -0.5 : 0.0;
    moved += want != 0;
    EXPECT_LT((out.at(n) - t - want).abs().max().item<double>(), 1e-6) << n;
  }
  EXPECT_EQ(moved, 4 * 3);  // four experts (one of task a, three of b), w1 w2 w3 each
}

TEST(MergeEsft, EachTaskKeepsItsLogitsWhereTokensRouteToItsOwnExperts) {
  TempDir tmp;
  nlohmann::json cj = test::tiny_config("mixtral").to_json();
  cj["num_local_experts"] = 8;  // top-2 of 8: a short text leaves experts unused
  const ModelConfig c = ModelConfig::from_json(cj, "tiny");
  const std::string base = tmp.str() + "/base";
  {
    Transformer m(c);
    init_random(m, 21);
    save_model(m, base);
  }
  const auto tokens = torch::tensor({{7, 42, 99}}, torch::kInt64);
  // the experts each MoE layer uses for `tokens`
  auto used = [&](const std::string& dir) {
    Transformer m = load_model(dir, {.dtype = torch::kFloat32});
    std::vector<RouterOutput> routers;
    torch::NoGradGuard g;
    m.forward(tokens, {.router_outputs = &routers});
    std::map<int64_t, std::set<int64_t>> out;
    for (const auto& r : routers) {
      auto idx = r.indices.reshape(-1);
      for (int64_t i = 0; i < idx.numel(); ++i) out[r.layer].insert(idx[i].item<int64_t>());
    }
    return out;
  };
  auto task = [&](const std::string& dir, const ExpertConfig& cfg, double shift) {
    Transformer m = load_model(base, {.dtype = torch::kFloat32});
    torch::NoGradGuard g;
    for (auto& [n, p] : m.named_parameters())
      if (esft_trains(cfg, n)) p.add_(shift);
    save_esft_delta(m, cfg, base, dir);
  };
  auto logits = [&](const std::string& dir) {
    Transformer m = load_model(dir, {.dtype = torch::kFloat32});
    torch::NoGradGuard g;
    return m.forward(tokens);
  };
  // task a trains an expert the text uses; task b only experts a's model leaves unused
  ExpertConfig ca, cb;
  ca.experts[0] = {*used(base).at(0).begin()};
  task(tmp.str() + "/da", ca, 0.25);
  for (const auto& [layer, experts] : used(tmp.str() + "/da"))
    for (int64_t e = 0; e < 8; ++e)
      if (!experts.count(e)) cb.experts[layer].push_back(e);
  ASSERT_FALSE(cb.experts.empty());
  task(tmp.str() + "/db", cb, -0.5);
  run("merge_method: ties\nbase_model: " + base + "\nmodels:\n  - model: " + tmp.str() +
          "/da\n    parameters: {weight: 1}\n  - model: " + tmp.str() +
          "/db\n    parameters: {weight: 1}\nparameters: {normalize: false}\n",
      tmp.str() + "/out");
  const auto merged = logits(tmp.str() + "/out"), a = logits(tmp.str() + "/da");
  EXPECT_GT((a - logits(base)).abs().max().item<double>(), 1e-3);  // task a shows
  EXPECT_LT((merged - a).abs().max().item<double>(), 1e-5);         // b does not interfere
}

// ---- bad input ------------------------------------------------------------------------

// A copy of model a whose tensors pass through `edit` (nullopt drops one) and
// whose config.json passes through `edit_config`.
std::string variant(const TempDir& tmp, const std::string& name,
                    const std::function<std::optional<torch::Tensor>(const std::string&, torch::Tensor)>& edit,
                    const std::function<void(nlohmann::json&)>& edit_config = {},
                    const std::string& from = M("a")) {
  const std::string dir = tmp.str() + "/" + name;
  fs::create_directories(dir);
  const Tensors a = load(from);
  std::vector<torch::Tensor> keep;
  std::vector<TensorData> td;
  for (const auto& [n, t] : a) {
    auto e = edit(n, t.to(torch::kFloat32).contiguous());
    if (!e) continue;
    keep.push_back(e->contiguous());
    td.push_back({n, DType::F32, keep.back().sizes().vec(), keep.back().data_ptr(),
                  size_t(keep.back().numel()) * 4});
  }
  write_checkpoint(dir, td);
  nlohmann::json cfg = read_json_file(from + "/config.json");
  if (edit_config) edit_config(cfg);
  write_json_file(dir + "/config.json", cfg);
  return dir;
}

void expect_nothing_left(const TempDir& tmp, const std::string& out) {
  EXPECT_FALSE(fs::exists(out)) << out;
  for (const auto& e : fs::directory_iterator(tmp.path))
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
}

std::string linear_of(const std::string& x, const std::string& y) {
  return "merge_method: linear\nmodels:\n  - model: " + x + "\n    parameters: {weight: 1}\n"
         "  - model: " + y + "\n    parameters: {weight: 1}\n";
}

TEST(MergeBadInput, DifferentArchitecturesAreNamed) {
  TempDir tmp;
  const std::string m = variant(tmp, "mistral", [](auto&, auto t) { return t; },
                                [](nlohmann::json& c) { c["model_type"] = "mistral"; });
  const std::string out = tmp.str() + "/out";
  const std::string e = message_of([&] { run(linear_of(M("a"), m), out); });
  EXPECT_CONTAINS(e, "mistral");
  EXPECT_CONTAINS(e, "llama");
  EXPECT_CONTAINS(e, m);
  expect_nothing_left(tmp, out);
}

TEST(MergeBadInput, DifferentVocabulariesAndShapesAreNamed) {
  TempDir tmp;
  const std::string v = variant(
      tmp, "vocab70",
      [](const std::string& n, torch::Tensor t) -> std::optional<torch::Tensor> {
        if (n.find("embed_tokens") != std::string::npos || n.find("lm_head") != std::string::npos)
          return torch::cat({t, t.narrow(0, 0, 6)});
        return t;
      },
      [](nlohmann::json& c) { c["vocab_size"] = 70; });
  const std::string out = tmp.str() + "/out";
  std::string e = message_of([&] { run(linear_of(M("a"), v), out); });
  EXPECT_CONTAINS(e, "lm_head.weight");  // the first tensor in name order
  EXPECT_CONTAINS(e, "[70, 16]");
  EXPECT_CONTAINS(e, "vocabularies differ");
  EXPECT_CONTAINS(e, v);
  // tokenizer_source: base cannot map rows without the models' tokenizer.json
  e = message_of([&] { run(linear_of(M("a"), v) + "tokenizer_source: base\n", out); });
  EXPECT_CONTAINS(e, "vocabularies differ");
  const std::string s = variant(tmp, "wide",
                                [](const std::string& n, torch::Tensor t) -> std::optional<torch::Tensor> {
                                  return n == "model.layers.1.mlp.up_proj.weight" ? t.narrow(0, 0, 16) : t;
                                });
  e = message_of([&] { run(linear_of(M("a"), s), out); });
  EXPECT_CONTAINS(e, "model.layers.1.mlp.up_proj.weight");
  EXPECT_CONTAINS(e, "[16, 16]");
  expect_nothing_left(tmp, out);
}

TEST(MergeBadInput, AMissingTensorIsNamedWithItsModel) {
  TempDir tmp;
  const std::string m = variant(tmp, "missing",
                                [](const std::string& n, torch::Tensor t) -> std::optional<torch::Tensor> {
                                  if (n == "model.layers.2.self_attn.k_proj.weight") return std::nullopt;
                                  return t;
                                });
  const std::string out = tmp.str() + "/out";
  for (const std::string& yaml : {linear_of(M("a"), m), linear_of(m, M("a"))}) {
    const std::string e = message_of([&] { run(yaml, out); });
    EXPECT_CONTAINS(e, "model.layers.2.self_attn.k_proj.weight");
    EXPECT_CONTAINS(e, "missing");
    EXPECT_CONTAINS(e, m);
  }
  expect_nothing_left(tmp, out);
}

TEST(MergeBadInput, DensityOutsideZeroOneAndZeroWeightSumsAreRefused) {
  TempDir tmp;
  const std::string out = tmp.str() + "/out";
  for (const std::string d : {"0", "1.5", "-0.2"}) {
    const std::string e = message_of(
        [&] { run(two_models("ties", "{weight: 1, density: " + d + "}", "{weight: 1}"), out); });
    EXPECT_CONTAINS(e, "density");
    EXPECT_CONTAINS(e, "(0, 1]");
    EXPECT_CONTAINS(e, M("a"));
  }
  std::string e = message_of([&] {
    run("merge_method: linear\nmodels:\n  - model: " + M("a") + "\n    parameters: {weight: 1}\n"
        "  - model: " + M("b") + "\n    parameters: {weight: -1}\n", out);
  });
  EXPECT_CONTAINS(e, "sum to 0");
  EXPECT_CONTAINS(e, "normalize");
  e = message_of([&] {
    run(two_models("task_arithmetic", "{weight: 0.5}", "{weight: -0.5}", "parameters: {normalize: true}\n"), out);
  });
  EXPECT_CONTAINS(e, "sum to 0");
  // without normalize the same weights are fine
  run(two_models("task_arithmetic", "{weight: 0.5}", "{weight: -0.5}"), tmp.str() + "/ok");
  fs::remove_all(tmp.str() + "/ok");
  e = message_of([&] { run(two_models("ties", "{density: 0.5}", "{weight: 1}"), out); });
  EXPECT_CONTAINS(e, "'weight' is missing");
  EXPECT_CONTAINS(e, M("a"));
  expect_nothing_left(tmp, out);
}

TEST(MergeBadInput, AnExistingOutIsNeverTouched) {
  TempDir tmp;
  const std::string out = tmp.str() + "/out";
  fs::create_directories(out);
  write_file_atomic(out + "/keep.txt", "mine");
  const std::string e = message_of([&] { run(linear_of(M("a"), M("b")), out); });
  EXPECT_CONTAINS(e, "exists");
  EXPECT_EQ(std::distance(fs::directory_iterator(out), fs::directory_iterator{}), 1);
}

TEST(MergeBadInput, UnknownAndUnsupportedKeysAreNamed) {
  const std::string models = "models:\n  - model: x\n    parameters: {weight: 1}\n";
  EXPECT_CONTAINS(message_of([&] { parse_merge_recipe("merge_method: linear\nfoo: 1\n" + models, "r.yaml"); }),
                  "r.yaml:2: foo: unknown key");
  // modules: one of models/slices/modules; the only module is "default"
  EXPECT_CONTAINS(message_of([&] { parse_merge_recipe("merge_method: linear\nmodules: {}\n" + models, "r.yaml"); }),
                  "r.yaml:2: modules: exactly one of 'models', 'slices' and 'modules'");
  EXPECT_CONTAINS(message_of([&] {
                    parse_merge_recipe("merge_method: linear\nmodules:\n  vision_tower: {models: [{model: x}]}\n", "r.yaml");
                  }),
                  "r.yaml:3: modules.vision_tower: unknown module");
  EXPECT_CONTAINS(message_of([&] {
                    parse_merge_recipe("merge_method: linear\nmodules:\n  default: {parameters: {weight: 1}}\n", "r.yaml");
                  }),
                  "modules.default.models or modules.default.slices: exactly one must be given");
  EXPECT_CONTAINS(message_of([&] {
                    parse_merge_recipe("merge_method: linear\nmodules:\n  default: {models: [{model: x}], lora: 1}\n", "r.yaml");
                  }),
                  "modules.default.lora: unknown key");
  EXPECT_CONTAINS(message_of([&] {
                    parse_merge_recipe("merge_method: linear\nmodels:\n  - model: x\n    parameters: {densty: 1}\n", "r.yaml");
                  }),
                  "takes no parameter 'densty'");
  EXPECT_CONTAINS(message_of([&] { parse_merge_recipe("merge_method: frankenstein\n" + models, "r.yaml"); }),
                  "'frankenstein' is not one finmoe implements");
  EXPECT_CONTAINS(message_of([&] { parse_merge_recipe("merge_method: ties\n" + models, "r.yaml"); }),
                  "needs base_model");
  EXPECT_CONTAINS(message_of([&] { parse_merge_recipe("merge_method: linear\ndtype: int4\n" + models, "r.yaml"); }),
                  "dtype");
  EXPECT_CONTAINS(message_of([&] { parse_merge_recipe("merge_method: linear\n" + models + "tokenizer_source: \"\"\n", "r.yaml"); }),
                  "tokenizer_source: expected union, base or a model");
  EXPECT_CONTAINS(message_of([&] { parse_merge_recipe(std::string(100, '[') + "\n", "deep.yaml"); }),
                  "deep.yaml");
  EXPECT_CONTAINS(message_of([&] { parse_merge_recipe("merge_method: linear\n", "r.yaml"); }),
                  "exactly one of 'models', 'slices' and 'modules' must be given");
}

TEST(MergeBadInput, SlicesOfAModelWithAPerLayerLayoutAreRefused) {
  TempDir tmp;
  Transformer m(test::tiny_config("qwen2_moe"));  // mlp_only_layers: [0]
  init_random(m, 3);
  save_model(m, tmp.str() + "/moe");
  const std::string out = tmp.str() + "/out";
  const std::string e = message_of([&] {
    run("merge_method: passthrough\nslices:\n  - sources:\n      - model: " + tmp.str() +
            "/moe\n        layer_range: [1, 2]\n",
        out);
  });
  EXPECT_CONTAINS(e, "mlp_only_layers");
  expect_nothing_left(tmp, out);
}

TEST(MergeBadInput, SlerpNeedsExactlyOneModelBesidesTheBase) {
  TempDir tmp;
  const std::string e = message_of([&] {
    run(two_models("slerp", "{}", "{}", "parameters: {t: 0.5}\n"), tmp.str() + "/out");
  });
  EXPECT_CONTAINS(e, "slerp needs 1 model(s) besides the base, got 2");
}

TEST(MergeChatVector, AnInstructModelWithMoreVocabularyRowsKeepsItsNewRows) {
  TempDir tmp;
  // the instruct model added 4 chat tokens (ids 64..67) to the base's 64
  const std::string inst = variant(
      tmp, "inst",
      [](const std::string& n, torch::Tensor t) -> std::optional<torch::Tensor> {
        if (n.find("embed_tokens") != std::string::npos || n.find("lm_head") != std::string::npos)
          return torch::cat({t, t.narrow(0, 0, 4) * -2});
        return t;
      },
      [](nlohmann::json& c) { c["vocab_size"] = 68; }, M("b"));
  nlohmann::json added = nlohmann::json::array();
  for (int id : {3, 64, 65, 66, 67}) added.push_back({{"id", id}, {"special", true}});
  write_json_file(inst + "/tokenizer.json", {{"added_tokens", added}});
  const std::string out = tmp.str() + "/out";
  MergeOptions o;
  o.progress = false;
  // without keeping the instruct rows the vocabularies do not merge
  EXPECT_CONTAINS(message_of([&] {
                    merge_models(chat_vector_recipe({M("base"), M("a"), inst}), out, o);
                  }),
                  "vocabularies differ");
  merge_models(chat_vector_recipe({M("base"), M("a"), inst, 1.0, 1.0, true}), out, o);
  const Tensors got = load(out), base = load(M("base")), a = load(M("a")), b = load(inst);
  for (const std::string n : {"model.embed_tokens.weight", "lm_head.weight"}) {
    ASSERT_EQ(got.at(n).size(0), 68) << n;
    EXPECT_TRUE(torch::equal(got.at(n).narrow(0, 64, 4), b.at(n).narrow(0, 64, 4))) << n;
    EXPECT_TRUE(torch::equal(got.at(n)[3], b.at(n)[3])) << n;
    auto merged = a.at(n) + b.at(n).narrow(0, 0, 64) - base.at(n);  // CPT + (I - B)
    EXPECT_LT((got.at(n).narrow(0, 10, 50) - merged.narrow(0, 10, 50)).abs().max().item<double>(),
              2e-6)
        << n;
  }
  EXPECT_EQ(read_json_file(out + "/config.json")["vocab_size"], 68);
  Transformer m = load_model(out, {.dtype = torch::kFloat32});
  EXPECT_EQ(m.config().vocab_size, 68);
}

// Live (labelled; FINMOE_LIVE_MERGEKIT=1 and FINMOE_MERGEKIT_PYTHON, a Python
// with mergekit and transformers): fresh random models merged by mergekit and
// by the finmoe binary agree, and finmoe's output loads in transformers.
TEST(MergeLive, FinmoeEqualsALiveMergekitAndLoadsInTransformers) {
  const char* live = std::getenv("FINMOE_LIVE_MERGEKIT");
  const char* py = std::getenv("FINMOE_MERGEKIT_PYTHON");
  if (!live || std::string(live) != "1" || !py)
    GTEST_SKIP() << "set FINMOE_LIVE_MERGEKIT=1 and FINMOE_MERGEKIT_PYTHON (a Python with mergekit)";
  TempDir tmp;
  const std::string cmd = std::string(py) + " " + FINMOE_SOURCE_DIR +
                          "/tests/ref/check_mergekit_live.py " + FINMOE_CLI_PATH + " " + tmp.str();
  const int rc = WEXITSTATUS(std::system(cmd.c_str()));
  if (rc == 77) GTEST_SKIP() << "mergekit or transformers missing in FINMOE_MERGEKIT_PYTHON";
  EXPECT_EQ(rc, 0) << cmd;
}

// ---- the command line ------------------------------------------------------------------

int cli(const std::string& args) {
  const int rc = std::system((std::string(FINMOE_CLI_PATH) + " merge " + args + " 2>/dev/null >/dev/null").c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

TEST(MergeCli, RecipesAndTheChatVectorPresetRunBadInputExitsTwo) {
  TempDir tmp;
  const std::string recipe = std::string(FINMOE_TEST_DATA_DIR) + "/merge/ties.yaml";
  EXPECT_EQ(cli(recipe + " " + tmp.str() + "/ties --json"), 0);
  EXPECT_TRUE(fs::exists(tmp.str() + "/ties/model.safetensors"));
  EXPECT_EQ(cli(recipe + " " + tmp.str() + "/ties"), 2);  // exists
  EXPECT_EQ(cli("--chat-vector --base " + M("base") + " --domain " + M("a") + " --instruct " +
                M("b") + " " + tmp.str() + "/cv"),
            0);
  EXPECT_LT(max_diff(load(tmp.str() + "/cv"), [&] {
              Tensors want = load(M("a")), base = load(M("base")), b = load(M("b"));
              for (auto& [n, t] : want) t = t + b.at(n) - base.at(n);
              return want;
            }()),
            2e-6);
  write_file_atomic(tmp.str() + "/bad.yaml", "merge_method: linear\nmodelz: []\n");
  EXPECT_EQ(cli(tmp.str() + "/bad.yaml " + tmp.str() + "/bad"), 2);
  EXPECT_FALSE(fs::exists(tmp.str() + "/bad"));
}

// `finmoe` is a front end without libtorch: it merges what the fused kernel
// covers itself and executes finmoe-engine for everything else. With the
// engine made unreachable (FINMOE_ENGINE), only the front end's own merges run.
TEST(MergeCli, TheFrontEndMergesFusedRecipesItselfAndHandsTheRestToTheEngine) {
  TempDir tmp;
  const std::string dir = std::string(FINMOE_TEST_DATA_DIR) + "/merge/";
  auto front = [&](const std::string& engine, const std::string& args) {
    const int rc = std::system(("FINMOE_ENGINE='" + engine + "' " + FINMOE_CLI_PATH + " " + args +
                                " >/dev/null 2>" + tmp.str() + "/stderr")
                                   .c_str());
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  };
  const std::string none = tmp.str() + "/no-engine";
  // ties (fused) without the engine: the library's bits
  ASSERT_EQ(front(none, "merge " + dir + "ties.yaml " + tmp.str() + "/front --json"), 0);
  MergeOptions o;
  o.progress = false;
  merge_models(load_merge_recipe(dir + "ties.yaml"), tmp.str() + "/library", o);
  EXPECT_TRUE(bitwise_equal(load(tmp.str() + "/front"), load(tmp.str() + "/library")));
  // slerp needs libtorch: the engine, which is missing; nothing written
  EXPECT_EQ(front(none, "merge " + dir + "slerp.yaml " + tmp.str() + "/slerp"), 1);
  std::ifstream err(tmp.str() + "/stderr");
  const std::string message((std::istreambuf_iterator<char>(err)), std::istreambuf_iterator<char>());
  EXPECT_NE(message.find("cannot run the engine " + none), std::string::npos) << message;
  EXPECT_FALSE(fs::exists(tmp.str() + "/slerp"));
  EXPECT_EQ(front(none, "merge --help"), 1);  // help is the engine's too
  EXPECT_EQ(front(none, "merge " + dir + "ties.yaml " + tmp.str() + "/front"), 2);  // OUT exists
  // with the engine: slerp runs
  const std::string engine = (fs::path(FINMOE_CLI_PATH).parent_path() / "finmoe-engine").string();
  EXPECT_EQ(front(engine, "merge " + dir + "slerp.yaml " + tmp.str() + "/slerp"), 0);
  EXPECT_TRUE(fs::exists(tmp.str() + "/slerp/model.safetensors"));
}

// The output is written by a thread behind the merge: a write that fails
// (here the file size limit, `ulimit -f`, with SIGXFSZ ignored) still ends
// the merge with an error naming the file, and nothing is left in OUT's
// directory.
TEST(MergeCli, AFailedWriteBehindTheMergeIsAnErrorAndLeavesNothing) {
  TempDir tmp;
  const std::string out = tmp.str() + "/out";
  const std::string cmd = "bash -c \"trap '' XFSZ; ulimit -f 8; " + std::string(FINMOE_CLI_PATH) +
                          " merge " + FINMOE_TEST_DATA_DIR + "/merge/ties.yaml " + out +
                          "\" >/dev/null 2>" + tmp.str() + "/stderr";
  const int rc = std::system(cmd.c_str());
  EXPECT_EQ(WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, 2) << cmd;
  std::ifstream err(tmp.str() + "/stderr");
  const std::string message((std::istreambuf_iterator<char>(err)), std::istreambuf_iterator<char>());
  EXPECT_NE(message.find("cannot write"), std::string::npos) << message;
  EXPECT_NE(message.find("model.safetensors"), std::string::npos) << message;
  std::vector<std::string> left;
  for (const auto& e : fs::directory_iterator(tmp.str()))
    if (e.path().filename() != "stderr") left.push_back(e.path().filename().string());
  EXPECT_TRUE(left.empty()) << left.front();
}

}  // namespace
}  // namespace finmoe
