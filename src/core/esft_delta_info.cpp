// ESFT's files without libtorch (include/finmoe/esft_delta.h).
#include <algorithm>
#include <cctype>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "core/esft_files.h"
#include "finmoe/config.h"
#include "finmoe/error.h"
#include "finmoe/esft_delta.h"
#include "finmoe/safetensors.h"

namespace finmoe {
namespace fs = std::filesystem;

bool parse_esft_index(const std::string& s, int64_t& out) {
  if (s.empty() || s.size() > 9 ||
      !std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isdigit(c); }))
    return false;
  out = std::stoll(s);
  return true;
}

// ---- expert configs ------------------------------------------------------------

nlohmann::json expert_config_to_json(const ExpertConfig& c) {
  nlohmann::json experts = nlohmann::json::object();
  for (const auto& [layer, ids] : c.experts) experts[std::to_string(layer)] = ids;
  return {{"experts", experts},
          {"shared_experts", c.shared_experts},
          {"non_expert_modules", c.non_expert_modules}};
}

ExpertConfig expert_config_from_json(const nlohmann::json& j, const std::string& source) {
  if (!j.is_object()) throw Error(source + ": expected a JSON object with 'experts'");
  for (const auto& [key, v] : j.items())
    if (key != "experts" && key != "shared_experts" && key != "non_expert_modules")
      throw Error(source + ": unknown field '" + key +
                  "' (expected experts, shared_experts, non_expert_modules)");
  ExpertConfig c;
  auto it = j.find("experts");
  if (it == j.end() || !it->is_object())
    throw Error(source + ": 'experts' must be an object {\"<layer>\": [expert ids]}");
  for (const auto& [key, ids] : it->items()) {
    int64_t layer = 0;
    if (!parse_esft_index(key, layer))
      throw Error(source + ": experts key '" + key + "' is not a layer index");
    if (!ids.is_array())
      throw Error(source + ": experts[\"" + key + "\"] must be a list of expert ids");
    auto& list = c.experts[layer];
    for (const auto& id : ids) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0)
        throw Error(source + ": experts[\"" + key + "\"] holds " + id.dump() +
                    ", expected non-negative integers");
      list.push_back(id.get<int64_t>());
    }
  }
  for (const char* flag : {"shared_experts", "non_expert_modules"}) {
    auto f = j.find(flag);
    if (f == j.end()) continue;
    if (!f->is_boolean()) throw Error(source + ": '" + flag + "' must be true or false");
    (std::string(flag) == "shared_experts" ? c.shared_experts : c.non_expert_modules) =
        f->get<bool>();
  }
  return c;
}

ExpertConfig load_expert_config(const std::string& path) {
  return expert_config_from_json(read_json_file(path), path);
}

void save_expert_config(const std::string& path, const ExpertConfig& c) {
  write_json_file(path, expert_config_to_json(c));
}

// ---- delta checkpoints -----------------------------------------------------------

bool is_esft_delta(const std::string& dir) {
  std::error_code ec;  // a path too long to look up is no delta: the loader names it next
  return fs::exists(fs::path(dir) / esft_files::kDelta, ec);
}

EsftDeltaInfo read_esft_delta(const std::string& dir) {
  const std::string path = (fs::path(dir) / esft_files::kDelta).string();
  const nlohmann::json j = read_json_file(path);
  if (!j.is_object() || !j.contains("format") || j["format"] != esft_files::kFormat)
    throw Error(path + ": 'format' must be \"" + esft_files::kFormat + "\"");
  if (!j.contains("format_version") || !j["format_version"].is_number_integer())
    throw Error(path + ": 'format_version' must be an integer");
  const int64_t version = j["format_version"].get<int64_t>();
  if (version < 1 || version > kEsftDeltaFormatVersion)
    throw Error(path + ": format_version " + std::to_string(version) +
                " is not readable by this finmoe (it reads up to " +
                std::to_string(kEsftDeltaFormatVersion) +
                "); a newer finmoe wrote it: upgrade finmoe");
  if (!j.contains("base_model") || !j["base_model"].is_string() ||
      j["base_model"].get<std::string>().empty())
    throw Error(path + ": 'base_model' must name the base model directory");
  EsftDeltaInfo info;
  info.dir = dir;
  info.base_model = j["base_model"].get<std::string>();
  const std::string experts = (fs::path(dir) / esft_files::kExperts).string();
  if (!fs::exists(experts)) throw Error(dir + ": ESFT delta without " + esft_files::kExperts);
  info.experts = load_expert_config(experts);
  const std::string tensors = (fs::path(dir) / esft_files::kTensors).string();
  if (!fs::exists(tensors)) throw Error(dir + ": ESFT delta without " + esft_files::kTensors);
  auto file = SafetensorsFile::open(tensors);
  info.tensors = int64_t(file->tensors().size());
  for (const auto& v : file->tensors()) info.params += v.numel();
  info.bytes = int64_t(fs::file_size(tensors));
  return info;
}

std::string esft_delta_base(const EsftDeltaInfo& info) {
  const fs::path base(info.base_model);
  return base.is_absolute() ? base.string()
                            : (fs::path(info.dir) / base).lexically_normal().string();
}

}  // namespace finmoe
