#include "tokenizer/decoder.h"

#include <cctype>
#include <cstdint>

#include <nlohmann/json.hpp>

#include "finmoe/error.h"
#include "tokenizer/utf8.h"

namespace finmoe::tok {

namespace {

std::string get_string(const nlohmann::json& j, const char* key, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_string()) throw Error(where + "." + key + ": missing or not a string");
  return it->get<std::string>();
}

// Optional fields: absent or null gives the default; a wrong type is an error.
bool get_bool(const nlohmann::json& j, const char* key, bool dflt, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return dflt;
  if (!it->is_boolean()) throw Error(where + "." + key + ": expected true or false");
  return it->get<bool>();
}

int get_count(const nlohmann::json& j, const char* key, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return 0;
  if (!it->is_number_integer() ||
      (it->is_number_unsigned() ? it->get<uint64_t>() > INT32_MAX
                                : it->get<int64_t>() < 0 || it->get<int64_t>() > INT32_MAX))
    throw Error(where + "." + key + ": expected an integer in [0, 2^31)");
  return int(it->get<int64_t>());
}

void replace_all(std::string& s, const std::string& from, const std::string& to) {
  if (from.empty()) return;
  std::string out;
  size_t last = 0, pos;
  while ((pos = s.find(from, last)) != std::string::npos) {
    out.append(s, last, pos - last);
    out.append(to);
    last = pos + from.size();
  }
  if (last == 0) return;
  out.append(s, last, std::string::npos);
  s.swap(out);
}

class ByteLevelDec : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    const ByteLevelMap& map = ByteLevelMap::get();
    std::string bytes;
    for (const auto& t : tokens) map.decode_append(t, bytes);
    tokens.assign(1, std::move(bytes));
  }
};

class ReplaceDec : public Decoder {
 public:
  ReplaceDec(const nlohmann::json& j, const std::string& where) {
    auto p = j.find("pattern");
    if (p == j.end() || !p->is_object() || !p->contains("String"))
      throw Error(where + ".pattern: only {\"String\": ...} patterns are supported in decoders");
    from_ = get_string(*p, "String", where + ".pattern");
    to_ = get_string(j, "content", where);
  }
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (auto& t : tokens) replace_all(t, from_, to_);
  }

 private:
  std::string from_, to_;
};

// "<0xNN>" tokens become bytes; a run that is not valid UTF-8 becomes one U+FFFD per byte.
class ByteFallbackDec : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    std::string run;
    size_t run_len = 0;
    auto flush = [&] {
      if (run_len == 0) return;
      if (utf8_first_invalid(run) == std::string::npos) {
        out.push_back(run);
      } else {
        for (size_t i = 0; i < run_len; ++i) out.emplace_back("\xEF\xBF\xBD");
      }
      run.clear();
      run_len = 0;
    };
    for (auto& t : tokens) {
      int byte = -1;
      if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' &&
          std::isxdigit(static_cast<unsigned char>(t[3])) &&
          std::isxdigit(static_cast<unsigned char>(t[4])))
        byte = std::stoi(t.substr(3, 2), nullptr, 16);
      if (byte >= 0) {
        run.push_back(static_cast<char>(byte));
        ++run_len;
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    tokens.swap(out);
  }
};

class FuseDec : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string all;
    for (const auto& t : tokens) all += t;
    tokens.assign(1, std::move(all));
  }
};

// Removes up to `start` leading and `stop` trailing copies of `content` (one character).
class StripDec : public Decoder {
 public:
  StripDec(const nlohmann::json& j, const std::string& where) {
    content_ = get_string(j, "content", where);
    start_ = get_count(j, "start", where);
    stop_ = get_count(j, "stop", where);
  }
  void decode_chain(std::vector<std::string>& tokens) const override {
    if (content_.empty()) return;
    for (auto& t : tokens) {
      size_t b = 0, e = t.size();
      for (int i = 0; i < start_ && t.compare(b, content_.size(), content_) == 0; ++i)
        b += content_.size();
      for (int i = 0; i < stop_ && e >= b + content_.size() &&
                      t.compare(e - content_.size(), content_.size(), content_) == 0;
           ++i)
        e -= content_.size();
      t = t.substr(b, e - b);
    }
  }

 private:
  std::string content_;
  int start_ = 0, stop_ = 0;
};

class MetaspaceDec : public Decoder {
 public:
  MetaspaceDec(const nlohmann::json& j, const std::string& where) {
    replacement_ = j.contains("replacement") ? get_string(j, "replacement", where) : "\xE2\x96\x81";
    if (j.contains("prepend_scheme"))
      strip_first_ = get_string(j, "prepend_scheme", where) != "never";
    else
      strip_first_ = get_bool(j, "add_prefix_space", true, where);
  }
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      replace_all(tokens[i], replacement_, " ");
      if (i == 0 && strip_first_ && !tokens[i].empty() && tokens[i][0] == ' ')
        tokens[i].erase(0, 1);
    }
  }

 private:
  std::string replacement_;
  bool strip_first_ = true;
};

class SequenceDec : public Decoder {
 public:
  explicit SequenceDec(std::vector<std::unique_ptr<Decoder>> parts) : parts_(std::move(parts)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (const auto& p : parts_) p->decode_chain(tokens);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> parts_;
};

}  // namespace

std::unique_ptr<Decoder> make_decoder(const nlohmann::json& j, const std::string& where) {
  if (j.is_null()) return nullptr;
  if (!j.is_object()) throw Error(where + ": expected an object or null");
  const std::string type = get_string(j, "type", where);
  if (type == "ByteLevel") return std::make_unique<ByteLevelDec>();
  if (type == "Replace") return std::make_unique<ReplaceDec>(j, where);
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDec>();
  if (type == "Fuse") return std::make_unique<FuseDec>();
  if (type == "Strip") return std::make_unique<StripDec>(j, where);
  if (type == "Metaspace") return std::make_unique<MetaspaceDec>(j, where);
  if (type == "Sequence") {
    auto n = j.find("decoders");
    if (n == j.end() || !n->is_array()) throw Error(where + ".decoders: missing or not an array");
    std::vector<std::unique_ptr<Decoder>> parts;
    for (size_t i = 0; i < n->size(); ++i) {
      auto p = make_decoder((*n)[i], where + ".decoders[" + std::to_string(i) + "]");
      if (p) parts.push_back(std::move(p));
    }
    return std::make_unique<SequenceDec>(std::move(parts));
  }
  throw Error(where + ".type '" + type +
              "' not supported (supported: ByteLevel, Metaspace, Replace, ByteFallback, Fuse, "
              "Strip, Sequence)");
}

}  // namespace finmoe::tok
