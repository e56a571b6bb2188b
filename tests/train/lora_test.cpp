// LoRA (include/finmoe/lora.h) against PEFT: adapters PEFT saved load here and
// give PEFT's logits, merged and unmerged (tests/ref/make_peft_reference.py);
// adapters finmoe saves have PEFT's keys, shapes and config; a fresh adapter is
// the identity; training moves only the adapter.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <set>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "../expect_error.h"
#include "../model/test_util.h"
#include "../tolerance.h"
#include "finmoe/lora.h"
#include "finmoe/model.h"
#include "finmoe/safetensors.h"
#include "finmoe/train.h"
#include "train_test_util.h"

namespace finmoe {
namespace {

namespace fs = std::filesystem;
using test::message_of;

std::string lora_dir(const std::string& name = "") {
  return std::string(FINMOE_TEST_DATA_DIR) + "/lora" + (name.empty() ? "" : "/" + name);
}
std::string reference() { return lora_dir("reference.safetensors"); }

torch::Tensor reference_logits(const std::string& key) { return test::read_tensor(reference(), key); }

class PeftReference : public ::testing::TestWithParam<std::string> {};

TEST_P(PeftReference, UnmergedAdapterGivesPeftLogits) {
  auto model = load_model(lora_dir("base"), {.dtype = torch::kFloat32,
                                             .device = test::test_device(),
                                             .lora_adapter = lora_dir(GetParam())});
  auto ids = reference_logits("input_ids");
  torch::NoGradGuard no_grad;
  auto logits = model.forward(ids);
  EXPECT_TRUE(test::AllClose(logits, reference_logits(GetParam() + ".logits"), 1e-4, /*floor=*/1.0));
  // the adapter matters: far from the base model's logits
  EXPECT_GT(test::max_abs_diff(logits, reference_logits("base_logits")), 0.5);
}

TEST_P(PeftReference, MergedCheckpointGivesPeftMergedLogits) {
  test::TempDir dir;
  const std::string out = dir.str() + "/merged";
  merge_lora_checkpoint(lora_dir("base"), lora_dir(GetParam()), out);
  // a plain checkpoint: the base's tensor names, no adapter files
  auto reader = CheckpointReader::open(out);
  auto base = CheckpointReader::open(lora_dir("base"));
  EXPECT_EQ(reader.names(), base.names());
  EXPECT_FALSE(fs::exists(out + "/adapter_config.json"));
  EXPECT_TRUE(fs::exists(out + "/generation_config.json"));
  auto model = load_model(out, {.dtype = torch::kFloat32, .device = test::test_device()});
  torch::NoGradGuard no_grad;
  auto logits = model.forward(reference_logits("input_ids"));
  EXPECT_TRUE(test::AllClose(logits, reference_logits(GetParam() + ".merged_logits"), 1e-4, /*floor=*/1.0));
  EXPECT_TRUE(test::AllClose(logits, reference_logits(GetParam() + ".logits"), 1e-4, /*floor=*/1.0));
  // an existing, non-empty OUT is never overwritten
  EXPECT_CONTAINS(message_of([&] { merge_lora_checkpoint(lora_dir("base"), lora_dir(GetParam()), out); }),
                  "not an empty directory");
}

TEST_P(PeftReference, PagedDecodeWithAdapterMatchesForward) {
  // decode batches of a few rows take the CPU kernels; an adapted layer must not
  auto model = load_model(lora_dir("base"), {.dtype = torch::kFloat32,
                                             .lora_adapter = lora_dir(GetParam())});
  auto ids = reference_logits("input_ids")[0];
  auto expected = reference_logits(GetParam() + ".logits")[0];
  const int64_t T = ids.size(0);
  KVCache cache(model, 4, 8);
  for (int64_t t = 0; t < T; ++t) {
    StepBatch b;
    b.tokens = {int32_t(ids[t].item<int64_t>())};
    b.positions = {int32_t(t)};
    b.seqs.push_back({0, 1, t + 1, {0, 1, 2, 3}});
    auto logits = model.step(b, cache);  // [1, V]
    ASSERT_TRUE(test::AllClose(logits[0], expected[t], 1e-4, /*floor=*/1.0)) << "position " << t;
  }
}

INSTANTIATE_TEST_SUITE_P(Adapters, PeftReference, ::testing::Values("all_targets", "rslora_qv"));

TEST(LoraFiles, SavedAdapterHasPeftKeysShapesAndConfig) {
  // load PEFT's adapter, save it with finmoe, compare with PEFT's own files
  auto model = load_model(lora_dir("base"), {.dtype = torch::kFloat32});
  const LoraConfig cfg = load_lora_adapter(model, lora_dir("all_targets"));
  test::TempDir dir;
  const int64_t bytes = save_lora_adapter(model, cfg, dir.str());
  EXPECT_EQ(bytes, int64_t(fs::file_size(dir.str() + "/adapter_model.safetensors")));

  auto ours = SafetensorsFile::open(dir.str() + "/adapter_model.safetensors");
  auto peft = SafetensorsFile::open(lora_dir("all_targets/adapter_model.safetensors"));
  ASSERT_EQ(ours->tensors().size(), peft->tensors().size());
  for (const TensorView& p : peft->tensors()) {
    const TensorView* o = ours->find(p.name);
    ASSERT_NE(o, nullptr) << p.name;
    EXPECT_EQ(o->shape, p.shape) << p.name;
    EXPECT_EQ(o->dtype, p.dtype) << p.name;
    EXPECT_EQ(std::memcmp(o->data, p.data, p.nbytes), 0) << p.name;
  }
  EXPECT_EQ(ours->metadata().at("format"), "pt");

  const auto j = read_json_file(dir.str() + "/adapter_config.json");
  const auto pj = read_json_file(lora_dir("all_targets/adapter_config.json"));
  for (const char* key : {"peft_type", "task_type", "r", "lora_alpha", "lora_dropout", "use_rslora",
                          "use_dora", "bias", "fan_in_fan_out"})
    EXPECT_EQ(j.at(key), pj.at(key)) << key;
  const auto targets = [](const nlohmann::json& t) {
    return t.get<std::set<std::string>>();
  };
  EXPECT_EQ(targets(j.at("target_modules")), targets(pj.at("target_modules")));
  // and it reads back as the same config
  const LoraConfig back = load_lora_config(dir.str());
  EXPECT_EQ(back.r, cfg.r);
  EXPECT_DOUBLE_EQ(back.scaling(), cfg.scaling());
}

TEST(LoraFiles, FreshAdapterHasPeftNamesAndShapesOnAnMoeModel) {
  // PEFT's naming rule on expert layers: "gate_proj" adapts every expert's
  // gate_proj and the shared expert's, never the router "gate"
  Transformer model(test::tiny_config("qwen2_moe"));
  init_random(model, 3);
  LoraConfig cfg;
  cfg.r = 3;
  cfg.target_modules = {"q_proj", "gate_proj"};
  const auto params = add_lora(model, cfg, 7);
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& [n, t] : params) shapes[n] = t.sizes().vec();
  const ModelConfig& c = model.config();
  std::map<std::string, std::vector<int64_t>> want;
  for (const TensorSpec& s : expected_tensors(c)) {
    if (!s.name.ends_with(".weight")) continue;
    const std::string module = s.name.substr(0, s.name.size() - 7);
    if (!module.ends_with(".q_proj") && !module.ends_with(".gate_proj")) continue;
    want[module + ".lora_A.weight"] = {3, s.shape[1]};
    want[module + ".lora_B.weight"] = {s.shape[0], 3};
  }
  EXPECT_EQ(shapes, want);
  EXPECT_TRUE(want.count("model.layers.1.mlp.experts.5.gate_proj.lora_A.weight"));
  EXPECT_TRUE(want.count("model.layers.1.mlp.shared_expert.gate_proj.lora_B.weight"));
  EXPECT_EQ(lora_param_count(model), [&] {
    int64_t n = 0;
    for (const auto& [k, s] : want) n += s[0] * s[1];
    return n;
  }());
  test::TempDir dir;
  save_lora_adapter(model, cfg, dir.str());
  auto f = SafetensorsFile::open(dir.str() + "/adapter_model.safetensors");
  for (const auto& [name, shape] : want) {
    const TensorView* v = f->find("base_model.model." + name);
    ASSERT_NE(v, nullptr) << name;
    EXPECT_EQ(v->shape, shape);
  }
  // named_parameters() stays the checkpoint's names
  for (const auto& [n, t] : model.named_parameters()) EXPECT_EQ(n.find("lora"), std::string::npos);
}

TEST(Lora, FreshAdapterIsTheIdentityWithPeftInit) {
  auto model = load_model(lora_dir("base"), {.dtype = torch::kFloat32});
  auto ids = reference_logits("input_ids");
  LoraConfig cfg;
  cfg.r = 16;
  const auto params = add_lora(model, cfg, 1);
  ASSERT_FALSE(params.empty());
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(test::AllClose(model.forward(ids), reference_logits("base_logits"), 1e-4, /*floor=*/1.0));
  for (const auto& [n, t] : params) {
    EXPECT_TRUE(t.requires_grad()) << n;
    EXPECT_EQ(t.scalar_type(), torch::kFloat32);
    if (n.ends_with("lora_B.weight")) {
      EXPECT_EQ(t.abs().max().item<double>(), 0.0) << n;
    } else {
      // kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)): std = bound/sqrt(3)
      const double bound = 1.0 / std::sqrt(double(t.size(1)));
      EXPECT_LE(t.abs().max().item<double>(), bound) << n;
      EXPECT_GT(t.abs().max().item<double>(), 0.8 * bound) << n;
      EXPECT_NEAR(t.std().item<double>(), bound / std::sqrt(3.0), 0.25 * bound) << n;
    }
  }
  // seeded: the same seed the same A
  auto other = load_model(lora_dir("base"), {.dtype = torch::kFloat32});
  const auto again = add_lora(other, cfg, 1);
  EXPECT_TRUE(torch::equal(again[0].second, params[0].second));
}

TEST(Lora, TrainingMovesOnlyTheAdapterAndMergeKeepsTheResult) {
  auto model = load_model(lora_dir("base"), {.dtype = torch::kFloat32});
  std::map<std::string, torch::Tensor> before;
  for (const auto& [n, t] : model.named_parameters()) before[n] = t.detach().clone();
  LoraConfig cfg;
  cfg.r = 4;
  cfg.alpha = 8;
  cfg.dropout = 0.1;
  const auto params = add_lora(model, cfg, 2);
  std::vector<torch::Tensor> ts;
  for (const auto& [n, t] : params) ts.push_back(t);
  torch::optim::Adam opt(ts, torch::optim::AdamOptions(1e-2));
  auto ids = reference_logits("input_ids");
  for (int s = 0; s < 3; ++s) {
    opt.zero_grad();
    auto logits = model.forward(ids.narrow(1, 0, 11));
    auto loss = torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}),
                                                     ids.narrow(1, 1, 11).reshape({-1}));
    loss.backward();
    opt.step();
  }
  for (const auto& [n, t] : model.named_parameters())
    EXPECT_TRUE(torch::equal(t.detach(), before.at(n))) << n << " moved";
  torch::NoGradGuard no_grad;
  auto adapted = model.forward(ids);  // no autograd: no dropout
  EXPECT_GT(test::max_abs_diff(adapted, reference_logits("base_logits")), 1e-4);
  merge_lora(model);
  EXPECT_TRUE(lora_parameters(model).empty());
  EXPECT_TRUE(test::AllClose(model.forward(ids), adapted, 1e-4, /*floor=*/1.0));
}

