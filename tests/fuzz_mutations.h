#pragma once
// Seeded, structure-aware mutations of the files finmoe reads: JSON (a value
// anywhere in the tree replaced by an extreme number, another type, a deep
// nest, a long string; keys dropped or renamed), YAML (values, indentation,
// deep block and flow nests), and bytes (truncation, flips, invalid UTF-8).
// Shared by the loader fuzz tests; every mutation is a pure function of the
// generator's state, so a failing input is reproduced from its seed.
#include <cstdint>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace finmoe::test::fuzz {

using Rng = std::mt19937_64;

inline size_t pick(Rng& rng, size_t n) { return n == 0 ? 0 : size_t(rng() % n); }

// Number literals at and around the limits of every integer width, and
// floating values JSON cannot hold, as text.
inline const std::vector<std::string>& extreme_numbers() {
  static const std::vector<std::string> v = {"0",
                                             "-1",
                                             "1",
                                             "2",
                                             "-0",
                                             "0.5",
                                             "1e-308",
                                             "1e308",
                                             "-1e308",
                                             "1e999",
                                             "-1e999",
                                             "1e-999",
                                             "127",
                                             "128",
                                             "255",
                                             "256",
                                             "32767",
                                             "32768",
                                             "65535",
                                             "65536",
                                             "2147483647",
                                             "2147483648",
                                             "-2147483648",
                                             "-2147483649",
                                             "4294967295",
                                             "4294967296",
                                             "4294967297",
                                             "9007199254740993",
                                             "9223372036854775807",
                                             "9223372036854775808",
                                             "-9223372036854775808",
                                             "-9223372036854775809",
                                             "18446744073709551615",
                                             "18446744073709551616",
                                             "99999999999999999999999999",
                                             "1000000",
                                             "100000000",
                                             "2000000000",
                                             "3.0",
                                             "1.5",
                                             "1e6",
                                             "1e9",
                                             "-0.0",
                                             "0e0"};
  return v;
}

// Strings that other parsers read as numbers or special values.
inline const std::vector<std::string>& tricky_strings() {
  static const std::vector<std::string> v = {"",
                                             "NaN",
                                             "nan",
                                             "-nan",
                                             "Infinity",
                                             "-Infinity",
                                             "inf",
                                             "1e999",
                                             "0x10",
                                             "12",
                                             "-1",
                                             "true",
                                             "null",
                                             "../../outside/weights.bin",
                                             "/etc/passwd",
                                             "a/b.safetensors",
                                             "..",
                                             ".",
                                             "model.safetensors",
                                             "F32",
                                             "BF16",
                                             "llama",
                                             "qwen2_moe",
                                             "default",
                                             "yarn",
                                             "\u00e9\u4e2d\U0001F600",
                                             std::string(1, '\0'),
                                             "<s>",
                                             "</s>",
                                             "\xE2\x96\x81"};
  return v;
}

// `depth` nested arrays (or objects) around `core`.
inline std::string nest(size_t depth, bool objects, const std::string& core = "0") {
  std::string s;
  for (size_t i = 0; i < depth; ++i) s += objects ? "{\"k\":" : "[";
  s += core;
  for (size_t i = 0; i < depth; ++i) s += objects ? "}" : "]";
  return s;
}

// A JSON value as text that nlohmann cannot always hold (1e999, -0.0 kept as
// written), or a structural extreme.
inline std::string extreme_json(Rng& rng) {
  switch (pick(rng, 9)) {
    case 0:
    case 1:
    case 2:
      return extreme_numbers()[pick(rng, extreme_numbers().size())];
    case 3:
      return nlohmann::json(tricky_strings()[pick(rng, tricky_strings().size())]).dump();
    case 4: {
      static const size_t depths[] = {2, 8, 63, 64, 65, 100, 1000, 100000};
      return nest(depths[pick(rng, std::size(depths))], rng() % 2);
    }
    case 5:
      return std::string(pick(rng, 2) ? "[]" : "{}");
    case 6:
      return pick(rng, 3) == 0 ? "null" : (pick(rng, 2) ? "true" : "false");
    case 7: {  // a long array or string
      if (rng() % 2) return "\"" + std::string(size_t(1) << (10 + pick(rng, 8)), 'x') + "\"";
      std::string a = "[";
      const size_t n = size_t(1) << (4 + pick(rng, 12));
      for (size_t i = 0; i < n; ++i) a += (i ? ",1" : "1");
      return a + "]";
    }
    default:
      return "[" + extreme_numbers()[pick(rng, extreme_numbers().size())] + "," +
             extreme_numbers()[pick(rng, extreme_numbers().size())] + "]";
  }
}

