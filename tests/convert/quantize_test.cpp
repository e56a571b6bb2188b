// 8-bit checkpoints (docs/formats/int8.md) made here from tiny random float32
// models: the written tensors and their error bound against the source,
// logits against the float model on the kernel path (prefill and paged
// decode) and the libtorch path, saving and loading, and bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include <torch/torch.h>

#include "../expect_error.h"
#include "../model/test_util.h"
#include "finmoe/convert.h"
#include "finmoe/error.h"
#include "finmoe/model.h"
#include "finmoe/quantize.h"
#include "finmoe/safetensors.h"
#include "model/linear.h"

namespace finmoe {
namespace {

using test::max_abs_diff;
using test::message_of;
using test::TempDir;

// A random float32 model of tiny_config(type) saved in `dir`.
ModelConfig make_model(const std::string& type, const std::string& dir, uint64_t seed = 1) {
  ModelConfig c = test::tiny_config(type);
  Transformer m(c);
  init_random(m, seed);
  save_model(m, dir);
  return c;
}

QuantizeOptions opts(int64_t group, const std::string& scale_dtype = "bfloat16") {
  QuantizeOptions o;
  o.group_size = group;
  o.scale_dtype = scale_dtype;
  o.progress = false;
  return o;
}

// 40 tokens: a forward over them runs the GEMM path (>= 32 rows).
torch::Tensor prompt() {
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < 40; ++i) ids.push_back((i * 37 + 11) % 300);
  return torch::tensor(ids, torch::kInt64).unsqueeze(0);  // [1, 40]
}

torch::Tensor forward(Transformer& m, const torch::Tensor& tokens) {
  torch::NoGradGuard g;
  return m.forward(tokens)[0];  // [T, V]
}

// |a - b| / |b - mean(b)| (L2 over all logits): 0 when equal, ~1.4 for unrelated logits
double rel_diff(const torch::Tensor& a, const torch::Tensor& b) {
  const auto a64 = a.to(torch::kFloat64), b64 = b.to(torch::kFloat64);
  return (a64 - b64).norm().item<double>() / (b64 - b64.mean()).norm().item<double>();
}

torch::Tensor as_float(const TensorView& v) {
  const auto t = v.dtype == DType::BF16 ? torch::kBFloat16 : v.dtype == DType::I8 ? torch::kInt8 : torch::kFloat32;
  return torch::from_blob(v.data, v.shape, torch::TensorOptions().dtype(t)).to(torch::kFloat64);
}

TEST(Quantize, WritesInt8WeightsWithScalesAndKeepsNormsBiasesAndRouters) {
  TempDir src, out;
  make_model("qwen2_moe", src.str());
  const QuantizeReport r = quantize_checkpoint(src.str(), out.str() + "/q", opts(32));
  const ModelConfig qc = ModelConfig::load(out.str() + "/q");
  ASSERT_TRUE(qc.quantization);
  EXPECT_EQ(qc.quantization->group_size, 32);
  EXPECT_EQ(qc.quantization->ignore,
            (std::vector<std::string>{"model.layers.1.mlp.gate", "model.layers.1.mlp.shared_expert_gate"}));
  const auto reader = CheckpointReader::open(out.str() + "/q");
  for (const std::string& name : reader.names()) {
    const TensorView& v = reader.get(name);
    const bool router = name.ends_with("mlp.gate.weight") || name.ends_with("shared_expert_gate.weight");
    if (name.ends_with(".weight_scale")) {
      EXPECT_EQ(v.dtype, DType::BF16) << name;
      const TensorView& w = reader.get(name.substr(0, name.size() - 6));  // "...weight"
      EXPECT_EQ(v.shape, (std::vector<int64_t>{w.shape[0], (w.shape[1] + 31) / 32})) << name;
    } else if (v.shape.size() == 2 && !router) {
      EXPECT_EQ(v.dtype, DType::I8) << name;
      EXPECT_TRUE(reader.has(name + "_scale")) << name;
    } else {
      EXPECT_EQ(v.dtype, DType::F32) << name;  // norms, biases, routers as they were
    }
  }
  EXPECT_TRUE(reader.has("model.embed_tokens.weight_scale"));
  EXPECT_TRUE(reader.has("lm_head.weight_scale"));  // qwen2_moe's head is untied
  EXPECT_LT(r.bytes_out, r.bytes_in * 3 / 10);      // ~1 of 4 bytes per weight, plus scales
  // the model counts the same parameters as the float one (scales are not parameters)
  Transformer q = load_model(out.str() + "/q");
  Transformer f = load_model(src.str());
  EXPECT_EQ(q.param_count().total, f.param_count().total);
  EXPECT_EQ(q.param_count().active, f.param_count().active);
}

TEST(Quantize, EveryWeightIsWithinHalfAScaleOfTheSource) {
  for (int64_t group : {0, 32})
    for (const char* scale_t : {"bfloat16", "float32"}) {
      SCOPED_TRACE(std::string("group ") + std::to_string(group) + " " + scale_t);
      TempDir src, out;
      make_model("llama", src.str(), 7);
      const QuantizeReport r = quantize_checkpoint(src.str(), out.str() + "/q", opts(group, scale_t));
      const auto a = CheckpointReader::open(src.str());
      const auto b = CheckpointReader::open(out.str() + "/q");
      int quantized = 0;
      for (const QuantizedTensor& t : r.tensors) {
        if (t.dtype_out != "I8") continue;
        ++quantized;
        auto w = as_float(a.get(t.name));                // [out, in]
        auto q = as_float(b.get(t.name));                // [out, in]
        auto s = as_float(b.get(t.name + "_scale"));     // [out, groups]
        if (group) s = s.repeat_interleave(32, 1).narrow(1, 0, w.size(1));
        auto err = (s * q - w).abs();
        // half a scale, plus float32's rounding of w / s (|w / s| <= 127.5: 2^-17 of s)
        EXPECT_TRUE((err <= s * (0.5 + 1.0 / 131072)).all().item<bool>()) << t.name;
        EXPECT_NEAR(err.max().item<double>(), t.max_abs_error, 1e-7) << t.name;
        EXPECT_NEAR(w.abs().max().item<double>(), t.max_abs, 1e-7) << t.name;
        EXPECT_LE(q.abs().max().item<double>(), 127) << t.name;
      }
      EXPECT_EQ(quantized, 1 + 2 * 7 + 1);  // embedding, 7 linears per layer, untied head
    }
}

// How far the 8-bit models' logits are from the float32 model's, measured
// against how far the same model in bf16 is: these tiny random models
// (weights of std 0.2) amplify rounding, so bf16 is already 2-3% away; int8
// weights (half a scale per weight, ~4x bf16's rounding) stay within 3x that.
// Few rows run the int8 decode kernels (activations quantized too).
TEST(Quantize, LogitsStayCloseToTheFloatModelOnEveryArchitecture) {
  const auto few = torch::tensor({{5, 17, 42, 99, 3}}, torch::kInt64);
  for (const char* type : {"qwen2", "llama", "qwen2_moe", "finer_moe", "finmoe_dense"}) {
    TempDir src;
    make_model(type, src.str(), 3);
    Transformer f = load_model(src.str());
    Transformer b = load_model(src.str(), {torch::kBFloat16});
    const auto want = forward(f, prompt()), want_few = forward(f, few);
    const double bf16 = rel_diff(forward(b, prompt()).to(torch::kFloat32), want);
    ASSERT_GT(bf16, 0.0);
    for (int64_t group : {0, 32}) {
      SCOPED_TRACE(std::string(type) + " group " + std::to_string(group));
      TempDir out;
      quantize_checkpoint(src.str(), out.str() + "/q", opts(group));
      Transformer q = load_model(out.str() + "/q");
      const double d = rel_diff(forward(q, prompt()), want);
      EXPECT_GT(d, 0.0);  // really quantized
      EXPECT_LT(d, std::min(0.08, 3 * bf16));
      EXPECT_LT(rel_diff(forward(q, few), want_few), std::min(0.08, 3 * bf16));
    }
  }
}

// step(): a 40-token prefill in one step (GEMM) and the same tokens decoded
// one by one through the paged cache (the int8 decode kernels) agree with
// forward() up to the activation rounding of decode.
TEST(Quantize, PrefillAndPagedDecodeAgreeWithForward) {
  TempDir src, out;
  make_model("qwen2", src.str(), 5);
  quantize_checkpoint(src.str(), out.str() + "/q", opts(32));
  Transformer q = load_model(out.str() + "/q");
  const auto tokens = prompt();
  const auto want = forward(q, tokens);  // [40, V]
  const int64_t T = tokens.size(1), bs = 16;
  std::vector<int32_t> table;
  for (int32_t b = 0; b < (T + bs - 1) / bs; ++b) table.push_back(b);
  {
    KVCache cache(q, int64_t(table.size()), bs);
    StepBatch b;
    for (int64_t i = 0; i < T; ++i) {
      b.tokens.push_back(int32_t(tokens[0][i].item<int64_t>()));
      b.positions.push_back(int32_t(i));
    }
    b.seqs.push_back({0, T, T, table});
    b.all_logits = true;
    EXPECT_LT(rel_diff(q.step(b, cache), want), 1e-4);  // the same GEMM path
  }
  KVCache cache(q, int64_t(table.size()), bs);
  std::vector<torch::Tensor> rows;
  for (int64_t i = 0; i < T; ++i) {
    StepBatch b;
    b.tokens.push_back(int32_t(tokens[0][i].item<int64_t>()));
    b.positions.push_back(int32_t(i));
    b.seqs.push_back({0, 1, i + 1, table});
    rows.push_back(q.step(b, cache)[0]);
    ASSERT_LT(rel_diff(rows.back(), want[i]), 0.06) << "position " << i;
  }
  EXPECT_LT(rel_diff(torch::stack(rows), want), 0.04);
}

// Off the kernel path (here: autograd on) the int8 weights are dequantized
// on the fly: the same W8A16 math as the kernels' GEMM.
TEST(Quantize, LibtorchPathGivesTheKernelsLogits) {
  TempDir src, out;
  make_model("llama", src.str(), 9);
  quantize_checkpoint(src.str(), out.str() + "/q", opts(0, "float32"));
  Transformer q = load_model(out.str() + "/q");
  const auto kernels = forward(q, prompt());
  const auto libtorch = q.forward(prompt())[0].detach();  // GradMode on: torch ops
  EXPECT_LT(rel_diff(libtorch, kernels), 1e-5);
}

// What attention and the MLP ask before calling the kernels: an int8 layer
// takes activations of any float type, on the CPU without autograd.
TEST(Quantize, Int8LinearsTakeTheKernelPath) {
  TempDir src, out;
  make_model("qwen2", src.str(), 4);
  quantize_checkpoint(src.str(), out.str() + "/q", opts(0));
  Transformer q = load_model(out.str() + "/q", {torch::kBFloat16});
  int64_t linears = 0;
  for (const auto& item : q.module().named_modules()) {
    const auto* l = dynamic_cast<const LinearImpl*>(item.value().get());
    if (!l) continue;
    ++linears;
    ASSERT_TRUE(l->quantized()) << item.key();
    EXPECT_EQ(l->weight.scalar_type(), torch::kInt8);
    auto x = torch::ones({1, l->weight.size(1)}, torch::kBFloat16);
    torch::NoGradGuard no_grad;
    EXPECT_TRUE(l->kernel_input(x)) << item.key();
    EXPECT_TRUE(l->kernel_input(x.to(torch::kFloat32))) << item.key();
    torch::AutoGradMode grad(true);
    EXPECT_FALSE(l->kernel_input(x)) << item.key();  // autograd: libtorch dequantizes
  }
  EXPECT_EQ(linears, 2 * 7);
}

TEST(Quantize, SavedQuantizedModelLoadsBackUnchanged) {
  TempDir src, out;
  make_model("qwen2", src.str(), 2);
  quantize_checkpoint(src.str(), out.str() + "/q", opts(32));
  Transformer q = load_model(out.str() + "/q");
  save_model(q, out.str() + "/again");
  Transformer q2 = load_model(out.str() + "/again");
  const auto a = q.named_parameters(), b = q2.named_parameters();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].first, b[i].first);
    EXPECT_EQ(a[i].second.scalar_type(), b[i].second.scalar_type()) << a[i].first;
    EXPECT_TRUE(a[i].second.equal(b[i].second)) << a[i].first;
  }
  EXPECT_TRUE(forward(q, prompt()).equal(forward(q2, prompt())));
}

