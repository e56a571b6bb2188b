#include "finmoe/block_manager.h"

#include <algorithm>
#include <string>

#include "finmoe/error.h"

namespace finmoe {
namespace {

// splitmix64 finaliser: cheap, well mixed; exact content is compared on lookup
// anyway, so a collision can only cost a missed share, never a wrong one.
uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t chain_hash(uint64_t parent, std::span<const int32_t> tokens) {
  uint64_t h = mix(parent ^ 0x5851f42d4c957f2dull);
  for (int32_t t : tokens) h = mix(h ^ static_cast<uint32_t>(t));
  return h;
}

constexpr uint64_t kRootHash = 0x243f6a8885a308d3ull;  // parent of a sequence's first block

std::string seq_name(int64_t seq_id) { return "sequence " + std::to_string(seq_id); }

}  // namespace

BlockManager::BlockManager(int64_t num_blocks, int64_t block_size, bool enable_prefix_caching)
    : block_size_(block_size), prefix_caching_(enable_prefix_caching) {
  if (num_blocks <= 0 || block_size <= 0)
    throw Error("BlockManager: num_blocks (" + std::to_string(num_blocks) + ") and block_size (" +
                std::to_string(block_size) + ") must be positive");
  blocks_.resize(static_cast<size_t>(num_blocks));
  // Stack: block 0 is handed out first.
  for (int64_t b = num_blocks - 1; b >= 0; --b) free_plain_.push_back(static_cast<int32_t>(b));
}

BlockManager::Seq& BlockManager::seq(int64_t seq_id) {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) throw Error("BlockManager: unknown " + seq_name(seq_id));
  return it->second;
}

const BlockManager::Seq& BlockManager::seq(int64_t seq_id) const {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) throw Error("BlockManager: unknown " + seq_name(seq_id));
  return it->second;
}

int64_t BlockManager::num_free_blocks() const {
  return static_cast<int64_t>(free_plain_.size() + free_lru_.size());
}

int64_t BlockManager::num_cached_blocks() const { return static_cast<int64_t>(index_.size()); }

int BlockManager::ref_count(int32_t block) const {
  if (block < 0 || block >= num_blocks())
    throw Error("BlockManager: block " + std::to_string(block) + " out of range [0, " +
                std::to_string(num_blocks()) + ")");
  return blocks_[static_cast<size_t>(block)].ref;
}

bool BlockManager::can_allocate(int64_t n_tokens) const {
  return (n_tokens + block_size_ - 1) / block_size_ <= num_free_blocks();
}

int32_t BlockManager::lookup(uint64_t parent, std::span<const int32_t> tokens) const {
  const uint64_t h = chain_hash(parent, tokens);
  auto [lo, hi] = index_.equal_range(h);
  for (auto it = lo; it != hi; ++it) {
    const Block& b = blocks_[static_cast<size_t>(it->second)];
    if (b.parent == parent &&
        std::equal(tokens.begin(), tokens.end(), b.tokens.begin(), b.tokens.end()))
      return it->second;
  }
  return -1;
}

void BlockManager::extend_hashes(Seq& s) const {
  const int64_t full = static_cast<int64_t>(s.tokens.size()) / block_size_;
  for (int64_t i = static_cast<int64_t>(s.hashes.size()); i < full; ++i) {
    const uint64_t parent = i == 0 ? s.root : s.hashes[static_cast<size_t>(i - 1)];
    s.hashes.push_back(
        chain_hash(parent, std::span(s.tokens).subspan(static_cast<size_t>(i * block_size_),
                                                       static_cast<size_t>(block_size_))));
  }
}

int32_t BlockManager::take_fresh_block() {
  int32_t b;
  if (!free_plain_.empty()) {
    b = free_plain_.back();
    free_plain_.pop_back();
  } else {
    // Evict the least recently freed cached block; it loses its hash.
    b = free_lru_.front();
    free_lru_.pop_front();
    Block& blk = blocks_[static_cast<size_t>(b)];
    auto [lo, hi] = index_.equal_range(blk.hash);
    for (auto it = lo; it != hi; ++it)
      if (it->second == b) {
        index_.erase(it);
        break;
      }
    blk.hashed = false;
    blk.tokens.clear();
  }
  blocks_[static_cast<size_t>(b)].ref = 1;
  return b;
}

void BlockManager::release(int32_t b) {
  Block& blk = blocks_[static_cast<size_t>(b)];
  if (--blk.ref > 0) return;
  if (blk.hashed) {
    free_lru_.push_back(b);
    blk.lru_pos = std::prev(free_lru_.end());
  } else {
    free_plain_.push_back(b);
  }
}

