// Sampling rules and batched generation.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <map>

#include "finmoe/error.h"
#include "finmoe/generate.h"
#include "../model/test_util.h"

namespace finmoe {
namespace {

Transformer tiny_model() {
  Transformer m(test::tiny_config("qwen2"));
  init_random(m, 21);
  return m;
}

std::vector<int32_t> prompt(int n, int salt) {
  std::vector<int32_t> p;
  for (int i = 0; i < n; ++i) p.push_back((i * 37 + salt * 11 + 5) % 300);
  return p;
}

// Greedy continuation computed with the training forward over the whole
// sequence at every step: an independent path from step()/Generator.
std::vector<int32_t> greedy_by_forward(Transformer& m, std::vector<int32_t> ids, int n) {
  torch::NoGradGuard no_grad;
  std::vector<int32_t> out;
  for (int i = 0; i < n; ++i) {
    auto t = torch::tensor(std::vector<int64_t>(ids.begin(), ids.end())).unsqueeze(0);
    auto next = int32_t(m.forward(t)[0][-1].argmax().item<int64_t>());
    out.push_back(next);
    ids.push_back(next);
  }
  return out;
}

TEST(Generator, GreedyMatchesRepeatedFullForward) {
  auto m = tiny_model();
  Generator gen(m, nullptr);
  GenerationOptions o;
  o.sampling.temperature = 0;
  o.max_new_tokens = 10;
  auto r = gen.generate({prompt(13, 1)}, o);
  EXPECT_EQ(r[0].tokens, greedy_by_forward(m, prompt(13, 1), 10));
  EXPECT_EQ(r[0].finish_reason, "length");
  EXPECT_EQ(r[0].prompt_tokens, 13);
}

TEST(Generator, BatchedDifferentLengthsEqualOneByOne) {
  auto m = tiny_model();
  Generator gen(m, nullptr);
  GenerationOptions o;
  o.sampling.temperature = 0;
  o.max_new_tokens = 9;
  o.max_batched_tokens = 8;  // prefills are chunked and interleave with decodes
  o.block_size = 4;
  std::vector<std::vector<int32_t>> prompts{prompt(3, 1), prompt(17, 2), prompt(30, 3)};
  auto batched = gen.generate(prompts, o);
  for (size_t i = 0; i < prompts.size(); ++i) {
    auto alone = gen.generate({prompts[i]}, o);
    EXPECT_EQ(batched[i].tokens, alone[0].tokens) << "prompt " << i;
  }
}

TEST(Generator, SeededSamplingIsReproducible) {
  auto m = tiny_model();
  Generator gen(m, nullptr);
  GenerationOptions o;
  o.sampling.temperature = 1.5;
  o.sampling.seed = 42;
  o.max_new_tokens = 16;
  auto a = gen.generate({prompt(5, 1)}, o);
  auto b = gen.generate({prompt(5, 1)}, o);
  o.sampling.seed = 43;
  auto c = gen.generate({prompt(5, 1)}, o);
  EXPECT_EQ(a[0].tokens, b[0].tokens);
  EXPECT_NE(a[0].tokens, c[0].tokens);
}

TEST(Generator, StopTokenEndsSequence) {
  auto m = tiny_model();
  Generator gen(m, nullptr);
  GenerationOptions o;
  o.sampling.temperature = 0;
  o.max_new_tokens = 10;
  auto free_run = gen.generate({prompt(7, 4)}, o)[0].tokens;
  o.stop_token_ids = {free_run[4]};
  auto r = gen.generate({prompt(7, 4)}, o)[0];
  // stops at the first occurrence of that token, which is included
  const auto first = std::find(free_run.begin(), free_run.end(), free_run[4]) - free_run.begin();
  EXPECT_EQ(r.tokens, std::vector<int32_t>(free_run.begin(), free_run.begin() + first + 1));
  EXPECT_EQ(r.finish_reason, "stop");
}

TEST(Generator, PromptOverContextIsRejected) {
  auto m = tiny_model();
  Generator gen(m, nullptr);
  try {
    gen.generate({prompt(200, 1)}, GenerationOptions{});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("context is 128"), std::string::npos) << e.what();
  }
  EXPECT_THROW(gen.generate({{1, 2, 999}}, GenerationOptions{}), Error);  // id outside vocab
}

TEST(Generator, StopStringCutsTextAndStreamNeverLeaksIt) {
  const std::string tok_dir = std::string(FINMOE_TEST_DATA_DIR) + "/tokenizer/qwen3";
  if (!std::filesystem::exists(tok_dir + "/tokenizer.json")) GTEST_SKIP() << "no tokenizer data";
  auto tok = Tokenizer::from_dir(tok_dir);
  auto m = tiny_model();
  Generator gen(m, &tok);
  GenerationOptions o;
  o.sampling.temperature = 0;
  o.max_new_tokens = 24;
  auto full = gen.generate({prompt(6, 2)}, o)[0];
  ASSERT_GT(full.text.size(), 6u);
  const std::string stop = full.text.substr(full.text.size() / 2, 3);
  o.stop_strings = {stop};
  std::string streamed;
  auto r = gen.generate({prompt(6, 2)}, o, [&](size_t, const std::string& s) { streamed += s; })[0];
  EXPECT_EQ(r.finish_reason, "stop");
  EXPECT_EQ(r.text, full.text.substr(0, full.text.find(stop)));
  EXPECT_EQ(streamed, r.text);
}

// ---- Sampler ------------------------------------------------------------------

std::vector<float> logits5() { return {2.0f, 1.0f, 0.5f, 0.0f, -1.0f}; }

std::map<int32_t, double> softmax_subset(const std::vector<float>& z, std::vector<int> keep,
                                         double temperature = 1.0) {
  double sum = 0;
  for (int i : keep) sum += std::exp(z[size_t(i)] / temperature);
  std::map<int32_t, double> out;
  for (int i : keep) out[i] = std::exp(z[size_t(i)] / temperature) / sum;
  return out;
}

void expect_distribution(const SamplingParams& p, std::span<const int32_t> history,
                         const std::map<int32_t, double>& want, const std::vector<float>& z) {
  Sampler s(p, 0);
  auto got = s.distribution(z, history);
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [id, prob] : got) {
    ASSERT_TRUE(want.count(id)) << "unexpected token " << id;
    EXPECT_NEAR(prob, want.at(id), 1e-6) << "token " << id;
  }
}

