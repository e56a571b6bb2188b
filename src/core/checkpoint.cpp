// Hugging Face checkpoint directories: model.safetensors, or shards listed in
// model.safetensors.index.json. Format: docs/formats/safetensors.md.
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>

#include "core/file_util.h"
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

// A shard named by an index: a file of the directory itself, so an index
// cannot make the reader open files elsewhere ("../x", "/etc/x", "a/../../x").
// A symlink placed in the directory is followed: that is the user's doing.
bool is_plain_file_name(const std::string& name) {
  return !name.empty() && name != "." && name != ".." &&
         name.find_first_of(std::string_view("/\\\0", 3)) == std::string::npos;
}

// Whether `path` is a regular file; a path the system cannot even look up
// (too long, a loop of links, no permission) is an Error naming it, not a
// std::filesystem exception.
bool is_file(const std::string& path) {
  std::error_code ec;
  const bool regular = fs::is_regular_file(path, ec);
  if (ec && ec != std::errc::no_such_file_or_directory && ec != std::errc::not_a_directory)
    throw Error("cannot look up " + path + ": " + ec.message());
  return regular;
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
  if (is_file(single)) {
    r.files_.push_back(SafetensorsFile::open(single));
    const auto& ts = r.files_[0]->tensors();
    for (size_t i = 0; i < ts.size(); ++i) r.index_.emplace(ts[i].name, std::make_pair(0, i));
    return r;
  }
  if (!is_file(index_path))
    throw Error("no checkpoint in " + dir + ": expected " + kSingleName + " or " + kIndexName);

  nlohmann::json index = read_json_file(index_path);
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
    throw Error(index_path + ": expected an object with a 'weight_map' object");
  // name -> shard file; the shards sorted by name.
  std::set<std::string> shard_set;
  std::map<std::string, std::string> listed;
  for (const auto& [name, file] : index["weight_map"].items()) {
    if (!file.is_string())
      throw Error(index_path + ": weight_map['" + name + "'] must be a string, got " +
                  file.type_name());
    std::string shard = file.get<std::string>();
    if (!is_plain_file_name(shard))
      throw Error(index_path + ": weight_map['" + name + "'] is '" + shard +
                  "'; a shard must be a file name inside the checkpoint directory (no '/', "
                  "no '..')");
    listed[name] = shard;
    shard_set.insert(std::move(shard));
  }
  const std::vector<std::string> shards(shard_set.begin(), shard_set.end());
  std::map<std::string, size_t> shard_index;
  for (const auto& shard : shards) {
    const std::string path = join(dir, shard);
    if (!is_file(path))
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
  return shard_of(name).path();
}

const SafetensorsFile& CheckpointReader::shard_of(std::string_view name) const {
  auto it = index_.find(name);
  if (it == index_.end())
    throw Error("tensor '" + std::string(name) + "' not found in checkpoint " + dir_);
  return *files_[it->second.first];
}

const std::map<std::string, std::string>& CheckpointReader::metadata() const {
  static const std::map<std::string, std::string> empty;
  return files_.empty() ? empty : files_[0]->metadata();
}

size_t PlannedTensor::nbytes() const {
  size_t n = dtype_size(dtype);
  for (int64_t d : shape) n *= size_t(d);
  return n;
}

struct CheckpointWriter::Shard {
  explicit Shard(const std::string& path) : file(path) {}
  AtomicFile file;
};

CheckpointWriter::CheckpointWriter(std::string dir, std::vector<PlannedTensor> plan,
                                   std::map<std::string, std::string> metadata,
                                   size_t max_shard_bytes)
    : dir_(std::move(dir)), plan_(std::move(plan)), metadata_(std::move(metadata)) {
  // All checks before the first file is touched.
  std::vector<TensorData> as_data;
  as_data.reserve(plan_.size());
  for (const auto& t : plan_) {
    for (int64_t d : t.shape)
      if (d < 0)
        throw Error(dir_ + ": tensor '" + t.name + "': negative dimension " + std::to_string(d));
    as_data.push_back({t.name, t.dtype, t.shape, nullptr, t.nbytes()});
  }
  check_tensor_data(dir_, as_data, /*require_data=*/false);
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec) throw Error("cannot create checkpoint directory " + dir_ + ": " + ec.message());

  // Greedy: a tensor never splits; one larger than the limit gets its own shard.
  size_t shard_bytes = 0;
  shard_first_.push_back(0);
  for (size_t i = 0; i < plan_.size(); ++i) {
    const size_t n = plan_[i].nbytes();
    if (i > shard_first_.back() && shard_bytes + n > max_shard_bytes) {
      shard_first_.push_back(i);
      shard_bytes = 0;
    }
    shard_of_.push_back(shard_first_.size() - 1);
    shard_bytes += n;
    total_bytes_ += n;
  }
  shard_first_.push_back(plan_.size());
  const size_t n_shards = shard_first_.size() - 1;
  for (size_t s = 0; s < n_shards; ++s)
    shard_names_.push_back(n_shards == 1 ? kSingleName : shard_name(s, n_shards));
}

