// ModelConfig / GenerationConfig: real-world configs, HF defaults, errors
// naming fields, round trip of unknown keys.
#include "finmoe/config.h"

#include <gtest/gtest.h>

#include <functional>

#include "core_test_util.h"
#include "finmoe/error.h"

namespace finmoe {
namespace {

using nlohmann::json;
using test::ScratchDir;

std::string config_path(const std::string& name) {
  return std::string(FINMOE_TEST_DATA_DIR) + "/core/configs/" + name;
}
ModelConfig parse_file(const std::string& name) {
  return ModelConfig::from_json(read_json_file(config_path(name)), name);
}

// The smallest valid llama config; tests add or change keys.
json minimal(const std::string& model_type = "llama") {
  return {{"model_type", model_type}, {"vocab_size", 100},   {"hidden_size", 64},
          {"intermediate_size", 128}, {"num_hidden_layers", 2}, {"num_attention_heads", 4}};
}

std::string error_of(const json& j) {
  try {
    ModelConfig::from_json(j);
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

// The depth scan agrees with the structure: brackets inside strings and
// escaped quotes do not count; the limit is inclusive.
TEST(Json, DepthScanIgnoresStringsAndRefusesDeepInputBeforeParsing) {
  EXPECT_EQ(json_depth(R"({"a": [1, {"b": "[[[[\"{{{"}]})", 100), 3);
  EXPECT_EQ(json_depth("[]", 100), 1);
  EXPECT_EQ(json_depth(R"("[[[")", 100), 0);
  const std::string at_limit = std::string(64, '[') + std::string(64, ']');
  EXPECT_EQ(parse_json(at_limit, "x").dump(), at_limit);
  size_t where = 0;
  const std::string deep = R"({"k": )" + std::string(1000000, '[') + std::string(1000000, ']') + "}";
  EXPECT_EQ(json_depth(deep, 64, &where), 65);
  EXPECT_EQ(where, 6u + 63u);
  try {
    parse_json(deep, "config.json");
    FAIL() << "no error";
  } catch (const JsonError& e) {
    EXPECT_STREQ(e.what(), "config.json: JSON nested deeper than 64 levels (at byte 69)");
  }
  ScratchDir dir;
  const auto path = dir / "config.json";
  write_file_atomic(path, deep);
  try {
    read_json_file(path);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind(path + ": JSON nested deeper than 64 levels", 0), 0u)
        << e.what();
  }
  EXPECT_THROW(parse_json("{\"a\": }", "body"), JsonError);
}

// A DeepSeek-V3-shaped config: HF's defaults fill what it leaves out, the
// MoE layer rule and the MLA sizes follow, and bad routing keys are named.
// An MLA model with every layer dense (a GQA -> MLA conversion of a dense
// model) never routes: routing keys that would not route (noaux_tc with one
// expert per group) are not an error there, and are one with a MoE layer.
TEST(ModelConfig, DeepseekWithOnlyDenseLayersSkipsTheRoutingChecks) {
  json j = minimal("deepseek_v3");
  j["num_hidden_layers"] = 3;
  j["first_k_dense_replace"] = 3;
  j["n_routed_experts"] = 1;
  j["num_experts_per_tok"] = 1;
  j["moe_intermediate_size"] = 1;
  const ModelConfig c = ModelConfig::from_json(j);
  EXPECT_EQ(c.moe_layers, std::vector<bool>(3, false));
  j["first_k_dense_replace"] = 2;
  EXPECT_THROW(ModelConfig::from_json(j), Error);
}

TEST(ModelConfig, DeepseekKeysDefaultsAndErrors) {
  json j = minimal("deepseek_v3");
  j["n_routed_experts"] = 16;
  j["moe_intermediate_size"] = 32;
  j["num_hidden_layers"] = 5;
  j["first_k_dense_replace"] = 1;
  j["moe_layer_freq"] = 2;
  j["q_lora_rank"] = nullptr;
  ModelConfig c = ModelConfig::from_json(j);
  EXPECT_TRUE(c.is_mla());
  EXPECT_EQ(c.q_lora_rank, 0);
  EXPECT_EQ(c.kv_lora_rank, 512);
  EXPECT_EQ(c.head_dim, 64);  // the rope part
  EXPECT_EQ(c.qk_head_dim(), 192);
  EXPECT_EQ(c.routing(), ModelConfig::Routing::DeepSeek);
  EXPECT_EQ(c.scoring_func, "sigmoid");
  EXPECT_EQ(c.topk_method, "noaux_tc");
  EXPECT_EQ(c.num_experts_per_tok, 8);
  EXPECT_EQ(c.shared_expert_intermediate_size, 32);  // 1 shared expert x 32
  EXPECT_EQ(c.moe_layers, (std::vector<bool>{false, false, true, false, true}));
  EXPECT_TRUE(c.rope_interleaved);
  EXPECT_EQ(c.kv_values_per_token(), 5 * (512 + 64));  // one latent row per layer
  const ModelConfig back = ModelConfig::from_json(c.to_json());
  EXPECT_EQ(back.moe_layers, c.moe_layers);
  EXPECT_EQ(back.q_lora_rank, 0);
  EXPECT_EQ(back.n_group, 8);
  EXPECT_EQ(c.to_json()["q_lora_rank"], nullptr);

  const std::vector<std::pair<json, std::string>> bad = {
      {{{"topk_method", "random"}}, "field 'topk_method' has unsupported value 'random'"},
      {{{"scoring_func", "relu"}}, "field 'scoring_func' has unsupported value 'relu'"},
      {{{"n_group", 3}}, "field 'n_group' 3 does not divide n_routed_experts 16"},
      {{{"topk_group", 9}}, "field 'topk_group' must be in [1, n_group=8], got 9"},
      {{{"qk_rope_head_dim", 7}}, "field 'qk_rope_head_dim' must be even"},
      {{{"kv_lora_rank", 0}}, "field 'kv_lora_rank' must be positive"},
  };
  for (const auto& [patch, msg] : bad) {
    json k = j;
    k.update(patch);
    EXPECT_NE(error_of(k).find(msg), std::string::npos) << error_of(k);
  }
}

TEST(ModelConfig, ParsesQwen25_05B) {
  ModelConfig c = parse_file("qwen2.5-0.5b.json");
  EXPECT_EQ(c.model_type, "qwen2");
  EXPECT_EQ(c.architectures, std::vector<std::string>{"Qwen2ForCausalLM"});
  EXPECT_EQ(c.vocab_size, 151936);
  EXPECT_EQ(c.hidden_size, 896);
  EXPECT_EQ(c.intermediate_size, 4864);
  EXPECT_EQ(c.num_hidden_layers, 24);
  EXPECT_EQ(c.num_attention_heads, 14);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.head_dim, 64);  // 896 / 14
  EXPECT_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_EQ(c.rope_theta, 1e6);
  EXPECT_EQ(c.rope_scaling.rope_type, "default");
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_TRUE(c.attention_bias);              // qwen2: q/k/v bias without a key
  EXPECT_FALSE(c.sliding_window.has_value());  // use_sliding_window: false
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  EXPECT_EQ(c.bos_token_id, 151643);
  EXPECT_EQ(c.eos_token_id, std::vector<int64_t>{151643});
  EXPECT_EQ(c.q_size(), 896);
  EXPECT_EQ(c.kv_size(), 128);
  EXPECT_EQ(c.kv_values_per_token(), 2 * 24 * 128);
}

TEST(ModelConfig, ParsesLlama31_8BWithLlama3RopeScaling) {
  ModelConfig c = parse_file("llama-3.1-8b.json");
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_EQ(c.num_key_value_heads, 8);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.max_position_embeddings, 131072);
  EXPECT_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling.rope_type, "llama3");
  EXPECT_EQ(c.rope_scaling.factor, 8.0);
  EXPECT_EQ(c.rope_scaling.low_freq_factor, 1.0);
  EXPECT_EQ(c.rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_FALSE(c.mlp_bias);
  EXPECT_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_EQ(c.eos_token_id, std::vector<int64_t>{128001});
  EXPECT_FALSE(c.sliding_window.has_value());
}

TEST(ModelConfig, ParsesMistral7B) {
  ModelConfig v1 = parse_file("mistral-7b-v0.1.json");
  EXPECT_EQ(v1.model_type, "mistral");
  EXPECT_EQ(v1.sliding_window, 4096);
  EXPECT_EQ(v1.num_key_value_heads, 8);
  EXPECT_EQ(v1.head_dim, 128);
  EXPECT_FALSE(v1.attention_bias);
  EXPECT_EQ(v1.bos_token_id, 1);
  ModelConfig v3 = parse_file("mistral-7b-instruct-v0.3.json");
  EXPECT_FALSE(v3.sliding_window.has_value());  // "sliding_window": null
  EXPECT_EQ(v3.vocab_size, 32768);
  EXPECT_EQ(v3.rope_theta, 1e6);
}

TEST(ModelConfig, RealConfigsWriteBackUnchanged) {
  for (const char* name : {"qwen2.5-0.5b.json", "llama-3.1-8b.json", "mistral-7b-v0.1.json",
                           "mistral-7b-instruct-v0.3.json"}) {
    json j = read_json_file(config_path(name));
    EXPECT_EQ(ModelConfig::from_json(j).to_json(), j) << name;
  }
}

TEST(ModelConfig, AppliesHFDefaults) {
  ModelConfig c = ModelConfig::from_json(minimal());
  EXPECT_EQ(c.num_key_value_heads, 4);  // = num_attention_heads
  EXPECT_EQ(c.head_dim, 16);            // = hidden_size / num_attention_heads
  EXPECT_EQ(c.hidden_act, "silu");
  EXPECT_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.max_position_embeddings, 2048);  // LlamaConfig
  EXPECT_EQ(c.torch_dtype, "float32");
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_id, std::vector<int64_t>{2});
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(ModelConfig::from_json(minimal("qwen2")).max_position_embeddings, 32768);
  EXPECT_FALSE(ModelConfig::from_json(minimal("qwen2")).bos_token_id.has_value());
  EXPECT_EQ(ModelConfig::from_json(minimal("mistral")).sliding_window, 4096);  // MistralConfig

  json j = minimal();
  j["head_dim"] = 32;  // explicit head_dim wins, hidden_size need not divide
  j["hidden_size"] = 60;
  EXPECT_EQ(ModelConfig::from_json(j).head_dim, 32);
  EXPECT_EQ(ModelConfig::from_json(j).q_size(), 128);
  j["head_dim"] = nullptr;
  j["hidden_size"] = 64;
  EXPECT_EQ(ModelConfig::from_json(j).head_dim, 16);
  j["dtype"] = "float16";  // the newer key
  EXPECT_EQ(ModelConfig::from_json(j).torch_dtype, "float16");
  j["eos_token_id"] = {5, 6};
  EXPECT_EQ(ModelConfig::from_json(j).eos_token_id, (std::vector<int64_t>{5, 6}));
  j["attention_bias"] = true;
  j["mlp_bias"] = true;
  EXPECT_TRUE(ModelConfig::from_json(j).attention_bias);
  EXPECT_TRUE(ModelConfig::from_json(j).mlp_bias);

  json q = minimal("qwen2");
  q["sliding_window"] = 1024;
  EXPECT_FALSE(ModelConfig::from_json(q).sliding_window.has_value());
  q["use_sliding_window"] = true;
  EXPECT_EQ(ModelConfig::from_json(q).sliding_window, 1024);
}

TEST(ModelConfig, ReadsRopeScalingVariants) {
  json j = minimal();
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};  // legacy key
  EXPECT_EQ(ModelConfig::from_json(j).rope_scaling.rope_type, "linear");
  EXPECT_EQ(ModelConfig::from_json(j).rope_scaling.factor, 2.0);
  j["rope_scaling"] = {{"rope_type", "dynamic"}, {"factor", 4}};
  EXPECT_EQ(ModelConfig::from_json(j).rope_scaling.rope_type, "dynamic");
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0},
                       {"original_max_position_embeddings", 32768}, {"beta_fast", 16}};
  RopeScaling y = ModelConfig::from_json(j).rope_scaling;
  EXPECT_EQ(y.rope_type, "yarn");
  EXPECT_EQ(y.original_max_position_embeddings, 32768);
  EXPECT_EQ(y.beta_fast, 16.0);
  EXPECT_EQ(y.beta_slow, 1.0);
  EXPECT_FALSE(y.attention_factor.has_value());
  // Qwen2.5's long-context recipe, with the legacy key: written back as it was.
  j["rope_scaling"] = {{"type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 32768}};
  EXPECT_EQ(ModelConfig::from_json(j).to_json()["rope_scaling"], j["rope_scaling"]);
  j["rope_scaling"] = nullptr;
  EXPECT_EQ(ModelConfig::from_json(j).rope_scaling.rope_type, "default");
  EXPECT_EQ(ModelConfig::from_json(j).to_json(), j);
  j["rope_scaling"] = {{"rope_type", "default"}};
  EXPECT_EQ(ModelConfig::from_json(j).rope_scaling.rope_type, "default");
}

struct BadConfig {
  std::string what;
  json j;
  std::string expect;
};

TEST(ModelConfig, ErrorsNameTheFieldAndWhatWasExpected) {
  auto with = [](std::function<void(json&)> edit, std::string model_type = "llama") {
    json j = minimal(model_type);
    edit(j);
    return j;
  };
  const std::vector<BadConfig> cases = {
      {"unknown model_type", with([](json& j) { j["model_type"] = "gpt2"; }),
       "config.json: model_type 'gpt2' is not supported (supported: llama, qwen2, mistral, mixtral, qwen2_moe, finer_moe, finmoe_dense, deepseek_v2, deepseek_v3)"},
      {"no model_type", with([](json& j) { j.erase("model_type"); }),
       "config.json: model_type '' is not supported (supported: llama, qwen2, mistral, mixtral, qwen2_moe, finer_moe, finmoe_dense, deepseek_v2, deepseek_v3)"},
      {"string size", with([](json& j) { j["hidden_size"] = "64"; }),
       "config.json: field 'hidden_size' must be an integer, got string"},
      {"float size", with([](json& j) { j["vocab_size"] = 100.5; }),
       "field 'vocab_size' must be an integer, got float"},
      {"missing size", with([](json& j) { j.erase("intermediate_size"); }),
       "config.json: missing required field 'intermediate_size'"},
      {"zero layers", with([](json& j) { j["num_hidden_layers"] = 0; }),
       "field 'num_hidden_layers' must be positive, got 0"},
      {"negative heads", with([](json& j) { j["num_attention_heads"] = -4; }),
       "field 'num_attention_heads' must be positive, got -4"},
      {"kv heads do not divide", with([](json& j) { j["num_key_value_heads"] = 3; }),
       "field 'num_attention_heads' 4 is not a multiple of num_key_value_heads 3"},
      {"hidden not divisible", with([](json& j) { j["hidden_size"] = 66; }),
       "field 'hidden_size' 66 is not divisible by num_attention_heads 4"},
      {"bool as string", with([](json& j) { j["tie_word_embeddings"] = "true"; }),
       "field 'tie_word_embeddings' must be a boolean, got string"},
      {"eps string", with([](json& j) { j["rms_norm_eps"] = "1e-6"; }),
       "field 'rms_norm_eps' must be a number, got string"},
      {"eos object", with([](json& j) { j["eos_token_id"] = json::object(); }),
       "field 'eos_token_id' must be an integer or a list of integers, got object"},
      {"eos list of strings", with([](json& j) { j["eos_token_id"] = {"a"}; }),
       "field 'eos_token_id' must be an integer, got string"},
      {"architectures", with([](json& j) { j["architectures"] = "LlamaForCausalLM"; }),
       "field 'architectures' must be an array of strings, got string"},
      {"unknown rope type",
       with([](json& j) { j["rope_scaling"] = {{"rope_type", "longrope"}, {"factor", 2.0}}; }),
       "field 'rope_scaling.rope_type' has unsupported value 'longrope' (supported: default, "
       "linear, dynamic, llama3, yarn)"},
      {"rope without type", with([](json& j) { j["rope_scaling"] = {{"factor", 2.0}}; }),
       "field 'rope_scaling.rope_type' is missing"},
      {"rope not object", with([](json& j) { j["rope_scaling"] = 2; }),
       "field 'rope_scaling' must be an object or null, got integer"},
      {"rope factor type",
       with([](json& j) { j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", "2"}}; }),
       "field 'rope_scaling.factor' must be a number, got string"},
      {"linear without factor", with([](json& j) { j["rope_scaling"] = {{"rope_type", "linear"}}; }),
       "field 'rope_scaling.factor' is required for rope_type 'linear'"},
      {"llama3 incomplete",
       with([](json& j) {
         j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                              {"high_freq_factor", 4.0}};
       }),
       "field 'rope_scaling.original_max_position_embeddings' is required for rope_type 'llama3'"},
      {"dtype unknown", with([](json& j) { j["torch_dtype"] = "int4"; }),
       "field 'torch_dtype' has unsupported value 'int4'"},
      {"sliding window zero", with([](json& j) { j["sliding_window"] = 0; }, "mistral"),
       "field 'sliding_window' must be positive, got 0"},
      {"head_dim string", with([](json& j) { j["head_dim"] = "16"; }),
       "field 'head_dim' must be an integer, got string"},
      {"not an object", json::array(), "config.json: expected a JSON object, got array"},
  };
  for (const auto& c : cases) {
    const std::string msg = error_of(c.j);
    EXPECT_NE(msg.find(c.expect), std::string::npos)
        << c.what << "\n  expected: " << c.expect << "\n  got:      " << msg;
  }
}

TEST(ModelConfig, UnknownKeysAndEditsRoundTrip) {
  json j = minimal("qwen2");
  j["my_custom_key"] = {{"nested", {1, 2, 3}}};
  j["max_window_layers"] = 21;
  j["rope_theta"] = 10000;  // an integer in the file stays an integer
  ModelConfig c = ModelConfig::from_json(j);
  json out = c.to_json();
  EXPECT_EQ(out, j);
  EXPECT_TRUE(out["rope_theta"].is_number_integer());

  c.num_key_value_heads = 2;
  c.sliding_window = 512;
  c.rope_scaling.rope_type = "linear";
  c.rope_scaling.factor = 2.0;
  c.eos_token_id = {7, 8};
  c.torch_dtype = "bfloat16";
  out = c.to_json();
  EXPECT_EQ(out["my_custom_key"], j["my_custom_key"]);
  EXPECT_EQ(out["num_key_value_heads"], 2);
  EXPECT_EQ(out["use_sliding_window"], true);
  EXPECT_EQ(out["sliding_window"], 512);
  EXPECT_EQ(out["rope_scaling"], json({{"rope_type", "linear"}, {"factor", 2.0}}));
  EXPECT_EQ(out["eos_token_id"], json({7, 8}));
  EXPECT_EQ(out["torch_dtype"], "bfloat16");
  ModelConfig back = ModelConfig::from_json(out);  // and it parses to the same values
  EXPECT_EQ(back.num_key_value_heads, 2);
  EXPECT_EQ(back.sliding_window, 512);
  EXPECT_EQ(back.rope_scaling.factor, 2.0);
  EXPECT_EQ(back.eos_token_id, (std::vector<int64_t>{7, 8}));
}

TEST(ModelConfig, ConfigBuiltInCodeFinalizesAndSerializes) {
  ModelConfig c;
  c.model_type = "mistral";
  c.vocab_size = 10;
  c.hidden_size = 32;
  c.intermediate_size = 64;
  c.num_hidden_layers = 1;
  c.num_attention_heads = 4;
  c.finalize();
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.head_dim, 8);
  ModelConfig back = ModelConfig::from_json(c.to_json());
  EXPECT_EQ(back.to_json(), c.to_json());
  EXPECT_EQ(back.head_dim, 8);
  EXPECT_FALSE(back.sliding_window.has_value());  // written as null, not MistralConfig's 4096
}

TEST(ModelConfig, SaveAndLoadThroughADirectory) {
  ScratchDir dir;
  ModelConfig c = parse_file("llama-3.1-8b.json");
  c.save(dir.str());
  EXPECT_EQ(dir.list(), std::vector<std::string>{"config.json"});
  EXPECT_EQ(read_json_file(dir / "config.json"), read_json_file(config_path("llama-3.1-8b.json")));
  EXPECT_EQ(ModelConfig::load(dir.str()).rope_scaling.factor, 8.0);
  // Pretty-printed with 2-space indentation.
  EXPECT_NE(test::read_bytes(dir / "config.json").find("\n  \"architectures\": [\n    \"Llama"),
            std::string::npos);

  // Errors name the full path.
  ScratchDir empty_dir;
  try {
    ModelConfig::load(empty_dir.str());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(empty_dir / "config.json"), std::string::npos) << e.what();
  }
  json bad = minimal();
  bad["hidden_size"] = "x";
  write_json_file(dir / "config.json", bad);
  try {
    ModelConfig::load(dir.str());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(dir / "config.json" + ": field 'hidden_size'"),
              std::string::npos)
        << e.what();
  }
}

TEST(JsonFile, ParseErrorsNameThePathAndLine) {
  ScratchDir dir;
  test::write_bytes(dir / "bad.json", "{\n  \"a\": 1,\n  \"b\": ]\n}");
  try {
    read_json_file(dir / "bad.json");
    FAIL();
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(dir / "bad.json"), std::string::npos) << msg;
    EXPECT_NE(msg.find("line 3"), std::string::npos) << msg;
  }
}

