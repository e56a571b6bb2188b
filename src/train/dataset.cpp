// Training batches from text and SFT corpora (include/finmoe/dataset.h).
//
// Construction indexes every document (file, byte offset, line) without
// keeping any text. A Stream walks its documents in a per-epoch order (a
// seeded shuffle), reads each one by its offset (plain text in blocks),
// tokenizes it and packs the tokens into rows of T+1; a shuffle buffer of
// rows decorrelates neighbouring rows. The mixer draws each row of a batch
// from the pretraining or the instruction stream by a seeded coin flip.
//
// Everything random comes from SplitMix64 generators whose one-word state is
// part of state(); the epoch order is recomputed from (seed, epoch). A row is
// always built from the stream position alone (no partial row is carried
// between rows), so state() is small: position + buffered rows + generators.
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <numeric>
#include <optional>
#include <string_view>

#include <nlohmann/json.hpp>

#include "finmoe/dataset.h"
#include "train/dataset_size.h"
#include "finmoe/chat_template.h"
#include "finmoe/config.h"
#include "finmoe/error.h"
#include "tokenizer/utf8.h"

namespace finmoe {

namespace {

using json = nlohmann::json;

constexpr int kStateVersion = 1;

// SplitMix64 (Steele et al.): one 64-bit word of state, good enough for
// shuffles and coin flips, and the same numbers on every platform.
struct Rng {
  uint64_t state = 0;
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n), n > 0 (multiply-shift with rejection: no modulo bias).
  uint64_t below(uint64_t n) {
    unsigned __int128 m = static_cast<unsigned __int128>(next()) * n;
    if (uint64_t(m) < n) {
      const uint64_t threshold = (0 - n) % n;
      while (uint64_t(m) < threshold) m = static_cast<unsigned __int128>(next()) * n;
    }
    return uint64_t(m >> 64);
  }
  double uniform() { return double(next() >> 11) * 0x1.0p-53; }  // [0, 1)
};

// Independent seeds for the generators derived from the user's seed.
uint64_t derive_seed(uint64_t seed, uint64_t what, uint64_t epoch = 0) {
  Rng r{seed ^ (what * 0xD1B54A32D192ED03ull)};
  r.state ^= r.next() + epoch * 0x8CB92BA72F3D8DD7ull;
  return r.next();
}

enum class Format { Auto, Text, Sft };

bool blank(std::string_view s) { return s.find_first_not_of(" \t\r\n") == std::string_view::npos; }

// A FILE* with POSIX getline; closes itself.
class InFile {
 public:
  explicit InFile(const std::string& path) : path_(path), f_(std::fopen(path.c_str(), "rb")) {
    if (!f_) throw Error(path + ": cannot open the data file (" + std::strerror(errno) + ")");
  }
  ~InFile() {
    std::free(buf_);
    if (f_) std::fclose(f_);
  }
  InFile(const InFile&) = delete;
  InFile& operator=(const InFile&) = delete;
  void seek(uint64_t offset) {
    if (::fseeko(f_, off_t(offset), SEEK_SET) != 0)
      throw Error(path_ + ": cannot seek to byte " + std::to_string(offset));
  }
  // The next line with its '\n'; false at the end of the file.
  bool line(std::string_view& out) {
    ssize_t n = ::getline(&buf_, &cap_, f_);
    if (n < 0) {
      if (std::ferror(f_)) throw Error(path_ + ": read error");
      return false;
    }
    out = std::string_view(buf_, size_t(n));
    return true;
  }

