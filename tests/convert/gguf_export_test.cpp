// GGUF export (docs/formats/gguf.md) of tiny random models with a small
// byte-level BPE tokenizer made here: the file read back by GgufFile (header,
// metadata, tensor infos, alignment), tensors against the safetensors source
// (f16 rounding, llama's q/k row order computed index by index, expert
// stacking, the Q8_0 error bound), and bad input. llama.cpp itself runs the
// files in tests/ref/check_gguf_live.py.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "../expect_error.h"
#include "../model/test_util.h"
#include "finmoe/convert.h"
#include "finmoe/error.h"
#include "finmoe/gguf.h"
#include "finmoe/model.h"

namespace fs = std::filesystem;

namespace finmoe {
namespace {

using test::TempDir;

const char* kQwen2Regex =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const char* kTemplate = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}";

std::string utf8(uint32_t cp) {
  std::string s;
  if (cp < 0x80) s += char(cp);
  else if (cp < 0x800) { s += char(0xC0 | (cp >> 6)); s += char(0x80 | (cp & 0x3F)); }
  else { s += char(0xE0 | (cp >> 12)); s += char(0x80 | ((cp >> 6) & 0x3F)); s += char(0x80 | (cp & 0x3F)); }
  return s;
}

// GPT-2's byte -> printable character map (printable bytes map to themselves).
std::vector<std::string> byte_chars() {
  std::vector<std::string> out(256);
  uint32_t n = 0;
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    out[b] = utf8(printable ? b : 256 + n++);
  }
  return out;
}

// A byte-level BPE tokenizer: ids 0..255 bytes, 256..259 merges, 290..292
// special tokens, 260..289 and 293..299 unused. Writes tokenizer(_config).json.
void write_tokenizer(const std::string& dir) {
  nlohmann::json vocab = nlohmann::json::object();
  const auto bc = byte_chars();
  for (int i = 0; i < 256; ++i) vocab[bc[size_t(i)]] = i;
  const std::vector<std::pair<std::string, std::string>> merges = {{"h", "e"}, {"l", "l"}, {"he", "ll"}, {"Ġ", "t"}};
  nlohmann::json jm = nlohmann::json::array();
  int id = 256;
  for (const auto& [a, b] : merges) {
    vocab[a + b] = id++;
    jm.push_back(a + " " + b);
  }
  nlohmann::json added = nlohmann::json::array();
  int sid = 290;
  for (const char* s : {"<|endoftext|>", "<|im_start|>", "<|im_end|>"})
    added.push_back({{"id", sid++}, {"content", s}, {"special", true}, {"single_word", false},
                     {"lstrip", false}, {"rstrip", false}, {"normalized", false}});
  nlohmann::json tok = {
      {"version", "1.0"},
      {"added_tokens", added},
      {"normalizer", {{"type", "NFC"}}},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"}, {"pattern", {{"Regex", kQwen2Regex}}}, {"behavior", "Isolated"}, {"invert", false}},
          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}}}}}},
      {"post_processor", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}}},
      {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}}},
      {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", ""},
                 {"end_of_word_suffix", ""}, {"fuse_unk", false}, {"byte_fallback", false},
                 {"ignore_merges", false}, {"vocab", vocab}, {"merges", jm}}}};
  std::ofstream(dir + "/tokenizer.json") << tok.dump();
  nlohmann::json cfg = {{"eos_token", "<|im_end|>"}, {"pad_token", "<|endoftext|>"}, {"bos_token", nullptr},
                        {"add_bos_token", false}, {"chat_template", kTemplate}};
  std::ofstream(dir + "/tokenizer_config.json") << cfg.dump();
}

// A random float32 model of tiny_config(type), widened so rows hold whole
// Q8_0 blocks (hidden 64, head_dim 16), every MoE layer routed.
ModelConfig make_model(const std::string& type, const std::string& dir) {
  nlohmann::json j = test::tiny_config(type).to_json();
  j.update({{"hidden_size", 64}, {"num_attention_heads", 4}, {"num_key_value_heads", 2}, {"intermediate_size", 96}});
  j.erase("head_dim");
  if (type == "qwen2_moe") {
    j.erase("mlp_only_layers");
    j.update({{"moe_intermediate_size", 32}, {"shared_expert_intermediate_size", 64}});
  }
  const ModelConfig c = ModelConfig::from_json(j, "test");
  Transformer m(c);
  init_random(m, 7);
  save_model(m, dir);
  write_tokenizer(dir);
  return c;
}

