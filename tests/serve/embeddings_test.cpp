// /v1/embeddings without sockets: request validation (each field, errors
// naming the param), base64 against Python's encoding, the pooled final
// hidden states against Hugging Face transformers'
// (tests/ref/make_embedding_reference.py), model work run as engine tasks
// between steps; and `serve --kv-cache-memory` parsing and its warnings.
#ifdef FINMOE_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <future>
#include <thread>

#include "../expect_error.h"
#include "../model/test_util.h"
#include "../tolerance.h"
#include "finmoe/engine.h"
#include "finmoe/server.h"
#include "serve/embeddings.h"
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
  c.max_model_len = 16;
  c.vocab_size = qwen3().vocab_size();
  c.hidden_size = 64;
  c.limits.max_prompts = 3;
  return c;
}

struct Rejection {
  int status = 0;
  std::string param, code, message;
};
Rejection reject(const std::string& body) {
  try {
    parse_embedding_request(body, context());
  } catch (const ApiError& e) {
    return {e.status(), e.param(), e.code(), e.what()};
  }
  return {};
}

// ---- request validation ----------------------------------------------------

TEST(EmbeddingRequest, EachInputFormTokenizesAsTheTokenizerDoes) {
  const auto ctx = context();
  const auto hi = qwen3().encode("hello world", true);
  const auto bye = qwen3().encode("goodbye", true);
  EXPECT_EQ(parse_embedding_request(R"({"input": "hello world"})", ctx).inputs, (std::vector<std::vector<int32_t>>{hi}));
  EXPECT_EQ(parse_embedding_request(R"({"input": ["hello world", "goodbye"], "model": "tiny"})", ctx).inputs,
            (std::vector<std::vector<int32_t>>{hi, bye}));
  EXPECT_EQ(parse_embedding_request(R"({"input": [5, 6, 7]})", ctx).inputs, (std::vector<std::vector<int32_t>>{{5, 6, 7}}));
  EXPECT_EQ(parse_embedding_request(R"({"input": [[5], [6, 7]], "user": "u-1"})", ctx).inputs,
            (std::vector<std::vector<int32_t>>{{5}, {6, 7}}));
  EXPECT_FALSE(parse_embedding_request(R"({"input": "x", "encoding_format": "float"})", ctx).base64);
  EXPECT_TRUE(parse_embedding_request(R"({"input": "x", "encoding_format": "base64"})", ctx).base64);
  // dimensions equal to the hidden size is the embedding as it is
  EXPECT_EQ(parse_embedding_request(R"({"input": "x", "dimensions": 64})", ctx).inputs.size(), 1u);
}

TEST(EmbeddingRequest, EachBadFieldIsA400NamingTheParam) {
  struct Case {
    std::string body, param, code;
  } cases[] = {
      {R"({})", "input", "missing_required_parameter"},
      {R"({"input": 5})", "input", ""},
      {R"({"input": []})", "input", ""},
      {R"({"input": ["a", 5]})", "input[1]", ""},
      {R"({"input": [1, 999999999]})", "input", ""},              // outside the vocabulary
      {R"({"input": [[1], [-1]]})", "input[1]", ""},
      {R"({"input": ["a", "b", "c", "d"]})", "input", "limit_exceeded"},  // max_prompts 3
      {R"({"input": "x", "encoding_format": "int8"})", "encoding_format", ""},
      {R"({"input": "x", "encoding_format": 1})", "encoding_format", ""},
      {R"({"input": "x", "dimensions": 32})", "dimensions", "unsupported_parameter"},
      {R"({"input": "x", "dimensions": 128})", "dimensions", "unsupported_parameter"},
      {R"({"input": "x", "dimensions": 0})", "dimensions", ""},
      {R"({"input": "x", "dimensions": "64"})", "dimensions", ""},
      {R"({"input": "x", "model": "other"})", "model", "model_not_found"},
      {R"({"input": "x", "temperature": 0})", "temperature", "unrecognized_argument"},
      {R"({"input": "", "add_special_tokens": false})", "input", ""},   // no tokens
  };
  for (const auto& c : cases) {
    const Rejection r = reject(c.body);
    EXPECT_EQ(r.status, 400) << c.body;
    EXPECT_EQ(r.param, c.param) << c.body << ": " << r.message;
    if (!c.code.empty()) {
      EXPECT_EQ(r.code, c.code) << c.body;
    }
  }
}

