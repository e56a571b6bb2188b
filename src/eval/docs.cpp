// Task documents: JSONL / JSON / CSV readers, split resolution and the
// financial benchmark layouts (C-Eval/CMMLU/FinEval CSV, CFLUE JSON,
// FLARE/PIXIU classification JSONL).
#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "finmoe/config.h"
#include "finmoe/error.h"
#include "finmoe/eval.h"

namespace fs = std::filesystem;

namespace finmoe::eval {

namespace {

using nlohmann::json;

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("data file " + path + " cannot be read");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void bad(const LoadOptions& o, const std::string& msg) {
  if (!o.skip_bad) throw Error(msg + " (--skip-bad skips such lines)");
  if (o.warn) o.warn("skipped: " + msg);
}

std::vector<Doc> read_jsonl(const std::string& path, const LoadOptions& o) {
  const std::string text = read_all(path);
  std::vector<Doc> out;
  size_t pos = 0;
  int64_t line = 0;
  while (pos < text.size()) {
    size_t e = text.find('\n', pos);
    if (e == std::string::npos) e = text.size();
    std::string_view l(text.data() + pos, e - pos);
    pos = e + 1;
    ++line;
    if (!l.empty() && l.back() == '\r') l.remove_suffix(1);
    if (l.find_first_not_of(" \t") == std::string_view::npos) continue;
    const std::string where = path + ":" + std::to_string(line);
    try {
      json j = parse_json(l, where);
      if (!j.is_object()) {
        bad(o, where + ": a line must be a JSON object");
        continue;
      }
      out.push_back({std::move(j), where});
    } catch (const Error& err) {
      bad(o, err.what());
    }
  }
  return out;
}

std::vector<Doc> read_json(const std::string& path) {
  json j = read_json_file(path);
  const json* arr = &j;
  if (j.is_object()) {
    // {"data": [...]} or {"split": [...]}: the one array inside
    const json* found = nullptr;
    for (auto it = j.begin(); it != j.end(); ++it)
      if (it.value().is_array()) {
        if (found) throw Error(path + ": the JSON object holds several arrays; give one per file");
        found = &it.value();
      }
    if (!found) throw Error(path + ": expected a JSON array of records");
    arr = found;
  }
  if (!arr->is_array()) throw Error(path + ": expected a JSON array of records");
  std::vector<Doc> out;
  for (size_t i = 0; i < arr->size(); ++i) {
    const std::string where = path + ": record " + std::to_string(i);
    if (!(*arr)[i].is_object()) throw Error(where + ": a record must be a JSON object");
    out.push_back({(*arr)[i], where});
  }
  return out;
}

// RFC 4180: quoted fields may hold commas, quotes ("") and newlines.
std::vector<Doc> read_csv(const std::string& path, const LoadOptions& o) {
  std::string text = read_all(path);
  if (text.rfind("\xEF\xBB\xBF", 0) == 0) text.erase(0, 3);  // UTF-8 BOM
  std::vector<std::vector<std::string>> rows;
  std::vector<int64_t> row_line;
  std::vector<std::string> row;
  std::string field;
  bool quoted = false, any = false;
  int64_t line = 1, start_line = 1;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quoted) {
      if (c == '"') {
        if (i + 1 < text.size() && text[i + 1] == '"') {
          field += '"';
          ++i;
        } else {
          quoted = false;
        }
      } else {
        if (c == '\n') ++line;
        field += c;
      }
      continue;
    }
    if (c == '"' && field.empty()) {
      quoted = true;
      any = true;
    } else if (c == ',') {
      row.push_back(std::move(field));
      field.clear();
      any = true;
    } else if (c == '\n' || c == '\r') {
      if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ++i;
      if (any || !field.empty()) {
        row.push_back(std::move(field));
        rows.push_back(std::move(row));
        row_line.push_back(start_line);
      }
      row.clear();
      field.clear();
      any = false;
      ++line;
      start_line = line;
    } else {
      field += c;
      any = true;
    }
  }
  if (quoted) throw Error(path + ":" + std::to_string(start_line) + ": unterminated quoted field");
  if (any || !field.empty()) {
    row.push_back(std::move(field));
    rows.push_back(std::move(row));
    row_line.push_back(start_line);
  }
  if (rows.empty()) throw Error(path + ": empty CSV file (expected a header row)");
  const auto& header = rows.front();
  std::vector<Doc> out;
  for (size_t r = 1; r < rows.size(); ++r) {
    const std::string where = path + ":" + std::to_string(row_line[r]);
    if (rows[r].size() != header.size()) {
      bad(o, where + ": " + std::to_string(rows[r].size()) + " fields, the header has " +
                 std::to_string(header.size()));
      continue;
    }
    json d = json::object();
    for (size_t k = 0; k < header.size(); ++k)
      d[header[k].empty() ? "_index" : header[k]] = rows[r][k];
    out.push_back({std::move(d), where});
  }
  return out;
}

