#pragma once
// CUDA graphs of Transformer::step for decode-only batches (one token per
// sequence): a step at 64 sequences is ~30 small kernels per layer, and
// launching them one by one from the host takes longer than running them.
//
// One graph per batch-size bucket (kGraphBuckets); a batch runs padded to
// the next bucket (padding rows attend to nothing and write no K/V). A graph
// reads its inputs from a fixed int32 device buffer (paged_batch.h) with a
// block-table capacity of the whole cache or the model's context, whichever
// is smaller, so a replay only copies the new plan in. It is captured the
// first time its bucket runs, after one eager run of the same batch
// (lazy initialisation such as cuBLAS workspaces stays out of the capture).
//
// Graphs bake in the addresses of the model's weights and of one KVCache's
// tensors: the cache owns them (KVCache::step_graphs) and they are dropped
// when another model steps on it. Weights may change in place; replacing a
// module (attaching LoRA, for one) after a capture needs a new cache.
// Models with MoE layers never get graphs: routing reads the expert counts on
// the host every layer, a synchronisation a graph cannot hold.
#include <ATen/cuda/CUDAGraph.h>

#include <map>
#include <memory>

#include "model/paged_batch.h"

namespace finmoe {

inline constexpr int64_t kGraphBuckets[] = {1, 2, 4, 8, 16, 32, 64};

class StepGraphs {
 public:
  explicit StepGraphs(std::weak_ptr<const torch::nn::Module> model);

  struct Graph {
    at::cuda::CUDAGraph graph;
    PagedLayout layout;    // the bucket's capacity
    torch::Tensor input;   // [layout.size()] int32 on the device, read by the graph
    torch::Tensor logits;  // [bucket, V] float32, written by the graph
  };

  std::weak_ptr<const torch::nn::Module> model;      // whose weights the graphs read
  c10::MempoolId_t pool;                             // one memory pool for all buckets:
                                                     // they replay one at a time
  std::map<int64_t, std::unique_ptr<Graph>> graphs;  // by bucket
  int64_t captures = 0, replays = 0;
  bool failed = false;  // a capture threw (reported then): this cache steps eagerly
};

}  // namespace finmoe
