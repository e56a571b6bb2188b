// The OpenAI API layer without sockets or an engine: request validation
// (each field, errors naming the param), prompts (chat ids against Hugging
// Face's golden renderings), response and SSE shaping, metrics text format.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "../expect_error.h"
#include "serve/metrics.h"
#include "serve/openai_api.h"

namespace finmoe::serve {
namespace {

const Tokenizer& qwen3() {
  static Tokenizer t = Tokenizer::from_dir(std::string(FINMOE_TEST_DATA_DIR) + "/tokenizer/qwen3");
  return t;
}

ApiContext context() {
  ApiContext c;
  c.model_name = "tiny";
  c.tokenizer = &qwen3();
  c.eos_token_ids = {151645, 151643};
  c.max_model_len = 64;
  c.vocab_size = qwen3().vocab_size();
  return c;
}


// The ApiError a body raises, or a status of 0 when it parses.
struct Rejection {
  int status = 0;
  std::string param, code, message;
};
Rejection reject(Endpoint e, const std::string& body, const ApiContext& ctx = context()) {
  try {
    if (e == Endpoint::Chat) parse_chat_request(body, ctx);
    else parse_completion_request(body, ctx);
  } catch (const ApiError& err) {
    return {err.status(), err.param(), err.code(), err.what()};
  }
  return {};
}

const char* kChat = R"("messages": [{"role": "user", "content": "hi"}])";

std::string chat_with(const std::string& field) { return std::string("{") + kChat + ", " + field + "}"; }
std::string completion_with(const std::string& field) { return R"({"prompt": "hi", )" + field + "}"; }

// ---- request validation ----------------------------------------------------

TEST(OpenAiRequest, EachBadFieldIsA400NamingTheParam) {
  struct Case {
    std::string field, param;
  };
  const std::vector<Case> both = {
      {R"("temperature": -0.1)", "temperature"},
      {R"("temperature": 2.5)", "temperature"},
      {R"("temperature": "hot")", "temperature"},
      {R"("top_p": 0)", "top_p"},
      {R"("top_p": 1.01)", "top_p"},
      {R"("top_k": -2)", "top_k"},
      {R"("top_k": 1.5)", "top_k"},
      {R"("min_p": 1.5)", "min_p"},
      {R"("n": 0)", "n"},
      {R"("n": "2")", "n"},
      {R"("max_tokens": 0)", "max_tokens"},
      {R"("max_tokens": true)", "max_tokens"},
      {R"("presence_penalty": 2.5)", "presence_penalty"},
      {R"("frequency_penalty": -3)", "frequency_penalty"},
      {R"("repetition_penalty": 0)", "repetition_penalty"},
      {R"("seed": "x")", "seed"},
      {R"("stop": 3)", "stop"},
      {R"("stop": ["a", 1])", "stop[1]"},
      {R"("stop": "")", "stop"},
      {R"("stream": "yes")", "stream"},
      {R"("stream_options": {"include_usage": true})", "stream_options"},
      {R"("stream": true, "stream_options": {"include_usage": 1})", "stream_options.include_usage"},
      {R"("stream": true, "stream_options": {"foo": 1})", "stream_options.foo"},
      {R"("model": "gpt-4")", "model"},
      {R"("model": 7)", "model"},
      {R"("logit_bias": {"x": 5})", "logit_bias"},
      {R"("max_token": 5)", "max_token"},
      {R"("logit_bias": {"1": 101})", "logit_bias"},
      {R"("logit_bias": {"-1": 1})", "logit_bias"},
      {R"("logit_bias": {"1": "5"})", "logit_bias"},
      {R"("logit_bias": [1, 2])", "logit_bias"},
      {R"("logit_bias": {"999999999": 1})", "logit_bias"},
      {R"("ignore_eos": 1)", "ignore_eos"},
      // vLLM's fields: honoured or ignored, but a wrong type is still a 400
      {R"("stop_token_ids": [1, "a"])", "stop_token_ids"},
      {R"("stop_token_ids": 5)", "stop_token_ids"},
      {R"("stop_token_ids": [999999999])", "stop_token_ids"},
      {R"("min_tokens": -1)", "min_tokens"},
      {R"("min_tokens": 2.5)", "min_tokens"},
      {R"("min_tokens": 20, "max_tokens": 10)", "min_tokens"},
      {R"("skip_special_tokens": "no")", "skip_special_tokens"},
      {R"("add_special_tokens": 1)", "add_special_tokens"},
      {R"("spaces_between_special_tokens": "no")", "spaces_between_special_tokens"},
      {R"("priority": 1.5)", "priority"},
      {R"("length_penalty": "x")", "length_penalty"},
      {R"("allowed_token_ids": {})", "allowed_token_ids"},
      {R"("stream": true, "stream_options": {"continuous_usage_stats": 1})", "stream_options.continuous_usage_stats"},
      {R"("guided_json": {})", "guided_json"},  // a server without constrained decoding does not drop them
  };
  for (const auto& c : both) {
    for (Endpoint e : {Endpoint::Chat, Endpoint::Completions}) {
      const std::string body = e == Endpoint::Chat ? chat_with(c.field) : completion_with(c.field);
      const Rejection r = reject(e, body);
      EXPECT_EQ(r.status, 400) << body;
      EXPECT_EQ(r.param, c.param) << body << " -> " << r.message;
    }
  }
  const std::vector<Case> chat = {
      {R"("logprobs": 3)", "logprobs"},
      {R"("logprobs": true, "top_logprobs": 21)", "top_logprobs"},
      {R"("top_logprobs": 2)", "top_logprobs"},  // without logprobs: true
      {R"("max_completion_tokens": -1)", "max_completion_tokens"},
      {R"("tools": [{"type": "function"}])", "tools[0].function"},
      {R"("tools": {"type": "function"})", "tools"},
      {R"("tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required")", "tool_choice"},
      {R"("tool_choice": {"type": "function", "function": {"name": "f"}})", "tool_choice.function.name"},  // no such tool
      {R"("tool_choice": "sometimes")", "tool_choice"},
      {R"("chat_template_kwargs": 1)", "chat_template_kwargs"},
      {R"("response_format": {"type": "json_object"})", "response_format"},
      {R"("response_format": {"type": 5})",
       "response_format.type"},  // found by fuzz_test.py (was a 500)
      {R"("response_format": "text")", "response_format"},
      {R"("add_generation_prompt": "yes")", "add_generation_prompt"},
      {R"("continue_final_message": 1)", "continue_final_message"},
  };
  for (const auto& c : chat) {
    const Rejection r = reject(Endpoint::Chat, chat_with(c.field));
    EXPECT_EQ(r.status, 400) << c.field;
    EXPECT_EQ(r.param, c.param) << c.field << " -> " << r.message;
  }
  const std::vector<Case> completion = {
      {R"("logprobs": 21)", "logprobs"}, {R"("logprobs": true)", "logprobs"}, {R"("echo": true)", "echo"},
      {R"("best_of": 3)", "best_of"},    {R"("suffix": "x")", "suffix"},
  };
  for (const auto& c : completion) {
    const Rejection r = reject(Endpoint::Completions, completion_with(c.field));
    EXPECT_EQ(r.status, 400) << c.field;
    EXPECT_EQ(r.param, c.param) << c.field << " -> " << r.message;
  }
}

TEST(OpenAiRequest, MessagesAndPromptsAreChecked) {
  struct Case {
    Endpoint e;
    std::string body, param;
  };
  const std::vector<Case> cases = {
      {Endpoint::Chat, R"({})", "messages"},
      {Endpoint::Chat, R"({"messages": []})", "messages"},
      {Endpoint::Chat, R"({"messages": "hi"})", "messages"},
      {Endpoint::Chat, R"({"messages": [{"content": "hi"}]})", "messages[0].role"},
      {Endpoint::Chat, R"({"messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]})",
       "messages[1].role"},
      {Endpoint::Chat, R"({"messages": [{"role": "user", "content": "a", "tool_calls": [{"id": "x"}]}]})",
       "messages[0].tool_calls"},
      {Endpoint::Chat,
       R"({"messages": [{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": 3}}]}]})",
       "messages[0].tool_calls[0].function.name"},
      {Endpoint::Chat, R"({"messages": [{"role": "user", "content": 5}]})", "messages[0].content"},
      {Endpoint::Chat, R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})",
       "messages[0].content[0].type"},
      {Endpoint::Chat, R"({"messages": [{"role": "user", "content": "a", "audio": {}}]})", "messages[0].audio"},
      {Endpoint::Completions, R"({})", "prompt"},
      {Endpoint::Completions, R"({"prompt": 5})", "prompt"},
      {Endpoint::Completions, R"({"prompt": []})", "prompt"},
      {Endpoint::Completions, R"({"prompt": [1, -1]})", "prompt"},
      {Endpoint::Completions, R"({"prompt": [1, 999999999]})", "prompt"},
      {Endpoint::Completions, R"({"prompt": ["a", {"x": 1}]})", "prompt[1]"},
      {Endpoint::Completions, R"({"prompt": [[1, 2], [3, -4]]})", "prompt[1]"},
      {Endpoint::Completions, R"({"prompt": ""})", "prompt"},
  };
  for (const auto& c : cases) {
    const Rejection r = reject(c.e, c.body);
    EXPECT_EQ(r.status, 400) << c.body;
    EXPECT_EQ(r.param, c.param) << c.body << " -> " << r.message;
  }
}

