#include "kernels/attention.h"

#include <algorithm>
#include <atomic>
#include <string>
#include <vector>

#include "finmoe/error.h"
#include "kernels/ops_isa.h"
#include "kernels/thread_pool.h"

namespace finmoe::kernels {
namespace {

// Queries per work item: enough rows (x the GQA group) to amortise widening
// the item's K/V, few enough that a long prefill splits over all threads.
constexpr int64_t kQueryBlock = 16;

struct Item {
  int64_t seq, kv_head, i0, i1;
};

}  // namespace

void paged_attention_isa(Isa isa, const AttentionArgs& a) {
  if (a.n_head <= 0 || a.n_kv_head <= 0 || a.head_dim <= 0 || a.n_head % a.n_kv_head != 0)
    throw Error("paged_attention: heads " + std::to_string(a.n_head) + " / kv heads " +
                std::to_string(a.n_kv_head) + " / head_dim " + std::to_string(a.head_dim) +
                " are inconsistent");
  std::vector<Item> items;
  for (int64_t s = 0; s < a.n_seqs; ++s) {
    const AttentionSeq& q = a.seqs[s];
    if (q.q_len < 0 || q.q_len > q.context_len || (q.context_len > 0 && q.slots == nullptr))
      throw Error("paged_attention: sequence " + std::to_string(s) + " has q_len " +
                  std::to_string(q.q_len) + " > context_len " + std::to_string(q.context_len) +
                  " or no slots");
    // Later query blocks see more keys: queue them first so the tail is short.
    for (int64_t i1 = q.q_len; i1 > 0; i1 -= kQueryBlock)
      for (int64_t h = 0; h < a.n_kv_head; ++h)
        items.push_back({s, h, std::max<int64_t>(0, i1 - kQueryBlock), i1});
  }
  if (items.empty()) return;
  const OpsTable& ops = ops_table(isa);
  const int64_t n_items = static_cast<int64_t>(items.size());
  ThreadPool& pool = ThreadPool::global();
  if (n_items == 1 || pool.num_threads() == 1) {
    for (const Item& it : items) ops.attention(a, it.seq, it.kv_head, it.i0, it.i1);
    return;
  }
  std::atomic<int64_t> next{0};
  pool.parallel_for(pool.num_threads(), 1, [&](int64_t, int64_t) {
    for (int64_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < n_items;)
      ops.attention(a, items[i].seq, items[i].kv_head, items[i].i0, items[i].i1);
  });
}

void paged_attention(const AttentionArgs& args) { paged_attention_isa(active_isa(), args); }

}  // namespace finmoe::kernels
