// bsdgames quiz parsing and the QA/multiple-choice builders.
#include <gtest/gtest.h>

#include <set>

#include "../expect_error.h"
#include "data_test_util.h"
#include "finmoe/corpus.h"

namespace {

using namespace finmoe;
using finmoe::datatest::fixture;
using finmoe::test::message_of;

TEST(Quiz, RecordsContinuationLinesAndEscapes) {
  const auto recs = parse_quiz(fixture("quiz/pres"), "pres");
  ASSERT_EQ(recs.size(), 4u);  // the blank line is skipped
  EXPECT_EQ(recs[0].line, 1);
  EXPECT_EQ(recs[1].line, 2);  // spans lines 2-3
  EXPECT_EQ(recs[2].line, 5);
  EXPECT_EQ(recs[3].line, 6);
  ASSERT_EQ(recs[1].patterns.size(), 3u);
  EXPECT_EQ(recs[1].patterns[2], "{A{aron} }Burr|{G{eorge} }Clinton");
  ASSERT_EQ(recs[3].patterns.size(), 2u);  // "\:" does not split
  EXPECT_EQ(recs[3].patterns[0], "To be{,} or not to be{\\:}");
}

TEST(Quiz, CanonicalAnswerIsFirstAlternativeWithOptionalParts) {
  EXPECT_EQ(quiz_canonical("{G{eorge} }Washington"), "George Washington");
  EXPECT_EQ(quiz_canonical("1801-{{18}0}9"), "1801-1809");
  EXPECT_EQ(quiz_canonical("{A{aron} }Burr|{G{eorge} }Clinton"), "Aaron Burr");
  EXPECT_EQ(quiz_canonical("W[illia|]m [I|1|the Conqueror]"), "William I");
  EXPECT_EQ(quiz_canonical("To be{,} or not to be{\\:}"), "To be, or not to be:");
  EXPECT_EQ(quiz_canonical("statute of frauds"), "statute of frauds");
  EXPECT_EQ(quiz_canonical(""), "");
}

TEST(Quiz, ExpansionsAndAccepts) {
  EXPECT_EQ(quiz_expansions("{G{eorge} }Washington"),
            (std::vector<std::string>{"George Washington", "G Washington", "Washington"}));
  EXPECT_EQ(quiz_expansions("a|b{c}"), (std::vector<std::string>{"a", "bc", "b"}));
  EXPECT_EQ(quiz_expansions("forget{-| }me", 2).size(), 2u);  // limit
  EXPECT_TRUE(quiz_accepts("1801-{{18}0}9", "1801-09"));
  EXPECT_TRUE(quiz_accepts("1801-{{18}0}9", "1801-9"));
  EXPECT_TRUE(quiz_accepts("1801-{{18}0}9", " 1801-1809 "));
  EXPECT_FALSE(quiz_accepts("1801-{{18}0}9", "1801-189"));
  EXPECT_TRUE(quiz_accepts("W[illia|]m [I|1|the Conqueror]", "Wm 1"));
  EXPECT_TRUE(quiz_accepts("W[illia|]m [I|1|the Conqueror]", "William the Conqueror"));
  EXPECT_FALSE(quiz_accepts("W[illia|]m [I|1|the Conqueror]", "Willm I"));
}

TEST(Quiz, MalformedLinesNameFileAndLine) {
  const std::string m = message_of([] { parse_quiz(fixture("quiz/bad"), "quiz/bad"); });
  EXPECT_CONTAINS(m, "quiz/bad:2:");
  EXPECT_CONTAINS(m, "category 1");
  EXPECT_CONTAINS(m, "unbalanced '{'");
  EXPECT_CONTAINS(message_of([] { parse_quiz("a:b]c\n", "f"); }), "f:1: category 2 'b]c': unexpected ']'");
  EXPECT_CONTAINS(message_of([] { parse_quiz("ok:ok\nx:[y|z\n", "f"); }), "f:2: category 2");
  EXPECT_CONTAINS(message_of([] { parse_quiz("ok:ok\nx:y\\", "f"); }), "f:2:");
  EXPECT_CONTAINS(message_of([] { parse_quiz("x:y\\\n", "f"); }), "continuation");
  EXPECT_CONTAINS(message_of([] { quiz_canonical("{open"); }), "unbalanced '{'");
}

TEST(Quiz, IndexNamesSubjectsAndCategories) {
  const auto index = parse_quiz(fixture("quiz/index"), "index");
  ASSERT_EQ(index.size(), 2u);
  EXPECT_EQ(index[0].patterns[0], "/usr/share/games/bsdgames/quiz/ucc");
  EXPECT_EQ(quiz_canonical(index[0].patterns[2]), "Uniform-Commercial-Code");
  EXPECT_TRUE(quiz_accepts(index[0].patterns[2], "UCC"));
}

TEST(QaItems, UccRecordsGiveBothDirectionsInOneGroup) {
  const auto items = quiz_qa_items("ucc", {"section", "UCC"}, parse_quiz(fixture("quiz/ucc"), "ucc"));
  ASSERT_EQ(items.size(), 10u);
  EXPECT_EQ(items[0].question, "Which topic does section 2-201 of the Uniform Commercial Code (UCC) cover?");
  EXPECT_EQ(items[0].answer, "Statute of frauds.");
  EXPECT_EQ(items[0].source, "ucc-topic");
  EXPECT_EQ(items[1].question, "Which section of the Uniform Commercial Code (UCC) covers statute of frauds?");
  EXPECT_EQ(items[1].answer, "Section 2-201.");
  EXPECT_EQ(items[1].source, "ucc-section");
  EXPECT_EQ(items[0].group, items[1].group);
  EXPECT_NE(items[0].group, items[2].group);
}

TEST(QaItems, OtherQuizSubjectsAskForTheSecondCategory) {
  const auto items = quiz_qa_items("pres", {"pres{ident}", "term"}, parse_quiz(fixture("quiz/pres"), "pres"));
  ASSERT_EQ(items.size(), 4u);
  EXPECT_EQ(items[0].question, "What is the term of George Washington?");
  EXPECT_EQ(items[0].answer, "1789-1797.");
}

TEST(QaItems, DefinitionsFromDocBookTermsAndQanda) {
  const auto blocks = docbook_to_blocks(fixture("glossary.docbook"));
  const auto items = definition_qa_items(blocks, "FinBook", "fb");
  ASSERT_EQ(items.size(), 3u);  // Equity has only a "see" reference
  EXPECT_EQ(items[0].question, "In FinBook (Menus), what is \"Checking\"?");
  EXPECT_EQ(items[0].answer, "Standard bank checking account.");
  EXPECT_EQ(items[1].question, "In FinBook (Glossary), what is \"Asset\"?");
  EXPECT_EQ(items[2].question, "Can FinBook import QIF files?");
  EXPECT_EQ(items[2].answer, "Yes, use File \u2192 Import.\n\nBoth formats work.");
  EXPECT_EQ(items[2].source, "fb-faq");
  const auto plain = definition_qa_items(blocks, "", "glossary");
  EXPECT_EQ(plain[1].question, "What is Asset?");
}

TEST(QaItems, DefinitionsSkipOptionsSymbolsAndExampleLeadIns) {
  const std::vector<TextBlock> blocks = {
      {BlockKind::heading, 3, "4.7.2 Command Directives"},
      {BlockKind::term, 0, "--strict"},
      {BlockKind::definition, 0, "Accounts must be declared before use."},
      {BlockKind::term, 0, "="},
      {BlockKind::definition, 0, "An automated transaction with a value expression."},
      {BlockKind::term, 0, "alias"},
      {BlockKind::definition, 0, "Define an alias for an account name. For example:"},
      {BlockKind::term, 0, "capture"},
      {BlockKind::definition, 0, "For example:"},
  };
  const auto items = definition_qa_items(blocks, "Ledger", "ledger");
  ASSERT_EQ(items.size(), 1u);
  EXPECT_EQ(items[0].question, "In Ledger (Command Directives), what is \"alias\"?");
  EXPECT_EQ(items[0].answer, "Define an alias for an account name.");
}

TEST(QaItems, SpreadsheetFunctionsFromHeadings) {
  const std::string html =
      "<h1>Financial Functions</h1><p>Intro.</p>"
      "<h2>NPV</h2><p><span class='avis'>Returns the present value of an investment.</span></p>"
      "<h4>Syntax</h4><p>NPV(Rate; Value1)</p>"
      "<h2>Not a function</h2><p>Text.</p>"
      "<h2>PMT</h2><p>Returns the periodic payment for an annuity.</p>";
  const auto en = function_qa_items(html_to_blocks(html), "en", "calc-en");
  ASSERT_EQ(en.size(), 2u);
  EXPECT_EQ(en[0].question, "What does the LibreOffice Calc function NPV do?");
  EXPECT_EQ(en[0].answer, "Returns the present value of an investment.");
  EXPECT_EQ(en[0].group, "calc:NPV");
  const auto zh = function_qa_items(html_to_blocks("<h2>NPV</h2><p>返回投资的净现值。</p>"), "zh", "calc-zh");
  ASSERT_EQ(zh.size(), 1u);
  EXPECT_EQ(zh[0].question, "LibreOffice Calc 中的 NPV 函数有什么作用？");
  EXPECT_EQ(zh[0].group, "calc:NPV");  // same split as the English item
}

TEST(MultipleChoice, AnswerAtIndexDistinctChoicesFromTheSameSource) {
  std::vector<QaItem> pool;
  for (int k = 0; k < 6; ++k) pool.push_back({std::string("q") += std::to_string(k), std::string("a") += std::to_string(k), "s1", "en", ""});
  pool.push_back({"other", "not from s1", "s2", "en", ""});
  pool.push_back({"dup", "a1", "s1", "en", ""});  // a repeated answer is one choice
  const std::vector<QaItem> test = {pool[0], pool[3], pool[6]};
  const auto mc = make_multiple_choice(test, pool, 4);
  ASSERT_EQ(mc.size(), 2u);  // s2 has no distractors
  for (size_t k = 0; k < mc.size(); ++k) {
    ASSERT_EQ(mc[k].choices.size(), 4u);
    ASSERT_GE(mc[k].answer, 0);
    ASSERT_LT(mc[k].answer, 4);
    EXPECT_EQ(mc[k].choices[size_t(mc[k].answer)], test[k].answer);
    std::set<std::string> distinct(mc[k].choices.begin(), mc[k].choices.end());
    EXPECT_EQ(distinct.size(), 4u);
    for (const auto& c : mc[k].choices) EXPECT_EQ(c[0], 'a') << c;  // only s1 answers
  }
  const auto again = make_multiple_choice(test, pool, 4);
  EXPECT_EQ(again[1].choices, mc[1].choices);
  EXPECT_EQ(make_multiple_choice(test, pool, 7).size(), 0u);  // 6 distinct answers are too few
  EXPECT_CONTAINS(message_of([&] { make_multiple_choice(test, pool, 1); }), "at least 2");
}

TEST(MultipleChoice, AnswerPositionsSpread) {
  std::vector<QaItem> pool;
  for (int k = 0; k < 200; ++k) pool.push_back({std::string("question ") += std::to_string(k), std::string("answer ") += std::to_string(k), "s", "en", ""});
  std::vector<int> at(4, 0);
  for (const auto& m : make_multiple_choice(pool, pool, 4)) ++at[size_t(m.answer)];
  for (int n : at) EXPECT_GT(n, 25);  // ~50 each; a fixed hash, so no flakiness
}

}  // namespace