TEST(Lora, WeightsReloadInPlaceIntoAttachedAdapters) {
  // resuming training: the optimizer's tensors must stay the adapter's
  Transformer a(test::tiny_config("qwen2"));
  LoraConfig cfg;
  cfg.r = 2;
  cfg.target_modules = {"k_proj", "down_proj"};
  const auto trained = add_lora(a, cfg, 1);
  {
    torch::NoGradGuard g;
    for (const auto& [n, t] : trained) t.normal_();
  }
  test::TempDir dir;
  save_lora_adapter(a, cfg, dir.str());

  Transformer b(test::tiny_config("qwen2"));
  const auto fresh = add_lora(b, cfg, 2);
  std::vector<void*> ptrs;
  for (const auto& [n, t] : fresh) ptrs.push_back(t.data_ptr());
  load_lora_weights(b, dir.str());
  const auto now = lora_parameters(b);
  ASSERT_EQ(now.size(), trained.size());
  for (size_t i = 0; i < now.size(); ++i) {
    EXPECT_EQ(now[i].second.data_ptr(), ptrs[i]) << now[i].first;
    EXPECT_TRUE(torch::equal(now[i].second, trained[i].second)) << now[i].first;
  }
  // another set of modules does not fit
  Transformer c(test::tiny_config("qwen2"));
  cfg.target_modules = {"k_proj"};
  add_lora(c, cfg);
  EXPECT_CONTAINS(message_of([&] { load_lora_weights(c, dir.str()); }), "down_proj");
}

