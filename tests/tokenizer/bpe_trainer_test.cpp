// The byte-level BPE trainer: hand-worked merges and tie-breaking, merges
// identical to HF tokenizers' BpeTrainer (committed reference and, with
// FINMOE_PYTHON, live on random text), exact round trips and ids identical to
// HF tokenizers for a trained tokenizer.json.
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>

#include <gtest/gtest.h>

#include "../expect_error.h"
#include "core/file_util.h"
#include "finmoe/tokenizer.h"
#include "finmoe/tokenizer_trainer.h"
#include "tokenizer/utf8.h"
#include "tokenizer_test_util.h"

namespace finmoe {
namespace {

namespace fs = std::filesystem;
using Merges = std::vector<std::pair<std::string, std::string>>;

BpeTrainerOptions options(int64_t vocab_size, int64_t min_frequency,
                          std::vector<std::string> specials = {}, int threads = 0) {
  BpeTrainerOptions o;
  o.vocab_size = vocab_size;
  o.min_frequency = min_frequency;
  o.special_tokens = std::move(specials);
  o.num_threads = threads;
  return o;
}

TokenizerFilesOptions files_options(const std::string& chat_template, bool nfc = false) {
  TokenizerFilesOptions o;
  o.chat_template = chat_template;
  o.nfc = nfc;
  return o;
}

// A fresh directory removed at the end of the test.
struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& name) {
    path = fs::temp_directory_path() / ("finmoe_bpe_" + name + "_" + std::to_string(::getpid()));
    remove_tree(path.string());
    fs::create_directories(path);
  }
  ~TempDir() { remove_tree(path.string()); }
  std::string operator/(const std::string& f) const { return (path / f).string(); }
};

Merges train_on(const std::vector<std::string>& texts, int64_t vocab_size, int64_t min_frequency,
                std::vector<std::string> specials = {}) {
  BpeTrainer t(options(vocab_size, min_frequency, std::move(specials)));
  for (const auto& s : texts) t.feed(s);
  return t.train().merges;
}

std::vector<std::string> merge_strings(const Merges& m) {
  std::vector<std::string> out;
  for (const auto& [l, r] : m) out.push_back(l + " " + r);
  return out;
}

std::vector<nlohmann::json> cases() { return test::read_jsonl(test::tok_data("cases.jsonl")); }

std::vector<std::string> case_texts(bool held_out) {
  std::vector<std::string> out;
  for (const auto& c : cases())
    if ((c["id"].get<int>() % 5 == 0) == held_out) out.push_back(c["text"].get<std::string>());
  return out;
}

// Text with the shapes tokenizers get wrong: whitespace runs, CRLF, tabs,
// non-breaking and ideographic spaces, Chinese, digits, emoji, punctuation.
std::string random_text(std::mt19937& rng) {
  static const std::vector<std::string> words = {
      "the", "Balance", "sheet", "NPV", "don't", "I'M", "we'll", "ledger", "café", "naïve",
      "e\xCC\x81", "$100", "1,000.00", "资产", "负债表", "现金流量", "\xEF\xBC\x8C", "\xE3\x80\x82"};
  static const std::vector<std::string> spaces = {" ", "  ", "   ", "\n", "\n\n", "\t", "\r\n",
                                                  " \n ", "\xC2\xA0", "\xE3\x80\x80", "    \n"};
  std::string out;
  int parts = 1 + int(rng() % 30);
  for (int p = 0; p < parts; ++p) {
    switch (rng() % 5) {
      case 0: out += words[rng() % words.size()]; break;
      case 1: out += spaces[rng() % spaces.size()]; break;
      case 2:
        for (int i = 0, n = 1 + int(rng() % 8); i < n; ++i) tok::utf8_append(out, 0x4E00 + rng() % 0x51A5);
        break;
      case 3: tok::utf8_append(out, 0x1F300 + rng() % 0x250); break;
      default:
        for (int i = 0, n = 1 + int(rng() % 10); i < n; ++i) out.push_back(char(32 + rng() % 95));
    }
  }
  return out;
}

// ---- the algorithm, by hand -----------------------------------------------------

