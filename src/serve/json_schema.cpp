#include "serve/json_schema.h"

#include <algorithm>
#include <set>

namespace finmoe::constrain {

using ojson = nlohmann::ordered_json;

namespace {

// Code points a JSON string holds unescaped: not a control character, quote or backslash.
const CodeSet kMustEscape = {{0, 0x1F}, {'"', '"'}, {'\\', '\\'}};

const std::set<std::string> kAnnotations = {
    "title",    "description", "default",         "examples",         "$schema", "$id",
    "$comment", "deprecated",  "readOnly",        "writeOnly",        "$defs",   "definitions",
    "strict",   "name",        "contentEncoding", "contentMediaType", "$anchor"};

const std::set<std::string> kRejected = {"maximum",
                                         "exclusiveMaximum",
                                         "exclusiveMinimum",
                                         "multipleOf",
                                         "uniqueItems",
                                         "not",
                                         "if",
                                         "then",
                                         "else",
                                         "patternProperties",
                                         "propertyNames",
                                         "dependentRequired",
                                         "dependentSchemas",
                                         "dependencies",
                                         "contains",
                                         "minContains",
                                         "maxContains",
                                         "unevaluatedProperties",
                                         "unevaluatedItems",
                                         "prefixItems",
                                         "additionalItems",
                                         "$dynamicRef",
                                         "$recursiveRef"};

std::string join(const std::string& path, const std::string& key) {
  return path.empty() ? key : path + "." + key;
}

std::string indexed(const std::string& path, const std::string& key, size_t i) {
  return join(path, key) + "[" + std::to_string(i) + "]";
}

class Compiler {
 public:
  Compiler(Nfa& nfa, const ojson& root, const SchemaOptions& o) : nfa_(nfa), root_(root), o_(o) {}

  Frag ws() { return json_whitespace(nfa_, o_); }

  Frag lit(const std::string& s) { return nfa_.literal(s); }

  // "," or ":" with whitespace around it
  Frag punct(const char* p) { return nfa_.cat(nfa_.cat(ws(), lit(p)), ws()); }

  Frag string_char() {
    Frag plain = nfa_.codes(complement(kMustEscape));
    // \" \\ \/ \b \f \n \r \t, or \uXXXX outside the surrogates (a lone one is not valid UTF-16)
    Frag simple = nfa_.codes({{'"', '"'},
                              {'\\', '\\'},
                              {'/', '/'},
                              {'b', 'b'},
                              {'f', 'f'},
                              {'n', 'n'},
                              {'r', 'r'},
                              {'t', 't'}});
    const CodeSet hex = {{'0', '9'}, {'A', 'F'}, {'a', 'f'}};
    Frag u_plain =
        nfa_.cat(nfa_.codes({{'0', '9'}, {'A', 'C'}, {'E', 'F'}, {'a', 'c'}, {'e', 'f'}}),
                 nfa_.repeat([&] { return nfa_.codes(hex); }, 3, 3));
    Frag u_d = nfa_.cat(nfa_.cat(nfa_.codes({{'D', 'D'}, {'d', 'd'}}), nfa_.codes({{'0', '7'}})),
                        nfa_.repeat([&] { return nfa_.codes(hex); }, 2, 2));
    Frag esc =
        nfa_.cat(lit("\\"), nfa_.alt({simple, nfa_.cat(lit("u"), nfa_.alt({u_plain, u_d}))}));
    return nfa_.alt({plain, esc});
  }

  Frag any_string(int64_t min_len = 0, int64_t max_len = -1) {
    Frag body = nfa_.repeat([&] { return string_char(); }, min_len, max_len);
    return nfa_.cat(nfa_.cat(lit("\""), body), lit("\""));
  }

  Frag regex_string(const Regex& re) {
    return nfa_.cat(nfa_.cat(lit("\""), re.compile(nfa_, kMustEscape)), lit("\""));
  }

