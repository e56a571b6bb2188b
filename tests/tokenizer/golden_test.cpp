// The three real tokenizers against outputs of Hugging Face's own tokenizer
// and Jinja renderer (tests/data/tokenizer/README.md).
#include <gtest/gtest.h>

#include <algorithm>

#include "finmoe/error.h"
#include "finmoe/tokenizer.h"
#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/utf8.h"
#include "tokenizer_test_util.h"

namespace finmoe {
namespace {

using test::golden_tokenizer;
using test::read_jsonl;
using test::tok_data;

std::vector<int32_t> ids_of(const nlohmann::json& j) { return j.get<std::vector<int32_t>>(); }

class Golden : public ::testing::TestWithParam<std::string> {
 protected:
  const Tokenizer& tok() { return golden_tokenizer(GetParam()); }
  std::vector<nlohmann::json> cases() {
    return read_jsonl(tok_data(GetParam() + "/" + GetParam() + ".ids.jsonl"));
  }
};

TEST_P(Golden, EncodesEveryCaseToHfIds) {
  auto rows = cases();
  ASSERT_EQ(rows.size(), 451u);
  int wrong = 0;
  for (const auto& r : rows) {
    auto got = tok().encode(r["text"].get<std::string>());
    if (got != ids_of(r["ids"]) && ++wrong <= 5)
      ADD_FAILURE() << "case " << r["id"] << " text " << r["text"].dump();
  }
  EXPECT_EQ(wrong, 0);
}

TEST_P(Golden, DecodesEveryCaseToHfText) {
  int wrong = 0;
  for (const auto& r : cases()) {
    auto got = tok().decode(ids_of(r["ids"]));
    if (got != r["decoded"].get<std::string>() && ++wrong <= 5)
      ADD_FAILURE() << "case " << r["id"] << ": got " << nlohmann::json(got).dump() << " want "
                    << r["decoded"].dump();
  }
  EXPECT_EQ(wrong, 0);
}

TEST_P(Golden, ChatTemplateRendersHfTextAndIds) {
  auto rows = read_jsonl(tok_data(GetParam() + "/" + GetParam() + ".chat.jsonl"));
  ASSERT_GE(rows.size(), 4u);
  for (const auto& r : rows) {
    std::vector<ChatMessage> msgs;
    for (const auto& m : r["messages"]) msgs.push_back({m["role"], m["content"]});
    std::string text = render_chat(tok(), msgs, r["add_generation_prompt"].get<bool>());
    EXPECT_EQ(text, r["text"].get<std::string>()) << "conversation " << r["id"];
    EXPECT_EQ(tok().encode(text), ids_of(r["ids"])) << "conversation " << r["id"];
  }
}

// One id at a time: every push is whole UTF-8, and the pieces add up to decode().
TEST_P(Golden, IncrementalDecodingEqualsDecode) {
  std::vector<std::string> texts = {"资产负债表和现金流量表是财务报表的核心。",
                                    "emoji: 📈💹💰🏦 and flags 🇨🇳🇺🇸 👨‍👩‍👧", "mixed中文English混合123数字"};
  for (const auto& r : cases()) texts.push_back(r["text"]);
  for (const auto& text : texts) {
    auto ids = tok().encode(text);
    IncrementalDecoder dec(tok());
    std::string streamed;
    for (int32_t id : ids) {
      std::string piece = dec.push(id);
      ASSERT_EQ(tok::utf8_first_invalid(piece), std::string::npos) << text;
      ASSERT_EQ(piece.find("\xEF\xBF\xBD"), std::string::npos) << "U+FFFD emitted for " << text;
      streamed += piece;
    }
    streamed += dec.flush();
    if (tok().config().clean_up_tokenization_spaces) streamed = clean_up_tokenization(streamed);
    ASSERT_EQ(streamed, tok().decode(ids)) << text;
  }
}

TEST_P(Golden, BosAndSpecialTokensFollowConfig) {
  const Tokenizer& t = tok();
  auto plain = t.encode("Balance sheet");
  auto with = t.encode("Balance sheet", /*add_special_tokens=*/true);
  if (GetParam() == "qwen3") {
    EXPECT_FALSE(t.bos_id().has_value());
    EXPECT_EQ(with, plain);
    EXPECT_EQ(t.eos_id(), t.token_to_id("<|im_end|>"));
  } else {
    ASSERT_TRUE(t.bos_id().has_value());
    EXPECT_TRUE(t.config().add_bos_token);
    ASSERT_EQ(with.size(), plain.size() + 1);
    EXPECT_EQ(with[0], *t.bos_id());
    EXPECT_TRUE(t.is_special(with[0]));
  }
  EXPECT_EQ(t.decode(with, /*skip_special_tokens=*/true), "Balance sheet");
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, Golden, ::testing::Values("qwen3", "llama3", "deepseek_v3"),
                         [](const auto& info) { return info.param; });

TEST(GoldenQwen3, SpecialTokenStringsInTextAreSpecialTokens) {
  const Tokenizer& t = golden_tokenizer("qwen3");
  auto ids = t.encode("a<|im_start|>user\nhi<|im_end|>b");
  int32_t start = *t.token_to_id("<|im_start|>"), end = *t.token_to_id("<|im_end|>");
  EXPECT_EQ(std::count(ids.begin(), ids.end(), start), 1);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), end), 1);
  EXPECT_TRUE(t.is_special(start));
  EXPECT_EQ(t.decode(ids), "a<|im_start|>user\nhi<|im_end|>b");
  EXPECT_EQ(t.decode(ids, /*skip_special_tokens=*/true), "auser\nhib");
  // Non-special added tokens (<think>) are matched whole too, and kept when skipping specials.
  auto think = t.encode("<think>x</think>");
  EXPECT_EQ(think.front(), *t.token_to_id("<think>"));
  EXPECT_FALSE(t.is_special(think.front()));
  EXPECT_EQ(t.decode(think, true), "<think>x</think>");
}

