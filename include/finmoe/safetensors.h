#pragma once
// safetensors files and Hugging Face checkpoint directories.
//
// Reading memory-maps the file (MAP_PRIVATE, copy-on-write) so tensors can be
// used where they lie, without a copy, and even modified without touching the
// file. Every header is validated before any tensor is handed out; a problem
// throws finmoe::Error naming the file and the tensor.
//
// Thread safety: a SafetensorsFile / CheckpointReader is immutable after
// open() and may be read from many threads.
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace finmoe {

enum class DType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL };

size_t dtype_size(DType dtype);                // bytes per element
std::string_view dtype_name(DType dtype);      // the safetensors spelling: "F32", "BF16", ...
DType dtype_from_name(std::string_view name);  // throws Error listing the known names

// One tensor inside a mapped file. `data` stays valid while the file that
// produced it is alive.
struct TensorView {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  uint8_t* data = nullptr;  // writable: private copy-on-write mapping
  size_t nbytes = 0;
  int64_t numel() const;
};

class SafetensorsFile {
 public:
  // Maps and validates `path`: header length vs file size, JSON, dtypes,
  // offsets in range and non-overlapping, shape x dtype == byte length.
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<TensorView>& tensors() const { return tensors_; }  // in file order
  const TensorView* find(std::string_view name) const;                 // nullptr if absent
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // The whole mapped file, header included (every TensorView::data lies inside).
  const uint8_t* mapped_data() const { return static_cast<const uint8_t*>(map_); }
  size_t mapped_size() const { return map_size_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::vector<TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

// A checkpoint directory: `model.safetensors`, or the shards listed in
// `model.safetensors.index.json` (every listed shard must exist and hold the
// tensors the index says it holds).
class CheckpointReader {
 public:
  static CheckpointReader open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  bool has(std::string_view name) const;
  // Throws Error "tensor 'X' not found in checkpoint DIR" when absent.
  const TensorView& get(std::string_view name) const;
  std::vector<std::string> names() const;  // sorted
  // The file a tensor lives in (for error messages).
  const std::string& file_of(std::string_view name) const;
  const std::map<std::string, std::string>& metadata() const;  // of the first shard

 private:
  std::string dir_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, std::pair<size_t, size_t>, std::less<>> index_;  // name -> (file, tensor)
};

// A tensor to write; the caller keeps `data` alive during the call.
struct TensorData {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t nbytes = 0;  // must equal numel * dtype_size
};

// Writes one safetensors file atomically (PATH.tmp-XXXX then rename).
// Tensors are written in the given order; `metadata` becomes `__metadata__`.
void write_safetensors(const std::string& path, const std::vector<TensorData>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Writes a checkpoint into `dir` (created if missing): a single
// `model.safetensors` when everything fits in `max_shard_bytes`, else
// `model-0000i-of-0000n.safetensors` shards plus `model.safetensors.index.json`
// (with metadata.total_size). Each file is written atomically; stale files of
// a previous checkpoint in `dir` with the same names are replaced.
void write_checkpoint(const std::string& dir, const std::vector<TensorData>& tensors,
                      const std::map<std::string, std::string>& metadata = {},
                      size_t max_shard_bytes = size_t(5) << 30);

}  // namespace finmoe
