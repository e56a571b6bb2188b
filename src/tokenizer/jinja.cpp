// Jinja2 for chat templates: lexer, parser and tree-walking evaluator.
// Semantics follow Python jinja2 3.1 as HF transformers configures it (see
// jinja.h); values behave like the Python objects a template sees there.
#include "tokenizer/jinja.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <functional>
#include <unordered_map>
#include <vector>

#include "finmoe/error.h"
#include "tokenizer/utf8.h"

namespace finmoe::jinja {

namespace {

using ojson = nlohmann::ordered_json;

// ---- values ----------------------------------------------------------------

struct Value;
struct DictObj;
struct FuncObj;
using List = std::vector<Value>;

struct Value {
  enum Kind : uint8_t { Undef, None, Bool, Int, Float, Str, Lst, Dct, Fn };
  Kind k = Undef;
  bool b = false;
  bool gen = false;    // Lst made by a lazy filter (map, select...): a Python generator
  bool tuple = false;  // Lst that is a Python tuple (prints as (a, b))
  bool safe = false;   // Str that is a markupsafe.Markup (from |safe or |e)
  int64_t i = 0;
  double f = 0;
  std::string s;  // Str; for Undef: why it is undefined (for messages)
  std::shared_ptr<List> list;
  std::shared_ptr<DictObj> dict;
  std::shared_ptr<FuncObj> fn;

  static Value undef(std::string why) { Value v; v.s = std::move(why); return v; }
  static Value none() { Value v; v.k = None; return v; }
  static Value boolean(bool x) { Value v; v.k = Bool; v.b = x; return v; }
  static Value integer(int64_t x) { Value v; v.k = Int; v.i = x; return v; }
  static Value real(double x) { Value v; v.k = Float; v.f = x; return v; }
  static Value str(std::string x) { Value v; v.k = Str; v.s = std::move(x); return v; }
  static Value lst(List x = {}) { Value v; v.k = Lst; v.list = std::make_shared<List>(std::move(x)); return v; }
  static Value dct();
  static Value generator(List x) { Value v = lst(std::move(x)); v.gen = true; return v; }
  static Value tup(List x) { Value v = lst(std::move(x)); v.tuple = true; return v; }
  bool is_num() const { return k == Int || k == Float || k == Bool; }
  double num() const { return k == Float ? f : k == Int ? double(i) : double(b); }
};

struct DictObj {
  std::vector<std::pair<std::string, Value>> items;
  bool is_namespace = false;
  const Value* find(std::string_view key) const {
    for (const auto& [k, v] : items) if (k == key) return &v;
    return nullptr;
  }
  void set(const std::string& key, Value v) {
    for (auto& [k, old] : items) if (k == key) { old = std::move(v); return; }
    items.emplace_back(key, std::move(v));
  }
};

Value Value::dct() { Value v; v.k = Dct; v.dict = std::make_shared<DictObj>(); return v; }

struct Args {
  List pos;
  std::vector<std::pair<std::string, Value>> kw;
  const Value* get(size_t idx, std::string_view name) const {
    if (idx < pos.size()) return &pos[idx];
    for (const auto& [k, v] : kw) if (k == name) return &v;
    return nullptr;
  }
};

struct FuncObj {
  std::string name;
  std::function<Value(Args&)> call;
};

Value make_fn(std::string name, std::function<Value(Args&)> f) {
  Value v;
  v.k = Value::Fn;
  v.fn = std::make_shared<FuncObj>(FuncObj{std::move(name), std::move(f)});
  return v;
}

const char* type_name(const Value& v) {
  switch (v.k) {
    case Value::Undef: return "Undefined";
    case Value::None: return "NoneType";
    case Value::Bool: return "bool";
    case Value::Int: return "int";
    case Value::Float: return "float";
    case Value::Str: return "str";
    case Value::Lst: return "list";
    case Value::Dct: return v.dict->is_namespace ? "Namespace" : "dict";
    case Value::Fn: return "function";
  }
  return "?";
}

// A runtime failure; the evaluator adds the line and column.
struct RenderError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// raise_exception(): passed through without a position.
struct Raised : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] void fail(const std::string& msg) { throw RenderError(msg); }

Value from_json(const ojson& j) {
  switch (j.type()) {
    case ojson::value_t::null: return Value::none();
    case ojson::value_t::boolean: return Value::boolean(j.get<bool>());
    case ojson::value_t::number_integer: return Value::integer(j.get<int64_t>());
    case ojson::value_t::number_unsigned: {
      uint64_t u = j.get<uint64_t>();
      if (u > uint64_t(INT64_MAX)) return Value::real(double(u));
      return Value::integer(int64_t(u));
    }
    case ojson::value_t::number_float: return Value::real(j.get<double>());
    case ojson::value_t::string: return Value::str(j.get<std::string>());
    case ojson::value_t::array: {
      List l;
      l.reserve(j.size());
      for (const auto& e : j) l.push_back(from_json(e));
      return Value::lst(std::move(l));
    }
    case ojson::value_t::object: {
      Value d = Value::dct();
      for (auto it = j.begin(); it != j.end(); ++it) d.dict->items.emplace_back(it.key(), from_json(it.value()));
      return d;
    }
    default: return Value::none();
  }
}

// ---- Python formatting -----------------------------------------------------

std::string py_float(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d < 0 ? "-inf" : "inf";
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  std::string sci(buf, r.ptr);  // "-1.2345e+02"
  std::string sign;
  if (sci[0] == '-') { sign = "-"; sci.erase(0, 1); }
  size_t e = sci.find('e');
  std::string digits = sci.substr(0, e);
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  int exp = std::stoi(sci.substr(e + 1));
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  if (exp >= -4 && exp < 16) {
    std::string out;
    if (exp >= 0) {
      std::string ip = digits.substr(0, std::min(digits.size(), size_t(exp + 1)));
      while (ip.size() < size_t(exp + 1)) ip += '0';
      std::string fp = digits.size() > size_t(exp + 1) ? digits.substr(exp + 1) : "0";
      out = ip + "." + fp;
    } else {
      out = "0." + std::string(size_t(-exp - 1), '0') + digits;
    }
    return sign + out;
  }
  std::string m = digits.substr(0, 1);
  if (digits.size() > 1) m += "." + digits.substr(1);
  std::string es = std::to_string(std::abs(exp));
  if (es.size() < 2) es = "0" + es;
  return sign + m + "e" + (exp < 0 ? "-" : "+") + es;
}

std::string py_str(const Value& v);

std::string py_repr_str(const std::string& s) {
  const bool dq = s.find('\'') != std::string::npos && s.find('"') == std::string::npos;
  const char q = dq ? '"' : '\'';
  std::string out(1, q);
  for (unsigned char c : s) {
    if (c == q || c == '\\') { out += '\\'; out += char(c); }
    else if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (c == '\t') out += "\\t";
    else if (c < 0x20 || c == 0x7f) {
      char b[8];
      snprintf(b, sizeof b, "\\x%02x", c);
      out += b;
    } else out += char(c);
  }
  out += q;
  return out;
}

std::string py_repr(const Value& v) { return v.k == Value::Str ? py_repr_str(v.s) : py_str(v); }

std::string py_str(const Value& v) {
  switch (v.k) {
    case Value::Undef: return "";
    case Value::None: return "None";
    case Value::Bool: return v.b ? "True" : "False";
    case Value::Int: return std::to_string(v.i);
    case Value::Float: return py_float(v.f);
    case Value::Str: return v.s;
    case Value::Lst: {
      if (v.gen) return "<generator object>";
      std::string out = v.tuple ? "(" : "[";
      for (size_t k = 0; k < v.list->size(); ++k) out += (k ? ", " : "") + py_repr((*v.list)[k]);
      if (v.tuple && v.list->size() == 1) out += ",";
      return out + (v.tuple ? ")" : "]");
    }
    case Value::Dct: {
      if (v.dict->is_namespace) return "<Namespace>";
      std::string out = "{";
      bool first = true;
      for (const auto& [k, x] : v.dict->items) {
        out += (first ? "" : ", ") + py_repr_str(k) + ": " + py_repr(x);
        first = false;
      }
      return out + "}";
    }
    case Value::Fn: return "<function " + v.fn->name + ">";
  }
  return "";
}

// json.dumps(x, ensure_ascii, indent, separators, sort_keys) as Python writes it.
struct JsonOpts {
  bool ensure_ascii = false;
  std::optional<std::string> indent;
  std::string item_sep = ", ", key_sep = ": ";
  bool sort_keys = false;
};

void json_str(const std::string& s, bool ascii, std::string& out) {
  out += '"';
  for (size_t i = 0; i < s.size();) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c == '"') { out += "\\\""; ++i; }
    else if (c == '\\') { out += "\\\\"; ++i; }
    else if (c == '\n') { out += "\\n"; ++i; }
    else if (c == '\r') { out += "\\r"; ++i; }
    else if (c == '\t') { out += "\\t"; ++i; }
    else if (c == '\b') { out += "\\b"; ++i; }
    else if (c == '\f') { out += "\\f"; ++i; }
    else if (c < 0x20 || (ascii && c == 0x7f)) {
      char b[8];
      snprintf(b, sizeof b, "\\u%04x", c);
      out += b;
      ++i;
    } else if (c >= 0x80 && ascii && tok::utf8_valid_len(s, i)) {
      char32_t cp = tok::utf8_next(s, i);
      char b[16];
      if (cp >= 0x10000) {
        cp -= 0x10000;
        snprintf(b, sizeof b, "\\u%04x\\u%04x", unsigned(0xD800 + (cp >> 10)), unsigned(0xDC00 + (cp & 0x3FF)));
      } else {
        snprintf(b, sizeof b, "\\u%04x", unsigned(cp));
      }
      out += b;
    } else { out += char(c); ++i; }
  }
  out += '"';
}

void to_json(const Value& v, const JsonOpts& o, int level, std::string& out, int depth) {
  if (depth > 200) fail("tojson: value nested too deeply");
  auto newline = [&](int lv) {
    out += '\n';
    for (int k = 0; k < lv; ++k) out += *o.indent;
  };
  switch (v.k) {
    case Value::None: out += "null"; return;
    case Value::Bool: out += v.b ? "true" : "false"; return;
    case Value::Int: out += std::to_string(v.i); return;
    case Value::Float:
      out += std::isnan(v.f) ? "NaN" : std::isinf(v.f) ? (v.f < 0 ? "-Infinity" : "Infinity") : py_float(v.f);
      return;
    case Value::Str: json_str(v.s, o.ensure_ascii, out); return;
    case Value::Lst: {
      if (v.gen) fail("Object of type generator is not JSON serializable");
      if (v.list->empty()) { out += "[]"; return; }
      out += '[';
      for (size_t k = 0; k < v.list->size(); ++k) {
        if (k) out += o.item_sep;
        if (o.indent) newline(level + 1);
        to_json((*v.list)[k], o, level + 1, out, depth + 1);
      }
      if (o.indent) newline(level);
      out += ']';
      return;
    }
    case Value::Dct: {
      if (v.dict->is_namespace) fail("Object of type Namespace is not JSON serializable");
      if (v.dict->items.empty()) { out += "{}"; return; }
      std::vector<const std::pair<std::string, Value>*> items;
      for (const auto& kv : v.dict->items) items.push_back(&kv);
      if (o.sort_keys)
        std::stable_sort(items.begin(), items.end(), [](auto* a, auto* b) { return a->first < b->first; });
      out += '{';
      for (size_t k = 0; k < items.size(); ++k) {
        if (k) out += o.item_sep;
        if (o.indent) newline(level + 1);
        json_str(items[k]->first, o.ensure_ascii, out);
        out += o.key_sep;
        to_json(items[k]->second, o, level + 1, out, depth + 1);
      }
      if (o.indent) newline(level);
      out += '}';
      return;
    }
    case Value::Undef: fail("Object of type Undefined is not JSON serializable");
    case Value::Fn: fail("Object of type function is not JSON serializable");
  }
}

// ---- helpers on values -----------------------------------------------------

bool truthy(const Value& v) {
  switch (v.k) {
    case Value::Undef: case Value::None: return false;
    case Value::Bool: return v.b;
    case Value::Int: return v.i != 0;
    case Value::Float: return v.f != 0;
    case Value::Str: return !v.s.empty();
    case Value::Lst: return v.gen || !v.list->empty();
    case Value::Dct: return v.dict->is_namespace || !v.dict->items.empty();
    case Value::Fn: return true;
  }
  return false;
}

bool equal(const Value& a, const Value& b) {
  if (a.is_num() && b.is_num()) {
    if (a.k != Value::Float && b.k != Value::Float)
      return (a.k == Value::Int ? a.i : int64_t(a.b)) == (b.k == Value::Int ? b.i : int64_t(b.b));
    return a.num() == b.num();
  }
  if (a.k != b.k) return false;
  switch (a.k) {
    case Value::Undef: case Value::None: return true;
    case Value::Str: return a.s == b.s;
    case Value::Lst:
      if (a.gen || b.gen) return a.list == b.list;
      if (a.tuple != b.tuple) return false;
      if (a.list->size() != b.list->size()) return false;
      for (size_t k = 0; k < a.list->size(); ++k) if (!equal((*a.list)[k], (*b.list)[k])) return false;
      return true;
    case Value::Dct:
      if (a.dict == b.dict) return true;
      if (a.dict->is_namespace || b.dict->is_namespace) return false;
      if (a.dict->items.size() != b.dict->items.size()) return false;
      for (const auto& [k, v] : a.dict->items) {
        const Value* o = b.dict->find(k);
        if (!o || !equal(v, *o)) return false;
      }
      return true;
    case Value::Fn: return a.fn == b.fn;
    default: return false;
  }
}

