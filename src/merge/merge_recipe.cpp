// mergekit's YAML recipe format (include/finmoe/merge.h).
#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <yaml-cpp/yaml.h>

#include "core/yaml_bounds.h"
#include "finmoe/error.h"
#include "finmoe/merge.h"
#include "merge/merge_plan.h"
#include "merge/merge_vocab.h"

namespace finmoe {

namespace fs = std::filesystem;

namespace {

const std::set<std::string> kTaskArithmeticParams = {"weight", "density", "normalize", "rescale",
                                                     "lambda", "int8_mask"};

std::set<std::string> with(std::set<std::string> s, std::initializer_list<const char*> more) {
  for (const char* m : more) s.insert(m);
  return s;
}

// "SOURCE:LINE: KEY"
std::string at(const std::string& source, const YAML::Node& n, const std::string& key) {
  const YAML::Mark m = n.Mark();
  std::string s = source;
  if (!m.is_null() && m.line >= 0) s += ":" + std::to_string(m.line + 1);
  return s + ": " + key;
}

std::string kind_of(const YAML::Node& n) {
  if (n.IsScalar()) return "a scalar";
  if (n.IsSequence()) return "a list";
  if (n.IsMap()) return "a mapping";
  return "nothing";
}

std::string scalar(const YAML::Node& n, const std::string& source, const std::string& key) {
  if (!n.IsScalar()) throw Error(at(source, n, key) + ": expected a scalar, got " + kind_of(n));
  return n.Scalar();
}

void expect_map(const YAML::Node& n, const std::string& source, const std::string& key) {
  if (!n.IsMap()) throw Error(at(source, n, key) + ": expected a mapping, got " + kind_of(n));
}

// Every key of `n` is in `known`; `unsupported` keys get their own message.
void check_keys(const YAML::Node& n, const std::string& source, const std::string& where,
                const std::set<std::string>& known,
                const std::map<std::string, std::string>& unsupported = {}) {
  for (const auto& kv : n) {
    const std::string key = scalar(kv.first, source, where + " (a key)");
    const std::string path = where.empty() ? key : where + "." + key;
    auto u = unsupported.find(key);
    if (u != unsupported.end())
      throw Error(at(source, kv.first, path) + ": not supported by finmoe merge (" + u->second +
                  ")");
    if (!known.count(key)) {
      std::string list;
      for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
      throw Error(at(source, kv.first, path) + ": unknown key (expected one of: " + list + ")");
    }
  }
}

MergeParam parse_param(const YAML::Node& n, const std::string& source, const std::string& key) {
  MergeParam p;
  auto conditional = [&](const YAML::Node& c) {
    expect_map(c, source, key);
    check_keys(c, source, key, {"filter", "value"});
    if (!c["value"]) throw Error(at(source, c, key) + ": a filtered entry needs a 'value'");
    std::string filter = c["filter"] ? scalar(c["filter"], source, key + ".filter") : "";
    return std::make_pair(filter, parse_param(c["value"], source, key + ".value"));
  };
  if (n.IsScalar()) {
    p.kind = MergeParam::Kind::Scalar;
    p.scalar = n.Scalar();
  } else if (n.IsMap()) {
    p.kind = MergeParam::Kind::Filtered;
    p.filtered.push_back(conditional(n));
  } else if (n.IsSequence()) {
    if (n.size() == 0) throw Error(at(source, n, key) + ": an empty list");
    const bool all_scalars =
        std::all_of(n.begin(), n.end(), [](const YAML::Node& e) { return e.IsScalar(); });
    if (all_scalars) {
      p.kind = MergeParam::Kind::Gradient;
      for (const auto& e : n) p.gradient.push_back(e.Scalar());
    } else {
      p.kind = MergeParam::Kind::Filtered;
      for (const auto& e : n) {
        if (!e.IsMap())
          throw Error(at(source, e, key) +
                      ": a list mixing scalars and {filter, value} entries");
        p.filtered.push_back(conditional(e));
      }
    }
  } else {
    throw Error(at(source, n, key) + ": expected a value, got nothing");
  }
  return p;
}

MergeParams parse_params(const YAML::Node& n, const std::string& source, const std::string& where,
                         const std::string& method) {
  MergeParams out;
  if (!n || n.IsNull()) return out;
  expect_map(n, source, where);
  const MergeMethodInfo& info = merge_method_info(method, source);
  for (const auto& kv : n) {
    const std::string key = scalar(kv.first, source, where + " (a key)");
    if (!info.parameters.count(key)) {
      std::string list;
      for (const auto& k : info.parameters) list += (list.empty() ? "" : ", ") + k;
      throw Error(at(source, kv.first, where + "." + key) + ": merge_method " + method +
                  " takes no parameter '" + key + "' (it takes: " +
                  (list.empty() ? "none" : list) + ")");
    }
    out[key] = parse_param(kv.second, source, where + "." + key);
  }
  return out;
}

MergeSource parse_source(const YAML::Node& n, const std::string& source, const std::string& where,
                         const std::string& method, bool slice) {
  expect_map(n, source, where);
  std::set<std::string> keys = {"model", "parameters"};
  if (slice) keys.insert("layer_range");
  check_keys(n, source, where, keys);
  if (!n["model"]) throw Error(at(source, n, where) + ": 'model' is missing");
  MergeSource s;
  s.model = scalar(n["model"], source, where + ".model");
  if (s.model.find('+') != std::string::npos)
    throw Error(at(source, n["model"], where + ".model") + ": '" + s.model +
                "': model+LoRA references are not supported by finmoe merge");
  if (slice) {
    const YAML::Node r = n["layer_range"];
    if (!r || !r.IsSequence() || r.size() != 2)
      throw Error(at(source, n, where + ".layer_range") + ": expected [first, end]");
    try {
      s.layer_begin = r[0].as<int64_t>();
      s.layer_end = r[1].as<int64_t>();
    } catch (const YAML::Exception&) {
      throw Error(at(source, r, where + ".layer_range") + ": expected two integers");
    }
    if (s.layer_begin < 0 || s.layer_end <= s.layer_begin)
      throw Error(at(source, r, where + ".layer_range") + ": [" + std::to_string(s.layer_begin) +
                  ", " + std::to_string(s.layer_end) + "] is empty or negative");
  }
  s.parameters = parse_params(n["parameters"], source, where + ".parameters", method);
  return s;
}

const std::set<std::string> kDtypes = {"float32", "float16", "bfloat16", "float64"};

std::string parse_dtype(const YAML::Node& n, const std::string& source, const std::string& key) {
  std::string d = scalar(n, source, key);
  if (d == "fp32") d = "float32";
  if (d == "fp16") d = "float16";
  if (d == "bf16") d = "bfloat16";
  if (!kDtypes.count(d))
    throw Error(at(source, n, key) + ": '" + d +
                "' is not a dtype finmoe merge writes (float32, float16, bfloat16, float64)");
  return d;
}

// mergekit's `tokenizer:` block: source (default union), tokens, pad_to_multiple_of.
void parse_tokenizer_block(const YAML::Node& n, const std::string& source, MergeRecipe& r) {
  expect_map(n, source, "tokenizer");
  check_keys(n, source, "tokenizer", {"source", "tokens", "pad_to_multiple_of"});
  r.tokenizer_block = true;
  r.tokenizer_source = n["source"] ? scalar(n["source"], source, "tokenizer.source") : "union";
  if (r.tokenizer_source.empty())
    throw Error(at(source, n["source"], "tokenizer.source") + ": expected union, base or a model");
  if (n["pad_to_multiple_of"]) {
    const std::string v = scalar(n["pad_to_multiple_of"], source, "tokenizer.pad_to_multiple_of");
    char* end = nullptr;
    const long long k = std::strtoll(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0' || k <= 0)
      throw Error(at(source, n["pad_to_multiple_of"], "tokenizer.pad_to_multiple_of") + ": '" + v +
                  "' is not a positive integer");
    r.pad_to_multiple_of = k;
  }
  if (const YAML::Node toks = n["tokens"]; toks && !toks.IsNull()) {
    expect_map(toks, source, "tokenizer.tokens");
    for (const auto& kv : toks) {
      const std::string tok = scalar(kv.first, source, "tokenizer.tokens (a key)");
      const std::string where = "tokenizer.tokens['" + tok + "']";
      MergeRecipe::TokenSource ts;
      const YAML::Node e = kv.second;
      if (!e.IsNull()) {
        expect_map(e, source, where);
        check_keys(e, source, where, {"source", "force"});
        if (e["force"]) {
          const std::string f = scalar(e["force"], source, where + ".force");
          if (f != "true" && f != "false" && f != "True" && f != "False")
            throw Error(at(source, e["force"], where + ".force") + ": expected true or false");
          ts.force = f == "true" || f == "True";
        }
        if (const YAML::Node s = e["source"]; s && !s.IsNull()) {
          if (s.IsScalar()) {
            ts.kind = "model";
            ts.model = s.Scalar();
          } else {
            expect_map(s, source, where + ".source");
            check_keys(s, source, where + ".source", {"kind", "model", "token", "token_id"});
            const std::string kind = s["kind"] ? scalar(s["kind"], source, where + ".source.kind") : "";
            if (kind == "zero") {
              ts.kind = "zero";
            } else if (kind == "model_token") {
              ts.kind = "model_token";
              if (!s["model"]) throw Error(at(source, s, where + ".source") + ": 'model' is missing");
              ts.model = scalar(s["model"], source, where + ".source.model");
              if (bool(s["token"]) == bool(s["token_id"]))
                throw Error(at(source, s, where + ".source") + ": give one of token and token_id");
              if (s["token"]) ts.token = scalar(s["token"], source, where + ".source.token");
              if (s["token_id"]) {
                try {
                  ts.token_id = s["token_id"].as<int64_t>();
                } catch (const YAML::Exception&) {
                  throw Error(at(source, s["token_id"], where + ".source.token_id") + ": expected an integer");
                }
                if (ts.token_id < 0)
                  throw Error(at(source, s["token_id"], where + ".source.token_id") + ": negative");
              }
            } else {
              throw Error(at(source, s, where + ".source") + ": kind '" + kind +
                          "': expected zero or model_token (or a model path as the source)");
            }
          }
        }
      }
      if (ts.kind.empty())
        throw Error(at(source, kv.first, where) + ": a token entry needs a source");
      r.tokens.emplace_back(tok, ts);
    }
  }
}

}  // namespace

std::string resolve_recipe_path(const std::string& path, const fs::path& recipe_dir) {
  if (path.empty() || fs::path(path).is_absolute() || fs::exists(path)) return path;
  const fs::path alt = recipe_dir / path;
  return fs::exists(alt) ? alt.string() : path;
}

MergeParam MergeParam::number(double v) {
  std::ostringstream s;
  s.precision(17);
  s << v;
  MergeParam p;
  p.scalar = s.str();
  return p;
}

MergeParam MergeParam::boolean(bool v) {
  MergeParam p;
  p.scalar = v ? "true" : "false";
  return p;
}

const std::vector<MergeMethodInfo>& merge_methods() {
  static const std::vector<MergeMethodInfo> methods = {
      {"linear", {"weight", "normalize"}, false, 1, 0},
      {"task_arithmetic", kTaskArithmeticParams, true, 0, 0},
      {"ties", kTaskArithmeticParams, true, 0, 0},
      {"dare_linear", kTaskArithmeticParams, true, 0, 0},
      {"dare_ties", kTaskArithmeticParams, true, 0, 0},
      {"breadcrumbs", with(kTaskArithmeticParams, {"gamma"}), true, 0, 0},
      {"breadcrumbs_ties", with(kTaskArithmeticParams, {"gamma"}), true, 0, 0},
      {"della", with(kTaskArithmeticParams, {"epsilon"}), true, 0, 0},
      {"della_linear", with(kTaskArithmeticParams, {"epsilon"}), true, 0, 0},
      {"slerp", {"t"}, true, 1, 1},
      {"model_stock", {"filter_wise"}, true, 2, 0},
      {"sce", {"select_topk", "int8_mask"}, true, 0, 0},
      {"varm", {}, true, 0, 0},
      {"passthrough", {"scale"}, false, 1, 1},
      {"nuslerp", {"weight", "nuslerp_flatten", "nuslerp_row_wise"}, false, 2, 2, true},
  };
  return methods;
}

const MergeMethodInfo& merge_method_info(const std::string& name, const std::string& source) {
  for (const auto& m : merge_methods())
    if (m.name == name) return m;
  std::string list;
  for (const auto& m : merge_methods()) list += (list.empty() ? "" : ", ") + m.name;
  throw Error(source + ": merge_method '" + name + "' is not one finmoe implements (" + list +
              ")");
}

const std::vector<std::string>& merge_method_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> n;
    for (const auto& m : merge_methods()) n.push_back(m.name);
    return n;
  }();
  return names;
}