TEST(Lora, BadAdaptersAndConfigsAreRejected) {
  auto bad = [](nlohmann::json patch) {
    auto j = read_json_file(lora_dir("all_targets/adapter_config.json"));
    j.merge_patch(patch);
    return message_of([&] { lora_config_from_json(j, "adapter_config.json"); });
  };
  EXPECT_CONTAINS(bad({{"use_dora", true}}), "use_dora");
  EXPECT_CONTAINS(bad({{"peft_type", "IA3"}}), "LORA");
  EXPECT_CONTAINS(bad({{"rank_pattern", {{"q_proj", 8}}}}), "rank_pattern");
  EXPECT_CONTAINS(bad({{"r", 0}}), "r must be >= 1");
  EXPECT_CONTAINS(bad({{"modules_to_save", {"lm_head"}}}), "modules_to_save");
  EXPECT_CONTAINS(bad({{"target_modules", "("}}), "regular expression");

  Transformer model(test::tiny_config("llama"));
  LoraConfig cfg;
  cfg.target_modules = {"q_proj", "w1"};
  EXPECT_CONTAINS(message_of([&] { add_lora(model, cfg); }), "'w1' matches no linear layer");
  cfg.target_modules = {"lm_head"};
  EXPECT_CONTAINS(message_of([&] { add_lora(model, cfg); }), "lm_head");
  cfg.target_modules = {"v_proj"};
  add_lora(model, cfg);
  EXPECT_CONTAINS(message_of([&] { add_lora(model, cfg); }), "already carries");
  remove_lora(model);
  EXPECT_TRUE(lora_parameters(model).empty());

  // an adapter for another model shape
  EXPECT_CONTAINS(message_of([&] { load_lora_adapter(model, lora_dir("all_targets")); }), "shape");
  EXPECT_CONTAINS(message_of([&] { load_lora_config(lora_dir("base")); }), "adapter_config.json");
}

