// finmoe merge with a tokenizer source (union, base, a model, mergekit's
// `tokenizer:` block) and chat_template: against mergekit itself
// (tests/ref/make_mergekit_tokenizer_reference.py made tests/data/merge/tokenizer/
// on three tiny llama models whose tokenizers add different tokens) and
// invariants of the row mapping.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>

#include <sys/wait.h>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "../expect_error.h"
#include "../model/test_util.h"
#include "finmoe/chat_template.h"
#include "finmoe/config.h"
#include "finmoe/merge.h"
#include "finmoe/model.h"
#include "finmoe/safetensors.h"
#include "finmoe/tokenizer.h"

namespace finmoe {
namespace {

namespace fs = std::filesystem;
using test::message_of;
using test::TempDir;

std::string data(const std::string& rel) {
  return std::string(FINMOE_TEST_DATA_DIR) + "/merge/tokenizer/" + rel;
}

// Merges DIR/RECIPE.yaml (DIR: the reference directory) into TMP/out.
std::string merge(const std::string& recipe, const TempDir& tmp, const std::string& dir = "") {
  const std::string out = tmp.str() + "/out";
  MergeOptions o;
  o.progress = false;
  merge_models(load_merge_recipe((dir.empty() ? data("") : dir + "/") + recipe + ".yaml"), out, o);
  return out;
}

torch::Tensor tensor(const CheckpointReader& r, const std::string& name) {
  const TensorView& v = r.get(name);
  EXPECT_EQ(v.dtype, DType::F32) << name;
  return torch::from_blob(v.data, v.shape, torch::kFloat32).clone();
}

// id -> token string and token string -> id of a tokenizer.json (vocab and added tokens)
struct Vocab {
  std::map<int64_t, std::string> token;
  std::map<std::string, int64_t> id;
  std::map<std::string, nlohmann::json> added;  // content -> its entry without the id
};

Vocab vocab_of(const std::string& dir) {
  Vocab v;
  const nlohmann::json j = read_json_file(dir + "/tokenizer.json");
  for (const auto& [tok, id] : j["model"]["vocab"].items()) {
    v.token[id.get<int64_t>()] = tok;
    v.id[tok] = id.get<int64_t>();
  }
  for (const auto& t : j["added_tokens"]) {
    const std::string c = t["content"].get<std::string>();
    v.token[t["id"].get<int64_t>()] = c;
    v.id[c] = t["id"].get<int64_t>();
    nlohmann::json e = t;
    e.erase("id");
    v.added[c] = e;
  }
  return v;
}

// finmoe's merge of DIR/RECIPE.yaml against mergekit's output DIR/expected/RECIPE:
// mergekit orders the added tokens of models other than the base by a Python
// set's iteration order, so rows and tokenizations are compared by token string.
void expect_equals_mergekit(const std::string& dir, const std::string& recipe) {
  SCOPED_TRACE(recipe);
  TempDir tmp;
  const std::string out = merge(recipe, tmp, dir);
  const std::string want_dir = dir + "/expected/" + recipe;

  const Vocab got_v = vocab_of(out), want_v = vocab_of(want_dir);
  ASSERT_EQ(got_v.token.size(), want_v.token.size());
  for (const auto& [tok, id] : want_v.id) ASSERT_TRUE(got_v.id.count(tok)) << tok;
  EXPECT_EQ(got_v.added, want_v.added);  // the same added tokens with the same settings
  EXPECT_EQ(read_json_file(out + "/config.json")["vocab_size"],
            read_json_file(want_dir + "/config.json")["vocab_size"]);

  const CheckpointReader got = CheckpointReader::open(out);
  const CheckpointReader want = CheckpointReader::open(want_dir);
  ASSERT_EQ(got.names(), want.names());
  double worst = 0;
  for (const auto& name : want.names()) {
    torch::Tensor w = tensor(want, name), g = tensor(got, name);
    ASSERT_EQ(w.sizes(), g.sizes()) << name;
    if (name.find("embed_tokens") != std::string::npos || name.find("lm_head") != std::string::npos) {
      // row of token s in mergekit's output <- row of s in finmoe's
      std::vector<int64_t> perm(size_t(w.size(0)));
      for (int64_t i = 0; i < w.size(0); ++i)
        perm[size_t(i)] = want_v.token.count(i) ? got_v.id.at(want_v.token.at(i)) : i;  // padding rows
      g = g.index_select(0, torch::tensor(perm, torch::kInt64));
    }
    worst = std::max(worst, ((g - w).abs() / (1 + w.abs())).max().item<double>());
  }
  EXPECT_LT(worst, 2e-6);
  ::testing::Test::RecordProperty("max_rel_diff", std::to_string(worst));

  // the tokenizer of OUT tokenizes like mergekit's (transformers) union tokenizer
  const nlohmann::json tokens = read_json_file(want_dir + "/tokens.json");
  const Tokenizer tok = Tokenizer::from_dir(out);
  for (const auto& [text, ids] : tokens["texts"].items()) {
    std::vector<std::string> want_toks, got_toks;
    for (const auto& id : ids) want_toks.push_back(want_v.token.at(id.get<int64_t>()));
    for (int32_t id : tok.encode(text)) got_toks.push_back(got_v.token.at(id));
    EXPECT_EQ(got_toks, want_toks) << text;
  }
  if (!tokens["chat"].is_null()) {
    ChatRequest req;
    req.messages = nlohmann::ordered_json::parse(
        read_json_file(dir + "/MANIFEST.json")["conversation"].dump());
    req.add_generation_prompt = true;
    EXPECT_EQ(ChatTemplate::from_tokenizer(tok).render(req), tokens["chat"].get<std::string>());
  }
}

const std::vector<std::string> kRecipes = {"union_linear", "union_ties_tokens", "source_b"};

class MergeTokenizerReference : public ::testing::TestWithParam<std::string> {};

TEST_P(MergeTokenizerReference, RowsTokensAndTemplateEqualMergekits) {
  std::string dir = data("");
  dir.pop_back();
  expect_equals_mergekit(dir, GetParam());
}

// Live (FINMOE_LIVE_MERGEKIT=1, FINMOE_MERGEKIT_PYTHON a Python with mergekit):
// the reference script run now, with another hash seed (so mergekit may order
// the union otherwise), into a temporary directory, and the same comparison.
TEST(MergeTokenizerLive, ALiveMergekitRunGivesTheSameMerges) {
  const char* live = std::getenv("FINMOE_LIVE_MERGEKIT");
  const char* py = std::getenv("FINMOE_MERGEKIT_PYTHON");
  if (!live || std::string(live) != "1" || !py)
    GTEST_SKIP() << "set FINMOE_LIVE_MERGEKIT=1 and FINMOE_MERGEKIT_PYTHON (a Python with mergekit)";
  TempDir tmp;
  const std::string cmd = "FINMOE_REF_HASHSEED=1 " + std::string(py) + " " + FINMOE_SOURCE_DIR +
                          "/tests/ref/make_mergekit_tokenizer_reference.py " + tmp.str() + " >/dev/null 2>&1";
  ASSERT_EQ(WEXITSTATUS(std::system(cmd.c_str())), 0) << cmd;
  for (const std::string& r : kRecipes) expect_equals_mergekit(tmp.str(), r);
}

INSTANTIATE_TEST_SUITE_P(Recipes, MergeTokenizerReference,
                         ::testing::ValuesIn(kRecipes));

TEST(MergeTokenizerReference, BuiltinChatTemplatesRenderAsMergekits) {
  const nlohmann::json t = read_json_file(data("templates.json"));
  ASSERT_EQ(t.size(), 4u);
  for (const auto& [name, c] : t.items()) {
    TempDir tmp;
    // a recipe naming the template writes it into OUT's tokenizer_config.json
    const std::string recipe = tmp.str() + "/r.yaml";
    write_file_atomic(recipe, "merge_method: linear\nmodels:\n  - model: " + data("models/base") +
                                  "\n    parameters: {weight: 1}\ndtype: float32\nchat_template: " +
                                  name + "\n");
    MergeOptions o;
    o.progress = false;
    merge_models(load_merge_recipe(recipe), tmp.str() + "/out", o);
    const Tokenizer tok = Tokenizer::from_dir(tmp.str() + "/out");
    EXPECT_FALSE(fs::exists(tmp.str() + "/out/chat_template.jinja"));
    ChatRequest req;
    req.messages = nlohmann::ordered_json::parse(c["messages"].dump());
    req.add_generation_prompt = true;
    EXPECT_EQ(ChatTemplate::from_tokenizer(tok).render(req), c["text"].get<std::string>()) << name;
  }
}

// ---- invariants of the row mapping, computed independently ----------------------

TEST(MergeTokenizerUnion, BaseIdsFirstThenEachModelsNewTokensInRecipeOrder) {
  TempDir tmp;
  const Vocab v = vocab_of(merge("union_linear", tmp));
  const Vocab base = vocab_of(data("models/base"));
  for (const auto& [id, tok] : base.token) EXPECT_EQ(v.id.at(tok), id) << tok;
  const int64_t n = int64_t(base.token.size());
  // first the models' model.vocab tokens the base lacks (b's "▁revenue"), then
  // the added tokens: a's <|im_start|>, <|im_end|>, <ticker>, then b's new ones
  const std::vector<std::string> want = {"\xe2\x96\x81revenue", "<|im_start|>", "<|im_end|>",
                                         "<ticker>", "<eps>", "<|tool|>"};
  ASSERT_EQ(int64_t(v.token.size()), n + int64_t(want.size()));
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(v.token.at(n + int64_t(i)), want[i]);
}

TEST(MergeTokenizerUnion, EachRowIsTheMergeOfTheModelsRowsForItsToken) {
  TempDir tmp;
  const std::string out = merge("union_linear", tmp);  // weights base 0.2, a 0.5, b 0.3
  const Vocab v = vocab_of(out);
  EXPECT_EQ(load_model(out, {.dtype = torch::kFloat32}).config().vocab_size, int64_t(v.token.size()));
  std::map<std::string, Vocab> mv;
  std::map<std::string, CheckpointReader> mr;
  for (const char* m : {"base", "a", "b"}) {
    mv.emplace(m, vocab_of(data(std::string("models/") + m)));
    mr.emplace(m, CheckpointReader::open(data(std::string("models/") + m)));
  }
  const CheckpointReader got = CheckpointReader::open(out);
  for (const char* name : {"model.embed_tokens.weight", "lm_head.weight"}) {
    const torch::Tensor g = tensor(got, name);
    auto row = [&](const std::string& m, const std::string& tok) -> std::optional<torch::Tensor> {
      auto it = mv.at(m).id.find(tok);
      if (it == mv.at(m).id.end()) return std::nullopt;
      return tensor(mr.at(m), name)[it->second];
    };
    for (const auto& [tok, id] : v.id) {
      auto rb = row("base", tok), ra = row("a", tok), rbb = row("b", tok);
      std::vector<torch::Tensor> present;
      for (auto* r : {&rb, &ra, &rbb})
        if (*r) present.push_back(**r);
      ASSERT_FALSE(present.empty()) << tok;
      // a model lacking the token takes: the only model's row, else the base's, else the mean
      torch::Tensor fill = present.size() == 1 ? present[0]
                           : rb               ? *rb
                                              : torch::stack(present).mean(0);
      const torch::Tensor want = 0.2 * rb.value_or(fill) + 0.5 * ra.value_or(fill) + 0.3 * rbb.value_or(fill);
      EXPECT_LT((g[id] - want).abs().max().item<double>(), 1e-6) << name << " " << tok;
    }
  }
}

TEST(MergeTokenizerUnion, IdenticalVocabulariesGiveTheMergeWithoutATokenizerSource) {
  TempDir tmp;
  // a second name for model a: the same vocabulary, so the row maps are the identity
  const std::string a2 = tmp.str() + "/a2";
  fs::create_directory_symlink(data("models/a"), a2);
  auto run = [&](const std::string& extra, const std::string& name) {
    const std::string recipe = tmp.str() + "/" + name + ".yaml";
    write_file_atomic(recipe, "merge_method: linear\nmodels:\n  - model: " + data("models/a") +
                                  "\n    parameters: {weight: 0.3}\n  - model: " + a2 +
                                  "\n    parameters: {weight: 0.7}\ndtype: float32\n" + extra);
    MergeOptions o;
    o.progress = false;
    merge_models(load_merge_recipe(recipe), tmp.str() + "/" + name, o);
    return CheckpointReader::open(tmp.str() + "/" + name);
  };
  const CheckpointReader plain = run("", "plain"), uni = run("tokenizer_source: union\n", "union");
  for (const auto& n : plain.names())
    EXPECT_TRUE(torch::equal(tensor(plain, n), tensor(uni, n))) << n;
}

TEST(MergeTokenizerSource, BaseMapsRowsAndDropsPaddingAndTokensItLacks) {
  TempDir tmp;
  // copies of base and a with 4 padding rows (vocab_size + 4), as many checkpoints have
  auto padded = [&](const std::string& m) {
    const std::string dir = tmp.str() + "/" + m;
    fs::create_directories(dir);
    const CheckpointReader r = CheckpointReader::open(data("models/" + m));
    std::vector<torch::Tensor> keep;
    std::vector<TensorData> td;
    for (const auto& n : r.names()) {
      torch::Tensor t = tensor(r, n);
      if (n == "model.embed_tokens.weight" || n == "lm_head.weight")
        t = torch::cat({t, torch::full({4, t.size(1)}, 7.0f)});
      keep.push_back(t.contiguous());
      td.push_back({n, DType::F32, keep.back().sizes().vec(), keep.back().data_ptr(),
                    size_t(keep.back().numel()) * 4});
    }
    write_checkpoint(dir, td);
    nlohmann::json cfg = read_json_file(data("models/" + m + "/config.json"));
    cfg["vocab_size"] = cfg["vocab_size"].get<int64_t>() + 4;
    write_json_file(dir + "/config.json", cfg);
    for (const char* f : {"tokenizer.json", "tokenizer_config.json"})
      fs::copy_file(data("models/" + m + "/" + f), dir + "/" + f);
    return dir;
  };
  const std::string pb = padded("base"), pa = padded("a");
  const std::string recipe = tmp.str() + "/r.yaml";
  write_file_atomic(recipe, "merge_method: linear\nbase_model: " + pb + "\nmodels:\n  - model: " + pb +
                                "\n    parameters: {weight: 0.5}\n  - model: " + pa +
                                "\n    parameters: {weight: 0.5}\ndtype: float32\ntokenizer_source: base\n");
  MergeOptions o;
  o.progress = false;
  const std::string out = tmp.str() + "/out";
  merge_models(load_merge_recipe(recipe), out, o);
  // OUT has the base tokenizer's 660 tokens: a's own tokens and everyone's padding are gone
  const Vocab base = vocab_of(data("models/base")), a = vocab_of(data("models/a"));
  EXPECT_EQ(read_json_file(out + "/config.json")["vocab_size"], int64_t(base.token.size()));
  EXPECT_EQ(vocab_of(out).id, base.id);
  const CheckpointReader got = CheckpointReader::open(out), rb = CheckpointReader::open(pb),
                         ra = CheckpointReader::open(pa);
  for (const char* n : {"model.embed_tokens.weight", "lm_head.weight"}) {
    const torch::Tensor g = tensor(got, n), b = tensor(rb, n), x = tensor(ra, n);
    ASSERT_EQ(g.size(0), int64_t(base.token.size())) << n;
    for (const auto& [tok, id] : base.id)
      EXPECT_LT((g[id] - 0.5 * (b[id] + x[a.id.at(tok)])).abs().max().item<double>(), 1e-6) << tok;
  }
}

// ---- bad input -----------------------------------------------------------------

TEST(MergeTokenizerBadInput, ConflictingKeysBadTemplatesAndMissingTokenizersAreNamed) {
  const std::string models = "models:\n  - model: x\n    parameters: {weight: 1}\n";
  auto parse = [&](const std::string& extra) {
    return message_of([&] { parse_merge_recipe("merge_method: linear\n" + models + extra, "r.yaml"); });
  };
  EXPECT_CONTAINS(parse("tokenizer_source: union\ntokenizer: {source: base}\n"), "not both");
  EXPECT_CONTAINS(parse("tokenizer: {sauce: union}\n"), "tokenizer.sauce: unknown key");
  EXPECT_CONTAINS(parse("tokenizer: {pad_to_multiple_of: -8}\n"), "pad_to_multiple_of");
  EXPECT_CONTAINS(parse("tokenizer:\n  tokens:\n    \"<x>\": {source: {kind: copy}}\n"), "kind 'copy'");
  EXPECT_CONTAINS(parse("tokenizer:\n  tokens:\n    \"<x>\": {force: true}\n"), "needs a source");
  EXPECT_CONTAINS(parse("chat_template: chatmll\n"), "r.yaml:5: chat_template: 'chatmll' is neither");
  EXPECT_CONTAINS(parse("chat_template: exaone\n"), "exaone");
  EXPECT_EQ(parse("tokenizer: {}\nchat_template: auto\n"), "<no error>");

  // union needs the base's tokenizer.json; a token source must be an input
  TempDir tmp;
  const std::string out = tmp.str() + "/out";
  const std::string no_tok = tmp.str() + "/notok";
  fs::create_directories(no_tok);
  for (const char* f : {"config.json", "model.safetensors"})
    fs::copy_file(data(std::string("models/base/") + f), no_tok + "/" + f);
  MergeOptions o;
  o.progress = false;
  auto run = [&](const std::string& yaml) {
    return message_of([&] { merge_models(parse_merge_recipe(yaml, "r.yaml"), out, o); });
  };
  EXPECT_CONTAINS(run("merge_method: linear\nbase_model: " + no_tok + "\nmodels:\n  - model: " + no_tok +
                      "\n    parameters: {weight: 1}\n  - model: " + data("models/a") +
                      "\n    parameters: {weight: 1}\ntokenizer_source: union\n"),
                  no_tok + "/tokenizer.json");
  EXPECT_CONTAINS(run("merge_method: linear\nbase_model: " + data("models/base") + "\nmodels:\n  - model: " +
                      data("models/a") + "\n    parameters: {weight: 1}\ntokenizer:\n  tokens:\n    \"<z>\":\n"
                      "      source: " + data("models/b") + "\n"),
                  "is not an input");
  EXPECT_FALSE(fs::exists(out));
  EXPECT_EQ(std::distance(fs::directory_iterator(tmp.str()), fs::directory_iterator{}), 1);
}

int cli(const std::string& args) {
  const int rc = std::system((std::string(FINMOE_CLI_PATH) + " merge " + args + " 2>/dev/null >/dev/null").c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

TEST(MergeTokenizerCli, AUnionRecipeRunsABadChatTemplateExitsTwo) {
  TempDir tmp;
  EXPECT_EQ(cli(data("union_ties_tokens.yaml") + " " + tmp.str() + "/u"), 0);
  EXPECT_EQ(read_json_file(tmp.str() + "/u/config.json")["vocab_size"], 672);
  const std::string bad = tmp.str() + "/bad.yaml";
  write_file_atomic(bad, "merge_method: linear\nmodels:\n  - model: " + data("models/a") +
                             "\n    parameters: {weight: 1}\nchat_template: vicuna\n");
  EXPECT_EQ(cli(bad + " " + tmp.str() + "/bad"), 2);
  EXPECT_FALSE(fs::exists(tmp.str() + "/bad"));
}

}  // namespace
}  // namespace finmoe