CheckpointWriter::~CheckpointWriter() = default;  // an uncommitted AtomicFile removes its temp

void CheckpointWriter::open_shard(size_t s) {
  std::vector<TensorData> header;
  for (size_t i = shard_first_[s]; i < shard_first_[s + 1]; ++i)
    header.push_back({plan_[i].name, plan_[i].dtype, plan_[i].shape, nullptr, plan_[i].nbytes()});
  open_ = std::make_unique<Shard>(join(dir_, shard_names_[s]));
  open_->file.write(safetensors_header(header, metadata_));
}

void CheckpointWriter::write(const std::string& name, const void* data, size_t nbytes) {
  if (piece_bytes_ > 0 && next_ < plan_.size())
    throw Error(dir_ + ": tensor '" + name + "' written while '" + plan_[next_].name +
                "' is half written");
  if (next_ < plan_.size() && name == plan_[next_].name && nbytes != plan_[next_].nbytes())
    throw Error(dir_ + ": tensor '" + name + "' has " + std::to_string(nbytes) +
                " bytes, planned " + std::to_string(plan_[next_].nbytes()));
  write_piece(name, data, nbytes);
}

void CheckpointWriter::write_piece(const std::string& name, const void* data, size_t nbytes) {
  if (finished_) throw Error(dir_ + ": tensor '" + name + "' written after finish()");
  if (next_ >= plan_.size())
    throw Error(dir_ + ": tensor '" + name + "' is not in the plan (all " +
                std::to_string(plan_.size()) + " planned tensors are written)");
  const PlannedTensor& t = plan_[next_];
  if (name != t.name)
    throw Error(dir_ + ": tensor '" + name + "' written out of order, expected '" + t.name + "'");
  if (piece_bytes_ + nbytes > t.nbytes())
    throw Error(dir_ + ": tensor '" + name + "' has more than its planned " +
                std::to_string(t.nbytes()) + " bytes");
  if (nbytes > 0 && data == nullptr) throw Error(dir_ + ": tensor '" + name + "': data is null");
  const size_t s = shard_of_[next_];
  if (next_ == shard_first_[s] && piece_bytes_ == 0) open_shard(s);
  open_->file.write(data, nbytes);
  bytes_written_ += nbytes;
  piece_bytes_ += nbytes;
  if (piece_bytes_ < t.nbytes()) return;
  piece_bytes_ = 0;
  ++next_;
  if (next_ == shard_first_[s + 1]) {
    open_->file.commit();
    open_.reset();
  }
}

void CheckpointWriter::finish() {
  if (finished_) return;
  if (plan_.empty()) {  // still a valid (empty) checkpoint file
    open_shard(0);
    open_->file.commit();
    open_.reset();
  }
  if (next_ < plan_.size() && piece_bytes_ > 0)
    throw Error(dir_ + ": checkpoint incomplete, tensor '" + plan_[next_].name +
                "' is half written (" + std::to_string(piece_bytes_) + " of " +
                std::to_string(plan_[next_].nbytes()) + " bytes)");
  if (next_ < plan_.size())
    throw Error(dir_ + ": checkpoint incomplete, tensor '" + plan_[next_].name +
                "' (and " + std::to_string(plan_.size() - next_ - 1) + " more) never written");
  finished_ = true;
  if (shard_names_.size() == 1) {
    remove_file(join(dir_, kIndexName));
    remove_stale_shards(dir_, {});
    return;
  }
  // Shards are in place; then the index, then removal of a stale single file
  // (which a reader would otherwise prefer).
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  for (size_t i = 0; i < plan_.size(); ++i) weight_map[plan_[i].name] = shard_names_[shard_of_[i]];
  nlohmann::ordered_json index = {{"metadata", {{"total_size", total_bytes_}}},
                                  {"weight_map", weight_map}};
  write_file_atomic(join(dir_, kIndexName), index.dump(2) + "\n");
  remove_file(join(dir_, kSingleName));
  remove_stale_shards(dir_, shard_names_);
}

void write_checkpoint(const std::string& dir, const std::vector<TensorData>& tensors,
                      const std::map<std::string, std::string>& metadata,
                      size_t max_shard_bytes) {
  check_tensor_data(dir, tensors);
  std::vector<PlannedTensor> plan;
  plan.reserve(tensors.size());
  for (const auto& t : tensors) plan.push_back({t.name, t.dtype, t.shape});
  CheckpointWriter writer(dir, std::move(plan), metadata, max_shard_bytes);
  for (const auto& t : tensors) writer.write(t.name, t.data, t.nbytes);
  writer.finish();
}

}  // namespace finmoe