 private:
  std::string path_;
  std::FILE* f_;
  char* buf_ = nullptr;
  size_t cap_ = 0;
};

// How an SFT record spells its conversation (DataConfig::sft_format).
enum class SftLayout { Auto, Messages, Alpaca, ShareGpt, PromptCompletion };

SftLayout parse_sft_layout(const std::string& f) {
  if (f == "auto") return SftLayout::Auto;
  if (f == "messages") return SftLayout::Messages;
  if (f == "alpaca") return SftLayout::Alpaca;
  if (f == "sharegpt") return SftLayout::ShareGpt;
  if (f == "prompt_completion") return SftLayout::PromptCompletion;
  throw Error("DataConfig.sft_format '" + f +
              "' unknown (auto, messages, alpaca, sharegpt, prompt_completion)");
}

const char* layout_name(SftLayout l) {
  switch (l) {
    case SftLayout::Auto: return "auto";
    case SftLayout::Messages: return "messages";
    case SftLayout::Alpaca: return "alpaca";
    case SftLayout::ShareGpt: return "sharegpt";
    case SftLayout::PromptCompletion: return "prompt_completion";
  }
  return "?";
}

// The layout of `rec`: `layout` unless auto, else the one whose field it has
// (messages, conversations, instruction, prompt/completion); nullopt if none.
std::optional<SftLayout> record_layout(const json& rec, SftLayout layout) {
  if (layout != SftLayout::Auto) return layout;
  if (!rec.is_object()) return std::nullopt;
  if (rec.contains("messages")) return SftLayout::Messages;
  if (rec.contains("conversations")) return SftLayout::ShareGpt;
  if (rec.contains("instruction")) return SftLayout::Alpaca;
  if (rec.contains("prompt") || rec.contains("completion")) return SftLayout::PromptCompletion;
  return std::nullopt;
}

// rec[key] as a string; `optional` ones may be absent or null ("").
std::string string_field(const json& rec, const char* key, const std::string& where,
                         SftLayout layout, bool optional = false) {
  const auto it = rec.find(key);
  if (it == rec.end() || it->is_null()) {
    if (optional) return "";
    throw Error(where + ": expected a string field '" + key + "' (" + layout_name(layout) +
                " record)");
  }
  if (!it->is_string())
    throw Error(where + ": '" + key + "' must be a string, got " + it->type_name());
  return it->get<std::string>();
}

// A list of {"role", "content"} objects (`name` names it in errors).
void append_message_list(const json& ms, const std::string& where, const std::string& name,
                         std::vector<ChatMessage>& out) {
  if (!ms.is_array()) throw Error(where + ": '" + name + "' must be an array");
  for (size_t i = 0; i < ms.size(); ++i) {
    const json& m = ms[i];
    const std::string at = where + ": " + name + "[" + std::to_string(i) + "]";
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
      throw Error(at + ": expected an object with a string field 'role'");
    if (!m.contains("content") || !m["content"].is_string())
      throw Error(at + ": expected a string field 'content'");
    ChatMessage cm{m["role"].get<std::string>(), m["content"].get<std::string>()};
    if (cm.role != "system" && cm.role != "user" && cm.role != "assistant")
      throw Error(at + ".role '" + cm.role + "' not supported (system, user, assistant)");
    out.push_back(std::move(cm));
  }
}

// The conversation of an SFT record in any layout, as chat messages:
//   alpaca: [system], user = instruction (+ "\n" + input when not empty), assistant = output
//   sharegpt: from human|user -> user, gpt|assistant -> assistant, system -> system
//   prompt_completion: strings -> user prompt + assistant completion; lists -> prompt + completion
// Throws naming `where` and the field for a malformed record.
std::vector<ChatMessage> parse_messages(const json& rec, SftLayout layout, const std::string& where) {
  if (!rec.is_object()) throw Error(where + ": expected a JSON object");
  std::vector<ChatMessage> out;
  switch (layout) {
    case SftLayout::Auto:
    case SftLayout::Messages:
      if (!rec.contains("messages")) throw Error(where + ": expected an array 'messages'");
      append_message_list(rec["messages"], where, "messages", out);
      break;
    case SftLayout::Alpaca: {
      const std::string system = string_field(rec, "system", where, layout, true);
      std::string user = string_field(rec, "instruction", where, layout);
      const std::string input = string_field(rec, "input", where, layout, true);
      const std::string output = string_field(rec, "output", where, layout);
      if (!input.empty()) user += "\n" + input;
      if (!system.empty()) out.push_back({"system", system});
      out.push_back({"user", std::move(user)});
      out.push_back({"assistant", output});
      break;
    }
    case SftLayout::ShareGpt: {
      const auto it = rec.find("conversations");
      if (it == rec.end() || !it->is_array())
        throw Error(where + ": expected an array 'conversations' (sharegpt record)");
      for (size_t i = 0; i < it->size(); ++i) {
        const json& m = (*it)[i];
        const std::string at = where + ": conversations[" + std::to_string(i) + "]";
        if (!m.is_object() || !m.contains("from") || !m["from"].is_string())
          throw Error(at + ": expected an object with a string field 'from'");
        if (!m.contains("value") || !m["value"].is_string())
          throw Error(at + ": expected a string field 'value'");
        const std::string from = m["from"].get<std::string>();
        std::string role;
        if (from == "human" || from == "user") role = "user";
        else if (from == "gpt" || from == "assistant") role = "assistant";
        else if (from == "system") role = "system";
        else
          throw Error(at + ".from '" + from + "' not supported (human, gpt, system)");
        out.push_back({role, m["value"].get<std::string>()});
      }
      break;
    }
    case SftLayout::PromptCompletion: {
      const auto p = rec.find("prompt"), c = rec.find("completion");
      if (p == rec.end() || c == rec.end())
        throw Error(where + ": expected fields 'prompt' and 'completion' (prompt_completion record)");
      if (p->is_string() && c->is_string()) {
        out.push_back({"user", p->get<std::string>()});
        out.push_back({"assistant", c->get<std::string>()});
      } else if (p->is_array() && c->is_array()) {
        append_message_list(*p, where, "prompt", out);
        const size_t first = out.size();
        append_message_list(*c, where, "completion", out);
        if (std::none_of(out.begin() + long(first), out.end(),
                         [](const ChatMessage& m) { return m.role == "assistant"; }))
          throw Error(where + ": 'completion' has no assistant message");
      } else {
        throw Error(where + ": 'prompt' and 'completion' must both be strings or both message "
                            "lists, got " + std::string(p->type_name()) + " and " + c->type_name());
      }
      break;
    }
  }
  if (std::none_of(out.begin(), out.end(), [](const ChatMessage& m) { return m.role == "assistant"; }))
    throw Error(where + ": " + (layout == SftLayout::ShareGpt ? "conversations" : "messages") +
                " has no assistant turn (nothing to learn)");
  return out;
}

enum class Kind { Text, Sft, Empty };

// Checks one JSONL record against the format; Empty for a text record with "".
Kind classify(const json& rec, Format format, SftLayout layout, const std::string& where) {
  const bool text = rec.is_object() && rec.contains("text");
  if (format == Format::Text || (format == Format::Auto && text)) {
    if (!text || !rec["text"].is_string())
      throw Error(where + (format == Format::Text ? ": expected an object with a string field 'text'"
                                                  : ": 'text' must be a string"));
    return rec["text"].get_ref<const std::string&>().empty() ? Kind::Empty : Kind::Text;
  }
  const std::optional<SftLayout> l = record_layout(rec, layout);
  if (!l)
    throw Error(where +
                (format == Format::Sft ? ": expected an object with an array 'messages'"
                                       : ": expected an object with a string field 'text' or an "
                                         "array 'messages'") +
                " (or an SFT record in another layout: 'conversations', 'instruction' + 'output', "
                "'prompt' + 'completion')");
  parse_messages(rec, *l, where);
  return Kind::Sft;
}

json parse_line(std::string_view line, const std::string& where) {
  return parse_json(line, where);
}

// ---- the document index -----------------------------------------------------------

struct SourceFile {
  std::string path;
  bool jsonl = false;
  uint64_t size = 0;
};

struct DocRef {
  uint64_t offset;  // of the document's first byte (JSONL: its line)
  uint64_t line;    // 1-based, for messages
  uint32_t file;
};

struct Corpus {
  std::vector<SourceFile> files;
  std::vector<DocRef> docs;
  Format format = Format::Auto;
  SftLayout layout = SftLayout::Auto;
  bool paragraphs = false;
  bool has_sft = false;
};

Corpus index_corpus(const std::vector<std::string>& paths, Format format, SftLayout layout,
                    bool paragraphs, const std::string& what) {
  Corpus c;
  c.format = format;
  c.layout = layout;
  c.paragraphs = paragraphs;
  for (const auto& path : paths) {
    const uint32_t fi = uint32_t(c.files.size());
    struct stat st {};
    InFile in(path);  // names an unreadable file first
    if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode))
      throw Error(path + ": not a regular file");
    SourceFile sf{path, path.ends_with(".jsonl"), uint64_t(st.st_size)};
    c.files.push_back(sf);
    std::string_view line;
    uint64_t off = 0, ln = 0;
    if (sf.jsonl) {
      while (in.line(line)) {
        ++ln;
        const uint64_t here = off;
        off += line.size();
        if (blank(line)) continue;
        const std::string where = path + ":" + std::to_string(ln);
        Kind k = classify(parse_line(line, where), format, layout, where);
        if (k == Kind::Empty) continue;
        c.has_sft |= k == Kind::Sft;
        c.docs.push_back({here, ln, fi});
      }
    } else if (format == Format::Sft) {
      throw Error(path + ": a plain text file cannot hold SFT examples (format 'sft' needs .jsonl "
                         "SFT records)");
    } else if (!paragraphs) {
      if (sf.size > 0) c.docs.push_back({0, 1, fi});
    } else {
      bool in_par = false;
      while (in.line(line)) {
        ++ln;
        if (blank(line)) in_par = false;
        else if (!in_par) {
          in_par = true;
          c.docs.push_back({off, ln, fi});
        }
        off += line.size();
      }
    }
  }
  if (c.docs.empty()) {
    std::string list;
    for (const auto& p : paths) list += (list.empty() ? "" : ", ") + p;
    throw Error(what + ": no documents in " + (list.empty() ? "(no files)" : list) +
                " (empty files, blank lines or empty texts only)");
  }
  if (c.docs.size() > 0xFFFFFFFFull) throw Error(what + ": more than 2^32 documents");
  return c;
}

