#pragma once
// Causal attention of a ragged batch over a paged KV cache, reading K/V rows
// in place through each sequence's slot list (no gathered copy).
//
//   q    [N, H, d]        queries of this step (type q_t)
//   K, V [slots, Hkv, d]  the layer's cache viewed flat (type cache_t); the
//                         step's own K/V must already be written
//   out  [N, H, d]        (type out_t); may not alias q
//
// Sequence s owns queries [q_start, q_start + q_len) at positions
// context_len - q_len .. context_len - 1; query i sees positions 0..its own
// (with a sliding window W > 0: only positions > its own - W),
// and position p lives in cache row slots[p]. Query head h reads kv head
// h / (H / Hkv) (GQA; MHA when Hkv == H).
// MLA's latent cache (absorbed decode) is one row per slot that every head
// reads as its key, and whose first v_dim values are the value: n_kv_head
// splits the heads into groups for the thread pool, kv_head_stride 0 and
// cache_row = head_dim point every group at the same row, out is [N, H, v_dim].
// out = softmax(q·kᵀ·scale)·v in float32 (exp to ~2 ulp); bf16 inputs are
// widened exactly, a bf16 out is rounded once. Work items (sequence, kv
// head, block of queries) run on the kernel ThreadPool.
#include <cstdint>

#include "kernels/ops.h"

namespace finmoe::kernels {

struct AttentionSeq {
  int64_t q_start = 0;
  int64_t q_len = 0;
  int64_t context_len = 0;
  const int64_t* slots = nullptr;  // [context_len] cache row of each position
};

struct AttentionArgs {
  ElemType q_t = ElemType::kF32;
  const void* q = nullptr;
  int64_t n_head = 0, n_kv_head = 0, head_dim = 0;
  ElemType cache_t = ElemType::kF32;
  const void* k_cache = nullptr;
  const void* v_cache = nullptr;
  const AttentionSeq* seqs = nullptr;
  int64_t n_seqs = 0;
  int64_t v_dim = 0;           // values per head read from each V row; 0 = head_dim
  int64_t cache_row = 0;       // values per cache slot; 0 = n_kv_head * head_dim
  int64_t kv_head_stride = -1; // values between kv heads within a slot; -1 = head_dim
  float scale = 1.0f;
  int64_t window = 0;  // sliding window; 0 = full causal
  ElemType out_t = ElemType::kF32;
  void* out = nullptr;
};

// Throws finmoe::Error on inconsistent heads (H not a multiple of Hkv) or a
// sequence with q_len > context_len.
void paged_attention(const AttentionArgs& args);

}  // namespace finmoe::kernels
