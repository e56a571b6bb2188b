// Response filters of generate_until tasks (lm-eval's `filter_list`): named
// pipelines of steps that turn a document's generations into the answer a
// metric scores, with lm-eval's semantics per step (docs/eval.md).
#include <algorithm>
#include <map>
#include <optional>
#include <regex>

#include "eval/py_regex.h"
#include "finmoe/error.h"
#include "finmoe/eval.h"

namespace finmoe::eval {

namespace {

using nlohmann::json;

// Python's str.strip(): Unicode whitespace at both ends of UTF-8 text.
size_t space_len_at(const std::string& s, size_t i) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  if ((c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20)) return 1;
  auto at = [&](std::initializer_list<unsigned char> seq) {
    if (i + seq.size() > s.size()) return false;
    size_t k = 0;
    for (unsigned char b : seq)
      if (static_cast<unsigned char>(s[i + k++]) != b) return false;
    return true;
  };
  if (at({0xC2, 0x85}) || at({0xC2, 0xA0})) return 2;
  if (at({0xE1, 0x9A, 0x80}) || at({0xE3, 0x80, 0x80}) || at({0xE2, 0x80, 0xA8}) ||
      at({0xE2, 0x80, 0xA9}) || at({0xE2, 0x80, 0xAF}) || at({0xE2, 0x81, 0x9F}))
    return 3;
  if (i + 3 <= s.size() && static_cast<unsigned char>(s[i]) == 0xE2 &&
      static_cast<unsigned char>(s[i + 1]) == 0x80 && static_cast<unsigned char>(s[i + 2]) <= 0x8A)
    return 3;  // U+2000..U+200A
  return 0;
}

std::string py_strip(const std::string& s) {
  size_t b = 0;
  while (b < s.size()) {
    const size_t n = space_len_at(s, b);
    if (!n) break;
    b += n;
  }
  size_t e = s.size();
  while (e > b) {  // the last code point: step back over continuation bytes
    size_t k = e - 1;
    while (k > b && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
    if (space_len_at(s, k) != e - k) break;
    e = k;
  }
  return s.substr(b, e - b);
}

// lm-eval's patterns are Python `re`; std::regex reads ECMAScript. The
// Python-only spellings lm-eval task files use are rewritten: leading
// inline flags `(?i)`, named groups `(?P<name>...)`, `\A` / `\Z`.
}  // namespace

std::regex python_regex(std::string p, const std::string& where) {
  auto flags = std::regex::ECMAScript;
  bool dotall = false;
  while (p.size() >= 4 && p.compare(0, 2, "(?") == 0) {
    const size_t close = p.find(')');
    const std::string f = p.substr(2, close - 2);
    if (close == std::string::npos || f.empty() || f.find_first_not_of("ims") != std::string::npos)
      break;
    if (f.find('i') != std::string::npos) flags |= std::regex::icase;
    if (f.find('m') != std::string::npos) flags |= std::regex::multiline;
    dotall |= f.find('s') != std::string::npos;
    p.erase(0, close + 1);
  }
  std::string out;
  bool in_class = false;  // inside [...], where `.` is a dot
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] == '\\' && i + 1 < p.size()) {
      if (in_class) {
        out += p.substr(i, 2);
      } else if (p[i + 1] == 'A') {
        out += '^';
      } else if (p[i + 1] == 'Z') {
        out += '$';
      } else {
        out += p.substr(i, 2);
      }
      ++i;
    } else if (in_class) {
      in_class = p[i] != ']';
      out += p[i];
    } else if (p[i] == '[') {
      in_class = true;
      out += p[i];
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += "\\]", ++i;  // Python: a leading ] is literal
    } else if (p[i] == '.' && dotall) {
      out += "[\\s\\S]";  // (?s): any character, newlines too
    } else if (p.compare(i, 4, "(?P<") == 0) {
      const size_t close = p.find('>', i);
      if (close == std::string::npos) throw Error(where + ": unterminated (?P<name> group");
      out += '(';
      i = close;
    } else if (p.compare(i, 4, "(?P=") == 0) {
      throw Error(where + ": named back-references (?P=name) are not supported");
    } else {
      out += p[i];
    }
  }
  try {
    return std::regex(out, flags);
  } catch (const std::regex_error& e) {
    throw Error(where + ": pattern '" + p + "' is not a valid regular expression: " + e.what());
  }
}

