// `process_docs` as declarative steps (lm-eval points the key at a Python
// function, which finmoe does not run): derive and rename fields by
// template, drop fields, keep documents by a field condition, regex
// replacement and whitespace stripping over text fields.
#include <algorithm>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include "eval/py_regex.h"
#include "finmoe/error.h"
#include "finmoe/eval.h"

namespace finmoe::eval {

namespace {

using nlohmann::json;

const char* const kSteps = "set, rename, drop, keep, replace, strip";
const char* const kConditions = "equals, not_equals, in, not_in, matches";

std::string step_where(const std::string& where, size_t i, const std::string& kind) {
  return where + ", step " + std::to_string(i + 1) + " (" + kind + ")";
}

// A step is a mapping with exactly one key: its kind.
std::pair<std::string, const json*> kind_of(const json& step, const std::string& where, size_t i) {
  if (!step.is_object() || step.size() != 1)
    throw Error(where + ", step " + std::to_string(i + 1) + ": a step is a mapping with one key (" +
                kSteps + ")");
  return {step.begin().key(), &step.begin().value()};
}

std::vector<std::string> field_names(const json& v, const std::string& where) {
  std::vector<std::string> out;
  if (v.is_string()) return {v.get<std::string>()};
  if (!v.is_array() || v.empty()) throw Error(where + ": expects a field name or a list of them");
  for (const auto& x : v) {
    if (!x.is_string()) throw Error(where + ": field names must be strings");
    out.push_back(x.get<std::string>());
  }
  return out;
}

std::string text_of(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_integer()) return std::to_string(v.get<int64_t>());
  if (v.is_boolean()) return v.get<bool>() ? "True" : "False";  // as Python's str()
  return v.dump();
}

std::string strip(const std::string& s) {
  const char* ws = " \t\r\n\f\v";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

// A text field, or each string of a list field (lm-eval preprocessors run
// over every choice), rewritten by `f`.
template <class F>
void map_text(json& doc, const std::string& field, const std::string& where, F f) {
  if (!doc.contains(field)) throw Error(where + ": the document has no field '" + field + "'");
  json& v = doc.at(field);
  if (v.is_string()) {
    v = f(v.get<std::string>());
  } else if (v.is_array()) {
    for (auto& x : v) {
      if (!x.is_string()) throw Error(where + ": field '" + field + "' holds a non-string item");
      x = f(x.get<std::string>());
    }
  } else {
    throw Error(where + ": field '" + field + "' is not text or a list of texts");
  }
}

struct Condition {
  std::string field, op;
  json value;
  std::optional<std::regex> re;
};

Condition read_condition(const json& v, const std::string& where) {
  if (!v.is_object() || !v.contains("field") || !v.at("field").is_string() || v.size() != 2)
    throw Error(where + ": expects {field: NAME, OP: VALUE} with one OP of " + kConditions);
  Condition c;
  c.field = v.at("field").get<std::string>();
  for (auto it = v.begin(); it != v.end(); ++it)
    if (it.key() != "field") c.op = it.key(), c.value = it.value();
  if (c.op == "in" || c.op == "not_in") {
    if (!c.value.is_array()) throw Error(where + ": '" + c.op + "' expects a list of values");
  } else if (c.op == "matches") {
    if (!c.value.is_string()) throw Error(where + ": 'matches' expects a regular expression");
    c.re = python_regex(c.value.get<std::string>(), where);
  } else if (c.op != "equals" && c.op != "not_equals") {
    throw Error(where + ": unknown condition '" + c.op + "' (" + kConditions + ")");
  }
  return c;
}

// Values compare as text, so `equals: 1` keeps a document whose field is 1 or "1".
bool holds(const Condition& c, const json& doc, const std::string& where) {
  if (!doc.contains(c.field)) throw Error(where + ": the document has no field '" + c.field + "'");
  const std::string v = text_of(doc.at(c.field));
  if (c.op == "equals") return v == text_of(c.value);
  if (c.op == "not_equals") return v != text_of(c.value);
  if (c.op == "matches") return std::regex_search(v, *c.re);
  const bool in =
      std::any_of(c.value.begin(), c.value.end(), [&](const json& x) { return text_of(x) == v; });
  return c.op == "in" ? in : !in;
}

struct Replace {
  std::vector<std::string> fields;
  std::regex re;
  std::string with;
};

Replace read_replace(const json& v, const std::string& where) {
  if (!v.is_object() || !v.contains("field") || !v.contains("pattern"))
    throw Error(where + ": expects {field: NAME or [NAMES], pattern: REGEX, with: TEXT}");
  for (auto it = v.begin(); it != v.end(); ++it)
    if (it.key() != "field" && it.key() != "pattern" && it.key() != "with")
      throw Error(where + ": unknown key '" + it.key() + "' (field, pattern, with)");
  Replace r;
  r.fields = field_names(v.at("field"), where);
  if (!v.at("pattern").is_string()) throw Error(where + ": 'pattern' must be a string");
  r.re = python_regex(v.at("pattern").get<std::string>(), where);
  if (v.contains("with")) {
    if (!v.at("with").is_string()) throw Error(where + ": 'with' must be a string");
    r.with = v.at("with").get<std::string>();
  }
  return r;
}

void check_step(const std::string& kind, const json& v, const std::string& w) {
  if (kind == "set" || kind == "rename") {
    if (!v.is_object() || v.empty())
      throw Error(w + ": expects a mapping " +
                  (kind == "set" ? std::string("FIELD: TEMPLATE") : std::string("OLD: NEW")));
    for (auto it = v.begin(); it != v.end(); ++it)
      if (!it.value().is_string())
        throw Error(w + ": the value of '" + it.key() + "' must be a string");
  } else if (kind == "drop" || kind == "strip") {
    field_names(v, w);
  } else if (kind == "keep") {
    read_condition(v, w);
  } else if (kind == "replace") {
    read_replace(v, w);
  } else {
    throw Error(w + ": unknown step '" + kind + "' (" + kSteps + ")");
  }
}

}  // namespace

void check_process_docs(const json& steps, const std::string& where) {
  if (!steps.is_array())
    throw Error(where + ": expects a list of steps (" + kSteps + "), each a mapping with one key");
  for (size_t i = 0; i < steps.size(); ++i) {
    const auto [kind, v] = kind_of(steps[i], where, i);
    check_step(kind, *v, step_where(where, i, kind));
  }
}

std::vector<Doc> apply_process_docs(const json& steps, std::vector<Doc> docs,
                                    const std::string& task) {
  if (steps.empty()) return docs;
  const std::string where = "task " + task + ", process_docs";
  check_process_docs(steps, where);
  const auto engine = default_template_engine();
  for (size_t i = 0; i < steps.size(); ++i) {
    const auto [kind, vp] = kind_of(steps[i], where, i);
    const json& v = *vp;
    const std::string sw = step_where(where, i, kind);
    std::optional<Condition> cond;
    std::optional<Replace> rep;
    if (kind == "keep") cond = read_condition(v, sw);
    if (kind == "replace") rep = read_replace(v, sw);
    std::vector<Doc> kept;
    for (auto& d : docs) {
      const std::string dw = sw + " (" + d.where + ")";
      json& f = d.fields;
      if (kind == "set") {
        for (auto it = v.begin(); it != v.end(); ++it)
          f[it.key()] = engine->render(it.value().get<std::string>(), f, dw + ", " + it.key());
      } else if (kind == "rename") {
        for (auto it = v.begin(); it != v.end(); ++it) {
          if (!f.contains(it.key()))
            throw Error(dw + ": the document has no field '" + it.key() + "'");
          json x = std::move(f.at(it.key()));
          f.erase(it.key());
          f[it.value().get<std::string>()] = std::move(x);
        }
      } else if (kind == "drop") {
        for (const auto& name : field_names(v, sw)) f.erase(name);
      } else if (kind == "strip") {
        for (const auto& name : field_names(v, sw)) map_text(f, name, dw, strip);
      } else if (kind == "replace") {
        for (const auto& name : rep->fields)
          map_text(f, name, dw,
                   [&](const std::string& s) { return std::regex_replace(s, rep->re, rep->with); });
      } else if (kind == "keep" && !holds(*cond, f, dw)) {
        continue;
      }
      kept.push_back(std::move(d));
    }
    docs = std::move(kept);
  }
  return docs;
}

}  // namespace finmoe::eval
