// Several adapters over one base model in one running batch
// (include/finmoe/serving_adapters.h): every request must get exactly what a
// model carrying only its own adapter gives (LoRA attached as lora.h does,
// which tests/train/lora_test.cpp checks against PEFT; ESFT as base + delta
// loaded by load_model, checked against the trained model in esft_test.cpp).
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "../expect_error.h"
#include "../model/test_util.h"
#include "finmoe/block_manager.h"
#include "finmoe/engine.h"
#include "finmoe/esft.h"
#include "finmoe/lora.h"
#include "finmoe/model.h"
#include "finmoe/serving_adapters.h"
#include "serve/openai_api.h"

namespace finmoe {
namespace {

// A LoRA adapter of `model`'s shape with random A and B (seeded), saved to dir.
void save_random_lora(const ModelConfig& config, const std::vector<std::string>& targets,
                      uint64_t seed, const std::string& dir) {
  Transformer m(config);
  LoraConfig lc;
  lc.r = 4;
  lc.alpha = 8;
  lc.target_modules = targets;
  torch::manual_seed(seed);
  const auto params = add_lora(m, lc, seed);
  torch::NoGradGuard no_grad;
  for (const auto& [name, t] : params)
    if (name.ends_with("lora_B.weight")) t.normal_(0.0, 0.2);  // PEFT starts B at zero
  save_lora_adapter(m, lc, dir);
}

// An ESFT delta of the model saved in `base`: the chosen experts (and the
// shared experts) moved by seeded noise, as training would move them.
void save_random_delta(const std::string& base, const ExpertConfig& c, uint64_t seed,
                       const std::string& dir) {
  auto m = load_model(base, {.dtype = torch::kFloat32});
  torch::manual_seed(seed);
  torch::NoGradGuard no_grad;
  for (const auto& [name, t] : esft_trainable_parameters(m, c))
    t.add_(torch::randn_like(t) * 0.3);
  save_esft_delta(m, c, base, dir);
}

struct Result {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;  // of each chosen token
};

std::vector<int32_t> prompt(int n, int salt) {
  std::vector<int32_t> p;
  for (int i = 0; i < n; ++i) p.push_back((i * 37 + salt * 11 + 5) % 300);
  return p;
}

// Greedy requests (prompt i with adapter ids[i]) submitted together to one
// engine over `m`, so every step mixes them; their tokens and logprobs.
std::vector<Result> run_together(Transformer& m, const std::vector<int32_t>& ids,
                                 int64_t max_tokens = 6) {
  EngineOptions o;
  o.block_size = 4;
  o.kv_cache_bytes = 512 * kv_cache_bytes_per_token(m.config(), int64_t(c10::elementSize(m.dtype())));
  Engine engine(m, nullptr, o);
  std::map<uint64_t, Result> got;
  std::vector<uint64_t> order;
  for (size_t i = 0; i < ids.size(); ++i) {
    RequestParams p;
    p.sampling.temperature = 0;
    p.max_tokens = max_tokens;
    p.logprobs = 0;
    p.adapter = ids[i];
    order.push_back(engine.submit(prompt(9 + int(i) * 3, int(i) % 3), p,
                                  [&got](const RequestOutput& out) {
                                    auto& r = got[out.request_id];
                                    r.tokens.insert(r.tokens.end(), out.token_ids.begin(),
                                                    out.token_ids.end());
                                    for (const auto& lp : out.logprobs) r.logprobs.push_back(lp.logprob);
                                  }));
  }
  engine.run_until_idle();
  std::vector<Result> out;
  for (uint64_t id : order) out.push_back(got.at(id));
  return out;
}

void expect_same(const Result& got, const Result& want, const std::string& what) {
  EXPECT_EQ(got.tokens, want.tokens) << what;
  ASSERT_EQ(got.logprobs.size(), want.logprobs.size()) << what;
  for (size_t i = 0; i < got.logprobs.size(); ++i)
    EXPECT_NEAR(got.logprobs[i], want.logprobs[i], 2e-4) << what << " token " << i;
}

TEST(ServingAdapters, LoraRequestsInOneBatchGetTheirOwnAdapter) {
  test::TempDir dir;
  ModelConfig c = test::tiny_config("qwen2");
  save_random_lora(c, {"q_proj", "v_proj", "o_proj", "gate_proj", "down_proj"}, 3, dir.str() + "/a");
  save_random_lora(c, {"k_proj", "up_proj"}, 4, dir.str() + "/b");
  Transformer served(c);
  init_random(served, 21);
  save_model(served, dir.str() + "/base");
  EXPECT_EQ(attach_serving_lora(served, dir.str() + "/a", 1).modules, 2 * 5);
  attach_serving_lora(served, dir.str() + "/b", 2);
  const std::vector<int32_t> ids = {0, 1, 2, 1, 0, 2};
  const auto together = run_together(served, ids);

  // each adapter alone, attached the single-adapter way
  std::map<int32_t, std::vector<Result>> alone;
  for (int32_t a : {0, 1, 2}) {
    auto m = load_model(dir.str() + "/base", {.dtype = torch::kFloat32});
    if (a > 0) load_lora_adapter(m, dir.str() + (a == 1 ? "/a" : "/b"));
    alone[a] = run_together(m, std::vector<int32_t>(ids.size(), 0));
  }
  for (size_t i = 0; i < ids.size(); ++i)
    expect_same(together[i], alone[ids[i]][i], "request " + std::to_string(i) + " adapter " +
                                                   std::to_string(ids[i]));
  // the adapters change the output (the test could not pass by running the base)
  EXPECT_NE(alone[1][1].logprobs, alone[0][1].logprobs);
  EXPECT_NE(alone[2][2].logprobs, alone[0][2].logprobs);
}

class ServingEsft : public ::testing::TestWithParam<std::string> {};

TEST_P(ServingEsft, DeltaRequestsGetBasePlusDeltaOthersTheBase) {
  test::TempDir dir;
  const std::string base = dir.str() + "/base";
  const ModelConfig c = test::tiny_config(GetParam());
  {
    Transformer m(c);
    init_random(m, 11);
    save_model(m, base);
  }
  const int64_t moe_layer = 1;  // the first layer is dense in these configs
  ExpertConfig e1, e2;
  e1.experts[moe_layer] = {0, 1, 3};
  e1.shared_experts = true;
  e2.experts[moe_layer] = {1, 2};
  save_random_delta(base, e1, 5, dir.str() + "/d1");
  save_random_delta(base, e2, 6, dir.str() + "/d2");

  auto served = load_model(base, {.dtype = torch::kFloat32});
  const auto info = attach_serving_esft(served, dir.str() + "/d1", 1);
  // three routed experts and the shared experts of every MoE layer (finer_moe: both)
  EXPECT_EQ(info.modules, GetParam() == "finer_moe" ? 5 : 4);
  attach_serving_esft(served, dir.str() + "/d2", 2);
  const std::vector<int32_t> ids = {1, 0, 2, 2, 1, 0};
  const auto together = run_together(served, ids);

  std::map<int32_t, std::vector<Result>> alone;
  for (int32_t a : {0, 1, 2}) {
    auto m = load_model(a == 0 ? base : dir.str() + (a == 1 ? "/d1" : "/d2"),
                        {.dtype = torch::kFloat32});
    alone[a] = run_together(m, std::vector<int32_t>(ids.size(), 0));
  }
  for (size_t i = 0; i < ids.size(); ++i)
    expect_same(together[i], alone[ids[i]][i], "request " + std::to_string(i) + " adapter " +
                                                   std::to_string(ids[i]));
  EXPECT_NE(alone[1][0].logprobs, alone[0][0].logprobs);
  EXPECT_NE(alone[2][2].logprobs, alone[0][2].logprobs);
}

INSTANTIATE_TEST_SUITE_P(Moe, ServingEsft, ::testing::Values("qwen2_moe", "finer_moe"));

// LoRA on the experts turns the grouped kernel off: the per-expert path with
// nested adapter rows, an ESFT delta's experts beside a LoRA adapter's.
TEST(ServingAdapters, LoraOnExpertsAndEsftDeltasMixInOneBatch) {
  test::TempDir dir;
  const std::string base = dir.str() + "/base";
  const ModelConfig c = test::tiny_config("qwen2_moe");
  {
    Transformer m(c);
    init_random(m, 12);
    save_model(m, base);
  }
  save_random_lora(c, {"gate_proj", "up_proj", "down_proj", "q_proj"}, 7, dir.str() + "/lora");
  ExpertConfig e;
  e.experts[1] = {2, 4, 5};
  save_random_delta(base, e, 8, dir.str() + "/esft");

  auto served = load_model(base, {.dtype = torch::kFloat32});
  attach_serving_lora(served, dir.str() + "/lora", 1);
  attach_serving_esft(served, dir.str() + "/esft", 2);
  const std::vector<int32_t> ids = {2, 1, 0, 1, 2};
  const auto together = run_together(served, ids);

  auto lora = load_model(base, {.dtype = torch::kFloat32});
  load_lora_adapter(lora, dir.str() + "/lora");
  auto esft = load_model(dir.str() + "/esft", {.dtype = torch::kFloat32});
  auto plain = load_model(base, {.dtype = torch::kFloat32});
  const std::vector<int32_t> zeros(ids.size(), 0);
  const std::map<int32_t, std::vector<Result>> alone = {
      {0, run_together(plain, zeros)}, {1, run_together(lora, zeros)}, {2, run_together(esft, zeros)}};
  for (size_t i = 0; i < ids.size(); ++i)
    expect_same(together[i], alone.at(ids[i])[i], "request " + std::to_string(i));
}

TEST(ServingAdapters, PrefixCacheNeverSharesBlocksAcrossAdapters) {
  BlockManager blocks(16, 4);
  const std::vector<int32_t> p = prompt(13, 1);
  ASSERT_EQ(blocks.allocate(1, p), 0);
  blocks.mark_computed(1, 13);
  EXPECT_EQ(blocks.allocate(2, p, /*cache_salt=*/1), 0);  // another adapter: no hit
  blocks.mark_computed(2, 13);
  EXPECT_EQ(blocks.allocate(3, p), 12);                    // the base again: 3 full blocks
  EXPECT_EQ(blocks.allocate(4, p, 1), 12);                 // adapter 1 again: its own blocks
  EXPECT_NE(blocks.block_table(3)[0], blocks.block_table(4)[0]);
  blocks.check_invariants();
}

TEST(ServingAdapters, BadAdaptersAndIdsAreRejected) {
  test::TempDir dir;
  const ModelConfig c = test::tiny_config("qwen2");
  save_random_lora(c, {"q_proj"}, 3, dir.str() + "/a");
  Transformer m(c);
  init_random(m, 2);
  EXPECT_CONTAINS(test::message_of([&] { attach_serving_lora(m, dir.str() + "/a", 0); }), "id must be >= 1");
  attach_serving_lora(m, dir.str() + "/a", 1);
  EXPECT_TRUE(has_serving_adapter(m, 1));
  EXPECT_FALSE(has_serving_adapter(m, 2));
  EXPECT_CONTAINS(test::message_of([&] { attach_serving_lora(m, dir.str() + "/a", 1); }), "already attached");
  EXPECT_CONTAINS(test::message_of([&] { attach_serving_lora(m, dir.str() + "/missing", 2); }), "missing");

  // an engine request naming an id nothing is attached under
  EngineOptions o;
  o.kv_cache_bytes = 64 * kv_cache_bytes_per_token(m.config(), 4);
  Engine engine(m, nullptr, o);
  RequestParams p;
  p.adapter = 7;
  EXPECT_CONTAINS(test::message_of([&] { engine.submit(prompt(5, 0), p, {}); }), "adapter 7 is not attached");
  p.adapter = -1;
  EXPECT_CONTAINS(test::message_of([&] { engine.submit(prompt(5, 0), p, {}); }), "adapter must be >= 0");

  // MLA's kv_b_proj runs on cached latents, not the batch's rows
  const ModelConfig ds = test::tiny_config("deepseek_v2");
  save_random_lora(ds, {"kv_b_proj"}, 3, dir.str() + "/mla");
  Transformer dm(ds);
  EXPECT_CONTAINS(test::message_of([&] { attach_serving_lora(dm, dir.str() + "/mla", 1); }), "cached latents");

  // an ESFT delta that also trained attention cannot be swapped per request
  const std::string base = dir.str() + "/moe";
  Transformer moe(test::tiny_config("qwen2_moe"));
  init_random(moe, 4);
  save_model(moe, base);
  ExpertConfig e;
  e.experts[1] = {0};
  e.non_expert_modules = true;
  save_random_delta(base, e, 9, dir.str() + "/wide");
  auto served = load_model(base, {.dtype = torch::kFloat32});
  EXPECT_CONTAINS(test::message_of([&] { attach_serving_esft(served, dir.str() + "/wide", 1); }), "non-expert modules");
}

TEST(ServingAdapters, RequestsPickAnAdapterByModelName) {
  test::TempDir dir;
  Tokenizer tok = Tokenizer::from_dir(std::string(FINMOE_TEST_DATA_DIR) + "/tokenizer/qwen3");
  serve::ApiContext ctx;
  ctx.model_name = "base";
  ctx.adapters = {{"fin-qa", 1}, {"fin-esft", 2}};
  ctx.tokenizer = &tok;
  ctx.max_model_len = 128;
  ctx.vocab_size = tok.vocab_size();
  auto r = serve::parse_completion_request(R"({"model": "fin-esft", "prompt": "hi", "max_tokens": 2})", ctx);
  EXPECT_EQ(r.model, "fin-esft");
  ASSERT_EQ(r.params.size(), 1u);
  EXPECT_EQ(r.params[0].adapter, 2);
  r = serve::parse_completion_request(R"({"model": "base", "prompt": "hi", "max_tokens": 2})", ctx);
  EXPECT_EQ(r.params[0].adapter, 0);
  EXPECT_CONTAINS(test::message_of([&] { serve::parse_completion_request(R"({"model": "other", "prompt": "hi"})", ctx); }), "This server serves `base`, `fin-esft`, `fin-qa`");
}

}  // namespace
}  // namespace finmoe