// ---- reading and tokenizing documents ----------------------------------------------

// A document, or a block of a long plain-text document, as token ids.
struct Block {
  std::vector<int32_t> ids;
  std::vector<uint8_t> target;  // per id: 1 = a loss target (predicted from the token before)
  bool atomic = false;          // an SFT example: packed whole (or truncated), never split
  uint64_t next = 0;            // offset of the document's next block; 0 = the document ends here
};

struct Tokens {
  const Tokenizer* tok;
  int32_t eos;
  int32_t pad;
  std::optional<int32_t> bos;  // prepended to text documents (add_bos_token)
  std::optional<ChatTemplateKind> chat;
};

class Reader {
 public:
  Reader(const Corpus& c, const Tokens& t, int64_t block_bytes)
      : corpus_(c), tok_(t), block_bytes_(uint64_t(block_bytes)) {}

  // The block of document `d` that starts at byte `at`.
  Block read(const DocRef& d, uint64_t at) {
    const SourceFile& sf = corpus_.files[d.file];
    InFile& in = file(d.file);
    in.seek(at);
    std::string_view line;
    Block b;
    if (sf.jsonl) {
      const std::string where = sf.path + ":" + std::to_string(d.line);
      if (!in.line(line)) throw Error(where + ": the file ended early (changed since it was indexed?)");
      json rec = parse_line(line, where);
      Kind k = classify(rec, corpus_.format, corpus_.layout, where);
      if (k == Kind::Sft) {
        ChatTokens ct;
        try {
          ct = tokenize_chat(*tok_.tok, parse_messages(rec, *record_layout(rec, corpus_.layout), where),
                             tok_.chat);
        } catch (const Error& e) {
          throw Error(where + ": " + e.what());
        }
        b.ids = std::move(ct.ids);
        b.target = std::move(ct.loss_mask);
        b.atomic = true;
        b.ids.push_back(tok_.eos);  // separator; not a target of an SFT example
        b.target.push_back(0);
      } else {
        text_ids(rec["text"].get_ref<const std::string&>(), true, true, where, b);
      }
      return b;
    }
    // Plain text: whole lines up to about block_bytes, cut only in front of a
    // line where no pre-tokenizer word spans the cut (tok::can_start_block).
    std::string text;
    uint64_t pos = at;
    bool ends = true;
    while (in.line(line)) {
      if (corpus_.paragraphs && blank(line)) break;
      if (text.size() >= block_bytes_ && tok::can_start_block(line)) {
        ends = false;
        break;
      }
      text.append(line);
      pos += line.size();
    }
    b.next = ends ? 0 : pos;
    const std::string where = sf.path + " (bytes " + std::to_string(at) + ".." + std::to_string(pos) + ")";
    text_ids(text, at == d.offset, ends, where, b);
    return b;
  }