std::optional<int64_t> BlockManager::allocate(int64_t seq_id, std::span<const int32_t> prompt,
                                              uint64_t cache_salt) {
  if (seqs_.count(seq_id))
    throw Error("BlockManager: " + seq_name(seq_id) + " is already allocated");
  if (prompt.empty()) throw Error("BlockManager: " + seq_name(seq_id) + " has an empty prompt");
  const int64_t n = static_cast<int64_t>(prompt.size());
  const int64_t n_blocks = (n + block_size_ - 1) / block_size_;
  const uint64_t root = cache_salt == 0 ? kRootHash : mix(kRootHash ^ mix(cache_salt));

  // Longest cached prefix of full blocks, leaving the last prompt token
  // uncached (its logits are needed): at most (n-1)/block_size blocks.
  std::vector<int32_t> hits;
  if (prefix_caching_) {
    const int64_t max_hits = (n - 1) / block_size_;
    uint64_t parent = root;
    for (int64_t i = 0; i < max_hits; ++i) {
      auto toks =
          prompt.subspan(static_cast<size_t>(i * block_size_), static_cast<size_t>(block_size_));
      const int32_t b = lookup(parent, toks);
      if (b < 0) break;
      hits.push_back(b);
      parent = blocks_[static_cast<size_t>(b)].hash;
    }
  }
  // Hits on free (cached) blocks come out of the free pool too.
  int64_t need = n_blocks - static_cast<int64_t>(hits.size());
  for (int32_t b : hits) need += blocks_[static_cast<size_t>(b)].ref == 0;
  if (need > num_free_blocks()) return std::nullopt;

  Seq s;
  s.root = root;
  s.tokens.assign(prompt.begin(), prompt.end());
  // Revive hits before taking fresh blocks so no eviction can take a hit.
  for (int32_t b : hits) {
    Block& blk = blocks_[static_cast<size_t>(b)];
    if (blk.ref++ == 0) free_lru_.erase(blk.lru_pos);
    s.table.push_back(b);
  }
  while (static_cast<int64_t>(s.table.size()) < n_blocks) s.table.push_back(take_fresh_block());

  const int64_t cached = static_cast<int64_t>(hits.size()) * block_size_;
  s.computed = cached;
  s.registered = static_cast<int64_t>(hits.size());
  extend_hashes(s);
  query_tokens_ += n;
  hit_tokens_ += cached;
  seqs_.emplace(seq_id, std::move(s));
  return cached;
}

bool BlockManager::can_append(int64_t seq_id) const {
  const Seq& s = seq(seq_id);
  return static_cast<int64_t>(s.tokens.size()) % block_size_ != 0 || num_free_blocks() > 0;
}

bool BlockManager::append_token(int64_t seq_id, int32_t token) {
  Seq& s = seq(seq_id);
  if (static_cast<int64_t>(s.tokens.size()) % block_size_ == 0) {
    if (num_free_blocks() == 0) return false;
    s.table.push_back(take_fresh_block());
  }
  s.tokens.push_back(token);
  extend_hashes(s);
  return true;
}

void BlockManager::mark_computed(int64_t seq_id, int64_t num_tokens) {
  Seq& s = seq(seq_id);
  if (num_tokens < s.computed || num_tokens > static_cast<int64_t>(s.tokens.size()))
    throw Error("BlockManager: " + seq_name(seq_id) + ": mark_computed(" +
                std::to_string(num_tokens) + ") outside [" + std::to_string(s.computed) + ", " +
                std::to_string(s.tokens.size()) + "]");
  s.computed = num_tokens;
  if (!prefix_caching_) return;
  const int64_t full = s.computed / block_size_;
  for (; s.registered < full; ++s.registered) {
    const size_t i = static_cast<size_t>(s.registered);
    Block& blk = blocks_[static_cast<size_t>(s.table[i])];
    if (blk.hashed) continue;  // a shared hit, already indexed
    const uint64_t parent = i == 0 ? s.root : s.hashes[i - 1];
    auto toks = std::span<const int32_t>(s.tokens).subspan(i * static_cast<size_t>(block_size_),
                                                           static_cast<size_t>(block_size_));
    // Another sequence computed the same block first: keep its copy indexed,
    // this one stays private.
    if (lookup(parent, toks) >= 0) continue;
    blk.hashed = true;
    blk.hash = s.hashes[i];
    blk.parent = parent;
    blk.tokens.assign(toks.begin(), toks.end());
    index_.emplace(blk.hash, s.table[i]);
  }
}

void BlockManager::free(int64_t seq_id) {
  Seq& s = seq(seq_id);
  // Last blocks first, so a prefix's tail is evicted before its head (a tail
  // is useless without the blocks before it).
  for (auto it = s.table.rbegin(); it != s.table.rend(); ++it) release(*it);
  seqs_.erase(seq_id);
}

