#pragma once
// Block bookkeeping for a paged KV cache (KVCache in model.h): which cache
// blocks each sequence owns, with reference-counted sharing of identical
// prompt prefixes. Pure bookkeeping: no tensors are touched here.
//
// Ownership: a BlockManager owns only its tables; the KVCache whose blocks it
// hands out is owned by the caller (the scheduler), sized with the same
// num_blocks and block_size.
//
// Thread safety: not thread-safe. One scheduler thread owns a BlockManager and
// makes every call; a const call concurrent with a mutating one is a race.
//
// Errors: misuse (an unknown or already-allocated sequence id, an empty
// prompt, a bad argument) throws finmoe::Error naming the sequence or the
// argument. Running out of blocks is not an error: allocate() and
// append_token() report it and change nothing, so the caller can queue or
// preempt.
#include <cstdint>
#include <list>
#include <optional>
#include <span>
#include <unordered_map>
#include <vector>

namespace finmoe {

// Prefix caching. A FULL block is identified by the hash of (its parent
// block's hash, its block_size token ids), so a block's identity covers the
// whole prefix before it: the same tokens after a different prefix are a
// different block. Only full blocks are shared, and only full blocks whose KV
// has been computed (mark_computed) are offered to later sequences. A block
// whose reference count drops to 0 returns to the free pool but keeps its
// hash, so a later identical prefix revives it; when a fresh block is needed
// and no never-hashed block is free, the least recently freed hashed block is
// evicted and loses its hash.
class BlockManager {
 public:
  // `num_blocks` blocks of `block_size` tokens each, all free. Both > 0.
  BlockManager(int64_t num_blocks, int64_t block_size, bool enable_prefix_caching = true);

  int64_t num_blocks() const { return static_cast<int64_t>(blocks_.size()); }
  int64_t block_size() const { return block_size_; }

  // True if a new sequence of `n_tokens` fits even with no prefix-cache hit.
  bool can_allocate(int64_t n_tokens) const;

  // Gives sequence `seq_id` blocks for `prompt` (>= 1 token). The longest
  // cached prefix of full blocks is shared (reference counts bumped); the rest
  // come from the free pool. Returns how many leading prompt tokens already
  // have their KV in the cache (a multiple of block_size) so the caller
  // prefills only prompt[cached:]. At least the last prompt token is always
  // left uncached, since its logits are needed: the block holding it is never
  // a shared one, so prefill never writes into a shared block.
  // Returns std::nullopt, with nothing changed (counters included), when the
  // free pool is too small. Throws Error if `seq_id` already has blocks.
  // `cache_salt` partitions the prefix cache: blocks are shared only between
  // sequences of the same salt (KV computed under another serving adapter
  // differs for the same tokens).
  std::optional<int64_t> allocate(int64_t seq_id, std::span<const int32_t> prompt,
                                  uint64_t cache_salt = 0);

  // True if append_token(seq_id, ...) would succeed.
  bool can_append(int64_t seq_id) const;

  // Appends one token to the sequence, taking a fresh block when the last
  // one is full. Returns false, with nothing changed, if no block is free.
  bool append_token(int64_t seq_id, int32_t token);

  // Records that the KV of the sequence's first `num_tokens` tokens is now in
  // the cache (after the step that computed them). Full blocks inside that
  // range become available to later sequences' prefix matches. Never
  // decreases; `num_tokens` is at most the sequence's length.
  void mark_computed(int64_t seq_id, int64_t num_tokens);

  // Releases every block of the sequence at once and forgets it.
  void free(int64_t seq_id);

  bool has_sequence(int64_t seq_id) const { return seqs_.count(seq_id) != 0; }
  // Block i holds positions [i*block_size, (i+1)*block_size). The reference
  // stays valid until the next mutating call.
  const std::vector<int32_t>& block_table(int64_t seq_id) const;
  int64_t num_tokens(int64_t seq_id) const;
  int64_t num_computed_tokens(int64_t seq_id) const;

  // ---- counters ----
  int64_t num_free_blocks() const;  // reference count 0 (hashed or not)
  int64_t num_used_blocks() const { return num_blocks() - num_free_blocks(); }
  int64_t num_cached_blocks() const;  // blocks holding a prefix-cache hash, used or free
  int ref_count(int32_t block) const;
  int64_t prefix_query_tokens() const { return query_tokens_; }  // prompt tokens looked up
  int64_t prefix_hit_tokens() const { return hit_tokens_; }      // of those, found cached

  // Checks every internal invariant (reference counts equal table
  // occurrences, free pool = blocks with count 0, hash index consistent,
  // shared blocks full and hashed); throws Error describing the first broken
  // one. For tests; O(num_blocks + total table length).
  void check_invariants() const;

 private:
  struct Block {
    int ref = 0;
    bool hashed = false;
    uint64_t hash = 0;
    uint64_t parent = 0;                   // parent's hash; with tokens, compared on lookup
    std::vector<int32_t> tokens;           // content, kept while hashed
    std::list<int32_t>::iterator lru_pos;  // valid while free and hashed
  };
  struct Seq {
    std::vector<int32_t> tokens;
    std::vector<int32_t> table;
    std::vector<uint64_t> hashes;  // chain hash of each full block computed so far
    uint64_t root = 0;             // parent hash of the first block (from the cache salt)
    int64_t computed = 0;
    int64_t registered = 0;  // leading full blocks already offered to the index
  };

  Seq& seq(int64_t seq_id);
  const Seq& seq(int64_t seq_id) const;
  // Cached block holding these tokens after a parent of hash `parent`, or -1.
  int32_t lookup(uint64_t parent, std::span<const int32_t> tokens) const;
  int32_t take_fresh_block();
  void release(int32_t block);
  void extend_hashes(Seq& s) const;

  int64_t block_size_;
  bool prefix_caching_;
  std::vector<Block> blocks_;
  std::vector<int32_t> free_plain_;                   // free, never hashed (taken first)
  std::list<int32_t> free_lru_;                       // free and hashed, least recently freed first
  std::unordered_multimap<uint64_t, int32_t> index_;  // hash -> hashed block
  std::unordered_map<int64_t, Seq> seqs_;
  int64_t query_tokens_ = 0;
  int64_t hit_tokens_ = 0;
};

// How many blocks of `block_size` tokens fit `bytes`, each token taking
// `bytes_per_token` over all layers (KVCache::bytes_per_token). All > 0.
int64_t blocks_for_budget(int64_t bytes, int64_t bytes_per_token, int64_t block_size);

// How many sequences of `seq_tokens` tokens each (prompt + output, no sharing)
// fit at once in `num_blocks` blocks.
int64_t sequences_that_fit(int64_t num_blocks, int64_t block_size, int64_t seq_tokens);

}  // namespace finmoe