TEST(OpenAiRequest, InvalidJsonAndNonObjectBodies) {
  for (const std::string body : {"{", "not json", "[1, 2]", "\"text\"", ""}) {
    const Rejection r = reject(Endpoint::Chat, body);
    EXPECT_EQ(r.status, 400) << body;
    EXPECT_EQ(r.code, "invalid_json") << body;
  }
}

TEST(OpenAiRequest, PromptLongerThanTheContextIsRejected) {
  // max_model_len 64: 70 token ids leave no room; 60 + max_tokens 10 exceed it
  std::string ids70 = "[", ids60 = "[";
  for (int i = 0; i < 70; ++i) ids70 += std::string(i ? "," : "") + "100";
  for (int i = 0; i < 60; ++i) ids60 += std::string(i ? "," : "") + "100";
  Rejection r = reject(Endpoint::Completions, R"({"prompt": )" + ids70 + "]}");
  EXPECT_EQ(r.param, "prompt");
  EXPECT_EQ(r.code, "context_length_exceeded");
  EXPECT_CONTAINS(r.message, "maximum context length is 64");
  r = reject(Endpoint::Completions, R"({"prompt": )" + ids60 + R"(], "max_tokens": 10})");
  EXPECT_EQ(r.code, "context_length_exceeded");
  EXPECT_EQ(r.param, "max_tokens") << "the prompt fits: the completion is what is too long";
  EXPECT_CONTAINS(r.message, "60 in the prompt, 10 in the completion");
  r = reject(Endpoint::Chat, chat_with(R"("max_completion_tokens": 64)"));
  EXPECT_EQ(r.param, "max_completion_tokens");
  EXPECT_EQ(r.code, "context_length_exceeded");
  r = reject(Endpoint::Chat, chat_with(R"("max_tokens": 64)"));
  EXPECT_EQ(r.param, "max_tokens");
  // a prompt the whole KV cache cannot hold next to a new token
  ApiContext small_cache = context();
  small_cache.kv_cache_tokens = 32;
  r = reject(Endpoint::Completions, R"({"prompt": [1, 2, 3]})", small_cache);
  EXPECT_EQ(r.status, 0) << r.message;
  std::string ids40 = "[";
  for (int i = 0; i < 40; ++i) ids40 += std::string(i ? "," : "") + "100";
  r = reject(Endpoint::Completions, R"({"prompt": )" + ids40 + "]}", small_cache);
  EXPECT_EQ(r.param, "prompt");
  EXPECT_EQ(r.code, "context_length_exceeded");
  EXPECT_CONTAINS(r.message, "KV cache holds 32 tokens");
  // without max_tokens the completion gets what is left of the context
  auto ok = parse_completion_request(R"({"prompt": )" + ids60 + R"(], "max_tokens": null})", context());
  EXPECT_EQ(ok.params[0].max_tokens, 4);
  std::string long_text(400, 'x');
  r = reject(Endpoint::Chat, R"({"messages": [{"role": "user", "content": ")" + std::string(500, 'y') + " " +
                                 long_text + R"("}]})");
  EXPECT_EQ(r.param, "messages");
  EXPECT_EQ(r.code, "context_length_exceeded");
}