TEST(Lora, RegexTargetsSelectByFullName) {
  Transformer model(test::tiny_config("llama"));
  LoraConfig cfg;
  cfg.target_modules.clear();
  cfg.target_regex = R"(model\.layers\.1\.self_attn\.(q|v)_proj)";
  const auto params = add_lora(model, cfg);
  std::set<std::string> names;
  for (const auto& [n, t] : params) names.insert(n);
  EXPECT_EQ(names, (std::set<std::string>{"model.layers.1.self_attn.q_proj.lora_A.weight",
                                          "model.layers.1.self_attn.q_proj.lora_B.weight",
                                          "model.layers.1.self_attn.v_proj.lora_A.weight",
                                          "model.layers.1.self_attn.v_proj.lora_B.weight"}));
}

// ---- through the trainer (finmoe train --mode lora) -------------------------------

TEST(LoraTrainer, TrainsAdaptersOnlyAndCheckpointsAPeftAdapter) {
  test::TempDir model, full, part;
  const ModelConfig mc = test::save_tiny_model("llama", model.str(), 6);
  TrainConfig c = test::tiny_train_config(model.str(), full.str());
  c.mode = TrainMode::Lora;
  c.lora.r = 2;
  c.lora.alpha = 4;
  c.lora.target_modules = {"q_proj", "v_proj", "down_proj"};
  c.max_steps = 4;
  c.save_interval = 2;
  Trainer t(c, test::synthetic_hooks(mc.vocab_size));
  const TrainSummary s = t.run();

  auto base = load_model(model.str(), {.dtype = torch::kFloat32});
  auto bp = base.named_parameters(), tp = t.model().named_parameters();
  ASSERT_EQ(bp.size(), tp.size());
  for (size_t i = 0; i < bp.size(); ++i)
    EXPECT_TRUE(torch::equal(bp[i].second, tp[i].second)) << bp[i].first << " moved";
  EXPECT_EQ(s.trainable_params, lora_param_count(t.model()));
  EXPECT_EQ(s.model_params, base.param_count().total);
  EXPECT_EQ(s.checkpoint_bytes,
            int64_t(fs::file_size(s.checkpoint + "/adapter_model.safetensors")));
  // base + the checkpoint's adapter is the trained model
  auto ids = torch::randint(mc.vocab_size, {2, 10}, torch::kInt64);
  auto reloaded = load_model(model.str(), {.dtype = torch::kFloat32, .lora_adapter = s.checkpoint});
  {
    torch::NoGradGuard no_grad;
    const auto want = t.model().forward(ids);
    EXPECT_EQ(test::max_abs_diff(reloaded.forward(ids), want), 0.0);
    EXPECT_GT(test::max_abs_diff(base.forward(ids), want), 1e-5);  // the adapter learned something
  }
  EXPECT_EQ(load_lora_config(s.checkpoint).base_model_name_or_path, model.str());

  // resuming from the mid checkpoint gives the uninterrupted run's adapters
  c.output_dir = part.str();
  c.resume = full.str() + "/checkpoint-2";
  Trainer resumed(c, test::synthetic_hooks(mc.vocab_size));
  resumed.run();
  const auto a = lora_parameters(t.model()), b = lora_parameters(resumed.model());
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_TRUE(torch::equal(a[i].second, b[i].second)) << a[i].first;
}

