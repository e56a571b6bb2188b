// Byte-level BPE training (include/finmoe/tokenizer_trainer.h).
//
// Words are counted in a dictionary after pre-tokenization; training keeps,
// per word, its current symbols and, per symbol pair, its total count. A
// max-heap holds (count, pair, words that may contain it) entries; counts in
// the heap may be stale (too high), and a popped entry whose count no longer
// matches is pushed back with the current count. Merging a pair touches only
// the words listed with it and updates the counts of the neighbouring pairs.
#include "finmoe/tokenizer_trainer.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <exception>
#include <filesystem>
#include <mutex>
#include <thread>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "core/progress.h"
#include "finmoe/config.h"
#include "finmoe/error.h"
#include "tokenizer/bpe.h"
#include "tokenizer/normalizer.h"
#include "tokenizer/regex.h"
#include "tokenizer/utf8.h"

namespace finmoe {

namespace {

// Qwen2's pre-tokenizer regex (its tokenizer.json, Split with behavior Isolated).
const char* const kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

using WordCounts = std::unordered_map<std::string, int64_t, tok::StringHash, std::equal_to<>>;

// Byte -> symbol id: GPT-2's byte->unicode characters sorted by code point.
std::array<int32_t, 256> byte_symbol_ids(std::vector<std::string>* symbols) {
  const tok::ByteLevelMap& map = tok::ByteLevelMap::get();
  std::array<std::pair<char32_t, int>, 256> cp;
  for (int b = 0; b < 256; ++b) {
    size_t i = 0;
    cp[b] = {tok::utf8_next(map.byte_to_utf8[b], i), b};
  }
  std::sort(cp.begin(), cp.end());
  std::array<int32_t, 256> ids{};
  for (int k = 0; k < 256; ++k) {
    ids[cp[k].second] = k;
    if (symbols) symbols->push_back(map.byte_to_utf8[cp[k].second]);
  }
  return ids;
}

// Splits `text` at the special tokens and the regex, counting each word.
class WordSplitter {
 public:
  WordSplitter(const std::vector<std::string>& specials, bool nfc)
      : specials_(specials), regex_(kQwen2Pattern, false, "Qwen2 split regex") {
    if (nfc) normalizer_ = tok::make_normalizer(nlohmann::json{{"type", "NFC"}}, "NFC");
  }

  // `text` must be valid UTF-8.
  void count(std::string_view text, WordCounts& counts) const {
    std::string normalized;
    if (normalizer_) {
      normalized.assign(text);
      normalizer_->normalize(normalized);
      text = normalized;
    }
    // Next occurrence of each special token at or after `pos` (npos: none left).
    std::vector<size_t> next(specials_.size());
    for (size_t k = 0; k < specials_.size(); ++k) next[k] = text.find(specials_[k]);
    size_t pos = 0;
    while (pos < text.size()) {
      size_t best = text.size(), best_len = 0;
      for (size_t k = 0; k < specials_.size(); ++k) {  // leftmost, then longest
        if (next[k] != std::string_view::npos && next[k] < pos) next[k] = text.find(specials_[k], pos);
        if (next[k] < best || (next[k] == best && best < text.size() && specials_[k].size() > best_len)) {
          best = next[k];
          best_len = specials_[k].size();
        }
      }
      count_words(text.substr(pos, best - pos), counts);
      pos = best + best_len;
    }
  }

 private:
  void count_words(std::string_view s, WordCounts& counts) const {
    if (s.empty()) return;
    std::vector<std::pair<size_t, size_t>> m;
    regex_.find_all(s, m);
    auto add = [&](size_t b, size_t e) {
      std::string_view w = s.substr(b, e - b);
      if (auto it = counts.find(w); it != counts.end()) ++it->second;
      else counts.emplace(std::string(w), 1);
    };
    size_t last = 0;  // Isolated: the text between matches is a word too
    for (auto [b, e] : m) {
      if (b > last) add(last, b);
      add(b, e);
      last = e;
    }
    if (last < s.size()) add(last, s.size());
  }