std::string lower(std::string s) {
  for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

// The value of a field by case-insensitive name; null when absent.
const json* field_ci(const json& d, const std::string& name) {
  for (auto it = d.begin(); it != d.end(); ++it)
    if (lower(it.key()) == lower(name)) return &it.value();
  return nullptr;
}

std::string as_text(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_integer()) return std::to_string(v.get<int64_t>());
  return v.dump();
}

// C-Eval / CMMLU / FinEval: question, A-D, answer (a letter).
void normalize_lettered(Doc& d, const std::string& layout) {
  json& f = d.fields;
  const char* needed = "question, A, B, C, D, answer";
  auto need = [&](const std::string& name) -> std::string {
    const json* v = field_ci(f, name);
    if (!v || v->is_null())
      throw Error(d.where + ": field '" + name + "' is missing (layout " + layout + " needs " +
                  needed + ")");
    return as_text(*v);
  };
  json out = f;
  out["question"] = trim(need("question"));
  json choices = json::array();
  for (const char* l : {"A", "B", "C", "D"}) {
    out[l] = trim(need(l));
    choices.push_back(out[l]);
  }
  out["choices"] = choices;
  out["answer"] = trim(need("answer"));
  f = std::move(out);
}

// CFLUE-style JSON: question, options as {"A": ..} / [..] / "A. ..\nB. ..", answer letter.
void normalize_cflue(Doc& d) {
  json& f = d.fields;
  const json* q = field_ci(f, "question");
  if (!q) throw Error(d.where + ": field 'question' is missing (layout cflue)");
  json out = f;
  out["question"] = trim(as_text(*q));
  std::vector<std::string> opts;
  const json* o = field_ci(f, "options");
  if (!o) o = field_ci(f, "choices");
  if (o && o->is_object()) {
    for (char l = 'A'; l <= 'Z'; ++l)
      if (o->contains(std::string(1, l))) opts.push_back(trim(as_text(o->at(std::string(1, l)))));
  } else if (o && o->is_array()) {
    for (const auto& x : *o) opts.push_back(trim(as_text(x)));
  } else if (o && o->is_string()) {
    std::istringstream in(o->get<std::string>());
    std::string l;
    while (std::getline(in, l)) {
      l = trim(l);
      if (l.size() >= 2 && l[0] >= 'A' && l[0] <= 'Z' &&
          (l[1] == '.' || l[1] == ':' || l[1] == ')'))
        opts.push_back(trim(l.substr(2)));
    }
  } else {
    for (char l = 'A'; l <= 'Z'; ++l)
      if (const json* v = field_ci(f, std::string(1, l)); v && l <= 'D')
        opts.push_back(trim(as_text(*v)));
  }
  if (opts.size() < 2)
    throw Error(d.where +
                ": field 'options' is missing or has fewer than 2 options (layout cflue)");
  json choices = json::array();
  for (size_t i = 0; i < opts.size(); ++i) {
    out[std::string(1, char('A' + i))] = opts[i];
    choices.push_back(opts[i]);
  }
  for (size_t i = opts.size(); i < 4; ++i) out[std::string(1, char('A' + i))] = "";
  out["choices"] = choices;
  const json* a = field_ci(f, "answer");
  if (!a) throw Error(d.where + ": field 'answer' is missing (layout cflue)");
  out["answer"] = trim(as_text(*a));
  f = std::move(out);
}

