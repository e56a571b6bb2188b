// Chinese uppercase amounts: the canonical writer (a recursion over 亿, 万 and
// 4-digit sections), a reader that accepts the documented variants, and the
// SFT pair generator. Rules: docs/data.md "amounts".
#include "finmoe/amounts.h"

#include <algorithm>
#include <array>
#include <cmath>

#include "finmoe/error.h"

namespace finmoe {

namespace {

constexpr std::array<const char*, 10> kDigit = {"零", "壹", "贰", "叁", "肆",
                                                "伍", "陆", "柒", "捌", "玖"};
constexpr std::array<const char*, 4> kUnit = {"", "拾", "佰", "仟"};

int64_t pow10(int e) {
  int64_t p = 1;
  while (e-- > 0) p *= 10;
  return p;
}

void check_range(int64_t cents) {
  if (cents < 0)
    throw Error("amount " + std::to_string(cents) +
                " cents: negative amounts have no uppercase form");
  if (cents > kMaxAmountCents)
    throw Error("amount " + std::to_string(cents) + " cents: the integer part must be below 10^16");
}

// 0 < n < 10^4, without leading 零: 1001 -> 壹仟零壹, 1010 -> 壹仟零壹拾.
std::string section_text(int64_t n) {
  std::string s;
  bool zero = false;
  for (int place = 3; place >= 0; --place) {
    const int d = int(n / pow10(place) % 10);
    if (d == 0) {
      zero = !s.empty();
      continue;
    }
    if (zero) s += kDigit[0];
    zero = false;
    s += kDigit[d];
    s += kUnit[place];
  }
  return s;
}

std::string integer_text(int64_t n);

// The part below a 万 or 亿 unit: nothing when zero; a 零 first when its
// leading digit is zero (a zero run crossing the boundary).
std::string tail_text(int64_t lo, int64_t base) {
  if (lo == 0) return "";
  return (lo < base / 10 ? std::string(kDigit[0]) : std::string()) + integer_text(lo);
}

// 0 < n < 10^16.
std::string integer_text(int64_t n) {
  if (n >= 100'000'000)
    return integer_text(n / 100'000'000) + "亿" + tail_text(n % 100'000'000, 100'000'000);
  if (n >= 10'000) return section_text(n / 10'000) + "万" + tail_text(n % 10'000, 10'000);
  return section_text(n);
}

// ---- reading

std::u32string decode_utf8(std::string_view s, std::string_view what) {
  std::u32string out;
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (len == 0 || i + size_t(len) > s.size())
      throw Error(std::string(what) + ": invalid UTF-8 at byte " + std::to_string(i));
    char32_t cp = len == 1 ? c : c & (0x7f >> len);
    for (int k = 1; k < len; ++k) {
      const unsigned char cc = static_cast<unsigned char>(s[i + size_t(k)]);
      if ((cc >> 6) != 2)
        throw Error(std::string(what) + ": invalid UTF-8 at byte " + std::to_string(i));
      cp = (cp << 6) | (cc & 0x3f);
    }
    out += cp;
    i += size_t(len);
  }
  return out;
}

std::string encode_utf8(char32_t c) {
  std::string s;
  if (c < 0x80) {
    s += char(c);
  } else if (c < 0x800) {
    s += char(0xc0 | (c >> 6));
    s += char(0x80 | (c & 0x3f));
  } else if (c < 0x10000) {
    s += char(0xe0 | (c >> 12));
    s += char(0x80 | ((c >> 6) & 0x3f));
    s += char(0x80 | (c & 0x3f));
  } else {
    s += char(0xf0 | (c >> 18));
    s += char(0x80 | ((c >> 12) & 0x3f));
    s += char(0x80 | ((c >> 6) & 0x3f));
    s += char(0x80 | (c & 0x3f));
  }
  return s;
}

int digit_of(char32_t c) {
  static constexpr char32_t kDigits[10] = {U'零', U'壹', U'贰', U'叁', U'肆',
                                           U'伍', U'陆', U'柒', U'捌', U'玖'};
  for (int d = 1; d < 10; ++d)
    if (kDigits[d] == c) return d;
  return -1;
}

int unit_of(char32_t c) { return c == U'拾' ? 1 : c == U'佰' ? 2 : c == U'仟' ? 3 : -1; }

struct Token {
  int digit;   // 1..9, or 0 for a written 零
  int place;   // power of ten of the digit in 元 (角 -1, 分 -2); unused for 零
  size_t pos;  // character index in the normalised text, for messages
};

class Reader {
 public:
  explicit Reader(std::string_view text) : text_(text) {}

