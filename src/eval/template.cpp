// The built-in `{{ field }}` template engine of task YAMLs (see
// finmoe/eval.h): field paths, a few filters, literals. Jinja statements
// ({% ... %}) are refused with a message rather than rendered wrongly.
#include <cctype>

#include "finmoe/error.h"
#include "finmoe/eval.h"

namespace finmoe::eval {

namespace {

using nlohmann::json;

std::string strip(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

// How Jinja prints a value inside text.
std::string to_text(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_boolean()) return v.get<bool>() ? "True" : "False";
  if (v.is_null()) return "None";
  if (v.is_number_integer()) return std::to_string(v.get<int64_t>());
  return v.dump();
}

std::string field_list(const json& doc) {
  std::string s;
  if (!doc.is_object()) return "(not an object)";
  for (auto it = doc.begin(); it != doc.end(); ++it) s += (s.empty() ? "" : ", ") + it.key();
  return s;
}

// A recursive-descent reader of one `{{ ... }}` expression.
class Expr {
 public:
  Expr(std::string_view src, const json& doc, const std::string& where)
      : s_(src), doc_(doc), where_(where) {}

  json eval() {
    json v = primary();
    while (true) {
      skip_ws();
      if (eat('|')) {
        const std::string f = ident();
        if (f == "trim")
          v = json(strip(to_text(v)));
        else if (f == "lower" || f == "upper") {
          std::string t = to_text(v);
          for (char& c : t)
            c = char(f == "lower" ? std::tolower(static_cast<unsigned char>(c))
                                  : std::toupper(static_cast<unsigned char>(c)));
          v = json(t);
        } else if (f == "string")
          v = json(to_text(v));
        else if (f == "int")
          v = json(int64_t(std::stoll(strip(to_text(v)))));
        else
          fail("unknown filter '| " + f + "' (known: trim, lower, upper, string, int)");
        continue;
      }
      break;
    }
    skip_ws();
    if (pos_ != s_.size()) fail("unexpected '" + std::string(s_.substr(pos_)) + "'");
    return v;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw Error(where_ + ": template {{" + std::string(s_) + "}}: " + what);
  }
  void skip_ws() {
    while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
  }
  bool eat(char c) {
    skip_ws();
    if (pos_ < s_.size() && s_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  std::string ident() {
    skip_ws();
    size_t b = pos_;
    while (pos_ < s_.size() &&
           (std::isalnum(static_cast<unsigned char>(s_[pos_])) || s_[pos_] == '_'))
      ++pos_;
    if (b == pos_) fail("expected a name at offset " + std::to_string(b));
    return std::string(s_.substr(b, pos_ - b));
  }
  std::string string_literal() {
    const char q = s_[pos_++];
    std::string out;
    while (pos_ < s_.size() && s_[pos_] != q) {
      if (s_[pos_] == '\\' && pos_ + 1 < s_.size()) {
        const char c = s_[++pos_];
        out += c == 'n' ? '\n' : c == 't' ? '\t' : c;
      } else {
        out += s_[pos_];
      }
      ++pos_;
    }
    if (pos_ >= s_.size()) fail("unterminated string literal");
    ++pos_;
    return out;
  }
  json primary() {
    skip_ws();
    if (pos_ >= s_.size()) fail("empty expression");
    const char c = s_[pos_];
    json v;
    if (c == '\'' || c == '"') {
      v = string_literal();
    } else if (c == '[') {
      ++pos_;
      v = json::array();
      if (!eat(']')) {
        do {
          v.push_back(primary_postfix());
        } while (eat(','));
        if (!eat(']')) fail("expected ']'");
      }
      return postfix(v);
    } else if (std::isdigit(static_cast<unsigned char>(c)) || c == '-') {
      size_t b = pos_++;
      while (pos_ < s_.size() &&
             (std::isdigit(static_cast<unsigned char>(s_[pos_])) || s_[pos_] == '.'))
        ++pos_;
      const std::string num(s_.substr(b, pos_ - b));
      v = num.find('.') != std::string::npos ? json(std::stod(num)) : json(std::stoll(num));
    } else {
      const std::string name = ident();
      if (!doc_.is_object() || !doc_.contains(name))
        fail("field '" + name + "' is not in the document (fields: " + field_list(doc_) + ")");
      v = doc_.at(name);
      path_ = name;
    }
    return postfix(v);
  }
  json primary_postfix() { return primary(); }
  json postfix(json v) {
    while (true) {
      skip_ws();
      if (eat('.')) {
        const std::string name = ident();
        if (name == "strip" || name == "lower" || name == "upper") {
          if (!eat('(') || !eat(')')) fail("expected '()' after ." + name);
          std::string t = to_text(v);
          if (name == "strip") t = strip(t);
          for (char& ch : t)
            if (name != "strip")
              ch = char(name == "lower" ? std::tolower(static_cast<unsigned char>(ch))
                                        : std::toupper(static_cast<unsigned char>(ch)));
          v = json(t);
          continue;
        }
        if (!v.is_object() || !v.contains(name))
          fail("field '" + path_ + "." + name + "' is not in the document");
        v = json(v.at(name));
        path_ += "." + name;
      } else if (eat('[')) {
        skip_ws();
        if (pos_ < s_.size() && (s_[pos_] == '\'' || s_[pos_] == '"')) {
          const std::string key = string_literal();
          if (!eat(']')) fail("expected ']'");
          if (!v.is_object() || !v.contains(key))
            fail("field '" + path_ + "[\"" + key + "\"]' is not in the document");
          v = json(v.at(key));
          path_ += "." + key;
        } else {
          json idx = primary();
          if (!eat(']')) fail("expected ']'");
          if (!idx.is_number_integer()) fail("an index must be an integer");
          int64_t i = idx.get<int64_t>();
          if (!v.is_array()) fail("'" + path_ + "' is not a list");
          if (i < 0) i += int64_t(v.size());
          if (i < 0 || i >= int64_t(v.size()))
            fail("index " + std::to_string(idx.get<int64_t>()) + " is out of range for '" + path_ +
                 "' (" + std::to_string(v.size()) + " items)");
          v = json(v.at(size_t(i)));
          path_ += "[" + std::to_string(i) + "]";
        }
      } else {
        return v;
      }
    }
  }

  std::string_view s_;
  const json& doc_;
  const std::string& where_;
  size_t pos_ = 0;
  std::string path_;
};

class SimpleTemplateEngine : public TemplateEngine {
 public:
  json render(const std::string& tmpl, const json& doc, const std::string& where) const override {
    if (tmpl.find("{%") != std::string::npos)
      throw Error(where +
                  ": Jinja statements ({% ... %}) are not supported by the built-in "
                  "template engine; use {{ field }} expressions");
    // a bare field name (lm-eval: `doc_to_target: answer`) is the field itself
    if (doc.is_object() && doc.contains(tmpl)) return doc.at(tmpl);
    const size_t open = tmpl.find("{{");
    if (open == std::string::npos) return json(tmpl);
    const std::string stripped = strip(tmpl);
    if (stripped.rfind("{{", 0) == 0 && stripped.find("{{", 2) == std::string::npos &&
        stripped.size() >= 4 && stripped.compare(stripped.size() - 2, 2, "}}") == 0) {
      // a lone expression: its value
      return Expr(std::string_view(stripped).substr(2, stripped.size() - 4), doc, where).eval();
    }
    std::string out;
    size_t pos = 0;
    while (true) {
      const size_t b = tmpl.find("{{", pos);
      if (b == std::string::npos) {
        out += tmpl.substr(pos);
        break;
      }
      const size_t e = tmpl.find("}}", b + 2);
      if (e == std::string::npos) throw Error(where + ": '{{' without a closing '}}'");
      out += tmpl.substr(pos, b - pos);
      out += to_text(Expr(std::string_view(tmpl).substr(b + 2, e - b - 2), doc, where).eval());
      pos = e + 2;
    }
    return json(out);
  }
};

}  // namespace

std::shared_ptr<const TemplateEngine> default_template_engine() {
  static const auto engine = std::make_shared<SimpleTemplateEngine>();
  return engine;
}

}  // namespace finmoe::eval