namespace {

struct Step {
  std::string function;
  std::string where;
  // regex
  std::optional<std::regex> re;
  int64_t group_select = 0;
  std::string fallback = "[invalid]";
  // map
  std::map<std::string, std::string> mapping;
  std::optional<std::string> default_value;
  // take_first_k
  int64_t k = 0;
};

std::string opt_string(const json& o, const char* key, const std::string& where) {
  const json& v = o.at(key);
  if (!v.is_string()) throw Error(where + ": option '" + key + "' must be a string");
  return v.get<std::string>();
}

int64_t opt_int(const json& o, const char* key, const std::string& where) {
  const json& v = o.at(key);
  if (!v.is_number_integer()) throw Error(where + ": option '" + key + "' must be an integer");
  return v.get<int64_t>();
}

void only_options(const json& o, std::initializer_list<const char*> known,
                  const std::string& where) {
  for (auto it = o.begin(); it != o.end(); ++it)
    if (std::none_of(known.begin(), known.end(), [&](const char* k) { return it.key() == k; })) {
      std::string list;
      for (const char* k : known) list += std::string(list.empty() ? "" : ", ") + k;
      throw Error(where + ": unknown option '" + it.key() + "' (" +
                  (list.empty() ? std::string("it takes none") : "known: " + list) + ")");
    }
}

// Python's re.findall: the whole match without groups, group 1 with one,
// the first non-empty group with several (lm-eval's tuple handling).
std::vector<std::optional<std::string>> findall(const std::regex& re, const std::string& s) {
  std::vector<std::optional<std::string>> out;
  const size_t groups = re.mark_count();
  for (auto it = std::sregex_iterator(s.begin(), s.end(), re); it != std::sregex_iterator(); ++it) {
    const std::smatch& m = *it;
    if (groups == 0) {
      out.emplace_back(m.str(0));
    } else if (groups == 1) {
      out.emplace_back(m.str(1));
    } else {
      std::optional<std::string> first;
      for (size_t g = 1; g <= groups && !first; ++g)
        if (m[g].matched && m[g].length() > 0) first = m.str(g);
      out.push_back(first);  // nullopt: every group empty -> the fallback
    }
  }
  return out;
}

}  // namespace

struct ResponseFilter::Impl {
  std::string name;
  std::vector<Step> steps;
};

ResponseFilter::ResponseFilter(const FilterPipeline& p, int64_t repeats, const std::string& where) {
  auto impl = std::make_shared<Impl>();
  impl->name = p.name;
  const std::string pw = where + ": filter_list '" + p.name + "'";
  if (p.steps.empty()) throw Error(pw + ": 'filter' has no steps");
  int64_t n = repeats;  // responses per document as the pipeline goes; 0 = one answer (a string)
  for (size_t i = 0; i < p.steps.size(); ++i) {
    const FilterStep& fs = p.steps[i];
    Step s;
    s.function = fs.function;
    s.where = pw + ", step " + std::to_string(i + 1) + " (" + fs.function + ")";
    const json& o = fs.options;
    if (n == 0)
      throw Error(s.where + ": comes after take_first, which already left one answer per document");
    if (fs.function == "regex") {
      only_options(o, {"regex_pattern", "group_select", "fallback"}, s.where);
      // lm-eval's default pattern: GSM8K's "#### <number>"
      const std::string pat = o.contains("regex_pattern") ? opt_string(o, "regex_pattern", s.where)
                                                          : std::string(R"(#### (\-?[0-9\.\,]+))");
      s.re = python_regex(pat, s.where);
      if (o.contains("group_select")) s.group_select = opt_int(o, "group_select", s.where);
      if (o.contains("fallback")) s.fallback = opt_string(o, "fallback", s.where);
    } else if (fs.function == "take_first") {
      only_options(o, {}, s.where);
      n = 0;
    } else if (fs.function == "take_first_k") {
      only_options(o, {"k"}, s.where);
      if (!o.contains("k")) throw Error(s.where + ": needs the option 'k'");
      s.k = opt_int(o, "k", s.where);
      if (s.k < 1 || s.k > n)
        throw Error(s.where + ": k = " + std::to_string(s.k) + " but there are " +
                    std::to_string(n) + " responses per document (set the task's 'repeats')");
      n = s.k;
    } else if (fs.function == "majority_vote") {
      only_options(o, {}, s.where);
      if (repeats < 2)
        throw Error(s.where +
                    ": votes over the 'repeats' responses of a document; the task has "
                    "repeats: " +
                    std::to_string(repeats) + " (set 'repeats' to 2 or more)");
      n = 1;
    } else if (fs.function == "lowercase" || fs.function == "uppercase" ||
               fs.function == "remove_whitespace") {
      only_options(o, {}, s.where);
    } else if (fs.function == "map") {
      only_options(o, {"mapping_dict", "default_value"}, s.where);
      if (o.contains("mapping_dict")) {
        const json& m = o.at("mapping_dict");
        if (!m.is_object())
          throw Error(s.where + ": 'mapping_dict' must map response strings to strings");
        for (auto it = m.begin(); it != m.end(); ++it) {
          if (!it.value().is_string())
            throw Error(s.where + ": mapping_dict value of '" + it.key() + "' must be a string");
          s.mapping[it.key()] = it.value().get<std::string>();
        }
      }
      if (o.contains("default_value") && !o.at("default_value").is_null())
        s.default_value = opt_string(o, "default_value", s.where);
    } else {
      throw Error(s.where + ": unknown filter function '" + fs.function +
                  "' (known: regex, take_first, take_first_k, majority_vote, lowercase, "
                  "uppercase, remove_whitespace, map)");
    }
    impl->steps.push_back(std::move(s));
  }
  if (n != 0)
    throw Error(pw +
                ": the pipeline must end with take_first so each document has one answer to "
                "score (lm-eval's pipelines end the same way)");
  impl_ = std::move(impl);
}