GgufExportOptions opts(const std::string& type) {
  GgufExportOptions o;
  o.type = type;
  o.progress = false;
  return o;
}

int64_t u(const GgufFile& g, const std::string& key) {
  const auto it = g.metadata.find(key);
  EXPECT_NE(it, g.metadata.end()) << key;
  return it == g.metadata.end() ? -1 : std::get<int64_t>(it->second.scalar);
}
std::string s(const GgufFile& g, const std::string& key) {
  const auto it = g.metadata.find(key);
  EXPECT_NE(it, g.metadata.end()) << key;
  return it == g.metadata.end() ? "" : std::get<std::string>(it->second.scalar);
}

torch::Tensor source(const std::string& dir, const std::string& name) {
  return test::read_tensor(dir + "/model.safetensors", name).to(torch::kFloat32).contiguous();
}

// Every tensor info: aligned, in order, non-overlapping, inside the file.
void check_layout(const GgufFile& g) {
  EXPECT_EQ(g.alignment, 32u);
  EXPECT_EQ(g.data_offset % 32, 0u);
  uint64_t end = 0;
  for (const auto& t : g.tensors) {
    EXPECT_EQ(t.offset % 32, 0u) << t.name;
    EXPECT_GE(t.offset, end) << t.name;
    end = t.offset + t.nbytes();
  }
  EXPECT_LE(g.data_offset + end, g.file_size);
  EXPECT_GT(g.data_offset + end + 32, g.file_size);  // no trailing junk beyond padding
}

