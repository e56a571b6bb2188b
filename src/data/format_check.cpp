// Output-format constraints and their checker (finmoe/format_check.h).
#include "finmoe/format_check.h"

#include <random>

#include "data/jsonl.h"

#include "finmoe/config.h"
#include "finmoe/error.h"

namespace finmoe {

namespace {

std::string trim(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && std::string_view(" \t\r\n").find(s[b]) != std::string_view::npos) ++b;
  while (e > b && std::string_view(" \t\r\n").find(s[e - 1]) != std::string_view::npos) --e;
  return std::string(s.substr(b, e - b));
}

std::vector<std::string> lines_of(std::string_view s) {
  std::vector<std::string> out;
  size_t b = 0;
  for (;;) {
    const size_t e = s.find('\n', b);
    out.push_back(trim(s.substr(b, e == std::string_view::npos ? s.npos : e - b)));
    if (e == std::string_view::npos) break;
    b = e + 1;
  }
  return out;
}

int64_t code_points(std::string_view s) {
  int64_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

int64_t words(std::string_view s) {
  int64_t n = 0;
  bool in = false;
  for (char c : s) {
    const bool space = c == ' ' || c == '\t' || c == '\n' || c == '\r';
    n += !space && !in;
    in = !space;
  }
  return n;
}

int64_t int_field(const nlohmann::json& c, const char* key, int64_t def) {
  if (!c.contains(key)) return def;
  if (!c[key].is_number_integer() || c[key].get<int64_t>() < 0)
    throw Error(std::string("format constraint: '") + key + "' must be a non-negative integer");
  return c[key].get<int64_t>();
}

// Cells of a Markdown table row, or empty when the line is not a row.
std::vector<std::string> cells(const std::string& line) {
  if (line.find('|') == std::string::npos) return {};
  std::string s = line;
  if (!s.empty() && s.front() == '|') s.erase(0, 1);
  if (!s.empty() && s.back() == '|') s.pop_back();
  std::vector<std::string> out;
  std::string cur;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size() && s[i + 1] == '|') {  // an escaped pipe is cell text
      cur += "\\|";
      ++i;
    } else if (s[i] == '|') {
      out.push_back(trim(cur));
      cur.clear();
    } else {
      cur += s[i];
    }
  }
  out.push_back(trim(cur));
  return out;
}

bool separator_row(const std::vector<std::string>& c) {
  if (c.empty()) return false;
  for (const auto& x : c) {
    std::string_view v = x;
    if (v.starts_with(':')) v.remove_prefix(1);
    if (v.ends_with(':')) v.remove_suffix(1);
    if (v.size() < 3 || v.find_first_not_of('-') != std::string_view::npos) return false;
  }
  return true;
}

bool bullet_line(const std::string& l) {
  if (l.starts_with("- ") || l.starts_with("* ") || l.starts_with("• ")) return true;
  size_t i = 0;
  while (i < l.size() && l[i] >= '0' && l[i] <= '9') ++i;
  if (i == 0 || i > 3) return false;
  return l.compare(i, 2, ". ") == 0 || l.compare(i, 3, "、") == 0 || l.compare(i, 2, ") ") == 0;
}

FormatVerdict fail(std::string why) { return {false, std::move(why)}; }

}  // namespace

std::string format_type(const nlohmann::json& c) {
  if (!c.is_object() || !c.contains("type") || !c["type"].is_string())
    throw Error("format constraint: expected an object with a string 'type'");
  const std::string t = c["type"];
  if (t != "json_keys" && t != "markdown_table" && t != "bullets" && t != "length")
    throw Error("format constraint: unknown type '" + t +
                "' (json_keys, markdown_table, bullets, length)");
  return t;
}

