// The format checker on hand-written outputs that pass and fail, and the
// generator: every record it makes passes its own constraint, while the
// answer before rewriting fails json/table/bullet constraints.
#include <gtest/gtest.h>

#include "../expect_error.h"
#include "data_test_util.h"
#include "finmoe/format_check.h"

namespace {

using namespace finmoe;
using finmoe::test::message_of;
using nlohmann::json;

bool ok(const json& c, const std::string& out) { return check_format(c, out).ok; }

TEST(FormatCheck, JsonKeys) {
  const json c = {{"type", "json_keys"}, {"keys", {"answer", "reason"}}};
  EXPECT_TRUE(ok(c, R"({"answer": 1, "reason": "x"})"));
  EXPECT_TRUE(ok(c, "```json\n{\"answer\": 1, \"reason\": \"x\", \"extra\": 2}\n```\n"));
  EXPECT_EQ(check_format(c, R"({"answer": 1})").reason, "missing key 'reason'");
  EXPECT_EQ(check_format(c, "[1, 2]").reason, "JSON is not an object");
  EXPECT_EQ(check_format(c, "answer: 1").reason, "not valid JSON");
  EXPECT_EQ(check_format(c, "```json\n{\"answer\": 1, \"reason\": 2}\n```\nmore").reason,
            "text after the code fence");
  json exact = c;
  exact["exact"] = true;
  EXPECT_FALSE(ok(exact, R"({"answer": 1, "reason": "x", "extra": 2})"));
  EXPECT_TRUE(ok(exact, R"({"answer": 1, "reason": "x"})"));
}

TEST(FormatCheck, MarkdownTable) {
  const json c = {{"type", "markdown_table"}, {"columns", 3}, {"min_rows", 2}};
  const std::string good =
      "Here:\n\n| a | b | c |\n|---|:---:|---:|\n| 1 | 2 | 3 |\n| 4 | 5 \\| 6 | 7 |\n\nDone.";
  EXPECT_TRUE(ok(c, good));
  EXPECT_EQ(check_format(c, "| a | b | c |\n|---|---|---|\n| 1 | 2 | 3 |").reason,
            "table has 1 rows, expected at least 2");
  EXPECT_EQ(check_format(c, "| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |").reason,
            "table has 2 columns, expected 3");
  EXPECT_EQ(check_format(c, "| a | b | c |\n| 1 | 2 | 3 |\n| 4 | 5 | 6 |").reason,
            "no Markdown table (header row and |---| separator)");
  EXPECT_EQ(check_format(c, "| a | b | c |\n|---|---|---|\n| 1 | 2 | 3 |\n| 4 | 5 |").reason,
            "row 2 has another cell count");
}

TEST(FormatCheck, BulletsAndLength) {
  const json b = {{"type", "bullets"}, {"count", 3}};
  EXPECT_TRUE(ok(b, "Intro:\n- one\n* two\n• three"));
  EXPECT_TRUE(ok(b, "1. one\n2) two\n3、三"));
  EXPECT_EQ(check_format(b, "- one\n- two").reason, "2 bullet points, expected 3");
  EXPECT_FALSE(ok(b, "-one\n-two\n-three"));  // no space: not a list item
  const json l = {{"type", "length"}, {"min_chars", 2}, {"max_chars", 5}};
  EXPECT_TRUE(ok(l, "  利率上升  "));  // 4 code points after trimming
  EXPECT_EQ(check_format(l, "利率上升了吗？").reason, "7 characters, expected 2..5");
  const json w = {{"type", "length"}, {"max_words", 3}};
  EXPECT_TRUE(ok(w, "rates went up"));
  EXPECT_FALSE(ok(w, "rates went up again"));
}

TEST(FormatCheck, MalformedConstraintsAreNamed) {
  EXPECT_CONTAINS(message_of([] {
                    check_format(json{{"type", "yaml"}}, "x");
                  }),
                  "unknown type 'yaml'");
  EXPECT_CONTAINS(message_of([] { check_format(json::array(), "x"); }), "string 'type'");
  EXPECT_CONTAINS(message_of([] { check_format(json{{"type", "json_keys"}}, "{}"); }), "'keys'");
  EXPECT_CONTAINS(message_of([] {
                    check_format(json{{"type", "bullets"}, {"count", -1}}, "x");
                  }),
                  "'count'");
  EXPECT_CONTAINS(message_of([] {
                    check_format(json{{"type", "bullets"}}, "x");
                  }),
                  "'count' is required");
}

TEST(FormatCheck, SentencesSplitAfterChineseAndLatinStops) {
  EXPECT_EQ(split_sentences("利率上升。债券价格下跌！为什么？因为 rates rose. Yes\nok"),
            (std::vector<std::string>{"利率上升。", "债券价格下跌！", "为什么？",
                                      "因为 rates rose.", "Yes", "ok"}));
  EXPECT_EQ(split_sentences("3.5% is the rate"), (std::vector<std::string>{"3.5% is the rate"}));
}

TEST(FormatData, EveryMadeRecordPassesItsOwnCheckAndTheOriginalAnswerFails) {
  datatest::TempDir dir("format");
  std::string in;
  const std::vector<std::pair<std::string, std::string>> qa = {
      {"什么是久期？",
       "久期衡量债券价格对利率的敏感度。久期越长，利率风险越大。零息债券的久期等于期限。"},
      {"What is a bond?",
       "A bond is a loan to an issuer. It pays coupons. The principal is repaid at maturity."},
      {"什么是利率？", "利率是资金的价格。"},
      {"Explain | pipes.", "A | B is a pipe. It separates cells."}};
  for (int i = 0; i < 200; ++i) {
    const auto& [q, a] = qa[size_t(i) % qa.size()];
    if (i % 2)
      in += json{{"instruction", q}, {"input", ""}, {"output", a}}.dump() + "\n";
    else
      in += json{{"messages",
                  {{{"role", "system"}, {"content", "s"}},
                   {{"role", "user"}, {"content", q}},
                   {{"role", "assistant"}, {"content", a}}}}}
                .dump() +
            "\n";
  }
  datatest::write(dir / "in.jsonl", in);
  FormatMakeOptions o;
  o.seed = 4;
  const auto r = make_format_jsonl(dir / "in.jsonl", dir / "out.jsonl", o);
  EXPECT_EQ(r.records, 200);
  EXPECT_EQ(r.written, 200);
  EXPECT_EQ(r.per_type.size(), 4u);
  // with equal weights, single-sentence answers (1 in 4) can only take json or
  // length: those two get more
  EXPECT_GT(r.per_type.at("json_keys"), r.per_type.at("bullets"));
  for (const auto& [t, n] : r.per_type) EXPECT_GT(n, 20) << t;
  for (const auto& line : datatest::lines_of(dir / "out.jsonl")) {
    const json rec = json::parse(line);
    const auto& m = rec["messages"];
    const std::string answer = m.back()["content"];
    const auto v = check_format(rec["format"], answer);
    EXPECT_TRUE(v.ok) << v.reason << "\n" << answer;
    // the unformatted answer does not pass structural constraints
    std::string original;
    for (const auto& [q, a] : qa)
      if (m[m.size() - 2]["content"].get<std::string>().starts_with(q)) original = a;
    ASSERT_FALSE(original.empty());
    if (rec["format"]["type"] != "length") {
      EXPECT_FALSE(check_format(rec["format"], original).ok);
    }
  }
  // the checker over the file: all pass; with another constraint for all, none
  const auto c = check_format_jsonl(dir / "out.jsonl", dir / "pass.jsonl", "", {});
  EXPECT_EQ(c.checked, 200);
  EXPECT_EQ(c.passed, 200);
  FormatCheckOptions co;
  co.constraint = R"({"type": "bullets", "count": 7})";
  const auto c2 = check_format_jsonl(dir / "out.jsonl", "", dir / "failed.jsonl", co);
  EXPECT_EQ(c2.passed, 0);
  EXPECT_EQ(json::parse(datatest::lines_of(dir / "failed.jsonl")[0])["format_error"]
                    .get<std::string>()
                    .find("bullet points, expected 7") != std::string::npos,
            true);
  // weights: only bullets; single-sentence answers are unusable for it
  o.weights = {{"bullets", 1}};
  const auto b = make_format_jsonl(dir / "in.jsonl", dir / "bullets.jsonl", o);
  EXPECT_EQ(b.unusable, 50);
  EXPECT_EQ(b.per_type.at("bullets"), 150);
}

TEST(FormatData, BadRecordsAreNamed) {
  datatest::TempDir dir("format-bad");
  datatest::write(dir / "in.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}]}\n");
  EXPECT_CONTAINS(message_of([&] { make_format_jsonl(dir / "in.jsonl", dir / "out.jsonl", {}); }),
                  "in.jsonl:1: expected 'messages' with a user and an assistant turn");
  EXPECT_CONTAINS(message_of([&] { check_format_jsonl(dir / "in.jsonl", "", "", {}); }),
                  "in.jsonl:1: no 'format' constraint");
  FormatMakeOptions o;
  o.weights = {{"latex", 1}};
  EXPECT_CONTAINS(message_of([&] { make_format_jsonl(dir / "in.jsonl", dir / "o.jsonl", o); }),
                  "unknown type 'latex'");
}

}  // namespace