TEST(Quantize, RejectsBadInput) {
  TempDir src, out;
  make_model("qwen2", src.str());
  const std::string q = out.str() + "/q";
  quantize_checkpoint(src.str(), q, opts(0));
  EXPECT_CONTAINS(message_of([&] { quantize_checkpoint(q, out.str() + "/qq", opts(0)); }),
                  q + "/config.json: the checkpoint is already quantized");
  EXPECT_CONTAINS(message_of([&] { quantize_checkpoint(src.str(), q, opts(0)); }),
                  "exists and is not an empty directory");
  EXPECT_CONTAINS(message_of([&] { quantize_checkpoint(src.str(), out.str() + "/g", opts(64)); }),
                  "--group-size 64 is not supported");
  QuantizeOptions int4 = opts(0);
  int4.type = "int4";
  EXPECT_CONTAINS(message_of([&] { quantize_checkpoint(src.str(), out.str() + "/t", int4); }),
                  "--type 'int4' is not supported");
  EXPECT_FALSE(std::filesystem::exists(out.str() + "/g"));

  // a tensor of a dtype quantize cannot read
  TempDir f64;
  {
    Transformer m = load_model(src.str());
    std::vector<torch::Tensor> keep;
    std::vector<TensorData> tensors;
    for (const auto& [name, t] : m.named_parameters()) {
      keep.push_back(name == "model.norm.weight" ? t.to(torch::kFloat64) : t.contiguous());
      const auto& c = keep.back();
      tensors.push_back({name, c.scalar_type() == torch::kFloat64 ? DType::F64 : DType::F32,
                         c.sizes().vec(), c.data_ptr(), size_t(c.numel() * c.element_size())});
    }
    write_checkpoint(f64.str(), tensors);
    m.config().save(f64.str());
  }
  const std::string msg = message_of([&] { quantize_checkpoint(f64.str(), out.str() + "/d", opts(0)); });
  EXPECT_CONTAINS(msg, "model.safetensors: tensor 'model.norm.weight' has dtype F64");

  // 8-bit weights cannot be trained, merged into or upcycled
  Transformer m = load_model(q);
  EXPECT_CONTAINS(message_of([&] { require_float_weights(m, "train: model " + q); }),
                  "train: model " + q + ": the model has int8 weights");
  UpcycleOptions up;
  up.progress = false;
  EXPECT_CONTAINS(message_of([&] { plan_upcycle(q, up); }), "quantization_config");
}

