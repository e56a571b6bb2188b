// Serving engine: continuous batching with chunked prefill, preemption by
// recompute, prefix caching, cancellation, per-request sampling and
// penalties, against independent references (requests run alone, the static
// Generator, Transformer::forward) and invariants (every block free again,
// exactly one final event per request).
#include "finmoe/engine.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include "../expect_error.h"
#include "../model/test_util.h"
#include "../scoped_env.h"
#include "finmoe/block_manager.h"
#include "finmoe/error.h"
#include "finmoe/generate.h"
#include "serve/scheduler.h"

namespace finmoe {
namespace {

// On FINMOE_TEST_DEVICE (default cpu).
Transformer tiny_model() {
  Transformer m(test::tiny_config("qwen2"), torch::kFloat32, test::test_device());
  init_random(m, 21);  // vocab 300, 2 layers, context 128
  return m;
}

torch::Tensor as_batch(const std::vector<int32_t>& ids, torch::Device device) {  // [1,T]
  return torch::tensor(std::vector<int64_t>(ids.begin(), ids.end())).unsqueeze(0).to(device);
}

std::vector<int32_t> prompt(int n, int salt) {
  std::vector<int32_t> p;
  for (int i = 0; i < n; ++i) p.push_back((i * 37 + salt * 11 + 5) % 300);
  return p;
}

// Options for a cache of `tokens` token slots in blocks of `block_size`.
EngineOptions cache_of(const Transformer& m, int64_t tokens, int64_t block_size) {
  EngineOptions o;
  o.block_size = block_size;
  o.kv_cache_bytes = tokens * kv_cache_bytes_per_token(m.config(), 4);
  return o;
}

RequestParams greedy(int64_t max_tokens) {
  RequestParams p;
  p.sampling.temperature = 0;
  p.max_tokens = max_tokens;
  return p;
}

RequestParams seeded(int64_t max_tokens, uint64_t seed) {
  RequestParams p;
  p.sampling.temperature = 1.0;
  p.sampling.top_k = 40;
  p.sampling.seed = seed;
  p.seed_given = true;
  p.max_tokens = max_tokens;
  return p;
}

// Everything a request's callback saw, checked for consistency as it arrives.
struct Collected {
  std::vector<int32_t> tokens;
  std::string text;
  std::vector<TokenLogprob> logprobs;
  int events = 0;
  int finished_events = 0;
  std::string reason;
  int64_t cached_prompt_tokens = -1;
  bool consistent = true;  // completion_tokens always matched the tokens received
};

struct Collector {
  std::mutex mu;
  std::condition_variable done;
  std::map<uint64_t, Collected> by_id;
  int finished = 0;