TEST(OpenAiRequest, RequestsOverTheServerLimitsNameTheFieldAndTheLimit) {
  ApiContext ctx = context();
  ctx.limits = {.max_prompts = 3,
                .max_n = 4,
                .max_choices = 6,
                .max_stop = 2,
                .max_stop_bytes = 10,
                .max_logit_bias = 2,
                .max_messages = 3};
  struct Case {
    Endpoint e;
    std::string body, param, limit;  // limit: in the message
  };
  const std::string msg = R"({"role": "user", "content": "x"})";
  const std::vector<Case> over = {
      {Endpoint::Completions, R"({"prompt": ["a", "b", "c", "d"]})", "prompt", "at most 3"},
      {Endpoint::Completions, R"({"prompt": [[1], [2], [3], [4]]})", "prompt", "at most 3"},
      {Endpoint::Completions, R"({"prompt": "a", "n": 5})", "n", "[1, 4]"},
      {Endpoint::Completions, R"({"prompt": ["a", "b"], "n": 4})", "n", "at most 6"},
      {Endpoint::Completions, R"({"prompt": "a", "n": 4, "best_of": 5})", "best_of", "[1, 4]"},
      {Endpoint::Chat, chat_with(R"("n": 5)"), "n", "[1, 4]"},
      {Endpoint::Chat, chat_with(R"("stop": ["a", "b", "c"])"), "stop", "at most 2"},
      {Endpoint::Chat, chat_with(R"("stop": ["aaaaaa", "bbbbb"])"), "stop", "at most 10"},
      {Endpoint::Chat, chat_with(R"("logit_bias": {"1": 1, "2": 1, "3": 1})"), "logit_bias",
       "at most 2"},
      {Endpoint::Chat, R"({"messages": [)" + msg + "," + msg + "," + msg + "," + msg + "]}",
       "messages", "at most 3"},
  };
  for (const auto& c : over) {
    const Rejection r = reject(c.e, c.body, ctx);
    EXPECT_EQ(r.status, 400) << c.body;
    EXPECT_EQ(r.param, c.param) << c.body << " -> " << r.message;
    EXPECT_CONTAINS(r.message, c.limit);
  }
  // exactly at every limit
  const std::vector<std::pair<Endpoint, std::string>> at = {
      {Endpoint::Completions, R"({"prompt": ["a", "b", "c"], "n": 2, "stop": ["aaaaa", "bbbbb"]})"},
      {Endpoint::Chat, R"({"messages": [)" + msg + "," + msg + "," + msg +
                           R"(], "n": 4, "logit_bias": {"1": 1, "2": -1}})"},
  };
  for (const auto& [e, body] : at) {
    const Rejection r = reject(e, body, ctx);
    EXPECT_EQ(r.status, 0) << body << " -> " << r.message;
  }
  auto lb = parse_chat_request(chat_with(R"("logit_bias": {"5": 100, "17": -2.5})"), ctx);
  auto got = lb.params[0].logit_bias;
  std::sort(got.begin(), got.end());
  EXPECT_EQ(got, (std::vector<std::pair<int32_t, float>>{{5, 100.f}, {17, -2.5f}}));
}

TEST(OpenAiRequest, FieldsLandInTheEngineParams) {
  auto r = parse_chat_request(chat_with(R"("temperature": 0.5, "top_p": 0.9, "top_k": 7, "min_p": 0.1,
      "presence_penalty": 0.5, "frequency_penalty": -0.5, "repetition_penalty": 1.1, "seed": 42,
      "stop": ["END", "##"], "n": 3, "max_completion_tokens": 9, "max_tokens": 20, "logprobs": true,
      "top_logprobs": 4, "stream": true, "stream_options": {"include_usage": true}, "user": "u1",
      "model": "tiny")"),
                              context());
  ASSERT_EQ(r.params.size(), 1u);
  const RequestParams& p = r.params[0];
  EXPECT_EQ(p.sampling.temperature, 0.5);
  EXPECT_EQ(p.sampling.top_p, 0.9);
  EXPECT_EQ(p.sampling.top_k, 7);
  EXPECT_EQ(p.sampling.min_p, 0.1);
  EXPECT_EQ(p.sampling.repetition_penalty, 1.1);
  EXPECT_EQ(p.presence_penalty, 0.5);
  EXPECT_EQ(p.frequency_penalty, -0.5);
  EXPECT_TRUE(p.seed_given);
  EXPECT_EQ(p.sampling.seed, 42u);
  EXPECT_EQ(p.stop_strings, (std::vector<std::string>{"END", "##"}));
  EXPECT_EQ(p.stop_token_ids, (std::vector<int32_t>{151645, 151643}));
  EXPECT_EQ(p.max_tokens, 9);  // max_completion_tokens wins over the legacy max_tokens
  EXPECT_EQ(p.logprobs, 4);
  EXPECT_EQ(r.n, 3);
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_TRUE(r.logprobs);
  // the n choices are seeded apart, each reproducibly
  EXPECT_EQ(r.num_choices(), 3);
  EXPECT_EQ(r.choice_params(0).sampling.seed, 42u);
  EXPECT_EQ(r.choice_params(2).sampling.seed, 44u);

  auto c = parse_completion_request(completion_with(R"("logprobs": 0, "ignore_eos": true, "top_k": -1,
      "stop": "x", "temperature": 0)"),
                                    context());
  EXPECT_EQ(c.params[0].logprobs, 0);
  EXPECT_TRUE(c.logprobs);
  EXPECT_TRUE(c.params[0].stop_token_ids.empty());
  EXPECT_EQ(c.params[0].sampling.top_k, 0);
  EXPECT_EQ(c.params[0].stop_strings, std::vector<std::string>{"x"});
  EXPECT_EQ(c.params[0].max_tokens, 16);  // OpenAI's default for completions
  EXPECT_FALSE(c.params[0].seed_given);
  EXPECT_EQ(c.params[0].logprobs, 0);

  auto off = parse_chat_request(std::string("{") + kChat + "}", context());
  EXPECT_EQ(off.params[0].logprobs, -1);
  EXPECT_FALSE(off.stream);
  // chat without max_tokens: the rest of the context
  EXPECT_EQ(off.params[0].max_tokens, 64 - int64_t(off.prompts[0].size()));
}

TEST(OpenAiRequest, VllmFieldsAreHonouredOrIgnoredByName) {
  const ApiContext ctx = context();
  // stop_token_ids join eos (once each), and stay with ignore_eos
  auto r = parse_completion_request(completion_with(R"("stop_token_ids": [5, 151643], "min_tokens": 3,
      "skip_special_tokens": false, "max_tokens": 8)"),
                                    ctx);
  EXPECT_EQ(r.params[0].stop_token_ids, (std::vector<int32_t>{151645, 151643, 5}));
  EXPECT_EQ(r.params[0].min_tokens, 3);
  EXPECT_FALSE(r.params[0].skip_special_tokens);
  EXPECT_TRUE(r.ignored_fields.empty());
  r = parse_completion_request(completion_with(R"("stop_token_ids": [5], "ignore_eos": true)"), ctx);
  EXPECT_EQ(r.params[0].stop_token_ids, std::vector<int32_t>{5});
  EXPECT_EQ(r.params[0].min_tokens, 0);
  EXPECT_TRUE(r.params[0].skip_special_tokens);

  // fields without effect are accepted and named; vLLM's defaults are not
  r = parse_completion_request(completion_with(R"("request_id": "abc", "spaces_between_special_tokens": false,
      "use_beam_search": false, "priority": 0, "length_penalty": 2, "kv_transfer_params": {}, "cache_salt": null)"),
                               ctx);
  EXPECT_EQ(r.ignored_fields, (std::vector<std::string>{"spaces_between_special_tokens", "length_penalty",
                                                        "request_id", "kv_transfer_params"}));
  r = parse_chat_request(chat_with(R"("continue_final_message": true, "echo": false, "priority": 2)"), ctx);
  EXPECT_EQ(r.ignored_fields, (std::vector<std::string>{"priority", "continue_final_message"}));

  // add_generation_prompt false leaves the template's assistant header out
  const auto with = parse_chat_request(chat_with(R"("add_generation_prompt": true)"), ctx).prompts[0];
  const auto without = parse_chat_request(chat_with(R"("add_generation_prompt": false)"), ctx).prompts[0];
  const auto header = qwen3().encode("<|im_start|>assistant\n", false);
  ASSERT_EQ(with.size(), without.size() + header.size());
  EXPECT_TRUE(std::equal(without.begin(), without.end(), with.begin()));
  EXPECT_TRUE(std::equal(header.begin(), header.end(), with.begin() + std::ptrdiff_t(without.size())));
}

