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
  // The shard a tensor lives in (its mapping: the tensor's offset in the file).
  const SafetensorsFile& shard_of(std::string_view name) const;
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

// One tensor of a checkpoint to be written by CheckpointWriter: its data
// arrives later, so the plan fixes names, shapes and shard boundaries first.
struct PlannedTensor {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  size_t nbytes() const;  // numel * dtype_size
};

// Streams a checkpoint into `dir` one tensor at a time, so a converter never
// holds more than the tensor it is producing. The whole tensor list is given
// up front: shard boundaries (greedy, as write_checkpoint), names and headers
// are known before the first byte is written, and each tensor's bytes go
// straight to its shard file.
//
//   CheckpointWriter w(dir, plan);
//   for (each planned tensor, in plan order) w.write(name, data, nbytes);
//   w.finish();   // the index (when sharded); stale files of an older checkpoint removed
//
// Each shard is written to a temp name and renamed when its last tensor
// arrives; the index is written by finish(). If the writer is destroyed
// before finish() (an exception), the shard in progress is deleted and
// finished shards stay (without an index they are not a loadable checkpoint
// unless there is only one). Not thread-safe: one owner calls write().
class CheckpointWriter {
 public:
  // Validates the plan (names unique and non-empty, sizes consistent) and
  // creates `dir`; throws Error naming `dir` and the tensor.
  CheckpointWriter(std::string dir, std::vector<PlannedTensor> plan,
                   std::map<std::string, std::string> metadata = {},
                   size_t max_shard_bytes = size_t(5) << 30);
  ~CheckpointWriter();
  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  // The next planned tensor's bytes. Throws Error when `name` is not the next
  // tensor of the plan or nbytes differs from the planned size.
  void write(const std::string& name, const void* data, size_t nbytes);
  // The next planned tensor's bytes in pieces, in order: the tensor is
  // complete once its pieces add up to its planned size (a tensor of 0 bytes
  // takes one empty piece). Throws Error when `name` is not the tensor being
  // written or the next one, or the pieces pass its planned size.
  void write_piece(const std::string& name, const void* data, size_t nbytes);
  // Throws Error naming the first tensor never written.
  void finish();

  size_t num_shards() const { return shard_names_.size(); }
  const std::vector<std::string>& shard_names() const { return shard_names_; }
  uint64_t total_bytes() const { return total_bytes_; }
  uint64_t bytes_written() const { return bytes_written_; }
  size_t tensors_written() const { return next_; }

 private:
  struct Shard;
  void open_shard(size_t s);

  std::string dir_;
  std::vector<PlannedTensor> plan_;
  std::map<std::string, std::string> metadata_;
  std::vector<size_t> shard_of_;           // per planned tensor
  std::vector<size_t> shard_first_;        // first tensor of each shard (+ end sentinel)
  std::vector<std::string> shard_names_;   // file names in `dir`
  std::unique_ptr<Shard> open_;            // the shard being filled
  size_t next_ = 0;                        // next planned tensor
  size_t piece_bytes_ = 0;                 // of it, written by write_piece so far
  uint64_t total_bytes_ = 0;
  uint64_t bytes_written_ = 0;
  bool finished_ = false;
};

}  // namespace finmoe