FormatVerdict check_format(const nlohmann::json& c, std::string_view output) {
  const std::string type = format_type(c);
  const std::string out = trim(output);
  if (type == "json_keys") {
    if (!c.contains("keys") || !c["keys"].is_array() || c["keys"].empty())
      throw Error("format constraint json_keys: 'keys' must be a non-empty array of strings");
    for (const auto& k : c["keys"])
      if (!k.is_string()) throw Error("format constraint json_keys: 'keys' must be strings");
    if (c.contains("exact") && !c["exact"].is_boolean())
      throw Error("format constraint json_keys: 'exact' must be a boolean");
    std::string body = out;
    if (body.starts_with("```")) {
      const size_t nl = body.find('\n');
      const size_t end = body.rfind("```");
      if (nl == std::string::npos || end <= nl) return fail("unclosed code fence");
      if (trim(std::string_view(body).substr(end + 3)) != "")
        return fail("text after the code fence");
      body = body.substr(nl + 1, end - nl - 1);
    }
    nlohmann::json j;
    try {
      j = parse_json(body, "output");
    } catch (const Error&) {
      return fail("not valid JSON");
    }
    if (!j.is_object()) return fail("JSON is not an object");
    for (const auto& k : c["keys"])
      if (!j.contains(k.get<std::string>()))
        return fail("missing key '" + k.get<std::string>() + "'");
    if (c.value("exact", false) && j.size() != c["keys"].size())
      return fail("keys other than the required ones");
    return {true, ""};
  }
  if (type == "markdown_table") {
    const int64_t columns = int_field(c, "columns", 0), min_rows = int_field(c, "min_rows", 1);
    const auto ls = lines_of(out);
    for (size_t i = 0; i + 1 < ls.size(); ++i) {
      const auto head = cells(ls[i]);
      if (head.size() < 2 || !separator_row(cells(ls[i + 1])) ||
          cells(ls[i + 1]).size() != head.size())
        continue;
      if (columns > 0 && int64_t(head.size()) != columns)
        return fail("table has " + std::to_string(head.size()) + " columns, expected " +
                    std::to_string(columns));
      int64_t rows = 0;
      for (size_t k = i + 2; k < ls.size() && !cells(ls[k]).empty(); ++k) {
        if (cells(ls[k]).size() != head.size())
          return fail("row " + std::to_string(rows + 1) + " has another cell count");
        ++rows;
      }
      if (rows < min_rows)
        return fail("table has " + std::to_string(rows) + " rows, expected at least " +
                    std::to_string(min_rows));
      return {true, ""};
    }
    return fail("no Markdown table (header row and |---| separator)");
  }
  if (type == "bullets") {
    if (!c.contains("count")) throw Error("format constraint bullets: 'count' is required");
    const int64_t want = int_field(c, "count", 0);
    int64_t n = 0;
    for (const auto& l : lines_of(out)) n += bullet_line(l);
    if (n != want)
      return fail(std::to_string(n) + " bullet points, expected " + std::to_string(want));
    return {true, ""};
  }
  // length
  const int64_t min_c = int_field(c, "min_chars", 0), max_c = int_field(c, "max_chars", INT64_MAX);
  const int64_t min_w = int_field(c, "min_words", 0), max_w = int_field(c, "max_words", INT64_MAX);
  const int64_t nc = code_points(out), nw = words(out);
  if (nc < min_c || nc > max_c)
    return fail(std::to_string(nc) + " characters, expected " + std::to_string(min_c) + ".." +
                (max_c == INT64_MAX ? "" : std::to_string(max_c)));
  if (nw < min_w || nw > max_w)
    return fail(std::to_string(nw) + " words, expected " + std::to_string(min_w) + ".." +
                (max_w == INT64_MAX ? "" : std::to_string(max_w)));
  return {true, ""};
}

std::vector<std::string> split_sentences(std::string_view text) {
  std::vector<std::string> out;
  std::string cur;
  auto flush = [&] {
    std::string t = trim(cur);
    if (!t.empty()) out.push_back(t);
    cur.clear();
  };
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '\n') {
      flush();
      continue;
    }
    cur += c;
    if (c == '.' || c == '!' || c == '?' || c == ';') {
      if (i + 1 >= text.size() || text[i + 1] == ' ' || text[i + 1] == '\n') flush();
      continue;
    }
    for (std::string_view end : {"。", "！", "？", "；"})
      if (cur.ends_with(end)) {
        flush();
        break;
      }
  }
  flush();
  return out;
}

