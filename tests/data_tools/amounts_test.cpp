// Uppercase amounts against an independent writer formulated differently (a
// left-to-right pass over the digit string with a pending-zero flag, where the
// library recurses over 亿, 万 and sections), exhaustively on ranges, plus
// the examples of the payment-settlement writing rules and the variants.
#include <gtest/gtest.h>

#include <map>
#include <random>

#include "../expect_error.h"
#include "finmoe/amounts.h"

namespace {

using namespace finmoe;
using finmoe::test::message_of;

// The reference: digits left to right; a zero sets a pending 零 that the next
// nonzero digit writes; at the end of each 4-digit section its unit (万 for
// places 4 and 12, 亿 for place 8, when anything at or above is nonzero) is
// written and the pending 零 dropped (a zero run that ends a section before
// a nonzero 千位 is not written).
std::string reference_upper(int64_t cents) {
  static const char* d[] = {"零", "壹", "贰", "叁", "肆", "伍", "陆", "柒", "捌", "玖"};
  static const char* u[] = {"", "拾", "佰", "仟"};
  const std::string s = std::to_string(cents / 100);
  const int jiao = int(cents / 10 % 10), fen = int(cents % 10);
  std::string out;
  if (s != "0") {
    bool zero = false;
    const int len = int(s.size());
    for (int i = 0; i < len; ++i) {
      const int digit = s[size_t(i)] - '0', place = len - 1 - i;
      if (digit == 0) {
        zero = true;
      } else {
        if (zero) out += "零";
        zero = false;
        out += d[digit];
        out += u[place % 4];
      }
      if (place > 0 && place % 4 == 0) {
        const std::string high = s.substr(0, size_t(i + 1));
        const std::string group = s.substr(size_t(std::max(0, i - 3)), size_t(std::min(4, i + 1)));
        const bool group_nonzero = group.find_first_not_of('0') != std::string::npos;
        if (place == 8 ? high.find_first_not_of('0') != std::string::npos : group_nonzero) {
          out += place == 8 ? "亿" : "万";
          zero = false;
        }
      }
    }
    out += "元";
  }
  if (jiao == 0 && fen == 0) return out.empty() ? "零元整" : out + "整";
  if (jiao) out += std::string(d[jiao]) + "角";
  if (!jiao && s != "0") out += "零";
  if (fen) out += std::string(d[fen]) + "分";
  return out;
}

TEST(Amounts, EveryWholeAmountUpTo200000MatchesTheReferenceAndReadsBack) {
  for (int64_t n = 0; n <= 200000; ++n) {
    const std::string upper = amount_to_upper(n * 100);
    ASSERT_EQ(upper, reference_upper(n * 100)) << n;
    ASSERT_EQ(parse_upper_amount(upper), n * 100) << upper;
  }
}

TEST(Amounts, EveryCentValueBelow100MatchesTheReferenceAndReadsBack) {
  for (int64_t c = 0; c <= 9999; ++c) {
    const std::string upper = amount_to_upper(c);
    ASSERT_EQ(upper, reference_upper(c)) << c;
    ASSERT_EQ(parse_upper_amount(upper), c) << upper;
    ASSERT_EQ(parse_decimal_amount(cents_to_decimal(c)), c);
  }
}

TEST(Amounts, RandomLargeAmountsMatchTheReferenceAndReadBack) {
  std::mt19937_64 rng(7);
  for (int64_t max : {int64_t(100'000'000'000'000), kMaxAmountCents}) {
    std::uniform_int_distribution<int64_t> any(0, max);
    std::uniform_int_distribution<int> digits(1, 18);
    for (int i = 0; i < 100000; ++i) {
      // half uniform, half with a random number of digits and zeros sprinkled in
      int64_t c = any(rng);
      if (i % 2) {
        std::string s;
        const int n = digits(rng);
        for (int k = 0; k < n; ++k) s += char('0' + (rng() % 3 ? 0 : rng() % 10));
        c = std::min<int64_t>(std::stoll(s), max);
      }
      const std::string upper = amount_to_upper(c);
      ASSERT_EQ(upper, reference_upper(c)) << c;
      ASSERT_EQ(parse_upper_amount(upper), c) << upper;
    }
  }
}

// The examples of 《正确填写票据和结算凭证的基本规定》 and of YouZhi §3.3.
TEST(Amounts, ExamplesOfTheWritingRules) {
  EXPECT_EQ(amount_to_upper(140950), "壹仟肆佰零玖元伍角");
  EXPECT_EQ(amount_to_upper(600714), "陆仟零柒元壹角肆分");
  EXPECT_EQ(amount_to_upper(168032), "壹仟陆佰捌拾元叁角贰分");
  EXPECT_EQ(amount_to_upper(10700053), "壹拾万柒仟元伍角叁分");
  EXPECT_EQ(amount_to_upper(1640902), "壹万陆仟肆佰零玖元零贰分");
  EXPECT_EQ(amount_to_upper(32504), "叁佰贰拾伍元零肆分");
  EXPECT_EQ(amount_to_upper(15000), "壹佰伍拾元整");
  EXPECT_EQ(parse_upper_amount("壹佰伍拾元整"), 15000);
  // the optional 零 of rule (3), both ways
  EXPECT_EQ(parse_upper_amount("人民币壹仟陆佰捌拾元零叁角贰分"), 168032);
  EXPECT_EQ(parse_upper_amount("人民币壹拾万零柒仟元伍角叁分"), 10700053);
  EXPECT_EQ(parse_upper_amount("壹拾万柒仟元零伍角叁分"), 10700053);
  // sections and boundaries
  EXPECT_EQ(amount_to_upper(100000100 * 100LL), "壹亿零壹佰元整");
  EXPECT_EQ(amount_to_upper(100001000 * 100LL), "壹亿零壹仟元整");
  EXPECT_EQ(amount_to_upper(100010000 * 100LL), "壹亿零壹万元整");
  EXPECT_EQ(amount_to_upper(110000000 * 100LL), "壹亿壹仟万元整");
  EXPECT_EQ(amount_to_upper(1000000000000 * 100LL), "壹万亿元整");
  EXPECT_EQ(amount_to_upper(1000000000005 * 100LL), "壹万亿零伍元整");
  EXPECT_EQ(amount_to_upper(1001000000000 * 100LL), "壹万零壹拾亿元整");
  EXPECT_EQ(amount_to_upper(10010 * 100LL), "壹万零壹拾元整");
  EXPECT_EQ(amount_to_upper(50), "伍角");
  EXPECT_EQ(amount_to_upper(5), "伍分");
  EXPECT_EQ(amount_to_upper(0), "零元整");
  EXPECT_EQ(amount_to_upper(kMaxAmountCents),
            "玖仟玖佰玖拾玖万玖仟玖佰玖拾玖亿玖仟玖佰玖拾玖万玖仟玖佰玖拾玖元玖角玖分");
}

TEST(Amounts, CommonVariantsAreRead) {
  EXPECT_EQ(parse_upper_amount("拾元整"), 1000);
  EXPECT_EQ(parse_upper_amount("拾伍万圆正"), 15000000);
  EXPECT_EQ(parse_upper_amount("壹佰元"), 10000);
  EXPECT_EQ(parse_upper_amount("零元伍角"), 50);
  EXPECT_EQ(parse_upper_amount("伍角整"), 50);
  EXPECT_EQ(parse_upper_amount("壹元伍角伍分整"), 155);
  EXPECT_EQ(parse_upper_amount(" 人民币 壹萬 圓整 "), 1000000);
  EXPECT_EQ(parse_upper_amount("壹億貳仟萬元整"), 12000000000);
  EXPECT_EQ(parse_upper_amount("零元"), 0);
  std::mt19937_64 rng(3);
  for (int i = 0; i < 50000; ++i) {
    const int64_t c = sample_amount(AmountFamily(i % kAmountFamilies), rng);
    const std::string v = amount_upper_variant(c, rng);
    ASSERT_EQ(parse_upper_amount(v), c) << v;
  }
}

TEST(Amounts, MalformedUppercaseIsRefusedNamingTheCharacter) {
  const std::pair<const char*, const char*> bad[] = {
      {"", "no amount"},
      {"整", "no amount"},
      {"元整", "元 without an integer part"},
      {"壹佰", "no 元, 角 or 分"},
      {"壹佰零伍拾元整", "零 where no digit is zero"},
      {"壹元零伍角", "零 where no digit is zero"},
      {"壹零伍元", "零 right after a digit"},
      {"壹佰零元整", "零 not followed by a digit"},
      {"壹佰零零伍元", "零 not followed by a digit"},
      {"零伍分", "零 with no digit before it"},
      {"壹贰元", "two digits in a row"},
      {"壹拾贰佰元", "units out of order"},
      {"壹拾壹拾元", "units out of order"},
      {"万元整", "万 without a number before it"},
      {"壹万贰万元", "unexpected character"},
      {"伍分伍角", "digits out of order"},
      {"壹佰元整伍角", "整 before the end"},
      {"一百元整", "lowercase numeral"},
      {"1百元整", "Arabic digit"},
      {"佰元整", "a unit without a digit"},
      {"壹佰拾元整", "a unit without a digit"},
      {"壹元伍", "expected 角 or 分"},
  };
  for (const auto& [text, why] : bad) {
    const std::string m = message_of([&] { parse_upper_amount(text); });
    EXPECT_CONTAINS(m, why);
    EXPECT_CONTAINS(m, std::string("'") + text + "'");
  }
  EXPECT_CONTAINS(message_of([] { parse_upper_amount("壹佰\xff元"); }), "invalid UTF-8");
}

TEST(Amounts, NegativeAndTooLargeAmountsAreRefused) {
  EXPECT_CONTAINS(message_of([] { amount_to_upper(-1); }), "negative");
  EXPECT_CONTAINS(message_of([] { parse_decimal_amount("-5.00"); }), "negative");
  EXPECT_CONTAINS(message_of([] { amount_to_upper(kMaxAmountCents + 1); }), "below 10^16");
  EXPECT_CONTAINS(message_of([] { parse_decimal_amount("10000000000000000"); }), "below 10^16");
  EXPECT_EQ(parse_decimal_amount("9999999999999999.99"), kMaxAmountCents);
}

TEST(Amounts, DecimalNumbersAreReadStrictly) {
  EXPECT_EQ(parse_decimal_amount("1409.5"), 140950);
  EXPECT_EQ(parse_decimal_amount("1,409.50"), 140950);
  EXPECT_EQ(parse_decimal_amount("¥1409"), 140900);
  EXPECT_EQ(parse_decimal_amount("￥0.05"), 5);
  EXPECT_EQ(parse_decimal_amount("1,234,567元"), 123456700);
  EXPECT_EQ(parse_decimal_amount("007"), 700);
  for (const char* bad : {"", ".5", "1.", "1.234", "1,23", "12,3456", "1e5", "abc", "1 000", "+5"})
    EXPECT_CONTAINS(message_of([&] { parse_decimal_amount(bad); }), "amount '");
  EXPECT_EQ(cents_to_decimal(5), "0.05");
  EXPECT_EQ(cents_to_decimal(140950), "1409.50");
}

TEST(AmountPairs, FamiliesHaveTheirDefiningShapeAndAnswersAreExact) {
  AmountPairOptions o;
  o.n = 7000;
  o.seed = 11;
  const auto pairs = amount_pairs(o);
  ASSERT_EQ(pairs.size(), 7000u);
  std::map<std::string, int> per_family, per_task;
  for (const auto& p : pairs) {
    const std::string family = p["family"], amount = p["amount"], task = p["task"];
    const std::string user = p["messages"][0]["content"], answer = p["messages"][1]["content"];
    ++per_family[family];
    ++per_task[task];
    const int64_t c = parse_decimal_amount(amount);
    const int64_t yuan = c / 100, jiao = c / 10 % 10, fen = c % 10;
    if (task == "to_upper") {
      EXPECT_EQ(answer, reference_upper(c));
    } else {
      ASSERT_EQ(task, "to_number");
      EXPECT_EQ(answer, amount);
    }
    const std::string digits = std::to_string(yuan);
    if (family == "section_zeros") {
      EXPECT_LT(digits.find('0'), digits.find_last_not_of('0')) << amount;
    } else if (family == "boundary") {
      EXPECT_GE(yuan, 10000) << amount;
    } else if (family == "jiao_fen_only") {
      EXPECT_TRUE(c > 0 && c < 100) << amount;
    } else if (family == "jiao_zero") {
      EXPECT_TRUE(yuan > 0 && jiao == 0 && fen > 0) << amount;
    } else if (family == "yuan_zero") {
      EXPECT_TRUE(yuan > 0 && yuan % 10 == 0 && jiao > 0) << amount;
    } else if (family == "whole") {
      EXPECT_TRUE(yuan > 0 && c % 100 == 0) << amount;
    } else {
      EXPECT_EQ(family, "general");
    }
  }
  EXPECT_EQ(per_family.size(), size_t(kAmountFamilies));
  for (const auto& [f, n] : per_family) EXPECT_EQ(n, 1000) << f;
  EXPECT_NEAR(per_task["to_upper"], 3500, 300);
  // deterministic in the seed
  EXPECT_EQ(amount_pairs(o), pairs);
  o.seed = 12;
  EXPECT_NE(amount_pairs(o), pairs);
}

}  // namespace