TEST(BpeTrainer, MergesTheMostFrequentPairFirst) {
  // Words abc x2, bcd x2: (b,c) occurs 4 times; then (a,bc) and (bc,d) tie at
  // 2 and the pair with the smaller left id ('a' < the new "bc") goes first.
  Merges m = train_on({"abc", "abc", "bcd", "bcd"}, 1000, 2);
  EXPECT_EQ(merge_strings(m), (std::vector<std::string>{"b c", "a bc", "bc d"}));
}

TEST(BpeTrainer, TiesGoToTheSmallerPairInCodePointOrder) {
  // Every pair occurs once. Symbols are ordered by the code point of their
  // byte-level character: 'a' (U+0061) < 'b' < 'Ġ' (space, U+0120), although the
  // space byte 0x20 is below 'a'. So (a,b) < (a,c) < (Ġ,a).
  Merges m = train_on({" a", "ab", "ac"}, 1000, 1);
  EXPECT_EQ(merge_strings(m), (std::vector<std::string>{"a b", "a c", "Ġ a"}));
}

TEST(BpeTrainer, MinFrequencyAndVocabSizeStopTraining) {
  // (a,b) x3, (c,d) x2, (e,f) x1.
  std::vector<std::string> texts = {"ab", "ab", "ab", "cd", "cd", "ef"};
  EXPECT_EQ(merge_strings(train_on(texts, 1000, 2)), (std::vector<std::string>{"a b", "c d"}));
  EXPECT_EQ(merge_strings(train_on(texts, 1000, 3)), (std::vector<std::string>{"a b"}));
  EXPECT_EQ(train_on(texts, 1000, 0).size(), 3u);
  // vocab_size counts the 256 bytes and the special tokens.
  EXPECT_EQ(merge_strings(train_on(texts, 256 + 2 + 1, 0, {"<s>", "</s>"})),
            (std::vector<std::string>{"a b"}));
}

TEST(BpeTrainer, OverlappingPairsMergeLeftToRight) {
  // "aaaaa" x2: (a,a) merges left to right, non-overlapping, into aa aa a;
  // then (aa,aa) and (aa,a) tie at 2 and the smaller right id ('a') wins:
  // aa aaa; then (aa,aaa). (HF's BpeTrainer learns the same three merges.)
  Merges m = train_on({"aaaaa", "aaaaa"}, 1000, 2);
  EXPECT_EQ(merge_strings(m), (std::vector<std::string>{"a a", "aa a", "aa aaa"}));
}

TEST(BpeTrainer, SpecialTokensAreCutOutOfTheText) {
  // Without the cut, "<|x|>" would be split by the regex and its pieces merged.
  BpeTrainer t(options(1000, 2, {"<|x|>"}));
  for (int i = 0; i < 5; ++i) t.feed("ab<|x|>ab");
  BpeModel m = t.train();
  EXPECT_EQ(merge_strings(m.merges), (std::vector<std::string>{"a b"}));
  EXPECT_EQ(m.special_tokens, (std::vector<std::string>{"<|x|>"}));
  EXPECT_EQ(m.size(), 256 + 1 + 1);
}

TEST(BpeTrainer, BadOptionsAndInputAreErrors) {
  EXPECT_CONTAINS(test::message_of([] { BpeTrainer t(options(257, 2, {"<a>", "<b>"})); }),
                  "vocab_size 257");
  EXPECT_CONTAINS(test::message_of([] { BpeTrainer t(options(8192, 2, {"<a>", "<a>"})); }),
                  "given twice");
  BpeTrainer t(options(8192, 2));
  EXPECT_CONTAINS(test::message_of([&] { t.feed("ok \xFF"); }), "not valid UTF-8");
  EXPECT_CONTAINS(test::message_of([&] { t.feed_file("/nonexistent/corpus.txt"); }),
                  "/nonexistent/corpus.txt: cannot open");
  TempDir dir("bad");
  std::ofstream(dir / "bad.jsonl") << "{\"text\": \"fine\"}\n\n{\"txt\": 1}\n";
  EXPECT_CONTAINS(test::message_of([&] { t.feed_file(dir / "bad.jsonl"); }), "bad.jsonl:3: expected");
  std::ofstream(dir / "bad2.jsonl") << "{\"text\": \"fine\"}\n{not json\n";
  EXPECT_CONTAINS(test::message_of([&] { t.feed_file(dir / "bad2.jsonl"); }), "bad2.jsonl:2: invalid JSON");
  std::ofstream(dir / "bad.txt") << "line one\nline two \xC3\n";
  EXPECT_CONTAINS(test::message_of([&] { t.feed_file(dir / "bad.txt"); }), "bad.txt:2: not valid UTF-8");
}

