#include "tokenizer/bpe.h"

#include <array>
#include <cstdio>
#include <mutex>
#include <queue>

#include <nlohmann/json.hpp>

#include "finmoe/error.h"
#include "tokenizer/utf8.h"

namespace finmoe::tok {

namespace {

std::string json_str(const nlohmann::json& j, const std::string& where) {
  if (!j.is_string()) throw Error(where + ": expected a string, got " + std::string(j.type_name()));
  return j.get<std::string>();
}

}  // namespace

int32_t token_id(const nlohmann::json& v, const std::string& where) {
  if (!v.is_number_integer())
    throw Error(where + ": expected an integer token id, got " + std::string(v.type_name()));
  if (v.is_number_unsigned() ? v.get<uint64_t>() > uint64_t(INT32_MAX)
                             : v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX)
    throw Error(where + ": token id " + v.dump() + " is outside [0, 2^31)");
  return int32_t(v.get<int64_t>());
}

Bpe::Bpe(const nlohmann::json& model, const std::string& file) {
  const std::string where = file + ": model";
  auto flag = [&](const char* key) {
    auto it = model.find(key);
    return it != model.end() && it->is_boolean() && it->get<bool>();
  };
  auto nonempty_str = [&](const char* key) {
    auto it = model.find(key);
    return it != model.end() && it->is_string() && !it->get<std::string>().empty();
  };
  if (nonempty_str("continuing_subword_prefix") || nonempty_str("end_of_word_suffix"))
    throw Error(where + ".continuing_subword_prefix/end_of_word_suffix: not supported");
  if (auto it = model.find("dropout"); it != model.end() && it->is_number() && it->get<double>() > 0)
    throw Error(where + ".dropout: BPE dropout is not supported");
  byte_fallback_ = flag("byte_fallback");
  fuse_unk_ = flag("fuse_unk");
  ignore_merges_ = flag("ignore_merges");

  auto v = model.find("vocab");
  if (v == model.end() || !v->is_object()) throw Error(where + ".vocab: missing or not an object");
  vocab_.reserve(v->size());
  for (auto it = v->begin(); it != v->end(); ++it)
    vocab_.emplace(it.key(), token_id(it.value(), where + ".vocab['" + it.key() + "']"));
  if (auto u = model.find("unk_token"); u != model.end() && u->is_string()) {
    auto id = vocab_.find(u->get<std::string>());
    if (id == vocab_.end())
      throw Error(where + ".unk_token '" + u->get<std::string>() + "' is not in the vocab");
    unk_id_ = id->second;
  }
  char_ids_.fill(-1);
  for (char32_t cp = 0; cp < char_ids_.size(); ++cp) {
    std::string u;
    utf8_append(u, cp);
    if (auto it = vocab_.find(u); it != vocab_.end()) char_ids_[cp] = it->second;
  }
  byte_ids_.fill(-1);
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    if (auto it = vocab_.find(std::string_view(name)); it != vocab_.end()) byte_ids_[b] = it->second;
  }