bool make_formatted(const std::string& type, const std::string& prompt, const std::string& answer,
                    uint64_t seed, FormattedExample* out) {
  std::mt19937_64 rng(seed);
  bool chinese = false;
  for (unsigned char ch : prompt)
    chinese |= ch >= 0xE4 && ch <= 0xE9;  // CJK unified ideographs lead bytes
  auto pick = [&](const std::vector<std::string>& v) { return v[rng() % v.size()]; };
  const std::string a = trim(answer);
  if (a.empty()) return false;
  if (type == "json_keys") {
    const std::string key = pick({"answer", "response", "result"});
    out->constraint = {{"type", "json_keys"}, {"keys", {key}}, {"exact", true}};
    out->instruction = chinese
                           ? pick({"请以JSON对象输出答案，只包含键\"" + key + "\"。",
                                   "输出格式：JSON，唯一的键为\"" + key + "\"。"})
                           : pick({"Answer as a JSON object with the single key \"" + key + "\".",
                                   "Output format: JSON with exactly one key, \"" + key + "\"."});
    out->answer =
        nlohmann::json{{key, a}}.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    return true;
  }
  const auto sentences = split_sentences(a);
  if (type == "bullets") {
    if (sentences.size() < 2 || sentences.size() > 10) return false;
    const int64_t n = int64_t(sentences.size());
    out->constraint = {{"type", "bullets"}, {"count", n}};
    out->instruction =
        chinese ? pick({"请用" + std::to_string(n) + "个要点回答，每个要点以\"- \"开头。",
                        "分" + std::to_string(n) + "条列出，使用Markdown列表。"})
                : pick({"Answer in exactly " + std::to_string(n) +
                            " bullet points starting with \"- \".",
                        "Use a Markdown list of " + std::to_string(n) + " items."});
    out->answer.clear();
    for (const auto& s : sentences) out->answer += "- " + s + "\n";
    out->answer.pop_back();
    return true;
  }
  if (type == "markdown_table") {
    if (sentences.size() < 2 || sentences.size() > 20) return false;
    out->constraint = {
        {"type", "markdown_table"}, {"columns", 2}, {"min_rows", int64_t(sentences.size())}};
    out->instruction =
        chinese ? pick({"请用两列的Markdown表格回答（序号、要点）。",
                        "以Markdown表格输出，列为“序号”和“要点”。"})
                : pick({"Answer as a Markdown table with two columns (No., Point).",
                        "Format the answer as a two-column Markdown table: No. and Point."});
    out->answer = chinese ? "| 序号 | 要点 |\n|---|---|" : "| No. | Point |\n|---|---|";
    for (size_t i = 0; i < sentences.size(); ++i) {
      std::string cell = sentences[i];
      for (size_t p = 0; (p = cell.find('|', p)) != std::string::npos; p += 2)
        cell.replace(p, 1, "\\|");
      out->answer += "\n| " + std::to_string(i + 1) + " | " + cell + " |";
    }
    return true;
  }
  if (type == "length") {
    const int64_t n = code_points(a);
    const int64_t limit = (n / 50 + 1) * 50;  // the next multiple of 50 above the answer
    out->constraint = {{"type", "length"}, {"max_chars", limit}};
    out->instruction =
        chinese ? pick({"回答不超过" + std::to_string(limit) + "个字。",
                        "请将回答控制在" + std::to_string(limit) + "字以内。"})
                : pick({"Answer in at most " + std::to_string(limit) + " characters.",
                        "Keep the answer under " + std::to_string(limit) + " characters."});
    out->answer = a;
    return true;
  }
  throw Error("format: unknown type '" + type + "' (json_keys, markdown_table, bullets, length)");
}

}  // namespace finmoe

// ---- JSONL