  std::vector<std::string> specials_;
  tok::Regex regex_;
  std::unique_ptr<tok::Normalizer> normalizer_;
};

void merge_counts(WordCounts& into, WordCounts&& from) {
  if (into.empty()) {
    into = std::move(from);
    return;
  }
  for (auto& [w, c] : from) into[w] += c;
}

// A piece of a file for the counting threads.
struct Block {
  std::string text;
  int64_t first_line = 1;  // line number of text[0]
  int64_t offset = 0;      // byte offset of text[0] in the file
  bool jsonl = false;
};

int64_t line_of(const Block& b, size_t byte) {
  return b.first_line + std::count(b.text.begin(), b.text.begin() + long(byte), '\n');
}

// Counts the words of one block; errors name the file and line.
void count_block(const Block& b, const std::string& path, const WordSplitter& splitter,
                 WordCounts& counts) {
  if (!b.jsonl) {
    if (size_t bad = tok::utf8_first_invalid(b.text); bad != std::string::npos)
      throw Error(path + ":" + std::to_string(line_of(b, bad)) + ": not valid UTF-8 (byte offset " +
                  std::to_string(b.offset + int64_t(bad)) + ")");
    splitter.count(b.text, counts);
    return;
  }
  int64_t line_no = b.first_line;
  size_t pos = 0;
  while (pos < b.text.size()) {
    size_t nl = b.text.find('\n', pos);
    if (nl == std::string::npos) nl = b.text.size();
    std::string_view line(b.text.data() + pos, nl - pos);
    const std::string where = path + ":" + std::to_string(line_no);
    pos = nl + 1;
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    const nlohmann::json rec = parse_json(line, where);
    if (rec.is_object() && rec.contains("text") && rec["text"].is_string()) {
      splitter.count(rec["text"].get_ref<const std::string&>(), counts);
    } else if (rec.is_object() && rec.contains("messages") && rec["messages"].is_array()) {
      for (const auto& m : rec["messages"]) {
        if (!m.is_object() || !m.contains("content") || !m["content"].is_string())
          throw Error(where + ": each message needs a string field 'content'");
        splitter.count(m["content"].get_ref<const std::string&>(), counts);
      }
    } else {
      throw Error(where + ": expected an object with a string field 'text' or an array 'messages'");
    }
  }
}

// Where a plain-text block may end: the last line start in buf[from..) at
// which Qwen2's regex never joins two words (tok::can_start_block), so the blocks
// split into the words of the whole text.
size_t safe_cut(const std::string& buf, size_t from) {
  for (size_t i = buf.size(); i-- > from + 1;)
    if (buf[i - 1] == '\n' && tok::can_start_block(std::string_view(buf).substr(i))) return i;
  return std::string::npos;
}

}  // namespace

// ---- BpeTrainer -----------------------------------------------------------------

struct BpeTrainer::Impl {
  BpeTrainerOptions opt;
  WordSplitter splitter;
  WordCounts counts;
  int64_t bytes = 0;
  Impl(BpeTrainerOptions o) : opt(std::move(o)), splitter(opt.special_tokens, opt.nfc) {}
};

BpeTrainer::BpeTrainer(BpeTrainerOptions options) {
  const int64_t floor = 256 + int64_t(options.special_tokens.size());
  if (options.vocab_size < floor)
    throw Error("vocab_size " + std::to_string(options.vocab_size) + " is below the 256 byte symbols + " +
                std::to_string(options.special_tokens.size()) + " special tokens = " + std::to_string(floor));
  if (options.min_frequency < 0) throw Error("min_frequency must be >= 0");
  for (size_t i = 0; i < options.special_tokens.size(); ++i) {
    const std::string& s = options.special_tokens[i];
    if (s.empty() || tok::utf8_first_invalid(s) != std::string::npos)
      throw Error("special_tokens[" + std::to_string(i) + "]: must be non-empty UTF-8");
    for (size_t j = 0; j < i; ++j)
      if (options.special_tokens[j] == s) throw Error("special token '" + s + "' is given twice");
  }
  impl_ = std::make_unique<Impl>(std::move(options));
}

BpeTrainer::~BpeTrainer() = default;

void BpeTrainer::feed(std::string_view text) {
  if (size_t bad = tok::utf8_first_invalid(text); bad != std::string_view::npos)
    throw Error("BpeTrainer::feed: text is not valid UTF-8 (byte " + std::to_string(bad) + ")");
  impl_->splitter.count(text, impl_->counts);
  impl_->bytes += int64_t(text.size());
}

void BpeTrainer::feed_file(const std::string& path, const std::function<void(int64_t)>& progress) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw Error(path + ": cannot open");
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> closer(f, std::fclose);
  const bool jsonl = path.ends_with(".jsonl");
  const size_t kBlock = size_t(1) << 20;

