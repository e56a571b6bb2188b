// Tool calls read back from output text. The round-trip test takes the
// assistant turns that real chat templates rendered (with Python jinja2, in
// tests/data/chat_templates) for a conversation with a tool call: what a
// template teaches the model to write must parse back to the same call.
#include "serve/tool_calls.h"

#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

namespace finmoe::serve {
namespace {

using json = nlohmann::json;

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

const std::vector<std::string> kTools = {"get_stock_price", "convert_amount"};

TEST(ToolCalls, TemplateRenderedCallsParseBack) {
  const std::string dir = std::string(FINMOE_TEST_DATA_DIR) + "/chat_templates/";
  const json conv = json::parse(read_file(dir + "conversations.json"));
  const json& call = conv["conversations"]["tool_call_result"][1]["tool_calls"][0]["function"];
  size_t case_id = 0;
  for (size_t i = 0; i < conv["cases"].size(); ++i) {
    const json& c = conv["cases"][i];
    if (c["conversation"] == "tool_call_result" && !c["add_generation_prompt"].get<bool>() && c["kwargs"].empty())
      case_id = i;
  }
  const std::string q = "What does Apple trade at?";
  struct Form {
    std::string tpl, start, end;
  };
  const std::vector<Form> forms = {
      {"tokenizer-qwen3", q + "<|im_end|>\n<|im_start|>assistant\n", "<|im_end|>"},
      {"Qwen-Qwen2.5-7B-Instruct", q + "<|im_end|>\n<|im_start|>assistant\n", "<|im_end|>"},
      {"NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use", q + "<|im_end|>\n<|im_start|>assistant\n", "<|im_end|>"},
      {"mistralai-Mistral-Nemo-Instruct-2407", q + "[/INST]", "</s>"},
      {"mistralai-Mistral-Small-3.1-24B-Instruct-2503", q + "[/INST]", "</s>"},
      {"meta-llama-Llama-3.1-8B-Instruct", q + "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"},
      {"meta-llama-Llama-3.2-3B-Instruct", q + "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>"},
  };
  for (const auto& f : forms) {
    std::string rendered;
    std::istringstream in(read_file(dir + "expected/" + f.tpl + ".jsonl"));
    for (std::string line; std::getline(in, line);) {
      json r = json::parse(line);
      if (r["case"] == case_id) rendered = r.value("output", "");
    }
    const size_t b = rendered.find(f.start);
    ASSERT_NE(b, std::string::npos) << f.tpl;
    const size_t e = rendered.find(f.end, b + f.start.size());
    ASSERT_NE(e, std::string::npos) << f.tpl;
    const std::string turn = rendered.substr(b + f.start.size(), e - b - f.start.size());
    ParsedToolCalls p = parse_tool_calls(turn, kTools);
    ASSERT_EQ(p.calls.size(), 1u) << f.tpl << ": " << turn;
    EXPECT_EQ(p.calls[0].name, call["name"]) << f.tpl;
    EXPECT_EQ(json::parse(p.calls[0].arguments), call["arguments"]) << f.tpl;
    EXPECT_EQ(p.content, "") << f.tpl;
  }
}

TEST(ToolCalls, SeveralCallsAndTextAround) {
  ParsedToolCalls p = parse_tool_calls(
      "Let me check.\n<tool_call>\n{\"name\": \"get_stock_price\", \"arguments\": {\"ticker\": \"MSFT\"}}\n</tool_call>\n"
      "<tool_call>\n{\"name\": \"convert_amount\", \"arguments\": {\"amount\": 1, \"from\": \"USD\", \"to\": \"EUR\"}}\n"
      "</tool_call>",
      kTools);
  ASSERT_EQ(p.calls.size(), 2u);
  EXPECT_EQ(p.calls[1].name, "convert_amount");
  EXPECT_EQ(json::parse(p.calls[1].arguments)["to"], "EUR");
  EXPECT_EQ(p.content, "Let me check.");
  // Mistral without its marker (decoding skipped the special token)
  p = parse_tool_calls("[{\"name\": \"get_stock_price\", \"arguments\": {\"ticker\": \"X\"}}]", kTools);
  ASSERT_EQ(p.calls.size(), 1u);
  // Llama: <|python_tag|> and two calls joined by ';'
  p = parse_tool_calls("<|python_tag|>{\"name\": \"get_stock_price\", \"parameters\": {\"ticker\": \"A\"}}; "
                       "{\"name\": \"get_stock_price\", \"parameters\": {\"ticker\": \"B\"}}",
                       kTools);
  ASSERT_EQ(p.calls.size(), 2u);
  EXPECT_EQ(json::parse(p.calls[1].arguments)["ticker"], "B");
  // string arguments are JSON text already
  p = parse_tool_calls("<tool_call>{\"name\": \"convert_amount\", \"arguments\": \"{\\\"amount\\\": 2}\"}</tool_call>", kTools);
  ASSERT_EQ(p.calls.size(), 1u);
  EXPECT_EQ(json::parse(p.calls[0].arguments)["amount"], 2);
}

TEST(ToolCalls, WhatIsNotACallStaysText) {
  for (const std::string text : {
           "The price is {\"usd\": 3}.",                                                  // JSON, not a call
           "{\"name\": \"delete_everything\", \"parameters\": {}}",                       // not an offered tool
           "<tool_call>\n{\"name\": \"get_stock_price\", \"arguments\": {\"ticker\": \n",  // cut off
           "[1, 2, 3]",
           "",
       }) {
    ParsedToolCalls p = parse_tool_calls(text, kTools);
    EXPECT_TRUE(p.calls.empty()) << text;
    EXPECT_EQ(p.content, text);
  }
}

}  // namespace
}  // namespace finmoe::serve