std::u32string to_u32(const std::string& s) {
  std::u32string out;
  for (size_t i = 0; i < s.size();) {
    if (tok::utf8_valid_len(s, i)) out += tok::utf8_next(s, i);
    else out += char32_t(static_cast<unsigned char>(s[i++]));
  }
  return out;
}
std::string from_u32(std::u32string_view s) {
  std::string out;
  for (char32_t c : s) tok::utf8_append(out, c);
  return out;
}
bool is_ascii(const std::string& s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; });
}
int64_t str_len(const std::string& s) { return is_ascii(s) ? int64_t(s.size()) : int64_t(to_u32(s).size()); }

bool is_py_space(char32_t c) {
  return c == ' ' || (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x1f) || c == 0x85 || c == 0xa0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f ||
         c == 0x205f || c == 0x3000;
}

// Python str.strip/lstrip/rstrip; chars = nullopt strips white space.
std::string py_strip(const std::string& s, const std::optional<std::string>& chars, bool left, bool right) {
  std::u32string u = to_u32(s);
  std::u32string set = chars ? to_u32(*chars) : U"";
  auto strip_it = [&](char32_t c) { return chars ? set.find(c) != std::u32string::npos : is_py_space(c); };
  size_t b = 0, e = u.size();
  if (left) while (b < e && strip_it(u[b])) ++b;
  if (right) while (e > b && strip_it(u[e - 1])) --e;
  return from_u32(std::u32string_view(u).substr(b, e - b));
}

std::string ascii_case(std::string s, bool upper) {
  // Unicode case mapping for the BMP letters that have a simple mapping.
  std::u32string u = to_u32(s);
  for (auto& c : u) {
    if (c < 0x80) c = upper ? char32_t(std::toupper(int(c))) : char32_t(std::tolower(int(c)));
    else if (upper && ((c >= 0xe0 && c <= 0xfe && c != 0xf7) || (c >= 0x3b1 && c <= 0x3c9 && c != 0x3c2) ||
                       (c >= 0x430 && c <= 0x44f)))
      c -= 0x20;
    else if (!upper && ((c >= 0xc0 && c <= 0xde && c != 0xd7) || (c >= 0x391 && c <= 0x3a9) ||
                        (c >= 0x410 && c <= 0x42f)))
      c += 0x20;
  }
  return from_u32(u);
}

bool is_alpha_cp(char32_t c) {
  return (c < 0x80 && std::isalpha(int(c))) || (c >= 0xc0 && c != 0xd7 && c != 0xf7);
}

std::string py_title(const std::string& s) {
  std::u32string u = to_u32(s);
  bool prev_cased = false;
  for (auto& c : u) {
    std::string one = from_u32(std::u32string(1, c));
    std::string mapped = ascii_case(one, !prev_cased);
    c = to_u32(mapped)[0];
    prev_cased = is_alpha_cp(c);
  }
  return from_u32(u);
}

std::string py_capitalize(const std::string& s) {
  if (s.empty()) return s;
  std::u32string u = to_u32(ascii_case(s, false));
  u[0] = to_u32(ascii_case(from_u32(std::u32string(1, u[0])), true))[0];
  return from_u32(u);
}

List py_split(const std::string& s, const std::optional<std::string>& sep, int64_t maxsplit) {
  List out;
  if (!sep) {
    std::u32string u = to_u32(s);
    size_t i = 0;
    while (true) {
      while (i < u.size() && is_py_space(u[i])) ++i;
      if (i >= u.size()) break;
      if (maxsplit >= 0 && int64_t(out.size()) == maxsplit) {
        size_t e = u.size();
        while (e > i && is_py_space(u[e - 1])) --e;
        out.push_back(Value::str(from_u32(std::u32string_view(u).substr(i, e - i))));
        break;
      }
      size_t j = i;
      while (j < u.size() && !is_py_space(u[j])) ++j;
      out.push_back(Value::str(from_u32(std::u32string_view(u).substr(i, j - i))));
      i = j;
    }
    return out;
  }
  if (sep->empty()) fail("empty separator");
  size_t start = 0;
  while (true) {
    size_t p = s.find(*sep, start);
    if (p == std::string::npos || (maxsplit >= 0 && int64_t(out.size()) == maxsplit)) {
      out.push_back(Value::str(s.substr(start)));
      break;
    }
    out.push_back(Value::str(s.substr(start, p - start)));
    start = p + sep->size();
  }
  return out;
}

std::string py_replace(const std::string& s, const std::string& from, const std::string& to, int64_t count,
                       size_t max_bytes) {
  std::string out;
  if (from.empty()) {
    // Python inserts `to` around every character
    std::u32string u = to_u32(s);
    int64_t n = 0;
    for (size_t k = 0; k <= u.size(); ++k) {
      if (count < 0 || n < count) { out += to; ++n; }
      if (k < u.size()) tok::utf8_append(out, u[k]);
      if (out.size() > max_bytes) fail("replace: result over the output size limit");
    }
    return out;
  }
  size_t start = 0;
  int64_t n = 0;
  while (true) {
    size_t p = s.find(from, start);
    if (p == std::string::npos || (count >= 0 && n >= count)) break;
    out.append(s, start, p - start);
    out += to;
    if (out.size() > max_bytes) fail("replace: result over the output size limit");
    start = p + from.size();
    ++n;
  }
  out.append(s, start);
  return out;
}

std::string html_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

// Python's slice indices for a sequence of length n.
std::vector<int64_t> slice_indices(int64_t n, const std::optional<int64_t>& start, const std::optional<int64_t>& stop,
                                   std::optional<int64_t> step_opt) {
  int64_t step = step_opt.value_or(1);
  if (step == 0) fail("slice step cannot be zero");
  auto adjust = [&](std::optional<int64_t> x, int64_t dflt, int64_t lo, int64_t hi) {
    if (!x) return dflt;
    int64_t v = *x;
    if (v < 0) v += n;
    return std::clamp(v, lo, hi);
  };
  std::vector<int64_t> idx;
  if (step > 0) {
    int64_t a = adjust(start, 0, 0, n), b = adjust(stop, n, 0, n);
    for (int64_t k = a; k < b; k += step) idx.push_back(k);
  } else {
    int64_t a = adjust(start, n - 1, -1, n - 1), b = adjust(stop, -1, -1, n - 1);
    for (int64_t k = a; k > b; k += step) idx.push_back(k);
  }
  return idx;
}

// Items a for loop (or list()) sees.
List iterate(const Value& v) {
  switch (v.k) {
    case Value::Undef: return {};
    case Value::Lst: return *v.list;
    case Value::Dct: {
      if (v.dict->is_namespace) fail("'Namespace' object is not iterable");
      List out;
      for (const auto& kv : v.dict->items) out.push_back(Value::str(kv.first));
      return out;
    }
    case Value::Str: {
      List out;
      for (char32_t c : to_u32(v.s)) out.push_back(Value::str(from_u32(std::u32string(1, c))));
      return out;
    }
    default: fail(std::string("'") + type_name(v) + "' object is not iterable");
  }
}

bool contains(const Value& container, const Value& x) {
  switch (container.k) {
    case Value::Str:
      if (x.k != Value::Str) fail(std::string("'in <string>' requires string as left operand, not ") + type_name(x));
      return container.s.find(x.s) != std::string::npos;
    case Value::Lst:
      return std::any_of(container.list->begin(), container.list->end(), [&](const Value& e) { return equal(e, x); });
    case Value::Dct:
      return x.k == Value::Str && container.dict->find(x.s) != nullptr;
    case Value::Undef: return false;
    default: fail(std::string("argument of type '") + type_name(container) + "' is not iterable");
  }
}

int compare(const Value& a, const Value& b, const char* op) {
  if (a.is_num() && b.is_num()) {
    if (a.k != Value::Float && b.k != Value::Float) {
      int64_t x = a.k == Value::Int ? a.i : a.b, y = b.k == Value::Int ? b.i : b.b;
      return x < y ? -1 : x > y ? 1 : 0;
    }
    double x = a.num(), y = b.num();
    return x < y ? -1 : x > y ? 1 : 0;
  }
  if (a.k == Value::Str && b.k == Value::Str) return a.s < b.s ? -1 : a.s > b.s ? 1 : 0;
  if (a.k == Value::Lst && b.k == Value::Lst) {
    for (size_t k = 0; k < std::min(a.list->size(), b.list->size()); ++k) {
      if (equal((*a.list)[k], (*b.list)[k])) continue;
      return compare((*a.list)[k], (*b.list)[k], op);
    }
    return a.list->size() < b.list->size() ? -1 : a.list->size() > b.list->size() ? 1 : 0;
  }
  fail(std::string("'") + op + "' not supported between instances of '" + type_name(a) + "' and '" + type_name(b) +
       "'");
}

// ---- lexer -----------------------------------------------------------------

struct Token {
  enum Kind { Name, String, Integer, Float, Op, End, Eof } kind;
  std::string text;  // name, operator, string value
  int64_t ival = 0;
  double fval = 0;
  int line = 1, col = 1;
};

// One piece of the template: literal text or a tag's tokens.
struct Piece {
  enum Kind { Text, Var, Block } kind;
  std::string text;
  std::vector<Token> tokens;  // ends with an End token
  int line = 1, col = 1;
};

[[noreturn]] void syntax_error(int line, int col, const std::string& msg) {
  throw Error("chat template line " + std::to_string(line) + " col " + std::to_string(col) + ": " + msg);
}

class Lexer {
 public:
  Lexer(std::string src, const Options& o) : s_(std::move(src)), o_(o) {}

  std::vector<Piece> run() {
    std::vector<Piece> out;
    bool line_starting = true;
    while (pos_ < s_.size()) {
      size_t tag = find_tag(pos_);
      std::string text = s_.substr(pos_, tag - pos_);
      const int tline = line_, tcol = col_;
      advance_to(tag);
      if (tag == s_.size()) {
        if (!text.empty()) out.push_back({Piece::Text, std::move(text), {}, tline, tcol});
        break;
      }
      const char kind = s_[tag + 1];  // '{', '%' or '#'
      const char sign = tag + 2 < s_.size() ? s_[tag + 2] : 0;
      if (sign == '-') {
        text = py_strip(text, std::nullopt, false, true);
      } else if (sign != '+' && o_.lstrip_blocks && kind != '{') {
        size_t l_pos = text.rfind('\n');
        l_pos = l_pos == std::string::npos ? 0 : l_pos + 1;
        if ((l_pos > 0 || line_starting) && l_pos < text.size() &&
            py_strip(text.substr(l_pos), std::nullopt, true, false).empty())
          text.resize(l_pos);
      }
      if (!text.empty()) out.push_back({Piece::Text, std::move(text), {}, tline, tcol});
      const int line = line_, col = col_;
      advance_to(tag + 2 + ((sign == '-' || sign == '+') ? 1 : 0));
      bool end_strip = false;
      if (kind == '#') {
        size_t e = s_.find("#}", pos_);
        if (e == std::string::npos) syntax_error(line, col, "unclosed comment");
        end_strip = e > pos_ && s_[e - 1] == '-';
        advance_to(e + 2);
      } else {
        Piece p{kind == '{' ? Piece::Var : Piece::Block, "", {}, line, col};
        end_strip = lex_tag(p, kind == '{' ? '}' : '%');
        if (p.kind == Piece::Block && p.tokens.size() == 2 && p.tokens[0].kind == Token::Name &&
            p.tokens[0].text == "raw") {
          out.push_back(raw_block(line, col, end_strip));
          end_strip = raw_end_strip_;
          line_starting = finish_tag(end_strip, true);
          continue;
        }
        out.push_back(std::move(p));
      }
      line_starting = finish_tag(end_strip, kind != '{');
    }
    return out;
  }

 private:
  static bool is_ascii_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

  size_t find_tag(size_t from) const {
    for (size_t p = s_.find('{', from); p != std::string::npos; p = s_.find('{', p + 1))
      if (p + 1 < s_.size() && (s_[p + 1] == '{' || s_[p + 1] == '%' || s_[p + 1] == '#')) return p;
    return s_.size();
  }

  void advance_to(size_t p) {
    for (; pos_ < p; ++pos_) {
      if (s_[pos_] == '\n') { ++line_; col_ = 1; }
      else ++col_;
    }
  }

  // After a tag end: '-' strips the white space that follows; trim_blocks
  // drops one newline after a block or comment. Returns Jinja's line_starting.
  bool finish_tag(bool end_strip, bool block) {
    if (end_strip) {  // `\s*` after the tag (Unicode white space, as Python's re)
      size_t e = pos_;
      while (e < s_.size()) {
        size_t k = e;
        if (!tok::utf8_valid_len(s_, k) || !is_py_space(tok::utf8_next(s_, k))) break;
        e = k;
      }
      bool nl = e > pos_ && s_[e - 1] == '\n';
      advance_to(e);
      return nl;
    }
    if (block && o_.trim_blocks && pos_ < s_.size() && s_[pos_] == '\n') {
      advance_to(pos_ + 1);
      return true;
    }
    return false;
  }