// FLARE / PIXIU classification: query, choices (list), gold (index).
void normalize_flare(Doc& d) {
  const json& f = d.fields;
  for (const char* k : {"query", "choices", "gold"})
    if (!f.contains(k))
      throw Error(d.where + ": field '" + std::string(k) +
                  "' is missing (layout flare needs query, "
                  "choices, gold)");
  if (!f.at("choices").is_array()) throw Error(d.where + ": field 'choices' must be a list");
  json gold = f.at("gold");
  if (gold.is_string()) {  // some exports write the index as text
    try {
      gold = std::stoll(gold.get<std::string>());
    } catch (...) {
      throw Error(d.where + ": field 'gold' must be an index into 'choices'");
    }
  }
  if (!gold.is_number_integer() || gold.get<int64_t>() < 0 ||
      gold.get<int64_t>() >= int64_t(f.at("choices").size()))
    throw Error(d.where + ": field 'gold' must be an index into 'choices' (0.." +
                std::to_string(f.at("choices").size() - 1) + ")");
  d.fields["gold"] = gold;
}

std::string split_file(const TaskConfig& t, const std::string& split) {
  if (auto it = t.data_files.find(split); it != t.data_files.end()) return it->second;
  std::error_code ec;
  if (fs::is_regular_file(t.dataset_path, ec)) return t.dataset_path;
  std::vector<std::string> tried;
  if (fs::is_directory(t.dataset_path, ec) || !t.data_files.empty()) {
    const fs::path dir(t.dataset_path);
    std::vector<fs::path> cands;
    if (!t.dataset_name.empty()) {
      for (const char* ext : {".csv", ".jsonl", ".json"}) {
        cands.push_back(dir / split / (t.dataset_name + ext));  // CMMLU: test/accounting.csv
        cands.push_back(dir / split /
                        (t.dataset_name + "_" + split + ext));  // C-Eval: val/x_val.csv
        cands.push_back(dir / t.dataset_name / (split + ext));
      }
    }
    for (const char* ext : {".jsonl", ".json", ".csv"}) cands.push_back(dir / (split + ext));
    for (const auto& c : cands) {
      if (fs::is_regular_file(c, ec)) return c.string();
      tried.push_back(c.string());
    }
  } else {
    tried.push_back(t.dataset_path);
  }
  std::string list;
  for (const auto& x : tried) list += (list.empty() ? "" : ", ") + x;
  throw Error("task " + t.task + ": no data file for split '" + split + "' (tried " + list +
              "; set dataset_path or dataset_kwargs.data_files)");
}

}  // namespace

std::vector<Doc> read_records(const std::string& path, const LoadOptions& options) {
  const std::string ext = fs::path(path).extension().string();
  if (ext == ".jsonl") return read_jsonl(path, options);
  if (ext == ".json") return read_json(path);
  if (ext == ".csv") return read_csv(path, options);
  throw Error("data file " + path + ": unknown extension '" + ext +
              "' (use .jsonl, .json or .csv)");
}

std::vector<Doc> load_docs(const TaskConfig& t, const std::string& split,
                           const LoadOptions& options) {
  const std::string file = split_file(t, split);
  std::vector<Doc> docs = read_records(file, options);
  if (!t.split_field.empty()) {
    std::vector<Doc> kept;
    for (auto& d : docs) {
      const json* v = field_ci(d.fields, t.split_field);
      if (!v) throw Error(d.where + ": field '" + t.split_field + "' (split_field) is missing");
      if (as_text(*v) == split) kept.push_back(std::move(d));
    }
    docs = std::move(kept);
  }
  std::vector<Doc> out;
  for (auto& d : docs) {
    try {
      if (t.layout == "ceval" || t.layout == "cmmlu" || t.layout == "fineval")
        normalize_lettered(d, t.layout);
      else if (t.layout == "cflue")
        normalize_cflue(d);
      else if (t.layout == "flare")
        normalize_flare(d);
    } catch (const Error& e) {
      bad(options, e.what());
      continue;
    }
    out.push_back(std::move(d));
  }
  return apply_process_docs(t.process_docs, std::move(out), t.task);
}

}  // namespace finmoe::eval
