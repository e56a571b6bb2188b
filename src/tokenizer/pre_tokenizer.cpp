#include "tokenizer/pre_tokenizer.h"

#include <nlohmann/json.hpp>

#include "finmoe/error.h"
#include "tokenizer/regex.h"
#include "tokenizer/utf8.h"

namespace finmoe::tok {

namespace {

const char* const kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
const char* const kMetaspace = "\xE2\x96\x81";  // U+2581 "▁"

std::string get_string(const nlohmann::json& j, const char* key, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_string()) throw Error(where + "." + key + ": missing or not a string");
  return it->get<std::string>();
}

bool get_bool(const nlohmann::json& j, const char* key, bool dflt) {
  auto it = j.find(key);
  return it != j.end() && it->is_boolean() ? it->get<bool>() : dflt;
}

enum class Behavior { Isolated, Removed, MergedWithPrevious, MergedWithNext, Contiguous };

// Splits `p` at the matches of `re`, keeping them per `behavior` (HF SplitDelimiterBehavior).
void split_piece(const Regex& re, Behavior behavior, bool invert, Piece& p,
                 std::vector<Piece>& out) {
  std::vector<std::pair<size_t, size_t>> m;
  re.find_all(p.text, m);
  struct Seg {
    size_t b, e;
    bool match;
  };
  std::vector<Seg> segs;
  size_t last = 0;
  for (auto [b, e] : m) {
    if (b > last) segs.push_back({last, b, invert});
    segs.push_back({b, e, !invert});
    last = e;
  }
  if (last < p.text.size()) segs.push_back({last, p.text.size(), invert});

  std::vector<std::pair<size_t, size_t>> ranges;
  switch (behavior) {
    case Behavior::Isolated:
      for (auto& s : segs) ranges.emplace_back(s.b, s.e);
      break;
    case Behavior::Removed:
      for (auto& s : segs)
        if (!s.match) ranges.emplace_back(s.b, s.e);
      break;
    case Behavior::MergedWithPrevious:  // a match ends the current piece
      for (size_t i = 0; i < segs.size(); ++i) {
        if (segs[i].match && !ranges.empty() && !(i > 0 && segs[i - 1].match))
          ranges.back().second = segs[i].e;
        else
          ranges.emplace_back(segs[i].b, segs[i].e);
      }
      break;
    case Behavior::MergedWithNext:  // a match starts a new piece
      for (size_t i = 0; i < segs.size(); ++i) {
        if (!segs[i].match && i > 0 && segs[i - 1].match)
          ranges.back().second = segs[i].e;
        else
          ranges.emplace_back(segs[i].b, segs[i].e);
      }
      break;
    case Behavior::Contiguous:
      for (size_t i = 0; i < segs.size(); ++i) {
        if (segs[i].match && i > 0 && segs[i - 1].match)
          ranges.back().second = segs[i].e;
        else
          ranges.emplace_back(segs[i].b, segs[i].e);
      }
      break;
  }
  for (auto [b, e] : ranges) out.push_back({p.text.substr(b, e - b), p.at_origin && b == 0});
}

class SplitPre : public PreTokenizer {
 public:
  SplitPre(const nlohmann::json& j, const std::string& where) {
    auto p = j.find("pattern");
    if (p == j.end() || !p->is_object()) throw Error(where + ".pattern: missing or not an object");
    if (p->contains("Regex"))
      re_ = std::make_unique<Regex>(get_string(*p, "Regex", where + ".pattern"), false,
                                    where + ".pattern");
    else if (p->contains("String"))
      re_ = std::make_unique<Regex>(get_string(*p, "String", where + ".pattern"), true,
                                    where + ".pattern");
    else
      throw Error(where + ".pattern: expected {\"Regex\": ...} or {\"String\": ...}");
    const std::string b = get_string(j, "behavior", where);
    if (b == "Isolated") behavior_ = Behavior::Isolated;
    else if (b == "Removed") behavior_ = Behavior::Removed;
    else if (b == "MergedWithPrevious") behavior_ = Behavior::MergedWithPrevious;
    else if (b == "MergedWithNext") behavior_ = Behavior::MergedWithNext;
    else if (b == "Contiguous") behavior_ = Behavior::Contiguous;
    else throw Error(where + ".behavior '" + b + "' not supported");
    invert_ = get_bool(j, "invert", false);
  }
  void apply(std::vector<Piece>& pieces) const override {
    std::vector<Piece> out;
    out.reserve(pieces.size() * 4);
    for (auto& p : pieces) split_piece(*re_, behavior_, invert_, p, out);
    pieces.swap(out);
  }