  Piece raw_block(int line, int col, bool start_strip) {
    // text up to {% endraw %} (with optional - / + signs)
    size_t p = pos_;
    if (start_strip) while (p < s_.size() && is_ascii_space(s_[p])) ++p;
    size_t search = p;
    while (true) {
      size_t t = s_.find("{%", search);
      if (t == std::string::npos) syntax_error(line, col, "raw block is not closed by {% endraw %}");
      size_t q = t + 2;
      bool lstrip = q < s_.size() && s_[q] == '-';
      if (q < s_.size() && (s_[q] == '-' || s_[q] == '+')) ++q;
      while (q < s_.size() && is_ascii_space(s_[q])) ++q;
      if (s_.compare(q, 6, "endraw") == 0) {
        size_t r = q + 6;
        while (r < s_.size() && is_ascii_space(s_[r])) ++r;
        bool rstrip = r < s_.size() && s_[r] == '-';
        if (rstrip) ++r;
        if (s_.compare(r, 2, "%}") == 0) {
          std::string text = s_.substr(p, t - p);
          if (lstrip) {
            size_t e = text.size();
            while (e > 0 && is_ascii_space(text[e - 1])) --e;
            text.resize(e);
          }
          advance_to(r + 2);
          raw_end_strip_ = rstrip;
          return {Piece::Text, std::move(text), {}, line, col};
        }
      }
      search = t + 2;
    }
  }

  // Tokens up to the tag's end ("}}" or "%}"); returns whether it was "-}}"/"-%}".
  bool lex_tag(Piece& p, char close) {
    int depth = 0;
    while (true) {
      while (pos_ < s_.size() && is_ascii_space(s_[pos_])) advance_to(pos_ + 1);
      if (pos_ >= s_.size()) syntax_error(p.line, p.col, std::string("tag not closed (missing '") + close + "}')");
      const int line = line_, col = col_;
      const char c = s_[pos_];
      if (depth == 0 && c == '-' && pos_ + 2 < s_.size() + 0 && s_[pos_ + 1] == close && s_[pos_ + 2] == '}') {
        advance_to(pos_ + 3);
        p.tokens.push_back({Token::End, "", 0, 0, line, col});
        return true;
      }
      if (depth == 0 && c == close && pos_ + 1 < s_.size() && s_[pos_ + 1] == '}') {
        advance_to(pos_ + 2);
        p.tokens.push_back({Token::End, "", 0, 0, line, col});
        return false;
      }
      if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        size_t e = pos_;
        while (e < s_.size() && (std::isalnum(static_cast<unsigned char>(s_[e])) || s_[e] == '_')) ++e;
        p.tokens.push_back({Token::Name, s_.substr(pos_, e - pos_), 0, 0, line, col});
        advance_to(e);
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        size_t e = pos_;
        while (e < s_.size() && (std::isdigit(static_cast<unsigned char>(s_[e])) || s_[e] == '_')) ++e;
        bool is_float = false;
        if (e + 1 < s_.size() && s_[e] == '.' && std::isdigit(static_cast<unsigned char>(s_[e + 1]))) {
          is_float = true;
          ++e;
          while (e < s_.size() && (std::isdigit(static_cast<unsigned char>(s_[e])) || s_[e] == '_')) ++e;
        }
        if (e < s_.size() && (s_[e] == 'e' || s_[e] == 'E')) {
          size_t q = e + 1;
          if (q < s_.size() && (s_[q] == '+' || s_[q] == '-')) ++q;
          if (q < s_.size() && std::isdigit(static_cast<unsigned char>(s_[q]))) {
            is_float = true;
            e = q;
            while (e < s_.size() && std::isdigit(static_cast<unsigned char>(s_[e]))) ++e;
          }
        }
        std::string num = s_.substr(pos_, e - pos_);
        num.erase(std::remove(num.begin(), num.end(), '_'), num.end());
        Token t{is_float ? Token::Float : Token::Integer, num, 0, 0, line, col};
        if (is_float) {
          t.fval = std::strtod(num.c_str(), nullptr);
        } else {
          auto r = std::from_chars(num.data(), num.data() + num.size(), t.ival);
          if (r.ec != std::errc()) syntax_error(line, col, "integer literal out of range");
        }
        p.tokens.push_back(t);
        advance_to(e);
      } else if (c == '\'' || c == '"') {
        p.tokens.push_back({Token::String, read_string(c, line, col), 0, 0, line, col});
      } else {
        static const char* const ops[] = {"//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">",
                                          "=", "(", ")", "[", "]", "{", "}", ",", ".", ":", "|", ";"};
        std::string op;
        for (const char* o : ops)
          if (s_.compare(pos_, std::strlen(o), o) == 0) { op = o; break; }
        if (op.empty()) syntax_error(line, col, std::string("unexpected character '") + c + "'");
        if (op == "(" || op == "[" || op == "{") ++depth;
        if (op == ")" || op == "]" || op == "}") --depth;
        p.tokens.push_back({Token::Op, op, 0, 0, line, col});
        advance_to(pos_ + op.size());
      }
    }
  }

  std::string read_string(char q, int line, int col) {
    std::string out;
    size_t i = pos_ + 1;
    while (true) {
      if (i >= s_.size()) syntax_error(line, col, "unterminated string");
      char c = s_[i];
      if (c == q) break;
      if (c != '\\') { out += c; ++i; continue; }
      if (i + 1 >= s_.size()) syntax_error(line, col, "unterminated string");
      char e = s_[i + 1];
      i += 2;
      switch (e) {
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case '\\': out += '\\'; break;
        case '\'': out += '\''; break;
        case '"': out += '"'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'v': out += '\v'; break;
        case 'a': out += '\a'; break;
        case '0': out += '\0'; break;
        case '\n': break;
        case 'x': case 'u': case 'U': {
          size_t n = e == 'x' ? 2 : e == 'u' ? 4 : 8;
          if (i + n > s_.size()) syntax_error(line, col, "truncated \\" + std::string(1, e) + " escape");
          uint32_t cp = 0;
          auto r = std::from_chars(s_.data() + i, s_.data() + i + n, cp, 16);
          if (r.ec != std::errc() || r.ptr != s_.data() + i + n || cp > 0x10FFFF)
            syntax_error(line, col, "bad \\" + std::string(1, e) + " escape");
          tok::utf8_append(out, char32_t(cp));
          i += n;
          break;
        }
        default: out += '\\'; out += e;
      }
    }
    advance_to(i + 1);
    return out;
  }

  std::string s_;
  const Options& o_;
  size_t pos_ = 0;
  int line_ = 1, col_ = 1;
  bool raw_end_strip_ = false;
};

// ---- syntax tree -----------------------------------------------------------

struct Expr;
using ExprP = std::unique_ptr<Expr>;
struct Expr {
  enum Kind {
    Literal, Name, Attr, Item, Slice, Call, Filter, Test, Neg, Pos, Not, Binary, Compare, And, Or, Cond,
    ListLit, TupleLit, DictLit
  } kind;
  int line = 1, col = 1;
  Value lit;
  std::string name;                 // Name, Attr, Filter, Test, Binary op
  std::vector<ExprP> args;          // operands / positional arguments / elements
  std::vector<std::pair<std::string, ExprP>> kwargs;
  std::vector<std::string> ops;     // Compare
  bool negated = false;             // Test
  bool has[3] = {false, false, false};  // Slice: which of start, stop, step are given
};

struct Stmt;
using Body = std::vector<std::unique_ptr<Stmt>>;
struct Stmt {
  enum Kind { Text, Output, If, For, Set, SetBlock, Macro, CallBlock, FilterBlock, Break, Continue, Scope } kind;
  int line = 1, col = 1;
  std::string text;                                   // Text; Macro name; Set attribute
  ExprP expr;                                         // Output, Set value, For iterable, filter chain
  ExprP cond;                                         // For filter
  std::vector<std::pair<ExprP, Body>> branches;       // If
  std::vector<std::string> targets;                   // For / Set names
  ExprP target_obj;                                   // Set ns.attr
  Body body, else_body;
  std::vector<std::pair<std::string, ExprP>> params;  // Macro / call block (default may be null)
};

// ---- parser ----------------------------------------------------------------

class Parser {
 public:
  Parser(std::vector<Piece>& pieces, const Limits& limits) : pieces_(pieces), limits_(limits) {}

  Body parse_template() {
    std::string end;
    Body b = parse_body({}, end);
    return b;
  }

 private:
  // Statements until one of `stops` (a block tag whose first name is in it);
  // `found` gets that name, with the tag's tokens left at the name.
  Body parse_body(const std::vector<std::string>& stops, std::string& found) {
    Body body;
    while (pi_ < pieces_.size()) {
      Piece& p = pieces_[pi_];
      if (p.kind == Piece::Text) {
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Text;
        s->line = p.line;
        s->col = p.col;
        s->text = p.text;
        body.push_back(std::move(s));
        ++pi_;
        continue;
      }
      toks_ = &p.tokens;
      ti_ = 0;
      if (p.kind == Piece::Var) {
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Output;
        s->line = p.line;
        s->col = p.col;
        ++pi_;
        s->expr = parse_tuple_or_expr();
        expect_end();
        body.push_back(std::move(s));
        continue;
      }
      const Token& t = cur();
      if (t.kind != Token::Name) syntax_error(t.line, t.col, "expected a statement name");
      if (std::find(stops.begin(), stops.end(), t.text) != stops.end()) {
        found = t.text;
        ++ti_;
        ++pi_;
        return body;
      }
      ++pi_;
      body.push_back(parse_statement());
    }
    if (!stops.empty()) {
      const Piece& last = pieces_.empty() ? Piece{} : pieces_.back();
      syntax_error(last.line, last.col, "unexpected end of template; expected '" + stops[0] + "'");
    }
    return body;
  }

  const Token& cur() const { return (*toks_)[ti_]; }
  bool at_op(std::string_view op) const { return cur().kind == Token::Op && cur().text == op; }
  bool at_name(std::string_view n) const { return cur().kind == Token::Name && cur().text == n; }
  void expect_op(std::string_view op) {
    if (!at_op(op)) syntax_error(cur().line, cur().col, "expected '" + std::string(op) + "'" + got());
    ++ti_;
  }
  std::string got() const {
    const Token& t = cur();
    if (t.kind == Token::End) return ", got the end of the tag";
    if (t.kind == Token::String) return ", got a string";
    return ", got '" + t.text + "'";
  }
  std::string expect_name() {
    if (cur().kind != Token::Name) syntax_error(cur().line, cur().col, "expected a name" + got());
    return (*toks_)[ti_++].text;
  }
  void expect_end() {
    if (cur().kind != Token::End) syntax_error(cur().line, cur().col, "expected the end of the tag" + got());
  }

  std::unique_ptr<Stmt> make(Stmt::Kind k, const Token& at) {
    auto s = std::make_unique<Stmt>();
    s->kind = k;
    s->line = at.line;
    s->col = at.col;
    return s;
  }

  std::unique_ptr<Stmt> parse_statement() {
    const Token kw = cur();
    ++ti_;
    const std::string& n = kw.text;
    std::string found;
    if (n == "if") {
      auto s = make(Stmt::If, kw);
      ExprP c = parse_expr();
      expect_end();
      while (true) {
        Body b = parse_body({"elif", "else", "endif"}, found);
        s->branches.emplace_back(std::move(c), std::move(b));
        if (found == "elif") {
          c = parse_expr();
          expect_end();
          continue;
        }
        if (found == "else") {
          expect_end();
          s->else_body = parse_body({"endif"}, found);
        }
        expect_end();
        break;
      }
      return s;
    }
    if (n == "for") {
      auto s = make(Stmt::For, kw);
      s->targets.push_back(expect_name());
      while (at_op(",")) {
        ++ti_;
        s->targets.push_back(expect_name());
      }
      if (!at_name("in")) syntax_error(cur().line, cur().col, "expected 'in'" + got());
      ++ti_;
      s->expr = parse_tuple_or_expr(/*no_cond=*/true);
      if (at_name("if")) {
        ++ti_;
        s->cond = parse_expr();
      }
      if (at_name("recursive")) syntax_error(cur().line, cur().col, "recursive for loops are not supported");
      expect_end();
      ++loop_depth_;
      s->body = parse_body({"else", "endfor"}, found);
      --loop_depth_;
      if (found == "else") {
        expect_end();
        s->else_body = parse_body({"endfor"}, found);
      }
      expect_end();
      return s;
    }
    if (n == "set") {
      std::string first = expect_name();
      if (at_op(".")) {
        ++ti_;
        auto s = make(Stmt::Set, kw);
        auto obj = std::make_unique<Expr>();
        obj->kind = Expr::Name;
        obj->name = first;
        s->target_obj = std::move(obj);
        s->text = expect_name();
        expect_op("=");
        s->expr = parse_tuple_or_expr();
        expect_end();
        return s;
      }
      std::vector<std::string> targets{first};
      while (at_op(",")) {
        ++ti_;
        targets.push_back(expect_name());
      }
      if (at_op("=")) {
        ++ti_;
        auto s = make(Stmt::Set, kw);
        s->targets = std::move(targets);
        s->expr = parse_tuple_or_expr();
        expect_end();
        return s;
      }
      auto s = make(Stmt::SetBlock, kw);
      s->targets = std::move(targets);
      if (at_op("|")) s->expr = parse_filter_chain();
      expect_end();
      s->body = parse_body({"endset"}, found);
      expect_end();
      return s;
    }
    if (n == "macro") {
      auto s = make(Stmt::Macro, kw);
      s->text = expect_name();
      parse_params(s->params);
      expect_end();
      const int outer_loops = loop_depth_;
      loop_depth_ = 0;  // a macro body is not inside the loop around its definition
      s->body = parse_body({"endmacro"}, found);
      loop_depth_ = outer_loops;
      if (cur().kind == Token::Name) ++ti_;
      expect_end();
      return s;
    }
    if (n == "call") {
      auto s = make(Stmt::CallBlock, kw);
      if (at_op("(")) parse_params(s->params);
      s->expr = parse_expr();
      if (s->expr->kind != Expr::Call) syntax_error(kw.line, kw.col, "call block needs a call expression");
      expect_end();
      s->body = parse_body({"endcall"}, found);
      expect_end();
      return s;
    }
    if (n == "filter") {
      auto s = make(Stmt::FilterBlock, kw);
      s->expr = parse_filter_chain(/*leading_bar=*/false);
      expect_end();
      s->body = parse_body({"endfilter"}, found);
      expect_end();
      return s;
    }
    if (n == "generation") {  // HF's assistant-mask extension: renders its body
      auto s = make(Stmt::Scope, kw);
      expect_end();
      s->body = parse_body({"endgeneration"}, found);
      expect_end();
      return s;
    }
    if (n == "break" || n == "continue") {
      if (loop_depth_ == 0) syntax_error(kw.line, kw.col, "'" + n + "' outside a for loop");
      auto s = make(n == "break" ? Stmt::Break : Stmt::Continue, kw);
      expect_end();
      return s;
    }
    syntax_error(kw.line, kw.col, "unknown or misplaced statement '" + n + "'");
  }

