// finmoe merge --moe (include/finmoe/merge.h): an MoE built from dense
// fine-tunes. Invariants (copies of one model give the dense logits), each
// expert's FFN and the base's attention land where the format puts them, the
// `hidden` router rows against hidden states taken from a truncated model's
// forward, and bad input (a clear error, nothing written).
#include <gtest/gtest.h>

#include <filesystem>
#include <map>

#include <sys/wait.h>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "../expect_error.h"
#include "../model/test_util.h"
#include "finmoe/config.h"
#include "finmoe/merge.h"
#include "finmoe/model.h"
#include "finmoe/safetensors.h"
#include "finmoe/tokenizer.h"
#include "model/torch_dtype.h"

namespace finmoe {
namespace {

namespace fs = std::filesystem;
using test::message_of;
using test::TempDir;

const std::string kTokenizer =
    std::string(FINMOE_TEST_DATA_DIR) + "/tokenizer/byte_fallback/llama2_style";

ModelConfig dense_config() {
  nlohmann::json j = test::tiny_config("llama").to_json();
  j["vocab_size"] = 700;  // the tokenizer's 659 ids fit
  return ModelConfig::from_json(j, "tiny");
}

// A dense llama model with the test tokenizer: `seed` draws its weights; with
// `from`, it is that model with its FFN (`everything`: every tensor) moved by
// noise of std 0.05 (a fine-tune).
std::string dense(const TempDir& tmp, const std::string& name, uint64_t seed,
                  const std::string& from = "", bool everything = false) {
  const std::string dir = tmp.str() + "/" + name;
  if (from.empty()) {
    Transformer m(dense_config());
    init_random(m, seed);
    save_model(m, dir);
  } else {
    Transformer m = load_model(from, {.dtype = torch::kFloat32});
    torch::manual_seed(seed);
    torch::NoGradGuard g;
    for (auto& [n, p] : m.named_parameters())
      if (everything || n.find(".mlp.") != std::string::npos) p.add_(torch::randn_like(p) * 0.05);
    save_model(m, dir);
  }
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"})
    fs::copy_file(kTokenizer + "/" + f, dir + "/" + f);
  return dir;
}

MergeReport build(const std::string& yaml, const std::string& out) {
  MergeOptions o;
  o.progress = false;
  o.seed = 5;
  return merge_moe(parse_moe_recipe(yaml, "moe.yaml"), out, o);
}

std::string experts_yaml(const std::vector<std::string>& models,
                         const std::vector<std::string>& prompts = {}) {
  std::string y = "experts:\n";
  for (size_t i = 0; i < models.size(); ++i) {
    y += "  - source_model: " + models[i] + "\n";
    if (i < prompts.size()) y += "    positive_prompts: [" + nlohmann::json(prompts[i]).dump() + "]\n";
  }
  return y;
}

using Tensors = std::map<std::string, torch::Tensor>;
Tensors load(const std::string& dir) {
  Tensors out;
  const CheckpointReader r = CheckpointReader::open(dir);
  for (const auto& n : r.names()) {
    const TensorView& v = r.get(n);
    out[n] = torch::from_blob(v.data, v.shape, torch::TensorOptions().dtype(to_torch(v.dtype)))
                 .to(torch::kFloat32)
                 .clone();
  }
  return out;
}

torch::Tensor logits(const std::string& dir, const torch::Tensor& tokens,
                     std::vector<RouterOutput>* routers = nullptr) {
  Transformer m = load_model(dir, {.dtype = torch::kFloat32});
  torch::NoGradGuard g;
  return m.forward(tokens, {.router_outputs = routers});
}

// ---- invariants -------------------------------------------------------------------------

TEST(MergeMoeInvariants, CopiesOfOneDenseModelGiveItsLogits) {
  TempDir tmp;
  const std::string d = dense(tmp, "d", 3);
  const auto tokens = torch::tensor({{1, 57, 300, 12, 640, 9}}, torch::kInt64);
  const auto want = logits(d, tokens);
  // any router: every expert is the same FFN and the top-k weights sum to 1
  for (const std::string arch : {"mixtral", "qwen2_moe"})
    for (const std::string mode : {"random", "cheap_embed", "hidden"}) {
      const std::string out = tmp.str() + "/" + arch + "_" + mode;
      build("base_model: " + d + "\narchitecture: " + arch + "\ngate_mode: " + mode +
                "\nexperts_per_token: 2\n" + experts_yaml({d, d, d}, {"alpha", "beta", "gamma"}),
            out);
      std::vector<RouterOutput> routers;
      const auto got = logits(out, tokens, &routers);
      EXPECT_EQ(load_model(out).config().model_type, arch);
      ASSERT_EQ(routers.size(), 2u) << arch << " " << mode;  // every layer is an MoE layer
      EXPECT_LT((got - want).abs().max().item<double>(), 2e-5) << arch << " " << mode;
    }
}

TEST(MergeMoeLayout, EachModelsFfnIsAnExpertAndTheRestIsTheBasesOrTheMean) {
  TempDir tmp;
  const std::string b = dense(tmp, "b", 1);
  const std::string x = dense(tmp, "x", 2, b), y = dense(tmp, "y", 3, b), z = dense(tmp, "z", 4, b);
  const Tensors B = load(b);
  const std::vector<Tensors> E = {load(x), load(y), load(z)};
  build("base_model: " + b + "\ngate_mode: random\n" + experts_yaml({x, y, z}), tmp.str() + "/mix");
  const Tensors mix = load(tmp.str() + "/mix");
  const std::map<std::string, std::string> w = {{"w1", "gate_proj"}, {"w2", "down_proj"}, {"w3", "up_proj"}};
  int compared = 0;
  for (int l = 0; l < 2; ++l) {
    const std::string p = "model.layers." + std::to_string(l);
    for (int e = 0; e < 3; ++e)
      for (const auto& [ours, theirs] : w) {
        EXPECT_TRUE(torch::equal(mix.at(p + ".block_sparse_moe.experts." + std::to_string(e) + "." +
                                        ours + ".weight"),
                                 E[size_t(e)].at(p + ".mlp." + theirs + ".weight")));
        ++compared;
      }
    EXPECT_EQ(mix.at(p + ".block_sparse_moe.gate.weight").sizes(), (std::vector<int64_t>{3, 48}));
  }
  EXPECT_EQ(compared, 18);
  for (const auto& [n, t] : B)
    if (n.find(".mlp.") == std::string::npos) EXPECT_TRUE(torch::equal(mix.at(n), t)) << n;
  // qwen2_moe with the base's FFN as the shared expert, attention averaged
  build("base_model: " + b + "\narchitecture: qwen2_moe\ngate_mode: cheap_embed\n"
        "shared_weights: average\n" + experts_yaml({x, y}, {"stocks", "bonds"}) +
        "shared_experts:\n  - source_model: " + b + "\n    positive_prompts: [\"markets\"]\n",
        tmp.str() + "/qwen");
  const Tensors q = load(tmp.str() + "/qwen");
  for (int l = 0; l < 2; ++l) {
    const std::string p = "model.layers." + std::to_string(l);
    for (const char* f : {"gate_proj", "up_proj", "down_proj"}) {
      const std::string t = std::string(".") + f + ".weight";
      EXPECT_TRUE(torch::equal(q.at(p + ".mlp.shared_expert" + t), B.at(p + ".mlp" + t)));
      EXPECT_TRUE(torch::equal(q.at(p + ".mlp.experts.1" + t), E[1].at(p + ".mlp" + t)));
    }
    EXPECT_EQ(q.at(p + ".mlp.shared_expert_gate.weight").sizes(), (std::vector<int64_t>{1, 48}));
    EXPECT_FALSE(q.count(p + ".self_attn.q_proj.bias"));  // llama has none: qkv_bias false
  }
  for (const auto& [n, t] : B)
    if (n.find(".mlp.") == std::string::npos)
      EXPECT_LT((q.at(n) - (E[0].at(n) + E[1].at(n)) / 2).abs().max().item<double>(), 1e-7) << n;
  EXPECT_NO_THROW(logits(tmp.str() + "/qwen", torch::tensor({{1, 5, 9}}, torch::kInt64)));
}

// `shared_weights: {merge_method, parameters}`: attention, embeddings and norms
// are what `finmoe merge` makes of the base and the experts with that method,
// bit for bit; the experts are still each model's FFN.
TEST(MergeMoeLayout, SharedWeightsMergedByAMethodAreThatMerge) {
  TempDir tmp;
  const std::string b = dense(tmp, "b", 1);
  const std::string x = dense(tmp, "x", 2, b, true), y = dense(tmp, "y", 3, b, true);
  const Tensors B = load(b), X = load(x), Y = load(y);
  MergeOptions o;
  o.progress = false;
  for (const std::string m : {"ties", "dare_ties", "task_arithmetic"}) {
    const std::string params = "{weight: 0.7, density: 0.5}";
    const std::string moe = tmp.str() + "/moe_" + m, ref = tmp.str() + "/ref_" + m;
    build("base_model: " + b + "\ngate_mode: random\nshared_weights:\n  merge_method: " + m +
              "\n  parameters: " + (m == "task_arithmetic" ? std::string("{weight: 0.7}") : params) +
              "\n" + experts_yaml({x, y, x}),
          moe);
    merge_models(parse_merge_recipe("merge_method: " + m + "\nbase_model: " + b + "\nmodels:\n  - model: " +
                                        x + "\n  - model: " + y + "\nparameters: " +
                                        (m == "task_arithmetic" ? std::string("{weight: 0.7}") : params) + "\n",
                                    "ref.yaml"),
                 ref, {.seed = 5, .progress = false});
    const Tensors got = load(moe), want = load(ref);
    int shared = 0;
    for (const auto& [n, t] : want) {
      if (n.find(".mlp.") != std::string::npos) continue;
      EXPECT_TRUE(torch::equal(got.at(n), t)) << m << " " << n;
      EXPECT_FALSE(torch::equal(got.at(n), B.at(n))) << m << " " << n << " is the base's";
      ++shared;
    }
    EXPECT_EQ(shared, 2 * 6 + 3) << m;  // per layer q, k, v, o and 2 norms; embed, norm, lm_head
    const std::string up = "model.layers.1.mlp.up_proj.weight";
    EXPECT_TRUE(torch::equal(got.at("model.layers.1.block_sparse_moe.experts.1.w3.weight"), Y.at(up)));
    EXPECT_TRUE(torch::equal(got.at("model.layers.1.block_sparse_moe.experts.2.w3.weight"), X.at(up)));
    EXPECT_FALSE(fs::exists(moe + ".shared-weights.tmp")) << "the merged model beside OUT was left";
  }
  // linear (normalised weights) is `average`, and lambda 0 is the base
  build("base_model: " + b + "\ngate_mode: random\nshared_weights: {merge_method: linear, parameters: "
        "{weight: 1}}\n" + experts_yaml({x, y}), tmp.str() + "/lin");
  build("base_model: " + b + "\ngate_mode: random\nshared_weights: average\n" + experts_yaml({x, y}),
        tmp.str() + "/avg");
  build("base_model: " + b + "\ngate_mode: random\nshared_weights: {merge_method: task_arithmetic, "
        "parameters: {weight: 1, lambda: 0}}\n" + experts_yaml({x, y}), tmp.str() + "/lambda0");
  const Tensors lin = load(tmp.str() + "/lin"), avg = load(tmp.str() + "/avg"), l0 = load(tmp.str() + "/lambda0");
  for (const auto& [n, t] : B) {
    if (n.find(".mlp.") != std::string::npos) continue;
    EXPECT_LT((lin.at(n) - avg.at(n)).abs().max().item<double>(), 1e-7) << n;
    EXPECT_LT((avg.at(n) - (X.at(n) + Y.at(n)) / 2).abs().max().item<double>(), 1e-7) << n;
    EXPECT_TRUE(torch::equal(l0.at(n), t)) << n;
  }
}

// Experts whose tokenizers added different tokens (the committed models of
// tests/data/merge/tokenizer: base 660 ids, a and b 663 with other added
// tokens): with a tokenizer source in shared_weights the MoE takes the merge's
// vocabulary, its embedding rows and its tokenizer; without one the
// vocabulary mismatch is an error that says how to merge them.
TEST(MergeMoeLayout, ExpertsWithOtherVocabulariesMergeThroughATokenizerSource) {
  TempDir tmp;
  const std::string models = std::string(FINMOE_TEST_DATA_DIR) + "/merge/tokenizer/models/";
  const std::string b = models + "base", x = models + "a", y = models + "b";
  const std::string experts = experts_yaml({x, y});
  build("base_model: " + b + "\ngate_mode: random\nshared_weights:\n  merge_method: linear\n"
        "  parameters: {weight: 1}\n  tokenizer_source: union\n" + experts, tmp.str() + "/moe");
  MergeOptions o;
  o.progress = false;
  merge_models(parse_merge_recipe("merge_method: linear\nbase_model: " + b + "\nmodels:\n  - model: " + x +
                                      "\n  - model: " + y + "\nparameters: {weight: 1}\ntokenizer_source: union\n",
                                  "ref.yaml"),
               tmp.str() + "/ref", o);
  const Tensors got = load(tmp.str() + "/moe"), want = load(tmp.str() + "/ref"), X = load(x);
  const int64_t V = read_json_file(tmp.str() + "/ref/config.json")["vocab_size"].get<int64_t>();
  EXPECT_GT(V, 663);  // the union holds both models' added tokens
  EXPECT_EQ(load_model(tmp.str() + "/moe").config().vocab_size, V);
  EXPECT_EQ(got.at("model.embed_tokens.weight").size(0), V);
  for (const auto& [n, t] : want)
    if (n.find(".mlp.") == std::string::npos) EXPECT_TRUE(torch::equal(got.at(n), t)) << n;
  EXPECT_TRUE(torch::equal(got.at("model.layers.0.block_sparse_moe.experts.0.w1.weight"),
                           X.at("model.layers.0.mlp.gate_proj.weight")));
  EXPECT_EQ(read_json_file(tmp.str() + "/moe/tokenizer.json"), read_json_file(tmp.str() + "/ref/tokenizer.json"));
  // the last added token's id is a row of the MoE and runs
  EXPECT_NO_THROW(logits(tmp.str() + "/moe", torch::tensor({{int64_t(1), V - 1, int64_t(5)}}, torch::kInt64)));
  // without the tokenizer source: named, with the fix
  const std::string msg = message_of([&] {
    build("base_model: " + b + "\ngate_mode: random\nshared_weights: average\n" + experts, tmp.str() + "/bad");
  });
  EXPECT_NE(msg.find("has shape [663, 16] in model '" + x + "' but [660, 16] in the base"), std::string::npos) << msg;
  EXPECT_NE(msg.find("vocabularies that differ merge with shared_weights: {merge_method: ..., tokenizer_source: union}"),
            std::string::npos) << msg;
  EXPECT_FALSE(fs::exists(tmp.str() + "/bad"));
}

// ---- the hidden gate mode -------------------------------------------------------------

// The hidden state entering layer `l` at the last token, from a model's
// forward: layer 0's input is the token's embedding; for l > 0 the base cut
// to its first l layers with the final norm's weight 1 and lm_head the
// identity on the first D ids, so logits[:D] = x / rms(x), x's direction.
torch::Tensor hidden_direction(const TempDir& tmp, const std::string& base, int64_t l,
                               const std::vector<int64_t>& ids) {
  const Tensors B = load(base);
  const int64_t D = 48;
  if (l == 0) {
    auto v = B.at("model.embed_tokens.weight")[ids.back()];
    return v / v.norm();
  }
  const std::string dir = tmp.str() + "/cut" + std::to_string(l);
  std::vector<torch::Tensor> keep;
  std::vector<TensorData> td;
  for (const auto& [n, t] : B) {
    torch::Tensor x = t;
    if (n.rfind("model.layers.", 0) == 0 && std::stoll(n.substr(13)) >= l) continue;
    if (n == "model.norm.weight") x = torch::ones_like(t);
    if (n == "lm_head.weight") {
      x = torch::zeros_like(t);
      x.narrow(0, 0, D).copy_(torch::eye(D));
    }
    keep.push_back(x.contiguous());
    td.push_back({n, DType::F32, keep.back().sizes().vec(), keep.back().data_ptr(),
                  size_t(keep.back().numel()) * 4});
  }
  write_checkpoint(dir, td);
  nlohmann::json c = read_json_file(base + "/config.json");
  c["num_hidden_layers"] = l;
  write_json_file(dir + "/config.json", c);
  auto out = logits(dir, torch::tensor(ids, torch::kInt64).unsqueeze(0))[0][-1].narrow(0, 0, D);
  return out / out.norm();
}

TEST(MergeMoeHidden, RouterRowsAreTheNormalisedHiddenStatesOfEachExpertsPrompt) {
  TempDir tmp;
  const std::string b = dense(tmp, "b", 7);
  const std::string x = dense(tmp, "x", 8, b), y = dense(tmp, "y", 9, b), z = dense(tmp, "z", 10, b);
  const std::vector<std::string> prompts = {"The central bank raised rates.",
                                            "def f(x): return x", "Bonjour tout le monde"};
  build("base_model: " + b + "\ngate_mode: hidden\nexperts_per_token: 1\n" +
            experts_yaml({x, y, z}, prompts),
        tmp.str() + "/out");
  const Tensors out = load(tmp.str() + "/out");
  const Tokenizer tok = Tokenizer::from_dir(b);
  for (size_t e = 0; e < 3; ++e) {
    std::vector<int64_t> ids;
    for (int32_t t : tok.encode("<s>" + prompts[e])) ids.push_back(t);
    ASSERT_EQ(ids.front(), *tok.token_to_id("<s>"));
    for (int64_t l = 0; l < 2; ++l) {
      const auto row = out.at("model.layers." + std::to_string(l) + ".block_sparse_moe.gate.weight")[int64_t(e)];
      EXPECT_LT((row - hidden_direction(tmp, b, l, ids)).abs().max().item<double>(), 1e-5)
          << "expert " << e << " layer " << l;
      EXPECT_NEAR(row.norm().item<double>(), 1.0, 1e-5);
    }
    // the expert's own prompt: its last token goes to that expert in layer 0
    std::vector<RouterOutput> routers;
    logits(tmp.str() + "/out", torch::tensor(ids, torch::kInt64).unsqueeze(0), &routers);
    EXPECT_EQ(routers.at(0).indices[-1][0].item<int64_t>(), int64_t(e)) << "expert " << e;
  }
}


// ---- against mergekit-moe -------------------------------------------------------------

// tests/ref/make_mergekit_moe_reference.py: mergekit-moe's output for a
// cheap_embed recipe (positive and negative prompts) on tiny llama models; it
// writes transformers 5's fused mixtral experts, gate_up_proj [E, 2F, D]
// (gate rows first) and down_proj [E, D, F].
TEST(MergeMoeReference, CheapEmbedEqualsMergekitMoe) {
  TempDir tmp;
  const std::string dir = std::string(FINMOE_TEST_DATA_DIR) + "/merge/moe";
  MergeOptions o;
  o.progress = false;
  merge_moe(load_moe_recipe(dir + "/cheap_embed.yaml"), tmp.str() + "/out", o);
  const Tensors ours = load(tmp.str() + "/out");
  const Tensors want = load(dir + "/expected/cheap_embed");
  int64_t F = 24, checked = 0;
  for (int l = 0; l < 2; ++l) {
    const std::string p = "model.layers." + std::to_string(l);
    const auto gate = ours.at(p + ".block_sparse_moe.gate.weight");
    EXPECT_LT((gate - want.at(p + ".mlp.gate.weight")).abs().max().item<double>(), 2e-6) << p;
    for (int e = 0; e < 2; ++e) {
      const std::string x = p + ".block_sparse_moe.experts." + std::to_string(e);
      const auto gu = want.at(p + ".mlp.experts.gate_up_proj")[e];
      EXPECT_TRUE(torch::equal(ours.at(x + ".w1.weight"), gu.narrow(0, 0, F))) << x;
      EXPECT_TRUE(torch::equal(ours.at(x + ".w3.weight"), gu.narrow(0, F, F))) << x;
      EXPECT_TRUE(torch::equal(ours.at(x + ".w2.weight"), want.at(p + ".mlp.experts.down_proj")[e])) << x;
      checked += 3;
    }
  }
  for (const auto& [n, t] : want)  // attention, norms, embeddings: the base's
    if (n.find(".mlp.") == std::string::npos) {
      EXPECT_TRUE(torch::equal(ours.at(n), t)) << n;
      ++checked;
    }
  EXPECT_EQ(checked, 12 + 15);  // 12 expert tensors; 2 layers x 6 + embed, norm, lm_head
}

// ---- bad input ---------------------------------------------------------------------------

void expect_nothing_left(const TempDir& tmp, const std::string& out) {
  EXPECT_FALSE(fs::exists(out)) << out;
  for (const auto& e : fs::directory_iterator(tmp.path))
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
}

TEST(MergeMoeBadInput, ShapesArchitecturesPromptsAndAnExistingOutAreNamed) {
  TempDir tmp;
  const std::string b = dense(tmp, "b", 1), x = dense(tmp, "x", 2, b);
  const std::string out = tmp.str() + "/out";
  // another shape
  {
    nlohmann::json j = dense_config().to_json();
    j["intermediate_size"] = 64;
    Transformer m(ModelConfig::from_json(j, "wide"));
    init_random(m, 3);
    save_model(m, tmp.str() + "/wide");
  }
  std::string msg = message_of([&] {
    build("base_model: " + b + "\ngate_mode: random\n" + experts_yaml({x, tmp.str() + "/wide"}), out);
  });
  EXPECT_NE(msg.find("wide"), std::string::npos) << msg;
  EXPECT_NE(msg.find("shape"), std::string::npos) << msg;
  expect_nothing_left(tmp, out);
  // another architecture (an MoE is no dense expert)
  {
    Transformer m(test::tiny_config("mixtral"));
    init_random(m, 4);
    save_model(m, tmp.str() + "/moe");
  }
  msg = message_of([&] {
    build("base_model: " + b + "\ngate_mode: random\n" + experts_yaml({x, tmp.str() + "/moe"}), out);
  });
  EXPECT_NE(msg.find("mixtral"), std::string::npos) << msg;
  expect_nothing_left(tmp, out);
  // hidden needs every expert's prompts
  msg = message_of([&] { build("base_model: " + b + "\n" + experts_yaml({x, b}, {"only one"}), out); });
  EXPECT_NE(msg.find("experts[1]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("positive_prompts"), std::string::npos) << msg;
  expect_nothing_left(tmp, out);
  // mixtral takes no shared expert; unknown keys; experts_per_token past the experts
  msg = message_of([&] {
    build("base_model: " + b + "\narchitecture: mixtral\ngate_mode: random\n" + experts_yaml({x, b}) +
              "shared_experts:\n  - source_model: " + b + "\n",
          out);
  });
  EXPECT_NE(msg.find("shared_experts"), std::string::npos) << msg;
  msg = message_of([&] { build("base_model: " + b + "\nnoise: 1\n" + experts_yaml({x, b}), out); });
  EXPECT_NE(msg.find("noise"), std::string::npos) << msg;
  msg = message_of([&] {
    build("base_model: " + b + "\ngate_mode: random\nexperts_per_token: 3\n" + experts_yaml({x, b}), out);
  });
  EXPECT_NE(msg.find("experts_per_token"), std::string::npos) << msg;
  // shared_weights by a method: the method, its parameters and the keys are
  // checked with the recipe; the models are the experts, not a key
  const std::string sw = "base_model: " + b + "\ngate_mode: random\n" + experts_yaml({x, b}) + "shared_weights: ";
  msg = message_of([&] { build(sw + "{merge_method: frankenstein}\n", out); });
  EXPECT_NE(msg.find("moe.yaml:6: shared_weights: merge_method: merge_method 'frankenstein' is not one finmoe implements"),
            std::string::npos) << msg;
  msg = message_of([&] { build(sw + "{merge_method: ties, parameters: {densty: 0.5}}\n", out); });
  EXPECT_NE(msg.find("densty"), std::string::npos) << msg;
  msg = message_of([&] { build(sw + "{merge_method: linear, models: [{model: " + x + "}]}\n", out); });
  EXPECT_NE(msg.find("shared_weights.models: unknown or unsupported key"), std::string::npos) << msg;
  msg = message_of([&] { build(sw + "{parameters: {weight: 1}}\n", out); });
  EXPECT_NE(msg.find("shared_weights: merge_method is missing"), std::string::npos) << msg;
  msg = message_of([&] { build(sw + "medium\n", out); });
  EXPECT_NE(msg.find("'medium' is not base, average or {merge_method"), std::string::npos) << msg;
  // a parameter the method needs and nobody gives: named at merge time, nothing left
  msg = message_of([&] { build(sw + "{merge_method: ties, parameters: {density: 0.5}}\n", out); });
  EXPECT_NE(msg.find("'weight' is missing"), std::string::npos) << msg;
  EXPECT_FALSE(fs::exists(out + ".shared-weights.tmp"));
  expect_nothing_left(tmp, out);
  // an existing OUT is never touched
  fs::create_directories(out);
  write_file_atomic(out + "/keep", "x");
  msg = message_of([&] { build("base_model: " + b + "\ngate_mode: random\n" + experts_yaml({x, b}), out); });
  EXPECT_NE(msg.find("exists"), std::string::npos) << msg;
  EXPECT_TRUE(fs::exists(out + "/keep"));
}

int cli(const std::string& args) {
  const int rc = std::system(
      (std::string(FINMOE_CLI_PATH) + " merge " + args + " 2>/dev/null >/dev/null").c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

TEST(MergeMoeCli, RunsARecipeAndBadInputExitsTwo) {
  TempDir tmp;
  const std::string b = dense(tmp, "b", 1), x = dense(tmp, "x", 2, b);
  write_file_atomic(tmp.str() + "/moe.yaml",
                    "base_model: b\ngate_mode: cheap_embed\nexperts:\n"
                    "  - source_model: x\n    positive_prompts: [\"equity\"]\n"
                    "  - source_model: b\n    positive_prompts: [\"credit\"]\n");
  EXPECT_EQ(cli("--moe " + tmp.str() + "/moe.yaml " + tmp.str() + "/out --json"), 0);
  EXPECT_TRUE(fs::exists(tmp.str() + "/out/tokenizer.json"));
  EXPECT_TRUE(fs::exists(tmp.str() + "/out/mergekit_moe_config.yml"));
  EXPECT_EQ(load_model(tmp.str() + "/out").config().num_experts, 2);
  EXPECT_EQ(cli("--moe " + tmp.str() + "/moe.yaml " + tmp.str() + "/out"), 2);  // exists
  write_file_atomic(tmp.str() + "/bad.yaml", "base_model: b\nexperts: []\n");
  EXPECT_EQ(cli("--moe " + tmp.str() + "/bad.yaml " + tmp.str() + "/bad"), 2);
  EXPECT_FALSE(fs::exists(tmp.str() + "/bad"));
}

}  // namespace
}  // namespace finmoe