  int n_threads = impl_->opt.num_threads > 0 ? impl_->opt.num_threads
                                             : int(std::max(1u, std::thread::hardware_concurrency()));
  // The queue of blocks; workers count into their own dictionaries.
  std::mutex mu;
  std::condition_variable cv_push, cv_pop;
  std::deque<Block> queue;
  bool done = false;
  std::exception_ptr error;
  int64_t error_block = -1;  // report the earliest failing block, not the first to fail
  std::vector<WordCounts> local(static_cast<size_t>(n_threads));
  std::vector<std::thread> workers;
  int64_t next_index = 0;
  auto work = [&](int t) {
    for (;;) {
      Block b;
      int64_t index;
      {
        std::unique_lock<std::mutex> lock(mu);
        cv_pop.wait(lock, [&] { return !queue.empty() || done; });
        if (queue.empty()) return;
        b = std::move(queue.front());
        queue.pop_front();
        index = next_index++;
      }
      cv_push.notify_one();
      try {
        count_block(b, path, impl_->splitter, local[size_t(t)]);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu);
        if (!error || index < error_block) {
          error = std::current_exception();
          error_block = index;
        }
      }
    }
  };
  for (int t = 0; t < n_threads; ++t) workers.emplace_back(work, t);
  auto finish = [&] {
    {
      std::lock_guard<std::mutex> lock(mu);
      done = true;
    }
    cv_pop.notify_all();
    for (auto& w : workers) w.join();
  };

  try {
    std::string buf;
    int64_t offset = 0, line = 1, read_total = 0;
    std::vector<char> chunk(kBlock);
    bool eof = false;
    while (!eof || !buf.empty()) {
      if (!eof) {
        size_t n = std::fread(chunk.data(), 1, chunk.size(), f);
        if (n < chunk.size()) {
          if (std::ferror(f)) throw Error(path + ": read error");
          eof = true;
        }
        buf.append(chunk.data(), n);
        read_total += int64_t(n);
      }
      size_t cut;
      if (eof) {
        cut = buf.size();
      } else if (buf.size() < kBlock) {
        continue;
      } else if (jsonl) {
        size_t nl = buf.rfind('\n');
        if (nl == std::string::npos) continue;  // a line longer than the block: read on
        cut = nl + 1;
      } else {
        cut = safe_cut(buf, kBlock / 2);
        if (cut == std::string::npos) continue;
      }
      Block b;
      b.text = buf.substr(0, cut);
      b.first_line = line;
      b.offset = offset;
      b.jsonl = jsonl;
      buf.erase(0, cut);
      line += std::count(b.text.begin(), b.text.end(), '\n');
      offset += int64_t(cut);
      {
        std::unique_lock<std::mutex> lock(mu);
        cv_push.wait(lock, [&] { return queue.size() < size_t(2 * n_threads) || error; });
        if (error) break;
        queue.push_back(std::move(b));
      }
      cv_pop.notify_one();
      if (progress) progress(read_total);
    }
  } catch (...) {
    finish();
    throw;
  }
  finish();
  if (error) std::rethrow_exception(error);
  for (auto& l : local) merge_counts(impl_->counts, std::move(l));
  impl_->bytes += std::filesystem::file_size(path);
  if (progress) progress(int64_t(std::filesystem::file_size(path)));
}

int64_t BpeTrainer::num_words() const { return int64_t(impl_->counts.size()); }
int64_t BpeTrainer::num_bytes() const { return impl_->bytes; }

namespace {

uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
int32_t pair_left(uint64_t k) { return int32_t(k >> 32); }
int32_t pair_right(uint64_t k) { return int32_t(k & 0xFFFFFFFFu); }

struct HeapEntry {
  uint64_t count;
  uint64_t pair;
  std::vector<int32_t> words;  // indices of words that may hold the pair
};
// Max-heap order: higher count first; equal counts: smaller (left, right) first.
bool heap_less(const HeapEntry& x, const HeapEntry& y) {
  if (x.count != y.count) return x.count < y.count;
  return x.pair > y.pair;
}

// A change of a pair's count caused by one merge inside one word.
struct PairChange {
  uint64_t pair;
  int32_t delta;  // -1 or +1 occurrence
};

// Merges every non-overlapping (a, b), left to right, in symbols[0..len);
// returns the new length and appends the neighbour pairs that changed.
size_t merge_word(int32_t* s, size_t len, int32_t a, int32_t b, int32_t merged,
                  std::vector<PairChange>& changes) {
  size_t i = 0;
  while (i < len) {
    if (s[i] == a && i + 1 < len && s[i + 1] == b) {
      if (i > 0) {
        changes.push_back({pair_key(s[i - 1], a), -1});
        changes.push_back({pair_key(s[i - 1], merged), +1});
      }
      s[i] = merged;
      std::copy(s + i + 2, s + len, s + i + 1);
      --len;
      if (i + 1 < len) {
        changes.push_back({pair_key(b, s[i + 1]), -1});
        changes.push_back({pair_key(merged, s[i + 1]), +1});
      }
    }
    ++i;
  }
  return len;
}

}  // namespace

