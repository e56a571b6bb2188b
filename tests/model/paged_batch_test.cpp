// The CUDA step's packed plan (model/paged_batch.h), checked on the host:
// the buffer layout the kernels and the decode graphs read.
#include "model/paged_batch.h"

#include <gtest/gtest.h>

#include "../expect_error.h"

namespace finmoe {
namespace {

std::vector<int32_t> ints(const torch::Tensor& t) {
  auto c = t.contiguous().to(torch::kInt32);
  return {c.data_ptr<int32_t>(), c.data_ptr<int32_t>() + c.numel()};
}

// Block size 4. Sequence A: a prefill chunk of positions 3..7 in blocks {4, 1};
// sequence B: the decode token at position 9 in blocks {0, 2, 3}.
StepBatch two_sequences() {
  StepBatch b;
  b.tokens = {10, 11, 12, 13, 14, 20};
  b.positions = {3, 4, 5, 6, 7, 9};
  b.seqs = {{0, 5, 8, {4, 1}}, {5, 1, 10, {0, 2, 3}}};
  return b;
}

TEST(PagedBatch, PacksSlotsSequencesItemsAndTables) {
  const StepBatch batch = two_sequences();
  const PagedLayout l = paged_layout(batch, 4, /*q_tile=*/2);
  EXPECT_EQ(l.n_tokens, 6);
  EXPECT_EQ(l.n_seqs, 2);
  EXPECT_EQ(l.n_items, 4);  // A: queries 0-1, 2-3, 4; B: 0
  EXPECT_EQ(l.table_stride, 3);
  auto buffer = pack_paged_batch(batch, l, 4, 2, /*pinned=*/false);
  ASSERT_EQ(buffer.numel(), l.size());
  const PagedBatch v = view_paged_batch(buffer, l, 4, 2, 10);
  EXPECT_EQ(ints(v.ids), (std::vector<int32_t>{10, 11, 12, 13, 14, 20}));
  EXPECT_EQ(ints(v.positions), (std::vector<int32_t>{3, 4, 5, 6, 7, 9}));
  // position p -> block_table[p / 4] * 4 + p % 4
  EXPECT_EQ(ints(v.slots), (std::vector<int32_t>{19, 4, 5, 6, 7, 13}));
  EXPECT_EQ(ints(v.seqs), (std::vector<int32_t>{0, 5, 8, 5, 1, 10}));
  EXPECT_EQ(ints(v.items), (std::vector<int32_t>{0, 0, 0, 2, 0, 4, 1, 0}));
  EXPECT_EQ(ints(v.tables), (std::vector<int32_t>{4, 1, 0, 0, 2, 3}));
  EXPECT_EQ(v.tables.sizes(), (std::vector<int64_t>{2, 3}));
}

TEST(PagedBatch, PaddingRowsAreSequencesOfTheirOwnThatWriteNowhere) {
  StepBatch batch;  // two decode tokens padded to a bucket of 4
  batch.tokens = {7, 8};
  batch.positions = {2, 0};
  batch.seqs = {{0, 1, 3, {5}}, {1, 1, 1, {6}}};
  const PagedLayout l{4, 4, 4, 8};
  const PagedBatch v = view_paged_batch(pack_paged_batch(batch, l, 16, 1, false), l, 16, 1, 128);
  EXPECT_EQ(ints(v.ids), (std::vector<int32_t>{7, 8, 0, 0}));
  EXPECT_EQ(ints(v.slots), (std::vector<int32_t>{82, 96, -1, -1}));
  EXPECT_EQ(ints(v.seqs), (std::vector<int32_t>{0, 1, 3, 1, 1, 1, 2, 1, 0, 3, 1, 0}));
  EXPECT_EQ(ints(v.items), (std::vector<int32_t>{0, 0, 1, 0, 2, 0, 3, 0}));
  EXPECT_EQ(ints(v.tables[0]), (std::vector<int32_t>{5, 0, 0, 0, 0, 0, 0, 0}));
}

TEST(PagedBatch, LayoutsTheBatchDoesNotFitAreRejectedNamingTheSize) {
  const StepBatch batch = two_sequences();
  PagedLayout l = paged_layout(batch, 4, 2);
  l.table_stride = 2;
  EXPECT_CONTAINS(test::message_of([&] { pack_paged_batch(batch, l, 4, 2, false); }),
                  "needs 3 blocks, the layout's table_stride is 2");
  l = paged_layout(batch, 4, 2);
  l.n_tokens += 1;  // padding needs a sequence and an item per extra token
  EXPECT_CONTAINS(test::message_of([&] { pack_paged_batch(batch, l, 4, 2, false); }),
                  "do not pad to the layout's 7, 2 and 4");
}

TEST(PagedBatch, WorkItemsHoldAboutThirtyTwoRowsOfTheGroup) {
  EXPECT_EQ(paged_q_tile(14, 2), 4);  // group 7: 28 rows
  EXPECT_EQ(paged_q_tile(8, 8), 32);  // MHA
  EXPECT_EQ(paged_q_tile(64, 1), 1);  // a group larger than 32 rows
}

}  // namespace
}  // namespace finmoe
