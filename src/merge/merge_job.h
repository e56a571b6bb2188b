#pragma once
// Internal to the merge layer and its libtorch path (convert/merge_torch.cpp):
// the inputs of a merge and one output tensor's job, as the planner
// (merge/merge.cpp) resolves them.
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "finmoe/merge.h"
#include "finmoe/safetensors.h"
#include "merge/merge_math.h"
#include "merge/merge_vocab.h"

namespace finmoe::merging {

// One input directory: a checkpoint, or an ESFT delta over its base.
struct InputModel {
  std::string name;  // as the recipe writes it
  nlohmann::json config;
  std::optional<CheckpointReader> reader;
  std::shared_ptr<SafetensorsFile> delta;  // ESFT: tensors that replace the base's
  int64_t num_layers = 0;

  static std::unique_ptr<InputModel> open(const std::string& name);  // throws Error naming it

  std::string model_type() const {
    return config.contains("model_type") && config["model_type"].is_string()
               ? config["model_type"].get<std::string>()
               : "";
  }
  const TensorView* find(const std::string& tensor) const {
    if (delta)
      if (const TensorView* v = delta->find(tensor)) return v;
    return reader->has(tensor) ? &reader->get(tensor) : nullptr;
  }
  std::vector<std::string> names() const { return reader->names(); }
  // The file holding the tensor find() returns (its mapping gives the offset).
  const SafetensorsFile& file_of(const std::string& tensor) const {
    if (delta && delta->find(tensor)) return *delta;
    return reader->shard_of(tensor);
  }
};

struct Job {
  std::string name;  // output tensor
  std::vector<int64_t> shape;
  DType out_dtype = DType::F32;
  bool floating = true;
  const MergeSlice* slice = nullptr;
  std::vector<const InputModel*> models;        // per source of the slice
  std::vector<std::string> inputs;              // tensor name in each source
  int base = -1;                                // index of the base among the sources
  std::vector<merge_math::ModelParams> params;  // per source
  merge_math::TaskArithmetic how;
  double t = 0;  // slerp
  bool filter_wise = false;
  bool flatten = true;    // nuslerp
  bool row_wise = false;  // nuslerp
  double select_topk = 1.0;
  double scale = 1.0;                        // passthrough
  bool normalize = true;                     // linear
  bool keep_rows = false;                    // rows recipe.keep_rows from keep_rows_source
  int keep_rows_source = -1;                 // the input whose rows are kept (vocabulary tensors)
  int64_t common_rows = -1;                  // >= 0: only rows [0, common_rows) are merged, the
                                             // rest are keep_rows_source's own
  std::shared_ptr<const RowMap> vocab_rows;  // a tokenizer source: inputs' rows mapped to OUT's ids
};

// A recipe's dtype name ("float32", "float16", "bfloat16"; else float64).
DType dtype_named(const std::string& d);

// The sparsification, consensus and default flags of the task-arithmetic family.
std::optional<merge_math::TaskArithmetic> task_arithmetic_kind(const std::string& m);

// Computes a job the fused kernel does not cover, through libtorch
// (convert/merge_torch.cpp), and hands the output tensor's bytes (j.out_dtype,
// row-major) to `write`; adds the input bytes it read to *bytes_read.
using TorchMergeJob = void (*)(const MergeRecipe& recipe, const Job& j, uint64_t seed,
                               int64_t chunk_elements, uint64_t* bytes_read,
                               const std::function<void(const void*, size_t)>& write);

// Thrown by merge_models_with without a TorchMergeJob when a tensor needs one,
// after planning and before anything is written.
struct NeedsLibtorch {
  std::string tensor;  // the first such tensor
};

// merge_models (finmoe/merge.h) with the libtorch path given: torch_job null
// merges what the fused kernel covers (linear, task_arithmetic, ties on
// float types) and throws NeedsLibtorch for anything else.
MergeReport merge_models_with(const MergeRecipe& recipe, const std::string& out_dir,
                              const MergeOptions& options, TorchMergeJob torch_job);

}  // namespace finmoe::merging