  void parse_params(std::vector<std::pair<std::string, ExprP>>& params) {
    expect_op("(");
    while (!at_op(")")) {
      std::string name = expect_name();
      ExprP dflt;
      if (at_op("=")) {
        ++ti_;
        dflt = parse_expr();
      }
      params.emplace_back(std::move(name), std::move(dflt));
      if (!at_op(",")) break;
      ++ti_;
    }
    expect_op(")");
  }

  // `|f(args)|g` applied to a placeholder (an Undef literal named "__body__").
  ExprP parse_filter_chain(bool leading_bar = true) {
    auto e = std::make_unique<Expr>();
    e->kind = Expr::Literal;
    e->name = "__body__";
    if (!leading_bar) e = apply_filter(std::move(e));
    while (at_op("|")) {
      ++ti_;
      e = apply_filter(std::move(e));
    }
    return e;
  }

  struct DepthGuard {
    int& d;
    DepthGuard(int& d_, int max, const Token& t) : d(d_) {
      if (++d > max) syntax_error(t.line, t.col, "expression nested too deeply");
    }
    ~DepthGuard() { --d; }
  };

  ExprP node(Expr::Kind k, const Token& at) {
    auto e = std::make_unique<Expr>();
    e->kind = k;
    e->line = at.line;
    e->col = at.col;
    return e;
  }

  ExprP parse_tuple_or_expr(bool no_cond = false) {
    const Token at = cur();
    ExprP first = no_cond ? parse_or() : parse_expr();
    if (!at_op(",")) return first;
    auto t = node(Expr::TupleLit, at);
    t->args.push_back(std::move(first));
    while (at_op(",")) {
      ++ti_;
      if (cur().kind == Token::End || at_name("if")) break;
      t->args.push_back(no_cond ? parse_or() : parse_expr());
    }
    return t;
  }

  ExprP parse_expr() {
    DepthGuard g(depth_, limits_.max_depth, cur());
    const Token at = cur();
    ExprP e = parse_or();
    if (at_name("if")) {
      ++ti_;
      auto c = node(Expr::Cond, at);
      ExprP cond = parse_or();
      ExprP other;
      if (at_name("else")) {
        ++ti_;
        other = parse_expr();
      }
      c->args.push_back(std::move(cond));
      c->args.push_back(std::move(e));
      c->args.push_back(std::move(other));
      return c;
    }
    return e;
  }

  ExprP parse_or() {
    ExprP l = parse_and();
    while (at_name("or")) {
      const Token at = cur();
      ++ti_;
      auto n = node(Expr::Or, at);
      n->args.push_back(std::move(l));
      n->args.push_back(parse_and());
      l = std::move(n);
    }
    return l;
  }
  ExprP parse_and() {
    ExprP l = parse_not();
    while (at_name("and")) {
      const Token at = cur();
      ++ti_;
      auto n = node(Expr::And, at);
      n->args.push_back(std::move(l));
      n->args.push_back(parse_not());
      l = std::move(n);
    }
    return l;
  }
  ExprP parse_not() {
    if (at_name("not")) {
      DepthGuard g(depth_, limits_.max_depth, cur());
      auto n = node(Expr::Not, cur());
      ++ti_;
      n->args.push_back(parse_not());
      return n;
    }
    return parse_compare();
  }
  ExprP parse_compare() {
    const Token at = cur();
    ExprP first = parse_math1();
    ExprP cmp;
    while (true) {
      std::string op;
      if (cur().kind == Token::Op &&
          (cur().text == "==" || cur().text == "!=" || cur().text == "<" || cur().text == "<=" ||
           cur().text == ">" || cur().text == ">=")) {
        op = cur().text;
        ++ti_;
      } else if (at_name("in")) {
        op = "in";
        ++ti_;
      } else if (at_name("not") && ti_ + 1 < toks_->size() && (*toks_)[ti_ + 1].kind == Token::Name &&
                 (*toks_)[ti_ + 1].text == "in") {
        op = "notin";
        ti_ += 2;
      } else {
        break;
      }
      if (!cmp) {
        cmp = node(Expr::Compare, at);
        cmp->args.push_back(std::move(first));
      }
      cmp->ops.push_back(op);
      cmp->args.push_back(parse_math1());
    }
    return cmp ? std::move(cmp) : std::move(first);
  }
  ExprP binary(std::string op, ExprP l, ExprP r, const Token& at) {
    auto n = node(Expr::Binary, at);
    n->name = std::move(op);
    n->args.push_back(std::move(l));
    n->args.push_back(std::move(r));
    return n;
  }
  ExprP parse_math1() {
    ExprP l = parse_concat();
    while (at_op("+") || at_op("-")) {
      const Token at = cur();
      ++ti_;
      l = binary(at.text, std::move(l), parse_concat(), at);
    }
    return l;
  }
  ExprP parse_concat() {
    ExprP l = parse_math2();
    while (at_op("~")) {
      const Token at = cur();
      ++ti_;
      l = binary("~", std::move(l), parse_math2(), at);
    }
    return l;
  }
  ExprP parse_math2() {
    ExprP l = parse_pow();
    while (at_op("*") || at_op("/") || at_op("//") || at_op("%")) {
      const Token at = cur();
      ++ti_;
      l = binary(at.text, std::move(l), parse_pow(), at);
    }
    return l;
  }
  ExprP parse_pow() {
    ExprP l = parse_unary();
    while (at_op("**")) {
      const Token at = cur();
      ++ti_;
      l = binary("**", std::move(l), parse_unary(), at);
    }
    return l;
  }
  ExprP parse_unary(bool with_filter = true) {
    DepthGuard g(depth_, limits_.max_depth, cur());
    const Token at = cur();
    ExprP e;
    if (at_op("-") || at_op("+")) {
      ++ti_;
      e = node(at.text == "-" ? Expr::Neg : Expr::Pos, at);
      e->args.push_back(parse_unary(false));
    } else {
      e = parse_primary();
    }
    e = parse_postfix(std::move(e));
    if (with_filter) e = parse_filter_expr(std::move(e));
    return e;
  }

  ExprP parse_primary() {
    const Token t = cur();
    switch (t.kind) {
      case Token::Name: {
        ++ti_;
        if (t.text == "true" || t.text == "True") return literal(Value::boolean(true), t);
        if (t.text == "false" || t.text == "False") return literal(Value::boolean(false), t);
        if (t.text == "none" || t.text == "None") return literal(Value::none(), t);
        auto n = node(Expr::Name, t);
        n->name = t.text;
        return n;
      }
      case Token::String: {
        std::string s;
        while (cur().kind == Token::String) s += (*toks_)[ti_++].text;
        return literal(Value::str(std::move(s)), t);
      }
      case Token::Integer: ++ti_; return literal(Value::integer(t.ival), t);
      case Token::Float: ++ti_; return literal(Value::real(t.fval), t);
      case Token::Op:
        if (t.text == "(") {
          ++ti_;
          if (at_op(")")) {
            ++ti_;
            return node(Expr::TupleLit, t);
          }
          ExprP e = parse_expr();
          if (at_op(",")) {
            auto tu = node(Expr::TupleLit, t);
            tu->args.push_back(std::move(e));
            while (at_op(",")) {
              ++ti_;
              if (at_op(")")) break;
              tu->args.push_back(parse_expr());
            }
            e = std::move(tu);
          }
          expect_op(")");
          return e;
        }
        if (t.text == "[") {
          ++ti_;
          auto l = node(Expr::ListLit, t);
          while (!at_op("]")) {
            l->args.push_back(parse_expr());
            if (!at_op(",")) break;
            ++ti_;
          }
          expect_op("]");
          return l;
        }
        if (t.text == "{") {
          ++ti_;
          auto d = node(Expr::DictLit, t);
          while (!at_op("}")) {
            d->args.push_back(parse_expr());
            expect_op(":");
            d->args.push_back(parse_expr());
            if (!at_op(",")) break;
            ++ti_;
          }
          expect_op("}");
          return d;
        }
        break;
      default: break;
    }
    syntax_error(t.line, t.col, "unexpected " + std::string(t.kind == Token::End ? "end of tag" : "'" + t.text + "'"));
  }

  ExprP literal(Value v, const Token& at) {
    auto n = node(Expr::Literal, at);
    n->lit = std::move(v);
    return n;
  }

  void parse_call_args(Expr& call) {
    expect_op("(");
    while (!at_op(")")) {
      if (cur().kind == Token::Name && ti_ + 1 < toks_->size() && (*toks_)[ti_ + 1].kind == Token::Op &&
          (*toks_)[ti_ + 1].text == "=") {
        std::string k = cur().text;
        ti_ += 2;
        call.kwargs.emplace_back(std::move(k), parse_expr());
      } else {
        if (!call.kwargs.empty()) syntax_error(cur().line, cur().col, "positional argument after keyword argument");
        call.args.push_back(parse_expr());
      }
      if (!at_op(",")) break;
      ++ti_;
    }
    expect_op(")");
  }

  ExprP parse_postfix(ExprP e) {
    while (true) {
      const Token at = cur();
      if (at_op(".")) {
        ++ti_;
        auto n = node(Expr::Attr, at);
        if (cur().kind == Token::Integer) {
          n->kind = Expr::Item;
          n->args.push_back(std::move(e));
          n->args.push_back(literal(Value::integer(cur().ival), cur()));
          ++ti_;
        } else {
          n->name = expect_name();
          n->args.push_back(std::move(e));
        }
        e = std::move(n);
      } else if (at_op("[")) {
        ++ti_;
        ExprP parts[3];
        bool is_slice = false;
        for (int k = 0; k < 3; ++k) {
          if (!at_op(":") && !at_op("]")) parts[k] = parse_expr();
          if (k < 2 && at_op(":")) {
            is_slice = true;
            ++ti_;
          } else {
            break;
          }
        }
        expect_op("]");
        if (!is_slice) {
          if (!parts[0]) syntax_error(at.line, at.col, "empty subscript");
          auto n = node(Expr::Item, at);
          n->args.push_back(std::move(e));
          n->args.push_back(std::move(parts[0]));
          e = std::move(n);
        } else {
          auto n = node(Expr::Slice, at);
          n->args.push_back(std::move(e));
          for (int k = 0; k < 3; ++k) {
            n->has[k] = parts[k] != nullptr;
            n->args.push_back(std::move(parts[k]));
          }
          e = std::move(n);
        }
      } else if (at_op("(")) {
        auto n = node(Expr::Call, at);
        n->args.push_back(std::move(e));
        parse_call_args(*n);
        e = std::move(n);
      } else {
        return e;
      }
    }
  }

  ExprP apply_filter(ExprP e) {
    const Token at = cur();
    auto f = node(Expr::Filter, at);
    f->name = expect_name();
    while (at_op(".")) {  // dotted filter names
      ++ti_;
      f->name += "." + expect_name();
    }
    f->args.push_back(std::move(e));
    if (at_op("(")) parse_call_args(*f);
    return f;
  }

  ExprP parse_filter_expr(ExprP e) {
    while (true) {
      if (at_op("|")) {
        ++ti_;
        e = apply_filter(std::move(e));
      } else if (at_name("is")) {
        const Token at = cur();
        ++ti_;
        auto t = node(Expr::Test, at);
        if (at_name("not")) {
          t->negated = true;
          ++ti_;
        }
        t->name = expect_name();
        t->args.push_back(std::move(e));
        if (at_op("(")) {
          parse_call_args(*t);
        } else if ((cur().kind == Token::Name || cur().kind == Token::String || cur().kind == Token::Integer ||
                    cur().kind == Token::Float || at_op("[") || at_op("{")) &&
                   !at_name("else") && !at_name("or") && !at_name("and") && !at_name("if") && !at_name("in") &&
                   !at_name("not")) {
          if (at_name("is")) syntax_error(cur().line, cur().col, "you cannot chain multiple tests with is");
          t->args.push_back(parse_postfix(parse_primary()));
        }
        e = std::move(t);
      } else {
        return e;
      }
    }
  }

  std::vector<Piece>& pieces_;
  const Limits& limits_;
  size_t pi_ = 0;
  std::vector<Token>* toks_ = nullptr;
  size_t ti_ = 0;
  int depth_ = 0;
  int loop_depth_ = 0;
};

}  // namespace