TEST(GgufExport, LlamaF16HeaderTokenizerAndRopeRowOrder) {
  TempDir d;
  const std::string dir = (d.path / "m").string(), out = (d.path / "m.gguf").string();
  const ModelConfig c = make_model("llama", dir);
  const GgufExportReport r = export_gguf(dir, out, opts("f16"));
  EXPECT_EQ(r.arch, "llama");
  const GgufFile g = GgufFile::read(out);
  EXPECT_EQ(g.version, 3u);
  check_layout(g);
  EXPECT_EQ(s(g, "general.architecture"), "llama");
  EXPECT_EQ(u(g, "general.file_type"), 1);
  EXPECT_EQ(u(g, "llama.block_count"), 2);
  EXPECT_EQ(u(g, "llama.embedding_length"), 64);
  EXPECT_EQ(u(g, "llama.attention.head_count"), 4);
  EXPECT_EQ(u(g, "llama.attention.head_count_kv"), 2);
  EXPECT_EQ(u(g, "llama.rope.dimension_count"), 16);
  EXPECT_EQ(u(g, "llama.feed_forward_length"), 96);
  EXPECT_EQ(g.metadata.at("llama.rope.freq_base").type, 6u);  // f32
  EXPECT_EQ(s(g, "tokenizer.ggml.model"), "gpt2");
  EXPECT_EQ(s(g, "tokenizer.ggml.pre"), "qwen2");
  EXPECT_EQ(s(g, "tokenizer.chat_template"), kTemplate);
  EXPECT_EQ(u(g, "tokenizer.ggml.eos_token_id"), 292);
  EXPECT_EQ(u(g, "tokenizer.ggml.padding_token_id"), 290);
  EXPECT_FALSE(std::get<bool>(g.metadata.at("tokenizer.ggml.add_bos_token").scalar));
  const auto& tokens = g.metadata.at("tokenizer.ggml.tokens").strings;
  const auto& types = g.metadata.at("tokenizer.ggml.token_type").numbers;
  ASSERT_EQ(tokens.size(), 300u);
  ASSERT_EQ(types.size(), 300u);
  EXPECT_EQ(tokens[257], "ll");
  EXPECT_EQ(tokens[291], "<|im_start|>");
  EXPECT_EQ(types[0], 1);    // normal
  EXPECT_EQ(types[291], 3);  // control
  EXPECT_EQ(types[295], 5);  // unused padding
  EXPECT_EQ(tokens[295], "[PAD295]");
  EXPECT_EQ(g.metadata.at("tokenizer.ggml.merges").strings,
            (std::vector<std::string>{"h e", "l l", "he ll", "Ġ t"}));

  // 1 + 2 x 9 + output_norm + output (untied llama)
  EXPECT_EQ(g.tensors.size(), 21u);
  const GgufTensorInfo* q = g.find("blk.1.attn_q.weight");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->ne, (std::vector<uint64_t>{64, 64}));
  EXPECT_EQ(q->type, GgufType::F16);
  EXPECT_EQ(g.find("blk.0.attn_norm.weight")->type, GgufType::F32);
  EXPECT_EQ(g.find("token_embd.weight")->ne, (std::vector<uint64_t>{64, 300}));
  ASSERT_NE(g.find("output.weight"), nullptr);

  // q/k: GGUF row h*hd + 2i + j is HF row h*hd + j*hd/2 + i (rotate-half -> pairs)
  for (const auto& [name, hf, heads] : {std::tuple{"blk.1.attn_q.weight", "model.layers.1.self_attn.q_proj.weight", 4},
                                        std::tuple{"blk.1.attn_k.weight", "model.layers.1.self_attn.k_proj.weight", 2}}) {
    const torch::Tensor w = source(dir, hf).to(torch::kFloat16).to(torch::kFloat32);  // [H*hd, D]
    const auto* info = g.find(name);
    const std::vector<float> got = g.load(out, *info);
    const int64_t hd = 16, D = 64;
    ASSERT_EQ(int64_t(got.size()), heads * hd * D);
    const float* src = w.data_ptr<float>();
    int64_t mismatches = 0;
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < hd / 2; ++i)
        for (int64_t jj = 0; jj < 2; ++jj)
          for (int64_t k = 0; k < D; ++k)
            mismatches += got[size_t((h * hd + 2 * i + jj) * D + k)] != src[(h * hd + jj * hd / 2 + i) * D + k];
    EXPECT_EQ(mismatches, 0) << name;
  }
  // v is not reordered; f16 rounding only
  const torch::Tensor v = source(dir, "model.layers.0.self_attn.v_proj.weight");
  const std::vector<float> gv = g.load(out, *g.find("blk.0.attn_v.weight"));
  const torch::Tensor gvt = torch::from_blob(const_cast<float*>(gv.data()), v.sizes(), torch::kFloat32);
  EXPECT_TRUE(torch::equal(gvt, v.to(torch::kFloat16).to(torch::kFloat32)));
  (void)c;
}

TEST(GgufExport, Qwen2TiedBf16KeepsRotateHalfAndDropsOutput) {
  TempDir d;
  const std::string dir = (d.path / "m").string(), out = (d.path / "m.gguf").string();
  make_model("qwen2", dir);
  export_gguf(dir, out, opts("bf16"));
  const GgufFile g = GgufFile::read(out);
  check_layout(g);
  EXPECT_EQ(s(g, "general.architecture"), "qwen2");
  EXPECT_EQ(u(g, "general.file_type"), 32);
  EXPECT_EQ(g.find("output.weight"), nullptr);  // tied: llama.cpp reuses token_embd
  for (const std::string n : {"q", "k", "v"}) {
    const auto* t = g.find("blk.0.attn_" + n + ".weight");
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->type, GgufType::BF16);
    const torch::Tensor w = source(dir, "model.layers.0.self_attn." + n + "_proj.weight");
    const std::vector<float> got = g.load(out, *t);
    EXPECT_TRUE(torch::equal(torch::from_blob(const_cast<float*>(got.data()), w.sizes(), torch::kFloat32),
                             w.to(torch::kBFloat16).to(torch::kFloat32)))
        << n;
  }
}

