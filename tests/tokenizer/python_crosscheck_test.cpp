// Live cross-check against the Python `tokenizers` package (HF's Rust
// implementation) on random text: mixes of ASCII words, Chinese, digits,
// whitespace runs, punctuation and emoji drawn with a fixed seed.
// Runs when FINMOE_PYTHON names an interpreter that has `tokenizers`.
#include "core/file_util.h"
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>

#include <unistd.h>

#include <gtest/gtest.h>

#include "finmoe/tokenizer.h"
#include "tokenizer/utf8.h"
#include "tokenizer_test_util.h"

namespace finmoe {
namespace {

namespace fs = std::filesystem;

std::string random_text(std::mt19937& rng) {
  static const std::vector<std::string> words = {
      "the",   "Balance", "sheet", "NPV",  "don't", "I'M",   "we'll", "it's", "ledger", "GnuCash",
      "café",  "naïve",   "e\xCC\x81", "x",  "_id",   "foo.bar", "http://a.b/c?d=1", "$100",
      "<|im_end|>", "<|begin_of_text|>", "<think>", "\xEF\xBC\x8C", "\xE3\x80\x82", "ｆｕｌｌ"};
  static const std::vector<std::string> spaces = {" ", "  ", "   ", "\n", "\n\n", "\t", "\r\n",
                                                  " \n ", "\xC2\xA0", "\xE3\x80\x80", "    \n"};
  static const std::vector<std::string> punct = {".", ",", "!?", "...", "(", ")", "-", "--", "'",
                                                 "\"", "#", "%", "&&", "+=", "1,000.00"};
  std::uniform_int_distribution<int> kind(0, 6), len(1, 12), n_parts(1, 30);
  std::string out;
  int parts = n_parts(rng);
  for (int p = 0; p < parts; ++p) {
    switch (kind(rng)) {
      case 0: out += words[rng() % words.size()]; break;
      case 1: out += spaces[rng() % spaces.size()]; break;
      case 2: out += punct[rng() % punct.size()]; break;
      case 3: {  // digits
        int n = len(rng);
        for (int i = 0; i < n; ++i) out.push_back(static_cast<char>('0' + rng() % 10));
        break;
      }
      case 4: {  // CJK ideographs
        int n = len(rng);
        for (int i = 0; i < n; ++i) tok::utf8_append(out, 0x4E00 + rng() % (0x9FA5 - 0x4E00));
        break;
      }
      case 5: {  // emoji, sometimes joined
        tok::utf8_append(out, 0x1F300 + rng() % 0x250);
        if (rng() % 3 == 0) {
          tok::utf8_append(out, 0x200D);
          tok::utf8_append(out, 0x1F300 + rng() % 0x250);
        }
        break;
      }
      default: {  // random printable ASCII
        int n = len(rng);
        for (int i = 0; i < n; ++i) out.push_back(static_cast<char>(32 + rng() % 95));
      }
    }
  }
  return out;
}

bool python_has_tokenizers(const std::string& python) {
  std::string cmd = python + " -c 'import tokenizers' >/dev/null 2>&1";
  return std::system(cmd.c_str()) == 0;
}

class PythonCrossCheck : public ::testing::TestWithParam<std::string> {};

TEST_P(PythonCrossCheck, RandomTextEncodesLikeHfTokenizers) {
  const char* python = std::getenv("FINMOE_PYTHON");
  if (!python || !*python) GTEST_SKIP() << "FINMOE_PYTHON is not set";
  if (!python_has_tokenizers(python)) GTEST_SKIP() << python << " has no `tokenizers` module";

  std::mt19937 rng(20240611);
  std::vector<std::string> texts;
  for (int i = 0; i < 300; ++i) texts.push_back(random_text(rng));

  fs::path dir = fs::temp_directory_path() / ("finmoe_tok_py_" + GetParam() + "_" +
                                              std::to_string(::getpid()));
  fs::create_directories(dir);
  std::ofstream(dir / "texts.json") << nlohmann::json(texts).dump();
  std::ofstream(dir / "encode.py")
      << "import json, sys\n"
         "from tokenizers import Tokenizer\n"
         "tok = Tokenizer.from_file(sys.argv[1])\n"
         "texts = json.load(open(sys.argv[2], encoding='utf-8'))\n"
         "ids = [tok.encode(t, add_special_tokens=False).ids for t in texts]\n"
         "json.dump(ids, open(sys.argv[3], 'w'))\n";
  std::string tj = test::tok_data(GetParam() + "/tokenizer.json");
  std::string cmd(python);
  for (const std::string& arg : {(dir / "encode.py").string(), tj, (dir / "texts.json").string(),
                                 (dir / "ids.json").string()})
    cmd += " '" + arg + "'";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  auto want = nlohmann::json::parse(std::ifstream(dir / "ids.json"));
  finmoe::remove_tree(fs::path(dir).string());

  const Tokenizer& tok = test::golden_tokenizer(GetParam());
  ASSERT_EQ(want.size(), texts.size());
  int wrong = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    if (tok.encode(texts[i]) != want[i].get<std::vector<int32_t>>() && ++wrong <= 5)
      ADD_FAILURE() << "text " << i << ": " << nlohmann::json(texts[i]).dump();
  }
  EXPECT_EQ(wrong, 0);
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, PythonCrossCheck,
                         ::testing::Values("qwen3", "llama3", "deepseek_v3"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace finmoe