 private:
  void text_ids(std::string_view text, bool first, bool last, const std::string& where, Block& b) {
    if (size_t bad = tok::utf8_first_invalid(text); bad != std::string_view::npos)
      throw Error(where + ": text is not valid UTF-8 (byte " + std::to_string(bad) + " of the text)");
    if (first && tok_.bos) b.ids.push_back(*tok_.bos);
    std::vector<int32_t> ids = tok_.tok->encode(text, /*add_special_tokens=*/false);
    b.ids.insert(b.ids.end(), ids.begin(), ids.end());
    if (last) b.ids.push_back(tok_.eos);
    b.target.assign(b.ids.size(), 1);
  }

  InFile& file(uint32_t i) {
    for (auto& [idx, f] : open_)
      if (idx == i) return *f;
    if (open_.size() >= 16) open_.erase(open_.begin());  // few open files, oldest closed first
    open_.emplace_back(i, std::make_unique<InFile>(corpus_.files[i].path));
    return *open_.back().second;
  }

  const Corpus& corpus_;
  Tokens tok_;
  uint64_t block_bytes_;
  std::vector<std::pair<uint32_t, std::unique_ptr<InFile>>> open_;
};

// ---- packing ----------------------------------------------------------------------

// One packed row of T+1 tokens: inputs x[0..T), labels from x[1..T].
struct Row {
  std::vector<int32_t> x;
  std::vector<uint8_t> target;  // x[i] is a loss target (for position i-1)
  std::vector<int32_t> doc;     // document number within the row: 0, 1, ...
  size_t pad = 0;               // the last `pad` tokens are padding (an SFT row's end)
};