  int64_t read() {
    std::u32string raw = decode_utf8(text_, quoted());
    // variants: traditional forms and 圆 for 元, 正 for 整; white space dropped
    for (char32_t c : raw) {
      if (c == U' ' || c == U'\t' || c == U'\u3000') continue;
      if (c == U'圆' || c == U'圓') c = U'元';
      if (c == U'萬') c = U'万';
      if (c == U'億') c = U'亿';
      if (c == U'正') c = U'整';
      if (c == U'貳') c = U'贰';
      if (c == U'陸') c = U'陆';
      s_ += c;
    }
    size_t b = 0, e = s_.size();
    if (s_.compare(0, 3, U"人民币") == 0 || s_.compare(0, 3, U"人民幣") == 0) b = 3;
    if (e > b && s_[e - 1] == U'整') --e;
    if (b == e) fail(b, "no amount");
    const size_t yuan = s_.find(U'元', b);
    if (yuan != std::u32string::npos && yuan >= e) fail(yuan, "元 after 整");
    std::vector<Token> tokens;
    if (yuan == std::u32string::npos) {
      // only 角 and 分
      if (s_.find(U'角', b) == std::u32string::npos && s_.find(U'分', b) == std::u32string::npos)
        fail(e, "no 元, 角 or 分");
      fraction(b, e, tokens);
    } else {
      if (yuan == b) fail(yuan, "元 without an integer part before it");
      if (!(yuan == b + 1 && s_[b] == U'零')) {  // 零元: integer part 0
        int_start_ = b;
        by_yi(b, yuan, 0, tokens);
      }
      fraction(yuan + 1, e, tokens);
    }
    return value(tokens);
  }

 private:
  std::string quoted() const { return "uppercase amount '" + std::string(text_) + "'"; }

  [[noreturn]] void fail(size_t pos, const std::string& what) const {
    std::string at;
    if (pos < s_.size())
      at = " at '" + encode_utf8(s_[pos]) + "' (character " + std::to_string(pos + 1) + ")";
    else
      at = " at the end";
    throw Error(quoted() + ": " + what + at);
  }

  void by_yi(size_t b, size_t e, int offset, std::vector<Token>& out) {
    const size_t k = s_.find(U'亿', b);
    if (k == std::u32string::npos || k >= e) return by_wan(b, e, offset, out);
    if (k == b) fail(k, "亿 without a number before it");
    by_wan(b, k, offset + 8, out);
    by_wan(k + 1, e, offset, out);
  }

  void by_wan(size_t b, size_t e, int offset, std::vector<Token>& out) {
    const size_t k = s_.find(U'万', b);
    if (k == std::u32string::npos || k >= e) return section(b, e, offset, out);
    if (k == b) fail(k, "万 without a number before it");
    section(b, k, offset + 4, out);
    section(k + 1, e, offset, out);
  }

  // Digits with 仟/佰/拾 in falling order and 零s; a last digit without a unit is
  // the section's ones.
  void section(size_t b, size_t e, int offset, std::vector<Token>& out) {
    int pending = -1;
    size_t pending_pos = b;
    int last_unit = 4;
    for (size_t i = b; i < e; ++i) {
      const char32_t c = s_[i];
      if (c == U'零') {
        if (pending >= 0) fail(i, "零 right after a digit");
        if (i + 1 >= e || digit_of(s_[i + 1]) < 0) fail(i, "零 not followed by a digit");
        out.push_back({0, 0, i});
        continue;
      }
      if (const int d = digit_of(c); d > 0) {
        if (pending >= 0) fail(i, "two digits in a row");
        pending = d;
        pending_pos = i;
        continue;
      }
      const int u = unit_of(c);
      if (u < 0) {
        if (c >= U'0' && c <= U'9') fail(i, "an Arabic digit");
        if (std::u32string_view(U"一二三四五六七八九十百千两〇").find(c) !=
            std::u32string_view::npos)
          fail(i, "a lowercase numeral (uppercase is 壹贰叁肆伍陆柒捌玖拾佰仟)");
        fail(i, "unexpected character");
      }
      if (pending < 0) {
        // 拾 alone at the start of the amount means 壹拾
        if (!(u == 1 && i == int_start_)) fail(i, "a unit without a digit before it");
        pending = 1;
        pending_pos = i;
      }
      if (u >= last_unit) fail(i, "units out of order");
      out.push_back({pending, offset + u, pending_pos});
      last_unit = u;
      pending = -1;
    }
    if (pending >= 0) out.push_back({pending, offset, pending_pos});
  }

