// tokenizer.json parsing: malformed files, unsupported components, the
// byte-fallback/Metaspace variant, chat-template detection.
#include "core/file_util.h"
#include <filesystem>
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "finmoe/error.h"
#include "finmoe/tokenizer.h"
#include "tokenizer_test_util.h"

namespace finmoe {
namespace {

using test::read_jsonl;
using test::tok_data;
using ::testing::HasSubstr;

namespace fs = std::filesystem;

// A temporary directory holding one tokenizer.json with the given text.
class TempTokenizer {
 public:
  explicit TempTokenizer(const std::string& json) {
    dir_ = fs::temp_directory_path() /
           ("finmoe_tok_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) +
            "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
    std::ofstream(dir_ / "tokenizer.json") << json;
  }
  ~TempTokenizer() { finmoe::remove_tree(fs::path(dir_).string()); }
  std::string file() const { return (dir_ / "tokenizer.json").string(); }

 private:
  fs::path dir_;
};

std::string error_of(const std::string& json) {
  TempTokenizer t(json);
  try {
    Tokenizer::from_file(t.file());
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

const char* const kTinyModel =
    R"("model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]})";

TEST(TokenizerJson, MalformedJsonNamesTheFile) {
  TempTokenizer t("{\"model\": ");
  try {
    Tokenizer::from_file(t.file());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr(t.file()));
    EXPECT_THAT(e.what(), HasSubstr("invalid JSON"));
  }
}

TEST(TokenizerJson, MissingFileNamesTheFile) {
  EXPECT_THROW(Tokenizer::from_file("/nonexistent/tokenizer.json"), Error);
  try {
    Tokenizer::from_dir("/nonexistent");
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("/nonexistent/tokenizer.json"));
  }
}

TEST(TokenizerJson, UnknownModelTypeNamesFileAndField) {
  std::string msg = error_of(R"({"model": {"type": "Unigram", "vocab": []}})");
  EXPECT_THAT(msg, HasSubstr("tokenizer.json: model.type 'Unigram' not supported"));
}

TEST(TokenizerJson, UnknownComponentsNameTheirJsonPath) {
  EXPECT_THAT(error_of(std::string("{") + kTinyModel + R"(, "pre_tokenizer": {"type": "Foo"}})"),
              HasSubstr("tokenizer.json: pre_tokenizer.type 'Foo' not supported"));
  EXPECT_THAT(error_of(std::string("{") + kTinyModel +
                       R"(, "normalizer": {"type": "Sequence", "normalizers": [{"type": "Lowercase"}]}})"),
              HasSubstr("normalizer.normalizers[0].type 'Lowercase' not supported"));
  EXPECT_THAT(error_of(std::string("{") + kTinyModel + R"(, "decoder": {"type": "WordPiece"}})"),
              HasSubstr("decoder.type 'WordPiece' not supported"));
  EXPECT_THAT(error_of(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}})"),
              HasSubstr("model.merges[0]"));
}

TEST(TokenizerJson, TokenIdsOutsideInt32AreRefusedNamingTheField) {
  // HF reads ids as u32 (refusing -1 and 2^32); finmoe's ids are int32.
  for (const char* id : {"-1", "2147483648", "4294967296", "4294967297", "1.0", "\"3\""}) {
    const std::string json = std::string(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": )") +
                             id + R"(}, "merges": []}})";
    EXPECT_THAT(error_of(json), HasSubstr("model.vocab['b']")) << id;
  }
  EXPECT_THAT(error_of(std::string("{") + kTinyModel + R"(, "added_tokens": [{"id": 4294967298,
      "content": "<x>", "special": true}]})"),
              HasSubstr("added_tokens[0].id: token id 4294967298 is outside [0, 2^31)"));
  EXPECT_THAT(error_of(std::string("{") + kTinyModel +
                       R"(, "added_tokens": [{"id": 3, "content": "<x>", "special": "yes"}]})"),
              HasSubstr("added_tokens[0].special: expected true or false"));
}