// vLLM's /tokenize and /detokenize: the ids a completion or chat request
// would prompt the model with, and the tokenizer's own decode.
TEST(OpenAiTokenize, TokensAreThePromptsOfTheGenerationRoutes) {
  const ApiContext ctx = context();
  const json t = tokenize(R"({"model": "tiny", "prompt": "Net income rose 4%", "return_token_strs": true})", ctx);
  const auto ids = parse_completion_request(R"({"prompt": "Net income rose 4%"})", ctx).prompts[0];
  EXPECT_EQ(t["tokens"].get<std::vector<int32_t>>(), ids);
  EXPECT_EQ(t["count"], ids.size());
  EXPECT_EQ(t["max_model_len"], 64);
  std::vector<std::string> strs;
  for (int32_t id : ids) strs.push_back(qwen3().id_to_token(id));
  EXPECT_EQ(t["token_strs"].get<std::vector<std::string>>(), strs);
  EXPECT_FALSE(tokenize(R"({"prompt": "x"})", ctx).contains("token_strs"));

  const json c = tokenize(std::string("{") + kChat + "}", ctx);
  EXPECT_EQ(c["tokens"].get<std::vector<int32_t>>(), parse_chat_request(std::string("{") + kChat + "}", ctx).prompts[0]);
  const json bare = tokenize(chat_with(R"("add_generation_prompt": false)"), ctx);
  EXPECT_LT(bare["count"].get<int64_t>(), c["count"].get<int64_t>());

  // a prompt longer than the context is still counted (no completion is asked)
  std::string longer;
  for (int i = 0; i < 100; ++i) longer += "word ";
  EXPECT_GT(tokenize(json{{"prompt", longer}}.dump(), ctx)["count"].get<int64_t>(), 64);

  const json d = detokenize(json{{"tokens", ids}}.dump(), ctx);
  EXPECT_EQ(d["prompt"], "Net income rose 4%");
  EXPECT_EQ(detokenize(R"({"tokens": [151645]})", ctx)["prompt"], "<|im_end|>");  // special tokens kept
  EXPECT_EQ(detokenize(R"({"tokens": []})", ctx)["prompt"], "");

  struct Case {
    std::string body, param;
    bool encode;
  };
  for (const auto& c : std::vector<Case>{{R"({"prompt": 5})", "prompt", true},
                                         {R"({})", "prompt", true},
                                         {R"({"prompt": "x", "model": "other"})", "model", true},
                                         {R"({"prompt": "x", "temperature": 1})", "temperature", true},
                                         {R"({"messages": "hi"})", "messages", true},
                                         {R"({"tokens": [1, -1]})", "tokens", false},
                                         {R"({"tokens": [999999999]})", "tokens", false},
                                         {R"({"tokens": "abc"})", "tokens", false},
                                         {R"({})", "tokens", false}}) {
    try {
      c.encode ? tokenize(c.body, ctx) : detokenize(c.body, ctx);
      ADD_FAILURE() << c.body << " was accepted";
    } catch (const ApiError& e) {
      EXPECT_EQ(e.status(), 400) << c.body;
      EXPECT_EQ(e.param(), c.param) << c.body << " -> " << e.what();
    }
  }
}

TEST(OpenAiRequest, DefaultsComeFromTheContext) {
  ApiContext ctx = context();
  ctx.default_sampling.temperature = 0.7;
  ctx.default_sampling.top_k = 20;
  auto r = parse_chat_request(std::string("{") + kChat + "}", ctx);
  EXPECT_EQ(r.params[0].sampling.temperature, 0.7);
  EXPECT_EQ(r.params[0].sampling.top_k, 20);
  r = parse_chat_request(chat_with(R"("temperature": 0)"), ctx);
  EXPECT_EQ(r.params[0].sampling.temperature, 0.0);
}

TEST(OpenAiRequest, ChatPromptsEqualHuggingFaceRenderings) {
  // ids of apply_chat_template(tokenize=True) by HF transformers (golden file)
  std::ifstream in(std::string(FINMOE_TEST_DATA_DIR) + "/tokenizer/qwen3/qwen3.chat.jsonl");
  ASSERT_TRUE(in);
  ApiContext ctx = context();
  ctx.max_model_len = 4096;
  std::string line;
  int checked = 0;
  while (std::getline(in, line)) {
    auto g = json::parse(line);
    if (!g["add_generation_prompt"].get<bool>()) continue;
    auto r = parse_chat_request(dump_json({{"messages", g["messages"]}}), ctx);
    EXPECT_EQ(r.prompts[0], g["ids"].get<std::vector<int32_t>>()) << line;
    ++checked;
  }
  EXPECT_GT(checked, 0);
}

TEST(OpenAiRequest, CompletionPromptForms) {
  const ApiContext ctx = context();
  auto text = parse_completion_request(R"({"prompt": "Hello world"})", ctx);
  ASSERT_EQ(text.prompts.size(), 1u);
  EXPECT_EQ(text.prompts[0], qwen3().encode("Hello world", true));
  auto ids = parse_completion_request(R"({"prompt": [9707, 1879]})", ctx);
  EXPECT_EQ(ids.prompts[0], (std::vector<int32_t>{9707, 1879}));
  auto batch = parse_completion_request(R"({"prompt": ["a", [1, 2, 3]], "n": 2})", ctx);
  ASSERT_EQ(batch.prompts.size(), 2u);
  EXPECT_EQ(batch.prompts[1], (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(batch.num_choices(), 4);
  // content parts join with newlines; developer is the system role
  auto parts = parse_chat_request(R"({"messages": [{"role": "developer", "content": "S"},
      {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]})",
                                  ctx);
  EXPECT_EQ(parts.prompts[0],
            qwen3().encode("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\na\nb<|im_end|>\n<|im_start|>assistant\n"));
}

// ---- responses -------------------------------------------------------------