BpeModel BpeTrainer::train(const std::function<void(int64_t)>& progress) const {
  const BpeTrainerOptions& opt = impl_->opt;
  BpeModel model;
  model.special_tokens = opt.special_tokens;
  const std::array<int32_t, 256> byte_id = byte_symbol_ids(&model.vocab);
  std::unordered_map<std::string, int32_t> token_id;
  for (int32_t i = 0; i < 256; ++i) token_id.emplace(model.vocab[size_t(i)], i);

  // Words as symbol runs in one array: word w is symbols[start[w] .. start[w] + len[w]).
  const size_t n_words = impl_->counts.size();
  std::vector<int32_t> symbols;
  std::vector<size_t> start(n_words);
  std::vector<uint32_t> len(n_words);
  std::vector<int64_t> count(n_words);
  {
    size_t total = 0;
    for (const auto& [w, c] : impl_->counts) total += w.size();
    symbols.reserve(total);
    size_t w = 0;
    for (const auto& [word, c] : impl_->counts) {
      start[w] = symbols.size();
      len[w] = uint32_t(word.size());
      count[w] = c;
      for (unsigned char ch : word) symbols.push_back(byte_id[ch]);
      ++w;
    }
  }

  // Initial pair counts and where each pair occurs.
  std::unordered_map<uint64_t, int64_t> pair_count;
  std::unordered_map<uint64_t, std::vector<int32_t>> where;
  for (size_t w = 0; w < n_words; ++w) {
    const int32_t* s = symbols.data() + start[w];
    for (size_t i = 0; i + 1 < len[w]; ++i) {
      uint64_t p = pair_key(s[i], s[i + 1]);
      pair_count[p] += count[w];
      auto& v = where[p];
      if (v.empty() || v.back() != int32_t(w)) v.push_back(int32_t(w));
    }
  }
  std::vector<HeapEntry> heap;
  heap.reserve(where.size());
  auto push_updates = [&] {
    for (auto& [p, words] : where) {
      int64_t c = pair_count[p];
      if (c > 0) {
        heap.push_back({uint64_t(c), p, std::move(words)});
        std::push_heap(heap.begin(), heap.end(), heap_less);
      }
    }
    where.clear();
  };
  push_updates();

  const int64_t n_special = int64_t(opt.special_tokens.size());
  std::vector<PairChange> changes;
  while (int64_t(model.vocab.size()) + n_special < opt.vocab_size && !heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), heap_less);
    HeapEntry top = std::move(heap.back());
    heap.pop_back();
    // A negative count reads as a huge one here, as in HF's trainer (its i32
    // count cast to u64); it cannot happen for a pair that still has an entry
    // unless two merges produced the same token string.
    const uint64_t current = uint64_t(pair_count[top.pair]);
    if (top.count != current) {
      top.count = current;
      heap.push_back(std::move(top));
      std::push_heap(heap.begin(), heap.end(), heap_less);
      continue;
    }
    if (top.count < 1 || uint64_t(opt.min_frequency) > top.count) break;

    const int32_t a = pair_left(top.pair), b = pair_right(top.pair);
    std::string merged_str = model.vocab[size_t(a)] + model.vocab[size_t(b)];
    int32_t merged;
    // Two merges can build the same string ("a"+"bc", "ab"+"c"): one id.
    if (auto it = token_id.find(merged_str); it != token_id.end()) {
      merged = it->second;
    } else {
      merged = int32_t(model.vocab.size());
      token_id.emplace(merged_str, merged);
      model.vocab.push_back(merged_str);
    }
    model.merges.emplace_back(model.vocab[size_t(a)], model.vocab[size_t(b)]);

    for (int32_t w : top.words) {
      changes.clear();
      len[size_t(w)] = uint32_t(merge_word(symbols.data() + start[size_t(w)], len[size_t(w)], a, b,
                                           merged, changes));
      for (const PairChange& ch : changes) {
        pair_count[ch.pair] += ch.delta * count[size_t(w)];
        if (ch.delta > 0) {
          auto& v = where[ch.pair];
          if (v.empty() || v.back() != w) v.push_back(w);
        }
      }
    }
    push_updates();
    if (progress && model.merges.size() % 256 == 0) progress(int64_t(model.merges.size()));
  }
  if (progress) progress(int64_t(model.merges.size()));
  return model;
}

