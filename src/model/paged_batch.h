#pragma once
// A step's batch as the CUDA kernels read it (kernels/cuda/paged_attention.h):
// packed on the host into one int32 buffer (token ids, positions, cache rows
// to write, sequences, work items, block tables), copied to the device in one
// transfer per step, and viewed from there by every layer. A CUDA graph keeps
// one such buffer of fixed capacity and replays with new contents; padding
// rows fill the capacity and write nowhere.
#include <torch/torch.h>

#include "finmoe/model.h"

namespace finmoe {

// Sizes of a packed buffer: the batch's own, or a graph's capacity.
struct PagedLayout {
  int64_t n_tokens = 0, n_seqs = 0, n_items = 0, table_stride = 0;
  int64_t size() const { return 3 * n_tokens + 3 * n_seqs + 2 * n_items + n_seqs * table_stride; }
};

// Views of a packed buffer (all int32, on the buffer's device).
struct PagedBatch {
  torch::Tensor ids;        // [N] token ids
  torch::Tensor positions;  // [N]
  torch::Tensor slots;      // [N] cache row (block * block_size + offset) of each token's
                            // K/V; -1 for padding (written nowhere)
  torch::Tensor seqs;       // [S, 3] q_start, q_len, context_len (0: padding)
  torch::Tensor items;      // [I, 2] sequence, first query: queries first .. first+q_tile-1
  torch::Tensor tables;     // [S, table_stride] cache block of positions [b*bs, (b+1)*bs)
  int64_t block_size = 0;
  int64_t q_tile = 1;       // queries per work item
  int64_t max_context = 0;  // an upper bound of context_len (sizes the attention split)
  bool defined() const { return seqs.defined(); }
};

// Queries per work item: items of about 32 rows of the GQA group
// (n_head / n_kv_head heads share each key the item loads).
int64_t paged_q_tile(int64_t n_head, int64_t n_kv_head);

// The layout `batch` needs exactly: table_stride = its longest block list in use.
PagedLayout paged_layout(const StepBatch& batch, int64_t block_size, int64_t q_tile);

// The batch packed into `layout` (a CPU int32 tensor of layout.size(),
// pinned when asked, for an asynchronous copy). A layout larger than the
// batch gets padding: each extra token is a sequence of its own (q_len 1,
// context 0, token 0 at position 0, cache row -1) with one item, so the
// extra tokens, sequences and items must be equally many. Throws Error
// naming the size that does not fit.
torch::Tensor pack_paged_batch(const StepBatch& batch, const PagedLayout& layout,
                               int64_t block_size, int64_t q_tile, bool pinned);

// Views of `buffer` (pack_paged_batch's output, on any device).
PagedBatch view_paged_batch(const torch::Tensor& buffer, const PagedLayout& layout,
                            int64_t block_size, int64_t q_tile, int64_t max_context);

// Whether the CUDA kernels take a model of this dtype and head size
// (float32/float16/bfloat16, an even head_dim up to 256, rotary over all of it).
bool cuda_attention_supports(torch::Dtype dtype, int64_t head_dim, int64_t rotary_dim);

// A/B switches for CUDA steps, read at every step:
// FINMOE_CUDA_ATTENTION=eager: libtorch attention per sequence, as before the
// kernels (and so no graphs either).
bool cuda_attention_kernels_enabled();
// FINMOE_CUDA_GRAPHS=0: decode steps run eagerly instead of replaying graphs.
bool cuda_graphs_enabled();

}  // namespace finmoe