// Live (labelled; needs torch + transformers + peft in FINMOE_PYTHON, e.g.
// FINMOE_LIVE_HF=1): an adapter finmoe saved loads in peft with finmoe's logits.
TEST(LoraLive, FinmoeAdapterLoadsInPeftWithSameLogits) {
  const char* live = std::getenv("FINMOE_LIVE_HF");
  const char* py = std::getenv("FINMOE_PYTHON");
  if (!live || std::string(live) != "1" || !py) GTEST_SKIP() << "set FINMOE_LIVE_HF=1 and FINMOE_PYTHON";
  auto model = load_model(lora_dir("base"), {.dtype = torch::kFloat32});
  LoraConfig cfg;
  cfg.r = 4;
  cfg.alpha = 12;
  cfg.target_modules = {"q_proj", "o_proj", "up_proj", "down_proj"};
  const auto params = add_lora(model, cfg, 9);
  {
    // nonzero B, so the adapter shows in the logits
    torch::NoGradGuard g;
    auto gen = at::detail::createCPUGenerator(4);
    for (const auto& [n, t] : params) t.copy_(at::normal(0.0, 0.3, t.sizes(), gen, t.options()));
  }
  test::TempDir dir;
  save_lora_adapter(model, cfg, dir.str() + "/adapter");
  auto ids = reference_logits("input_ids").contiguous();
  torch::Tensor logits;
  {
    torch::NoGradGuard g;
    logits = model.forward(ids).contiguous();
  }
  const std::string expected = dir.str() + "/expected.safetensors";
  write_safetensors(expected, {{"input_ids", DType::I64, ids.sizes().vec(), ids.data_ptr(),
                                size_t(ids.numel()) * 8},
                               {"logits", DType::F32, logits.sizes().vec(), logits.data_ptr(),
                                size_t(logits.numel()) * 4}});
  const std::string cmd = std::string(py) + " " + FINMOE_SOURCE_DIR + "/tests/ref/check_peft_live.py " +
                          lora_dir("base") + " " + dir.str() + "/adapter " + expected;
  const int rc = WEXITSTATUS(std::system(cmd.c_str()));
  if (rc == 77) GTEST_SKIP() << "peft not installed in FINMOE_PYTHON";
  EXPECT_EQ(rc, 0) << cmd;
}

}  // namespace
}  // namespace finmoe
