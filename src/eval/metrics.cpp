// Per-document metrics as lm-eval defines them, the generation scorers, and
// lm-eval's rolling token windows.
#include <algorithm>
#include <cmath>
#include <regex>

#include "eval/py_regex.h"
#include "finmoe/error.h"
#include "finmoe/eval.h"

namespace finmoe::eval {

namespace {

using nlohmann::json;

// Python's len(str): Unicode code points of UTF-8 text.
int64_t code_points(const std::string& s) {
  int64_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

// One code point at s[i] (advancing i); malformed bytes are returned as is.
uint32_t next_cp(const std::string& s, size_t& i) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
  if (i + size_t(len) > s.size()) len = 1;
  uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
  for (int k = 1; k < len; ++k)
    cp = (cp << 6) | (static_cast<unsigned char>(s[i + size_t(k)]) & 0x3F);
  i += size_t(len);
  return cp;
}

// Python's str.isspace / re's \s for str patterns.
bool py_space(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

std::string lower_ascii(std::string s) {
  for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string strip_ws(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\r\n\f\v");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r\n\f\v") - b + 1);
}

bool flag(const json& kw, const char* key) {
  return kw.contains(key) && kw.at(key).is_boolean() && kw.at(key).get<bool>();
}

// HF evaluate's exact_match: regexes_to_ignore, ignore_case, ignore_punctuation
// (string.punctuation), ignore_numbers, in that order; finmoe adds `strip`.
std::string normalize_em(std::string s, const json& kw) {
  if (flag(kw, "strip")) s = strip_ws(s);
  if (kw.contains("regexes_to_ignore")) {
    const json& r = kw.at("regexes_to_ignore");
    for (const auto& p : (r.is_array() ? r : json::array({r})))
      s = std::regex_replace(
          s, python_regex(p.get<std::string>(), "metric exact_match, regexes_to_ignore"), "");
  }
  if (flag(kw, "ignore_case")) s = lower_ascii(s);
  if (flag(kw, "ignore_punctuation"))
    s.erase(
        std::remove_if(s.begin(), s.end(),
                       [](char c) { return c > 0 && std::ispunct(static_cast<unsigned char>(c)); }),
        s.end());
  if (flag(kw, "ignore_numbers"))
    s.erase(std::remove_if(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; }),
            s.end());
  return s;
}

const std::regex& number_re() {
  static const std::regex re(
      R"([-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+)");
  return re;
}

std::optional<double> parse_number(const std::string& s, bool last) {
  std::optional<double> out;
  for (auto it = std::sregex_iterator(s.begin(), s.end(), number_re());
       it != std::sregex_iterator(); ++it) {
    std::string m = it->str();
    m.erase(std::remove(m.begin(), m.end(), ','), m.end());
    out = std::stod(m);
    if (!last) break;
  }
  return out;
}

// The first balanced {...} in s that parses as JSON.
std::optional<json> first_json_object(const std::string& s) {
  for (size_t b = s.find('{'); b != std::string::npos; b = s.find('{', b + 1)) {
    int depth = 0;
    bool in_str = false;
    for (size_t i = b; i < s.size(); ++i) {
      const char c = s[i];
      if (in_str) {
        if (c == '\\')
          ++i;
        else if (c == '"')
          in_str = false;
        continue;
      }
      if (c == '"')
        in_str = true;
      else if (c == '{')
        ++depth;
      else if (c == '}' && --depth == 0) {
        try {
          return json::parse(s.substr(b, i - b + 1));
        } catch (const json::exception&) {
          break;
        }
      }
    }
  }
  return std::nullopt;
}

std::string need_kw(const MetricSpec& m, const char* key) {
  if (!m.kwargs.contains(key) || !m.kwargs.at(key).is_string())
    throw Error("metric " + m.name + " needs the string option '" + key + "'");
  return m.kwargs.at(key).get<std::string>();
}

double num_kw(const MetricSpec& m, const char* key, double def) {
  if (!m.kwargs.contains(key)) return def;
  if (!m.kwargs.at(key).is_number())
    throw Error("metric " + m.name + ": option '" + key + "' must be a number");
  return m.kwargs.at(key).get<double>();
}

bool numbers_close(double p, double r, const MetricSpec& m) {
  const double tol =
      std::max(num_kw(m, "tolerance", 1e-6), num_kw(m, "rel_tolerance", 0) * std::fabs(r));
  return std::fabs(p - r) <= tol;
}

}  // namespace

ChoiceScores score_choices(const std::vector<double>& lls, const std::vector<std::string>& choices,
                           int64_t gold) {
  if (lls.size() != choices.size() || lls.empty())
    throw Error("score_choices: " + std::to_string(lls.size()) + " log-likelihoods for " +
                std::to_string(choices.size()) + " choices");
  ChoiceScores s;
  int64_t pred_bytes = 0;
  double best = -INFINITY, best_norm = -INFINITY, best_bytes = -INFINITY;
  for (size_t i = 0; i < lls.size(); ++i) {  // np.argmax: the first maximum
    const double norm = lls[i] / double(code_points(choices[i]));
    const double by = lls[i] / double(choices[i].size());
    if (lls[i] > best) best = lls[i], s.pred = int64_t(i);
    if (norm > best_norm) best_norm = norm, s.pred_norm = int64_t(i);
    if (by > best_bytes) best_bytes = by, pred_bytes = int64_t(i);
  }
  s.acc = s.pred == gold;
  s.acc_norm = s.pred_norm == gold;
  s.acc_bytes = pred_bytes == gold;
  return s;
}

