// BlockManager: prefix sharing by hash chain, LRU eviction of cached free
// blocks, all-or-nothing allocation, and a randomized workload checked
// against a reference model of reference counts and prefix contents.
#include "finmoe/block_manager.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "finmoe/error.h"

namespace finmoe {
namespace {

using Tokens = std::vector<int32_t>;

Tokens concat(Tokens a, const Tokens& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Expects `fn` to throw finmoe::Error whose message contains `needle`.
template <class Fn>
void expect_error_naming(Fn fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "no Error thrown, expected one naming '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(BlockManager, SharedSystemPromptIsServedFromCache) {
  const int64_t bs = 4;
  BlockManager bm(32, bs);
  const Tokens sys = {11, 12, 13, 14, 15, 16, 17, 18, 19, 20};  // 2 full blocks + 2
  const Tokens a = concat(sys, {100, 101, 102});                // 13 tokens, 4 blocks
  const Tokens b = concat(sys, {200, 201});                     // 12 tokens, 3 full blocks

  ASSERT_EQ(bm.allocate(1, a), 0);
  bm.mark_computed(1, 13);
  // The shared full blocks are hits; block 2 ([19,20,100,101] vs [19,20,200,201]) diverges.
  ASSERT_EQ(bm.allocate(2, b), 2 * bs);
  const auto& ta = bm.block_table(1);
  const auto& tb = bm.block_table(2);
  ASSERT_EQ(ta.size(), 4u);
  ASSERT_EQ(tb.size(), 3u);
  EXPECT_EQ(tb[0], ta[0]);
  EXPECT_EQ(tb[1], ta[1]);
  EXPECT_NE(tb[2], ta[2]);
  EXPECT_EQ(bm.ref_count(ta[0]), 2);
  EXPECT_EQ(bm.ref_count(ta[1]), 2);
  EXPECT_EQ(bm.ref_count(ta[2]), 1);
  EXPECT_EQ(bm.ref_count(tb[2]), 1);
  EXPECT_EQ(bm.num_used_blocks(), 4 + 1);
  EXPECT_EQ(bm.prefix_query_tokens(), 13 + 12);
  EXPECT_EQ(bm.prefix_hit_tokens(), 8);
  EXPECT_EQ(bm.num_computed_tokens(2), 8);

  // A prompt made of exactly the two cached blocks: the last token must stay
  // uncached, so only the first block is a hit and the second is fresh.
  const Tokens c(sys.begin(), sys.begin() + 8);
  ASSERT_EQ(bm.allocate(3, c), bs);
  EXPECT_EQ(bm.block_table(3)[0], ta[0]);
  EXPECT_NE(bm.block_table(3)[1], ta[1]);
  EXPECT_EQ(bm.ref_count(ta[0]), 3);
  bm.check_invariants();
}

TEST(BlockManager, DifferentContinuationsDivergeAtTheirFirstDifferentBlock) {
  BlockManager bm(32, 4);
  const Tokens a = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13};
  Tokens b = a;
  b[6] = 70;  // differs inside block 1
  ASSERT_EQ(bm.allocate(1, a), 0);
  bm.mark_computed(1, 13);
  ASSERT_EQ(bm.allocate(2, b), 4);
  EXPECT_EQ(bm.block_table(2)[0], bm.block_table(1)[0]);
  for (size_t i = 1; i < 4; ++i) EXPECT_NE(bm.block_table(2)[i], bm.block_table(1)[i]) << i;
  bm.check_invariants();
}

TEST(BlockManager, SameBlockContentAfterDifferentPrefixIsNotShared) {
  BlockManager bm(16, 4);
  const Tokens a = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  const Tokens b = {9, 9, 9, 9, 5, 6, 7, 8, 9};  // block 1 has a's block-1 tokens
  ASSERT_EQ(bm.allocate(2, b), 0);
  bm.mark_computed(2, 9);
  ASSERT_EQ(bm.allocate(1, a), 0);
  bm.mark_computed(1, 9);
  for (size_t i = 0; i < 3; ++i) EXPECT_NE(bm.block_table(2)[i], bm.block_table(1)[i]) << i;
  EXPECT_EQ(bm.prefix_hit_tokens(), 0);
  // Both block-1 copies are cached, each under its own prefix.
  EXPECT_EQ(bm.num_cached_blocks(), 4);
  ASSERT_EQ(bm.allocate(3, a), 8);
  ASSERT_EQ(bm.allocate(4, b), 8);
  EXPECT_EQ(bm.block_table(3)[1], bm.block_table(1)[1]);
  EXPECT_EQ(bm.block_table(4)[1], bm.block_table(2)[1]);
  bm.check_invariants();
}

TEST(BlockManager, BlocksAreSharedOnlyOnceComputed) {
  BlockManager bm(16, 4);
  const Tokens a = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  ASSERT_EQ(bm.allocate(1, a), 0);
  ASSERT_EQ(bm.allocate(2, a), 0);  // sequence 1's KV not written yet
  bm.mark_computed(1, 5);           // block 0 now computed, block 1 not
  ASSERT_EQ(bm.allocate(3, a), 4);
  bm.mark_computed(2, 9);  // same content as 1's block 0: stays private
  EXPECT_EQ(bm.num_cached_blocks(), 2);
  ASSERT_EQ(bm.allocate(4, a), 8);
  EXPECT_EQ(bm.block_table(4)[0], bm.block_table(1)[0]);
  EXPECT_EQ(bm.block_table(4)[1], bm.block_table(2)[1]);
  bm.check_invariants();
}

TEST(BlockManager, AppendGrowsAtBlockBoundaryAndRegistersFullBlocks) {
  BlockManager bm(8, 4);
  ASSERT_EQ(bm.allocate(1, Tokens{1, 2, 3}), 0);
  EXPECT_EQ(bm.block_table(1).size(), 1u);
  ASSERT_TRUE(bm.append_token(1, 4));
  EXPECT_EQ(bm.block_table(1).size(), 1u);  // block 0 now full
  ASSERT_TRUE(bm.append_token(1, 5));
  EXPECT_EQ(bm.block_table(1).size(), 2u);
  EXPECT_EQ(bm.num_tokens(1), 5);
  EXPECT_EQ(bm.num_cached_blocks(), 0);
  bm.mark_computed(1, 5);
  EXPECT_EQ(bm.num_cached_blocks(), 1);
  ASSERT_EQ(bm.allocate(2, Tokens{1, 2, 3, 4, 6}), 4);
  EXPECT_EQ(bm.block_table(2)[0], bm.block_table(1)[0]);
  EXPECT_EQ(bm.ref_count(bm.block_table(1)[0]), 2);
  // Appending to sequence 2 writes its own block 1, never the shared block 0.
  ASSERT_TRUE(bm.append_token(2, 7));
  EXPECT_NE(bm.block_table(2)[1], bm.block_table(1)[1]);
  bm.check_invariants();
}

TEST(BlockManager, FreedCachedBlocksAreRevivedAndEvictedLeastRecentlyUsedFirst) {
  // 4 blocks of 2 tokens. Each prompt of 3 tokens = 1 full (cacheable) block + 1.
  BlockManager bm(4, 2);
  const Tokens a = {1, 2, 3}, b = {5, 6, 7};
  ASSERT_EQ(bm.allocate(1, a), 0);
  bm.mark_computed(1, 3);
  bm.free(1);
  ASSERT_EQ(bm.allocate(2, b), 0);
  bm.mark_computed(2, 3);
  bm.free(2);
  EXPECT_EQ(bm.num_free_blocks(), 4);
  EXPECT_EQ(bm.num_cached_blocks(), 2);
  // Revive a's block (hit) and free it again: now b's block is the older one.
  ASSERT_EQ(bm.allocate(3, a), 2);
  EXPECT_EQ(bm.num_used_blocks(), 2);
  bm.free(3);
  // 3 fresh blocks: 2 never-hashed ones, then one eviction, which must take b's.
  ASSERT_EQ(bm.allocate(4, Tokens{9, 9, 9, 9, 9}), 0);
  EXPECT_EQ(bm.num_cached_blocks(), 1);
  bm.free(4);
  ASSERT_EQ(bm.allocate(5, b), 0);  // evicted: no hit
  ASSERT_EQ(bm.allocate(6, a), 2);  // kept
  bm.check_invariants();
}

TEST(BlockManager, ExhaustionReturnsNulloptAndChangesNothing) {
  BlockManager bm(4, 4);
  ASSERT_EQ(bm.allocate(1, Tokens{1, 2, 3, 4, 5, 6, 7, 8, 9}), 0);  // 3 blocks
  bm.mark_computed(1, 9);
  ASSERT_EQ(bm.allocate(2, Tokens{1, 2, 3, 4, 5}), 4);  // 1 hit + 1 fresh: pool empty
  EXPECT_EQ(bm.num_free_blocks(), 0);
  EXPECT_FALSE(bm.can_allocate(1));

  const auto table1 = bm.block_table(1);
  const auto table2 = bm.block_table(2);
  const int64_t queries = bm.prefix_query_tokens(), hits = bm.prefix_hit_tokens();
  const int64_t cached = bm.num_cached_blocks();
  // Would hit two blocks but still needs a fresh one.
  EXPECT_FALSE(bm.allocate(3, Tokens{1, 2, 3, 4, 5, 6, 7, 8, 9}).has_value());
  EXPECT_FALSE(bm.has_sequence(3));
  EXPECT_EQ(bm.block_table(1), table1);
  EXPECT_EQ(bm.block_table(2), table2);
  EXPECT_EQ(bm.ref_count(table1[0]), 2);
  EXPECT_EQ(bm.ref_count(table1[1]), 1);
  EXPECT_EQ(bm.prefix_query_tokens(), queries);
  EXPECT_EQ(bm.prefix_hit_tokens(), hits);
  EXPECT_EQ(bm.num_cached_blocks(), cached);
  EXPECT_EQ(bm.num_free_blocks(), 0);
  bm.check_invariants();

  // Sequence 1 has room left in its last block; sequence 2 does not... after 3 more.
  EXPECT_TRUE(bm.can_append(1));
  for (int32_t t = 0; t < 3; ++t) ASSERT_TRUE(bm.append_token(2, t));
  EXPECT_FALSE(bm.can_append(2));
  EXPECT_FALSE(bm.append_token(2, 99));
  EXPECT_EQ(bm.num_tokens(2), 8);
  EXPECT_EQ(bm.block_table(2).size(), 2u);
  bm.check_invariants();

  // Freeing returns the blocks; the rejected allocation now succeeds.
  bm.free(2);
  EXPECT_EQ(bm.ref_count(table1[0]), 1);
  ASSERT_EQ(bm.allocate(3, Tokens{1, 2, 3, 4, 5, 6, 7, 8, 9}), 8);
  bm.check_invariants();
}

TEST(BlockManager, MisuseThrowsErrorNamingTheSequence) {
  BlockManager bm(8, 4);
  ASSERT_TRUE(bm.allocate(7, Tokens{1, 2}).has_value());
  expect_error_naming([&] { bm.allocate(7, Tokens{3}); }, "sequence 7");
  expect_error_naming([&] { bm.allocate(8, Tokens{}); }, "sequence 8");
  expect_error_naming([&] { bm.free(42); }, "sequence 42");
  expect_error_naming([&] { bm.append_token(43, 1); }, "sequence 43");
  expect_error_naming([&] { bm.block_table(44); }, "sequence 44");
  expect_error_naming([&] { bm.mark_computed(7, 3); }, "sequence 7");  // beyond its 2 tokens
  expect_error_naming([&] { BlockManager(0, 4); }, "num_blocks");
  bm.check_invariants();
}

TEST(BlockManager, BudgetHelpers) {
  // 1 MiB at 1 KiB/token = 1024 tokens = 64 blocks of 16.
  EXPECT_EQ(blocks_for_budget(int64_t(1) << 20, 1024, 16), 64);
  EXPECT_EQ(blocks_for_budget((int64_t(1) << 20) - 1, 1024, 16),
            63);  // partial block does not count
  // 100 tokens need 7 blocks of 16; 64 / 7 = 9 sequences.
  EXPECT_EQ(sequences_that_fit(64, 16, 100), 9);
  EXPECT_EQ(sequences_that_fit(64, 16, 112), 9);
  EXPECT_EQ(sequences_that_fit(64, 16, 113), 8);
  expect_error_naming([] { blocks_for_budget(100, 0, 16); }, "bytes_per_token");
}

// Thousands of seeded random allocations, appends, computes and frees; after
// each, reference counts equal the test's own count of table uses, shared
// blocks hold identical prefixes, hits cover only computed prefixes.
TEST(BlockManager, RandomWorkloadMatchesReferenceModelAndLeaksNothing) {
  const int64_t bs = 4, nb = 48;
  BlockManager bm(nb, bs);
  std::mt19937 rng(1234);
  auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  const std::vector<Tokens> prefixes = {
      {}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, {1, 2, 3, 4, 6, 6, 7}, {5, 5, 5, 5, 5}};

  std::map<int64_t, Tokens> ref_tokens;  // the model: each live sequence's tokens
  std::set<Tokens> computed_prefixes;    // full-block prefixes whose KV was computed
  int64_t next_id = 0;
  int n_alloc = 0, n_reject = 0, n_hit = 0;

  for (int op = 0; op < 6000; ++op) {
    const int kind = uni(0, 9);
    if (kind <= 2 || ref_tokens.empty()) {
      Tokens prompt = prefixes[static_cast<size_t>(uni(0, 3))];
      const int extra = uni(prompt.empty() ? 1 : 0, 10);
      for (int i = 0; i < extra; ++i) prompt.push_back(uni(0, 2));
      const int64_t free_before = bm.num_free_blocks();
      const bool fits_anyway = bm.can_allocate(static_cast<int64_t>(prompt.size()));
      const auto cached = bm.allocate(next_id, prompt);
      if (!cached) {
        ++n_reject;
        EXPECT_FALSE(fits_anyway);
        EXPECT_EQ(bm.num_free_blocks(), free_before);
        EXPECT_FALSE(bm.has_sequence(next_id));
      } else {
        ++n_alloc;
        n_hit += *cached > 0;
        EXPECT_EQ(*cached % bs, 0);
        EXPECT_LT(*cached, static_cast<int64_t>(prompt.size()));
        if (*cached > 0) {
          Tokens p(prompt.begin(), prompt.begin() + *cached);
          EXPECT_TRUE(computed_prefixes.count(p)) << "hit on a prefix never computed";
        }
        ref_tokens[next_id] = prompt;
      }
      ++next_id;
    } else {
      auto it = ref_tokens.begin();
      std::advance(it, uni(0, static_cast<int>(ref_tokens.size()) - 1));
      const int64_t id = it->first;
      Tokens& toks = it->second;
      if (kind <= 5) {
        const int32_t t = uni(0, 2);
        const bool room = static_cast<int64_t>(toks.size()) % bs != 0 || bm.num_free_blocks() > 0;
        EXPECT_EQ(bm.can_append(id), room);
        EXPECT_EQ(bm.append_token(id, t), room);
        if (room) toks.push_back(t);
      } else if (kind <= 7) {
        const int64_t from = bm.num_computed_tokens(id), n = static_cast<int64_t>(toks.size());
        const int64_t upto = from + uni(0, static_cast<int>(n - from));
        bm.mark_computed(id, upto);
        for (int64_t k = bs; k <= upto; k += bs)
          computed_prefixes.insert(Tokens(toks.begin(), toks.begin() + k));
      } else {
        bm.free(id);
        ref_tokens.erase(it);
      }
    }

    // Reference counts from the test's own view of the tables.
    std::map<int32_t, int> uses;
    std::map<int32_t, std::pair<int64_t, size_t>> first_use;  // block -> (seq, index)
    for (const auto& [id, toks] : ref_tokens) {
      const auto& table = bm.block_table(id);
      ASSERT_EQ(static_cast<int64_t>(table.size()),
                (static_cast<int64_t>(toks.size()) + bs - 1) / bs);
      ASSERT_EQ(bm.num_tokens(id), static_cast<int64_t>(toks.size()));
      for (size_t i = 0; i < table.size(); ++i) {
        ++uses[table[i]];
        auto [pos, fresh] = first_use.emplace(table[i], std::make_pair(id, i));
        if (fresh) continue;
        // A shared block: same position, identical tokens up to its end, and full.
        const auto& [other, j] = pos->second;
        ASSERT_EQ(i, j) << "block " << table[i];
        const size_t end = (i + 1) * static_cast<size_t>(bs);
        ASSERT_LE(end, toks.size());
        const Tokens& ot = ref_tokens.at(other);
        ASSERT_TRUE(std::equal(toks.begin(), toks.begin() + static_cast<int64_t>(end), ot.begin()))
            << "block " << table[i] << " shared by different prefixes";
      }
    }
    for (int32_t b = 0; b < nb; ++b) {
      auto u = uses.find(b);
      ASSERT_EQ(bm.ref_count(b), u == uses.end() ? 0 : u->second)
          << "block " << b << " at op " << op;
    }
    ASSERT_EQ(bm.num_used_blocks(), static_cast<int64_t>(uses.size()));
    ASSERT_NO_THROW(bm.check_invariants()) << "op " << op;
  }
  // The workload exercised every path.
  EXPECT_GT(n_alloc, 500);
  EXPECT_GT(n_reject, 10);
  EXPECT_GT(n_hit, 100);
  EXPECT_GT(bm.prefix_hit_tokens(), 0);

  for (const auto& [id, toks] : ref_tokens) bm.free(id);
  EXPECT_EQ(bm.num_free_blocks(), nb);
  EXPECT_EQ(bm.num_used_blocks(), 0);
  for (int32_t b = 0; b < nb; ++b) EXPECT_EQ(bm.ref_count(b), 0);
  bm.check_invariants();
}

}  // namespace
}  // namespace finmoe