// ---- tokenizer files --------------------------------------------------------------

namespace {

const char* const kChatMLTemplate =
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

const char* const kLlama3Template =
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + "
    "message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}";

struct TemplateTokens {
  std::vector<std::string> specials;
  std::string bos, eos, pad;
  const char* jinja = nullptr;
};

TemplateTokens template_tokens(const std::string& name) {
  if (name == "chatml")
    return {{"<|endoftext|>", "<|im_start|>", "<|im_end|>"}, "", "<|im_end|>", "<|endoftext|>",
            kChatMLTemplate};
  if (name == "llama3")
    return {{"<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
             "<|eot_id|>"},
            "<|begin_of_text|>", "<|eot_id|>", "<|end_of_text|>", kLlama3Template};
  if (name == "none") return {{"<|endoftext|>"}, "", "<|endoftext|>", "<|endoftext|>", nullptr};
  throw Error("chat template '" + name + "' unknown for a trained tokenizer (chatml, llama3, none)");
}

nlohmann::ordered_json byte_level() {
  return {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}};
}

}  // namespace

std::vector<std::string> special_tokens_for(const TokenizerFilesOptions& options) {
  std::vector<std::string> s = template_tokens(options.chat_template).specials;
  for (const auto& t : options.extra_special_tokens)
    if (std::find(s.begin(), s.end(), t) == s.end()) s.push_back(t);
  return s;
}

void write_bpe_tokenizer(const std::string& dir, const BpeModel& model,
                         const TokenizerFilesOptions& options) {
  using ojson = nlohmann::ordered_json;
  const TemplateTokens tt = template_tokens(options.chat_template);
  if (model.special_tokens != special_tokens_for(options))
    throw Error("write_bpe_tokenizer: the model's special tokens differ from those of chat template '" +
                options.chat_template + "'");
  const int32_t first_special = int32_t(model.vocab.size());
  auto special_id = [&](const std::string& s) {
    for (size_t i = 0; i < model.special_tokens.size(); ++i)
      if (model.special_tokens[i] == s) return first_special + int32_t(i);
    throw Error("write_bpe_tokenizer: '" + s + "' is not a special token");
  };

  ojson added = ojson::array();
  for (size_t i = 0; i < model.special_tokens.size(); ++i)
    added.push_back({{"id", first_special + int32_t(i)}, {"content", model.special_tokens[i]},
                     {"single_word", false}, {"lstrip", false}, {"rstrip", false},
                     {"normalized", false}, {"special", true}});
  ojson vocab = ojson::object();
  for (size_t i = 0; i < model.vocab.size(); ++i) vocab[model.vocab[i]] = int32_t(i);
  ojson merges = ojson::array();
  for (const auto& [l, r] : model.merges) merges.push_back(l + " " + r);  // byte-level tokens hold no space

  ojson post = byte_level();
  if (!tt.bos.empty()) {  // Llama-3: encode() adds <|begin_of_text|>
    const int32_t bos = special_id(tt.bos);
    ojson single = ojson::array({{{"SpecialToken", {{"id", tt.bos}, {"type_id", 0}}}},
                                 {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}});
    ojson pair = single;
    pair.push_back({{"SpecialToken", {{"id", tt.bos}, {"type_id", 1}}}});
    pair.push_back({{"Sequence", {{"id", "B"}, {"type_id", 1}}}});
    ojson tp = {{"type", "TemplateProcessing"}, {"single", single}, {"pair", pair},
                {"special_tokens", {{tt.bos, {{"id", tt.bos}, {"ids", {bos}}, {"tokens", {tt.bos}}}}}}};
    post = {{"type", "Sequence"}, {"processors", ojson::array({post, tp})}};
  }

  ojson tj;
  tj["version"] = "1.0";
  tj["truncation"] = nullptr;
  tj["padding"] = nullptr;
  tj["added_tokens"] = added;
  tj["normalizer"] = options.nfc ? ojson{{"type", "NFC"}} : ojson(nullptr);
  tj["pre_tokenizer"] = {
      {"type", "Sequence"},
      {"pretokenizers", ojson::array({{{"type", "Split"},
                                       {"pattern", {{"Regex", kQwen2Pattern}}},
                                       {"behavior", "Isolated"},
                                       {"invert", false}},
                                      byte_level()})}};
  tj["post_processor"] = post;
  tj["decoder"] = byte_level();
  tj["model"] = {{"type", "BPE"},         {"dropout", nullptr},
                 {"unk_token", nullptr},  {"continuing_subword_prefix", nullptr},
                 {"end_of_word_suffix", nullptr}, {"fuse_unk", false},
                 {"byte_fallback", false}, {"ignore_merges", false},
                 {"vocab", vocab},        {"merges", merges}};

  ojson cfg;
  cfg["add_bos_token"] = !tt.bos.empty();
  cfg["add_eos_token"] = false;
  ojson decoder = ojson::object();
  for (size_t i = 0; i < model.special_tokens.size(); ++i)
    decoder[std::to_string(first_special + int32_t(i))] = {
        {"content", model.special_tokens[i]}, {"lstrip", false}, {"normalized", false},
        {"rstrip", false}, {"single_word", false}, {"special", true}};
  cfg["added_tokens_decoder"] = decoder;
  cfg["bos_token"] = tt.bos.empty() ? ojson(nullptr) : ojson(tt.bos);
  if (tt.jinja) cfg["chat_template"] = tt.jinja;
  cfg["clean_up_tokenization_spaces"] = false;
  cfg["eos_token"] = tt.eos;
  cfg["errors"] = "replace";
  cfg["pad_token"] = tt.pad;
  cfg["tokenizer_class"] = "PreTrainedTokenizerFast";
  cfg["unk_token"] = nullptr;

  std::filesystem::create_directories(dir);
  const std::filesystem::path d(dir);
  write_file_atomic((d / "tokenizer.json").string(), tj.dump(2) + "\n");
  write_file_atomic((d / "tokenizer_config.json").string(), cfg.dump(2) + "\n");
}