const std::string& ResponseFilter::name() const { return impl_->name; }

std::string ResponseFilter::apply(std::vector<std::string> r) const {
  for (const Step& s : impl_->steps) {
    if (s.function == "take_first") return r.at(0);
    if (s.function == "take_first_k") {
      r.resize(size_t(s.k));
    } else if (s.function == "majority_vote") {
      // collections.Counter.most_common(1): the highest count, ties to the first seen
      std::vector<std::pair<std::string, int64_t>> counts;
      for (const auto& x : r) {
        auto it =
            std::find_if(counts.begin(), counts.end(), [&](const auto& c) { return c.first == x; });
        if (it == counts.end())
          counts.emplace_back(x, 1);
        else
          ++it->second;
      }
      auto best = counts.begin();
      for (auto it = counts.begin(); it != counts.end(); ++it)
        if (it->second > best->second) best = it;
      r = {best->first};
    } else {
      for (auto& x : r) {
        if (s.function == "regex") {
          const auto matches = findall(*s.re, x);
          if (matches.empty()) {
            x = s.fallback;
            continue;
          }
          const int64_t n = int64_t(matches.size());
          const int64_t g = s.group_select < 0 ? n + s.group_select : s.group_select;
          if (g < 0 || g >= n)  // lm-eval stops with an IndexError here
            throw Error(s.where + ": group_select " + std::to_string(s.group_select) +
                        " but the response has " + std::to_string(n) + " match(es): " +
                        json(x).dump(-1, ' ', false, json::error_handler_t::replace));
          x = matches[size_t(g)] ? py_strip(*matches[size_t(g)]) : s.fallback;
        } else if (s.function == "lowercase" || s.function == "uppercase") {
          for (char& c : x)
            c = char(s.function == "lowercase" ? std::tolower(static_cast<unsigned char>(c))
                                               : std::toupper(static_cast<unsigned char>(c)));
        } else if (s.function == "remove_whitespace") {
          x = py_strip(x);
        } else if (s.function == "map") {
          const auto it = s.mapping.find(x);
          if (it != s.mapping.end()) {
            x = it->second;
          } else if (s.default_value) {
            x = *s.default_value;
          } else {
            throw Error(s.where + ": no mapping for " +
                        json(x).dump(-1, ' ', false, json::error_handler_t::replace) +
                        " and no 'default_value'");
          }
        }
      }
    }
  }
  throw Error(impl_->name + ": the pipeline ended without take_first");  // checked when built
}

}  // namespace finmoe::eval
