#pragma once
// The BPE model of HF tokenizer.json ("model": {"type": "BPE", ...}): vocab,
// ranked merges, byte fallback, unk fusing, ignore_merges. Results per word are
// cached (words repeat a lot in text).
// Thread safety: immutable apart from the cache, which cache_mutex_ guards.
#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace finmoe::tok {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using Vocab = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

// How far the largest token id may lie beyond the number of tokens: ids index
// a dense table, so a corrupt file with one huge id must not size it.
inline constexpr int64_t kMaxTokenIdSlack = int64_t(1) << 20;

// A token id of tokenizer.json (`where` names the field): an integer in
// [0, 2^31). HF reads ids as u32; finmoe's ids are int32 throughout.
int32_t token_id(const nlohmann::json& v, const std::string& where);

class Bpe {
 public:
  // `model` is tokenizer.json's "model" object; `file` names it in errors.
  Bpe(const nlohmann::json& model, const std::string& file);

  // Appends the ids of one pre-tokenized word.
  void tokenize(std::string_view word, std::vector<int32_t>& out) const;

  const Vocab& vocab() const { return vocab_; }
  bool byte_fallback() const { return byte_fallback_; }

 private:
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;

  struct Merge {
    int32_t rank;
    int32_t new_id;
  };
  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  Vocab vocab_;
  // (left id, right id) -> rank, merged id: open addressing, linear probing
  // (one cache miss per lookup; the merge loop is dominated by these).
  struct MergeSlot {
    uint64_t key = kEmpty;
    Merge merge{};
  };
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  std::vector<MergeSlot> merges_;
  uint64_t merge_mask_ = 0;
  const Merge* find_merge(int32_t a, int32_t b) const {
    uint64_t key = pair_key(a, b);
    for (uint64_t i = (key * 0x9E3779B97F4A7C15ull) >> 20 & merge_mask_;; i = (i + 1) & merge_mask_) {
      const MergeSlot& s = merges_[i];
      if (s.key == key) return &s.merge;
      if (s.key == kEmpty) return nullptr;
    }
  }
  std::array<int32_t, 324> char_ids_{};  // id of each one-code-point token below U+0144, -1 if none
  std::optional<int32_t> unk_id_;
  bool byte_fallback_ = false;
  bool fuse_unk_ = false;
  bool ignore_merges_ = false;
  std::array<int32_t, 256> byte_ids_{};  // id of "<0xNN>", -1 when absent

  static constexpr size_t kCacheCapacity = 1 << 18;  // words
  static constexpr size_t kMaxCachedWordBytes = 128;
  mutable std::shared_mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>>
      cache_;  // guarded by cache_mutex_
};

}  // namespace finmoe::tok