  void fraction(size_t b, size_t e, std::vector<Token>& out) {
    for (size_t i = b; i < e; ++i) {
      const char32_t c = s_[i];
      if (c == U'零') {
        if (i + 1 >= e || digit_of(s_[i + 1]) < 0) fail(i, "零 not followed by a digit");
        out.push_back({0, 0, i});
        continue;
      }
      const int d = digit_of(c);
      if (d < 0) fail(i, c == U'整' ? "整 before the end" : "expected a digit of 角 or 分");
      if (i + 1 >= e || (s_[i + 1] != U'角' && s_[i + 1] != U'分'))
        fail(i + 1, "expected 角 or 分 after a digit");
      out.push_back({d, s_[i + 1] == U'角' ? -1 : -2, i});
      ++i;
    }
  }

  // Places must fall; a 零 stands between two digits with at least one zero
  // digit between them.
  int64_t value(const std::vector<Token>& t) const {
    int64_t cents = 0;
    for (size_t i = 0; i < t.size(); ++i) {
      if (t[i].digit == 0) {
        if (i == 0 || t[i - 1].digit == 0) fail(t[i].pos, "零 with no digit before it");
        if (i + 1 >= t.size() || t[i + 1].digit == 0) fail(t[i].pos, "零 with no digit after it");
        if (t[i - 1].place - t[i + 1].place < 2) fail(t[i].pos, "零 where no digit is zero");
        continue;
      }
      int prev = -1;
      for (size_t j = i; j-- > 0;)
        if (t[j].digit != 0) {
          prev = int(j);
          break;
        }
      if (prev >= 0 && t[size_t(prev)].place <= t[i].place) fail(t[i].pos, "digits out of order");
      cents += t[i].digit * pow10(t[i].place + 2);
    }
    return cents;
  }

  std::string_view text_;
  std::u32string s_;
  size_t int_start_ = std::u32string::npos;
};

}  // namespace

std::string amount_to_upper(int64_t cents) {
  check_range(cents);
  const int64_t yuan = cents / 100;
  const int jiao = int(cents / 10 % 10), fen = int(cents % 10);
  if (cents == 0) return "零元整";
  std::string s;
  if (yuan > 0) s = integer_text(yuan) + "元";
  if (jiao == 0 && fen == 0) return s + "整";
  if (jiao > 0)
    s += std::string(kDigit[jiao]) + "角";
  else if (yuan > 0)
    s += kDigit[0];  // 元零X分
  if (fen > 0) s += std::string(kDigit[fen]) + "分";
  return s;
}

int64_t parse_upper_amount(std::string_view text) { return Reader(text).read(); }

std::string cents_to_decimal(int64_t cents) {
  check_range(cents);
  std::string f = std::to_string(cents % 100);
  return std::to_string(cents / 100) + "." + (f.size() == 1 ? "0" + f : f);
}

int64_t parse_decimal_amount(std::string_view text) {
  const std::string what = "amount '" + std::string(text) + "'";
  std::string_view s = text;
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  for (std::string_view p : {"¥", "￥"})
    if (s.starts_with(p)) s.remove_prefix(p.size());
  if (s.ends_with("元")) s.remove_suffix(std::string_view("元").size());
  if (s.starts_with("-")) throw Error(what + ": negative amounts have no uppercase form");
  const size_t dot = s.find('.');
  std::string_view ip = s.substr(0, dot),
                   fp = dot == std::string_view::npos ? "" : s.substr(dot + 1);
  if (ip.empty()) throw Error(what + ": expected digits before the decimal point");
  if (dot != std::string_view::npos && (fp.empty() || fp.size() > 2))
    throw Error(what + ": expected one or two decimals (角 and 分)");
  for (char c : fp)
    if (c < '0' || c > '9') throw Error(what + ": expected a number like 1409.50");
  std::string digits;
  if (ip.find(',') != std::string_view::npos) {
    // groups of three after the first
    size_t start = 0;
    for (size_t g = 0;; ++g) {
      const size_t comma = ip.find(',', start);
      const std::string_view group =
          ip.substr(start, comma == std::string_view::npos ? ip.npos : comma - start);
      if (group.empty() || group.size() > 3 || (g > 0 && group.size() != 3))
        throw Error(what + ": commas must separate groups of three digits");
      digits += group;
      if (comma == std::string_view::npos) break;
      start = comma + 1;
    }
  } else {
    digits = ip;
  }
  for (char c : digits)
    if (c < '0' || c > '9') throw Error(what + ": expected a number like 1409.50");
  const size_t first = digits.find_first_not_of('0');
  const std::string sig = first == std::string::npos ? "0" : digits.substr(first);
  if (sig.size() > 16) throw Error(what + ": the integer part must be below 10^16");
  int64_t cents = std::stoll(sig) * 100;
  if (!fp.empty()) cents += (fp[0] - '0') * 10 + (fp.size() > 1 ? fp[1] - '0' : 0);
  return cents;
}