  Frag integer(bool nonneg) {
    Frag digits = nfa_.alt(
        {lit("0"), nfa_.cat(nfa_.codes({{'1', '9'}}), nfa_.repeat(
                                                          [&] {
                                                            return nfa_.codes({{'0', '9'}});
                                                          },
                                                          0, -1))});
    return nonneg ? digits : nfa_.cat(nfa_.opt(lit("-")), digits);
  }

  Frag number(bool nonneg) {
    auto digit = [&] { return nfa_.codes({{'0', '9'}}); };
    Frag frac = nfa_.opt(nfa_.cat(lit("."), nfa_.repeat(digit, 1, -1)));
    // exponents of at most two digits: a double holds every such number
    Frag exp = nfa_.opt(nfa_.cat(nfa_.cat(nfa_.codes({{'E', 'E'}, {'e', 'e'}}),
                                          nfa_.opt(nfa_.codes({{'+', '+'}, {'-', '-'}}))),
                                 nfa_.repeat(digit, 1, 2)));
    return nfa_.cat(nfa_.cat(integer(nonneg), frac), exp);
  }

  Frag any_value(int depth) {
    std::vector<Frag> opts = {any_string(), number(false), lit("true"), lit("false"), lit("null")};
    if (depth > 0) {
      opts.push_back(any_object(depth - 1));
      opts.push_back(any_array(depth - 1));
    }
    return nfa_.alt(opts);
  }

  Frag any_object(int depth) {
    auto member = [&] { return nfa_.cat(nfa_.cat(any_string(), punct(":")), any_value(depth)); };
    return braces("{", "}",
                  nfa_.sep_list(
                      member, [&] { return punct(","); }, 0, -1));
  }

  Frag any_array(int depth) {
    return braces(
        "[", "]",
        nfa_.sep_list([&] { return any_value(depth); }, [&] { return punct(","); }, 0, -1));
  }

  // One given value (const, enum): its JSON text, with the whitespace
  // allowed anywhere else between the tokens of an object or array.
  Frag constant(const ojson& v) {
    if (v.is_object()) {
      Frag body = nfa_.empty();
      bool first = true;
      for (auto it = v.begin(); it != v.end(); ++it) {
        if (!first) body = nfa_.cat(body, punct(","));
        first = false;
        body = nfa_.cat(body,
                        nfa_.cat(nfa_.cat(lit(ojson(it.key()).dump()), punct(":")), constant(*it)));
      }
      return braces("{", "}", body);
    }
    if (v.is_array()) {
      Frag body = nfa_.empty();
      for (size_t i = 0; i < v.size(); ++i) {
        if (i) body = nfa_.cat(body, punct(","));
        body = nfa_.cat(body, constant(v[i]));
      }
      return braces("[", "]", body);
    }
    return lit(v.dump());
  }

  // open ws body ws close
  Frag braces(const char* open, const char* close, Frag body) {
    return nfa_.cat(nfa_.cat(nfa_.cat(nfa_.cat(lit(open), ws()), body), ws()), lit(close));
  }

