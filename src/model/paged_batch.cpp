#include "model/paged_batch.h"

#include <algorithm>
#include <cstdlib>
#include <string>

#include "finmoe/error.h"
#include "kernels/cuda/paged_attention.h"

namespace finmoe {

int64_t paged_q_tile(int64_t n_head, int64_t n_kv_head) {
  const int64_t group = std::max<int64_t>(1, n_head / std::max<int64_t>(1, n_kv_head));
  return std::max<int64_t>(1, 32 / group);
}

namespace {

int64_t blocks_of(int64_t context_len, int64_t block_size) {
  return (context_len + block_size - 1) / block_size;
}

int64_t items_of(const StepBatch::Seq& s, int64_t q_tile) {
  return (s.q_len + q_tile - 1) / q_tile;
}

}  // namespace

PagedLayout paged_layout(const StepBatch& batch, int64_t block_size, int64_t q_tile) {
  PagedLayout l;
  l.n_tokens = static_cast<int64_t>(batch.tokens.size());
  l.n_seqs = static_cast<int64_t>(batch.seqs.size());
  for (const auto& s : batch.seqs) {
    l.n_items += items_of(s, q_tile);
    l.table_stride = std::max(l.table_stride, blocks_of(s.context_len, block_size));
  }
  return l;
}

torch::Tensor pack_paged_batch(const StepBatch& batch, const PagedLayout& layout,
                               int64_t block_size, int64_t q_tile, bool pinned) {
  const PagedLayout own = paged_layout(batch, block_size, q_tile);
  const int64_t pad = layout.n_tokens - own.n_tokens;
  if (pad < 0 || layout.n_seqs - own.n_seqs != pad || layout.n_items - own.n_items != pad)
    throw Error("pack_paged_batch: the batch's " + std::to_string(own.n_tokens) + " tokens, " +
                std::to_string(own.n_seqs) + " sequences and " + std::to_string(own.n_items) +
                " items do not pad to the layout's " + std::to_string(layout.n_tokens) + ", " +
                std::to_string(layout.n_seqs) + " and " + std::to_string(layout.n_items));
  if (own.table_stride > layout.table_stride)
    throw Error("pack_paged_batch: a sequence needs " + std::to_string(own.table_stride) +
                " blocks, the layout's table_stride is " + std::to_string(layout.table_stride));
  auto buffer = torch::zeros({layout.size()},
                             torch::TensorOptions().dtype(torch::kInt32).pinned_memory(pinned));
  int32_t* p = buffer.data_ptr<int32_t>();
  int32_t* ids = p;
  int32_t* positions = ids + layout.n_tokens;
  int32_t* slots = positions + layout.n_tokens;
  int32_t* seqs = slots + layout.n_tokens;
  int32_t* items = seqs + 3 * layout.n_seqs;
  int32_t* tables = items + 2 * layout.n_items;

  std::copy(batch.tokens.begin(), batch.tokens.end(), ids);
  std::copy(batch.positions.begin(), batch.positions.end(), positions);
  int64_t item = 0;
  for (int64_t s = 0; s < own.n_seqs; ++s) {
    const StepBatch::Seq& q = batch.seqs[size_t(s)];
    for (int64_t i = 0; i < q.q_len; ++i) {
      const int64_t pos = batch.positions[size_t(q.q_start + i)];
      slots[q.q_start + i] =
          int32_t(q.block_table[size_t(pos / block_size)] * block_size + pos % block_size);
    }
    seqs[3 * s] = int32_t(q.q_start);
    seqs[3 * s + 1] = int32_t(q.q_len);
    seqs[3 * s + 2] = int32_t(q.context_len);
    for (int64_t first = 0; first < q.q_len; first += q_tile, ++item) {
      items[2 * item] = int32_t(s);
      items[2 * item + 1] = int32_t(first);
    }
    const int64_t nb = blocks_of(q.context_len, block_size);
    std::copy(q.block_table.begin(), q.block_table.begin() + nb, tables + s * layout.table_stride);
  }
  for (int64_t k = 0; k < pad; ++k) {  // padding: ids, positions and tables stay 0
    const int64_t n = own.n_tokens + k, s = own.n_seqs + k;
    slots[n] = -1;
    seqs[3 * s] = int32_t(n);
    seqs[3 * s + 1] = 1;
    items[2 * (own.n_items + k)] = int32_t(s);
  }
  return buffer;
}

PagedBatch view_paged_batch(const torch::Tensor& buffer, const PagedLayout& l, int64_t block_size,
                            int64_t q_tile, int64_t max_context) {
  PagedBatch b;
  int64_t at = 0;
  const auto take = [&](int64_t n) {
    auto t = buffer.narrow(0, at, n);
    at += n;
    return t;
  };
  b.ids = take(l.n_tokens);
  b.positions = take(l.n_tokens);
  b.slots = take(l.n_tokens);
  b.seqs = take(3 * l.n_seqs).view({l.n_seqs, 3});
  b.items = take(2 * l.n_items).view({l.n_items, 2});
  b.tables = take(l.n_seqs * l.table_stride).view({l.n_seqs, l.table_stride});
  b.block_size = block_size;
  b.q_tile = q_tile;
  b.max_context = max_context;
  return b;
}

bool cuda_attention_supports(torch::Dtype dtype, int64_t head_dim, int64_t rotary_dim) {
  const bool type_ok =
      dtype == torch::kFloat32 || dtype == torch::kFloat16 || dtype == torch::kBFloat16;
  return type_ok && head_dim % 2 == 0 && head_dim <= kernels::cuda::kMaxHeadDim &&
         rotary_dim == head_dim;
}

bool cuda_attention_kernels_enabled() {
  const char* env = std::getenv("FINMOE_CUDA_ATTENTION");
  return env == nullptr || std::string(env) != "eager";
}

bool cuda_graphs_enabled() {
  const char* env = std::getenv("FINMOE_CUDA_GRAPHS");
  return env == nullptr || std::string(env) != "0";
}

}  // namespace finmoe