json row_to_json(const Row& r) {
  std::string target(r.target.size(), '0');
  for (size_t i = 0; i < r.target.size(); ++i)
    if (r.target[i]) target[i] = '1';
  json runs = json::array();  // doc ids are 0,1,2,... in order: their run lengths suffice
  for (size_t i = 0; i < r.doc.size();) {
    size_t j = i;
    while (j < r.doc.size() && r.doc[j] == r.doc[i]) ++j;
    runs.push_back(j - i);
    i = j;
  }
  json j = {{"x", r.x}, {"target", target}, {"docs", runs}};
  if (r.pad) j["pad"] = r.pad;
  return j;
}

Row row_from_json(const json& j, size_t L, const std::string& where) {
  Row r;
  try {
    r.x = j.at("x").get<std::vector<int32_t>>();
    const std::string t = j.at("target").get<std::string>();
    for (char c : t) r.target.push_back(c == '1');
    int32_t id = 0;
    for (const auto& n : j.at("docs")) {
      r.doc.insert(r.doc.end(), n.get<size_t>(), id);
      ++id;
    }
    r.pad = j.value("pad", size_t{0});  // absent in states written before padding was tracked
  } catch (const json::exception& e) {
    throw Error(where + ": malformed buffered row: " + e.what());
  }
  if (r.x.size() != L || r.target.size() != L || r.doc.size() != L)
    throw Error(where + ": buffered row of " + std::to_string(r.x.size()) + " tokens, expected " +
                std::to_string(L));
  return r;
}

struct StreamParams {
  int64_t seq_len;
  bool shuffle;
  uint64_t seed;
  uint64_t id;  // 0 = pretraining stream, 1 = instruction stream
  size_t buffer;
};

class Stream {
 public:
  Stream(Corpus corpus, const Tokens& t, const StreamParams& p, int64_t block_bytes)
      : corpus_(std::move(corpus)), reader_(corpus_, t, block_bytes), p_(p), L_(size_t(p.seq_len) + 1),
        pad_(t.pad), buffer_rng_{derive_seed(p.seed, 10 + p.id)} {
    start_epoch(0);
  }

  Row next() {
    if (!p_.shuffle || p_.buffer == 0) return pack();
    while (buffer_.size() < p_.buffer) buffer_.push_back(pack());
    const size_t i = size_t(buffer_rng_.below(buffer_.size()));
    Row r = std::move(buffer_[i]);
    buffer_[i] = pack();
    return r;
  }

  // Rows packed from here until the pass over the documents ends (one
  // running into the next pass counts); moves the stream.
  int64_t rows_to_epoch_end() {
    const uint64_t epoch = epoch_;
    int64_t n = 0;
    while (epoch_ == epoch && !at_epoch_end()) {
      pack();
      ++n;
    }
    return n;
  }

  json state() const {
    json buf = json::array();
    for (const auto& r : buffer_) buf.push_back(row_to_json(r));
    return {{"epoch", epoch_}, {"document", pos_},    {"block_offset", block_at_},
            {"consumed", consumed_}, {"rng", buffer_rng_.state}, {"buffer", buf}};
  }

  void restore(const json& s, const std::string& where) {
    try {
      const uint64_t epoch = s.at("epoch").get<uint64_t>();
      const size_t pos = s.at("document").get<size_t>();
      if (pos >= corpus_.docs.size())
        throw Error(where + ".document " + std::to_string(pos) + " is beyond the " +
                    std::to_string(corpus_.docs.size()) + " documents");
      std::vector<Row> buffer;
      for (const auto& r : s.at("buffer")) buffer.push_back(row_from_json(r, L_, where));
      if (buffer.size() > p_.buffer) throw Error(where + ": more buffered rows than shuffle_buffer");
      start_epoch(epoch);
      pos_ = pos;
      block_at_ = s.at("block_offset").get<uint64_t>();
      consumed_ = s.at("consumed").get<size_t>();
      buffer_rng_.state = s.at("rng").get<uint64_t>();
      buffer_ = std::move(buffer);
      block_.reset();
    } catch (const json::exception& e) {
      throw Error(where + ": malformed state: " + e.what());
    }
  }

