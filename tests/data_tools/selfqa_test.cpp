// Self-QA against a small OpenAI-compatible endpoint run inside the test
// (cpp-httplib): questions parsed from the model's reply, answers asked per
// question, duplicates dropped, retries on 5xx/429, a failed run resumed
// without redoing finished documents, client errors not retried.
#include <gtest/gtest.h>

#include <filesystem>

#include "../expect_error.h"
#include "data_test_util.h"
#include "fake_chat.h"
#include "finmoe/selfqa.h"

namespace {

using namespace finmoe;
using finmoe::test::message_of;
using nlohmann::json;

// Replies like a model: three questions (the third repeats the first) about
// the document's first sentence, or an answer naming the question.
std::string model_reply(const std::string& prompt) {
  const size_t doc = prompt.find("文档：\n");
  if (prompt.find("提出") != std::string::npos) {
    const std::string text = prompt.substr(doc + std::string("文档：\n").size());
    const std::string topic = text.substr(0, text.find("。"));
    return "1. " + topic + "是什么意思？\n2) " + topic + "有什么影响？\n这一行不是问题\n3、" +
           topic + "是什么意思？";
  }
  return "回答：" + prompt.substr(prompt.find("问题：") + std::string("问题：").size());
}

// The endpoint (failing its first `fail_first` requests and those after
// `fail_after` with `status`) at its /v1 base URL.
struct FakeEndpoint : datatest::FakeChat {
  FakeEndpoint() : FakeChat(model_reply) {}
  std::string url() const { return FakeChat::url() + "/v1"; }
};

void write_docs(const datatest::TempDir& dir) {
  datatest::write(dir / "docs.jsonl",
                  json{{"text", "利率是资金的价格。它影响借贷成本。"}}.dump() + "\n" +
                      json{{"text", "久期衡量债券对利率的敏感度。"}}.dump() + "\n" +
                      json{{"text", "利率是资金的价格。它影响借贷成本。"}}.dump() + "\n");
}

SelfQaOptions options(const FakeEndpoint& e) {
  SelfQaOptions o;
  o.url = e.url();
  o.backoff_s = 0.01;
  o.timeout_s = 10;
  return o;
}

TEST(SelfQa, PairsFromDocumentsWithRetriesAndDedup) {
  FakeEndpoint e;
  e.fail_first = 2;
  datatest::TempDir dir("selfqa");
  write_docs(dir);
  SelfQaOptions o = options(e);
  o.concurrency = 2;
  const SelfQaResult r = selfqa_jsonl(dir / "docs.jsonl", dir / "qa.jsonl", o);
  EXPECT_EQ(r.documents, 3);
  EXPECT_EQ(r.retried, 2);
  EXPECT_EQ(r.requests, 3 * 4 + 2);  // per document: questions, then 3 answers
  EXPECT_EQ(r.pairs, 4);             // 2 distinct questions per distinct document
  EXPECT_EQ(r.duplicates, 5);
  const auto lines = datatest::lines_of(dir / "qa.jsonl");
  ASSERT_EQ(lines.size(), 4u);
  const json first = json::parse(lines[0]);
  EXPECT_EQ(first["messages"][0]["content"], "利率是资金的价格是什么意思？");
  EXPECT_EQ(first["messages"][1]["content"], "回答：利率是资金的价格是什么意思？");
  EXPECT_EQ(first["source_line"], 1);
  EXPECT_EQ(json::parse(lines[2])["source_line"], 2);
  EXPECT_FALSE(std::filesystem::exists(dir / "qa.jsonl.partial"));
  EXPECT_CONTAINS(message_of([&] { selfqa_jsonl(dir / "docs.jsonl", dir / "qa.jsonl", o); }),
                  "refusing to overwrite");
}

TEST(SelfQa, AFailedRunKeepsItsDocumentsAndResumes) {
  FakeEndpoint e;
  e.fail_after = 4;  // the first document's 4 requests pass, then the endpoint is down
  datatest::TempDir dir("selfqa-resume");
  write_docs(dir);
  SelfQaOptions o = options(e);
  o.retries = 2;
  const std::string m = message_of([&] { selfqa_jsonl(dir / "docs.jsonl", dir / "qa.jsonl", o); });
  EXPECT_CONTAINS(m, "docs.jsonl:2: ");
  EXPECT_CONTAINS(m, "gave up after 3 tries: HTTP 503");
  EXPECT_CONTAINS(m, "--resume");
  EXPECT_FALSE(std::filesystem::exists(dir / "qa.jsonl"));
  EXPECT_EQ(datatest::lines_of(dir / "qa.jsonl.partial").size(), 1u);
  // a second run without --resume is refused; with it, only documents 2 and 3 are asked
  e.fail_after = -1;
  EXPECT_CONTAINS(message_of([&] { selfqa_jsonl(dir / "docs.jsonl", dir / "qa.jsonl", o); }),
                  "--resume continues it");
  o.resume = true;
  const SelfQaResult r = selfqa_jsonl(dir / "docs.jsonl", dir / "qa.jsonl", o);
  EXPECT_EQ(r.resumed, 1);
  EXPECT_EQ(r.requests, 8);
  EXPECT_EQ(r.pairs, 4);
  EXPECT_FALSE(std::filesystem::exists(dir / "qa.jsonl.partial"));
}

TEST(SelfQa, ClientErrorsAreNotRetriedAndBadOptionsNamed) {
  FakeEndpoint e;
  e.fail_first = 1000;
  e.status = 400;
  datatest::TempDir dir("selfqa-400");
  write_docs(dir);
  SelfQaOptions o = options(e);
  EXPECT_CONTAINS(message_of([&] { selfqa_jsonl(dir / "docs.jsonl", dir / "qa.jsonl", o); }),
                  "HTTP 400");
  EXPECT_EQ(e.requests, 1);
  o.url = "localhost:8000";
  std::filesystem::remove(dir / "qa.jsonl.partial");
  EXPECT_CONTAINS(message_of([&] { selfqa_jsonl(dir / "docs.jsonl", dir / "qa2.jsonl", o); }),
                  "--url");
}

TEST(SelfQa, QuestionsAreParsedFromListsAndRateLimitSpacesStarts) {
  EXPECT_EQ(parse_questions("1. 什么是久期？\n2) What is a bond?\n- "
                            "利率为何变化？\n问题3：怎么计算？\nQ: Why?\n说明文字\n10、最后一个？"),
            (std::vector<std::string>{"什么是久期？", "What is a bond?", "利率为何变化？",
                                      "怎么计算？", "Why?", "最后一个？"}));
  RateLimiter r(2.0);  // at most 2 per second
  EXPECT_DOUBLE_EQ(r.acquire(10.0), 10.0);
  EXPECT_DOUBLE_EQ(r.acquire(10.0), 10.5);
  EXPECT_DOUBLE_EQ(r.acquire(10.2), 11.0);
  EXPECT_DOUBLE_EQ(r.acquire(20.0), 20.0);
  RateLimiter none(0);
  EXPECT_DOUBLE_EQ(none.acquire(3.0), 3.0);
  EXPECT_DOUBLE_EQ(none.acquire(3.0), 3.0);
}

}  // namespace