// ---- files are read in blocks, with the words of the whole text ------------------

TEST(BpeTrainer, FeedFileLearnsWhatTheWholeTextTeaches) {
  // > 1 MiB (the block size) so the file is cut into blocks counted on 2 threads.
  std::mt19937 rng(7);
  std::string text;
  while (text.size() < (size_t(5) << 18)) text += random_text(rng) + (rng() % 3 ? "\n" : "\n\n");
  TempDir dir("blocks");
  std::ofstream(dir / "corpus.txt", std::ios::binary) << text;

  BpeTrainer whole(options(700, 2));
  whole.feed(text);
  BpeTrainer streamed(options(700, 2, {}, 2));
  int64_t last = 0;
  streamed.feed_file(dir / "corpus.txt", [&](int64_t n) { last = n; });
  EXPECT_EQ(last, int64_t(text.size()));
  EXPECT_EQ(streamed.num_words(), whole.num_words());
  EXPECT_EQ(streamed.train().merges, whole.train().merges);

  // JSONL: one text per record; messages contribute each content.
  std::ofstream(dir / "c.jsonl") << "{\"text\": \"abc abc\"}\n"
                                    "{\"messages\": [{\"role\": \"user\", \"content\": \"abd\"}, "
                                    "{\"role\": \"assistant\", \"content\": \"ab\"}]}\n";
  BpeTrainer a(options(300, 1)), b(options(300, 1));
  a.feed_file(dir / "c.jsonl");
  for (const char* s : {"abc abc", "abd", "ab"}) b.feed(s);
  EXPECT_EQ(a.train().merges, b.train().merges);
}

// ---- against HF tokenizers' BpeTrainer ----------------------------------------

// tests/ref/make_bpe_reference.py trained HF's BpeTrainer on cases.jsonl with
// the same pre-tokenizer and alphabet; the merges must agree one for one, ties
// included (the min_frequency 1 config is mostly ties between count-1 pairs).
TEST(BpeTrainer, MergesEqualHfBpeTrainerOnCommittedReference) {
  auto ref = nlohmann::json::parse(std::ifstream(test::tok_data("bpe_trainer/hf_reference.json")));
  auto rows = cases();
  for (const auto& cfg : ref["configs"]) {
    SCOPED_TRACE(cfg["name"].get<std::string>());
    std::vector<std::string> texts;
    for (const auto& r : rows) {
      const std::string t = r["text"].get<std::string>();
      bool chinese = false;
      for (size_t i = 0; i < t.size();) {
        char32_t cp = tok::utf8_next(t, i);
        chinese |= cp >= 0x4E00 && cp <= 0x9FFF;
      }
      if (cfg["cases"] == "train" ? r["id"].get<int>() % 5 != 0 : chinese) texts.push_back(t);
    }
    Merges m = train_on(texts, cfg["vocab_size"].get<int64_t>(), cfg["min_frequency"].get<int64_t>());
    auto want = cfg["merges"].get<std::vector<std::string>>();
    auto got = merge_strings(m);
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) ASSERT_EQ(got[i], want[i]) << "merge " << i;
  }
}

bool python_has_tokenizers(const char* python) {
  if (!python || !*python) return false;
  return std::system((std::string(python) + " -c 'import tokenizers' >/dev/null 2>&1").c_str()) == 0;
}

std::string run_python(const std::string& python, const std::string& script,
                       const std::vector<std::string>& args) {
  std::string cmd = python + " '" + script + "'";
  for (const auto& a : args) cmd += " '" + a + "'";
  return std::system(cmd.c_str()) == 0 ? "" : "failed: " + cmd;
}