  Frag value(const ojson& s, const std::string& path) {
    if (s.is_boolean()) {
      if (!s.get<bool>()) throw SchemaError(path, "the schema false accepts no value");
      return any_value(o_.any_depth);
    }
    if (!s.is_object()) throw SchemaError(path, "a schema must be an object or a boolean");
    for (auto it = s.begin(); it != s.end(); ++it)
      if (kRejected.count(it.key()))
        throw SchemaError(join(path, it.key()),
                          "'" + it.key() + "' is not supported by constrained decoding");
    if (auto r = s.find("$ref"); r != s.end()) return ref(*r, join(path, "$ref"));
    if (auto c = s.find("const"); c != s.end()) return constant(*c);
    if (auto e = s.find("enum"); e != s.end()) {
      if (!e->is_array() || e->empty())
        throw SchemaError(join(path, "enum"), "'enum' must be a non-empty array");
      std::vector<Frag> opts;
      for (const auto& v : *e) opts.push_back(constant(v));
      return nfa_.alt(opts);
    }
    for (const char* key : {"anyOf", "oneOf"})
      if (auto a = s.find(key); a != s.end()) {
        if (!a->is_array() || a->empty())
          throw SchemaError(join(path, key),
                            std::string("'") + key + "' must be a non-empty array");
        std::vector<Frag> opts;
        for (size_t i = 0; i < a->size(); ++i)
          opts.push_back(value((*a)[i], indexed(path, key, i)));
        return nfa_.alt(opts);
      }
    if (auto a = s.find("allOf"); a != s.end()) {
      if (!a->is_array() || a->size() != 1)
        throw SchemaError(join(path, "allOf"), "'allOf' is supported with exactly one schema");
      return value((*a)[0], indexed(path, "allOf", 0));
    }
    auto t = s.find("type");
    if (t == s.end()) {
      // no type: inferred from the keywords given, else any value
      if (s.contains("properties") || s.contains("additionalProperties") || s.contains("required"))
        return typed(s, "object", path);
      if (s.contains("items") || s.contains("minItems") || s.contains("maxItems"))
        return typed(s, "array", path);
      if (s.contains("pattern") || s.contains("minLength") || s.contains("maxLength") ||
          s.contains("format"))
        return typed(s, "string", path);
      return any_value(o_.any_depth);
    }
    if (t->is_string()) return typed(s, t->get<std::string>(), join(path, "type"), path);
    if (t->is_array() && !t->empty()) {
      std::vector<Frag> opts;
      for (size_t i = 0; i < t->size(); ++i) {
        if (!(*t)[i].is_string())
          throw SchemaError(indexed(path, "type", i), "a type must be a string");
        opts.push_back(typed(s, (*t)[i].get<std::string>(), indexed(path, "type", i), path));
      }
      return nfa_.alt(opts);
    }
    throw SchemaError(join(path, "type"),
                      "'type' must be a string or a non-empty array of strings");
  }

  Frag typed(const ojson& s, const std::string& type, const std::string& path) {
    return typed(s, type, join(path, "type"), path);
  }

  int64_t count(const ojson& s, const char* key, const std::string& path, int64_t dflt) {
    auto it = s.find(key);
    if (it == s.end()) return dflt;
    if (!it->is_number_integer() && !it->is_number_unsigned())
      throw SchemaError(join(path, key),
                        std::string("'") + key + "' must be a non-negative integer");
    const auto v = it->get<int64_t>();
    if (v < 0)
      throw SchemaError(join(path, key),
                        std::string("'") + key + "' must be a non-negative integer");
    return v;
  }

  bool nonneg(const ojson& s, const std::string& path) {
    auto m = s.find("minimum");
    if (m == s.end()) return false;
    if (!m->is_number() || m->get<double>() != 0)
      throw SchemaError(join(path, "minimum"),
                        "'minimum' is supported only as 0 (no sign) by constrained decoding");
    return true;
  }

  Frag typed(const ojson& s, const std::string& type, const std::string& type_path,
             const std::string& path) {
    if (type == "string") return string(s, path);
    if (type == "integer") return integer(nonneg(s, path));
    if (type == "number") return number(nonneg(s, path));
    if (type == "boolean") return nfa_.alt({lit("true"), lit("false")});
    if (type == "null") return lit("null");
    if (type == "array") return array(s, path);
    if (type == "object") return object(s, path);
    throw SchemaError(type_path, "unknown type '" + type +
                                     "' (object, array, string, number, integer, boolean, null)");
  }