// Loading checks the int8 tensors against the config.
TEST(Quantize, LoadingRejectsTensorsThatDisagreeWithTheConfig) {
  TempDir src, out;
  make_model("qwen2", src.str());
  const std::string q = out.str() + "/q";
  quantize_checkpoint(src.str(), q, opts(0));
  nlohmann::json j = read_json_file(q + "/config.json");
  auto rewrite = [&](const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json c = j;
    edit(c);
    write_json_file(q + "/config.json", c);
  };
  rewrite([](nlohmann::json& c) { c["quantization_config"]["scale_dtype"] = "float32"; });
  EXPECT_CONTAINS(message_of([&] { load_model(q); }), "_scale' has dtype BF16, expected F32");
  rewrite([](nlohmann::json& c) { c["quantization_config"]["format_version"] = 2; });
  EXPECT_CONTAINS(message_of([&] { load_model(q); }), "the checkpoint is newer: update finmoe");
  rewrite([](nlohmann::json& c) { c["quantization_config"]["quant_method"] = "gptq"; });
  EXPECT_CONTAINS(message_of([&] { load_model(q); }), "quant_method' is 'gptq'");
  rewrite([](nlohmann::json& c) { c["quantization_config"]["ignore"] = {"model.layers.0.mlp"}; });
  EXPECT_CONTAINS(message_of([&] { load_model(q); }), "names 'model.layers.0.mlp'");
  rewrite([](nlohmann::json& c) { c.erase("quantization_config"); });
  EXPECT_CONTAINS(message_of([&] { load_model(q); }), "has dtype I8, expected a floating type");
  rewrite([](nlohmann::json&) {});
  // -128 has no place in the format
  {
    auto reader = CheckpointReader::open(q);
    EXPECT_NO_THROW(load_model(q));
  }
  const std::string file = q + "/model.safetensors";
  auto st = SafetensorsFile::open(file);
  const TensorView* v = st->find("model.layers.0.self_attn.q_proj.weight");
  ASSERT_NE(v, nullptr);
  const size_t offset = size_t(v->data - st->mapped_data());
  st.reset();
  {
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(std::streamoff(offset));
    const char m128 = char(-128);
    f.write(&m128, 1);
  }
  EXPECT_CONTAINS(message_of([&] { load_model(q); }), "holds -128");
}

}  // namespace
}  // namespace finmoe