  OutputCallback callback() {
    return [this](const RequestOutput& o) {
      std::lock_guard lock(mu);
      Collected& c = by_id[o.request_id];
      if (c.finished_events > 0) c.consistent = false;  // an event after the final one
      ++c.events;
      c.tokens.insert(c.tokens.end(), o.token_ids.begin(), o.token_ids.end());
      c.text += o.text;
      c.logprobs.insert(c.logprobs.end(), o.logprobs.begin(), o.logprobs.end());
      if (o.completion_tokens != int64_t(c.tokens.size())) c.consistent = false;
      c.cached_prompt_tokens = o.cached_prompt_tokens;
      if (o.finished) {
        ++c.finished_events;
        c.reason = o.finish_reason;
        ++finished;
        done.notify_all();
      }
    };
  }
  Collected get(uint64_t id) {
    std::lock_guard lock(mu);
    return by_id[id];
  }
};

// Each request alone in a fresh engine with the same options.
std::vector<Collected> one_at_a_time(Transformer& m, const EngineOptions& o,
                                     const std::vector<std::vector<int32_t>>& prompts,
                                     const std::vector<RequestParams>& params) {
  std::vector<Collected> out;
  for (size_t i = 0; i < prompts.size(); ++i) {
    Engine engine(m, nullptr, o);
    Collector c;
    const auto id = engine.submit(prompts[i], params[i], c.callback());
    engine.run_until_idle();
    EXPECT_EQ(engine.stats().preemptions, 0) << "request " << i << " alone was preempted";
    out.push_back(c.get(id));
  }
  return out;
}

void expect_all_blocks_free(const Engine& engine) {
  const EngineStats s = engine.stats();
  EXPECT_EQ(s.blocks_free, s.num_blocks);
  EXPECT_EQ(s.blocks_used, 0);
  EXPECT_EQ(s.running, 0);
  EXPECT_EQ(s.waiting, 0);
}

// ---- continuous batching ----------------------------------------------------

TEST(Engine, BatchedWithPreemptionEqualsOneAtATime) {
  auto m = tiny_model();
  // 24 blocks of 4 = 96 token slots; six sequences of up to 58 tokens each
  // cannot all hold their blocks at once, so running ones get preempted.
  EngineOptions o = cache_of(m, 96, 4);
  o.max_batched_tokens = 16;  // prefills are chunked and share steps with decodes
  o.max_num_seqs = 6;
  std::vector<std::vector<int32_t>> prompts;
  std::vector<RequestParams> params;
  for (int i = 0; i < 6; ++i) {
    prompts.push_back(prompt(5 + 5 * i, i + 1));
    // half greedy, half seeded sampling
    params.push_back(i % 2 ? seeded(28, 1000 + i) : greedy(28));
  }
  const auto alone = one_at_a_time(m, o, prompts, params);

  Engine engine(m, nullptr, o);
  Collector c;
  std::vector<uint64_t> ids;
  for (size_t i = 0; i < prompts.size(); ++i)
    ids.push_back(engine.submit(prompts[i], params[i], c.callback()));
  engine.run_until_idle();

  const EngineStats s = engine.stats();
  EXPECT_GT(s.preemptions, 0);
  EXPECT_GT(s.max_running_seen, 1);
  EXPECT_EQ(s.requests_finished, 6);
  EXPECT_EQ(s.generation_tokens, 6 * 28);
  expect_all_blocks_free(engine);
  for (size_t i = 0; i < ids.size(); ++i) {
    const Collected got = c.get(ids[i]);
    EXPECT_EQ(got.tokens, alone[i].tokens) << "request " << i;
    EXPECT_EQ(got.tokens.size(), 28u) << "request " << i;  // nothing emitted twice
    EXPECT_EQ(got.reason, "length");
    EXPECT_EQ(got.finished_events, 1);
    EXPECT_TRUE(got.consistent) << "request " << i;
  }
}

// Every warper (the whole vocabulary's softmax without a candidate list, top_p,
// min_p, repetition and presence penalties, logprobs, a low temperature) with
// eight requests sampling in the same steps: each request's tokens are the
// ones it gets alone.
TEST(Engine, SampledRequestsBatchedEqualOneAtATime) {
  auto m = tiny_model();
  EngineOptions o = cache_of(m, 1024, 8);
  std::vector<std::vector<int32_t>> prompts;
  std::vector<RequestParams> params;
  for (int i = 0; i < 8; ++i) {
    prompts.push_back(prompt(4 + i, i + 3));
    RequestParams p = i == 7 ? greedy(20) : seeded(20, 300 + i);
    p.sampling.top_k = 0;  // the whole vocabulary: no candidate list
    if (i == 1) p.sampling.top_p = 0.9;
    if (i == 2) p.sampling.min_p = 0.2;
    if (i == 3) p.sampling.repetition_penalty = 1.3;
    if (i == 4) p.logprobs = 3;
    if (i == 5) p.presence_penalty = 0.5;
    if (i == 6) p.sampling.temperature = 0.3;
    params.push_back(p);
  }
  const auto alone = one_at_a_time(m, o, prompts, params);
  for (int round = 0; round < 2; ++round) {
    Engine engine(m, nullptr, o);
    Collector c;
    std::vector<uint64_t> ids;
    for (size_t i = 0; i < prompts.size(); ++i)
      ids.push_back(engine.submit(prompts[i], params[i], c.callback()));
    engine.run_until_idle();
    EXPECT_EQ(engine.stats().max_running_seen, 8);
    for (size_t i = 0; i < ids.size(); ++i) {
      const Collected got = c.get(ids[i]);
      EXPECT_EQ(got.tokens, alone[i].tokens) << "request " << i << ", round " << round;
      ASSERT_EQ(got.logprobs.size(), alone[i].logprobs.size()) << "request " << i;
      for (size_t t = 0; t < got.logprobs.size(); ++t) {
        EXPECT_EQ(got.logprobs[t].token, got.tokens[t]);
        EXPECT_EQ(got.logprobs[t].top.size(), 3u);
      }
      EXPECT_TRUE(got.consistent);
    }
  }
}

TEST(Engine, SeededSamplingDependsOnlyOnTheSeed) {
  auto m = tiny_model();
  EngineOptions o = cache_of(m, 512, 8);
  Engine engine(m, nullptr, o);
  Collector c;
  const auto a = engine.submit(prompt(6, 1), seeded(16, 7), c.callback());
  const auto b = engine.submit(prompt(6, 1), seeded(16, 7), c.callback());
  const auto d = engine.submit(prompt(6, 1), seeded(16, 8), c.callback());
  RequestParams unseeded = seeded(16, 7);
  unseeded.seed_given = false;  // the engine draws one
  const auto e = engine.submit(prompt(6, 1), unseeded, c.callback());
  engine.run_until_idle();
  EXPECT_EQ(c.get(a).tokens, c.get(b).tokens);
  EXPECT_NE(c.get(a).tokens, c.get(d).tokens);
  EXPECT_EQ(c.get(e).tokens.size(), 16u);
}

TEST(Engine, GreedyEqualsGenerator) {
  auto m = tiny_model();
  std::vector<std::vector<int32_t>> prompts{prompt(3, 1), prompt(17, 2), prompt(30, 3)};
  Generator gen(m, nullptr);
  GenerationOptions go;
  go.sampling.temperature = 0;
  go.max_new_tokens = 12;
  const auto want = gen.generate(prompts, go);

  EngineOptions o = cache_of(m, 256, 4);
  o.max_batched_tokens = 8;
  Engine engine(m, nullptr, o);
  Collector c;
  std::vector<uint64_t> ids;
  for (const auto& p : prompts) ids.push_back(engine.submit(p, greedy(12), c.callback()));
  engine.run_until_idle();
  for (size_t i = 0; i < prompts.size(); ++i)
    EXPECT_EQ(c.get(ids[i]).tokens, want[i].tokens) << "prompt " << i;
}

// On CUDA, decode-only steps replay CUDA graphs and attention runs in the
// paged kernels: neither may change the tokens (float32 model).
TEST(Engine, CudaGraphsAndKernelsKeepGreedyOutputs) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  Transformer m(test::tiny_config("qwen2"), torch::kFloat32, torch::Device(torch::kCUDA));
  init_random(m, 21);
  EngineOptions o = cache_of(m, 512, 4);
  o.max_batched_tokens = 16;  // prefill chunks share steps with decodes
  auto run = [&](const char* attention, const char* graphs) {
    test::ScopedEnv a("FINMOE_CUDA_ATTENTION", attention), g("FINMOE_CUDA_GRAPHS", graphs);
    Engine engine(m, nullptr, o);
    Collector c;
    std::vector<uint64_t> ids;
    // sequences finish at different steps: decode batches of 7 down to 1
    for (int i = 0; i < 7; ++i)
      ids.push_back(engine.submit(prompt(4 + 6 * i, i), greedy(8 + 3 * i), c.callback()));
    engine.run_until_idle();
    std::vector<std::vector<int32_t>> out;
    for (auto id : ids) out.push_back(c.get(id).tokens);
    return out;
  };
  const auto with_graphs = run(nullptr, nullptr);
  EXPECT_EQ(with_graphs, run(nullptr, "0"));
  EXPECT_EQ(with_graphs, run("eager", nullptr));
}

TEST(Engine, LongSequenceStopsAtTheCacheSizeInsteadOfHanging) {
  auto m = tiny_model();
  EngineOptions o = cache_of(m, 32, 4);  // 8 blocks: the whole cache holds 32 tokens
  Engine engine(m, nullptr, o);
  EXPECT_EQ(engine.stats().max_tokens_in_cache, 32);
  Collector c;
  const auto a = engine.submit(prompt(20, 1), greedy(100), c.callback());
  const auto b = engine.submit(prompt(10, 2), greedy(100), c.callback());
  engine.run_until_idle();
  EXPECT_EQ(c.get(a).tokens.size(), 12u);  // 20 + 12 = 32
  EXPECT_EQ(c.get(b).tokens.size(), 22u);
  EXPECT_EQ(c.get(a).reason, "length");
  EXPECT_GT(engine.stats().preemptions, 0);
  expect_all_blocks_free(engine);
}

// ---- cancellation -----------------------------------------------------------

TEST(Engine, CancellationsLeaveEveryBlockFree) {
  auto m = tiny_model();
  EngineOptions o = cache_of(m, 96, 4);
  o.max_num_seqs = 3;  // the rest wait
  o.max_batched_tokens = 12;
  Engine engine(m, nullptr, o);
  Collector c;
  std::vector<uint64_t> ids;
  // Request 1 cancels itself from its callback after three tokens.
  uint64_t self_cancel = 0;
  std::vector<int32_t> seen_by_self;
  auto inner = c.callback();
  for (int i = 0; i < 10; ++i) {
    OutputCallback cb = c.callback();
    if (i == 1)
      cb = [&, inner](const RequestOutput& out) {
        inner(out);
        seen_by_self.insert(seen_by_self.end(), out.token_ids.begin(), out.token_ids.end());
        if (!out.finished && seen_by_self.size() >= 3) engine.cancel(self_cancel);
      };
    ids.push_back(engine.submit(prompt(6 + 3 * i, i), i % 3 ? greedy(20) : seeded(20, i), cb));
    if (i == 1) self_cancel = ids.back();
  }
  // Two cancelled while still waiting (before any step).
  EXPECT_TRUE(engine.cancel(ids[8]));
  EXPECT_TRUE(engine.cancel(ids[9]));
  // A few steps, then two running ones are cancelled mid-decode.
  for (int k = 0; k < 6; ++k) engine.step();
  EXPECT_TRUE(engine.cancel(ids[0]));
  EXPECT_TRUE(engine.cancel(ids[2]));
  engine.run_until_idle();
  EXPECT_FALSE(engine.cancel(ids[3]));  // already finished
  EXPECT_FALSE(engine.cancel(12345));   // unknown

  const std::set<size_t> cancelled{0, 1, 2, 8, 9};
  for (size_t i = 0; i < ids.size(); ++i) {
    const Collected got = c.get(ids[i]);
    EXPECT_EQ(got.finished_events, 1) << "request " << i;
    EXPECT_TRUE(got.consistent) << "request " << i;
    if (cancelled.count(i)) {
      EXPECT_EQ(got.reason, "abort") << "request " << i;
      EXPECT_LT(got.tokens.size(), 20u) << "request " << i;
    } else {
      EXPECT_EQ(got.reason, "length") << "request " << i;
      EXPECT_EQ(got.tokens.size(), 20u) << "request " << i;
    }
  }
  EXPECT_EQ(c.get(ids[8]).tokens.size(), 0u);
  EXPECT_EQ(c.get(ids[1]).tokens.size(), 3u);
  const EngineStats s = engine.stats();
  EXPECT_EQ(s.requests_cancelled, 5);
  EXPECT_EQ(s.requests_finished, 5);
  EXPECT_EQ(c.finished, 10);
  int64_t sampled = 0;
  for (uint64_t id : ids) sampled += int64_t(c.get(id).tokens.size());
  EXPECT_EQ(s.generation_tokens, sampled);
  expect_all_blocks_free(engine);
}

TEST(Engine, PendingRequestsAbortWhenTheEngineGoes) {
  auto m = tiny_model();
  Collector c;
  uint64_t a, b;
  {
    Engine engine(m, nullptr, cache_of(m, 128, 4));
    a = engine.submit(prompt(8, 1), greedy(30), c.callback());
    engine.step();
    engine.step();
    b = engine.submit(prompt(8, 2), greedy(30), c.callback());
  }
  EXPECT_EQ(c.get(a).reason, "abort");
  EXPECT_EQ(c.get(a).tokens.size(), 2u);
  EXPECT_EQ(c.get(b).reason, "abort");
  EXPECT_EQ(c.get(a).finished_events + c.get(b).finished_events, 2);
}

// ---- prefix caching ---------------------------------------------------------

TEST(Engine, SharedSystemPromptIsComputedOnce) {
  auto m = tiny_model();
  const auto system = prompt(40, 9);
  auto with_suffix = [&](int salt) {
    auto p = system;
    for (int i = 0; i < 5; ++i) p.push_back((salt * 13 + i * 7) % 300);
    return p;
  };
  std::map<bool, std::vector<Collected>> results;
  std::map<bool, EngineStats> stats;
  for (bool caching : {true, false}) {
    EngineOptions o = cache_of(m, 256, 4);
    o.enable_prefix_caching = caching;
    Engine engine(m, nullptr, o);
    Collector c;
    for (int salt : {1, 2}) {  // one after the other: the first one's blocks are computed
      const auto id = engine.submit(with_suffix(salt), greedy(10), c.callback());
      engine.run_until_idle();
      results[caching].push_back(c.get(id));
    }
    stats[caching] = engine.stats();
    expect_all_blocks_free(engine);
  }
  EXPECT_EQ(results[true][0].cached_prompt_tokens, 0);
  EXPECT_EQ(results[true][1].cached_prompt_tokens, 40);  // the system prompt's 10 full blocks
  EXPECT_EQ(results[false][1].cached_prompt_tokens, 0);
  EXPECT_EQ(stats[false].prompt_tokens, 45 + 45);
  EXPECT_EQ(stats[true].prompt_tokens, 45 + 5);
  EXPECT_EQ(stats[true].prefix_hit_tokens, 40);
  for (int i = 0; i < 2; ++i) EXPECT_EQ(results[true][i].tokens, results[false][i].tokens) << i;
}

// ---- stops, limits, logprobs, penalties ---------------------------------------

Collected run_alone(Transformer& m, const Tokenizer* tok, const std::vector<int32_t>& p,
                    const RequestParams& params, std::optional<EngineOptions> o = {}) {
  Engine engine(m, tok, o ? *o : cache_of(m, 256, 4));
  Collector c;
  const auto id = engine.submit(p, params, c.callback());
  engine.run_until_idle();
  expect_all_blocks_free(engine);
  return c.get(id);
}

TEST(Engine, StopTokenAndMaxTokensAndMaxModelLen) {
  auto m = tiny_model();
  const auto free_run = run_alone(m, nullptr, prompt(7, 4), greedy(10)).tokens;
  ASSERT_EQ(free_run.size(), 10u);
  RequestParams p = greedy(10);
  p.stop_token_ids = {free_run[4]};
  const auto r = run_alone(m, nullptr, prompt(7, 4), p);
  const auto first = std::find(free_run.begin(), free_run.end(), free_run[4]) - free_run.begin();
  EXPECT_EQ(r.tokens, std::vector<int32_t>(free_run.begin(), free_run.begin() + first + 1));
  EXPECT_EQ(r.reason, "stop");

  const auto short_run = run_alone(m, nullptr, prompt(7, 4), greedy(3));
  EXPECT_EQ(short_run.tokens, std::vector<int32_t>(free_run.begin(), free_run.begin() + 3));
  EXPECT_EQ(short_run.reason, "length");

  EngineOptions o = cache_of(m, 256, 4);
  o.max_model_len = 12;  // 7 prompt tokens leave room for 5
  const auto capped = run_alone(m, nullptr, prompt(7, 4), greedy(10), o);
  EXPECT_EQ(capped.tokens, std::vector<int32_t>(free_run.begin(), free_run.begin() + 5));
  EXPECT_EQ(capped.reason, "length");
}

// min_tokens masks the stop tokens until it is reached: the first tokens are
// those of a run that biases the stop token by -100 (the same choice made
// another way), and the request ends at the stop token only after them.
TEST(Engine, MinTokensHoldsTheStopTokensBack) {
  auto m = tiny_model();
  const auto free_run = run_alone(m, nullptr, prompt(7, 4), greedy(10)).tokens;
  ASSERT_EQ(free_run.size(), 10u);
  const int32_t stop = free_run[1];
  RequestParams plain = greedy(10);
  plain.stop_token_ids = {stop};
  const auto early = run_alone(m, nullptr, prompt(7, 4), plain);
  ASSERT_LE(early.tokens.size(), 2u);  // stops at the first occurrence without min_tokens

  RequestParams biased = greedy(4);
  biased.logit_bias = {{stop, -100.f}};
  const auto expected = run_alone(m, nullptr, prompt(7, 4), biased).tokens;
  ASSERT_EQ(expected.size(), 4u);

  RequestParams held = plain;
  held.min_tokens = 4;
  const auto r = run_alone(m, nullptr, prompt(7, 4), held);
  ASSERT_GE(r.tokens.size(), 4u);
  EXPECT_EQ(std::vector<int32_t>(r.tokens.begin(), r.tokens.begin() + 4), expected);
  const auto at = std::find(r.tokens.begin(), r.tokens.end(), stop);
  if (r.reason == "stop") EXPECT_EQ(at, r.tokens.end() - 1);
  else EXPECT_EQ(at, r.tokens.end());

  RequestParams bad = greedy(3);
  bad.min_tokens = 4;
  EXPECT_THROW(bad.validate(), Error);
}

TEST(Engine, StopStringsCutTheTextAndNeverStreamIt) {
  const std::string tok_dir = std::string(FINMOE_TEST_DATA_DIR) + "/tokenizer/qwen3";
  if (!std::filesystem::exists(tok_dir + "/tokenizer.json")) GTEST_SKIP() << "no tokenizer data";
  auto tok = Tokenizer::from_dir(tok_dir);
  auto m = tiny_model();
  const auto full = run_alone(m, &tok, prompt(6, 2), greedy(24));
  ASSERT_GT(full.text.size(), 6u);
  EXPECT_EQ(full.text, tok.decode(full.tokens, /*skip_special_tokens=*/true));
  const std::string stop = full.text.substr(full.text.size() / 2, 3);
  const size_t at = full.text.find(stop);

  RequestParams p = greedy(24);
  p.stop_strings = {"never appears in this text", stop};
  const auto cut = run_alone(m, &tok, prompt(6, 2), p);
  EXPECT_EQ(cut.reason, "stop");
  EXPECT_EQ(cut.text, full.text.substr(0, at));  // the streamed pieces, concatenated
  EXPECT_LT(cut.tokens.size(), full.tokens.size());

  p.include_stop_str_in_output = true;
  const auto kept = run_alone(m, &tok, prompt(6, 2), p);
  EXPECT_EQ(kept.text, full.text.substr(0, at + stop.size()));
  EXPECT_EQ(kept.tokens, cut.tokens);
}

// log_softmax of forward()'s last-position logits for prompt + generated[:i].
torch::Tensor forward_logprobs(Transformer& m, std::vector<int32_t> ids) {
  torch::NoGradGuard no_grad;
  auto z = m.forward(as_batch(ids, m.device()))[0][-1].to(torch::kCPU, torch::kFloat64);  // [V]
  return torch::log_softmax(z, 0);
}

TEST(Engine, LogprobsAreLogSoftmaxOfTheRawLogits) {
  auto m = tiny_model();
  RequestParams p = greedy(6);
  p.logprobs = 5;
  p.presence_penalty = 1.5;  // changes the choice, not the reported (raw) logprobs
  const auto r = run_alone(m, nullptr, prompt(9, 3), p);
  ASSERT_EQ(r.logprobs.size(), 6u);
  auto ids = prompt(9, 3);
  for (size_t i = 0; i < r.tokens.size(); ++i) {
    const auto ref = forward_logprobs(m, ids);
    const TokenLogprob& lp = r.logprobs[i];
    EXPECT_EQ(lp.token, r.tokens[i]);
    EXPECT_NEAR(lp.logprob, ref[lp.token].item<double>(), 1e-4) << "token " << i;
    ASSERT_EQ(lp.top.size(), 5u);
    const auto [vals, idx] = ref.topk(5);
    for (size_t k = 0; k < 5; ++k) {
      EXPECT_EQ(lp.top[k].first, idx[int64_t(k)].item<int64_t>()) << "token " << i << " rank " << k;
      EXPECT_NEAR(lp.top[k].second, vals[int64_t(k)].item<double>(), 1e-4);
      if (k > 0) {
        EXPECT_GE(lp.top[k - 1].second, lp.top[k].second);
      }
    }
    ids.push_back(r.tokens[i]);
  }
  // Without penalties greedy picks the best token, which heads the top list.
  RequestParams plain = greedy(6);
  plain.logprobs = 3;
  const auto g = run_alone(m, nullptr, prompt(9, 3), plain);
  for (size_t i = 0; i < g.tokens.size(); ++i) {
    EXPECT_EQ(g.logprobs[i].top.front().first, g.tokens[i]);
    EXPECT_FLOAT_EQ(g.logprobs[i].top.front().second, g.logprobs[i].logprob);
  }
  RequestParams chosen_only = greedy(2);
  chosen_only.logprobs = 0;
  const auto c0 = run_alone(m, nullptr, prompt(9, 3), chosen_only);
  ASSERT_EQ(c0.logprobs.size(), 2u);
  EXPECT_TRUE(c0.logprobs[0].top.empty());
}

TEST(Engine, LogitBiasIsAddedToTheLogitsBeforeSampling) {
  auto m = tiny_model();
  const auto free_run = run_alone(m, nullptr, prompt(6, 7), greedy(5)).tokens;
  const std::vector<std::pair<int32_t, float>> bias = {
      {free_run[0], -100.f}, {42, 2.5f}, {7, -1.f}};
  // Reference: full forward each step, the bias added, argmax.
  auto ids = prompt(6, 7);
  std::vector<int32_t> want;
  {
    torch::NoGradGuard no_grad;
    for (int i = 0; i < 5; ++i) {
      auto z = m.forward(as_batch(ids, m.device()))[0][-1].to(torch::kCPU, torch::kFloat64);  // [V]
      for (const auto& [tok, b] : bias) z[tok] += b;
      want.push_back(int32_t(z.argmax().item<int64_t>()));
      ids.push_back(want.back());
    }
  }
  RequestParams p = greedy(5);
  p.logit_bias = bias;
  p.logprobs = 1;
  const auto got = run_alone(m, nullptr, prompt(6, 7), p);
  EXPECT_EQ(got.tokens, want);
  EXPECT_NE(got.tokens[0], free_run[0]) << "-100 rules the greedy choice out";
  // logprobs stay those of the raw logits: the banned token is still the most likely
  EXPECT_EQ(got.logprobs[0].top.front().first, free_run[0]);
  p.logit_bias = {{42, 100.f}};
  EXPECT_EQ(run_alone(m, nullptr, prompt(6, 7), p).tokens, std::vector<int32_t>(5, 42));
}

// A Qwen-shaped vocabulary: 151,936 model rows, 151,669 tokenizer tokens. The
// padded rows are scaled up until they dominate the logits, as a model that
// strays can make them.
TEST(Engine, IdsWithoutATokenAreNeverSampled) {
  const std::string tok_dir = std::string(FINMOE_TEST_DATA_DIR) + "/tokenizer/qwen3";
  if (!std::filesystem::exists(tok_dir + "/tokenizer.json")) GTEST_SKIP() << "no tokenizer data";
  const auto tok = Tokenizer::from_dir(tok_dir);
  const int64_t n_tok = tok.vocab_size();
  ModelConfig cfg = test::tiny_config("qwen2");  // tied embeddings: the rows are also the lm_head
  cfg.vocab_size = 151936;
  ASSERT_LT(n_tok, cfg.vocab_size);
  Transformer m(cfg, torch::kFloat32, test::test_device());
  init_random(m, 21);
  {
    torch::NoGradGuard no_grad;
    for (auto& [name, t] : m.named_parameters())
      if (name == "model.embed_tokens.weight") t.slice(0, n_tok).mul_(25);  // [V - n_tok, D]
  }
  // Reference: argmax over the ids with a token; the unmasked argmax is a padded id.
  const int steps = 6;
  auto ids = prompt(9, 1);
  std::vector<int32_t> want;
  {
    torch::NoGradGuard no_grad;
    for (int i = 0; i < steps; ++i) {
      auto z = m.forward(as_batch(ids, m.device()))[0][-1].to(torch::kCPU, torch::kFloat64);  // [V]
      ASSERT_GE(z.argmax().item<int64_t>(), n_tok)
          << "step " << i << ": the padded rows must dominate";
      want.push_back(int32_t(z.slice(0, 0, n_tok).argmax().item<int64_t>()));
      ids.push_back(want.back());
    }
  }
  RequestParams p = greedy(steps);
  p.logprobs = 5;
  const auto got = run_alone(m, &tok, prompt(9, 1), p);
  EXPECT_EQ(got.tokens, want);
  EXPECT_EQ(got.text, tok.decode(got.tokens, /*skip_special_tokens=*/true));
  for (const auto& lp : got.logprobs)
    for (const auto& [id, l] : lp.top) EXPECT_LT(id, n_tok) << "a padded id among the top logprobs";
  // Sampling, too: at temperature 1 an unmasked sampler would draw padded ids.
  RequestParams hot = seeded(24, 5);
  hot.sampling.top_k = 0;
  for (int32_t t : run_alone(m, &tok, prompt(9, 1), hot).tokens) EXPECT_LT(t, n_tok);
  // Without a tokenizer every row is a token: the padded argmax comes out.
  EXPECT_GE(run_alone(m, nullptr, prompt(9, 1), greedy(1)).tokens.at(0), n_tok);

  Generator gen(m, &tok);
  GenerationOptions go;
  go.sampling.temperature = 0;
  go.max_new_tokens = steps;
  EXPECT_EQ(gen.generate({prompt(9, 1)}, go).at(0).tokens, want) << "the Generator masks them too";
}

TEST(Engine, PresenceAndFrequencyPenaltiesFollowTheOpenAIRule) {
  auto m = tiny_model();
  const double presence = 0.7, frequency = 0.9;
  const int n = 16;
  // Reference: full forward each step, logits[t] -= presence*(c>0) + frequency*c
  // over the generated tokens' counts, then argmax.
  auto ids = prompt(8, 5);
  std::vector<int32_t> want;
  std::map<int32_t, int> counts;
  {
    torch::NoGradGuard no_grad;
    for (int i = 0; i < n; ++i) {
      auto z = m.forward(as_batch(ids, m.device()))[0][-1].to(torch::kCPU, torch::kFloat64);  // [V]
      for (const auto& [tok, c] : counts) z[tok] -= presence + frequency * c;
      const auto next = int32_t(z.argmax().item<int64_t>());
      want.push_back(next);
      ++counts[next];
      ids.push_back(next);
    }
  }
  RequestParams p = greedy(n);
  p.presence_penalty = presence;
  p.frequency_penalty = frequency;
  const auto got = run_alone(m, nullptr, prompt(8, 5), p);
  EXPECT_EQ(got.tokens, want);
  // The penalties mattered: plain greedy repeats itself differently.
  EXPECT_NE(run_alone(m, nullptr, prompt(8, 5), greedy(n)).tokens, want);
}

// ---- errors -----------------------------------------------------------------

TEST(Engine, SubmitRejectsBadRequestsNamingTheField) {
  auto m = tiny_model();
  Engine engine(m, nullptr, cache_of(m, 64, 4));  // the whole cache holds 64 tokens
  auto submit = [&](std::vector<int32_t> p, const RequestParams& params) {
    return test::message_of([&] { engine.submit(std::move(p), params, {}); });
  };
  EXPECT_CONTAINS(submit({}, greedy(4)), "prompt is empty");
  EXPECT_CONTAINS(submit({1, 2, 300}, greedy(4)), "outside the vocabulary");
  EXPECT_CONTAINS(submit({1, -1}, greedy(4)), "outside the vocabulary");
  EXPECT_CONTAINS(submit(prompt(64, 1), greedy(4)), "KV cache");
  auto with = [](auto edit) {
    RequestParams p = greedy(4);
    edit(p);
    return p;
  };
  EXPECT_CONTAINS(submit({1}, with([](RequestParams& p) { p.sampling.temperature = -1; })),
                  "temperature");
  EXPECT_CONTAINS(submit({1}, with([](RequestParams& p) { p.sampling.top_p = 0; })), "top_p");
  EXPECT_CONTAINS(submit({1}, with([](RequestParams& p) { p.presence_penalty = 2.5; })),
                  "presence_penalty");
  EXPECT_CONTAINS(submit({1}, with([](RequestParams& p) { p.frequency_penalty = -3; })),
                  "frequency_penalty");
  EXPECT_CONTAINS(submit({1}, with([](RequestParams& p) { p.max_tokens = 0; })), "max_tokens");
  EXPECT_CONTAINS(submit({1}, with([](RequestParams& p) { p.logprobs = 21; })), "logprobs");
  EXPECT_CONTAINS(submit({1}, with([](RequestParams& p) { p.stop_token_ids = {400}; })),
                  "stop_token_ids[0]");
  EXPECT_CONTAINS(submit({1}, with([](RequestParams& p) { p.stop_strings = {"x"}; })),
                  "stop_strings");
  EXPECT_CONTAINS(submit({1}, with([](RequestParams& p) {
                           p.logit_bias = {{300, 1.f}};
                         })),
                  "logit_bias[0]");
  EXPECT_CONTAINS(submit({1}, with([](RequestParams& p) {
                           p.logit_bias = {{1, 1.f}, {2, 101.f}};
                         })),
                  "logit_bias[1]");
  EXPECT_EQ(engine.stats().waiting, 0);  // nothing was queued
  EXPECT_FALSE(engine.step());

  Engine big(m, nullptr, cache_of(m, 1024, 4));
  EXPECT_CONTAINS(test::message_of([&] { big.submit(prompt(128, 1), greedy(4), {}); }),
                  "max_model_len is 128");
  EXPECT_NO_THROW(big.submit(prompt(127, 1), greedy(4), {}));
}

TEST(Engine, BadOptionsNameTheOption) {
  auto m = tiny_model();
  auto make = [&](auto edit) {
    EngineOptions o = cache_of(m, 64, 4);
    edit(o);
    return test::message_of([&] { Engine e(m, nullptr, o); });
  };
  EXPECT_CONTAINS(make([](EngineOptions& o) { o.block_size = 0; }), "block_size");
  EXPECT_CONTAINS(make([](EngineOptions& o) { o.max_num_seqs = 0; }), "max_num_seqs");
  EXPECT_CONTAINS(make([](EngineOptions& o) { o.max_batched_tokens = -1; }), "max_batched_tokens");
  EXPECT_CONTAINS(make([](EngineOptions& o) { o.max_model_len = 129; }), "max_model_len");
  EXPECT_CONTAINS(make([](EngineOptions& o) { o.kv_cache_bytes = 100; }), "kv_cache_bytes");
}

TEST(Engine, StatsDescribeTheCache) {
  auto m = tiny_model();
  const int64_t per_token = kv_cache_bytes_per_token(m.config(), 4);
  EngineOptions o;
  o.block_size = 16;
  o.kv_cache_bytes = 1000 * per_token + 5;  // 62.5 blocks' worth
  Engine engine(m, nullptr, o);
  const EngineStats s = engine.stats();
  EXPECT_EQ(s.num_blocks, 62);
  EXPECT_EQ(s.block_size, 16);
  EXPECT_EQ(s.max_tokens_in_cache, 62 * 16);
  EXPECT_EQ(s.max_model_len, 128);
  EXPECT_EQ(engine.options().max_model_len, 128);
  EXPECT_EQ(s.max_full_length_seqs, 62 / 8);  // 128 tokens = 8 blocks each
  EXPECT_EQ(s.blocks_free, 62);
}

// ---- threads ----------------------------------------------------------------

TEST(Engine, BackgroundThreadServesConcurrentSubmitters) {
  auto m = tiny_model();
  EngineOptions o = cache_of(m, 160, 4);
  o.max_batched_tokens = 24;
  const int threads = 4, per_thread = 3;
  std::vector<std::vector<int32_t>> prompts;
  std::vector<RequestParams> params;
  for (int i = 0; i < threads * per_thread; ++i) {
    prompts.push_back(prompt(4 + 2 * i, 20 + i));
    params.push_back(i % 2 ? seeded(10, 50 + i) : greedy(10));
  }
  const auto alone = one_at_a_time(m, o, prompts, params);

  Engine engine(m, nullptr, o);
  engine.start();
  engine.start();  // a second start is a no-op
  Collector c;
  std::vector<uint64_t> ids(prompts.size());
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      for (int k = 0; k < per_thread; ++k) {
        const size_t i = size_t(t * per_thread + k);
        ids[i] = engine.submit(prompts[i], params[i], c.callback());
      }
    });
  for (auto& th : pool) th.join();
  EXPECT_THROW(engine.step(), Error);  // the background thread owns stepping
  {
    std::unique_lock lock(c.mu);
    // a guard against a hang, not a timing assertion
    ASSERT_TRUE(c.done.wait_for(lock, std::chrono::minutes(2),
                                [&] { return c.finished == int(prompts.size()); }));
  }
  // One more request, still running when stop() comes: it ends with "abort".
  // Its first event holds the stepping thread until stop() is under way.
  std::atomic<bool> stopping{false};
  auto record = c.callback();
  const auto late = engine.submit(prompt(10, 99), greedy(100), [&](const RequestOutput& out) {
    record(out);
    while (!stopping) std::this_thread::yield();
  });
  stopping = true;
  engine.stop();
  EXPECT_EQ(c.get(late).reason, "abort");
  EXPECT_EQ(c.get(late).finished_events, 1);
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(c.get(ids[i]).tokens, alone[i].tokens) << "request " << i;
    EXPECT_EQ(c.get(ids[i]).finished_events, 1);
  }
  std::set<uint64_t> distinct(ids.begin(), ids.end());
  EXPECT_EQ(distinct.size(), ids.size());
  expect_all_blocks_free(engine);
  // After stop() the caller may step again.
  const auto again = engine.submit(prompts[0], params[0], c.callback());
  engine.run_until_idle();
  EXPECT_EQ(c.get(again).tokens, alone[0].tokens);
}