TEST(JsonFile, ANumberOutOfRangeNamesTheFieldBeforeIt) {
  ScratchDir dir;
  test::write_bytes(dir / "config.json", R"({"model_type": "llama", "rope_theta": 1e999})");
  try {
    read_json_file(dir / "config.json");
    FAIL();
  } catch (const JsonError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(dir / "config.json"), std::string::npos) << msg;
    EXPECT_NE(msg.find("at field 'rope_theta'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("1e999"), std::string::npos) << msg;
  }
}

// Sizes beyond any model are refused before anything is sized from them; a
// config of 10^6 layers used to run for seconds before ending in bad_alloc.
TEST(ModelConfig, SizesAboveTheLimitsAreRefusedNamingTheField) {
  const std::vector<std::pair<std::string, int64_t>> over = {
      {"vocab_size", kMaxVocabSize + 1},
      {"hidden_size", kMaxHiddenSize + 1},
      {"intermediate_size", kMaxIntermediateSize + 1},
      {"num_hidden_layers", 1000000},
      {"num_attention_heads", kMaxHeads + 1},
      {"num_key_value_heads", kMaxHeads + 1},
      {"head_dim", kMaxHeadDim + 1},
      {"max_position_embeddings", kMaxPositions + 1},
  };
  for (const auto& [field, value] : over) {
    json j = minimal();
    j[field] = value;
    const std::string msg = error_of(j);
    EXPECT_NE(msg.find("field '" + field + "' is " + std::to_string(value) +
                       ", above finmoe's limit of "),
              std::string::npos)
        << msg;
  }
  json moe = minimal("qwen2_moe");
  moe["num_experts"] = kMaxExperts + 1;
  EXPECT_NE(error_of(moe).find("field 'num_experts' is 65537"), std::string::npos) << error_of(moe);
  // each size within its limit, their product not: 2^17 x 2^20 x 4096 layers x 2^16 experts
  moe = minimal("qwen2_moe");
  moe["hidden_size"] = kMaxHiddenSize;
  moe["num_attention_heads"] = 1024;
  moe["num_hidden_layers"] = kMaxLayers;
  moe["num_experts"] = kMaxExperts;
  moe["moe_intermediate_size"] = kMaxIntermediateSize;
  const std::string msg = error_of(moe);
  EXPECT_NE(msg.find("parameters, above finmoe's limit of 281474976710656"), std::string::npos)
      << msg;
  // at the limits a real-sized model still loads: Llama-3.1-405B's shape
  json big = minimal();
  big["vocab_size"] = 128256;
  big["hidden_size"] = 16384;
  big["intermediate_size"] = 53248;
  big["num_hidden_layers"] = 126;
  big["num_attention_heads"] = 128;
  big["num_key_value_heads"] = 8;
  const ModelConfig c = ModelConfig::from_json(big);
  EXPECT_NEAR(double(c.param_count()), 405.8e9, 1e9);
}

// Found by the file fuzzing (long mode): rope_theta 1e308 threw in torch's
// float32 RoPE ("internal error"), 1e-308 gave NaN logits.
TEST(ModelConfig, FloatsThatEnterFloat32MathAreBounded) {
  const std::vector<std::pair<std::function<void(json&)>, std::string>> cases = {
      {[](json& j) { j["rope_theta"] = 1e308; },
       "field 'rope_theta' must be in [1, 3.4e38], got 1e+308"},
      {[](json& j) { j["rope_theta"] = 1e-308; }, "field 'rope_theta' must be in [1, 3.4e38]"},
      {[](json& j) { j["rms_norm_eps"] = 1e308; }, "field 'rms_norm_eps' must be in (0, 1]"},
      {[](json& j) {
         j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 1e-300}};
       },
       "field 'rope_scaling.factor' must be in [1, 3.4e38]"},
      {[](json& j) {
         j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}, {"beta_fast", 0}};
       },
       "field 'rope_scaling.beta_fast' must be in [1.2e-38, 3.4e38], got 0"},
      {[](json& j) {
         j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}, {"mscale_all_dim", -1.0}};
       },
       "field 'rope_scaling.mscale_all_dim' must be in [0, 3.4e38]"},
      {[](json& j) {
         j["rope_scaling"] = {{"rope_type", "llama3"},
                              {"factor", 8.0},
                              {"low_freq_factor", 1e300},
                              {"high_freq_factor", 4.0},
                              {"original_max_position_embeddings", 8192}};
       },
       "field 'rope_scaling.low_freq_factor' must be in [1.2e-38, 3.4e38]"},
  };
  for (const auto& [edit, want] : cases) {
    json j = minimal();
    edit(j);
    EXPECT_NE(error_of(j).find(want), std::string::npos) << error_of(j);
  }
}