  auto m = model.find("merges");
  if (m == model.end() || !m->is_array()) throw Error(where + ".merges: missing or not an array");
  size_t cap = 16;
  while (cap < m->size() * 2) cap <<= 1;
  merges_.assign(cap, MergeSlot{});
  merge_mask_ = cap - 1;
  int32_t rank = 0;
  for (const auto& e : *m) {
    std::string a, b;
    if (e.is_string()) {  // "a b"
      const std::string& s = e.get_ref<const std::string&>();
      size_t sp = s.find(' ', 1);
      if (sp == std::string::npos)
        throw Error(where + ".merges[" + std::to_string(rank) + "]: '" + s +
                    "' is not two symbols separated by a space");
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (e.is_array() && e.size() == 2) {  // ["a", "b"]
      a = json_str(e[0], where + ".merges[" + std::to_string(rank) + "][0]");
      b = json_str(e[1], where + ".merges[" + std::to_string(rank) + "][1]");
    } else {
      throw Error(where + ".merges[" + std::to_string(rank) + "]: expected \"a b\" or [a, b]");
    }
    auto ia = vocab_.find(a), ib = vocab_.find(b), im = vocab_.find(a + b);
    if (ia == vocab_.end() || ib == vocab_.end() || im == vocab_.end())
      throw Error(where + ".merges[" + std::to_string(rank) + "]: '" + a + "' + '" + b +
                  "' uses a token missing from the vocab");
    uint64_t key = pair_key(ia->second, ib->second);
    for (uint64_t i = (key * 0x9E3779B97F4A7C15ull) >> 20 & merge_mask_;; i = (i + 1) & merge_mask_) {
      // A repeated merge takes the later rank, as HF's map built by collect() does.
      if (merges_[i].key == key || merges_[i].key == kEmpty) {
        merges_[i] = {key, Merge{rank, im->second}};
        break;
      }
    }
    ++rank;
  }
}

void Bpe::tokenize(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (auto it = vocab_.find(word); it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  if (cacheable) {
    std::shared_lock lock(cache_mutex_);
    if (auto it = cache_.find(word); it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  size_t first = out.size();
  merge_word(word, out);
  if (cacheable) {
    std::unique_lock lock(cache_mutex_);
    if (cache_.size() < kCacheCapacity)
      cache_.emplace(std::string(word), std::vector<int32_t>(out.begin() + first, out.end()));
  }
}

void Bpe::merge_word(std::string_view word, std::vector<int32_t>& out) const {
  struct Symbol {
    int32_t id;
    int32_t prev, next;
    bool alive;
  };
  std::vector<Symbol> sym;
  sym.reserve(word.size());
  auto push = [&](int32_t id) {
    int32_t n = static_cast<int32_t>(sym.size());
    sym.push_back({id, n - 1, -1, true});
    if (n > 0) sym[n - 1].next = n;
  };
  bool last_unk = false;
  for (size_t i = 0; i < word.size();) {
    size_t n = utf8_char_len(static_cast<unsigned char>(word[i]));
    if (i + n > word.size()) n = word.size() - i;
    std::string_view ch = word.substr(i, n);
    if (n <= 2) {  // byte-level symbols are all below U+0144: table lookup
      size_t k = i;
      char32_t cp = utf8_next(word, k);
      if (cp < char_ids_.size() && char_ids_[cp] >= 0) {
        push(char_ids_[cp]);
        last_unk = false;
        i += n;
        continue;
      }
    }
    i += n;
    if (auto it = vocab_.find(ch); it != vocab_.end()) {
      push(it->second);
      last_unk = false;
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (unsigned char c : ch) all = all && byte_ids_[c] >= 0;
      if (all) {
        for (unsigned char c : ch) push(byte_ids_[c]);
        last_unk = false;
        continue;
      }
    }
    if (unk_id_) {  // without an unk token HF drops the character
      if (!(fuse_unk_ && last_unk)) push(*unk_id_);
      last_unk = true;
    }
  }

  struct Cand {
    int32_t rank, pos, new_id;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
  auto consider = [&](int32_t pos) {
    if (pos < 0) return;
    int32_t nx = sym[pos].next;
    if (nx < 0) return;
    if (const Merge* mg = find_merge(sym[pos].id, sym[nx].id)) heap.push({mg->rank, pos, mg->new_id});
  };
  for (int32_t p = 0; p + 1 < static_cast<int32_t>(sym.size()); ++p) consider(p);
  while (!heap.empty()) {
    Cand c = heap.top();
    heap.pop();
    Symbol& s = sym[c.pos];
    if (!s.alive || s.next < 0) continue;
    const Merge* mg = find_merge(s.id, sym[s.next].id);
    if (!mg || mg->new_id != c.new_id) continue;  // stale candidate
    Symbol& r = sym[s.next];
    s.id = c.new_id;
    r.alive = false;
    s.next = r.next;
    if (s.next >= 0) sym[s.next].prev = c.pos;
    consider(s.prev);
    consider(c.pos);
  }
  for (int32_t p = sym.empty() ? -1 : 0; p >= 0; p = sym[p].next) out.push_back(sym[p].id);
}

}  // namespace finmoe::tok