  Frag string(const ojson& s, const std::string& path) {
    const int64_t min_len = count(s, "minLength", path, 0);
    const int64_t max_len = count(s, "maxLength", path, -1);
    if (max_len >= 0 && max_len < min_len)
      throw SchemaError(join(path, "maxLength"), "'maxLength' is below 'minLength'");
    if (auto p = s.find("pattern"); p != s.end()) {
      if (!p->is_string()) throw SchemaError(join(path, "pattern"), "'pattern' must be a string");
      if (s.contains("minLength") || s.contains("maxLength"))
        throw SchemaError(join(path, "pattern"),
                          "'pattern' together with minLength/maxLength is not supported; put the "
                          "length into the pattern");
      try {
        return regex_string(Regex::parse(p->get<std::string>()));
      } catch (const SchemaError&) {
        throw;
      } catch (const Error& e) {
        throw SchemaError(join(path, "pattern"), e.what());
      }
    }
    if (auto f = s.find("format"); f != s.end() && f->is_string()) {
      const std::string fmt = f->get<std::string>();
      const char* date = "[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])";
      const char* time =
          "(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\\.[0-9]{1,9})?(?:Z|[+-](?:[01][0-9]|2[0-3]"
          "):[0-5][0-9])";
      std::string re;
      if (fmt == "date")
        re = date;
      else if (fmt == "time")
        re = time;
      else if (fmt == "date-time")
        re = std::string(date) + "T" + time;
      else if (fmt == "uuid")
        re = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}";
      if (!re.empty()) return regex_string(Regex::parse(re));
    }
    return any_string(min_len, max_len);
  }

  Frag items_of(const ojson& s, const std::string& path) {
    auto it = s.find("items");
    if (it == s.end()) return any_value(o_.any_depth);
    return value(*it, join(path, "items"));
  }

  Frag array(const ojson& s, const std::string& path) {
    const int64_t lo = count(s, "minItems", path, 0);
    const int64_t hi = count(s, "maxItems", path, -1);
    if (hi >= 0 && hi < lo)
      throw SchemaError(join(path, "maxItems"), "'maxItems' is below 'minItems'");
    if (auto it = s.find("items"); it != s.end() && it->is_boolean() && !it->get<bool>()) {
      if (lo > 0) throw SchemaError(join(path, "items"), "'items' is false but minItems > 0");
      return lit("[]");
    }
    return braces(
        "[", "]",
        nfa_.sep_list([&] { return items_of(s, path); }, [&] { return punct(","); }, lo, hi));
  }

  Frag object(const ojson& s, const std::string& path) {
    auto props = s.find("properties");
    const bool has_props = props != s.end() && props->is_object() && !props->empty();
    if (props != s.end() && !props->is_object())
      throw SchemaError(join(path, "properties"), "'properties' must be an object");
    std::set<std::string> required;
    if (auto r = s.find("required"); r != s.end()) {
      if (!r->is_array())
        throw SchemaError(join(path, "required"), "'required' must be an array of names");
      for (size_t i = 0; i < r->size(); ++i) {
        if (!(*r)[i].is_string())
          throw SchemaError(indexed(path, "required", i), "a required name must be a string");
        const auto name = (*r)[i].get<std::string>();
        if (!has_props || !props->contains(name))
          throw SchemaError(
              indexed(path, "required", i),
              "required property '" + name +
                  "' is not in 'properties' (additional properties are not generated)");
        required.insert(name);
      }
    }
    auto extra = s.find("additionalProperties");
    if (!has_props) {
      const int64_t lo = count(s, "minProperties", path, 0);
      const int64_t hi = count(s, "maxProperties", path, -1);
      // a map when additionalProperties is a schema; any object when it is absent or true
      const bool closed = extra != s.end() && extra->is_boolean() && !extra->get<bool>();
      if (closed) return lit("{}");
      auto member = [&] {
        Frag v = extra != s.end() && extra->is_object()
                     ? value(*extra, join(path, "additionalProperties"))
                     : any_value(o_.any_depth - 1);
        return nfa_.cat(nfa_.cat(any_string(), punct(":")), v);
      };
      return braces("{", "}",
                    nfa_.sep_list(
                        member, [&] { return punct(","); }, lo, hi));
    }
    // Properties in the schema's order, optional ones skippable: two tracks of
    // junction states, "nothing written yet" (a) and "something written" (b);
    // a property moves a->b with no comma before it, b->b with one (both
    // through the same copy of the member, which always ends in b).
    std::vector<std::string> names;
    for (auto it = props->begin(); it != props->end(); ++it) names.push_back(it.key());
    const size_t n = names.size();
    std::vector<int32_t> a(n + 1), b(n + 1);
    for (size_t i = 0; i <= n; ++i) {
      a[i] = nfa_.add_state();
      b[i] = nfa_.add_state();
    }
    for (size_t i = 0; i < n; ++i) {
      const std::string& name = names[i];
      const std::string ppath = join(join(path, "properties"), name);
      // one copy of the member: entered from a[i] directly, from b[i] after a comma
      Frag member =
          nfa_.cat(nfa_.cat(lit(ojson(name).dump()), punct(":")), value((*props)[name], ppath));
      nfa_.eps(a[i], member.in);
      Frag comma = punct(",");
      nfa_.eps(b[i], comma.in);
      nfa_.eps(comma.out, member.in);
      nfa_.eps(member.out, b[i + 1]);
      if (!required.count(name)) {
        nfa_.eps(a[i], a[i + 1]);
        nfa_.eps(b[i], b[i + 1]);
      }
    }
    const int32_t end = nfa_.add_state();
    nfa_.eps(b[n], end);
    if (required.empty()) nfa_.eps(a[n], end);
    return braces("{", "}", Frag{a[0], end});
  }