TEST(EmbeddingRequest, TextPastTheModelVocabularyNamesTheInput) {
  // a tokenizer larger than the model: text whose ids the model has no row for
  ApiContext ctx = context();
  ctx.vocab_size = 320;
  const auto ids = qwen3().encode("!?", true);
  ASSERT_GE(*std::max_element(ids.begin(), ids.end()), 320);
  try {
    parse_embedding_request(R"({"input": ["x", "!?"]})", ctx);
    ADD_FAILURE() << "accepted";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.param(), "input[1]");
    EXPECT_CONTAINS(e.what(), "outside the vocabulary");
  }
}

TEST(EmbeddingRequest, AnInputOverTheContextNamesItsIndex) {
  // max_model_len 16: 16 tokens fit (no completion follows), 17 do not
  std::string ids16 = "[", ids17;
  for (int i = 0; i < 16; ++i) ids16 += std::to_string(i + 1) + (i < 15 ? "," : "]");
  ids17 = ids16.substr(0, ids16.size() - 1) + ",17]";
  EXPECT_EQ(parse_embedding_request(R"({"input": )" + ids16 + "}", context()).inputs[0].size(), 16u);
  const Rejection r = reject(R"({"input": [[1], )" + ids17 + "]}");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.param, "input[1]");
  EXPECT_EQ(r.code, "context_length_exceeded");
  EXPECT_NE(r.message.find("17 tokens"), std::string::npos) << r.message;
}

// ---- responses ---------------------------------------------------------------

TEST(EmbeddingResponse, Base64IsLittleEndianFloat32AsPythonEncodesIt) {
  // python: base64.b64encode(struct.pack('<f', 1.0)), ... pack('<3f', 1.0, -2.5, 0.1),
  // pack('<2f', 0.5, -0.25) (each length mod 3 once: padding "==", "", "=")
  EXPECT_EQ(base64_float32({1.0f}), "AACAPw==");
  EXPECT_EQ(base64_float32({1.0f, -2.5f, 0.1f}), "AACAPwAAIMDNzMw9");
  EXPECT_EQ(base64_float32({0.5f, -0.25f, 3.0f, 7.0f, -1.0f}), "AAAAPwAAgL4AAEBAAADgQAAAgL8=");
  EXPECT_EQ(base64_float32({}), "");
}

TEST(EmbeddingResponse, ShapeAndUsageAsOpenAi) {
  const auto ctx = context();
  const auto r = parse_embedding_request(R"({"input": [[1, 2, 3], [4]]})", ctx);
  const json j = embedding_response(r, {{0.6f, 0.8f}, {1.0f, 0.0f}}, ctx);
  EXPECT_EQ(j["object"], "list");
  EXPECT_EQ(j["model"], "tiny");
  ASSERT_EQ(j["data"].size(), 2u);
  EXPECT_EQ(j["data"][1]["object"], "embedding");
  EXPECT_EQ(j["data"][1]["index"], 1);
  EXPECT_EQ(j["data"][0]["embedding"].size(), 2u);
  EXPECT_FLOAT_EQ(j["data"][0]["embedding"][1].get<float>(), 0.8f);
  EXPECT_EQ(j["usage"]["prompt_tokens"], 4);
  EXPECT_EQ(j["usage"]["total_tokens"], 4);
  const auto b = parse_embedding_request(R"({"input": [4], "encoding_format": "base64"})", ctx);
  EXPECT_EQ(embedding_response(b, {{1.0f}}, ctx)["data"][0]["embedding"], "AACAPw==");
}

// ---- the embedding itself against transformers -------------------------------

