// Persona augmentation: templated rewrites deterministic in the seed, the
// answer untouched, personas and styles as asked; the model path through a
// fake endpoint, its rewrites checked for the instruction's numbers, and a
// failed run resumed without asking again for finished records.
#include <gtest/gtest.h>

#include <filesystem>
#include <set>

#include "../expect_error.h"
#include "data_test_util.h"
#include "fake_chat.h"
#include "finmoe/persona.h"

namespace {

using namespace finmoe;
using finmoe::test::message_of;
using nlohmann::json;

json pair(const std::string& q, const std::string& a) {
  return {
      {"messages", {{{"role", "user"}, {"content", q}}, {{"role", "assistant"}, {"content", a}}}},
      {"tag", "t"}};
}

void write_pairs(const datatest::TempDir& dir) {
  datatest::write(dir / "sft.jsonl",
                  pair("存款10000元，年利率2.5%，一年利息多少？", "250元。").dump() + "\n" +
                      pair("What is a bond?", "A debt security.").dump() + "\n" +
                      json{{"instruction", "什么是久期？"}, {"output", "x"}}.dump() + "\n");
}

std::vector<json> records(const std::string& path) {
  std::vector<json> out;
  for (const auto& l : datatest::lines_of(path)) out.push_back(json::parse(l));
  return out;
}

}  // namespace

TEST(Persona, TemplatedRewritesAreDeterministicAndKeepTheAnswer) {
  datatest::TempDir dir("persona");
  write_pairs(dir);
  PersonaOptions o;
  o.variants = 3;
  o.seed = 7;
  const PersonaResult r = persona_jsonl(dir / "sft.jsonl", dir / "a.jsonl", o);
  EXPECT_EQ(r.records, 3);
  EXPECT_EQ(r.written, 9);
  const auto a = records(dir / "a.jsonl");
  ASSERT_EQ(a.size(), 9u);
  for (size_t rec = 0; rec < 3; ++rec) {
    std::set<std::string> personas;
    for (size_t k = 0; k < 3; ++k) {
      const json& v = a[rec * 3 + k];
      EXPECT_EQ(v["source_line"], int64_t(rec) + 1);
      EXPECT_EQ(v["persona_source"], "template");
      personas.insert(v["persona"].get<std::string>());
      const bool zh = rec != 1;
      const auto builtin = builtin_personas(zh);
      EXPECT_NE(std::find(builtin.begin(), builtin.end(), v["persona"]), builtin.end());
      const std::string q = rec == 0   ? "存款10000元，年利率2.5%，一年利息多少？"
                            : rec == 1 ? "What is a bond?"
                                       : "什么是久期？";
      const std::string text = rec == 2 ? v["instruction"].get<std::string>()
                                        : v["messages"][0]["content"].get<std::string>();
      // the persona introduces the unchanged question
      EXPECT_NE(text.find(v["persona"].get<std::string>()), std::string::npos) << text;
      EXPECT_NE(text.find(q), std::string::npos) << text;
      if (v["style"] == "direct") {
        EXPECT_EQ(text, v["persona"].get<std::string>() + (zh ? "。" : ". ") + q);
      }
      if (rec != 2) {
        EXPECT_EQ(v["messages"][1], a[rec * 3]["messages"][1]);  // the answer kept
      }
      EXPECT_EQ(v.value("tag", json()), rec == 2 ? json() : json("t"));
    }
    EXPECT_EQ(personas.size(), 3u);  // each variant by another persona
  }
  EXPECT_EQ(a[0]["messages"][1]["content"], "250元。");
  // the same seed gives the same file; another seed other draws
  persona_jsonl(dir / "sft.jsonl", dir / "b.jsonl", o);
  EXPECT_EQ(datatest::read_file(dir / "a.jsonl"), datatest::read_file(dir / "b.jsonl"));
  o.seed = 8;
  persona_jsonl(dir / "sft.jsonl", dir / "c.jsonl", o);
  EXPECT_NE(datatest::read_file(dir / "a.jsonl"), datatest::read_file(dir / "c.jsonl"));
}