TEST(TokenizerJson, AHugeIdDoesNotSizeTheIdTable) {
  // 3 tokens: an id 10^8 would make a table of 10^8 entries, 2*10^9 of 2*10^9
  for (const char* id : {"100000000", "2000000000"}) {
    const std::string msg = error_of(std::string(R"({"model": {"type": "BPE", "vocab": {"a": 0,
        "b": 1, "ab": )") + id + R"(}, "merges": ["a b"]}})");
    EXPECT_THAT(
        msg, HasSubstr("token id " + std::string(id) + " is more than 1048576 past the 3 tokens"));
  }
  // ids with gaps but within the slack load: the table spans the largest id
  TempTokenizer t(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 1000},
      "merges": ["a b"]}})");
  Tokenizer tok = Tokenizer::from_file(t.file());
  EXPECT_EQ(tok.vocab_size(), 1001);
  EXPECT_EQ(tok.encode("ab"), (std::vector<int32_t>{1000}));
}

TEST(TokenizerJson, MalformedPostProcessorAndDecoderFieldsNameThePath) {
  const std::string head = std::string("{") + kTinyModel + ", ";
  EXPECT_THAT(error_of(head + R"("post_processor": {"type": "TemplateProcessing", "single": [
      {"SpecialToken": {"id": "<s>"}}], "special_tokens": {"<s>": {"ids": [4294967296]}}}})"),
              HasSubstr("post_processor.special_tokens['<s>'].ids[0]: token id 4294967296"));
  EXPECT_THAT(error_of(head + R"("post_processor": {"type": "TemplateProcessing", "single": [3],
      "special_tokens": {}}})"),
              HasSubstr("post_processor.single[0]: expected"));
  EXPECT_THAT(error_of(head + R"("post_processor": {"type": "Sequence", "processors": 5}})"),
              HasSubstr("post_processor.processors: missing or not an array"));
  EXPECT_THAT(error_of(head + R"("post_processor": {"type": 7}})"),
              HasSubstr("post_processor.type: missing or not a string"));
  EXPECT_THAT(error_of(head + R"("decoder": {"type": "Strip", "content": " ", "start": "1"}})"),
              HasSubstr("decoder.start: expected an integer in [0, 2^31)"));
  EXPECT_THAT(error_of(head + R"("decoder": {"type": "Metaspace", "add_prefix_space": 1}})"),
              HasSubstr("decoder.add_prefix_space: expected true or false"));
  EXPECT_THAT(error_of(R"({"model": {"type": 3, "vocab": {}, "merges": []}})"),
              HasSubstr("model.type: expected a string"));
}

TEST(TokenizerJson, MergesAcceptStringAndPairForms) {
  for (const char* merges : {R"(["a b", "ab c"])", R"([["a", "b"], ["ab", "c"]])"}) {
    TempTokenizer t(std::string(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "c": 2,
        "ab": 3, "abc": 4}, "merges": )") + merges + "}}");
    Tokenizer tok = Tokenizer::from_file(t.file());
    EXPECT_EQ(tok.encode("abcab"), (std::vector<int32_t>{4, 3})) << merges;
    EXPECT_EQ(tok.encode("ba"), (std::vector<int32_t>{1, 0})) << merges;
  }
}

TEST(TokenizerJson, AddedTokenStripRules) {
  // lstrip/rstrip swallow neighbouring whitespace; single_word requires word boundaries.
  TempTokenizer t(R"({"model": {"type": "BPE", "vocab": {"a": 0, " ": 1}, "merges": []},
    "added_tokens": [
      {"id": 2, "content": "<L>", "lstrip": true, "rstrip": false, "single_word": false,
       "normalized": false, "special": true},
      {"id": 3, "content": "<R>", "lstrip": false, "rstrip": true, "single_word": false,
       "normalized": false, "special": true},
      {"id": 4, "content": "aa", "lstrip": false, "rstrip": false, "single_word": true,
       "normalized": false, "special": false}]})");
  Tokenizer tok = Tokenizer::from_file(t.file());
  EXPECT_EQ(tok.encode("a  <L>a"), (std::vector<int32_t>{0, 2, 0}));
  EXPECT_EQ(tok.encode("a<R>  a"), (std::vector<int32_t>{0, 3, 0}));
  EXPECT_EQ(tok.encode("aa a"), (std::vector<int32_t>{4, 1, 0}));
  EXPECT_EQ(tok.encode("aaa"), (std::vector<int32_t>{0, 0, 0}));  // inside a word: not matched
}

