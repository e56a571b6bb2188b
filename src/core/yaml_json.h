#pragma once
// A yaml-cpp node as JSON, the way finmoe reads its YAML files (lm-eval task
// files, experiment recipes): quoted scalars are strings; plain scalars are
// YAML 1.1 booleans (true/True/false/False), null (null, ~), integers, numbers,
// else strings; mappings keep their order. A scalar tagged as a function
// (lm-eval's `!function`) is an Error naming `where`: finmoe runs no Python.
// Internal, header-only: included by the translation units that link yaml-cpp.
#include <cstdlib>
#include <string>

#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include "finmoe/error.h"

namespace finmoe {

inline nlohmann::ordered_json yaml_to_json(const YAML::Node& n, const std::string& where) {
  using ojson = nlohmann::ordered_json;
  switch (n.Type()) {
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      return nullptr;
    case YAML::NodeType::Scalar: {
      if (n.Tag().find("function") != std::string::npos)
        throw Error(where + ": '!function' (a Python function) is not supported; use a template");
      const std::string s = n.Scalar();
      if (n.Tag() == "!") return s;  // quoted: a string
      if (s == "true" || s == "True") return true;
      if (s == "false" || s == "False") return false;
      if (s == "null" || s == "~") return nullptr;
      if (!s.empty()) {
        char* end = nullptr;
        const long long i = std::strtoll(s.c_str(), &end, 10);
        if (*end == '\0') return int64_t(i);
        const double d = std::strtod(s.c_str(), &end);
        if (*end == '\0') return d;
      }
      return s;
    }
    case YAML::NodeType::Sequence: {
      ojson a = ojson::array();
      for (const auto& x : n) a.push_back(yaml_to_json(x, where));
      return a;
    }
    case YAML::NodeType::Map: {
      ojson o = ojson::object();
      for (const auto& kv : n) o[kv.first.Scalar()] = yaml_to_json(kv.second, where);
      return o;
    }
  }
  return nullptr;
}

}  // namespace finmoe