// Live: HF's BpeTrainer on random text full of ties and odd whitespace.
TEST(BpeTrainer, MergesEqualHfBpeTrainerOnRandomText) {
  const char* python = std::getenv("FINMOE_PYTHON");
  if (!python_has_tokenizers(python)) GTEST_SKIP() << "FINMOE_PYTHON with `tokenizers` is not set";
  std::mt19937 rng(20240612);
  std::vector<std::string> texts;
  for (int i = 0; i < 400; ++i) texts.push_back(random_text(rng));
  TempDir dir("hf_train");
  std::ofstream(dir / "texts.json") << nlohmann::json(texts).dump();
  std::ofstream(dir / "train.py")
      << "import json, sys\n"
         "from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers\n"
         "texts = json.load(open(sys.argv[1], encoding='utf-8'))\n"
         "pat = json.load(open(sys.argv[2]))\n"
         "tok = Tokenizer(models.BPE())\n"
         "tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pat), 'isolated'),\n"
         "    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])\n"
         "tr = trainers.BpeTrainer(vocab_size=int(sys.argv[3]), min_frequency=int(sys.argv[4]),\n"
         "    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)\n"
         "tok.train_from_iterator(texts, tr)\n"
         "m = json.loads(tok.to_str())['model']['merges']\n"
         "json.dump([x if isinstance(x, str) else ' '.join(x) for x in m], open(sys.argv[5], 'w'))\n";
  // The pattern finmoe writes into tokenizer.json.
  BpeTrainer probe(options(300, 2, special_tokens_for(files_options("none"))));
  probe.feed("ab");
  write_bpe_tokenizer(dir / "probe", probe.train(), files_options("none"));
  auto tj = nlohmann::json::parse(std::ifstream(dir / "probe/tokenizer.json"));
  std::ofstream(dir / "pattern.json") << tj["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"].dump();

  for (auto [vocab, freq] : {std::pair<int, int>{900, 1}, {1500, 2}}) {
    SCOPED_TRACE("vocab " + std::to_string(vocab) + " min_frequency " + std::to_string(freq));
    ASSERT_EQ(run_python(python, dir / "train.py",
                         {dir / "texts.json", dir / "pattern.json", std::to_string(vocab),
                          std::to_string(freq), dir / "merges.json"}),
              "");
    auto want = nlohmann::json::parse(std::ifstream(dir / "merges.json")).get<std::vector<std::string>>();
    auto got = merge_strings(train_on(texts, vocab, freq));
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) ASSERT_EQ(got[i], want[i]) << "merge " << i;
  }
}

// ---- the written tokenizer ---------------------------------------------------------

struct Trained {
  TempDir dir{"trained"};
  Trained(const std::string& chat_template, bool nfc = false) {
    TokenizerFilesOptions fo = files_options(chat_template, nfc);
    BpeTrainer t(options(1000, 2, special_tokens_for(fo)));
    for (const auto& s : case_texts(false)) t.feed(s);
    write_bpe_tokenizer(dir.path.string(), t.train(), fo);
  }
};

TEST(TrainedTokenizer, RoundTripsHeldOutText) {
  Trained tr("chatml");
  Tokenizer tok = Tokenizer::from_dir(tr.dir.path.string());
  EXPECT_EQ(tok.vocab_size(), 1000);
  std::vector<std::string> texts = case_texts(true);
  std::mt19937 rng(11);
  for (int i = 0; i < 200; ++i) texts.push_back(random_text(rng));
  texts.push_back("  \t\n\n  \r\n\xE3\x80\x80\xC2\xA0 trailing   ");
  texts.push_back("资产负债表（Balance Sheet）反映企业在某一特定日期的财务状况。\n\n第二段。");
  for (const auto& t : texts) {
    auto ids = tok.encode(t);
    ASSERT_EQ(tok.decode(ids), t) << nlohmann::json(t).dump();
  }
  // Learned merges shorten text: fewer tokens than bytes on the held-out cases.
  size_t bytes = 0, n = 0;
  for (const auto& t : case_texts(true)) {
    bytes += t.size();
    n += tok.encode(t).size();
  }
  EXPECT_LT(double(n), 0.6 * double(bytes));
}