double score_generation(const MetricSpec& m, const std::string& prediction,
                        const std::string& reference) {
  if (m.name == "exact_match")
    return normalize_em(prediction, m.kwargs) == normalize_em(reference, m.kwargs) ? 1.0 : 0.0;
  if (m.name == "regex_match") {
    const std::string pat = need_kw(m, "pattern");
    const std::regex re =
        python_regex(flag(m.kwargs, "ignore_case") ? "(?i)" + pat : pat, "metric regex_match");
    std::smatch sm;
    if (!std::regex_search(prediction, sm, re)) return 0.0;
    const size_t g = size_t(num_kw(m, "group", sm.size() > 1 ? 1 : 0));
    if (g >= sm.size())
      throw Error("metric regex_match: the pattern has no group " + std::to_string(g));
    std::string got = strip_ws(sm[g].str()), want = strip_ws(reference);
    if (flag(m.kwargs, "ignore_case")) got = lower_ascii(got), want = lower_ascii(want);
    return got == want ? 1.0 : 0.0;
  }
  if (m.name == "numeric") {
    const auto want = parse_number(reference, false);
    if (!want) throw Error("metric numeric: the reference '" + reference + "' holds no number");
    const auto got = parse_number(prediction, !flag(m.kwargs, "first"));
    return got && numbers_close(*got, *want, m) ? 1.0 : 0.0;
  }
  if (m.name == "json_field") {
    const std::string field = need_kw(m, "field");
    const auto obj = first_json_object(prediction);
    if (!obj) return 0.0;
    const json* v = &*obj;
    size_t pos = 0;
    while (pos <= field.size()) {
      const size_t dot = std::min(field.find('.', pos), field.size());
      const std::string key = field.substr(pos, dot - pos);
      if (!v->is_object() || !v->contains(key)) return 0.0;
      v = &v->at(key);
      pos = dot + 1;
    }
    if (v->is_number()) {
      const auto want = parse_number(reference, false);
      return want && numbers_close(v->get<double>(), *want, m) ? 1.0 : 0.0;
    }
    std::string got = v->is_string() ? v->get<std::string>() : v->dump();
    std::string want = reference;
    got = strip_ws(got), want = strip_ws(want);
    if (flag(m.kwargs, "ignore_case")) got = lower_ascii(got), want = lower_ascii(want);
    return got == want ? 1.0 : 0.0;
  }
  throw Error("unknown generation metric '" + m.name + "'");
}

int64_t count_words(const std::string& text) {
  int64_t runs = 0;
  bool in_space = false;
  for (size_t i = 0; i < text.size();) {
    const bool sp = py_space(next_cp(text, i));
    if (sp && !in_space) ++runs;
    in_space = sp;
  }
  return runs + 1;
}

std::vector<std::pair<std::vector<int32_t>, std::vector<int32_t>>> rolling_windows(
    const std::vector<int32_t>& tokens, int32_t prefix_token, int64_t max_seq_len,
    int64_t context_len) {
  if (context_len < 1 || context_len > max_seq_len)
    throw Error("rolling windows: context_len must be in [1, " + std::to_string(max_seq_len) +
                "], got " + std::to_string(context_len));
  std::vector<std::pair<std::vector<int32_t>, std::vector<int32_t>>> out;
  if (tokens.empty()) return out;
  const int64_t n = int64_t(tokens.size());
  const int64_t pred_len = max_seq_len - context_len + 1;
  auto slice = [&](int64_t b, int64_t e) {
    b = std::max<int64_t>(b, 0);
    return std::vector<int32_t>(tokens.begin() + b, tokens.begin() + std::max(b, e));
  };
  // (input, predicted) as lm-eval yields them, then made disjoint:
  // context = input[: len(input) - (len(pred) - 1)]
  auto push = [&](std::vector<int32_t> input, std::vector<int32_t> pred) {
    input.resize(input.size() - (pred.size() - 1));
    out.emplace_back(std::move(input), std::move(pred));
  };
  const int64_t first = std::min(max_seq_len, n);
  std::vector<int32_t> input{prefix_token};
  auto head = slice(0, first - 1);
  input.insert(input.end(), head.begin(), head.end());
  push(std::move(input), slice(0, first));
  int64_t predicted = first;
  while (predicted < n) {
    const int64_t w = std::min(n - predicted, pred_len);
    const int64_t end = predicted + w;
    push(slice(end - max_seq_len - 1, end - 1), slice(end - w, end));
    predicted += w;
  }
  return out;
}

}  // namespace finmoe::eval
