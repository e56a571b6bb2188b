#pragma once
// Chinese uppercase financial amounts (中文大写金额), as written on cheques,
// bills and invoices, and SFT pairs that teach them (YouZhi §3.3,
// "Domain-Specific Capability Data"). docs/data.md states the rules.
//
// Amounts are integers of 分 (cents): 0 <= cents < 10^18, i.e. an integer
// part below 10^16 (up to 玖仟玖佰玖拾玖万玖仟...亿). Negative amounts have no
// uppercase form and are refused. All functions are pure and thread-safe;
// bad input throws finmoe::Error naming the text and the position.
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace finmoe {

inline constexpr int64_t kMaxAmountCents = 999'999'999'999'999'999;  // integer part < 10^16

// The canonical uppercase form: 1409.50 -> 壹仟肆佰零玖元伍角,
// 325.04 -> 叁佰贰拾伍元零肆分, 0.5 -> 伍角, 100 -> 壹佰元整, 0 -> 零元整.
std::string amount_to_upper(int64_t cents);

// Reads an uppercase amount in the canonical form or a common variant:
// 人民币 prefix, 圆/圓 for 元, 正 for 整, 萬/億, 拾 without 壹 at the start,
// the optional 零 where the rules allow it (万位/元位 zero before a nonzero
// 千位/角位), 零元 before 角分, 整 after 角 or 分, a missing 整, spaces.
// Refuses anything else (a misplaced 零, units out of order, two digits in a
// row, lowercase numerals), naming the character.
int64_t parse_upper_amount(std::string_view text);

// "1409.50": always two decimals, no grouping.
std::string cents_to_decimal(int64_t cents);
// "1409.5", "1,409.50", "¥1409", "￥0.05", "1409元": at most two decimals,
// commas only in groups of three. Negative and too large amounts refused.
int64_t parse_decimal_amount(std::string_view text);

// Edge-case families the SFT generator samples from.
enum class AmountFamily {
  section_zeros,  // zeros inside a 4-digit section: 1001, 10.0100, 1.0010.0001
  boundary,       // 万/亿 boundaries: whole zero sections, x0000, 1.0000.0001
  jiao_fen_only,  // below one 元: 0.01 .. 0.99
  jiao_zero,      // 角 is 0, 分 is not: 元零X分
  yuan_zero,      // 元位 0 and 角 nonzero: 1680.32
  whole,          // no 角分: ...元整
  general,        // any size, log-uniform up to 10^12
};
inline constexpr int kAmountFamilies = 7;
const char* amount_family_name(AmountFamily f);

// One amount of the family.
int64_t sample_amount(AmountFamily family, std::mt19937_64& rng);

// An uppercase text for `cents` in a random accepted variant (for pairs that
// teach reading variants); parse_upper_amount reads it back to `cents`.
std::string amount_upper_variant(int64_t cents, std::mt19937_64& rng);

// `n` SFT records {"messages": [user, assistant], "task", "family",
// "amount"}: "to_upper" (number -> canonical uppercase) and "to_number"
// (uppercase, canonical or a variant when `variants` -> "1409.50"), the
// families in turn, prompts drawn from a few templates. Deterministic in seed.
struct AmountPairOptions {
  int64_t n = 1000;
  uint64_t seed = 0;
  double to_upper_share = 0.5;  // the rest is "to_number"
  bool variants = true;         // to_number prompts use variant spellings half the time
};
std::vector<nlohmann::json> amount_pairs(const AmountPairOptions& opt);
// The same records, one at a time (nothing held): what the CLI streams.
void amount_pairs(const AmountPairOptions& opt, const std::function<void(nlohmann::json&&)>& sink);

}  // namespace finmoe