TEST(Engine, ConcurrentSubmitAndCancelKeepTheInvariants) {
  auto m = tiny_model();
  EngineOptions o = cache_of(m, 64, 4);  // small: preemption under load
  o.max_batched_tokens = 16;
  Engine engine(m, nullptr, o);
  engine.start();
  Collector c;
  const int threads = 4, per_thread = 6;
  std::vector<uint64_t> ids(threads * per_thread);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      for (int k = 0; k < per_thread; ++k) {
        const int i = t * per_thread + k;
        ids[size_t(i)] = engine.submit(prompt(3 + i % 11, i), greedy(12), c.callback());
        // every other request is cancelled at once, or after an earlier one
        if (k % 2) engine.cancel(ids[size_t(i - (k % 4 == 1 ? 0 : 1))]);
      }
    });
  for (auto& th : pool) th.join();
  {
    std::unique_lock lock(c.mu);
    // a guard against a hang, not a timing assertion
    ASSERT_TRUE(c.done.wait_for(lock, std::chrono::minutes(2),
                                [&] { return c.finished == threads * per_thread; }));
  }
  engine.stop();
  int aborted = 0;
  for (uint64_t id : ids) {
    const Collected got = c.get(id);
    EXPECT_EQ(got.finished_events, 1);
    EXPECT_TRUE(got.consistent);
    if (got.reason == "abort") ++aborted;
    else EXPECT_EQ(got.tokens.size(), 12u);
  }
  const EngineStats s = engine.stats();
  EXPECT_EQ(s.requests_cancelled, aborted);
  EXPECT_EQ(s.requests_finished + s.requests_cancelled, threads * per_thread);
  expect_all_blocks_free(engine);
}