RequestOutput event(std::vector<int32_t> ids, std::string text, int64_t completion, bool finished = false,
                    std::string reason = "") {
  RequestOutput o;
  o.token_ids = std::move(ids);
  o.text = std::move(text);
  o.completion_tokens = completion;
  o.prompt_tokens = 3;
  o.finished = finished;
  o.finish_reason = std::move(reason);
  return o;
}

// The JSON objects of an SSE stream; checks the framing on the way.
std::vector<json> sse_objects(const std::string& stream, bool* saw_done) {
  std::vector<json> out;
  *saw_done = false;
  size_t pos = 0;
  while (pos < stream.size()) {
    const size_t end = stream.find("\n\n", pos);
    EXPECT_NE(end, std::string::npos) << "unterminated event at " << pos;
    if (end == std::string::npos) break;
    const std::string ev = stream.substr(pos, end - pos);
    EXPECT_EQ(ev.rfind("data: ", 0), 0u) << ev;
    EXPECT_EQ(ev.find('\n'), std::string::npos) << "one data line per event: " << ev;
    EXPECT_FALSE(*saw_done) << "event after [DONE]";
    if (ev == "data: [DONE]") *saw_done = true;
    else out.push_back(json::parse(ev.substr(6)));
    pos = end + 2;
  }
  return out;
}

TEST(OpenAiResponse, StreamedChatConcatenatesToTheFullResponse) {
  const ApiContext ctx = context();
  auto req = parse_chat_request(chat_with(R"("n": 2, "stream": true, "stream_options": {"include_usage": true})"), ctx);
  auto plain = req;
  plain.stream = false;
  plain.include_usage = false;
  ResponseBuilder s(req, ctx, "chatcmpl-x", 123), full(plain, ctx, "chatcmpl-x", 123);
  // choices interleave; an event may carry no text (an incomplete character)
  const std::vector<std::pair<int64_t, RequestOutput>> events = {
      {0, event({1}, "Hel", 1)},          {1, event({2}, "A", 1)},  {0, event({3}, "", 2)},
      {0, event({4}, "lo", 3)},           {1, event({5}, "B", 2, true, "length")},
      {0, event({151645}, "", 4, true, "stop")},
  };
  std::string stream = s.stream_start();
  for (const auto& [c, o] : events) {
    stream += s.add(c, o);
    EXPECT_EQ(full.add(c, o), "");  // non-streaming builders send nothing per event
  }
  ASSERT_TRUE(s.all_finished());
  stream += s.stream_end();
  bool done = false;
  auto objs = sse_objects(stream, &done);
  EXPECT_TRUE(done);
  std::map<int64_t, std::string> text, finish, role;
  json usage;
  for (const auto& o : objs) {
    EXPECT_EQ(o["object"], "chat.completion.chunk");
    EXPECT_EQ(o["id"], "chatcmpl-x");
    EXPECT_EQ(o["model"], "tiny");
    ASSERT_TRUE(o.contains("usage"));
    if (o["choices"].empty()) {
      usage = o["usage"];
      continue;
    }
    EXPECT_TRUE(o["usage"].is_null());
    for (const auto& ch : o["choices"]) {
      const int64_t i = ch["index"];
      if (ch["delta"].contains("role")) role[i] = ch["delta"]["role"];
      if (ch["delta"].contains("content")) text[i] += ch["delta"]["content"].get<std::string>();
      if (!ch["finish_reason"].is_null()) finish[i] = ch["finish_reason"];
    }
  }
  EXPECT_EQ(objs.back()["choices"].size(), 0u) << "usage comes last, with no choices";
  EXPECT_EQ(role[0], "assistant");
  EXPECT_EQ(role[1], "assistant");
  const json body = full.response();
  EXPECT_EQ(body["object"], "chat.completion");
  ASSERT_EQ(body["choices"].size(), 2u);
  for (int64_t i = 0; i < 2; ++i) {
    EXPECT_EQ(body["choices"][i]["index"], i);
    EXPECT_EQ(body["choices"][i]["message"]["role"], "assistant");
    EXPECT_EQ(body["choices"][i]["message"]["content"], text[i]);
    EXPECT_EQ(body["choices"][i]["finish_reason"], finish[i]);
    EXPECT_TRUE(body["choices"][i]["logprobs"].is_null());
  }
  EXPECT_EQ(text[0], "Hello");
  EXPECT_EQ(finish[1], "length");
  // the prompt counts once for all n choices
  const int64_t P = int64_t(req.prompts[0].size());
  EXPECT_EQ(usage, (json{{"prompt_tokens", P},
                          {"completion_tokens", 6},
                          {"total_tokens", P + 6},
                          {"prompt_tokens_details", {{"cached_tokens", 0}}}}));
  EXPECT_EQ(body["usage"], usage);
}

// The conversation of tests/data/chat_templates with a tool call and its
// result, sent as an OpenAI client sends it (arguments as JSON text), renders
// through Qwen3's own template to what jinja2 rendered for HF.
TEST(OpenAiTools, ToolsAndToolTurnsRenderThroughTheModelsTemplate) {
  const std::string dir = std::string(FINMOE_TEST_DATA_DIR) + "/chat_templates/";
  std::ifstream cf(dir + "conversations.json");
  const auto conv = nlohmann::ordered_json::parse(cf);
  size_t case_id = conv["cases"].size();
  for (size_t i = 0; i < conv["cases"].size(); ++i) {
    const auto& c = conv["cases"][i];
    if (c["conversation"] == "tool_call_result" && c["add_generation_prompt"].get<bool>() && c["kwargs"].empty())
      case_id = i;
  }
  ASSERT_LT(case_id, conv["cases"].size());
  std::string want;
  std::ifstream ef(dir + "expected/tokenizer-qwen3.jsonl");
  for (std::string line; std::getline(ef, line);) {
    auto r = json::parse(line);
    if (r["case"] == case_id) want = r["output"];
  }
  ASSERT_FALSE(want.empty());
  auto messages = conv["conversations"]["tool_call_result"];
  for (auto& m : messages)
    if (m.contains("tool_calls"))
      for (auto& call : m["tool_calls"]) call["function"]["arguments"] = call["function"]["arguments"].dump();
  nlohmann::ordered_json body = {{"messages", messages}, {"tools", conv["tools"]}};
  ApiContext ctx = context();
  ctx.max_model_len = 4096;
  auto r = parse_chat_request(body.dump(), ctx);
  EXPECT_EQ(r.prompts[0], qwen3().encode(want));
  EXPECT_EQ(r.tool_names, (std::vector<std::string>{"get_stock_price", "convert_amount"}));
  // tool_choice none: the tools stay out of the prompt and the output is plain text
  body["tool_choice"] = "none";
  auto none = parse_chat_request(body.dump(), ctx);
  EXPECT_TRUE(none.tool_names.empty());
  EXPECT_LT(none.prompts[0].size(), r.prompts[0].size());
  // the built-in templates cannot render tools
  ctx.chat_template = ChatTemplateKind::ChatML;
  EXPECT_EQ(reject(Endpoint::Chat, body.dump(), ctx).param, "tools");
}