 private:
  std::unique_ptr<Regex> re_;
  Behavior behavior_ = Behavior::Isolated;
  bool invert_ = false;
};

class ByteLevelPre : public PreTokenizer {
 public:
  ByteLevelPre(const nlohmann::json& j, const std::string& where)
      : add_prefix_space_(get_bool(j, "add_prefix_space", true)),
        use_regex_(get_bool(j, "use_regex", true)) {
    if (use_regex_) re_ = std::make_unique<Regex>(kGpt2Pattern, false, where);
  }
  void apply(std::vector<Piece>& pieces) const override {
    const ByteLevelMap& map = ByteLevelMap::get();
    std::vector<Piece> split;
    for (auto& p : pieces) {
      if (add_prefix_space_ && (p.text.empty() || p.text[0] != ' ')) p.text = " " + p.text;
      if (use_regex_) split_piece(*re_, Behavior::Isolated, false, p, split);
      else split.push_back(std::move(p));
    }
    for (auto& p : split) p.text = map.encode(p.text);
    pieces.swap(split);
  }

 private:
  bool add_prefix_space_;
  bool use_regex_;
  std::unique_ptr<Regex> re_;
};

class MetaspacePre : public PreTokenizer {
 public:
  MetaspacePre(const nlohmann::json& j, const std::string& where) {
    replacement_ = j.contains("replacement") ? get_string(j, "replacement", where) : kMetaspace;
    if (j.contains("prepend_scheme")) {
      scheme_ = get_string(j, "prepend_scheme", where);
      if (scheme_ != "always" && scheme_ != "first" && scheme_ != "never")
        throw Error(where + ".prepend_scheme '" + scheme_ + "' not supported");
    } else {
      scheme_ = get_bool(j, "add_prefix_space", true) ? "always" : "never";
    }
    split_ = get_bool(j, "split", true);
    if (split_) re_ = std::make_unique<Regex>(replacement_, true, where);
  }
  void apply(std::vector<Piece>& pieces) const override {
    std::vector<Piece> out;
    for (auto& p : pieces) {
      std::string t;
      for (char c : p.text) {
        if (c == ' ') t.append(replacement_);
        else t.push_back(c);
      }
      bool starts = t.compare(0, replacement_.size(), replacement_) == 0;
      if (!starts && (scheme_ == "always" || (scheme_ == "first" && p.at_origin)))
        t = replacement_ + t;
      p.text = std::move(t);
      if (split_) split_piece(*re_, Behavior::MergedWithNext, false, p, out);
      else out.push_back(std::move(p));
    }
    pieces.swap(out);
  }

 private:
  std::string replacement_;
  std::string scheme_;
  bool split_ = true;
  std::unique_ptr<Regex> re_;
};

class SequencePre : public PreTokenizer {
 public:
  explicit SequencePre(std::vector<std::unique_ptr<PreTokenizer>> parts) : parts_(std::move(parts)) {}
  void apply(std::vector<Piece>& pieces) const override {
    for (const auto& p : parts_) p->apply(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> parts_;
};

}  // namespace

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const nlohmann::json& j, const std::string& where) {
  if (j.is_null()) return nullptr;
  if (!j.is_object()) throw Error(where + ": expected an object or null");
  const std::string type = get_string(j, "type", where);
  if (type == "Split") return std::make_unique<SplitPre>(j, where);
  if (type == "ByteLevel") return std::make_unique<ByteLevelPre>(j, where);
  if (type == "Metaspace") return std::make_unique<MetaspacePre>(j, where);
  if (type == "Sequence") {
    auto n = j.find("pretokenizers");
    if (n == j.end() || !n->is_array())
      throw Error(where + ".pretokenizers: missing or not an array");
    std::vector<std::unique_ptr<PreTokenizer>> parts;
    for (size_t i = 0; i < n->size(); ++i) {
      auto p = make_pre_tokenizer((*n)[i], where + ".pretokenizers[" + std::to_string(i) + "]");
      if (p) parts.push_back(std::move(p));
    }
    return std::make_unique<SequencePre>(std::move(parts));
  }
  throw Error(where + ".type '" + type +
              "' not supported (supported: Split, ByteLevel, Metaspace, Sequence)");
}

}  // namespace finmoe::tok