// Every value of `j` in document order, with the JSON pointer to it.
inline void collect_paths(const nlohmann::ordered_json& j, const nlohmann::json::json_pointer& at,
                          std::vector<nlohmann::json::json_pointer>& out) {
  out.push_back(at);
  if (j.is_object()) {
    for (const auto& [k, v] : j.items()) collect_paths(v, at / k, out);
  } else if (j.is_array()) {
    for (size_t i = 0; i < j.size(); ++i) collect_paths(j[i], at / i, out);
  }
}

// Replaces the text of one value of `doc` (serialized with a placeholder)
// by `text`: lets a mutation write what nlohmann cannot represent.
inline std::string splice(nlohmann::ordered_json doc, const nlohmann::json::json_pointer& at,
                          const std::string& text) {
  static const std::string kMark = "\x01@finmoe-fuzz@\x01";
  if (at.empty()) return text;
  doc[at] = kMark;
  std::string s = doc.dump();
  const std::string quoted = nlohmann::json(kMark).dump();
  const size_t p = s.find(quoted);
  return p == std::string::npos ? s : s.replace(p, quoted.size(), text);
}

// One structure-aware edit of the JSON document `doc`; returns its text.
// `hot` lists keys worth hitting more often (e.g. the size fields).
inline std::string mutate_json_tree(const nlohmann::ordered_json& doc, Rng& rng,
                                    const std::vector<std::string>& hot = {}) {
  std::vector<nlohmann::json::json_pointer> paths;
  collect_paths(doc, nlohmann::json::json_pointer(), paths);
  nlohmann::json::json_pointer at = paths[pick(rng, paths.size())];
  if (!hot.empty() && rng() % 2) {  // a hot key anywhere in the tree
    const std::string& key = hot[pick(rng, hot.size())];
    std::vector<nlohmann::json::json_pointer> hits;
    for (const auto& p : paths)
      if (!p.empty() && p.back() == key) hits.push_back(p);
    if (!hits.empty()) at = hits[pick(rng, hits.size())];
  }
  nlohmann::ordered_json out = doc;
  const nlohmann::ordered_json& v = out[at];
  switch (pick(rng, 8)) {
    case 0:
    case 1:
    case 2:
      return splice(out, at, extreme_json(rng));
    case 3: {  // another type holding the same information
      nlohmann::ordered_json w;
      if (v.is_number())
        w = v.dump();
      else if (v.is_string())
        w = nlohmann::ordered_json::array({v});
      else if (v.is_array())
        w = nlohmann::ordered_json::object({{"0", v.empty() ? nullptr : v[0]}});
      else if (v.is_object())
        w = nlohmann::ordered_json::array({v});
      else
        w = 0;
      out[at] = w;
      return out.dump();
    }
    case 4: {  // drop the value (a key or an element)
      if (at.empty()) return "";
      const auto parent = at.parent_pointer();
      const std::string last = at.back();
      if (out[parent].is_object())
        out[parent].erase(last);
      else if (out[parent].is_array() && !out[parent].empty())
        out[parent].erase(std::stoul(last) % out[parent].size());
      return out.dump();
    }
    case 5: {  // rename a key / duplicate it with another value (text level)
      if (at.empty() || !out[at.parent_pointer()].is_object()) return splice(out, at, "null");
      std::string s = out.dump();
      const std::string key = nlohmann::json(at.back()).dump() + ":";
      const size_t p = s.find(key);
      if (p == std::string::npos) return s;
      if (rng() % 2) return s.insert(p, key + extreme_json(rng) + ",");
      return s.replace(p, key.size(), nlohmann::json(at.back() + "_x").dump() + ":");
    }
    case 6: {  // a number nudged by one, or scaled to the edge of its width
      if (!v.is_number_integer()) return splice(out, at, extreme_json(rng));
      const int64_t n = v.get<int64_t>();
      static const int64_t scales[] = {-1, 2, 1000, 1 << 20, int64_t(1) << 31, int64_t(1) << 40};
      if (rng() % 2)
        out[at] = n + (rng() % 2 ? 1 : -1);
      else
        out[at] = n * scales[pick(rng, std::size(scales))];
      return out.dump();
    }
    default: {  // wrap the value in a deep nest
      return splice(out, at, nest(size_t(1) << pick(rng, 8), rng() % 2, v.dump()));
    }
  }
}

// Invalid UTF-8 sequences: a stray continuation byte, an overlong NUL, a
// surrogate, a truncated 4-byte sequence, bytes that never occur.
inline std::string invalid_utf8(Rng& rng) {
  static const char* bad[] = {"\x80", "\xC0\x80", "\xED\xA0\x80", "\xF0\x9F\x98",
                              "\xFF", "\xFE",     "\xC3",         "\xE2\x82"};
  return bad[pick(rng, std::size(bad))];
}