TEST(Persona, PersonasStylesAndBadInput) {
  datatest::TempDir dir("persona-opts");
  write_pairs(dir);
  PersonaOptions o;
  o.personas = {"我是甲", "我是乙"};
  o.styles = {"polite"};
  o.keep_original = true;
  persona_jsonl(dir / "sft.jsonl", dir / "a.jsonl", o);
  const auto a = records(dir / "a.jsonl");
  ASSERT_EQ(a.size(), 6u);
  EXPECT_EQ(a[0],
            pair("存款10000元，年利率2.5%，一年利息多少？", "250元。"));  // the original first
  EXPECT_EQ(a[1]["messages"][0]["content"],
            "您好，" + a[1]["persona"].get<std::string>() +
                "，想请教一个问题：存款10000元，年利率2.5%，一年利息多少？谢谢！");
  EXPECT_EQ(a[3]["messages"][0]["content"], "Hello! " + a[3]["persona"].get<std::string>() +
                                                " and have a question: What is a bond? Thank you!");
  EXPECT_CONTAINS(message_of([&] {
                    PersonaOptions b;
                    b.styles = {"rude"};
                    persona_jsonl(dir / "sft.jsonl", dir / "x.jsonl", b);
                  }),
                  "unknown style 'rude'");
  EXPECT_CONTAINS(message_of([&] { persona_jsonl(dir / "sft.jsonl", dir / "a.jsonl", {}); }),
                  "refusing to overwrite");
  datatest::write(dir / "bad.jsonl", pair("q?", "a").dump() + "\n{\"text\": \"no instruction\"}\n");
  EXPECT_CONTAINS(message_of([&] { persona_jsonl(dir / "bad.jsonl", dir / "y.jsonl", {}); }),
                  "bad.jsonl:2: no instruction");
  EXPECT_FALSE(std::filesystem::exists(dir / "y.jsonl"));
  PersonaOptions skip;
  skip.skip_bad = true;
  EXPECT_EQ(persona_jsonl(dir / "bad.jsonl", dir / "z.jsonl", skip).skipped, 1);
}

TEST(Persona, ModelRewritesKeepTheNumbersAndResume) {
  // a model that keeps the question, except that it drops the numbers of one
  datatest::FakeChat chat([](const std::string& prompt) {
    const std::string key =
        prompt.find("原问题：") != std::string::npos ? "原问题：" : "Original question: ";
    const std::string q = prompt.substr(prompt.find(key) + key.size());
    if (q.find("10000") != std::string::npos) return std::string("我想问存款利息怎么算？");
    return "【改写】" + q;
  });
  datatest::TempDir dir("persona-model");
  write_pairs(dir);
  PersonaOptions o;
  o.endpoint = ChatEndpointOptions{};
  o.endpoint->url = chat.url();
  o.endpoint->backoff_s = 0.01;
  o.endpoint->retries = 1;
  chat.fail_after = 1;  // the second record's request fails twice: the run stops
  const std::string m = message_of([&] { persona_jsonl(dir / "sft.jsonl", dir / "a.jsonl", o); });
  EXPECT_CONTAINS(m, "sft.jsonl:2: ");
  EXPECT_CONTAINS(m, "gave up after 2 tries: HTTP 503");
  EXPECT_CONTAINS(m, "--resume continues");
  EXPECT_FALSE(std::filesystem::exists(dir / "a.jsonl"));
  EXPECT_EQ(datatest::lines_of(dir / "a.jsonl.partial").size(), 1u);
  chat.fail_after = -1;
  o.resume = true;
  const int64_t before = chat.requests;
  const PersonaResult r = persona_jsonl(dir / "sft.jsonl", dir / "a.jsonl", o);
  EXPECT_EQ(chat.requests - before, 2);  // records 2 and 3 only
  EXPECT_EQ(r.resumed, 1);
  EXPECT_EQ(r.by_model, 2);
  EXPECT_EQ(r.model_rejected, 0);  // record 1's fallback happened in the first run
  EXPECT_FALSE(std::filesystem::exists(dir / "a.jsonl.partial"));
  const auto a = records(dir / "a.jsonl");
  ASSERT_EQ(a.size(), 3u);
  // record 1: the reply lost 10000 and 2.5, so the template's text stands in
  EXPECT_EQ(a[0]["persona_source"], "template");
  EXPECT_NE(a[0]["messages"][0]["content"].get<std::string>().find("10000"), std::string::npos);
  EXPECT_EQ(a[1]["persona_source"], "model");
  EXPECT_EQ(a[1]["messages"][0]["content"], "【改写】What is a bond?");
  EXPECT_EQ(a[2]["instruction"], "【改写】什么是久期？");
  // the prompt names the persona and the style
  std::lock_guard<std::mutex> lock(chat.mu);
  EXPECT_NE(chat.prompts.back().find(a[2]["persona"].get<std::string>()), std::string::npos);
}