TEST(ModelConfig, TokenIdsMustFit32Bits) {
  for (const char* field : {"bos_token_id", "eos_token_id", "pad_token_id"}) {
    json j = minimal();
    j[field] = int64_t(1) << 32;
    EXPECT_NE(error_of(j).find(std::string("field '") + field + "' is 4294967296, not a token id"),
              std::string::npos)
        << error_of(j);
  }
  json gen = {{"eos_token_id", {2, int64_t(1) << 33}}, {"max_new_tokens", int64_t(1) << 40}};
  try {
    GenerationConfig::from_json(gen, "generation_config.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(
        std::string(e.what()).find("generation_config.json: field 'max_new_tokens' must be in"),
        std::string::npos)
        << e.what();
  }
}

TEST(JsonFile, AtomicWriteReplacesAndLeavesNoTempFile) {
  ScratchDir dir;
  write_file_atomic(dir / "f.txt", "one");
  write_file_atomic(dir / "f.txt", "two");
  EXPECT_EQ(test::read_bytes(dir / "f.txt"), "two");
  EXPECT_EQ(dir.list(), std::vector<std::string>{"f.txt"});
  std::filesystem::create_directories(dir / "d");
  EXPECT_THROW(write_file_atomic(dir / "d", "x"), Error);  // rename onto a directory fails
  EXPECT_EQ(dir.list(), (std::vector<std::string>{"d", "f.txt"}));
}