// One byte-level edit: truncation, a flipped bit, an inserted invalid UTF-8
// sequence, a deleted or duplicated run, a structural character.
inline void mutate_bytes(std::string& s, Rng& rng) {
  const size_t p = pick(rng, s.size() + 1);
  switch (pick(rng, 6)) {
    case 0:
      s.resize(p);
      break;
    case 1:
      if (!s.empty()) s[p % s.size()] ^= char(1u << pick(rng, 8));
      break;
    case 2:
      s.insert(p, invalid_utf8(rng));
      break;
    case 3:
      s.erase(p, 1 + pick(rng, 16));
      break;
    case 4:
      s.insert(p, s.substr(p, 1 + pick(rng, 64)));
      break;
    default: {
      static const char structural[] = "[]{},:\"\\ \n\t-#&*!|>?'0";
      s.insert(p, 1, structural[pick(rng, sizeof(structural) - 1)]);
    }
  }
}

// A mutated JSON document: mostly tree edits, sometimes followed by byte edits.
inline std::string mutate_json(const nlohmann::ordered_json& doc, Rng& rng,
                               const std::vector<std::string>& hot = {}) {
  std::string s = mutate_json_tree(doc, rng, hot);
  if (pick(rng, 4) == 0) {
    const size_t edits = 1 + pick(rng, 3);
    for (size_t e = 0; e < edits; ++e) mutate_bytes(s, rng);
  }
  return s;
}

// One edit of YAML text: a value replaced by an extreme, a key renamed, an
// indentation changed, a deep block or flow nest, an anchor/alias, a tab.
inline std::string mutate_yaml(const std::string& yaml, Rng& rng) {
  std::vector<std::string> lines;
  size_t pos = 0;
  while (pos <= yaml.size()) {
    size_t end = yaml.find('\n', pos);
    if (end == std::string::npos) end = yaml.size();
    lines.push_back(yaml.substr(pos, end - pos));
    pos = end + 1;
  }
  std::string& line = lines[pick(rng, lines.size())];
  const size_t colon = line.find(": ");
  static const char* values[] = {"-1",
                                 "0",
                                 "1e999",
                                 "-1e999",
                                 ".nan",
                                 ".inf",
                                 "-.inf",
                                 "9223372036854775808",
                                 "18446744073709551616",
                                 "4294967297",
                                 "2147483648",
                                 "0x7fffffffffffffff",
                                 "~",
                                 "null",
                                 "[]",
                                 "{}",
                                 "[1, 2]",
                                 "'unterminated",
                                 "\"\\x\"",
                                 "|",
                                 ">",
                                 "*alias",
                                 "&a [*a]",
                                 "!!binary AAAA",
                                 "? [a]",
                                 "true",
                                 "yes",
                                 "\"\"",
                                 "1.5",
                                 "1e6",
                                 "- a"};
  switch (pick(rng, 9)) {
    case 0:
    case 1:
    case 2:
      if (colon != std::string::npos)
        line = line.substr(0, colon + 2) + values[pick(rng, std::size(values))];
      else
        line += values[pick(rng, std::size(values))];
      break;
    case 3: {  // a deep flow nest as a value
      static const size_t depths[] = {10, 63, 65, 100, 5000};
      const size_t d = depths[pick(rng, std::size(depths))];
      const bool curly = rng() % 2;
      std::string v = curly ? nest(d, true, "1") : nest(d, false, "1");
      if (colon != std::string::npos)
        line = line.substr(0, colon + 2) + v;
      else
        line = v;
      break;
    }
    case 4: {  // a deep block nest: compact sequences, or indented mappings
      static const size_t depths[] = {10, 63, 65, 200, 3000};
      const size_t d = depths[pick(rng, std::size(depths))];
      std::string v;
      if (rng() % 2) {
        for (size_t i = 0; i < d; ++i) v += "- ";
        v += "x";
      } else {
        for (size_t i = 0; i < d; ++i) v += std::string(i, ' ') + "k" + std::to_string(i) + ":\n";
        v += std::string(d, ' ') + "x";
      }
      line = v;
      break;
    }
    case 5: {  // indentation
      const size_t add = pick(rng, 5);
      if (rng() % 2)
        line.insert(0, add, ' ');
      else
        line.erase(0, std::min(line.find_first_not_of(' '), add));
      break;
    }
    case 6:
      line.insert(pick(rng, line.size() + 1), 1, '\t');
      break;
    case 7: {  // a key renamed or turned into a collection
      if (colon == std::string::npos) break;
      const size_t k = line.find_first_not_of(' ');
      static const char* keys[] = {"[a]",    "{a: 1}",       "? x", "unknown_key",
                                   "\"lr\"", "data.seq_len", "<<"};
      line = line.substr(0, k) + keys[pick(rng, std::size(keys))] + line.substr(colon);
      break;
    }
    default: {
      std::string s = line;
      mutate_bytes(s, rng);
      line = s;
    }
  }
  std::string out;
  for (size_t i = 0; i < lines.size(); ++i) out += (i ? "\n" : "") + lines[i];
  return out;
}

}  // namespace finmoe::test::fuzz
