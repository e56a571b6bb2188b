#pragma once
// CUDA kernels of the serving step over a paged KV cache: RoPE fused with
// the cache write, and causal attention of a ragged batch (prefill chunks
// and decode tokens of many sequences in one launch) reading K/V in place.
// The same semantics as the CPU kernels::paged_attention (attention.h).
// No torch here: model/cuda/ wraps these on tensors.
//
// All pointers are device pointers; every call is asynchronous on `stream`
// (a cudaStream_t) and launches a fixed grid for given sizes, so it can be
// captured in a CUDA graph and replayed with new plan contents.
#include <cstdint>

namespace finmoe::kernels::cuda {

enum class DType { kF32, kF16, kBF16 };

// One step's plan: int32 device arrays built once per step, read by every layer.
//   seqs   [n_seqs, 3]  q_start, q_len, context_len: the sequence's queries are
//                       rows q_start.. of q, at positions context_len - q_len ..
//                       context_len - 1; context_len 0 marks a padding row
//                       (q_len 1), whose output is zeros
//   tables [n_seqs, table_stride]  position p of a sequence lives in cache row
//                       tables[p / block_size] * block_size + p % block_size
//                       (the CPU kernel's slot list, stored per block)
//   items  [n_items, 2] (sequence, first query): one work item covers queries
//                       first .. first + q_tile - 1 (clipped to q_len)
struct PagedPlan {
  const int32_t* seqs = nullptr;
  const int32_t* tables = nullptr;
  const int32_t* items = nullptr;
  int32_t n_items = 0;
  int32_t table_stride = 0;
  int32_t block_size = 0;
  int32_t q_tile = 1;
};

// What both kernels are given about the tensors: q [n_tokens, n_head,
// head_dim], cache rows and k/v rows [n_kv_head, head_dim], all of dtype.
struct HeadShape {
  DType dtype = DType::kF32;
  int32_t n_tokens = 0, n_head = 0, n_kv_head = 0, head_dim = 0;
};

// Causal attention, query i of a sequence seeing positions 0..its own (with
// a sliding window W > 0: only positions > its own - W); query head h reads
// kv head h / (n_head / n_kv_head). Softmax and sums in float32 (online
// softmax over key tiles, so any context length), one rounding of the output.
// n_splits > 1 splits every item's keys into that many ranges computed by
// separate blocks (decode of few sequences would leave most of the GPU idle)
// and merges them in a second kernel through `workspace`.
struct AttentionArgs : HeadShape {
  const void* q = nullptr;
  const void* k_cache = nullptr;  // [cache rows, n_kv_head, head_dim]
  const void* v_cache = nullptr;
  void* out = nullptr;  // [n_tokens, n_head, head_dim]; may not alias q
  float scale = 1.0f;
  int32_t window = 0;  // 0 = full causal
  int32_t n_splits = 1;
  float* workspace = nullptr;  // n_splits > 1: attention_workspace_floats() floats
};

// Largest head_dim the attention kernel takes.
constexpr int32_t kMaxHeadDim = 256;

int64_t attention_workspace_floats(int64_t n_tokens, int64_t n_head, int64_t head_dim,
                                   int32_t n_splits);

// Splits that fill the current device: blocks = n_items * n_kv_head blocks
// per split, keys per item at most max_keys (a split gets at least one key
// tile). 1 when the items alone fill the GPU.
int32_t attention_splits(int64_t n_items, int64_t n_kv_head, int64_t max_keys);

// Throws std::invalid_argument for unsupported sizes (head_dim over
// kMaxHeadDim, n_head not a multiple of n_kv_head) and std::runtime_error
// for a failed launch.
void paged_attention(const AttentionArgs& args, const PagedPlan& plan, void* stream);

// q [n_tokens, n_head, head_dim] is rotated in place; k [n_tokens,
// n_kv_head, head_dim] rotated and v copied into row slots[n] of the caches
// ([cache rows, n_kv_head, head_dim]), skipped where slots[n] < 0 (padding).
// Rotation: every dim of a head (rotary_dim == head_dim) pairs i with
// i + head_dim/2 (rotate-half) or 2i with 2i+1 (interleaved):
//   x'_a = x_a cos_a - x_b sin_a,  x'_b = x_b cos_b + x_a sin_b
// with cos/sin [n_tokens, head_dim] float32; computed in float32, rounded once.
struct RopeWriteArgs : HeadShape {
  void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const float* cos = nullptr;
  const float* sin = nullptr;
  bool interleaved = false;
  const int32_t* slots = nullptr;  // [n_tokens]
  void* k_cache = nullptr;
  void* v_cache = nullptr;
};

void rope_write_kv(const RopeWriteArgs& args, void* stream);

}  // namespace finmoe::kernels::cuda