// ---- evaluator -------------------------------------------------------------

namespace {

struct Compiled {
  Options options;
  Body body;
};

struct Frame {
  std::unordered_map<std::string, Value> vars;
  Frame* parent = nullptr;
  const Value* find(const std::string& n) const {
    for (const Frame* f = this; f; f = f->parent)
      if (auto it = f->vars.find(n); it != f->vars.end()) return &it->second;
    return nullptr;
  }
};

enum class Flow { Normal, Break, Continue };

class Renderer {
 public:
  Renderer(const Compiled& t, std::optional<std::time_t> now) : t_(t), lim_(t.options.limits), now_(now) {}

  std::string render(const ojson& ctx) {
    Frame globals;
    install_globals(globals);
    if (!ctx.is_object()) throw Error("chat template context must be an object");
    for (auto it = ctx.begin(); it != ctx.end(); ++it) globals.vars[it.key()] = from_json(it.value());
    Frame top{{}, &globals};
    top_ = &top;
    std::string out;
    try {
      exec_body(t_.body, top, out);
    } catch (const Raised& e) {
      throw Error(std::string("chat template raised an exception: ") + e.what());
    }
    return out;
  }

 private:
  struct Depth {
    int& d;
    Depth(int& d_, int max, int line, int col) : d(d_) {
      if (++d > max) syntax_error(line, col, "template recursion too deep (over " + std::to_string(max) + ")");
    }
    ~Depth() { --d; }
  };

  [[noreturn]] void at_error(int line, int col, const std::string& msg) { syntax_error(line, col, msg); }

  void emit(std::string& out, std::string_view s) {
    if (out.size() + s.size() > lim_.max_output_bytes)
      throw Error("chat template output over the limit of " + std::to_string(lim_.max_output_bytes) + " bytes");
    out += s;
  }

  void count_iteration() {
    if (++iterations_ > lim_.max_iterations)
      throw Error("chat template ran over " + std::to_string(lim_.max_iterations) + " loop iterations");
  }

  // ---- statements

  Flow exec_body(const Body& body, Frame& f, std::string& out) {
    for (const auto& s : body) {
      Flow fl = exec(*s, f, out);
      if (fl != Flow::Normal) return fl;
    }
    return Flow::Normal;
  }

  Flow exec(const Stmt& s, Frame& f, std::string& out) {
    Depth d(depth_, lim_.max_depth, s.line, s.col);
    try {
      return exec_inner(s, f, out);
    } catch (const RenderError& e) {
      at_error(s.line, s.col, e.what());
    }
  }

  void assign(Frame& f, const std::vector<std::string>& targets, const Value& v) {
    if (targets.size() == 1) {
      f.vars[targets[0]] = v;
      return;
    }
    if (v.k != Value::Lst && v.k != Value::Str) fail(std::string("cannot unpack non-iterable ") + type_name(v));
    List items = iterate(v);
    if (items.size() != targets.size())
      fail("cannot unpack " + std::to_string(items.size()) + " values into " + std::to_string(targets.size()));
    for (size_t k = 0; k < targets.size(); ++k) f.vars[targets[k]] = items[k];
  }

  Flow exec_inner(const Stmt& s, Frame& f, std::string& out) {
    switch (s.kind) {
      case Stmt::Text: emit(out, s.text); return Flow::Normal;
      case Stmt::Output: emit(out, py_str(eval(*s.expr, f))); return Flow::Normal;
      case Stmt::If:
        for (const auto& [c, b] : s.branches)
          if (truthy(eval(*c, f))) return exec_body(b, f, out);
        return exec_body(s.else_body, f, out);
      case Stmt::For: return exec_for(s, f, out);
      case Stmt::Set: {
        Value v = eval(*s.expr, f);
        if (s.target_obj) {
          Value obj = eval(*s.target_obj, f);
          if (obj.k != Value::Dct || !obj.dict->is_namespace)
            fail("cannot assign attribute on non-namespace object");
          if (!s.text.empty() && s.text[0] == '_')
            fail("Chat templates cannot store underscore-prefixed attributes on a namespace, but got '" + s.text + "'");
          obj.dict->set(s.text, std::move(v));
        } else {
          assign(f, s.targets, v);
        }
        return Flow::Normal;
      }
      case Stmt::SetBlock: {
        std::string captured;
        Frame inner{{}, &f};
        exec_body(s.body, inner, captured);
        Value v = Value::str(std::move(captured));
        if (s.expr) v = apply_chain(*s.expr, std::move(v), f);
        assign(f, s.targets, v);
        return Flow::Normal;
      }
      case Stmt::Macro: f.vars[s.text] = make_macro(s, s.text); return Flow::Normal;
      case Stmt::CallBlock: {
        const Expr& call = *s.expr;
        Value fn = eval(*call.args[0], f);
        Args a = eval_args(call, f);
        a.kw.emplace_back("caller", make_macro(s, "caller"));
        emit(out, py_str(invoke(fn, a)));
        return Flow::Normal;
      }
      case Stmt::FilterBlock: {
        std::string captured;
        exec_body(s.body, f, captured);
        emit(out, py_str(apply_chain(*s.expr, Value::str(std::move(captured)), f)));
        return Flow::Normal;
      }
      case Stmt::Scope: return exec_body(s.body, f, out);
      case Stmt::Break: return Flow::Break;
      case Stmt::Continue: return Flow::Continue;
    }
    return Flow::Normal;
  }

  // Applies a filter chain whose innermost operand is the "__body__" placeholder.
  Value apply_chain(const Expr& e, Value body, Frame& f) {
    if (e.kind == Expr::Literal && e.name == "__body__") return body;
    Value inner = apply_chain(*e.args[0], std::move(body), f);
    return call_filter(e, std::move(inner), f);
  }

  Flow exec_for(const Stmt& s, Frame& f, std::string& out) {
    Value seq = eval(*s.expr, f);
    List items = iterate(seq);
    if (s.cond) {
      List kept;
      for (auto& it : items) {
        count_iteration();
        Frame probe{{}, &f};
        assign(probe, s.targets, it);
        if (truthy(eval(*s.cond, probe))) kept.push_back(std::move(it));
      }
      items = std::move(kept);
    }
    if (items.empty()) {
      Frame inner{{}, &f};
      return exec_body(s.else_body, inner, out) == Flow::Break ? Flow::Normal : Flow::Normal;
    }
    const int64_t n = int64_t(items.size());
    for (int64_t k = 0; k < n; ++k) {
      count_iteration();
      Frame inner{{}, &f};
      assign(inner, s.targets, items[k]);
      Value loop = Value::dct();
      auto& L = *loop.dict;
      L.items = {{"index", Value::integer(k + 1)},
                 {"index0", Value::integer(k)},
                 {"revindex", Value::integer(n - k)},
                 {"revindex0", Value::integer(n - k - 1)},
                 {"first", Value::boolean(k == 0)},
                 {"last", Value::boolean(k == n - 1)},
                 {"length", Value::integer(n)},
                 {"depth", Value::integer(1)},
                 {"depth0", Value::integer(0)},
                 {"previtem", k > 0 ? items[k - 1] : Value::undef("there is no previous item")},
                 {"nextitem", k + 1 < n ? items[k + 1] : Value::undef("there is no next item")}};
      L.items.emplace_back("cycle", make_fn("loop.cycle", [k](Args& a) {
                             if (a.pos.empty()) fail("no items for cycling given");
                             return a.pos[size_t(k) % a.pos.size()];
                           }));
      inner.vars["loop"] = std::move(loop);
      Flow fl = exec_body(s.body, inner, out);
      if (fl == Flow::Break) break;
    }
    return Flow::Normal;
  }

  Value make_macro(const Stmt& s, const std::string& name) {
    const Stmt* m = &s;
    Frame* closure = top_;
    return make_fn(name, [this, m, closure, name](Args& a) {
      Frame frame{{}, closure};
      size_t k = 0;
      for (; k < m->params.size(); ++k) {
        const auto& [pname, dflt] = m->params[k];
        if (k < a.pos.size()) frame.vars[pname] = a.pos[k];
        else if (dflt) frame.vars[pname] = eval(*dflt, frame);
        else frame.vars[pname] = Value::undef("'" + pname + "' is undefined");
      }
      List varargs;
      for (size_t j = k; j < a.pos.size(); ++j) varargs.push_back(a.pos[j]);
      if (!varargs.empty() && m->kind == Stmt::Macro)
        fail("macro '" + name + "' takes not more than " + std::to_string(m->params.size()) + " argument(s)");
      for (auto& [kname, v] : a.kw) {
        bool known = kname == "caller" ||
                     std::any_of(m->params.begin(), m->params.end(), [&](auto& p) { return p.first == kname; });
        if (!known) fail("macro '" + name + "' takes no keyword argument '" + kname + "'");
        frame.vars[kname] = v;
      }
      std::string out;
      Depth d(depth_, lim_.max_depth, m->line, m->col);
      exec_body(m->body, frame, out);
      return Value::str(std::move(out));
    });
  }

  // ---- expressions

  Value eval(const Expr& e, Frame& f) {
    Depth d(depth_, lim_.max_depth, e.line, e.col);
    switch (e.kind) {
      case Expr::Literal: return e.lit;
      case Expr::Name: {
        if (const Value* v = f.find(e.name)) return *v;
        return Value::undef("'" + e.name + "' is undefined");
      }
      case Expr::Attr: return get_attr(eval(*e.args[0], f), e.name);
      case Expr::Item: return get_item(eval(*e.args[0], f), eval(*e.args[1], f));
      case Expr::Slice: return slice(e, f);
      case Expr::Call: {
        Args a = eval_args(e, f);
        return invoke(eval(*e.args[0], f), a);
      }
      case Expr::Filter: return call_filter(e, eval(*e.args[0], f), f);
      case Expr::Test: {
        bool r = run_test(e, f);
        return Value::boolean(e.negated ? !r : r);
      }
      case Expr::Neg: case Expr::Pos: {
        Value v = eval(*e.args[0], f);
        check_defined(v);
        if (v.k == Value::Int || v.k == Value::Bool)
          return Value::integer(e.kind == Expr::Neg ? -(v.k == Value::Int ? v.i : v.b) : (v.k == Value::Int ? v.i : v.b));
        if (v.k == Value::Float) return Value::real(e.kind == Expr::Neg ? -v.f : v.f);
        fail(std::string("bad operand type for unary ") + (e.kind == Expr::Neg ? "-" : "+") + ": '" + type_name(v) +
             "'");
      }
      case Expr::Not: return Value::boolean(!truthy(eval(*e.args[0], f)));
      case Expr::And: {
        Value l = eval(*e.args[0], f);
        return truthy(l) ? eval(*e.args[1], f) : l;
      }
      case Expr::Or: {
        Value l = eval(*e.args[0], f);
        return truthy(l) ? l : eval(*e.args[1], f);
      }
      case Expr::Cond:
        if (truthy(eval(*e.args[0], f))) return eval(*e.args[1], f);
        return e.args[2] ? eval(*e.args[2], f) : Value::undef("the inline if-expression evaluated to false");
      case Expr::Binary: return binary(e.name, eval(*e.args[0], f), eval(*e.args[1], f));
      case Expr::Compare: {
        Value l = eval(*e.args[0], f);
        for (size_t k = 0; k < e.ops.size(); ++k) {
          Value r = eval(*e.args[k + 1], f);
          const std::string& op = e.ops[k];
          bool ok;
          if (op == "==") ok = equal(l, r);
          else if (op == "!=") ok = !equal(l, r);
          else if (op == "in") ok = contains(r, l);
          else if (op == "notin") ok = !contains(r, l);
          else {
            check_defined(l);
            check_defined(r);
            int c = compare(l, r, op.c_str());
            ok = op == "<" ? c < 0 : op == "<=" ? c <= 0 : op == ">" ? c > 0 : c >= 0;
          }
          if (!ok) return Value::boolean(false);
          l = std::move(r);
        }
        return Value::boolean(true);
      }
      case Expr::ListLit: case Expr::TupleLit: {
        List l;
        for (const auto& x : e.args) l.push_back(eval(*x, f));
        Value v = Value::lst(std::move(l));
        v.tuple = e.kind == Expr::TupleLit;
        return v;
      }
      case Expr::DictLit: {
        Value d = Value::dct();
        for (size_t k = 0; k + 1 < e.args.size(); k += 2) {
          Value key = eval(*e.args[k], f);
          d.dict->set(key.k == Value::Str ? key.s : py_str(key), eval(*e.args[k + 1], f));
        }
        return d;
      }
    }
    return Value{};
  }

  static void check_defined(const Value& v) {
    if (v.k == Value::Undef) fail(v.s.empty() ? "value is undefined" : v.s);
  }

  Args eval_args(const Expr& call, Frame& f) {
    Args a;
    for (size_t k = 1; k < call.args.size(); ++k) a.pos.push_back(eval(*call.args[k], f));
    for (const auto& [n, x] : call.kwargs) a.kw.emplace_back(n, eval(*x, f));
    return a;
  }

  Value invoke(const Value& fn, Args& a) {
    if (fn.k == Value::Undef) fail(fn.s.empty() ? "call of an undefined value" : fn.s);
    if (fn.k != Value::Fn) fail(std::string("'") + type_name(fn) + "' object is not callable");
    return fn.fn->call(a);
  }