json reference(const std::string& model) {
  std::ifstream f(std::string(FINMOE_TEST_DATA_DIR) + "/serve/embeddings/" + model + ".json");
  return json::parse(f);
}

torch::Tensor row(const json& values) { return torch::tensor(values.get<std::vector<double>>(), torch::kFloat64); }
torch::Tensor row(const std::vector<float>& values) {
  return torch::tensor(std::vector<double>(values.begin(), values.end()), torch::kFloat64);
}

class EmbeddingParity : public ::testing::TestWithParam<std::string> {};

TEST_P(EmbeddingParity, PooledFinalHiddenStatesMatchTransformers) {
  const json ref = reference(GetParam());
  auto model = load_model(test::hf_dir(GetParam()), {.dtype = torch::kFloat32, .device = test::test_device()});
  struct Mode {
    EmbeddingPooling pooling;
    bool normalize;
    const char* key;
  } modes[] = {{EmbeddingPooling::Last, true, "last"},
               {EmbeddingPooling::Mean, true, "mean"},
               {EmbeddingPooling::Last, false, "last_raw"},
               {EmbeddingPooling::Mean, false, "mean_raw"}};
  for (const auto& m : modes)
    for (size_t i = 0; i < ref["inputs"].size(); ++i) {
      const auto ids = ref["inputs"][i].get<std::vector<int32_t>>();
      const auto got = embed_prompt(model, ids, m.pooling, m.normalize);
      ASSERT_EQ(int64_t(got.size()), model.config().hidden_size);
      EXPECT_TRUE(test::AllClose(row(got), row(ref[m.key][i]), 1e-4)) << GetParam() << " " << m.key << " input " << i;
      if (m.normalize) {
        EXPECT_NEAR(row(got).norm().item<double>(), 1.0, 1e-5);
      }
    }
}

INSTANTIATE_TEST_SUITE_P(Models, EmbeddingParity, ::testing::Values("llama_gqa_llama3rope", "qwen2_moe_shared"));

TEST(EmbeddingPooling, NamesParseAndUnknownOnesAreListed) {
  EXPECT_EQ(embedding_pooling_from_string("last"), EmbeddingPooling::Last);
  EXPECT_EQ(embedding_pooling_from_string("mean"), EmbeddingPooling::Mean);
  EXPECT_CONTAINS(test::message_of([&] { embedding_pooling_from_string("cls"); }), "last, mean");
}

// ---- engine tasks --------------------------------------------------------------

TEST(EngineTask, RunOnTheSteppingThreadBesideGeneration) {
  auto model = load_model(test::hf_dir("llama_gqa_llama3rope"), {.dtype = torch::kFloat32, .device = test::test_device()});
  EngineOptions o;
  o.kv_cache_bytes = 512 * kv_cache_bytes_per_token(model.config(), 4);
  Engine engine(model, nullptr, o);
  engine.start();
  RequestParams p;
  p.sampling.temperature = 0;
  p.max_tokens = 40;
  std::promise<int64_t> generated;
  engine.submit({5, 6, 7}, p, [&](const RequestOutput& out) {
    if (out.finished) generated.set_value(out.completion_tokens);
  });
  // tasks while a request generates: each runs once, all on the engine's stepping thread
  const json ref = reference("llama_gqa_llama3rope");
  std::vector<std::future<std::vector<float>>> results;
  std::vector<std::thread::id> ran_on;
  std::mutex mu;
  auto submit = [&](size_t i) {
    auto done = std::make_shared<std::promise<std::vector<float>>>();
    results.push_back(done->get_future());
    engine.submit_task([&, done, i](Transformer& m) {
      {
        std::lock_guard lock(mu);
        ran_on.push_back(std::this_thread::get_id());
      }
      done->set_value(embed_prompt(m, ref["inputs"][i].get<std::vector<int32_t>>(), EmbeddingPooling::Last, true));
    });
  };
  for (size_t i = 0; i < ref["inputs"].size(); ++i) submit(i);
  for (size_t i = 0; i < results.size(); ++i)
    EXPECT_TRUE(test::AllClose(row(results[i].get()), row(ref["last"][i]), 1e-4)) << "input " << i;
  EXPECT_EQ(generated.get_future().get(), 40);
  engine.stop();
  ASSERT_EQ(ran_on.size(), ref["inputs"].size());
  for (const auto& t : ran_on) {
    EXPECT_EQ(t, ran_on.front());
    EXPECT_NE(t, std::this_thread::get_id());
  }
}