TEST(Sampler, TopKKeepsTheKLargest) {
  SamplingParams p;
  p.top_k = 2;
  expect_distribution(p, {}, softmax_subset(logits5(), {0, 1}), logits5());
}

TEST(Sampler, TopPKeepsSmallestSetReachingMass) {
  // softmax(2, 1, .5, 0, -1) = .563, .207, .126, .076, .028
  SamplingParams p;
  p.top_p = 0.5;  // the top token alone reaches it
  expect_distribution(p, {}, softmax_subset(logits5(), {0}), logits5());
  p.top_p = 0.7;  // .563 + .207 = .770
  expect_distribution(p, {}, softmax_subset(logits5(), {0, 1}), logits5());
  p.top_p = 0.8;  // + .126 = .896
  expect_distribution(p, {}, softmax_subset(logits5(), {0, 1, 2}), logits5());
}

TEST(Sampler, MinPDropsTokensBelowFractionOfMax) {
  SamplingParams p;
  p.min_p = 0.3;  // p_i / p_max = exp(z_i - 2) >= .3  <=> z_i >= 2 + ln .3 = 0.796
  expect_distribution(p, {}, softmax_subset(logits5(), {0, 1}), logits5());
}

TEST(Sampler, TemperatureAndRepetitionPenalty) {
  SamplingParams p;
  p.temperature = 0.5;
  p.repetition_penalty = 2.0;
  std::vector<int32_t> history{0, 4};
  auto z = logits5();
  z[0] = 2.0f / 2;   // positive logits divided
  z[4] = -1.0f * 2;  // negative multiplied
  expect_distribution(p, history, softmax_subset(z, {0, 1, 2, 3, 4}, 0.5), logits5());
}

TEST(Sampler, EmpiricalFrequenciesFollowTheDistribution) {
  SamplingParams p;
  p.top_k = 3;
  Sampler s(p, 123);
  std::map<int32_t, int> counts;
  const int n = 20000;
  for (int i = 0; i < n; ++i) counts[s.sample(logits5(), {})]++;
  auto want = softmax_subset(logits5(), {0, 1, 2});
  for (const auto& [id, prob] : want) EXPECT_NEAR(counts[id] / double(n), prob, 0.015) << id;
  EXPECT_EQ(counts.size(), 3u);
}

// No truncating warper: sample() walks the whole vocabulary's softmax without
// building distribution()'s list; both must describe the same distribution.
TEST(Sampler, UntruncatedSamplingFollowsTheSoftmax) {
  SamplingParams p;
  p.temperature = 0.7;
  const auto want = softmax_subset(logits5(), {0, 1, 2, 3, 4}, 0.7);
  expect_distribution(p, {}, want, logits5());
  Sampler s(p, 99);
  std::map<int32_t, int> counts;
  const int n = 40000;
  for (int i = 0; i < n; ++i) counts[s.sample(logits5(), {})]++;
  for (const auto& [id, prob] : want) EXPECT_NEAR(counts[id] / double(n), prob, 0.01) << id;
  // the same seed draws the same tokens, call after call
  Sampler a(p, 5), b(p, 5);
  for (int i = 0; i < 200; ++i) ASSERT_EQ(a.sample(logits5(), {}), b.sample(logits5(), {}));
}

TEST(Sampler, InvalidParametersNameTheField) {
  SamplingParams p;
  p.top_p = 0;
  try {
    p.validate();
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("top_p"), std::string::npos);
  }
}

}  // namespace
}  // namespace finmoe