namespace finmoe {

namespace {

// Indices of the last user message and the last assistant message after it.
bool sft_turns(const nlohmann::json& rec, size_t* user, size_t* assistant) {
  if (!rec.is_object() || !rec.contains("messages") || !rec["messages"].is_array()) return false;
  const auto& m = rec["messages"];
  int64_t a = -1, u = -1;
  for (size_t i = m.size(); i-- > 0;) {
    if (!m[i].is_object() || !m[i].contains("role") || !m[i].contains("content") ||
        !m[i]["content"].is_string())
      return false;
    if (a < 0 && m[i]["role"] == "assistant")
      a = int64_t(i);
    else if (a >= 0 && m[i]["role"] == "user") {
      u = int64_t(i);
      break;
    }
  }
  if (a < 0 || u < 0) return false;
  *user = size_t(u);
  *assistant = size_t(a);
  return true;
}

}  // namespace

FormatMakeResult make_format_jsonl(const std::string& in, const std::string& out,
                                   const FormatMakeOptions& opt,
                                   const std::function<void(const std::string&)>& on_skip,
                                   const std::function<void(int64_t)>& progress) {
  double total_w = 0;
  for (const auto& [t, w] : opt.weights) {
    format_type({{"type", t}});
    if (!(w >= 0)) throw Error("format: the weight of '" + t + "' must be >= 0");
    total_w += w;
  }
  if (!(total_w > 0)) throw Error("format: give at least one type a positive weight");
  data::JsonlReader reader(in, opt.skip_bad);
  reader.on_skip = on_skip;
  data::JsonlWriter writer(out);
  std::mt19937_64 rng(opt.seed);
  FormatMakeResult r;
  nlohmann::json rec;
  while (reader.next(rec)) {
    if (progress && reader.records() % 1024 == 0) progress(reader.bytes_read());
    size_t u = 0, a = 0;
    std::string prompt, answer;
    nlohmann::json messages;
    if (sft_turns(rec, &u, &a)) {
      messages = rec["messages"];
      prompt = messages[u]["content"];
      answer = messages[a]["content"];
      messages.erase(messages.begin() + int64_t(a) + 1, messages.end());
    } else if (rec.is_object() && rec.contains("instruction") && rec["instruction"].is_string() &&
               rec.contains("output") && rec["output"].is_string()) {
      prompt = rec["instruction"].get<std::string>();
      if (rec.contains("input") && rec["input"].is_string() &&
          !rec["input"].get<std::string>().empty())
        prompt += "\n" + rec["input"].get<std::string>();
      answer = rec["output"];
      messages = {{{"role", "user"}, {"content", prompt}},
                  {{"role", "assistant"}, {"content", answer}}};
      u = 0;
      a = 1;
    } else {
      reader.bad_record(
          "expected 'messages' with a user and an assistant turn, or 'instruction' and 'output'");
      continue;
    }
    // a type drawn by weight among those the answer can take
    std::vector<std::pair<std::string, double>> left(opt.weights.begin(), opt.weights.end());
    FormattedExample ex;
    std::string chosen;
    while (!left.empty()) {
      double sum = 0;
      for (const auto& [t, w] : left) sum += w;
      if (!(sum > 0)) break;
      double x = std::uniform_real_distribution<double>(0, sum)(rng);
      size_t k = 0;
      while (k + 1 < left.size() && x >= left[k].second) x -= left[k++].second;
      if (make_formatted(left[k].first, prompt, answer, rng(), &ex)) {
        chosen = left[k].first;
        break;
      }
      left.erase(left.begin() + int64_t(k));
    }
    if (chosen.empty()) {
      ++r.unusable;
      continue;
    }
    messages[u]["content"] = prompt + "\n" + ex.instruction;
    messages[a]["content"] = ex.answer;
    writer.write({{"messages", messages}, {"format", ex.constraint}});
    ++r.per_type[chosen];
  }
  writer.commit();
  r.records = reader.records();
  r.written = writer.written();
  r.skipped = reader.skipped();
  return r;
}

FormatCheckResult check_format_jsonl(const std::string& in, const std::string& passed,
                                     const std::string& failed, const FormatCheckOptions& opt,
                                     const std::function<void(const std::string&)>& on_skip,
                                     const std::function<void(int64_t)>& progress) {
  nlohmann::json fixed;
  if (!opt.constraint.empty()) {
    fixed = parse_json(opt.constraint, "--constraint");
    format_type(fixed);
  }
  data::JsonlReader reader(in, opt.skip_bad);
  reader.on_skip = on_skip;
  std::unique_ptr<data::JsonlWriter> pw, fw;
  if (!passed.empty()) pw = std::make_unique<data::JsonlWriter>(passed, "--out");
  if (!failed.empty()) fw = std::make_unique<data::JsonlWriter>(failed, "--failed");
  FormatCheckResult r;
  nlohmann::json rec;
  while (reader.next(rec)) {
    if (progress && reader.records() % 1024 == 0) progress(reader.bytes_read());
    const nlohmann::json* c = &fixed;
    if (fixed.is_null()) {
      if (!rec.is_object() || !rec.contains("format")) {
        reader.bad_record("no 'format' constraint (or give --constraint)");
        continue;
      }
      c = &rec["format"];
    }
    std::string response;
    bool ok = false;
    if (!opt.response_field.empty()) {
      response = data::string_field(rec, opt.response_field, &ok);
    } else {
      size_t u = 0, a = 0;
      if (sft_turns(rec, &u, &a)) {
        response = rec["messages"][a]["content"];
        ok = true;
      } else {
        for (const char* f : {"response", "output", "completion"})
          if (!ok) response = data::string_field(rec, f, &ok);
      }
    }
    if (!ok) {
      reader.bad_record(
          opt.response_field.empty()
              ? "no response (an assistant message, 'response', 'output' or 'completion')"
              : "no string field '" + opt.response_field + "'");
      continue;
    }
    FormatVerdict v;
    std::string type;
    try {
      type = format_type(*c);
      v = check_format(*c, response);
    } catch (const Error& e) {
      reader.bad_record(e.what());
      continue;
    }
    auto& t = r.per_type[type];
    ++t.first;
    t.second += v.ok;
    ++r.checked;
    r.passed += v.ok;
    if (v.ok && pw) pw->write_line(reader.raw());
    if (!v.ok && fw) {
      nlohmann::json f = rec;
      f["format_error"] = v.reason;
      fw->write(f);
    }
  }
  if (pw) pw->commit();
  if (fw) fw->commit();
  r.skipped = reader.skipped();
  return r;
}

}  // namespace finmoe