  Frag ref(const ojson& r, const std::string& path) {
    if (!r.is_string()) throw SchemaError(path, "'$ref' must be a string");
    const auto target = r.get<std::string>();
    const ojson* node = nullptr;
    for (const char* prefix : {"#/$defs/", "#/definitions/"})
      if (target.rfind(prefix, 0) == 0) {
        const std::string key = prefix[2] == '$' ? "$defs" : "definitions";
        const std::string name = target.substr(std::string(prefix).size());
        auto defs = root_.find(key);
        if (defs != root_.end() && defs->is_object()) {
          auto d = defs->find(name);
          if (d != defs->end()) node = &*d;
        }
      }
    if (target == "#") node = &root_;
    if (!node)
      throw SchemaError(path,
                        "'$ref' " + target + " does not name a schema in $defs or definitions");
    if (std::find(active_.begin(), active_.end(), target) != active_.end())
      throw SchemaError(path,
                        "recursive '$ref' " + target + " is not supported by constrained decoding");
    active_.push_back(target);
    std::string where = target.substr(2);
    std::replace(where.begin(), where.end(), '/', '.');
    Frag f = value(*node, where);
    active_.pop_back();
    return f;
  }

 private:
  Nfa& nfa_;
  const ojson& root_;
  SchemaOptions o_;
  std::vector<std::string> active_;  // $refs being expanded
};

}  // namespace

Frag json_whitespace(Nfa& nfa, const SchemaOptions& options) {
  Frag indent = nfa.cat(nfa.literal("\n"), nfa.repeat(
                                               [&] {
                                                 return nfa.codes({{'\t', '\t'}, {' ', ' '}});
                                               },
                                               0, options.max_indent));
  return nfa.opt(nfa.alt({nfa.literal(" "), indent}));
}

Frag compile_json_schema(Nfa& nfa, const ojson& schema, const SchemaOptions& options) {
  Compiler c(nfa, schema, options);
  try {
    return c.value(schema, "");
  } catch (const SchemaError&) {
    throw;
  } catch (const Error& e) {  // over the NFA's limits
    throw SchemaError("", e.what());
  }
}

Frag compile_any_json_object(Nfa& nfa, const SchemaOptions& options) {
  Compiler c(nfa, ojson::object(), options);
  return c.any_object(options.any_depth - 1);
}

}  // namespace finmoe::constrain