 private:
  void start_epoch(uint64_t epoch) {
    epoch_ = epoch;
    const size_t n = corpus_.docs.size();
    order_.resize(n);
    std::iota(order_.begin(), order_.end(), 0u);
    if (p_.shuffle) {  // Fisher-Yates with this epoch's generator
      Rng r{derive_seed(p_.seed, p_.id, epoch)};
      for (size_t i = n; i-- > 1;) std::swap(order_[i], order_[size_t(r.below(i + 1))]);
    }
    pos_ = 0;
    block_at_ = corpus_.docs[order_[0]].offset;
    consumed_ = 0;
    block_.reset();
  }

  const DocRef& doc() const { return corpus_.docs[order_[pos_]]; }

  // Every token of the pass is packed: the last document's last block is
  // used up (a row that ended exactly there moves on to the next pass only
  // when the next row is packed).
  bool at_epoch_end() const {
    return pos_ + 1 == order_.size() && block_ && !block_->atomic && block_->next == 0 &&
           consumed_ == block_->ids.size();
  }

  const Block& block() {
    if (!block_) block_ = reader_.read(doc(), block_at_);
    return *block_;
  }

  void next_doc() {
    if (++pos_ == order_.size()) {
      start_epoch(epoch_ + 1);
    } else {
      block_at_ = doc().offset;
      consumed_ = 0;
      block_.reset();
    }
  }

  // Builds one row from the current position. Text documents flow across
  // rows; an SFT example goes whole into a row (truncated to T+1 tokens when
  // longer; dropped if no assistant token survives), else the row is padded
  // and the example opens the next row.
  Row pack() {
    Row r;
    r.x.reserve(L_);
    r.target.reserve(L_);
    r.doc.reserve(L_);
    int32_t next_id = 0, cur_id = -1;  // cur_id: the current document's number in this row
    size_t dropped = 0;
    auto append = [&](const Block& b, size_t from, size_t n) {
      if (cur_id < 0) cur_id = next_id++;
      r.x.insert(r.x.end(), b.ids.begin() + long(from), b.ids.begin() + long(from + n));
      r.target.insert(r.target.end(), b.target.begin() + long(from), b.target.begin() + long(from + n));
      r.doc.insert(r.doc.end(), n, cur_id);
    };
    while (r.x.size() < L_) {
      const Block& b = block();
      if (b.atomic) {
        const size_t n = std::min(b.ids.size(), L_);
        if (std::none_of(b.target.begin(), b.target.begin() + long(n), [](uint8_t t) { return t; })) {
          if (++dropped > corpus_.docs.size())
            throw Error("no SFT example has an assistant token within seq_len " +
                        std::to_string(L_ - 1) + " tokens");
          next_doc();
          cur_id = -1;
          continue;
        }
        if (r.x.size() + n > L_) {  // pad: padding is one more "document" without targets
          const size_t k = L_ - r.x.size();
          r.x.insert(r.x.end(), k, pad_);
          r.target.insert(r.target.end(), k, 0);
          r.doc.insert(r.doc.end(), k, next_id);
          r.pad = k;
          break;
        }
        append(b, 0, n);
        next_doc();
        cur_id = -1;
        continue;
      }
      if (consumed_ == b.ids.size()) {
        if (b.next != 0) {  // the same document continues in its next block
          block_at_ = b.next;
          consumed_ = 0;
          block_.reset();
        } else {
          next_doc();
          cur_id = -1;
        }
        continue;
      }
      const size_t n = std::min(b.ids.size() - consumed_, L_ - r.x.size());
      append(b, consumed_, n);
      consumed_ += n;
    }
    return r;
  }

  Corpus corpus_;
  Reader reader_;
  StreamParams p_;
  size_t L_;
  int32_t pad_;
  // position: document order_[pos_] of epoch epoch_, its block at byte
  // block_at_, of which consumed_ tokens are packed already
  uint64_t epoch_ = 0;
  size_t pos_ = 0;
  uint64_t block_at_ = 0;
  size_t consumed_ = 0;
  std::vector<uint32_t> order_;
  std::optional<Block> block_;  // cache of the block at the position
  Rng buffer_rng_;
  std::vector<Row> buffer_;
};

// ---- the batch source --------------------------------------------------------------

Format parse_format(const std::string& f) {
  if (f == "auto") return Format::Auto;
  if (f == "text") return Format::Text;
  if (f == "sft") return Format::Sft;
  throw Error("DataConfig.format '" + f + "' unknown (auto, text, sft)");
}

