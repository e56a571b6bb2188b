// Converters (HTML, DocBook, info, plain-text dumps), paragraphs, documents,
// counts, the split and dedup, against hand-written expectations.
#include <gtest/gtest.h>

#include <set>

#include "../expect_error.h"
#include "data/markup.h"
#include "data_test_util.h"
#include "finmoe/corpus.h"

namespace {

using namespace finmoe;
using finmoe::datatest::fixture;

std::string without_final_newline(std::string s) {
  while (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

std::vector<TextBlock> blocks_of_kind(const std::vector<TextBlock>& blocks, BlockKind kind) {
  std::vector<TextBlock> out;
  for (const auto& b : blocks)
    if (b.kind == kind) out.push_back(b);
  return out;
}

TEST(HtmlToText, FixtureMatchesHandWrittenText) {
  EXPECT_EQ(blocks_to_text(html_to_blocks(fixture("page.html"))), without_final_newline(fixture("page.expected.txt")));
}

TEST(HtmlToText, BlockKindsFollowTheMarkup) {
  const auto blocks = html_to_blocks(fixture("page.html"));
  const auto headings = blocks_of_kind(blocks, BlockKind::heading);
  ASSERT_EQ(headings.size(), 2u);
  EXPECT_EQ(headings[0].level, 1);
  EXPECT_EQ(headings[1].level, 2);
  const auto terms = blocks_of_kind(blocks, BlockKind::term);
  const auto defs = blocks_of_kind(blocks, BlockKind::definition);
  ASSERT_EQ(terms.size(), 2u);
  ASSERT_EQ(defs.size(), 2u);
  EXPECT_EQ(terms[1].text, "Annuity");
  EXPECT_EQ(defs[1].text, "A series of equal payments.");
  const auto code = blocks_of_kind(blocks, BlockKind::code);
  ASSERT_EQ(code.size(), 1u);
  EXPECT_EQ(code[0].text, "  NPV = sum(CF_t / (1 + r)^t)\n    for t = 1..n");
  EXPECT_EQ(blocks_of_kind(blocks, BlockKind::table_row).size(), 2u);
  // Nothing of head, script, style, nav, header, footer, aside or comments.
  const std::string text = blocks_to_text(blocks);
  for (const char* hidden : {"Ignored", "color", "not text", "Home", "Site header", "Prev", "Sidebar", "Footer",
                             "hidden", "\u00b6"})
    EXPECT_EQ(text.find(hidden), std::string::npos) << hidden;
}

TEST(HtmlToText, CharacterReferences) {
  using data::decode_references;
  EXPECT_EQ(decode_references("&amp;&lt;&gt;&quot;&apos;", nullptr, true), "&<>\"'");
  EXPECT_EQ(decode_references("&#65;&#x42;&#X43;", nullptr, true), "ABC");
  EXPECT_EQ(decode_references("&yuml;&nbsp;&rsquo;&hellip;", nullptr, true), "\u00ff\u00a0\u2019\u2026");
  EXPECT_EQ(decode_references("&#xD800;&#0;&#x110000;", nullptr, true), "\ufffd\ufffd\ufffd");
  EXPECT_EQ(decode_references("a & b &unknown; &#zz;", nullptr, true), "a & b &unknown; &#zz;");
  EXPECT_EQ(decode_references("x&unknown;y", nullptr, false), "xy");
  const std::unordered_map<std::string, std::string> extra = {{"amp", "AND"}};
  EXPECT_EQ(decode_references("&amp;", &extra, true), "AND");  // extra entities come first
}

TEST(HtmlToText, MalformedMarkupNeverThrows) {
  for (const char* html : {"<p>unclosed <b>bold", "a < b > c", "<!-- open comment", "<p class='x", "</div></p>text",
                           "<dd>orphan<dt>term", "<pre>code", "<script>never closed", "&#99999999999;", "<"}) {
    std::vector<TextBlock> blocks;
    EXPECT_NO_THROW(blocks = html_to_blocks(html)) << html;
  }
  EXPECT_EQ(blocks_to_text(html_to_blocks("a < b > c")), "a < b > c");
  EXPECT_EQ(blocks_to_text(html_to_blocks("<p>one<p>two</p></p><p>three")), "one\n\ntwo\n\nthree");
}

TEST(DocBookToText, FixtureMatchesHandWrittenText) {
  EXPECT_EQ(blocks_to_text(docbook_to_blocks(fixture("glossary.docbook"))),
            without_final_newline(fixture("glossary.expected.txt")));
}

TEST(DocBookToText, GlossaryAndQandaBecomeTermsDefinitionsQuestionsAnswers) {
  const auto blocks = docbook_to_blocks(fixture("glossary.docbook"));
  const auto terms = blocks_of_kind(blocks, BlockKind::term);
  ASSERT_EQ(terms.size(), 3u);
  EXPECT_EQ(terms[0].text, "Checking");
  EXPECT_EQ(terms[1].text, "Asset");
  EXPECT_EQ(terms[2].text, "Equity");
  const auto defs = blocks_of_kind(blocks, BlockKind::definition);
  ASSERT_EQ(defs.size(), 2u);
  EXPECT_EQ(defs[1].text, "Something you own that has value.");
  EXPECT_EQ(blocks_of_kind(blocks, BlockKind::question).size(), 1u);
  EXPECT_EQ(blocks_of_kind(blocks, BlockKind::answer).size(), 2u);
  const auto headings = blocks_of_kind(blocks, BlockKind::heading);
  ASSERT_EQ(headings.size(), 3u);
  EXPECT_EQ(headings[0].level, 1);  // chapter
  EXPECT_EQ(headings[1].level, 2);  // sect1
  EXPECT_EQ(headings[2].level, 1);  // glossary
}

TEST(InfoToText, FixtureMatchesHandWrittenText) {
  EXPECT_EQ(blocks_to_text(info_to_blocks(fixture("manual.info"))), without_final_newline(fixture("manual.expected.txt")));
}

TEST(InfoToText, NodeHeadersMenusAndTagTableAreDropped) {
  const std::string text = blocks_to_text(info_to_blocks(fixture("manual.info")));
  for (const char* gone : {"File:", "Node:", "* Menu", "Journal::", "Tag Table", "INFO-DIR", "makeinfo", "\x1f", "*note"})
    EXPECT_EQ(text.find(gone), std::string::npos) << gone;
  const auto headings = blocks_of_kind(info_to_blocks(fixture("manual.info")), BlockKind::heading);
  ASSERT_EQ(headings.size(), 3u);
  EXPECT_EQ(headings[0].level, 1);
  EXPECT_EQ(headings[1].level, 2);
  EXPECT_EQ(headings[2].level, 3);
}

TEST(PlainTextToText, FixtureMatchesHandWrittenText) {
  EXPECT_EQ(blocks_to_text(plain_text_to_blocks(fixture("dump.txt"))), without_final_newline(fixture("dump.expected.txt")));
}

TEST(PlainTextToText, ChineseLinesJoinWithoutSpaces) {
  // Wrapped at 70 columns: 4 columns of indentation and 33 wide characters.
  const std::string a = "会计是以货币为主要计量单位，运用专门方法，对企业的经济活动进行核算";
  ASSERT_EQ(count_chars(a), 33u);
  const std::string dump = "    " + a + "\n    和监督的一种经济管理活动。\n";
  EXPECT_EQ(blocks_to_text(plain_text_to_blocks(dump)), a + "和监督的一种经济管理活动。");
  // A Latin word after a CJK character keeps its space.
  const std::string mixed = "    " + a + "\n    Debian 用户。\n";
  EXPECT_EQ(blocks_to_text(plain_text_to_blocks(mixed)), a + " Debian 用户。");
}

TEST(Paragraphs, ListItemsAndRowsMergeBoilerplateAndEmptyHeadingsDrop) {
  const std::vector<TextBlock> blocks = {
      {BlockKind::heading, 1, "Contents"},  // followed by a heading of the same rank: dropped
      {BlockKind::heading, 1, "Chapter"},
      {BlockKind::heading, 2, "Section"},
      {BlockKind::paragraph, 0, "Permission is granted to copy, distribute and/or modify this document"},
      {BlockKind::list_item, 0, "one"},
      {BlockKind::list_item, 0, "two"},
      {BlockKind::paragraph, 0, "***"},
      {BlockKind::table_row, 0, "1 | 2"},
      {BlockKind::table_row, 0, "3 | 4"},
      {BlockKind::list_item, 0, "three"}};
  const auto paras = blocks_to_paragraphs(blocks);
  ASSERT_EQ(paras.size(), 5u);
  EXPECT_EQ(paras[0].text, "Chapter");
  EXPECT_TRUE(paras[0].heading);
  EXPECT_EQ(paras[1].text, "Section");
  EXPECT_EQ(paras[2].text, "- one\n- two");
  EXPECT_FALSE(paras[2].heading);
  EXPECT_EQ(paras[3].text, "1 | 2\n3 | 4");
  EXPECT_EQ(paras[4].text, "- three");
}

// A paragraph of n characters: words of 9 letters and a space.
std::string para_of(size_t n, char letter = 'a') {
  std::string s;
  while (s.size() < n) s += (s.size() % 10 == 9) ? ' ' : letter;
  if (s.back() == ' ') s.back() = letter;
  return s;
}

TEST(Documents, RespectMinTargetAndMaxAndStartAtHeadings) {
  DocumentOptions o{.min_chars = 100, .target_chars = 300, .max_chars = 500};
  std::vector<Paragraph> paras;
  for (int section = 0; section < 4; ++section) {
    paras.push_back({"Heading " + std::to_string(section), true});
    for (int k = 0; k < 5; ++k) paras.push_back({para_of(80 + 30 * k, char('a' + k)), false});
  }
  paras.push_back({para_of(1700, 'z'), false});  // longer than max: cut
  const auto docs = paragraphs_to_documents(paras, o);
  ASSERT_GE(docs.size(), 8u);
  std::string all;
  for (const auto& d : docs) {
    EXPECT_GE(count_chars(d), o.min_chars) << d;
    EXPECT_LE(count_chars(d), o.max_chars + o.min_chars) << d;
    // no document ends with a heading
    EXPECT_NE(d.substr(d.rfind("\n\n") == std::string::npos ? 0 : d.rfind("\n\n") + 2, 8), "Heading ");
    all += d;
  }
  // Nothing lost: every paragraph's text appears (long ones in pieces).
  for (const auto& p : paras)
    if (p.text.size() < 500) {
      EXPECT_NE(all.find(p.text), std::string::npos) << p.text;
    }
  EXPECT_EQ(std::count(all.begin(), all.end(), 'z'), std::count(paras.back().text.begin(), paras.back().text.end(), 'z'));
  // Each heading starts a document (sections hold >= min characters).
  for (int section = 1; section < 4; ++section) {
    const std::string h = "Heading " + std::to_string(section);
    bool starts = false;
    for (const auto& d : docs) starts |= d.rfind(h, 0) == 0;
    EXPECT_TRUE(starts) << h;
  }
  EXPECT_EQ(paragraphs_to_documents(paras, o), docs);  // deterministic
}

TEST(Documents, LongParagraphIsCutAtSentenceEnds) {
  std::string text;
  for (int k = 0; k < 30; ++k) text += "Sentence number " + std::to_string(k) + " is about interest rates. ";
  text.pop_back();
  const auto docs = paragraphs_to_documents({{text, false}}, {.min_chars = 50, .target_chars = 200, .max_chars = 300});
  ASSERT_GT(docs.size(), 3u);
  for (const auto& d : docs) {
    EXPECT_LE(count_chars(d), 300u);
    EXPECT_EQ(d.rfind("Sentence", 0), 0u) << d;  // pieces start at a sentence
    EXPECT_EQ(d.back(), '.') << d;
  }
}

TEST(Documents, ShortRemainderMergesAndTinyFileIsDropped) {
  const DocumentOptions o{.min_chars = 100, .target_chars = 150, .max_chars = 400};
  const auto docs = paragraphs_to_documents({{para_of(160), false}, {"tail end", false}}, o);
  ASSERT_EQ(docs.size(), 1u);
  EXPECT_EQ(docs[0], para_of(160) + "\n\ntail end");
  EXPECT_TRUE(paragraphs_to_documents({{"Title", true}, {"too short", false}}, o).empty());
  EXPECT_TRUE(paragraphs_to_documents({{"Only a heading", true}}, o).empty());
}

TEST(Counts, CharactersWordsAndHan) {
  EXPECT_EQ(count_chars("abc"), 3u);
  EXPECT_EQ(count_chars("中文€"), 3u);
  EXPECT_EQ(count_han("NPV 净现值 €"), 3u);
  EXPECT_EQ(count_words("Net present value"), 3u);
  EXPECT_EQ(count_words("  spaced\n\tout  "), 2u);
  EXPECT_EQ(count_words("净现值 is NPV"), 5u);  // each Han character is a word
  EXPECT_EQ(count_words("计算NPV值"), 4u);        // 计 算 NPV 值
}

TEST(Split, DeterministicByTextAndNearTheFraction) {
  int test = 0;
  const int n = 20000;
  for (int k = 0; k < n; ++k) {
    const std::string doc = "document " + std::to_string(k);
    const bool t = in_test_split(doc, 0.1);
    EXPECT_EQ(t, in_test_split(doc, 0.1));
    EXPECT_LE(t, in_test_split(doc, 0.2));  // a larger fraction keeps earlier test documents
    test += t;
  }
  // Binomial(20000, 0.1): sd ~42; the hash is fixed, so this cannot flake.
  EXPECT_GT(test, 1800);
  EXPECT_LT(test, 2200);
  EXPECT_FALSE(in_test_split("anything", 0.0));
  EXPECT_TRUE(in_test_split("anything", 1.0));
}

TEST(Split, HashIsStable) {
  // FNV-1a 64 of "" is 0xcbf29ce484222325; the splitmix64 finaliser of it:
  uint64_t h = 0xcbf29ce484222325ull + 0x9e3779b97f4a7c15ull;
  h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ull;
  h = (h ^ (h >> 27)) * 0x94d049bb133111ebull;
  EXPECT_EQ(text_hash(""), h ^ (h >> 31));
  EXPECT_NE(text_hash("a"), text_hash("b"));
}

TEST(Dedup, RemovesExactDuplicatesKeepingTheFirst) {
  std::unordered_set<uint64_t> seen;
  std::vector<std::string> a = {"x", "y", "x", "z", "y"};
  EXPECT_EQ(remove_duplicates(a, seen), 2u);
  EXPECT_EQ(a, (std::vector<std::string>{"x", "y", "z"}));
  std::vector<std::string> b = {"z", "w", "x ", "w"};  // another package: "z" was seen
  EXPECT_EQ(remove_duplicates(b, seen), 2u);
  EXPECT_EQ(b, (std::vector<std::string>{"w", "x "}));
}

}  // namespace