  Value binary(const std::string& op, const Value& a, const Value& b) {
    if (op == "~") {
      std::string s = py_str(a) + py_str(b);
      if (s.size() > lim_.max_output_bytes) fail("string over the output size limit");
      return Value::str(std::move(s));
    }
    check_defined(a);
    check_defined(b);
    auto type_err = [&]() -> Value {
      fail("unsupported operand type(s) for " + op + ": '" + type_name(a) + "' and '" + type_name(b) + "'");
    };
    if (op == "+") {
      if (a.k == Value::Str && b.k == Value::Str) {
        if (a.s.size() + b.s.size() > lim_.max_output_bytes / 2) fail("string over the output size limit");
        if (a.safe || b.safe) {  // Markup + str escapes the str
          Value r = Value::str((a.safe ? a.s : html_escape(a.s)) + (b.safe ? b.s : html_escape(b.s)));
          r.safe = true;
          return r;
        }
        return Value::str(a.s + b.s);
      }
      if (a.k == Value::Lst && b.k == Value::Lst && !a.gen && !b.gen) {
        List l = *a.list;
        l.insert(l.end(), b.list->begin(), b.list->end());
        return Value::lst(std::move(l));
      }
    }
    const bool a_seq = a.k == Value::Str || a.k == Value::Lst, b_seq = b.k == Value::Str || b.k == Value::Lst;
    const bool a_int = a.k == Value::Int || a.k == Value::Bool, b_int = b.k == Value::Int || b.k == Value::Bool;
    if (op == "*" && ((a_seq && b_int) || (b_seq && a_int))) {
      const Value& seq = a.k == Value::Str || a.k == Value::Lst ? a : b;
      const Value& n = &seq == &a ? b : a;
      int64_t times = std::max<int64_t>(0, n.k == Value::Int ? n.i : n.b);
      size_t unit = seq.k == Value::Str ? seq.s.size() : seq.list->size() * 16;
      if (times > 0 && unit > 0 && uint64_t(times) > lim_.max_output_bytes / unit)
        fail("repetition over the output size limit");
      if (seq.k == Value::Str) {
        std::string s;
        for (int64_t k = 0; k < times; ++k) s += seq.s;
        return Value::str(std::move(s));
      }
      List l;
      for (int64_t k = 0; k < times; ++k) l.insert(l.end(), seq.list->begin(), seq.list->end());
      return Value::lst(std::move(l));
    }
    if (op == "%" && a.k == Value::Str) fail("printf-style string formatting is not supported");
    if (!a.is_num() || !b.is_num()) return type_err();
    const bool ints = a.k != Value::Float && b.k != Value::Float;
    const int64_t x = a.k == Value::Int ? a.i : a.b, y = b.k == Value::Int ? b.i : b.b;
    if (op == "+" || op == "-" || op == "*") {
      if (ints) {
        int64_t r;
        bool ovf = op == "+" ? __builtin_add_overflow(x, y, &r)
                 : op == "-" ? __builtin_sub_overflow(x, y, &r)
                             : __builtin_mul_overflow(x, y, &r);
        if (ovf) fail("integer overflow in " + op);
        return Value::integer(r);
      }
      double r = op == "+" ? a.num() + b.num() : op == "-" ? a.num() - b.num() : a.num() * b.num();
      return Value::real(r);
    }
    if (op == "/") {
      if (b.num() == 0) fail("division by zero");
      return Value::real(a.num() / b.num());
    }
    if (op == "//" || op == "%") {
      if (b.num() == 0) fail(op == "//" ? "integer division or modulo by zero" : "modulo by zero");
      if (ints) {
        if (x == INT64_MIN && y == -1) fail("integer overflow in " + op);
        int64_t q = x / y, r = x % y;
        if (r != 0 && ((r < 0) != (y < 0))) { --q; r += y; }
        return Value::integer(op == "//" ? q : r);
      }
      double q = std::floor(a.num() / b.num());
      double r = std::fmod(a.num(), b.num());
      if (r != 0 && ((r < 0) != (b.num() < 0))) r += b.num();
      return Value::real(op == "//" ? q : r);
    }
    if (op == "**") {
      if (ints && y >= 0) {
        int64_t r = 1;
        for (int64_t k = 0; k < y; ++k)
          if (__builtin_mul_overflow(r, x, &r)) fail("integer overflow in **");
          else if (r == 0 || r == 1) break;
        return Value::integer(r);
      }
      return Value::real(std::pow(a.num(), b.num()));
    }
    return type_err();
  }

  Value slice(const Expr& e, Frame& f) {
    Value obj = eval(*e.args[0], f);
    std::optional<int64_t> p[3];
    for (int k = 0; k < 3; ++k) {
      if (!e.has[k]) continue;
      Value v = eval(*e.args[k + 1], f);
      if (v.k == Value::None) continue;
      if (v.k != Value::Int && v.k != Value::Bool) fail("slice indices must be integers or None");
      p[k] = v.k == Value::Int ? v.i : v.b;
    }
    if (obj.k == Value::Str) {
      std::u32string u = to_u32(obj.s);
      std::u32string r;
      for (int64_t k : slice_indices(int64_t(u.size()), p[0], p[1], p[2])) r += u[size_t(k)];
      return Value::str(from_u32(r));
    }
    if (obj.k == Value::Lst) {
      List r;
      for (int64_t k : slice_indices(int64_t(obj.list->size()), p[0], p[1], p[2])) r.push_back((*obj.list)[size_t(k)]);
      return Value::lst(std::move(r));
    }
    check_defined(obj);
    fail(std::string("'") + type_name(obj) + "' object is not subscriptable");
  }

  Value get_item(const Value& obj, const Value& key) {
    check_defined(obj);
    if (obj.k == Value::Dct) {
      if (key.k == Value::Str) {
        if (const Value* v = obj.dict->find(key.s)) return *v;
        if (!obj.dict->is_namespace) {
          Value m = method(obj, key.s);
          if (m.k == Value::Fn) return m;
        }
      }
      return Value::undef("'" + std::string(type_name(obj)) + " object' has no attribute '" + py_str(key) + "'");
    }
    if (obj.k == Value::Lst && obj.gen) return Value::undef("'generator object' has no attribute '" + py_str(key) + "'");
    if ((obj.k == Value::Lst || obj.k == Value::Str) && (key.k == Value::Int || key.k == Value::Bool)) {
      int64_t k = key.k == Value::Int ? key.i : key.b;
      if (obj.k == Value::Lst) {
        int64_t n = int64_t(obj.list->size());
        if (k < 0) k += n;
        if (k < 0 || k >= n) return Value::undef("list object has no element " + py_str(key));
        return (*obj.list)[size_t(k)];
      }
      std::u32string u = to_u32(obj.s);
      int64_t n = int64_t(u.size());
      if (k < 0) k += n;
      if (k < 0 || k >= n) return Value::undef("str object has no element " + py_str(key));
      return Value::str(from_u32(std::u32string(1, u[size_t(k)])));
    }
    if (key.k == Value::Str) return get_attr(obj, key.s);
    return Value::undef("'" + std::string(type_name(obj)) + " object' has no attribute '" + py_str(key) + "'");
  }

  Value get_attr(const Value& obj, const std::string& name) {
    check_defined(obj);
    if (obj.k == Value::Dct && obj.dict->is_namespace) {
      if (const Value* v = obj.dict->find(name)) return *v;
      return Value::undef("'Namespace object' has no attribute '" + name + "'");
    }
    Value m = method(obj, name);
    if (m.k == Value::Fn) return m;
    if (obj.k == Value::Dct)
      if (const Value* v = obj.dict->find(name)) return *v;
    return Value::undef("'" + std::string(type_name(obj)) + " object' has no attribute '" + name + "'");
  }

  // ---- methods of str, dict and list (what the immutable sandbox allows)

  static std::optional<std::string> opt_str(const Value* v, const char* what) {
    if (!v || v->k == Value::None) return std::nullopt;
    if (v->k != Value::Str) fail(std::string(what) + " must be a string or None, not " + type_name(*v));
    return v->s;
  }
  static int64_t opt_int(const Value* v, int64_t dflt) {
    if (!v || v->k == Value::None) return dflt;
    if (v->k != Value::Int && v->k != Value::Bool) fail(std::string("expected an integer, got ") + type_name(*v));
    return v->k == Value::Int ? v->i : v->b;
  }
  static std::string need_str(const Value* v, const char* what) {
    if (!v || v->k != Value::Str) fail(std::string(what) + " must be a string");
    return v->s;
  }

  Value method(const Value& obj, const std::string& name) {
    const size_t max_bytes = lim_.max_output_bytes;
    if (obj.k == Value::Str) {
      const std::string s = obj.s;
      auto strip = [s](bool l, bool r) {
        return [s, l, r](Args& a) { return Value::str(py_strip(s, opt_str(a.get(0, "chars"), "chars"), l, r)); };
      };
      if (name == "strip") return make_fn(name, strip(true, true));
      if (name == "lstrip") return make_fn(name, strip(true, false));
      if (name == "rstrip") return make_fn(name, strip(false, true));
      if (name == "upper") return make_fn(name, [s](Args&) { return Value::str(ascii_case(s, true)); });
      if (name == "lower") return make_fn(name, [s](Args&) { return Value::str(ascii_case(s, false)); });
      if (name == "title") return make_fn(name, [s](Args&) { return Value::str(py_title(s)); });
      if (name == "capitalize") return make_fn(name, [s](Args&) { return Value::str(py_capitalize(s)); });
      if (name == "split" || name == "rsplit")
        return make_fn(name, [s, name](Args& a) {
          auto sep = opt_str(a.get(0, "sep"), "sep");
          int64_t maxsplit = opt_int(a.get(1, "maxsplit"), -1);
          if (name == "rsplit" && maxsplit >= 0) {
            // split from the right: reverse, split with reversed separator, reverse back
            std::u32string u = to_u32(s);
            std::reverse(u.begin(), u.end());
            std::optional<std::string> rsep;
            if (sep) {
              std::u32string us = to_u32(*sep);
              std::reverse(us.begin(), us.end());
              rsep = from_u32(us);
            }
            List parts = py_split(from_u32(u), rsep, maxsplit);
            std::reverse(parts.begin(), parts.end());
            for (auto& p : parts) {
              std::u32string pu = to_u32(p.s);
              std::reverse(pu.begin(), pu.end());
              p.s = from_u32(pu);
            }
            return Value::lst(std::move(parts));
          }
          return Value::lst(py_split(s, sep, maxsplit));
        });
      if (name == "splitlines")
        return make_fn(name, [s](Args&) {
          List out;
          size_t start = 0;
          for (size_t k = 0; k < s.size(); ++k)
            if (s[k] == '\n' || s[k] == '\r') {
              out.push_back(Value::str(s.substr(start, k - start)));
              if (s[k] == '\r' && k + 1 < s.size() && s[k + 1] == '\n') ++k;
              start = k + 1;
            }
          if (start < s.size()) out.push_back(Value::str(s.substr(start)));
          return Value::lst(std::move(out));
        });
      if (name == "startswith" || name == "endswith")
        return make_fn(name, [s, name](Args& a) {
          const Value* p = a.get(0, "prefix");
          if (!p) fail(name + "() takes at least 1 argument");
          List options = p->k == Value::Lst ? *p->list : List{*p};
          for (const auto& o : options) {
            if (o.k != Value::Str) fail(name + " first arg must be str or a tuple of str");
            bool hit = name == "startswith" ? s.starts_with(o.s) : s.ends_with(o.s);
            if (hit) return Value::boolean(true);
          }
          return Value::boolean(false);
        });
      if (name == "replace")
        return make_fn(name, [s, max_bytes](Args& a) {
          return Value::str(py_replace(s, need_str(a.get(0, "old"), "replace() old"),
                                       need_str(a.get(1, "new"), "replace() new"), opt_int(a.get(2, "count"), -1),
                                       max_bytes));
        });
      if (name == "find" || name == "rfind" || name == "count" || name == "index")
        return make_fn(name, [s, name](Args& a) {
          std::string sub = need_str(a.get(0, "sub"), (name + "() argument").c_str());
          if (name == "count") {
            if (sub.empty()) return Value::integer(str_len(s) + 1);
            int64_t n = 0;
            for (size_t p = s.find(sub); p != std::string::npos; p = s.find(sub, p + sub.size())) ++n;
            return Value::integer(n);
          }
          size_t p = name == "rfind" ? s.rfind(sub) : s.find(sub);
          if (p == std::string::npos) {
            if (name == "index") fail("substring not found");
            return Value::integer(-1);
          }
          return Value::integer(str_len(s.substr(0, p)));
        });
      if (name == "join")
        return make_fn(name, [s, max_bytes](Args& a) {
          const Value* it = a.get(0, "iterable");
          if (!it) fail("join() takes exactly one argument");
          std::string out;
          bool first = true;
          for (const auto& x : iterate(*it)) {
            if (x.k != Value::Str) fail(std::string("sequence item: expected str instance, ") + type_name(x) + " found");
            if (!first) out += s;
            out += x.s;
            first = false;
            if (out.size() > max_bytes) fail("join: result over the output size limit");
          }
          return Value::str(std::move(out));
        });
      if (name == "isdigit" || name == "isalpha" || name == "isspace" || name == "isalnum" || name == "isupper" ||
          name == "islower")
        return make_fn(name, [s, name](Args&) {
          if (s.empty()) return Value::boolean(false);
          std::u32string u = to_u32(s);
          bool all = true, cased = false;
          for (char32_t c : u) {
            bool ok;
            if (name == "isdigit") ok = c < 0x80 && std::isdigit(int(c));
            else if (name == "isalpha") ok = is_alpha_cp(c);
            else if (name == "isalnum") ok = is_alpha_cp(c) || (c < 0x80 && std::isdigit(int(c)));
            else if (name == "isspace") ok = is_py_space(c);
            else {
              std::string one = from_u32(std::u32string(1, c));
              bool up = ascii_case(one, true) == one, low = ascii_case(one, false) == one;
              if (up != low) cased = true;
              ok = name == "isupper" ? (up || low == up) : (low || low == up);
            }
            all = all && ok;
          }
          if (name == "isupper" || name == "islower") return Value::boolean(all && cased);
          return Value::boolean(all);
        });
      return Value{};
    }
    if (obj.k == Value::Dct && !obj.dict->is_namespace) {
      auto d = obj.dict;
      if (name == "items")
        return make_fn(name, [d](Args&) {
          List out;
          for (const auto& [k, v] : d->items) out.push_back(Value::tup({Value::str(k), v}));
          return Value::lst(std::move(out));
        });
      if (name == "keys")
        return make_fn(name, [d](Args&) {
          List out;
          for (const auto& kv : d->items) out.push_back(Value::str(kv.first));
          return Value::lst(std::move(out));
        });
      if (name == "values")
        return make_fn(name, [d](Args&) {
          List out;
          for (const auto& kv : d->items) out.push_back(kv.second);
          return Value::lst(std::move(out));
        });
      if (name == "get")
        return make_fn(name, [d](Args& a) {
          const Value* k = a.get(0, "key");
          if (!k) fail("get expected at least 1 argument");
          const Value* dflt = a.get(1, "default");
          if (k->k == Value::Str)
            if (const Value* v = d->find(k->s)) return *v;
          return dflt ? *dflt : Value::none();
        });
      if (name == "copy") return make_fn(name, [obj](Args&) {
          Value c = Value::dct();
          c.dict->items = obj.dict->items;
          return c;
        });
      if (name == "update" || name == "pop" || name == "popitem" || name == "setdefault" || name == "clear")
        return make_fn(name, [name](Args&) -> Value {
          fail("access to attribute '" + name + "' of 'dict' object is unsafe (templates cannot modify data)");
        });
      return Value{};
    }
    if (obj.k == Value::Lst) {
      if (name == "append" || name == "extend" || name == "pop" || name == "insert" || name == "remove" ||
          name == "clear" || name == "sort" || name == "reverse")
        return make_fn(name, [name](Args&) -> Value {
          fail("access to attribute '" + name + "' of 'list' object is unsafe (templates cannot modify data)");
        });
      if (name == "index" || name == "count") {
        auto l = obj.list;
        return make_fn(name, [l, name](Args& a) {
          const Value* x = a.get(0, "value");
          if (!x) fail(name + "() takes at least 1 argument");
          int64_t n = 0;
          for (size_t k = 0; k < l->size(); ++k)
            if (equal((*l)[k], *x)) {
              if (name == "index") return Value::integer(int64_t(k));
              ++n;
            }
          if (name == "index") fail("value is not in list");
          return Value::integer(n);
        });
      }
    }
    return Value{};
  }