// `models:` (one slice over every layer) or `slices:` of a recipe or of its
// `modules.default`, appended to r.slices.
void parse_layers(const YAML::Node& node, const std::string& source, const std::string& prefix,
                  MergeRecipe& r) {
  const bool has_models = bool(node["models"]), has_slices = bool(node["slices"]);
  if (has_models == has_slices)
    throw Error(source + ": " +
                (prefix.empty() ? std::string("exactly one of 'models', 'slices' and 'modules'")
                                : prefix + "models or " + prefix + "slices: exactly one") +
                " must be given");
  if (has_models) {
    const YAML::Node models = node["models"];
    if (!models.IsSequence() || models.size() == 0)
      throw Error(at(source, models, prefix + "models") + ": expected a non-empty list");
    MergeSlice slice;
    for (size_t i = 0; i < models.size(); ++i)
      slice.sources.push_back(parse_source(models[i], source, prefix + "models[" + std::to_string(i) + "]",
                                           r.merge_method, false));
    r.slices.push_back(std::move(slice));
  } else {
    r.uses_slices = true;
    const YAML::Node slices = node["slices"];
    if (!slices.IsSequence() || slices.size() == 0)
      throw Error(at(source, slices, prefix + "slices") + ": expected a non-empty list");
    for (size_t i = 0; i < slices.size(); ++i) {
      const std::string where = prefix + "slices[" + std::to_string(i) + "]";
      expect_map(slices[i], source, where);
      check_keys(slices[i], source, where, {"sources", "base_model", "parameters"},
                 {{"residual_weight", "residual_weight"}});
      const YAML::Node src = slices[i]["sources"];
      if (!src || !src.IsSequence() || src.size() == 0)
        throw Error(at(source, slices[i], where + ".sources") + ": expected a non-empty list");
      MergeSlice slice;
      for (size_t j = 0; j < src.size(); ++j)
        slice.sources.push_back(parse_source(src[j], source,
                                             where + ".sources[" + std::to_string(j) + "]",
                                             r.merge_method, true));
      if (slices[i]["base_model"])
        slice.base_model = scalar(slices[i]["base_model"], source, where + ".base_model");
      slice.parameters =
          parse_params(slices[i]["parameters"], source, where + ".parameters", r.merge_method);
      r.slices.push_back(std::move(slice));
    }
  }
}

