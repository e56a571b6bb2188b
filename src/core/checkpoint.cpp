// Hugging Face checkpoint directories: model.safetensors, or shards listed in
// model.safetensors.index.json. Format: docs/formats/safetensors.md.
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <map>
#include <filesystem>

#include "core/tensor_data_check.h"
#include "finmoe/config.h"
#include "finmoe/error.h"
#include "finmoe/safetensors.h"

namespace fs = std::filesystem;

namespace finmoe {

namespace {

constexpr const char* kSingleName = "model.safetensors";
constexpr const char* kIndexName = "model.safetensors.index.json";

std::string join(const std::string& dir, const std::string& name) {
  return (fs::path(dir) / name).string();
}

std::string shard_name(size_t i, size_t n) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "model-%05zu-of-%05zu.safetensors", i + 1, n);
  return buf;
}

// Removes shard files of an earlier checkpoint that are not in `keep`.
void remove_stale_shards(const std::string& dir, const std::vector<std::string>& keep) {
  // model-DDDDD-of-DDDDD.safetensors
  auto is_shard_name = [](const std::string& n) {
    if (n.size() != 32 || n.compare(0, 6, "model-") != 0 || n.compare(11, 4, "-of-") != 0 ||
        n.compare(20, 12, ".safetensors") != 0)
      return false;
    for (size_t i : {6, 7, 8, 9, 10, 15, 16, 17, 18, 19})
      if (!std::isdigit(static_cast<unsigned char>(n[i]))) return false;
    return true;
  };
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    std::string name = entry.path().filename().string();
    if (!is_shard_name(name)) continue;
    if (std::find(keep.begin(), keep.end(), name) != keep.end()) continue;
    fs::remove(entry.path(), ec);
  }
}

void remove_file(const std::string& path) {
  std::error_code ec;
  fs::remove(path, ec);
  if (ec) throw Error("cannot remove stale " + path + ": " + ec.message());
}

}  // namespace

CheckpointReader CheckpointReader::open(const std::string& dir) {
  CheckpointReader r;
  r.dir_ = dir;
  const std::string single = join(dir, kSingleName);
  const std::string index_path = join(dir, kIndexName);
  // As in transformers, a single file wins over an index.
  if (fs::is_regular_file(single)) {
    r.files_.push_back(SafetensorsFile::open(single));
    const auto& ts = r.files_[0]->tensors();
    for (size_t i = 0; i < ts.size(); ++i) r.index_.emplace(ts[i].name, std::make_pair(0, i));
    return r;
  }
  if (!fs::is_regular_file(index_path))
    throw Error("no checkpoint in " + dir + ": expected " + kSingleName + " or " + kIndexName);

  nlohmann::json index = read_json_file(index_path);
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
    throw Error(index_path + ": expected an object with a 'weight_map' object");
  // Shards in order of first mention; name -> shard file.
  std::vector<std::string> shards;
  std::map<std::string, std::string> listed;
  for (const auto& [name, file] : index["weight_map"].items()) {
    if (!file.is_string())
      throw Error(index_path + ": weight_map['" + name + "'] must be a string, got " +
                  file.type_name());
    std::string shard = file.get<std::string>();
    listed[name] = shard;
    if (std::find(shards.begin(), shards.end(), shard) == shards.end()) shards.push_back(shard);
  }
  std::sort(shards.begin(), shards.end());
  std::map<std::string, size_t> shard_index;
  for (const auto& shard : shards) {
    const std::string path = join(dir, shard);
    if (!fs::is_regular_file(path))
      throw Error(index_path + ": shard " + shard + " is listed but " + path + " does not exist");
    shard_index[shard] = r.files_.size();
    r.files_.push_back(SafetensorsFile::open(path));
  }
  // Every tensor physically present, with the shard holding it; a name in two
  // shards is ambiguous.
  std::map<std::string_view, size_t> present;
  for (size_t f = 0; f < r.files_.size(); ++f) {
    const auto& ts = r.files_[f]->tensors();
    for (size_t i = 0; i < ts.size(); ++i) {
      auto [it, fresh] = present.emplace(ts[i].name, f);
      if (!fresh)
        throw Error("tensor '" + ts[i].name + "' is in two shards: " + r.files_[it->second]->path() +
                    " and " + r.files_[f]->path());
    }
  }
  for (const auto& [name, shard] : listed) {
    size_t f = shard_index.at(shard);
    const TensorView* t = r.files_[f]->find(name);
    if (t == nullptr)
      throw Error(index_path + " lists tensor '" + name + "' in " + shard +
                  ", but it is not in " + r.files_[f]->path());
    r.index_.emplace(name, std::make_pair(f, size_t(t - r.files_[f]->tensors().data())));
  }
  return r;
}

bool CheckpointReader::has(std::string_view name) const { return index_.find(name) != index_.end(); }

const TensorView& CheckpointReader::get(std::string_view name) const {
  auto it = index_.find(name);
  if (it == index_.end())
    throw Error("tensor '" + std::string(name) + "' not found in checkpoint " + dir_);
  return files_[it->second.first]->tensors()[it->second.second];
}

std::vector<std::string> CheckpointReader::names() const {
  std::vector<std::string> out;
  out.reserve(index_.size());
  for (const auto& [name, loc] : index_) out.push_back(name);
  return out;
}

const std::string& CheckpointReader::file_of(std::string_view name) const {
  auto it = index_.find(name);
  if (it == index_.end())
    throw Error("tensor '" + std::string(name) + "' not found in checkpoint " + dir_);
  return files_[it->second.first]->path();
}

const std::map<std::string, std::string>& CheckpointReader::metadata() const {
  static const std::map<std::string, std::string> empty;
  return files_.empty() ? empty : files_[0]->metadata();
}

void write_checkpoint(const std::string& dir, const std::vector<TensorData>& tensors,
                      const std::map<std::string, std::string>& metadata,
                      size_t max_shard_bytes) {
  // All checks before the first file is touched.
  check_tensor_data(dir, tensors);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error("cannot create checkpoint directory " + dir + ": " + ec.message());

  // Greedy: a tensor never splits; one larger than the limit gets its own shard.
  std::vector<std::vector<TensorData>> groups(1);
  size_t group_bytes = 0;
  uint64_t total = 0;
  for (const auto& t : tensors) {
    if (!groups.back().empty() && group_bytes + t.nbytes > max_shard_bytes) {
      groups.emplace_back();
      group_bytes = 0;
    }
    groups.back().push_back(t);
    group_bytes += t.nbytes;
    total += t.nbytes;
  }

  if (groups.size() == 1) {
    write_safetensors(join(dir, kSingleName), groups[0], metadata);
    remove_file(join(dir, kIndexName));
    remove_stale_shards(dir, {});
    return;
  }
  // Shards first, then the index, then removal of a stale single file (which
  // a reader would otherwise prefer).
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  std::vector<std::string> names;
  for (size_t i = 0; i < groups.size(); ++i) {
    names.push_back(shard_name(i, groups.size()));
    write_safetensors(join(dir, names.back()), groups[i], metadata);
    for (const auto& t : groups[i]) weight_map[t.name] = names.back();
  }
  nlohmann::ordered_json index = {{"metadata", {{"total_size", total}}},
                                  {"weight_map", weight_map}};
  write_file_atomic(join(dir, kIndexName), index.dump(2) + "\n");
  remove_file(join(dir, kSingleName));
  remove_stale_shards(dir, names);
}

}  // namespace finmoe