TEST(GoldenQwen3, VocabularyLookups) {
  const Tokenizer& t = golden_tokenizer("qwen3");
  EXPECT_EQ(t.vocab_size(), 151669);  // 151643 BPE tokens + 26 added
  EXPECT_EQ(t.id_to_token(220), "\xC4\xA0");  // "Ġ" = space
  EXPECT_EQ(t.token_to_id("\xC4\xA0"), 220);
  EXPECT_EQ(t.token_to_id("no such token"), std::nullopt);
  EXPECT_THROW(t.id_to_token(-1), Error);
  EXPECT_THROW(t.id_to_token(151669), Error);
  EXPECT_EQ(t.config().model_max_length, 131072);
  EXPECT_EQ(t.config().pad_token, "<|endoftext|>");
}

TEST(GoldenLlama3, HugeModelMaxLengthMeansUnknown) {
  // tokenizer_config.json holds int(1e30), HF's "no limit".
  EXPECT_EQ(golden_tokenizer("llama3").config().model_max_length, 0);
}

TEST(Decode, InvalidUtf8BecomesReplacementCharacters) {
  const Tokenizer& t = golden_tokenizer("qwen3");
  std::vector<int32_t> bytes;
  for (unsigned char c : std::string("\xE8\xA1")) {  // the first two bytes of 表
    bytes.push_back(*t.token_to_id(tok::ByteLevelMap::get().byte_to_utf8[c]));
  }
  bytes.push_back(*t.token_to_id("a"));
  // One U+FFFD for the truncated sequence (maximal subpart), as from_utf8_lossy.
  EXPECT_EQ(t.decode(bytes), "\xEF\xBF\xBD" "a");
  IncrementalDecoder dec(t);
  EXPECT_EQ(dec.push(bytes[0]), "");  // held: may still complete
  EXPECT_EQ(dec.push(bytes[1]), "");
  std::string s;
  s += dec.flush();
  EXPECT_EQ(s, "\xEF\xBF\xBD");
}

TEST(Encode, RejectsInvalidUtf8) {
  EXPECT_THROW(golden_tokenizer("qwen3").encode("ab\xFF"), Error);
}

}  // namespace
}  // namespace finmoe