TEST(GgufExport, Q8_0BlocksWithinHalfAScale) {
  TempDir d;
  const std::string dir = (d.path / "m").string(), out = (d.path / "m.gguf").string();
  make_model("mistral", dir);
  export_gguf(dir, out, opts("q8_0"));
  const GgufFile g = GgufFile::read(out);
  check_layout(g);
  EXPECT_EQ(u(g, "general.file_type"), 7);
  const auto* t = g.find("blk.0.ffn_down.weight");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->type, GgufType::Q8_0);
  EXPECT_EQ(t->nbytes(), 64u * 96 / 32 * 34);
  const torch::Tensor w = source(dir, "model.layers.0.mlp.down_proj.weight");  // [64, 96]
  const std::vector<float> got = g.load(out, *t);
  const float* src = w.data_ptr<float>();
  double worst = 0;
  for (size_t b = 0; b < got.size() / 32; ++b) {
    float amax = 0;
    for (size_t i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(src[b * 32 + i]));
    // half a step of d = amax/127, plus the f16 rounding of d (2^-11 relative) over |q| <= 127
    const double bound = amax / 254.0 + amax * std::ldexp(1.0, -11) + 1e-12;
    for (size_t i = 0; i < 32; ++i) {
      const double e = std::fabs(double(got[b * 32 + i]) - double(src[b * 32 + i]));
      EXPECT_LE(e, bound) << "block " << b;
      worst = std::max(worst, e / amax);
    }
  }
  EXPECT_GT(worst, 0.0);  // it is quantized, not copied
  EXPECT_EQ(g.find("blk.0.ffn_norm.weight")->type, GgufType::F32);
}

TEST(GgufExport, MoeExpertsStackedRoutersF32) {
  for (const std::string type : {"mixtral", "qwen2_moe"}) {
    SCOPED_TRACE(type);
    TempDir d;
    const std::string dir = (d.path / "m").string(), out = (d.path / "m.gguf").string();
    const ModelConfig c = make_model(type, dir);
    const GgufExportReport r = export_gguf(dir, out, opts("f16"));
    const GgufFile g = GgufFile::read(out);
    check_layout(g);
    const std::string a = type == "mixtral" ? "llama" : "qwen2moe";
    EXPECT_EQ(r.arch, a);
    EXPECT_EQ(u(g, a + ".expert_count"), c.num_experts);
    EXPECT_EQ(u(g, a + ".expert_used_count"), c.num_experts_per_tok);
    const uint64_t E = uint64_t(c.num_experts), F = uint64_t(c.moe_intermediate_size);
    const auto* down = g.find("blk.1.ffn_down_exps.weight");
    ASSERT_NE(down, nullptr);
    EXPECT_EQ(down->ne, (std::vector<uint64_t>{F, 64, E}));
    EXPECT_EQ(g.find("blk.1.ffn_gate_inp.weight")->type, GgufType::F32);
    const std::string hf = type == "mixtral" ? "model.layers.1.block_sparse_moe.experts." : "model.layers.1.mlp.experts.";
    const std::string name = type == "mixtral" ? ".w2.weight" : ".down_proj.weight";
    const std::vector<float> got = g.load(out, *down);
    for (uint64_t e = 0; e < E; ++e) {
      const torch::Tensor w = source(dir, hf + std::to_string(e) + name).to(torch::kFloat16).to(torch::kFloat32);
      const torch::Tensor ge = torch::from_blob(const_cast<float*>(got.data()) + e * 64 * F, w.sizes(), torch::kFloat32);
      EXPECT_TRUE(torch::equal(ge, w)) << "expert " << e;
    }
    if (type == "qwen2_moe") {
      EXPECT_EQ(u(g, a + ".expert_feed_forward_length"), 32);
      EXPECT_EQ(u(g, a + ".expert_shared_feed_forward_length"), 64);
      const auto* sg = g.find("blk.0.ffn_gate_inp_shexp.weight");
      ASSERT_NE(sg, nullptr);
      EXPECT_EQ(sg->ne, (std::vector<uint64_t>{64}));
      ASSERT_NE(g.find("blk.0.ffn_down_shexp.weight"), nullptr);
    }
  }
}