// ---- the scheduling policy alone ----------------------------------------------

TEST(Scheduler, PreemptsTheYoungestToTheFrontOfTheQueue) {
  BlockManager blocks(4, 2, /*enable_prefix_caching=*/false);  // 8 token slots
  Scheduler sched(blocks, /*max_num_seqs=*/8, /*max_batched_tokens=*/100);
  Sequence a, b, c;
  a.id = 1;
  a.tokens = {1, 2, 3};
  b.id = 2;
  b.tokens = {4, 5, 6};
  c.id = 3;
  c.tokens = {7};
  for (Sequence* s : {&a, &b, &c}) sched.add(s);

  // a and b take 2 blocks each; c does not fit and waits (FCFS).
  auto plan = sched.schedule();
  ASSERT_EQ(plan.size(), 2u);
  EXPECT_EQ(plan[0].seq, &a);
  EXPECT_EQ(plan[0].num_tokens, 3);
  EXPECT_EQ(plan[1].seq, &b);
  sched.computed(plan);
  EXPECT_EQ(sched.num_waiting(), 1);

  // Both sampled a token: a's 4th slot fits its second block, b's too.
  a.tokens.push_back(10);
  b.tokens.push_back(11);
  plan = sched.schedule();
  ASSERT_EQ(plan.size(), 2u);
  EXPECT_TRUE(plan[0].decode && plan[1].decode);
  sched.computed(plan);

  // Now a needs a 3rd block: none is free, so b (the youngest) is preempted
  // and queued before c; no admission in a step that preempted.
  a.tokens.push_back(12);
  b.tokens.push_back(13);
  plan = sched.schedule();
  ASSERT_EQ(plan.size(), 1u);
  EXPECT_EQ(plan[0].seq, &a);
  EXPECT_EQ(sched.num_preemptions(), 1);
  EXPECT_EQ(b.state, Sequence::State::Waiting);
  EXPECT_EQ(b.num_computed, 0);
  EXPECT_EQ(sched.num_running(), 1);
  EXPECT_EQ(sched.all(), (std::vector<Sequence*>{&a, &b, &c}));
  sched.computed(plan);

  // a finishes: b comes back first with all 5 of its tokens to recompute,
  // then c.
  sched.remove(&a);
  plan = sched.schedule();
  ASSERT_EQ(plan.size(), 2u);
  EXPECT_EQ(plan[0].seq, &b);
  EXPECT_EQ(plan[0].num_tokens, 5);
  EXPECT_FALSE(plan[0].decode);
  EXPECT_EQ(plan[1].seq, &c);
  sched.computed(plan);
  sched.remove(&b);
  sched.remove(&c);
  EXPECT_TRUE(sched.idle());
  EXPECT_EQ(blocks.num_free_blocks(), 4);
  blocks.check_invariants();
}