TEST(EngineTask, StopDropsTasksNotYetRunAndStepRunsThem) {
  auto model = load_model(test::hf_dir("llama_gqa_llama3rope"), {.dtype = torch::kFloat32, .device = test::test_device()});
  EngineOptions o;
  o.kv_cache_bytes = 64 * kv_cache_bytes_per_token(model.config(), 4);
  {
    Engine engine(model, nullptr, o);  // never started: step() runs tasks in this thread
    int runs = 0;
    engine.submit_task([&](Transformer&) { ++runs; });
    engine.submit_task([&](Transformer&) { throw Error("a task that throws is dropped"); });
    engine.submit_task([&](Transformer&) { ++runs; });
    engine.run_until_idle();
    EXPECT_EQ(runs, 2);
    EXPECT_FALSE(engine.step());
  }
  Engine engine(model, nullptr, o);
  auto done = std::make_shared<std::promise<int>>();
  auto result = done->get_future();
  engine.submit_task([done](Transformer&) { done->set_value(1); });
  done.reset();   // the task owns the promise now
  engine.stop();  // not started: the task is dropped unrun
  EXPECT_THROW(result.get(), std::future_error);
}

// ---- --kv-cache-memory -----------------------------------------------------------

TEST(KvCacheMemory, SizesAndSharesParse) {
  EXPECT_EQ(parse_kv_cache_memory("2GiB").bytes, int64_t(2) << 30);
  EXPECT_EQ(parse_kv_cache_memory("512MiB").bytes, int64_t(512) << 20);
  EXPECT_EQ(parse_kv_cache_memory("1000000").bytes, 1000000);
  EXPECT_EQ(parse_kv_cache_memory("1.5GB").bytes, 1500000000);
  EXPECT_EQ(parse_kv_cache_memory("2").bytes, 2);  // bytes (the engine then says it holds no block)
  for (auto [text, share] : {std::pair{"0.5", 0.5}, {"50%", 0.5}, {"0.05", 0.05}, {"1", 1.0}, {"1.0", 1.0},
                             {"100%", 1.0}, {"12.5%", 0.125}}) {
    const KvCacheMemory m = parse_kv_cache_memory(text);
    EXPECT_EQ(m.bytes, 0) << text;
    EXPECT_DOUBLE_EQ(m.fraction, share) << text;
  }
}

TEST(KvCacheMemory, BadValuesNameTheFlagAndTheForms) {
  for (const char* bad : {"0", "0%", "-0.5", "150%", "abc", "50 %", "%", "", "1.5", "2GB%", "nan", "-1GiB"}) {
    try {
      parse_kv_cache_memory(bad);
      ADD_FAILURE() << "'" << bad << "' was accepted";
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find("--kv-cache-memory '" + std::string(bad) + "'"), std::string::npos) << m;
      EXPECT_NE(m.find("2GiB"), std::string::npos) << m;
      EXPECT_NE(m.find("50%"), std::string::npos) << m;
    }
  }
}