// deepseek2: MLA tensors and keys as llama.cpp reads them, the dense lead
// layer, the correction bias, and rotate-half rope rows (deepseek_v3 with
// rope_interleave false) moved to adjacent pairs in each head's rope tail.
TEST(GgufExport, DeepSeekMlaTensorsKeysAndRopeTail) {
  for (const bool interleaved : {true, false}) {
    SCOPED_TRACE(interleaved ? "interleaved" : "rotate-half");
    TempDir d;
    const std::string dir = (d.path / "m").string(), out = (d.path / "m.gguf").string();
    nlohmann::json j = test::tiny_config("deepseek_v3").to_json();
    j["rope_interleave"] = interleaved;
    j["n_group"] = 2;
    j["topk_group"] = 1;  // group-limited: llama.cpp ignores it, a warning says so
    const ModelConfig c = ModelConfig::from_json(j, "test");
    {
      Transformer m(c);
      init_random(m, 8);
      save_model(m, dir);
      write_tokenizer(dir);
    }
    const GgufExportReport r = export_gguf(dir, out, opts("f16"));
    ASSERT_EQ(r.warnings.size(), 1u);
    EXPECT_CONTAINS(r.warnings[0], "ignores group-limited routing");
    const GgufFile g = GgufFile::read(out);
    check_layout(g);
    EXPECT_EQ(r.arch, "deepseek2");
    EXPECT_EQ(u(g, "deepseek2.leading_dense_block_count"), c.first_k_dense_replace);
    EXPECT_EQ(u(g, "deepseek2.attention.kv_lora_rank"), c.kv_lora_rank);
    EXPECT_EQ(u(g, "deepseek2.attention.q_lora_rank"), c.q_lora_rank);
    EXPECT_EQ(u(g, "deepseek2.attention.key_length"), c.qk_nope_head_dim + c.qk_rope_head_dim);
    EXPECT_EQ(u(g, "deepseek2.attention.value_length"), c.v_head_dim);
    EXPECT_EQ(u(g, "deepseek2.rope.dimension_count"), c.qk_rope_head_dim);
    EXPECT_EQ(u(g, "deepseek2.expert_shared_count"), c.n_shared_experts);
    EXPECT_EQ(u(g, "deepseek2.expert_gating_func"), c.scoring_func == "sigmoid" ? 2 : 1);
    ASSERT_NE(g.find("blk.0.ffn_gate.weight"), nullptr);  // the dense lead layer
    ASSERT_NE(g.find("blk.1.exp_probs_b.bias"), nullptr);
    ASSERT_NE(g.find("blk.1.ffn_gate_shexp.weight"), nullptr);
    ASSERT_NE(g.find("output.weight"), nullptr);

    // q_b_proj rows: per head [nope | rope]; the rope tail maps i -> 2i (first
    // half) and rope/2 + i -> 2i + 1 when the source is rotate-half
    const auto* qb = g.find("blk.0.attn_q_b.weight");
    ASSERT_NE(qb, nullptr);
    const torch::Tensor src = source(dir, "model.layers.0.self_attn.q_b_proj.weight").to(torch::kFloat16).to(torch::kFloat32);
    const std::vector<float> got = g.load(out, *qb);
    const int64_t H = c.num_attention_heads, nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim;
    const int64_t qk = nope + rope, cols = src.size(1);
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < qk; ++i) {
        int64_t from = i;
        if (!interleaved && i >= nope) {
          const int64_t t = i - nope;  // position in the pair layout
          from = nope + (t % 2 == 0 ? t / 2 : rope / 2 + t / 2);
        }
        const torch::Tensor row = torch::from_blob(const_cast<float*>(got.data()) + (h * qk + i) * cols, {cols},
                                                   torch::kFloat32);
        EXPECT_TRUE(torch::equal(row, src[h * qk + from])) << "head " << h << " row " << i;
      }
  }
}