TEST(TrainedTokenizer, ChatTemplatesAndSpecialTokensWork) {
  {
    Trained tr("chatml");
    Tokenizer tok = Tokenizer::from_dir(tr.dir.path.string());
    EXPECT_EQ(detect_chat_template(tok.config()), ChatTemplateKind::ChatML);
    ASSERT_TRUE(tok.eos_id());
    EXPECT_EQ(tok.id_to_token(*tok.eos_id()), "<|im_end|>");
    EXPECT_FALSE(tok.bos_id());
    EXPECT_EQ(tok.encode("<|im_start|>").size(), 1u);
    EXPECT_TRUE(tok.is_special(tok.encode("<|im_end|>")[0]));
    std::string chat = render_chat(tok, {{"user", "Hi"}, {"assistant", "Hello"}}, false);
    EXPECT_EQ(chat, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n");
    EXPECT_EQ(tok.decode(tok.encode(chat)), chat);
  }
  {
    Trained tr("llama3");
    Tokenizer tok = Tokenizer::from_dir(tr.dir.path.string());
    EXPECT_EQ(detect_chat_template(tok.config()), ChatTemplateKind::Llama3);
    ASSERT_TRUE(tok.bos_id());
    EXPECT_EQ(tok.encode("x", true).front(), *tok.bos_id());
    EXPECT_EQ(tok.id_to_token(*tok.eos_id()), "<|eot_id|>");
    EXPECT_EQ(render_chat(tok, {{"user", " Hi "}}, true),
              "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n");
  }
}

// Live: HF tokenizers loads the written tokenizer.json and encodes held-out
// text to the same ids; the committed reference gives HF's ids for the same
// merges without Python.
TEST(TrainedTokenizer, EncodesLikeHfTokenizers) {
  auto ref = nlohmann::json::parse(std::ifstream(test::tok_data("bpe_trainer/hf_reference.json")));
  const auto& cfg = ref["configs"][0];
  TempDir dir("ids");
  {
    BpeTrainer t(options(cfg["vocab_size"].get<int64_t>(), cfg["min_frequency"].get<int64_t>()));
    for (const auto& s : case_texts(false)) t.feed(s);
    BpeModel m = t.train();
    m.special_tokens = {"<|endoftext|>"};  // id vocab_size: after every id HF learned
    write_bpe_tokenizer(dir.path.string(), m, files_options("none"));
  }
  Tokenizer tok = Tokenizer::from_dir(dir.path.string());
  std::vector<std::string> held = case_texts(true);
  ASSERT_EQ(held.size(), cfg["held_out_ids"].size());
  for (size_t i = 0; i < held.size(); ++i) {
    // Cases holding "<|endoftext|>" encode it as our special token; HF's had none.
    if (held[i].find("<|endoftext|>") != std::string::npos) continue;
    ASSERT_EQ(tok.encode(held[i]), cfg["held_out_ids"][i].get<std::vector<int32_t>>()) << held[i];
  }

  const char* python = std::getenv("FINMOE_PYTHON");
  if (!python_has_tokenizers(python)) GTEST_SKIP() << "FINMOE_PYTHON with `tokenizers` is not set";
  std::mt19937 rng(5);
  for (int i = 0; i < 300; ++i) held.push_back(random_text(rng));
  held.push_back("<|endoftext|>between<|endoftext|>");
  std::ofstream(dir / "texts.json") << nlohmann::json(held).dump();
  std::ofstream(dir / "encode.py")
      << "import json, sys\n"
         "from tokenizers import Tokenizer\n"
         "tok = Tokenizer.from_file(sys.argv[1])\n"
         "texts = json.load(open(sys.argv[2], encoding='utf-8'))\n"
         "json.dump([tok.encode(t, add_special_tokens=False).ids for t in texts], open(sys.argv[3], 'w'))\n";
  ASSERT_EQ(run_python(python, dir / "encode.py",
                       {dir / "tokenizer.json", dir / "texts.json", dir / "ids.json"}),
            "");
  auto want = nlohmann::json::parse(std::ifstream(dir / "ids.json"));
  ASSERT_EQ(want.size(), held.size());
  int wrong = 0;
  for (size_t i = 0; i < held.size(); ++i)
    if (tok.encode(held[i]) != want[i].get<std::vector<int32_t>>() && ++wrong <= 5)
      ADD_FAILURE() << "text " << i << ": " << nlohmann::json(held[i]).dump();
  EXPECT_EQ(wrong, 0);
}

}  // namespace
}  // namespace finmoe