// Llama-2/Mistral-style byte fallback against HF tokenizers' own encodings.
TEST(ByteFallback, MatchesHfTokenizers) {
  auto rows = read_jsonl(tok_data("byte_fallback/expected.jsonl"));
  ASSERT_EQ(rows.size(), 20u);
  for (const auto& r : rows) {
    Tokenizer tok = Tokenizer::from_dir(tok_data("byte_fallback/" + r["tokenizer"].get<std::string>()));
    std::string text = r["text"];
    auto ids = tok.encode(text);
    EXPECT_EQ(ids, r["ids"].get<std::vector<int32_t>>()) << r["tokenizer"] << ": " << text;
    EXPECT_EQ(tok.decode(ids, /*skip_special_tokens=*/true), r["decoded"].get<std::string>())
        << r["tokenizer"] << ": " << text;
    // Streaming over <0xNN> bytes holds partial characters back.
    IncrementalDecoder dec(tok, true);
    std::string streamed;
    for (int32_t id : ids) streamed += dec.push(id);
    streamed += dec.flush();
    EXPECT_EQ(streamed, tok.decode(ids, true)) << text;
  }
}

TEST(ByteFallback, BosFromTemplateProcessingAndConfig) {
  Tokenizer tok = Tokenizer::from_dir(tok_data("byte_fallback/llama2_style"));
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  auto ids = tok.encode("Hello", true);
  EXPECT_EQ(ids.front(), 1);
  EXPECT_EQ(tok.id_to_token(3), "<0x00>");
}

TEST(ChatTemplate, DetectsFamiliesAndRejectsUnknown) {
  TokenizerConfig c;
  c.chat_template = "{% for m in messages %}<|im_start|>{{ m.role }}{% endfor %}";
  EXPECT_EQ(detect_chat_template(c), ChatTemplateKind::ChatML);
  c.chat_template = "{{ '<|start_header_id|>' }}";
  EXPECT_EQ(detect_chat_template(c), ChatTemplateKind::Llama3);
  c.chat_template = "{{'<\xEF\xBD\x9CUser\xEF\xBD\x9C>' + m}}";
  EXPECT_EQ(detect_chat_template(c), ChatTemplateKind::DeepSeekV3);
  c.chat_template = "[INST] {{ m }} [/INST]";
  try {
    detect_chat_template(c);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("--chat-template"));
    EXPECT_THAT(e.what(), HasSubstr("llama3"));
  }
  EXPECT_EQ(chat_template_from_name("qwen"), ChatTemplateKind::ChatML);
  EXPECT_EQ(chat_template_from_name("deepseek_v3"), ChatTemplateKind::DeepSeekV3);
  EXPECT_THROW(chat_template_from_name("mistral"), Error);
}

TEST(ChatTemplate, Qwen3WrapsTheFinalAssistantTurnInThink) {
  // What Qwen3's Jinja template renders when the conversation ends with an assistant turn.
  const Tokenizer& t = test::golden_tokenizer("qwen3");
  std::vector<ChatMessage> msgs = {{"user", "hi"}, {"assistant", "<think>\nhmm\n</think>\n\nhello"}};
  EXPECT_EQ(render_chat(t, msgs, false),
            "<|im_start|>user\nhi<|im_end|>\n"
            "<|im_start|>assistant\n<think>\nhmm\n</think>\n\nhello<|im_end|>\n");
  // Earlier turns lose their reasoning.
  msgs.push_back({"user", "again"});
  EXPECT_EQ(render_chat(t, msgs, true),
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"
            "<|im_start|>user\nagain<|im_end|>\n<|im_start|>assistant\n");
  // The model's own template renders a tool turn (as HF transformers 5.25 does);
  // the native ChatML rendering refuses roles it does not know.
  EXPECT_EQ(render_chat(t, {{"tool", "x"}}, true),
            "<|im_start|>user\n<tool_response>\nx\n</tool_response><|im_end|>\n<|im_start|>assistant\n");
  EXPECT_THROW(render_chat(t, {{"tool", "x"}}, true, ChatTemplateKind::ChatML), Error);
}

}  // namespace
}  // namespace finmoe