TEST(GgufExport, BadInputNamesItAndWritesNothing) {
  TempDir d;
  const std::string dir = (d.path / "m").string(), out = (d.path / "m.gguf").string();
  make_model("llama", dir);
  EXPECT_CONTAINS(test::message_of([&] { export_gguf(dir, out, opts("q4_0")); }), "--type 'q4_0'");
  EXPECT_FALSE(fs::exists(out));
  // a tokenizer llama.cpp cannot name without --pre
  nlohmann::json tok = nlohmann::json::parse(std::ifstream(dir + "/tokenizer.json"));
  tok["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\s+";
  std::ofstream(dir + "/tokenizer.json") << tok.dump();
  EXPECT_CONTAINS(test::message_of([&] { export_gguf(dir, out, opts("f16")); }), "--pre");
  EXPECT_FALSE(fs::exists(out));
  GgufExportOptions o = opts("f16");
  o.pre = "qwen2";
  export_gguf(dir, out, o);
  EXPECT_EQ(s(GgufFile::read(out), "tokenizer.ggml.pre"), "qwen2");

  TempDir d2;
  const std::string dir2 = (d2.path / "f").string();
  {
    Transformer m(test::tiny_config("finer_moe"));
    init_random(m, 1);
    save_model(m, dir2);
    write_tokenizer(dir2);
  }
  EXPECT_CONTAINS(test::message_of([&] { export_gguf(dir2, (d2.path / "f.gguf").string(), opts("f16")); }), "model_type 'finer_moe' is not supported");
  EXPECT_FALSE(fs::exists(d2.path / "f.gguf"));
}

// The finmoe binary built beside this test.
std::string cli_path() { return (fs::read_symlink("/proc/self/exe").parent_path() / "finmoe").string(); }

int run(const std::string& cmd) {
  const int rc = std::system((cmd + " >/dev/null 2>&1").c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

TEST(GgufExportCli, WritesAFileBadInputExitsTwo) {
  TempDir d;
  const std::string dir = (d.path / "m").string(), out = (d.path / "m.gguf").string();
  make_model("qwen2", dir);
  const std::string finmoe = cli_path();
  EXPECT_EQ(run(finmoe + " export gguf " + dir + " " + out + " --type q8_0 --json"), 0);
  EXPECT_EQ(s(GgufFile::read(out), "general.architecture"), "qwen2");
  EXPECT_EQ(run(finmoe + " export gguf " + dir + " " + out + ".2 --type q4_k"), 2);
  EXPECT_EQ(run(finmoe + " export gguf " + dir + "/absent " + out + ".2"), 2);
  EXPECT_FALSE(fs::exists(out + ".2"));
}

// Live (labelled; FINMOE_LIVE_GGUF=1, FINMOE_GGUF_PYTHON a Python with PyPI
// gguf + safetensors + numpy, FINMOE_LLAMA_CPP_BIN the directory of
// llama-server): tests/ref/check_gguf_live.py reads finmoe's files with
// gguf's GGUFReader and compares llama.cpp's next-token top-k with finmoe's.
TEST(GgufLive, GgufReaderAndLlamaCppAgreeWithFinmoe) {
  const char* live = std::getenv("FINMOE_LIVE_GGUF");
  const char* py = std::getenv("FINMOE_GGUF_PYTHON");
  const char* bin = std::getenv("FINMOE_LLAMA_CPP_BIN");
  if (!live || std::string(live) != "1" || !py || !bin)
    GTEST_SKIP() << "set FINMOE_LIVE_GGUF=1, FINMOE_GGUF_PYTHON (a Python with gguf) and FINMOE_LLAMA_CPP_BIN";
  TempDir tmp;
  const std::string cmd = std::string(py) + " " + FINMOE_SOURCE_DIR + "/tests/ref/check_gguf_live.py " +
                          cli_path() + " " + bin + " " + FINMOE_SOURCE_DIR + "/tests/data/tokenizer " + tmp.str();
  const int rc = WEXITSTATUS(std::system(cmd.c_str()));
  if (rc == 77) GTEST_SKIP() << "gguf / numpy missing in FINMOE_GGUF_PYTHON or no llama-server in FINMOE_LLAMA_CPP_BIN";
  EXPECT_EQ(rc, 0) << cmd;
}

}  // namespace
}  // namespace finmoe