// ---- pairs

const char* amount_family_name(AmountFamily f) {
  switch (f) {
    case AmountFamily::section_zeros:
      return "section_zeros";
    case AmountFamily::boundary:
      return "boundary";
    case AmountFamily::jiao_fen_only:
      return "jiao_fen_only";
    case AmountFamily::jiao_zero:
      return "jiao_zero";
    case AmountFamily::yuan_zero:
      return "yuan_zero";
    case AmountFamily::whole:
      return "whole";
    case AmountFamily::general:
      return "general";
  }
  return "?";
}

namespace {

int64_t uniform(std::mt19937_64& rng, int64_t lo, int64_t hi) {  // [lo, hi]
  return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
}

// log-uniform in [1, max]
int64_t log_uniform(std::mt19937_64& rng, int64_t max) {
  const double e = std::uniform_real_distribution<double>(0.0, std::log(double(max)))(rng);
  return std::clamp<int64_t>(int64_t(std::exp(e)), 1, max);
}

}  // namespace

int64_t sample_amount(AmountFamily family, std::mt19937_64& rng) {
  switch (family) {
    case AmountFamily::section_zeros: {
      // 4..12 digits, each zero with probability 1/2, with a zero run between
      // two nonzero digits
      for (;;) {
        const int len = int(uniform(rng, 4, 12));
        std::string d(1, char('1' + uniform(rng, 0, 8)));
        for (int i = 1; i < len; ++i)
          d += uniform(rng, 0, 1) ? char('1' + uniform(rng, 0, 8)) : '0';
        const size_t last = d.find_last_not_of('0');
        if (d.find('0') < last) {
          const int64_t cents = uniform(rng, 0, 1) ? 0 : uniform(rng, 1, 99);
          return std::stoll(d) * 100 + cents;
        }
      }
    }
    case AmountFamily::boundary: {
      const int k = int(uniform(rng, 1, 3));  // 万, 亿, 万亿
      const int64_t base = pow10(4 * k);
      const int64_t hi = uniform(rng, 0, 1) ? uniform(rng, 1, 9) * pow10(int(uniform(rng, 0, 3)))
                                            : uniform(rng, 1, 9999);
      int64_t lo = 0;
      switch (uniform(rng, 0, 3)) {
        case 0:
          lo = 0;
          break;
        case 1:
          lo = log_uniform(rng, base / 10 - 1);
          break;  // leading zeros below the unit
        case 2:
          lo = uniform(rng, 1, 9) * (base / 10);
          break;  // nonzero right after the unit
        default:
          lo = k > 1 ? uniform(rng, 1, 9999) * pow10(4 * (k - 1)) : uniform(rng, 1, 999);
          break;
      }
      const int64_t cents = uniform(rng, 0, 2) ? 0 : uniform(rng, 1, 99);
      return (hi * base + lo) * 100 + cents;
    }
    case AmountFamily::jiao_fen_only:
      return uniform(rng, 1, 99);
    case AmountFamily::jiao_zero:
      return log_uniform(rng, 100'000'000) * 100 + uniform(rng, 1, 9);
    case AmountFamily::yuan_zero:
      return log_uniform(rng, 10'000'000) * 1000 + uniform(rng, 1, 9) * 10 + uniform(rng, 0, 9);
    case AmountFamily::whole:
      return log_uniform(rng, 1'000'000'000'000) * 100;
    case AmountFamily::general:
      return uniform(rng, 0, 49) == 0 ? 0 : log_uniform(rng, 100'000'000'000'000);
  }
  return 0;
}