json file_list(const std::vector<std::string>& paths) {
  json out = json::array();
  for (const auto& p : paths) {
    struct stat st {};
    out.push_back({{"path", p}, {"bytes", ::stat(p.c_str(), &st) == 0 ? uint64_t(st.st_size) : 0}});
  }
  return out;
}

class DataSource : public BatchSource {
 public:
  DataSource(const DataConfig& c, const Tokenizer& tok) : c_(c) {
    if (c.seq_len < 1) throw Error("DataConfig.seq_len must be >= 1, got " + std::to_string(c.seq_len));
    if (c.batch_size < 1)
      throw Error("DataConfig.batch_size must be >= 1, got " + std::to_string(c.batch_size));
    if (c.seq_len > kMaxSeqLen || c.batch_size > kMaxBatchSize ||
        c.seq_len * c.batch_size > kMaxBatchTokens)
      throw Error("DataConfig: seq_len " + std::to_string(c.seq_len) + " x batch_size " +
                  std::to_string(c.batch_size) + " is too large (at most " +
                  std::to_string(kMaxSeqLen) + " x " + std::to_string(kMaxBatchSize) + " and " +
                  std::to_string(kMaxBatchTokens) + " tokens)");
    if (c.shuffle_buffer < 0 || c.shuffle_buffer > kMaxBatchSize)
      throw Error("DataConfig.shuffle_buffer must be in [0, " + std::to_string(kMaxBatchSize) + "]");
    if (c.text_block_bytes < 1 || c.text_block_bytes > kMaxTextBlockBytes)
      throw Error("DataConfig.text_block_bytes must be in [1, " +
                  std::to_string(kMaxTextBlockBytes) + "]");
    if (c.text_documents != "file" && c.text_documents != "paragraph")
      throw Error("DataConfig.text_documents '" + c.text_documents + "' unknown (file, paragraph)");
    const Format format = parse_format(c.format);
    const SftLayout layout = parse_sft_layout(c.sft_format);
    if (!(c.instruction_ratio >= 0.0 && c.instruction_ratio <= 1.0))
      throw Error("DataConfig.instruction_ratio must be in [0, 1], got " +
                  std::to_string(c.instruction_ratio));
    if (c.instruction_ratio > 0 && c.instruction_files.empty())
      throw Error("DataConfig.instruction_ratio > 0 needs instruction_files");
    if (c.instruction_ratio == 0 && !c.instruction_files.empty())
      throw Error("DataConfig.instruction_files are given but instruction_ratio is 0");
    if (c.instruction_ratio < 1 && c.files.empty()) throw Error("DataConfig.files: no training files");
    if (c.instruction_ratio == 1 && !c.files.empty())
      throw Error("DataConfig.instruction_ratio 1 draws only from instruction_files; files would be unused");

    Tokens t;
    t.tok = &tok;
    auto eos = tok.eos_id();
    if (!eos)
      throw Error("the tokenizer has no eos_token (tokenizer_config.json); packing puts it between documents");
    t.eos = *eos;
    auto pad = tok.config().pad_token.empty() ? std::nullopt : tok.token_to_id(tok.config().pad_token);
    t.pad = pad ? *pad : *eos;
    if (tok.config().add_bos_token) t.bos = tok.bos_id();

    const bool paragraphs = c.text_documents == "paragraph";
    std::optional<Corpus> main, instr;
    if (c.instruction_ratio < 1)
      main = index_corpus(c.files, format, layout, paragraphs, "DataConfig.files");
    if (c.instruction_ratio > 0)
      instr = index_corpus(c.instruction_files, Format::Sft, layout, paragraphs,
                           "DataConfig.instruction_files");
    if (!c.chat_template.empty()) {
      t.chat = chat_template_from_name(c.chat_template);
    } else if ((main && main->has_sft) || instr) {
      // the tokenizer's own template (t.chat unset); checked here, not at the first record
      try {
        ChatTemplate::from_tokenizer(tok);
      } catch (const Error& e) {
        throw Error(std::string("the data holds SFT records: ") + e.what());
      }
    }
    auto params = [&](uint64_t id) {
      return StreamParams{c.seq_len, c.shuffle, c.seed, id, size_t(c.shuffle_buffer)};
    };
    if (main) main_ = std::make_unique<Stream>(std::move(*main), t, params(0), c.text_block_bytes);
    if (instr) instr_ = std::make_unique<Stream>(std::move(*instr), t, params(1), c.text_block_bytes);
    mix_.state = derive_seed(c.seed, 2);

    // What a state must have been saved under. batch_size and document_mask
    // only shape batches out of the same rows, so they may change on resume.
    config_ = {{"files", file_list(c.files)},
               {"instruction_files", file_list(c.instruction_files)},
               {"format", c.format},
               {"instruction_ratio", c.instruction_ratio},
               {"seq_len", c.seq_len},
               {"shuffle", c.shuffle},
               {"seed", c.seed},
               {"chat_template", c.chat_template},
               {"text_documents", c.text_documents},
               {"shuffle_buffer", c.shuffle_buffer},
               {"text_block_bytes", c.text_block_bytes},
               {"tokenizer", {{"vocab_size", tok.vocab_size()}, {"eos_id", t.eos}, {"pad_id", t.pad}}}};
    // only when set: states saved before sft_format existed read as "auto"
    if (c.sft_format != "auto") config_["sft_format"] = c.sft_format;
  }