  // ---- globals

  void install_globals(Frame& g) {
    const Limits lim = lim_;
    const std::optional<std::time_t> now = now_;
    g.vars["raise_exception"] = make_fn("raise_exception", [](Args& a) -> Value {
      throw Raised(a.pos.empty() ? "" : py_str(a.pos[0]));
    });
    g.vars["strftime_now"] = make_fn("strftime_now", [now](Args& a) {
      std::string fmt = need_str(a.get(0, "format"), "strftime_now() format");
      std::time_t t = now ? *now : std::time(nullptr);
      std::tm tm{};
      if (now) gmtime_r(&t, &tm);
      else localtime_r(&t, &tm);
      char buf[512];
      size_t n = fmt.size() < 200 ? std::strftime(buf, sizeof buf, fmt.c_str(), &tm) : 0;
      if (n == 0 && !fmt.empty()) fail("strftime_now: format too long or empty result");
      return Value::str(std::string(buf, n));
    });
    g.vars["range"] = make_fn("range", [lim](Args& a) {
      int64_t start = 0, stop, step = 1;
      if (a.pos.size() == 1) stop = opt_int(&a.pos[0], 0);
      else if (a.pos.size() >= 2) {
        start = opt_int(&a.pos[0], 0);
        stop = opt_int(&a.pos[1], 0);
        if (a.pos.size() >= 3) step = opt_int(&a.pos[2], 1);
      } else fail("range expected at least 1 argument");
      if (step == 0) fail("range() arg 3 must not be zero");
      List out;
      for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) {
        if (int64_t(out.size()) >= lim.max_iterations) fail("range too large");
        out.push_back(Value::integer(k));
      }
      return Value::lst(std::move(out));
    });
    auto make_dict = [](bool ns) {
      return [ns](Args& a) {
        Value d = Value::dct();
        d.dict->is_namespace = ns;
        for (const auto& p : a.pos) {
          if (p.k != Value::Dct) fail("namespace/dict positional argument must be a mapping");
          for (const auto& [k, v] : p.dict->items) d.dict->set(k, v);
        }
        for (const auto& [k, v] : a.kw) {
          if (ns && !k.empty() && k[0] == '_')
            fail("Chat templates cannot store underscore-prefixed attributes on a namespace, but got '" + k + "'");
          d.dict->set(k, v);
        }
        return d;
      };
    };
    g.vars["namespace"] = make_fn("namespace", make_dict(true));
    g.vars["dict"] = make_fn("dict", make_dict(false));
  }

  // ---- tests

  bool run_test(const Expr& e, Frame& f) {
    const std::string& n = e.name;
    Value v = eval(*e.args[0], f);
    List args;
    for (size_t k = 1; k < e.args.size(); ++k) args.push_back(eval(*e.args[k], f));
    for (const auto& [kn, kx] : e.kwargs) args.push_back(eval(*kx, f));
    auto arg = [&](size_t k) -> const Value& {
      if (k >= args.size()) fail("test '" + n + "' needs an argument");
      return args[k];
    };
    if (n == "defined") return v.k != Value::Undef;
    if (n == "undefined") return v.k == Value::Undef;
    if (n == "none") return v.k == Value::None;
    if (n == "string") return v.k == Value::Str;
    if (n == "mapping") return v.k == Value::Dct && !v.dict->is_namespace;
    if (n == "iterable") return v.k == Value::Str || v.k == Value::Lst || (v.k == Value::Dct && !v.dict->is_namespace) ||
                                v.k == Value::Undef;
    if (n == "sequence") return v.k == Value::Str || (v.k == Value::Lst && !v.gen) || (v.k == Value::Dct && !v.dict->is_namespace) ||
                                v.k == Value::Undef;
    if (n == "number") return v.is_num();
    if (n == "integer") return v.k == Value::Int;
    if (n == "float") return v.k == Value::Float;
    if (n == "boolean") return v.k == Value::Bool;
    if (n == "true") return v.k == Value::Bool && v.b;
    if (n == "false") return v.k == Value::Bool && !v.b;
    if (n == "callable") return v.k == Value::Fn;
    if (n == "eq" || n == "equalto" || n == "==") return equal(v, arg(0));
    if (n == "ne" || n == "!=") return !equal(v, arg(0));
    if (n == "lt" || n == "lessthan" || n == "<") return compare(v, arg(0), "<") < 0;
    if (n == "le" || n == "<=") return compare(v, arg(0), "<=") <= 0;
    if (n == "gt" || n == "greaterthan" || n == ">") return compare(v, arg(0), ">") > 0;
    if (n == "ge" || n == ">=") return compare(v, arg(0), ">=") >= 0;
    if (n == "in") return contains(arg(0), v);
    if (n == "sameas") {
      const Value& o = arg(0);
      if (v.k != o.k) return false;
      if (v.k == Value::Lst) return v.list == o.list;
      if (v.k == Value::Dct) return v.dict == o.dict;
      return equal(v, o);
    }
    if (n == "odd" || n == "even" || n == "divisibleby") {
      if (v.k != Value::Int && v.k != Value::Bool) fail("test '" + n + "' needs an integer");
      int64_t x = v.k == Value::Int ? v.i : v.b;
      if (n == "odd") return x % 2 != 0;
      if (n == "even") return x % 2 == 0;
      int64_t d = opt_int(&arg(0), 1);
      if (d == 0) fail("integer division or modulo by zero");
      return x % d == 0;
    }
    if (n == "lower") return v.k == Value::Str && ascii_case(v.s, false) == v.s;
    if (n == "upper") return v.k == Value::Str && ascii_case(v.s, true) == v.s;
    if (n == "filter") return arg(0).k == Value::Str && is_filter(arg(0).s);
    if (n == "test") return arg(0).k == Value::Str && is_test(arg(0).s);
    fail("no test named '" + n + "'");
  }

  static bool is_test(const std::string& n) {
    static const char* const names[] = {"defined", "undefined", "none", "string", "mapping", "iterable", "sequence",
                                        "number", "integer", "float", "boolean", "true", "false", "callable", "eq",
                                        "equalto", "ne", "lt", "le", "gt", "ge", "in", "sameas", "odd", "even",
                                        "divisibleby", "lower", "upper", "filter", "test"};
    return std::find(std::begin(names), std::end(names), n) != std::end(names);
  }
  static bool is_filter(const std::string& n) {
    static const char* const names[] = {"tojson", "trim", "length", "count", "join", "default", "d", "upper",
                                        "lower", "first", "last", "list", "string", "int", "float", "replace",
                                        "selectattr", "rejectattr", "select", "reject", "map", "items", "indent",
                                        "capitalize", "title", "safe", "e", "escape", "forceescape", "abs", "round",
                                        "unique", "reverse", "sort", "sum", "min", "max", "attr", "dictsort",
                                        "wordcount", "center", "truncate", "striptags", "batch", "slice", "pprint",
                                        "urlencode", "format", "bool", "tuple"};
    return std::find(std::begin(names), std::end(names), n) != std::end(names);
  }

  // A test by name on a value, for select/reject(attr).
  bool test_value(const std::string& name, const Value& v, const List& extra, Frame& f) {
    Expr e;
    e.kind = Expr::Test;
    e.name = name;
    auto holder = std::make_unique<Expr>();
    holder->kind = Expr::Literal;
    holder->lit = v;
    e.args.push_back(std::move(holder));
    for (const auto& x : extra) {
      auto h = std::make_unique<Expr>();
      h->kind = Expr::Literal;
      h->lit = x;
      e.args.push_back(std::move(h));
    }
    return run_test(e, f);
  }

  Value filter_by_name(const std::string& name, Value v, const List& pos, Frame& f) {
    Expr e;
    e.kind = Expr::Filter;
    e.name = name;
    auto h = std::make_unique<Expr>();
    h->kind = Expr::Literal;
    e.args.push_back(std::move(h));
    for (const auto& x : pos) {
      auto a = std::make_unique<Expr>();
      a->kind = Expr::Literal;
      a->lit = x;
      e.args.push_back(std::move(a));
    }
    return call_filter(e, std::move(v), f);
  }

  // ---- filters