std::string amount_upper_variant(int64_t cents, std::mt19937_64& rng) {
  std::string s = amount_to_upper(cents);
  auto coin = [&](int percent) { return uniform(rng, 0, 99) < percent; };
  auto replace_all = [&](const std::string& from, const std::string& to) {
    for (size_t p = 0; (p = s.find(from, p)) != std::string::npos; p += to.size())
      s.replace(p, from.size(), to);
  };
  const int64_t yuan = cents / 100;
  const int jiao = int(cents / 10 % 10), fen = int(cents % 10);
  // the optional 零 (rule: 万位 or 元位 zero before a nonzero 千位 or 角位)
  if (yuan > 0 && yuan % 10 == 0 && jiao > 0 && coin(50)) {
    const size_t p = s.find("元");
    s.insert(p + std::string("元").size(), "零");
  }
  if (coin(50)) {
    for (const char* unit : {"万", "亿"}) {
      const std::string u = unit;
      for (size_t p = s.find(u); p != std::string::npos; p = s.find(u, p + u.size())) {
        const std::string before = p >= 3 ? s.substr(p - 3, 3) : "";
        const size_t q = p + u.size();
        // unit preceded by 拾/佰/仟/万 (its ones digit is 0), followed by X仟
        const bool ones_zero = before == "拾" || before == "佰" || before == "仟" || before == "万";
        if (ones_zero && q + 6 <= s.size() && s.substr(q + 3, 3) == "仟" &&
            s.substr(q, 3) != "零") {
          s.insert(q, "零");
          break;
        }
      }
    }
  }
  if (yuan == 0 && cents > 0 && coin(30)) s = "零元" + s;
  if (s.starts_with("壹拾") && coin(50)) s.erase(0, std::string("壹").size());
  if (fen == 0 && jiao > 0 && coin(30)) s += "整";
  if (s.ends_with("整") && cents > 0 && coin(20)) s.resize(s.size() - std::string("整").size());
  if (coin(30)) replace_all("元", "圆");
  if (coin(30)) replace_all("整", "正");
  if (coin(40)) s = "人民币" + s;
  return s;
}

std::vector<nlohmann::json> amount_pairs(const AmountPairOptions& opt) {
  std::vector<nlohmann::json> out;
  amount_pairs(opt, [&](nlohmann::json&& r) { out.push_back(std::move(r)); });
  return out;
}

void amount_pairs(const AmountPairOptions& opt, const std::function<void(nlohmann::json&&)>& sink) {
  if (opt.n < 0) throw Error("amount pairs: n must be >= 0");
  if (!(opt.to_upper_share >= 0.0 && opt.to_upper_share <= 1.0))
    throw Error("amount pairs: the to_upper share must be in [0, 1]");
  static const std::array<const char*, 4> kToUpper = {
      "请将金额{num}元转换为中文大写金额。", "把¥{num}写成支票和发票上使用的大写金额。",
      "{num}元的人民币大写怎么写？",
      "Write the amount {num} yuan in Chinese uppercase (大写金额) as on a cheque."};
  static const std::array<const char*, 4> kToNumber = {
      "将大写金额“{upper}”转换为阿拉伯数字金额，保留两位小数。",
      "发票上的大写金额是{upper}，对应的小写金额是多少？",
      "支票大写“{upper}”等于多少元？请只写数字，保留两位小数。",
      "Write the Chinese uppercase amount {upper} as a number with two decimals."};
  std::mt19937_64 rng(opt.seed);
  auto fill = [](std::string t, const std::string& key, const std::string& value) {
    t.replace(t.find(key), key.size(), value);
    return t;
  };
  for (int64_t i = 0; i < opt.n; ++i) {
    const auto family = AmountFamily(i % kAmountFamilies);
    const int64_t cents = sample_amount(family, rng);
    const std::string number = cents_to_decimal(cents);
    const bool to_upper =
        std::uniform_real_distribution<double>(0.0, 1.0)(rng) < opt.to_upper_share;
    std::string user, answer;
    if (to_upper) {
      // the number as people write it: 1409.50, 1,409.50 or 1409.5
      std::string shown = number;
      const int64_t style = uniform(rng, 0, 2);
      if (style == 1) {
        std::string ip = number.substr(0, number.find('.'));
        for (int p = int(ip.size()) - 3; p > 0; p -= 3) ip.insert(size_t(p), ",");
        shown = ip + number.substr(number.find('.'));
      } else if (style == 2) {
        while (shown.back() == '0') shown.pop_back();
        if (shown.back() == '.') shown.pop_back();
      }
      user = fill(kToUpper[size_t(uniform(rng, 0, 3))], "{num}", shown);
      answer = amount_to_upper(cents);
    } else {
      const std::string upper = opt.variants && uniform(rng, 0, 1)
                                    ? amount_upper_variant(cents, rng)
                                    : amount_to_upper(cents);
      user = fill(kToNumber[size_t(uniform(rng, 0, 3))], "{upper}", upper);
      answer = number;
    }
    sink({{"messages",
           {{{"role", "user"}, {"content", user}}, {{"role", "assistant"}, {"content", answer}}}},
          {"task", to_upper ? "to_upper" : "to_number"},
          {"family", amount_family_name(family)},
          {"amount", number}});
  }
}

}  // namespace finmoe