  TrainBatch next() override {
    const int64_t B = c_.batch_size, T = c_.seq_len;
    auto tokens = torch::empty({B, T}, torch::kInt64);  // [B,T]
    auto labels = torch::empty({B, T}, torch::kInt64);  // [B,T]
    torch::Tensor docs;
    if (c_.document_mask) docs = torch::empty({B, T}, torch::kInt64);  // [B,T]
    int64_t* tp = tokens.data_ptr<int64_t>();
    int64_t* lp = labels.data_ptr<int64_t>();
    int64_t* dp = c_.document_mask ? docs.data_ptr<int64_t>() : nullptr;
    auto padding = torch::zeros({B, T}, torch::kBool);  // [B,T]
    bool* pp = padding.data_ptr<bool>();
    for (int64_t b = 0; b < B; ++b) {
      Row r = draw();
      for (int64_t t = 0; t < T; ++t) {
        pp[b * T + t] = size_t(t) + r.pad >= r.x.size();
        const size_t i = size_t(t);
        tp[b * T + t] = r.x[i];
        // x[t+1] is the label of position t unless it is no target, or lies
        // in another document when documents are masked.
        const bool label = r.target[i + 1] && (!c_.document_mask || r.doc[i] == r.doc[i + 1]);
        lp[b * T + t] = label ? r.x[i + 1] : -100;
        if (dp) dp[b * T + t] = r.doc[i];
      }
    }
    return {tokens, labels, docs, padding};
  }

  int64_t rows_per_epoch() {
    if (main_ && instr_)
      throw Error("DataConfig: an epoch of two mixed streams (instruction_ratio " +
                  std::to_string(c_.instruction_ratio) + ") is not defined");
    return (main_ ? main_ : instr_)->rows_to_epoch_end();
  }

  json state() const override {
    json s = {{"version", kStateVersion}, {"config", config_}, {"mix_rng", mix_.state}};
    if (main_) s["pretraining"] = main_->state();
    if (instr_) s["instruction"] = instr_->state();
    return s;
  }

  void restore(const json& s) override {
    if (!s.is_object() || !s.contains("version") || s["version"] != kStateVersion)
      throw Error("BatchSource::restore: expected a data state of version " +
                  std::to_string(kStateVersion));
    if (!s.contains("config") || !s["config"].is_object())
      throw Error("BatchSource::restore: the state has no config");
    for (const auto& [key, value] : config_.items()) {
      const json& saved = s["config"].contains(key) ? s["config"][key] : json();
      if (saved != value)
        throw Error("BatchSource::restore: " + key + " differs: the state was saved with " +
                    saved.dump() + ", this source has " + value.dump());
    }
    try {
      if (main_) main_->restore(s.at("pretraining"), "data state.pretraining");
      if (instr_) instr_->restore(s.at("instruction"), "data state.instruction");
      mix_.state = s.at("mix_rng").get<uint64_t>();
    } catch (const json::exception& e) {
      throw Error(std::string("BatchSource::restore: malformed state: ") + e.what());
    }
  }

 private:
  Row draw() {
    if (!instr_) return main_->next();
    if (!main_) return instr_->next();
    return mix_.uniform() < c_.instruction_ratio ? instr_->next() : main_->next();
  }

  DataConfig c_;
  std::unique_ptr<Stream> main_, instr_;
  Rng mix_;
  json config_;
};

}  // namespace

std::unique_ptr<BatchSource> make_batch_source(const DataConfig& config, const Tokenizer& tokenizer) {
  return std::make_unique<DataSource>(config, tokenizer);
}

int64_t rows_per_epoch(const DataConfig& config, const Tokenizer& tokenizer) {
  DataSource source(config, tokenizer);  // a fresh stream: at the start of epoch 0
  return source.rows_per_epoch();
}

}  // namespace finmoe