TEST(OpenAiTools, ChatTemplateKwargsReachTheTemplate) {
  ApiContext ctx = context();
  ctx.max_model_len = 4096;
  auto plain = parse_chat_request(chat_with(R"("chat_template_kwargs": {"enable_thinking": true})"), ctx);
  auto off = parse_chat_request(chat_with(R"("chat_template_kwargs": {"enable_thinking": false})"), ctx);
  // Qwen3's template opens an empty think block when thinking is off
  EXPECT_EQ(qwen3().decode(off.prompts[0]),
            qwen3().decode(plain.prompts[0]) + "<think>\n\n</think>\n\n");
}

TEST(OpenAiTools, ToolCallsComeBackAsOpenAiToolCalls) {
  ApiContext ctx = context();
  ctx.max_model_len = 4096;
  const std::string tools =
      R"("tools": [{"type": "function", "function": {"name": "get_stock_price", "parameters": {"type": "object"}}}])";
  const std::string out =
      "<tool_call>\n{\"name\": \"get_stock_price\", \"arguments\": {\"ticker\": \"AAPL\"}}\n</tool_call>";
  auto req = parse_chat_request(chat_with(tools), ctx);
  ResponseBuilder b(req, ctx, "id", 1);
  b.add(0, event({1}, out.substr(0, 20), 1));
  b.add(0, event({151645}, out.substr(20), 2, true, "stop"));
  const json body = b.response();
  const json& msg = body["choices"][0]["message"];
  EXPECT_TRUE(msg["content"].is_null());
  ASSERT_EQ(msg["tool_calls"].size(), 1u);
  EXPECT_EQ(msg["tool_calls"][0]["type"], "function");
  EXPECT_EQ(msg["tool_calls"][0]["id"].get<std::string>().rfind("call_", 0), 0u);
  EXPECT_EQ(msg["tool_calls"][0]["function"]["name"], "get_stock_price");
  EXPECT_EQ(json::parse(msg["tool_calls"][0]["function"]["arguments"].get<std::string>()),
            (json{{"ticker", "AAPL"}}));
  EXPECT_EQ(body["choices"][0]["finish_reason"], "tool_calls");

  // streaming: the message comes as one chunk when the choice finishes
  auto sreq = parse_chat_request(chat_with(tools + R"(, "stream": true)"), ctx);
  ResponseBuilder s(sreq, ctx, "id", 1);
  std::string stream = s.stream_start();
  EXPECT_EQ(s.add(0, event({1}, out.substr(0, 20), 1)), "");
  stream += s.add(0, event({151645}, out.substr(20), 2, true, "stop"));
  stream += s.stream_end();
  bool done = false;
  auto objs = sse_objects(stream, &done);
  ASSERT_EQ(objs.size(), 2u);
  const json& delta = objs[1]["choices"][0]["delta"];
  EXPECT_FALSE(delta.contains("content"));
  EXPECT_EQ(delta["tool_calls"][0]["index"], 0);
  EXPECT_EQ(delta["tool_calls"][0]["function"]["name"], "get_stock_price");
  EXPECT_EQ(objs[1]["choices"][0]["finish_reason"], "tool_calls");

  // plain text with tools offered stays content
  ResponseBuilder t(req, ctx, "id", 1);
  t.add(0, event({5}, "No tool needed.", 1, true, "stop"));
  EXPECT_EQ(t.response()["choices"][0]["message"]["content"], "No tool needed.");
  EXPECT_EQ(t.response()["choices"][0]["finish_reason"], "stop");
}

// stream_options.continuous_usage_stats (vLLM): every chunk carries the usage
// so far; the counts match the events fed so far.
TEST(OpenAiResponse, ContinuousUsageStatsPutUsageInEveryChunk) {
  const ApiContext ctx = context();
  auto req = parse_completion_request(
      completion_with(R"("stream": true, "stream_options": {"include_usage": true, "continuous_usage_stats": true})"),
      ctx);
  ASSERT_TRUE(req.continuous_usage);
  ResponseBuilder b(req, ctx, "cmpl-x", 1);
  const int64_t P = int64_t(req.prompts[0].size());
  int64_t fed = 0;
  for (const auto& o : {event({1}, "a", 1), event({2}, "b", 2), event({3}, "c", 3, true, "length")}) {
    bool done = false;
    const auto objs = sse_objects(b.add(0, o), &done);
    ASSERT_EQ(objs.size(), 1u);
    ++fed;
    EXPECT_EQ(objs[0]["usage"]["completion_tokens"], fed);
    EXPECT_EQ(objs[0]["usage"]["prompt_tokens"], P);
  }
  // without include_usage it has no effect (as vLLM)
  auto off = parse_completion_request(completion_with(R"("stream": true, "stream_options": {"continuous_usage_stats": true})"), ctx);
  EXPECT_FALSE(off.continuous_usage);
}

// usage.prompt_tokens_details.cached_tokens: each prompt's prefix-cache hits
// (from its first choice), summed over prompts.
TEST(OpenAiResponse, CachedPromptTokensAreReportedInTheUsage) {
  const ApiContext ctx = context();
  auto req = parse_completion_request(R"({"prompt": ["one", "two"], "n": 2, "max_tokens": 4})", ctx);
  ResponseBuilder b(req, ctx, "cmpl-x", 1);
  const int64_t cached[4] = {16, 32, 8, 0};  // choice = prompt * n + j
  for (int64_t c = 0; c < 4; ++c) {
    RequestOutput o = event({1}, "x", 1, true, "length");
    o.cached_prompt_tokens = cached[c];
    b.add(c, o);
  }
  EXPECT_EQ(b.response()["usage"]["prompt_tokens_details"]["cached_tokens"], 16 + 8);
}

TEST(OpenAiResponse, CompletionStreamWithoutUsageHasNoUsageField) {
  const ApiContext ctx = context();
  auto req = parse_completion_request(completion_with(R"("stream": true)"), ctx);
  ResponseBuilder b(req, ctx, "cmpl-x", 1);
  EXPECT_EQ(b.stream_start(), "");
  std::string stream = b.add(0, event({5}, "x", 1));
  stream += b.add(0, event({6}, "y", 2, true, "length"));
  stream += b.stream_end();
  bool done = false;
  auto objs = sse_objects(stream, &done);
  EXPECT_TRUE(done);
  ASSERT_EQ(objs.size(), 2u);
  for (const auto& o : objs) {
    EXPECT_EQ(o["object"], "text_completion");
    EXPECT_FALSE(o.contains("usage"));
  }
  EXPECT_EQ(objs[0]["choices"][0]["text"], "x");
  EXPECT_TRUE(objs[0]["choices"][0]["finish_reason"].is_null());
  EXPECT_EQ(objs[1]["choices"][0]["finish_reason"], "length");
}