TokenizerTrainSummary train_tokenizer(const std::vector<std::string>& files, const std::string& out_dir,
                                      const TokenizerTrainOptions& options) {
  if (files.empty()) throw Error("tokenizer train: no input files");
  using Clock = std::chrono::steady_clock;
  BpeTrainerOptions bo;
  bo.vocab_size = options.vocab_size;
  bo.min_frequency = options.min_frequency;
  bo.special_tokens = special_tokens_for(options.files);
  bo.nfc = options.files.nfc;
  bo.num_threads = options.num_threads;
  BpeTrainer trainer(bo);

  TokenizerTrainSummary sum;
  auto t0 = Clock::now();
  {
    int64_t total = 0;
    for (const auto& f : files) {
      std::error_code ec;
      auto n = std::filesystem::file_size(f, ec);
      if (ec) throw Error(f + ": cannot open (" + ec.message() + ")");
      total += int64_t(n);
    }
    std::unique_ptr<Progress> bar;
    if (options.show_progress) bar = std::make_unique<Progress>("reading", total, "bytes");
    int64_t before = 0;
    for (const auto& f : files) {
      trainer.feed_file(f, [&](int64_t n) {
        if (bar) bar->update(before + n);
      });
      before += int64_t(std::filesystem::file_size(f));
    }
  }
  auto t1 = Clock::now();
  if (trainer.num_words() == 0) throw Error("tokenizer train: the input files hold no text");
  BpeModel model;
  {
    std::unique_ptr<Progress> bar;
    const int64_t target = options.vocab_size - 256 - int64_t(bo.special_tokens.size());
    if (options.show_progress) bar = std::make_unique<Progress>("merges", target, "merges");
    model = trainer.train([&](int64_t n) {
      if (bar) bar->update(n);
    });
  }
  auto t2 = Clock::now();
  write_bpe_tokenizer(out_dir, model, options.files);
  sum.bytes = trainer.num_bytes();
  sum.words = trainer.num_words();
  sum.vocab_size = model.size();
  sum.merges = int64_t(model.merges.size());
  sum.seconds_feed = std::chrono::duration<double>(t1 - t0).count();
  sum.seconds_train = std::chrono::duration<double>(t2 - t1).count();
  return sum;
}

}  // namespace finmoe
