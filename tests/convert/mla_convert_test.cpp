// GQA/MHA -> MLA conversion (finmoe/mla_convert.h) on tiny random models
// made here (hidden 64, head_dim 16, 2 layers): full ranks reproduce the
// source logits, truncated latents degrade in order, the layer-adaptive
// search agrees with the uniform runs and the probe it is compared with,
// the output is a deepseek_v3 checkpoint, and bad input writes nothing.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>

#include <torch/torch.h>

#include "../expect_error.h"
#include "../model/test_util.h"
#include "../tolerance.h"
#include "finmoe/error.h"
#include "finmoe/mla_convert.h"
#include "finmoe/model.h"
#include "model/transformer.h"

namespace finmoe {
namespace {

namespace fs = std::filesystem;
using test::message_of;
using test::TempDir;

constexpr int64_t kVocab = 96;

ModelConfig tiny(const std::string& type, int64_t kv_heads, int64_t layers = 2) {
  nlohmann::json j = {{"model_type", type},
                      {"vocab_size", kVocab},
                      {"hidden_size", 64},
                      {"intermediate_size", 96},
                      {"num_hidden_layers", layers},
                      {"num_attention_heads", 4},
                      {"num_key_value_heads", kv_heads},
                      {"max_position_embeddings", 128},
                      {"rms_norm_eps", 1e-5},
                      {"rope_theta", 10000.0},
                      {"tie_word_embeddings", type == "qwen2"}};
  return ModelConfig::from_json(j, "tiny");
}

// Random weights with the norms away from 1, saved in `dir`.
Transformer make_source(const ModelConfig& c, const std::string& dir, uint64_t seed) {
  Transformer m(c);
  init_random(m, seed);
  torch::NoGradGuard g;
  auto gen = at::detail::createCPUGenerator(seed + 100);
  for (auto& [name, t] : m.named_parameters()) {
    if (name.ends_with("layernorm.weight") || name == "model.norm.weight")
      t.uniform_(0.5, 1.5, gen);
    else if (name.ends_with(".bias"))
      t.copy_(at::normal(0.0, 0.5, t.sizes(), gen));
    else
      t.copy_(at::normal(0.0, 0.15, t.sizes(), gen));
  }
  save_model(m, dir);
  return m;
}

std::vector<std::vector<int32_t>> calibration(int64_t n, int64_t len, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  auto t = at::randint(kVocab, {n, len}, gen, torch::kInt64);
  std::vector<std::vector<int32_t>> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < len; ++j) out[size_t(i)].push_back(int32_t(t[i][j].item<int64_t>()));
  return out;
}

torch::Tensor probe_tokens() {
  auto gen = at::detail::createCPUGenerator(7);
  return at::randint(kVocab, {2, 40}, gen, torch::kInt64);
}

torch::Tensor logits_of(const std::string& dir) {
  Transformer m = load_model(dir, {torch::kFloat32});
  torch::NoGradGuard g;
  return m.forward(probe_tokens());
}

MlaConvertOptions quiet(MlaConvertOptions o) {
  o.progress = false;
  o.eval_sequences = 4;
  return o;
}

TEST(MlaConvert, FullRanksReproduceMqaSourceLogits) {
  TempDir src, out;
  const ModelConfig c = tiny("llama", /*kv_heads=*/1);
  make_source(c, src.str(), 1);
  // one kv head: one rotary pair per frequency, all kept (rope 16, FreqFold 1);
  // the latent holds all of [K_nope; V] = 16 dims + the anchor
  MlaConvertOptions o;
  o.rope_dim = 16;
  o.freqfold = 1;
  o.kv_lora_rank = 17;
  const auto r = mla_convert(src.str(), out.str(), calibration(12, 32, 2), quiet(o));
  EXPECT_EQ(r.config.model_type, "deepseek_v3");
  EXPECT_EQ(r.kv_values_source, 2 * 16);
  EXPECT_EQ(r.kv_values_converted, 17 + 16);
  EXPECT_TRUE(test::AllClose(logits_of(out.str()), logits_of(src.str()), 1e-4));
  EXPECT_NEAR(r.ppl_converted, r.ppl_source, 1e-3 * r.ppl_source);
  EXPECT_NEAR(r.ppl_partial_rope, r.ppl_source, 1e-3 * r.ppl_source);
}

// bfloat16 output: the anchor and its large norm weight round like any
// weight; the converted model stays as close to the source as bf16 allows.
TEST(MlaConvert, BFloat16OutputKeepsTheSourceLogitsWithinBf16Rounding) {
  TempDir src, out;
  make_source(tiny("llama", /*kv_heads=*/1), src.str(), 31);
  MlaConvertOptions o;
  o.rope_dim = 16;
  o.freqfold = 1;
  o.kv_lora_rank = 17;
  o.dtype = "bfloat16";
  const auto r = mla_convert(src.str(), out.str(), calibration(12, 32, 32), quiet(o));
  EXPECT_EQ(ModelConfig::load(out.str()).torch_dtype, "bfloat16");
  // float32 compute over bf16 weights: ~2^-9 relative per weight
  EXPECT_TRUE(test::AllClose(logits_of(out.str()), logits_of(src.str()), 3e-2));
}

// GQA with q/k/v biases (qwen2, tied head): exact when head 1's key is head
// 0's scaled per rotary pair (one complex component per frequency).
class MlaConvertGqa : public ::testing::TestWithParam<std::string> {};

TEST_P(MlaConvertGqa, FullRanksReproduceSourceLogitsWhenPairsAreProportional) {
  TempDir src, out;
  const ModelConfig c = tiny(GetParam(), /*kv_heads=*/2);
  Transformer m = make_source(c, src.str(), 3);
  {
    torch::NoGradGuard g;
    auto& impl = dynamic_cast<TransformerImpl&>(m.module());
    auto gen = at::detail::createCPUGenerator(11);
    for (auto& layer : impl.layer_list) {
      auto& k = layer->self_attn->k_proj;  // [2*16, 64], rotate-half pairs (p, p+8)
      auto lambda =
          torch::empty({8}).uniform_(-2.0, 2.0, gen).repeat({2});  // per pair, both components
      k->weight.narrow(0, 16, 16).copy_(k->weight.narrow(0, 0, 16) * lambda.unsqueeze(1));
      if (k->bias.defined()) k->bias.narrow(0, 16, 16).copy_(k->bias.narrow(0, 0, 16) * lambda);
    }
    save_model(m, src.str());
  }
  MlaConvertOptions o;
  o.rope_dim = 16;
  o.freqfold = 1;
  o.kv_lora_rank = 2 * 32 - 16 + 1;
  const auto r = mla_convert(src.str(), out.str(), calibration(12, 32, 4), quiet(o));
  // a query bias goes through q_a_proj
  EXPECT_EQ(r.config.q_lora_rank, GetParam() == "qwen2" ? 4 * 16 + 1 : 0);
  EXPECT_TRUE(r.config.attention_bias);
  EXPECT_TRUE(test::AllClose(logits_of(out.str()), logits_of(src.str()), 1e-4));
}

INSTANTIATE_TEST_SUITE_P(Sources, MlaConvertGqa, ::testing::Values("llama", "qwen2"));

// tests/data/hf/mla_qwen2_gqa: a qwen2 source made by HF transformers,
// converted by `finmoe mla-convert` at full ranks, and the logits HF
// transformers computed for both (tests/ref/make_mla_reference.py).
TEST(MlaConvert, ConvertedCheckpointMatchesTransformersOnItAndOnTheSource) {
  const std::string dir = test::hf_dir("mla_qwen2_gqa");
  const std::string ref = dir + "/reference.safetensors";
  Transformer m = load_model(dir, {torch::kFloat32});
  torch::NoGradGuard g;
  auto logits = m.forward(test::read_tensor(ref, "input_ids"));
  EXPECT_TRUE(test::AllClose(logits, test::read_tensor(ref, "logits"), 1e-5));
  EXPECT_TRUE(test::AllClose(logits, test::read_tensor(ref, "source_logits"), 1e-4));
}

// Live (needs torch + transformers in FINMOE_PYTHON, e.g. FINMOE_LIVE_HF=1):
// a checkpoint converted here loads in HF transformers with finmoe's logits.
TEST(MlaConvertLive, ConvertedCheckpointLoadsInTransformersWithSameLogits) {
  const char* py = std::getenv("FINMOE_PYTHON");
  if (!py) GTEST_SKIP() << "FINMOE_PYTHON not set";
  if (std::system((std::string(py) + " -c 'import torch, transformers' 2>/dev/null").c_str()) != 0)
    GTEST_SKIP() << "torch/transformers not installed (set FINMOE_LIVE_HF=1 for ./finmoe.sh test)";
  TempDir src, out;
  make_source(tiny("qwen2", 2), src.str(), 21);
  MlaConvertOptions o;
  o.rope_dim = 8;
  o.freqfold = 0;  // adaptive, truncated latent: any converted model must load the same
  o.kv_lora_rank = 24;
  mla_convert(src.str(), out.str(), calibration(8, 32, 22), quiet(o));
  auto ids = probe_tokens().contiguous();
  auto logits = logits_of(out.str()).contiguous();
  const std::string expected = out.str() + "/expected.safetensors";
  write_safetensors(expected, {{"input_ids", DType::I64, ids.sizes().vec(), ids.data_ptr(),
                                size_t(ids.numel()) * 8},
                               {"logits", DType::F32, logits.sizes().vec(), logits.data_ptr(),
                                size_t(logits.numel()) * 4}});
  const std::string cmd = std::string(py) + " " + FINMOE_SOURCE_DIR +
                          "/tests/ref/check_hf_live.py " + out.str() + " " + expected;
  const int rc = WEXITSTATUS(std::system(cmd.c_str()));
  if (rc == 77) GTEST_SKIP() << "reference not available";
  EXPECT_EQ(rc, 0) << cmd;
}

// Generic GQA keys lose RoPE on the components beyond the first per
// frequency: not exact, and the search's candidates differ.
TEST(MlaConvert, GenericGqaIsApproximateAndTruncatedLatentsDegradeInOrder) {
  TempDir src;
  const ModelConfig c = tiny("llama", /*kv_heads=*/2);
  make_source(c, src.str(), 5);
  const auto ref = logits_of(src.str());
  const auto calib = calibration(12, 32, 6);
  std::vector<double> errors;
  for (int64_t rank : {49, 33, 17, 5}) {
    TempDir out;
    MlaConvertOptions o;
    o.rope_dim = 16;
    o.freqfold = 1;
    o.kv_lora_rank = rank;
    mla_convert(src.str(), out.str(), calib, quiet(o));
    errors.push_back((logits_of(out.str()) - ref).pow(2).mean().item<double>());
  }
  EXPECT_GT(errors[0], 1e-8);  // two kv heads: partial RoPE approximates
  for (size_t i = 1; i < errors.size(); ++i)
    EXPECT_GT(errors[i], errors[i - 1]) << "rank step " << i;
}

TEST(MlaConvert, AdaptiveSearchTakesTheBestSizeAndMatchesTheProbe) {
  TempDir src, out;
  const ModelConfig c = tiny("mistral", /*kv_heads=*/2, /*layers=*/3);
  make_source(c, src.str(), 8);
  MlaConvertOptions o;
  o.rope_dim = 8;  // collapse 2: sizes 2, 4, 8
  o.freqfold = 0;
  o.probe = true;
  o.kv_lora_rank = 40;
  const auto r = mla_convert(src.str(), out.str(), calibration(8, 24, 9), quiet(o));
  ASSERT_EQ(r.freqfold_sizes, (std::vector<int64_t>{2, 4, 8}));
  ASSERT_EQ(r.trajectory.size(), 3u);
  ASSERT_EQ(r.probe.size(), 3u);
  // step 1 converts only the last layer: the best uniform first step, and the probe's row
  double best = 1e300;
  int64_t best_ff = 0;
  for (size_t i = 0; i < r.freqfold_sizes.size(); ++i) {
    const int64_t ff = r.freqfold_sizes[i];
    const double first = r.uniform_trajectory.at(ff).front();
    EXPECT_NEAR(r.probe[2][i], first, 1e-9 * first);
    if (first < best) best = first, best_ff = ff;
  }
  EXPECT_EQ(r.trajectory[0].layer, 2);
  EXPECT_EQ(r.trajectory[0].freqfold, best_ff);
  EXPECT_NEAR(r.trajectory[0].ppl, best, 1e-9 * best);
  for (size_t k = 0; k < 3; ++k)
    EXPECT_EQ(r.freqfold[size_t(r.trajectory[k].layer)], r.trajectory[k].freqfold);
  // a uniform run of the chosen sizes is what the adaptive trajectory records
  for (int64_t ff : r.freqfold_sizes)
    if (std::all_of(r.freqfold.begin(), r.freqfold.end(), [&](int64_t x) { return x == ff; })) {
      EXPECT_NEAR(r.uniform_trajectory.at(ff).back(), r.ppl_partial_rope, 1e-9);
    }
  // the report files and the checkpoint
  for (const char* f : {"report.json", "layers.csv", "probe.csv", "probe.svg", "trajectory.svg"})
    EXPECT_TRUE(fs::is_regular_file(out.path / "mla_report" / f)) << f;
  const auto j = read_json_file((out.path / "mla_report" / "report.json").string());
  EXPECT_EQ(j["freqfold_per_layer"].get<std::vector<int64_t>>(), r.freqfold);
  const ModelConfig written = ModelConfig::load(out.str());
  EXPECT_EQ(written.model_type, "deepseek_v3");
  EXPECT_EQ(written.first_k_dense_replace, 3);
  EXPECT_FALSE(written.is_moe());
  EXPECT_EQ(written.kv_lora_rank, 40);
  EXPECT_EQ(written.qk_rope_head_dim, 8);
  EXPECT_EQ(written.qk_nope_head_dim, 16);
  EXPECT_EQ(written.v_head_dim, 16);
  Transformer loaded = load_model(out.str(), {torch::kFloat32});
  torch::NoGradGuard g;
  EXPECT_TRUE(torch::isfinite(loaded.forward(probe_tokens())).all().item<bool>());
}

TEST(MlaConvert, BadInputNamesTheFlagOrKeyAndWritesNothing) {
  TempDir src, tmp;
  const ModelConfig c = tiny("llama", 2);
  make_source(c, src.str(), 12);
  const auto calib = calibration(4, 16, 13);
  const std::string out = (tmp.path / "out").string();
  auto fails = [&](MlaConvertOptions o, const std::string& needle) {
    EXPECT_CONTAINS(message_of([&] { mla_convert(src.str(), out, calib, quiet(o)); }), needle);
    EXPECT_FALSE(fs::exists(out));
    EXPECT_EQ(std::distance(fs::directory_iterator(tmp.path), fs::directory_iterator()), 0);
  };
  MlaConvertOptions o;
  o.freqfold = 1;
  o.rope_dim = 32;
  fails(o, "--rope-dim 32");
  o.rope_dim = 6;
  fails(o, "--rope-dim 6");
  o.rope_dim = 16;
  o.kv_lora_rank = 50;  // [K_nope; V] has 48 dims: 49 at most
  fails(o, "--kv-lora-rank 50");
  o.kv_lora_rank = 0;
  o.freqfold = 3;
  fails(o, "--freqfold 3");
  o.rope_dim = 8;
  o.freqfold = 1;  // collapse 2 needs even sizes
  fails(o, "multiple of head_dim/rope_dim = 2");
  o.freqfold = 0;
  o.max_freqfold = 1;
  fails(o, "--max-freqfold 1");
  o = MlaConvertOptions{};
  o.balance_kv = 1e300;  // would scale K_nope past float range
  fails(o, "--bkv 1e+300");
  auto bad_calib = calib;
  bad_calib[1][3] = int32_t(kVocab);
  EXPECT_CONTAINS(message_of([&] { mla_convert(src.str(), out, bad_calib, quiet({})); }),
                  "outside the vocabulary");
  EXPECT_FALSE(fs::exists(out));

  // sources mla-convert does not take
  for (const std::string variant : {"mixtral", "qwen2_sliding"}) {
    TempDir other;
    Transformer m(test::tiny_config(variant));
    init_random(m, 1);
    save_model(m, other.str());
    EXPECT_CONTAINS(message_of([&] { mla_convert(other.str(), out, calib, quiet({})); }),
                    variant == "mixtral" ? "model_type 'mixtral'" : "sliding_window");
    EXPECT_FALSE(fs::exists(out));
  }
  {
    TempDir other;
    nlohmann::json j = c.to_json();
    j["mlp_bias"] = true;
    Transformer m(ModelConfig::from_json(j));
    init_random(m, 1);
    save_model(m, other.str());
    EXPECT_CONTAINS(message_of([&] { mla_convert(other.str(), out, calib, quiet({})); }),
                    "mlp_bias");
    EXPECT_FALSE(fs::exists(out));
  }
}

}  // namespace
}  // namespace finmoe