TEST(OpenAiResponse, AnEngineFailureEndsTheStreamWithAnErrorEvent) {
  const ApiContext ctx = context();
  auto req = parse_chat_request(chat_with(R"("stream": true)"), ctx);
  ResponseBuilder b(req, ctx, "id", 1);
  RequestOutput o = event({}, "", 0, true, "abort");
  o.error = "model step failed: out of memory";
  bool done = false;
  std::string stream = b.add(0, o);
  stream += b.stream_end();
  auto objs = sse_objects(stream, &done);
  EXPECT_TRUE(done);
  ASSERT_EQ(objs.size(), 2u);
  EXPECT_EQ(objs[0]["choices"][0]["finish_reason"], "abort");
  EXPECT_EQ(objs[1]["error"]["code"], "engine_error");
  EXPECT_CONTAINS(objs[1]["error"]["message"].get<std::string>(), "out of memory");
  // a plain cancel (no error) ends quietly
  ResponseBuilder quiet(req, ctx, "id", 1);
  EXPECT_EQ(sse_objects(quiet.add(0, event({}, "", 0, true, "abort")), &done).size(), 1u);
}

TokenLogprob lp(int32_t token, float logprob, std::vector<std::pair<int32_t, float>> top) {
  return {token, logprob, std::move(top)};
}