TEST(KvCacheMemory, ShareOfMemAvailable) {
  const std::string meminfo = "MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    8000000 kB\n";
  EXPECT_EQ(mem_available_bytes(meminfo), int64_t(8000000) * 1024);
  EXPECT_CONTAINS(test::message_of([&] { mem_available_bytes("MemTotal: 5 kB\n"); }), "MemAvailable");
  // live: half of MemAvailable now (read here separately), within what moves between the two reads
  std::ifstream f("/proc/meminfo");
  std::stringstream text;
  text << f.rdbuf();
  const double now = double(mem_available_bytes(text.str()));
  const double half = double(resolve_kv_cache_memory(parse_kv_cache_memory("50%"), "cpu"));
  EXPECT_NEAR(half / now, 0.5, 0.05);
  EXPECT_EQ(resolve_kv_cache_memory(parse_kv_cache_memory("64MiB"), "cuda"), int64_t(64) << 20);
  EXPECT_CONTAINS(test::message_of([&] { resolve_kv_cache_memory(parse_kv_cache_memory("0.5"), "cuda:x"); }),
                  "expected cuda or cuda:N");
  EXPECT_CONTAINS(test::message_of([&] { resolve_kv_cache_memory(parse_kv_cache_memory("0.5"), "mps"); }),
                  "give a size");
}

// A share with --device cuda is of the GPU's free memory, read here through
// the CUDA runtime separately; a build without CUDA says so and asks for a size.
TEST(KvCacheMemory, ShareOfFreeGpuMemory) {
#ifdef FINMOE_HAVE_CUDA
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const double half = double(resolve_kv_cache_memory(parse_kv_cache_memory("50%"), "cuda:0"));
  size_t free_bytes = 0, total_bytes = 0;
  ASSERT_EQ(cudaMemGetInfo(&free_bytes, &total_bytes), cudaSuccess);
  EXPECT_NEAR(half / double(free_bytes), 0.5, 0.02);
  EXPECT_LE(half, 0.5 * double(total_bytes));
#else
  const std::string m = test::message_of([&] { resolve_kv_cache_memory(parse_kv_cache_memory("0.5"), "cuda:0"); });
  EXPECT_CONTAINS(m, "--kv-cache-memory as a share of free GPU memory (--device cuda:0)");
  EXPECT_CONTAINS(m, "no CUDA");
  EXPECT_CONTAINS(m, "give a size");
#endif
}

TEST(KvCacheMemory, WarningBelowFourFullLengthSequences) {
  EXPECT_EQ(kv_capacity_warning(4, 2048, 8192), "");
  EXPECT_EQ(kv_capacity_warning(215, 2048, 441792), "");
  EXPECT_EQ(kv_capacity_warning(3, 2048, 6144),
            "finmoe: warning: the KV cache (6144 tokens) holds 3 sequence(s) of the full context (2048 tokens) at "
            "once, fewer than 4. Raise --kv-cache-memory or lower --max-model-len.\n");
  EXPECT_EQ(kv_capacity_warning(0, 512, 128),
            "finmoe: warning: the KV cache (128 tokens) holds 0 sequence(s) of the full context (512 tokens) at "
            "once, fewer than 4; a sequence ends with \"length\" at 128 tokens. Raise --kv-cache-memory or lower "
            "--max-model-len.\n");
}

TEST(KvCacheMemory, EngineErrorsNameTheServeFlags) {
  auto model = load_model(test::hf_dir("llama_gqa_llama3rope"), {.dtype = torch::kFloat32, .device = test::test_device()});
  auto message = [&](const EngineOptions& o) -> std::string {
    try {
      Engine e(model, nullptr, o);
    } catch (const Error& err) {
      return engine_error_with_flags(err.what());
    }
    return "";
  };
  EngineOptions tiny;
  tiny.kv_cache_bytes = 100;
  const std::string a = message(tiny);
  EXPECT_NE(a.find("--kv-cache-memory"), std::string::npos) << a;
  EngineOptions long_ctx;
  long_ctx.max_model_len = 100000;
  const std::string b = message(long_ctx);
  EXPECT_NE(b.find("--max-model-len"), std::string::npos) << b;
  EngineOptions seqs;
  seqs.max_num_seqs = 0;
  const std::string c = message(seqs);
  EXPECT_NE(c.find("--max-num-seqs"), std::string::npos) << c;
  for (const auto& m : {a, b, c}) EXPECT_EQ(m.find("EngineOptions"), std::string::npos) << m;
}

}  // namespace
}  // namespace finmoe::serve
