#pragma once
// 8-bit weights: a float checkpoint (F32/BF16/F16) becomes an int8 one in the
// same Hugging Face directory layout (docs/formats/int8.md). Every linear's
// and the embedding's 2-D weight is stored as symmetric int8 [out, in] with a
// `weight_scale` [out, 1] (per output channel) or [out, ceil(in/32)] (per
// group of 32) beside it; norms, biases and MoE router gates keep their dtype.
// A tied lm_head reads the int8 embedding (its rows are the head's outputs).
// `serve`, `generate`, `eval` and `bench` load the result as any checkpoint.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "finmoe/config.h"

namespace finmoe {

struct QuantizeOptions {
  std::string type = "int8";             // the only type
  int64_t group_size = 0;                // 0: a scale per output channel; or 32
  std::string scale_dtype = "bfloat16";  // bfloat16 | float32
  size_t max_shard_bytes = size_t(5) << 30;
  bool progress = true;  // a progress line on stderr
};

struct QuantizedTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::string dtype_in;   // safetensors spelling: "BF16", ...
  std::string dtype_out;  // "I8" when quantized, else dtype_in
  int64_t bytes_in = 0;
  int64_t bytes_out = 0;        // the int8 values and their scales
  double max_abs = 0;           // max |w|
  double max_abs_error = 0;     // max |s·q - w| (0 when kept as it was)
};

struct QuantizeReport {
  QuantizationConfig config;
  std::vector<QuantizedTensor> tensors;  // in checkpoint order
  int64_t bytes_in = 0, bytes_out = 0;   // all tensors
  double seconds = 0;
  nlohmann::json to_json() const;
};

// Quantizes the checkpoint in `in_dir` into `out_dir` (absent or empty),
// streaming tensor by tensor (at most one tensor's int8 copy in memory), and
// copies config (with `quantization_config`), generation config and
// tokenizer files. Everything is written into a sibling temp directory that
// is renamed to `out_dir` at the end. Throws Error naming the file when
// `in_dir` is already quantized, is an ESFT delta, or has a tensor of a
// dtype other than F32/BF16/F16 or with a non-finite value, and for options
// other than the above.
QuantizeReport quantize_checkpoint(const std::string& in_dir, const std::string& out_dir,
                                   const QuantizeOptions& options = {});

}  // namespace finmoe