TEST(OpenAiResponse, ChatLogprobsListTokensWithBytesAndTopAlternatives) {
  const ApiContext ctx = context();
  auto req = parse_chat_request(chat_with(R"("logprobs": true, "top_logprobs": 2)"), ctx);
  ResponseBuilder b(req, ctx, "id", 1);
  const int32_t hello = qwen3().encode("Hello")[0], world = qwen3().encode(" world")[0];
  RequestOutput a = event({hello}, "Hello", 1);
  a.logprobs = {lp(hello, -0.5f, {{hello, -0.5f}, {world, -1.5f}})};
  RequestOutput e = event({world, 151645}, " world", 3, true, "stop");
  e.logprobs = {lp(world, -0.25f, {{world, -0.25f}, {hello, -2.0f}}),
                lp(151645, -0.1f, {{151645, -0.1f}, {hello, -3.0f}})};
  b.add(0, a);
  b.add(0, e);
  const json content = b.response()["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), 2u) << "the eos that ended the text is not listed";
  EXPECT_EQ(content[0]["token"], "Hello");
  EXPECT_EQ(content[0]["bytes"], (json{72, 101, 108, 108, 111}));
  EXPECT_FLOAT_EQ(content[0]["logprob"].get<float>(), -0.5f);
  ASSERT_EQ(content[0]["top_logprobs"].size(), 2u);
  EXPECT_EQ(content[0]["top_logprobs"][1]["token"], " world");
  EXPECT_EQ(content[1]["token"], " world");
  EXPECT_EQ(content[1]["top_logprobs"][1]["bytes"], (json{72, 101, 108, 108, 111}));
}

TEST(OpenAiResponse, CompletionLogprobsUseTheLegacyShape) {
  const ApiContext ctx = context();
  auto req = parse_completion_request(completion_with(R"("logprobs": 1, "stream": true)"), ctx);
  ResponseBuilder b(req, ctx, "id", 1);
  const int32_t yen = qwen3().encode("¥")[0], x = qwen3().encode("x")[0];
  ASSERT_EQ(qwen3().encode("¥").size(), 1u);
  RequestOutput a = event({yen}, "¥", 1);
  a.logprobs = {lp(yen, -1.0f, {{x, -0.5f}})};  // sampled token outside the top-1
  RequestOutput c = event({x}, "x", 2, true, "length");
  c.logprobs = {lp(x, -2.0f, {{x, -2.0f}})};
  bool done = false;
  std::string stream = b.add(0, a);
  stream += b.add(0, c);
  auto objs = sse_objects(stream, &done);
  ASSERT_EQ(objs.size(), 2u);
  const json l0 = objs[0]["choices"][0]["logprobs"], l1 = objs[1]["choices"][0]["logprobs"];
  EXPECT_EQ(l0["tokens"], json::array({"¥"}));
  EXPECT_EQ(l0["top_logprobs"][0].size(), 2u) << "the sampled token is always included";
  EXPECT_FLOAT_EQ(l0["top_logprobs"][0]["¥"].get<float>(), -1.0f);
  EXPECT_EQ(l0["text_offset"], json::array({0}));
  EXPECT_EQ(l1["text_offset"], json::array({1})) << "offsets count characters, not bytes";
  const json all = b.response()["choices"][0]["logprobs"];
  EXPECT_EQ(all["tokens"], json::array({"¥", "x"}));
  EXPECT_EQ(all["token_logprobs"].size(), 2u);
  EXPECT_EQ(all["text_offset"], json::array({0, 1}));
}

TEST(OpenAiResponse, ErrorObjectsHaveTheOpenAiShape) {
  ApiError e(400, "bad", "temperature", "c");
  EXPECT_EQ(e.body(), (json{{"error", {{"message", "bad"}, {"type", "invalid_request_error"},
                                        {"param", "temperature"}, {"code", "c"}}}}));
  EXPECT_EQ(error_body(401, "no")["error"]["type"], "authentication_error");
  EXPECT_TRUE(error_body(404, "no")["error"]["param"].is_null());
  EXPECT_TRUE(error_body(404, "no")["error"]["code"].is_null());
}

TEST(OpenAiResponse, FramingAndIds) {
  EXPECT_EQ(sse_event(json{{"a", 1}}), "data: {\"a\":1}\n\n");
  EXPECT_EQ(sse_done(), "data: [DONE]\n\n");
  // invalid UTF-8 cannot break a response
  EXPECT_EQ(dump_json(json("a\xff")), "\"a\xEF\xBF\xBD\"");
  const std::string id = make_response_id(Endpoint::Chat);
  EXPECT_EQ(id.rfind("chatcmpl-", 0), 0u);
  EXPECT_EQ(id.size(), 9u + 24u);
  EXPECT_NE(id, make_response_id(Endpoint::Chat));
  EXPECT_EQ(make_response_id(Endpoint::Completions).rfind("cmpl-", 0), 0u);
}

// ---- metrics ---------------------------------------------------------------

// Prometheus text format, read back: families declared once with HELP and TYPE
// before their samples; histogram buckets cumulative with +Inf == _count.
TEST(Metrics, PrometheusTextFormat) {
  EngineStats e;
  e.num_blocks = 100;
  e.block_size = 16;
  e.blocks_used = 25;
  e.blocks_free = 75;
  e.running = 3;
  e.waiting = 2;
  e.prefix_query_tokens = 200;
  e.prefix_hit_tokens = 50;
  e.prompt_tokens = 1234;
  e.generation_tokens = 567;
  e.preemptions = 4;
  ServerMetrics m;
  for (double v : {0.003, 0.003, 0.2, 99999.0}) m.ttft.observe(v);
  m.inter_token.observe(0.01);  // on a bound: counted in that bucket (le)
  m.count_finished("stop");
  m.count_response(200);
  m.count_response(400);
  const std::string text = format_metrics(e, m.snapshot(), "my \"model\"");

  std::map<std::string, std::string> type;
  std::map<std::string, double> value;  // sample line (name{labels}) -> value
  std::vector<double> ttft_buckets;     // in the order written
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    ASSERT_FALSE(line.empty());
    if (line.rfind("# HELP ", 0) == 0) continue;
    if (line.rfind("# TYPE ", 0) == 0) {
      std::istringstream t(line.substr(7));
      std::string name, kind;
      t >> name >> kind;
      EXPECT_FALSE(type.count(name)) << "declared twice: " << name;
      type[name] = kind;
      continue;
    }
    const size_t sp = line.rfind(' ');
    const std::string sample = line.substr(0, sp);
    std::string name = sample.substr(0, sample.find('{'));
    EXPECT_TRUE(name.rfind("finmoe_", 0) == 0 || name.rfind("vllm:", 0) == 0) << line;
    EXPECT_NE(sample.find("model_name=\"my \\\"model\\\"\""), std::string::npos) << "escaped label: " << line;
    std::string family = name;
    for (const char* suffix : {"_bucket", "_sum", "_count", "_total"})
      if (!type.count(family) && family.size() > strlen(suffix) &&
          family.compare(family.size() - strlen(suffix), std::string::npos, suffix) == 0)
        family = family.substr(0, family.size() - strlen(suffix));
    EXPECT_TRUE(type.count(family)) << "sample before its # TYPE: " << line;
    value[sample] = std::stod(line.substr(sp + 1));
    if (name == "finmoe_time_to_first_token_seconds_bucket") ttft_buckets.push_back(value[sample]);
  }
  const std::string L = "{model_name=\"my \\\"model\\\"\"";
  EXPECT_EQ(value["finmoe_num_requests_running" + L + "}"], 3);
  EXPECT_EQ(value["finmoe_num_requests_waiting" + L + "}"], 2);
  EXPECT_EQ(value["finmoe_kv_cache_blocks_used" + L + "}"], 25);
  EXPECT_EQ(value["finmoe_kv_cache_blocks_free" + L + "}"], 75);
  EXPECT_EQ(value["finmoe_kv_cache_usage_ratio" + L + "}"], 0.25);
  EXPECT_EQ(value["finmoe_prefix_cache_hit_rate" + L + "}"], 0.25);
  EXPECT_EQ(value["finmoe_prompt_tokens_total" + L + "}"], 1234);
  EXPECT_EQ(value["finmoe_generation_tokens_total" + L + "}"], 567);
  EXPECT_EQ(value["finmoe_num_preemptions_total" + L + "}"], 4);
  EXPECT_EQ(value["finmoe_request_success_total" + L + ",finished_reason=\"stop\"}"], 1);
  EXPECT_EQ(value["finmoe_http_responses_total" + L + ",status=\"400\"}"], 1);
  EXPECT_EQ(type["finmoe_time_to_first_token_seconds"], "histogram");
  EXPECT_EQ(type["finmoe_prompt_tokens_total"], "counter");
  EXPECT_EQ(type["finmoe_kv_cache_blocks_free"], "gauge");
  // buckets: 0.001 -> 0, 0.005 -> 2, 0.25 -> 3, +Inf -> 4 (cumulative)
  const std::string h = "finmoe_time_to_first_token_seconds";
  EXPECT_EQ(value[h + "_bucket" + L + ",le=\"0.001\"}"], 0);
  EXPECT_EQ(value[h + "_bucket" + L + ",le=\"0.005\"}"], 2);
  EXPECT_EQ(value[h + "_bucket" + L + ",le=\"0.25\"}"], 3);
  EXPECT_EQ(value[h + "_bucket" + L + ",le=\"2560\"}"], 3);
  EXPECT_EQ(value[h + "_bucket" + L + ",le=\"+Inf\"}"], 4);
  EXPECT_EQ(value[h + "_count" + L + "}"], 4);
  EXPECT_DOUBLE_EQ(value[h + "_sum" + L + "}"], 0.003 + 0.003 + 0.2 + 99999.0);
  EXPECT_EQ(value["finmoe_inter_token_latency_seconds_bucket" + L + ",le=\"0.01\"}"], 1);
  EXPECT_EQ(ttft_buckets.size(), 23u);  // 22 bounds + Inf
  for (size_t i = 1; i < ttft_buckets.size(); ++i) EXPECT_GE(ttft_buckets[i], ttft_buckets[i - 1]) << "cumulative";

  // vLLM's names carry the same values (from the stats set above)
  EXPECT_EQ(value["vllm:num_requests_running" + L + "}"], 3);
  EXPECT_EQ(value["vllm:num_requests_waiting" + L + "}"], 2);
  EXPECT_EQ(value["vllm:kv_cache_usage_perc" + L + "}"], 25.0 / 100);
  EXPECT_EQ(value["vllm:prefix_cache_queries_total" + L + "}"], 200);
  EXPECT_EQ(value["vllm:prefix_cache_hits_total" + L + "}"], 50);
  EXPECT_EQ(value["vllm:num_preemptions_total" + L + "}"], 4);
  EXPECT_EQ(value["vllm:prompt_tokens_total" + L + "}"], 1234);
  EXPECT_EQ(value["vllm:generation_tokens_total" + L + "}"], 567);
  EXPECT_EQ(value["vllm:request_success_total" + L + ",finished_reason=\"stop\"}"], 1);
  EXPECT_EQ(value["vllm:request_success_total" + L + ",finished_reason=\"length\"}"], 0);
  EXPECT_EQ(type["vllm:prefix_cache_hits"], "counter");
  EXPECT_EQ(type["vllm:kv_cache_usage_perc"], "gauge");
  EXPECT_EQ(type["vllm:time_to_first_token_seconds"], "histogram");
  EXPECT_EQ(value["vllm:time_to_first_token_seconds_bucket" + L + ",le=\"0.005\"}"], 2);
  EXPECT_EQ(value["vllm:time_to_first_token_seconds_count" + L + "}"], 4);
  EXPECT_EQ(value["vllm:inter_token_latency_seconds_bucket" + L + ",le=\"0.01\"}"], 1);
}

}  // namespace
}  // namespace finmoe::serve