TEST(GenerationConfig, ParsesQwenInstructFile) {
  GenerationConfig g = GenerationConfig::from_json(
      read_json_file(config_path("qwen2.5-0.5b-instruct-generation_config.json")), "g.json");
  EXPECT_EQ(g.bos_token_id, 151643);
  EXPECT_EQ(g.pad_token_id, 151643);
  EXPECT_EQ(g.eos_token_id, (std::vector<int64_t>{151645, 151643}));
  EXPECT_TRUE(g.do_sample);
  EXPECT_EQ(g.temperature, 0.7);
  EXPECT_EQ(g.top_k, 20);
  EXPECT_EQ(g.top_p, 0.8);
  EXPECT_EQ(g.repetition_penalty, 1.1);
  EXPECT_FALSE(g.max_new_tokens.has_value());
  GenerationConfig back = GenerationConfig::from_json(g.to_json(), "back");
  EXPECT_EQ(back.to_json(), g.to_json());
}

TEST(GenerationConfig, DefaultsAndFallbackToTheModelConfig) {
  GenerationConfig g = GenerationConfig::from_json(json::object(), "g.json");
  EXPECT_FALSE(g.do_sample);
  EXPECT_EQ(g.top_k, 0);
  EXPECT_EQ(GenerationConfig::from_json({{"do_sample", true}}, "g.json").top_k, 50);

  ScratchDir dir;
  ModelConfig m = parse_file("llama-3.1-8b.json");
  GenerationConfig absent = GenerationConfig::load(dir.str(), m);
  EXPECT_EQ(absent.bos_token_id, 128000);
  EXPECT_EQ(absent.eos_token_id, std::vector<int64_t>{128001});
  write_json_file(dir / "generation_config.json", {{"eos_token_id", {128001, 128009}}});
  GenerationConfig file = GenerationConfig::load(dir.str(), m);
  EXPECT_EQ(file.eos_token_id, (std::vector<int64_t>{128001, 128009}));
  EXPECT_EQ(file.bos_token_id, 128000);

  try {
    GenerationConfig::from_json({{"top_p", "high"}}, "g.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("g.json: field 'top_p' must be a number, got string"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(GenerationConfig::from_json({{"top_k", -1}}, "g.json"), Error);
}

}  // namespace
}  // namespace finmoe