TEST(Scheduler, ChunksPrefillsWithinTheTokenBudget) {
  BlockManager blocks(64, 4);
  Scheduler sched(blocks, /*max_num_seqs=*/2, /*max_batched_tokens=*/8);
  Sequence a, b, c;
  a.id = 1;
  a.tokens = std::vector<int32_t>(13, 1);
  b.id = 2;
  b.tokens = std::vector<int32_t>(6, 2);
  c.id = 3;
  c.tokens = std::vector<int32_t>(2, 3);
  for (Sequence* s : {&a, &b, &c}) sched.add(s);
  auto plan = sched.schedule();  // a: 8 of 13
  ASSERT_EQ(plan.size(), 1u);
  EXPECT_EQ(plan[0].num_tokens, 8);
  sched.computed(plan);
  plan = sched.schedule();  // a: last 5, b: 3 of 6
  ASSERT_EQ(plan.size(), 2u);
  EXPECT_EQ(plan[0].num_tokens, 5);
  EXPECT_EQ(plan[1].seq, &b);
  EXPECT_EQ(plan[1].num_tokens, 3);
  sched.computed(plan);
  a.tokens.push_back(9);
  plan = sched.schedule();  // a decodes, b finishes its prefill; c waits for max_num_seqs
  ASSERT_EQ(plan.size(), 2u);
  EXPECT_TRUE(plan[0].decode);
  EXPECT_EQ(plan[1].num_tokens, 3);
  EXPECT_EQ(sched.num_waiting(), 1);
}

}  // namespace
}  // namespace finmoe