MergeRecipe parse_merge_recipe(const std::string& yaml, const std::string& source) {
  check_yaml_bounds(yaml, source);
  YAML::Node root;
  try {
    root = YAML::Load(yaml);
  } catch (const YAML::Exception& e) {
    throw Error(source + ":" + std::to_string(e.mark.line + 1) + ": not valid YAML: " + e.msg);
  }
  if (!root.IsMap()) throw Error(source + ": expected a mapping with merge_method and models");
  check_keys(root, source, "",
             {"merge_method", "base_model", "models", "slices", "parameters", "dtype",
              "out_dtype", "tokenizer_source", "tokenizer", "chat_template", "modules"});
  MergeRecipe r;
  r.source = source;
  r.text = yaml;
  if (!root["merge_method"]) throw Error(source + ": merge_method is missing");
  r.merge_method = scalar(root["merge_method"], source, "merge_method");
  const MergeMethodInfo& info = merge_method_info(r.merge_method, at(source, root["merge_method"], "merge_method"));
  if (root["base_model"]) r.base_model = scalar(root["base_model"], source, "base_model");
  if (root["dtype"]) r.dtype = parse_dtype(root["dtype"], source, "dtype");
  if (root["out_dtype"]) r.out_dtype = parse_dtype(root["out_dtype"], source, "out_dtype");
  if (root["tokenizer_source"]) {
    r.tokenizer_source = scalar(root["tokenizer_source"], source, "tokenizer_source");
    if (r.tokenizer_source.empty())
      throw Error(at(source, root["tokenizer_source"], "tokenizer_source") +
                  ": expected union, base or a model");
  }
  if (root["tokenizer"]) {
    if (root["tokenizer_source"])
      throw Error(at(source, root["tokenizer"], "tokenizer") +
                  ": give either tokenizer_source or tokenizer, not both");
    parse_tokenizer_block(root["tokenizer"], source, r);
  }
  if (root["chat_template"]) {
    r.chat_template = scalar(root["chat_template"], source, "chat_template");
    check_chat_template(r.chat_template, at(source, root["chat_template"], "chat_template"));
  }
  r.parameters = parse_params(root["parameters"], source, "parameters", r.merge_method);

  if (root["modules"]) {
    // mergekit's multi-module syntax. Every architecture finmoe merges is one
    // decoder, which mergekit names "default": `modules: {default: {models |
    // slices, parameters}}` is the same recipe as models/slices at the top.
    const YAML::Node modules = root["modules"];
    if (root["models"] || root["slices"])
      throw Error(at(source, modules, "modules") +
                  ": exactly one of 'models', 'slices' and 'modules' must be given");
    if (!modules.IsMap() || modules.size() == 0)
      throw Error(at(source, modules, "modules") + ": expected a mapping of module names");
    for (const auto& kv : modules) {
      const std::string name = scalar(kv.first, source, "modules (a key)");
      if (name != "default")
        throw Error(at(source, kv.first, "modules." + name) +
                    ": unknown module (the architectures finmoe merges have one module, "
                    "'default')");
      const std::string where = "modules.default";
      expect_map(kv.second, source, where);
      check_keys(kv.second, source, where, {"models", "slices", "parameters"});
      r.module_parameters =
          parse_params(kv.second["parameters"], source, where + ".parameters", r.merge_method);
      parse_layers(kv.second, source, where + ".", r);
    }
  } else {
    parse_layers(root, source, "", r);
  }
  if (info.needs_base && r.base_model.empty() &&
      std::any_of(r.slices.begin(), r.slices.end(),
                  [](const MergeSlice& s) { return s.base_model.empty(); }))
    throw Error(source + ": merge_method " + r.merge_method + " needs base_model");
  return r;
}

MergeRecipe load_merge_recipe(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot read the recipe");
  std::string text;
  in.seekg(0, std::ios::end);
  const auto size = in.tellg();
  if (size > std::streamoff(kMaxYamlBytes))
    throw Error(path + ": " + std::to_string(size) + " bytes, more than a recipe can be (" +
                std::to_string(kMaxYamlBytes) + ")");
  in.seekg(0);
  text.assign(std::istreambuf_iterator<char>(in), {});
  MergeRecipe r = parse_merge_recipe(text, path);
  const fs::path dir = fs::path(path).parent_path();
  r.base_model = resolve_recipe_path(r.base_model, dir);
  if (!r.tokenizer_source.empty() && r.tokenizer_source != "base" && r.tokenizer_source != "union")
    r.tokenizer_source = resolve_recipe_path(r.tokenizer_source, dir);
  for (auto& [tok, ts] : r.tokens) ts.model = resolve_recipe_path(ts.model, dir);
  for (auto& s : r.slices) {
    s.base_model = resolve_recipe_path(s.base_model, dir);
    for (auto& src : s.sources) src.model = resolve_recipe_path(src.model, dir);
  }
  return r;
}

}  // namespace finmoe