const std::vector<int32_t>& BlockManager::block_table(int64_t seq_id) const {
  return seq(seq_id).table;
}

int64_t BlockManager::num_tokens(int64_t seq_id) const {
  return static_cast<int64_t>(seq(seq_id).tokens.size());
}

int64_t BlockManager::num_computed_tokens(int64_t seq_id) const { return seq(seq_id).computed; }

void BlockManager::check_invariants() const {
  auto fail = [](const std::string& what) { throw Error("BlockManager invariant: " + what); };
  const size_t nb = blocks_.size();
  std::vector<int> refs(nb, 0);
  for (const auto& [id, s] : seqs_) {
    const int64_t n = static_cast<int64_t>(s.tokens.size());
    if (static_cast<int64_t>(s.table.size()) != (n + block_size_ - 1) / block_size_)
      fail(seq_name(id) + " has " + std::to_string(s.table.size()) + " blocks for " +
           std::to_string(n) + " tokens");
    for (size_t i = 0; i < s.table.size(); ++i) {
      const int32_t b = s.table[i];
      if (b < 0 || static_cast<size_t>(b) >= nb)
        fail(seq_name(id) + " holds bad block " + std::to_string(b));
      ++refs[static_cast<size_t>(b)];
      const bool full = static_cast<int64_t>(i + 1) * block_size_ <= n;
      const Block& blk = blocks_[static_cast<size_t>(b)];
      if (blk.hashed && (!full || blk.hash != s.hashes[i] ||
                         !std::equal(blk.tokens.begin(), blk.tokens.end(),
                                     s.tokens.begin() + static_cast<int64_t>(i) * block_size_)))
        fail(seq_name(id) + " block " + std::to_string(b) + " content differs from its hash entry");
    }
  }
  std::vector<int> in_free(nb, 0);
  for (int32_t b : free_plain_) {
    ++in_free[static_cast<size_t>(b)];
    if (blocks_[static_cast<size_t>(b)].hashed)
      fail("plain free block " + std::to_string(b) + " is hashed");
  }
  for (auto it = free_lru_.begin(); it != free_lru_.end(); ++it) {
    ++in_free[static_cast<size_t>(*it)];
    const Block& blk = blocks_[static_cast<size_t>(*it)];
    if (!blk.hashed) fail("cached free block " + std::to_string(*it) + " has no hash");
    if (blk.lru_pos != it)
      fail("cached free block " + std::to_string(*it) + " has a stale LRU position");
  }
  for (size_t b = 0; b < nb; ++b) {
    const Block& blk = blocks_[b];
    const std::string name = "block " + std::to_string(b);
    if (blk.ref != refs[b])
      fail(name + " ref count " + std::to_string(blk.ref) + " != " + std::to_string(refs[b]) +
           " table uses");
    if (in_free[b] != (blk.ref == 0 ? 1 : 0))
      fail(name + " appears " + std::to_string(in_free[b]) + "x in free pool");
    if (blk.ref > 1 && !blk.hashed) fail(name + " is shared but not hashed");
    if (blk.hashed && static_cast<int64_t>(blk.tokens.size()) != block_size_)
      fail(name + " hashed but not full");
    if (blk.hashed && chain_hash(blk.parent, blk.tokens) != blk.hash) fail(name + " hash mismatch");
  }
  size_t hashed = 0;
  for (const Block& blk : blocks_) hashed += blk.hashed;
  if (hashed != index_.size())
    fail("index has " + std::to_string(index_.size()) + " entries for " + std::to_string(hashed) +
         " hashed blocks");
  for (const auto& [h, b] : index_)
    if (!blocks_[static_cast<size_t>(b)].hashed || blocks_[static_cast<size_t>(b)].hash != h)
      fail("index entry for block " + std::to_string(b) + " is stale");
}

int64_t blocks_for_budget(int64_t bytes, int64_t bytes_per_token, int64_t block_size) {
  if (bytes < 0 || bytes_per_token <= 0 || block_size <= 0)
    throw Error("blocks_for_budget: bytes (" + std::to_string(bytes) +
                ") must be >= 0, bytes_per_token (" + std::to_string(bytes_per_token) +
                ") and block_size (" + std::to_string(block_size) + ") > 0");
  return bytes / (bytes_per_token * block_size);
}

int64_t sequences_that_fit(int64_t num_blocks, int64_t block_size, int64_t seq_tokens) {
  if (num_blocks < 0 || block_size <= 0 || seq_tokens <= 0)
    throw Error("sequences_that_fit: num_blocks (" + std::to_string(num_blocks) +
                ") must be >= 0, block_size (" + std::to_string(block_size) + ") and seq_tokens (" +
                std::to_string(seq_tokens) + ") > 0");
  return num_blocks / ((seq_tokens + block_size - 1) / block_size);
}

}  // namespace finmoe