  Value attr_path(const Value& v, const std::string& path) {
    Value cur = v;
    size_t start = 0;
    while (true) {
      size_t dot = path.find('.', start);
      std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
      if (cur.k == Value::Undef) return cur;
      bool numeric = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return std::isdigit(c); });
      cur = numeric ? get_item(cur, Value::integer(std::stoll(part))) : get_item(cur, Value::str(part));
      if (dot == std::string::npos) return cur;
      start = dot + 1;
    }
  }

  Value call_filter(const Expr& e, Value v, Frame& f) {
    Args a;
    for (size_t k = 1; k < e.args.size(); ++k) a.pos.push_back(eval(*e.args[k], f));
    for (const auto& [n, x] : e.kwargs) a.kw.emplace_back(n, eval(*x, f));
    const std::string& n = e.name;
    auto s_of = [&](const Value& x) { return py_str(x); };
    auto need_iter = [&](const Value& x) { check_defined(x); return iterate(x); };

    if (n == "tojson") {
      JsonOpts o;
      if (const Value* x = a.get(0, "ensure_ascii")) o.ensure_ascii = truthy(*x);
      if (const Value* x = a.get(1, "indent"); x && x->k != Value::None) {
        if (x->k == Value::Str) o.indent = x->s;
        else o.indent = std::string(size_t(std::clamp<int64_t>(opt_int(x, 0), 0, 64)), ' ');
        o.item_sep = ",";
      }
      if (const Value* x = a.get(2, "separators"); x && x->k != Value::None) {
        if (x->k != Value::Lst || x->list->size() != 2 || (*x->list)[0].k != Value::Str || (*x->list)[1].k != Value::Str)
          fail("tojson: separators must be a pair of strings");
        o.item_sep = (*x->list)[0].s;
        o.key_sep = (*x->list)[1].s;
      }
      if (const Value* x = a.get(3, "sort_keys")) o.sort_keys = truthy(*x);
      std::string out;
      to_json(v, o, 0, out, 0);
      if (out.size() > lim_.max_output_bytes) fail("tojson: result over the output size limit");
      return Value::str(std::move(out));
    }
    if (n == "trim") return Value::str(py_strip(s_of(v), opt_str(a.get(0, "chars"), "chars"), true, true));
    if (n == "length" || n == "count") {
      switch (v.k) {
        case Value::Undef: return Value::integer(0);
        case Value::Str: return Value::integer(str_len(v.s));
        case Value::Lst: if (v.gen) break; return Value::integer(int64_t(v.list->size()));
        case Value::Dct: if (!v.dict->is_namespace) return Value::integer(int64_t(v.dict->items.size())); break;
        default: break;
      }
      fail(std::string("object of type '") + type_name(v) + "' has no len()");
    }
    if (n == "join") {
      std::string sep = a.get(0, "d") ? s_of(*a.get(0, "d")) : "";
      const Value* attr = a.get(1, "attribute");
      std::string out;
      bool first = true;
      for (const auto& x : need_iter(v)) {
        if (!first) out += sep;
        out += s_of(attr && attr->k != Value::None ? attr_path(x, s_of(*attr)) : x);
        first = false;
        if (out.size() > lim_.max_output_bytes) fail("join: result over the output size limit");
      }
      return Value::str(std::move(out));
    }
    if (n == "default" || n == "d") {
      const Value* dv = a.get(0, "default_value");
      bool boolean = a.get(1, "boolean") && truthy(*a.get(1, "boolean"));
      if (v.k == Value::Undef || (boolean && !truthy(v))) return dv ? *dv : Value::str("");
      return v;
    }
    if (n == "upper") return Value::str(ascii_case(s_of(v), true));
    if (n == "lower") return Value::str(ascii_case(s_of(v), false));
    if (n == "capitalize") return Value::str(py_capitalize(s_of(v)));
    if (n == "title") return Value::str(py_title(s_of(v)));
    if (n == "first" || n == "last") {
      if (n == "last" && v.k == Value::Lst && v.gen) fail("'generator' object is not reversible");
      List items = need_iter(v);
      if (items.empty()) return Value::undef("No " + n + " item, sequence was empty.");
      return n == "first" ? items.front() : items.back();
    }
    if (n == "list" || n == "tuple") return Value::lst(need_iter(v));
    if (n == "string") return Value::str(s_of(v));
    if (n == "safe" || n == "e" || n == "escape" || n == "forceescape") {
      if (v.k == Value::Str && v.safe && n != "forceescape") return v;
      Value r = Value::str(n == "safe" ? s_of(v) : html_escape(s_of(v)));
      r.safe = true;
      return r;
    }
    if (n == "bool") return Value::boolean(truthy(v));
    if (n == "int") {
      int64_t dflt = opt_int(a.get(0, "default"), 0);
      if (v.k == Value::Int) return v;
      if (v.k == Value::Bool) return Value::integer(v.b);
      if (v.k == Value::Float) {
        if (!std::isfinite(v.f) || std::fabs(v.f) > 9.2e18) return Value::integer(dflt);
        return Value::integer(int64_t(v.f));
      }
      if (v.k == Value::Str) {
        std::string t = py_strip(v.s, std::nullopt, true, true);
        int64_t r;
        auto res = std::from_chars(t.data() + (t.starts_with('+') ? 1 : 0), t.data() + t.size(), r);
        if (res.ec == std::errc() && res.ptr == t.data() + t.size() && !t.empty()) return Value::integer(r);
        char* end = nullptr;
        double d = std::strtod(t.c_str(), &end);
        if (!t.empty() && end == t.c_str() + t.size() && std::isfinite(d) && std::fabs(d) < 9.2e18)
          return Value::integer(int64_t(d));
      }
      return Value::integer(dflt);
    }
    if (n == "float") {
      if (v.is_num()) return Value::real(v.num());
      if (v.k == Value::Str) {
        std::string t = py_strip(v.s, std::nullopt, true, true);
        char* end = nullptr;
        double d = std::strtod(t.c_str(), &end);
        if (!t.empty() && end == t.c_str() + t.size()) return Value::real(d);
      }
      const Value* dv = a.get(0, "default");
      return dv ? *dv : Value::real(0);
    }
    if (n == "abs") {
      if (v.k == Value::Int) return Value::integer(v.i < 0 ? -v.i : v.i);
      if (v.k == Value::Float) return Value::real(std::fabs(v.f));
      fail(std::string("bad operand type for abs(): '") + type_name(v) + "'");
    }
    if (n == "round") {
      int64_t prec = opt_int(a.get(0, "precision"), 0);
      std::string method = a.get(1, "method") ? s_of(*a.get(1, "method")) : "common";
      if (!v.is_num()) fail("round: not a number");
      double m = std::pow(10.0, double(prec)), x = v.num() * m;
      double r = method == "ceil" ? std::ceil(x) : method == "floor" ? std::floor(x) : std::round(x);
      return Value::real(r / m);
    }
    if (n == "replace") {
      return Value::str(py_replace(s_of(v), s_of(a.pos.size() > 0 ? a.pos[0] : Value::str("")),
                                   s_of(a.pos.size() > 1 ? a.pos[1] : Value::str("")),
                                   opt_int(a.get(2, "count"), -1), lim_.max_output_bytes));
    }
    if (n == "selectattr" || n == "rejectattr" || n == "select" || n == "reject") {
      const bool by_attr = n == "selectattr" || n == "rejectattr";
      const bool keep_if = n == "selectattr" || n == "select";
      size_t k = 0;
      std::string attr;
      if (by_attr) {
        if (a.pos.empty()) fail(n + " needs an attribute name");
        attr = s_of(a.pos[k++]);
      }
      std::string test;
      List extra;
      if (k < a.pos.size()) {
        test = s_of(a.pos[k++]);
        extra.assign(a.pos.begin() + long(k), a.pos.end());
      }
      List out;
      for (const auto& x : truthy(v) ? need_iter(v) : List{}) {
        count_iteration();
        Value subject = by_attr ? attr_path(x, attr) : x;
        bool r = test.empty() ? truthy(subject) : test_value(test, subject, extra, f);
        if (r == keep_if) out.push_back(x);
      }
      return Value::generator(std::move(out));
    }
    if (n == "map") {
      List out;
      if (!truthy(v)) return Value::generator({});
      if (const Value* at = a.get(99, "attribute")) {
        const Value* dflt = a.get(99, "default");
        for (const auto& x : need_iter(v)) {
          Value r = attr_path(x, s_of(*at));
          if (r.k == Value::Undef && dflt) r = *dflt;
          out.push_back(std::move(r));
        }
        return Value::generator(std::move(out));
      }
      if (a.pos.empty()) fail("map needs a filter name or attribute=");
      std::string fname = s_of(a.pos[0]);
      List rest(a.pos.begin() + 1, a.pos.end());
      for (const auto& x : need_iter(v)) {
        count_iteration();
        out.push_back(filter_by_name(fname, x, rest, f));
      }
      return Value::generator(std::move(out));
    }
    if (n == "items") {
      if (v.k == Value::Undef) return Value::generator({});
      if (v.k != Value::Dct || v.dict->is_namespace) fail("items: expected a mapping");
      List out;
      for (const auto& [k, x] : v.dict->items) out.push_back(Value::tup({Value::str(k), x}));
      return Value::generator(std::move(out));
    }
    if (n == "dictsort") {
      if (v.k != Value::Dct) fail("dictsort: expected a mapping");
      bool cs = a.get(0, "case_sensitive") && truthy(*a.get(0, "case_sensitive"));
      bool by_value = a.get(1, "by") && s_of(*a.get(1, "by")) == "value";
      bool rev = a.get(2, "reverse") && truthy(*a.get(2, "reverse"));
      List out;
      for (const auto& [k, x] : v.dict->items) out.push_back(Value::tup({Value::str(k), x}));
      std::stable_sort(out.begin(), out.end(), [&](const Value& p, const Value& q) {
        Value x = (*p.list)[by_value ? 1 : 0], y = (*q.list)[by_value ? 1 : 0];
        if (!cs && x.k == Value::Str) x.s = ascii_case(x.s, false);
        if (!cs && y.k == Value::Str) y.s = ascii_case(y.s, false);
        int c = compare(x, y, "<");
        return rev ? c > 0 : c < 0;
      });
      return Value::lst(std::move(out));
    }
    if (n == "indent") {  // jinja2's do_indent, quirks included
      std::string width = "    ";
      if (const Value* w = a.get(0, "width"))
        width = w->k == Value::Str ? w->s : std::string(size_t(std::clamp<int64_t>(opt_int(w, 4), 0, 256)), ' ');
      bool first = a.get(1, "first") && truthy(*a.get(1, "first"));
      bool blank = a.get(2, "blank") && truthy(*a.get(2, "blank"));
      std::string s = s_of(v) + "\n";
      std::vector<std::string> lines;  // s.splitlines()
      size_t start = 0;
      for (size_t k = 0; k < s.size(); ++k)
        if (s[k] == '\n' || s[k] == '\r') {
          lines.push_back(s.substr(start, k - start));
          if (s[k] == '\r' && k + 1 < s.size() && s[k + 1] == '\n') ++k;
          start = k + 1;
        }
      if (start < s.size()) lines.push_back(s.substr(start));
      std::string out;
      for (size_t k = 0; k < lines.size(); ++k) {
        if (k) out += "\n";
        if (k && (blank || !lines[k].empty())) out += width;
        out += lines[k];
        if (out.size() > lim_.max_output_bytes) fail("indent: result over the output size limit");
      }
      if (first) out = width + out;
      return Value::str(std::move(out));
    }
    if (n == "unique") {
      List out;
      for (const auto& x : need_iter(v)) {
        bool seen = std::any_of(out.begin(), out.end(), [&](const Value& y) {
          if (x.k == Value::Str && y.k == Value::Str) return ascii_case(x.s, false) == ascii_case(y.s, false);
          return equal(x, y);
        });
        if (!seen) out.push_back(x);
      }
      return Value::generator(std::move(out));
    }
    if (n == "reverse") {
      if (v.k == Value::Str) {
        std::u32string u = to_u32(v.s);
        std::reverse(u.begin(), u.end());
        return Value::str(from_u32(u));
      }
      List l = need_iter(v);
      std::reverse(l.begin(), l.end());
      return Value::generator(std::move(l));
    }
    if (n == "sort") {
      List l = need_iter(v);
      bool rev = a.get(0, "reverse") && truthy(*a.get(0, "reverse"));
      bool cs = a.get(1, "case_sensitive") && truthy(*a.get(1, "case_sensitive"));
      const Value* attr = a.get(2, "attribute");
      std::stable_sort(l.begin(), l.end(), [&](const Value& p, const Value& q) {
        Value x = attr ? attr_path(p, s_of(*attr)) : p, y = attr ? attr_path(q, s_of(*attr)) : q;
        if (!cs && x.k == Value::Str) x.s = ascii_case(x.s, false);
        if (!cs && y.k == Value::Str) y.s = ascii_case(y.s, false);
        int c = compare(x, y, "<");
        return rev ? c > 0 : c < 0;
      });
      return Value::lst(std::move(l));
    }
    if (n == "sum") {
      Value acc = a.get(1, "start") ? *a.get(1, "start") : Value::integer(0);
      const Value* attr = a.get(0, "attribute");
      for (const auto& x : need_iter(v)) acc = binary("+", acc, attr ? attr_path(x, s_of(*attr)) : x);
      return acc;
    }
    if (n == "min" || n == "max") {
      List l = need_iter(v);
      if (l.empty()) return Value::undef("No aggregated item, sequence was empty.");
      Value best = l[0];
      for (const auto& x : l)
        if ((n == "min") ? compare(x, best, "<") < 0 : compare(x, best, ">") > 0) best = x;
      return best;
    }
    if (n == "attr") return get_attr(v, a.pos.empty() ? "" : s_of(a.pos[0]));
    if (n == "wordcount") return Value::integer(int64_t(py_split(s_of(v), std::nullopt, -1).size()));
    if (n == "center") {
      int64_t w = opt_int(a.get(0, "width"), 80);
      std::string s = s_of(v);
      int64_t len = str_len(s);
      if (w <= len) return Value::str(s);
      if (w > int64_t(lim_.max_output_bytes)) fail("center: width over the output size limit");
      int64_t total = w - len, left = total / 2 + (total & w & 1);
      return Value::str(std::string(size_t(left), ' ') + s + std::string(size_t(total - left), ' '));
    }
    if (n == "pprint") return Value::str(py_repr(v));
    fail("no filter named '" + n + "'");
  }

  const Compiled& t_;
  const Limits& lim_;
  Frame* top_ = nullptr;
  int depth_ = 0;
  int64_t iterations_ = 0;
  std::optional<std::time_t> now_;
};

std::string normalize_newlines(std::string_view src, bool keep_trailing) {
  std::string out;
  out.reserve(src.size());
  for (size_t k = 0; k < src.size(); ++k) {
    if (src[k] == '\r') {
      out += '\n';
      if (k + 1 < src.size() && src[k + 1] == '\n') ++k;
    } else {
      out += src[k];
    }
  }
  if (!keep_trailing && !out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

}  // namespace

struct Template::Impl : Compiled {};

Template::Template(std::string_view source, Options options) {
  auto impl = std::make_shared<Impl>();
  impl->options = options;
  Lexer lexer(normalize_newlines(source, options.keep_trailing_newline), impl->options);
  std::vector<Piece> pieces = lexer.run();
  Parser parser(pieces, impl->options.limits);
  impl->body = parser.parse_template();
  impl_ = std::move(impl);
}

Template::~Template() = default;
Template::Template(Template&&) noexcept = default;
Template& Template::operator=(Template&&) noexcept = default;

std::string Template::render(const nlohmann::ordered_json& context, std::optional<std::time_t> fixed_now) const {
  Renderer r(*impl_, fixed_now);
  return r.render(context);
}

}  // namespace finmoe::jinja
