#pragma once
// GGUF export (docs/formats/gguf.md): a checkpoint directory into one file
// llama.cpp loads, and a small reader of a GGUF file's header, metadata and
// tensor infos.
//
// Supported model types: llama, mistral and mixtral (llama.cpp arch "llama";
// q/k rows reordered for its adjacent-pair rotary), qwen2 ("qwen2") and
// qwen2_moe ("qwen2moe"). The tokenizer must be byte-level BPE; it goes into
// the metadata with its special ids, add_bos and chat template.
#include <cstdint>
#include <map>
#include <string>
#include <variant>
#include <vector>

namespace finmoe {

// ggml tensor types written or read here.
enum class GgufType : uint32_t { F32 = 0, F16 = 1, Q8_0 = 8, BF16 = 30 };

struct GgufExportOptions {
  std::string type = "f16";  // f16 | bf16 | q8_0: the type of 2-D weights; norms, biases, routers stay f32
  std::string pre = "auto";  // tokenizer.ggml.pre; auto: from the tokenizer's pre-tokenizer regex
  bool progress = true;      // a progress line on stderr
};

struct GgufExportReport {
  std::string arch;            // general.architecture
  int64_t tensors = 0;
  int64_t metadata_keys = 0;
  uint64_t bytes = 0;          // the file's size
  double seconds = 0;
  std::vector<std::string> warnings;  // where llama.cpp will not compute what finmoe does
};

// Writes `out` atomically (temp + rename) from checkpoint `dir` (config.json,
// safetensors, tokenizer.json [+ tokenizer_config.json]). Throws Error naming
// the unsupported model_type / type / tokenizer field.
GgufExportReport export_gguf(const std::string& dir, const std::string& out,
                             const GgufExportOptions& options = {});

// A metadata value: scalars, strings and arrays (of one scalar type or strings).
struct GgufValue {
  uint32_t type = 0;  // GGUF value type (4 = u32, 6 = f32, 7 = bool, 8 = string, 9 = array, ...)
  uint32_t array_type = 0;
  std::variant<int64_t, uint64_t, double, bool, std::string> scalar;
  std::vector<std::string> strings;  // string arrays
  std::vector<double> numbers;       // numeric arrays
};

struct GgufTensorInfo {
  std::string name;
  std::vector<uint64_t> ne;  // ggml order: ne[0] is the contiguous dimension
  GgufType type = GgufType::F32;
  uint64_t offset = 0;       // from the start of the data section
  uint64_t nbytes() const;
};

// Reads and validates a GGUF v3 file's header (magic, version, counts, every
// key and tensor info, offsets aligned and inside the file).
struct GgufFile {
  uint32_t version = 0;
  uint32_t alignment = 32;
  std::map<std::string, GgufValue> metadata;
  std::vector<std::string> key_order;
  std::vector<GgufTensorInfo> tensors;
  uint64_t data_offset = 0;  // absolute file offset of the data section
  uint64_t file_size = 0;
  static GgufFile read(const std::string& path);
  // A tensor's values widened to float (F32, F16, BF16, Q8_0), in ggml order.
  std::vector<float> load(const std::string& path, const GgufTensorInfo& t) const;
  const GgufTensorInfo* find(const std::string& name) const;
};

}  // namespace finmoe
